//! The crate's typed errors and the [`ErrorKind`] that tells a caller what to do about one.

use std::path::PathBuf;
use std::sync::Arc;

use crate::Lsn;

/// A result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a caller should do about an [`Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Transient: the same call may succeed if retried (e.g. a read that hit a network error).
    Retry,
    /// The caller's input or options are wrong; retrying the same call fails the same way.
    BadInput,
    /// The log cannot continue: reopen it (and run recovery) or restore it.
    Fatal,
    /// The log is damaged and the recovery mode does not allow going on: reopening fails the
    /// same way. Restore it, or open it with a mode that accepts the loss
    /// ([`crate::RecoveryMode::PointInTime`], [`crate::RecoveryMode::SkipCorrupt`]).
    Corrupt,
}

/// Everything that can go wrong in the write-ahead log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O call failed.
    #[error("{op} {path:?}: {source}")]
    Io {
        /// The operation that failed (`append`, `sync`, `open`, ...).
        op: &'static str,
        /// The file or directory it was applied to.
        path: PathBuf,
        /// The error the operating system returned.
        #[source]
        source: std::io::Error,
    },
    /// A write stored fewer bytes than it was given (the rest of the record is not on disk).
    #[error("short write to {path:?}: {written} of {expected} bytes")]
    ShortWrite {
        /// The file written to.
        path: PathBuf,
        /// Bytes the write reported as stored.
        written: usize,
        /// Bytes it was asked to store.
        expected: usize,
    },
    /// An object-store request failed.
    #[cfg(not(loom))]
    #[error("object store {op} {path}: {source}")]
    ObjectStore {
        /// The request that failed (`put`, `get`, `list`, `delete`).
        op: &'static str,
        /// The object or prefix it was applied to.
        path: String,
        /// The error `object_store` returned.
        #[source]
        source: object_store::Error,
    },
    /// A record is larger than the configured limit ([`crate::WalOptions::max_record_bytes`]).
    #[error("record of {len} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge {
        /// The payload length that was offered.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// An LSN was asked for that the log has not assigned yet.
    #[error("LSN {lsn} has not been assigned (the last assigned LSN is {last})")]
    LsnOutOfRange {
        /// The LSN asked for.
        lsn: Lsn,
        /// The last LSN the log has assigned (0 if none).
        last: Lsn,
    },
    /// The options given to `open` are inconsistent.
    #[error("invalid WAL options: {0}")]
    InvalidOptions(String),
    /// The log is damaged and the recovery mode does not allow going on.
    #[error("WAL corruption: {0}")]
    Corruption(crate::Damage),
    /// A write or sync failed earlier, so the log refuses work until it is reopened: a write
    /// whose sync failed is never acknowledged and never retried on the same handle.
    #[error("WAL is poisoned by an earlier failure (reopen it to recover): {cause}")]
    Poisoned {
        /// The failure that poisoned the log.
        #[source]
        cause: Arc<Error>,
    },
    /// Another writer already created the object for this LSN: this writer is fenced out.
    #[error("fenced: another writer already wrote LSN {lsn} ({object})")]
    Fenced {
        /// The first LSN of the batch that could not be written.
        lsn: Lsn,
        /// The object that already exists.
        object: String,
    },
    /// Another handle (this process or another) has the local log in this directory open.
    #[error("the WAL in {dir:?} is open elsewhere (its LOCK file is held)")]
    Locked {
        /// The log's directory.
        dir: PathBuf,
    },
    /// The log was closed; no further appends are accepted.
    #[error("WAL is closed")]
    Closed,
    /// The buffer stayed full for [`crate::WalOptions::max_buffer_wait`]: the storage is not
    /// keeping up. The record was not written and took no LSN; the log goes on.
    #[error(
        "the WAL's buffer of {bytes} bytes stayed full for {waited:?}; the record was not written"
    )]
    BufferFull {
        /// The buffer's limit ([`crate::WalOptions::max_buffered_bytes`]).
        bytes: usize,
        /// How long the append waited.
        waited: std::time::Duration,
    },
}

impl Error {
    /// Whether to retry, fix the input, or reopen the log.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Io { .. } | Error::BufferFull { .. } => ErrorKind::Retry,
            #[cfg(not(loom))]
            Error::ObjectStore { source, .. } => object_store_kind(source),
            Error::RecordTooLarge { .. }
            | Error::LsnOutOfRange { .. }
            | Error::InvalidOptions(_) => ErrorKind::BadInput,
            Error::Corruption(_) => ErrorKind::Corrupt,
            Error::ShortWrite { .. }
            | Error::Poisoned { .. }
            | Error::Fenced { .. }
            | Error::Locked { .. }
            | Error::Closed => ErrorKind::Fatal,
        }
    }

    /// Whether another writer's object stood in the way ([`Error::Fenced`]), directly or as
    /// the cause that poisoned the log.
    pub fn is_fenced(&self) -> bool {
        match self {
            Error::Fenced { .. } => true,
            Error::Poisoned { cause } => cause.is_fenced(),
            _ => false,
        }
    }

    /// Builds an [`Error::Io`].
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// What to do about a store's error: a refusal that another attempt would meet again (no
/// permission, no credentials, a request the store cannot serve) is fatal, a bad prefix or
/// option the caller's; everything else (network, server, timeouts, and objects found gone or
/// changed mid-read) may pass. (Until the thirty-first session every store error was `Retry`:
/// an open refused for bad credentials looked worth retrying for ever.)
#[cfg(not(loom))]
fn object_store_kind(err: &object_store::Error) -> ErrorKind {
    match err {
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. }
        | object_store::Error::NotImplemented { .. }
        | object_store::Error::NotSupported { .. } => ErrorKind::Fatal,
        object_store::Error::UnknownConfigurationKey { .. }
        | object_store::Error::InvalidPath { .. } => ErrorKind::BadInput,
        _ => ErrorKind::Retry,
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn store(source: object_store::Error) -> Error {
        Error::ObjectStore {
            op: "put",
            path: "wal/1.wal".to_owned(),
            source,
        }
    }

    #[test]
    fn a_store_refusal_is_not_worth_retrying() {
        let denied = store(object_store::Error::PermissionDenied {
            path: "x".to_owned(),
            source: "403".into(),
        });
        assert_eq!(denied.kind(), ErrorKind::Fatal);
        let unsupported = store(object_store::Error::NotImplemented {
            operation: "put with create-if-absent".to_owned(),
            implementer: "store".to_owned(),
        });
        assert_eq!(unsupported.kind(), ErrorKind::Fatal);
        let passing = store(object_store::Error::Generic {
            store: "s3",
            source: "503 slow down".into(),
        });
        assert_eq!(passing.kind(), ErrorKind::Retry);
        let damaged = Error::Corruption(crate::Damage {
            location: "wal/1.wal".to_owned(),
            offset: 0,
            len: 1,
            kind: crate::DamageKind::Checksum,
        });
        assert_eq!(damaged.kind(), ErrorKind::Corrupt);
    }
}
