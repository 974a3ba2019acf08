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
    fail::cfg("compaction.before_manifest", "1*panic(injected merge)").unwrap();
    // Two runs with a trigger of two: the background merges them after the second flush.
    let (db, t) = two_runs(dir.path(), 2).await;
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
    nothing_is_published_after_a_failure().await;
    a_compaction_that_panics_after_its_publish_poisons_writes().await;
}

/// A database in `dir` whose table "kv" holds two flushed runs of keys 0..100 (the second's
/// values are `1u64`), and merges in the background once `compaction_trigger` runs overlap
/// (64: only when asked).
async fn two_runs(dir: &std::path::Path, compaction_trigger: usize) -> (Db, omendb_core::Table) {
    let db = Db::builder()
        .path(dir)
        .memtable_bytes(1 << 30)
        .compaction_trigger(compaction_trigger)
        .build()
        .await
        .unwrap();
    let t = db.create_table("kv", KeyType::U64, None).await.unwrap();
    for round in 0..2u64 {
        for key in 0..100u64 {
            t.put_value(key, round.to_le_bytes().to_vec(), WriteOptions::BUFFERED)
                .await
                .unwrap();
        }
        db.checkpoint().await.unwrap();
    }
    (db, t)
}

/// Whether every key of [`two_runs`]' table reads the second run's value.
async fn holds_the_second_run(t: &omendb_core::Table) {
    for key in 0..100u64 {
        assert_eq!(
            t.get_value(key).await.unwrap().unwrap(),
            1u64.to_le_bytes().to_vec(),
            "key {key}"
        );
    }
}

/// The newest manifest version in `dir`.
fn newest_manifest(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir.join("data/db/manifest"))
        .unwrap()
        .filter_map(|entry| {
            let name = entry.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".json")?.parse().ok()
        })
        .max()
        .unwrap()
}

/// A merge that reaches its publish after a failure poisoned the database publishes nothing:
/// the manifest may hold a publish of unknown outcome this process's view does not, which a
/// later publish would settle and then overwrite with the old view (found by a helper agent's
/// review: a DDL its caller was told had failed came back, or the reverse).
async fn nothing_is_published_after_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let (db, t) = two_runs(dir.path(), 64).await;
    let before = newest_manifest(dir.path());
    let (held, holding) = std::sync::mpsc::channel();
    fail::cfg_callback("compaction.before_manifest", move || {
        let _ = held.send(());
        std::thread::sleep(Duration::from_millis(300));
    })
    .unwrap();
    let compacting = tokio::spawn({
        let db = db.clone();
        async move { db.compact().await }
    });
    tokio::task::spawn_blocking(move || holding.recv_timeout(Duration::from_secs(30)))
        .await
        .unwrap()
        .expect("the merge reached its publish");
    // While the merge waits at its publish, a write fails in a way that poisons writes.
    fail::cfg("commit.after_wal", "1*panic(injected apply)").unwrap();
    let failed = t.put_value(1_000u64, "x", WriteOptions::BUFFERED).await;
    fail::remove("commit.after_wal");
    assert!(matches!(failed, Err(Error::Corrupt(_))), "{failed:?}");
    let compacted = compacting.await.unwrap();
    fail::remove("compaction.before_manifest");
    assert!(
        matches!(compacted, Err(Error::Poisoned(_))),
        "{compacted:?}"
    );
    assert_eq!(newest_manifest(dir.path()), before);
    assert_eq!(db.stats().compactions, 0);
    let _ = db.close().await;
    drop(db);
    let db = Db::open(dir.path()).await.unwrap();
    let t = db.table("kv").unwrap();
    holds_the_second_run(&t).await;
    db.close().await.unwrap();
}

/// A compaction that panics after publishing its segments, before this process reads them,
/// leaves the manifest and the process's view apart: writes are refused until reopen, which
/// reads the manifest (found by a review: the panic was reported like a failed merge, and every
/// later merge of the window failed).
async fn a_compaction_that_panics_after_its_publish_poisons_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (db, t) = two_runs(dir.path(), 64).await;
    fail::cfg(
        "compaction.after_manifest",
        "1*panic(injected after publish)",
    )
    .unwrap();
    let compacted = db.compact().await;
    fail::remove("compaction.after_manifest");
    assert!(compacted.is_err(), "{compacted:?}");
    let failure = db.stats().failure.expect("writes are refused");
    assert!(failure.contains("between publishing"), "{failure}");
    let refused = t.put_value(1u64, "x", WriteOptions::BUFFERED).await;
    assert!(matches!(refused, Err(Error::Poisoned(_))), "{refused:?}");
    assert_eq!(
        t.get_value(5u64).await.unwrap().unwrap(),
        1u64.to_le_bytes().to_vec()
    );
    let _ = db.close().await;
    drop(db);
    let db = Db::open(dir.path()).await.unwrap();
    assert_eq!(db.stats().segments, 1, "the merge's output, as published");
    let t = db.table("kv").unwrap();
    holds_the_second_run(&t).await;
    db.compact().await.unwrap();
    db.close().await.unwrap();
}
