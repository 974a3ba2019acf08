//! `omendb-bench index`: point lookups of the learned-index family against `partition_point` and
//! `BTreeMap` on the same sorted array, plus a measured DRAM floor.
//!
//! Every index's answers are compared with `partition_point`'s one by one before it is timed, and
//! every timed pass's sum of positions is compared with the expected sum; a mismatch aborts the
//! run before any figure for that index is printed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use omendb_core::index::{AnyIndex, IndexPolicy, KindChoice, LearnedIndex, Pla, Rmi};
use omendb_core::keygen::{self, Dist};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

use crate::report::{self, Report, median};

/// Arguments of `omendb-bench index`.
#[derive(Parser, Debug)]
pub(crate) struct Args {
    /// Number of keys to generate.
    #[arg(long, default_value_t = 10_000_000)]
    keys: usize,
    /// Key distribution: seq, bursty, uniform, lognormal, clustered, outliers, steps, or all.
    #[arg(long, default_value = "all")]
    dist: String,
    /// Read the keys from a file in SOSD's format (u64 count, then sorted u64 keys, little-endian)
    /// instead of generating them.
    #[arg(long, conflicts_with = "dist")]
    keys_file: Option<PathBuf>,
    /// Number of lookups per timed pass.
    #[arg(long, default_value_t = 10_000_000)]
    lookups: usize,
    /// Fraction of lookups for keys that are not in the set.
    #[arg(long, default_value_t = 0.1)]
    absent: f64,
    /// Timed rounds, each one pass of every index in turn; each index's median is reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Seed of the key and lookup generators.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Index memory budget as a fraction of the key array's bytes.
    #[arg(long, default_value_t = 0.02)]
    budget: f64,
    /// Print one JSON object per row instead of a table.
    #[arg(long)]
    json: bool,
}

/// One row of the output contract in `shared/design/PERFORMANCE.md`.
#[derive(Serialize)]
struct Row {
    dist: String,
    keys: usize,
    index: String,
    ns_per_lookup: f64,
    /// `partition_point`'s ns per lookup divided by this row's: above 1 means faster.
    vs_binary_search: f64,
    /// `BTreeMap`'s ns per lookup divided by this row's: above 1 means faster.
    vs_btreemap: f64,
    index_bytes: usize,
    build_ms: f64,
    checksum_ok: bool,
}

/// Runs the benchmark for every data set the arguments name.
pub(crate) fn run(args: &Args) -> Result<()> {
    ensure!(args.runs > 0, "--runs must be at least 1");
    ensure!(args.lookups > 0, "--lookups must be at least 1");
    ensure!(
        (0.0..=1.0).contains(&args.absent),
        "--absent must be within 0..=1"
    );
    let mut report = Report::new(args.json);
    report.note(&format!("machine: {}", report::machine()));
    report.note(&format!(
        "{} lookups per pass ({:.0}% absent), median of {} passes, index budget {:.1}% of key bytes",
        args.lookups,
        args.absent * 100.0,
        args.runs,
        args.budget * 100.0
    ));
    if let Some(path) = &args.keys_file {
        let keys = read_sosd(path)?;
        let name = path
            .file_name()
            .map_or_else(|| "file".to_owned(), |n| n.to_string_lossy().into_owned());
        return bench_keys(&name, &keys, args, &mut report);
    }
    let dists: Vec<Dist> = if args.dist == "all" {
        Dist::ALL.to_vec()
    } else {
        args.dist
            .split(',')
            .map(|d| d.parse::<Dist>())
            .collect::<Result<_, _>>()?
    };
    for dist in dists {
        report.note(&format!(
            "generating {} {dist} keys (seed {})",
            args.keys, args.seed
        ));
        let keys = dist.generate(args.keys, args.seed);
        bench_keys(dist.name(), &keys, args, &mut report)?;
    }
    Ok(())
}

/// Reads a key file in SOSD's binary format, refusing truncated or unsorted ones.
fn read_sosd(path: &Path) -> Result<Vec<u64>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    ensure!(
        bytes.len() >= 8,
        "{}: {} bytes is too short for SOSD's 8-byte key count",
        path.display(),
        bytes.len()
    );
    let (count, body) = bytes.split_at(8);
    let mut count_bytes = [0u8; 8];
    count_bytes.copy_from_slice(count);
    let count = u64::from_le_bytes(count_bytes);
    let expected = count.checked_mul(8).context("key count overflows")?;
    ensure!(
        body.len() as u64 == expected,
        "{}: header says {count} keys ({expected} bytes) but {} bytes follow: truncated or not a SOSD file",
        path.display(),
        body.len()
    );
    let keys: Vec<u64> = body
        .chunks_exact(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            u64::from_le_bytes(b)
        })
        .collect();
    if let Some(at) = keys.windows(2).position(|w| w[0] > w[1]) {
        bail!(
            "{}: keys are not sorted: key {} at position {} is smaller than {} before it",
            path.display(),
            keys[at + 1],
            at + 1,
            keys[at]
        );
    }
    Ok(keys)
}

/// Measures every index on one key array.
///
/// Every contender is built and verified first, then timed in interleaved rounds: each round
/// times one pass of every contender, starting one further along the list than the last round.
/// Timing each contender's passes back to back let a slow stretch of the machine (a noisy
/// neighbour on a VM, a frequency change) land on one contender and skew its ratio.
fn bench_keys(dist: &str, keys: &[u64], args: &Args, report: &mut Report) -> Result<()> {
    ensure!(!keys.is_empty(), "{dist}: no keys to look up");
    let queries = keygen::lookups(keys, args.lookups, args.absent, args.seed);
    let expected: Vec<usize> = queries
        .iter()
        .map(|&q| keys.partition_point(|&k| k < q))
        .collect();
    let expected_sum = checksum(&expected);
    let bench = Bench {
        dist,
        keys,
        queries: &queries,
        expected: &expected,
        expected_sum,
    };
    let n = keys.len();

    let btree_start = Instant::now();
    // Built from the sorted pairs in one pass (each equal key's first position, as a lower bound
    // would give): `collect` bulk-loads full nodes. Inserting keys one by one in order left
    // nodes about half full and the tree two levels deeper, a slower baseline than a user's
    // bulk-loaded map (until the twenty-eighth session).
    let map: BTreeMap<u64, usize> = keys
        .iter()
        .enumerate()
        .filter(|&(i, &k)| i == 0 || keys[i - 1] != k)
        .map(|(i, &k)| (k, i))
        .collect();
    let btree_build = ms(btree_start);

    let budget = IndexPolicy {
        memory_fraction: args.budget,
        ..IndexPolicy::default()
    };
    let bytes = budget.budget_bytes(n);
    let start = Instant::now();
    let rmi = Rmi::build(keys, bytes)?;
    let rmi_build = ms(start);
    let start = Instant::now();
    let pla = Pla::build(keys, bytes)?;
    let pla_build = ms(start);
    let start = Instant::now();
    let auto = AnyIndex::build(
        keys,
        &IndexPolicy {
            kind: KindChoice::Auto,
            ..budget
        },
    )?;
    let auto_build = ms(start);
    report.note(&format!(
        "{dist}: rmi {} leaves, mean window {:.1}, cost {:.2}; pla eps {}, {} segments, radix bits {}, window {}, cost {:.2}; auto chose {}",
        rmi.leaf_count(),
        rmi.stats().mean_window,
        rmi.stats().expected_cost,
        pla.epsilon(),
        pla.segment_count(),
        pla.radix_bits(),
        pla.stats().max_window,
        pla.stats().expected_cost,
        auto.kind()
    ));
    let floor = DramFloor::new(n, args.lookups, args.seed);

    let binary = |q: u64| keys.partition_point(|&k| k < q);
    let btree = |q: u64| map.range(q..).next().map_or(n, |(_, &p)| p);
    let rmi_one = |q: u64| rmi.lower_bound(keys, q);
    let pla_one = |q: u64| pla.lower_bound(keys, q);
    let auto_one = |q: u64| auto.lower_bound(keys, q);
    bench.verify("binary_search", binary)?;
    bench.verify("btreemap", btree)?;
    bench.verify("rmi", rmi_one)?;
    bench.verify("pla", pla_one)?;
    bench.verify("auto", auto_one)?;
    for (name, index) in [
        ("rmi-batch", &rmi as &dyn LearnedIndex),
        ("pla-batch", &pla),
        ("auto-batch", &auto),
    ] {
        bench.verify_batch(name, index)?;
    }

    // Each contender's pass is its own closure, so the single-lookup loops stay monomorphic
    // (the lookup inlined into the timed loop) as they were when timed one after another.
    let mut contenders: Vec<(&str, Pass<'_>)> = vec![
        (
            "binary_search",
            Box::new(|| bench.pass("binary_search", binary)),
        ),
        ("btreemap", Box::new(|| bench.pass("btreemap", btree))),
        ("rmi", Box::new(|| bench.pass("rmi", rmi_one))),
        (
            "rmi-batch",
            Box::new(|| bench.pass_batch("rmi-batch", &rmi)),
        ),
        ("pla", Box::new(|| bench.pass("pla", pla_one))),
        (
            "pla-batch",
            Box::new(|| bench.pass_batch("pla-batch", &pla)),
        ),
        ("auto", Box::new(|| bench.pass("auto", auto_one))),
        (
            "auto-batch",
            Box::new(|| bench.pass_batch("auto-batch", &auto)),
        ),
        ("dram_floor", Box::new(|| floor.pass())),
    ];
    let ns = interleave(&mut contenders, args.runs)?;
    drop(contenders);
    let ns_of = |name: &str| {
        ns.iter()
            .find(|(n, _)| *n == name)
            .map(|&(_, v)| v)
            .with_context(|| format!("{name} was not timed"))
    };
    let binary_ns = ns_of("binary_search")?;
    let btree_ns = ns_of("btreemap")?;

    let row = |index: &str, bytes: usize, build_ms: f64| -> Result<Row> {
        let ns = ns_of(index)?;
        Ok(Row {
            dist: dist.to_owned(),
            keys: n,
            index: index.to_owned(),
            ns_per_lookup: ns,
            vs_binary_search: binary_ns / ns,
            vs_btreemap: btree_ns / ns,
            index_bytes: bytes,
            build_ms,
            checksum_ok: true,
        })
    };
    report.row(&row("binary_search", 0, 0.0)?)?;
    // A BTreeMap's bytes are its nodes, estimated: bulk-loaded, a full leaf holds 11 entries in
    // 192 bytes and an internal node of 12 children takes 288 more, about 20 bytes an entry.
    report.row(&row("btreemap", n * 20, btree_build)?)?;
    for (name, index, build) in [
        ("rmi", &rmi as &dyn LearnedIndex, rmi_build),
        ("pla", &pla, pla_build),
        ("auto", &auto, auto_build),
    ] {
        let size = index.stats().size_bytes;
        report.row(&row(name, size, build)?)?;
        report.row(&row(&format!("{name}-batch"), size, build)?)?;
    }
    report.row(&row("dram_floor", 0, 0.0)?)?;
    Ok(())
}

/// One timed pass of a contender: ns per lookup, after the pass's checksum was checked.
type Pass<'a> = Box<dyn FnMut() -> Result<f64> + 'a>;

/// Times `runs` rounds of one pass per contender, each round starting one contender further
/// along, and returns each contender's median ns per lookup in the order given.
fn interleave<'n>(
    contenders: &mut [(&'n str, Pass<'_>)],
    runs: usize,
) -> Result<Vec<(&'n str, f64)>> {
    let count = contenders.len();
    let mut samples = vec![Vec::with_capacity(runs); count];
    for round in 0..runs {
        for i in 0..count {
            let at = (round + i) % count;
            let pass = &mut contenders[at].1;
            samples[at].push(pass()?);
        }
    }
    Ok(contenders
        .iter()
        .zip(&mut samples)
        .map(|((name, _), s)| (*name, median(s)))
        .collect())
}

/// Keys, queries and expected answers shared by every timed index.
struct Bench<'a> {
    dist: &'a str,
    keys: &'a [u64],
    queries: &'a [u64],
    expected: &'a [usize],
    expected_sum: u64,
}

/// Lookups per call of a batched pass.
const BATCH: usize = 1024;

impl Bench<'_> {
    /// Compares `lookup`'s answer to every query with `partition_point`'s.
    fn verify(&self, name: &str, lookup: impl Fn(u64) -> usize) -> Result<()> {
        for (i, (&q, &want)) in self.queries.iter().zip(self.expected).enumerate() {
            let got = lookup(q);
            if got != want {
                bail!(
                    "{}/{name}: WRONG ANSWER for lookup {i} (key {q}): got {got}, expected {want}; no timing reported",
                    self.dist
                );
            }
        }
        Ok(())
    }

    /// Like [`Bench::verify`] for batched lookups of [`BATCH`] keys per call.
    fn verify_batch(&self, name: &str, index: &dyn LearnedIndex) -> Result<()> {
        let mut out = Vec::with_capacity(BATCH);
        for (chunk, want) in self.queries.chunks(BATCH).zip(self.expected.chunks(BATCH)) {
            index.lower_bound_batch(self.keys, chunk, &mut out);
            if out != want {
                bail!(
                    "{}/{name}: WRONG ANSWER in a batch; no timing reported",
                    self.dist
                );
            }
        }
        Ok(())
    }

    /// One timed pass over every query: ns per lookup.
    fn pass(&self, name: &str, lookup: impl Fn(u64) -> usize) -> Result<f64> {
        let start = Instant::now();
        let mut sum = 0u64;
        for &q in self.queries {
            sum = sum.wrapping_add(lookup(q) as u64);
        }
        let elapsed = start.elapsed();
        self.check_sum(name, sum)?;
        Ok(elapsed.as_nanos() as f64 / self.queries.len() as f64)
    }

    /// Like [`Bench::pass`] for batched lookups of [`BATCH`] keys per call.
    fn pass_batch(&self, name: &str, index: &dyn LearnedIndex) -> Result<f64> {
        let mut out = Vec::with_capacity(BATCH);
        let start = Instant::now();
        let mut sum = 0u64;
        for chunk in self.queries.chunks(BATCH) {
            index.lower_bound_batch(self.keys, chunk, &mut out);
            sum = out.iter().fold(sum, |s, &p| s.wrapping_add(p as u64));
        }
        let elapsed = start.elapsed();
        self.check_sum(name, sum)?;
        Ok(elapsed.as_nanos() as f64 / self.queries.len() as f64)
    }

    fn check_sum(&self, name: &str, sum: u64) -> Result<()> {
        if sum != self.expected_sum {
            bail!(
                "{}/{name}: checksum {sum} != expected {}; no timing reported",
                self.dist,
                self.expected_sum
            );
        }
        Ok(())
    }
}

/// Dependent random reads in an array of as many u64s as there are keys: a pointer chase around
/// a single random cycle (Sattolo's algorithm), the cost of one cache miss with nothing else in
/// flight.
struct DramFloor {
    next: Vec<u64>,
    steps: usize,
    /// The sum of visited slots of one pass, which every timed pass must repeat.
    expected: u64,
}

impl DramFloor {
    fn new(n: usize, steps: usize, seed: u64) -> Self {
        let mut next: Vec<u64> = (0..n as u64).collect();
        let mut rng = StdRng::seed_from_u64(seed);
        for i in (1..n).rev() {
            let j = rng.random_range(0..i);
            next.swap(i, j);
        }
        let mut floor = DramFloor {
            next,
            steps,
            expected: 0,
        };
        floor.expected = floor.chase();
        floor
    }

    fn chase(&self) -> u64 {
        let mut at = 0usize;
        let mut sum = 0u64;
        for _ in 0..self.steps {
            at = self.next[at] as usize;
            sum = sum.wrapping_add(at as u64);
        }
        sum
    }

    /// One timed pass: ns per read.
    fn pass(&self) -> Result<f64> {
        let start = Instant::now();
        let sum = self.chase();
        let elapsed = start.elapsed();
        ensure!(
            sum == self.expected,
            "dram_floor: pointer chase checksum changed between passes"
        );
        Ok(elapsed.as_nanos() as f64 / self.steps as f64)
    }
}

fn checksum(positions: &[usize]) -> u64 {
    positions
        .iter()
        .fold(0u64, |s, &p| s.wrapping_add(p as u64))
}

fn ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, bytes).unwrap();
        file
    }

    fn sosd(count: u64, keys: &[u64]) -> Vec<u8> {
        let mut bytes = count.to_le_bytes().to_vec();
        for k in keys {
            bytes.extend_from_slice(&k.to_le_bytes());
        }
        bytes
    }

    #[test]
    fn reads_a_sosd_key_file() {
        let keys = [1u64, 5, 5, 9, u64::MAX];
        let file = write(&sosd(5, &keys));
        assert_eq!(read_sosd(file.path()).unwrap(), keys);
        let empty = write(&sosd(0, &[]));
        assert_eq!(read_sosd(empty.path()).unwrap(), Vec::<u64>::new());
    }

    #[test]
    fn refuses_truncated_short_and_unsorted_files() {
        let truncated = write(&sosd(5, &[1, 2, 3]));
        let err = read_sosd(truncated.path()).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");

        let short = write(&[1, 2, 3]);
        let err = read_sosd(short.path()).unwrap_err().to_string();
        assert!(err.contains("too short"), "{err}");

        let unsorted = write(&sosd(3, &[1, 9, 4]));
        let err = read_sosd(unsorted.path()).unwrap_err().to_string();
        assert!(
            err.contains("not sorted") && err.contains("position 2"),
            "{err}"
        );

        let missing = read_sosd(Path::new("/nonexistent/omendb-keys")).unwrap_err();
        assert!(missing.to_string().contains("cannot read"), "{missing}");
    }

    #[test]
    fn a_wrong_answer_aborts_before_any_timing() {
        let keys: Vec<u64> = (0..1000).map(|k| k * 3).collect();
        let queries = keygen::lookups(&keys, 500, 0.1, 1);
        let expected: Vec<usize> = queries
            .iter()
            .map(|&q| keys.partition_point(|&k| k < q))
            .collect();
        let bench = Bench {
            dist: "test",
            keys: &keys,
            queries: &queries,
            expected: &expected,
            expected_sum: checksum(&expected),
        };
        assert!(
            bench
                .verify("right", |q| keys.partition_point(|&k| k < q))
                .is_ok()
        );
        // An index that misses keys (like the old prototype's capped window) must not be timed.
        let err = bench
            .verify("capped", |q| keys.partition_point(|&k| k < q).min(16))
            .unwrap_err();
        assert!(err.to_string().contains("WRONG ANSWER"), "{err}");
        // A pass whose sum disagrees reports no figure either.
        let err = bench
            .pass("capped", |q| keys.partition_point(|&k| k < q).min(16))
            .unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
    }

    #[test]
    fn interleaved_rounds_rotate_the_order_and_report_each_median() {
        let order = std::cell::RefCell::new(Vec::new());
        let order = &order;
        let timed = |name: &'static str, samples: [f64; 3]| -> Pass<'_> {
            let mut at = 0;
            Box::new(move || {
                order.borrow_mut().push(name);
                at += 1;
                Ok(samples[at - 1])
            })
        };
        let mut contenders = vec![
            ("a", timed("a", [5.0, 1.0, 3.0])),
            ("b", timed("b", [9.0, 7.0, 8.0])),
            ("c", timed("c", [2.0, 2.0, 4.0])),
        ];
        let ns = interleave(&mut contenders, 3).unwrap();
        drop(contenders);
        assert_eq!(ns, vec![("a", 3.0), ("b", 8.0), ("c", 2.0)]);
        assert_eq!(
            *order.borrow(),
            ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
        );

        let mut failing: Vec<(&str, Pass<'_>)> = vec![(
            "bad",
            Box::new(|| anyhow::bail!("checksum 1 != expected 2")),
        )];
        assert!(interleave(&mut failing, 2).is_err());
    }
}
