//! The group-commit queue between appenders and the one writer that owns the log's storage.
//!
//! Appenders frame their record into a shared buffer under a short lock and get the next LSN;
//! the writer takes the whole buffer at once, writes it with one call and syncs it with one
//! `fdatasync` (or uploads it as one object), then publishes how far the log is written and
//! durable. Durable appenders wait for that. After any write or sync failure the queue is
//! poisoned: nothing later is acknowledged and every waiter gets the error.
//!
//! Model-checked with loom: `cargo xtask loom`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::sync::{self, AtomicBool, AtomicU64, Condvar, Mutex};
use crate::{Lsn, format};

/// Counters of what the log has done since it was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Records appended.
    pub appends: u64,
    /// Group-commit batches written (each one write, or one object).
    pub batches: u64,
    /// Syncs (`fdatasync`) or uploads that made data durable.
    pub syncs: u64,
    /// Bytes written, framing included.
    pub bytes_written: u64,
}

/// An async waiter: the task to wake once `lsn` is durable (or written, without `durable`).
#[cfg(not(loom))]
#[derive(Debug)]
struct AsyncWaiter {
    lsn: Lsn,
    durable: bool,
    waker: std::task::Waker,
}

/// One batch for the writer: the frames of consecutive records and whether to sync.
#[derive(Debug)]
pub(crate) struct Batch {
    /// The frames, back to back.
    pub(crate) bytes: Vec<u8>,
    /// LSN of the first frame (meaningless when `bytes` is empty).
    pub(crate) first: Lsn,
    /// LSN of the last frame, or the last LSN already written when `bytes` is empty.
    pub(crate) last: Lsn,
    /// Someone waits for durability of an LSN up to `last`: the writer must sync.
    pub(crate) sync: bool,
}

/// What [`Queue::next_batch`] hands the writer.
#[derive(Debug)]
pub(crate) enum Next {
    /// Work to write.
    Batch(Batch),
    /// The timeout passed with nothing to write.
    Idle,
    /// The log is closing (or poisoned) and everything queued has been handed out.
    Closed,
}

#[derive(Debug)]
struct State {
    next_lsn: Lsn,
    /// Frames waiting for the writer.
    buf: Vec<u8>,
    /// The writer's previous buffer, returned for reuse so appends do not reallocate.
    spare: Vec<u8>,
    /// Records in `buf`.
    buf_records: u64,
    /// Highest LSN whose durability someone waits for.
    sync_upto: Lsn,
    written: Lsn,
    durable: Lsn,
    poison: Option<std::sync::Arc<Error>>,
    closed: bool,
    /// The writer has exited; nothing more will become durable.
    finished: bool,
    /// The writer sleeps on `work` and needs a notification.
    writer_idle: bool,
    /// Records the next synced batch waits for: as many as the last synced batch had, since
    /// those appenders are likely to come back (see [`Queue::next_batch`]).
    gather: u64,
    /// The writer sleeps on `work` until `buf_records` reaches `gather`.
    writer_gathering: bool,
    /// Appenders sleeping on `space`.
    blocked: usize,
    stats: WalStats,
}

/// The queue. One per log; shared by appenders and the writer.
///
/// Waiters for durability sleep on their own lock (`waiters`/`done`), not on `state`: when a
/// batch completes, dozens of woken appenders would otherwise queue up on the lock the writer
/// needs to take the next batch.
#[derive(Debug)]
pub(crate) struct Queue {
    state: Mutex<State>,
    /// The writer waits here for work.
    work: Condvar,
    /// Appenders wait here while the buffer is full.
    space: Condvar,
    /// Copies of `State::durable` and `State::written`, updated under `state`, read without it.
    durable: AtomicU64,
    written: AtomicU64,
    /// Poisoned or finished: waiters must stop waiting and look at `state`.
    stopped: AtomicBool,
    /// Threads sleeping on `done`.
    waiters: Mutex<usize>,
    /// Durability and write waiters wait here.
    done: Condvar,
    max_record_bytes: usize,
    max_buffered_bytes: usize,
    max_buffer_wait: std::time::Duration,
    /// Async waiters, woken by `publish`. A list under a short lock rather than a
    /// `tokio::sync::watch`: with dozens of appenders a group, each wait there cloned and
    /// dropped a receiver and took two locks, every one a cache line the two cores passed back
    /// and forth, on the path between a sync and the next group's appends.
    #[cfg(not(loom))]
    async_waiters: std::sync::Mutex<Vec<AsyncWaiter>>,
    /// Reached async waiters that `publish` left for the first woken one to wake (see
    /// [`Queue::relay`]); `relaying` says the list may be non-empty.
    #[cfg(not(loom))]
    relayed: std::sync::Mutex<Vec<std::task::Waker>>,
    #[cfg(not(loom))]
    relaying: AtomicBool,
}

impl Queue {
    /// A queue whose records `..= last_lsn` are already durable (recovered).
    pub(crate) fn new(
        last_lsn: Lsn,
        max_record_bytes: usize,
        max_buffered_bytes: usize,
        max_buffer_wait: std::time::Duration,
    ) -> Self {
        Queue {
            state: Mutex::new(State {
                next_lsn: last_lsn + 1,
                buf: Vec::new(),
                spare: Vec::new(),
                buf_records: 0,
                sync_upto: last_lsn,
                written: last_lsn,
                durable: last_lsn,
                poison: None,
                closed: false,
                finished: false,
                writer_idle: false,
                gather: 0,
                writer_gathering: false,
                blocked: 0,
                stats: WalStats::default(),
            }),
            work: Condvar::new(),
            space: Condvar::new(),
            durable: AtomicU64::new(last_lsn),
            written: AtomicU64::new(last_lsn),
            stopped: AtomicBool::new(false),
            waiters: Mutex::new(0),
            done: Condvar::new(),
            max_record_bytes,
            max_buffered_bytes,
            max_buffer_wait,
            #[cfg(not(loom))]
            async_waiters: std::sync::Mutex::new(Vec::new()),
            #[cfg(not(loom))]
            relayed: std::sync::Mutex::new(Vec::new()),
            #[cfg(not(loom))]
            relaying: AtomicBool::new(false),
        }
    }

    /// Frames `payload` into the buffer and returns its LSN; with `durable`, also asks the writer
    /// to sync it (the caller then waits with [`Queue::await_durable`]).
    pub(crate) fn enqueue(&self, payload: &[u8], durable: bool) -> Result<Lsn> {
        if payload.len() > self.max_record_bytes {
            return Err(Error::RecordTooLarge {
                len: payload.len(),
                max: self.max_record_bytes,
            });
        }
        // The checksum is the costly part of framing; compute it outside the lock.
        let crc = format::payload_crc(payload);
        let mut st = sync::lock(&self.state);
        let mut waited_since = None;
        loop {
            if let Some(cause) = &st.poison {
                return Err(Error::Poisoned {
                    cause: cause.clone(),
                });
            }
            if st.closed {
                return Err(Error::Closed);
            }
            if st.buf.len() < self.max_buffered_bytes {
                break;
            }
            let since = *waited_since.get_or_insert_with(std::time::Instant::now);
            let left = self.max_buffer_wait.saturating_sub(since.elapsed());
            if left.is_zero() {
                // Nothing was framed and no LSN taken: the log is as it was.
                return Err(Error::BufferFull {
                    bytes: self.max_buffered_bytes,
                    waited: since.elapsed(),
                });
            }
            st.blocked += 1;
            st = off_the_runtime(|| sync::wait_timeout(&self.space, st, left));
            st.blocked -= 1;
        }
        let lsn = st.next_lsn;
        st.next_lsn += 1;
        format::encode_frame(&mut st.buf, lsn, payload, crc);
        st.buf_records += 1;
        st.stats.appends += 1;
        if durable && st.sync_upto < lsn {
            st.sync_upto = lsn;
        }
        let mut wake = std::mem::take(&mut st.writer_idle);
        if st.writer_gathering && st.buf_records >= st.gather {
            st.writer_gathering = false;
            wake = true;
        }
        drop(st);
        if wake {
            self.work.notify_one();
        }
        Ok(lsn)
    }

    /// Blocks until `lsn` is durable, asking the writer to sync it if nobody has yet.
    pub(crate) fn wait_durable(&self, lsn: Lsn) -> Result<()> {
        if self.durable.load(Ordering::Acquire) >= lsn {
            return Ok(());
        }
        {
            let mut st = sync::lock(&self.state);
            self.check_waitable(&st, lsn)?;
            self.request_sync(&mut st, lsn);
        }
        self.await_durable(lsn)
    }

    /// Blocks until `lsn`, whose sync was requested by [`Queue::enqueue`], is durable.
    pub(crate) fn await_durable(&self, lsn: Lsn) -> Result<()> {
        self.sleep_until(|q| q.durable.load(Ordering::Acquire) >= lsn);
        self.outcome(lsn, |st| st.durable >= lsn)
    }

    /// Blocks until every record up to `lsn` has been handed to the storage (readable), without
    /// asking for a sync.
    pub(crate) fn wait_written(&self, lsn: Lsn) -> Result<()> {
        if self.written.load(Ordering::Acquire) >= lsn {
            return Ok(());
        }
        self.check_waitable(&sync::lock(&self.state), lsn)?;
        self.sleep_until(|q| q.written.load(Ordering::Acquire) >= lsn);
        self.outcome(lsn, |st| st.written >= lsn)
    }

    /// Sleeps on `done` until `reached` or the queue stops.
    fn sleep_until(&self, reached: impl Fn(&Self) -> bool) {
        let mut waiters = sync::lock(&self.waiters);
        // Checked under `waiters`, which `publish` takes after updating the atomics, so a wake-up
        // between the check and the sleep cannot be missed.
        while !reached(self) && !self.stopped.load(Ordering::Acquire) {
            *waiters += 1;
            waiters = sync::wait(&self.done, waiters);
            *waiters -= 1;
        }
    }

    /// The result for a waiter for `lsn` that stopped sleeping.
    fn outcome(&self, lsn: Lsn, reached: impl Fn(&State) -> bool) -> Result<()> {
        if self.durable.load(Ordering::Acquire) >= lsn {
            return Ok(());
        }
        let st = sync::lock(&self.state);
        if reached(&st) {
            return Ok(());
        }
        self.check_waitable(&st, lsn)?;
        Err(Error::Closed)
    }

    /// The error a waiter for `lsn` gets now, if it cannot wait.
    fn check_waitable(&self, st: &State, lsn: Lsn) -> Result<()> {
        if lsn >= st.next_lsn {
            return Err(Error::LsnOutOfRange {
                lsn,
                last: st.next_lsn - 1,
            });
        }
        if let Some(cause) = &st.poison {
            return Err(Error::Poisoned {
                cause: cause.clone(),
            });
        }
        if st.finished {
            return Err(Error::Closed);
        }
        Ok(())
    }

    fn request_sync(&self, st: &mut State, lsn: Lsn) {
        if st.sync_upto < lsn {
            st.sync_upto = lsn;
            if std::mem::take(&mut st.writer_idle) {
                self.work.notify_one();
            }
        }
    }

    /// The last LSN assigned to an append (0 if none).
    pub(crate) fn last_assigned(&self) -> Lsn {
        sync::lock(&self.state).next_lsn - 1
    }

    /// The last LSN known durable (0 if none).
    pub(crate) fn durable(&self) -> Lsn {
        self.durable.load(Ordering::Acquire)
    }

    /// The counters.
    pub(crate) fn stats(&self) -> WalStats {
        sync::lock(&self.state).stats
    }

    /// Whether a failure has poisoned the queue.
    pub(crate) fn is_poisoned(&self) -> bool {
        sync::lock(&self.state).poison.is_some()
    }

    /// The error an operation on a poisoned or closed log gets, if any.
    pub(crate) fn check_open(&self) -> Result<()> {
        let st = sync::lock(&self.state);
        if let Some(cause) = &st.poison {
            return Err(Error::Poisoned {
                cause: cause.clone(),
            });
        }
        if st.closed {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// Writer side: waits (at most `timeout`, if given) for something to write or sync.
    ///
    /// Adaptive group commit: when a sync is wanted but fewer records are queued than the last
    /// synced batch held, the writer first waits (at most `gather_wait`) for that many. The
    /// appenders that shared the last sync are usually about to append again; without the wait
    /// they would split into two half-size batches, each paying a full sync. A lone appender
    /// never waits: its last batch held one record.
    pub(crate) fn next_batch(&self, timeout: Option<Duration>, gather_wait: Duration) -> Next {
        let mut st = sync::lock(&self.state);
        let mut waited = false;
        let mut gathered = false;
        loop {
            if st.poison.is_some() {
                return Next::Closed;
            }
            let sync = st.sync_upto > st.durable;
            if !st.buf.is_empty() || sync {
                if sync
                    && !gathered
                    && !st.closed
                    && st.buf_records < st.gather
                    && !gather_wait.is_zero()
                {
                    st.writer_gathering = true;
                    st = sync::wait_timeout(&self.work, st, gather_wait);
                    st.writer_gathering = false;
                    gathered = true;
                    continue;
                }
                let spare = std::mem::take(&mut st.spare);
                let bytes = std::mem::replace(&mut st.buf, spare);
                let last = st.next_lsn - 1;
                let records = std::mem::take(&mut st.buf_records);
                st.gather = if sync { records } else { 0 };
                if st.blocked > 0 {
                    self.space.notify_all();
                }
                return Next::Batch(Batch {
                    bytes,
                    first: last + 1 - records,
                    last,
                    sync,
                });
            }
            if st.closed {
                return Next::Closed;
            }
            if waited && timeout.is_some() {
                st.writer_idle = false;
                return Next::Idle;
            }
            st.writer_idle = true;
            // Waiters left to a woken task ([`Queue::publish`]) are the writer's to wake if that
            // task has not run within the grace: its runtime may be stalled, and theirs not.
            let relay = self.relay_pending().then_some(RELAY_GRACE);
            st = match timeout.map_or(relay, |t| Some(relay.map_or(t, |g| g.min(t)))) {
                Some(timeout) => sync::wait_timeout(&self.work, st, timeout),
                None => sync::wait(&self.work, st),
            };
            if relay.is_some() {
                drop(st);
                self.relay();
                st = sync::lock(&self.state);
            }
            waited = true;
        }
    }

    /// Writer side: records up to `written` are in storage, and up to `durable` (if given) are
    /// synced; `buf` is the batch's buffer, handed back for reuse.
    pub(crate) fn complete(&self, written: Lsn, durable: Option<Lsn>, mut buf: Vec<u8>) {
        let mut st = sync::lock(&self.state);
        if !buf.is_empty() {
            st.stats.batches += 1;
            st.stats.bytes_written += buf.len() as u64;
        }
        st.written = st.written.max(written);
        if let Some(durable) = durable {
            st.durable = st.durable.max(durable);
            st.stats.syncs += 1;
        }
        if st.spare.capacity() == 0 {
            buf.clear();
            st.spare = buf;
        }
        self.publish(st);
    }

    /// Writer side: a write or sync failed. Nothing after the durable LSN will be acknowledged.
    pub(crate) fn poison(&self, cause: Error) {
        let mut st = sync::lock(&self.state);
        if st.poison.is_none() {
            st.poison = Some(std::sync::Arc::new(cause));
        }
        st.buf = Vec::new();
        st.buf_records = 0;
        self.space.notify_all();
        self.publish(st);
    }

    /// Stops accepting appends; the writer drains what is queued, then gets [`Next::Closed`].
    pub(crate) fn close(&self) {
        let mut st = sync::lock(&self.state);
        st.closed = true;
        drop(st);
        self.work.notify_one();
        self.space.notify_all();
    }

    /// Writer side: the writer has exited.
    pub(crate) fn finish(&self) {
        let mut st = sync::lock(&self.state);
        st.finished = true;
        self.publish(st);
    }

    /// A guard the writer thread holds for its whole run: see [`WriterExit`].
    pub(crate) fn writer_exit(&self) -> WriterExit<'_> {
        WriterExit(self)
    }

    /// Wakes waiters after a change of `written`, `durable`, poison or finish.
    fn publish(&self, st: sync::MutexGuard<'_, State>) {
        self.durable.store(st.durable, Ordering::Release);
        self.written.store(st.written, Ordering::Release);
        if st.poison.is_some() || st.finished {
            self.stopped.store(true, Ordering::Release);
        }
        #[cfg(not(loom))]
        let (durable, written, stopped) =
            (st.durable, st.written, st.poison.is_some() || st.finished);
        drop(st);
        let waiters = sync::lock(&self.waiters);
        if *waiters > 0 {
            self.done.notify_all();
        }
        drop(waiters);
        #[cfg(not(loom))]
        {
            // Taken after the atomics are updated, so a waiter that registers after this sees
            // them (see `Progressed::poll`). Woken outside the lock.
            let mut woken: Vec<_> = sync::lock(&self.async_waiters)
                .extract_if(.., |w| {
                    stopped || w.lsn <= if w.durable { durable } else { written }
                })
                .map(|w| w.waker)
                .collect();
            // Only one is woken from here: each wake from a thread outside the runtime takes its
            // injection lock and may unpark a worker through the kernel, and waking a group of
            // 64 so kept the writer ~16 us and spread the next group's appends out. That task
            // wakes the rest from its worker ([`Queue::relay`]), onto the worker's own run queue.
            // A stopped log wakes them all: its writer is gone or going, and with it the grace
            // that bounds a relay whose first task never runs.
            if stopped {
                woken.drain(..).for_each(std::task::Waker::wake);
            }
            if let Some(first) = woken.pop() {
                if !woken.is_empty() {
                    sync::lock(&self.relayed).append(&mut woken);
                    self.relaying.store(true, Ordering::Release);
                }
                first.wake();
            }
        }
    }
}

/// How long waiters left to a woken task ([`Queue::publish`]) may wait for it before the writer
/// wakes them itself; that task normally runs within tens of microseconds.
const RELAY_GRACE: Duration = Duration::from_millis(1);

#[cfg(loom)]
impl Queue {
    // The model wakes only blocking waiters, so there is never anything to relay.
    fn relay_pending(&self) -> bool {
        false
    }

    fn relay(&self) {}
}

#[cfg(not(loom))]
impl Queue {
    fn relay_pending(&self) -> bool {
        self.relaying.load(Ordering::Acquire)
    }

    /// Wakes the waiters `publish` left to the first one it woke.
    fn relay(&self) {
        if self.relaying.load(Ordering::Acquire) && self.relaying.swap(false, Ordering::AcqRel) {
            let wakers = std::mem::take(&mut *sync::lock(&self.relayed));
            for waker in wakers {
                waker.wake();
            }
        }
    }

    /// Waits without blocking the thread until `lsn` is durable, asking for a sync if needed.
    pub(crate) async fn wait_durable_async(&self, lsn: Lsn) -> Result<()> {
        if self.durable.load(Ordering::Acquire) >= lsn {
            return Ok(());
        }
        {
            let mut st = sync::lock(&self.state);
            self.check_waitable(&st, lsn)?;
            self.request_sync(&mut st, lsn);
        }
        self.await_durable_async(lsn).await
    }

    /// Waits without blocking the thread until `lsn`, whose sync was requested by
    /// [`Queue::enqueue`], is durable.
    pub(crate) async fn await_durable_async(&self, lsn: Lsn) -> Result<()> {
        if self.durable.load(Ordering::Acquire) >= lsn {
            return Ok(());
        }
        Progressed {
            queue: self,
            lsn,
            durable: true,
            registered: false,
        }
        .await;
        self.outcome(lsn, |st| st.durable >= lsn)
    }

    /// Waits without blocking the thread until records up to `lsn` are written, or until a
    /// failure or a close stops the log short of it; returns how far the log is written then.
    /// Records written before a failure are in storage whatever came after, so a reader reads
    /// them: a read that failed outright left a change stream unable to drain the changes made
    /// before a disk fault.
    pub(crate) async fn written_upto_async(&self, lsn: Lsn) -> Result<Lsn> {
        match self.wait_written_async(lsn).await {
            Ok(()) => Ok(lsn),
            Err(Error::Poisoned { .. } | Error::Closed) => {
                let st = sync::lock(&self.state);
                Ok(st.written.min(lsn))
            }
            Err(err) => Err(err),
        }
    }

    /// Waits without blocking the thread until records up to `lsn` are written.
    pub(crate) async fn wait_written_async(&self, lsn: Lsn) -> Result<()> {
        {
            let st = sync::lock(&self.state);
            if st.written >= lsn {
                return Ok(());
            }
            self.check_waitable(&st, lsn)?;
        }
        Progressed {
            queue: self,
            lsn,
            durable: false,
            registered: false,
        }
        .await;
        let st = sync::lock(&self.state);
        if st.written >= lsn {
            return Ok(());
        }
        self.check_waitable(&st, lsn)?;
        Err(Error::Closed)
    }
}

/// Resolves once `lsn` is durable (or written, without `durable`), or the queue stops.
#[cfg(not(loom))]
struct Progressed<'a> {
    queue: &'a Queue,
    lsn: Lsn,
    durable: bool,
    /// A poll has put this wait's waker in the list.
    registered: bool,
}

#[cfg(not(loom))]
impl Progressed<'_> {
    fn reached(&self) -> bool {
        let at = if self.durable {
            &self.queue.durable
        } else {
            &self.queue.written
        };
        at.load(Ordering::Acquire) >= self.lsn || self.queue.stopped.load(Ordering::Acquire)
    }
}

#[cfg(not(loom))]
impl std::future::Future for Progressed<'_> {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.reached() {
            self.queue.relay();
            return std::task::Poll::Ready(());
        }
        let mut waiters = sync::lock(&self.queue.async_waiters);
        // Checked again under the lock: `publish` updates the atomics before it takes the lock,
        // so either this sees them, or `publish` finds the waker pushed here.
        if self.reached() {
            drop(waiters);
            self.queue.relay();
            return std::task::Poll::Ready(());
        }
        // A wait polled again before its wake-up (inside a `select!`, say) is usually still
        // listed with the same waker: looked for only then, so a first poll costs no search.
        let (lsn, durable) = (self.lsn, self.durable);
        let listed = self.registered
            && waiters
                .iter()
                .any(|w| w.lsn == lsn && w.durable == durable && w.waker.will_wake(cx.waker()));
        if !listed {
            waiters.push(AsyncWaiter {
                lsn,
                durable,
                waker: cx.waker().clone(),
            });
        }
        drop(waiters);
        self.registered = true;
        std::task::Poll::Pending
    }
}

/// A wait dropped after its wake-up (a `select!` that took another branch, a cancelled task) may
/// have been the one `publish` left the others to: it wakes them, or they would wait forever.
#[cfg(not(loom))]
impl Drop for Progressed<'_> {
    fn drop(&mut self) {
        if self.registered {
            self.queue.relay();
        }
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::format::{FRAME_HEADER_LEN, HEADER_LEN, Scanner, Step, encode_header};
    use loom::sync::Arc;
    use loom::thread;

    /// The writer of the model: appends every batch to an in-memory "file"; `fail` poisons the
    /// queue at the first batch instead, as a failed write or sync would.
    fn writer(queue: Arc<Queue>, fail: bool) -> Vec<u8> {
        let mut file = encode_header(1, 0).to_vec();
        loop {
            // A gather wait, so loom also explores the adaptive wait and its wake-up.
            match queue.next_batch(None, Duration::from_millis(1)) {
                Next::Batch(batch) => {
                    if fail {
                        queue.poison(Error::Closed);
                        break;
                    }
                    file.extend_from_slice(&batch.bytes);
                    let durable = batch.sync.then_some(batch.last);
                    queue.complete(batch.last, durable, batch.bytes);
                }
                Next::Idle => {}
                Next::Closed => break,
            }
        }
        queue.finish();
        file
    }

    fn records(file: &[u8]) -> Vec<(Lsn, Vec<u8>)> {
        let mut scan = Scanner::new(file, 1, 16);
        let mut out = Vec::new();
        loop {
            match scan.step() {
                Step::Record { lsn, payload } => out.push((lsn, payload.to_vec())),
                Step::End => return out,
                step => panic!("damage in model file: {step:?}"),
            }
        }
    }

    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(f);
    }

    #[test]
    fn concurrent_durable_appends_are_written_once_in_order_and_acknowledged_durable() {
        model(|| {
            let queue = Arc::new(Queue::new(0, 16, 1 << 20, Duration::from_secs(60)));
            let w = {
                let queue = queue.clone();
                thread::spawn(move || writer(queue, false))
            };
            let appenders: Vec<_> = (0..2u8)
                .map(|i| {
                    let queue = queue.clone();
                    thread::spawn(move || {
                        let lsn = queue.enqueue(&[i], true).unwrap();
                        queue.wait_durable(lsn).unwrap();
                        assert!(queue.durable() >= lsn);
                        (lsn, i)
                    })
                })
                .collect();
            let mut acked: Vec<_> = appenders.into_iter().map(|a| a.join().unwrap()).collect();
            queue.close();
            let file = w.join().unwrap();
            acked.sort();
            let got = records(&file);
            assert_eq!(got.len(), 2);
            for ((lsn, byte), (got_lsn, payload)) in acked.iter().zip(&got) {
                assert_eq!(lsn, got_lsn);
                assert_eq!(payload, &vec![*byte]);
            }
            assert_eq!(acked[0].0, 1);
            assert_eq!(acked[1].0, 2);
        });
    }

    #[test]
    fn buffered_appends_are_drained_and_synced_at_close() {
        model(|| {
            let queue = Arc::new(Queue::new(5, 16, 1 << 20, Duration::from_secs(60)));
            let w = {
                let queue = queue.clone();
                thread::spawn(move || writer(queue, false))
            };
            let other = {
                let queue = queue.clone();
                thread::spawn(move || queue.enqueue(b"b", false).unwrap())
            };
            let mine = queue.enqueue(b"a", false).unwrap();
            let theirs = other.join().unwrap();
            queue.wait_written(mine.max(theirs)).unwrap();
            queue.close();
            let file = w.join().unwrap();
            let mut scan_file = file.clone();
            // The model file's header says 1; rewrite it to the recovered base of 6.
            scan_file[..HEADER_LEN].copy_from_slice(&encode_header(6, 0));
            let mut scan = Scanner::new(&scan_file, 6, 16);
            let mut lsns = Vec::new();
            while let Step::Record { lsn, .. } = scan.step() {
                lsns.push(lsn);
            }
            assert_eq!(lsns, vec![6, 7]);
            assert_eq!(file.len(), HEADER_LEN + 2 * (FRAME_HEADER_LEN + 1));
        });
    }

    #[test]
    fn a_failed_write_is_never_acknowledged_and_later_appends_are_refused() {
        model(|| {
            let queue = Arc::new(Queue::new(0, 16, 1 << 20, Duration::from_secs(60)));
            let w = {
                let queue = queue.clone();
                thread::spawn(move || writer(queue, true))
            };
            let other = {
                let queue = queue.clone();
                thread::spawn(move || {
                    queue
                        .enqueue(b"x", true)
                        .and_then(|lsn| queue.wait_durable(lsn))
                })
            };
            let mine = queue
                .enqueue(b"y", true)
                .and_then(|lsn| queue.wait_durable(lsn));
            assert!(mine.is_err());
            assert!(other.join().unwrap().is_err());
            w.join().unwrap();
            assert!(matches!(
                queue.enqueue(b"z", true),
                Err(Error::Poisoned { .. })
            ));
            assert_eq!(queue.durable(), 0);
        });
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::future::Future;
    use std::pin::{Pin, pin};
    use std::task::{Context, Poll, Waker};

    use super::*;

    fn poll<F: Future + ?Sized>(future: Pin<&mut F>) -> Poll<F::Output> {
        future.poll(&mut Context::from_waker(Waker::noop()))
    }

    fn waiting(queue: &Queue) -> usize {
        sync::lock(&queue.async_waiters).len()
    }

    /// An async wait registers once per poll while pending, resolves once the writer publishes
    /// its LSN as durable, and leaves nothing registered behind; a wait for a later LSN stays.
    #[test]
    fn an_async_wait_resolves_at_its_lsn_and_unregisters() {
        let queue = Queue::new(0, 1 << 20, 1 << 20, Duration::from_secs(60));
        let first = queue.enqueue(b"a", true).unwrap();
        let second = queue.enqueue(b"b", true).unwrap();
        let mut a = pin!(queue.await_durable_async(first));
        let mut b = pin!(queue.await_durable_async(second));
        let mut written = pin!(queue.wait_written_async(first));
        assert!(poll(a.as_mut()).is_pending());
        assert!(poll(a.as_mut()).is_pending());
        assert!(poll(b.as_mut()).is_pending());
        assert!(poll(written.as_mut()).is_pending());
        assert_eq!(
            waiting(&queue),
            3,
            "a second poll with the same waker adds nothing"
        );

        // Written but not durable: only the write waiter is released.
        queue.complete(first, None, Vec::new());
        assert_eq!(waiting(&queue), 2);
        assert!(matches!(poll(written.as_mut()), Poll::Ready(Ok(()))));
        assert!(poll(a.as_mut()).is_pending());

        queue.complete(first, Some(first), Vec::new());
        assert!(matches!(poll(a.as_mut()), Poll::Ready(Ok(()))));
        assert!(poll(b.as_mut()).is_pending());
        assert_eq!(
            waiting(&queue),
            1,
            "the first LSN's entry went; the second's stayed, polled again without a second"
        );

        queue.complete(second, Some(second), Vec::new());
        assert!(matches!(poll(b.as_mut()), Poll::Ready(Ok(()))));
        assert_eq!(waiting(&queue), 0);
    }

    /// An append to a buffer that stays full gets `BufferFull` after the wait, takes no LSN
    /// and writes nothing; once the writer takes the buffer, appends go on in order.
    #[test]
    fn an_append_to_a_full_buffer_gives_up_after_its_wait() {
        let wait = Duration::from_millis(50);
        let queue = Queue::new(0, 1 << 20, 8, wait);
        assert_eq!(queue.enqueue(b"a", false).unwrap(), 1);
        let started = std::time::Instant::now();
        assert!(matches!(
            queue.enqueue(b"b", false),
            Err(Error::BufferFull { bytes: 8, waited }) if waited >= wait
        ));
        assert!(started.elapsed() >= wait);
        assert_eq!(queue.last_assigned(), 1);
        let Next::Batch(batch) = queue.next_batch(None, Duration::ZERO) else {
            panic!("the first record is a batch");
        };
        assert_eq!(
            (batch.first, batch.last),
            (1, 1),
            "the refused record is not in it"
        );
        queue.complete(batch.last, Some(batch.last), batch.bytes);
        assert_eq!(queue.enqueue(b"c", false).unwrap(), 2);
    }

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Count {
        fn woken(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    /// A counting waker for each of [`waiting_group`]'s waits.
    type Counts = [std::sync::Arc<Count>; 3];

    /// Waits on a queue, boxed so that a test can hold several and drop one.
    type Waits<'q> = Vec<Pin<Box<dyn Future<Output = Result<()>> + 'q>>>;

    /// Three durable records of one group and a wait for them each, polled once (so listed)
    /// with a counting waker of its own.
    fn waiting_group(queue: &Queue) -> Result<(Lsn, Waits<'_>, Counts)> {
        let mut lsn = 0;
        for _ in 0..3 {
            lsn = queue.enqueue(b"r", true)?;
        }
        let counts: Counts = Default::default();
        let mut waits: Waits<'_> = (0..3)
            .map(|_| Box::pin(queue.await_durable_async(lsn)) as Pin<Box<dyn Future<Output = _>>>)
            .collect();
        for (wait, count) in waits.iter_mut().zip(&counts) {
            let waker = Waker::from(count.clone());
            let polled = wait.as_mut().poll(&mut Context::from_waker(&waker));
            if polled.is_ready() {
                return Err(Error::Closed);
            }
        }
        Ok((lsn, waits, counts))
    }

    /// Publishing a group wakes one of its waiters; that one, once polled, wakes the others.
    #[test]
    fn a_group_is_woken_through_one_waiter_that_wakes_the_rest() {
        let queue = Queue::new(0, 1 << 20, 1 << 20, Duration::from_secs(60));
        let (lsn, mut waits, counts) = waiting_group(&queue).unwrap();
        queue.complete(lsn, Some(lsn), Vec::new());
        let woken: Vec<usize> = counts.iter().map(|c| c.woken()).collect();
        assert_eq!(
            woken.iter().sum::<usize>(),
            1,
            "one wake from the writer: {woken:?}"
        );
        let first = woken.iter().position(|&n| n == 1).unwrap();
        let waker = Waker::from(counts[first].clone());
        let polled = waits[first].as_mut().poll(&mut Context::from_waker(&waker));
        assert!(matches!(polled, Poll::Ready(Ok(()))));
        assert!(
            counts.iter().all(|c| c.woken() == 1),
            "the rest woken by the first"
        );
        for (_, wait) in waits.iter_mut().enumerate().filter(|(i, _)| *i != first) {
            assert!(matches!(poll(wait.as_mut()), Poll::Ready(Ok(()))));
        }
    }

    /// The woken waiter dropped before it runs (a cancelled task) still wakes the others.
    #[test]
    fn a_woken_waiter_dropped_unpolled_wakes_the_rest() {
        let queue = Queue::new(0, 1 << 20, 1 << 20, Duration::from_secs(60));
        let (lsn, mut waits, counts) = waiting_group(&queue).unwrap();
        queue.complete(lsn, Some(lsn), Vec::new());
        let first = counts.iter().position(|c| c.woken() == 1).unwrap();
        assert_eq!(counts.iter().map(|c| c.woken()).sum::<usize>(), 1);
        drop(waits.swap_remove(first));
        assert!(counts.iter().all(|c| c.woken() == 1));
    }

    /// A woken waiter whose task never runs (its runtime stalled) delays the others at most by
    /// the grace: the idle writer wakes them itself.
    #[test]
    fn the_writer_wakes_a_group_whose_woken_waiter_never_runs() {
        let queue = Queue::new(0, 1 << 20, 1 << 20, Duration::from_secs(60));
        // Kept until the end: a dropped wait would pass the wake-ups on itself.
        let (_, _waits, counts) = waiting_group(&queue).unwrap();
        let Next::Batch(batch) = queue.next_batch(None, Duration::ZERO) else {
            panic!("the three records are a batch");
        };
        queue.complete(batch.last, Some(batch.last), batch.bytes);
        assert_eq!(counts.iter().map(|c| c.woken()).sum::<usize>(), 1);
        let started = std::time::Instant::now();
        assert!(matches!(
            queue.next_batch(Some(Duration::from_secs(5)), Duration::ZERO),
            Next::Idle
        ));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the writer woke the group after the grace, not after its idle timeout"
        );
        assert!(counts.iter().all(|c| c.woken() == 1));
    }

    /// A poisoned log wakes every waiter itself: no writer is left to bound a relay.
    #[test]
    fn a_poisoned_log_wakes_every_waiter_itself() {
        let queue = Queue::new(0, 1 << 20, 1 << 20, Duration::from_secs(60));
        let (_, mut waits, counts) = waiting_group(&queue).unwrap();
        queue.poison(Error::Closed);
        assert!(counts.iter().all(|c| c.woken() == 1));
        for wait in &mut waits {
            assert!(matches!(
                poll(wait.as_mut()),
                Poll::Ready(Err(Error::Poisoned { .. }))
            ));
        }
    }

    /// A poisoned queue releases every async waiter with the error, including one that was
    /// abandoned (dropped while pending), whose entry goes too.
    #[test]
    fn poison_releases_async_waiters_with_the_error() {
        let queue = Queue::new(0, 1 << 20, 1 << 20, Duration::from_secs(60));
        let lsn = queue.enqueue(b"a", true).unwrap();
        {
            let mut abandoned = pin!(queue.await_durable_async(lsn));
            assert!(poll(abandoned.as_mut()).is_pending());
        }
        let mut wait = pin!(queue.await_durable_async(lsn));
        assert!(poll(wait.as_mut()).is_pending());
        assert_eq!(waiting(&queue), 2);
        queue.poison(Error::Closed);
        assert_eq!(waiting(&queue), 0);
        assert!(matches!(
            poll(wait.as_mut()),
            Poll::Ready(Err(Error::Poisoned { .. }))
        ));
    }
}

/// Runs `wait`, which blocks its thread until the writer frees buffer space. A worker of a
/// multi-thread tokio runtime hands its other tasks to another thread first: the object log's
/// uploads, which free the space, run on that runtime, and a wait that held every worker left
/// them to whatever still drives it (a helper agent's review suspected a frozen database; the
/// chaos test `appends_waiting_for_buffer_space_do_not_starve_the_upload_that_frees_it` does not
/// reproduce one, so this is defence, not a measured fix). Elsewhere (a thread of its own, a
/// current-thread runtime) it just waits.
#[cfg(not(loom))]
fn off_the_runtime<T>(wait: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(wait)
        }
        _ => wait(),
    }
}

#[cfg(loom)]
fn off_the_runtime<T>(wait: impl FnOnce() -> T) -> T {
    wait()
}

/// Finishes the queue however the writer's run ends, and poisons it first if the run panicked
/// (in a store implementation, a file I/O implementation, or the runtime the object log
/// blocks on): without it a panic left every durable waiter waiting for good.
pub(crate) struct WriterExit<'a>(&'a Queue);

impl Drop for WriterExit<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.poison(Error::io(
                "write",
                "",
                std::io::Error::other("the WAL's writer thread panicked"),
            ));
        }
        self.0.finish();
    }
}
