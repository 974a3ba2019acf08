//! [`SegmentWriter`]: streams sorted Arrow batches into one Parquet segment object.

use std::sync::Arc;

use arrow_array::{Array, BooleanArray, RecordBatch, UInt64Array};
use arrow_schema::{Schema, SchemaRef};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use object_store::ObjectStore;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::{ArrowColumnWriter, ArrowRowGroupWriterFactory, compute_leaves};
use parquet::basic::{Compression, Encoding};
use parquet::errors::ParquetError;
use parquet::file::metadata::{KeyValue, SortingColumn};
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterVersion};
use parquet::file::writer::SerializedFileWriter;
use tokio::io::AsyncWriteExt;

use super::checksum::{self, ChunkCrcs};
use super::{
    CHECKSUMS_KEY, CRC_KEY, FORMAT_VERSION, INDEX_KEY, KEY_COLUMN, LSN_COLUMN, META_KEY,
    SegmentMeta, SegmentSeal, TOMBSTONE_COLUMN, metadata_crc, schema_fingerprint, segment_schema,
};
use crate::error::{Error, Result};

/// How a segment is laid out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentWriterOptions {
    /// Rows per data page: the unit of a cold point read and of the page cache. Smaller pages
    /// make point reads cheaper; larger ones make scans and the page index cheaper.
    pub rows_per_page: usize,
    /// Pages per row group (row-group statistics serve aggregates).
    pub pages_per_row_group: usize,
    /// Bytes covered by each CRC32C of the data region; a cold read fetches whole chunks.
    pub checksum_chunk_bytes: usize,
    /// Objects larger than this are uploaded in parts of this size (multipart).
    pub upload_part_bytes: usize,
}

impl Default for SegmentWriterOptions {
    fn default() -> Self {
        Self {
            rows_per_page: 4096,
            pages_per_row_group: 256,
            checksum_chunk_bytes: 16 * 1024,
            upload_part_bytes: 10 * 1024 * 1024,
        }
    }
}

/// What was written: the segment's metadata and its seal (for the manifest).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrittenSegment {
    /// The metadata stored in the footer.
    pub meta: SegmentMeta,
    /// Size and footer checksum, for [`SegmentReader::open`](super::SegmentReader::open).
    pub seal: SegmentSeal,
}

/// Writes one segment: feed it batches of the [`segment_schema`] in (key ascending, LSN
/// descending) order, then [`finish`](Self::finish) it with the engine's index bytes. Nothing
/// is visible under the path until `finish` succeeds.
pub struct SegmentWriter {
    path: Path,
    schema: SchemaRef,
    file: SerializedFileWriter<Spool>,
    row_groups: ArrowRowGroupWriterFactory,
    /// The column writers of the row group being filled, and its row count.
    group: Option<(Vec<ArrowColumnWriter>, usize)>,
    upload: BufWriter,
    options: SegmentWriterOptions,
    rows: u64,
    first: Option<(u64, u64)>,
    last: Option<(u64, u64)>,
    lsn_range: Option<(u64, u64)>,
    /// Set when a write or upload failed after its batch was accepted: the uploaded bytes are
    /// then incomplete, and the writer refuses everything but `abort`.
    poisoned: bool,
    /// Set once the upload's shutdown (the completing request) has started: the upload then
    /// aborts itself if it fails, and `BufWriter::abort` would panic.
    shut_down: bool,
}

impl std::fmt::Debug for SegmentWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentWriter")
            .field("path", &self.path)
            .field("rows", &self.rows)
            .finish()
    }
}

impl SegmentWriter {
    /// Starts a segment at `path` for rows of `value_schema` (the table's value columns).
    pub fn create(
        store: Arc<dyn ObjectStore>,
        path: Path,
        value_schema: &Schema,
        options: SegmentWriterOptions,
    ) -> Result<Self> {
        let group_rows = options
            .rows_per_page
            .checked_mul(options.pages_per_row_group);
        let fits_u32 = |n: usize| u32::try_from(n).is_ok();
        let valid = options.rows_per_page > 0
            && options.checksum_chunk_bytes > 0
            && group_rows.is_some_and(|rows| rows > 0 && i64::try_from(rows).is_ok())
            && fits_u32(options.rows_per_page)
            && fits_u32(options.checksum_chunk_bytes)
            && options.upload_part_bytes >= 5 * 1024 * 1024;
        if !valid {
            return Err(Error::BadInput(format!(
                "segment writer options {options:?}: counts must be positive and fit 32 bits, \
                 a row group's rows 63 bits, and parts be at least 5 MiB (S3's minimum)"
            )));
        }
        let schema = segment_schema(value_schema)?;
        let properties = WriterProperties::builder()
            .set_writer_version(WriterVersion::PARQUET_1_0)
            .set_compression(Compression::UNCOMPRESSED)
            .set_dictionary_enabled(false)
            .set_encoding(Encoding::PLAIN)
            // Pages end on row counts only (the writer hands over whole pages), so a page is
            // the same row range in every column.
            .set_data_page_row_count_limit(options.rows_per_page)
            .set_write_batch_size(options.rows_per_page)
            .set_data_page_size_limit(usize::MAX / 2)
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_sorting_columns(Some(vec![
                SortingColumn {
                    column_idx: 0,
                    descending: false,
                    nulls_first: false,
                },
                SortingColumn {
                    column_idx: 1,
                    descending: true,
                    nulls_first: false,
                },
            ]))
            .set_created_by(format!("omendb-storage {}", env!("CARGO_PKG_VERSION")))
            .build();
        // `ArrowWriter` sets up the Parquet schema and embeds the Arrow schema; its parts are
        // then driven directly, because only the file writer can flush the bytes it buffers,
        // and the checksums must cover the data region before the footer is written.
        let spool = Spool {
            bytes: Vec::new(),
            crcs: ChunkCrcs::new(options.checksum_chunk_bytes),
            footer: None,
        };
        let (file, row_groups) = ArrowWriter::try_new(spool, Arc::clone(&schema), Some(properties))
            .and_then(ArrowWriter::into_serialized_writer)
            .map_err(|source| Error::Parquet {
                object: path.to_string(),
                source,
            })?;
        let upload = BufWriter::with_capacity(store, path.clone(), options.upload_part_bytes);
        Ok(Self {
            path,
            schema,
            file,
            row_groups,
            group: None,
            upload,
            shut_down: false,
            options,
            rows: 0,
            first: None,
            last: None,
            lsn_range: None,
            poisoned: false,
        })
    }

    /// The full schema batches must have ([`segment_schema`] of the value schema).
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    fn parquet_error(&self, source: ParquetError) -> Error {
        Error::Parquet {
            object: self.path.to_string(),
            source,
        }
    }

    /// Appends a batch. A batch with the wrong schema, a null system value, or rows out of
    /// order is rejected whole with [`Error::BadInput`] and nothing of it is written.
    pub async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.refuse_if_poisoned()?;
        let (last, lsn_range) = self.check(batch)?;
        self.poisoned = true;
        self.append(batch).await?;
        self.poisoned = false;
        if batch.num_rows() > 0 {
            self.first = self.first.or(Some(first_row(batch)));
            self.last = Some(last);
            self.lsn_range = Some(match (self.lsn_range, lsn_range) {
                (Some((lo, hi)), (blo, bhi)) => (lo.min(blo), hi.max(bhi)),
                (None, range) => range,
            });
        }
        Ok(())
    }

    fn refuse_if_poisoned(&self) -> Result<()> {
        if self.poisoned {
            return Err(Error::Poisoned {
                object: self.path.to_string(),
            });
        }
        Ok(())
    }

    /// Encodes and uploads an accepted batch.
    async fn append(&mut self, batch: &RecordBatch) -> Result<()> {
        // Hand the column writers whole pages: a slice never crosses a page boundary, so pages
        // (which end on row counts) start at multiples of `rows_per_page` in every column.
        let page = self.options.rows_per_page;
        // Checked in `create`: the product fits.
        let group_rows = page.saturating_mul(self.options.pages_per_row_group);
        let mut offset = 0;
        while offset < batch.num_rows() {
            let room = page - (self.rows % page as u64) as usize;
            let len = room.min(batch.num_rows() - offset);
            self.encode(&batch.slice(offset, len))?;
            offset += len;
            self.rows += len as u64;
            if self
                .group
                .as_ref()
                .is_some_and(|(_, rows)| *rows == group_rows)
            {
                self.close_row_group().await?;
            }
        }
        Ok(())
    }

    /// Encodes a slice into the current row group's column writers.
    fn encode(&mut self, slice: &RecordBatch) -> Result<()> {
        if self.group.is_none() {
            let index = self.file.flushed_row_groups().len();
            let writers = self
                .row_groups
                .create_column_writers(index)
                .map_err(|e| self.parquet_error(e))?;
            self.group = Some((writers, 0));
        }
        let object = self.path.to_string();
        let parquet = |source| Error::Parquet {
            object: object.clone(),
            source,
        };
        if let Some((writers, rows)) = self.group.as_mut() {
            // Every supported type is a flat column: one writer and one leaf per field.
            for ((writer, field), column) in writers
                .iter_mut()
                .zip(self.schema.fields())
                .zip(slice.columns())
            {
                for leaf in compute_leaves(field, column).map_err(parquet)? {
                    writer.write(&leaf).map_err(parquet)?;
                }
            }
            *rows += slice.num_rows();
        }
        Ok(())
    }

    /// Closes the row group being filled (if any) and uploads every byte written so far.
    async fn close_row_group(&mut self) -> Result<()> {
        if let Some((writers, _)) = self.group.take() {
            let object = self.path.to_string();
            let parquet = |source| Error::Parquet {
                object: object.clone(),
                source,
            };
            let mut group = self.file.next_row_group().map_err(parquet)?;
            for writer in writers {
                writer
                    .close()
                    .and_then(|chunk| chunk.append_to_row_group(&mut group))
                    .map_err(parquet)?;
            }
            group.close().map_err(parquet)?;
        }
        self.upload_spooled().await
    }

    async fn upload_spooled(&mut self) -> Result<()> {
        self.file
            .flush()
            .map_err(|err| self.parquet_error(ParquetError::External(Box::new(err))))?;
        let bytes = std::mem::take(&mut self.file.inner_mut().bytes);
        self.upload
            .put(Bytes::from(bytes))
            .await
            .map_err(|source| Error::from_store("put segment", &self.path, source))
    }

    /// Validates `batch` against the schema and the order so far; returns its last (key, lsn)
    /// and its LSN range.
    fn check(&self, batch: &RecordBatch) -> Result<((u64, u64), (u64, u64))> {
        if batch.schema().fields() != self.schema.fields() {
            return Err(Error::BadInput(format!(
                "batch schema {:?} is not the segment schema {:?}",
                batch.schema(),
                self.schema
            )));
        }
        let keys = system_u64(batch, 0, KEY_COLUMN)?;
        let lsns = system_u64(batch, 1, LSN_COLUMN)?;
        let tombstones = batch.column(2).as_any().downcast_ref::<BooleanArray>();
        if tombstones.is_none_or(|t| t.null_count() > 0) {
            return Err(Error::BadInput(format!(
                "{TOMBSTONE_COLUMN} must be a non-null bool"
            )));
        }
        let (keys, lsns) = (keys.values(), lsns.values());
        let mut previous = self.last;
        let mut lsn_range = (u64::MAX, 0);
        for (row, (&key, &lsn)) in keys.iter().zip(lsns.iter()).enumerate() {
            if let Some((pkey, plsn)) = previous
                && !(key > pkey || (key == pkey && lsn < plsn))
            {
                return Err(Error::BadInput(format!(
                    "row {row} ({KEY_COLUMN} {key}, {LSN_COLUMN} {lsn}) is out of order after \
                     ({pkey}, {plsn}): keys must ascend, and LSNs of equal keys descend"
                )));
            }
            previous = Some((key, lsn));
            lsn_range = (lsn_range.0.min(lsn), lsn_range.1.max(lsn));
        }
        Ok((previous.unwrap_or((0, 0)), lsn_range))
    }

    /// Completes the segment: stores `index` (the engine's serialized learned index, opaque
    /// here) and the metadata in the footer and publishes the object.
    pub async fn finish(mut self, index: &[u8]) -> Result<WrittenSegment> {
        let finished = match self.refuse_if_poisoned() {
            Ok(()) => self.complete(index).await,
            Err(err) => Err(err),
        };
        if finished.is_err() && !self.shut_down {
            // Nothing may be published from a failed finish; a multipart upload is abandoned.
            let _ = self.upload.abort().await;
        }
        finished
    }

    async fn complete(&mut self, index: &[u8]) -> Result<WrittenSegment> {
        // Push every row group out, so that the checksums cover the whole data region.
        self.close_row_group().await?;
        let (data_end, crcs) = {
            let spool = self.file.inner_mut();
            (spool.crcs.len(), spool.crcs.checksums())
        };
        if data_end != self.file.bytes_written() as u64 {
            return Err(self.parquet_error(ParquetError::General(format!(
                "{data_end} bytes checksummed but {} written",
                self.file.bytes_written()
            ))));
        }
        let meta = SegmentMeta {
            format_version: FORMAT_VERSION,
            rows: self.rows,
            key_min: self.first.map(|(key, _)| key),
            key_max: self.last.map(|(key, _)| key),
            lsn_min: self.lsn_range.map(|(lo, _)| lo),
            lsn_max: self.lsn_range.map(|(_, hi)| hi),
            schema_fingerprint: schema_fingerprint(&self.schema),
            rows_per_page: u32::try_from(self.options.rows_per_page)
                .map_err(|_| Error::BadInput("rows_per_page exceeds u32".to_owned()))?,
            rows_per_row_group: self
                .options
                .rows_per_page
                .saturating_mul(self.options.pages_per_row_group)
                as u64,
            checksum_chunk_bytes: u32::try_from(self.options.checksum_chunk_bytes)
                .map_err(|_| Error::BadInput("checksum_chunk_bytes exceeds u32".to_owned()))?,
            data_end,
        };
        let json = serde_json::to_string(&meta)
            .map_err(|err| self.parquet_error(ParquetError::General(err.to_string())))?;
        let checksums = checksum::encode(&crcs);
        let index = STANDARD.encode(index);
        let crc = format!("{:08x}", metadata_crc(&json, &checksums, &index));
        for (key, value) in [
            (META_KEY, json),
            (CHECKSUMS_KEY, checksums),
            (INDEX_KEY, index),
            (CRC_KEY, crc),
        ] {
            self.file
                .append_key_value_metadata(KeyValue::new(key.to_owned(), value));
        }
        self.file.inner_mut().footer = Some(0);
        self.file.finish().map_err(|e| self.parquet_error(e))?;
        let size = self.file.bytes_written() as u64;
        let footer_crc32c = self.file.inner_mut().footer.unwrap_or(0);
        self.upload_spooled().await?;
        self.shut_down = true;
        // The upload ends here (a small segment is put whole, a multipart one completed): its
        // failure is the store's, of the store's kind (a passing one is `Retry`). Reported as
        // a Parquet error, an S3 blip at the end of a flush said `Corrupt` (found by a helper
        // agent's review).
        self.upload.shutdown().await.map_err(|err| {
            Error::from_store("finish segment upload", &self.path, store_error(err))
        })?;
        let seal = SegmentSeal {
            size,
            data_end,
            footer_crc32c,
        };
        Ok(WrittenSegment { meta, seal })
    }

    /// Abandons the segment: nothing is published and a multipart upload is aborted.
    pub async fn abort(mut self) -> Result<()> {
        self.upload
            .abort()
            .await
            .map_err(|source| Error::from_store("abort segment upload", &self.path, source))
    }
}

fn first_row(batch: &RecordBatch) -> (u64, u64) {
    let value = |column: usize| {
        batch
            .column(column)
            .as_any()
            .downcast_ref::<UInt64Array>()
            .map_or(0, |a| a.value(0))
    };
    (value(0), value(1))
}

fn system_u64<'a>(batch: &'a RecordBatch, column: usize, name: &str) -> Result<&'a UInt64Array> {
    batch
        .column(column)
        .as_any()
        .downcast_ref::<UInt64Array>()
        .filter(|array| array.null_count() == 0)
        .ok_or_else(|| Error::BadInput(format!("{name} must be a non-null u64")))
}

/// Where the file writer's bytes collect between uploads; checksums every byte on the way:
/// in chunks for the data region, and as one CRC for the footer once `footer` is set.
struct Spool {
    bytes: Vec<u8>,
    crcs: ChunkCrcs,
    footer: Option<u32>,
}

impl std::io::Write for Spool {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.crcs.update(buf);
        if let Some(crc) = self.footer.as_mut() {
            *crc = crc32c::crc32c_append(*crc, buf);
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The store's error inside an I/O error of the buffered upload (which carries it whole), or
/// the I/O error as a generic store error: the store's kind says whether to retry.
fn store_error(err: std::io::Error) -> object_store::Error {
    let kind = err.kind();
    match err.into_inner() {
        Some(inner) => match inner.downcast::<object_store::Error>() {
            Ok(source) => *source,
            Err(other) => object_store::Error::Generic {
                store: "segment upload",
                source: other,
            },
        },
        None => object_store::Error::Generic {
            store: "segment upload",
            source: Box::new(std::io::Error::from(kind)),
        },
    }
}
