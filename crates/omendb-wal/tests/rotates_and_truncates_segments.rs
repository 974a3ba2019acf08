//! Segment rotation and truncation across segments, damage in a segment that is not the last,
//! a missing middle segment, a damaged segment header — and reopening after each.

// Test helpers below are not `#[test]` functions, but a failed call in them is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{FRAME_HEADER_LEN, FaultyIo, HEADER_LEN, frames, payload, segment_paths};
use omendb_wal::{AppendOptions, DamageKind, Error, FileWal, Lsn, RecoveryMode, Wal, WalOptions};

const RECORDS: u64 = 300;

fn small_segments() -> WalOptions {
    WalOptions::default()
        .segment_bytes(2048)
        .max_record_bytes(512)
}

/// Writes `RECORDS` records into small segments: single durable appends and buffered bursts
/// whose group-commit batches straddle segment boundaries.
fn fill(dir: &Path) {
    let wal = FileWal::open(dir, small_segments()).unwrap();
    for i in 1..=RECORDS {
        let options = if i % 10 < 7 {
            AppendOptions::BUFFERED
        } else {
            AppendOptions::DURABLE
        };
        assert_eq!(wal.append(&payload(i), options).unwrap(), i);
    }
    wal.close().unwrap();
}

/// The LSN a segment file starts at (its name).
fn base_of(path: &Path) -> Lsn {
    path.file_stem().unwrap().to_str().unwrap().parse().unwrap()
}

fn read(wal: &FileWal, from: Lsn) -> Vec<Lsn> {
    wal.reader(from)
        .unwrap()
        .map(|r| {
            let r = r.unwrap();
            assert_eq!(&r.payload[..], &payload(r.lsn)[..]);
            r.lsn
        })
        .collect()
}

#[test]
fn segments_rotate_at_their_size_and_every_record_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path());
    let segments = segment_paths(dir.path());
    assert!(segments.len() > 5, "only {} segments", segments.len());
    let mut next = 1;
    for path in &segments {
        let bytes = std::fs::read(path).unwrap();
        assert!(bytes.len() <= 2048, "{path:?} is {} bytes", bytes.len());
        // Each segment is named by the LSN of its first record.
        assert_eq!(base_of(path), next);
        next += frames(&bytes).len() as u64;
        assert!(
            frames(&bytes)
                .iter()
                .all(|(_, len)| *len >= FRAME_HEADER_LEN)
        );
    }
    assert_eq!(next, RECORDS + 1);
    let wal = FileWal::open(dir.path(), small_segments()).unwrap();
    assert_eq!(wal.recovery_report().segments, segments.len());
    assert_eq!(read(&wal, 1), (1..=RECORDS).collect::<Vec<_>>());
    assert_eq!(read(&wal, 123), (123..=RECORDS).collect::<Vec<_>>());
    assert_eq!(read(&wal, RECORDS + 1), Vec::<Lsn>::new());
}

#[test]
fn truncation_drops_whole_segments_below_the_lsn_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path());
    let before = segment_paths(dir.path());
    let wal = FileWal::open(dir.path(), small_segments()).unwrap();
    wal.truncate_before(150).unwrap();
    let after = segment_paths(dir.path());
    assert!(after.len() < before.len());
    let first_base = base_of(&after[0]);
    assert!(first_base <= 150, "a segment holding LSN 150 was deleted");
    let second_base = base_of(&after[1]);
    assert!(second_base > 150, "a segment entirely below 150 survived");
    assert_eq!(read(&wal, 1), (first_base..=RECORDS).collect::<Vec<_>>());
    assert_eq!(read(&wal, 150), (150..=RECORDS).collect::<Vec<_>>());
    // Truncating everything keeps the active segment, and LSNs go on.
    wal.truncate_before(u64::MAX).unwrap();
    assert_eq!(segment_paths(dir.path()).len(), 1);
    assert_eq!(
        wal.append(b"next", AppendOptions::DURABLE).unwrap(),
        RECORDS + 1
    );
    wal.close().unwrap();
    drop(wal);
    let wal = FileWal::open(dir.path(), small_segments()).unwrap();
    assert_eq!(wal.recovery_report().last_lsn, Some(RECORDS + 1));
    assert_eq!(Wal::last_lsn(&wal), Some(RECORDS + 1));
    assert_eq!(
        wal.append(b"more", AppendOptions::DURABLE).unwrap(),
        RECORDS + 2
    );
}

/// Damages the last record of the first segment: a tail, but not the log's tail.
/// A delete that fails in the middle of a truncation: the segments deleted before it leave the
/// log (a reader skips them, it does not fail on them), the log stays a contiguous suffix that
/// reads and reopens, and repeating the truncation finishes it.
#[test]
fn a_truncation_that_fails_midway_leaves_a_readable_suffix_and_can_be_repeated() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path());
    let before = segment_paths(dir.path());
    let io = FaultyIo::new();
    let wal = FileWal::open_with_io(Arc::new(io.clone()), dir.path(), small_segments()).unwrap();
    *io.faults.fail_delete.lock().unwrap() = Some(3);
    let failed = wal.truncate_before(RECORDS);
    assert!(
        matches!(failed, Err(Error::Io { op: "delete", .. })),
        "{failed:?}"
    );
    let after = segment_paths(dir.path());
    assert_eq!(after[..], before[2..], "the two oldest segments go first");
    let first_base = base_of(&after[0]);
    assert_eq!(read(&wal, 1), (first_base..=RECORDS).collect::<Vec<_>>());

    wal.truncate_before(RECORDS).unwrap();
    let last = segment_paths(dir.path());
    assert!(last.len() < after.len(), "{last:?}");
    let tail = read(&wal, 1);
    assert!(tail.contains(&RECORDS) && tail.windows(2).all(|w| w[1] == w[0] + 1));
    wal.close().unwrap();
    drop(wal);
    let wal = FileWal::open(dir.path(), small_segments()).unwrap();
    assert_eq!(read(&wal, 1), tail);
}

fn damage_end_of_first_segment(dir: &Path) {
    let first = &segment_paths(dir)[0];
    let mut bytes = std::fs::read(first).unwrap();
    let len = bytes.len();
    bytes.truncate(len - 3);
    std::fs::write(first, &bytes).unwrap();
}

#[test]
fn a_torn_end_of_an_older_segment_is_corruption_not_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path());
    damage_end_of_first_segment(dir.path());
    let err = FileWal::open(dir.path(), small_segments()).unwrap_err();
    assert!(
        matches!(err, Error::Corruption(ref d) if d.kind == DamageKind::Incomplete),
        "{err}"
    );

    let options = small_segments().recovery_mode(RecoveryMode::SkipCorrupt);
    let wal = FileWal::open(dir.path(), options).unwrap();
    let report = wal.recovery_report().clone();
    let lost = report.skipped.len();
    assert!(lost >= 1);
    let got = read(&wal, 1);
    assert_eq!(got.len() as u64, RECORDS - 1);
    assert_eq!(*got.last().unwrap(), RECORDS);
    drop(wal);

    let options = small_segments().recovery_mode(RecoveryMode::PointInTime);
    let wal = FileWal::open(dir.path(), options).unwrap();
    let kept = read(&wal, 1);
    assert_eq!(segment_paths(dir.path()).len(), 1);
    let last = *kept.last().unwrap();
    assert_eq!(kept, (1..=last).collect::<Vec<_>>());
    assert_eq!(
        wal.append(b"after", AppendOptions::DURABLE).unwrap(),
        last + 1
    );
}

#[test]
fn a_missing_middle_segment_is_a_gap_every_mode_sees() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path());
    let segments = segment_paths(dir.path());
    let missing = &segments[2];
    let missing_base = base_of(missing);
    let next_base = base_of(&segments[3]);
    std::fs::remove_file(missing).unwrap();

    for mode in [
        RecoveryMode::TolerateTornTail,
        RecoveryMode::AbsoluteConsistency,
    ] {
        let err = FileWal::open(dir.path(), small_segments().recovery_mode(mode)).unwrap_err();
        let Error::Corruption(damage) = err else {
            panic!("{mode:?}: {err}")
        };
        assert_eq!(
            damage.kind,
            DamageKind::LsnMismatch {
                expected: missing_base,
                found: next_base
            }
        );
    }
    let wal = FileWal::open(
        dir.path(),
        small_segments().recovery_mode(RecoveryMode::SkipCorrupt),
    )
    .unwrap();
    let got = read(&wal, 1);
    let expected: Vec<Lsn> = (1..missing_base).chain(next_base..=RECORDS).collect();
    assert_eq!(got, expected);
    assert_eq!(wal.recovery_report().skipped.len(), 1);
    drop(wal);
    let wal = FileWal::open(
        dir.path(),
        small_segments().recovery_mode(RecoveryMode::PointInTime),
    )
    .unwrap();
    assert_eq!(read(&wal, 1), (1..missing_base).collect::<Vec<_>>());
    assert_eq!(
        wal.append(b"x", AppendOptions::DURABLE).unwrap(),
        missing_base
    );
}

#[test]
fn a_damaged_segment_header_is_never_a_torn_tail() {
    for mode in common::MODES {
        let dir = tempfile::tempdir().unwrap();
        fill(dir.path());
        let segments = segment_paths(dir.path());
        let victim = &segments[1];
        let victim_base = base_of(victim);
        let mut bytes = std::fs::read(victim).unwrap();
        bytes[HEADER_LEN / 2] ^= 0x40;
        std::fs::write(victim, &bytes).unwrap();
        let opened = FileWal::open(dir.path(), small_segments().recovery_mode(mode));
        match mode {
            RecoveryMode::TolerateTornTail | RecoveryMode::AbsoluteConsistency => {
                let err = opened.unwrap_err();
                assert!(matches!(err, Error::Corruption(ref d) if d.kind == DamageKind::BadHeader));
            }
            RecoveryMode::PointInTime => {
                let wal = opened.unwrap();
                assert_eq!(read(&wal, 1), (1..victim_base).collect::<Vec<_>>());
                assert_eq!(segment_paths(dir.path()).len(), 1);
            }
            RecoveryMode::SkipCorrupt => {
                let wal = opened.unwrap();
                let next_base = base_of(&segments[2]);
                let expected: Vec<Lsn> = (1..victim_base).chain(next_base..=RECORDS).collect();
                assert_eq!(read(&wal, 1), expected);
                // Set aside, not deleted.
                let mut aside = victim.clone().into_os_string();
                aside.push(".corrupt");
                assert!(Path::new(&aside).exists());
                assert_eq!(
                    wal.append(b"x", AppendOptions::DURABLE).unwrap(),
                    RECORDS + 1
                );
            }
            _ => unreachable!(),
        }
    }
}

/// A truncated log whose only segment has a damaged header: the modes that drop it go on
/// at that segment's LSN, not at LSN 1 (which reused LSNs the log had handed out long ago).
#[test]
fn a_log_that_keeps_no_segment_goes_on_where_its_segments_began() {
    for mode in [RecoveryMode::PointInTime, RecoveryMode::SkipCorrupt] {
        let dir = tempfile::tempdir().unwrap();
        fill(dir.path());
        let wal = FileWal::open(dir.path(), small_segments()).unwrap();
        wal.truncate_before(RECORDS).unwrap();
        wal.close().unwrap();
        drop(wal);
        let segments = segment_paths(dir.path());
        assert_eq!(segments.len(), 1, "{segments:?}");
        let base = base_of(&segments[0]);
        assert!(base > 1);
        let mut bytes = std::fs::read(&segments[0]).unwrap();
        bytes[HEADER_LEN / 2] ^= 0x40;
        std::fs::write(&segments[0], &bytes).unwrap();
        let io = FaultyIo::new();
        let wal = FileWal::open_with_io(
            Arc::new(io.clone()),
            dir.path(),
            small_segments().recovery_mode(mode),
        )
        .unwrap();
        if mode == RecoveryMode::PointInTime {
            // Replaced by a fresh segment renamed over it, never deleted first: a crash in
            // between left no segment, and the next open started again at LSN 1.
            assert_eq!(
                io.faults.deletes.load(std::sync::atomic::Ordering::SeqCst),
                0
            );
            assert_eq!(segment_paths(dir.path()), segments);
        }
        assert_eq!(wal.recovery_report().records, 0, "{mode:?}");
        assert_eq!(wal.last_lsn(), Some(base - 1), "{mode:?}");
        assert_eq!(
            wal.append(b"x", AppendOptions::DURABLE).unwrap(),
            base,
            "{mode:?}"
        );
        wal.close().unwrap();
        drop(wal);
        if mode == RecoveryMode::SkipCorrupt {
            // As if the open had crashed right after setting the segment aside, before the
            // fresh one existed: the next open still goes on at its LSN, not at 1.
            for path in segment_paths(dir.path()) {
                std::fs::remove_file(path).unwrap();
            }
            let wal = FileWal::open(dir.path(), small_segments().recovery_mode(mode)).unwrap();
            assert_eq!(wal.last_lsn(), Some(base - 1));
            wal.close().unwrap();
            continue;
        }
        // And it reads back in the default mode.
        let wal = FileWal::open(dir.path(), small_segments()).unwrap();
        let records: Vec<_> = wal.reader(1).unwrap().map(Result::unwrap).collect();
        assert_eq!(records.len(), 1, "{mode:?}");
        assert_eq!((records[0].lsn, &records[0].payload[..]), (base, &b"x"[..]));
    }
}

/// Opening a log in directories that do not exist yet makes each one's entry in its parent
/// durable: only the log's own directory was synced, so a crash soon after could lose the
/// directories, and with them every segment synced in them (found by a helper agent's review).
#[test]
fn the_directories_an_open_creates_are_synced_into_their_parents() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("a").join("b").join("wal");
    let io = FaultyIo::new();
    let wal = FileWal::open_with_io(Arc::new(io.clone()), &dir, small_segments()).unwrap();
    wal.append(b"x", AppendOptions::DURABLE).unwrap();
    wal.close().unwrap();
    let synced = io.faults.synced_dirs.lock().unwrap().clone();
    for parent in [
        root.path().to_owned(),
        root.path().join("a"),
        root.path().join("a").join("b"),
    ] {
        assert!(synced.contains(&parent), "{parent:?} not in {synced:?}");
    }
    // A directory that exists already is not synced again for it.
    let io = FaultyIo::new();
    drop(FileWal::open_with_io(Arc::new(io.clone()), &dir, small_segments()).unwrap());
    let synced = io.faults.synced_dirs.lock().unwrap().clone();
    assert!(!synced.contains(&root.path().join("a")), "{synced:?}");
}

#[test]
fn a_half_created_segment_is_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path());
    let tmp = dir.path().join(format!("{:020}.wal.tmp", RECORDS + 1));
    std::fs::write(&tmp, b"OMENWAL").unwrap();
    let wal = FileWal::open(dir.path(), small_segments()).unwrap();
    assert!(!tmp.exists());
    assert_eq!(wal.recovery_report().records, RECORDS);
    assert!(wal.recovery_report().torn_tail.is_none());
}

/// A log whose segments are all gone but its truncation floor (an operator's delete of the
/// `.wal` files) goes on above the floor, not at LSN 1: the LSNs below it were used.
#[test]
fn a_log_that_lost_its_segments_goes_on_above_its_truncation_floor() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path());
    let wal = FileWal::open(dir.path(), small_segments()).unwrap();
    wal.truncate_before(RECORDS).unwrap();
    let kept = base_of(&segment_paths(dir.path())[0]);
    wal.close().unwrap();
    drop(wal);
    for path in segment_paths(dir.path()) {
        std::fs::remove_file(path).unwrap();
    }
    let wal = FileWal::open(dir.path(), small_segments()).unwrap();
    assert_eq!(Wal::last_lsn(&wal), Some(kept - 1));
    assert_eq!(wal.append(b"next", AppendOptions::DURABLE).unwrap(), kept);
}
