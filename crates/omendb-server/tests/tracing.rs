#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point
//! Trace export: the server sends its spans over OTLP/HTTP to a collector (here one in this
//! process, decoding the protobuf), each request's span is a child of the client's
//! `traceparent`, and the engine's spans are children of the request's.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use serde_json::json;
use support::TestServer;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OTLP/HTTP collector on loopback that keeps every span it receives.
async fn collector() -> (String, Arc<Mutex<Vec<Span>>>) {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&spans);
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let kept = Arc::clone(&kept);
            async move {
                let request = ExportTraceServiceRequest::decode(body).unwrap();
                let mut kept = kept.lock().unwrap();
                for resource in request.resource_spans {
                    for scope in resource.scope_spans {
                        kept.extend(scope.spans);
                    }
                }
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, spans)
}

#[test]
fn request_spans_join_the_clients_trace_and_the_engine_spans_join_them() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (endpoint, spans) = runtime.block_on(collector());
    let mut config = omendb_server::Config::default();
    config.otel.endpoint = endpoint.clone();
    config.log.level = "warn".to_owned();
    // Outside the runtime: the exporter's blocking HTTP client may not be built inside one.
    let telemetry = omendb_server::telemetry::init(&config).unwrap();

    runtime.block_on(async {
        let server = TestServer::start(|c| c.otel.endpoint = endpoint).await;
        server.create_metrics_table("cpu").await;
        let traceparent = format!("00-{TRACE_ID}-{CLIENT_SPAN}-01");
        let response = server
            .client
            .post(server.url("/v1/tables/cpu/rows"))
            .header("traceparent", &traceparent)
            .json(&json!([{"key": 1, "usage": 1.0}]))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let response = server
            .client
            .get(server.url("/v1/tables/cpu/rows/1"))
            .header("traceparent", &traceparent)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        server.stop().await.unwrap();
    });
    let flushed = std::thread::spawn(move || {
        telemetry.flush();
        telemetry
    });
    let telemetry = flushed.join().unwrap();

    let deadline = Instant::now() + Duration::from_secs(20);
    let find = |name: &str| -> Option<Span> {
        spans
            .lock()
            .unwrap()
            .iter()
            .find(|s| s.name == name && hex(&s.trace_id) == TRACE_ID)
            .cloned()
    };
    let (put, get, commit, read) = loop {
        let found = (
            find("POST /v1/tables/{table}/rows"),
            find("GET /v1/tables/{table}/rows/{key}"),
            find("db.commit"),
            find("db.get"),
        );
        if let (Some(a), Some(b), Some(c), Some(d)) = found {
            break (a, b, c, d);
        }
        assert!(Instant::now() < deadline, "spans missing: {found:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        hex(&put.parent_span_id),
        CLIENT_SPAN,
        "the request span is the client's child"
    );
    assert_eq!(hex(&get.parent_span_id), CLIENT_SPAN);
    assert_eq!(
        commit.parent_span_id, put.span_id,
        "the commit span is the put request's child"
    );
    assert_eq!(
        read.parent_span_id, get.span_id,
        "the read span is the get request's child"
    );
    let status = put
        .attributes
        .iter()
        .find(|a| a.key == "http.response.status_code")
        .and_then(|a| a.value.clone())
        .unwrap();
    assert!(format!("{status:?}").contains("200"), "{status:?}");
    telemetry.shutdown();
}
