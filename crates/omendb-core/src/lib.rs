//! `omendb-core` — the OmenDB engine.
//!
//! A database for ordered, integer-keyed data whose primary index is a learned index: a small
//! model that predicts where a key sits in a sorted array, with an error bound computed over every
//! key, followed by a bounded last-mile search that always finds the true position. This crate
//! composes `omendb-wal` and `omendb-storage`; it must never reach into their internals, and it
//! must never return an answer it has not checked against its own bounds.
//!
//! Today it holds the learned-index family ([`index`]), table keys and their order-preserving
//! map to stored `u64`s ([`key`]), the memtable ([`memtable`]) and write batches as WAL records
//! ([`batch`]) — the first pieces of the engine — and, behind the `keygen`
//! feature, the seeded key distributions shared by tests and benchmarks (`keygen`).

pub mod batch;
pub mod db;
pub mod error;
pub mod index;
pub mod key;
#[cfg(feature = "keygen")]
pub mod keygen;
pub mod memtable;
pub mod segment;
pub mod table;
mod visibility;

pub use db::{
    Aggregate, Batch, Change, ChangedRow, Db, DbStats, Durability, Explain, Isolation, ScanOptions,
    Snapshot, Table, Transaction, WriteOptions,
};
pub use error::{Error, ErrorKind, Result};
pub use key::{Key, KeyType, TimeUnit};
pub use table::Value;
