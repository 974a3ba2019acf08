//! fjall: an LSM-tree with a journal, memtable flushes and compaction in worker threads.

use anyhow::{Context, Result};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable, Slice};
use std::path::Path;

use super::{Durability, Engine, Settings, Value, kv_key, settle_while, ts_key, ts_value};

/// One fjall database with the two keyspaces (u64 keys stored big-endian).
pub(crate) struct Fjall {
    db: Database,
    kv: Keyspace,
    ts: Keyspace,
    mode: PersistMode,
    settings: Settings,
}

impl Engine for Fjall {
    type Found = Slice;
    const NAME: &'static str = "fjall";

    async fn open(dir: &Path, settings: Settings) -> Result<Self> {
        let db = Database::builder(dir.join("fjall"))
            .cache_size(settings.cache_bytes)
            .open()
            .context("opening fjall")?;
        let kv = db.keyspace("kv", KeyspaceCreateOptions::default)?;
        let ts = db.keyspace("ts", KeyspaceCreateOptions::default)?;
        Ok(Fjall {
            db,
            kv,
            ts,
            mode: match settings.durability {
                Durability::Buffered => PersistMode::Buffer,
                Durability::Durable => PersistMode::SyncAll,
            },
            settings,
        })
    }

    fn describe(settings: &Settings) -> String {
        let durability = match settings.durability {
            Durability::Buffered => {
                "PersistMode::Buffer: the journal is written to the OS at each commit, not \
                 synced; a process crash loses nothing, an OS crash the unsynced tail"
            }
            Durability::Durable => "PersistMode::SyncAll: fsync per commit",
        };
        format!(
            "{durability}; block cache {} MiB (cache_size); other settings fjall's defaults",
            settings.cache_bytes >> 20
        )
    }

    async fn put_batch(&self, rows: &[(u64, Value)]) -> Result<()> {
        let mut batch = self.db.batch().durability(Some(self.mode));
        for (key, value) in rows {
            batch.insert(&self.kv, key.to_be_bytes(), value);
        }
        batch.commit()?;
        Ok(())
    }

    async fn put(&self, key: u64, value: &Value) -> Result<()> {
        let mut batch = self.db.batch().durability(Some(self.mode));
        batch.insert(&self.kv, key.to_be_bytes(), value);
        batch.commit()?;
        Ok(())
    }

    async fn get(&self, key: u64) -> Result<Option<Slice>> {
        Ok(self.kv.get(key.to_be_bytes())?)
    }

    async fn multi_get(&self, keys: &[u64]) -> Result<Vec<Option<Slice>>> {
        let snapshot = self.db.snapshot();
        keys.iter()
            .map(|k| Ok(snapshot.get(&self.kv, k.to_be_bytes())?))
            .collect()
    }

    async fn scan(
        &self,
        from: u64,
        limit: usize,
        visit: &mut (dyn FnMut(u64, &[u8]) -> Result<()> + Send),
    ) -> Result<usize> {
        let mut rows = 0;
        for guard in self.kv.range(from.to_be_bytes()..).take(limit) {
            let (key, value) = guard.into_inner()?;
            visit(kv_key(&key)?, &value)?;
            rows += 1;
        }
        Ok(rows)
    }

    async fn ts_append(&self, rows: &[(i64, f64)]) -> Result<()> {
        let mut batch = self.db.batch().durability(Some(self.mode));
        for &(key, value) in rows {
            batch.insert(&self.ts, ts_key(key), value.to_le_bytes());
        }
        batch.commit()?;
        Ok(())
    }

    async fn ts_sum(&self, first: i64, last: i64) -> Result<f64> {
        let mut sum = 0.0;
        for guard in self.ts.range(ts_key(first)..=ts_key(last)) {
            let (_, value) = guard.into_inner()?;
            sum += ts_value(&value)?;
        }
        Ok(sum)
    }

    async fn settle(&self) -> Result<String> {
        settle_while(|| Ok((self.db.outstanding_flushes() + self.db.active_compactions()) as u64))
            .await
    }

    fn settings(&self) -> Settings {
        self.settings
    }

    async fn close(self) -> Result<()> {
        self.db.persist(PersistMode::SyncAll)?;
        // Dropping every handle joins the worker threads and releases the lock.
        drop((self.kv, self.ts, self.db));
        Ok(())
    }
}
