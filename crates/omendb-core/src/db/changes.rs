//! The change stream: committed write batches in LSN order, read from the WAL.
//!
//! Each [`Change`] carries its LSN, the resume position (`changes(lsn + 1)` continues after it).
//! The WAL drops records once they are flushed to segments, so a position older than the oldest
//! record it still holds gives [`Error::ChangesGone`]; a consumer must then copy the segments.
//! The stream ends at the LSN that was visible when it started, and hands out nothing before
//! the log has made it durable: a `Buffered` write lost in a crash gives its LSN to the next
//! write, and a consumer that had seen the lost one would skip the new one.

use std::collections::VecDeque;
use std::sync::Arc;

use futures::stream::{self, BoxStream, StreamExt};

use super::Inner;
use crate::batch::{Write, WriteBatch};
use crate::error::{Error, Result};
use crate::key::Key;
use crate::memtable::Lsn;
use crate::table::Value;

/// Records read from the WAL at a time, at most.
const READ_AHEAD: usize = 256;

/// Payload bytes read from the WAL at a time, at most (past the record that crosses it): 256
/// records of up to 16 MiB each held 4 GiB per stream before its first change was handed out.
const READ_AHEAD_BYTES: usize = 8 << 20;

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
    /// Whether the log is known durable up to `end`.
    durable: bool,
    /// The error that ended the last read, reported once the changes before it are out.
    failed: Option<Error>,
    /// Why the stream ends at `end` rather than at the LSN visible when it began (the log
    /// failed before the rest was durable), reported once the changes up to `end` are out.
    cut: Option<Error>,
}

pub(crate) fn stream(inner: Arc<Inner>, from: Lsn) -> BoxStream<'static, Result<Change>> {
    let end = inner.visibility.visible();
    let state = State {
        inner,
        next: from.max(1),
        end,
        buffered: VecDeque::new(),
        durable: false,
        failed: None,
        cut: None,
    };
    stream::try_unfold(state, |mut state| async move {
        loop {
            if let Some(change) = state.buffered.pop_front() {
                return Ok(Some((change, state)));
            }
            if let Some(err) = state.failed.take() {
                return Err(err);
            }
            if state.next > state.end {
                return match state.cut.take() {
                    Some(err) => Err(err),
                    None => Ok(None),
                };
            }
            state.inner.check_open()?;
            if !state.durable {
                // Syncs the log if nobody has asked yet (a `Buffered` write's record may be
                // visible before it is durable).
                if let Err(err) = state.inner.wal.wait_durable(state.end).await {
                    // A log a failure stopped: what was durable before it is handed out, then
                    // the error (it failed the whole stream).
                    let durable = state.inner.wal.last_durable_lsn().unwrap_or(0);
                    if durable < state.next {
                        return Err(err.into());
                    }
                    state.end = durable;
                    state.cut = Some(err.into());
                }
                state.durable = true;
            }
            let mut read_again = true;
            let records = loop {
                match read(&state.inner, state.next).await {
                    (records, None) => break records,
                    // The changes read before the error go out first; the next read lists the
                    // log again.
                    (records, Some(_)) if !records.is_empty() => break records,
                    // A segment or object the read listed was gone when it got there: a flush
                    // truncated the log meanwhile. Read again: the log as it is now says whether
                    // the changes are gone (until the thirty-first session the stream failed
                    // with the log's I/O error, and dropped the changes read before it).
                    (_, Some(_)) if std::mem::take(&mut read_again) => {}
                    (_, Some(err)) => return Err(err.into()),
                }
            };
            if records.is_empty() {
                return Err(Error::ChangesGone {
                    requested: state.next,
                    oldest: state.end + 1,
                });
            }
            let version = state.inner.version.load_full();
            for record in records {
                if state.next > state.end {
                    break;
                }
                match change(&version, state.next, record) {
                    Ok(change) => {
                        state.next += 1;
                        state.buffered.extend(change);
                    }
                    // Reported after the changes before it, which are handed out first.
                    Err(err) => {
                        state.failed = Some(err);
                        break;
                    }
                }
            }
        }
    })
    .boxed()
}

/// Up to [`READ_AHEAD`] records (or [`READ_AHEAD_BYTES`] of payload) of the WAL from `from`,
/// and the error that stopped the read early, if one did.
async fn read(inner: &Inner, from: Lsn) -> (Vec<omendb_wal::Record>, Option<omendb_wal::Error>) {
    let mut records = inner
        .wal
        .read_from(from)
        .scan(0usize, |bytes, record| {
            let within = *bytes < READ_AHEAD_BYTES;
            if let Ok(record) = &record {
                *bytes += record.payload.len();
            }
            std::future::ready(within.then_some(record))
        })
        .take(READ_AHEAD);
    let mut read = Vec::new();
    while let Some(record) = records.next().await {
        match record {
            Ok(record) => read.push(record),
            Err(err) => return (read, Some(err)),
        }
    }
    (read, None)
}

/// The change a WAL `record` holds (`None` for an object-store log's claim, which changed
/// nothing). The record must carry the `expected` LSN: the WAL may drop records while a stream
/// runs (a flush truncates it), and a log opened with `SkipCorrupt` lacks the records it
/// skipped. Either gap is reported, never passed over.
fn change(
    version: &super::version::Version,
    expected: Lsn,
    record: omendb_wal::Record,
) -> Result<Option<Change>> {
    if record.lsn != expected {
        return Err(Error::ChangesGone {
            requested: expected,
            oldest: record.lsn,
        });
    }
    if record.payload.is_empty() {
        return Ok(None);
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
    Ok(Some(Change {
        lsn: record.lsn,
        writes,
    }))
}
