//! A time-series table: timestamped rows appended in batches, then range aggregates per bucket.
//!
//! `cargo run -p omendb-core --example timeseries [DIR]` (a temporary directory if none).

#![allow(clippy::print_stdout)] // an example shows its results

use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray, TimestampSecondArray};
use arrow_schema::{DataType, Field, Schema, TimeUnit as ArrowUnit};
use omendb_core::{Aggregate, Db, KeyType, Result, TimeUnit, WriteOptions};

/// Hourly buckets of a day of one-minute readings; returns (bucket start, mean) per hour.
pub(crate) async fn run(dir: &std::path::Path) -> Result<Vec<(i64, f64)>> {
    let db = Db::builder().path(dir).build().await?;
    let schema = Schema::new(vec![
        Field::new("celsius", DataType::Float64, false),
        Field::new("sensor", DataType::Utf8, true),
    ]);
    let readings = match db.table("readings") {
        Ok(table) => table,
        Err(_) => {
            db.create_table(
                "readings",
                KeyType::Timestamp(TimeUnit::Second),
                Some(schema),
            )
            .await?
        }
    };

    // A day of readings, one a minute, written an hour at a time. Time-series keys only
    // grow, so flushed segments never overlap and compaction has nothing to rewrite.
    let day_start = 1_767_225_600; // 2026-01-01T00:00:00Z
    let batch_schema = Arc::new(Schema::new(vec![
        Field::new("key", DataType::Timestamp(ArrowUnit::Second, None), false),
        Field::new("celsius", DataType::Float64, false),
        Field::new("sensor", DataType::Utf8, true),
    ]));
    for hour in 0..24i64 {
        let times: Vec<i64> = (0..60).map(|m| day_start + hour * 3600 + m * 60).collect();
        let celsius: Vec<f64> = (0..60).map(|m| hour as f64 + m as f64 / 100.0).collect();
        let batch = RecordBatch::try_new(
            Arc::clone(&batch_schema),
            vec![
                Arc::new(TimestampSecondArray::from(times)) as ArrayRef,
                Arc::new(Float64Array::from(celsius)),
                Arc::new(StringArray::from(vec![Some("roof"); 60])),
            ],
        )?;
        readings.put_batch(&batch, WriteOptions::BUFFERED).await?;
    }
    db.checkpoint().await?;

    let hourly = readings
        .aggregate(
            day_start..day_start + 86_400,
            "celsius",
            Aggregate::Avg,
            Some(3600),
        )
        .await?;
    let starts = hourly
        .column(0)
        .as_any()
        .downcast_ref::<TimestampSecondArray>()
        .map(|a| a.values().to_vec())
        .unwrap_or_default();
    let means = hourly
        .column(1)
        .as_any()
        .downcast_ref::<Float64Array>()
        .map(|a| a.values().to_vec())
        .unwrap_or_default();
    db.close().await?;
    Ok(starts.into_iter().zip(means).collect())
}

#[allow(dead_code)] // the test that runs the example calls `run` instead
#[tokio::main]
async fn main() -> Result<()> {
    let temp = tempfile::tempdir().map_err(|e| omendb_core::Error::BadInput(e.to_string()))?;
    let dir = std::env::args()
        .nth(1)
        .map_or_else(|| temp.path().to_path_buf(), std::path::PathBuf::from);
    for (start, mean) in run(&dir).await? {
        println!("{start}: {mean:.3} °C");
    }
    Ok(())
}
