//! Membership filters over stored keys: a point read asks a memtable's or a segment's filter
//! before it searches, so a key the layer does not hold costs a probe of a small bit array
//! instead of a skip-list walk or an index lookup.
//!
//! Blocked Bloom filters: all of a key's bits lie in one 64-byte block, one bit in each of its
//! eight words, so a probe reads one cache line, and a batched read can prefetch that line for
//! many keys before probing any (`prefetch`). A classic Bloom filter (`fastbloom`, used before)
//! spreads a key's seven bits over the whole array: in the ~10 MB of filters a 10M-key table has,
//! a probe of a stored key cost up to seven cache misses. Blocking costs a slightly higher
//! false-positive rate for the same bits (uneven blocks); `BITS_PER_KEY` pays for that.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::prefetch;

/// Filter bits per expected key: about 1% false positives with eight bits per key in 512-bit
/// blocks (1.06% measured at 1M keys; 12 bits gave 0.44%), the bits `fastbloom` used for 1%.
const BITS_PER_KEY: usize = 10;

/// Words per block, and bits a key sets (one per word).
const WORDS: usize = 8;

/// Bits per block.
const BLOCK_BITS: usize = WORDS * 64;

/// Odd multipliers that derive a key's bit in each word from one 32-bit hash (those of the
/// Parquet split-block Bloom filter specification).
const SALTS: [u32; WORDS] = [
    0x47b6_137b,
    0x4497_4d91,
    0x8824_ad5b,
    0xa2b7_289d,
    0x7054_95c7,
    0x2df1_424b,
    0x9efc_4947,
    0x5c6b_fb31,
];

/// The hash a filter is probed with: stored keys are often dense or sequential, so they are
/// mixed first (the splitmix64 finalizer) to spread them over the blocks.
fn hash(key: u64) -> u64 {
    let mut z = key.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The block of `hash` among `blocks` (the high bits of the hash, scaled without a division).
fn block_of(hash: u64, blocks: usize) -> usize {
    // The product of a u64 and a usize shifted right by 64 is below `blocks`: fits a usize.
    ((u128::from(hash) * blocks as u128) >> 64) as usize
}

/// The bit of each word that `hash` sets (from its low 32 bits; the block took the high ones).
fn masks(hash: u64) -> [u64; WORDS] {
    let low = hash as u32;
    SALTS.map(|salt| 1u64 << (salt.wrapping_mul(low) >> 26))
}

/// Blocks for `expected` keys (at least one).
fn blocks_for(expected: usize) -> usize {
    expected
        .max(1)
        .saturating_mul(BITS_PER_KEY)
        .div_ceil(BLOCK_BITS)
}

/// One cache line of a fixed filter.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(64))]
struct Block([u64; WORDS]);

/// One cache line of a growing filter.
#[derive(Debug, Default)]
#[repr(C, align(64))]
struct AtomicBlock([AtomicU64; WORDS]);

/// One of a growing filter's bit arrays, sized for `capacity` keys.
#[derive(Debug)]
struct Bits {
    capacity: usize,
    blocks: Box<[AtomicBlock]>,
}

impl Bits {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            blocks: (0..blocks_for(capacity))
                .map(|_| AtomicBlock::default())
                .collect(),
        }
    }

    fn block(&self, key: u64) -> (&AtomicBlock, [u64; WORDS]) {
        let hash = hash(key);
        (&self.blocks[block_of(hash, self.blocks.len())], masks(hash))
    }

    fn insert(&self, key: u64) {
        let (block, masks) = self.block(key);
        for (word, mask) in block.0.iter().zip(masks) {
            if word.load(Ordering::Relaxed) & mask != mask {
                word.fetch_or(mask, Ordering::Relaxed);
            }
        }
    }

    fn may_hold(&self, key: u64) -> bool {
        let (block, masks) = self.block(key);
        let missing = block.0.iter().zip(masks).fold(0, |missing, (word, mask)| {
            missing | (mask & !word.load(Ordering::Relaxed))
        });
        missing == 0
    }

    fn prefetch(&self, key: u64) {
        prefetch::line(&raw const self.blocks[block_of(hash(key), self.blocks.len())]);
    }
}

/// How many times larger a growing filter's next bit array is than the keys that outgrew the
/// last one.
const GROWTH: usize = 8;

/// Bit arrays a growing filter can have: from one key, growing eightfold, more than any
/// `usize` count of keys needs.
const MOST_ARRAYS: usize = 24;

/// No bit array is being built.
const NOT_GROWING: usize = usize::MAX;

/// A filter that takes concurrent inserts (a memtable's) and grows with its keys: it starts
/// small and, once its keys outgrow it, is built again eightfold larger (at most `most` keys),
/// while inserts go into both arrays. A memtable's filter used to be sized up front for a full
/// memtable of one table: 1 MiB at the default 64 MiB, for every table written in every
/// generation, when the generation's budget is shared by all its tables (a thousand tables
/// written made about a gigabyte of filters per generation; a helper agent's review).
///
/// The arrays are kept until the filter is dropped (a reader may still be probing an older
/// one): the last is capped at `most`, so the earlier ones can add up to about as much again
/// (a third more at the defaults: 16Ki, 256Ki and 819Ki keys, 1.4 MB against 1 MiB before).
/// The growth counts versions, not distinct keys.
#[derive(Debug)]
pub(crate) struct GrowingFilter {
    arrays: [OnceLock<Bits>; MOST_ARRAYS],
    /// The array readers probe: complete for every key inserted so far.
    current: AtomicUsize,
    /// The array being built ([`NOT_GROWING`] if none), which inserts fill too.
    growing: AtomicUsize,
    /// Keys the largest array is sized for.
    most: usize,
}

impl GrowingFilter {
    /// Sized for `first` keys, growing up to `most` (more keys than that raise the
    /// false-positive rate, never break it).
    pub(crate) fn new(first: usize, most: usize) -> Self {
        let most = most.max(1);
        let filter = Self {
            arrays: Default::default(),
            current: AtomicUsize::new(0),
            growing: AtomicUsize::new(NOT_GROWING),
            most,
        };
        // The first array, set before anyone can read the filter.
        let _ = filter.arrays[0].set(Bits::new(first.clamp(1, most)));
        filter
    }

    /// The array readers probe (`None` cannot happen: an array is set before it becomes
    /// current).
    fn current(&self) -> Option<&Bits> {
        self.arrays
            .get(self.current.load(Ordering::Acquire))
            .and_then(OnceLock::get)
    }

    /// Adds `key`. Relaxed bits: a reader can only look for a version after the write that
    /// carries it is published (the memtable's own release/acquire), which orders this insert
    /// first. The array being built is read before the current one: an insert that finds
    /// none being built sees the array a growth made current ([`Self::finish_growth`] makes it
    /// current before it stops building).
    pub(crate) fn insert(&self, key: u64) {
        let growing = self.growing.load(Ordering::Acquire);
        if let Some(bits) = self.arrays.get(growing).and_then(OnceLock::get) {
            bits.insert(key);
        }
        if let Some(bits) = self.current() {
            bits.insert(key);
        }
    }

    /// `false` only if `key` was never added.
    pub(crate) fn may_hold(&self, key: u64) -> bool {
        self.current().is_none_or(|bits| bits.may_hold(key))
    }

    /// Starts loading the line `may_hold(key)` reads.
    pub(crate) fn prefetch(&self, key: u64) {
        if let Some(bits) = self.current() {
            bits.prefetch(key);
        }
    }

    /// If `keys` outgrew the current array, allocates the next one (sized for eight times
    /// `keys`, at most `most`) and returns it, to pass to [`Self::start_growth`]; `None` if
    /// the current array still fits them or is the largest.
    pub(crate) fn outgrown(&self, keys: usize) -> Option<usize> {
        let current = self.current.load(Ordering::Acquire);
        let capacity = self.current()?.capacity;
        if keys <= capacity || capacity >= self.most {
            return None;
        }
        let next = current + 1;
        let slot = self.arrays.get(next)?;
        // An earlier growth that stopped midway (a panic) left its array: filled again.
        slot.get_or_init(|| Bits::new(keys.saturating_mul(GROWTH).min(self.most)));
        Some(next)
    }

    /// Makes inserts fill array `next` too. The caller calls it where no insert is running
    /// (under the memtable's exclusive lock), then adds every key inserted before it with
    /// [`Self::fill`], then calls [`Self::finish_growth`].
    pub(crate) fn start_growth(&self, next: usize) {
        self.growing.store(next, Ordering::Release);
    }

    /// Adds `key`, inserted before the growth started, to array `next`.
    pub(crate) fn fill(&self, next: usize, key: u64) {
        if let Some(bits) = self.arrays.get(next).and_then(OnceLock::get) {
            bits.insert(key);
        }
    }

    /// Makes array `next`, now complete, the one readers probe.
    pub(crate) fn finish_growth(&self, next: usize) {
        self.current.store(next, Ordering::Release);
        self.growing.store(NOT_GROWING, Ordering::Release);
    }

    /// Keys the current array is sized for.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.current().map_or(0, |bits| bits.capacity)
    }
}

/// A filter over a fixed set of keys (a segment's).
#[derive(Debug)]
pub(crate) struct FixedFilter {
    blocks: Box<[Block]>,
}

impl FixedFilter {
    /// The filter of `keys` (sorted; repeats count once).
    pub(crate) fn of(keys: &[u64]) -> Self {
        let distinct =
            usize::from(!keys.is_empty()) + keys.windows(2).filter(|w| w[0] != w[1]).count();
        let count = blocks_for(distinct);
        let mut blocks = Vec::with_capacity(count);
        // Every point read that reaches the segment probes a line of it at random.
        omendb_storage::huge_pages::before_writing(blocks.spare_capacity_mut());
        blocks.resize(count, Block::default());
        for &key in keys {
            let hash = hash(key);
            let block = &mut blocks[block_of(hash, count)];
            for (word, mask) in block.0.iter_mut().zip(masks(hash)) {
                *word |= mask;
            }
        }
        omendb_storage::huge_pages::after_writing(&blocks);
        Self {
            blocks: blocks.into_boxed_slice(),
        }
    }

    /// `false` only if `key` is not among the keys.
    pub(crate) fn may_hold(&self, key: u64) -> bool {
        let hash = hash(key);
        let block = &self.blocks[block_of(hash, self.blocks.len())];
        // Every word is tested, without a branch per word: a branch on a word that missed the
        // cache would be mispredicted half the time, and each misprediction discards the work
        // the CPU had started on the reads after this one.
        let missing = block
            .0
            .iter()
            .zip(masks(hash))
            .fold(0, |missing, (word, mask)| missing | (mask & !word));
        missing == 0
    }

    /// Starts loading the line `may_hold(key)` reads.
    pub(crate) fn prefetch(&self, key: u64) {
        prefetch::line(&raw const self.blocks[block_of(hash(key), self.blocks.len())]);
    }

    /// Bytes of its bit array.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        std::mem::size_of_val(&*self.blocks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The share of 200,000 scattered keys that are not members but pass `may_hold`.
    fn false_positive_rate(member: impl Fn(u64) -> bool, may_hold: impl Fn(u64) -> bool) -> f64 {
        let probes: Vec<u64> = (0..200_000u64)
            .map(|k| k.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
            .filter(|&k| !member(k))
            .collect();
        let passed = probes.iter().filter(|&&k| may_hold(k)).count();
        passed as f64 / probes.len() as f64
    }

    #[test]
    fn members_always_pass_and_about_one_percent_of_others_do() {
        for n in [1u64, 10, 1_000, 100_000, 1_000_000] {
            let keys: Vec<u64> = (0..n).map(|k| k * 3).collect();
            let fixed = FixedFilter::of(&keys);
            let growing = GrowingFilter::new(keys.len(), keys.len());
            for &k in &keys {
                growing.insert(k);
            }
            assert!(
                keys.iter()
                    .all(|&k| fixed.may_hold(k) && growing.may_hold(k))
            );
            let member = |k: u64| k.is_multiple_of(3) && k / 3 < n;
            let rate = false_positive_rate(member, |k| fixed.may_hold(k));
            assert!(rate < 0.015, "{n} keys: {rate} false positives");
            let grown = false_positive_rate(member, |k| growing.may_hold(k));
            assert!((rate - grown).abs() < 1e-12, "same bits, same answers");
            assert_eq!(fixed.bytes(), blocks_for(n as usize) * 64);
        }
    }

    #[test]
    fn the_extreme_keys_and_repeats_are_held() {
        let keys = [0, 0, 0, 1, u64::MAX - 1, u64::MAX, u64::MAX];
        let fixed = FixedFilter::of(&keys);
        assert!(keys.iter().all(|&k| fixed.may_hold(k)));
        let empty = FixedFilter::of(&[]);
        assert_eq!(empty.bytes(), 64);
        assert!(!(0..1_000).any(|k| empty.may_hold(k)));
    }

    #[test]
    fn an_overfilled_growing_filter_keeps_every_key() {
        let filter = GrowingFilter::new(100, 100);
        let keys: Vec<u64> = (0..20_000u64).map(|k| k * 7 + 1).collect();
        for &k in &keys {
            filter.insert(k);
        }
        assert!(keys.iter().all(|&k| filter.may_hold(k)));
    }

    #[test]
    fn concurrent_inserts_are_all_held() {
        let filter = GrowingFilter::new(40_000, 40_000);
        std::thread::scope(|scope| {
            for t in 0..4u64 {
                let filter = &filter;
                scope.spawn(move || {
                    for k in 0..10_000u64 {
                        filter.insert(k * 4 + t);
                    }
                });
            }
        });
        assert!((0..40_000u64).all(|k| filter.may_hold(k)));
        assert!(false_positive_rate(|k| k < 40_000, |k| filter.may_hold(k)) < 0.015);
    }

    /// A growth racing inserts, driven as a memtable's seal drives it (the inserts that ran
    /// before it are copied in; those after go into both arrays): every key stays held, before,
    /// during and after, and the array grows eightfold from the keys that outgrew it, up to
    /// its most.
    #[test]
    fn a_filter_grown_under_concurrent_inserts_keeps_every_key() {
        let filter = GrowingFilter::new(1_000, 100_000);
        assert_eq!(filter.capacity(), 1_000);
        let before: Vec<u64> = (0..5_000u64).map(|k| k * 11).collect();
        before.iter().for_each(|&k| filter.insert(k));
        assert_eq!(filter.outgrown(1_000), None, "within its capacity");
        let next = filter.outgrown(before.len()).unwrap();
        filter.start_growth(next);
        std::thread::scope(|scope| {
            for t in 0..3u64 {
                let filter = &filter;
                scope.spawn(move || {
                    for k in 0..5_000u64 {
                        filter.insert(1_000_000 + k * 3 + t);
                        // Held in the current array all along.
                        assert!(filter.may_hold(1_000_000 + k * 3 + t));
                    }
                });
            }
            for &k in &before {
                filter.fill(next, k);
            }
        });
        assert!(before.iter().all(|&k| filter.may_hold(k)));
        filter.finish_growth(next);
        assert_eq!(filter.capacity(), 40_000);
        assert!(before.iter().all(|&k| filter.may_hold(k)));
        assert!((1_000_000..1_015_000u64).all(|k| filter.may_hold(k)));
        let member =
            |k: u64| (k.is_multiple_of(11) && k < 55_000) || (1_000_000..1_015_000).contains(&k);
        assert!(false_positive_rate(member, |k| filter.may_hold(k)) < 0.015);
        // Inserts after the growth go into the new array alone, and are held.
        filter.insert(7);
        assert!(filter.may_hold(7));
        // Grown again, to its most, and no further.
        let next = filter.outgrown(60_000).unwrap();
        filter.start_growth(next);
        let all = before
            .iter()
            .copied()
            .chain(1_000_000..1_015_000)
            .chain([7]);
        all.clone().for_each(|k| filter.fill(next, k));
        filter.finish_growth(next);
        assert_eq!(filter.capacity(), 100_000);
        assert!(all.clone().all(|k| filter.may_hold(k)));
        assert_eq!(filter.outgrown(10_000_000), None);
    }

    #[test]
    fn a_prefetch_changes_no_answer() {
        let keys: Vec<u64> = (0..1_000u64).map(|k| k * 5).collect();
        let fixed = FixedFilter::of(&keys);
        let growing = GrowingFilter::new(keys.len(), keys.len());
        keys.iter().for_each(|&k| growing.insert(k));
        let answers = |f: &dyn Fn(u64) -> bool| (0..5_000u64).map(f).collect::<Vec<_>>();
        let before = answers(&|k| fixed.may_hold(k));
        assert_eq!(before, answers(&|k| growing.may_hold(k)));
        for k in (0..5_000).chain([u64::MAX]) {
            fixed.prefetch(k);
            growing.prefetch(k);
        }
        assert_eq!(before, answers(&|k| fixed.may_hold(k)));
        assert_eq!(before, answers(&|k| growing.may_hold(k)));
        assert!(keys.iter().all(|&k| before[k as usize]));
    }
}
