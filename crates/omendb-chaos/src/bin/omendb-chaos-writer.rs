//! `omendb-chaos-writer`: the writer process of the process-kill harness
//! ([`omendb_chaos::kill`]). It opens the database in `--dir` on local files (recovering what a
//! killed writer left), and its tasks write their own keys — puts, deletes and range deletes,
//! half of them acknowledged as durable and half as buffered — until the process is killed,
//! reporting each write on stdout before (`@B keys value`) and after (`@A keys value lsn mode`)
//! its acknowledgement (see [`omendb_chaos::kill`] for the lines).
//!
//! Usage: `omendb-chaos-writer --dir PATH --round N [--tasks T] [--keys K]`.

use std::error::Error;
use std::io::Write;
use std::path::PathBuf;

use omendb_chaos::kill::{self, DELETED, KEYS, TABLE, TASKS};
use omendb_core::{KeyType, Table, WriteOptions};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

type BoxError = Box<dyn Error + Send + Sync>;

const USAGE: &str = "usage: omendb-chaos-writer --dir PATH --round N [--tasks T] [--keys K]";

struct Args {
    dir: PathBuf,
    round: u64,
    tasks: u64,
    keys: u64,
}

fn parse_args() -> Result<Args, BoxError> {
    let (mut dir, mut round, mut tasks, mut keys) = (None, None, TASKS, KEYS);
    let mut args = std::env::args_os().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(USAGE)?;
        let number = || -> Result<u64, BoxError> { Ok(value.to_str().ok_or(USAGE)?.parse()?) };
        match flag.to_str() {
            Some("--dir") => dir = Some(PathBuf::from(&value)),
            Some("--round") => round = Some(number()?),
            Some("--tasks") => tasks = number()?,
            Some("--keys") => keys = number()?,
            _ => return Err(USAGE.into()),
        }
    }
    // Each task needs a key of its own.
    if tasks == 0 || keys < tasks {
        return Err(format!(
            "--keys ({keys}) must be at least --tasks ({tasks}), and both above 0"
        )
        .into());
    }
    Ok(Args {
        dir: dir.ok_or(USAGE)?,
        round: round.ok_or(USAGE)?,
        tasks,
        keys,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    let args = parse_args()?;
    let db = kill::open(&args.dir).await?;
    let table = match db.table(TABLE) {
        Ok(table) => table,
        Err(omendb_core::Error::UnknownTable(_)) => {
            db.create_table(TABLE, KeyType::U64, None).await?
        }
        Err(err) => return Err(err.into()),
    };
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..args.tasks {
        tasks.spawn(write_forever(
            table.clone(),
            args.round,
            task,
            args.tasks,
            args.keys,
        ));
    }
    // The tasks end only by an error: the first one ends the process.
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    Ok(())
}

/// Writes task `task`'s keys (the `task`-th block of `keys / tasks` keys), so no other task
/// writes them: a range deletion stays inside the block.
async fn write_forever(
    table: Table,
    round: u64,
    task: u64,
    tasks: u64,
    keys: u64,
) -> Result<(), BoxError> {
    let mut rng = StdRng::seed_from_u64(round ^ (task << 32));
    let block = keys / tasks;
    let low = task * block;
    for seq in 0u64.. {
        let first = low + rng.random_range(0..block);
        let durable = rng.random_bool(0.5);
        let options = if durable {
            WriteOptions::DURABLE
        } else {
            WriteOptions::BUFFERED
        };
        // Values name their write, so none is ever written twice.
        let (last, value) = match rng.random_range(0..10) {
            0..=6 => (first, format!("{round}.{task}.{seq}")),
            7..=8 => (first, DELETED.to_owned()),
            _ => (
                (first + rng.random_range(0..8)).min(low + block - 1),
                DELETED.to_owned(),
            ),
        };
        let keys = if first == last {
            first.to_string()
        } else {
            format!("{first}-{last}")
        };
        report(&format!("@B {keys} {value}"))?;
        let lsn = if first != last {
            table.delete_range(first..=last, options).await?
        } else if value == DELETED {
            table.delete(first, options).await?
        } else {
            table
                .put_value(first, value.clone().into_bytes(), options)
                .await?
        };
        let mode = if durable { 'D' } else { 'B' };
        report(&format!("@A {keys} {value} {lsn} {mode}"))?;
    }
    Ok(())
}

/// One side-channel line, flushed at once so that a kill loses at most the line being written.
fn report(line: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}
