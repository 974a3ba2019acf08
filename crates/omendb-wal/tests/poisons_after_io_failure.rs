//! The poison rule, proven with injected faults: after a failed write, a failed sync or a short
//! write, nothing unsynced is acknowledged, the failed sync is never retried, every later append
//! is refused, and reopening recovers every acknowledged record.

// Test helpers below are not `#[test]` functions, but a failed call in them is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::{FaultyIo, payload};
use futures::TryStreamExt;
use omendb_wal::{
    AppendOptions, Error, ErrorKind, FileWal, RecoveryMode, SyncPolicy, Wal, WalOptions,
};

#[derive(Clone, Copy, Debug)]
enum Fault {
    FailedWrite,
    FailedSync,
    ShortWrite,
}

fn arm(io: &FaultyIo, fault: Fault) {
    let flag = match fault {
        Fault::FailedWrite => &io.faults.fail_append,
        Fault::FailedSync => &io.faults.fail_sync,
        Fault::ShortWrite => &io.faults.short_append,
    };
    flag.store(true, Ordering::SeqCst);
}

fn assert_poisoned(result: omendb_wal::Result<u64>, context: &str) {
    match result {
        Err(e @ Error::Poisoned { .. }) => assert_eq!(e.kind(), ErrorKind::Fatal, "{context}"),
        other => panic!("{context}: expected a poisoned log, got {other:?}"),
    }
}

#[test]
fn a_failed_durable_append_is_never_acknowledged_and_poisons_the_log() {
    for fault in [Fault::FailedWrite, Fault::FailedSync, Fault::ShortWrite] {
        let context = format!("{fault:?}");
        let dir = tempfile::tempdir().unwrap();
        let io = FaultyIo::new();
        let wal =
            FileWal::open_with_io(Arc::new(io.clone()), dir.path(), WalOptions::default()).unwrap();
        for i in 1..=3 {
            assert_eq!(wal.append(&payload(i), AppendOptions::DURABLE).unwrap(), i);
        }
        arm(&io, fault);
        assert_poisoned(wal.append(&payload(4), AppendOptions::DURABLE), &context);
        assert_eq!(Wal::last_durable_lsn(&wal), Some(3), "{context}");
        let syncs = io.faults.syncs.load(Ordering::SeqCst);
        let appends = io.faults.appends.load(Ordering::SeqCst);
        // Every later append is refused, durable or not, and touches no file.
        assert_poisoned(wal.append(&payload(5), AppendOptions::DURABLE), &context);
        assert_poisoned(wal.append(&payload(5), AppendOptions::BUFFERED), &context);
        let now = Wal::append_buffered_now(&wal, &payload(5)).expect("a file log appends now");
        assert_poisoned(now, &context);
        assert!(wal.wait_durable(4).is_err(), "{context}");
        let err = wal.close().unwrap_err();
        assert!(matches!(err, Error::Poisoned { .. }), "{context}: {err}");
        // The failed sync is never retried (its outcome would prove nothing).
        assert_eq!(io.faults.syncs.load(Ordering::SeqCst), syncs, "{context}");
        assert_eq!(
            io.faults.appends.load(Ordering::SeqCst),
            appends,
            "{context}"
        );
        drop(wal);

        // Reopened: every acknowledged record is there. Record 4 was never acknowledged; after a
        // failed sync its bytes may still be in the file, which is allowed.
        let wal = FileWal::open(dir.path(), WalOptions::default()).unwrap();
        let report = Wal::recovery_report(&wal).clone();
        let records: Vec<_> = wal.reader(1).unwrap().map(Result::unwrap).collect();
        match fault {
            Fault::FailedWrite => assert_eq!(records.len(), 3, "{context}"),
            Fault::FailedSync => assert!((3..=4).contains(&records.len()), "{context}"),
            Fault::ShortWrite => {
                assert_eq!(records.len(), 3, "{context}");
                let torn = report
                    .torn_tail
                    .expect("the half-written record is a torn tail");
                assert!(torn.len > 0, "{context}");
            }
        }
        for (i, record) in records.iter().enumerate() {
            assert_eq!(record.lsn, i as u64 + 1, "{context}");
            assert_eq!(&record.payload[..], &payload(record.lsn)[..], "{context}");
        }
        // And the log works again.
        let next = records.len() as u64 + 1;
        assert_eq!(wal.append(b"again", AppendOptions::DURABLE).unwrap(), next);
    }
}

#[test]
fn a_short_write_is_refused_by_absolute_consistency_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let io = FaultyIo::new();
    let wal =
        FileWal::open_with_io(Arc::new(io.clone()), dir.path(), WalOptions::default()).unwrap();
    wal.append(b"kept", AppendOptions::DURABLE).unwrap();
    arm(&io, Fault::ShortWrite);
    assert!(
        wal.append(b"half of this is written", AppendOptions::DURABLE)
            .is_err()
    );
    drop(wal);
    let options = WalOptions::default().recovery_mode(RecoveryMode::AbsoluteConsistency);
    let err = FileWal::open(dir.path(), options).unwrap_err();
    assert!(matches!(err, Error::Corruption(_)), "{err}");
}

#[test]
fn a_failed_background_sync_fails_every_waiter_for_buffered_records() {
    let dir = tempfile::tempdir().unwrap();
    let io = FaultyIo::new();
    let options = WalOptions::default().sync_policy(SyncPolicy::Never);
    let wal = FileWal::open_with_io(Arc::new(io.clone()), dir.path(), options).unwrap();
    let first = wal.append(b"synced", AppendOptions::DURABLE).unwrap();
    let mut last = first;
    for i in 0..100u64 {
        last = wal
            .append(&i.to_le_bytes(), AppendOptions::BUFFERED)
            .unwrap();
    }
    arm(&io, Fault::FailedSync);
    let err = wal.wait_durable(last).unwrap_err();
    assert!(matches!(err, Error::Poisoned { .. }), "{err}");
    assert_eq!(Wal::last_durable_lsn(&wal), Some(first));
    // Durability of what was synced before the failure is still reported as such.
    wal.wait_durable(first).unwrap();
    assert_poisoned(
        wal.append(b"later", AppendOptions::BUFFERED),
        "after failed sync",
    );
}

#[test]
fn a_failed_write_under_async_appenders_fails_them_all() {
    let rt = common::runtime();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let io = FaultyIo::new();
        let wal = Arc::new(
            FileWal::open_with_io(Arc::new(io.clone()), dir.path(), WalOptions::default()).unwrap(),
        );
        Wal::append(wal.as_ref(), b"ok", AppendOptions::DURABLE)
            .await
            .unwrap();
        arm(&io, Fault::FailedWrite);
        let tasks: Vec<_> = (0..16u64)
            .map(|i| {
                let wal = wal.clone();
                tokio::spawn(async move {
                    Wal::append(wal.as_ref(), &i.to_le_bytes(), AppendOptions::DURABLE).await
                })
            })
            .collect();
        // The first write after arming fails, so none of them is acknowledged.
        for task in tasks {
            let result = task.await.unwrap();
            assert!(matches!(result, Err(Error::Poisoned { .. })), "{result:?}");
        }
        assert_eq!(Wal::last_durable_lsn(wal.as_ref()), Some(1));
        let later = Wal::append(wal.as_ref(), b"later", AppendOptions::BUFFERED).await;
        assert_poisoned(later, "after a failed write");
        // What was written before the failure is still read (a change stream drains it); the
        // read failed outright while LSNs the failed write took were never written.
        let read: Vec<_> = Wal::read_from(wal.as_ref(), 1).try_collect().await.unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!((read[0].lsn, &read[0].payload[..]), (1, &b"ok"[..]));
    });
}

/// A writer thread that panics (a bug in an I/O implementation) fails the appenders waiting on
/// it, blocking and async, instead of leaving them waiting for good.
#[test]
fn a_writer_thread_that_panics_fails_its_waiters() {
    let dir = tempfile::tempdir().unwrap();
    let io = FaultyIo::new();
    let wal = Arc::new(
        FileWal::open_with_io(Arc::new(io.clone()), dir.path(), WalOptions::default()).unwrap(),
    );
    assert_eq!(wal.append(&payload(1), AppendOptions::DURABLE).unwrap(), 1);
    io.faults.panic_sync.store(true, Ordering::SeqCst);
    let (done, outcome) = std::sync::mpsc::channel();
    std::thread::spawn({
        let wal = Arc::clone(&wal);
        move || {
            let _ = done.send(wal.append(&payload(2), AppendOptions::DURABLE));
        }
    });
    let outcome = outcome
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the durable append still waits 10 s after its writer panicked");
    assert_poisoned(outcome, "a blocking appender");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let later = runtime.block_on(async {
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            Wal::append(wal.as_ref(), &payload(3), AppendOptions::DURABLE),
        )
        .await
        .expect("an async append waits for a writer that is gone")
    });
    assert_poisoned(later, "an async appender");
    assert!(wal.close().is_err());
    drop(wal);
    // The acknowledged record is there; the unacknowledged one was written before the panicking
    // sync, so it may be too.
    let wal = FileWal::open(dir.path(), WalOptions::default()).unwrap();
    let last = Wal::last_durable_lsn(&wal);
    assert!(matches!(last, Some(1 | 2)), "{last:?}");
}

/// After a failed `fdatasync`, Linux marks the pages that missed the disk clean with the new
/// bytes still in them: a reopen reads those records, and a sync on its new handle finds nothing
/// to write. Recovery therefore writes the last segment's records again before it syncs them, so
/// the sync covers them (the effect itself needs a real failing disk; this checks the write).
#[test]
fn recovery_writes_the_last_segments_records_again_before_syncing_them() {
    let dir = tempfile::tempdir().unwrap();
    let wal = FileWal::open(dir.path(), WalOptions::default()).unwrap();
    for i in 1..=10 {
        wal.append(&payload(i), AppendOptions::DURABLE).unwrap();
    }
    wal.close().unwrap();
    drop(wal);
    let io = FaultyIo::new();
    let wal =
        FileWal::open_with_io(Arc::new(io.clone()), dir.path(), WalOptions::default()).unwrap();
    assert_eq!(
        io.faults.appends.load(Ordering::SeqCst),
        1,
        "one write of the records"
    );
    assert!(io.faults.syncs.load(Ordering::SeqCst) >= 1);
    let records: Vec<_> = futures::executor::block_on(wal.read_from(1).try_collect()).unwrap();
    assert_eq!(records.len(), 10);
    for r in &records {
        assert_eq!(&r.payload[..], &payload(r.lsn)[..]);
    }
    wal.append(&payload(11), AppendOptions::DURABLE).unwrap();
    wal.close().unwrap();
    drop(wal);
    let wal = FileWal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(wal.recovery_report().records, 11);
    assert!(wal.recovery_report().torn_tail.is_none());
}
