//! [`Transaction`]: snapshot isolation with read-your-writes, first committer wins.
//!
//! A transaction reads at the snapshot it began with, over its own writes (a private memtable
//! read at every LSN). Commit takes the commit lock, waits until every LSN assigned so far is
//! visible, and fails with [`Error::Conflict`] if any key it wrote — or, when serializable, any
//! key or range it read — has a committed write above its snapshot; otherwise its writes are one
//! WAL record, applied and made visible before the lock is released.

use std::collections::HashMap;
use std::ops::{ControlFlow, RangeBounds, RangeInclusive};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::RecordBatch;
use arrow_array::cast::AsArray;
use arrow_array::types::UInt64Type;
use bytes::Bytes;
use futures::TryStreamExt;
use futures::stream::BoxStream;

use super::options::{ScanOptions, WriteOptions};
use super::read::Overlay;
use super::table::View;
use super::version::Version;
use super::{Batch, Inner, Snapshot, Table};
use crate::batch::Write;
use crate::error::{Error, Result};
use crate::key::{Key, key_bounds};
use crate::memtable::{Lsn, Memtable};
use crate::table::Value;

/// How strictly a transaction is isolated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Isolation {
    /// Snapshot isolation: conflicts on keys both wrote.
    #[default]
    Snapshot,
    /// Also conflicts when a key or range it read was written by a transaction that committed
    /// after it began.
    Serializable,
}

/// A transaction. Dropping it without [`Transaction::commit`] discards its writes.
#[derive(Debug)]
pub struct Transaction {
    inner: Arc<Inner>,
    snapshot: Snapshot,
    isolation: Isolation,
    batch: Batch,
    /// Its own writes per table, each at its own private LSN (1, 2, ...) in order.
    overlays: HashMap<u32, Arc<Memtable>>,
    private_lsn: Lsn,
    /// Keys and ranges read, per table name and id (serializable only).
    reads: Vec<(String, u32, RangeInclusive<u64>)>,
    /// Keys and ranges written, per table.
    writes: Vec<(String, u32, RangeInclusive<u64>)>,
}

impl Transaction {
    pub(crate) fn new(inner: Arc<Inner>, isolation: Isolation) -> Self {
        let snapshot = Snapshot::new(Arc::clone(&inner));
        let batch = Batch::keeping_every_write(Arc::clone(&inner));
        Self {
            inner,
            snapshot,
            isolation,
            batch,
            overlays: HashMap::new(),
            private_lsn: 0,
            reads: Vec::new(),
            writes: Vec::new(),
        }
    }

    /// The LSN the transaction reads at.
    pub fn snapshot_lsn(&self) -> Lsn {
        self.snapshot.lsn()
    }

    /// Records the write the batch just took in the table's overlay.
    fn record_last(&mut self, table: &Table) {
        let Some(write) = self.batch_last() else {
            return;
        };
        self.private_lsn += 1;
        let lsn = self.private_lsn;
        let overlay = self
            .overlays
            .entry(table.def().id)
            .or_insert_with(|| Arc::new(Memtable::new()));
        let range = match write {
            Write::Put { key, row, .. } => {
                overlay.put(key, lsn, row);
                key..=key
            }
            Write::Delete { key, .. } => {
                overlay.delete(key, lsn);
                key..=key
            }
            Write::DeleteRange { first, last, .. } => {
                overlay.delete_range(first..=last, lsn);
                first..=last
            }
        };
        self.writes
            .push((table.name().to_owned(), table.def().id, range));
    }

    fn batch_last(&self) -> Option<Write> {
        self.batch.last().cloned()
    }

    /// Puts a row.
    pub fn put(&mut self, table: &Table, key: impl Into<Key>, values: &[Value]) -> Result<()> {
        self.batch.put(table, key, values)?;
        self.record_last(table);
        Ok(())
    }

    /// Puts a value in a key-value table.
    pub fn put_value(
        &mut self,
        table: &Table,
        key: impl Into<Key>,
        value: impl Into<Bytes>,
    ) -> Result<()> {
        self.batch.put_value(table, key, value)?;
        self.record_last(table);
        Ok(())
    }

    /// Deletes a key.
    pub fn delete(&mut self, table: &Table, key: impl Into<Key>) -> Result<()> {
        self.batch.delete(table, key)?;
        self.record_last(table);
        Ok(())
    }

    /// Deletes every key of a range.
    pub fn delete_range<K: Into<Key> + Copy>(
        &mut self,
        table: &Table,
        range: impl RangeBounds<K>,
    ) -> Result<()> {
        let stored = table.def().key_type.stored_range(key_bounds(&range))?;
        self.batch.delete_range(table, range)?;
        // An empty range adds no write.
        if stored.is_some() {
            self.record_last(table);
        }
        Ok(())
    }

    fn view(&self, table: &Table) -> Result<View<'_>> {
        Ok(View {
            inner: self.inner.own(table)?,
            snapshot: Some(self.snapshot.lsn()),
            overlay: self.overlays.get(&table.def().id).map(|writes| Overlay {
                writes: Arc::clone(writes),
                upto: self.private_lsn,
            }),
        })
    }

    fn note_read(&mut self, table: &Table, range: Option<RangeInclusive<u64>>) {
        if self.isolation == Isolation::Serializable
            && let Some(range) = range
        {
            self.reads
                .push((table.name().to_owned(), table.def().id, range));
        }
    }

    /// The row at `key`, seeing this transaction's own writes.
    pub async fn get(&mut self, table: &Table, key: impl Into<Key>) -> Result<Option<Vec<Value>>> {
        let key = key.into();
        let stored = table.def().key_type.encode(key)?;
        let row = self.view(table)?.get(table.def(), key).await?;
        self.note_read(table, Some(stored..=stored));
        Ok(row)
    }

    /// The value at `key` of a key-value table, seeing this transaction's own writes.
    pub async fn get_value(&mut self, table: &Table, key: impl Into<Key>) -> Result<Option<Bytes>> {
        let key = key.into();
        let stored = table.def().key_type.encode(key)?;
        let value = self.view(table)?.get_value(table.def(), key).await?;
        self.note_read(table, Some(stored..=stored));
        Ok(value)
    }

    /// The rows of `range`, seeing this transaction's own writes.
    pub fn scan<K: Into<Key> + Copy>(
        &mut self,
        table: &Table,
        range: impl RangeBounds<K>,
        options: ScanOptions,
    ) -> Result<BoxStream<'static, Result<RecordBatch>>> {
        let bounds = key_bounds(&range);
        let stored = table.def().key_type.stored_range(bounds)?;
        let stream = self.view(table)?.scan(table.def(), bounds, &options)?;
        self.note_read(table, stored);
        Ok(stream)
    }

    /// The rows in `range` of a key-value `table`, lent to `visit` (see
    /// [`Table::scan_values`]), seeing this transaction's own writes. A serializable
    /// transaction records the whole range as read, before any row is lent, as
    /// [`Transaction::scan`] does.
    pub async fn scan_values<K: Into<Key> + Copy>(
        &mut self,
        table: &Table,
        range: impl RangeBounds<K>,
        options: ScanOptions,
        mut visit: impl FnMut(Key, &[u8]) -> ControlFlow<()> + Send,
    ) -> Result<usize> {
        let bounds = key_bounds(&range);
        let stored = table.def().key_type.stored_range(bounds)?;
        // A table of another database is refused before anything is noted: its id means
        // nothing here, and checking it at commit could report a false conflict.
        self.inner.own(table)?;
        // Noted before any row is lent: `visit` may act on rows of a scan that then fails, or
        // whose future is dropped, and the commit must still check the range.
        self.note_read(table, stored);
        self.view(table)?
            .scan_values(table.def(), bounds, &options, &mut visit)
            .await
    }

    /// Commits: `Conflict` if another transaction committed a write this one must not
    /// overlook; otherwise the writes become visible at once, atomically, at the returned LSN.
    /// A caller that stops waiting does not stop the commit: like any write, it may or may not
    /// have happened.
    pub async fn commit(self, options: WriteOptions) -> Result<Lsn> {
        let inner = Arc::clone(&self.inner);
        // To its end in a task of its own, which holds the commit lock until the write is
        // applied: dropped with a caller that stopped waiting, the lock let the next
        // transaction check before this write's append had an LSN, and both committed.
        inner.to_end(self.check_and_commit(options)).await
    }

    async fn check_and_commit(self, options: WriteOptions) -> Result<Lsn> {
        let inner = Arc::clone(&self.inner);
        inner.check_writable()?;
        let _commit = inner.commit_lock.lock().await;
        // Every LSN assigned before the check is applied before the check reads.
        let assigned = inner.wal.last_lsn().unwrap_or(0);
        while !inner
            .visibility
            .wait_for(assigned, Duration::from_secs(1))
            .await
        {
            inner.check_writable()?;
        }
        let version = inner.version.load_full();
        let snapshot = self.snapshot.lsn();
        let checks = self.writes.iter().chain(match self.isolation {
            Isolation::Serializable => self.reads.iter(),
            Isolation::Snapshot => [].iter(),
        });
        for (name, table, range) in checks {
            if newest_write(&version, *table, range, snapshot).await? > snapshot {
                return Err(Error::Conflict {
                    table: name.clone(),
                });
            }
        }
        let lsn = inner.commit(self.batch, options).await?;
        while !inner.visibility.wait_for(lsn, Duration::from_secs(1)).await {
            inner.check_writable()?;
        }
        Ok(lsn)
    }

    /// Discards the transaction's writes.
    pub fn rollback(self) {}
}

/// The newest LSN of a committed write touching `range` of `table` (0 if none is known above
/// `snapshot`). Segments entirely at or below the snapshot cannot hold a newer write.
async fn newest_write(
    version: &Version,
    table: u32,
    range: &RangeInclusive<u64>,
    snapshot: Lsn,
) -> Result<Lsn> {
    let mut newest = version
        .memtables
        .iter()
        .filter_map(|g| g.table(table))
        .filter_map(|m| m.newest_lsn(range.clone()))
        .max()
        .unwrap_or(0);
    if newest > snapshot {
        return Ok(newest);
    }
    let Some(state) = version.by_id.get(&table) else {
        return Ok(0);
    };
    for segment in &state.segments {
        if segment.all_visible_at(snapshot) || !segment.overlaps(range) {
            continue;
        }
        let positions = segment.positions(range);
        let mut lsns = segment.reader.scan(
            positions.start as u64..positions.end as u64,
            &segment.lsn,
            8192,
        )?;
        while let Some(batch) = lsns.try_next().await? {
            let column = batch.column(0).as_primitive::<UInt64Type>();
            newest = newest.max(column.values().iter().copied().max().unwrap_or(0));
        }
    }
    Ok(newest)
}
