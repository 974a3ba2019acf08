//! `omendb-bench` — OmenDB's benchmarks.
//!
//! Every subcommand measures on this machine, in this run, checks every answer before it prints a
//! figure, and prints a human table or, with `--json`, one JSON object per row on stdout (the
//! output contract of `shared/design/PERFORMANCE.md`). It is a measuring tool: nothing in the
//! product depends on it.

mod db;
mod index;
mod report;
mod segment;
mod server;
mod stress;
mod wal;

use clap::{Parser, Subcommand};

/// The allocator of `omendb serve` (see its `main`), so the engine is measured as it is shipped.
/// The peers of `db --engine all` run in this binary too: the Rust ones (redb, fjall, sled, heed's
/// side of LMDB) allocate with it, while LMDB's C and RocksDB's C++ keep the C library's `malloc`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "omendb-bench", about = "OmenDB benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// The embedded engine: bulk load, point reads, multi_get, scans, time series, mixed
    /// read/update, reopen and footprint.
    Db(db::Args),
    /// Point lookups in the learned-index family against binary search and BTreeMap.
    Index(index::Args),
    /// One Parquet segment written, opened, fetched by position (cold, cached) and scanned.
    Segment(segment::Args),
    /// The `omendb` server on loopback under 128 and 1024 concurrent connections: gets and
    /// durable puts, req/s and latency, every answer checked.
    Server(server::Args),
    /// The 100M-key stress run: load through the engine, check every key by get and by full
    /// scan, random gets and range counts, reopen and check again; one JSON line at the end.
    Stress(stress::Args),
    /// Write-ahead log appends (group commit) for 1–256 appenders, and recovery speed.
    Wal(wal::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Bench::Db(args) => db::run(&args),
        Bench::Index(args) => index::run(&args),
        Bench::Segment(args) => segment::run(&args),
        Bench::Server(args) => server::run(&args),
        Bench::Stress(args) => stress::run(&args),
        Bench::Wal(args) => wal::run(&args),
    }
}
