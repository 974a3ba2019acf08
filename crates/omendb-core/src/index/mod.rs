//! The learned-index family: models that map a `u64` key to a window of positions in a sorted key
//! array that is guaranteed to contain the key's lower bound.
//!
//! Every member answers [`LearnedIndex::lower_bound`] exactly as
//! `keys.partition_point(|&k| k < key)` would, for present and absent keys alike:
//!
//! - [`BinarySearch`] — no model; the window is the whole array. The always-correct baseline.
//! - [`Rmi`] — a two-stage recursive model index: a linear root routes a key to one of many linear
//!   leaves, each trained on exactly the keys routed to it, each storing its own error bound.
//! - [`Pla`] — an ε-bounded piecewise-linear index (PGM-style segments) built in one streaming
//!   pass, its segments found through a floating-point radix table over the keys.
//! - [`AnyIndex`] — whichever of these the chooser ([`AnyIndex::build`]) found has the smallest
//!   expected search cost within the memory budget of an [`IndexPolicy`]; it is what the engine
//!   stores with a segment ([`AnyIndex::encode`], [`AnyIndex::decode`]).
//!
//! Why the answers are exact: every model's prediction is a monotone function of the key, and its
//! error bounds are measured with that same function over every stored key (never sampled, never
//! capped). A monotone prediction that is within bounds at every stored key is within bounds for
//! every key between them. The last-mile search ([`search`]) then also checks the neighbours of a
//! window when the answer lands on its edge, so even a model that disagrees with the keys it is
//! given (a damaged or mismatched one) degrades to a full binary search, never to a wrong answer.
//!
//! The byte format of a serialized model is in `docs/file-formats.md`.
//!
//! ```
//! use omendb_core::index::{AnyIndex, IndexPolicy, LearnedIndex};
//!
//! let keys: Vec<u64> = (0..1_000_000u64).map(|i| i * 7 + i % 3).collect();
//! // RMI, PLA or binary search: the smallest expected search cost within 2% of the key bytes.
//! let index = AnyIndex::build(&keys, &IndexPolicy::default())?;
//! assert_eq!(index.lower_bound(&keys, 700), keys.partition_point(|&k| k < 700));
//!
//! // Store the model with the keys; reopening does not retrain.
//! let reopened = AnyIndex::decode(&index.encode())?;
//! reopened.check_keys(&keys)?;
//!
//! // Many lookups at once overlap their cache misses.
//! let mut positions = Vec::new();
//! reopened.lower_bound_batch(&keys, &[5, 700, 7_000_001], &mut positions);
//! assert_eq!(positions, [1, 100, 1_000_000]);
//! # Ok::<(), omendb_core::index::IndexError>(())
//! ```

mod any;
mod binary;
mod codec;
mod error;
mod pla;
mod rmi;
pub mod search;

pub use any::{AnyIndex, IndexPolicy, KindChoice};
pub use binary::BinarySearch;
pub use error::IndexError;
pub use pla::Pla;
pub use rmi::Rmi;

/// Which member of the family a model is.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IndexKind {
    /// [`BinarySearch`]: no model.
    BinarySearch,
    /// [`Rmi`]: two-stage recursive model index.
    Rmi,
    /// [`Pla`]: ε-bounded piecewise-linear index.
    Pla,
}

impl IndexKind {
    /// The short name used in benchmark rows, `explain` output and metrics.
    pub fn name(self) -> &'static str {
        match self {
            IndexKind::BinarySearch => "binary_search",
            IndexKind::Rmi => "rmi",
            IndexKind::Pla => "pla",
        }
    }
}

impl std::fmt::Display for IndexKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Positions `lo..=hi` of the key array that contain a key's lower bound: the search looks at
/// `keys[lo..hi]` and answers `hi` when all of them are smaller than the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// First candidate position.
    pub lo: usize,
    /// Last candidate position (may equal the number of keys).
    pub hi: usize,
}

impl Window {
    /// Whether `pos` lies inside the window.
    pub fn contains(&self, pos: usize) -> bool {
        self.lo <= pos && pos <= self.hi
    }

    /// Number of keys the last-mile search may look at.
    pub fn len(&self) -> usize {
        self.hi.saturating_sub(self.lo)
    }

    /// Whether the window holds no key to look at (the answer is `lo`).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a model knows about the key array it was trained on, so that it can refuse to be used
/// with another one ([`LearnedIndex::check_keys`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeySet {
    /// Number of keys.
    pub len: u64,
    /// Smallest key (0 for an empty set).
    pub first: u64,
    /// Largest key (0 for an empty set).
    pub last: u64,
}

impl KeySet {
    /// Describes `keys`, which must be sorted.
    pub fn of(keys: &[u64]) -> Self {
        KeySet {
            len: keys.len() as u64,
            first: keys.first().copied().unwrap_or(0),
            last: keys.last().copied().unwrap_or(0),
        }
    }
}

/// Figures that describe a trained model, for the chooser, `explain` and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IndexStats {
    /// Bytes of memory the model occupies (not counting the keys).
    pub size_bytes: usize,
    /// Mean over stored keys of the final search window's length, in keys.
    pub mean_window: f64,
    /// Largest final search window, in keys.
    pub max_window: usize,
    /// Expected cost of one lookup's dependent memory reads, averaged over stored keys, in reads
    /// of the key array: `MODEL_READ` (half a read) per model level whose arrays are read, one
    /// for the keys, and one per bisection step a window needs beyond a counted 16
    /// (`search::SCAN_MAX`) keys.
    /// The chooser minimises this.
    pub expected_cost: f64,
    /// Model levels a lookup walks through (0 for binary search).
    pub levels: usize,
}

/// A model of a sorted `u64` key array that bounds where any key's lower bound lies.
///
/// `keys` passed to the lookup methods must be the array the model was trained on (check it
/// once with [`LearnedIndex::check_keys`]). Given any other array the answers are still exactly
/// `partition_point`'s, only slower, because the search verifies the window's edges.
pub trait LearnedIndex: Send + Sync {
    /// Which member of the family this is.
    fn kind(&self) -> IndexKind;

    /// The key array the model was trained on.
    fn key_set(&self) -> KeySet;

    /// The window that contains `key`'s lower bound in the trained key array.
    fn window(&self, key: u64) -> Window;

    /// Size, window and cost figures of the model.
    fn stats(&self) -> IndexStats;

    /// Writes the model's kind-specific payload (see `docs/file-formats.md`).
    fn encode_payload(&self, out: &mut Vec<u8>);

    /// Starts loading the model's first line a lookup of `key` reads (an RMI's leaf, a PLA's
    /// radix-table entry), so that a point read can overlap that miss with its other work.
    /// Nothing for a model that lives in cache or has no such line.
    #[inline]
    fn prefetch(&self, _key: u64) {}

    /// The position of the first key `>= key`, exactly `keys.partition_point(|&k| k < key)`.
    #[inline]
    fn lower_bound(&self, keys: &[u64], key: u64) -> usize {
        search::lower_bound_in(keys, self.window(key), key)
    }

    /// [`LearnedIndex::lower_bound`] for many keys at once; replaces `out` with one answer per
    /// query, in order. Implementations overlap the cache misses of many lookups.
    fn lower_bound_batch(&self, keys: &[u64], queries: &[u64], out: &mut Vec<usize>) {
        out.clear();
        out.extend(queries.iter().map(|&q| self.lower_bound(keys, q)));
    }

    /// Refuses a key array other than the one the model was trained on.
    fn check_keys(&self, keys: &[u64]) -> Result<(), IndexError> {
        let expected = self.key_set();
        let found = KeySet::of(keys);
        if expected == found {
            Ok(())
        } else {
            Err(IndexError::KeysMismatch { expected, found })
        }
    }

    /// The model in its versioned, checksummed byte format; [`AnyIndex::decode`] reads it back.
    fn encode(&self) -> Vec<u8> {
        codec::encode(self.kind(), self.key_set(), |out| self.encode_payload(out))
    }
}

/// Checks that `keys` is sorted (non-decreasing) and small enough for the models' `u32`
/// positions; every builder calls it first.
fn validate_keys(keys: &[u64]) -> Result<(), IndexError> {
    if keys.len() > MAX_KEYS {
        return Err(IndexError::TooManyKeys {
            len: keys.len(),
            max: MAX_KEYS,
        });
    }
    if let Some(at) = keys.windows(2).position(|w| w[0] > w[1]) {
        return Err(IndexError::Unsorted { at: at + 1 });
    }
    Ok(())
}

/// Largest key array a learned model accepts: positions are stored as `u32` to keep leaves and
/// segments small. Larger arrays can use [`BinarySearch`].
pub const MAX_KEYS: usize = u32::MAX as usize - 1;

/// What a dependent read in a model's own arrays costs in the cost model, against one in the key
/// array. A model is at most a fiftieth of its keys (the default budget), so its lines mostly stay
/// in the CPU's caches while the keys' come from DRAM. Measured on the 2 vCPU AMD VM with a
/// pointer chase: 15 ns per read in 1.6 MB (a 10M-key model), 48 ns in 4 MB, 169 ns in 16 MB (a
/// 100M-key model), 229 ns in 80 MB (10M keys). Counting model reads as whole key reads made the
/// chooser pick the RMI on bursty keys, where the PLA's two small-array reads cost less than the
/// RMI's extra bisection steps in the keys (10M keys: 216 against 258 ns single, 88 against 159 ns
/// batched). A half sits between the 10M and the 100M case and keeps every other choice we measured.
pub(crate) const MODEL_READ: f64 = 0.5;

/// Dependent cache-line reads a search of `window` keys costs beyond the first: windows of up to
/// [`search::SCAN_MAX`] keys are counted with independent loads (one round trip); each halving
/// above that is one more.
fn search_cost(window: usize) -> f64 {
    (window.max(1) as f64 / search::SCAN_MAX as f64)
        .log2()
        .max(0.0)
}

/// The largest errors of `predict` over `keys`, which sit at positions `start..`: how far a
/// prediction may exceed a key's position (`lo`), and how far one-past a key's position may exceed
/// its prediction (`hi`). With them every key's lower bound lies in `pred - lo ..= pred + hi`.
pub(crate) fn measure(
    keys: &[u64],
    start: usize,
    predict: impl Fn(u64) -> usize,
) -> (usize, usize) {
    let (mut lo, mut hi) = (0usize, 0usize);
    for (i, &k) in keys.iter().enumerate() {
        let pos = start + i;
        let pred = predict(k);
        lo = lo.max(pred.saturating_sub(pos));
        hi = hi.max((pos + 1).saturating_sub(pred));
    }
    (lo, hi)
}

/// A position as the models store it; builders reject arrays longer than [`MAX_KEYS`] first, so
/// the saturation never happens.
fn position(at: usize) -> u32 {
    u32::try_from(at).unwrap_or(u32::MAX)
}

/// Test support shared by the members' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::LearnedIndex;

    /// Every stored key, its neighbours and the extremes: the keys whose answers a model is most
    /// likely to get wrong.
    pub(crate) fn probe_keys(keys: &[u64]) -> Vec<u64> {
        let mut queries: Vec<u64> = keys.to_vec();
        for &k in keys {
            queries.extend([k.wrapping_sub(1), k.wrapping_add(1)]);
        }
        queries.extend([0, 1, u64::MAX, u64::MAX - 1, u64::MAX / 2]);
        queries
    }

    /// Asserts that `index`'s window holds the lower bound of every probe key and that its
    /// lookups equal `partition_point`.
    pub(crate) fn assert_exact(keys: &[u64], index: &dyn LearnedIndex) {
        for q in probe_keys(keys) {
            let expected = keys.partition_point(|&k| k < q);
            let w = index.window(q);
            assert!(w.contains(expected), "key {q}: {w:?} misses {expected}");
            assert_eq!(index.lower_bound(keys, q), expected, "key {q}");
        }
    }
}
