//! Binary search: the member of the family with no model, correct for any key array.

use super::{IndexKind, IndexStats, KeySet, LearnedIndex, Window, search_cost};

/// The window is always the whole key array; the lookup is a plain bisection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinarySearch {
    keys: KeySet,
}

impl BinarySearch {
    /// A "model" of `keys`. It has no size limit and no sortedness check of its own: an unsorted
    /// array gives the same answers `partition_point` gives on it.
    pub fn build(keys: &[u64]) -> Self {
        BinarySearch {
            keys: KeySet::of(keys),
        }
    }

    pub(crate) fn from_key_set(keys: KeySet) -> Self {
        BinarySearch { keys }
    }
}

impl LearnedIndex for BinarySearch {
    fn kind(&self) -> IndexKind {
        IndexKind::BinarySearch
    }

    fn key_set(&self) -> KeySet {
        self.keys
    }

    #[inline]
    fn window(&self, _key: u64) -> Window {
        Window {
            lo: 0,
            hi: usize::try_from(self.keys.len).unwrap_or(usize::MAX),
        }
    }

    #[inline]
    fn lower_bound(&self, keys: &[u64], key: u64) -> usize {
        keys.partition_point(|&k| k < key)
    }

    fn stats(&self) -> IndexStats {
        let n = usize::try_from(self.keys.len).unwrap_or(usize::MAX);
        IndexStats {
            size_bytes: std::mem::size_of::<Self>(),
            mean_window: n as f64,
            max_window: n,
            expected_cost: 1.0 + search_cost(n),
            levels: 0,
        }
    }

    fn encode_payload(&self, _out: &mut Vec<u8>) {}
}
