//! The slow query log: one JSON line per read that took longer than `log.slow_query_ms`
//! (a sampled fraction of them), with what the read touched (`explain`).

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::config::LogConfig;

/// One slow read.
#[derive(Debug, Serialize)]
pub struct SlowQuery<'a> {
    /// When it finished (RFC 3339, UTC).
    pub time: String,
    /// The route (`/v1/tables/{table}/scan`).
    pub route: &'a str,
    /// The table.
    pub table: &'a str,
    /// The key range read (`[start, end)`, either side open when absent).
    pub range: String,
    /// Rows returned.
    pub rows: u64,
    /// How long it took, in ms.
    pub duration_ms: f64,
    /// How it ended.
    pub outcome: Outcome,
    /// What the read touched (the engine's explain), when the table could be planned.
    pub explain: Option<serde_json::Value>,
}

/// How a logged read ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It returned its rows.
    Ok,
    /// It failed (its error went to the client, or ended a streamed body early).
    Error,
    /// It was dropped unfinished: the client went away, or the request's deadline cut it.
    Abandoned,
}

/// Where slow reads are written.
pub struct SlowLog {
    threshold: Option<Duration>,
    sample: f64,
    seen: AtomicU64,
    sink: Mutex<Box<dyn Write + Send>>,
}

impl std::fmt::Debug for SlowLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlowLog")
            .field("threshold", &self.threshold)
            .field("sample", &self.sample)
            .finish_non_exhaustive()
    }
}

impl SlowLog {
    /// The log `config` describes: its file (appended to) or stderr.
    pub fn open(config: &LogConfig) -> std::io::Result<Self> {
        let sink: Box<dyn Write + Send> = if config.slow_query_file.as_os_str().is_empty() {
            Box::new(std::io::stderr())
        } else {
            Box::new(open_append(&config.slow_query_file)?)
        };
        Ok(Self {
            threshold: (config.slow_query_ms > 0)
                .then(|| Duration::from_millis(config.slow_query_ms)),
            sample: config.slow_query_sample,
            seen: AtomicU64::new(0),
            sink: Mutex::new(sink),
        })
    }

    /// Whether a read that took `elapsed` is logged: over the threshold, and picked by the
    /// sampling (exactly the configured fraction of slow reads, spread evenly).
    pub fn wants(&self, elapsed: Duration) -> bool {
        let Some(threshold) = self.threshold else {
            return false;
        };
        if elapsed < threshold {
            return false;
        }
        let n = self.seen.fetch_add(1, Ordering::Relaxed) as f64;
        ((n + 1.0) * self.sample).floor() > (n * self.sample).floor()
    }

    /// Writes one entry (errors writing the log are reported once per entry on stderr's
    /// tracing output; a read never fails because its log line could not be written).
    pub fn write(&self, entry: &SlowQuery<'_>) {
        let Ok(mut line) = serde_json::to_vec(entry) else {
            return;
        };
        line.push(b'\n');
        let Ok(mut sink) = self.sink.lock() else {
            return;
        };
        if let Err(err) = sink.write_all(&line).and_then(|()| sink.flush()) {
            tracing::warn!(error = %err, "the slow query log could not be written");
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// The current time in RFC 3339.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
