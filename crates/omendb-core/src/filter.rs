//! Membership filters over stored keys: a point read asks a memtable's or a segment's filter
//! before it searches, so a key the layer does not hold costs a probe or two of a small bit
//! array instead of a skip-list walk or an index lookup (`fastbloom`, about 1% false
//! positives).

use fastbloom::{AtomicBloomFilter, BloomFilter};

/// The false-positive rate the filters are sized for.
const FALSE_POSITIVES: f64 = 0.01;

/// The hash a filter is probed with: stored keys are often dense or sequential, so they are
/// mixed first (the splitmix64 finalizer) to spread them over the bit array.
fn hash(key: u64) -> u64 {
    let mut z = key.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A filter that grows with concurrent inserts (a memtable's).
#[derive(Debug)]
pub(crate) struct GrowingFilter(AtomicBloomFilter);

impl GrowingFilter {
    /// Sized for `expected` keys (more keys raise the false-positive rate, never break it).
    pub(crate) fn new(expected: usize) -> Self {
        Self(AtomicBloomFilter::with_false_pos(FALSE_POSITIVES).expected_items(expected.max(1)))
    }

    /// Adds `key`.
    pub(crate) fn insert(&self, key: u64) {
        self.0.insert_hash(hash(key));
    }

    /// `false` only if `key` was never added.
    pub(crate) fn may_hold(&self, key: u64) -> bool {
        self.0.contains_hash(hash(key))
    }
}

/// A filter over a fixed set of keys (a segment's).
#[derive(Debug)]
pub(crate) struct FixedFilter(BloomFilter);

impl FixedFilter {
    /// The filter of `keys` (sorted; repeats count once).
    pub(crate) fn of(keys: &[u64]) -> Self {
        let distinct = 1 + keys.windows(2).filter(|w| w[0] != w[1]).count();
        let mut filter =
            BloomFilter::with_false_pos(FALSE_POSITIVES).expected_items(distinct.max(1));
        for &key in keys {
            filter.insert_hash(hash(key));
        }
        Self(filter)
    }

    /// `false` only if `key` is not among the keys.
    pub(crate) fn may_hold(&self, key: u64) -> bool {
        self.0.contains_hash(hash(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_always_pass_and_most_others_do_not() {
        let keys: Vec<u64> = (0..100_000u64).map(|k| k * 3).collect();
        let fixed = FixedFilter::of(&keys);
        let growing = GrowingFilter::new(keys.len());
        for &k in &keys {
            growing.insert(k);
        }
        assert!(
            keys.iter()
                .all(|&k| fixed.may_hold(k) && growing.may_hold(k))
        );
        let passed = (0..100_000u64)
            .map(|k| k * 3 + 1)
            .filter(|&k| fixed.may_hold(k))
            .count();
        assert!(passed < 3_000, "{passed} false positives in 100000");
    }
}
