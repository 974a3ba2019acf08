#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

//! `TcpProxy` between a client and an echo server: forwarding, delay, dropped bytes, partition
//! and heal, reset, stop. Every wait is bounded, so a broken proxy fails a test instead of
//! hanging it.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use omendb_chaos::proxy::TcpProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

/// How long a read that should stall is given before the test calls it stalled.
const STALL: Duration = Duration::from_millis(300);

/// A bound on any wait that should succeed.
const PATIENCE: Duration = Duration::from_secs(3);

/// An echo server on a loopback port; it lives as long as the test's runtime.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = socket.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    addr
}

async fn proxied() -> TcpProxy {
    TcpProxy::start(echo_server().await).await.unwrap()
}

async fn connect(proxy: &TcpProxy) -> TcpStream {
    let stream = timeout(PATIENCE, TcpStream::connect(proxy.addr()))
        .await
        .unwrap()
        .unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Sends `message` and reads as many bytes back, failing after `within`.
async fn echo(stream: &mut TcpStream, message: &[u8], within: Duration) -> io::Result<Vec<u8>> {
    stream.write_all(message).await?;
    let mut back = vec![0; message.len()];
    timeout(within, stream.read_exact(&mut back))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no echo"))??;
    Ok(back)
}

#[tokio::test]
async fn bytes_round_trip_through_the_proxy() {
    let proxy = proxied().await;
    assert!(proxy.addr().ip().is_loopback());
    let mut client = connect(&proxy).await;
    for message in [&b"hello"[..], &[7; 100_000][..]] {
        assert_eq!(echo(&mut client, message, PATIENCE).await.unwrap(), message);
    }
    // Two connections at once stay apart.
    let mut other = connect(&proxy).await;
    assert_eq!(echo(&mut other, b"two", PATIENCE).await.unwrap(), b"two");
    assert_eq!(echo(&mut client, b"one", PATIENCE).await.unwrap(), b"one");
}

#[tokio::test]
async fn delay_adds_at_least_the_delay() {
    let proxy = proxied().await;
    let mut client = connect(&proxy).await;
    let delay = Duration::from_millis(150);
    proxy.delay(delay);
    let started = Instant::now();
    assert_eq!(echo(&mut client, b"slow", PATIENCE).await.unwrap(), b"slow");
    // Delayed once on the way there and once on the way back.
    assert!(started.elapsed() >= 2 * delay, "{:?}", started.elapsed());

    proxy.delay(Duration::ZERO);
    let started = Instant::now();
    echo(&mut client, b"fast", PATIENCE).await.unwrap();
    assert!(started.elapsed() < delay, "{:?}", started.elapsed());
}

#[tokio::test]
async fn dropped_bytes_are_lost_but_the_connection_stays_open() {
    let proxy = proxied().await;
    let mut client = connect(&proxy).await;
    proxy.drop_data(true);
    let err = echo(&mut client, b"lost", STALL).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    proxy.drop_data(false);
    assert_eq!(echo(&mut client, b"kept", PATIENCE).await.unwrap(), b"kept");
}

#[tokio::test]
async fn a_partition_stalls_traffic_until_it_heals() {
    let proxy = proxied().await;
    let mut old = connect(&proxy).await;
    echo(&mut old, b"before", PATIENCE).await.unwrap();

    proxy.partition();
    let err = echo(&mut old, b"during", STALL).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    // A new connection is held, not forwarded.
    let mut held = connect(&proxy).await;
    let err = echo(&mut held, b"held", STALL).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);

    proxy.heal();
    let mut fresh = connect(&proxy).await;
    assert_eq!(
        echo(&mut fresh, b"after", PATIENCE).await.unwrap(),
        b"after"
    );
    // Nothing held was lost: it all goes through once the partition heals.
    let mut back = vec![0; 6];
    timeout(PATIENCE, old.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, b"during");
    let mut back = vec![0; 4];
    timeout(PATIENCE, held.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, b"held");
}

/// Waits for the end of `stream`: an end of stream or a reset, never data.
async fn assert_closed(stream: &mut TcpStream) {
    let mut buf = [0; 16];
    match timeout(PATIENCE, stream.read(&mut buf)).await.unwrap() {
        Ok(0) => {}
        Err(err) => assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}"),
        Ok(n) => panic!("{n} bytes after a reset"),
    }
}

#[tokio::test]
async fn reset_closes_every_current_connection() {
    let proxy = proxied().await;
    let mut first = connect(&proxy).await;
    let mut second = connect(&proxy).await;
    echo(&mut first, b"one", PATIENCE).await.unwrap();
    echo(&mut second, b"two", PATIENCE).await.unwrap();

    proxy.reset();
    assert_closed(&mut first).await;
    assert_closed(&mut second).await;
    let mut later = connect(&proxy).await;
    assert_eq!(
        echo(&mut later, b"later", PATIENCE).await.unwrap(),
        b"later"
    );
}

#[tokio::test]
async fn stop_closes_every_connection() {
    let proxy = proxied().await;
    let mut client = connect(&proxy).await;
    echo(&mut client, b"one", PATIENCE).await.unwrap();
    proxy.stop();
    assert_closed(&mut client).await;
}
