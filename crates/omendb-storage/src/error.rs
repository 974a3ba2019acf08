//! The crate's typed errors and the [`ErrorKind`] that tells a caller what to do about one.

/// A result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a caller should do about an [`Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Transient: the same call may succeed if retried (a network error, a throttled request).
    Retry,
    /// The caller's input or configuration is wrong; the same call fails the same way again.
    BadInput,
    /// A stored object is damaged or not in a format this build reads; restore it from a copy.
    Corrupt,
    /// This handle cannot go on (for example a fenced manifest writer): reopen.
    Fatal,
}

/// Everything that can go wrong in the storage layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A backend URL could not be understood (malformed, unknown scheme, missing bucket).
    #[error("backend URL {url:?}: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A backend option is unknown or has a bad value.
    #[error("backend option {key:?}: {reason}")]
    BadOption {
        /// The option's key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An object-store request failed.
    #[error("object store {op} {path}: {source}")]
    Store {
        /// The request that failed (`put`, `get`, `list`, ...).
        op: &'static str,
        /// The object or prefix it was applied to.
        path: String,
        /// The error `object_store` returned.
        #[source]
        source: object_store::Error,
    },
    /// A stored object is damaged: truncated, failing its checksum, or not the format it claims.
    #[error("corrupt object {object}: {reason}")]
    Corrupt {
        /// The object's path in the store.
        object: String,
        /// What was found wrong.
        reason: String,
    },
    /// A stored object was written by a newer format version than this build reads.
    #[error("object {object} has format version {found}; this build reads up to {supported}")]
    UnsupportedVersion {
        /// The object's path in the store.
        object: String,
        /// The version found in the object.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    /// Input handed to a writer or reader is invalid (unsorted keys, wrong schema, a position
    /// past the end); nothing was written.
    #[error("invalid input: {0}")]
    BadInput(String),
    /// This manifest writer has been fenced: another writer with a newer epoch has opened the
    /// database, and this one may no longer publish manifests or delete objects.
    #[error("manifest writer with epoch {epoch} is fenced by epoch {newer_epoch}")]
    Fenced {
        /// This writer's epoch.
        epoch: u64,
        /// The newer epoch found in the store.
        newer_epoch: u64,
    },
    /// A segment writer whose earlier write or upload failed: what it has uploaded is
    /// incomplete, so it accepts nothing more; abort it and write the segment again.
    #[error("segment writer for {object} failed earlier; abort it and start again")]
    Poisoned {
        /// The segment's path in the store.
        object: String,
    },
    /// A Parquet object could not be written or decoded.
    #[error("parquet {object}: {source}")]
    Parquet {
        /// The object's path in the store.
        object: String,
        /// The error the `parquet` crate returned.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// An Arrow operation failed (a batch that does not match its schema, for example).
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
}

impl Error {
    /// What a caller should do about this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::BadUrl { .. } | Error::BadOption { .. } | Error::BadInput(_) => {
                ErrorKind::BadInput
            }
            // The batches this crate handles are built by its callers' engines or decoded from
            // stored objects, never a user's request: an Arrow failure is damage, not bad input
            // (as BadInput, a segment whose columns disagreed answered a user's read with 400).
            Error::Arrow(_) => ErrorKind::Corrupt,
            Error::Store { source, .. } => store_error_kind(source),
            Error::Corrupt { .. } | Error::UnsupportedVersion { .. } | Error::Parquet { .. } => {
                ErrorKind::Corrupt
            }
            Error::Fenced { .. } | Error::Poisoned { .. } => ErrorKind::Fatal,
        }
    }

    /// Wraps an `object_store` error with the request and path it came from.
    pub fn from_store(op: &'static str, path: impl ToString, source: object_store::Error) -> Self {
        Error::Store {
            op,
            path: path.to_string(),
            source,
        }
    }
}

/// Whether an `object_store` error is worth retrying. `Generic` covers network and server errors
/// (and the I/O errors of local stores); every other variant is a definite answer, and so is a
/// `Generic` one caused by a refusal of the local file system or of OpenDAL (see [`refusal`]).
pub(crate) fn is_transient(err: &object_store::Error) -> bool {
    match err {
        object_store::Error::Generic { source, .. } => refusal(source.as_ref()).is_none(),
        object_store::Error::JoinError { .. } => true,
        _ => false,
    }
}

/// The kind of a refusal that another attempt would meet again, found in `err`'s chain of
/// causes: an I/O error of the local file system (no permission, a read-only file system, a
/// directory where a file should be) or an OpenDAL error that is neither temporary nor
/// persistent-but-passing (permission, bad configuration, an unsupported request). Until the
/// thirty-first session every such error was `Generic`, retried five times and reported as
/// `Retry` (a server answered 503 and went unready over a read-only volume; found by a helper
/// agent's review).
fn refusal(err: &(dyn std::error::Error + 'static)) -> Option<ErrorKind> {
    let mut cause = Some(err);
    while let Some(err) = cause {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as Io;
            match io.kind() {
                Io::PermissionDenied | Io::ReadOnlyFilesystem => return Some(ErrorKind::Fatal),
                Io::IsADirectory | Io::NotADirectory | Io::InvalidFilename => {
                    return Some(ErrorKind::BadInput);
                }
                _ => {}
            }
        }
        if let Some(opendal) = err.downcast_ref::<opendal::Error>() {
            use opendal::ErrorKind as Dal;
            match opendal.kind() {
                Dal::PermissionDenied | Dal::Unsupported => return Some(ErrorKind::Fatal),
                Dal::ConfigInvalid | Dal::IsADirectory | Dal::NotADirectory => {
                    return Some(ErrorKind::BadInput);
                }
                _ => {}
            }
        }
        cause = err.source();
    }
    None
}

fn store_error_kind(err: &object_store::Error) -> ErrorKind {
    if let object_store::Error::Generic { source, .. } = err
        && let Some(kind) = refusal(source.as_ref())
    {
        return kind;
    }
    if is_transient(err) {
        ErrorKind::Retry
    } else {
        match err {
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => ErrorKind::Fatal,
            // Objects are read by the names a manifest or a log listing gave: one that is gone
            // is stored data out of step with its references (deleted by hand, or collected
            // under a reader older than the grace period), not the caller's bad input.
            object_store::Error::NotFound { .. } => ErrorKind::Corrupt,
            // A configuration or a prefix the operator gave.
            object_store::Error::UnknownConfigurationKey { .. }
            | object_store::Error::InvalidPath { .. } => ErrorKind::BadInput,
            // The backend cannot do what the engine needs (a conditional put, say): retrying
            // or another request will not change that.
            object_store::Error::NotImplemented { .. }
            | object_store::Error::NotSupported { .. } => ErrorKind::Fatal,
            // An answer that contradicts what this process knows of the store (an object that
            // exists, or changed, where its references say otherwise); these reached users as
            // 400 `bad_input` for a valid request.
            _ => ErrorKind::Corrupt,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A local file system's refusal inside a `Generic` error is not worth retrying.
    #[test]
    fn a_refusal_of_the_file_system_is_not_transient() {
        let read_only = object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(std::io::Error::from(std::io::ErrorKind::ReadOnlyFilesystem)),
        };
        assert!(!is_transient(&read_only));
        assert_eq!(
            Error::from_store("put", "x", read_only).kind(),
            ErrorKind::Fatal
        );
        let unsupported = object_store::Error::Generic {
            store: "opendal",
            source: Box::new(opendal::Error::new(
                opendal::ErrorKind::Unsupported,
                "no such operation",
            )),
        };
        assert!(!is_transient(&unsupported));
        let network = object_store::Error::Generic {
            store: "S3",
            source: Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
        };
        assert!(is_transient(&network));
        assert_eq!(
            Error::from_store("get", "x", network).kind(),
            ErrorKind::Retry
        );
    }

    #[test]
    fn a_missing_object_is_corrupt_not_bad_input() {
        let missing = Error::from_store(
            "get",
            "db/segments/1/x.parquet",
            object_store::Error::NotFound {
                path: "db/segments/1/x.parquet".to_owned(),
                source: "gone".into(),
            },
        );
        assert_eq!(missing.kind(), ErrorKind::Corrupt);
        let transient = Error::from_store(
            "get",
            "x",
            object_store::Error::Generic {
                store: "s3",
                source: "reset".into(),
            },
        );
        assert_eq!(transient.kind(), ErrorKind::Retry);
    }

    #[test]
    fn only_configuration_errors_of_the_store_are_bad_input() {
        let kind = |source: object_store::Error| Error::from_store("get", "x", source).kind();
        assert_eq!(
            kind(object_store::Error::Precondition {
                path: "x".to_owned(),
                source: "changed".into(),
            }),
            ErrorKind::Corrupt
        );
        assert_eq!(
            kind(object_store::Error::AlreadyExists {
                path: "x".to_owned(),
                source: "there".into(),
            }),
            ErrorKind::Corrupt
        );
        assert_eq!(
            kind(object_store::Error::NotImplemented {
                operation: "put_opts".to_owned(),
                implementer: "test".to_owned(),
            }),
            ErrorKind::Fatal
        );
        assert_eq!(
            kind(object_store::Error::UnknownConfigurationKey {
                store: "s3",
                key: "colour".to_owned(),
            }),
            ErrorKind::BadInput
        );
        let arrow = Error::Arrow(arrow_schema::ArrowError::SchemaError("columns".to_owned()));
        assert_eq!(arrow.kind(), ErrorKind::Corrupt);
    }
}
