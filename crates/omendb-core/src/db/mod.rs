//! The database: tables over the WAL, memtables and segments (design: `docs/rfcs/0001-engine.md`;
//! behaviour under failure: `docs/failure-modes.md`).
//!
//! A write is validated, encoded as one WAL record, appended (group commit), applied to the
//! active memtable generation at its LSN and made visible once every lower LSN is applied. The
//! append and apply run in a task of their own, so a caller that stops waiting cannot leave an
//! LSN appended but never applied. Full generations are frozen and flushed to segments by a
//! background task; the manifest then records them and the WAL before them is dropped.

mod aggregate;
mod batch;
mod builder;
mod changes;
mod charge;
mod compaction;
mod flush;
mod options;
mod read;
mod snapshot;
mod table;
mod transaction;
mod version;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use arrow_schema::Schema;
use object_store::ObjectStore;
use object_store::path::Path;
use omendb_storage::manifest::{ManifestData, ManifestWriter, TableEntry};
use omendb_storage::segment::PageCache;
use omendb_wal::{AppendOptions, Wal};
use tokio::sync::Notify;

use charge::ReadCharge;
use compaction::Chore;

pub use aggregate::MAX_BUCKETS as MAX_AGGREGATE_BUCKETS;
pub use batch::Batch;
pub use builder::Builder;
pub use changes::{Change, ChangedRow};
/// The options of a backend named by URL ([`Builder::url`]), re-exported so that callers of the
/// engine need not depend on `omendb-storage`.
pub use omendb_storage::BackendOptions;
pub use options::{Aggregate, Durability, ReadCompaction, ScanOptions, Settings, WriteOptions};
pub use read::{Explain, SegmentPlan};
pub use snapshot::Snapshot;
pub use table::Table;
pub use transaction::{Isolation, Transaction};

use crate::batch::WriteBatch;
use crate::error::{Error, Result};
use crate::key::KeyType;
use crate::memtable::Lsn;
use crate::segment::Segment;
use crate::table::TableDef;
use crate::version_cell::VersionCell;
use crate::visibility::Visibility;
use version::{TableState, Version};

/// An open database. Cheap to clone; every clone is the same database.
#[derive(Clone, Debug)]
pub struct Db {
    inner: Arc<Inner>,
}

/// Counters that describe the database's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbStats {
    /// The LSN reads see.
    pub visible_lsn: Lsn,
    /// Every write up to this LSN is in segments.
    pub flushed_lsn: Lsn,
    /// Memtable generations (the active one and those waiting to be flushed).
    pub memtables: usize,
    /// Bytes in memtables.
    pub memtable_bytes: usize,
    /// Live segments over all tables.
    pub segments: usize,
    /// Flushes since open.
    pub flushes: u64,
    /// Compactions since open.
    pub compactions: u64,
    /// Of those compactions, merges that reads paid for ([`ReadCompaction`]).
    pub read_compactions: u64,
    /// What overlapping runs have cost reads since open, as [`ReadCompaction`] estimates it,
    /// over the tables there are.
    pub read_charged: std::time::Duration,
    /// Of the compactions, merges made while the database took no writes
    /// ([`Settings::idle_compaction`]).
    pub idle_compactions: u64,
    /// Whether a compaction is running.
    pub compacting: bool,
    /// Whether the database holds work it does once it is idle ([`Settings::idle_compaction`])
    /// that is not done: a memtable large enough to flush (until the idle flush), or a balanced
    /// merge of overlapping runs (until it is made). It stays due while writes keep coming.
    pub idle_work_due: bool,
    /// Why writes are refused, if an earlier failure poisoned the database.
    pub failure: Option<String>,
    /// The compaction, garbage-collection or WAL-truncation failures (retried; writes go on)
    /// that the same chore has not since got past, each as `chore: error`.
    pub background_error: Option<String>,
    /// Reads served from cached pages since open (see [`omendb_storage::segment::CacheStats`]).
    pub cache_hits: u64,
    /// Pages reads fetched from the backend and decoded since open.
    pub cache_misses: u64,
    /// Bytes the page cache holds.
    pub cache_bytes: u64,
}

/// What the background work has done since open.
#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    flushes: u64,
    compactions: u64,
    read_compactions: u64,
    idle_compactions: u64,
    /// What reads were charged on tables dropped since open: `read_charged` is a total since
    /// open, which a drop must not take back (the server exports it as a running total).
    read_charged_dropped: std::time::Duration,
}

/// [`Inner::idle_lsn`] while the database is not idle.
pub(crate) const NOT_IDLE: Lsn = Lsn::MAX;

#[derive(Debug)]
pub(crate) struct Inner {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    wal: Arc<dyn Wal>,
    writer: tokio::sync::Mutex<ManifestWriter>,
    version: VersionCell<Version>,
    visibility: Visibility,
    cache: Arc<PageCache>,
    settings: Settings,
    failure: OnceLock<Error>,
    closed: AtomicBool,
    /// Wakes the background flusher.
    flush_wanted: Arc<Notify>,
    /// Wakes writers waiting for a flush.
    flushed: Notify,
    /// Serializes transaction commits (check, append, apply).
    commit_lock: tokio::sync::Mutex<()>,
    /// One flush at a time (the background task and `checkpoint`).
    flush_lock: tokio::sync::Mutex<()>,
    /// One compaction at a time.
    compact_lock: tokio::sync::Mutex<()>,
    /// The outcome of `close`, once it ran.
    closing: tokio::sync::Mutex<Option<Result<()>>>,
    background: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The running compaction task, if any.
    compaction: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// When garbage was last collected.
    last_gc: Mutex<Option<Instant>>,
    /// Each background chore's last failure (it did not poison writes), until it next succeeds.
    background_errors: Mutex<std::collections::BTreeMap<Chore, String>>,
    counters: Mutex<Counters>,
    /// Segments that left the current version (compacted or dropped) by object path, while a
    /// reader may still hold them: garbage collection keeps an object as long as its segment
    /// is alive here, however short the grace period.
    retired: Mutex<Vec<(String, std::sync::Weak<Segment>)>>,
    /// The WAL's last LSN when the background work found the database idle
    /// ([`Settings::idle_compaction`]), or [`NOT_IDLE`]: it is idle while no LSN follows.
    idle_lsn: AtomicU64,
}

impl Db {
    /// Opens (or creates) the embedded default at `path`: the WAL in `path/wal`, segments and
    /// manifests under `path/data`.
    pub async fn open(path: impl AsRef<std::path::Path>) -> Result<Db> {
        Db::builder().path(path).build().await
    }

    /// A builder to compose any WAL, backend and settings.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// Creates a table. `schema` `None` makes a key-value table (`value: Binary`).
    pub async fn create_table(
        &self,
        name: &str,
        key_type: KeyType,
        schema: Option<Schema>,
    ) -> Result<Table> {
        let inner = Arc::clone(&self.inner);
        let name = name.to_owned();
        self.inner
            .to_end(async move { inner.create_table(&name, key_type, schema).await })
            .await
    }

    /// Drops a table with its rows. Its segments are deleted after the grace period.
    pub async fn drop_table(&self, name: &str) -> Result<()> {
        let inner = Arc::clone(&self.inner);
        let name = name.to_owned();
        self.inner
            .to_end(async move { inner.drop_table(&name).await })
            .await
    }

    /// The tables' names, in order.
    pub fn list_tables(&self) -> Vec<String> {
        self.inner.version.load().tables.keys().cloned().collect()
    }

    /// The table named `name`.
    pub fn table(&self, name: &str) -> Result<Table> {
        let version = self.inner.version.load();
        let state = version
            .tables
            .get(name)
            .ok_or_else(|| Error::UnknownTable(name.to_owned()))?;
        Ok(Table::new(Arc::clone(&self.inner), state.def.clone()))
    }

    /// An empty write batch; writes across tables in one batch commit atomically.
    pub fn batch(&self) -> Batch {
        Batch::new(Arc::clone(&self.inner))
    }

    /// Commits `batch` atomically and returns its LSN.
    pub async fn write(&self, batch: Batch, options: WriteOptions) -> Result<Lsn> {
        self.inner.commit(batch, options).await
    }

    /// A consistent view at the visible LSN, kept readable (compaction keeps what it sees)
    /// until dropped.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot::new(Arc::clone(&self.inner))
    }

    /// Begins a snapshot-isolated transaction.
    pub fn begin(&self) -> Transaction {
        Transaction::new(Arc::clone(&self.inner), Isolation::Snapshot)
    }

    /// Begins a transaction with the given isolation.
    pub fn begin_with(&self, isolation: Isolation) -> Transaction {
        Transaction::new(Arc::clone(&self.inner), isolation)
    }

    /// Flushes every memtable to segments and returns the flushed LSN: after it, reopening
    /// replays nothing written before the call.
    pub async fn checkpoint(&self) -> Result<Lsn> {
        let inner = Arc::clone(&self.inner);
        self.inner
            .to_end(async move { inner.checkpoint().await })
            .await
    }

    /// Compacts every table whose segments overlap, and collects garbage past its grace.
    pub async fn compact(&self) -> Result<()> {
        let inner = Arc::clone(&self.inner);
        self.inner
            .to_end(async move { inner.compact_all().await })
            .await
    }

    /// The committed changes from `from` on, in LSN order, while the WAL still holds them. The
    /// stream, and every live [`Snapshot`], keep the records after them through flushes.
    pub fn changes(&self, from: Lsn) -> futures::stream::BoxStream<'static, Result<Change>> {
        changes::stream(Arc::clone(&self.inner), from)
    }

    /// Counters describing the database.
    pub fn stats(&self) -> DbStats {
        self.inner.stats()
    }

    /// Checks that the store holding the segments and manifests answers: one listing request
    /// under the database's prefix (for readiness probes; it reads nothing it returns).
    pub async fn check_storage(&self) -> Result<()> {
        let prefix = &self.inner.prefix;
        self.inner
            .store
            .list_with_delimiter(Some(prefix))
            .await
            .map(drop)
            .map_err(|e| omendb_storage::Error::from_store("list", prefix, e).into())
    }

    /// What recovery found in the WAL when the database was opened.
    pub fn wal_recovery(&self) -> omendb_wal::RecoveryReport {
        self.inner.wal.recovery_report().clone()
    }

    /// Stops the background work, syncs the WAL and refuses further calls. Reopening replays
    /// the WAL after the last flush.
    pub async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

/// Held by a write's task from before its append to after its apply: dropped on the way (the
/// task's runtime shut down under it), it refuses writes until reopen. The append may have
/// taken an LSN that is then never applied, and every later write and flush would wait on it
/// for good.
struct Unapplied(Option<Arc<Inner>>);

impl Drop for Unapplied {
    fn drop(&mut self) {
        if let Some(inner) = self.0.take() {
            inner.fail(Error::Corrupt(
                "a write's task was dropped between its append and its apply (its runtime \
                 shut down): its LSN may be appended but never applied"
                    .to_owned(),
            ));
        }
    }
}

/// The most value columns a new table may have.
const MAX_COLUMNS: usize = 1024;
/// The longest column name of a new table, in bytes (as for a table's name).
const MAX_COLUMN_NAME_BYTES: usize = 255;

/// Refuses a new table's schema past [`MAX_COLUMNS`] or [`MAX_COLUMN_NAME_BYTES`]. Checked when a
/// table is created, not when one is opened, so that a table made before the limits still
/// opens. Without them a definition of half a million columns, or a column named with a
/// megabyte, was taken, and every manifest version and every JSON row of the table carried it
/// (found by a helper agent's review of the server).
fn check_new_columns(schema: &Schema) -> Result<()> {
    let columns = schema.fields().len();
    if columns > MAX_COLUMNS {
        return Err(Error::InvalidTable(format!(
            "{columns} value columns; a table has at most {MAX_COLUMNS}"
        )));
    }
    if let Some(field) = schema
        .fields()
        .iter()
        .find(|field| field.name().len() > MAX_COLUMN_NAME_BYTES)
    {
        return Err(Error::InvalidTable(format!(
            "a column name of {} bytes; at most {MAX_COLUMN_NAME_BYTES}",
            field.name().len()
        )));
    }
    Ok(())
}

fn current_data(writer: &ManifestWriter) -> ManifestData {
    writer.current().map(|m| m.data.clone()).unwrap_or_default()
}

impl Inner {
    /// Runs `work` to its end in a task of its own and waits for it. Work that publishes a
    /// manifest version and then changes the in-memory version must not be cut off between the
    /// two by a caller that stops waiting (a cancelled request): the manifest and this
    /// process's view would disagree. The task cannot panic on any input; if it did, the two
    /// may disagree, so writes are refused until reopen, as on the write path.
    async fn to_end<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl std::future::Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        tokio::spawn(work)
            .await
            .map_err(|err| self.fail(Error::Corrupt(format!("a task failed: {err}"))))?
    }

    /// [`Db::create_table`]'s work (run by [`Inner::to_end`]).
    async fn create_table(
        self: &Arc<Self>,
        name: &str,
        key_type: KeyType,
        schema: Option<Schema>,
    ) -> Result<Table> {
        self.check_writable()?;
        let mut writer = self.publishing().await?;
        let mut data = current_data(&writer);
        if data.tables.contains_key(name) {
            return Err(Error::TableExists(name.to_owned()));
        }
        if let Some(schema) = &schema {
            check_new_columns(schema)?;
        }
        let id = data.next_table_id.max(1);
        let def = TableDef::new(id, name, key_type, schema)?;
        data.next_table_id = id
            .checked_add(1)
            .ok_or_else(|| Error::InvalidTable("table ids are exhausted".to_owned()))?;
        data.tables.insert(
            name.to_owned(),
            TableEntry {
                id,
                key_type: key_type.name().to_owned(),
                schema: def.schema().as_ref().clone(),
                segments: Vec::new(),
            },
        );
        writer.commit(data).await.map_err(|e| self.fail(e.into()))?;
        let state = Arc::new(TableState {
            def,
            segments: Vec::new(),
            charge: Arc::new(ReadCharge::new(
                self.settings.read_compaction,
                Arc::clone(&self.flush_wanted),
            )),
        });
        self.swap_tables(|tables| tables.push(Arc::clone(&state)));
        Ok(Table::new(Arc::clone(self), state.def.clone()))
    }

    /// [`Db::drop_table`]'s work (run by [`Inner::to_end`]).
    async fn drop_table(self: &Arc<Self>, name: &str) -> Result<()> {
        self.check_writable()?;
        let mut writer = self.publishing().await?;
        let mut data = current_data(&writer);
        if data.tables.remove(name).is_none() {
            return Err(Error::UnknownTable(name.to_owned()));
        }
        writer.commit(data).await.map_err(|e| self.fail(e.into()))?;
        // Added before the table leaves the version: a `stats()` in between counts it twice
        // for a moment, which a running total may do, rather than not at all, which it may not.
        if let Some(table) = self.version.load_full().tables.get(name) {
            self.counters
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .read_charged_dropped += table.charge.charged();
        }
        self.swap_tables(|tables| {
            for table in tables.iter().filter(|t| t.def.name == name) {
                self.retire(&table.segments);
            }
            tables.retain(|t| t.def.name != name);
        });
        Ok(())
    }

    fn check_writable(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        if let Some(cause) = self.failure.get() {
            return Err(Error::Poisoned(Arc::new(cause.clone())));
        }
        Ok(())
    }

    /// The manifest writer, to publish: `Closed` once the database is closed, `Poisoned` once a
    /// failure made writes unsafe. `close` takes it (after the flush and compaction locks)
    /// before it closes the WAL, so a publish either ends before the close goes on or does not
    /// happen; without this a checkpoint, merge or DDL running in its own task published, and
    /// truncated the WAL, after `close` returned. After a failure the manifest may hold a
    /// publish of unknown outcome that this process's view does not (a DDL whose answer was
    /// lost): a flush or merge waiting for the lock would settle it and publish the old view
    /// over it, undoing a DDL its caller was told had failed, or the reverse.
    async fn publishing(&self) -> Result<tokio::sync::MutexGuard<'_, ManifestWriter>> {
        let writer = self.writer.lock().await;
        self.check_writable()?;
        Ok(writer)
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// Records the first failure that makes writes unsafe; returns the error to give the
    /// caller.
    fn fail(&self, cause: Error) -> Error {
        // Work the close cut short failed nothing.
        if !matches!(cause, Error::Closed) {
            let _ = self.failure.set(cause.clone());
        }
        self.flushed.notify_waiters();
        cause
    }

    /// Swaps in a version with the tables `edit` leaves.
    fn swap_tables(&self, edit: impl FnOnce(&mut Vec<Arc<TableState>>)) {
        self.version.update(|current| {
            let mut tables: Vec<Arc<TableState>> = current.tables.values().cloned().collect();
            edit(&mut tables);
            (Some(current.with(Some(tables), None)), ())
        });
    }

    /// Notes that `segments` left the current version (see `retired`).
    pub(crate) fn retire(&self, segments: &[Arc<Segment>]) {
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        retired.retain(|(_, segment)| segment.strong_count() > 0);
        retired.extend(
            segments
                .iter()
                .map(|s| (s.entry.path.clone(), Arc::downgrade(s))),
        );
    }

    /// The object paths of the segments this process reads: the current version's, and
    /// retired ones a reader still holds. (The current version's are in the manifest too,
    /// unless the two disagree after a failure; garbage collection must not be the judge.)
    pub(crate) fn segments_in_use(&self) -> std::collections::BTreeSet<String> {
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        retired.retain(|(_, segment)| segment.strong_count() > 0);
        let mut in_use: std::collections::BTreeSet<String> =
            retired.iter().map(|(path, _)| path.clone()).collect();
        drop(retired);
        for table in self.version.load().tables.values() {
            in_use.extend(table.segments.iter().map(|s| s.entry.path.clone()));
        }
        in_use
    }

    /// This database, if `table` is one of its tables: a snapshot or transaction of one
    /// database reading another's table would read this one's table of the same id.
    pub(crate) fn own(self: &Arc<Self>, table: &Table) -> Result<&Arc<Self>> {
        if table.belongs_to(self) {
            Ok(self)
        } else {
            Err(Error::BadInput(format!(
                "table {:?} belongs to another database (or to an earlier opening of this one)",
                table.name()
            )))
        }
    }

    /// Validated writes in, LSN out: append, apply, publish.
    #[tracing::instrument(level = "debug", name = "db.commit", skip_all)]
    async fn commit(self: &Arc<Self>, batch: Batch, options: WriteOptions) -> Result<Lsn> {
        self.check_writable()?;
        // A batch of another database (or an earlier opening of this one) was checked against
        // that one's tables: appended here, its rows would land in whatever table has their
        // table's id, encoded for another table, or stop every flush.
        if !batch.belongs_to(self) {
            return Err(Error::BadInput(
                "the batch belongs to another database (or to an earlier opening of this one)"
                    .to_owned(),
            ));
        }
        let (batch, tables) = batch.into_parts();
        // A table dropped since its writes were added: refused here, before the log takes
        // them, even when they write nothing. (A drop that lands between this check and the
        // apply drops the write with the table, as if the write had come just before the drop.)
        let version = self.version.load();
        if let Some((_, name)) = tables
            .iter()
            .find(|(id, _)| !version.by_id.contains_key(id))
        {
            return Err(Error::UnknownTable(name.clone()));
        }
        drop(version);
        if batch.is_empty() {
            return Ok(self.visibility.visible());
        }
        let limit = self.settings.max_batch_bytes;
        if batch.encoded_len() > limit {
            return Err(Error::TooLarge {
                what: "write batch",
                bytes: batch.encoded_len(),
                limit,
            });
        }
        self.admit().await?;
        let payload = batch.encode().ok_or(Error::TooLarge {
            what: "write batch",
            bytes: usize::MAX,
            limit,
        })?;
        let durability = options.durability.unwrap_or(self.settings.durability);
        // A buffered write is appended and applied right here, with no await between the two
        // (so a caller who stops waiting cannot split them): a task of its own would cost two
        // wake-ups between threads, tens of microseconds when the threads sleep between writes.
        crash_point!("commit.before_wal");
        let now = if durability == Durability::Buffered {
            self.wal.append_buffered_now(&payload).map(|appended| {
                let lsn = self.appended(appended)?;
                // As in the spawned task below: nothing from here on panics on any input (the
                // crash point included, which the simulation arms with callbacks); if it did,
                // the LSN would stay appended but unapplied, so writes are refused until reopen.
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    crash_point!("commit.after_wal");
                    self.apply(lsn, &batch);
                }))
                .map_err(|panic| {
                    self.fail(Error::Corrupt(format!(
                        "applying a write panicked: {}",
                        panic_message(panic.as_ref())
                    )))
                })?;
                Ok::<_, Error>(lsn)
            })
        } else {
            None
        };
        let lsn = match now {
            Some(lsn) => lsn?,
            None => {
                let inner = Arc::clone(self);
                // In a spawned task, so that a caller who stops waiting cannot leave an LSN
                // appended but never applied.
                tokio::spawn(async move {
                    let mut unapplied = Unapplied(Some(Arc::clone(&inner)));
                    let appended = inner
                        .wal
                        .append(&payload, AppendOptions { durability })
                        .await;
                    let lsn = inner
                        .appended(appended)
                        .inspect_err(|_| unapplied.0 = None)?;
                    crash_point!("commit.after_wal");
                    inner.apply(lsn, &batch);
                    unapplied.0 = None;
                    Ok::<_, Error>(lsn)
                })
                .await
                // The task cannot panic on any input; if it did, its LSN may be appended but
                // never applied, and flushes would wait for it: refuse writes until reopen.
                .map_err(|err| self.fail(Error::Corrupt(format!("write task failed: {err}"))))??
            }
        };
        self.maybe_rotate(false);
        // Acknowledge only once the write is visible, so the writer reads it back at once
        // (a lower LSN of another writer may still be applying).
        while self.visibility.visible() < lsn {
            if self
                .visibility
                .wait_for(lsn, std::time::Duration::from_secs(1))
                .await
            {
                break;
            }
            self.check_writable()?;
        }
        Ok(lsn)
    }

    /// The log's answer to an append, as the engine's: a failure poisons writes, except a
    /// record the log refused as bad input or because its buffer stayed full (it was not
    /// written; the second is backpressure, `Overloaded`).
    fn appended(&self, appended: omendb_wal::Result<Lsn>) -> Result<Lsn> {
        appended.map_err(|err| {
            if let omendb_wal::Error::BufferFull { bytes, waited } = err {
                return Error::Overloaded(format!(
                    "the WAL's buffer of {bytes} bytes stayed full for {waited:?} (its storage \
                     is not keeping up); the write was not made"
                ));
            }
            let err = Error::from(err);
            if err.kind() == crate::ErrorKind::BadInput {
                err
            } else {
                self.fail(err)
            }
        })
    }

    /// Applies a batch at its LSN to the generation that holds the LSN, then publishes it.
    fn apply(&self, lsn: Lsn, batch: &WriteBatch) {
        loop {
            let version = self.version.load();
            let live = |id: u32| version.by_id.contains_key(&id);
            if version.memtables.iter().any(|g| g.apply(lsn, batch, live)) {
                break;
            }
            // A rotation closed the generation this version calls active and has not yet
            // swapped in the next one: it is doing so inside `VersionCell::update`.
            std::thread::yield_now();
        }
        self.visibility.applied(lsn);
    }

    /// Waits while frozen memtables exceed their bound; `Overloaded` when the wait runs out.
    async fn admit(&self) -> Result<()> {
        let deadline = Instant::now() + self.settings.stall_timeout;
        loop {
            let notified = self.flushed.notified();
            let version = self.version.load();
            let frozen = version.memtables.len().saturating_sub(1);
            if version.frozen_bytes() <= self.settings.max_frozen_bytes
                && frozen <= self.settings.max_frozen_memtables
            {
                return Ok(());
            }
            self.check_writable()?;
            self.flush_wanted.notify_one();
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, notified).await.is_err() {
                self.check_writable()?;
                return Err(Error::Overloaded(format!(
                    "{frozen} memtables of {} bytes wait for flush (limits {} and {} bytes); \
                     waited {:?}",
                    version.frozen_bytes(),
                    self.settings.max_frozen_memtables,
                    self.settings.max_frozen_bytes,
                    self.settings.stall_timeout
                )));
            }
        }
    }

    fn stats(&self) -> DbStats {
        let version = self.version.load();
        let counters = *self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let cache = self.cache.stats();
        DbStats {
            visible_lsn: self.visibility.visible(),
            flushed_lsn: version
                .memtables
                .last()
                .map_or(0, |g| g.first().saturating_sub(1)),
            memtables: version.memtables.len(),
            memtable_bytes: version
                .memtables
                .iter()
                .map(|g| g.approximate_bytes())
                .sum(),
            segments: version.tables.values().map(|t| t.segments.len()).sum(),
            flushes: counters.flushes,
            compactions: counters.compactions,
            read_compactions: counters.read_compactions,
            idle_compactions: counters.idle_compactions,
            idle_work_due: self.idle_work_due(),
            read_charged: counters.read_charged_dropped
                + version
                    .tables
                    .values()
                    .map(|t| t.charge.charged())
                    .sum::<std::time::Duration>(),
            compacting: self
                .compaction
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .is_some_and(|task| !task.is_finished()),
            failure: self.failure.get().map(ToString::to_string),
            background_error: {
                let errors = self
                    .background_errors
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                (!errors.is_empty()).then(|| {
                    errors
                        .iter()
                        .map(|(chore, err)| format!("{}: {err}", chore.name()))
                        .collect::<Vec<_>>()
                        .join("; ")
                })
            },
            cache_hits: cache.hits,
            cache_misses: cache.misses,
            cache_bytes: cache.bytes,
        }
    }

    async fn close(&self) -> Result<()> {
        // One close runs at a time; a later call gets the outcome of the one that ran (it used
        // to return `Ok` at once, before the WAL was synced, and whatever the first one met).
        let mut closing = self.closing.lock().await;
        if let Some(outcome) = &*closing {
            return outcome.clone();
        }
        let outcome = self.close_once().await;
        *closing = Some(outcome.clone());
        outcome
    }

    async fn close_once(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        // Writers held by backpressure learn of the close now, not at their stall timeout.
        self.flushed.notify_waiters();
        self.flush_wanted.notify_one();
        let handle = self
            .background
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(handle) = handle {
            let _ = handle.await;
        }
        let compaction = self
            .compaction
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(handle) = compaction {
            let _ = handle.await;
        }
        // A checkpoint, merge or DDL running in a task of its own (`to_end`) ends its step
        // before the WAL closes; its next step, or its publish, finds the database closed.
        let _compacting = self.compact_lock.lock().await;
        let _flushing = self.flush_lock.lock().await;
        let _publishing = self.writer.lock().await;
        let wal = Arc::clone(&self.wal);
        tokio::task::spawn_blocking(move || wal.close())
            .await
            .map_err(|err| Error::Corrupt(format!("closing the WAL failed: {err}")))??;
        Ok(())
    }
}

/// What a caught panic said.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}
