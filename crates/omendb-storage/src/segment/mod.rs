//! Segments: immutable Parquet objects of rows sorted by key (format: `docs/file-formats.md`).
//!
//! A segment holds the columns `_key` (u64), `_lsn` (u64), `_tombstone` (bool), then the table's
//! value columns. Rows are ordered by `_key` ascending and, for equal keys, by `_lsn` descending
//! (newest version first), so the first row at a key is its newest version. Pages hold a fixed
//! number of rows (`rows_per_page`), and a row group a whole number of pages, so "the rows of
//! page `p`" is the same row range in every column: the unit of cold reads and of the cache.
//!
//! Parquet has no checksum this crate's writer can fill, so the data region is covered by
//! CRC32C checksums of fixed-size chunks stored in the footer's key-value metadata; every byte
//! a reader decodes from the data region is verified first.

mod cache;
mod checksum;
mod page;
mod page_table;
mod reader;
mod shared_buffers;
mod writer;

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

pub use cache::{CacheStats, PageCache};
pub use page::{Cells, Page};
pub use reader::{
    CACHED_RANGE_PAGES, CachePin, ColumnStats, PageCells, PointCells, Projection, SegmentReader,
};
pub use writer::{SegmentWriter, SegmentWriterOptions, WrittenSegment};

use crate::error::{Error, Result};

/// The key column: the table key mapped to `u64` (order-preserving).
pub const KEY_COLUMN: &str = "_key";
/// The LSN of the write that produced the row.
pub const LSN_COLUMN: &str = "_lsn";
/// Whether the row is a deletion marker.
pub const TOMBSTONE_COLUMN: &str = "_tombstone";
/// The number of leading system columns before the table's value columns.
pub const SYSTEM_COLUMNS: usize = 3;

/// The segment format version this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;

/// Parquet key-value metadata keys.
pub(crate) const META_KEY: &str = "omendb.segment";
pub(crate) const CHECKSUMS_KEY: &str = "omendb.checksums";
pub(crate) const INDEX_KEY: &str = "omendb.index";
pub(crate) const CRC_KEY: &str = "omendb.crc32c";

/// CRC32C over the three metadata values, stored (hex) under [`CRC_KEY`]: the data checksums
/// cannot cover the footer they are written in.
pub(crate) fn metadata_crc(meta: &str, checksums: &str, index: &str) -> u32 {
    [meta, checksums, index]
        .iter()
        .fold(0, |crc, value| crc32c::crc32c_append(crc, value.as_bytes()))
}

/// What the manifest records about a finished segment so that a reader can check the whole
/// object, footer included: its size, where its data region ends, and a CRC32C of the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentSeal {
    /// The object's size in bytes.
    pub size: u64,
    /// Where the data region ends and the page index and footer begin.
    pub data_end: u64,
    /// CRC32C of the bytes from `data_end` to the end.
    pub footer_crc32c: u32,
}

/// What a segment says about itself, stored as JSON in the Parquet footer under
/// `omendb.segment`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentMeta {
    /// The segment format version ([`FORMAT_VERSION`]).
    pub format_version: u32,
    /// Rows in the segment.
    pub rows: u64,
    /// The smallest key, `None` for an empty segment.
    pub key_min: Option<u64>,
    /// The largest key.
    pub key_max: Option<u64>,
    /// The smallest LSN of any row.
    pub lsn_min: Option<u64>,
    /// The largest LSN of any row.
    pub lsn_max: Option<u64>,
    /// [`schema_fingerprint`] of the segment's full schema.
    pub schema_fingerprint: u32,
    /// Rows per data page (the last page of a row group may hold fewer).
    pub rows_per_page: u32,
    /// Rows per row group (a multiple of `rows_per_page`; the last row group may hold fewer).
    pub rows_per_row_group: u64,
    /// Bytes covered by each CRC32C of the data region.
    pub checksum_chunk_bytes: u32,
    /// Where the data region ends (the page indexes and the footer follow).
    pub data_end: u64,
}

/// The full schema of a segment: the system columns, then `value_schema`'s fields.
pub fn segment_schema(value_schema: &Schema) -> Result<SchemaRef> {
    let mut fields = vec![
        Field::new(KEY_COLUMN, DataType::UInt64, false),
        Field::new(LSN_COLUMN, DataType::UInt64, false),
        Field::new(TOMBSTONE_COLUMN, DataType::Boolean, false),
    ];
    for field in value_schema.fields() {
        if field.name().starts_with('_') {
            return Err(Error::BadInput(format!(
                "value column {:?}: names starting with '_' are reserved for system columns",
                field.name()
            )));
        }
        if !supported(field.data_type()) {
            return Err(Error::BadInput(format!(
                "value column {:?} has type {}, which segments do not store",
                field.name(),
                field.data_type()
            )));
        }
        fields.push(field.as_ref().clone());
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// The value types a segment stores (ARCHITECTURE.md: integers, floats, bool, utf8, binary,
/// timestamps).
fn supported(data_type: &DataType) -> bool {
    use DataType::*;
    matches!(
        data_type,
        Boolean
            | Int8
            | Int16
            | Int32
            | Int64
            | UInt8
            | UInt16
            | UInt32
            | UInt64
            | Float32
            | Float64
            | Utf8
            | LargeUtf8
            | Binary
            | LargeBinary
            | Timestamp(_, _)
            | Date32
            | Date64
    )
}

/// A fingerprint of a schema's column names, types and nullability (CRC32C of a canonical
/// text), to detect a segment whose schema is not the one its table expects.
pub fn schema_fingerprint(schema: &Schema) -> u32 {
    let canonical: String = schema
        .fields()
        .iter()
        .map(|f| format!("{}:{}:{};", f.name(), f.data_type(), f.is_nullable()))
        .collect();
    crc32c::crc32c(canonical.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_names_and_unsupported_types_are_rejected() {
        let reserved = Schema::new(vec![Field::new("_lsn", DataType::Int64, true)]);
        assert!(matches!(segment_schema(&reserved), Err(Error::BadInput(_))));
        let nested = Schema::new(vec![Field::new(
            "list",
            DataType::List(Arc::new(Field::new("item", DataType::Int64, true))),
            true,
        )]);
        assert!(matches!(segment_schema(&nested), Err(Error::BadInput(_))));
    }

    #[test]
    fn fingerprint_changes_with_names_types_and_nullability() {
        let base = Schema::new(vec![Field::new("v", DataType::Int64, true)]);
        let fingerprints = [
            schema_fingerprint(&base),
            schema_fingerprint(&Schema::new(vec![Field::new("w", DataType::Int64, true)])),
            schema_fingerprint(&Schema::new(vec![Field::new("v", DataType::Int32, true)])),
            schema_fingerprint(&Schema::new(vec![Field::new("v", DataType::Int64, false)])),
        ];
        for (i, a) in fingerprints.iter().enumerate() {
            for b in &fingerprints[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
