//! The visible LSN and the registry of live snapshots.
//!
//! Write batches are applied to the memtable concurrently and may finish out of LSN order. The
//! visible LSN is the highest LSN below which every batch has been applied: a read at it never
//! sees half of the writes before it. A snapshot pins the visible LSN of the moment it was taken;
//! compaction keeps every version a pinned snapshot can still see. Pinning and asking for the
//! oldest pin happen under one lock with reading the visible LSN, so a snapshot being taken
//! cannot slip below the horizon a concurrent compaction computes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
#[cfg(not(loom))]
use std::time::Duration;

#[cfg(not(loom))]
use tokio::sync::watch;

use crate::memtable::Lsn;
use crate::sync::{AtomicU64, Mutex, MutexGuard, lock};

#[derive(Debug, Default)]
struct State {
    /// LSNs applied above the visible LSN, waiting for a gap below them to fill.
    applied: BTreeSet<Lsn>,
    /// Live snapshots: LSN → how many.
    pins: BTreeMap<Lsn, usize>,
    /// Positions of live change streams: the first LSN each still needs from the log → how many.
    #[cfg(not(loom))]
    log_holds: BTreeMap<Lsn, usize>,
}

impl State {
    /// The oldest pinned snapshot, or `visible` if none is pinned (see [`Visibility::horizon`]).
    fn horizon(&self, visible: Lsn) -> Lsn {
        self.pins
            .first_key_value()
            .map_or(visible, |(&lsn, _)| lsn.min(visible))
    }
}

/// The visible LSN and the live snapshots.
#[derive(Debug)]
pub(crate) struct Visibility {
    visible: AtomicU64,
    state: Mutex<State>,
    /// Wakes waiters for a visible LSN (async, so absent under loom).
    #[cfg(not(loom))]
    changed: watch::Sender<Lsn>,
}

impl Visibility {
    /// Everything up to `visible` is applied.
    pub(crate) fn new(visible: Lsn) -> Self {
        Self {
            visible: AtomicU64::new(visible),
            state: Mutex::new(State::default()),
            #[cfg(not(loom))]
            changed: watch::Sender::new(visible),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The visible LSN.
    pub(crate) fn visible(&self) -> Lsn {
        self.visible.load(Ordering::Acquire)
    }

    /// Records that the batch at `lsn` is applied, raising the visible LSN over every gap
    /// that closes.
    pub(crate) fn applied(&self, lsn: Lsn) {
        let mut state = self.state();
        let mut visible = self.visible.load(Ordering::Acquire);
        if lsn <= visible {
            return;
        }
        state.applied.insert(lsn);
        while state.applied.first() == Some(&(visible + 1)) {
            state.applied.pop_first();
            visible += 1;
        }
        self.visible.store(visible, Ordering::Release);
        drop(state);
        #[cfg(not(loom))]
        self.changed.send_if_modified(|current| {
            let raised = *current < visible;
            *current = (*current).max(visible);
            raised
        });
    }

    /// Takes a snapshot at the visible LSN and pins it until [`Visibility::unpin`].
    pub(crate) fn pin(&self) -> Lsn {
        let mut state = self.state();
        let lsn = self.visible.load(Ordering::Acquire);
        *state.pins.entry(lsn).or_default() += 1;
        lsn
    }

    /// Releases a snapshot taken by [`Visibility::pin`].
    pub(crate) fn unpin(&self, lsn: Lsn) {
        let mut state = self.state();
        if let Some(count) = state.pins.get_mut(&lsn) {
            *count -= 1;
            if *count == 0 {
                state.pins.remove(&lsn);
            }
        }
    }

    /// The oldest LSN a reader may still read at: the oldest pinned snapshot, or the visible
    /// LSN if none is pinned. Versions hidden at this LSN by a newer one are garbage.
    pub(crate) fn horizon(&self) -> Lsn {
        let state = self.state();
        state.horizon(self.visible.load(Ordering::Acquire))
    }

    /// Keeps the log's records from `lsn` on (a change stream's position) until
    /// [`Visibility::release_log`].
    #[cfg(not(loom))]
    pub(crate) fn hold_log(&self, lsn: Lsn) {
        *self.state().log_holds.entry(lsn).or_default() += 1;
    }

    /// Releases a hold taken by [`Visibility::hold_log`].
    #[cfg(not(loom))]
    pub(crate) fn release_log(&self, lsn: Lsn) {
        let mut state = self.state();
        if let Some(count) = state.log_holds.get_mut(&lsn) {
            *count -= 1;
            if *count == 0 {
                state.log_holds.remove(&lsn);
            }
        }
    }

    /// The first LSN the log must keep for readers: the one after the oldest snapshot (or
    /// after the visible LSN), unless a change stream's position is older. Under the lock
    /// [`Visibility::pin`] takes: a snapshot taken after this answer pins a visible LSN at or
    /// above it, so the records after it are kept.
    #[cfg(not(loom))]
    pub(crate) fn log_floor(&self) -> Lsn {
        let state = self.state();
        let snapshots = state
            .horizon(self.visible.load(Ordering::Acquire))
            .saturating_add(1);
        state
            .log_holds
            .first_key_value()
            .map_or(snapshots, |(&lsn, _)| lsn.min(snapshots))
    }

    /// Waits until the visible LSN reaches `lsn`; `false` if `within` runs out first.
    #[cfg(not(loom))]
    pub(crate) async fn wait_for(&self, lsn: Lsn, within: Duration) -> bool {
        let mut receiver = self.changed.subscribe();
        tokio::time::timeout(within, receiver.wait_for(|&visible| visible >= lsn))
            .await
            .is_ok_and(|changed| changed.is_ok())
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use loom::sync::Arc;
    use loom::sync::atomic::AtomicBool;

    use super::*;

    /// Appliers finishing out of order never expose an LSN before the ones below it are
    /// applied, and a snapshot pinned on one thread while another computes the horizon is never
    /// below it.
    #[test]
    fn visibility_rises_in_order_and_pins_hold_the_horizon() {
        loom::model(|| {
            let visibility = Arc::new(Visibility::new(0));
            // `done[l]` is set before LSN `l` is reported applied.
            let done = Arc::new([
                AtomicBool::new(true),
                AtomicBool::new(false),
                AtomicBool::new(false),
            ]);
            let appliers: Vec<_> = [2, 1]
                .into_iter()
                .map(|lsn| {
                    let (visibility, done) = (Arc::clone(&visibility), Arc::clone(&done));
                    loom::thread::spawn(move || {
                        done[lsn as usize].store(true, Ordering::Release);
                        visibility.applied(lsn);
                    })
                })
                .collect();
            let pinner = {
                let visibility = Arc::clone(&visibility);
                loom::thread::spawn(move || visibility.pin())
            };
            let horizon = visibility.horizon();
            let seen = visibility.visible();
            for lsn in 1..=seen {
                assert!(
                    done[lsn as usize].load(Ordering::Acquire),
                    "LSN {seen} visible before {lsn} was applied"
                );
            }
            let pinned = pinner.join().unwrap();
            assert!(horizon <= pinned, "the horizon passed a live snapshot");
            for applier in appliers {
                applier.join().unwrap();
            }
            assert_eq!(visibility.visible(), 2);
            assert_eq!(visibility.horizon(), pinned);
            visibility.unpin(pinned);
            assert_eq!(visibility.horizon(), 2);
        });
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn the_visible_lsn_rises_only_over_closed_gaps() {
        let visibility = Visibility::new(3);
        visibility.applied(5);
        visibility.applied(6);
        assert_eq!(visibility.visible(), 3);
        visibility.applied(4);
        assert_eq!(visibility.visible(), 6);
        visibility.applied(2);
        assert_eq!(visibility.visible(), 6);
    }

    #[test]
    fn the_horizon_is_the_oldest_pin() {
        let visibility = Visibility::new(10);
        let a = visibility.pin();
        visibility.applied(11);
        let b = visibility.pin();
        assert_eq!((a, b), (10, 11));
        assert_eq!(visibility.horizon(), 10);
        visibility.unpin(a);
        assert_eq!(visibility.horizon(), 11);
        visibility.unpin(b);
        visibility.applied(12);
        assert_eq!(visibility.horizon(), 12);
    }

    #[tokio::test]
    async fn waiters_wake_when_the_gap_closes() {
        let visibility = Arc::new(Visibility::new(0));
        let waiter = {
            let visibility = Arc::clone(&visibility);
            tokio::spawn(async move { visibility.wait_for(2, Duration::from_secs(10)).await })
        };
        visibility.applied(2);
        visibility.applied(1);
        assert!(waiter.await.unwrap());
        assert!(!visibility.wait_for(3, Duration::from_millis(10)).await);
    }

    #[test]
    fn concurrent_appliers_end_at_the_highest_lsn() {
        let visibility = Arc::new(Visibility::new(0));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let visibility = Arc::clone(&visibility);
                std::thread::spawn(move || {
                    for i in 0..1000u64 {
                        visibility.applied(i * 4 + t + 1);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(visibility.visible(), 4000);
    }
}
