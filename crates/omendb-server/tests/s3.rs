#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point
//! The server on S3 (moto): segments, manifests and the WAL in a bucket; a restart with an
//! empty local directory finds everything acknowledged.

mod support;

#[path = "../../omendb-storage/tests/common/moto.rs"]
mod moto;

use serde_json::json;
use support::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_s3_keeps_its_data_in_the_bucket() {
    let moto = moto::Moto::start();
    let bucket = moto.bucket();
    let configure = |config: &mut omendb_server::Config| {
        config.storage.url = format!("s3://{bucket}/db");
        config.storage.wal_in_store = true;
        config.storage.options = moto.options().options;
        config.engine.memtable_mb = 1;
    };
    let server = TestServer::start(configure).await;
    server.create_metrics_table("cpu").await;
    for chunk in 0..4u64 {
        let rows: Vec<_> = (chunk * 5_000..(chunk + 1) * 5_000)
            .map(|k| json!({"key": k, "host": "a-fairly-long-host-name", "usage": k as f64}))
            .collect();
        let (status, body) = server.post("/v1/tables/cpu/rows", json!(rows)).await;
        assert_eq!(status, 200, "{body}");
    }
    server.stop().await.unwrap();

    // A fresh local directory: everything comes from the bucket.
    let server = TestServer::start(configure).await;
    let (status, body) = server
        .post(
            "/v1/tables/cpu/aggregate",
            json!({"column": "usage", "function": "count"}),
        )
        .await;
    assert_eq!((status, body), (200, json!({"rows": [{"count": 20_000}]})));
    let (status, body) = server.get("/v1/tables/cpu/rows/19999").await;
    assert_eq!(status, 200);
    assert_eq!(body["usage"], 19_999.0);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_when_the_store_stops_answering() {
    let moto = moto::Moto::start();
    let bucket = moto.bucket();
    let options = moto.options().options;
    let server = TestServer::start(move |config| {
        config.storage.url = format!("s3://{bucket}/db");
        config.storage.options = options;
        config.server.storage_check_ms = 200;
    })
    .await;
    drop(moto);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let response = server
            .client
            .get(format!("{}/health/ready", server.admin))
            .send()
            .await
            .unwrap();
        if response.status() == 503 {
            let body: serde_json::Value = response.json().await.unwrap();
            assert!(
                body["reason"]
                    .as_str()
                    .unwrap()
                    .contains("storage does not answer"),
                "{body}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still ready with the store gone"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    server.stop().await.unwrap();
}
