//! The engines `omendb-bench db` compares: OmenDB and, with the `peers` feature, the stores a user
//! would pick instead. Each one is driven through [`Engine`], so every engine runs exactly the
//! same workload code on the same keys, values, batches and durability.

use std::future::Future;
use std::path::Path;

use anyhow::Result;

#[cfg(feature = "peers")]
mod btreemap;
#[cfg(feature = "peers")]
mod fjall;
#[cfg(feature = "peers")]
mod lmdb;
pub(crate) mod omendb;
#[cfg(feature = "peers")]
mod redb;
#[cfg(feature = "peers")]
mod rocksdb;
#[cfg(feature = "peers")]
mod sled;

#[cfg(feature = "peers")]
pub(crate) use self::btreemap::BTreeMapEngine;
#[cfg(feature = "peers")]
pub(crate) use self::fjall::Fjall;
#[cfg(feature = "peers")]
pub(crate) use self::lmdb::Lmdb;
pub(crate) use self::omendb::OmenDb;
#[cfg(feature = "peers")]
pub(crate) use self::redb::Redb;
#[cfg(feature = "peers")]
pub(crate) use self::rocksdb::RocksDb;
#[cfg(feature = "peers")]
pub(crate) use self::sled::Sled;

/// Every engine name `--engine` accepts, OmenDB first.
pub(crate) const ALL: [&str; 7] = [
    "omendb", "redb", "fjall", "rocksdb", "lmdb", "sled", "btreemap",
];

/// Bytes of every value of the key-value table.
pub(crate) const VALUE_BYTES: usize = 16;
/// A value of the key-value table.
pub(crate) type Value = [u8; VALUE_BYTES];

/// When a write is acknowledged, the same choice for every engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Durability {
    /// Without waiting for an `fsync`: each engine's nearest mode, described by
    /// [`Engine::describe`].
    Buffered,
    /// After the write is on disk (`fsync` per batch or per update).
    Durable,
}

/// What every engine is opened with.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Settings {
    pub(crate) durability: Durability,
    /// The engine's block or page cache, for the engines that have one.
    pub(crate) cache_bytes: u64,
    /// OmenDB's memtable size (the peers keep their defaults).
    pub(crate) memtable_bytes: usize,
}

/// One engine under the workloads of `omendb-bench db`: a key-value table of u64 keys and
/// [`Value`]s, and a time-series table of i64 timestamps and f64 values. Peers that are
/// synchronous do their work inside the returned futures, on the benchmark's runtime.
pub(crate) trait Engine: Send + Sync + Sized + 'static {
    /// What a point read returns (the engine's own owned value type).
    type Found: AsRef<[u8]> + Send;

    /// The name of the engine's rows.
    const NAME: &'static str;

    /// Whether the engine's calls are asynchronous (they wait without holding a thread). The
    /// peers' are not: they do their work, fsyncs included, on the calling thread, so each of
    /// their concurrent clients gets a thread of its own (on the runtime's two workers, eight
    /// clients of a peer had at most two calls in flight, while OmenDB's eight waited in one
    /// group commit).
    const ASYNC: bool = false;

    /// Opens (or creates) the engine's files in `dir`.
    fn open(dir: &Path, settings: Settings) -> impl Future<Output = Result<Self>> + Send;

    /// What `settings` mean for this engine: what an acknowledged write survives, which cache
    /// the budget sizes, what else is configured.
    fn describe(settings: &Settings) -> String;

    /// What the last open recovered, if the engine reports it.
    fn recovery_note(&self) -> Option<String> {
        None
    }

    /// Writes `rows` (distinct keys) to the key-value table as one atomic batch.
    fn put_batch(&self, rows: &[(u64, Value)]) -> impl Future<Output = Result<()>> + Send;

    /// Writes one row of the key-value table.
    fn put(&self, key: u64, value: &Value) -> impl Future<Output = Result<()>> + Send;

    /// Reads one key of the key-value table.
    fn get(&self, key: u64) -> impl Future<Output = Result<Option<Self::Found>>> + Send;

    /// Reads `keys` of the key-value table at one snapshot, answers in order.
    fn multi_get(
        &self,
        keys: &[u64],
    ) -> impl Future<Output = Result<Vec<Option<Self::Found>>>> + Send;

    /// Visits up to `limit` rows of the key-value table from `from` on, in key order; returns
    /// how many it visited.
    fn scan(
        &self,
        from: u64,
        limit: usize,
        visit: &mut (dyn FnMut(u64, &[u8]) -> Result<()> + Send),
    ) -> impl Future<Output = Result<usize>> + Send;

    /// Appends `rows` to the time-series table as one atomic batch.
    fn ts_append(&self, rows: &[(i64, f64)]) -> impl Future<Output = Result<()>> + Send;

    /// The sum of the time-series values with timestamps in `first..=last`.
    fn ts_sum(&self, first: i64, last: i64) -> impl Future<Output = Result<f64>> + Send;

    /// Waits until the engine's background work (flushes, compactions) is done; returns a note
    /// on what it found.
    fn settle(&self) -> impl Future<Output = Result<String>> + Send;

    /// The settings the engine was opened with.
    fn settings(&self) -> Settings;

    /// Closes the engine cleanly and opens it again from its files; `None` for an engine that
    /// keeps nothing on disk.
    fn reopen(self, dir: &Path) -> impl Future<Output = Result<Option<Self>>> + Send {
        async move {
            let settings = self.settings();
            self.close().await?;
            Ok(Some(Self::open(dir, settings).await?))
        }
    }

    /// Closes the engine cleanly.
    fn close(self) -> impl Future<Output = Result<()>> + Send;
}

/// The key bytes of a timestamp that sort like the timestamps: big-endian, sign bit flipped.
#[cfg(feature = "peers")]
pub(crate) fn ts_key(ts: i64) -> [u8; 8] {
    ((ts as u64) ^ (1 << 63)).to_be_bytes()
}

/// The f64 a peer stored as a time-series value.
#[cfg(feature = "peers")]
pub(crate) fn ts_value(bytes: &[u8]) -> Result<f64> {
    let bytes: [u8; 8] = bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("a time-series value of {} bytes", bytes.len()))?;
    Ok(f64::from_le_bytes(bytes))
}

/// The [`Value`] a peer stored.
#[cfg(feature = "peers")]
pub(crate) fn value_of(bytes: &[u8]) -> Result<Value> {
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("a value of {} bytes", bytes.len()))
}

/// Waits until `busy` (an engine's count of running or pending flushes and compactions) has
/// said 0 twice in a row, 250 ms apart; returns a note on how long that took.
#[cfg(feature = "peers")]
pub(crate) async fn settle_while(mut busy: impl FnMut() -> Result<u64>) -> Result<String> {
    const LIMIT: std::time::Duration = std::time::Duration::from_secs(1800);
    let start = std::time::Instant::now();
    let mut quiet = 0;
    while quiet < 2 {
        quiet = if busy()? == 0 { quiet + 1 } else { 0 };
        anyhow::ensure!(
            start.elapsed() < LIMIT,
            "flushes and compactions did not go quiet within {LIMIT:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    Ok(format!(
        "flushes and compactions settled in {:.2} s",
        start.elapsed().as_secs_f64()
    ))
}

/// The u64 of a key a peer stored big-endian.
#[cfg(feature = "peers")]
pub(crate) fn kv_key(bytes: &[u8]) -> Result<u64> {
    let bytes: [u8; 8] = bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("a key of {} bytes", bytes.len()))?;
    Ok(u64::from_be_bytes(bytes))
}
