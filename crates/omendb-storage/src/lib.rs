//! `omendb-storage` — OmenDB's durable objects other than the WAL.
//!
//! Backends (`object_store` for local files, memory, S3 and OpenDAL services), the Parquet segment
//! format, fenced manifests, the decoded-page cache and backup copies. It depends on no other
//! OmenDB crate and must never interpret what it stores beyond the formats it owns: the engine's
//! serialized index travels through it as opaque bytes.

pub mod backend;
mod error;
pub mod huge_pages;
pub mod manifest;
pub mod prefetch;
pub mod segment;

pub use backend::{Backend, BackendOptions, Scheme};
pub use error::{Error, ErrorKind, Result};
