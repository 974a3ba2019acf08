//! Opening a local log: every segment is read and verified ([`crate::recovery::examine`]), damage
//! is handled by the recovery mode, and the last segment is made ready for appends. See
//! `docs/failure-modes.md` ("Write-ahead log").

use std::path::Path;

use super::floor;
use super::segment::{self, CORRUPT_EXT, Segment};
use crate::error::{Error, Result};
use crate::format;
use crate::io::{self, FileIo, IoFile};
use crate::recovery::{Unit, Verdict, confirm, examine};
use crate::{Lsn, RecoveryReport, WalOptions};

/// A recovered log, ready for the writer.
pub(crate) struct Recovered {
    /// What recovery found.
    pub(crate) report: RecoveryReport,
    /// The segments kept, in LSN order; the last one is `active`.
    pub(crate) segments: Vec<Segment>,
    /// The last segment, open for appends.
    pub(crate) active: Box<dyn IoFile>,
    /// Its length.
    pub(crate) active_len: u64,
    /// The last LSN in the log (0 if none).
    pub(crate) last_lsn: Lsn,
}

/// Recovers the log in `dir` (created if missing).
pub(crate) fn recover(io: &dyn FileIo, dir: &Path, options: &WalOptions) -> Result<Recovered> {
    io.create_dir_all(dir)
        .map_err(|e| Error::io("create_dir", dir, e))?;
    let (mut found, set_aside) = segment::list(io, dir)?;
    let mut report = RecoveryReport {
        mode: options.recovery_mode,
        ..RecoveryReport::default()
    };
    // Segments below the truncation floor are garbage a truncation deleted, brought back by a
    // crash after a directory sync that failed: never read, and deleted again unless the mode
    // changes nothing.
    let floor = floor::read(io, dir)?;
    let garbage = found
        .windows(2)
        .take_while(|pair| pair[1].base <= floor)
        .count();
    report.below_floor = garbage;
    let below: Vec<Segment> = found.drain(..garbage).collect();
    if !below.is_empty() && options.recovery_mode != crate::RecoveryMode::AbsoluteConsistency {
        for seg in &below {
            io.delete(&seg.path)
                .map_err(|e| Error::io("delete", &seg.path, e))?;
        }
        io.sync_dir(dir)
            .map_err(|e| Error::io("sync_dir", dir, e))?;
    }
    let mut kept: Vec<Segment> = Vec::new();
    // The last kept segment's bytes as read, up to where it was cut.
    let mut last_kept: Vec<u8> = Vec::new();
    let mut expected: Option<Lsn> = None;
    for (i, seg) in found.iter().enumerate() {
        let mut file = io
            .open(&seg.path)
            .map_err(|e| Error::io("open", &seg.path, e))?;
        let len = file.len().map_err(|e| Error::io("stat", &seg.path, e))?;
        let buf = io::read_all(file.as_ref(), len).map_err(|e| Error::io("read", &seg.path, e))?;
        let location = seg.path.display().to_string();
        let examined = examine(
            &buf,
            seg.base,
            &location,
            Unit::Segment {
                last: i + 1 == found.len(),
            },
            options.max_record_bytes,
            &mut expected,
            &mut report,
        );
        // Damage is confirmed by a second read before it is acted on, or reported as
        // corruption: a bit flipped between the disk and memory is a failed read (retryable),
        // not a damaged log.
        if examined.as_ref().map_or(true, Verdict::rests_on_damage) {
            let again =
                io::read_all(file.as_ref(), len).map_err(|e| Error::io("read", &seg.path, e))?;
            confirm(&buf, &again, &location).map_err(|e| Error::io("read", &seg.path, e))?;
        }
        let verdict = examined?;
        match verdict {
            Verdict::Keep { cut, stop, .. } => {
                if stop {
                    // Point in time: the later segments go before this one is cut, so that a
                    // crash in between leaves a prefix of the log (a cut segment followed by
                    // later ones was a gap the next open refused, or skipped over).
                    drop_segments(io, dir, &found[i + 1..], &mut report)?;
                }
                if let Some(cut) = cut {
                    file.truncate(cut as u64)
                        .map_err(|e| Error::io("truncate", &seg.path, e))?;
                    file.sync_data()
                        .map_err(|e| Error::io("sync", &seg.path, e))?;
                }
                kept.push(seg.clone());
                last_kept = buf;
                last_kept.truncate(cut.unwrap_or(usize::MAX));
                if stop {
                    break;
                }
            }
            Verdict::Drop { stop: true } => {
                if kept.is_empty() && seg.base > 0 {
                    // Nothing before it is kept: the log goes on at its LSN, in a fresh segment
                    // renamed over it below. Deleted first, a crash before the fresh one existed
                    // left no segment, and the next open started again at LSN 1.
                    drop_segments(io, dir, &found[i + 1..], &mut report)?;
                    report.bytes_truncated += len;
                } else {
                    drop_segments(io, dir, &found[i..], &mut report)?;
                }
                break;
            }
            Verdict::Drop { stop: false } => {
                // Kept for inspection under another name, out of the way of new segments.
                let mut aside = seg.path.clone().into_os_string();
                aside.push(CORRUPT_EXT);
                io.rename(&seg.path, Path::new(&aside))
                    .map_err(|e| Error::io("rename", &seg.path, e))?;
                io.sync_dir(dir)
                    .map_err(|e| Error::io("sync_dir", dir, e))?;
            }
        }
    }
    // A log that keeps nothing goes on where the segments it set aside began: a crash after
    // `SkipCorrupt` set its only segment aside, before the fresh one existed, started it again
    // at LSN 1.
    // Nor below the truncation floor: the LSNs under it were used (and flushed).
    let last_lsn = expected
        .map_or(set_aside.saturating_sub(1), |next| next - 1)
        .max(floor.saturating_sub(1));
    let (active, active_len) = match kept.last() {
        Some(seg) if last_kept.len() > format::HEADER_LEN => {
            let mut file = io
                .open(&seg.path)
                .map_err(|e| Error::io("open", &seg.path, e))?;
            // Records recovered from the page cache of a crashed process are made durable before
            // anything is built on them, written again first: after a failed `fdatasync` Linux
            // marks the pages that missed the disk clean, with the new bytes still in them, so
            // a sync on a new handle found nothing to write, succeeded, and records read from
            // memory were built on as durable (found by a helper agent's review). Only the last
            // segment can hold such records: a rotation syncs a segment before the next one.
            if let Some(records) = last_kept.get(format::HEADER_LEN..)
                && !records.is_empty()
            {
                let written = file
                    .write_at(format::HEADER_LEN as u64, records)
                    .map_err(|e| Error::io("write", &seg.path, e))?;
                if written != records.len() {
                    return Err(Error::ShortWrite {
                        path: seg.path.clone(),
                        written,
                        expected: records.len(),
                    });
                }
            }
            file.sync_data()
                .map_err(|e| Error::io("sync", &seg.path, e))?;
            let len = file.len().map_err(|e| Error::io("stat", &seg.path, e))?;
            (file, len)
        }
        // No segment, or a last one without records: a fresh one, renamed into place (over the
        // empty one, which starts at the same LSN) with the directory synced. A rotation whose
        // directory sync failed poisoned the log with the new segment's name not durable, and a
        // later sync of the directory need not persist it (the change may count as written):
        // reused by the next life, the segment and every record appended to it vanished at a
        // crash, a gap the next open refused (found by the simulation, seed 27 of 1,000, Disk).
        _ => {
            let (seg, file) = segment::create(io, dir, last_lsn + 1, preallocation(options))?;
            if kept.last().is_some_and(|last| last.path == seg.path) {
                kept.pop();
            }
            kept.push(seg);
            (file, format::HEADER_LEN as u64)
        }
    };
    Ok(Recovered {
        report,
        segments: kept,
        active,
        active_len,
        last_lsn,
    })
}

/// Deletes `segments` (the end of the log that point-in-time recovery drops), newest first, so
/// that a crash in the middle still leaves a prefix of the log.
fn drop_segments(
    io: &dyn FileIo,
    dir: &Path,
    segments: &[Segment],
    report: &mut RecoveryReport,
) -> Result<()> {
    if segments.is_empty() {
        return Ok(());
    }
    for seg in segments.iter().rev() {
        let len = io
            .open(&seg.path)
            .and_then(|f| f.len())
            .map_err(|e| Error::io("open", &seg.path, e))?;
        io.delete(&seg.path)
            .map_err(|e| Error::io("delete", &seg.path, e))?;
        report.bytes_truncated += len;
    }
    io.sync_dir(dir).map_err(|e| Error::io("sync_dir", dir, e))
}

/// How much to preallocate for a new segment.
pub(crate) fn preallocation(options: &WalOptions) -> Option<u64> {
    options.preallocate.then_some(options.segment_bytes)
}
