//! Table keys and their order-preserving map to the `u64` that segments and the learned index
//! store (see `docs/rfcs/0001-engine.md`).
//!
//! `u64` keys are stored as they are. `i64` keys and timestamps (signed 64-bit counts of a time
//! unit since the Unix epoch) are stored with their sign bit flipped, which maps
//! `i64::MIN..=i64::MAX` onto `0..=u64::MAX` in the same order.

use std::fmt;
use std::ops::{Bound, RangeBounds, RangeInclusive};

/// The type of a table's key column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyType {
    /// Unsigned 64-bit integers.
    U64,
    /// Signed 64-bit integers.
    I64,
    /// Timestamps: signed 64-bit counts of `unit` since 1970-01-01T00:00:00Z.
    Timestamp(TimeUnit),
}

/// The unit of a timestamp key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TimeUnit {
    /// Seconds.
    Second,
    /// Milliseconds.
    Millisecond,
    /// Microseconds.
    Microsecond,
    /// Nanoseconds.
    Nanosecond,
}

/// A key value as a caller gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    /// A `u64` key.
    U64(u64),
    /// An `i64` key, or a timestamp in its table's unit.
    I64(i64),
}

/// A key of the wrong kind for its table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a {given} key for a table keyed by {expected}")]
pub struct KeyMismatch {
    /// The table's key type.
    pub expected: KeyType,
    /// What was given.
    pub given: &'static str,
}

impl KeyType {
    /// The stored form of `key`, or an error if `key` is not of this type.
    pub fn encode(self, key: Key) -> Result<u64, KeyMismatch> {
        match (self, key) {
            (KeyType::U64, Key::U64(k)) => Ok(k),
            (KeyType::I64 | KeyType::Timestamp(_), Key::I64(k)) => Ok(flip(k)),
            (expected, Key::U64(_)) => Err(KeyMismatch {
                expected,
                given: "u64",
            }),
            (expected, Key::I64(_)) => Err(KeyMismatch {
                expected,
                given: "i64",
            }),
        }
    }

    /// The key whose stored form is `stored`.
    pub fn decode(self, stored: u64) -> Key {
        match self {
            KeyType::U64 => Key::U64(stored),
            KeyType::I64 | KeyType::Timestamp(_) => Key::I64(unflip(stored)),
        }
    }

    /// The name the manifest records (`u64`, `i64`, `timestamp[us]`, ...).
    pub fn name(self) -> &'static str {
        match self {
            KeyType::U64 => "u64",
            KeyType::I64 => "i64",
            KeyType::Timestamp(TimeUnit::Second) => "timestamp[s]",
            KeyType::Timestamp(TimeUnit::Millisecond) => "timestamp[ms]",
            KeyType::Timestamp(TimeUnit::Microsecond) => "timestamp[us]",
            KeyType::Timestamp(TimeUnit::Nanosecond) => "timestamp[ns]",
        }
    }

    /// The key type a manifest name stands for.
    pub fn from_name(name: &str) -> Option<KeyType> {
        [
            KeyType::U64,
            KeyType::I64,
            KeyType::Timestamp(TimeUnit::Second),
            KeyType::Timestamp(TimeUnit::Millisecond),
            KeyType::Timestamp(TimeUnit::Microsecond),
            KeyType::Timestamp(TimeUnit::Nanosecond),
        ]
        .into_iter()
        .find(|t| t.name() == name)
    }
}

impl KeyType {
    /// The stored keys of `range` as an inclusive range, `None` if it is empty.
    pub fn stored_range(
        self,
        range: (Bound<Key>, Bound<Key>),
    ) -> Result<Option<RangeInclusive<u64>>, KeyMismatch> {
        let first = match range.0 {
            Bound::Included(k) => Some(self.encode(k)?),
            Bound::Excluded(k) => self.encode(k)?.checked_add(1),
            Bound::Unbounded => Some(0),
        };
        let last = match range.1 {
            Bound::Included(k) => Some(self.encode(k)?),
            Bound::Excluded(k) => self.encode(k)?.checked_sub(1),
            Bound::Unbounded => Some(u64::MAX),
        };
        Ok(match (first, last) {
            (Some(first), Some(last)) if first <= last => Some(first..=last),
            _ => None,
        })
    }
}

impl From<u64> for Key {
    fn from(k: u64) -> Self {
        Key::U64(k)
    }
}

impl From<u32> for Key {
    fn from(k: u32) -> Self {
        Key::U64(u64::from(k))
    }
}

/// Unsuffixed integer literals are `i32`: they name signed keys.
impl From<i32> for Key {
    fn from(k: i32) -> Self {
        Key::I64(i64::from(k))
    }
}

impl From<i64> for Key {
    fn from(k: i64) -> Self {
        Key::I64(k)
    }
}

/// The bounds of any range of key-like values, as [`Key`] bounds.
pub fn key_bounds<K: Into<Key> + Copy>(range: &impl RangeBounds<K>) -> (Bound<Key>, Bound<Key>) {
    let map = |bound: Bound<&K>| match bound {
        Bound::Included(&k) => Bound::Included(k.into()),
        Bound::Excluded(&k) => Bound::Excluded(k.into()),
        Bound::Unbounded => Bound::Unbounded,
    };
    (map(range.start_bound()), map(range.end_bound()))
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Flipping the sign bit orders `i64` as `u64`: `MIN` → 0, −1 → 2⁶³ − 1, 0 → 2⁶³, `MAX` → `u64::MAX`.
fn flip(k: i64) -> u64 {
    (k as u64) ^ (1 << 63)
}

fn unflip(stored: u64) -> i64 {
    (stored ^ (1 << 63)) as i64
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn signed_keys_keep_their_order_and_round_trip(a: i64, b: i64) {
            let (ea, eb) = (KeyType::I64.encode(Key::I64(a)).unwrap(), KeyType::I64.encode(Key::I64(b)).unwrap());
            prop_assert_eq!(a.cmp(&b), ea.cmp(&eb));
            prop_assert_eq!(KeyType::I64.decode(ea), Key::I64(a));
        }

        #[test]
        fn unsigned_keys_are_stored_as_they_are(a: u64) {
            prop_assert_eq!(KeyType::U64.encode(Key::U64(a)), Ok(a));
            prop_assert_eq!(KeyType::U64.decode(a), Key::U64(a));
        }
    }

    #[test]
    fn extremes_map_to_the_ends() {
        let t = KeyType::Timestamp(TimeUnit::Microsecond);
        assert_eq!(t.encode(Key::I64(i64::MIN)), Ok(0));
        assert_eq!(t.encode(Key::I64(-1)), Ok((1 << 63) - 1));
        assert_eq!(t.encode(Key::I64(0)), Ok(1 << 63));
        assert_eq!(t.encode(Key::I64(i64::MAX)), Ok(u64::MAX));
    }

    #[test]
    fn a_key_of_the_wrong_kind_is_refused() {
        assert_eq!(
            KeyType::U64.encode(Key::I64(1)),
            Err(KeyMismatch {
                expected: KeyType::U64,
                given: "i64"
            })
        );
        assert!(KeyType::I64.encode(Key::U64(1)).is_err());
    }

    #[test]
    fn ranges_map_to_inclusive_stored_ranges() {
        let range = |r: (Bound<Key>, Bound<Key>)| KeyType::U64.stored_range(r).unwrap();
        assert_eq!(range(key_bounds(&(3u64..7))), Some(3..=6));
        assert_eq!(range(key_bounds(&(3u64..=7))), Some(3..=7));
        assert_eq!(range(key_bounds::<u64>(&(..))), Some(0..=u64::MAX));
        assert_eq!(range(key_bounds(&(3u64..3))), None);
        assert_eq!(range(key_bounds(&(0u64..0))), None);
        assert_eq!(
            range((Bound::Excluded(Key::U64(u64::MAX)), Bound::Unbounded)),
            None
        );
        let signed = KeyType::I64
            .stored_range(key_bounds(&(-1i64..=1)))
            .unwrap()
            .unwrap();
        assert_eq!(KeyType::I64.decode(*signed.start()), Key::I64(-1));
        assert!(KeyType::I64.stored_range(key_bounds(&(1u64..2))).is_err());
    }

    #[test]
    fn names_round_trip() {
        for t in [
            KeyType::U64,
            KeyType::I64,
            KeyType::Timestamp(TimeUnit::Second),
            KeyType::Timestamp(TimeUnit::Nanosecond),
        ] {
            assert_eq!(KeyType::from_name(t.name()), Some(t));
        }
        assert_eq!(KeyType::from_name("f64"), None);
    }
}
