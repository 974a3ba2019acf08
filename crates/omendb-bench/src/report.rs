//! Printing benchmark rows: a human table, or one JSON object per row (`--json`).
//!
//! Rows are printed as they are measured, so a long run shows progress. In JSON mode nothing but
//! rows goes to stdout; notes go to stderr in both modes.

use std::io::Write;

use anyhow::{Context, Result};
use serde::Serialize;

/// Where rows go and in which shape.
pub(crate) struct Report {
    json: bool,
    header_printed: bool,
}

impl Report {
    /// A report that prints JSON lines when `json` is set, else a table.
    pub(crate) fn new(json: bool) -> Self {
        Report {
            json,
            header_printed: false,
        }
    }

    /// Prints one row. In table mode the first row's field names become the header.
    pub(crate) fn row<T: Serialize>(&mut self, row: &T) -> Result<()> {
        let value = serde_json::to_value(row).context("benchmark row does not serialize")?;
        let mut out = std::io::stdout().lock();
        if self.json {
            writeln!(out, "{value}")?;
            return Ok(());
        }
        let Some(fields) = value.as_object() else {
            writeln!(out, "{value}")?;
            return Ok(());
        };
        if !self.header_printed {
            let header: Vec<String> = fields
                .keys()
                .map(|k| format!("{k:>width$}", width = width(k)))
                .collect();
            writeln!(out, "{}", header.join(" "))?;
            self.header_printed = true;
        }
        let cells: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("{:>width$}", cell(v), width = width(k)))
            .collect();
        writeln!(out, "{}", cells.join(" "))?;
        Ok(())
    }

    /// Prints a note for people to stderr, where it never mixes with JSON rows.
    pub(crate) fn note(&self, text: &str) {
        eprintln!("# {text}");
    }
}

/// Column width: the field name's, but at least 10.
fn width(name: &str) -> usize {
    name.len().max(10)
}

fn cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => {
                if f.abs() >= 100.0 {
                    format!("{f:.0}")
                } else {
                    format!("{f:.2}")
                }
            }
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// One line describing the machine, for notes and docs/benchmarks.md.
pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let rustc = std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "rustc unknown".to_owned(), |s| s.trim().to_owned());
    format!("{cpu}, {cores} cores, {mem_gib:.0} GiB, {rustc}")
}

/// The `q` quantile of `samples` (sorted in place): the sample at `round((len - 1) * q)`; 0 when
/// empty.
pub(crate) fn percentile(samples: &mut [f64], q: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_by(f64::total_cmp);
    let at = ((samples.len() - 1) as f64 * q).round() as usize;
    samples[at]
}

/// The median of `samples` (sorted in place): the upper middle one when their number is even;
/// 0 when empty.
pub(crate) fn median(samples: &mut [f64]) -> f64 {
    percentile(samples, 0.5)
}

/// This process's peak resident set in MiB (`VmHWM`), if the system reports it.
pub(crate) fn peak_rss_mb() -> Option<f64> {
    status_mb("VmHWM:")
}

/// This process's resident set now, in MiB (`VmRSS`), if the system reports it.
pub(crate) fn rss_mb() -> Option<f64> {
    status_mb("VmRSS:")
}

/// A field of `/proc/self/status` given in kB, in MiB.
fn status_mb(field: &str) -> Option<f64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
}
