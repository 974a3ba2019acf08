//! [`FaultyObjectStore`]: an [`ObjectStore`] wrapper that injects seeded faults — errors,
//! throttling, latency, puts whose answer is lost after they landed, multipart uploads that die
//! midway and truncated reads — and can be killed like a crashed process.
//!
//! Every injected error carries an [`Injected`] source whose message starts with `injected`, so a
//! test can tell an injected failure from a real one ([`Injected::find`]). Which variant of
//! `object_store::Error` a fault becomes follows what `omendb-storage`'s retry layer does with
//! it: throttling and lost answers are `Generic` (transient, retried), a plain error and a kill
//! are `PermissionDenied` (definite, never retried).

use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, UploadPart,
};
use omendb_storage::backend::Op;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// How often each fault happens. Probabilities are per request, in `0.0..=1.0` (values outside
/// are treated as the nearest bound). At most one failing fault is chosen per request, tried in
/// field order; latency comes on top of it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StoreFaults {
    /// A definite error (`PermissionDenied`) before the request is sent.
    pub error: f64,
    /// A transient 503-like error (`Generic`) before the request is sent, which a retry absorbs.
    pub throttle: f64,
    /// A pause of up to [`StoreFaults::max_latency`] before the request is sent.
    pub latency: f64,
    /// The longest injected pause.
    pub max_latency: Duration,
    /// A mutation (put, multipart completion, delete, copy, rename) that lands in the store and
    /// then answers with a transient timeout, as when the connection drops after the request.
    pub lost_answer: f64,
    /// A multipart part or completion that fails: the upload stays incomplete and every later
    /// part and completion of it fails too.
    pub dead_multipart: f64,
    /// A get whose body ends early while its metadata gives the full size, or a `get_ranges`
    /// with one range cut short.
    pub truncated_get: f64,
    /// A get whose body comes back with one bit flipped (the object in the store intact), as
    /// from a faulty network path that the transport's checks missed. Drawn for after the other
    /// faults, so a seed replays them the same whether this one is used or not.
    pub flipped_get: f64,
    /// The requests faults apply to; `None` for all of them.
    pub ops: Option<Vec<Op>>,
}

impl StoreFaults {
    /// No faults at all: the wrapper behaves like the store it wraps.
    pub fn none() -> Self {
        Self::default()
    }

    /// Only latency: every request waits up to `max` (a uniform draw) before it is sent, on the
    /// runtime's timer.
    pub fn slow(max: Duration) -> Self {
        Self {
            latency: 1.0,
            max_latency: max,
            ..Self::default()
        }
    }

    fn applies_to(&self, op: Op) -> bool {
        self.ops.as_ref().is_none_or(|ops| ops.contains(&op))
    }
}

/// The kind of an injected fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Fault {
    /// A definite error ([`StoreFaults::error`]).
    Error,
    /// A transient throttling error ([`StoreFaults::throttle`]).
    Throttle,
    /// An added pause ([`StoreFaults::latency`]).
    Latency,
    /// A mutation that landed but answered with an error ([`StoreFaults::lost_answer`]).
    LostAnswer,
    /// A multipart upload that died ([`StoreFaults::dead_multipart`]).
    DeadMultipart,
    /// A read cut short ([`StoreFaults::truncated_get`]).
    TruncatedGet,
    /// A read with one bit flipped ([`StoreFaults::flipped_get`]).
    FlippedGet,
    /// A request refused because the wrapper was killed ([`FaultyObjectStore::kill`]).
    Killed,
}

impl Fault {
    const COUNT: usize = 8;

    fn index(self) -> usize {
        match self {
            Fault::Error => 0,
            Fault::Throttle => 1,
            Fault::Latency => 2,
            Fault::LostAnswer => 3,
            Fault::DeadMultipart => 4,
            Fault::TruncatedGet => 5,
            Fault::Killed => 6,
            Fault::FlippedGet => 7,
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::Error => "error",
            Fault::Throttle => "throttle (503 Slow Down)",
            Fault::Latency => "latency",
            Fault::LostAnswer => "lost answer (the request landed, its answer timed out)",
            Fault::DeadMultipart => "dead multipart upload",
            Fault::TruncatedGet => "truncated get",
            Fault::FlippedGet => "flipped bit in a get",
            Fault::Killed => "kill (the process is gone)",
        })
    }
}

/// The source of every error a [`FaultyObjectStore`] injects.
#[derive(Debug, thiserror::Error)]
#[error("injected {fault} on {}", op.name())]
pub struct Injected {
    /// What was injected.
    pub fault: Fault,
    /// The request it was injected into.
    pub op: Op,
}

impl Injected {
    /// The injected fault behind `err`, looked for along its chain of sources (so it is found
    /// through `omendb_storage::Error` and other wrappers), or `None` for a real error.
    pub fn find<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a Injected> {
        let mut next = Some(err);
        while let Some(err) = next {
            if let Some(injected) = err.downcast_ref::<Injected>() {
                return Some(injected);
            }
            next = err.source();
        }
        None
    }

    fn into_error(self, path: &str) -> object_store::Error {
        match self.fault {
            Fault::Error | Fault::Killed => object_store::Error::PermissionDenied {
                path: path.to_owned(),
                source: Box::new(self),
            },
            _ => object_store::Error::Generic {
                store: "faulty",
                source: Box::new(self),
            },
        }
    }
}

/// The dice of one request, rolled before it is sent.
#[derive(Clone, Copy, Debug, Default)]
struct Plan {
    delay: Option<Duration>,
    fault: Option<Fault>,
    /// A random number for faults that need one more choice (where to cut a body or a listing).
    draw: u64,
}

/// How many objects a faulted listing may return before its error.
const LIST_CUT_MAX: u64 = 4;

#[derive(Debug)]
struct Dice {
    rng: StdRng,
    faults: StoreFaults,
    enabled: bool,
}

/// What the store, its uploads and its streams share.
#[derive(Debug)]
struct Shared {
    dice: Mutex<Dice>,
    killed: AtomicBool,
    counts: [AtomicU64; Fault::COUNT],
    /// Requests sent so far (refused ones of a killed wrapper not counted).
    requests: AtomicU64,
    /// The request at which [`FaultyObjectStore::kill_at_request`] kills the wrapper, and what
    /// to do then.
    kill_at: Mutex<Option<(u64, OnKill)>>,
}

/// What to do when a [`FaultyObjectStore::kill_at_request`] kill happens.
struct OnKill(Box<dyn FnOnce() + Send>);

impl fmt::Debug for OnKill {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OnKill")
    }
}

impl Shared {
    /// Counts one request, and kills the wrapper if it is the one `kill_at` chose (the
    /// request then fails as the dead process's: callers check `alive` after this).
    fn count_request(&self) {
        let n = self.requests.fetch_add(1, Ordering::SeqCst) + 1;
        let due = {
            let mut kill_at = self.kill_at.lock().unwrap_or_else(PoisonError::into_inner);
            match kill_at.take() {
                Some((at, then)) if at <= n => Some(then),
                other => {
                    *kill_at = other;
                    None
                }
            }
        };
        if let Some(then) = due {
            self.killed.store(true, Ordering::SeqCst);
            (then.0)();
        }
    }

    fn roll(&self, op: Op) -> Plan {
        self.count_request();
        // A panic elsewhere while holding the lock leaves the dice usable: they hold no invariant.
        let mut dice = self.dice.lock().unwrap_or_else(PoisonError::into_inner);
        let Dice {
            rng,
            faults,
            enabled,
        } = &mut *dice;
        if !*enabled || !faults.applies_to(op) {
            return Plan::default();
        }
        let delay = (rng.random::<f64>() < faults.latency)
            .then(|| rng.random_range(Duration::ZERO..=faults.max_latency));
        let mutates = matches!(
            op,
            Op::Put | Op::Complete | Op::Delete | Op::Copy | Op::Rename
        );
        let multipart = matches!(op, Op::PutPart | Op::Complete);
        let candidates = [
            (Fault::Error, faults.error),
            (Fault::Throttle, faults.throttle),
            (
                Fault::LostAnswer,
                if mutates { faults.lost_answer } else { 0.0 },
            ),
            (
                Fault::DeadMultipart,
                if multipart {
                    faults.dead_multipart
                } else {
                    0.0
                },
            ),
            (
                Fault::TruncatedGet,
                if matches!(op, Op::Get | Op::GetRanges) {
                    faults.truncated_get
                } else {
                    0.0
                },
            ),
        ];
        // Every candidate is drawn for until one hits, so a seed replays the same faults for the
        // same sequence of requests.
        let fault = candidates
            .into_iter()
            .find(|&(_, p)| rng.random::<f64>() < p)
            .map(|(fault, _)| fault)
            .or_else(|| {
                let p = if op == Op::Get {
                    faults.flipped_get
                } else {
                    0.0
                };
                (p > 0.0 && rng.random::<f64>() < p).then_some(Fault::FlippedGet)
            });
        let draw = rng.random();
        if delay.is_some() {
            self.count(Fault::Latency);
        }
        Plan { delay, fault, draw }
    }

    fn count(&self, fault: Fault) {
        if let Some(counter) = self.counts.get(fault.index()) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The error of an injected fault, counted.
    fn inject(&self, fault: Fault, op: Op, path: &str) -> object_store::Error {
        self.count(fault);
        Injected { fault, op }.into_error(path)
    }

    fn alive(&self, op: Op, path: &str) -> object_store::Result<()> {
        if self.killed.load(Ordering::SeqCst) {
            Err(self.inject(Fault::Killed, op, path))
        } else {
            Ok(())
        }
    }

    /// Rolls the dice for one request and waits out its latency. A kill during the pause stops
    /// the request there: a dead process sends nothing.
    async fn begin(&self, op: Op, path: &str) -> object_store::Result<Plan> {
        self.alive(op, path)?;
        let plan = self.roll(op);
        // Again: this request may be the one chosen to kill the wrapper.
        self.alive(op, path)?;
        if let Some(delay) = plan.delay {
            tokio::time::sleep(delay).await;
            self.alive(op, path)?;
        }
        Ok(plan)
    }

    /// Sends `request` unless the plan fails it first, and loses its answer if the plan says so.
    /// `request` is lazy: a request failed first never reaches the store.
    async fn send<T>(
        &self,
        op: Op,
        path: &str,
        plan: &Plan,
        request: impl Future<Output = object_store::Result<T>>,
    ) -> object_store::Result<T> {
        match plan.fault {
            Some(fault @ (Fault::Error | Fault::Throttle | Fault::DeadMultipart)) => {
                Err(self.inject(fault, op, path))
            }
            Some(Fault::LostAnswer) => {
                request.await?;
                Err(self.inject(Fault::LostAnswer, op, path))
            }
            _ => request.await,
        }
    }
}

/// An [`ObjectStore`] that injects seeded faults into the requests it passes to `inner`.
///
/// Faults are drawn from one seeded RNG, so the same seed and the same sequence of requests give
/// the same faults (concurrent requests draw in the order they start).
#[derive(Debug)]
pub struct FaultyObjectStore<S: ?Sized> {
    inner: Arc<S>,
    shared: Arc<Shared>,
}

impl<S: ObjectStore + ?Sized> FaultyObjectStore<S> {
    /// Wraps `inner`, injecting `faults` drawn from an RNG seeded with `seed`.
    pub fn new(inner: Arc<S>, faults: StoreFaults, seed: u64) -> Self {
        Self {
            inner,
            shared: Arc::new(Shared {
                dice: Mutex::new(Dice {
                    rng: StdRng::seed_from_u64(seed),
                    faults,
                    enabled: true,
                }),
                killed: AtomicBool::new(false),
                counts: Default::default(),
                requests: AtomicU64::new(0),
                kill_at: Mutex::new(None),
            }),
        }
    }

    /// The wrapped store (a restarted process wraps it anew after a [`kill`](Self::kill)).
    pub fn inner(&self) -> &Arc<S> {
        &self.inner
    }

    /// Replaces the faults and switches them on.
    pub fn set_faults(&self, faults: StoreFaults) {
        let mut dice = self
            .shared
            .dice
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        dice.faults = faults;
        dice.enabled = true;
    }

    /// The faults configured (injected only while enabled).
    pub fn faults(&self) -> StoreFaults {
        let dice = self
            .shared
            .dice
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        dice.faults.clone()
    }

    /// Stops injecting faults (a kill stays in force); [`enable`](Self::enable) resumes.
    pub fn disable(&self) {
        self.shared
            .dice
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .enabled = false;
    }

    /// Injects the configured faults again.
    pub fn enable(&self) {
        self.shared
            .dice
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .enabled = true;
    }

    /// Fails every later request of this wrapper, its uploads and its listings, and every request
    /// still waiting out injected latency: a crashed process sends nothing more. There is no
    /// undoing it; a restarted process wraps [`inner`](Self::inner) in a new wrapper.
    pub fn kill(&self) {
        self.shared.killed.store(true, Ordering::SeqCst);
    }

    /// Kills the wrapper at its `n`-th request from now (1: the next one), which fails as the
    /// dead process's, and then runs `then` (to crash the rest of the "process" at the same
    /// moment). Replaces a kill armed before; [`disarm_kill`](Self::disarm_kill) cancels it.
    pub fn kill_at_request(&self, n: u64, then: impl FnOnce() + Send + 'static) {
        let at = self.requests() + n.max(1);
        *self
            .shared
            .kill_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some((at, OnKill(Box::new(then))));
    }

    /// Cancels the kill [`kill_at_request`](Self::kill_at_request) armed, if it has not
    /// happened.
    pub fn disarm_kill(&self) {
        self.shared
            .kill_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    /// Requests sent through the wrapper so far (not those a kill refused).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Whether [`kill`](Self::kill) was called.
    pub fn is_killed(&self) -> bool {
        self.shared.killed.load(Ordering::SeqCst)
    }

    /// How many faults were injected so far, of every kind (latency included).
    pub fn injected(&self) -> u64 {
        self.shared
            .counts
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .sum()
    }

    /// How many faults other than `fault` were injected so far, each kind's count read once
    /// (`injected() - injected_of(fault)` read the counts at two moments, and the second could
    /// pass the first while requests went on: a subtraction that overflowed).
    pub fn injected_except(&self, fault: Fault) -> u64 {
        self.shared
            .counts
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != fault.index())
            .map(|(_, count)| count.load(Ordering::Relaxed))
            .sum()
    }

    /// How many faults of one kind were injected so far.
    pub fn injected_of(&self, fault: Fault) -> u64 {
        self.shared
            .counts
            .get(fault.index())
            .map_or(0, |count| count.load(Ordering::Relaxed))
    }

    /// A listing of `start` with the dice rolled now: its latency comes before the first object
    /// and its error (if any) after a few objects, so a listing can fail midway.
    fn faulty_list(
        &self,
        path: Option<&Path>,
        start: BoxStream<'static, object_store::Result<ObjectMeta>>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        struct State {
            inner: BoxStream<'static, object_store::Result<ObjectMeta>>,
            delay: Option<Duration>,
            cut: Option<(Fault, u64)>,
            returned: u64,
            done: bool,
        }
        let op = Op::List;
        let path = path.map(Path::to_string).unwrap_or_default();
        let shared = Arc::clone(&self.shared);
        let plan = if shared.killed.load(Ordering::SeqCst) {
            Plan::default()
        } else {
            shared.roll(op)
        };
        let first = State {
            inner: start,
            delay: plan.delay,
            cut: plan.fault.map(|fault| (fault, plan.draw % LIST_CUT_MAX)),
            returned: 0,
            done: false,
        };
        futures::stream::unfold(first, move |mut state| {
            let shared = Arc::clone(&shared);
            let path = path.clone();
            async move {
                if state.done {
                    return None;
                }
                if let Some(delay) = state.delay.take() {
                    tokio::time::sleep(delay).await;
                }
                if let Err(err) = shared.alive(op, &path) {
                    state.done = true;
                    return Some((Err(err), state));
                }
                if let Some((fault, at)) = state.cut
                    && at == state.returned
                {
                    state.done = true;
                    return Some((Err(shared.inject(fault, op, &path)), state));
                }
                let item = state.inner.next().await?;
                state.returned += 1;
                Some((item, state))
            }
        })
        // Fused, as callers may poll a finished listing again.
        .fuse()
        .boxed()
    }
}

impl<S: ObjectStore + ?Sized> fmt::Display for FaultyObjectStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "faulty({})", self.inner)
    }
}

/// The body of a get, as a stream of chunks.
type Body = BoxStream<'static, object_store::Result<Bytes>>;

/// `result` with its body replaced by `change` of it; metadata, range and attributes kept.
fn with_body(result: GetResult, change: impl FnOnce(Body) -> Body) -> GetResult {
    let meta = result.meta.clone();
    let range = result.range.clone();
    let attributes = result.attributes.clone();
    let extensions = result.extensions.clone();
    GetResult {
        payload: GetResultPayload::Stream(change(result.into_stream())),
        meta,
        range,
        attributes,
        extensions,
    }
}

/// `result` with its body cut to fewer bytes than its range, chosen by `draw`; its metadata and
/// range still give the full size, as when a connection closes early without an error. An empty
/// body cannot be cut and is returned as it is.
fn truncate(shared: &Shared, result: GetResult, draw: u64) -> GetResult {
    let len = result.range.end - result.range.start;
    if len == 0 {
        return result;
    }
    shared.count(Fault::TruncatedGet);
    let keep = draw % len;
    with_body(result, |body| {
        futures::stream::unfold((body, keep), |(mut body, left)| async move {
            if left == 0 {
                return None;
            }
            match body.next().await? {
                Ok(chunk) => {
                    let take = chunk.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let rest = left - take as u64;
                    Some((Ok(chunk.slice(..take)), (body, rest)))
                }
                Err(err) => Some((Err(err), (body, 0))),
            }
        })
        // Fused: `GetResult::bytes` polls again after an empty first answer.
        .fuse()
        .boxed()
    })
}

/// `result` with bit `draw % bits` of its body flipped; an empty body is returned as it is.
fn flip(shared: &Shared, result: GetResult, draw: u64) -> GetResult {
    let len = result.range.end - result.range.start;
    if len == 0 {
        return result;
    }
    shared.count(Fault::FlippedGet);
    let bit = draw % (len * 8);
    with_body(result, |body| {
        // `at`: the body's offset where the next chunk starts.
        body.scan(0u64, move |at, chunk| {
            let chunk = chunk.map(|chunk| {
                let start = *at;
                *at += chunk.len() as u64;
                if !(start * 8..*at * 8).contains(&bit) {
                    return chunk;
                }
                let mut flipped = chunk.to_vec();
                if let Some(byte) = flipped.get_mut(((bit / 8) - start) as usize) {
                    *byte ^= 1 << (bit % 8);
                }
                Bytes::from(flipped)
            });
            futures::future::ready(Some(chunk))
        })
        .boxed()
    })
}

/// Cuts one non-empty range of `ranges`, chosen by `draw`, to fewer bytes than asked for.
fn truncate_ranges(shared: &Shared, ranges: &mut [Bytes], draw: u64) {
    let nonempty: Vec<usize> = (0..ranges.len())
        .filter(|&i| ranges.get(i).is_some_and(|r| !r.is_empty()))
        .collect();
    let Some(&index) = nonempty.get((draw % nonempty.len().max(1) as u64) as usize) else {
        return;
    };
    if let Some(range) = ranges.get_mut(index) {
        let keep = (draw / nonempty.len() as u64) % range.len() as u64;
        *range = range.slice(..keep as usize);
        shared.count(Fault::TruncatedGet);
    }
}

#[async_trait]
impl<S: ObjectStore + ?Sized> ObjectStore for FaultyObjectStore<S> {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let path = location.as_ref();
        let plan = self.shared.begin(Op::Put, path).await?;
        let request = self.inner.put_opts(location, payload, opts);
        self.shared.send(Op::Put, path, &plan, request).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let path = location.as_ref();
        let plan = self.shared.begin(Op::PutMultipart, path).await?;
        let request = self.inner.put_multipart_opts(location, opts);
        let upload = self
            .shared
            .send(Op::PutMultipart, path, &plan, request)
            .await?;
        Ok(Box::new(FaultyUpload {
            shared: Arc::clone(&self.shared),
            inner: upload,
            path: path.to_owned(),
            dead: false,
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let op = if options.head { Op::Head } else { Op::Get };
        let path = location.as_ref();
        let plan = self.shared.begin(op, path).await?;
        let request = self.inner.get_opts(location, options);
        let result = self.shared.send(op, path, &plan, request).await?;
        Ok(match plan.fault {
            Some(Fault::TruncatedGet) => truncate(&self.shared, result, plan.draw),
            Some(Fault::FlippedGet) => flip(&self.shared, result, plan.draw),
            _ => result,
        })
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        let path = location.as_ref();
        let plan = self.shared.begin(Op::GetRanges, path).await?;
        let request = self.inner.get_ranges(location, ranges);
        let mut bytes = self
            .shared
            .send(Op::GetRanges, path, &plan, request)
            .await?;
        if plan.fault == Some(Fault::TruncatedGet) {
            truncate_ranges(&self.shared, &mut bytes, plan.draw);
        }
        Ok(bytes)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        // One delete at a time, each with its own dice, so that faults hit single paths and a
        // seed replays them in the order the paths come.
        let shared = Arc::clone(&self.shared);
        let inner = Arc::clone(&self.inner);
        locations
            .then(move |location| {
                let shared = Arc::clone(&shared);
                let inner = Arc::clone(&inner);
                async move {
                    let location = location?;
                    let path = location.to_string();
                    let plan = shared.begin(Op::Delete, &path).await?;
                    let request = async {
                        let one = futures::stream::iter([Ok(location.clone())]).boxed();
                        let mut deleted = inner.delete_stream(one);
                        deleted.next().await.unwrap_or(Ok(location.clone()))
                    };
                    shared.send(Op::Delete, &path, &plan, request).await
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.faulty_list(prefix, self.inner.list(prefix))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.faulty_list(prefix, self.inner.list_with_offset(prefix, offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let path = prefix.map(Path::to_string).unwrap_or_default();
        let plan = self.shared.begin(Op::ListWithDelimiter, &path).await?;
        let request = self.inner.list_with_delimiter(prefix);
        self.shared
            .send(Op::ListWithDelimiter, &path, &plan, request)
            .await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        let path = to.as_ref();
        let plan = self.shared.begin(Op::Copy, path).await?;
        let request = self.inner.copy_opts(from, to, options);
        self.shared.send(Op::Copy, path, &plan, request).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        let path = to.as_ref();
        let plan = self.shared.begin(Op::Rename, path).await?;
        let request = self.inner.rename_opts(from, to, options);
        self.shared.send(Op::Rename, path, &plan, request).await
    }
}

/// A multipart upload with faults. Once a part or the completion fails by injection, the upload
/// is dead: a missing part cannot be sent again through `MultipartUpload`, and completing
/// without it would store a corrupt object, which no real store does.
#[derive(Debug)]
struct FaultyUpload {
    shared: Arc<Shared>,
    inner: Box<dyn MultipartUpload>,
    path: String,
    dead: bool,
}

impl FaultyUpload {
    /// The error of a request to a dead upload; not counted, as the fault that killed it was.
    fn dead_error(&self, op: Op) -> object_store::Error {
        Injected {
            fault: Fault::DeadMultipart,
            op,
        }
        .into_error(&self.path)
    }
}

#[async_trait]
impl MultipartUpload for FaultyUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let op = Op::PutPart;
        if self.dead {
            return futures::future::ready(Err(self.dead_error(op))).boxed();
        }
        if let Err(err) = self.shared.alive(op, &self.path) {
            return futures::future::ready(Err(err)).boxed();
        }
        let plan = self.shared.roll(op);
        if let Err(err) = self.shared.alive(op, &self.path) {
            return futures::future::ready(Err(err)).boxed();
        }
        let shared = Arc::clone(&self.shared);
        let path = self.path.clone();
        let pause = async move {
            if let Some(delay) = plan.delay {
                tokio::time::sleep(delay).await;
            }
        };
        match plan.fault {
            Some(fault @ (Fault::Error | Fault::Throttle | Fault::DeadMultipart)) => {
                self.dead = true;
                let err = shared.inject(fault, op, &path);
                async move {
                    pause.await;
                    Err(err)
                }
                .boxed()
            }
            _ => {
                // The part is handed over now, as `put_part` must, but a kill during the pause
                // still fails it: the completion that would use it can never come.
                let part = self.inner.put_part(data);
                async move {
                    pause.await;
                    shared.alive(op, &path)?;
                    part.await
                }
                .boxed()
            }
        }
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let op = Op::Complete;
        if self.dead {
            return Err(self.dead_error(op));
        }
        let plan = self.shared.begin(op, &self.path).await?;
        if plan.fault == Some(Fault::DeadMultipart) {
            self.dead = true;
        }
        let request = self.inner.complete();
        self.shared.send(op, &self.path, &plan, request).await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        let op = Op::Abort;
        let plan = self.shared.begin(op, &self.path).await?;
        let request = self.inner.abort();
        self.shared.send(op, &self.path, &plan, request).await
    }
}
