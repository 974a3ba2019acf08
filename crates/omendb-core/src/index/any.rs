//! The chooser: which member of the family a key array gets, and the enum the engine stores.

use super::codec;
use super::rmi::FLOOR_COST;
use super::{
    BinarySearch, IndexError, IndexKind, IndexStats, KeySet, LearnedIndex, MAX_KEYS, Pla, Rmi,
    Window,
};

/// Which member of the family to build.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KindChoice {
    /// Build every learned member within the budget and keep the one with the smallest expected
    /// search cost ([`IndexStats::expected_cost`]); binary search if none beats it.
    #[default]
    Auto,
    /// Always an [`Rmi`].
    Rmi,
    /// Always a [`Pla`].
    Pla,
    /// Always [`BinarySearch`].
    BinarySearch,
}

/// How a key array's index is chosen and how much memory it may take.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IndexPolicy {
    /// Which member to build.
    pub kind: KindChoice,
    /// Memory budget as a fraction of the key array's bytes (8 per key). Default 0.02 (2%).
    pub memory_fraction: f64,
    /// Budget floor in bytes, so that small arrays still get a useful model. Default 4 KiB.
    pub min_bytes: usize,
}

impl Default for IndexPolicy {
    fn default() -> Self {
        IndexPolicy {
            kind: KindChoice::Auto,
            memory_fraction: 0.02,
            min_bytes: 4096,
        }
    }
}

impl IndexPolicy {
    /// The memory budget, in bytes, for an index over `len` keys.
    pub fn budget_bytes(&self, len: usize) -> usize {
        let fraction = if self.memory_fraction.is_finite() {
            self.memory_fraction.max(0.0)
        } else {
            0.0
        };
        ((len as f64 * 8.0 * fraction) as usize).max(self.min_bytes)
    }
}

/// A trained member of the family, as the engine keeps it with a segment.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum AnyIndex {
    /// See [`BinarySearch`].
    BinarySearch(BinarySearch),
    /// See [`Rmi`].
    Rmi(Rmi),
    /// See [`Pla`].
    Pla(Pla),
}

impl AnyIndex {
    /// Builds the index `policy` asks for over the sorted `keys`.
    pub fn build(keys: &[u64], policy: &IndexPolicy) -> Result<Self, IndexError> {
        let budget = policy.budget_bytes(keys.len());
        match policy.kind {
            KindChoice::BinarySearch => Ok(AnyIndex::BinarySearch(BinarySearch::build(keys))),
            KindChoice::Rmi => Ok(AnyIndex::Rmi(Rmi::build(keys, budget)?)),
            KindChoice::Pla => Ok(AnyIndex::Pla(Pla::build(keys, budget)?)),
            KindChoice::Auto => Self::choose(keys, budget),
        }
    }

    /// The member with the smallest expected search cost among those within `budget`.
    fn choose(keys: &[u64], budget: usize) -> Result<Self, IndexError> {
        if keys.len() > MAX_KEYS {
            return Ok(AnyIndex::BinarySearch(BinarySearch::build(keys)));
        }
        let mut best = AnyIndex::BinarySearch(BinarySearch::build(keys));
        let mut best_cost = best.stats().expected_cost;
        let rmi = Rmi::build(keys, budget)?;
        // An RMI at its floor cost beats any PLA (whose floor is one read higher): skip training
        // one.
        let rmi_at_floor = rmi.stats().expected_cost < FLOOR_COST + 0.1;
        let mut candidates = vec![AnyIndex::Rmi(rmi)];
        if !rmi_at_floor {
            candidates.push(AnyIndex::Pla(Pla::build(keys, budget)?));
        }
        for candidate in candidates {
            let stats = candidate.stats();
            if stats.size_bytes <= budget && stats.expected_cost < best_cost {
                best_cost = stats.expected_cost;
                best = candidate;
            }
        }
        Ok(best)
    }

    /// Reads a model written by [`LearnedIndex::encode`]. Truncated, corrupt or unknown bytes
    /// give an error, never a model that could answer wrongly or panic.
    pub fn decode(bytes: &[u8]) -> Result<Self, IndexError> {
        let mut frame = codec::decode(bytes)?;
        if frame.keys.len > MAX_KEYS as u64 && frame.kind != IndexKind::BinarySearch {
            return Err(IndexError::corrupt(
                "key count beyond the learned index's limit",
            ));
        }
        let index = match frame.kind {
            IndexKind::BinarySearch => {
                frame.payload.finish()?;
                AnyIndex::BinarySearch(BinarySearch::from_key_set(frame.keys))
            }
            IndexKind::Rmi => AnyIndex::Rmi(Rmi::decode_payload(frame.keys, &mut frame.payload)?),
            IndexKind::Pla => AnyIndex::Pla(Pla::decode_payload(frame.keys, &mut frame.payload)?),
        };
        Ok(index)
    }

    /// The member as a trait object, for code that does not care which it is.
    pub fn as_dyn(&self) -> &dyn LearnedIndex {
        match self {
            AnyIndex::BinarySearch(i) => i,
            AnyIndex::Rmi(i) => i,
            AnyIndex::Pla(i) => i,
        }
    }
}

impl LearnedIndex for AnyIndex {
    fn kind(&self) -> IndexKind {
        self.as_dyn().kind()
    }

    fn key_set(&self) -> KeySet {
        self.as_dyn().key_set()
    }

    #[inline]
    fn window(&self, key: u64) -> Window {
        match self {
            AnyIndex::BinarySearch(i) => i.window(key),
            AnyIndex::Rmi(i) => i.window(key),
            AnyIndex::Pla(i) => i.window(key),
        }
    }

    #[inline(always)]
    fn lower_bound(&self, keys: &[u64], key: u64) -> usize {
        match self {
            AnyIndex::BinarySearch(i) => i.lower_bound(keys, key),
            AnyIndex::Rmi(i) => i.lower_bound(keys, key),
            AnyIndex::Pla(i) => i.lower_bound(keys, key),
        }
    }

    fn lower_bound_batch(&self, keys: &[u64], queries: &[u64], out: &mut Vec<usize>) {
        self.as_dyn().lower_bound_batch(keys, queries, out);
    }

    fn stats(&self) -> IndexStats {
        self.as_dyn().stats()
    }

    fn encode_payload(&self, out: &mut Vec<u8>) {
        self.as_dyn().encode_payload(out);
    }
}
