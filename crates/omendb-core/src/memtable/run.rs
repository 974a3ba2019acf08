//! A run: memtable versions frozen into sorted arrays.
//!
//! The memtable's skip list takes writes only while it is small enough to stay in cache; once it
//! is full it is sealed and copied into a run, and runs of similar size merge (a binary counter),
//! so a memtable of `n` versions is a handful of runs and each version is copied about
//! `log2(n / SEAL_ENTRIES)` times, sequentially, instead of costing a search through one large
//! skip list whose nodes are scattered in memory. Keys, LSNs and row ends are separate arrays, so
//! a search reads only keys and a walk reads memory in order.

use std::ops::{Bound, RangeInclusive};
use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use crossbeam_skiplist::map::Entry;

use super::{List, Lsn, Version};
use crate::index::search::{SCAN_CACHED, bisect_scan, gallop};
use crate::prefetch;

/// Versions sorted by key ascending, then LSN descending, each version once.
#[derive(Debug)]
pub(super) struct Run {
    keys: Vec<u64>,
    lsns: Vec<Lsn>,
    /// Version `i`'s row is `rows[ends[i - 1]..ends[i]]` (from 0 for the first).
    ends: Vec<usize>,
    /// Whether version `i` is a deletion (its row is empty).
    deleted: Vec<bool>,
    rows: Bytes,
    /// Every [`FENCE`]th key: a search reads this small array, which stays in cache, and then
    /// one block of keys, instead of bisecting the whole key array miss after miss.
    fences: Vec<u64>,
    /// Whether no key has two versions here (a time series' runs): a walk can then lend a
    /// stretch of the run whole, each version being its key's newest in the run.
    unique: bool,
    /// The newest LSN in the run (0 if empty): a walk at a snapshot at or above it sees every
    /// version.
    lsn_max: Lsn,
}

/// Keys per fence: a block of them is 256 bytes, four cache lines.
const FENCE: usize = 32;
/// Cache lines of a block of keys.
const FENCE_LINES: usize = FENCE * size_of::<u64>() / 64;

impl Run {
    /// Up to `limit` versions of `list` within `range` (version bounds): the first ones, or the
    /// last ones if `reverse`. Also returns the last version taken, if the list has more.
    pub(super) fn from_list(
        list: &List,
        range: (Bound<Version>, Bound<Version>),
        limit: usize,
        reverse: bool,
    ) -> (Self, Option<Version>) {
        let mut taken: Vec<_> = if reverse {
            list.range(range).rev().take(limit + 1).collect()
        } else {
            list.range(range).take(limit + 1).collect()
        };
        let more = taken.len() > limit;
        taken.truncate(limit);
        let last = taken.last().map(|entry| *entry.key()).filter(|_| more);
        if reverse {
            taken.reverse();
        }
        let row_bytes = taken
            .iter()
            .map(|entry| entry.value().as_ref().map_or(0, Bytes::len))
            .sum();
        let mut builder = Builder::with_capacity(taken.len(), row_bytes);
        for entry in &taken {
            builder.push_entry(entry);
        }
        (builder.finish(), last)
    }

    /// Every version of `list`.
    pub(super) fn from_whole_list(list: &List) -> Self {
        let mut builder = Builder::with_capacity(list.len(), 0);
        for entry in list.iter() {
            builder.push_entry(&entry);
        }
        builder.finish()
    }

    /// `newer` and `older` merged; where both hold a version, `newer`'s row is kept (a batch
    /// writing one key twice keeps the later write, which is in the newer layer).
    pub(super) fn merge(newer: &Run, older: &Run) -> Run {
        let mut builder = Builder::with_capacity(
            newer.len() + older.len(),
            newer.rows.len() + older.rows.len(),
        );
        // Runs of a time series do not overlap: one follows the other whole.
        if newer.is_empty() || older.is_empty() || newer.last_version() < older.version(0) {
            builder.append_from(newer, 0);
            builder.append_from(older, 0);
            return builder.finish();
        }
        if older.last_version() < newer.version(0) {
            builder.append_from(older, 0);
            builder.append_from(newer, 0);
            return builder.finish();
        }
        let (mut a, mut b) = (0, 0);
        while a < newer.len() && b < older.len() {
            let (va, vb) = (newer.version(a), older.version(b));
            if va <= vb {
                builder.push(va.key, va.lsn(), newer.row_bytes(a));
                a += 1;
                if va == vb {
                    b += 1;
                }
            } else {
                builder.push(vb.key, vb.lsn(), older.row_bytes(b));
                b += 1;
            }
        }
        // One of them is used up: the rest of the other follows whole.
        builder.append_from(newer, a);
        builder.append_from(older, b);
        builder.finish()
    }

    pub(super) fn len(&self) -> usize {
        self.keys.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The last version (the run is not empty).
    fn last_version(&self) -> Version {
        self.version(self.len() - 1)
    }

    fn version(&self, i: usize) -> Version {
        Version::new(self.keys[i], self.lsns[i])
    }

    fn row_bytes(&self, i: usize) -> Option<&[u8]> {
        (!self.deleted[i]).then(|| &self.rows[self.row_range(i)])
    }

    fn row_range(&self, i: usize) -> std::ops::Range<usize> {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        start..self.ends[i]
    }

    /// Version `i`'s row, `None` for a deletion (a slice of the run's buffer, not a copy).
    fn row(&self, i: usize) -> Option<Bytes> {
        (!self.deleted[i]).then(|| self.rows.slice(self.row_range(i)))
    }

    /// The positions of the versions of keys in `range`.
    fn positions(&self, range: &RangeInclusive<u64>) -> std::ops::Range<usize> {
        let (first, after) = self.bounds(range);
        let start = self.first_at_least(first);
        let end = after.map_or(self.len(), |after| self.first_at_least(after));
        start..end.max(start)
    }

    /// The keys whose first positions delimit `range`'s versions: its start, and the key after
    /// its end if the run holds a key that high (otherwise the run's end delimits them).
    fn bounds(&self, range: &RangeInclusive<u64>) -> (u64, Option<u64>) {
        let after = range
            .end()
            .checked_add(1)
            .filter(|&after| self.keys.last().is_some_and(|&last| last >= after));
        (*range.start(), after)
    }

    /// Starts loading the key blocks [`Run::positions`] counts for `range` (the fence searches
    /// it repeats then hit the cache).
    fn prefetch_positions(&self, range: &RangeInclusive<u64>) {
        let (first, after) = self.bounds(range);
        for key in std::iter::once(first).chain(after) {
            if let Some(block) = self.block_of(key) {
                prefetch::window(&self.keys, block.start, block.end, FENCE_LINES);
            }
        }
    }

    /// The position of the first key ≥ `key` (the run's length if none is).
    fn first_at_least(&self, key: u64) -> usize {
        let Some(block) = self.block_of(key) else {
            return 0;
        };
        // The block's keys are counted, not bisected: its four lines, which a large run's
        // search misses, load in parallel instead of one bisection step after another.
        let keys = self.keys.get(block.clone()).unwrap_or_default();
        block.start + bisect_scan::<FENCE>(keys, key)
    }

    /// The positions whose keys [`Run::first_at_least`] counts for `key`, found from the fences;
    /// `None` if the first key is already ≥ `key`.
    fn block_of(&self, key: u64) -> Option<std::ops::Range<usize>> {
        // Fences before `block` are < key; the fence at `block` (key `block * FENCE`) is ≥ key.
        let block = bisect_scan::<SCAN_CACHED>(&self.fences, key);
        (block > 0).then(|| (block - 1) * FENCE + 1..(block * FENCE).min(self.len()))
    }

    /// `key`'s newest version with an LSN ≤ `snapshot`: its LSN and row.
    pub(super) fn newest(&self, key: u64, snapshot: Lsn) -> Option<(Lsn, Option<Bytes>)> {
        let mut i = self.first_at_least(key);
        while i < self.len() && self.keys[i] == key {
            if self.lsns[i] <= snapshot {
                return Some((self.lsns[i], self.row(i)));
            }
            i += 1;
        }
        None
    }

    /// Whether a walk at `snapshot` sees every version, each its key's only one in the run.
    pub(super) fn plain_at(&self, snapshot: Lsn) -> bool {
        self.unique && self.lsn_max <= snapshot
    }

    /// The keys and rows of the versions at `positions`, in order.
    pub(super) fn rows(&self, positions: std::ops::Range<usize>) -> Rows<'_> {
        Rows {
            from: self.row_range(positions.start).start,
            keys: self.keys[positions.clone()].iter(),
            ends: &self.ends[positions.clone()],
            deleted: &self.deleted[positions],
            rows: &self.rows,
            at: 0,
        }
    }

    /// The keys at `positions`.
    pub(super) fn keys_at(&self, positions: std::ops::Range<usize>) -> &[u64] {
        &self.keys[positions]
    }

    /// The key at position `i`.
    pub(super) fn key(&self, i: usize) -> u64 {
        self.keys[i]
    }

    /// The newest LSN of any version of a key in `range`.
    pub(super) fn newest_lsn(&self, range: &RangeInclusive<u64>) -> Option<Lsn> {
        self.lsns[self.positions(range)].iter().copied().max()
    }
}

/// Versions of a run in order, as keys and rows (`None` for a deletion): a pass over its
/// arrays, without a row-end lookup per version.
pub struct Rows<'a> {
    keys: std::slice::Iter<'a, u64>,
    ends: &'a [usize],
    deleted: &'a [bool],
    rows: &'a [u8],
    /// Where the next row starts in `rows`.
    from: usize,
    /// The next version's place in `ends` and `deleted`.
    at: usize,
}

impl<'a> Iterator for Rows<'a> {
    type Item = (u64, Option<&'a [u8]>);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let &key = self.keys.next()?;
        // `ends` and `deleted` are as long as `keys`, and row ends ascend within `rows`.
        let (end, deleted) = (*self.ends.get(self.at)?, *self.deleted.get(self.at)?);
        let row = self.rows.get(self.from..end)?;
        (self.from, self.at) = (end, self.at + 1);
        Some((key, (!deleted).then_some(row)))
    }
}

/// Collects a run's arrays.
#[derive(Default)]
struct Builder {
    keys: Vec<u64>,
    lsns: Vec<Lsn>,
    ends: Vec<usize>,
    deleted: Vec<bool>,
    rows: Vec<u8>,
}

impl Builder {
    fn with_capacity(versions: usize, row_bytes: usize) -> Self {
        Self {
            keys: Vec::with_capacity(versions),
            lsns: Vec::with_capacity(versions),
            ends: Vec::with_capacity(versions),
            deleted: Vec::with_capacity(versions),
            rows: Vec::with_capacity(row_bytes),
        }
    }

    fn push(&mut self, key: u64, lsn: Lsn, row: Option<&[u8]>) {
        self.keys.push(key);
        self.lsns.push(lsn);
        self.rows.extend_from_slice(row.unwrap_or_default());
        self.ends.push(self.rows.len());
        self.deleted.push(row.is_none());
    }

    /// Pushes a skip list's entry.
    fn push_entry(&mut self, entry: &Entry<'_, Version, Option<Bytes>>) {
        let version = *entry.key();
        self.push(version.key, version.lsn(), entry.value().as_deref());
    }

    /// Appends `run`'s versions from position `from` on, which come after every version pushed
    /// so far, by slice copies.
    fn append_from(&mut self, run: &Run, from: usize) {
        if from >= run.len() {
            return;
        }
        // Row ends shift from where `from`'s row starts in `run` to where it starts here.
        let (rows_from, base) = (run.row_range(from).start, self.rows.len());
        self.keys.extend_from_slice(&run.keys[from..]);
        self.lsns.extend_from_slice(&run.lsns[from..]);
        self.deleted.extend_from_slice(&run.deleted[from..]);
        self.ends
            .extend(run.ends[from..].iter().map(|end| end - rows_from + base));
        self.rows.extend_from_slice(&run.rows[rows_from..]);
    }

    fn finish(self) -> Run {
        Run {
            fences: self.keys.iter().step_by(FENCE).copied().collect(),
            unique: self.keys.windows(2).all(|pair| pair[0] != pair[1]),
            lsn_max: self.lsns.iter().copied().max().unwrap_or(0),
            keys: self.keys,
            lsns: self.lsns,
            ends: self.ends,
            deleted: self.deleted,
            rows: Bytes::from(self.rows),
        }
    }
}

/// Versions to walk: a run's, or a skip list's, taken a chunk at a time (a walk cannot hold the
/// list's own iterator, which borrows the list, beside the list's `Arc`).
pub(super) enum Source {
    Run(Arc<Run>),
    List(Arc<List>),
}

/// The first chunk taken from a skip list; each next one is twice as long, up to the last size,
/// so a short scan copies little and a long one takes few searches. The first is small because
/// every scan batch takes one from each list, and a short scan of a large table finds few of its
/// keys in the newest 16K versions (a copy of 32 was a tenth of a 100-row scan's time).
const CHUNKS: (usize, usize) = (4, 4096);

/// What a forward merge gives next ([`Merge::stretch`]).
pub(super) enum Next<'a> {
    /// Versions of one source that come before every other source's next one, from a run
    /// [`Run::plain_at`] the snapshot: the cursor, its run, their positions.
    Stretch(usize, &'a Run, std::ops::Range<usize>),
    /// The next version is in two sources (the newer replaced the older's).
    Tie,
    /// The next version's run holds a key twice or versions newer than the snapshot.
    Mixed,
    /// Nothing: every source is done.
    Done,
}

/// The run of a cursor that has copied nothing yet.
static EMPTY: LazyLock<Arc<Run>> = LazyLock::new(|| Arc::new(Builder::default().finish()));

/// One source's place in a merge.
struct Cursor {
    run: Arc<Run>,
    /// Positions in `run` not yet taken.
    left: std::ops::Range<usize>,
    /// For a skip list: the list, and the last version its chunk holds while there are more;
    /// or, while `left` is empty (no chunk copied yet), its next version, the head.
    list: Option<(Arc<List>, Version)>,
    chunk: usize,
    /// The next version it gives (`None` once done).
    head: Option<Version>,
}

impl Cursor {
    /// The position of its next version in `run` (`left` is not empty).
    fn next_at(&self, reverse: bool) -> usize {
        if reverse {
            self.left.end - 1
        } else {
            self.left.start
        }
    }
}

/// The versions of several sources in one order — key ascending and LSN descending, or the
/// reverse — each version once: where sources share one, the source listed first (the newer)
/// gives its row.
pub(super) struct Merge {
    cursors: Vec<Cursor>,
    range: RangeInclusive<u64>,
    reverse: bool,
}

impl Merge {
    /// The versions of keys in `range` of `sources`, newest first.
    pub(super) fn new(sources: Vec<Source>, range: RangeInclusive<u64>, reverse: bool) -> Self {
        let mut merge = Self {
            cursors: Vec::with_capacity(sources.len()),
            range,
            reverse,
        };
        // Every run's key blocks are asked for before any run (or the list) is searched, so that
        // their misses overlap each other and the list's search.
        for source in &sources {
            if let Source::Run(run) = source {
                run.prefetch_positions(&merge.range);
            }
        }
        for source in sources {
            let cursor = match source {
                // Heads are read once every cursor is placed (below), so that the miss on a
                // large run's LSN line overlaps the other runs' searches.
                Source::Run(run) => {
                    let left = run.positions(&merge.range);
                    let next = if reverse {
                        left.end.checked_sub(1)
                    } else {
                        Some(left.start)
                    };
                    if let Some(lsn) = next
                        .filter(|&at| left.contains(&at))
                        .and_then(|at| run.lsns.get(at))
                    {
                        prefetch::line(std::ptr::from_ref(lsn));
                    }
                    Cursor {
                        left,
                        run,
                        list: None,
                        chunk: 0,
                        head: None,
                    }
                }
                // A list's versions are copied once the walk takes one ([`Merge::fill`]): the
                // live list holds few keys of a short scan's range, often none, and finding
                // its head is one search where a copy was ten allocations.
                Source::List(list) => {
                    let head = merge.list_head(&list);
                    Cursor {
                        run: Arc::clone(&EMPTY),
                        left: 0..0,
                        list: head.map(|head| (list, head)),
                        chunk: CHUNKS.0,
                        head,
                    }
                }
            };
            merge.cursors.push(cursor);
        }
        // The runs' heads (a list's cursor holds its head, found above, in `list`).
        for i in 0..merge.cursors.len() {
            if merge.cursors[i].list.is_none() {
                merge.cursors[i].head = merge.head_of(&merge.cursors[i]);
            }
        }
        merge
    }

    /// The first and the last version the merge's key range can hold.
    fn extent(&self) -> (Version, Version) {
        (
            Version::new(*self.range.start(), Lsn::MAX),
            Version::new(*self.range.end(), 0),
        )
    }

    /// The first version of `list` in the merge's range and order.
    fn list_head(&self, list: &List) -> Option<Version> {
        let (lower, upper) = self.extent();
        let head = if self.reverse {
            *list.upper_bound(Bound::Included(&upper))?.key()
        } else {
            *list.lower_bound(Bound::Included(&lower))?.key()
        };
        (lower <= head && head <= upper).then_some(head)
    }

    /// Copies the first chunk of a list cursor that holds only its head ([`Merge::new`]).
    fn fill(&mut self, cursor: usize) {
        let current = &mut self.cursors[cursor];
        if !current.left.is_empty() {
            return;
        }
        let Some((list, head)) = current.list.take() else {
            return;
        };
        let size = current.chunk;
        let mut filled = self.chunk(list, Bound::Included(head), size);
        filled.head = self.head_of(&filled);
        self.cursors[cursor] = filled;
    }

    /// A cursor over the next `size` versions of `list` from `from` on, in the merge's order.
    fn chunk(&self, list: Arc<List>, from: Bound<Version>, size: usize) -> Cursor {
        let (lower, upper) = self.extent();
        let bounds = if self.reverse {
            (Bound::Included(lower), from)
        } else {
            (from, Bound::Included(upper))
        };
        let (run, more) = Run::from_list(&list, bounds, size, self.reverse);
        Cursor {
            left: 0..run.len(),
            run: Arc::new(run),
            list: more.map(|last| (list, last)),
            chunk: size,
            head: None,
        }
    }

    /// The next version of `cursor`'s current chunk.
    fn head_of(&self, cursor: &Cursor) -> Option<Version> {
        (!cursor.left.is_empty()).then(|| cursor.run.version(cursor.next_at(self.reverse)))
    }

    /// Whether `a` comes before `b` in this merge's order.
    fn before(&self, a: Version, b: Version) -> bool {
        if self.reverse { a > b } else { a < b }
    }

    /// Takes `cursor`'s next version (the one its head names), taking the next chunk of its
    /// list if this one is used up.
    fn advance(&mut self, cursor: usize) {
        self.fill(cursor);
        let current = &mut self.cursors[cursor];
        if self.reverse {
            current.left.end -= 1;
        } else {
            current.left.start += 1;
        }
        if current.left.is_empty()
            && let Some((list, last)) = current.list.take()
        {
            let size = (current.chunk * 2).min(CHUNKS.1);
            self.cursors[cursor] = self.chunk(list, Bound::Excluded(last), size);
        }
        self.cursors[cursor].head = self.head_of(&self.cursors[cursor]);
    }

    /// Takes `cursor`'s next version, `head`, and passes the same version in older sources:
    /// it is the one the newer source replaced.
    fn advance_past(&mut self, cursor: usize, head: Version) {
        self.advance(cursor);
        for older in cursor + 1..self.cursors.len() {
            if self.cursors[older].head == Some(head) {
                self.advance(older);
            }
        }
    }

    /// Takes versions in order, as [`Iterator::next`] would, while `take` accepts them; the
    /// version it refuses stays next. The row is borrowed from the run that holds it, and where
    /// one source's versions come before every other source's next one, that stretch is read
    /// straight from its arrays: a walk of one run (a time series, a memtable that sealed a
    /// single run) costs a pass over its arrays, not a comparison of every source per version.
    pub(super) fn take_while(&mut self, mut take: impl FnMut(Version, Option<&[u8]>) -> bool) {
        loop {
            let Some((cursor, head, others)) = self.next_source() else {
                return;
            };
            self.fill(cursor);
            if others == Some(head) {
                // An older source holds the same version, which the newer one replaced.
                let current = &self.cursors[cursor];
                if !take(head, current.run.row_bytes(current.next_at(self.reverse))) {
                    return;
                }
                self.advance_past(cursor, head);
                continue;
            }
            let reverse = self.reverse;
            let current = &mut self.cursors[cursor];
            let (run, left) = (&current.run, &mut current.left);
            let ahead = |v: Version| others.is_none_or(|o| if reverse { v > o } else { v < o });
            let mut refused = false;
            while !std::ops::Range::is_empty(left) {
                let at = if reverse { left.end - 1 } else { left.start };
                let version = run.version(at);
                if !ahead(version) {
                    break;
                }
                if !take(version, run.row_bytes(at)) {
                    refused = true;
                    break;
                }
                if reverse {
                    left.end -= 1;
                } else {
                    left.start += 1;
                }
            }
            // Re-enter through `advance`'s bookkeeping: it takes the next chunk of a list and
            // sets the head; stepping back one position first keeps the count right.
            if !refused && std::ops::Range::is_empty(left) && current.list.is_some() {
                if reverse {
                    left.end += 1;
                } else {
                    left.start -= 1;
                }
                self.advance(cursor);
            } else {
                let head = self.head_of(&self.cursors[cursor]);
                self.cursors[cursor].head = head;
            }
            if refused {
                return;
            }
        }
    }

    /// In a forward walk, what comes next (see [`Next`]): where it is a stretch, the positions
    /// of the versions one source gives before every other source's next one, none taken (see
    /// [`Merge::pass`]).
    pub(super) fn stretch(&mut self, snapshot: Lsn) -> Next<'_> {
        debug_assert!(!self.reverse);
        let Some((cursor, head, others)) = self.next_source() else {
            return Next::Done;
        };
        self.fill(cursor);
        let current = &self.cursors[cursor];
        let run = current.run.as_ref();
        if others == Some(head) {
            return Next::Tie;
        }
        if !run.plain_at(snapshot) {
            return Next::Mixed;
        }
        let left = current.left.clone();
        let end = match others {
            None => left.end,
            Some(other) => {
                let keys = &run.keys[left.clone()];
                let mut n = gallop(keys, |k| k < other.key);
                // The run's one version of the other's key comes first if it is newer.
                if keys.get(n) == Some(&other.key) && run.lsns[left.start + n] > other.lsn() {
                    n += 1;
                }
                left.start + n
            }
        };
        Next::Stretch(cursor, run, left.start..end)
    }

    /// Takes the first `n` versions of the stretch [`Merge::stretch`] gave for `cursor`.
    pub(super) fn pass(&mut self, cursor: usize, n: usize) {
        if n == 0 {
            return;
        }
        let current = &mut self.cursors[cursor];
        // `advance` takes the last one: it takes the next chunk of a list and sets the head.
        current.left.start += n - 1;
        self.advance(cursor);
    }

    /// The cursor with the next version, that version, and the first of every other cursor's
    /// next versions (`None` if no other cursor has one). The first cursor with the next
    /// version wins a tie: it is the newer source.
    fn next_source(&self) -> Option<(usize, Version, Option<Version>)> {
        let mut best: Option<(usize, Version)> = None;
        let mut others: Option<Version> = None;
        for (i, cursor) in self.cursors.iter().enumerate() {
            let Some(head) = cursor.head else { continue };
            match best {
                Some((_, b)) if !self.before(head, b) => {
                    others = Some(others.map_or(head, |o| self.first(o, head)));
                }
                _ => {
                    if let Some((_, b)) = best {
                        others = Some(others.map_or(b, |o| self.first(o, b)));
                    }
                    best = Some((i, head));
                }
            }
        }
        best.map(|(cursor, head)| (cursor, head, others))
    }

    /// The first of `a` and `b` in this merge's order.
    fn first(&self, a: Version, b: Version) -> Version {
        if self.before(a, b) { a } else { b }
    }
}

impl Iterator for Merge {
    /// Key, LSN and row (`None` for a deletion).
    type Item = (u64, Lsn, Option<Bytes>);

    fn next(&mut self) -> Option<Self::Item> {
        let (cursor, head, _) = self.next_source()?;
        self.fill(cursor);
        let current = &self.cursors[cursor];
        let i = current.next_at(self.reverse);
        let item = (head.key, head.lsn(), current.run.row(i));
        self.advance_past(cursor, head);
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn run_of(mut versions: Vec<(u64, Lsn)>) -> Run {
        versions.sort_by_key(|&(key, lsn)| Version::new(key, lsn));
        versions.dedup();
        let mut builder = Builder::default();
        for (key, lsn) in versions {
            builder.push(key, lsn, Some(&key.to_le_bytes()));
        }
        builder.finish()
    }

    proptest! {
        #[test]
        fn a_fenced_search_finds_what_bisection_finds(
            keys in proptest::collection::vec(0..500u64, 0..400),
            probes in proptest::collection::vec(any::<u64>(), 1..20),
        ) {
            let run = run_of(keys.iter().map(|&k| (k, k % 3)).collect());
            let probes = probes.iter().map(|p| p % 520).chain([0, u64::MAX]);
            for probe in probes {
                prop_assert_eq!(run.first_at_least(probe), run.keys.partition_point(|&k| k < probe));
            }
        }

        #[test]
        fn a_merge_is_the_sorted_union(
            newer in proptest::collection::vec((0..300u64, 0..4u64), 0..200),
            older in proptest::collection::vec((0..300u64, 0..4u64), 0..200),
            shift in 0..400u64,
        ) {
            // Shifted, the runs often do not overlap (the concatenating path).
            let older: Vec<(u64, Lsn)> = older.into_iter().map(|(k, l)| (k + shift, l)).collect();
            let (a, b) = (run_of(newer.clone()), run_of(older.clone()));
            let merged = Run::merge(&a, &b);
            let expected = run_of(newer.into_iter().chain(older).collect());
            prop_assert_eq!(&merged.keys, &expected.keys);
            prop_assert_eq!(&merged.lsns, &expected.lsns);
            prop_assert_eq!(&merged.fences, &expected.fences);
            for i in 0..merged.len() {
                prop_assert_eq!(merged.row(i), Some(Bytes::copy_from_slice(&merged.keys[i].to_le_bytes())));
            }
        }
    }

    #[test]
    fn where_both_runs_hold_a_version_the_newer_row_is_kept() {
        let mut newer = Builder::default();
        newer.push(4, 2, Some(b"new"));
        let mut older = Builder::default();
        older.push(3, 1, None);
        older.push(4, 2, Some(b"old"));
        let merged = Run::merge(&newer.finish(), &older.finish());
        assert_eq!(merged.keys, [3, 4]);
        assert_eq!(merged.row(0), None);
        assert_eq!(merged.row(1), Some(Bytes::from_static(b"new")));
    }
}
