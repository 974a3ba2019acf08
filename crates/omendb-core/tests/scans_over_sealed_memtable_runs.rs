//! Scans whose keys come from a segment and from a memtable that has sealed sorted runs (it seals
//! every 16,384 versions): the memtable's runs are taken a stretch at a time, interleaved with the
//! segment's, forward and backward, with limits and small batches, and must give exactly what a
//! map of the same writes holds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

use std::collections::BTreeMap;

use arrow_array::cast::AsArray;
use arrow_array::types::UInt64Type;
use futures::TryStreamExt;
use omendb_core::{Db, KeyType, ScanOptions, Table, WriteOptions};

/// Keys below this; the writes below touch each of them at most a few times.
const SPAN: u64 = 60_000;

async fn write(db: &Db, kv: &Table, oracle: &mut BTreeMap<u64, Vec<u8>>, keys: &[u64], tag: u8) {
    for chunk in keys.chunks(10_000) {
        let mut batch = db.batch();
        for &key in chunk {
            let value = [&[tag][..], &key.to_le_bytes()].concat();
            batch.put_value(kv, key, value.clone()).unwrap();
            oracle.insert(key, value);
        }
        db.write(batch, WriteOptions::default()).await.unwrap();
    }
}

async fn scan(kv: &Table, from: u64, to: u64, options: ScanOptions) -> Vec<(u64, Vec<u8>)> {
    let batches: Vec<_> = kv
        .scan(from..=to, options)
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let mut rows = Vec::new();
    for batch in &batches {
        assert!(batch.num_rows() > 0, "a scan gave an empty batch");
        let keys = batch.column(0).as_primitive::<UInt64Type>();
        let values = batch.column(1).as_binary::<i32>();
        for i in 0..batch.num_rows() {
            rows.push((keys.value(i), values.value(i).to_vec()));
        }
    }
    rows
}

#[tokio::test]
async fn scans_interleave_sealed_memtable_runs_with_a_segment_in_either_direction() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path()).await.unwrap();
    let kv = db.create_table("kv", KeyType::U64, None).await.unwrap();
    let mut oracle = BTreeMap::new();

    // A segment of every third key, then the memtable: every second key (overwriting the
    // segment's multiples of six), every fifth, and deletions of every seventh, about 44K
    // versions, so two sealed runs and the live list.
    let thirds: Vec<u64> = (0..SPAN).step_by(3).collect();
    write(&db, &kv, &mut oracle, &thirds, b'a').await;
    db.checkpoint().await.unwrap();
    assert!(
        db.stats().segments >= 1,
        "the first writes were not flushed"
    );
    let halves: Vec<u64> = (0..SPAN).step_by(2).collect();
    write(&db, &kv, &mut oracle, &halves, b'b').await;
    let mut deletes = db.batch();
    for key in (0..SPAN).step_by(7) {
        deletes.delete(&kv, key).unwrap();
        oracle.remove(&key);
    }
    db.write(deletes, WriteOptions::default()).await.unwrap();
    let fifths: Vec<u64> = (1..SPAN).step_by(5).collect();
    write(&db, &kv, &mut oracle, &fifths, b'c').await;

    let expected = |from: u64, to: u64| -> Vec<(u64, Vec<u8>)> {
        oracle
            .range(from..=to)
            .map(|(&k, v)| (k, v.clone()))
            .collect()
    };
    let all = expected(0, u64::MAX);
    assert_eq!(scan(&kv, 0, u64::MAX, ScanOptions::default()).await, all);
    let mut backward = scan(
        &kv,
        0,
        u64::MAX,
        ScanOptions {
            reverse: true,
            ..ScanOptions::default()
        },
    )
    .await;
    backward.reverse();
    assert_eq!(backward, all);

    // Ranges from spread-out starts, with limits and batch sizes that end batches mid-stretch.
    for (i, from) in (0..SPAN).step_by(4_999).enumerate() {
        let to = from + 3_000 + (i as u64 * 37) % 500;
        for reverse in [false, true] {
            for (limit, batch_rows) in [(None, 64), (Some(1), 8192), (Some(137), 10), (None, 8192)]
            {
                let options = ScanOptions {
                    reverse,
                    limit,
                    batch_rows: Some(batch_rows),
                    ..ScanOptions::default()
                };
                let mut want = expected(from, to);
                if reverse {
                    want.reverse();
                }
                if let Some(limit) = limit {
                    want.truncate(limit);
                }
                assert_eq!(
                    scan(&kv, from, to, options).await,
                    want,
                    "{from}..={to} reverse {reverse} limit {limit:?} batches of {batch_rows}"
                );
            }
        }
    }
    db.close().await.unwrap();
}
