//! Exhaustive checks at one million keys for every distribution: every stored key, and the key
//! just above and just below each, looked up one at a time and in batches by every member of the
//! family, against `partition_point`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

use omendb_core::index::{AnyIndex, IndexPolicy, KindChoice, LearnedIndex};
use omendb_core::keygen::Dist;

const N: usize = 1_000_000;

fn check(dist: &str, keys: &[u64]) {
    let mut queries = Vec::with_capacity(keys.len() * 3);
    for &k in keys {
        queries.extend([k, k.wrapping_sub(1), k.wrapping_add(1)]);
    }
    let expected: Vec<usize> = queries
        .iter()
        .map(|&q| keys.partition_point(|&k| k < q))
        .collect();
    for kind in [
        KindChoice::Auto,
        KindChoice::Rmi,
        KindChoice::Pla,
        KindChoice::BinarySearch,
    ] {
        let policy = IndexPolicy {
            kind,
            ..IndexPolicy::default()
        };
        let index = AnyIndex::build(keys, &policy).unwrap();
        let stats = index.stats();
        assert!(
            stats.size_bytes <= policy.budget_bytes(keys.len()),
            "{dist}/{kind:?}: {} bytes over budget",
            stats.size_bytes
        );
        for (&q, &want) in queries.iter().zip(&expected) {
            let window = index.window(q);
            assert!(
                window.contains(want),
                "{dist}/{kind:?}: window {window:?} misses {want} for {q}"
            );
            assert_eq!(index.lower_bound(keys, q), want, "{dist}/{kind:?}: key {q}");
        }
        let mut batch = Vec::new();
        index.lower_bound_batch(keys, &queries, &mut batch);
        assert!(batch == expected, "{dist}/{kind:?}: batched answers differ");
    }
}

#[test]
fn every_distribution_at_one_million_keys() {
    for dist in Dist::ALL {
        check(dist.name(), &dist.generate(N, 2026));
    }
}

#[test]
fn runs_of_duplicate_versions_at_one_million_keys() {
    // MVCC versions: each key appears one to eight times; the lower bound is its first copy.
    let mut keys = Vec::with_capacity(N);
    let mut key = 1u64 << 40;
    let mut i = 0u64;
    while keys.len() < N {
        let copies = (i * 2_654_435_761 % 8 + 1) as usize;
        keys.extend(std::iter::repeat_n(key, copies.min(N - keys.len())));
        key += 1 + i % 1000;
        i += 1;
    }
    check("duplicates", &keys);
}

#[test]
fn the_chooser_counts_model_reads_below_key_reads() {
    // Bursty keys leave the RMI wide windows in the keys, where the PLA reads two small arrays of
    // its own first: counted as whole key reads those made the chooser take the RMI, which
    // measured slower (docs/benchmarks.md, issue 2). Uniform keys keep the RMI, whose narrow
    // windows need no second model read; a sequence keeps it at its floor.
    let pick = |dist: Dist| {
        let keys = dist.generate(N, 2026);
        AnyIndex::build(&keys, &IndexPolicy::default())
            .unwrap()
            .kind()
            .name()
    };
    assert_eq!(pick(Dist::Bursty), "pla");
    assert_eq!(pick(Dist::Uniform), "rmi");
    assert_eq!(pick(Dist::Seq), "rmi");
}
