//! Compaction: size-tiered, streaming merges of overlapping segments, and garbage collection.
//!
//! Segments whose key ranges overlap transitively form a component; a segment alone in its
//! component (time series appended in key order) is never rewritten. Within a component, the
//! segments one flush or one compaction wrote form a sorted run (one LSN range, disjoint keys).
//! A compaction merges a window of consecutive runs, newest first, in which each run is no
//! larger than the runs before it together (RocksDB's universal compaction with a size ratio of
//! 1), once the window holds `compaction_trigger` runs: a byte is rewritten about
//! log2(data / memtable) times, where merging whole components rewrote everything at every
//! compaction. `Db::compact` rewrites each table of two or more segments whole, into one run.
//!
//! A merge streams. Inputs are read batch by batch (key-disjoint segments one after another), a
//! heap orders their rows by (key, LSN descending), and the output is written as it comes, cut
//! into segments of about `segment_target_bytes` at key boundaries. Memory is a batch per input
//! and the key column of the segment being written, whatever the size of the merge.
//!
//! Per key, a merge keeps every version newer than the oldest snapshot (the horizon) and the
//! newest at or below it, and drops that one too if it is a tombstone no older segment outside
//! the window may hold the key for (their filters answer). Reads take the first segment in
//! newest-`lsn_max` order that has a visible version of a key, so a window is merged only if
//! every segment outside it that overlaps it is older than each window segment it overlaps, or
//! newer than the whole window: the merged segments then stand where each input stood.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::UInt64Type;
use arrow_array::{Array, ArrayRef, BooleanArray, RecordBatch, UInt64Array};
use futures::stream::BoxStream;
use futures::{FutureExt, TryStreamExt};

use super::flush::SegmentSink;
use super::version::TableState;
use super::{Inner, current_data};
use crate::error::{Error, Result};
use crate::memtable::Lsn;
use crate::segment::Segment;

/// How often the background work collects garbage when no compaction gives it a reason.
const GC_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// Most runs one merge reads at once: a batch of each input is in memory.
const MAX_RUNS: usize = 16;

/// Rows per batch read from each input (fewer where rows are large: see
/// [`MERGE_BATCH_BYTES`]), and rows merged between two writes.
const MERGE_BATCH_ROWS: usize = 8 * 1024;

/// Decoded bytes a batch read from an input holds at most, by its segment's bytes per row, and
/// bytes of picked rows merged between two writes: counted in rows alone, 8,192 rows of 256 KiB
/// passed Arrow's 2 GiB in one read or one write, which failed every time the window came up.
const MERGE_BATCH_BYTES: usize = 16 << 20;

/// Batches per input a merge holds at most before it writes what it picked and lets go of the
/// rest. Held until `MERGE_BATCH_ROWS` rows were picked, every batch stayed in memory while a
/// merge dropped most rows (a table deleted whole held all of it).
const SOURCES_PER_INPUT: usize = 4;

/// Bytes of input batches a merge reads at most (besides the one per input it holds) before it
/// writes what it picked: rows counted alone let a window of large values pick more than Arrow's
/// 2 GiB into one write (8,192 rows of 256 KiB), which failed every time the window came up.
const MERGE_SOURCE_BYTES: usize = 64 << 20;

/// Background work that changes no data: a failure is reported in `stats()` and retried, and
/// the chore's next success clears it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Chore {
    Compaction,
    GarbageCollection,
    WalTruncation,
}

impl Chore {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Chore::Compaction => "compaction",
            Chore::GarbageCollection => "garbage collection",
            Chore::WalTruncation => "WAL truncation",
        }
    }
}

impl Inner {
    /// Starts a compaction task unless one is running: it compacts what is due, then collects
    /// garbage past its grace period.
    pub(crate) fn spawn_compaction(self: &Arc<Self>) {
        let mut slot = self.compaction.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_some_and(|task| !task.is_finished())
            || self.closed.load(std::sync::atomic::Ordering::Acquire)
        {
            return;
        }
        let db = Arc::clone(self);
        *slot = Some(tokio::spawn(async move {
            let done = std::panic::AssertUnwindSafe(db.compact_due())
                .catch_unwind()
                .await
                // A panic (a bug) leaves the data as it was, like any failed merge: reported.
                .unwrap_or_else(|panic| {
                    Err((
                        Chore::Compaction,
                        Error::Corrupt(format!(
                            "compaction panicked: {}",
                            super::panic_message(panic.as_ref())
                        )),
                    ))
                });
            match done {
                // A merge that `close` abandoned: nothing failed.
                Ok(()) | Err((_, Error::Closed)) => {}
                Err((chore, err)) => db.background_failed(chore, err),
            }
        }));
    }

    /// Compacts what is due and collects garbage; a failure names the chore that failed.
    async fn compact_due(self: &Arc<Self>) -> std::result::Result<(), (Chore, Error)> {
        let compact = || async {
            self.compact(false)
                .await
                .map_err(|err| (Chore::Compaction, err))
        };
        let collect = || async {
            self.collect_garbage()
                .await
                .map_err(|err| (Chore::GarbageCollection, err))
        };
        let compacted = compact().await;
        // Flushes leave replaced manifest versions, and crashes leave unpublished segments,
        // even where nothing compacts (time series): collect at least once a minute, whether
        // the merges failed or not (a merge that failed at every try stopped every collection
        // of the database).
        let due = {
            let last = self.last_gc.lock().unwrap_or_else(|p| p.into_inner());
            last.is_none_or(|at| at.elapsed() >= GC_INTERVAL)
        };
        if matches!(compacted, Ok(merges) if merges > 0) || due {
            match (&compacted, collect().await) {
                (Err(_), Err((chore, err))) => self.background_failed(chore, err),
                (_, collected) => collected?,
            }
        }
        compacted?;
        // The idle work may have marked the database idle while this task ran, and found it
        // running: the merges idleness allows are this task's to make.
        if self.is_idle() && compact().await? > 0 {
            collect().await?;
        }
        Ok(())
    }

    /// Merges every component of two or more segments into one run, then collects garbage
    /// (also when a merge failed: its output is garbage); the first failure is returned.
    pub(crate) async fn compact_all(self: &Arc<Self>) -> Result<()> {
        self.check_writable()?;
        let compacted = self.compact(true).await;
        let collected = self.collect_garbage().await;
        compacted?;
        collected
    }

    /// Compaction and garbage collection are not on the write path: their failures leave the
    /// data as it was (inputs stay live, garbage stays), so they are reported in `stats()` and
    /// retried, and poison writes only when this writer can no longer publish (fenced).
    fn background_failed(&self, chore: Chore, err: Error) {
        if matches!(err, Error::Closed) {
            // The database closed under the work: nothing failed.
        } else if err.kind() == crate::ErrorKind::Fatal {
            self.fail(err);
        } else {
            self.report_background(chore, &err);
        }
    }

    /// Records a failure of work that changes no data (it is retried later) in `stats()`, until
    /// the same chore next succeeds.
    pub(crate) fn report_background(&self, chore: Chore, err: &Error) {
        tracing::warn!(error = %err, chore = chore.name(), "background work failed; it is retried");
        self.background_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(chore, err.to_string());
    }

    /// Clears `chore`'s failure: it succeeded since. Left in place, one passing error (a
    /// store's timeout) kept the server not ready until restart.
    pub(crate) fn background_succeeded(&self, chore: Chore) {
        self.background_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&chore);
    }

    async fn collect_garbage(&self) -> Result<()> {
        // No flush or compaction of this process is between writing a segment and publishing
        // it while garbage is collected, so even a zero grace period cannot delete one of its
        // segments; the grace period covers writers in other processes.
        // Compaction first: a long merge then holds up this collection, not the flushes.
        let _compacting = self.compact_lock.lock().await;
        let _flushing = self.flush_lock.lock().await;
        *self.last_gc.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::time::Instant::now());
        let segments = self.prefix.clone().join("segments");
        crash_point!("gc.before");
        let mut writer = self.publishing().await?;
        if writer.is_unsettled() {
            // A publish of unknown outcome (a merge's, whose answer was lost): settling it here
            // would make a landed version current that this process's view does not hold (its
            // outputs instead of the inputs it reads), and the next publish would build on it.
            // The next flush or merge settles it and publishes this process's view over it.
            return Ok(());
        }
        // Taken under the manifest writer's lock, which `drop_table` holds until it has retired
        // its table's segments: a set taken before the lock could miss a dropped table's
        // segments that a scan of this process still reads, and the collection would then
        // delete them as unreferenced (found by a review: the gap between the two).
        let in_use = self.segments_in_use();
        writer
            .collect_garbage(&segments, &in_use, chrono::Utc::now())
            .await?;
        self.background_succeeded(Chore::GarbageCollection);
        crash_point!("gc.after");
        Ok(())
    }

    /// Merges windows until none is due (with `whole`, until every component is one run);
    /// returns how many merges ran.
    async fn compact(self: &Arc<Self>, whole: bool) -> Result<usize> {
        let _compacting = self.compact_lock.lock().await;
        let mut compacted = 0;
        let mut rewritten = std::collections::HashSet::new();
        // A merge changes its table's segments (and flushes add more), so each choice is made
        // on the version after the last merge.
        while let Some(window) = self.next_window(whole, &mut rewritten) {
            // A `compact()` cut short by `close` says so.
            self.check_open()?;
            self.compact_window(window).await?;
            compacted += 1;
        }
        self.background_succeeded(Chore::Compaction);
        Ok(compacted)
    }

    /// The next window to merge, if any. With `whole`, a table of two or more segments is
    /// rewritten whole once (into `rewritten`), which also drops what a snapshot kept in
    /// segments that overlap nothing; first, if its segments overlap more than `MAX_RUNS` deep,
    /// the newest runs of its components are merged until they do not.
    fn next_window(
        &self,
        whole: bool,
        rewritten: &mut std::collections::HashSet<u32>,
    ) -> Option<Window> {
        let version = self.version.load_full();
        for table in version.tables.values() {
            let id = table.def.id;
            if whole && rewritten.contains(&id) {
                continue;
            }
            if whole && table.segments.len() >= 2 && chains(&table.segments).len() <= MAX_RUNS {
                rewritten.insert(id);
                return Some(Window {
                    table: Arc::clone(table),
                    segments: table.segments.clone(),
                    older: Vec::new(),
                    cause: Cause::Policy,
                });
            }
            let trigger = if whole {
                2
            } else {
                self.settings.compaction_trigger
            };
            if let Some(window) = components(&table.segments)
                .iter()
                .find_map(|component| Window::pick(table, component, trigger, whole))
            {
                return Some(window);
            }
        }
        if whole {
            return None;
        }
        // No merge is due for the writes: one that reads have paid for, if any. A table's
        // charge pays for all of its components' merges at once, which then run one after
        // another, each spending its price.
        version
            .tables
            .values()
            .find_map(|table| {
                let windows: Vec<Window> = components(&table.segments)
                    .iter()
                    .filter_map(|component| Window::pick(table, component, 2, true))
                    .collect();
                let bytes = windows.iter().map(Window::bytes).sum();
                if windows.is_empty() || !table.charge.pays_for(bytes) {
                    return None;
                }
                windows.into_iter().next().map(|window| Window {
                    cause: Cause::Reads,
                    ..window
                })
            })
            .or_else(|| {
                // Nor for reads: if the database is idle, a balanced merge.
                if !self.is_idle() {
                    return None;
                }
                version.tables.values().find_map(idle_window)
            })
    }

    /// Whether the database is idle: the background work found the WAL's last LSN standing
    /// still for [`super::Settings::idle_compaction`], and no write has followed.
    pub(crate) fn is_idle(&self) -> bool {
        self.idle_lsn.load(std::sync::atomic::Ordering::Relaxed) == self.wal.last_lsn().unwrap_or(0)
    }

    /// Whether there is work the database does once idle that has not been done: before the
    /// idle flush, a memtable of at least [`super::Settings::idle_flush_bytes`]; before and
    /// after it, a merge [`idle_window`] finds.
    pub(crate) fn idle_work_due(&self) -> bool {
        if self.settings.idle_compaction.is_none() {
            return false;
        }
        let flush_due = !self.is_idle()
            && self
                .version
                .load()
                .active()
                .is_some_and(|g| g.approximate_bytes() >= self.settings.idle_flush_bytes());
        flush_due || self.idle_merge_due()
    }

    /// Whether some table has a merge [`idle_window`] finds.
    pub(crate) fn idle_merge_due(&self) -> bool {
        self.version
            .load()
            .tables
            .values()
            .any(|t| idle_window(t).is_some())
    }

    #[tracing::instrument(level = "debug", name = "db.compaction", skip_all, fields(table = %window.table.def.name, segments = window.segments.len()))]
    async fn compact_window(self: &Arc<Self>, window: Window) -> Result<()> {
        let started = std::time::Instant::now();
        let horizon = self.visibility.horizon();
        let bytes = window.bytes();
        let Window {
            table,
            segments: window,
            older,
            cause,
        } = window;
        let mut written = Merge::new(self, &table, &window, older, horizon)
            .run()
            .await?;
        // The segments the merge cut its output into are one sorted run.
        if written.len() > 1 {
            let run = omendb_storage::manifest::new_run();
            for (_, segment) in &mut written {
                segment.entry.run = Some(run);
            }
        }
        let removed: Vec<String> = window.iter().map(|s| s.entry.path.clone()).collect();

        crash_point!("compaction.before_manifest");
        let mut writer = self.publishing().await?;
        let mut data = current_data(&writer);
        let Some(entry) = data.tables.values_mut().find(|t| t.id == table.def.id) else {
            return Ok(());
        };
        if !removed
            .iter()
            .all(|path| entry.segments.iter().any(|s| &s.path == path))
        {
            return Err(Error::Corrupt(
                "a compaction's input segments left the manifest while it ran".to_owned(),
            ));
        }
        entry.segments.retain(|s| !removed.contains(&s.path));
        let mut added = Vec::with_capacity(written.len());
        for (id, segment) in written {
            entry.segments.push(segment.entry.clone());
            added.push((id, Arc::new(segment)));
        }
        writer.commit(data).await?;
        let mut unswapped = Unswapped(Some(self));
        crash_point!("compaction.after_manifest");
        self.retire(&window);
        self.swap_segments(&added, &removed, None, horizon);
        unswapped.0 = None;
        table.charge.spend(bytes);
        let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        counters.compactions += 1;
        match cause {
            Cause::Policy => {}
            Cause::Reads => counters.read_compactions += 1,
            Cause::Idle => counters.idle_compactions += 1,
        }
        // Timed only when counted: a merge whose table was dropped meanwhile is neither, so
        // the histogram's count and `omendb_compactions_total` agree.
        metrics::histogram!("omendb_compaction_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(())
    }
}

/// Armed between a merge's publish and its swap: a compaction that stops there (a panic) left
/// the manifest holding its outputs while this process reads its inputs, and every later merge
/// of the window failed ("input segments left the manifest"); writes are refused until reopen.
struct Unswapped<'a>(Option<&'a Inner>);

impl Drop for Unswapped<'_> {
    fn drop(&mut self) {
        if let Some(db) = self.0 {
            db.fail(Error::Corrupt(
                "a compaction stopped between publishing its segments and reading them".to_owned(),
            ));
        }
    }
}

/// A window chosen for a merge.
struct Window {
    table: Arc<TableState>,
    segments: Vec<Arc<Segment>>,
    /// The segments outside the window that are not newer than all of it: what may still hold
    /// an older version of a key the window deletes.
    older: Vec<Arc<Segment>>,
    /// What the merge is for.
    cause: Cause,
}

/// Why a window is merged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cause {
    /// The size-tiered policy (writes added runs), or `Db::compact`.
    Policy,
    /// Reads paid for it.
    Reads,
    /// The database is idle and the merge is balanced ([`idle_window`]).
    Idle,
}

impl Window {
    /// The window `pick` chooses in `component` of `table`, if one is due.
    fn pick(
        table: &Arc<TableState>,
        component: &[Arc<Segment>],
        trigger: usize,
        whole: bool,
    ) -> Option<Self> {
        let spans: Vec<Span> = component.iter().map(|s| Span::of(s)).collect();
        let chosen = pick(&spans, trigger, whole)?;
        let top = chosen.iter().map(|&i| spans[i].lsns.1).max().unwrap_or(0);
        let older = (0..component.len())
            .filter(|i| !chosen.contains(i) && spans[*i].lsns.0 <= top)
            .map(|i| Arc::clone(&component[i]))
            .collect();
        let segments = chosen.iter().map(|&i| Arc::clone(&component[i])).collect();
        Some(Window {
            table: Arc::clone(table),
            segments,
            older,
            cause: Cause::Policy,
        })
    }

    /// Bytes of the segments merged.
    fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.entry.seal.size).sum()
    }
}

/// The merge an idle database makes in `table`, if any: the newest runs (up to `MAX_RUNS`) of a
/// component whose merge is [`balanced`].
fn idle_window(table: &Arc<TableState>) -> Option<Window> {
    components(&table.segments).iter().find_map(|component| {
        let window = Window::pick(table, component, 2, true)?;
        balanced(&window.segments).then_some(Window {
            cause: Cause::Idle,
            ..window
        })
    })
}

/// Whether merging `segments` is worth it before any read has paid for it: the runs besides
/// the largest hold at least a quarter as many bytes as it. The merge then rewrites at most five
/// times what the smaller runs hold (less than a leveled LSM's write amplification), and a table
/// that is one large run plus a little new data is left to the size-tiered policy and to reads,
/// which would pay to rewrite the large run.
fn balanced(segments: &[Arc<Segment>]) -> bool {
    let spans: Vec<Span> = segments.iter().map(|s| Span::of(s)).collect();
    balanced_runs(&spans)
}

/// [`balanced`] over the segments' spans.
fn balanced_runs(spans: &[Span]) -> bool {
    let sizes: Vec<u64> = runs(spans)
        .iter()
        .map(|run| run.iter().map(|&i| spans[i].bytes).sum())
        .collect();
    let largest = sizes.iter().copied().max().unwrap_or(0);
    let rest = sizes.iter().sum::<u64>() - largest;
    sizes.len() >= 2 && rest.saturating_mul(4) >= largest
}

/// Components of two or more segments whose key ranges overlap transitively.
fn components(segments: &[Arc<Segment>]) -> Vec<Vec<Arc<Segment>>> {
    let mut ranged: Vec<(u64, u64, &Arc<Segment>)> = segments
        .iter()
        .filter_map(|s| Some((s.entry.key_min?, s.entry.key_max?, s)))
        .collect();
    ranged.sort_by_key(|(lo, _, _)| *lo);
    let mut groups: Vec<Vec<Arc<Segment>>> = Vec::new();
    let mut reach = None;
    for (lo, hi, segment) in ranged {
        match (reach, groups.last_mut()) {
            (Some(end), Some(group)) if lo <= end => {
                group.push(Arc::clone(segment));
                reach = Some(end.max(hi));
            }
            _ => {
                groups.push(vec![Arc::clone(segment)]);
                reach = Some(hi);
            }
        }
    }
    groups.retain(|g| g.len() > 1);
    groups
}

/// What the policy knows of a segment: its key range, LSN range, size and run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    keys: (u64, u64),
    lsns: (Lsn, Lsn),
    bytes: u64,
    /// The run id the segments of one merge share.
    run: Option<u64>,
}

impl Span {
    fn of(segment: &Segment) -> Self {
        let entry = &segment.entry;
        Self {
            keys: (entry.key_min.unwrap_or(0), entry.key_max.unwrap_or(0)),
            lsns: (entry.lsn_min.unwrap_or(0), entry.lsn_max.unwrap_or(0)),
            bytes: entry.seal.size,
            run: entry.run,
        }
    }

    fn overlaps(&self, other: &Span) -> bool {
        self.keys.0 <= other.keys.1 && other.keys.0 <= self.keys.1
    }
}

/// The component's sorted runs (positions of segments), newest first. A flush writes one LSN
/// range; the segments a merge cuts its output into share a run id, and each has an LSN range
/// of its own within the window's. Segments of one run id, and LSN ranges that meet, make one
/// run: by LSN ranges alone, a merge's output of keys written in order was several runs, which
/// the policy merged again into the same segments, without end.
fn runs(spans: &[Span]) -> Vec<Vec<usize>> {
    // Each run id's segments first, as one LSN range.
    let mut groups: Vec<((Lsn, Lsn), Vec<usize>)> = Vec::new();
    for (i, span) in spans.iter().enumerate() {
        let same = span.run.and_then(|run| {
            groups
                .iter()
                .position(|(_, g)| spans[g[0]].run == Some(run))
        });
        match same {
            Some(g) => {
                let ((lo, hi), members) = &mut groups[g];
                *lo = (*lo).min(span.lsns.0);
                *hi = (*hi).max(span.lsns.1);
                members.push(i);
            }
            None => groups.push((span.lsns, vec![i])),
        }
    }
    groups.sort_by_key(|(lsns, _)| *lsns);
    let mut runs: Vec<(Lsn, Vec<usize>)> = Vec::new();
    for ((lo, hi), members) in groups {
        match runs.last_mut() {
            Some((end, run)) if lo <= *end => {
                *end = (*end).max(hi);
                run.extend(members);
            }
            _ => runs.push((hi, members)),
        }
    }
    runs.into_iter().rev().map(|(_, run)| run).collect()
}

/// The positions of the segments to merge, if a window of at least `trigger` runs is due (with
/// `whole`, the newest `MAX_RUNS` runs whatever their sizes).
fn pick(spans: &[Span], trigger: usize, whole: bool) -> Option<Vec<usize>> {
    let runs = runs(spans);
    let bytes = |run: &[usize]| run.iter().map(|&i| spans[i].bytes).sum::<u64>();
    for start in 0..runs.len() {
        let mut total = bytes(&runs[start]);
        let mut end = start + 1;
        while end < runs.len() && end - start < MAX_RUNS && (whole || bytes(&runs[end]) <= total) {
            total += bytes(&runs[end]);
            end += 1;
        }
        if end - start >= trigger {
            let window = runs[start..end].concat();
            if mergeable(spans, &window) {
                return Some(window);
            }
        }
    }
    None
}

/// Whether merging `window` keeps every read's answer (see the module documentation).
fn mergeable(spans: &[Span], window: &[usize]) -> bool {
    let top = window.iter().map(|&i| spans[i].lsns.1).max().unwrap_or(0);
    (0..spans.len()).filter(|i| !window.contains(i)).all(|t| {
        let outside = spans[t];
        outside.lsns.0 > top
            || window
                .iter()
                .map(|&i| spans[i])
                .filter(|inside| inside.overlaps(&outside))
                .all(|inside| outside.lsns.1 < inside.lsns.0)
    })
}

/// One input of a merge: key-disjoint segments read one after another, in key order.
struct Input {
    pending: VecDeque<Arc<Segment>>,
    stream: Option<BoxStream<'static, omendb_storage::Result<RecordBatch>>>,
    batch: Option<RecordBatch>,
    keys: UInt64Array,
    lsns: UInt64Array,
    tombstones: BooleanArray,
    row: usize,
    /// Where `batch` is in the merge's sources.
    source: usize,
}

impl Input {
    fn new(segments: VecDeque<Arc<Segment>>) -> Self {
        Self {
            pending: segments,
            stream: None,
            batch: None,
            keys: UInt64Array::from(Vec::<u64>::new()),
            lsns: UInt64Array::from(Vec::<u64>::new()),
            tombstones: BooleanArray::from(Vec::<bool>::new()),
            row: 0,
            source: 0,
        }
    }

    /// The current row's key and LSN.
    fn head(&self) -> (u64, Lsn) {
        (self.keys.value(self.row), self.lsns.value(self.row))
    }

    /// Moves to the next row, reading the next batch when this one is done; false at the end.
    async fn advance(&mut self, sources: &mut Vec<RecordBatch>, columns: usize) -> Result<bool> {
        self.row += 1;
        if self.row < self.keys.len() {
            return Ok(true);
        }
        self.load(sources, columns).await
    }

    /// Reads the next non-empty batch (from the next segment when this one is done) and adds
    /// it to `sources`; false at the end.
    async fn load(&mut self, sources: &mut Vec<RecordBatch>, columns: usize) -> Result<bool> {
        loop {
            let next = match self.stream.as_mut() {
                Some(stream) => stream.try_next().await?,
                None => None,
            };
            let Some(batch) = next else {
                let Some(segment) = self.pending.pop_front() else {
                    self.batch = None;
                    return Ok(false);
                };
                let all = segment.reader.projection_all();
                let rows = 0..segment.reader.rows();
                let batch_rows = segment.rows_in(MERGE_BATCH_BYTES, MERGE_BATCH_ROWS, None);
                self.stream = Some(segment.reader.scan(rows, &all, batch_rows)?);
                continue;
            };
            if batch.num_rows() == 0 {
                continue;
            }
            if batch.num_columns() != columns {
                return Err(Error::Corrupt(format!(
                    "a segment has {} columns where its table stores {columns}",
                    batch.num_columns()
                )));
            }
            let system = |c: usize| {
                batch
                    .column(c)
                    .as_primitive_opt::<UInt64Type>()
                    .cloned()
                    .ok_or_else(|| {
                        Error::Corrupt("a segment's key or LSN column is not u64".to_owned())
                    })
            };
            self.keys = system(0)?;
            self.lsns = system(1)?;
            self.tombstones = batch.column(2).as_boolean_opt().cloned().ok_or_else(|| {
                Error::Corrupt("a segment's tombstone column is not boolean".to_owned())
            })?;
            self.row = 0;
            self.source = sources.len();
            sources.push(batch.clone());
            self.batch = Some(batch);
            return Ok(true);
        }
    }
}

/// A streaming merge of a window into new segments.
struct Merge<'a> {
    db: &'a Inner,
    table: &'a TableState,
    horizon: Lsn,
    older: Vec<Arc<Segment>>,
    inputs: Vec<Input>,
    /// The batches the pending picks point into...
    sources: Vec<RecordBatch>,
    /// Bytes of the batches loaded since the last write (besides the one per input it kept).
    loaded_bytes: usize,
    /// (source, row) of each output row not yet written.
    picks: Vec<(usize, usize)>,
    sink: Option<SegmentSink>,
    written: Vec<(u32, Segment)>,
}

impl<'a> Merge<'a> {
    fn new(
        db: &'a Inner,
        table: &'a TableState,
        window: &[Arc<Segment>],
        older: Vec<Arc<Segment>>,
        horizon: Lsn,
    ) -> Self {
        Self {
            db,
            table,
            horizon,
            older,
            inputs: chains(window).into_iter().map(Input::new).collect(),
            sources: Vec::new(),
            loaded_bytes: 0,
            picks: Vec::with_capacity(MERGE_BATCH_ROWS * 2),
            sink: None,
            written: Vec::new(),
        }
    }

    /// Merges everything; returns the segments written (none if every row was dropped).
    async fn run(mut self) -> Result<Vec<(u32, Segment)>> {
        match self.merge().await {
            Ok(()) => Ok(self.written),
            Err(err) => {
                // Segments already finished are unpublished objects: garbage collection takes
                // them after the grace period.
                if let Some(sink) = self.sink.take() {
                    sink.abort().await;
                }
                Err(err)
            }
        }
    }

    async fn merge(&mut self) -> Result<()> {
        let columns = 3 + self.table.def.schema().fields().len();
        let mut heap: BinaryHeap<Reverse<(u64, Reverse<Lsn>, usize)>> = BinaryHeap::new();
        for (i, input) in self.inputs.iter_mut().enumerate() {
            if input.load(&mut self.sources, columns).await? {
                let (key, lsn) = input.head();
                heap.push(Reverse((key, Reverse(lsn), i)));
            }
        }
        // (lsn, tombstone, source, row) of the current key's versions, newest first.
        let mut versions: Vec<(Lsn, bool, usize, usize)> = Vec::new();
        while let Some(&Reverse((key, _, _))) = heap.peek() {
            versions.clear();
            while let Some(&Reverse((next, Reverse(lsn), i))) = heap.peek() {
                if next != key {
                    break;
                }
                heap.pop();
                let input = &mut self.inputs[i];
                // A version is one (key, LSN); should two inputs hold it, one copy stays.
                if versions.last().is_none_or(|v| v.0 != lsn) {
                    let tombstone = input.tombstones.value(input.row);
                    versions.push((lsn, tombstone, input.source, input.row));
                }
                let loaded = self.sources.len();
                if input.advance(&mut self.sources, columns).await? {
                    let (key, lsn) = input.head();
                    heap.push(Reverse((key, Reverse(lsn), i)));
                }
                if let Some(batch) = self.sources.get(loaded) {
                    self.loaded_bytes += batch.get_array_memory_size();
                }
            }
            let newer = versions.iter().take_while(|v| v.0 > self.horizon).count();
            self.picks
                .extend(versions[..newer].iter().map(|v| (v.2, v.3)));
            if let Some(base) = versions.get(newer) {
                let droppable = base.1 && !self.older.iter().any(|s| s.may_contain(key));
                if !droppable {
                    self.picks.push((base.2, base.3));
                }
            }
            // Written only between keys, so no key's versions span two segments.
            if self.picks.len() >= MERGE_BATCH_ROWS
                || self.sources.len() > self.inputs.len() * SOURCES_PER_INPUT
                || self.loaded_bytes > MERGE_SOURCE_BYTES
            {
                self.write_picks().await?;
            }
            // A key loads at most one batch per input.
            debug_assert!(self.sources.len() <= self.inputs.len() * (SOURCES_PER_INPUT + 1));
        }
        self.write_picks().await?;
        if let Some(sink) = self.sink.take() {
            self.written.extend(sink.finish(self.db).await?);
        }
        Ok(())
    }

    /// Writes the picked rows, finishing the segment once it reaches its target size; the
    /// sources then restart from each input's current batch. A database closing abandons the
    /// merge here (its inputs stay live), so `close` waits for at most one batch of it, not for
    /// a whole window that may take minutes.
    async fn write_picks(&mut self) -> Result<()> {
        if self.db.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Error::Closed);
        }
        if !self.picks.is_empty() {
            let sink = match self.sink.take() {
                Some(sink) => sink,
                None => self.db.create_segment(&self.table.def).await?,
            };
            let sink = self.sink.insert(sink);
            let width = sink.schema().fields().len();
            let mut columns: Vec<ArrayRef> = Vec::with_capacity(width);
            for c in 0..width {
                let arrays: Vec<&dyn Array> =
                    self.sources.iter().map(|b| b.column(c).as_ref()).collect();
                columns.push(arrow_select::interleave::interleave(&arrays, &self.picks)?);
            }
            let batch = RecordBatch::try_new(Arc::clone(sink.schema()), columns)?;
            sink.write(&batch).await?;
            self.picks.clear();
            if sink.bytes() as u64 >= self.db.settings.segment_target_bytes
                && let Some(sink) = self.sink.take()
            {
                self.written.extend(sink.finish(self.db).await?);
            }
        }
        self.sources.clear();
        for input in &mut self.inputs {
            if let Some(batch) = &input.batch {
                input.source = self.sources.len();
                self.sources.push(batch.clone());
            }
        }
        self.loaded_bytes = 0;
        Ok(())
    }
}

/// The window's segments as few chains of key-disjoint segments as intervals allow, each in
/// key order: a merge reads one batch of each chain at a time.
fn chains(window: &[Arc<Segment>]) -> Vec<VecDeque<Arc<Segment>>> {
    let mut sorted = window.to_vec();
    sorted.sort_by_key(|s| s.entry.key_min);
    let mut chains: Vec<VecDeque<Arc<Segment>>> = Vec::new();
    for segment in sorted {
        let free = chains.iter_mut().find(|chain| {
            matches!((chain.back().and_then(|last| last.entry.key_max), segment.entry.key_min),
                (Some(end), Some(start)) if end < start)
        });
        match free {
            Some(chain) => chain.push_back(segment),
            None => chains.push(VecDeque::from([segment])),
        }
    }
    chains
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

    use super::*;

    fn span(keys: (u64, u64), lsns: (Lsn, Lsn), bytes: u64) -> Span {
        Span {
            keys,
            lsns,
            bytes,
            run: None,
        }
    }

    /// `n` flushes of full-range random keys, oldest first, each of `bytes`.
    fn flushes(n: u64, bytes: u64) -> Vec<Span> {
        (0..n)
            .map(|i| span((0, 1000), (i * 10 + 1, i * 10 + 10), bytes))
            .collect()
    }

    #[test]
    fn an_idle_merge_needs_the_smaller_runs_to_hold_a_quarter_of_the_largest() {
        // Runs of 400 (merged earlier, two key-disjoint segments of one LSN range) and 100.
        let mut spans = vec![
            span((0, 499), (1, 10), 200),
            span((500, 1000), (1, 10), 200),
            span((0, 1000), (11, 20), 100),
        ];
        assert!(balanced_runs(&spans));
        spans[2].bytes = 99;
        assert!(!balanced_runs(&spans));
        // Two runs that add up to a quarter.
        spans.push(span((0, 1000), (21, 30), 1));
        assert!(balanced_runs(&spans));
        // One run, however cut, has nothing to merge.
        assert!(!balanced_runs(&spans[..2]));
        assert!(!balanced_runs(&[]));
    }

    #[test]
    fn nothing_is_due_below_the_trigger() {
        assert_eq!(pick(&flushes(3, 100), 4, false), None);
    }

    #[test]
    fn equal_flushes_merge_once_the_trigger_is_reached() {
        let mut window = pick(&flushes(4, 100), 4, false).unwrap();
        window.sort_unstable();
        assert_eq!(window, vec![0, 1, 2, 3]);
    }

    #[test]
    fn a_large_old_run_waits_until_the_newer_ones_add_up_to_it() {
        // An old merged run of 500 bytes, then four flushes of 100: the four merge alone.
        let mut spans = vec![span((0, 1000), (1, 40), 500)];
        spans.extend((0..4).map(|i| span((0, 1000), (41 + i * 10, 50 + i * 10), 100)));
        let mut window = pick(&spans, 4, false).unwrap();
        window.sort_unstable();
        assert_eq!(window, vec![1, 2, 3, 4]);
        // With a fifth flush, the newer runs add up to the old run's size: it joins.
        spans.push(span((0, 1000), (81, 90), 100));
        assert_eq!(pick(&spans, 4, false).unwrap().len(), 6);
    }

    #[test]
    fn the_segments_of_one_run_move_together() {
        // One compaction's output, cut in three key ranges, and four newer flushes.
        let mut spans: Vec<Span> = (0..3)
            .map(|i| span((i * 100, i * 100 + 99), (1, 40), 100))
            .collect();
        spans.extend((0..4).map(|i| span((0, 299), (41 + i * 10, 50 + i * 10), 100)));
        let mut window = pick(&spans, 4, false).unwrap();
        window.sort_unstable();
        assert_eq!(window, vec![0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(runs(&spans).len(), 5);
        // The cut segments' LSN ranges differ but meet: still one run, the oldest.
        spans[1].lsns = (3, 38);
        spans[2].lsns = (1, 20);
        let runs = runs(&spans);
        assert_eq!(runs.len(), 5);
        let mut oldest = runs[4].clone();
        oldest.sort_unstable();
        assert_eq!(oldest, vec![0, 1, 2]);
    }

    #[test]
    fn the_segments_of_one_merge_are_one_run_whatever_their_lsns() {
        // A merge's output of keys written in order: four segments whose LSN ranges do not
        // meet, inside the key range of an older, larger segment.
        let mut spans = vec![span((0, 1_000_000), (1, 10), 10_000)];
        spans
            .extend((0..4).map(|i| span((i * 100, i * 100 + 99), (11 + i * 10, 20 + i * 10), 100)));
        assert_eq!(runs(&spans).len(), 5);
        assert!(pick(&spans, 4, false).is_some());
        for s in &mut spans[1..] {
            s.run = Some(7);
        }
        let runs = runs(&spans);
        assert_eq!(runs.len(), 2);
        let mut newest = runs[0].clone();
        newest.sort_unstable();
        assert_eq!(newest, vec![1, 2, 3, 4]);
        assert_eq!(pick(&spans, 4, false), None);
    }

    #[test]
    fn whole_merges_every_run_up_to_the_cap() {
        let mut spans = vec![span((0, 1000), (1, 40), 1 << 30)];
        spans.extend(
            flushes(2, 10)
                .into_iter()
                .map(|s| span(s.keys, (s.lsns.0 + 100, s.lsns.1 + 100), s.bytes)),
        );
        assert_eq!(pick(&spans, 2, true).unwrap().len(), 3);
        assert_eq!(pick(&spans, 4, false), None);
        let many = flushes(40, 10);
        let window = pick(&many, 2, true).unwrap();
        assert_eq!(window.len(), MAX_RUNS);
        // The newest runs.
        assert!(window.iter().all(|&i| i >= 40 - MAX_RUNS));
    }

    #[test]
    fn a_window_is_not_merged_over_a_segment_between_its_runs() {
        // A (keys 0-100, LSN 1-10) and C (keys 200-300, LSN 21-30) do not overlap each other;
        // B (keys 50-250, LSN 11-20) overlaps both and is newer than A, older than C.
        let a = span((0, 100), (1, 10), 100);
        let b = span((50, 250), (11, 20), 100);
        let c = span((200, 300), (21, 30), 100);
        // Merging A and C would put A's versions ahead of B's newer ones.
        assert!(!mergeable(&[a, b, c], &[0, 2]));
        assert!(mergeable(&[a, b, c], &[0, 1]));
        assert!(mergeable(&[a, b, c], &[1, 2]));
        assert!(mergeable(&[a, b, c], &[0, 1, 2]));
        // A segment that overlaps only the older window member, and is older than it, is fine.
        let d = span((0, 40), (0, 0), 100);
        assert!(mergeable(&[a, b, c, d], &[0, 1]));
        // One newer than a member it overlaps but older than the window's top is not.
        let e = span((0, 40), (12, 12), 100);
        assert!(!mergeable(&[a, b, e], &[0, 1]));
    }
}
