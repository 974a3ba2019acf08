//! `omendb-server` — the `omendb` binary and its library.
//!
//! Serves the engine of `omendb-core` over the network: configuration, the HTTP API, the admin
//! listener (health, metrics), limits and graceful shutdown. It depends on `omendb-core` only and
//! must never reach around it into the WAL or storage crates.
