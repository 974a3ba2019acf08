//! RocksDB (the `rocksdb` crate, RocksDB built from source without compression, like OmenDB's
//! uncompressed segments): an LSM-tree with a WAL, flushes and compactions in background threads.

use anyhow::{Context, Result};
use rocksdb::{BlockBasedOptions, Cache, DB, Options, WriteBatch, WriteOptions};
use std::path::{Path, PathBuf};

use super::{
    Durability, Engine, Settings, Value, kv_key, settle_while, ts_key, ts_value, value_of,
};

/// The column family of the time-series table (the key-value table is the default one, which
/// needs no handle lookup per read).
const TS: &str = "ts";

/// One RocksDB database: the default column family holds the key-value table (u64 keys stored
/// big-endian), `ts` the time series.
pub(crate) struct RocksDb {
    db: DB,
    write: WriteOptions,
    settings: Settings,
    path: PathBuf,
}

impl RocksDb {
    fn ts(&self) -> Result<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(TS)
            .context("the ts column family is missing")
    }

    /// A running-work counter of RocksDB (`rocksdb.num-running-flushes` and the like).
    fn property(&self, name: &str) -> Result<u64> {
        Ok(self.db.property_int_value(name)?.unwrap_or(0))
    }
}

impl Engine for RocksDb {
    type Found = Value;
    const NAME: &'static str = "rocksdb";

    async fn open(dir: &Path, settings: Settings) -> Result<Self> {
        let path = dir.join("rocksdb");
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let cache = Cache::new_lru_cache(usize::try_from(settings.cache_bytes)?);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        // A Bloom filter of 10 bits per key, as RocksDB's tuning guide sets for point reads
        // (its defaults have none, which leaves a get probing every level).
        table.set_bloom_filter(10.0, false);
        options.set_block_based_table_factory(&table);
        let db = DB::open_cf(&options, &path, [TS])
            .with_context(|| format!("opening {}", path.display()))?;
        let mut write = WriteOptions::default();
        write.set_sync(settings.durability == Durability::Durable);
        Ok(RocksDb {
            db,
            write,
            settings,
            path,
        })
    }

    fn describe(settings: &Settings) -> String {
        let durability = match settings.durability {
            Durability::Buffered => {
                "WAL on, sync off (RocksDB's default): each write reaches the OS, not the disk; \
                 a process crash loses nothing, an OS crash the unsynced tail"
            }
            Durability::Durable => "WAL on, sync on: fsync per write batch",
        };
        format!(
            "{durability}; block cache {} MiB (LRU); Bloom filters of 10 bits per key; no \
             compression; other options RocksDB's defaults",
            settings.cache_bytes >> 20
        )
    }

    async fn put_batch(&self, rows: &[(u64, Value)]) -> Result<()> {
        let mut batch = WriteBatch::default();
        for (key, value) in rows {
            batch.put(key.to_be_bytes(), value);
        }
        self.db.write_opt(batch, &self.write)?;
        Ok(())
    }

    async fn put(&self, key: u64, value: &Value) -> Result<()> {
        self.db.put_opt(key.to_be_bytes(), value, &self.write)?;
        Ok(())
    }

    async fn get(&self, key: u64) -> Result<Option<Value>> {
        self.db
            .get_pinned(key.to_be_bytes())?
            .map(|v| value_of(&v))
            .transpose()
    }

    async fn multi_get(&self, keys: &[u64]) -> Result<Vec<Option<Value>>> {
        let keys: Vec<[u8; 8]> = keys.iter().map(|k| k.to_be_bytes()).collect();
        let default = self
            .db
            .cf_handle(rocksdb::DEFAULT_COLUMN_FAMILY_NAME)
            .context("the default column family is missing")?;
        self.db
            .batched_multi_get_cf(default, &keys, false)
            .into_iter()
            .map(|found| found?.map(|v| value_of(&v)).transpose())
            .collect()
    }

    async fn scan(
        &self,
        from: u64,
        limit: usize,
        visit: &mut (dyn FnMut(u64, &[u8]) -> Result<()> + Send),
    ) -> Result<usize> {
        let mut it = self.db.raw_iterator();
        it.seek(from.to_be_bytes());
        let mut rows = 0;
        while rows < limit
            && let (Some(key), Some(value)) = (it.key(), it.value())
        {
            visit(kv_key(key)?, value)?;
            rows += 1;
            it.next();
        }
        it.status()?;
        Ok(rows)
    }

    async fn ts_append(&self, rows: &[(i64, f64)]) -> Result<()> {
        let ts = self.ts()?;
        let mut batch = WriteBatch::default();
        for &(key, value) in rows {
            batch.put_cf(ts, ts_key(key), value.to_le_bytes());
        }
        self.db.write_opt(batch, &self.write)?;
        Ok(())
    }

    async fn ts_sum(&self, first: i64, last: i64) -> Result<f64> {
        let last = ts_key(last);
        let mut it = self.db.raw_iterator_cf(self.ts()?);
        it.seek(ts_key(first));
        let mut sum = 0.0;
        while let (Some(key), Some(value)) = (it.key(), it.value()) {
            if key > &last[..] {
                break;
            }
            sum += ts_value(value)?;
            it.next();
        }
        it.status()?;
        Ok(sum)
    }

    async fn settle(&self) -> Result<String> {
        settle_while(|| {
            Ok(self.property("rocksdb.num-running-flushes")?
                + self.property("rocksdb.num-running-compactions")?
                + self.property("rocksdb.compaction-pending")?
                + self.property("rocksdb.mem-table-flush-pending")?)
        })
        .await
    }

    fn settings(&self) -> Settings {
        self.settings
    }

    async fn close(self) -> Result<()> {
        self.db
            .flush_wal(true)
            .with_context(|| format!("syncing the WAL of {}", self.path.display()))?;
        // Dropping the handle waits for background work and closes the database.
        drop(self.db);
        Ok(())
    }
}
