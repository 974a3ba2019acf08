//! The simulation of seeded workloads, faults, crashes and reopens (`omendb_chaos::simulation`),
//! for a fixed set of seeds in the suite; `cargo xtask chaos --seeds N` runs more
//! (`OMENDB_CHAOS_SEEDS`), `cargo xtask chaos --seed S` replays one (`OMENDB_CHAOS_SEED`).

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
    let mut total = Report::default();
    let started = std::time::Instant::now();
    for seed in seeds() {
        for place in [Place::Memory, Place::Disk] {
            let report = simulation::run(
                seed,
                Config {
                    steps: steps(),
                    place,
                },
            )
            .await
            .unwrap_or_else(|failure| panic!("{failure}"));
            total.lives += report.lives;
            total.crashes += report.crashes;
            total.crash_points += report.crash_points;
            total.faults += report.faults;
            total.acknowledged += report.acknowledged;
            total.failed += report.failed;
        }
    }
    eprintln!("simulation: {total:?} in {:?}", started.elapsed());
    // The runs must have exercised what they claim to: crashes, crash points, faults.
    if seeds().len() >= 8 {
        assert!(
            total.crashes > 0 && total.crash_points > 0 && total.faults > 0,
            "{total:?}"
        );
        assert!(total.acknowledged > total.failed, "{total:?}");
    }
}
