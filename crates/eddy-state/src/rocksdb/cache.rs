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
//! * **Bounded.** The cache holds at most its capacity in entries plus one group; when it is
//!   over, it evicts groups not used recently (one key's value, or one key's cached map
//!   entries, in one namespace) down to 15/16 of its capacity, so evictions are batched.
//!   "Recently" is the CLOCK approximation of LRU: an access sets a group's reference bit,
//!   and the eviction hand sweeps the table, clearing bits and evicting groups whose bit was
//!   already clear. A strict LRU list relinks two neighbours on every access, which for a
//!   cache of millions of groups costs two cache misses per state access.
//! * **One memory access per hit.** Groups live in a linear-probing table keyed by their
//!   prefix, kept inline when short (any fixed-size key), so a hit reads one table slot, and
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
use std::rc::Rc;

use eddy_core::{EddyError, Key, KeyGroup, Result, StateValue};
use rocksdb::WriteBatch;
use rustc_hash::FxHashMap;

use super::codec::encode_into;
use super::core::StateCore;
use super::db::{rocks_error, Db};
use crate::namespace::Namespace;
use crate::probe_table::ProbeTable;

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
/// for value, reducing and aggregating state: one entry per group).
enum Group<V> {
    One(Box<[u8]>, Entry<V>),
    Many(FxHashMap<Box<[u8]>, Entry<V>>),
}

impl<V> Group<V> {
    fn get_mut(&mut self, user_key: &[u8]) -> Option<&mut Entry<V>> {
        match self {
            Group::One(key, entry) => (**key == *user_key).then_some(entry),
            Group::Many(entries) => entries.get_mut(user_key),
        }
    }

    /// Inserts or replaces; returns whether the group grew.
    fn insert(&mut self, user_key: &[u8], entry: Entry<V>) -> bool {
        if let Some(existing) = self.get_mut(user_key) {
            *existing = entry;
            return false;
        }
        if let Group::One(..) = self {
            let Group::One(key, first) = std::mem::replace(self, Group::Many(FxHashMap::default()))
            else {
                return false;
            };
            if let Group::Many(entries) = self {
                entries.insert(key, first);
            }
        }
        if let Group::Many(entries) = self {
            entries.insert(user_key.into(), entry);
        }
        true
    }

    fn len(&self) -> usize {
        match self {
            Group::One(..) => 1,
            Group::Many(entries) => entries.len(),
        }
    }

    fn entries_mut(&mut self) -> Box<dyn Iterator<Item = (&[u8], &mut Entry<V>)> + '_> {
        match self {
            Group::One(key, entry) => Box::new(std::iter::once((&**key, entry))),
            Group::Many(entries) => Box::new(entries.iter_mut().map(|(k, e)| (&**k, e))),
        }
    }

    fn has_present(&self) -> bool {
        let present = |e: &Entry<V>| matches!(e.value, Cached::Present(_));
        match self {
            Group::One(_, entry) => present(entry),
            Group::Many(entries) => entries.values().any(present),
        }
    }
}

/// Prefixes up to this many bytes are kept inline (`[kg]` + a postcard `u64` key + a window
/// namespace is at most 2 + 10 + 20 bytes; most are far shorter).
const INLINE_PREFIX: usize = 22;

/// The `[key group][key][namespace]` prefix of a cached group: inline when short, so that a
/// lookup compares bytes in the table slot instead of following a pointer.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Prefix {
    /// The first `len` bytes of `bytes`; the rest are zero, so equal prefixes are equal here.
    Inline { len: u8, bytes: [u8; INLINE_PREFIX] },
    /// Longer prefixes (only these allocate).
    Boxed(Box<[u8]>),
}

impl Prefix {
    #[inline]
    fn new(prefix: &[u8]) -> Self {
        match u8::try_from(prefix.len()) {
            Ok(len) if prefix.len() <= INLINE_PREFIX => {
                let mut bytes = [0u8; INLINE_PREFIX];
                bytes[..prefix.len()].copy_from_slice(prefix);
                Prefix::Inline { len, bytes }
            }
            _ => Prefix::Boxed(prefix.into()),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Prefix::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Prefix::Boxed(bytes) => bytes,
        }
    }
}

/// A group with its CLOCK reference bit.
struct Slot<V> {
    group: Group<V>,
    /// Used since the eviction hand last passed.
    referenced: bool,
}

type Groups<V> = ProbeTable<Prefix, Slot<V>>;

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
}

impl<V: StateValue> ObjectCache<V> {
    pub(crate) fn new(capacity: usize, db: &Rc<Db>, state: &str, cf_name: &str) -> Self {
        ObjectCache {
            groups: ProbeTable::new(),
            hand: 0,
            entries: 0,
            capacity: capacity.max(1),
            db: Rc::clone(db),
            state: state.into(),
            cf_name: cf_name.into(),
            key_buf: Vec::new(),
            value_buf: Vec::new(),
        }
    }

    /// Starts loading the table slot of the group under `prefix` into the CPU caches;
    /// changes nothing.
    #[inline]
    pub(crate) fn prefetch(&self, prefix: &[u8]) {
        self.groups.prefetch(&Prefix::new(prefix));
    }

    /// The cached entry of `user_key` under `prefix`, if cached (marking its group used).
    #[inline]
    pub(crate) fn get(&mut self, prefix: &[u8], user_key: &[u8]) -> Option<&Cached<V>> {
        let slot = self.groups.get_mut(&Prefix::new(prefix))?;
        slot.referenced = true;
        slot.group.get_mut(user_key).map(|entry| &entry.value)
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
        )
    }

    /// Records a write (`Present`) or removal (`Absent`) of `user_key` under `prefix`: dirty,
    /// written back later.
    pub(crate) fn write(&mut self, prefix: &[u8], user_key: &[u8], value: Cached<V>) -> Result<()> {
        // Whether RocksDB may hold the key survives from the cached entry; unknown means yes.
        let in_db = self
            .groups
            .get_mut(&Prefix::new(prefix))
            .and_then(|slot| slot.group.get_mut(user_key))
            .is_none_or(|e| e.in_db);
        self.put(
            prefix,
            user_key,
            Entry {
                value,
                dirty: true,
                in_db,
            },
        )
    }

    fn put(&mut self, prefix: &[u8], user_key: &[u8], entry: Entry<V>) -> Result<()> {
        let prefix = Prefix::new(prefix);
        let grew = match self.groups.get_mut(&prefix) {
            Some(slot) => {
                slot.referenced = true;
                slot.group.insert(user_key, entry)
            }
            None => {
                let group = Group::One(user_key.into(), entry);
                self.groups.insert(
                    prefix,
                    Slot {
                        group,
                        referenced: true,
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

    /// Whether a value is cached under `prefix` (so a map there is not empty).
    pub(crate) fn has_present(&mut self, prefix: &[u8]) -> bool {
        self.groups
            .get(&Prefix::new(prefix))
            .is_some_and(|slot| slot.group.has_present())
    }

    /// Drops the entries under `prefix`, dirty or not (their key range is about to be deleted
    /// in RocksDB).
    pub(crate) fn drop_group(&mut self, prefix: &[u8]) {
        if let Some(slot) = self.groups.remove(&Prefix::new(prefix)) {
            self.entries -= slot.group.len();
        }
    }

    /// Writes the dirty entries under `prefix` to RocksDB (before RocksDB is read there).
    pub(crate) fn flush_group(&mut self, prefix: &[u8]) -> Result<()> {
        let (groups, mut writer) = self.split();
        let Some(slot) = groups.get_mut(&Prefix::new(prefix)) else {
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
    fn choose_victims(&mut self, target: usize) -> Vec<Prefix> {
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
        for (user_key, entry) in group.entries_mut() {
            if !entry.dirty {
                continue;
            }
            self.key_buf.clear();
            self.key_buf.extend_from_slice(prefix);
            self.key_buf.extend_from_slice(user_key);
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
/// entry, else RocksDB's value, which is then cached clean.
#[inline]
pub(crate) fn read_through<K: Key, N: Namespace, V: StateValue>(
    cache: &SharedCache<V>,
    core: &StateCore<K, N>,
    kg: KeyGroup,
    stored_key: &[u8],
    prefix_len: usize,
) -> Result<Option<V>> {
    let (prefix, user_key) = stored_key.split_at(prefix_len.min(stored_key.len()));
    if let Some(cached) = cache.borrow_mut().get(prefix, user_key) {
        return Ok(cached.value());
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

/// What the backend does with the caches of all its states, whatever their value types.
pub(crate) trait CacheControl {
    /// Writes every dirty entry to RocksDB.
    fn flush(&self) -> Result<()>;
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
