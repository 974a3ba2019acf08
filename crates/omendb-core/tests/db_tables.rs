//! Typed tables through the engine: rows in and out as values and Arrow batches, bad input
//! refused without changing anything, aggregates, explain, DDL, the change stream and
//! serializable transactions.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

use std::ops::ControlFlow;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, UInt64Type};
use arrow_array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
    UInt64Array,
};
use arrow_schema::{DataType, Field, Schema, TimeUnit as ArrowUnit};
use futures::TryStreamExt;
use omendb_core::{
    Aggregate, ChangedRow, Db, Error, ErrorKind, Isolation, Key, KeyType, MAX_AGGREGATE_BUCKETS,
    ScanOptions, TimeUnit, Value, WriteOptions,
};
use omendb_storage::segment::SegmentWriterOptions;

fn schema() -> Schema {
    Schema::new(vec![
        Field::new("v", DataType::Float64, false),
        Field::new("name", DataType::Utf8, true),
    ])
}

fn rows(keys: &[i64], vs: &[f64]) -> RecordBatch {
    let names: Vec<Option<String>> = keys
        .iter()
        .map(|k| (k % 2 == 0).then(|| format!("n{k}")))
        .collect();
    let schema = Schema::new(vec![
        Field::new("key", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
        Field::new("v", DataType::Float64, false),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(Int64Array::from(keys.to_vec())) as ArrayRef,
            Arc::new(StringArray::from(names)),
            Arc::new(Float64Array::from(vs.to_vec())),
        ],
    )
    .unwrap()
}

async fn scan_keys(table: &omendb_core::Table, options: ScanOptions) -> Vec<RecordBatch> {
    table
        .scan(i64::MIN.., options)
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

#[tokio::test]
async fn typed_rows_round_trip_and_bad_input_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).await.unwrap();
    let t = db
        .create_table("metrics", KeyType::I64, Some(schema()))
        .await
        .unwrap();
    t.put(-5, &[Value::Float(1.5), Value::Null], WriteOptions::DURABLE)
        .await
        .unwrap();
    t.put_batch(
        &rows(&[1, 2, 3], &[10.0, 20.0, 30.0]),
        WriteOptions::DURABLE,
    )
    .await
    .unwrap();
    assert_eq!(
        t.get(2).await.unwrap(),
        Some(vec![Value::Float(20.0), Value::Str("n2".into())])
    );
    assert_eq!(
        t.get(-5).await.unwrap(),
        Some(vec![Value::Float(1.5), Value::Null])
    );
    let lsn_before = db.stats().visible_lsn;

    // Each of these is refused with a typed error and writes nothing.
    let null = t
        .put(2, &[Value::Null, Value::Null], WriteOptions::DURABLE)
        .await;
    assert!(matches!(null, Err(Error::NullInNonNullable { ref column }) if column == "v"));
    let wrong_key = t
        .put(
            2u64,
            &[Value::Float(0.0), Value::Null],
            WriteOptions::DURABLE,
        )
        .await;
    assert!(matches!(wrong_key, Err(Error::KeyType(_))));
    let wrong_type = t
        .put(
            2,
            &[Value::Str("x".into()), Value::Null],
            WriteOptions::DURABLE,
        )
        .await;
    assert!(matches!(wrong_type, Err(Error::SchemaMismatch(_))));
    let too_few = t.put(2, &[Value::Float(0.0)], WriteOptions::DURABLE).await;
    assert!(matches!(too_few, Err(Error::SchemaMismatch(_))));
    let bad_batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("key", DataType::UInt64, false),
            Field::new("v", DataType::Float64, false),
            Field::new("name", DataType::Utf8, true),
        ])),
        vec![
            Arc::new(UInt64Array::from(vec![7u64])) as ArrayRef,
            Arc::new(Float64Array::from(vec![7.0])),
            Arc::new(StringArray::from(vec![Some("x")])),
        ],
    )
    .unwrap();
    let refused = t.put_batch(&bad_batch, WriteOptions::DURABLE).await;
    assert_eq!(refused.unwrap_err().kind(), ErrorKind::BadInput);
    let huge = t
        .put(
            9,
            &[Value::Float(0.0), Value::Str("x".repeat(2 << 20))],
            WriteOptions::DURABLE,
        )
        .await;
    assert!(matches!(huge, Err(Error::TooLarge { what: "row", .. })));
    assert!(matches!(
        db.table("nope"),
        Err(Error::UnknownTable(name)) if name == "nope"
    ));
    assert!(matches!(
        db.create_table("metrics", KeyType::U64, None).await,
        Err(Error::TableExists(_))
    ));
    assert!(matches!(
        db.create_table("bad name", KeyType::U64, None).await,
        Err(Error::InvalidTable(_))
    ));
    // At most 1,024 value columns of names up to 255 bytes.
    let columns = |count: usize, name_bytes: usize| {
        Schema::new(
            (0..count)
                .map(|i| Field::new(format!("{i:0>name_bytes$}"), DataType::Int64, true))
                .collect::<Vec<_>>(),
        )
    };
    for (count, name_bytes, fits) in [
        (1024, 8, true),
        (1025, 8, false),
        (1, 255, true),
        (1, 256, false),
    ] {
        let created = db
            .create_table(
                &format!("wide{count}x{name_bytes}"),
                KeyType::U64,
                Some(columns(count, name_bytes)),
            )
            .await;
        assert_eq!(
            created.is_ok(),
            fits,
            "{count} columns of {name_bytes} bytes"
        );
        if !fits {
            assert!(matches!(created, Err(Error::InvalidTable(_))));
        }
    }
    assert_eq!(db.stats().visible_lsn, lsn_before);
    assert_eq!(
        t.get(2).await.unwrap(),
        Some(vec![Value::Float(20.0), Value::Str("n2".into())])
    );
    assert_eq!(t.get(7).await.unwrap(), None);

    // Projection, order and types survive a flush and a reopen.
    db.checkpoint().await.unwrap();
    t.put(3, &[Value::Float(33.0), Value::Null], WriteOptions::DURABLE)
        .await
        .unwrap();
    db.close().await.unwrap();
    let db = Db::open(dir.path()).await.unwrap();
    let t = db.table("metrics").unwrap();
    // Key 3 is in the memtable (replayed), 2 and -5 in a segment, 99 nowhere.
    assert_eq!(
        t.multi_get(&[3, 99, 2, -5]).await.unwrap(),
        [
            Some(vec![Value::Float(33.0), Value::Null]),
            None,
            Some(vec![Value::Float(20.0), Value::Str("n2".into())]),
            Some(vec![Value::Float(1.5), Value::Null]),
        ]
    );
    let batches = scan_keys(
        &t,
        ScanOptions {
            projection: Some(vec!["v".into()]),
            reverse: true,
            ..ScanOptions::default()
        },
    )
    .await;
    let batch = arrow_select::concat::concat_batches(&batches[0].schema(), &batches).unwrap();
    assert_eq!(batch.schema().field(0).name(), "key");
    assert_eq!(batch.schema().field(1).name(), "v");
    assert_eq!(batch.num_columns(), 2);
    let keys: Vec<i64> = batch
        .column(0)
        .as_primitive::<Int64Type>()
        .values()
        .to_vec();
    let vs: Vec<f64> = batch
        .column(1)
        .as_primitive::<Float64Type>()
        .values()
        .to_vec();
    assert_eq!(keys, [3, 2, 1, -5]);
    assert_eq!(vs, [33.0, 20.0, 10.0, 1.5]);
    let unknown = t.scan(
        0i64..,
        ScanOptions {
            projection: Some(vec!["missing".into()]),
            ..ScanOptions::default()
        },
    );
    assert!(matches!(unknown, Err(Error::BadInput(_))));
    db.close().await.unwrap();
}

/// Buckets one key wide over one row more than [`MAX_AGGREGATE_BUCKETS`]: refused (`BadInput`)
/// from the memtable and from segments alike, instead of one bucket per row in memory; exactly
/// the limit, and half as many buckets, are answered. (The memtable's last bucket, still open
/// when the limit was checked, used to slip one past it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregate_past_the_bucket_limit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).await.unwrap();
    let t = db.create_table("kv", KeyType::U64, None).await.unwrap();
    let rows = MAX_AGGREGATE_BUCKETS as u64 + 1;
    let schema = Arc::new(Schema::new(vec![
        Field::new("key", DataType::UInt64, false),
        Field::new("value", DataType::Binary, false),
    ]));
    for start in (0..rows).step_by(100_000) {
        let keys: Vec<u64> = (start..(start + 100_000).min(rows)).collect();
        let values = arrow_array::BinaryArray::from_iter_values(keys.iter().map(|_| b"v"));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(UInt64Array::from(keys)), Arc::new(values)],
        )
        .unwrap();
        t.put_batch(&batch, WriteOptions::BUFFERED).await.unwrap();
    }
    for place in ["memtable", "segments"] {
        let refused = t
            .aggregate(0u64.., "value", Aggregate::Count, Some(1))
            .await;
        assert!(
            matches!(&refused, Err(Error::BadInput(m)) if m.contains("buckets")),
            "{place}: {:?}",
            refused.map(|b| b.num_rows())
        );
        let at_limit = t
            .aggregate(1u64.., "value", Aggregate::Count, Some(1))
            .await
            .unwrap();
        assert_eq!(at_limit.num_rows(), MAX_AGGREGATE_BUCKETS, "{place}");
        let halves = t
            .aggregate(0u64.., "value", Aggregate::Count, Some(2))
            .await
            .unwrap();
        assert_eq!(halves.num_rows() as u64, rows.div_ceil(2), "{place}");
        db.checkpoint().await.unwrap();
    }
    db.close().await.unwrap();
}

#[tokio::test]
async fn aggregates_and_buckets_over_memtables_and_segments() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::builder()
        .path(dir.path())
        .memtable_bytes(16 * 1024)
        .build()
        .await
        .unwrap();
    let schema = Schema::new(vec![Field::new("v", DataType::Float64, false)]);
    let t = db
        .create_table(
            "ts",
            KeyType::Timestamp(TimeUnit::Microsecond),
            Some(schema.clone()),
        )
        .await
        .unwrap();
    let out_schema = Arc::new(Schema::new(vec![
        Field::new(
            "key",
            DataType::Timestamp(ArrowUnit::Microsecond, None),
            false,
        ),
        Field::new("v", DataType::Float64, false),
    ]));
    // 0..1000 in ten batches, half flushed, then a deletion.
    for chunk in 0..10i64 {
        let keys: Vec<i64> = (chunk * 100..chunk * 100 + 100).collect();
        let vs: Vec<f64> = keys.iter().map(|&k| k as f64).collect();
        let batch = RecordBatch::try_new(
            Arc::clone(&out_schema),
            vec![
                Arc::new(TimestampMicrosecondArray::from(keys)) as ArrayRef,
                Arc::new(Float64Array::from(vs)),
            ],
        )
        .unwrap();
        t.put_batch(&batch, WriteOptions::BUFFERED).await.unwrap();
        if chunk == 4 {
            db.checkpoint().await.unwrap();
        }
    }
    t.delete_range(100i64..200, WriteOptions::BUFFERED)
        .await
        .unwrap();
    let expected_sum: f64 = (0..1000).filter(|k| !(100..200).contains(k)).sum::<i64>() as f64;
    let sum = t
        .aggregate(i64::MIN.., "v", Aggregate::Sum, None)
        .await
        .unwrap();
    assert_eq!(
        sum.column(0).as_primitive::<Float64Type>().value(0),
        expected_sum
    );
    let count = t
        .aggregate(0i64..500, "v", Aggregate::Count, None)
        .await
        .unwrap();
    assert_eq!(count.column(0).as_primitive::<UInt64Type>().value(0), 400);
    let per_bucket = t
        .aggregate(0i64..1000, "v", Aggregate::Max, Some(250))
        .await
        .unwrap();
    assert_eq!(per_bucket.schema().field(0).name(), "bucket");
    let starts: Vec<i64> = per_bucket.column(0).to_data().buffers()[0]
        .typed_data::<i64>()
        .to_vec();
    assert_eq!(starts, [0, 250, 500, 750]);
    let maxes: Vec<f64> = per_bucket
        .column(1)
        .as_primitive::<Float64Type>()
        .values()
        .to_vec();
    assert_eq!(maxes, [249.0, 499.0, 749.0, 999.0]);
    let avg = t
        .aggregate(0i64..=2, "v", Aggregate::Avg, None)
        .await
        .unwrap();
    assert_eq!(avg.column(0).as_primitive::<Float64Type>().value(0), 1.0);
    let empty = t
        .aggregate(5000i64.., "v", Aggregate::Min, None)
        .await
        .unwrap();
    assert!(empty.column(0).is_null(0));
    assert!(matches!(
        t.aggregate(0i64.., "v", Aggregate::Sum, Some(0)).await,
        Err(Error::BadInput(_))
    ));
    assert!(matches!(
        t.aggregate(0i64.., "nope", Aggregate::Sum, None).await,
        Err(Error::BadInput(_))
    ));

    // Explain: the flushed segments, pruned by range.
    let plan = t.explain(0i64..10).unwrap();
    assert!(plan.segments_total >= 1);
    assert_eq!(
        plan.segments_total,
        plan.segments.len() + plan.segments_pruned
    );
    assert!(plan.segments.iter().all(|s| s.rows_in_range <= 10));
    let far = t.explain(10_000i64..20_000).unwrap();
    assert_eq!(far.segments.len(), 0);
    assert_eq!(far.rows_to_scan, 0);
    db.close().await.unwrap();
}

/// Every aggregate function, with and without buckets, forward over negative and positive keys,
/// on a nullable integer column and a string column, matches a fold of the rows written: rows
/// in segments, in memtables, rewritten in a memtable over a segment's, deleted one by one and
/// by a range.
#[tokio::test]
async fn aggregates_match_a_fold_of_the_rows_written() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::builder()
        .path(dir.path())
        .memtable_bytes(16 * 1024)
        .build()
        .await
        .unwrap();
    let schema = Schema::new(vec![
        Field::new("n", DataType::Int32, true),
        Field::new("s", DataType::Utf8, true),
    ]);
    let t = db
        .create_table("m", KeyType::I64, Some(schema))
        .await
        .unwrap();
    // Keys -600..600 step 3; `n` null every 5th key, `s` null every 4th; the first half is
    // flushed to segments, the rest stays in memtables; then keys -450..=-363 of the flushed
    // half are written again in the memtable with other values (every 5th key's still null),
    // one key is deleted and keys 300..=330 are deleted by a range.
    let keys: Vec<i64> = (-600..600).step_by(3).collect();
    let written = |k: i64, again: bool| {
        (k % 5 != 0).then_some((k * 7 % 101) as i32 + if again { 1000 } else { 0 })
    };
    let rewritten = |k: i64| (-450..=-363).contains(&k);
    let n = |k: i64| written(k, rewritten(k));
    let s = |k: i64| (k % 4 != 0).then(|| format!("s{k}"));
    let batches = keys
        .chunks(50)
        .map(|chunk| (chunk.to_vec(), false))
        .chain(std::iter::once((
            keys.iter().copied().filter(|&k| rewritten(k)).collect(),
            true,
        )));
    for (i, (chunk, again)) in batches.enumerate() {
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("key", DataType::Int64, false),
                Field::new("n", DataType::Int32, true),
                Field::new("s", DataType::Utf8, true),
            ])),
            vec![
                Arc::new(Int64Array::from(chunk.to_vec())) as ArrayRef,
                Arc::new(arrow_array::Int32Array::from(
                    chunk.iter().map(|&k| written(k, again)).collect::<Vec<_>>(),
                )),
                Arc::new(StringArray::from(
                    chunk.iter().map(|&k| s(k)).collect::<Vec<_>>(),
                )),
            ],
        )
        .unwrap();
        t.put_batch(&batch, WriteOptions::BUFFERED).await.unwrap();
        if i == 3 {
            db.checkpoint().await.unwrap();
        }
    }
    t.delete(Key::I64(-3), WriteOptions::BUFFERED)
        .await
        .unwrap();
    t.delete_range(300i64..=330, WriteOptions::BUFFERED)
        .await
        .unwrap();
    let live: Vec<i64> = keys
        .iter()
        .copied()
        .filter(|&k| k != -3 && !(300..=330).contains(&k))
        .collect();

    for (first, last) in [
        (-600, 600),
        (-500, -400),
        (-100, 100),
        (-7, -1),
        (10, 10),
        (290, 340),
        (598, 700),
    ] {
        for bucket in [None, Some(1u64), Some(7), Some(250)] {
            for function in [
                Aggregate::Count,
                Aggregate::Sum,
                Aggregate::Min,
                Aggregate::Max,
                Aggregate::Avg,
            ] {
                let ctx = format!("{function:?} over {first}..={last}, bucket {bucket:?}");
                let got = t
                    .aggregate(first..=last, "n", function, bucket)
                    .await
                    .unwrap();
                // The expected rows: per bucket start, the non-null values.
                let mut groups: std::collections::BTreeMap<i64, Vec<f64>> = Default::default();
                for &k in live.iter().filter(|&&k| first <= k && k <= last) {
                    let start = bucket.map_or(0, |w| k.div_euclid(w as i64) * w as i64);
                    // A bucket appears once it holds a value.
                    if let Some(v) = n(k) {
                        groups.entry(start).or_default().push(f64::from(v));
                    }
                }
                if bucket.is_none() {
                    groups.entry(0).or_default();
                }
                let fold = |values: &[f64]| -> Option<f64> {
                    match function {
                        Aggregate::Count => Some(values.len() as f64),
                        Aggregate::Sum => Some(values.iter().sum()),
                        Aggregate::Min => values.iter().copied().reduce(f64::min),
                        Aggregate::Max => values.iter().copied().reduce(f64::max),
                        _ => (!values.is_empty())
                            .then(|| values.iter().sum::<f64>() / values.len() as f64),
                    }
                };
                let expected: Vec<(i64, Option<f64>)> =
                    groups.iter().map(|(&k, v)| (k, fold(v))).collect();
                let column = got.num_columns() - 1;
                let values: Vec<Option<f64>> = (0..got.num_rows())
                    .map(|i| {
                        let c = got.column(column);
                        if c.is_null(i) {
                            None
                        } else if function == Aggregate::Count {
                            Some(c.as_primitive::<UInt64Type>().value(i) as f64)
                        } else {
                            Some(c.as_primitive::<Float64Type>().value(i))
                        }
                    })
                    .collect();
                let starts: Vec<i64> = match bucket {
                    None => vec![0],
                    Some(_) => got.column(0).as_primitive::<Int64Type>().values().to_vec(),
                };
                let got: Vec<(i64, Option<f64>)> = starts.into_iter().zip(values).collect();
                assert_eq!(got, expected, "{ctx}");
            }
        }
    }
    // A string column can be counted, not summed.
    let count = t
        .aggregate(-600i64.., "s", Aggregate::Count, None)
        .await
        .unwrap();
    let strings = live.iter().filter(|&&k| s(k).is_some()).count() as u64;
    assert_eq!(
        count.column(0).as_primitive::<UInt64Type>().value(0),
        strings
    );
    for function in [Aggregate::Sum, Aggregate::Min, Aggregate::Avg] {
        assert!(matches!(
            t.aggregate(-600i64.., "s", function, None).await,
            Err(Error::BadInput(_))
        ));
    }
}

/// Buckets at the ends of the key types — the bucket holding `i64::MIN` starts below it
/// whenever the width does not divide 2^63 (labelled `i64::MIN`, its rows grouped right), and
/// the last bucket of `u64` keys ends past `u64::MAX` — and NaN values: the memtable's fold and
/// the segments' give what `docs/api.md` says.
#[tokio::test]
async fn buckets_at_the_key_types_ends_and_nan_values_aggregate_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).await.unwrap();
    let x = Schema::new(vec![Field::new("x", DataType::Float64, true)]);
    let signed = db
        .create_table("signed", KeyType::I64, Some(x.clone()))
        .await
        .unwrap();
    let unsigned = db
        .create_table("unsigned", KeyType::U64, Some(x))
        .await
        .unwrap();
    let nan = f64::NAN;
    let rows = [
        (i64::MIN, 1.0),
        (i64::MIN + 7, 2.0),
        (i64::MIN + 8, nan),
        (i64::MIN + 9, 4.0),
        (-1, nan),
        (0, 5.0),
        (i64::MAX, 6.0),
    ];
    for (key, x) in rows {
        signed
            .put(key, &[Value::Float(x)], WriteOptions::BUFFERED)
            .await
            .unwrap();
    }
    for key in [0, u64::MAX - 1, u64::MAX] {
        unsigned
            .put(key, &[Value::Float(1.0)], WriteOptions::BUFFERED)
            .await
            .unwrap();
    }
    let counts = |batch: &RecordBatch| -> Vec<u64> {
        batch
            .column(1)
            .as_primitive::<UInt64Type>()
            .values()
            .to_vec()
    };
    let one = |batch: &RecordBatch| batch.column(0).as_primitive::<Float64Type>().value(0);
    for place in ["memtable", "segments"] {
        if place == "segments" {
            db.checkpoint().await.unwrap();
        }
        for (width, labels, count) in [
            (
                10,
                vec![i64::MIN, i64::MIN + 8, -10, 0, i64::MAX - 7],
                vec![2, 2, 1, 1, 1],
            ),
            (1 << 63, vec![i64::MIN, 0], vec![5, 2]),
            (u64::MAX, vec![i64::MIN, 0], vec![5, 2]),
        ] {
            let got = signed
                .aggregate(i64::MIN..=i64::MAX, "x", Aggregate::Count, Some(width))
                .await
                .unwrap();
            let starts = got.column(0).as_primitive::<Int64Type>().values().to_vec();
            assert_eq!((starts, counts(&got)), (labels, count), "{place}, {width}");
        }
        for (width, labels, count) in [
            (10, vec![0, u64::MAX - 5], vec![1, 2]),
            (u64::MAX, vec![0, u64::MAX], vec![2, 1]),
        ] {
            let got = unsigned
                .aggregate(0u64..=u64::MAX, "x", Aggregate::Count, Some(width))
                .await
                .unwrap();
            let starts = got.column(0).as_primitive::<UInt64Type>().values().to_vec();
            assert_eq!((starts, counts(&got)), (labels, count), "{place}, {width}");
        }
        // A NaN is a value: counted, poisoning sums and averages, passed over by min and max
        // unless every value is NaN.
        let all = i64::MIN..=i64::MAX;
        let count = signed
            .aggregate(all.clone(), "x", Aggregate::Count, None)
            .await
            .unwrap();
        assert_eq!(count.column(0).as_primitive::<UInt64Type>().value(0), 7);
        for function in [Aggregate::Sum, Aggregate::Avg] {
            let got = signed.aggregate(all.clone(), "x", function, None).await;
            assert!(one(&got.unwrap()).is_nan(), "{place}, {function:?}");
        }
        for (function, expected) in [(Aggregate::Min, 1.0), (Aggregate::Max, 6.0)] {
            let got = signed.aggregate(all.clone(), "x", function, None).await;
            assert_eq!(one(&got.unwrap()), expected, "{place}, {function:?}");
        }
        for (function, key) in [(Aggregate::Min, i64::MIN + 8), (Aggregate::Max, -1)] {
            let got = signed.aggregate(key..=key, "x", function, None).await;
            assert!(one(&got.unwrap()).is_nan(), "{place}, {function:?}");
        }
    }
    db.close().await.unwrap();
}

#[tokio::test]
async fn a_dropped_table_stays_gone_and_a_new_one_of_its_name_starts_empty() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).await.unwrap();
    let old = db.create_table("t", KeyType::U64, None).await.unwrap();
    old.put_value(1u64, "old", WriteOptions::DURABLE)
        .await
        .unwrap();
    db.drop_table("t").await.unwrap();
    assert!(matches!(
        old.get_value(1u64).await,
        Err(Error::UnknownTable(_))
    ));
    assert!(matches!(
        db.drop_table("t").await,
        Err(Error::UnknownTable(_))
    ));
    let new = db.create_table("t", KeyType::U64, None).await.unwrap();
    assert_eq!(new.get_value(1u64).await.unwrap(), None);
    new.put_value(2u64, "new", WriteOptions::DURABLE)
        .await
        .unwrap();
    db.close().await.unwrap();
    // The old table's WAL records are not replayed into the new one.
    let db = Db::open(dir.path()).await.unwrap();
    assert_eq!(db.list_tables(), ["t"]);
    let t = db.table("t").unwrap();
    assert_eq!(t.get_value(1u64).await.unwrap(), None);
    assert_eq!(t.get_value(2u64).await.unwrap().unwrap(), "new");
    db.close().await.unwrap();
}

#[tokio::test]
async fn writes_to_a_dropped_table_are_refused_and_append_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).await.unwrap();
    let old = db.create_table("old", KeyType::U64, None).await.unwrap();
    let kept = db.create_table("kept", KeyType::U64, None).await.unwrap();
    old.put_value(1u64, "a", WriteOptions::DURABLE)
        .await
        .unwrap();
    // A batch made before the drop and committed after it.
    let mut batch = db.batch();
    batch.put_value(&kept, 7u64, "k").unwrap();
    batch.put_value(&old, 2u64, "b").unwrap();
    let mut txn = db.begin();
    txn.put_value(&old, 3u64, "c").unwrap();
    db.drop_table("old").await.unwrap();
    let before = db.snapshot().lsn();

    let refused = |result: omendb_core::Result<u64>| match result {
        Err(Error::UnknownTable(name)) => assert_eq!(name, "old"),
        other => panic!("expected UnknownTable(\"old\"), got {other:?}"),
    };
    refused(old.put_value(4u64, "d", WriteOptions::DURABLE).await);
    refused(old.delete(1u64, WriteOptions::BUFFERED).await);
    refused(old.delete_range(0u64..10, WriteOptions::DURABLE).await);
    // Also a write of nothing: an empty range.
    refused(old.delete_range(5u64..5, WriteOptions::DURABLE).await);
    refused(db.write(batch, WriteOptions::DURABLE).await);
    refused(txn.commit(WriteOptions::DURABLE).await);
    assert_eq!(db.snapshot().lsn(), before, "a refused write took an LSN");
    // The refused batch's write to a live table was not applied either: all or nothing.
    assert_eq!(kept.get_value(7u64).await.unwrap(), None);
    db.close().await.unwrap();

    let db = Db::open(dir.path()).await.unwrap();
    assert_eq!(db.list_tables(), ["kept"]);
    assert_eq!(db.snapshot().lsn(), before);
    db.close().await.unwrap();
}

#[tokio::test]
async fn a_table_of_another_database_is_refused_by_writes_and_reads() {
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let a = Db::open(dir_a.path()).await.unwrap();
    let b = Db::open(dir_b.path()).await.unwrap();
    // `a`'s third table has an id `b` never gave out; `b`'s only table shares `a`'s first id.
    let a_first = a.create_table("first", KeyType::U64, None).await.unwrap();
    a.create_table("second", KeyType::U64, None).await.unwrap();
    let a_third = a.create_table("third", KeyType::U64, None).await.unwrap();
    let b_only = b.create_table("only", KeyType::U64, None).await.unwrap();
    b_only
        .put_value(1u64, "b's", WriteOptions::DURABLE)
        .await
        .unwrap();
    let before = b.snapshot().lsn();

    let foreign = |what: &str, result: omendb_core::Result<()>| match result {
        Err(Error::BadInput(message)) => {
            assert!(message.contains("another database"), "{what}: {message}")
        }
        other => panic!("{what}: expected BadInput, got {other:?}"),
    };
    for table in [&a_first, &a_third] {
        let mut batch = b.batch();
        foreign("batch put", batch.put_value(table, 1u64, "a's").map(drop));
        foreign("batch delete", batch.delete(table, 1u64).map(drop));
        foreign("batch range", batch.delete_range(table, 0u64..9).map(drop));
        assert!(batch.is_empty());
        let mut txn = b.begin();
        foreign("transaction put", txn.put_value(table, 1u64, "a's"));
        foreign(
            "transaction get",
            txn.get_value(table, 1u64).await.map(drop),
        );
        let snapshot = b.snapshot();
        foreign(
            "snapshot get",
            snapshot.get_value(table, 1u64).await.map(drop),
        );
        foreign(
            "snapshot scan",
            snapshot
                .scan(table, 0u64.., ScanOptions::default())
                .map(drop),
        );
    }
    // A batch `a` made, of `a`'s table, written through `b`: refused whole (its rows, checked
    // against `a`'s tables, landed in `b`'s table of the same id).
    let mut a_batch = a.batch();
    a_batch.put_value(&a_first, 1u64, "a's").unwrap();
    foreign(
        "another database's batch",
        b.write(a_batch, WriteOptions::DURABLE).await.map(drop),
    );
    assert_eq!(b.snapshot().lsn(), before, "a refused write took an LSN");
    assert_eq!(b_only.get_value(1u64).await.unwrap().unwrap(), "b's");
    // A serializable transaction's scan of a foreign table is refused before its range is
    // noted as read: a later write to `b`'s table of the same id is no conflict for it.
    let mut txn = b.begin_with(Isolation::Serializable);
    let scanned = txn
        .scan_values(&a_first, 0u64.., ScanOptions::default(), |_, _| {
            ControlFlow::Continue(())
        })
        .await;
    foreign("serializable scan_values", scanned.map(drop));
    b_only
        .put_value(1u64, "b's", WriteOptions::DURABLE)
        .await
        .unwrap();
    txn.put_value(&b_only, 2u64, "txn").unwrap();
    txn.commit(WriteOptions::DURABLE).await.unwrap();
    b.close().await.unwrap();
    // Nothing of `a` reached `b`'s log: it replays.
    let b = Db::open(dir_b.path()).await.unwrap();
    assert_eq!(
        b.table("only")
            .unwrap()
            .get_value(1u64)
            .await
            .unwrap()
            .unwrap(),
        "b's"
    );
    b.close().await.unwrap();
    a.close().await.unwrap();
}

#[tokio::test]
async fn the_change_stream_lists_commits_in_order_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).await.unwrap();
    let t = db.create_table("kv", KeyType::U64, None).await.unwrap();
    let a = t.put_value(1u64, "a", WriteOptions::DURABLE).await.unwrap();
    let mut batch = db.batch();
    batch.put_value(&t, 2u64, "b").unwrap();
    batch.delete(&t, 1u64).unwrap();
    let b = db.write(batch, WriteOptions::DURABLE).await.unwrap();
    let c = t
        .delete_range(5u64..=9, WriteOptions::DURABLE)
        .await
        .unwrap();
    let changes: Vec<_> = db.changes(a).try_collect().await.unwrap();
    assert_eq!(changes.iter().map(|c| c.lsn).collect::<Vec<_>>(), [a, b, c]);
    assert_eq!(
        changes[1].writes,
        [
            ChangedRow::Put {
                table: "kv".into(),
                key: Key::U64(2),
                values: vec![Value::Bytes("b".into())]
            },
            ChangedRow::Delete {
                table: "kv".into(),
                key: Key::U64(1)
            },
        ]
    );
    assert!(matches!(
        &changes[2].writes[0],
        ChangedRow::DeleteRange {
            first: Key::U64(5),
            last: Key::U64(9),
            ..
        }
    ));
    let resumed: Vec<_> = db.changes(b + 1).try_collect().await.unwrap();
    assert_eq!(resumed.len(), 1);
    assert_eq!(resumed[0].lsn, c);
    let past_end: Vec<_> = db.changes(c + 1).try_collect().await.unwrap();
    assert!(past_end.is_empty());
    // Large records are read a few at a time (a read stops past 8 MiB of them), and the stream
    // carries on across the reads, in order.
    let big = vec![7u8; 900 << 10];
    let mut lsns = Vec::new();
    for key in 100..130u64 {
        lsns.push(
            t.put_value(key, big.clone(), WriteOptions::BUFFERED)
                .await
                .unwrap(),
        );
    }
    let changes: Vec<_> = db.changes(lsns[0]).try_collect().await.unwrap();
    assert_eq!(changes.iter().map(|c| c.lsn).collect::<Vec<_>>(), lsns);
    db.close().await.unwrap();
}

/// A flush truncates the WAL, but not the records after a live snapshot's LSN (a replica copies
/// the snapshot, then streams the changes after it) nor those a live change stream has yet to
/// read; with neither, the records go and the stream says so. A position beyond the log is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_and_change_streams_hold_the_log_through_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::builder()
        .path(dir.path())
        .wal_options(
            omendb_wal::WalOptions::default()
                .segment_bytes(1 << 20)
                .max_record_bytes(960 << 10),
        )
        .memtable_bytes(64 << 10)
        .limits(940 << 10, 950 << 10)
        .build()
        .await
        .unwrap();
    let t = db.create_table("kv", KeyType::U64, None).await.unwrap();
    let put = |key: u64, bytes: usize| {
        let t = t.clone();
        async move {
            t.put_value(key, vec![key as u8; bytes], WriteOptions::DURABLE)
                .await
                .unwrap()
        }
    };
    for key in 0..50 {
        put(key, 1 << 10).await;
    }
    let snapshot = db.snapshot();
    let held = snapshot.lsn() + 1;
    let mut lsns = Vec::new();
    for key in 50..2500 {
        lsns.push(put(key, 1 << 10).await);
    }
    db.checkpoint().await.unwrap();
    let streamed: Vec<u64> = db
        .changes(held)
        .map_ok(|change| change.lsn)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        streamed, lsns,
        "the records after the snapshot went with the flush"
    );

    // A stream partway through more than one read (8 MiB a read) keeps the rest through a flush.
    let mut big = Vec::new();
    for key in 2500..2530 {
        big.push(put(key, 900 << 10).await);
    }
    drop(snapshot);
    let mut stream = db.changes(big[0]);
    let first = stream.try_next().await.unwrap().unwrap();
    assert_eq!(first.lsn, big[0]);
    for key in 2530..2560 {
        put(key, 1 << 10).await;
    }
    db.checkpoint().await.unwrap();
    let rest: Vec<u64> = stream
        .map_ok(|change| change.lsn)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        rest,
        big[1..],
        "the records after the stream's position went with the flush"
    );

    // Held by nothing, the records before the flush go, and the stream says so.
    db.checkpoint().await.unwrap();
    put(3000, 1 << 10).await;
    db.checkpoint().await.unwrap();
    let gone = db.changes(held).try_collect::<Vec<_>>().await.unwrap_err();
    assert!(
        matches!(gone, Error::ChangesGone { requested, .. } if requested == held),
        "{gone}"
    );

    let last = put(3001, 1).await;
    let beyond = db
        .changes(last + 2)
        .try_collect::<Vec<_>>()
        .await
        .unwrap_err();
    assert!(matches!(beyond, Error::BadInput(_)), "{beyond}");
    assert!(
        db.changes(last + 1)
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
            .is_empty()
    );
    db.close().await.unwrap();
}

#[tokio::test]
async fn serializable_transactions_also_conflict_on_what_they_read() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).await.unwrap();
    let t = db.create_table("kv", KeyType::U64, None).await.unwrap();
    t.put_value(1u64, "x", WriteOptions::DURABLE).await.unwrap();
    for isolation in [Isolation::Snapshot, Isolation::Serializable] {
        let mut txn = db.begin_with(isolation);
        assert_eq!(txn.get_value(&t, 1u64).await.unwrap().unwrap(), "x");
        // Another writer changes what the transaction read (not what it writes).
        t.put_value(1u64, "x", WriteOptions::DURABLE).await.unwrap();
        txn.put_value(&t, 2u64, "y").unwrap();
        let committed = txn.commit(WriteOptions::DURABLE).await;
        match isolation {
            Isolation::Snapshot => assert!(committed.is_ok()),
            _ => assert!(matches!(committed, Err(Error::Conflict { .. }))),
        }
    }
    // A range read conflicts with a write anywhere in the range, even after a flush.
    let mut txn = db.begin_with(Isolation::Serializable);
    let seen: Vec<RecordBatch> = txn
        .scan(&t, 10u64..20, ScanOptions::default())
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert!(seen.is_empty());
    t.put_value(15u64, "z", WriteOptions::DURABLE)
        .await
        .unwrap();
    db.checkpoint().await.unwrap();
    txn.put_value(&t, 3u64, "w").unwrap();
    assert!(matches!(
        txn.commit(WriteOptions::DURABLE).await,
        Err(Error::Conflict { .. })
    ));
    assert_eq!(t.get_value(3u64).await.unwrap(), None);
    // So does a range lent by `scan_values`.
    let mut txn = db.begin_with(Isolation::Serializable);
    let seen = txn
        .scan_values(&t, 30u64..40, ScanOptions::default(), |_, _| {
            ControlFlow::Continue(())
        })
        .await
        .unwrap();
    assert_eq!(seen, 0);
    t.put_value(35u64, "z", WriteOptions::DURABLE)
        .await
        .unwrap();
    txn.put_value(&t, 4u64, "w").unwrap();
    assert!(matches!(
        txn.commit(WriteOptions::DURABLE).await,
        Err(Error::Conflict { .. })
    ));
    assert_eq!(t.get_value(4u64).await.unwrap(), None);
    db.close().await.unwrap();
}

#[tokio::test]
async fn a_transactions_scan_sees_its_writes_made_before_the_scan_not_after() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).await.unwrap();
    let t = db.create_table("kv", KeyType::U64, None).await.unwrap();
    t.put_value(5u64, "stored", WriteOptions::DURABLE)
        .await
        .unwrap();
    let mut txn = db.begin();
    txn.put_value(&t, 1u64, "a").unwrap();
    let one_row = ScanOptions {
        batch_rows: Some(1),
        ..ScanOptions::default()
    };
    let mut scan = txn.scan(&t, 0u64.., one_row.clone()).unwrap();
    let keys = |batch: &RecordBatch| -> Vec<u64> {
        batch
            .column(0)
            .as_primitive::<UInt64Type>()
            .values()
            .to_vec()
    };
    let first = scan.try_next().await.unwrap().unwrap();
    assert_eq!(keys(&first), [1]);
    // Writes after the scan opened: the next key, and a delete of a key it has yet to reach.
    // A scan that put each key's successor never ended.
    txn.put_value(&t, 2u64, "b").unwrap();
    txn.delete(&t, 5u64).unwrap();
    let rest: Vec<RecordBatch> = scan.try_collect().await.unwrap();
    let rest: Vec<u64> = rest.iter().flat_map(&keys).collect();
    assert_eq!(rest, [5]);
    // A scan opened now sees them.
    let now: Vec<RecordBatch> = txn
        .scan(&t, 0u64.., one_row)
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let now: Vec<u64> = now.iter().flat_map(keys).collect();
    assert_eq!(now, [1, 2]);
    txn.commit(WriteOptions::DURABLE).await.unwrap();
    db.close().await.unwrap();
}

#[tokio::test]
async fn a_second_open_of_a_directory_in_use_fails_and_leaves_the_first_working() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).await.unwrap();
    let t = db.create_table("kv", KeyType::U64, None).await.unwrap();
    t.put_value(1u64, "a", WriteOptions::DURABLE).await.unwrap();
    let second = Db::open(dir.path()).await;
    assert_eq!(second.unwrap_err().kind(), ErrorKind::Fatal);
    // The first still writes, flushes (a manifest publish) and changes tables.
    t.put_value(2u64, "b", WriteOptions::DURABLE).await.unwrap();
    db.checkpoint().await.unwrap();
    db.create_table("other", KeyType::U64, None).await.unwrap();
    assert_eq!(db.stats().failure, None);
    db.close().await.unwrap();
    let db = Db::open(dir.path()).await.unwrap();
    assert_eq!(
        db.table("kv")
            .unwrap()
            .get_value(2u64)
            .await
            .unwrap()
            .unwrap(),
        "b"
    );
    db.close().await.unwrap();
}

/// A write that would take a batch (or a transaction) past its limit is refused when it is
/// added, and changes nothing; it used to be refused only at the commit, after the writes
/// before it had grown the batch in memory without bound.
#[tokio::test]
async fn a_write_past_the_batch_limit_is_refused_when_added() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::builder()
        .path(dir.path())
        .limits(1024, 16 * 1024)
        .build()
        .await
        .unwrap();
    let t = db.create_table("kv", KeyType::U64, None).await.unwrap();
    let mut batch = db.batch();
    assert!(matches!(
        batch.put_value(&t, 100u64, vec![1u8; 2048]),
        Err(Error::TooLarge { what: "row", .. })
    ));
    let mut added = 0u64;
    let refused = loop {
        match batch.put_value(&t, added, vec![1u8; 512]) {
            Ok(_) => added += 1,
            Err(err) => break err,
        }
        assert!(added < 100, "a 16 KiB batch took 100 rows of 512 bytes");
    };
    assert!(matches!(
        refused,
        Error::TooLarge {
            what: "write batch",
            ..
        }
    ));
    // A 5-byte header, then 17 bytes and the row per put.
    assert_eq!(added, (16 * 1024 - 5) / (17 + 512));
    assert_eq!(batch.len() as u64, added);
    // Deletes take room too, until none fits; then a range delete does not either.
    let mut deletes = 0u64;
    let refused = loop {
        match batch.delete(&t, 10_000 + deletes) {
            Ok(_) => deletes += 1,
            Err(err) => break err,
        }
        assert!(deletes < 100, "deletes were never refused");
    };
    assert!(matches!(
        refused,
        Error::TooLarge {
            what: "write batch",
            ..
        }
    ));
    assert!(matches!(
        batch.delete_range(&t, 0u64..5),
        Err(Error::TooLarge {
            what: "write batch",
            ..
        })
    ));
    let rows = arrow_array::RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("key", DataType::UInt64, false),
            Field::new("value", DataType::Binary, false),
        ])),
        vec![
            Arc::new(arrow_array::UInt64Array::from(vec![500u64])),
            Arc::new(arrow_array::BinaryArray::from(vec![&[7u8; 512][..]])),
        ],
    )
    .unwrap();
    let len = batch.len();
    assert!(matches!(
        batch.put_batch(&t, &rows),
        Err(Error::TooLarge {
            what: "write batch",
            ..
        })
    ));
    assert_eq!(batch.len(), len);
    // What was added commits.
    db.write(batch, WriteOptions::DURABLE).await.unwrap();
    assert_eq!(t.get_value(0u64).await.unwrap().unwrap().len(), 512);
    assert_eq!(t.get_value(added).await.unwrap(), None);

    let mut tx = db.begin();
    let mut written = 0u64;
    let refused = loop {
        match tx.put_value(&t, 1000 + written, vec![2u8; 512]) {
            Ok(()) => written += 1,
            Err(err) => break err,
        }
        assert!(
            written < 100,
            "a 16 KiB transaction took 100 rows of 512 bytes"
        );
    };
    assert!(matches!(
        refused,
        Error::TooLarge {
            what: "write batch",
            ..
        }
    ));
    // The refused write is not in the transaction's own view either.
    assert_eq!(tx.get_value(&t, 1000 + written).await.unwrap(), None);
    tx.commit(WriteOptions::DURABLE).await.unwrap();
    assert_eq!(t.get_value(1000u64).await.unwrap().unwrap().len(), 512);
    assert_eq!(t.get_value(1000 + written).await.unwrap(), None);
    assert_eq!(db.stats().failure, None);
    db.close().await.unwrap();
}

/// Found by review: segments return projected columns in table order, so a projection in
/// another order swapped values (or, naming a column twice, indexed past the end).
#[tokio::test]
async fn scan_projection_in_any_order_over_segments_and_memtables() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).await.unwrap();
    let schema = Schema::new(vec![
        Field::new("a", DataType::Int64, false),
        Field::new("b", DataType::Int64, false),
    ]);
    let t = db
        .create_table("ab", KeyType::U64, Some(schema))
        .await
        .unwrap();
    t.put(
        1u64,
        &[Value::Int(10), Value::Int(20)],
        WriteOptions::DURABLE,
    )
    .await
    .unwrap();
    db.checkpoint().await.unwrap();
    t.put(
        2u64,
        &[Value::Int(11), Value::Int(21)],
        WriteOptions::DURABLE,
    )
    .await
    .unwrap();
    let options = ScanOptions {
        projection: Some(vec!["b".into(), "a".into()]),
        ..ScanOptions::default()
    };
    let batches: Vec<RecordBatch> = t
        .scan(0u64.., options)
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let batch = arrow_select::concat::concat_batches(&batches[0].schema(), &batches).unwrap();
    assert_eq!(batch.schema().field(1).name(), "b");
    let b: Vec<i64> = batch
        .column(1)
        .as_primitive::<Int64Type>()
        .values()
        .to_vec();
    let a: Vec<i64> = batch
        .column(2)
        .as_primitive::<Int64Type>()
        .values()
        .to_vec();
    assert_eq!((a, b), (vec![10, 11], vec![20, 21]));
    let twice = ScanOptions {
        projection: Some(vec!["a".into(), "a".into()]),
        ..ScanOptions::default()
    };
    assert!(matches!(t.scan(0u64.., twice), Err(Error::BadInput(_))));
    db.close().await.unwrap();
}

#[tokio::test]
async fn a_scan_of_values_lends_signed_keys_in_order_and_refuses_what_it_cannot_lend() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).await.unwrap();
    let kv = db.create_table("signed", KeyType::I64, None).await.unwrap();
    for key in [-20i64, -10, -7, -1, 4] {
        kv.put_value(key, format!("v{key}"), WriteOptions::DURABLE)
            .await
            .unwrap();
    }
    db.checkpoint().await.unwrap();
    // After the flush: 0 and 9 in the memtable, -1 deleted there, the others in a segment.
    kv.put_value(0i64, "v0", WriteOptions::DURABLE)
        .await
        .unwrap();
    kv.put_value(9i64, "v9", WriteOptions::DURABLE)
        .await
        .unwrap();
    kv.delete(-1i64, WriteOptions::DURABLE).await.unwrap();
    let lend = |options: ScanOptions, stop: usize| {
        let kv = &kv;
        async move {
            let mut lent = Vec::new();
            let seen = kv
                .scan_values(-100i64.., options, |key, value| {
                    lent.push((key, String::from_utf8(value.to_vec()).unwrap()));
                    if lent.len() == stop {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                })
                .await
                .unwrap();
            assert_eq!(seen, lent.len());
            lent
        }
    };
    let row = |key: i64| (Key::I64(key), format!("v{key}"));
    assert_eq!(
        lend(ScanOptions::default(), usize::MAX).await,
        [row(-20), row(-10), row(-7), row(0), row(4), row(9)]
    );
    // One step of every row, -7 to -20 one pick of the segment's: its rows walked backwards.
    let reverse_in_one_step = ScanOptions {
        reverse: true,
        ..ScanOptions::default()
    };
    assert_eq!(
        lend(reverse_in_one_step, usize::MAX).await,
        [row(9), row(4), row(0), row(-7), row(-10), row(-20)]
    );
    let reverse = ScanOptions {
        reverse: true,
        batch_rows: Some(1),
        ..ScanOptions::default()
    };
    assert_eq!(
        lend(reverse.clone(), usize::MAX).await,
        [row(9), row(4), row(0), row(-7), row(-10), row(-20)]
    );
    // The visitor's break ends the scan at once, as a limit does.
    assert_eq!(lend(reverse, 2).await, [row(9), row(4)]);
    let limited = ScanOptions {
        limit: Some(3),
        ..ScanOptions::default()
    };
    assert_eq!(
        lend(limited, usize::MAX).await,
        [row(-20), row(-10), row(-7)]
    );

    // A projection, a typed table and a key of the wrong type are refused before any row.
    let mut visited = 0;
    let projected = ScanOptions {
        projection: Some(vec!["value".into()]),
        ..ScanOptions::default()
    };
    let refused = kv
        .scan_values(0i64.., projected, counting(&mut visited))
        .await;
    assert!(matches!(refused, Err(Error::BadInput(_))));
    let wrong_key = kv
        .scan_values(0u64.., ScanOptions::default(), counting(&mut visited))
        .await;
    assert!(matches!(wrong_key, Err(Error::KeyType(_))));
    let typed = db
        .create_table("metrics", KeyType::I64, Some(schema()))
        .await
        .unwrap();
    typed
        .put(1, &[Value::Float(1.0), Value::Null], WriteOptions::DURABLE)
        .await
        .unwrap();
    let not_kv = typed
        .scan_values(0i64.., ScanOptions::default(), counting(&mut visited))
        .await;
    assert!(matches!(not_kv, Err(Error::BadInput(_))));
    assert_eq!(visited, 0);
    // A `value` column declared nullable can hold a null, which has no bytes: such a table is
    // typed, its nulls read as `Value::Null`, and the key-value reads refuse it.
    let nullable = Schema::new(vec![Field::new("value", DataType::Binary, true)]);
    let maybe = db
        .create_table("maybe", KeyType::U64, Some(nullable))
        .await
        .unwrap();
    assert!(!maybe.def().is_key_value());
    maybe
        .put(2u64, &[Value::Null], WriteOptions::DURABLE)
        .await
        .unwrap();
    assert_eq!(maybe.get(2u64).await.unwrap(), Some(vec![Value::Null]));
    assert!(matches!(
        maybe.get_value(2u64).await,
        Err(Error::BadInput(_))
    ));
    // Nor do the key-value writes take it (the value went in, and `get_value` refused it),
    // in a batch or a transaction either; nothing is written.
    assert!(matches!(
        maybe
            .put_value(3u64, b"v".to_vec(), WriteOptions::DURABLE)
            .await,
        Err(Error::BadInput(m)) if m.contains("not a key-value table")
    ));
    let mut batch = db.batch();
    assert!(matches!(
        batch.put_value(&maybe, 3u64, b"v".to_vec()),
        Err(Error::BadInput(_))
    ));
    let mut txn = db.begin();
    assert!(matches!(
        txn.put_value(&maybe, 3u64, b"v".to_vec()),
        Err(Error::BadInput(_))
    ));
    txn.commit(WriteOptions::DURABLE).await.unwrap();
    assert_eq!(maybe.get(3u64).await.unwrap(), None);
    let refused = maybe
        .scan_values(0u64.., ScanOptions::default(), counting(&mut visited))
        .await;
    assert!(matches!(refused, Err(Error::BadInput(_))));
    assert_eq!(visited, 0);
    db.close().await.unwrap();
}

/// Segment rows on a cached page whose values have one width are lent from the page itself
/// (`Scan::lend`); others (rows across pages, pages not cached, a segment with tombstones) are
/// read first. Both, in one scan and in either direction, lend what the table holds: a scan of
/// two interleaved segments, a third with tombstones and the memtable, over pages of 64 rows,
/// first with nothing cached, then warm, with a cache that holds every page and with one that
/// holds a few.
#[tokio::test]
async fn a_scan_of_values_lends_cached_rows_in_either_direction() {
    for cache_bytes in [64 << 20, 16 << 10] {
        lend_cached_rows(cache_bytes).await;
    }
}

/// The first `limit` of `rows` as a scan of values lends them.
fn oracle<'a>(
    rows: impl Iterator<Item = (&'a u64, &'a String)>,
    limit: usize,
) -> Vec<(Key, String)> {
    rows.take(limit)
        .map(|(&k, v)| (Key::U64(k), v.clone()))
        .collect()
}

async fn lend_cached_rows(cache_bytes: u64) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::builder()
        .path(dir.path())
        .cache_bytes(cache_bytes)
        .idle_compaction(None)
        .segment_options(SegmentWriterOptions {
            rows_per_page: 64,
            pages_per_row_group: 8,
            ..SegmentWriterOptions::default()
        })
        .build()
        .await
        .unwrap();
    let kv = db.create_table("kv", KeyType::U64, None).await.unwrap();
    // Every value 16 bytes: the pages have one width.
    let value = |key: u64, version: u64| format!("{version:02}-{key:013}");
    let mut want = std::collections::BTreeMap::new();
    // Segment 1: even keys; segment 2: odd keys and every tenth key again; segment 3: more
    // versions and tombstones; then the memtable.
    let steps: [(Vec<u64>, Option<u64>); 4] = [
        ((0..3_000).step_by(2).collect(), Some(1)),
        (
            (1..3_000)
                .step_by(2)
                .chain((0..3_000).step_by(10))
                .collect(),
            Some(2),
        ),
        ((0..3_000).step_by(7).collect(), Some(3)),
        ((3..3_000).step_by(13).collect(), None),
    ];
    for (i, (keys, version)) in steps.into_iter().enumerate() {
        for key in keys {
            match version {
                Some(version) => {
                    kv.put_value(key, value(key, version), WriteOptions::BUFFERED)
                        .await
                        .unwrap();
                    want.insert(key, value(key, version));
                }
                None => {
                    kv.delete(key, WriteOptions::BUFFERED).await.unwrap();
                    want.remove(&key);
                }
            }
        }
        if i != 2 {
            db.checkpoint().await.unwrap();
        }
    }
    for key in (5..3_000).step_by(17) {
        kv.put_value(key, value(key, 4), WriteOptions::BUFFERED)
            .await
            .unwrap();
        want.insert(key, value(key, 4));
    }
    let scan = async |from: u64, limit: usize, reverse: bool| {
        let range = if reverse { 0..=from } else { from..=u64::MAX };
        let options = ScanOptions {
            reverse,
            limit: Some(limit),
            ..ScanOptions::default()
        };
        let mut lent = Vec::new();
        kv.scan_values(range, options, |key, value| {
            lent.push((key, String::from_utf8(value.to_vec()).unwrap()));
            ControlFlow::Continue(())
        })
        .await
        .unwrap();
        lent
    };
    for round in ["cold", "warm"] {
        for from in (0..3_100).step_by(97) {
            for limit in [1, 9, 60] {
                let forward = want.range(from..);
                let backward = want.range(..=from).rev();
                for (reverse, rows) in [
                    (false, oracle(forward, limit)),
                    (true, oracle(backward, limit)),
                ] {
                    assert_eq!(
                        scan(from, limit, reverse).await,
                        rows,
                        "{round}, cache of {cache_bytes}: {limit} rows from {from}, reverse {reverse}"
                    );
                }
            }
        }
    }
    db.close().await.unwrap();
}

/// A visitor for `scan_values` that counts the rows it is lent (none, where a scan is refused).
fn counting(visited: &mut usize) -> impl FnMut(Key, &[u8]) -> ControlFlow<()> + Send + '_ {
    move |_, _| {
        *visited += 1;
        ControlFlow::Continue(())
    }
}

/// Found by review: a grace period too long for object times made every background garbage
/// collection fail, which refused writes; it is refused at open instead.
#[tokio::test]
async fn a_grace_period_beyond_any_clock_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let opened = Db::builder()
        .path(dir.path())
        .gc_grace(std::time::Duration::MAX)
        .build()
        .await;
    assert!(matches!(opened, Err(Error::BadInput(_))));
}

/// An integer column's sum is exact before it is rounded to `f64` once: 2^53 then two ones sum to
/// 2^53 + 2 whichever order the rows come in and wherever they lie (memtable or segment). Summed
/// in `f64` each one was lost against 2^53, so the answer depended on the rows' order, and a
/// checkpoint could change it.
#[tokio::test]
async fn an_integer_sum_is_exact_wherever_its_rows_lie() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).await.unwrap();
    let schema = Schema::new(vec![Field::new("n", DataType::UInt64, false)]);
    let t = db
        .create_table("m", KeyType::U64, Some(schema))
        .await
        .unwrap();
    let big = 1u64 << 53;
    let put = |keys: Vec<u64>, values: Vec<u64>| {
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("key", DataType::UInt64, false),
                Field::new("n", DataType::UInt64, false),
            ])),
            vec![
                Arc::new(UInt64Array::from(keys)) as ArrayRef,
                Arc::new(UInt64Array::from(values)),
            ],
        )
        .unwrap()
    };
    // Key 1 holds 2^53 and is folded first; keys 2 and 3 hold one each.
    t.put_batch(&put(vec![1], vec![big]), WriteOptions::BUFFERED)
        .await
        .unwrap();
    let expected = (big + 2) as f64;
    for place in ["memtable", "the big value in a segment"] {
        if place != "memtable" {
            db.checkpoint().await.unwrap();
        }
        t.put_batch(&put(vec![2, 3], vec![1, 1]), WriteOptions::BUFFERED)
            .await
            .unwrap();
        for (function, want) in [(Aggregate::Sum, expected), (Aggregate::Avg, expected / 3.0)] {
            let got = t.aggregate(0u64.., "n", function, None).await.unwrap();
            let got = got.column(0).as_primitive::<Float64Type>().value(0);
            assert_eq!(got, want, "{function:?}, {place}");
        }
        let buckets = t
            .aggregate(0u64.., "n", Aggregate::Sum, Some(10))
            .await
            .unwrap();
        let got = buckets.column(1).as_primitive::<Float64Type>().value(0);
        assert_eq!(got, expected, "bucketed, {place}");
    }
    db.close().await.unwrap();
}

/// An aggregate over rows that need no wait (a memtable's) yields between stretches of rows, so a
/// caller's timeout or cancellation acts on it: it used to run to its end in its first poll,
/// holding a runtime worker past the server's request timeout and a client's disconnect.
#[tokio::test]
async fn an_aggregate_over_a_memtable_yields_between_stretches_of_rows() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).await.unwrap();
    let t = db.create_table("kv", KeyType::U64, None).await.unwrap();
    let rows = 200_000u64;
    let schema = Arc::new(Schema::new(vec![
        Field::new("key", DataType::UInt64, false),
        Field::new("value", DataType::Binary, false),
    ]));
    let keys: Vec<u64> = (0..rows).collect();
    let values = arrow_array::BinaryArray::from_iter_values(keys.iter().map(|_| b"v"));
    let batch = RecordBatch::try_new(
        schema,
        vec![Arc::new(UInt64Array::from(keys)), Arc::new(values)],
    )
    .unwrap();
    t.put_batch(&batch, WriteOptions::BUFFERED).await.unwrap();

    let mut aggregate = std::pin::pin!(t.aggregate(0u64.., "value", Aggregate::Count, None));
    let mut pending = 0;
    let answer = loop {
        match futures::poll!(&mut aggregate) {
            std::task::Poll::Ready(answer) => break answer.unwrap(),
            std::task::Poll::Pending => pending += 1,
        }
    };
    assert_eq!(answer.column(0).as_primitive::<UInt64Type>().value(0), rows);
    // A yield per stretch of an aggregate's batch of rows (64 Ki): at least three here.
    assert!(
        pending >= 3,
        "the aggregate yielded {pending} times over {rows} rows"
    );
    db.close().await.unwrap();
}

/// A scan's default batch is cut by its rows' bytes, not only their count: 8,192 rows of large
/// values made one batch of gigabytes. Rows of 128 KiB in segments come back in batches of
/// about 16 MiB, every row once and in order, in either direction, and a limit still holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_scan_batch_of_large_rows_holds_about_sixteen_mebibytes() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).await.unwrap();
    let kv = db.create_table("kv", KeyType::U64, None).await.unwrap();
    let value = |key: u64| vec![key as u8; 128 << 10];
    for key in 0..300u64 {
        kv.put_value(key, value(key), WriteOptions::BUFFERED)
            .await
            .unwrap();
    }
    db.checkpoint().await.unwrap();
    for reverse in [false, true] {
        let batches = scan_all(
            &kv,
            ScanOptions {
                reverse,
                ..ScanOptions::default()
            },
        )
        .await;
        assert!(batches.len() >= 2, "300 rows of 128 KiB in one batch");
        for batch in &batches {
            assert!(batch.num_rows() <= 128, "{} rows", batch.num_rows());
            // The rows' own bytes (a batch may share a cached page's larger buffer).
            let offsets = batch.column(1).as_binary::<i32>().value_offsets();
            let bytes = offsets[offsets.len() - 1] - offsets[0];
            assert!(bytes <= 16 << 20, "{bytes} bytes of rows in one batch");
        }
        let mut keys: Vec<u64> = Vec::new();
        for batch in &batches {
            let values = batch.column(1).as_binary::<i32>();
            for (i, key) in batch
                .column(0)
                .as_primitive::<UInt64Type>()
                .iter()
                .enumerate()
            {
                let key = key.unwrap();
                assert_eq!(values.value(i), &value(key)[..]);
                keys.push(key);
            }
        }
        let mut expected: Vec<u64> = (0..300).collect();
        if reverse {
            expected.reverse();
        }
        assert_eq!(keys, expected);
    }
    let limited = scan_all(
        &kv,
        ScanOptions {
            limit: Some(150),
            ..ScanOptions::default()
        },
    )
    .await;
    assert_eq!(
        limited.iter().map(RecordBatch::num_rows).sum::<usize>(),
        150
    );
    // A caller's own batch size is taken as given.
    let one = scan_all(
        &kv,
        ScanOptions {
            batch_rows: Some(300),
            ..ScanOptions::default()
        },
    )
    .await;
    assert_eq!(one.len(), 1);
    db.close().await.unwrap();
}

/// A transaction counts every write it took against the batch limit, even one a later range
/// deletion drops from its batch: its overlay keeps the write for its own reads, so counted by
/// the batch alone, a put and a range deletion over it, repeated, grew the overlay without
/// bound. A plain batch, which keeps nothing else, still gets the bytes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_counts_the_writes_a_range_deletion_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::builder()
        .path(dir.path())
        .limits(1024, 16 * 1024)
        .build()
        .await
        .unwrap();
    let t = db.create_table("kv", KeyType::U64, None).await.unwrap();
    let mut txn = db.begin();
    let mut rounds = 0u64;
    let refused = loop {
        let put = txn.put_value(&t, 1u64, vec![7u8; 512]);
        if let Err(err) = put.and_then(|()| txn.delete_range(&t, 1u64..=1)) {
            break err;
        }
        rounds += 1;
        assert!(
            rounds <= 30,
            "a 16 KiB transaction took {rounds} puts of 512 bytes"
        );
    };
    assert!(
        matches!(
            refused,
            Error::TooLarge {
                what: "write batch",
                ..
            }
        ),
        "{refused}"
    );
    // Each round: a put (17 bytes and the row) and a range deletion (21 bytes).
    assert!(rounds >= 25, "{rounds}");
    // What it took is still its own to read and commit.
    assert_eq!(txn.get_value(&t, 1u64).await.unwrap(), None);
    txn.commit(WriteOptions::DURABLE).await.unwrap();
    assert_eq!(t.get_value(1u64).await.unwrap(), None);

    // 500 rounds: 256 KiB of puts dropped, 10.5 KiB of range deletions kept.
    let mut batch = db.batch();
    for _ in 0..500 {
        batch.put_value(&t, 1u64, vec![7u8; 512]).unwrap();
        batch.delete_range(&t, 1u64..=1).unwrap();
    }
    db.write(batch, WriteOptions::DURABLE).await.unwrap();
    db.close().await.unwrap();
}

/// The default scan batch is sized by the projected columns: a scan of a table's small column
/// beside a large one reads its rows in full batches, a scan of every column in batches of
/// about 16 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projected_scan_sizes_its_batches_by_the_columns_it_reads() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).await.unwrap();
    let schema = Schema::new(vec![
        Field::new("n", DataType::UInt64, false),
        Field::new("blob", DataType::Binary, false),
    ]);
    let t = db
        .create_table("t", KeyType::U64, Some(schema))
        .await
        .unwrap();
    for key in 0..300u64 {
        t.put(
            key,
            &[
                Value::UInt(key * 3),
                Value::Bytes(vec![key as u8; 128 << 10].into()),
            ],
            WriteOptions::BUFFERED,
        )
        .await
        .unwrap();
    }
    db.checkpoint().await.unwrap();
    let rows_per_batch = |projection: Option<Vec<String>>| {
        let t = t.clone();
        async move {
            let options = ScanOptions {
                projection,
                ..ScanOptions::default()
            };
            let batches = scan_all(&t, options).await;
            batches
                .iter()
                .map(RecordBatch::num_rows)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(rows_per_batch(Some(vec!["n".to_owned()])).await, [300]);
    let whole = rows_per_batch(None).await;
    assert!(
        whole.len() >= 2 && whole.iter().all(|&n| n <= 128),
        "{whole:?}"
    );
    let blob = rows_per_batch(Some(vec!["blob".to_owned()])).await;
    assert!(
        blob.len() >= 2 && blob.iter().all(|&n| n <= 128),
        "{blob:?}"
    );
    db.close().await.unwrap();
}

/// Every batch of a scan of all of `table`'s keys with `options`.
async fn scan_all(table: &omendb_core::Table, options: ScanOptions) -> Vec<RecordBatch> {
    table
        .scan(0u64.., options)
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}
