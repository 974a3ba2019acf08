//! A memtable generation: the memtables of every table for one run of LSNs.
//!
//! The active generation takes every LSN from its `first` on. Rotation closes it at a cut LSN
//! (its `end`) and opens the next generation there, so each generation holds exactly the LSNs
//! in `first..end`: a flush of a closed generation, once every LSN below its end is applied,
//! holds everything up to `end - 1` and nothing after, which is what the manifest's flushed LSN
//! and the WAL truncation rely on.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_skiplist::SkipMap;
use crossbeam_skiplist::map::Entry;

use super::cut::Cut;
use super::{Lsn, Memtable};
use crate::batch::{Write, WriteBatch};

/// The memtables of one run of LSNs.
#[derive(Debug)]
pub struct Generation {
    /// Which LSNs it takes; appliers hold their entry while they apply, so once rotation has
    /// closed it no later LSN gets in.
    cut: Cut,
    tables: SkipMap<u32, Arc<Memtable>>,
    bytes: AtomicUsize,
    /// Keys each table's memtable filter is sized for.
    expected_keys: usize,
}

/// Writes ahead of the one being applied whose filter line [`Generation::apply`] requests.
const FILTER_AHEAD: usize = 8;

impl Generation {
    /// An active generation starting at `first`, whose memtables' filters are sized for
    /// `expected_keys`.
    pub fn new(first: Lsn, expected_keys: usize) -> Self {
        Self {
            cut: Cut::new(first),
            tables: SkipMap::new(),
            bytes: AtomicUsize::new(0),
            expected_keys,
        }
    }

    /// The first LSN it holds.
    pub fn first(&self) -> Lsn {
        self.cut.first()
    }

    /// The first LSN it does not hold (`Lsn::MAX` while active).
    pub fn end(&self) -> Lsn {
        self.cut.end()
    }

    /// Closes the generation at `end`: no LSN from `end` on is applied to it afterwards.
    /// Returns `false` (and changes nothing) if `end` is below an LSN it already took.
    pub fn close(&self, end: Lsn) -> bool {
        self.cut.close(end)
    }

    /// Applies `batch` at `lsn` if the LSN is this generation's; `false` otherwise. Writes to
    /// tables `live` rejects (dropped since the batch was validated) are skipped.
    pub fn apply(&self, lsn: Lsn, batch: &WriteBatch, live: impl Fn(u32) -> bool) -> bool {
        let Some(_entry) = self.cut.enter(lsn) else {
            return false;
        };
        let writes = batch.writes();
        // Large batches go in key order: consecutive skip-list searches then share most of
        // their path. The sort is stable, so writes of one key keep their order (the later
        // replaces the earlier at the same LSN); a range deletion does not hide writes at its
        // own LSN, so its place among them does not matter.
        let mut order: Vec<usize> = (0..writes.len()).collect();
        if writes.len() > 64 {
            order.sort_by_key(|&i| match &writes[i] {
                Write::Put { table, key, .. } | Write::Delete { table, key } => (*table, *key),
                Write::DeleteRange { table, first, .. } => (*table, *first),
            });
        }
        let mut current: Option<(u32, Arc<Memtable>)> = None;
        // Bytes the writes added (each memtable says what it took, which a look at its total
        // would not while other appliers write to it), added once at the end: an atomic add per
        // write would be a locked instruction per row on a line every applier shares.
        let mut added = 0;
        for (n, &i) in order.iter().enumerate() {
            let write = &writes[i];
            let table = write.table();
            if !live(table) {
                continue;
            }
            let memtable = match &current {
                Some((id, memtable)) if *id == table => memtable,
                _ => &current.insert((table, self.table_or_create(table))).1,
            };
            // A filter insert is an atomic read-modify-write of a line chosen by hash, which
            // holds the core until the line arrives; asked for a few writes early, it has.
            if let Some(ahead) = order.get(n + FILTER_AHEAD).map(|&a| &writes[a])
                && ahead.table() == table
                && let Write::Put { key, .. } | Write::Delete { key, .. } = ahead
            {
                memtable.prefetch(*key);
            }
            added += match write {
                Write::Put { key, row, .. } => memtable.put(*key, lsn, row.clone()),
                Write::Delete { key, .. } => memtable.delete(*key, lsn),
                Write::DeleteRange { first, last, .. } => {
                    memtable.delete_range(*first..=*last, lsn)
                }
            };
        }
        self.bytes.fetch_add(added, Ordering::Relaxed);
        true
    }

    fn table_or_create(&self, table: u32) -> Arc<Memtable> {
        Arc::clone(
            self.tables
                .get_or_insert_with(table, || {
                    Arc::new(Memtable::with_filter(self.expected_keys))
                })
                .value(),
        )
    }

    /// The memtable of `table`, if it was written.
    pub fn table(&self, table: u32) -> Option<Arc<Memtable>> {
        self.tables
            .get(&table)
            .map(|entry| Arc::clone(entry.value()))
    }

    /// The memtable of `table`, if it was written, borrowed through the map's entry (which pins
    /// its node) rather than an `Arc` clone: a point read holds it from its prefetch to its
    /// lookup, where two searches of this map were a tenth of a cached `get`.
    pub fn memtable(&self, table: u32) -> Option<Entry<'_, u32, Arc<Memtable>>> {
        self.tables.get(&table)
    }

    /// Every table's memtable, by table id.
    pub fn tables(&self) -> Vec<(u32, Arc<Memtable>)> {
        self.tables
            .iter()
            .map(|entry| (*entry.key(), Arc::clone(entry.value())))
            .collect()
    }

    /// Approximate bytes held by all its memtables.
    pub fn approximate_bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::memtable::Lookup;

    #[test]
    fn a_closed_generation_refuses_lsns_from_its_end_on() {
        let generation = Generation::new(5, 100);
        let mut batch = WriteBatch::new();
        batch.put(1, 7, Bytes::from_static(b"x"));
        assert!(!generation.apply(4, &batch, |_| true));
        assert!(generation.apply(5, &batch, |_| true));
        assert!(generation.apply(9, &batch, |_| true));
        assert!(!generation.close(8), "an applied LSN is above the cut");
        assert!(generation.close(10));
        assert!(!generation.apply(10, &batch, |_| true));
        assert_eq!(generation.end(), 10);
        let table = generation.table(1).unwrap();
        assert!(matches!(table.get(7, 100), Lookup::Found { lsn: 9, .. }));
        assert!(generation.approximate_bytes() > 0);
        assert!(generation.apply(6, &batch, |t| t != 1));
        assert!(matches!(table.get(7, 6), Lookup::Found { lsn: 5, .. }));
    }

    /// A large batch over three tables, one of them dropped, with deletions: applied in key
    /// order with its filter lines requested ahead, every write lands in its own table, and the
    /// generation counts exactly the bytes its memtables took.
    #[test]
    fn a_batch_over_several_tables_lands_in_each_and_is_counted_once() {
        let generation = Generation::new(1, 10_000);
        let mut batch = WriteBatch::new();
        for key in (0..300u64).rev() {
            batch.put((key % 3) as u32, key, Bytes::from(vec![key as u8; 8]));
        }
        for key in (0..300u64).step_by(7) {
            batch.delete((key % 3) as u32, key);
        }
        assert!(generation.apply(1, &batch, |table| table != 2));
        assert!(
            generation.table(2).is_none(),
            "a dropped table's writes are skipped"
        );
        let tables = generation.tables();
        assert_eq!(tables.len(), 2);
        let held: usize = tables.iter().map(|(_, m)| m.approximate_bytes()).sum();
        assert_eq!(generation.approximate_bytes(), held);
        for key in 0..300u64 {
            let table = (key % 3) as u32;
            let Some(memtable) = generation.table(table) else {
                continue;
            };
            let found = memtable.get(key, 1);
            if key % 7 == 0 {
                assert!(
                    matches!(found, Lookup::Deleted { .. }),
                    "key {key}: {found:?}"
                );
            } else {
                let Lookup::Found { row, .. } = found else {
                    panic!("key {key}: {found:?}");
                };
                assert_eq!(row, Bytes::from(vec![key as u8; 8]));
            }
        }
    }
}
