//! The byte-budgeted cache of decoded pages shared by every segment reader of a process.
//!
//! An entry is one column's rows of one page, decoded to an Arrow array; its weight is the
//! array's memory but for the buffers it shares with other pages (`shared_buffers`). The page
//! itself sits in its reader's [`PageTable`], where point reads find it without a lock; this
//! cache holds each page's key and weight and decides which pages stay. Eviction is
//! `quick_cache`'s (S3-FIFO: one-off scans do not flush the pages that point reads keep using),
//! and evicting an entry empties its slot.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow_array::{Array, ArrayRef};

use super::page::Page;
use super::page_table::{PageRows, PageTable};
use super::shared_buffers::SharedBuffers;

/// Identifies a cached page: which segment (a number the cache hands out per opened reader),
/// which column, which page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PageKey {
    pub(crate) segment: u64,
    pub(crate) column: usize,
    pub(crate) page: u64,
}

/// What the cache keeps of a page: where it lives, under which generation, and what it weighs.
#[derive(Clone, Debug)]
struct Resident {
    table: Arc<PageTable>,
    slot: usize,
    generation: u64,
    weight: u64,
}

#[derive(Clone, Debug)]
struct ResidentWeight;

impl quick_cache::Weighter<PageKey, Resident> for ResidentWeight {
    fn weight(&self, _key: &PageKey, resident: &Resident) -> u64 {
        resident.weight
    }
}

/// Empties a page's slot when the cache lets its entry go: evicted, refused as too large, or
/// replaced by a newer entry for the same page (`quick_cache` reports all three through
/// `on_evict`). The generation check leaves a newer page in place.
#[derive(Clone, Debug)]
struct EmptySlot;

/// Entries let go during one cache operation. Their slots are emptied when the operation is over
/// (this drops), outside the cache's shard lock.
#[derive(Debug, Default)]
struct LetGo(Vec<Resident>);

impl Drop for LetGo {
    fn drop(&mut self) {
        for resident in self.0.drain(..) {
            resident
                .table
                .empty(resident.slot, Some(resident.generation));
        }
    }
}

impl quick_cache::Lifecycle<PageKey, Resident> for EmptySlot {
    type RequestState = LetGo;

    fn on_evict(&self, state: &mut LetGo, _key: PageKey, resident: Resident) {
        state.0.push(resident);
    }
}

/// Hits between two reports of a hit to the eviction policy. Telling `quick_cache` of every hit
/// would cost a lock per read; one in eight still marks the pages reads keep coming back to.
const TOUCH_EVERY: u64 = 8;

/// A batched read's hits ([`PageCache::batch_hits`]).
pub(crate) struct Hits<'a> {
    cache: &'a PageCache,
    table: &'a PageTable,
    columns: &'a [usize],
    served: u64,
}

impl Hits<'_> {
    /// Counts a read served from the cached `page`; one in [`TOUCH_EVERY`] of a batch's (the
    /// first, then every eighth) is also reported to the eviction policy.
    pub(crate) fn hit(&mut self, page: u64) {
        if self.served.is_multiple_of(TOUCH_EVERY) {
            self.cache.touch(self.table, self.columns, page);
        }
        self.served += 1;
    }
}

impl Drop for Hits<'_> {
    fn drop(&mut self) {
        if self.served > 0 {
            self.cache.hits.fetch_add(self.served, Ordering::Relaxed);
        }
    }
}

/// Hit and miss counts and current size of a [`PageCache`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheStats {
    /// Reads served from cached pages: a row read (each row of a batched read counts), or a
    /// range of rows within one page.
    pub hits: u64,
    /// Pages reads had to fetch and decode (each once, however many columns and rows of it the
    /// read wanted). Long ranges streamed past the cache count in neither.
    pub misses: u64,
    /// Bytes of decoded pages held.
    pub bytes: u64,
    /// Pages held.
    pub pages: u64,
    /// The budget in bytes.
    pub budget: u64,
}

/// The smallest share of the budget one shard of the cache gets, unless the whole budget is
/// smaller. A shard refuses any page heavier than about its share, and `quick_cache` makes four
/// shards per core by default: a 256 MiB budget on 64 cores refused every page over 1 MiB (a
/// column of 256-byte values), so reads of such tables decoded their pages again every time.
const MIN_SHARD_BYTES: u64 = 64 << 20;

/// Shards for a cache of `budget` bytes on `cores` cores: four per core for little contention,
/// but no more than leave each [`MIN_SHARD_BYTES`]; a power of two.
fn shards(budget: u64, cores: usize) -> usize {
    let by_size = usize::try_from(budget / MIN_SHARD_BYTES).unwrap_or(usize::MAX);
    let most = cores.saturating_mul(4).min(by_size).max(1);
    // The largest power of two not above `most` (quick_cache would round up).
    1 << most.ilog2()
}

/// A cache of decoded pages within a byte budget, shared by all readers (`Arc<PageCache>`).
#[derive(Debug)]
pub struct PageCache {
    resident: quick_cache::sync::Cache<
        PageKey,
        Resident,
        ResidentWeight,
        quick_cache::DefaultHashBuilder,
        EmptySlot,
    >,
    budget: u64,
    /// Buffers equal in many pages (fixed-width offsets, empty tombstone bits), kept once.
    shared: SharedBuffers,
    next_segment: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl PageCache {
    /// A cache holding at most `budget_bytes` of decoded pages.
    pub fn new(budget_bytes: u64) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        Self::with_cores(budget_bytes, cores)
    }

    /// [`PageCache::new`] as on a machine of `cores` cores.
    fn with_cores(budget_bytes: u64, cores: usize) -> Self {
        // quick_cache sizes its tables from an item estimate; 32 KiB is a typical page.
        let estimated_pages = usize::try_from(budget_bytes / 32_768)
            .unwrap_or(usize::MAX)
            .max(16);
        let mut options = quick_cache::OptionsBuilder::new();
        options
            .estimated_items_capacity(estimated_pages)
            .weight_capacity(budget_bytes)
            .shards(shards(budget_bytes, cores));
        let resident = match options.build() {
            Ok(options) => quick_cache::sync::Cache::with_options(
                options,
                ResidentWeight,
                quick_cache::DefaultHashBuilder::default(),
                EmptySlot,
            ),
            // The builder refuses only a missing capacity, and both are set above.
            Err(_) => quick_cache::sync::Cache::with(
                estimated_pages,
                budget_bytes,
                ResidentWeight,
                quick_cache::DefaultHashBuilder::default(),
                EmptySlot,
            ),
        };
        Self {
            resident,
            budget: budget_bytes,
            shared: SharedBuffers::default(),
            next_segment: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// An empty page table for a newly opened reader, under a number no other reader of this
    /// cache uses (so readers of different objects, or of one object opened twice, never share
    /// entries by mistake).
    pub(crate) fn table(
        &self,
        columns: usize,
        pages: u64,
        rows: Option<PageRows>,
    ) -> Arc<PageTable> {
        let segment = self.next_segment.fetch_add(1, Ordering::Relaxed);
        Arc::new(PageTable::new(segment, columns, pages, rows))
    }

    /// Puts a decoded page in its reader's table and accounts for it. The slot is filled before
    /// the entry is admitted, so an entry refused or evicted at once still empties it.
    pub(crate) fn insert(&self, table: &Arc<PageTable>, column: usize, page: u64, array: ArrayRef) {
        let Some(slot) = table.slot(column, page) else {
            return;
        };
        // The buffers the page now shares are not its own weight: they are held once for all
        // pages, bounded by `SharedBuffers`.
        let whole = array.get_array_memory_size();
        let (decoded, shared) = self.shared.share(Page::new(array));
        let weight = whole.saturating_sub(shared) as u64;
        let Some(generation) = table.fill(slot, decoded) else {
            return;
        };
        self.resident.insert(
            PageKey {
                segment: table.segment,
                column,
                page,
            },
            Resident {
                table: Arc::clone(table),
                slot,
                generation,
                weight,
            },
        );
    }

    /// Counts a read served from `table`'s cached pages of `page` for `columns`; one in
    /// [`TOUCH_EVERY`] is also reported to the eviction policy.
    pub(crate) fn hit(&self, table: &PageTable, columns: &[usize], page: u64) {
        if self
            .hits
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(TOUCH_EVERY)
        {
            self.touch(table, columns, page);
        }
    }

    /// The hits of one batched read, each counted as [`Self::hit`] counts one but added to
    /// the shared count once, when it is dropped (an atomic add per row was a locked
    /// instruction per key of a `multi_get`); the eviction policy hears of one in
    /// [`TOUCH_EVERY`] of each batch's, its first included.
    pub(crate) fn batch_hits<'a>(&'a self, table: &'a PageTable, columns: &'a [usize]) -> Hits<'a> {
        Hits {
            cache: self,
            table,
            columns,
            served: 0,
        }
    }

    /// Reports a hit on `table`'s `page` of `columns` to the eviction policy.
    fn touch(&self, table: &PageTable, columns: &[usize], page: u64) {
        for &column in columns.iter().filter(|&&column| column != 0) {
            let _ = self.resident.get(&PageKey {
                segment: table.segment,
                column,
                page,
            });
        }
    }

    /// Counts a page a read had to fetch and decode (once, however many of its columns).
    pub(crate) fn missed(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
    }

    /// Lets go of every page of `table` (its reader is closing): their weight no longer counts,
    /// and their memory is freed as soon as no reader pinned before can see them. Every slot's
    /// key is removed, not only the filled slots': an entry can outlive its page for a moment
    /// (between a racing eviction and re-insert of the same page).
    pub(crate) fn forget(&self, table: &PageTable) {
        for slot in 0..table.len() {
            let (column, page) = table.position(slot);
            self.resident.remove(&PageKey {
                segment: table.segment,
                column,
                page,
            });
            table.empty(slot, None);
        }
    }

    /// Counts and size.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            bytes: self.resident.weight(),
            pages: self.resident.len() as u64,
            budget: self.budget,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::page_table::tests::page;
    use super::*;

    #[test]
    fn the_budget_bounds_the_bytes_held_and_evicted_pages_leave_their_slots() {
        let cache = PageCache::new(1 << 20);
        let table = cache.table(2, 200, None);
        for p in 0..200 {
            cache.insert(&table, 1, p, page(1024));
        }
        let stats = cache.stats();
        assert!(stats.bytes <= 1 << 20, "{stats:?}");
        assert!(stats.pages < 200, "{stats:?}");
        let held = table.occupied().count() as u64;
        assert_eq!(
            held, stats.pages,
            "every page held is accounted for, and no other"
        );
        cache.hit(&table, &[1], 0);
        cache.missed();
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses), (1, 1));
    }

    #[test]
    fn inserting_a_page_twice_keeps_the_newer_copy_in_its_slot() {
        // Two reads that miss the same page both decode and insert it; the second entry replaces
        // the first, and letting the first go must not empty the slot the second filled.
        let cache = PageCache::new(1 << 20);
        let table = cache.table(2, 4, None);
        cache.insert(&table, 1, 0, page(10));
        cache.insert(&table, 1, 0, page(20));
        assert_eq!(table.occupied().count(), 1);
        assert_eq!(cache.stats().pages, 1);
        let slot = table.slot(1, 0).expect("a slot");
        let guard = crossbeam_epoch::pin();
        assert_eq!(table.get(slot, &guard).map(|a| a.array().len()), Some(20));
    }

    #[test]
    fn a_page_is_weighed_without_the_buffers_it_shares() {
        use arrow_array::BinaryArray;
        let cache = PageCache::new(1 << 24);
        let table = cache.table(2, 10, None);
        let fixed = |seed: u8| -> ArrayRef {
            Arc::new(BinaryArray::from_iter_values(
                (0..1000u32).map(|i| [seed ^ i as u8; 16]),
            ))
        };
        let whole: u64 = (0..10u8)
            .map(|p| fixed(p).get_array_memory_size() as u64)
            .sum();
        for p in 0..10u8 {
            cache.insert(&table, 1, u64::from(p), fixed(p));
        }
        // Each page's 1,001 offsets are shared, so they are not its weight.
        assert_eq!(cache.stats().bytes, whole - 10 * 1001 * 4);
        let guard = crossbeam_epoch::pin();
        for p in 0..10u8 {
            let slot = table.slot(1, u64::from(p)).expect("a slot");
            let page = table.get(slot, &guard).expect("cached");
            assert_eq!(page.array().to_data(), fixed(p).to_data());
            // Its one width is known with it, so point reads skip the offsets.
            assert_eq!(page.width(), Some(16));
            assert_eq!(page.binary(999), Some(&[p ^ 231; 16][..]));
        }
    }

    #[test]
    fn a_page_far_below_the_budget_is_kept_however_many_cores() {
        // 40 MiB of values in one page, a sixth of the default budget: kept on any machine (by
        // default quick_cache split the budget into four shards per core, and a shard refused a
        // page heavier than its share).
        for cores in [1, 2, 16, 64, 256] {
            let cache = PageCache::with_cores(256 << 20, cores);
            let table = cache.table(2, 1, None);
            cache.insert(&table, 1, 0, page(5 << 20));
            assert_eq!(table.occupied().count(), 1, "{cores} cores");
            assert_eq!(cache.stats().pages, 1, "{cores} cores");
        }
        assert_eq!(shards(256 << 20, 64), 4);
        assert_eq!(shards(256 << 20, 1), 4);
        assert_eq!(shards(16 << 30, 64), 256);
        assert_eq!(shards(16 << 30, 3), 8);
        assert_eq!(shards(1 << 20, 64), 1);
        assert_eq!(shards(0, 0), 1);
    }

    #[test]
    fn a_page_larger_than_the_budget_is_not_kept() {
        let cache = PageCache::new(1 << 12);
        let table = cache.table(2, 1, None);
        cache.insert(&table, 1, 0, page(10_000));
        assert_eq!(table.occupied().count(), 0);
        assert_eq!(cache.stats().bytes, 0);
    }

    #[test]
    fn forgetting_a_table_frees_its_pages_and_their_weight() {
        let cache = PageCache::new(1 << 24);
        let table = cache.table(3, 10, None);
        let other = cache.table(3, 10, None);
        for p in 0..10 {
            cache.insert(&table, 1, p, page(100));
            cache.insert(&table, 2, p, page(100));
            cache.insert(&other, 1, p, page(100));
        }
        assert_eq!(cache.stats().pages, 30);
        cache.forget(&table);
        assert_eq!(table.occupied().count(), 0);
        assert_eq!(other.occupied().count(), 10);
        assert_eq!(cache.stats().pages, 10);
    }
}
