//! The change stream: committed write batches in LSN order, read from the WAL.
//!
//! Each [`Change`] carries its LSN, the resume position (`changes(lsn + 1)` continues after it).
//! The WAL drops records once they are flushed to segments, so a position older than the oldest
//! record it still holds gives [`Error::ChangesGone`]; a consumer must then copy the segments.
//! The stream ends at the LSN that was visible when it started.

use std::collections::VecDeque;
use std::sync::Arc;

use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};

use super::Inner;
use crate::batch::{Write, WriteBatch};
use crate::error::{Error, Result};
use crate::key::Key;
use crate::memtable::Lsn;
use crate::table::Value;

/// Records read from the WAL at a time.
const READ_AHEAD: usize = 256;

/// One committed write batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// The batch's LSN.
    pub lsn: Lsn,
    /// Its writes, in order. Writes to tables dropped since are left out.
    pub writes: Vec<ChangedRow>,
}

/// One write of a change.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ChangedRow {
    /// A row was put.
    Put {
        /// The table.
        table: String,
        /// The key.
        key: Key,
        /// The row's values in column order.
        values: Vec<Value>,
    },
    /// A key was deleted.
    Delete {
        /// The table.
        table: String,
        /// The key.
        key: Key,
    },
    /// Every key from `first` to `last` (inclusive) was deleted.
    DeleteRange {
        /// The table.
        table: String,
        /// The first key deleted.
        first: Key,
        /// The last key deleted.
        last: Key,
    },
}

struct State {
    inner: Arc<Inner>,
    next: Lsn,
    end: Lsn,
    buffered: VecDeque<Change>,
}

pub(crate) fn stream(inner: Arc<Inner>, from: Lsn) -> BoxStream<'static, Result<Change>> {
    let end = inner.visibility.visible();
    let state = State {
        inner,
        next: from.max(1),
        end,
        buffered: VecDeque::new(),
    };
    stream::try_unfold(state, |mut state| async move {
        loop {
            if let Some(change) = state.buffered.pop_front() {
                return Ok(Some((change, state)));
            }
            if state.next > state.end {
                return Ok(None);
            }
            state.inner.check_open()?;
            let records: Vec<_> = state
                .inner
                .wal
                .read_from(state.next)
                .take(READ_AHEAD)
                .try_collect()
                .await?;
            // The WAL may drop records while the stream runs (a flush truncates it): the next
            // record must be the one asked for, on every read, or the gap is reported.
            let first = records.first().map(|r| r.lsn);
            if first != Some(state.next) {
                return Err(Error::ChangesGone {
                    requested: state.next,
                    oldest: first.unwrap_or(state.end + 1),
                });
            }
            if records.is_empty() {
                return Ok(None);
            }
            let version = state.inner.version.load_full();
            for record in records {
                if record.lsn > state.end {
                    state.next = state.end + 1;
                    break;
                }
                state.next = record.lsn + 1;
                // An object-store log's claim (`Wal::claim`) changed nothing.
                if record.payload.is_empty() {
                    continue;
                }
                let batch = WriteBatch::decode(record.payload)
                    .map_err(|err| Error::Corrupt(format!("WAL record {}: {err}", record.lsn)))?;
                let mut writes = Vec::with_capacity(batch.len());
                for write in batch.writes() {
                    let Some(table) = version.by_id.get(&write.table()) else {
                        continue;
                    };
                    let def = &table.def;
                    let key = |k: u64| def.key_type.decode(k);
                    writes.push(match write {
                        Write::Put { key: k, row, .. } => ChangedRow::Put {
                            table: def.name.clone(),
                            key: key(*k),
                            values: def.codec.decode_values(row)?,
                        },
                        Write::Delete { key: k, .. } => ChangedRow::Delete {
                            table: def.name.clone(),
                            key: key(*k),
                        },
                        Write::DeleteRange { first, last, .. } => ChangedRow::DeleteRange {
                            table: def.name.clone(),
                            first: key(*first),
                            last: key(*last),
                        },
                    });
                }
                state.buffered.push_back(Change {
                    lsn: record.lsn,
                    writes,
                });
            }
        }
    })
    .boxed()
}
