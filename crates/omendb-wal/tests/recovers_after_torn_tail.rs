//! A torn last record — cut at every byte offset, or overwritten with garbage from every byte
//! offset — in every recovery mode, on every backend; then the log is reopened and used again.
// Test helpers below are not `#[test]` functions, but a failed call in them is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Backend, MODES, backends, lsns, payload, read_all};
use omendb_wal::{AppendOptions, Error, ErrorKind, RecoveryMode, WalOptions};

#[derive(Clone, Copy, Debug)]
enum Tear {
    /// The file ends `cut` bytes into the last record.
    Cut,
    /// The last record is whole in length but garbage from `cut` on.
    Garbage,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_last_record_is_handled_by_every_mode_at_every_offset() {
    for backend in backends() {
        check_backend(&backend).await;
    }
}

async fn check_backend(backend: &Backend) {
    let wal = backend.open(WalOptions::default()).await.unwrap();
    for i in 1..=3 {
        assert_eq!(
            wal.append(&payload(i), AppendOptions::DURABLE)
                .await
                .unwrap(),
            i
        );
    }
    wal.close().unwrap();
    drop(wal);
    let pristine = backend.snapshot().await;
    let (unit, start, len) = backend.locate(3).await;
    let original = backend.read_unit(&unit).await;
    assert_eq!(original.len(), start + len, "the last record ends its unit");

    for mode in MODES {
        for tear in [Tear::Cut, Tear::Garbage] {
            let cuts = match tear {
                Tear::Cut => 1..len,
                Tear::Garbage => 0..len,
            };
            for cut in cuts {
                let context = format!("{} {mode:?} {tear:?} at {cut}", backend.name());
                backend.restore(&pristine).await;
                let mut bytes = original.clone();
                match tear {
                    Tear::Cut => bytes.truncate(start + cut),
                    Tear::Garbage => bytes[start + cut..].iter_mut().for_each(|b| *b ^= 0xA5),
                }
                backend.write_unit(&unit, &bytes).await;
                let removed = (bytes.len() - start) as u64;
                check_torn(backend, mode, removed, start as u64, &context).await;
            }
        }
    }
}

async fn check_torn(
    backend: &Backend,
    mode: RecoveryMode,
    removed: u64,
    start: u64,
    context: &str,
) {
    let options = WalOptions::default().recovery_mode(mode);
    let opened = backend.open(options).await;
    // An object is put whole, so a damaged one is not a torn write but damage to acknowledged
    // records: the default mode refuses it as the strict one does.
    let refused = mode == RecoveryMode::AbsoluteConsistency
        || (mode == RecoveryMode::TolerateTornTail && !matches!(backend, Backend::File(_)));
    if refused {
        let err = opened.expect_err(context);
        assert!(
            matches!(err, Error::Corruption(ref d) if d.offset == start),
            "{context}: {err}"
        );
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{context}");
        return;
    }
    let wal = opened.expect(context);
    let report = wal.recovery_report().clone();
    assert_eq!(report.records, 2, "{context}");
    assert_eq!(report.last_lsn, Some(2), "{context}");
    assert_eq!(report.bytes_truncated, removed, "{context}");
    let damage = match mode {
        RecoveryMode::PointInTime => {
            assert!(report.torn_tail.is_none(), "{context}");
            report.stopped_at.clone()
        }
        _ => {
            assert!(report.stopped_at.is_none(), "{context}");
            report.torn_tail.clone()
        }
    };
    assert_eq!(damage.expect(context).offset, start, "{context}");
    assert!(report.skipped.is_empty(), "{context}");
    assert_eq!(
        lsns(&read_all(wal.as_ref(), 1).await),
        vec![1, 2],
        "{context}"
    );

    // The log goes on from the last intact record, and the next recovery finds nothing wrong.
    assert_eq!(
        wal.append(b"after", AppendOptions::DURABLE).await.unwrap(),
        3,
        "{context}"
    );
    wal.close().unwrap();
    drop(wal);
    let wal = backend.open(WalOptions::default()).await.expect(context);
    let report = wal.recovery_report();
    assert_eq!(report.records, 3, "{context}");
    assert_eq!(report.bytes_truncated, 0, "{context}");
    assert!(report.torn_tail.is_none(), "{context}");
    let records = read_all(wal.as_ref(), 1).await;
    assert_eq!(lsns(&records), vec![1, 2, 3], "{context}");
    assert_eq!(&records[0].payload[..], &payload(1)[..], "{context}");
    assert_eq!(&records[2].payload[..], b"after", "{context}");
}

/// A log written with a larger record limit and reopened with a smaller one: its intact records
/// above the new limit are acknowledged ones, kept and read in every mode, the last one too
/// (it was taken for a torn tail and cut).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_above_a_lowered_limit_are_kept() {
    let big = vec![0x5A_u8; 4096];
    for backend in backends() {
        let wal = backend.open(WalOptions::default()).await.unwrap();
        for payload in [&payload(1)[..], &big, &payload(3), &big] {
            wal.append(payload, AppendOptions::DURABLE).await.unwrap();
        }
        wal.close().unwrap();
        drop(wal);
        let pristine = backend.snapshot().await;
        for mode in MODES {
            let context = format!("{} {mode:?}", backend.name());
            backend.restore(&pristine).await;
            let options = WalOptions::default()
                .recovery_mode(mode)
                .max_record_bytes(1024);
            let wal = backend.open(options).await.expect(&context);
            let report = wal.recovery_report().clone();
            assert_eq!(report.records, 4, "{context}: {report:?}");
            assert_eq!(report.bytes_truncated, 0, "{context}");
            assert!(report.torn_tail.is_none(), "{context}");
            let records = read_all(wal.as_ref(), 1).await;
            assert_eq!(lsns(&records), vec![1, 2, 3, 4], "{context}");
            assert_eq!(&records[3].payload[..], &big[..], "{context}");
            // New records still obey the new limit.
            let err = wal
                .append(&big, AppendOptions::DURABLE)
                .await
                .expect_err(&context);
            assert_eq!(err.kind(), ErrorKind::BadInput, "{context}: {err}");
            wal.close().unwrap();
        }
    }
}
