//! The read path: point reads, scans as a merge of memtables and segments, aggregates and
//! `explain`.
//!
//! A read fixes its snapshot LSN first and loads the version after, so every write at or below
//! the snapshot is in that version (in a memtable, or in a segment that replaced it). Layers are
//! consulted newest first: an optional private memtable (a transaction's own writes, read at
//! every LSN), the memtable generations, then the segments; the first layer with a visible
//! version of a key decides. Memtable range deletions are folded in by `Memtable::get`, so a
//! key only older layers hold is hidden by a newer range deletion.

use std::collections::BinaryHeap;
use std::ops::{Range, RangeInclusive};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type,
    UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrayRef, Float64Array, Int64Array, RecordBatch, UInt64Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use omendb_storage::segment::{Projection, TOMBSTONE_COLUMN};

use super::options::{Aggregate, ScanOptions};
use super::version::{TableState, Version};
use crate::error::{Error, Result};
use crate::index::LearnedIndex;
use crate::key::{Key, KeyType};
use crate::memtable::{Lookup, Lsn, Memtable};
use crate::segment::Segment;
use crate::table::{TableDef, Value, key_data_type, value_at};

/// Default rows per scan batch.
const SCAN_BATCH_ROWS: usize = 8192;

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

/// The memtable layers of `table` in `version` at `snapshot`, newest first, after `overlay`.
pub(crate) fn mem_layers(
    version: &Version,
    table: u32,
    snapshot: Lsn,
    overlay: Option<&Arc<Memtable>>,
) -> Vec<MemLayer> {
    overlay
        .map(|m| (Arc::clone(m), Lsn::MAX))
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
    for segment in &table.segments {
        let rows = segment.rows_of(key);
        if let Some(position) = segment.visible_row(rows, snapshot).await? {
            return Ok(Some(Found::Segment(Arc::clone(segment), position)));
        }
    }
    Ok(None)
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
/// `overlay`), then segments whose rows are all visible at the snapshot, reading the row from
/// cached pages with `read` (`None` from `read` means a tombstone). Allocates nothing and takes
/// no reference counts on the way.
pub(crate) fn point_step<T>(
    version: &Version,
    table: &TableState,
    overlay: Option<&Memtable>,
    key: u64,
    snapshot: Lsn,
    from_memtable: impl FnOnce(Bytes) -> Result<T>,
    read: impl FnOnce(&[ArrayRef], usize) -> Option<T>,
) -> Result<Step<T>> {
    match in_memtables(version, table.def.id, overlay, key, snapshot) {
        Lookup::Found { row, .. } => return Ok(Step::Done(Some(from_memtable(row)?))),
        Lookup::Deleted { .. } => return Ok(Step::Done(None)),
        Lookup::Absent => {}
    }
    for segment in &table.segments {
        if !segment.may_hold(key) {
            continue;
        }
        if !segment.all_visible_at(snapshot) {
            return Ok(Step::General);
        }
        let rows = segment.rows_of(key);
        if rows.is_empty() {
            continue;
        }
        return match segment
            .reader
            .read_cached(rows.start as u64, &segment.row, read)?
        {
            Some(answer) => Ok(Step::Done(answer)),
            None => Ok(Step::Fetch(Arc::clone(segment), rows.start)),
        };
    }
    Ok(Step::Done(None))
}

/// Rows of one segment a batched read still has to fetch: (answer slot, row position).
pub(crate) type Misses = Vec<(Arc<Segment>, Vec<(usize, usize)>)>;

/// The synchronous part of a batched point read: fills `out` (one slot per key, in order) from
/// memtables and cached pages, locating segment rows with the index's batched lookup, and
/// returns the rows whose pages must be read. `None` if a segment newer than the snapshot means
/// the general path must be taken.
#[allow(clippy::too_many_arguments)]
pub(crate) fn multi_step<T>(
    version: &Version,
    table: &TableState,
    overlay: Option<&Memtable>,
    keys: &[u64],
    snapshot: Lsn,
    from_memtable: impl Fn(Bytes) -> Result<T>,
    read: impl Fn(&[ArrayRef], usize) -> Option<T>,
    out: &mut Vec<Option<T>>,
) -> Result<Option<Misses>> {
    if table.segments.iter().any(|s| !s.all_visible_at(snapshot)) {
        return Ok(None);
    }
    out.clear();
    out.resize_with(keys.len(), || None);
    let mut undecided: Vec<usize> = Vec::with_capacity(keys.len());
    for (slot, &key) in keys.iter().enumerate() {
        match in_memtables(version, table.def.id, overlay, key, snapshot) {
            Lookup::Found { row, .. } => out[slot] = Some(from_memtable(row)?),
            Lookup::Deleted { .. } => {}
            Lookup::Absent => undecided.push(slot),
        }
    }
    let mut misses: Misses = Vec::new();
    let mut queries = Vec::new();
    let mut positions = Vec::new();
    for segment in &table.segments {
        if undecided.is_empty() {
            break;
        }
        // Only keys the segment's filter passes are looked up in its index.
        let mut still = Vec::with_capacity(undecided.len());
        let mut asked = Vec::with_capacity(undecided.len());
        for &slot in &undecided {
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
        let mut fetch = Vec::new();
        for (&slot, &position) in asked.iter().zip(&positions) {
            if segment_keys.get(position) != Some(&keys[slot]) {
                still.push(slot);
                continue;
            }
            match segment
                .reader
                .read_cached(position as u64, &segment.row, &read)?
            {
                Some(answer) => out[slot] = answer,
                None => fetch.push((slot, position)),
            }
        }
        if !fetch.is_empty() {
            misses.push((Arc::clone(segment), fetch));
        }
        undecided = still;
    }
    Ok(Some(misses))
}

/// What the memtables say about `key`: the transaction's own writes (`overlay`, read at every
/// LSN) first, then the generations newest first; the first that knows the key decides.
fn in_memtables(
    version: &Version,
    table: u32,
    overlay: Option<&Memtable>,
    key: u64,
    snapshot: Lsn,
) -> Lookup {
    let overlay = overlay.map(|m| m.get(key, Lsn::MAX));
    let generations = version
        .memtables
        .iter()
        .map(|g| g.lookup(table, key, snapshot));
    overlay
        .into_iter()
        .chain(generations)
        .find(|lookup| !matches!(lookup, Lookup::Absent))
        .unwrap_or(Lookup::Absent)
}

/// Reads a key-value row's value from a segment's row pages (`_tombstone`, `value`).
pub(crate) fn kv_from_pages(pages: &[ArrayRef], offset: usize) -> Option<Bytes> {
    if pages[0].as_boolean().value(offset) {
        return None;
    }
    let values = pages[1].as_binary_opt::<i32>()?;
    Some(Bytes::copy_from_slice(values.value(offset)))
}

/// The answer for a found row: `from_memtable` of a memtable's row, `from_pages` of a segment's
/// (read from cached pages, or its pages read); `None` for a tombstone.
pub(crate) async fn answer<T>(
    found: Found,
    from_memtable: impl FnOnce(Bytes) -> Result<T>,
    from_pages: impl Fn(&[ArrayRef], usize) -> Option<T>,
) -> Result<Option<T>> {
    match found {
        Found::Row(row) => from_memtable(row).map(Some),
        Found::Segment(segment, position) => {
            if let Some(answer) =
                segment
                    .reader
                    .read_cached(position as u64, &segment.row, &from_pages)?
            {
                return Ok(answer);
            }
            let batch = segment.reader.fetch(position as u64, &segment.row).await?;
            Ok(from_pages(batch.columns(), 0))
        }
    }
}

/// A row's values from a segment's row pages (`_tombstone`, then the value columns); `None`
/// for a tombstone.
pub(crate) fn values_from_pages(pages: &[ArrayRef], offset: usize) -> Option<Vec<Value>> {
    if pages[0].as_boolean().value(offset) {
        return None;
    }
    Some(
        pages[1..]
            .iter()
            .map(|page| value_at(page.as_ref(), offset))
            .collect(),
    )
}

/// A key-ordered walk over one segment's rows in a key range, one key (all its rows) at a time.
struct SegmentCursor {
    segment: Arc<Segment>,
    /// Positions not yet walked.
    left: Range<usize>,
}

impl SegmentCursor {
    /// The next key and its rows (newest first), without consuming them.
    fn peek(&self, reverse: bool) -> Option<(u64, Range<usize>)> {
        if self.left.is_empty() {
            return None;
        }
        let keys = self.segment.keys();
        if reverse {
            let key = keys[self.left.end - 1];
            let start = self.left.start
                + keys[self.left.start..self.left.end].partition_point(|&k| k < key);
            Some((key, start..self.left.end))
        } else {
            let key = keys[self.left.start];
            let end = self.left.start
                + keys[self.left.start..self.left.end].partition_point(|&k| k <= key);
            Some((key, self.left.start..end))
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
    /// Per segment: `_tombstone` then the projected columns.
    projections: Vec<Projection>,
}

impl Scan {
    pub(crate) fn new(
        version: &Version,
        table: Arc<TableState>,
        range: Option<RangeInclusive<u64>>,
        snapshot: Lsn,
        overlay: Option<&Arc<Memtable>>,
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
        let mut fields = vec![def.output.field(0).clone()];
        fields.extend(columns.iter().map(|&c| def.schema().field(c).clone()));
        let names: Vec<&str> = std::iter::once(TOMBSTONE_COLUMN)
            .chain(
                columns
                    .iter()
                    .map(|&c| def.schema().field(c).name().as_str()),
            )
            .collect();
        let range = range.filter(|_| options.limit != Some(0));
        let projections = table
            .segments
            .iter()
            .map(|s| s.reader.projection(&names).map_err(Error::from))
            .collect::<Result<_>>()?;
        Ok(Self {
            layers: mem_layers(version, def.id, snapshot, overlay),
            table,
            snapshot,
            left: range,
            reverse: options.reverse,
            remaining: options.limit,
            batch_rows: options.batch_rows.unwrap_or(SCAN_BATCH_ROWS).max(1),
            columns,
            output: Arc::new(Schema::new(fields)),
            projections,
        })
    }

    /// The scan as a stream of batches (never empty ones).
    pub(crate) fn into_stream(self) -> BoxStream<'static, Result<RecordBatch>> {
        stream::try_unfold(self, |mut scan| async move {
            let batch = scan.next_batch().await?;
            Ok(batch.map(|b| (b, scan)))
        })
        .boxed()
    }

    async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        loop {
            let Some(range) = self.left.clone() else {
                return Ok(None);
            };
            let want = self
                .remaining
                .map_or(self.batch_rows, |r| r.min(self.batch_rows));
            if want == 0 {
                return Ok(None);
            }
            let (decided, last) = self.decide(range.clone(), want).await?;
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
            let batch = self.materialize(decided).await?;
            if batch.num_rows() > 0 {
                if let Some(remaining) = &mut self.remaining {
                    *remaining -= batch.num_rows();
                }
                return Ok(Some(batch));
            }
        }
    }

    /// Up to `want` keys of `range` with a visible row (segment rows may still turn out to be
    /// tombstones), in scan order, and the last key looked at (`None` if the range is done).
    async fn decide(
        &self,
        range: RangeInclusive<u64>,
        want: usize,
    ) -> Result<(Vec<(u64, Found)>, Option<u64>)> {
        let reverse = self.reverse;
        let mut mem: Vec<std::iter::Peekable<Box<dyn Iterator<Item = u64> + Send + '_>>> = self
            .layers
            .iter()
            .map(|(m, _)| m.keys(range.clone(), reverse).peekable())
            .collect();
        let mut segments: Vec<SegmentCursor> = self
            .table
            .segments
            .iter()
            .map(|s| SegmentCursor {
                segment: Arc::clone(s),
                left: s.positions(&range),
            })
            .collect();
        // The segments' next keys in a heap, so that each key costs the logarithm of the
        // segment count rather than a look at every segment. Ranked so the heap's greatest is
        // the next key in scan order: the key itself in reverse, its complement forward.
        let rank = |key: u64| if reverse { key } else { !key };
        let mut heads: BinaryHeap<(u64, usize)> = segments
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.peek(reverse).map(|(k, _)| (rank(k), i)))
            .collect();
        let mut holders: Vec<usize> = Vec::new();
        let mut decided = Vec::new();
        loop {
            let mem_heads = mem.iter_mut().filter_map(|it| it.peek().copied());
            let mem_next = if reverse {
                mem_heads.max()
            } else {
                mem_heads.min()
            };
            let segment_next = heads.peek().map(|&(ranked, _)| rank(ranked));
            let next = match (mem_next, segment_next) {
                (Some(a), Some(b)) => Some(if reverse { a.max(b) } else { a.min(b) }),
                (a, b) => a.or(b),
            };
            let Some(key) = next else {
                return Ok((decided, None));
            };
            let mut found = None;
            let mut hidden = false;
            for (memtable, at) in &self.layers {
                match memtable.get(key, *at) {
                    Lookup::Found { row, .. } => {
                        found = Some(Found::Row(row));
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
                if it.peek() == Some(&key) {
                    it.next();
                }
            }
            holders.clear();
            while let Some(&(ranked, i)) = heads.peek() {
                if rank(ranked) != key {
                    break;
                }
                heads.pop();
                holders.push(i);
            }
            // Newest segment first (the table's order): the first visible version decides.
            holders.sort_unstable();
            for &i in &holders {
                let cursor = &mut segments[i];
                let Some((_, rows)) = cursor.peek(reverse) else {
                    continue;
                };
                cursor.consume(&rows, reverse);
                if found.is_none()
                    && !hidden
                    && let Some(position) = cursor.segment.visible_row(rows, self.snapshot).await?
                {
                    found = Some(Found::Segment(Arc::clone(&cursor.segment), position));
                }
                if let Some((k, _)) = cursor.peek(reverse) {
                    heads.push((rank(k), i));
                }
            }
            if let Some(found) = found {
                decided.push((key, found));
                if decided.len() == want {
                    return Ok((decided, Some(key)));
                }
            }
        }
    }

    /// The batch of the decided rows, tombstones dropped.
    async fn materialize(&self, decided: Vec<(u64, Found)>) -> Result<RecordBatch> {
        let def = &self.table.def;
        // Source 0: rows from memtables; source 1 + i: rows of segment i.
        let mut mem_rows: Vec<Bytes> = Vec::new();
        let mut segment_rows: Vec<Vec<u64>> = vec![Vec::new(); self.table.segments.len()];
        let mut picks: Vec<(usize, usize)> = Vec::with_capacity(decided.len());
        for (_, found) in &decided {
            match found {
                Found::Row(row) => {
                    picks.push((0, mem_rows.len()));
                    mem_rows.push(row.clone());
                }
                Found::Segment(segment, position) => {
                    let i = self
                        .table
                        .segments
                        .iter()
                        .position(|s| Arc::ptr_eq(s, segment))
                        .ok_or_else(|| Error::Corrupt("scan lost a segment".to_owned()))?;
                    picks.push((1 + i, segment_rows[i].len()));
                    segment_rows[i].push(*position as u64);
                }
            }
        }
        let decoded = def.codec.decode(mem_rows.iter().map(|r| r.as_ref()))?;
        let mut sources: Vec<Vec<ArrayRef>> = vec![
            self.columns
                .iter()
                .map(|&c| Arc::clone(&decoded[c]))
                .collect(),
        ];
        let mut tombstones: Vec<Option<ArrayRef>> = vec![None];
        for (i, positions) in segment_rows.iter().enumerate() {
            if positions.is_empty() {
                sources.push(Vec::new());
                tombstones.push(None);
                continue;
            }
            let projection = &self.projections[i];
            let batch = self.table.segments[i]
                .reader
                .fetch_many(positions, projection)
                .await?;
            // A segment returns its columns in table order; the scan's may differ.
            let by_name = |name: &str| {
                projection
                    .schema()
                    .index_of(name)
                    .map(|c| Arc::clone(batch.column(c)))
                    .map_err(|_| Error::Corrupt(format!("a segment lost column {name:?}")))
            };
            tombstones.push(Some(by_name(TOMBSTONE_COLUMN)?));
            sources.push(
                self.columns
                    .iter()
                    .map(|&c| by_name(def.schema().field(c).name()))
                    .collect::<Result<_>>()?,
            );
        }
        let mut keys = Vec::with_capacity(picks.len());
        let mut kept = Vec::with_capacity(picks.len());
        for ((key, _), &(source, row)) in decided.iter().zip(&picks) {
            let deleted = tombstones[source]
                .as_ref()
                .is_some_and(|t| t.as_boolean().value(row));
            if !deleted {
                keys.push(*key);
                kept.push((source, row));
            }
        }
        let mut columns = vec![key_array(def.key_type, &keys)?];
        for c in 0..self.columns.len() {
            let used: Vec<usize> = (0..sources.len())
                .filter(|&s| !sources[s].is_empty())
                .collect();
            let arrays: Vec<&dyn Array> = used.iter().map(|&s| sources[s][c].as_ref()).collect();
            let picks: Vec<(usize, usize)> = kept
                .iter()
                .map(|&(source, row)| {
                    (
                        used.iter().position(|&s| s == source).unwrap_or_default(),
                        row,
                    )
                })
                .collect();
            columns.push(if arrays.is_empty() {
                arrow_array::new_empty_array(self.output.field(c + 1).data_type())
            } else {
                arrow_select::interleave::interleave(&arrays, &picks)?
            });
        }
        Ok(RecordBatch::try_new(Arc::clone(&self.output), columns)?)
    }
}

/// A key column of `key_type` holding the stored `keys`.
pub(crate) fn key_array(key_type: KeyType, keys: &[u64]) -> Result<ArrayRef> {
    let array: ArrayRef = match key_type {
        KeyType::U64 => Arc::new(UInt64Array::from(keys.to_vec())),
        _ => {
            let signed: Vec<i64> = keys
                .iter()
                .map(|&k| match key_type.decode(k) {
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

/// The values of a numeric column as `f64` (null stays null).
fn numbers(array: &dyn Array) -> Result<Vec<Option<f64>>> {
    macro_rules! as_f64 {
        ($t:ty) => {
            array
                .as_primitive::<$t>()
                .iter()
                .map(|v| v.map(|v| v as f64))
                .collect()
        };
    }
    Ok(match array.data_type() {
        DataType::Int8 => as_f64!(Int8Type),
        DataType::Int16 => as_f64!(Int16Type),
        DataType::Int32 => as_f64!(Int32Type),
        DataType::Int64 => as_f64!(Int64Type),
        DataType::UInt8 => as_f64!(UInt8Type),
        DataType::UInt16 => as_f64!(UInt16Type),
        DataType::UInt32 => as_f64!(UInt32Type),
        DataType::UInt64 => as_f64!(UInt64Type),
        DataType::Float32 => as_f64!(Float32Type),
        DataType::Float64 => as_f64!(Float64Type),
        other => {
            return Err(Error::BadInput(format!(
                "cannot aggregate a column of type {other}"
            )));
        }
    })
}

/// One bucket's running aggregate.
#[derive(Clone, Copy, Debug, Default)]
struct Acc {
    count: u64,
    sum: f64,
    min: Option<f64>,
    max: Option<f64>,
}

impl Acc {
    fn add(&mut self, v: f64) {
        self.count += 1;
        self.sum += v;
        self.min = Some(self.min.map_or(v, |m| m.min(v)));
        self.max = Some(self.max.map_or(v, |m| m.max(v)));
    }

    fn merge(&mut self, other: &Acc) {
        self.count += other.count;
        self.sum += other.sum;
        self.min = match (self.min, other.min) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.max = match (self.max, other.max) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }

    fn result(&self, function: Aggregate) -> Option<f64> {
        match function {
            Aggregate::Count => Some(self.count as f64),
            Aggregate::Sum => Some(self.sum),
            Aggregate::Min => self.min,
            Aggregate::Max => self.max,
            Aggregate::Avg => (self.count > 0).then(|| self.sum / self.count as f64),
        }
    }
}

/// Aggregates `column` over a scan. With `bucket` (a width in key units), one row per bucket
/// that holds rows (`bucket` = the bucket's first key), otherwise one row.
pub(crate) async fn aggregate(
    scan: Scan,
    def: &TableDef,
    column: &str,
    function: Aggregate,
    bucket: Option<u64>,
) -> Result<RecordBatch> {
    if bucket == Some(0) {
        return Err(Error::BadInput(
            "a bucket width must be positive".to_owned(),
        ));
    }
    let field = def
        .schema()
        .field_with_name(column)
        .map_err(|_| Error::BadInput(format!("table {:?} has no column {column:?}", def.name)))?;
    if function != Aggregate::Count {
        numbers(arrow_array::new_empty_array(field.data_type()).as_ref())?;
    }
    let mut buckets: std::collections::BTreeMap<i128, Acc> = Default::default();
    let mut stream = scan.into_stream();
    while let Some(batch) = stream.try_next().await? {
        let keys = batch.column(0);
        let keys: Vec<i128> = super::batch::stored_keys(def.key_type, keys)?
            .into_iter()
            .map(|stored| match def.key_type.decode(stored) {
                Key::U64(k) => i128::from(k),
                Key::I64(k) => i128::from(k),
            })
            .collect();
        let values = batch.column(1);
        let numbers = if function == Aggregate::Count {
            (0..values.len())
                .map(|i| values.is_valid(i).then_some(0.0))
                .collect()
        } else {
            numbers(values.as_ref())?
        };
        // Keys come in order, so rows of a bucket are adjacent: fold them before the map.
        let mut current: Option<(i128, Acc)> = None;
        for (key, value) in keys.into_iter().zip(numbers) {
            let Some(value) = value else { continue };
            let start = match bucket {
                Some(width) => key.div_euclid(i128::from(width)) * i128::from(width),
                None => 0,
            };
            match &mut current {
                Some((open, acc)) if *open == start => acc.add(value),
                _ => {
                    if let Some((open, acc)) = current.take() {
                        buckets.entry(open).or_default().merge(&acc);
                    }
                    let mut acc = Acc::default();
                    acc.add(value);
                    current = Some((start, acc));
                }
            }
        }
        if let Some((open, acc)) = current {
            buckets.entry(open).or_default().merge(&acc);
        }
    }
    let value_field = match function {
        Aggregate::Count => Field::new(function.name(), DataType::UInt64, false),
        _ => Field::new(function.name(), DataType::Float64, true),
    };
    let value_array = |accs: Vec<Acc>| -> ArrayRef {
        match function {
            Aggregate::Count => Arc::new(UInt64Array::from(
                accs.iter().map(|a| a.count).collect::<Vec<_>>(),
            )),
            _ => Arc::new(Float64Array::from(
                accs.iter().map(|a| a.result(function)).collect::<Vec<_>>(),
            )),
        }
    };
    match bucket {
        None => {
            let acc = buckets.remove(&0).unwrap_or_default();
            let schema = Arc::new(Schema::new(vec![value_field]));
            Ok(RecordBatch::try_new(schema, vec![value_array(vec![acc])])?)
        }
        Some(_) => {
            let starts: Vec<u64> = buckets
                .keys()
                .map(|&start| match def.key_type {
                    // Bucket starts of u64 keys are u64; of signed keys, within i64 (floor
                    // division moves toward i64::MIN, where the stored form is 0).
                    KeyType::U64 => u64::try_from(start).unwrap_or(0),
                    key_type => key_type
                        .encode(Key::I64(i64::try_from(start).unwrap_or(i64::MIN)))
                        .unwrap_or(0),
                })
                .collect();
            let schema = Arc::new(Schema::new(vec![
                Field::new("bucket", key_data_type(def.key_type), false),
                value_field,
            ]));
            let key_column = key_array(def.key_type, &starts)?;
            let accs = buckets.into_values().collect();
            Ok(RecordBatch::try_new(
                schema,
                vec![key_column, value_array(accs)],
            )?)
        }
    }
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
