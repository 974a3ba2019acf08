//! The local write-ahead log: fixed-size segment files in one directory, written by one thread.

mod floor;
mod reader;
mod recovery;
mod segment;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::{self, BoxStream, StreamExt};

pub use reader::FileReader;
use segment::Segment;

use crate::error::{Error, Result};
use crate::group_commit::Queue;
use crate::io::{FileIo, StdIo};
use crate::replay::Window;
use crate::wal::some_lsn;
use crate::{
    AppendOptions, Durability, Lsn, Record, RecoveryMode, RecoveryReport, Wal, WalOptions, WalStats,
};

/// A write-ahead log in a local directory.
///
/// Opening locks the directory (a second handle gets [`Error::Locked`]), runs recovery
/// ([`WalOptions::recovery_mode`]) and starts the writer thread; dropping or [`FileWal::close`]
/// drains, syncs and stops it. Reads (also through the async [`Wal::read_from`]) are plain
/// blocking file reads; appends never wait on I/O other than their own durability.
#[derive(Debug)]
pub struct FileWal {
    queue: Arc<Queue>,
    io: Arc<dyn FileIo>,
    dir: PathBuf,
    options: WalOptions,
    segments: Arc<Mutex<Vec<Segment>>>,
    report: RecoveryReport,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Held until the log is closed, so a second handle on the directory is refused.
    lock: Mutex<Option<Box<dyn std::any::Any + Send + Sync>>>,
}

impl FileWal {
    /// Opens (creating if needed) the log in `dir` on the local file system.
    pub fn open(dir: impl AsRef<Path>, options: WalOptions) -> Result<Self> {
        Self::open_with_io(Arc::new(StdIo), dir, options)
    }

    /// Opens the log in `dir` doing all file I/O through `io` (for fault injection).
    pub fn open_with_io(
        io: Arc<dyn FileIo>,
        dir: impl AsRef<Path>,
        options: WalOptions,
    ) -> Result<Self> {
        options.validate()?;
        let dir = dir.as_ref().to_owned();
        crate::io::create_dir_durable(io.as_ref(), &dir)
            .map_err(|e| Error::io("create_dir", &dir, e))?;
        let lock = io.lock_dir(&dir).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock => Error::Locked { dir: dir.clone() },
            _ => Error::io("lock", &dir, e),
        })?;
        let recovered = recovery::recover(io.as_ref(), &dir, &options)?;
        let queue = Arc::new(Queue::new(
            recovered.last_lsn,
            options.max_record_bytes,
            options.max_buffered_bytes,
            options.max_buffer_wait,
        ));
        let path = recovered
            .segments
            .last()
            .map(|s| s.path.clone())
            .unwrap_or_else(|| dir.clone());
        let segments = Arc::new(Mutex::new(recovered.segments));
        let writer = writer::Writer {
            io: io.clone(),
            dir: dir.clone(),
            options: options.clone(),
            queue: queue.clone(),
            segments: segments.clone(),
            file: recovered.active,
            path,
            len: recovered.active_len,
            zeroed: recovered.active_len,
            written: recovered.last_lsn,
            durable: recovered.last_lsn,
            last_sync: Instant::now(),
            sync_cost: Duration::ZERO,
        };
        let handle = std::thread::Builder::new()
            .name("omendb-wal-writer".to_owned())
            .spawn(move || writer.run())
            .map_err(|e| Error::io("spawn writer", &dir, e))?;
        Ok(FileWal {
            queue,
            io,
            dir,
            options,
            segments,
            report: recovered.report,
            writer: Mutex::new(Some(handle)),
            lock: Mutex::new(Some(lock)),
        })
    }

    /// The directory of the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends one record, blocking until it is as durable as `options` asks.
    pub fn append(&self, payload: &[u8], options: AppendOptions) -> Result<Lsn> {
        let lsn = self
            .queue
            .enqueue(payload, options.durability == Durability::Durable)?;
        if options.durability == Durability::Durable {
            self.queue.await_durable(lsn)?;
        }
        Ok(lsn)
    }

    /// Blocks until every record up to `lsn` is durable.
    pub fn wait_durable(&self, lsn: Lsn) -> Result<()> {
        self.queue.wait_durable(lsn)
    }

    /// The records from `from` up to the last one appended before this call, read with blocking
    /// file I/O.
    pub fn reader(&self, from: Lsn) -> Result<FileReader> {
        let upto = self.queue.last_assigned();
        self.queue.wait_written(upto)?;
        Ok(self.reader_upto(from, upto))
    }

    fn reader_upto(&self, from: Lsn, upto: Lsn) -> FileReader {
        let window = Window {
            from: from.max(1),
            upto,
            max_record_bytes: self.options.max_record_bytes,
            skip_corrupt: self.options.recovery_mode == RecoveryMode::SkipCorrupt,
        };
        FileReader::new(self.io.clone(), self.segment_list(), window)
    }

    fn segment_list(&self) -> Vec<Segment> {
        match self.segments.lock() {
            Ok(list) => list.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Deletes every segment whose records are all below `lsn` (never the active one), then
    /// syncs the directory. The first segment kept is recorded first as the log's truncation
    /// floor (see `floor`), so that segments whose deletion a crash undid are dropped at open.
    pub fn truncate_before(&self, lsn: Lsn) -> Result<()> {
        let mut list = match self.segments.lock() {
            Ok(list) => list,
            Err(poisoned) => poisoned.into_inner(),
        };
        let dead = list
            .windows(2)
            .take_while(|pair| pair[1].base <= lsn)
            .count();
        if dead == 0 {
            return Ok(());
        }
        if let Err(err) = floor::write(self.io.as_ref(), &self.dir, list[dead].base) {
            // The log's rule for a failed write or sync, whichever file it hit: it goes on no
            // further until reopened.
            if matches!(
                err,
                Error::ShortWrite { .. }
                    | Error::Io {
                        op: "write" | "sync",
                        ..
                    }
            ) {
                self.queue.poison(err);
                return self.queue.check_open();
            }
            return Err(err);
        }
        // Oldest first, so a crash or a failure in the middle leaves a contiguous suffix of the
        // log. The segments already deleted leave the list even when a later delete fails (a
        // reader would fail on them and the next truncation would stop at them again), and a
        // segment already gone counts as deleted, so a truncation that failed can be repeated.
        let mut deleted = 0;
        let mut failure = None;
        for seg in &list[..dead] {
            match self.io.delete(&seg.path) {
                Ok(()) => deleted += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => deleted += 1,
                Err(e) => {
                    failure = Some(Error::io("delete", &seg.path, e));
                    break;
                }
            }
        }
        list.drain(..deleted);
        drop(list);
        if let Some(err) = failure {
            return Err(err);
        }
        self.io
            .sync_dir(&self.dir)
            .map_err(|e| Error::io("sync_dir", &self.dir, e))
    }

    /// Stops accepting appends, writes and syncs everything queued, stops the writer and
    /// releases the directory (another handle may then open it). Fails if the log was
    /// poisoned.
    pub fn close(&self) -> Result<()> {
        let closed = self.stop_writer();
        match self.lock.lock() {
            Ok(mut lock) => drop(lock.take()),
            Err(poisoned) => drop(poisoned.into_inner().take()),
        }
        closed
    }

    fn stop_writer(&self) -> Result<()> {
        self.queue.close();
        let handle = match self.writer.lock() {
            Ok(mut slot) => slot.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(handle) = handle {
            // A panic in the writer has poisoned the queue and failed its waiters on the way out
            // (`WriterExit`); surface it here too.
            handle.join().map_err(|_| Error::Poisoned {
                cause: Arc::new(Error::io(
                    "writer thread",
                    &self.dir,
                    std::io::Error::other("the writer thread panicked"),
                )),
            })?;
        }
        match self.queue.check_open() {
            Err(e @ Error::Poisoned { .. }) => Err(e),
            _ => Ok(()),
        }
    }
}

impl Drop for FileWal {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

impl Wal for FileWal {
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
        FileWal::append(self, payload, options)
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
        stream::once(async move {
            match self.queue.written_upto_async(upto).await {
                Ok(written) => stream::iter(self.reader_upto(from, written)).left_stream(),
                Err(e) => stream::iter([Err(e)]).right_stream(),
            }
        })
        .flatten()
        .boxed()
    }

    fn truncate_before(&self, lsn: Lsn) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move { FileWal::truncate_before(self, lsn) })
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
        FileWal::close(self)
    }
}
