//! What every request shares: the database (once it is open), the limits' permits and the
//! server's readiness.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use omendb_core::Db;
use omendb_core::{Durability, Table, WriteOptions};
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use utoipa::{IntoParams, ToSchema};

use crate::config::{Config, DurabilityConfig};
use crate::error::{ApiError, ApiResult};
use crate::slow_log::SlowLog;

/// The server's shared state.
#[derive(Debug)]
pub struct State {
    /// The effective configuration.
    pub config: Config,
    db: OnceLock<Db>,
    draining: AtomicBool,
    queries: Arc<Semaphore>,
    write_bytes: Arc<Semaphore>,
    connections: Arc<Semaphore>,
    /// The slow query log.
    pub slow_log: SlowLog,
    /// Whether a CPU profile is being taken (one at a time).
    pub profiling: AtomicBool,
    /// Why the last storage check failed, if it did.
    storage_error: std::sync::Mutex<Option<String>>,
}

/// A request's choice of durability (`durability=durable|buffered`); the server's default when
/// absent.
#[derive(Clone, Copy, Debug, Default, Deserialize, IntoParams, ToSchema)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WriteParams {
    /// `durable`: answered after the WAL is synced; `buffered`: after it is in the WAL's buffer.
    pub durability: Option<DurabilityConfig>,
}

impl State {
    /// State for `config`, before the database is open.
    pub fn new(config: Config, slow_log: SlowLog) -> Self {
        let queries = Arc::new(Semaphore::new(config.limits.max_concurrent_queries));
        let write_bytes = Arc::new(Semaphore::new(config.limits.max_inflight_write_bytes));
        let connections = Arc::new(Semaphore::new(config.server.max_connections));
        Self {
            config,
            db: OnceLock::new(),
            draining: AtomicBool::new(false),
            queries,
            write_bytes,
            connections,
            slow_log,
            profiling: AtomicBool::new(false),
            storage_error: std::sync::Mutex::new(None),
        }
    }

    /// Makes `db` the database requests use (once, when recovery is done).
    pub fn set_db(&self, db: Db) {
        // A second call would be a bug of the start-up sequence; the first database stays.
        let _ = self.db.set(db);
    }

    /// The database, or 503 while it is being opened or the server drains.
    pub fn db(&self) -> ApiResult<&Db> {
        if self.draining() {
            return Err(ApiError::not_ready("the server is shutting down"));
        }
        self.db
            .get()
            .ok_or_else(|| ApiError::not_ready("the database is being opened (recovering)"))
    }

    /// The database if it is open, whatever the server is doing.
    pub fn open_db(&self) -> Option<&Db> {
        self.db.get()
    }

    /// The table `name`.
    pub fn table(&self, name: &str) -> ApiResult<Table> {
        Ok(self.db()?.table(name)?)
    }

    /// Marks the server as shutting down: readiness fails and new requests get 503.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether the server is shutting down.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Why the server is not ready, or `None` if it is.
    pub fn not_ready_reason(&self) -> Option<String> {
        if self.draining() {
            return Some("shutting down".to_owned());
        }
        let Some(db) = self.db.get() else {
            return Some("recovering".to_owned());
        };
        if let Some(error) = self.storage_error() {
            return Some(format!("storage does not answer: {error}"));
        }
        let stats = db.stats();
        stats
            .failure
            .map(|failure| format!("the database refuses writes: {failure}"))
            .or_else(|| {
                stats
                    .background_error
                    .map(|error| format!("storage is failing: {error}"))
            })
    }

    /// Records the outcome of a storage check.
    pub fn set_storage_error(&self, error: Option<String>) {
        *self.storage_error.lock().unwrap_or_else(|p| p.into_inner()) = error;
    }

    /// Why the last storage check failed, if it did.
    pub fn storage_error(&self) -> Option<String> {
        self.storage_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A permit to run one read; 429 when `limits.max_concurrent_queries` run already.
    pub fn query_permit(&self) -> ApiResult<OwnedSemaphorePermit> {
        Arc::clone(&self.queries).try_acquire_owned().map_err(|_| {
            ApiError::overloaded(format!(
                "{} queries are running (limits.max_concurrent_queries)",
                self.config.limits.max_concurrent_queries
            ))
        })
    }

    /// Reads running now.
    pub fn queries_in_flight(&self) -> usize {
        self.config.limits.max_concurrent_queries - self.queries.available_permits()
    }

    /// A permit for a write of `bytes`; 429 when the writes in flight would exceed
    /// `limits.max_inflight_write_bytes`.
    pub fn write_permit(&self, bytes: usize) -> ApiResult<OwnedSemaphorePermit> {
        let permits = u32::try_from(bytes.max(1)).unwrap_or(u32::MAX);
        Arc::clone(&self.write_bytes)
            .try_acquire_many_owned(permits)
            .map_err(|_| {
                ApiError::overloaded(format!(
                    "writes of {} bytes are in flight (limits.max_inflight_write_bytes)",
                    self.config.limits.max_inflight_write_bytes
                ))
            })
    }

    /// Write bytes in flight now.
    pub fn write_bytes_in_flight(&self) -> usize {
        self.config.limits.max_inflight_write_bytes - self.write_bytes.available_permits()
    }

    /// The client API's connection slots (`server.max_connections`).
    pub fn connection_slots(&self) -> Arc<Semaphore> {
        Arc::clone(&self.connections)
    }

    /// Client API connections open now.
    pub fn connections_open(&self) -> usize {
        self.config.server.max_connections - self.connections.available_permits()
    }

    /// The write options of a request.
    pub fn write_options(&self, params: WriteParams) -> WriteOptions {
        let durability = params.durability.unwrap_or(self.config.engine.durability);
        WriteOptions {
            durability: Some(match durability {
                DurabilityConfig::Durable => Durability::Durable,
                DurabilityConfig::Buffered => Durability::Buffered,
            }),
        }
    }

    /// The per-request time limit.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.config.limits.request_timeout_ms)
    }
}
