//! The embedded RocksDB state backend: keyed state as serialized bytes in one RocksDB
//! instance per keyed operator subtask, so state can grow far beyond memory.
//!
//! Every access serializes (with [`postcard`], through `serde`): a read decodes the stored
//! bytes, a write encodes into a buffer the handle reuses, so a `get`/`put` allocates nothing
//! in steady state beyond the decoded value. Writes skip RocksDB's write-ahead log:
//! durability comes from checkpoints, as in Flink.
//!
//! # Layout (the contract of checkpoints, rescaling and savepoints)
//!
//! * **One column family per registered state**, named `state:<state name>` (a prefix
//!   keeps state names from clashing with RocksDB's `default` column family).
//! * **Keys** are `[key group: u16 big-endian][postcard(key)][postcard(namespace)]`, plus a
//!   suffix for two kinds of state:
//!   * value, reducing and aggregating state: no suffix (one RocksDB key per key and
//!     namespace);
//!   * map state: `[postcard(user key)]`, one RocksDB key per entry, so `get`, `put`,
//!     `remove` and `contains` touch one key and iteration is a prefix scan over
//!     `[key group][key][namespace]`;
//!   * list state: `[chunk epoch: u64 big-endian]`, see below.
//!
//!   A key group is therefore one contiguous key range (a checkpoint writes, and a rescale
//!   moves, ranges). The postcard encoding of a fixed type is self-delimiting, so no key's
//!   bytes are a prefix of another key's of the same type, and the prefix of one (key,
//!   namespace) never covers another's entries. It is **not order-preserving** (integers are
//!   varints, for example): map iteration order is unspecified, as on the heap, and range
//!   scans are meaningful only per key group and per prefix. The default namespace `()`
//!   encodes to zero bytes: plain keyed state pays nothing for namespaces.
//! * **Values** are `postcard(value)`: `T` for value and reducing state, the accumulator
//!   for aggregating state, the user value for a map entry. A state with TTL puts an 8-byte
//!   header in front of every value (of every list element): the last-access time in
//!   milliseconds, `u64` big-endian, at offset 0, where the compaction filter reads it
//!   without knowing the value type.
//! * **Lists** are chunks of elements, each element `[LEB128 length][payload]` (the payload
//!   being `[TTL header]postcard(element)`). `add` is a RocksDB *merge* of the framed
//!   element: the merge operator concatenates bytes, so an append never reads the list.
//!   A list is spread over chunks `[prefix][epoch]`: the state counts the bytes appended to
//!   it over all keys and starts a new epoch whenever the current one would exceed
//!   [`RocksDbConfig::list_chunk_bytes`], so no RocksDB value exceeds that threshold (unless
//!   one element alone does) and a list has no size limit (Flink's RocksDB lists stop at
//!   2^31 bytes). Epochs sort in insertion order, so reading the chunks in key order reads
//!   the list in order. A restore writes each restored list through the state's epoch
//!   counter, so later appends sort after the restored elements.
//! * **Timers** (unless [`RocksDbConfig::heap_timers`]) live in two column families per time
//!   domain of each timer service, `timers:<service>:<event|processing>:order` (keys
//!   `[timestamp][sequence]`, both `u64` big-endian, so the first key is the next timer) and
//!   `...:index` (keys `[key group][key][namespace][timestamp]`, for deduplication, deletion
//!   and per-key-group snapshots); see the `timers` module.
//! * **Snapshots** ([`crate::snapshot`]) copy the value bytes as they are (they are the
//!   canonical payloads) and split each stored key into key group, key, namespace and
//!   suffix; a list's chunks are concatenated into one entry. A restore builds the keys
//!   again and writes the values in write batches.
//!
//! # Behaviour
//!
//! * `ListState::get` decodes one chunk at a time (the first one before returning, so its
//!   errors are returned by `get`); `MapState` iteration decodes 1024 entries at a time, from
//!   a RocksDB iterator that reads a consistent view, so the map may be modified while it is
//!   iterated. An error found later inside an iterator (which cannot return one) ends the
//!   iteration and is returned by the next access to the state.
//! * `clear` of a list or map, and `update` of a list, delete the key's prefix with one
//!   range tombstone: no read.
//! * Corrupt bytes, a value of another type, or a RocksDB failure become
//!   [`EddyError::State`](eddy_core::EddyError::State) naming the state and the key group;
//!   nothing panics and nothing is skipped.
//! * TTL follows the heap backend's semantics (update type, visibility, cleanup on read,
//!   per element and per entry). Incremental cleanup is not done (as in Flink, whose RocksDB
//!   backend ignores it); instead every TTL state gets a compaction filter that drops expired
//!   values while RocksDB compacts (Flink's `cleanupInRocksdbCompactFilter`, on by default
//!   there too), reading the backend's TTL clock once per compaction. A list chunk is
//!   dropped once all of its elements have expired; merge operands are only filtered once a
//!   compaction has merged them into a value.
//! * `state_len` and `keys` scan the state's column family: O(state size).
//! * Memory: see [`RocksDbConfig`] (one block cache per process that also accounts for the
//!   memtables of every instance).
//! * **Write-back object cache** (optional, [`RocksDbConfig::object_cache_entries`]): value,
//!   reducing, aggregating and map state without TTL keep the deserialized values of hot
//!   keys in a bounded cache per state (CLOCK eviction), written to RocksDB in batches when
//!   evicted and before anything reads RocksDB directly (snapshots, map iteration, scans).
//!   It never changes a result: the conformance suite runs with it off, on, and with two
//!   entries.

mod cache;
mod codec;
mod config;
mod core;
mod db;
mod incremental;
mod list;
mod map;
mod snapshot;
mod timers;
mod ttl;
mod value;

use std::any::TypeId;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::path::Path;
use std::rc::Rc;
use std::sync::{Arc, Mutex, PoisonError};

use eddy_core::{EddyError, Key, KeyGroup, Result, StateValue};
use rocksdb::statistics::Ticker;
use rocksdb::{Cache, DBWithThreadMode, MultiThreaded};

use self::cache::{CacheControl, ObjectCache, SharedCache};
use self::codec::{encode_into, start_key};
use self::config::MemtableLayout;
pub use self::config::RocksDbConfig;
use self::core::{FailureSlot, StateCore};
use self::db::Db;
pub(crate) use self::incremental::supports_incremental;
pub use self::incremental::{
    incremental_shared_paths, incremental_to_full, IncrementalCheckpoint, NativeFile,
};
use self::list::{append_merge, ListShared, RocksList};
use self::map::RocksMap;
pub(crate) use self::snapshot::CheckpointScan;
pub(crate) use self::timers::RocksTimerQueue;
use self::ttl::{SharedClock, TtlFilterFactory, TtlLayout, TtlRules};
use self::value::{RocksAggregating, RocksReducing, RocksValue};
use crate::descriptor::{
    AggregateFunction, AggregatingStateDescriptor, ListStateDescriptor, MapStateDescriptor,
    ReducingStateDescriptor, StateKind, ValueStateDescriptor,
};
use crate::handle::{AggregatingState, ListState, MapState, ReducingState, ValueState};
use crate::key_context::KeyContext;
use crate::namespace::{Namespace, NamespaceCell, Namespaced};
use crate::timers::{Queue, TimeDomain, TimerService};
use crate::ttl::{ManualClock, StateTtlConfig, SystemClock, TtlClock, TtlTimeDomain};

/// The RocksDB backend of one keyed operator subtask (see the [module docs](self)).
pub struct RocksDbKeyedStateBackend<K> {
    context: Rc<KeyContext<K>>,
    db: Rc<Db>,
    cache: Cache,
    config: RocksDbConfig,
    states: BTreeMap<String, Registered>,
    /// Created with the first TTL state (or set), so that a backend without TTL states never
    /// starts [`SystemClock`]'s ticker thread.
    ttl_clock: Option<SharedClock>,
    /// The event-time clock (the operator's watermark) of event-time TTL states.
    event_clock: Option<SharedClock>,
    /// The object caches of states without a namespace, whose groups' prefix is
    /// `[kg][key]` alone, so [`prefetch`](Self::prefetch) knows it from the key.
    plain_caches: Vec<Rc<dyn CacheControl>>,
    /// Reused to encode the prefix of a key being prefetched.
    prefetch_buf: Cell<Vec<u8>>,
}

/// A registered state.
struct Registered {
    kind: StateKind,
    ttl: Option<StateTtlConfig>,
    /// The value (and namespace) types it was registered with.
    types: TypeId,
    cf_name: String,
    list: Option<Rc<ListShared>>,
    failure: FailureSlot,
    /// Where the key and the namespace of a stored key end (see [`split_key`]).
    split_key: fn(&[u8]) -> Option<(usize, usize)>,
    /// The state's object cache, created with its first handle if the configuration asks
    /// for one and the state can have one (see [`cache`]).
    cache: Option<Rc<dyn CacheControl>>,
}

/// What a handle needs from its state's registration.
struct Registration {
    cf_name: String,
    list: Option<Rc<ListShared>>,
    failure: FailureSlot,
    rules: Option<TtlRules>,
}

/// Where `[key group][key]` and `[key group][key][namespace]` end in a stored key: the
/// lengths of both prefixes.
fn split_key<K: Key, N: Namespace>(key: &[u8]) -> Option<(usize, usize)> {
    let rest = key.get(2..)?;
    let (_, after_key) = postcard::take_from_bytes::<K>(rest).ok()?;
    let (_, after_ns) = postcard::take_from_bytes::<N>(after_key).ok()?;
    Some((key.len() - after_key.len(), key.len() - after_ns.len()))
}

/// The `[key group][key][namespace]` prefix of a stored key of a map or list state: the
/// prefix extractor of their hash memtables ([`MemtableLayout::KeyNamespace`]). RocksDB
/// calls it on every key it inserts or looks up there, so it must not fail: a key that does
/// not split (none does, but the bytes come from a file) is its own prefix.
fn key_namespace_prefix<K: Key, N: Namespace>(stored: &[u8]) -> &[u8] {
    match split_key::<K, N>(stored) {
        Some((_, namespace_end)) => &stored[..namespace_end],
        None => stored,
    }
}

/// The namespace cell of plain keyed state: the default namespace, always set.
fn default_namespace() -> Rc<NamespaceCell<()>> {
    let cell = NamespaceCell::new();
    cell.set(());
    Rc::new(cell)
}

impl<K: Key> RocksDbKeyedStateBackend<K> {
    /// Opens a fresh RocksDB instance, in a new directory under `config.working_dir`, for the
    /// subtask whose current key lives in `context`.
    pub fn new(context: Rc<KeyContext<K>>, config: &RocksDbConfig) -> Result<Self> {
        config.validate()?;
        let memory = config.shared_memory();
        let db = Db::open(config, config.db_options(&memory))?;
        let cache = memory.cache;
        Ok(RocksDbKeyedStateBackend {
            context,
            db: Rc::new(db),
            cache,
            config: config.clone(),
            states: BTreeMap::new(),
            ttl_clock: None,
            event_clock: None,
            plain_caches: Vec::new(),
            prefetch_buf: Cell::new(Vec::with_capacity(32)),
        })
    }

    /// Starts loading the object-cache slots of `key` (in key group `kg`) of every state
    /// without a namespace into the CPU caches; changes nothing. The runtime calls this for
    /// records a few positions ahead, as for the heap backend. Without object caches there
    /// is nothing to warm: RocksDB's own reads go through its block cache.
    #[inline]
    pub fn prefetch(&self, kg: KeyGroup, key: &K) {
        if self.plain_caches.is_empty() {
            return;
        }
        let mut buf = self.prefetch_buf.take();
        start_key(&mut buf, kg);
        // A key that cannot be encoded fails at its access, not here.
        if encode_into(key, &mut buf).is_ok() {
            for cache in &self.plain_caches {
                cache.prefetch(&buf);
            }
        }
        self.prefetch_buf.set(buf);
    }

    /// The instance directory (deleted when the backend and its handles are dropped).
    pub fn path(&self) -> &Path {
        self.db.path()
    }

    /// The configuration the backend was opened with.
    pub fn config(&self) -> &RocksDbConfig {
        &self.config
    }

    /// The names of the registered states, in order.
    pub fn state_names(&self) -> impl Iterator<Item = &str> {
        self.states.keys().map(String::as_str)
    }

    /// The RocksDB instance, for inspection (tests, diagnosis, snapshots).
    pub fn db(&self) -> &DBWithThreadMode<MultiThreaded> {
        &self.db.rdb
    }

    /// The column family of the state called `name`, if registered.
    pub fn column_family_name(&self, name: &str) -> Option<&str> {
        self.states.get(name).map(|r| r.cf_name.as_str())
    }

    /// Bytes in use in the block cache this instance shares with every instance of the
    /// process that has the same memory budget (memtables included).
    pub fn block_cache_usage(&self) -> usize {
        self.cache.get_usage()
    }

    /// The value of a RocksDB statistics ticker (0 unless [`RocksDbConfig::statistics`]).
    pub fn ticker(&self, ticker: Ticker) -> u64 {
        self.db.options.get_ticker_count(ticker)
    }

    /// Flushes the memtables of the state `name` and compacts all of its files (running its
    /// TTL compaction filter over everything). For tests and maintenance.
    pub fn compact_state(&self, name: &str) -> Result<()> {
        self.flush_object_caches()?;
        let registered = self.registered(name)?;
        let cf = self.db.cf(&registered.cf_name)?;
        self.db
            .rdb
            .flush_cf(&cf)
            .map_err(|e| EddyError::state(name, format!("RocksDB flush failed: {e}")))?;
        self.db
            .rdb
            .compact_range_cf(&cf, None::<&[u8]>, None::<&[u8]>);
        Ok(())
    }

    /// Makes `clock` the time source of every TTL state of this backend and of their
    /// compaction filters, including states registered before (default: [`SystemClock`]).
    pub fn set_ttl_clock(&mut self, clock: Arc<dyn TtlClock>) {
        match &self.ttl_clock {
            Some(shared) => *shared.lock().unwrap_or_else(PoisonError::into_inner) = clock,
            None => self.ttl_clock = Some(Arc::new(Mutex::new(clock))),
        }
    }

    /// Makes `clock` the time source of every event-time TTL state and its compaction filter
    /// (the runtime passes the operator's watermark); until then event time stands at 0.
    pub fn set_event_time_clock(&mut self, clock: Arc<dyn TtlClock>) {
        match &self.event_clock {
            Some(shared) => *shared.lock().unwrap_or_else(PoisonError::into_inner) = clock,
            None => self.event_clock = Some(Arc::new(Mutex::new(clock))),
        }
    }

    /// The clock of a TTL state configured by `config`.
    fn clock_for(&mut self, config: &StateTtlConfig) -> SharedClock {
        if config.time_domain() == TtlTimeDomain::EventTime {
            let clock = self.event_clock.get_or_insert_with(|| {
                let zero: Arc<dyn TtlClock> = Arc::new(ManualClock::new(0));
                Arc::new(Mutex::new(zero))
            });
            return Arc::clone(clock);
        }
        self.shared_ttl_clock()
    }

    /// The TTL clock, starting the default [`SystemClock`] if none was set.
    fn shared_ttl_clock(&mut self) -> SharedClock {
        let clock = self.ttl_clock.get_or_insert_with(|| {
            let system: Arc<dyn TtlClock> = Arc::new(SystemClock::new());
            Arc::new(Mutex::new(system))
        });
        Arc::clone(clock)
    }

    /// The number of (key, namespace) pairs holding a value in the state `name` (expired
    /// values not cleaned up yet included), or `None` if no such state is registered or its
    /// keys cannot be read. Scans the state: O(state size).
    pub fn state_len(&self, name: &str) -> Option<usize> {
        self.flush_object_caches().ok()?;
        let registered = self.states.get(name)?;
        let cf = self.db.cf(&registered.cf_name).ok()?;
        let mut iter = self.db.rdb.raw_iterator_cf_opt(&cf, db::total_order());
        iter.seek_to_first();
        let (mut count, mut last) = (0, Vec::new());
        while let Some(key) = iter.key() {
            let prefix = &key[..(registered.split_key)(key)?.1];
            if prefix != last.as_slice() {
                count += 1;
                last = prefix.to_vec();
            }
            iter.next();
        }
        iter.status().ok()?;
        Some(count)
    }

    /// The keys holding a value in the state called `state_name` (in any namespace), in key
    /// group order, else in no particular order. An error if no such state is registered.
    pub fn keys(&self, state_name: &str) -> Result<Vec<K>> {
        self.flush_object_caches()?;
        let registered = self.registered(state_name)?;
        let cf = self.db.cf(&registered.cf_name)?;
        let mut iter = self.db.rdb.raw_iterator_cf_opt(&cf, db::total_order());
        iter.seek_to_first();
        let (mut keys, mut last) = (Vec::new(), Vec::new());
        while let Some(stored) = iter.key() {
            let kg = stored
                .get(..2)
                .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
            let (key, rest) = stored
                .get(2..)
                .and_then(|bytes| postcard::take_from_bytes::<K>(bytes).ok())
                .ok_or_else(|| db::decode_error(state_name, kg, "key", "not a key of this type"))?;
            let key_bytes = &stored[..stored.len() - rest.len()];
            if key_bytes != last.as_slice() {
                keys.push(key);
                last = key_bytes.to_vec();
            }
            iter.next();
        }
        iter.status()
            .map_err(|e| db::rocks_error(state_name, 0, e))?;
        Ok(keys)
    }

    /// Writes the dirty entries of every state's object cache to RocksDB (before anything
    /// reads RocksDB directly: snapshots, scans, compactions). The entries stay cached.
    pub fn flush_object_caches(&self) -> Result<()> {
        self.states
            .values()
            .filter_map(|registered| registered.cache.as_ref())
            .try_for_each(|cache| cache.flush())
    }

    /// The timer service called `name`: its queues in RocksDB, in column families created
    /// now, unless the configuration keeps timers on the heap.
    pub(crate) fn timer_service<N: Namespace>(&self, name: &str) -> Result<TimerService<K, N>> {
        let context = Rc::clone(&self.context);
        if self.config.heap_timers {
            return Ok(TimerService::new(name, context));
        }
        let first_kg = self.context.key_group_range().start();
        let options = || self.config.cf_options(&self.cache);
        let queue = |domain| RocksTimerQueue::create(&self.db, name, domain, first_kg, options);
        Ok(TimerService::with_queues(
            name,
            context,
            Queue::RocksDb(queue(TimeDomain::EventTime)?),
            Queue::RocksDb(queue(TimeDomain::ProcessingTime)?),
        ))
    }

    /// Entries in the object cache of the state `name` (0 without a cache).
    pub fn object_cache_len(&self, name: &str) -> usize {
        self.states
            .get(name)
            .and_then(|registered| registered.cache.as_ref())
            .map_or(0, |cache| cache.cached_entries())
    }

    /// The object cache of the state `name` holding values of type `V`, created on first use;
    /// `None` if the configuration has no cache or the state cannot have one (list and TTL
    /// states: see [`cache`]).
    fn cache_for<N: Namespace, V: StateValue>(
        &mut self,
        name: &str,
    ) -> Result<Option<Rc<SharedCache<V>>>> {
        let capacity = self.config.object_cache_entries;
        let db = Rc::clone(&self.db);
        let registered = self
            .states
            .get_mut(name)
            .ok_or_else(|| EddyError::state(name, "no state of this name is registered"))?;
        if capacity == 0 || registered.ttl.is_some() || registered.kind == StateKind::List {
            return Ok(None);
        }
        let cf_name = &registered.cf_name;
        // A state restored (or otherwise written) before its cache exists has values in
        // RocksDB the cache has not seen.
        let db_empty = registered.cache.is_none() && db.cf_is_empty(name, cf_name)?;
        let mut created = false;
        let control = registered.cache.get_or_insert_with(|| {
            created = true;
            let cache: Rc<SharedCache<V>> = Rc::new(RefCell::new(ObjectCache::new(
                capacity, &db, name, cf_name, db_empty,
            )));
            cache
        });
        let control = Rc::clone(control);
        if created && TypeId::of::<N>() == TypeId::of::<()>() {
            self.plain_caches.push(Rc::clone(&control));
        }
        control
            .as_any()
            .downcast::<SharedCache<V>>()
            .map(Some)
            .map_err(|_| {
                EddyError::Internal(format!(
                    "state \"{name}\": its object cache holds another value type"
                ))
            })
    }

    fn registered(&self, name: &str) -> Result<&Registered> {
        self.states
            .get(name)
            .ok_or_else(|| EddyError::state(name, "no state of this name is registered"))
    }

    /// Returns the registration of `name`, registering it (with its column family) first if
    /// needed. `V` is the stored type, checked on every later registration.
    fn register<N: Namespace, V: 'static>(
        &mut self,
        name: &str,
        kind: StateKind,
        ttl: Option<&StateTtlConfig>,
    ) -> Result<Registration> {
        if !self.states.contains_key(name) {
            self.create_state::<N, V>(name, kind, ttl)?;
        }
        let registered = self.registered(name)?;
        if registered.kind != kind {
            return Err(EddyError::state(
                name,
                format!(
                    "already registered as {:?} state, requested as {kind:?} state",
                    registered.kind
                ),
            ));
        }
        if registered.ttl.as_ref() != ttl {
            return Err(EddyError::state(
                name,
                format!(
                    "already registered with TTL {:?}, requested with TTL {ttl:?}",
                    registered.ttl
                ),
            ));
        }
        if registered.types != TypeId::of::<(N, V)>() {
            return Err(EddyError::state(
                name,
                format!(
                    "already registered with another type, requested as {} (namespace {})",
                    std::any::type_name::<V>(),
                    std::any::type_name::<N>()
                ),
            ));
        }
        let (cf_name, list, failure) = (
            registered.cf_name.clone(),
            registered.list.clone(),
            Rc::clone(&registered.failure),
        );
        let rules = match ttl {
            Some(config) => {
                let clock = self.clock_for(config);
                Some(TtlRules::new(name, config, clock)?)
            }
            None => None,
        };
        Ok(Registration {
            cf_name,
            list,
            failure,
            rules,
        })
    }

    /// Creates the column family of a new state, with the list merge operator and the TTL
    /// compaction filter where they apply.
    fn create_state<N: Namespace, V: 'static>(
        &mut self,
        name: &str,
        kind: StateKind,
        ttl: Option<&StateTtlConfig>,
    ) -> Result<()> {
        // Validate first, so that a refused configuration registers nothing.
        let ttl_ms = ttl.map(|config| config.validate(name)).transpose()?;
        let mut options = self.config.cf_options(&self.cache);
        if kind == StateKind::List {
            options.set_merge_operator_associative("eddy-list-append", append_merge);
        }
        let layout = match kind {
            StateKind::List | StateKind::Map => {
                MemtableLayout::KeyNamespace(key_namespace_prefix::<K, N>)
            }
            _ => MemtableLayout::WholeKey,
        };
        self.config.apply_memtable_layout(&mut options, layout);
        if let (Some(ttl_ms), Some(config)) = (ttl_ms, ttl) {
            let clock = self.clock_for(config);
            options.set_compaction_filter_factory(TtlFilterFactory {
                ttl_ms,
                layout: match kind {
                    StateKind::List => TtlLayout::List,
                    _ => TtlLayout::Single,
                },
                clock,
            });
        }
        let cf_name = format!("state:{name}");
        self.db.create_cf(&cf_name, options)?;
        let list = (kind == StateKind::List)
            .then(|| Rc::new(ListShared::new(self.config.list_chunk_bytes)));
        self.states.insert(
            name.to_string(),
            Registered {
                kind,
                ttl: ttl.cloned(),
                types: TypeId::of::<(N, V)>(),
                cf_name,
                list,
                failure: Rc::new(RefCell::new(None)),
                split_key: split_key::<K, N>,
                cache: None,
            },
        );
        Ok(())
    }

    fn core<N: Namespace>(
        &self,
        name: &str,
        registration: &Registration,
        namespace: Rc<NamespaceCell<N>>,
    ) -> StateCore<K, N> {
        StateCore::new(
            name,
            &registration.cf_name,
            &self.context,
            &self.db,
            namespace,
            Rc::clone(&registration.failure),
        )
    }
}

// Handle construction, generic over the namespace: plain state uses `()`.
impl<K: Key> RocksDbKeyedStateBackend<K> {
    fn value_impl<N: Namespace, T: StateValue>(
        &mut self,
        name: &str,
        kind: StateKind,
        ttl: Option<&StateTtlConfig>,
        namespace: Rc<NamespaceCell<N>>,
    ) -> Result<RocksValue<K, N, T>> {
        let registration = self.register::<N, T>(name, kind, ttl)?;
        let cache = self.cache_for::<N, T>(name)?;
        Ok(RocksValue {
            core: self.core(name, &registration, namespace),
            ttl: registration.rules,
            cache,
            _type: PhantomData,
        })
    }

    fn list_impl<N: Namespace, T: StateValue>(
        &mut self,
        desc: &ListStateDescriptor<T>,
        namespace: Rc<NamespaceCell<N>>,
    ) -> Result<RocksList<K, N, T>> {
        let name = desc.name();
        let registration = self.register::<N, T>(name, StateKind::List, desc.ttl())?;
        let shared = registration.list.clone().ok_or_else(|| {
            EddyError::Internal(format!("list state \"{name}\" has no chunk counter"))
        })?;
        Ok(RocksList {
            core: self.core(name, &registration, namespace),
            shared,
            ttl: registration.rules,
            _type: PhantomData,
        })
    }

    fn map_impl<N: Namespace, UK: Key, UV: StateValue>(
        &mut self,
        desc: &MapStateDescriptor<UK, UV>,
        namespace: Rc<NamespaceCell<N>>,
    ) -> Result<RocksMap<K, N, UK, UV>> {
        let name = desc.name();
        let registration = self.register::<N, (UK, UV)>(name, StateKind::Map, desc.ttl())?;
        let cache = self.cache_for::<N, UV>(name)?;
        Ok(RocksMap {
            core: self.core(name, &registration, namespace),
            ttl: registration.rules,
            cache,
            _type: PhantomData,
        })
    }

    fn reducing_impl<N: Namespace, T: StateValue>(
        &mut self,
        desc: &ReducingStateDescriptor<T>,
        namespace: Rc<NamespaceCell<N>>,
    ) -> Result<RocksReducing<K, N, T>> {
        let value = self.value_impl(desc.name(), StateKind::Reducing, desc.ttl(), namespace)?;
        Ok(RocksReducing {
            value,
            reduce: desc.reduce_fn(),
        })
    }

    fn aggregating_impl<N: Namespace, In: 'static, F: AggregateFunction<In>>(
        &mut self,
        desc: &AggregatingStateDescriptor<In, F>,
        namespace: Rc<NamespaceCell<N>>,
    ) -> Result<RocksAggregating<K, N, In, F>> {
        let value = self.value_impl(desc.name(), StateKind::Aggregating, desc.ttl(), namespace)?;
        Ok(RocksAggregating {
            value,
            function: desc.function(),
            _input: PhantomData,
        })
    }
}

// The public handle constructors, mirroring the heap backend's.
impl<K: Key> RocksDbKeyedStateBackend<K> {
    /// Creates (or re-opens) a value state.
    pub fn value_state<T: StateValue>(
        &mut self,
        desc: &ValueStateDescriptor<T>,
    ) -> Result<ValueState<T>> {
        let value = self.value_impl::<(), T>(
            desc.name(),
            StateKind::Value,
            desc.ttl(),
            default_namespace(),
        )?;
        Ok(ValueState::from_access(Box::new(value)))
    }

    /// Creates (or re-opens) a list state.
    pub fn list_state<T: StateValue>(
        &mut self,
        desc: &ListStateDescriptor<T>,
    ) -> Result<ListState<T>> {
        let list = self.list_impl::<(), T>(desc, default_namespace())?;
        Ok(ListState::from_access(Box::new(list)))
    }

    /// Creates (or re-opens) a map state.
    pub fn map_state<UK: Key, UV: StateValue>(
        &mut self,
        desc: &MapStateDescriptor<UK, UV>,
    ) -> Result<MapState<UK, UV>> {
        let map = self.map_impl::<(), UK, UV>(desc, default_namespace())?;
        Ok(MapState::from_access(Box::new(map)))
    }

    /// Creates (or re-opens) a reducing state.
    pub fn reducing_state<T: StateValue>(
        &mut self,
        desc: &ReducingStateDescriptor<T>,
    ) -> Result<ReducingState<T>> {
        let reducing = self.reducing_impl::<(), T>(desc, default_namespace())?;
        Ok(ReducingState::from_access(Box::new(reducing)))
    }

    /// Creates (or re-opens) an aggregating state.
    pub fn aggregating_state<In: 'static, F: AggregateFunction<In>>(
        &mut self,
        desc: &AggregatingStateDescriptor<In, F>,
    ) -> Result<AggregatingState<In, F::Out>> {
        let aggregating = self.aggregating_impl::<(), In, F>(desc, default_namespace())?;
        Ok(AggregatingState::from_access(Box::new(aggregating)))
    }

    /// Creates (or re-opens) a value state scoped to a namespace of type `N`.
    pub fn namespaced_value_state<N: Namespace, T: StateValue>(
        &mut self,
        desc: &ValueStateDescriptor<T>,
    ) -> Result<Namespaced<ValueState<T>, N>> {
        let namespace = Rc::new(NamespaceCell::new());
        let value = self.value_impl::<N, T>(
            desc.name(),
            StateKind::Value,
            desc.ttl(),
            Rc::clone(&namespace),
        )?;
        let state = ValueState::from_access(Box::new(value));
        Ok(Namespaced::new(desc.name(), state, namespace, None))
    }

    /// Creates (or re-opens) a list state scoped to a namespace of type `N`; its namespaces
    /// merge by concatenation.
    pub fn namespaced_list_state<N: Namespace, T: StateValue>(
        &mut self,
        desc: &ListStateDescriptor<T>,
    ) -> Result<Namespaced<ListState<T>, N>> {
        let namespace = Rc::new(NamespaceCell::new());
        let list = self.list_impl::<N, T>(desc, Rc::clone(&namespace))?;
        let merger = self.list_impl::<N, T>(desc, Rc::clone(&namespace))?;
        let state = ListState::from_access(Box::new(list));
        Ok(Namespaced::new(
            desc.name(),
            state,
            namespace,
            Some(Box::new(merger)),
        ))
    }

    /// Creates (or re-opens) a map state scoped to a namespace of type `N`.
    pub fn namespaced_map_state<N: Namespace, UK: Key, UV: StateValue>(
        &mut self,
        desc: &MapStateDescriptor<UK, UV>,
    ) -> Result<Namespaced<MapState<UK, UV>, N>> {
        let namespace = Rc::new(NamespaceCell::new());
        let map = self.map_impl::<N, UK, UV>(desc, Rc::clone(&namespace))?;
        let state = MapState::from_access(Box::new(map));
        Ok(Namespaced::new(desc.name(), state, namespace, None))
    }

    /// Creates (or re-opens) a reducing state scoped to a namespace of type `N`; its
    /// namespaces merge with the reduce function.
    pub fn namespaced_reducing_state<N: Namespace, T: StateValue>(
        &mut self,
        desc: &ReducingStateDescriptor<T>,
    ) -> Result<Namespaced<ReducingState<T>, N>> {
        let namespace = Rc::new(NamespaceCell::new());
        let reducing = self.reducing_impl::<N, T>(desc, Rc::clone(&namespace))?;
        let merger = self.reducing_impl::<N, T>(desc, Rc::clone(&namespace))?;
        let state = ReducingState::from_access(Box::new(reducing));
        Ok(Namespaced::new(
            desc.name(),
            state,
            namespace,
            Some(Box::new(merger)),
        ))
    }

    /// Creates (or re-opens) an aggregating state scoped to a namespace of type `N`; its
    /// namespaces merge with [`AggregateFunction::merge`].
    pub fn namespaced_aggregating_state<N: Namespace, In: 'static, F: AggregateFunction<In>>(
        &mut self,
        desc: &AggregatingStateDescriptor<In, F>,
    ) -> Result<Namespaced<AggregatingState<In, F::Out>, N>> {
        let namespace = Rc::new(NamespaceCell::new());
        let aggregating = self.aggregating_impl::<N, In, F>(desc, Rc::clone(&namespace))?;
        let merger = self.aggregating_impl::<N, In, F>(desc, Rc::clone(&namespace))?;
        let state = AggregatingState::from_access(Box::new(aggregating));
        Ok(Namespaced::new(
            desc.name(),
            state,
            namespace,
            Some(Box::new(merger)),
        ))
    }
}
