//! `BTreeMap` behind a lock: the in-memory ceiling, with no durability and nothing on disk.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use anyhow::{Result, anyhow};

use super::{Engine, Settings, Value};

/// Two maps, each behind a read-write lock.
pub(crate) struct BTreeMapEngine {
    kv: RwLock<BTreeMap<u64, Value>>,
    ts: RwLock<BTreeMap<i64, f64>>,
    settings: Settings,
}

fn read<T>(lock: &RwLock<T>) -> Result<RwLockReadGuard<'_, T>> {
    lock.read().map_err(|_| anyhow!("a writer panicked"))
}

fn write<T>(lock: &RwLock<T>) -> Result<RwLockWriteGuard<'_, T>> {
    lock.write().map_err(|_| anyhow!("a writer panicked"))
}

impl Engine for BTreeMapEngine {
    type Found = Value;
    const NAME: &'static str = "btreemap";

    async fn open(_dir: &Path, settings: Settings) -> Result<Self> {
        Ok(BTreeMapEngine {
            kv: RwLock::new(BTreeMap::new()),
            ts: RwLock::new(BTreeMap::new()),
            settings,
        })
    }

    fn describe(_settings: &Settings) -> String {
        "in memory only: nothing survives any crash; no cache (everything is in memory)".to_owned()
    }

    async fn put_batch(&self, rows: &[(u64, Value)]) -> Result<()> {
        write(&self.kv)?.extend(rows.iter().copied());
        Ok(())
    }

    async fn put(&self, key: u64, value: &Value) -> Result<()> {
        write(&self.kv)?.insert(key, *value);
        Ok(())
    }

    async fn get(&self, key: u64) -> Result<Option<Value>> {
        Ok(read(&self.kv)?.get(&key).copied())
    }

    async fn multi_get(&self, keys: &[u64]) -> Result<Vec<Option<Value>>> {
        let kv = read(&self.kv)?;
        Ok(keys.iter().map(|k| kv.get(k).copied()).collect())
    }

    async fn scan(
        &self,
        from: u64,
        limit: usize,
        visit: &mut (dyn FnMut(u64, &[u8]) -> Result<()> + Send),
    ) -> Result<usize> {
        let kv = read(&self.kv)?;
        let mut rows = 0;
        for (key, value) in kv.range(from..).take(limit) {
            visit(*key, value)?;
            rows += 1;
        }
        Ok(rows)
    }

    async fn ts_append(&self, rows: &[(i64, f64)]) -> Result<()> {
        write(&self.ts)?.extend(rows.iter().copied());
        Ok(())
    }

    async fn ts_sum(&self, first: i64, last: i64) -> Result<f64> {
        Ok(read(&self.ts)?.range(first..=last).map(|(_, v)| v).sum())
    }

    async fn settle(&self) -> Result<String> {
        Ok("no background work".to_owned())
    }

    fn settings(&self) -> Settings {
        self.settings
    }

    async fn reopen(self, _dir: &Path) -> Result<Option<Self>> {
        Ok(None)
    }

    async fn close(self) -> Result<()> {
        Ok(())
    }
}
