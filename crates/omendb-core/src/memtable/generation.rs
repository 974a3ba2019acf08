//! A memtable generation: the memtables of every table for one run of LSNs.
//!
//! The active generation takes every LSN from its `first` on. Rotation closes it at a cut LSN
//! (its `end`) and opens the next generation there, so each generation holds exactly the LSNs
//! in `first..end`: a flush of a closed generation, once every LSN below its end is applied,
//! holds everything up to `end - 1` and nothing after, which is what the manifest's flushed LSN
//! and the WAL truncation rely on.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crossbeam_skiplist::SkipMap;
use crossbeam_skiplist::map::Entry;

use super::cut::Cut;
use super::{Lsn, Memtable};
use crate::batch::{Write, WriteBatch};

/// The memtables of one run of LSNs.
#[derive(Debug)]
pub struct Generation {
    /// Which LSNs it takes: once rotation has closed it, no later LSN gets in.
    cut: Cut,
    /// The memtables of the first tables written, each in a slot, filled in order (under
    /// `adding`): a point read finds its table's by looking at the slots up to the first empty
    /// one, an acquire load each. A skip map's lookup pinned an epoch and counted a reference
    /// on the node, writes to lines both cores read, on every read.
    slots: [OnceLock<(u32, Arc<Memtable>)>; SLOTS],
    /// The memtables of the tables written after the slots were full.
    more: SkipMap<u32, Arc<Memtable>>,
    /// Serializes adding a table, so that two appliers of one new table make one memtable.
    adding: Mutex<()>,
    bytes: AtomicUsize,
    /// Keys each table's memtable filter is sized for.
    expected_keys: usize,
}

/// Writes ahead of the one being applied whose filter line [`Generation::apply`] requests.
const FILTER_AHEAD: usize = 8;

/// Tables whose memtables a generation keeps in slots: more than most databases write at once.
const SLOTS: usize = 16;

/// A table's memtable in a generation, borrowed: from its slot, or from the skip map's entry
/// (which pins its node) for a table beyond the slots.
pub enum MemtableRef<'a> {
    /// In a slot.
    Slot(&'a Arc<Memtable>),
    /// In the skip map.
    More(Entry<'a, u32, Arc<Memtable>>),
}

impl MemtableRef<'_> {
    /// The memtable, owned.
    pub fn to_arc(&self) -> Arc<Memtable> {
        match self {
            MemtableRef::Slot(memtable) => Arc::clone(memtable),
            MemtableRef::More(entry) => Arc::clone(entry.value()),
        }
    }
}

impl std::ops::Deref for MemtableRef<'_> {
    type Target = Memtable;

    fn deref(&self) -> &Memtable {
        match self {
            MemtableRef::Slot(memtable) => memtable,
            MemtableRef::More(entry) => entry.value(),
        }
    }
}

impl Generation {
    /// An active generation starting at `first`, whose memtables' filters are sized for
    /// `expected_keys`.
    pub fn new(first: Lsn, expected_keys: usize) -> Self {
        Self {
            cut: Cut::new(first),
            slots: Default::default(),
            more: SkipMap::new(),
            adding: Mutex::new(()),
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
        if !self.cut.admit(lsn) {
            return false;
        }
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
        if let Some(memtable) = self.memtable(table) {
            return memtable.to_arc();
        }
        // Whatever a panicking holder did, the slots and the map are consistent: each is set
        // whole or not at all.
        let _adding = self.adding.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(memtable) = self.memtable(table) {
            return memtable.to_arc();
        }
        let memtable = Arc::new(Memtable::with_filter(self.expected_keys));
        match self.slots.iter().find(|slot| slot.get().is_none()) {
            Some(slot) => {
                // Under `adding`, so the slot is still empty.
                let _ = slot.set((table, Arc::clone(&memtable)));
            }
            None => {
                self.more.insert(table, Arc::clone(&memtable));
            }
        }
        memtable
    }

    /// The memtable of `table`, if it was written.
    pub fn table(&self, table: u32) -> Option<Arc<Memtable>> {
        self.memtable(table).map(|memtable| memtable.to_arc())
    }

    /// The memtable of `table`, if it was written, borrowed rather than an `Arc` clone (a count
    /// on a line every reader writes): a point read holds it from its prefetch to its lookup.
    pub fn memtable(&self, table: u32) -> Option<MemtableRef<'_>> {
        for slot in &self.slots {
            match slot.get() {
                Some((id, memtable)) if *id == table => return Some(MemtableRef::Slot(memtable)),
                Some(_) => {}
                // Slots fill in order: no later one is set either.
                None => return None,
            }
        }
        self.more.get(&table).map(MemtableRef::More)
    }

    /// Every table's memtable, by table id.
    pub fn tables(&self) -> Vec<(u32, Arc<Memtable>)> {
        let slots = self.slots.iter().map_while(OnceLock::get).cloned();
        let more = self
            .more
            .iter()
            .map(|entry| (*entry.key(), Arc::clone(entry.value())));
        let mut tables: Vec<_> = slots.chain(more).collect();
        tables.sort_unstable_by_key(|(id, _)| *id);
        tables
    }

    /// Approximate bytes held by all its memtables.
    pub fn approximate_bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Barrier, mpsc};
    use std::time::Duration;

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

    /// A rotation's cut lands while an applier below it is still writing (one sealing its skip
    /// list and merging runs can take tens of milliseconds): the applier holds nothing that a
    /// close waits for, and its write lands in the closed generation.
    #[test]
    fn a_cut_lands_while_an_applier_below_it_writes() {
        let generation = Generation::new(1, 100);
        let mut batch = WriteBatch::new();
        batch.put(1, 7, Bytes::from_static(b"x"));
        let (writing, released) = (Barrier::new(2), Barrier::new(2));
        let (closed_tx, closed_rx) = mpsc::channel();
        std::thread::scope(|scope| {
            let applier = scope.spawn(|| {
                generation.apply(3, &batch, |_| {
                    writing.wait();
                    released.wait();
                    true
                })
            });
            writing.wait();
            let closer = scope.spawn(|| closed_tx.send(generation.close(4)));
            // Bounded: the applier is released either way, so the scope ends.
            let closed = closed_rx.recv_timeout(Duration::from_secs(10));
            released.wait();
            assert!(applier.join().unwrap());
            closer.join().unwrap().unwrap();
            assert_eq!(
                closed,
                Ok(true),
                "the close waited for the applier below the cut"
            );
        });
        assert_eq!(generation.end(), 4);
        assert!(matches!(
            generation.table(1).unwrap().get(7, 10),
            Lookup::Found { lsn: 3, .. }
        ));
        assert!(!generation.apply(4, &batch, |_| true));
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

    /// Tables beyond the slots go to the skip map: every table, in a slot or not, is found by
    /// `table`, `memtable` and `tables`, and a table never written by none.
    #[test]
    fn tables_beyond_the_slots_are_found_as_those_in_them() {
        let generation = Generation::new(1, 1_000);
        let count = SLOTS as u32 * 2 + 3;
        // Written in descending id order, so the slots do not hold the lowest ids.
        for (lsn, table) in (0..count).rev().enumerate() {
            let mut batch = WriteBatch::new();
            batch.put(
                table * 10,
                u64::from(table),
                Bytes::from(vec![table as u8; 4]),
            );
            assert!(generation.apply(lsn as Lsn + 1, &batch, |_| true));
        }
        for table in 0..count {
            let id = table * 10;
            let row = Bytes::from(vec![table as u8; 4]);
            let found = generation
                .memtable(id)
                .unwrap()
                .get(u64::from(table), Lsn::MAX);
            assert!(
                matches!(&found, Lookup::Found { row: r, .. } if *r == row),
                "{found:?}"
            );
            assert!(Arc::ptr_eq(
                &generation.table(id).unwrap(),
                &generation.memtable(id).unwrap().to_arc()
            ));
            assert!(generation.table(id + 1).is_none());
        }
        let ids: Vec<u32> = generation.tables().iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, (0..count).map(|t| t * 10).collect::<Vec<_>>());
    }

    /// Appliers racing to write a table first share one memtable: no write is lost in another.
    #[test]
    fn appliers_racing_to_a_new_table_share_its_memtable() {
        for round in 0..20u32 {
            let generation = Arc::new(Generation::new(1, 1_000));
            let threads: Vec<_> = (0..4u64)
                .map(|thread| {
                    let generation = Arc::clone(&generation);
                    std::thread::spawn(move || {
                        for table in 0..SLOTS as u32 + 4 {
                            let mut batch = WriteBatch::new();
                            batch.put(table, thread, Bytes::from_static(b"v"));
                            assert!(generation.apply(thread + 1, &batch, |_| true));
                        }
                    })
                })
                .collect();
            threads.into_iter().for_each(|t| t.join().unwrap());
            let tables = generation.tables();
            assert_eq!(tables.len(), SLOTS + 4, "round {round}");
            for (id, memtable) in tables {
                for thread in 0..4u64 {
                    assert!(
                        matches!(memtable.get(thread, Lsn::MAX), Lookup::Found { .. }),
                        "round {round}: table {id} lost thread {thread}'s write"
                    );
                }
            }
        }
    }
}
