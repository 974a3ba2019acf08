//! [`TcpProxy`]: a loopback TCP proxy between a client and a server that, on command, delays
//! traffic, drops bytes, resets connections and partitions the two sides, so replication tests
//! can put a bad network between a primary and a replica.
//!
//! Every task belongs to the proxy: dropping it (or [`TcpProxy::stop`]) ends the accept loop and,
//! with it, every forwarded connection.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// The size of the buffer each direction of a connection reads into.
const CHUNK: usize = 16 * 1024;

/// The pause after a failed `accept` (out of file descriptors, say) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// The network the proxy plays, shared with every task through a `watch` channel.
#[derive(Clone, Debug, Default)]
struct Conditions {
    /// Added before each forwarded chunk.
    delay: Duration,
    /// Bytes read are discarded instead of forwarded.
    drop_data: bool,
    /// Nothing is forwarded and new connections wait; bytes stay buffered until the heal.
    partitioned: bool,
    /// Bumped by every reset: a connection accepted under an older value is reset.
    resets: u64,
}

/// A TCP proxy on a loopback port that forwards every connection to `upstream`, with network
/// faults switched on and off at runtime.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    conditions: watch::Sender<Conditions>,
    accept: JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on `127.0.0.1` at a free port and forwards every connection to `upstream`. Must be
    /// called inside a Tokio runtime, which runs the proxy's tasks.
    pub async fn start(upstream: SocketAddr) -> io::Result<TcpProxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let (conditions, watching) = watch::channel(Conditions::default());
        let accept = tokio::spawn(accept_loop(listener, upstream, watching));
        Ok(TcpProxy {
            addr,
            upstream,
            conditions,
            accept,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address connections are forwarded to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Adds `delay` before each forwarded chunk, in both directions (zero for none).
    pub fn delay(&self, delay: Duration) {
        self.conditions.send_modify(|c| c.delay = delay);
    }

    /// Silently discards (or, with `false`, forwards again) the bytes of every connection, in
    /// both directions; connections stay open, so the loss shows only as missing data.
    pub fn drop_data(&self, drop: bool) {
        self.conditions.send_modify(|c| c.drop_data = drop);
    }

    /// Resets every current connection (both sides see a reset or an end of stream); later
    /// connections are forwarded as usual.
    pub fn reset(&self) {
        self.conditions
            .send_modify(|c| c.resets = c.resets.wrapping_add(1));
    }

    /// Cuts the network: current connections stop passing bytes and new connections are accepted
    /// but held, not forwarded. As with TCP over a real partition nothing is lost: held bytes and
    /// connections go through after [`heal`](Self::heal).
    pub fn partition(&self) {
        self.conditions.send_modify(|c| c.partitioned = true);
    }

    /// Back to a normal network: no partition, no delay, no dropped bytes.
    pub fn heal(&self) {
        self.conditions.send_modify(|c| {
            c.partitioned = false;
            c.drop_data = false;
            c.delay = Duration::ZERO;
        });
    }

    /// Stops listening and closes every connection (as dropping the proxy does).
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        // The accept task owns every connection task in a `JoinSet`, which aborts them when the
        // accept task is dropped: nothing outlives the proxy.
        self.accept.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    conditions: watch::Receiver<Conditions>,
) {
    let mut connections = JoinSet::new();
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                // Reap finished connections so that the set does not grow with every one.
                while connections.try_join_next().is_some() {}
                connections.spawn(forward(client, upstream, conditions.clone()));
            }
            Err(_) => tokio::time::sleep(ACCEPT_BACKOFF).await,
        }
    }
}

/// Forwards one connection until either side closes it, a reset, or the proxy stops.
async fn forward(
    mut client: TcpStream,
    upstream: SocketAddr,
    conditions: watch::Receiver<Conditions>,
) {
    let mut watcher = conditions.clone();
    let epoch = watcher.borrow_and_update().resets;
    let mut server = None;
    let reset = tokio::select! {
        _ = relay(&mut client, &mut server, upstream, &conditions) => false,
        changed = watcher.wait_for(|c| c.resets != epoch) => changed.is_ok(),
    };
    if reset {
        // A zero linger makes the close below send RST instead of FIN, as a reset should. If
        // it cannot be set the close is a FIN, which a client also sees as the end.
        let _ = client.set_zero_linger();
        if let Some(server) = &server {
            let _ = server.set_zero_linger();
        }
    }
}

/// Connects to upstream (after any partition heals) and pumps bytes both ways. It ends at the
/// first error of either direction, or once both have seen the end of their stream.
async fn relay(
    client: &mut TcpStream,
    server: &mut Option<TcpStream>,
    upstream: SocketAddr,
    conditions: &watch::Receiver<Conditions>,
) -> io::Result<()> {
    heal_of(&mut conditions.clone()).await?;
    let server = server.insert(TcpStream::connect(upstream).await?);
    // Small messages go out at once: Nagle's algorithm would add delays the test did not ask for.
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (client_read, client_write) = client.split();
    let (server_read, server_write) = server.split();
    tokio::try_join!(
        pump(client_read, server_write, conditions.clone()),
        pump(server_read, client_write, conditions.clone()),
    )?;
    Ok(())
}

/// Copies `from` to `to` chunk by chunk under the current conditions, then passes the end of
/// the stream on (the other direction may still carry bytes).
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut conditions: watch::Receiver<Conditions>,
) -> io::Result<()> {
    let mut buf = vec![0; CHUNK];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        let delay = conditions.borrow().delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        // Checked after the delay, so a partition that starts meanwhile still holds this chunk.
        if heal_of(&mut conditions).await?.drop_data {
            continue;
        }
        to.write_all(&buf[..n]).await?;
    }
}

/// Waits until the network is not partitioned and returns the conditions then; fails once the
/// proxy is gone.
async fn heal_of(conditions: &mut watch::Receiver<Conditions>) -> io::Result<Conditions> {
    conditions
        .wait_for(|c| !c.partitioned)
        .await
        .map(|c| c.clone())
        .map_err(|_| io::Error::other("the proxy stopped"))
}
