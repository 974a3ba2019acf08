//! Two processes opening one database in the store at once. An open claims the WAL, then
//! publishes the manifest's next epoch: two separate races, and each process could win one. The
//! manifest's winner then served DDL while the other acknowledged writes to the WAL it won, and
//! a table the first dropped lost the second's writes at the next open. Now a process that lost
//! either race fails its open.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use omendb_core::{Db, ErrorKind, KeyType, WriteOptions};
use tokio::sync::Semaphore;

/// A view of a shared store whose listings of the manifest wait until the test closes `gate`
/// (a closed semaphore lets every waiter through): the process using it stops between its WAL
/// claim and its manifest epoch.
#[derive(Debug)]
struct GatedManifest {
    inner: Arc<InMemory>,
    gate: Arc<Semaphore>,
}

impl fmt::Display for GatedManifest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gated({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for GatedManifest {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let listing = self.inner.list(prefix);
        if !prefix.is_some_and(|p| p.as_ref().contains("manifest")) {
            return listing;
        }
        let gate = Arc::clone(&self.gate);
        // Waits for a permit that never comes until the test closes the gate for good.
        futures::stream::once(async move {
            let _ = gate.acquire().await;
        })
        .filter_map(|()| std::future::ready(None))
        .chain(listing)
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

async fn open(store: Arc<dyn ObjectStore>) -> omendb_core::Result<Db> {
    Db::builder().store(store).wal_in_store().build().await
}

async fn wal_objects(store: &InMemory) -> usize {
    store
        .list(Some(&Path::from("db/wal")))
        .filter(|o| std::future::ready(o.is_ok()))
        .count()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_processes_opening_at_once_the_one_that_lost_a_race_fails() {
    let objects = Arc::new(InMemory::new());
    {
        let db = open(objects.clone()).await.unwrap();
        let t = db.create_table("t", KeyType::U64, None).await.unwrap();
        t.put_value(1u64, "before", WriteOptions::DURABLE)
            .await
            .unwrap();
        db.close().await.unwrap();
    }
    let before = wal_objects(&objects).await;

    // B claims the WAL, then waits at its first look at the manifest.
    let gate = Arc::new(Semaphore::new(0));
    let b_store = Arc::new(GatedManifest {
        inner: Arc::clone(&objects),
        gate: Arc::clone(&gate),
    });
    let b = tokio::spawn(open(b_store));
    let started = Instant::now();
    while wal_objects(&objects).await == before {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "B never claimed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // C opens whole meanwhile: it claims the WAL after B and publishes its epoch first.
    let c = open(objects.clone()).await.unwrap();
    gate.close();
    // B then publishes the newer epoch, but lost the WAL to C's later claim: it fails.
    let b = tokio::time::timeout(Duration::from_secs(30), b)
        .await
        .unwrap()
        .unwrap();
    let Err(err) = b else {
        panic!("B won the manifest but not the WAL, and opened");
    };
    assert_eq!(err.kind(), ErrorKind::Fatal, "{err}");

    // C found nothing wrong at its open (B's epoch came after C's check), so its writes are
    // acknowledged until its next publish finds B's epoch; none of them is lost.
    let t = c.table("t").unwrap();
    t.put_value(2u64, "by C", WriteOptions::DURABLE)
        .await
        .unwrap();
    let fenced = c.checkpoint().await.unwrap_err();
    assert_eq!(fenced.kind(), ErrorKind::Fatal, "{fenced}");
    drop(c);
    let db = open(objects.clone()).await.unwrap();
    let t = db.table("t").unwrap();
    assert_eq!(t.get_value(1u64).await.unwrap().unwrap(), "before");
    assert_eq!(t.get_value(2u64).await.unwrap().unwrap(), "by C");
    db.close().await.unwrap();
}
