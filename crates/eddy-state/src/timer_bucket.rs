//! The timers of one timestamp in a heap timer queue: deduplicated, in registration order.
//!
//! Timers cluster on few timestamps: every window of a tumbling window operator that ends at
//! the same minute has its timer at the same millisecond, so a queue of ten million window
//! timers may hold only a few hundred distinct timestamps. A [`TimerBucket`] keeps one
//! timestamp's timers as an append-only log with a small hash index of log positions on the
//! side, so that
//! * the timestamp is stored once, and a timer costs its key, key group offset and the
//!   position of its namespace in the log plus one 8-byte index slot (about 40 bytes for a
//!   window timer, against about 175 for a B-tree place plus a dedup-table entry per timer);
//! * a namespace is stored once per run of registrations under it: a tumbling or sliding
//!   window operator's timers at one timestamp all belong to the one window ending there;
//! * registering a timer probes the index of its own bucket, which for clustered timestamps
//!   is small and hot in the CPU caches, not a table of every timer in the subtask;
//! * firing reads the log front to back, consecutive memory, instead of a cache miss per
//!   timer;
//! * a caller that knows a timer is new ([`add_new`](TimerBucket::add_new): a window
//!   operator registering the timer of a window's first element) appends it without a
//!   lookup, and the index catches up only when a lookup needs it: a bucket filled only that
//!   way never builds one.
//!
//! Guarantees: at most one live timer per (key, namespace); [`pop_front`](TimerBucket::pop_front)
//! returns live timers in the order of their (latest) registration; a deleted timer is marked
//! in the log and skipped. The log and index are rebuilt without the marks once deleted
//! timers outnumber live ones, so memory stays proportional to the live timers.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hash};

use rustc_hash::FxBuildHasher;

use crate::prefetch::prefetch_read;

/// A log entry's key group offset that marks the timer deleted.
const DELETED: u32 = u32::MAX;
/// Buckets with at most this many log entries find a timer by scanning the log; larger ones
/// hash (the index would cost more than the scan saves).
const SCAN_MAX: usize = 8;
/// Low bits of an index slot: the log position plus one (0 marks an empty slot).
const POSITION_BITS: u32 = 40;
const POSITION_MASK: u64 = (1 << POSITION_BITS) - 1;
/// Deleted entries a bucket keeps in any case before it compacts.
const DELETED_SLACK: usize = 16;
/// Namespaces past those of the log's entries a bucket keeps before it compacts them.
const NAMESPACE_SLACK: usize = 64;
/// The most namespaces a bucket holds before it compacts them (positions are `u32`). Only
/// a bucket with over two billion live timers, each under a namespace other than its
/// predecessor's, could stay above it after compacting: some 64 GB of timers at a single
/// timestamp.
const NAMESPACES_MAX: usize = u32::MAX as usize / 2;

/// One registered timer of a bucket: its key group offset (or [`DELETED`]), the position of
/// its namespace in the bucket's `namespaces`, and its key.
#[derive(Debug, Clone)]
struct Entry<K> {
    offset: u32,
    namespace: u32,
    key: K,
}

/// The timers of one timestamp; see the module docs.
#[derive(Debug)]
pub(crate) struct TimerBucket<K, N> {
    /// Registered timers, oldest first; deleted ones are marked, not removed.
    log: VecDeque<Entry<K>>,
    /// The namespaces of the log's entries, one per run of consecutive registrations under
    /// the same namespace; entries' positions into it never decrease along the log. May
    /// hold namespaces of popped or deleted entries until the next compaction.
    namespaces: Vec<N>,
    /// The position of `log[0]`: positions count every entry ever appended since the last
    /// rebuild, so those of popped entries (below `base`) mean "gone" in the index.
    base: u64,
    /// Open addressing over log positions: `hash tag << POSITION_BITS | position + 1`, 0 for
    /// an empty slot. Empty while the log is short enough to scan.
    index: Vec<u64>,
    /// Index slots that are not empty (some point below `base`: reusable).
    used: usize,
    /// Entries at the back of the log that [`add_new`](Self::add_new) appended and the
    /// index does not have yet (see [`catch_up`](Self::catch_up)).
    unindexed: usize,
    /// Live timers in the log.
    live: usize,
}

/// Where a lookup found a timer's slot, or where its slot would go.
enum Lookup {
    /// Live in the log at this index (and this index slot, if indexed).
    Live { at: usize },
    /// Not live; an insertion goes to this index slot (if indexed), which is either empty,
    /// reusable, or the slot of the same timer's deleted entry.
    Absent { slot: Option<usize>, fresh: bool },
}

impl<K: Hash + Eq, N: Hash + Eq + Clone> TimerBucket<K, N> {
    /// An empty bucket.
    pub(crate) fn new() -> Self {
        TimerBucket {
            log: VecDeque::with_capacity(1),
            namespaces: Vec::new(),
            base: 0,
            index: Vec::new(),
            used: 0,
            unindexed: 0,
            live: 0,
        }
    }

    /// The number of live timers.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// Whether no timer is live.
    pub(crate) fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Registers (`key`, `namespace`) in the key group at `offset`; returns `false` (and
    /// drops the arguments) if it is already registered.
    pub(crate) fn add(&mut self, offset: u32, key: K, namespace: N) -> bool {
        self.catch_up();
        let hash = hash_of(&key, &namespace);
        let slot = match self.lookup(&key, &namespace, hash) {
            Lookup::Live { .. } => return false,
            Lookup::Absent { slot, fresh } => {
                if fresh {
                    self.used += 1;
                }
                slot
            }
        };
        let position = self.append(offset, key, namespace);
        if let Some(slot) = slot {
            self.index[slot] = tag(hash) | (position + 1);
        }
        let indexed = !self.index.is_empty();
        let crowded = self.used * 4 > self.index.len() * 3;
        let unindexed_long = !indexed && self.log.len() > SCAN_MAX;
        if crowded || unindexed_long || self.worn(position) {
            self.rebuild();
        }
        true
    }

    /// Registers (`key`, `namespace`) in the key group at `offset` without looking for it:
    /// the caller knows it is not registered. O(1) and touches no index; the index takes the
    /// timer when the next [`add`](Self::add) or [`remove`](Self::remove) looks something
    /// up. A timer registered twice this way is popped twice.
    pub(crate) fn add_new(&mut self, offset: u32, key: K, namespace: N) {
        let position = self.append(offset, key, namespace);
        self.unindexed += 1;
        if self.worn(position) {
            self.rebuild();
        }
    }

    /// Appends a live entry to the log; returns its position.
    fn append(&mut self, offset: u32, key: K, namespace: N) -> u64 {
        let position = self.base + self.log.len() as u64;
        let namespace = self.intern(namespace);
        self.log.push_back(Entry {
            offset,
            namespace,
            key,
        });
        self.live += 1;
        position
    }

    /// Whether positions or namespace positions near their limits: positions stay below
    /// 2^40 (one trillion appends since the last rebuild), namespace positions below 2^32.
    fn worn(&self, position: u64) -> bool {
        position + 1 >= POSITION_MASK || self.namespaces.len() >= NAMESPACES_MAX
    }

    /// Makes lookups see every entry: indexes those [`add_new`](Self::add_new) appended,
    /// or rebuilds when they would crowd the index or the log outgrew scanning.
    fn catch_up(&mut self) {
        if self.unindexed == 0 {
            return;
        }
        if self.index.is_empty() || (self.used + self.unindexed) * 4 > self.index.len() * 3 {
            if self.index.is_empty() && self.log.len() <= SCAN_MAX {
                // A short log is scanned: nothing to index.
                self.unindexed = 0;
            } else {
                self.rebuild();
            }
            return;
        }
        let first = self.log.len() - self.unindexed;
        for at in first..self.log.len() {
            if let Some((slot, value, fresh)) = self.slot_for_unindexed(at) {
                self.used += usize::from(fresh);
                self.index[slot] = value;
            }
        }
        self.unindexed = 0;
    }

    /// The index slot and slot value for the unindexed log entry at `at`, and whether the
    /// slot is empty: the first empty slot of its probe, or one the probe may reuse (that of
    /// a popped entry, or of the same timer's deleted entry: a timer has one slot).
    fn slot_for_unindexed(&self, at: usize) -> Option<(usize, u64, bool)> {
        let entry = self.log.get(at)?;
        let namespace = self.namespaces.get(entry.namespace as usize)?;
        let hash = hash_of(&entry.key, namespace);
        let value = tag(hash) | (self.base + at as u64 + 1);
        let mask = self.index.len() - 1;
        let mut slot = self.home(hash);
        loop {
            let current = self.index[slot];
            if current == 0 {
                return Some((slot, value, true));
            }
            match ((current & POSITION_MASK) - 1).checked_sub(self.base) {
                None => return Some((slot, value, false)),
                Some(old) if current & !POSITION_MASK == tag(hash) => {
                    let same = self
                        .log
                        .get(old as usize)
                        .is_some_and(|old| self.is_timer(old, &entry.key, namespace));
                    if same {
                        return Some((slot, value, false));
                    }
                }
                Some(_) => {}
            }
            slot = (slot + 1) & mask;
        }
    }

    /// Deletes the timer (`key`, `namespace`); returns whether it was registered.
    pub(crate) fn remove(&mut self, key: &K, namespace: &N) -> bool {
        self.catch_up();
        let Lookup::Live { at } = self.lookup(key, namespace, hash_of(key, namespace)) else {
            return false;
        };
        if let Some(entry) = self.log.get_mut(at) {
            entry.offset = DELETED;
        }
        self.live -= 1;
        let deleted = self.log.len() - self.live;
        if deleted > DELETED_SLACK && deleted > self.live {
            self.rebuild();
        }
        true
    }

    /// Takes the oldest live timer: (key group offset, key, namespace).
    pub(crate) fn pop_front(&mut self) -> Option<(u32, K, N)> {
        while let Some(entry) = self.log.pop_front() {
            // Its index slot now points below `base`: reusable, never compared.
            self.base += 1;
            // Entries not indexed are the log's last ones.
            self.unindexed = self.unindexed.min(self.log.len());
            if entry.offset == DELETED {
                continue;
            }
            let namespace = self.namespaces.get(entry.namespace as usize).cloned();
            if self.namespaces.len() > self.log.len() * 2 + NAMESPACE_SLACK {
                self.compact_namespaces();
            }
            // Every entry's namespace is in `namespaces` (see `intern`).
            let namespace = namespace?;
            self.live -= 1;
            return Some((entry.offset, entry.key, namespace));
        }
        None
    }

    /// The live timers, oldest first: (key group offset, key, namespace).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &K, &N)> {
        self.log
            .iter()
            .filter(|entry| entry.offset != DELETED)
            .filter_map(|entry| {
                let namespace = self.namespaces.get(entry.namespace as usize)?;
                Some((entry.offset, &entry.key, namespace))
            })
    }

    /// Entries in the log, deleted ones included (for tests of compaction).
    #[cfg(test)]
    pub(crate) fn log_len(&self) -> usize {
        self.log.len()
    }

    /// Starts loading the index slot a registration of (`key`, `namespace`) probes first.
    pub(crate) fn prefetch(&self, key: &K, namespace: &N) {
        if !self.index.is_empty() {
            let home = self.home(hash_of(key, namespace));
            prefetch_read(self.index.as_ptr().wrapping_add(home));
        }
    }

    fn lookup(&self, key: &K, namespace: &N, hash: u64) -> Lookup {
        if self.index.is_empty() {
            let at = self
                .log
                .iter()
                .position(|entry| entry.offset != DELETED && self.is_timer(entry, key, namespace));
            return match at {
                Some(at) => Lookup::Live { at },
                None => Lookup::Absent {
                    slot: None,
                    fresh: false,
                },
            };
        }
        let mask = self.index.len() - 1;
        let mut reusable = None;
        let mut slot = self.home(hash);
        loop {
            let value = self.index[slot];
            if value == 0 {
                return Lookup::Absent {
                    slot: Some(reusable.unwrap_or(slot)),
                    fresh: reusable.is_none(),
                };
            }
            let position = (value & POSITION_MASK) - 1;
            match position.checked_sub(self.base) {
                // The entry was popped: the slot can take a new timer once the probe shows
                // the timer is nowhere further on.
                None => {
                    reusable.get_or_insert(slot);
                }
                Some(at) if value & !POSITION_MASK == tag(hash) => {
                    let at = at as usize;
                    if let Some(entry) = self.log.get(at) {
                        if self.is_timer(entry, key, namespace) {
                            // A timer has one slot: a deleted one is registered again in it.
                            return if entry.offset == DELETED {
                                Lookup::Absent {
                                    slot: Some(slot),
                                    fresh: false,
                                }
                            } else {
                                Lookup::Live { at }
                            };
                        }
                    }
                }
                Some(_) => {}
            }
            slot = (slot + 1) & mask;
        }
    }

    /// Drops deleted entries from the log and rebuilds the index (or none, for a short log),
    /// at most half full.
    fn rebuild(&mut self) {
        self.log.retain(|entry| entry.offset != DELETED);
        self.compact_namespaces();
        self.base = 0;
        self.used = 0;
        self.unindexed = 0;
        self.index.clear();
        if self.log.len() <= SCAN_MAX {
            self.index.shrink_to_fit();
            return;
        }
        let slots = (self.log.len() * 2).next_power_of_two();
        self.index.resize(slots, 0);
        let mask = slots - 1;
        for (position, entry) in self.log.iter().enumerate() {
            let Some(namespace) = self.namespaces.get(entry.namespace as usize) else {
                continue;
            };
            let hash = hash_of(&entry.key, namespace);
            let mut slot = self.home(hash);
            while self.index[slot] != 0 {
                slot = (slot + 1) & mask;
            }
            self.index[slot] = tag(hash) | (position as u64 + 1);
        }
        self.used = self.log.len();
    }

    /// Whether `entry` is the timer (`key`, `namespace`), deleted or not.
    fn is_timer(&self, entry: &Entry<K>, key: &K, namespace: &N) -> bool {
        entry.key == *key
            && self
                .namespaces
                .get(entry.namespace as usize)
                .is_some_and(|n| n == namespace)
    }

    /// The position of `namespace` for a new entry: the last one's if equal (a run), else
    /// a new one.
    fn intern(&mut self, namespace: N) -> u32 {
        if self.namespaces.last() != Some(&namespace) {
            self.namespaces.push(namespace);
        }
        // Below 2^32: a bucket compacts its namespaces (`rebuild`) before reaching
        // `NAMESPACES_MAX`, down to one per run of its live entries.
        (self.namespaces.len() - 1) as u32
    }

    /// Keeps only the namespaces of the log's entries, one per run, and renumbers the
    /// entries: namespaces of popped or deleted entries are dropped.
    fn compact_namespaces(&mut self) {
        let old = std::mem::take(&mut self.namespaces);
        for entry in &mut self.log {
            let Some(namespace) = old.get(entry.namespace as usize) else {
                continue;
            };
            if self.namespaces.last() != Some(namespace) {
                self.namespaces.push(namespace.clone());
            }
            entry.namespace = (self.namespaces.len() - 1) as u32;
        }
    }

    /// The slot where the probe for `hash` starts: the high bits of a Fibonacci hash.
    fn home(&self, hash: u64) -> usize {
        let bits = self.index.len().trailing_zeros();
        (hash.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - bits)) as usize
    }
}

fn hash_of<K: Hash, N: Hash>(key: &K, namespace: &N) -> u64 {
    FxBuildHasher.hash_one((key, namespace))
}

/// The high bits of an index slot: 24 bits of the hash, so that a probe compares log
/// entries only on a likely match (the home slot comes from a multiple of the hash).
fn tag(hash: u64) -> u64 {
    hash & !POSITION_MASK
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn drain(bucket: &mut TimerBucket<u64, u8>) -> Vec<(u32, u64, u8)> {
        std::iter::from_fn(|| bucket.pop_front()).collect()
    }

    #[test]
    fn keeps_registration_order_and_deduplicates() {
        let mut bucket = TimerBucket::new();
        for key in [5, 3, 9, 3, 5, 1] {
            bucket.add(0, key, 0);
        }
        assert_eq!(bucket.len(), 4);
        let keys: Vec<u64> = drain(&mut bucket).into_iter().map(|(_, k, _)| k).collect();
        assert_eq!(keys, vec![5, 3, 9, 1]);
        assert!(bucket.is_empty());
    }

    #[test]
    fn a_timer_deleted_and_registered_again_takes_its_new_place() {
        let mut bucket = TimerBucket::new();
        for key in 0..100u64 {
            bucket.add(1, key, 7);
        }
        assert!(bucket.remove(&10, &7));
        assert!(!bucket.remove(&10, &7));
        assert!(bucket.add(1, 10, 7));
        assert!(!bucket.add(1, 10, 7));
        let keys: Vec<u64> = drain(&mut bucket).into_iter().map(|(_, k, _)| k).collect();
        let mut expected: Vec<u64> = (0..100).filter(|k| *k != 10).collect();
        expected.push(10);
        assert_eq!(keys, expected);
    }

    #[test]
    fn a_timer_popped_and_registered_again_is_new() {
        let mut bucket = TimerBucket::new();
        for key in 0..50u64 {
            bucket.add(0, key, 0);
        }
        assert_eq!(bucket.pop_front(), Some((0, 0, 0)));
        assert!(bucket.add(0, 0, 0), "a fired timer can be registered again");
        assert!(!bucket.add(0, 1, 0), "a pending one stays deduplicated");
        let keys: Vec<u64> = drain(&mut bucket).into_iter().map(|(_, k, _)| k).collect();
        assert_eq!(keys, (1..50).chain([0]).collect::<Vec<_>>());
    }

    #[test]
    fn deletions_compact_the_log() {
        let mut bucket = TimerBucket::new();
        for key in 0..10_000u64 {
            bucket.add(0, key, 0);
        }
        for key in 0..9_990u64 {
            assert!(bucket.remove(&key, &0));
        }
        assert!(
            bucket.log.len() < 100,
            "log of {} entries",
            bucket.log.len()
        );
        assert_eq!(bucket.iter().count(), 10);
    }

    #[test]
    fn a_run_of_timers_under_one_namespace_stores_it_once() {
        let mut bucket = TimerBucket::new();
        for key in 0..1_000u64 {
            bucket.add(0, key, 7u8);
        }
        assert_eq!(bucket.namespaces, vec![7]);
        // Alternating namespaces: one per entry, until popping leaves them behind.
        for key in 0..1_000u64 {
            bucket.add(0, key, (key % 2) as u8);
        }
        assert_eq!(bucket.namespaces.len(), 1_001);
        for _ in 0..1_500 {
            bucket.pop_front();
        }
        assert!(
            bucket.namespaces.len() <= 2 * bucket.log_len() + NAMESPACE_SLACK + 1,
            "{} namespaces for {} entries",
            bucket.namespaces.len(),
            bucket.log_len()
        );
        let rest: Vec<(u64, u8)> = bucket.iter().map(|(_, k, n)| (*k, *n)).collect();
        let expected: Vec<(u64, u8)> = (500..1_000).map(|k| (k, (k % 2) as u8)).collect();
        assert_eq!(rest, expected);
    }

    #[test]
    fn timers_known_new_build_no_index_until_a_lookup_needs_one() {
        let mut bucket = TimerBucket::new();
        for key in 0..10_000u64 {
            bucket.add_new(0, key, 0u8);
        }
        assert!(bucket.index.is_empty(), "no lookup, no index");
        assert_eq!(bucket.len(), 10_000);
        // A lookup indexes them: the duplicate is found, a new timer goes in.
        assert!(!bucket.add(0, 9_999, 0));
        assert!(!bucket.index.is_empty());
        assert!(bucket.add(0, 10_000, 0));
        // Appended after the index exists: caught up by the next lookup.
        bucket.add_new(0, 10_001, 0);
        assert!(bucket.remove(&10_001, &0));
        assert!(!bucket.add(0, 42, 0));
        let keys: Vec<u64> = drain(&mut bucket).into_iter().map(|(_, k, _)| k).collect();
        assert_eq!(keys, (0..=10_000).collect::<Vec<_>>());
    }

    proptest! {
        /// Any sequence of adds, removes and pops behaves like a vector of distinct timers
        /// (op 3 registers a timer known to be new, when it is).
        #[test]
        fn behaves_like_an_ordered_set(ops in proptest::collection::vec((0u8..4, 0u64..120), 1..2000)) {
            let mut bucket = TimerBucket::new();
            let mut model: Vec<u64> = Vec::new();
            for (op, key) in ops {
                match op {
                    0 => {
                        let added = bucket.add(key as u32 % 4, key, (key % 3) as u8);
                        prop_assert_eq!(added, !model.contains(&key));
                        if added {
                            model.push(key);
                        }
                    }
                    3 => {
                        if !model.contains(&key) {
                            bucket.add_new(key as u32 % 4, key, (key % 3) as u8);
                            model.push(key);
                        }
                    }
                    1 => {
                        let removed = bucket.remove(&key, &((key % 3) as u8));
                        let at = model.iter().position(|k| *k == key);
                        prop_assert_eq!(removed, at.is_some());
                        if let Some(at) = at {
                            model.remove(at);
                        }
                    }
                    _ => {
                        let popped = bucket.pop_front().map(|(_, k, _)| k);
                        let expected = (!model.is_empty()).then(|| model.remove(0));
                        prop_assert_eq!(popped, expected);
                    }
                }
                prop_assert_eq!(bucket.len(), model.len());
            }
            let rest: Vec<u64> = bucket.iter().map(|(offset, k, ns)| {
                assert_eq!((offset, *ns), (*k as u32 % 4, (*k % 3) as u8));
                *k
            }).collect();
            prop_assert_eq!(rest, model);
        }
    }
}
