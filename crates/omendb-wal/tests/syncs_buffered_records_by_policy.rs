//! Buffered records become durable by the sync policy alone, with nobody waiting for them.

use std::time::{Duration, Instant};

use omendb_wal::{AppendOptions, FileWal, SyncPolicy, Wal, WalOptions};

/// Polls until the log reports `lsn` durable; fails after a generous bound (not a timing
/// assertion: the policy's own period is milliseconds).
fn eventually_durable(wal: &FileWal, lsn: u64) {
    let give_up = Instant::now() + Duration::from_secs(20);
    while Wal::last_durable_lsn(wal) < Some(lsn) {
        assert!(Instant::now() < give_up, "LSN {lsn} never became durable");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn buffered_records_are_synced_by_every_commit_and_interval_policies() {
    for policy in [
        SyncPolicy::EveryCommit,
        SyncPolicy::Interval(Duration::from_millis(20)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let wal = FileWal::open(dir.path(), WalOptions::default().sync_policy(policy)).unwrap();
        let mut last = 0;
        for i in 0..500u64 {
            last = wal
                .append(&i.to_le_bytes(), AppendOptions::BUFFERED)
                .unwrap();
        }
        eventually_durable(&wal, last);
        assert!(wal.stats().syncs >= 1, "{policy:?}");
        // A second round after the first sync, so the interval timer is exercised again.
        for i in 0..10u64 {
            last = wal
                .append(&i.to_le_bytes(), AppendOptions::BUFFERED)
                .unwrap();
        }
        eventually_durable(&wal, last);
    }
}

#[test]
fn the_never_policy_still_syncs_on_request_and_on_close() {
    let dir = tempfile::tempdir().unwrap();
    let options = WalOptions::default().sync_policy(SyncPolicy::Never);
    let wal = FileWal::open(dir.path(), options).unwrap();
    let first = wal.append(b"buffered", AppendOptions::BUFFERED).unwrap();
    wal.wait_durable(first).unwrap();
    assert_eq!(Wal::last_durable_lsn(&wal), Some(first));
    let second = wal
        .append(b"buffered too", AppendOptions::BUFFERED)
        .unwrap();
    wal.close().unwrap();
    assert_eq!(Wal::last_durable_lsn(&wal), Some(second));
}
