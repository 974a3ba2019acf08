//! The client API's connections: at most `server.max_connections` open at once, each closed
//! after `server.idle_timeout_ms` without a byte read or written.
//!
//! Without the cap, clients that open connections and never close them would use up the
//! process's file descriptors, and with them the files the database opens; without the idle
//! timeout, a client that connects and sends nothing (or stops reading its answer) would hold
//! its connection for good.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// A listener that serves at most its cap of connections at once; at the cap new connections
/// wait (in the kernel's backlog) until one closes.
pub struct Connections {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    idle_timeout: Duration,
    full: bool,
}

impl Connections {
    /// Accepts on `listener` while `slots` has a permit; each connection holds one until it
    /// closes.
    pub fn new(listener: TcpListener, slots: Arc<Semaphore>, idle_timeout: Duration) -> Self {
        Self {
            listener,
            slots,
            idle_timeout,
            full: false,
        }
    }

    async fn slot(&mut self) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() {
            self.full = false;
            return Some(permit);
        }
        if !self.full {
            // Once per spell at the cap, not once per connection waiting.
            tracing::warn!(
                "server.max_connections connections are open: new ones wait until one closes"
            );
            self.full = true;
        }
        // Fails only if the semaphore was closed, which no code does: the connection is then
        // served without a slot rather than the listener stopping.
        Arc::clone(&self.slots).acquire_owned().await.ok()
    }
}

impl axum::serve::Listener for Connections {
    type Io = Connection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Connection, SocketAddr) {
        // `TcpListener`'s own accept retries errors (sleeping a second after one such as
        // `EMFILE`) and logs them.
        let (stream, addr) = axum::serve::Listener::accept(&mut self.listener).await;
        // Taken after the accept, so that the count of slots in use is the count of
        // connections served; at the cap, this one connection waits here and the rest in the
        // kernel's backlog.
        let slot = self.slot().await;
        let connection = Connection {
            stream,
            idle_timeout: self.idle_timeout,
            last_io: Instant::now(),
            unanswered_since: None,
            timer: Box::pin(tokio::time::sleep(self.idle_timeout)),
            _slot: slot,
        };
        (connection, addr)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// An accepted connection: fails its pending read or write once nothing has moved either way
/// for the idle timeout, or once bytes it read have waited that long for any answer, which
/// makes the server close it.
pub struct Connection {
    stream: TcpStream,
    idle_timeout: Duration,
    last_io: Instant,
    /// The first read since the last write: a client that trickles its request a byte at a
    /// time keeps `last_io` fresh but gets no answer (axum gives hyper no timer, so hyper's own
    /// header timeout does not apply). A request read whole is answered within
    /// `limits.request_timeout_ms`, shorter than the idle timeout.
    unanswered_since: Option<Instant>,
    // Armed for `last_io + idle_timeout` at most: moved on when it fires early rather than on
    // every read and write, which would touch the timer wheel per call.
    timer: Pin<Box<Sleep>>,
    _slot: Option<OwnedSemaphorePermit>,
}

impl Connection {
    /// Ready with the error to fail a pending call with once the connection has been idle for
    /// its timeout; registers the task's waker for that moment otherwise.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            ready!(self.timer.as_mut().poll(cx));
            let deadline = self.unanswered_since.unwrap_or(self.last_io) + self.idle_timeout;
            if deadline <= Instant::now() {
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "nothing read or written, or nothing answered, for server.idle_timeout_ms",
                ));
            }
            self.timer.as_mut().reset(deadline);
        }
    }

    /// `poll`'s result, or the idle error in place of `Pending` once the connection is idle;
    /// progress restarts the idle clock, and a write the answer clock.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<T>>,
        moved: impl FnOnce(&T) -> Option<Direction>,
    ) -> Poll<io::Result<T>> {
        match poll {
            Poll::Ready(Ok(done)) => {
                if let Some(direction) = moved(&done) {
                    self.last_io = Instant::now();
                    self.unanswered_since = match direction {
                        Direction::Read => self.unanswered_since.or(Some(self.last_io)),
                        Direction::Write => None,
                    };
                }
                Poll::Ready(Ok(done))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => self.poll_idle(cx).map(Err),
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.stream).poll_read(cx, buf);
        let read = buf.filled().len() > before;
        this.watch(cx, poll, |()| read.then_some(Direction::Read))
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.watch(cx, poll, |&n| (n > 0).then_some(Direction::Write))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.watch(cx, poll, |&n| (n > 0).then_some(Direction::Write))
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_flush(cx);
        this.watch(cx, poll, |()| None)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_shutdown(cx);
        this.watch(cx, poll, |()| None)
    }
}

/// Which way bytes moved.
#[derive(Clone, Copy)]
enum Direction {
    Read,
    Write,
}
