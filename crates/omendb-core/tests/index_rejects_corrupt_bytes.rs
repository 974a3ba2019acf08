//! A serialized model that is truncated, bit-flipped or structurally wrong is refused with a typed
//! error, and no byte string, even one with a valid checksum, yields a panic or a wrong answer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

use omendb_core::ErrorKind;
use omendb_core::index::{AnyIndex, IndexError, IndexPolicy, KindChoice, LearnedIndex};
use omendb_core::keygen::Dist;
use proptest::prelude::*;

fn models() -> Vec<(Vec<u64>, Vec<u8>)> {
    let mut out = Vec::new();
    // Runs of duplicates (a segment's versions of hot keys) beside the distributions' distinct
    // keys.
    let runs: Vec<u64> = Dist::Lognormal
        .generate(300, 12)
        .into_iter()
        .enumerate()
        .flat_map(|(i, k)| std::iter::repeat_n(k, 1 + (i * 7) % 40))
        .collect();
    let sets = [Dist::Lognormal, Dist::Steps, Dist::Seq]
        .map(|dist| dist.generate(3000, 11))
        .into_iter()
        .chain([runs]);
    for keys in sets {
        for kind in [KindChoice::Rmi, KindChoice::Pla, KindChoice::BinarySearch] {
            let policy = IndexPolicy {
                kind,
                ..IndexPolicy::default()
            };
            let bytes = AnyIndex::build(&keys, &policy).unwrap().encode();
            out.push((keys.clone(), bytes));
        }
    }
    out
}

/// Rewrites the trailing CRC32C so that a mutation reaches the structural checks.
fn reseal(bytes: &mut [u8]) {
    let body = bytes.len() - 4;
    let crc = crc32c::crc32c(&bytes[..body]);
    bytes[body..].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn every_truncation_is_rejected() {
    for (_, bytes) in models() {
        for len in 0..bytes.len() {
            let err = AnyIndex::decode(&bytes[..len]).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Corrupt, "len {len}: {err}");
        }
    }
}

#[test]
fn every_single_bit_flip_is_rejected() {
    for (_, bytes) in models() {
        // Every bit of the header and checksum, and a stride through the payload.
        let positions: Vec<usize> = (0..40.min(bytes.len()))
            .chain((40..bytes.len()).step_by(7))
            .chain(bytes.len() - 4..bytes.len())
            .collect();
        for at in positions {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[at] ^= 1 << bit;
                assert!(
                    AnyIndex::decode(&damaged).is_err(),
                    "flip at byte {at} bit {bit} accepted"
                );
            }
        }
    }
}

#[test]
fn trailing_bytes_unknown_kinds_and_future_versions_are_rejected() {
    let (_, bytes) = models().remove(0);
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(
        AnyIndex::decode(&longer),
        Err(IndexError::Corrupt { .. })
    ));

    let mut kind = bytes.clone();
    kind[6] = 9;
    reseal(&mut kind);
    assert!(matches!(
        AnyIndex::decode(&kind),
        Err(IndexError::Corrupt { .. })
    ));

    let mut version = bytes.clone();
    version[4] = 2;
    reseal(&mut version);
    assert_eq!(
        AnyIndex::decode(&version),
        Err(IndexError::UnsupportedVersion {
            found: 2,
            supported: 1
        })
    );

    // A flag in the reserved byte, checksum and all, is a newer writer's: not ignored.
    let mut reserved = bytes.clone();
    reserved[7] = 1;
    reseal(&mut reserved);
    assert!(matches!(
        AnyIndex::decode(&reserved),
        Err(IndexError::Corrupt { .. })
    ));

    let mut magic = bytes;
    magic[0] = b'X';
    reseal(&mut magic);
    assert!(matches!(
        AnyIndex::decode(&magic),
        Err(IndexError::Corrupt { .. })
    ));
}

#[test]
fn a_model_refuses_keys_it_was_not_trained_on() {
    let keys = Dist::Uniform.generate(1000, 1);
    let index = AnyIndex::build(&keys, &IndexPolicy::default()).unwrap();
    assert!(index.check_keys(&keys).is_ok());
    let err = index.check_keys(&keys[1..]).unwrap_err();
    assert!(matches!(err, IndexError::KeysMismatch { .. }));
    assert_eq!(err.kind(), ErrorKind::BadInput);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Mutations behind a valid checksum reach the structural checks: they either fail to decode
    /// or give a model whose answers are still exactly `partition_point`'s.
    #[test]
    fn resealed_mutations_never_panic_or_answer_wrongly(
        which in 0usize..12,
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        probes in prop::collection::vec(any::<u64>(), 32),
    ) {
        let (keys, mut bytes) = models().swap_remove(which);
        for (at, value) in edits {
            let at = 4 + at.index(bytes.len() - 8);
            bytes[at] = value;
        }
        reseal(&mut bytes);
        if let Ok(index) = AnyIndex::decode(&bytes) {
            let queries: Vec<u64> = keys.iter().copied().step_by(17).chain(probes).collect();
            let mut batch = Vec::new();
            index.lower_bound_batch(&keys, &queries, &mut batch);
            let _ = index.stats();
            for (i, &q) in queries.iter().enumerate() {
                index.prefetch(q);
                let _ = index.window(q);
                let expected = keys.partition_point(|&k| k < q);
                prop_assert_eq!(index.lower_bound(&keys, q), expected);
                prop_assert_eq!(batch[i], expected);
            }
        }
    }
}
