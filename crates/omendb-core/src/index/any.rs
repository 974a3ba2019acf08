//! The chooser: which member of the family a key array gets, and the enum the engine stores.

use std::sync::atomic::{AtomicBool, Ordering};

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

/// Key sets from this size on train the chooser's two candidates on two threads; below it a
/// thread would cost more than it saves.
const PARALLEL_KEYS: usize = 1 << 19;

impl AnyIndex {
    /// Builds the index `policy` asks for over the sorted `keys`.
    pub fn build(keys: &[u64], policy: &IndexPolicy) -> Result<Self, IndexError> {
        let budget = policy.budget_bytes(keys.len());
        match policy.kind {
            // A forced kind above what a learned model can address gets what `Auto` gets: a
            // segment of that many rows is still stored, searched by bisection.
            _ if keys.len() > MAX_KEYS => Ok(AnyIndex::BinarySearch(BinarySearch::build(keys))),
            KindChoice::BinarySearch => Ok(AnyIndex::BinarySearch(BinarySearch::build(keys))),
            KindChoice::Rmi => Ok(AnyIndex::Rmi(Rmi::build(keys, budget)?)),
            KindChoice::Pla => Ok(AnyIndex::Pla(Pla::build(keys, budget)?)),
            KindChoice::Auto => Self::choose(keys, budget),
        }
    }

    /// The member with the smallest expected search cost among those within `budget`.
    fn choose(keys: &[u64], budget: usize) -> Result<Self, IndexError> {
        Self::choose_with(keys, budget, keys.len() >= PARALLEL_KEYS)
    }

    /// [`Self::choose`], training the candidates on two threads if `parallel`.
    /// [`Self::build`] took arrays above [`MAX_KEYS`] to binary search already.
    fn choose_with(keys: &[u64], budget: usize, parallel: bool) -> Result<Self, IndexError> {
        let mut best = AnyIndex::BinarySearch(BinarySearch::build(keys));
        let mut best_cost = best.stats().expected_cost;
        // An RMI at its floor cost beats any PLA (whose floor is a model read higher): such an RMI
        // stops the PLA's training.
        let at_floor = |rmi: &Rmi| rmi.stats().expected_cost < FLOOR_COST + 0.1;
        let (rmi, pla) = if parallel {
            // The two trainings are passes over the keys that share nothing: the PLA's runs on a
            // second thread, so the choice takes about as long as the slower member alone.
            let stop = AtomicBool::new(false);
            let train_pla = || Pla::build_unless(keys, budget, &|| stop.load(Ordering::Relaxed));
            std::thread::scope(|scope| {
                // A thread the OS refuses (a thread or memory limit) is not an error: the PLA
                // then trains on this thread after the RMI.
                let pla = std::thread::Builder::new()
                    .name("omendb-index-pla".into())
                    .spawn_scoped(scope, train_pla)
                    .ok();
                let rmi = Rmi::build(keys, budget);
                if rmi.as_ref().is_ok_and(at_floor) {
                    stop.store(true, Ordering::Relaxed);
                }
                let pla = match pla {
                    // A panic in the PLA's training is re-raised here, as if it had run on this
                    // thread.
                    Some(pla) => pla
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                    None => train_pla(),
                };
                Ok::<_, IndexError>((rmi?, pla?))
            })?
        } else {
            let rmi = Rmi::build(keys, budget)?;
            let pla = if at_floor(&rmi) {
                None
            } else {
                Some(Pla::build(keys, budget)?)
            };
            (rmi, pla)
        };
        let mut candidates = vec![AnyIndex::Rmi(rmi)];
        candidates.extend(pla.map(AnyIndex::Pla));
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
    fn prefetch(&self, key: u64) {
        match self {
            AnyIndex::BinarySearch(i) => i.prefetch(key),
            AnyIndex::Rmi(i) => i.prefetch(key),
            AnyIndex::Pla(i) => i.prefetch(key),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Above [`PARALLEL_KEYS`]: a sequence (the RMI reaches its floor and stops the PLA), random
    /// keys, and clusters.
    fn key_sets() -> Vec<Vec<u64>> {
        let n = (PARALLEL_KEYS + PARALLEL_KEYS / 8) as u64;
        let seq: Vec<u64> = (0..n).map(|k| k * 7 + 3).collect();
        let mut x = 42u64;
        let mut random: Vec<u64> = (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                x >> 8
            })
            .collect();
        random.sort_unstable();
        let clustered: Vec<u64> = (0..n)
            .map(|k| (k / 1000) * 1_000_000_000 + (k % 1000) * (k / 1000 % 7 + 1))
            .collect();
        vec![seq, random, clustered]
    }

    #[test]
    fn training_on_two_threads_chooses_what_one_thread_chooses() {
        for keys in key_sets() {
            let budget = IndexPolicy::default().budget_bytes(keys.len());
            let one = AnyIndex::choose_with(&keys, budget, false).unwrap();
            let two = AnyIndex::choose_with(&keys, budget, true).unwrap();
            assert_eq!(one, two);
            assert_eq!(AnyIndex::choose(&keys, budget).unwrap(), one);
        }
        for keys in [vec![], vec![5], vec![1, 1, 1, u64::MAX]] {
            let one = AnyIndex::choose_with(&keys, 1 << 10, false).unwrap();
            assert_eq!(AnyIndex::choose_with(&keys, 1 << 10, true).unwrap(), one);
        }
        assert!(matches!(
            AnyIndex::choose_with(&[3, 2], 1 << 10, true),
            Err(IndexError::Unsorted { at: 1 })
        ));
    }

    #[test]
    fn a_stopped_pla_training_gives_nothing_and_an_unstopped_one_the_built_model() {
        let keys: Vec<u64> = (0..10_000u64).map(|k| k * k).collect();
        assert_eq!(Pla::build_unless(&keys, 1 << 16, &|| true).unwrap(), None);
        assert_eq!(
            Pla::build_unless(&keys, 1 << 16, &|| false).unwrap(),
            Some(Pla::build(&keys, 1 << 16).unwrap())
        );
        // A budget no ε fits still gets the widened model.
        assert_eq!(
            Pla::build_unless(&keys, 0, &|| false).unwrap(),
            Some(Pla::build(&keys, 0).unwrap())
        );
    }
}
