//! The one thread that owns the local log's active segment: it takes group-commit batches from
//! the queue, writes each with one write (split only at a segment boundary), syncs by policy,
//! rotates segments, and poisons the queue at the first failure.
//!
//! With [`WalOptions::preallocate`] the writer keeps zeros written ahead of its records, in
//! steps of [`ZERO_STEP`], and writes each small batch (up to [`ZERO_FOR`]) over them: an
//! `fdatasync` of bytes inside the file's length writes the data pages only, while one that
//! grows the file also commits the new size through the file system's journal (on ext4 on this
//! project's machines that cost a group of 64 small records 250 µs instead of 135 µs). Only the
//! sync after each step pays it.
//! The zeros are cut off when a segment is closed, so a cleanly closed segment ends at its last
//! record; recovery cuts them after a crash (see [`crate::format::Step::End`]).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::segment::{self, Segment};
use crate::error::{Error, Result};
use crate::format::{self, HEADER_LEN};
use crate::group_commit::{Batch, Next, Queue};
use crate::io::{FileIo, IoFile};
use crate::{Lsn, SyncPolicy, WalOptions};

/// The writer's state.
pub(crate) struct Writer {
    pub(crate) io: Arc<dyn FileIo>,
    pub(crate) dir: PathBuf,
    pub(crate) options: WalOptions,
    pub(crate) queue: Arc<Queue>,
    /// The segment list shared with readers and truncation; the writer only appends to it.
    pub(crate) segments: Arc<Mutex<Vec<Segment>>>,
    /// The active segment.
    pub(crate) file: Box<dyn IoFile>,
    pub(crate) path: PathBuf,
    /// Bytes of records (and header) in the active segment.
    pub(crate) len: u64,
    /// The file's length: `len`, then the zeros written ahead of the records.
    pub(crate) zeroed: u64,
    /// Last LSN written and last LSN synced.
    pub(crate) written: Lsn,
    pub(crate) durable: Lsn,
    pub(crate) last_sync: Instant,
    /// How long the last sync took: the most the next batch waits to gather appenders.
    pub(crate) sync_cost: Duration,
}

/// Upper bound of the adaptive group-commit wait, whatever a sync costs.
const MAX_GATHER: Duration = Duration::from_millis(2);

/// How far ahead of the records the writer zero-fills the segment at a time. Measured on ext4
/// (2,000 groups of 7 KiB, each written and synced): 128 KiB to 2 MiB steps all cut the mean
/// sync from ~255 µs to 145–185 µs; larger steps make the one sync that writes them slower.
pub(crate) const ZERO_STEP: u64 = 256 << 10;

/// The largest write that zeros are written ahead of. Zeros double the bytes a sync writes
/// back, which pays only while the journal commit they save dominates the sync: that commit
/// (~80 µs here) costs as much as writing ~40 KiB, so a group of 64 small records (7 KiB) gains
/// and one of 64 records of 4 KiB (263 KiB, more than a whole step) would lose.
pub(crate) const ZERO_FOR: usize = 16 << 10;

/// Zeros to write from, so a step needs no allocation.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

impl Writer {
    /// Runs until the queue closes (after a final sync) or a failure poisons it.
    pub(crate) fn run(mut self) {
        let queue = Arc::clone(&self.queue);
        let _exit = queue.writer_exit();
        loop {
            let timeout = match self.options.sync_policy {
                SyncPolicy::Interval(every) if self.written > self.durable => {
                    Some(every.saturating_sub(self.last_sync.elapsed()))
                }
                _ => None,
            };
            let result = match self
                .queue
                .next_batch(timeout, self.sync_cost.min(MAX_GATHER))
            {
                Next::Batch(batch) => self.write(batch),
                Next::Idle => self.sync_if_due(),
                Next::Closed => {
                    if !self.queue.is_poisoned() {
                        // A clean close syncs everything written, whatever the policy, and
                        // leaves the segment ending at its last record.
                        match self.sync().and_then(|()| self.trim()) {
                            Ok(()) => {
                                self.queue
                                    .complete(self.written, Some(self.durable), Vec::new());
                            }
                            Err(e) => self.queue.poison(e),
                        }
                    }
                    break;
                }
            };
            if let Err(e) = result {
                self.queue.poison(e);
                break;
            }
        }
    }

    fn write(&mut self, batch: Batch) -> Result<()> {
        let Batch {
            bytes,
            first,
            last,
            sync,
        } = batch;
        let mut off = 0;
        let mut lsn = first;
        while off < bytes.len() {
            // The longest run of whole frames that fits the active segment.
            let room = self.options.segment_bytes.saturating_sub(self.len);
            let mut end = off;
            let mut records = 0;
            while end < bytes.len() {
                let frame = frame_len_at(&bytes, end);
                let fresh = self.len == HEADER_LEN as u64 && end == off;
                if ((end - off + frame) as u64) > room && !fresh {
                    break;
                }
                end += frame;
                records += 1;
            }
            if end == off {
                self.rotate(lsn)?;
                continue;
            }
            self.append(&bytes[off..end])?;
            off = end;
            lsn += records;
        }
        self.written = self.written.max(last);
        // Counted once written: a group whose write failed poisons the log and is not counted.
        if !bytes.is_empty() {
            crate::telemetry::group_written("file", last.saturating_sub(first) + 1, bytes.len());
        }
        let sync = sync
            || match self.options.sync_policy {
                SyncPolicy::EveryCommit => true,
                SyncPolicy::Interval(every) => self.last_sync.elapsed() >= every,
                SyncPolicy::Never => false,
            };
        if sync {
            self.sync()?;
        }
        self.queue
            .complete(self.written, sync.then_some(self.durable), bytes);
        Ok(())
    }

    fn append(&mut self, bytes: &[u8]) -> Result<()> {
        let end = self.len + bytes.len() as u64;
        if self.options.preallocate && bytes.len() <= ZERO_FOR && end > self.zeroed {
            // A fresh segment may hold one record larger than the segment size.
            let target = (self.zeroed + ZERO_STEP)
                .min(self.options.segment_bytes)
                .max(end);
            self.zero_fill(target)?;
        }
        let written = self
            .file
            .write_at(self.len, bytes)
            .map_err(|e| Error::io("write", &self.path, e))?;
        if written != bytes.len() {
            return Err(Error::ShortWrite {
                path: self.path.clone(),
                written,
                expected: bytes.len(),
            });
        }
        self.len += bytes.len() as u64;
        self.zeroed = self.zeroed.max(self.len);
        Ok(())
    }

    /// Writes zeros from the end of the file up to `target`.
    fn zero_fill(&mut self, target: u64) -> Result<()> {
        while self.zeroed < target {
            let n = (target - self.zeroed).min(ZEROS.len() as u64) as usize;
            let written = self
                .file
                .write_at(self.zeroed, &ZEROS[..n])
                .map_err(|e| Error::io("write", &self.path, e))?;
            if written != n {
                return Err(Error::ShortWrite {
                    path: self.path.clone(),
                    written,
                    expected: n,
                });
            }
            self.zeroed += n as u64;
        }
        Ok(())
    }

    /// Cuts the zeros after the last record. Not synced: were the cut lost in a crash, recovery
    /// would make it again.
    fn trim(&mut self) -> Result<()> {
        if self.zeroed > self.len {
            self.file
                .truncate(self.len)
                .map_err(|e| Error::io("truncate", &self.path, e))?;
            self.zeroed = self.len;
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        if self.durable < self.written {
            // Never retried after a failure: the kernel may have dropped the dirty pages, so a
            // later "successful" fsync would prove nothing. The caller poisons the log.
            let start = Instant::now();
            self.file
                .sync_data()
                .map_err(|e| Error::io("sync", &self.path, e))?;
            self.sync_cost = start.elapsed();
            crate::telemetry::synced("file", self.sync_cost);
            self.durable = self.written;
        }
        self.last_sync = Instant::now();
        Ok(())
    }

    fn sync_if_due(&mut self) -> Result<()> {
        if let SyncPolicy::Interval(every) = self.options.sync_policy
            && self.written > self.durable
            && self.last_sync.elapsed() >= every
        {
            self.sync()?;
            self.queue
                .complete(self.written, Some(self.durable), Vec::new());
        }
        Ok(())
    }

    /// Closes the active segment (synced, so only the last segment can ever have a torn tail)
    /// and starts the one whose first record is `base`.
    fn rotate(&mut self, base: Lsn) -> Result<()> {
        self.written = self.written.max(base - 1);
        self.sync()?;
        self.queue
            .complete(self.written, Some(self.durable), Vec::new());
        self.trim()?;
        let (seg, file) = segment::create(
            self.io.as_ref(),
            &self.dir,
            base,
            super::recovery::preallocation(&self.options),
        )?;
        self.path = seg.path.clone();
        self.file = file;
        self.len = HEADER_LEN as u64;
        self.zeroed = self.len;
        match self.segments.lock() {
            Ok(mut list) => list.push(seg),
            Err(poisoned) => poisoned.into_inner().push(seg),
        }
        Ok(())
    }
}

/// The length of the frame at `at` in a batch the queue built (so its header is intact).
fn frame_len_at(bytes: &[u8], at: usize) -> usize {
    let mut len = [0u8; 4];
    len.copy_from_slice(&bytes[at..at + 4]);
    format::frame_len(u32::from_le_bytes(len) as usize)
}
