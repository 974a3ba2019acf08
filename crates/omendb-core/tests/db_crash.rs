//! Crash test: a child process writes with `Durable` acknowledgements and is killed with
//! `SIGKILL` at random moments (flushes included); after each reopen every acknowledged write is
//! present, nothing never written appears, and deleted keys stay deleted.
//!
//! The child is this test binary run again with `OMENDB_CRASH_CHILD` set: it runs only
//! `crash_child`, which writes and reports each write on stdout before (`B`) and after (`A`)
//! its acknowledgement. Each writer task owns its keys, so per key at most one write is in
//! flight when the kill lands: the key must then hold the last acknowledged value or that one.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use omendb_core::{Db, KeyType, WriteOptions};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const CHILD: &str = "OMENDB_CRASH_CHILD";
const TASKS: u64 = 4;
const KEYS: u64 = 64;

async fn open(dir: &std::path::Path) -> Db {
    Db::builder()
        .path(dir)
        .memtable_bytes(4 * 1024)
        .compaction_trigger(3)
        .build()
        .await
        .unwrap()
}

/// The child: writes until killed. Does nothing unless run by the parent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child() {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let (dir, round) = spec.split_once('|').unwrap();
    let db = open(std::path::Path::new(dir)).await;
    let table = match db.table("kv") {
        Ok(table) => table,
        Err(_) => db.create_table("kv", KeyType::U64, None).await.unwrap(),
    };
    let round: u64 = round.parse().unwrap();
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let table = table.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(round * 100 + task);
            for seq in 0.. {
                let key = rng.random_range(0..KEYS / TASKS) * TASKS + task;
                let delete = rng.random_bool(0.2);
                let value = if delete {
                    "-".to_owned()
                } else {
                    format!("{round}.{task}.{seq}")
                };
                report('B', key, &value);
                if delete {
                    table.delete(key, WriteOptions::DURABLE).await.unwrap();
                } else {
                    table
                        .put_value(key, value.clone().into_bytes(), WriteOptions::DURABLE)
                        .await
                        .unwrap();
                }
                report('A', key, &value);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

fn report(event: char, key: u64, value: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "@{event} {key} {value}").unwrap();
    out.flush().unwrap();
}

#[derive(Clone, Debug, Default)]
struct KeyState {
    /// What the key holds for sure (`None`: absent).
    acked: Option<String>,
    /// A write issued but not acknowledged when the child died (`Some(None)`: a deletion).
    pending: Option<Option<String>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut state: HashMap<u64, Option<String>> = HashMap::new();
    let mut rng = StdRng::seed_from_u64(7);
    let mut acknowledged = 0;
    for round in 0..6u64 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD, format!("{}|{round}", dir.path().display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<String>>()
        });
        // Let it write for a while (it reports its first acknowledgement quickly).
        std::thread::sleep(Duration::from_millis(rng.random_range(150..600)));
        child.kill().unwrap();
        child.wait().unwrap();
        let lines = reader.join().unwrap();

        let mut keys: HashMap<u64, KeyState> = state
            .iter()
            .map(|(k, v)| {
                (
                    *k,
                    KeyState {
                        acked: v.clone(),
                        pending: None,
                    },
                )
            })
            .collect();
        for line in &lines {
            // A line cut by the kill has no value and reports nothing acknowledged.
            let Some(line) = line.strip_prefix('@') else {
                continue;
            };
            let mut parts = line.split(' ');
            let (Some(event), Some(key), Some(value)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let key: u64 = key.parse().unwrap();
            let value = (value != "-").then(|| value.to_owned());
            let entry = keys.entry(key).or_default();
            match event {
                "B" => entry.pending = Some(value),
                "A" => {
                    acknowledged += 1;
                    entry.acked = value;
                    entry.pending = None;
                }
                _ => {}
            }
        }

        let db = open(dir.path()).await;
        let table = db.table("kv");
        for key in 0..KEYS {
            let got = match &table {
                Ok(table) => table
                    .get_value(key)
                    .await
                    .unwrap()
                    .map(|v| String::from_utf8(v.to_vec()).unwrap()),
                Err(_) => None,
            };
            let expected = keys.get(&key).cloned().unwrap_or_default();
            let allowed =
                got == expected.acked || expected.pending.as_ref().is_some_and(|p| &got == p);
            assert!(
                allowed,
                "round {round} key {key}: found {got:?}, acknowledged {:?}, in flight {:?}",
                expected.acked, expected.pending
            );
            state.insert(key, got);
        }
        db.close().await.unwrap();
    }
    assert!(
        acknowledged > 100,
        "only {acknowledged} writes were acknowledged"
    );
}
