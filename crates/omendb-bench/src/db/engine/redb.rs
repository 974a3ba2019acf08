//! redb: a copy-on-write B-tree in one file, one writer at a time.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use redb::{Database, ReadableDatabase, TableDefinition};

use super::{Durability, Engine, Settings, Value, ts_key, ts_value};

const KV: TableDefinition<'static, u64, Value> = TableDefinition::new("kv");
/// Timestamps as [`ts_key`] bytes, values as little-endian f64 bytes.
const TS: TableDefinition<'static, [u8; 8], [u8; 8]> = TableDefinition::new("ts");

/// One redb file with the two tables.
pub(crate) struct Redb {
    db: Database,
    durability: redb::Durability,
    settings: Settings,
    path: PathBuf,
}

impl Redb {
    fn write(&self, fill: impl FnOnce(&redb::WriteTransaction) -> Result<()>) -> Result<()> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(self.durability)?;
        fill(&txn)?;
        txn.commit()?;
        Ok(())
    }
}

impl Engine for Redb {
    type Found = Value;
    const NAME: &'static str = "redb";

    async fn open(dir: &Path, settings: Settings) -> Result<Self> {
        let path = dir.join("data.redb");
        let db = Database::builder()
            .set_cache_size(usize::try_from(settings.cache_bytes)?)
            .create(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let txn = db.begin_write()?;
        txn.open_table(KV)?;
        txn.open_table(TS)?;
        txn.commit()?;
        Ok(Redb {
            db,
            durability: match settings.durability {
                Durability::Buffered => redb::Durability::None,
                Durability::Durable => redb::Durability::Immediate,
            },
            settings,
            path,
        })
    }

    fn describe(settings: &Settings) -> String {
        let durability = match settings.durability {
            Durability::Buffered => {
                "Durability::None commits: in this process's memory until a later durable commit \
                 or a clean close, so a process crash loses them"
            }
            Durability::Durable => "Durability::Immediate: fsync per commit",
        };
        format!(
            "{durability}; cache {} MiB (set_cache_size); one write transaction per batch or \
             update",
            settings.cache_bytes >> 20
        )
    }

    async fn put_batch(&self, rows: &[(u64, Value)]) -> Result<()> {
        self.write(|txn| {
            let mut kv = txn.open_table(KV)?;
            for (key, value) in rows {
                kv.insert(key, value)?;
            }
            Ok(())
        })
    }

    async fn put(&self, key: u64, value: &Value) -> Result<()> {
        self.write(|txn| {
            txn.open_table(KV)?.insert(key, value)?;
            Ok(())
        })
    }

    async fn get(&self, key: u64) -> Result<Option<Value>> {
        let txn = self.db.begin_read()?;
        let kv = txn.open_table(KV)?;
        Ok(kv.get(key)?.map(|v| v.value()))
    }

    async fn multi_get(&self, keys: &[u64]) -> Result<Vec<Option<Value>>> {
        let txn = self.db.begin_read()?;
        let kv = txn.open_table(KV)?;
        keys.iter()
            .map(|&k| Ok(kv.get(k)?.map(|v| v.value())))
            .collect()
    }

    async fn scan(
        &self,
        from: u64,
        limit: usize,
        visit: &mut (dyn FnMut(u64, &[u8]) -> Result<()> + Send),
    ) -> Result<usize> {
        let txn = self.db.begin_read()?;
        let kv = txn.open_table(KV)?;
        let mut rows = 0;
        for entry in kv.range(from..)?.take(limit) {
            let (key, value) = entry?;
            visit(key.value(), &value.value())?;
            rows += 1;
        }
        Ok(rows)
    }

    async fn ts_append(&self, rows: &[(i64, f64)]) -> Result<()> {
        self.write(|txn| {
            let mut ts = txn.open_table(TS)?;
            for &(key, value) in rows {
                ts.insert(ts_key(key), value.to_le_bytes())?;
            }
            Ok(())
        })
    }

    async fn ts_sum(&self, first: i64, last: i64) -> Result<f64> {
        let txn = self.db.begin_read()?;
        let ts = txn.open_table(TS)?;
        let mut sum = 0.0;
        for entry in ts.range(ts_key(first)..=ts_key(last))? {
            sum += ts_value(&entry?.1.value())?;
        }
        Ok(sum)
    }

    async fn settle(&self) -> Result<String> {
        Ok("no background work".to_owned())
    }

    fn settings(&self) -> Settings {
        self.settings
    }

    async fn close(self) -> Result<()> {
        // Makes the non-durable commits durable, as a clean shutdown does.
        let path = self.path.clone();
        let mut txn = self.db.begin_write()?;
        txn.set_durability(redb::Durability::Immediate)?;
        txn.commit()
            .with_context(|| format!("the final commit of {}", path.display()))?;
        drop(self.db);
        Ok(())
    }
}
