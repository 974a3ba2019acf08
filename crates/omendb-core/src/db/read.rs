//! The read path: point reads, scans as a merge of memtables and segments (which also feed an
//! aggregate's fold, `db/aggregate.rs`) and `explain`.
//!
//! A read fixes its snapshot LSN first and loads the version after, so every write at or below
//! the snapshot is in that version (in a memtable, or in a segment that replaced it). Layers are
//! consulted newest first: an optional private memtable (a transaction's own writes, read at
//! every LSN), the memtable generations, then the segments; the first layer with a visible
//! version of a key decides. Memtable range deletions are folded in by `Memtable::get`, so a
//! key only older layers hold is hidden by a newer range deletion.

use std::ops::{ControlFlow, Range, RangeInclusive};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Int64Array, RecordBatch, UInt64Array,
};
use arrow_schema::{Schema, SchemaRef};
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use omendb_storage::segment::{CachePin, Cells, Page, PageCells, Projection, TOMBSTONE_COLUMN};

use super::aggregate::Fold;
use super::options::ScanOptions;
use super::version::{TableState, Version};
use crate::error::{Error, Result};
use crate::index::LearnedIndex;
use crate::index::search::{gallop, gallop_back};
use crate::key::{Key, KeyType};
use crate::memtable::{Lent, Lookup, Lsn, Memtable, Newest};
use crate::segment::{Searched, Segment};
use crate::table::{RowCodec, RowDecoder, TableDef, Value, key_data_type, value_at};

/// Default rows per scan batch, where rows are small.
const SCAN_BATCH_ROWS: usize = 8192;

/// Decoded bytes a scan batch holds at most by default, by its segments' average row: counted in
/// rows alone, 8,192 rows of the 1 MiB a row may hold made a batch of 8 GiB.
const SCAN_BATCH_BYTES: usize = 16 << 20;

/// A memtable to read and the snapshot to read it at.
pub(crate) type MemLayer = (Arc<Memtable>, Lsn);

/// Where a key's newest visible version is.
#[derive(Clone, Debug)]
pub(crate) enum Found {
    /// In a memtable: the encoded row.
    Row(Bytes),
    /// In a segment, at a position (the row may be a tombstone).
    Segment(Arc<Segment>, usize),
}

/// A transaction's own writes to one table as a read sees them: those up to `upto`, the
/// transaction's last write when the read began. A scan's stream outlives the call that opened
/// it, and writes the transaction makes while the stream runs are not the scan's: read at every
/// private LSN, they turned up in later batches (a scan that put each key's successor never
/// ended).
#[derive(Clone, Debug)]
pub(crate) struct Overlay {
    pub(crate) writes: Arc<Memtable>,
    pub(crate) upto: Lsn,
}

/// The memtable layers of `table` in `version` at `snapshot`, newest first, after `overlay`.
pub(crate) fn mem_layers(
    version: &Version,
    table: u32,
    snapshot: Lsn,
    overlay: Option<&Overlay>,
) -> Vec<MemLayer> {
    overlay
        .map(|o| (Arc::clone(&o.writes), o.upto))
        .into_iter()
        .chain(
            version
                .memtables
                .iter()
                .filter_map(|g| g.table(table))
                .map(|m| (m, snapshot)),
        )
        .collect()
}

/// Finds `key`'s newest version visible at `snapshot`; `None` if absent or deleted.
pub(crate) async fn locate(
    layers: &[MemLayer],
    table: &TableState,
    key: u64,
    snapshot: Lsn,
) -> Result<Option<Found>> {
    for (memtable, at) in layers {
        match memtable.get(key, *at) {
            Lookup::Found { row, .. } => return Ok(Some(Found::Row(row))),
            Lookup::Deleted { .. } => return Ok(None),
            Lookup::Absent => {}
        }
    }
    let mut probes = 0;
    let mut found = None;
    for candidate in table.holding(key) {
        probes += u64::from(candidate.filtered());
        let segment = candidate.segment;
        if let Some(position) = segment.visible_row(candidate.rows(key), snapshot).await? {
            found = Some(Found::Segment(Arc::clone(segment), position));
            break;
        }
    }
    table.charge.probes(probes);
    Ok(found)
}

/// A point read's first, synchronous step: what memtables and cached pages decide without
/// waiting, or what is left to do.
pub(crate) enum Step<T> {
    /// The answer.
    Done(Option<T>),
    /// The key's row is at this position of a segment whose page is not cached.
    Fetch(Arc<Segment>, usize),
    /// A segment newer than the snapshot must be searched by LSN: take the general path.
    General,
}

/// The synchronous part of a point read of `key` at `snapshot`: memtables (newest first, after
/// `overlay`), then segments whose rows are all visible at the snapshot, reading the row's value
/// columns from cached pages (a value of one width from its page-table slot,
/// [`Segment::search_value`], where `answer` reads one; otherwise through the pages,
/// [`Segment::row_in`]: a tombstone is `None` without a call). Allocates nothing and takes no
/// reference counts on the way.
pub(crate) fn point_step<A: Answer>(
    version: &Version,
    table: &TableState,
    overlay: Option<&Overlay>,
    key: u64,
    snapshot: Lsn,
    answer: &A,
) -> Result<Step<A::Output>> {
    // The first line each layer will read is asked for before anything is read, so that their
    // misses overlap each other and the memtables' searches: the segments' filter lines (the
    // last candidate's index model line instead) and the memtables' filter lines.
    let candidates = table.holding(key);
    for candidate in candidates.clone() {
        candidate.prefetch(key);
    }
    // Found twice rather than gathered once: a generation finds its memtable in a few loads
    // (its first slots), where collecting them cost a tenth of a cached read's instructions.
    let memtables = || {
        version
            .memtables
            .iter()
            .filter_map(|generation| generation.memtable(table.def.id))
    };
    for memtable in memtables() {
        memtable.prefetch(key);
    }
    match in_memtables(overlay, memtables(), key, snapshot) {
        Lookup::Found { row, .. } => return Ok(Step::Done(Some(answer.row(row)?))),
        Lookup::Deleted { .. } => return Ok(Step::Done(None)),
        Lookup::Absent => {}
    }
    let mut probes = 0;
    for candidate in candidates {
        let segment = candidate.segment;
        if !segment.all_visible_at(snapshot) {
            // The general path charges its own probes.
            return Ok(Step::General);
        }
        probes += u64::from(candidate.filtered());
        let rows = match answer.value() {
            Some(from_bytes) => match candidate.search_value(key, from_bytes) {
                Searched::Value(value) => {
                    table.charge.probes(probes);
                    return Ok(Step::Done(Some(value)));
                }
                Searched::Rows(rows) => rows,
            },
            None => candidate.rows(key),
        };
        if rows.is_empty() {
            continue;
        }
        table.charge.probes(probes);
        return match segment.reader.read_cached(
            rows.start as u64,
            segment.point_read(),
            |pages, offset| segment.row_in(pages, offset, |p, o| answer.pages(p, o)),
        )? {
            Some(answer) => Ok(Step::Done(answer)),
            None => Ok(Step::Fetch(Arc::clone(segment), rows.start)),
        };
    }
    table.charge.probes(probes);
    Ok(Step::Done(None))
}

/// Rows of one segment a batched read still has to fetch: (answer slot, row position).
pub(crate) type Misses = Vec<(Arc<Segment>, Vec<(usize, usize)>)>;

/// The synchronous part of a batched point read: fills `out` (one slot per key, in order) from
/// memtables and cached pages, locating segment rows with the index's batched lookup, and
/// returns the rows whose pages must be read. `None` if a segment newer than the snapshot means
/// the general path must be taken.
///
/// Each layer is asked about all the keys still undecided at once, and every key's memory is
/// asked for before any key is probed (filter lines, then the index's windows, then the rows'
/// cells), so the cache misses of many keys overlap instead of following one another.
pub(crate) fn multi_step<A: Answer>(
    version: &Version,
    table: &TableState,
    overlay: Option<&Overlay>,
    keys: &[u64],
    snapshot: Lsn,
    answer: &A,
    out: &mut Vec<Option<A::Output>>,
) -> Result<Option<Misses>> {
    if table.segments.iter().any(|s| !s.all_visible_at(snapshot)) {
        return Ok(None);
    }
    out.clear();
    out.resize_with(keys.len(), || None);
    let mut undecided: Vec<usize> = (0..keys.len()).collect();
    // The first layer that knows a key decides it, as in `in_memtables`.
    for (memtable, at) in mem_layers(version, table.def.id, snapshot, overlay) {
        undecided
            .iter()
            .for_each(|&slot| memtable.prefetch(keys[slot]));
        let mut still = Vec::with_capacity(undecided.len());
        for &slot in &undecided {
            match memtable.get(keys[slot], at) {
                Lookup::Found { row, .. } => out[slot] = Some(answer.row(row)?),
                Lookup::Deleted { .. } => {}
                Lookup::Absent => still.push(slot),
            }
        }
        undecided = still;
    }
    // Each key's last candidate, found once rather than once per segment the key passes.
    let last: Vec<Option<usize>> = keys.iter().map(|&key| table.last_holding(key)).collect();
    let mut misses: Misses = Vec::new();
    let mut probes = 0;
    let mut queries = Vec::new();
    let mut positions = Vec::new();
    for (i, segment) in table.segments.iter().enumerate() {
        if undecided.is_empty() {
            break;
        }
        // Keys whose last candidate this segment is are looked up in its index directly (see
        // `Candidate::rows`); the others only if the segment's filter passes them.
        let mut asked = Vec::with_capacity(undecided.len());
        let mut filtered = Vec::new();
        let mut still = Vec::new();
        for &slot in &undecided {
            let key = keys[slot];
            if !segment.may_hold(key) {
                still.push(slot);
            } else if last[slot] != Some(i) {
                filtered.push(slot);
            } else {
                asked.push(slot);
            }
        }
        filtered
            .iter()
            .for_each(|&slot| segment.prefetch_filter(keys[slot]));
        probes += filtered.len() as u64;
        for slot in filtered {
            if segment.may_contain(keys[slot]) {
                asked.push(slot);
            } else {
                still.push(slot);
            }
        }
        queries.clear();
        queries.extend(asked.iter().map(|&slot| keys[slot]));
        let segment_keys = segment.keys();
        segment
            .index
            .lower_bound_batch(segment_keys, &queries, &mut positions);
        let mut found = Vec::with_capacity(asked.len());
        for (&slot, &position) in asked.iter().zip(&positions) {
            if segment_keys.get(position) == Some(&keys[slot]) {
                found.push((slot, position));
            } else {
                still.push(slot);
            }
        }
        let rows: Vec<u64> = found.iter().map(|&(_, position)| position as u64).collect();
        let read = |pages: &[&Page], offset| answer.pages(pages, offset);
        let missing = segment.rows_cached(&rows, answer.value(), read, |i, row| {
            out[found[i].0] = row;
        })?;
        if !missing.is_empty() {
            misses.push((
                Arc::clone(segment),
                missing.iter().map(|&i| found[i]).collect(),
            ));
        }
        undecided = still;
    }
    table.charge.probes(probes);
    Ok(Some(misses))
}

/// What the memtables say about `key`: the transaction's own writes (`overlay`) first, then the
/// generations' `memtables`, newest first; the first that knows the key decides.
fn in_memtables(
    overlay: Option<&Overlay>,
    memtables: impl Iterator<Item = impl std::ops::Deref<Target = Memtable>>,
    key: u64,
    snapshot: Lsn,
) -> Lookup {
    let overlay = overlay.map(|o| o.writes.get(key, o.upto));
    overlay
        .into_iter()
        .chain(memtables.map(|m| m.get(key, snapshot)))
        .find(|lookup| !matches!(lookup, Lookup::Absent))
        .unwrap_or(Lookup::Absent)
}

/// How an answer is made from a value alone (see [`Answer::value`]).
pub(crate) type ValueOf<T> = fn(&[u8]) -> T;

/// How a point read turns the row it finds into its answer: a key-value table's value
/// ([`KvValue`]) or a row's value columns ([`RowValues`]).
pub(crate) trait Answer {
    type Output;

    /// The answer from a memtable's encoded row.
    fn row(&self, row: Bytes) -> Result<Self::Output>;

    /// How to answer from a value alone, read from a page of one width without the page
    /// ([`Segment::search_value`]); `None` if the answer needs more than that value.
    fn value(&self) -> Option<ValueOf<Self::Output>>;

    /// The answer from the value columns' pages at `offset`, tombstones answered already (see
    /// [`Segment::row_in`]).
    fn pages(&self, pages: &[&Page], offset: usize) -> Option<Self::Output>;
}

/// A key-value table's value.
pub(crate) struct KvValue;

impl Answer for KvValue {
    type Output = Bytes;

    fn row(&self, row: Bytes) -> Result<Bytes> {
        crate::table::RowCodec::kv_value(&row)
    }

    fn value(&self) -> Option<ValueOf<Bytes>> {
        Some(Bytes::copy_from_slice)
    }

    fn pages(&self, pages: &[&Page], offset: usize) -> Option<Bytes> {
        pages.first()?.binary(offset).map(Bytes::copy_from_slice)
    }
}

/// A row's value columns, decoded as the table defines them.
pub(crate) struct RowValues<'a>(pub(crate) &'a TableDef);

impl Answer for RowValues<'_> {
    type Output = Vec<Value>;

    fn row(&self, row: Bytes) -> Result<Vec<Value>> {
        self.0.codec.decode_values(&row)
    }

    fn value(&self) -> Option<ValueOf<Vec<Value>>> {
        None
    }

    fn pages(&self, pages: &[&Page], offset: usize) -> Option<Vec<Value>> {
        Some(
            pages
                .iter()
                .map(|page| value_at(page.array(), offset))
                .collect(),
        )
    }
}

/// The answer for a found row, from a memtable's row or a segment's (read from cached pages,
/// or its pages read); `None` for a tombstone.
pub(crate) async fn answer_found<A: Answer>(found: Found, answer: &A) -> Result<Option<A::Output>> {
    match found {
        Found::Row(row) => answer.row(row).map(Some),
        Found::Segment(segment, position) => {
            let read =
                |pages: &[&Page], offset| segment.row_in(pages, offset, |p, o| answer.pages(p, o));
            if let Some(row) =
                segment
                    .reader
                    .read_cached(position as u64, segment.point_read(), read)?
            {
                return Ok(row);
            }
            let batch = segment
                .reader
                .fetch(position as u64, segment.point_read())
                .await?;
            let pages = pages_of(&batch);
            Ok(read(&pages.iter().collect::<Vec<_>>(), 0))
        }
    }
}

/// A batch's columns as the pages [`Answer::pages`] takes.
pub(crate) fn pages_of(batch: &RecordBatch) -> Vec<Page> {
    batch.columns().iter().cloned().map(Page::new).collect()
}

/// A key-ordered walk over one segment's rows in a key range, one key (all its rows) at a time.
struct SegmentCursor<'a> {
    /// The segment's key column.
    keys: &'a [u64],
    /// Whether every row of the segment is visible at the scan's snapshot.
    visible: bool,
    /// Whether every key has one row ([`Segment::unique`]).
    unique: bool,
    /// Positions not yet walked.
    left: Range<usize>,
}

impl SegmentCursor<'_> {
    /// The next key, without consuming it.
    fn next_key(&self, reverse: bool) -> Option<u64> {
        if self.left.is_empty() {
            return None;
        }
        let at = if reverse {
            self.left.end - 1
        } else {
            self.left.start
        };
        self.keys.get(at).copied()
    }

    /// The next key and its rows (newest first), without consuming them.
    fn peek(&self, reverse: bool) -> Option<(u64, Range<usize>)> {
        let key = self.next_key(reverse)?;
        let left = &self.keys[self.left.clone()];
        if reverse {
            let start = self.left.start + gallop_back(left, |k| k < key);
            Some((key, start..self.left.end))
        } else {
            let end = self.left.start + gallop(left, |k| k <= key);
            Some((key, self.left.start..end))
        }
    }

    /// The rows from the next one on, in scan order, whose keys come before `bound` (no key of
    /// another source is nearer), at most `max` of them, ending before the first key that has
    /// more than one row: a run in which every row is its key's only version.
    fn run(&self, bound: Option<u64>, reverse: bool, max: usize) -> Range<usize> {
        let keys = self.keys;
        let Range { start, end } = self.left.clone();
        if reverse {
            let lowest = bound.map_or(start, |b| {
                start + gallop_back(&keys[start..end], |k| k <= b)
            });
            let lowest = lowest.max(end.saturating_sub(max));
            if self.unique {
                return lowest..end;
            }
            let mut from = end;
            while from > lowest {
                let at = from - 1;
                if at > start && keys[at - 1] == keys[at] {
                    break;
                }
                from = at;
            }
            from..end
        } else {
            let highest = bound.map_or(end, |b| start + gallop(&keys[start..end], |k| k < b));
            let highest = highest.min(start.saturating_add(max));
            if self.unique {
                return start..highest;
            }
            let mut to = start;
            while to < highest {
                if to + 1 < end && keys[to + 1] == keys[to] {
                    break;
                }
                to += 1;
            }
            start..to
        }
    }

    fn consume(&mut self, rows: &Range<usize>, reverse: bool) {
        if reverse {
            self.left.end = rows.start;
        } else {
            self.left.start = rows.end;
        }
    }
}

/// A key ranked so that the greatest rank is the next key in scan order: the key itself in a
/// reverse scan, its complement forward (its own inverse either way).
fn rank(key: u64, reverse: bool) -> u64 {
    if reverse { key } else { !key }
}

/// The nearer, in scan order, of two next keys.
fn nearer(a: Option<u64>, b: Option<u64>, reverse: bool) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if reverse { a.max(b) } else { a.min(b) }),
        (a, b) => a.or(b),
    }
}

/// The segments' next keys as (rank, segment), ascending, so that the next key in scan order is
/// the last. A scan merges a handful of segments, for which a sorted list beats a heap: the
/// next key is taken by a truncation and the one after it is beside it.
struct Heads(Vec<(u64, usize)>);

impl Heads {
    /// The next key's rank and segment.
    fn first(&self) -> Option<(u64, usize)> {
        self.0.last().copied()
    }

    /// The rank of the key after the next one (of another segment, or of the same rank).
    fn second_rank(&self) -> Option<u64> {
        let at = self.0.len().checked_sub(2)?;
        self.0.get(at).map(|&(ranked, _)| ranked)
    }

    fn pop(&mut self) {
        self.0.pop();
    }

    /// Replaces the next key's entry with `head`, the same segment's key after it (which ranks
    /// lower): one pass down the list, where a pop and a push would shrink and grow it.
    fn replace_first(&mut self, head: (u64, usize)) {
        let heads = &mut self.0;
        let Some(mut at) = heads.len().checked_sub(1) else {
            return;
        };
        while at > 0 && heads[at - 1] > head {
            heads[at] = heads[at - 1];
            at -= 1;
        }
        heads[at] = head;
    }

    fn push(&mut self, head: (u64, usize)) {
        // An insertion step, not `Vec::insert`: the list is a handful long, and moving its
        // entries one by one costs less than the call to move them as a block.
        self.0.push(head);
        let mut at = self.0.len() - 1;
        while at > 0 && self.0[at - 1] > head {
            self.0.swap(at - 1, at);
            at -= 1;
        }
    }
}

/// Rows a scan batch takes, in scan order.
enum Pick {
    /// A key's row from a memtable; the rows themselves are decoded as they are decided (a
    /// memtable lends its rows only while it is walked), in the order of these picks.
    Row(u64),
    /// Rows of segment `segment` (an index into the table's segments), one per key, taken in
    /// scan order: ascending positions, or descending in a reverse scan. Tombstones included.
    Rows {
        segment: usize,
        positions: Range<usize>,
    },
}

/// How many times `picks` move from one segment's rows to another's: the merge steps between
/// runs that reads pay for ([`super::charge::ReadCharge`]).
fn switches(picks: &[Pick]) -> u64 {
    let mut last = None;
    let mut switches = 0;
    for pick in picks {
        if let Pick::Rows { segment, .. } = pick {
            switches += u64::from(last.is_some_and(|last| last != *segment));
            last = Some(*segment);
        }
    }
    switches
}

/// Appends segment rows to `picks`, joining them to the last pick when they continue it.
fn push_rows(picks: &mut Vec<Pick>, segment: usize, rows: Range<usize>, reverse: bool) {
    if let Some(Pick::Rows {
        segment: last,
        positions,
    }) = picks.last_mut()
        && *last == segment
    {
        if !reverse && positions.end == rows.start {
            positions.end = rows.end;
            return;
        }
        if reverse && rows.end == positions.start {
            positions.start = rows.start;
            return;
        }
    }
    picks.push(Pick::Rows {
        segment,
        positions: rows,
    });
}

/// Where a scan step puts the memtable rows it decides on, in scan order (a row that does not
/// decode is `Corrupt`): into a decoder for a batch, or a key-value table's values to lend.
type TakeRow<'a> = dyn FnMut(&[u8]) -> Result<()> + Send + 'a;

/// Takes a memtable row a scan decided on: folded into `fold` if there is one, else given to
/// `rows`.
fn take_row(rows: &mut TakeRow<'_>, fold: Option<&mut Fold>, key: u64, row: &[u8]) -> Result<()> {
    match fold {
        Some(fold) => fold.add_lent(Lent::One(key, Some(row))).map(drop),
        None => rows(row),
    }
}

/// A key-value table's memtable values of a scan step, end to end, which `scan_values` lends:
/// copied once, with no array built (a decoder's builders and their finish were most of what a
/// short scan's memtable rows cost). Kept from step to step.
#[derive(Debug, Default)]
struct KvValues {
    bytes: Vec<u8>,
    /// Value `i` is `bytes[ends[i - 1]..ends[i]]` (from 0 for the first).
    ends: Vec<usize>,
}

impl KvValues {
    fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }

    /// Takes the value of a key-value table's row (encoded).
    fn push(&mut self, row: &[u8]) -> Result<()> {
        self.bytes.extend_from_slice(RowCodec::kv_value_of(row)?);
        self.ends.push(self.bytes.len());
        Ok(())
    }

    /// Value `i`; `None` past the last.
    fn get(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)?;
        let start = match i.checked_sub(1) {
            Some(before) => *self.ends.get(before)?,
            None => 0,
        };
        self.bytes.get(start..end)
    }
}

/// How a scan of some of a table's columns reads one segment's rows. A scan of every column
/// needs none: it reads with the segment's own projections (see [`Scan::segment_rows`]), so a
/// short scan does not prepare a projection per segment.
struct SegmentRead {
    projection: Projection,
    /// The scan's value columns, by position in a batch read with `projection`.
    columns: Vec<usize>,
    /// The tombstones' position in such a batch; `None` if they are not read (the segment
    /// holds none).
    tombstones: Option<usize>,
}

impl SegmentRead {
    /// Reads with `projection` the value columns named `columns` (and the tombstones if the
    /// projection has them).
    fn new(projection: Projection, columns: &[&str]) -> Result<Self> {
        // `column_with_name`, not `index_of`: a miss is an answer here, not an error to format.
        let schema = projection.schema();
        let position = |name: &str| schema.column_with_name(name).map(|(at, _)| at);
        let columns = columns
            .iter()
            .map(|name| {
                position(name)
                    .ok_or_else(|| Error::Corrupt(format!("a segment lost column {name:?}")))
            })
            .collect::<Result<_>>()?;
        let tombstones = position(TOMBSTONE_COLUMN);
        Ok(Self {
            projection,
            columns,
            tombstones,
        })
    }
}

/// The rows a scan step reads from one segment: the range that covers its picks.
struct Covered {
    /// The scan's value columns over the range, each of the range's length (checked when read).
    columns: Vec<ArrayRef>,
    /// The positions read.
    range: Range<usize>,
    /// The range's tombstones (`None`: the segment holds none), of the range's length.
    deleted: Option<BooleanArray>,
}

impl Covered {
    /// [`walk_rows`] over the covered rows and their tombstones.
    #[inline(always)]
    fn walk(
        &self,
        keys: &[u64],
        positions: &Range<usize>,
        reverse: bool,
        take: impl FnMut(u64, usize) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>> {
        walk_rows(
            keys,
            positions,
            &self.range,
            self.deleted.as_ref(),
            reverse,
            take,
        )
    }
}

/// Calls `take` with the key and the row (within `covered`, the positions a step read or
/// borrowed) of each of `positions` that is a row, not a tombstone (`deleted`, over `covered`),
/// in scan order (descending if `reverse`), until it breaks. `keys` are the segment's keys.
/// Positions outside `covered`, or keys the segment does not hold, are `Corrupt`. Called once
/// per pick, which in a merge of interleaved segments is one row: inlined, so that its checks
/// are a few instructions.
#[inline(always)]
fn walk_rows(
    keys: &[u64],
    positions: &Range<usize>,
    covered: &Range<usize>,
    deleted: Option<&BooleanArray>,
    reverse: bool,
    mut take: impl FnMut(u64, usize) -> ControlFlow<()>,
) -> Result<ControlFlow<()>> {
    let lost = || Error::Corrupt("a scan step lost its segment rows".to_owned());
    if positions.start < covered.start || positions.end > covered.end {
        return Err(lost());
    }
    let keys = keys.get(positions.clone()).ok_or_else(lost)?;
    let first = positions.start - covered.start;
    // `first + i` is below `covered`'s length, checked above, which the tombstones have
    // (checked where they are read).
    let mut each = |(i, &key): (usize, &u64)| {
        let row = first + i;
        match deleted {
            Some(deleted) if deleted.value(row) => ControlFlow::Continue(()),
            _ => take(key, row),
        }
    };
    Ok(if reverse {
        keys.iter().enumerate().rev().try_for_each(&mut each)
    } else {
        keys.iter().enumerate().try_for_each(&mut each)
    })
}

/// Where a lending step reads a segment's values.
enum StepValues<'a> {
    /// Its cached page of one width (row = row within the page).
    Page(Cells<'a>),
    /// Its covering range, read (row = row within the range).
    Read(&'a BinaryArray),
}

impl<'a> StepValues<'a> {
    /// Row `row`'s value. A row past the end, or a null in a key-value table's non-nullable
    /// value column, is damage.
    #[inline(always)]
    fn get(&self, row: usize) -> Result<&'a [u8]> {
        match self {
            Self::Page(cells) => cells
                .row(row)
                .ok_or_else(|| Error::Corrupt("a scan step lost its segment rows".to_owned())),
            Self::Read(values) => lendable(values, row).ok_or_else(null_value),
        }
    }
}

/// What [`Scan::lend_picks`] did with a step's picks.
enum Lending {
    /// Lent this many rows; whether the visitor broke off.
    Lent(usize, ControlFlow<()>),
    /// Lent none: these segments' rows are not on cached pages of one width, and are read.
    Uncached(Vec<usize>),
}

/// Rows of a scan batch by default: [`SCAN_BATCH_ROWS`], fewer where a segment's rows of the
/// projected `columns` (`None`: all) are large. (A memtable's rows are bounded by the memtable's
/// size.)
fn default_batch_rows(segments: &[Arc<Segment>], columns: Option<&[usize]>) -> usize {
    segments
        .iter()
        .map(|s| s.rows_in(SCAN_BATCH_BYTES, SCAN_BATCH_ROWS, columns))
        .min()
        .unwrap_or(SCAN_BATCH_ROWS)
}

/// A scan in progress.
pub(crate) struct Scan {
    table: Arc<TableState>,
    layers: Vec<MemLayer>,
    snapshot: Lsn,
    /// Keys not yet scanned (`None` when done).
    left: Option<RangeInclusive<u64>>,
    reverse: bool,
    remaining: Option<usize>,
    batch_rows: usize,
    /// Projected value columns (indexes into the declared schema).
    columns: Vec<usize>,
    output: SchemaRef,
    /// Per segment: how its rows are read (`None`: every column, see [`SegmentRead`]).
    reads: Option<Vec<SegmentRead>>,
    /// Whether batches carry the key column (first); an aggregate without buckets needs none.
    keys: bool,
    /// The picks of a batch, kept from one batch to the next so that a long scan does not grow
    /// a new list for each.
    picks: Vec<Pick>,
}

impl Scan {
    pub(crate) fn new(
        version: &Version,
        table: Arc<TableState>,
        range: Option<RangeInclusive<u64>>,
        snapshot: Lsn,
        overlay: Option<&Overlay>,
        options: &ScanOptions,
    ) -> Result<Self> {
        let def = &table.def;
        let columns: Vec<usize> = match &options.projection {
            None => (0..def.schema().fields().len()).collect(),
            Some(names) => names
                .iter()
                .map(|name| {
                    def.schema().index_of(name).map_err(|_| {
                        Error::BadInput(format!("table {:?} has no column {name:?}", def.name))
                    })
                })
                .collect::<Result<_>>()?,
        };
        if columns
            .iter()
            .enumerate()
            .any(|(i, c)| columns[..i].contains(c))
        {
            return Err(Error::BadInput(
                "a projection names a column twice".to_owned(),
            ));
        }
        let range = range.filter(|_| options.limit != Some(0));
        // Every column is what a point read fetches: its schema and each segment's projection
        // are made once, with the table and the segment.
        let output = match options.projection {
            None => Arc::clone(&def.output),
            Some(_) => {
                let mut fields = vec![def.output.field(0).clone()];
                fields.extend(columns.iter().map(|&c| def.schema().field(c).clone()));
                Arc::new(Schema::new(fields))
            }
        };
        let reads = match &options.projection {
            None => None,
            Some(_) => {
                let names: Vec<&str> = std::iter::once(TOMBSTONE_COLUMN)
                    .chain(
                        columns
                            .iter()
                            .map(|&c| def.schema().field(c).name().as_str()),
                    )
                    .collect();
                let reads = table
                    .segments
                    .iter()
                    .map(|s| {
                        // A segment without tombstones is read without the column, unless the
                        // scan reads no value column (a batch needs one).
                        let projection = match &s.values {
                            Some(_) if names.len() > 1 => s.reader.projection(&names[1..])?,
                            _ => s.reader.projection(&names)?,
                        };
                        SegmentRead::new(projection, &names[1..])
                    })
                    .collect::<Result<_>>()?;
                Some(reads)
            }
        };
        let batch_rows = options
            .batch_rows
            .unwrap_or_else(|| {
                let projected = options.projection.as_ref().map(|_| &columns[..]);
                default_batch_rows(&table.segments, projected)
            })
            .max(1);
        Ok(Self {
            layers: mem_layers(version, def.id, snapshot, overlay),
            table,
            snapshot,
            left: range,
            reverse: options.reverse,
            remaining: options.limit,
            batch_rows,
            columns,
            output,
            reads,
            keys: true,
            picks: Vec::new(),
        })
    }

    /// The scan with batches of the value columns alone: what an aggregate without buckets
    /// reads (no key column is built, copied or decoded for it).
    fn without_keys(mut self) -> Self {
        self.keys = false;
        // `Scan::new` puts the key field first in every output schema, so `[1..]` is in range.
        self.output = Arc::new(Schema::new(self.output.fields()[1..].to_vec()));
        self
    }

    /// The scan as a stream of batches (never empty ones).
    pub(crate) fn into_stream(self) -> BoxStream<'static, Result<RecordBatch>> {
        stream::try_unfold(self, |mut scan| async move {
            let batch = scan.next_batch(None).await?;
            Ok(batch.map(|b| (b, scan)))
        })
        .boxed()
    }

    /// Runs the scan to its end into `fold`: memtable rows are folded where they lie, batches
    /// of segment rows as they come. (An aggregate's scan has no limit, which folded rows
    /// would not count against.)
    pub(crate) async fn fold(self, mut fold: Fold) -> Result<Fold> {
        let mut scan = if fold.needs_keys() {
            self
        } else {
            self.without_keys()
        };
        while let Some(batch) = scan.next_batch(Some(&mut fold)).await? {
            fold.add_batch(&batch)?;
            // Cached pages never make a read wait: without a yield per batch, an aggregate
            // over them ran to its end in one poll, past its caller's timeout and cancellation.
            tokio::task::yield_now().await;
        }
        Ok(fold)
    }

    /// The next batch; with `fold`, memtable rows go to it instead of the batch.
    async fn next_batch(&mut self, mut fold: Option<&mut Fold>) -> Result<Option<RecordBatch>> {
        while let Some((range, want)) = self.next_want() {
            let mut picks = self.take_picks(want);
            let mut mem_rows = self.table.def.codec.decoder();
            let last = self
                .decide(
                    range.clone(),
                    want,
                    &mut picks,
                    fold.as_deref_mut(),
                    &mut |row| mem_rows.push(row),
                )
                .await?;
            self.charge_switches(&picks);
            let batch = self.materialize(&picks, mem_rows).await?;
            self.advance(&range, last, picks, batch.num_rows());
            if batch.num_rows() > 0 {
                return Ok(Some(batch));
            }
            // A stretch of rows that gave no batch (folded memtable rows, deleted keys) is a
            // step that waited on nothing: yield, so that a caller's timeout or cancellation
            // can act before the next (an aggregate over a memtable ran whole in one poll).
            tokio::task::yield_now().await;
        }
        Ok(None)
    }

    /// Runs the scan of a key-value table to its end, or until `visit` breaks, lending each
    /// row's key and value to `visit` in scan order; returns the rows visited. The same steps
    /// as [`Scan::next_batch`], but the picked rows are read where they lie (the segments'
    /// cached pages; the memtable rows' values copied end to end) instead of being gathered into
    /// a batch.
    pub(crate) async fn lend_values(
        mut self,
        visit: &mut (dyn FnMut(Key, &[u8]) -> ControlFlow<()> + Send),
    ) -> Result<usize> {
        let mut visited = 0;
        let mut mem_values = KvValues::default();
        while let Some((range, want)) = self.next_want() {
            let mut picks = self.take_picks(want);
            mem_values.clear();
            let last = self
                .decide(range.clone(), want, &mut picks, None, &mut |row| {
                    mem_values.push(row)
                })
                .await?;
            self.charge_switches(&picks);
            let (lent, flow) = self.lend(&picks, &mem_values, visit).await?;
            visited += lent;
            if flow.is_break() {
                break;
            }
            self.advance(&range, last, picks, lent);
        }
        Ok(visited)
    }

    /// The keys left to scan and how many rows the next step may take; `None` when the scan
    /// is done.
    fn next_want(&self) -> Option<(RangeInclusive<u64>, usize)> {
        let range = self.left.clone()?;
        let want = self
            .remaining
            .map_or(self.batch_rows, |r| r.min(self.batch_rows));
        (want > 0).then_some((range, want))
    }

    /// The list a step's picks go to: the last step's, emptied, so that a long scan does not
    /// grow a new list for each. A short scan's picks fit without growing it; a long scan's
    /// steps, which mostly take runs, do not reserve one pick per row.
    fn take_picks(&mut self, want: usize) -> Vec<Pick> {
        let mut picks = std::mem::take(&mut self.picks);
        picks.clear();
        picks.reserve(want.min(1024));
        picks
    }

    /// Charges the moves between segments a step's `picks` made to the table's read charge,
    /// where there is more than one segment to move between.
    fn charge_switches(&self, picks: &[Pick]) {
        if self.table.segments.len() > 1 {
            self.table.charge.switches(switches(picks));
        }
    }

    /// Moves the scan past a step that looked at keys of `range` up to `last` (`None`: to its
    /// end) and gave `rows` rows; keeps the step's `picks` list for the next.
    fn advance(
        &mut self,
        range: &RangeInclusive<u64>,
        last: Option<u64>,
        picks: Vec<Pick>,
        rows: usize,
    ) {
        self.left = match last {
            Some(last) if self.reverse => last
                .checked_sub(1)
                .filter(|&end| end >= *range.start())
                .map(|end| *range.start()..=end),
            Some(last) => last
                .checked_add(1)
                .filter(|&start| start <= *range.end())
                .map(|start| start..=*range.end()),
            None => None,
        };
        self.picks = picks;
        if let Some(remaining) = &mut self.remaining {
            *remaining -= rows;
        }
    }

    /// Up to `want` keys of `range` with a visible row (segment rows may still turn out to be
    /// tombstones), pushed to `picks` in scan order, the memtable rows among them to `mem_rows`;
    /// returns the last key looked at (`None` if the range is done). With `fold`, the memtable
    /// rows are folded into it instead, and not picked.
    ///
    /// Keys are merged one at a time across the memtables and segments, except where the next
    /// keys are one source's alone: a run of them up to the next key of any other source is
    /// taken whole, without a look at each key. A segment's run costs a copy of its pages, a
    /// memtable's a pass over its versions; so a scan of one source's rows, the common case,
    /// pays no merge step per key.
    async fn decide(
        &self,
        range: RangeInclusive<u64>,
        want: usize,
        picks: &mut Vec<Pick>,
        mut fold: Option<&mut Fold>,
        mem_rows: &mut TakeRow<'_>,
    ) -> Result<Option<u64>> {
        let reverse = self.reverse;
        // Every segment's search for the range is asked for before any is made, a step at a
        // time (the models' lines, then the key windows they give), so that the segments'
        // misses overlap each other and the memtables' seeks, which come first.
        for segment in &self.table.segments {
            segment.prefetch_model(&range);
        }
        for segment in &self.table.segments {
            segment.prefetch_keys(&range);
        }
        // Each memtable's keys with a visible version, and its newest one.
        let mut mem: Vec<Newest> = self
            .layers
            .iter()
            .map(|(m, at)| m.newest(range.clone(), *at, reverse))
            .collect();
        let mut segments: Vec<SegmentCursor<'_>> = self
            .table
            .segments
            .iter()
            .map(|s| SegmentCursor {
                keys: s.keys(),
                visible: s.all_visible_at(self.snapshot),
                unique: s.unique,
                left: s.positions(&range),
            })
            .collect();
        let mut heads = Heads(Vec::with_capacity(segments.len()));
        for (i, cursor) in segments.iter().enumerate() {
            if let Some(k) = cursor.next_key(reverse) {
                heads.push((rank(k, reverse), i));
            }
        }
        // A memtable's range deletion hides rows of older layers without listing their keys:
        // where none reaches the range, the memtables' walks decide their keys and runs can be
        // taken; otherwise every key asks each memtable.
        let runs = self.layers.iter().all(|(memtable, at)| {
            memtable
                .range_tombstones(*at)
                .iter()
                .all(|(deleted, _)| deleted.end() < range.start() || range.end() < deleted.start())
        });
        let mut holders: Vec<usize> = Vec::new();
        // A row that does not decode, lent to a closure that cannot return it.
        let mut failed = None;
        let mut taken = 0;
        loop {
            let mut mem_next = None;
            for it in &mut mem {
                mem_next = nearer(mem_next, it.peek(), reverse);
            }
            let segment_next = heads.first().map(|(ranked, _)| rank(ranked, reverse));
            let Some(key) = nearer(mem_next, segment_next, reverse) else {
                return Ok(None);
            };
            if runs && mem_next != Some(key) {
                // Segment runs, one after another while they come before the memtables' next
                // key, which taking them does not move: where segments interleave at every
                // key (a table loaded in random order), a row costs one step of this loop.
                let mut took = false;
                while let Some((segment, run, last)) =
                    self.take_run(&mut segments, &mut heads, mem_next, want - taken)
                {
                    took = true;
                    taken += run.len();
                    push_rows(picks, segment, run, reverse);
                    if taken == want {
                        return Ok(Some(last));
                    }
                }
                if took {
                    continue;
                }
            }
            if runs && segment_next != Some(key) {
                // The key is in memtables only: if in one alone, its keys up to the next key
                // of any other source are that memtable's alone.
                let mut alone = None;
                let mut bound = segment_next;
                for (i, it) in mem.iter_mut().enumerate() {
                    match it.peek() {
                        Some(k) if k == key && alone.is_none() => alone = Some(i),
                        next => bound = nearer(bound, next, reverse),
                    }
                }
                if let Some(i) = alone
                    && bound != Some(key)
                {
                    // One walk per destination: the stretch's rows are the most of a
                    // memtable scan's, and a test of the destination per row was 3% of it.
                    // Rows come a stretch at a time, each passed over in a loop of its own.
                    let max = want - taken;
                    let last = match fold.as_deref_mut() {
                        Some(fold) => mem[i].lend_rows(bound, max, |lent| {
                            if failed.is_none() {
                                match fold.add_lent(lent) {
                                    Ok(rows) => taken += rows,
                                    Err(error) => failed = Some(error),
                                }
                            }
                        }),
                        None => mem[i].lend_rows(bound, max, |lent| {
                            lent.for_each(|k, row| {
                                if let Some(row) = row
                                    && failed.is_none()
                                {
                                    failed = mem_rows(row).err();
                                    picks.push(Pick::Row(k));
                                    taken += 1;
                                }
                            })
                        }),
                    };
                    if let Some(error) = failed {
                        return Err(error);
                    }
                    if taken == want {
                        return Ok(last);
                    }
                    continue;
                }
            }
            let mut found = None;
            let mut hidden = false;
            if runs {
                // The newest layer that has the key decides it; the others' versions of it are
                // passed.
                for it in &mut mem {
                    if it.peek() != Some(key) {
                        continue;
                    }
                    let decides = found.is_none() && !hidden;
                    it.lend(None, 1, |_, row| {
                        if !decides {
                            return;
                        }
                        match row {
                            Some(row) => {
                                failed = take_row(mem_rows, fold.as_deref_mut(), key, row).err();
                                found = Some(Pick::Row(key));
                            }
                            None => hidden = true,
                        }
                    });
                }
                if let Some(error) = failed {
                    return Err(error);
                }
            } else {
                for (memtable, at) in &self.layers {
                    match memtable.get(key, *at) {
                        Lookup::Found { row, .. } => {
                            take_row(mem_rows, fold.as_deref_mut(), key, &row)?;
                            found = Some(Pick::Row(key));
                            break;
                        }
                        Lookup::Deleted { .. } => {
                            hidden = true;
                            break;
                        }
                        Lookup::Absent => {}
                    }
                }
                for it in &mut mem {
                    if it.peek() == Some(key) {
                        it.lend(None, 1, |_, _| {});
                    }
                }
            }
            holders.clear();
            while let Some((ranked, i)) = heads.first() {
                if rank(ranked, reverse) != key {
                    break;
                }
                heads.pop();
                holders.push(i);
            }
            // Newest segment first (the table's order): the first visible version decides.
            holders.sort_unstable();
            for &i in &holders {
                let (Some(cursor), Some(segment)) =
                    (segments.get_mut(i), self.table.segments.get(i))
                else {
                    return Err(Error::Corrupt("scan lost a segment".to_owned()));
                };
                let Some((_, rows)) = cursor.peek(reverse) else {
                    continue;
                };
                cursor.consume(&rows, reverse);
                if found.is_none()
                    && !hidden
                    && let Some(position) = segment.visible_row(rows, self.snapshot).await?
                {
                    found = Some(Pick::Rows {
                        segment: i,
                        positions: position..position + 1,
                    });
                }
                if let Some(k) = cursor.next_key(reverse) {
                    heads.push((rank(k, reverse), i));
                }
            }
            match found {
                Some(Pick::Rows { segment, positions }) => {
                    push_rows(picks, segment, positions, reverse)
                }
                // A folded row was taken, not picked.
                Some(Pick::Row(_)) if fold.is_some() => {}
                Some(row) => picks.push(row),
                None => continue,
            }
            taken += 1;
            if taken == want {
                return Ok(Some(key));
            }
        }
    }

    /// The run the next key starts if that key is in one segment only, every row of which is
    /// visible at the snapshot: the segment, the rows (consumed from its cursor) and the last
    /// key. `None`, with nothing consumed, if there is no such run.
    fn take_run(
        &self,
        segments: &mut [SegmentCursor<'_>],
        heads: &mut Heads,
        mem_next: Option<u64>,
        max: usize,
    ) -> Option<(usize, Range<usize>, u64)> {
        let reverse = self.reverse;
        let (ranked, i) = heads.first()?;
        let other = heads.second_rank();
        let cursor = segments.get_mut(i)?;
        if other == Some(ranked) || !cursor.visible {
            return None;
        }
        let other = other.map(|r| rank(r, reverse));
        let rows = cursor.run(nearer(mem_next, other, reverse), reverse, max);
        if rows.is_empty() {
            return None;
        }
        let last = if reverse {
            cursor.keys.get(rows.start)
        } else {
            cursor.keys.get(rows.end - 1)
        };
        let last = *last?;
        cursor.consume(&rows, reverse);
        match cursor.next_key(reverse) {
            Some(k) => heads.replace_first((rank(k, reverse), i)),
            None => heads.pop(),
        }
        Some((i, rows, last))
    }

    /// The batch of the picked rows, tombstones dropped. A batch that is one segment run is
    /// that run's pages sliced, not copied; otherwise memtable rows are decoded together, each
    /// segment's picked rows are read as the one position range that covers them, and the
    /// rows are gathered from those in scan order.
    async fn materialize(&self, picks: &[Pick], mem_rows: RowDecoder<'_>) -> Result<RecordBatch> {
        let def = &self.table.def;
        if let [Pick::Rows { segment, positions }] = picks {
            let piece = self.segment_piece(*segment, positions.clone()).await?;
            return Ok(RecordBatch::try_new(Arc::clone(&self.output), piece)?);
        }
        if picks.iter().all(|pick| matches!(pick, Pick::Row(..))) {
            // Memtable rows alone come decoded in scan order already.
            let decoded = mem_rows.finish()?;
            let mut columns = Vec::with_capacity(1 + self.columns.len());
            if self.keys {
                let mut keys = Vec::with_capacity(picks.len());
                keys.extend(picks.iter().filter_map(|pick| match pick {
                    Pick::Row(key) => Some(*key),
                    Pick::Rows { .. } => None,
                }));
                columns.push(key_array(def.key_type, keys)?);
            }
            columns.extend(self.columns.iter().map(|&c| Arc::clone(&decoded[c])));
            return Ok(RecordBatch::try_new(Arc::clone(&self.output), columns)?);
        }
        let decoded = mem_rows.finish()?;
        // Source 0: the memtable rows; then each read segment range, in segment order.
        let mut sources: Vec<Vec<ArrayRef>> = vec![
            self.columns
                .iter()
                .map(|&c| Arc::clone(&decoded[c]))
                .collect(),
        ];
        let mut covered = self.covered(picks).await?;
        let mut source_of = vec![0; covered.len()];
        for (i, cover) in covered.iter_mut().enumerate() {
            if let Some(cover) = cover {
                source_of[i] = sources.len();
                // Moved, not cloned: below, the covers give positions and tombstones alone.
                sources.push(std::mem::take(&mut cover.columns));
            }
        }
        let rows = picks
            .iter()
            .map(|pick| match pick {
                Pick::Row(_) => 1,
                Pick::Rows { positions, .. } => positions.len(),
            })
            .sum();
        // Each kept row as (source, row within the source), with its key.
        let mut keys = Vec::with_capacity(if self.keys { rows } else { 0 });
        let mut kept: Vec<(usize, usize)> = Vec::with_capacity(rows);
        let mut mem_row = 0;
        for pick in picks {
            match pick {
                Pick::Row(key) => {
                    if self.keys {
                        keys.push(*key);
                    }
                    kept.push((0, mem_row));
                    mem_row += 1;
                }
                Pick::Rows { segment, positions } => {
                    let (cover, segment_keys) = self.cover_of(&covered, *segment)?;
                    // `cover_of` found the segment in `covered`, which `source_of` matches.
                    let source = source_of[*segment];
                    let _always_continues =
                        cover.walk(segment_keys, positions, self.reverse, |key, row| {
                            if self.keys {
                                keys.push(key);
                            }
                            kept.push((source, row));
                            ControlFlow::Continue(())
                        })?;
                }
            }
        }
        let mut columns = Vec::with_capacity(1 + self.columns.len());
        if self.keys {
            columns.push(key_array(def.key_type, keys)?);
        }
        for c in 0..self.columns.len() {
            let arrays: Vec<&dyn Array> = sources.iter().map(|s| s[c].as_ref()).collect();
            columns.push(arrow_select::interleave::interleave(&arrays, &kept)?);
        }
        Ok(RecordBatch::try_new(Arc::clone(&self.output), columns)?)
    }

    /// Per segment, the rows of the one position range that covers its picks (`None` for a
    /// segment with none).
    async fn covered(&self, picks: &[Pick]) -> Result<Vec<Option<Covered>>> {
        let ranges = self.cover_ranges(picks)?;
        let mut covered = Vec::with_capacity(ranges.len());
        for (i, range) in ranges.into_iter().enumerate() {
            covered.push(match range {
                Some(range) => Some(self.read_cover(i, range).await?),
                None => None,
            });
        }
        Ok(covered)
    }

    /// Per segment, the one position range that covers its picks (`None` for a segment with
    /// none); empty if no pick is of segment rows.
    fn cover_ranges(&self, picks: &[Pick]) -> Result<Vec<Option<Range<usize>>>> {
        if !picks.iter().any(|pick| matches!(pick, Pick::Rows { .. })) {
            return Ok(Vec::new());
        }
        let mut cover: Vec<Option<Range<usize>>> = vec![None; self.table.segments.len()];
        for pick in picks {
            if let Pick::Rows { segment, positions } = pick {
                let slot = cover
                    .get_mut(*segment)
                    .ok_or_else(|| Error::Corrupt("scan lost a segment".to_owned()))?;
                *slot = Some(match slot.take() {
                    Some(c) => c.start.min(positions.start)..c.end.max(positions.end),
                    None => positions.clone(),
                });
            }
        }
        Ok(cover)
    }

    /// Rows `range` of segment `i`, read.
    async fn read_cover(&self, i: usize, range: Range<usize>) -> Result<Covered> {
        let (columns, deleted) = self.segment_rows(i, range.clone()).await?;
        let len = range.len();
        if columns.iter().any(|c| c.len() != len)
            || deleted.as_ref().is_some_and(|d| d.len() != len)
        {
            return Err(Error::Corrupt(
                "a segment read gave other rows than asked".to_owned(),
            ));
        }
        Ok(Covered {
            columns,
            range,
            deleted,
        })
    }

    /// Segment `i`'s covered rows and its keys. Called once per pick of segment rows: inlined,
    /// it is a bounds check (as a call it was 2% of a short merged scan's instructions).
    #[inline(always)]
    fn cover_of<'c>(
        &'c self,
        covered: &'c [Option<Covered>],
        i: usize,
    ) -> Result<(&'c Covered, &'c [u64])> {
        match (covered.get(i), self.table.segments.get(i)) {
            (Some(Some(cover)), Some(segment)) => Ok((cover, segment.keys())),
            _ => Err(Error::Corrupt("scan lost a segment".to_owned())),
        }
    }

    /// Lends the picked rows' keys and values to `visit`, in scan order, tombstones dropped;
    /// returns how many rows it lent and whether `visit` broke off. The scan is of a key-value
    /// table: its one value column is `Binary`.
    ///
    /// A segment's picked rows are lent from its cached page where they all lie on one whose
    /// values have one width (a short scan's, as a rule): borrowed under a pin of the cache,
    /// with no array made or shared. The others are read first (which may wait for I/O); then
    /// every row is lent under one pin, so `visit` runs while evicted pages wait to be freed.
    async fn lend(
        &self,
        picks: &[Pick],
        mem_values: &KvValues,
        visit: &mut (dyn FnMut(Key, &[u8]) -> ControlFlow<()> + Send),
    ) -> Result<(usize, ControlFlow<()>)> {
        let ranges = self.cover_ranges(picks)?;
        let mut read: Vec<Option<Covered>> = Vec::with_capacity(ranges.len());
        read.resize_with(ranges.len(), || None);
        loop {
            match self.lend_picks(picks, mem_values, &ranges, &read, visit)? {
                Lending::Lent(lent, flow) => return Ok((lent, flow)),
                // Rows not on a cached page of one width (or evicted since): read, then lent
                // with the rest. A segment read once is not asked for again, so this ends.
                Lending::Uncached(uncached) => {
                    for i in uncached {
                        if let (Some(Some(range)), Some(slot)) = (ranges.get(i), read.get_mut(i)) {
                            *slot = Some(self.read_cover(i, range.clone()).await?);
                        }
                    }
                }
            }
        }
    }

    /// [`Scan::lend`]'s lending: the rows of segments without a `read` cover are borrowed from
    /// their cached pages, under one pin of the cache taken only then. If one's are not there,
    /// nothing is lent ([`Lending::Uncached`]).
    fn lend_picks(
        &self,
        picks: &[Pick],
        mem_values: &KvValues,
        ranges: &[Option<Range<usize>>],
        read: &[Option<Covered>],
        visit: &mut (dyn FnMut(Key, &[u8]) -> ControlFlow<()> + Send),
    ) -> Result<Lending> {
        let lost_segment = || Error::Corrupt("scan lost a segment".to_owned());
        let unread = |i: usize| {
            ranges.get(i).is_some_and(Option::is_some) && read.get(i).is_some_and(Option::is_none)
        };
        // A pin holds back the freeing of every page the cache evicts meanwhile, so a step
        // that borrows nothing (memtable rows, or segment rows read) runs its visits without.
        let pin = (0..ranges.len()).any(unread).then(CachePin::new);
        let mut pages = Vec::with_capacity(ranges.len());
        let mut uncached = Vec::new();
        for (i, range) in ranges.iter().enumerate() {
            let page = match (range, &pin, self.table.segments.get(i)) {
                (Some(range), Some(pin), Some(segment)) if unread(i) => {
                    let page = segment
                        .values
                        .as_ref()
                        .filter(|_| self.reads.is_none())
                        .and_then(|values| {
                            segment.reader.page_cells(
                                range.start as u64..range.end as u64,
                                values,
                                self.reverse,
                                pin,
                            )
                        });
                    if page.is_none() {
                        uncached.push(i);
                    }
                    page
                }
                _ => None,
            };
            pages.push(page);
        }
        if !uncached.is_empty() {
            return Ok(Lending::Uncached(uncached));
        }
        // Every page found is read from below.
        pages.iter().flatten().for_each(PageCells::served);
        let key_type = self.table.def.key_type;
        let mut lent = 0;
        let mut mem_row = 0;
        for pick in picks {
            let flow = match pick {
                Pick::Row(key) => {
                    let value = mem_values
                        .get(mem_row)
                        .ok_or_else(|| Error::Corrupt("scan lost a memtable row".to_owned()))?;
                    mem_row += 1;
                    lent += 1;
                    visit(key_type.decode(*key), value)
                }
                Pick::Rows { segment, positions } => {
                    let keys = self
                        .table
                        .segments
                        .get(*segment)
                        .map(|s| s.keys())
                        .ok_or_else(lost_segment)?;
                    // The rows come from the page (whose segment holds no tombstones: it is
                    // read with its values alone) or from the covering range read.
                    let (values, covered, deleted) = match (pages.get(*segment), read.get(*segment))
                    {
                        (Some(Some(page)), _) => {
                            let rows = page.rows();
                            let covered = rows.start as usize..rows.end as usize;
                            (StepValues::Page(page.cells()), covered, None)
                        }
                        (_, Some(Some(cover))) => (
                            StepValues::Read(kv_values(&cover.columns)?),
                            cover.range.clone(),
                            cover.deleted.as_ref(),
                        ),
                        _ => return Err(lost_segment()),
                    };
                    let mut missing = None;
                    // `walk_rows` gives rows within `covered`: the page's, or the covering
                    // range's, which is the length of its values.
                    let flow = walk_rows(
                        keys,
                        positions,
                        &covered,
                        deleted,
                        self.reverse,
                        |key, row| match values.get(row) {
                            Ok(value) => {
                                lent += 1;
                                visit(key_type.decode(key), value)
                            }
                            Err(error) => {
                                missing = Some(error);
                                ControlFlow::Break(())
                            }
                        },
                    )?;
                    if let Some(error) = missing {
                        return Err(error);
                    }
                    flow
                }
            };
            if flow.is_break() {
                return Ok(Lending::Lent(lent, flow));
            }
        }
        Ok(Lending::Lent(lent, ControlFlow::Continue(())))
    }

    /// Rows `positions` of segment `i`: the scan's value columns and the tombstones (`None` if
    /// the segment holds none).
    async fn segment_rows(
        &self,
        i: usize,
        positions: Range<usize>,
    ) -> Result<(Vec<ArrayRef>, Option<BooleanArray>)> {
        let Some(segment) = self.table.segments.get(i) else {
            return Err(Error::Corrupt("scan lost a segment".to_owned()));
        };
        // A scan of every column reads each segment with the segment's own projection: its
        // value columns (the table's, in the table's order) after the tombstones, or alone
        // where it holds none.
        let (projection, picked, tombstones_at) = match &self.reads {
            None => match &segment.values {
                Some(values) => (values, None, None),
                None => (&segment.row, None, Some(0)),
            },
            Some(reads) => {
                let read = reads
                    .get(i)
                    .ok_or_else(|| Error::Corrupt("scan lost a segment".to_owned()))?;
                (&read.projection, Some(&read.columns), read.tombstones)
            }
        };
        let mut batch = segment
            .reader
            .fetch_range_columns(positions.start as u64..positions.end as u64, projection)
            .await?;
        let lost = || Error::Corrupt("a segment read lost a column".to_owned());
        let tombstones = match tombstones_at {
            None => None,
            Some(c) => Some(
                batch
                    .get(c)
                    .ok_or_else(lost)?
                    .as_boolean_opt()
                    .cloned()
                    .ok_or_else(|| {
                        Error::Corrupt("a segment's tombstones are not Boolean".to_owned())
                    })?,
            ),
        };
        let columns = match picked {
            Some(picked) => picked
                .iter()
                .map(|&c| batch.get(c).cloned().ok_or_else(lost))
                .collect::<Result<_>>()?,
            None => {
                let first = usize::from(tombstones_at.is_some());
                if batch.len() != first + self.columns.len() {
                    return Err(lost());
                }
                batch.drain(..first);
                batch
            }
        };
        Ok((columns, tombstones))
    }

    /// Rows `positions` of segment `i` as the scan's columns (the key first, unless the scan
    /// goes without keys), in scan order, tombstones dropped: slices of the pages where no row
    /// is dropped or reordered.
    async fn segment_piece(&self, i: usize, positions: Range<usize>) -> Result<Vec<ArrayRef>> {
        let def = &self.table.def;
        let keys = self
            .table
            .segments
            .get(i)
            .and_then(|s| s.keys().get(positions.clone()))
            .ok_or_else(|| Error::Corrupt("scan read past a segment's keys".to_owned()))?;
        let mut piece = Vec::with_capacity(1 + self.columns.len());
        if self.keys {
            piece.push(key_array(def.key_type, keys.to_vec())?);
        }
        let (columns, tombstones) = self.segment_rows(i, positions).await?;
        piece.extend(columns);
        if let Some(tombstones) = tombstones.filter(|t| t.true_count() > 0) {
            let keep = BooleanArray::new(!tombstones.values(), None);
            piece = piece
                .iter()
                .map(|array| arrow_select::filter::filter(array.as_ref(), &keep))
                .collect::<std::result::Result<_, _>>()?;
        }
        let len = piece.first().map_or(0, |keys| keys.len());
        if self.reverse && len > 1 {
            let backwards = UInt64Array::from_iter_values((0..len as u64).rev());
            piece = piece
                .iter()
                .map(|array| arrow_select::take::take(array.as_ref(), &backwards, None))
                .collect::<std::result::Result<_, _>>()?;
        }
        Ok(piece)
    }
}

/// The value column of a key-value table's columns.
fn kv_values(columns: &[ArrayRef]) -> Result<&BinaryArray> {
    columns
        .first()
        .and_then(|c| c.as_binary_opt::<i32>())
        .ok_or_else(|| Error::Corrupt("a key-value table's values are not Binary".to_owned()))
}

/// Row `row`'s value, to be lent as bytes: `None` for a null, which a key-value table's
/// non-nullable column holds only if damaged. Tombstones' values are null, but they are
/// dropped before their values are asked for.
#[inline(always)]
fn lendable(values: &BinaryArray, row: usize) -> Option<&[u8]> {
    (!values.is_null(row)).then(|| values.value(row))
}

fn null_value() -> Error {
    Error::Corrupt("a key-value table's row holds a null value".to_owned())
}

/// A key column of `key_type` holding the stored `keys`.
pub(crate) fn key_array(key_type: KeyType, keys: Vec<u64>) -> Result<ArrayRef> {
    let array: ArrayRef = match key_type {
        KeyType::U64 => Arc::new(UInt64Array::from(keys)),
        _ => {
            let signed: Vec<i64> = keys
                .into_iter()
                .map(|k| match key_type.decode(k) {
                    Key::I64(k) => k,
                    Key::U64(k) => k as i64,
                })
                .collect();
            let array = Int64Array::from(signed);
            let data = array
                .into_data()
                .into_builder()
                .data_type(key_data_type(key_type))
                .build()?;
            arrow_array::make_array(data)
        }
    };
    Ok(array)
}

/// What a read will touch, as [`crate::Table::explain`] reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct Explain {
    /// The table.
    pub table: String,
    /// The snapshot the read would use.
    pub snapshot: Lsn,
    /// Memtables of the table that would be read (active and frozen generations).
    pub memtables: usize,
    /// Bytes in them.
    pub memtable_bytes: usize,
    /// Segments of the table.
    pub segments_total: usize,
    /// Segments skipped because their key range misses the read's.
    pub segments_pruned: usize,
    /// The segments read.
    pub segments: Vec<SegmentPlan>,
    /// Segment rows in the range (versions and tombstones included): an upper bound on rows
    /// read from segments.
    pub rows_to_scan: u64,
}

/// How one segment would be read.
#[derive(Clone, Debug, PartialEq)]
pub struct SegmentPlan {
    /// The segment object.
    pub path: String,
    /// Its rows.
    pub rows: u64,
    /// The learned index kind that locates rows.
    pub index: &'static str,
    /// The index's mean search window, in keys (the last-mile search a lookup does).
    pub mean_window: f64,
    /// The index's largest search window.
    pub max_window: usize,
    /// Rows of the segment in the range.
    pub rows_in_range: u64,
}

/// The plan of a read of `range` in `table`.
pub(crate) fn explain(
    version: &Version,
    table: &TableState,
    range: Option<RangeInclusive<u64>>,
    snapshot: Lsn,
) -> Explain {
    let layers = mem_layers(version, table.def.id, snapshot, None);
    let mut plan = Explain {
        table: table.def.name.clone(),
        snapshot,
        memtables: layers.len(),
        memtable_bytes: layers.iter().map(|(m, _)| m.approximate_bytes()).sum(),
        segments_total: table.segments.len(),
        segments_pruned: 0,
        segments: Vec::new(),
        rows_to_scan: 0,
    };
    for segment in &table.segments {
        let positions = match &range {
            Some(range) if segment.overlaps(range) => segment.positions(range),
            _ => {
                plan.segments_pruned += 1;
                continue;
            }
        };
        let stats = segment.index.stats();
        let rows = (positions.end - positions.start) as u64;
        plan.rows_to_scan += rows;
        plan.segments.push(SegmentPlan {
            path: segment.entry.path.clone(),
            rows: segment.entry.rows,
            index: segment.index.kind().name(),
            mean_window: stats.mean_window,
            max_window: stats.max_window,
            rows_in_range: rows,
        });
    }
    plan
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::cast::AsArray;
    use arrow_array::types::UInt64Type;
    use futures::TryStreamExt;
    use object_store::memory::InMemory;
    use proptest::prelude::*;

    use super::Heads;
    use crate::{Db, KeyType, ScanOptions, WriteOptions};

    proptest! {
        #[test]
        fn heads_give_the_greatest_first_and_the_next_greatest_beside_it(
            pushes in proptest::collection::vec((0..16u64, 0..8usize), 0..40),
            ops in proptest::collection::vec(0..3u8, 0..60),
        ) {
            let mut heads = Heads(Vec::new());
            let mut oracle: Vec<(u64, usize)> = Vec::new();
            let mut pushes = pushes.into_iter();
            for op in ops {
                if op == 0 {
                    heads.pop();
                    oracle.pop();
                } else if let Some(head) = pushes.next() {
                    // A replacement ranks no higher than the entry it replaces, as a
                    // segment's next key does.
                    match oracle.last_mut() {
                        Some(first) if op == 2 => {
                            let head = (*first).min(head);
                            heads.replace_first(head);
                            *first = head;
                        }
                        _ => {
                            heads.push(head);
                            oracle.push(head);
                        }
                    }
                    oracle.sort_unstable();
                }
                prop_assert_eq!(heads.first(), oracle.last().copied());
                let second = oracle.len().checked_sub(2).map(|i| oracle[i].0);
                prop_assert_eq!(heads.second_rank(), second);
            }
        }
    }

    /// A segment that holds no tombstone is scanned without reading the column; one that holds
    /// one still hides the deleted row.
    #[tokio::test]
    async fn a_segment_without_tombstones_is_scanned_without_the_column() {
        let db = Db::builder()
            .store(Arc::new(InMemory::new()))
            .wal_in_store()
            .build()
            .await
            .unwrap();
        let kv = db.create_table("kv", KeyType::U64, None).await.unwrap();
        for key in 0..100u64 {
            kv.put_value(key, key.to_le_bytes().to_vec(), WriteOptions::BUFFERED)
                .await
                .unwrap();
        }
        kv.delete(5u64, WriteOptions::BUFFERED).await.unwrap();
        db.checkpoint().await.unwrap();
        for key in 100..200u64 {
            kv.put_value(key, key.to_le_bytes().to_vec(), WriteOptions::BUFFERED)
                .await
                .unwrap();
        }
        db.checkpoint().await.unwrap();

        let version = db.inner.version.load_full();
        let table = version.by_id.get(&kv.def().id).unwrap();
        let free: Vec<bool> = table.segments.iter().map(|s| s.values.is_some()).collect();
        assert_eq!(free.len(), 2, "two flushes, two segments");
        assert_eq!(
            free.iter().filter(|&&f| f).count(),
            1,
            "only the segment without the deletion is read without tombstones: {free:?}"
        );

        for options in [
            ScanOptions::default(),
            ScanOptions {
                projection: Some(vec!["value".to_owned()]),
                batch_rows: Some(7),
                ..ScanOptions::default()
            },
            ScanOptions {
                reverse: true,
                ..ScanOptions::default()
            },
        ] {
            let batches: Vec<_> = kv
                .scan::<u64>(.., options.clone())
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            let mut keys: Vec<u64> = batches
                .iter()
                .flat_map(|b| b.column(0).as_primitive::<UInt64Type>().values().to_vec())
                .collect();
            if options.reverse {
                keys.reverse();
            }
            let expected: Vec<u64> = (0..200).filter(|&k| k != 5).collect();
            assert_eq!(keys, expected, "{options:?}");
        }
        db.close().await.unwrap();
    }
}
