//! The write-ahead log in an object store: every group-commit batch becomes one immutable object
//! named by its first LSN and written create-if-absent, so a second writer is fenced out; readers
//! list the objects and replay them in LSN order. Object naming is in `docs/file-formats.md`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use rand::RngExt;

use crate::error::{Error, Result};
use crate::format::{self, FRAME_HEADER_LEN, HEADER_LEN};
use crate::group_commit::{Next, Queue};
use crate::recovery::{Unit, Verdict, confirm, examine};
use crate::replay::{Window, replay};
use crate::wal::some_lsn;
use crate::{
    AppendOptions, Durability, Lsn, Record, RecoveryMode, RecoveryReport, Wal, WalOptions, WalStats,
};

/// Upper bound of the adaptive group-commit wait, whatever an upload costs.
const MAX_GATHER: Duration = Duration::from_millis(10);

/// Extension of a log object.
const EXT: &str = ".wal";
/// Suffix given to an object set aside by [`RecoveryMode::SkipCorrupt`].
const CORRUPT_EXT: &str = ".corrupt";

/// Bytes of a claim's object ([`Wal::claim`]): a header and one frame with an empty payload.
const CLAIM_BYTES: u64 = (HEADER_LEN + FRAME_HEADER_LEN) as u64;

/// A write-ahead log in an [`ObjectStore`] under a prefix.
///
/// Every batch is one object `<prefix>/<first LSN, 20 digits>.wal` written with
/// [`PutMode::Create`]: a batch is durable once its upload returns, so every append is effectively
/// [`Durability::Durable`] once the batch is uploaded and the [`crate::SyncPolicy`] does not
/// apply. If the object already exists another writer owns the log: this one is fenced and
/// poisoned ([`Error::Fenced`]). Each writer puts a random token of its own in the header of
/// every object it writes, so that an object it finds under its batch's name that is byte for
/// byte its own batch (an upload that landed but whose answer was lost, resent by the store's
/// retry layer) counts as uploaded, not as another writer's.
///
/// The log is as durable as the store: on `object_store`'s `LocalFileSystem`, build the store
/// `with_fsync(true)`.
///
/// Uploads run on a writer thread that drives the store's futures on the tokio runtime current
/// at [`ObjectWal::open`] (a multi-thread runtime is needed for network stores), or on a local
/// executor when there is none.
#[derive(Debug)]
pub struct ObjectWal {
    queue: Arc<Queue>,
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    /// The newest retired fence's LSN (0 if none): listings start after it, so that the fences
    /// kept for good (two a database open) cost each listing nothing.
    fence: AtomicU64,
    options: WalOptions,
    report: RecoveryReport,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// Drives futures from the writer thread.
#[derive(Clone, Debug)]
enum Runner {
    Tokio(tokio::runtime::Handle),
    Local,
}

impl Runner {
    fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        match self {
            Runner::Tokio(handle) => handle.block_on(future),
            Runner::Local => futures::executor::block_on(future),
        }
    }
}

/// The object holding the batch whose first LSN is `base`.
fn object_path(prefix: &Path, base: Lsn) -> Path {
    prefix.clone().join(format!("{base:020}{EXT}"))
}

fn store_error(op: &'static str, path: &Path) -> impl FnOnce(object_store::Error) -> Error {
    let path = path.to_string();
    move |source| Error::ObjectStore { op, path, source }
}

/// An object of the log: the first LSN of its batch, its path and its size.
#[derive(Clone, Debug)]
struct LogObject {
    base: Lsn,
    path: Path,
    size: u64,
}

/// The log's objects directly under `prefix`.
struct Listing {
    /// The objects that hold records, in LSN order: every one after the retired fences.
    objects: Vec<LogObject>,
    /// The LSN of the newest retired fence (see [`ObjectWal::truncate_before`]), if any.
    fence: Option<Lsn>,
}

/// The log's objects directly under `prefix`, those named after the LSN `after` alone if it is
/// not 0 (names sort as their LSNs do). Empty objects ahead of every other are retired fences,
/// left out; an empty object after one that holds records is damage, and listed.
async fn list(store: &dyn ObjectStore, prefix: &Path, after: Lsn) -> Result<Listing> {
    let listing = match after {
        0 => store.list(Some(prefix)),
        after => store.list_with_offset(Some(prefix), &object_path(prefix, after)),
    };
    let metas: Vec<_> = listing
        .try_collect()
        .await
        .map_err(store_error("list", prefix))?;
    let mut objects: Vec<LogObject> = metas
        .into_iter()
        .filter_map(|meta| {
            let name = meta.location.filename()?;
            let digits = name.strip_suffix(EXT)?;
            if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            // `u64::MAX` is no batch's first LSN (none follows it): a foreign name.
            let base: Lsn = digits.parse().ok().filter(|&base| base < Lsn::MAX)?;
            (meta.location == object_path(prefix, base)).then_some(LogObject {
                base,
                path: meta.location,
                size: meta.size,
            })
        })
        .collect();
    objects.sort_by_key(|object| object.base);
    let fences = objects.iter().take_while(|o| o.size == 0).count();
    let fence = fences.checked_sub(1).map(|newest| objects[newest].base);
    objects.drain(..fences);
    Ok(Listing { objects, fence })
}

/// The whole object at `path`. A body shorter than the object (a connection that closed
/// early) is a failed request, not damage: recovery would otherwise cut acknowledged records
/// from an object that is intact in the store.
async fn get(store: &dyn ObjectStore, path: &Path) -> Result<Bytes> {
    let result = store.get(path).await.map_err(store_error("get", path))?;
    let size = result.meta.size;
    let bytes = result.bytes().await.map_err(store_error("get", path))?;
    if bytes.len() as u64 != size {
        return Err(store_error("get", path)(object_store::Error::Generic {
            store: "omendb-wal",
            source: format!("short read: {} of {size} bytes", bytes.len()).into(),
        }));
    }
    Ok(bytes)
}

/// The whole object at `path`, which a listing gave as `size` bytes. An object is never rewritten
/// to another size but by a truncation retiring a claim (or a recovery cutting it), which another
/// process may run between the listing and the read: read back at another size, it is a read
/// of a log that changed (retryable), not damage (an empty object fails the header check).
async fn get_listed(store: &dyn ObjectStore, path: &Path, size: u64) -> Result<Bytes> {
    let bytes = get(store, path).await?;
    if bytes.len() as u64 != size {
        return Err(store_error("get", path)(object_store::Error::Generic {
            store: "omendb-wal",
            source: format!(
                "listed at {size} bytes, read at {}: the log changed while it was read",
                bytes.len()
            )
            .into(),
        }));
    }
    Ok(bytes)
}

/// Uploads `payload`, the batch whose first LSN is `base`, as a new object at `path`
/// ([`PutMode::Create`]). An object already there that holds exactly `payload` is this upload's
/// own earlier attempt, whose answer was lost: the upload succeeded. The header's token makes a
/// batch's bytes unique to its writer, so another writer's object under the name never matches
/// (not even a claim, whose record is the same for every writer).
async fn upload(
    store: &dyn ObjectStore,
    path: &Path,
    base: Lsn,
    payload: PutPayload,
) -> Result<()> {
    let create = PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    match store.put_opts(path, payload.clone(), create).await {
        Ok(_) => Ok(()),
        Err(object_store::Error::AlreadyExists { .. }) => {
            let found = get(store, path).await?;
            // The parts joined into one copy: this path is rare.
            let sent: Vec<u8> = payload
                .iter()
                .flat_map(|part| part.iter().copied())
                .collect();
            if found == sent {
                Ok(())
            } else {
                Err(Error::Fenced {
                    lsn: base,
                    object: path.to_string(),
                })
            }
        }
        Err(source) => Err(store_error("put", path)(source)),
    }
}

async fn delete(store: &dyn ObjectStore, path: &Path) -> Result<()> {
    store
        .delete(path)
        .await
        .map_err(store_error("delete", path))
}

/// Recovers the log under `prefix` and returns the report and the last LSN.
async fn recover(
    store: &dyn ObjectStore,
    prefix: &Path,
    options: &WalOptions,
    token: u64,
) -> Result<(RecoveryReport, Lsn, Option<Lsn>)> {
    let Listing { objects, fence } = list(store, prefix, 0).await?;
    let mut report = RecoveryReport {
        mode: options.recovery_mode,
        ..RecoveryReport::default()
    };
    let mut expected = None;
    for (i, LogObject { base, path, size }) in objects.iter().enumerate() {
        let buf = get_listed(store, path, *size).await?;
        let examined = examine(
            &buf,
            *base,
            path.as_ref(),
            Unit::Object {
                newest: i + 1 == objects.len(),
            },
            options.max_record_bytes,
            &mut expected,
            &mut report,
        );
        // Damage is confirmed by a second read before it is acted on, or reported as
        // corruption: a bit flipped on the way from the store is a failed read, not a damaged
        // log.
        if examined.as_ref().map_or(true, Verdict::rests_on_damage) {
            let again = get(store, path).await?;
            confirm(&buf, &again, path.as_ref()).map_err(|e| {
                store_error("get", path)(object_store::Error::Generic {
                    store: "omendb-wal",
                    source: Box::new(e),
                })
            })?;
        }
        let verdict = examined?;
        match verdict {
            Verdict::Keep { cut, stop, .. } => {
                if stop {
                    // Point in time: the later objects go before this one is cut, so that a
                    // crash in between leaves a prefix of the log.
                    drop_objects(store, &objects[i + 1..], &mut report).await?;
                }
                if let Some(cut) = cut {
                    // The intact prefix replaces the object in one put (an overwrite is
                    // atomic): deleting it first and creating the prefix lost the prefix's
                    // acknowledged records to a crash or a failed put in between.
                    if cut > HEADER_LEN {
                        replace(store, path, buf.slice(..cut)).await?;
                    } else if i == 0 {
                        hold_place(store, path, *base, token, &mut expected).await?;
                    } else {
                        delete(store, path).await?;
                    }
                }
                if stop {
                    break;
                }
            }
            Verdict::Drop { stop: true } => {
                let hold = i == 0 && expected == Some(*base);
                drop_objects(store, &objects[i + usize::from(hold)..], &mut report).await?;
                if hold {
                    report.bytes_truncated += size;
                    hold_place(store, path, *base, token, &mut expected).await?;
                }
                break;
            }
            Verdict::Drop { stop: false } => {
                // Parsed: `path` is already in its encoded form, which `Path::from` would encode
                // again.
                let aside = Path::parse(format!("{path}{CORRUPT_EXT}"))
                    .map_err(|err| store_error("copy", path)(err.into()))?;
                store
                    .copy(path, &aside)
                    .await
                    .map_err(store_error("copy", path))?;
                if i == 0 && expected == Some(*base) {
                    hold_place(store, path, *base, token, &mut expected).await?;
                } else {
                    delete(store, path).await?;
                }
            }
        }
    }
    // A retired fence's LSN was taken by a claim: a log that keeps nothing after it goes on
    // above it.
    let last = expected.map_or(0, |next| next - 1).max(fence.unwrap_or(0));
    Ok((report, last, fence))
}

/// Deletes `objects` (the end of the log that point-in-time recovery drops), newest first, so
/// that a crash in the middle still leaves a prefix of the log.
async fn drop_objects(
    store: &dyn ObjectStore,
    objects: &[LogObject],
    report: &mut RecoveryReport,
) -> Result<()> {
    for object in objects.iter().rev() {
        delete(store, &object.path).await?;
        report.bytes_truncated += object.size;
    }
    Ok(())
}

/// Replaces the log's first object, at `path`, of which recovery keeps no record, with one empty
/// record at its `base`, as a claim's: the log then goes on after it. Deleted instead, it left
/// no object to say where the log goes on, and a crash before the next one was written
/// restarted the log at LSN 1 (or above the newest retired fence), below LSNs it had used (the
/// file log renames a fresh segment over a dropped one for the same reason; found by a helper
/// agent's review). A later object holds the place by itself.
async fn hold_place(
    store: &dyn ObjectStore,
    path: &Path,
    base: Lsn,
    token: u64,
    expected: &mut Option<Lsn>,
) -> Result<()> {
    let mut placeholder = format::encode_header(base, token).to_vec();
    format::encode_frame(&mut placeholder, base, &[], format::payload_crc(&[]));
    replace(store, path, Bytes::from(placeholder)).await?;
    // `list` leaves out the name of `u64::MAX`, so `base + 1` is an LSN.
    *expected = Some(base.saturating_add(1));
    Ok(())
}

/// Replaces the object at `path` with `payload` in one put. A put that fails but whose bytes
/// are found there afterwards landed (its answer was lost).
async fn replace(store: &dyn ObjectStore, path: &Path, payload: Bytes) -> Result<()> {
    let put = store
        .put_opts(
            path,
            payload.clone().into(),
            PutOptions::from(PutMode::Overwrite),
        )
        .await;
    match put {
        Ok(_) => Ok(()),
        Err(_) if get(store, path).await.is_ok_and(|found| found == payload) => Ok(()),
        Err(source) => Err(store_error("put", path)(source)),
    }
}

impl ObjectWal {
    /// Opens (recovering) the log under `prefix` in `store` and starts its writer.
    pub async fn open(
        store: Arc<dyn ObjectStore>,
        prefix: impl Into<Path>,
        options: WalOptions,
    ) -> Result<Self> {
        options.validate()?;
        let prefix = prefix.into();
        // Random, so that no two writers' objects are alike (see [`upload`]).
        let token = rand::rng().random::<u64>();
        let (report, last_lsn, fence) = recover(store.as_ref(), &prefix, &options, token).await?;
        let queue = Arc::new(Queue::new(
            last_lsn,
            options.max_record_bytes,
            options.max_buffered_bytes,
            options.max_buffer_wait,
        ));
        let runner = match tokio::runtime::Handle::try_current() {
            Ok(handle) => Runner::Tokio(handle),
            Err(_) => Runner::Local,
        };
        let handle = {
            let queue = queue.clone();
            let store = store.clone();
            let prefix = prefix.clone();
            std::thread::Builder::new()
                .name("omendb-wal-uploader".to_owned())
                .spawn(move || run_writer(&queue, store.as_ref(), &prefix, token, &runner))
                .map_err(|e| Error::io("spawn writer", "", e))?
        };
        Ok(ObjectWal {
            queue,
            store,
            prefix,
            fence: AtomicU64::new(fence.unwrap_or(0)),
            options,
            report,
            writer: Mutex::new(Some(handle)),
        })
    }

    /// The records from `from` to `upto`, listing the objects now.
    fn records(&self, from: Lsn, upto: Lsn) -> BoxStream<'_, Result<Record>> {
        let window = Window {
            from: from.max(1),
            upto,
            max_record_bytes: self.options.max_record_bytes,
            skip_corrupt: self.options.recovery_mode == RecoveryMode::SkipCorrupt,
        };
        let start = async move {
            let objects = if window.from > window.upto {
                Vec::new()
            } else {
                let after = self.fence.load(Ordering::Acquire);
                list(self.store.as_ref(), &self.prefix, after)
                    .await?
                    .objects
            };
            // Objects entirely below `from` are not read.
            let first = objects
                .windows(2)
                .take_while(|pair| pair[1].base <= window.from)
                .count();
            Ok::<_, Error>(objects.into_iter().skip(first).collect::<VecDeque<_>>())
        };
        stream::once(start)
            .map_ok(move |objects| {
                stream::try_unfold(
                    (objects, VecDeque::new(), false),
                    move |(mut objects, mut ready, mut done)| async move {
                        loop {
                            if let Some(record) = ready.pop_front() {
                                return Ok(Some((record, (objects, ready, done))));
                            }
                            if done {
                                return Ok(None);
                            }
                            let Some(LogObject { base, path, size }) = objects.pop_front() else {
                                return Ok(None);
                            };
                            let buf = get_listed(self.store.as_ref(), &path, size).await?;
                            done = replay(&buf, base, path.as_ref(), window, &mut ready)?;
                        }
                    },
                )
            })
            .try_flatten()
            .boxed()
    }
}

/// The writer thread: uploads each batch as one object whose header carries `token`.
fn run_writer(queue: &Queue, store: &dyn ObjectStore, prefix: &Path, token: u64, runner: &Runner) {
    let _exit = queue.writer_exit();
    // How long the last upload took: the most the next batch waits to gather appenders.
    let mut upload_cost = Duration::ZERO;
    loop {
        match queue.next_batch(None, upload_cost.min(MAX_GATHER)) {
            Next::Batch(batch) => {
                if batch.bytes.is_empty() {
                    // Everything uploaded is already durable.
                    queue.complete(batch.last, Some(batch.last), batch.bytes);
                    continue;
                }
                let path = object_path(prefix, batch.first);
                let (records, bytes) = (
                    batch.last.saturating_sub(batch.first) + 1,
                    batch.bytes.len(),
                );
                let payload: PutPayload = [
                    Bytes::copy_from_slice(&format::encode_header(batch.first, token)),
                    Bytes::from(batch.bytes),
                ]
                .into_iter()
                .collect();
                let start = Instant::now();
                let put = runner.block_on(upload(store, &path, batch.first, payload));
                upload_cost = start.elapsed();
                match put {
                    // Counted and timed once it landed, as the file log counts a group written
                    // and times a sync that succeeded.
                    Ok(()) => {
                        crate::telemetry::group_written("object", records, bytes);
                        crate::telemetry::synced("object", upload_cost);
                        // The buffer now belongs to the payload; the queue allocates a new one.
                        queue.complete(batch.last, Some(batch.last), Vec::new());
                    }
                    Err(e) => {
                        // Fenced by another writer's object, or an upload that may or may not
                        // have landed: either way nothing in it is known durable, so nothing
                        // is acknowledged.
                        queue.poison(e);
                        break;
                    }
                }
            }
            Next::Idle => {}
            Next::Closed => break,
        }
    }
}

impl ObjectWal {
    /// Stops accepting appends, uploads everything queued, and stops the writer. Fails if the
    /// log was poisoned or fenced.
    pub fn close(&self) -> Result<()> {
        self.queue.close();
        let handle = match self.writer.lock() {
            Ok(mut slot) => slot.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(handle) = handle {
            handle.join().map_err(|_| Error::Poisoned {
                cause: Arc::new(Error::Closed),
            })?;
        }
        match self.queue.check_open() {
            Err(e @ Error::Poisoned { .. }) => Err(e),
            _ => Ok(()),
        }
    }

    /// Deletes every object whose records are all below `lsn` (never the newest), except
    /// claims, which it retires: each is overwritten with an empty object, kept for good.
    ///
    /// A claim is the fence of the writer it shut out ([`Wal::claim`]): that writer's next
    /// batch can only be named by the claim's LSN, so as long as the name is taken, the batch
    /// is refused. Deleted with the rest, the name was free again, and a writer that had slept
    /// through the takeover uploaded its next batch there and acknowledged it, below the log
    /// the new writer reads (found by a helper agent's review; SlateDB keeps its fences for the
    /// same reason). A retired fence holds no record and costs a name in every listing: two a
    /// database open.
    pub async fn truncate_before(&self, lsn: Lsn) -> Result<()> {
        let after = self.fence.load(Ordering::Acquire);
        let objects = list(self.store.as_ref(), &self.prefix, after)
            .await?
            .objects;
        let dead = objects
            .windows(2)
            .take_while(|pair| pair[1].base <= lsn)
            .count();
        // Oldest first, so a failure in the middle leaves a contiguous suffix of the log (and
        // the retired fences ahead of it); an object already gone (a truncation repeated after
        // a lost answer) counts as deleted.
        for object in &objects[..dead] {
            let retire = object.size == CLAIM_BYTES;
            let done = if retire {
                self.store
                    .put_opts(
                        &object.path,
                        PutPayload::new(),
                        PutOptions::from(PutMode::Overwrite),
                    )
                    .await
                    .map(|_| ())
                    .map_err(store_error("put", &object.path))
            } else {
                delete(self.store.as_ref(), &object.path).await
            };
            match done {
                Err(Error::ObjectStore {
                    source: object_store::Error::NotFound { .. },
                    ..
                }) => {}
                other => other?,
            }
            if retire {
                // Everything before it is gone or retired too (oldest first).
                self.fence.fetch_max(object.base, Ordering::AcqRel);
            }
        }
        Ok(())
    }
}

impl Drop for ObjectWal {
    /// Stops accepting appends; the writer thread uploads what is queued and ends on its own.
    /// Unlike [`ObjectWal::close`], it does not wait: the writer drives its uploads on the
    /// tokio runtime, and a drop on one of that runtime's worker threads that waited for it
    /// could starve the runtime of the very thread its timers and I/O need (found by the chaos
    /// simulation: `regressions.rs::dropping_an_object_wal_on_a_runtime_thread_does_not_hang`).
    fn drop(&mut self) {
        self.queue.close();
        let handle = match self.writer.lock() {
            Ok(mut slot) => slot.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        // Detached: the thread ends once the queue is drained.
        drop(handle);
    }
}

impl Wal for ObjectWal {
    fn append<'a>(
        &'a self,
        payload: &'a [u8],
        options: AppendOptions,
    ) -> BoxFuture<'a, Result<Lsn>> {
        Box::pin(async move {
            let durable = options.durability == Durability::Durable;
            let lsn = self.queue.enqueue(payload, durable)?;
            if durable {
                self.queue.await_durable_async(lsn).await?;
            }
            Ok(lsn)
        })
    }

    fn append_blocking(&self, payload: &[u8], options: AppendOptions) -> Result<Lsn> {
        let durable = options.durability == Durability::Durable;
        let lsn = self.queue.enqueue(payload, durable)?;
        if durable {
            self.queue.await_durable(lsn)?;
        }
        Ok(lsn)
    }

    fn append_buffered_now(&self, payload: &[u8]) -> Option<Result<Lsn>> {
        Some(self.queue.enqueue(payload, false))
    }

    fn wait_durable(&self, lsn: Lsn) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.queue.wait_durable_async(lsn))
    }

    fn wait_durable_blocking(&self, lsn: Lsn) -> Result<()> {
        self.queue.wait_durable(lsn)
    }

    fn read_from(&self, from: Lsn) -> BoxStream<'_, Result<Record>> {
        let upto = self.queue.last_assigned();
        stream::once(async move { self.queue.written_upto_async(upto).await })
            .map_ok(move |written| self.records(from, written))
            .try_flatten()
            .boxed()
    }

    fn truncate_before(&self, lsn: Lsn) -> BoxFuture<'_, Result<()>> {
        Box::pin(ObjectWal::truncate_before(self, lsn))
    }

    fn last_durable_lsn(&self) -> Option<Lsn> {
        some_lsn(self.queue.durable())
    }

    fn last_lsn(&self) -> Option<Lsn> {
        some_lsn(self.queue.last_assigned())
    }

    fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    fn stats(&self) -> WalStats {
        self.queue.stats()
    }

    fn close(&self) -> Result<()> {
        ObjectWal::close(self)
    }

    /// Takes the next LSN's object name with an empty record: the batch of an earlier writer
    /// that was in flight when this one opened can only have that name (its uploads run one at
    /// a time, in LSN order), so it can no longer land.
    fn claim(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move { self.append(&[], AppendOptions::DURABLE).await.map(|_| ()) })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

    use super::*;
    use object_store::memory::InMemory;

    /// An object read back at another size than its listing gave (a claim another process
    /// retired in between) is a log that changed under the read, retryable, not damage.
    #[tokio::test]
    async fn an_object_that_changed_size_since_its_listing_is_a_retry() {
        let store = InMemory::new();
        let path = object_path(&Path::from("wal"), 7);
        store
            .put(&path, PutPayload::from(vec![1u8; 48]))
            .await
            .unwrap();
        let listed = list(&store, &Path::from("wal"), 0).await.unwrap();
        assert_eq!(listed.objects.len(), 1);
        assert_eq!(listed.objects[0].size, 48);
        store.put(&path, PutPayload::new()).await.unwrap();
        let err = get_listed(&store, &path, 48).await.unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Retry, "{err}");
        // Retired, the object is a fence: no object of the log, and the floor.
        let listed = list(&store, &Path::from("wal"), 0).await.unwrap();
        assert!(listed.objects.is_empty());
        assert_eq!(listed.fence, Some(7));
        // The name of `u64::MAX` is no batch's.
        store
            .put(
                &object_path(&Path::from("wal"), Lsn::MAX),
                PutPayload::new(),
            )
            .await
            .unwrap();
        assert_eq!(
            list(&store, &Path::from("wal"), 0).await.unwrap().fence,
            Some(7)
        );
        // Listed after the fence, the log's objects alone.
        store
            .put(
                &object_path(&Path::from("wal"), 8),
                PutPayload::from(vec![1u8; 48]),
            )
            .await
            .unwrap();
        let after = list(&store, &Path::from("wal"), 7).await.unwrap();
        assert_eq!(after.fence, None);
        let bases: Vec<Lsn> = after.objects.iter().map(|o| o.base).collect();
        assert_eq!(bases, [8]);
    }
}
