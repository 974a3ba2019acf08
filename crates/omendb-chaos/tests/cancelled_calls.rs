//! Calls whose caller stops waiting (a request cancelled by its client or by its timeout) over a
//! slow store. DDL, checkpoints and compactions publish a manifest version and then change the
//! in-memory version; cut off between the two, the manifest and the process's view disagreed
//! (a table created in the manifest but unknown to the process, and the next publish fenced by
//! the writer's own version). They run to their end in a task of their own.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::ObjectStore;
use object_store::memory::InMemory;
use omendb_chaos::store::{FaultyObjectStore, StoreFaults};
use omendb_core::{Db, KeyType, WriteOptions};
use omendb_storage::backend::Op;
use omendb_wal::{FileWal, WalOptions};

/// Waits (up to ten seconds) for `check` to hold.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An in-memory store behind a fault injector (no faults yet) seeded with `seed`.
fn faulty_memory(seed: u64) -> (Arc<InMemory>, Arc<FaultyObjectStore<InMemory>>) {
    let objects = Arc::new(InMemory::new());
    let faulty = Arc::new(FaultyObjectStore::new(
        Arc::clone(&objects),
        StoreFaults::none(),
        seed,
    ));
    (objects, faulty)
}

/// Opens the database whose segments and manifest are in `store` and whose WAL is in `dir`.
async fn open_on(dir: &std::path::Path, store: Arc<dyn ObjectStore>) -> omendb_core::Result<Db> {
    let wal = FileWal::open(dir, WalOptions::default()).unwrap();
    Db::builder().store(store).wal(Arc::new(wal)).build().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_and_checkpoints_whose_callers_stop_waiting_run_to_their_end() {
    let (_, faulty) = faulty_memory(7);
    let dir = tempfile::tempdir().unwrap();
    let open = |store: Arc<dyn ObjectStore>| open_on(dir.path(), store);
    let db = open(faulty.clone()).await.unwrap();
    // Every put and listing (a manifest publish is both) waits up to 400 ms before it is sent:
    // a caller that gives up after a millisecond stops waiting in the middle of a publish.
    faulty.set_faults(StoreFaults {
        latency: 1.0,
        max_latency: Duration::from_millis(400),
        ops: Some(vec![Op::Put, Op::List]),
        ..StoreFaults::none()
    });
    let cut = Duration::from_millis(1);

    let _ = tokio::time::timeout(cut, db.create_table("kv", KeyType::U64, None)).await;
    eventually("the table is created", || db.table("kv").is_ok()).await;
    let kv = db.table("kv").unwrap();
    kv.put_value(1u64, "one", WriteOptions::DURABLE)
        .await
        .unwrap();
    let _ = tokio::time::timeout(cut, db.checkpoint()).await;
    eventually("the checkpoint flushes", || db.stats().segments == 1).await;
    // The next publishes are this writer's own, not fenced.
    kv.put_value(2u64, "two", WriteOptions::DURABLE)
        .await
        .unwrap();
    db.checkpoint().await.unwrap();
    db.create_table("gone", KeyType::U64, None).await.unwrap();
    let _ = tokio::time::timeout(cut, db.drop_table("gone")).await;
    eventually("the table is dropped", || db.table("gone").is_err()).await;
    assert_eq!(db.stats().failure, None);
    db.create_table("after", KeyType::U64, None).await.unwrap();
    faulty.set_faults(StoreFaults::none());
    db.close().await.unwrap();
    drop((kv, db));

    let db = open(faulty).await.unwrap();
    assert_eq!(db.list_tables(), ["after", "kv"]);
    let kv = db.table("kv").unwrap();
    assert_eq!(kv.get_value(1u64).await.unwrap().unwrap(), "one");
    assert_eq!(kv.get_value(2u64).await.unwrap().unwrap(), "two");
    db.close().await.unwrap();
}

/// `close` waits for a checkpoint running in a task of its own (its caller gave up): nothing is
/// published and no WAL segment deleted after `close` returns, and a second, concurrent `close`
/// returns only once the first is done. Before, `close` returned while the flush step went on
/// to publish and truncate the WAL of a closed database (whose directory lock was released),
/// and a second `close` returned `Ok` at once, before the WAL was even synced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_waits_for_work_running_in_its_own_task() {
    let (objects, faulty) = faulty_memory(11);
    let dir = tempfile::tempdir().unwrap();
    let open = |store: Arc<dyn ObjectStore>| open_on(dir.path(), store);
    let db = open(faulty.clone()).await.unwrap();
    let kv = db.create_table("kv", KeyType::U64, None).await.unwrap();
    for key in 0..100u64 {
        kv.put_value(key, "v", WriteOptions::DURABLE).await.unwrap();
    }
    // Every put waits 300 ms before it is sent: the checkpoint's segment upload and manifest
    // publish take more than half a second.
    faulty.set_faults(StoreFaults::slow(Duration::from_millis(300)));
    let _ = tokio::time::timeout(Duration::from_millis(1), db.checkpoint()).await;
    tokio::time::sleep(Duration::from_millis(20)).await;

    let listing = |objects: &InMemory| {
        let objects = objects.list(None);
        async move {
            let mut names: Vec<String> = futures::TryStreamExt::try_collect::<Vec<_>>(objects)
                .await
                .unwrap()
                .into_iter()
                .map(|meta| meta.location.to_string())
                .collect();
            names.sort();
            names
        }
    };
    let wal_files = || {
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        names
    };
    let (first, (second, reopened)) = tokio::join!(db.close(), async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let second = db.close().await;
        // Done only once the first close is: the WAL's directory lock is free.
        (
            second,
            FileWal::open(dir.path(), WalOptions::default()).map(drop),
        )
    });
    first.unwrap();
    second.unwrap();
    reopened.expect("the second close returned before the WAL was closed");
    let (published, wal) = (listing(&objects).await, wal_files());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        listing(&objects).await,
        published,
        "published after close returned"
    );
    assert_eq!(wal_files(), wal, "the WAL changed after close returned");
    drop((kv, db));

    faulty.set_faults(StoreFaults::none());
    let db = open(faulty).await.unwrap();
    let kv = db.table("kv").unwrap();
    for key in 0..100u64 {
        assert_eq!(kv.get_value(key).await.unwrap().unwrap(), "v", "{key}");
    }
    db.close().await.unwrap();
}
