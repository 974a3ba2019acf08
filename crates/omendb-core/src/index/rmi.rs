//! A two-stage recursive model index (RMI).
//!
//! A linear root, fitted by least squares to the whole key array, routes a key to one of `L`
//! leaves. Routing is monotone, so each leaf receives one contiguous run of positions
//! `start..end`; the leaf fits a line to exactly those keys, anchored at its first key, and stores
//! the largest error its prediction makes over every one of them, below and above. Predictions are
//! clamped to the leaf's own positions, so a key that falls between two leaves' keys is bounded
//! too. The leaf count is tuned: several counts within the memory budget are trained and the one
//! with the smallest expected search cost is kept.

use super::codec::{Reader, Writer};
use super::search::{self, SCAN_MAX, lower_bound_in};
use super::{
    IndexError, IndexKind, IndexStats, KeySet, LearnedIndex, MODEL_READ, Window, measure, position,
    search_cost, validate_keys,
};
use crate::prefetch;

/// Bytes of one leaf in memory and on disk.
const LEAF_BYTES: usize = 32;
/// Queries in flight in one stage of a batched lookup.
const BATCH: usize = 16;
/// Expected cost of a lookup whose every window is counted: the leaf read and the keys read.
pub(crate) const FLOOR_COST: f64 = MODEL_READ + 1.0;
/// Lines of a window prefetched in a batched lookup.
const BATCH_PREFETCH_LINES: usize = 16;

/// One linear leaf: `position = start + slope * (key - base)`, clamped to `start..=end`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
struct Leaf {
    /// First key routed to the leaf (any value for an empty leaf).
    base: u64,
    slope: f64,
    start: u32,
    end: u32,
    /// Largest amount by which the prediction exceeds a key's first position.
    err_lo: u32,
    /// Largest amount by which a key's one-past-last position exceeds the prediction.
    err_hi: u32,
}

impl Leaf {
    #[inline(always)]
    fn predict(&self, key: u64) -> usize {
        let offset = key.saturating_sub(self.base) as f64 * self.slope;
        // `as` saturates (negative and NaN become 0); the clamp keeps the result in the leaf.
        ((self.start as f64 + offset) as usize).clamp(self.start as usize, self.end as usize)
    }

    #[inline(always)]
    fn window(&self, key: u64) -> Window {
        let pred = self.predict(key);
        Window {
            lo: pred
                .saturating_sub(self.err_lo as usize)
                .max(self.start as usize),
            hi: pred
                .saturating_add(self.err_hi as usize)
                .min(self.end as usize),
        }
    }

    fn len(&self) -> usize {
        (self.end - self.start) as usize
    }

    /// Keys a lookup of a stored key may have to look at.
    fn search_len(&self) -> usize {
        (self.err_lo as usize + self.err_hi as usize).min(self.len())
    }
}

/// A two-stage RMI over a sorted key array; see the module documentation.
#[derive(Debug, Clone, PartialEq)]
pub struct Rmi {
    keys: KeySet,
    root_intercept: f64,
    root_slope: f64,
    leaves: Vec<Leaf>,
}

/// Most leaves [`Rmi::build_with_leaves`] trains: a 1 GiB leaf array.
const MAX_LEAVES: usize = (1 << 30) / LEAF_BYTES;

impl Rmi {
    /// Trains an RMI with the leaf count (among a few within `max_bytes`) that gives the smallest
    /// expected search cost.
    pub fn build(keys: &[u64], max_bytes: usize) -> Result<Self, IndexError> {
        validate_keys(keys)?;
        let room = max_bytes.saturating_sub(std::mem::size_of::<Self>());
        let max_leaves = (room / LEAF_BYTES).clamp(1, keys.len().max(1));
        let root = RootFit::of(keys);
        let mut best: Option<(f64, Rmi)> = None;
        for shift in [4, 2, 0] {
            let leaves = (max_leaves >> shift).max(1);
            if shift > 0 && leaves == max_leaves {
                continue;
            }
            let rmi = Self::train(keys, &root, leaves);
            let cost = rmi.stats().expected_cost;
            // A larger leaf array costs cache space: take it only for a clear gain in cost.
            if best.as_ref().is_none_or(|(c, _)| cost < c - 0.1) {
                best = Some((cost, rmi));
            }
            // At the floor (leaf read, then one counted window) no larger leaf array can win.
            if best.as_ref().is_some_and(|(c, _)| *c < FLOOR_COST + 0.1) {
                break;
            }
        }
        // The loop above runs at least once (shift 0 is never skipped).
        Ok(best.map_or_else(|| Self::train(keys, &root, 1), |(_, rmi)| rmi))
    }

    /// Trains an RMI with exactly `leaves` leaves (at least one, at most a 1 GiB leaf array).
    pub fn build_with_leaves(keys: &[u64], leaves: usize) -> Result<Self, IndexError> {
        validate_keys(keys)?;
        // `usize::MAX` leaves would be an allocation that aborts the process.
        let leaves = leaves.clamp(1, MAX_LEAVES);
        Ok(Self::train(keys, &RootFit::of(keys), leaves))
    }

    fn train(keys: &[u64], root: &RootFit, leaf_count: usize) -> Self {
        let first = keys.first().copied().unwrap_or(0);
        let scale = leaf_count as f64;
        let mut rmi = Rmi {
            keys: KeySet::of(keys),
            root_intercept: root.intercept * scale,
            root_slope: root.slope * scale,
            leaves: Vec::with_capacity(leaf_count),
        };
        let mut fit = LeafFit::default();
        let mut current = 0usize;
        let mut start = 0usize;
        for (i, &key) in keys.iter().enumerate() {
            let leaf = rmi.leaf_of(key, leaf_count);
            if leaf != current || i == 0 {
                if i > 0 {
                    rmi.leaves.push(fit.finish(keys, start, i));
                }
                // Leaves no key was routed to hold an empty range at this position.
                while rmi.leaves.len() < leaf {
                    rmi.leaves.push(Leaf::empty(i, key));
                }
                current = leaf;
                start = i;
                fit = LeafFit::new(key);
            }
            fit.add(key - fit.base, (i - start) as f64);
        }
        if !keys.is_empty() {
            rmi.leaves.push(fit.finish(keys, start, keys.len()));
        }
        while rmi.leaves.len() < leaf_count {
            rmi.leaves.push(Leaf::empty(keys.len(), first));
        }
        rmi
    }

    /// The leaf `key` is routed to, among `leaf_count` leaves.
    #[inline(always)]
    fn leaf_of(&self, key: u64, leaf_count: usize) -> usize {
        let d = key.saturating_sub(self.keys.first) as f64;
        ((self.root_intercept + self.root_slope * d) as usize).min(leaf_count - 1)
    }

    #[inline(always)]
    fn leaf(&self, key: u64) -> &Leaf {
        let at = self.leaf_of(key, self.leaves.len());
        // `leaf_of` is below `leaves.len()`, which is at least one for every built or decoded
        // RMI; `get` keeps that a checked fact rather than an assumption.
        self.leaves.get(at).unwrap_or(&EMPTY_LEAF)
    }

    /// Number of leaves.
    pub fn leaf_count(&self) -> usize {
        self.leaves.len()
    }

    pub(crate) fn decode_payload(keys: KeySet, r: &mut Reader<'_>) -> Result<Self, IndexError> {
        let root_intercept = r.finite()?;
        let root_slope = r.slope()?;
        let count = r.count(LEAF_BYTES)?;
        if count == 0 {
            return Err(IndexError::corrupt("RMI has no leaves"));
        }
        let mut leaves = Vec::with_capacity(count);
        let mut expected_start = 0u32;
        for _ in 0..count {
            let leaf = Leaf {
                base: r.u64()?,
                slope: r.slope()?,
                start: r.u32()?,
                end: r.u32()?,
                err_lo: r.u32()?,
                err_hi: r.u32()?,
            };
            if leaf.start != expected_start || leaf.end < leaf.start {
                return Err(IndexError::corrupt(
                    "RMI leaves do not tile the key positions",
                ));
            }
            expected_start = leaf.end;
            leaves.push(leaf);
        }
        if u64::from(expected_start) != keys.len {
            return Err(IndexError::corrupt("RMI leaves do not cover every key"));
        }
        r.finish()?;
        Ok(Rmi {
            keys,
            root_intercept,
            root_slope,
            leaves,
        })
    }
}

/// Stand-in returned only if a leaf index were ever out of range.
const EMPTY_LEAF: Leaf = Leaf {
    base: 0,
    slope: 0.0,
    start: 0,
    end: 0,
    err_lo: 0,
    err_hi: 0,
};

impl Leaf {
    fn empty(at: usize, base: u64) -> Self {
        let at = position(at);
        Leaf {
            base,
            slope: 0.0,
            start: at,
            end: at,
            err_lo: 0,
            err_hi: 0,
        }
    }
}

/// The root's least-squares line of `position / n` over `key - first`; scaled by the leaf count
/// for each candidate, so it is fitted once per build.
struct RootFit {
    intercept: f64,
    slope: f64,
}

impl RootFit {
    fn of(keys: &[u64]) -> Self {
        let n = keys.len();
        let first = keys.first().copied().unwrap_or(0);
        if n < 2 {
            return RootFit {
                intercept: 0.0,
                slope: 0.0,
            };
        }
        let inv_n = 1.0 / n as f64;
        // Two passes (means, then co-moments) avoid the cancellation of the one-pass formula.
        let mean_x = keys.iter().map(|&k| (k - first) as f64).sum::<f64>() * inv_n;
        let mean_y = (n - 1) as f64 * 0.5 * inv_n;
        let (mut sxy, mut sxx) = (0.0f64, 0.0f64);
        for (i, &k) in keys.iter().enumerate() {
            let dx = (k - first) as f64 - mean_x;
            let dy = i as f64 * inv_n - mean_y;
            sxy += dx * dy;
            sxx += dx * dx;
        }
        let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
        // Sorted keys never give a negative slope; guard against rounding and non-finite values
        // all the same, because a negative slope would break monotone routing.
        let slope = if slope.is_finite() && slope > 0.0 {
            slope
        } else {
            0.0
        };
        let intercept = mean_y - slope * mean_x;
        RootFit {
            intercept: if intercept.is_finite() {
                intercept
            } else {
                0.0
            },
            slope,
        }
    }
}

/// Running sums of one leaf's least-squares line through its first key.
#[derive(Default)]
struct LeafFit {
    base: u64,
    sxy: f64,
    sxx: f64,
}

impl LeafFit {
    fn new(base: u64) -> Self {
        LeafFit {
            base,
            sxy: 0.0,
            sxx: 0.0,
        }
    }

    #[inline(always)]
    fn add(&mut self, dx: u64, dy: f64) {
        let dx = dx as f64;
        self.sxy += dx * dy;
        self.sxx += dx * dx;
    }

    /// The leaf over positions `start..end`, with errors measured at every one of them.
    fn finish(&self, keys: &[u64], start: usize, end: usize) -> Leaf {
        let slope = if self.sxx > 0.0 {
            self.sxy / self.sxx
        } else {
            0.0
        };
        let mut leaf = Leaf {
            base: self.base,
            slope: if slope.is_finite() && slope > 0.0 {
                slope
            } else {
                0.0
            },
            start: position(start),
            end: position(end),
            err_lo: 0,
            err_hi: 0,
        };
        let (lo, hi) = measure(&keys[start..end], start, |k| leaf.predict(k));
        leaf.err_lo = position(lo);
        leaf.err_hi = position(hi);
        leaf
    }
}

impl LearnedIndex for Rmi {
    fn kind(&self) -> IndexKind {
        IndexKind::Rmi
    }

    fn key_set(&self) -> KeySet {
        self.keys
    }

    #[inline(always)]
    fn window(&self, key: u64) -> Window {
        self.leaf(key).window(key)
    }

    #[inline(always)]
    fn prefetch(&self, key: u64) {
        let at = self.leaf_of(key, self.leaves.len());
        prefetch::line(self.leaves.as_ptr().wrapping_add(at));
    }

    #[inline(always)]
    fn lower_bound(&self, keys: &[u64], key: u64) -> usize {
        lower_bound_in(keys, self.window(key), key)
    }

    fn lower_bound_batch(&self, keys: &[u64], queries: &[u64], out: &mut Vec<usize>) {
        out.clear();
        out.reserve(queries.len());
        let mut leaf_at = [0usize; BATCH];
        let mut windows = [Window { lo: 0, hi: 0 }; BATCH];
        let count = self.leaves.len();
        for chunk in queries.chunks(BATCH) {
            for (slot, &q) in leaf_at.iter_mut().zip(chunk) {
                *slot = self.leaf_of(q, count);
                prefetch::line(self.leaves.as_ptr().wrapping_add(*slot));
            }
            for ((w, &at), &q) in windows.iter_mut().zip(&leaf_at).zip(chunk) {
                *w = self.leaves.get(at).unwrap_or(&EMPTY_LEAF).window(q);
                prefetch::window(keys, w.lo, w.hi, BATCH_PREFETCH_LINES);
            }
            for (w, &q) in windows.iter().zip(chunk) {
                out.push(search::lower_bound_prefetched::<SCAN_MAX>(keys, *w, q));
            }
        }
    }

    fn stats(&self) -> IndexStats {
        let n = self.keys.len.max(1) as f64;
        let (mut mean, mut cost, mut max) = (0.0, 0.0, 0usize);
        for leaf in &self.leaves {
            let len = leaf.len() as f64;
            let window = leaf.search_len();
            mean += len * window as f64;
            cost += len * search_cost(window);
            max = max.max(window);
        }
        IndexStats {
            size_bytes: std::mem::size_of::<Self>() + self.leaves.len() * LEAF_BYTES,
            mean_window: mean / n,
            max_window: max,
            expected_cost: FLOOR_COST + cost / n,
            levels: 2,
        }
    }

    fn encode_payload(&self, out: &mut Vec<u8>) {
        out.put_f64(self.root_intercept);
        out.put_f64(self.root_slope);
        out.put_u32(position(self.leaves.len()));
        for leaf in &self.leaves {
            out.put_u64(leaf.base);
            out.put_f64(leaf.slope);
            out.put_u32(leaf.start);
            out.put_u32(leaf.end);
            out.put_u32(leaf.err_lo);
            out.put_u32(leaf.err_hi);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::index::testing::assert_exact;

    fn check(keys: &[u64], rmi: &Rmi) {
        assert_exact(keys, rmi);
    }

    #[test]
    fn every_leaf_count_is_exact_on_edge_cases() {
        let cases: Vec<Vec<u64>> = vec![
            vec![],
            vec![42],
            vec![0],
            vec![u64::MAX],
            vec![0, u64::MAX],
            vec![7; 100],
            vec![0, 0, 0, 5, 5, 9, u64::MAX, u64::MAX],
            (0..1000).collect(),
            (0..1000).map(|i| u64::MAX - 1000 + i).collect(),
            (0..1000).map(|i| i * i * i * i * 1000).collect(),
            (0..500).chain([1 << 62, u64::MAX - 3]).collect(),
        ];
        for keys in &cases {
            for leaves in [1, 2, 3, 16, 1000, 5000] {
                let rmi = Rmi::build_with_leaves(keys, leaves).unwrap();
                assert_eq!(rmi.leaf_count(), leaves);
                check(keys, &rmi);
            }
            check(keys, &Rmi::build(keys, 4096).unwrap());
        }
    }

    #[test]
    fn linear_keys_get_tight_windows() {
        let keys: Vec<u64> = (0..100_000).map(|i| 1_000 + i * 10).collect();
        let rmi = Rmi::build(&keys, 4096).unwrap();
        assert!(rmi.stats().max_window <= 2, "{:?}", rmi.stats());
    }

    #[test]
    fn unsorted_keys_are_rejected() {
        assert_eq!(
            Rmi::build(&[1, 3, 2], 4096),
            Err(IndexError::Unsorted { at: 2 })
        );
    }
}
