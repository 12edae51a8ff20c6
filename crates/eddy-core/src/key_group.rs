//! Key groups: Flink's unit of state sharding, rescaling and checkpoint layout.
//!
//! A job has `max_parallelism` key groups (fixed for the job's whole life: it is recorded in
//! checkpoints). A key belongs to key group `murmur(stable_hash(key)) % max_parallelism`, and
//! subtask `i` of an operator with parallelism `p` owns the contiguous key-group range
//! `[ceil(i * max / p), floor(((i + 1) * max - 1) / p)]`; key group `kg` is owned by subtask
//! `kg * p / max`. These are the formulas of Flink's `KeyGroupRangeAssignment`, so rescaling
//! moves whole, contiguous ranges of key groups between subtasks.

use crate::error::{EddyError, Result};
use crate::key::Key;

/// The largest `max_parallelism` allowed (Flink's upper bound, `Short.MAX_VALUE + 1`).
pub const MAX_MAX_PARALLELISM: usize = 1 << 15;

/// The default `max_parallelism` when none is configured (Flink's lower bound).
pub const DEFAULT_LOWER_MAX_PARALLELISM: usize = 128;

/// A key group index, `0 <= kg < max_parallelism`.
pub type KeyGroup = u16;

/// Flink's `MathUtils.murmurHash(int)`: one round of murmur3 on a 32-bit value, then
/// murmur3's finalizer (`fmix32`), made non-negative the way Flink does.
#[inline]
pub fn murmur_hash(code: i32) -> i32 {
    let mut h = (code as u32).wrapping_mul(0xcc9e_2d51);
    h = h.rotate_left(15);
    h = h.wrapping_mul(0x1b87_3593);
    h = h.rotate_left(13);
    h = h.wrapping_mul(5).wrapping_add(0xe654_6b64);
    h ^= 4;
    h = fmix32(h);
    let signed = h as i32;
    if signed >= 0 {
        signed
    } else if signed != i32::MIN {
        -signed
    } else {
        0
    }
}

/// murmur3's 32-bit finalizer (Flink's `MathUtils.bitMix`).
#[inline]
fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// The key group of a key hash (Flink's `computeKeyGroupForKeyHash`).
#[inline]
pub fn key_group_for_hash(key_hash: i32, max_parallelism: usize) -> KeyGroup {
    debug_assert!((1..=MAX_MAX_PARALLELISM).contains(&max_parallelism));
    (murmur_hash(key_hash) as usize % max_parallelism) as KeyGroup
}

/// The key group of `key` (Flink's `assignToKeyGroup`).
#[inline]
pub fn assign_to_key_group<K: Key>(key: &K, max_parallelism: usize) -> KeyGroup {
    key_group_for_hash(key.stable_hash(), max_parallelism)
}

/// The subtask that owns key group `kg` (Flink's `computeOperatorIndexForKeyGroup`).
#[inline]
pub fn subtask_for_key_group(max_parallelism: usize, parallelism: usize, kg: KeyGroup) -> usize {
    usize::from(kg) * parallelism / max_parallelism
}

/// Flink's default max parallelism for an operator of parallelism `p`:
/// `min(max(round_up_to_power_of_two(p + p / 2), 128), 32768)`.
pub fn default_max_parallelism(parallelism: usize) -> usize {
    (parallelism + parallelism / 2)
        .next_power_of_two()
        .clamp(DEFAULT_LOWER_MAX_PARALLELISM, MAX_MAX_PARALLELISM)
}

/// Checks that `parallelism` and `max_parallelism` can run together.
pub fn validate_parallelism(parallelism: usize, max_parallelism: usize) -> Result<()> {
    if !(1..=MAX_MAX_PARALLELISM).contains(&max_parallelism) {
        return Err(EddyError::Config(format!(
            "max_parallelism must be between 1 and {MAX_MAX_PARALLELISM}, got {max_parallelism}"
        )));
    }
    if parallelism == 0 || parallelism > max_parallelism {
        return Err(EddyError::Config(format!(
            "parallelism must be between 1 and max_parallelism ({max_parallelism}), got {parallelism}"
        )));
    }
    Ok(())
}

/// A contiguous, inclusive range of key groups: the key groups one subtask owns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct KeyGroupRange {
    start: usize,
    /// One past the last key group (so an empty range is representable).
    end_exclusive: usize,
}

impl KeyGroupRange {
    /// The range `[start, end]`, both inclusive.
    pub fn new(start: usize, end: usize) -> Self {
        KeyGroupRange {
            start,
            end_exclusive: end + 1,
        }
    }

    /// The empty range.
    pub fn empty() -> Self {
        KeyGroupRange {
            start: 0,
            end_exclusive: 0,
        }
    }

    /// The key groups subtask `index` of `parallelism` owns (Flink's
    /// `computeKeyGroupRangeForOperatorIndex`).
    pub fn for_subtask(max_parallelism: usize, parallelism: usize, index: usize) -> Self {
        if index >= parallelism {
            return Self::empty();
        }
        let start = (index * max_parallelism).div_ceil(parallelism);
        let end = ((index + 1) * max_parallelism - 1) / parallelism;
        KeyGroupRange::new(start, end)
    }

    /// First key group of the range.
    pub fn start(&self) -> usize {
        self.start
    }

    /// Last key group of the range (inclusive). Meaningless for an empty range.
    pub fn end(&self) -> usize {
        self.end_exclusive.saturating_sub(1)
    }

    /// Number of key groups in the range.
    pub fn len(&self) -> usize {
        self.end_exclusive - self.start
    }

    /// Whether the range holds no key group.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `kg` is in the range.
    pub fn contains(&self, kg: KeyGroup) -> bool {
        (self.start..self.end_exclusive).contains(&usize::from(kg))
    }

    /// The offset of `kg` inside the range, if it is in it.
    #[inline]
    pub fn offset_of(&self, kg: KeyGroup) -> Option<usize> {
        usize::from(kg)
            .checked_sub(self.start)
            .filter(|&offset| offset < self.len())
    }

    /// The key group at `offset` in the range: the inverse of [`offset_of`](Self::offset_of).
    /// `None` when `offset` is past the range's end.
    #[inline]
    pub fn key_group_at(&self, offset: usize) -> Option<KeyGroup> {
        if offset >= self.len() {
            return None;
        }
        KeyGroup::try_from(self.start + offset).ok()
    }

    /// The key groups of the range, in order.
    pub fn iter(&self) -> impl Iterator<Item = KeyGroup> {
        (self.start..self.end_exclusive).map(|kg| kg as KeyGroup)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Values computed with Flink 2.3.0's own classes:
    /// `MathUtils.murmurHash(h)` and `KeyGroupRangeAssignment.assignToKeyGroup(Long.valueOf(k), 128)`.
    #[test]
    fn murmur_and_key_groups_match_flink() {
        for (code, expected) in FLINK_MURMUR {
            assert_eq!(murmur_hash(*code), *expected, "murmurHash({code})");
        }
        for (key, expected) in FLINK_LONG_KEY_GROUPS_128 {
            assert_eq!(assign_to_key_group(key, 128), *expected, "key {key}");
        }
        for (key, expected) in FLINK_STRING_KEY_GROUPS_128 {
            assert_eq!(
                assign_to_key_group(&key.to_string(), 128),
                *expected,
                "key {key:?}"
            );
        }
    }

    const FLINK_MURMUR: &[(i32, i32)] = include!("../testdata/flink_murmur.in");
    const FLINK_LONG_KEY_GROUPS_128: &[(u64, u16)] = include!("../testdata/flink_long_kg128.in");
    const FLINK_STRING_KEY_GROUPS_128: &[(&str, u16)] =
        include!("../testdata/flink_string_kg128.in");

    #[test]
    fn subtask_ranges_match_flink_formulas() {
        // max 128, p 3: Flink gives [0,42], [43,85], [86,127].
        assert_eq!(
            KeyGroupRange::for_subtask(128, 3, 0),
            KeyGroupRange::new(0, 42)
        );
        assert_eq!(
            KeyGroupRange::for_subtask(128, 3, 1),
            KeyGroupRange::new(43, 85)
        );
        assert_eq!(
            KeyGroupRange::for_subtask(128, 3, 2),
            KeyGroupRange::new(86, 127)
        );
        assert_eq!(subtask_for_key_group(128, 3, 42), 0);
        assert_eq!(subtask_for_key_group(128, 3, 43), 1);
        assert_eq!(subtask_for_key_group(128, 3, 127), 2);
        assert!(KeyGroupRange::for_subtask(128, 3, 3).is_empty());
    }

    #[test]
    fn key_group_at_inverts_offset_of() {
        let range = KeyGroupRange::new(43, 85);
        for kg in range.iter() {
            let offset = range
                .offset_of(kg)
                .expect("a key group of the range has an offset");
            assert_eq!(range.key_group_at(offset), Some(kg));
        }
        assert_eq!(range.key_group_at(0), Some(43));
        assert_eq!(range.key_group_at(42), Some(85));
        assert_eq!(range.key_group_at(43), None);
        assert_eq!(KeyGroupRange::empty().key_group_at(0), None);
    }

    #[test]
    fn default_max_parallelism_matches_flink() {
        assert_eq!(default_max_parallelism(1), 128);
        assert_eq!(default_max_parallelism(2), 128);
        assert_eq!(default_max_parallelism(100), 256);
        assert_eq!(default_max_parallelism(1000), 2048);
        assert_eq!(default_max_parallelism(30000), 32768);
    }

    #[test]
    fn invalid_parallelism_is_a_config_error() {
        assert!(validate_parallelism(0, 128).is_err());
        assert!(validate_parallelism(129, 128).is_err());
        assert!(validate_parallelism(1, 0).is_err());
        assert!(validate_parallelism(1, MAX_MAX_PARALLELISM + 1).is_err());
        assert!(validate_parallelism(128, 128).is_ok());
    }

    #[test]
    fn one_million_keys_balance_within_a_few_percent() {
        let (p, max) = (4, 128);
        let mut per_subtask = [0usize; 4];
        for key in 0u64..1_000_000 {
            let kg = assign_to_key_group(&key, max);
            per_subtask[subtask_for_key_group(max, p, kg)] += 1;
        }
        for count in per_subtask {
            let deviation = (count as f64 - 250_000.0).abs() / 250_000.0;
            assert!(deviation < 0.03, "{per_subtask:?}");
        }
    }

    proptest! {
        #[test]
        fn ranges_are_contiguous_and_agree_with_owner(max in 1usize..=2048, p_seed in 0usize..4096) {
            let p = 1 + p_seed % max;
            let mut next = 0;
            for index in 0..p {
                let range = KeyGroupRange::for_subtask(max, p, index);
                prop_assert_eq!(range.start(), next);
                for kg in range.iter() {
                    prop_assert_eq!(subtask_for_key_group(max, p, kg), index);
                }
                next = range.start() + range.len();
            }
            prop_assert_eq!(next, max);
        }

        #[test]
        fn same_key_same_key_group(key in any::<u64>(), s in ".*") {
            prop_assert_eq!(assign_to_key_group(&key, 128), assign_to_key_group(&key, 128));
            prop_assert!(assign_to_key_group(&s.clone(), 4096) < 4096);
        }
    }
}
