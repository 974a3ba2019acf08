//! Faults at the WAL seam: a failed append poisons writes while reads go on, until reopen; a
//! flush that cannot make progress turns into `Overloaded` for writers instead of unbounded
//! memory. The WAL here is the real `FileWal` behind a wrapper that fails or stalls on command
//! (the `Wal` trait is the seam the engine composes; `omendb-chaos` builds the general tools).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use object_store::memory::InMemory;
use omendb_core::{Db, Error, ErrorKind, KeyType, WriteOptions};
use omendb_wal::{
    AppendOptions, FileWal, Lsn, Record, RecoveryMode, RecoveryReport, Wal, WalOptions, WalStats,
};

/// A `FileWal` whose appends fail, or whose durability waits stall, while a switch is on.
#[derive(Debug)]
struct SwitchedWal {
    inner: FileWal,
    fail_appends: AtomicBool,
    stall_durability: AtomicBool,
    fail_truncations: AtomicBool,
    /// The LSN of the last truncation that was passed on to the log.
    truncated_before: AtomicU64,
    /// Milliseconds an async append waits before it reaches the log (and gets its LSN).
    delay_appends_ms: AtomicU64,
    /// Milliseconds an async append waits after the log answered (its LSN durable).
    delay_answers_ms: AtomicU64,
    /// The last LSN the log can make durable, as if it failed past it (`u64::MAX`: no cap).
    durable_cap: AtomicU64,
    /// A record reads leave out, as a store listing that missed an object would (0: none).
    unread: AtomicU64,
    /// Truncates the log before this LSN once the next read has its first record, as a flush
    /// racing the read would (0: none).
    truncate_mid_read: AtomicU64,
}

impl SwitchedWal {
    fn open(dir: &std::path::Path) -> Arc<Self> {
        Self::open_with(dir, WalOptions::default())
    }

    fn open_with(dir: &std::path::Path, options: WalOptions) -> Arc<Self> {
        Arc::new(Self {
            inner: FileWal::open(dir, options).unwrap(),
            fail_appends: AtomicBool::new(false),
            stall_durability: AtomicBool::new(false),
            fail_truncations: AtomicBool::new(false),
            truncated_before: AtomicU64::new(0),
            delay_appends_ms: AtomicU64::new(0),
            delay_answers_ms: AtomicU64::new(0),
            durable_cap: AtomicU64::new(u64::MAX),
            unread: AtomicU64::new(0),
            truncate_mid_read: AtomicU64::new(0),
        })
    }

    fn injected() -> omendb_wal::Error {
        omendb_wal::Error::Io {
            op: "write",
            path: "injected".into(),
            source: std::io::Error::other("injected write failure"),
        }
    }
}

impl Wal for SwitchedWal {
    fn append<'a>(
        &'a self,
        payload: &'a [u8],
        options: AppendOptions,
    ) -> BoxFuture<'a, omendb_wal::Result<Lsn>> {
        if self.fail_appends.load(Ordering::SeqCst) {
            return Box::pin(async { Err(Self::injected()) });
        }
        let delay = Duration::from_millis(self.delay_appends_ms.load(Ordering::SeqCst));
        let answer = Duration::from_millis(self.delay_answers_ms.load(Ordering::SeqCst));
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            let appended = Wal::append(&self.inner, payload, options).await;
            tokio::time::sleep(answer).await;
            appended
        })
    }

    fn append_blocking(&self, payload: &[u8], options: AppendOptions) -> omendb_wal::Result<Lsn> {
        if self.fail_appends.load(Ordering::SeqCst) {
            return Err(Self::injected());
        }
        self.inner.append(payload, options)
    }

    fn append_buffered_now(&self, payload: &[u8]) -> Option<omendb_wal::Result<Lsn>> {
        if self.fail_appends.load(Ordering::SeqCst) {
            return Some(Err(Self::injected()));
        }
        Wal::append_buffered_now(&self.inner, payload)
    }

    fn wait_durable(&self, lsn: Lsn) -> BoxFuture<'_, omendb_wal::Result<()>> {
        Box::pin(async move {
            while self.stall_durability.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if lsn > self.durable_cap.load(Ordering::SeqCst) {
                return Err(Self::injected());
            }
            Wal::wait_durable(&self.inner, lsn).await
        })
    }

    fn wait_durable_blocking(&self, lsn: Lsn) -> omendb_wal::Result<()> {
        self.inner.wait_durable(lsn)
    }

    fn read_from(&self, from: Lsn) -> BoxStream<'_, omendb_wal::Result<Record>> {
        let unread = self.unread.load(Ordering::SeqCst);
        let mut truncate = self.truncate_mid_read.swap(0, Ordering::SeqCst);
        Wal::read_from(&self.inner, from)
            .filter(move |r| std::future::ready(r.as_ref().map_or(true, |r| r.lsn != unread)))
            .then(move |r| {
                let before = std::mem::take(&mut truncate);
                async move {
                    if before > 0 {
                        Wal::truncate_before(&self.inner, before).await.unwrap();
                    }
                    r
                }
            })
            .boxed()
    }

    fn truncate_before(&self, lsn: Lsn) -> BoxFuture<'_, omendb_wal::Result<()>> {
        if self.fail_truncations.load(Ordering::SeqCst) {
            return Box::pin(async {
                Err(omendb_wal::Error::Io {
                    op: "delete",
                    path: "injected".into(),
                    source: std::io::Error::other("injected delete failure"),
                })
            });
        }
        self.truncated_before.store(lsn, Ordering::SeqCst);
        Wal::truncate_before(&self.inner, lsn)
    }

    fn last_durable_lsn(&self) -> Option<Lsn> {
        let cap = self.durable_cap.load(Ordering::SeqCst);
        self.inner.last_durable_lsn().map(|lsn| lsn.min(cap))
    }

    fn last_lsn(&self) -> Option<Lsn> {
        self.inner.last_lsn()
    }

    fn recovery_report(&self) -> &RecoveryReport {
        self.inner.recovery_report()
    }

    fn stats(&self) -> WalStats {
        self.inner.stats()
    }

    fn close(&self) -> omendb_wal::Result<()> {
        self.inner.close()
    }
}

/// A log of 8 KiB segments and records up to 1 KiB: a few hundred writes span many segments.
fn small_segments() -> WalOptions {
    WalOptions::default()
        .segment_bytes(8 << 10)
        .max_record_bytes(1 << 10)
}

/// A database in `dir` over a [`SwitchedWal`], with a key-value table `kv`.
async fn open_switched(dir: &std::path::Path) -> (Arc<SwitchedWal>, Db, omendb_core::Table) {
    let wal = SwitchedWal::open(&dir.join("wal"));
    let db = Db::builder()
        .path(dir)
        .wal(wal.clone())
        .build()
        .await
        .unwrap();
    let t = db.create_table("kv", KeyType::U64, None).await.unwrap();
    (wal, db, t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_append_poisons_writes_while_reads_go_on_until_reopen() {
    a_failed_append_poisons(WriteOptions::DURABLE).await;
}

/// A buffered write appends on the caller's task (`Wal::append_buffered_now`), not in a task of
/// its own: its failure poisons the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_buffered_append_poisons_writes_while_reads_go_on_until_reopen() {
    a_failed_append_poisons(WriteOptions::BUFFERED).await;
}

async fn a_failed_append_poisons(failing: WriteOptions) {
    let dir = tempfile::tempdir().unwrap();
    let (wal, db, t) = open_switched(dir.path()).await;
    t.put_value(1u64, "kept", WriteOptions::DURABLE)
        .await
        .unwrap();

    wal.fail_appends.store(true, Ordering::SeqCst);
    let failed = t.put_value(2u64, "lost", failing).await;
    assert!(failed.is_err());
    wal.fail_appends.store(false, Ordering::SeqCst);
    // Even with the WAL healthy again, the database refuses writes until it is reopened.
    let refused = t.put_value(3u64, "refused", WriteOptions::DURABLE).await;
    assert!(matches!(refused, Err(Error::Poisoned(_))), "{refused:?}");
    assert_eq!(refused.unwrap_err().kind(), ErrorKind::Fatal);
    assert!(db.stats().failure.is_some());
    assert!(matches!(db.checkpoint().await, Err(Error::Poisoned(_))));
    assert!(matches!(
        db.create_table("other", KeyType::U64, None).await,
        Err(Error::Poisoned(_))
    ));
    // Reads go on over what was applied.
    assert_eq!(t.get_value(1u64).await.unwrap().unwrap(), "kept");
    assert_eq!(t.get_value(2u64).await.unwrap(), None);
    let _ = db.close().await;
    drop(db);

    let db = Db::open(dir.path()).await.unwrap();
    let t = db.table("kv").unwrap();
    assert_eq!(t.get_value(1u64).await.unwrap().unwrap(), "kept");
    assert_eq!(t.get_value(2u64).await.unwrap(), None);
    assert_eq!(t.get_value(3u64).await.unwrap(), None);
    t.put_value(4u64, "after", WriteOptions::DURABLE)
        .await
        .unwrap();
    db.close().await.unwrap();
}

/// Truncating the WAL after a published flush is cleanup: when it fails, the flush still
/// succeeds, writes go on (the database is not poisoned), the failure is reported in
/// `background_error` until a truncation succeeds, and the next flush's truncation covers the
/// records the failed one left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_wal_truncation_after_a_flush_is_reported_and_poisons_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, db, t) = open_switched(dir.path()).await;
    let first = t
        .put_value(1u64, "flushed", WriteOptions::DURABLE)
        .await
        .unwrap();

    wal.fail_truncations.store(true, Ordering::SeqCst);
    db.checkpoint().await.unwrap();
    let stats = db.stats();
    assert_eq!(stats.failure, None);
    assert!(
        stats.background_error.as_deref().is_some_and(
            |e| e.starts_with("WAL truncation: ") && e.contains("injected delete failure")
        ),
        "{stats:?}"
    );
    assert_eq!(stats.segments, 1, "{stats:?}");
    assert!(wal.truncated_before.load(Ordering::SeqCst) <= first);
    let second = t
        .put_value(2u64, "after", WriteOptions::DURABLE)
        .await
        .unwrap();

    wal.fail_truncations.store(false, Ordering::SeqCst);
    db.checkpoint().await.unwrap();
    assert_eq!(wal.truncated_before.load(Ordering::SeqCst), second + 1);
    // The truncation has succeeded since: the error is over (it kept a server not ready until
    // restart while it stayed).
    let stats = db.stats();
    assert_eq!(stats.background_error, None, "{stats:?}");
    db.close().await.unwrap();
    drop(db);

    let db = Db::open(dir.path()).await.unwrap();
    let t = db.table("kv").unwrap();
    assert_eq!(t.get_value(1u64).await.unwrap().unwrap(), "flushed");
    assert_eq!(t.get_value(2u64).await.unwrap().unwrap(), "after");
    db.close().await.unwrap();
}

/// The newest manifest deleted by hand after the WAL was truncated to its flushed LSN: the
/// older manifest's flushed LSN is below where the WAL now starts, and the writes in between
/// are in neither. The open is refused (`Corrupt`) instead of replaying with the gap; with
/// `SkipCorrupt` the operator accepts the loss and it opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wal_that_starts_after_the_flushed_lsn_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let small = small_segments();
    let open = |options: WalOptions| {
        Db::builder()
            .path(dir.path())
            .wal_options(options)
            .limits(512, 1 << 10)
            .build()
    };
    let db = open(small.clone()).await.unwrap();
    let t = db.create_table("kv", KeyType::U64, None).await.unwrap();
    for round in 0..2u64 {
        for key in round * 1000..round * 1000 + 300 {
            t.put_value(key, vec![1u8; 64], WriteOptions::BUFFERED)
                .await
                .unwrap();
        }
        db.checkpoint().await.unwrap();
    }
    db.close().await.unwrap();
    drop(db);
    let wal_dir = dir.path().join("wal");
    let first_segment = std::fs::read_dir(&wal_dir)
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().into_string().ok())
        .filter_map(|name| name.strip_suffix(".wal")?.parse::<u64>().ok())
        .min()
        .unwrap();
    assert!(
        first_segment > 300,
        "the first round's segments were truncated"
    );
    let manifests = dir.path().join("data/db/manifest");
    let newest = std::fs::read_dir(&manifests)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    std::fs::remove_file(newest).unwrap();

    let refused = open(small.clone()).await;
    match refused {
        Err(err @ Error::Corrupt(_)) => {
            assert!(err.to_string().contains("the WAL starts at LSN"), "{err}");
        }
        other => panic!("opened over a gap: {:?}", other.map(|_| ())),
    }
    let db = open(small.recovery_mode(omendb_wal::RecoveryMode::SkipCorrupt))
        .await
        .unwrap();
    let t = db.table("kv").unwrap();
    assert!(
        t.get_value(0u64).await.unwrap().is_some(),
        "the first round"
    );
    assert!(t.get_value(1299u64).await.unwrap().is_some(), "in the WAL");
    db.close().await.unwrap();
}

/// [`open_switched`] with a 4 KiB memtable and backpressure at two frozen memtables or 64 KiB,
/// writers waiting up to `stall`.
async fn open_backpressured(
    dir: &std::path::Path,
    stall: Duration,
) -> (Arc<SwitchedWal>, Db, omendb_core::Table) {
    let wal = SwitchedWal::open(&dir.join("wal"));
    let db = Db::builder()
        .path(dir)
        .wal(wal.clone())
        .memtable_bytes(4 * 1024)
        .backpressure(64 * 1024, 2, stall)
        .build()
        .await
        .unwrap();
    let t = db.create_table("kv", KeyType::U64, None).await.unwrap();
    (wal, db, t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_get_overloaded_when_flushes_cannot_keep_up_and_recover_after() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, db, t) = open_backpressured(dir.path(), Duration::from_millis(200)).await;
    // A flush waits for the WAL to be durable up to its cut: stall that, and frozen memtables
    // pile up until writers are refused.
    wal.stall_durability.store(true, Ordering::SeqCst);
    let mut overloaded = None;
    for key in 0..10_000u64 {
        match t
            .put_value(key, vec![7u8; 64], WriteOptions::BUFFERED)
            .await
        {
            Ok(_) => {}
            Err(err) => {
                overloaded = Some((key, err));
                break;
            }
        }
    }
    let (refused_at, err) = overloaded.expect("writers were never refused");
    assert!(matches!(err, Error::Overloaded(_)), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::Retry);
    assert!(db.stats().memtables <= 2 + 1 + 1, "{:?}", db.stats());
    // The refused write changed nothing; earlier ones are readable.
    assert_eq!(t.get_value(refused_at).await.unwrap(), None);
    assert_eq!(t.get_value(0u64).await.unwrap().unwrap().len(), 64);

    wal.stall_durability.store(false, Ordering::SeqCst);
    t.put_value(refused_at, vec![8u8; 64], WriteOptions::DURABLE)
        .await
        .unwrap();
    db.checkpoint().await.unwrap();
    assert!(db.stats().flushes > 0);
    assert_eq!(db.stats().failure, None);
    db.close().await.unwrap();
}

/// A writer held by backpressure when the database closes gets `Closed` at once, not
/// `Overloaded` ("retry") at the end of its stall timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_held_by_backpressure_gets_closed_when_the_database_closes() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, db, t) = open_backpressured(dir.path(), Duration::from_secs(30)).await;
    wal.stall_durability.store(true, Ordering::SeqCst);
    // Writes until one is held (flushes cannot finish while durability stalls).
    let mut key = 0u64;
    let held = loop {
        let table = t.clone();
        let mut write = Box::pin(async move {
            table
                .put_value(key, vec![7u8; 64], WriteOptions::BUFFERED)
                .await
        });
        match tokio::time::timeout(Duration::from_millis(200), &mut write).await {
            Ok(done) => {
                done.unwrap();
                key += 1;
                assert!(key < 100_000, "no write was ever held");
            }
            Err(_) => break tokio::spawn(write),
        }
    };
    let closing = tokio::spawn({
        let db = db.clone();
        async move { db.close().await }
    });
    let refused = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("the held writer waited out its stall timeout")
        .unwrap();
    assert!(matches!(refused, Err(Error::Closed)), "{refused:?}");
    // The close itself waits for the stalled flush step.
    wal.stall_durability.store(false, Ordering::SeqCst);
    closing.await.unwrap().unwrap();
}

/// A `build` whose future is dropped after its first poll: the local WAL is already open and the
/// manifest is being read from an S3 endpoint where nothing listens, so the build is pending.
/// Once the future is gone nothing of the open may still run: the WAL's directory is unlocked
/// (a second open succeeds at once) and no file appears in it afterwards. Before the WAL was
/// opened in place, the open ran on a detached blocking thread that went on after the drop.
async fn dropping_a_pending_build_leaves_nothing_running() {
    let dir = tempfile::tempdir().unwrap();
    let options = omendb_core::BackendOptions {
        options: [
            ("endpoint", "http://127.0.0.1:9"),
            ("allow_http", "true"),
            ("region", "us-east-1"),
            ("access_key_id", "test"),
            ("secret_access_key", "test"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
        ..omendb_core::BackendOptions::default()
    };
    let build = Db::builder()
        .url("s3://bucket/db")
        .backend_options(options)
        .path(dir.path())
        .build();
    let mut build = Box::pin(build);
    let first = futures::poll!(build.as_mut());
    assert!(
        first.is_pending(),
        "the build finished against a dead endpoint"
    );
    drop(build);
    let wal = dir.path().join("wal");
    let listing = || {
        let mut names: Vec<_> = std::fs::read_dir(&wal)
            .map(|entries| entries.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        names.sort();
        names
    };
    let before = listing();
    assert!(
        !before.is_empty(),
        "the WAL was not opened before the manifest"
    );
    FileWal::open(&wal, WalOptions::default())
        .expect("the WAL is still locked after the build was dropped")
        .close()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        listing(),
        before,
        "files appeared after the build was dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_build_leaves_nothing_running_on_a_multi_thread_runtime() {
    dropping_a_pending_build_leaves_nothing_running().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_dropped_build_leaves_nothing_running_on_a_current_thread_runtime() {
    dropping_a_pending_build_leaves_nothing_running().await;
}

/// A database in an object store opened by a new writer while the previous one still runs (a
/// process presumed dead, with its last upload in flight): the previous writer cannot add a write
/// after the open, so what the new writer read at open is the whole history before its own
/// writes, and a later open reads the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_previous_writer_adds_nothing_after_the_next_open() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let open = || Db::builder().store(Arc::clone(&store)).build();
    let old = open().await.unwrap();
    let old_kv = old.create_table("kv", KeyType::U64, None).await.unwrap();
    old_kv
        .put_value(1u64, "one", WriteOptions::DURABLE)
        .await
        .unwrap();

    let new = open().await.unwrap();
    let late = old_kv.put_value(2u64, "late", WriteOptions::DURABLE).await;
    assert!(
        late.is_err(),
        "the previous writer's write was acknowledged"
    );
    let new_kv = new.table("kv").unwrap();
    assert_eq!(new_kv.get_value(2u64).await.unwrap(), None);
    new_kv
        .put_value(3u64, "three", WriteOptions::DURABLE)
        .await
        .unwrap();
    new.close().await.unwrap();
    drop((old_kv, old));

    let again = open().await.unwrap();
    let kv = again.table("kv").unwrap();
    assert_eq!(
        kv.get_value(1u64).await.unwrap().as_deref(),
        Some(&b"one"[..])
    );
    assert_eq!(kv.get_value(2u64).await.unwrap(), None);
    assert_eq!(
        kv.get_value(3u64).await.unwrap().as_deref(),
        Some(&b"three"[..])
    );
}

/// A transaction's commit whose caller stops waiting (a request's timeout) still runs to its
/// end holding the commit lock: the next transaction's conflict check sees its write. The
/// commit lock used to be dropped with the caller's future while the write's append was still
/// to come, so the next transaction's check missed it and both committed writes to the same key
/// (found by a helper agent's review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_caller_stopped_waiting_still_conflicts_with_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, db, t) = open_switched(dir.path()).await;
    let mut first = db.begin();
    let mut second = db.begin();
    first.put_value(&t, 7u64, "first").unwrap();
    second.put_value(&t, 7u64, "second").unwrap();
    // The first commit's append is slow to reach the log; its caller gives up before.
    wal.delay_appends_ms.store(300, Ordering::SeqCst);
    let cut = tokio::time::timeout(
        Duration::from_millis(50),
        first.commit(WriteOptions::DURABLE),
    )
    .await;
    assert!(cut.is_err(), "the commit was to be cut off: {cut:?}");
    let err = second
        .commit(WriteOptions::DURABLE)
        .await
        .expect_err("both transactions committed a write to key 7");
    assert!(matches!(err, Error::Conflict { .. }), "{err}");
    wal.delay_appends_ms.store(0, Ordering::SeqCst);
    assert_eq!(
        t.get_value(7u64).await.unwrap().as_deref(),
        Some(&b"first"[..])
    );
    db.close().await.unwrap();
}

/// The change stream hands out nothing the log has not made durable: a `Buffered` write lost in
/// a crash gives its LSN to the next write, and a consumer that had seen the lost one would skip
/// the new one (found by a helper agent's review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_stream_waits_for_a_buffered_write_to_be_durable() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, db, t) = open_switched(dir.path()).await;
    wal.stall_durability.store(true, Ordering::SeqCst);
    let lsn = t
        .put_value(1u64, "buffered", WriteOptions::BUFFERED)
        .await
        .unwrap();
    let mut changes = db.changes(lsn);
    let early = tokio::time::timeout(Duration::from_millis(300), changes.next()).await;
    assert!(
        early.is_err(),
        "a change handed out before it was durable: {early:?}"
    );
    wal.stall_durability.store(false, Ordering::SeqCst);
    let change = tokio::time::timeout(Duration::from_secs(10), changes.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(change.lsn, lsn);
    assert!(wal.last_durable_lsn().unwrap() >= lsn);
    drop(changes);
    db.close().await.unwrap();
}

/// A log that failed before a visible `Buffered` write was durable: the change stream hands out
/// the changes durable before the failure, then reports it (it failed at once, handing out
/// nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_stream_drains_what_was_durable_before_the_log_failed() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, db, t) = open_switched(dir.path()).await;
    let mut durable = Vec::new();
    for key in 0..3u64 {
        durable.push(t.put_value(key, "d", WriteOptions::DURABLE).await.unwrap());
    }
    wal.durable_cap.store(durable[2], Ordering::SeqCst);
    t.put_value(9u64, "buffered", WriteOptions::BUFFERED)
        .await
        .unwrap();
    let (seen, end) = changes_until_an_error(&db, durable[0]).await;
    assert_eq!(seen, durable);
    assert!(end.to_string().contains("injected"), "{end}");
    wal.durable_cap.store(u64::MAX, Ordering::SeqCst);
    db.close().await.unwrap();
}

/// A log whose reading leaves out a record in the middle (an object a store listing missed):
/// the open is refused as `Corrupt` instead of replaying without it (only the first record was
/// checked against the flushed LSN, and the next flush would have made the loss for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_that_skips_a_record_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, db, t) = open_switched(dir.path()).await;
    let mut lsns = Vec::new();
    for key in 0..3u64 {
        lsns.push(t.put_value(key, "v", WriteOptions::DURABLE).await.unwrap());
    }
    db.close().await.unwrap();
    drop((db, t, wal));

    let wal = SwitchedWal::open(&dir.path().join("wal"));
    wal.unread.store(lsns[1], Ordering::SeqCst);
    let err = Db::builder()
        .path(dir.path())
        .wal(wal.clone())
        .build()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains("missing"), "{err}");
    drop(wal);
    // Read whole, it opens with every write.
    let wal = SwitchedWal::open(&dir.path().join("wal"));
    let db = Db::builder()
        .path(dir.path())
        .wal(wal)
        .build()
        .await
        .unwrap();
    let t = db.table("kv").unwrap();
    for key in 0..3u64 {
        assert_eq!(t.get_value(key).await.unwrap().unwrap(), "v");
    }
    db.close().await.unwrap();
}

/// A log opened with `SkipCorrupt` lacks the records it skipped: the change stream reports the
/// gap instead of passing over it (only a gap at the start of one of its reads was reported).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_stream_reports_records_skipped_as_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).await.unwrap();
    let t = db.create_table("kv", KeyType::U64, None).await.unwrap();
    let mut lsns = Vec::new();
    for key in 0..5u64 {
        lsns.push(t.put_value(key, "v", WriteOptions::DURABLE).await.unwrap());
    }
    db.close().await.unwrap();
    drop(db);

    // Damages the middle write's record in the WAL's only segment.
    let damaged = lsns[2];
    let segment = std::fs::read_dir(dir.path().join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "wal"))
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let mut at = 32;
    loop {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let lsn = u64::from_le_bytes(bytes[at + 8..at + 16].try_into().unwrap());
        if lsn == damaged {
            bytes[at + 16] ^= 0xff;
            break;
        }
        at += 16 + len;
    }
    std::fs::write(&segment, &bytes).unwrap();

    let db = Db::builder()
        .path(dir.path())
        .wal_options(WalOptions::default().recovery_mode(RecoveryMode::SkipCorrupt))
        .build()
        .await
        .unwrap();
    let (seen, err) = changes_until_an_error(&db, lsns[0]).await;
    assert_eq!(seen, lsns[..2], "{err}");
    assert!(
        matches!(err, Error::ChangesGone { requested, oldest } if requested == damaged && oldest == damaged + 1),
        "{err}"
    );
    // A consumer resumes after the gap.
    let rest: Vec<_> = db.changes(damaged + 1).try_collect().await.unwrap();
    assert_eq!(rest.iter().map(|c| c.lsn).collect::<Vec<_>>(), lsns[3..]);
    db.close().await.unwrap();
}

/// A durable write whose task is dropped after the log took its LSN and before it was applied
/// (the runtime it ran on shut down) refuses later writes (`Poisoned`) instead of leaving them
/// waiting for good on an LSN nobody applies (found by a helper agent's review).
#[test]
fn a_write_cut_off_by_its_runtime_poisons_writes_instead_of_stalling_them() {
    let dir = tempfile::tempdir().unwrap();
    let main = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (wal, db, t) = main.block_on(open_switched(dir.path()));
    let doomed = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    wal.delay_answers_ms.store(10_000, Ordering::SeqCst);
    let cut = {
        let t = t.clone();
        doomed.spawn(async move { t.put_value(1u64, "cut", WriteOptions::DURABLE).await })
    };
    // The log takes the write's LSN, then its answer waits: the runtime goes down meanwhile.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while wal.last_lsn().unwrap_or(0) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the write never reached the log"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    doomed.shutdown_timeout(Duration::from_secs(5));
    drop(cut);
    wal.delay_answers_ms.store(0, Ordering::SeqCst);
    let later = main.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(10),
            t.put_value(2u64, "later", WriteOptions::DURABLE),
        )
        .await
    });
    let later = later.expect("a later write waited for good on the lost LSN");
    assert!(matches!(later, Err(Error::Poisoned(_))), "{later:?}");
    main.block_on(async {
        let _ = db.close().await;
    });
}

/// A manifest whose table declares other value columns than its segments store (a hand-edited
/// manifest, or one put together from two databases) is refused at open as `Corrupt`, naming
/// the segment, instead of opening and then failing reads with an Arrow error reported as the
/// caller's bad input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_whose_columns_disagree_with_its_table_is_corrupt_at_open() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let open = || Db::builder().store(Arc::clone(&store)).build();
    let db = open().await.unwrap();
    let kv = db.create_table("kv", KeyType::U64, None).await.unwrap();
    kv.put_value(1u64, "one", WriteOptions::DURABLE)
        .await
        .unwrap();
    db.checkpoint().await.unwrap();
    db.close().await.unwrap();
    drop((kv, db));

    edit_kv_manifest(&store, |table| {
        assert_eq!(table.segments.len(), 1, "the checkpoint wrote one segment");
        table.schema = arrow_schema::Schema::new(vec![arrow_schema::Field::new(
            "value",
            arrow_schema::DataType::Int64,
            true,
        )]);
    })
    .await;

    let err = open().await.expect_err("the database opened");
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    let message = err.to_string();
    assert!(
        message.contains("segments/") && message.contains("value: Int64"),
        "{message}"
    );
}

/// A manifest entry whose key or LSN range is not its segment's (a writer's bug, or a
/// hand-edited manifest) is corrupt at open: reads prune segments by the key range and show a
/// segment's rows to snapshots by its LSN range, so a narrower one would hide rows or show
/// newer ones to older snapshots without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_entry_that_misdescribes_its_segment_is_corrupt_at_open() {
    type Edit = fn(&mut omendb_storage::manifest::SegmentEntry);
    let edits: [(&str, Edit); 3] = [
        ("key_max", |e| e.key_max = e.key_max.map(|k| k - 1)),
        ("lsn_max", |e| e.lsn_max = e.lsn_min),
        ("rows", |e| e.rows += 1),
    ];
    for (what, edit) in edits {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let open = || Db::builder().store(Arc::clone(&store)).build();
        let db = open().await.unwrap();
        let kv = db.create_table("kv", KeyType::U64, None).await.unwrap();
        for key in [1u64, 2, 3] {
            kv.put_value(key, "v", WriteOptions::DURABLE).await.unwrap();
        }
        db.checkpoint().await.unwrap();
        db.close().await.unwrap();
        drop((kv, db));

        edit_kv_manifest(&store, |table| {
            let segments = &mut table.segments;
            assert_eq!(segments.len(), 1, "the checkpoint wrote one segment");
            assert_ne!(segments[0].lsn_min, segments[0].lsn_max, "three writes");
            edit(&mut segments[0]);
        })
        .await;

        let Err(err) = open().await else {
            panic!("{what}: the database opened");
        };
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{what}: {err}");
        assert!(
            err.to_string().contains("the manifest lists"),
            "{what}: {err}"
        );
    }
}

/// A change stream whose read races a truncation (a flush dropping the WAL's records below what
/// it flushed, while the stream reads segments it listed before) hands out the changes it read
/// and then reports `ChangesGone` from the log as it is now, not the I/O error of the segment
/// it found gone (until the thirty-first session; found by a helper agent's review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_stream_racing_a_truncation_reports_the_changes_gone() {
    let dir = tempfile::tempdir().unwrap();
    let wal = SwitchedWal::open_with(&dir.path().join("wal"), small_segments());
    let db = Db::builder()
        .path(dir.path())
        .wal(wal.clone())
        .limits(512, 1 << 10)
        .build()
        .await
        .unwrap();
    let t = db.create_table("kv", KeyType::U64, None).await.unwrap();
    let mut lsns = Vec::new();
    for key in 0..400u64 {
        t.put_value(key, vec![1u8; 64], WriteOptions::DURABLE)
            .await
            .unwrap();
        lsns.push(db.stats().visible_lsn);
    }
    // Truncated past the middle once the stream's first read has its first record: the
    // segments after the first that the read listed are gone when it reaches them.
    let cut = lsns[200];
    wal.truncate_mid_read.store(cut, Ordering::SeqCst);
    let (seen, err) = changes_until_an_error(&db, lsns[0]).await;
    assert!(
        !seen.is_empty(),
        "the changes read before the truncation were dropped"
    );
    assert_eq!(seen, lsns[..seen.len()], "{err}");
    let next = lsns[seen.len()];
    assert!(
        matches!(err, Error::ChangesGone { requested, oldest } if requested == next && oldest > next && oldest <= cut),
        "{err}"
    );
    db.close().await.unwrap();
}

/// The LSNs of the changes `db` hands out from `from` until its stream fails, and the error.
async fn changes_until_an_error(db: &Db, from: Lsn) -> (Vec<Lsn>, Error) {
    let mut changes = db.changes(from);
    let mut seen = Vec::new();
    loop {
        match changes.next().await {
            Some(Ok(change)) => seen.push(change.lsn),
            Some(Err(err)) => return (seen, err),
            None => panic!("the stream ended after {seen:?} without an error"),
        }
    }
}

/// A WAL record that writes a table the database never created — id 0, which no table gets,
/// or an id above every one handed out — is a log and a manifest that disagree: the open is
/// refused as corrupt rather than skipping the write as if its table had been dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_write_to_a_table_never_created_is_corrupt() {
    for table in [0u32, 99] {
        let dir = tempfile::tempdir().unwrap();
        let open = || Db::builder().path(dir.path()).build();
        let db = open().await.unwrap();
        let t = db.create_table("kv", KeyType::U64, None).await.unwrap();
        t.put_value(1u64, b"kept".to_vec(), WriteOptions::DURABLE)
            .await
            .unwrap();
        db.close().await.unwrap();
        drop(db);
        let wal = FileWal::open(dir.path().join("wal"), WalOptions::default()).unwrap();
        let mut batch = omendb_core::batch::WriteBatch::new();
        batch.put(table, 7, bytes::Bytes::from_static(b"stray"));
        wal.append_blocking(&batch.encode().unwrap(), AppendOptions::DURABLE)
            .unwrap();
        wal.close().unwrap();
        drop(wal);
        match open().await {
            Err(err @ Error::Corrupt(_)) => assert!(
                err.to_string()
                    .contains(&format!("writes table id {table}, which was never created")),
                "{err}"
            ),
            other => panic!("table id {table}: opened: {:?}", other.map(|_| ())),
        }
    }
}

/// Publishes, over the database's newest manifest in `store` (prefix `db`), a version whose
/// table `kv` is changed by `edit`: a hand-edited manifest.
async fn edit_kv_manifest(
    store: &Arc<dyn ObjectStore>,
    edit: impl FnOnce(&mut omendb_storage::manifest::TableEntry),
) {
    use omendb_storage::manifest::{ManifestOptions, Manifests};

    let manifests = Manifests::new(
        Arc::clone(store),
        &object_store::path::Path::from("db"),
        ManifestOptions::default(),
    );
    let mut writer = manifests.open_writer(Default::default()).await.unwrap();
    let mut data = writer.current().unwrap().data.clone();
    edit(data.tables.get_mut("kv").unwrap());
    writer.commit(data).await.unwrap();
}
