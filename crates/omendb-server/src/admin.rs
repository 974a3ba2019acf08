//! The admin listener: `/health/live`, `/health/ready` and `/metrics` (Prometheus text). Keep
//! it on loopback or a private network; it needs no token.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
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
}
