//! Two object-store writers racing on one prefix: every LSN is won by exactly one of them, the
//! loser is fenced (poisoned with [`Error::Fenced`]) and nothing it lost is acknowledged.

// Test helpers below are not `#[test]` functions, but a failed call in them is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{Backend, payloads, read_all};
use omendb_wal::{AppendOptions, Lsn, Wal, WalOptions};

const TASKS: u64 = 8;
const APPENDS: u64 = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writers_win_each_lsn_exactly_once() {
    for round in 0..5 {
        for backend in [Backend::memory(), Backend::local()] {
            let context = format!("{} round {round}", backend.name());
            let a: Arc<dyn Wal> = Arc::from(backend.open(WalOptions::default()).await.unwrap());
            let b: Arc<dyn Wal> = Arc::from(backend.open(WalOptions::default()).await.unwrap());
            let mut tasks = Vec::new();
            for (writer, wal) in [(0u8, a.clone()), (1u8, b.clone())] {
                for t in 0..TASKS {
                    let wal = wal.clone();
                    tasks.push(tokio::spawn(async move {
                        let mut acked = Vec::new();
                        let mut errors = Vec::new();
                        for i in 0..APPENDS {
                            let p = format!("writer {writer} task {t} append {i}").into_bytes();
                            match wal.append(&p, AppendOptions::DURABLE).await {
                                Ok(lsn) => acked.push((lsn, p)),
                                Err(e) => errors.push(e),
                            }
                        }
                        (writer, acked, errors)
                    }));
                }
            }
            let mut acked: BTreeMap<Lsn, Vec<u8>> = BTreeMap::new();
            let mut fenced_writers = [false; 2];
            for task in tasks {
                let (writer, mine, errors) = task.await.unwrap();
                for (lsn, p) in mine {
                    let earlier = acked.insert(lsn, p);
                    assert!(earlier.is_none(), "{context}: LSN {lsn} acknowledged twice");
                }
                for e in &errors {
                    assert!(e.is_fenced(), "{context}: unexpected error {e}");
                    fenced_writers[writer as usize] = true;
                }
            }
            // Both started at LSN 1, so their first batches collide: exactly one is fenced.
            assert!(
                fenced_writers[0] ^ fenced_writers[1],
                "{context}: {fenced_writers:?}"
            );
            let _ = a.close();
            let _ = b.close();
            drop((a, b));

            let wal = backend.open(WalOptions::default()).await.unwrap();
            let records = read_all(wal.as_ref(), 1).await;
            for (i, r) in records.iter().enumerate() {
                assert_eq!(r.lsn, i as u64 + 1, "{context}: gap or duplicate");
            }
            for (lsn, p) in &acked {
                let r = &records[*lsn as usize - 1];
                assert_eq!(
                    &r.payload[..],
                    &p[..],
                    "{context}: LSN {lsn} holds another write"
                );
            }
            assert!(!acked.is_empty(), "{context}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_opened_behind_another_is_fenced_at_its_first_batch() {
    for backend in [Backend::memory(), Backend::local()] {
        let name = backend.name();
        let old = backend.open(WalOptions::default()).await.unwrap();
        old.append(b"one", AppendOptions::DURABLE).await.unwrap();
        // A new writer takes over (it recovers LSN 1); the old one, a zombie, keeps writing.
        let new = backend.open(WalOptions::default()).await.unwrap();
        assert_eq!(durable(new.as_ref(), b"two (new)").await, 2, "{name}");
        assert_fenced(old.as_ref(), b"two (old)", name).await;
        assert_fenced(old.as_ref(), b"three (old)", name).await;
        assert_eq!(durable(new.as_ref(), b"three (new)").await, 3, "{name}");
        assert_eq!(
            payloads(new.as_ref(), 1).await,
            vec![
                b"one".to_vec(),
                b"two (new)".to_vec(),
                b"three (new)".to_vec()
            ]
        );
    }
}

/// A writer that claims the log at open shuts out the batch an earlier writer had in flight: the
/// log it read at open stays the whole log before its own records. If that batch lands between
/// the open and the claim, the claim fails and a reopen takes the batch in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_log_takes_no_late_batch_from_an_earlier_writer() {
    for backend in [Backend::memory(), Backend::local()] {
        let name = backend.name();
        let old = backend.open(WalOptions::default()).await.unwrap();
        old.append(b"one", AppendOptions::DURABLE).await.unwrap();

        // Claimed before the old writer's next batch: the batch cannot land.
        let new = backend.open(WalOptions::default()).await.unwrap();
        new.claim().await.unwrap();
        assert_eq!(new.last_lsn(), Some(2), "{name}: the claim takes LSN 2");
        assert_fenced(old.as_ref(), b"late (old)", name).await;
        assert_eq!(durable(new.as_ref(), b"three (new)").await, 3, "{name}");
        assert_eq!(
            payloads(new.as_ref(), 1).await,
            vec![b"one".to_vec(), Vec::new(), b"three (new)".to_vec()],
            "{name}"
        );
        new.close().unwrap();
        drop((old, new));

        // The old writer's batch lands between the open and the claim: the claim is fenced.
        let old = backend.open(WalOptions::default()).await.unwrap();
        let new = backend.open(WalOptions::default()).await.unwrap();
        assert_eq!(durable(old.as_ref(), b"four (old)").await, 4, "{name}");
        let err = new.claim().await.unwrap_err();
        assert!(err.is_fenced(), "{name}: {err}");
        drop((old, new));
        let reopened = backend.open(WalOptions::default()).await.unwrap();
        reopened.claim().await.unwrap();
        assert_eq!(
            payloads(reopened.as_ref(), 4).await,
            vec![b"four (old)".to_vec(), Vec::new()],
            "{name}"
        );
    }
}

/// A writer that slept through a takeover stays fenced after the new writer truncated the log
/// past the claim that fenced it: truncation retires a claim (an empty object under its name)
/// instead of deleting it, so the old writer's next batch, which can only take that name, is
/// refused rather than acknowledged below the log the new writer reads. The retired fences are
/// no records: a reopen reads the log after them, and a log that keeps nothing after them goes
/// on above the newest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fence_outlives_the_truncation_of_its_claim() {
    for backend in [Backend::memory(), Backend::local()] {
        let name = backend.name();
        let old = backend.open(WalOptions::default()).await.unwrap();
        assert_eq!(durable(old.as_ref(), b"one (old)").await, 1, "{name}");
        let new = backend.open(WalOptions::default()).await.unwrap();
        new.claim().await.unwrap();
        for (lsn, payload) in [(3, &b"three"[..]), (4, b"four"), (5, b"five")] {
            assert_eq!(durable(new.as_ref(), payload).await, lsn, "{name}");
        }
        new.truncate_before(5).await.unwrap();
        let units = backend.units().await;
        assert_eq!(units.len(), 2, "{name}: {units:?}");
        assert!(backend.read_unit(&units[0]).await.is_empty(), "{name}");
        // The old writer's next batch is LSN 2's, the claim's name.
        assert_fenced(old.as_ref(), b"two (old)", name).await;
        assert_eq!(payloads(new.as_ref(), 1).await, vec![b"five".to_vec()]);
        new.close().unwrap();
        drop((old, new));

        let reopened = backend.open(WalOptions::default()).await.unwrap();
        assert_eq!(reopened.last_lsn(), Some(5), "{name}");
        assert_eq!(payloads(reopened.as_ref(), 1).await, vec![b"five".to_vec()]);
        // A second takeover's claim, truncated too: two fences, each still refusing.
        reopened.claim().await.unwrap();
        assert_eq!(durable(reopened.as_ref(), b"seven").await, 7, "{name}");
        reopened.truncate_before(7).await.unwrap();
        reopened.close().unwrap();
        drop(reopened);
        let units = backend.units().await;
        assert_eq!(units.len(), 3, "{name}: {units:?}");
        assert!(backend.read_unit(&units[1]).await.is_empty(), "{name}");

        // Every object after the fences gone (an operator's delete): the log starts above the
        // newest fence, not at LSN 1.
        backend.delete_unit(&units[2]).await;
        let bare = backend.open(WalOptions::default()).await.unwrap();
        assert_eq!(bare.last_lsn(), Some(6), "{name}");
        assert_eq!(durable(bare.as_ref(), b"after").await, 7, "{name}");
    }
}

/// A local log shuts out other writers by its lock, so claiming it writes nothing.
#[tokio::test]
async fn claiming_a_local_log_writes_nothing() {
    let backend = Backend::file();
    let wal = backend.open(WalOptions::default()).await.unwrap();
    wal.append(b"one", AppendOptions::DURABLE).await.unwrap();
    wal.claim().await.unwrap();
    assert_eq!(wal.last_lsn(), Some(1));
}

/// Appends `payload` durably; its LSN.
async fn durable(wal: &dyn Wal, payload: &[u8]) -> Lsn {
    wal.append(payload, AppendOptions::DURABLE).await.unwrap()
}

/// Appends `payload` durably and checks that another writer's object refused it.
async fn assert_fenced(wal: &dyn Wal, payload: &[u8], backend: &str) {
    let err = wal
        .append(payload, AppendOptions::DURABLE)
        .await
        .unwrap_err();
    assert!(err.is_fenced(), "{backend}: {err}");
}
