//! `omendb-bench db`: the embedded engine (`omendb_core::Db`) under the database workloads of
//! `shared/design/PERFORMANCE.md`: bulk load, warm point reads, `multi_get`, 100-row scans,
//! time-series append and range aggregate, YCSB-A-shaped mixed reads and updates for 1 and 8
//! clients, reopen (recovery), and the footprint (peak RSS, bytes on disk).
//!
//! Every answer is checked before a figure is printed, and a wrong or missing one aborts the run:
//! a key's value is derived from the seed, the key and the version last written to it, so each
//! read is compared with the exact bytes expected (or with absence, for the 10% of lookups that
//! ask for keys not in the set); scans must return the next 100 stored keys with their values;
//! the aggregate must equal the exact sum of the values appended; a read racing an update must
//! see the key's old or new value.
//!
//! Only the `omendb` engine runs today; the peers of PERFORMANCE.md (redb, fjall, RocksDB, sled,
//! `BTreeMap`) join with a later issue, on the same keys, values, batches and durability.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, UInt64Type};
use arrow_array::{Array, BinaryArray, Float64Array, Int64Array, RecordBatch, UInt64Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use clap::Parser;
use futures::TryStreamExt;
use omendb_core::db::Settings;
use omendb_core::keygen::{self, Dist};
use omendb_core::table::{KEY_COLUMN, KV_VALUE_COLUMN};
use omendb_core::{
    Aggregate, Db, Durability, ErrorKind, KeyType, ScanOptions, Table, WriteOptions,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

use crate::report::{self, Report, median, percentile};

/// Arguments of `omendb-bench db`.
#[derive(Parser, Debug)]
pub(crate) struct Args {
    /// Engines to measure, comma-separated. Only `omendb` today; peers come with a later issue.
    #[arg(long, default_value = "omendb", value_delimiter = ',')]
    engine: Vec<String>,
    /// Keys in the key-value table.
    #[arg(long, default_value_t = 10_000_000)]
    keys: usize,
    /// Key distribution: seq, bursty, uniform, lognormal, clustered, outliers, steps.
    #[arg(long, default_value = "uniform")]
    dist: String,
    /// Seed of the keys, values, load order and every operation mix.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Rows per `put_batch` during the bulk load and the time-series append.
    #[arg(long, default_value_t = 10_000)]
    batch_rows: usize,
    /// Point lookups of the `get` and `multi_get` rows.
    #[arg(long, default_value_t = 1_000_000)]
    lookups: usize,
    /// Fraction of lookups for keys that are not in the set.
    #[arg(long, default_value_t = 0.1)]
    absent: f64,
    /// Keys per `multi_get` call.
    #[arg(long, default_value_t = 1_000)]
    multi_get_keys: usize,
    /// 100-row scans of the `scan100` row.
    #[arg(long, default_value_t = 100_000)]
    scans: usize,
    /// Rows appended to the time-series table and aggregated.
    #[arg(long, default_value_t = 1_000_000)]
    ts_rows: usize,
    /// Timed aggregates over the time-series table; the median is reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Client tasks of the mixed 50/50 read/update rows, comma-separated; one row each.
    #[arg(long, default_value = "1,8", value_delimiter = ',')]
    clients: Vec<usize>,
    /// Operations of each mixed row, shared among its clients.
    #[arg(long, default_value_t = 1_000_000)]
    mixed_ops: usize,
    /// Close-and-reopen cycles of the `reopen` row; the median is reported.
    #[arg(long, default_value_t = 3)]
    reopens: usize,
    /// Keys read back and checked after each reopen.
    #[arg(long, default_value_t = 100_000)]
    verify_keys: usize,
    /// Memtable size in MiB (default: the engine's).
    #[arg(long)]
    memtable_mb: Option<usize>,
    /// Page cache size in MiB (default: the engine's).
    #[arg(long)]
    cache_mb: Option<u64>,
    /// Directory for the database files (a fresh subdirectory is used and removed).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print one JSON object per row instead of a table.
    #[arg(long)]
    json: bool,
}

/// One row of the output contract in `shared/design/PERFORMANCE.md`, plus `clients` (the
/// concurrent client tasks; 1 for every single-task workload). Latencies are per call: one
/// `put_batch` for `load` and `ts_append`, one call of `multi_get_keys` keys for `multi_get`, one
/// aggregate for `ts_aggregate`, one open for `reopen`.
#[derive(Serialize)]
struct Row {
    engine: &'static str,
    workload: &'static str,
    keys: usize,
    clients: usize,
    ops_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    /// This engine's ops/s divided by OmenDB's for the same workload in this run.
    vs_omendb: f64,
    checksum_ok: bool,
}

/// The footprint row of the output contract: one per engine.
#[derive(Serialize)]
struct Footprint {
    engine: &'static str,
    workload: &'static str,
    keys: usize,
    /// Peak resident set of the whole benchmark process (key arrays and lookups included).
    peak_rss_mb: f64,
    /// Bytes of every file under the database directory after the final close.
    disk_bytes: u64,
}

const ENGINES: [&str; 1] = ["omendb"];
const VALUE_BYTES: usize = 16;
const SCAN_ROWS: usize = 100;
/// Timestamps of the time-series table start here (microseconds, late 2023).
const TS_BASE: i64 = 1_700_000_000_000_000;
/// Microseconds between consecutive timestamps, before jitter.
const TS_STEP: i64 = 1_000;
/// How long background flushes and compactions may take to catch up before the run gives up.
const SETTLE_LIMIT: Duration = Duration::from_secs(1800);
/// A write refused with a retryable error (`Overloaded` while flushes catch up) is retried this
/// many times before the run gives up.
const MAX_RETRIES: u32 = 100;

type Value = [u8; VALUE_BYTES];

/// Runs the benchmark.
pub(crate) fn run(args: &Args) -> Result<()> {
    for engine in &args.engine {
        ensure!(
            ENGINES.contains(&engine.as_str()),
            "engine {engine:?} is not benchmarked yet: only `omendb` runs today; the peers \
             (redb, fjall, rocksdb, sled, btreemap) come with a later issue"
        );
    }
    ensure!(args.keys > 0, "--keys must be at least 1");
    ensure!(args.batch_rows > 0, "--batch-rows must be at least 1");
    ensure!(args.lookups > 0, "--lookups must be at least 1");
    ensure!(
        args.multi_get_keys > 0,
        "--multi-get-keys must be at least 1"
    );
    ensure!(args.ts_rows > 0, "--ts-rows must be at least 1");
    ensure!(args.runs > 0, "--runs must be at least 1");
    ensure!(args.reopens > 0, "--reopens must be at least 1");
    ensure!(
        (0.0..=1.0).contains(&args.absent),
        "--absent must be within 0..=1"
    );
    ensure!(
        !args.clients.is_empty() && args.clients.iter().all(|&c| c > 0),
        "--clients must list positive client counts"
    );
    // Versions are a byte per key: 0 after the load, then the number of the mixed row.
    ensure!(args.clients.len() < 255, "at most 254 mixed rows");
    let dist: Dist = args.dist.parse()?;

    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let mut report = Report::new(args.json);
    report.note(&format!("machine: {}", report::machine()));
    report.note(&format!(
        "command: {}",
        std::env::args().collect::<Vec<_>>().join(" ")
    ));
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let root = parent.join(format!("omendb-db-bench-{}", std::process::id()));
    ensure!(
        !root.exists(),
        "{} exists already; remove it or pick another --dir",
        root.display()
    );
    let result = runtime.block_on(async {
        report.note(&format!(
            "generating {} {dist} keys (seed {})",
            args.keys, args.seed
        ));
        let data = Data::new(dist.generate(args.keys, args.seed), args.seed);
        ensure!(
            data.keys.len() == args.keys,
            "the generator gave {} keys, not {}",
            data.keys.len(),
            args.keys
        );
        bench_omendb(args, data, &root, &mut report).await
    });
    let _ = std::fs::remove_dir_all(&root);
    result
}

/// The keys and what each holds: every answer is checked against this.
#[derive(Clone)]
struct Data {
    /// Distinct keys, sorted.
    keys: Arc<Vec<u64>>,
    /// The version each key (by position in `keys`) holds: 0 after the load, then the number of
    /// the mixed row that updated it last.
    versions: Arc<Vec<u8>>,
    seed: u64,
}

impl Data {
    fn new(keys: Vec<u64>, seed: u64) -> Self {
        let versions = vec![0; keys.len()];
        Data {
            keys: Arc::new(keys),
            versions: Arc::new(versions),
            seed,
        }
    }

    /// Version `version` of `key`'s value.
    fn value(&self, key: u64, version: u8) -> Value {
        let head = mix(key ^ self.seed);
        let tail = mix(head ^ mix(u64::from(version) ^ self.seed.rotate_left(32)));
        let mut value = [0; VALUE_BYTES];
        value[..8].copy_from_slice(&head.to_le_bytes());
        value[8..].copy_from_slice(&tail.to_le_bytes());
        value
    }

    /// What a read of `key` must return now.
    fn expected(&self, key: u64) -> Option<Value> {
        let at = self.keys.binary_search(&key).ok()?;
        Some(self.value(key, self.versions[at]))
    }

    /// The key and value of time-series row `i`: increasing timestamps with jitter below one
    /// step, and small integers as values so that any order of summing them is exact.
    fn ts_row(&self, i: usize) -> (i64, f64) {
        let i = i as u64;
        let jitter = (mix(i ^ self.seed) % TS_STEP as u64) as i64;
        let key = TS_BASE + i as i64 * TS_STEP + jitter;
        let value = (mix(i ^ self.seed.rotate_left(17)) % 1000) as f64;
        (key, value)
    }
}

/// SplitMix64's finalizer: a fixed, well-mixed function of `z`.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Fails unless `got` is exactly `want` (both absent, or the same bytes).
fn check(workload: &str, key: u64, got: Option<&[u8]>, want: Option<&Value>) -> Result<()> {
    if got != want.map(|w| &w[..]) {
        bail!(
            "{workload}: WRONG ANSWER for key {key}: got {got:?}, expected {want:?}; no figure \
             reported"
        );
    }
    Ok(())
}

fn us(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e6
}

/// A row of `ops` operations in `seconds`, with per-call latencies in microseconds.
fn row(
    workload: &'static str,
    keys: usize,
    clients: usize,
    ops: usize,
    seconds: f64,
    latencies: &mut [f64],
) -> Row {
    Row {
        engine: "omendb",
        workload,
        keys,
        clients,
        ops_per_s: ops as f64 / seconds,
        p50_us: percentile(latencies, 0.5),
        p99_us: percentile(latencies, 0.99),
        vs_omendb: 1.0,
        checksum_ok: true,
    }
}

/// How the engine is configured, the same for every open (also `stress`'s).
pub(crate) struct Config {
    pub(crate) memtable_bytes: usize,
    pub(crate) cache_bytes: u64,
    pub(crate) compaction_trigger: usize,
}

impl Config {
    /// The engine's defaults, with the memtable and page cache sizes given in MiB.
    pub(crate) fn new(memtable_mb: Option<usize>, cache_mb: Option<u64>) -> Self {
        let defaults = Settings::default();
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
            .durability(Durability::Buffered)
            .memtable_bytes(self.memtable_bytes)
            .cache_bytes(self.cache_bytes)
            .compaction_trigger(self.compaction_trigger)
            .build()
            .await
            .with_context(|| format!("opening the database in {}", dir.display()))
    }
}

async fn bench_omendb(args: &Args, mut data: Data, root: &Path, report: &mut Report) -> Result<()> {
    let config = Config::new(args.memtable_mb, args.cache_mb);
    report.note(&format!(
        "omendb: Buffered durability (acknowledged once in the WAL's buffer, synced by its \
         policy), memtable {} MiB, page cache {} MiB, size-tiered compaction of {} sorted runs, \
         other settings the engine's defaults; files in {}",
        config.memtable_bytes >> 20,
        config.cache_bytes >> 20,
        config.compaction_trigger,
        root.display()
    ));
    report.note(&format!(
        "kv table: {} u64 keys in random order, {VALUE_BYTES}-byte values, {} rows per \
         put_batch; lookups: {} ({:.0}% absent); scans of {SCAN_ROWS} rows: {}; time series: {} \
         rows of i64 timestamp + f64; mixed rows: {} ops each, 50% get / 50% put_value of \
         uniformly chosen keys",
        args.keys,
        args.batch_rows,
        args.lookups,
        args.absent * 100.0,
        args.scans,
        args.ts_rows,
        args.mixed_ops
    ));
    let mut db = config.open(root).await?;
    let kv = db.create_table("kv", KeyType::U64, None).await?;
    let n = args.keys;

    load(&db, &kv, &data, args, report).await?;
    get(&kv, &data, args, report).await?;
    scan100(&kv, &data, args, report).await?;
    time_series(&db, &data, args, report).await?;
    for (i, &clients) in args.clients.iter().enumerate() {
        let version = u8::try_from(i + 1).context("too many mixed rows")?;
        data = mixed(&kv, data, clients, version, args, report).await?;
    }
    drop(kv);

    // reopen
    let mut open_us = Vec::with_capacity(args.reopens);
    let mut sample_rng = StdRng::seed_from_u64(args.seed ^ 0x7E09_E40E);
    for _ in 0..args.reopens {
        db.close().await?;
        drop(db);
        let start = Instant::now();
        db = config.open(root).await?;
        open_us.push(us(start));
        let recovered = db.wal_recovery();
        report.note(&format!(
            "reopen: {:.1} ms, replayed {} WAL records ({} bytes)",
            open_us.last().copied().unwrap_or(0.0) / 1e3,
            recovered.records,
            recovered.bytes_read
        ));
        let kv = db.table("kv")?;
        for _ in 0..args.verify_keys.min(n) {
            let key = data.keys[sample_rng.random_range(0..n)];
            let got = kv.get_value(key).await?;
            check("reopen", key, got.as_deref(), data.expected(key).as_ref())?;
        }
        let absent = keygen::lookups(&data.keys, args.verify_keys / 10, 1.0, sample_rng.random());
        for key in absent {
            let got = kv.get_value(key).await?;
            check("reopen", key, got.as_deref(), data.expected(key).as_ref())?;
        }
    }
    let p50 = median(&mut open_us);
    let row_reopen = row("reopen", n, 1, 1, p50 / 1e6, &mut open_us);
    report.note(
        "reopen: close, then time until open returns (segments opened and checked, WAL after \
         the last flush replayed); ops_per_s = opens per second at the median; then a sample of \
         present and absent keys is read back and checked",
    );
    report.row(&row_reopen)?;
    db.close().await?;
    drop(db);

    let mut footprint = Report::new(args.json);
    footprint.row(&Footprint {
        engine: "omendb",
        workload: "footprint",
        keys: n,
        peak_rss_mb: report::peak_rss_mb().unwrap_or(0.0),
        disk_bytes: dir_bytes(root)?,
    })?;
    Ok(())
}

/// Bulk load: every key in random order, `batch_rows` per `put_batch`, timed until the last one
/// is acknowledged; then the engine's own background flushes and compactions settle.
async fn load(db: &Db, kv: &Table, data: &Data, args: &Args, report: &mut Report) -> Result<()> {
    let mut order: Vec<u64> = data.keys.as_ref().clone();
    let mut rng = StdRng::seed_from_u64(data.seed ^ 0x10AD);
    for i in (1..order.len()).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    let schema: SchemaRef = Arc::new(Schema::new(vec![
        Field::new(KEY_COLUMN, DataType::UInt64, false),
        Field::new(KV_VALUE_COLUMN, DataType::Binary, false),
    ]));
    let mut latencies = Vec::with_capacity(order.len().div_ceil(args.batch_rows));
    let mut retries = 0;
    let start = Instant::now();
    for chunk in order.chunks(args.batch_rows) {
        let values: Vec<Value> = chunk.iter().map(|&k| data.value(k, 0)).collect();
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(UInt64Array::from(chunk.to_vec())),
                Arc::new(BinaryArray::from_iter_values(values.iter())),
            ],
        )?;
        let one = Instant::now();
        retrying(
            || kv.put_batch(&batch, WriteOptions::BUFFERED),
            &mut retries,
        )
        .await?;
        latencies.push(us(one));
    }
    let seconds = start.elapsed().as_secs_f64();
    drop(order);
    let settled = settle(db).await?;
    let stats = db.stats();
    report.note(&format!(
        "load: {seconds:.2} s until the last put_batch was acknowledged ({retries} retries after \
         Overloaded); background work settled {:.2} s later: {} flushes, {} compactions, {} \
         segments, {} memtable bytes",
        settled.as_secs_f64(),
        stats.flushes,
        stats.compactions,
        stats.segments,
        stats.memtable_bytes
    ));
    report.row(&row(
        "load",
        args.keys,
        1,
        args.keys,
        seconds,
        &mut latencies,
    ))
}

/// Warm point reads (`get`) and batched ones (`multi_get`) of the same lookups, on one task.
async fn get(kv: &Table, data: &Data, args: &Args, report: &mut Report) -> Result<()> {
    let lookups = keygen::lookups(&data.keys, args.lookups, args.absent, data.seed);
    let expected: Vec<Option<Value>> = lookups.iter().map(|&k| data.expected(k)).collect();

    // An untimed pass checks every answer and warms the caches.
    for (&key, want) in lookups.iter().zip(&expected) {
        let got = kv.get_value(key).await?;
        check("get", key, got.as_deref(), want.as_ref())?;
    }
    let mut latencies = Vec::with_capacity(lookups.len());
    let start = Instant::now();
    for (&key, want) in lookups.iter().zip(&expected) {
        let one = Instant::now();
        let got = kv.get_value(key).await?;
        latencies.push(us(one));
        check("get", key, got.as_deref(), want.as_ref())?;
    }
    let seconds = start.elapsed().as_secs_f64();
    report.row(&row(
        "get",
        args.keys,
        1,
        lookups.len(),
        seconds,
        &mut latencies,
    ))?;

    let mut latencies = Vec::with_capacity(lookups.len().div_ceil(args.multi_get_keys));
    let start = Instant::now();
    for (keys, wants) in lookups
        .chunks(args.multi_get_keys)
        .zip(expected.chunks(args.multi_get_keys))
    {
        let one = Instant::now();
        let got = kv.multi_get_values(keys).await?;
        latencies.push(us(one));
        ensure!(
            got.len() == keys.len(),
            "multi_get: {} answers for {} keys; no figure reported",
            got.len(),
            keys.len()
        );
        for ((&key, want), got) in keys.iter().zip(wants).zip(&got) {
            check("multi_get", key, got.as_deref(), want.as_ref())?;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    report.note(&format!(
        "multi_get: {:.0} ns per key, {} keys per call; ops_per_s counts keys, latencies are \
         per call",
        seconds * 1e9 / lookups.len() as f64,
        args.multi_get_keys
    ));
    report.row(&row(
        "multi_get",
        args.keys,
        1,
        lookups.len(),
        seconds,
        &mut latencies,
    ))
}

/// Scans of 100 rows from uniformly chosen stored keys, on one task; every row's key and value
/// checked.
async fn scan100(kv: &Table, data: &Data, args: &Args, report: &mut Report) -> Result<()> {
    let n = data.keys.len();
    let mut rng = StdRng::seed_from_u64(data.seed ^ 0x5CA7);
    let starts: Vec<usize> = (0..args.scans).map(|_| rng.random_range(0..n)).collect();
    let options = ScanOptions {
        limit: Some(SCAN_ROWS),
        batch_rows: Some(SCAN_ROWS),
        ..ScanOptions::default()
    };
    let mut latencies = Vec::with_capacity(starts.len());
    let start = Instant::now();
    for &first in &starts {
        let one = Instant::now();
        let batches: Vec<RecordBatch> = kv
            .scan(data.keys[first].., options.clone())?
            .try_collect()
            .await?;
        latencies.push(us(one));
        let want_rows = SCAN_ROWS.min(n - first);
        let mut rows = 0;
        for batch in &batches {
            ensure!(
                batch.num_columns() == 2,
                "scan100: {} columns, not key and value",
                batch.num_columns()
            );
            let keys = batch
                .column(0)
                .as_primitive_opt::<UInt64Type>()
                .context("scan100: the key column is not UInt64")?;
            let values = batch
                .column(1)
                .as_binary_opt::<i32>()
                .context("scan100: the value column is not Binary")?;
            for (key, value) in keys.values().iter().zip(values.iter()) {
                let want_key = data.keys.get(first + rows).copied();
                ensure!(
                    Some(*key) == want_key,
                    "scan100: WRONG ANSWER: row {rows} of the scan from {} is key {key}, \
                     expected {want_key:?}; no figure reported",
                    data.keys[first]
                );
                check("scan100", *key, value, data.expected(*key).as_ref())?;
                rows += 1;
            }
        }
        ensure!(
            rows == want_rows,
            "scan100: WRONG ANSWER: the scan from {} returned {rows} rows, expected \
             {want_rows}; no figure reported",
            data.keys[first]
        );
    }
    let seconds = start.elapsed().as_secs_f64();
    report.row(&row(
        "scan100",
        args.keys,
        1,
        starts.len(),
        seconds,
        &mut latencies,
    ))
}

/// Time series: `ts_rows` rows appended in key order (`ts_append`, rows/s), then the sum of
/// their values over the whole range (`ts_aggregate`, rows aggregated per second at the median
/// of `runs` aggregates).
async fn time_series(db: &Db, data: &Data, args: &Args, report: &mut Report) -> Result<()> {
    let ts = db
        .create_table(
            "ts",
            KeyType::I64,
            Some(Schema::new(vec![Field::new("v", DataType::Float64, false)])),
        )
        .await?;
    let schema: SchemaRef = Arc::new(Schema::new(vec![
        Field::new(KEY_COLUMN, DataType::Int64, false),
        Field::new("v", DataType::Float64, false),
    ]));
    let mut latencies = Vec::with_capacity(args.ts_rows.div_ceil(args.batch_rows));
    let mut retries = 0;
    let start = Instant::now();
    let mut next = 0;
    while next < args.ts_rows {
        let end = (next + args.batch_rows).min(args.ts_rows);
        let (keys, values): (Vec<i64>, Vec<f64>) = (next..end).map(|i| data.ts_row(i)).unzip();
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from(keys)),
                Arc::new(Float64Array::from(values)),
            ],
        )?;
        let one = Instant::now();
        retrying(
            || ts.put_batch(&batch, WriteOptions::BUFFERED),
            &mut retries,
        )
        .await?;
        latencies.push(us(one));
        next = end;
    }
    let seconds = start.elapsed().as_secs_f64();
    let settled = settle(db).await?;
    report.note(&format!(
        "ts_append: {} rows in key order, {} per put_batch ({retries} retries after \
         Overloaded); background work settled {:.2} s later",
        args.ts_rows,
        args.batch_rows,
        settled.as_secs_f64()
    ));
    report.row(&row(
        "ts_append",
        args.ts_rows,
        1,
        args.ts_rows,
        seconds,
        &mut latencies,
    ))?;

    let (first, _) = data.ts_row(0);
    let (last, _) = data.ts_row(args.ts_rows - 1);
    // Small integers sum exactly in f64 in any order, so the engine's sum must match exactly.
    let expected = (0..args.ts_rows)
        .map(|i| data.ts_row(i).1 as u64)
        .sum::<u64>() as f64;
    let mut times = Vec::with_capacity(args.runs);
    for _ in 0..args.runs {
        let one = Instant::now();
        let result = ts
            .aggregate(first..=last, "v", Aggregate::Sum, None)
            .await?;
        times.push(us(one));
        ensure!(
            result.num_rows() == 1 && result.num_columns() == 1,
            "ts_aggregate: a {}x{} result, not one value",
            result.num_rows(),
            result.num_columns()
        );
        let sums = result
            .column(0)
            .as_primitive_opt::<Float64Type>()
            .context("ts_aggregate: the sum is not Float64")?;
        let sum = sums.is_valid(0).then(|| sums.value(0));
        ensure!(
            sum == Some(expected),
            "ts_aggregate: WRONG ANSWER: sum {sum:?}, expected {expected}; no figure reported"
        );
    }
    let p50 = median(&mut times);
    report.note(&format!(
        "ts_aggregate: sum of v over all {} rows, {:.1} ms at the median of {} runs; ops_per_s \
         counts rows aggregated",
        args.ts_rows,
        p50 / 1e3,
        args.runs
    ));
    report.row(&row(
        "ts_aggregate",
        args.ts_rows,
        1,
        args.ts_rows,
        p50 / 1e6,
        &mut times,
    ))
}

/// YCSB-A's shape: 50% `get_value`, 50% `put_value` of uniformly chosen stored keys, by
/// `clients` concurrent tasks. Updates write version `version`; a read must see the key's
/// version before this row or `version`. Returns the data with the updated keys' versions.
async fn mixed(
    kv: &Table,
    data: Data,
    clients: usize,
    version: u8,
    args: &Args,
    report: &mut Report,
) -> Result<Data> {
    let n = data.keys.len();
    let per_client = args.mixed_ops.div_ceil(clients);
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let kv = kv.clone();
            let data = data.clone();
            let seed = mix(data.seed ^ (u64::from(version) << 32) ^ client as u64);
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed);
                let mut latencies = Vec::with_capacity(per_client);
                let mut updated = Vec::new();
                let mut retries = 0;
                for _ in 0..per_client {
                    let at = rng.random_range(0..n);
                    let key = data.keys[at];
                    let new = data.value(key, version);
                    let one = Instant::now();
                    if rng.random_bool(0.5) {
                        let got = kv.get_value(key).await?;
                        latencies.push(us(one));
                        let old = data.value(key, data.versions[at]);
                        if got.as_deref() != Some(&new[..]) {
                            check("ycsb_a", key, got.as_deref(), Some(&old))?;
                        }
                    } else {
                        retrying(
                            || kv.put_value(key, new.to_vec(), WriteOptions::BUFFERED),
                            &mut retries,
                        )
                        .await?;
                        latencies.push(us(one));
                        updated.push(at);
                    }
                }
                Ok::<_, anyhow::Error>((latencies, updated, retries))
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(per_client * clients);
    let mut versions = data.versions.as_ref().clone();
    let mut retries = 0;
    for task in tasks {
        let (mine, updated, my_retries) = task.await.context("a mixed client task failed")??;
        latencies.extend(mine);
        for at in updated {
            versions[at] = version;
        }
        retries += my_retries;
    }
    let seconds = start.elapsed().as_secs_f64();
    let ops = latencies.len();
    report.note(&format!(
        "ycsb_a with {clients} clients: {ops} ops ({retries} update retries after Overloaded)"
    ));
    report.row(&row("ycsb_a", n, clients, ops, seconds, &mut latencies))?;
    Ok(Data {
        versions: Arc::new(versions),
        ..data
    })
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

/// Waits until no frozen memtable waits for a flush and no compaction runs, seen twice in a row
/// with no flush or compaction in between (compaction leaves as many sorted runs as its policy
/// wants, so no segment count marks the end). Returns how long that took.
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
        let quiet = stats.memtables <= 1 && !stats.compacting;
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

/// Bytes of every file under `dir`.
pub(crate) fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?
        {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_differ_by_key_and_version_and_repeat_for_the_same_seed() {
        let data = Data::new(vec![1, 2, 3], 42);
        assert_ne!(data.value(1, 0), data.value(2, 0));
        assert_ne!(data.value(1, 0), data.value(1, 1));
        assert_eq!(data.value(3, 2), Data::new(vec![1, 2, 3], 42).value(3, 2));
        assert_eq!(data.expected(2), Some(data.value(2, 0)));
        assert_eq!(data.expected(4), None);
    }

    #[test]
    fn time_series_keys_increase() {
        let data = Data::new(vec![1], 7);
        let keys: Vec<i64> = (0..10_000).map(|i| data.ts_row(i).0).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn a_wrong_or_missing_answer_is_an_error() {
        let data = Data::new(vec![5], 1);
        let right = data.value(5, 0);
        assert!(check("get", 5, Some(&right), Some(&right)).is_ok());
        assert!(check("get", 6, None, None).is_ok());
        let err = check("get", 5, None, Some(&right)).unwrap_err();
        assert!(err.to_string().contains("WRONG ANSWER"), "{err}");
        let wrong = data.value(5, 1);
        assert!(check("get", 5, Some(&wrong), Some(&right)).is_err());
        assert!(check("get", 6, Some(&right), None).is_err());
    }

    #[test]
    fn peers_are_refused_until_their_issue() {
        let args = Args::parse_from(["db", "--engine", "rocksdb", "--keys", "10"]);
        let err = run(&args).unwrap_err().to_string();
        assert!(err.contains("later issue"), "{err}");
    }

    /// A 1 MiB memtable makes the load flush and compact, so reads, scans and the reopen are
    /// checked against segments, not only the memtable.
    #[test]
    fn a_small_run_checks_answers_through_flushes_compactions_and_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let args = Args::parse_from([
            "db",
            "--keys",
            "100000",
            "--memtable-mb",
            "1",
            "--lookups",
            "5000",
            "--scans",
            "500",
            "--ts-rows",
            "20000",
            "--runs",
            "1",
            "--mixed-ops",
            "4000",
            "--reopens",
            "1",
            "--verify-keys",
            "2000",
            "--json",
            "--dir",
            dir.path().to_str().unwrap(),
        ]);
        run(&args).unwrap();
    }
}
