//! The last-mile search: from a model's window to the exact lower bound.
//!
//! The search bisects only inside the window the model guarantees, without branches on the keys
//! (so a mispredicted comparison costs nothing), and then checks the window's edges: an answer on
//! an edge is accepted only if the neighbour outside the window agrees. A window that does not
//! contain the answer — which a correctly trained model never produces, but a damaged model or a
//! mismatched key array could — falls back to a binary search of the whole array.

use super::Window;
use crate::prefetch;

/// Windows of up to this many cache lines are prefetched whole before the bisection.
pub(crate) const PREFETCH_LINES: usize = 16;

/// Exactly `keys.partition_point(|&k| k < key)`, searching `window` first.
#[inline(always)]
pub fn lower_bound_in(keys: &[u64], window: Window, key: u64) -> usize {
    prefetch_window(keys, window);
    let n = keys.len();
    let hi = window.hi.min(n);
    let lo = window.lo.min(hi);
    let pos = lo + bisect_scan::<SCAN_MAX>(&keys[lo..hi], key);
    if verified(keys, lo, hi, pos, key) {
        pos
    } else {
        keys.partition_point(|&k| k < key)
    }
}

/// Starts loading the lines of `window` that [`lower_bound_in`] will search (a window of more
/// than eight keys, its first [`PREFETCH_LINES`] lines): called ahead of the search, it lets the
/// misses of several searches overlap.
#[inline(always)]
pub(crate) fn prefetch_window(keys: &[u64], window: Window) {
    let hi = window.hi.min(keys.len());
    let lo = window.lo.min(hi);
    if hi - lo > 8 {
        prefetch::window(keys, lo, hi, PREFETCH_LINES);
    }
}

/// Exactly `keys.partition_point(|&k| k < key)` inside `keys[lo..hi]` for a window whose lines
/// were already prefetched (batched lookups prefetch in an earlier stage).
#[inline]
pub(crate) fn lower_bound_prefetched<const SCAN: usize>(
    keys: &[u64],
    window: Window,
    key: u64,
) -> usize {
    let n = keys.len();
    let hi = window.hi.min(n);
    let lo = window.lo.min(hi);
    let pos = lo + bisect_scan::<SCAN>(&keys[lo..hi], key);
    if verified(keys, lo, hi, pos, key) {
        pos
    } else {
        keys.partition_point(|&k| k < key)
    }
}

/// Whether `pos`, the lower bound of `key` inside `keys[lo..hi]`, is its lower bound in all of
/// `keys`: inside the window it is by construction; on an edge the neighbour outside must agree.
#[inline(always)]
fn verified(keys: &[u64], lo: usize, hi: usize, pos: usize, key: u64) -> bool {
    let below_ok = pos > lo || lo == 0 || keys.get(lo - 1).is_some_and(|&k| k < key);
    let above_ok = pos < hi || hi == keys.len() || keys.get(hi).is_some_and(|&k| k >= key);
    below_ok && above_ok
}

/// Windows up to this many keys (two cache lines) are counted instead of bisected.
pub(crate) const SCAN_MAX: usize = 16;
/// Searches among a model's own cached arrays (a PLA's first keys) count fewer keys: there the
/// loads are cheap and bisection's few instructions win.
pub(crate) const SCAN_CACHED: usize = 8;

/// Lower bound of `key` in the sorted slice `s`: branch-free bisection down to [`SCAN_MAX`] keys,
/// then a count of the keys below `key`. The count's loads do not depend on each other, so the
/// cache lines of a window arrive in parallel instead of one bisection step after another.
#[inline(always)]
pub(crate) fn bisect_scan<const SCAN: usize>(s: &[u64], key: u64) -> usize {
    let mut size = s.len();
    // Invariant: the answer lies in `base..=base + size`.
    let mut base = 0usize;
    while size > SCAN {
        let half = size / 2;
        let mid = base + half;
        // `mid < base + size <= s.len()`, so `get` never misses; the select compiles to a cmov.
        let less = s.get(mid).is_some_and(|&k| k < key);
        base = if less { mid } else { base };
        size -= half;
    }
    let tail = s.get(base..base + size).unwrap_or(&[]);
    base + tail.iter().map(|&k| usize::from(k < key)).sum::<usize>()
}

/// `keys.partition_point(pred)`, probing 1, 2, 4, … keys from the front before bisecting: a
/// scan's next boundary is usually a few keys away, and this finds it in as many cache lines.
pub(crate) fn gallop(keys: &[u64], pred: impl Fn(u64) -> bool) -> usize {
    let (mut lo, mut step) = (0, 1);
    // Every key before `lo` satisfies `pred`.
    while lo + step <= keys.len() && pred(keys[lo + step - 1]) {
        lo += step;
        step *= 2;
    }
    let end = (lo + step).min(keys.len());
    lo + keys[lo..end].partition_point(|&k| pred(k))
}

/// `keys.partition_point(pred)`, probing from the back: [`gallop`] for a reverse scan.
pub(crate) fn gallop_back(keys: &[u64], pred: impl Fn(u64) -> bool) -> usize {
    let (mut hi, mut step) = (keys.len(), 1);
    // No key from `hi` on satisfies `pred`.
    while hi >= step && !pred(keys[hi - step]) {
        hi -= step;
        step *= 2;
    }
    let start = hi.saturating_sub(step);
    start + keys[start..hi].partition_point(|&k| pred(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bisect_matches_partition_point_on_every_prefix() {
        let keys: Vec<u64> = (0..200u64).map(|i| i / 3 * 7).collect();
        for len in 0..=keys.len() {
            let s = &keys[..len];
            for key in 0..=(200 / 3 * 7 + 2) {
                let expected = s.partition_point(|&k| k < key);
                assert_eq!(
                    bisect_scan::<SCAN_MAX>(s, key),
                    expected,
                    "len {len} key {key}"
                );
                assert_eq!(
                    bisect_scan::<SCAN_CACHED>(s, key),
                    expected,
                    "len {len} key {key}"
                );
                assert_eq!(bisect_scan::<1>(s, key), expected, "len {len} key {key}");
            }
        }
    }

    #[test]
    fn a_window_that_misses_the_answer_falls_back_to_the_whole_array() {
        let keys: Vec<u64> = (0..1000).map(|k| k * 2).collect();
        for (lo, hi) in [
            (0, 0),
            (0, 10),
            (500, 600),
            (990, 1000),
            (1000, 1000),
            (7, 3),
        ] {
            for key in [0, 1, 2, 555, 1001, 1998, 1999, 5000] {
                let expected = keys.partition_point(|&k| k < key);
                assert_eq!(lower_bound_in(&keys, Window { lo, hi }, key), expected);
                let w = Window { lo, hi };
                assert_eq!(
                    lower_bound_prefetched::<SCAN_CACHED>(&keys, w, key),
                    expected
                );
            }
        }
    }

    #[test]
    fn windows_past_the_end_are_clamped() {
        let keys: Vec<u64> = vec![5, 6, 7];
        assert_eq!(lower_bound_in(&keys, Window { lo: 10, hi: 20 }, 6), 1);
        assert_eq!(lower_bound_in(&[], Window { lo: 10, hi: 20 }, 6), 0);
    }

    proptest::proptest! {
        #[test]
        fn galloping_finds_the_partition_point(
            mut keys in proptest::collection::vec(0..64u64, 0..200),
            bound in 0..70u64,
        ) {
            keys.sort_unstable();
            let below = |k: u64| k < bound;
            let at_most = |k: u64| k <= bound;
            proptest::prop_assert_eq!(gallop(&keys, below), keys.partition_point(|&k| below(k)));
            proptest::prop_assert_eq!(gallop(&keys, at_most), keys.partition_point(|&k| at_most(k)));
            proptest::prop_assert_eq!(gallop_back(&keys, below), keys.partition_point(|&k| below(k)));
            proptest::prop_assert_eq!(
                gallop_back(&keys, at_most),
                keys.partition_point(|&k| at_most(k))
            );
        }
    }
}
