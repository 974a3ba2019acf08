//! Background chores (compaction, garbage collection, WAL truncation) change no data, so their
//! failures are reported in `stats().background_error` (which a server's readiness reads) and
//! retried. A report stays only while the chore keeps failing: one passing store error kept
//! the only replica not ready until it was restarted.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

use std::sync::Arc;
use std::time::{Duration, Instant};

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
