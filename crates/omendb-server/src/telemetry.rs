//! Logs (`tracing` to stderr, text or JSON lines) and the Prometheus recorder every layer's
//! `metrics` calls land in.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Latency buckets, in seconds: 50 µs to 10 s (request, fsync and store latencies alike).
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// Size buckets (group-commit sizes in records, search windows in keys).
const SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

/// The kind of a metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution, exported as Prometheus buckets.
    Histogram,
}

/// Every metric the server exports, with its help text: the one list the recorder describes
/// and `docs/operations.md` documents (a test checks both).
pub const METRICS: &[(&str, Kind, &str)] = &[
    (
        "omendb_http_requests_total",
        Kind::Counter,
        "Client API requests by route, method and status.",
    ),
    (
        "omendb_http_request_duration_seconds",
        Kind::Histogram,
        "Client API request latency by route, until the response head (a streamed scan's body may take longer).",
    ),
    (
        "omendb_http_queries_in_flight",
        Kind::Gauge,
        "Reads running now (bounded by limits.max_concurrent_queries).",
    ),
    (
        "omendb_http_write_bytes_in_flight",
        Kind::Gauge,
        "Request bytes of writes running now (bounded by limits.max_inflight_write_bytes).",
    ),
    (
        "omendb_ready",
        Kind::Gauge,
        "1 when /health/ready answers 200, else 0.",
    ),
    (
        "omendb_failed",
        Kind::Gauge,
        "1 after a write or flush failure that makes the database refuse writes until restart.",
    ),
    (
        "omendb_visible_lsn",
        Kind::Gauge,
        "The log sequence number reads see.",
    ),
    (
        "omendb_flushed_lsn",
        Kind::Gauge,
        "Every write up to this LSN is in segments.",
    ),
    (
        "omendb_wal_appends_total",
        Kind::Counter,
        "WAL records written, by log kind (file or object).",
    ),
    (
        "omendb_wal_bytes_total",
        Kind::Counter,
        "WAL bytes written (framed), by log kind.",
    ),
    (
        "omendb_wal_group_commit_records",
        Kind::Histogram,
        "Records per group commit (one write and one sync).",
    ),
    (
        "omendb_wal_sync_duration_seconds",
        Kind::Histogram,
        "One WAL fdatasync (file) or one batch upload (object).",
    ),
    (
        "omendb_memtables",
        Kind::Gauge,
        "Memtable generations: the active one and those waiting to be flushed.",
    ),
    ("omendb_memtable_bytes", Kind::Gauge, "Bytes in memtables."),
    (
        "omendb_flushes_total",
        Kind::Counter,
        "Memtable flushes to segments since start.",
    ),
    (
        "omendb_flush_duration_seconds",
        Kind::Histogram,
        "One flush: segment upload and manifest commit.",
    ),
    (
        "omendb_segments",
        Kind::Gauge,
        "Live segments over all tables.",
    ),
    (
        "omendb_compacting",
        Kind::Gauge,
        "1 while a compaction runs.",
    ),
    (
        "omendb_compactions_total",
        Kind::Counter,
        "Compactions since start.",
    ),
    (
        "omendb_compaction_duration_seconds",
        Kind::Histogram,
        "One compaction of a group of overlapping segments.",
    ),
    (
        "omendb_cache_hits_total",
        Kind::Counter,
        "Page cache lookups answered from memory.",
    ),
    (
        "omendb_cache_misses_total",
        Kind::Counter,
        "Page cache lookups that read the backend.",
    ),
    (
        "omendb_cache_bytes",
        Kind::Gauge,
        "Bytes of decoded pages the cache holds.",
    ),
    (
        "omendb_index_search_window_mean_keys",
        Kind::Gauge,
        "Learned indexes' mean last-mile search window, in keys, weighted by segment rows.",
    ),
    (
        "omendb_index_search_window_max_keys",
        Kind::Gauge,
        "The largest search window of any segment's learned index, in keys.",
    ),
    (
        "omendb_store_requests_total",
        Kind::Counter,
        "Object-store requests by backend, operation and outcome.",
    ),
    (
        "omendb_store_request_duration_seconds",
        Kind::Histogram,
        "Object-store request latency by backend and operation.",
    ),
    (
        "omendb_store_retries_total",
        Kind::Counter,
        "Object-store requests retried after a transient error, by operation.",
    ),
];

static RECORDER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

fn describe() {
    for &(name, kind, help) in METRICS {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
            Kind::Histogram => metrics::describe_histogram!(name, help),
        }
    }
}

/// The process's Prometheus recorder, installed on first use (`None` if another recorder was
/// installed first, in which case `/metrics` says so).
pub fn recorder() -> Option<&'static PrometheusHandle> {
    RECORDER
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_records".to_owned()), SIZE_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_keys".to_owned()), SIZE_BUCKETS)
                });
            match builder.map(PrometheusBuilder::install_recorder) {
                Ok(Ok(handle)) => {
                    describe();
                    Some(handle)
                }
                Ok(Err(err)) => {
                    tracing::error!(error = %err, "the metrics recorder could not be installed");
                    None
                }
                Err(err) => {
                    tracing::error!(error = %err, "the metrics buckets are invalid");
                    None
                }
            }
        })
        .as_ref()
}

/// Starts logging to stderr as `config` says; a second call (tests) keeps the first.
pub fn init_logs(config: &LogConfig) -> Result<(), String> {
    let filter = EnvFilter::try_new(&config.level)
        .map_err(|e| format!("log.level {:?}: {e}", config.level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    Ok(())
}
