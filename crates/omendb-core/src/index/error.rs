//! Errors of building, decoding and binding a learned index.

use super::KeySet;
use crate::ErrorKind;

/// Why a model could not be built, decoded or bound to a key array.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    /// The keys given to a builder are not sorted: `keys[at - 1] > keys[at]`.
    #[error("keys are not sorted: key at position {at} is smaller than the one before it")]
    Unsorted {
        /// Position of the first key smaller than its predecessor.
        at: usize,
    },
    /// More keys than a learned model can address.
    #[error("{len} keys exceed the learned index's limit of {max}")]
    TooManyKeys {
        /// Number of keys given.
        len: usize,
        /// The limit, [`super::MAX_KEYS`].
        max: usize,
    },
    /// A model was bound to a key array other than the one it was trained on.
    #[error("index was trained on {expected:?} but the keys are {found:?}")]
    KeysMismatch {
        /// The key array the model describes.
        expected: KeySet,
        /// The key array it was given.
        found: KeySet,
    },
    /// The serialized bytes end before the structure they describe does.
    #[error("serialized index is truncated: {needed} bytes needed, {available} available")]
    Truncated {
        /// Bytes the structure needs.
        needed: usize,
        /// Bytes that were there.
        available: usize,
    },
    /// The serialized bytes fail their checksum, magic number or structural checks.
    #[error("serialized index is corrupt: {reason}")]
    Corrupt {
        /// What check failed.
        reason: String,
    },
    /// The serialized bytes were written by a format version this build does not read.
    #[error("serialized index has format version {found}; this build reads version {supported}")]
    UnsupportedVersion {
        /// The version in the bytes.
        found: u16,
        /// The version this build reads and writes.
        supported: u16,
    },
}

impl IndexError {
    /// What a caller should do about this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            IndexError::Unsorted { .. }
            | IndexError::TooManyKeys { .. }
            | IndexError::KeysMismatch { .. } => ErrorKind::BadInput,
            IndexError::Truncated { .. }
            | IndexError::Corrupt { .. }
            | IndexError::UnsupportedVersion { .. } => ErrorKind::Corrupt,
        }
    }

    pub(crate) fn corrupt(reason: impl Into<String>) -> Self {
        IndexError::Corrupt {
            reason: reason.into(),
        }
    }
}
