//! The write-back object cache: deserialized values of hot keys in front of RocksDB.
//!
//! Flink's RocksDB backend serializes and crosses JNI on every state access; this cache makes
//! a hot key cost a hash lookup instead, while the state as a whole stays in RocksDB and
//! unbounded. One cache per state (column family) per subtask, bounded by
//! [`RocksDbConfig::object_cache_entries`](super::RocksDbConfig::object_cache_entries).
//!
//! # What it guarantees
//!
//! * **It never changes a result.** Every read of a cached state goes through the cache
//!   first; every operation that reads RocksDB directly (map iteration and `is_empty`, the
//!   backend's `keys`, `state_len`, snapshots and checkpoints, compaction) first writes the
//!   cache's dirty entries to RocksDB ([`ObjectCache::flush_group`],
//!   [`CacheControl::flush`]). A prefix deletion (`MapState::clear`) drops the prefix's
//!   cached entries, dirty or not, before it deletes in RocksDB.
//! * **Write-back.** A write only changes the cached object and marks it dirty; dirty entries
//!   reach RocksDB in one write batch when their group is evicted, and all of them before
//!   every snapshot. A known-absent entry is cached too (a miss costs one RocksDB read, not
//!   one per access), and removing a value RocksDB never held writes nothing.
//! * **New keys cost no read.** The cache keeps a Bloom filter of the prefixes it ever
//!   wrote a value under (RocksDB starts empty for a fresh state; a restore, which writes
//!   past the cache, turns the filter off). A group first accessed under a prefix not in
//!   it is known to have nothing in RocksDB: the access reads nothing, and the group is
//!   *complete*, so a map key it lacks is known absent too (W3: a customer's map keys; W5:
//!   a new window's accumulator). Everything else is read from RocksDB on a miss, entry by
//!   entry.
//! * **Bounded.** The cache holds at most its capacity in entries plus one group; when it is
//!   over, it evicts groups not used recently (one key's value, or one key's cached map
//!   entries, in one namespace) down to 15/16 of its capacity, so evictions are batched.
//!   "Recently" is the CLOCK approximation of LRU: an access sets a group's reference bit,
//!   and the eviction hand sweeps the table, clearing bits and evicting groups whose bit was
//!   already clear. A strict LRU list relinks two neighbours on every access, which for a
//!   cache of millions of groups costs two cache misses per state access.
//! * **One memory access per hit.** Groups live in a linear-probing table keyed by their
//!   prefix, kept inline when short (any fixed-size key), so a hit on a value state reads
//!   one table slot (a map's entries sit in a short vector behind it), and
//!   the runtime can prefetch the slot of a record ahead ([`ObjectCache::prefetch`]) as it
//!   does for the heap backend.
//!
//! Not cached, by design: list state (`add` is a RocksDB merge that never reads, which the
//! cache could not improve) and TTL states (their last-access time lives in the stored bytes,
//! where the compaction filter reads it).
//!
//! Durability is unchanged: RocksDB's own writes are not durable either (WAL off); a
//! checkpoint is, and it flushes the cache first.

use std::any::Any;
use std::cell::RefCell;
use std::hash::BuildHasher;
use std::rc::Rc;

use eddy_core::{EddyError, Key, KeyGroup, Result, StateValue};

use rocksdb::WriteBatch;
use rustc_hash::FxBuildHasher;

use super::codec::encode_into;
use super::core::StateCore;
use super::db::{rocks_error, Db};
use crate::namespace::Namespace;
use crate::probe_table::ProbeTable;
use crate::small_map::SmallMap;

/// A cached value, or the knowledge that there is none.
#[derive(Clone)]
pub(crate) enum Cached<V> {
    /// The key holds this value.
    Present(V),
    /// The key holds no value.
    Absent,
}

impl<V: Clone> Cached<V> {
    /// The value, if present.
    pub(crate) fn value(&self) -> Option<V> {
        match self {
            Cached::Present(value) => Some(value.clone()),
            Cached::Absent => None,
        }
    }
}

/// One cached entry.
struct Entry<V> {
    value: Cached<V>,
    /// Changed since it was read from (or last written to) RocksDB.
    dirty: bool,
    /// RocksDB may hold a value for this key: a removal must then be written as a delete.
    in_db: bool,
}

/// The cached entries of one `[key group][key][namespace]` prefix, by user-key bytes (empty
/// for value, reducing and aggregating state: one entry per group). A map's few entries
/// sit in one short vector, scanned behind a Bloom filter, so a lookup of an entry the group
/// lacks usually reads no entry at all (see [`SmallMap`]).
type Group<V> = SmallMap<UserKey, Entry<V>>;

/// Whether `group` holds a present value.
fn has_present<V>(group: &Group<V>) -> bool {
    group
        .iter()
        .any(|(_, entry)| matches!(entry.value, Cached::Present(_)))
}

/// A group's `[key group][key][namespace]` prefix: inline up to 22 bytes (`[kg]` + a
/// postcard `u64` key + a window namespace is at most 2 + 10 + 20 bytes; most are far
/// shorter), 24 bytes in all.
type GroupPrefix = InlineBytes<22>;

/// An entry's user-key bytes (empty for value, reducing and aggregating state): inline up to
/// 14 bytes (any postcard integer), 16 bytes in all, as most of a map cache's memory is its
/// entry vectors.
type UserKey = InlineBytes<14>;

/// Bytes kept inline when at most `N` long, so that a lookup compares bytes in place instead
/// of following a pointer and a cached key allocates nothing; longer ones behind a thin box
/// (so the enum is `N + 2` bytes rounded up to 8).
#[derive(Clone, PartialEq, Eq, Hash)]
enum InlineBytes<const N: usize> {
    /// The first `len` bytes of `bytes`; the rest are zero, so equal strings are equal here.
    Inline { len: u8, bytes: [u8; N] },
    /// Longer byte strings (only these allocate).
    Boxed(Box<Box<[u8]>>),
}

impl<const N: usize> InlineBytes<N> {
    #[inline]
    fn new(from: &[u8]) -> Self {
        match u8::try_from(from.len()) {
            Ok(len) if from.len() <= N => {
                let mut bytes = [0u8; N];
                bytes[..from.len()].copy_from_slice(from);
                InlineBytes::Inline { len, bytes }
            }
            _ => InlineBytes::Boxed(Box::new(from.into())),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            InlineBytes::Inline { len, bytes } => &bytes[..usize::from(*len)],
            InlineBytes::Boxed(bytes) => bytes,
        }
    }
}

/// A group with its CLOCK reference bit.
struct Slot<V> {
    group: Group<V>,
    /// Used since the eviction hand last passed.
    referenced: bool,
    /// The group holds every entry of its prefix (RocksDB held nothing under the prefix
    /// when the group was created, and every write since went through it): a user key it
    /// lacks has no value, and RocksDB need not be asked.
    complete: bool,
}

type Groups<V> = ProbeTable<GroupPrefix, Slot<V>>;

/// What the cache knows of one entry.
pub(crate) enum Lookup<'a, V> {
    /// The entry is cached.
    Cached(&'a Cached<V>),
    /// The entry's group is cached whole and lacks it: there is no value.
    Absent,
    /// The group is cached, but not whole: RocksDB may hold the entry.
    Unknown,
    /// Nothing of the entry's prefix is cached.
    NoGroup,
}

/// The object cache of one state (see the [module docs](self)).
pub(crate) struct ObjectCache<V> {
    groups: Groups<V>,
    /// The next slot the eviction hand looks at.
    hand: usize,
    /// Entries over all groups.
    entries: usize,
    capacity: usize,
    db: Rc<Db>,
    state: Rc<str>,
    cf_name: Rc<str>,
    /// Reused to build the stored key of an entry being written back.
    key_buf: Vec<u8>,
    value_buf: Vec<u8>,
    /// The prefixes under which RocksDB may hold a value of this state.
    written: WrittenPrefixes,
}

impl<V: StateValue> ObjectCache<V> {
    /// An empty cache of `capacity` entries; `db_empty`: RocksDB holds nothing of the state
    /// yet (a fresh state, not restored), so that only the cache's own write-backs can put
    /// anything there.
    pub(crate) fn new(
        capacity: usize,
        db: &Rc<Db>,
        state: &str,
        cf_name: &str,
        db_empty: bool,
    ) -> Self {
        let capacity = capacity.max(1);
        ObjectCache {
            groups: ProbeTable::new(),
            hand: 0,
            entries: 0,
            capacity,
            db: Rc::clone(db),
            state: state.into(),
            cf_name: cf_name.into(),
            key_buf: Vec::new(),
            value_buf: Vec::new(),
            written: WrittenPrefixes::new(capacity, db_empty),
        }
    }

    /// Forgets which prefixes RocksDB holds nothing under: values reached RocksDB another
    /// way (a restore writes them directly).
    pub(crate) fn assume_all_written(&mut self) {
        self.written = WrittenPrefixes::everything();
    }

    /// Starts loading the table slot of the group under `prefix` into the CPU caches;
    /// changes nothing.
    #[inline]
    pub(crate) fn prefetch(&self, prefix: &[u8]) {
        self.groups.prefetch(&GroupPrefix::new(prefix));
    }

    /// What the cache knows of the entry of `user_key` under `prefix` (marking its group
    /// used).
    #[inline]
    pub(crate) fn get(&mut self, prefix: &[u8], user_key: &[u8]) -> Lookup<'_, V> {
        let Some(slot) = self.groups.get_mut(&GroupPrefix::new(prefix)) else {
            return Lookup::NoGroup;
        };
        slot.referenced = true;
        match slot.group.get(&UserKey::new(user_key)) {
            Some(entry) => Lookup::Cached(&entry.value),
            None if slot.complete => Lookup::Absent,
            None => Lookup::Unknown,
        }
    }

    /// Caches what RocksDB holds for `user_key` under `prefix` (read on a miss): clean.
    pub(crate) fn fill(&mut self, prefix: &[u8], user_key: &[u8], value: Cached<V>) -> Result<()> {
        let in_db = matches!(value, Cached::Present(_));
        self.put(
            prefix,
            user_key,
            Entry {
                value,
                dirty: false,
                in_db,
            },
            // Read because RocksDB may hold values under the prefix.
            false,
        )
    }

    /// If RocksDB has never held a value under `prefix` (whose group is not cached), caches
    /// the group as complete with `user_key` known absent, and returns `true`: the caller
    /// need not read RocksDB. Returns `false` if RocksDB may hold values there.
    pub(crate) fn start_unwritten_group(&mut self, prefix: &[u8], user_key: &[u8]) -> Result<bool> {
        if self.written.may_hold(prefix) {
            return Ok(false);
        }
        let entry = Entry {
            value: Cached::Absent,
            dirty: false,
            in_db: false,
        };
        self.put(prefix, user_key, entry, true)?;
        Ok(true)
    }

    /// Records a write (`Present`) or removal (`Absent`) of `user_key` under `prefix`: dirty,
    /// written back later.
    pub(crate) fn write(&mut self, prefix: &[u8], user_key: &[u8], value: Cached<V>) -> Result<()> {
        // Whether RocksDB may hold the key survives from the cached entry; a complete group
        // without the entry knows RocksDB holds none; unknown means yes.
        let in_db = match self.groups.get_mut(&GroupPrefix::new(prefix)) {
            Some(slot) => match slot.group.get(&UserKey::new(user_key)) {
                Some(entry) => entry.in_db,
                None => !slot.complete,
            },
            None => self.written.may_hold(prefix),
        };
        self.put(
            prefix,
            user_key,
            Entry {
                value,
                dirty: true,
                in_db,
            },
            // A new group: complete if RocksDB holds nothing under the prefix.
            !in_db,
        )
    }

    /// Caches `entry` under `prefix` and `user_key`; a group created for it is complete if
    /// `complete_if_new` (the caller knows RocksDB holds nothing under `prefix`).
    fn put(
        &mut self,
        prefix: &[u8],
        user_key: &[u8],
        entry: Entry<V>,
        complete_if_new: bool,
    ) -> Result<()> {
        let prefix = GroupPrefix::new(prefix);
        let user_key = UserKey::new(user_key);
        let grew = match self.groups.get_mut(&prefix) {
            Some(slot) => {
                slot.referenced = true;
                let before = slot.group.len();
                slot.group.insert(user_key, entry);
                slot.group.len() > before
            }
            None => {
                let mut group = Group::default();
                group.insert(user_key, entry);
                self.groups.insert(
                    prefix,
                    Slot {
                        group,
                        referenced: true,
                        complete: complete_if_new,
                    },
                );
                true
            }
        };
        if grew {
            self.entries += 1;
            if self.entries > self.capacity {
                self.evict()?;
            }
        }
        Ok(())
    }

    /// Whether the map under `prefix` is empty, if the cache knows: `Some(false)` if a value
    /// is cached there, `Some(true)` if the group is cached whole without one.
    pub(crate) fn known_empty(&self, prefix: &[u8]) -> Option<bool> {
        let slot = self.groups.get(&GroupPrefix::new(prefix))?;
        match (has_present(&slot.group), slot.complete) {
            (true, _) => Some(false),
            (false, true) => Some(true),
            (false, false) => None,
        }
    }

    /// Drops the entries under `prefix`, dirty or not (their key range is about to be deleted
    /// in RocksDB).
    pub(crate) fn drop_group(&mut self, prefix: &[u8]) {
        if let Some(slot) = self.groups.remove(&GroupPrefix::new(prefix)) {
            self.entries -= slot.group.len();
        }
    }

    /// Writes the dirty entries under `prefix` to RocksDB (before RocksDB is read there).
    pub(crate) fn flush_group(&mut self, prefix: &[u8]) -> Result<()> {
        let (groups, mut writer) = self.split();
        let Some(slot) = groups.get_mut(&GroupPrefix::new(prefix)) else {
            return Ok(());
        };
        let mut batch = WriteBatch::default();
        writer.add_group(&mut batch, prefix, &mut slot.group)?;
        writer.write(batch, prefix)
    }

    /// Writes every dirty entry to RocksDB in one batch; the entries stay cached, clean.
    pub(crate) fn flush_all(&mut self) -> Result<()> {
        let mut batch = WriteBatch::default();
        let (groups, mut writer) = self.split();
        for (prefix, slot) in groups.iter_mut() {
            writer.add_group(&mut batch, prefix.as_bytes(), &mut slot.group)?;
        }
        writer.write(batch, &[])
    }

    /// Evicts groups not used since the hand last passed them down to 15/16 of the
    /// capacity, writing the dirty entries among them to RocksDB in one batch.
    fn evict(&mut self) -> Result<()> {
        let target = self.capacity - self.capacity / 16;
        let victims = self.choose_victims(target);
        let mut batch = WriteBatch::default();
        let mut entries = self.entries;
        let (groups, mut writer) = self.split();
        for prefix in &victims {
            if let Some(mut slot) = groups.remove(prefix) {
                entries -= slot.group.len();
                writer.add_group(&mut batch, prefix.as_bytes(), &mut slot.group)?;
            }
        }
        writer.write(batch, &[])?;
        self.entries = entries;
        Ok(())
    }

    /// Sweeps the CLOCK hand until the groups it picked hold enough entries to bring the
    /// cache down to `target`: a group whose bit is set gets a second chance (the bit is
    /// cleared), one whose bit is clear is picked. Two full turns clear every bit, so the
    /// sweep ends.
    fn choose_victims(&mut self, target: usize) -> Vec<GroupPrefix> {
        let slots = self.groups.slot_count();
        let mut victims = Vec::new();
        let mut remaining = self.entries;
        let mut looked = 0;
        while remaining > target && looked < 2 * slots {
            let index = self.hand % slots;
            self.hand = index + 1;
            looked += 1;
            let Some((prefix, slot)) = self.groups.slot_mut(index) else {
                continue;
            };
            if slot.referenced {
                slot.referenced = false;
            } else {
                remaining = remaining.saturating_sub(slot.group.len());
                victims.push(prefix.clone());
            }
        }
        victims
    }

    /// The groups and a writer, borrowed apart.
    fn split(&mut self) -> (&mut Groups<V>, Writer<'_>) {
        let writer = Writer {
            db: &self.db,
            state: &self.state,
            cf_name: &self.cf_name,
            key_buf: &mut self.key_buf,
            value_buf: &mut self.value_buf,
            written: &mut self.written,
        };
        (&mut self.groups, writer)
    }

    /// The number of cached entries.
    pub(crate) fn len(&self) -> usize {
        self.entries
    }
}

/// Writes dirty entries into a batch, then the batch into RocksDB.
struct Writer<'a> {
    db: &'a Db,
    state: &'a str,
    cf_name: &'a str,
    key_buf: &'a mut Vec<u8>,
    value_buf: &'a mut Vec<u8>,
    written: &'a mut WrittenPrefixes,
}

impl Writer<'_> {
    /// Adds the dirty entries of `group` to `batch` and marks them clean.
    fn add_group<V: StateValue>(
        &mut self,
        batch: &mut WriteBatch,
        prefix: &[u8],
        group: &mut Group<V>,
    ) -> Result<()> {
        let cf = self.db.cf(self.cf_name)?;
        for (user_key, entry) in group.iter_mut() {
            if !entry.dirty {
                continue;
            }
            self.key_buf.clear();
            self.key_buf.extend_from_slice(prefix);
            self.key_buf.extend_from_slice(user_key.as_bytes());
            match &entry.value {
                Cached::Present(value) => {
                    self.value_buf.clear();
                    encode_into(value, self.value_buf).map_err(|e| {
                        EddyError::state(
                            self.state,
                            format!(
                                "key group {}: cannot encode a cached value: {e}",
                                key_group_of(prefix)
                            ),
                        )
                    })?;
                    batch.put_cf(&cf, &*self.key_buf, &*self.value_buf);
                    self.written.insert(prefix);
                    entry.in_db = true;
                }
                Cached::Absent if entry.in_db => {
                    batch.delete_cf(&cf, &*self.key_buf);
                    entry.in_db = false;
                }
                Cached::Absent => {}
            }
            entry.dirty = false;
        }
        Ok(())
    }

    fn write(self, batch: WriteBatch, prefix: &[u8]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        self.db
            .write(batch)
            .map_err(|e| rocks_error(self.state, key_group_of(prefix), e))
    }
}

/// The key group a stored key (or prefix) starts with; 0 for none (a batch of many groups).
fn key_group_of(prefix: &[u8]) -> KeyGroup {
    prefix
        .get(..2)
        .map_or(0, |b| KeyGroup::from_be_bytes([b[0], b[1]]))
}

/// Reads the value under the stored key `stored_key` (whose first `prefix_len` bytes are the
/// `[key group][key][namespace]` prefix, the rest the user key) through `cache`: the cached
/// entry; else nothing if RocksDB has never held a value under the prefix; else RocksDB's
/// value. What was learned is cached clean.
#[inline]
pub(crate) fn read_through<K: Key, N: Namespace, V: StateValue>(
    cache: &SharedCache<V>,
    core: &StateCore<K, N>,
    kg: KeyGroup,
    stored_key: &[u8],
    prefix_len: usize,
) -> Result<Option<V>> {
    let (prefix, user_key) = stored_key.split_at(prefix_len.min(stored_key.len()));
    let no_group = match cache.borrow_mut().get(prefix, user_key) {
        Lookup::Cached(cached) => return Ok(cached.value()),
        Lookup::Absent => return Ok(None),
        Lookup::Unknown => false,
        Lookup::NoGroup => true,
    };
    if no_group && cache.borrow_mut().start_unwritten_group(prefix, user_key)? {
        return Ok(None);
    }
    let loaded = core
        .load::<V>(None, kg, stored_key, 0)?
        .map(|(value, _)| value);
    let cached = match &loaded {
        Some(value) => Cached::Present(value.clone()),
        None => Cached::Absent,
    };
    cache.borrow_mut().fill(prefix, user_key, cached)?;
    Ok(loaded)
}

/// A Bloom filter of the prefixes under which RocksDB may hold a value of one cached state:
/// those the cache wrote a value under, or all of them once values arrived another way. A
/// prefix not in it has nothing in RocksDB, so the first access to a new key (a new
/// customer's map, a new window's accumulator) needs no RocksDB read, and its group is
/// complete from the start.
///
/// Two bits per prefix in a table of about two bits per cache entry: with as many prefixes
/// written as the cache holds entries, about one unwritten prefix in three still reads
/// RocksDB (as it would without the filter); a filter that fills up answers "may hold" for
/// everything, which is only slower.
struct WrittenPrefixes {
    /// The filter's bits; empty when everything may have been written.
    bits: Vec<u64>,
}

impl WrittenPrefixes {
    /// Bounds of the table, in bits: at least a cache line, at most 128 MiB (its pages are
    /// zero until a prefix is written: the OS maps them lazily).
    const MIN_BITS: usize = 512;
    const MAX_BITS: usize = 1 << 30;

    /// An empty filter for a cache of `capacity` entries, or one that holds everything if
    /// RocksDB is not known to be empty.
    fn new(capacity: usize, db_empty: bool) -> Self {
        if !db_empty {
            return WrittenPrefixes::everything();
        }
        let bits = capacity
            .saturating_mul(2)
            .next_power_of_two()
            .clamp(Self::MIN_BITS, Self::MAX_BITS);
        WrittenPrefixes {
            bits: vec![0; bits / 64],
        }
    }

    /// A filter that holds every prefix.
    fn everything() -> Self {
        WrittenPrefixes { bits: Vec::new() }
    }

    /// The two bit positions of `prefix` (`bits` is not empty).
    fn positions(&self, prefix: &[u8]) -> [usize; 2] {
        let mask = (self.bits.len() * 64 - 1) as u64;
        let mut h = FxBuildHasher.hash_one(prefix);
        // Fx leaves its low bits weak for short inputs: finish with a mixer.
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        // `mask` is below 2^30, so both positions fit any usize.
        [(h & mask) as usize, ((h >> 32) & mask) as usize]
    }

    /// Whether RocksDB may hold a value under `prefix`.
    fn may_hold(&self, prefix: &[u8]) -> bool {
        if self.bits.is_empty() {
            return true;
        }
        self.positions(prefix)
            .iter()
            .all(|&bit| self.bits[bit / 64] & (1 << (bit % 64)) != 0)
    }

    /// Records that a value under `prefix` is being written to RocksDB.
    fn insert(&mut self, prefix: &[u8]) {
        if self.bits.is_empty() {
            return;
        }
        for bit in self.positions(prefix) {
            self.bits[bit / 64] |= 1 << (bit % 64);
        }
    }
}

/// What the backend does with the caches of all its states, whatever their value types.
pub(crate) trait CacheControl {
    /// Writes every dirty entry to RocksDB.
    fn flush(&self) -> Result<()>;
    /// Forgets which prefixes RocksDB holds nothing under (values are being written to
    /// RocksDB directly, by a restore).
    fn assume_all_written(&self) -> Result<()>;
    /// The number of cached entries.
    fn cached_entries(&self) -> usize;
    /// Starts loading the slot of the group under `prefix` into the CPU caches.
    fn prefetch(&self, prefix: &[u8]);
    /// The cache itself, for a handle that knows its value type.
    fn as_any(self: Rc<Self>) -> Rc<dyn Any>;
}

/// The cache of one state as its handles share it.
pub(crate) type SharedCache<V> = RefCell<ObjectCache<V>>;

impl<V: StateValue> CacheControl for SharedCache<V> {
    fn flush(&self) -> Result<()> {
        self.try_borrow_mut()
            .map_err(|_| EddyError::Internal("an object cache is in use during a flush".into()))?
            .flush_all()
    }

    fn assume_all_written(&self) -> Result<()> {
        self.try_borrow_mut()
            .map_err(|_| EddyError::Internal("an object cache is in use during a restore".into()))?
            .assume_all_written();
        Ok(())
    }

    fn cached_entries(&self) -> usize {
        self.try_borrow().map_or(0, |cache| cache.len())
    }

    #[inline]
    fn prefetch(&self, prefix: &[u8]) {
        if let Ok(cache) = self.try_borrow() {
            cache.prefetch(prefix);
        }
    }

    fn as_any(self: Rc<Self>) -> Rc<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_bytes_round_trip_and_keep_their_sizes() {
        assert_eq!(std::mem::size_of::<UserKey>(), 16);
        assert_eq!(std::mem::size_of::<GroupPrefix>(), 24);
        for len in [0, 1, 14, 15, 22, 23, 100] {
            let bytes: Vec<u8> = (0..len).map(|i| i as u8 ^ 0x5a).collect();
            assert_eq!(UserKey::new(&bytes).as_bytes(), &bytes[..]);
            assert_eq!(GroupPrefix::new(&bytes).as_bytes(), &bytes[..]);
            assert!(UserKey::new(&bytes) == UserKey::new(&bytes));
        }
        // A shorter key is never equal to a longer one that starts with zeros.
        assert!(UserKey::new(&[1]) != UserKey::new(&[1, 0]));
    }

    #[test]
    fn the_written_filter_has_every_prefix_written_and_few_others() {
        let mut written = WrittenPrefixes::new(10_000, true);
        let prefix = |i: u32| i.to_be_bytes();
        assert!(!written.may_hold(&prefix(1)));
        for i in 0..2_000u32 {
            written.insert(&prefix(i));
        }
        assert!((0..2_000).all(|i| written.may_hold(&prefix(i))));
        let false_positives = (2_000..12_000)
            .filter(|&i| written.may_hold(&prefix(i)))
            .count();
        assert!(false_positives < 500, "{false_positives} of 10,000");
        // Not known empty: everything may be there.
        assert!(WrittenPrefixes::new(10_000, false).may_hold(&prefix(1)));
        assert!(WrittenPrefixes::everything().may_hold(&prefix(1)));
    }
}
