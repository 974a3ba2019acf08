//! The local log zero-fills its active segment ahead of its records (so a sync overwrites the
//! file instead of growing it). A clean close leaves the segment ending at its last record; after
//! a crash the zeros are the end of the log in every recovery mode, while a byte other than zero
//! after them, or zeros over acknowledged records, is damage.

// Test helpers below are not `#[test]` functions, but a failed call in them is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use common::{MODES, frames, payload, segment_paths};
use omendb_wal::{AppendOptions, Error, FileWal, RecoveryMode, Wal, WalOptions};

/// Appends records 1..=`n` durably.
fn fill(wal: &FileWal, n: u64) {
    for i in 1..=n {
        assert_eq!(wal.append(&payload(i), AppendOptions::DURABLE).unwrap(), i);
    }
}

/// Where the records of a segment's bytes end (the frames of `bytes` up to the first that is
/// not a whole record).
fn records_end(bytes: &[u8]) -> usize {
    frames(bytes)
        .into_iter()
        .take_while(|&(at, len)| at + len <= bytes.len() && bytes[at..at + 4] != [0; 4])
        .last()
        .map_or(common::HEADER_LEN, |(at, len)| at + len)
}

/// The bytes a crash of the open log `wal` in `dir` would leave: its segment as it is now.
fn crash_copy(dir: &Path, into: &Path) -> Vec<u8> {
    let path = &segment_paths(dir)[0];
    let bytes = std::fs::read(path).unwrap();
    std::fs::create_dir_all(into).unwrap();
    std::fs::write(into.join(path.file_name().unwrap()), &bytes).unwrap();
    bytes
}

#[test]
fn an_open_segment_has_zeros_ahead_and_a_closed_one_ends_at_its_last_record() {
    let dir = tempfile::tempdir().unwrap();
    let wal = FileWal::open(dir.path(), WalOptions::default()).unwrap();
    fill(&wal, 10);
    let open = std::fs::read(&segment_paths(dir.path())[0]).unwrap();
    let end = records_end(&open);
    assert!(open.len() > end, "no zeros ahead of the records");
    assert!(open[end..].iter().all(|&b| b == 0));
    wal.close().unwrap();
    drop(wal);
    let closed = std::fs::read(&segment_paths(dir.path())[0]).unwrap();
    assert_eq!(closed.len(), end);
    assert_eq!(closed[..], open[..end]);

    // Without preallocation the file grows with its records.
    let plain = tempfile::tempdir().unwrap();
    let wal = FileWal::open(plain.path(), WalOptions::default().preallocate(false)).unwrap();
    fill(&wal, 10);
    let bytes = std::fs::read(&segment_paths(plain.path())[0]).unwrap();
    assert_eq!(bytes.len(), records_end(&bytes));
}

#[test]
fn zeros_left_by_a_crash_end_the_log_in_every_mode() {
    for mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        let wal = FileWal::open(dir.path(), WalOptions::default()).unwrap();
        fill(&wal, 20);
        let crashed = dir.path().join("crashed");
        let bytes = crash_copy(dir.path(), &crashed);
        drop(wal);

        let options = WalOptions::default().recovery_mode(mode);
        let wal = FileWal::open(&crashed, options.clone()).unwrap();
        let report = Wal::recovery_report(&wal).clone();
        assert_eq!(report.records, 20, "{mode:?}");
        assert_eq!(report.torn_tail, None, "{mode:?}");
        assert_eq!(report.stopped_at, None, "{mode:?}");
        assert!(report.skipped.is_empty(), "{mode:?}");
        assert_eq!(report.bytes_truncated, 0, "{mode:?}");
        // Appends go on right after the last record, and everything survives another reopen.
        assert_eq!(wal.append(b"after", AppendOptions::DURABLE).unwrap(), 21);
        wal.close().unwrap();
        drop(wal);
        let after = std::fs::read(&segment_paths(&crashed)[0]).unwrap();
        assert_eq!(after[..records_end(&bytes)], bytes[..records_end(&bytes)]);
        let wal = FileWal::open(&crashed, options).unwrap();
        let records: Vec<_> = wal.reader(1).unwrap().map(Result::unwrap).collect();
        assert_eq!(records.len(), 21, "{mode:?}");
        assert_eq!(&records[20].payload[..], b"after");
        assert_eq!(records[19].payload, payload(20));
    }
}

#[test]
fn a_stray_byte_in_the_zeros_is_a_torn_tail_not_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let wal = FileWal::open(dir.path(), WalOptions::default()).unwrap();
    fill(&wal, 5);
    let crashed = dir.path().join("crashed");
    let mut bytes = crash_copy(dir.path(), &crashed);
    drop(wal);
    let end = records_end(&bytes);
    let stray = end + (bytes.len() - end) / 2;
    bytes[stray] = 0x5A;
    let path = segment_paths(&crashed)[0].clone();
    std::fs::write(&path, &bytes).unwrap();

    let strict = WalOptions::default().recovery_mode(RecoveryMode::AbsoluteConsistency);
    assert!(matches!(
        FileWal::open(&crashed, strict),
        Err(Error::Corruption(_))
    ));
    let wal = FileWal::open(&crashed, WalOptions::default()).unwrap();
    let report = Wal::recovery_report(&wal).clone();
    assert_eq!(report.records, 5);
    let torn = report.torn_tail.expect("a torn tail");
    assert_eq!(torn.offset, end as u64);
    assert_eq!(report.bytes_truncated, (bytes.len() - end) as u64);
    wal.close().unwrap();
    assert_eq!(std::fs::read(&path).unwrap().len(), end);
}

#[test]
fn zeros_over_acknowledged_records_are_damage_in_the_middle() {
    let dir = tempfile::tempdir().unwrap();
    let wal = FileWal::open(dir.path(), WalOptions::default()).unwrap();
    fill(&wal, 6);
    wal.close().unwrap();
    drop(wal);
    let path = segment_paths(dir.path())[0].clone();
    let mut bytes = std::fs::read(&path).unwrap();
    // Record 3 reads back as zeros (a lost write) while records 4 to 6 are intact.
    let (at, len) = frames(&bytes)[2];
    bytes[at..at + len].iter_mut().for_each(|b| *b = 0);
    std::fs::write(&path, &bytes).unwrap();

    match FileWal::open(dir.path(), WalOptions::default()) {
        Err(Error::Corruption(damage)) => assert_eq!(damage.offset, at as u64),
        other => panic!("expected mid-log corruption, got {other:?}"),
    }
    let skip = WalOptions::default().recovery_mode(RecoveryMode::SkipCorrupt);
    let wal = FileWal::open(dir.path(), skip).unwrap();
    let lsns: Vec<_> = wal.reader(1).unwrap().map(|r| r.unwrap().lsn).collect();
    assert_eq!(lsns, vec![1, 2, 4, 5, 6]);
}
