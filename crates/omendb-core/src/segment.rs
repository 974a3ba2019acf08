//! A live segment as the engine holds it: the storage reader (footer checked, key column
//! decoded) and the learned index trained on its keys at flush or compaction.
//!
//! Rows are ordered by key and, within a key, newest LSN first; the index gives the first row of
//! a key, so the rows of a key are the run from there while the key column still matches. The
//! decoded key column with the index is an exact membership test; a Bloom filter over the keys
//! (built when the segment is opened) answers first, so a point read of a key the segment does
//! not hold costs a probe or two instead of an index lookup.

use std::ops::{Range, RangeInclusive};
use std::sync::Arc;

use arrow_array::Array;
use arrow_array::cast::AsArray;
use arrow_array::types::UInt64Type;
use object_store::ObjectStore;
use object_store::path::Path;
use omendb_storage::manifest::SegmentEntry;
use omendb_storage::segment::{
    LSN_COLUMN, Page, PageCache, PointCells, Projection, SegmentReader, TOMBSTONE_COLUMN,
};

use crate::error::{Error, Result};
use crate::filter::FixedFilter;
use crate::index::{AnyIndex, LearnedIndex, Window, search};
use crate::memtable::Lsn;

/// The widest index window whose rows' values a point read asks for before it searches the
/// window ([`Segment::search`]): 64 rows of 16-byte values are 16 lines, of which the
/// middle 8 are asked for.
const READ_AHEAD_ROWS: usize = 64;

/// What a point read's search of a segment found ([`Segment::search_value`]).
#[derive(Debug)]
pub enum Searched<T> {
    /// The key's newest row's value, read.
    Value(T),
    /// The key's rows, newest first (empty if it has none), whose value is still to be read.
    Rows(Range<usize>),
}

/// The value of `rows`' first (newest) row from `cells`, `read`; the rows if it is not there. An
/// absent key (no rows) reads no value, so it counts no cache hit.
fn read_newest<T>(
    cells: &PointCells<'_>,
    rows: Range<usize>,
    read: impl FnOnce(&[u8]) -> T,
) -> Searched<T> {
    let value = if rows.is_empty() {
        None
    } else {
        cells.value(rows.start as u64)
    };
    match value {
        Some(bytes) => Searched::Value(read(bytes)),
        None => Searched::Rows(rows),
    }
}

/// A live segment.
#[derive(Debug)]
pub struct Segment {
    /// What the manifest records about it.
    pub entry: SegmentEntry,
    /// The storage reader.
    pub reader: SegmentReader,
    /// The learned index over [`SegmentReader::keys`].
    pub index: AnyIndex,
    /// `_tombstone` then every value column: what a point read fetches where the segment holds
    /// tombstones ([`Self::point_read`]).
    pub row: Projection,
    /// Every value column without `_tombstone`, if the segment holds no tombstone (every row
    /// group's statistics say its largest tombstone flag is false) and has a value column: what
    /// a scan or a point read fetches, skipping a column it would only find false.
    pub values: Option<Projection>,
    /// `_lsn` alone: what a read at an older snapshot checks first.
    pub lsn: Projection,
    /// Whether every key has one row (no older version beside it): a scan then takes runs of
    /// rows without looking for a key's second row.
    pub unique: bool,
    /// Its rows' average decoded size in bytes (by the Parquet metadata, at least 1): what sizes
    /// a batch of its rows read into memory.
    pub row_bytes: u64,
    /// The same for each value column alone, in the table's order: what sizes a batch of a
    /// projection of them.
    pub column_bytes: Vec<u64>,
    /// The keys, so a point read of a key the segment does not hold skips the index.
    filter: FixedFilter,
}

impl Segment {
    /// Opens the segment an entry names, checked against its seal, with its stored index.
    pub async fn open(
        store: Arc<dyn ObjectStore>,
        entry: SegmentEntry,
        cache: Arc<PageCache>,
    ) -> Result<Self> {
        // The manifest holds the path as written (`Path`'s encoded form): parsed, not encoded a
        // second time (a prefix with `~` or `%` then named another object).
        let path = Path::parse(&entry.path)
            .map_err(|err| Error::Corrupt(format!("segment path {:?}: {err}", entry.path)))?;
        let reader = SegmentReader::open(store, path, Some(&entry.seal), cache).await?;
        // Reads prune and order segments by the manifest's key and LSN ranges: a range narrower
        // than the segment's would skip its rows, an LSN range too low would show newer rows to
        // older snapshots. The footer says what the segment holds.
        let meta = reader.meta();
        let listed = (
            entry.rows,
            entry.key_min,
            entry.key_max,
            entry.lsn_min,
            entry.lsn_max,
        );
        let held = (
            meta.rows,
            meta.key_min,
            meta.key_max,
            meta.lsn_min,
            meta.lsn_max,
        );
        if listed != held {
            return Err(Error::Corrupt(format!(
                "segment {}: the manifest lists (rows, keys, LSNs) {listed:?}, its footer {held:?}",
                entry.path
            )));
        }
        let index = AnyIndex::decode(reader.index_bytes())?;
        index.check_keys(reader.keys())?;
        let names: Vec<&str> = reader
            .schema()
            .fields()
            .iter()
            .skip(2)
            .map(|f| f.name().as_str())
            .collect();
        if names.first() != Some(&TOMBSTONE_COLUMN) {
            return Err(Error::Corrupt(format!(
                "segment {} has no {TOMBSTONE_COLUMN} column",
                entry.path
            )));
        }
        let row = reader.projection(&names)?;
        let no_tombstones = reader.column_stats(TOMBSTONE_COLUMN).is_ok_and(|stats| {
            let maxes = stats.maxes.as_boolean_opt();
            stats.maxes.null_count() == 0 && maxes.is_some_and(|m| m.true_count() == 0)
        });
        let values = match &names[1..] {
            value_columns if no_tombstones && !value_columns.is_empty() => {
                Some(reader.projection(value_columns)?)
            }
            _ => None,
        };
        let lsn = reader.projection(&[LSN_COLUMN])?;
        let filter = FixedFilter::of(reader.keys());
        let unique = reader.keys().windows(2).all(|pair| pair[0] != pair[1]);
        let rows = reader.rows().max(1);
        let row_bytes = (reader.decoded_bytes() / rows).max(1);
        let column_bytes = names[1..]
            .iter()
            .map(|name| reader.decoded_bytes_of(name).unwrap_or(0) / rows)
            .collect();
        Ok(Self {
            filter,
            unique,
            row_bytes,
            column_bytes,
            entry,
            reader,
            index,
            row,
            values,
            lsn,
        })
    }

    /// Checks that the segment stores `stored`'s value columns (names, types, nullability, in
    /// order). A manifest names a segment of its table's columns; one that disagrees (a hand-made
    /// manifest, or a segment left by another table of the same id) would otherwise fail every
    /// read with an Arrow error at its first mismatching batch, or decode another type's bytes.
    pub fn check_columns(&self, stored: &arrow_schema::Schema) -> Result<()> {
        let fields = self.reader.schema().fields();
        let values = fields.iter().skip(3);
        let matches = fields.len() == stored.fields().len() + 3
            && values.zip(stored.fields().iter()).all(|(found, expected)| {
                found.name() == expected.name()
                    && found.data_type() == expected.data_type()
                    && found.is_nullable() == expected.is_nullable()
            });
        if matches {
            return Ok(());
        }
        let describe = |fields: &mut dyn Iterator<Item = &arrow_schema::FieldRef>| {
            fields
                .map(|f| format!("{}: {}", f.name(), f.data_type()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        Err(Error::Corrupt(format!(
            "segment {} stores columns ({}) where its table has ({})",
            self.entry.path,
            describe(&mut fields.iter().skip(3)),
            describe(&mut stored.fields().iter()),
        )))
    }

    /// Rows of this segment that decode to about `bytes` (its average row's size), between 1
    /// and `most`; with `columns` (value columns, by their index in the table), rows of a
    /// projection of those columns (and the key and LSN).
    pub fn rows_in(&self, bytes: usize, most: usize, columns: Option<&[usize]>) -> usize {
        let row_bytes = match columns {
            None => self.row_bytes,
            Some(columns) => columns
                .iter()
                .map(|&c| self.column_bytes.get(c).copied().unwrap_or(self.row_bytes))
                .sum::<u64>()
                .saturating_add(16),
        };
        usize::try_from(bytes as u64 / row_bytes.max(1))
            .unwrap_or(most)
            .clamp(1, most.max(1))
    }

    /// What a point read of a row fetches: the value columns alone where the segment holds no
    /// tombstone (a page lookup and a cache line fewer per read), else `_tombstone` first.
    pub fn point_read(&self) -> &Projection {
        self.values.as_ref().unwrap_or(&self.row)
    }

    /// Row `offset` of `pages` fetched with [`Self::point_read`]: `read` of the value columns'
    /// pages, or `None` for a tombstone.
    pub fn row_in<T>(
        &self,
        pages: &[&Page],
        offset: usize,
        read: impl FnOnce(&[&Page], usize) -> Option<T>,
    ) -> Option<T> {
        if self.values.is_some() {
            return read(pages, offset);
        }
        // `row` puts the Boolean `_tombstone` first (the segment's schema is checked at open).
        let (tombstones, values) = pages.split_first()?;
        if tombstones.array().as_boolean().value(offset) {
            return None;
        }
        read(values, offset)
    }

    /// Rows at `positions` from cached pages, `put(i, answer)` for each one served: read with
    /// `from_bytes`, if given, from value pages of one width as in [`Self::search_value`], the
    /// others with `read` as in [`Self::row_in`]. Returns the indexes `i` of the rows whose pages
    /// are not cached.
    pub fn rows_cached<T>(
        &self,
        positions: &[u64],
        from_bytes: Option<fn(&[u8]) -> T>,
        read: impl Fn(&[&Page], usize) -> Option<T>,
        mut put: impl FnMut(usize, Option<T>),
    ) -> Result<Vec<usize>> {
        let (Some(from_bytes), Some(values)) = (from_bytes, &self.values) else {
            return Ok(self.reader.read_cached_many(
                positions,
                self.point_read(),
                |i, pages, offset| {
                    put(i, self.row_in(pages, offset, &read));
                },
            )?);
        };
        let left = self
            .reader
            .read_cached_bytes_many(positions, values, |i, bytes| {
                put(i, Some(from_bytes(bytes)));
            })?;
        if left.is_empty() {
            return Ok(left);
        }
        let again: Vec<u64> = left.iter().map(|&i| positions[i]).collect();
        let missing = self
            .reader
            .read_cached_many(&again, values, |j, pages, offset| {
                put(left[j], self.row_in(pages, offset, &read));
            })?;
        Ok(missing.iter().map(|&j| left[j]).collect())
    }

    /// The decoded key column.
    pub fn keys(&self) -> &[u64] {
        self.reader.keys()
    }

    /// Whether `key` is within the segment's key range.
    pub fn may_hold(&self, key: u64) -> bool {
        matches!((self.entry.key_min, self.entry.key_max), (Some(lo), Some(hi)) if lo <= key && key <= hi)
    }

    /// Whether the segment may hold `key`: within its key range and passed by its filter.
    pub fn may_contain(&self, key: u64) -> bool {
        self.may_hold(key) && self.filter.may_hold(key)
    }

    /// Starts loading the filter line [`Self::may_contain`] reads for `key`, so a batched read
    /// can overlap many keys' probes.
    pub fn prefetch_filter(&self, key: u64) {
        if self.may_hold(key) {
            self.filter.prefetch(key);
        }
    }

    /// Whether the segment's key range meets `range`.
    pub fn overlaps(&self, range: &RangeInclusive<u64>) -> bool {
        matches!((self.entry.key_min, self.entry.key_max),
            (Some(lo), Some(hi)) if lo <= *range.end() && *range.start() <= hi)
    }

    /// The rows of `key` (newest first), empty if it has none.
    pub fn rows_of(&self, key: u64) -> Range<usize> {
        if !self.may_contain(key) {
            return 0..0;
        }
        self.search(key)
    }

    /// The rows of `key` (newest first) found by the index alone, without asking the filter:
    /// for the oldest segment a read can find the key in, where a key that got this far is
    /// usually present, so the filter would mostly answer "maybe" at the cost of one more cache
    /// miss (RocksDB's `optimize_filters_for_hits` makes the same trade for its last level).
    /// Exact for any key: one outside the segment's range finds no rows.
    ///
    /// Point reads search this way, and read the row they find: so the value cells of the rows
    /// the index's window spans are asked for before the window is searched (where their pages
    /// are cached and of one width), and the miss on the value overlaps the search's misses
    /// instead of following them. Windows wider than [`READ_AHEAD_ROWS`] are searched without.
    pub fn search(&self, key: u64) -> Range<usize> {
        let keys = self.keys();
        let window = self.index.window(key);
        if window.len() > READ_AHEAD_ROWS {
            return self.rows_from(self.index.lower_bound(keys, key), key);
        }
        // The key window's lines first: their misses are on their way while the value's page
        // is looked up.
        let after = self.prefetch_window(window);
        self.reader
            .prefetch_cells(window.lo as u64..after as u64, self.point_read());
        self.rows_from(
            search::lower_bound_prefetched::<{ search::SCAN_MAX }>(keys, window, key),
            key,
        )
    }

    /// [`Self::search`] that also reads the value of the key's newest row with `read`, where
    /// the segment holds no tombstone and that row's cached page has values of one width (a
    /// key-value table's, usually): the page is found once, under one epoch pin, for the value
    /// lines asked for ahead of the search and for the value read after it
    /// ([`SegmentReader::with_point_cells`]). Otherwise the rows, whose value is read another
    /// way.
    pub fn search_value<T>(&self, key: u64, read: impl FnOnce(&[u8]) -> T) -> Searched<T> {
        let Some(values) = &self.values else {
            return Searched::Rows(self.search(key));
        };
        let keys = self.keys();
        let window = self.index.window(key);
        if window.len() > READ_AHEAD_ROWS {
            // Too wide to ask for ahead: search, then read the value from the slot.
            let rows = self.rows_from(self.index.lower_bound(keys, key), key);
            if rows.is_empty() {
                return Searched::Rows(rows);
            }
            let at = rows.start as u64;
            return self
                .reader
                .with_point_cells(at..at + 1, values, |cells| read_newest(cells, rows, read));
        }
        let after = self.prefetch_window(window);
        self.reader
            .with_point_cells(window.lo as u64..after as u64, values, |cells| {
                let rows = self.rows_from(
                    search::lower_bound_prefetched::<{ search::SCAN_MAX }>(keys, window, key),
                    key,
                );
                read_newest(cells, rows, read)
            })
    }

    /// Starts loading the lines of the key column `window` spans (it is `lo..=hi`); returns
    /// the position after it.
    fn prefetch_window(&self, window: Window) -> usize {
        let after = window.hi.saturating_add(1);
        crate::prefetch::window(self.keys(), window.lo, after, search::PREFETCH_LINES);
        after
    }

    /// The rows of `key` from `start`, its lower bound: empty if the key there is another.
    fn rows_from(&self, start: usize, key: u64) -> Range<usize> {
        let keys = self.keys();
        start..start + keys[start..].iter().take_while(|&&k| k == key).count()
    }

    /// The positions of the rows whose keys are in `range`.
    pub fn positions(&self, range: &RangeInclusive<u64>) -> Range<usize> {
        if !self.overlaps(range) {
            return 0..0;
        }
        let keys = self.keys();
        let (first, after) = bounds(range);
        let start = self.index.lower_bound(keys, first);
        let end = after.map_or(keys.len(), |after| self.index.lower_bound(keys, after));
        start..end.max(start)
    }

    /// Starts loading the model lines [`Segment::positions`] reads first for `range`: the first
    /// of two steps ([`Segment::prefetch_keys`] is the second) that a scan takes for every
    /// segment before it searches any, so that the segments' misses overlap.
    pub fn prefetch_model(&self, range: &RangeInclusive<u64>) {
        if self.overlaps(range) {
            let (first, after) = bounds(range);
            for key in std::iter::once(first).chain(after) {
                self.index.prefetch(key);
            }
        }
    }

    /// Starts loading the key windows [`Segment::positions`] searches for `range`: reads the
    /// model, whose lines [`Segment::prefetch_model`] asked for.
    pub fn prefetch_keys(&self, range: &RangeInclusive<u64>) {
        if self.overlaps(range) {
            let (first, after) = bounds(range);
            for key in std::iter::once(first).chain(after) {
                search::prefetch_window(self.keys(), self.index.window(key));
            }
        }
    }

    /// Whether every row is visible at `snapshot` (the common case: no LSN needs reading).
    pub fn all_visible_at(&self, snapshot: Lsn) -> bool {
        self.entry.lsn_max.is_none_or(|max| max <= snapshot)
    }

    /// The first row of `rows` (one key's rows, newest first) visible at `snapshot`.
    pub async fn visible_row(&self, rows: Range<usize>, snapshot: Lsn) -> Result<Option<usize>> {
        if rows.is_empty() || self.all_visible_at(snapshot) {
            return Ok((!rows.is_empty()).then_some(rows.start));
        }
        for position in rows {
            if self.lsn_at(position).await? <= snapshot {
                return Ok(Some(position));
            }
        }
        Ok(None)
    }

    /// The LSN of the row at `position`.
    pub async fn lsn_at(&self, position: usize) -> Result<Lsn> {
        let batch = self.reader.fetch(position as u64, &self.lsn).await?;
        let column = batch.column(0).as_primitive::<UInt64Type>();
        if column.is_empty() || column.is_null(0) {
            return Err(Error::Corrupt(format!(
                "segment {}: no LSN at row {position}",
                self.entry.path
            )));
        }
        Ok(column.value(0))
    }
}

/// The keys whose lower bounds delimit the positions of `range`'s rows: its start, and the key
/// after its end unless the range runs to `u64::MAX` (the key column's end delimits them then).
fn bounds(range: &RangeInclusive<u64>) -> (u64, Option<u64>) {
    (*range.start(), range.end().checked_add(1))
}
