//! One reader's decoded pages, a slot per (value column, page), read without locks.
//!
//! The page cache ([`super::cache::PageCache`]) decides which pages stay within its byte budget;
//! this table is where a point read finds them. A lookup pins the current thread's epoch once
//! and then reads slots with plain loads: no lock and no reference count, so a cached fetch
//! costs a few dozen instructions and consecutive fetches overlap their memory misses. A page
//! that leaves a slot (evicted or replaced) is freed by `crossbeam-epoch` once no pinned thread
//! can still be reading it.
//!
//! A slot also keeps, in a word of a second array, where the values of a page of one width lie
//! ([`Cells`]): a point read of such a page goes from the word to the value's bytes, without a
//! load of the page itself, whose line is usually a cache miss of its own (a segment's words are
//! a few kilobytes that stay in cache; the pages they point to are scattered).

#![allow(unsafe_code)]

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_epoch::{self as epoch, Atomic, Guard, Owned, Shared};

use super::page::{Cells, Page};

/// A page in a slot, with the number it was put there under: the cache's entry for it carries
/// the same number, so evicting or replacing an older entry never empties a newer page's slot.
#[derive(Debug)]
struct Held {
    page: Page,
    generation: u64,
}

/// How an aligned segment's rows fall into pages: page `p` holds rows `p·per_page ..` up to the
/// next multiple or the last row. A table knows it so that the rows of a page of one width, which
/// its packed word has no room for, follow from the page's number.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PageRows {
    pub(crate) per_page: u64,
    pub(crate) rows: u64,
}

impl PageRows {
    /// Rows of page `page`.
    fn of(self, page: u64) -> u64 {
        let start = page.saturating_mul(self.per_page);
        self.rows.saturating_sub(start).min(self.per_page)
    }
}

/// Bits of a packed word that hold the values' address: user-space addresses on x86-64 and
/// AArch64 Linux are below 2^48 (a page whose address is not, or whose width needs more than the
/// 16 bits left, is simply not packed).
const ADDRESS_BITS: u32 = 48;

/// The word for `cells` (0 if they do not fit in one).
fn pack(cells: Cells<'_>) -> u64 {
    let address = cells.bytes().as_ptr().expose_provenance() as u64;
    match u16::try_from(cells.width()) {
        Ok(width) if address != 0 && address >> ADDRESS_BITS == 0 => {
            address | u64::from(width) << ADDRESS_BITS
        }
        _ => 0,
    }
}

/// Slots for every value column's pages of one segment (the key column is never cached here:
/// the reader keeps it decoded whole).
#[derive(Debug)]
pub(crate) struct PageTable {
    /// The cache's number for this reader, part of every [`super::cache::PageKey`] it inserts.
    pub(crate) segment: u64,
    pages: u64,
    /// The page in each slot.
    held: Box<[Atomic<Held>]>,
    /// Each slot's page's values, packed ([`pack`]), or 0: set only while the slot holds the
    /// page they belong to, and cleared before that page leaves (see [`PageTable::fill`]), so a
    /// reader pinned when it loads the word reads memory the pin keeps alive. An array of its
    /// own: eight words to a cache line, which stay in cache between reads of a page better
    /// than lines shared with the page pointers.
    cells: Box<[AtomicU64]>,
    generations: AtomicU64,
    /// The pages' rows, if the segment is aligned; values are packed in slots only then.
    rows: Option<PageRows>,
    /// Taken by whoever changes a slot (a fill or an empty, both rare next to reads): a slot's
    /// two words change together only if no two writers interleave.
    writer: Mutex<()>,
}

impl PageTable {
    /// A table of empty slots for `columns` columns (column 0, the key, gets none) of `pages`
    /// pages each, laid out as `rows` says if the segment is aligned.
    pub(crate) fn new(segment: u64, columns: usize, pages: u64, rows: Option<PageRows>) -> Self {
        let len = usize::try_from(pages)
            .ok()
            .and_then(|pages| pages.checked_mul(columns.saturating_sub(1)))
            .unwrap_or(0);
        Self {
            segment,
            pages,
            held: (0..len).map(|_| Atomic::null()).collect(),
            cells: (0..len).map(|_| AtomicU64::new(0)).collect(),
            generations: AtomicU64::new(0),
            rows,
            writer: Mutex::new(()),
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
            .filter(|&slot| slot < self.held.len())
    }

    /// The page in `slot`, valid while both the table and `guard` (a pin of the default
    /// collector, `crossbeam_epoch::pin()`) are borrowed.
    pub(crate) fn get<'a>(&'a self, slot: usize, guard: &'a Guard) -> Option<&'a Page> {
        // Pages are retired to the default collector: a guard of another would not hold them.
        debug_assert!(guard.collector() == Some(epoch::default_collector()));
        let shared = self.held.get(slot)?.load(Ordering::Acquire, guard);
        // SAFETY: a page taken out of its slot (`fill`'s swap, `empty`'s store) goes to
        // `retire`, which defers its free until every thread pinned now (`guard`) has unpinned.
        // The table itself frees its pages only in `drop`, which cannot run while `&'a self` is
        // borrowed.
        unsafe { shared.as_ref() }.map(|held| &held.page)
    }

    /// The values of the page of one width in `slot`, read from the slot alone (`None` if the
    /// slot holds no such page, or none), valid as long as [`Self::get`]'s page.
    pub(crate) fn cells<'a>(&'a self, slot: usize, guard: &'a Guard) -> Option<Cells<'a>> {
        debug_assert!(guard.collector() == Some(epoch::default_collector()));
        let packed = self.cells.get(slot)?.load(Ordering::Acquire);
        if packed == 0 {
            return None;
        }
        let rows = usize::try_from(self.rows?.of(self.position(slot).1)).ok()?;
        let width = (packed >> ADDRESS_BITS) as usize;
        let address = (packed & ((1 << ADDRESS_BITS) - 1)) as usize;
        let bytes: *const u8 = std::ptr::with_exposed_provenance(address);
        // SAFETY: in bounds: a nonzero word was stored by `fill` for the page it put in this
        // slot, whose values are `rows · width` bytes from `address` (`fill` packs a page only
        // if it has exactly the rows `self.rows` gives its slot, and `rows` here is that same,
        // unchanging, figure). Alive: the writer clears the word before it retires the page
        // (`fill`, `empty`), and retiring seals the page in the collector's bag behind a SeqCst
        // fence; `guard`'s pin put a SeqCst fence before this load. So if this load still saw
        // the word, the pin came first in that order, and the collector frees the page (and the
        // buffer it owns) only after `guard` is dropped, when `'a` has ended. The bytes are
        // never written after the page is made.
        let bytes = unsafe { std::slice::from_raw_parts(bytes, rows.checked_mul(width)?) };
        Cells::new(bytes, width, rows)
    }

    /// Puts `page` in `slot` and returns the generation to empty it by; a page it replaces is
    /// freed once no reader can see it. `None` if there is no such slot.
    pub(crate) fn fill(&self, slot: usize, page: Page) -> Option<u64> {
        let (Some(held_in), Some(cells_in)) = (self.held.get(slot), self.cells.get(slot)) else {
            return None;
        };
        // Only a page with the rows its slot is read with is packed (see `cells`).
        let packed = match (self.rows, page.cells()) {
            (Some(rows), Some(cells)) if rows.of(self.position(slot).1) == cells.rows() as u64 => {
                pack(cells)
            }
            _ => 0,
        };
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        // Numbered under the lock, so a slot's generations rise in the order its pages arrive.
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        let guard = epoch::pin();
        // The old page's word goes before the old page; the new page's comes after it.
        cells_in.store(0, Ordering::Release);
        let held = Owned::new(Held { page, generation }).into_shared(&guard);
        let old = held_in.swap(held, Ordering::AcqRel, &guard);
        // The packed word points into the page now held (its buffer moved with it, not its
        // bytes), which stays until a later `fill` or `empty`, both behind `writer`.
        cells_in.store(packed, Ordering::Release);
        // Both of the old page's words are unlinked: retiring it (which may free other pages)
        // does not hold up the table's other writers.
        drop(writer);
        Self::retire(old, &guard);
        Some(generation)
    }

    /// Empties `slot` if it still holds the page of `generation` (or whatever it holds, with
    /// `None`).
    pub(crate) fn empty(&self, slot: usize, generation: Option<u64>) {
        let (Some(held_in), Some(cells_in)) = (self.held.get(slot), self.cells.get(slot)) else {
            return;
        };
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let guard = epoch::pin();
        let current = held_in.load(Ordering::Acquire, &guard);
        // SAFETY: as in `get`: loaded under `guard`, so not freed before it is dropped.
        let held = unsafe { current.as_ref() }.map(|held| held.generation);
        if held.is_none() || (generation.is_some() && held != generation) {
            return;
        }
        // No other writer changes the slot meanwhile (`writer` is held).
        cells_in.store(0, Ordering::Release);
        held_in.store(Shared::null(), Ordering::Release);
        drop(writer);
        Self::retire(current, &guard);
    }

    /// Frees a page taken out of its slot once every thread pinned now has unpinned, and hands
    /// this thread's retired pages to the collector now rather than when its bag fills (pages
    /// can be large).
    fn retire(page: Shared<'_, Held>, guard: &Guard) {
        if page.is_null() {
            return;
        }
        // SAFETY: `page` is no longer in its slot, and its packed word is cleared, so no thread
        // that pins from now on can reach it; those pinned now may still read it, and
        // `defer_destroy` waits for them.
        unsafe { guard.defer_destroy(page) };
        guard.flush();
    }

    /// Slots, filled or not.
    pub(crate) fn len(&self) -> usize {
        self.held.len()
    }

    /// Slots that hold a page.
    #[cfg(test)]
    pub(crate) fn occupied(&self) -> impl Iterator<Item = usize> + '_ {
        let guard = epoch::pin();
        (0..self.held.len())
            .filter(move |&slot| !self.held[slot].load(Ordering::Acquire, &guard).is_null())
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
        for cell in self.held.iter() {
            // SAFETY: `drop` has the table to itself: every reference `get` and `cells` handed
            // out borrowed the table and has ended, so the pages still in slots can be freed at
            // once.
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

    use arrow_array::{ArrayRef, BinaryArray, UInt64Array};

    use super::*;

    /// A page of `len` rows holding `0..len` (shared with the cache's tests).
    pub(crate) fn page(len: u64) -> ArrayRef {
        Arc::new(UInt64Array::from_iter_values(0..len))
    }

    #[test]
    fn slots_hold_pages_per_column_and_page_and_the_key_column_has_none() {
        let table = PageTable::new(7, 3, 4, None);
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
        let table = Arc::new(PageTable::new(0, 2, 1, None));
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

    /// A page of `rows` values of `width` bytes, row `i`'s bytes all `seed + i`.
    fn one_width(rows: usize, width: usize, seed: u8) -> Page {
        Page::new(Arc::new(BinaryArray::from_iter_values(
            (0..rows).map(|i| vec![seed.wrapping_add(i as u8); width]),
        )))
    }

    #[test]
    fn values_of_one_width_are_found_from_the_slot_alone() {
        // Pages of 4 rows, the last of 2: rows 0..4, 4..8, 8..10.
        let rows = Some(PageRows {
            per_page: 4,
            rows: 10,
        });
        let table = PageTable::new(0, 2, 3, rows);
        let guard = epoch::pin();
        let (first, middle, last) = (0, 1, 2);
        assert!(table.cells(first, &guard).is_none(), "an empty slot");
        table.fill(first, one_width(4, 16, 10));
        let cells = table.cells(first, &guard).expect("packed");
        assert_eq!(cells.width(), 16);
        for row in 0..4 {
            assert_eq!(cells.row(row), Some(&[10 + row as u8; 16][..]));
        }
        assert_eq!(cells.row(4), None, "past the page's rows");
        table.fill(last, one_width(2, 3, 0));
        assert_eq!(
            table.cells(last, &guard).and_then(|c| c.row(1)),
            Some(&[1u8; 3][..]),
            "the short last page"
        );
        // A page whose rows are not its slot's is held but not packed.
        table.fill(middle, one_width(3, 16, 0));
        assert!(table.get(middle, &guard).is_some());
        assert!(table.cells(middle, &guard).is_none());
        // Nor is a page of mixed widths; one of empty values is (every row is empty).
        table.fill(
            middle,
            Page::new(Arc::new(BinaryArray::from_iter_values([
                &b"a"[..],
                b"bc",
                b"d",
                b"e",
            ]))),
        );
        assert!(table.cells(middle, &guard).is_none());
        table.fill(middle, one_width(4, 0, 0));
        assert_eq!(
            table.cells(middle, &guard).and_then(|c| c.row(3)),
            Some(&[][..])
        );
        // Replacing a packed page by another page, or emptying it, clears the word.
        let generation = table.fill(first, Page::new(page(4))).expect("a slot");
        assert!(table.cells(first, &guard).is_none(), "not a Binary page");
        table.empty(first, Some(generation));
        table.fill(first, one_width(4, 8, 7));
        assert!(table.cells(first, &guard).is_some());
        table.empty(first, None);
        assert!(table.cells(first, &guard).is_none());
        assert!(table.get(first, &guard).is_none());
        // A table without a row layout packs nothing.
        let unaligned = PageTable::new(0, 2, 3, None);
        unaligned.fill(0, one_width(4, 16, 0));
        assert!(unaligned.get(0, &guard).is_some());
        assert!(unaligned.cells(0, &guard).is_none());
    }

    #[test]
    fn values_read_from_a_slot_while_its_page_is_replaced_stay_readable() {
        let rows = Some(PageRows {
            per_page: 64,
            rows: 64,
        });
        let table = Arc::new(PageTable::new(0, 2, 1, rows));
        table.fill(0, one_width(64, 16, 0));
        // The writer starts once both readers have, and they read until it is done (and once
        // more after), so they overlap its rounds however the threads are scheduled.
        let started = Arc::new(std::sync::Barrier::new(3));
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let table = Arc::clone(&table);
                let started = Arc::clone(&started);
                let done = Arc::clone(&done);
                std::thread::spawn(move || {
                    started.wait();
                    let mut read = 0u64;
                    let mut last = false;
                    while !last {
                        last = done.load(Ordering::Acquire);
                        let guard = epoch::pin();
                        let Some(cells) = table.cells(0, &guard) else {
                            continue;
                        };
                        // Every page put there has 64 rows, row i all `seed + i`, of one width.
                        let width = cells.width();
                        let first = cells.row(0).expect("64 rows")[..].first().copied();
                        for row in 0..64 {
                            let value = cells.row(row).expect("64 rows");
                            assert_eq!(value.len(), width);
                            let want = first.map(|f| f.wrapping_add(row as u8));
                            assert!(value.iter().all(|&b| Some(b) == want));
                        }
                        read += 1;
                    }
                    read
                })
            })
            .collect();
        started.wait();
        for round in 0..20_000u64 {
            match round % 3 {
                0 => table.empty(0, None),
                _ => {
                    let width = 1 + (round % 40) as usize;
                    table.fill(0, one_width(64, width, round as u8));
                }
            }
        }
        done.store(true, Ordering::Release);
        let read: u64 = readers
            .into_iter()
            .map(|reader| reader.join().expect("reader"))
            .sum();
        assert!(read > 0, "the readers found packed pages");
    }
}
