#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

//! `FaultyObjectStore` over an in-memory store: transparent without faults, each fault with the
//! effect it promises, seeded replay, and `kill`.

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use omendb_chaos::store::{Fault, FaultyObjectStore, Injected, StoreFaults};
use omendb_storage::backend::{Layered, Op, Retry, RetryPolicy};

type Faulty = FaultyObjectStore<InMemory>;

fn faulty(faults: StoreFaults, seed: u64) -> Arc<Faulty> {
    Arc::new(FaultyObjectStore::new(
        Arc::new(InMemory::new()),
        faults,
        seed,
    ))
}

fn only(ops: &[Op], faults: StoreFaults) -> StoreFaults {
    StoreFaults {
        ops: Some(ops.to_vec()),
        ..faults
    }
}

fn quick_retries(max_retries: u32) -> RetryPolicy {
    RetryPolicy {
        max_retries,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(2),
    }
}

fn payload(text: &str) -> PutPayload {
    PutPayload::from(text.as_bytes().to_vec())
}

/// The fault an error was injected with; fails the test for a real error.
fn fault_of(err: &object_store::Error) -> Fault {
    let injected = Injected::find(err).unwrap_or_else(|| panic!("not injected: {err}"));
    assert!(injected.to_string().starts_with("injected"), "{injected}");
    injected.fault
}

async fn exists(store: &InMemory, path: &str) -> bool {
    match store.head(&Path::from(path)).await {
        Ok(_) => true,
        Err(object_store::Error::NotFound { .. }) => false,
        Err(err) => panic!("{err}"),
    }
}

#[tokio::test]
async fn without_faults_it_behaves_like_the_inner_store() {
    let store = faulty(StoreFaults::none(), 1);
    let a = Path::from("dir/a");
    store.put(&a, payload("alpha")).await.unwrap();
    assert_eq!(store.get(&a).await.unwrap().bytes().await.unwrap(), "alpha");
    assert_eq!(store.head(&a).await.unwrap().size, 5);
    assert_eq!(store.get_range(&a, 1..3).await.unwrap(), "lp");
    let ranges = store.get_ranges(&a, &[0..1, 2..5]).await.unwrap();
    assert_eq!(ranges, vec!["a", "pha"]);

    // Create-if-absent refuses a second create.
    let create = PutOptions::from(PutMode::Create);
    let err = store
        .put_opts(&a, payload("again"), create.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(err, object_store::Error::AlreadyExists { .. }),
        "{err}"
    );
    store
        .put_opts(&Path::from("dir/b"), payload("beta"), create)
        .await
        .unwrap();

    let mut upload = store.put_multipart(&Path::from("dir/m")).await.unwrap();
    upload.put_part(payload("one ")).await.unwrap();
    upload.put_part(payload("two")).await.unwrap();
    upload.complete().await.unwrap();
    assert_eq!(
        store
            .get(&Path::from("dir/m"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
        "one two"
    );

    store.copy(&a, &Path::from("dir/c")).await.unwrap();
    store
        .rename(&Path::from("dir/c"), &Path::from("other/d"))
        .await
        .unwrap();
    let mut listed: Vec<String> = store
        .list(Some(&Path::from("dir")))
        .map_ok(|meta| meta.location.to_string())
        .try_collect()
        .await
        .unwrap();
    listed.sort();
    assert_eq!(listed, ["dir/a", "dir/b", "dir/m"]);
    let level = store.list_with_delimiter(None).await.unwrap();
    assert_eq!(level.common_prefixes.len(), 2);
    let after: Vec<_> = store
        .list_with_offset(Some(&Path::from("dir")), &Path::from("dir/a"))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(after.len(), 2);

    store.delete(&a).await.unwrap();
    assert!(!exists(store.inner(), "dir/a").await);
    assert!(exists(store.inner(), "other/d").await);
    assert_eq!(store.injected(), 0);
    assert_eq!(store.to_string(), "faulty(InMemory)");
}

#[tokio::test]
async fn a_plain_error_is_definite_and_surfaces_through_retry() {
    let store = faulty(
        StoreFaults {
            error: 1.0,
            ..StoreFaults::none()
        },
        2,
    );
    let retrying = Layered::new(Retry::new(quick_retries(5)), Arc::clone(&store));
    let err = retrying
        .put(&Path::from("a"), payload("v"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, object_store::Error::PermissionDenied { .. }),
        "{err}"
    );
    assert_eq!(fault_of(&err), Fault::Error);
    assert_eq!(store.injected_of(Fault::Error), 1, "not retried");
    assert!(!exists(store.inner(), "a").await, "never sent");

    // Found through the storage crate's error too.
    let wrapped = omendb_storage::Error::from_store("put", "a", err);
    assert!(Injected::find(&wrapped).is_some());
}

#[tokio::test]
async fn throttling_is_absorbed_by_retry() {
    let store = faulty(
        StoreFaults {
            throttle: 0.5,
            ..StoreFaults::none()
        },
        3,
    );
    let retrying = Layered::new(Retry::new(quick_retries(30)), Arc::clone(&store));
    for i in 0..20 {
        let path = Path::from(format!("p/{i:02}"));
        retrying.put(&path, payload("v")).await.unwrap();
        let got = retrying.get(&path).await.unwrap().bytes().await.unwrap();
        assert_eq!(got, "v");
    }
    // A listing that is throttled midway starts over and still returns each object once.
    let listed: Vec<_> = retrying
        .list(Some(&Path::from("p")))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(listed.len(), 20);
    assert!(store.injected_of(Fault::Throttle) > 10);
    assert_eq!(store.injected(), store.injected_of(Fault::Throttle));

    // Without the retry layer, the caller sees the transient error.
    store.set_faults(StoreFaults {
        throttle: 1.0,
        ..StoreFaults::none()
    });
    let err = store.head(&Path::from("p/00")).await.unwrap_err();
    assert!(matches!(err, object_store::Error::Generic { .. }), "{err}");
    assert_eq!(fault_of(&err), Fault::Throttle);
}

#[tokio::test]
async fn a_put_whose_answer_is_lost_lands_anyway() {
    let store = faulty(
        only(
            &[Op::Put],
            StoreFaults {
                lost_answer: 1.0,
                ..StoreFaults::none()
            },
        ),
        4,
    );
    let err = store.put(&Path::from("a"), payload("v")).await.unwrap_err();
    assert_eq!(fault_of(&err), Fault::LostAnswer);
    assert!(exists(store.inner(), "a").await, "the put landed");

    // A create-if-absent put resent by the retry layer finds its own first attempt.
    let retrying = Layered::new(Retry::new(quick_retries(3)), Arc::clone(&store));
    let err = retrying
        .put_opts(
            &Path::from("b"),
            payload("v"),
            PutOptions::from(PutMode::Create),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, object_store::Error::AlreadyExists { .. }),
        "{err}"
    );
    assert!(exists(store.inner(), "b").await);
}

#[tokio::test]
async fn a_flipped_get_changes_one_bit_of_the_body() {
    let store = faulty(
        only(
            &[Op::Get],
            StoreFaults {
                flipped_get: 1.0,
                ..StoreFaults::none()
            },
        ),
        6,
    );
    let body = vec![0u8; 300];
    store
        .inner()
        .put(&Path::from("f"), body.clone().into())
        .await
        .unwrap();
    let got = store
        .get(&Path::from("f"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.len(), body.len());
    let flipped: u32 = got.iter().map(|b| b.count_ones()).sum();
    assert_eq!(flipped, 1, "exactly one bit differs");
    assert_eq!(store.injected_of(Fault::FlippedGet), 1);
    // The object itself is intact.
    let stored = store
        .inner()
        .get(&Path::from("f"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(stored.as_ref(), body.as_slice());
}

#[tokio::test]
async fn a_multipart_upload_that_dies_leaves_no_object() {
    // A part dies: the upload accepts nothing more.
    let store = faulty(
        only(
            &[Op::PutPart],
            StoreFaults {
                dead_multipart: 1.0,
                ..StoreFaults::none()
            },
        ),
        5,
    );
    let mut upload = store.put_multipart(&Path::from("m")).await.unwrap();
    let err = upload.put_part(payload("one")).await.unwrap_err();
    assert_eq!(fault_of(&err), Fault::DeadMultipart);
    store.disable();
    upload.put_part(payload("two")).await.unwrap_err();
    let err = upload.complete().await.unwrap_err();
    assert_eq!(fault_of(&err), Fault::DeadMultipart);
    assert!(!exists(store.inner(), "m").await);
    assert_eq!(store.injected(), 1);

    // The completion dies: every part went through, the object still never appears.
    store.set_faults(only(
        &[Op::Complete],
        StoreFaults {
            dead_multipart: 1.0,
            ..StoreFaults::none()
        },
    ));
    let mut upload = store.put_multipart(&Path::from("n")).await.unwrap();
    upload.put_part(payload("one")).await.unwrap();
    upload.put_part(payload("two")).await.unwrap();
    upload.complete().await.unwrap_err();
    store.disable();
    upload.complete().await.unwrap_err();
    assert!(!exists(store.inner(), "n").await);
    upload.abort().await.unwrap();
}

#[tokio::test]
async fn a_truncated_get_returns_fewer_bytes_than_its_metadata_says() {
    let store = faulty(
        StoreFaults {
            truncated_get: 1.0,
            ..StoreFaults::none()
        },
        6,
    );
    let path = Path::from("a");
    let body = "0123456789".repeat(10);
    store.put(&path, payload(&body)).await.unwrap();
    for _ in 0..10 {
        let got = store.get(&path).await.unwrap();
        assert_eq!(got.meta.size, 100, "the metadata gives the full size");
        assert_eq!(got.range, 0..100);
        let bytes = got.bytes().await.unwrap();
        assert!(bytes.len() < 100, "{}", bytes.len());
        assert_eq!(bytes, body.as_bytes()[..bytes.len()]);
    }
    let ranges = store.get_ranges(&path, &[0..10, 50..90]).await.unwrap();
    let total: usize = ranges.iter().map(|r| r.len()).sum();
    assert!(total < 50, "{total}");
    assert_eq!(store.injected_of(Fault::TruncatedGet), 11);
    // A head has no body to cut.
    assert_eq!(store.head(&path).await.unwrap().size, 100);
}

#[tokio::test]
async fn latency_delays_requests() {
    let store = faulty(StoreFaults::slow(Duration::from_millis(20)), 7);
    let started = tokio::time::Instant::now();
    for i in 0..20 {
        store
            .put(&Path::from(format!("{i}")), payload("v"))
            .await
            .unwrap();
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed > Duration::from_millis(40) && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );
    assert_eq!(store.injected_of(Fault::Latency), 20);
}

#[tokio::test]
async fn a_listing_can_fail_midway() {
    let store = faulty(StoreFaults::none(), 8);
    for i in 0..10 {
        store
            .put(&Path::from(format!("p/{i}")), payload("v"))
            .await
            .unwrap();
    }
    store.set_faults(only(
        &[Op::List],
        StoreFaults {
            error: 1.0,
            ..StoreFaults::none()
        },
    ));
    let mut failures = 0;
    for _ in 0..20 {
        let items: Vec<_> = store.list(Some(&Path::from("p"))).collect().await;
        let (last, before) = items.split_last().unwrap();
        assert!(before.iter().all(Result::is_ok));
        assert!(before.len() < 4);
        assert_eq!(fault_of(last.as_ref().unwrap_err()), Fault::Error);
        failures += 1;
    }
    assert_eq!(store.injected_of(Fault::Error), failures);
}

/// A fixed sequence of requests; returns what each answered, naming injected faults, and checks
/// that every error was injected.
async fn workload(store: &Faulty) -> Vec<String> {
    fn outcome<T>(result: object_store::Result<T>, errored: &mut bool) -> String {
        match result {
            Ok(_) => "ok".to_owned(),
            // A real answer: the key was deleted or never written.
            Err(object_store::Error::NotFound { .. }) => "absent".to_owned(),
            Err(err) => {
                *errored = true;
                format!("{:?}", fault_of(&err))
            }
        }
    }
    let mut outcomes = Vec::new();
    for i in 0..40 {
        let path = Path::from(format!("k/{}", i % 7));
        let before = store.injected();
        let mut errored = false;
        let result = match i % 5 {
            0 | 1 => outcome(store.put(&path, payload("value")).await, &mut errored),
            2 => match store.get(&path).await {
                Ok(got) => format!("{} bytes", got.bytes().await.unwrap().len()),
                Err(err) => outcome::<()>(Err(err), &mut errored),
            },
            3 => outcome(store.delete(&path).await, &mut errored),
            _ => match store.put_multipart(&path).await {
                Ok(mut upload) => {
                    let part = outcome(upload.put_part(payload("part")).await, &mut errored);
                    let done = outcome(upload.complete().await, &mut errored);
                    format!("{part} {done}")
                }
                Err(err) => outcome::<()>(Err(err), &mut errored),
            },
        };
        if errored {
            assert!(store.injected() > before, "{result}");
        }
        outcomes.push(result);
    }
    outcomes
}

fn mixed() -> StoreFaults {
    StoreFaults {
        error: 0.1,
        throttle: 0.1,
        lost_answer: 0.1,
        dead_multipart: 0.2,
        truncated_get: 0.3,
        ..StoreFaults::none()
    }
}

#[tokio::test]
async fn the_same_seed_gives_the_same_faults() {
    let first = workload(&faulty(mixed(), 42)).await;
    let again = workload(&faulty(mixed(), 42)).await;
    let other = workload(&faulty(mixed(), 43)).await;
    assert_eq!(first, again);
    assert_ne!(first, other);
    assert!(first.iter().any(|o| o != "ok"), "{first:?}");
}

#[tokio::test]
async fn disable_and_set_faults_switch_faults_off_and_on() {
    let store = faulty(
        StoreFaults {
            error: 1.0,
            ..StoreFaults::none()
        },
        9,
    );
    let path = Path::from("a");
    store.put(&path, payload("v")).await.unwrap_err();
    store.disable();
    store.put(&path, payload("v")).await.unwrap();
    store.enable();
    store.get(&path).await.unwrap_err();
    store.set_faults(StoreFaults::none());
    store.get(&path).await.unwrap();
    assert_eq!(store.injected(), 2);
}

#[tokio::test]
async fn kill_fails_every_later_request() {
    let store = faulty(StoreFaults::none(), 10);
    let a = Path::from("a");
    store.put(&a, payload("v")).await.unwrap();
    let mut upload = store.put_multipart(&Path::from("m")).await.unwrap();
    upload.put_part(payload("part")).await.unwrap();
    let listing = store.list(None);

    // A request waiting out its latency when the process dies never reaches the store.
    store.set_faults(StoreFaults::slow(Duration::from_millis(300)));
    let in_flight = tokio::spawn({
        let store = Arc::clone(&store);
        async move { store.put(&Path::from("late"), payload("v")).await }
    });
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    store.kill();
    assert!(store.is_killed());
    let err = in_flight.await.unwrap().unwrap_err();
    assert_eq!(fault_of(&err), Fault::Killed);
    store.disable();

    let errors = [
        store.put(&a, payload("w")).await.unwrap_err(),
        store.get(&a).await.unwrap_err(),
        store.head(&a).await.unwrap_err(),
        store.get_ranges(&a, &[0..1, 1..2]).await.unwrap_err(),
        store.delete(&a).await.unwrap_err(),
        store.copy(&a, &Path::from("b")).await.unwrap_err(),
        store.rename(&a, &Path::from("b")).await.unwrap_err(),
        store.list_with_delimiter(None).await.unwrap_err(),
        store.put_multipart(&Path::from("n")).await.unwrap_err(),
        upload.put_part(payload("more")).await.unwrap_err(),
        upload.complete().await.unwrap_err(),
    ];
    for err in &errors {
        assert_eq!(fault_of(err), Fault::Killed, "{err}");
    }
    let listed: Vec<_> = listing.collect().await;
    assert_eq!(listed.len(), 1);
    assert_eq!(fault_of(listed[0].as_ref().unwrap_err()), Fault::Killed);

    // The store itself is untouched: only the dead process lost its way to it.
    let inner = store.inner();
    assert_eq!(inner.get(&a).await.unwrap().bytes().await.unwrap(), "v");
    assert!(!exists(inner, "late").await);
    assert!(!exists(inner, "m").await);
    assert!(!exists(inner, "b").await);
    assert_eq!(store.injected_of(Fault::Killed), errors.len() as u64 + 2);
}
