//! The per-key map of the heap backend's `MapState`: a vector while small, hashed when large.
//!
//! Most keys hold few map entries (W3 holds about 20 per key). A short vector keeps them in a
//! few consecutive cache lines, which a linear scan reads faster than a hash table's scattered
//! slots; past [`INLINE_MAX`] entries the map switches to a [`ProbeTable`] for O(1) access.

use std::hash::Hash;

use crate::prefetch::prefetch_read;
use crate::probe_table::ProbeTable;

/// Entries kept in a vector before the map switches to hashing.
pub const INLINE_MAX: usize = 32;

/// A map from `UK` to `UV`, small-vector or hashed depending on its size.
#[derive(Debug, Clone)]
pub enum SmallMap<UK, UV> {
    /// Up to [`INLINE_MAX`] entries, scanned linearly.
    Inline(Vec<(UK, UV)>),
    /// More entries, hashed.
    Hashed(ProbeTable<UK, UV>),
}

impl<UK, UV> Default for SmallMap<UK, UV> {
    fn default() -> Self {
        SmallMap::Inline(Vec::new())
    }
}

impl<UK: Hash + Eq, UV> SmallMap<UK, UV> {
    /// The number of entries.
    pub fn len(&self) -> usize {
        match self {
            SmallMap::Inline(v) => v.len(),
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
            SmallMap::Inline(v) => v.iter().find(|(k, _)| k == key).map(|(_, value)| value),
            SmallMap::Hashed(t) => t.get(key),
        }
    }

    /// Sets `key` to `value`.
    #[inline]
    pub fn insert(&mut self, key: UK, value: UV) {
        match self {
            SmallMap::Inline(v) => {
                if let Some(slot) = v.iter_mut().find(|(k, _)| *k == key) {
                    slot.1 = value;
                } else if v.len() < INLINE_MAX {
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
            SmallMap::Inline(v) => v.iter_mut().find(|(k, _)| k == key).map(|(_, value)| value),
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
        if let SmallMap::Inline(v) = self {
            if v.len() >= INLINE_MAX && !v.iter().any(|(k, _)| k == key) {
                let mut table = ProbeTable::new();
                for (k, old) in v.drain(..) {
                    table.insert(k, old);
                }
                *self = SmallMap::Hashed(table);
            }
        }
        match self {
            SmallMap::Inline(v) => {
                let position = match v.iter().position(|(k, _)| k == key) {
                    Some(position) => position,
                    None => {
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
            SmallMap::Inline(v) => {
                let position = v.iter().position(|(k, _)| k == key)?;
                Some(v.swap_remove(position).1)
            }
            SmallMap::Hashed(t) => t.remove(key),
        }
    }

    /// The entries, in unspecified order.
    pub fn iter(&self) -> Box<dyn Iterator<Item = (&UK, &UV)> + '_> {
        match self {
            SmallMap::Inline(v) => Box::new(v.iter().map(|(k, value)| (k, value))),
            SmallMap::Hashed(t) => Box::new(t.iter()),
        }
    }

    /// Starts loading the first entries into the CPU caches.
    #[inline]
    pub fn prefetch(&self) {
        if let SmallMap::Inline(v) = self {
            // A linear scan reads consecutive lines; the hardware prefetcher follows the first.
            prefetch_read(v.as_ptr());
            prefetch_read(v.as_ptr().wrapping_add(4));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
