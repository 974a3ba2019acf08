//! The change stream: committed write batches in LSN order, read from the WAL.
//!
//! Each [`Change`] carries its LSN, the resume position (`changes(lsn + 1)` continues after it).
//! The WAL drops records once they are flushed to segments, but keeps those after a live
//! snapshot's LSN and from a live stream's position on; a position older than the oldest record
//! it still holds gives [`Error::ChangesGone`], and a consumer must then copy a snapshot and
//! stream from the one after its LSN.
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

/// Payload bytes read from the WAL at a time, at most (past the record that crosses it). The
/// records wait as the log returned them and are decoded one change at a time, as the consumer
/// asks. Each read starts a new read of the log, which loads the segment (or object) holding
/// its first record whole: a read of 256 records at a time, as before the thirty-third session,
/// loaded a 64 MiB segment of 200-byte records about 1,300 times to stream it (found by a
/// helper agent's review); 8 MiB at a time loads it about eight times.
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
    /// Records read and not yet decoded, from `next` on.
    records: VecDeque<omendb_wal::Record>,
    /// Whether the log is known durable up to `end`.
    durable: bool,
    /// The error that ended the last read, reported once the changes before it are out.
    failed: Option<Error>,
    /// Why the stream ends at `end` rather than at the LSN visible when it began (the log
    /// failed before the rest was durable), reported once the changes up to `end` are out.
    cut: Option<Error>,
    /// The position whose records the log keeps for this stream (moved up before each read).
    held: Lsn,
}

impl State {
    /// Keeps the log's records from `next` on, and no longer those before it.
    fn hold_from_next(&mut self) {
        if self.next != self.held {
            self.inner.visibility.hold_log(self.next);
            self.inner.visibility.release_log(self.held);
            self.held = self.next;
        }
    }
}

impl Drop for State {
    fn drop(&mut self) {
        self.inner.visibility.release_log(self.held);
    }
}

pub(crate) fn stream(inner: Arc<Inner>, from: Lsn) -> BoxStream<'static, Result<Change>> {
    let next = from.max(1);
    // Every position a consumer got from this database is at most one past its last LSN
    // (handed-out changes are durable, so a crash never takes their LSNs back): one beyond
    // that is another database's, or a copy's newer than this one, and would silently skip the
    // changes up to it once they were written.
    let last = inner.wal.last_lsn().unwrap_or(0);
    if next > last.saturating_add(1) {
        return stream::once(std::future::ready(Err(Error::BadInput(format!(
            "change stream position {from} is beyond this database's log, which ends at LSN \
             {last}"
        )))))
        .boxed();
    }
    let end = inner.visibility.visible();
    inner.visibility.hold_log(next);
    let state = State {
        inner,
        next,
        end,
        records: VecDeque::new(),
        durable: false,
        failed: None,
        cut: None,
        held: next,
    };
    stream::try_unfold(state, |mut state| async move {
        loop {
            if state.next <= state.end
                && let Some(record) = state.records.pop_front()
            {
                // Against the version of now: writes to a table dropped since are left out.
                let version = state.inner.version.load_full();
                match change(&version, state.next, record) {
                    Ok(change) => {
                        state.next += 1;
                        match change {
                            Some(change) => return Ok(Some((change, state))),
                            // A claim: nothing to hand out.
                            None => continue,
                        }
                    }
                    // Reported after the changes before it, which are handed out first.
                    Err(err) => {
                        state.records.clear();
                        state.failed = Some(err);
                    }
                }
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
            state.hold_from_next();
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
            state.records = records.into();
        }
    })
    .boxed()
}

/// Records of the WAL from `from`, up to [`READ_AHEAD_BYTES`] of payload, and the error that
/// stopped the read early, if one did.
async fn read(inner: &Inner, from: Lsn) -> (Vec<omendb_wal::Record>, Option<omendb_wal::Error>) {
    let mut records = inner.wal.read_from(from).scan(0usize, |bytes, record| {
        let within = *bytes < READ_AHEAD_BYTES;
        if let Ok(record) = &record {
            *bytes += record.payload.len();
        }
        std::future::ready(within.then_some(record))
    });
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
