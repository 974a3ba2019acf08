//! The process-kill harness: runs the `omendb-chaos-writer` binary (the engine embedded in a
//! small process) on local files, `SIGKILL`s it at a random moment, reopens the database
//! in-process and checks every key against the acknowledgements the writer reported — round after
//! round on the same directory. About half the rounds are not checked: the next writer then
//! recovers the killed one's database itself, and is sometimes killed within its first
//! milliseconds (in its open, or its first writes).
//!
//! The side channel is the writer's stdout, one line per event, flushed per line: `@B items`
//! before a write is issued and `@A items lsn mode` after it was acknowledged, where `lsn` is the
//! write's LSN and `mode` is `D` (acknowledged as durable) or `B` (buffered). A write is one
//! item or an atomic batch or transaction of several, each item `table/keys=value` ([`Item`]).
//! Each writer task owns a block of keys in every table, so per key at most one write is in
//! flight when the kill lands, and a write touches one task's keys.
//!
//! What the reopened database may hold: a process killed by the OS keeps everything its log had
//! handed to the OS, which is every record up to some point in LSN order — so for some cut, every
//! acknowledged write below it survived and none at or above it did, and the cut is above every
//! durable acknowledgement. Each key then holds the last write below the cut (or, before any, what
//! the last check found), or the write in flight if its acknowledged writes all survived; a key
//! never written is absent; a write lands on all of its items' keys, in every table, or on none.
//! The check searches the cuts of the unchecked rounds for one that explains every key, and the
//! rows of a full scan of each table must be those the point reads find.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use arrow_array::cast::AsArray;
use arrow_array::types::UInt64Type;
use futures::TryStreamExt;
use omendb_core::{Db, ScanOptions, Table};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// The writer's tables: `u64` keys, byte values. A batch or transaction may span both.
pub const TABLES: [&str; 2] = ["kv", "audit"];
/// The value a side-channel line gives for a deletion.
pub const DELETED: &str = "-";
/// Writer tasks, by default.
pub const TASKS: u64 = 4;
/// Keys the writers write (`0..KEYS`), by default: few, so that they overwrite and delete.
pub const KEYS: u64 = 64;

/// Opens the database the writer writes in `dir`, with a memtable and a compaction trigger
/// small enough that flushes and compactions are running when the kill lands.
pub async fn open(dir: &Path) -> omendb_core::Result<Db> {
    Db::builder()
        .path(dir)
        .memtable_bytes(4 * 1024)
        .compaction_trigger(3)
        .build()
        .await
}

/// What the harness runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// The `omendb-chaos-writer` binary.
    pub writer: PathBuf,
    /// The database directory, kept across rounds.
    pub dir: PathBuf,
    /// Seeds the time each writer runs before its kill.
    pub seed: u64,
    /// How long a writer runs after its first acknowledgement before its kill (drawn in this
    /// range): every round kills a writer that has acknowledged something.
    pub kill_after: Range<Duration>,
    /// Writer tasks.
    pub tasks: u64,
    /// Keys written, `0..keys`; at least `tasks`.
    pub keys: u64,
}

impl Config {
    /// The writer at `writer` on the database in `dir`, with seed 0, [`TASKS`], [`KEYS`], and
    /// kills up to 450 ms after the first acknowledgement (which comes tens of ms after the
    /// start), so that some land among the first writes and some among flushes and merges.
    pub fn new(writer: impl Into<PathBuf>, dir: impl Into<PathBuf>) -> Self {
        Config {
            writer: writer.into(),
            dir: dir.into(),
            seed: 0,
            kill_after: Duration::ZERO..Duration::from_millis(450),
            tasks: TASKS,
            keys: KEYS,
        }
    }
}

/// What passing rounds did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Rounds: writer started and killed, the database then reopened and checked (at once or
    /// after later rounds).
    pub rounds: u64,
    /// Writes the writers acknowledged.
    pub acknowledged: u64,
    /// Writes acknowledged in each round, by round: none would be a round that tested nothing.
    pub acknowledged_by_round: Vec<u64>,
    /// Keys read and checked after the reopens, summed over checks.
    pub keys_checked: u64,
    /// Reopens that checked the database (each covers the rounds since the one before).
    pub checks: u64,
    /// Rounds whose writer was killed within its first milliseconds, whether or not it had
    /// acknowledged anything (the round before was not checked, so it was recovering a crash).
    pub early_kills: u64,
    /// Acknowledged buffered writes the explanation of a check left out (the first one found,
    /// which tries each round's highest cuts first): lost with the process, as buffered writes
    /// may be.
    pub buffered_lost: u64,
}

/// A round that failed, or found the database in a state the acknowledgements do not allow.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Failure {
    /// The writer could not be started, killed or read.
    #[error("round {round}: writer process: {source}")]
    Process {
        /// The round.
        round: u64,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The writer stopped before its kill (its error is on the harness's stderr).
    #[error("round {round}: the writer exited on its own: {status}")]
    WriterExited {
        /// The round.
        round: u64,
        /// How it exited.
        status: ExitStatus,
    },
    /// The writer acknowledged no write in time: the round would have tested nothing.
    #[error("round {round}: the writer acknowledged no write within {FIRST_ACK_TIMEOUT:?}")]
    NoAcknowledgement {
        /// The round.
        round: u64,
    },
    /// The writer did not die of the `SIGKILL` sent to it.
    #[error("round {round}: the killed writer exited with {status}, not by SIGKILL")]
    NotKilled {
        /// The round.
        round: u64,
        /// How it exited.
        status: ExitStatus,
    },
    /// A complete side-channel line that is not `@B keys value` or `@A keys value lsn mode`.
    #[error("round {round}: bad side-channel line {line:?}")]
    SideChannel {
        /// The round.
        round: u64,
        /// The line.
        line: String,
    },
    /// The database could not be reopened or read.
    #[error("round {round}: reopening or reading the database: {source}")]
    Db {
        /// The round.
        round: u64,
        /// The engine's error.
        #[source]
        source: omendb_core::Error,
    },
    /// No cut of the unchecked rounds explains what the database holds; `table`'s `key` is
    /// where the closest explanation (the cuts that explain the most keys) fails.
    #[error(
        "round {round} table {table} key {key}: found {found:?}, but the closest explanation \
         (cuts {cuts:?}) allows only {allowed:?}{}",
        if *torn { ", and not with what the other keys of its task hold (a write landed on \
         only part of its keys)" } else { "" }
    )]
    Mismatch {
        /// The last round checked.
        round: u64,
        /// The table.
        table: &'static str,
        /// The key.
        key: u64,
        /// What the reopened database holds (`None`: absent).
        found: Option<String>,
        /// What the closest explanation allows the key to hold.
        allowed: Vec<Option<String>>,
        /// Whether the key holds an allowed value, but no landing of the writes in flight
        /// allows it together with the other keys of its writer task.
        torn: bool,
        /// That explanation's cut in each unchecked round, oldest first.
        cuts: Vec<u64>,
    },
    /// A full scan and the point reads of the same open disagree about a key.
    #[error(
        "round {round} table {table} key {key}: a scan found {scanned:?}, a multi-get {read:?}"
    )]
    Inconsistent {
        /// The last round checked.
        round: u64,
        /// The table.
        table: &'static str,
        /// The key.
        key: u64,
        /// What the scan found (`None`: no row).
        scanned: Option<String>,
        /// What the multi-get found.
        read: Option<String>,
    },
}

/// The longest a writer may take to acknowledge its first write (it opens the database and
/// recovers what the previous one left first).
const FIRST_ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// The writer process, killed and reaped when dropped unless [`disarm`](Self::disarm)ed: a
/// `std::process::Child` dropped runs on, and a writer left running would write into the next
/// round's (or test's) directory.
struct Writer {
    child: Child,
    armed: bool,
}

impl Writer {
    /// The child, no longer killed on drop (the caller kills it and checks how it died).
    fn disarm(&mut self) -> &mut Child {
        self.armed = false;
        &mut self.child
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Reads the writer's stdout to the end, signalling `acked` at the first complete `@A` line.
fn drain(
    stdout: std::process::ChildStdout,
    acked: tokio::sync::oneshot::Sender<()>,
) -> std::io::Result<Vec<u8>> {
    let mut stdout = BufReader::new(stdout);
    let mut out = Vec::new();
    let mut acked = Some(acked);
    loop {
        let start = out.len();
        if stdout.read_until(b'\n', &mut out)? == 0 {
            return Ok(out);
        }
        if out[start..].starts_with(b"@A ")
            && out.ends_with(b"\n")
            && let Some(acked) = acked.take()
        {
            // The receiver gone means the round was abandoned; the output still drains.
            let _ = acked.send(());
        }
    }
}

/// Whether the writer died of `SIGKILL`, not of its own error or another signal.
#[cfg(unix)]
fn killed_by_sigkill(status: ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    /// `SIGKILL` on every Unix.
    const SIGKILL: i32 = 9;
    status.signal() == Some(SIGKILL)
}

/// Elsewhere `kill` terminates the process with no signal to tell apart.
#[cfg(not(unix))]
fn killed_by_sigkill(status: ExitStatus) -> bool {
    !status.success()
}

/// A key of one of the writer's tables: the table's index in [`TABLES`], and the key.
type Cell = (usize, u64);

/// One item of a write: the keys `first..=last` of table `TABLES[table]` (one key but for a
/// range deletion) and the value (`None`: deleted). On the side channel, `table/keys=value`:
/// `keys` is a key or `first-last`, `value` is [`DELETED`] for a deletion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// The table's index in [`TABLES`].
    pub table: usize,
    /// The first key.
    pub first: u64,
    /// The last key.
    pub last: u64,
    /// The value put, or `None` for a deletion.
    pub value: Option<String>,
}

impl Item {
    fn touches(&self, (table, key): Cell) -> bool {
        self.table == table && (self.first..=self.last).contains(&key)
    }

    /// `table/keys=value`; `None` if it is not one, names no table of [`TABLES`], or puts a
    /// value in a range.
    fn parse(text: &str) -> Option<Item> {
        let (table, rest) = text.split_once('/')?;
        let table = TABLES.iter().position(|t| *t == table)?;
        let (keys, value) = rest.split_once('=')?;
        let (first, last) = match keys.split_once('-') {
            Some((first, last)) => (first.parse().ok()?, last.parse().ok()?),
            None => (keys.parse().ok()?, keys.parse().ok()?),
        };
        // A value holds no separator of the line, and a range is only ever deleted.
        if first > last || value.is_empty() || value.contains([' ', ',', '=']) {
            return None;
        }
        let value = (value != DELETED).then(|| value.to_owned());
        if first != last && value.is_some() {
            return None;
        }
        Some(Item {
            table,
            first,
            last,
            value,
        })
    }
}

impl std::fmt::Display for Item {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let table = TABLES.get(self.table).copied().unwrap_or("?");
        write!(f, "{table}/{}", self.first)?;
        if self.last != self.first {
            write!(f, "-{}", self.last)?;
        }
        write!(f, "={}", self.value.as_deref().unwrap_or(DELETED))
    }
}

/// A write the side channel names: its items, which land together or not at all. The items
/// touch distinct keys, all in one writer task's block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reported {
    /// The items, at least one.
    pub items: Vec<Item>,
}

impl Reported {
    /// The side-channel line of this write issued: `@B items`.
    pub fn issued(&self) -> String {
        format!("@B {}", self.joined())
    }

    /// The side-channel line of this write acknowledged at `lsn`: `@A items lsn mode`.
    pub fn acknowledged(&self, lsn: u64, durable: bool) -> String {
        let mode = if durable { 'D' } else { 'B' };
        format!("@A {} {lsn} {mode}", self.joined())
    }

    fn joined(&self) -> String {
        let items: Vec<String> = self.items.iter().map(Item::to_string).collect();
        items.join(",")
    }

    /// What this write leaves at `cell`, if it touches it.
    fn value_at(&self, cell: Cell) -> Option<Option<String>> {
        self.items
            .iter()
            .find(|item| item.touches(cell))
            .map(|item| item.value.clone())
    }

    /// Every cell the write touches.
    fn cells(&self) -> impl Iterator<Item = Cell> + '_ {
        self.items
            .iter()
            .flat_map(|item| (item.first..=item.last).map(|key| (item.table, key)))
    }

    /// The block of `size` keys the write is in (its first item's).
    fn block(&self, size: u64) -> u64 {
        self.items.first().map_or(0, |item| item.first / size)
    }
}

/// An acknowledged write, with its LSN and whether it was acknowledged as durable.
#[derive(Clone, Debug)]
struct Ack {
    write: Reported,
    lsn: u64,
    durable: bool,
}

/// A side-channel line.
enum Line {
    Before(Reported),
    After(Ack),
}

/// What one killed writer's side channel says.
#[derive(Clone, Debug, Default)]
struct Round {
    acks: Vec<Ack>,
    /// Per cell, the value of the write issued and not acknowledged when the writer died.
    in_flight: BTreeMap<Cell, Option<String>>,
}

impl Round {
    /// Reads a side channel: only complete lines count (the kill may cut the last one short).
    fn parse(round: u64, side_channel: &str) -> Result<Round, Failure> {
        let mut parsed = Round::default();
        for line in side_channel
            .split_inclusive('\n')
            .filter_map(|l| l.strip_suffix('\n'))
        {
            let bad = || Failure::SideChannel {
                round,
                line: line.to_owned(),
            };
            match parse(line).ok_or_else(bad)? {
                Line::Before(write) => {
                    for cell in write.cells() {
                        parsed
                            .in_flight
                            .insert(cell, write.value_at(cell).flatten());
                    }
                }
                Line::After(ack) => {
                    for cell in ack.write.cells() {
                        parsed.in_flight.remove(&cell);
                    }
                    parsed.acks.push(ack);
                }
            }
        }
        Ok(parsed)
    }

    /// The cuts that may explain the database after this round's kill, highest first (so the
    /// explanation found loses the fewest writes): every acknowledged write below a cut
    /// survived, none at or above it. A durable acknowledgement made the log durable up to it,
    /// so every cut is above the last one; past it, a cut just above each acknowledged LSN
    /// (cuts in between explain nothing more).
    fn cuts(&self) -> Vec<u64> {
        let floor = self
            .acks
            .iter()
            .filter(|ack| ack.durable)
            .map(|ack| ack.lsn)
            .max()
            .unwrap_or(0);
        let mut cuts: Vec<u64> = std::iter::once(floor + 1)
            .chain(
                self.acks
                    .iter()
                    .filter(|ack| ack.lsn > floor)
                    .map(|ack| ack.lsn + 1),
            )
            .collect();
        cuts.sort_unstable_by(|a, b| b.cmp(a));
        cuts.dedup();
        cuts
    }

    /// The highest LSN acknowledged to the task writing the keys of block `block` (`size` keys
    /// a block; 0 if none).
    fn last_ack_of(&self, block: u64, size: u64) -> u64 {
        self.acks
            .iter()
            .filter(|ack| ack.write.block(size) == block)
            .map(|ack| ack.lsn)
            .max()
            .unwrap_or(0)
    }

    /// Whether the task writing block `block` had a write in flight, and it may have landed
    /// under `cut`: only if every write the task acknowledged before it is below the cut (it
    /// came after them, so its LSN is above theirs, and a kill loses a suffix of the log).
    fn may_land(&self, block: u64, size: u64, cut: u64) -> bool {
        self.in_flight.keys().any(|(_, key)| key / size == block)
            && self.last_ack_of(block, size) < cut
    }

    /// What `cell` holds after this round, its log cut at `cut` and its task's write in flight
    /// `landed` or not, given what it held before: that write if it landed and touched the
    /// cell, else the cell's last acknowledged write below the cut, else what it held before.
    fn after(&self, cell: Cell, cut: u64, landed: bool, before: Option<String>) -> Option<String> {
        if landed && let Some(value) = self.in_flight.get(&cell) {
            return value.clone();
        }
        self.acks
            .iter()
            .filter(|ack| ack.lsn < cut)
            .filter_map(|ack| Some((ack.lsn, ack.write.value_at(cell)?)))
            .max_by_key(|(lsn, _)| *lsn)
            .map_or(before, |(_, value)| value)
    }

    /// Acknowledged buffered writes at or above `cut`: lost with the process.
    fn lost(&self, cut: u64) -> u64 {
        self.acks.iter().filter(|ack| ack.lsn >= cut).count() as u64
    }
}

/// Where the closest explanation of a database fails.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Miss {
    /// The cells it does not explain.
    misses: usize,
    /// The first of them.
    cell: Cell,
    /// What it allows that cell to hold.
    allowed: Vec<Option<String>>,
    /// Whether the cell holds an allowed value, but not together with its block's other cells.
    torn: bool,
    /// The explanation's cuts.
    cuts: Vec<u64>,
}

/// The cuts, one per round of `rounds`, under which every cell of `found` holds what the rounds
/// leave over `base`; or where the closest explanation fails. Each writer task owns a block of
/// `block` keys in every table and has at most one write in flight per round, which landed or
/// not as a whole (on every cell of it or none); the blocks are explained apart.
fn explain(
    base: &BTreeMap<Cell, String>,
    rounds: &[Round],
    found: &[(Cell, Option<String>)],
    block: u64,
) -> Result<Vec<u64>, Miss> {
    let block = block.max(1);
    // A block's cells of every table side by side.
    let mut found = found.to_vec();
    found.sort_by_key(|((table, key), _)| (key / block, *table, *key));
    let choices: Vec<Vec<u64>> = rounds.iter().map(Round::cuts).collect();
    // An odometer over the rounds' cuts. Each round has one cut per acknowledgement after its
    // last durable one, which half the writes are: a handful.
    let mut at = vec![0usize; rounds.len()];
    let mut closest: Option<Miss> = None;
    loop {
        let cuts: Vec<u64> = at.iter().zip(&choices).map(|(&i, c)| c[i]).collect();
        let mut misses = 0;
        let mut first: Option<(Cell, Vec<Option<String>>, bool)> = None;
        for cells in found.chunk_by(|a, b| a.0.1 / block == b.0.1 / block) {
            let owner = cells[0].0.1 / block;
            // Which of the rounds' writes in flight landed, one bit a round: every choice
            // the cuts allow.
            let landings: Vec<u32> = (0..1u32 << rounds.len())
                .filter(|landed| {
                    rounds
                        .iter()
                        .zip(&cuts)
                        .enumerate()
                        .all(|(i, (round, &cut))| {
                            landed >> i & 1 == 0 || round.may_land(owner, block, cut)
                        })
                })
                .collect();
            let holds = |cell: Cell, landed: u32| {
                rounds.iter().zip(&cuts).enumerate().fold(
                    base.get(&cell).cloned(),
                    |before, (i, (round, &cut))| {
                        round.after(cell, cut, landed >> i & 1 == 1, before)
                    },
                )
            };
            let explained = landings.iter().any(|&landed| {
                cells
                    .iter()
                    .all(|(cell, value)| holds(*cell, landed) == *value)
            });
            if explained {
                continue;
            }
            let allowed = |cell: Cell| {
                let mut allowed: Vec<Option<String>> = Vec::new();
                for &landed in &landings {
                    let held = holds(cell, landed);
                    if !allowed.contains(&held) {
                        allowed.push(held);
                    }
                }
                allowed
            };
            let mut unexplained = 0;
            for (cell, value) in cells {
                let allowed = allowed(*cell);
                if !allowed.contains(value) {
                    unexplained += 1;
                    first.get_or_insert((*cell, allowed, false));
                }
            }
            // Each cell may be explained alone while no landing explains them all (a write that
            // landed on some of its cells): the block's first cell stands for it.
            if unexplained == 0 {
                unexplained = 1;
                first.get_or_insert((cells[0].0, allowed(cells[0].0), true));
            }
            misses += unexplained;
        }
        match first {
            None => return Ok(cuts),
            Some((cell, allowed, torn)) => {
                if closest.as_ref().is_none_or(|c| misses < c.misses) {
                    closest = Some(Miss {
                        misses,
                        cell,
                        allowed,
                        torn,
                        cuts,
                    });
                }
            }
        }
        // The next combination, or the end.
        let mut round = 0;
        loop {
            let Some(i) = at.get_mut(round) else {
                return Err(closest.unwrap_or_default());
            };
            *i += 1;
            if *i < choices[round].len() {
                break;
            }
            *i = 0;
            round += 1;
        }
    }
}

/// Rounds at most left unchecked in a row.
const MAX_UNCHECKED: usize = 2;

/// Runs rounds of start, kill, reopen and check on one directory.
#[derive(Debug)]
pub struct KillHarness {
    config: Config,
    rng: StdRng,
    /// What the database held at the last check: the base the unchecked rounds apply to.
    state: BTreeMap<Cell, String>,
    /// The rounds killed since the last check, oldest first.
    unchecked: Vec<Round>,
    report: Report,
}

impl KillHarness {
    /// A harness that has run no round.
    pub fn new(config: Config) -> Self {
        KillHarness {
            rng: StdRng::seed_from_u64(config.seed),
            config,
            state: BTreeMap::new(),
            unchecked: Vec::new(),
            report: Report::default(),
        }
    }

    /// What the passing rounds did so far.
    pub fn report(&self) -> &Report {
        &self.report
    }

    /// Runs `rounds` rounds, the last one checked.
    pub async fn run(&mut self, rounds: u64) -> Result<Report, Failure> {
        for n in 0..rounds {
            self.round(n + 1 == rounds).await?;
        }
        Ok(self.report.clone())
    }

    /// Runs rounds until `duration` has passed (at least one); the round under way finishes,
    /// and is checked.
    pub async fn run_for(&mut self, duration: Duration) -> Result<Report, Failure> {
        let deadline = Instant::now() + duration;
        loop {
            let last = Instant::now() >= deadline;
            self.round(last).await?;
            if last {
                return Ok(self.report.clone());
            }
        }
    }

    /// One round: a writer killed, and a check unless the dice leave it to a later round
    /// (never if `check`, or once [`MAX_UNCHECKED`] rounds wait).
    async fn round(&mut self, check: bool) -> Result<(), Failure> {
        // A writer that recovers a killed one's database is killed early now and then: in its
        // open, or among its first writes.
        let early = !self.unchecked.is_empty() && self.rng.random_bool(0.3);
        let side_channel = self.run_writer(early).await?;
        if early {
            self.report.early_kills += 1;
        }
        let round = self.next_round();
        self.unchecked.push(Round::parse(round, &side_channel)?);
        if check || self.unchecked.len() >= MAX_UNCHECKED || self.rng.random_bool(0.5) {
            self.check_unchecked().await?;
        }
        Ok(())
    }

    /// The number of the round a writer started now runs.
    fn next_round(&self) -> u64 {
        self.report.rounds + self.unchecked.len() as u64
    }

    /// Starts the writer for the current round, waits for its first acknowledgement, lets it
    /// write for a random time more, kills it with `SIGKILL` and returns its side channel. The
    /// writer dies with this future: dropped early (a test's timeout), it kills the writer.
    pub async fn kill_writer(&mut self) -> Result<String, Failure> {
        self.run_writer(false).await
    }

    /// [`Self::kill_writer`], or if `early`, a kill 0–100 ms after the start whether or not
    /// the writer acknowledged anything.
    async fn run_writer(&mut self, early: bool) -> Result<String, Failure> {
        let round = self.next_round();
        let io = |source| Failure::Process { round, source };
        let mut writer = Writer {
            child: Command::new(&self.config.writer)
                .arg("--dir")
                .arg(&self.config.dir)
                .args(["--round", &round.to_string()])
                .args(["--tasks", &self.config.tasks.to_string()])
                .args(["--keys", &self.config.keys.to_string()])
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(io)?,
            armed: true,
        };
        let stdout = writer
            .child
            .stdout
            .take()
            .ok_or_else(|| io(std::io::Error::other("the writer has no stdout pipe")))?;
        // Drained while the writer runs, so that it never blocks on a full pipe; it says when
        // the first acknowledgement arrives.
        let (acked, first_ack) = tokio::sync::oneshot::channel();
        let reader = std::thread::spawn(move || drain(stdout, acked));
        let after = if early {
            self.rng
                .random_range(Duration::ZERO..Duration::from_millis(100))
        } else {
            match tokio::time::timeout(FIRST_ACK_TIMEOUT, first_ack).await {
                Ok(Ok(())) => {}
                // The pipe closed first: the writer died.
                Ok(Err(_)) => {
                    let status = writer.child.wait().map_err(io)?;
                    return Err(Failure::WriterExited { round, status });
                }
                Err(_) => return Err(Failure::NoAcknowledgement { round }),
            }
            let range = self.config.kill_after.clone();
            if range.is_empty() {
                range.start
            } else {
                self.rng.random_range(range)
            }
        };
        tokio::time::sleep(after).await;
        let child = writer.disarm();
        if let Some(status) = child.try_wait().map_err(io)? {
            return Err(Failure::WriterExited { round, status });
        }
        child.kill().map_err(io)?;
        let status = child.wait().map_err(io)?;
        if !killed_by_sigkill(status) {
            return Err(Failure::NotKilled { round, status });
        }
        let out = reader
            .join()
            .map_err(|_| io(std::io::Error::other("the side-channel reader panicked")))?
            .map_err(io)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// Takes `side_channel` as the current round's (its writer killed since the last check)
    /// and checks it with any unchecked rounds before it: reopens the database and checks every
    /// key against what the last check found and the rounds' acknowledgements. On success the
    /// rounds are counted and the next one starts from what the database holds; on failure the
    /// round is not kept.
    pub async fn check(&mut self, side_channel: &str) -> Result<(), Failure> {
        let round = self.next_round();
        self.unchecked.push(Round::parse(round, side_channel)?);
        let checked = self.check_unchecked().await;
        if checked.is_err() {
            self.unchecked.pop();
        }
        checked
    }

    /// Reopens the database and checks it against the unchecked rounds.
    async fn check_unchecked(&mut self) -> Result<(), Failure> {
        let round = self.next_round().saturating_sub(1);
        let db = open(&self.config.dir)
            .await
            .map_err(|source| Failure::Db { round, source })?;
        let found = self.read_all(round, &db).await;
        let closed = db.close().await;
        let found = found?;
        closed.map_err(|source| Failure::Db { round, source })?;
        let block = self.config.keys / self.config.tasks.max(1);
        let cuts = explain(&self.state, &self.unchecked, &found, block).map_err(
            |Miss {
                 cell: (table, key),
                 allowed,
                 torn,
                 cuts,
                 ..
             }| Failure::Mismatch {
                round,
                torn,
                table: TABLES.get(table).copied().unwrap_or("?"),
                key,
                found: found
                    .iter()
                    .find(|(cell, _)| *cell == (table, key))
                    .and_then(|(_, v)| v.clone()),
                allowed,
                cuts,
            },
        )?;

        for (checked, cut) in self.unchecked.drain(..).zip(cuts) {
            let acknowledged = checked.acks.len() as u64;
            self.report.rounds += 1;
            self.report.acknowledged += acknowledged;
            self.report.acknowledged_by_round.push(acknowledged);
            self.report.buffered_lost += checked.lost(cut);
        }
        self.report.checks += 1;
        self.report.keys_checked += found.len() as u64;
        self.state = found
            .into_iter()
            .filter_map(|(key, value)| Some((key, value?)))
            .collect();
        Ok(())
    }

    /// Reads every table whole: a scan of every row, and a multi-get of the writer's keys, the
    /// keys the side channels name and every key the scan found. The two must agree; returns
    /// what each cell holds, in order.
    async fn read_all(&self, round: u64, db: &Db) -> Result<Vec<(Cell, Option<String>)>, Failure> {
        let mut found = Vec::new();
        for (index, name) in TABLES.into_iter().enumerate() {
            let mut keys: BTreeSet<u64> = (0..self.config.keys).collect();
            for checked in &self.unchecked {
                let acked = checked.acks.iter().flat_map(|ack| ack.write.cells());
                keys.extend(
                    checked
                        .in_flight
                        .keys()
                        .copied()
                        .chain(acked)
                        .filter(|(table, _)| *table == index)
                        .map(|(_, key)| key),
                );
            }
            let table = match db.table(name) {
                Ok(table) => table,
                // Killed before it created the table: nothing is there.
                Err(omendb_core::Error::UnknownTable(_)) => {
                    found.extend(keys.into_iter().map(|key| ((index, key), None)));
                    continue;
                }
                Err(source) => return Err(Failure::Db { round, source }),
            };
            for (key, value) in read_table(round, name, &table, keys).await? {
                found.push(((index, key), value));
            }
        }
        Ok(found)
    }
}

/// Reads `table` whole: a scan of every row, and a multi-get of `keys` and every key the scan
/// found. The two must agree; returns what each key holds.
async fn read_table(
    round: u64,
    name: &'static str,
    table: &Table,
    mut keys: BTreeSet<u64>,
) -> Result<Vec<(u64, Option<String>)>, Failure> {
    let failed = |source| Failure::Db { round, source };
    let batches: Vec<RecordBatch> = table
        .scan(0u64.., ScanOptions::default())
        .map_err(failed)?
        .try_collect()
        .await
        .map_err(failed)?;
    let mut scanned = BTreeMap::new();
    for batch in &batches {
        let (Some(column), Some(values)) = (
            batch.column(0).as_primitive_opt::<UInt64Type>(),
            batch.column(1).as_binary_opt::<i32>(),
        ) else {
            return Err(failed(omendb_core::Error::Corrupt(
                "a scan returned columns of the wrong types".to_owned(),
            )));
        };
        for (i, key) in column.values().iter().enumerate() {
            scanned.insert(*key, String::from_utf8_lossy(values.value(i)).into_owned());
        }
    }
    keys.extend(scanned.keys());
    let keys: Vec<u64> = keys.into_iter().collect();
    let values = table.multi_get_values(&keys).await.map_err(failed)?;
    let found: Vec<(u64, Option<String>)> = keys
        .into_iter()
        .zip(
            values
                .into_iter()
                .map(|v| v.map(|v| String::from_utf8_lossy(&v).into_owned())),
        )
        .collect();
    for (key, read) in &found {
        let row = scanned.get(key);
        if row != read.as_ref() {
            return Err(Failure::Inconsistent {
                round,
                table: name,
                key: *key,
                scanned: row.cloned(),
                read: read.clone(),
            });
        }
    }
    Ok(found)
}

/// `@B items` or `@A items lsn mode`, the items joined by `,`.
fn parse(line: &str) -> Option<Line> {
    let mut parts = line.split(' ');
    let acked = match parts.next()? {
        "@B" => false,
        "@A" => true,
        _ => return None,
    };
    let items = parts
        .next()?
        .split(',')
        .map(Item::parse)
        .collect::<Option<Vec<Item>>>()?;
    let write = Reported { items };
    let line = if acked {
        let lsn = parts.next()?.parse().ok()?;
        let durable = match parts.next()? {
            "D" => true,
            "B" => false,
            _ => return None,
        };
        Line::After(Ack {
            write,
            lsn,
            durable,
        })
    } else {
        Line::Before(write)
    };
    parts.next().is_none().then_some(line)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

    use super::*;

    fn round(side_channel: &str) -> Round {
        Round::parse(0, side_channel).unwrap()
    }

    /// Keys of the first table and what they hold.
    fn holding(pairs: &[(u64, Option<&str>)]) -> Vec<(Cell, Option<String>)> {
        pairs
            .iter()
            .map(|(key, value)| ((0, *key), value.map(str::to_owned)))
            .collect()
    }

    /// Keys 0 and 1 are one task's (blocks of 4): buffered `a` at 10 and `b` at 15, then `c`
    /// in flight. A kill keeps a prefix of the log: `c` can have landed only if `b` did.
    #[test]
    fn a_write_in_flight_past_a_lost_acknowledgement_is_a_hole() {
        let r = [round(
            "@B kv/0=a\n@A kv/0=a 10 B\n@B kv/1=b\n@A kv/1=b 15 B\n@B kv/0=c\n",
        )];
        let base = BTreeMap::new();
        for fine in [
            [(0, Some("c")), (1, Some("b"))],
            [(0, Some("a")), (1, Some("b"))],
            [(0, Some("a")), (1, None)],
            [(0, None), (1, None)],
        ] {
            assert!(explain(&base, &r, &holding(&fine), 4).is_ok(), "{fine:?}");
        }
        let hole = explain(&base, &r, &holding(&[(0, Some("c")), (1, None)]), 4);
        assert!(hole.is_err(), "{hole:?}");
    }

    /// A range deletion in flight lands on every key it covers or on none.
    #[test]
    fn a_range_deletion_in_flight_lands_whole() {
        let r = [round(
            "@B kv/0=a\n@A kv/0=a 10 D\n@B kv/1=b\n@A kv/1=b 11 D\n@B kv/0-1=-\n",
        )];
        let base = BTreeMap::new();
        assert!(explain(&base, &r, &holding(&[(0, None), (1, None)]), 4).is_ok());
        assert!(explain(&base, &r, &holding(&[(0, Some("a")), (1, Some("b"))]), 4).is_ok());
        let torn = explain(&base, &r, &holding(&[(0, None), (1, Some("b"))]), 4);
        assert!(torn.is_err(), "{torn:?}");
    }

    /// A durable acknowledgement keeps every write below it; buffered ones above it may go.
    #[test]
    fn nothing_below_a_durable_acknowledgement_is_lost() {
        let r = [round(
            "@B kv/0=a\n@A kv/0=a 10 B\n@B kv/4=d\n@A kv/4=d 11 D\n@B kv/1=b\n@A kv/1=b 12 B\n",
        )];
        let base = BTreeMap::new();
        let all = holding(&[(0, Some("a")), (1, Some("b")), (4, Some("d"))]);
        assert_eq!(explain(&base, &r, &all, 4), Ok(vec![13]));
        let lost_above = holding(&[(0, Some("a")), (1, None), (4, Some("d"))]);
        assert_eq!(explain(&base, &r, &lost_above, 4), Ok(vec![12]));
        let lost_below = holding(&[(0, None), (1, None), (4, Some("d"))]);
        assert!(explain(&base, &r, &lost_below, 4).is_err());
    }

    /// Rounds are explained in turn: an LSN a lost buffered write had is taken again by the
    /// next writer, and what the first check found is the base of both.
    #[test]
    fn a_later_round_reuses_the_lsns_an_earlier_one_lost() {
        let rounds = [
            round("@B kv/0=a\n@A kv/0=a 10 D\n@B kv/1=b\n@A kv/1=b 11 B\n"),
            round("@B kv/4=x\n@A kv/4=x 11 D\n"),
        ];
        let base = BTreeMap::from([((0, 5), "old".to_owned())]);
        let found = holding(&[(0, Some("a")), (1, None), (4, Some("x")), (5, Some("old"))]);
        assert_eq!(explain(&base, &rounds, &found, 4), Ok(vec![11, 12]));
        let resurrected = holding(&[(0, Some("a")), (1, None), (4, Some("x")), (5, None)]);
        assert!(explain(&base, &rounds, &resurrected, 4).is_err());
    }

    /// A batch across both tables lands on every cell or on none: `kv/0` put and `audit/0`
    /// deleted together (what they held before comes from the base), and a batch acknowledged
    /// below a durable acknowledgement is kept whole.
    #[test]
    fn a_batch_across_tables_lands_whole() {
        let base = BTreeMap::from([((0, 0), "old".to_owned()), ((1, 0), "old".to_owned())]);
        let both = |kv: Option<&str>, audit: Option<&str>| {
            vec![
                ((0, 0), kv.map(str::to_owned)),
                ((1, 0), audit.map(str::to_owned)),
            ]
        };
        let in_flight = [round("@B kv/0=new,audit/0-2=-\n")];
        assert!(explain(&base, &in_flight, &both(Some("new"), None), 4).is_ok());
        assert!(explain(&base, &in_flight, &both(Some("old"), Some("old")), 4).is_ok());
        for torn in [both(Some("new"), Some("old")), both(Some("old"), None)] {
            let found = explain(&base, &in_flight, &torn, 4);
            assert!(found.is_err(), "{torn:?}: {found:?}");
        }
        let durable = [round(
            "@B kv/0=new,audit/0-2=-\n@A kv/0=new,audit/0-2=- 7 B\n@B kv/1=x\n@A kv/1=x 8 D\n",
        )];
        let mut kept = both(Some("new"), None);
        kept.push(((0, 1), Some("x".to_owned())));
        assert!(explain(&base, &durable, &kept, 4).is_ok());
        let mut lost = both(Some("old"), Some("old"));
        lost.push(((0, 1), Some("x".to_owned())));
        assert!(explain(&base, &durable, &lost, 4).is_err());
    }

    /// Lines are written by [`Reported`] and read back the same; anything else is refused.
    #[test]
    fn side_channel_lines_round_trip_and_bad_ones_are_refused() {
        let write = Reported {
            items: vec![
                Item {
                    table: 1,
                    first: 3,
                    last: 9,
                    value: None,
                },
                Item {
                    table: 0,
                    first: 4,
                    last: 4,
                    value: Some("1.2.3".to_owned()),
                },
            ],
        };
        assert_eq!(write.issued(), "@B audit/3-9=-,kv/4=1.2.3");
        assert!(matches!(parse(&write.issued()), Some(Line::Before(w)) if w == write));
        let acked = write.acknowledged(42, true);
        assert_eq!(acked, "@A audit/3-9=-,kv/4=1.2.3 42 D");
        assert!(matches!(
            parse(&acked),
            Some(Line::After(Ack { write: w, lsn: 42, durable: true })) if w == write
        ));
        for bad in [
            "",
            "@B",
            "@B kv/1",
            "@B nope/1=a",
            "@B kv/1-3=a",
            "@B kv/3-1=-",
            "@B kv/1=",
            "@B kv/1=a,",
            "@B kv/1=a extra",
            "@A kv/1=a 5",
            "@A kv/1=a 5 X",
            "@A kv/1=a five D",
            "@X kv/1=a",
        ] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
    }
}
