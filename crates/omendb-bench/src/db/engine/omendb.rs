//! OmenDB's embedded engine (`omendb_core::Db`) on local files.

use std::future::Future;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use arrow_array::cast::AsArray;
use arrow_array::types::Float64Type;
use arrow_array::{Array, BinaryArray, Float64Array, Int64Array, RecordBatch, UInt64Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use omendb_core::db::Settings as DbSettings;
use omendb_core::table::{KEY_COLUMN, KV_VALUE_COLUMN};
use omendb_core::{Aggregate, Db, ErrorKind, Key, KeyType, ScanOptions, Table, WriteOptions};

use super::{Durability, Engine, Settings, Value};

/// How long background flushes and compactions may take to catch up before the run gives up.
const SETTLE_LIMIT: Duration = Duration::from_secs(1800);
/// A write refused with a retryable error (`Overloaded` while flushes catch up) is retried this
/// many times before the run gives up.
const MAX_RETRIES: u32 = 100;

/// How the engine is configured, the same for every open (also `stress`'s).
pub(crate) struct Config {
    pub(crate) memtable_bytes: usize,
    pub(crate) cache_bytes: u64,
    pub(crate) compaction_trigger: usize,
}

impl Config {
    /// The engine's defaults, with the memtable and page cache sizes given in MiB.
    pub(crate) fn new(memtable_mb: Option<usize>, cache_mb: Option<u64>) -> Self {
        let defaults = DbSettings::default();
        Self {
            memtable_bytes: memtable_mb.map_or(defaults.memtable_bytes, |mb| mb << 20),
            cache_bytes: cache_mb.map_or(defaults.cache_bytes, |mb| mb << 20),
            compaction_trigger: defaults.compaction_trigger,
        }
    }

    /// Opens (or creates) the database in `dir` on local files, `Buffered` by default.
    pub(crate) async fn open(&self, dir: &Path) -> Result<Db> {
        Db::builder()
            .path(dir)
            .durability(omendb_core::Durability::Buffered)
            .memtable_bytes(self.memtable_bytes)
            .cache_bytes(self.cache_bytes)
            .compaction_trigger(self.compaction_trigger)
            .build()
            .await
            .with_context(|| format!("opening the database in {}", dir.display()))
    }
}

/// Calls `call` until it succeeds, retrying errors the engine marks as retryable (`Overloaded`
/// while flushes catch up) at most [`MAX_RETRIES`] times in all; counts the retries.
pub(crate) async fn retrying<T, F, Fut>(mut call: F, retries: &mut u32) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = omendb_core::Result<T>>,
{
    loop {
        match call().await {
            Ok(done) => return Ok(done),
            Err(err) if err.kind() == ErrorKind::Retry && *retries < MAX_RETRIES => {
                *retries += 1;
            }
            Err(err) => return Err(err.into()),
        }
    }
}

/// Waits until no frozen memtable waits for a flush, no compaction runs and no idle work is due,
/// seen twice in a row with no flush or compaction in between (compaction leaves as many sorted
/// runs as its policy wants, so no segment count marks the end). Returns how long that took.
pub(crate) async fn settle(db: &Db) -> Result<Duration> {
    let start = Instant::now();
    let mut quiet_at = None;
    loop {
        // An empty write fails once a background failure has poisoned the database.
        db.write(db.batch(), WriteOptions::BUFFERED)
            .await
            .context("the database failed in the background")?;
        let stats = db.stats();
        let marks = (stats.flushes, stats.compactions);
        // Work the engine does once idle is background work like any other: what follows a
        // load is measured after it, as RocksDB's is after its compactions.
        let quiet = stats.memtables <= 1 && !stats.compacting && !stats.idle_work_due;
        if quiet && quiet_at == Some(marks) {
            return Ok(start.elapsed());
        }
        quiet_at = quiet.then_some(marks);
        ensure!(
            start.elapsed() < SETTLE_LIMIT,
            "background flushes and compactions did not go quiet within {SETTLE_LIMIT:?}: \
             {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// OmenDB with a `kv` table (u64 keys, binary values) and a `ts` table (i64 timestamps, one f64
/// column `v`).
pub(crate) struct OmenDb {
    db: Db,
    kv: Table,
    ts: Table,
    write: WriteOptions,
    settings: Settings,
    kv_schema: SchemaRef,
    ts_schema: SchemaRef,
    /// Writes retried after `Overloaded`, reported by `settle`.
    retries: AtomicU32,
    dir: PathBuf,
}

impl OmenDb {
    async fn retry<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = omendb_core::Result<T>>,
    {
        let mut retries = 0;
        let done = retrying(call, &mut retries).await;
        self.retries.fetch_add(retries, Ordering::Relaxed);
        done
    }
}

impl Engine for OmenDb {
    type Found = Bytes;
    const NAME: &'static str = "omendb";
    const ASYNC: bool = true;

    async fn open(dir: &Path, settings: Settings) -> Result<Self> {
        let db = Config {
            memtable_bytes: settings.memtable_bytes,
            cache_bytes: settings.cache_bytes,
            compaction_trigger: DbSettings::default().compaction_trigger,
        }
        .open(dir)
        .await?;
        let names = db.list_tables();
        let kv = if names.iter().any(|t| t == "kv") {
            db.table("kv")?
        } else {
            db.create_table("kv", KeyType::U64, None).await?
        };
        let ts = if names.iter().any(|t| t == "ts") {
            db.table("ts")?
        } else {
            let values = Schema::new(vec![Field::new("v", DataType::Float64, false)]);
            db.create_table("ts", KeyType::I64, Some(values)).await?
        };
        Ok(OmenDb {
            db,
            kv,
            ts,
            write: match settings.durability {
                Durability::Buffered => WriteOptions::BUFFERED,
                Durability::Durable => WriteOptions::DURABLE,
            },
            settings,
            kv_schema: Arc::new(Schema::new(vec![
                Field::new(KEY_COLUMN, DataType::UInt64, false),
                Field::new(KV_VALUE_COLUMN, DataType::Binary, false),
            ])),
            ts_schema: Arc::new(Schema::new(vec![
                Field::new(KEY_COLUMN, DataType::Int64, false),
                Field::new("v", DataType::Float64, false),
            ])),
            retries: AtomicU32::new(0),
            dir: dir.to_path_buf(),
        })
    }

    fn describe(settings: &Settings) -> String {
        let durability = match settings.durability {
            Durability::Buffered => "Buffered: acknowledged once in the WAL's in-process \
                                     queue, which its writer thread writes to the OS at once \
                                     and syncs by policy; a process crash loses what the queue \
                                     still held (microseconds of writes), an OS crash the \
                                     unsynced tail"
                .to_owned(),
            Durability::Durable => "Durable: acknowledged after the WAL's group commit fsyncs \
                                    the write"
                .to_owned(),
        };
        format!(
            "{durability}; memtable {} MiB, page cache {} MiB, size-tiered compaction of {} \
             sorted runs{}; other settings the engine's defaults",
            settings.memtable_bytes >> 20,
            settings.cache_bytes >> 20,
            DbSettings::default().compaction_trigger,
            DbSettings::default()
                .idle_compaction
                .map_or(String::new(), |after| format!(
                    ", and once idle for {after:?} a flush and a balanced merge of overlapping runs"
                )),
        )
    }

    fn recovery_note(&self) -> Option<String> {
        let recovered = self.db.wal_recovery();
        Some(format!(
            "replayed {} WAL records ({} bytes)",
            recovered.records, recovered.bytes_read
        ))
    }

    async fn put_batch(&self, rows: &[(u64, Value)]) -> Result<()> {
        let batch = RecordBatch::try_new(
            Arc::clone(&self.kv_schema),
            vec![
                Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(BinaryArray::from_iter_values(rows.iter().map(|r| r.1))),
            ],
        )?;
        self.retry(|| self.kv.put_batch(&batch, self.write)).await?;
        Ok(())
    }

    async fn put(&self, key: u64, value: &Value) -> Result<()> {
        self.retry(|| self.kv.put_value(key, value.to_vec(), self.write))
            .await?;
        Ok(())
    }

    async fn get(&self, key: u64) -> Result<Option<Bytes>> {
        Ok(self.kv.get_value(key).await?)
    }

    async fn multi_get(&self, keys: &[u64]) -> Result<Vec<Option<Bytes>>> {
        Ok(self.kv.multi_get_values(keys).await?)
    }

    async fn scan(
        &self,
        from: u64,
        limit: usize,
        visit: &mut (dyn FnMut(u64, &[u8]) -> Result<()> + Send),
    ) -> Result<usize> {
        let options = ScanOptions {
            limit: Some(limit),
            batch_rows: Some(limit.max(1)),
            ..ScanOptions::default()
        };
        // The key-value scan that lends each row where it lies, as the peers' cursors do; the
        // first error of `visit` stops it.
        let mut failed = None;
        let rows = self
            .kv
            .scan_values(from.., options, |key, value| {
                let result = match key {
                    Key::U64(key) => visit(key, value),
                    Key::I64(_) => Err(anyhow!("a u64 table gave an i64 key")),
                };
                match result {
                    Ok(()) => ControlFlow::Continue(()),
                    Err(error) => {
                        failed = Some(error);
                        ControlFlow::Break(())
                    }
                }
            })
            .await?;
        match failed {
            Some(error) => Err(error),
            None => Ok(rows),
        }
    }

    async fn ts_append(&self, rows: &[(i64, f64)]) -> Result<()> {
        let batch = RecordBatch::try_new(
            Arc::clone(&self.ts_schema),
            vec![
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.1))),
            ],
        )?;
        self.retry(|| self.ts.put_batch(&batch, self.write)).await?;
        Ok(())
    }

    async fn ts_sum(&self, first: i64, last: i64) -> Result<f64> {
        let result = self
            .ts
            .aggregate(first..=last, "v", Aggregate::Sum, None)
            .await?;
        ensure!(
            result.num_rows() == 1 && result.num_columns() == 1,
            "a {}x{} aggregate, not one value",
            result.num_rows(),
            result.num_columns()
        );
        let sums = result
            .column(0)
            .as_primitive_opt::<Float64Type>()
            .context("the sum is not Float64")?;
        Ok(if sums.is_valid(0) { sums.value(0) } else { 0.0 })
    }

    async fn settle(&self) -> Result<String> {
        let took = settle(&self.db).await?;
        let stats = self.db.stats();
        Ok(format!(
            "background work settled in {:.2} s: {} flushes, {} compactions ({} once idle, {} \
             paid for by reads, which were charged {:.3} s for overlapping runs), {} segments; \
             {} writes retried after Overloaded",
            took.as_secs_f64(),
            stats.flushes,
            stats.compactions,
            stats.idle_compactions,
            stats.read_compactions,
            stats.read_charged.as_secs_f64(),
            stats.segments,
            self.retries.load(Ordering::Relaxed)
        ))
    }

    fn settings(&self) -> Settings {
        self.settings
    }

    async fn close(self) -> Result<()> {
        let OmenDb {
            db, kv, ts, dir, ..
        } = self;
        drop((kv, ts));
        db.close()
            .await
            .with_context(|| format!("closing the database in {}", dir.display()))
    }
}
