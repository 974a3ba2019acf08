//! Readers, writers, transactions, flushes and compactions at once: no lost update among
//! transactions, snapshots that do not move, and reads that never see half a batch.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arrow_array::RecordBatch;
use arrow_array::cast::AsArray;
use futures::TryStreamExt;
use omendb_core::{Db, Error, KeyType, ScanOptions, Table, WriteOptions};

const COUNTER: u64 = 1_000_000;

async fn everything(
    stream: futures::stream::BoxStream<'static, omendb_core::Result<RecordBatch>>,
) -> Vec<(u64, Vec<u8>)> {
    let batches: Vec<RecordBatch> = stream.try_collect().await.unwrap();
    batches
        .iter()
        .flat_map(|b| {
            let keys = b
                .column(0)
                .as_primitive::<arrow_array::types::UInt64Type>()
                .clone();
            let values = b.column(1).as_binary::<i32>().clone();
            (0..b.num_rows())
                .map(move |i| (keys.value(i), values.value(i).to_vec()))
                .collect::<Vec<_>>()
        })
        .collect()
}

async fn increment(db: &Db, table: &Table) -> u64 {
    loop {
        let mut txn = db.begin();
        let current = txn
            .get_value(table, COUNTER)
            .await
            .unwrap()
            .map_or(0, |v| u64::from_le_bytes(v[..8].try_into().unwrap()));
        txn.put_value(table, COUNTER, (current + 1).to_le_bytes().to_vec())
            .unwrap();
        match txn.commit(WriteOptions::BUFFERED).await {
            Ok(_) => return current + 1,
            Err(Error::Conflict { .. }) => continue,
            Err(err) => panic!("commit: {err}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_writers_and_transactions_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::builder()
        .path(dir.path())
        .memtable_bytes(32 * 1024)
        .compaction_trigger(3)
        .build()
        .await
        .unwrap();
    let table = db.create_table("kv", KeyType::U64, None).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let increments = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();

    // Writers: each batch writes the same stamp to ten keys; a reader must never see a
    // mixture of stamps within one batch's keys.
    for writer in 0..2u64 {
        let (table, db, stop) = (table.clone(), db.clone(), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let mut stamp = 0u64;
            while !stop.load(Ordering::Relaxed) {
                stamp += 1;
                let mut batch = db.batch();
                for i in 0..10 {
                    batch
                        .put_value(&table, writer * 100 + i, stamp.to_le_bytes().to_vec())
                        .unwrap();
                }
                db.write(batch, WriteOptions::BUFFERED).await.unwrap();
            }
        }));
    }
    // Transactions incrementing one counter: none may be lost.
    for _ in 0..2 {
        let (table, db, stop, increments) = (
            table.clone(),
            db.clone(),
            Arc::clone(&stop),
            Arc::clone(&increments),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                increment(&db, &table).await;
                increments.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Flushes and compactions.
    {
        let (db, stop) = (db.clone(), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                db.checkpoint().await.unwrap();
                db.compact().await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    // Readers: atomic batches, and snapshots that read the same twice.
    let mut checks = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline {
        let snapshot = db.snapshot();
        let first = everything(
            snapshot
                .scan(&table, 0u64..1000, ScanOptions::default())
                .unwrap(),
        )
        .await;
        for writer in 0..2u64 {
            let stamps: Vec<&Vec<u8>> = first
                .iter()
                .filter(|(k, _)| k / 100 == writer)
                .map(|(_, v)| v)
                .collect();
            assert!(
                stamps.windows(2).all(|w| w[0] == w[1]),
                "a reader saw part of a batch: {stamps:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        let again = everything(
            snapshot
                .scan(&table, 0u64..1000, ScanOptions::default())
                .unwrap(),
        )
        .await;
        assert_eq!(first, again, "a snapshot moved");
        checks += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let counter = table.get_value(COUNTER).await.unwrap().unwrap();
    let counter = u64::from_le_bytes(counter[..8].try_into().unwrap());
    assert_eq!(
        counter,
        increments.load(Ordering::Relaxed),
        "an increment was lost"
    );
    assert!(
        counter > 10 && checks > 10,
        "too little happened: {counter} increments, {checks} checks"
    );
    assert!(db.stats().flushes > 0);
    db.close().await.unwrap();
}
