//! `omendb-bench stress`: the 100M-key stress run of issue 6. It loads `--keys` distinct keys
//! through the engine (`omendb_core::Db` on local files), then checks that every one of them is
//! there: by `multi_get_values` of every key, by one full scan (every key in order, every value),
//! by random `get`s (timed; 10% of them for absent keys) and by range counts; then it closes,
//! reopens (timed) and checks again with a full scan and a sample of `get`s.
//!
//! Values are derived from the key and the seed, so every answer is compared with the exact
//! bytes expected while nothing but the sorted key array is held in memory. A wrong answer is
//! counted and reported on stderr and the run goes on, so that one line sums it up: stdout gets a
//! single JSON object (`keys, load_rows_per_s, verify_ok, get_p50_us, get_p99_us, reopen_s,
//! peak_rss_mb, disk_bytes`), and the exit status is non-zero unless every check passed. An
//! error of the engine itself ends the run at once.
//!
//! While it runs, a watcher thread prints a progress line to stderr every few seconds (phase,
//! rows done, rows/s, resident memory, the engine's segments, memtables, flushes and
//! compactions) and stops the process if its resident set passes `--max-rss-mb`, so a run that
//! outgrows the machine ends with a measurement instead of the OOM killer.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use arrow_array::builder::BinaryBuilder;
use arrow_array::cast::AsArray;
use arrow_array::types::UInt64Type;
use arrow_array::{Array, RecordBatch, UInt64Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use clap::{Parser, ValueEnum};
use futures::TryStreamExt;
use omendb_core::db::Settings;
use omendb_core::keygen::{self, Dist};
use omendb_core::table::{KEY_COLUMN, KV_VALUE_COLUMN};
use omendb_core::{Aggregate, Db, KeyType, ScanOptions, Table, WriteOptions};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

use crate::db::{Config, dir_bytes, mix, retrying, settle};
use crate::report::{self, Report, median, percentile};

/// Arguments of `omendb-bench stress`.
#[derive(Parser, Debug)]
pub(crate) struct Args {
    /// Keys to load and check.
    #[arg(long, default_value_t = 100_000_000)]
    keys: usize,
    /// Bytes of each value (derived from its key, so that every read can be checked).
    #[arg(long, default_value_t = 16)]
    value_bytes: usize,
    /// Key distribution: seq, bursty, uniform, lognormal, clustered, outliers, steps.
    #[arg(long, default_value = "uniform")]
    dist: String,
    /// Order of the load: `random` (a seeded permutation, as `omendb-bench db` loads: every
    /// flushed segment then spans the whole key range) or `sorted` (ascending, as a time series
    /// arrives: segments do not overlap).
    #[arg(long, value_enum, default_value_t = Order::Random)]
    order: Order,
    /// Seed of the keys, values, load order and every sample.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Rows per `put_batch` during the load.
    #[arg(long, default_value_t = 10_000)]
    batch_rows: usize,
    /// Keys per `multi_get_values` call when every key is checked.
    #[arg(long, default_value_t = 10_000)]
    verify_chunk: usize,
    /// Timed random `get`s (one call each) for the latency percentiles.
    #[arg(long, default_value_t = 1_000_000)]
    gets: usize,
    /// Fraction of the random `get`s (and of the samples after the reopen) for absent keys.
    #[arg(long, default_value_t = 0.1)]
    absent: f64,
    /// Range counts checked against the known number of keys in the range.
    #[arg(long, default_value_t = 1_000)]
    ranges: usize,
    /// The widest range counted, in keys (widths are log-uniform from 1 up to this).
    #[arg(long, default_value_t = 100_000)]
    range_keys: usize,
    /// Random `get`s checked after the reopen.
    #[arg(long, default_value_t = 100_000)]
    reopen_gets: usize,
    /// Memtable size in MiB (default: the engine's).
    #[arg(long)]
    memtable_mb: Option<usize>,
    /// Page cache size in MiB (default: the engine's).
    #[arg(long)]
    cache_mb: Option<u64>,
    /// Directory for the database files (a fresh subdirectory is used and removed).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Seconds between progress lines on stderr.
    #[arg(long, default_value_t = 5)]
    progress_secs: u64,
    /// Stop the run (exit status 3, files removed) once the resident set passes this many MiB.
    #[arg(long, default_value_t = 8192)]
    max_rss_mb: u64,
}

/// The order in which keys are loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Order {
    /// A seeded pseudo-random permutation of the keys.
    Random,
    /// Ascending key order.
    Sorted,
}

impl Order {
    fn name(self) -> &'static str {
        match self {
            Order::Random => "random",
            Order::Sorted => "sorted",
        }
    }
}

/// The final line, the contract of issue 6.
#[derive(Serialize)]
struct Summary {
    keys: usize,
    /// Rows per second until the last `put_batch` was acknowledged (background work after it
    /// is reported in a note, not here).
    load_rows_per_s: f64,
    /// Every check passed: every key by `multi_get_values`, both full scans, every random
    /// `get`, every range count, every sampled `get` after the reopen.
    verify_ok: bool,
    get_p50_us: f64,
    get_p99_us: f64,
    /// Seconds from the start of the reopen until `open` returned.
    reopen_s: f64,
    /// Peak resident set of the whole process, the key array of the checker included.
    peak_rss_mb: f64,
    /// Bytes of every file under the database directory after the final close.
    disk_bytes: u64,
}

/// Wrong answers printed per phase; the rest are only counted.
const PRINTED_FAILURES: u64 = 10;

/// Runs the stress test.
pub(crate) fn run(args: &Args) -> Result<()> {
    ensure!(args.keys > 0, "--keys must be at least 1");
    ensure!(args.batch_rows > 0, "--batch-rows must be at least 1");
    ensure!(args.verify_chunk > 0, "--verify-chunk must be at least 1");
    ensure!(args.range_keys > 0, "--range-keys must be at least 1");
    ensure!(args.progress_secs > 0, "--progress-secs must be at least 1");
    ensure!(
        (0.0..=1.0).contains(&args.absent),
        "--absent must be within 0..=1"
    );
    let dist: Dist = args.dist.parse()?;

    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let root = parent.join(format!("omendb-stress-{}", std::process::id()));
    ensure!(
        !root.exists(),
        "{} exists already; remove it or pick another --dir",
        root.display()
    );
    let report = Report::new(true);
    report.note(&format!("machine: {}", report::machine()));
    report.note(&format!(
        "command: {}",
        std::env::args().collect::<Vec<_>>().join(" ")
    ));

    let progress = Arc::new(Progress::new());
    let watcher = {
        let progress = Arc::clone(&progress);
        let every = Duration::from_secs(args.progress_secs);
        let (limit, root) = (args.max_rss_mb as f64, root.clone());
        std::thread::Builder::new()
            .name("stress-progress".to_owned())
            .spawn(move || watch(&progress, every, limit, &root))
            .context("starting the progress thread")?
    };
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let result = runtime.block_on(stress(args, dist, &root, &report, &progress));
    progress.stop.store(true, Ordering::Release);
    let _ = watcher.join();
    let _ = std::fs::remove_dir_all(&root);
    let (summary, failures) = result?;
    Report::new(true).row(&summary)?;
    if failures > 0 {
        bail!("{failures} checks failed (see the lines above); verify_ok is false");
    }
    Ok(())
}

async fn stress(
    args: &Args,
    dist: Dist,
    root: &Path,
    report: &Report,
    progress: &Progress,
) -> Result<(Summary, u64)> {
    let started = Instant::now();
    progress.phase("generate", args.keys);
    report.note(&format!(
        "generating {} {dist} keys (seed {})",
        args.keys, args.seed
    ));
    let keys = dist.generate(args.keys, args.seed);
    ensure!(
        keys.len() == args.keys,
        "the generator gave {} keys, not {}",
        keys.len(),
        args.keys
    );
    let data = Data {
        keys,
        seed: args.seed,
        value_bytes: args.value_bytes,
    };
    report.note(&format!(
        "{} keys generated in {:.1} s; the checker's sorted key array holds {} MiB of the \
         process's memory",
        args.keys,
        started.elapsed().as_secs_f64(),
        (args.keys * 8) >> 20
    ));

    let defaults = Settings::default();
    let config = Config::new(args.memtable_mb, args.cache_mb);
    report.note(&format!(
        "omendb on local files in {}: Buffered durability, memtable {} MiB, page cache {} MiB, \
         size-tiered compaction of {} sorted runs into segments of {} MiB, other settings \
         the engine's defaults; {} keys in {} order, {}-byte values, {} rows per put_batch",
        root.display(),
        config.memtable_bytes >> 20,
        config.cache_bytes >> 20,
        config.compaction_trigger,
        defaults.segment_target_bytes >> 20,
        args.keys,
        args.order.name(),
        args.value_bytes,
        args.batch_rows
    ));
    let mut checks = Checks::default();

    let db = config.open(root).await?;
    progress.watch_db(Some(db.clone()));
    let kv = db.create_table("kv", KeyType::U64, None).await?;
    let load_rows_per_s = load(&kv, &data, args, report, progress).await?;
    progress.phase("settle", 0);
    let settled = settle(&db).await?;
    let stats = db.stats();
    report.note(&format!(
        "background work went quiet {:.1} s after the load: {} flushes, {} compactions, {} \
         segments, {} MiB in memtables; peak RSS so far {:.0} MiB",
        settled.as_secs_f64(),
        stats.flushes,
        stats.compactions,
        stats.segments,
        stats.memtable_bytes >> 20,
        report::peak_rss_mb().unwrap_or(0.0)
    ));

    verify_gets(&kv, &data, args, report, progress, &mut checks).await?;
    verify_scan("scan", &kv, &data, report, progress, &mut checks).await?;
    let (get_p50_us, get_p99_us) =
        random_gets(&kv, &data, args, report, progress, &mut checks).await?;
    range_counts(&kv, &data, args, report, progress, &mut checks).await?;
    if let Some(error) = db.stats().background_error {
        report.note(&format!("the engine reports a background error: {error}"));
    }
    drop(kv);

    progress.phase("close", 0);
    let closing = Instant::now();
    db.close().await?;
    progress.watch_db(None);
    drop(db);
    report.note(&format!("close: {:.2} s", closing.elapsed().as_secs_f64()));
    progress.phase("reopen", 0);
    let opening = Instant::now();
    let db = config.open(root).await?;
    let reopen_s = opening.elapsed().as_secs_f64();
    progress.watch_db(Some(db.clone()));
    let recovered = db.wal_recovery();
    report.note(&format!(
        "reopen: {reopen_s:.2} s until open returned; replayed {} WAL records ({} MiB)",
        recovered.records,
        recovered.bytes_read >> 20
    ));
    let kv = db.table("kv")?;
    verify_scan("rescan", &kv, &data, report, progress, &mut checks).await?;
    sample_gets(&kv, &data, args, report, progress, &mut checks).await?;
    drop(kv);
    progress.phase("close", 0);
    db.close().await?;
    progress.watch_db(None);
    drop(db);

    let summary = Summary {
        keys: args.keys,
        load_rows_per_s,
        verify_ok: checks.failures == 0,
        get_p50_us,
        get_p99_us,
        reopen_s,
        peak_rss_mb: report::peak_rss_mb().unwrap_or(0.0),
        disk_bytes: dir_bytes(root)?,
    };
    report.note(&format!(
        "done in {:.1} s; {} checks failed",
        started.elapsed().as_secs_f64(),
        checks.failures
    ));
    Ok((summary, checks.failures))
}

/// The keys and what each holds: every answer is checked against this.
struct Data {
    /// Distinct keys, sorted.
    keys: Vec<u64>,
    seed: u64,
    value_bytes: usize,
}

impl Data {
    /// Writes `key`'s value into `out` (`value_bytes` long): a SplitMix64 stream seeded by the
    /// key, so that a value read back under the wrong key, or cut short, does not match.
    fn value_into(&self, key: u64, out: &mut Vec<u8>) {
        out.clear();
        let mut state = mix(key ^ self.seed);
        while out.len() < self.value_bytes {
            let take = (self.value_bytes - out.len()).min(8);
            out.extend_from_slice(&state.to_le_bytes()[..take]);
            state = mix(state);
        }
    }

    fn contains(&self, key: u64) -> bool {
        self.keys.binary_search(&key).is_ok()
    }

    /// How many keys lie in `lo..=hi`.
    fn count(&self, lo: u64, hi: u64) -> u64 {
        let end = self.keys.partition_point(|&k| k <= hi);
        let start = self.keys.partition_point(|&k| k < lo);
        end.saturating_sub(start) as u64
    }
}

/// Counts wrong answers and prints the first few of each phase.
#[derive(Default)]
struct Checks {
    failures: u64,
    in_phase: u64,
}

impl Checks {
    fn start_phase(&mut self) {
        self.in_phase = 0;
    }

    fn fail(&mut self, message: impl FnOnce() -> String) {
        self.failures += 1;
        self.in_phase += 1;
        if self.in_phase <= PRINTED_FAILURES {
            eprintln!("# WRONG ANSWER: {}", message());
        } else if self.in_phase == PRINTED_FAILURES + 1 {
            eprintln!("# (further wrong answers of this phase are only counted)");
        }
    }

    /// Checks that `got` is `key`'s value if `present`, else nothing.
    fn value(
        &mut self,
        phase: &str,
        data: &Data,
        key: u64,
        present: bool,
        got: Option<&[u8]>,
        want: &mut Vec<u8>,
    ) {
        if present {
            data.value_into(key, want);
            if got != Some(&want[..]) {
                self.fail(|| format!("{phase}: key {key}: got {got:?}, expected {want:?}"));
            }
        } else if got.is_some() {
            self.fail(|| format!("{phase}: absent key {key}: got {got:?}, expected nothing"));
        }
    }
}

/// Loads every key, `batch_rows` per `put_batch`, in the order of `--order`; returns rows per
/// second until the last batch was acknowledged.
async fn load(
    kv: &Table,
    data: &Data,
    args: &Args,
    report: &Report,
    progress: &Progress,
) -> Result<f64> {
    let n = data.keys.len();
    progress.phase("load", n);
    let permutation = (args.order == Order::Random).then(|| Permutation::new(n as u64, data.seed));
    let schema: SchemaRef = Arc::new(Schema::new(vec![
        Field::new(KEY_COLUMN, DataType::UInt64, false),
        Field::new(KV_VALUE_COLUMN, DataType::Binary, false),
    ]));
    let mut value = Vec::with_capacity(data.value_bytes);
    let mut latencies = Vec::with_capacity(n.div_ceil(args.batch_rows));
    let mut retries = 0;
    let start = Instant::now();
    let mut next = 0;
    while next < n {
        let end = (next + args.batch_rows).min(n);
        let keys: Vec<u64> = (next..end)
            .map(|i| {
                // `at` maps 0..n onto 0..n, so the index is in bounds.
                let at = permutation.as_ref().map_or(i, |p| p.at(i as u64) as usize);
                data.keys[at]
            })
            .collect();
        let mut values = BinaryBuilder::with_capacity(keys.len(), keys.len() * data.value_bytes);
        for &key in &keys {
            data.value_into(key, &mut value);
            values.append_value(&value);
        }
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(UInt64Array::from(keys)), Arc::new(values.finish())],
        )?;
        let one = Instant::now();
        retrying(
            || kv.put_batch(&batch, WriteOptions::BUFFERED),
            &mut retries,
        )
        .await?;
        latencies.push(one.elapsed().as_secs_f64() * 1e3);
        progress.add(end - next);
        next = end;
    }
    let seconds = start.elapsed().as_secs_f64();
    report.note(&format!(
        "load: {n} rows in {seconds:.1} s = {:.0} rows/s until the last put_batch was \
         acknowledged; per batch p50 {:.1} ms, p99 {:.1} ms, max {:.0} ms; {retries} retries \
         after Overloaded",
        n as f64 / seconds,
        percentile(&mut latencies, 0.5),
        percentile(&mut latencies, 0.99),
        percentile(&mut latencies, 1.0),
    ));
    Ok(n as f64 / seconds)
}

/// Every key by `multi_get_values`, `verify_chunk` keys per call in key order, every value
/// compared; then a sample of absent keys, which must find nothing.
async fn verify_gets(
    kv: &Table,
    data: &Data,
    args: &Args,
    report: &Report,
    progress: &Progress,
    checks: &mut Checks,
) -> Result<()> {
    let n = data.keys.len();
    progress.phase("verify-get", n);
    checks.start_phase();
    let mut want = Vec::with_capacity(data.value_bytes);
    let start = Instant::now();
    for chunk in data.keys.chunks(args.verify_chunk) {
        let got = kv.multi_get_values(chunk).await?;
        if got.len() != chunk.len() {
            checks.fail(|| {
                format!(
                    "verify-get: {} answers for {} keys from {}",
                    got.len(),
                    chunk.len(),
                    chunk[0]
                )
            });
        }
        for (&key, got) in chunk.iter().zip(&got) {
            checks.value("verify-get", data, key, true, got.as_deref(), &mut want);
        }
        progress.add(chunk.len());
    }
    let seconds = start.elapsed().as_secs_f64();
    let absent = keygen::lookups(
        &data.keys,
        (n / 100).clamp(1, 100_000),
        1.0,
        data.seed ^ 0xAB5E,
    );
    for chunk in absent.chunks(args.verify_chunk) {
        let got = kv.multi_get_values(chunk).await?;
        for (&key, got) in chunk.iter().zip(&got) {
            let present = data.contains(key);
            checks.value("verify-get", data, key, present, got.as_deref(), &mut want);
        }
    }
    report.note(&format!(
        "verify-get: every key by multi_get_values ({} per call) in {seconds:.1} s = {:.0} ns \
         per key, then {} absent keys; {} wrong",
        args.verify_chunk,
        seconds * 1e9 / n as f64,
        absent.len(),
        checks.in_phase
    ));
    Ok(())
}

/// One full scan: every stored key, in order, with its value, and nothing else.
async fn verify_scan(
    phase: &'static str,
    kv: &Table,
    data: &Data,
    report: &Report,
    progress: &Progress,
    checks: &mut Checks,
) -> Result<()> {
    let n = data.keys.len();
    progress.phase(phase, n);
    checks.start_phase();
    let mut want = Vec::with_capacity(data.value_bytes);
    let start = Instant::now();
    let mut stream = kv.scan(0u64.., ScanOptions::default())?;
    let mut rows = 0usize;
    while let Some(batch) = stream.try_next().await? {
        let keys = batch
            .column(0)
            .as_primitive_opt::<UInt64Type>()
            .context("scan: the key column is not UInt64")?;
        let values = batch
            .column(1)
            .as_binary_opt::<i32>()
            .context("scan: the value column is not Binary")?;
        for (&key, value) in keys.values().iter().zip(values.iter()) {
            match data.keys.get(rows) {
                Some(&expected) if expected == key => {
                    checks.value(phase, data, key, true, value, &mut want);
                }
                expected => checks
                    .fail(|| format!("{phase}: row {rows} is key {key}, expected {expected:?}")),
            }
            rows += 1;
        }
        progress.add(batch.num_rows());
    }
    if rows != n {
        checks.fail(|| format!("{phase}: {rows} rows, expected {n}"));
    }
    let seconds = start.elapsed().as_secs_f64();
    report.note(&format!(
        "{phase}: {rows} rows in key order in {seconds:.1} s = {:.0} rows/s, every key and \
         value compared; {} wrong",
        rows as f64 / seconds,
        checks.in_phase
    ));
    Ok(())
}

/// `gets` random `get_value` calls (stored keys chosen uniformly, `absent` of them absent),
/// each timed and checked; returns the p50 and p99 latency in microseconds.
async fn random_gets(
    kv: &Table,
    data: &Data,
    args: &Args,
    report: &Report,
    progress: &Progress,
    checks: &mut Checks,
) -> Result<(f64, f64)> {
    let lookups = keygen::lookups(&data.keys, args.gets, args.absent, data.seed ^ 0x6E75);
    progress.phase("get", lookups.len());
    checks.start_phase();
    let mut want = Vec::with_capacity(data.value_bytes);
    let mut latencies = Vec::with_capacity(lookups.len());
    let start = Instant::now();
    for (i, &key) in lookups.iter().enumerate() {
        let one = Instant::now();
        let got = kv.get_value(key).await?;
        latencies.push(one.elapsed().as_secs_f64() * 1e6);
        checks.value(
            "get",
            data,
            key,
            data.contains(key),
            got.as_deref(),
            &mut want,
        );
        if i % 10_000 == 9_999 {
            progress.add(10_000);
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let p50 = percentile(&mut latencies, 0.5);
    let p99 = percentile(&mut latencies, 0.99);
    report.note(&format!(
        "get: {} random get_value calls ({:.0}% absent keys) in {seconds:.1} s = {:.0} ops/s \
         (checking included), p50 {p50:.2} µs, p99 {p99:.2} µs, max {:.0} µs; {} wrong",
        lookups.len(),
        args.absent * 100.0,
        lookups.len() as f64 / seconds,
        percentile(&mut latencies, 1.0),
        checks.in_phase
    ));
    Ok((p50, p99))
}

/// `ranges` counts (`Aggregate::Count` of the value column) over random ranges of up to
/// `range_keys` keys, whose bounds are stored keys or their neighbours; each compared with the
/// number of keys known to lie in the range.
async fn range_counts(
    kv: &Table,
    data: &Data,
    args: &Args,
    report: &Report,
    progress: &Progress,
    checks: &mut Checks,
) -> Result<()> {
    let n = data.keys.len();
    progress.phase("ranges", args.ranges);
    checks.start_phase();
    let mut rng = StdRng::seed_from_u64(data.seed ^ 0x004A_46E5);
    let mut times = Vec::with_capacity(args.ranges);
    let mut rows = 0u64;
    for _ in 0..args.ranges {
        let first = rng.random_range(0..n);
        let width = (args.range_keys as f64).powf(rng.random::<f64>()) as usize;
        let last = (first + width.saturating_sub(1)).min(n - 1);
        // Bounds on a stored key, or one past it, so both inclusive and exclusive edges count.
        let lo = data.keys[first].saturating_add(rng.random_range(0..2));
        let hi = data.keys[last].saturating_sub(rng.random_range(0..2));
        let expected = data.count(lo, hi);
        let one = Instant::now();
        let result = kv
            .aggregate(lo..=hi, KV_VALUE_COLUMN, Aggregate::Count, None)
            .await?;
        times.push(one.elapsed().as_secs_f64() * 1e6);
        let got = result
            .column(0)
            .as_primitive_opt::<UInt64Type>()
            .filter(|counts| counts.len() == 1 && counts.is_valid(0))
            .map(|counts| counts.value(0));
        if got != Some(expected) {
            checks.fail(|| format!("ranges: count of {lo}..={hi} is {got:?}, expected {expected}"));
        }
        rows += expected;
        progress.add(1);
    }
    report.note(&format!(
        "ranges: {} counts of up to {} keys ({rows} rows in all), median {:.0} µs, p99 {:.0} \
         µs; {} wrong",
        args.ranges,
        args.range_keys,
        median(&mut times),
        percentile(&mut times, 0.99),
        checks.in_phase
    ));
    Ok(())
}

/// After the reopen: `reopen_gets` random `get_value` calls (`absent` of them for absent keys),
/// each checked.
async fn sample_gets(
    kv: &Table,
    data: &Data,
    args: &Args,
    report: &Report,
    progress: &Progress,
    checks: &mut Checks,
) -> Result<()> {
    let lookups = keygen::lookups(&data.keys, args.reopen_gets, args.absent, data.seed ^ 0x5E0);
    progress.phase("reget", lookups.len());
    checks.start_phase();
    let mut want = Vec::with_capacity(data.value_bytes);
    let start = Instant::now();
    for &key in &lookups {
        let got = kv.get_value(key).await?;
        checks.value(
            "reget",
            data,
            key,
            data.contains(key),
            got.as_deref(),
            &mut want,
        );
        progress.add(1);
    }
    report.note(&format!(
        "reget: {} random get_value calls after the reopen in {:.1} s; {} wrong",
        lookups.len(),
        start.elapsed().as_secs_f64(),
        checks.in_phase
    ));
    Ok(())
}

/// A seeded pseudo-random permutation of `0..n` that needs no memory: a four-round Feistel
/// network on the smallest even number of bits that holds `n - 1`, walked until it lands below
/// `n` (a permutation of the larger domain restricted by cycle walking stays a permutation).
/// Shuffling a copy of the keys instead would cost another 8 bytes per key, 800 MB at 100M.
struct Permutation {
    n: u64,
    half_bits: u32,
    round_keys: [u64; 4],
}

impl Permutation {
    fn new(n: u64, seed: u64) -> Self {
        let bits = (u64::BITS - n.saturating_sub(1).leading_zeros()).max(2);
        let half_bits = bits.div_ceil(2);
        let round_keys = [1u64, 2, 3, 4].map(|round| mix(seed ^ round.wrapping_mul(0xF00D)));
        Permutation {
            n,
            half_bits,
            round_keys,
        }
    }

    fn encrypt(&self, x: u64) -> u64 {
        let mask = (1u64 << self.half_bits) - 1;
        let (mut left, mut right) = (x >> self.half_bits, x & mask);
        for key in self.round_keys {
            let next = left ^ (mix(right ^ key) & mask);
            left = right;
            right = next;
        }
        (left << self.half_bits) | right
    }

    /// The image of `i` (below `n`), itself below `n`.
    fn at(&self, i: u64) -> u64 {
        // The domain is less than 4n, so the walk takes under four steps on average.
        let mut x = self.encrypt(i);
        while x >= self.n {
            x = self.encrypt(x);
        }
        x
    }
}

/// What the run is doing, shared with the watcher thread.
struct Progress {
    started: Instant,
    /// The phase's name, when it began and its total of units.
    phase: Mutex<(&'static str, Instant, usize)>,
    /// Units of the phase done.
    done: AtomicU64,
    /// The open database, for its counters.
    db: Mutex<Option<Db>>,
    stop: AtomicBool,
}

impl Progress {
    fn new() -> Self {
        Progress {
            started: Instant::now(),
            phase: Mutex::new(("start", Instant::now(), 0)),
            done: AtomicU64::new(0),
            db: Mutex::new(None),
            stop: AtomicBool::new(false),
        }
    }

    fn phase(&self, name: &'static str, total: usize) {
        *self.phase.lock().unwrap_or_else(PoisonError::into_inner) = (name, Instant::now(), total);
        self.done.store(0, Ordering::Release);
    }

    fn add(&self, units: usize) {
        self.done.fetch_add(units as u64, Ordering::AcqRel);
    }

    fn watch_db(&self, db: Option<Db>) {
        *self.db.lock().unwrap_or_else(PoisonError::into_inner) = db;
    }

    fn line(&self, rate: f64, rss: f64) -> String {
        let (name, since, total) = *self.phase.lock().unwrap_or_else(PoisonError::into_inner);
        let done = self.done.load(Ordering::Acquire);
        let engine = self
            .db
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|db| {
                let s = db.stats();
                format!(
                    "; {} segments, {} memtables ({} MiB), {} flushes, {} compactions{}",
                    s.segments,
                    s.memtables,
                    s.memtable_bytes >> 20,
                    s.flushes,
                    s.compactions,
                    if s.compacting { ", compacting" } else { "" }
                )
            })
            .unwrap_or_default();
        format!(
            "# [{:>6.0} s] {name} ({:.0} s): {done}/{total}, {rate:.0}/s, RSS {rss:.0} MiB \
             (peak {:.0}){engine}",
            self.started.elapsed().as_secs_f64(),
            since.elapsed().as_secs_f64(),
            report::peak_rss_mb().unwrap_or(0.0)
        )
    }
}

/// The watcher: a progress line every `every` (with the bytes under the database directory),
/// and the memory limit checked four times a second. Over the limit it removes the database
/// files and ends the process, because the run can no longer say anything about the 4 GiB
/// target and the machine is shared.
fn watch(progress: &Progress, every: Duration, max_rss_mb: f64, root: &Path) {
    let tick = Duration::from_millis(250);
    let mut last = (Instant::now(), 0u64, "");
    while !progress.stop.load(Ordering::Acquire) {
        std::thread::sleep(tick);
        let rss = report::rss_mb().unwrap_or(0.0);
        if rss > max_rss_mb {
            eprintln!("{}", progress.line(0.0, rss));
            eprintln!(
                "# STOPPED: resident set {rss:.0} MiB passed --max-rss-mb {max_rss_mb:.0}; \
                 removing {} and exiting",
                root.display()
            );
            let _ = std::fs::remove_dir_all(root);
            std::process::exit(3);
        }
        if last.0.elapsed() >= every {
            let (name, since, _) = *progress
                .phase
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let done = progress.done.load(Ordering::Acquire);
            // A new phase restarts the count; its rate is measured from its start.
            let (before, seconds) = if name == last.2 {
                (last.1, last.0.elapsed())
            } else {
                (0, since.elapsed())
            };
            let rate = done.saturating_sub(before) as f64 / seconds.as_secs_f64().max(1e-3);
            // Files come and go while the engine works; a failed walk only omits the figure.
            let disk = dir_bytes(root).map_or_else(|_| "?".to_owned(), |b| (b >> 20).to_string());
            eprintln!("{}; disk {disk} MiB", progress.line(rate, rss));
            last = (Instant::now(), done, name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_permutation_is_a_bijection() {
        for n in [1u64, 2, 3, 7, 64, 1000, 4097] {
            let p = Permutation::new(n, 9);
            let mut seen = vec![false; n as usize];
            for i in 0..n {
                let at = p.at(i);
                assert!(at < n);
                assert!(!seen[at as usize], "n {n}: {at} twice");
                seen[at as usize] = true;
            }
        }
        let p = Permutation::new(1000, 9);
        assert_ne!(
            (0..10).map(|i| p.at(i)).collect::<Vec<_>>(),
            (0..10).collect::<Vec<_>>()
        );
    }

    #[test]
    fn values_depend_on_the_key_and_have_the_asked_length() {
        let data = Data {
            keys: vec![1, 5, 9],
            seed: 3,
            value_bytes: 13,
        };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        data.value_into(1, &mut a);
        data.value_into(5, &mut b);
        assert_eq!(a.len(), 13);
        assert_ne!(a, b);
        data.value_into(1, &mut b);
        assert_eq!(a, b);
        assert_eq!(data.count(1, 9), 3);
        assert_eq!(data.count(2, 9), 2);
        assert_eq!(data.count(2, 8), 1);
        assert_eq!(data.count(9, 1), 0);
    }

    #[test]
    fn wrong_missing_or_phantom_values_are_counted() {
        let data = Data {
            keys: vec![1],
            seed: 3,
            value_bytes: 16,
        };
        let (mut right, mut want) = (Vec::new(), Vec::new());
        data.value_into(1, &mut right);
        let mut checks = Checks::default();
        checks.value("t", &data, 1, true, Some(&right), &mut want);
        checks.value("t", &data, 2, false, None, &mut want);
        assert_eq!(checks.failures, 0);
        checks.value("t", &data, 1, true, Some(&right[..15]), &mut want);
        checks.value("t", &data, 1, true, None, &mut want);
        checks.value("t", &data, 2, false, Some(&right), &mut want);
        assert_eq!(checks.failures, 3);
    }

    /// A 1 MiB memtable makes the load flush and compact, so every check runs against segments
    /// and the reopen, not only the memtable.
    #[test]
    fn a_small_run_passes_every_check() {
        let dir = tempfile::tempdir().unwrap();
        let args = Args::parse_from([
            "stress",
            "--keys",
            "50000",
            "--value-bytes",
            "20",
            "--memtable-mb",
            "1",
            "--gets",
            "2000",
            "--ranges",
            "50",
            "--reopen-gets",
            "1000",
            "--dir",
            dir.path().to_str().unwrap(),
        ]);
        run(&args).unwrap();
    }
}
