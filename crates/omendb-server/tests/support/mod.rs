//! A server started in this process on loopback ports the OS picks, over a temporary
//! directory, and stopped (gracefully) by the test.

#![allow(dead_code, unreachable_pub)] // each test file uses part of this

use std::time::{Duration, Instant};

use omendb_server::{Config, Server};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct TestServer {
    /// `http://127.0.0.1:port` of the client API.
    pub api: String,
    /// `http://127.0.0.1:port` of the admin listener.
    pub admin: String,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    pub dir: TempDir,
}

/// A configuration on loopback with ports the OS picks, data in `dir`.
pub fn config(dir: &std::path::Path) -> Config {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.server.admin_listen = "127.0.0.1:0".parse().unwrap();
    config.storage.path = dir.to_path_buf();
    config.log.slow_query_ms = 0;
    config.engine.memtable_mb = 8;
    config.engine.cache_mb = 16;
    config
}

impl TestServer {
    /// Starts a server whose configuration `edit` adjusts, and waits until it is ready.
    pub async fn start(edit: impl FnOnce(&mut Config)) -> TestServer {
        let server = Self::start_unready(edit).await;
        server.wait_ready().await;
        server
    }

    /// Starts a server without waiting for its database.
    pub async fn start_unready(edit: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path());
        edit(&mut config);
        let server = Server::bind(config).await.unwrap();
        let api = format!("http://{}", server.api_addr().unwrap());
        let admin = format!("http://{}", server.admin_addr().unwrap());
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        TestServer {
            api,
            admin,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            stop: Some(stop),
            task: Some(task),
            dir,
        }
    }

    /// Polls `/health/ready` until it answers 200 (at most 20 s).
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = self
                .client
                .get(format!("{}/health/ready", self.admin))
                .send()
                .await
                .map(|r| r.status().as_u16());
            if status.as_ref().is_ok_and(|s| *s == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the server never became ready: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the server gracefully and returns how its run ended.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.stop_inner().await
    }

    async fn stop_inner(&mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("the server did not stop within 30 s")
                .expect("the server task panicked"),
            None => Ok(()),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api)
    }

    /// Sends `method path` with a JSON body (if any) and returns the status and JSON body.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.client.request(method, self.url(path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
        };
        (status, json)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    /// Puts `batch` into `table` as an Arrow IPC stream of that one batch.
    pub async fn put_arrow(
        &self,
        table: &str,
        batch: &arrow_array::RecordBatch,
    ) -> reqwest::Response {
        let mut body = Vec::new();
        {
            let mut writer =
                arrow_ipc::writer::StreamWriter::try_new(&mut body, &batch.schema()).unwrap();
            writer.write(batch).unwrap();
            writer.finish().unwrap();
        }
        self.client
            .post(self.url(&format!("/v1/tables/{table}/rows")))
            .header("content-type", "application/vnd.apache.arrow.stream")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// The text of `/metrics`.
    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Creates the table `name` with a `host: utf8` and a `usage: float64` column.
    pub async fn create_metrics_table(&self, name: &str) {
        let (status, body) = self
            .post(
                "/v1/tables",
                json!({"name": name, "key_type": "u64", "columns": [
                    {"name": "host", "type": "utf8"},
                    {"name": "usage", "type": "float64", "nullable": false},
                ]}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Asserts the API's error shape and code.
pub fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], want_code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}
