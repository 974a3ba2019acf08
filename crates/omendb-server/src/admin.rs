//! The admin listener: `/health/live`, `/health/ready`, `/metrics` (Prometheus text) and
//! `/debug/pprof/profile` (a CPU flamegraph). Keep it on loopback or a private network; it
//! needs no token.

use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use omendb_core::Key;
use serde_json::json;

use crate::error::ApiError;
use crate::state::State as Shared;
use crate::telemetry;

/// The admin router.
pub fn router(state: Arc<Shared>) -> Router {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/debug/pprof/profile", get(profile))
        .with_state(state)
}

/// 200 while the process runs.
async fn live() -> Response {
    axum::Json(json!({"status": "live"})).into_response()
}

/// 200 when the database is open and healthy; 503 with the reason while it recovers, while the
/// server drains, or after a storage failure.
async fn ready(State(state): State<Arc<Shared>>) -> Response {
    match state.not_ready_reason() {
        None => axum::Json(json!({"status": "ready"})).into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "not_ready", "reason": reason})),
        )
            .into_response(),
    }
}

/// How long to profile.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileParams {
    /// Seconds, 1 to 60 (default 10).
    seconds: Option<u64>,
}

/// Samples the CPU of every thread 99 times a second for `seconds` and answers a flamegraph
/// (SVG). One profile at a time; the server serves as usual meanwhile.
async fn profile(
    State(state): State<Arc<Shared>>,
    params: Result<axum::extract::Query<ProfileParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let seconds = match params {
        Ok(axum::extract::Query(ProfileParams { seconds })) => seconds.unwrap_or(10),
        Err(rejection) => return ApiError::from(rejection).into_response(),
    };
    if !(1..=60).contains(&seconds) {
        return ApiError::bad_input("seconds must be between 1 and 60").into_response();
    }
    if state.profiling.swap(true, Ordering::AcqRel) {
        return ApiError::new(
            StatusCode::CONFLICT,
            "profiling",
            "a profile is being taken",
        )
        .into_response();
    }
    // The profiler is not Send; it lives on a blocking thread for the whole sample.
    let svg = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
        let guard = pprof::ProfilerGuardBuilder::default()
            .frequency(99)
            .blocklist(&["libc", "libgcc", "pthread", "vdso"])
            .build()
            .map_err(|e| e.to_string())?;
        std::thread::sleep(Duration::from_secs(seconds));
        let report = guard.report().build().map_err(|e| e.to_string())?;
        if report.data.is_empty() {
            // An idle server takes no samples, and a flamegraph of nothing is no picture.
            return Ok(format!(
                "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"600\" height=\"40\">\
                 <text x=\"10\" y=\"25\">no CPU samples in {seconds} s: the server was idle</text></svg>"
            )
            .into_bytes());
        }
        let mut svg = Vec::new();
        report.flamegraph(&mut svg).map_err(|e| e.to_string())?;
        Ok(svg)
    })
    .await;
    state.profiling.store(false, Ordering::Release);
    match svg {
        Ok(Ok(svg)) => ([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response(),
        Ok(Err(err)) => ApiError::internal(format!("profiling failed: {err}")).into_response(),
        Err(err) => ApiError::internal(format!("profiling failed: {err}")).into_response(),
    }
}

/// Every layer's metrics in Prometheus text format.
async fn metrics(State(state): State<Arc<Shared>>) -> Response {
    let Some(recorder) = telemetry::recorder() else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "another metrics recorder was installed in this process\n",
        )
            .into_response();
    };
    record_state(&state);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        recorder.render(),
    )
        .into_response()
}

/// Gauges and counters read from the engine and the server's limits at scrape time.
fn record_state(state: &Shared) {
    metrics::gauge!("omendb_ready").set(if state.not_ready_reason().is_none() {
        1.0
    } else {
        0.0
    });
    metrics::gauge!("omendb_http_queries_in_flight").set(state.queries_in_flight() as f64);
    metrics::gauge!("omendb_http_write_bytes_in_flight").set(state.write_bytes_in_flight() as f64);
    metrics::gauge!("omendb_http_connections").set(state.connections_open() as f64);
    let Some(db) = state.open_db() else {
        return;
    };
    let stats = db.stats();
    metrics::gauge!("omendb_visible_lsn").set(stats.visible_lsn as f64);
    metrics::gauge!("omendb_flushed_lsn").set(stats.flushed_lsn as f64);
    metrics::gauge!("omendb_memtables").set(stats.memtables as f64);
    metrics::gauge!("omendb_memtable_bytes").set(stats.memtable_bytes as f64);
    metrics::gauge!("omendb_segments").set(stats.segments as f64);
    metrics::gauge!("omendb_compacting").set(if stats.compacting { 1.0 } else { 0.0 });
    metrics::counter!("omendb_flushes_total").absolute(stats.flushes);
    metrics::counter!("omendb_compactions_total").absolute(stats.compactions);
    metrics::counter!("omendb_read_compactions_total").absolute(stats.read_compactions);
    metrics::counter!("omendb_idle_compactions_total").absolute(stats.idle_compactions);
    metrics::gauge!("omendb_read_charged_seconds").set(stats.read_charged.as_secs_f64());
    metrics::gauge!("omendb_failed").set(if stats.failure.is_some() { 1.0 } else { 0.0 });
    metrics::counter!("omendb_cache_hits_total").absolute(stats.cache_hits);
    metrics::counter!("omendb_cache_misses_total").absolute(stats.cache_misses);
    metrics::gauge!("omendb_cache_bytes").set(stats.cache_bytes as f64);
    record_search_windows(db);
}

/// The learned indexes' search windows over every segment: the row-weighted mean (the
/// last-mile search a lookup does on average) and the largest. Read from the segments' plans
/// at scrape time, so lookups pay nothing for it.
fn record_search_windows(db: &omendb_core::Db) {
    let (mut rows, mut weighted, mut max) = (0u64, 0.0f64, 0usize);
    for name in db.list_tables() {
        let Ok(table) = db.table(&name) else {
            continue;
        };
        let Ok(plan) = table.explain((Bound::<Key>::Unbounded, Bound::<Key>::Unbounded)) else {
            continue;
        };
        for segment in plan.segments {
            rows += segment.rows;
            weighted += segment.mean_window * segment.rows as f64;
            max = max.max(segment.max_window);
        }
    }
    let mean = if rows == 0 {
        0.0
    } else {
        weighted / rows as f64
    };
    metrics::gauge!("omendb_index_search_window_mean_keys").set(mean);
    metrics::gauge!("omendb_index_search_window_max_keys").set(max as f64);
}
