//! An ε-bounded piecewise-linear index (PGM-style).
//!
//! One streaming pass over the sorted keys cuts them into segments with the shrinking-cone
//! method: a segment is anchored at its first key's first position and grows while some slope
//! keeps every key's positions within ε of the line; when no slope can, a new segment starts. A
//! run of equal keys always stays in one segment, so segments start at distinct keys. The bound
//! each level stores is the largest error measured over every key with the very prediction the
//! lookup computes (clamped to the segment's positions), so rounding can widen it by a position or
//! two but never make it wrong.
//!
//! The segments' first keys are themselves a sorted array, indexed the same way with a small ε,
//! level upon level, until a level is small enough to bisect directly: the top of a lookup is a
//! bisection of a few cached keys, then one bounded search per level.

use super::codec::{Reader, Writer};
use super::search::{self, SCAN_CACHED, SCAN_MAX, bisect_scan, lower_bound_in, lower_bound_scan};
use super::{
    IndexError, IndexKind, IndexStats, KeySet, LearnedIndex, Window, measure, position, prefetch,
    search_cost, validate_keys,
};

/// ε of the segments over the data keys when no budget forces a larger one.
const DEFAULT_EPSILON: usize = 32;
/// Smallest ε the tuner tries.
const MIN_EPSILON: usize = 8;
/// ε of the levels over segments' first keys: they are small and cached, so a tight ε costs
/// little memory and keeps their searches within a cache line or two.
const INNER_EPSILON: usize = 8;
/// A level with at most this many segments is the top: it is bisected directly.
const TOP_MAX: usize = 64;
/// Bytes per segment: its first key (8) and its line (16).
const SEGMENT_BYTES: usize = 24;
/// Queries in flight in one stage of a batched lookup.
const BATCH: usize = 16;
/// Lines of a window prefetched in a batched lookup.
const BATCH_PREFETCH_LINES: usize = 16;

/// A segment's line: `position = start + slope * (key - first key)`, clamped to `start..=end`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
struct Line {
    slope: f64,
    start: u32,
    end: u32,
}

const EMPTY_LINE: Line = Line {
    slope: 0.0,
    start: 0,
    end: 0,
};

/// One level: segments over a sorted array (the data keys, or the level below's first keys).
#[derive(Debug, Clone, PartialEq)]
struct Level {
    /// First key of each segment, strictly increasing; never empty.
    firsts: Vec<u64>,
    /// Line of each segment; same length as `firsts`.
    lines: Vec<Line>,
    err_lo: u32,
    err_hi: u32,
}

impl Level {
    /// Cuts `keys` into ε-bounded segments.
    fn fit(keys: &[u64], epsilon: usize) -> Self {
        let mut level = Level {
            firsts: Vec::new(),
            lines: Vec::new(),
            err_lo: 0,
            err_hi: 0,
        };
        let n = keys.len();
        if n == 0 {
            level.firsts.push(0);
            level.lines.push(EMPTY_LINE);
            return level;
        }
        let eps = epsilon as f64;
        let (mut max_lo, mut max_hi) = (0usize, 0usize);
        let mut start = 0usize;
        while start < n {
            let base = keys[start];
            let mut end = run_end(keys, start);
            let (mut smin, mut smax) = (0.0f64, f64::INFINITY);
            while end < n {
                let key = keys[end];
                let run = run_end(keys, end);
                let dx = (key - base) as f64;
                // Every position of the run must lie within ε of the line at `key`.
                let lo = ((run - 1 - start) as f64 - eps) / dx;
                let hi = ((end - start) as f64 + eps) / dx;
                let (new_min, new_max) = (smin.max(lo), smax.min(hi));
                if new_min > new_max {
                    break;
                }
                (smin, smax) = (new_min, new_max);
                end = run;
            }
            let slope = if smax.is_finite() {
                (smin + smax) * 0.5
            } else {
                0.0
            };
            let line = Line {
                slope,
                start: position(start),
                end: position(end),
            };
            let (lo, hi) = measure(&keys[start..end], start, |k| predict(base, &line, k));
            max_lo = max_lo.max(lo);
            max_hi = max_hi.max(hi);
            level.firsts.push(base);
            level.lines.push(line);
            start = end;
        }
        level.err_lo = position(max_lo);
        level.err_hi = position(max_hi);
        level
    }

    #[inline(always)]
    fn window(&self, segment: usize, key: u64) -> Window {
        let base = self.firsts.get(segment).copied().unwrap_or(0);
        let line = self.lines.get(segment).unwrap_or(&EMPTY_LINE);
        let pred = predict(base, line, key);
        Window {
            lo: pred
                .saturating_sub(self.err_lo as usize)
                .max(line.start as usize),
            hi: pred
                .saturating_add(self.err_hi as usize)
                .min(line.end as usize),
        }
    }

    fn len(&self) -> usize {
        self.firsts.len()
    }

    fn search_len(&self) -> usize {
        self.err_lo as usize + self.err_hi as usize
    }
}

#[inline(always)]
fn predict(base: u64, line: &Line, key: u64) -> usize {
    let offset = key.saturating_sub(base) as f64 * line.slope;
    // `as` saturates (negative and NaN become 0); the clamp keeps the result in the segment.
    ((line.start as f64 + offset) as usize).clamp(line.start as usize, line.end as usize)
}

/// One past the last position of the run of keys equal to `keys[at]`.
#[inline(always)]
fn run_end(keys: &[u64], at: usize) -> usize {
    let key = keys[at];
    let mut end = at + 1;
    while end < keys.len() && keys[end] == key {
        end += 1;
    }
    end
}

/// The segment of a level whose first key is the last one `<= key`, given `lb`, the lower bound
/// of `key` among the level's first keys (segment 0 for a key below them all).
#[inline(always)]
fn segment_at(firsts: &[u64], lb: usize, key: u64) -> usize {
    if firsts.get(lb) == Some(&key) {
        lb
    } else {
        lb.saturating_sub(1)
    }
}

/// A PGM-style ε-bounded piecewise-linear index; see the module documentation.
#[derive(Debug, Clone, PartialEq)]
pub struct Pla {
    keys: KeySet,
    epsilon: u32,
    /// `levels[0]` indexes the data keys, `levels[i]` indexes `levels[i - 1].firsts`; the last is
    /// the top. Never empty.
    levels: Vec<Level>,
}

impl Pla {
    /// Builds with the ε (a power of two times [`DEFAULT_EPSILON`], at least 8) that gives the
    /// smallest expected search cost within `max_bytes`; if even one segment per level exceeds
    /// it, the largest ε tried.
    pub fn build(keys: &[u64], max_bytes: usize) -> Result<Self, IndexError> {
        validate_keys(keys)?;
        let n = keys.len();
        let mut epsilon = DEFAULT_EPSILON;
        let mut best = Self::train(keys, epsilon);
        // Too big: widen ε until the segments fit.
        while best.stats().size_bytes > max_bytes && epsilon < n {
            epsilon *= 4;
            best = Self::train(keys, epsilon);
        }
        // Room to spare: a narrower ε, if it fits and clearly lowers the cost.
        while epsilon > MIN_EPSILON && epsilon <= DEFAULT_EPSILON {
            let candidate = Self::train(keys, epsilon / 2);
            let stats = candidate.stats();
            if stats.size_bytes > max_bytes
                || stats.expected_cost > best.stats().expected_cost - 0.1
            {
                break;
            }
            epsilon /= 2;
            best = candidate;
        }
        Ok(best)
    }

    /// Builds with exactly this ε (at least 1) over the data keys.
    pub fn build_with_epsilon(keys: &[u64], epsilon: usize) -> Result<Self, IndexError> {
        validate_keys(keys)?;
        Ok(Self::train(keys, epsilon.max(1)))
    }

    fn train(keys: &[u64], epsilon: usize) -> Self {
        let mut levels = vec![Level::fit(keys, epsilon)];
        while let Some(top) = levels.last() {
            if top.len() <= TOP_MAX {
                break;
            }
            let next = Level::fit(&top.firsts, INNER_EPSILON);
            // Every segment over distinct keys covers at least two of them, so each level at
            // least halves; the check only guards the loop's termination.
            if next.len() >= top.len() {
                break;
            }
            levels.push(next);
        }
        Pla {
            keys: KeySet::of(keys),
            epsilon: position(epsilon),
            levels,
        }
    }

    /// The ε the data-level segments were built with.
    pub fn epsilon(&self) -> usize {
        self.epsilon as usize
    }

    /// Number of segments over the data keys.
    pub fn segment_count(&self) -> usize {
        self.levels.first().map_or(0, Level::len)
    }

    /// Number of levels, the data level included.
    pub fn level_count(&self) -> usize {
        self.levels.len()
    }

    /// The data-level segment that covers `key`.
    #[inline(always)]
    fn data_segment(&self, key: u64) -> usize {
        let Some((top, below)) = self.levels.split_last() else {
            return 0;
        };
        let mut segment = segment_at(
            &top.firsts,
            bisect_scan::<SCAN_CACHED>(&top.firsts, key),
            key,
        );
        let mut level = top;
        for child in below.iter().rev() {
            let lb =
                lower_bound_scan::<SCAN_CACHED>(&child.firsts, level.window(segment, key), key);
            segment = segment_at(&child.firsts, lb, key);
            level = child;
        }
        segment
    }

    pub(crate) fn decode_payload(keys: KeySet, r: &mut Reader<'_>) -> Result<Self, IndexError> {
        let epsilon = r.u32()?;
        let level_count = r.count(12)?;
        if level_count == 0 {
            return Err(IndexError::corrupt("PLA has no levels"));
        }
        let mut levels: Vec<Level> = Vec::with_capacity(level_count);
        for depth in 0..level_count {
            let err_lo = r.u32()?;
            let err_hi = r.u32()?;
            let count = r.count(SEGMENT_BYTES)?;
            if count == 0 {
                return Err(IndexError::corrupt(format!(
                    "PLA level {depth} has no segments"
                )));
            }
            // Level 0 covers the data keys, every other level the first keys of the one below.
            let covered = match levels.last() {
                None => keys.len,
                Some(below) => below.len() as u64,
            };
            let mut level = Level {
                firsts: Vec::with_capacity(count),
                lines: Vec::with_capacity(count),
                err_lo,
                err_hi,
            };
            let mut expected_start = 0u32;
            for _ in 0..count {
                let first = r.u64()?;
                let line = Line {
                    slope: r.slope()?,
                    start: r.u32()?,
                    end: r.u32()?,
                };
                if line.start != expected_start || line.end < line.start {
                    return Err(IndexError::corrupt(format!(
                        "PLA level {depth} segments do not tile the positions"
                    )));
                }
                if level.firsts.last().is_some_and(|&prev| prev >= first) {
                    return Err(IndexError::corrupt(format!(
                        "PLA level {depth} first keys are not increasing"
                    )));
                }
                expected_start = line.end;
                level.firsts.push(first);
                level.lines.push(line);
            }
            if u64::from(expected_start) != covered {
                return Err(IndexError::corrupt(format!(
                    "PLA level {depth} covers {expected_start} of {covered} positions"
                )));
            }
            levels.push(level);
        }
        r.finish()?;
        Ok(Pla {
            keys,
            epsilon,
            levels,
        })
    }
}

impl LearnedIndex for Pla {
    fn kind(&self) -> IndexKind {
        IndexKind::Pla
    }

    fn key_set(&self) -> KeySet {
        self.keys
    }

    #[inline]
    fn window(&self, key: u64) -> Window {
        let segment = self.data_segment(key);
        match self.levels.first() {
            Some(data) => data.window(segment, key),
            None => Window { lo: 0, hi: 0 },
        }
    }

    #[inline]
    fn lower_bound(&self, keys: &[u64], key: u64) -> usize {
        lower_bound_in(keys, self.window(key), key)
    }

    fn lower_bound_batch(&self, keys: &[u64], queries: &[u64], out: &mut Vec<usize>) {
        out.clear();
        out.reserve(queries.len());
        let Some((top, below)) = self.levels.split_last() else {
            out.extend(queries.iter().map(|&q| keys.partition_point(|&k| k < q)));
            return;
        };
        let mut segment = [0usize; BATCH];
        let mut windows = [Window { lo: 0, hi: 0 }; BATCH];
        for chunk in queries.chunks(BATCH) {
            for (s, &q) in segment.iter_mut().zip(chunk) {
                *s = segment_at(&top.firsts, bisect_scan::<SCAN_CACHED>(&top.firsts, q), q);
            }
            let mut level = top;
            // Each level in two stages: all windows with their lines prefetched, then all
            // searches, each prefetching the segment it routes to on the level below.
            for child in below.iter().rev() {
                for ((w, &s), &q) in windows.iter_mut().zip(&segment).zip(chunk) {
                    *w = level.window(s, q);
                    prefetch::window(&child.firsts, w.lo, w.hi, BATCH_PREFETCH_LINES);
                }
                for ((s, w), &q) in segment.iter_mut().zip(&windows).zip(chunk) {
                    let lb = search::lower_bound_prefetched::<SCAN_CACHED>(&child.firsts, *w, q);
                    *s = segment_at(&child.firsts, lb, q);
                    prefetch::line(child.lines.as_ptr().wrapping_add(*s));
                }
                level = child;
            }
            for ((w, &s), &q) in windows.iter_mut().zip(&segment).zip(chunk) {
                *w = level.window(s, q);
                prefetch::window(keys, w.lo, w.hi, BATCH_PREFETCH_LINES);
            }
            for (w, &q) in windows.iter().zip(chunk) {
                out.push(search::lower_bound_prefetched::<SCAN_MAX>(keys, *w, q));
            }
        }
    }

    fn stats(&self) -> IndexStats {
        let n = self.keys.len as usize;
        let data_window = self.levels.first().map_or(0, |l| l.search_len().min(n));
        // One read per level (its segment's line), one for the keys, plus bisection beyond a
        // counted window at every level.
        let mut cost = self.levels.len() as f64 + 1.0 + search_cost(data_window);
        for (depth, level) in self.levels.iter().enumerate().skip(1) {
            let below = self.levels.get(depth - 1).map_or(0, Level::len);
            cost += search_cost(level.search_len().min(below));
        }
        let segments: usize = self.levels.iter().map(Level::len).sum();
        IndexStats {
            size_bytes: std::mem::size_of::<Self>()
                + self.levels.len() * std::mem::size_of::<Level>()
                + segments * SEGMENT_BYTES,
            mean_window: data_window as f64,
            max_window: data_window,
            expected_cost: cost,
            levels: self.levels.len(),
        }
    }

    fn encode_payload(&self, out: &mut Vec<u8>) {
        out.put_u32(self.epsilon);
        out.put_u32(position(self.levels.len()));
        for level in &self.levels {
            out.put_u32(level.err_lo);
            out.put_u32(level.err_hi);
            out.put_u32(position(level.len()));
            for (first, line) in level.firsts.iter().zip(&level.lines) {
                out.put_u64(*first);
                out.put_f64(line.slope);
                out.put_u32(line.start);
                out.put_u32(line.end);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(keys: &[u64], pla: &Pla) {
        let mut queries: Vec<u64> = keys.to_vec();
        for &k in keys {
            queries.extend([k.wrapping_sub(1), k.wrapping_add(1)]);
        }
        queries.extend([0, 1, u64::MAX, u64::MAX - 1, u64::MAX / 2]);
        for q in queries {
            let expected = keys.partition_point(|&k| k < q);
            let w = pla.window(q);
            assert!(w.contains(expected), "key {q}: {w:?} misses {expected}");
            assert_eq!(pla.lower_bound(keys, q), expected, "key {q}");
        }
    }

    #[test]
    fn every_epsilon_is_exact_on_edge_cases() {
        let cases: Vec<Vec<u64>> = vec![
            vec![],
            vec![42],
            vec![u64::MAX],
            vec![0, u64::MAX],
            vec![7; 100],
            vec![0, 0, 0, 5, 5, 9, u64::MAX, u64::MAX],
            (0..5000).collect(),
            (0..5000).map(|i| u64::MAX - 5000 + i).collect(),
            (0..3000).map(|i| i * i * i * i * 1000).collect(),
            (0..500).chain([1 << 62, u64::MAX - 3]).collect(),
            (0..2000)
                .flat_map(|i| std::iter::repeat_n(i * 1000, (i % 7) as usize + 1))
                .collect(),
        ];
        for keys in &cases {
            for eps in [1, 2, 8, 32, 1000] {
                check(keys, &Pla::build_with_epsilon(keys, eps).unwrap());
            }
            check(keys, &Pla::build(keys, 4096).unwrap());
        }
    }

    #[test]
    fn bounds_stay_within_epsilon_for_distinct_keys() {
        let keys: Vec<u64> = (0..200_000u64).map(|i| i * i / 7 + i * 3).collect();
        for eps in [4, 16, 64] {
            let pla = Pla::build_with_epsilon(&keys, eps).unwrap();
            let data = &pla.levels[0];
            assert!(
                data.err_lo as usize <= eps + 1,
                "eps {eps}: lo {}",
                data.err_lo
            );
            assert!(
                data.err_hi as usize <= eps + 2,
                "eps {eps}: hi {}",
                data.err_hi
            );
            assert!(pla.level_count() >= 1);
        }
    }

    #[test]
    fn upper_levels_are_built_for_many_segments() {
        let keys: Vec<u64> = (0..100_000u64).map(|i| i * i).collect();
        let pla = Pla::build_with_epsilon(&keys, 1).unwrap();
        assert!(pla.segment_count() > TOP_MAX);
        assert!(pla.level_count() > 1);
        assert!(pla.levels.last().unwrap().len() <= TOP_MAX);
        check(&keys[..], &pla);
    }
}
