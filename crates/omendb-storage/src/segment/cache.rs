//! The byte-budgeted cache of decoded pages shared by every segment reader of a process.
//!
//! An entry is one column's rows of one page, decoded to an Arrow array; its weight is the
//! array's memory. Eviction is `quick_cache`'s (S3-FIFO: one-off scans do not flush the pages
//! that point reads keep using).

use std::sync::atomic::{AtomicU64, Ordering};

use arrow_array::{Array, ArrayRef};

/// Identifies a cached page: which segment (a number the cache hands out per opened reader),
/// which column, which page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PageKey {
    pub(crate) segment: u64,
    pub(crate) column: usize,
    pub(crate) page: u64,
}

#[derive(Clone, Debug)]
struct ArrayWeight;

impl quick_cache::Weighter<PageKey, ArrayRef> for ArrayWeight {
    fn weight(&self, _key: &PageKey, array: &ArrayRef) -> u64 {
        array.get_array_memory_size() as u64
    }
}

/// Hit and miss counts and current size of a [`PageCache`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups that found their page.
    pub hits: u64,
    /// Lookups that did not.
    pub misses: u64,
    /// Bytes of decoded pages held.
    pub bytes: u64,
    /// Pages held.
    pub pages: u64,
    /// The budget in bytes.
    pub budget: u64,
}

/// A cache of decoded pages within a byte budget, shared by all readers (`Arc<PageCache>`).
#[derive(Debug)]
pub struct PageCache {
    pages: quick_cache::sync::Cache<PageKey, ArrayRef, ArrayWeight>,
    budget: u64,
    next_segment: AtomicU64,
}

impl PageCache {
    /// A cache holding at most `budget_bytes` of decoded pages.
    pub fn new(budget_bytes: u64) -> Self {
        // quick_cache sizes its tables from an item estimate; 32 KiB is a typical page.
        let estimated_pages = usize::try_from(budget_bytes / 32_768)
            .unwrap_or(usize::MAX)
            .max(16);
        Self {
            pages: quick_cache::sync::Cache::with_weighter(
                estimated_pages,
                budget_bytes,
                ArrayWeight,
            ),
            budget: budget_bytes,
            next_segment: AtomicU64::new(0),
        }
    }

    /// A number no other reader of this cache uses, so readers of different objects (or of the
    /// same object opened twice) never share entries by mistake.
    pub(crate) fn segment_id(&self) -> u64 {
        self.next_segment.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn get(&self, key: &PageKey) -> Option<ArrayRef> {
        self.pages.get(key)
    }

    pub(crate) fn insert(&self, key: PageKey, page: ArrayRef) {
        self.pages.insert(key, page);
    }

    /// Counts and size.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.pages.hits(),
            misses: self.pages.misses(),
            bytes: self.pages.weight(),
            pages: self.pages.len() as u64,
            budget: self.budget,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::UInt64Array;

    use super::*;

    fn page(len: u64) -> ArrayRef {
        Arc::new(UInt64Array::from_iter_values(0..len))
    }

    #[test]
    fn the_budget_bounds_the_bytes_held_and_hits_and_misses_are_counted() {
        let cache = PageCache::new(1 << 20);
        let key = |page| PageKey {
            segment: 0,
            column: 0,
            page,
        };
        assert!(cache.get(&key(0)).is_none());
        cache.insert(key(0), page(1024));
        assert_eq!(cache.get(&key(0)).map(|a| a.len()), Some(1024));
        for p in 1..200 {
            cache.insert(key(p), page(1024));
        }
        let stats = cache.stats();
        assert!(stats.bytes <= 1 << 20, "{stats:?}");
        assert!(stats.pages < 200, "{stats:?}");
        assert!(stats.hits >= 1 && stats.misses >= 1, "{stats:?}");
    }
}
