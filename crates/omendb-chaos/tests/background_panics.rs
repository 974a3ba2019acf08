//! A panic in the engine's background work (a bug no input causes, injected at a crash point)
//! must not leave the database quietly without it: a panicking flush task refuses writes from
//! then on, with its message, instead of leaving writers to wait for flushes that never come,
//! and a panicking compaction is reported like a failed one while writes go on.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

use std::time::{Duration, Instant};

use omendb_core::{Db, Error, KeyType, WriteOptions};

async fn a_flush_task_that_panics_poisons_writes() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::builder()
        .path(dir.path())
        .memtable_bytes(64 << 10)
        .build()
        .await
        .unwrap();
    let t = db.create_table("kv", KeyType::U64, None).await.unwrap();
    fail::cfg("flush.before_segment", "1*panic(injected flush)").unwrap();
    let started = Instant::now();
    let mut key = 0u64;
    let err = loop {
        match t
            .put_value(key, vec![7u8; 1024], WriteOptions::BUFFERED)
            .await
        {
            Ok(_) => key += 1,
            Err(err) => break err,
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "writes went on: {:?}",
            db.stats()
        );
    };
    fail::remove("flush.before_segment");
    assert!(matches!(err, Error::Poisoned(_)), "{err:?}");
    let failure = db.stats().failure.unwrap();
    assert!(failure.contains("injected flush"), "{failure}");
    // Reads go on; everything acknowledged is there after a reopen.
    assert_eq!(t.get_value(0u64).await.unwrap().unwrap().len(), 1024);
    let _ = db.close().await;
    drop(db);
    let db = Db::open(dir.path()).await.unwrap();
    let t = db.table("kv").unwrap();
    for k in 0..key {
        assert_eq!(
            t.get_value(k).await.unwrap().unwrap().len(),
            1024,
            "key {k}"
        );
    }
    db.close().await.unwrap();
}

async fn a_compaction_that_panics_is_reported_and_writes_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::builder()
        .path(dir.path())
        .memtable_bytes(1 << 30)
        .compaction_trigger(2)
        .build()
        .await
        .unwrap();
    let t = db.create_table("kv", KeyType::U64, None).await.unwrap();
    fail::cfg("compaction.before_manifest", "1*panic(injected merge)").unwrap();
    for round in 0..2u64 {
        for key in 0..100u64 {
            t.put_value(key, round.to_le_bytes().to_vec(), WriteOptions::BUFFERED)
                .await
                .unwrap();
        }
        db.checkpoint().await.unwrap();
    }
    let started = Instant::now();
    let error = loop {
        if let Some(error) = db.stats().background_error {
            break error;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{:?}",
            db.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    fail::remove("compaction.before_manifest");
    assert!(error.contains("injected merge"), "{error}");
    assert_eq!(db.stats().failure, None);
    t.put_value(1u64, b"after".to_vec(), WriteOptions::DURABLE)
        .await
        .unwrap();
    // The merge is tried again at the next compaction, and succeeds.
    db.compact().await.unwrap();
    assert_eq!(db.stats().background_error, None);
    for key in 0..100u64 {
        let expected = if key == 1 {
            b"after".to_vec()
        } else {
            1u64.to_le_bytes().to_vec()
        };
        assert_eq!(
            t.get_value(key).await.unwrap().unwrap(),
            expected,
            "key {key}"
        );
    }
    db.close().await.unwrap();
}

// One test function: fail points are global to the process, so the cases run in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_work_that_panics_is_not_lost_silently() {
    a_flush_task_that_panics_poisons_writes().await;
    a_compaction_that_panics_is_reported_and_writes_go_on().await;
}
