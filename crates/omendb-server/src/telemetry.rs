//! Logs (`tracing` to stderr, text or JSON lines), trace export (OpenTelemetry over OTLP/HTTP)
//! and the Prometheus recorder every layer's `metrics` calls land in.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::{Config, LogFormat};

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
        "Client API requests by route, method and status (499: dropped before it answered).",
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
        "omendb_http_connections",
        Kind::Gauge,
        "Client API connections open now (bounded by server.max_connections).",
    ),
    (
        "omendb_ready",
        Kind::Gauge,
        "1 when /health/ready answers 200, else 0.",
    ),
    (
        "omendb_failed",
        Kind::Gauge,
        "1 once the database refuses writes until restart (a failed write, flush or DDL, or a fenced compaction).",
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
        "Records per group commit written (one write; one sync where the sync policy syncs it).",
    ),
    (
        "omendb_wal_sync_duration_seconds",
        Kind::Histogram,
        "One WAL fdatasync (file) or one batch upload (object) that succeeded.",
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
        "One flush: waiting for its writes, segment upload, manifest commit, WAL truncation.",
    ),
    (
        "omendb_segments",
        Kind::Gauge,
        "Live segments over all tables.",
    ),
    (
        "omendb_compacting",
        Kind::Gauge,
        "1 while the background compaction task (merges, then garbage collection) runs.",
    ),
    (
        "omendb_compactions_total",
        Kind::Counter,
        "Compactions since start.",
    ),
    (
        "omendb_read_compactions_total",
        Kind::Counter,
        "Compactions since start that reads paid for (merges of overlapping runs).",
    ),
    (
        "omendb_idle_compactions_total",
        Kind::Counter,
        "Compactions since start that merged a table's overlapping runs once writes had stopped.",
    ),
    (
        "omendb_read_charged_seconds",
        Kind::Gauge,
        "Estimated time reads spent on overlapping runs since start (what read compactions spend).",
    ),
    (
        "omendb_compaction_duration_seconds",
        Kind::Histogram,
        "One compaction of a group of overlapping segments.",
    ),
    (
        "omendb_cache_hits_total",
        Kind::Counter,
        "Reads served from cached pages (a row, or a range within one page).",
    ),
    (
        "omendb_cache_misses_total",
        Kind::Counter,
        "Pages reads fetched from the backend and decoded.",
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

/// What logging and trace export need kept alive: the trace pipeline, flushed by
/// [`Telemetry::shutdown`].
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still buffered and stops the exporter.
    pub fn shutdown(self) {
        if let Some(Err(err)) = self.provider.map(|provider| provider.shutdown()) {
            tracing::warn!(error = %err, "the trace exporter did not shut down cleanly");
        }
    }

    /// Sends the spans still buffered.
    pub fn flush(&self) {
        if let Some(provider) = &self.provider {
            let _ = provider.force_flush();
        }
    }
}

/// Starts logging to stderr as `config.log` says and, when `config.otel.endpoint` is set,
/// trace export over OTLP/HTTP: a span per request (its parent taken from the request's W3C
/// `traceparent`) with the engine's spans beneath it. A second call in one process keeps the
/// first set-up.
pub fn init(config: &Config) -> Result<Telemetry, String> {
    let filter = EnvFilter::try_new(&config.log.level)
        .map_err(|e| format!("log.level {:?}: {e}", config.log.level))?;
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = vec![match config.log.format {
        LogFormat::Text => fmt.with_filter(filter).boxed(),
        LogFormat::Json => fmt.json().with_filter(filter).boxed(),
    }];
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let mut telemetry = Telemetry::default();
    if !config.otel.endpoint.is_empty() {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(&config.otel.endpoint)
            .build()
            .map_err(|e| format!("otel.endpoint {:?}: {e}", config.otel.endpoint))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.otel.sampling_ratio,
            ))))
            .with_resource(
                Resource::builder()
                    .with_service_name(config.otel.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("omendb");
        // The engine's spans are at debug level so that without export they cost nothing.
        let targets = Targets::new()
            .with_target("omendb_server", Level::DEBUG)
            .with_target("omendb_core", Level::DEBUG)
            .with_target("omendb_wal", Level::DEBUG)
            .with_target("omendb_storage", Level::DEBUG);
        layers.push(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(targets)
                .boxed(),
        );
        telemetry.provider = Some(provider);
    }
    let _ = tracing_subscriber::registry().with(layers).try_init();
    Ok(telemetry)
}
