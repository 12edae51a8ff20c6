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
//!   over, it evicts least-recently-used groups (one key's value, or one key's cached map
//!   entries, in one namespace) down to 15/16 of its capacity, so evictions are batched.
//!
//! Not cached, by design: list state (`add` is a RocksDB merge that never reads, which the
//! cache could not improve) and TTL states (their last-access time lives in the stored bytes,
//! where the compaction filter reads it).
//!
//! Durability is unchanged: RocksDB's own writes are not durable either (WAL off); a
//! checkpoint is, and it flushes the cache first.

use std::any::Any;
use std::cell::RefCell;
use std::hash::BuildHasherDefault;
use std::rc::Rc;

use eddy_core::{EddyError, Key, KeyGroup, Result, StateValue};
use lru::LruCache;
use rocksdb::WriteBatch;
use rustc_hash::{FxHashMap, FxHasher};

use super::codec::encode_into;
use super::core::StateCore;
use super::db::{rocks_error, Db};
use crate::namespace::Namespace;

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

type Groups<V> = LruCache<Box<[u8]>, Group<V>, BuildHasherDefault<FxHasher>>;

/// The object cache of one state (see the [module docs](self)).
pub(crate) struct ObjectCache<V> {
    groups: Groups<V>,
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
            groups: LruCache::unbounded_with_hasher(BuildHasherDefault::default()),
            entries: 0,
            capacity: capacity.max(1),
            db: Rc::clone(db),
            state: state.into(),
            cf_name: cf_name.into(),
            key_buf: Vec::new(),
            value_buf: Vec::new(),
        }
    }

    /// The cached entry of `user_key` under `prefix`, if cached (marking its group used).
    #[inline]
    pub(crate) fn get(&mut self, prefix: &[u8], user_key: &[u8]) -> Option<&Cached<V>> {
        let group = self.groups.get_mut(prefix)?;
        group.get_mut(user_key).map(|entry| &entry.value)
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
            .peek_mut(prefix)
            .and_then(|g| g.get_mut(user_key))
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
        let grew = match self.groups.get_mut(prefix) {
            Some(group) => group.insert(user_key, entry),
            None => {
                self.groups
                    .push(prefix.into(), Group::One(user_key.into(), entry));
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
        self.groups.peek(prefix).is_some_and(Group::has_present)
    }

    /// Drops the entries under `prefix`, dirty or not (their key range is about to be deleted
    /// in RocksDB).
    pub(crate) fn drop_group(&mut self, prefix: &[u8]) {
        if let Some(group) = self.groups.pop(prefix) {
            self.entries -= group.len();
        }
    }

    /// Writes the dirty entries under `prefix` to RocksDB (before RocksDB is read there).
    pub(crate) fn flush_group(&mut self, prefix: &[u8]) -> Result<()> {
        let (groups, mut writer) = self.split();
        let Some(group) = groups.peek_mut(prefix) else {
            return Ok(());
        };
        let mut batch = WriteBatch::default();
        writer.add_group(&mut batch, prefix, group)?;
        writer.write(batch, prefix)
    }

    /// Writes every dirty entry to RocksDB in one batch; the entries stay cached, clean.
    pub(crate) fn flush_all(&mut self) -> Result<()> {
        let mut batch = WriteBatch::default();
        let (groups, mut writer) = self.split();
        for (prefix, group) in groups.iter_mut() {
            writer.add_group(&mut batch, prefix, group)?;
        }
        writer.write(batch, &[])
    }

    /// Evicts least-recently-used groups down to 15/16 of the capacity, writing the dirty
    /// entries among them to RocksDB in one batch.
    fn evict(&mut self) -> Result<()> {
        let target = self.capacity - self.capacity / 16;
        let mut batch = WriteBatch::default();
        let mut entries = self.entries;
        let (groups, mut writer) = self.split();
        while entries > target {
            let Some((prefix, mut group)) = groups.pop_lru() else {
                break;
            };
            entries -= group.len();
            writer.add_group(&mut batch, &prefix, &mut group)?;
        }
        writer.write(batch, &[])?;
        self.entries = entries;
        Ok(())
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

    fn as_any(self: Rc<Self>) -> Rc<dyn Any> {
        self
    }
}
