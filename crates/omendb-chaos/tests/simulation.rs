//! The simulation of seeded workloads, faults, crashes and reopens (`omendb_chaos::simulation`),
//! for a fixed set of seeds in the suite; `cargo xtask chaos --seeds N` runs more
//! (`OMENDB_CHAOS_SEEDS`), `cargo xtask chaos --seed S` runs one again (`OMENDB_CHAOS_SEED`):
//! the same workload and dice, but not the same thread timing, so not always the same path.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

use omendb_chaos::simulation::{self, Config, Place, Report};

fn seeds() -> Vec<u64> {
    if let Ok(seed) = std::env::var("OMENDB_CHAOS_SEED") {
        return vec![seed.parse().expect("OMENDB_CHAOS_SEED is a number")];
    }
    let n = std::env::var("OMENDB_CHAOS_SEEDS")
        .map_or(16, |s| s.parse().expect("OMENDB_CHAOS_SEEDS is a number"));
    (0..n).collect()
}

fn steps() -> usize {
    std::env::var("OMENDB_CHAOS_STEPS").map_or(300, |s| s.parse().expect("a number"))
}

/// Both places in one test: the crash points are process-global, so runs go one at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_faults_and_crashes_lose_no_acknowledged_write() {
    let mut by_place = [Report::default(), Report::default()];
    let started = std::time::Instant::now();
    for seed in seeds() {
        for (place, total) in [Place::Memory, Place::Disk].into_iter().zip(&mut by_place) {
            // Before the run: a panic, or a hang the harness kills, still names the seed.
            eprintln!("simulation: seed {seed} ({place:?})");
            let report = simulation::run(
                seed,
                Config {
                    steps: steps(),
                    place,
                },
            )
            .await
            .unwrap_or_else(|failure| panic!("{failure}"));
            total.add(&report);
        }
    }
    eprintln!("simulation: {:?} in {:?}", by_place, started.elapsed());
    let mut total = Report::default();
    for report in &by_place {
        total.add(report);
    }
    // The runs must have exercised what they claim to: crashes (at flush and compaction
    // points too, not only at commits), each kind of fault that can fail a write, and
    // poisoned lives.
    if seeds().len() >= 8 {
        assert!(total.crashes > 0 && total.crash_points > 0, "{total:?}");
        // Crashes during an open after a crash, in both places (recovery interrupted).
        for place in &by_place {
            assert!(place.crashes_in_open > 0, "{by_place:?}");
        }
        assert!(total.crashes_at("flush.") > 0, "{total:?}");
        assert!(total.crashes_at("compaction.") > 0, "{total:?}");
        assert!(total.disk_write_faults > 0, "{total:?}");
        assert!(total.disk_sync_faults > 0, "{total:?}");
        assert!(total.disk_meta_faults > 0, "{total:?}");
        assert!(total.store_errors > 0, "{total:?}");
        assert!(total.refused_as_poisoned > 0, "{total:?}");
        // Buffered writes a crash keeps from the disk or the store are lost in both places
        // (on the disk only since the harness crashes it before dropping the old life).
        for place in &by_place {
            assert!(place.lost_at_crash > 0, "{by_place:?}");
        }
        assert!(total.acknowledged > total.failed, "{total:?}");
    }
}
