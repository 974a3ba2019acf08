//! The cell that holds the current version: readers load it without locking; updates build
//! the next version from the current one under a lock, so no update is lost. `arc-swap`
//! normally; under `--cfg loom` a mutex around an `Arc`, which loom can explore.

use std::sync::Arc;

use crate::sync::{Mutex, lock};

/// The current value of something replaced whole.
#[derive(Debug)]
pub(crate) struct VersionCell<T> {
    #[cfg(not(loom))]
    current: arc_swap::ArcSwap<T>,
    #[cfg(loom)]
    current: Mutex<Arc<T>>,
    /// Serializes updates: each one builds on the value it replaces.
    update: Mutex<()>,
}

/// A loaded value: a cheap guard with `arc-swap`, an `Arc` under loom.
#[cfg(not(loom))]
pub(crate) type Loaded<T> = arc_swap::Guard<Arc<T>>;
#[cfg(loom)]
pub(crate) type Loaded<T> = Arc<T>;

impl<T> VersionCell<T> {
    pub(crate) fn new(value: T) -> Self {
        Self {
            #[cfg(not(loom))]
            current: arc_swap::ArcSwap::from_pointee(value),
            #[cfg(loom)]
            current: Mutex::new(Arc::new(value)),
            update: Mutex::new(()),
        }
    }

    /// The current value, for a short read (no reference count touched).
    pub(crate) fn load(&self) -> Loaded<T> {
        #[cfg(not(loom))]
        return self.current.load();
        #[cfg(loom)]
        return Arc::clone(&lock(&self.current));
    }

    /// The current value, to keep.
    pub(crate) fn load_full(&self) -> Arc<T> {
        #[cfg(not(loom))]
        return self.current.load_full();
        #[cfg(loom)]
        return Arc::clone(&lock(&self.current));
    }

    /// Replaces the value with `next(current)`, or leaves it if `next` returns `None`; returns
    /// what `next` decided. Updates never interleave.
    pub(crate) fn update<R>(&self, next: impl FnOnce(&Arc<T>) -> (Option<T>, R)) -> R {
        let _updating = lock(&self.update);
        let current = self.load_full();
        let (value, result) = next(&current);
        if let Some(value) = value {
            #[cfg(not(loom))]
            self.current.store(Arc::new(value));
            #[cfg(loom)]
            {
                *lock(&self.current) = Arc::new(value);
            }
        }
        result
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use loom::sync::Arc as LoomArc;

    use super::*;

    /// Two updaters each add one element while a reader loads: no update is lost and a reader
    /// never sees a value shrink.
    #[test]
    fn concurrent_updates_are_not_lost() {
        loom::model(|| {
            let cell = LoomArc::new(VersionCell::new(Vec::<u32>::new()));
            let updaters: Vec<_> = (0..2)
                .map(|i| {
                    let cell = LoomArc::clone(&cell);
                    loom::thread::spawn(move || {
                        cell.update(|current| {
                            let mut next = current.as_ref().clone();
                            next.push(i);
                            (Some(next), ())
                        });
                    })
                })
                .collect();
            let first = cell.load().len();
            let second = cell.load().len();
            assert!(second >= first);
            for updater in updaters {
                updater.join().unwrap();
            }
            let mut all = cell.load().as_ref().clone();
            all.sort_unstable();
            assert_eq!(all, [0, 1]);
        });
    }
}
