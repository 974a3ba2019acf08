//! The behaviour every [`Wal`] promises, run against local segment files, the in-memory object
//! store and the local-file object store: LSNs, durability, reads, reopen, truncation, bad input.

// Test helpers below are not `#[test]` functions, but a failed call in them is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{backends, lsns, payload, read_all};
use omendb_wal::{AppendOptions, Error, ErrorKind, WalOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_read_back_in_order_and_survive_reopen() {
    for backend in backends() {
        let name = backend.name();
        let wal = backend.open(WalOptions::default()).await.unwrap();
        assert_eq!(wal.last_lsn(), None, "{name}");
        assert_eq!(wal.last_durable_lsn(), None, "{name}");
        assert_eq!(wal.recovery_report().records, 0, "{name}");
        for i in 1..=10 {
            let options = if i % 2 == 0 {
                AppendOptions::BUFFERED
            } else {
                AppendOptions::DURABLE
            };
            assert_eq!(wal.append(&payload(i), options).await.unwrap(), i, "{name}");
        }
        // A read sees every append made before it, buffered ones included.
        let records = read_all(wal.as_ref(), 1).await;
        assert_eq!(lsns(&records), (1..=10).collect::<Vec<_>>(), "{name}");
        for r in &records {
            assert_eq!(&r.payload[..], &payload(r.lsn)[..], "{name}");
        }
        assert_eq!(
            lsns(&read_all(wal.as_ref(), 7).await),
            vec![7, 8, 9, 10],
            "{name}"
        );
        assert!(read_all(wal.as_ref(), 11).await.is_empty(), "{name}");
        wal.wait_durable(10).await.unwrap();
        assert_eq!(wal.last_durable_lsn(), Some(10), "{name}");
        assert_eq!(wal.last_lsn(), Some(10), "{name}");
        wal.close().unwrap();
        // Closed: appends are refused with a fatal error.
        let err = wal.append(b"x", AppendOptions::DURABLE).await.unwrap_err();
        assert!(matches!(err, Error::Closed), "{name}: {err}");
        assert_eq!(err.kind(), ErrorKind::Fatal);
        drop(wal);

        let wal = backend.open(WalOptions::default()).await.unwrap();
        let report = wal.recovery_report();
        assert_eq!(
            (report.records, report.first_lsn, report.last_lsn),
            (10, Some(1), Some(10))
        );
        assert_eq!(report.bytes_truncated, 0, "{name}");
        assert_eq!(wal.last_durable_lsn(), Some(10), "{name}");
        assert_eq!(
            wal.append(b"eleven", AppendOptions::DURABLE).await.unwrap(),
            11
        );
        assert_eq!(lsns(&read_all(wal.as_ref(), 1).await).len(), 11, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncation_keeps_everything_from_the_lsn_on() {
    for backend in backends() {
        let name = backend.name();
        // Small segments so the local log has several; the object log has one object per append.
        let options = WalOptions::default()
            .segment_bytes(512)
            .max_record_bytes(256);
        let wal = backend.open(options.clone()).await.unwrap();
        for i in 1..=40 {
            wal.append(&payload(i), AppendOptions::DURABLE)
                .await
                .unwrap();
        }
        let units = backend.units().await.len();
        wal.truncate_before(25).await.unwrap();
        assert!(
            backend.units().await.len() < units,
            "{name}: nothing was deleted"
        );
        let records = read_all(wal.as_ref(), 1).await;
        let first = records[0].lsn;
        assert!(first <= 25, "{name}: LSN 25 was deleted");
        assert_eq!(lsns(&records), (first..=40).collect::<Vec<_>>(), "{name}");
        wal.close().unwrap();
        drop(wal);
        let wal = backend.open(options).await.unwrap();
        assert_eq!(wal.recovery_report().first_lsn, Some(first), "{name}");
        assert_eq!(wal.append(b"41", AppendOptions::DURABLE).await.unwrap(), 41);
        assert_eq!(
            lsns(&read_all(wal.as_ref(), 25).await),
            (25..=41).collect::<Vec<_>>()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_typed_error_and_changes_nothing() {
    for backend in backends() {
        let name = backend.name();
        let options = WalOptions::default().max_record_bytes(1000);
        let wal = backend.open(options).await.unwrap();
        wal.append(b"ok", AppendOptions::DURABLE).await.unwrap();
        let err = wal
            .append(&[0u8; 1001], AppendOptions::DURABLE)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::RecordTooLarge {
                    len: 1001,
                    max: 1000
                }
            ),
            "{name}"
        );
        assert_eq!(err.kind(), ErrorKind::BadInput);
        // Not poisoned by bad input: the next append gets the next LSN.
        assert_eq!(
            wal.append(&[0u8; 1000], AppendOptions::DURABLE)
                .await
                .unwrap(),
            2
        );
        let err = wal.wait_durable(3).await.unwrap_err();
        assert!(
            matches!(err, Error::LsnOutOfRange { lsn: 3, last: 2 }),
            "{name}: {err}"
        );
        assert_eq!(err.kind(), ErrorKind::BadInput);
        assert_eq!(read_all(wal.as_ref(), 1).await.len(), 2, "{name}");
    }
    let options = WalOptions::default()
        .segment_bytes(100)
        .max_record_bytes(100);
    let err = backends()[0].open(options).await.unwrap_err();
    assert!(matches!(err, Error::InvalidOptions(_)), "{err}");
    assert_eq!(err.kind(), ErrorKind::BadInput);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_made_now_share_the_lsns_and_rules_of_buffered_appends() {
    for backend in backends() {
        let name = backend.name();
        let options = WalOptions::default().max_record_bytes(1000);
        let wal = backend.open(options.clone()).await.unwrap();
        for i in 1..=6 {
            let lsn = if i % 3 == 0 {
                wal.append(&payload(i), AppendOptions::BUFFERED)
                    .await
                    .unwrap()
            } else {
                let appended = wal.append_buffered_now(&payload(i));
                appended
                    .expect("both logs append buffered records now")
                    .unwrap()
            };
            assert_eq!(lsn, i, "{name}");
        }
        // Bad input: a typed error, no LSN taken.
        let err = wal.append_buffered_now(&[0u8; 1001]).unwrap().unwrap_err();
        assert!(
            matches!(err, Error::RecordTooLarge { len: 1001, .. }),
            "{name}: {err}"
        );
        assert_eq!(err.kind(), ErrorKind::BadInput);
        // A buffered record made now becomes durable like any other.
        wal.wait_durable(6).await.unwrap();
        let records = read_all(wal.as_ref(), 1).await;
        assert_eq!(lsns(&records), (1..=6).collect::<Vec<_>>(), "{name}");
        for r in &records {
            assert_eq!(&r.payload[..], &payload(r.lsn)[..], "{name}");
        }
        wal.close().unwrap();
        let err = wal.append_buffered_now(b"late").unwrap().unwrap_err();
        assert!(matches!(err, Error::Closed), "{name}: {err}");
        drop(wal);

        let wal = backend.open(options).await.unwrap();
        assert_eq!(wal.recovery_report().last_lsn, Some(6), "{name}");
        assert_eq!(lsns(&read_all(wal.as_ref(), 1).await).len(), 6, "{name}");
    }
}
