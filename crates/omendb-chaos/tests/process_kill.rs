//! The process-kill harness (`omendb_chaos::kill`): the `omendb-chaos-writer` binary is killed
//! with `SIGKILL` at random moments (flushes and compactions included), and after each reopen
//! every acknowledged durable write is present, nothing never written appears, and deleted keys
//! stay deleted. The second test shows that the check fails when the side channel disagrees with
//! the database.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

use std::time::{Duration, Instant};

use omendb_chaos::kill::{Config, Failure, KillHarness};

const WRITER: &str = env!("CARGO_BIN_EXE_omendb-chaos-writer");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        seed: 7,
        ..Config::new(WRITER, dir.path())
    };
    let started = Instant::now();
    let report = KillHarness::new(config)
        .run_for(Duration::from_secs(10))
        .await
        .unwrap_or_else(|failure| panic!("{failure}"));
    eprintln!("process kill: {report:?} in {:?}", started.elapsed());
    assert!(report.rounds >= 5, "{report:?}");
    assert!(report.acknowledged > 100, "{report:?}");
    // Totals alone would pass with rounds whose writer was killed before it acknowledged
    // anything, which test nothing.
    assert_eq!(report.acknowledged_by_round.len() as u64, report.rounds);
    assert!(
        report.acknowledged_by_round.iter().all(|n| *n > 0),
        "{report:?}"
    );
}

/// A round abandoned mid-way (a test's timeout drops it while the writer runs) must not leave
/// the writer running: it would go on writing into the directory and holding its lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_round_kills_its_writer() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        kill_after: Duration::from_secs(60)..Duration::from_secs(60),
        ..Config::new(WRITER, dir.path())
    };
    let mut harness = KillHarness::new(config);
    let abandoned = tokio::time::timeout(Duration::from_secs(2), harness.kill_writer()).await;
    assert!(
        abandoned.is_err(),
        "the round ended on its own: {abandoned:?}"
    );
    // A live writer holds the directory's lock: the open would fail as `Locked`.
    let db = omendb_chaos::kill::open(dir.path())
        .await
        .unwrap_or_else(|err| panic!("the writer outlived its round: {err}"));
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_rejects_a_side_channel_the_database_contradicts() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        kill_after: Duration::from_millis(400)..Duration::from_millis(600),
        ..Config::new(WRITER, dir.path())
    };
    let mut harness = KillHarness::new(config);
    let side_channel = harness.kill_writer().await.unwrap();
    assert!(
        side_channel.contains("@A "),
        "the writer acknowledged nothing"
    );

    // An acknowledgement that never happened: round 0 writes values `0.task.seq`.
    let fabricated = format!("{side_channel}@B 1 9.9.9\n@A 1 9.9.9\n");
    match harness.check(&fabricated).await {
        Err(Failure::Mismatch {
            round: 0,
            key: 1,
            found,
            acknowledged,
            ..
        }) => {
            assert_eq!(acknowledged.as_deref(), Some("9.9.9"));
            assert_ne!(found.as_deref(), Some("9.9.9"));
        }
        other => panic!("the fabricated acknowledgement passed: {other:?}"),
    }

    // Writes the database holds but no acknowledgement reported: they look never written.
    match harness.check("").await {
        Err(Failure::Mismatch {
            round: 0,
            found: Some(_),
            acknowledged: None,
            in_flight: None,
            ..
        }) => {}
        other => panic!("the unreported writes passed: {other:?}"),
    }

    // The true side channel passes: the failures above were the checker's, not the database's.
    harness.check(&side_channel).await.unwrap();
    assert_eq!(harness.report().rounds, 1);
}
