//! Turning the bytes of one segment file or object back into records, for readers of either log.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::format::{self, Scanner, Step};
use crate::{Damage, DamageKind, Lsn, Record};

/// Which records a reader wants and how it treats damage.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    /// First LSN wanted.
    pub(crate) from: Lsn,
    /// Last LSN wanted: the last one appended when the read began.
    pub(crate) upto: Lsn,
    /// The log's record limit.
    pub(crate) max_record_bytes: usize,
    /// Skip damage (as [`crate::RecoveryMode::SkipCorrupt`] recovery did) instead of failing.
    pub(crate) skip_corrupt: bool,
}

/// Appends the wanted records of `buf` (a whole segment or object whose name says `base`) to
/// `out`. Returns `true` once `upto` has been reached, so later segments need not be read.
pub(crate) fn replay(
    buf: &[u8],
    base: Lsn,
    location: &str,
    window: Window,
    out: &mut VecDeque<Record>,
) -> Result<bool> {
    let damage = |offset: usize, kind| {
        Error::Corruption(Damage {
            location: location.to_owned(),
            offset: offset as u64,
            len: 0,
            kind,
        })
    };
    if format::decode_header(buf) != Some(base) {
        if window.skip_corrupt {
            return Ok(false);
        }
        return Err(damage(0, DamageKind::BadHeader));
    }
    let mut scan = Scanner::new(buf, base, window.max_record_bytes);
    loop {
        match scan.step() {
            Step::Record { lsn, payload } => {
                if lsn > window.upto {
                    return Ok(true);
                }
                if lsn >= window.from {
                    out.push_back(Record {
                        lsn,
                        payload: Bytes::copy_from_slice(payload),
                    });
                }
                if lsn == window.upto {
                    // Stop before bytes a concurrent write may still be adding.
                    return Ok(true);
                }
            }
            Step::End => return Ok(false),
            Step::Damage {
                offset,
                kind,
                resume,
            } => match (window.skip_corrupt, resume) {
                (true, Some(resume)) => scan.skip_to(resume),
                (true, None) => return Ok(false),
                (false, _) => return Err(damage(offset, kind)),
            },
        }
    }
}
