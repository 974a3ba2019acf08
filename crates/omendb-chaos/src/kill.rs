//! The process-kill harness: runs the `omendb-chaos-writer` binary (the engine embedded in a
//! small process) on local files, `SIGKILL`s it at a random moment, reopens the database
//! in-process and checks every key against the acknowledgements the writer reported — round after
//! round on the same directory, so each writer recovers what the previous one left.
//!
//! The side channel is the writer's stdout, one line per event, flushed per line: `@B key value`
//! before a write is issued and `@A key value` after it was acknowledged as durable, where
//! `value` is [`DELETED`] for a deletion. Each writer task owns its keys (`key % tasks`), so per
//! key at most one write is in flight when the kill lands: after the reopen the key must hold
//! its last acknowledged value or the value in flight, and a key never written is absent.

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
use omendb_core::{Db, ScanOptions};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// The writer's table: `u64` keys, byte values.
pub const TABLE: &str = "kv";
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
    /// Rounds: writer started, killed, database reopened and checked.
    pub rounds: u64,
    /// Writes the writers acknowledged.
    pub acknowledged: u64,
    /// Writes acknowledged in each round, by round: none would be a round that tested nothing.
    pub acknowledged_by_round: Vec<u64>,
    /// Keys read and checked after the reopens, summed over rounds.
    pub keys_checked: u64,
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
    /// A complete side-channel line that is not `@B key value` or `@A key value`.
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
    /// A key holds a value that neither its last acknowledged write nor its write in flight
    /// gives (`None`: absent; `in_flight: Some(None)`: a deletion).
    #[error(
        "round {round} key {key}: found {found:?}, acknowledged {acknowledged:?}, \
         in flight {in_flight:?}"
    )]
    Mismatch {
        /// The round.
        round: u64,
        /// The key.
        key: u64,
        /// What the reopened database holds.
        found: Option<String>,
        /// The value of the last acknowledged write (or of the previous check).
        acknowledged: Option<String>,
        /// The write issued but not acknowledged when the writer died.
        in_flight: Option<Option<String>>,
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

/// What a key may hold after the kill.
#[derive(Clone, Debug, Default)]
struct Expected {
    acknowledged: Option<String>,
    in_flight: Option<Option<String>>,
}

/// Runs rounds of start, kill, reopen and check on one directory.
#[derive(Debug)]
pub struct KillHarness {
    config: Config,
    rng: StdRng,
    /// What the database held at the last check: the base the next side channel applies to.
    state: BTreeMap<u64, String>,
    report: Report,
}

impl KillHarness {
    /// A harness that has run no round.
    pub fn new(config: Config) -> Self {
        KillHarness {
            rng: StdRng::seed_from_u64(config.seed),
            config,
            state: BTreeMap::new(),
            report: Report::default(),
        }
    }

    /// What the passing rounds did so far.
    pub fn report(&self) -> &Report {
        &self.report
    }

    /// Runs `rounds` rounds.
    pub async fn run(&mut self, rounds: u64) -> Result<Report, Failure> {
        for _ in 0..rounds {
            self.round().await?;
        }
        Ok(self.report.clone())
    }

    /// Runs rounds until `duration` has passed (at least one); the round under way finishes.
    pub async fn run_for(&mut self, duration: Duration) -> Result<Report, Failure> {
        let deadline = Instant::now() + duration;
        loop {
            self.round().await?;
            if Instant::now() >= deadline {
                return Ok(self.report.clone());
            }
        }
    }

    /// One round: [`kill_writer`](Self::kill_writer), then [`check`](Self::check).
    pub async fn round(&mut self) -> Result<(), Failure> {
        let side_channel = self.kill_writer().await?;
        self.check(&side_channel).await
    }

    /// Starts the writer for the current round, waits for its first acknowledgement, lets it
    /// write for a random time more, kills it with `SIGKILL` and returns its side channel. The
    /// writer dies with this future: dropped early (a test's timeout), it kills the writer.
    pub async fn kill_writer(&mut self) -> Result<String, Failure> {
        let round = self.report.rounds;
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
        let after = if range.is_empty() {
            range.start
        } else {
            self.rng.random_range(range)
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

    /// Reopens the database and checks every key against the state of the last check and the
    /// `side_channel` of the writer killed since; on success the round is counted and the next
    /// one starts from what the database holds.
    pub async fn check(&mut self, side_channel: &str) -> Result<(), Failure> {
        let round = self.report.rounds;
        let mut expected: BTreeMap<u64, Expected> = self
            .state
            .iter()
            .map(|(key, value)| {
                let acknowledged = Some(value.clone());
                (
                    *key,
                    Expected {
                        acknowledged,
                        in_flight: None,
                    },
                )
            })
            .collect();
        let mut acknowledged = 0;
        // Only complete lines count: the kill may cut the last one short.
        for line in side_channel
            .split_inclusive('\n')
            .filter_map(|l| l.strip_suffix('\n'))
        {
            let bad = || Failure::SideChannel {
                round,
                line: line.to_owned(),
            };
            let (acked, key, value) = parse(line).ok_or_else(bad)?;
            let entry = expected.entry(key).or_default();
            if acked {
                acknowledged += 1;
                entry.acknowledged = value;
                entry.in_flight = None;
            } else {
                entry.in_flight = Some(value);
            }
        }

        let db = open(&self.config.dir)
            .await
            .map_err(|source| Failure::Db { round, source })?;
        let found = self.verify(round, &db, &expected).await;
        let closed = db.close().await;
        let found = found?;
        closed.map_err(|source| Failure::Db { round, source })?;

        self.report.rounds += 1;
        self.report.acknowledged += acknowledged;
        self.report.acknowledged_by_round.push(acknowledged);
        self.report.keys_checked += found.len() as u64;
        self.state = found
            .into_iter()
            .filter_map(|(key, value)| Some((key, value?)))
            .collect();
        Ok(())
    }

    /// Reads every key the writer writes, every key the side channel names and every key found
    /// above them; returns what each holds, or the first one no write allows.
    async fn verify(
        &self,
        round: u64,
        db: &Db,
        expected: &BTreeMap<u64, Expected>,
    ) -> Result<Vec<(u64, Option<String>)>, Failure> {
        let failed = |source| Failure::Db { round, source };
        let table = match db.table(TABLE) {
            Ok(table) => table,
            // Killed before it created the table: nothing may have been acknowledged.
            Err(omendb_core::Error::UnknownTable(_)) => {
                return check_all(round, expected.keys().map(|key| (*key, None)), expected);
            }
            Err(err) => return Err(failed(err)),
        };
        let mut keys: BTreeSet<u64> = (0..self.config.keys).collect();
        keys.extend(expected.keys());
        // A get of the writer's keys would miss a phantom outside them.
        let above: Vec<RecordBatch> = table
            .scan(self.config.keys.., ScanOptions::default())
            .map_err(failed)?
            .try_collect()
            .await
            .map_err(failed)?;
        for batch in &above {
            if let Some(column) = batch.column(0).as_primitive_opt::<UInt64Type>() {
                keys.extend(column.values().iter());
            }
        }
        let keys: Vec<u64> = keys.into_iter().collect();
        let values = table.multi_get_values(&keys).await.map_err(failed)?;
        let found = keys.into_iter().zip(
            values
                .into_iter()
                .map(|v| v.map(|v| String::from_utf8_lossy(&v).into_owned())),
        );
        check_all(round, found, expected)
    }
}

/// Checks each `(key, found)` against what `expected` allows.
fn check_all(
    round: u64,
    found: impl IntoIterator<Item = (u64, Option<String>)>,
    expected: &BTreeMap<u64, Expected>,
) -> Result<Vec<(u64, Option<String>)>, Failure> {
    let found: Vec<_> = found.into_iter().collect();
    for (key, value) in &found {
        let allowed = expected.get(key).cloned().unwrap_or_default();
        if *value != allowed.acknowledged && allowed.in_flight.as_ref() != Some(value) {
            return Err(Failure::Mismatch {
                round,
                key: *key,
                found: value.clone(),
                acknowledged: allowed.acknowledged,
                in_flight: allowed.in_flight,
            });
        }
    }
    Ok(found)
}

/// `@B key value` or `@A key value` as (acknowledged, key, value; `None` for a deletion).
fn parse(line: &str) -> Option<(bool, u64, Option<String>)> {
    let mut parts = line.split(' ');
    let acked = match parts.next()? {
        "@B" => false,
        "@A" => true,
        _ => return None,
    };
    let key = parts.next()?.parse().ok()?;
    let value = parts.next().filter(|v| !v.is_empty())?;
    if parts.next().is_some() {
        return None;
    }
    Some((acked, key, (value != DELETED).then(|| value.to_owned())))
}
