//! Seeded generators of the key distributions in `shared/design/PERFORMANCE.md`, shared by tests
//! and benchmarks (feature `keygen`).
//!
//! Real data sets cannot be downloaded on our machines, so these reproduce the shapes that make
//! learned indexes hard (the lessons of SOSD's books, fb, osm and wiki sets). Every generator
//! returns exactly `n` sorted, distinct keys, and the same `(dist, n, seed)` always gives the same
//! keys on every machine.

use std::str::FromStr;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Exp1, LogNormal, StandardNormal};

/// A key distribution.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dist {
    /// Timestamps: a constant step (1 ms in ns) with random jitter of up to half a step.
    Seq,
    /// Event timestamps: exponential gaps whose rate follows a daily cycle, with bursts at 50x.
    Bursty,
    /// Uniform over the full 64-bit range.
    Uniform,
    /// Random samples of lognormal(μ = 0, σ = 2) scaled by 1e9, deduplicated.
    Lognormal,
    /// Z-order (Morton) codes of 2-D points in clusters of many scales, osm-like.
    Clustered,
    /// Dense ID ranges plus a few huge outliers near 2^64, fb-like.
    Outliers,
    /// Adversarial: dense cliffs of consecutive keys separated by plateaus of huge gaps.
    Steps,
}

impl Dist {
    /// Every distribution, in the order benchmarks report them.
    pub const ALL: [Dist; 7] = [
        Dist::Seq,
        Dist::Bursty,
        Dist::Uniform,
        Dist::Lognormal,
        Dist::Clustered,
        Dist::Outliers,
        Dist::Steps,
    ];

    /// The name used on command lines and in benchmark rows.
    pub fn name(self) -> &'static str {
        match self {
            Dist::Seq => "seq",
            Dist::Bursty => "bursty",
            Dist::Uniform => "uniform",
            Dist::Lognormal => "lognormal",
            Dist::Clustered => "clustered",
            Dist::Outliers => "outliers",
            Dist::Steps => "steps",
        }
    }

    /// `n` sorted, distinct keys of this distribution.
    pub fn generate(self, n: usize, seed: u64) -> Vec<u64> {
        let mut rng =
            StdRng::seed_from_u64(seed ^ (self as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        match self {
            Dist::Seq => seq(n, &mut rng),
            Dist::Bursty => bursty(n, &mut rng),
            Dist::Uniform => distinct(n, &mut rng, |r| r.random::<u64>()),
            Dist::Lognormal => lognormal(n, &mut rng),
            Dist::Clustered => clustered(n, &mut rng),
            Dist::Outliers => outliers(n, &mut rng),
            Dist::Steps => steps(n, &mut rng),
        }
    }
}

impl std::fmt::Display for Dist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown distribution name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown key distribution {0:?} (expected one of seq, bursty, uniform, lognormal, clustered, outliers, steps)"
)]
pub struct UnknownDist(pub String);

impl FromStr for Dist {
    type Err = UnknownDist;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Dist::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| UnknownDist(s.to_owned()))
    }
}

/// `count` lookup keys for `keys`: each is absent with probability `absent_fraction` (a key not
/// in the set, inside its range where one exists), otherwise a uniformly chosen stored key.
pub fn lookups(keys: &[u64], count: usize, absent_fraction: f64, seed: u64) -> Vec<u64> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xA5A5_5A5A_C3C3_3C3C);
    let n = keys.len();
    (0..count)
        .map(|_| {
            if n == 0 {
                return rng.random::<u64>();
            }
            if rng.random::<f64>() < absent_fraction {
                absent(keys, &mut rng)
            } else {
                keys[rng.random_range(0..n)]
            }
        })
        .collect()
}

/// A key not in the non-empty sorted `keys`, inside its range if the range has room.
fn absent(keys: &[u64], rng: &mut StdRng) -> u64 {
    let (first, last) = (keys[0], keys[keys.len() - 1]);
    let present = |k: u64| keys.binary_search(&k).is_ok();
    for _ in 0..64 {
        let k = if first < last {
            rng.random_range(first..=last)
        } else {
            first
        };
        if !present(k) {
            return k;
        }
        // Dense stretches rarely yield a random gap; a stored key's neighbour often is one.
        let near = keys[rng.random_range(0..keys.len())];
        for k in [near.wrapping_add(1), near.wrapping_sub(1)] {
            if !present(k) {
                return k;
            }
        }
    }
    // Every probe inside the range was present: step outside it.
    if last < u64::MAX {
        rng.random_range(last + 1..=u64::MAX)
    } else if first > 0 {
        rng.random_range(0..first)
    } else {
        last
    }
}

/// Draws until `n` distinct values exist, then thins the surplus evenly so the shape is kept.
fn distinct(n: usize, rng: &mut StdRng, mut sample: impl FnMut(&mut StdRng) -> u64) -> Vec<u64> {
    let mut keys = Vec::with_capacity(n + n / 16 + 16);
    while keys.len() < n {
        let need = n - keys.len();
        keys.extend((0..need + need / 32 + 16).map(|_| sample(rng)));
        keys.sort_unstable();
        keys.dedup();
    }
    thin(keys, n)
}

/// Removes `keys.len() - n` evenly spaced keys.
fn thin(mut keys: Vec<u64>, n: usize) -> Vec<u64> {
    let len = keys.len();
    let surplus = len.saturating_sub(n);
    if surplus == 0 {
        return keys;
    }
    let mut i = 0usize;
    keys.retain(|_| {
        // Position i is dropped when `i * surplus / len` steps up: exactly `surplus` times.
        let drop = (i + 1) * surplus / len > i * surplus / len;
        i += 1;
        !drop
    });
    keys.truncate(n);
    keys
}

/// Nanosecond timestamps from 2020 on.
const EPOCH_NS: u64 = 1_600_000_000_000_000_000;
const MS_NS: u64 = 1_000_000;

fn seq(n: usize, rng: &mut StdRng) -> Vec<u64> {
    (0..n as u64)
        .map(|i| EPOCH_NS + i * MS_NS + rng.random_range(0..MS_NS / 2))
        .collect()
}

fn bursty(n: usize, rng: &mut StdRng) -> Vec<u64> {
    const DAY_NS: f64 = 86_400e9;
    let mean_gap = MS_NS as f64;
    let mut t = EPOCH_NS;
    let mut burst_left = 0u32;
    let mut keys = Vec::with_capacity(n);
    for _ in 0..n {
        if burst_left == 0 && rng.random::<f64>() < 1e-4 {
            burst_left = rng.random_range(100..20_000);
        }
        let phase = (t - EPOCH_NS) as f64 / DAY_NS * std::f64::consts::TAU;
        let mut rate = 1.0 + 0.8 * phase.sin();
        if burst_left > 0 {
            burst_left -= 1;
            rate *= 50.0;
        }
        let e: f64 = Exp1.sample(rng);
        t += ((e * mean_gap / rate) as u64).max(1);
        keys.push(t);
    }
    keys
}

fn lognormal(n: usize, rng: &mut StdRng) -> Vec<u64> {
    match LogNormal::new(0.0, 2.0) {
        Ok(dist) => distinct(n, rng, |r| (dist.sample(r) * 1e9) as u64),
        // The parameters are constants that LogNormal accepts; keep the generator total anyway.
        Err(_) => distinct(n, rng, |r| r.random::<u64>() >> 20),
    }
}

/// Interleaves the bits of `x` (even positions) and `y` (odd positions).
fn morton(x: u32, y: u32) -> u64 {
    fn spread(v: u32) -> u64 {
        let mut v = u64::from(v);
        v = (v | (v << 16)) & 0x0000_FFFF_0000_FFFF;
        v = (v | (v << 8)) & 0x00FF_00FF_00FF_00FF;
        v = (v | (v << 4)) & 0x0F0F_0F0F_0F0F_0F0F;
        v = (v | (v << 2)) & 0x3333_3333_3333_3333;
        v = (v | (v << 1)) & 0x5555_5555_5555_5555;
        v
    }
    spread(x) | (spread(y) << 1)
}

fn clustered(n: usize, rng: &mut StdRng) -> Vec<u64> {
    // Cluster centres with power-law weights and spreads from a street to a continent.
    let clusters: Vec<(f64, f64, f64)> = (0..2_000)
        .map(|_| {
            let spread = 2f64.powf(rng.random_range(6.0..22.0));
            (
                rng.random::<u32>() as f64,
                rng.random::<u32>() as f64,
                spread,
            )
        })
        .collect();
    let weights: Vec<f64> = (1..=clusters.len())
        .map(|i| 1.0 / (i as f64).powf(1.1))
        .collect();
    let total: f64 = weights.iter().sum();
    let mut cumulative = Vec::with_capacity(weights.len());
    let mut acc = 0.0;
    for w in &weights {
        acc += w / total;
        cumulative.push(acc);
    }
    let max = u32::MAX as f64;
    distinct(n, rng, |r| {
        let u: f64 = r.random();
        let c = cumulative
            .partition_point(|&p| p < u)
            .min(clusters.len() - 1);
        let (cx, cy, spread) = clusters[c];
        let dx: f64 = StandardNormal.sample(r);
        let dy: f64 = StandardNormal.sample(r);
        let x = (cx + dx * spread).clamp(0.0, max) as u32;
        let y = (cy + dy * spread).clamp(0.0, max) as u32;
        morton(x, y)
    })
}

fn outliers(n: usize, rng: &mut StdRng) -> Vec<u64> {
    let outlier_count = (n / 100_000).max(usize::from(n > 1));
    let dense = n - outlier_count;
    let ranges = 16usize;
    let mut keys = Vec::with_capacity(n);
    let mut next = rng.random_range(1u64 << 20..1u64 << 24);
    for r in 0..ranges {
        let len = dense / ranges + usize::from(r < dense % ranges);
        for _ in 0..len {
            keys.push(next);
            next += rng.random_range(1..=4);
        }
        // A jump between ID ranges (a new shard, a new allocator block).
        next += rng.random_range(1u64 << 28..1u64 << 36);
    }
    keys.extend((0..outlier_count).map(|_| rng.random_range(1u64 << 63..=u64::MAX)));
    keys.sort_unstable();
    keys.dedup();
    // Outliers colliding with each other are vanishingly rare; top up with more if they do.
    while keys.len() < n {
        keys.push(rng.random_range(1u64 << 62..1u64 << 63));
        keys.sort_unstable();
        keys.dedup();
    }
    keys
}

fn steps(n: usize, rng: &mut StdRng) -> Vec<u64> {
    let mut keys = Vec::with_capacity(n);
    let mut next = rng.random_range(0..1u64 << 16);
    while keys.len() < n {
        // Cliff: a log-uniform run of 1 to 100k consecutive keys.
        let run = 10f64.powf(rng.random_range(0.0..5.0)) as usize;
        for _ in 0..run.min(n - keys.len()) {
            keys.push(next);
            next += 1;
        }
        // Plateau: a log-uniform gap of 2^10 to 2^36.
        next = next.saturating_add(2f64.powf(rng.random_range(10.0..36.0)) as u64);
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_distribution_gives_n_sorted_distinct_keys_reproducibly() {
        for dist in Dist::ALL {
            for n in [0, 1, 2, 1000, 100_000] {
                let keys = dist.generate(n, 7);
                assert_eq!(keys.len(), n, "{dist} n={n}");
                assert!(
                    keys.windows(2).all(|w| w[0] < w[1]),
                    "{dist} n={n} not strictly sorted"
                );
                assert_eq!(keys, dist.generate(n, 7), "{dist} not reproducible");
            }
            assert_ne!(
                dist.generate(1000, 1),
                dist.generate(1000, 2),
                "{dist} ignores the seed"
            );
        }
    }

    #[test]
    fn names_round_trip_and_unknown_names_are_rejected() {
        for dist in Dist::ALL {
            assert_eq!(dist.name().parse::<Dist>(), Ok(dist));
        }
        assert!("zipf".parse::<Dist>().is_err());
    }

    #[test]
    fn lookups_mix_present_and_absent_keys() {
        let keys = Dist::Steps.generate(10_000, 3);
        let queries = lookups(&keys, 10_000, 0.1, 3);
        let absent = queries
            .iter()
            .filter(|q| keys.binary_search(q).is_err())
            .count();
        assert!((800..1200).contains(&absent), "{absent} absent of 10000");
    }

    #[test]
    fn thin_removes_exactly_the_surplus() {
        for (len, n) in [(10, 3), (100, 99), (7, 7), (1000, 1)] {
            let kept = thin((0..len).collect(), n as usize);
            assert_eq!(kept.len(), n as usize);
        }
    }
}
