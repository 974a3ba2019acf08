//! The memtable: one table's recent writes, ordered by (key, LSN newest first), readable at any
//! snapshot while writers go on (see `docs/rfcs/0001-engine.md`).
//!
//! It is a lock-free skip list (`crossbeam-skiplist`), so readers never wait for writers. Rows are
//! opaque bytes here (the engine encodes them); a deletion is a tombstone version of the key, and
//! a range deletion a separate tombstone that hides every older version of the keys it covers.
//! A read at snapshot `s` sees exactly the versions with LSN ≤ `s`, provided every write with an
//! LSN ≤ `s` has been applied: the engine reads only at snapshots up to its visible LSN, which it
//! raises once all lower LSNs are applied (a reader at a higher snapshot could see half a batch).

use std::ops::{Bound, RangeBounds, RangeInclusive};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use crossbeam_skiplist::SkipMap;

use crate::filter::GrowingFilter;

mod cut;
mod generation;

pub use generation::Generation;

/// A log sequence number: the order of committed write batches.
pub type Lsn = u64;

/// Bytes an entry costs beyond its row, for the memtable's size (skip-list node, key, LSN).
const ENTRY_OVERHEAD: usize = 64;

/// What the memtable knows about a key at a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The newest visible version is this row (written at `lsn`).
    Found {
        /// The row.
        row: Bytes,
        /// The LSN that wrote it.
        lsn: Lsn,
    },
    /// The newest visible version deletes the key (at `lsn`): older layers must not be read.
    Deleted {
        /// The LSN of the deletion.
        lsn: Lsn,
    },
    /// The memtable holds no visible version: older layers decide.
    Absent,
}

/// A version's place in the skip list: key ascending, then LSN descending (newest first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Version {
    key: u64,
    newest_first: std::cmp::Reverse<Lsn>,
}

impl Version {
    fn new(key: u64, lsn: Lsn) -> Self {
        Self {
            key,
            newest_first: std::cmp::Reverse(lsn),
        }
    }

    fn lsn(self) -> Lsn {
        self.newest_first.0
    }
}

/// One table's recent writes.
#[derive(Debug, Default)]
pub struct Memtable {
    /// Keys with a version, so a point read of a key the memtable never saw skips the skip
    /// list (absent in memtables made without one).
    filter: Option<GrowingFilter>,
    /// Row versions; `None` is a tombstone.
    versions: SkipMap<Version, Option<Bytes>>,
    /// Range tombstones by (first key, LSN newest first, last key): the last key is part of the
    /// entry's key so that two ranges with the same first key and LSN both stay.
    ranges: SkipMap<(Version, u64), ()>,
    bytes: AtomicUsize,
}

impl Memtable {
    /// An empty memtable.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty memtable with a membership filter sized for `expected_keys`.
    pub fn with_filter(expected_keys: usize) -> Self {
        Self {
            filter: Some(GrowingFilter::new(expected_keys)),
            ..Self::default()
        }
    }

    /// Writes `row` as `key`'s version at `lsn`. A second write of the same key at the same
    /// LSN (twice in one write batch) replaces the first.
    pub fn put(&self, key: u64, lsn: Lsn, row: Bytes) {
        // The filter learns the key first: a reader that finds the version may rely on it.
        if let Some(filter) = &self.filter {
            filter.insert(key);
        }
        self.bytes
            .fetch_add(row.len() + ENTRY_OVERHEAD, Ordering::Relaxed);
        self.versions.insert(Version::new(key, lsn), Some(row));
    }

    /// Deletes `key` at `lsn`.
    pub fn delete(&self, key: u64, lsn: Lsn) {
        if let Some(filter) = &self.filter {
            filter.insert(key);
        }
        self.bytes.fetch_add(ENTRY_OVERHEAD, Ordering::Relaxed);
        self.versions.insert(Version::new(key, lsn), None);
    }

    /// Deletes every key in `range` (inclusive, so `u64::MAX` can be covered) at `lsn`.
    /// Versions written at `lsn` itself survive: a write batch, which has one LSN, must not put
    /// into a range it deletes afterwards ([`crate::batch::WriteBatch`] drops such puts).
    pub fn delete_range(&self, range: RangeInclusive<u64>, lsn: Lsn) {
        if range.is_empty() {
            return;
        }
        self.bytes.fetch_add(ENTRY_OVERHEAD, Ordering::Relaxed);
        self.ranges
            .insert((Version::new(*range.start(), lsn), *range.end()), ());
    }

    /// The newest LSN ≤ `snapshot` of a range tombstone covering `key`, if any.
    fn range_deleted(&self, key: u64, snapshot: Lsn) -> Option<Lsn> {
        self.ranges
            .range(..=(Version::new(key, 0), u64::MAX))
            .filter(|entry| key <= entry.key().1 && entry.key().0.lsn() <= snapshot)
            .map(|entry| entry.key().0.lsn())
            .max()
    }

    /// What the memtable says about `key` at `snapshot`.
    pub fn get(&self, key: u64, snapshot: Lsn) -> Lookup {
        if self.ranges.is_empty() && self.filter.as_ref().is_some_and(|f| !f.may_hold(key)) {
            return Lookup::Absent;
        }
        let newest = self
            .versions
            .range(Version::new(key, snapshot)..=Version::new(key, 0))
            .next()
            .map(|entry| (entry.key().lsn(), entry.value().clone()));
        let range_lsn = if self.ranges.is_empty() {
            None
        } else {
            self.range_deleted(key, snapshot)
        };
        match (newest, range_lsn) {
            (Some((lsn, _)), Some(deleted)) if deleted > lsn => Lookup::Deleted { lsn: deleted },
            (Some((lsn, Some(row))), _) => Lookup::Found { row, lsn },
            (Some((lsn, None)), _) => Lookup::Deleted { lsn },
            (None, Some(deleted)) => Lookup::Deleted { lsn: deleted },
            (None, None) => Lookup::Absent,
        }
    }

    /// Every key in `range` with a visible version at `snapshot`, in key order, with what the
    /// memtable says about it (deletions included, so a merge with older layers can hide them).
    /// Keys only covered by a range tombstone are not listed: ask [`Memtable::get`], or use
    /// [`Memtable::range_tombstones`] in the merge.
    pub fn scan(
        &self,
        range: impl RangeBounds<u64>,
        snapshot: Lsn,
    ) -> impl Iterator<Item = (u64, Lookup)> + '_ {
        let start = match range.start_bound() {
            Bound::Included(&k) => Bound::Included(Version::new(k, Lsn::MAX)),
            Bound::Excluded(&k) => Bound::Excluded(Version::new(k, 0)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(&k) => Bound::Included(Version::new(k, 0)),
            Bound::Excluded(&k) => Bound::Excluded(Version::new(k, Lsn::MAX)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut last_key = None;
        self.versions.range((start, end)).filter_map(move |entry| {
            let version = *entry.key();
            // The first visible version of each key is its newest; skip the rest of the key.
            if version.lsn() > snapshot || last_key == Some(version.key) {
                return None;
            }
            last_key = Some(version.key);
            Some((version.key, self.get(version.key, snapshot)))
        })
    }

    /// Every key in `range` with a version visible at `snapshot`, with its newest such version
    /// (`None` for a deletion), ascending, or descending if `reverse`. Range deletions are not
    /// folded in: where none is visible at `snapshot`, this is what [`Memtable::get`] says of
    /// each key, found by one walk instead of a search per key.
    pub fn newest(
        &self,
        range: RangeInclusive<u64>,
        snapshot: Lsn,
        reverse: bool,
    ) -> Box<dyn Iterator<Item = (u64, Option<Bytes>)> + Send + '_> {
        let (first, last) = (*range.start(), *range.end());
        let visible = self
            .versions
            .range(Version::new(first, Lsn::MAX)..=Version::new(last, 0))
            .filter(move |entry| entry.key().lsn() <= snapshot);
        if reverse {
            // Backwards, a key's versions come oldest first: its last one seen is the newest.
            let mut visible = visible.rev().peekable();
            Box::new(std::iter::from_fn(move || {
                let mut entry = visible.next()?;
                while let Some(next) = visible.next_if(|e| e.key().key == entry.key().key) {
                    entry = next;
                }
                Some((entry.key().key, entry.value().clone()))
            }))
        } else {
            let mut previous = None;
            Box::new(visible.filter_map(move |entry| {
                let key = entry.key().key;
                if previous == Some(key) {
                    return None;
                }
                previous = Some(key);
                Some((key, entry.value().clone()))
            }))
        }
    }

    /// Every version, key ascending and LSN descending, `None` for a deletion: what a flush
    /// writes.
    pub fn versions(&self) -> impl Iterator<Item = (u64, Lsn, Option<Bytes>)> + '_ {
        self.versions
            .iter()
            .map(|entry| (entry.key().key, entry.key().lsn(), entry.value().clone()))
    }

    /// The newest LSN of any write — version or range tombstone — touching `range`, if any:
    /// what a transaction's conflict check asks.
    pub fn newest_lsn(&self, range: RangeInclusive<u64>) -> Option<Lsn> {
        let (first, last) = (*range.start(), *range.end());
        let versions = self
            .versions
            .range(Version::new(first, Lsn::MAX)..=Version::new(last, 0))
            .map(|entry| entry.key().lsn())
            .max();
        let ranges = self
            .ranges
            .iter()
            .filter(|entry| entry.key().0.key <= last && first <= entry.key().1)
            .map(|entry| entry.key().0.lsn())
            .max();
        versions.max(ranges)
    }

    /// The range tombstones visible at `snapshot`: `(first..=last, lsn)`.
    pub fn range_tombstones(&self, snapshot: Lsn) -> Vec<(RangeInclusive<u64>, Lsn)> {
        self.ranges
            .iter()
            .filter(|entry| entry.key().0.lsn() <= snapshot)
            .map(|entry| (entry.key().0.key..=entry.key().1, entry.key().0.lsn()))
            .collect()
    }

    /// Approximate bytes held (rows plus a fixed cost per entry): what flushing decides on.
    pub fn approximate_bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Whether nothing was ever written.
    pub fn is_empty(&self) -> bool {
        self.versions.front().is_none() && self.ranges.front().is_none()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;

    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Debug)]
    enum Op {
        Put(u64, u8),
        Delete(u64),
        DeleteRange(u64, u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..40u64, any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
            2 => (0..40u64).prop_map(Op::Delete),
            1 => (0..40u64, 0..12u64).prop_map(|(a, len)| Op::DeleteRange(a, a + len)),
        ]
    }

    /// The oracle: replays the ops with LSN ≤ `snapshot` into a map.
    fn oracle(ops: &[Op], snapshot: Lsn) -> BTreeMap<u64, Option<u8>> {
        let mut map = BTreeMap::new();
        for (i, op) in ops.iter().enumerate() {
            if i as Lsn + 1 > snapshot {
                break;
            }
            match *op {
                Op::Put(k, v) => {
                    map.insert(k, Some(v));
                }
                Op::Delete(k) => {
                    map.insert(k, None);
                }
                Op::DeleteRange(a, b) => {
                    for k in a..=b {
                        map.insert(k, None);
                    }
                }
            }
        }
        map
    }

    fn apply(memtable: &Memtable, ops: &[Op]) {
        for (i, op) in ops.iter().enumerate() {
            let lsn = i as Lsn + 1;
            match *op {
                Op::Put(k, v) => memtable.put(k, lsn, Bytes::from(vec![v])),
                Op::Delete(k) => memtable.delete(k, lsn),
                Op::DeleteRange(a, b) => memtable.delete_range(a..=b, lsn),
            }
        }
    }

    proptest! {
        #[test]
        fn reads_at_every_snapshot_match_a_replayed_map(ops in proptest::collection::vec(op(), 0..120)) {
            let memtable = Memtable::new();
            apply(&memtable, &ops);
            for snapshot in 0..=ops.len() as Lsn {
                let expected = oracle(&ops, snapshot);
                for key in 0..55u64 {
                    let got = match memtable.get(key, snapshot) {
                        Lookup::Found { row, .. } => Some(Some(row[0])),
                        Lookup::Deleted { .. } => Some(None),
                        Lookup::Absent => None,
                    };
                    prop_assert_eq!(got, expected.get(&key).copied(), "key {} at {}", key, snapshot);
                }
                // A scan lists the point versions; keys hidden only by a range tombstone are
                // left to the tombstone list.
                let scanned: Vec<(u64, Option<u8>)> = memtable
                    .scan(5..30, snapshot)
                    .map(|(k, lookup)| (k, match lookup { Lookup::Found { row, .. } => Some(row[0]), _ => None }))
                    .collect();
                for window in scanned.windows(2) {
                    prop_assert!(window[0].0 < window[1].0, "keys ascend once each");
                }
                for (k, value) in &scanned {
                    prop_assert_eq!(Some(value), expected.get(k));
                }
            }
        }

        #[test]
        fn the_newest_versions_in_either_direction_match_a_replayed_map(
            ops in proptest::collection::vec(op(), 0..120),
            first in 0..45u64,
            len in 0..45u64,
        ) {
            // `newest` does not fold range deletions in: without them it must agree with the map.
            let ops: Vec<Op> = ops.into_iter().filter(|op| !matches!(op, Op::DeleteRange(..))).collect();
            let memtable = Memtable::new();
            apply(&memtable, &ops);
            let range = first..=first + len;
            for snapshot in 0..=ops.len() as Lsn {
                let expected: Vec<(u64, Option<u8>)> = oracle(&ops, snapshot)
                    .range(range.clone())
                    .map(|(&k, &v)| (k, v))
                    .collect();
                let forward: Vec<(u64, Option<u8>)> = memtable
                    .newest(range.clone(), snapshot, false)
                    .map(|(k, row)| (k, row.map(|r| r[0])))
                    .collect();
                prop_assert_eq!(&forward, &expected, "forward at {}", snapshot);
                let mut backward: Vec<(u64, Option<u8>)> = memtable
                    .newest(range.clone(), snapshot, true)
                    .map(|(k, row)| (k, row.map(|r| r[0])))
                    .collect();
                backward.reverse();
                prop_assert_eq!(&backward, &expected, "backward at {}", snapshot);
            }
        }
    }

    #[test]
    fn a_batch_that_deletes_a_range_then_puts_into_it_keeps_the_put() {
        let memtable = Memtable::new();
        memtable.put(5, 1, Bytes::from_static(b"old"));
        memtable.delete_range(0..=9, 2);
        memtable.put(5, 2, Bytes::from_static(b"new"));
        assert_eq!(
            memtable.get(5, 2),
            Lookup::Found {
                row: Bytes::from_static(b"new"),
                lsn: 2
            }
        );
        assert_eq!(memtable.get(6, 2), Lookup::Deleted { lsn: 2 });
        assert_eq!(
            memtable.get(5, 1),
            Lookup::Found {
                row: Bytes::from_static(b"old"),
                lsn: 1
            }
        );
        assert_eq!(
            memtable.get(10, 2),
            Lookup::Absent,
            "the range ends at its last key"
        );
    }

    #[test]
    fn ranges_with_the_same_first_key_and_lsn_both_hold() {
        let memtable = Memtable::new();
        memtable.put(5, 1, Bytes::from_static(b"old"));
        memtable.delete_range(0..=9, 7);
        memtable.delete_range(0..=2, 7);
        assert_eq!(memtable.get(5, 7), Lookup::Deleted { lsn: 7 });
        assert_eq!(memtable.range_tombstones(7).len(), 2);
    }

    #[test]
    fn a_range_can_reach_the_largest_key() {
        let memtable = Memtable::new();
        memtable.put(u64::MAX, 1, Bytes::from_static(b"last"));
        memtable.delete_range(u64::MAX - 1..=u64::MAX, 2);
        assert_eq!(memtable.get(u64::MAX, 2), Lookup::Deleted { lsn: 2 });
        assert_eq!(
            memtable.get(u64::MAX, 1),
            Lookup::Found {
                row: Bytes::from_static(b"last"),
                lsn: 1
            }
        );
    }

    #[test]
    fn readers_see_every_published_write_while_a_writer_goes_on() {
        let memtable = Arc::new(Memtable::new());
        let visible = Arc::new(AtomicU64::new(0));
        const WRITES: u64 = 20_000;
        let writer = {
            let (memtable, visible) = (Arc::clone(&memtable), Arc::clone(&visible));
            std::thread::spawn(move || {
                for lsn in 1..=WRITES {
                    memtable.put(lsn % 1000, lsn, Bytes::from(lsn.to_le_bytes().to_vec()));
                    visible.store(lsn, Ordering::Release);
                }
            })
        };
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (memtable, visible) = (Arc::clone(&memtable), Arc::clone(&visible));
                std::thread::spawn(move || {
                    let mut checked = 0;
                    while checked < WRITES / 4 {
                        let snapshot = visible.load(Ordering::Acquire);
                        if snapshot == 0 {
                            continue;
                        }
                        // The newest write of this key at the snapshot is the snapshot's own.
                        match memtable.get(snapshot % 1000, snapshot) {
                            Lookup::Found { row, lsn } => {
                                assert_eq!(lsn, snapshot);
                                assert_eq!(row.as_ref(), snapshot.to_le_bytes());
                            }
                            other => panic!("write {snapshot} not visible: {other:?}"),
                        }
                        checked += 1;
                    }
                })
            })
            .collect();
        writer.join().unwrap();
        for reader in readers {
            reader.join().unwrap();
        }
        assert!(memtable.approximate_bytes() >= WRITES as usize * 8);
    }
}
