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
//! * **Whole groups.** The first read of a map's group (one key's map in one namespace)
//!   reads the group from RocksDB with one prefix scan, whole if it has at most
//!   [`GROUP_READ_MAX`] entries. A group read whole is *complete*: every later write goes
//!   through it and it is evicted only whole, so a user key it lacks has no value, and
//!   neither a `get` of a new map key nor `is_empty` asks RocksDB. A map state whose keys
//!   see a few map keys each (W3: up to 100 per customer) then costs one RocksDB seek per
//!   key and cache residency instead of one read per new map key.
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
use std::rc::Rc;

use eddy_core::{EddyError, Key, KeyGroup, Result, StateValue};
use rocksdb::WriteBatch;

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
type Group<V> = SmallMap<ShortBytes, Entry<V>>;

/// Whether `group` holds a present value.
fn has_present<V>(group: &Group<V>) -> bool {
    group
        .iter()
        .any(|(_, entry)| matches!(entry.value, Cached::Present(_)))
}

/// Byte strings up to this long are kept inline (`[kg]` + a postcard `u64` key + a window
/// namespace is at most 2 + 10 + 20 bytes; most prefixes and user keys are far shorter).
const INLINE_BYTES: usize = 22;

/// A group's `[key group][key][namespace]` prefix, or an entry's user-key bytes: inline when
/// short, so that a lookup compares bytes in place instead of following a pointer, and a
/// cached entry allocates nothing for its key.
#[derive(Clone, PartialEq, Eq, Hash)]
enum ShortBytes {
    /// The first `len` bytes of `bytes`; the rest are zero, so equal prefixes are equal here.
    Inline { len: u8, bytes: [u8; INLINE_BYTES] },
    /// Longer byte strings (only these allocate).
    Boxed(Box<[u8]>),
}

impl ShortBytes {
    #[inline]
    fn new(from: &[u8]) -> Self {
        match u8::try_from(from.len()) {
            Ok(len) if from.len() <= INLINE_BYTES => {
                let mut bytes = [0u8; INLINE_BYTES];
                bytes[..from.len()].copy_from_slice(from);
                ShortBytes::Inline { len, bytes }
            }
            _ => ShortBytes::Boxed(from.into()),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            ShortBytes::Inline { len, bytes } => &bytes[..usize::from(*len)],
            ShortBytes::Boxed(bytes) => bytes,
        }
    }
}

/// A group with its CLOCK reference bit.
struct Slot<V> {
    group: Group<V>,
    /// Used since the eviction hand last passed.
    referenced: bool,
    /// The group holds every entry of its prefix (it was read whole from RocksDB when it
    /// was cached, and every write since went through it): a user key it lacks has no
    /// value, and RocksDB need not be asked.
    complete: bool,
}

type Groups<V> = ProbeTable<ShortBytes, Slot<V>>;

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
        self.groups.prefetch(&ShortBytes::new(prefix));
    }

    /// What the cache knows of the entry of `user_key` under `prefix` (marking its group
    /// used).
    #[inline]
    pub(crate) fn get(&mut self, prefix: &[u8], user_key: &[u8]) -> Lookup<'_, V> {
        let Some(slot) = self.groups.get_mut(&ShortBytes::new(prefix)) else {
            return Lookup::NoGroup;
        };
        slot.referenced = true;
        match slot.group.get(&ShortBytes::new(user_key)) {
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
        )
    }

    /// Caches the group under `prefix`, not cached yet, with `entries` as read from RocksDB
    /// (clean; an `Absent` one is known not to be there); `complete`: `entries` has every
    /// entry RocksDB holds under `prefix`. An empty group is not cached (it would hold
    /// memory the capacity does not count).
    pub(crate) fn fill_group(
        &mut self,
        prefix: &[u8],
        entries: Vec<(Vec<u8>, Cached<V>)>,
        complete: bool,
    ) -> Result<()> {
        let prefix = ShortBytes::new(prefix);
        if entries.is_empty() {
            return Ok(());
        }
        if self.groups.contains_key(&prefix) {
            // Replacing a cached group could drop its unwritten changes.
            return Err(EddyError::Internal(format!(
                "state \"{}\": an object-cache group was read again while cached",
                self.state
            )));
        }
        let added = entries.len();
        let mut group = Group::default();
        for (user_key, value) in entries {
            let in_db = matches!(value, Cached::Present(_));
            let entry = Entry {
                value,
                dirty: false,
                in_db,
            };
            group.insert(ShortBytes::new(&user_key), entry);
        }
        let slot = Slot {
            group,
            referenced: true,
            complete,
        };
        self.groups.insert(prefix, slot);
        self.entries += added;
        if self.entries > self.capacity {
            self.evict()?;
        }
        Ok(())
    }

    /// Records a write (`Present`) or removal (`Absent`) of `user_key` under `prefix`: dirty,
    /// written back later.
    pub(crate) fn write(&mut self, prefix: &[u8], user_key: &[u8], value: Cached<V>) -> Result<()> {
        // Whether RocksDB may hold the key survives from the cached entry; a complete group
        // without the entry knows RocksDB holds none; unknown means yes.
        let in_db = match self.groups.get_mut(&ShortBytes::new(prefix)) {
            Some(slot) => match slot.group.get(&ShortBytes::new(user_key)) {
                Some(entry) => entry.in_db,
                None => !slot.complete,
            },
            None => true,
        };
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
        let prefix = ShortBytes::new(prefix);
        let user_key = ShortBytes::new(user_key);
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
                        complete: false,
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
    pub(crate) fn known_empty(&mut self, prefix: &[u8]) -> Option<bool> {
        let slot = self.groups.get(&ShortBytes::new(prefix))?;
        match (has_present(&slot.group), slot.complete) {
            (true, _) => Some(false),
            (false, true) => Some(true),
            (false, false) => None,
        }
    }

    /// Drops the entries under `prefix`, dirty or not (their key range is about to be deleted
    /// in RocksDB).
    pub(crate) fn drop_group(&mut self, prefix: &[u8]) {
        if let Some(slot) = self.groups.remove(&ShortBytes::new(prefix)) {
            self.entries -= slot.group.len();
        }
    }

    /// Writes the dirty entries under `prefix` to RocksDB (before RocksDB is read there).
    pub(crate) fn flush_group(&mut self, prefix: &[u8]) -> Result<()> {
        let (groups, mut writer) = self.split();
        let Some(slot) = groups.get_mut(&ShortBytes::new(prefix)) else {
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
    fn choose_victims(&mut self, target: usize) -> Vec<ShortBytes> {
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

/// The most entries the first read of a map's group takes from RocksDB (fewer if the cache
/// is smaller). A group read whole is complete: its absent keys are then known absent without
/// asking RocksDB (W3's first `get` of every map key of a customer). A larger map is cached
/// in part and read entry by entry beyond that.
const GROUP_READ_MAX: usize = 64;

/// Reads the value under the stored key `stored_key` (whose first `prefix_len` bytes are the
/// `[key group][key][namespace]` prefix, the rest the user key) through `cache`: the cached
/// entry; else, for a map whose group is not cached, the group as RocksDB holds it (up to
/// [`GROUP_READ_MAX`] entries); else RocksDB's value. What was read is cached clean.
#[inline]
pub(crate) fn read_through<K: Key, N: Namespace, V: StateValue>(
    cache: &SharedCache<V>,
    core: &StateCore<K, N>,
    kg: KeyGroup,
    stored_key: &[u8],
    prefix_len: usize,
) -> Result<Option<V>> {
    let (prefix, user_key) = stored_key.split_at(prefix_len.min(stored_key.len()));
    let read_group = match cache.borrow_mut().get(prefix, user_key) {
        Lookup::Cached(cached) => return Ok(cached.value()),
        Lookup::Absent => return Ok(None),
        Lookup::Unknown => false,
        // A value state's group is its one entry: the point read below reads it whole.
        Lookup::NoGroup => !user_key.is_empty(),
    };
    if read_group {
        if let Some(answer) = read_group_through(cache, core, kg, prefix, user_key)? {
            return Ok(answer);
        }
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

/// Caches the group under `prefix`, not cached yet, from RocksDB: whole if it has at most
/// [`GROUP_READ_MAX`] entries (and fits the cache), else its first ones. Returns the value
/// of `user_key` if that answers it (the entry was read, or the group was read whole and
/// lacks it), `None` if RocksDB must still be asked.
fn read_group_through<K: Key, N: Namespace, V: StateValue>(
    cache: &SharedCache<V>,
    core: &StateCore<K, N>,
    kg: KeyGroup,
    prefix: &[u8],
    user_key: &[u8],
) -> Result<Option<Option<V>>> {
    let most = GROUP_READ_MAX.min(cache.borrow().capacity);
    let mut iter = core.prefix_iter(kg, prefix)?;
    let mut entries = Vec::new();
    let mut found = None;
    while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
        if entries.len() == most {
            break;
        }
        let entry_key = key.get(prefix.len()..).unwrap_or_default();
        let value: V = core.decode(kg, value)?;
        if entry_key == user_key {
            found = Some(value.clone());
        }
        entries.push((entry_key.to_vec(), Cached::Present(value)));
        iter.next();
    }
    let complete = iter.key().is_none();
    if complete {
        core.check_end(kg, &iter)?;
    }
    drop(iter);
    let answer = match (found, complete) {
        (Some(value), _) => Some(Some(value)),
        (None, true) => {
            // Cached absent, so the group is never empty (see `fill_group`).
            entries.push((user_key.to_vec(), Cached::Absent));
            Some(None)
        }
        (None, false) => None,
    };
    cache.borrow_mut().fill_group(prefix, entries, complete)?;
    Ok(answer)
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
