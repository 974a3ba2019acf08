//! The workloads of `omendb-bench db`, written once for every [`Engine`]: bulk load, warm
//! `get` and `multi_get`, 100-row scans, time-series append and aggregate, YCSB-A/B/E-shaped
//! mixes, reopen and cold reads, and the footprint. Every answer is checked; a wrong one aborts
//! the engine's run with no figure.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use omendb_core::keygen;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::engine::{Engine, Settings, Value};
use super::{Args, Data, Footprint, Row, check, dir_bytes, mix, us};
use crate::report::{self, Report, median};

/// Rows of a `scan100` scan, and the most of a `ycsb_e` scan.
const SCAN_ROWS: usize = 100;

/// Runs every workload on engine `E` in `root`, printing rows as they are measured.
pub(crate) async fn run<E: Engine>(
    args: &Args,
    settings: Settings,
    mut data: Data,
    root: &std::path::Path,
    report: &mut Report,
) -> Result<()> {
    report.note(&format!("{}: {}", E::NAME, E::describe(&settings)));
    let engine = Arc::new(E::open(root, settings).await?);
    let n = args.keys;

    load(&*engine, &data, args, report).await?;
    get(&*engine, &data, args, report, "get").await?;
    scan100(&*engine, &data, args, report).await?;
    time_series(&*engine, &data, args, report).await?;
    let mut version = 0u8;
    for (workload, read_fraction) in [("ycsb_a", 0.5), ("ycsb_b", 0.95)] {
        for &clients in &args.clients {
            version = version.checked_add(1).context("too many mixed rows")?;
            data = mixed(
                &engine,
                data,
                workload,
                read_fraction,
                clients,
                version,
                args,
                report,
            )
            .await?;
        }
    }
    version = version.checked_add(1).context("too many mixed rows")?;
    data = ycsb_e(&*engine, data, version, args, report).await?;

    // reopen, then cold reads
    let engine = Arc::try_unwrap(engine)
        .map_err(|_| anyhow::anyhow!("a client task still holds the engine"))?;
    let start = Instant::now();
    let reopened = engine.reopen(root).await?;
    let mut open_us = vec![us(start)];
    match reopened {
        Some(engine) => {
            if let Some(note) = engine.recovery_note() {
                report.note(&format!("{}: reopen: {note}", E::NAME));
            }
            report.row(&Row::new(
                E::NAME,
                "reopen",
                n,
                1,
                1,
                open_us[0] / 1e6,
                &mut open_us,
            ))?;
            get(&engine, &data, args, report, "get_cold").await?;
            engine.close().await?;
        }
        None => report.note(&format!(
            "{}: keeps nothing on disk: no reopen or get_cold rows",
            E::NAME
        )),
    }
    let mut footprint = Report::new(args.json);
    footprint.row(&Footprint {
        engine: E::NAME.to_owned(),
        workload: "footprint".to_owned(),
        keys: n,
        peak_rss_mb: report::peak_rss_mb().unwrap_or(0.0),
        disk_bytes: dir_bytes(root)?,
    })?;
    Ok(())
}

/// Starts one client of a mixed row: a task for an asynchronous engine, a thread of its own
/// (from the runtime's blocking pool) for a synchronous one, whose calls hold their thread.
fn spawn_client<E: Engine, T: Send + 'static>(
    client: impl std::future::Future<Output = T> + Send + 'static,
) -> tokio::task::JoinHandle<T> {
    if E::ASYNC {
        tokio::spawn(client)
    } else {
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || runtime.block_on(client))
    }
}

/// Bulk load: every key in random order, `batch_rows` per batch, timed until the last batch is
/// acknowledged; then the engine's background work settles (not timed).
async fn load<E: Engine>(engine: &E, data: &Data, args: &Args, report: &mut Report) -> Result<()> {
    let mut order: Vec<u64> = data.keys.as_ref().clone();
    let mut rng = StdRng::seed_from_u64(data.seed ^ 0x10AD);
    for i in (1..order.len()).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    let mut latencies = Vec::with_capacity(order.len().div_ceil(args.batch_rows));
    let start = Instant::now();
    for chunk in order.chunks(args.batch_rows) {
        let rows: Vec<(u64, Value)> = chunk.iter().map(|&k| (k, data.value(k, 0))).collect();
        let one = Instant::now();
        engine.put_batch(&rows).await?;
        latencies.push(us(one));
    }
    let seconds = start.elapsed().as_secs_f64();
    drop(order);
    let settled = engine.settle().await?;
    report.note(&format!(
        "{}: load: {seconds:.2} s until the last batch was acknowledged; {settled}",
        E::NAME
    ));
    report.row(&Row::new(
        E::NAME,
        "load",
        args.keys,
        1,
        args.keys,
        seconds,
        &mut latencies,
    ))
}

/// Point reads (`get`) and batched ones (`multi_get`) of the same lookups, on one task. Warm
/// (`workload` "get") runs an untimed checking pass first; cold ("get_cold", right after a
/// reopen) times the first pass and skips `multi_get`.
async fn get<E: Engine>(
    engine: &E,
    data: &Data,
    args: &Args,
    report: &mut Report,
    workload: &'static str,
) -> Result<()> {
    let lookups = keygen::lookups(&data.keys, args.lookups, args.absent, data.seed);
    let expected: Vec<Option<Value>> = lookups.iter().map(|&k| data.expected(k)).collect();
    let warm = workload == "get";
    if warm {
        for (&key, want) in lookups.iter().zip(&expected) {
            let got = engine.get(key).await?;
            check(
                workload,
                key,
                got.as_ref().map(AsRef::as_ref),
                want.as_ref(),
            )?;
        }
    }
    let mut latencies = Vec::with_capacity(lookups.len());
    let start = Instant::now();
    for (&key, want) in lookups.iter().zip(&expected) {
        let one = Instant::now();
        let got = engine.get(key).await?;
        latencies.push(us(one));
        check(
            workload,
            key,
            got.as_ref().map(AsRef::as_ref),
            want.as_ref(),
        )?;
    }
    let seconds = start.elapsed().as_secs_f64();
    report.row(&Row::new(
        E::NAME,
        workload,
        args.keys,
        1,
        lookups.len(),
        seconds,
        &mut latencies,
    ))?;
    if !warm {
        return Ok(());
    }

    let mut latencies = Vec::with_capacity(lookups.len().div_ceil(args.multi_get_keys));
    let start = Instant::now();
    for (keys, wants) in lookups
        .chunks(args.multi_get_keys)
        .zip(expected.chunks(args.multi_get_keys))
    {
        let one = Instant::now();
        let got = engine.multi_get(keys).await?;
        latencies.push(us(one));
        ensure!(
            got.len() == keys.len(),
            "multi_get: {} answers for {} keys; no figure reported",
            got.len(),
            keys.len()
        );
        for ((&key, want), got) in keys.iter().zip(wants).zip(&got) {
            check(
                "multi_get",
                key,
                got.as_ref().map(AsRef::as_ref),
                want.as_ref(),
            )?;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    report.note(&format!(
        "{}: multi_get: {:.0} ns per key, {} keys per call",
        E::NAME,
        seconds * 1e9 / lookups.len() as f64,
        args.multi_get_keys
    ));
    report.row(&Row::new(
        E::NAME,
        "multi_get",
        args.keys,
        1,
        lookups.len(),
        seconds,
        &mut latencies,
    ))
}

/// One scan of up to `limit` rows from position `first` of the stored keys, every row's key and
/// value checked against `data`.
async fn checked_scan<E: Engine>(
    engine: &E,
    data: &Data,
    first: usize,
    limit: usize,
    workload: &str,
) -> Result<()> {
    let from = data.keys[first];
    let mut rows = 0;
    let mut wrong = None;
    engine
        .scan(from, limit, &mut |key, value| {
            let want = data.expected_at(first + rows);
            let want_key = want.map(|(k, _)| k);
            if Some(key) != want_key {
                bail!(
                    "{workload}: WRONG ANSWER: row {rows} of the scan from {from} is key {key}, \
                     expected {want_key:?}; no figure reported"
                );
            }
            let want_value = want.map(|(_, v)| v);
            if let Err(e) = check(workload, key, Some(value), want_value.as_ref()) {
                wrong.get_or_insert(e);
            }
            rows += 1;
            Ok(())
        })
        .await?;
    if let Some(e) = wrong {
        return Err(e);
    }
    let want_rows = limit.min(data.keys.len() - first);
    ensure!(
        rows == want_rows,
        "{workload}: WRONG ANSWER: the scan from {from} returned {rows} rows, expected \
         {want_rows}; no figure reported"
    );
    Ok(())
}

/// Scans of 100 rows from uniformly chosen stored keys, on one task.
async fn scan100<E: Engine>(
    engine: &E,
    data: &Data,
    args: &Args,
    report: &mut Report,
) -> Result<()> {
    let n = data.keys.len();
    let mut rng = StdRng::seed_from_u64(data.seed ^ 0x5CA7);
    let starts: Vec<usize> = (0..args.scans).map(|_| rng.random_range(0..n)).collect();
    let mut latencies = Vec::with_capacity(starts.len());
    let start = Instant::now();
    for &first in &starts {
        let one = Instant::now();
        checked_scan(engine, data, first, SCAN_ROWS, "scan100").await?;
        latencies.push(us(one));
    }
    let seconds = start.elapsed().as_secs_f64();
    report.row(&Row::new(
        E::NAME,
        "scan100",
        args.keys,
        1,
        starts.len(),
        seconds,
        &mut latencies,
    ))
}

/// Time series: `ts_rows` rows appended in key order (`ts_append`, rows/s), then the sum of
/// their values over the whole range (`ts_aggregate`, rows aggregated per second at the median
/// of `runs` aggregates).
async fn time_series<E: Engine>(
    engine: &E,
    data: &Data,
    args: &Args,
    report: &mut Report,
) -> Result<()> {
    let mut latencies = Vec::with_capacity(args.ts_rows.div_ceil(args.batch_rows));
    let start = Instant::now();
    let mut next = 0;
    while next < args.ts_rows {
        let end = (next + args.batch_rows).min(args.ts_rows);
        let rows: Vec<(i64, f64)> = (next..end).map(|i| data.ts_row(i)).collect();
        let one = Instant::now();
        engine.ts_append(&rows).await?;
        latencies.push(us(one));
        next = end;
    }
    let seconds = start.elapsed().as_secs_f64();
    let settled = engine.settle().await?;
    report.note(&format!(
        "{}: ts_append: {} rows in key order, {} per batch; {settled}",
        E::NAME,
        args.ts_rows,
        args.batch_rows
    ));
    report.row(&Row::new(
        E::NAME,
        "ts_append",
        args.ts_rows,
        1,
        args.ts_rows,
        seconds,
        &mut latencies,
    ))?;

    let (first, _) = data.ts_row(0);
    let (last, _) = data.ts_row(args.ts_rows - 1);
    // Small integers sum exactly in f64 in any order, so every engine's sum must match exactly.
    let expected = (0..args.ts_rows)
        .map(|i| data.ts_row(i).1 as u64)
        .sum::<u64>() as f64;
    let mut times = Vec::with_capacity(args.runs);
    for _ in 0..args.runs {
        let one = Instant::now();
        let sum = engine.ts_sum(first, last).await?;
        times.push(us(one));
        ensure!(
            sum == expected,
            "ts_aggregate: WRONG ANSWER: sum {sum}, expected {expected}; no figure reported"
        );
    }
    let p50 = median(&mut times);
    report.note(&format!(
        "{}: ts_aggregate: sum over all {} rows, {:.1} ms at the median of {} runs; ops_per_s \
         counts rows aggregated",
        E::NAME,
        args.ts_rows,
        p50 / 1e3,
        args.runs
    ));
    report.row(&Row::new(
        E::NAME,
        "ts_aggregate",
        args.ts_rows,
        1,
        args.ts_rows,
        p50 / 1e6,
        &mut times,
    ))
}

/// YCSB-A's (50% reads) or YCSB-B's (95% reads) shape: gets and updates of uniformly chosen
/// stored keys by `clients` concurrent tasks. Updates write version `version`; a read must see
/// the key's version before this row or `version`. Returns the data with the updated keys'
/// versions.
#[allow(clippy::too_many_arguments)] // one row's parameters, named at the one call
async fn mixed<E: Engine>(
    engine: &Arc<E>,
    data: Data,
    workload: &'static str,
    read_fraction: f64,
    clients: usize,
    version: u8,
    args: &Args,
    report: &mut Report,
) -> Result<Data> {
    let n = data.keys.len();
    let per_client = args.mixed_ops.div_ceil(clients);
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let engine = Arc::clone(engine);
            let data = data.clone();
            let seed = mix(data.seed ^ (u64::from(version) << 32) ^ client as u64);
            spawn_client::<E, _>(async move {
                let mut rng = StdRng::seed_from_u64(seed);
                let mut latencies = Vec::with_capacity(per_client);
                let mut updated = Vec::new();
                // Keys this client updated: a read of one must see its update (another
                // client's update of it writes the same version).
                let mut mine = std::collections::HashSet::new();
                for _ in 0..per_client {
                    let at = rng.random_range(0..n);
                    let key = data.keys[at];
                    let new = data.value(key, version);
                    let one = Instant::now();
                    if rng.random_bool(read_fraction) {
                        let got = engine.get(key).await?;
                        latencies.push(us(one));
                        let got = got.as_ref().map(AsRef::as_ref);
                        if got != Some(&new[..]) {
                            let want = if mine.contains(&at) {
                                new
                            } else {
                                data.value(key, data.versions[at])
                            };
                            check(workload, key, got, Some(&want))?;
                        }
                    } else {
                        engine.put(key, &new).await?;
                        latencies.push(us(one));
                        updated.push(at);
                        mine.insert(at);
                    }
                }
                Ok::<_, anyhow::Error>((latencies, updated))
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(per_client * clients);
    let mut versions = data.versions.as_ref().clone();
    for task in tasks {
        let (mine, updated) = task.await.context("a mixed client task failed")??;
        latencies.extend(mine);
        for at in updated {
            versions[at] = version;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let ops = latencies.len();
    report.row(&Row::new(
        E::NAME,
        workload,
        n,
        clients,
        ops,
        seconds,
        &mut latencies,
    ))?;
    Ok(Data {
        versions: Arc::new(versions),
        ..data
    })
}

/// YCSB-E's shape on one task: 95% scans of 1 to 100 rows from uniformly chosen stored keys,
/// 5% updates (YCSB-E inserts new keys; updates keep the key set fixed, so every scan stays
/// checkable). Returns the data with the updated keys' versions.
async fn ycsb_e<E: Engine>(
    engine: &E,
    mut data: Data,
    version: u8,
    args: &Args,
    report: &mut Report,
) -> Result<Data> {
    let n = data.keys.len();
    let ops = args.scans;
    let mut rng = StdRng::seed_from_u64(mix(data.seed ^ 0xE5CA ^ u64::from(version)));
    let mut latencies = Vec::with_capacity(ops);
    let start = Instant::now();
    for _ in 0..ops {
        let at = rng.random_range(0..n);
        if rng.random_bool(0.95) {
            let limit = rng.random_range(1..=SCAN_ROWS);
            let one = Instant::now();
            checked_scan(engine, &data, at, limit, "ycsb_e").await?;
            latencies.push(us(one));
        } else {
            let key = data.keys[at];
            let one = Instant::now();
            engine.put(key, &data.value(key, version)).await?;
            latencies.push(us(one));
            // The mixed rows' clients are gone, so this is the only handle: no copy.
            Arc::make_mut(&mut data.versions)[at] = version;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    report.row(&Row::new(
        E::NAME,
        "ycsb_e",
        n,
        1,
        ops,
        seconds,
        &mut latencies,
    ))?;
    Ok(data)
}
