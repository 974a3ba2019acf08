//! LMDB through heed: a copy-on-write B-tree in a memory map, one writer at a time, reads
//! straight from the map.

use std::ops::Bound;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use heed::types::Bytes;
use heed::{CommitOrAbort, Database, Env, EnvFlags, EnvOpenOptions};

use super::{Durability, Engine, Settings, Value, kv_key, ts_key, ts_value, value_of};

/// The most the map may grow to: address space only, the file grows as data is written.
const MAP_BYTES: usize = 1 << 40;

/// One LMDB environment with the two databases (u64 keys stored big-endian).
pub(crate) struct Lmdb {
    env: Env,
    kv: Database<'static, Bytes, Bytes>,
    ts: Database<'static, Bytes, Bytes>,
    settings: Settings,
    dir: PathBuf,
}

impl Lmdb {
    fn write(&self, fill: impl FnOnce(&mut heed::RwTxn<'_>) -> heed::Result<()>) -> Result<()> {
        let mut txn = self.env.write_txn()?;
        fill(&mut txn)?;
        txn.commit()?;
        Ok(())
    }
}

impl Engine for Lmdb {
    type Found = Value;
    const NAME: &'static str = "lmdb";

    // heed's opening calls are `unsafe` (LMDB cannot check that no other handle maps the
    // files); the two blocks below say why each holds.
    #[allow(unsafe_code)]
    async fn open(dir: &Path, settings: Settings) -> Result<Self> {
        let dir = dir.join("lmdb");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut options = EnvOpenOptions::new();
        options.map_size(MAP_BYTES).max_dbs(2);
        if settings.durability == Durability::Buffered {
            // SAFETY: NO_SYNC only skips the fsync at commit; without WRITE_MAP a crash of the
            // OS may lose the last transactions but leaves the database consistent.
            unsafe {
                options.flags(EnvFlags::NO_SYNC);
            }
        }
        // SAFETY: this process opens the environment once and nothing else writes its files.
        let env = unsafe { options.open(&dir) }.context("opening LMDB")?;
        let txn = env.write_txn()?;
        let (kv, ts) = env
            .create_databases_and_commit(txn, |dbs, txn| -> heed::Result<_> {
                let kv = dbs.create_database::<Bytes, Bytes>(txn, Some("kv"))?;
                let ts = dbs.create_database::<Bytes, Bytes>(txn, Some("ts"))?;
                Ok(CommitOrAbort::<_, ()>::Commit((kv, ts)))
            })?
            .unwrap_commit();
        Ok(Lmdb {
            env,
            kv,
            ts,
            settings,
            dir,
        })
    }

    fn describe(settings: &Settings) -> String {
        let durability = match settings.durability {
            Durability::Buffered => {
                "NO_SYNC: each commit is written to the OS, not synced; a process crash loses \
                 nothing, an OS crash the last transactions"
            }
            Durability::Durable => "fsync per commit (LMDB's default)",
        };
        format!(
            "{durability}; no cache of its own: reads come from the memory map, so the OS page \
             cache holds the data (the {} MiB budget does not apply); one write transaction per \
             batch or update",
            settings.cache_bytes >> 20
        )
    }

    async fn put_batch(&self, rows: &[(u64, Value)]) -> Result<()> {
        self.write(|txn| {
            for (key, value) in rows {
                self.kv.put(txn, &key.to_be_bytes(), value)?;
            }
            Ok(())
        })
    }

    async fn put(&self, key: u64, value: &Value) -> Result<()> {
        self.write(|txn| self.kv.put(txn, &key.to_be_bytes(), value))
    }

    async fn get(&self, key: u64) -> Result<Option<Value>> {
        let txn = self.env.read_txn()?;
        self.kv
            .get(&txn, &key.to_be_bytes())?
            .map(value_of)
            .transpose()
    }

    async fn multi_get(&self, keys: &[u64]) -> Result<Vec<Option<Value>>> {
        let txn = self.env.read_txn()?;
        keys.iter()
            .map(|k| {
                self.kv
                    .get(&txn, &k.to_be_bytes())?
                    .map(value_of)
                    .transpose()
            })
            .collect()
    }

    async fn scan(
        &self,
        from: u64,
        limit: usize,
        visit: &mut (dyn FnMut(u64, &[u8]) -> Result<()> + Send),
    ) -> Result<usize> {
        let txn = self.env.read_txn()?;
        let start = from.to_be_bytes();
        let range: (Bound<&[u8]>, Bound<&[u8]>) = (Bound::Included(&start[..]), Bound::Unbounded);
        let mut rows = 0;
        for entry in self.kv.range(&txn, &range)?.take(limit) {
            let (key, value) = entry?;
            visit(kv_key(key)?, value)?;
            rows += 1;
        }
        Ok(rows)
    }

    async fn ts_append(&self, rows: &[(i64, f64)]) -> Result<()> {
        self.write(|txn| {
            for &(key, value) in rows {
                self.ts.put(txn, &ts_key(key), &value.to_le_bytes())?;
            }
            Ok(())
        })
    }

    async fn ts_sum(&self, first: i64, last: i64) -> Result<f64> {
        let txn = self.env.read_txn()?;
        let (first, last) = (ts_key(first), ts_key(last));
        let range: (Bound<&[u8]>, Bound<&[u8]>) =
            (Bound::Included(&first[..]), Bound::Included(&last[..]));
        let mut sum = 0.0;
        for entry in self.ts.range(&txn, &range)? {
            sum += ts_value(entry?.1)?;
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
        self.env
            .force_sync()
            .with_context(|| format!("syncing {}", self.dir.display()))?;
        self.env.prepare_for_closing().wait();
        Ok(())
    }
}
