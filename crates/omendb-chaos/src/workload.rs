//! The random workload of the simulation: the operations of the engine's model-based test
//! (writes of every kind, reads of every kind, checkpoints, compactions, reopens), drawn from a
//! seed, and the map each write makes of the oracle.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use bytes::Bytes;
use rand::RngExt;
use rand::rngs::StdRng;

/// What a key-value table holds: the oracle the engine is checked against.
pub type State = BTreeMap<u64, Bytes>;

/// Keys are drawn below this, so writes overwrite and delete each other's keys.
pub const KEYS: u64 = 300;

/// A change of the table, as one atomic write.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// Puts of `(key, value)`, in order (one or many: a batch).
    Put(Vec<(u64, Bytes)>),
    /// Deletes one key.
    Delete(u64),
    /// Deletes every key in the range.
    DeleteRange(RangeInclusive<u64>),
    /// A transaction: reads `key` (which must show the current value), puts `value` there and
    /// deletes `key + 1` if `delete_next`.
    Transaction {
        /// The key read and written.
        key: u64,
        /// Its new value.
        value: Bytes,
        /// Whether the next key is deleted too.
        delete_next: bool,
    },
}

impl Write {
    /// Applies the write to `state`.
    pub fn apply(&self, state: &mut State) {
        match self {
            Write::Put(puts) => {
                for (key, value) in puts {
                    state.insert(*key, value.clone());
                }
            }
            Write::Delete(key) => {
                state.remove(key);
            }
            Write::DeleteRange(range) => state.retain(|k, _| !range.contains(k)),
            Write::Transaction {
                key,
                value,
                delete_next,
            } => {
                state.insert(*key, value.clone());
                if *delete_next {
                    state.remove(&(key + 1));
                }
            }
        }
    }
}

/// One step of the workload.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// A write, acknowledged after its WAL record is synced (`durable`) or buffered.
    Write {
        /// The change.
        write: Write,
        /// Whether it asks for a durable acknowledgement.
        durable: bool,
    },
    /// A point read.
    Get(u64),
    /// A many-key read.
    MultiGet(Vec<u64>),
    /// A range scan.
    Scan {
        /// The keys.
        range: RangeInclusive<u64>,
        /// Newest key first.
        reverse: bool,
        /// At most this many rows.
        limit: Option<usize>,
        /// Rows per returned batch.
        batch_rows: usize,
    },
    /// A count aggregate over a range.
    Count(RangeInclusive<u64>),
    /// A checkpoint (flush everything).
    Checkpoint,
    /// A compaction.
    Compact,
    /// A clean close and reopen.
    Reopen,
    /// No request for [`PAUSE`]: long enough for the database to find itself idle.
    Pause,
}

/// How long a [`Step::Pause`] lasts.
pub const PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

/// A value: empty one time in 24 (a value of no bytes is not a deletion), otherwise at least 9
/// random bytes, so that an older version of a key that comes back is told from the newer one
/// (values of up to 23 bytes, some of one or two, were alike often enough to hide it).
fn value(rng: &mut StdRng) -> Bytes {
    let len = match rng.random_range(0..24) {
        0 => 0,
        n => n + 8,
    };
    Bytes::from((0..len).map(|_| rng.random::<u8>()).collect::<Vec<_>>())
}

fn range(rng: &mut StdRng) -> RangeInclusive<u64> {
    let a = rng.random_range(0..KEYS);
    let b = (a + rng.random_range(0..40)).min(KEYS + 5);
    a..=b
}

impl Step {
    /// Draws the next step: about half writes, the rest reads and maintenance.
    pub fn random(rng: &mut StdRng) -> Step {
        let durable = rng.random_bool(0.3);
        let write = |write| Step::Write { write, durable };
        match rng.random_range(0..100) {
            0..=34 => write(Write::Put(vec![(rng.random_range(0..KEYS), value(rng))])),
            35..=39 => write(Write::Put(
                (0..rng.random_range(1..20))
                    .map(|_| (rng.random_range(0..KEYS), value(rng)))
                    .collect(),
            )),
            40..=46 => write(Write::Delete(rng.random_range(0..KEYS))),
            47..=49 => write(Write::DeleteRange(range(rng))),
            50..=54 => write(Write::Transaction {
                key: rng.random_range(0..KEYS),
                value: value(rng),
                delete_next: rng.random_bool(0.3),
            }),
            55..=69 => Step::Get(rng.random_range(0..KEYS + 5)),
            70..=74 => Step::MultiGet(
                (0..rng.random_range(1..30))
                    .map(|_| rng.random_range(0..KEYS))
                    .collect(),
            ),
            75..=84 => Step::Scan {
                range: range(rng),
                reverse: rng.random_bool(0.3),
                limit: rng.random_bool(0.3).then(|| rng.random_range(0..10)),
                batch_rows: rng.random_range(1..16),
            },
            85..=88 => Step::Count(range(rng)),
            89..=91 => Step::Checkpoint,
            92..=94 => Step::Compact,
            95..=96 => Step::Pause,
            _ => Step::Reopen,
        }
    }
}
