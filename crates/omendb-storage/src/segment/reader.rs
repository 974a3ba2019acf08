//! [`SegmentReader`]: opens a segment (footer, metadata, decoded key column) and reads rows by
//! position, one page at a time through the shared [`PageCache`], or scans position ranges.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, RecordBatch, UInt64Array};
use arrow_schema::{DataType, Schema, SchemaRef};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::statistics::StatisticsConverter;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, RowSelection, RowSelector,
};
use parquet::arrow::async_reader::{
    AsyncFileReader, MetadataFetch, ParquetRecordBatchStreamBuilder,
};
use parquet::errors::ParquetError;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};
use smallvec::SmallVec;

use super::cache::PageCache;
use super::checksum::{self, Checksums};
use super::page::{Cells, Page};
use super::page_table::{PageRows, PageTable};
use super::{
    CHECKSUMS_KEY, CRC_KEY, FORMAT_VERSION, INDEX_KEY, KEY_COLUMN, LSN_COLUMN, META_KEY,
    SYSTEM_COLUMNS, SegmentMeta, SegmentSeal, TOMBSTONE_COLUMN, metadata_crc, schema_fingerprint,
};
use crate::error::{Error, Result};
use crate::prefetch;

/// Rows per batch when the reader decodes the key column at open.
const KEY_BATCH_ROWS: usize = 64 * 1024;

/// Pages a [`SegmentReader::fetch_range`] reads through the page cache; a range over more pages
/// is a long scan, decoded without caching.
pub const CACHED_RANGE_PAGES: u64 = 2;

/// Rows between the stages of a batched cached read ([`Ahead`]): a row is read
/// `AHEAD * STAGES.len()` rows after its first line was asked for. Four stages of four rows,
/// one or two columns each, keep the CPU's 10-20 outstanding misses busy, and the lines are
/// still cached when the row is read.
const AHEAD: usize = 4;

/// What a batched cached read asks the CPU for ahead of the row it reads, farthest first: each
/// stage reads the lines the one before asked for, to find the next. A cached page is a chain
/// of pointers (table slot, page, array, buffer), so a row's cells are three misses deep (two
/// for a [`Page`] of one width, read without its array).
#[derive(Clone, Copy, Debug)]
enum Ahead {
    /// The page that holds the column's array: looked up in the page table once per row (the
    /// later stages and the read use what was found), and its line asked for.
    Page,
    /// The array itself (its buffers' addresses and lengths); nothing for a page of one width.
    Array,
    /// The row's validity bit and value, or a variable-width value's start and end, or its
    /// bytes where the page's values have one width ([`Page::width`]).
    Cell,
    /// A variable-width value's first bytes (nothing for a page of one width).
    Bytes,
}

/// The stages in the order a row passes them.
const STAGES: [Ahead; 4] = [Ahead::Page, Ahead::Array, Ahead::Cell, Ahead::Bytes];

/// A choice of columns to read, prepared once per schema and reused for every fetch. Columns
/// come back in schema order.
#[derive(Clone, Debug)]
pub struct Projection {
    columns: Vec<usize>,
    schema: SchemaRef,
    mask: ProjectionMask,
    /// The fingerprint of the full schema it was made for: it fits only segments of that schema.
    fingerprint: u32,
}

impl Projection {
    /// The schema of the batches read with this projection.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }
}

/// Row-group statistics of one column, one entry per row group (for aggregates that can skip
/// decoding whole row groups).
#[derive(Clone, Debug)]
pub struct ColumnStats {
    /// Smallest non-null value per row group (null where unknown).
    pub mins: ArrayRef,
    /// Largest non-null value per row group.
    pub maxes: ArrayRef,
    /// Nulls per row group.
    pub null_counts: UInt64Array,
    /// Rows per row group.
    pub row_counts: Vec<u64>,
}

/// An open segment. Cheap to share (`Arc<SegmentReader>`); reads never block each other.
#[derive(Debug)]
pub struct SegmentReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
    size: u64,
    metadata: ArrowReaderMetadata,
    meta: SegmentMeta,
    index: Bytes,
    checksums: Arc<Checksums>,
    keys: UInt64Array,
    /// The key column cut into pages (views of `keys`, no copies): served to point reads
    /// instead of caching the key column a second time in the page cache.
    key_pages: Vec<Page>,
    /// First row of each row group, and the row count after the last.
    row_group_starts: Vec<u64>,
    /// First page number of each row group (pages are numbered across the segment).
    row_group_pages: Vec<u64>,
    /// Every row group starts at a multiple of `rows_per_page` (true of every segment our
    /// writer makes), so row `p` is on page `p / rows_per_page` without a row-group search.
    pages_aligned: bool,
    cache: Arc<PageCache>,
    /// This reader's cached pages of its value columns (the cache decides which stay).
    table: Arc<PageTable>,
}

impl Drop for SegmentReader {
    fn drop(&mut self) {
        // The segment is closing (dropped by compaction, or the database closes): its pages
        // would only wait for eviction.
        self.cache.forget(&self.table);
    }
}

/// One page's values of one width, found for a point read ([`SegmentReader::with_point_cells`]);
/// valid while the epoch pin it was found under is held.
pub struct PointCells<'a> {
    reader: &'a SegmentReader,
    columns: &'a [usize],
    /// The page, its first row and its values; `None` if they were not found.
    page: Option<(u64, u64, Cells<'a>)>,
}

impl<'a> PointCells<'a> {
    /// Row `position`'s value if it is on this page (a read served from the cache, counted as
    /// one); `None` otherwise.
    pub fn value(&self, position: u64) -> Option<&'a [u8]> {
        let (page, first, cells) = self.page.as_ref()?;
        let bytes = cells.row(usize::try_from(position.checked_sub(*first)?).ok()?)?;
        self.reader
            .cache
            .hit(&self.reader.table, self.columns, *page);
        Some(bytes)
    }
}

/// A cached page's values of one width, found for a scan step ([`SegmentReader::page_cells`]);
/// valid while the [`CachePin`] it was found under is held.
#[derive(Debug)]
pub struct PageCells<'a> {
    reader: &'a SegmentReader,
    columns: &'a [usize],
    page: u64,
    rows: Range<u64>,
    cells: Cells<'a>,
}

impl<'a> PageCells<'a> {
    /// The segment's rows the page holds.
    pub fn rows(&self) -> Range<u64> {
        self.rows.clone()
    }

    /// The page's values.
    pub fn cells(&self) -> Cells<'a> {
        self.cells
    }

    /// Counts the read of the page's rows as a cache hit: called once the rows are read from
    /// it, so that a lookup whose result is dropped (another segment of the same step must be
    /// read first) is not counted, as the read that replaces it will be.
    pub fn served(&self) {
        self.reader
            .cache
            .hit(&self.reader.table, self.columns, self.page);
    }
}

/// A pin of the memory cached pages live in. Values borrowed under it
/// ([`SegmentReader::page_cells`]) stay valid while it is held, even if the cache evicts their
/// page meanwhile: an evicted page is freed only once every pin taken before its eviction is
/// dropped. So hold one briefly (a step of a scan), or evicted pages wait for it.
pub struct CachePin(crossbeam_epoch::Guard);

impl CachePin {
    /// Pins the current thread (not `Send`: the pin belongs to it).
    pub fn new() -> Self {
        Self(crossbeam_epoch::pin())
    }
}

impl Default for CachePin {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for CachePin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CachePin")
    }
}

impl SegmentReader {
    /// Opens the segment at `path`: reads the footer and page index, checks the metadata, and
    /// decodes the key column. A damaged or truncated object gives [`Error::Corrupt`] (or
    /// [`Error::Parquet`]) naming it.
    pub async fn open(
        store: Arc<dyn ObjectStore>,
        path: Path,
        seal: Option<&SegmentSeal>,
        cache: Arc<PageCache>,
    ) -> Result<Self> {
        let object = path.to_string();
        let corrupt = |reason: String| Error::Corrupt {
            object: object.clone(),
            reason,
        };
        let (size, footer) = match seal {
            None => {
                let size = store
                    .head(&path)
                    .await
                    .map_err(|err| Error::from_store("head", &path, err))?
                    .size;
                let fetch = Footer::Remote {
                    store: Arc::clone(&store),
                    path: path.clone(),
                };
                (
                    size,
                    load_footer(fetch, size)
                        .await
                        .map_err(|err| from_parquet(&object, err))?,
                )
            }
            Some(seal) => {
                // One read fetches the whole footer, which the seal's checksum then covers.
                let tail = seal.data_end..seal.size;
                let options = GetOptions {
                    range: Some(GetRange::Bounded(tail.clone())),
                    ..GetOptions::default()
                };
                let got = match store.get_opts(&path, options).await {
                    Ok(got) => got,
                    Err(err) => {
                        // A range past the end fails; tell a truncated object from a failed read.
                        let actual = store.head(&path).await.map(|meta| meta.size);
                        return Err(match actual {
                            Ok(size) if size != seal.size => {
                                corrupt(format!("{size} bytes, the manifest says {}", seal.size))
                            }
                            _ => Error::from_store("get", &path, err),
                        });
                    }
                };
                let size = got.meta.size;
                let bytes = got
                    .bytes()
                    .await
                    .map_err(|err| Error::from_store("get", &path, err))?;
                if size != seal.size
                    || bytes.len() as u64 != seal.size - seal.data_end.min(seal.size)
                {
                    return Err(corrupt(format!(
                        "{size} bytes, the manifest says {}",
                        seal.size
                    )));
                }
                if crc32c::crc32c(&bytes) != seal.footer_crc32c {
                    return Err(corrupt("the footer does not match its checksum".to_owned()));
                }
                let fetch = Footer::Local {
                    start: seal.data_end,
                    bytes,
                };
                (
                    size,
                    load_footer(fetch, size)
                        .await
                        .map_err(|err| from_parquet(&object, err))?,
                )
            }
        };
        let footer = Arc::new(footer);
        let embedded = ArrowReaderMetadata::try_new(Arc::clone(&footer), ArrowReaderOptions::new())
            .map_err(|err| from_parquet(&object, err))?;
        // Read batches carry the table's schema only; the footer's key-value metadata (index
        // bytes, checksums) would otherwise ride along on every batch.
        let plain = Arc::new(Schema::new(embedded.schema().fields().clone()));
        let metadata =
            ArrowReaderMetadata::try_new(footer, ArrowReaderOptions::new().with_schema(plain))
                .map_err(|err| from_parquet(&object, err))?;

        let kv = |key: &str| {
            metadata
                .metadata()
                .file_metadata()
                .key_value_metadata()
                .and_then(|kvs| kvs.iter().find(|kv| kv.key == key))
                .and_then(|kv| kv.value.clone())
                .ok_or_else(|| corrupt(format!("no {key} in the footer: not an OmenDB segment")))
        };
        let meta: SegmentMeta = serde_json::from_str(&kv(META_KEY)?)
            .map_err(|err| corrupt(format!("{META_KEY}: {err}")))?;
        if meta.format_version > FORMAT_VERSION {
            return Err(Error::UnsupportedVersion {
                object,
                found: meta.format_version,
                supported: FORMAT_VERSION,
            });
        }
        let crcs = checksum::decode(&kv(CHECKSUMS_KEY)?)
            .ok_or_else(|| corrupt(format!("{CHECKSUMS_KEY} is not valid")))?;
        let checksums = Checksums::new(u64::from(meta.checksum_chunk_bytes), meta.data_end, crcs)
            .filter(|_| meta.data_end <= size)
            .ok_or_else(|| corrupt("the checksums do not cover the data region".to_owned()))?;
        let index = STANDARD
            .decode(kv(INDEX_KEY)?)
            .map_err(|err| corrupt(format!("{INDEX_KEY}: {err}")))?;
        let stored = u32::from_str_radix(&kv(CRC_KEY)?, 16).ok();
        if stored
            != Some(metadata_crc(
                &kv(META_KEY)?,
                &kv(CHECKSUMS_KEY)?,
                &kv(INDEX_KEY)?,
            ))
        {
            return Err(corrupt(format!(
                "{CRC_KEY} does not match the segment metadata"
            )));
        }

        let schema = metadata.schema();
        let system_ok = schema.fields().len() >= SYSTEM_COLUMNS
            && [
                (KEY_COLUMN, DataType::UInt64),
                (LSN_COLUMN, DataType::UInt64),
                (TOMBSTONE_COLUMN, DataType::Boolean),
            ]
            .iter()
            .enumerate()
            .all(|(i, (name, ty))| {
                schema.field(i).name() == name && schema.field(i).data_type() == ty
            });
        if !system_ok || schema_fingerprint(schema) != meta.schema_fingerprint {
            return Err(corrupt(
                "the schema does not match the segment metadata".to_owned(),
            ));
        }
        let file_rows = metadata.metadata().file_metadata().num_rows();
        if u64::try_from(file_rows).ok() != Some(meta.rows) || meta.rows_per_page == 0 {
            return Err(corrupt(format!(
                "{} rows in the footer, {} in the metadata",
                file_rows, meta.rows
            )));
        }

        check_layout(metadata.metadata(), meta.data_end).map_err(corrupt)?;
        let rows_per_page = u64::from(meta.rows_per_page);
        let mut row_group_starts = vec![0u64];
        let mut row_group_pages = vec![0u64];
        let (mut rows_so_far, mut pages_so_far) = (0u64, 0u64);
        for row_group in metadata.metadata().row_groups() {
            let rows = u64::try_from(row_group.num_rows())
                .map_err(|_| corrupt("negative row count".to_owned()))?;
            rows_so_far = rows_so_far
                .checked_add(rows)
                .ok_or_else(|| corrupt("row counts overflow".to_owned()))?;
            pages_so_far = pages_so_far
                .checked_add(rows.div_ceil(rows_per_page))
                .ok_or_else(|| corrupt("page counts overflow".to_owned()))?;
            row_group_starts.push(rows_so_far);
            row_group_pages.push(pages_so_far);
        }
        // Every row has an 8-byte key in the data region, which bounds what a footer can claim.
        if rows_so_far != meta.rows || meta.rows > meta.data_end / 8 {
            return Err(corrupt(format!(
                "the row groups hold {rows_so_far} rows; the metadata says {}",
                meta.rows
            )));
        }

        let schema_columns = metadata.schema().fields().len();
        let pages_aligned = row_group_starts
            .iter()
            .all(|&start| start.is_multiple_of(rows_per_page) || start == meta.rows);
        let page_rows = pages_aligned.then_some(PageRows {
            per_page: rows_per_page,
            rows: meta.rows,
        });
        let mut reader = Self {
            store,
            path,
            size,
            metadata,
            meta,
            index: Bytes::from(index),
            checksums: Arc::new(checksums),
            keys: UInt64Array::from(Vec::<u64>::new()),
            key_pages: Vec::new(),
            pages_aligned,
            row_group_starts,
            row_group_pages,
            table: cache.table(schema_columns, pages_so_far, page_rows),
            cache,
        };
        reader.keys = UInt64Array::from(reader.decode_keys().await?);
        reader.key_pages = reader.cut_key_pages()?;
        Ok(reader)
    }

    async fn decode_keys(&self) -> Result<Vec<u64>> {
        let object = self.path.to_string();
        let corrupt = |reason: String| Error::Corrupt {
            object: object.clone(),
            reason,
        };
        let rows =
            usize::try_from(self.meta.rows).map_err(|_| corrupt("too many rows".to_owned()))?;
        let mut keys = Vec::with_capacity(rows);
        // Every point read of the segment lands in this array at random.
        crate::huge_pages::before_writing(keys.spare_capacity_mut());
        let projection = self.projection_of([0])?;
        let mut batches = self.stream(0..self.meta.rows, &projection, KEY_BATCH_ROWS)?;
        while let Some(batch) = batches.next().await {
            let batch = batch?;
            let column = batch.column(0).as_any().downcast_ref::<UInt64Array>();
            match column {
                Some(column) if column.null_count() == 0 => keys.extend_from_slice(column.values()),
                _ => {
                    return Err(corrupt(format!(
                        "{KEY_COLUMN} is not a non-null u64 column"
                    )));
                }
            }
        }
        if keys.len() != rows
            || !keys.is_sorted()
            || keys.first().copied() != self.meta.key_min
            || keys.last().copied() != self.meta.key_max
        {
            return Err(corrupt(format!(
                "{KEY_COLUMN} does not match the metadata or is out of order"
            )));
        }
        crate::huge_pages::after_writing(&keys);
        Ok(keys)
    }

    /// The segment's metadata.
    pub fn meta(&self) -> &SegmentMeta {
        &self.meta
    }

    /// The engine's serialized index, as handed to the writer.
    pub fn index_bytes(&self) -> &Bytes {
        &self.index
    }

    /// The key of every row, in order (what the engine's learned index is built over).
    pub fn keys(&self) -> &[u64] {
        self.keys.values()
    }

    /// Views of the decoded key column, one per page, in page order.
    fn cut_key_pages(&self) -> Result<Vec<Page>> {
        let per_page = u64::from(self.meta.rows_per_page);
        let mut pages = Vec::new();
        for group in 0..self.row_group_starts.len().saturating_sub(1) {
            let (start, end) = self.group_bounds(group)?;
            let mut at = start;
            while at < end {
                let len = per_page.min(end - at);
                pages.push(Page::new(Arc::new(
                    self.keys.slice(at as usize, len as usize),
                )));
                at += len;
            }
        }
        Ok(pages)
    }

    /// A cached page of `column`: the key column's from the decoded keys, the others' from the
    /// page table (valid while `guard` is pinned).
    fn page_in<'a>(
        &'a self,
        column: usize,
        page: u64,
        guard: &'a crossbeam_epoch::Guard,
    ) -> Option<&'a Page> {
        if column == 0 {
            usize::try_from(page)
                .ok()
                .and_then(|page| self.key_pages.get(page))
        } else {
            self.table.get(self.table.slot(column, page)?, guard)
        }
    }

    /// [`Self::page_in`], owned.
    fn cached_page(&self, column: usize, page: u64) -> Option<ArrayRef> {
        self.page_in(column, page, &crossbeam_epoch::pin())
            .map(|page| Arc::clone(page.array_ref()))
    }

    /// The full schema: system columns, then value columns.
    pub fn schema(&self) -> &SchemaRef {
        self.metadata.schema()
    }

    /// The object's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The object's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Rows in the segment.
    pub fn rows(&self) -> u64 {
        self.meta.rows
    }

    /// The bytes its rows take decoded, by the Parquet metadata (before compression): what
    /// sizes a batch of rows read in memory.
    pub fn decoded_bytes(&self) -> u64 {
        self.metadata
            .metadata()
            .row_groups()
            .iter()
            .map(|group| u64::try_from(group.total_byte_size()).unwrap_or(0))
            .sum()
    }

    /// The bytes the named column takes decoded (the uncompressed size of its column chunks,
    /// every leaf of a nested one), or `None` if the segment has no such column.
    pub fn decoded_bytes_of(&self, name: &str) -> Option<u64> {
        let metadata = self.metadata.metadata();
        let leaves: Vec<usize> = metadata
            .file_metadata()
            .schema_descr()
            .columns()
            .iter()
            .enumerate()
            .filter(|(_, column)| column.path().parts().first().map(String::as_str) == Some(name))
            .map(|(i, _)| i)
            .collect();
        if leaves.is_empty() {
            return None;
        }
        let bytes = metadata
            .row_groups()
            .iter()
            .flat_map(|group| leaves.iter().map(move |&i| group.column(i)))
            .map(|chunk| u64::try_from(chunk.uncompressed_size()).unwrap_or(0))
            .sum();
        Some(bytes)
    }

    /// A projection of the named columns (system or value columns).
    pub fn projection(&self, names: &[&str]) -> Result<Projection> {
        let schema = self.schema();
        let indices = names
            .iter()
            .map(|name| {
                schema
                    .index_of(name)
                    .map_err(|_| Error::BadInput(format!("no column {name:?} in {}", self.path)))
            })
            .collect::<Result<Vec<_>>>()?;
        self.projection_of(indices)
    }

    /// A projection of every column.
    pub fn projection_all(&self) -> Projection {
        let all = 0..self.schema().fields().len();
        // Every index is in range, so this cannot fail.
        self.projection_of(all).unwrap_or_else(|_| Projection {
            columns: Vec::new(),
            schema: Arc::clone(self.schema()),
            mask: ProjectionMask::all(),
            fingerprint: self.meta.schema_fingerprint,
        })
    }

    fn projection_of(&self, indices: impl IntoIterator<Item = usize>) -> Result<Projection> {
        let mut columns: Vec<usize> = indices.into_iter().collect();
        columns.sort_unstable();
        columns.dedup();
        let schema = Arc::new(self.schema().project(&columns)?);
        let mask = ProjectionMask::roots(self.metadata.parquet_schema(), columns.iter().copied());
        Ok(Projection {
            columns,
            schema,
            mask,
            fingerprint: self.meta.schema_fingerprint,
        })
    }

    /// Refuses a projection made for a segment of another schema.
    fn check(&self, projection: &Projection) -> Result<()> {
        if projection.fingerprint == self.meta.schema_fingerprint {
            Ok(())
        } else {
            Err(Error::BadInput(format!(
                "the projection was made for a segment of another schema than {}",
                self.path
            )))
        }
    }

    /// The first row of row group `group` and the row after its last.
    fn group_bounds(&self, group: usize) -> Result<(u64, u64)> {
        match (
            self.row_group_starts.get(group),
            self.row_group_starts.get(group + 1),
        ) {
            (Some(&start), Some(&end)) => Ok((start, end)),
            _ => Err(Error::Corrupt {
                object: self.path.to_string(),
                reason: format!("no row group {group}"),
            }),
        }
    }

    /// The page holding row `position`, and the row range of that page.
    fn page_of(&self, position: u64) -> Result<(u64, Range<u64>)> {
        if position >= self.meta.rows {
            return Err(Error::BadInput(format!(
                "row {position} is past the end of {} ({} rows)",
                self.path, self.meta.rows
            )));
        }
        let per_page = u64::from(self.meta.rows_per_page);
        if self.pages_aligned {
            // Point reads take this path: a page never straddles a row group here, so it ends at
            // the next multiple of `per_page` or at the last row.
            let page = position / per_page;
            let start = page * per_page;
            return Ok((
                page,
                start..start.saturating_add(per_page).min(self.meta.rows),
            ));
        }
        let group = self
            .row_group_starts
            .partition_point(|&start| start <= position)
            - 1;
        let (group_start, group_end) = self.group_bounds(group)?;
        let within = (position - group_start) / per_page;
        let start = group_start + within * per_page;
        Ok((
            self.row_group_pages[group] + within,
            start..start.saturating_add(per_page).min(group_end),
        ))
    }

    /// Row `position` from cached pages only: `Ok(None)` if a page is not cached. Never waits
    /// for I/O (reads served from memory must not yield).
    pub fn fetch_cached(
        &self,
        position: u64,
        projection: &Projection,
    ) -> Result<Option<RecordBatch>> {
        self.read_cached(position, projection, |pages, offset| {
            let row = pages
                .iter()
                .map(|page| page.array().slice(offset, 1))
                .collect();
            RecordBatch::try_new(Arc::clone(&projection.schema), row)
        })?
        .transpose()
        .map_err(Error::from)
    }

    /// Row `position` from cached pages, without copying it: `read` gets the projected
    /// columns' cached pages and the row's offset in them. `Ok(None)` if a page is not cached.
    /// Takes no lock or reference count, allocates nothing for up to 8 projected columns, and
    /// never waits for I/O: the point-read path for rows in memory.
    pub fn read_cached<T>(
        &self,
        position: u64,
        projection: &Projection,
        read: impl FnOnce(&[&Page], usize) -> T,
    ) -> Result<Option<T>> {
        self.check(projection)?;
        // One pin covers every column's page; the list is on the stack. A short path matters:
        // it lets the CPU overlap consecutive fetches' memory misses.
        let guard = crossbeam_epoch::pin();
        let mut pages = SmallVec::new();
        let Some((page, offset)) = self.pages_at(position, projection, &guard, &mut pages)? else {
            return Ok(None);
        };
        self.cache.hit(&self.table, &projection.columns, page);
        Ok(Some(read(&pages, offset)))
    }

    /// Rows at `positions` from cached pages: `read(i, pages, offset)` for each `positions[i]`
    /// whose pages are all cached, in order; returns the indexes `i` of the others. Pins once,
    /// and asks the CPU for the lines of the next rows' cells in stages (`Ahead`) while it
    /// reads one, so the memory misses of many rows overlap: the batched point-read path. A
    /// row's pages are looked up once, at its first stage (the pin keeps them readable until
    /// the read even if they are evicted meanwhile).
    /// Like [`Self::read_cached`], never waits for I/O. A position past the end is refused
    /// before any row is read.
    pub fn read_cached_many(
        &self,
        positions: &[u64],
        projection: &Projection,
        mut read: impl FnMut(usize, &[&Page], usize),
    ) -> Result<Vec<usize>> {
        self.check(projection)?;
        if let Some(&last) = positions.iter().max() {
            self.page_of(last)?;
        }
        let guard = crossbeam_epoch::pin();
        let columns = projection.columns.len();
        let depth = AHEAD * STAGES.len();
        // The rows in flight, each in slot `row % depth`: its page, its offset in the page, and
        // the page's array for each projected column (`None` if not cached).
        let mut offsets = vec![0usize; depth];
        let mut page_numbers = vec![0u64; depth];
        let mut found: Vec<Option<&Page>> = vec![None; depth * columns];
        let mut pages: SmallVec<[&Page; 8]> = SmallVec::new();
        let mut missing = Vec::new();
        let mut hits = self.cache.batch_hits(&self.table, &projection.columns);
        for step in 0..positions.len() + depth {
            // The row that passed every stage is read first: its slot is the one the row
            // entering the first stage takes.
            if let Some(i) = step.checked_sub(depth).filter(|&i| i < positions.len()) {
                let at = i % depth;
                let row = &found[at * columns..(at + 1) * columns];
                if row.iter().all(Option::is_some) {
                    pages.clear();
                    pages.extend(row.iter().flatten().copied());
                    hits.hit(page_numbers[at]);
                    read(i, &pages, offsets[at]);
                } else {
                    missing.push(i);
                }
            }
            // Stage `Page` for the row entering.
            if let Some(&position) = positions.get(step) {
                let at = step % depth;
                let (page, rows) = self.page_of(position)?;
                offsets[at] = (position - rows.start) as usize;
                page_numbers[at] = page;
                for (c, &column) in projection.columns.iter().enumerate() {
                    let cached = self.page_in(column, page, &guard);
                    if let Some(cached) = cached {
                        prefetch::line(std::ptr::from_ref(cached));
                    }
                    found[at * columns + c] = cached;
                }
            }
            // The later stages for the rows ahead of it.
            for (k, &stage) in STAGES.iter().enumerate().skip(1) {
                let Some(r) = step.checked_sub(k * AHEAD).filter(|&r| r < positions.len()) else {
                    continue;
                };
                let at = r % depth;
                for &page in found[at * columns..(at + 1) * columns].iter().flatten() {
                    match stage {
                        Ahead::Page => {} // done above
                        Ahead::Array => prefetch::array(page),
                        Ahead::Cell => prefetch::cell(page, offsets[at]),
                        Ahead::Bytes => prefetch::cell_bytes(page, offsets[at]),
                    }
                }
            }
        }
        Ok(missing)
    }

    /// Rows at `positions` of `projection`'s one column, each `read(i, bytes)` from its cached
    /// page where that page's values have one width, found from the page table's slots alone
    /// (see [`Self::read_cached_bytes`]), in order; returns the indexes `i` of the others, for
    /// [`Self::read_cached_many`]. Each row's bytes are asked for when its slot is read, some
    /// rows ahead of its read, so the misses of many rows overlap. A position past the end is
    /// refused before any row is read.
    pub fn read_cached_bytes_many(
        &self,
        positions: &[u64],
        projection: &Projection,
        mut read: impl FnMut(usize, &[u8]),
    ) -> Result<Vec<usize>> {
        self.check(projection)?;
        if let Some(&last) = positions.iter().max() {
            self.page_of(last)?;
        }
        let &[column] = projection.columns.as_slice() else {
            return Ok((0..positions.len()).collect());
        };
        let guard = crossbeam_epoch::pin();
        let depth = AHEAD * STAGES.len();
        // The rows in flight, each in slot `row % depth`: its page's values if packed, its
        // offset in the page and the page's number.
        let mut ahead: Vec<Option<(Cells<'_>, usize, u64)>> = vec![None; depth];
        let mut left = Vec::new();
        let mut hits = self.cache.batch_hits(&self.table, &projection.columns);
        for step in 0..positions.len() + depth {
            if let Some(i) = step.checked_sub(depth).filter(|&i| i < positions.len()) {
                let row = ahead[i % depth]
                    .and_then(|(cells, offset, page)| Some((cells.row(offset)?, page)));
                match row {
                    Some((bytes, page)) => {
                        hits.hit(page);
                        read(i, bytes);
                    }
                    None => left.push(i),
                }
            }
            if let Some(&position) = positions.get(step) {
                let (page, rows) = self.page_of(position)?;
                let offset = (position - rows.start) as usize;
                let cells = self.cells_in(column, page, &guard);
                if let Some(cells) = cells {
                    prefetch::line(cells.at(offset));
                }
                ahead[step % depth] = cells.map(|cells| (cells, offset, page));
            }
        }
        Ok(left)
    }

    /// Starts loading the cells of rows `rows` in `projection`'s cached pages of one width
    /// ([`Page::width`]): a point read that knows the few rows its answer lies in asks for them
    /// while it searches its key among them, so the miss on the value overlaps the search's.
    /// Nothing for other pages, pages not cached, or rows past the end; never waits for I/O.
    pub fn prefetch_cells(&self, rows: Range<u64>, projection: &Projection) {
        let rows = rows.start..rows.end.min(self.meta.rows);
        if rows.is_empty() || self.check(projection).is_err() {
            return;
        }
        let guard = crossbeam_epoch::pin();
        let mut at = rows.start;
        while at < rows.end {
            let Ok((page, in_page)) = self.page_of(at) else {
                return;
            };
            let until = rows.end.min(in_page.end);
            let cells = (at - in_page.start) as usize..(until - in_page.start) as usize;
            for &column in &projection.columns {
                let cached = self
                    .cells_in(column, page, &guard)
                    .or_else(|| self.page_in(column, page, &guard).and_then(Page::cells));
                if let Some(cached) = cached {
                    prefetch::cells(cached, cells.clone());
                }
            }
            at = until;
        }
    }

    /// Runs `f` with the cached values of the page holding row `rows.start` in `projection`'s
    /// one column, where that page's values have one width: a point read that will search its
    /// key among `rows` and read the row it finds looks the page up once, under one epoch pin,
    /// for both. The values of `rows` on that page are asked for before `f` runs, so their miss
    /// overlaps the search's. `f` gets no value ([`PointCells::value`] is `None`) for another
    /// projection, a page not cached or not of one width, or a row on another page; a read then
    /// goes through [`Self::read_cached`]. Never waits for I/O.
    pub fn with_point_cells<R>(
        &self,
        rows: Range<u64>,
        projection: &Projection,
        f: impl FnOnce(&PointCells<'_>) -> R,
    ) -> R {
        let guard = crossbeam_epoch::pin();
        let mut point = PointCells {
            reader: self,
            columns: &projection.columns,
            page: None,
        };
        if let Some((page, in_page, cells)) = self.one_width_page(rows.start, projection, &guard) {
            let until = rows.end.min(in_page.end);
            // Both within the page: `rows.start` is on it and `until` at most its end.
            let first = (rows.start - in_page.start) as usize;
            prefetch::cells(
                cells,
                first..(until.max(rows.start) - in_page.start) as usize,
            );
            point.page = Some((page, in_page.start, cells));
        }
        f(&point)
    }

    /// The values of rows `rows` in `projection`'s one column, if they all lie on one cached
    /// page whose values have one width: that page's values, borrowed under `pin`, with the
    /// rows' lines asked for from the end a scan reads first (the last row if `reverse`).
    /// `None` for another projection, rows across pages or past the end, a page not cached or
    /// not of one width: the rows are then read through [`Self::fetch_range_columns`], which
    /// also reports what was wrong. Counted as a cache hit once [`PageCells::served`] says the
    /// rows were read from it. Never waits for I/O.
    pub fn page_cells<'a>(
        &'a self,
        rows: Range<u64>,
        projection: &'a Projection,
        reverse: bool,
        pin: &'a CachePin,
    ) -> Option<PageCells<'a>> {
        let (page, in_page, cells) = self.one_width_page(rows.start, projection, &pin.0)?;
        if rows.end > in_page.end || rows.is_empty() {
            return None;
        }
        // Both within the page, checked above.
        prefetch::run(
            cells,
            (rows.start - in_page.start) as usize..(rows.end - in_page.start) as usize,
            reverse,
        );
        Some(PageCells {
            reader: self,
            columns: &projection.columns,
            page,
            rows: in_page,
            cells,
        })
    }

    /// The page holding row `position` in `projection`'s one column, if it is cached and its
    /// values have one width: its number, its rows and its values (valid while `guard` is
    /// pinned). `None` for another projection or a position past the end.
    fn one_width_page<'a>(
        &'a self,
        position: u64,
        projection: &Projection,
        guard: &'a crossbeam_epoch::Guard,
    ) -> Option<(u64, Range<u64>, Cells<'a>)> {
        let &[column] = projection.columns.as_slice() else {
            return None;
        };
        self.check(projection).ok()?;
        let (page, in_page) = self.page_of(position).ok()?;
        Some((page, in_page, self.cells_in(column, page, guard)?))
    }

    /// Row `position`'s value in `projection`'s one column, `read` from its cached page if that
    /// page's values have one width: found from the page table's slot alone, without a load of
    /// the page. `Ok(None)` for another projection or page, which [`Self::read_cached`] reads.
    /// Like it, never waits for I/O.
    pub fn read_cached_bytes<T>(
        &self,
        position: u64,
        projection: &Projection,
        read: impl FnOnce(&[u8]) -> T,
    ) -> Result<Option<T>> {
        // The errors `with_point_cells` leaves to its caller's fallback are reported here.
        self.check(projection)?;
        self.page_of(position)?;
        Ok(
            self.with_point_cells(position..position + 1, projection, |cells| {
                cells.value(position).map(read)
            }),
        )
    }

    /// The values of `column`'s cached `page` if they have one width, from the page table's
    /// word alone, without loading the page (valid while `guard` is pinned). `None` for a page
    /// not packed there: a read then goes through the page, whose load this path exists to skip.
    fn cells_in<'a>(
        &'a self,
        column: usize,
        page: u64,
        guard: &'a crossbeam_epoch::Guard,
    ) -> Option<Cells<'a>> {
        self.table.cells(self.table.slot(column, page)?, guard)
    }

    /// Fills `pages` with the cached pages of `projection` that hold row `position`; returns
    /// the page and the row's offset in it, or `None` if one of them is not cached.
    fn pages_at<'a>(
        &'a self,
        position: u64,
        projection: &Projection,
        guard: &'a crossbeam_epoch::Guard,
        pages: &mut SmallVec<[&'a Page; 8]>,
    ) -> Result<Option<(u64, usize)>> {
        let (page, rows) = self.page_of(position)?;
        pages.clear();
        for &column in &projection.columns {
            match self.page_in(column, page, guard) {
                Some(page) => pages.push(page),
                None => return Ok(None),
            }
        }
        Ok(Some((page, (position - rows.start) as usize)))
    }

    /// Row `position` (one row), reading and caching its page for each projected column that is
    /// not cached.
    pub async fn fetch(&self, position: u64, projection: &Projection) -> Result<RecordBatch> {
        self.check(projection)?;
        if let Some(row) = self.fetch_cached(position, projection)? {
            return Ok(row);
        }
        let (page, rows) = self.page_of(position)?;
        let offset = (position - rows.start) as usize;
        let arrays = self.page_arrays(page, rows, projection).await?;
        let row = arrays.iter().map(|array| array.slice(offset, 1)).collect();
        Ok(RecordBatch::try_new(Arc::clone(&projection.schema), row)?)
    }

    /// Rows at `positions` (in that order, repeats allowed) as one batch: each page involved is
    /// read (or found in the cache) once.
    pub async fn fetch_many(
        &self,
        positions: &[u64],
        projection: &Projection,
    ) -> Result<RecordBatch> {
        self.check(projection)?;
        let mut pages: Vec<(u64, Range<u64>)> = Vec::new();
        let mut slots = std::collections::HashMap::new();
        let mut picks = Vec::with_capacity(positions.len());
        for &position in positions {
            let (page, rows) = self.page_of(position)?;
            let offset = (position - rows.start) as usize;
            let slot = *slots.entry(page).or_insert_with(|| {
                pages.push((page, rows));
                pages.len() - 1
            });
            picks.push((slot, offset));
        }
        let mut per_page = Vec::with_capacity(pages.len());
        for (page, rows) in pages {
            per_page.push(self.page_arrays(page, rows, projection).await?);
        }
        let columns = (0..projection.columns.len())
            .map(|c| {
                let arrays: Vec<&dyn Array> =
                    per_page.iter().map(|arrays| arrays[c].as_ref()).collect();
                arrow_select::interleave::interleave(&arrays, &picks)
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(RecordBatch::try_new(
            Arc::clone(&projection.schema),
            columns,
        )?)
    }

    /// Rows `range` (positions, in order) as one batch. A range within
    /// [`CACHED_RANGE_PAGES`] pages, or one whose pages are all cached, is served from the page
    /// cache (reading and caching what is missing), as a short scan wants; a longer one is
    /// decoded in one pass without caching, so a long scan does not flush the cache.
    pub async fn fetch_range(
        &self,
        range: Range<u64>,
        projection: &Projection,
    ) -> Result<RecordBatch> {
        let columns = self.fetch_range_columns(range, projection).await?;
        Ok(RecordBatch::try_new(
            Arc::clone(&projection.schema),
            columns,
        )?)
    }

    /// [`Self::fetch_range`]'s columns, without the batch around them: a short scan that gathers
    /// rows from several segments takes the arrays and skips the batch's checks of them.
    pub async fn fetch_range_columns(
        &self,
        range: Range<u64>,
        projection: &Projection,
    ) -> Result<Vec<ArrayRef>> {
        self.check(projection)?;
        if range.start > range.end || range.end > self.meta.rows {
            return Err(Error::BadInput(format!(
                "rows {range:?} are not within {} ({} rows)",
                self.path, self.meta.rows
            )));
        }
        if range.is_empty() {
            return Ok(RecordBatch::new_empty(Arc::clone(&projection.schema))
                .columns()
                .to_vec());
        }
        let (first, first_rows) = self.page_of(range.start)?;
        let (last, _) = self.page_of(range.end - 1)?;
        let all_cached = || {
            (first..=last).all(|page| {
                projection
                    .columns
                    .iter()
                    .all(|&c| self.cached_page(c, page).is_some())
            })
        };
        if last - first >= CACHED_RANGE_PAGES && !all_cached() {
            let len = (range.end - range.start) as usize;
            let batches: Vec<RecordBatch> =
                self.stream(range, projection, len)?.try_collect().await?;
            return match batches.as_slice() {
                [one] => Ok(one.columns().to_vec()),
                _ => Ok(
                    arrow_select::concat::concat_batches(&projection.schema, &batches)?
                        .columns()
                        .to_vec(),
                ),
            };
        }
        if first == last {
            // One page, the common case of a short scan: its arrays sliced.
            let arrays = self
                .page_arrays(first, first_rows.clone(), projection)
                .await?;
            let (offset, len) = (
                (range.start - first_rows.start) as usize,
                (range.end - range.start) as usize,
            );
            return Ok(arrays.iter().map(|a| a.slice(offset, len)).collect());
        }
        let mut parts: Vec<Vec<ArrayRef>> = Vec::new();
        let mut at = range.start;
        while at < range.end {
            let (page, rows) = self.page_of(at)?;
            let until = rows.end.min(range.end);
            let arrays = self.page_arrays(page, rows.clone(), projection).await?;
            let (offset, len) = ((at - rows.start) as usize, (until - at) as usize);
            parts.push(arrays.iter().map(|a| a.slice(offset, len)).collect());
            at = until;
        }
        Ok((0..projection.columns.len())
            .map(|c| {
                let arrays: Vec<&dyn Array> = parts.iter().map(|p| p[c].as_ref()).collect();
                arrow_select::concat::concat(&arrays)
            })
            .collect::<std::result::Result<_, _>>()?)
    }

    /// Every projected column's rows of `page`: cached ones from the cache, the rest decoded
    /// together (one read) and cached.
    async fn page_arrays(
        &self,
        page: u64,
        rows: Range<u64>,
        projection: &Projection,
    ) -> Result<Vec<ArrayRef>> {
        let mut arrays: Vec<Option<ArrayRef>> = projection
            .columns
            .iter()
            .map(|&c| self.cached_page(c, page))
            .collect();
        let missing: Vec<usize> = projection
            .columns
            .iter()
            .zip(&arrays)
            .filter(|(_, a)| a.is_none())
            .map(|(&c, _)| c)
            .collect();
        if missing.is_empty() {
            self.cache.hit(&self.table, &projection.columns, page);
        } else {
            let decode = self.projection_of(missing.iter().copied())?;
            let len = (rows.end - rows.start) as usize;
            let batches: Vec<RecordBatch> = self.stream(rows, &decode, len)?.try_collect().await?;
            let batch = match batches.as_slice() {
                [one] => one.clone(),
                _ => arrow_select::concat::concat_batches(&decode.schema, &batches)?,
            };
            if batch.num_rows() != len {
                return Err(Error::Corrupt {
                    object: self.path.to_string(),
                    reason: format!(
                        "page {page} decoded to {} rows, not {len}",
                        batch.num_rows()
                    ),
                });
            }
            self.cache.missed();
            for (i, &column) in decode.columns.iter().enumerate() {
                let array = Arc::clone(batch.column(i));
                self.cache
                    .insert(&self.table, column, page, Arc::clone(&array));
                if let Some(at) = projection.columns.iter().position(|&c| c == column) {
                    arrays[at] = Some(array);
                }
            }
        }
        arrays
            .into_iter()
            .map(|array| {
                array.ok_or_else(|| {
                    Error::BadInput("page decode returned too few columns".to_owned())
                })
            })
            .collect()
    }

    /// Rows `range` (positions) as a stream of batches of at most `batch_rows` rows. Pages are
    /// read as the stream is polled; the cache is not used (a scan would flush it).
    pub fn scan(
        &self,
        range: Range<u64>,
        projection: &Projection,
        batch_rows: usize,
    ) -> Result<BoxStream<'static, Result<RecordBatch>>> {
        self.check(projection)?;
        if range.start > range.end || range.end > self.meta.rows {
            return Err(Error::BadInput(format!(
                "rows {range:?} are not within {} ({} rows)",
                self.path, self.meta.rows
            )));
        }
        self.stream(range, projection, batch_rows.max(1))
    }

    fn stream(
        &self,
        range: Range<u64>,
        projection: &Projection,
        batch_rows: usize,
    ) -> Result<BoxStream<'static, Result<RecordBatch>>> {
        if range.is_empty() {
            return Ok(futures::stream::empty().boxed());
        }
        // `row_group_starts` runs from 0 to `rows` (checked at open) and `range` is non-empty
        // within it, so both partition points are at least 1.
        let first = self
            .row_group_starts
            .partition_point(|&start| start <= range.start)
            - 1;
        let last = self
            .row_group_starts
            .partition_point(|&start| start < range.end)
            - 1;
        let (group_start, _) = self.group_bounds(first)?;
        let (_, group_end) = self.group_bounds(last)?;
        let selection = RowSelection::from(vec![
            RowSelector::skip((range.start - group_start) as usize),
            RowSelector::select((range.end - range.start) as usize),
            RowSelector::skip((group_end - range.end) as usize),
        ]);
        let reader = CheckedReader {
            store: Arc::clone(&self.store),
            path: self.path.clone(),
            checksums: Arc::clone(&self.checksums),
            metadata: Arc::clone(self.metadata.metadata()),
        };
        let object = self.path.to_string();
        let stream =
            ParquetRecordBatchStreamBuilder::new_with_metadata(reader, self.metadata.clone())
                .with_projection(projection.mask.clone())
                .with_row_groups((first..=last).collect())
                .with_row_selection(selection)
                .with_batch_size(batch_rows)
                .build()
                .map_err(|err| from_parquet(&object, err))?;
        Ok(stream
            .map_err(move |err| from_parquet(&object, err))
            .boxed())
    }

    /// Row-group statistics of the named column.
    pub fn column_stats(&self, name: &str) -> Result<ColumnStats> {
        let object = self.path.to_string();
        let groups = self.metadata.metadata().row_groups();
        let converter =
            StatisticsConverter::try_new(name, self.schema(), self.metadata.parquet_schema())
                .map_err(|err| Error::BadInput(format!("column {name:?} of {object}: {err}")))?;
        let parquet = |err| from_parquet(&object, err);
        Ok(ColumnStats {
            mins: converter.row_group_mins(groups).map_err(parquet)?,
            maxes: converter.row_group_maxes(groups).map_err(parquet)?,
            null_counts: converter.row_group_null_counts(groups).map_err(parquet)?,
            row_counts: self
                .row_group_starts
                .windows(2)
                .map(|w| w[1] - w[0])
                .collect(),
        })
    }
}

/// Checks that every column chunk and page the footer describes lies in the data region, in
/// order, without overlaps, and that pages start on increasing rows: the Parquet decoder trusts
/// these offsets (and can panic on inconsistent ones), and the checksums only protect bytes at
/// the offsets the footer names.
fn check_layout(metadata: &ParquetMetaData, data_end: u64) -> std::result::Result<(), String> {
    for (group, row_group) in metadata.row_groups().iter().enumerate() {
        let page_index = metadata.page_index_for_row_group(group);
        for (column, chunk) in row_group.columns().iter().enumerate() {
            let bad = |what: &str| format!("row group {group}, column {column}: {what}");
            let index = page_index
                .offset_index(column)
                .ok_or_else(|| bad("no offset index"))?;
            let (start, len) = chunk.byte_range();
            let end = start
                .checked_add(len)
                .filter(|&end| start >= 4 && end <= data_end);
            let end = end.ok_or_else(|| bad("column chunk outside the data region"))?;
            let mut at = start;
            let mut next_row = 0i64;
            for page in index.page_locations() {
                let offset = u64::try_from(page.offset).map_err(|_| bad("negative page offset"))?;
                let size = u64::try_from(page.compressed_page_size)
                    .ok()
                    .filter(|&s| s > 0);
                let size = size.ok_or_else(|| bad("page size not positive"))?;
                if offset != at {
                    return Err(bad("pages out of order, overlapping or apart"));
                }
                if page.first_row_index < next_row || page.first_row_index >= row_group.num_rows() {
                    return Err(bad("page rows out of order"));
                }
                next_row = page.first_row_index + 1;
                at = offset
                    .checked_add(size)
                    .ok_or_else(|| bad("page size overflows"))?;
            }
            let first_row_ok = index
                .page_locations()
                .first()
                .is_none_or(|p| p.first_row_index == 0);
            if at != end
                || !first_row_ok
                || (index.page_locations().is_empty() && row_group.num_rows() > 0)
            {
                return Err(bad("pages do not fill the column chunk"));
            }
        }
    }
    Ok(())
}

/// Turns a Parquet error back into the error it wraps where it wraps one of ours or a store's
/// (so a transient read error stays retryable), or into [`Error::Parquet`].
fn from_parquet(object: &str, err: ParquetError) -> Error {
    match err {
        ParquetError::External(source) => match source.downcast::<Error>() {
            Ok(ours) => *ours,
            Err(source) => match source.downcast::<object_store::Error>() {
                Ok(store) => Error::from_store("read", object, *store),
                Err(source) => Error::Parquet {
                    object: object.to_owned(),
                    source: ParquetError::External(source),
                },
            },
        },
        other => Error::Parquet {
            object: object.to_owned(),
            source: other,
        },
    }
}

/// Where the footer and page index are read from: the store (no seal; the footer is then
/// checked only by decoding and by matching the segment metadata), or the footer bytes already
/// fetched and checked against a seal.
enum Footer {
    Remote {
        store: Arc<dyn ObjectStore>,
        path: Path,
    },
    Local {
        start: u64,
        bytes: Bytes,
    },
}

impl MetadataFetch for Footer {
    fn fetch(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            match self {
                Footer::Remote { store, path } => store
                    .get_range(path, range)
                    .await
                    .map_err(|err| ParquetError::External(Box::new(err))),
                Footer::Local { start, bytes } => {
                    let within = range
                        .start
                        .checked_sub(*start)
                        .zip(range.end.checked_sub(*start));
                    match within {
                        Some((from, to)) if to <= bytes.len() as u64 && from <= to => {
                            Ok(bytes.slice(from as usize..to as usize))
                        }
                        _ => Err(ParquetError::General(format!(
                            "footer read at {range:?} outside the sealed footer"
                        ))),
                    }
                }
            }
        }
        .boxed()
    }
}

async fn load_footer(fetch: Footer, size: u64) -> parquet::errors::Result<ParquetMetaData> {
    ParquetMetaDataReader::new()
        .with_page_index_policy(PageIndexPolicy::Required)
        .load_and_finish(fetch, size)
        .await
}

/// Reads data-region bytes for the Parquet decoder, widened to checksum chunks and verified.
struct CheckedReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
    checksums: Arc<Checksums>,
    metadata: Arc<ParquetMetaData>,
}

impl CheckedReader {
    fn widen(&self, range: &Range<u64>) -> parquet::errors::Result<Range<u64>> {
        self.checksums.widen(range).ok_or_else(|| {
            external(Error::Corrupt {
                object: self.path.to_string(),
                reason: format!("a page at bytes {range:?} lies outside the data region"),
            })
        })
    }

    fn verify(
        &self,
        wide: &Range<u64>,
        bytes: &Bytes,
        want: &Range<u64>,
    ) -> parquet::errors::Result<Bytes> {
        if bytes.len() as u64 != wide.end - wide.start {
            return Err(external(Error::Corrupt {
                object: self.path.to_string(),
                reason: format!(
                    "read {} bytes at {wide:?}: the object is truncated",
                    bytes.len()
                ),
            }));
        }
        self.checksums.verify(wide.start, bytes).map_err(|at| {
            external(Error::Corrupt {
                object: self.path.to_string(),
                reason: format!("checksum mismatch in the chunk at byte {at}"),
            })
        })?;
        let from = (want.start - wide.start) as usize;
        Ok(bytes.slice(from..from + (want.end - want.start) as usize))
    }
}

fn external(err: Error) -> ParquetError {
    ParquetError::External(Box::new(err))
}

impl AsyncFileReader for CheckedReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            let wide = self.widen(&range)?;
            let bytes = self
                .store
                .get_range(&self.path, wide.clone())
                .await
                .map_err(|e| ParquetError::External(Box::new(e)))?;
            self.verify(&wide, &bytes, &range)
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            let wide = ranges
                .iter()
                .map(|range| self.widen(range))
                .collect::<parquet::errors::Result<Vec<_>>>()?;
            let fetched = self
                .store
                .get_ranges(&self.path, &wide)
                .await
                .map_err(|e| ParquetError::External(Box::new(e)))?;
            wide.iter()
                .zip(&fetched)
                .zip(&ranges)
                .map(|((wide, bytes), want)| self.verify(wide, bytes, want))
                .collect()
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        // The footer was read and checked at open.
        let metadata = Arc::clone(&self.metadata);
        async move { Ok(metadata) }.boxed()
    }
}
