//! Memtable rotation, flush to segments, and the background task that runs them.
//!
//! Flush order: wait until every LSN of the frozen generation is applied and durable in the
//! WAL, write one segment per table (rows in key order, newest first, the learned index trained
//! on the keys and stored in the footer), publish a manifest that adds them and advances the
//! flushed LSN, swap the version, and only then truncate the WAL. A crash before the publish
//! leaves unreferenced segments (collected after the grace period) and a WAL that still holds
//! every record.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::UInt64Type;
use arrow_array::{ArrayRef, BooleanArray, RecordBatch, UInt64Array};
use bytes::Bytes;
use omendb_storage::manifest::SegmentEntry;
use omendb_storage::segment::SegmentWriter;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::version::{TableState, Version};
use super::{Chore, Inner, current_data};
use crate::error::{Error, Result};
use crate::index::{AnyIndex, LearnedIndex};
use crate::memtable::{Generation, Lsn, Memtable};
use crate::segment::Segment;
use crate::table::TableDef;

/// Rows decoded and handed to the segment writer at a time...
const WRITE_CHUNK_ROWS: usize = 64 * 1024;
/// ...and the most encoded row bytes one chunk decodes: Arrow's byte arrays hold at most 2 GiB,
/// and a table's rows in one memtable may hold more (a large `memtable_bytes`, or a replayed
/// backlog), which decoded at once panicked in the array builder.
const WRITE_CHUNK_BYTES: usize = 16 << 20;

/// Numbers segment objects within one writer epoch.
static SEGMENT_SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// A segment being written batch by batch. Its index is trained on every key at `finish`, so
/// only the key column is held in memory, whatever the segment's size.
pub(crate) struct SegmentSink {
    table: u32,
    object: String,
    writer: SegmentWriter,
    keys: Vec<u64>,
    bytes: usize,
}

impl SegmentSink {
    /// Appends rows (every column of the stored schema, in order after the rows already
    /// written). A failed write abandons the object.
    pub(crate) async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let keys = batch
            .column(0)
            .as_primitive_opt::<UInt64Type>()
            .ok_or_else(|| Error::Corrupt(format!("segment {}: keys are not u64", self.object)))?;
        self.writer.write(batch).await?;
        self.keys.extend_from_slice(keys.values());
        self.bytes += batch.get_array_memory_size();
        Ok(())
    }

    /// The schema of the batches `write` takes.
    pub(crate) fn schema(&self) -> &arrow_schema::SchemaRef {
        self.writer.schema()
    }

    /// Decoded bytes written so far: what output splitting is measured by.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Trains the index, completes the object and opens it; `None` (and nothing stored) if no
    /// row was written.
    pub(crate) async fn finish(self, db: &Inner) -> Result<Option<(u32, Segment)>> {
        if self.keys.is_empty() {
            let _ = self.writer.abort().await;
            return Ok(None);
        }
        let index = AnyIndex::build(&self.keys, &db.settings.index_policy)?;
        let written = self.writer.finish(&index.encode()).await?;
        let entry = SegmentEntry {
            path: self.object,
            rows: written.meta.rows,
            key_min: written.meta.key_min,
            key_max: written.meta.key_max,
            lsn_min: written.meta.lsn_min,
            lsn_max: written.meta.lsn_max,
            seal: written.seal,
            run: None,
        };
        let segment = Segment::open(Arc::clone(&db.store), entry, Arc::clone(&db.cache)).await?;
        Ok(Some((self.table, segment)))
    }

    /// Abandons the object (best effort: an incomplete upload stores nothing to publish).
    pub(crate) async fn abort(self) {
        let _ = self.writer.abort().await;
    }
}

impl Inner {
    /// Freezes the active generation if it is full (or if `force` and it holds anything) and
    /// wakes the flusher. Returns whether it rotated.
    pub(crate) fn maybe_rotate(&self, force: bool) -> bool {
        let limit = self.settings.memtable_bytes;
        let over = |v: &Version| v.active().is_some_and(|g| g.approximate_bytes() >= limit);
        if !force && !over(&self.version.load()) {
            return false;
        }
        let rotated = self.version.update(|current| {
            let Some(active) = current.active() else {
                return (None, false);
            };
            if !force && !over(current) {
                return (None, false);
            }
            // Every LSN assigned from here on is above the cut; every one below it goes to the
            // generation being frozen (the WAL assigns LSNs in order under its own lock). An
            // LSN assigned after the read may be admitted before the close: then read again.
            let cut = loop {
                let cut = self.wal.last_lsn().unwrap_or(0) + 1;
                if cut <= active.first() {
                    return (None, false);
                }
                if active.close(cut) {
                    break cut;
                }
                if active.end() != Lsn::MAX {
                    // Closed already (cannot happen under the update lock, but never spin).
                    return (None, false);
                }
            };
            let mut memtables = vec![Arc::new(Generation::new(
                cut,
                self.settings.memtable_keys(),
            ))];
            memtables.extend(current.memtables.iter().cloned());
            (Some(current.with(None, Some(memtables))), true)
        });
        if rotated {
            self.flush_wanted.notify_one();
        }
        rotated
    }

    /// Flushes the oldest frozen generation; `false` if there is none.
    #[tracing::instrument(level = "debug", name = "db.flush", skip_all)]
    pub(crate) async fn flush_oldest(self: &Arc<Self>) -> Result<bool> {
        let _flushing = self.flush_lock.lock().await;
        self.check_open()?;
        let version = self.version.load_full();
        if version.memtables.len() < 2 {
            return Ok(false);
        }
        let Some(frozen) = version.memtables.last().cloned() else {
            return Ok(false);
        };
        let started = std::time::Instant::now();
        let upto = frozen.end() - 1;
        while !self.visibility.wait_for(upto, Duration::from_secs(1)).await {
            // An LSN that was appended but whose writer failed is never applied; the failure
            // poisoned the database, so stop waiting for it.
            self.check_writable()?;
        }
        if upto > 0 {
            self.wal.wait_durable(upto).await?;
        }

        crash_point!("flush.before_segment");
        let mut written = Vec::new();
        for (id, memtable) in frozen.tables() {
            let Some(table) = version.by_id.get(&id) else {
                continue;
            };
            if memtable.is_empty() {
                continue;
            }
            let rows = flush_rows(table, &memtable);
            if let Some(segment) = self.write_segment(&table.def, &rows).await? {
                written.push(segment);
            }
        }

        crash_point!("flush.before_manifest");
        let mut writer = self.publishing().await?;
        let mut data = current_data(&writer);
        let mut added: Vec<(u32, Arc<Segment>)> = Vec::new();
        for segment in written {
            let id = segment.0;
            // A table dropped while its segment was written gets nothing; the object is
            // garbage.
            if let Some(entry) = data.tables.values_mut().find(|t| t.id == id) {
                entry.segments.push(segment.1.entry.clone());
                added.push((id, Arc::new(segment.1)));
            }
        }
        data.flushed_lsn = data.flushed_lsn.max(upto);
        writer.commit(data).await?;
        self.swap_segments(&added, &[], Some(&frozen), 0);
        drop(writer);
        self.flushed.notify_waiters();
        crash_point!("flush.before_wal_truncate");
        // The flush is published: truncating is only cleanup, so its failure (whatever its
        // kind) must not poison writes. It is reported, and the next flush's truncation covers
        // these records too; until then replay at open starts after `flushed_lsn`. Records a
        // live snapshot or change stream may still stream are kept (`docs/api.md`, "Change
        // stream"): a replica copies a snapshot, then streams the changes after it.
        let keep = self.visibility.log_floor();
        match self.wal.truncate_before((upto + 1).min(keep)).await {
            Ok(()) => self.background_succeeded(Chore::WalTruncation),
            Err(err) => self.report_background(Chore::WalTruncation, &Error::from(err)),
        }
        self.counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .flushes += 1;
        metrics::histogram!("omendb_flush_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(true)
    }

    /// Swaps in a version where `added` segments join their tables, `removed` (by path) leave,
    /// the generation `flushed` is gone, and versions below `horizon` may be missing.
    pub(crate) fn swap_segments(
        &self,
        added: &[(u32, Arc<Segment>)],
        removed: &[String],
        flushed: Option<&Arc<Generation>>,
        horizon: Lsn,
    ) {
        self.version.update(|current| {
            let tables = current
                .tables
                .values()
                .map(|table| {
                    let id = table.def.id;
                    let touched = added.iter().any(|(t, _)| *t == id)
                        || table
                            .segments
                            .iter()
                            .any(|s| removed.contains(&s.entry.path));
                    if !touched {
                        return Arc::clone(table);
                    }
                    let mut segments: Vec<Arc<Segment>> = table
                        .segments
                        .iter()
                        .filter(|s| !removed.contains(&s.entry.path))
                        .cloned()
                        .collect();
                    segments.extend(
                        added
                            .iter()
                            .filter(|(t, _)| *t == id)
                            .map(|(_, s)| Arc::clone(s)),
                    );
                    segments.sort_by_key(|s| Reverse(s.entry.lsn_max));
                    Arc::new(TableState {
                        def: table.def.clone(),
                        segments,
                        charge: Arc::clone(&table.charge),
                    })
                })
                .collect();
            let memtables = flushed.map(|gone| {
                current
                    .memtables
                    .iter()
                    .filter(|g| !Arc::ptr_eq(g, gone))
                    .cloned()
                    .collect()
            });
            let mut next = current.with(Some(tables), memtables);
            next.horizon = next.horizon.max(horizon);
            (Some(next), ())
        });
    }

    /// Writes `rows` (key ascending, LSN descending) as a segment of `def`'s table with its
    /// trained index and opens it, decoding them a chunk at a time. `None` if there are no rows.
    pub(crate) async fn write_segment(
        &self,
        def: &TableDef,
        rows: &[FlushRow],
    ) -> Result<Option<(u32, Segment)>> {
        if rows.is_empty() {
            return Ok(None);
        }
        let mut sink = self.create_segment(def).await?;
        let mut start = 0;
        while start < rows.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < rows.len()
                && end - start < WRITE_CHUNK_ROWS
                && (end == start || bytes < WRITE_CHUNK_BYTES)
            {
                bytes += rows[end].3.as_ref().map_or(0, Bytes::len);
                end += 1;
            }
            let written = match chunk_batch(def, sink.schema(), &rows[start..end]) {
                Ok(batch) => sink.write(&batch).await,
                Err(err) => Err(err),
            };
            if let Err(err) = written {
                sink.abort().await;
                return Err(err);
            }
            start = end;
        }
        sink.finish(self).await
    }

    /// Starts a new segment object of `def`'s table.
    pub(crate) async fn create_segment(&self, def: &TableDef) -> Result<SegmentSink> {
        let epoch = self.writer.lock().await.epoch();
        let sequence = SEGMENT_SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let path = self
            .prefix
            .clone()
            .join("segments")
            .join(def.id.to_string())
            .join(format!("{epoch:010}-{sequence:010}.parquet"));
        let object = path.to_string();
        let writer = SegmentWriter::create(
            Arc::clone(&self.store),
            path,
            &def.stored,
            self.settings.segment.clone(),
        )?;
        Ok(SegmentSink {
            table: def.id,
            object,
            writer,
            keys: Vec::new(),
            bytes: 0,
        })
    }

    /// Rotates and flushes everything; returns the flushed LSN.
    pub(crate) async fn checkpoint(self: &Arc<Self>) -> Result<Lsn> {
        self.check_writable()?;
        self.maybe_rotate(true);
        // Flush the generations that hold writes made before the call, not those that
        // writers keep filling meanwhile.
        let target = self.wal.last_lsn().unwrap_or(0);
        loop {
            let oldest = self.version.load().memtables.last().map(|g| g.first());
            if oldest.is_none_or(|first| first > target)
                || !self.flush_oldest().await.map_err(|e| self.fail(e))?
            {
                break;
            }
        }
        Ok(current_data(&*self.writer.lock().await).flushed_lsn)
    }
}

/// The rows a frozen memtable of `table` becomes, key ascending and LSN descending. Range
/// deletions become point tombstones for every key they cover in the table's segments and in
/// older versions of the memtable itself (segments hold no range tombstones); a put at a range
/// deletion's own LSN survives it.
fn flush_rows(table: &TableState, memtable: &Memtable) -> Vec<FlushRow> {
    // (key, lsn, from a range deletion, row)
    let mut rows: Vec<(u64, Lsn, bool, Option<Bytes>)> = memtable
        .versions()
        .map(|(key, lsn, row)| (key, lsn, false, row))
        .collect();
    let ranges = memtable.range_tombstones(Lsn::MAX);
    if !ranges.is_empty() {
        let covered = range_deletions(table, &rows, ranges);
        rows.extend(covered);
        // Real rows sort before a range's tombstone at the same (key, LSN) and win the dedup.
        rows.sort_unstable_by_key(|(key, lsn, synthetic, _)| (*key, Reverse(*lsn), *synthetic));
        rows.dedup_by_key(|(key, lsn, _, _)| (*key, *lsn));
    }
    rows
}

/// `rows` as a batch of the segment's `schema`: keys, LSNs, tombstone flags, then the decoded
/// value columns (the table's declared types; null in tombstone rows).
fn chunk_batch(
    def: &TableDef,
    schema: &arrow_schema::SchemaRef,
    rows: &[FlushRow],
) -> Result<RecordBatch> {
    let nulls = vec![0u8; def.schema().fields().len()];
    let values = def.codec.decode(
        rows.iter()
            .map(|(_, _, _, row)| row.as_deref().unwrap_or(&nulls)),
    )?;
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(rows.iter().map(|r| r.0).collect::<UInt64Array>()),
        Arc::new(rows.iter().map(|r| r.1).collect::<UInt64Array>()),
        Arc::new(BooleanArray::from(
            rows.iter().map(|r| r.3.is_none()).collect::<Vec<bool>>(),
        )),
    ];
    columns.extend(values);
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

/// A flushed row: key, LSN, whether a range deletion made it, and its encoded values (`None`
/// for a deletion).
type FlushRow = (u64, Lsn, bool, Option<Bytes>);

/// The point tombstones that the range deletions `ranges` of a memtable whose versions are
/// `rows` (key ascending) leave in its segment, for the keys they cover: stored in a segment,
/// or written to the memtable before the deletion. Between two real versions of a key, only the
/// oldest and the newest covering deletion are kept: a snapshot in that stretch sees a deletion
/// either way (the oldest is the first it can see), and a conflict check asks for the newest.
/// Every covering deletion of every key was written until the twenty-ninth session: many
/// overlapping range deletions made a flush of ranges × keys rows, which ran out of memory, and a
/// failed flush poisons the database (found by a helper agent's review).
fn range_deletions(
    table: &TableState,
    rows: &[FlushRow],
    mut ranges: Vec<(std::ops::RangeInclusive<u64>, Lsn)>,
) -> Vec<FlushRow> {
    ranges.sort_unstable_by_key(|(range, _)| *range.start());
    // The stored keys the ranges cover, each found once: through the ranges' union.
    let mut union: Vec<(u64, u64)> = Vec::new();
    for (range, _) in &ranges {
        let (first, last) = (*range.start(), *range.end());
        match union.last_mut() {
            Some((_, end)) if first <= end.saturating_add(1) => *end = (*end).max(last),
            _ => union.push((first, last)),
        }
    }
    let mut stored: Vec<u64> = Vec::new();
    for &(first, last) in &union {
        for segment in &table.segments {
            let keys = segment.keys();
            stored.extend(
                segment
                    .positions(&(first..=last))
                    .map(|position| keys[position]),
            );
        }
    }
    stored.sort_unstable();
    stored.dedup();

    // A sweep over the keys in order, holding the ranges that cover the current key: their
    // LSNs (counted, as two ranges may share one) and where each ends.
    let mut active: BTreeMap<Lsn, usize> = BTreeMap::new();
    let mut ends: BinaryHeap<Reverse<(u64, Lsn)>> = BinaryHeap::new();
    let mut next_range = 0;
    let mut out = Vec::new();
    let mut stored_at = 0;
    let mut row_at = 0;
    let mut versions: Vec<Lsn> = Vec::new();
    loop {
        let key = match (stored.get(stored_at), rows.get(row_at)) {
            (Some(&s), Some(r)) => s.min(r.0),
            (Some(&s), None) => s,
            (None, Some(r)) => r.0,
            (None, None) => break,
        };
        let in_store = stored.get(stored_at) == Some(&key);
        if in_store {
            stored_at += 1;
        }
        versions.clear();
        while let Some(row) = rows.get(row_at).filter(|r| r.0 == key) {
            versions.push(row.1);
            row_at += 1;
        }
        versions.sort_unstable();
        while let Some((range, lsn)) = ranges.get(next_range).filter(|(r, _)| *r.start() <= key) {
            *active.entry(*lsn).or_default() += 1;
            ends.push(Reverse((*range.end(), *lsn)));
            next_range += 1;
        }
        while ends.peek().is_some_and(|Reverse((end, _))| *end < key) {
            let Some(Reverse((_, lsn))) = ends.pop() else {
                break;
            };
            if let std::collections::btree_map::Entry::Occupied(mut count) = active.entry(lsn) {
                *count.get_mut() -= 1;
                if *count.get() == 0 {
                    count.remove();
                }
            }
        }
        if active.is_empty() {
            continue;
        }
        // The stretches between the key's real versions: from its stored version (older than
        // every memtable LSN) if it has one, else from its oldest memtable version; open above.
        let mut lower = in_store.then_some(0);
        for &upper in versions.iter().chain(std::iter::once(&Lsn::MAX)) {
            if let Some(lower) = lower {
                let mut inside = active.range((
                    std::ops::Bound::Excluded(lower),
                    std::ops::Bound::Excluded(upper),
                ));
                let oldest = inside.next().map(|(&lsn, _)| lsn);
                let newest = inside.next_back().map(|(&lsn, _)| lsn);
                out.extend(
                    oldest
                        .into_iter()
                        .chain(newest)
                        .map(|lsn| (key, lsn, true, None)),
                );
            }
            lower = Some(upper);
        }
    }
    out
}

/// The background task: flushes frozen generations as they appear and starts compactions;
/// with `idle_after` ([`super::Settings::idle_compaction`]), also does the idle work
/// ([`Inner::idle_tick`]). Holds only a weak reference, so once every [`super::Db`] is dropped
/// it ends at its next wake-up (with idle work, the next tick).
pub(crate) async fn run_background(
    inner: Weak<Inner>,
    wake: Arc<Notify>,
    idle_after: Option<Duration>,
) {
    // The WAL's last LSN, since when it has stood still, and whether its idle work was done.
    let mut still = None;
    loop {
        // Woken by work, or by a tick often enough to find the database idle within a quarter
        // of the delay; a tick only looks for idleness.
        let woken = match idle_after {
            Some(after) => tokio::time::timeout(tick(after), wake.notified())
                .await
                .is_ok(),
            None => {
                wake.notified().await;
                true
            }
        };
        if woken && !flush_frozen(&inner).await {
            return;
        }
        let Some(after) = idle_after else {
            continue;
        };
        let Some(db) = inner.upgrade() else {
            return;
        };
        if db.closed.load(Ordering::Acquire) {
            return;
        }
        if db.failure.get().is_none()
            && let Err(err) = db.idle_tick(&mut still, after).await
        {
            db.fail(err);
        }
    }
}

/// How often the background task looks for idleness: a quarter of the delay, and no more often
/// than every millisecond.
fn tick(after: Duration) -> Duration {
    (after / 4).max(Duration::from_millis(1))
}

/// Flushes the frozen generations one after another, starting a compaction after each;
/// `false` if the database is gone or closed.
async fn flush_frozen(inner: &Weak<Inner>) -> bool {
    loop {
        let Some(db) = inner.upgrade() else {
            return false;
        };
        if db.closed.load(Ordering::Acquire) {
            return false;
        }
        if db.failure.get().is_some() {
            return true;
        }
        // Compaction runs in a task of its own, so a long merge never holds up a flush.
        let flushed = db.flush_oldest().await;
        db.spawn_compaction();
        match flushed {
            Ok(true) => {}
            Ok(false) => return true,
            Err(err) => {
                db.fail(err);
                return true;
            }
        }
    }
}

impl Inner {
    /// Watches the WAL's last LSN (`still`: the last one seen, since when, and whether the idle
    /// flush was done): once it has stood still for `after`, does the idle work. Flushes the
    /// active memtable if it holds at least [`super::Settings::idle_flush_bytes`], and only then
    /// marks the database idle ([`Inner::is_idle`]), so that the flushed run is merged with the
    /// others instead of after them, and starts the compaction task, which makes the merges
    /// idleness allows (a task already running looks for them again before it ends).
    async fn idle_tick(
        self: &Arc<Self>,
        still: &mut Option<(Lsn, Instant, bool)>,
        after: Duration,
    ) -> Result<()> {
        let lsn = self.wal.last_lsn().unwrap_or(0);
        let since = match still {
            Some((seen, since, flushed)) if *seen == lsn => {
                if *flushed {
                    return Ok(());
                }
                *since
            }
            _ => {
                *still = Some((lsn, Instant::now(), false));
                return Ok(());
            }
        };
        if since.elapsed() < after {
            return Ok(());
        }
        *still = Some((lsn, since, true));
        let flush = self
            .version
            .load()
            .active()
            .is_some_and(|g| g.approximate_bytes() >= self.settings.idle_flush_bytes());
        if flush && self.maybe_rotate(true) {
            // Like `close`'s, an idle flush stops at the generation it is in: the rest wait for
            // the next open's replay.
            while !self.closed.load(Ordering::Acquire) {
                match self.flush_oldest().await {
                    Ok(true) => {}
                    Ok(false) | Err(Error::Closed) => break,
                    Err(err) => return Err(err),
                }
            }
        }
        self.idle_lsn.store(lsn, Ordering::Relaxed);
        self.spawn_compaction();
        Ok(())
    }
}
