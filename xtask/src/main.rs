//! `cargo xtask` — OmenDB's automation.
//!
//! Each subcommand is a recipe a developer or CI runs by name, so that the README's commands, CI
//! and a newcomer's machine all do the same thing. It only orchestrates `cargo` and the tools the
//! tests need; it holds no product code.

use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

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
        Task::Bench { args } => {
            let mut full = vec!["run", "--release", "--package", "omendb-bench", "--"];
            full.extend(args.iter().map(String::as_str));
            cargo(&full)
        }
    }
}

/// Runs every test target of the workspace, doc tests included, with the services the tests
/// need installed first.
fn test() -> Result<()> {
    ensure_moto()?;
    cargo(&["test", "--workspace", "--all-targets"])?;
    cargo(&["test", "--workspace", "--doc"])?;
    loom()
}

/// Runs the engine's model-based test with more seeds and operations than the suite's.
fn model(seeds: u64, ops: u64, seed: Option<u64>) -> Result<()> {
    ensure_moto()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(&cargo);
    command
        .args([
            "test",
            "--release",
            "--package",
            "omendb-core",
            "--test",
            "db_model",
        ])
        .env("OMENDB_MODEL_SEEDS", seeds.to_string())
        .env("OMENDB_MODEL_OPS", ops.to_string())
        .current_dir(workspace_root()?);
    if let Some(seed) = seed {
        command.env("OMENDB_MODEL_SEED", seed.to_string());
    }
    let status = command
        .status()
        .with_context(|| format!("could not start {cargo}"))?;
    if !status.success() {
        bail!("the model-based test failed with {status}; it printed the seed to replay");
    }
    Ok(())
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

/// The S3 tests run against a real S3 server, `moto`'s, which the test harness starts as
/// `python3 -m moto.server` on a free loopback port. Installs it from PyPI when it is missing,
/// so the tests never skip for want of it.
fn ensure_moto() -> Result<()> {
    let present = || {
        Command::new("python3")
            .args(["-c", "import moto.server, flask, werkzeug"])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    if present() {
        return Ok(());
    }
    eprintln!("xtask: installing moto[server] (the S3 server the storage tests run against)");
    let status = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "moto[server]>=5,<6"])
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
fn workspace_root() -> Result<std::path::PathBuf> {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(std::path::Path::to_path_buf)
        .context("xtask's manifest directory has no parent")
}
