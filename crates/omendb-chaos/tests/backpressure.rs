//! A log whose storage stops keeping up turns into backpressure, not into writers that wait
//! without end: a buffered write that waits for room in the WAL's buffer longer than the
//! stall timeout gets `Overloaded`, is not made, and leaves the database writable.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::memory::InMemory;
use omendb_chaos::store::{FaultyObjectStore, StoreFaults};
use omendb_core::{Db, Error, KeyType, WriteOptions};
use omendb_storage::backend::Op;
use omendb_wal::WalOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_finds_the_wal_buffer_full_past_the_stall_timeout_is_overloaded() {
    let faulty = Arc::new(FaultyObjectStore::new(
        Arc::new(InMemory::new()),
        StoreFaults::none(),
        11,
    ));
    let stall = Duration::from_millis(200);
    let db = Db::builder()
        .store(faulty.clone())
        .wal_in_store()
        // A buffer of two values, and a WAL wait (60 s) the stall timeout shortens.
        .wal_options(
            WalOptions::default()
                .max_buffered_bytes(1024)
                .max_buffer_wait(Duration::from_secs(60)),
        )
        .backpressure(256 << 20, 4, stall)
        .build()
        .await
        .unwrap();
    let kv = db.create_table("kv", KeyType::U64, None).await.unwrap();
    // Every upload of the log now takes up to a second: the buffer fills behind it.
    faulty.set_faults(StoreFaults {
        ops: Some(vec![Op::Put]),
        ..StoreFaults::slow(Duration::from_secs(1))
    });
    let mut acknowledged = Vec::new();
    let mut refused = None;
    for key in 0..50u64 {
        let started = Instant::now();
        match kv
            .put_value(key, vec![key as u8; 600], WriteOptions::BUFFERED)
            .await
        {
            Ok(_) => acknowledged.push(key),
            Err(Error::Overloaded(why)) => {
                assert!(why.contains("WAL's buffer"), "{why}");
                // Bounded by the stall timeout, not the WAL's own minute.
                assert!(started.elapsed() < stall * 10, "{:?}", started.elapsed());
                refused = Some(key);
                break;
            }
            Err(other) => panic!("write {key}: {other}"),
        }
    }
    let refused = refused.expect("50 writes of 600 bytes never filled a 1 KiB buffer");
    assert_eq!(db.stats().failure, None, "backpressure does not poison");
    faulty.set_faults(StoreFaults::none());
    // The refused write was not made; the database takes writes again once the slow upload
    // in flight is done (`Overloaded` is a retry error); nothing acknowledged is missing,
    // before and after a reopen.
    let started = Instant::now();
    while let Err(err) = kv
        .put_value(1_000u64, b"after".to_vec(), WriteOptions::DURABLE)
        .await
    {
        assert!(matches!(err, Error::Overloaded(_)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10), "still {err}");
    }
    assert_eq!(kv.get_value(refused).await.unwrap(), None);
    for &key in &acknowledged {
        assert_eq!(kv.get_value(key).await.unwrap().unwrap().len(), 600);
    }
    db.close().await.unwrap();
    let db = Db::builder()
        .store(faulty.clone())
        .wal_in_store()
        .build()
        .await
        .unwrap();
    let kv = db.table("kv").unwrap();
    assert_eq!(kv.get_value(refused).await.unwrap(), None);
    for &key in &acknowledged {
        assert_eq!(kv.get_value(key).await.unwrap().unwrap().len(), 600);
    }
    assert_eq!(
        kv.get_value(1_000u64).await.unwrap().as_deref(),
        Some(&b"after"[..])
    );
    db.close().await.unwrap();
}
