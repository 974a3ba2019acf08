//! The server's configuration: defaults, then `omendb.toml`, then `OMENDB_*` environment
//! variables, then command-line flags, each overriding the one before (the `config` crate).
//!
//! Every section rejects keys it does not know, so a typo is an error at start that names the
//! key, never a setting silently ignored. `docs/operations.md` lists every key; a test checks
//! that list against [`Config::default`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Prefix of the environment variables that override the file (`OMENDB_LIMITS__PAGE_ROWS=100`:
/// the section and key joined by a double underscore; variables without one are not read).
pub const ENV_PREFIX: &str = "OMENDB";

/// The effective configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listeners.
    pub server: ServerConfig,
    /// Where the data lives.
    pub storage: StorageConfig,
    /// The engine's settings.
    pub engine: EngineConfig,
    /// Bounds on what one client may ask for.
    pub limits: LimitsConfig,
    /// Logs and the slow query log.
    pub log: LogConfig,
    /// Trace export over OTLP.
    pub otel: OtelConfig,
}

/// Trace export: spans of every request, down through the engine, sent over OTLP/HTTP
/// (protobuf) when an endpoint is set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtelConfig {
    /// The OTLP/HTTP traces endpoint (e.g. `http://127.0.0.1:4318/v1/traces`); empty for none.
    pub endpoint: String,
    /// The fraction (0 to 1) of traces started here that are sampled; a request whose
    /// `traceparent` says sampled (or not) is followed.
    pub sampling_ratio: f64,
    /// The `service.name` of the spans.
    pub service_name: String,
}

impl Default for OtelConfig {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            sampling_ratio: 1.0,
            service_name: "omendb".to_owned(),
        }
    }
}

/// Listeners.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// The client API (`/v1`, `/openapi.json`).
    pub listen: SocketAddr,
    /// The admin listener (health, metrics); keep it off public networks.
    pub admin_listen: SocketAddr,
    /// How long a shutdown waits for in-flight requests before cancelling them, in ms.
    pub shutdown_grace_ms: u64,
    /// How often readiness checks that the storage answers, in ms.
    pub storage_check_ms: u64,
    /// Most client API connections open at once; more wait in the kernel's backlog until one
    /// closes (the admin listener has no cap).
    pub max_connections: usize,
    /// A client API connection on which nothing is read or written for this long is closed,
    /// in ms (longer than `limits.request_timeout_ms`, so that it never cuts a request).
    pub idle_timeout_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            shutdown_grace_ms: 10_000,
            storage_check_ms: 5_000,
            max_connections: 1024,
            idle_timeout_ms: 60_000,
        }
    }
}

/// Where the data lives.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// The local directory: the WAL (`wal/`) and, without `url`, segments and manifests
    /// (`data/`).
    pub path: PathBuf,
    /// A backend URL of omendb-storage (`s3://bucket/prefix`, `file:///dir`, `memory://`,
    /// `opendal+fs:///dir`) for segments and manifests; empty for the local directory.
    pub url: String,
    /// Options of the backend (S3: `endpoint`, `region`, `access_key_id`, `allow_http`, ...).
    pub options: BTreeMap<String, String>,
    /// Keep the WAL in the backend too (one object per group commit) instead of under `path`.
    pub wal_in_store: bool,
    /// The longest one request to the backend may take, its body included (a part of a
    /// segment's upload, a read of a row group), before it fails and is retried, in ms; 0 for
    /// no limit. On a slow link, raise it above the time a 10 MiB part takes.
    pub request_timeout_ms: u64,
    /// Retries of a request to the backend that failed in a way that may pass (after the first
    /// attempt; 0 for none).
    pub retries: u32,
}

impl StorageConfig {
    /// The options as shown to people: a secret's value as `"<redacted>"`.
    fn shown_options(&self) -> BTreeMap<String, String> {
        self.options
            .iter()
            .map(|(key, value)| {
                let shown = if is_secret(key) { REDACTED } else { value };
                (key.clone(), shown.to_owned())
            })
            .collect()
    }
}

/// Shows secrets' values as `"<redacted>"`, as [`Config::to_toml`] does.
impl std::fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageConfig")
            .field("path", &self.path)
            .field("url", &self.url)
            .field("options", &self.shown_options())
            .field("wal_in_store", &self.wal_in_store)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("retries", &self.retries)
            .finish()
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("./omendb-data"),
            url: String::new(),
            options: BTreeMap::new(),
            wal_in_store: false,
            request_timeout_ms: 30_000,
            retries: 5,
        }
    }
}

/// How acknowledged writes are made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityConfig {
    /// A write is acknowledged after its WAL record is synced (group commit).
    Durable,
    /// A write is acknowledged once in the WAL's buffer; synced by policy.
    Buffered,
}

/// The engine's settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Size of the active memtable before it is frozen and flushed, in MiB.
    pub memtable_mb: usize,
    /// Page cache budget, in MiB.
    pub cache_mb: u64,
    /// The default durability of writes; a request may ask for another.
    pub durability: DurabilityConfig,
    /// Merge a window of this many sorted runs of overlapping segments (at least 2).
    pub compaction_trigger: usize,
    /// How fast merges rewrite segments, in MiB/s: what prices a merge of overlapping runs
    /// that reads pay for; 0 turns such merges off.
    pub read_compaction_mib_per_s: u64,
    /// Seconds without a write after which the engine flushes and merges a table's overlapping
    /// runs for its reads (see `docs/operations.md`); 0 never does.
    pub idle_compaction_s: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        let engine = omendb_core::db::Settings::default();
        Self {
            memtable_mb: 64,
            cache_mb: 256,
            durability: DurabilityConfig::Durable,
            compaction_trigger: engine.compaction_trigger,
            read_compaction_mib_per_s: engine
                .read_compaction
                .map_or(0, |r| r.rewrite_bytes_per_second >> 20),
            idle_compaction_s: engine.idle_compaction.map_or(0, |after| after.as_secs()),
        }
    }
}

/// Bounds on what one client may ask for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request body, in bytes (413 above it).
    pub max_body_bytes: usize,
    /// Most rows in one response page; a scan returns a continuation token for the rest.
    pub page_rows: usize,
    /// Most keys in one multi-get.
    pub max_keys: usize,
    /// Most bytes of rows in one response: a scan page ends early (with a continuation token),
    /// a multi-get above it is refused (413).
    pub max_response_bytes: usize,
    /// Reads running at once (429 above it).
    pub max_concurrent_queries: usize,
    /// Request body bytes of writes in flight at once (429 above it).
    pub max_inflight_write_bytes: usize,
    /// Longest a request may run, in ms (503 `timeout` above it).
    pub request_timeout_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 << 20,
            page_rows: 10_000,
            max_keys: 10_000,
            max_response_bytes: 64 << 20,
            max_concurrent_queries: 512,
            max_inflight_write_bytes: 256 << 20,
            request_timeout_ms: 30_000,
        }
    }
}

/// Log output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// JSON lines.
    Json,
}

/// Logs and the slow query log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter (`info`, `omendb_server=debug,info`, ...).
    pub level: String,
    /// Output format of the log on stderr.
    pub format: LogFormat,
    /// Requests slower than this, in ms, go to the slow query log; 0 turns it off.
    pub slow_query_ms: u64,
    /// The fraction (0 to 1) of slow requests that are logged.
    pub slow_query_sample: f64,
    /// The slow query log's file (JSON lines); empty for stderr.
    pub slow_query_file: PathBuf,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Text,
            slow_query_ms: 1_000,
            slow_query_sample: 1.0,
            slow_query_file: PathBuf::new(),
        }
    }
}

/// A configuration that could not be loaded: the message names the key or file.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(String);

impl Config {
    /// Loads defaults, then `file` (if given; it must exist), then the `OMENDB_*` environment,
    /// then `overrides` (`section.key` to value, from flags), and checks the result.
    pub fn load(file: Option<&Path>, overrides: &[(&str, String)]) -> Result<Config, ConfigError> {
        let defaults = config::Config::try_from(&Config::default())
            .map_err(|e| ConfigError(format!("defaults: {e}")))?;
        let mut builder = config::Config::builder().add_source(defaults);
        if let Some(file) = file {
            if !file.is_file() {
                return Err(ConfigError(format!("{} is not a file", file.display())));
            }
            builder = builder.add_source(
                config::File::from(file.to_path_buf()).format(config::FileFormat::Toml),
            );
        }
        // Only `OMENDB_<SECTION>__<KEY>` variables are configuration; others of the prefix
        // (`OMENDB_CHAOS_SEEDS` of the test tools) are not.
        let prefix = format!("{ENV_PREFIX}_");
        let env: std::collections::HashMap<String, String> = std::env::vars()
            .filter(|(name, _)| name.starts_with(&prefix) && name.contains("__"))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(env)),
        );
        for (key, value) in overrides {
            builder = builder
                .set_override(*key, value.as_str())
                .map_err(|e| ConfigError(format!("{key}: {e}")))?;
        }
        let config: Config = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError(e.to_string()))?;
        config.check()?;
        Ok(config)
    }

    /// Checks values that types alone do not bound.
    pub fn check(&self) -> Result<(), ConfigError> {
        let positive = [
            ("engine.memtable_mb", self.engine.memtable_mb as u64),
            ("limits.max_body_bytes", self.limits.max_body_bytes as u64),
            ("limits.page_rows", self.limits.page_rows as u64),
            ("limits.max_keys", self.limits.max_keys as u64),
            (
                "limits.max_response_bytes",
                self.limits.max_response_bytes as u64,
            ),
            (
                "limits.max_concurrent_queries",
                self.limits.max_concurrent_queries as u64,
            ),
            (
                "limits.max_inflight_write_bytes",
                self.limits.max_inflight_write_bytes as u64,
            ),
            ("limits.request_timeout_ms", self.limits.request_timeout_ms),
            ("server.storage_check_ms", self.server.storage_check_ms),
            ("server.max_connections", self.server.max_connections as u64),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError(format!("{key} must be positive")));
            }
        }
        // Each is a semaphore's permits, which tokio bounds.
        let permits = [
            ("server.max_connections", self.server.max_connections),
            (
                "limits.max_concurrent_queries",
                self.limits.max_concurrent_queries,
            ),
            (
                "limits.max_inflight_write_bytes",
                self.limits.max_inflight_write_bytes,
            ),
        ];
        for (key, value) in permits {
            if value > tokio::sync::Semaphore::MAX_PERMITS {
                return Err(ConfigError(format!(
                    "{key} {value} is above {}",
                    tokio::sync::Semaphore::MAX_PERMITS
                )));
            }
        }
        // Both are shifted into bytes: a value past this would wrap (2^44 MiB became a cache of
        // 0 bytes).
        let most_mib = u64::MAX >> 20;
        for (key, mib) in [
            ("engine.memtable_mb", self.engine.memtable_mb as u64),
            ("engine.cache_mb", self.engine.cache_mb),
        ] {
            if mib > most_mib {
                return Err(ConfigError(format!("{key} {mib} is above {most_mib}")));
            }
        }
        if self.engine.compaction_trigger < 2 {
            return Err(ConfigError(
                "engine.compaction_trigger must be at least 2".to_owned(),
            ));
        }
        if self.limits.max_inflight_write_bytes < self.limits.max_body_bytes {
            return Err(ConfigError(
                "limits.max_inflight_write_bytes must be at least limits.max_body_bytes".to_owned(),
            ));
        }
        if self.server.idle_timeout_ms <= self.limits.request_timeout_ms {
            return Err(ConfigError(format!(
                "server.idle_timeout_ms {} must exceed limits.request_timeout_ms {}: a \
                 request's connection may be quiet while it runs",
                self.server.idle_timeout_ms, self.limits.request_timeout_ms
            )));
        }
        if !(0.0..=1.0).contains(&self.log.slow_query_sample) {
            return Err(ConfigError(format!(
                "log.slow_query_sample {} is not between 0 and 1",
                self.log.slow_query_sample
            )));
        }
        if !(0.0..=1.0).contains(&self.otel.sampling_ratio) {
            return Err(ConfigError(format!(
                "otel.sampling_ratio {} is not between 0 and 1",
                self.otel.sampling_ratio
            )));
        }
        if !self.otel.endpoint.is_empty() && url_scheme(&self.otel.endpoint).is_none() {
            return Err(ConfigError(format!(
                "otel.endpoint {:?} is not an http:// or https:// URL",
                self.otel.endpoint
            )));
        }
        if self.storage.url.is_empty() && self.storage.path.as_os_str().is_empty() {
            return Err(ConfigError(
                "storage.path or storage.url must be set".to_owned(),
            ));
        }
        if self.storage.url.is_empty() && self.storage.wal_in_store {
            return Err(ConfigError(
                "storage.wal_in_store needs storage.url".to_owned(),
            ));
        }
        Ok(())
    }

    /// The configuration as TOML (what `omendb config print` shows), with the values of
    /// storage options that hold secrets (keys naming a secret, token or password) replaced by
    /// `"<redacted>"`: the output is for looking at, and ends up in terminals and tickets.
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        let mut shown = self.clone();
        shown.storage.options = self.storage.shown_options();
        toml::to_string(&shown).map_err(|e| ConfigError(e.to_string()))
    }
}

/// What [`Config::to_toml`] shows for a secret.
const REDACTED: &str = "<redacted>";

/// Whether a storage option's value is a secret (`secret_access_key`, `session_token`,
/// `aws_secret_access_key`, `sse_customer_key_base64`, a password...).
fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "secret",
        "token",
        "password",
        "credential",
        "customer_key",
        "private_key",
    ]
    .iter()
    .any(|word| key.contains(word))
}

/// The scheme of an `http://` or `https://` URL.
fn url_scheme(url: &str) -> Option<&'static str> {
    ["http://", "https://"]
        .into_iter()
        .find(|scheme| url.starts_with(scheme) && url.len() > scheme.len())
}
