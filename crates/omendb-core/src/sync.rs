//! The synchronisation primitives the engine's loom-checked modules (`memtable/cut.rs`,
//! `visibility.rs`, `version_cell.rs`) are built on: `std` normally, `loom`'s model-checked
//! twins under `--cfg loom` (`cargo xtask loom`), so loom explores their locks as they run. Not
//! modelled: the version cell's `arc-swap` (a mutex stands in under loom), the visibility
//! waiters' `watch` notifications, and the memtable's own lock-free seal (std atomics,
//! `arc-swap`, crossbeam), which the model and concurrency tests exercise instead.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::AtomicU64;
#[cfg(loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::AtomicU64;
#[cfg(not(loom))]
pub(crate) use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard};

/// Locks `mutex`, ignoring poisoning: the modules using it leave their state consistent at
/// every step, so a holder that panicked cannot have corrupted it.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Read-locks `lock`, ignoring poisoning (see [`lock`]).
pub(crate) fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}
