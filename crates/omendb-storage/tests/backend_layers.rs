//! What each wrapper does when the store misbehaves: retry sends idempotent requests again and
//! starts failed listings over (without repeating objects), timeout turns a stalled request into a retryable error, metrics count
//! every request. Faults come from the test layer `common::Faults` stacked under the layer
//! under test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::Faults;
use futures::TryStreamExt;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use omendb_storage::backend::{Layered, Metered, Retry, RetryPolicy, TimedOut, Timeout};

fn quick_retries(max_retries: u32) -> RetryPolicy {
    RetryPolicy {
        max_retries,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(2),
    }
}

fn attempts(store: &Layered<Faults, InMemory>) -> u32 {
    store.layer().attempts.load(Ordering::SeqCst)
}

#[tokio::test]
async fn retry_resends_idempotent_requests_after_transient_errors() {
    let faulty = Faults {
        fail: 3.into(),
        ..Faults::default()
    }
    .over_memory();
    let store = Layered::new(Retry::new(quick_retries(5)), Arc::clone(&faulty));
    let path = Path::from("a");
    store
        .put(&path, PutPayload::from_static(b"v"))
        .await
        .unwrap();
    assert_eq!(attempts(&faulty), 4, "three failures, then success");
    assert_eq!(
        store.get(&path).await.unwrap().bytes().await.unwrap(),
        Bytes::from_static(b"v")
    );
}

#[tokio::test]
async fn retry_gives_up_after_max_retries_with_the_last_error() {
    let faulty = Faults {
        fail: 100.into(),
        ..Faults::default()
    }
    .over_memory();
    let store = Layered::new(Retry::new(quick_retries(2)), Arc::clone(&faulty));
    let err = store
        .put(&Path::from("a"), PutPayload::from_static(b"v"))
        .await
        .unwrap_err();
    assert!(matches!(err, object_store::Error::Generic { .. }), "{err}");
    assert_eq!(attempts(&faulty), 3, "one attempt and two retries");
}

#[tokio::test]
async fn retry_does_not_resend_definite_errors() {
    let faulty = Faults {
        fail: 1.into(),
        definite: true,
        ..Faults::default()
    }
    .over_memory();
    let store = Layered::new(Retry::new(quick_retries(5)), Arc::clone(&faulty));
    let err = store
        .put(&Path::from("a"), PutPayload::from_static(b"v"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, object_store::Error::PermissionDenied { .. }),
        "{err}"
    );
    assert_eq!(attempts(&faulty), 1);
}

#[tokio::test]
async fn retry_does_not_resend_a_rename() {
    let faulty = Faults::default().over_memory();
    faulty
        .put(&Path::from("from"), PutPayload::from_static(b"v"))
        .await
        .unwrap();
    faulty.layer().fail.store(1, Ordering::SeqCst);
    let before = attempts(&faulty);
    let store = Layered::new(Retry::new(quick_retries(5)), Arc::clone(&faulty));
    store
        .rename(&Path::from("from"), &Path::from("to"))
        .await
        .unwrap_err();
    assert_eq!(attempts(&faulty) - before, 1, "a rename is sent once");
}

/// A conditional update whose answer was lost is not resent: the resend would find the object
/// changed (by itself) and answer `Precondition`, telling the caller it lost a compare-and-swap
/// it won. The error it gets is the transient one, an outcome it knows to be unknown.
#[tokio::test]
async fn retry_does_not_resend_a_conditional_update() {
    let faulty = Faults::default().over_memory();
    let path = Path::from("cas");
    let first = faulty
        .put(&path, PutPayload::from_static(b"v1"))
        .await
        .unwrap();
    faulty.layer().land_then_fail.store(1, Ordering::SeqCst);
    let before = attempts(&faulty);
    let store = Layered::new(Retry::new(quick_retries(5)), Arc::clone(&faulty));
    let update = PutOptions::from(PutMode::Update(UpdateVersion::from(first)));
    let err = store
        .put_opts(&path, PutPayload::from_static(b"v2"), update)
        .await
        .unwrap_err();
    assert!(matches!(err, object_store::Error::Generic { .. }), "{err}");
    assert_eq!(attempts(&faulty) - before, 1, "an update is sent once");
    assert_eq!(
        store.get(&path).await.unwrap().bytes().await.unwrap(),
        Bytes::from_static(b"v2"),
        "it landed"
    );
}

#[tokio::test]
async fn a_listing_that_fails_midway_returns_every_object_once() {
    let faulty = Faults {
        list_cut: Some(4),
        ..Faults::default()
    }
    .over_memory();
    for i in 0..10 {
        faulty
            .inner()
            .put(
                &Path::from(format!("p/{i:02}")),
                PutPayload::from_static(b"v"),
            )
            .await
            .unwrap();
    }
    let store = Layered::new(Retry::new(quick_retries(5)), faulty);
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
    let faulty = Faults {
        stall: 1.into(),
        ..Faults::default()
    }
    .over_memory();
    let store = Layered::new(Timeout::new(Duration::from_secs(2)), faulty);
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
    let faulty = Faults {
        stall: 1.into(),
        ..Faults::default()
    }
    .over_memory();
    let timed = Arc::new(Layered::new(Timeout::new(Duration::from_secs(1)), faulty));
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

/// Runs `work` with a local metrics recorder and returns what it recorded, each series named
/// `name{label=value,...}`: counters' values and histograms' samples.
fn recorded(
    work: impl std::future::Future<Output = ()>,
) -> (
    std::collections::BTreeMap<String, u64>,
    std::collections::BTreeMap<String, Vec<f64>>,
) {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(work);
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
                histograms.insert(name, samples.iter().map(|s| s.into_inner()).collect());
            }
            DebugValue::Gauge(_) => {}
        }
    }
    (counts, histograms)
}

#[test]
fn metrics_count_every_request_with_its_outcome() {
    let (counts, samples) = recorded(async {
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
    let histograms: std::collections::BTreeMap<String, usize> = samples
        .into_iter()
        .map(|(name, s)| (name, s.len()))
        .collect();
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

#[test]
fn a_get_whose_body_breaks_off_is_timed_whole_counted_failed_and_retried() {
    let broken = Arc::new(common::Scripted {
        bodies_break_after: Some(Duration::from_millis(200)),
        ..common::Scripted::default()
    });
    let counted = Arc::new(Layered::new(Metered::new("memory"), Arc::clone(&broken)));
    let store = Layered::new(Retry::new(quick_retries(2)), counted);
    let (outcomes, samples) = recorded(async {
        broken
            .put(&Path::from("a"), PutPayload::from_static(b"value"))
            .await
            .unwrap();
        let err = store.get_range(&Path::from("a"), 0..3).await.unwrap_err();
        assert!(err.to_string().contains("mid-body"), "{err}");
    });
    let seconds: std::collections::BTreeMap<String, f64> = samples
        .into_iter()
        .map(|(name, s)| (name, s.iter().sum()))
        .collect();
    // Three attempts (two retries), each failing once its body broke off after 200 ms.
    assert_eq!(
        outcomes.get("omendb_store_requests_total{backend=memory,op=get,outcome=error}"),
        Some(&3),
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes.get("omendb_store_requests_total{backend=memory,op=get,outcome=ok}"),
        None,
        "{outcomes:?}"
    );
    let timed = seconds
        .get("omendb_store_request_duration_seconds{backend=memory,op=get}")
        .copied()
        .unwrap_or(0.0);
    assert!(
        timed >= 0.6,
        "the bodies' time is the gets' time: {seconds:?}"
    );
}

#[test]
fn a_request_its_caller_gives_up_on_is_counted_cancelled() {
    let (counts, samples) = recorded(async {
        let stalled = Faults {
            stall: 1.into(),
            ..Faults::default()
        }
        .over_memory();
        let store = Layered::new(Metered::new("memory"), stalled);
        // A caller that stops waiting (a readiness check's deadline), for a put and a
        // listing.
        let path = Path::from("a");
        let put = store.put(&path, PutPayload::from_static(b"v"));
        assert!(
            tokio::time::timeout(Duration::from_millis(20), put)
                .await
                .is_err()
        );
        store
            .put(&Path::from("b"), PutPayload::from_static(b"v"))
            .await
            .unwrap();
        store
            .put(&Path::from("c"), PutPayload::from_static(b"v"))
            .await
            .unwrap();
        // A listing read in part, then dropped.
        let mut listing = store.list(None);
        assert!(futures::StreamExt::next(&mut listing).await.is_some());
        drop(listing);
    });
    assert_eq!(
        counts.get("omendb_store_requests_total{backend=memory,op=put,outcome=cancelled}"),
        Some(&1),
        "{counts:?}"
    );
    assert_eq!(
        counts.get("omendb_store_requests_total{backend=memory,op=list,outcome=cancelled}"),
        Some(&1),
        "{counts:?}"
    );
    let put_seconds = &samples["omendb_store_request_duration_seconds{backend=memory,op=put}"];
    assert!(put_seconds[0] >= 0.02, "{put_seconds:?}");
}
