//! The per-key map of the heap backend's `MapState` and namespaced state: one entry in
//! place, a vector while small, hashed when large.
//!
//! Namespaced state (a window operator's contents) usually holds one namespace per key at a
//! time: kept in place, inside the key's table slot, it costs no second memory access. Most
//! map states hold a few entries (W3 about 20 per key): a short vector keeps them in a few
//! consecutive cache lines, which a linear scan reads faster than a hash table's scattered
//! slots; past [`INLINE_MAX`] entries the map switches to a [`ProbeTable`] for O(1) access.
//!
//! The vector form carries a [`KeyFilter`], a 64-bit Bloom filter of its keys, so that a
//! lookup of an absent key usually reads no entry at all. A window operator's key holds
//! a dozen pending windows when one input runs ahead of the watermark (W5 at parallelism 2),
//! and nearly every element opens a new one: without the filter, every such `add` read all
//! the key's windows (six cache lines) to learn that its window was not there.

use std::hash::{BuildHasher, Hash};

use rustc_hash::FxBuildHasher;

use crate::prefetch::prefetch_read;
use crate::probe_table::ProbeTable;

/// Entries kept in a vector before the map switches to hashing.
pub const INLINE_MAX: usize = 32;

/// A map from `UK` to `UV`, small-vector or hashed depending on its size.
#[derive(Debug, Clone)]
pub enum SmallMap<UK, UV> {
    /// Exactly one entry, in place.
    One(UK, UV),
    /// Up to [`INLINE_MAX`] entries (none: the empty map), scanned linearly, and a filter
    /// that has every entry's key (and may have keys removed since).
    Inline(Vec<(UK, UV)>, KeyFilter),
    /// More entries, hashed.
    Hashed(ProbeTable<UK, UV>),
}

impl<UK, UV> Default for SmallMap<UK, UV> {
    fn default() -> Self {
        SmallMap::Inline(Vec::new(), KeyFilter::EMPTY)
    }
}

/// A 64-bit Bloom filter over the keys of a vector-form [`SmallMap`]: two bits per key, so
/// with a dozen keys about one absent key in ten still scans. No false negatives: a key of
/// the map always has its bits set. Removals leave their bits (another key may share them)
/// until the map rebuilds the filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyFilter(u64);

impl KeyFilter {
    /// The filter of no key.
    pub const EMPTY: KeyFilter = KeyFilter(0);

    /// The two bits of `key`: the top bits of its Fx hash, the best mixed.
    #[inline]
    fn bits_of<K: Hash>(key: &K) -> u64 {
        let hash = FxBuildHasher.hash_one(key);
        (1u64 << (hash >> 58)) | (1u64 << ((hash >> 52) & 63))
    }

    /// Whether `key` may be in the map (`false`: it is not).
    #[inline]
    pub fn may_contain<K: Hash>(&self, key: &K) -> bool {
        let bits = Self::bits_of(key);
        self.0 & bits == bits
    }

    /// Adds `key`.
    #[inline]
    pub fn insert<K: Hash>(&mut self, key: &K) {
        self.0 |= Self::bits_of(key);
    }

    /// The filter of exactly these entries' keys.
    pub(crate) fn of<K: Hash, V>(entries: &[(K, V)]) -> Self {
        let mut filter = KeyFilter::EMPTY;
        for (key, _) in entries {
            filter.insert(key);
        }
        filter
    }

    /// Whether removals left so many stale bits that rebuilding pays: more than twice the
    /// bits `len` keys can set.
    fn is_stale(&self, len: usize) -> bool {
        self.0.count_ones() as usize > 4 * len
    }
}

impl<UK: Hash + Eq, UV> SmallMap<UK, UV> {
    /// The number of entries.
    pub fn len(&self) -> usize {
        match self {
            SmallMap::One(..) => 1,
            SmallMap::Inline(v, _) => v.len(),
            SmallMap::Hashed(t) => t.len(),
        }
    }

    /// Whether the map has no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value of `key`.
    #[inline]
    pub fn get(&self, key: &UK) -> Option<&UV> {
        match self {
            SmallMap::One(k, value) => (k == key).then_some(value),
            SmallMap::Inline(v, filter) => {
                if !filter.may_contain(key) {
                    return None;
                }
                v.iter().find(|(k, _)| k == key).map(|(_, value)| value)
            }
            SmallMap::Hashed(t) => t.get(key),
        }
    }

    /// Sets `key` to `value`.
    #[inline]
    pub fn insert(&mut self, key: UK, value: UV) {
        match self {
            SmallMap::One(k, old) if *k == key => *old = value,
            SmallMap::One(..) => {
                self.spill_one();
                if let SmallMap::Inline(entries, filter) = self {
                    filter.insert(&key);
                    entries.push((key, value));
                }
            }
            SmallMap::Inline(v, _) if v.is_empty() => *self = SmallMap::One(key, value),
            SmallMap::Inline(v, filter) => {
                let slot = if filter.may_contain(&key) {
                    v.iter_mut().find(|(k, _)| *k == key)
                } else {
                    None
                };
                if let Some(slot) = slot {
                    slot.1 = value;
                } else if v.len() < INLINE_MAX {
                    filter.insert(&key);
                    v.push((key, value));
                } else {
                    let mut table = ProbeTable::new();
                    for (k, old) in v.drain(..) {
                        table.insert(k, old);
                    }
                    table.insert(key, value);
                    *self = SmallMap::Hashed(table);
                }
            }
            SmallMap::Hashed(t) => {
                t.insert(key, value);
            }
        }
    }

    /// The value of `key`, mutably.
    #[inline]
    pub fn get_mut(&mut self, key: &UK) -> Option<&mut UV> {
        match self {
            SmallMap::One(k, value) => (k == key).then_some(value),
            SmallMap::Inline(v, filter) => {
                if !filter.may_contain(key) {
                    return None;
                }
                v.iter_mut().find(|(k, _)| k == key).map(|(_, value)| value)
            }
            SmallMap::Hashed(t) => t.get_mut(key),
        }
    }

    /// The value of `key`, inserted with `default` first if absent; `make_key` makes the
    /// owned key only then.
    pub fn get_or_insert_with(
        &mut self,
        key: &UK,
        make_key: impl FnOnce() -> UK,
        default: impl FnOnce() -> UV,
    ) -> &mut UV {
        if self.is_empty() {
            *self = SmallMap::One(make_key(), default());
            return match self {
                SmallMap::One(_, value) => value,
                _ => unreachable!("the map was set to one entry just above"),
            };
        }
        if matches!(self, SmallMap::One(k, _) if k != key) {
            self.spill_one();
        }
        let found = match self {
            SmallMap::Inline(v, filter) if filter.may_contain(key) => {
                v.iter().position(|(k, _)| k == key)
            }
            _ => None,
        };
        if let SmallMap::Inline(v, _) = self {
            if found.is_none() && v.len() >= INLINE_MAX {
                let mut table = ProbeTable::new();
                for (k, old) in v.drain(..) {
                    table.insert(k, old);
                }
                *self = SmallMap::Hashed(table);
            }
        }
        match self {
            // `key`'s entry (another key was spilled above).
            SmallMap::One(_, value) => value,
            SmallMap::Inline(v, filter) => {
                let position = match found {
                    Some(position) => position,
                    None => {
                        filter.insert(key);
                        v.push((make_key(), default()));
                        v.len() - 1
                    }
                };
                &mut v[position].1
            }
            SmallMap::Hashed(t) => t.get_or_insert_with(key, make_key, default),
        }
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &UK) -> Option<UV> {
        match self {
            SmallMap::One(k, _) if k == key => match std::mem::take(self) {
                SmallMap::One(_, value) => Some(value),
                _ => None,
            },
            SmallMap::One(..) => None,
            SmallMap::Inline(v, filter) => {
                if !filter.may_contain(key) {
                    return None;
                }
                let position = v.iter().position(|(k, _)| k == key)?;
                let (_, value) = v.swap_remove(position);
                if filter.is_stale(v.len()) {
                    *filter = KeyFilter::of(v);
                }
                Some(value)
            }
            SmallMap::Hashed(t) => t.remove(key),
        }
    }

    /// The entries, in unspecified order.
    pub fn iter(&self) -> Box<dyn Iterator<Item = (&UK, &UV)> + '_> {
        match self {
            SmallMap::One(k, value) => Box::new(std::iter::once((k, value))),
            SmallMap::Inline(v, _) => Box::new(v.iter().map(|(k, value)| (k, value))),
            SmallMap::Hashed(t) => Box::new(t.iter()),
        }
    }

    /// The entries with their values mutable, in unspecified order.
    pub fn iter_mut(&mut self) -> Box<dyn Iterator<Item = (&UK, &mut UV)> + '_> {
        match self {
            SmallMap::One(k, value) => Box::new(std::iter::once((&*k, value))),
            SmallMap::Inline(v, _) => Box::new(v.iter_mut().map(|(k, value)| (&*k, value))),
            SmallMap::Hashed(t) => Box::new(t.iter_mut()),
        }
    }

    /// Starts loading the first entries and the last one into the CPU caches.
    #[inline]
    pub fn prefetch(&self) {
        if let SmallMap::Inline(v, _) = self {
            // A linear scan reads consecutive lines; the hardware prefetcher follows the first
            // two. Prefetches past the entries would only take memory bandwidth from others.
            let len = v.len();
            prefetch_read(v.as_ptr());
            if len > 4 {
                prefetch_read(v.as_ptr().wrapping_add(4));
            }
            if len > 1 {
                // The newest entry, where the next one goes: namespaced state (windows) adds
                // to its newest namespace or appends one.
                prefetch_read(v.as_ptr().wrapping_add(len - 1));
            }
        }
    }

    /// Turns a one-entry map into a vector map with room to grow; other maps stay as they
    /// are.
    fn spill_one(&mut self) {
        if let SmallMap::One(..) = self {
            if let SmallMap::One(k, value) = std::mem::take(self) {
                let mut entries = Vec::with_capacity(4);
                entries.push((k, value));
                let filter = KeyFilter::of(&entries);
                *self = SmallMap::Inline(entries, filter);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Every operation against a `HashMap` model, through the one-entry, vector and hashed
    /// forms and back (a removal from one entry leaves the empty map).
    #[test]
    fn behaves_like_a_hash_map_through_every_form() {
        let mut m: SmallMap<u64, u64> = SmallMap::default();
        let mut model: HashMap<u64, u64> = HashMap::new();
        let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
        for step in 0..20_000u64 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            // Mostly few keys (the one-entry form), sometimes many (vector, hashed).
            let range = if step % 5000 < 2500 { 3 } else { 60 };
            let key = seed % range;
            match (seed >> 32) % 5 {
                0 => {
                    m.insert(key, step);
                    model.insert(key, step);
                }
                1 => *m.get_or_insert_with(&key, || key, || 0) += 1,
                2 => assert_eq!(m.remove(&key), model.remove(&key)),
                3 => {
                    if let (Some(v), Some(expected)) = (m.get_mut(&key), model.get_mut(&key)) {
                        *v += 2;
                        *expected += 2;
                    }
                }
                _ => assert_eq!(m.get(&key), model.get(&key)),
            }
            if (seed >> 32) % 5 == 1 {
                *model.entry(key).or_insert(0) += 1;
            }
            if step % 97 == 0 {
                m.iter_mut().for_each(|(_, v)| *v += 1);
                model.values_mut().for_each(|v| *v += 1);
                let mut all: Vec<(u64, u64)> = m.iter().map(|(k, v)| (*k, *v)).collect();
                all.sort_unstable();
                let mut expected: Vec<(u64, u64)> = model.iter().map(|(k, v)| (*k, *v)).collect();
                expected.sort_unstable();
                assert_eq!(all, expected);
            }
            assert_eq!(m.len(), model.len());
            if model.len() == 1 && step % 7 == 0 {
                let mut fresh = SmallMap::default();
                let (k, v) = model
                    .iter()
                    .next()
                    .map(|(k, v)| (*k, *v))
                    .unwrap_or_default();
                fresh.insert(k, v);
                assert!(matches!(fresh, SmallMap::One(..)));
            }
        }
        let mut entries: Vec<(u64, u64)> = m.iter().map(|(k, v)| (*k, *v)).collect();
        entries.sort_unstable();
        let mut expected: Vec<(u64, u64)> = model.into_iter().collect();
        expected.sort_unstable();
        assert_eq!(entries, expected);
    }

    #[test]
    fn the_filter_has_every_key_and_drops_removed_ones_once_stale() {
        let mut m = SmallMap::default();
        for k in 0..20u64 {
            *m.get_or_insert_with(&k, || k, || 0) += 1;
        }
        let SmallMap::Inline(entries, filter) = &m else {
            panic!("20 entries are kept in a vector");
        };
        assert!(entries.iter().all(|(k, _)| filter.may_contain(k)));
        for k in 0..18u64 {
            assert_eq!(m.remove(&k), Some(1));
        }
        let SmallMap::Inline(entries, filter) = &m else {
            panic!("removals keep the vector form");
        };
        assert_eq!(entries.len(), 2);
        assert!(
            filter.0.count_ones() <= 4 * 2,
            "a stale filter is rebuilt: {} bits for 2 keys",
            filter.0.count_ones()
        );
        assert!(filter.may_contain(&18u64) && filter.may_contain(&19u64));
        assert_eq!(m.get(&18), Some(&1));
        assert_eq!(m.get(&3), None);
    }

    #[test]
    fn get_or_insert_switches_to_hashing_at_the_limit() {
        let mut m = SmallMap::default();
        for k in 0..(INLINE_MAX as u64 + 5) {
            *m.get_or_insert_with(&k, || k, || 0) += k;
            *m.get_or_insert_with(&k, || k, || 0) += 1;
            if let Some(v) = m.get_mut(&k) {
                *v *= 2;
            }
        }
        assert!(matches!(m, SmallMap::Hashed(_)));
        for k in 0..(INLINE_MAX as u64 + 5) {
            assert_eq!(m.get(&k), Some(&((k + 1) * 2)));
        }
    }

    #[test]
    fn switches_to_hashing_past_the_inline_limit_and_keeps_entries() {
        let mut m = SmallMap::default();
        for k in 0..(INLINE_MAX as u64 + 10) {
            m.insert(k, k * 2);
        }
        assert!(matches!(m, SmallMap::Hashed(_)));
        assert_eq!(m.len(), INLINE_MAX + 10);
        for k in 0..(INLINE_MAX as u64 + 10) {
            assert_eq!(m.get(&k), Some(&(k * 2)));
        }
        assert_eq!(m.remove(&3), Some(6));
        assert_eq!(m.get(&3), None);
        m.insert(1, 7);
        assert_eq!(m.get(&1), Some(&7));
        *m.get_or_insert_with(&1, || 1, || 0) += 1;
        assert_eq!(m.get(&1), Some(&8));
        assert_eq!(*m.get_or_insert_with(&3, || 3, || 9), 9);
        m.prefetch();
    }
}
