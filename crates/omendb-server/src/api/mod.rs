//! The client API under `/v1`, and `/openapi.json`, the OpenAPI 3 document generated from the
//! same route table (a route cannot exist without its documentation).
//!
//! - [`tables`]: create, list, describe, drop.
//! - [`rows`]: put (JSON or Arrow IPC), get, multi-get, delete, delete-range.
//! - [`query`]: scan (paged, streamed), aggregate, explain.
//! - [`batch`]: an atomic write across tables.
//! - [`column`](mod@column) and [`row`]: the JSON forms of definitions, rows and keys.

pub mod batch;
pub mod column;
pub mod json_value;
pub mod query;
pub mod row;
pub mod rows;
pub mod tables;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Router, middleware};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::state::State;

/// The media type of Arrow IPC streams.
pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// A JSON body or response. Every request body of the API is a JSON object: anything else, or
/// an object of the wrong shape, is a 400 in the API's error shape (413 when over the body
/// limit, 415 without a JSON content type).
pub struct Json<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let axum::Json(json_value::UniqueValue(value)) =
            axum::Json::<json_value::UniqueValue>::from_request(request, state).await?;
        object(value).map(Json)
    }
}

/// The request body `value` as a `T`, which must be a JSON object (serde would also take an
/// array for a struct; the API does not).
pub fn object<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    if !value.is_object() {
        return Err(ApiError::bad_input(
            "the request body must be a JSON object",
        ));
    }
    serde_json::from_value(value).map_err(|e| ApiError::bad_input(format!("request body: {e}")))
}

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// A write's body, read only once its bytes have room among the writes in flight
/// (`limits.max_inflight_write_bytes`): the request reserves its `Content-Length` (the body
/// limit when it gives none) first, gets 429 when that does not fit (its body read and dropped
/// as it comes), and keeps only the body's size once read. Bodies were read whole before they asked, so many clients sending (or
/// slowly sending) bodies held memory past the bound.
pub struct WriteBody {
    /// The body.
    pub bytes: axum::body::Bytes,
    /// Its room among the writes in flight, held until the write is answered.
    pub permit: tokio::sync::OwnedSemaphorePermit,
}

impl FromRequest<Arc<State>> for WriteBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &Arc<State>) -> Result<Self, ApiError> {
        let max_body = state.config.limits.max_body_bytes;
        let declared = request
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(declared) = declared.filter(|&n| n > max_body as u64) {
            return Err(ApiError::too_large(format!(
                "a body of {declared} bytes is over {max_body} (limits.max_body_bytes)"
            )));
        }
        let reserve = declared.map_or(max_body, |n| usize::try_from(n).unwrap_or(max_body));
        let mut permit = match state.write_permit(reserve) {
            Ok(permit) => permit,
            Err(overloaded) => {
                // Read and dropped as it comes (nothing held), up to the body limit: answered
                // before its body was read, a client still sending it got a broken pipe instead
                // of the 429.
                let mut body = request.into_body().into_data_stream();
                let mut read = 0;
                while let Some(Ok(chunk)) = futures::StreamExt::next(&mut body).await {
                    read += chunk.len();
                    if read > max_body {
                        break;
                    }
                }
                return Err(overloaded);
            }
        };
        let bytes = axum::body::Bytes::from_request(request, state).await?;
        let keep = bytes.len().max(1);
        if let Some(extra) = permit.num_permits().checked_sub(keep).filter(|&n| n > 0) {
            drop(permit.split(extra));
        }
        Ok(WriteBody { bytes, permit })
    }
}

/// Path parameters; a malformed one is a 400 in the API's error shape.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// Query parameters; an unknown or malformed one is a 400 in the API's error shape.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

#[derive(OpenApi)]
#[openapi(
    components(schemas(crate::config::DurabilityConfig, crate::error::ErrorBody)),
    info(
        title = "OmenDB",
        description = "OmenDB's client API: tables of integer-keyed rows, point and range reads, \
                       atomic writes. Errors have one shape: {\"error\": {\"code\", \"message\"}}."
    ),
    tags(
        (name = "tables", description = "Table definitions"),
        (name = "rows", description = "Writes and point reads"),
        (name = "reads", description = "Range reads"),
    )
)]
struct ApiDoc;

/// The client API's routes (state still to be given) and its OpenAPI document.
pub fn routes() -> (Router<Arc<State>>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(tables::list_tables, tables::create_table))
        .routes(routes!(tables::describe_table, tables::drop_table))
        .routes(routes!(rows::put_rows))
        .routes(routes!(rows::get_row, rows::delete_row))
        .routes(routes!(rows::multi_get))
        .routes(routes!(rows::delete_range))
        .routes(routes!(query::scan))
        .routes(routes!(query::aggregate))
        .routes(routes!(query::explain))
        .routes(routes!(batch::write_batch))
        .split_for_parts()
}

/// The client API's router: the routes, `/openapi.json`, and the layers every request passes
/// (body limit, timeout, metrics, a JSON 404 for unknown routes, panics answered as 500).
pub fn router(state: Arc<State>) -> Router {
    let (routes, doc) = routes();
    let doc = Arc::new(doc);
    let max_body = state.config.limits.max_body_bytes;
    let router = routes
        .route(
            "/openapi.json",
            get(move || {
                let doc = Arc::clone(&doc);
                async move { axum::Json(doc.as_ref().clone()) }
            }),
        )
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take this method",
            )
        })
        .layer(middleware::from_fn_with_state(Arc::clone(&state), timeout));
    observed(router)
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// `router` with every request measured and a panic answered 500. The panic is caught inside
/// `measure`, so a request that panicked is counted as its 500 (caught outside, the unwinding
/// skipped `measure`, and the 500 was never counted).
fn observed<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    router
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                ApiError::internal("the server failed on this request (a bug; it is logged)")
                    .into_response()
            },
        ))
        .layer(middleware::from_fn(measure))
}

/// Answers 503 `timeout` when a request runs longer than `limits.request_timeout_ms`. A read's
/// work is cancelled; a write, DDL or checkpoint already handed to the engine runs to its end
/// there, so its outcome is unknown to the client. A streamed scan also stops at the deadline.
async fn timeout(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    request: Request,
    next: Next,
) -> Response {
    let reads = request.method() == axum::http::Method::GET
        || request.extensions().get::<MatchedPath>().is_some_and(|p| {
            ["/scan", "/multi-get", "/aggregate", "/explain"]
                .iter()
                .any(|read| p.as_str().ends_with(read))
        });
    match tokio::time::timeout(state.request_timeout(), next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::timeout(format!(
            "the request ran longer than {} ms (limits.request_timeout_ms){}",
            state.config.limits.request_timeout_ms,
            if reads {
                ""
            } else {
                "; the change may or may not have been applied: read it back before retrying"
            }
        ))
        .into_response(),
    }
}

/// A request's method as a label and span field: a standard method by its name, any other as
/// `_OTHER` (OpenTelemetry's name for it), so that clients sending made-up methods cannot add
/// metric series without bound.
fn method_label(method: &axum::http::Method) -> &str {
    match method.as_str() {
        name @ ("GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "PATCH" | "OPTIONS" | "CONNECT"
        | "TRACE") => name,
        _ => "_OTHER",
    }
}

/// A request's count and latency, recorded when it is dropped: with the response's status, or
/// with [`ABANDONED`] when the request was dropped before it answered (its client went away).
/// Recorded only after the answer, abandoned requests went uncounted, and the latency histogram
/// lost the slowest requests, those clients give up on.
struct Measured {
    route: String,
    method: String,
    started: Instant,
    span: tracing::Span,
    status: Option<u16>,
}

/// The status label of a request dropped before it answered (nginx's "client closed request").
const ABANDONED: u16 = 499;

impl Drop for Measured {
    fn drop(&mut self) {
        let status = self.status.unwrap_or(ABANDONED);
        self.span.record("http.response.status_code", status);
        metrics::counter!(
            "omendb_http_requests_total",
            "route" => self.route.clone(), "method" => self.method.clone(), "status" => status.to_string()
        )
        .increment(1);
        metrics::histogram!("omendb_http_request_duration_seconds", "route" => self.route.clone())
            .record(self.started.elapsed().as_secs_f64());
    }
}

/// Runs each request in a span (a child of the client's W3C `traceparent`, if any, so the
/// engine's spans join the client's trace), and counts requests by route, method and status
/// and their latency by route.
async fn measure(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = method_label(request.method()).to_owned();
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&opentelemetry_http::HeaderExtractor(request.headers()))
    });
    let span = tracing::info_span!(
        "request",
        otel.name = %format!("{method} {route}"),
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
    );
    let _ = span.set_parent(parent);
    let mut measured = Measured {
        route,
        method,
        started: Instant::now(),
        span: span.clone(),
        status: None,
    };
    let response = next.run(request).instrument(span).await;
    measured.status = Some(response.status().as_u16());
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use futures::FutureExt as _;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use tower::ServiceExt as _;

    use super::*;

    async fn panics() -> &'static str {
        panic!("a handler bug")
    }

    #[test]
    fn panicked_and_abandoned_requests_are_counted() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let router = observed(
                    Router::new()
                        .route("/ok", get(|| async { "ok" }))
                        .route("/panics", get(panics))
                        .route("/never", get(std::future::pending::<()>)),
                );
                let request = |path: &str| {
                    axum::http::Request::get(path)
                        .body(axum::body::Body::empty())
                        .unwrap()
                };
                let ok = router.clone().oneshot(request("/ok")).await.unwrap();
                assert_eq!(ok.status(), 200);
                let panicked = router.clone().oneshot(request("/panics")).await.unwrap();
                assert_eq!(panicked.status(), 500);
                // The client goes away: the request's future is dropped before it answers.
                let pending = router.oneshot(request("/never"));
                assert!(pending.now_or_never().is_none());
            });
        });
        let mut counts = std::collections::BTreeMap::new();
        let mut timed = std::collections::BTreeMap::new();
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let labels: Vec<String> = key
                .key()
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            let name = format!("{}{{{}}}", key.key().name(), labels.join(","));
            match value {
                DebugValue::Counter(n) => {
                    counts.insert(name, n);
                }
                DebugValue::Histogram(samples) => {
                    timed.insert(name, samples.len());
                }
                DebugValue::Gauge(_) => {}
            }
        }
        let requests = |route: &str, status: u16| {
            counts
                .get(&format!(
                    "omendb_http_requests_total{{route={route},method=GET,status={status}}}"
                ))
                .copied()
        };
        assert_eq!(requests("/ok", 200), Some(1), "{counts:?}");
        assert_eq!(requests("/panics", 500), Some(1), "{counts:?}");
        assert_eq!(requests("/never", ABANDONED), Some(1), "{counts:?}");
        for route in ["/ok", "/panics", "/never"] {
            assert_eq!(
                timed.get(&format!(
                    "omendb_http_request_duration_seconds{{route={route}}}"
                )),
                Some(&1),
                "{timed:?}"
            );
        }
    }
}
