//! Point reads through a page cache far smaller than the segment: readers on several threads
//! fetch and read cached rows while other fetches evict the pages they read. Every row read must
//! be the row written, the cache must stay within its budget, and closing a reader must free its
//! pages. Values borrowed from a page under a pin stay the values written while other threads
//! evict that page.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use arrow_array::{Array, BinaryArray, BooleanArray, Float64Array, RecordBatch, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use object_store::memory::InMemory;
use object_store::path::Path;
use omendb_storage::segment::{
    CachePin, Cells, PageCache, Projection, SegmentReader, SegmentWriter, SegmentWriterOptions,
    segment_schema,
};

const ROWS: u64 = 64 * 1024;

/// The next number of a xorshift walk: a different, repeatable walk per thread.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn value(position: u64) -> f64 {
    position as f64 * 0.25
}

async fn written(cache: Arc<PageCache>) -> SegmentReader {
    let values = Schema::new(vec![Field::new("v", DataType::Float64, false)]);
    let column = Arc::new(Float64Array::from_iter_values((0..ROWS).map(value)));
    written_with(cache, values, column).await
}

/// Row `position`'s bytes in the segment of [`bytes_written`]: 16 of them, so every page has
/// one width.
fn bytes_of(position: u64) -> [u8; 16] {
    let mut bytes = [0; 16];
    bytes[..8].copy_from_slice(&position.to_le_bytes());
    bytes[8..].copy_from_slice(&(!position).to_le_bytes());
    bytes
}

async fn bytes_written(cache: Arc<PageCache>) -> SegmentReader {
    let values = Schema::new(vec![Field::new("v", DataType::Binary, false)]);
    let column = Arc::new(BinaryArray::from_iter_values((0..ROWS).map(bytes_of)));
    written_with(cache, values, column).await
}

/// A segment of [`ROWS`] rows (keys `0, 2, 4, …`) holding `column`, small pages.
async fn written_with(
    cache: Arc<PageCache>,
    values: Schema,
    column: Arc<dyn Array>,
) -> SegmentReader {
    let store = Arc::new(InMemory::new());
    let options = SegmentWriterOptions {
        rows_per_page: 256,
        pages_per_row_group: 16,
        ..SegmentWriterOptions::default()
    };
    let path = Path::from("evict.parquet");
    let mut writer = SegmentWriter::create(store.clone(), path.clone(), &values, options).unwrap();
    let batch = RecordBatch::try_new(
        segment_schema(&values).unwrap(),
        vec![
            Arc::new(UInt64Array::from_iter_values((0..ROWS).map(|i| i * 2))),
            Arc::new(UInt64Array::from_iter_values((0..ROWS).map(|i| i + 1))),
            Arc::new(BooleanArray::from(vec![false; ROWS as usize])),
            column,
        ],
    )
    .unwrap();
    writer.write(&batch).await.unwrap();
    let seal = writer.finish(&[]).await.unwrap().seal;
    SegmentReader::open(store, path, Some(&seal), cache)
        .await
        .unwrap()
}

/// Runs `walk` on four threads at once, each given its number, the reader, the projection and a
/// runtime of its own; returns what each returned.
fn on_four_threads<T: Send + 'static>(
    reader: &Arc<SegmentReader>,
    projection: &Arc<Projection>,
    walk: fn(u64, &SegmentReader, &Projection, &tokio::runtime::Runtime) -> T,
) -> Vec<T> {
    let threads: Vec<_> = (0..4u64)
        .map(|thread| {
            let (reader, projection) = (Arc::clone(reader), Arc::clone(projection));
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                walk(thread, &reader, &projection, &runtime)
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

#[test]
fn cached_reads_stay_right_while_a_small_cache_evicts_under_them() {
    // 256 f64 rows decode to about 2 KiB: the budget holds a few dozen of the 256 pages.
    let budget = 64 * 1024;
    let cache = Arc::new(PageCache::new(budget));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let reader = Arc::new(runtime.block_on(written(Arc::clone(&cache))));
    let projection = Arc::new(reader.projection(&["_key", "v"]).unwrap());
    let counts = on_four_threads(
        &reader,
        &projection,
        |thread, reader, projection, runtime| {
            let (mut cached, mut fetched) = (0u64, 0u64);
            let mut state = thread * 7919 + 1;
            for _ in 0..20_000 {
                let position = xorshift(&mut state) % ROWS;
                let read = reader
                    .read_cached(position, projection, |pages, offset| {
                        let key = pages[0]
                            .array()
                            .as_any()
                            .downcast_ref::<UInt64Array>()
                            .unwrap()
                            .value(offset);
                        let v = pages[1]
                            .array()
                            .as_any()
                            .downcast_ref::<Float64Array>()
                            .unwrap()
                            .value(offset);
                        (key, v)
                    })
                    .unwrap();
                let (key, v) = match read {
                    Some(row) => {
                        cached += 1;
                        row
                    }
                    None => {
                        fetched += 1;
                        let row = runtime
                            .block_on(reader.fetch(position, projection))
                            .unwrap();
                        let key = row.column(0).as_any().downcast_ref::<UInt64Array>();
                        let v = row.column(1).as_any().downcast_ref::<Float64Array>();
                        (key.unwrap().value(0), v.unwrap().value(0))
                    }
                };
                assert_eq!((key, v), (position * 2, value(position)), "row {position}");
            }
            (cached, fetched)
        },
    );
    let (mut cached, mut fetched) = (0, 0);
    for (c, f) in counts {
        cached += c;
        fetched += f;
    }
    let stats = cache.stats();
    assert!(
        cached > 0 && fetched > 0,
        "{cached} cached, {fetched} fetched"
    );
    assert!(stats.bytes <= budget, "{stats:?}");
    // A fetch may find its page cached by another thread meanwhile: then it is a hit too.
    assert!(
        stats.hits >= cached,
        "every cached read is a hit: {stats:?}"
    );
    assert_eq!(
        stats.hits + stats.misses,
        cached + fetched,
        "every read is one hit or one page decoded: {stats:?}"
    );
    assert!(stats.pages > 0, "{stats:?}");

    drop(projection);
    drop(Arc::into_inner(reader).expect("the only reference"));
    let stats = cache.stats();
    assert_eq!(
        (stats.pages, stats.bytes),
        (0, 0),
        "a closed reader's pages are let go"
    );
}

#[test]
fn values_borrowed_under_a_pin_stay_right_while_their_page_is_evicted() {
    // 256 rows of 16 bytes decode to about 5 KiB: the budget holds a few of the 256 pages.
    let budget = 32 * 1024;
    let cache = Arc::new(PageCache::new(budget));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let reader = Arc::new(runtime.block_on(bytes_written(Arc::clone(&cache))));
    let projection = Arc::new(reader.projection(&["v"]).unwrap());
    let counts = on_four_threads(
        &reader,
        &projection,
        |thread, reader, projection, runtime| {
            let (mut borrowed, mut fetched, mut evicted) = (0u64, 0u64, 0u64);
            let mut state = thread * 7919 + 1;
            for _ in 0..5_000 {
                let start = xorshift(&mut state) % ROWS;
                let rows = start..(start + 1 + state % 40).min(ROWS);
                let pin = CachePin::new();
                match reader.page_cells(rows.clone(), projection, false, &pin) {
                    Some(found) => {
                        borrowed += 1;
                        let (page, cells) = (found.rows(), found.cells());
                        // Other threads' fetches evict pages meanwhile: under the pin, the
                        // bytes borrowed are still the page's.
                        for _ in 0..3 {
                            for position in rows.clone() {
                                let row = (position - page.start) as usize;
                                assert_eq!(
                                    cells.row(row),
                                    Some(&bytes_of(position)[..]),
                                    "row {position}"
                                );
                            }
                            std::thread::yield_now();
                        }
                        // Whether the page was evicted while it was read: gone from the
                        // cache, or cached again elsewhere.
                        let address = |cells: Cells<'_>| cells.row(0).map(<[u8]>::as_ptr);
                        let fresh = CachePin::new();
                        let now = reader.page_cells(rows, projection, false, &fresh);
                        if now.is_none_or(|now| address(now.cells()) != address(cells)) {
                            evicted += 1;
                        }
                    }
                    None => {
                        fetched += 1;
                        drop(pin);
                        let batch = runtime
                            .block_on(
                                reader.fetch_range_columns(rows.start..rows.start + 1, projection),
                            )
                            .unwrap();
                        let got = batch[0].as_any().downcast_ref::<BinaryArray>().unwrap();
                        assert_eq!(got.value(0), &bytes_of(rows.start)[..]);
                    }
                }
            }
            (borrowed, fetched, evicted)
        },
    );
    let (mut borrowed, mut fetched, mut evicted) = (0, 0, 0);
    for (b, f, e) in counts {
        borrowed += b;
        fetched += f;
        evicted += e;
    }
    assert!(
        borrowed > 0 && fetched > 0 && evicted > 0,
        "{borrowed} borrowed ({evicted} of their pages evicted while read), {fetched} fetched"
    );
    assert!(cache.stats().bytes <= budget, "{:?}", cache.stats());
}

#[test]
fn a_cold_read_of_several_columns_is_one_miss_and_a_warm_one_one_hit() {
    // Misses counted each column's page, hits each read: one cold and one warm read of three
    // columns counted three misses and one hit.
    let cache = Arc::new(PageCache::new(1 << 24));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let reader = runtime.block_on(written(Arc::clone(&cache)));
    let projection = reader.projection(&["_lsn", "_tombstone", "v"]).unwrap();
    let row = runtime.block_on(reader.fetch(300, &projection)).unwrap();
    assert_eq!(row.num_rows(), 1);
    let warm = reader
        .read_cached(301, &projection, |pages, _| pages.len())
        .unwrap();
    assert_eq!(warm, Some(3), "the page fetched is cached");
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses), (1, 1), "{stats:?}");
}
