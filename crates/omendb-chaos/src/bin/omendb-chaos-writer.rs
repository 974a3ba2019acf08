//! `omendb-chaos-writer`: the writer process of the process-kill harness
//! ([`omendb_chaos::kill`]). It opens the database in `--dir` on local files (recovering what a
//! killed writer left), and its tasks write their own keys of both tables — single puts, deletes
//! and range deletes, atomic batches across the tables, and transactions that read before they
//! write; half of them acknowledged as durable and half as buffered — until the process is
//! killed, reporting each write on stdout before (`@B items`) and after (`@A items lsn mode`)
//! its acknowledgement (see [`omendb_chaos::kill`] for the lines). A task knows what its keys
//! hold (it reads them once at its start, and only it writes them), so a transaction's reads
//! are checked: a read that disagrees ends the process with an error, which fails the round.
//!
//! Usage: `omendb-chaos-writer --dir PATH --round N [--tasks T] [--keys K]`.

use std::collections::BTreeMap;
use std::error::Error;
use std::io::Write;
use std::path::PathBuf;

use omendb_chaos::kill::{self, Item, KEYS, Reported, TABLES, TASKS};
use omendb_core::{Db, KeyType, Table, WriteOptions};
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
    let mut tables = Vec::with_capacity(TABLES.len());
    for name in TABLES {
        tables.push(match db.table(name) {
            Ok(table) => table,
            Err(omendb_core::Error::UnknownTable(_)) => {
                db.create_table(name, KeyType::U64, None).await?
            }
            Err(err) => return Err(err.into()),
        });
    }
    let block = args.keys / args.tasks;
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..args.tasks {
        let writer = TaskWriter {
            db: db.clone(),
            tables: tables.clone(),
            rng: StdRng::seed_from_u64(args.round ^ (task << 32)),
            name: format!("{}.{task}", args.round),
            keys: task * block..(task + 1) * block,
            known: BTreeMap::new(),
        };
        tasks.spawn(writer.write_forever());
    }
    // The tasks end only by an error: the first one ends the process.
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    Ok(())
}

/// One task: it alone writes `keys` in every table.
struct TaskWriter {
    db: Db,
    /// `tables[i]` is `TABLES[i]`; every item it draws names one of them.
    tables: Vec<Table>,
    rng: StdRng,
    /// `round.task`, the start of every value it writes.
    name: String,
    keys: std::ops::Range<u64>,
    /// What each of its keys holds, by table index and key (absent: deleted or never written).
    known: BTreeMap<(usize, u64), Vec<u8>>,
}

impl TaskWriter {
    async fn write_forever(mut self) -> Result<(), BoxError> {
        let keys: Vec<u64> = self.keys.clone().collect();
        for (index, table) in self.tables.iter().enumerate() {
            let values = table.multi_get_values(&keys).await?;
            for (key, value) in keys.iter().zip(values) {
                if let Some(value) = value {
                    self.known.insert((index, *key), value.to_vec());
                }
            }
        }
        for seq in 0u64.. {
            let durable = self.rng.random_bool(0.5);
            let options = if durable {
                WriteOptions::DURABLE
            } else {
                WriteOptions::BUFFERED
            };
            let kind = self.rng.random_range(0..20);
            let items = match kind {
                0..=13 => 1,
                _ => self.rng.random_range(2..=4),
            };
            let write = self.draw(items, seq);
            report(&write.issued())?;
            let lsn = match kind {
                // Single writes through the table, most of them puts.
                0..=13 => self.single(&write, options).await?,
                14..=17 => {
                    let mut batch = self.db.batch();
                    for item in &write.items {
                        let table = &self.tables[item.table];
                        match &item.value {
                            Some(value) => batch.put_value(table, item.first, value.clone())?,
                            None if item.first == item.last => batch.delete(table, item.first)?,
                            None => batch.delete_range(table, item.first..=item.last)?,
                        };
                    }
                    self.db.write(batch, options).await?
                }
                _ => self.transaction(&write, options).await?,
            };
            report(&write.acknowledged(lsn, durable))?;
            for item in &write.items {
                for key in item.first..=item.last {
                    match &item.value {
                        Some(value) => self.known.insert((item.table, key), value.clone().into()),
                        None => self.known.remove(&(item.table, key)),
                    };
                }
            }
        }
        Ok(())
    }

    /// `items` items on distinct keys of this task's: puts (seven in ten), deletes and range
    /// deletes, in either table. Values name their write and item, so none is written twice.
    fn draw(&mut self, items: usize, seq: u64) -> Reported {
        let mut drawn: Vec<Item> = Vec::with_capacity(items);
        while drawn.len() < items {
            let table = self.rng.random_range(0..TABLES.len());
            let first = self.rng.random_range(self.keys.clone());
            let (last, value) = match self.rng.random_range(0..10) {
                0..=6 => (first, Some(format!("{}.{seq}.{}", self.name, drawn.len()))),
                7..=8 => (first, None),
                _ => (
                    (first + self.rng.random_range(0..8)).min(self.keys.end - 1),
                    None,
                ),
            };
            // Distinct keys: which of two items on one key wins is not this test's question.
            let overlaps = drawn
                .iter()
                .any(|d| d.table == table && d.first <= last && first <= d.last);
            if !overlaps {
                drawn.push(Item {
                    table,
                    first,
                    last,
                    value,
                });
            }
        }
        Reported { items: drawn }
    }

    /// The write's one item through its table.
    async fn single(&self, write: &Reported, options: WriteOptions) -> Result<u64, BoxError> {
        let [item] = write.items.as_slice() else {
            return Err(format!("a single write of {} items", write.items.len()).into());
        };
        let table = &self.tables[item.table];
        Ok(match &item.value {
            Some(value) => {
                table
                    .put_value(item.first, value.clone().into_bytes(), options)
                    .await?
            }
            None if item.first == item.last => table.delete(item.first, options).await?,
            None => table.delete_range(item.first..=item.last, options).await?,
        })
    }

    /// The write as a transaction that first reads one of the task's keys (it must hold what
    /// the task last wrote there, or what the task found at its start) and, after its writes,
    /// reads its first item back (it must see its own write).
    async fn transaction(
        &mut self,
        write: &Reported,
        options: WriteOptions,
    ) -> Result<u64, BoxError> {
        let mut txn = self.db.begin();
        let table = self.rng.random_range(0..TABLES.len());
        let key = self.rng.random_range(self.keys.clone());
        let seen = txn.get_value(&self.tables[table], key).await?;
        let expected = self.known.get(&(table, key));
        if seen.as_deref() != expected.map(Vec::as_slice) {
            return Err(format!(
                "{}: a transaction read {}/{key} as {seen:?}, but the task last left {expected:?}",
                self.name, TABLES[table]
            )
            .into());
        }
        for item in &write.items {
            let table = &self.tables[item.table];
            match &item.value {
                Some(value) => txn.put_value(table, item.first, value.clone())?,
                None if item.first == item.last => txn.delete(table, item.first)?,
                None => txn.delete_range(table, item.first..=item.last)?,
            }
        }
        let first = write.items.first().ok_or("a transaction of no items")?;
        let own = txn
            .get_value(&self.tables[first.table], first.first)
            .await?;
        if own.as_deref() != first.value.as_deref().map(str::as_bytes) {
            return Err(format!(
                "{}: a transaction read its own write {first} back as {own:?}",
                self.name
            )
            .into());
        }
        Ok(txn.commit(options).await?)
    }
}

/// One side-channel line, flushed at once so that a kill loses at most the line being written.
fn report(line: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}
