//! The cut between memtable generations: which LSNs a generation takes.
//!
//! A generation takes LSNs from its `first` until rotation closes it at a cut. An applier is
//! admitted with its LSN under the read lock; rotation closes under the write lock, so once
//! [`Cut::close`] returns no LSN at or above the cut is being applied or will be, and every LSN
//! below it that was admitted stays admitted. Model-checked with loom.
//!
//! The lock is held for the admission alone, not while the applier writes: a write that seals
//! its memtable's skip list and merges its runs (tens of milliseconds for the largest merges)
//! held it, and a rotation waiting for the write lock held up every other applier behind it
//! (a waiting writer blocks new readers) and the version cell's update, which it runs in. Nothing
//! needs the applier done when the cut lands: a flush of the closed generation waits until every
//! LSN below its end is applied (the visible LSN), whichever generation took it.

use std::sync::atomic::Ordering;

use crate::memtable::Lsn;
use crate::sync::{AtomicU64, RwLock, read};

/// The LSNs `first..end` a generation takes (`end` is `Lsn::MAX` while it is active).
#[derive(Debug)]
pub(crate) struct Cut {
    first: Lsn,
    end: RwLock<Lsn>,
    /// The highest LSN admitted (0 if none).
    last: AtomicU64,
}

impl Cut {
    pub(crate) fn new(first: Lsn) -> Self {
        Self {
            first,
            end: RwLock::new(Lsn::MAX),
            last: AtomicU64::new(0),
        }
    }

    pub(crate) fn first(&self) -> Lsn {
        self.first
    }

    pub(crate) fn end(&self) -> Lsn {
        *read(&self.end)
    }

    /// Admits `lsn` if it is this generation's: a cut closed afterwards lands above it.
    pub(crate) fn admit(&self, lsn: Lsn) -> bool {
        let end = read(&self.end);
        if lsn < self.first || lsn >= *end {
            return false;
        }
        // Under the read lock: a close, under the write lock, sees it.
        self.last.fetch_max(lsn, Ordering::AcqRel);
        true
    }

    /// Closes at `end`: no LSN from `end` on is admitted afterwards. `false` (and nothing
    /// changes) if `end` is below the first LSN, above the current end, or not above an LSN
    /// already admitted.
    pub(crate) fn close(&self, end: Lsn) -> bool {
        let mut slot = self
            .end
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if end < self.first || end > *slot || end <= self.last.load(Ordering::Acquire) {
            return false;
        }
        *slot = end;
        true
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use loom::sync::Arc;
    use loom::sync::atomic::AtomicBool;

    use super::*;

    /// An applier racing a rotation: its LSN lands in the old generation only if it is below
    /// the cut, and the cut never lands below an admitted LSN.
    #[test]
    fn no_lsn_at_or_above_the_cut_is_admitted_after_close() {
        loom::model(|| {
            let cut = Arc::new(Cut::new(1));
            let applied = Arc::new(AtomicBool::new(false));
            let applier = {
                let (cut, applied) = (Arc::clone(&cut), Arc::clone(&applied));
                loom::thread::spawn(move || {
                    if cut.admit(2) {
                        applied.store(true, Ordering::Release);
                    }
                })
            };
            let closed_at_2 = cut.close(2);
            applier.join().unwrap();
            let admitted = applied.load(Ordering::Acquire);
            if closed_at_2 {
                assert!(!admitted, "LSN 2 was admitted after a cut at 2");
                assert_eq!(cut.end(), 2);
            } else {
                assert!(admitted, "a cut at 2 may only fail once 2 is admitted");
                assert!(cut.close(3));
            }
        });
    }
}
