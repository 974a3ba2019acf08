//! `cargo xtask regression`: the instruction-count benchmarks of `omendb-bench`
//! (`benches/regression.rs`, callgrind through gungraun) compared with the baseline committed in
//! `crates/omendb-bench/benches/regression-baseline.json`.
//!
//! Instruction counts, unlike seconds, repeat on a shared machine, so CI can fail on them: a
//! benchmark whose count rises more than [`THRESHOLD_PCT`] above its baseline fails the run, as
//! does a benchmark with no baseline or a baseline with no benchmark. `--update` records the
//! counts of this run as the new baseline; that is the only way the file changes.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

/// A count more than this many percent above its baseline is a regression.
pub(crate) const THRESHOLD_PCT: f64 = 10.0;
/// The gungraun library version `omendb-bench` uses; its runner must be the same version.
const GUNGRAUN_VERSION: &str = "0.20.0";
/// Where the baseline lives, relative to the workspace root.
const BASELINE: &str = "crates/omendb-bench/benches/regression-baseline.json";

/// Instructions per benchmark, by benchmark name.
pub(crate) type Counts = BTreeMap<String, u64>;

/// Runs the benchmarks and compares them with the baseline, or records them as the baseline.
pub(crate) fn run(root: &Path, update: bool) -> Result<()> {
    ensure_tools()?;
    let counts = measure(root)?;
    let rustc = rustc_version()?;
    let path = root.join(BASELINE);
    if update {
        let baseline = json!({
            "about": "Instructions per benchmark of crates/omendb-bench/benches/regression.rs \
                      (callgrind, cargo bench --profile test). Checked by `cargo xtask \
                      regression`; rewritten only by `cargo xtask regression --update`.",
            "rustc": rustc,
            "threshold_pct": THRESHOLD_PCT,
            "instructions": counts,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&baseline)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!(
            "xtask: baseline of {} benchmarks written to {BASELINE}",
            counts.len()
        );
        return Ok(());
    }
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {}; record one with `cargo xtask regression --update`",
            path.display()
        )
    })?;
    let baseline: Value = serde_json::from_str(&text).context("parsing the baseline")?;
    let recorded_with = baseline["rustc"].as_str().unwrap_or("an unknown rustc");
    ensure!(
        recorded_with == rustc,
        "the baseline was recorded with {recorded_with}, this is {rustc}: instruction counts of \
         different compilers do not compare; re-record it with `cargo xtask regression --update`"
    );
    let expected: Counts = serde_json::from_value(baseline["instructions"].clone())
        .context("the baseline's `instructions` is not a map of counts")?;
    let verdict = compare(&expected, &counts, THRESHOLD_PCT);
    for line in &verdict.lines {
        eprintln!("xtask: {line}");
    }
    if !verdict.failures.is_empty() {
        bail!(
            "instruction-count regression: {}; if the change is intended, record a new baseline \
             with `cargo xtask regression --update` and say why in the commit",
            verdict.failures.join("; ")
        );
    }
    Ok(())
}

/// The outcome of comparing a run with the baseline.
#[derive(Debug, Default)]
pub(crate) struct Verdict {
    /// One line per benchmark: its count, the baseline's, the change.
    pub(crate) lines: Vec<String>,
    /// What fails the run.
    pub(crate) failures: Vec<String>,
}

/// Compares `measured` with `baseline`: a count more than `threshold_pct` above its baseline,
/// a benchmark without a baseline and a baseline without a benchmark all fail.
pub(crate) fn compare(baseline: &Counts, measured: &Counts, threshold_pct: f64) -> Verdict {
    let mut verdict = Verdict::default();
    for (name, &now) in measured {
        let Some(&then) = baseline.get(name) else {
            verdict
                .failures
                .push(format!("{name} has no baseline ({now} instructions)"));
            continue;
        };
        let change = if then == 0 {
            if now == 0 { 0.0 } else { f64::INFINITY }
        } else {
            (now as f64 / then as f64 - 1.0) * 100.0
        };
        verdict.lines.push(format!(
            "{name}: {now} instructions, baseline {then} ({change:+.2}%)"
        ));
        if change > threshold_pct {
            verdict.failures.push(format!(
                "{name} rose {change:.2}% ({then} -> {now}), above the {threshold_pct}% allowed"
            ));
        }
    }
    for name in baseline.keys().filter(|name| !measured.contains_key(*name)) {
        verdict
            .failures
            .push(format!("{name} is in the baseline but did not run"));
    }
    verdict
}

/// Runs the benchmarks and reads each one's instruction count from gungraun's JSON summaries.
fn measure(root: &Path) -> Result<Counts> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let args = [
        "bench",
        "--package",
        "omendb-bench",
        "--bench",
        "regression",
        // The test profile (optimised, shared with the test suite's build) keeps CI from
        // building everything a second time in release mode.
        "--profile",
        "test",
        "--",
        "--output-format=json",
    ];
    eprintln!("xtask: cargo {}", args.join(" "));
    let output = Command::new(&cargo)
        .args(args)
        .current_dir(root)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("could not start {cargo}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "the regression benchmarks failed with {}:\n{stdout}",
            output.status
        );
    }
    let mut counts = Counts::new();
    for line in stdout.lines().filter(|l| l.trim_start().starts_with('{')) {
        let summary: Value = serde_json::from_str(line)
            .with_context(|| format!("parsing a benchmark summary: {line}"))?;
        let (name, instructions) = instructions_of(&summary)?;
        ensure!(
            counts.insert(name.clone(), instructions).is_none(),
            "two benchmarks are named {name}"
        );
    }
    ensure!(
        !counts.is_empty(),
        "the regression benchmarks printed no summary:\n{stdout}"
    );
    Ok(counts)
}

/// The name and total instruction count of one benchmark's summary.
pub(crate) fn instructions_of(summary: &Value) -> Result<(String, u64)> {
    let name = [summary["function_name"].as_str(), summary["id"].as_str()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    ensure!(!name.is_empty(), "a summary without a name: {summary}");
    let instructions = find_instructions(summary)
        .with_context(|| format!("no instruction count in the summary of {name}"))?;
    Ok((name, instructions))
}

/// The `Ir` (instructions executed) of the benchmark, summed over its threads; gungraun's
/// schema 7 puts it at `profiles[0].data.total.metrics.Ir.values.new`.
fn find_instructions(summary: &Value) -> Option<u64> {
    summary["profiles"][0]["data"]["total"]["metrics"]["Ir"]["values"]["new"].as_u64()
}

/// `rustc --version`: a baseline holds only for the compiler that recorded it.
fn rustc_version() -> Result<String> {
    let output = Command::new("rustc")
        .arg("--version")
        .output()
        .context("could not start rustc")?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// What the benchmarks run under, installed when missing. `cargo test --all-targets` runs them
/// too (once each, as a check that they work), so the test suite needs these before cargo runs.
pub(crate) fn ensure_tools() -> Result<()> {
    ensure_valgrind()?;
    ensure_runner()
}

/// callgrind is valgrind's; it comes with Debian's `valgrind` package.
fn ensure_valgrind() -> Result<()> {
    if crate::answers("valgrind") {
        return Ok(());
    }
    eprintln!("xtask: installing valgrind (the regression benchmarks count instructions with it)");
    crate::apt_install("valgrind");
    ensure!(
        crate::answers("valgrind"),
        "could not install valgrind; the regression benchmarks need it (apt-get install valgrind)"
    );
    Ok(())
}

/// gungraun's benchmarks run under its runner binary, which must be the library's version.
fn ensure_runner() -> Result<()> {
    let version = || {
        Command::new("gungraun-runner")
            .arg("--version")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    if version().is_some_and(|v| v.contains(GUNGRAUN_VERSION)) {
        return Ok(());
    }
    eprintln!(
        "xtask: installing gungraun-runner {GUNGRAUN_VERSION} (runs the regression benchmarks)"
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(&cargo)
        .args([
            "install",
            "gungraun-runner",
            "--version",
            &format!("={GUNGRAUN_VERSION}"),
            "--locked",
        ])
        .status()
        .with_context(|| format!("could not start {cargo} install"))?;
    ensure!(
        status.success() && version().is_some_and(|v| v.contains(GUNGRAUN_VERSION)),
        "could not install gungraun-runner {GUNGRAUN_VERSION} (cargo install gungraun-runner \
         --version ={GUNGRAUN_VERSION})"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pairs: &[(&str, u64)]) -> Counts {
        pairs.iter().map(|&(n, c)| (n.to_owned(), c)).collect()
    }

    #[test]
    fn a_rise_above_the_threshold_fails_and_one_below_passes() {
        let baseline = counts(&[("get", 1000), ("scan", 1000)]);
        let verdict = compare(&baseline, &counts(&[("get", 1099), ("scan", 1101)]), 10.0);
        assert_eq!(verdict.failures.len(), 1, "{:?}", verdict.failures);
        assert!(verdict.failures[0].starts_with("scan rose 10.10%"));
        assert_eq!(verdict.lines.len(), 2);
    }

    #[test]
    fn a_fall_passes() {
        let baseline = counts(&[("get", 1000)]);
        let verdict = compare(&baseline, &counts(&[("get", 500)]), 10.0);
        assert!(verdict.failures.is_empty());
        assert!(verdict.lines[0].contains("-50.00%"));
    }

    #[test]
    fn a_benchmark_without_baseline_and_a_baseline_without_benchmark_fail() {
        let baseline = counts(&[("gone", 10)]);
        let verdict = compare(&baseline, &counts(&[("new", 10)]), 10.0);
        assert_eq!(verdict.failures.len(), 2, "{:?}", verdict.failures);
        assert!(verdict.failures[0].contains("new has no baseline"));
        assert!(verdict.failures[1].contains("gone is in the baseline but did not run"));
    }
}
