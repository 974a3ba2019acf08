//! A flipped bit anywhere in a middle record, in every recovery mode, on every backend: never
//! silently skipped by default; each mode does what it promises; the log is usable afterwards.
// Test helpers below are not `#[test]` functions, but a failed call in them is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Backend, MODES, backends, lsns, payload, read_all};
use omendb_wal::{AppendOptions, Error, ErrorKind, RecoveryMode, WalOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bit_in_a_middle_record_is_handled_by_every_mode() {
    for backend in backends() {
        check_backend(&backend).await;
    }
}

async fn check_backend(backend: &Backend) {
    let wal = backend.open(WalOptions::default()).await.unwrap();
    for i in 1..=5 {
        wal.append(&payload(i), AppendOptions::DURABLE)
            .await
            .unwrap();
    }
    wal.close().unwrap();
    drop(wal);
    let pristine = backend.snapshot().await;
    let (unit, start, len) = backend.locate(3).await;
    let original = backend.read_unit(&unit).await;
    for mode in MODES {
        for at in 0..len {
            let context = format!("{} {mode:?} bit flip at byte {at} of LSN 3", backend.name());
            backend.restore(&pristine).await;
            let mut bytes = original.clone();
            bytes[start + at] ^= 1 << (at % 8);
            backend.write_unit(&unit, &bytes).await;
            check_flip(backend, mode, start as u64, &context).await;
        }
    }
}

async fn check_flip(backend: &Backend, mode: RecoveryMode, start: u64, context: &str) {
    let before = backend.snapshot().await;
    let opened = backend
        .open(WalOptions::default().recovery_mode(mode))
        .await;
    match mode {
        RecoveryMode::TolerateTornTail | RecoveryMode::AbsoluteConsistency => {
            let err = opened.expect_err(context);
            assert!(
                matches!(err, Error::Corruption(ref d) if d.offset == start),
                "{context}: {err}"
            );
            assert_eq!(err.kind(), ErrorKind::Corrupt);
            assert!(
                backend.snapshot().await == before,
                "{context}: a failed recovery changed the log"
            );
        }
        RecoveryMode::PointInTime => {
            let wal = opened.expect(context);
            let report = wal.recovery_report().clone();
            assert_eq!(report.records, 2, "{context}");
            assert_eq!(report.last_lsn, Some(2), "{context}");
            assert_eq!(
                report.stopped_at.as_ref().map(|d| d.offset),
                Some(start),
                "{context}"
            );
            assert!(report.bytes_truncated > 0, "{context}");
            assert_eq!(
                lsns(&read_all(wal.as_ref(), 1).await),
                vec![1, 2],
                "{context}"
            );
            assert_eq!(wal.append(b"new", AppendOptions::DURABLE).await.unwrap(), 3);
            wal.close().unwrap();
            drop(wal);
            let wal = backend.open(WalOptions::default()).await.expect(context);
            assert_eq!(wal.recovery_report().records, 3, "{context}");
            let records = read_all(wal.as_ref(), 1).await;
            assert_eq!(lsns(&records), vec![1, 2, 3], "{context}");
            assert_eq!(&records[2].payload[..], b"new", "{context}");
        }
        RecoveryMode::SkipCorrupt => {
            let wal = opened.expect(context);
            let report = wal.recovery_report().clone();
            assert_eq!(report.records, 4, "{context}");
            assert_eq!(report.last_lsn, Some(5), "{context}");
            assert_eq!(
                report.skipped.first().map(|d| d.offset),
                Some(start),
                "{context}"
            );
            assert!(report.torn_tail.is_none(), "{context}");
            let records = read_all(wal.as_ref(), 1).await;
            assert_eq!(lsns(&records), vec![1, 2, 4, 5], "{context}");
            assert_eq!(&records[2].payload[..], &payload(4)[..], "{context}");
            assert_eq!(wal.append(b"new", AppendOptions::DURABLE).await.unwrap(), 6);
            wal.close().unwrap();
            drop(wal);
            // Reopened, the damage is still there: skipped again, never read as data.
            let wal = backend
                .open(WalOptions::default().recovery_mode(mode))
                .await
                .expect(context);
            assert!(!wal.recovery_report().skipped.is_empty(), "{context}");
            assert_eq!(
                lsns(&read_all(wal.as_ref(), 1).await),
                vec![1, 2, 4, 5, 6],
                "{context}"
            );
            wal.close().unwrap();
            drop(wal);
            // And the default mode still refuses to skip it.
            let err = backend
                .open(WalOptions::default())
                .await
                .expect_err(context);
            assert!(matches!(err, Error::Corruption(_)), "{context}: {err}");
        }
        _ => unreachable!(),
    }
}

/// An object log whose only object is damaged from its first record (a header that fails its
/// check, or a first record that does): the explicit modes keep none of it, and an empty record
/// at its first LSN holds its place, so a log reopened before anything else was written goes on
/// there and not at LSN 1 (below LSNs it had used, and a database's manifest had flushed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_keeps_nothing_of_its_first_object_goes_on_where_it_began() {
    for backend in [Backend::memory(), Backend::local()] {
        for (mode, at) in [
            (RecoveryMode::PointInTime, Damage::Header),
            (RecoveryMode::PointInTime, Damage::FirstRecord),
            (RecoveryMode::SkipCorrupt, Damage::Header),
            (RecoveryMode::SkipCorrupt, Damage::FirstRecord),
        ] {
            let context = format!("{} {mode:?} {at:?}", backend.name());
            let units = backend.units().await;
            for unit in &units {
                backend.delete_unit(unit).await;
            }
            // Five objects, the first four truncated: the log begins at LSN 5.
            let wal = backend.open(WalOptions::default()).await.unwrap();
            let first = wal.last_lsn().unwrap_or(0) + 1;
            for i in 0..5 {
                wal.append(&payload(i), AppendOptions::DURABLE)
                    .await
                    .unwrap();
            }
            let last = first + 4;
            wal.truncate_before(last).await.unwrap();
            wal.close().unwrap();
            drop(wal);
            let (unit, start, _) = backend.locate(1).await;
            let mut bytes = backend.read_unit(&unit).await;
            match at {
                Damage::Header => bytes[3] ^= 1,
                Damage::FirstRecord => bytes[start + 20] ^= 1,
            }
            backend.write_unit(&unit, &bytes).await;

            let wal = backend
                .open(WalOptions::default().recovery_mode(mode))
                .await
                .expect(&context);
            assert_eq!(wal.last_lsn(), Some(last), "{context}");
            // Closed before anything else was written: as a crash would leave it.
            wal.close().unwrap();
            drop(wal);
            let wal = backend.open(WalOptions::default()).await.expect(&context);
            assert_eq!(wal.last_lsn(), Some(last), "{context}");
            assert_eq!(
                wal.append(b"next", AppendOptions::DURABLE).await.unwrap(),
                last + 1,
                "{context}"
            );
            wal.close().unwrap();
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Damage {
    Header,
    FirstRecord,
}
