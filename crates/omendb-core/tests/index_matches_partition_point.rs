//! Property tests: every member of the index family, on every key distribution and on arbitrary
//! key arrays with duplicates and extreme values, answers exactly what `partition_point` answers,
//! before and after a round trip through its byte format.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

use omendb_core::index::{AnyIndex, BinarySearch, IndexPolicy, KindChoice, LearnedIndex, Pla, Rmi};
use omendb_core::keygen::Dist;
use proptest::prelude::*;

/// Every member, built over `keys` with the given tuning knobs.
fn family(keys: &[u64], leaves: usize, epsilon: usize, budget: usize) -> Vec<(String, AnyIndex)> {
    let policy = |kind| IndexPolicy {
        kind,
        min_bytes: budget,
        ..IndexPolicy::default()
    };
    vec![
        (
            "binary".into(),
            AnyIndex::BinarySearch(BinarySearch::build(keys)),
        ),
        (
            format!("rmi/{leaves}"),
            AnyIndex::Rmi(Rmi::build_with_leaves(keys, leaves).unwrap()),
        ),
        (
            format!("rmi/{budget}B"),
            AnyIndex::Rmi(Rmi::build(keys, budget).unwrap()),
        ),
        (
            format!("pla/eps{epsilon}"),
            AnyIndex::Pla(Pla::build_with_epsilon(keys, epsilon, budget).unwrap()),
        ),
        (
            format!("pla/{budget}B"),
            AnyIndex::Pla(Pla::build(keys, budget).unwrap()),
        ),
        (
            "auto".into(),
            AnyIndex::build(keys, &policy(KindChoice::Auto)).unwrap(),
        ),
    ]
}

/// Present keys, their neighbours, the extremes and `extra` arbitrary keys.
fn queries(keys: &[u64], extra: &[u64]) -> Vec<u64> {
    let mut q: Vec<u64> = Vec::with_capacity(keys.len() * 3 + extra.len() + 4);
    for &k in keys {
        q.extend([k, k.wrapping_sub(1), k.wrapping_add(1)]);
    }
    q.extend([0, 1, u64::MAX - 1, u64::MAX]);
    q.extend_from_slice(extra);
    q
}

fn assert_exact(
    name: &str,
    keys: &[u64],
    index: &AnyIndex,
    queries: &[u64],
) -> Result<(), TestCaseError> {
    let mut batch = Vec::new();
    index.lower_bound_batch(keys, queries, &mut batch);
    prop_assert_eq!(batch.len(), queries.len());
    for (&q, &got_batch) in queries.iter().zip(&batch) {
        let expected = keys.partition_point(|&k| k < q);
        let window = index.window(q);
        prop_assert!(
            window.contains(expected),
            "{}: window {:?} misses {} for key {}",
            name,
            window,
            expected,
            q
        );
        // A prefetch is only a hint, but it computes an address from the key: any key will do.
        index.prefetch(q);
        prop_assert_eq!(index.lower_bound(keys, q), expected, "{}: key {}", name, q);
        prop_assert_eq!(got_batch, expected, "{}: batch, key {}", name, q);
    }
    Ok(())
}

fn check_all(
    keys: &[u64],
    extra: &[u64],
    leaves: usize,
    epsilon: usize,
    budget: usize,
) -> Result<(), TestCaseError> {
    let q = queries(keys, extra);
    for (name, index) in family(keys, leaves, epsilon, budget) {
        prop_assert!(index.check_keys(keys).is_ok());
        assert_exact(&name, keys, &index, &q)?;
        let decoded = AnyIndex::decode(&index.encode()).unwrap();
        prop_assert_eq!(&decoded, &index, "{}: round trip changed the model", name);
        for &k in &q {
            prop_assert_eq!(decoded.window(k), index.window(k));
        }
        assert_exact(&format!("{name} decoded"), keys, &decoded, &q)?;
    }
    Ok(())
}

/// Sorted keys with runs of duplicates and values near both ends of the range.
fn arbitrary_keys() -> impl Strategy<Value = Vec<u64>> {
    let value = prop_oneof![
        0u64..64,
        u64::MAX - 64..=u64::MAX,
        any::<u64>(),
        (0u64..1_000_000).prop_map(|v| v * 1_000),
    ];
    prop::collection::vec((value, 1usize..6), 0..600).prop_map(|runs| {
        let mut keys: Vec<u64> = runs
            .into_iter()
            .flat_map(|(v, n)| std::iter::repeat_n(v, n))
            .collect();
        keys.sort_unstable();
        keys
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn every_distribution_matches_partition_point(
        dist in prop::sample::select(Dist::ALL.to_vec()),
        n in 0usize..4000,
        seed in any::<u64>(),
        extra in prop::collection::vec(any::<u64>(), 0..64),
        leaves in 1usize..3000,
        epsilon in 1usize..300,
        budget in 64usize..20_000,
    ) {
        let keys = dist.generate(n, seed);
        check_all(&keys, &extra, leaves, epsilon, budget)?;
    }

    #[test]
    fn arbitrary_keys_with_duplicates_match_partition_point(
        keys in arbitrary_keys(),
        extra in prop::collection::vec(any::<u64>(), 0..64),
        leaves in 1usize..1000,
        epsilon in 1usize..100,
        budget in 64usize..8000,
    ) {
        check_all(&keys, &extra, leaves, epsilon, budget)?;
    }

    #[test]
    fn a_model_given_the_wrong_keys_still_answers_exactly(
        trained in arbitrary_keys(),
        other in arbitrary_keys(),
        extra in prop::collection::vec(any::<u64>(), 0..64),
    ) {
        let q = queries(&other, &extra);
        for (name, index) in family(&trained, 16, 4, 1024) {
            // Binding refuses exactly the key arrays whose count, first or last key differ.
            let differs = index.key_set() != omendb_core::index::KeySet::of(&other);
            prop_assert_eq!(index.check_keys(&other).is_err(), differs, "{}", name);
            let mut batch = Vec::new();
            index.lower_bound_batch(&other, &q, &mut batch);
            for (i, &k) in q.iter().enumerate() {
                let expected = other.partition_point(|&x| x < k);
                prop_assert_eq!(index.lower_bound(&other, k), expected, "{}", name);
                prop_assert_eq!(batch[i], expected, "{} batched", name);
            }
        }
    }
}
