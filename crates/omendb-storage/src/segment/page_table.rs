//! One reader's decoded pages, a slot per (value column, page), read without locks.
//!
//! The page cache ([`super::cache::PageCache`]) decides which pages stay within its byte budget;
//! this table is where a point read finds them. A lookup pins the current thread's epoch once
//! and then reads slots with plain loads: no lock and no reference count, so a cached fetch
//! costs a few dozen instructions and consecutive fetches overlap their memory misses. A page
//! that leaves a slot (evicted or replaced) is freed by `crossbeam-epoch` once no pinned thread
//! can still be reading it.

#![allow(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_epoch::{self as epoch, Atomic, Guard, Owned, Shared};

use super::page::Page;

/// A page in a slot, with the number it was put there under: the cache's entry for it carries
/// the same number, so evicting or replacing an older entry never empties a newer page's slot.
/// 32 bytes: the page's array, its width and the number share one cache line.
#[derive(Debug)]
struct Held {
    page: Page,
    generation: u64,
}

/// Slots for every value column's pages of one segment (the key column is never cached here:
/// the reader keeps it decoded whole).
#[derive(Debug)]
pub(crate) struct PageTable {
    /// The cache's number for this reader, part of every [`super::cache::PageKey`] it inserts.
    pub(crate) segment: u64,
    pages: u64,
    slots: Box<[Atomic<Held>]>,
    generations: AtomicU64,
}

impl PageTable {
    /// A table of empty slots for `columns` columns (column 0, the key, gets none) of `pages`
    /// pages each.
    pub(crate) fn new(segment: u64, columns: usize, pages: u64) -> Self {
        let len = usize::try_from(pages)
            .ok()
            .and_then(|pages| pages.checked_mul(columns.saturating_sub(1)))
            .unwrap_or(0);
        Self {
            segment,
            pages,
            slots: (0..len).map(|_| Atomic::null()).collect(),
            generations: AtomicU64::new(0),
        }
    }

    /// The slot of `column`'s `page`, if the table has one.
    pub(crate) fn slot(&self, column: usize, page: u64) -> Option<usize> {
        if column == 0 || page >= self.pages {
            return None;
        }
        let slot = (column as u64 - 1)
            .checked_mul(self.pages)?
            .checked_add(page)?;
        usize::try_from(slot)
            .ok()
            .filter(|&slot| slot < self.slots.len())
    }

    /// The page in `slot`, valid while both the table and `guard` (a pin of the default
    /// collector, `crossbeam_epoch::pin()`) are borrowed.
    pub(crate) fn get<'a>(&'a self, slot: usize, guard: &'a Guard) -> Option<&'a Page> {
        // Pages are retired to the default collector: a guard of another would not hold them.
        debug_assert!(guard.collector() == Some(epoch::default_collector()));
        let shared = self.slots.get(slot)?.load(Ordering::Acquire, guard);
        // SAFETY: a page taken out of its slot (`fill`'s swap, `empty`'s compare-exchange) goes
        // to `retire`, which defers its free until every thread pinned now (`guard`) has
        // unpinned. The table itself frees its pages only in `drop`, which cannot run while
        // `&'a self` is borrowed.
        unsafe { shared.as_ref() }.map(|held| &held.page)
    }

    /// Puts `page` in `slot` and returns the generation to empty it by; a page it replaces is
    /// freed once no reader can see it. `None` if there is no such slot.
    pub(crate) fn fill(&self, slot: usize, page: Page) -> Option<u64> {
        let cell = self.slots.get(slot)?;
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        let guard = epoch::pin();
        let old = cell.swap(
            Owned::new(Held { page, generation }),
            Ordering::AcqRel,
            &guard,
        );
        Self::retire(old, &guard);
        Some(generation)
    }

    /// Empties `slot` if it still holds the page of `generation` (or whatever it holds, with
    /// `None`).
    pub(crate) fn empty(&self, slot: usize, generation: Option<u64>) {
        let Some(cell) = self.slots.get(slot) else {
            return;
        };
        let guard = epoch::pin();
        let current = cell.load(Ordering::Acquire, &guard);
        // SAFETY: as in `get`: loaded under `guard`, so not freed before it is dropped.
        let held = unsafe { current.as_ref() }.map(|held| held.generation);
        if held.is_none() || (generation.is_some() && held != generation) {
            return;
        }
        // A page put there since the load is newer than `generation`: leave it.
        if cell
            .compare_exchange(
                current,
                Shared::null(),
                Ordering::AcqRel,
                Ordering::Acquire,
                &guard,
            )
            .is_ok()
        {
            Self::retire(current, &guard);
        }
    }

    /// Frees a page taken out of its slot once every thread pinned now has unpinned, and hands
    /// this thread's retired pages to the collector now rather than when its bag fills (pages
    /// can be large).
    fn retire(page: Shared<'_, Held>, guard: &Guard) {
        if page.is_null() {
            return;
        }
        // SAFETY: `page` is no longer in its slot, so no thread that pins from now on can load
        // it; those pinned now may still read it, and `defer_destroy` waits for them.
        unsafe { guard.defer_destroy(page) };
        guard.flush();
    }

    /// Slots, filled or not.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Slots that hold a page.
    #[cfg(test)]
    pub(crate) fn occupied(&self) -> impl Iterator<Item = usize> + '_ {
        let guard = epoch::pin();
        (0..self.slots.len())
            .filter(move |&slot| !self.slots[slot].load(Ordering::Acquire, &guard).is_null())
    }

    /// The column and page of `slot`.
    pub(crate) fn position(&self, slot: usize) -> (usize, u64) {
        let slot = slot as u64;
        (
            (slot / self.pages.max(1)) as usize + 1,
            slot % self.pages.max(1),
        )
    }
}

impl Drop for PageTable {
    fn drop(&mut self) {
        for cell in self.slots.iter() {
            // SAFETY: `drop` has the table to itself: every reference `get` handed out borrowed
            // the table and has ended, so the pages still in slots can be freed at once.
            unsafe {
                let page = cell.swap(Shared::null(), Ordering::Relaxed, epoch::unprotected());
                if !page.is_null() {
                    drop(page.into_owned());
                }
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, UInt64Array};

    use super::*;

    /// A page of `len` rows holding `0..len` (shared with the cache's tests).
    pub(crate) fn page(len: u64) -> ArrayRef {
        Arc::new(UInt64Array::from_iter_values(0..len))
    }

    #[test]
    fn slots_hold_pages_per_column_and_page_and_the_key_column_has_none() {
        let table = PageTable::new(7, 3, 4);
        assert_eq!(table.slot(0, 0), None, "the key column is not cached here");
        assert_eq!(table.slot(1, 4), None, "past the last page");
        assert_eq!(table.slot(3, 0), None, "past the last column");
        let slot = table.slot(2, 3).expect("in range");
        assert_eq!(table.position(slot), (2, 3));
        let guard = epoch::pin();
        assert!(table.get(slot, &guard).is_none());
        let first = table.fill(slot, Page::new(page(10))).expect("a slot");
        assert_eq!(table.get(slot, &guard).map(|a| a.array().len()), Some(10));
        assert_eq!(table.occupied().collect::<Vec<_>>(), vec![slot]);
        let second = table.fill(slot, Page::new(page(20))).expect("a slot");
        table.empty(slot, Some(first));
        assert_eq!(
            table.get(slot, &guard).map(|a| a.array().len()),
            Some(20),
            "emptying an older generation leaves the newer page"
        );
        table.empty(slot, Some(second));
        assert!(table.get(slot, &guard).is_none());
        table.fill(slot, Page::new(page(30)));
        table.empty(slot, None);
        assert_eq!(table.occupied().count(), 0);
    }

    #[test]
    fn a_page_read_while_it_is_replaced_stays_readable() {
        let table = Arc::new(PageTable::new(0, 2, 1));
        table.fill(0, Page::new(page(100)));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let table = Arc::clone(&table);
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        let guard = epoch::pin();
                        if let Some(page) = table.get(0, &guard) {
                            let values = page
                                .array()
                                .as_any()
                                .downcast_ref::<UInt64Array>()
                                .expect("u64 page");
                            assert_eq!(values.value(values.len() - 1), values.len() as u64 - 1);
                        }
                    }
                })
            })
            .collect();
        for round in 0..20_000u64 {
            match round % 3 {
                0 => table.empty(0, None),
                _ => {
                    table.fill(0, Page::new(page(1 + round % 50)));
                }
            }
        }
        for reader in readers {
            reader.join().expect("reader");
        }
    }
}
