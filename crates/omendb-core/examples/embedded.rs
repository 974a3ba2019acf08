//! OmenDB embedded as a key-value store: open a directory, write, read, scan, reopen.
//!
//! `cargo run -p omendb-core --example embedded [DIR]` (a temporary directory if none).

#![allow(clippy::print_stdout)] // an example shows its results

use futures::TryStreamExt;
use omendb_core::{Db, KeyType, Result, ScanOptions, WriteOptions};

/// Runs the example in `dir`; returns the values it read back, for the test that runs it.
pub(crate) async fn run(dir: &std::path::Path) -> Result<Vec<String>> {
    let db = Db::open(dir).await?;
    let users = match db.table("users") {
        Ok(table) => table,
        Err(_) => db.create_table("users", KeyType::U64, None).await?,
    };

    // Each write is acknowledged once the WAL has synced it (the default durability).
    users
        .put_value(1u64, "ada", WriteOptions::default())
        .await?;
    users
        .put_value(2u64, "grace", WriteOptions::default())
        .await?;
    users
        .put_value(3u64, "edsger", WriteOptions::default())
        .await?;
    users.delete(2u64, WriteOptions::default()).await?;

    // Several writes, across tables if need be, commit atomically.
    let mut batch = db.batch();
    batch.put_value(&users, 4u64, "barbara")?;
    batch.put_value(&users, 5u64, "donald")?;
    db.write(batch, WriteOptions::DURABLE).await?;

    let mut read = Vec::new();
    if let Some(name) = users.get_value(1u64).await? {
        read.push(String::from_utf8_lossy(&name).into_owned());
    }
    let rows: Vec<_> = users
        .scan(3u64..=5, ScanOptions::default())?
        .try_collect()
        .await?;
    for batch in rows {
        let names = batch
            .column(1)
            .as_any()
            .downcast_ref::<arrow_array::BinaryArray>();
        for name in names.into_iter().flatten().flatten() {
            read.push(String::from_utf8_lossy(name).into_owned());
        }
    }
    db.close().await?;

    // Reopening recovers everything acknowledged (here from the WAL).
    let db = Db::open(dir).await?;
    let again = db.table("users")?.get_value(5u64).await?;
    read.push(
        again
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default(),
    );
    db.close().await?;
    Ok(read)
}

#[allow(dead_code)] // the test that runs the example calls `run` instead
#[tokio::main]
async fn main() -> Result<()> {
    let temp = tempfile::tempdir().map_err(|e| omendb_core::Error::BadInput(e.to_string()))?;
    let dir = std::env::args()
        .nth(1)
        .map_or_else(|| temp.path().to_path_buf(), std::path::PathBuf::from);
    let read = run(&dir).await?;
    println!("read back: {read:?}");
    Ok(())
}
