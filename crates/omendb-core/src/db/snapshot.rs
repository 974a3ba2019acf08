//! [`Snapshot`]: reads at one LSN, kept readable until dropped.

use std::ops::{ControlFlow, RangeBounds};
use std::sync::Arc;

use arrow_array::RecordBatch;
use bytes::Bytes;
use futures::stream::BoxStream;

use super::options::{Aggregate, ScanOptions};
use super::table::View;
use super::{Inner, Table};
use crate::error::Result;
use crate::key::{Key, key_bounds};
use crate::memtable::Lsn;
use crate::table::Value;

/// A consistent view of the database at one LSN. While it lives, compaction keeps every version
/// it can see; drop it when done.
#[derive(Debug)]
pub struct Snapshot {
    inner: Arc<Inner>,
    lsn: Lsn,
}

impl Snapshot {
    pub(crate) fn new(inner: Arc<Inner>) -> Self {
        let lsn = inner.visibility.pin();
        Self { inner, lsn }
    }

    /// The LSN it reads at: it sees exactly the writes with LSNs up to this one.
    pub fn lsn(&self) -> Lsn {
        self.lsn
    }

    fn view(&self, table: &Table) -> Result<View<'_>> {
        Ok(View {
            inner: self.inner.own(table)?,
            snapshot: Some(self.lsn),
            overlay: None,
        })
    }

    /// The row at `key` in `table`.
    pub async fn get(&self, table: &Table, key: impl Into<Key>) -> Result<Option<Vec<Value>>> {
        self.view(table)?.get(table.def(), key.into()).await
    }

    /// The value at `key` in a key-value `table`.
    pub async fn get_value(&self, table: &Table, key: impl Into<Key>) -> Result<Option<Bytes>> {
        self.view(table)?.get_value(table.def(), key.into()).await
    }

    /// The rows at `keys` in `table`, in order.
    pub async fn multi_get<K: Into<Key> + Copy>(
        &self,
        table: &Table,
        keys: &[K],
    ) -> Result<Vec<Option<Vec<Value>>>> {
        let keys: Vec<Key> = keys.iter().map(|&k| k.into()).collect();
        self.view(table)?.multi_get(table.def(), &keys).await
    }

    /// The values at `keys` in a key-value `table`, in order.
    pub async fn multi_get_values<K: Into<Key> + Copy>(
        &self,
        table: &Table,
        keys: &[K],
    ) -> Result<Vec<Option<Bytes>>> {
        let keys: Vec<Key> = keys.iter().map(|&k| k.into()).collect();
        self.view(table)?.multi_get_values(table.def(), &keys).await
    }

    /// The rows in `range` of `table`.
    pub fn scan<K: Into<Key> + Copy>(
        &self,
        table: &Table,
        range: impl RangeBounds<K>,
        options: ScanOptions,
    ) -> Result<BoxStream<'static, Result<RecordBatch>>> {
        self.view(table)?
            .scan(table.def(), key_bounds(&range), &options)
    }

    /// The rows in `range` of a key-value `table`, lent to `visit` (see
    /// [`Table::scan_values`]).
    pub async fn scan_values<K: Into<Key> + Copy>(
        &self,
        table: &Table,
        range: impl RangeBounds<K>,
        options: ScanOptions,
        mut visit: impl FnMut(Key, &[u8]) -> ControlFlow<()> + Send,
    ) -> Result<usize> {
        self.view(table)?
            .scan_values(table.def(), key_bounds(&range), &options, &mut visit)
            .await
    }

    /// `function` of `column` over `range` of `table` (see [`Table::aggregate`]).
    pub async fn aggregate<K: Into<Key> + Copy>(
        &self,
        table: &Table,
        range: impl RangeBounds<K>,
        column: &str,
        function: Aggregate,
        bucket: Option<u64>,
    ) -> Result<RecordBatch> {
        self.view(table)?
            .aggregate(table.def(), key_bounds(&range), column, function, bucket)
            .await
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        self.inner.visibility.unpin(self.lsn);
    }
}
