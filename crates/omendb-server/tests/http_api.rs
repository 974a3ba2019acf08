#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point
//! The client API over real HTTP: every endpoint, every error status, the limits, cancellation
//! and timeouts, against a server on loopback.

mod support;

use std::sync::Arc;
use std::time::Duration;

use arrow_array::{Float64Array, RecordBatch, StringArray, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use futures::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};
use support::{TestServer, assert_error};

const ARROW: &str = "application/vnd.apache.arrow.stream";

fn rows(keys: impl IntoIterator<Item = u64>) -> Value {
    Value::Array(
        keys.into_iter()
            .map(|k| json!({"key": k, "host": format!("h{}", k % 7), "usage": k as f64 / 2.0}))
            .collect(),
    )
}

/// Puts rows `0..keys` into `cpu`, 10,000 a request.
async fn load(server: &TestServer, keys: u64) {
    for start in (0..keys).step_by(10_000) {
        let (status, body) = server
            .post(
                "/v1/tables/cpu/rows",
                rows(start..(start + 10_000).min(keys)),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
}

#[tokio::test]
async fn tables_are_created_listed_described_and_dropped() {
    let server = TestServer::start(|_| {}).await;
    server.create_metrics_table("cpu").await;
    let (status, body) = server
        .post("/v1/tables", json!({"name": "kv", "key_type": "i64"}))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["key_value"], true);
    assert_eq!(
        body["columns"],
        json!([{"name": "value", "type": "binary", "nullable": false}])
    );

    let (status, body) = server.get("/v1/tables").await;
    assert_eq!((status, body), (200, json!({"tables": ["cpu", "kv"]})));
    let (status, body) = server.get("/v1/tables/cpu").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"name": "cpu", "key_type": "u64", "key_value": false, "columns": [
            {"name": "host", "type": "utf8", "nullable": true},
            {"name": "usage", "type": "float64", "nullable": false},
        ]})
    );

    // Bad definitions change nothing.
    for (definition, want_status, want_code) in [
        (
            json!({"name": "cpu", "key_type": "u64"}),
            409,
            "table_exists",
        ),
        (
            json!({"name": "bad name!", "key_type": "u64"}),
            400,
            "bad_input",
        ),
        (
            json!({"name": "t", "key_type": "u64", "columns": [{"name": "x", "type": "decimal"}]}),
            400,
            "bad_input",
        ),
        (
            json!({"name": "t", "key_type": "u64", "columns": [{"name": "key", "type": "utf8"}]}),
            400,
            "bad_input",
        ),
        (
            json!({"name": "t", "key_type": "u64", "extra": 1}),
            400,
            "bad_input",
        ),
        (json!({"name": "t", "key_type": "u128"}), 400, "bad_input"),
    ] {
        let (status, body) = server.post("/v1/tables", definition).await;
        assert_error(status, &body, want_status, want_code);
    }
    assert_eq!(
        server.get("/v1/tables").await.1,
        json!({"tables": ["cpu", "kv"]})
    );

    let (status, body) = server.call(Method::DELETE, "/v1/tables/kv", None).await;
    assert_eq!((status, body), (204, Value::Null));
    let (status, body) = server.get("/v1/tables/kv").await;
    assert_error(status, &body, 404, "unknown_table");
    let (status, body) = server.call(Method::DELETE, "/v1/tables/kv", None).await;
    assert_error(status, &body, 404, "unknown_table");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn rows_are_put_read_and_deleted() {
    let server = TestServer::start(|_| {}).await;
    server.create_metrics_table("cpu").await;
    let (status, body) = server.post("/v1/tables/cpu/rows", rows(0..100)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["lsn"].as_u64().unwrap() > 0);

    let (status, body) = server.get("/v1/tables/cpu/rows/42").await;
    assert_eq!(
        (status, body),
        (200, json!({"key": 42, "host": "h0", "usage": 21.0}))
    );
    let (status, body) = server.get("/v1/tables/cpu/rows/1000").await;
    assert_error(status, &body, 404, "not_found");

    let (status, body) = server
        .post("/v1/tables/cpu/multi-get", json!({"keys": [5, 500, 99]}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"rows": [
            {"key": 5, "host": "h5", "usage": 2.5},
            null,
            {"key": 99, "host": "h1", "usage": 49.5},
        ]})
    );

    // Buffered writes are visible at once too.
    let (status, _) = server
        .post(
            "/v1/tables/cpu/rows?durability=buffered",
            json!([{"key": 1000, "usage": 1.0}]),
        )
        .await;
    assert_eq!(status, 200);
    let (_, body) = server.get("/v1/tables/cpu/rows/1000").await;
    assert_eq!(body, json!({"key": 1000, "host": null, "usage": 1.0}));

    let (status, body) = server
        .call(Method::DELETE, "/v1/tables/cpu/rows/42", None)
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = server.get("/v1/tables/cpu/rows/42").await;
    assert_eq!(status, 404);

    let (status, body) = server
        .post(
            "/v1/tables/cpu/delete-range",
            json!({"start": 10, "end": 20}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = server
        .post("/v1/tables/cpu/multi-get", json!({"keys": [9, 10, 19, 20]}))
        .await;
    let present: Vec<bool> = body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| !r.is_null())
        .collect();
    assert_eq!(present, [true, false, false, true]);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn bad_writes_get_typed_errors_and_change_nothing() {
    let server = TestServer::start(|config| config.limits.max_body_bytes = 64 << 10).await;
    server.create_metrics_table("cpu").await;
    let bad = [
        (
            json!([{"key": 1, "usage": 1.0, "nope": 1}]),
            400,
            "bad_input",
        ),
        (json!([{"key": 1, "usage": null}]), 400, "bad_input"),
        (json!([{"key": 1}]), 400, "bad_input"),
        (json!([{"key": 1, "usage": "high"}]), 400, "bad_input"),
        (json!([{"key": -1, "usage": 1.0}]), 400, "bad_input"),
        (json!([{"key": "1", "usage": 1.0}]), 400, "bad_input"),
        (json!([{"usage": 1.0}]), 400, "bad_input"),
        (json!([1, 2]), 400, "bad_input"),
        (json!({"key": 1}), 400, "bad_input"),
        (json!([]), 400, "bad_input"),
        // One bad row fails the whole put: the good one before it is not written either.
        (
            json!([{"key": 7, "usage": 1.0}, {"key": 8, "usage": true}]),
            400,
            "bad_input",
        ),
    ];
    for (body, want_status, want_code) in bad {
        let (status, answer) = server.post("/v1/tables/cpu/rows", body.clone()).await;
        assert_error(status, &answer, want_status, want_code);
    }
    let (status, body) = server.post("/v1/tables/nope/rows", rows(0..1)).await;
    assert_error(status, &body, 404, "unknown_table");

    // Not JSON, not a JSON content type, too large.
    let response = server
        .client
        .post(server.url("/v1/tables/cpu/rows"))
        .header("content-type", "application/json")
        .body("[{")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let refused_as = |path: &'static str, content_type: &'static str, body: &'static str| {
        let request = server
            .client
            .post(server.url(path))
            .header("content-type", content_type)
            .body(body);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            assert_error(status, &body, 415, "unsupported_media_type");
        }
    };
    refused_as("/v1/tables/cpu/rows", "text/csv", "1,2").await;
    // JSON's `-0` is the integer 0 (the parser reads it as the float -0.0, which was refused).
    let response = server
        .client
        .post(server.url("/v1/tables/cpu/rows"))
        .header("content-type", "application/json")
        .body(r#"[{"key": -0, "usage": -0}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (status, body) = server
        .call(Method::DELETE, "/v1/tables/cpu/rows/0", None)
        .await;
    assert_eq!(status, 200, "{body}");
    // A member named twice is ambiguous: refused, not the last one taken (which wrote key 2,
    // and deleted a range from key 0).
    for (path, body) in [
        (
            "/v1/tables/cpu/rows",
            r#"[{"key": 1, "usage": 1.0, "key": 2}]"#,
        ),
        (
            "/v1/tables/cpu/delete-range",
            r#"{"start": 100, "start": 0}"#,
        ),
        (
            "/v1/batch",
            r#"{"writes": [{"put": {"table": "cpu", "rows": [{"key": 3, "usage": 1.0, "usage": 2.0}]}}]}"#,
        ),
    ] {
        let response = server
            .client
            .post(server.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap();
        assert_error(status, &answer, 400, "bad_input");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains("appears twice"),
            "{path}: {answer}"
        );
    }
    // A batch is JSON too: another content type is refused.
    refused_as(
        "/v1/batch",
        "application/vnd.apache.arrow.stream",
        r#"{"writes": [{"put": {"table": "cpu", "rows": [{"key": 1}]}}]}"#,
    )
    .await;
    let (status, body) = server.post("/v1/tables/cpu/rows", rows(0..5_000)).await;
    assert_error(status, &body, 413, "too_large");
    let (status, body) = server
        .post("/v1/tables/cpu/rows?durability=sometimes", rows(0..1))
        .await;
    assert_error(status, &body, 400, "bad_input");

    let (status, body) = server.get("/v1/tables/cpu/rows/not-a-key").await;
    assert_error(status, &body, 400, "bad_input");
    let (status, body) = server.get("/v1/tables/cpu/rows/-5").await;
    assert_error(status, &body, 400, "bad_input");
    let (status, body) = server
        .post("/v1/tables/cpu/multi-get", json!({"keys": [1, "x"]}))
        .await;
    assert_error(status, &body, 400, "bad_input");

    // Nothing above was written.
    let (status, body) = server.post("/v1/tables/cpu/scan", json!({})).await;
    assert_eq!(
        (status, body),
        (200, json!({"rows": [], "next_page_token": null}))
    );

    // Unknown routes and methods answer in the same shape.
    let (status, body) = server.get("/v2/tables").await;
    assert_error(status, &body, 404, "not_found");
    let (status, body) = server.call(Method::PUT, "/v1/tables", None).await;
    assert_error(status, &body, 405, "method_not_allowed");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn scans_page_through_every_row_in_both_directions() {
    let server = TestServer::start(|config| config.limits.page_rows = 40).await;
    server.create_metrics_table("cpu").await;
    let (status, _) = server
        .post("/v1/tables/cpu/rows", rows((0..300).map(|k| k * 3)))
        .await;
    assert_eq!(status, 200);

    for reverse in [false, true] {
        let mut keys = Vec::new();
        let mut token = Value::Null;
        let mut pages = 0;
        loop {
            let (status, body) = server
                .post(
                    "/v1/tables/cpu/scan",
                    json!({"start": 30, "end": 600, "reverse": reverse, "page_token": token, "projection": ["usage"]}),
                )
                .await;
            assert_eq!(status, 200, "{body}");
            pages += 1;
            for row in body["rows"].as_array().unwrap() {
                let key = row["key"].as_u64().unwrap();
                assert_eq!(row, &json!({"key": key, "usage": key as f64 / 2.0}));
                keys.push(key);
            }
            token = body["next_page_token"].clone();
            if token.is_null() {
                break;
            }
        }
        let mut want: Vec<u64> = (10..200).map(|k| k * 3).collect();
        if reverse {
            want.reverse();
        }
        assert_eq!(keys, want, "reverse {reverse}");
        assert_eq!(pages, want.len().div_ceil(40));
    }

    let (_, body) = server
        .post("/v1/tables/cpu/scan", json!({"limit": 2}))
        .await;
    assert_eq!(body["rows"].as_array().unwrap().len(), 2);
    assert!(body["next_page_token"].is_string());
    for bad in [
        json!({"limit": 0}),
        json!({"page_token": "garbage"}),
        json!({"projection": ["nope"]}),
        json!({"start": "a"}),
        json!({"unknown": 1}),
    ] {
        let (status, body) = server.post("/v1/tables/cpu/scan", bad).await;
        assert_error(status, &body, 400, "bad_input");
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn aggregates_explain_and_atomic_batches() {
    let server = TestServer::start(|_| {}).await;
    server.create_metrics_table("cpu").await;
    server.create_metrics_table("mem").await;
    server.post("/v1/tables/cpu/rows", rows(0..100)).await;

    let (status, body) = server
        .post(
            "/v1/tables/cpu/aggregate",
            json!({"start": 0, "end": 10, "column": "usage", "function": "sum"}),
        )
        .await;
    assert_eq!((status, body), (200, json!({"rows": [{"sum": 22.5}]})));
    let (status, body) = server
        .post(
            "/v1/tables/cpu/aggregate",
            json!({"column": "usage", "function": "count", "bucket": 50}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"rows": [{"bucket": 0, "count": 50}, {"bucket": 50, "count": 50}]})
    );
    for bad in [
        json!({"column": "nope", "function": "sum"}),
        json!({"column": "usage", "function": "median"}),
        json!({"column": "usage", "function": "sum", "bucket": 0}),
    ] {
        let (status, body) = server.post("/v1/tables/cpu/aggregate", bad).await;
        assert_error(status, &body, 400, "bad_input");
    }

    let (status, body) = server
        .post("/v1/tables/cpu/explain", json!({"start": 5}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["table"], "cpu");
    assert_eq!(body["memtables"], 1);

    // A batch is atomic: one bad write and nothing of it is written.
    let (status, body) = server
        .post(
            "/v1/batch",
            json!({"writes": [
                {"op": "put", "table": "mem", "rows": [{"key": 1, "usage": 1.0}]},
                {"op": "delete", "table": "cpu", "key": 3},
                {"op": "put", "table": "nope", "rows": [{"key": 1, "usage": 1.0}]},
            ]}),
        )
        .await;
    assert_error(status, &body, 404, "unknown_table");
    assert_eq!(server.get("/v1/tables/mem/rows/1").await.0, 404);
    assert_eq!(server.get("/v1/tables/cpu/rows/3").await.0, 200);

    let (status, body) = server
        .post(
            "/v1/batch",
            json!({"writes": [
                {"op": "put", "table": "mem", "rows": [{"key": 1, "usage": 1.0}]},
                {"op": "delete", "table": "cpu", "key": 3},
                {"op": "delete_range", "table": "cpu", "start": 50},
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.get("/v1/tables/mem/rows/1").await.0, 200);
    assert_eq!(server.get("/v1/tables/cpu/rows/3").await.0, 404);
    let (_, body) = server
        .post(
            "/v1/tables/cpu/aggregate",
            json!({"column": "usage", "function": "count"}),
        )
        .await;
    assert_eq!(body, json!({"rows": [{"count": 49}]}));
    let (status, body) = server.post("/v1/batch", json!({"writes": []})).await;
    assert_error(status, &body, 400, "bad_input");
    let (status, body) = server
        .post(
            "/v1/batch",
            json!({"writes": [{"op": "merge", "table": "cpu"}]}),
        )
        .await;
    assert_error(status, &body, 400, "bad_input");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn arrow_ipc_in_and_out() {
    let server = TestServer::start(|config| config.limits.page_rows = 1000).await;
    server.create_metrics_table("cpu").await;
    let schema = Arc::new(Schema::new(vec![
        Field::new("key", DataType::UInt64, false),
        Field::new("host", DataType::Utf8, true),
        Field::new("usage", DataType::Float64, false),
    ]));
    let keys: Vec<u64> = (0..1500).collect();
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(UInt64Array::from(keys.clone())),
            Arc::new(StringArray::from_iter(
                keys.iter().map(|k| Some(format!("h{}", k % 7))),
            )),
            Arc::new(Float64Array::from_iter_values(
                keys.iter().map(|&k| k as f64 / 2.0),
            )),
        ],
    )
    .unwrap();
    let response = server.put_arrow("cpu", &batch).await;
    assert_eq!(response.status(), 200);

    let response = server
        .client
        .post(server.url("/v1/tables/cpu/scan"))
        .header("accept", ARROW)
        .json(&json!({"start": 100}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], ARROW);
    let token = response.headers()["omendb-next-page-token"]
        .to_str()
        .unwrap()
        .to_owned();
    let bytes = response.bytes().await.unwrap();
    let reader =
        arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None).unwrap();
    let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    let got = arrow_select::concat::concat_batches(&batches[0].schema(), &batches).unwrap();
    assert_eq!(got, batch.slice(100, 1000));

    let response = server
        .client
        .post(server.url("/v1/tables/cpu/scan"))
        .header("accept", ARROW)
        .json(&json!({"start": 100, "page_token": token}))
        .send()
        .await
        .unwrap();
    assert!(response.headers().get("omendb-next-page-token").is_none());
    let bytes = response.bytes().await.unwrap();
    let reader =
        arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None).unwrap();
    let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(rows, 400);

    let response = server
        .client
        .post(server.url("/v1/tables/cpu/rows"))
        .header("content-type", ARROW)
        .body(vec![1, 2, 3])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    // A dictionary-encoded column is refused from the stream's schema, before any dictionary
    // message is decoded (a stream of delta dictionaries cost minutes of CPU), and writes nothing.
    let dictionary_schema = Arc::new(Schema::new(vec![
        Field::new("key", DataType::UInt64, false),
        Field::new(
            "host",
            DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
            true,
        ),
        Field::new("usage", DataType::Float64, false),
    ]));
    let hosts: arrow_array::DictionaryArray<arrow_array::types::Int32Type> =
        vec!["a", "b"].into_iter().collect();
    let dictionary_batch = RecordBatch::try_new(
        Arc::clone(&dictionary_schema),
        vec![
            Arc::new(UInt64Array::from(vec![5000u64, 5001])),
            Arc::new(hosts),
            Arc::new(Float64Array::from(vec![1.0, 2.0])),
        ],
    )
    .unwrap();
    let response = server.put_arrow("cpu", &dictionary_batch).await;
    assert_eq!(response.status(), 400);
    let error: serde_json::Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "bad_input", "{error}");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("dictionary-encoded"), "{message}");
    let response = server
        .client
        .get(server.url("/v1/tables/cpu/rows/5000"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    server.stop().await.unwrap();
}

/// The in-flight query gauge of a `/metrics` scrape.
fn queries_in_flight(metrics: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("omendb_http_queries_in_flight "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Waits up to `limit` for the in-flight query gauge to read 0.
async fn no_query_in_flight_within(server: &TestServer, limit: Duration, what: &str) {
    let deadline = tokio::time::Instant::now() + limit;
    while queries_in_flight(&server.metrics().await) != 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} still holds its query slot after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_query_limit_answers_429_and_a_client_that_leaves_cancels_its_query() {
    let server = TestServer::start(|config| {
        config.limits.max_concurrent_queries = 1;
        config.limits.page_rows = 1_000_000;
    })
    .await;
    server.create_metrics_table("cpu").await;
    load(&server, 200_000).await;
    // A scan whose body is not read holds its query slot.
    let held = server
        .client
        .post(server.url("/v1/tables/cpu/scan"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(held.status(), 200);
    let (status, body) = server.get("/v1/tables/cpu/rows/1").await;
    assert_error(status, &body, 429, "overloaded");
    assert_eq!(queries_in_flight(&server.metrics().await), 1.0);

    // The client goes away mid-body: the scan is cancelled and its slot freed.
    let mut stream = held.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"{\"rows\":["));
    drop(stream);
    no_query_in_flight_within(&server, Duration::from_secs(10), "the abandoned scan").await;
    assert_eq!(server.get("/v1/tables/cpu/rows/1").await.0, 200);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_page_token_narrows_the_range_asked_for_and_never_widens_it() {
    let server = TestServer::start(|_| {}).await;
    server.create_metrics_table("cpu").await;
    load(&server, 10).await;
    let keys = |body: &Value| -> Vec<u64> {
        body["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["key"].as_u64().unwrap())
            .collect()
    };
    // A token after key 1, used on a range that starts at 8: the range's start holds.
    let (status, first) = server
        .post("/v1/tables/cpu/scan", json!({"limit": 2}))
        .await;
    assert_eq!((status, keys(&first)), (200, vec![0, 1]));
    let token = first["next_page_token"].as_str().unwrap().to_owned();
    let (status, body) = server
        .post(
            "/v1/tables/cpu/scan",
            json!({"start": 8, "page_token": token}),
        )
        .await;
    assert_eq!((status, keys(&body)), (200, vec![8, 9]), "{body}");
    // Within the range it continues after its key.
    let (status, body) = server
        .post(
            "/v1/tables/cpu/scan",
            json!({"start": 0, "end": 4, "page_token": token}),
        )
        .await;
    assert_eq!((status, keys(&body)), (200, vec![2, 3]), "{body}");

    // Backwards: a token before key 8, used on a range that ends at 3.
    let (status, first) = server
        .post("/v1/tables/cpu/scan", json!({"limit": 2, "reverse": true}))
        .await;
    assert_eq!((status, keys(&first)), (200, vec![9, 8]));
    let token = first["next_page_token"].as_str().unwrap().to_owned();
    let (status, body) = server
        .post(
            "/v1/tables/cpu/scan",
            json!({"end": 3, "reverse": true, "page_token": token}),
        )
        .await;
    assert_eq!((status, keys(&body)), (200, vec![2, 1, 0]), "{body}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_scan_stops_at_the_request_timeout() {
    let log = tempfile::NamedTempFile::new().unwrap();
    let path = log.path().to_path_buf();
    let server = TestServer::start(move |config| {
        config.limits.request_timeout_ms = 300;
        config.limits.page_rows = 1_000_000;
        config.log.slow_query_ms = 1;
        config.log.slow_query_file = path;
    })
    .await;
    server.create_metrics_table("cpu").await;
    // About 43 MB of JSON: far more than loopback's socket buffers hold (a few MB each way), so
    // the server cannot finish the body while the reader sleeps. With 300K rows (13 MB) it
    // sometimes did, and the test failed.
    load(&server, 1_000_000).await;
    let response = server
        .client
        .post(server.url("/v1/tables/cpu/scan"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let mut body = Vec::from(stream.next().await.unwrap().unwrap());
    // A reader slower than the deadline: the server ends the body instead of finishing it, and
    // gives up the scan's query slot at the deadline although nothing reads the body (it used
    // to hold it for as long as the connection stayed open).
    tokio::time::sleep(Duration::from_millis(600)).await;
    no_query_in_flight_within(
        &server,
        Duration::from_secs(5),
        "a scan whose body is not read",
    )
    .await;
    let mut failed = false;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => body.extend_from_slice(&chunk),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "the body of {} bytes ended normally", body.len());
    assert!(serde_json::from_slice::<Value>(&body).is_err());
    server.stop().await.unwrap();
    // The slowest reads are in the slow query log too: this one, cut at the deadline, was not
    // (only reads that finished were logged).
    let text = std::fs::read_to_string(log.path()).unwrap();
    let cut: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["route"] == "/v1/tables/{table}/scan")
        .collect();
    assert_eq!(cut.len(), 1, "{text}");
    assert!(
        cut[0]["outcome"] == "abandoned" || cut[0]["outcome"] == "error",
        "{text}"
    );
    let rows = cut[0]["rows"].as_u64().unwrap();
    assert!(rows > 0 && rows < 1_000_000, "{text}");
    assert!(cut[0]["duration_ms"].as_f64().unwrap() >= 300.0, "{text}");
}

#[tokio::test]
async fn while_the_database_cannot_open_requests_get_503_and_liveness_holds() {
    // S3 on a port where nothing listens: opening retries, and the server is not ready.
    let server = TestServer::start_unready(|config| {
        config.storage.url = "s3://bucket/db".to_owned();
        config.storage.options = [
            ("endpoint", "http://127.0.0.1:9"),
            ("allow_http", "true"),
            ("region", "us-east-1"),
            ("access_key_id", "test"),
            ("secret_access_key", "test"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    })
    .await;
    let (status, body) = server.get("/v1/tables").await;
    assert_error(status, &body, 503, "not_ready");
    let ready = server
        .client
        .get(format!("{}/health/ready", server.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let live = server
        .client
        .get(format!("{}/health/live", server.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn slow_reads_are_logged_as_json_lines_with_their_plan() {
    let log = tempfile::NamedTempFile::new().unwrap();
    let path = log.path().to_path_buf();
    let server = TestServer::start(move |config| {
        config.log.slow_query_ms = 1;
        config.log.slow_query_file = path;
        config.limits.page_rows = 1_000_000;
    })
    .await;
    server.create_metrics_table("cpu").await;
    load(&server, 100_000).await;
    let (status, _) = server
        .post("/v1/tables/cpu/scan", json!({"start": 5}))
        .await;
    assert_eq!(status, 200);
    // A later page is logged with the range it read, from its token on (it was logged with the
    // whole requested range).
    let (status, first) = server
        .post("/v1/tables/cpu/scan", json!({"start": 5, "limit": 50_000}))
        .await;
    assert_eq!(status, 200);
    let token = first["next_page_token"].as_str().unwrap().to_owned();
    let last = first["rows"][49_999]["key"].clone();
    let (status, _) = server
        .post(
            "/v1/tables/cpu/scan",
            json!({"start": 5, "page_token": token}),
        )
        .await;
    assert_eq!(status, 200);
    server.stop().await.unwrap();
    let text = std::fs::read_to_string(log.path()).unwrap();
    let entries: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["route"] == "/v1/tables/{table}/scan")
        .collect();
    let later = format!("{last} (excl), open");
    assert!(
        entries.iter().any(|e| e["range"] == later.as_str()),
        "no entry for the range {later}: {text}"
    );
    let entry = entries
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no scan in the slow log: {text}"));
    assert_eq!(entry["table"], "cpu");
    assert_eq!(entry["outcome"], "ok");
    assert_eq!(entry["rows"], 99_995);
    assert_eq!(entry["range"], "5 (incl), open");
    assert!(entry["duration_ms"].as_f64().unwrap() >= 1.0);
    assert_eq!(entry["explain"]["table"], "cpu");
    assert!(entry["time"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_beyond_the_in_flight_byte_limit_get_429_and_the_rest_are_kept() {
    let server = TestServer::start(|config| {
        config.limits.max_body_bytes = 256 << 10;
        config.limits.max_inflight_write_bytes = 256 << 10;
    })
    .await;
    server.create_metrics_table("cpu").await;
    // 48 concurrent puts of over 96 KiB: at most two fit in flight at once.
    let mut puts = Vec::new();
    for p in 0..48u64 {
        let client = server.client.clone();
        let url = server.url("/v1/tables/cpu/rows");
        puts.push(tokio::spawn(async move {
            let body = rows(p * 3_000..(p + 1) * 3_000);
            let text = serde_json::to_string(&body).unwrap();
            assert!(text.len() > 96 << 10, "{}", text.len());
            let response = client
                .post(url)
                .header("content-type", "application/json")
                .body(text)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            (p, status, body)
        }));
    }
    let mut accepted = Vec::new();
    let mut refused = 0;
    for put in puts {
        let (p, status, body) = put.await.unwrap();
        match status {
            200 => accepted.push(p),
            429 => {
                assert_eq!(body["error"]["code"], "overloaded", "{body}");
                refused += 1;
            }
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    assert!(refused > 0, "no put was refused");
    assert!(!accepted.is_empty(), "every put was refused");
    // Exactly the accepted puts are there.
    let (_, body) = server
        .post(
            "/v1/tables/cpu/aggregate",
            json!({"column": "usage", "function": "count"}),
        )
        .await;
    assert_eq!(body, json!({"rows": [{"count": accepted.len() * 3_000}]}));
    server.stop().await.unwrap();
}

/// `limits.max_response_bytes` ends a scan page early (after the engine's batch that spends it),
/// JSON or Arrow, with a token that carries on; every row comes exactly once.
#[tokio::test]
async fn a_scan_page_ends_at_the_response_byte_budget() {
    // About 24 bytes of Arrow arrays a row: a page of about 2,700 rows.
    let server = TestServer::start(|config| config.limits.max_response_bytes = 64 << 10).await;
    server.create_metrics_table("cpu").await;
    load(&server, 20_000).await;

    let mut keys = Vec::new();
    let mut token = Value::Null;
    let mut pages = 0;
    loop {
        let (status, body) = server
            .post("/v1/tables/cpu/scan", json!({"page_token": token}))
            .await;
        assert_eq!(status, 200, "{body}");
        pages += 1;
        let rows = body["rows"].as_array().unwrap();
        assert!(
            !rows.is_empty() && rows.len() < 10_000,
            "{} rows",
            rows.len()
        );
        keys.extend(rows.iter().map(|row| row["key"].as_u64().unwrap()));
        token = body["next_page_token"].clone();
        if token.is_null() {
            break;
        }
    }
    assert_eq!(keys, (0..20_000).collect::<Vec<u64>>());
    assert!(pages >= 3, "{pages} pages");

    let mut rows = 0;
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let response = server
            .client
            .post(server.url("/v1/tables/cpu/scan"))
            .header("accept", ARROW)
            .json(&json!({"page_token": token}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        pages += 1;
        token = response
            .headers()
            .get("omendb-next-page-token")
            .map(|t| t.to_str().unwrap().to_owned());
        let bytes = response.bytes().await.unwrap();
        let reader =
            arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None).unwrap();
        let page: usize = reader.map(|b| b.unwrap().num_rows()).sum();
        assert!(page > 0 && page < 10_000, "{page} rows");
        rows += page;
        if token.is_none() {
            break;
        }
    }
    assert_eq!(rows, 20_000);
    assert!(pages >= 3, "{pages} pages");
    server.stop().await.unwrap();
}

/// A multi-get reads its keys a chunk at a time at one snapshot: the rows come back in the
/// order of the keys across chunks, and rows past `limits.max_response_bytes` are refused.
#[tokio::test]
async fn a_multi_get_answers_across_chunks_and_refuses_rows_past_the_byte_budget() {
    let server = TestServer::start(|config| config.limits.max_response_bytes = 4096).await;
    server.create_metrics_table("cpu").await;
    load(&server, 1_000).await;
    // 300 keys, every third one absent: more than one chunk of the engine's reads.
    let keys: Vec<u64> = (0..300)
        .map(|i| if i % 3 == 2 { 5_000 + i } else { i })
        .collect();
    let (status, body) = server
        .post("/v1/tables/cpu/multi-get", json!({"keys": keys[..40]}))
        .await;
    assert_eq!(status, 200, "{body}");
    for (key, row) in keys[..40].iter().zip(body["rows"].as_array().unwrap()) {
        if *key >= 5_000 {
            assert!(row.is_null(), "{key}: {row}");
        } else {
            assert_eq!(row["key"], json!(key));
            assert_eq!(row["usage"], json!(*key as f64 / 2.0));
        }
    }
    let (status, body) = server
        .post("/v1/tables/cpu/multi-get", json!({"keys": keys}))
        .await;
    assert_error(status, &body, 413, "too_large");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("limits.max_response_bytes")),
        "{body}"
    );
    server.stop().await.unwrap();

    let server = TestServer::start(|_| {}).await;
    server.create_metrics_table("cpu").await;
    load(&server, 1_000).await;
    let (status, body) = server
        .post("/v1/tables/cpu/multi-get", json!({"keys": keys}))
        .await;
    assert_eq!(status, 200, "{body}");
    let rows = body["rows"].as_array().unwrap();
    assert_eq!(rows.len(), keys.len());
    for (key, row) in keys.iter().zip(rows) {
        if *key >= 5_000 {
            assert!(row.is_null(), "{key}: {row}");
        } else {
            assert_eq!(row["key"], json!(key), "{row}");
        }
    }
    server.stop().await.unwrap();
}
