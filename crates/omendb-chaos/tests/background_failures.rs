//! Background chores (compaction, garbage collection, WAL truncation) change no data, so their
//! failures are reported in `stats().background_error` (which a server's readiness reads) and
//! retried. A report stays only while the chore keeps failing: one passing store error kept
//! the only replica not ready until it was restarted.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::ObjectStoreExt;
use object_store::memory::InMemory;
use omendb_chaos::store::{FaultyObjectStore, StoreFaults};
use omendb_core::{Db, KeyType, WriteOptions};
use omendb_storage::backend::Op;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_collection_failure_is_reported_until_a_collection_succeeds() {
    let faulty = Arc::new(FaultyObjectStore::new(
        Arc::new(InMemory::new()),
        StoreFaults::none(),
        3,
    ));
    let db = Db::builder()
        .store(faulty.clone())
        .wal_in_store()
        .gc_grace(Duration::ZERO)
        .compaction_trigger(2)
        .memtable_bytes(1 << 30)
        .build()
        .await
        .unwrap();
    let kv = db.create_table("kv", KeyType::U64, None).await.unwrap();
    // Only deletes fail, transiently (a definite `PermissionDenied` is fatal and poisons
    // writes by design), and only garbage collection and the WAL's truncation delete objects.
    faulty.set_faults(StoreFaults {
        throttle: 1.0,
        ops: Some(vec![Op::Delete]),
        ..StoreFaults::none()
    });
    for round in 0..2u64 {
        for key in 0..100u64 {
            kv.put_value(key, round.to_le_bytes().to_vec(), WriteOptions::DURABLE)
                .await
                .unwrap();
        }
        db.checkpoint().await.unwrap();
    }
    // The first checkpoint's background work collects garbage (none was collected since open),
    // and fails.
    let started = Instant::now();
    let error = loop {
        let stats = db.stats();
        if let Some(error) = &stats.background_error
            && error.contains("garbage collection: ")
        {
            break error.clone();
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{stats:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(error.contains("injected"), "{error}");
    let stats = db.stats();
    assert_eq!(stats.failure, None, "writes are not refused: {stats:?}");
    kv.put_value(1u64, "after", WriteOptions::DURABLE)
        .await
        .unwrap();

    // The store recovers: the next collection and truncation succeed, and the report is gone.
    faulty.disable();
    db.checkpoint().await.unwrap();
    db.compact().await.unwrap();
    let stats = db.stats();
    assert_eq!(stats.background_error, None, "{stats:?}");
    assert_eq!(kv.get_value(1u64).await.unwrap().unwrap(), "after");
    db.close().await.unwrap();
}

/// A merge that fails (here at every try: the store refuses the uploads) does not stop garbage
/// collection: `compact_due` and `Db::compact` returned before collecting, so one window that
/// could not be merged kept every table's garbage for good (found by a helper agent's review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_collected_when_a_merge_fails() {
    let objects = Arc::new(InMemory::new());
    let faulty = Arc::new(FaultyObjectStore::new(
        Arc::clone(&objects),
        StoreFaults::none(),
        5,
    ));
    let db = Db::builder()
        .store(faulty.clone())
        .wal_in_store()
        .gc_grace(Duration::ZERO)
        .compaction_trigger(64)
        .memtable_bytes(1 << 30)
        .build()
        .await
        .unwrap();
    let kv = db.create_table("kv", KeyType::U64, None).await.unwrap();
    for round in 0..2u64 {
        for key in 0..100u64 {
            kv.put_value(key, round.to_le_bytes().to_vec(), WriteOptions::DURABLE)
                .await
                .unwrap();
        }
        db.checkpoint().await.unwrap();
    }
    // An object no manifest references (what a crashed flush or merge leaves).
    let junk = object_store::path::Path::from("db/segments/1/junk.parquet");
    objects
        .put(&junk, object_store::PutPayload::from_static(b"junk"))
        .await
        .unwrap();
    // Every upload fails (transiently, so nothing is poisoned); deletes and listings work.
    faulty.set_faults(StoreFaults {
        throttle: 1.0,
        ops: Some(vec![Op::Put, Op::PutMultipart, Op::PutPart, Op::Complete]),
        ..StoreFaults::none()
    });
    let failed = db.compact().await;
    assert!(failed.is_err(), "the merge cannot upload its output");
    assert!(
        objects.head(&junk).await.is_err(),
        "garbage collection ran after the failed merge"
    );
    faulty.set_faults(StoreFaults::none());
    db.compact().await.unwrap();
    for key in 0..100u64 {
        assert_eq!(
            kv.get_value(key).await.unwrap().unwrap(),
            1u64.to_le_bytes().to_vec()
        );
    }
    db.close().await.unwrap();
}
