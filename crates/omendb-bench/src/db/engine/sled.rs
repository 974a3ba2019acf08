//! sled 0.34: a log-structured B-tree with a page cache and a flusher thread.

use std::path::Path;

use anyhow::{Context, Result};
use sled::{Batch, Db, IVec, Tree};

use super::{Durability, Engine, Settings, Value, kv_key, ts_key, ts_value};

/// One sled database with the two trees (u64 keys stored big-endian).
pub(crate) struct Sled {
    db: Db,
    kv: Tree,
    ts: Tree,
    settings: Settings,
}

impl Sled {
    /// Flushes after a write when every write must be durable.
    fn after_write(&self) -> Result<()> {
        if self.settings.durability == Durability::Durable {
            self.db.flush()?;
        }
        Ok(())
    }
}

impl Engine for Sled {
    type Found = IVec;
    const NAME: &'static str = "sled";

    async fn open(dir: &Path, settings: Settings) -> Result<Self> {
        let db = sled::Config::new()
            .path(dir.join("sled"))
            .cache_capacity(settings.cache_bytes)
            .open()
            .context("opening sled")?;
        let kv = db.open_tree("kv")?;
        let ts = db.open_tree("ts")?;
        Ok(Sled {
            db,
            kv,
            ts,
            settings,
        })
    }

    fn describe(settings: &Settings) -> String {
        let durability = match settings.durability {
            Durability::Buffered => {
                "default: writes wait in sled's own buffer until its flusher (every 500 ms) \
                 writes and syncs them, so any crash loses up to that window"
            }
            Durability::Durable => "flush() (write and fsync) after each batch or update",
        };
        format!(
            "{durability}; page cache {} MiB (cache_capacity)",
            settings.cache_bytes >> 20
        )
    }

    async fn put_batch(&self, rows: &[(u64, Value)]) -> Result<()> {
        let mut batch = Batch::default();
        for (key, value) in rows {
            batch.insert(&key.to_be_bytes(), &value[..]);
        }
        self.kv.apply_batch(batch)?;
        self.after_write()
    }

    async fn put(&self, key: u64, value: &Value) -> Result<()> {
        self.kv.insert(key.to_be_bytes(), &value[..])?;
        self.after_write()
    }

    async fn get(&self, key: u64) -> Result<Option<IVec>> {
        Ok(self.kv.get(key.to_be_bytes())?)
    }

    async fn multi_get(&self, keys: &[u64]) -> Result<Vec<Option<IVec>>> {
        // sled 0.34 has no read snapshot; the keys are read one by one.
        keys.iter()
            .map(|k| Ok(self.kv.get(k.to_be_bytes())?))
            .collect()
    }

    async fn scan(
        &self,
        from: u64,
        limit: usize,
        visit: &mut (dyn FnMut(u64, &[u8]) -> Result<()> + Send),
    ) -> Result<usize> {
        let mut rows = 0;
        for entry in self.kv.range(from.to_be_bytes()..).take(limit) {
            let (key, value) = entry?;
            visit(kv_key(&key)?, &value)?;
            rows += 1;
        }
        Ok(rows)
    }

    async fn ts_append(&self, rows: &[(i64, f64)]) -> Result<()> {
        let mut batch = Batch::default();
        for &(key, value) in rows {
            batch.insert(&ts_key(key), &value.to_le_bytes());
        }
        self.ts.apply_batch(batch)?;
        self.after_write()
    }

    async fn ts_sum(&self, first: i64, last: i64) -> Result<f64> {
        let mut sum = 0.0;
        for entry in self.ts.range(ts_key(first)..=ts_key(last)) {
            sum += ts_value(&entry?.1)?;
        }
        Ok(sum)
    }

    async fn settle(&self) -> Result<String> {
        let bytes = self.db.flush()?;
        Ok(format!("flushed {bytes} buffered bytes"))
    }

    fn settings(&self) -> Settings {
        self.settings
    }

    async fn close(self) -> Result<()> {
        self.db.flush()?;
        // The last handle's drop joins the flusher thread and releases the lock.
        drop((self.kv, self.ts, self.db));
        Ok(())
    }
}
