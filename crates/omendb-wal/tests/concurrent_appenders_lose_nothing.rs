//! Many concurrent appenders — threads and tokio tasks, durable and buffered — on every backend:
//! after reopening, every acknowledged LSN is there with its payload, in order, with no gaps and
//! no duplicates.

// Test helpers below are not `#[test]` functions, but a failed call in them is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{Backend, backends, read_all};
use omendb_wal::{AppendOptions, Lsn, SyncPolicy, Wal, WalOptions};

const WRITERS: u64 = 16;
const APPENDS: u64 = 100;

fn payload(writer: u64, i: u64) -> Vec<u8> {
    let mut p = writer.to_le_bytes().to_vec();
    p.extend_from_slice(&i.to_le_bytes());
    p.resize(16 + ((writer * 13 + i * 7) % 200) as usize, writer as u8);
    p
}

fn options_for(i: u64) -> AppendOptions {
    if i.is_multiple_of(3) {
        AppendOptions::BUFFERED
    } else {
        AppendOptions::DURABLE
    }
}

/// Checks the reopened log against what was acknowledged.
async fn verify(backend: &Backend, acked: BTreeMap<Lsn, Vec<u8>>, context: &str) {
    let total = WRITERS * APPENDS;
    assert_eq!(
        acked.len() as u64,
        total,
        "{context}: an LSN was acknowledged twice"
    );
    let wal = backend.open(WalOptions::default()).await.unwrap();
    let report = wal.recovery_report();
    assert_eq!(report.records, total, "{context}");
    assert!(
        report.torn_tail.is_none() && report.skipped.is_empty(),
        "{context}"
    );
    let records = read_all(wal.as_ref(), 1).await;
    assert_eq!(records.len() as u64, total, "{context}");
    for (i, record) in records.iter().enumerate() {
        assert_eq!(record.lsn, i as u64 + 1, "{context}: gap or duplicate");
        assert_eq!(&record.payload[..], &acked[&record.lsn][..], "{context}");
    }
}

#[test]
fn concurrent_threads_lose_nothing() {
    let rt = common::runtime();
    for backend in backends() {
        let context = format!("threads on {}", backend.name());
        let wal: Arc<dyn Wal> =
            Arc::from(rt.block_on(backend.open(WalOptions::default())).unwrap());
        let threads: Vec<_> = (0..WRITERS)
            .map(|w| {
                let wal = wal.clone();
                std::thread::spawn(move || {
                    let mut mine = Vec::new();
                    for i in 0..APPENDS {
                        let p = payload(w, i);
                        let lsn = wal.append_blocking(&p, options_for(i)).unwrap();
                        mine.push((lsn, p));
                    }
                    mine
                })
            })
            .collect();
        let mut acked = BTreeMap::new();
        for thread in threads {
            let mine = thread.join().unwrap();
            // One appender's LSNs increase with its appends.
            assert!(mine.windows(2).all(|w| w[0].0 < w[1].0), "{context}");
            acked.extend(mine);
        }
        let stats = wal.stats();
        assert_eq!(stats.appends, WRITERS * APPENDS, "{context}");
        assert!(stats.batches <= stats.appends, "{context}");
        wal.close().unwrap();
        drop(wal);
        rt.block_on(verify(&backend, acked, &context));
    }
}

#[test]
fn concurrent_tokio_tasks_lose_nothing() {
    let rt = common::runtime();
    for backend in backends() {
        let context = format!("tasks on {}", backend.name());
        rt.block_on(async {
            let wal: Arc<dyn Wal> = Arc::from(backend.open(WalOptions::default()).await.unwrap());
            let tasks: Vec<_> = (0..WRITERS * 4)
                .map(|w| {
                    let wal = wal.clone();
                    tokio::spawn(async move {
                        let mut mine = Vec::new();
                        for i in 0..APPENDS / 4 {
                            let p = payload(w, i);
                            let lsn = wal.append(&p, options_for(i)).await.unwrap();
                            mine.push((lsn, p));
                        }
                        mine
                    })
                })
                .collect();
            let mut acked = BTreeMap::new();
            for task in tasks {
                acked.extend(task.await.unwrap());
            }
            wal.close().unwrap();
            drop(wal);
            verify(&backend, acked, &context).await;
        });
    }
}

#[test]
fn buffered_appends_under_every_sync_policy_survive_a_clean_close() {
    let policies = [
        SyncPolicy::EveryCommit,
        SyncPolicy::Interval(std::time::Duration::from_millis(5)),
        SyncPolicy::Never,
    ];
    for policy in policies {
        let dir = tempfile::tempdir().unwrap();
        let options = WalOptions::default().sync_policy(policy);
        let wal = omendb_wal::FileWal::open(dir.path(), options.clone()).unwrap();
        let mut last = 0;
        for i in 0..1000u64 {
            last = wal
                .append(&i.to_le_bytes(), AppendOptions::BUFFERED)
                .unwrap();
        }
        // A waiter forces the sync whatever the policy.
        wal.wait_durable(last).unwrap();
        assert_eq!(Wal::last_durable_lsn(&wal), Some(last), "{policy:?}");
        for i in 1000..2000u64 {
            wal.append(&i.to_le_bytes(), AppendOptions::BUFFERED)
                .unwrap();
        }
        wal.close().unwrap();
        assert_eq!(Wal::last_durable_lsn(&wal), Some(2000), "{policy:?}");
        drop(wal);
        let wal = omendb_wal::FileWal::open(dir.path(), options).unwrap();
        let records: Vec<_> = wal.reader(1).unwrap().map(Result::unwrap).collect();
        assert_eq!(records.len(), 2000, "{policy:?}");
        for (i, r) in records.iter().enumerate() {
            assert_eq!(&r.payload[..], &(i as u64).to_le_bytes(), "{policy:?}");
        }
    }
}

#[test]
fn reads_racing_appends_and_rotation_see_every_earlier_record_in_order() {
    let dir = tempfile::tempdir().unwrap();
    // Small segments, so the reader keeps meeting rotations and the active segment's tail.
    let options = WalOptions::default()
        .segment_bytes(4096)
        .max_record_bytes(1024);
    let wal = Arc::new(omendb_wal::FileWal::open(dir.path(), options).unwrap());
    let appenders: Vec<_> = (0..4u64)
        .map(|w| {
            let wal = wal.clone();
            std::thread::spawn(move || {
                for i in 0..500 {
                    wal.append(&payload(w, i), options_for(i)).unwrap();
                }
            })
        })
        .collect();
    let mut reads = 0;
    while !appenders.iter().all(|a| a.is_finished()) || reads == 0 {
        let before = Wal::last_lsn(wal.as_ref()).unwrap_or(0);
        let from = 1 + before / 2;
        let got: Vec<Lsn> = wal.reader(from).unwrap().map(|r| r.unwrap().lsn).collect();
        // Everything appended before the read began is there, in order, without gaps.
        let at_least = (before + 1).saturating_sub(from);
        assert!(got.len() as u64 >= at_least, "{} < {at_least}", got.len());
        for (i, lsn) in got.iter().enumerate() {
            assert_eq!(*lsn, from + i as u64);
        }
        reads += 1;
    }
    for a in appenders {
        a.join().unwrap();
    }
    assert_eq!(wal.reader(1).unwrap().count(), 2000);
}
