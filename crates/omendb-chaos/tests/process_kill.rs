//! The process-kill harness (`omendb_chaos::kill`): the `omendb-chaos-writer` binary is killed
//! with `SIGKILL` at random moments (flushes, compactions and its own recovery of the previous
//! writer's crash included), and after each reopen every acknowledged durable write is present,
//! the acknowledged buffered writes that survived are a prefix of the log, nothing never written
//! appears, deleted keys stay deleted, and a full scan agrees with the point reads. The last test
//! shows that the check fails when the side channel disagrees with the database.

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
    // anything, which test nothing: only the writers killed early may have acknowledged none.
    assert_eq!(report.acknowledged_by_round.len() as u64, report.rounds);
    let acknowledging = report.acknowledged_by_round.iter().filter(|n| **n > 0);
    assert!(
        acknowledging.count() as u64 >= report.rounds - report.early_kills,
        "{report:?}"
    );
    // Some rounds were left to the next writer to recover.
    assert!(report.checks < report.rounds, "{report:?}");
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

    // A durable acknowledgement that never happened, of a key beyond the writer's (whose write
    // in flight the fabricated lines would otherwise hide): round 0 writes values
    // `0.task.seq`, and no LSN is this high. Everything below it must be there, the fabricated
    // write included.
    let fabricated = format!(
        "{side_channel}@B kv/1000=9.9.9\n@A kv/1000=9.9.9 {} D\n",
        1u64 << 60
    );
    // (The closest explanation names key 1000, unless the real writer's last buffered
    // acknowledgements were lost with it, which the fabricated durable one now forbids too.)
    match harness.check(&fabricated).await {
        Err(Failure::Mismatch {
            round: 0,
            table,
            key,
            found,
            allowed,
            ..
        }) => {
            if (table, key) == ("kv", 1000) {
                assert_eq!(allowed, [Some("9.9.9".to_owned())]);
                assert_eq!(found, None);
            }
        }
        other => panic!("the fabricated acknowledgement passed: {other:?}"),
    }

    // A buffered acknowledgement that never happened, below a durable one that never happened
    // either: the durable one makes the buffered one required too.
    let below_durable = format!(
        "{side_channel}@B kv/1001=7.7.7\n@A kv/1001=7.7.7 {} B\n@B audit/1002=8.8.8\n@A audit/1002=8.8.8 {} D\n",
        (1u64 << 60) - 1,
        1u64 << 60
    );
    assert!(
        matches!(
            harness.check(&below_durable).await,
            Err(Failure::Mismatch { .. })
        ),
        "a buffered write below a durable one was excused"
    );

    // Writes the database holds but no acknowledgement reported: they look never written.
    match harness.check("").await {
        Err(Failure::Mismatch {
            round: 0,
            found: Some(_),
            allowed,
            ..
        }) => assert_eq!(allowed, [None]),
        other => panic!("the unreported writes passed: {other:?}"),
    }

    // A side channel that cut the fabricated write off as buffered and lost passes: a buffered
    // write above every durable one may be lost with the process.
    let lost = format!(
        "{side_channel}@B kv/1000=9.9.9\n@A kv/1000=9.9.9 {} B\n",
        1u64 << 60
    );
    harness.check(&lost).await.unwrap();
    assert_eq!(harness.report().rounds, 1);
    assert!(
        harness.report().buffered_lost >= 1,
        "{:?}",
        harness.report()
    );
}
