//! `omendb-wal` — OmenDB's write-ahead log.
//!
//! What makes an acknowledged write survive a crash: batches of opaque bytes are framed (length,
//! CRC32C, LSN, payload), appended to segmented local files or immutable object-store objects,
//! group-committed and recovered under an explicit recovery mode. It depends on no other OmenDB
//! crate and must never learn about tables, keys or indexes, so it can be embedded on its own.
//!
//! - [`Wal`] is the trait the engine uses; [`FileWal`] keeps the log in a local directory and
//!   [`ObjectWal`] in any [`object_store::ObjectStore`].
//! - Every append gets the next [`Lsn`]; concurrent appenders share one write and one sync
//!   (group commit). [`Durability`] says whether an append waits for the sync; [`SyncPolicy`]
//!   says when buffered records are synced.
//! - Opening a log runs recovery in a [`RecoveryMode`] and returns a [`RecoveryReport`].
//! - After a failed write or sync the log is poisoned: every later append fails with
//!   [`Error::Poisoned`] until the log is reopened, and no record whose sync failed is ever
//!   acknowledged as durable.
//! - Local file I/O goes through [`FileIo`] so faults can be injected.
//!
//! The byte formats are in `docs/file-formats.md`; recovery and failure behaviour in
//! `docs/failure-modes.md`; design decisions in `docs/wal.md`.
//!
//! ```
//! # fn main() -> omendb_wal::Result<()> {
//! use omendb_wal::{AppendOptions, FileWal, WalOptions};
//! let dir = tempfile::tempdir().map_err(|e| omendb_wal::Error::InvalidOptions(e.to_string()))?;
//! let wal = FileWal::open(dir.path(), WalOptions::default())?;
//! let lsn = wal.append(b"hello", AppendOptions::DURABLE)?;
//! let records: Vec<_> = wal.reader(1)?.collect::<Result<_, _>>()?;
//! assert_eq!(records[0].lsn, lsn);
//! assert_eq!(&records[0].payload[..], b"hello");
//! # Ok(())
//! # }
//! ```

// Under `--cfg loom` only the queue and what it needs are built; the rest would be dead there.
#![cfg_attr(loom, allow(dead_code))]

mod error;
mod format;
mod group_commit;
mod options;
mod recovery;
mod sync;

#[cfg(not(loom))]
mod file;
#[cfg(not(loom))]
mod io;
#[cfg(not(loom))]
mod object;
#[cfg(not(loom))]
mod replay;
#[cfg(not(loom))]
mod telemetry;
#[cfg(not(loom))]
mod wal;

pub use error::{Error, ErrorKind, Result};
pub use group_commit::WalStats;
pub use options::{AppendOptions, Durability, SyncPolicy, WalOptions};
pub use recovery::{Damage, DamageKind, RecoveryMode, RecoveryReport};

#[cfg(not(loom))]
pub use file::{FileReader, FileWal};
#[cfg(not(loom))]
pub use io::{FileIo, IoFile, StdIo, create_dir_durable};
#[cfg(not(loom))]
pub use object::ObjectWal;
#[cfg(not(loom))]
pub use wal::{Record, Wal};

/// A log sequence number: the position of a record in the log. The first record gets 1, each
/// append the next one; 0 means "no record".
pub type Lsn = u64;
