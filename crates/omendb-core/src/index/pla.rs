//! An ε-bounded piecewise-linear index (PGM-style segments under a radix table).
//!
//! One streaming pass over the sorted keys cuts them into segments with the shrinking-cone
//! method: a segment is anchored at its first key's first position and grows while some slope
//! keeps every answer a lookup can give within ε of the line (each distinct key's first position,
//! and past a run of equal keys where the key after it is absent); when no slope can, a new
//! segment starts. A run of equal keys always stays in one segment, so segments start at distinct
//! keys. The bound stored is the largest error measured over every query a segment can be asked
//! (each distinct key, and the absent key after each run, which bounds the absent keys up to the
//! next present one) with the very prediction the lookup computes (clamped to the segment's
//! positions), so rounding can widen it by a position or two but never make it wrong; long runs
//! of duplicates do not widen it.
//!
//! A lookup finds its segment through a radix table over `key - first key` in a floating-point
//! layout (the position of the highest set bit, then the next `radix_bits` bits): every scale of
//! the key range gets the same number of buckets, so skewed data (lognormal, outliers) spreads
//! over the table as evenly as uniform data does. Bucket `b` stores the last segment whose first
//! key is at or below the bucket's smallest key; a key's segment lies between its bucket's entry
//! and the next one's, and is found by a short search of the segments' first keys. A lookup is
//! then three dependent reads: the table entry, the candidate segment records (first key and
//! line together), the keys.

use super::codec::{Reader, Writer};
use super::search::{self, SCAN_CACHED, SCAN_MAX, lower_bound_in};
use super::{
    IndexError, IndexKind, IndexStats, KeySet, LearnedIndex, MODEL_READ, Window, position,
    search_cost, validate_keys,
};
use crate::prefetch;

/// ε values the tuner tries, in order of preference when their costs tie.
const EPSILONS: [usize; 3] = [32, 16, 64];
/// Bytes per segment record.
const SEGMENT_BYTES: usize = 24;
/// Bytes per radix table entry.
const ENTRY_BYTES: usize = 4;
/// Range of the radix table's mantissa bits.
const MIN_RADIX_BITS: u32 = 2;
const MAX_RADIX_BITS: u32 = 16;
/// Queries in flight in one stage of a batched lookup.
const BATCH: usize = 16;
/// Expected cost of a lookup whose every search is counted: table entry, segment records and
/// keys, three dependent reads (two of them in the model's arrays).
const FLOOR_COST: f64 = 2.0 * MODEL_READ + 1.0;
/// Lines of a window prefetched in a batched lookup.
const BATCH_PREFETCH_LINES: usize = 16;

/// A segment: `position = start + slope * (key - first)`, clamped to `start..=end`. First key and
/// line share one 24-byte record, so the search among a bucket's candidates also brings in the
/// line it picks.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
struct Segment {
    first: u64,
    slope: f64,
    start: u32,
    end: u32,
}

const EMPTY_SEGMENT: Segment = Segment {
    first: 0,
    slope: 0.0,
    start: 0,
    end: 0,
};

#[inline(always)]
fn predict(line: &Segment, key: u64) -> usize {
    let offset = key.saturating_sub(line.first) as f64 * line.slope;
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

/// The smallest key after the run that ends at `run_end` if it is absent (then a query of it,
/// and of every key up to the next present one, answers `run_end`); `None` if the next key is
/// present (or the run's key is `u64::MAX`).
fn absent_after(keys: &[u64], run_end: usize) -> Option<u64> {
    let after = keys.get(run_end.checked_sub(1)?)?.checked_add(1)?;
    match keys.get(run_end) {
        Some(&next) if next == after => None,
        _ => Some(after),
    }
}

/// The largest errors of `segment`'s lookups, over every query routed to it (keys from its first
/// up to the next segment's): how far a prediction may exceed the answer (`lo`), and how far the
/// answer may exceed the prediction (`hi`). Predictions grow with the key, so each distinct key's
/// first position and, where the key after it is absent, that key's prediction, bound every
/// query.
fn errors(keys: &[u64], start: usize, end: usize, segment: &Segment) -> (usize, usize) {
    let (mut lo, mut hi) = (0usize, 0usize);
    let mut at = start;
    while at < end {
        let key = keys[at];
        let run = run_end(keys, at);
        let pred = predict(segment, key);
        lo = lo.max(pred.saturating_sub(at));
        hi = hi.max(at.saturating_sub(pred));
        if let Some(next) = absent_after(keys, run) {
            hi = hi.max(run.saturating_sub(predict(segment, next)));
        }
        at = run;
    }
    (lo, hi)
}

/// Index in `segments` of the last one whose first key is `<= key` (0 if none is): bisection down
/// to a few records, then a count.
#[inline(always)]
fn last_at_or_below(segments: &[Segment], key: u64) -> usize {
    let mut size = segments.len();
    // Invariant: the number of segments with `first <= key` lies in `base..=base + size`.
    let mut base = 0usize;
    while size > SCAN_CACHED {
        let half = size / 2;
        let mid = base + half;
        let at_or_below = segments.get(mid).is_some_and(|s| s.first <= key);
        base = if at_or_below { mid } else { base };
        size -= half;
    }
    let tail = segments.get(base..base + size).unwrap_or(&[]);
    let count = base
        + tail
            .iter()
            .map(|s| usize::from(s.first <= key))
            .sum::<usize>();
    count.saturating_sub(1)
}

/// The radix bucket of an offset `d` from the first key: offsets below `2^bits` are their own
/// bucket; above, the bucket is the highest set bit's position and the next `bits` bits, like
/// a floating-point number's exponent and mantissa. Monotone in `d`.
#[inline(always)]
fn bucket(d: u64, bits: u32) -> usize {
    if d < 1 << bits {
        return d as usize;
    }
    let exponent = 63 - d.leading_zeros();
    let mantissa = (d >> (exponent - bits)) & ((1 << bits) - 1);
    (((exponent - bits + 1) as usize) << bits) | mantissa as usize
}

/// The smallest offset in bucket `b`, the inverse of [`bucket`].
fn bucket_floor(b: usize, bits: u32) -> u64 {
    if b < 1 << bits {
        return b as u64;
    }
    let exponent = (b >> bits) as u32 + bits - 1;
    let mantissa = (b & ((1 << bits) - 1)) as u64;
    (1u64 << exponent) | (mantissa << (exponent - bits))
}

/// A PGM-style ε-bounded piecewise-linear index; see the module documentation.
#[derive(Debug, Clone, PartialEq)]
pub struct Pla {
    keys: KeySet,
    epsilon: u32,
    radix_bits: u32,
    err_lo: u32,
    err_hi: u32,
    /// The segments, first keys strictly increasing; never empty.
    segments: Vec<Segment>,
    /// One entry per radix bucket plus a final one: the last segment whose first key is at or
    /// below the bucket's smallest key. Non-decreasing; at least two entries.
    table: Vec<u32>,
    /// Finer tables for the buckets that hold more than [`SPAN_MAX`] segment starts, sorted by
    /// bucket; their entries live in `sub_entries`.
    subs: Vec<Sub>,
    sub_entries: Vec<u32>,
}

/// A finer radix table over one crowded bucket: `2^bits` equal slices of the key range its
/// segments start in (not the whole bucket, which crowded data often fills only in part), each
/// entry the last segment whose first key is at or below the slice's smallest key, then the
/// bucket's upper entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sub {
    bucket: u32,
    bits: u32,
    /// Slices are `2^shift` offsets wide.
    shift: u32,
    /// Index of the first entry in `sub_entries`; there are `2^bits + 1`.
    offset: u32,
    /// Offset (from the first key) where slicing starts: the first key of the first segment
    /// that starts inside the bucket. Keys of the bucket below it belong to the bucket's first
    /// candidate.
    base: u64,
}

/// Buckets whose candidates span more segments than this get a [`Sub`] table.
const SPAN_MAX: usize = 8;
/// Largest sub-table: `2^12` slices.
const MAX_SUB_BITS: u32 = 12;

impl Pla {
    /// Builds with the ε (16, 32 or 64, wider if the budget forces it) and radix table that give
    /// the smallest expected search cost within `max_bytes`.
    pub fn build(keys: &[u64], max_bytes: usize) -> Result<Self, IndexError> {
        validate_keys(keys)?;
        Ok(Self::best_epsilon(keys, max_bytes, &|| false)
            .unwrap_or_else(|| Self::widened(keys, max_bytes)))
    }

    /// [`Self::build`], unless `stop` returns true before it is done (asked before each of its
    /// training passes): then `None`. The chooser trains a PLA this way beside an RMI that may
    /// make it useless.
    pub(crate) fn build_unless(
        keys: &[u64],
        max_bytes: usize,
        stop: &dyn Fn() -> bool,
    ) -> Result<Option<Self>, IndexError> {
        validate_keys(keys)?;
        Ok(match Self::best_epsilon(keys, max_bytes, stop) {
            Some(pla) => Some(pla),
            None if stop() => None,
            None => Some(Self::widened(keys, max_bytes)),
        })
    }

    /// The best of ε = 16, 32 and 64 within `max_bytes`; `None` if none fits, or if `stop`
    /// returned true before a pass.
    fn best_epsilon(keys: &[u64], max_bytes: usize, stop: &dyn Fn() -> bool) -> Option<Self> {
        let mut best: Option<(f64, Pla)> = None;
        for epsilon in EPSILONS {
            if stop() {
                return None;
            }
            let pla = Self::train(keys, epsilon, max_bytes);
            let stats = pla.stats();
            if stats.size_bytes > max_bytes {
                continue;
            }
            if best
                .as_ref()
                .is_none_or(|(c, _)| stats.expected_cost < c - 0.1)
            {
                best = Some((stats.expected_cost, pla));
            }
        }
        best.map(|(_, pla)| pla)
    }

    /// Even ε = 64 is too big: widens until the segments fit (one segment always does).
    fn widened(keys: &[u64], max_bytes: usize) -> Self {
        let mut epsilon = EPSILONS[2];
        loop {
            epsilon = epsilon.saturating_mul(4);
            let pla = Self::train(keys, epsilon, max_bytes);
            if pla.stats().size_bytes <= max_bytes || epsilon >= keys.len() {
                return pla;
            }
        }
    }

    /// Builds with exactly this ε (at least 1), with a radix table within `max_bytes` if the
    /// segments leave room for one (the smallest table otherwise).
    pub fn build_with_epsilon(
        keys: &[u64],
        epsilon: usize,
        max_bytes: usize,
    ) -> Result<Self, IndexError> {
        validate_keys(keys)?;
        Ok(Self::train(keys, epsilon.max(1), max_bytes))
    }

    fn train(keys: &[u64], epsilon: usize, max_bytes: usize) -> Self {
        let mut pla = Pla {
            keys: KeySet::of(keys),
            epsilon: position(epsilon),
            radix_bits: MIN_RADIX_BITS,
            err_lo: 0,
            err_hi: 0,
            segments: Vec::new(),
            table: Vec::new(),
            subs: Vec::new(),
            sub_entries: Vec::new(),
        };
        pla.fit(keys, epsilon);
        let range = pla.keys.last - pla.keys.first;
        let fixed = std::mem::size_of::<Self>() + pla.segments.len() * SEGMENT_BYTES;
        let room = max_bytes.saturating_sub(fixed) / ENTRY_BYTES;
        // The finest table that fits, but no finer than needed to give each segment its own
        // buckets: beyond that, more buckets only cost cache space.
        let useful = pla.segments.len().saturating_mul(16).max(1024);
        pla.radix_bits = (MIN_RADIX_BITS..=MAX_RADIX_BITS)
            .rev()
            .find(|&bits| {
                let entries = bucket(range, bits) + 2;
                entries <= room && entries <= useful * 4
            })
            .unwrap_or(MIN_RADIX_BITS);
        loop {
            pla.table = build_table(&pla.segments, pla.keys.first, range, pla.radix_bits);
            pla.build_subs();
            if pla.radix_bits == MIN_RADIX_BITS || pla.size_bytes() <= max_bytes {
                break;
            }
            // The sub-tables pushed the model over its budget: a coarser top table.
            pla.radix_bits -= 1;
        }
        pla
    }

    /// Builds a [`Sub`] table for every crowded bucket.
    fn build_subs(&mut self) {
        self.subs.clear();
        self.sub_entries.clear();
        let buckets = self.table.len().saturating_sub(1);
        for b in 0..buckets {
            let (lo, hi) = (self.table[b] as usize, self.table[b + 1] as usize);
            if hi - lo <= SPAN_MAX {
                continue;
            }
            let base = self.segments[lo + 1].first - self.keys.first;
            let extent = self.segments[hi].first - self.keys.first - base;
            let extent_bits = u64::BITS - extent.leading_zeros();
            // About four slices per segment start: crowded buckets are often crowded inside too.
            let want = usize::BITS - (hi - lo).leading_zeros() + 2;
            let bits = want.min(MAX_SUB_BITS).min(extent_bits.max(1));
            let shift = extent_bits.saturating_sub(bits);
            let floor = self.keys.first + base;
            self.subs.push(Sub {
                bucket: position(b),
                bits,
                shift,
                offset: position(self.sub_entries.len()),
                base,
            });
            let mut at_or_below = lo;
            for slice in 0..1u64 << bits {
                // Slices past the extent may reach past u64::MAX; no segment starts there, and a
                // saturated floor keeps the entries non-decreasing. A saturated floor is at or
                // above every later bucket's segments too, so the walk stops at this bucket's
                // last candidate (`hi`): entries stay within `lo..=hi`.
                let slice_floor = floor.saturating_add(slice << shift);
                while at_or_below <= hi && self.segments[at_or_below].first <= slice_floor {
                    at_or_below += 1;
                }
                self.sub_entries
                    .push(position(at_or_below.saturating_sub(1).clamp(lo, hi)));
            }
            self.sub_entries.push(position(hi));
        }
    }

    fn size_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.segments.len() * SEGMENT_BYTES
            + (self.table.len() + self.sub_entries.len()) * ENTRY_BYTES
            + self.subs.len() * std::mem::size_of::<Sub>()
    }

    /// Cuts `keys` into ε-bounded segments.
    ///
    /// A lookup's answer is the first position of a present key, and for an absent key the first
    /// position of the next larger one: only those positions constrain the line, not every
    /// position of a run of equal keys (a thousand versions of one key made every window of the
    /// model a thousand wide when they did). The line must hold, within ε, each distinct key's
    /// first position, and, where the key after it is absent, be past the run at that key: the
    /// absent keys' answers. A run too long for the line of its neighbours starts a segment of its
    /// own, whose slope steps over it.
    fn fit(&mut self, keys: &[u64], epsilon: usize) {
        let n = keys.len();
        if n == 0 {
            self.segments.push(EMPTY_SEGMENT);
            return;
        }
        let eps = epsilon as f64;
        let (mut max_lo, mut max_hi) = (0usize, 0usize);
        let mut start = 0usize;
        while start < n {
            let base = keys[start];
            let mut end = run_end(keys, start);
            // The base run: its first position is the line's anchor; the keys after it must be
            // predicted past it.
            let mut smin = match absent_after(keys, end) {
                Some(next) => ((end - start) as f64 - eps).max(0.0) / (next - base) as f64,
                None => 0.0,
            };
            let mut smax = f64::INFINITY;
            while end < n {
                let key = keys[end];
                let run = run_end(keys, end);
                let dx = (key - base) as f64;
                let first = (end - start) as f64;
                let (mut lo, hi) = ((first - eps) / dx, (first + eps) / dx);
                if let Some(next) = absent_after(keys, run) {
                    lo = lo.max(((run - start) as f64 - eps) / (next - base) as f64);
                }
                let (new_min, new_max) = (smin.max(lo), smax.min(hi));
                if new_min > new_max {
                    break;
                }
                (smin, smax) = (new_min, new_max);
                end = run;
            }
            // A segment of one run has only a lower bound: its slope steps over the run.
            let slope = if smax.is_finite() {
                (smin + smax) * 0.5
            } else {
                smin
            };
            let segment = Segment {
                first: base,
                slope,
                start: position(start),
                end: position(end),
            };
            let (lo, hi) = errors(keys, start, end, &segment);
            max_lo = max_lo.max(lo);
            max_hi = max_hi.max(hi);
            self.segments.push(segment);
            start = end;
        }
        self.err_lo = position(max_lo);
        self.err_hi = position(max_hi);
    }

    /// The ε the segments were built with.
    pub fn epsilon(&self) -> usize {
        self.epsilon as usize
    }

    /// Number of segments.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Mantissa bits of the radix table.
    pub fn radix_bits(&self) -> u32 {
        self.radix_bits
    }

    /// Segments `lo..=hi` among which `key`'s segment lies, from the radix table.
    #[inline(always)]
    fn candidates(&self, key: u64) -> (usize, usize) {
        let d = key.saturating_sub(self.keys.first);
        // Keys past the last one fall in the last bucket; the table has at least two entries.
        let b = bucket(d, self.radix_bits).min(self.table.len().saturating_sub(2));
        let lo = self.table.get(b).copied().unwrap_or(0) as usize;
        let hi = self.table.get(b + 1).copied().unwrap_or(0) as usize;
        if hi - lo <= SPAN_MAX {
            return (lo, hi);
        }
        self.refine(b, d, lo, hi)
    }

    /// Narrows a crowded bucket's candidates `lo..=hi` with its sub-table, if it has one.
    #[inline]
    fn refine(&self, b: usize, d: u64, lo: usize, hi: usize) -> (usize, usize) {
        let Ok(at) = self.subs.binary_search_by_key(&position(b), |s| s.bucket) else {
            return (lo, hi);
        };
        let Some(sub) = self.subs.get(at) else {
            return (lo, hi);
        };
        if d < sub.base {
            return (lo, lo);
        }
        // Keys past the last slice (and past the last key) are clamped into the last slice.
        let slice = ((d - sub.base) >> sub.shift).min((1u64 << sub.bits) - 1) as usize;
        let entry = sub.offset as usize + slice;
        match (self.sub_entries.get(entry), self.sub_entries.get(entry + 1)) {
            (Some(&l), Some(&h)) => (l as usize, h as usize),
            _ => (lo, hi),
        }
    }

    /// The segment that covers `key`.
    #[inline(always)]
    fn segment(&self, key: u64) -> usize {
        let (lo, hi) = self.candidates(key);
        lo + last_at_or_below(self.segments.get(lo..=hi).unwrap_or(&[]), key)
    }

    #[inline(always)]
    fn segment_window(&self, segment: usize, key: u64) -> Window {
        let line = self.segments.get(segment).unwrap_or(&EMPTY_SEGMENT);
        let pred = predict(line, key);
        Window {
            lo: pred
                .saturating_sub(self.err_lo as usize)
                .max(line.start as usize),
            hi: pred
                .saturating_add(self.err_hi as usize)
                .min(line.end as usize),
        }
    }

    pub(crate) fn decode_payload(keys: KeySet, r: &mut Reader<'_>) -> Result<Self, IndexError> {
        let epsilon = r.u32()?;
        let radix_bits = r.u32()?;
        if !(MIN_RADIX_BITS..=MAX_RADIX_BITS).contains(&radix_bits) {
            return Err(IndexError::corrupt(format!("PLA radix bits {radix_bits}")));
        }
        let err_lo = r.u32()?;
        let err_hi = r.u32()?;
        let count = r.count(SEGMENT_BYTES)?;
        if count == 0 {
            return Err(IndexError::corrupt("PLA has no segments"));
        }
        let mut segments: Vec<Segment> = Vec::with_capacity(count);
        let mut expected_start = 0u32;
        for _ in 0..count {
            let line = Segment {
                first: r.u64()?,
                slope: r.slope()?,
                start: r.u32()?,
                end: r.u32()?,
            };
            if line.start != expected_start || line.end < line.start {
                return Err(IndexError::corrupt(
                    "PLA segments do not tile the positions",
                ));
            }
            if segments.last().is_some_and(|prev| prev.first >= line.first) {
                return Err(IndexError::corrupt("PLA first keys are not increasing"));
            }
            expected_start = line.end;
            segments.push(line);
        }
        if u64::from(expected_start) != keys.len {
            return Err(IndexError::corrupt("PLA segments do not cover every key"));
        }
        let entries = r.count(ENTRY_BYTES)?;
        if entries != bucket(keys.last - keys.first, radix_bits) + 2 {
            return Err(IndexError::corrupt("PLA radix table has the wrong size"));
        }
        let mut table = Vec::with_capacity(entries);
        for _ in 0..entries {
            let entry = r.u32()?;
            if entry as usize >= count || table.last().is_some_and(|&prev| prev > entry) {
                return Err(IndexError::corrupt("PLA radix table entry out of order"));
            }
            table.push(entry);
        }
        if table.last().is_some_and(|&last| last as usize != count - 1) {
            return Err(IndexError::corrupt(
                "PLA radix table does not end at the last segment",
            ));
        }
        let sub_count = r.count(20)?;
        let mut subs: Vec<Sub> = Vec::with_capacity(sub_count);
        let mut offset = 0usize;
        for _ in 0..sub_count {
            let bucket = r.u32()?;
            let bits = r.u32()?;
            let shift = r.u32()?;
            let base = r.u64()?;
            let b = bucket as usize;
            if b + 1 >= table.len()
                || subs.last().is_some_and(|prev| prev.bucket >= bucket)
                || bits == 0
                || bits > MAX_SUB_BITS
                || shift >= u64::BITS
            {
                return Err(IndexError::corrupt("PLA sub-table header out of range"));
            }
            subs.push(Sub {
                bucket,
                bits,
                shift,
                offset: position(offset),
                base,
            });
            offset += (1usize << bits) + 1;
        }
        let sub_entry_count = r.count(ENTRY_BYTES)?;
        if sub_entry_count != offset {
            return Err(IndexError::corrupt("PLA sub-tables have the wrong size"));
        }
        let mut sub_entries = Vec::with_capacity(sub_entry_count);
        for _ in 0..sub_entry_count {
            sub_entries.push(r.u32()?);
        }
        for sub in &subs {
            let b = sub.bucket as usize;
            let (lo, hi) = (table[b], table[b + 1]);
            let start = sub.offset as usize;
            let entries = &sub_entries[start..start + (1usize << sub.bits) + 1];
            let ordered = entries.windows(2).all(|w| w[0] <= w[1]);
            let inside = entries.iter().all(|&e| lo <= e && e <= hi);
            if !ordered || !inside || entries.last() != Some(&hi) {
                return Err(IndexError::corrupt("PLA sub-table entries out of order"));
            }
        }
        r.finish()?;
        Ok(Pla {
            keys,
            epsilon,
            radix_bits,
            err_lo,
            err_hi,
            segments,
            table,
            subs,
            sub_entries,
        })
    }
}

/// The radix table over `segments` for keys `first ..= first + range`.
fn build_table(segments: &[Segment], first: u64, range: u64, bits: u32) -> Vec<u32> {
    let buckets = bucket(range, bits) + 1;
    let mut table = Vec::with_capacity(buckets + 1);
    let mut at_or_below = 0usize;
    for b in 0..buckets {
        // `bucket_floor(b) <= range` for every bucket up to `range`'s own, so this cannot wrap.
        let floor = first + bucket_floor(b, bits);
        while at_or_below < segments.len() && segments[at_or_below].first <= floor {
            at_or_below += 1;
        }
        table.push(position(at_or_below.saturating_sub(1)));
    }
    table.push(position(segments.len().saturating_sub(1)));
    table
}

impl LearnedIndex for Pla {
    fn kind(&self) -> IndexKind {
        IndexKind::Pla
    }

    fn key_set(&self) -> KeySet {
        self.keys
    }

    #[inline(always)]
    fn window(&self, key: u64) -> Window {
        self.segment_window(self.segment(key), key)
    }

    #[inline(always)]
    fn prefetch(&self, key: u64) {
        let d = key.saturating_sub(self.keys.first);
        let b = bucket(d, self.radix_bits).min(self.table.len().saturating_sub(2));
        prefetch::line(self.table.as_ptr().wrapping_add(b));
    }

    #[inline(always)]
    fn lower_bound(&self, keys: &[u64], key: u64) -> usize {
        lower_bound_in(keys, self.window(key), key)
    }

    fn lower_bound_batch(&self, keys: &[u64], queries: &[u64], out: &mut Vec<usize>) {
        out.clear();
        out.reserve(queries.len());
        let mut at = [0usize; BATCH];
        let mut windows = [Window { lo: 0, hi: 0 }; BATCH];
        let last_bucket = self.table.len().saturating_sub(2);
        for chunk in queries.chunks(BATCH) {
            // Stage 1: the radix table entries.
            for (b, &q) in at.iter_mut().zip(chunk) {
                let d = q.saturating_sub(self.keys.first);
                *b = bucket(d, self.radix_bits).min(last_bucket);
                prefetch::line(self.table.as_ptr().wrapping_add(*b));
            }
            // Stage 2: the candidate segments.
            for ((w, &b), &q) in windows.iter_mut().zip(&at).zip(chunk) {
                let lo = self.table.get(b).copied().unwrap_or(0) as usize;
                let hi = self.table.get(b + 1).copied().unwrap_or(0) as usize;
                let (lo, hi) = if hi - lo <= SPAN_MAX {
                    (lo, hi)
                } else {
                    self.refine(b, q.saturating_sub(self.keys.first), lo, hi)
                };
                *w = Window { lo, hi };
                prefetch::line(self.segments.as_ptr().wrapping_add(lo));
            }
            // Stage 3: the segment.
            for ((s, w), &q) in at.iter_mut().zip(&windows).zip(chunk) {
                let candidates = self.segments.get(w.lo..=w.hi).unwrap_or(&[]);
                *s = w.lo + last_at_or_below(candidates, q);
            }
            // Stage 4: the key windows.
            for ((w, &s), &q) in windows.iter_mut().zip(&at).zip(chunk) {
                *w = self.segment_window(s, q);
                prefetch::window(keys, w.lo, w.hi, BATCH_PREFETCH_LINES);
            }
            // Stage 5: the answers.
            for (w, &q) in windows.iter().zip(chunk) {
                out.push(search::lower_bound_prefetched::<SCAN_MAX>(keys, *w, q));
            }
        }
    }

    fn stats(&self) -> IndexStats {
        let n = self.keys.len as usize;
        let window = (self.err_lo as usize + self.err_hi as usize).min(n);
        // The segments' searches among first keys, weighted by the keys each segment holds.
        let mut table_cost = 0.0;
        for line in &self.segments {
            let (lo, hi) = self.candidates(line.first);
            let d = line.first.saturating_sub(self.keys.first);
            let b = bucket(d, self.radix_bits).min(self.table.len().saturating_sub(2));
            let crowded = self
                .table
                .get(b + 1)
                .zip(self.table.get(b))
                .is_some_and(|(h, l)| (h - l) as usize > SPAN_MAX);
            let sub_read = if crowded { 1.0 } else { 0.0 };
            table_cost += f64::from(line.end - line.start) * (sub_read + search_cost(hi - lo + 1));
        }
        // The sub-table and the first keys are the model's own arrays.
        let table_cost = MODEL_READ * table_cost / n.max(1) as f64;
        IndexStats {
            size_bytes: self.size_bytes(),
            mean_window: window as f64,
            max_window: window,
            expected_cost: FLOOR_COST + table_cost + search_cost(window),
            levels: 2,
        }
    }

    fn encode_payload(&self, out: &mut Vec<u8>) {
        out.put_u32(self.epsilon);
        out.put_u32(self.radix_bits);
        out.put_u32(self.err_lo);
        out.put_u32(self.err_hi);
        out.put_u32(position(self.segments.len()));
        for line in &self.segments {
            out.put_u64(line.first);
            out.put_f64(line.slope);
            out.put_u32(line.start);
            out.put_u32(line.end);
        }
        out.put_u32(position(self.table.len()));
        for &entry in &self.table {
            out.put_u32(entry);
        }
        out.put_u32(position(self.subs.len()));
        for sub in &self.subs {
            out.put_u32(sub.bucket);
            out.put_u32(sub.bits);
            out.put_u32(sub.shift);
            out.put_u64(sub.base);
        }
        out.put_u32(position(self.sub_entries.len()));
        for &entry in &self.sub_entries {
            out.put_u32(entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::index::testing::{assert_exact, probe_keys};

    fn check(keys: &[u64], pla: &Pla) {
        assert_exact(keys, pla);
        for q in probe_keys(keys) {
            let (lo, hi) = pla.candidates(q);
            let segment = pla
                .segments
                .partition_point(|s| s.first <= q)
                .saturating_sub(1);
            assert!(
                lo <= segment && segment <= hi,
                "key {q}: segment {segment} not in {lo}..={hi}"
            );
        }
    }

    #[test]
    fn every_epsilon_and_table_size_is_exact_on_edge_cases() {
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
                for bytes in [0, 1000, 100_000] {
                    check(keys, &Pla::build_with_epsilon(keys, eps, bytes).unwrap());
                }
            }
            check(keys, &Pla::build(keys, 4096).unwrap());
        }
    }

    #[test]
    fn regression_sub_table_slices_past_u64_max_do_not_overflow() {
        // A crowded last bucket whose slices reach past u64::MAX (found by the 1M-key test).
        // The last bucket starts just above `first + 2^62` and is 2^(62 - bits) wide, far past
        // u64::MAX; the dense keys crowd it.
        let first = u64::MAX - (1 << 62) - (1 << 40);
        let mut keys: Vec<u64> = (0..20_000u64)
            .map(|i| first + (1 << 62) + i * i * 3)
            .collect();
        keys.insert(0, first);
        for eps in [1, 4] {
            let pla = Pla::build_with_epsilon(&keys, eps, 1 << 20).unwrap();
            assert!(!pla.subs.is_empty(), "the case must exercise a sub-table");
            check(&keys, &pla);
        }
    }

    #[test]
    fn sub_table_entries_stay_inside_their_bucket_near_u64_max() {
        // The bug this guards against was found by the proptest `arbitrary_keys_with_duplicates`
        // (its failing case is pinned in `tests/index_matches_partition_point.proptest-
        // regressions`, which replays it first): a crowded bucket whose slices saturate at
        // u64::MAX, followed by segments in later buckets; the saturated floor is above all of
        // them, the entries ran past the bucket's last candidate, and the model did not decode
        // ("sub-table entries out of order"). This case checks the same invariant on keys
        // crowded at both ends.
        let mut keys: Vec<u64> = Vec::new();
        for i in 0..64u64 {
            keys.extend(std::iter::repeat_n(i, 1 + (i % 5) as usize));
        }
        for i in 0..60u64 {
            keys.extend(std::iter::repeat_n(
                i * 17_000_000 + 4_837_000,
                1 + (i % 4) as usize,
            ));
        }
        for i in 0..40u64 {
            keys.push(i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 1);
        }
        for i in 0..64u64 {
            keys.extend(std::iter::repeat_n(u64::MAX - i, 1 + (i % 7) as usize));
        }
        keys.sort_unstable();
        for (epsilon, budget) in [(1, 5379), (1, 1 << 16), (2, 5379)] {
            let pla = Pla::build_with_epsilon(&keys, epsilon, budget).unwrap();
            for sub in &pla.subs {
                let (lo, hi) = (
                    pla.table[sub.bucket as usize],
                    pla.table[sub.bucket as usize + 1],
                );
                let entries = &pla.sub_entries[sub.offset as usize..][..(1usize << sub.bits) + 1];
                assert!(
                    entries.iter().all(|&e| lo <= e && e <= hi),
                    "ε {epsilon}: {entries:?} not in {lo}..={hi}"
                );
            }
            check(&keys, &pla);
            let decoded = crate::index::AnyIndex::decode(&pla.encode());
            assert!(decoded.is_ok(), "ε {epsilon}: {decoded:?}");
        }
    }

    #[test]
    fn buckets_are_monotone_and_invert() {
        for bits in [MIN_RADIX_BITS, 5, 12, MAX_RADIX_BITS] {
            let mut prev = 0;
            for shift in 0..64 {
                for d in [
                    1u64 << shift,
                    (1u64 << shift) + 1,
                    (1u64 << shift).wrapping_sub(1),
                ] {
                    let b = bucket(d, bits);
                    assert!(bucket_floor(b, bits) <= d, "bits {bits} d {d}");
                    assert_eq!(bucket(bucket_floor(b, bits), bits), b);
                    if shift > 0 {
                        assert!(b >= prev || d < 1 << shift);
                    }
                }
                prev = bucket(1u64 << shift, bits);
            }
            assert!(bucket(u64::MAX, bits) >= bucket(u64::MAX - 1, bits));
        }
    }

    #[test]
    fn bounds_stay_within_epsilon_for_distinct_keys() {
        let keys: Vec<u64> = (0..200_000u64).map(|i| i * i / 7 + i * 3).collect();
        for eps in [4, 16, 64] {
            let pla = Pla::build_with_epsilon(&keys, eps, 1 << 20).unwrap();
            assert!(
                pla.err_lo as usize <= eps + 1,
                "eps {eps}: lo {}",
                pla.err_lo
            );
            assert!(
                pla.err_hi as usize <= eps + 2,
                "eps {eps}: hi {}",
                pla.err_hi
            );
        }
    }

    /// Long runs of one key (a hot key's versions in a segment) do not widen the bound: only a
    /// run's first position and the answer for the absent keys after it are lookups' answers.
    /// Every position of a run used to count, so a 1000-long run made every window 1000 wide.
    #[test]
    fn bounds_stay_within_epsilon_over_long_runs_of_duplicates() {
        let dense: Vec<u64> = std::iter::repeat_n(5, 1000).chain(6..100_006).collect();
        let sparse: Vec<u64> = (0..50_000u64)
            .flat_map(|i| {
                let copies = if i % 5000 == 17 {
                    3000
                } else {
                    1 + (i % 3) as usize
                };
                std::iter::repeat_n(i * 1000, copies)
            })
            .chain([u64::MAX; 500])
            .collect();
        for keys in [dense, sparse] {
            for eps in [4, 16, 64] {
                let pla = Pla::build_with_epsilon(&keys, eps, 1 << 20).unwrap();
                assert!(
                    pla.err_lo as usize <= eps + 1,
                    "eps {eps}: lo {}",
                    pla.err_lo
                );
                assert!(
                    pla.err_hi as usize <= eps + 2,
                    "eps {eps}: hi {}",
                    pla.err_hi
                );
                check(&keys, &pla);
            }
        }
    }

    #[test]
    fn the_model_stays_within_its_budget() {
        let keys: Vec<u64> = (0..100_000u64).map(|i| i * i).collect();
        for budget in [4096, 20_000, 200_000] {
            let pla = Pla::build(&keys, budget).unwrap();
            assert!(
                pla.stats().size_bytes <= budget,
                "{budget}: {:?}",
                pla.stats()
            );
            check(&keys, &pla);
        }
    }
}
