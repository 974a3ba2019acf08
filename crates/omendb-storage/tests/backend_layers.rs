//! What each wrapper does when the store misbehaves: retry sends idempotent requests again and
//! resumes listings, timeout turns a stalled request into a retryable error, metrics count
//! every request. Faults come from small test layers stacked under the layer under test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload};
use omendb_storage::backend::{
    Idempotence, Layer, Layered, Metered, Op, Retry, RetryPolicy, TimedOut, Timeout,
};

/// Fails the first `failures` attempts of every request with `error()`, and cuts every listing
/// after `list_cut` items once (then lets the resumed listing finish).
#[derive(Debug)]
struct Faults {
    failures: AtomicU32,
    transient: bool,
    list_cut: Option<usize>,
    cut_done: AtomicU32,
    attempts: Arc<AtomicU32>,
    stall: Option<Duration>,
}

impl Faults {
    fn new(failures: u32, transient: bool) -> Self {
        Self {
            failures: AtomicU32::new(failures),
            transient,
            list_cut: None,
            cut_done: AtomicU32::new(0),
            attempts: Arc::default(),
            stall: None,
        }
    }

    fn error(&self) -> object_store::Error {
        if self.transient {
            object_store::Error::Generic {
                store: "faults",
                source: "injected".into(),
            }
        } else {
            object_store::Error::PermissionDenied {
                path: "x".into(),
                source: "injected".into(),
            }
        }
    }
}

impl Layer for Faults {
    fn name(&self) -> &'static str {
        "faults"
    }

    fn request<T, F, Fut>(
        &self,
        _op: Op,
        _idempotence: Idempotence,
        mut attempt: F,
    ) -> impl Future<Output = object_store::Result<T>> + Send
    where
        T: Send,
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = object_store::Result<T>> + Send,
    {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        let fail = self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let error = fail.then(|| self.error());
        let stall = self.stall;
        let request = attempt();
        async move {
            if let Some(stall) = stall {
                tokio::time::sleep(stall).await;
            }
            match error {
                Some(error) => Err(error),
                None => request.await,
            }
        }
    }

    fn list(
        &self,
        _op: Op,
        start: Arc<
            dyn Fn(Option<Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>>
                + Send
                + Sync,
        >,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let listing = start(None);
        match self.list_cut {
            Some(cut) if self.cut_done.fetch_add(1, Ordering::SeqCst) == 0 => listing
                .take(cut)
                .chain(futures::stream::once(async {
                    Err(object_store::Error::Generic {
                        store: "faults",
                        source: "cut".into(),
                    })
                }))
                .boxed(),
            _ => listing,
        }
    }
}

fn quick_retries(max_retries: u32) -> RetryPolicy {
    RetryPolicy {
        max_retries,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(2),
    }
}

fn faulty(faults: Faults) -> Arc<Layered<Faults, InMemory>> {
    Arc::new(Layered::new(faults, Arc::new(InMemory::new())))
}

#[tokio::test]
async fn retry_resends_idempotent_requests_after_transient_errors() {
    let faults = Faults::new(3, true);
    let attempts = Arc::clone(&faults.attempts);
    let store = Layered::new(Retry::new(quick_retries(5)), faulty(faults));
    let path = Path::from("a");
    store
        .put(&path, PutPayload::from_static(b"v"))
        .await
        .unwrap();
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        4,
        "three failures, then success"
    );
    assert_eq!(
        store.get(&path).await.unwrap().bytes().await.unwrap(),
        Bytes::from_static(b"v")
    );
}

#[tokio::test]
async fn retry_gives_up_after_max_retries_with_the_last_error() {
    let faults = Faults::new(100, true);
    let attempts = Arc::clone(&faults.attempts);
    let store = Layered::new(Retry::new(quick_retries(2)), faulty(faults));
    let err = store
        .put(&Path::from("a"), PutPayload::from_static(b"v"))
        .await
        .unwrap_err();
    assert!(matches!(err, object_store::Error::Generic { .. }), "{err}");
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        3,
        "one attempt and two retries"
    );
}

#[tokio::test]
async fn retry_does_not_resend_definite_errors() {
    let faults = Faults::new(1, false);
    let attempts = Arc::clone(&faults.attempts);
    let store = Layered::new(Retry::new(quick_retries(5)), faulty(faults));
    let err = store
        .put(&Path::from("a"), PutPayload::from_static(b"v"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, object_store::Error::PermissionDenied { .. }),
        "{err}"
    );
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn retry_does_not_resend_a_rename() {
    let inner = Arc::new(InMemory::new());
    inner
        .put(&Path::from("from"), PutPayload::from_static(b"v"))
        .await
        .unwrap();
    let faults = Faults::new(1, true);
    let attempts = Arc::clone(&faults.attempts);
    let store = Layered::new(
        Retry::new(quick_retries(5)),
        Arc::new(Layered::new(faults, inner)),
    );
    store
        .rename(&Path::from("from"), &Path::from("to"))
        .await
        .unwrap_err();
    assert_eq!(attempts.load(Ordering::SeqCst), 1, "a rename is sent once");
}

#[tokio::test]
async fn retry_resumes_a_listing_after_the_last_object_it_returned() {
    let inner = Arc::new(InMemory::new());
    for i in 0..10 {
        inner
            .put(
                &Path::from(format!("p/{i:02}")),
                PutPayload::from_static(b"v"),
            )
            .await
            .unwrap();
    }
    let mut faults = Faults::new(0, true);
    faults.list_cut = Some(4);
    let store = Layered::new(
        Retry::new(quick_retries(5)),
        Arc::new(Layered::new(faults, inner)),
    );
    let listed: Vec<String> = store
        .list(Some(&Path::from("p")))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    let expected: Vec<String> = (0..10).map(|i| format!("p/{i:02}")).collect();
    assert_eq!(listed, expected, "every object once, in order");
}

#[tokio::test(start_paused = true)]
async fn timeout_turns_a_stalled_request_into_a_transient_error() {
    let mut faults = Faults::new(0, true);
    faults.stall = Some(Duration::from_secs(3600));
    let store = Layered::new(Timeout::new(Duration::from_secs(2)), faulty(faults));
    let err = store
        .put(&Path::from("a"), PutPayload::from_static(b"v"))
        .await
        .unwrap_err();
    match &err {
        object_store::Error::Generic { source, .. } => {
            let timed_out = source
                .downcast_ref::<TimedOut>()
                .expect("a TimedOut source");
            assert_eq!(timed_out.after, Duration::from_secs(2));
        }
        other => panic!("{other}"),
    }
    let storage_err = omendb_storage::Error::from_store("put", "a", err);
    assert_eq!(storage_err.kind(), omendb_storage::ErrorKind::Retry);
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_attempt_is_retried() {
    // The first attempt stalls past the timeout; the retry finds the store answering.
    #[derive(Debug)]
    struct StallOnce(AtomicU32);
    impl Layer for StallOnce {
        fn name(&self) -> &'static str {
            "stall-once"
        }
        fn request<T, F, Fut>(
            &self,
            _: Op,
            _: Idempotence,
            mut attempt: F,
        ) -> impl Future<Output = object_store::Result<T>> + Send
        where
            T: Send,
            F: FnMut() -> Fut + Send,
            Fut: Future<Output = object_store::Result<T>> + Send,
        {
            let stall = self.0.fetch_add(1, Ordering::SeqCst) == 0;
            let request = attempt();
            async move {
                if stall {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                request.await
            }
        }
        fn list(
            &self,
            _: Op,
            start: Arc<
                dyn Fn(Option<Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>>
                    + Send
                    + Sync,
            >,
        ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
            start(None)
        }
    }
    let stalling = Arc::new(Layered::new(
        StallOnce(AtomicU32::new(0)),
        Arc::new(InMemory::new()),
    ));
    let timed = Arc::new(Layered::new(Timeout::new(Duration::from_secs(1)), stalling));
    let store = Layered::new(Retry::new(quick_retries(3)), timed);
    store
        .put(&Path::from("a"), PutPayload::from_static(b"v"))
        .await
        .unwrap();
    assert_eq!(
        store
            .get(&Path::from("a"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
        Bytes::from_static(b"v")
    );
}

#[test]
fn metrics_count_every_request_with_its_outcome() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let store = Layered::new(Metered::new("memory"), Arc::new(InMemory::new()));
            store
                .put(&Path::from("a"), PutPayload::from_static(b"v"))
                .await
                .unwrap();
            store
                .put(&Path::from("b"), PutPayload::from_static(b"v"))
                .await
                .unwrap();
            store.get(&Path::from("a")).await.unwrap();
            store.get(&Path::from("missing")).await.unwrap_err();
            let listed: Vec<_> = store.list(None).try_collect().await.unwrap();
            assert_eq!(listed.len(), 2);
        });
    });
    let mut counts = std::collections::BTreeMap::new();
    let mut histograms = std::collections::BTreeMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let labels: Vec<String> = key
            .key()
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let name = format!("{}{{{}}}", key.key().name(), labels.join(","));
        match value {
            DebugValue::Counter(n) => {
                counts.insert(name, n);
            }
            DebugValue::Histogram(samples) => {
                histograms.insert(name, samples.len());
            }
            DebugValue::Gauge(_) => {}
        }
    }
    let requests = |op: &str, outcome: &str| {
        counts
            .get(&format!(
                "omendb_store_requests_total{{backend=memory,op={op},outcome={outcome}}}"
            ))
            .copied()
    };
    assert_eq!(requests("put", "ok"), Some(2), "{counts:?}");
    assert_eq!(requests("get", "ok"), Some(1), "{counts:?}");
    assert_eq!(requests("get", "error"), Some(1), "{counts:?}");
    assert_eq!(requests("list", "ok"), Some(1), "{counts:?}");
    assert_eq!(
        histograms.get("omendb_store_request_duration_seconds{backend=memory,op=get}"),
        Some(&2)
    );
}
