//! Segments written and read back: every supported Arrow type with nulls, empty and single-row
//! segments, a 1M-row segment, rejected input, and damaged objects.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use arrow_array::builder::*;
use arrow_array::{ArrayRef, BooleanArray, Float64Array, RecordBatch, UInt64Array};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use bytes::Bytes;
use common::{Faults, Kind, Moto};
use futures::TryStreamExt;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use omendb_storage::segment::{
    CachePin, PageCache, SegmentReader, SegmentSeal, SegmentWriter, SegmentWriterOptions,
    WrittenSegment, segment_schema,
};
use omendb_storage::{Error, ErrorKind};

fn all_types_schema() -> Schema {
    Schema::new(vec![
        Field::new("b", DataType::Boolean, true),
        Field::new("i8", DataType::Int8, true),
        Field::new("i16", DataType::Int16, true),
        Field::new("i32", DataType::Int32, true),
        Field::new("i64", DataType::Int64, false),
        Field::new("u8", DataType::UInt8, true),
        Field::new("u16", DataType::UInt16, true),
        Field::new("u32", DataType::UInt32, true),
        Field::new("u64", DataType::UInt64, true),
        Field::new("f32", DataType::Float32, true),
        Field::new("f64", DataType::Float64, true),
        Field::new("s", DataType::Utf8, true),
        Field::new("ls", DataType::LargeUtf8, true),
        Field::new("bin", DataType::Binary, true),
        Field::new("lbin", DataType::LargeBinary, true),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new("tsn", DataType::Timestamp(TimeUnit::Nanosecond, None), true),
        Field::new("d32", DataType::Date32, true),
        Field::new("d64", DataType::Date64, true),
    ])
}

/// Rows `start..start+len` of the all-types table: key `3*i`, LSN `i+1`, a tombstone every
/// 11th row, nulls every 7th row in nullable columns.
fn all_types_batch(start: u64, len: usize) -> RecordBatch {
    let schema = segment_schema(&all_types_schema()).unwrap();
    let rows: Vec<u64> = (start..start + len as u64).collect();
    let null = |i: u64| i % 7 == 3;
    macro_rules! column {
        ($builder:ty, $value:expr) => {{
            let mut b = <$builder>::new();
            for &i in &rows {
                if null(i) {
                    b.append_null()
                } else {
                    b.append_value($value(i))
                }
            }
            Arc::new(b.finish()) as ArrayRef
        }};
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|i| i * 3))),
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|i| i + 1))),
        Arc::new(BooleanArray::from_iter(
            rows.iter().map(|i| Some(i % 11 == 0)),
        )),
        column!(BooleanBuilder, |i: u64| i.is_multiple_of(2)),
        column!(Int8Builder, |i: u64| i as i8),
        column!(Int16Builder, |i: u64| -(i as i16)),
        column!(Int32Builder, |i: u64| i as i32 * 1000),
        Arc::new(arrow_array::Int64Array::from_iter_values(
            rows.iter().map(|&i| i as i64 - 5_000),
        )),
        column!(UInt8Builder, |i: u64| i as u8),
        column!(UInt16Builder, |i: u64| i as u16),
        column!(UInt32Builder, |i: u64| i as u32),
        column!(UInt64Builder, |i: u64| u64::MAX - i),
        column!(Float32Builder, |i: u64| i as f32 / 3.0),
        column!(Float64Builder, |i: u64| i as f64 * 1.5),
        column!(StringBuilder, |i: u64| format!("row-{i}")),
        column!(LargeStringBuilder, |i: u64| "x".repeat((i % 50) as usize)),
        column!(BinaryBuilder, |i: u64| i.to_le_bytes()),
        column!(LargeBinaryBuilder, |i: u64| vec![i as u8; (i % 9) as usize]),
        Arc::new({
            let mut b = TimestampMicrosecondBuilder::new().with_timezone("UTC");
            for &i in &rows {
                if null(i) {
                    b.append_null()
                } else {
                    b.append_value(1_700_000_000_000_000 + i as i64)
                }
            }
            b.finish()
        }),
        column!(TimestampNanosecondBuilder, |i: u64| i as i64 * 1_000),
        column!(Date32Builder, |i: u64| (i % 20_000) as i32),
        column!(Date64Builder, |i: u64| i as i64 * 86_400_000),
    ];
    RecordBatch::try_new(schema, columns).unwrap()
}

fn small_pages() -> SegmentWriterOptions {
    SegmentWriterOptions {
        rows_per_page: 100,
        pages_per_row_group: 4,
        checksum_chunk_bytes: 512,
        ..SegmentWriterOptions::default()
    }
}

async fn write(
    store: &Arc<dyn ObjectStore>,
    path: &str,
    value_schema: &Schema,
    batches: &[RecordBatch],
    options: SegmentWriterOptions,
) -> WrittenSegment {
    let mut writer =
        SegmentWriter::create(Arc::clone(store), Path::from(path), value_schema, options).unwrap();
    for batch in batches {
        writer.write(batch).await.unwrap();
    }
    writer.finish(b"opaque index bytes").await.unwrap()
}

fn cache() -> Arc<PageCache> {
    Arc::new(PageCache::new(64 << 20))
}

#[tokio::test]
async fn every_supported_type_round_trips_with_nulls() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let rows = 2_345;
    // Odd batch sizes, so pages are assembled from pieces of several batches.
    let mut batches = Vec::new();
    let mut start = 0;
    for len in [1usize, 99, 777, 1000, 468] {
        batches.push(all_types_batch(start, len));
        start += len as u64;
    }
    assert_eq!(start, rows);
    let written = write(
        &store,
        "seg/all",
        &all_types_schema(),
        &batches,
        small_pages(),
    )
    .await;

    let reader = SegmentReader::open(
        Arc::clone(&store),
        Path::from("seg/all"),
        Some(&written.seal),
        cache(),
    )
    .await
    .unwrap();
    let expected = all_types_batch(0, rows as usize);
    assert_eq!(reader.size(), written.seal.size);
    assert_eq!(reader.meta(), &written.meta);
    assert_eq!(reader.rows(), rows);
    assert_eq!(
        reader.index_bytes(),
        &Bytes::from_static(b"opaque index bytes")
    );
    let meta = reader.meta();
    assert_eq!(
        (meta.key_min, meta.key_max),
        (Some(0), Some((rows - 1) * 3))
    );
    assert_eq!((meta.lsn_min, meta.lsn_max), (Some(1), Some(rows)));
    let keys: Vec<u64> = (0..rows).map(|i| i * 3).collect();
    assert_eq!(reader.keys(), keys.as_slice());

    // A full scan returns exactly what was written.
    let all = reader.projection_all();
    let scanned: Vec<RecordBatch> = reader
        .scan(0..rows, &all, 1000)
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let scanned = arrow_select::concat::concat_batches(all.schema(), &scanned).unwrap();
    assert_eq!(scanned, expected);

    // A scan of an inner range with a projection.
    let some = reader.projection(&["s", "_key", "f64"]).unwrap();
    let part: Vec<RecordBatch> = reader
        .scan(450..1234, &some, 64)
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let part = arrow_select::concat::concat_batches(some.schema(), &part).unwrap();
    let want = expected.slice(450, 784).project(&[0, 13, 14]).unwrap();
    assert_eq!(part.columns(), want.columns());
    assert_eq!(
        part.schema().field(0).name(),
        "_key",
        "columns come in schema order"
    );

    // Fetching single rows, cold then cached.
    for position in [0u64, 1, 99, 100, 399, 400, 401, 1500, rows - 1] {
        assert!(reader.fetch_cached(position, &all).unwrap().is_none() || position != 0);
        let row = reader.fetch(position, &all).await.unwrap();
        assert_eq!(row, expected.slice(position as usize, 1), "row {position}");
        let cached = reader
            .fetch_cached(position, &all)
            .unwrap()
            .expect("page now cached");
        assert_eq!(cached, row);
        let in_place = reader
            .read_cached(position, &all, |pages, offset| {
                pages
                    .iter()
                    .map(|page| page.array().slice(offset, 1))
                    .collect::<Vec<_>>()
            })
            .unwrap()
            .expect("page now cached");
        assert_eq!(in_place.as_slice(), row.columns());
    }

    // Several rows at once, in the order asked, repeats included.
    let picks = [2000u64, 5, 2000, 399, 400, 0];
    let many = reader.fetch_many(&picks, &all).await.unwrap();
    for (i, &position) in picks.iter().enumerate() {
        assert_eq!(many.slice(i, 1), expected.slice(position as usize, 1));
    }

    // Many rows from cached pages in one call: answered in the order asked, repeats included;
    // rows on pages not cached yet are handed back by index, untouched. Rows run far enough
    // apart that the read-ahead crosses pages and both ends of the list.
    let fresh_cache = cache();
    let fresh = SegmentReader::open(
        Arc::clone(&store),
        Path::from("seg/all"),
        Some(&written.seal),
        Arc::clone(&fresh_cache),
    )
    .await
    .unwrap();
    for position in [0u64, 150, 1500, rows - 1] {
        fresh.fetch(position, &all).await.unwrap();
    }
    let cached_pages = |p: u64| {
        [0u64, 150, 1500, rows - 1]
            .iter()
            .any(|&c| c / 100 == p / 100)
    };
    let picks: Vec<u64> = [1500u64, 5, 399, 150, 1501, 0, 1500, 2100, rows - 1, 99, 160]
        .into_iter()
        .cycle()
        .take(60)
        .collect();
    // Asking for cells ahead of a read takes any range, reads nothing and counts nothing.
    let before = fresh_cache.stats();
    for cells in [
        0..0,
        0..rows + 10,
        150..170,
        1490..1610,
        rows - 1..u64::MAX,
        std::ops::Range { start: 9, end: 3 }, // reversed
    ] {
        fresh.prefetch_cells(cells, &all);
    }
    assert_eq!(fresh_cache.stats(), before);
    let mut got = Vec::new();
    let missing = fresh
        .read_cached_many(&picks, &all, |i, pages, offset| {
            let row: Vec<ArrayRef> = pages
                .iter()
                .map(|page| page.array().slice(offset, 1))
                .collect();
            got.push((i, row));
        })
        .unwrap();
    let want_missing: Vec<usize> = (0..picks.len())
        .filter(|&i| !cached_pages(picks[i]))
        .collect();
    assert_eq!(missing, want_missing);
    assert_eq!(got.len() + missing.len(), picks.len());
    for (i, row) in &got {
        assert!(cached_pages(picks[*i]));
        let want = expected.slice(picks[*i] as usize, 1);
        assert_eq!(row.as_slice(), want.columns(), "pick {i}");
    }
    assert!(
        got.windows(2).all(|w| w[0].0 < w[1].0),
        "in the order asked"
    );
    assert_eq!(
        fresh_cache.stats().hits - before.hits,
        got.len() as u64,
        "one hit per row read"
    );
    assert!(
        fresh
            .read_cached_many(&[], &all, |_, _, _| panic!("no rows"))
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        fresh
            .read_cached_many(&[0, rows], &all, |_, _, _| panic!("refused before any row"))
            .unwrap_err()
            .kind(),
        ErrorKind::BadInput,
        "a position past the end"
    );

    // Position ranges: within a page, across pages and row groups (through the cache), long
    // ones (decoded uncached, then again once every page is cached), and the empty range.
    for range in [
        0..1,
        5..60,
        95..105,
        380..420,
        150..150,
        250..1750,
        0..rows,
        1999..rows,
    ] {
        let got = reader.fetch_range(range.clone(), &some).await.unwrap();
        let want = expected
            .slice(range.start as usize, (range.end - range.start) as usize)
            .project(&[0, 13, 14])
            .unwrap();
        assert_eq!(got.columns(), want.columns(), "rows {range:?}");
        assert_eq!(got.schema(), *some.schema());
    }
    for _ in 0..2 {
        // The second time every page of the range is cached.
        let got = reader.fetch_range(0..rows, &all).await.unwrap();
        assert_eq!(got, expected);
        for page in (0..rows).step_by(100) {
            reader.fetch(page, &all).await.unwrap();
        }
    }
    for bad in [0..rows + 1, std::ops::Range { start: 10, end: 5 }] {
        let err = reader.fetch_range(bad.clone(), &all).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BadInput, "rows {bad:?}: {err}");
    }

    // A projection made for a segment of another schema is refused.
    let other = {
        let value_schema = Schema::new(vec![Field::new("v", DataType::Float64, false)]);
        let mut writer = SegmentWriter::create(
            Arc::clone(&store),
            Path::from("seg/other"),
            &value_schema,
            small_pages(),
        )
        .unwrap();
        writer.write(&key_value_batch(&[1], &[1])).await.unwrap();
        writer.finish(b"").await.unwrap();
        SegmentReader::open(Arc::clone(&store), Path::from("seg/other"), None, cache())
            .await
            .unwrap()
    };
    let foreign = other.projection_all();
    assert_eq!(
        reader.fetch(0, &foreign).await.unwrap_err().kind(),
        ErrorKind::BadInput
    );
    assert_eq!(
        reader.scan(0..1, &foreign, 10).err().unwrap().kind(),
        ErrorKind::BadInput
    );
    assert_eq!(
        reader
            .read_cached(0, &foreign, |_, _| ())
            .unwrap_err()
            .kind(),
        ErrorKind::BadInput
    );
    assert_eq!(
        reader
            .read_cached_many(&[0], &foreign, |_, _, _| ())
            .unwrap_err()
            .kind(),
        ErrorKind::BadInput
    );
    reader.prefetch_cells(0..1, &foreign); // another schema's projection: nothing to ask for

    // Positions past the end are bad input.
    for err in [
        reader.fetch(rows, &all).await.unwrap_err(),
        reader.scan(0..rows + 1, &all, 10).err().unwrap(),
    ] {
        assert_eq!(err.kind(), ErrorKind::BadInput, "{err}");
    }
    assert!(matches!(
        reader.projection(&["nope"]),
        Err(Error::BadInput(_))
    ));

    // Row-group statistics.
    let stats = reader.column_stats("i64").unwrap();
    assert_eq!(stats.row_counts, vec![400, 400, 400, 400, 400, 345]);
    let mins = stats
        .mins
        .as_any()
        .downcast_ref::<arrow_array::Int64Array>()
        .unwrap();
    assert_eq!(mins.value(1), 400 - 5_000);
}

#[tokio::test]
async fn empty_and_single_row_segments_round_trip() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    write(&store, "seg/empty", &all_types_schema(), &[], small_pages()).await;
    let empty = SegmentReader::open(Arc::clone(&store), Path::from("seg/empty"), None, cache())
        .await
        .unwrap();
    assert_eq!(empty.rows(), 0);
    assert!(empty.keys().is_empty());
    assert_eq!(empty.meta().key_min, None);
    let all = empty.projection_all();
    let scanned: Vec<RecordBatch> = empty
        .scan(0..0, &all, 10)
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert!(scanned.is_empty());
    assert_eq!(
        empty.fetch(0, &all).await.unwrap_err().kind(),
        ErrorKind::BadInput
    );

    write(
        &store,
        "seg/one",
        &all_types_schema(),
        &[all_types_batch(7, 1)],
        small_pages(),
    )
    .await;
    let one = SegmentReader::open(Arc::clone(&store), Path::from("seg/one"), None, cache())
        .await
        .unwrap();
    assert_eq!(one.keys(), &[21]);
    assert_eq!(
        one.fetch(0, &one.projection_all()).await.unwrap(),
        all_types_batch(7, 1)
    );
}

fn key_value_batch(keys: &[u64], lsns: &[u64]) -> RecordBatch {
    let schema = segment_schema(&Schema::new(vec![Field::new(
        "v",
        DataType::Float64,
        false,
    )]))
    .unwrap();
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(UInt64Array::from(keys.to_vec())),
            Arc::new(UInt64Array::from(lsns.to_vec())),
            Arc::new(BooleanArray::from(vec![false; keys.len()])),
            Arc::new(Float64Array::from_iter_values(
                keys.iter().map(|&k| k as f64),
            )),
        ],
    )
    .unwrap()
}

#[tokio::test]
async fn out_of_order_or_mismatched_batches_are_rejected_and_change_nothing() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let value_schema = Schema::new(vec![Field::new("v", DataType::Float64, false)]);
    let mut writer = SegmentWriter::create(
        Arc::clone(&store),
        Path::from("seg/kv"),
        &value_schema,
        small_pages(),
    )
    .unwrap();
    writer
        .write(&key_value_batch(&[1, 2, 2, 5], &[9, 8, 3, 4]))
        .await
        .unwrap();
    for (keys, lsns) in [
        (vec![6, 4], vec![1, 1]), // keys descend
        (vec![5], vec![5]),       // same key as the last row with a newer LSN
        (vec![5], vec![4]),       // same (key, LSN) as the last row
        (vec![7, 7], vec![1, 2]), // equal keys with ascending LSNs
    ] {
        let err = writer
            .write(&key_value_batch(&keys, &lsns))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BadInput, "{keys:?} {lsns:?}: {err}");
    }
    let other = RecordBatch::try_new(
        segment_schema(&Schema::new(vec![Field::new(
            "w",
            DataType::Float64,
            false,
        )]))
        .unwrap(),
        key_value_batch(&[10], &[1]).columns().to_vec(),
    )
    .unwrap();
    assert_eq!(
        writer.write(&other).await.unwrap_err().kind(),
        ErrorKind::BadInput
    );
    assert_eq!(writer.rows(), 4, "rejected batches wrote nothing");
    writer
        .write(&key_value_batch(&[5, 6], &[2, 1]))
        .await
        .unwrap();
    writer.finish(b"").await.unwrap();
    let reader = SegmentReader::open(Arc::clone(&store), Path::from("seg/kv"), None, cache())
        .await
        .unwrap();
    assert_eq!(reader.keys(), &[1, 2, 2, 5, 5, 6]);

    // Reserved names and bad options are refused up front.
    let reserved = Schema::new(vec![Field::new("_key", DataType::Int64, true)]);
    assert!(
        SegmentWriter::create(
            Arc::clone(&store),
            Path::from("x"),
            &reserved,
            small_pages()
        )
        .is_err()
    );
    let zero = SegmentWriterOptions {
        rows_per_page: 0,
        ..SegmentWriterOptions::default()
    };
    assert!(
        SegmentWriter::create(Arc::clone(&store), Path::from("x"), &value_schema, zero).is_err()
    );
}

#[tokio::test]
async fn an_aborted_or_unfinished_segment_is_never_visible() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let value_schema = Schema::new(vec![Field::new("v", DataType::Float64, false)]);
    let mut writer = SegmentWriter::create(
        Arc::clone(&store),
        Path::from("seg/gone"),
        &value_schema,
        small_pages(),
    )
    .unwrap();
    writer
        .write(&key_value_batch(&[1, 2, 3], &[1, 1, 1]))
        .await
        .unwrap();
    writer.abort().await.unwrap();
    assert!(matches!(
        store.head(&Path::from("seg/gone")).await,
        Err(object_store::Error::NotFound { .. })
    ));
}

#[tokio::test]
async fn a_million_row_segment_round_trips() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let value_schema = Schema::new(vec![Field::new("v", DataType::Float64, false)]);
    let rows = 1_000_000u64;
    let mut writer = SegmentWriter::create(
        Arc::clone(&store),
        Path::from("seg/1m"),
        &value_schema,
        SegmentWriterOptions::default(),
    )
    .unwrap();
    let keys: Vec<u64> = (0..rows).map(|i| i * 7 + (i % 3)).collect();
    for chunk in keys.chunks(65_536) {
        writer
            .write(&key_value_batch(chunk, &vec![1; chunk.len()]))
            .await
            .unwrap();
    }
    let written = writer.finish(&[7u8; 1000]).await.unwrap();
    assert_eq!(written.meta.rows, rows);
    let reader = SegmentReader::open(Arc::clone(&store), Path::from("seg/1m"), None, cache())
        .await
        .unwrap();
    assert_eq!(reader.keys(), keys.as_slice());
    let v = reader.projection(&["v"]).unwrap();
    let mut sum = 0.0;
    let mut count = 0;
    let mut scan = reader.scan(0..rows, &v, 100_000).unwrap();
    while let Some(batch) = scan.try_next().await.unwrap() {
        let values = batch
            .column(0)
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap();
        sum += values.values().iter().sum::<f64>();
        count += batch.num_rows();
    }
    assert_eq!(count as u64, rows);
    assert_eq!(sum, keys.iter().map(|&k| k as f64).sum::<f64>());
    for position in [0u64, 4095, 4096, 262_143, 262_144, 999_999] {
        let row = reader
            .fetch(position, &reader.projection_all())
            .await
            .unwrap();
        let key = row
            .column(0)
            .as_any()
            .downcast_ref::<UInt64Array>()
            .unwrap()
            .value(0);
        assert_eq!(key, keys[position as usize]);
    }
}

/// Opens the damaged object and reads all of it; every read must either fail with a
/// corruption error naming the object, or return exactly the original rows.
async fn damaged_reads_fail_or_match(
    bytes: Vec<u8>,
    seal: Option<&SegmentSeal>,
    expected: &RecordBatch,
) -> bool {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let path = Path::from("seg/damaged");
    store.put(&path, Bytes::from(bytes).into()).await.unwrap();
    let check = |err: Error| {
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
        assert!(
            err.to_string().contains("seg/damaged"),
            "the error names the object: {err}"
        );
        true
    };
    let reader = match SegmentReader::open(Arc::clone(&store), path, seal, cache()).await {
        Ok(reader) => reader,
        Err(err) => return check(err),
    };
    let all = reader.projection_all();
    let scanned: Result<Vec<RecordBatch>, Error> = match reader.scan(0..reader.rows(), &all, 500) {
        Ok(stream) => stream.try_collect().await,
        Err(err) => Err(err),
    };
    match scanned {
        Err(err) => check(err),
        Ok(batches) => {
            let scanned = arrow_select::concat::concat_batches(all.schema(), &batches).unwrap();
            assert_eq!(
                &scanned, expected,
                "a damaged segment returned different rows"
            );
            false
        }
    }
}

#[tokio::test]
async fn truncated_and_bit_flipped_segments_are_rejected() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let expected = all_types_batch(0, 700);
    let written = write(
        &store,
        "seg/good",
        &all_types_schema(),
        std::slice::from_ref(&expected),
        small_pages(),
    )
    .await;
    let good = store
        .get(&Path::from("seg/good"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec();

    let seal = written.seal;
    for len in [
        0,
        1,
        4,
        8,
        good.len() / 2,
        good.len() - 9,
        good.len() - 8,
        good.len() - 1,
    ] {
        for seal in [None, Some(&seal)] {
            let damaged = good[..len].to_vec();
            assert!(
                damaged_reads_fail_or_match(damaged, seal, &expected).await,
                "truncated to {len}"
            );
        }
    }
    // A flip every 13 bytes of the data region, and in every byte of the footer. In the data
    // region every flip is caught by the chunk checksums. Without a seal, a flip in a footer
    // byte no read depends on (statistics, the writer's name) can go unnoticed, and the reads
    // must then return exactly the original rows; with the manifest's seal, every flip is caught.
    let data_end = seal.data_end as usize;
    let (mut footer_flips, mut footer_detected) = (0, 0);
    let positions = (0..data_end).step_by(13).chain(data_end..good.len());
    for position in positions {
        let mut bytes = good.clone();
        bytes[position] ^= 0x10;
        let unsealed = damaged_reads_fail_or_match(bytes.clone(), None, &expected).await;
        if position < data_end {
            assert!(
                unsealed,
                "a flip at byte {position} of the data region went unnoticed"
            );
        } else {
            footer_flips += 1;
            footer_detected += usize::from(unsealed);
        }
        if position % 13 == 0 {
            let sealed = damaged_reads_fail_or_match(bytes, Some(&seal), &expected).await;
            assert!(
                sealed,
                "a flip at byte {position} went unnoticed despite the seal"
            );
        }
    }
    eprintln!("unsealed footer flips detected: {footer_detected} of {footer_flips}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_work_the_same_on_every_backend() {
    let moto = Moto::start();
    for kind in Kind::ALL {
        let (store, _dir) = kind.wrapped(Some(&moto));
        let value_schema = Schema::new(vec![Field::new("v", DataType::Float64, false)]);
        // About 7.5 MB with 5 MiB parts: a multipart upload.
        let options = SegmentWriterOptions {
            upload_part_bytes: 5 << 20,
            ..SegmentWriterOptions::default()
        };
        let rows = 300_000u64;
        let keys: Vec<u64> = (0..rows).map(|i| i * 2 + 1).collect();
        let mut writer = SegmentWriter::create(
            Arc::clone(&store),
            Path::from("db/segments/s1"),
            &value_schema,
            options,
        )
        .unwrap();
        for chunk in keys.chunks(50_000) {
            writer
                .write(&key_value_batch(chunk, &vec![3; chunk.len()]))
                .await
                .unwrap();
        }
        let written = writer.finish(b"idx").await.unwrap();
        assert!(written.seal.size > 5 << 20, "{}", kind.name());
        let reader = SegmentReader::open(
            Arc::clone(&store),
            Path::from("db/segments/s1"),
            Some(&written.seal),
            cache(),
        )
        .await
        .unwrap();
        assert_eq!(reader.keys(), keys.as_slice(), "{}", kind.name());
        let v = reader.projection(&["v"]).unwrap();
        let sum: f64 = reader
            .scan(0..rows, &v, 65_536)
            .unwrap()
            .map_ok(|batch| {
                batch
                    .column(0)
                    .as_any()
                    .downcast_ref::<Float64Array>()
                    .unwrap()
                    .values()
                    .iter()
                    .sum::<f64>()
            })
            .try_fold(0.0, |a, b| async move { Ok(a + b) })
            .await
            .unwrap();
        assert_eq!(
            sum,
            keys.iter().map(|&k| k as f64).sum::<f64>(),
            "{}",
            kind.name()
        );
        let picks = [299_999u64, 0, 150_000];
        let rows_read = reader
            .fetch_many(&picks, &reader.projection(&["_key"]).unwrap())
            .await
            .unwrap();
        let got = rows_read
            .column(0)
            .as_any()
            .downcast_ref::<UInt64Array>()
            .unwrap();
        assert_eq!(
            got.values().to_vec(),
            picks.iter().map(|&p| keys[p as usize]).collect::<Vec<_>>(),
            "{}",
            kind.name()
        );
    }
}

#[tokio::test]
async fn a_writer_whose_upload_failed_refuses_to_go_on_and_publishes_nothing() {
    let faulty = Faults::default().over_memory();
    let store: Arc<dyn ObjectStore> = Arc::clone(&faulty) as _;
    let value_schema = Schema::new(vec![Field::new("v", DataType::Float64, false)]);
    let options = SegmentWriterOptions {
        upload_part_bytes: 5 << 20,
        rows_per_page: 1024,
        pages_per_row_group: 16,
        ..SegmentWriterOptions::default()
    };
    let mut writer = SegmentWriter::create(
        Arc::clone(&store),
        Path::from("seg/failed"),
        &value_schema,
        options,
    )
    .unwrap();
    let keys: Vec<u64> = (0..400_000).collect();
    let mut chunks = keys.chunks(16_384);
    // Every request fails from now on: the first upload (once 5 MiB are buffered) fails.
    faulty
        .layer()
        .fail
        .store(u32::MAX, std::sync::atomic::Ordering::SeqCst);
    let err = loop {
        let chunk = chunks.next().expect("an upload happens within 400K rows");
        if let Err(err) = writer
            .write(&key_value_batch(chunk, &vec![1; chunk.len()]))
            .await
        {
            break err;
        }
    };
    assert_eq!(err.kind(), ErrorKind::Retry, "{err}");
    faulty
        .layer()
        .fail
        .store(0, std::sync::atomic::Ordering::SeqCst);
    // The writer's uploaded bytes are incomplete: it refuses more rows and refuses to finish.
    let chunk = chunks.next().unwrap();
    let again = writer
        .write(&key_value_batch(chunk, &vec![1; chunk.len()]))
        .await
        .unwrap_err();
    assert!(matches!(again, Error::Poisoned { .. }), "{again}");
    let finished = writer.finish(b"").await.unwrap_err();
    assert_eq!(finished.kind(), ErrorKind::Fatal, "{finished}");
    assert!(matches!(
        store.head(&Path::from("seg/failed")).await,
        Err(object_store::Error::NotFound { .. })
    ));
}

#[tokio::test]
async fn writer_options_that_overflow_are_refused() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let value_schema = Schema::new(vec![Field::new("v", DataType::Float64, false)]);
    for options in [
        SegmentWriterOptions {
            rows_per_page: usize::MAX,
            ..SegmentWriterOptions::default()
        },
        SegmentWriterOptions {
            rows_per_page: 1 << 20,
            pages_per_row_group: usize::MAX,
            ..SegmentWriterOptions::default()
        },
        SegmentWriterOptions {
            checksum_chunk_bytes: usize::MAX,
            ..SegmentWriterOptions::default()
        },
        SegmentWriterOptions {
            upload_part_bytes: 1024,
            ..SegmentWriterOptions::default()
        },
    ] {
        let err = SegmentWriter::create(
            Arc::clone(&store),
            Path::from("x"),
            &value_schema,
            options.clone(),
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BadInput, "{options:?}");
    }
}

/// Row `i`'s value in the one-width test: 16 bytes on even pages of 100 rows, a width that
/// varies by row on odd ones.
fn value_of(i: u64) -> Vec<u8> {
    if (i / 100).is_multiple_of(2) {
        [i.to_le_bytes(), (!i).to_le_bytes()].concat()
    } else {
        vec![i as u8; (i % 5) as usize]
    }
}

#[tokio::test]
async fn values_of_one_width_are_read_from_the_page_slots_as_from_the_pages() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let value_schema = Schema::new(vec![
        Field::new("v", DataType::Binary, false),
        Field::new("n", DataType::Int64, false),
    ]);
    let rows = 1_000u64;
    let batch = RecordBatch::try_new(
        segment_schema(&value_schema).unwrap(),
        vec![
            Arc::new(UInt64Array::from_iter_values((0..rows).map(|i| i * 2))),
            Arc::new(UInt64Array::from(vec![1; rows as usize])),
            Arc::new(BooleanArray::from(vec![false; rows as usize])),
            Arc::new(arrow_array::BinaryArray::from_iter_values(
                (0..rows).map(value_of),
            )),
            Arc::new(arrow_array::Int64Array::from_iter_values(
                (0..rows as i64).map(|i| -i),
            )),
        ],
    )
    .unwrap();
    let written = write(&store, "seg/width", &value_schema, &[batch], small_pages()).await;
    let cache = cache();
    let reader = SegmentReader::open(
        Arc::clone(&store),
        Path::from("seg/width"),
        Some(&written.seal),
        Arc::clone(&cache),
    )
    .await
    .unwrap();
    let v = reader.projection(&["v"]).unwrap();
    let both = reader.projection(&["v", "n"]).unwrap();
    let all: Vec<u64> = (0..rows).collect();
    let even_page = |i: u64| (i / 100).is_multiple_of(2);

    // Nothing cached: nothing read.
    assert_eq!(
        reader.read_cached_bytes(5, &v, <[u8]>::to_vec).unwrap(),
        None
    );
    let left = reader
        .read_cached_bytes_many(&all, &v, |_, _| panic!("nothing is cached"))
        .unwrap();
    assert_eq!(left.len(), all.len());
    assert!(
        reader
            .page_cells(0..10, &v, false, &CachePin::new())
            .is_none(),
        "nothing is cached"
    );

    // Every page cached (one fetch per page).
    for page in 0..rows / 100 {
        reader.fetch(page * 100, &both).await.unwrap();
    }
    let before = cache.stats();
    for i in 0..rows {
        let slot = reader.read_cached_bytes(i, &v, <[u8]>::to_vec).unwrap();
        let page = reader
            .read_cached(i, &v, |pages, offset| {
                pages[0].binary(offset).map(<[u8]>::to_vec)
            })
            .unwrap();
        assert_eq!(page, Some(Some(value_of(i))), "row {i} through its page");
        if even_page(i) {
            assert_eq!(slot, Some(value_of(i)), "row {i} from its slot");
        } else {
            assert_eq!(
                slot, None,
                "row {i}: its page's values have more than one width"
            );
        }
    }
    let served = (0..rows).filter(|&i| even_page(i)).count() as u64;
    assert_eq!(
        cache.stats().hits - before.hits,
        rows + served,
        "one hit per row read, by either path"
    );
    // A point read's page, found once for the rows it will search: the values of those rows
    // on that page (each a hit); nothing for a row on the next page, a page of more than one
    // width, two columns, or rows past the end.
    let before = cache.stats();
    let mut served = 0;
    for i in 0..rows {
        let window = i.saturating_sub(3)..i + 4;
        let (value, next_page) = reader.with_point_cells(window.clone(), &v, |cells| {
            let next_page = (window.start / 100 + 1) * 100;
            (
                cells.value(i).map(<[u8]>::to_vec),
                cells.value(next_page).map(<[u8]>::to_vec),
            )
        });
        assert_eq!(
            next_page, None,
            "window from {}: the next page",
            window.start
        );
        if even_page(window.start) && i / 100 == window.start / 100 {
            assert_eq!(value, Some(value_of(i)), "row {i} from its window's page");
            served += 1;
        } else {
            assert_eq!(value, None, "row {i}, window from {}", window.start);
        }
        assert!(reader.with_point_cells(window, &both, |cells| cells.value(i).is_none()));
    }
    assert_eq!(
        cache.stats().hits - before.hits,
        served,
        "one hit per value read"
    );
    assert!(reader.with_point_cells(rows..rows + 5, &v, |cells| cells.value(rows).is_none()));

    // A scan step's rows, borrowed from their page where they all lie on one of one width (a
    // hit once the step says it read them, not before); nothing for rows across two pages, a
    // page of more than one width, two columns, no rows or rows past the end.
    let before = cache.stats();
    let mut served = 0;
    for start in (0..rows).step_by(7) {
        for (len, reverse) in [(1, false), (5, true), (40, false), (40, true)] {
            let step = start..(start + len).min(rows);
            let pin = CachePin::new();
            let found = reader.page_cells(step.clone(), &v, reverse, &pin);
            let one_page = (step.end - 1) / 100 == start / 100;
            if even_page(start) && one_page {
                let found = found.expect("the step's rows are on one cached page");
                let page = found.rows();
                assert_eq!(page, start / 100 * 100..start / 100 * 100 + 100);
                let cells = found.cells();
                for i in step.clone() {
                    assert_eq!(
                        cells.row((i - page.start) as usize),
                        Some(&value_of(i)[..]),
                        "row {i}"
                    );
                }
                assert_eq!(cells.row(100), None, "past the page");
                if start % 2 == 0 {
                    found.served();
                    served += 1;
                }
            } else {
                assert!(found.is_none(), "rows {step:?}");
            }
            assert!(
                reader.page_cells(step, &both, reverse, &pin).is_none(),
                "two columns"
            );
        }
    }
    assert_eq!(
        cache.stats().hits - before.hits,
        served,
        "one hit for each step served, none for a lookup dropped"
    );
    let pin = CachePin::new();
    assert!(
        reader.page_cells(4..4, &v, false, &pin).is_none(),
        "no rows"
    );
    assert!(
        reader.page_cells(rows..rows + 1, &v, false, &pin).is_none(),
        "past the end"
    );
    assert!(
        reader
            .page_cells(rows - 1..rows + 1, &v, false, &pin)
            .is_none(),
        "past the end"
    );
    drop(pin);

    // Two columns are not read this way; a position past the end is refused.
    assert_eq!(
        reader.read_cached_bytes(0, &both, <[u8]>::to_vec).unwrap(),
        None
    );
    assert_eq!(
        reader
            .read_cached_bytes(rows, &v, <[u8]>::to_vec)
            .unwrap_err()
            .kind(),
        ErrorKind::BadInput
    );

    // Many rows, out of order and repeated: the even pages' rows read in the order asked, the
    // others handed back by index.
    let picks: Vec<u64> = (0..3 * rows).map(|i| (i * 7_919) % rows).collect();
    let mut got = Vec::new();
    let before = cache.stats();
    let left = reader
        .read_cached_bytes_many(&picks, &v, |i, bytes| got.push((i, bytes.to_vec())))
        .unwrap();
    assert_eq!(
        cache.stats().hits - before.hits,
        got.len() as u64,
        "one hit per value read"
    );
    let want_left: Vec<usize> = (0..picks.len()).filter(|&i| !even_page(picks[i])).collect();
    assert_eq!(left, want_left);
    assert_eq!(got.len() + left.len(), picks.len());
    assert!(
        got.windows(2).all(|w| w[0].0 < w[1].0),
        "in the order asked"
    );
    for (i, bytes) in &got {
        assert_eq!(bytes, &value_of(picks[*i]), "pick {i}");
    }
    assert_eq!(
        reader
            .read_cached_bytes_many(&picks, &both, |_, _| panic!("two columns"))
            .unwrap()
            .len(),
        picks.len()
    );
    assert_eq!(
        reader
            .read_cached_bytes_many(&[0, rows], &v, |_, _| panic!("refused before any row"))
            .unwrap_err()
            .kind(),
        ErrorKind::BadInput
    );
    // Asking for cells ahead reads nothing and counts nothing, from slots as from pages.
    let before = cache.stats();
    for cells in [0..0, 0..rows + 10, 150..170, 90..310, rows - 1..u64::MAX] {
        reader.prefetch_cells(cells.clone(), &v);
        reader.prefetch_cells(cells, &both);
    }
    assert_eq!(cache.stats(), before);
}

/// A segment small enough to be put whole at `finish` reports a failed put as the store's error,
/// of the store's kind (`Retry` for one that may pass, `Fatal` for a refusal), and leaves no
/// object: reported as a Parquet error, an S3 blip at the end of a flush said `Corrupt`
/// (found by a helper agent's review).
#[tokio::test]
async fn a_failed_put_at_finish_is_the_stores_error() {
    for (definite, kind) in [(false, ErrorKind::Retry), (true, ErrorKind::Fatal)] {
        let faulty = Faults {
            definite,
            ..Faults::default()
        }
        .over_memory();
        let store: Arc<dyn ObjectStore> = Arc::clone(&faulty) as _;
        let value_schema = Schema::new(vec![Field::new("v", DataType::Float64, false)]);
        let mut writer = SegmentWriter::create(
            Arc::clone(&store),
            Path::from("seg/small"),
            &value_schema,
            SegmentWriterOptions::default(),
        )
        .unwrap();
        writer
            .write(&key_value_batch(&[1, 2, 3], &[1, 1, 1]))
            .await
            .unwrap();
        faulty
            .layer()
            .fail
            .store(u32::MAX, std::sync::atomic::Ordering::SeqCst);
        let err = writer.finish(b"").await.unwrap_err();
        assert!(matches!(err, Error::Store { .. }), "{err}");
        assert_eq!(err.kind(), kind, "{err}");
        faulty
            .layer()
            .fail
            .store(0, std::sync::atomic::Ordering::SeqCst);
        assert!(matches!(
            store.head(&Path::from("seg/small")).await,
            Err(object_store::Error::NotFound { .. })
        ));
    }
}
