//! Recovery modes and what recovery reports; the procedures live with each log
//! (`file::recovery`, `object`). See `docs/failure-modes.md`.

use std::fmt;

use crate::Lsn;

/// What recovery does when it finds damage (a torn or corrupt record, a bad header, a gap).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecoveryMode {
    /// A partial or corrupt *last* record (nothing valid follows it) is cut off, the cut is made
    /// durable, and it is reported; damage anywhere else is an error. The default: a crash in the
    /// middle of a write leaves exactly this, while a checksum failure in the middle of the log is
    /// never silently skipped.
    #[default]
    TolerateTornTail,
    /// Any damage, a torn tail included, is an error and nothing is changed.
    AbsoluteConsistency,
    /// Stop at the first damage, keep everything before it and drop everything after it
    /// (point-in-time recovery to the last intact record).
    PointInTime,
    /// Skip damaged records, report each, keep every intact record after them. Reads skip the same
    /// damage. LSNs of skipped records are missing from the log.
    SkipCorrupt,
}

/// What went wrong at one place in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DamageKind {
    /// The record (or header) stops before its declared end: a torn write.
    Incomplete,
    /// The record's CRC32C does not match its bytes.
    Checksum,
    /// The record declares a length above the record limit.
    BadLength,
    /// A segment or object header is missing, has the wrong magic or version, or fails its CRC.
    BadHeader,
    /// A valid record or segment carries an LSN other than the next one expected (a segment or
    /// object is missing, or records are out of order).
    LsnMismatch {
        /// The LSN that should have come next.
        expected: Lsn,
        /// The LSN found.
        found: Lsn,
    },
}

/// One damaged place in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// The segment file path or object path.
    pub location: String,
    /// Byte offset of the damage inside it.
    pub offset: u64,
    /// Bytes affected: from `offset` to the next intact record, or to the end of the segment.
    pub len: u64,
    /// What is wrong there.
    pub kind: DamageKind,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} at {} offset {} ({} bytes)",
            self.kind, self.location, self.offset, self.len
        )
    }
}

/// What recovery found when the log was opened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The mode recovery ran in.
    pub mode: RecoveryMode,
    /// Intact records found (and kept).
    pub records: u64,
    /// LSN of the first record kept, if any.
    pub first_lsn: Option<Lsn>,
    /// LSN of the last record kept, if any. The next append gets the LSN after it.
    pub last_lsn: Option<Lsn>,
    /// Segments (or objects) read.
    pub segments: usize,
    /// Bytes of log read and verified.
    pub bytes_read: u64,
    /// Bytes removed from the log: the torn tail, or everything after the stop point in
    /// [`RecoveryMode::PointInTime`].
    pub bytes_truncated: u64,
    /// The torn tail that was cut off, if there was one.
    pub torn_tail: Option<Damage>,
    /// Where [`RecoveryMode::PointInTime`] stopped, if it found damage.
    pub stopped_at: Option<Damage>,
    /// Each damaged range [`RecoveryMode::SkipCorrupt`] skipped.
    pub skipped: Vec<Damage>,
    /// Segments of the local log found below its truncation floor (a truncation's deletions a
    /// crash undid after a directory sync failed) and dropped unread: deleted again, except in
    /// [`RecoveryMode::AbsoluteConsistency`], which changes nothing and leaves them in place.
    pub below_floor: usize,
}

/// What recovery must do with one segment (or object) after [`examine`] read it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Keep it; first cut it to `cut` bytes if given (made durable by the caller). With `stop`,
    /// every later segment is dropped.
    Keep {
        /// Length to cut the segment to.
        cut: Option<usize>,
        /// Drop every later segment.
        stop: bool,
        /// Whether damage was found in it (a torn tail, a stop, skipped records), as opposed to
        /// a clean segment or one that only ends in zeros written ahead of its records.
        damaged: bool,
    },
    /// Take it out of the log. With `stop` it and every later segment are deleted
    /// (point-in-time); without, it is set aside under another name for inspection
    /// ([`RecoveryMode::SkipCorrupt`]).
    Drop {
        /// Delete it and every later segment.
        stop: bool,
    },
}

impl Verdict {
    /// Whether the verdict rests on damage found in the bytes read. Acting on such a verdict
    /// removes records for good, so the caller reads the bytes a second time first and acts only
    /// if both reads agree ([`confirm`]): damage that only one read saw (a bit flipped on the way
    /// from the disk or the store) must not cut a record that was acknowledged as durable.
    pub(crate) fn rests_on_damage(&self) -> bool {
        match self {
            Verdict::Keep { damaged, .. } => *damaged,
            Verdict::Drop { .. } => true,
        }
    }
}

/// Whether a second read `again` of a segment or object agrees with the first, `first`, on which
/// a damage verdict rests; if not, the damage is not confirmed and nothing may be cut.
pub(crate) fn confirm(first: &[u8], again: &[u8], location: &str) -> std::io::Result<()> {
    if first == again {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "two reads of {location} disagree: the damage the first showed is not confirmed, \
             so nothing was cut (open again to retry)"
        )))
    }
}

/// What [`examine`] reads, which decides what the end of its records may look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unit {
    /// A segment of the file log, `last` or not: zeros written ahead of its records end them,
    /// and in the last one, damage with nothing intact after it may be a write a crash cut
    /// short, which the default mode cuts.
    Segment {
        /// Whether it is the log's last segment.
        last: bool,
    },
    /// An object of the object-store log, `newest` or not. It is put whole: nothing follows its
    /// last record (not even zeros), and damage in it is never a torn write, so the default mode
    /// refuses it; in the newest one `SkipCorrupt` and `PointInTime` cut damage with nothing
    /// intact after it.
    Object {
        /// Whether it is the log's newest object.
        newest: bool,
    },
}

/// Verifies one whole segment or object `buf` whose name says `base`, records what it finds in
/// `report`, advances `expected` (the LSN the next record must carry) and decides, by the
/// recovery mode, what happens to it. Damage the mode does not allow is an error.
pub(crate) fn examine(
    buf: &[u8],
    base: Lsn,
    location: &str,
    unit: Unit,
    max_record_bytes: usize,
    expected: &mut Option<Lsn>,
    report: &mut RecoveryReport,
) -> crate::Result<Verdict> {
    use crate::format::{self, Scanner, Step};
    let mode = report.mode;
    let tail_may_tear = match unit {
        Unit::Segment { last } => last,
        Unit::Object { newest } => newest && mode != RecoveryMode::TolerateTornTail,
    };
    let skipped_before = report.skipped.len();
    report.segments += 1;
    report.bytes_read += buf.len() as u64;
    let damage = |offset: usize, len: usize, kind: DamageKind| Damage {
        location: location.to_owned(),
        offset: offset as u64,
        len: len as u64,
        kind,
    };
    // A segment or object appears under its name only complete (renamed after its header is
    // durable, or put atomically), so a bad header is never a torn write. LSNs start at 1: a
    // base of 0 is a damaged or foreign name (the last LSN before it would be -1).
    if base == 0 || format::decode_header(buf) != Some(base) {
        let damage = damage(0, buf.len(), DamageKind::BadHeader);
        // A log that keeps nothing before this unit goes on where its name says it began:
        // restarting at LSN 1 handed out again LSNs a truncated log had long used (and an
        // engine whose manifest had flushed past them could no longer open).
        if base > 0 {
            expected.get_or_insert(base);
        }
        return match mode {
            RecoveryMode::TolerateTornTail | RecoveryMode::AbsoluteConsistency => {
                Err(crate::Error::Corruption(damage))
            }
            RecoveryMode::PointInTime => {
                report.stopped_at = Some(damage);
                Ok(Verdict::Drop { stop: true })
            }
            RecoveryMode::SkipCorrupt => {
                report.skipped.push(damage);
                Ok(Verdict::Drop { stop: false })
            }
        };
    }
    if let Some(next) = *expected
        && next != base
    {
        let damage = damage(
            0,
            0,
            DamageKind::LsnMismatch {
                expected: next,
                found: base,
            },
        );
        match mode {
            RecoveryMode::TolerateTornTail | RecoveryMode::AbsoluteConsistency => {
                return Err(crate::Error::Corruption(damage));
            }
            RecoveryMode::PointInTime => {
                report.stopped_at = Some(damage);
                return Ok(Verdict::Drop { stop: true });
            }
            RecoveryMode::SkipCorrupt => {
                report.skipped.push(damage);
                if base < next {
                    // It overlaps records already kept; reading it would repeat LSNs.
                    return Ok(Verdict::Drop { stop: false });
                }
                // A gap: the records in between are lost; the segment itself is kept.
            }
        }
    }
    let mut scan = Scanner::new(buf, base, max_record_bytes);
    let mut verdict = Verdict::Keep {
        cut: None,
        stop: false,
        damaged: false,
    };
    loop {
        let step = match scan.step() {
            // Bytes after an object's last record, zeros or not, are damage: no writer put them
            // there (treated as a segment's zeros ahead, they were cut without a report).
            Step::End if matches!(unit, Unit::Object { .. }) && scan.offset() < buf.len() => {
                Step::Damage {
                    offset: scan.offset(),
                    kind: DamageKind::Incomplete,
                    resume: None,
                }
            }
            step => step,
        };
        let torn_tail = tail_may_tear && step.is_torn_tail();
        match step {
            Step::Record { lsn, .. } => {
                report.records += 1;
                report.first_lsn.get_or_insert(lsn);
                report.last_lsn = Some(lsn);
            }
            Step::End => {
                if scan.offset() < buf.len() {
                    // The zeros a crashed writer had written ahead of its records: not damage,
                    // and cut so that appends continue right after the last record.
                    verdict = Verdict::Keep {
                        cut: Some(scan.offset()),
                        stop: false,
                        damaged: false,
                    };
                }
                break;
            }
            Step::Damage {
                offset,
                kind,
                resume,
            } => {
                let found = damage(offset, resume.unwrap_or(buf.len()) - offset, kind);
                match (mode, resume) {
                    (RecoveryMode::TolerateTornTail | RecoveryMode::SkipCorrupt, _)
                        if torn_tail =>
                    {
                        report.bytes_truncated += (buf.len() - offset) as u64;
                        report.torn_tail = Some(found);
                        verdict = Verdict::Keep {
                            cut: Some(offset),
                            stop: false,
                            damaged: true,
                        };
                        break;
                    }
                    (RecoveryMode::SkipCorrupt, Some(resume)) => {
                        report.skipped.push(found);
                        scan.skip_to(resume);
                    }
                    (RecoveryMode::SkipCorrupt, None) => {
                        // Nothing intact follows in this segment, and it is not a torn tail.
                        report.skipped.push(found);
                        break;
                    }
                    (RecoveryMode::PointInTime, _) => {
                        report.bytes_truncated += (buf.len() - offset) as u64;
                        report.stopped_at = Some(found);
                        verdict = Verdict::Keep {
                            cut: Some(offset),
                            stop: true,
                            damaged: true,
                        };
                        break;
                    }
                    _ => return Err(crate::Error::Corruption(found)),
                }
            }
        }
    }
    *expected = Some(scan.next_lsn());
    if report.skipped.len() > skipped_before
        && let Verdict::Keep { damaged, .. } = &mut verdict
    {
        *damaged = true;
    }
    Ok(verdict)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

    use super::*;
    use crate::format::{encode_frame, encode_header, payload_crc};

    /// The last segment of a file log.
    const LAST: Unit = Unit::Segment { last: true };

    /// A segment of three records from LSN 1, with `zeros` zero bytes after them.
    fn segment(zeros: usize) -> Vec<u8> {
        let mut buf = encode_header(1, 0).to_vec();
        for (i, p) in [&b"one"[..], b"two", b"three"].iter().enumerate() {
            encode_frame(&mut buf, i as u64 + 1, p, payload_crc(p));
        }
        buf.resize(buf.len() + zeros, 0);
        buf
    }

    fn verdict(buf: &[u8], mode: RecoveryMode) -> Verdict {
        let mut report = RecoveryReport {
            mode,
            ..RecoveryReport::default()
        };
        examine(buf, 1, "seg", LAST, 1 << 20, &mut None, &mut report).unwrap()
    }

    #[test]
    fn only_damage_needs_a_second_read() {
        let clean = segment(0);
        assert!(!verdict(&clean, RecoveryMode::TolerateTornTail).rests_on_damage());
        // Zeros written ahead of the records are cut, but they are not damage.
        let zeros = segment(100);
        let cut = verdict(&zeros, RecoveryMode::TolerateTornTail);
        assert!(matches!(cut, Verdict::Keep { cut: Some(_), .. }));
        assert!(!cut.rests_on_damage());

        let mut torn = segment(100);
        let last = clean.len() - 1;
        torn[last] ^= 1;
        for mode in [
            RecoveryMode::TolerateTornTail,
            RecoveryMode::PointInTime,
            RecoveryMode::SkipCorrupt,
        ] {
            assert!(verdict(&torn, mode).rests_on_damage(), "{mode:?}");
        }

        // A damaged middle record that SkipCorrupt skips: the segment is kept, on damage.
        let mut middle = segment(0);
        middle[crate::format::HEADER_LEN + 20] ^= 1;
        let skipped = verdict(&middle, RecoveryMode::SkipCorrupt);
        assert!(matches!(skipped, Verdict::Keep { cut: None, .. }));
        assert!(skipped.rests_on_damage());
    }

    /// Zeros after an object's last record are damage, not the end of its records: a segment's
    /// zeros ahead are cut without a report, and an object cut like them lost acknowledged
    /// records silently (found by a helper agent's review).
    #[test]
    fn zeros_after_an_objects_records_are_damage() {
        let zeros = segment(64);
        let records = segment(0).len();
        for newest in [false, true] {
            for mode in [
                RecoveryMode::TolerateTornTail,
                RecoveryMode::AbsoluteConsistency,
            ] {
                let mut report = RecoveryReport {
                    mode,
                    ..RecoveryReport::default()
                };
                let unit = Unit::Object { newest };
                let err =
                    examine(&zeros, 1, "obj", unit, 1 << 20, &mut None, &mut report).unwrap_err();
                assert!(
                    matches!(err, crate::Error::Corruption(ref d)
                        if d.kind == DamageKind::Incomplete && d.offset == records as u64),
                    "{mode:?}: {err}"
                );
            }
        }
        // The explicit modes cut the newest object after its records, and say so.
        for mode in [RecoveryMode::PointInTime, RecoveryMode::SkipCorrupt] {
            let mut report = RecoveryReport {
                mode,
                ..RecoveryReport::default()
            };
            let unit = Unit::Object { newest: true };
            let verdict = examine(&zeros, 1, "obj", unit, 1 << 20, &mut None, &mut report);
            assert!(
                matches!(verdict, Ok(Verdict::Keep { cut: Some(cut), damaged: true, .. }) if cut == records),
                "{mode:?}: {verdict:?}"
            );
            assert_eq!(report.records, 3);
            assert_eq!(report.bytes_truncated, 64, "{mode:?}");
        }
        // An object that ends at its last record is whole.
        let mut report = RecoveryReport::default();
        let whole = examine(
            &segment(0),
            1,
            "obj",
            Unit::Object { newest: true },
            1 << 20,
            &mut None,
            &mut report,
        );
        assert!(matches!(
            whole,
            Ok(Verdict::Keep {
                cut: None,
                damaged: false,
                ..
            })
        ));
    }

    #[test]
    fn a_unit_based_at_lsn_zero_is_a_bad_header() {
        let mut buf = encode_header(0, 0).to_vec();
        encode_frame(&mut buf, 0, b"zero", payload_crc(b"zero"));
        let mut report = RecoveryReport::default();
        let err = examine(&buf, 0, "seg", LAST, 1 << 20, &mut None, &mut report).unwrap_err();
        assert!(
            matches!(err, crate::Error::Corruption(ref d) if d.kind == DamageKind::BadHeader),
            "{err}"
        );
    }

    /// A unit with a bad header that the mode drops, with nothing kept before it: the log goes
    /// on at the LSN its name gives, not at 1.
    #[test]
    fn a_dropped_first_unit_sets_where_the_log_goes_on() {
        let mut buf = segment(0);
        buf[3] ^= 1;
        for mode in [RecoveryMode::PointInTime, RecoveryMode::SkipCorrupt] {
            let mut report = RecoveryReport {
                mode,
                ..RecoveryReport::default()
            };
            let mut expected = None;
            let verdict = examine(&buf, 1000, "seg", LAST, 1 << 20, &mut expected, &mut report);
            assert!(matches!(verdict, Ok(Verdict::Drop { .. })), "{verdict:?}");
            assert_eq!(expected, Some(1000), "{mode:?}");
        }
    }

    #[test]
    fn reads_that_disagree_confirm_nothing() {
        assert!(confirm(b"abc", b"abc", "seg").is_ok());
        let err = confirm(b"abc", b"abd", "seg").unwrap_err();
        assert!(err.to_string().contains("disagree"), "{err}");
    }
}
