//! `omendb-core` — the OmenDB engine.
//!
//! A database for ordered, integer-keyed data whose primary index is a learned index: a small
//! model that predicts where a key sits in a sorted array, with an error bound computed over every
//! key, followed by a bounded last-mile search that always finds the true position. This crate
//! composes `omendb-wal` and `omendb-storage`; it must never reach into their internals, and it
//! must never return an answer it has not checked against its own bounds.
//!
//! - [`Db`] is the database: tables ([`Table`]), atomic write batches ([`Batch`]), snapshots,
//!   transactions, the change stream, checkpoints and compaction. `Db::open(dir)` is the
//!   embedded default; `Db::builder()` composes any WAL, backend and settings.
//! - [`index`] is the learned-index family; [`key`] maps table keys to stored `u64`s; [`table`]
//!   defines tables and encodes their rows; [`memtable`], [`segment`] and [`batch`] are the
//!   engine's layers and its WAL record. Behind the `keygen` feature: the seeded key
//!   distributions shared by tests and benchmarks.
//!
//! Design: `docs/rfcs/0001-engine.md` and `docs/architecture.md`; formats:
//! `docs/file-formats.md`; failures: `docs/failure-modes.md`.

// Under `--cfg loom` only the concurrency primitives and what they need are built
// (`cargo xtask loom`); the rest would be dead there.
#![cfg_attr(loom, allow(dead_code))]

/// A named crash point: with the `failpoints` feature, `fail::fail_point!` (omendb-chaos sets a
/// callback there that crashes its simulated disk and store at that moment); without it,
/// nothing at all. The names are listed in [`CRASH_POINTS`]. (The loom build has no engine.)
#[cfg(not(loom))]
macro_rules! crash_point {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name);
    };
}

/// Every crash point of the engine, in the order a write reaches them: the WAL append, a flush
/// (segment upload, manifest, WAL truncation), a compaction and a garbage collection.
#[cfg(feature = "failpoints")]
pub const CRASH_POINTS: &[&str] = &[
    "commit.before_wal",
    "commit.after_wal",
    "flush.before_segment",
    "flush.before_manifest",
    "flush.before_wal_truncate",
    "compaction.before_manifest",
    "compaction.after_manifest",
    "gc.before",
    "gc.after",
];

#[cfg(not(loom))]
pub mod batch;
#[cfg(not(loom))]
pub mod db;
#[cfg(not(loom))]
pub mod error;
#[cfg(not(loom))]
mod filter;
#[cfg(not(loom))]
pub mod index;
#[cfg(not(loom))]
pub mod key;
#[cfg(all(feature = "keygen", not(loom)))]
pub mod keygen;
#[cfg(not(loom))]
pub mod memtable;
#[cfg(not(loom))]
mod prefetch;
#[cfg(not(loom))]
pub mod segment;
mod sync;
#[cfg(not(loom))]
pub mod table;
mod version_cell;
mod visibility;

#[cfg(loom)]
mod memtable {
    //! Under loom only the generation cut is built.
    pub(crate) type Lsn = u64;
    pub(crate) mod cut;
}

#[cfg(not(loom))]
pub use db::{
    Aggregate, BackendOptions, Batch, Change, ChangedRow, Db, DbStats, Durability, Explain,
    Isolation, MAX_AGGREGATE_BUCKETS, ReadCompaction, ScanOptions, Snapshot, Table, Transaction,
    WriteOptions,
};
#[cfg(not(loom))]
pub use error::{Error, ErrorKind, Result};
#[cfg(not(loom))]
pub use key::{Key, KeyType, TimeUnit};
#[cfg(not(loom))]
pub use table::Value;
