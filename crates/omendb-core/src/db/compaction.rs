//! Compaction: merging a table's overlapping segments into one, and garbage collection.
//!
//! The unit is a group of segments whose key ranges overlap transitively (a connected
//! component). No segment outside a group shares a key with it, so the group holds every
//! segment version of its keys: the merge keeps, per key, every version newer than the oldest
//! snapshot (the horizon) and the newest version at or below it, and drops that one too if it
//! is a tombstone. Segments that overlap nothing are never rewritten (time-series data stays as
//! flushed). The merged segment gets a newly trained index.

use std::cmp::Reverse;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::UInt64Type;
use arrow_array::{Array, ArrayRef, RecordBatch};
use futures::TryStreamExt;

use super::flush::SegmentRows;
use super::version::TableState;
use super::{Inner, current_data};
use crate::error::{Error, Result};
use crate::memtable::Lsn;
use crate::segment::Segment;

/// How often the background work collects garbage when no compaction gives it a reason.
const GC_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

impl Inner {
    /// Starts a compaction task unless one is running: it compacts groups that reached the
    /// trigger size, then collects garbage past its grace period.
    pub(crate) fn spawn_compaction(self: &Arc<Self>) {
        let mut slot = self.compaction.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_some_and(|task| !task.is_finished())
            || self.closed.load(std::sync::atomic::Ordering::Acquire)
        {
            return;
        }
        let db = Arc::clone(self);
        *slot = Some(tokio::spawn(async move {
            if let Err(err) = db.compact_due().await {
                db.background_failed(err);
            }
        }));
    }

    async fn compact_due(self: &Arc<Self>) -> Result<()> {
        let compacted = self.compact(self.settings.compaction_trigger).await?;
        // Flushes leave replaced manifest versions, and crashes leave unpublished segments,
        // even where nothing compacts (time series): collect at least once a minute.
        let due = {
            let last = self.last_gc.lock().unwrap_or_else(|p| p.into_inner());
            last.is_none_or(|at| at.elapsed() >= GC_INTERVAL)
        };
        if compacted > 0 || due {
            self.collect_garbage().await?;
        }
        Ok(())
    }

    /// Compacts every group of two or more segments, then collects garbage.
    pub(crate) async fn compact_all(self: &Arc<Self>) -> Result<()> {
        self.check_writable()?;
        self.compact(2).await?;
        self.collect_garbage().await
    }

    /// Compaction and garbage collection are not on the write path: their failures leave the
    /// data as it was (inputs stay live, garbage stays), so they are reported in `stats()` and
    /// retried, and poison writes only when this writer can no longer publish (fenced).
    fn background_failed(&self, err: Error) {
        if err.kind() == crate::ErrorKind::Fatal {
            self.fail(err);
        } else {
            *self
                .background_error
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(err.to_string());
        }
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
        let in_use = self.segments_in_use();
        self.writer
            .lock()
            .await
            .collect_garbage(&segments, &in_use, chrono::Utc::now())
            .await?;
        crash_point!("gc.after");
        Ok(())
    }

    /// Compacts the groups of at least `at_least` segments; returns how many.
    async fn compact(self: &Arc<Self>, at_least: usize) -> Result<usize> {
        let _compacting = self.compact_lock.lock().await;
        let version = self.version.load_full();
        let mut compacted = 0;
        for table in version.tables.values() {
            for group in overlapping_groups(&table.segments) {
                if self.closed.load(std::sync::atomic::Ordering::Acquire) {
                    return Ok(compacted);
                }
                // A merge holds its group in memory, and Arrow's 32-bit offsets cap a column
                // at 2 GiB: larger groups stay as they are (reads stay correct, only slower).
                let bytes: u64 = group.iter().map(|s| s.entry.seal.size).sum();
                if group.len() >= at_least && bytes <= self.settings.max_compaction_bytes {
                    let started = std::time::Instant::now();
                    self.compact_group(table, &group).await?;
                    metrics::histogram!("omendb_compaction_duration_seconds")
                        .record(started.elapsed().as_secs_f64());
                    compacted += 1;
                }
            }
        }
        Ok(compacted)
    }

    #[tracing::instrument(level = "debug", name = "db.compaction", skip_all, fields(table = %table.def.name, segments = group.len()))]
    async fn compact_group(
        self: &Arc<Self>,
        table: &TableState,
        group: &[Arc<Segment>],
    ) -> Result<()> {
        let horizon = self.visibility.horizon();
        let rows = merge(table, group, horizon).await?;
        let written = self.write_segment(&table.def, rows).await?;
        let removed: Vec<String> = group.iter().map(|s| s.entry.path.clone()).collect();

        crash_point!("compaction.before_manifest");
        let mut writer = self.writer.lock().await;
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
        let mut added = Vec::new();
        if let Some((id, segment)) = written {
            entry.segments.push(segment.entry.clone());
            added.push((id, Arc::new(segment)));
        }
        writer.commit(data).await?;
        crash_point!("compaction.after_manifest");
        self.retire(group);
        self.swap_segments(&added, &removed, None, horizon);
        self.counters.lock().unwrap_or_else(|p| p.into_inner()).1 += 1;
        Ok(())
    }
}

/// Groups of segments whose key ranges overlap transitively, each of two or more.
fn overlapping_groups(segments: &[Arc<Segment>]) -> Vec<Vec<Arc<Segment>>> {
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

/// The rows of `group` merged: key ascending, LSN descending, versions no snapshot can see
/// dropped.
async fn merge(table: &TableState, group: &[Arc<Segment>], horizon: Lsn) -> Result<SegmentRows> {
    let mut batches: Vec<RecordBatch> = Vec::with_capacity(group.len());
    for segment in group {
        let all = segment.reader.projection_all();
        let parts: Vec<RecordBatch> = segment
            .reader
            .scan(0..segment.reader.rows(), &all, 64 * 1024)?
            .try_collect()
            .await?;
        batches.push(arrow_select::concat::concat_batches(all.schema(), &parts)?);
    }
    // (key, lsn, tombstone, source batch, row)
    let mut rows: Vec<(u64, Lsn, bool, usize, usize)> = Vec::new();
    for (b, batch) in batches.iter().enumerate() {
        let keys = batch.column(0).as_primitive::<UInt64Type>();
        let lsns = batch.column(1).as_primitive::<UInt64Type>();
        let tombstones = batch.column(2).as_boolean();
        for row in 0..batch.num_rows() {
            rows.push((
                keys.value(row),
                lsns.value(row),
                tombstones.value(row),
                b,
                row,
            ));
        }
    }
    rows.sort_unstable_by_key(|&(key, lsn, ..)| (key, Reverse(lsn)));
    let mut kept: Vec<(u64, Lsn, bool, usize, usize)> = Vec::with_capacity(rows.len());
    let mut i = 0;
    while i < rows.len() {
        let key = rows[i].0;
        let mut j = i;
        while j < rows.len() && rows[j].0 == key {
            j += 1;
        }
        // Versions above the horizon stay; the newest at or below it stays unless it deletes.
        let versions = &rows[i..j];
        let newer = versions.iter().take_while(|v| v.1 > horizon).count();
        kept.extend_from_slice(&versions[..newer]);
        if let Some(base) = versions.get(newer).filter(|base| !base.2) {
            kept.push(*base);
        }
        i = j;
    }
    let values_from = 3;
    let columns = batches
        .first()
        .map_or(0, |b| b.num_columns().saturating_sub(values_from));
    let picks: Vec<(usize, usize)> = kept.iter().map(|r| (r.3, r.4)).collect();
    let mut values: Vec<ArrayRef> = Vec::with_capacity(columns);
    for c in 0..columns {
        let arrays: Vec<&dyn Array> = batches
            .iter()
            .map(|b| b.column(values_from + c).as_ref())
            .collect();
        values.push(arrow_select::interleave::interleave(&arrays, &picks)?);
    }
    if columns != table.def.schema().fields().len() {
        return Err(Error::Corrupt(format!(
            "a segment of table {:?} has {columns} value columns",
            table.def.name
        )));
    }
    Ok(SegmentRows {
        keys: kept.iter().map(|r| r.0).collect(),
        lsns: kept.iter().map(|r| r.1).collect(),
        tombstones: kept.iter().map(|r| r.2).collect(),
        values,
    })
}
