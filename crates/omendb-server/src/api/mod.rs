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
        let axum::Json(value) =
            axum::Json::<serde_json::Value>::from_request(request, state).await?;
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
    routes
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
        .layer(middleware::from_fn_with_state(Arc::clone(&state), timeout))
        .layer(middleware::from_fn(measure))
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                ApiError::internal("the server failed on this request (a bug; it is logged)")
                    .into_response()
            },
        ))
        .with_state(state)
}

/// Answers 503 `timeout` when a request runs longer than `limits.request_timeout_ms`. A read's
/// work is cancelled; a write, DDL or checkpoint already handed to the engine runs to its end
/// there, so its outcome is unknown to the client. A streamed scan also stops at the deadline.
async fn timeout(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    request: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(state.request_timeout(), next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::timeout(format!(
            "the request ran longer than {} ms (limits.request_timeout_ms)",
            state.config.limits.request_timeout_ms
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
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    let status = response.status().as_u16().to_string();
    metrics::counter!(
        "omendb_http_requests_total",
        "route" => route.clone(), "method" => method, "status" => status
    )
    .increment(1);
    metrics::histogram!("omendb_http_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}
