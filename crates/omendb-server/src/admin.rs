//! The admin listener: `/health/live`, `/health/ready` and `/metrics` (Prometheus text). Keep
//! it on loopback or a private network; it needs no token.

use std::ops::Bound;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use omendb_core::Key;
use serde_json::json;

use crate::state::State as Shared;
use crate::telemetry;

/// The admin router.
pub fn router(state: Arc<Shared>) -> Router {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
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
