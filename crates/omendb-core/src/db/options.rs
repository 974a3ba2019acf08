//! Per-call options and the database's settings.

use std::time::Duration;

use omendb_storage::segment::SegmentWriterOptions;
pub use omendb_wal::Durability;

use crate::index::IndexPolicy;

/// How a write is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct WriteOptions {
    /// `Durable`: after the WAL synced it. `Buffered`: once it is in the WAL's buffer (synced
    /// by the WAL's policy; a crash may lose it). `None` takes the database's default.
    pub durability: Option<Durability>,
}

impl WriteOptions {
    /// Acknowledge after the sync.
    pub const DURABLE: WriteOptions = WriteOptions {
        durability: Some(Durability::Durable),
    };
    /// Acknowledge once buffered.
    pub const BUFFERED: WriteOptions = WriteOptions {
        durability: Some(Durability::Buffered),
    };
}

/// How a scan reads.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ScanOptions {
    /// Value columns to return (the key column always comes first); `None` for all.
    pub projection: Option<Vec<String>>,
    /// Stop after this many rows.
    pub limit: Option<usize>,
    /// Newest key first.
    pub reverse: bool,
    /// Rows per returned batch (default 8192, fewer where the table's segments hold large rows:
    /// about 16 MiB decoded by their average row).
    pub batch_rows: Option<usize>,
}

/// An aggregate function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Aggregate {
    /// Rows (with a non-null value in the column).
    Count,
    /// Sum of the values.
    Sum,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// Mean of the values.
    Avg,
}

impl Aggregate {
    /// The function's name.
    pub fn name(self) -> &'static str {
        match self {
            Aggregate::Count => "count",
            Aggregate::Sum => "sum",
            Aggregate::Min => "min",
            Aggregate::Max => "max",
            Aggregate::Avg => "avg",
        }
    }

    /// The function named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "count" => Aggregate::Count,
            "sum" => Aggregate::Sum,
            "min" => Aggregate::Min,
            "max" => Aggregate::Max,
            "avg" => Aggregate::Avg,
            _ => return None,
        })
    }
}

/// The database's settings (set through [`crate::Db::builder`]).
#[derive(Clone, Debug)]
pub struct Settings {
    /// The active memtable is frozen and flushed once it holds this many bytes.
    pub memtable_bytes: usize,
    /// Writers wait while frozen memtables hold more than this many bytes, or number more
    /// than `max_frozen_memtables`...
    pub max_frozen_bytes: usize,
    /// (see `max_frozen_bytes`; each one is another layer every read consults).
    pub max_frozen_memtables: usize,
    /// ...for at most this long, then get [`crate::Error::Overloaded`].
    pub stall_timeout: Duration,
    /// The durability of writes that do not say.
    pub durability: Durability,
    /// How segment indexes are chosen.
    pub index_policy: IndexPolicy,
    /// Bytes of decoded pages kept in memory.
    pub cache_bytes: u64,
    /// How segments are laid out.
    pub segment: SegmentWriterOptions,
    /// Largest encoded row accepted.
    pub max_row_bytes: usize,
    /// Largest encoded write batch accepted (at most the WAL's record limit).
    pub max_batch_bytes: usize,
    /// Compact once this many sorted runs of overlapping segments are due (see
    /// `db::compaction`).
    pub compaction_trigger: usize,
    /// Compaction cuts its output into segments of about this many decoded bytes.
    pub segment_target_bytes: u64,
    /// How long replaced manifests and unreferenced segments are kept before deletion.
    pub gc_grace: Duration,
    /// Merging overlapping runs that reads pay for; `None` merges only by the write-driven
    /// policy above.
    pub read_compaction: Option<ReadCompaction>,
    /// Once the database (any of its tables) has taken no write for this long, its background
    /// work flushes the active memtable if it holds at least a sixteenth of `memtable_bytes`,
    /// then merges the overlapping runs of every table where the merge is balanced (the runs
    /// besides the largest hold at least a quarter of its bytes; see `db::compaction`), so that
    /// tables read after their writes stop are read from as few runs as that allows. The flush
    /// happens once per idle period, the merges while balanced ones are left; `None` never.
    /// Default 10 s.
    pub idle_compaction: Option<Duration>,
}

/// Compaction that reads pay for (`docs/rfcs/0002-read-triggered-compaction.md`). Reads charge
/// a table for the work its overlapping sorted runs cost them, which one run would not; once
/// the charge not yet spent reaches what merging those runs costs, the runs are merged. So the
/// time spent on such merges never exceeds the time reads lost to the runs, and a table no one
/// reads (or whose segments never overlap, as time series') is never rewritten for reads.
///
/// The costs are estimates measured on the machine the defaults were set on
/// (`docs/architecture.md`, "Compaction that reads pay for"); they are knobs, not guarantees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadCompaction {
    /// What a point read pays for each filter of a run it probes besides the key's last
    /// candidate: a probe one run would not make.
    pub probe: Duration,
    /// What a scan pays each time its next rows come from another segment than the rows
    /// before them: a merge step between runs, which one run takes once per segment boundary.
    pub switch: Duration,
    /// How fast a merge rewrites segments, in bytes of its input segments per second: a merge
    /// of `b` bytes is priced at `b / rewrite_bytes_per_second`.
    pub rewrite_bytes_per_second: u64,
}

impl Default for ReadCompaction {
    fn default() -> Self {
        Self {
            probe: Duration::from_nanos(30),
            switch: Duration::from_nanos(60),
            rewrite_bytes_per_second: 110 << 20,
        }
    }
}

impl Settings {
    /// About how many keys a full memtable holds: what its membership filter is sized for
    /// (a small row and the memtable's per-entry cost, about 80 bytes).
    pub(crate) fn memtable_keys(&self) -> usize {
        (self.memtable_bytes / 80).max(1024)
    }

    /// The smallest memtable an idle database flushes ([`Settings::idle_compaction`]): smaller
    /// ones cost reads little, and flushing each would leave a tiny segment per idle period.
    pub(crate) fn idle_flush_bytes(&self) -> usize {
        self.memtable_bytes / 16
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            memtable_bytes: 64 << 20,
            max_frozen_bytes: 256 << 20,
            max_frozen_memtables: 4,
            stall_timeout: Duration::from_secs(10),
            durability: Durability::Durable,
            index_policy: IndexPolicy::default(),
            cache_bytes: 256 << 20,
            segment: SegmentWriterOptions::default(),
            max_row_bytes: 1 << 20,
            max_batch_bytes: 16 << 20,
            compaction_trigger: 4,
            segment_target_bytes: 256 << 20,
            gc_grace: Duration::from_secs(3600),
            read_compaction: Some(ReadCompaction::default()),
            idle_compaction: Some(Duration::from_secs(10)),
        }
    }
}
