#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point
//! The `omendb` binary as a process: configuration precedence and errors, `serve` with the
//! embedded default, graceful shutdown on SIGTERM, and SIGKILL during writes losing no
//! acknowledged write.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_omendb");

fn omendb(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command.current_dir(dir).args(args);
    // The test's own environment must not configure the server under test.
    for (name, _) in std::env::vars() {
        if name.starts_with("OMENDB_") {
            command.env_remove(name);
        }
    }
    command
}

#[test]
fn config_print_shows_defaults_file_env_and_flags_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let output = omendb(dir.path(), &["config", "print"]).output().unwrap();
    assert!(output.status.success());
    let printed: omendb_server::Config =
        toml::from_str(&String::from_utf8(output.stdout).unwrap()).unwrap();
    assert_eq!(printed, omendb_server::Config::default());

    std::fs::write(
        dir.path().join("omendb.toml"),
        "[limits]\npage_rows = 5\nmax_keys = 7\nrequest_timeout_ms = 9\n[engine]\ncache_mb = 3\n",
    )
    .unwrap();
    let output = omendb(
        dir.path(),
        &[
            "config",
            "print",
            "--config",
            "omendb.toml",
            "--set",
            "engine.cache_mb=9",
            "--data",
            "/srv/x",
        ],
    )
    .env("OMENDB_LIMITS__PAGE_ROWS", "6")
    .env("OMENDB_LIMITS__MAX_KEYS", "8")
    .env("OMENDB_ENGINE__CACHE_MB", "4")
    .env("OMENDB_CHAOS_SEEDS", "not configuration")
    .output()
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed: omendb_server::Config =
        toml::from_str(&String::from_utf8(output.stdout).unwrap()).unwrap();
    assert_eq!(printed.limits.request_timeout_ms, 9, "file over defaults");
    assert_eq!(printed.limits.page_rows, 6, "environment over file");
    assert_eq!(printed.limits.max_keys, 8, "environment over file");
    assert_eq!(printed.engine.cache_mb, 9, "flags over environment");
    assert_eq!(
        printed.storage.path,
        Path::new("/srv/x"),
        "flags over defaults"
    );
}

#[test]
fn a_bad_configuration_is_an_error_at_start_that_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("typo.toml"), "[limits]\npage_rowz = 5\n").unwrap();
    let cases: Vec<(Command, &str)> = vec![
        (
            omendb(dir.path(), &["serve", "--config", "typo.toml"]),
            "page_rowz",
        ),
        (
            {
                let mut c = omendb(dir.path(), &["serve"]);
                c.env("OMENDB_LIMITS__NOPE", "1");
                c
            },
            "nope",
        ),
        (
            omendb(dir.path(), &["serve", "--set", "limits.page_rows=abc"]),
            "limits.page_rows",
        ),
        (
            omendb(dir.path(), &["serve", "--set", "limits.page_rows=0"]),
            "limits.page_rows",
        ),
        (
            omendb(
                dir.path(),
                &["serve", "--set", "engine.durability=sometimes"],
            ),
            "durability",
        ),
        (
            omendb(
                dir.path(),
                &["serve", "--set", "engine.compaction_trigger=1"],
            ),
            "engine.compaction_trigger",
        ),
        (
            omendb(
                dir.path(),
                &["serve", "--set", "server.idle_timeout_ms=30000"],
            ),
            "server.idle_timeout_ms",
        ),
        (
            omendb(dir.path(), &["serve", "--set", "server.max_connections=0"]),
            "server.max_connections",
        ),
        (
            omendb(
                dir.path(),
                &[
                    "serve",
                    "--set",
                    "server.max_connections=18446744073709551615",
                ],
            ),
            "server.max_connections",
        ),
        (
            omendb(
                dir.path(),
                &["serve", "--set", "engine.cache_mb=17592186044416"],
            ),
            "engine.cache_mb",
        ),
        (
            omendb(dir.path(), &["serve", "--listen", "not-an-address"]),
            "server.listen",
        ),
        (
            omendb(dir.path(), &["serve", "--config", "missing.toml"]),
            "missing.toml",
        ),
        (
            omendb(dir.path(), &["serve", "--set", "novalue"]),
            "novalue",
        ),
    ];
    for (mut command, names) in cases {
        let output = exited_within(&mut command, Duration::from_secs(60));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{command:?}: {stderr}");
        assert!(
            stderr.contains(names),
            "{command:?} should name {names}: {stderr}"
        );
    }
    // Nothing was created by a start that failed.
    assert!(!dir.path().join("omendb-data").exists());
}

/// Runs `command` to its exit, killing it and failing after `limit`: a start that should fail
/// but serves instead (on the default ports) would otherwise hang the suite.
fn exited_within(command: &mut Command, limit: Duration) -> std::process::Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} still ran after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// A server process and the addresses it logged.
struct Process {
    child: Child,
    api: String,
    admin: String,
}

impl Process {
    /// Waits for the server to exit, at most a minute: a drain or shutdown that hangs (what
    /// the signal tests look for) fails its test instead of hanging the suite. The server is
    /// killed by `Drop` then.
    fn exit_status(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the server still ran a minute after it was told to stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    /// A test that fails midway leaves no server running (it is gone already if the test
    /// waited for its exit).
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `omendb serve` in `dir` on ports the OS picks and waits until it is ready.
fn serve(dir: &Path, extra: &[&str]) -> Process {
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--set",
        "log.format=json",
    ];
    args.extend_from_slice(extra);
    let mut child = omendb(dir, &args)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // The log is read on a thread of its own, which keeps draining it so the server never
    // blocks on a full pipe, and so that a server that hangs before it listens fails the test
    // instead of hanging the suite.
    let stderr = child.stderr.take().unwrap();
    let (lines, logged) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let mut process = Process {
        child,
        api: String::new(),
        admin: String::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match logged.recv_timeout(left) {
            Ok(line) => line,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("the server logged no addresses within a minute")
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                panic!(
                    "the server exited before listening: {:?}",
                    process.child.try_wait()
                )
            }
        };
        let entry: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        let fields = &entry["fields"];
        if let (Some(api), Some(admin)) = (fields["api"].as_str(), fields["admin"].as_str()) {
            process.api = format!("http://{api}");
            process.admin = format!("http://{admin}");
            break;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while status_of(&process.admin, "/health/ready") != Some(200) {
        assert!(Instant::now() < deadline, "the server never became ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    process
}

/// The status of `GET path` at `addr` (`http://host:port`), over a plain socket: `serve` runs
/// outside any async runtime.
fn status_of(addr: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let host = addr.strip_prefix("http://")?;
    let mut stream = std::net::TcpStream::connect(host).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    answer.split_whitespace().nth(1)?.parse().ok()
}

fn kill(child: &mut Child, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_uses_the_embedded_default_and_sigterm_drains_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let mut server = tokio::task::spawn_blocking(move || serve(&path, &[]))
        .await
        .unwrap();
    assert!(
        dir.path().join("omendb-data").join("wal").is_dir(),
        "data is in ./omendb-data"
    );
    let client = reqwest::Client::new();
    let created = client
        .post(format!("{}/v1/tables", server.api))
        .json(&json!({"name": "t", "key_type": "u64", "columns": [{"name": "v", "type": "int64"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let put = client
        .post(format!("{}/v1/tables/t/rows", server.api))
        .json(&json!([{"key": 1, "v": 10}, {"key": 2, "v": 20}]))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);

    kill(&mut server.child, "TERM");
    let status = tokio::task::spawn_blocking(move || server.exit_status())
        .await
        .unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM ends the server with exit code 0"
    );

    let path = dir.path().to_path_buf();
    let mut server = tokio::task::spawn_blocking(move || serve(&path, &[]))
        .await
        .unwrap();
    let body: Value = client
        .get(format!("{}/v1/tables/t/rows/2", server.api))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body, json!({"key": 2, "v": 20}));
    kill(&mut server.child, "INT");
    let status = tokio::task::spawn_blocking(move || server.exit_status())
        .await
        .unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "SIGINT ends the server with exit code 0"
    );
}

/// A CPU profile still running on the admin listener at SIGTERM does not hold the exit past the
/// grace period (it held it for the profile's length, up to a minute).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_profile_does_not_hold_the_exit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let mut server = tokio::task::spawn_blocking(move || {
        serve(&path, &["--set", "server.shutdown_grace_ms=300"])
    })
    .await
    .unwrap();
    let profile = tokio::spawn(
        reqwest::Client::new()
            .get(format!("{}/debug/pprof/profile?seconds=30", server.admin))
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!profile.is_finished(), "the profile ended early");
    let started = Instant::now();
    kill(&mut server.child, "TERM");
    let status = tokio::task::spawn_blocking(move || server.exit_status())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the exit waited {:?} for the profile",
        started.elapsed()
    );
    profile.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_writes_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut acknowledged: Vec<u64> = Vec::new();
    let mut next_key = 0u64;
    for round in 0..3u64 {
        let path = dir.path().to_path_buf();
        let mut server =
            tokio::task::spawn_blocking(move || serve(&path, &["--set", "engine.memtable_mb=1"]))
                .await
                .unwrap();
        if round == 0 {
            let created = client
                .post(format!("{}/v1/tables", server.api))
                .json(&json!({"name": "events", "key_type": "u64", "columns": [{"name": "v", "type": "utf8", "nullable": false}]}))
                .send()
                .await
                .unwrap();
            assert_eq!(created.status(), 201);
        }
        // Every key acknowledged in an earlier life is still there.
        verify(&client, &server.api, &acknowledged).await;

        // Eight writers put batches of fresh keys until the process is killed under them.
        let killed = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for w in 0..8u64 {
            let client = client.clone();
            let api = server.api.clone();
            let killed = Arc::clone(&killed);
            let first = next_key + w * 1_000_000;
            writers.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut key = first;
                while !killed.load(Ordering::SeqCst) {
                    let rows: Vec<Value> = (key..key + 50)
                        .map(|k| json!({"key": k, "v": format!("value-{k}")}))
                        .collect();
                    let answer = client
                        .post(format!("{api}/v1/tables/events/rows"))
                        .json(&rows)
                        .send()
                        .await;
                    match answer {
                        Ok(r) if r.status() == 200 => acked.extend(key..key + 50),
                        // A request cut by the kill is not acknowledged; anything else is a bug.
                        Ok(r) => panic!(
                            "a write failed: {} {}",
                            r.status(),
                            r.text().await.unwrap_or_default()
                        ),
                        Err(_) => break,
                    }
                    key += 50;
                }
                acked
            }));
        }
        let wait = 300 + (round * 377) % 700;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        kill(&mut server.child, "KILL");
        killed.store(true, Ordering::SeqCst);
        let _ = tokio::task::spawn_blocking(move || server.exit_status())
            .await
            .unwrap();
        for writer in writers {
            acknowledged.extend(writer.await.unwrap());
        }
        next_key += 8 * 1_000_000;
        assert!(
            !acknowledged.is_empty(),
            "round {round}: nothing was acknowledged"
        );
    }
    let path = dir.path().to_path_buf();
    let mut server = tokio::task::spawn_blocking(move || serve(&path, &[]))
        .await
        .unwrap();
    verify(&client, &server.api, &acknowledged).await;
    // Nothing else is there but the batches in flight at the kills: at most one a writer a life.
    let count: Value = client
        .post(format!("{}/v1/tables/events/aggregate", server.api))
        .json(&json!({"column": "v", "function": "count"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let count = count["rows"][0]["count"].as_u64().unwrap();
    let in_flight = 3 * 8 * 50;
    assert!(
        (acknowledged.len() as u64..=acknowledged.len() as u64 + in_flight).contains(&count),
        "{count} rows for {} acknowledged",
        acknowledged.len()
    );
    kill(&mut server.child, "TERM");
    let _ = tokio::task::spawn_blocking(move || server.exit_status())
        .await
        .unwrap();
}

/// Every key in `keys` is present with its value.
async fn verify(client: &reqwest::Client, api: &str, keys: &[u64]) {
    for chunk in keys.chunks(5_000) {
        let body: Value = client
            .post(format!("{api}/v1/tables/events/multi-get"))
            .json(&json!({"keys": chunk}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let rows = body["rows"].as_array().unwrap();
        assert_eq!(
            rows.len(),
            chunk.len(),
            "a multi-get answered another count"
        );
        for (key, row) in chunk.iter().zip(rows) {
            assert_eq!(
                row,
                &json!({"key": key, "v": format!("value-{key}")}),
                "acknowledged key {key} is lost or wrong"
            );
        }
    }
}
