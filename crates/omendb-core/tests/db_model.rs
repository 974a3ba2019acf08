//! Model-based test: random operations on the engine checked against a `BTreeMap` oracle,
//! seeded and reproducible, on local files, on the in-memory store and on S3 (moto).
//!
//! `OMENDB_MODEL_SEEDS=N` and `OMENDB_MODEL_OPS=M` lengthen it (`cargo xtask model`);
//! `OMENDB_MODEL_SEED=S` replays one seed (`cargo xtask model --seed S`). A failure names its
//! seed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

use std::collections::BTreeMap;
use std::ops::{ControlFlow, RangeInclusive};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::UInt64Type;
use arrow_array::{Array, RecordBatch};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::ObjectStore;
use object_store::memory::InMemory;
use omendb_core::{Aggregate, Db, Error, Key, KeyType, ScanOptions, WriteOptions};
use omendb_storage::segment::SegmentWriterOptions;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

#[path = "../../omendb-storage/tests/common/moto.rs"]
mod moto;

type Oracle = BTreeMap<u64, Bytes>;

const KEYS: u64 = 300;

#[derive(Clone)]
enum Place {
    Files(Arc<tempfile::TempDir>),
    Memory(Arc<dyn ObjectStore>),
    S3(Arc<moto::Moto>, String),
}

async fn open(place: &Place) -> Db {
    let builder = Db::builder()
        .memtable_bytes(6 * 1024)
        .compaction_trigger(3)
        // Reads pay for merges within a few reads (1 ms a probe or switch, merges of these
        // few-kilobyte tables priced at microseconds), so that merges started by reads
        // interleave with every other operation.
        .read_compaction(Some(omendb_core::ReadCompaction {
            probe: Duration::from_millis(1),
            switch: Duration::from_millis(1),
            rewrite_bytes_per_second: 1 << 30,
        }))
        .gc_grace(Duration::ZERO)
        .segment_options(SegmentWriterOptions {
            rows_per_page: 8,
            pages_per_row_group: 4,
            ..SegmentWriterOptions::default()
        });
    let builder = match place {
        Place::Files(dir) => builder.path(dir.path()),
        // A prefix with characters object paths encode (`~`, a space, brackets): segments
        // named in the manifest in their encoded form must be opened by it, not encoded again.
        Place::Memory(store) => builder.store(Arc::clone(store)).prefix("tenant~1/db [x]"),
        Place::S3(moto, bucket) => builder
            .url(format!("s3://{bucket}/db"))
            .backend_options(moto.options()),
    };
    builder.build().await.unwrap()
}

fn value(rng: &mut StdRng) -> Bytes {
    let len = rng.random_range(0..24);
    Bytes::from((0..len).map(|_| rng.random::<u8>()).collect::<Vec<_>>())
}

fn range(rng: &mut StdRng) -> RangeInclusive<u64> {
    let a = rng.random_range(0..KEYS);
    let b = (a + rng.random_range(0..40)).min(KEYS + 5);
    a..=b
}

async fn scan_all(
    stream: futures::stream::BoxStream<'static, omendb_core::Result<RecordBatch>>,
) -> Vec<(u64, Bytes)> {
    let batches: Vec<RecordBatch> = stream.try_collect().await.unwrap();
    let mut out = Vec::new();
    for batch in batches {
        assert!(batch.num_rows() > 0, "scans never return empty batches");
        let keys = batch.column(0).as_primitive::<UInt64Type>();
        let values = batch.column(1).as_binary::<i32>();
        for i in 0..batch.num_rows() {
            assert!(values.is_valid(i));
            out.push((keys.value(i), Bytes::copy_from_slice(values.value(i))));
        }
    }
    out
}

/// A visitor for `scan_values` that collects what it is lent, and breaks once it holds
/// `stop` rows if given.
fn collect_into(
    out: &mut Vec<(u64, Bytes)>,
    stop: Option<usize>,
) -> impl FnMut(Key, &[u8]) -> ControlFlow<()> + Send + '_ {
    move |key, value| {
        let Key::U64(key) = key else {
            panic!("a u64 table lent {key:?}")
        };
        out.push((key, Bytes::copy_from_slice(value)));
        if stop.is_some_and(|stop| out.len() >= stop) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}

/// Runs `ops` random operations; returns how many merges reads paid for.
async fn run(seed: u64, ops: usize, place: Place) -> u64 {
    // Each place gets its own stream of operations from the same seed.
    let place_number = match &place {
        Place::Files(_) => 0,
        Place::Memory(_) => 1,
        Place::S3(..) => 2,
    };
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(3).wrapping_add(place_number));
    let mut db = open(&place).await;
    let mut kv = db.create_table("kv", KeyType::U64, None).await.unwrap();
    let mut oracle = Oracle::new();
    let mut snapshots: Vec<(omendb_core::Snapshot, Oracle)> = Vec::new();
    let mut most_segments = 0;
    // Merges that reads paid for, over every open of the run.
    let mut read_merges = 0;
    for step in 0..ops {
        most_segments = most_segments.max(db.stats().segments);
        let what = rng.random_range(0..100);
        let ctx = format!("seed {seed} step {step}");
        match what {
            0..=34 => {
                let key = rng.random_range(0..KEYS);
                let v = value(&mut rng);
                kv.put_value(key, v.clone(), WriteOptions::BUFFERED)
                    .await
                    .unwrap();
                oracle.insert(key, v);
            }
            35..=39 => {
                // A batch of puts in one write.
                let mut batch = db.batch();
                for _ in 0..rng.random_range(1..20) {
                    let key = rng.random_range(0..KEYS);
                    let v = value(&mut rng);
                    batch.put_value(&kv, key, v.clone()).unwrap();
                    oracle.insert(key, v);
                }
                db.write(batch, WriteOptions::DURABLE).await.unwrap();
            }
            40..=46 => {
                let key = rng.random_range(0..KEYS);
                kv.delete(key, WriteOptions::BUFFERED).await.unwrap();
                oracle.remove(&key);
            }
            47..=49 => {
                let r = range(&mut rng);
                kv.delete_range(r.clone(), WriteOptions::BUFFERED)
                    .await
                    .unwrap();
                oracle.retain(|k, _| !r.contains(k));
            }
            50..=64 => {
                let key = rng.random_range(0..KEYS + 5);
                assert_eq!(
                    kv.get_value(key).await.unwrap(),
                    oracle.get(&key).cloned(),
                    "{ctx}: get {key}"
                );
            }
            65..=69 => {
                let keys: Vec<u64> = (0..rng.random_range(1..30))
                    .map(|_| rng.random_range(0..KEYS))
                    .collect();
                let expected: Vec<_> = keys.iter().map(|k| oracle.get(k).cloned()).collect();
                assert_eq!(
                    kv.multi_get_values(&keys).await.unwrap(),
                    expected,
                    "{ctx}: multi_get"
                );
            }
            70..=77 => {
                let r = range(&mut rng);
                let reverse = rng.random_bool(0.3);
                let limit = rng.random_bool(0.3).then(|| rng.random_range(0..10));
                let options = ScanOptions {
                    reverse,
                    limit,
                    batch_rows: Some(rng.random_range(1..16)),
                    ..ScanOptions::default()
                };
                let got = scan_all(kv.scan(r.clone(), options).unwrap()).await;
                let mut expected: Vec<(u64, Bytes)> = oracle
                    .range(r.clone())
                    .map(|(k, v)| (*k, v.clone()))
                    .collect();
                if reverse {
                    expected.reverse();
                }
                if let Some(limit) = limit {
                    expected.truncate(limit);
                }
                assert_eq!(
                    got, expected,
                    "{ctx}: scan {r:?} reverse {reverse} limit {limit:?}"
                );
                // The same scan lending its rows, sometimes broken off by the visitor.
                let stop = rng.random_bool(0.2).then(|| rng.random_range(1..5));
                let mut lent = Vec::new();
                let options = ScanOptions {
                    reverse,
                    limit,
                    batch_rows: Some(rng.random_range(1..16)),
                    ..ScanOptions::default()
                };
                let seen = kv
                    .scan_values(r.clone(), options, collect_into(&mut lent, stop))
                    .await
                    .unwrap();
                if let Some(stop) = stop {
                    expected.truncate(stop);
                }
                assert_eq!(seen, lent.len(), "{ctx}: scan_values' count");
                assert_eq!(
                    lent, expected,
                    "{ctx}: scan_values {r:?} reverse {reverse} limit {limit:?} stop {stop:?}"
                );
            }
            78..=79 => {
                let r = range(&mut rng);
                let got = kv
                    .aggregate(r.clone(), "value", Aggregate::Count, None)
                    .await
                    .unwrap();
                let count = got.column(0).as_primitive::<UInt64Type>().value(0);
                assert_eq!(
                    count,
                    oracle.range(r.clone()).count() as u64,
                    "{ctx}: count {r:?}"
                );
            }
            80..=83 => {
                if snapshots.len() < 3 {
                    snapshots.push((db.snapshot(), oracle.clone()));
                } else {
                    let (snapshot, seen) = snapshots.remove(rng.random_range(0..snapshots.len()));
                    let r = range(&mut rng);
                    let got = scan_all(
                        snapshot
                            .scan(&kv, r.clone(), ScanOptions::default())
                            .unwrap(),
                    )
                    .await;
                    let expected: Vec<(u64, Bytes)> = seen
                        .range(r.clone())
                        .map(|(k, v)| (*k, v.clone()))
                        .collect();
                    assert_eq!(
                        got,
                        expected,
                        "{ctx}: snapshot {} scan {r:?}",
                        snapshot.lsn()
                    );
                    let mut lent = Vec::new();
                    snapshot
                        .scan_values(
                            &kv,
                            r.clone(),
                            ScanOptions::default(),
                            collect_into(&mut lent, None),
                        )
                        .await
                        .unwrap();
                    assert_eq!(
                        lent,
                        expected,
                        "{ctx}: snapshot {} scan_values {r:?}",
                        snapshot.lsn()
                    );
                    let key = rng.random_range(0..KEYS);
                    assert_eq!(
                        snapshot.get_value(&kv, key).await.unwrap(),
                        seen.get(&key).cloned(),
                        "{ctx}: snapshot get"
                    );
                    let keys: Vec<u64> = (0..8).map(|_| rng.random_range(0..KEYS)).collect();
                    let expected: Vec<Option<Bytes>> =
                        keys.iter().map(|k| seen.get(k).cloned()).collect();
                    assert_eq!(
                        snapshot.multi_get_values(&kv, &keys).await.unwrap(),
                        expected,
                        "{ctx}: snapshot multi_get_values {keys:?}"
                    );
                    let rows: Vec<Option<Bytes>> = snapshot
                        .multi_get(&kv, &keys)
                        .await
                        .unwrap()
                        .into_iter()
                        .map(|row| {
                            row.map(|values| match values.as_slice() {
                                [omendb_core::Value::Bytes(value)] => value.clone(),
                                other => panic!("{ctx}: a key-value row {other:?}"),
                            })
                        })
                        .collect();
                    assert_eq!(rows, expected, "{ctx}: snapshot multi_get {keys:?}");
                }
            }
            84..=88 => {
                // A transaction; sometimes another write to one of its keys commits first.
                let mut txn = db.begin();
                let mut mine = oracle.clone();
                let key = rng.random_range(0..KEYS);
                assert_eq!(
                    txn.get_value(&kv, key).await.unwrap(),
                    mine.get(&key).cloned(),
                    "{ctx}: txn get"
                );
                let v = value(&mut rng);
                txn.put_value(&kv, key, v.clone()).unwrap();
                mine.insert(key, v.clone());
                if rng.random_bool(0.3) {
                    txn.delete(&kv, key + 1).unwrap();
                    mine.remove(&(key + 1));
                }
                assert_eq!(
                    txn.get_value(&kv, key).await.unwrap(),
                    Some(v),
                    "{ctx}: read your writes"
                );
                let around = key.saturating_sub(3)..=key + 3;
                let mut lent = Vec::new();
                txn.scan_values(
                    &kv,
                    around.clone(),
                    ScanOptions::default(),
                    collect_into(&mut lent, None),
                )
                .await
                .unwrap();
                let expected: Vec<(u64, Bytes)> = mine
                    .range(around.clone())
                    .map(|(k, v)| (*k, v.clone()))
                    .collect();
                assert_eq!(lent, expected, "{ctx}: txn scan_values {around:?}");
                let interfere = rng.random_bool(0.3);
                if interfere {
                    let other = value(&mut rng);
                    kv.put_value(key, other.clone(), WriteOptions::BUFFERED)
                        .await
                        .unwrap();
                    oracle.insert(key, other);
                }
                match txn.commit(WriteOptions::BUFFERED).await {
                    Ok(_) => {
                        assert!(!interfere, "{ctx}: a conflicting transaction committed");
                        oracle = mine;
                    }
                    Err(Error::Conflict { .. }) => assert!(interfere, "{ctx}: a spurious conflict"),
                    Err(err) => panic!("{ctx}: commit failed: {err}"),
                }
            }
            89..=91 => {
                db.checkpoint().await.unwrap();
            }
            92..=94 => {
                db.compact().await.unwrap();
            }
            _ => {
                snapshots.clear();
                read_merges += db.stats().read_compactions;
                db.close().await.unwrap();
                db = open(&place).await;
                kv = db.table("kv").unwrap();
            }
        }
    }
    let everything = scan_all(kv.scan(0u64.., ScanOptions::default()).unwrap()).await;
    let expected: Vec<(u64, Bytes)> = oracle.iter().map(|(k, v)| (*k, v.clone())).collect();
    assert_eq!(everything, expected, "seed {seed}: final scan");
    assert!(
        ops < 200 || most_segments > 1,
        "seed {seed}: the run never read from segments"
    );
    read_merges += db.stats().read_compactions;
    snapshots.clear();
    db.close().await.unwrap();
    let db = open(&place).await;
    let kv = db.table("kv").unwrap();
    let everything = scan_all(kv.scan(0u64.., ScanOptions::default()).unwrap()).await;
    assert_eq!(everything, expected, "seed {seed}: final scan after reopen");
    db.close().await.unwrap();
    read_merges
}

/// Checks that merges started by reads were among the operations the seeds ran (one seed may
/// close before its reads pay for one; two or more together have not).
fn assert_reads_merged(read_merges: u64, seeds: usize) {
    assert!(
        ops() < 200 || seeds < 2 || read_merges > 0,
        "no merge paid for by reads ran in any seed"
    );
}

fn seeds() -> Vec<u64> {
    if let Ok(seed) = std::env::var("OMENDB_MODEL_SEED") {
        return vec![seed.parse().unwrap()];
    }
    let n = std::env::var("OMENDB_MODEL_SEEDS").map_or(3, |s| s.parse().unwrap());
    (0..n).collect()
}

fn ops() -> usize {
    std::env::var("OMENDB_MODEL_OPS").map_or(400, |s| s.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_operations_on_local_files_match_a_map() {
    let mut read_merges = 0;
    for seed in seeds() {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        read_merges += run(seed, ops(), Place::Files(dir)).await;
    }
    assert_reads_merged(read_merges, seeds().len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_operations_on_the_memory_store_match_a_map() {
    let mut read_merges = 0;
    for seed in seeds() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        read_merges += run(seed, ops(), Place::Memory(store)).await;
    }
    assert_reads_merged(read_merges, seeds().len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_operations_on_s3_match_a_map() {
    let moto = Arc::new(moto::Moto::start());
    // Every request goes to a local server in another process: fewer operations.
    let mut read_merges = 0;
    for seed in seeds().into_iter().take(2) {
        let bucket = moto.bucket();
        read_merges += run(seed, ops() / 2, Place::S3(Arc::clone(&moto), bucket)).await;
    }
    assert_reads_merged(read_merges, seeds().len().min(2));
}
