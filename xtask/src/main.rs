//! `cargo xtask` — OmenDB's automation.
//!
//! Each subcommand is a recipe a developer or CI runs by name, so that the README's commands, CI
//! and a newcomer's machine all do the same thing. It only orchestrates `cargo` and the tools the
//! tests need; it holds no product code.
//!
//! `ci`, `test`, `loom`, `model`, `chaos` (the simulation test, many seeds or one replayed),
//! `regression` (instruction counts of the hot paths against a committed baseline),
//! `bench` (anything of `omendb-bench`), `stress` (the 100M-key stress run) and `coverage` (line
//! coverage per crate with `cargo-tarpaulin`, failing below [`MIN_LINE_COVERAGE`]).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use clap::{Parser, Subcommand};

mod regression;

/// `cargo xtask coverage` fails when the workspace's line coverage falls below this percentage:
/// the coverage measured when the command was written (88.0%), rounded down, so that a change
/// that leaves code untested shows.
const MIN_LINE_COVERAGE: f64 = 88.0;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "OmenDB automation")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// What CI runs: format check, clippy with warnings denied on all targets, the whole test suite.
    Ci,
    /// The whole test suite (every crate, every test target, doc tests).
    Test,
    /// The loom model checks (`--cfg loom`, release mode, own target dir `target/loom`).
    Loom,
    /// The engine's model-based test at length: many seeds, long runs, on local files, memory
    /// and S3 (moto), checked against a `BTreeMap`; or one seed replayed.
    Model {
        /// Seeds to run (0..N).
        #[arg(long, default_value_t = 200)]
        seeds: u64,
        /// Operations per seed.
        #[arg(long, default_value_t = 5000)]
        ops: u64,
        /// Replay this seed only (as printed by a failing run).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// The simulation test of `omendb-chaos` (random workload, faults, crashes and reopens
    /// checked against an oracle) for many seeds, or one seed replayed.
    Chaos {
        /// Seeds to run (0..N).
        #[arg(long, default_value_t = 1000)]
        seeds: u64,
        /// Replay this seed only (as printed by a failing run).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// The 100M-key stress run (`omendb-bench stress`, release mode); arguments are passed
    /// through.
    ///
    /// `cargo xtask stress --keys 100000000 --value-bytes 16 --dist uniform` loads, checks every
    /// key by get and by full scan, reopens, checks again and prints one JSON line.
    Stress {
        /// Arguments for `omendb-bench stress` (e.g. `--keys 10000000 --dist seq`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The instruction-count regression benchmarks (callgrind) compared with the committed
    /// baseline; fails when a count rises more than 10% above it. Part of `test`.
    Regression {
        /// Record this run's counts as the new baseline instead of comparing.
        #[arg(long)]
        update: bool,
    },
    /// Line coverage of the tests per crate and in total, with `cargo-tarpaulin` (installed
    /// when missing); fails below the threshold set in the xtask.
    Coverage,
    /// Release-mode benchmarks through `omendb-bench`; arguments are passed through.
    ///
    /// `cargo xtask bench index --keys 100000000 --dist all` runs the 100M-key index benchmark.
    Bench {
        /// Arguments for `omendb-bench` (e.g. `index --keys 10000000 --dist all --json`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Task::Ci => {
            ensure_libclang()?;
            cargo(&["fmt", "--all", "--", "--check"])?;
            cargo(&[
                "clippy",
                "--workspace",
                "--all-targets",
                "--all-features",
                "--",
                "-D",
                "warnings",
            ])?;
            test()
        }
        Task::Test => test(),
        Task::Loom => loom(),
        Task::Model { seeds, ops, seed } => model(seeds, ops, seed),
        Task::Chaos { seeds, seed } => chaos(seeds, seed),
        Task::Stress { args } => bench("stress", &args),
        Task::Regression { update } => regression::run(&workspace_root()?, update),
        Task::Coverage => coverage(),
        Task::Bench { args } => bench("", &args),
    }
}

/// Runs `omendb-bench` in release mode with `subcommand` (unless empty) and `args`.
fn bench(subcommand: &str, args: &[String]) -> Result<()> {
    let mut full = vec!["run", "--release", "--package", "omendb-bench", "--"];
    full.extend((!subcommand.is_empty()).then_some(subcommand));
    full.extend(args.iter().map(String::as_str));
    cargo(&full)
}

/// Runs every test target of the workspace, doc tests included, with the services the tests
/// need installed first.
fn test() -> Result<()> {
    ensure_test_tools()?;
    // All features: the peers of `omendb-bench db` are tested too. Every target but the
    // instruction-count benchmarks, which `cargo test` would run whole under valgrind only for
    // `regression::run` to run them again below; the Criterion benchmarks run once each, as
    // tests. One command, so that features unify once and nothing is built twice.
    cargo(&[
        "test",
        "--workspace",
        "--all-features",
        "--lib",
        "--bins",
        "--tests",
        "--examples",
        "--bench",
        "index",
    ])?;
    cargo(&["test", "--workspace", "--doc"])?;
    loom()?;
    regression::run(&workspace_root()?, false)
}

/// Runs the engine's model-based test with more seeds and operations than the suite's.
fn model(seeds: u64, ops: u64, seed: Option<u64>) -> Result<()> {
    ensure_moto()?;
    seeded_test(
        "omendb-core",
        "db_model",
        &[
            ("OMENDB_MODEL_SEEDS", Some(seeds)),
            ("OMENDB_MODEL_OPS", Some(ops)),
            ("OMENDB_MODEL_SEED", seed),
        ],
        "the model-based test",
    )
}

/// Runs the chaos simulation for seeds `0..seeds`, or replays `seed`. It runs on the in-memory
/// store and a simulated disk, so it needs no S3 server.
fn chaos(seeds: u64, seed: Option<u64>) -> Result<()> {
    seeded_test(
        "omendb-chaos",
        "simulation",
        &[
            ("OMENDB_CHAOS_SEEDS", Some(seeds)),
            ("OMENDB_CHAOS_SEED", seed),
        ],
        "the simulation test",
    )
}

/// Runs one test target of `package` in release mode with the variables of `env` that have a
/// value set: the seeded tests read how many seeds to run, or which one to replay, from there.
fn seeded_test(package: &str, test: &str, env: &[(&str, Option<u64>)], what: &str) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let args = ["test", "--release", "--package", package, "--test", test];
    let set: Vec<(&str, String)> = env
        .iter()
        .filter_map(|&(name, value)| value.map(|v| (name, v.to_string())))
        .collect();
    let shown: Vec<String> = set.iter().map(|(name, v)| format!("{name}={v}")).collect();
    eprintln!("xtask: {} cargo {}", shown.join(" "), args.join(" "));
    let status = Command::new(&cargo)
        .args(args)
        .envs(set)
        .current_dir(workspace_root()?)
        .status()
        .with_context(|| format!("could not start {cargo}"))?;
    if !status.success() {
        bail!("{what} failed with {status}; it printed the seed to replay");
    }
    Ok(())
}

/// Measures line coverage with `cargo-tarpaulin` and prints it per crate and in total.
///
/// It runs every test of the product crates with the services they need (moto for S3). Two
/// crates are left out of the measurement: `xtask`, which only starts processes and has no
/// tests, and `omendb-bench`, a measuring tool whose code runs in long release-mode benchmarks
/// rather than in tests; counting them would say more about benchmarks than about the product.
/// The build uses tarpaulin's LLVM engine (`-C instrument-coverage`, no toolchain component to
/// download, and no ptrace, which multi-threaded async tests make slow) in its own target
/// directory, so the normal build is not invalidated.
fn coverage() -> Result<()> {
    ensure_tarpaulin()?;
    ensure_test_tools()?;
    let root = workspace_root()?;
    let out = root.join("target").join("coverage");
    let jobs = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .to_string();
    let out_dir = out.to_string_lossy().into_owned();
    let report = out.join("tarpaulin-report.json");
    // A report of an earlier run must not pass for this one's.
    let _ = std::fs::remove_file(&report);
    cargo(&[
        "tarpaulin",
        "--workspace",
        "--exclude",
        "xtask",
        "--exclude",
        "omendb-bench",
        "--exclude-files",
        "xtask/*",
        "--exclude-files",
        "crates/omendb-bench/*",
        "--engine",
        "llvm",
        "--all-targets",
        "--jobs",
        &jobs,
        // Per test binary: the engine's model and index tests run for minutes under
        // instrumentation on two cores.
        "--timeout",
        "1800",
        "--target-dir",
        &out_dir,
        "--output-dir",
        &out_dir,
        "--out",
        "Json",
        "--skip-clean",
    ])?;
    let text = std::fs::read_to_string(&report)
        .with_context(|| format!("reading {}", report.display()))?;
    let files = covered_lines(&text, &root)?;
    let mut crates: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    // Files with nothing to cover (an empty crate, generated code under `target/`) would only
    // add rows of zeros.
    for (path, covered, coverable) in files.into_iter().filter(|f| f.2 > 0) {
        let entry = crates.entry(crate_of(&path)).or_default();
        entry.0 += covered;
        entry.1 += coverable;
    }
    let (covered, coverable) = crates
        .values()
        .fold((0, 0), |(c, t), &(covered, coverable)| {
            (c + covered, t + coverable)
        });
    ensure!(coverable > 0, "tarpaulin reported no coverable lines");
    let pct = |covered: u64, coverable: u64| 100.0 * covered as f64 / coverable.max(1) as f64;
    let total = pct(covered, coverable);
    // The table and the JSON line go to stdout, after everything tarpaulin printed, so that the
    // JSON line is the last one.
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<16} {:>8} {:>8} {:>7}",
        "crate", "covered", "lines", "%"
    )?;
    for (name, &(c, t)) in &crates {
        writeln!(out, "{name:<16} {c:>8} {t:>8} {:>6.1}%", pct(c, t))?;
    }
    writeln!(
        out,
        "{:<16} {covered:>8} {coverable:>8} {total:>6.1}%",
        "total"
    )?;
    let rounded = (total * 10.0).round() / 10.0;
    writeln!(out, "{}", serde_json::json!({ "total_line_pct": rounded }))?;
    if total < MIN_LINE_COVERAGE {
        bail!("line coverage {total:.1}% is below the threshold of {MIN_LINE_COVERAGE}%");
    }
    Ok(())
}

/// Installs `cargo-tarpaulin` from crates.io when `cargo tarpaulin` is missing.
fn ensure_tarpaulin() -> Result<()> {
    let program = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let present = Command::new(&program)
        .args(["tarpaulin", "--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if present {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-tarpaulin (cargo install cargo-tarpaulin --locked)");
    cargo(&["install", "cargo-tarpaulin", "--locked"])
}

/// Each source file of tarpaulin's JSON report (`--out Json`) as its path relative to `root`,
/// its covered lines and its coverable lines.
fn covered_lines(report: &str, root: &Path) -> Result<Vec<(PathBuf, u64, u64)>> {
    let value: serde_json::Value =
        serde_json::from_str(report).context("tarpaulin's report is not JSON")?;
    let files = value
        .get("files")
        .and_then(serde_json::Value::as_array)
        .context("tarpaulin's report has no `files` array")?;
    files
        .iter()
        .map(|file| {
            // `path` is the list of the path's components (older versions: one string).
            let path: PathBuf = match file.get("path") {
                Some(serde_json::Value::Array(parts)) => {
                    parts.iter().filter_map(serde_json::Value::as_str).collect()
                }
                Some(serde_json::Value::String(path)) => PathBuf::from(path),
                _ => bail!("a file of tarpaulin's report has no path"),
            };
            let count = |field: &str| {
                file.get(field)
                    .and_then(serde_json::Value::as_u64)
                    .with_context(|| format!("{} has no `{field}` count", path.display()))
            };
            let (covered, coverable) = (count("covered")?, count("coverable")?);
            let relative = path
                .strip_prefix(root)
                .map_or_else(|_| path.clone(), Path::to_path_buf);
            Ok((relative, covered, coverable))
        })
        .collect()
}

/// The crate a workspace-relative source path belongs to: `crates/NAME/...` is `NAME`, any
/// other first component (`xtask`) names itself.
fn crate_of(path: &Path) -> String {
    let mut parts = path.components().map(|c| c.as_os_str().to_string_lossy());
    match parts.next() {
        Some(first) if first == "crates" => parts
            .next()
            .map_or(first.into_owned(), |name| name.into_owned()),
        Some(first) => first.into_owned(),
        None => "?".to_owned(),
    }
}

/// Runs the loom model checks of the crates that have them. `--cfg loom` changes every crate's
/// build, so it gets its own target directory and does not invalidate the normal one.
fn loom() -> Result<()> {
    let target = workspace_root()?.join("target").join("loom");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    for package in ["omendb-wal", "omendb-core"] {
        let args = ["test", "--release", "--package", package, "--lib"];
        eprintln!("xtask: RUSTFLAGS=\"--cfg loom\" cargo {}", args.join(" "));
        let status = Command::new(&cargo)
            .args(args)
            .env("RUSTFLAGS", "--cfg loom")
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(workspace_root()?)
            .status()
            .with_context(|| format!("could not start {cargo}"))?;
        if !status.success() {
            bail!("loom model checks of {package} failed with {status}");
        }
    }
    Ok(())
}

/// Everything the test suite runs besides cargo, installed when missing so that no test is ever
/// skipped for want of it: moto (S3), promtool (checks `/metrics`), schemathesis (fuzzes the
/// HTTP API from its OpenAPI document), valgrind and gungraun-runner (the regression benchmarks,
/// which `cargo test --all-targets` also runs).
fn ensure_test_tools() -> Result<()> {
    ensure_libclang()?;
    regression::ensure_tools()?;
    ensure_moto()?;
    ensure_promtool()?;
    ensure_schemathesis()
}

/// The RocksDB peer of `omendb-bench db` (feature `peers`, which clippy and the tests build)
/// generates its bindings with bindgen, which loads libclang; Debian's `libclang-dev` has it.
/// Only `libclang.so*` or `libclang-<version>.so*` will do: a machine may have `libclang-cpp.so`
/// (the C++ interface, which bindgen cannot use) without it.
fn ensure_libclang() -> Result<()> {
    let present = || {
        ["/usr/lib", "/usr/lib64", "/usr/local/lib"]
            .iter()
            .any(|root| {
                Command::new("find")
                    .args([root, "(", "-name", "libclang.so*", "-o", "-name"])
                    .args(["libclang-[0-9]*.so*", ")", "-print", "-quit"])
                    .output()
                    .is_ok_and(|o| !o.stdout.is_empty())
            })
    };
    if present() {
        return Ok(());
    }
    eprintln!("xtask: installing libclang (bindgen builds the RocksDB peer's bindings with it)");
    apt_install("libclang-dev");
    ensure!(
        present(),
        "could not install libclang; the RocksDB peer's build needs it (apt-get install \
         libclang-dev)"
    );
    Ok(())
}

/// Whether `program --version` runs and succeeds.
fn answers(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// `promtool check metrics` validates the server's `/metrics`; it comes with Debian's
/// `prometheus` package.
fn ensure_promtool() -> Result<()> {
    let present = || answers("promtool");
    if present() {
        return Ok(());
    }
    eprintln!("xtask: installing promtool (Debian's prometheus package; the metrics test runs it)");
    apt_install("prometheus");
    if !present() {
        bail!("could not install promtool; the metrics test needs it (apt-get install prometheus)");
    }
    Ok(())
}

/// Installs Debian's `package`, updating the package lists first if the install fails (a fresh
/// machine may not have them yet). The caller checks that what it needs is now there.
fn apt_install(package: &str) {
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|status| status.success())
    };
    if !apt(&["install", "-y", "--no-install-recommends", package]) {
        apt(&["update"]);
        apt(&["install", "-y", "--no-install-recommends", package]);
    }
}

/// The schemathesis the OpenAPI test is written against (its options and its summary's text);
/// another version, even a 4.x, may differ in both.
const SCHEMATHESIS: &str = "4.32.5";

/// The moto whose S3 server the storage tests were written against.
const MOTO: &str = "5.2.1";

/// schemathesis fuzzes the HTTP API against `/openapi.json`; it comes from PyPI, at the version
/// the test was written against.
fn ensure_schemathesis() -> Result<()> {
    let present = || {
        Command::new("schemathesis")
            .arg("--version")
            .output()
            .is_ok_and(|out| {
                out.status.success()
                    && String::from_utf8_lossy(&out.stdout)
                        .split_whitespace()
                        .any(|word| word == SCHEMATHESIS)
            })
    };
    if present() {
        return Ok(());
    }
    eprintln!("xtask: installing schemathesis {SCHEMATHESIS} (the OpenAPI fuzz test runs it)");
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            &format!("schemathesis=={SCHEMATHESIS}"),
        ])
        .status()
        .context("could not start python3 -m pip")?;
    if !status.success() || !present() {
        bail!(
            "could not install schemathesis; the OpenAPI test needs it (pip install schemathesis)"
        );
    }
    Ok(())
}

/// The S3 tests run against a real S3 server, `moto`'s, which the test harness starts as
/// `python3 -m moto.server` on a free loopback port. Installs it from PyPI when it is missing,
/// so the tests never skip for want of it.
fn ensure_moto() -> Result<()> {
    let present = || {
        Command::new("python3")
            .args([
                "-c",
                &format!(
                    "import moto, moto.server, flask, werkzeug; \
                     assert moto.__version__ == '{MOTO}', moto.__version__"
                ),
            ])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    if present() {
        return Ok(());
    }
    eprintln!(
        "xtask: installing moto[server] {MOTO} (the S3 server the storage tests run against)"
    );
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            &format!("moto[server]=={MOTO}"),
        ])
        .status()
        .context("could not start python3 -m pip")?;
    if !status.success() || !present() {
        bail!("could not install moto[server]; the S3 tests need it (pip install 'moto[server]')");
    }
    Ok(())
}

/// Runs `cargo` with `args` from the workspace root and fails when it fails.
fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let root = workspace_root()?;
    eprintln!("xtask: cargo {}", args.join(" "));
    let status = Command::new(&cargo)
        .args(args)
        .current_dir(&root)
        .status()
        .with_context(|| format!("could not start {cargo}"))?;
    if !status.success() {
        bail!("cargo {} failed with {status}", args.join(" "));
    }
    Ok(())
}

/// The workspace root: the parent of this crate's manifest directory.
fn workspace_root() -> Result<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .context("xtask's manifest directory has no parent")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tarpaulin_files_are_summed_per_crate() {
        let root = Path::new("/w");
        let report = r#"{"files": [
            {"path": ["/", "w", "crates", "omendb-wal", "src", "lib.rs"], "covered": 3, "coverable": 4},
            {"path": "/w/xtask/src/main.rs", "covered": 0, "coverable": 2}
        ], "coverage": 50.0}"#;
        let files = covered_lines(report, root).unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(crate_of(&files[0].0), "omendb-wal");
        assert_eq!((files[0].1, files[0].2), (3, 4));
        assert_eq!(crate_of(&files[1].0), "xtask");
        assert!(covered_lines("{}", root).is_err());
    }
}
