//! The one thread that owns the local log's active segment: it takes group-commit batches from
//! the queue, writes each with one append (split only at a segment boundary), syncs by policy,
//! rotates segments, and poisons the queue at the first failure.

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
    /// Bytes in the active segment.
    pub(crate) len: u64,
    /// Last LSN written and last LSN synced.
    pub(crate) written: Lsn,
    pub(crate) durable: Lsn,
    pub(crate) last_sync: Instant,
    /// How long the last sync took: the most the next batch waits to gather appenders.
    pub(crate) sync_cost: Duration,
}

/// Upper bound of the adaptive group-commit wait, whatever a sync costs.
const MAX_GATHER: Duration = Duration::from_millis(2);

impl Writer {
    /// Runs until the queue closes (after a final sync) or a failure poisons it.
    pub(crate) fn run(mut self) {
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
                        // A clean close syncs everything written, whatever the policy.
                        match self.sync() {
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
        self.queue.finish();
    }

    fn write(&mut self, batch: Batch) -> Result<()> {
        let Batch {
            bytes,
            first,
            last,
            sync,
        } = batch;
        if !bytes.is_empty() {
            crate::telemetry::group_written("file", last.saturating_sub(first) + 1, bytes.len());
        }
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
        let written = self
            .file
            .append(bytes)
            .map_err(|e| Error::io("append", &self.path, e))?;
        if written != bytes.len() {
            return Err(Error::ShortWrite {
                path: self.path.clone(),
                written,
                expected: bytes.len(),
            });
        }
        self.len += bytes.len() as u64;
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
        let (seg, file) = segment::create(
            self.io.as_ref(),
            &self.dir,
            base,
            super::recovery::preallocation(&self.options),
        )?;
        self.path = seg.path.clone();
        self.file = file;
        self.len = HEADER_LEN as u64;
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
