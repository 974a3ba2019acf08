//! `omendb-server` — the `omendb` binary: OmenDB's engine served over HTTP.
//!
//! `omendb serve` binds a client API (`/v1`, JSON or Arrow IPC, documented by
//! `/openapi.json`) and an admin listener (health, Prometheus metrics), opens the database
//! (requests get 503 until recovery is done) and serves until SIGTERM or SIGINT, then drains,
//! syncs the WAL and closes. Both listeners default to loopback: this version has no
//! authentication.
//!
//! - [`config`]: defaults, `omendb.toml`, `OMENDB_*` variables and flags, in that order.
//! - [`server`]: the listeners' life and the shutdown sequence; [`connection`]: the client
//!   API's connection cap and idle timeout.
//! - [`api`]: the client API; [`admin`]: health and metrics.
//! - [`state`]: what requests share (the database, the limits' permits, readiness).
//! - [`error`]: the one error shape and the status of each engine error.
//! - [`slow_log`], [`telemetry`]: the slow query log, logs and the metrics recorder.
//!
//! The HTTP API is described in `docs/api.md`, its operation in `docs/operations.md`.

pub mod admin;
pub mod api;
pub mod config;
pub mod connection;
pub mod error;
pub mod server;
pub mod slow_log;
pub mod state;
pub mod telemetry;

pub use config::Config;
pub use server::Server;
