//! The cut between memtable generations: which LSNs a generation takes.
//!
//! A generation takes LSNs from its `first` until rotation closes it at a cut. An applier
//! enters with its LSN and holds the entry (a read lock) while it applies; rotation closes under
//! the write lock, so once [`Cut::close`] returns no LSN at or above the cut is being applied or
//! will be, and every LSN below it that was admitted stays admitted. Model-checked with loom.

use std::sync::atomic::Ordering;

use crate::memtable::Lsn;
use crate::sync::{AtomicU64, RwLock, RwLockReadGuard, read};

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

    /// Admits `lsn` if it is this generation's; the guard keeps a cut from landing until the
    /// write is applied.
    pub(crate) fn enter(&self, lsn: Lsn) -> Option<RwLockReadGuard<'_, Lsn>> {
        let end = read(&self.end);
        if lsn < self.first || lsn >= *end {
            return None;
        }
        self.last.fetch_max(lsn, Ordering::AcqRel);
        Some(end)
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
                    if let Some(_entry) = cut.enter(2) {
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
