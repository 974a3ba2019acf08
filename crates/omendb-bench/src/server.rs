//! `omendb-bench server`: the `omendb` server on loopback, driven over HTTP/1.1 by 128 and then
//! 1024 concurrent connections: random gets (10% absent keys), then single-row durable puts.
//!
//! The server runs in this process on its own tokio runtime (as many workers as cores, as
//! `omendb serve` has), the clients on another; both share the machine, as the issue asks. Each
//! connection is one hyper HTTP/1.1 connection with requests one after another (keep-alive), so
//! "connections" is exactly the concurrency. Every get's body is compared byte for byte with the
//! row it must be (or must be a 404 for an absent key); a sample of every put is read back. A
//! wrong answer makes `checksum_ok` false and the command fail.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;

use crate::report::{self, Report, percentile};

/// Arguments of `omendb-bench server`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Keys loaded before the gets.
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// Concurrent connections, one run each.
    #[arg(long, value_delimiter = ',', default_values_t = [128, 1024])]
    connections: Vec<usize>,
    /// Seconds each run lasts.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Print one JSON object per row instead of a table.
    #[arg(long)]
    json: bool,
}

/// One row of the output contract in `shared/design/PERFORMANCE.md` (`workload` `get` or `put`).
#[derive(Serialize)]
struct Row {
    engine: &'static str,
    workload: &'static str,
    connections: usize,
    keys: u64,
    ops_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
    checksum_ok: bool,
}

/// The value of key `k`: 16 bytes, different for every key.
fn value(k: u64) -> String {
    format!("v{k:015}")
}

/// The body a get of a present key must answer.
fn expected_row(k: u64) -> String {
    format!("{{\"key\":{k},\"v\":\"{}\"}}", value(k))
}

/// Runs the benchmark.
pub(crate) fn run(args: &Args) -> Result<()> {
    ensure!(
        args.keys > 0 && args.seconds > 0.0,
        "--keys and --seconds must be positive"
    );
    let mut report = Report::new(args.json);
    report.note(&format!("machine: {}", report::machine()));
    let dir = tempfile::tempdir().context("creating the data directory")?;
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .thread_name("server")
        .enable_all()
        .build()?;
    let client_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .thread_name("client")
        .enable_all()
        .build()?;

    let mut config = omendb_server::Config::default();
    config.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.server.admin_listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.storage.path = dir.path().to_path_buf();
    config.log.slow_query_ms = 0;
    config.limits.max_concurrent_queries = 4096;
    let server = server_runtime.block_on(omendb_server::Server::bind(config))?;
    let addr = server.api_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = server_runtime.spawn(server.run(async move {
        let _ = stopped.await;
    }));
    report.note(&format!(
        "server on {addr}: embedded default (durable writes, group commit), {cores} worker \
         threads; clients: hyper HTTP/1.1, one connection per task, {cores} worker threads"
    ));

    let result = client_runtime.block_on(drive(args, addr, &mut report));
    let _ = stop.send(());
    server_runtime
        .block_on(served)
        .context("the server task failed")??;
    result
}

async fn drive(args: &Args, addr: SocketAddr, report: &mut Report) -> Result<()> {
    wait_ready(addr).await?;
    let mut setup = Connection::open(addr).await?;
    let (status, body) = setup
        .send(
            Method::POST,
            "/v1/tables",
            r#"{"name":"bench","key_type":"u64","columns":[{"name":"v","type":"utf8","nullable":false}]}"#
                .to_owned(),
        )
        .await?;
    ensure!(
        status == StatusCode::CREATED,
        "creating the table: {status} {body:?}"
    );
    let started = Instant::now();
    for chunk in (0..args.keys).collect::<Vec<_>>().chunks(10_000) {
        let rows: Vec<String> = chunk
            .iter()
            .map(|&k| format!("{{\"key\":{},\"v\":\"{}\"}}", k * 2, value(k * 2)))
            .collect();
        let (status, body) = setup
            .send(
                Method::POST,
                "/v1/tables/bench/rows",
                format!("[{}]", rows.join(",")),
            )
            .await?;
        ensure!(status == StatusCode::OK, "loading: {status} {body:?}");
    }
    report.note(&format!(
        "loaded {} keys (even numbers; odd ones are absent) in {:.1} s",
        args.keys,
        started.elapsed().as_secs_f64()
    ));
    let duration = Duration::from_secs_f64(args.seconds);
    let (mut all_ok, mut errors) = (true, 0);
    for &connections in &args.connections {
        let row = run_workload(addr, Workload::Get, connections, args.keys, duration).await?;
        all_ok &= row.checksum_ok;
        errors += row.errors;
        report.row(&row)?;
    }
    for &connections in &args.connections {
        let row = run_workload(addr, Workload::Put, connections, args.keys, duration).await?;
        all_ok &= row.checksum_ok;
        errors += row.errors;
        report.row(&row)?;
    }
    if !all_ok {
        bail!("a wrong answer: see the rows with checksum_ok false");
    }
    // A request or connection that failed made its row's clients fewer or idle for a while:
    // the row's figures are not those of the load it names (it printed and exited 0 before the
    // twenty-eighth session).
    if errors > 0 {
        bail!("{errors} requests or connections failed: see the rows' errors column");
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Workload {
    Get,
    Put,
}

/// What one connection measured.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<f64>,
    errors: u64,
    wrong: u64,
    /// Keys this connection put (for the read-back).
    written: Vec<u64>,
}

async fn run_workload(
    addr: SocketAddr,
    workload: Workload,
    connections: usize,
    keys: u64,
    duration: Duration,
) -> Result<Row> {
    let start = Arc::new(tokio::sync::Barrier::new(connections + 1));
    let mut tasks = Vec::with_capacity(connections);
    for c in 0..connections {
        let start = Arc::clone(&start);
        tasks.push(tokio::spawn(async move {
            let connection = Connection::open(addr).await;
            start.wait().await;
            let mut tally = Tally::default();
            let Ok(mut connection) = connection else {
                tally.errors += 1;
                return tally;
            };
            let deadline = Instant::now() + duration;
            let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (c as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
            // Fresh keys for puts: above every loaded key, disjoint between connections.
            let mut next_put = 2 * keys + 1 + (c as u64) * 1_000_000_000;
            while Instant::now() < deadline {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let began = Instant::now();
                let answer = match workload {
                    Workload::Get => {
                        // 10% absent keys (odd numbers), as PERFORMANCE.md asks of lookups.
                        let key = if rng.is_multiple_of(10) {
                            (rng >> 8) % keys * 2 + 1
                        } else {
                            (rng >> 8) % keys * 2
                        };
                        connection
                            .send(
                                Method::GET,
                                &format!("/v1/tables/bench/rows/{key}"),
                                String::new(),
                            )
                            .await
                            .map(|(status, body)| {
                                if key.is_multiple_of(2) {
                                    status == StatusCode::OK && body == expected_row(key).as_bytes()
                                } else {
                                    status == StatusCode::NOT_FOUND
                                }
                            })
                    }
                    Workload::Put => {
                        let key = next_put;
                        next_put += 1;
                        let body = format!("[{}]", expected_row(key));
                        connection
                            .send(Method::POST, "/v1/tables/bench/rows", body)
                            .await
                            .map(|(status, _)| {
                                let ok = status == StatusCode::OK;
                                if ok {
                                    tally.written.push(key);
                                }
                                ok
                            })
                    }
                };
                match answer {
                    Ok(true) => tally.latencies_us.push(began.elapsed().as_secs_f64() * 1e6),
                    Ok(false) => tally.wrong += 1,
                    Err(_) => {
                        tally.errors += 1;
                        match Connection::open(addr).await {
                            Ok(fresh) => connection = fresh,
                            Err(_) => break,
                        }
                    }
                }
            }
            tally
        }));
    }
    start.wait().await;
    let began = Instant::now();
    let mut latencies = Vec::new();
    let (mut errors, mut wrong) = (0, 0);
    let mut written = Vec::new();
    for task in tasks {
        let tally = task.await.context("a client task failed")?;
        latencies.extend(tally.latencies_us);
        errors += tally.errors;
        wrong += tally.wrong;
        written.extend(tally.written.into_iter().step_by(97));
    }
    let elapsed = began.elapsed().as_secs_f64();
    let ops = latencies.len() as f64;
    // Every acknowledged put must read back (a sample of them).
    let mut check = Connection::open(addr).await?;
    for &key in &written {
        let (status, body) = check
            .send(
                Method::GET,
                &format!("/v1/tables/bench/rows/{key}"),
                String::new(),
            )
            .await?;
        if status != StatusCode::OK || body != expected_row(key).as_bytes() {
            wrong += 1;
        }
    }
    Ok(Row {
        engine: "omendb-server",
        workload: match workload {
            Workload::Get => "get",
            Workload::Put => "put",
        },
        connections,
        keys,
        ops_per_s: ops / elapsed,
        p50_us: percentile(&mut latencies, 0.5),
        p99_us: percentile(&mut latencies, 0.99),
        errors,
        checksum_ok: wrong == 0,
    })
}

/// One keep-alive HTTP/1.1 connection.
struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
}

impl Connection {
    async fn open(addr: SocketAddr) -> Result<Self> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Self {
            sender,
            host: addr.to_string(),
        })
    }

    async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: String,
    ) -> Result<(StatusCode, Bytes)> {
        self.sender.ready().await?;
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.host)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

/// Waits until the server answers (the database opens in the background).
async fn wait_ready(addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut c) = Connection::open(addr).await
            && let Ok((status, _)) = c.send(Method::GET, "/v1/tables", String::new()).await
            && status == StatusCode::OK
        {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "the server did not become ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
