//! A linear-probing hash table whose lookups can be warmed into the CPU caches cheaply.
//!
//! The heap backend's tables hold up to millions of keys per subtask, far more than the CPU
//! caches, so a lookup usually costs a memory access. The runtime hides that latency by
//! *prefetching* the next keys of a batch while it processes the current one
//! ([`ProbeTable::prefetch`]): with linear probing a key's entry is at (or right after) its
//! home slot, whose address is known from the hash alone, so one prefetch per key suffices. A
//! general-purpose map (`std`'s SwissTable) needs two dependent loads (control bytes, then the
//! entry) and does not expose the slot address.
//!
//! Guarantees: the load factor stays at most 3/4, so every probe sequence ends at an empty
//! slot; removal shifts later entries back (no tombstones), so lookups never slow down with
//! churn. Iteration order is unspecified.

use std::hash::{BuildHasher, Hash};

use rustc_hash::FxBuildHasher;

use crate::prefetch::prefetch_value;

/// The smallest number of slots of a non-empty table.
const MIN_SLOTS: usize = 8;

/// A hash map from `K` to `V` with linear probing and backward-shift deletion.
#[derive(Debug)]
pub struct ProbeTable<K, V> {
    slots: Vec<Option<(K, V)>>,
    len: usize,
}

impl<K: Clone, V: Clone> Clone for ProbeTable<K, V> {
    fn clone(&self) -> Self {
        ProbeTable {
            slots: self.slots.clone(),
            len: self.len,
        }
    }

    /// Reuses `self`'s slot array when it is large enough, sparing the allocation and the
    /// kernel's zeroing of freshly mapped pages. (Snapshots no longer clone whole tables:
    /// `ShardedTable::freeze` copies entries; this stays correct for any caller.)
    fn clone_from(&mut self, source: &Self) {
        self.slots.clone_from(&source.slots);
        self.len = source.len;
    }
}

impl<K, V> Default for ProbeTable<K, V> {
    fn default() -> Self {
        ProbeTable {
            slots: Vec::new(),
            len: 0,
        }
    }
}

impl<K: Hash + Eq, V> ProbeTable<K, V> {
    /// An empty table (allocates on first insert).
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table has no entry.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    fn mask(&self) -> usize {
        self.slots.len().wrapping_sub(1)
    }

    /// The slot where `key`'s probe sequence starts (Fibonacci hashing of the Fx hash, so the
    /// well-mixed high bits pick the slot).
    #[inline]
    fn home(&self, key: &K) -> usize {
        self.home_of(key)
    }

    /// The home slot of anything that hashes as a key does.
    #[inline]
    fn home_of<Q: Hash + ?Sized>(&self, key: &Q) -> usize {
        let hash = FxBuildHasher
            .hash_one(key)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let bits = self.slots.len().trailing_zeros();
        if bits == 0 {
            0
        } else {
            (hash >> (64 - bits)) as usize
        }
    }

    #[inline]
    fn find(&self, key: &K) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let mask = self.mask();
        let mut i = self.home(key);
        loop {
            match &self.slots[i] {
                None => return None,
                Some((k, _)) if k == key => return Some(i),
                Some(_) => i = (i + 1) & mask,
            }
        }
    }

    /// Starts loading `key`'s home slot into the CPU caches; changes nothing.
    #[inline]
    pub fn prefetch(&self, key: &K) {
        if !self.slots.is_empty() {
            prefetch_value(self.slots.as_ptr().wrapping_add(self.home(key)));
        }
    }

    /// Like [`prefetch`](Self::prefetch) for a stand-in that hashes exactly as the key
    /// does (a tuple of references to the parts of a tuple key, say), so that the caller
    /// need not build the key. A stand-in that hashes differently only warms the wrong slot.
    #[inline]
    pub fn prefetch_hashed<Q: Hash + ?Sized>(&self, stand_in: &Q) {
        if !self.slots.is_empty() {
            prefetch_value(self.slots.as_ptr().wrapping_add(self.home_of(stand_in)));
        }
    }

    /// The value of `key`.
    #[inline]
    pub fn get(&self, key: &K) -> Option<&V> {
        let i = self.find(key)?;
        self.slots[i].as_ref().map(|(_, v)| v)
    }

    /// The value of `key`, mutably.
    #[inline]
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let i = self.find(key)?;
        self.slots[i].as_mut().map(|(_, v)| v)
    }

    /// Whether `key` has a value.
    pub fn contains_key(&self, key: &K) -> bool {
        self.find(key).is_some()
    }

    /// Sets `key` to `value`, returning the previous value.
    #[inline]
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        if let Some(i) = self.find(&key) {
            return self.slots[i]
                .as_mut()
                .map(|(_, v)| std::mem::replace(v, value));
        }
        self.insert_new(key, value);
        None
    }

    /// The value of `key`, inserting `make_key()` -> `default()` first if it is absent
    /// (so a key is cloned only when it is inserted).
    #[inline]
    pub fn get_or_insert_with(
        &mut self,
        key: &K,
        make_key: impl FnOnce() -> K,
        default: impl FnOnce() -> V,
    ) -> &mut V {
        let i = match self.find(key) {
            Some(i) => i,
            None => self.insert_new(make_key(), default()),
        };
        match self.slots[i].as_mut() {
            Some((_, v)) => v,
            None => unreachable!("slot {i} was found or filled just above"),
        }
    }

    /// Inserts a key known to be absent; returns its slot.
    fn insert_new(&mut self, key: K, value: V) -> usize {
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow();
        }
        let mask = self.mask();
        let mut i = self.home(&key);
        while self.slots[i].is_some() {
            i = (i + 1) & mask;
        }
        self.slots[i] = Some((key, value));
        self.len += 1;
        i
    }

    fn grow(&mut self) {
        let new_len = (self.slots.len() * 2).max(MIN_SLOTS);
        let old = std::mem::replace(&mut self.slots, (0..new_len).map(|_| None).collect());
        self.len = 0;
        for (key, value) in old.into_iter().flatten() {
            self.insert_new(key, value);
        }
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let mut hole = self.find(key)?;
        let removed = self.slots[hole].take().map(|(_, v)| v);
        self.len -= 1;
        // Backward-shift: move later entries of the cluster into the hole when their home
        // allows it, so no lookup ever has to skip a tombstone.
        let mask = self.mask();
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let Some((k, _)) = &self.slots[j] else { break };
            let home = self.home(k);
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(hole) & mask) {
                self.slots[hole] = self.slots[j].take();
                hole = j;
            }
        }
        removed
    }

    /// The number of slots (a bound on [`slot_mut`](Self::slot_mut)'s index).
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// The entry in slot `index`, if it holds one: for a sweep over the table that changes
    /// values in place (a CLOCK hand). Removals move entries between slots, so an index
    /// says nothing across them.
    pub fn slot_mut(&mut self, index: usize) -> Option<(&K, &mut V)> {
        self.slots.get_mut(index)?.as_mut().map(|(k, v)| (&*k, v))
    }

    /// The entries with mutable values, in unspecified order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> {
        self.slots.iter_mut().flatten().map(|(k, v)| (&*k, v))
    }

    /// Removes every entry, keeping the allocation.
    pub fn clear(&mut self) {
        self.slots.iter_mut().for_each(|slot| *slot = None);
        self.len = 0;
    }

    /// The entries, in unspecified order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.slots
            .iter()
            .filter_map(|slot| slot.as_ref().map(|(k, v)| (k, v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[test]
    fn basic_operations() {
        let mut t = ProbeTable::new();
        assert_eq!(t.get(&1u64), None);
        assert_eq!(t.insert(1u64, "a"), None);
        assert_eq!(t.insert(1, "b"), Some("a"));
        assert_eq!(t.get(&1), Some(&"b"));
        *t.get_or_insert_with(&2, || 2, || "c") = "d";
        assert_eq!(t.get(&2), Some(&"d"));
        assert_eq!(t.len(), 2);
        assert_eq!(t.remove(&1), Some("b"));
        assert_eq!(t.remove(&1), None);
        t.clear();
        assert!(t.is_empty());
        t.prefetch(&7);
    }

    /// `prefetch_hashed` relies on a tuple of references hashing as the tuple of values, so
    /// it warms the slot where the key's probe starts.
    #[test]
    fn a_tuple_of_references_has_the_home_slot_of_the_tuple() {
        let mut t: ProbeTable<(String, (u64, u64), u64), u8> = ProbeTable::new();
        for i in 0..1000u64 {
            t.insert((format!("key-{i}"), (i, i * 7), i * 13), 0);
        }
        for i in 0..1000u64 {
            let key = (format!("key-{i}"), (i, i * 7), i * 13);
            assert_eq!(t.home_of(&(&key.0, &key.1, &key.2)), t.home(&key));
        }
    }

    proptest! {
        #[test]
        fn behaves_like_a_hash_map(ops in proptest::collection::vec((0u8..4, 0u16..64, any::<u32>()), 1..2000)) {
            let mut table = ProbeTable::new();
            let mut model = HashMap::new();
            for (op, key, value) in ops {
                match op {
                    0 | 1 => prop_assert_eq!(table.insert(key, value), model.insert(key, value)),
                    2 => prop_assert_eq!(table.remove(&key), model.remove(&key)),
                    _ => prop_assert_eq!(table.get(&key), model.get(&key)),
                }
                prop_assert_eq!(table.len(), model.len());
            }
            for key in 0u16..64 {
                prop_assert_eq!(table.get(&key), model.get(&key));
            }
            let mut entries: Vec<_> = table.iter().map(|(k, v)| (*k, *v)).collect();
            entries.sort_unstable();
            let mut expected: Vec<_> = model.into_iter().collect();
            expected.sort_unstable();
            prop_assert_eq!(entries, expected);
        }
    }
}
