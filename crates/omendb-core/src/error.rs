//! What a caller should do about an error, shared by every error type of the crate.

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
