//! What a table's overlapping sorted runs cost its reads: the charge that compaction for reads
//! spends (`docs/rfcs/0002-read-triggered-compaction.md`, [`super::options::ReadCompaction`]).
//!
//! A point read is charged for each filter it probes besides its key's last candidate, a scan
//! for each time its rows move from one segment to another; one run would do neither. The
//! charge is kept per thread (a shard each, on its own cache line): it is added on every read
//! that meets more than one run, and an atomic read-modify-write of one shared line would send
//! that line between the cores on every such read. A shard is written by the thread it belongs
//! to with a plain load and store; should more threads than shards share one, an add may be
//! lost, which only delays a merge.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use super::options::ReadCompaction;

/// Shards of a charge: more than the threads that read at once on most machines.
const SHARDS: usize = 16;

/// A shard that crosses a multiple of 2^24 ns (about 17 ms) of charge wakes the background task,
/// which compares the charge with the price of a merge: often enough that a merge follows its
/// break-even within milliseconds of reads, rarely enough that the comparison costs nothing.
const QUANTUM_BITS: u32 = 24;

/// One thread's share of a charge, alone on its cache lines (two, for the adjacent-line
/// prefetcher).
#[repr(align(128))]
#[derive(Debug, Default)]
struct Shard(AtomicU64);

/// A table's read charge, in nanoseconds, and what merges have spent of it.
#[derive(Debug)]
pub(crate) struct ReadCharge {
    /// The costs; `None` if reads do not trigger merges (nothing is charged).
    costs: Option<Costs>,
    shards: [Shard; SHARDS],
    /// Nanoseconds of charge merges have spent: the unspent charge is the sum of the shards
    /// less this.
    spent: AtomicU64,
    /// Wakes the background task (which starts compactions).
    wake: Arc<Notify>,
}

/// [`ReadCompaction`] in the units the read path adds.
#[derive(Clone, Copy, Debug)]
struct Costs {
    probe_ns: u64,
    switch_ns: u64,
    rewrite_bytes_per_second: u64,
}

impl ReadCharge {
    /// A charge with nothing charged, costed by `costs`, waking `wake` as it grows.
    pub(crate) fn new(costs: Option<ReadCompaction>, wake: Arc<Notify>) -> Self {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Self {
            costs: costs.map(|c| Costs {
                probe_ns: ns(c.probe),
                switch_ns: ns(c.switch),
                rewrite_bytes_per_second: c.rewrite_bytes_per_second.max(1),
            }),
            shards: Default::default(),
            spent: AtomicU64::new(0),
            wake,
        }
    }

    /// Charges `n` filter probes of point reads.
    #[inline]
    pub(crate) fn probes(&self, n: u64) {
        // The count first: most reads meet one run, and their count is in a register.
        if n > 0
            && let Some(costs) = &self.costs
        {
            self.add(n.saturating_mul(costs.probe_ns));
        }
    }

    /// Charges `n` moves of a scan from one segment's rows to another's.
    #[inline]
    pub(crate) fn switches(&self, n: u64) {
        // The count first: most reads meet one run, and their count is in a register.
        if n > 0
            && let Some(costs) = &self.costs
        {
            self.add(n.saturating_mul(costs.switch_ns));
        }
    }

    fn add(&self, ns: u64) {
        let shard = &self.shards[shard()].0;
        // Only this thread writes this shard (see the module documentation): a load and a
        // store, not a locked add.
        let before = shard.load(Ordering::Relaxed);
        let after = before.saturating_add(ns);
        shard.store(after, Ordering::Relaxed);
        if before >> QUANTUM_BITS != after >> QUANTUM_BITS {
            self.wake.notify_one();
        }
    }

    /// Everything charged since the table was opened.
    pub(crate) fn charged(&self) -> Duration {
        Duration::from_nanos(self.charged_ns())
    }

    fn charged_ns(&self) -> u64 {
        self.shards.iter().fold(0u64, |sum, s| {
            sum.saturating_add(s.0.load(Ordering::Relaxed))
        })
    }

    fn unspent_ns(&self) -> u64 {
        self.charged_ns()
            .saturating_sub(self.spent.load(Ordering::Relaxed))
    }

    /// What merging `bytes` of segments costs, in nanoseconds; `None` if reads trigger no
    /// merges.
    fn price_ns(&self, bytes: u64) -> Option<u64> {
        let costs = self.costs?;
        let ns = u128::from(bytes) * 1_000_000_000 / u128::from(costs.rewrite_bytes_per_second);
        Some(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    /// Whether the unspent charge pays for merging `bytes` of segments.
    pub(crate) fn pays_for(&self, bytes: u64) -> bool {
        self.price_ns(bytes)
            .is_some_and(|price| self.unspent_ns() >= price)
    }

    /// Spends the price of a merge of `bytes` of segments, as far as the unspent charge goes:
    /// every merge of the table, whatever started it, removes runs the charge was for. (Merges
    /// run one at a time, so the read and the add cannot race another spend.)
    pub(crate) fn spend(&self, bytes: u64) {
        let Some(price) = self.price_ns(bytes) else {
            return;
        };
        let spent = price.min(self.unspent_ns());
        self.spent.fetch_add(spent, Ordering::Relaxed);
    }
}

/// This thread's shard.
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

    use super::*;

    fn charge(costs: Option<ReadCompaction>) -> ReadCharge {
        ReadCharge::new(costs, Arc::new(Notify::new()))
    }

    /// 1 µs per probe, 2 µs per switch, a merge of 1,000 bytes priced at 1 ms.
    fn costs() -> ReadCompaction {
        ReadCompaction {
            probe: Duration::from_micros(1),
            switch: Duration::from_micros(2),
            rewrite_bytes_per_second: 1_000_000,
        }
    }

    #[test]
    fn a_merge_is_paid_for_once_the_charge_reaches_its_price_and_not_before() {
        let charge = charge(Some(costs()));
        assert!(!charge.pays_for(1_000));
        charge.probes(998);
        assert!(!charge.pays_for(1_000), "998 µs of a 1 ms price");
        charge.switches(1);
        assert_eq!(charge.charged(), Duration::from_micros(1_000));
        assert!(charge.pays_for(1_000));
        assert!(!charge.pays_for(1_001));
        // Nothing is charged for no work.
        charge.probes(0);
        charge.switches(0);
        assert_eq!(charge.charged(), Duration::from_micros(1_000));
    }

    #[test]
    fn spending_takes_the_price_and_never_more_than_was_charged() {
        let charge = charge(Some(costs()));
        charge.probes(1_500);
        charge.spend(1_000);
        assert!(!charge.pays_for(1_000), "500 µs left");
        assert!(charge.pays_for(500));
        // A merge priced above what is left spends what is left, not a debt.
        charge.spend(1_000_000);
        assert!(!charge.pays_for(1));
        charge.probes(1);
        assert!(charge.pays_for(1), "new charge counts from zero");
        assert_eq!(charge.charged(), Duration::from_micros(1_501));
    }

    #[test]
    fn without_costs_nothing_is_charged_or_paid_for() {
        let charge = charge(None);
        charge.probes(1_000_000);
        charge.switches(1_000_000);
        assert_eq!(charge.charged(), Duration::ZERO);
        assert!(!charge.pays_for(0));
        charge.spend(10);
    }

    #[test]
    fn the_charges_of_every_thread_add_up() {
        let charge = Arc::new(charge(Some(costs())));
        // One thread after another: each adds to its own shard (or, past `SHARDS` threads,
        // to one another thread has finished with), so no add can be lost and the sum is exact.
        for _ in 0..2 * SHARDS {
            let charge = Arc::clone(&charge);
            std::thread::spawn(move || (0..1_000).for_each(|_| charge.probes(1)))
                .join()
                .unwrap();
        }
        assert_eq!(
            charge.charged(),
            Duration::from_micros(2 * SHARDS as u64 * 1_000)
        );
    }

    #[test]
    fn crossing_a_quantum_wakes_the_background_task() {
        let wake = Arc::new(Notify::new());
        let charge = ReadCharge::new(
            Some(ReadCompaction {
                probe: Duration::from_nanos(1 << QUANTUM_BITS),
                ..costs()
            }),
            Arc::clone(&wake),
        );
        let notified = wake.notified();
        tokio::pin!(notified);
        assert!(
            futures::FutureExt::now_or_never(notified.as_mut()).is_none(),
            "nothing charged yet"
        );
        charge.probes(1);
        assert!(futures::FutureExt::now_or_never(notified).is_some());
    }
}
