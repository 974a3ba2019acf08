#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point
//! The admin listener: health, readiness while draining, the CPU profile, HTTP/2.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_profile_is_a_flamegraph_and_one_runs_at_a_time() {
    let server = TestServer::start(|_| {}).await;
    server.create_metrics_table("cpu").await;
    let url = format!("{}/debug/pprof/profile?seconds=1", server.admin);
    let first = tokio::spawn({
        let client = server.client.clone();
        let url = url.clone();
        async move { client.get(url).send().await.unwrap() }
    });
    // CPU work in this process (the server's) for the sampler to catch, until the profile is in.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spin = std::thread::spawn({
        let done = std::sync::Arc::clone(&done);
        move || {
            let mut x = 0u64;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            x
        }
    });
    // A second profile while the first runs, and requests for the profiler to see.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = server.client.get(&url).send().await.unwrap();
    assert_eq!(second.status(), 409);
    let body: Value = second.json().await.unwrap();
    assert_eq!(body["error"]["code"], "profiling");
    for k in 0..200u64 {
        server
            .post("/v1/tables/cpu/rows", json!([{"key": k, "usage": 1.0}]))
            .await;
    }
    let first = first.await.unwrap();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    spin.join().unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["content-type"], "image/svg+xml");
    let svg = first.text().await.unwrap();
    assert!(svg.contains("<svg"), "{}", &svg[..svg.len().min(200)]);
    assert!(
        !svg.contains("no CPU samples"),
        "the busy thread was not sampled"
    );

    for bad in ["seconds=0", "seconds=61", "seconds=x", "minutes=1"] {
        let response = server
            .client
            .get(format!("{}/debug/pprof/profile?{bad}", server.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{bad}");
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn the_client_api_speaks_http2() {
    let server = TestServer::start(|_| {}).await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = client.get(server.url("/v1/tables")).send().await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"tables": []})
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn liveness_and_readiness() {
    let server = TestServer::start(|_| {}).await;
    for (path, status) in [("/health/live", "live"), ("/health/ready", "ready")] {
        let response = server
            .client
            .get(format!("{}{path}", server.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.json::<Value>().await.unwrap()["status"], status);
    }
    let response = server
        .client
        .get(format!("{}/nope", server.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    server.stop().await.unwrap();
}
