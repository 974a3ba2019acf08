#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point
//! The OpenAPI document: the one served is the one committed in `docs/openapi.json`
//! (`OMENDB_UPDATE_OPENAPI=1` rewrites it), and schemathesis, run against it with every check,
//! finds no server error, no schema violation and no accepted invalid request.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use support::TestServer;

fn committed() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")
}

#[tokio::test]
async fn the_served_document_is_the_committed_one() {
    let server = TestServer::start(|_| {}).await;
    let (status, served) = server.get("/openapi.json").await;
    assert_eq!(status, 200);
    let text = serde_json::to_string_pretty(&served).unwrap() + "\n";
    if std::env::var_os("OMENDB_UPDATE_OPENAPI").is_some() {
        std::fs::write(committed(), &text).unwrap();
    }
    let on_disk = std::fs::read_to_string(committed()).unwrap_or_default();
    assert!(
        on_disk == text,
        "docs/openapi.json differs from the served document; if the API change is meant, run \
         OMENDB_UPDATE_OPENAPI=1 cargo test -p omendb-server --test openapi"
    );
    // Every route of the API is in it.
    let paths: Vec<&String> = served["paths"].as_object().unwrap().keys().collect();
    for path in [
        "/v1/tables",
        "/v1/tables/{table}",
        "/v1/tables/{table}/rows",
        "/v1/tables/{table}/rows/{key}",
        "/v1/tables/{table}/multi-get",
        "/v1/tables/{table}/delete-range",
        "/v1/tables/{table}/scan",
        "/v1/tables/{table}/aggregate",
        "/v1/tables/{table}/explain",
        "/v1/batch",
    ] {
        assert!(
            paths.iter().any(|p| *p == path),
            "{path} is missing from {paths:?}"
        );
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing() {
    let server = TestServer::start(|_| {}).await;
    // Tables for the generated requests to reach: schemathesis' table names are random, so
    // the short ones it tries first ("0", "a") exist.
    for name in ["0", "a", "A"] {
        server.create_metrics_table(name).await;
        let (status, _) = server
            .post(
                &format!("/v1/tables/{name}/rows"),
                json!([{"key": 0, "usage": 1.0}]),
            )
            .await;
        assert_eq!(status, 200);
    }
    let work = tempfile::tempdir().unwrap();
    let url = format!("{}/openapi.json", server.api);
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemathesis.toml");
    // Killed if it outlives the deadline (a blocking child would hold the runtime's shutdown).
    let run = tokio::process::Command::new("schemathesis")
        .current_dir(work.path())
        .args(["--config-file"])
        .arg(&config)
        .args([
            "run",
            &url,
            "--checks",
            "all",
            "--max-examples",
            "40",
            "--seed",
            "20261126",
            "--request-timeout",
            "20",
            "--max-response-time",
            "20",
            "--no-color",
        ])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .expect("schemathesis ran longer than 10 minutes")
        .unwrap_or_else(|e| {
            panic!(
                "schemathesis could not be started ({e}); `cargo xtask test` installs it \
                 (pip install schemathesis)"
            )
        });
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found failures:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The run did test every operation.
    assert!(stdout.contains("Tested: 13"), "{stdout}");
    // The server is still healthy after it.
    let (status, body) = server.get("/v1/tables").await;
    assert_eq!(status, 200);
    assert!(
        body["tables"]
            .as_array()
            .is_some_and(|t| t.contains(&Value::from("0")))
    );
    server.stop().await.unwrap();
}
