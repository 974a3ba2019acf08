#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point
//! The client API's connections: the cap on open connections and the idle timeout, seen by raw
//! TCP clients (an HTTP client library would hide when a connection opens and closes).

mod support;

use std::time::{Duration, Instant};

use support::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REQUEST: &[u8] = b"GET /v1/tables HTTP/1.1\r\nHost: omendb\r\n\r\n";

async fn connect(server: &TestServer) -> TcpStream {
    let addr = server.api.trim_start_matches("http://");
    TcpStream::connect(addr).await.unwrap()
}

/// Reads until the end of one response head and returns it (bodies here are small and sent
/// with it).
async fn response(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0_u8; 4096];
    let read = async {
        loop {
            let n = stream.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            head.extend_from_slice(&buf[..n]);
            if head.windows(4).any(|w| w == b"\r\n\r\n") {
                return Some(String::from_utf8_lossy(&head).into_owned());
            }
        }
    };
    tokio::time::timeout(within, read).await.ok().flatten()
}

/// Asserts that the next answer on `stream` (within ten seconds) is a 200.
async fn answered_200(stream: &mut TcpStream) {
    let head = response(stream, Duration::from_secs(10)).await;
    assert!(
        head.as_deref()
            .is_some_and(|h| h.starts_with("HTTP/1.1 200")),
        "{head:?}"
    );
}

/// Whether the server closes `stream` (end of stream or a reset) within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0_u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

async fn open_connections(server: &TestServer) -> f64 {
    let metrics = server.metrics().await;
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("omendb_http_connections "))
        .unwrap_or_else(|| panic!("no omendb_http_connections gauge:\n{metrics}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    let server = TestServer::start(|config| config.server.max_connections = 2).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = connect(&server).await;
        stream.write_all(REQUEST).await.unwrap();
        answered_200(&mut stream).await;
        held.push(stream);
    }
    assert_eq!(open_connections(&server).await, 2.0);

    // The kernel completes the handshake (the backlog), but the server does not take the
    // connection while two are open: its request goes unanswered.
    let mut waiting = connect(&server).await;
    waiting.write_all(REQUEST).await.unwrap();
    assert_eq!(
        response(&mut waiting, Duration::from_millis(700)).await,
        None
    );
    assert_eq!(open_connections(&server).await, 2.0);

    drop(held.pop());
    answered_200(&mut waiting).await;
    drop(held);
    drop(waiting);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_connection_idle_or_unanswered_for_the_timeout_is_closed() {
    let idle = Duration::from_millis(600);
    let server = TestServer::start(|config| {
        config.server.idle_timeout_ms = idle.as_millis() as u64;
        config.limits.request_timeout_ms = 300;
    })
    .await;

    let opened = Instant::now();
    // Connects and sends nothing.
    let mut silent = connect(&server).await;
    // Stops in the middle of its request's head.
    let mut partial = connect(&server).await;
    partial.write_all(&REQUEST[..20]).await.unwrap();
    // Keeps its connection after an answer (keep-alive) and sends no second request.
    let mut kept = connect(&server).await;
    kept.write_all(REQUEST).await.unwrap();
    assert!(response(&mut kept, Duration::from_secs(10)).await.is_some());
    for (what, stream) in [
        ("a silent client", &mut silent),
        ("a partial request", &mut partial),
        ("an idle keep-alive connection", &mut kept),
    ] {
        assert!(
            closed_within(stream, Duration::from_secs(10)).await,
            "{what} was not closed within 10 s"
        );
        // Each was last active after `opened`.
        let after = opened.elapsed();
        assert!(
            after >= idle,
            "{what} was closed after {after:?}, before the idle timeout"
        );
    }

    // A client that trickles its request's head a few bytes at a time, each within the
    // timeout, keeps the connection busy but gets no answer: closed once its first bytes have
    // waited the timeout (a slowloris would otherwise hold a connection for good).
    let mut trickle = connect(&server).await;
    let started = Instant::now();
    let mut cut = false;
    for chunk in REQUEST.chunks(2) {
        if trickle.write_all(chunk).await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(idle / 4).await;
    }
    assert!(
        cut || closed_within(&mut trickle, Duration::from_secs(10)).await,
        "a trickling client was never closed"
    );
    assert!(started.elapsed() >= idle, "closed before the timeout");

    // One whose head arrives in pieces well within the timeout is answered.
    let mut pieces = connect(&server).await;
    for chunk in REQUEST.chunks(REQUEST.len() / 3) {
        pieces.write_all(chunk).await.unwrap();
        tokio::time::sleep(idle / 10).await;
    }
    answered_200(&mut pieces).await;
    drop(pieces);

    let deadline = Instant::now() + Duration::from_secs(10);
    while open_connections(&server).await != 0.0 {
        assert!(
            Instant::now() < deadline,
            "connections still counted open: {}",
            open_connections(&server).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await.unwrap();
}

/// A write's body holds its room among the writes in flight from before it is read: a client
/// still sending a 200 KB body keeps a second write out (429 at once) until it goes away. Bodies
/// were read whole before they asked for room, so slow or many senders held memory past
/// `limits.max_inflight_write_bytes`.
#[tokio::test]
async fn a_write_reserves_its_body_before_reading_it() {
    let server = TestServer::start(|config| {
        config.limits.max_body_bytes = 256 << 10;
        config.limits.max_inflight_write_bytes = 256 << 10;
    })
    .await;
    server.create_metrics_table("cpu").await;
    let mut slow = connect(&server).await;
    slow.write_all(
        b"POST /v1/tables/cpu/rows HTTP/1.1\r\nHost: omendb\r\n\
          Content-Type: application/json\r\nContent-Length: 200000\r\n\r\n[{\"key\": 1",
    )
    .await
    .unwrap();
    let rows: Vec<_> = (0..2_500u64)
        .map(|k| serde_json::json!({"key": k, "host": "h", "usage": 1.0}))
        .collect();
    let body = serde_json::to_vec(&rows).unwrap();
    assert!(body.len() > 70_000, "{}", body.len());
    let put = |body: Vec<u8>| {
        server
            .client
            .post(server.url("/v1/tables/cpu/rows"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let started = Instant::now();
    let refused = loop {
        let status = put(body.clone()).await.unwrap().status().as_u16();
        if status == 429 {
            break true;
        }
        // The slow request may not have reached its handler yet.
        if started.elapsed() > Duration::from_secs(10) {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        refused,
        "a second write fit beside a 200 KB body being sent"
    );
    // A body declared over the limit is refused before any of it is read.
    let mut large = connect(&server).await;
    large
        .write_all(
            b"POST /v1/tables/cpu/rows HTTP/1.1\r\nHost: omendb\r\n\
              Content-Type: application/json\r\nContent-Length: 300000\r\n\r\n",
        )
        .await
        .unwrap();
    let head = response(&mut large, Duration::from_secs(10)).await;
    assert!(
        head.as_deref()
            .is_some_and(|h| h.starts_with("HTTP/1.1 413")),
        "{head:?}"
    );
    // The slow client goes away: its room is given back.
    drop(slow);
    let started = Instant::now();
    loop {
        let status = put(body.clone()).await.unwrap().status().as_u16();
        if status == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the abandoned body's room was never given back: {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await.unwrap();
}
