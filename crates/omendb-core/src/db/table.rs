//! [`Table`]: a handle to one table's writes and reads, and the read view shared by tables,
//! snapshots and transactions.

use std::ops::{ControlFlow, RangeBounds};
use std::sync::Arc;

use arrow_array::RecordBatch;
use bytes::Bytes;
use futures::stream::BoxStream;
use omendb_storage::segment::Page;
use tracing::Instrument;

use super::aggregate;
use super::options::{Aggregate, ScanOptions, WriteOptions};
use super::read::{self, Explain, Scan};
use super::version::{TableState, Version};
use super::{Batch, Inner};
use crate::error::{Error, Result};
use crate::key::{Key, key_bounds};
use crate::memtable::Lsn;
use crate::table::{TableDef, Value};
use crate::version_cell::Loaded;

/// Rows per batch of the scan an aggregate folds.
const AGGREGATE_BATCH_ROWS: usize = 64 * 1024;

/// A table of an open database. Cheap to clone. Operations on a table that was dropped give
/// [`Error::UnknownTable`].
#[derive(Clone, Debug)]
pub struct Table {
    inner: Arc<Inner>,
    def: TableDef,
}

/// Reads at one snapshot, optionally over a transaction's own writes.
pub(crate) struct View<'a> {
    pub(crate) inner: &'a Arc<Inner>,
    /// A pinned snapshot, or `None` to read at the latest visible LSN.
    pub(crate) snapshot: Option<Lsn>,
    pub(crate) overlay: Option<read::Overlay>,
}

impl View<'_> {
    /// The snapshot and the version to read it in. The snapshot is fixed before the version is
    /// loaded, so the version holds every write the snapshot sees. An unpinned read also needs
    /// the version to keep every version of a key the snapshot sees: a compaction that ran
    /// after the snapshot was taken may have dropped some (its horizon is above the snapshot),
    /// so such a read takes a newer snapshot instead, one the compaction respected.
    fn pick(&self) -> (Lsn, Loaded<Version>) {
        loop {
            let snapshot = self
                .snapshot
                .unwrap_or_else(|| self.inner.visibility.visible());
            let version = self.inner.version.load();
            // A pinned snapshot is never below a compaction's horizon.
            if self.snapshot.is_some() || version.horizon <= snapshot {
                return (snapshot, version);
            }
        }
    }

    /// [`View::pick`] with the table's state, kept.
    fn resolve(&self, def: &TableDef) -> Result<(Lsn, Arc<Version>, Arc<TableState>)> {
        self.inner.check_open()?;
        let (snapshot, version) = self.pick();
        let table = Arc::clone(table_of(&version, def)?);
        Ok((snapshot, Loaded::into_inner(version), table))
    }

    pub(crate) async fn locate(&self, def: &TableDef, key: Key) -> Result<Option<read::Found>> {
        let stored = def.key_type.encode(key)?;
        let (snapshot, version, table) = self.resolve(def)?;
        let layers = read::mem_layers(&version, def.id, snapshot, self.overlay.as_ref());
        read::locate(&layers, &table, stored, snapshot).await
    }

    pub(crate) async fn get(&self, def: &TableDef, key: Key) -> Result<Option<Vec<Value>>> {
        self.point(def, key, read::RowValues(def)).await
    }

    pub(crate) async fn get_value(&self, def: &TableDef, key: Key) -> Result<Option<Bytes>> {
        if !def.is_key_value() {
            return Err(Error::BadInput(format!(
                "table {:?} is not a key-value table; use get",
                def.name
            )));
        }
        self.point(def, key, read::KvValue).await
    }

    /// One point read, its row made into the `answer`, in a `db.get` span where debug spans
    /// can be recorded.
    async fn point<A: read::Answer>(
        &self,
        def: &TableDef,
        key: Key,
        answer: A,
    ) -> Result<Option<A::Output>> {
        // The level check first, and one future: a span, even a disabled one, and
        // `#[tracing::instrument]`'s wrapping of the future cost a cached read 114 of its ~2,000
        // instructions.
        let span = tracing::level_enabled!(tracing::Level::DEBUG)
            .then(|| tracing::debug_span!("db.get", table = %def.name));
        let step = match &span {
            Some(span) => span.in_scope(|| self.point_step(def, key, &answer))?,
            None => self.point_step(def, key, &answer)?,
        };
        if let read::Step::Done(answer) = step {
            return Ok(answer);
        }
        // Boxed: the paths that wait would make every read's future large, and a future is
        // built and moved on each call (a 1,000-byte one was a tenth of a cached `get`).
        let waiting = Box::pin(self.point_waiting(def, key, step, &answer));
        match span {
            Some(span) => waiting.instrument(span).await,
            None => waiting.await,
        }
    }

    /// The synchronous part of [`Self::point`]: memtables and cached pages, under a version
    /// guard, which the common case never leaves.
    fn point_step<A: read::Answer>(
        &self,
        def: &TableDef,
        key: Key,
        answer: &A,
    ) -> Result<read::Step<A::Output>> {
        let stored = def.key_type.encode(key)?;
        self.inner.check_open()?;
        let (snapshot, version) = self.pick();
        let table = table_of(&version, def)?;
        read::point_step(
            &version,
            table,
            self.overlay.as_ref(),
            stored,
            snapshot,
            answer,
        )
    }

    /// What [`View::point`] left to do: read the row's page, or take the general path.
    async fn point_waiting<A: read::Answer>(
        &self,
        def: &TableDef,
        key: Key,
        step: read::Step<A::Output>,
        answer: &A,
    ) -> Result<Option<A::Output>> {
        let found = match step {
            read::Step::Done(answer) => return Ok(answer),
            read::Step::Fetch(segment, position) => read::Found::Segment(segment, position),
            read::Step::General => match self.locate(def, key).await? {
                Some(found) => found,
                None => return Ok(None),
            },
        };
        read::answer_found(found, answer).await
    }

    #[tracing::instrument(level = "debug", name = "db.multi_get", skip_all, fields(table = %def.name, keys = keys.len()))]
    pub(crate) async fn multi_get(
        &self,
        def: &TableDef,
        keys: &[Key],
    ) -> Result<Vec<Option<Vec<Value>>>> {
        self.multi(def, keys, read::RowValues(def)).await
    }

    #[tracing::instrument(level = "debug", name = "db.multi_get", skip_all, fields(table = %def.name, keys = keys.len()))]
    pub(crate) async fn multi_get_values(
        &self,
        def: &TableDef,
        keys: &[Key],
    ) -> Result<Vec<Option<Bytes>>> {
        if !def.is_key_value() {
            return Err(Error::BadInput(format!(
                "table {:?} is not a key-value table; use multi_get",
                def.name
            )));
        }
        self.multi(def, keys, read::KvValue).await
    }

    /// Many point reads at one snapshot, each row made into the `answer`.
    async fn multi<A: read::Answer>(
        &self,
        def: &TableDef,
        keys: &[Key],
        answer: A,
    ) -> Result<Vec<Option<A::Output>>> {
        let stored = keys
            .iter()
            .map(|&k| def.key_type.encode(k))
            .collect::<Result<Vec<_>, _>>()?;
        self.inner.check_open()?;
        let mut out = Vec::new();
        let misses = {
            let (snapshot, version) = self.pick();
            let table = table_of(&version, def)?;
            read::multi_step(
                &version,
                table,
                self.overlay.as_ref(),
                &stored,
                snapshot,
                &answer,
                &mut out,
            )?
        };
        let Some(misses) = misses else {
            // A segment newer than the snapshot: the general path, key by key, at one snapshot.
            let (snapshot, version, table) = self.resolve(def)?;
            let layers = read::mem_layers(&version, def.id, snapshot, self.overlay.as_ref());
            let mut out = Vec::with_capacity(keys.len());
            for key in stored {
                out.push(match read::locate(&layers, &table, key, snapshot).await? {
                    Some(found) => read::answer_found(found, &answer).await?,
                    None => None,
                });
            }
            return Ok(out);
        };
        for (segment, rows) in misses {
            let positions: Vec<u64> = rows.iter().map(|&(_, p)| p as u64).collect();
            let batch = segment
                .reader
                .fetch_many(&positions, segment.point_read())
                .await?;
            let pages = read::pages_of(&batch);
            let pages: Vec<&Page> = pages.iter().collect();
            for (i, &(slot, _)) in rows.iter().enumerate() {
                out[slot] = segment.row_in(&pages, i, |p, o| answer.pages(p, o));
            }
        }
        Ok(out)
    }

    pub(crate) fn scan_of(
        &self,
        def: &TableDef,
        range: (std::ops::Bound<Key>, std::ops::Bound<Key>),
        options: &ScanOptions,
    ) -> Result<Scan> {
        let stored = def.key_type.stored_range(range)?;
        let (snapshot, version, table) = self.resolve(def)?;
        Scan::new(
            &version,
            table,
            stored,
            snapshot,
            self.overlay.as_ref(),
            options,
        )
    }

    #[tracing::instrument(level = "debug", name = "db.scan", skip_all, fields(table = %def.name))]
    pub(crate) fn scan(
        &self,
        def: &TableDef,
        range: (std::ops::Bound<Key>, std::ops::Bound<Key>),
        options: &ScanOptions,
    ) -> Result<BoxStream<'static, Result<RecordBatch>>> {
        Ok(self.scan_of(def, range, options)?.into_stream())
    }

    #[tracing::instrument(level = "debug", name = "db.scan_values", skip_all, fields(table = %def.name))]
    pub(crate) async fn scan_values(
        &self,
        def: &TableDef,
        range: (std::ops::Bound<Key>, std::ops::Bound<Key>),
        options: &ScanOptions,
        visit: &mut (dyn FnMut(Key, &[u8]) -> ControlFlow<()> + Send),
    ) -> Result<usize> {
        if !def.is_key_value() {
            return Err(Error::BadInput(format!(
                "table {:?} is not a key-value table; use scan",
                def.name
            )));
        }
        if options.projection.is_some() {
            return Err(Error::BadInput(
                "a scan of values takes no projection: the value is the one column".to_owned(),
            ));
        }
        self.scan_of(def, range, options)?.lend_values(visit).await
    }

    #[tracing::instrument(level = "debug", name = "db.aggregate", skip_all, fields(table = %def.name))]
    pub(crate) async fn aggregate(
        &self,
        def: &TableDef,
        range: (std::ops::Bound<Key>, std::ops::Bound<Key>),
        column: &str,
        function: Aggregate,
        bucket: Option<u64>,
    ) -> Result<RecordBatch> {
        // Large batches of a fixed-width column: an aggregate keeps no batch, and a segment's
        // run is decoded in one pass per batch. A variable-width column (a count of strings)
        // gets a scan's batches, sized by its rows' bytes.
        let fixed_width = def.schema().field_with_name(column).is_ok_and(|field| {
            let data_type = field.data_type();
            data_type.is_primitive() || *data_type == arrow_schema::DataType::Boolean
        });
        let options = ScanOptions {
            projection: Some(vec![column.to_owned()]),
            batch_rows: fixed_width.then_some(AGGREGATE_BATCH_ROWS),
            ..ScanOptions::default()
        };
        let scan = self.scan_of(def, range, &options)?;
        aggregate::aggregate(scan, def, column, function, bucket).await
    }
}

impl Table {
    pub(crate) fn new(inner: Arc<Inner>, def: TableDef) -> Self {
        Self { inner, def }
    }

    /// The table's definition.
    pub fn def(&self) -> &TableDef {
        &self.def
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.def.name
    }

    /// Whether this is a table of the database `db` (this opening of it).
    pub(crate) fn belongs_to(&self, db: &Arc<Inner>) -> bool {
        Arc::ptr_eq(&self.inner, db)
    }

    fn view(&self) -> View<'_> {
        View {
            inner: &self.inner,
            snapshot: None,
            overlay: None,
        }
    }

    async fn write(
        &self,
        build: impl FnOnce(&mut Batch) -> Result<()>,
        options: WriteOptions,
    ) -> Result<Lsn> {
        let mut batch = Batch::new(Arc::clone(&self.inner));
        build(&mut batch)?;
        self.inner.commit(batch, options).await
    }

    /// Puts one row (`values` in column order) at `key`; returns the write's LSN.
    pub async fn put(
        &self,
        key: impl Into<Key>,
        values: &[Value],
        options: WriteOptions,
    ) -> Result<Lsn> {
        self.write(|b| b.put(self, key, values).map(drop), options)
            .await
    }

    /// Puts `value` at `key` in a key-value table.
    pub async fn put_value(
        &self,
        key: impl Into<Key>,
        value: impl Into<Bytes>,
        options: WriteOptions,
    ) -> Result<Lsn> {
        self.write(|b| b.put_value(self, key, value).map(drop), options)
            .await
    }

    /// Puts every row of `rows` (a `key` column and the value columns by name), atomically.
    pub async fn put_batch(&self, rows: &RecordBatch, options: WriteOptions) -> Result<Lsn> {
        self.write(|b| b.put_batch(self, rows).map(drop), options)
            .await
    }

    /// Deletes `key`.
    pub async fn delete(&self, key: impl Into<Key>, options: WriteOptions) -> Result<Lsn> {
        self.write(|b| b.delete(self, key).map(drop), options).await
    }

    /// Deletes every key in `range`.
    pub async fn delete_range<K: Into<Key> + Copy>(
        &self,
        range: impl RangeBounds<K>,
        options: WriteOptions,
    ) -> Result<Lsn> {
        self.write(|b| b.delete_range(self, range).map(drop), options)
            .await
    }

    /// The row at `key` (values in column order), if any.
    pub async fn get(&self, key: impl Into<Key>) -> Result<Option<Vec<Value>>> {
        self.view().get(&self.def, key.into()).await
    }

    /// The value at `key` of a key-value table, if any.
    pub async fn get_value(&self, key: impl Into<Key>) -> Result<Option<Bytes>> {
        self.view().get_value(&self.def, key.into()).await
    }

    /// The rows at `keys`, in order, at one snapshot.
    pub async fn multi_get<K: Into<Key> + Copy>(
        &self,
        keys: &[K],
    ) -> Result<Vec<Option<Vec<Value>>>> {
        let keys: Vec<Key> = keys.iter().map(|&k| k.into()).collect();
        self.view().multi_get(&self.def, &keys).await
    }

    /// The values at `keys` of a key-value table, in order, at one snapshot.
    pub async fn multi_get_values<K: Into<Key> + Copy>(
        &self,
        keys: &[K],
    ) -> Result<Vec<Option<Bytes>>> {
        let keys: Vec<Key> = keys.iter().map(|&k| k.into()).collect();
        self.view().multi_get_values(&self.def, &keys).await
    }

    /// The rows in `range` as a stream of batches (the key column first, then the projected
    /// value columns), at the snapshot of the call.
    pub fn scan<K: Into<Key> + Copy>(
        &self,
        range: impl RangeBounds<K>,
        options: ScanOptions,
    ) -> Result<BoxStream<'static, Result<RecordBatch>>> {
        self.view().scan(&self.def, key_bounds(&range), &options)
    }

    /// The rows in `range` of a key-value table, at the snapshot taken when the scan starts
    /// (its first poll), each lent to `visit` as its key and value in scan order until `visit`
    /// breaks: a scan that builds no batch, for a caller that reads each value once. `options`
    /// give the limit, the order and the rows read per step; a projection is `BadInput`, as is
    /// a typed table. Returns how many rows `visit` saw. `visit` runs after each step's merge,
    /// holding no lock a writer waits for (the step's memtables and segments stay referenced
    /// until the scan ends). Where a step lends values from cached pages, its visits run under
    /// an epoch pin of the page cache, during which no page the cache evicts is freed: a
    /// `visit` that blocks lets the cache's memory grow past its budget until it returns.
    pub async fn scan_values<K: Into<Key> + Copy>(
        &self,
        range: impl RangeBounds<K>,
        options: ScanOptions,
        mut visit: impl FnMut(Key, &[u8]) -> ControlFlow<()> + Send,
    ) -> Result<usize> {
        self.view()
            .scan_values(&self.def, key_bounds(&range), &options, &mut visit)
            .await
    }

    /// `function` of `column` over the rows in `range`; per bucket of `bucket` key units if
    /// given (columns `bucket` and the function's name), else one row.
    pub async fn aggregate<K: Into<Key> + Copy>(
        &self,
        range: impl RangeBounds<K>,
        column: &str,
        function: Aggregate,
        bucket: Option<u64>,
    ) -> Result<RecordBatch> {
        self.view()
            .aggregate(&self.def, key_bounds(&range), column, function, bucket)
            .await
    }

    /// What a read of `range` would touch.
    pub fn explain<K: Into<Key> + Copy>(&self, range: impl RangeBounds<K>) -> Result<Explain> {
        let view = self.view();
        let stored = self.def.key_type.stored_range(key_bounds(&range))?;
        let (snapshot, version, table) = view.resolve(&self.def)?;
        Ok(read::explain(&version, &table, stored, snapshot))
    }
}

/// `def`'s state in `version` (borrowed: point reads take no reference count on it).
#[inline]
fn table_of<'v>(version: &'v Version, def: &TableDef) -> Result<&'v Arc<TableState>> {
    version
        .by_id
        .get(&def.id)
        .ok_or_else(|| Error::UnknownTable(def.name.clone()))
}
