//! The framing of a serialized model: header, kind-specific payload, CRC32C.
//!
//! Layout (all integers little-endian; see `docs/file-formats.md`):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `OMIX` |
//! | 4 | 2 | format version (1) |
//! | 6 | 1 | kind: 1 binary search, 2 RMI, 3 PLA |
//! | 7 | 1 | reserved, 0 |
//! | 8 | 8 | key count |
//! | 16 | 8 | first key |
//! | 24 | 8 | last key |
//! | 32 | 4 | payload length `P` |
//! | 36 | `P` | payload |
//! | 36 + `P` | 4 | CRC32C of bytes `0 .. 36 + P` |

use super::{IndexError, IndexKind, KeySet};

/// First four bytes of every serialized model.
pub(crate) const MAGIC: [u8; 4] = *b"OMIX";
/// The format version this build writes and reads.
pub(crate) const VERSION: u16 = 1;
const HEADER_LEN: usize = 36;
const CRC_LEN: usize = 4;

fn kind_byte(kind: IndexKind) -> u8 {
    match kind {
        IndexKind::BinarySearch => 1,
        IndexKind::Rmi => 2,
        IndexKind::Pla => 3,
    }
}

/// Frames a payload written by `payload` with the header and checksum.
pub(crate) fn encode(kind: IndexKind, keys: KeySet, payload: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + CRC_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.push(kind_byte(kind));
    out.push(0);
    out.extend_from_slice(&keys.len.to_le_bytes());
    out.extend_from_slice(&keys.first.to_le_bytes());
    out.extend_from_slice(&keys.last.to_le_bytes());
    out.extend_from_slice(&[0; 4]); // payload length, patched below
    payload(&mut out);
    let len = match u32::try_from(out.len() - HEADER_LEN) {
        Ok(len) => len,
        // A payload past the frame's 4 GiB (a model of over 134M leaves or 178M segments, made
        // only with a budget or ε forced by hand) is stored as binary search over the same keys:
        // a slower model, never an undecodable one.
        Err(_) => {
            out.truncate(HEADER_LEN);
            out[6] = kind_byte(IndexKind::BinarySearch);
            0
        }
    };
    out[32..36].copy_from_slice(&len.to_le_bytes());
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// A checked, decoded frame: what the header says and the payload to parse.
pub(crate) struct Frame<'a> {
    pub(crate) kind: IndexKind,
    pub(crate) keys: KeySet,
    pub(crate) payload: Reader<'a>,
}

/// Checks length, magic, version, checksum and kind, and returns the payload.
pub(crate) fn decode(bytes: &[u8]) -> Result<Frame<'_>, IndexError> {
    if bytes.len() < HEADER_LEN + CRC_LEN {
        return Err(IndexError::Truncated {
            needed: HEADER_LEN + CRC_LEN,
            available: bytes.len(),
        });
    }
    let mut header = Reader::new(&bytes[..HEADER_LEN]);
    if header.bytes(4)? != MAGIC {
        return Err(IndexError::corrupt("bad magic number"));
    }
    // The version comes before the checksum: a newer format may frame its bytes differently.
    let version = header.u16()?;
    if version != VERSION {
        return Err(IndexError::UnsupportedVersion {
            found: version,
            supported: VERSION,
        });
    }
    let kind = header.u8()?;
    let reserved = header.u8()?;
    let keys = KeySet {
        len: header.u64()?,
        first: header.u64()?,
        last: header.u64()?,
    };
    let payload_len = header.u32()? as usize;
    let total = HEADER_LEN
        .checked_add(payload_len)
        .and_then(|n| n.checked_add(CRC_LEN))
        .ok_or_else(|| IndexError::corrupt("payload length overflows"))?;
    if bytes.len() < total {
        return Err(IndexError::Truncated {
            needed: total,
            available: bytes.len(),
        });
    }
    if bytes.len() > total {
        return Err(IndexError::corrupt(format!(
            "{} trailing bytes after the checksum",
            bytes.len() - total
        )));
    }
    let body = &bytes[..total - CRC_LEN];
    let mut crc = Reader::new(&bytes[total - CRC_LEN..]);
    let stored = crc.u32()?;
    let computed = crc32c::crc32c(body);
    if stored != computed {
        return Err(IndexError::corrupt(format!(
            "checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
        )));
    }
    // Checked after the checksum: a non-zero byte there is a writer's deliberate flag this build
    // does not know, which it must not ignore; a flipped bit fails the checksum first.
    if reserved != 0 {
        return Err(IndexError::corrupt(format!(
            "reserved header byte is {reserved}, not 0 (written by a newer build?)"
        )));
    }
    let kind = match kind {
        1 => IndexKind::BinarySearch,
        2 => IndexKind::Rmi,
        3 => IndexKind::Pla,
        other => return Err(IndexError::corrupt(format!("unknown index kind {other}"))),
    };
    if keys.len == 0 && (keys.first != 0 || keys.last != 0) || keys.first > keys.last {
        return Err(IndexError::corrupt("inconsistent key range in header"));
    }
    Ok(Frame {
        kind,
        keys,
        payload: Reader::new(&body[HEADER_LEN..]),
    })
}

/// Bounds-checked little-endian reads over a byte slice.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, at: 0 }
    }

    pub(crate) fn bytes(&mut self, len: usize) -> Result<&'a [u8], IndexError> {
        let end = self.at.checked_add(len).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let out = &self.bytes[self.at..end];
                self.at = end;
                Ok(out)
            }
            None => Err(IndexError::Truncated {
                needed: self.at.saturating_add(len),
                available: self.bytes.len(),
            }),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], IndexError> {
        let mut out = [0; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, IndexError> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, IndexError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, IndexError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, IndexError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A finite, non-negative `f64`: every slope and intercept the models store is one, and a
    /// negative slope would break the monotonicity that makes their bounds hold.
    pub(crate) fn slope(&mut self) -> Result<f64, IndexError> {
        let v = f64::from_le_bytes(self.array()?);
        if v.is_finite() && v >= 0.0 {
            Ok(v)
        } else {
            Err(IndexError::corrupt(format!("invalid slope {v}")))
        }
    }

    /// A finite `f64` of either sign.
    pub(crate) fn finite(&mut self) -> Result<f64, IndexError> {
        let v = f64::from_le_bytes(self.array()?);
        if v.is_finite() {
            Ok(v)
        } else {
            Err(IndexError::corrupt(format!("invalid number {v}")))
        }
    }

    /// A count of `item_len`-byte records that must fit in what is left.
    pub(crate) fn count(&mut self, item_len: usize) -> Result<usize, IndexError> {
        let n = self.u32()? as usize;
        let needed = n.saturating_mul(item_len);
        if needed > self.remaining() {
            return Err(IndexError::Truncated {
                needed: self.at.saturating_add(needed),
                available: self.bytes.len(),
            });
        }
        Ok(n)
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    /// Fails unless every byte was consumed.
    pub(crate) fn finish(&self) -> Result<(), IndexError> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(IndexError::corrupt(format!(
                "{} unexpected bytes at the end of the payload",
                self.remaining()
            )))
        }
    }
}

/// Little-endian writes, the inverse of [`Reader`].
pub(crate) trait Writer {
    fn put_u32(&mut self, v: u32);
    fn put_u64(&mut self, v: u64);
    fn put_f64(&mut self, v: f64);
}

impl Writer for Vec<u8> {
    fn put_u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_f64(&mut self, v: f64) {
        self.extend_from_slice(&v.to_le_bytes());
    }
}
