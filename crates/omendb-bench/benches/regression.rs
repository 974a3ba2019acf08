//! Instruction-count regression benchmarks of the hot paths, run under callgrind by gungraun:
//! index lookup, memtable insert, point read from a segment, buffered WAL append, scans of 10k
//! rows from a segment and of 40k rows from the memtable, short scans that merge overlapping
//! segments and the memtable (as batches, and lent by `scan_values`), a count over the
//! memtable's 40k rows and a sum over a time series' 40k rows in a segment. Instruction counts do
//! not depend on what else the machine is doing, so CI can compare them with the baseline
//! committed in `benches/regression-baseline.json` (`cargo xtask regression` checks, `cargo
//! xtask regression --update` rewrites it).
//!
//! Each benchmark's inputs are built by its `setup` and its answers checked by its `teardown`,
//! neither of which is counted; a wrong answer fails the run.
#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used, clippy::panic)] // bench harness code: a failure is the point

use std::hint::black_box;
use std::ops::ControlFlow;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Float64Type;
use arrow_array::{BinaryArray, Float64Array, Int64Array, RecordBatch, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use bytes::Bytes;
use futures::TryStreamExt;
use gungraun::{library_benchmark, library_benchmark_group, main};
use object_store::memory::InMemory;
use omendb_core::index::{AnyIndex, IndexPolicy, LearnedIndex};
use omendb_core::keygen::{self, Dist};
use omendb_core::memtable::Memtable;
use omendb_core::table::{KEY_COLUMN, KV_VALUE_COLUMN};
use omendb_core::{Aggregate, Db, Key, KeyType, ScanOptions, Table, WriteOptions};
use omendb_wal::{AppendOptions, FileWal, SyncPolicy, WalOptions};
use tokio::runtime::Runtime;

/// Keys the index is built over: enough for a two-level model, small enough for valgrind.
const INDEX_KEYS: usize = 100_000;
/// Operations per benchmark run.
const OPS: usize = 10_000;
/// Rows of the table the segment benchmarks read.
const TABLE_ROWS: usize = 10_000;
/// Point reads of the segment benchmark (each one goes through the whole read path).
const GETS: usize = 1_000;
/// Rows of the table the memtable scan reads: enough for the memtable to seal two sorted runs
/// (it seals every 16,384 versions) besides its live skip list.
const MEMTABLE_ROWS: usize = 40_000;
/// Rows of the table the short scans read: [`MERGED_PARTS`] interleaved parts of uniform keys,
/// all but the last flushed to segments whose key ranges overlap and the last left in the
/// memtable, the shape a random-order load leaves a table in.
const MERGED_ROWS: usize = 50_000;
const MERGED_PARTS: usize = 5;
/// Short scans per run, and rows per scan (YCSB-E's longest).
const SHORT_SCANS: usize = 100;
const SHORT_SCAN_ROWS: usize = 100;
/// Rows of the time series the segment aggregate folds: ten pages of a segment.
const SERIES_ROWS: usize = 40_000;

// --- index lookup --------------------------------------------------------------------------

struct IndexLookups {
    keys: Vec<u64>,
    index: AnyIndex,
    queries: Vec<u64>,
    expected: usize,
}

fn index_lookups() -> IndexLookups {
    let keys = Dist::Uniform.generate(INDEX_KEYS, 7);
    let index = AnyIndex::build(&keys, &IndexPolicy::default()).expect("generated keys are sorted");
    let queries = keygen::lookups(&keys, OPS, 0.1, 7);
    let expected = queries
        .iter()
        .map(|&q| keys.partition_point(|&k| k < q))
        .sum();
    IndexLookups {
        keys,
        index,
        queries,
        expected,
    }
}

#[library_benchmark]
#[bench::uniform(setup = index_lookups, teardown = check_lookups)]
fn index_lookup(f: IndexLookups) -> (usize, IndexLookups) {
    let sum = f
        .queries
        .iter()
        .map(|&q| f.index.lower_bound(&f.keys, black_box(q)))
        .sum();
    (sum, f)
}

fn check_lookups((sum, f): (usize, IndexLookups)) {
    assert_eq!(sum, f.expected, "the index answered wrongly");
}

// --- memtable insert -----------------------------------------------------------------------

fn memtable_rows() -> (Memtable, Vec<(u64, Bytes)>) {
    let keys = keygen::lookups(&Dist::Uniform.generate(OPS, 11), OPS, 0.0, 11);
    let rows = keys
        .into_iter()
        .map(|k| (k, Bytes::copy_from_slice(&k.to_le_bytes())))
        .collect();
    (Memtable::with_filter(OPS), rows)
}

#[library_benchmark]
#[bench::ten_thousand(setup = memtable_rows, teardown = check_memtable)]
fn memtable_insert(
    (memtable, rows): (Memtable, Vec<(u64, Bytes)>),
) -> (Memtable, Vec<(u64, Bytes)>) {
    for (lsn, (key, row)) in rows.iter().enumerate() {
        memtable.put(*key, lsn as u64 + 1, row.clone());
    }
    (memtable, rows)
}

fn check_memtable((memtable, rows): (Memtable, Vec<(u64, Bytes)>)) {
    let stored = memtable.versions().count();
    assert_eq!(stored, rows.len(), "the memtable lost rows");
}

// --- the engine: a point read from a segment, a scan of 10k rows -----------------------------

/// A database in memory (segments and WAL in an in-memory object store) whose `kv` table holds
/// rows of uniform keys, in a segment or in the memtable.
struct Loaded {
    runtime: Runtime,
    db: Db,
    kv: Table,
    keys: Vec<u64>,
}

fn value_of(key: u64) -> [u8; 16] {
    let mut value = [0; 16];
    value[..8].copy_from_slice(&key.to_le_bytes());
    value[8..].copy_from_slice(&(!key).to_le_bytes());
    value
}

/// A table of [`TABLE_ROWS`] rows, all flushed to one segment.
fn flushed_table() -> Loaded {
    let f = table_of(TABLE_ROWS);
    f.runtime.block_on(async {
        f.db.checkpoint().await.unwrap();
        assert_eq!(f.db.stats().segments, 1, "the table is not in one segment");
    });
    f
}

/// [`flushed_table`] with every page cached: one read of each key first, so that the
/// benchmark counts the cached point read alone (the common case of a warm database), not the
/// pages' first decode.
fn cached_table() -> Loaded {
    let f = flushed_table();
    f.runtime.block_on(async {
        for &key in &f.keys {
            assert!(f.kv.get_value(key).await.unwrap().is_some());
        }
    });
    f
}

/// A table of [`MEMTABLE_ROWS`] rows, all still in the memtable.
fn memtable_table() -> Loaded {
    let f = table_of(MEMTABLE_ROWS);
    assert_eq!(f.db.stats().segments, 0, "the table was flushed");
    f
}

/// A database in memory whose `kv` table holds `rows` rows of uniform keys, written in one batch.
fn table_of(rows: usize) -> Loaded {
    let keys = Dist::Uniform.generate(rows, 13);
    let (runtime, db, kv) = open_table(4);
    runtime.block_on(put_rows(&kv, &keys));
    Loaded {
        runtime,
        db,
        kv,
        keys,
    }
}

/// A table of [`MERGED_ROWS`] rows in [`MERGED_PARTS`] overlapping layers (compaction held off),
/// every segment page cached.
fn merged_table() -> Loaded {
    let keys = Dist::Uniform.generate(MERGED_ROWS, 13);
    let (runtime, db, kv) = open_table(16);
    runtime.block_on(async {
        for part in 0..MERGED_PARTS {
            let part_keys: Vec<u64> = keys
                .iter()
                .skip(part)
                .step_by(MERGED_PARTS)
                .copied()
                .collect();
            put_rows(&kv, &part_keys).await;
            if part + 1 < MERGED_PARTS {
                db.checkpoint().await.unwrap();
            }
        }
        assert_eq!(
            db.stats().segments,
            MERGED_PARTS - 1,
            "the segments were merged"
        );
    });
    // Reading every key caches every page, as in `cached_table`.
    runtime.block_on(async {
        for &key in &keys {
            assert!(kv.get_value(key).await.unwrap().is_some());
        }
    });
    Loaded {
        runtime,
        db,
        kv,
        keys,
    }
}

/// A database in memory (segments and WAL in an in-memory object store, compaction once
/// `compaction_trigger` runs are due) with an empty key-value table `kv`.
fn open_table(compaction_trigger: usize) -> (Runtime, Db, Table) {
    let runtime = runtime();
    // Opened and created in one `block_on`: split in two, the background task's first polls
    // shifted and `memtable_scan` counted 1.3% more (work that landed in the counted run).
    let (db, kv) = runtime.block_on(async {
        let db = open_db(compaction_trigger).await;
        let kv = db.create_table("kv", KeyType::U64, None).await.unwrap();
        (db, kv)
    });
    (runtime, db, kv)
}

/// The current-thread runtime a benchmark's database runs on.
fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// An empty database in memory (segments and WAL in an in-memory object store), compacting
/// once `compaction_trigger` runs are due. No idle work: under callgrind a setup outlasts the
/// idle delay, and what the background did would depend on the clock, not on the code.
async fn open_db(compaction_trigger: usize) -> Db {
    Db::builder()
        .store(Arc::new(InMemory::new()))
        .wal_in_store()
        .compaction_trigger(compaction_trigger)
        .idle_compaction(None)
        .build()
        .await
        .unwrap()
}

/// Writes `keys` with their [`value_of`] in one batch.
async fn put_rows(kv: &Table, keys: &[u64]) {
    let schema = Arc::new(Schema::new(vec![
        Field::new(KEY_COLUMN, DataType::UInt64, false),
        Field::new(KV_VALUE_COLUMN, DataType::Binary, false),
    ]));
    let values: Vec<[u8; 16]> = keys.iter().map(|&k| value_of(k)).collect();
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(UInt64Array::from(keys.to_vec())),
            Arc::new(BinaryArray::from_iter_values(values.iter())),
        ],
    )
    .unwrap();
    kv.put_batch(&batch, WriteOptions::DURABLE).await.unwrap();
}

#[library_benchmark]
#[bench::thousand_gets(setup = flushed_table, teardown = check_gets)]
#[bench::thousand_cached_gets(setup = cached_table, teardown = check_gets)]
fn segment_get(f: Loaded) -> (usize, Loaded) {
    let step = f.keys.len() / GETS;
    let found = f.runtime.block_on(async {
        let mut found = 0;
        for &key in f.keys.iter().step_by(step) {
            let value = f.kv.get_value(black_box(key)).await.unwrap();
            if value.as_deref() == Some(&value_of(key)[..]) {
                found += 1;
            }
        }
        found
    });
    (found, f)
}

fn check_gets((found, f): (usize, Loaded)) {
    assert_eq!(found, GETS, "point reads answered wrongly");
    close(f);
}

#[library_benchmark]
#[bench::ten_thousand_rows(setup = flushed_table, teardown = check_scan)]
fn segment_scan(f: Loaded) -> (u64, Loaded) {
    scan_all(f)
}

#[library_benchmark]
#[bench::forty_thousand_rows(setup = memtable_table, teardown = check_scan)]
fn memtable_scan(f: Loaded) -> (u64, Loaded) {
    scan_all(f)
}

/// Scans the whole table; returns the wrapping sum of the keys it gave.
fn scan_all(f: Loaded) -> (u64, Loaded) {
    let sum = f.runtime.block_on(async {
        let batches: Vec<RecordBatch> =
            f.kv.scan::<u64>(.., ScanOptions::default())
                .unwrap()
                .try_collect()
                .await
                .unwrap();
        batches.iter().fold(0, key_sum)
    });
    (sum, f)
}

/// `sum` plus the keys of `batch` (its first column), wrapping.
fn key_sum(sum: u64, batch: &RecordBatch) -> u64 {
    let keys = batch
        .column(0)
        .as_any()
        .downcast_ref::<UInt64Array>()
        .unwrap();
    keys.values().iter().fold(sum, |s, &k| s.wrapping_add(k))
}

fn check_scan((sum, f): (u64, Loaded)) {
    check_sum(sum, &f.keys);
    close(f);
}

#[library_benchmark]
#[bench::forty_thousand_rows(setup = memtable_table, teardown = check_count)]
fn memtable_count(f: Loaded) -> (u64, Loaded) {
    let count = f.runtime.block_on(async {
        let result =
            f.kv.aggregate::<u64>(.., KV_VALUE_COLUMN, Aggregate::Count, None)
                .await
                .unwrap();
        result
            .column(0)
            .as_any()
            .downcast_ref::<UInt64Array>()
            .unwrap()
            .value(0)
    });
    (count, f)
}

fn check_count((count, f): (u64, Loaded)) {
    assert_eq!(count, f.keys.len() as u64, "the count answered wrongly");
    close(f);
}

fn check_sum(sum: u64, keys: &[u64]) {
    let expected = keys.iter().fold(0u64, |s, &k| s.wrapping_add(k));
    assert_eq!(sum, expected, "the scan answered wrongly");
}

#[library_benchmark]
#[bench::hundred_scans_of_100_rows(setup = merged_table, teardown = check_short_scans)]
fn merged_scan(f: Loaded) -> (u64, Loaded) {
    let sum = f.runtime.block_on(async {
        let mut sum = 0u64;
        for &from in short_scan_starts(&f.keys) {
            let mut batches = f.kv.scan(black_box(from).., short_scan()).unwrap();
            while let Some(batch) = batches.try_next().await.unwrap() {
                sum = key_sum(sum, &batch);
            }
        }
        sum
    });
    (sum, f)
}

// The short scans of `merged_scan`, their rows lent by `scan_values` instead of batched.
#[library_benchmark]
#[bench::hundred_scans_of_100_rows(setup = merged_table, teardown = check_short_scans)]
fn merged_scan_values(f: Loaded) -> (u64, Loaded) {
    let sum = f.runtime.block_on(async {
        let mut sum = 0u64;
        for &from in short_scan_starts(&f.keys) {
            f.kv.scan_values(black_box(from).., short_scan(), |key, _| {
                let Key::U64(key) = key else {
                    panic!("a u64 table lent {key:?}")
                };
                sum = sum.wrapping_add(key);
                ControlFlow::Continue(())
            })
            .await
            .unwrap();
        }
        sum
    });
    (sum, f)
}

/// A short scan's options: [`SHORT_SCAN_ROWS`] rows, in one step.
fn short_scan() -> ScanOptions {
    ScanOptions {
        limit: Some(SHORT_SCAN_ROWS),
        batch_rows: Some(SHORT_SCAN_ROWS),
        ..ScanOptions::default()
    }
}

/// The first keys of the short scans, spread over the table.
fn short_scan_starts(keys: &[u64]) -> impl Iterator<Item = &u64> {
    keys.iter()
        .step_by(keys.len() / SHORT_SCANS)
        .take(SHORT_SCANS)
}

fn check_short_scans((sum, f): (u64, Loaded)) {
    let step = f.keys.len() / SHORT_SCANS;
    let expected = (0..SHORT_SCANS)
        .flat_map(|scan| &f.keys[scan * step..scan * step + SHORT_SCAN_ROWS])
        .fold(0u64, |s, &k| s.wrapping_add(k));
    assert_eq!(short_scan_starts(&f.keys).count(), SHORT_SCANS);
    assert_eq!(sum, expected, "the short scans answered wrongly");
    close(f);
}

fn close(f: Loaded) {
    f.runtime.block_on(f.db.close()).unwrap();
}

/// A database in memory with a time series `ts` (i64 keys, one f64 column `v`) of
/// [`SERIES_ROWS`] rows appended in key order and flushed to one segment, every page cached.
struct Series {
    runtime: Runtime,
    db: Db,
    ts: Table,
}

fn series() -> Series {
    let runtime = runtime();
    let (db, ts) = runtime.block_on(async {
        let db = open_db(4).await;
        let values = Schema::new(vec![Field::new("v", DataType::Float64, false)]);
        let ts = db
            .create_table("ts", KeyType::I64, Some(values))
            .await
            .unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new(KEY_COLUMN, DataType::Int64, false),
            Field::new("v", DataType::Float64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(0..SERIES_ROWS as i64)),
                Arc::new(Float64Array::from_iter_values(
                    (0..SERIES_ROWS).map(|i| i as f64),
                )),
            ],
        )
        .unwrap();
        ts.put_batch(&batch, WriteOptions::DURABLE).await.unwrap();
        db.checkpoint().await.unwrap();
        assert_eq!(db.stats().segments, 1, "the series is not in one segment");
        (db, ts)
    });
    let f = Series { runtime, db, ts };
    // One sum first caches the pages, as in `cached_table`.
    assert_eq!(series_sum(&f), expected_series_sum());
    f
}

fn series_sum(f: &Series) -> f64 {
    f.runtime.block_on(async {
        let result =
            f.ts.aggregate::<i64>(black_box(..), "v", Aggregate::Sum, None)
                .await
                .unwrap();
        result.column(0).as_primitive::<Float64Type>().value(0)
    })
}

/// The sum of `0..SERIES_ROWS` (exact in f64: every partial sum is an integer below 2^53).
fn expected_series_sum() -> f64 {
    (SERIES_ROWS * (SERIES_ROWS - 1) / 2) as f64
}

#[library_benchmark]
#[bench::forty_thousand_rows(setup = series, teardown = check_series_sum)]
fn segment_sum(f: Series) -> (f64, Series) {
    (series_sum(&f), f)
}

fn check_series_sum((sum, f): (f64, Series)) {
    assert_eq!(sum, expected_series_sum(), "the sum answered wrongly");
    f.runtime.block_on(f.db.close()).unwrap();
}

// --- buffered WAL append -------------------------------------------------------------------

struct OpenWal {
    _dir: tempfile::TempDir,
    wal: FileWal,
    payload: Vec<u8>,
}

fn open_wal() -> OpenWal {
    let dir = tempfile::tempdir().unwrap();
    let options = WalOptions {
        sync_policy: SyncPolicy::Never,
        ..WalOptions::default()
    };
    let wal = FileWal::open(dir.path(), options).unwrap();
    OpenWal {
        _dir: dir,
        wal,
        payload: vec![0xA5; 100],
    }
}

#[library_benchmark]
#[bench::ten_thousand_100_bytes(setup = open_wal, teardown = check_wal)]
fn wal_append_buffered(w: OpenWal) -> (u64, OpenWal) {
    let mut last = 0;
    for _ in 0..OPS {
        last = w
            .wal
            .append(black_box(&w.payload), AppendOptions::BUFFERED)
            .unwrap();
    }
    (last, w)
}

fn check_wal((last, w): (u64, OpenWal)) {
    assert_eq!(last, OPS as u64, "the log handed out wrong LSNs");
    w.wal.close().unwrap();
}

library_benchmark_group!(
    name = hot_paths;
    benchmarks = index_lookup, memtable_insert, segment_get, segment_scan, memtable_scan,
        merged_scan, merged_scan_values, memtable_count, segment_sum, wal_append_buffered
);

main!(library_benchmark_groups = hot_paths);
