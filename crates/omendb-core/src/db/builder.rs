//! [`Builder`]: composes a WAL, a backend and settings, and opens the database (recovery).
//!
//! Recovery: open the manifest writer (which fences any other writer), open every live segment
//! checked against its seal, then replay the WAL after the manifest's flushed LSN into a fresh
//! memtable generation. The database is returned only after replay.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::FutureExt;
use futures::StreamExt;
use object_store::ObjectStore;
use object_store::path::Path;
use omendb_storage::manifest::{ManifestOptions, Manifests};
use omendb_storage::segment::{PageCache, SegmentWriterOptions};
use omendb_storage::{Backend, BackendOptions};
use omendb_wal::{FileWal, ObjectWal, Wal, WalOptions};
use tokio::sync::Notify;

use super::charge::ReadCharge;
use super::flush::run_background;
use super::options::{Durability, ReadCompaction, Settings};
use super::version::{TableState, Version};
use super::{Counters, Db, Inner, NOT_IDLE};
use crate::batch::WriteBatch;
use crate::error::{Error, Result};
use crate::index::IndexPolicy;
use crate::key::KeyType;
use crate::memtable::Generation;
use crate::segment::Segment;
use crate::table::TableDef;
use crate::version_cell::VersionCell;
use crate::visibility::Visibility;

/// Where the WAL lives.
#[derive(Debug, Default)]
enum WalChoice {
    /// `path/wal` if a path is given, otherwise objects under `<prefix>/wal` in the store.
    #[default]
    Default,
    /// A log the caller opened.
    Given(Arc<dyn Wal>),
    /// Objects under `<prefix>/wal` in the store.
    InStore,
}

/// Builds a [`Db`]: `Db::builder().path(dir).memtable_bytes(..).build().await`.
#[derive(Debug, Default)]
pub struct Builder {
    path: Option<std::path::PathBuf>,
    url: Option<String>,
    backend_options: BackendOptions,
    store: Option<Arc<dyn ObjectStore>>,
    prefix: Option<String>,
    wal: WalChoice,
    wal_options: WalOptions,
    settings: Settings,
}

impl Builder {
    /// A local directory: the WAL goes to `path/wal` and, unless a URL or store is given,
    /// segments and manifests to `path/data`.
    pub fn path(mut self, path: impl AsRef<std::path::Path>) -> Self {
        self.path = Some(path.as_ref().to_path_buf());
        self
    }

    /// Segments and manifests in the backend `url` names (`file://`, `s3://`, `memory://`,
    /// `opendal+<service>://`); see `docs/operations.md`.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    /// Options for the backend named by [`Builder::url`].
    pub fn backend_options(mut self, options: BackendOptions) -> Self {
        self.backend_options = options;
        self
    }

    /// Segments and manifests in a store the caller built (used as given, without wrappers).
    pub fn store(mut self, store: Arc<dyn ObjectStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// The path inside the store under which this database keeps its objects (default `db`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// Uses a WAL the caller opened.
    pub fn wal(mut self, wal: Arc<dyn Wal>) -> Self {
        self.wal = WalChoice::Given(wal);
        self
    }

    /// Keeps the WAL as objects in the store even when a local path is given.
    pub fn wal_in_store(mut self) -> Self {
        self.wal = WalChoice::InStore;
        self
    }

    /// Options of the WAL the builder opens.
    pub fn wal_options(mut self, options: WalOptions) -> Self {
        self.wal_options = options;
        self
    }

    /// Bytes at which the active memtable is frozen and flushed.
    pub fn memtable_bytes(mut self, bytes: usize) -> Self {
        self.settings.memtable_bytes = bytes;
        self
    }

    /// Bytes and number of frozen memtables beyond which writers wait, and how long they
    /// wait before [`crate::Error::Overloaded`].
    pub fn backpressure(
        mut self,
        max_frozen_bytes: usize,
        max_frozen_memtables: usize,
        stall_timeout: Duration,
    ) -> Self {
        self.settings.max_frozen_bytes = max_frozen_bytes;
        self.settings.max_frozen_memtables = max_frozen_memtables;
        self.settings.stall_timeout = stall_timeout;
        self
    }

    /// Bytes of decoded pages kept in memory.
    pub fn cache_bytes(mut self, bytes: u64) -> Self {
        self.settings.cache_bytes = bytes;
        self
    }

    /// The durability of writes that do not say.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.settings.durability = durability;
        self
    }

    /// How segment indexes are chosen.
    pub fn index_policy(mut self, policy: IndexPolicy) -> Self {
        self.settings.index_policy = policy;
        self
    }

    /// How segments are laid out.
    pub fn segment_options(mut self, options: SegmentWriterOptions) -> Self {
        self.settings.segment = options;
        self
    }

    /// Merge overlapping segments once this many sorted runs of them (each no larger than the
    /// newer ones together) are due (at least 2; default 4).
    pub fn compaction_trigger(mut self, runs: usize) -> Self {
        self.settings.compaction_trigger = runs;
        self
    }

    /// Compaction cuts its output into segments of about this many decoded bytes (default
    /// 256 MiB; at least 1).
    pub fn segment_target_bytes(mut self, bytes: u64) -> Self {
        self.settings.segment_target_bytes = bytes;
        self
    }

    /// How long replaced manifests and unreferenced segments are kept.
    pub fn gc_grace(mut self, grace: Duration) -> Self {
        self.settings.gc_grace = grace;
        self
    }

    /// Merge a table's overlapping runs once reads have paid for it (`None`: only the
    /// write-driven size-tiered policy merges; default [`ReadCompaction::default`]).
    pub fn read_compaction(mut self, read_compaction: Option<ReadCompaction>) -> Self {
        self.settings.read_compaction = read_compaction;
        self
    }

    /// Flush and merge for reads once the database has taken no write for this long (`None`:
    /// never; default 10 s; see [`Settings::idle_compaction`]).
    pub fn idle_compaction(mut self, after: Option<Duration>) -> Self {
        self.settings.idle_compaction = after;
        self
    }

    /// Largest encoded row and write batch accepted.
    pub fn limits(mut self, max_row_bytes: usize, max_batch_bytes: usize) -> Self {
        self.settings.max_row_bytes = max_row_bytes;
        self.settings.max_batch_bytes = max_batch_bytes;
        self
    }

    /// Opens the database, creating it if it does not exist, after recovery.
    pub async fn build(self) -> Result<Db> {
        let settings = self.settings;
        if settings.memtable_bytes == 0
            || settings.compaction_trigger < 2
            || settings.segment_target_bytes == 0
        {
            return Err(Error::BadInput(
                "memtable_bytes and segment_target_bytes must be positive and compaction_trigger \
                 at least 2"
                    .to_owned(),
            ));
        }
        if settings
            .read_compaction
            .is_some_and(|r| r.rewrite_bytes_per_second == 0)
        {
            return Err(Error::BadInput(
                "read_compaction's rewrite_bytes_per_second must be positive".to_owned(),
            ));
        }
        if settings
            .idle_compaction
            .is_some_and(|after| after.is_zero())
        {
            return Err(Error::BadInput(
                "idle_compaction must be a positive duration (or None)".to_owned(),
            ));
        }
        if chrono::Duration::from_std(settings.gc_grace).is_err() {
            return Err(Error::BadInput(format!(
                "gc_grace {:?} is too long to compare with object times",
                settings.gc_grace
            )));
        }
        if settings.max_batch_bytes > self.wal_options.max_record_bytes {
            return Err(Error::BadInput(format!(
                "max_batch_bytes {} exceeds the WAL's record limit {}",
                settings.max_batch_bytes, self.wal_options.max_record_bytes
            )));
        }
        let store: Arc<dyn ObjectStore> = match (self.store, &self.url, &self.path) {
            (Some(store), _, _) => store,
            (None, Some(url), _) => Arc::clone(Backend::open(url, &self.backend_options)?.store()),
            (None, None, Some(path)) => {
                let dir = absolute(&path.join("data"))?;
                let url = url::Url::from_directory_path(&dir).map_err(|()| {
                    Error::BadInput(format!("{} is not a usable directory", dir.display()))
                })?;
                Arc::clone(Backend::open(url.as_str(), &self.backend_options)?.store())
            }
            (None, None, None) => {
                return Err(Error::BadInput(
                    "a database needs a path, a URL or a store".to_owned(),
                ));
            }
        };
        let prefix = Path::from(self.prefix.as_deref().unwrap_or("db"));
        let manifests = Manifests::new(
            Arc::clone(&store),
            &prefix,
            ManifestOptions {
                grace: settings.gc_grace,
            },
        );
        // The WAL first: a local one locks its directory, so a second process fails here
        // before it could fence the running writer by opening the manifest.
        // A writer waits for room in the log's buffer no longer than for a flush.
        let mut wal_options = self.wal_options.clone();
        wal_options.max_buffer_wait = wal_options.max_buffer_wait.min(settings.stall_timeout);
        let wal: Arc<dyn Wal> = match (self.wal, &self.path) {
            (WalChoice::Given(wal), _) => {
                wal.claim().await?;
                wal
            }
            (WalChoice::Default, Some(path)) => {
                let dir = path.join("wal");
                let options = wal_options;
                // Opening reads and checks the whole log, which blocks. It runs in place, not on
                // a detached blocking thread: a caller who stops waiting for `build` (a server
                // shut down while the database opens) must not leave an open running that
                // creates and locks files after the future is gone.
                Arc::new(in_place(move || FileWal::open(dir, options))?)
            }
            (WalChoice::Default | WalChoice::InStore, _) => {
                Arc::new(open_object_wal(&store, prefix.clone().join("wal"), &wal_options).await?)
            }
        };
        let writer = manifests.open_writer(Default::default()).await?;
        // Two processes opening at once race for the WAL (its claim) and the manifest (its
        // epoch) apart, and each could win one: the manifest's winner went on serving DDL
        // while the other acknowledged writes to the WAL it won, and a table the first dropped
        // lost the second's writes at the next open. Each claims the WAL again once its epoch
        // is published, then checks that its version is still the newest: a process that lost
        // either race fails here (found by a helper agent's review). One that opens after this
        // check is found by this process's next publish, which poisons it.
        wal.claim().await?;
        writer.ensure_newest().await?;
        let data = writer.current().map(|m| m.data.clone()).unwrap_or_default();
        let cache = Arc::new(PageCache::new(settings.cache_bytes));

        let flush_wanted = Arc::new(Notify::new());
        let mut tables = Vec::with_capacity(data.tables.len());
        for (name, entry) in &data.tables {
            let key_type = KeyType::from_name(&entry.key_type).ok_or_else(|| {
                Error::Corrupt(format!(
                    "table {name:?}: unknown key type {:?}",
                    entry.key_type
                ))
            })?;
            let def = TableDef::new(entry.id, name, key_type, Some(entry.schema.clone()))?;
            let mut segments = Vec::with_capacity(entry.segments.len());
            for segment in &entry.segments {
                let segment =
                    Segment::open(Arc::clone(&store), segment.clone(), Arc::clone(&cache)).await?;
                segment.check_columns(&def.stored)?;
                segments.push(Arc::new(segment));
            }
            segments.sort_by_key(|s| std::cmp::Reverse(s.entry.lsn_max));
            let charge = ReadCharge::new(settings.read_compaction, Arc::clone(&flush_wanted));
            tables.push(TableState {
                def,
                segments,
                charge: Arc::new(charge),
            });
        }

        let last = wal.last_lsn().unwrap_or(0);
        if last < data.flushed_lsn {
            return Err(Error::Corrupt(format!(
                "the WAL ends at LSN {last} but the manifest says LSN {} was flushed: the WAL \
                 is not this database's, or it lost synced records",
                data.flushed_lsn
            )));
        }

        let generation = Arc::new(Generation::new(
            data.flushed_lsn + 1,
            settings.memtable_keys(),
        ));
        let version = Version::new(tables, vec![Arc::clone(&generation)]);
        replay(
            wal.as_ref(),
            &generation,
            &version,
            data.flushed_lsn,
            data.next_table_id,
        )
        .await?;

        let inner = Arc::new(Inner {
            store,
            prefix,
            wal,
            writer: tokio::sync::Mutex::new(writer),
            version: VersionCell::new(version),
            visibility: Visibility::new(last),
            cache,
            settings,
            failure: OnceLock::new(),
            closed: AtomicBool::new(false),
            flush_wanted: Arc::clone(&flush_wanted),
            flushed: Notify::new(),
            commit_lock: tokio::sync::Mutex::new(()),
            flush_lock: tokio::sync::Mutex::new(()),
            compact_lock: tokio::sync::Mutex::new(()),
            closing: tokio::sync::Mutex::new(None),
            background: Mutex::new(None),
            compaction: Mutex::new(None),
            last_gc: Mutex::new(None),
            background_errors: Mutex::default(),
            counters: Mutex::new(Counters::default()),
            idle_lsn: AtomicU64::new(NOT_IDLE),
            retired: Mutex::new(Vec::new()),
        });
        let work = run_background(
            Arc::downgrade(&inner),
            flush_wanted,
            inner.settings.idle_compaction,
        );
        let weak = Arc::downgrade(&inner);
        let handle = tokio::spawn(async move {
            // A panic (a bug) ends the flushes for good: writes are refused from then on, with
            // its message, rather than left to wait for flushes that never come.
            if let Err(panic) = std::panic::AssertUnwindSafe(work).catch_unwind().await
                && let Some(db) = weak.upgrade()
            {
                db.fail(Error::Corrupt(format!(
                    "the background flush task panicked: {}",
                    super::panic_message(panic.as_ref())
                )));
            }
        });
        *inner.background.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
        inner.maybe_rotate(false);
        Ok(Db { inner })
    }
}

/// How often [`open_object_wal`] reopens a log whose claim a late batch beat.
const CLAIM_ATTEMPTS: usize = 3;

/// Opens and claims ([`Wal::claim`]) the log in the store: a batch that the previous writer
/// had in flight can land after the open read the log, and the claim shuts it out. If it landed
/// first the claim fails, and the log opened again holds it.
async fn open_object_wal(
    store: &Arc<dyn ObjectStore>,
    prefix: Path,
    options: &WalOptions,
) -> Result<ObjectWal> {
    let mut attempt = 1;
    loop {
        let wal = ObjectWal::open(Arc::clone(store), prefix.clone(), options.clone()).await?;
        match wal.claim().await {
            Ok(()) => return Ok(wal),
            Err(err) if attempt < CLAIM_ATTEMPTS && err.is_fenced() => attempt += 1,
            Err(err) => return Err(err.into()),
        }
    }
}

/// `path`, created if missing (each new directory's entry synced into its parent, as the WAL
/// does its own), as an absolute path.
fn absolute(path: &std::path::Path) -> Result<std::path::PathBuf> {
    omendb_wal::create_dir_durable(&omendb_wal::StdIo, path)
        .and_then(|()| std::path::absolute(path))
        .map_err(|err| Error::BadInput(format!("directory {}: {err}", path.display())))
}

/// Replays the WAL after `flushed` into `generation`. Records of dropped tables are skipped; a
/// record naming a table that never existed means the WAL and manifest disagree.
async fn replay(
    wal: &dyn Wal,
    generation: &Generation,
    version: &Version,
    flushed: u64,
    next_table_id: u32,
) -> Result<()> {
    // Replay must start right after the flushed LSN: a log that starts later lost the records
    // in between (a first segment or a newest manifest deleted by hand). Only a log recovered
    // with `SkipCorrupt` may skip records, by the operator's choice.
    let gaps_allowed = wal.recovery_report().mode == omendb_wal::RecoveryMode::SkipCorrupt;
    let gap = |first: u64| {
        Error::Corrupt(format!(
            "the WAL starts at LSN {first} but the manifest says only LSN {flushed} was \
             flushed: the records in between are missing"
        ))
    };
    let mut records = wal.read_from(flushed + 1);
    let mut first = true;
    let mut expected = flushed + 1;
    while let Some(record) = records.next().await {
        let record = record?;
        if std::mem::take(&mut first) && record.lsn > flushed + 1 && !gaps_allowed {
            return Err(gap(record.lsn));
        }
        // Every record follows the one before: a log whose reading skipped records (a store
        // listing that left an object out) lost acknowledged writes, which the next flush
        // would have made for good by raising the flushed LSN past them.
        if record.lsn != expected && !gaps_allowed {
            return Err(Error::Corrupt(format!(
                "the WAL's record {} follows record {}: the records in between are missing",
                record.lsn,
                expected - 1
            )));
        }
        expected = record.lsn + 1;
        // An object-store log's claim: no writes.
        if record.payload.is_empty() {
            continue;
        }
        let batch = WriteBatch::decode(record.payload)
            .map_err(|err| Error::Corrupt(format!("WAL record {}: {err}", record.lsn)))?;
        for write in batch.writes() {
            let table = write.table();
            // Ids start at 1: a write to 0 was never made by this database either.
            if table == 0 || table >= next_table_id.max(1) {
                return Err(Error::Corrupt(format!(
                    "WAL record {} writes table id {table}, which was never created",
                    record.lsn
                )));
            }
        }
        if !generation.apply(record.lsn, &batch, |id| version.by_id.contains_key(&id)) {
            return Err(Error::Corrupt(format!(
                "WAL record {} is out of order during replay",
                record.lsn
            )));
        }
    }
    // No record after the flushed LSN, yet the log's next LSN is further on: its records
    // were deleted (a local log keeps its newest segment, named by the LSN it starts at).
    let last = wal.last_lsn().unwrap_or(0);
    if first && last > flushed && !gaps_allowed {
        return Err(gap(last + 1));
    }
    Ok(())
}

/// Runs blocking `work` on this thread: through `block_in_place` on a multi-thread runtime, so
/// the worker's other tasks move to another thread meanwhile, and directly elsewhere (a
/// current-thread runtime has no other thread to give them to).
fn in_place<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|handle| handle.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}
