//! `omendb-bench db`: OmenDB's embedded engine and, with the `peers` feature, the stores a user
//! would pick instead (redb, fjall, RocksDB, LMDB through heed, sled, and a `BTreeMap` as the
//! in-memory ceiling) under the database workloads of `shared/design/PERFORMANCE.md`: bulk load, warm and
//! cold point reads, `multi_get`, 100-row scans, time-series append and range aggregate,
//! YCSB-A/B/E-shaped mixes for 1 and 8 clients, reopen, and the footprint (peak RSS, bytes on
//! disk). The workloads are written once (`workload`) over the [`engine::Engine`] trait.
//!
//! Every answer is checked before a figure is printed, and a wrong or missing one aborts the
//! engine's run: a key's value is derived from the seed, the key and the version last written to
//! it, so each read is compared with the exact bytes expected (or with absence, for the 10% of
//! lookups that ask for keys not in the set); scans must return the next stored keys with their
//! values; the aggregate must equal the exact sum of the values appended; a read racing an update
//! must see the key's old or new value.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use omendb_core::keygen::Dist;
use serde::{Deserialize, Serialize};

use crate::report::{self, Report, percentile};

mod engine;
mod workload;

pub(crate) use engine::omendb::{Config, retrying, settle};
use engine::{Durability, Settings, VALUE_BYTES, Value};

/// Arguments of `omendb-bench db`.
#[derive(Parser, Debug, Clone)]
pub(crate) struct Args {
    /// Engines to measure, comma-separated, or `all`: omendb, redb, fjall, rocksdb, lmdb, sled,
    /// btreemap (the peers need the `peers` feature). With more than one, each runs in a child
    /// process of its own, one after the other, so each footprint is its own.
    #[arg(long, default_value = "omendb", value_delimiter = ',')]
    engine: Vec<String>,
    /// When a write is acknowledged, for every engine: `buffered` (no fsync per write) or
    /// `durable` (fsync per batch or update).
    #[arg(long, value_enum, default_value = "buffered")]
    durability: Durability,
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
    /// 100-row scans of the `scan100` row, and operations of the `ycsb_e` row.
    #[arg(long, default_value_t = 100_000)]
    scans: usize,
    /// Rows appended to the time-series table and aggregated.
    #[arg(long, default_value_t = 1_000_000)]
    ts_rows: usize,
    /// Timed aggregates over the time-series table; the median is reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Concurrent clients of the mixed rows (YCSB-A 50/50 and YCSB-B 95/5 read/update),
    /// comma-separated; one row each. A client is a task for OmenDB and a thread of its own for
    /// a synchronous peer.
    #[arg(long, default_value = "1,8", value_delimiter = ',')]
    clients: Vec<usize>,
    /// Operations of each mixed row, shared among its clients.
    #[arg(long, default_value_t = 1_000_000)]
    mixed_ops: usize,
    /// Memtable size in MiB (default: the engine's).
    #[arg(long)]
    memtable_mb: Option<usize>,
    /// Cache budget in MiB of every engine that has one (default: OmenDB's page cache default).
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
/// concurrent clients; 1 for every single-task workload). Latencies are per call: one batch
/// for `load` and `ts_append`, one call of `multi_get_keys` keys for `multi_get`, one aggregate
/// for `ts_aggregate`, one clean close and open for `reopen` (one sample; a close waits for the
/// engine's background work).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Row {
    engine: String,
    workload: String,
    keys: usize,
    clients: usize,
    ops_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    /// This engine's ops/s divided by OmenDB's for the same workload in this run.
    vs_omendb: f64,
    checksum_ok: bool,
}

impl Row {
    /// A row of `ops` operations in `seconds`, with per-call latencies in microseconds; its
    /// answers were checked (a wrong one aborts before any row is made).
    fn new(
        engine: &str,
        workload: &str,
        keys: usize,
        clients: usize,
        ops: usize,
        seconds: f64,
        latencies: &mut [f64],
    ) -> Self {
        Row {
            engine: engine.to_owned(),
            workload: workload.to_owned(),
            keys,
            clients,
            ops_per_s: ops as f64 / seconds,
            p50_us: percentile(latencies, 0.5),
            p99_us: percentile(latencies, 0.99),
            vs_omendb: 1.0,
            checksum_ok: true,
        }
    }
}

/// The footprint row of the output contract: one per engine.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Footprint {
    engine: String,
    workload: String,
    keys: usize,
    /// Peak resident set of the engine's process (key arrays and lookups included).
    peak_rss_mb: f64,
    /// Bytes of every file under the database directory after the final close.
    disk_bytes: u64,
}

/// Timestamps of the time-series table start here (microseconds, late 2023).
const TS_BASE: i64 = 1_700_000_000_000_000;
/// Microseconds between consecutive timestamps, before jitter.
const TS_STEP: i64 = 1_000;

/// Runs the benchmark.
pub(crate) fn run(args: &Args) -> Result<()> {
    let engines = engines(&args.engine)?;
    ensure!(args.keys > 0, "--keys must be at least 1");
    ensure!(args.batch_rows > 0, "--batch-rows must be at least 1");
    ensure!(args.lookups > 0, "--lookups must be at least 1");
    ensure!(
        args.multi_get_keys > 0,
        "--multi-get-keys must be at least 1"
    );
    ensure!(args.ts_rows > 0, "--ts-rows must be at least 1");
    ensure!(args.scans > 0, "--scans must be at least 1");
    ensure!(args.runs > 0, "--runs must be at least 1");
    ensure!(
        (0.0..=1.0).contains(&args.absent),
        "--absent must be within 0..=1"
    );
    ensure!(
        !args.clients.is_empty() && args.clients.iter().all(|&c| c > 0),
        "--clients must list positive client counts"
    );
    // Versions are a byte per key: 0 after the load, then one per mixed row.
    ensure!(args.clients.len() < 100, "at most 99 client counts");
    let dist: Dist = args.dist.parse()?;
    if let [engine] = engines.as_slice() {
        return run_one(args, engine, dist);
    }
    run_each(args, &engines)
}

/// The engines `names` asks for, in order, `all` expanded; unknown names and peers in a build
/// without the `peers` feature are errors.
fn engines(names: &[String]) -> Result<Vec<String>> {
    let mut engines = Vec::new();
    for name in names {
        let expanded: Vec<&str> = if name == "all" {
            engine::ALL.to_vec()
        } else {
            vec![name.as_str()]
        };
        for name in expanded {
            ensure!(
                engine::ALL.contains(&name),
                "unknown engine {name:?}; the engines are {} (or all)",
                engine::ALL.join(", ")
            );
            ensure!(
                cfg!(feature = "peers") || name == "omendb",
                "engine {name:?} needs the `peers` feature: cargo run --release -p omendb-bench \
                 --features peers -- db --engine {name}"
            );
            if !engines.iter().any(|e| e == name) {
                engines.push(name.to_owned());
            }
        }
    }
    ensure!(!engines.is_empty(), "--engine names no engine");
    Ok(engines)
}

/// Runs one engine in this process.
fn run_one(args: &Args, engine: &str, dist: Dist) -> Result<()> {
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
    let defaults = omendb_core::db::Settings::default();
    let settings = Settings {
        durability: args.durability,
        cache_bytes: args.cache_mb.map_or(defaults.cache_bytes, |mb| mb << 20),
        memtable_bytes: args
            .memtable_mb
            .map_or(defaults.memtable_bytes, |mb| mb << 20),
    };
    let result = runtime.block_on(async {
        report.note(&format!(
            "kv table: {} {dist} u64 keys (seed {}) loaded in random order, {VALUE_BYTES}-byte \
             values, {} rows per batch; lookups: {} ({:.0}% absent); scans: {} of 100 rows; \
             time series: {} rows of i64 timestamp + f64; mixed rows: {} ops each; durability \
             {:?}",
            args.keys,
            args.seed,
            args.batch_rows,
            args.lookups,
            args.absent * 100.0,
            args.scans,
            args.ts_rows,
            args.mixed_ops,
            args.durability
        ));
        let data = Data::new(dist.generate(args.keys, args.seed), args.seed);
        ensure!(
            data.keys.len() == args.keys,
            "the generator gave {} keys, not {}",
            data.keys.len(),
            args.keys
        );
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        match engine {
            "omendb" => {
                workload::run::<engine::OmenDb>(args, settings, data, &root, &mut report).await
            }
            #[cfg(feature = "peers")]
            "redb" => workload::run::<engine::Redb>(args, settings, data, &root, &mut report).await,
            #[cfg(feature = "peers")]
            "fjall" => {
                workload::run::<engine::Fjall>(args, settings, data, &root, &mut report).await
            }
            #[cfg(feature = "peers")]
            "rocksdb" => {
                workload::run::<engine::RocksDb>(args, settings, data, &root, &mut report).await
            }
            #[cfg(feature = "peers")]
            "lmdb" => workload::run::<engine::Lmdb>(args, settings, data, &root, &mut report).await,
            #[cfg(feature = "peers")]
            "sled" => workload::run::<engine::Sled>(args, settings, data, &root, &mut report).await,
            #[cfg(feature = "peers")]
            "btreemap" => {
                workload::run::<engine::BTreeMapEngine>(args, settings, data, &root, &mut report)
                    .await
            }
            other => bail!("engine {other:?} is not built into this binary"),
        }
    });
    let _ = std::fs::remove_dir_all(&root);
    result
}

/// Runs each engine in a child process of this binary with the same arguments, one after the
/// other, then prints every row with `vs_omendb` filled in. A child that fails (a wrong answer,
/// an engine error) has no row from the failing workload on, and the run fails at the end; the
/// other engines still run.
fn run_each(args: &Args, engines: &[String]) -> Result<()> {
    let exe = std::env::current_exe().context("finding this benchmark's executable")?;
    let mut rows: Vec<Row> = Vec::new();
    let mut footprints: Vec<Footprint> = Vec::new();
    let mut failed = Vec::new();
    for engine in engines {
        let mut child_args: Vec<String> = std::env::args().skip(1).collect();
        strip_engine_args(&mut child_args);
        child_args.extend(["--engine".to_owned(), engine.clone(), "--json".to_owned()]);
        eprintln!(
            "# running {engine}: {} {}",
            exe.display(),
            child_args.join(" ")
        );
        let output = Command::new(&exe)
            .args(&child_args)
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("starting the {engine} run"))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        for line in stdout.lines().filter(|l| l.starts_with('{')) {
            if line.contains("\"footprint\"") {
                footprints.push(serde_json::from_str(line).context("a footprint row")?);
            } else {
                rows.push(serde_json::from_str(line).context("a benchmark row")?);
            }
        }
        if !output.status.success() {
            // The rows it printed were complete and checked; the failing one and those after
            // it are missing.
            eprintln!(
                "# {engine} FAILED ({}): no row from the failing workload on",
                output.status
            );
            failed.push(engine.clone());
        }
    }
    relate_to_omendb(&mut rows);
    let mut report = Report::new(args.json);
    for row in &rows {
        report.row(row)?;
    }
    let mut report = Report::new(args.json);
    for footprint in &footprints {
        report.row(footprint)?;
    }
    ensure!(
        failed.is_empty(),
        "these engines failed: {}",
        failed.join(", ")
    );
    Ok(())
}

/// Removes `--engine X`, `--engine=X` and `--json` from a child's arguments.
fn strip_engine_args(args: &mut Vec<String>) {
    let mut kept = Vec::with_capacity(args.len());
    let mut skip_next = false;
    for arg in args.drain(..) {
        if skip_next {
            skip_next = false;
        } else if arg == "--engine" {
            skip_next = true;
        } else if !arg.starts_with("--engine=") && arg != "--json" {
            kept.push(arg);
        }
    }
    *args = kept;
}

/// Sets each row's `vs_omendb`: its ops/s over OmenDB's for the same workload and clients
/// (NaN where OmenDB has no such row).
fn relate_to_omendb(rows: &mut [Row]) {
    let omendb: Vec<Row> = rows
        .iter()
        .filter(|r| r.engine == "omendb")
        .cloned()
        .collect();
    for row in rows.iter_mut() {
        row.vs_omendb = omendb
            .iter()
            .find(|o| o.workload == row.workload && o.clients == row.clients)
            .map_or(f64::NAN, |o| row.ops_per_s / o.ops_per_s);
    }
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
        let (_, value) = self.expected_at(self.keys.binary_search(&key).ok()?)?;
        Some(value)
    }

    /// The key at position `at` of `keys` and what a read of it must return now. A scan checks
    /// its rows with this: they come in key order, so the position is known and a binary search
    /// per row (several cache misses in 80 MB of keys, a third of a 100-row scan's time on every
    /// engine) would time the check rather than the engine.
    fn expected_at(&self, at: usize) -> Option<(u64, Value)> {
        let key = *self.keys.get(at)?;
        Some((key, self.value(key, *self.versions.get(at)?)))
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
        assert_eq!(data.expected_at(1), Some((2, data.value(2, 0))));
        assert_eq!(data.expected_at(3), None);
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
    fn unknown_engines_are_refused_and_all_expands() {
        let err = engines(&["mysql".to_owned()]).unwrap_err().to_string();
        assert!(err.contains("unknown engine"), "{err}");
        if cfg!(feature = "peers") {
            assert_eq!(engines(&["all".to_owned()]).unwrap(), engine::ALL.to_vec());
        } else {
            let err = engines(&["redb".to_owned()]).unwrap_err().to_string();
            assert!(err.contains("`peers` feature"), "{err}");
        }
    }

    #[test]
    fn child_runs_get_one_engine_and_rows_relate_to_omendb() {
        let mut args: Vec<String> = ["--keys", "10", "--engine", "all", "--json", "--engine=x"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        strip_engine_args(&mut args);
        assert_eq!(args, ["--keys", "10"]);
        let mut rows = vec![
            Row::new("omendb", "get", 1, 1, 100, 1.0, &mut []),
            Row::new("redb", "get", 1, 1, 50, 1.0, &mut []),
            Row::new("redb", "ycsb_a", 1, 8, 50, 1.0, &mut []),
        ];
        relate_to_omendb(&mut rows);
        assert_eq!(rows[0].vs_omendb, 1.0);
        assert_eq!(rows[1].vs_omendb, 0.5);
        assert!(rows[2].vs_omendb.is_nan());
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
            "--json",
            "--dir",
            dir.path().to_str().unwrap(),
        ]);
        run(&args).unwrap();
    }

    /// Every peer's adapter runs every workload with every answer checked (in this process;
    /// `--engine all` runs them in child processes of the `omendb-bench` binary).
    #[cfg(feature = "peers")]
    #[test]
    fn every_peer_answers_a_small_run_correctly() {
        for engine in engine::ALL {
            for durability in ["buffered", "durable"] {
                let dir = tempfile::tempdir().unwrap();
                let args = Args::parse_from([
                    "db",
                    "--engine",
                    engine,
                    "--durability",
                    durability,
                    "--keys",
                    "20000",
                    "--batch-rows",
                    "1000",
                    "--lookups",
                    "2000",
                    "--scans",
                    "200",
                    "--ts-rows",
                    "5000",
                    "--runs",
                    "1",
                    "--mixed-ops",
                    "400",
                    "--clients",
                    "1,4",
                    "--json",
                    "--dir",
                    dir.path().to_str().unwrap(),
                ]);
                run(&args).unwrap_or_else(|e| panic!("{engine} ({durability}): {e:#}"));
            }
        }
    }
}
