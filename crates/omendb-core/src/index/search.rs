//! The last-mile search: from a model's window to the exact lower bound.
//!
//! The search bisects only inside the window the model guarantees, without branches on the keys
//! (so a mispredicted comparison costs nothing), and then checks the window's edges: an answer on
//! an edge is accepted only if the neighbour outside the window agrees. A window that does not
//! contain the answer — which a correctly trained model never produces, but a damaged model or a
//! mismatched key array could — falls back to a binary search of the whole array.

use super::{Window, prefetch};

/// Windows of up to this many cache lines are prefetched whole before the bisection.
const PREFETCH_LINES: usize = 16;

/// Exactly `keys.partition_point(|&k| k < key)`, searching `window` first.
#[inline]
pub fn lower_bound_in(keys: &[u64], window: Window, key: u64) -> usize {
    let n = keys.len();
    let hi = window.hi.min(n);
    let lo = window.lo.min(hi);
    if hi - lo > 8 {
        prefetch::window(keys, lo, hi, PREFETCH_LINES);
    }
    let pos = lo + bisect(&keys[lo..hi], key);
    if verified(keys, lo, hi, pos, key) {
        pos
    } else {
        keys.partition_point(|&k| k < key)
    }
}

/// Exactly `keys.partition_point(|&k| k < key)` inside `keys[lo..hi]` for a window whose lines
/// were already prefetched (batched lookups prefetch in an earlier stage).
#[inline]
pub(crate) fn lower_bound_prefetched(keys: &[u64], window: Window, key: u64) -> usize {
    let n = keys.len();
    let hi = window.hi.min(n);
    let lo = window.lo.min(hi);
    let pos = lo + bisect(&keys[lo..hi], key);
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

/// Lower bound of `key` in the sorted slice `s`, by branch-free bisection.
#[inline(always)]
pub(crate) fn bisect(s: &[u64], key: u64) -> usize {
    let mut size = s.len();
    if size == 0 {
        return 0;
    }
    // Invariant: the answer lies in `base..=base + size`.
    let mut base = 0usize;
    while size > 1 {
        let half = size / 2;
        let mid = base + half;
        // `mid < base + size <= s.len()`, so `get` never misses; the select compiles to a cmov.
        let less = s.get(mid).is_some_and(|&k| k < key);
        base = if less { mid } else { base };
        size -= half;
    }
    base + usize::from(s.get(base).is_some_and(|&k| k < key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bisect_matches_partition_point_on_every_prefix() {
        let keys: Vec<u64> = vec![1, 3, 3, 3, 7, 9, 9, 12, 40, 41, 41, 100];
        for len in 0..=keys.len() {
            let s = &keys[..len];
            for key in 0..=101 {
                assert_eq!(
                    bisect(s, key),
                    s.partition_point(|&k| k < key),
                    "len {len} key {key}"
                );
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
            }
        }
    }

    #[test]
    fn windows_past_the_end_are_clamped() {
        let keys: Vec<u64> = vec![5, 6, 7];
        assert_eq!(lower_bound_in(&keys, Window { lo: 10, hi: 20 }, 6), 1);
        assert_eq!(lower_bound_in(&[], Window { lo: 10, hi: 20 }, 6), 0);
    }
}
