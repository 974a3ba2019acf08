//! Write batches: the writes one commit applies atomically, possibly across tables, and their
//! encoding as one WAL record (format: `docs/file-formats.md`, "Write batch").
//!
//! One batch is one WAL record, so recovery applies a batch whole or not at all: the WAL's
//! checksum covers the record, and decoding refuses anything malformed instead of applying part
//! of it.

use bytes::{Buf, BufMut, Bytes};

/// The batch format version this build writes and reads.
pub const BATCH_VERSION: u8 = 1;

const PUT: u8 = 1;
/// Bytes a put adds to the record besides its row: kind, table id, key, row length.
pub(crate) const PUT_OVERHEAD: usize = 1 + 4 + 8 + 4;
const DELETE: u8 = 2;
/// Bytes a delete takes: kind, table id, key.
pub(crate) const DELETE_LEN: usize = 1 + 4 + 8;
const DELETE_RANGE: u8 = 3;
/// Bytes a range delete takes: kind, table id, first and last key.
pub(crate) const DELETE_RANGE_LEN: usize = 1 + 4 + 8 + 8;

/// One write of a batch. Keys are stored keys (see [`crate::key`]); rows are the engine's
/// encoded rows, opaque here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// `row` becomes `key`'s value in `table`.
    Put {
        /// The table's id.
        table: u32,
        /// The stored key.
        key: u64,
        /// The encoded row.
        row: Bytes,
    },
    /// `key` is deleted from `table`.
    Delete {
        /// The table's id.
        table: u32,
        /// The stored key.
        key: u64,
    },
    /// Every key in `first..=last` is deleted from `table`.
    DeleteRange {
        /// The table's id.
        table: u32,
        /// The first stored key deleted.
        first: u64,
        /// The last stored key deleted (inclusive, so the largest key can be covered).
        last: u64,
    },
}

impl Write {
    /// The table written.
    pub fn table(&self) -> u32 {
        match self {
            Write::Put { table, .. }
            | Write::Delete { table, .. }
            | Write::DeleteRange { table, .. } => *table,
        }
    }

    /// Bytes this write takes in the encoded batch.
    pub fn encoded_len(&self) -> usize {
        match self {
            Write::Put { row, .. } => PUT_OVERHEAD + row.len(),
            Write::Delete { .. } => DELETE_LEN,
            Write::DeleteRange { .. } => DELETE_RANGE_LEN,
        }
    }
}

/// A batch that does not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// The bytes end inside a write (or the header).
    #[error("write batch truncated in the item starting at byte {at}")]
    Truncated {
        /// Where the item that was cut short starts.
        at: usize,
    },
    /// A range delete whose first key is above its last.
    #[error("range delete at byte {at} runs from {first} down to {last}")]
    InvertedRange {
        /// Where the write starts.
        at: usize,
        /// Its first key.
        first: u64,
        /// Its last key.
        last: u64,
    },
    /// A write of an unknown kind.
    #[error("unknown write kind {kind} at byte {at}")]
    UnknownWrite {
        /// The kind byte found.
        kind: u8,
        /// Where.
        at: usize,
    },
    /// Written by a newer format.
    #[error("write batch format {found}; this build reads {supported}")]
    UnsupportedVersion {
        /// The version byte found.
        found: u8,
        /// The version this build reads.
        supported: u8,
    },
    /// Bytes follow the last write the header announced.
    #[error("{extra} bytes after the last write")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
}

/// The writes of one commit, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    writes: Vec<Write>,
    /// The writes' encoded bytes, kept as they are added: the engine checks its batch limit at
    /// every write, which a sum over the writes would make quadratic.
    bytes: usize,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a put.
    pub fn put(&mut self, table: u32, key: u64, row: Bytes) -> &mut Self {
        self.push(Write::Put { table, key, row })
    }

    /// Adds a delete.
    pub fn delete(&mut self, table: u32, key: u64) -> &mut Self {
        self.push(Write::Delete { table, key })
    }

    fn push(&mut self, write: Write) -> &mut Self {
        self.bytes += write.encoded_len();
        self.writes.push(write);
        self
    }

    /// Adds a range delete of `range` (inclusive). The batch's writes share one LSN, and the
    /// memtable lets writes at a range's own LSN survive it, so earlier puts and deletes of this
    /// table that the range covers are dropped here: later writes win, as the order says. An
    /// empty range deletes nothing and is not added.
    pub fn delete_range(&mut self, table: u32, range: std::ops::RangeInclusive<u64>) -> &mut Self {
        let (first, last) = (*range.start(), *range.end());
        if first > last {
            return self;
        }
        let bytes = &mut self.bytes;
        self.writes.retain(|write| {
            let keep = match *write {
                Write::Put { table: t, key, .. } | Write::Delete { table: t, key } => {
                    t != table || !(first..=last).contains(&key)
                }
                Write::DeleteRange { .. } => true,
            };
            if !keep {
                *bytes -= write.encoded_len();
            }
            keep
        });
        self.push(Write::DeleteRange { table, first, last })
    }

    /// The writes, in order.
    pub fn writes(&self) -> &[Write] {
        &self.writes
    }

    /// The number of writes.
    pub fn len(&self) -> usize {
        self.writes.len()
    }

    /// Whether the batch holds no write.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// Bytes [`encode`](Self::encode) will produce.
    pub fn encoded_len(&self) -> usize {
        5 + self.bytes
    }

    /// The WAL record: version, write count, then each write (little-endian).
    ///
    /// `None` if the batch cannot be encoded: more than `u32::MAX` writes, or a row longer than
    /// `u32::MAX` bytes (the engine's limits are far below both). Checked before anything is
    /// allocated.
    pub fn encode(&self) -> Option<Vec<u8>> {
        u32::try_from(self.writes.len()).ok()?;
        let rows_fit = self.writes.iter().all(|write| match write {
            Write::Put { row, .. } => u32::try_from(row.len()).is_ok(),
            _ => true,
        });
        if !rows_fit {
            return None;
        }
        let mut out = Vec::with_capacity(self.encoded_len());
        out.put_u8(BATCH_VERSION);
        out.put_u32_le(self.writes.len() as u32);
        for write in &self.writes {
            match write {
                Write::Put { table, key, row } => {
                    out.put_u8(PUT);
                    out.put_u32_le(*table);
                    out.put_u64_le(*key);
                    // Checked above: the length fits.
                    out.put_u32_le(row.len() as u32);
                    out.put_slice(row);
                }
                Write::Delete { table, key } => {
                    out.put_u8(DELETE);
                    out.put_u32_le(*table);
                    out.put_u64_le(*key);
                }
                Write::DeleteRange { table, first, last } => {
                    out.put_u8(DELETE_RANGE);
                    out.put_u32_le(*table);
                    out.put_u64_le(*first);
                    out.put_u64_le(*last);
                }
            }
        }
        Some(out)
    }

    /// Reads a batch written by [`encode`](Self::encode); rows share `bytes` (no copies).
    pub fn decode(bytes: Bytes) -> Result<Self, BatchError> {
        let total = bytes.len();
        let mut input = bytes;
        let at = |input: &Bytes| total - input.remaining();
        // `start`: where the item being read began (0 for the header), which the error names.
        let need = |input: &Bytes, n: usize, start: usize| {
            if input.remaining() < n {
                Err(BatchError::Truncated { at: start })
            } else {
                Ok(())
            }
        };
        need(&input, 1, 0)?;
        let version = input.get_u8();
        if version != BATCH_VERSION {
            return Err(BatchError::UnsupportedVersion {
                found: version,
                supported: BATCH_VERSION,
            });
        }
        need(&input, 4, 0)?;
        let count = input.get_u32_le() as usize;
        // Each write takes at least 13 bytes, which bounds what a damaged count can reserve.
        let mut writes = Vec::with_capacity(count.min(input.remaining() / 13));
        for _ in 0..count {
            let kind_at = at(&input);
            need(&input, 13, kind_at)?;
            let kind = input.get_u8();
            let table = input.get_u32_le();
            let key = input.get_u64_le();
            writes.push(match kind {
                PUT => {
                    need(&input, 4, kind_at)?;
                    let len = input.get_u32_le() as usize;
                    need(&input, len, kind_at)?;
                    Write::Put {
                        table,
                        key,
                        row: input.split_to(len),
                    }
                }
                DELETE => Write::Delete { table, key },
                DELETE_RANGE => {
                    need(&input, 8, kind_at)?;
                    let last = input.get_u64_le();
                    if key > last {
                        return Err(BatchError::InvertedRange {
                            at: kind_at,
                            first: key,
                            last,
                        });
                    }
                    Write::DeleteRange {
                        table,
                        first: key,
                        last,
                    }
                }
                kind => return Err(BatchError::UnknownWrite { kind, at: kind_at }),
            });
        }
        if input.has_remaining() {
            return Err(BatchError::TrailingBytes {
                extra: input.remaining(),
            });
        }
        Ok(Self {
            writes,
            // Every byte after the header is a write's (trailing bytes were refused).
            bytes: total - 5,
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn batch_of(writes: Vec<Write>) -> WriteBatch {
        WriteBatch {
            bytes: writes.iter().map(Write::encoded_len).sum(),
            writes,
        }
    }

    fn write() -> impl Strategy<Value = Write> {
        prop_oneof![
            (
                any::<u32>(),
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..40)
            )
                .prop_map(|(table, key, row)| Write::Put {
                    table,
                    key,
                    row: Bytes::from(row)
                }),
            (any::<u32>(), any::<u64>()).prop_map(|(table, key)| Write::Delete { table, key }),
            (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(table, a, b)| {
                Write::DeleteRange {
                    table,
                    first: a.min(b),
                    last: a.max(b),
                }
            }),
        ]
    }

    proptest! {
        #[test]
        fn batches_round_trip(writes in proptest::collection::vec(write(), 0..30)) {
            let batch = batch_of(writes);
            let bytes = batch.encode().unwrap();
            prop_assert_eq!(bytes.len(), batch.encoded_len());
            prop_assert_eq!(WriteBatch::decode(Bytes::from(bytes)).unwrap(), batch);
        }

        #[test]
        fn the_kept_length_is_the_encoded_length(writes in proptest::collection::vec(write(), 0..30)) {
            // Added one by one, so range deletes drop the writes they cover.
            let mut batch = WriteBatch::new();
            for write in writes {
                match write {
                    Write::Put { table, key, row } => batch.put(table % 3, key % 50, row),
                    Write::Delete { table, key } => batch.delete(table % 3, key % 50),
                    Write::DeleteRange { table, first, last } => {
                        batch.delete_range(table % 3, first % 50..=last % 50)
                    }
                };
            }
            prop_assert_eq!(batch.encode().unwrap().len(), batch.encoded_len());
        }

        #[test]
        fn every_truncation_is_refused(writes in proptest::collection::vec(write(), 1..10)) {
            let bytes = batch_of(writes).encode().unwrap();
            for len in 0..bytes.len() {
                prop_assert!(WriteBatch::decode(Bytes::copy_from_slice(&bytes[..len])).is_err());
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = WriteBatch::decode(Bytes::from(bytes));
        }
    }

    #[test]
    fn malformed_batches_say_what_is_wrong() {
        let mut batch = WriteBatch::new();
        batch.put(1, 2, Bytes::from_static(b"row")).delete(1, 3);
        let good = batch.encode().unwrap();
        let mut newer = good.clone();
        newer[0] = 2;
        assert_eq!(
            WriteBatch::decode(Bytes::from(newer)),
            Err(BatchError::UnsupportedVersion {
                found: 2,
                supported: 1
            })
        );
        let mut unknown = good.clone();
        unknown[5] = 9;
        assert_eq!(
            WriteBatch::decode(Bytes::from(unknown)),
            Err(BatchError::UnknownWrite { kind: 9, at: 5 })
        );
        // Cut short anywhere in an item, the error names where the item starts: the put at
        // byte 5 (13 bytes of kind, table and key, a 4-byte length, 3 bytes of row), the
        // delete at byte 25; the header's item is the batch itself.
        for (len, at) in [(3, 0), (10, 5), (20, 5), (23, 5), (26, 25), (37, 25)] {
            assert_eq!(
                WriteBatch::decode(Bytes::copy_from_slice(&good[..len])),
                Err(BatchError::Truncated { at }),
                "cut at {len}"
            );
        }
        let mut trailing = good;
        trailing.push(0);
        assert_eq!(
            WriteBatch::decode(Bytes::from(trailing)),
            Err(BatchError::TrailingBytes { extra: 1 })
        );
        assert_eq!(
            WriteBatch::decode(Bytes::from_static(&[2])),
            Err(BatchError::UnsupportedVersion {
                found: 2,
                supported: 1
            })
        );
        let inverted = batch_of(vec![Write::DeleteRange {
            table: 1,
            first: 9,
            last: 3,
        }]);
        assert_eq!(
            WriteBatch::decode(Bytes::from(inverted.encode().unwrap())),
            Err(BatchError::InvertedRange {
                at: 5,
                first: 9,
                last: 3
            })
        );
    }

    #[test]
    #[allow(clippy::reversed_empty_ranges)] // the empty range is the point of the last call
    fn a_range_delete_drops_the_earlier_writes_it_covers() {
        let mut batch = WriteBatch::new();
        batch
            .put(1, 5, Bytes::from_static(b"gone"))
            .put(2, 5, Bytes::from_static(b"other table"))
            .delete(1, 20)
            .delete_range(1, 0..=9)
            .put(1, 6, Bytes::from_static(b"after"))
            .delete_range(1, 9..=3);
        assert_eq!(
            batch.writes(),
            [
                Write::Put {
                    table: 2,
                    key: 5,
                    row: Bytes::from_static(b"other table")
                },
                Write::Delete { table: 1, key: 20 },
                Write::DeleteRange {
                    table: 1,
                    first: 0,
                    last: 9
                },
                Write::Put {
                    table: 1,
                    key: 6,
                    row: Bytes::from_static(b"after")
                },
            ]
        );
    }
}
