//! `omendb-bench segment`: one Parquet segment (key + one f64 column) written, opened, read by
//! position (cold and cached) and scanned, on local files and in memory, through the same
//! backend wrappers the engine uses.
//!
//! Every row is checked before it is printed: the reader's decoded keys must equal the keys
//! written, every fetched row must hold the key and value written at its position, and a scan
//! must return every row with the sums of keys and values written.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use arrow_array::{Array, BooleanArray, Float64Array, RecordBatch, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use clap::Parser;
use futures::TryStreamExt;
use object_store::ObjectStore;
use object_store::path::Path;
use omendb_storage::segment::{
    PageCache, Projection, SegmentReader, SegmentWriter, SegmentWriterOptions, WrittenSegment,
    segment_schema,
};
use omendb_storage::{Backend, BackendOptions};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

use crate::report::{self, Report, median};

/// Arguments of `omendb-bench segment`.
#[derive(Parser, Debug)]
pub(crate) struct Args {
    /// Rows in the segment.
    #[arg(long, default_value_t = 10_000_000)]
    rows: u64,
    /// Backends to measure, comma-separated: file, memory.
    #[arg(long, default_value = "file,memory", value_delimiter = ',')]
    backends: Vec<String>,
    /// Single-row fetches of pages not yet cached.
    #[arg(long, default_value_t = 2_000)]
    cold_fetches: usize,
    /// Single-row fetches from cached pages.
    #[arg(long, default_value_t = 1_000_000)]
    cached_fetches: usize,
    /// Directory for the `file` backend (a fresh subdirectory is used and removed).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print one JSON object per row instead of a table.
    #[arg(long)]
    json: bool,
}

/// One row of the output contract in `shared/design/PERFORMANCE.md`. `p50_ns` is the median
/// latency of one operation: a 64Ki-row batch written or scanned, one open, one fetch.
#[derive(Serialize)]
struct Row {
    backend: String,
    op: &'static str,
    rows: u64,
    rows_per_s: f64,
    p50_ns: f64,
    mb_per_s: f64,
}

const BATCH_ROWS: usize = 64 * 1024;
const SEED: u64 = 0x5e6_3e47;

fn key(i: u64) -> u64 {
    // Increasing with uneven gaps, like timestamps with jitter.
    i * 3 + (i * 7 % 3)
}

fn value(key: u64) -> f64 {
    key as f64 * 0.5
}

/// Runs the benchmark.
pub(crate) fn run(args: &Args) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let mut report = Report::new(args.json);
    report.note(&format!("machine: {}", report::machine()));
    report.note(&format!(
        "segment of {} rows: _key u64, _lsn u64, _tombstone bool, v f64; {} rows per page; \
         fetches read _key and v",
        args.rows,
        SegmentWriterOptions::default().rows_per_page
    ));
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let root = parent.join(format!("omendb-segment-bench-{}", std::process::id()));
    let result = runtime.block_on(async {
        for backend in &args.backends {
            let url = match backend.as_str() {
                "file" => format!("file://{}", root.display()),
                "memory" => "memory://".to_owned(),
                other => bail!("unknown backend {other:?} (file, memory)"),
            };
            let opened = Backend::open(&url, &BackendOptions::default())?;
            measure(args, backend, Arc::clone(opened.store()), &mut report).await?;
        }
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&root);
    result
}

async fn measure(
    args: &Args,
    backend: &str,
    store: Arc<dyn ObjectStore>,
    report: &mut Report,
) -> Result<()> {
    let path = Path::from("segments/bench.parquet");
    let row = |op, rows: u64, seconds: f64, p50_ns: f64, bytes: f64| Row {
        backend: backend.to_owned(),
        op,
        rows,
        rows_per_s: rows as f64 / seconds,
        p50_ns,
        mb_per_s: bytes / seconds / 1e6,
    };

    // write
    let value_schema = Schema::new(vec![Field::new("v", DataType::Float64, false)]);
    let schema = segment_schema(&value_schema)?;
    let mut writer = SegmentWriter::create(
        Arc::clone(&store),
        path.clone(),
        &value_schema,
        SegmentWriterOptions::default(),
    )?;
    let mut batch_ns = Vec::new();
    let started = Instant::now();
    let mut next = 0u64;
    while next < args.rows {
        let len = (args.rows - next).min(BATCH_ROWS as u64);
        let keys: Vec<u64> = (next..next + len).map(key).collect();
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(UInt64Array::from_iter_values(keys.iter().copied())),
                Arc::new(UInt64Array::from_iter_values(std::iter::repeat_n(
                    1,
                    keys.len(),
                ))),
                Arc::new(BooleanArray::from(vec![false; keys.len()])),
                Arc::new(Float64Array::from_iter_values(
                    keys.iter().map(|&k| value(k)),
                )),
            ],
        )?;
        let one = Instant::now();
        writer.write(&batch).await?;
        batch_ns.push(one.elapsed().as_nanos() as f64);
        next += len;
    }
    let WrittenSegment { seal, .. } = writer.finish(&[]).await?;
    let seconds = started.elapsed().as_secs_f64();
    report.row(&row(
        "write",
        args.rows,
        seconds,
        median(&mut batch_ns),
        seal.size as f64,
    ))?;

    // open (each with a fresh cache, so nothing is shared between opens)
    let mut open_ns = Vec::new();
    let mut reader = None;
    for _ in 0..5 {
        let cache = Arc::new(PageCache::new(1 << 30));
        let one = Instant::now();
        let opened =
            SegmentReader::open(Arc::clone(&store), path.clone(), Some(&seal), cache).await?;
        open_ns.push(one.elapsed().as_nanos() as f64);
        reader = Some(opened);
    }
    let reader = reader.context("no open")?;
    let keys = reader.keys();
    ensure!(
        keys.len() as u64 == args.rows,
        "the segment holds {} keys, not {}",
        keys.len(),
        args.rows
    );
    for (i, &k) in keys.iter().enumerate() {
        ensure!(
            k == key(i as u64),
            "key at {i} is {k}, not {}",
            key(i as u64)
        );
    }
    let p50 = median(&mut open_ns);
    report.row(&row("open", args.rows, p50 / 1e9, p50, seal.size as f64))?;

    // fetch_cold: positions in pages not fetched before
    let projection = reader.projection(&["_key", "v"])?;
    let per_page = u64::from(reader.meta().rows_per_page);
    let pages = args.rows.div_ceil(per_page);
    let mut rng = StdRng::seed_from_u64(SEED);
    let mut page_order: Vec<u64> = (0..pages).collect();
    for i in (1..page_order.len()).rev() {
        page_order.swap(i, rng.random_range(0..=i));
    }
    let cold: Vec<u64> = page_order
        .iter()
        .take(args.cold_fetches)
        .map(|&page| (page * per_page + rng.random_range(0..per_page)).min(args.rows - 1))
        .collect();
    let mut fetch_ns = Vec::with_capacity(cold.len());
    let started = Instant::now();
    for &position in &cold {
        let one = Instant::now();
        let fetched = reader.fetch(position, &projection).await?;
        fetch_ns.push(one.elapsed().as_nanos() as f64);
        check_row(&fetched, position)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let p50 = median(&mut fetch_ns);
    report.row(&row("fetch_cold", cold.len() as u64, seconds, p50, 0.0))?;

    // fetch_cached: random positions within the pages fetched above (all cached), read in place
    // (`read_cached`), timed in groups of 1000 because a clock read costs as much as a fetch
    let mut group_ns = Vec::new();
    let positions: Vec<u64> = (0..args.cached_fetches)
        .map(|_| {
            let page = page_order[rng.random_range(0..cold.len().max(1))];
            (page * per_page + rng.random_range(0..per_page)).min(args.rows - 1)
        })
        .collect();
    let started = Instant::now();
    for group in positions.chunks(1000) {
        let one = Instant::now();
        for &position in group {
            let checked = reader.read_cached(position, &projection, |pages, offset| {
                let k = pages[0]
                    .array()
                    .as_any()
                    .downcast_ref::<UInt64Array>()
                    .map(|a| a.value(offset));
                let v = pages[1]
                    .array()
                    .as_any()
                    .downcast_ref::<Float64Array>()
                    .map(|a| a.value(offset));
                k == Some(key(position)) && v == k.map(value)
            })?;
            match checked {
                Some(true) => {}
                Some(false) => bail!("row {position} holds the wrong key or value"),
                None => bail!("row {position} is not cached"),
            }
        }
        group_ns.push(one.elapsed().as_nanos() as f64 / group.len() as f64);
    }
    let seconds = started.elapsed().as_secs_f64();
    let p50 = median(&mut group_ns);
    report.row(&row(
        "fetch_cached",
        positions.len() as u64,
        seconds,
        p50,
        0.0,
    ))?;

    // scan
    let mut scan_seconds = Vec::new();
    let mut scan_batch_ns = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let (count, key_sum, value_sum) = scan(&reader, &projection, &mut scan_batch_ns).await?;
        scan_seconds.push(started.elapsed().as_secs_f64());
        let expected_keys: u64 = (0..args.rows).map(key).fold(0u64, u64::wrapping_add);
        let expected_values: f64 = (0..args.rows).map(|i| value(key(i))).sum();
        ensure!(
            count == args.rows,
            "the scan returned {count} rows, not {}",
            args.rows
        );
        ensure!(key_sum == expected_keys, "the scan's key sum is wrong");
        ensure!(
            value_sum == expected_values,
            "the scan's value sum is wrong"
        );
    }
    let seconds = median(&mut scan_seconds);
    let scanned_bytes = args.rows as f64 * 16.0;
    report.row(&row(
        "scan",
        args.rows,
        seconds,
        median(&mut scan_batch_ns),
        scanned_bytes,
    ))?;
    report.note(&format!(
        "{backend}: segment of {} bytes, {} rows",
        reader.size(),
        reader.rows()
    ));
    Ok(())
}

async fn scan(
    reader: &SegmentReader,
    projection: &Projection,
    batch_ns: &mut Vec<f64>,
) -> Result<(u64, u64, f64)> {
    let mut stream = reader.scan(0..reader.rows(), projection, BATCH_ROWS)?;
    let (mut count, mut key_sum, mut value_sum) = (0u64, 0u64, 0f64);
    loop {
        let one = Instant::now();
        let Some(batch) = stream.try_next().await? else {
            break;
        };
        batch_ns.push(one.elapsed().as_nanos() as f64);
        let keys = column::<UInt64Array>(&batch, 0)?;
        let values = column::<Float64Array>(&batch, 1)?;
        key_sum = keys
            .values()
            .iter()
            .fold(key_sum, |sum, &k| sum.wrapping_add(k));
        value_sum += values.values().iter().sum::<f64>();
        count += batch.num_rows() as u64;
    }
    Ok((count, key_sum, value_sum))
}

fn check_row(row: &RecordBatch, position: u64) -> Result<()> {
    let k = column::<UInt64Array>(row, 0)?.value(0);
    let v = column::<Float64Array>(row, 1)?.value(0);
    ensure!(
        k == key(position) && v == value(k),
        "row {position} holds ({k}, {v})"
    );
    Ok(())
}

fn column<T: Array + 'static>(batch: &RecordBatch, index: usize) -> Result<&T> {
    batch
        .column(index)
        .as_any()
        .downcast_ref::<T>()
        .context("unexpected column type")
}
