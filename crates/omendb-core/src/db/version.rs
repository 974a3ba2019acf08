//! The version set: what a read sees, swapped whole.
//!
//! A [`Version`] holds the tables with their live segments and the memtable generations. It is
//! immutable; flush, compaction, rotation and DDL build the next one and swap it in
//! so a reader that loaded a version reads a consistent set of objects however long it takes.
//! (`crate::version_cell::VersionCell`, which serializes the updates).

use std::collections::BTreeMap;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::charge::ReadCharge;
use crate::index::LearnedIndex;
use crate::memtable::Generation;
use crate::segment::{Searched, Segment};
use crate::table::TableDef;

/// A table and its live segments.
#[derive(Debug)]
pub(crate) struct TableState {
    /// The definition.
    pub(crate) def: TableDef,
    /// Live segments, newest first (by their highest LSN). Segments that share keys never
    /// share LSNs, so for any key the first segment with a visible version decides.
    pub(crate) segments: Vec<Arc<Segment>>,
    /// What its overlapping runs have cost reads, kept from one version to the next.
    pub(crate) charge: Arc<ReadCharge>,
}

impl TableState {
    /// The segments whose key range holds `key`, newest first (cloning the iterator walks them
    /// again without finding the last one again).
    pub(crate) fn holding(&self, key: u64) -> impl Iterator<Item = Candidate<'_>> + Clone {
        let last = self.last_holding(key);
        self.segments
            .iter()
            .enumerate()
            .filter(move |(_, s)| s.may_hold(key))
            .map(move |(i, segment)| Candidate {
                segment,
                last: Some(i) == last,
            })
    }

    /// The position of the oldest segment whose key range holds `key`: the one a point read
    /// searches without its filter ([`Segment::search`]).
    pub(crate) fn last_holding(&self, key: u64) -> Option<usize> {
        self.segments.iter().rposition(|s| s.may_hold(key))
    }
}

/// A segment a point read of one key may have to search.
pub(crate) struct Candidate<'a> {
    pub(crate) segment: &'a Arc<Segment>,
    /// The oldest candidate: a key that got this far is usually there.
    last: bool,
}

impl Candidate<'_> {
    /// The key's rows in the segment: from its index alone for the last candidate, after its
    /// filter for the others.
    pub(crate) fn rows(&self, key: u64) -> std::ops::Range<usize> {
        if self.last {
            self.segment.search(key)
        } else {
            self.segment.rows_of(key)
        }
    }

    /// [`Candidate::rows`] that also reads the newest row's value with `read` where its page
    /// allows ([`Segment::search_value`]).
    pub(crate) fn search_value<T>(&self, key: u64, read: impl FnOnce(&[u8]) -> T) -> Searched<T> {
        if self.last || self.segment.may_contain(key) {
            self.segment.search_value(key, read)
        } else {
            Searched::Rows(0..0)
        }
    }

    /// Whether [`Candidate::rows`] probes the segment's filter: a probe of a run besides the
    /// key's last, which reads pay for in [`ReadCharge`].
    pub(crate) fn filtered(&self) -> bool {
        !self.last
    }

    /// Starts loading the first line [`Candidate::rows`] will read: the filter's, or for the
    /// last candidate the index's model line.
    pub(crate) fn prefetch(&self, key: u64) {
        if self.last {
            self.segment.index.prefetch(key);
        } else {
            self.segment.prefetch_filter(key);
        }
    }
}

/// One consistent state of the database.
#[derive(Debug)]
pub(crate) struct Version {
    /// Tables by name.
    pub(crate) tables: BTreeMap<String, Arc<TableState>>,
    /// The same tables by id.
    /// Looked up on every read: hashed with `FxHash`, not SipHash (ids are the engine's own,
    /// so there is no adversary to resist, and SipHash was ~100 instructions of each `get`).
    pub(crate) by_id: FxHashMap<u32, Arc<TableState>>,
    /// Memtable generations, newest (the active one) first.
    pub(crate) memtables: Vec<Arc<Generation>>,
    /// The highest horizon of a compaction whose output this version holds: versions of keys
    /// hidden at that LSN may be gone, so an unpinned read must read at or above it.
    pub(crate) horizon: u64,
}

impl Version {
    /// A version of `tables` with `memtables`.
    pub(crate) fn new(tables: Vec<TableState>, memtables: Vec<Arc<Generation>>) -> Self {
        Self::of(tables.into_iter().map(Arc::new).collect(), memtables, 0)
    }

    /// The same version with `tables` and `memtables` replaced where given.
    pub(crate) fn with(
        &self,
        tables: Option<Vec<Arc<TableState>>>,
        memtables: Option<Vec<Arc<Generation>>>,
    ) -> Self {
        Self::of(
            tables.unwrap_or_else(|| self.tables.values().cloned().collect()),
            memtables.unwrap_or_else(|| self.memtables.clone()),
            self.horizon,
        )
    }

    fn of(tables: Vec<Arc<TableState>>, memtables: Vec<Arc<Generation>>, horizon: u64) -> Self {
        Self {
            by_id: tables.iter().map(|t| (t.def.id, Arc::clone(t))).collect(),
            tables: tables
                .into_iter()
                .map(|t| (t.def.name.clone(), t))
                .collect(),
            memtables,
            horizon,
        }
    }

    /// The active generation.
    pub(crate) fn active(&self) -> Option<&Arc<Generation>> {
        self.memtables.first()
    }

    /// Bytes held by generations waiting to be flushed.
    pub(crate) fn frozen_bytes(&self) -> usize {
        self.memtables
            .iter()
            .skip(1)
            .map(|g| g.approximate_bytes())
            .sum()
    }
}
