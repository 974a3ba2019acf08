//! Criterion benchmarks of single and batched point lookups at 1M keys per distribution, for
//! every member of the index family and the two baselines. Answers are checked before timing.
#![allow(missing_docs, clippy::expect_used)] // bench harness code

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use omendb_core::index::{AnyIndex, IndexPolicy, KindChoice, LearnedIndex};
use omendb_core::keygen::{self, Dist};

const KEYS: usize = 1_000_000;
const LOOKUPS: usize = 4096;

fn lookups(c: &mut Criterion) {
    for dist in Dist::ALL {
        let keys = dist.generate(KEYS, 7);
        let queries = keygen::lookups(&keys, LOOKUPS, 0.1, 7);
        let expected: Vec<usize> = queries
            .iter()
            .map(|&q| keys.partition_point(|&k| k < q))
            .collect();
        let mut group = c.benchmark_group(format!("index/{dist}"));
        group.throughput(Throughput::Elements(LOOKUPS as u64));

        // The baselines get their inputs through `black_box` as the models do, and the map's
        // answers are checked like theirs.
        group.bench_function("binary_search", |b| {
            b.iter(|| {
                queries
                    .iter()
                    .map(|&q| black_box(&keys).partition_point(|&k| k < q))
                    .sum::<usize>()
            })
        });
        // Each equal key's first position, as a lower bound gives.
        let map: BTreeMap<u64, usize> = keys
            .iter()
            .enumerate()
            .filter(|&(i, &k)| i == 0 || keys[i - 1] != k)
            .map(|(i, &k)| (k, i))
            .collect();
        let lookup = |map: &BTreeMap<u64, usize>, q: u64| {
            map.range(q..).next().map_or(keys.len(), |(_, &p)| p)
        };
        let answers: Vec<usize> = queries.iter().map(|&q| lookup(&map, q)).collect();
        assert_eq!(
            answers, expected,
            "{dist}/btreemap answers wrongly; not timing it"
        );
        group.bench_function("btreemap", |b| {
            b.iter(|| {
                queries
                    .iter()
                    .map(|&q| lookup(black_box(&map), q))
                    .sum::<usize>()
            })
        });
        for kind in [KindChoice::Rmi, KindChoice::Pla, KindChoice::Auto] {
            let index = AnyIndex::build(
                &keys,
                &IndexPolicy {
                    kind,
                    ..IndexPolicy::default()
                },
            )
            .expect("generated keys are sorted");
            let answers: Vec<usize> = queries
                .iter()
                .map(|&q| index.lower_bound(&keys, q))
                .collect();
            assert_eq!(
                answers, expected,
                "{dist}/{kind:?} answers wrongly; not timing it"
            );
            let name = format!("{kind:?}").to_lowercase();
            group.bench_function(BenchmarkId::new(name.clone(), "single"), |b| {
                b.iter(|| {
                    queries
                        .iter()
                        .map(|&q| index.lower_bound(black_box(&keys), q))
                        .sum::<usize>()
                })
            });
            let mut out = Vec::with_capacity(LOOKUPS);
            index.lower_bound_batch(&keys, &queries, &mut out);
            assert_eq!(
                out, expected,
                "{dist}/{kind:?} batch answers wrongly; not timing it"
            );
            group.bench_function(BenchmarkId::new(name, "batch"), |b| {
                b.iter(|| {
                    index.lower_bound_batch(black_box(&keys), &queries, &mut out);
                    out.iter().sum::<usize>()
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, lookups);
criterion_main!(benches);
