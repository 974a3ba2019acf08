//! The bytes of the log: the 32-byte header of a segment file or object and the framing of each
//! record, as written down in `docs/file-formats.md` ("Write-ahead log"). All integers are
//! little-endian.

use crate::{DamageKind, Lsn};

/// Bytes of the header at the start of every segment file and every object.
pub(crate) const HEADER_LEN: usize = 32;
/// Bytes of the framing before each record's payload: length, CRC32C, LSN.
pub(crate) const FRAME_HEADER_LEN: usize = 16;
/// Identifies an OmenDB WAL segment or object.
const MAGIC: [u8; 8] = *b"OMENWAL\0";
/// The format version this code writes: 2 carries the writer's token in the header.
const VERSION: u32 = 2;
/// The first version, still read: flags where version 2 has its token, no token.
const VERSION_1: u32 = 1;

/// Bytes a record with a payload of `payload_len` bytes occupies in the log.
pub(crate) fn frame_len(payload_len: usize) -> usize {
    FRAME_HEADER_LEN + payload_len
}

/// The CRC32C of a payload, computed by the appender outside the queue's lock.
pub(crate) fn payload_crc(payload: &[u8]) -> u32 {
    crc32c::crc32c(payload)
}

/// The record checksum: CRC32C over the payload followed by the length and LSN fields, so that a
/// damaged length or LSN is caught as well as a damaged payload. The payload comes first so the
/// expensive part can be computed before the LSN is known.
fn frame_crc(payload_crc: u32, len: u32, lsn: Lsn) -> u32 {
    let mut tail = [0u8; 12];
    tail[..4].copy_from_slice(&len.to_le_bytes());
    tail[4..].copy_from_slice(&lsn.to_le_bytes());
    crc32c::crc32c_append(payload_crc, &tail)
}

/// Appends the frame of one record to `buf`. The caller has checked that the payload fits the
/// record limit, which is at most `u32::MAX`.
pub(crate) fn encode_frame(buf: &mut Vec<u8>, lsn: Lsn, payload: &[u8], payload_crc: u32) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&frame_crc(payload_crc, len, lsn).to_le_bytes());
    buf.extend_from_slice(&lsn.to_le_bytes());
    buf.extend_from_slice(payload);
}

/// The header of a segment file or object whose first record has LSN `base_lsn`, written by the
/// writer whose token is `token` (an object-store writer's random token, by which it recognises
/// its own object when an upload's answer was lost; 0 in a local segment file).
pub(crate) fn encode_header(base_lsn: Lsn, token: u64) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[..8].copy_from_slice(&MAGIC);
    header[8..12].copy_from_slice(&VERSION.to_le_bytes());
    header[12..20].copy_from_slice(&token.to_le_bytes());
    header[20..28].copy_from_slice(&base_lsn.to_le_bytes());
    let crc = crc32c::crc32c(&header[..28]);
    header[28..32].copy_from_slice(&crc.to_le_bytes());
    header
}

/// The base LSN of a valid header (version 2, or version 1) at the start of `buf`, or `None` if
/// it is missing or damaged.
pub(crate) fn decode_header(buf: &[u8]) -> Option<Lsn> {
    let header = buf.get(..HEADER_LEN)?;
    if header[..8] != MAGIC {
        return None;
    }
    match u32_at(header, 8) {
        VERSION if u32_at(header, 28) == crc32c::crc32c(&header[..28]) => Some(u64_at(header, 20)),
        // Version 1: flags (12..16), base LSN (16..24), CRC32C of bytes 0..24, reserved.
        VERSION_1 if u32_at(header, 24) == crc32c::crc32c(&header[..24]) => {
            Some(u64_at(header, 16))
        }
        _ => None,
    }
}

/// One decoded frame.
enum Frame<'a> {
    Valid { lsn: Lsn, payload: &'a [u8] },
    Damaged(DamageKind),
}

/// Decodes the frame at the start of `buf`. A frame longer than `max_payload` is damage only
/// if it is not intact: the limit may have been lowered since the record was written, and an
/// intact record above it is still an acknowledged one (cutting it as a torn tail lost it).
fn decode_frame(buf: &[u8], max_payload: usize) -> Frame<'_> {
    if buf.len() < FRAME_HEADER_LEN {
        return Frame::Damaged(DamageKind::Incomplete);
    }
    let len = u32_at(buf, 0);
    let payload_len = len as usize;
    let damaged = |kind| {
        Frame::Damaged(if payload_len > max_payload {
            DamageKind::BadLength
        } else {
            kind
        })
    };
    let Some(payload) = buf.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + payload_len) else {
        return damaged(DamageKind::Incomplete);
    };
    let lsn = u64_at(buf, 8);
    if u32_at(buf, 4) != frame_crc(payload_crc(payload), len, lsn) {
        return damaged(DamageKind::Checksum);
    }
    Frame::Valid { lsn, payload }
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(bytes)
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(bytes)
}

/// One step of a [`Scanner`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step<'a> {
    /// An intact record with the expected LSN (or, after skipped damage, a later one).
    Record {
        /// Its LSN.
        lsn: Lsn,
        /// Its payload.
        payload: &'a [u8],
    },
    /// Damage at `offset`; `resume` is the offset of the next intact record after it, if any.
    Damage {
        /// Offset of the damage in the scanned buffer.
        offset: usize,
        /// What is wrong.
        kind: DamageKind,
        /// Where the next intact record starts; `None` when nothing intact follows.
        resume: Option<usize>,
    },
    /// The buffer ends after the last record, exactly or followed only by zeros (the space the
    /// writer zero-filled ahead of its records; a frame never starts with an all-zero header,
    /// since LSN 0 does not exist).
    End,
}

impl Step<'_> {
    /// Whether this damage is a torn tail: a partial or corrupt record after which nothing intact
    /// follows. A record with a valid checksum but the wrong LSN is never a torn tail.
    pub(crate) fn is_torn_tail(&self) -> bool {
        matches!(
            self,
            Step::Damage {
                kind: DamageKind::Incomplete | DamageKind::Checksum | DamageKind::BadLength,
                resume: None,
                ..
            }
        )
    }
}

/// Walks the frames of one segment or object body, checking checksums and LSN order.
#[derive(Debug)]
pub(crate) struct Scanner<'a> {
    buf: &'a [u8],
    pos: usize,
    /// The LSN the next record must carry.
    next_lsn: Lsn,
    max_payload: usize,
    /// After skipped damage the next intact record may carry a later LSN.
    allow_gap: bool,
}

impl<'a> Scanner<'a> {
    /// Scans `buf` (a whole segment or object, header included) whose header says `base_lsn`.
    pub(crate) fn new(buf: &'a [u8], base_lsn: Lsn, max_payload: usize) -> Self {
        Scanner {
            buf,
            pos: HEADER_LEN.min(buf.len()),
            next_lsn: base_lsn,
            max_payload,
            allow_gap: false,
        }
    }

    /// The LSN the next record is expected to carry.
    pub(crate) fn next_lsn(&self) -> Lsn {
        self.next_lsn
    }

    /// The offset of the next frame: after [`Step::End`], where the records end.
    pub(crate) fn offset(&self) -> usize {
        self.pos
    }

    /// Decodes the next frame. After [`Step::Damage`] the scanner stays put until
    /// [`Scanner::skip_to`] moves it.
    pub(crate) fn step(&mut self) -> Step<'a> {
        let rest = &self.buf[self.pos..];
        // Zeros after a record end the log only when nothing but zeros follows; any other byte
        // after them is damage, found and classified below like any other.
        if rest.iter().all(|&b| b == 0) {
            return Step::End;
        }
        let kind = match decode_frame(rest, self.max_payload) {
            Frame::Valid { lsn, payload } => {
                let expected = lsn == self.next_lsn || (self.allow_gap && lsn > self.next_lsn);
                // `u64::MAX` is no LSN (none follows it): a crafted or damaged record.
                if let (true, Some(next)) = (expected, lsn.checked_add(1)) {
                    self.pos += frame_len(payload.len());
                    self.next_lsn = next;
                    self.allow_gap = false;
                    return Step::Record { lsn, payload };
                }
                // A later LSN is an intact record after a gap: skipping resumes right here, so
                // the record itself is kept. An earlier LSN is a duplicate and is skipped.
                let resume = if lsn > self.next_lsn && lsn < Lsn::MAX {
                    Some(self.pos)
                } else {
                    self.find_next_frame(self.pos + 1)
                };
                return Step::Damage {
                    offset: self.pos,
                    kind: DamageKind::LsnMismatch {
                        expected: self.next_lsn,
                        found: lsn,
                    },
                    resume,
                };
            }
            Frame::Damaged(kind) => kind,
        };
        Step::Damage {
            offset: self.pos,
            kind,
            resume: self.find_next_frame(self.pos + 1),
        }
    }

    /// Continues at `offset` (a `resume` of a [`Step::Damage`]), accepting a gap in LSNs there.
    pub(crate) fn skip_to(&mut self, offset: usize) {
        self.pos = offset.min(self.buf.len());
        self.allow_gap = true;
    }

    /// The offset of the first intact frame at or after `from` whose LSN could follow the records
    /// already seen and whose length is within the record limit. Every frame is at least 16
    /// bytes, so an LSN more than `buf.len()` past the expected one cannot belong here; that
    /// cheap filter, and the limit on the bytes checksummed at each candidate, keep the
    /// byte-by-byte search fast (without the limit, crafted bytes with a plausible LSN every 16
    /// bytes made it checksum the rest of the segment at each of them).
    fn find_next_frame(&self, from: usize) -> Option<usize> {
        let last = self.buf.len().checked_sub(FRAME_HEADER_LEN)?;
        let low = self.next_lsn;
        let high = low.saturating_add(self.buf.len() as u64);
        (from..=last).find(|&off| {
            let lsn = u64_at(self.buf, off + 8);
            lsn >= low
                && lsn <= high
                && u32_at(self.buf, off) as usize <= self.max_payload
                && matches!(
                    decode_frame(&self.buf[off..], self.max_payload),
                    Frame::Valid { .. }
                )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(payloads: &[&[u8]], base: Lsn) -> Vec<u8> {
        let mut buf = encode_header(base, 0).to_vec();
        for (i, p) in payloads.iter().enumerate() {
            encode_frame(&mut buf, base + i as u64, p, payload_crc(p));
        }
        buf
    }

    #[test]
    fn header_round_trips_and_detects_damage() {
        let header = encode_header(42, 0xfeed_beef_0bad_f00d);
        assert_eq!(decode_header(&header), Some(42));
        // A flip anywhere in the header, token included, is damage.
        for byte in 0..HEADER_LEN {
            let mut damaged = header;
            damaged[byte] ^= 1;
            assert_eq!(decode_header(&damaged), None, "byte {byte}");
        }
        assert_eq!(decode_header(&header[..10]), None);
    }

    #[test]
    fn version_1_headers_are_still_read() {
        // Bytes as version 1 wrote them (docs/file-formats.md): magic, version, flags, base
        // LSN, CRC32C of bytes 0..24, reserved.
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(b"OMENWAL\0");
        header[8..12].copy_from_slice(&1u32.to_le_bytes());
        header[16..24].copy_from_slice(&77u64.to_le_bytes());
        let crc = crc32c::crc32c(&header[..24]);
        header[24..28].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_header(&header), Some(77));
        header[17] ^= 1;
        assert_eq!(decode_header(&header), None);
        // An unknown version is not a header.
        let mut future = encode_header(5, 1);
        future[8] = 3;
        assert_eq!(decode_header(&future), None);
    }

    #[test]
    fn scanner_reads_every_record_then_ends() {
        let buf = log(&[b"a", b"", b"ccc"], 7);
        let mut scan = Scanner::new(&buf, 7, 100);
        assert_eq!(
            scan.step(),
            Step::Record {
                lsn: 7,
                payload: b"a"
            }
        );
        assert_eq!(
            scan.step(),
            Step::Record {
                lsn: 8,
                payload: b""
            }
        );
        assert_eq!(
            scan.step(),
            Step::Record {
                lsn: 9,
                payload: b"ccc"
            }
        );
        assert_eq!(scan.step(), Step::End);
        assert_eq!(scan.next_lsn(), 10);
    }

    #[test]
    fn flipped_bit_in_middle_is_not_a_torn_tail_and_can_be_skipped() {
        let mut buf = log(&[b"first", b"second", b"third"], 1);
        let second = HEADER_LEN + frame_len(5);
        buf[second + FRAME_HEADER_LEN + 2] ^= 0x10;
        let mut scan = Scanner::new(&buf, 1, 100);
        assert!(matches!(scan.step(), Step::Record { lsn: 1, .. }));
        let step = scan.step();
        assert!(!step.is_torn_tail());
        let Step::Damage {
            offset,
            kind,
            resume,
        } = step
        else {
            panic!("expected damage, got {step:?}");
        };
        assert_eq!((offset, kind), (second, DamageKind::Checksum));
        let resume = resume.unwrap();
        assert_eq!(resume, second + frame_len(6));
        scan.skip_to(resume);
        assert_eq!(
            scan.step(),
            Step::Record {
                lsn: 3,
                payload: b"third"
            }
        );
        assert_eq!(scan.step(), Step::End);
    }

    #[test]
    fn zeros_after_the_records_end_the_scan_but_a_byte_after_them_is_damage() {
        let mut buf = log(&[b"a", b"bb"], 1);
        let end = buf.len();
        buf.resize(end + 1000, 0);
        let mut scan = Scanner::new(&buf, 1, 100);
        assert!(matches!(scan.step(), Step::Record { lsn: 1, .. }));
        assert!(matches!(scan.step(), Step::Record { lsn: 2, .. }));
        assert_eq!(scan.step(), Step::End);
        assert_eq!(scan.offset(), end);

        buf[end + 500] = 1;
        let mut scan = Scanner::new(&buf, 1, 100);
        scan.step();
        scan.step();
        let step = scan.step();
        assert!(step.is_torn_tail(), "{step:?}");
        assert!(matches!(step, Step::Damage { offset, .. } if offset == end));
    }

    #[test]
    fn an_intact_record_above_the_limit_is_read_and_a_damaged_one_is_bad_length() {
        let mut buf = log(&[&[7u8; 50]], 1);
        let mut scan = Scanner::new(&buf, 1, 49);
        assert!(matches!(scan.step(), Step::Record { lsn: 1, payload } if payload == [7u8; 50]));
        assert_eq!(scan.step(), Step::End);

        let last = buf.len() - 1;
        buf[last] ^= 1;
        let mut scan = Scanner::new(&buf, 1, 49);
        let step = scan.step();
        assert!(step.is_torn_tail());
        assert!(matches!(
            step,
            Step::Damage {
                kind: DamageKind::BadLength,
                ..
            }
        ));
    }

    /// The search after damage passes over intact frames longer than the limit (the bound on
    /// what it checksums); one within it is found.
    #[test]
    fn the_search_after_damage_takes_frames_within_the_limit() {
        for (limit, found) in [(49, false), (50, true)] {
            let mut buf = log(&[b"first", &[7u8; 50]], 1);
            buf[HEADER_LEN + FRAME_HEADER_LEN] ^= 1;
            let mut scan = Scanner::new(&buf, 1, limit);
            let step = scan.step();
            let second = HEADER_LEN + frame_len(5);
            match step {
                Step::Damage { resume, .. } => {
                    assert_eq!(resume, found.then_some(second), "limit {limit}")
                }
                step => panic!("{step:?}"),
            }
        }
    }

    #[test]
    fn a_record_at_the_largest_lsn_is_damage_not_an_overflow() {
        let buf = log(&[b"x"], Lsn::MAX);
        for allow_gap in [false, true] {
            let mut scan = Scanner::new(&buf, 1, 100);
            if allow_gap {
                scan.skip_to(HEADER_LEN);
            }
            let step = scan.step();
            assert!(
                matches!(
                    step,
                    Step::Damage {
                        kind: DamageKind::LsnMismatch {
                            found: Lsn::MAX,
                            ..
                        },
                        resume: None,
                        ..
                    }
                ),
                "{step:?}"
            );
        }
    }

    #[test]
    fn valid_record_with_wrong_lsn_is_a_mismatch() {
        let buf = log(&[b"x"], 5);
        let mut scan = Scanner::new(&buf, 4, 100);
        let step = scan.step();
        assert!(!step.is_torn_tail());
        assert!(matches!(
            step,
            Step::Damage {
                kind: DamageKind::LsnMismatch {
                    expected: 4,
                    found: 5
                },
                ..
            }
        ));
    }
}
