//! A panic between a write's WAL append and its apply (a fault no input causes, injected at the
//! `commit.after_wal` crash point) must not leave the database taking writes whose LSNs can never
//! become visible: it poisons writes, whether the write ran on the caller's task (buffered) or in
//! a task of its own (durable), and the appended record is replayed on reopen.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

use std::time::Duration;

use omendb_core::{Db, Error, KeyType, WriteOptions};

async fn a_panic_after_the_append_poisons(options: WriteOptions) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).await.unwrap();
    let t = db.create_table("kv", KeyType::U64, None).await.unwrap();
    t.put_value(1u64, "before", options).await.unwrap();

    fail::cfg("commit.after_wal", "1*panic(injected)").unwrap();
    let failed = t.put_value(2u64, "appended", options).await;
    fail::remove("commit.after_wal");
    let err = failed.unwrap_err();
    assert!(matches!(err, Error::Corrupt(_)), "{err:?}");
    assert!(err.to_string().contains("injected"), "{err}");

    // Not poisoned, this write would wait forever for the unapplied LSN before it to be visible.
    let refused = tokio::time::timeout(
        Duration::from_secs(10),
        t.put_value(3u64, "refused", options),
    )
    .await
    .expect("a write after the panic hung instead of being refused");
    assert!(matches!(refused, Err(Error::Poisoned(_))), "{refused:?}");
    assert_eq!(t.get_value(1u64).await.unwrap().unwrap(), "before");
    let _ = db.close().await;
    drop(db);

    // The record was appended before the panic: recovery replays it (it was never acknowledged,
    // so either outcome is allowed; replay is what the log holds).
    let db = Db::open(dir.path()).await.unwrap();
    let t = db.table("kv").unwrap();
    assert_eq!(t.get_value(1u64).await.unwrap().unwrap(), "before");
    assert_eq!(t.get_value(2u64).await.unwrap().unwrap(), "appended");
    assert_eq!(t.get_value(3u64).await.unwrap(), None);
    t.put_value(4u64, "after", options).await.unwrap();
    db.close().await.unwrap();
}

// One test function: fail points are global to the process, so the two cases run in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_after_the_append_poisons_buffered_and_durable_writes() {
    a_panic_after_the_append_poisons(WriteOptions::BUFFERED).await;
    a_panic_after_the_append_poisons(WriteOptions::DURABLE).await;
}
