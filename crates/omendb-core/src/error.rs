//! The engine's errors, and what a caller should do about each ([`ErrorKind`]).

use std::sync::Arc;

/// What a caller should do about an error.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The input was wrong (bad argument, unsorted keys, mismatched schema): fix it and call again.
    BadInput,
    /// Stored data is damaged or unreadable: retrying the same call will not help; rebuild it from
    /// its source (an index from its keys) or restore it.
    Corrupt,
    /// A transient condition: the same call may succeed later.
    Retry,
    /// The component cannot go on (for example after an I/O error it could not recover from):
    /// reopen it.
    Fatal,
}

/// An engine error. Bad input never changes the database; see `docs/failure-modes.md`.
#[non_exhaustive]
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// No table has this name.
    #[error("no table named {0:?}")]
    UnknownTable(String),
    /// A table of this name exists already.
    #[error("a table named {0:?} exists already")]
    TableExists(String),
    /// A table definition is not valid (name, key type or value columns).
    #[error("invalid table definition: {0}")]
    InvalidTable(String),
    /// Rows do not match their table's columns.
    #[error("schema mismatch: {0}")]
    SchemaMismatch(String),
    /// A null where the column does not allow one.
    #[error("column {column:?} does not allow nulls")]
    NullInNonNullable {
        /// The column.
        column: String,
    },
    /// A key of the wrong type for its table.
    #[error(transparent)]
    KeyType(#[from] crate::key::KeyMismatch),
    /// A row or batch larger than the configured limit.
    #[error("{what} of {bytes} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// What was too large (a row, a batch).
        what: &'static str,
        /// Its size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// Any other bad argument.
    #[error("bad input: {0}")]
    BadInput(String),
    /// Another transaction committed a write to a key this one wrote (or, when serializable,
    /// read) after this one began: retry the transaction.
    #[error("conflict on table {table:?}: a key was written by a transaction that committed first")]
    Conflict {
        /// The table of the conflicting key.
        table: String,
    },
    /// Writers waited for flushes to catch up and the bound ran out: retry later.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// A write or flush failed with an I/O error earlier; writes are refused until reopen.
    #[error("the database refuses writes after an earlier failure (reopen it): {0}")]
    Poisoned(Arc<Error>),
    /// The database was closed.
    #[error("the database is closed")]
    Closed,
    /// A change stream position the log no longer holds (truncated after a flush, or skipped as
    /// damaged by a `SkipCorrupt` open). Resuming at `oldest` would skip the changes between:
    /// copy a snapshot and stream from the LSN after it instead.
    #[error("changes from LSN {requested} are gone; the next the log holds is {oldest}")]
    ChangesGone {
        /// The position asked for.
        requested: u64,
        /// The next position the log holds after it.
        oldest: u64,
    },
    /// Stored data is damaged or inconsistent.
    #[error("corrupt: {0}")]
    Corrupt(String),
    /// The write-ahead log failed.
    #[error(transparent)]
    Wal(Arc<omendb_wal::Error>),
    /// A segment, manifest or backend failed.
    #[error(transparent)]
    Storage(Arc<omendb_storage::Error>),
    /// An Arrow operation on stored or engine-built columns failed: stored columns that
    /// disagree with their table, or an engine bug. Never the caller's input (rows are checked
    /// against their table before any Arrow operation), so not `BadInput`.
    #[error(transparent)]
    Arrow(Arc<arrow_schema::ArrowError>),
}

impl From<omendb_storage::Error> for Error {
    fn from(err: omendb_storage::Error) -> Self {
        Error::Storage(Arc::new(err))
    }
}

impl From<omendb_wal::Error> for Error {
    fn from(err: omendb_wal::Error) -> Self {
        Error::Wal(Arc::new(err))
    }
}

impl From<crate::index::IndexError> for Error {
    fn from(err: crate::index::IndexError) -> Self {
        Error::Corrupt(format!("segment index: {err}"))
    }
}

impl From<arrow_schema::ArrowError> for Error {
    fn from(err: arrow_schema::ArrowError) -> Self {
        Error::Arrow(Arc::new(err))
    }
}

impl Error {
    /// What the caller should do about this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::UnknownTable(_)
            | Error::TableExists(_)
            | Error::InvalidTable(_)
            | Error::SchemaMismatch(_)
            | Error::NullInNonNullable { .. }
            | Error::KeyType(_)
            | Error::TooLarge { .. }
            | Error::BadInput(_)
            | Error::ChangesGone { .. } => ErrorKind::BadInput,
            Error::Conflict { .. } | Error::Overloaded(_) => ErrorKind::Retry,
            Error::Corrupt(_) => ErrorKind::Corrupt,
            Error::Poisoned(_) | Error::Closed => ErrorKind::Fatal,
            Error::Wal(err) => match err.kind() {
                omendb_wal::ErrorKind::BadInput => ErrorKind::BadInput,
                omendb_wal::ErrorKind::Retry => ErrorKind::Retry,
                omendb_wal::ErrorKind::Corrupt => ErrorKind::Corrupt,
                _ => ErrorKind::Fatal,
            },
            Error::Storage(err) => match err.kind() {
                omendb_storage::ErrorKind::BadInput => ErrorKind::BadInput,
                omendb_storage::ErrorKind::Corrupt => ErrorKind::Corrupt,
                omendb_storage::ErrorKind::Retry => ErrorKind::Retry,
                _ => ErrorKind::Fatal,
            },
            Error::Arrow(_) => ErrorKind::Corrupt,
        }
    }
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
