//! The [`Wal`] trait: what the engine needs from a write-ahead log, whatever stores it.

use std::fmt;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;

use crate::{AppendOptions, Lsn, RecoveryReport, Result, WalStats};

/// One record read back from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The LSN the append returned.
    pub lsn: Lsn,
    /// The bytes appended.
    pub payload: Bytes,
}

/// A write-ahead log: ordered, numbered, durable batches of opaque bytes.
///
/// Every append gets the next LSN (1, 2, 3, ... without gaps). An LSN is never reused once its
/// record is durable; one whose record a crash lost (a `Buffered` append not yet synced) goes to
/// the next append after the reopen. Appends are
/// group-committed: concurrent appenders share one write and one sync. After a write or sync
/// fails the log is poisoned and refuses appends until it is reopened, so an append that returned
/// `Ok` under [`crate::Durability::Durable`] is on stable storage.
///
/// The async methods never block on I/O except where noted on the implementation; the
/// `*_blocking` twins are for callers on plain threads.
pub trait Wal: Send + Sync + fmt::Debug {
    /// Appends one record and returns its LSN, once it is as durable as `options` asks.
    ///
    /// An error of kind [`crate::ErrorKind::BadInput`], or [`crate::Error::BufferFull`], took no
    /// LSN and wrote nothing; after any other error the record may have taken one, and the log
    /// is poisoned. An implementation must keep to this: the engine treats the first as a
    /// refused write and goes on, and an LSN taken but never applied would hold back every
    /// later write's visibility.
    fn append<'a>(
        &'a self,
        payload: &'a [u8],
        options: AppendOptions,
    ) -> BoxFuture<'a, Result<Lsn>>;

    /// [`Wal::append`] for a plain thread: blocks instead of awaiting.
    fn append_blocking(&self, payload: &[u8], options: AppendOptions) -> Result<Lsn>;

    /// Appends one record under [`crate::Durability::Buffered`] on the caller's thread, for a log
    /// whose buffered appends need no future: `Some` with what [`Wal::append`] would return, or
    /// `None` (nothing appended; use `append`) for a log that would wait for something else. Like
    /// `append`, it waits only while the log's buffer is full. A caller that must not leave an
    /// append half done (an LSN taken and then dropped by a cancelled future) uses it to append
    /// and act on the LSN without an await in between, and so without a task of its own.
    fn append_buffered_now(&self, payload: &[u8]) -> Option<Result<Lsn>> {
        let _ = payload;
        None
    }

    /// Waits until every record up to `lsn` is durable, syncing if nobody has asked yet.
    fn wait_durable(&self, lsn: Lsn) -> BoxFuture<'_, Result<()>>;

    /// [`Wal::wait_durable`] for a plain thread.
    fn wait_durable_blocking(&self, lsn: Lsn) -> Result<()>;

    /// The records with LSN `from` and above that were appended before the call, in LSN order;
    /// on a log a failure poisoned (or one closed), those written before it. Records already
    /// removed by [`Wal::truncate_before`] are not returned.
    fn read_from(&self, from: Lsn) -> BoxStream<'_, Result<Record>>;

    /// Drops everything before `lsn` that can be dropped as a whole (whole segments or objects);
    /// records before `lsn` that share storage with later ones may still be read.
    fn truncate_before(&self, lsn: Lsn) -> BoxFuture<'_, Result<()>>;

    /// The last durable LSN, if any record is durable.
    fn last_durable_lsn(&self) -> Option<Lsn>;

    /// The last LSN assigned to an append, if any.
    fn last_lsn(&self) -> Option<Lsn>;

    /// What recovery found when the log was opened.
    fn recovery_report(&self) -> &RecoveryReport;

    /// Counters since the log was opened.
    fn stats(&self) -> WalStats;

    /// Stops accepting appends, writes and syncs everything queued, and stops the writer.
    fn close(&self) -> Result<()>;

    /// Makes the log this writer's alone from here on, for a log that cannot shut out other
    /// writers when it opens: a writer that had it before (a process presumed dead, whose last
    /// upload may still be in flight) can add nothing after this returns, so the log read at
    /// open stays the whole log before this writer's records. An object-store log does it with
    /// one durable record with an empty payload; one that locks its storage while open has
    /// nothing to do. Fails with [`crate::Error::Fenced`] if such an upload landed first:
    /// reopen the log (it then holds that upload) and claim again.
    fn claim(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// `Some(lsn)` unless it is 0, the "no record" LSN.
pub(crate) fn some_lsn(lsn: Lsn) -> Option<Lsn> {
    (lsn > 0).then_some(lsn)
}
