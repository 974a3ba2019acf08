//! `omendb-bench wal`: group-commit throughput and latency of the local write-ahead log for 1 to
//! 256 concurrent appenders, 100-byte and 4 KiB records, `Durable` and `Buffered` appends, next
//! to the measured `fdatasync` latency of the same file system; and recovery speed.
//!
//! `fdatasync` is probed two ways, because on ext4 they differ by a fifth or more: `fsync_us`
//! appends 100 bytes to a growing file (each sync also commits the new size), and
//! `fsync_overwrite_us` writes 100 bytes into a file already zero-filled, which is what the log
//! does (see `docs/wal.md`). The ideal `writers / fsync latency` is honest only against the
//! cheaper of the two.
//!
//! Every row is checked before it is printed: the log is reopened (recovery verifies every
//! checksum), the record count must equal the acknowledged appends, LSNs must run 1..=n without a
//! gap, and the sum of the ids embedded in the payloads must equal the sum of the ids appended.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use omendb_wal::{AppendOptions, FileWal, SyncPolicy, Wal, WalOptions};
use serde::Serialize;

use crate::report::{self, Report, percentile};

/// Arguments of `omendb-bench wal`.
#[derive(Parser, Debug)]
pub(crate) struct Args {
    /// Concurrent appenders, comma-separated.
    #[arg(long, default_value = "1,8,64,256", value_delimiter = ',')]
    writers: Vec<usize>,
    /// Record payload sizes in bytes, comma-separated.
    #[arg(long, default_value = "100,4096", value_delimiter = ',')]
    record_bytes: Vec<usize>,
    /// Durabilities to run: durable, buffered (comma-separated).
    #[arg(long, default_value = "durable,buffered", value_delimiter = ',')]
    durability: Vec<String>,
    /// Seconds each row appends for.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Bytes of log written for the recovery row (0 skips it).
    #[arg(long, default_value_t = 1 << 30)]
    recovery_bytes: u64,
    /// Run each appender on its own OS thread instead of as a tokio task.
    #[arg(long)]
    threads: bool,
    /// Directory on the file system to measure (a fresh subdirectory is used and removed).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print one JSON object per row instead of a table.
    #[arg(long)]
    json: bool,
}

/// One row of the output contract in `shared/design/PERFORMANCE.md`.
#[derive(Serialize)]
struct Row {
    writers: usize,
    record_bytes: usize,
    durability: String,
    appends_per_s: f64,
    mb_per_s: f64,
    avg_group: f64,
    p50_us: f64,
    p99_us: f64,
    fsync_us: f64,
    fsync_overwrite_us: f64,
}

/// Runs the benchmark.
pub(crate) fn run(args: &Args) -> Result<()> {
    let mut report = Report::new(args.json);
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let root = parent.join(format!("omendb-wal-bench-{}", std::process::id()));
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let result = run_in(args, &root, &mut report);
    let _ = std::fs::remove_dir_all(&root);
    result
}

fn run_in(args: &Args, root: &Path, report: &mut Report) -> Result<()> {
    report.note(&format!("machine: {}", report::machine()));
    let fsync_us = fdatasync_us(root, 200, Probe::Append)?;
    let fsync_overwrite_us = fdatasync_us(root, 200, Probe::Overwrite)?;
    report.note(&format!(
        "fdatasync of a 100-byte write in {}: median {fsync_us:.1} us appending, \
         {fsync_overwrite_us:.1} us over zeros (each row re-measures both just before it runs, \
         since a shared disk's latency drifts)",
        root.display()
    ));
    let durations = Duration::from_secs_f64(args.seconds);
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    report.note(if args.threads {
        "appenders: one OS thread each, blocking appends"
    } else {
        "appenders: tokio tasks on a multi-thread runtime with one worker per core"
    });
    for durability in &args.durability {
        let options = match durability.as_str() {
            "durable" => AppendOptions::DURABLE,
            "buffered" => AppendOptions::BUFFERED,
            other => bail!("unknown durability {other:?} (durable, buffered)"),
        };
        for &record_bytes in &args.record_bytes {
            ensure!(record_bytes >= 8, "records must hold an 8-byte id");
            for &writers in &args.writers {
                let dir = root.join(format!("{durability}-{record_bytes}-{writers}"));
                let fsync_us = fdatasync_us(root, 100, Probe::Append)?;
                let fsync_overwrite_us = fdatasync_us(root, 100, Probe::Overwrite)?;
                let row = if args.threads {
                    append_row_threads(&dir, writers, record_bytes, options, durations)?
                } else {
                    runtime.block_on(append_row_tasks(
                        &dir,
                        writers,
                        record_bytes,
                        options,
                        durations,
                    ))?
                };
                std::fs::remove_dir_all(&dir).ok();
                report.row(&Row {
                    writers,
                    record_bytes,
                    durability: durability.clone(),
                    appends_per_s: row.appends_per_s,
                    mb_per_s: row.appends_per_s * record_bytes as f64 / 1e6,
                    avg_group: row.avg_group,
                    p50_us: row.p50_us,
                    p99_us: row.p99_us,
                    fsync_us,
                    fsync_overwrite_us,
                })?;
            }
        }
    }
    if args.recovery_bytes > 0 {
        let dir = root.join("recovery");
        let rows = recovery_rows(&dir, args.recovery_bytes);
        std::fs::remove_dir_all(&dir).ok();
        report.note(
            "recovery rows: open() reading and verifying every record; MB/s of log bytes; \
             recovery-cold first, the log's pages dropped from the page cache (as after a \
             restart), then recovery-warm, read from the cache",
        );
        for (durability, (records_per_s, mb_per_s)) in rows? {
            report.row(&Row {
                writers: 0,
                record_bytes: 4096,
                durability: durability.to_owned(),
                appends_per_s: records_per_s,
                mb_per_s,
                avg_group: 0.0,
                p50_us: 0.0,
                p99_us: 0.0,
                fsync_us,
                fsync_overwrite_us,
            })?;
        }
    }
    Ok(())
}

/// Where the `fdatasync` probe writes.
#[derive(Clone, Copy)]
enum Probe {
    /// At the end of the file, growing it.
    Append,
    /// Into a file zero-filled (and synced) beforehand, inside its length.
    Overwrite,
}

/// The median latency of writing 100 bytes after the previous ones and `fdatasync`ing them, in
/// `dir`, over `samples` tries.
fn fdatasync_us(dir: &Path, samples: usize, probe: Probe) -> Result<f64> {
    use std::os::unix::fs::FileExt;
    let path = dir.join("fsync-probe");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    const RECORD: usize = 100;
    if let Probe::Overwrite = probe {
        file.write_all_at(&vec![0u8; samples * RECORD], 0)?;
        file.sync_all()?;
    }
    let tries = samples;
    let mut samples = Vec::with_capacity(tries);
    for i in 0..tries {
        let start = Instant::now();
        file.write_all_at(&[7u8; RECORD], (i * RECORD) as u64)?;
        file.sync_data()?;
        samples.push(start.elapsed().as_secs_f64() * 1e6);
    }
    std::fs::remove_file(&path).ok();
    Ok(percentile(&mut samples, 0.5))
}

struct Measured {
    appends_per_s: f64,
    avg_group: f64,
    p50_us: f64,
    p99_us: f64,
}

fn append_row_threads(
    dir: &Path,
    writers: usize,
    record_bytes: usize,
    options: AppendOptions,
    duration: Duration,
) -> Result<Measured> {
    let wal = Arc::new(FileWal::open(dir, WalOptions::default())?);
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let wal = wal.clone();
            let stop = stop.clone();
            std::thread::spawn(move || -> Result<(Vec<f64>, u64, u64)> {
                let mut payload = vec![0xA5u8; record_bytes];
                let mut latencies = Vec::new();
                let mut ids = 0u64;
                let mut count = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let id = ((w as u64) << 40) | count;
                    payload[..8].copy_from_slice(&id.to_le_bytes());
                    let t = Instant::now();
                    wal.append(&payload, options)?;
                    latencies.push(t.elapsed().as_secs_f64() * 1e6);
                    ids = ids.wrapping_add(id);
                    count += 1;
                }
                Ok((latencies, ids, count))
            })
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut ids = 0u64;
    let mut count = 0u64;
    for thread in threads {
        let (mine, my_ids, my_count) = thread
            .join()
            .map_err(|_| anyhow::anyhow!("appender panicked"))??;
        latencies.extend(mine);
        ids = ids.wrapping_add(my_ids);
        count += my_count;
    }
    finish(wal, dir, start, latencies, ids, count)
}

async fn append_row_tasks(
    dir: &Path,
    writers: usize,
    record_bytes: usize,
    options: AppendOptions,
    duration: Duration,
) -> Result<Measured> {
    let wal = Arc::new(FileWal::open(dir, WalOptions::default())?);
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let wal = wal.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut payload = vec![0xA5u8; record_bytes];
                let mut latencies = Vec::new();
                let mut ids = 0u64;
                let mut count = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let id = ((w as u64) << 40) | count;
                    payload[..8].copy_from_slice(&id.to_le_bytes());
                    let t = Instant::now();
                    Wal::append(wal.as_ref(), &payload, options).await?;
                    latencies.push(t.elapsed().as_secs_f64() * 1e6);
                    ids = ids.wrapping_add(id);
                    count += 1;
                    if count.is_multiple_of(1024) {
                        // Buffered appends never wait; let the stop flag's setter run.
                        tokio::task::yield_now().await;
                    }
                }
                Ok::<_, anyhow::Error>((latencies, ids, count))
            })
        })
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut ids = 0u64;
    let mut count = 0u64;
    for task in tasks {
        let (mine, my_ids, my_count) = task.await??;
        latencies.extend(mine);
        ids = ids.wrapping_add(my_ids);
        count += my_count;
    }
    finish(wal, dir, start, latencies, ids, count)
}

/// Closes the log, checks it, and computes the row's figures.
fn finish(
    wal: Arc<FileWal>,
    dir: &Path,
    start: Instant,
    mut latencies: Vec<f64>,
    ids: u64,
    count: u64,
) -> Result<Measured> {
    wal.close()?;
    // Timed through the close, which writes and syncs what buffered appends left queued (up
    // to `max_buffered_bytes`): until then their work is not done.
    let elapsed = start.elapsed().as_secs_f64();
    let stats = Wal::stats(wal.as_ref());
    drop(wal);
    verify(dir, count, ids)?;
    Ok(Measured {
        appends_per_s: count as f64 / elapsed,
        avg_group: stats.appends as f64 / stats.batches.max(1) as f64,
        p50_us: percentile(&mut latencies, 0.5),
        p99_us: percentile(&mut latencies, 0.99),
    })
}

/// Reopens the log and checks it holds exactly the acknowledged appends.
fn verify(dir: &Path, count: u64, ids: u64) -> Result<()> {
    let wal = FileWal::open(dir, WalOptions::default())?;
    let report = Wal::recovery_report(&wal);
    ensure!(
        report.records == count,
        "recovered {} records, appended {count}",
        report.records
    );
    ensure!(
        report.torn_tail.is_none(),
        "a cleanly closed log has a torn tail"
    );
    let mut sum = 0u64;
    let mut expected_lsn = 1;
    for record in wal.reader(1)? {
        let record = record?;
        ensure!(
            record.lsn == expected_lsn,
            "LSN {} where {expected_lsn} was due",
            record.lsn
        );
        let mut id = [0u8; 8];
        id.copy_from_slice(&record.payload[..8]);
        sum = sum.wrapping_add(u64::from_le_bytes(id));
        expected_lsn += 1;
    }
    ensure!(
        expected_lsn - 1 == count,
        "read {} records, appended {count}",
        expected_lsn - 1
    );
    ensure!(sum == ids, "payload checksum mismatch");
    Ok(())
}

/// Writes `bytes` of 4 KiB records, then times reopening (which reads and verifies all of it)
/// twice: with the log's pages dropped from the page cache, as after a restart, and from the
/// cache. (Until the twenty-eighth session only the second was timed, and reported as the
/// recovery speed.)
fn recovery_rows(dir: &Path, bytes: u64) -> Result<[(&'static str, (f64, f64)); 2]> {
    let options = WalOptions::default().sync_policy(SyncPolicy::Never);
    let records = bytes / 4096;
    {
        let wal = FileWal::open(dir, options.clone())?;
        let payload = vec![0x5Au8; 4096];
        for _ in 0..records {
            wal.append(&payload, AppendOptions::BUFFERED)?;
        }
        wal.close()?;
    }
    let reopen = || -> Result<(f64, f64)> {
        let start = Instant::now();
        let wal = FileWal::open(dir, options.clone())?;
        let elapsed = start.elapsed().as_secs_f64();
        let report = Wal::recovery_report(&wal);
        ensure!(
            report.records == records,
            "recovered {} of {records} records",
            report.records
        );
        wal.close()?;
        Ok((
            records as f64 / elapsed,
            report.bytes_read as f64 / 1e6 / elapsed,
        ))
    };
    drop_cached_pages(dir)?;
    let cold = reopen()?;
    let warm = reopen()?;
    Ok([("recovery-cold", cold), ("recovery-warm", warm)])
}

/// Writes back and drops from the page cache every file under `dir` (`fdatasync`, then
/// `POSIX_FADV_DONTNEED`): the next read of them comes from the device, as after a restart,
/// without dropping the whole machine's caches.
fn drop_cached_pages(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if !path.is_file() {
            continue;
        }
        let file = std::fs::File::open(&path)?;
        file.sync_data()?;
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).map_err(|err| {
            anyhow::anyhow!("dropping {} from the page cache: {err}", path.display())
        })?;
    }
    Ok(())
}
