//! The log's metrics, through the `metrics` facade (a process without a recorder pays almost
//! nothing; `omendb serve` exports them in Prometheus format).
//!
//! - `omendb_wal_appends_total{wal}`: records written; `omendb_wal_bytes_total{wal}`: their
//!   framed bytes.
//! - `omendb_wal_group_commit_records{wal}`: records per group commit (one write, one sync).
//! - `omendb_wal_sync_duration_seconds{wal}`: one `fdatasync` (file) or one upload (object).

use std::time::Duration;

/// A group commit of `records` records and `bytes` bytes was written to the `wal` log
/// (`file` or `object`).
pub(crate) fn group_written(wal: &'static str, records: u64, bytes: usize) {
    metrics::counter!("omendb_wal_appends_total", "wal" => wal).increment(records);
    metrics::counter!("omendb_wal_bytes_total", "wal" => wal).increment(bytes as u64);
    metrics::histogram!("omendb_wal_group_commit_records", "wal" => wal).record(records as f64);
}

/// The `wal` log made its writes durable in `elapsed`.
pub(crate) fn synced(wal: &'static str, elapsed: Duration) {
    metrics::histogram!("omendb_wal_sync_duration_seconds", "wal" => wal)
        .record(elapsed.as_secs_f64());
}
