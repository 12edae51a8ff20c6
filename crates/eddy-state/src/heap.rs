//! The heap state backend: objects in per-key-group hash maps, no serialization on access.
//!
//! # Layout and guarantees
//!
//! Each registered state is a [`ShardedTable`]: one [`ProbeTable<K, V>`] per key group of the
//! subtask's range (`V` is `T` for value state, `Vec<T>` for list state, and a map of user
//! keys for map state). Sharding by key group costs nothing on access (the shard index is
//! computed once per record, when the runtime sets the current key) and lets a checkpoint
//! write, and a rescale move, whole key groups.
//!
//! * Reads clone the stored object (`T: Clone`); writes move the caller's object in. Nothing
//!   is serialized and, for keys already present, nothing is allocated.
//! * A list or map cannot be modified while one of its iterators is alive: the modification
//!   returns an error instead of invalidating the iterator.
//! * State lives in memory only; durability comes from checkpoints (a later layer).
//! * A state whose descriptor enables TTL ([`crate::ttl`]) gets its own table type (values
//!   wrapped in [`TtlValue`]) and its own handle, chosen once at registration: states without
//!   TTL run exactly the code they ran before TTL existed.

use std::any::Any;
use std::cell::{Cell, Ref, RefCell, RefMut};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex, PoisonError};

use eddy_core::{EddyError, Key, KeyGroup, KeyGroupRange, Result, StateValue};

use crate::descriptor::{
    AggregateFunction, AggregatingStateDescriptor, ListStateDescriptor, MapStateDescriptor,
    ReduceFn, ReducingStateDescriptor, StateKind, ValueStateDescriptor,
};
use crate::handle::{
    Added, AggregatingState, AggregatingStateAccess, ListState, ListStateAccess, MapState,
    MapStateAccess, ReducingState, ReducingStateAccess, StateIter, ValueState, ValueStateAccess,
};
use crate::key_context::KeyContext;
use crate::namespace::{MergeNamespaces, Namespace, NamespaceCell, Namespaced};
use crate::prefetch::prefetch_read;
use crate::probe_table::ProbeTable;
use crate::small_map::{KeyFilter, SmallMap};
use crate::snapshot::heap_codec::{
    self, Inner, KeyCheck, List, Map, Single, TableCodec, TtlCut, TtlList, TtlMap, TtlSingle,
};
use crate::snapshot::{EntryBlock, EntryWriter, SnapshotError, StateMeta};
use crate::ttl::{
    ManualClock, StateTtlConfig, StateVisibility, SystemClock, TtlClock, TtlTimeDomain, TtlValue,
    UpdateType,
};

/// One hash table per key group of a subtask's range.
///
/// [`freeze`](Self::freeze) copies every key group's entries for an asynchronous snapshot:
/// the copy (a clone of the stored objects into a dense vector, no serialization and no
/// empty slots) is the synchronous part, the encoding runs later on another thread. Copy on write per key group was measured here and
/// cost the access path about 5 % on W1 (a branch on every lookup), paid on every record
/// to save the copy once per checkpoint (BENCHMARKS.md).
///
/// The copies are recycled: a written snapshot hands its tables back ([`Spares`]) and the
/// next freeze copies into them, so a checkpoint neither allocates nor faults in fresh pages
/// for its copy (which cost more than the copying itself). In exchange, a job that
/// checkpoints keeps one copy of its heap state allocated between checkpoints.
#[derive(Debug)]
pub struct ShardedTable<K, V> {
    shards: Vec<ProbeTable<K, V>>,
    /// Copies a table into another (`V: Clone`, known where the table is created).
    copy: CopyFn<K, V>,
    /// Copies of earlier snapshots, written and handed back.
    spares: Spares<K, V>,
}

/// Copies a table's entries into a vector, reusing its memory (see [`ShardedTable::copy`]).
type CopyFn<K, V> = fn(&ProbeTable<K, V>, &mut Vec<(K, V)>);

/// Copies of written snapshots, for the next snapshot to copy into; shared with the thread
/// that writes snapshots, which hands the copies back when done with them.
type Spares<K, V> = Arc<Mutex<Vec<Vec<(K, V)>>>>;

impl<K: Key, V> ShardedTable<K, V> {
    fn new(range: KeyGroupRange, copy: CopyFn<K, V>) -> Self {
        ShardedTable {
            shards: (0..range.len()).map(|_| ProbeTable::new()).collect(),
            copy,
            spares: Arc::default(),
        }
    }

    /// The number of keys holding a value, over all key groups.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.len()).sum()
    }

    /// Whether no key holds a value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entries of one key group (by its offset in the subtask's range).
    pub fn shard(&self, offset: usize) -> Option<&ProbeTable<K, V>> {
        self.shards.get(offset)
    }

    /// A copy of every key group's table as it is now, for a snapshot to encode on another
    /// thread while this table goes on; made in recycled tables where there are any.
    fn freeze(&self) -> FrozenShards<K, V> {
        // In key-group order, as the copies were handed back: each key group copies into
        // its own previous copy.
        let mut spares =
            std::mem::take(&mut *self.spares.lock().unwrap_or_else(PoisonError::into_inner))
                .into_iter();
        let shards = self
            .shards
            .iter()
            .map(|shard| {
                let mut copy = spares.next().unwrap_or_default();
                (self.copy)(shard, &mut copy);
                copy
            })
            .collect();
        FrozenShards {
            shards,
            spares: Arc::clone(&self.spares),
        }
    }

    #[inline]
    fn get(&self, offset: usize, key: &K) -> Option<&V> {
        self.shards[offset].get(key)
    }

    #[inline]
    fn get_mut(&mut self, offset: usize, key: &K) -> Option<&mut V> {
        self.shards[offset].get_mut(key)
    }

    /// The value of `key`, inserted with `default` first if absent; clones the key only then.
    #[inline]
    fn get_or_insert_with(
        &mut self,
        offset: usize,
        key: &K,
        default: impl FnOnce() -> V,
    ) -> &mut V {
        self.shards[offset].get_or_insert_with(key, || key.clone(), default)
    }

    #[inline]
    fn put(&mut self, offset: usize, key: &K, value: V) {
        match self.shards[offset].get_mut(key) {
            Some(slot) => *slot = value,
            None => {
                self.shards[offset].insert(key.clone(), value);
            }
        }
    }

    #[inline]
    fn remove(&mut self, offset: usize, key: &K) -> Option<V> {
        self.shards[offset].remove(key)
    }
}

/// Copies a key group's entries into `into` (for [`ShardedTable::copy`]).
///
/// Only the entries, not the table's slots: at the table's load of 3/8 to 3/4 the slots are
/// 1.3 to 2.7 times as many, each with a tag. Entry `i` is cloned into the previous copy's
/// entry `i` (`clone_from`), which is usually the same key's, so values that own memory
/// (lists, maps) reuse it instead of allocating anew.
fn copy_entries<K: Key, V: Clone>(table: &ProbeTable<K, V>, into: &mut Vec<(K, V)>) {
    let mut entries = table.iter();
    let mut reused = 0;
    for (slot, (key, value)) in into.iter_mut().zip(entries.by_ref()) {
        slot.0.clone_from(key);
        slot.1.clone_from(value);
        reused += 1;
    }
    into.truncate(reused);
    into.extend(entries.map(|(key, value)| (key.clone(), value.clone())));
}

/// A [`ShardedTable`]'s tables as of a snapshot's barrier. Dropping it hands the tables back
/// to the table they were copied from, for its next snapshot.
struct FrozenShards<K, V> {
    shards: Vec<Vec<(K, V)>>,
    spares: Spares<K, V>,
}

impl<K, V> Drop for FrozenShards<K, V> {
    fn drop(&mut self) {
        let mut spares = self.spares.lock().unwrap_or_else(PoisonError::into_inner);
        // One snapshot's worth is all the next freeze uses; a second snapshot written
        // meanwhile (retries) frees its tables instead of keeping them.
        if spares.is_empty() {
            *spares = std::mem::take(&mut self.shards);
        }
    }
}

/// A registered state: its kind, its TTL and its type-erased table.
struct Registered<K> {
    kind: StateKind,
    ttl: Option<StateTtlConfig>,
    table: Rc<dyn Any>,
    /// The same table, for what needs no knowledge of its value type.
    erased: Rc<dyn ErasedTable<K>>,
    /// Where incremental TTL cleanup continues, shared by every handle of the state.
    cleanup: Rc<Cell<CleanupCursor>>,
}

/// What the backend does with a table whatever its value type.
trait ErasedTable<K> {
    /// Prefetches a key's entry (see [`HeapKeyedStateBackend::prefetch`]).
    fn prefetch(&self, offset: usize, key: &K, depth: PrefetchDepth);
    /// The number of keys holding a value, or `None` while the table is being modified.
    fn len(&self) -> Option<usize>;
    /// The keys holding a value, or `None` while the table is being modified.
    fn keys(&self) -> Option<Vec<K>>;
    /// Writes the entries of the key group at `offset` (see [`crate::snapshot`]).
    fn snapshot_shard(
        &self,
        offset: usize,
        w: &mut EntryWriter,
        cut: Option<TtlCut>,
    ) -> std::result::Result<(), SnapshotError>;
    /// Adds the restored entries of `block` to the key group at `offset`.
    fn restore_block(
        &self,
        offset: usize,
        block: &EntryBlock,
        meta: &StateMeta,
        check: &KeyCheck,
    ) -> std::result::Result<(), SnapshotError>;
    /// A copy of the tables as they are now, to be written on another thread (see
    /// [`ShardedTable::freeze`]).
    fn freeze(&self) -> std::result::Result<Box<dyn FrozenTable>, SnapshotError>;
}

/// A state's tables as of a snapshot's barrier: written into entry blocks later, on any
/// thread, while the operator goes on with its own copy.
trait FrozenTable: Send {
    /// Writes the entries of the key group at `offset` (see [`crate::snapshot`]).
    fn write_shard(
        &self,
        offset: usize,
        w: &mut EntryWriter,
        cut: Option<TtlCut>,
    ) -> std::result::Result<(), SnapshotError>;
}

struct Frozen<K, V> {
    shards: FrozenShards<K, V>,
    codec: TableCodec<K, V>,
}

impl<K: Key, V: Send> FrozenTable for Frozen<K, V> {
    fn write_shard(
        &self,
        offset: usize,
        w: &mut EntryWriter,
        cut: Option<TtlCut>,
    ) -> std::result::Result<(), SnapshotError> {
        match self.shards.shards.get(offset) {
            Some(entries) => (self.codec.write_copied)(entries, w, cut),
            None => Ok(()),
        }
    }
}

/// Boxes frozen tables (for [`Prefetcher::freeze`]: `V: Send` is known where the table
/// is created, not in the type-erased code).
fn boxed_frozen<K: Key, V: Send + 'static>(
    shards: FrozenShards<K, V>,
    codec: TableCodec<K, V>,
) -> Box<dyn FrozenTable> {
    Box::new(Frozen { shards, codec })
}

/// How far into a key's state a prefetch reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrefetchDepth {
    /// The key's slot in its table: needs only the key's hash.
    Slot,
    /// What the slot points to (a list's tail, a map's entries): reads the slot, so issue it
    /// only once the `Slot` prefetch has had time to land.
    Contents,
}

/// The synchronous part of an asynchronous heap snapshot: every state's tables as of the
/// barrier ([`HeapKeyedStateBackend::freeze_states`]).
pub(crate) struct FrozenStates {
    range: KeyGroupRange,
    states: Vec<FrozenState>,
}

struct FrozenState {
    name: String,
    index: u32,
    cut: Option<TtlCut>,
    tables: Box<dyn FrozenTable>,
}

impl FrozenStates {
    /// The entries of every state per non-empty key group, as [`HeapKeyedStateBackend::
    /// snapshot_state`] would have written them at the barrier.
    pub(crate) fn write(self) -> Result<Vec<Vec<(KeyGroup, EntryBlock)>>> {
        self.states
            .iter()
            .map(|state| {
                write_blocks(self.range, &state.name, state.index, |offset, w| {
                    state.tables.write_shard(offset, w, state.cut)
                })
            })
            .collect()
    }
}

/// The blocks of state `name` (snapshot index `index`) per non-empty key group of `range`,
/// `write` writing one key group's entries by its offset in the range.
fn write_blocks(
    range: KeyGroupRange,
    name: &str,
    index: u32,
    mut write: impl FnMut(usize, &mut EntryWriter) -> std::result::Result<(), SnapshotError>,
) -> Result<Vec<(KeyGroup, EntryBlock)>> {
    let mut writer = EntryWriter::new();
    let mut blocks = Vec::new();
    for (offset, kg) in range.iter().enumerate() {
        write(offset, &mut writer).map_err(|e| e.in_state(name, kg, "cannot snapshot"))?;
        if let Some(block) = writer.finish(index) {
            blocks.push((kg, block));
        }
    }
    Ok(blocks)
}

/// A table plus how to prefetch what one of its values points to, and how to snapshot it.
struct Prefetcher<K, V> {
    table: Table<K, V>,
    /// `None` when a value holds no pointer worth following (value state).
    contents: Option<fn(&V)>,
    codec: TableCodec<K, V>,
    /// Boxes the frozen tables ([`boxed_frozen`] for this `V`).
    freeze: FreezeFn<K, V>,
}

/// See [`Prefetcher::freeze`].
type FreezeFn<K, V> = fn(FrozenShards<K, V>, TableCodec<K, V>) -> Box<dyn FrozenTable>;

impl<K: Key, V> ErasedTable<K> for Prefetcher<K, V> {
    fn len(&self) -> Option<usize> {
        self.table.try_borrow().ok().map(|table| table.len())
    }

    fn keys(&self) -> Option<Vec<K>> {
        let table = self.table.try_borrow().ok()?;
        Some(
            table
                .shards
                .iter()
                .flat_map(|shard| shard.iter().map(|(key, _)| key.clone()))
                .collect(),
        )
    }

    fn snapshot_shard(
        &self,
        offset: usize,
        w: &mut EntryWriter,
        cut: Option<TtlCut>,
    ) -> std::result::Result<(), SnapshotError> {
        let table = self.table.try_borrow().map_err(|_| busy())?;
        match table.shards.get(offset) {
            Some(shard) => (self.codec.write)(shard, w, cut),
            None => Ok(()),
        }
    }

    fn restore_block(
        &self,
        offset: usize,
        block: &EntryBlock,
        meta: &StateMeta,
        check: &KeyCheck,
    ) -> std::result::Result<(), SnapshotError> {
        let mut table = self.table.try_borrow_mut().map_err(|_| busy())?;
        let shard = table.shards.get_mut(offset).ok_or_else(|| {
            SnapshotError(format!(
                "key group offset {offset} outside the subtask's range"
            ))
        })?;
        let entries = block
            .entries(meta)
            .collect::<Result<Vec<_>>>()
            .map_err(|e| SnapshotError(e.to_string()))?;
        // A heap snapshot lists a key group's keys in the slot order of its hash table, which
        // is the order of their home slots. Inserted in that order into a growing table, the
        // first keys all have homes in the table's first part and pile up into one cluster
        // (quadratic probing: a million keys took seconds). A stride coprime with the count
        // visits every entry once, spread evenly over the homes.
        let n = entries.len();
        let stride: u64 = [104_729, 7_919, 1_009]
            .into_iter()
            .find(|prime| n as u64 % prime != 0)
            .unwrap_or(1);
        for i in 0..n as u64 {
            // `n` is a block's entry count (below 2^40), so this cannot overflow.
            let next = (i * stride % n as u64) as usize;
            (self.codec.read)(shard, &entries[next], check)?;
        }
        Ok(())
    }

    fn freeze(&self) -> std::result::Result<Box<dyn FrozenTable>, SnapshotError> {
        let table = self.table.try_borrow().map_err(|_| busy())?;
        Ok((self.freeze)(table.freeze(), self.codec))
    }

    #[inline]
    fn prefetch(&self, offset: usize, key: &K, depth: PrefetchDepth) {
        let Ok(table) = self.table.try_borrow() else {
            return;
        };
        let Some(shard) = table.shards.get(offset) else {
            return;
        };
        match depth {
            PrefetchDepth::Slot => shard.prefetch(key),
            PrefetchDepth::Contents => {
                if let (Some(contents), Some(value)) = (self.contents, shard.get(key)) {
                    contents(value);
                }
            }
        }
    }
}

/// The error of a table borrowed while it is snapshotted or restored: a handle is iterating
/// it, which the runtime never does between records.
fn busy() -> SnapshotError {
    SnapshotError("the state is being iterated or modified".into())
}

/// The heap backend of one keyed operator subtask.
pub struct HeapKeyedStateBackend<K> {
    context: Rc<KeyContext<K>>,
    states: BTreeMap<String, Registered<K>>,
    prefetchers: Vec<Rc<dyn ErasedTable<K>>>,
    /// Whether any registered state prefetches at [`PrefetchDepth::Contents`].
    has_contents: bool,
    /// The clock of TTL states; created with the first TTL state (or set), so that a backend
    /// without TTL states never starts [`SystemClock`]'s ticker thread.
    ttl_clock: Option<SharedClock>,
    /// The event-time clock (the operator's watermark) of event-time TTL states.
    event_clock: Option<SharedClock>,
}

/// The backend's TTL clock, shared with every TTL handle, so that a clock set after a state
/// was registered still reaches that state.
type SharedClock = Rc<RefCell<BackendClock>>;

/// A TTL clock as the backend holds it: the default clock without a virtual call (it is read
/// on every access to a TTL state), any other one behind the trait.
enum BackendClock {
    System(SystemClock),
    Injected(Arc<dyn TtlClock>),
}

impl BackendClock {
    #[inline]
    fn now_ms(&self) -> u64 {
        match self {
            BackendClock::System(clock) => clock.now_ms(),
            BackendClock::Injected(clock) => clock.now_ms(),
        }
    }
}

type Table<K, V> = Rc<RefCell<ShardedTable<K, V>>>;

impl<K: Key> HeapKeyedStateBackend<K> {
    /// A backend for the subtask whose current key lives in `context`.
    pub fn new(context: Rc<KeyContext<K>>) -> Self {
        HeapKeyedStateBackend {
            context,
            states: BTreeMap::new(),
            prefetchers: Vec::new(),
            has_contents: false,
            ttl_clock: None,
            event_clock: None,
        }
    }

    /// Makes `clock` the time source of every TTL state of this backend, including states
    /// registered before (default: [`SystemClock`]). Tests inject a
    /// [`ManualClock`](crate::ManualClock) so that they never sleep.
    pub fn set_ttl_clock(&mut self, clock: Arc<dyn TtlClock>) {
        let clock = BackendClock::Injected(clock);
        match &self.ttl_clock {
            Some(shared) => {
                // Borrows of the clock last only for one `now_ms()` call inside this module,
                // which cannot be running now (`&mut self`), so this always succeeds.
                if let Ok(mut current) = shared.try_borrow_mut() {
                    *current = clock;
                }
            }
            None => self.ttl_clock = Some(Rc::new(RefCell::new(clock))),
        }
    }

    /// The TTL clock, starting the default [`SystemClock`] if none was set.
    /// Makes `clock` the time source of every event-time TTL state (the runtime passes the
    /// operator's watermark); until then event time stands at 0 and nothing expires.
    pub fn set_event_time_clock(&mut self, clock: Arc<dyn TtlClock>) {
        let clock = BackendClock::Injected(clock);
        match &self.event_clock {
            Some(shared) => {
                if let Ok(mut current) = shared.try_borrow_mut() {
                    *current = clock;
                }
            }
            None => self.event_clock = Some(Rc::new(RefCell::new(clock))),
        }
    }

    /// The clock of a TTL state configured by `config`.
    fn clock_for(&mut self, config: &StateTtlConfig) -> SharedClock {
        if config.time_domain() == TtlTimeDomain::EventTime {
            let clock = self.event_clock.get_or_insert_with(|| {
                Rc::new(RefCell::new(BackendClock::Injected(Arc::new(
                    ManualClock::new(0),
                ))))
            });
            return Rc::clone(clock);
        }
        self.shared_ttl_clock()
    }

    fn shared_ttl_clock(&mut self) -> SharedClock {
        let clock = self
            .ttl_clock
            .get_or_insert_with(|| Rc::new(RefCell::new(BackendClock::System(SystemClock::new()))));
        Rc::clone(clock)
    }

    /// The number of keys holding a value in the state called `name` (expired values that no
    /// cleanup has removed yet included), or `None` if no such state is registered.
    pub fn state_len(&self, name: &str) -> Option<usize> {
        self.states.get(name)?.erased.len()
    }

    /// The keys holding a value in the state called `name` (in any namespace; expired TTL
    /// values that no cleanup has removed yet included).
    pub fn keys(&self, name: &str) -> Result<Vec<K>> {
        let registered = self
            .states
            .get(name)
            .ok_or_else(|| EddyError::state(name, "no state of this name is registered"))?;
        registered.erased.keys().ok_or_else(|| {
            EddyError::state(
                name,
                "cannot list the keys while the state is being modified",
            )
        })
    }

    /// The TTL configuration of the state called `name`, if it is registered with one.
    pub fn state_ttl(&self, name: &str) -> Option<&StateTtlConfig> {
        self.states.get(name)?.ttl.as_ref()
    }

    /// The entries of the state `name` per non-empty key group, as blocks of snapshot index
    /// `index` (see [`crate::snapshot`]). TTL states with `cleanup_full_snapshot` leave out
    /// what has expired by now.
    pub(crate) fn snapshot_state(&self, name: &str, index: u32) -> Result<Vec<(u16, EntryBlock)>> {
        let registered = self.registered(name)?;
        let cut = self.cut_of(name, registered);
        let erased = &registered.erased;
        write_blocks(self.context.key_group_range(), name, index, |offset, w| {
            erased.snapshot_shard(offset, w, cut)
        })
    }

    /// A copy of the tables of `states` (registered states, in snapshot order) as they are
    /// now, with their TTL cuts taken now: an asynchronous snapshot, written by
    /// [`FrozenStates::write`] on any thread while this backend goes on.
    pub(crate) fn freeze_states(&self, states: &[StateMeta]) -> Result<FrozenStates> {
        let frozen = states
            .iter()
            .zip(0u32..)
            .map(|(meta, index)| {
                let registered = self.registered(&meta.name)?;
                let tables = registered
                    .erased
                    .freeze()
                    .map_err(|e| EddyError::state(&meta.name, e.0))?;
                Ok(FrozenState {
                    name: meta.name.clone(),
                    index,
                    cut: self.cut_of(&meta.name, registered),
                    tables,
                })
            })
            .collect::<Result<_>>()?;
        Ok(FrozenStates {
            range: self.context.key_group_range(),
            states: frozen,
        })
    }

    fn registered(&self, name: &str) -> Result<&Registered<K>> {
        self.states
            .get(name)
            .ok_or_else(|| EddyError::state(name, "no state of this name is registered"))
    }

    fn cut_of(&self, name: &str, registered: &Registered<K>) -> Option<TtlCut> {
        registered
            .ttl
            .as_ref()
            .and_then(|config| self.cut(name, config))
    }

    /// Where a snapshot of a TTL state configured by `config` cuts expired values off, if it
    /// does (`cleanup_full_snapshot`): at the current time of the state's clock.
    fn cut(&self, name: &str, config: &StateTtlConfig) -> Option<TtlCut> {
        TtlCut::of(name, config, |domain| {
            let clock = match domain {
                TtlTimeDomain::EventTime => self.event_clock.as_ref(),
                TtlTimeDomain::ProcessingTime => self.ttl_clock.as_ref(),
            };
            clock.and_then(|clock| clock.try_borrow().ok().map(|c| c.now_ms()))
        })
    }

    /// Adds restored entries to the registered state `name` (`meta` is its snapshot
    /// metadata): the blocks of key groups of this subtask's range.
    pub(crate) fn restore_state(
        &self,
        name: &str,
        meta: &StateMeta,
        blocks: &[(u16, EntryBlock)],
    ) -> Result<()> {
        let registered = self
            .states
            .get(name)
            .ok_or_else(|| EddyError::state(name, "no state of this name is registered"))?;
        let range = self.context.key_group_range();
        for (kg, block) in blocks {
            let offset = range.offset_of(*kg).ok_or_else(|| {
                EddyError::Internal(format!("restored key group {kg} is outside {range:?}"))
            })?;
            let check = KeyCheck {
                kg: *kg,
                max_parallelism: self.context.max_parallelism(),
            };
            registered
                .erased
                .restore_block(offset, block, meta, &check)
                .map_err(|e| e.in_state(name, *kg, "cannot restore"))?;
        }
        Ok(())
    }

    /// Starts loading `key`'s entries of every state into the CPU caches; changes nothing.
    ///
    /// The runtime calls this for records a few positions ahead of the one it processes, so
    /// the memory latency of large tables overlaps with work instead of stalling user code.
    /// `offset` is the key group's offset in the subtask's range.
    #[inline]
    pub fn prefetch(&self, offset: usize, key: &K, depth: PrefetchDepth) {
        if depth == PrefetchDepth::Contents && !self.has_contents {
            return;
        }
        for prefetcher in &self.prefetchers {
            prefetcher.prefetch(offset, key, depth);
        }
    }

    /// Whether any state holds values with contents worth a second prefetch.
    pub fn has_contents(&self) -> bool {
        self.has_contents
    }

    /// The names of the registered states, in order.
    pub fn state_names(&self) -> impl Iterator<Item = &str> {
        self.states.keys().map(String::as_str)
    }

    /// The table of a registered value state (for inspection and snapshots).
    pub fn value_table<T: StateValue>(&self, name: &str) -> Option<Ref<'_, ShardedTable<K, T>>> {
        self.table_ref::<T>(name, StateKind::Value)
    }

    /// The table of a registered list state (for inspection and snapshots).
    pub fn list_table<T: StateValue>(
        &self,
        name: &str,
    ) -> Option<Ref<'_, ShardedTable<K, Vec<T>>>> {
        self.table_ref::<Vec<T>>(name, StateKind::List)
    }

    fn table_ref<V: 'static>(
        &self,
        name: &str,
        kind: StateKind,
    ) -> Option<Ref<'_, ShardedTable<K, V>>> {
        let registered = self
            .states
            .get(name)
            .filter(|r| r.kind == kind && r.ttl.is_none())?;
        let table = registered
            .table
            .downcast_ref::<RefCell<ShardedTable<K, V>>>()?;
        table.try_borrow().ok()
    }

    /// Returns the table registered under `name`, registering an empty one first if needed.
    /// A TTL state (`ttl` is `Some`) stores its values wrapped in [`TtlValue`]s.
    fn table<V: Clone + Send + Sync + 'static>(
        &mut self,
        name: &str,
        kind: StateKind,
        ttl: Option<&StateTtlConfig>,
        contents: Option<fn(&V)>,
        codec: TableCodec<K, V>,
    ) -> Result<Table<K, V>> {
        if !self.states.contains_key(name) {
            let table = Rc::new(RefCell::new(ShardedTable::<K, V>::new(
                self.context.key_group_range(),
                copy_entries::<K, V>,
            )));
            self.has_contents |= contents.is_some();
            let erased: Rc<dyn ErasedTable<K>> = Rc::new(Prefetcher {
                table: Rc::clone(&table),
                contents,
                codec,
                freeze: boxed_frozen::<K, V>,
            });
            self.prefetchers.push(Rc::clone(&erased));
            self.states.insert(
                name.to_string(),
                Registered {
                    kind,
                    ttl: ttl.cloned(),
                    table,
                    erased,
                    cleanup: Rc::default(),
                },
            );
        }
        let registered = self
            .states
            .get(name)
            .ok_or_else(|| EddyError::Internal(format!("state \"{name}\" vanished")))?;
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
        Rc::clone(&registered.table)
            .downcast::<RefCell<ShardedTable<K, V>>>()
            .map_err(|_| {
                EddyError::state(
                    name,
                    format!(
                        "already registered with another type, requested as {}",
                        std::any::type_name::<V>()
                    ),
                )
            })
    }

    /// Creates (or re-opens) a value state.
    pub fn value_state<T: StateValue>(
        &mut self,
        desc: &ValueStateDescriptor<T>,
    ) -> Result<ValueState<T>> {
        if let Some(ttl) = desc.ttl() {
            let handle =
                self.ttl_handle::<TtlSingle<T>>(desc.name(), StateKind::Value, ttl, None)?;
            return Ok(ValueState::from_access(Box::new(handle)));
        }
        let codec = heap_codec::plain::<K, Single<T>>();
        let table = self.table::<T>(desc.name(), StateKind::Value, None, None, codec)?;
        Ok(ValueState::from_access(Box::new(HeapHandle::new(
            desc.name(),
            &self.context,
            table,
        ))))
    }

    /// Creates (or re-opens) a list state.
    pub fn list_state<T: StateValue>(
        &mut self,
        desc: &ListStateDescriptor<T>,
    ) -> Result<ListState<T>> {
        if let Some(ttl) = desc.ttl() {
            let handle = self.ttl_handle::<TtlList<T>>(
                desc.name(),
                StateKind::List,
                ttl,
                Some(|list| prefetch_read(list.as_ptr().wrapping_add(list.len()))),
            )?;
            return Ok(ListState::from_access(Box::new(handle)));
        }
        // `add` writes after the last element.
        let table = self.table::<Vec<T>>(
            desc.name(),
            StateKind::List,
            None,
            Some(|list| prefetch_read(list.as_ptr().wrapping_add(list.len()))),
            heap_codec::plain::<K, List<T>>(),
        )?;
        Ok(ListState::from_access(Box::new(HeapHandle::new(
            desc.name(),
            &self.context,
            table,
        ))))
    }

    /// Creates (or re-opens) a map state.
    pub fn map_state<UK, UV>(
        &mut self,
        desc: &MapStateDescriptor<UK, UV>,
    ) -> Result<MapState<UK, UV>>
    where
        UK: Key,
        UV: StateValue,
    {
        if let Some(ttl) = desc.ttl() {
            let handle = self.ttl_handle::<TtlMap<UK, UV>>(
                desc.name(),
                StateKind::Map,
                ttl,
                Some(SmallMap::prefetch),
            )?;
            return Ok(MapState::from_access(Box::new(handle)));
        }
        let table = self.table::<SmallMap<UK, UV>>(
            desc.name(),
            StateKind::Map,
            None,
            Some(SmallMap::prefetch),
            heap_codec::plain::<K, Map<UK, UV>>(),
        )?;
        Ok(MapState::from_access(Box::new(HeapHandle::new(
            desc.name(),
            &self.context,
            table,
        ))))
    }
}

impl<K: Key> HeapKeyedStateBackend<K> {
    /// Creates (or re-opens) a reducing state.
    pub fn reducing_state<T: StateValue>(
        &mut self,
        desc: &ReducingStateDescriptor<T>,
    ) -> Result<ReducingState<T>> {
        if let Some(ttl) = desc.ttl() {
            let handle =
                self.ttl_handle::<TtlSingle<T>>(desc.name(), StateKind::Reducing, ttl, None)?;
            return Ok(ReducingState::from_access(Box::new(TtlReducing {
                handle,
                reduce: desc.reduce_fn(),
            })));
        }
        let codec = heap_codec::plain::<K, Single<T>>();
        let table = self.table::<T>(desc.name(), StateKind::Reducing, None, None, codec)?;
        Ok(ReducingState::from_access(Box::new(HeapReducing {
            handle: HeapHandle::new(desc.name(), &self.context, table),
            reduce: desc.reduce_fn(),
        })))
    }

    /// Creates (or re-opens) an aggregating state.
    pub fn aggregating_state<In: 'static, F: AggregateFunction<In>>(
        &mut self,
        desc: &AggregatingStateDescriptor<In, F>,
    ) -> Result<AggregatingState<In, F::Out>> {
        if let Some(ttl) = desc.ttl() {
            let handle = self.ttl_handle::<TtlSingle<F::Acc>>(
                desc.name(),
                StateKind::Aggregating,
                ttl,
                None,
            )?;
            return Ok(AggregatingState::from_access(Box::new(TtlAggregating {
                handle,
                function: desc.function(),
                _input: std::marker::PhantomData::<fn(In)>,
            })));
        }
        let codec = heap_codec::plain::<K, Single<F::Acc>>();
        let table = self.table::<F::Acc>(desc.name(), StateKind::Aggregating, None, None, codec)?;
        Ok(AggregatingState::from_access(Box::new(HeapAggregating {
            handle: HeapHandle::new(desc.name(), &self.context, table),
            function: desc.function(),
            _input: std::marker::PhantomData::<fn(In)>,
        })))
    }
}

/// The table of a namespaced state: per key, a small map from namespace to value.
type NamespacedTable<K, N, V> = Table<K, SmallMap<N, V>>;

/// A namespaced handle's table and layout.
type NamespacedHandleParts<K, N, V> = (NamespacedTable<K, N, V>, InNamespace<N>);

impl<K: Key> HeapKeyedStateBackend<K> {
    /// A namespaced handle's table and layout, registering the table if needed.
    fn namespaced<N: Namespace, I: Inner>(
        &mut self,
        name: &str,
        kind: StateKind,
    ) -> Result<NamespacedHandleParts<K, N, I::Stored>> {
        let codec = heap_codec::namespaced::<K, N, I>();
        // A key's namespaces (a window operator's windows) outside the slot are a second,
        // dependent cache miss: the operator prefetches them once the slot has landed.
        let contents: fn(&SmallMap<N, I::Stored>) = SmallMap::prefetch;
        let table =
            self.table::<SmallMap<N, I::Stored>>(name, kind, None, Some(contents), codec)?;
        let layout = InNamespace {
            current: Rc::new(NamespaceCell::new()),
        };
        Ok((table, layout))
    }

    fn merger<N: Namespace, V: 'static>(
        &self,
        name: &str,
        table: &Table<K, SmallMap<N, V>>,
        combine: impl Fn(V, V) -> V + 'static,
    ) -> Option<Box<dyn MergeNamespaces<N>>> {
        Some(Box::new(HeapMerger {
            name: name.into(),
            context: Rc::clone(&self.context),
            table: Rc::clone(table),
            combine: Box::new(combine),
        }))
    }

    /// Creates (or re-opens) a namespaced value state (see [`crate::namespace`]).
    pub fn namespaced_value_state<N: Namespace, T: StateValue>(
        &mut self,
        desc: &ValueStateDescriptor<T>,
    ) -> Result<Namespaced<ValueState<T>, N>> {
        let (table, layout) = self.namespaced::<N, Single<T>>(desc.name(), StateKind::Value)?;
        let current = Rc::clone(&layout.current);
        let handle = HeapHandle::with_layout(desc.name(), &self.context, table, layout);
        let state = ValueState::from_access(Box::new(handle));
        Ok(Namespaced::new(desc.name(), state, current, None))
    }

    /// Creates (or re-opens) a namespaced list state.
    pub fn namespaced_list_state<N: Namespace, T: StateValue>(
        &mut self,
        desc: &ListStateDescriptor<T>,
    ) -> Result<Namespaced<ListState<T>, N>> {
        let (table, layout) = self.namespaced::<N, List<T>>(desc.name(), StateKind::List)?;
        let current = Rc::clone(&layout.current);
        let merger = self.merger(desc.name(), &table, |mut a: Vec<T>, b| {
            a.extend(b);
            a
        });
        let handle = HeapHandle::with_layout(desc.name(), &self.context, table, layout);
        let state = ListState::from_access(Box::new(handle));
        Ok(Namespaced::new(desc.name(), state, current, merger))
    }

    /// Creates (or re-opens) a namespaced map state.
    pub fn namespaced_map_state<N: Namespace, UK: Key, UV: StateValue>(
        &mut self,
        desc: &MapStateDescriptor<UK, UV>,
    ) -> Result<Namespaced<MapState<UK, UV>, N>> {
        let (table, layout) = self.namespaced::<N, Map<UK, UV>>(desc.name(), StateKind::Map)?;
        let current = Rc::clone(&layout.current);
        let handle = HeapHandle::with_layout(desc.name(), &self.context, table, layout);
        let state = MapState::from_access(Box::new(handle));
        Ok(Namespaced::new(desc.name(), state, current, None))
    }

    /// Creates (or re-opens) a namespaced reducing state.
    pub fn namespaced_reducing_state<N: Namespace, T: StateValue>(
        &mut self,
        desc: &ReducingStateDescriptor<T>,
    ) -> Result<Namespaced<ReducingState<T>, N>> {
        let (table, layout) = self.namespaced::<N, Single<T>>(desc.name(), StateKind::Reducing)?;
        let current = Rc::clone(&layout.current);
        let reduce = desc.reduce_fn();
        let merger = self.merger(desc.name(), &table, move |a: T, b: T| reduce(&a, &b));
        let state = ReducingState::from_access(Box::new(HeapReducing {
            handle: HeapHandle::with_layout(desc.name(), &self.context, table, layout),
            reduce: desc.reduce_fn(),
        }));
        Ok(Namespaced::new(desc.name(), state, current, merger))
    }

    /// Creates (or re-opens) a namespaced aggregating state.
    pub fn namespaced_aggregating_state<N: Namespace, In: 'static, F: AggregateFunction<In>>(
        &mut self,
        desc: &AggregatingStateDescriptor<In, F>,
    ) -> Result<Namespaced<AggregatingState<In, F::Out>, N>> {
        let (table, layout) =
            self.namespaced::<N, Single<F::Acc>>(desc.name(), StateKind::Aggregating)?;
        let current = Rc::clone(&layout.current);
        let function = desc.function();
        let merger = self.merger(desc.name(), &table, move |a, b| function.merge(a, b));
        let state = AggregatingState::from_access(Box::new(HeapAggregating {
            handle: HeapHandle::with_layout(desc.name(), &self.context, table, layout),
            function: desc.function(),
            _input: std::marker::PhantomData::<fn(In)>,
        }));
        Ok(Namespaced::new(desc.name(), state, current, merger))
    }
}

/// A reducing state on the heap: a value table plus the reduce function.
struct HeapReducing<K: Key, T: 'static, L: Layout<K> = Plain> {
    handle: HeapHandle<K, T, L>,
    reduce: ReduceFn<T>,
}

impl<K: Key, T: StateValue, L: Layout<K>> ReducingStateAccess<T> for HeapReducing<K, T, L> {
    fn get(&self) -> Result<Option<T>> {
        self.handle.read(|value| value.cloned())
    }

    fn add(&self, value: T) -> Result<()> {
        self.add_telling_first(value).map(|_| ())
    }

    fn add_telling_first(&self, value: T) -> Result<Added> {
        let reduce = &self.reduce;
        self.handle.entry(|entry| match entry.get_mut() {
            Some(current) => {
                *current = reduce(current, &value);
                Added::More
            }
            None => {
                entry.put(value);
                Added::First
            }
        })
    }

    fn clear(&self) -> Result<()> {
        self.handle.entry(|entry| {
            entry.remove();
        })
    }
}

/// An aggregating state on the heap: an accumulator table plus the aggregate function.
struct HeapAggregating<K: Key, In, F: AggregateFunction<In>, L: Layout<K> = Plain> {
    handle: HeapHandle<K, F::Acc, L>,
    function: Arc<F>,
    _input: std::marker::PhantomData<fn(In)>,
}

impl<K: Key, In, F: AggregateFunction<In>, L: Layout<K>> AggregatingStateAccess<In, F::Out>
    for HeapAggregating<K, In, F, L>
{
    fn get(&self) -> Result<Option<F::Out>> {
        let function = &self.function;
        self.handle
            .read(|acc| acc.map(|acc| function.get_result(acc)))
    }

    fn add(&self, value: In) -> Result<()> {
        self.add_telling_first(value).map(|_| ())
    }

    fn add_telling_first(&self, value: In) -> Result<Added> {
        let function = &self.function;
        self.handle.entry(|entry| {
            let mut added = Added::More;
            let acc = entry.get_or_insert_with(|| {
                added = Added::First;
                function.create_accumulator()
            });
            function.add(value, acc);
            added
        })
    }

    fn clear(&self) -> Result<()> {
        self.handle.entry(|entry| {
            entry.remove();
        })
    }
}

/// Where a handle finds the current key's value in its table: directly ([`Plain`], the
/// default namespace) or in a small per-key map under the current namespace
/// ([`InNamespace`]). Chosen at registration, so plain state pays nothing for namespaces.
trait Layout<K: Key>: 'static {
    /// The namespace the layout resolves (`()` for plain state).
    type Ns;
    /// What the table stores per key for values of type `V`.
    type Stored<V: 'static>: 'static;

    /// Runs `f` with the current namespace, or fails if the operator has set none.
    fn with_ns<R>(&self, state: &str, f: impl FnOnce(&Self::Ns) -> R) -> Result<R>;

    /// The value of (`key`, `ns`).
    fn get<'t, V>(
        table: &'t ShardedTable<K, Self::Stored<V>>,
        offset: usize,
        key: &K,
        ns: &Self::Ns,
    ) -> Option<&'t V>;

    /// The value of (`key`, `ns`), mutably.
    fn get_mut<'t, V>(
        table: &'t mut ShardedTable<K, Self::Stored<V>>,
        offset: usize,
        key: &K,
        ns: &Self::Ns,
    ) -> Option<&'t mut V>;

    /// The value of (`key`, `ns`), inserted with `default` first if absent.
    fn get_or_insert_with<'t, V>(
        table: &'t mut ShardedTable<K, Self::Stored<V>>,
        offset: usize,
        key: &K,
        ns: &Self::Ns,
        default: impl FnOnce() -> V,
    ) -> &'t mut V;

    /// Removes the value of (`key`, `ns`), and the key's entry once it holds nothing.
    fn remove<V>(
        table: &mut ShardedTable<K, Self::Stored<V>>,
        offset: usize,
        key: &K,
        ns: &Self::Ns,
    ) -> Option<V>;
}

/// The layout of plain keyed state: one value per key.
struct Plain;

impl<K: Key> Layout<K> for Plain {
    type Ns = ();
    type Stored<V: 'static> = V;

    #[inline]
    fn with_ns<R>(&self, _state: &str, f: impl FnOnce(&()) -> R) -> Result<R> {
        Ok(f(&()))
    }

    #[inline]
    fn get<'t, V>(table: &'t ShardedTable<K, V>, offset: usize, key: &K, _: &()) -> Option<&'t V> {
        table.get(offset, key)
    }

    #[inline]
    fn get_mut<'t, V>(
        table: &'t mut ShardedTable<K, V>,
        offset: usize,
        key: &K,
        _: &(),
    ) -> Option<&'t mut V> {
        table.get_mut(offset, key)
    }

    #[inline]
    fn get_or_insert_with<'t, V>(
        table: &'t mut ShardedTable<K, V>,
        offset: usize,
        key: &K,
        _: &(),
        default: impl FnOnce() -> V,
    ) -> &'t mut V {
        table.get_or_insert_with(offset, key, default)
    }

    #[inline]
    fn remove<V>(table: &mut ShardedTable<K, V>, offset: usize, key: &K, _: &()) -> Option<V> {
        table.remove(offset, key)
    }
}

/// The layout of namespaced state: per key, a small map from namespace to value (a key has
/// few live windows at a time, so the map usually stays inline).
struct InNamespace<N> {
    current: Rc<NamespaceCell<N>>,
}

impl<K: Key, N: Namespace> Layout<K> for InNamespace<N> {
    type Ns = N;
    type Stored<V: 'static> = SmallMap<N, V>;

    #[inline]
    fn with_ns<R>(&self, state: &str, f: impl FnOnce(&N) -> R) -> Result<R> {
        self.current.with(state, f)
    }

    #[inline]
    fn get<'t, V>(
        table: &'t ShardedTable<K, SmallMap<N, V>>,
        offset: usize,
        key: &K,
        ns: &N,
    ) -> Option<&'t V> {
        table.get(offset, key)?.get(ns)
    }

    #[inline]
    fn get_mut<'t, V>(
        table: &'t mut ShardedTable<K, SmallMap<N, V>>,
        offset: usize,
        key: &K,
        ns: &N,
    ) -> Option<&'t mut V> {
        table.get_mut(offset, key)?.get_mut(ns)
    }

    fn get_or_insert_with<'t, V>(
        table: &'t mut ShardedTable<K, SmallMap<N, V>>,
        offset: usize,
        key: &K,
        ns: &N,
        default: impl FnOnce() -> V,
    ) -> &'t mut V {
        table
            .get_or_insert_with(offset, key, SmallMap::default)
            .get_or_insert_with(ns, || ns.clone(), default)
    }

    fn remove<V>(
        table: &mut ShardedTable<K, SmallMap<N, V>>,
        offset: usize,
        key: &K,
        ns: &N,
    ) -> Option<V> {
        let map = table.get_mut(offset, key)?;
        let removed = map.remove(ns);
        if map.is_empty() {
            table.remove(offset, key);
        }
        removed
    }
}

/// The current key's (and namespace's) value slot in a table, for one write.
struct EntryMut<'a, K: Key, V: 'static, L: Layout<K>> {
    table: &'a mut ShardedTable<K, L::Stored<V>>,
    key: &'a K,
    offset: usize,
    ns: &'a L::Ns,
}

impl<K: Key, V: 'static, L: Layout<K>> EntryMut<'_, K, V, L> {
    #[inline]
    fn get_mut(&mut self) -> Option<&mut V> {
        L::get_mut(self.table, self.offset, self.key, self.ns)
    }

    #[inline]
    fn get_or_insert_with(&mut self, default: impl FnOnce() -> V) -> &mut V {
        L::get_or_insert_with(self.table, self.offset, self.key, self.ns, default)
    }

    #[inline]
    fn put(&mut self, value: V) {
        match self.get_mut() {
            Some(slot) => *slot = value,
            None => {
                self.get_or_insert_with(|| value);
            }
        }
    }

    #[inline]
    fn remove(&mut self) -> Option<V> {
        L::remove(self.table, self.offset, self.key, self.ns)
    }
}

/// A handle on one heap table, scoped to the current key of `context` (and, for namespaced
/// state, to the current namespace of its layout).
struct HeapHandle<K, V: 'static, L: Layout<K> = Plain>
where
    K: Key,
{
    name: Rc<str>,
    context: Rc<KeyContext<K>>,
    table: Table<K, L::Stored<V>>,
    layout: L,
}

impl<K: Key, V> HeapHandle<K, V, Plain> {
    fn new(name: &str, context: &Rc<KeyContext<K>>, table: Table<K, V>) -> Self {
        HeapHandle::with_layout(name, context, table, Plain)
    }

    /// Runs `f` on the table and the current key (the TTL handles work on whole tables).
    #[inline]
    fn write<R>(&self, f: impl FnOnce(&mut ShardedTable<K, V>, &K, usize) -> R) -> Result<R> {
        let mut table = self.borrow_mut()?;
        self.context
            .with_key(&self.name, |key, offset| f(&mut table, key, offset))
    }
}

impl<K: Key, V: 'static, L: Layout<K>> HeapHandle<K, V, L> {
    fn with_layout(
        name: &str,
        context: &Rc<KeyContext<K>>,
        table: Table<K, L::Stored<V>>,
        layout: L,
    ) -> Self {
        HeapHandle {
            name: name.into(),
            context: Rc::clone(context),
            table,
            layout,
        }
    }

    /// Reads the current entry. A shared borrow can always be taken: mutable borrows never
    /// outlive a call of this module, and no user code runs while one is held.
    #[inline]
    fn read<R>(&self, f: impl FnOnce(Option<&V>) -> R) -> Result<R> {
        let table = self.borrow()?;
        self.context.with_key(&self.name, |key, offset| {
            self.layout
                .with_ns(&self.name, |ns| f(L::get(&table, offset, key, ns)))
        })?
    }

    /// Runs `f` on the current entry, mutably.
    #[inline]
    fn entry<R>(&self, f: impl FnOnce(&mut EntryMut<'_, K, V, L>) -> R) -> Result<R> {
        let mut table = self.borrow_mut()?;
        self.context.with_key(&self.name, |key, offset| {
            self.layout.with_ns(&self.name, |ns| {
                f(&mut EntryMut {
                    table: &mut table,
                    key,
                    offset,
                    ns,
                })
            })
        })?
    }

    #[inline]
    fn borrow(&self) -> Result<Ref<'_, ShardedTable<K, L::Stored<V>>>> {
        self.table
            .try_borrow()
            .map_err(|_| EddyError::Internal(format!("state \"{}\" is being modified", self.name)))
    }

    #[inline]
    fn borrow_mut(&self) -> Result<RefMut<'_, ShardedTable<K, L::Stored<V>>>> {
        self.table.try_borrow_mut().map_err(|_| {
            EddyError::state(
                &*self.name,
                "cannot modify the state while an iterator over it is alive",
            )
        })
    }

    /// An iterator over the current entry, holding a shared borrow of the table.
    fn iter_entry<'a, T: 'a>(
        &'a self,
        project: impl FnOnce(&V) -> Vec<T>,
    ) -> Result<StateIter<'a, T>> {
        let items = self.read(|entry| entry.map(project).unwrap_or_default())?;
        Ok(Box::new(items.into_iter()))
    }
}

impl<K: Key, T: StateValue, L: Layout<K>> ValueStateAccess<T> for HeapHandle<K, T, L> {
    #[inline]
    fn value(&self) -> Result<Option<T>> {
        self.read(|entry| entry.cloned())
    }

    #[inline]
    fn update(&self, value: T) -> Result<()> {
        self.entry(|entry| entry.put(value))
    }

    fn clear(&self) -> Result<()> {
        self.entry(|entry| {
            entry.remove();
        })
    }
}

/// Iterates a list under a shared borrow of its table, cloning one element at a time.
struct ListIter<'a, T> {
    list: Option<Ref<'a, Vec<T>>>,
    position: usize,
}

impl<T: Clone> Iterator for ListIter<'_, T> {
    type Item = T;

    #[inline]
    fn next(&mut self) -> Option<T> {
        let item = self.list.as_ref()?.get(self.position)?.clone();
        self.position += 1;
        Some(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.list.as_ref().map_or(0, |l| l.len() - self.position);
        (left, Some(left))
    }
}

impl<K: Key, T: StateValue, L: Layout<K>> ListStateAccess<T> for HeapHandle<K, Vec<T>, L> {
    #[inline]
    fn add(&self, value: T) -> Result<()> {
        self.entry(|entry| entry.get_or_insert_with(Vec::new).push(value))
    }

    fn add_telling_first(&self, value: T) -> Result<Added> {
        self.entry(|entry| {
            let mut added = Added::More;
            entry
                .get_or_insert_with(|| {
                    added = Added::First;
                    Vec::new()
                })
                .push(value);
            added
        })
    }

    fn add_all(&self, values: Vec<T>) -> Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        self.entry(|entry| entry.get_or_insert_with(Vec::new).extend(values))
    }

    fn get(&self) -> Result<StateIter<'_, T>> {
        let table = self.borrow()?;
        let list = self.context.with_key(&self.name, |key, offset| {
            self.layout.with_ns(&self.name, |ns| {
                Ref::filter_map(table, |t| L::get(t, offset, key, ns)).ok()
            })
        })??;
        Ok(Box::new(ListIter { list, position: 0 }))
    }

    fn update(&self, values: Vec<T>) -> Result<()> {
        self.entry(|entry| {
            if values.is_empty() {
                entry.remove();
            } else {
                entry.put(values);
            }
        })
    }

    fn clear(&self) -> Result<()> {
        self.entry(|entry| {
            entry.remove();
        })
    }
}

impl<K: Key, UK: Key, UV: StateValue, L: Layout<K>> MapStateAccess<UK, UV>
    for HeapHandle<K, SmallMap<UK, UV>, L>
{
    #[inline]
    fn get(&self, user_key: &UK) -> Result<Option<UV>> {
        self.read(|map| map.and_then(|m| m.get(user_key)).cloned())
    }

    #[inline]
    fn put(&self, user_key: UK, value: UV) -> Result<()> {
        self.entry(|entry| {
            entry
                .get_or_insert_with(SmallMap::default)
                .insert(user_key, value);
        })
    }

    fn put_all(&self, entries: Vec<(UK, UV)>) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        self.entry(|entry| {
            let map = entry.get_or_insert_with(SmallMap::default);
            for (user_key, value) in entries {
                map.insert(user_key, value);
            }
        })
    }

    fn remove(&self, user_key: &UK) -> Result<()> {
        self.entry(|entry| {
            let now_empty = entry.get_mut().is_some_and(|map| {
                map.remove(user_key);
                map.is_empty()
            });
            if now_empty {
                entry.remove();
            }
        })
    }

    fn contains(&self, user_key: &UK) -> Result<bool> {
        self.read(|map| map.is_some_and(|m| m.get(user_key).is_some()))
    }

    fn entries(&self) -> Result<StateIter<'_, (UK, UV)>> {
        self.iter_entry(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    fn keys(&self) -> Result<StateIter<'_, UK>> {
        self.iter_entry(|m| m.iter().map(|(k, _)| k.clone()).collect())
    }

    fn values(&self) -> Result<StateIter<'_, UV>> {
        self.iter_entry(|m| m.iter().map(|(_, v)| v.clone()).collect())
    }

    fn is_empty(&self) -> Result<bool> {
        self.read(|map| map.is_none_or(|m| m.is_empty()))
    }

    fn clear(&self) -> Result<()> {
        self.entry(|entry| {
            entry.remove();
        })
    }
}

/// Merges namespaces of one namespaced heap state with a kind-specific `combine`.
struct HeapMerger<K, N, V> {
    name: Rc<str>,
    context: Rc<KeyContext<K>>,
    table: Table<K, SmallMap<N, V>>,
    combine: Box<dyn Fn(V, V) -> V>,
}

impl<K: Key, N: Namespace, V: 'static> MergeNamespaces<N> for HeapMerger<K, N, V> {
    fn merge_namespaces(&self, target: &N, sources: &[N]) -> Result<()> {
        let mut table = self.table.try_borrow_mut().map_err(|_| {
            EddyError::state(
                &*self.name,
                "cannot merge namespaces while an iterator over the state is alive",
            )
        })?;
        self.context.with_key(&self.name, |key, offset| {
            let Some(map) = table.get_mut(offset, key) else {
                return;
            };
            let mut merged: Option<V> = None;
            for source in sources {
                if let Some(value) = map.remove(source) {
                    merged = Some(match merged {
                        Some(acc) => (self.combine)(acc, value),
                        None => value,
                    });
                }
            }
            if let Some(value) = merged {
                let value = match map.remove(target) {
                    Some(existing) => (self.combine)(existing, value),
                    None => value,
                };
                map.insert(target.clone(), value);
            } else if map.is_empty() {
                table.remove(offset, key);
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------
// State with TTL.
//
// These handles are separate implementations over tables of `TtlValue`s, chosen when a state
// whose descriptor enables TTL is registered, so states without TTL pay nothing for it.

impl<K: Key> HeapKeyedStateBackend<K> {
    /// Registers (or re-opens) the TTL state `name` and returns a handle on it.
    fn ttl_handle<I: Inner>(
        &mut self,
        name: &str,
        kind: StateKind,
        config: &StateTtlConfig,
        contents: Option<fn(&I::Stored)>,
    ) -> Result<TtlHandle<K, I::Stored>>
    where
        I::Stored: TtlEntry,
    {
        // Validate first, so that a refused configuration registers nothing.
        let ttl_ms = config.validate(name)?;
        let codec = heap_codec::plain::<K, I>();
        let table = self.table::<I::Stored>(name, kind, Some(config), contents, codec)?;
        let cleanup = self
            .states
            .get(name)
            .map(|registered| Rc::clone(&registered.cleanup))
            .ok_or_else(|| EddyError::Internal(format!("state \"{name}\" vanished")))?;
        Ok(TtlHandle {
            handle: HeapHandle::new(name, &self.context, table),
            ttl_ms,
            update_on_read: config.get_update_type() == UpdateType::OnReadAndWrite,
            return_expired: config.get_state_visibility()
                == StateVisibility::ReturnExpiredIfNotCleanedUp,
            clock: self.clock_for(config),
            incremental: config.incremental_cleanup().map(|entries_per_access| {
                IncrementalCleanup {
                    entries_per_access,
                    cursor: cleanup,
                }
            }),
        })
    }
}

/// Where incremental cleanup of one state continues: the next key group to clean, and the
/// checks saved up for it.
#[derive(Clone, Copy, Debug, Default)]
struct CleanupCursor {
    shard: usize,
    credit: usize,
}

/// A state's incremental-cleanup setting and its shared cursor.
struct IncrementalCleanup {
    entries_per_access: usize,
    cursor: Rc<Cell<CleanupCursor>>,
}

/// What a TTL table stores per key: one [`TtlValue`], a list of them, or a map of them.
trait TtlEntry {
    /// Whether any part of the entry has expired at `now`.
    fn any_expired(&self, ttl_ms: u64, now: u64) -> bool;
    /// Drops the expired parts; returns whether nothing is left.
    fn purge(&mut self, ttl_ms: u64, now: u64) -> bool;
}

impl<T> TtlEntry for TtlValue<T> {
    #[inline]
    fn any_expired(&self, ttl_ms: u64, now: u64) -> bool {
        self.is_expired(ttl_ms, now)
    }

    fn purge(&mut self, ttl_ms: u64, now: u64) -> bool {
        self.is_expired(ttl_ms, now)
    }
}

impl<T> TtlEntry for Vec<TtlValue<T>> {
    fn any_expired(&self, ttl_ms: u64, now: u64) -> bool {
        self.iter().any(|e| e.is_expired(ttl_ms, now))
    }

    fn purge(&mut self, ttl_ms: u64, now: u64) -> bool {
        self.retain(|e| !e.is_expired(ttl_ms, now));
        self.is_empty()
    }
}

impl<UK: Key, UV> TtlEntry for SmallMap<UK, TtlValue<UV>> {
    fn any_expired(&self, ttl_ms: u64, now: u64) -> bool {
        self.iter().any(|(_, e)| e.is_expired(ttl_ms, now))
    }

    fn purge(&mut self, ttl_ms: u64, now: u64) -> bool {
        match self {
            SmallMap::One(_, e) if e.is_expired(ttl_ms, now) => *self = SmallMap::default(),
            SmallMap::One(..) => {}
            SmallMap::Inline(entries, filter) => {
                entries.retain(|(_, e)| !e.is_expired(ttl_ms, now));
                *filter = KeyFilter::of(entries);
            }
            SmallMap::Hashed(table) => {
                let expired: Vec<UK> = table
                    .iter()
                    .filter(|(_, e)| e.is_expired(ttl_ms, now))
                    .map(|(k, _)| k.clone())
                    .collect();
                for user_key in &expired {
                    table.remove(user_key);
                }
            }
        }
        self.is_empty()
    }
}

/// The entry of `user_key` in a small map, mutably (`SmallMap` offers only shared access).
fn map_entry_mut<'m, UK: Key, V>(map: &'m mut SmallMap<UK, V>, user_key: &UK) -> Option<&'m mut V> {
    map.get_mut(user_key)
}

/// Calls `f` on every value of a small map.
fn map_for_each_mut<UK: Key, V>(map: &mut SmallMap<UK, V>, mut f: impl FnMut(&mut V)) {
    match map {
        SmallMap::One(_, v) => f(v),
        SmallMap::Inline(entries, _) => entries.iter_mut().for_each(|(_, v)| f(v)),
        SmallMap::Hashed(table) => {
            let keys: Vec<UK> = table.iter().map(|(k, _)| k.clone()).collect();
            for user_key in &keys {
                if let Some(v) = table.get_mut(user_key) {
                    f(v);
                }
            }
        }
    }
}

/// Removes the expired entries of one key group.
fn purge_shard<K: Key, V: TtlEntry>(shard: &mut ProbeTable<K, V>, ttl_ms: u64, now: u64) {
    // The table cannot be modified while it is iterated: collect first (nothing is allocated
    // when nothing has expired).
    let expired: Vec<K> = shard
        .iter()
        .filter(|(_, entry)| entry.any_expired(ttl_ms, now))
        .map(|(key, _)| key.clone())
        .collect();
    for key in &expired {
        if shard
            .get_mut(key)
            .is_some_and(|entry| entry.purge(ttl_ms, now))
        {
            shard.remove(key);
        }
    }
}

/// A handle on one TTL table, scoped to the current key of its context.
struct TtlHandle<K: Key, V: 'static> {
    handle: HeapHandle<K, V>,
    ttl_ms: u64,
    /// [`UpdateType::OnReadAndWrite`].
    update_on_read: bool,
    /// [`StateVisibility::ReturnExpiredIfNotCleanedUp`].
    return_expired: bool,
    clock: SharedClock,
    incremental: Option<IncrementalCleanup>,
}

impl<K: Key, V: TtlEntry + 'static> TtlHandle<K, V> {
    /// The current time of the backend's TTL clock.
    #[inline]
    fn now(&self) -> Result<u64> {
        self.clock
            .try_borrow()
            .map(|clock| clock.now_ms())
            .map_err(|_| EddyError::Internal("the TTL clock is being replaced".into()))
    }

    /// Whether `value` has expired at `now`.
    #[inline]
    fn expired<T>(&self, value: &TtlValue<T>, now: u64) -> bool {
        value.is_expired(self.ttl_ms, now)
    }

    /// Incremental cleanup after an access at `now`: saves up `entries_per_access` checks and
    /// cleans whole key groups, in turn, as soon as the savings cover one.
    ///
    /// Key-group granularity because [`ProbeTable`] offers no resumable iteration; the
    /// average cost per access is the configured one. Skipped (not failed) while an iterator
    /// over the state is alive: cleanup is best effort, and the next access catches up.
    #[inline]
    fn cleanup(&self, now: u64) {
        if let Some(incremental) = &self.incremental {
            self.cleanup_incrementally(incremental, now);
        }
    }

    /// The work of [`cleanup`](Self::cleanup), out of line: states with incremental cleanup
    /// run it on every access, but most accesses only add to the savings.
    #[inline(never)]
    fn cleanup_incrementally(&self, incremental: &IncrementalCleanup, now: u64) {
        let Ok(mut table) = self.handle.table.try_borrow_mut() else {
            return;
        };
        let shards = table.shards.len();
        if shards == 0 {
            return;
        }
        let mut cursor = incremental.cursor.get();
        cursor.credit = cursor.credit.saturating_add(incremental.entries_per_access);
        // At most one round over the key groups per access, even when they are all empty.
        for _ in 0..shards {
            let shard = &mut table.shards[cursor.shard % shards];
            if shard.len() > cursor.credit {
                break;
            }
            cursor.credit -= shard.len();
            purge_shard(shard, self.ttl_ms, now);
            cursor.shard = (cursor.shard + 1) % shards;
        }
        // Savings beyond the next key group's size would let an idle, then refilled, table be
        // cleaned in one burst; they are not needed.
        let next = table.shards[cursor.shard % shards].len();
        cursor.credit = cursor.credit.min(next.max(incremental.entries_per_access));
        incremental.cursor.set(cursor);
    }
}

/// What a read of a single TTL value found under a shared borrow.
enum SingleRead<R> {
    Live(R),
    /// Expired; carries the projected value when expired values are returned.
    Expired(Option<R>),
}

impl<K: Key, T: 'static> TtlHandle<K, TtlValue<T>> {
    /// Reads the current key's value through `project`, with the TTL rules: an expired value
    /// is removed (cleanup on read) and returned only under
    /// [`StateVisibility::ReturnExpiredIfNotCleanedUp`]; a live one is refreshed under
    /// [`UpdateType::OnReadAndWrite`].
    #[inline]
    fn get_single<R>(&self, now: u64, project: impl Fn(&T) -> R) -> Result<Option<R>> {
        if !self.update_on_read {
            // The common case (no refresh on read, nothing expired) needs only a shared
            // borrow and stays as short as a read without TTL; the rest is out of line.
            let live = self.handle.read(|entry| match entry {
                None => Some(None),
                Some(entry) if !self.expired(entry, now) => Some(Some(project(&entry.value))),
                Some(_) => None,
            })?;
            if let Some(value) = live {
                return Ok(value);
            }
        }
        self.get_single_and_write(now, project)
    }

    /// [`get_single`](Self::get_single) when the read may write: a refresh on read, or the
    /// removal of an expired value.
    #[inline(never)]
    fn get_single_and_write<R>(&self, now: u64, project: impl Fn(&T) -> R) -> Result<Option<R>> {
        self.handle.write(|table, key, offset| {
            let entry = table.get_mut(offset, key)?;
            if !entry.is_expired(self.ttl_ms, now) {
                if self.update_on_read {
                    entry.last_access_ms = now;
                }
                return Some(project(&entry.value));
            }
            let expired = table.remove(offset, key)?;
            self.return_expired.then(|| project(&expired.value))
        })
    }

    fn clear_single(&self) -> Result<()> {
        let now = self.now()?;
        self.handle.write(|table, key, offset| {
            table.remove(offset, key);
        })?;
        self.cleanup(now);
        Ok(())
    }
}

impl<K: Key, T: StateValue> ValueStateAccess<T> for TtlHandle<K, TtlValue<T>> {
    #[inline]
    fn value(&self) -> Result<Option<T>> {
        let now = self.now()?;
        let value = self.get_single(now, T::clone)?;
        self.cleanup(now);
        Ok(value)
    }

    #[inline]
    fn update(&self, value: T) -> Result<()> {
        let now = self.now()?;
        self.handle.write(|table, key, offset| {
            table.put(offset, key, TtlValue::new(value, now));
        })?;
        self.cleanup(now);
        Ok(())
    }

    fn clear(&self) -> Result<()> {
        self.clear_single()
    }
}

/// A reducing state with TTL.
struct TtlReducing<K: Key, T: 'static> {
    handle: TtlHandle<K, TtlValue<T>>,
    reduce: ReduceFn<T>,
}

impl<K: Key, T: StateValue> ReducingStateAccess<T> for TtlReducing<K, T> {
    fn get(&self) -> Result<Option<T>> {
        let now = self.handle.now()?;
        let value = self.handle.get_single(now, T::clone)?;
        self.handle.cleanup(now);
        Ok(value)
    }

    fn add(&self, value: T) -> Result<()> {
        let h = &self.handle;
        let now = h.now()?;
        let reduce = &self.reduce;
        h.handle.write(|table, key, offset| {
            // As Flink's TTL reduce: an expired value is reduced into only while it is still
            // returned (`ReturnExpiredIfNotCleanedUp`); otherwise `value` starts afresh.
            match table
                .get_mut(offset, key)
                .filter(|current| h.return_expired || !h.expired(current, now))
            {
                Some(current) => {
                    current.value = reduce(&current.value, &value);
                    current.last_access_ms = now;
                }
                None => table.put(offset, key, TtlValue::new(value, now)),
            }
        })?;
        h.cleanup(now);
        Ok(())
    }

    fn clear(&self) -> Result<()> {
        self.handle.clear_single()
    }
}

/// An aggregating state with TTL.
struct TtlAggregating<K: Key, In, F: AggregateFunction<In>> {
    handle: TtlHandle<K, TtlValue<F::Acc>>,
    function: Arc<F>,
    _input: std::marker::PhantomData<fn(In)>,
}

impl<K: Key, In, F: AggregateFunction<In>> AggregatingStateAccess<In, F::Out>
    for TtlAggregating<K, In, F>
{
    fn get(&self) -> Result<Option<F::Out>> {
        let now = self.handle.now()?;
        let function = &self.function;
        let result = self
            .handle
            .get_single(now, |acc| function.get_result(acc))?;
        self.handle.cleanup(now);
        Ok(result)
    }

    fn add(&self, value: In) -> Result<()> {
        let h = &self.handle;
        let now = h.now()?;
        let function = &self.function;
        h.handle.write(|table, key, offset| {
            // As Flink's TTL aggregate: an expired accumulator is added to only while it is
            // still returned; otherwise a fresh accumulator starts.
            match table
                .get_mut(offset, key)
                .filter(|acc| h.return_expired || !h.expired(acc, now))
            {
                Some(acc) => {
                    function.add(value, &mut acc.value);
                    acc.last_access_ms = now;
                }
                None => {
                    let mut acc = function.create_accumulator();
                    function.add(value, &mut acc);
                    table.put(offset, key, TtlValue::new(acc, now));
                }
            }
        })?;
        h.cleanup(now);
        Ok(())
    }

    fn clear(&self) -> Result<()> {
        self.handle.clear_single()
    }
}

/// Iterates a TTL list under a shared borrow of its table, cloning one element at a time and
/// skipping expired elements unless they are returned.
struct TtlListIter<'a, T> {
    list: Option<Ref<'a, Vec<TtlValue<T>>>>,
    position: usize,
    /// `(ttl_ms, now)` when expired elements are hidden.
    hide_expired: Option<(u64, u64)>,
}

impl<T: Clone> Iterator for TtlListIter<'_, T> {
    type Item = T;

    #[inline]
    fn next(&mut self) -> Option<T> {
        let list = self.list.as_ref()?;
        loop {
            let element = list.get(self.position)?;
            self.position += 1;
            match self.hide_expired {
                Some((ttl_ms, now)) if element.is_expired(ttl_ms, now) => continue,
                _ => return Some(element.value.clone()),
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self
            .list
            .as_ref()
            .map_or(0, |l| l.len().saturating_sub(self.position));
        (0, Some(left))
    }
}

impl<K: Key, T: StateValue> ListStateAccess<T> for TtlHandle<K, Vec<TtlValue<T>>> {
    #[inline]
    fn add(&self, value: T) -> Result<()> {
        let now = self.now()?;
        self.handle.write(|table, key, offset| {
            table
                .get_or_insert_with(offset, key, Vec::new)
                .push(TtlValue::new(value, now));
        })?;
        self.cleanup(now);
        Ok(())
    }

    fn add_all(&self, values: Vec<T>) -> Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        let now = self.now()?;
        self.handle.write(|table, key, offset| {
            table
                .get_or_insert_with(offset, key, Vec::new)
                .extend(values.into_iter().map(|v| TtlValue::new(v, now)));
        })?;
        self.cleanup(now);
        Ok(())
    }

    /// The unexpired elements (all stored ones under `ReturnExpiredIfNotCleanedUp`), in
    /// insertion order. Expired elements are removed from the list (cleanup on read) and the
    /// returned ones refreshed under `OnReadAndWrite`; both are skipped while another
    /// iterator over this state is alive, when the iterator still hides expired elements.
    fn get(&self) -> Result<StateIter<'_, T>> {
        let now = self.now()?;
        let (ttl_ms, update_on_read, return_expired) =
            (self.ttl_ms, self.update_on_read, self.return_expired);
        // Under `ReturnExpiredIfNotCleanedUp`, a list with expired elements is returned as it
        // was stored, from a copy, because the stored list loses those elements now.
        let mut as_stored: Option<Vec<T>> = None;
        if let Ok(mut table) = self.handle.table.try_borrow_mut() {
            as_stored = self
                .handle
                .context
                .with_key(&self.handle.name, |key, offset| {
                    let list = table.get_mut(offset, key)?;
                    let mut copy = None;
                    if list.any_expired(ttl_ms, now) {
                        if return_expired {
                            copy = Some(list.iter().map(|e| e.value.clone()).collect());
                        }
                        list.retain(|e| !e.is_expired(ttl_ms, now));
                    }
                    if update_on_read {
                        list.iter_mut().for_each(|e| e.last_access_ms = now);
                    }
                    if list.is_empty() {
                        table.remove(offset, key);
                    }
                    copy
                })?;
        }
        self.cleanup(now);
        if let Some(elements) = as_stored {
            return Ok(Box::new(elements.into_iter()));
        }
        let table = self.handle.borrow()?;
        let list = self
            .handle
            .context
            .with_key(&self.handle.name, |key, offset| {
                Ref::filter_map(table, |t| t.get(offset, key)).ok()
            })?;
        Ok(Box::new(TtlListIter {
            list,
            position: 0,
            hide_expired: (!return_expired).then_some((ttl_ms, now)),
        }))
    }

    fn update(&self, values: Vec<T>) -> Result<()> {
        let now = self.now()?;
        self.handle.write(|table, key, offset| {
            if values.is_empty() {
                table.remove(offset, key);
            } else {
                let values = values.into_iter().map(|v| TtlValue::new(v, now)).collect();
                table.put(offset, key, values);
            }
        })?;
        self.cleanup(now);
        Ok(())
    }

    fn clear(&self) -> Result<()> {
        let now = self.now()?;
        self.handle.write(|table, key, offset| {
            table.remove(offset, key);
        })?;
        self.cleanup(now);
        Ok(())
    }
}

impl<K: Key, UK: Key, UV: StateValue> TtlHandle<K, SmallMap<UK, TtlValue<UV>>> {
    /// Reads one entry of the current key's map through `project`, with the TTL rules of
    /// [`get_single`](TtlHandle::get_single), per entry.
    fn get_entry<R>(
        &self,
        now: u64,
        user_key: &UK,
        project: impl FnOnce(&UV) -> R,
    ) -> Result<Option<R>> {
        let (ttl_ms, update_on_read, return_expired) =
            (self.ttl_ms, self.update_on_read, self.return_expired);
        if !update_on_read {
            // The common case needs only a shared borrow.
            let read = self.handle.read(|map| {
                let entry = map?.get(user_key)?;
                Some(if entry.is_expired(ttl_ms, now) {
                    SingleRead::Expired(return_expired.then(|| project(&entry.value)))
                } else {
                    SingleRead::Live(project(&entry.value))
                })
            })?;
            return match read {
                None => Ok(None),
                Some(SingleRead::Live(value)) => Ok(Some(value)),
                Some(SingleRead::Expired(value)) => {
                    self.remove_entry(user_key)?;
                    Ok(value)
                }
            };
        }
        self.handle.write(|table, key, offset| {
            let map = table.get_mut(offset, key)?;
            let entry = map_entry_mut(map, user_key)?;
            if !entry.is_expired(ttl_ms, now) {
                entry.last_access_ms = now;
                return Some(project(&entry.value));
            }
            let expired = map.remove(user_key)?;
            if map.is_empty() {
                table.remove(offset, key);
            }
            return_expired.then(|| project(&expired.value))
        })
    }

    fn remove_entry(&self, user_key: &UK) -> Result<()> {
        self.handle.write(|table, key, offset| {
            if let Some(map) = table.get_mut(offset, key) {
                map.remove(user_key);
                if map.is_empty() {
                    table.remove(offset, key);
                }
            }
        })
    }

    /// Projects the current key's entries, with the TTL rules: expired entries are removed
    /// (and projected only under `ReturnExpiredIfNotCleanedUp`), the others refreshed under
    /// `OnReadAndWrite`.
    fn collect_entries<R>(&self, project: impl Fn(&UK, &UV) -> R) -> Result<StateIter<'_, R>>
    where
        R: 'static,
    {
        let now = self.now()?;
        let (ttl_ms, update_on_read, return_expired) =
            (self.ttl_ms, self.update_on_read, self.return_expired);
        let items = self.handle.write(|table, key, offset| {
            let Some(map) = table.get_mut(offset, key) else {
                return Vec::new();
            };
            let items: Vec<R> = map
                .iter()
                .filter(|(_, e)| return_expired || !e.is_expired(ttl_ms, now))
                .map(|(k, e)| project(k, &e.value))
                .collect();
            if map.purge(ttl_ms, now) {
                table.remove(offset, key);
            } else if update_on_read {
                map_for_each_mut(map, |e| e.last_access_ms = now);
            }
            items
        })?;
        self.cleanup(now);
        Ok(Box::new(items.into_iter()))
    }
}

impl<K: Key, UK: Key, UV: StateValue> MapStateAccess<UK, UV>
    for TtlHandle<K, SmallMap<UK, TtlValue<UV>>>
{
    #[inline]
    fn get(&self, user_key: &UK) -> Result<Option<UV>> {
        let now = self.now()?;
        let value = self.get_entry(now, user_key, UV::clone)?;
        self.cleanup(now);
        Ok(value)
    }

    #[inline]
    fn put(&self, user_key: UK, value: UV) -> Result<()> {
        let now = self.now()?;
        self.handle.write(|table, key, offset| {
            table
                .get_or_insert_with(offset, key, SmallMap::default)
                .insert(user_key, TtlValue::new(value, now));
        })?;
        self.cleanup(now);
        Ok(())
    }

    fn put_all(&self, entries: Vec<(UK, UV)>) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let now = self.now()?;
        self.handle.write(|table, key, offset| {
            let map = table.get_or_insert_with(offset, key, SmallMap::default);
            for (user_key, value) in entries {
                map.insert(user_key, TtlValue::new(value, now));
            }
        })?;
        self.cleanup(now);
        Ok(())
    }

    fn remove(&self, user_key: &UK) -> Result<()> {
        let now = self.now()?;
        self.remove_entry(user_key)?;
        self.cleanup(now);
        Ok(())
    }

    /// Flink's `contains`: whether [`get`](Self::get) would return a value (with its cleanup
    /// and refresh).
    fn contains(&self, user_key: &UK) -> Result<bool> {
        let now = self.now()?;
        let found = self.get_entry(now, user_key, |_| ())?.is_some();
        self.cleanup(now);
        Ok(found)
    }

    fn entries(&self) -> Result<StateIter<'_, (UK, UV)>> {
        self.collect_entries(|k, v| (k.clone(), v.clone()))
    }

    fn keys(&self) -> Result<StateIter<'_, UK>> {
        self.collect_entries(|k, _| k.clone())
    }

    fn values(&self) -> Result<StateIter<'_, UV>> {
        self.collect_entries(|_, v| v.clone())
    }

    /// Whether [`entries`](Self::entries) would return nothing; reads only (no cleanup, no
    /// refresh), as it returns no value.
    fn is_empty(&self) -> Result<bool> {
        let now = self.now()?;
        let (ttl_ms, return_expired) = (self.ttl_ms, self.return_expired);
        let empty = self.handle.read(|map| {
            map.is_none_or(|m| {
                !m.iter()
                    .any(|(_, e)| return_expired || !e.is_expired(ttl_ms, now))
            })
        })?;
        self.cleanup(now);
        Ok(empty)
    }

    fn clear(&self) -> Result<()> {
        let now = self.now()?;
        self.handle.write(|table, key, offset| {
            table.remove(offset, key);
        })?;
        self.cleanup(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frozen_table_is_the_state_when_it_was_frozen() {
        let mut table = ShardedTable::new(KeyGroupRange::new(0, 3), copy_entries::<u64, String>);
        for offset in 0..4 {
            table.put(offset, &(offset as u64), format!("before {offset}"));
        }
        let frozen = table.freeze();
        table.put(0, &0, "after".to_string());
        table.put(0, &10, "new".to_string());
        assert_eq!(table.remove(1, &1), Some("before 1".to_string()));
        assert_eq!(table.get(0, &0).map(String::as_str), Some("after"));
        let frozen_value = |offset: usize, key: u64| {
            frozen.shards[offset]
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(frozen_value(0, 0), Some("before 0"));
        assert_eq!(frozen_value(0, 10), None);
        assert_eq!(frozen_value(1, 1), Some("before 1"));
        assert_eq!(
            frozen.shards.iter().map(|shard| shard.len()).sum::<usize>(),
            4
        );
        assert_eq!(table.len(), 4);
    }

    #[test]
    fn a_recycled_copy_holds_exactly_the_new_state() {
        let mut table = ShardedTable::new(KeyGroupRange::new(0, 1), copy_entries::<u64, String>);
        for key in 0..100u64 {
            table.put((key % 2) as usize, &key, format!("first {key}"));
        }
        drop(table.freeze());
        assert_eq!(table.spares.lock().map(|s| s.len()).ok(), Some(2));

        // Fewer keys, other values: nothing of the first copy may show through.
        for key in 0..100u64 {
            let offset = (key % 2) as usize;
            if key % 3 == 0 {
                table.put(offset, &key, format!("second {key}"));
            } else {
                table.remove(offset, &key);
            }
        }
        let second = table.freeze();
        assert_eq!(table.spares.lock().map(|s| s.len()).ok(), Some(0));
        for offset in 0..2 {
            let mut copied: Vec<_> = second.shards[offset]
                .iter()
                .map(|(k, v)| (*k, v.clone()))
                .collect();
            copied.sort();
            let mut live: Vec<_> = table.shards[offset]
                .iter()
                .map(|(k, v)| (*k, v.clone()))
                .collect();
            live.sort();
            assert_eq!(copied, live);
            assert_eq!(second.shards[offset].len(), live.len());
        }
        let copied_value = |offset: usize, key: u64| {
            second.shards[offset]
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(copied_value(0, 1), None);
        assert_eq!(copied_value(1, 1), None);
        assert_eq!(copied_value(0, 0), Some("second 0"));
    }
}
