//! The memtable: one table's recent writes, ordered by (key, LSN newest first), readable at any
//! snapshot while writers go on (see `docs/rfcs/0001-engine.md`).
//!
//! Writes go into a lock-free skip list (`crossbeam-skiplist`) kept small enough to stay in
//! cache; once it holds `SEAL_ENTRIES` versions it is sealed, a fresh one takes the writes, and
//! the sealed one is copied into a sorted run that merges with older runs of similar size
//! (`run`). Readers load the current layers (skip list, sealed list, runs) through an
//! `ArcSwap` and never wait for writers. Rows are opaque bytes here (the engine encodes them); a
//! deletion is a tombstone version of the key, and a range deletion a separate tombstone that
//! hides every older version of the keys it covers. A read at snapshot `s` sees exactly the
//! versions with LSN ≤ `s`, provided every write with an LSN ≤ `s` has been applied: the engine
//! reads only at snapshots up to its visible LSN, which it raises once all lower LSNs are applied
//! (a reader at a higher snapshot could see half a batch).

use std::ops::{Bound, RangeBounds, RangeInclusive};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, TryLockError};

use arc_swap::ArcSwap;
use bytes::Bytes;
use crossbeam_skiplist::SkipMap;

use crate::filter::GrowingFilter;
use crate::index::search::gallop;
use crate::sync::{Mutex, RwLock, read};

mod cut;
mod generation;
mod run;

pub use generation::{Generation, MemtableRef};
use run::{Merge, Next, Run, Source};

/// A log sequence number: the order of committed write batches.
pub type Lsn = u64;

/// Bytes an entry costs beyond its row, for the memtable's size (skip-list node, key, LSN).
const ENTRY_OVERHEAD: usize = 64;

/// Versions the skip list takes before it is sealed into a run: at ~100 bytes a node, its nodes
/// stay within the L2/L3 caches, so an insert's search rarely misses.
const SEAL_ENTRIES: usize = 16 * 1024;

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

/// A version's place in the memtable: key ascending, then LSN descending (newest first).
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

/// The width class of a range tombstone `first..=last`: the highest set bit of `last - first`
/// (0 for widths 0 and 1). A tombstone of class `c` is narrower than `2^(c+1)` keys, so it covers
/// a key only if it starts at most [`class_reach`]`(c)` below it: a lookup searches that window
/// of each class, not every tombstone that starts below the key.
fn width_class(range: &RangeInclusive<u64>) -> u8 {
    let width = range.end() - range.start();
    // At most 63: `leading_zeros` of a non-zero width is at most 63.
    (u64::BITS - 1).saturating_sub(width.leading_zeros()) as u8
}

/// How far below a key a tombstone of width class `class` may start and still cover it.
fn class_reach(class: u8) -> u64 {
    match 1u64.checked_shl(u32::from(class) + 1) {
        Some(bound) => bound - 1,
        None => u64::MAX,
    }
}

/// The skip list writes go into; `None` is a tombstone.
type List = SkipMap<Version, Option<Bytes>>;

/// What a reader loads: every version the memtable holds, newest layer first.
#[derive(Debug, Default)]
struct Layers {
    /// Takes the writes.
    live: Arc<List>,
    /// A full skip list being copied into a run (no writer is in it any more).
    sealed: Option<Arc<List>>,
    /// Runs, newest first.
    runs: Vec<Arc<Run>>,
}

impl Layers {
    /// The skip lists, newest first: the live one and the one being sealed.
    fn lists(&self) -> impl Iterator<Item = &Arc<List>> {
        std::iter::once(&self.live).chain(&self.sealed)
    }

    /// Every layer as a merge source, newest first.
    fn sources(&self) -> Vec<Source> {
        self.lists()
            .map(|list| Source::List(Arc::clone(list)))
            .chain(self.runs.iter().map(|run| Source::Run(Arc::clone(run))))
            .collect()
    }

    /// `key`'s newest version with an LSN ≤ `snapshot`, from whichever layer holds it. Every
    /// layer is asked: appliers of different LSNs run concurrently, so a newer layer may hold
    /// an older LSN. Where two hold the same LSN (a batch wrote the key twice across a seal),
    /// the newer layer, asked first, has the later write.
    fn newest(&self, key: u64, snapshot: Lsn) -> Option<(Lsn, Option<Bytes>)> {
        let beats = |best: &Option<(Lsn, Option<Bytes>)>, lsn: Lsn| {
            best.as_ref().is_none_or(|(newest, _)| lsn > *newest)
        };
        let mut newest = None;
        for list in self.lists() {
            if let Some(entry) = list
                .range(Version::new(key, snapshot)..=Version::new(key, 0))
                .next()
                && beats(&newest, entry.key().lsn())
            {
                newest = Some((entry.key().lsn(), entry.value().clone()));
            }
        }
        for run in &self.runs {
            if let Some((lsn, row)) = run.newest(key, snapshot)
                && beats(&newest, lsn)
            {
                newest = Some((lsn, row));
            }
        }
        newest
    }

    fn is_empty(&self) -> bool {
        self.live.is_empty() && self.sealed.is_none() && self.runs.is_empty()
    }
}

/// One table's recent writes.
#[derive(Debug)]
pub struct Memtable {
    /// Keys with a version, so a point read of a key the memtable never saw skips the layers
    /// (absent in memtables made without one).
    filter: Option<GrowingFilter>,
    layers: ArcSwap<Layers>,
    /// Held shared by writers while they insert into the live skip list, and exclusively to
    /// seal it: once sealing holds it, no write can still land in the sealed list.
    writing: RwLock<()>,
    /// Held by the one writer that seals and merges; the others go on writing meanwhile.
    sealing: Mutex<()>,
    /// Range tombstones by (width class, first key, LSN newest first, last key): the last key is
    /// part of the entry's key so that two ranges with the same first key and LSN both stay. See
    /// [`width_class`] for why the class comes first.
    ranges: SkipMap<(u8, Version, u64), ()>,
    /// The width classes `ranges` holds, one bit each: a lookup searches only those.
    classes: AtomicU64,
    bytes: AtomicUsize,
    /// Versions the live skip list takes before it is sealed ([`SEAL_ENTRIES`] but in tests).
    seal_at: usize,
}

impl Default for Memtable {
    fn default() -> Self {
        Self {
            filter: None,
            layers: ArcSwap::default(),
            writing: RwLock::new(()),
            sealing: Mutex::new(()),
            ranges: SkipMap::new(),
            classes: AtomicU64::new(0),
            bytes: AtomicUsize::new(0),
            seal_at: SEAL_ENTRIES,
        }
    }
}

impl Memtable {
    /// An empty memtable.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty memtable with a membership filter that grows with its keys up to
    /// `expected_keys` (starting at a skip list's worth: a table written little costs little).
    pub fn with_filter(expected_keys: usize) -> Self {
        Self {
            filter: Some(GrowingFilter::new(
                SEAL_ENTRIES.min(expected_keys),
                expected_keys,
            )),
            ..Self::default()
        }
    }

    /// An empty memtable whose skip list is sealed every `seal_at` versions (so tests reach
    /// runs and merges with few writes).
    #[cfg(test)]
    fn sealing_every(seal_at: usize) -> Self {
        Self {
            seal_at: seal_at.max(1),
            ..Self::default()
        }
    }

    /// Writes `row` as `key`'s version at `lsn`. A second write of the same key at the same
    /// LSN (twice in one write batch) replaces the first. Returns the bytes this added to
    /// [`Memtable::approximate_bytes`].
    pub fn put(&self, key: u64, lsn: Lsn, row: Bytes) -> usize {
        let bytes = row.len() + ENTRY_OVERHEAD;
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.insert(key, lsn, Some(row));
        bytes
    }

    /// Deletes `key` at `lsn`. Returns the bytes this added to [`Memtable::approximate_bytes`].
    pub fn delete(&self, key: u64, lsn: Lsn) -> usize {
        self.bytes.fetch_add(ENTRY_OVERHEAD, Ordering::Relaxed);
        self.insert(key, lsn, None);
        ENTRY_OVERHEAD
    }

    fn insert(&self, key: u64, lsn: Lsn, row: Option<Bytes>) {
        let full = {
            let _writing = read(&self.writing);
            // The filter learns the key first: a reader that finds the version may rely on it.
            // Under the lock a seal takes exclusively: a growth of the filter (in `seal`) then
            // either finds the key in the layers it copies or sees it go into the new array.
            if let Some(filter) = &self.filter {
                filter.insert(key);
            }
            let layers = self.layers.load();
            layers.live.insert(Version::new(key, lsn), row);
            layers.live.len() >= self.seal_at
        };
        if full {
            self.seal();
        }
    }

    /// Seals a full skip list into a run and merges runs of similar size, unless another
    /// writer is at it (the list then grows past its size until that writer is done).
    fn seal(&self) {
        let _sealing = match self.sealing.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        // Only the holder of `sealing` replaces the layers, so they stay as loaded here.
        let mut layers = self.layers.load_full();
        if let Some(left) = &layers.sealed {
            // A seal that panicked before it published its runs left its list here: made a
            // run first, or the store below, which fills `sealed` again, would drop it.
            let mut runs = vec![Arc::new(Run::from_whole_list(left))];
            runs.extend(layers.runs.iter().cloned());
            layers = Arc::new(Layers {
                live: Arc::clone(&layers.live),
                sealed: None,
                runs,
            });
            self.layers.store(Arc::clone(&layers));
        }
        // Another writer sealed this list already: nothing to do (checked again under the lock).
        if layers.live.len() < self.seal_at {
            return;
        }
        // A filter the versions outgrew gets its larger array now, before writers are held.
        let versions = layers.live.len() + layers.runs.iter().map(|run| run.len()).sum::<usize>();
        let grown = self
            .filter
            .as_ref()
            .and_then(|filter| Some((filter, filter.outgrown(versions)?)));
        let sealed = {
            let _writing = self
                .writing
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if layers.live.len() < self.seal_at {
                return;
            }
            self.layers.store(Arc::new(Layers {
                live: Arc::new(List::new()),
                sealed: Some(Arc::clone(&layers.live)),
                runs: layers.runs.clone(),
            }));
            // No insert runs now: every key inserted so far is in the sealed list or the runs,
            // and every later one goes into the new array too.
            if let Some((filter, next)) = grown {
                filter.start_growth(next);
            }
            Arc::clone(&layers.live)
        };
        let mut runs = vec![Arc::new(Run::from_whole_list(&sealed))];
        runs.extend(layers.runs.iter().cloned());
        // A binary counter: the newest run merges into the next while that one is at most
        // twice its size, so each run is over twice the size of the one before it.
        while runs.len() >= 2 && runs[1].len() <= 2 * runs[0].len() {
            let merged = Run::merge(&runs[0], &runs[1]);
            runs.splice(0..2, [Arc::new(merged)]);
        }
        if let Some((filter, next)) = grown {
            for run in &runs {
                for &key in run.keys_at(0..run.len()) {
                    filter.fill(next, key);
                }
            }
            filter.finish_growth(next);
        }
        let current = self.layers.load_full();
        self.layers.store(Arc::new(Layers {
            live: Arc::clone(&current.live),
            sealed: None,
            runs,
        }));
    }

    /// Deletes every key in `range` (inclusive, so `u64::MAX` can be covered) at `lsn`.
    /// Versions written at `lsn` itself survive: a write batch, which has one LSN, must not put
    /// into a range it deletes afterwards ([`crate::batch::WriteBatch`] drops such puts).
    /// Returns the bytes this added to [`Memtable::approximate_bytes`].
    pub fn delete_range(&self, range: RangeInclusive<u64>, lsn: Lsn) -> usize {
        if range.is_empty() {
            return 0;
        }
        self.bytes.fetch_add(ENTRY_OVERHEAD, Ordering::Relaxed);
        let class = width_class(&range);
        self.ranges
            .insert((class, Version::new(*range.start(), lsn), *range.end()), ());
        // After the insert: a reader that sees the class's bit sees the tombstone. (One that
        // reads before it cannot hold a snapshot that includes `lsn`, published after this.)
        self.classes.fetch_or(1 << class, Ordering::Release);
        ENTRY_OVERHEAD
    }

    /// The newest LSN ≤ `snapshot` of a range tombstone covering `key`, if any.
    fn range_deleted(&self, key: u64, snapshot: Lsn) -> Option<Lsn> {
        self.newest_range_touching(key, key, snapshot)
    }

    /// The newest LSN ≤ `snapshot` of a range tombstone that touches `first..=last`: per width
    /// class held, only the tombstones that start close enough below `first` to reach it. A walk
    /// over every tombstone starting below `last` made a scan under ten thousand small range
    /// deletes take ten thousand steps per key.
    fn newest_range_touching(&self, first: u64, last: u64, snapshot: Lsn) -> Option<Lsn> {
        let mut classes = self.classes.load(Ordering::Acquire);
        let mut newest = None;
        while classes != 0 {
            let class = classes.trailing_zeros() as u8;
            classes &= classes - 1;
            let lowest = first.saturating_sub(class_reach(class));
            let found = self
                .ranges
                .range(
                    (class, Version::new(lowest, Lsn::MAX), 0)
                        ..=(class, Version::new(last, 0), u64::MAX),
                )
                .filter(|entry| first <= entry.key().2 && entry.key().1.lsn() <= snapshot)
                .map(|entry| entry.key().1.lsn())
                .max();
            newest = newest.max(found);
        }
        newest
    }

    /// Starts loading the filter line [`Self::get`] reads first for `key`, so a batched read can
    /// overlap many keys' probes.
    pub fn prefetch(&self, key: u64) {
        if let Some(filter) = &self.filter {
            filter.prefetch(key);
        }
    }

    /// What the memtable says about `key` at `snapshot`.
    pub fn get(&self, key: u64, snapshot: Lsn) -> Lookup {
        if self.ranges.is_empty() && self.filter.as_ref().is_some_and(|f| !f.may_hold(key)) {
            return Lookup::Absent;
        }
        let newest = self.layers.load().newest(key, snapshot);
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

    /// Every version of keys in `range`, key ascending and LSN descending (or the reverse).
    fn walk(&self, range: RangeInclusive<u64>, reverse: bool) -> Merge {
        Merge::new(self.layers.load().sources(), range, reverse)
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
        let first = match range.start_bound() {
            Bound::Included(&k) => Some(k),
            Bound::Excluded(&k) => k.checked_add(1),
            Bound::Unbounded => Some(0),
        };
        let last = match range.end_bound() {
            Bound::Included(&k) => Some(k),
            Bound::Excluded(&k) => k.checked_sub(1),
            Bound::Unbounded => Some(u64::MAX),
        };
        let keys = match (first, last) {
            (Some(first), Some(last)) if first <= last => Some(first..=last),
            _ => None,
        };
        keys.into_iter().flat_map(move |keys| {
            self.newest(keys, snapshot, false)
                .map(move |(key, _)| (key, self.get(key, snapshot)))
        })
    }

    /// Every key in `range` with a version visible at `snapshot`, with its newest such version
    /// (`None` for a deletion), ascending, or descending if `reverse`. Range deletions are not
    /// folded in: where none is visible at `snapshot`, this is what [`Memtable::get`] says of
    /// each key, found by one walk instead of a search per key.
    pub fn newest(&self, range: RangeInclusive<u64>, snapshot: Lsn, reverse: bool) -> Newest {
        Newest {
            merge: (!range.is_empty()).then(|| self.walk(range, reverse)),
            snapshot,
            reverse,
            previous: None,
            next: None,
            pending: Vec::new(),
        }
    }

    /// Every version, key ascending and LSN descending, `None` for a deletion: what a flush
    /// writes.
    pub fn versions(&self) -> impl Iterator<Item = (u64, Lsn, Option<Bytes>)> + '_ {
        self.walk(0..=u64::MAX, false)
    }

    /// The newest LSN of any write — version or range tombstone — touching `range`, if any:
    /// what a transaction's conflict check asks.
    pub fn newest_lsn(&self, range: RangeInclusive<u64>) -> Option<Lsn> {
        let (first, last) = (*range.start(), *range.end());
        let layers = self.layers.load();
        let in_lists = layers.lists().flat_map(|list| {
            list.range(Version::new(first, Lsn::MAX)..=Version::new(last, 0))
                .map(|entry| entry.key().lsn())
        });
        let in_runs = layers.runs.iter().filter_map(|run| run.newest_lsn(&range));
        let versions = in_lists.chain(in_runs).max();
        versions.max(self.newest_range_touching(first, last, Lsn::MAX))
    }

    /// The range tombstones visible at `snapshot`: `(first..=last, lsn)`.
    pub fn range_tombstones(&self, snapshot: Lsn) -> Vec<(RangeInclusive<u64>, Lsn)> {
        self.ranges
            .iter()
            .filter(|entry| entry.key().1.lsn() <= snapshot)
            .map(|entry| (entry.key().1.key..=entry.key().2, entry.key().1.lsn()))
            .collect()
    }

    /// Approximate bytes held (rows plus a fixed cost per entry): what flushing decides on.
    pub fn approximate_bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Whether nothing was ever written.
    pub fn is_empty(&self) -> bool {
        self.layers.load().is_empty() && self.ranges.front().is_none()
    }
}

/// The keys of a range with a version visible at a snapshot, each with its newest such version,
/// in key order (see [`Memtable::newest`]). As an iterator it gives each row as `Bytes`;
/// [`Newest::lend`] lends them instead, which is what a scan that decodes them wants.
pub struct Newest {
    /// `None` for an empty range.
    merge: Option<Merge>,
    snapshot: Lsn,
    reverse: bool,
    /// The last key given, in a forward walk: its older versions are skipped.
    previous: Option<u64>,
    /// The next key, once [`Newest::peek`] found it.
    next: Option<Option<u64>>,
    /// A reverse walk meets a key's versions oldest first: the newest visible one so far.
    pending: Vec<u8>,
}

impl Newest {
    /// The next key, without taking it.
    pub fn peek(&mut self) -> Option<u64> {
        if let Some(next) = self.next {
            return next;
        }
        let (snapshot, previous) = (self.snapshot, self.previous);
        let mut next = None;
        if let Some(merge) = &mut self.merge {
            merge.take_while(|version, _| {
                if version.lsn() > snapshot || (Some(version.key) == previous) {
                    return true;
                }
                next = Some(version.key);
                false
            });
        }
        self.next = Some(next);
        next
    }

    /// Gives `visit` the next keys and their newest visible rows (`None` for a deletion), up to
    /// `max` keys and while they come before `bound` in walk order (`bound` itself excluded).
    /// Returns the last key given.
    pub fn lend(
        &mut self,
        bound: Option<u64>,
        max: usize,
        mut visit: impl FnMut(u64, Option<&[u8]>),
    ) -> Option<u64> {
        self.lend_rows(bound, max, |rows| rows.for_each(&mut visit))
    }

    /// [`Newest::lend`], giving `visit` the rows a stretch at a time where it can: in a forward
    /// walk, where one run's next versions come before every other source's and are each its
    /// key's newest visible one (a time series' memtable is such runs), the stretch is lent
    /// whole, and its consumer passes over it without a call per row.
    pub fn lend_rows(
        &mut self,
        bound: Option<u64>,
        max: usize,
        mut visit: impl FnMut(Lent<'_>),
    ) -> Option<u64> {
        self.next = None;
        let Some(merge) = &mut self.merge else {
            return None;
        };
        let (snapshot, reverse) = (self.snapshot, self.reverse);
        let within = |key: u64| bound.is_none_or(|b| if reverse { key > b } else { key < b });
        let mut given = 0;
        let mut last = None;
        if !reverse {
            let previous = &mut self.previous;
            // Whether keys are taken one at a time to the end of this call.
            let mut one_by_one = false;
            loop {
                let next = if one_by_one {
                    Next::Mixed
                } else {
                    merge.stretch(snapshot)
                };
                match next {
                    Next::Stretch(cursor, run, positions)
                        if *previous != Some(run.key(positions.start)) =>
                    {
                        // The stretch up to the bound and the keys still wanted.
                        let end = positions.end.min(positions.start + (max - given));
                        let keys = run.keys_at(positions.start..end);
                        let n = bound.map_or(keys.len(), |b| gallop(keys, |k| k < b));
                        if n > 0 {
                            let lent = positions.start..positions.start + n;
                            let key = run.key(lent.end - 1);
                            visit(Lent::Rows(run.rows(lent)));
                            merge.pass(cursor, n);
                            (*previous, last) = (Some(key), Some(key));
                            given += n;
                        }
                        if n < positions.end - positions.start {
                            return last;
                        }
                        continue;
                    }
                    Next::Done => return last,
                    // Once a source's run is not plain, asking for a stretch before every key
                    // would only add a look at every source: keys go one at a time to the end.
                    Next::Mixed => one_by_one = true,
                    // A tie, or the last key's older version: one key, then stretches again.
                    Next::Stretch(..) | Next::Tie => {}
                }
                let (mut gave, mut stop) = (false, false);
                merge.take_while(|version, row| {
                    if version.lsn() > snapshot || Some(version.key) == *previous {
                        return true;
                    }
                    if gave && !one_by_one {
                        return false;
                    }
                    if given == max || !within(version.key) {
                        stop = true;
                        return false;
                    }
                    visit(Lent::One(version.key, row));
                    *previous = Some(version.key);
                    last = Some(version.key);
                    given += 1;
                    gave = true;
                    true
                });
                if stop || !gave {
                    return last;
                }
            }
        }
        // Backwards, a key is given once its versions are passed: at the next key's first
        // visible version, or at the end. Its newest row so far is copied into `pending`.
        let pending = &mut self.pending;
        let mut open: Option<(u64, bool)> = None;
        merge.take_while(|version, row| {
            if version.lsn() > snapshot {
                return true;
            }
            if let Some((key, present)) = open {
                if key == version.key {
                    pending.clear();
                    pending.extend_from_slice(row.unwrap_or_default());
                    open = Some((key, row.is_some()));
                    return true;
                }
                visit(Lent::One(key, present.then_some(pending.as_slice())));
                last = Some(key);
                given += 1;
                open = None;
            }
            if given == max || !within(version.key) {
                return false;
            }
            pending.clear();
            pending.extend_from_slice(row.unwrap_or_default());
            open = Some((version.key, row.is_some()));
            true
        });
        if let Some((key, present)) = open {
            visit(Lent::One(key, present.then_some(pending.as_slice())));
            last = Some(key);
        }
        last
    }
}

/// Rows a walk lends (see [`Newest::lend_rows`]): one key's, or a stretch of a run's.
pub enum Lent<'a> {
    /// A key and its row (`None` for a deletion).
    One(u64, Option<&'a [u8]>),
    /// Keys and rows in walk order.
    Rows(run::Rows<'a>),
}

impl Lent<'_> {
    /// Calls `f` with each key and row, in walk order.
    #[inline]
    pub fn for_each(self, mut f: impl FnMut(u64, Option<&[u8]>)) {
        match self {
            Lent::One(key, row) => f(key, row),
            Lent::Rows(rows) => rows.for_each(|(key, row)| f(key, row)),
        }
    }
}

impl Iterator for Newest {
    type Item = (u64, Option<Bytes>);

    fn next(&mut self) -> Option<Self::Item> {
        let mut item = None;
        self.lend(None, 1, |key, row| {
            item = Some((key, row.map(Bytes::copy_from_slice)));
        });
        item
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

    /// Applies op `i` at LSN `i + 1`, in an order shuffled by `shuffle` (0: in LSN order), as
    /// concurrent appliers may: a later seal can then hold an earlier LSN.
    fn apply_in_order(memtable: &Memtable, ops: &[Op], shuffle: u64) {
        let mut order: Vec<usize> = (0..ops.len()).collect();
        if shuffle != 0 {
            order.sort_by_key(|&i| (i as u64 ^ shuffle).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        }
        let before = memtable.approximate_bytes();
        let mut added = 0;
        for i in order {
            let op = &ops[i];
            let lsn = i as Lsn + 1;
            added += match *op {
                Op::Put(k, v) => memtable.put(k, lsn, Bytes::from(vec![v])),
                Op::Delete(k) => memtable.delete(k, lsn),
                Op::DeleteRange(a, b) => memtable.delete_range(a..=b, lsn),
            };
        }
        // What each write says it added is what the memtable counts.
        assert_eq!(memtable.approximate_bytes(), before + added);
    }

    proptest! {
        #[test]
        fn reads_at_every_snapshot_match_a_replayed_map(
            ops in proptest::collection::vec(op(), 0..120),
            seal_at in 1..40usize,
            shuffle in any::<u64>(),
        ) {
            let memtable = Memtable::sealing_every(seal_at);
            apply_in_order(&memtable, &ops, shuffle);
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
            seal_at in 1..40usize,
            shuffle in any::<u64>(),
        ) {
            // `newest` does not fold range deletions in: without them it must agree with the map.
            let ops: Vec<Op> = ops.into_iter().filter(|op| !matches!(op, Op::DeleteRange(..))).collect();
            let memtable = Memtable::sealing_every(seal_at);
            apply_in_order(&memtable, &ops, shuffle);
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

        #[test]
        fn lending_the_newest_versions_in_pieces_gives_what_the_walk_gives(
            ops in proptest::collection::vec(op(), 0..120),
            first in 0..45u64,
            len in 0..45u64,
            seal_at in 1..40usize,
            shuffle in any::<u64>(),
            reverse in any::<bool>(),
            snapshot in 0..130u64,
            pieces in proptest::collection::vec((1..6usize, 0..8u64), 1..20),
        ) {
            let ops: Vec<Op> = ops.into_iter().filter(|op| !matches!(op, Op::DeleteRange(..))).collect();
            let memtable = Memtable::sealing_every(seal_at);
            apply_in_order(&memtable, &ops, shuffle);
            let range = first..=first + len;
            let snapshot = snapshot.min(ops.len() as Lsn);
            let expected: Vec<(u64, Option<u8>)> = memtable
                .newest(range.clone(), snapshot, reverse)
                .map(|(k, row)| (k, row.map(|r| r[0])))
                .collect();
            // Pieces of at most `max` keys, each stopping before a bound `step` keys past the
            // next one in walk order (0: the next key itself, so nothing is lent).
            let mut walk = memtable.newest(range.clone(), snapshot, reverse);
            let mut got: Vec<(u64, Option<u8>)> = Vec::new();
            for &(max, step) in pieces.iter().cycle().take(60) {
                let Some(next) = walk.peek() else { break };
                let bound = if reverse { next.checked_sub(step) } else { next.checked_add(step) };
                let before = got.len();
                let last = walk.lend(bound, max, |k, row| got.push((k, row.map(|r| r[0]))));
                let lent = &got[before..];
                prop_assert!(lent.len() <= max);
                prop_assert_eq!(last, lent.last().map(|&(k, _)| k));
                for &(k, _) in lent {
                    prop_assert!(bound.is_none_or(|b| if reverse { k > b } else { k < b }), "key {} passed bound {:?}", k, bound);
                }
                if step > 0 {
                    prop_assert_eq!(lent.first().map(|&(k, _)| k), Some(next));
                }
            }
            got.extend(walk.map(|(k, row)| (k, row.map(|r| r[0]))));
            prop_assert_eq!(got, expected);
        }

        #[test]
        fn every_version_is_listed_once_in_order_however_it_was_sealed(
            ops in proptest::collection::vec(op(), 0..200),
            seal_at in 1..50usize,
            shuffle in any::<u64>(),
            first in 0..45u64,
            len in 0..45u64,
        ) {
            let memtable = Memtable::sealing_every(seal_at);
            apply_in_order(&memtable, &ops, shuffle);
            // What a flush writes: (key, LSN) ascending by key then LSN descending.
            let mut expected: Vec<(u64, Lsn, Option<u8>)> = ops
                .iter()
                .enumerate()
                .filter_map(|(i, op)| match *op {
                    Op::Put(k, v) => Some((k, i as Lsn + 1, Some(v))),
                    Op::Delete(k) => Some((k, i as Lsn + 1, None)),
                    Op::DeleteRange(..) => None,
                })
                .collect();
            expected.sort_by_key(|&(k, lsn, _)| (k, std::cmp::Reverse(lsn)));
            let versions: Vec<(u64, Lsn, Option<u8>)> = memtable
                .versions()
                .map(|(k, lsn, row)| (k, lsn, row.map(|r| r[0])))
                .collect();
            prop_assert_eq!(&versions, &expected);
            let range = first..=first + len;
            let newest_point = expected
                .iter()
                .filter(|(k, _, _)| range.contains(k))
                .map(|&(_, lsn, _)| lsn)
                .max();
            let newest_range = ops
                .iter()
                .enumerate()
                .filter_map(|(i, op)| match *op {
                    Op::DeleteRange(a, b) if a <= *range.end() && *range.start() <= b => {
                        Some(i as Lsn + 1)
                    }
                    _ => None,
                })
                .max();
            prop_assert_eq!(memtable.newest_lsn(range), newest_point.max(newest_range));
        }
    }

    #[test]
    fn a_key_written_twice_in_one_batch_across_a_seal_keeps_the_later_write() {
        let memtable = Memtable::sealing_every(2);
        memtable.put(5, 1, Bytes::from_static(b"first"));
        memtable.put(6, 1, Bytes::from_static(b"x"));
        // The list sealed at two versions: the rewrite lands in the next one.
        memtable.put(5, 1, Bytes::from_static(b"second"));
        memtable.put(7, 1, Bytes::from_static(b"y"));
        memtable.put(8, 1, Bytes::from_static(b"z"));
        assert_eq!(
            memtable.get(5, 1),
            Lookup::Found {
                row: Bytes::from_static(b"second"),
                lsn: 1
            }
        );
        let versions: Vec<_> = memtable.versions().collect();
        assert_eq!(versions.len(), 4, "{versions:?}");
        assert_eq!(versions[0], (5, 1, Some(Bytes::from_static(b"second"))));
        let backward: Vec<_> = memtable.newest(0..=9, 1, true).collect();
        assert_eq!(
            backward.last(),
            Some(&(5, Some(Bytes::from_static(b"second"))))
        );
    }

    /// A key written twice at one LSN (twice in one batch) whose versions land in layers that
    /// are never merged — the live list over a run, then two runs the binary counter leaves
    /// apart — reads as the later write by every path: a point read, the versions, and walks
    /// both ways (the test above has its two runs merged at once, so only `Run::merge` settled
    /// the tie there; a helper agent's review).
    #[test]
    fn a_key_written_twice_at_one_lsn_in_layers_never_merged_keeps_the_later_write() {
        let second = Bytes::from_static(b"second");
        let check = |memtable: &Memtable, layout: &str| {
            assert_eq!(
                memtable.get(5, 9),
                Lookup::Found {
                    row: second.clone(),
                    lsn: 9
                },
                "{layout}"
            );
            let fives: Vec<_> = memtable.versions().filter(|v| v.0 == 5).collect();
            assert_eq!(fives, [(5, 9, Some(second.clone()))], "{layout}");
            for reverse in [false, true] {
                let five = memtable
                    .newest(0..=u64::MAX, 9, reverse)
                    .find(|(key, _)| *key == 5);
                assert_eq!(five, Some((5, Some(second.clone()))), "{layout}, {reverse}");
            }
        };
        let fill = |memtable: &Memtable, from: u64, n: u64| {
            for key in from..from + n {
                memtable.put(key, 1, Bytes::from_static(b"f"));
            }
        };

        let memtable = Memtable::sealing_every(8);
        memtable.put(5, 9, Bytes::from_static(b"first"));
        fill(&memtable, 100, 7);
        memtable.put(5, 9, second.clone());
        fill(&memtable, 200, 1);
        let layers = memtable.layers.load();
        assert_eq!((layers.live.len(), layers.runs.len()), (2, 1));
        check(&memtable, "the live list over a run");

        let memtable = Memtable::sealing_every(8);
        memtable.put(5, 9, Bytes::from_static(b"first"));
        fill(&memtable, 100, 23);
        memtable.put(5, 9, second.clone());
        fill(&memtable, 200, 7);
        let layers = memtable.layers.load();
        let runs: Vec<usize> = layers.runs.iter().map(|run| run.len()).collect();
        assert_eq!((layers.live.len(), runs), (0, vec![8, 24]));
        check(&memtable, "a run over a run");
    }

    /// A memtable's filter starts at a skip list's worth of keys and grows with them: a reader
    /// finds every key a writer finished writing, through the growths, and a memtable written
    /// little keeps a small filter.
    #[test]
    fn the_filter_grows_with_the_keys_and_loses_none() {
        let small = Memtable::with_filter(1_000_000);
        small.put(1, 1, Bytes::from_static(b"v"));
        let capacity = |m: &Memtable| m.filter.as_ref().map_or(0, GrowingFilter::capacity);
        assert_eq!(capacity(&small), SEAL_ENTRIES);

        let memtable = Memtable::with_filter(1_000_000);
        let written = [AtomicUsize::new(0), AtomicUsize::new(0)];
        let key =
            |writer: usize, i: usize| ((i * 2 + writer) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        const EACH: usize = 50_000;
        std::thread::scope(|scope| {
            for (writer, done) in written.iter().enumerate() {
                let memtable = &memtable;
                scope.spawn(move || {
                    for i in 0..EACH {
                        memtable.put(key(writer, i), i as Lsn + 1, Bytes::from_static(b"v"));
                        done.store(i + 1, Ordering::Release);
                    }
                });
            }
            // Every key a writer finished is found, whatever growth runs meanwhile.
            let mut checked = [0, 0];
            while checked != [EACH, EACH] {
                for (writer, done) in written.iter().enumerate() {
                    let upto = done.load(Ordering::Acquire);
                    for i in checked[writer]..upto {
                        let found = memtable.get(key(writer, i), Lsn::MAX);
                        assert!(
                            matches!(found, Lookup::Found { .. }),
                            "{writer} {i}: {found:?}"
                        );
                    }
                    checked[writer] = upto;
                }
            }
        });
        assert!(
            capacity(&memtable) > SEAL_ENTRIES,
            "{}",
            capacity(&memtable)
        );
        // And after every growth finished, every key still (the keys copied into a new array).
        for writer in 0..2 {
            for i in 0..EACH {
                let found = memtable.get(key(writer, i), Lsn::MAX);
                assert!(
                    matches!(found, Lookup::Found { .. }),
                    "{writer} {i}: {found:?}"
                );
            }
        }
    }

    #[test]
    fn many_seals_keep_the_runs_few() {
        let memtable = Memtable::sealing_every(16);
        for key in 0..10_000u64 {
            memtable.put(
                key.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                key + 1,
                Bytes::from_static(b"v"),
            );
        }
        let layers = memtable.layers.load();
        // 625 seals; a binary counter keeps about log2(625) runs, each over twice the last.
        assert!(layers.runs.len() <= 11, "{} runs", layers.runs.len());
        for pair in layers.runs.windows(2) {
            assert!(pair[1].len() > 2 * pair[0].len());
        }
        assert_eq!(memtable.versions().count(), 10_000);
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

    proptest! {
        /// The width-class lookup of range tombstones answers what a walk over all of them
        /// answers, for ranges of every width (single keys to the whole key space), keys next to
        /// their ends and every snapshot.
        #[test]
        fn range_lookup_matches_a_walk_over_every_tombstone(
            ranges in prop::collection::vec(
                (any::<u64>(), 0u32..64, any::<u64>(), 1u64..20),
                0..40,
            ),
            probes in prop::collection::vec(any::<u64>(), 0..40),
            snapshot in 0u64..25,
        ) {
            let memtable = Memtable::new();
            let mut all = Vec::new();
            for &(first, bits, noise, lsn) in &ranges {
                // Widths spread over every class: up to `2^bits` keys, clipped at u64::MAX.
                let width = noise >> (63 - bits.min(63));
                let last = first.saturating_add(width);
                memtable.delete_range(first..=last, lsn);
                all.push((first..=last, lsn));
            }
            let keys = all
                .iter()
                .flat_map(|(r, _)| {
                    [*r.start(), *r.end(), r.start().wrapping_sub(1), r.end().wrapping_add(1)]
                })
                .chain(probes)
                .chain([0, u64::MAX]);
            let keys: Vec<u64> = keys.collect();
            for &key in &keys {
                let walked = all
                    .iter()
                    .filter(|(r, lsn)| r.contains(&key) && *lsn <= snapshot)
                    .map(|(_, lsn)| *lsn)
                    .max();
                prop_assert_eq!(memtable.range_deleted(key, snapshot), walked, "key {}", key);
            }
            // And over ranges of keys, as a transaction's conflict check asks.
            for pair in keys.windows(2) {
                let (first, last) = (pair[0].min(pair[1]), pair[0].max(pair[1]));
                let walked = all
                    .iter()
                    .filter(|(r, lsn)| *r.start() <= last && first <= *r.end() && *lsn <= snapshot)
                    .map(|(_, lsn)| *lsn)
                    .max();
                prop_assert_eq!(
                    memtable.newest_range_touching(first, last, snapshot),
                    walked,
                    "{}..={}",
                    first,
                    last
                );
            }
        }
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
    fn concurrent_writers_racing_seals_lose_no_version() {
        let memtable = Arc::new(Memtable::sealing_every(32));
        const WRITERS: u64 = 4;
        const WRITES: u64 = 5_000;
        let writers: Vec<_> = (0..WRITERS)
            .map(|writer| {
                let memtable = Arc::clone(&memtable);
                std::thread::spawn(move || {
                    for i in 0..WRITES {
                        let key = i * WRITERS + writer;
                        memtable.put(key, key + 1, Bytes::from(key.to_le_bytes().to_vec()));
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        let keys: Vec<u64> = memtable.versions().map(|(key, _, _)| key).collect();
        assert_eq!(keys, (0..WRITERS * WRITES).collect::<Vec<_>>());
        for key in 0..WRITERS * WRITES {
            assert!(
                matches!(memtable.get(key, Lsn::MAX), Lookup::Found { lsn, .. } if lsn == key + 1),
                "key {key}"
            );
        }
    }

    #[test]
    fn readers_see_every_published_write_while_a_writer_goes_on() {
        // Sealing every 64 versions, so readers race seals and merges too.
        let memtable = Arc::new(Memtable::sealing_every(64));
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
