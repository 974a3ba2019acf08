#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point
//! `/metrics`: Prometheus text that `promtool check metrics` accepts, with metrics from every
//! layer (HTTP, WAL, memtable and flush, page cache, learned index, object store).

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use support::TestServer;

/// The value of the sample `name` (exact series text) in a scrape.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_cover_every_layer_and_pass_promtool() {
    let server = TestServer::start(|config| config.engine.memtable_mb = 1).await;
    server.create_metrics_table("cpu").await;
    // Enough rows for several flushes of a 1 MiB memtable.
    for chunk in 0..12u64 {
        let rows: Vec<_> = (chunk * 5_000..(chunk + 1) * 5_000)
            .map(|k| json!({"key": k, "host": "a-fairly-long-host-name", "usage": 1.0}))
            .collect();
        let (status, body) = server.post("/v1/tables/cpu/rows", json!(rows)).await;
        assert_eq!(status, 200, "{body}");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut metrics = server.metrics().await;
    while sample(&metrics, "omendb_segments").unwrap_or(0.0) < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no flush happened:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        metrics = server.metrics().await;
    }
    for key in [1, 7, 1_000, 20_000, 59_999, 70_000] {
        server.get(&format!("/v1/tables/cpu/rows/{key}")).await;
    }
    server
        .post("/v1/tables/cpu/scan", json!({"limit": 10}))
        .await;
    let metrics = server.metrics().await;

    for series in [
        "omendb_http_requests_total{route=\"/v1/tables/{table}/rows\",method=\"POST\",status=\"200\"}",
        "omendb_http_requests_total{route=\"/v1/tables/{table}/rows/{key}\",method=\"GET\",status=\"404\"}",
        "omendb_http_request_duration_seconds_count{route=\"/v1/tables/{table}/scan\"}",
        "omendb_wal_appends_total{wal=\"file\"}",
        "omendb_wal_sync_duration_seconds_count{wal=\"file\"}",
        "omendb_wal_group_commit_records_count{wal=\"file\"}",
        "omendb_flushes_total",
        "omendb_flush_duration_seconds_count",
        "omendb_memtable_bytes",
        "omendb_cache_misses_total",
        "omendb_cache_hits_total",
        "omendb_index_search_window_mean_keys",
        "omendb_index_search_window_max_keys",
        "omendb_store_requests_total{backend=\"file\",op=\"put\",outcome=\"ok\"}",
        "omendb_store_request_duration_seconds_count{backend=\"file\",op=\"put\"}",
        "omendb_ready",
        "omendb_http_queries_in_flight",
    ] {
        assert!(
            sample(&metrics, series).is_some(),
            "{series} is missing:\n{metrics}"
        );
    }
    assert_eq!(
        sample(&metrics, "omendb_wal_appends_total{wal=\"file\"}"),
        Some(12.0)
    ); // one record per put (tables live in the manifest)
    assert!(sample(&metrics, "omendb_flushes_total").unwrap() >= 1.0);
    assert!(sample(&metrics, "omendb_cache_misses_total").unwrap() >= 1.0);
    assert_eq!(sample(&metrics, "omendb_ready"), Some(1.0));

    // Made-up methods share one label value: a client cannot add series without bound.
    for method in ["FROB", "FROB2", "XYZZY"] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let response = server
            .client
            .request(method, server.url("/v1/tables"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405);
    }
    let metrics = server.metrics().await;
    assert!(
        !metrics.contains("FROB") && !metrics.contains("XYZZY"),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "omendb_http_requests_total{route=\"/v1/tables\",method=\"_OTHER\",status=\"405\"}"
        ),
        Some(3.0),
        "{metrics}"
    );

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("promtool could not be started ({e}); `cargo xtask test` installs it (Debian's prometheus)")
        });
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let output = promtool.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    server.stop().await.unwrap();
}
