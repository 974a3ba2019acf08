//! One test per bug the simulation found, named for the seed that found it (`cargo xtask chaos
//! --seed S` replays the run; the runs depend on task timing, so each bug also has this
//! deterministic test of its own).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

mod support;

use std::sync::Arc;
use std::time::Duration;

use arrow_array::RecordBatch;
use arrow_array::cast::AsArray;
use arrow_array::types::UInt64Type;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use object_store::memory::InMemory;
use omendb_chaos::store::{FaultyObjectStore, StoreFaults};
use omendb_core::{Db, KeyType, ScanOptions, WriteOptions};
use omendb_storage::backend::Op;
use omendb_storage::segment::SegmentWriterOptions;
use omendb_wal::{AppendOptions, FileWal, ObjectWal, Wal, WalOptions};

fn value(key: u64, round: u64) -> Vec<u8> {
    format!("{key}.{round}").into_bytes()
}

/// Seed 0 (Memory): a segment upload whose completing request failed made the segment writer
/// call `BufWriter::abort` after shutdown, which panics inside `object_store`. The flush must
/// fail with an error, and nothing acknowledged may be lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_0_a_failed_segment_completion_is_an_error_not_a_panic() {
    let objects = Arc::new(InMemory::new());
    // Every whole-object put fails: the segment's (small segments are one put, sent when the
    // writer shuts down). The WAL is a local file, so writes still work.
    let faulty = Arc::new(FaultyObjectStore::new(
        Arc::clone(&objects),
        StoreFaults {
            error: 1.0,
            ops: Some(vec![Op::Put]),
            ..StoreFaults::none()
        },
        0,
    ));
    let dir = tempfile::tempdir().unwrap();
    let open = |store: Arc<dyn ObjectStore>| {
        let wal = FileWal::open(dir.path(), WalOptions::default()).unwrap();
        Db::builder()
            .store(store)
            .wal(Arc::new(wal))
            .memtable_bytes(1 << 20)
            .build()
    };
    faulty.disable();
    let db = open(faulty.clone()).await.unwrap();
    let kv = db.create_table("kv", KeyType::U64, None).await.unwrap();
    for key in 0..2000u64 {
        kv.put_value(key, value(key, 0), WriteOptions::BUFFERED)
            .await
            .unwrap();
    }
    kv.put_value(0u64, value(0, 1), WriteOptions::DURABLE)
        .await
        .unwrap();
    faulty.enable();
    assert!(
        db.checkpoint().await.is_err(),
        "the segment's put was refused"
    );
    assert!(faulty.injected() > 0);
    faulty.disable();
    // Closing syncs the WAL and releases it, flushed or not.
    let _ = db.close().await;
    drop(db);

    let db = open(objects).await.unwrap();
    let kv = db.table("kv").unwrap();
    let keys: Vec<u64> = (0..2000).collect();
    let values = kv.multi_get_values(&keys).await.unwrap();
    for (key, got) in keys.iter().zip(values) {
        let round = u64::from(*key == 0);
        assert_eq!(got.as_deref(), Some(&value(*key, round)[..]), "key {key}");
    }
    db.close().await.unwrap();
}

/// Seed 102 (Memory): object-WAL recovery read the last log object through a connection that
/// closed early, took the short body for a torn tail and rewrote the object without the
/// records it "lost" — acknowledged durable writes. A short body must be a failed request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_102_a_short_read_in_wal_recovery_cuts_no_record() {
    let objects = Arc::new(InMemory::new());
    let wal = ObjectWal::open(objects.clone(), "wal", WalOptions::default())
        .await
        .unwrap();
    // One group commit, so the log is one object: the last, where damage counts as a torn
    // tail.
    let mut last = 0;
    for i in 0..10u64 {
        last = wal
            .append(&i.to_le_bytes(), AppendOptions::BUFFERED)
            .await
            .unwrap();
    }
    wal.wait_durable(last).await.unwrap();
    wal.close().unwrap();
    drop(wal);

    let truncating = Arc::new(FaultyObjectStore::new(
        objects.clone(),
        StoreFaults {
            truncated_get: 1.0,
            ..StoreFaults::none()
        },
        102,
    ));
    let refused = ObjectWal::open(truncating.clone(), "wal", WalOptions::default()).await;
    assert!(refused.is_err(), "recovery must not accept a short body");
    assert!(truncating.injected() > 0);

    let wal = ObjectWal::open(objects, "wal", WalOptions::default())
        .await
        .unwrap();
    let records: Vec<_> = wal.read_from(1).try_collect().await.unwrap();
    let payloads: Vec<Vec<u8>> = records.iter().map(|r| r.payload.to_vec()).collect();
    let expected: Vec<Vec<u8>> = (0..10u64).map(|i| i.to_le_bytes().to_vec()).collect();
    assert_eq!(payloads, expected);
    wal.close().unwrap();
}

/// Seed 10 (Disk): with a zero grace period, garbage collection after a compaction deleted
/// the compacted segments while a scan of this process was still reading them ("object not
/// found"). Segments a reader holds must outlive the collection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_10_gc_keeps_the_segments_a_running_scan_reads() {
    let db = Db::builder()
        .store(Arc::new(InMemory::new()))
        .wal_in_store()
        .gc_grace(Duration::ZERO)
        .segment_options(SegmentWriterOptions {
            rows_per_page: 8,
            pages_per_row_group: 2,
            ..SegmentWriterOptions::default()
        })
        .build()
        .await
        .unwrap();
    let kv = db.create_table("kv", KeyType::U64, None).await.unwrap();
    for round in 0..3u64 {
        for key in 0..400u64 {
            kv.put_value(key, value(key, round), WriteOptions::BUFFERED)
                .await
                .unwrap();
        }
        db.checkpoint().await.unwrap();
    }
    assert!(db.stats().segments >= 3);
    let mut scan = kv
        .scan(
            0u64..,
            ScanOptions {
                batch_rows: Some(10),
                ..ScanOptions::default()
            },
        )
        .unwrap();
    let mut batches: Vec<RecordBatch> = vec![scan.next().await.unwrap().unwrap()];
    // Merges the three segments into one and collects garbage.
    db.compact().await.unwrap();
    assert_eq!(db.stats().segments, 1);
    while let Some(batch) = scan.next().await {
        batches.push(batch.expect("the scan's segments must still be there"));
    }
    let mut keys = Vec::new();
    for batch in &batches {
        let column = batch.column(0).as_primitive::<UInt64Type>();
        let values = batch.column(1).as_binary::<i32>();
        for i in 0..batch.num_rows() {
            keys.push(column.value(i));
            assert_eq!(values.value(i), &value(column.value(i), 2)[..]);
        }
    }
    assert_eq!(keys, (0..400).collect::<Vec<u64>>());
    drop(scan);
    db.close().await.unwrap();
}

/// Seed 0..1000 run (Memory), found as a hang: the last handle of a database whose WAL is in
/// the store was dropped inside a background task on a runtime worker; `ObjectWal`'s `Drop`
/// then waited for its writer thread, whose upload (here: delayed by injected latency) needed
/// the timers of the very runtime it blocked. Dropping must not wait.
#[test]
fn dropping_an_object_wal_on_a_runtime_thread_does_not_hang() {
    support::on_one_worker_within(
        Duration::from_secs(20),
        "dropping the WAL hung the runtime",
        || async {
            let slow = Arc::new(FaultyObjectStore::new(
                Arc::new(InMemory::new()),
                StoreFaults::slow(Duration::from_millis(50)),
                1,
            ));
            let wal = ObjectWal::open(slow, "wal", WalOptions::default())
                .await
                .unwrap();
            for i in 0..100u64 {
                wal.append(&i.to_le_bytes(), AppendOptions::BUFFERED)
                    .await
                    .unwrap();
            }
            // Dropped on the runtime's only worker thread.
            tokio::spawn(async move { drop(wal) }).await.unwrap();
        },
    );
}
