//! The backend-independent face of one subtask's keyed state.

use std::any::Any;
use std::cell::Ref;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use eddy_core::{EddyError, Key, KeyGroup, KeyGroupRange, Result, StateValue};

use crate::descriptor::{
    AggregateFunction, AggregatingStateDescriptor, ListStateDescriptor, MapStateDescriptor,
    ReducingStateDescriptor, StateKind, ValueStateDescriptor,
};
use crate::handle::{AggregatingState, ListState, MapState, ReducingState, ValueState};
use crate::heap::{HeapKeyedStateBackend, PrefetchDepth};
use crate::key_context::KeyContext;
use crate::namespace::{Namespace, Namespaced};
use crate::schema::{Migrator, TracedShape, TypeSchema};
use crate::snapshot::heap_codec::KeyCheck;
use crate::snapshot::{
    EntryBlock, EntryWriter, KeyGroupSnapshot, KeyedStateSnapshot, RestorePlan, Staged,
    StagedBlocks, StateMeta, TimerServiceMeta,
};
use crate::timers::{ErasedTimers, TimerService};
use crate::ttl::TtlClock;

/// The keyed state of one operator subtask: the current key plus the backend holding values.
///
/// The runtime creates one per keyed operator subtask, sets the current key before every call
/// into user code, and hands it to the function's `open()` to create handles.
pub struct KeyedStateBackend<K> {
    context: Rc<KeyContext<K>>,
    inner: BackendImpl<K>,
    /// Timer services by name; each is a `TimerService<K, N>` for its own `N`.
    timer_services: BTreeMap<String, RegisteredTimers>,
    /// What a snapshot records of each registered state, by name.
    metas: BTreeMap<String, StateMeta>,
    /// Restored entries waiting for their state to be registered, from
    /// [`restore`](Self::restore) until [`finish_restore`](Self::finish_restore).
    staged: Option<Staged>,
}

/// A registered timer service, typed (to hand out) and erased (to snapshot).
struct RegisteredTimers {
    service: Rc<dyn Any>,
    erased: Rc<dyn ErasedTimers>,
    meta: TimerServiceMeta,
}

enum BackendImpl<K> {
    Heap(HeapKeyedStateBackend<K>),
    #[cfg(feature = "rocksdb")]
    RocksDb(crate::rocksdb::RocksDbKeyedStateBackend<K>),
}

impl<K: Key> KeyedStateBackend<K> {
    /// A heap backend for a subtask owning `range` out of `max_parallelism` key groups.
    pub fn heap(range: KeyGroupRange, max_parallelism: usize) -> Self {
        let context = Rc::new(KeyContext::new(range, max_parallelism));
        let inner = BackendImpl::Heap(HeapKeyedStateBackend::new(Rc::clone(&context)));
        KeyedStateBackend {
            context,
            inner,
            timer_services: BTreeMap::new(),
            metas: BTreeMap::new(),
            staged: None,
        }
    }

    /// A RocksDB backend (one RocksDB instance in a new directory under
    /// `config.working_dir`) for a subtask owning `range` out of `max_parallelism` key groups.
    #[cfg(feature = "rocksdb")]
    pub fn rocksdb(
        range: KeyGroupRange,
        max_parallelism: usize,
        config: &crate::rocksdb::RocksDbConfig,
    ) -> Result<Self> {
        let context = Rc::new(KeyContext::new(range, max_parallelism));
        let backend = crate::rocksdb::RocksDbKeyedStateBackend::new(Rc::clone(&context), config)?;
        Ok(KeyedStateBackend {
            context,
            inner: BackendImpl::RocksDb(backend),
            timer_services: BTreeMap::new(),
            metas: BTreeMap::new(),
            staged: None,
        })
    }

    /// The RocksDB backend, if this is one (for inspection in tests and diagnosis).
    #[cfg(feature = "rocksdb")]
    pub fn as_rocksdb(&self) -> Option<&crate::rocksdb::RocksDbKeyedStateBackend<K>> {
        match &self.inner {
            BackendImpl::RocksDb(rocksdb) => Some(rocksdb),
            BackendImpl::Heap(_) => None,
        }
    }

    /// The shared current-key context.
    pub fn context(&self) -> &Rc<KeyContext<K>> {
        &self.context
    }

    /// Sets the current key (see [`KeyContext::set_current_key`]).
    #[inline]
    pub fn set_current_key(&self, key: K) -> Result<()> {
        self.context.set_current_key(key)
    }

    /// Starts loading `key`'s state into the CPU caches ahead of processing it (see
    /// [`HeapKeyedStateBackend::prefetch`]). Keys outside this subtask's range are ignored.
    #[inline]
    pub fn prefetch(&self, key: &K, depth: PrefetchDepth) {
        let kg = eddy_core::key_group::assign_to_key_group(key, self.context.max_parallelism());
        self.prefetch_in_group(key, kg, depth);
    }

    /// Like [`prefetch`](Self::prefetch), for a key whose key group `kg` is already known.
    #[inline]
    pub fn prefetch_in_group(&self, key: &K, kg: eddy_core::KeyGroup, depth: PrefetchDepth) {
        let Some(offset) = self.context.key_group_range().offset_of(kg) else {
            return;
        };
        match &self.inner {
            BackendImpl::Heap(heap) => heap.prefetch(offset, key, depth),
            // RocksDB reads through its block cache, which a software prefetch cannot reach;
            // the object cache in front of it can be warmed.
            #[cfg(feature = "rocksdb")]
            BackendImpl::RocksDb(rocksdb) if depth == PrefetchDepth::Slot => {
                rocksdb.prefetch(kg, key)
            }
            #[cfg(feature = "rocksdb")]
            BackendImpl::RocksDb(_) => {}
        }
    }

    /// Like [`prefetch`](Self::prefetch), for a key whose key group is at `offset` in the
    /// subtask's range (as timers report it).
    #[inline]
    pub fn prefetch_at_offset(&self, offset: usize, key: &K, depth: PrefetchDepth) {
        if let Some(kg) = self.context.key_group_range().key_group_at(offset) {
            self.prefetch_in_group(key, kg, depth);
        }
    }

    /// Whether any state is registered (a stateless function needs no prefetching).
    pub fn has_state(&self) -> bool {
        match &self.inner {
            BackendImpl::Heap(heap) => heap.state_names().next().is_some(),
            #[cfg(feature = "rocksdb")]
            BackendImpl::RocksDb(rocksdb) => rocksdb.state_names().next().is_some(),
        }
    }

    /// Whether [`PrefetchDepth::Contents`] prefetches do anything for the registered states.
    pub fn has_contents(&self) -> bool {
        match &self.inner {
            BackendImpl::Heap(heap) => heap.has_contents(),
            #[cfg(feature = "rocksdb")]
            BackendImpl::RocksDb(_) => false,
        }
    }

    /// Unsets the current key, so that state access fails until one is set again.
    pub fn clear_current_key(&self) -> Result<()> {
        self.context.clear_current_key()
    }

    /// The current key, if one is set.
    pub fn current_key(&self) -> Option<Ref<'_, K>> {
        self.context.current_key()
    }

    /// Makes `clock` the time source of every TTL state of this backend, including states
    /// already registered. The default is [`SystemClock`](crate::SystemClock); tests inject a
    /// [`ManualClock`](crate::ManualClock) so that they never sleep.
    pub fn set_ttl_clock(&mut self, clock: Arc<dyn TtlClock>) {
        match &mut self.inner {
            BackendImpl::Heap(heap) => heap.set_ttl_clock(clock),
            #[cfg(feature = "rocksdb")]
            BackendImpl::RocksDb(rocksdb) => rocksdb.set_ttl_clock(clock),
        }
    }

    /// Makes `clock` the time of every event-time TTL state
    /// ([`StateTtlConfig::event_time`](crate::StateTtlConfig::event_time)), including states
    /// already registered. The runtime passes the operator's current watermark; until a clock
    /// is set, event time stands at 0 and nothing expires.
    pub fn set_event_time_clock(&mut self, clock: Arc<dyn TtlClock>) {
        match &mut self.inner {
            BackendImpl::Heap(heap) => heap.set_event_time_clock(clock),
            #[cfg(feature = "rocksdb")]
            BackendImpl::RocksDb(rocksdb) => rocksdb.set_event_time_clock(clock),
        }
    }

    /// The number of keys holding a value in the state called `name` (expired values that no
    /// cleanup has removed yet included), or `None` if no such state is registered.
    pub fn state_len(&self, name: &str) -> Option<usize> {
        match &self.inner {
            BackendImpl::Heap(heap) => heap.state_len(name),
            #[cfg(feature = "rocksdb")]
            BackendImpl::RocksDb(rocksdb) => rocksdb.state_len(name),
        }
    }

    /// The heap backend, if this is one (for inspection in tests and snapshots).
    pub fn as_heap(&self) -> Option<&HeapKeyedStateBackend<K>> {
        match &self.inner {
            BackendImpl::Heap(heap) => Some(heap),
            #[cfg(feature = "rocksdb")]
            BackendImpl::RocksDb(_) => None,
        }
    }

    /// Creates a [`ValueState`] from its descriptor; the same name returns the same state.
    pub fn value_state<T: StateValue>(
        &mut self,
        desc: &ValueStateDescriptor<T>,
    ) -> Result<ValueState<T>> {
        let meta =
            StateMeta::of::<K, (), T>(desc.name(), StateKind::Value, None, desc.ttl().is_some());
        self.register(meta, Migrator::of::<T>(), |inner| match inner {
            BackendImpl::Heap(heap) => heap.value_state(desc),
            #[cfg(feature = "rocksdb")]
            BackendImpl::RocksDb(rocksdb) => rocksdb.value_state(desc),
        })
    }

    /// Creates a [`ListState`] from its descriptor; the same name returns the same state.
    pub fn list_state<T: StateValue>(
        &mut self,
        desc: &ListStateDescriptor<T>,
    ) -> Result<ListState<T>> {
        let meta =
            StateMeta::of::<K, (), T>(desc.name(), StateKind::List, None, desc.ttl().is_some());
        self.register(meta, Migrator::of::<T>(), |inner| match inner {
            BackendImpl::Heap(heap) => heap.list_state(desc),
            #[cfg(feature = "rocksdb")]
            BackendImpl::RocksDb(rocksdb) => rocksdb.list_state(desc),
        })
    }

    /// Creates a [`MapState`] from its descriptor; the same name returns the same state.
    pub fn map_state<UK: Key, UV: StateValue>(
        &mut self,
        desc: &MapStateDescriptor<UK, UV>,
    ) -> Result<MapState<UK, UV>> {
        let meta = StateMeta::of::<K, (), UV>(
            desc.name(),
            StateKind::Map,
            Some(TypeSchema::of::<UK>()),
            desc.ttl().is_some(),
        );
        self.register(meta, Migrator::of::<UV>(), |inner| match inner {
            BackendImpl::Heap(heap) => heap.map_state(desc),
            #[cfg(feature = "rocksdb")]
            BackendImpl::RocksDb(rocksdb) => rocksdb.map_state(desc),
        })
    }

    /// Creates a [`ReducingState`] from its descriptor; the same name returns the same state.
    pub fn reducing_state<T: StateValue>(
        &mut self,
        desc: &ReducingStateDescriptor<T>,
    ) -> Result<ReducingState<T>> {
        let meta =
            StateMeta::of::<K, (), T>(desc.name(), StateKind::Reducing, None, desc.ttl().is_some());
        self.register(meta, Migrator::of::<T>(), |inner| match inner {
            BackendImpl::Heap(heap) => heap.reducing_state(desc),
            #[cfg(feature = "rocksdb")]
            BackendImpl::RocksDb(rocksdb) => rocksdb.reducing_state(desc),
        })
    }

    /// Creates an [`AggregatingState`] from its descriptor; the same name returns the same
    /// state.
    pub fn aggregating_state<In: 'static, F: AggregateFunction<In>>(
        &mut self,
        desc: &AggregatingStateDescriptor<In, F>,
    ) -> Result<AggregatingState<In, F::Out>> {
        let meta = StateMeta::of::<K, (), F::Acc>(
            desc.name(),
            StateKind::Aggregating,
            None,
            desc.ttl().is_some(),
        );
        self.register(meta, Migrator::of::<F::Acc>(), |inner| match inner {
            BackendImpl::Heap(heap) => heap.aggregating_state(desc),
            #[cfg(feature = "rocksdb")]
            BackendImpl::RocksDb(rocksdb) => rocksdb.aggregating_state(desc),
        })
    }

    /// The timer service called `name` with namespace type `N`, created on first use; the
    /// same name returns the same service (see [`crate::timers`]). The RocksDB backend keeps
    /// the timers in RocksDB unless its configuration asks for the heap (as Flink's
    /// `ROCKSDB` and `HEAP` timer-service factories).
    ///
    /// A service restored by [`restore`](Self::restore) gets its timers back here; its key
    /// and namespace types must be the ones it was snapshotted with.
    pub fn timer_service<N: Namespace>(&mut self, name: &str) -> Result<Rc<TimerService<K, N>>> {
        if !self.timer_services.contains_key(name) {
            self.create_timer_service::<N>(name)?;
        }
        let registered = self
            .timer_services
            .get(name)
            .ok_or_else(|| EddyError::Internal(format!("timer service \"{name}\" vanished")))?;
        Rc::clone(&registered.service)
            .downcast::<TimerService<K, N>>()
            .map_err(|_| {
                eddy_core::EddyError::state(
                    name,
                    "timer service already registered with another namespace type",
                )
            })
    }

    /// Creates a [`ValueState`] whose values are scoped to the current key and the current
    /// namespace of type `N` (see [`crate::namespace`]). TTL is not supported on namespaced
    /// state (as in Flink, where window state has no TTL).
    pub fn namespaced_value_state<N: Namespace, T: StateValue>(
        &mut self,
        desc: &ValueStateDescriptor<T>,
    ) -> Result<Namespaced<ValueState<T>, N>> {
        reject_ttl(desc.name(), desc.ttl())?;
        let meta = StateMeta::of::<K, N, T>(desc.name(), StateKind::Value, None, false);
        self.register(meta, Migrator::of::<T>(), |inner| match inner {
            BackendImpl::Heap(heap) => heap.namespaced_value_state(desc),
            #[cfg(feature = "rocksdb")]
            BackendImpl::RocksDb(rocksdb) => rocksdb.namespaced_value_state(desc),
        })
    }

    /// Creates a namespaced [`ListState`] (see [`namespaced_value_state`](Self::namespaced_value_state)).
    pub fn namespaced_list_state<N: Namespace, T: StateValue>(
        &mut self,
        desc: &ListStateDescriptor<T>,
    ) -> Result<Namespaced<ListState<T>, N>> {
        reject_ttl(desc.name(), desc.ttl())?;
        let meta = StateMeta::of::<K, N, T>(desc.name(), StateKind::List, None, false);
        self.register(meta, Migrator::of::<T>(), |inner| match inner {
            BackendImpl::Heap(heap) => heap.namespaced_list_state(desc),
            #[cfg(feature = "rocksdb")]
            BackendImpl::RocksDb(rocksdb) => rocksdb.namespaced_list_state(desc),
        })
    }

    /// Creates a namespaced [`MapState`] (see [`namespaced_value_state`](Self::namespaced_value_state)).
    pub fn namespaced_map_state<N: Namespace, UK: Key, UV: StateValue>(
        &mut self,
        desc: &MapStateDescriptor<UK, UV>,
    ) -> Result<Namespaced<MapState<UK, UV>, N>> {
        reject_ttl(desc.name(), desc.ttl())?;
        let meta = StateMeta::of::<K, N, UV>(
            desc.name(),
            StateKind::Map,
            Some(TypeSchema::of::<UK>()),
            false,
        );
        self.register(meta, Migrator::of::<UV>(), |inner| match inner {
            BackendImpl::Heap(heap) => heap.namespaced_map_state(desc),
            #[cfg(feature = "rocksdb")]
            BackendImpl::RocksDb(rocksdb) => rocksdb.namespaced_map_state(desc),
        })
    }

    /// Creates a namespaced [`ReducingState`] (see [`namespaced_value_state`](Self::namespaced_value_state)).
    pub fn namespaced_reducing_state<N: Namespace, T: StateValue>(
        &mut self,
        desc: &ReducingStateDescriptor<T>,
    ) -> Result<Namespaced<ReducingState<T>, N>> {
        reject_ttl(desc.name(), desc.ttl())?;
        let meta = StateMeta::of::<K, N, T>(desc.name(), StateKind::Reducing, None, false);
        self.register(meta, Migrator::of::<T>(), |inner| match inner {
            BackendImpl::Heap(heap) => heap.namespaced_reducing_state(desc),
            #[cfg(feature = "rocksdb")]
            BackendImpl::RocksDb(rocksdb) => rocksdb.namespaced_reducing_state(desc),
        })
    }

    /// Creates a namespaced [`AggregatingState`] (see [`namespaced_value_state`](Self::namespaced_value_state)).
    pub fn namespaced_aggregating_state<N: Namespace, In: 'static, F: AggregateFunction<In>>(
        &mut self,
        desc: &AggregatingStateDescriptor<In, F>,
    ) -> Result<Namespaced<AggregatingState<In, F::Out>, N>> {
        reject_ttl(desc.name(), desc.ttl())?;
        let meta = StateMeta::of::<K, N, F::Acc>(desc.name(), StateKind::Aggregating, None, false);
        self.register(meta, Migrator::of::<F::Acc>(), |inner| match inner {
            BackendImpl::Heap(heap) => heap.namespaced_aggregating_state(desc),
            #[cfg(feature = "rocksdb")]
            BackendImpl::RocksDb(rocksdb) => rocksdb.namespaced_aggregating_state(desc),
        })
    }

    /// The keys of this subtask holding a value in the state called `state_name` (in any
    /// namespace), in no particular order (Flink's `KeyedStateBackend.getKeys`). An error if
    /// no such state is registered.
    pub fn keys(&self, state_name: &str) -> Result<Vec<K>> {
        match &self.inner {
            BackendImpl::Heap(heap) => heap.keys(state_name),
            #[cfg(feature = "rocksdb")]
            BackendImpl::RocksDb(rocksdb) => rocksdb.keys(state_name),
        }
    }

    /// Calls `f` once for every key holding a value in the state called `state_name`, with
    /// that key set as the current key, so `f` can use any state handle of this backend
    /// (Flink's `applyToAllKeys`, used by broadcast functions to update all keyed state).
    ///
    /// The keys are collected before the first call, so `f` may modify or clear the state.
    /// The current key from before the call is restored afterwards, also when `f` fails.
    /// Calling this while the runtime holds the current key (inside `process_element`) is an
    /// error, not a panic.
    pub fn apply_to_all_keys(
        &self,
        state_name: &str,
        f: &mut dyn FnMut(&K) -> Result<()>,
    ) -> Result<()> {
        let keys = self.keys(state_name)?;
        let previous = self.context.current_key().map(|key| key.clone());
        let mut outcome = Ok(());
        for key in keys {
            outcome = self
                .context
                .set_current_key(key.clone())
                .and_then(|()| f(&key));
            if outcome.is_err() {
                break;
            }
        }
        let restored = match previous {
            Some(key) => self.context.set_current_key(key),
            None => self.context.clear_current_key(),
        };
        outcome.and(restored)
    }
}

// Snapshots and restores (see `crate::snapshot`).
impl<K: Key> KeyedStateBackend<K> {
    /// Registers a state through `create`, checked against (and then filled from) a restored
    /// state of the same name, and records what a snapshot needs to know about it.
    ///
    /// A restored state is checked against the registration's schemas first (see
    /// [`crate::schema`]): an incompatible change is an [`EddyError::Schema`] before
    /// anything is created or read; a change that needs a migration re-encodes every
    /// restored value with `migrator` before loading it.
    fn register<S>(
        &mut self,
        meta: StateMeta,
        migrator: Migrator,
        create: impl FnOnce(&mut BackendImpl<K>) -> Result<S>,
    ) -> Result<S> {
        let plan = match &self.staged {
            Some(staged) => match staged.states.get(&meta.name) {
                Some((restored, _)) => Some(
                    restored
                        .plan_restore_as(&meta, &migrator)
                        .map_err(|reason| {
                            EddyError::schema(&staged.operator, &meta.name, reason)
                        })?,
                ),
                None => None,
            },
            None => None,
        };
        let state = create(&mut self.inner)?;
        let restored = self
            .staged
            .as_mut()
            .and_then(|staged| staged.states.remove(&meta.name));
        if let (Some((restored, blocks)), Some(plan)) = (restored, plan) {
            let (restored, blocks) = match plan {
                RestorePlan::AsIs => (restored, blocks),
                RestorePlan::Migrate(old) => (
                    meta.clone(),
                    migrate_blocks(&restored, &old, &blocks, &migrator)?,
                ),
            };
            match &self.inner {
                BackendImpl::Heap(heap) => heap.restore_state(&meta.name, &restored, &blocks)?,
                #[cfg(feature = "rocksdb")]
                BackendImpl::RocksDb(rocksdb) => {
                    rocksdb.restore_state(&meta.name, &restored, &blocks)?
                }
            }
        }
        self.metas.entry(meta.name.clone()).or_insert(meta);
        Ok(state)
    }

    /// Creates the timer service `name`, with its restored timers if any.
    fn create_timer_service<N: Namespace>(&mut self, name: &str) -> Result<()> {
        let meta = TimerServiceMeta::of::<K, N>(name);
        let restored = self
            .staged
            .as_ref()
            .and_then(|staged| staged.timers.get(name));
        if let (Some((restored, _)), Some(staged)) = (restored, &self.staged) {
            restored
                .check_restorable_as(&meta)
                .map_err(|reason| EddyError::schema(&staged.operator, name, reason))?;
        }
        let service = Rc::new(match &self.inner {
            BackendImpl::Heap(_) => TimerService::<K, N>::new(name, Rc::clone(&self.context)),
            #[cfg(feature = "rocksdb")]
            BackendImpl::RocksDb(rocksdb) => rocksdb.timer_service::<N>(name)?,
        });
        let restored = self
            .staged
            .as_mut()
            .and_then(|staged| staged.timers.remove(name));
        if let Some((_, blocks)) = restored {
            let range = self.context.key_group_range();
            for (kg, block) in &blocks {
                let offset = offset_in(range, *kg)?;
                let check = KeyCheck {
                    kg: *kg,
                    max_parallelism: self.context.max_parallelism(),
                };
                service
                    .restore_group(offset, block, &check)
                    .map_err(|e| e.in_state(name, *kg, "cannot restore the timers of"))?;
            }
        }
        let erased: Rc<dyn ErasedTimers> = Rc::clone(&service) as Rc<dyn ErasedTimers>;
        self.timer_services.insert(
            name.to_string(),
            RegisteredTimers {
                service,
                erased,
                meta,
            },
        );
        Ok(())
    }

    /// A consistent, backend-independent copy of every registered state and every timer
    /// service of this subtask (see [`crate::snapshot`]).
    ///
    /// Call it between records (no state iterator alive). TTL states whose configuration
    /// has [`cleanup_full_snapshot`](crate::StateTtlConfig::cleanup_full_snapshot) leave out
    /// the values that have expired by now; other TTL values are copied with their
    /// timestamps. Restored states that nobody registered are not part of it.
    pub fn snapshot(&self) -> Result<KeyedStateSnapshot> {
        let states: Vec<StateMeta> = self.metas.values().cloned().collect();
        let per_state: Vec<Vec<(KeyGroup, EntryBlock)>> = match &self.inner {
            BackendImpl::Heap(heap) => states
                .iter()
                .zip(0u32..)
                .map(|(meta, index)| heap.snapshot_state(&meta.name, index))
                .collect::<Result<_>>()?,
            // One RocksDB snapshot for all states, so they are consistent with each other.
            #[cfg(feature = "rocksdb")]
            BackendImpl::RocksDb(rocksdb) => rocksdb.snapshot_states(&states)?,
        };
        Ok(self.snapshot_head(states)?.assemble(per_state))
    }

    /// A snapshot taken in two parts, for asynchronous checkpoints: the synchronous part
    /// runs now, between two records, and [`PendingSnapshot::complete`] does the rest on any
    /// thread while the backend goes on processing.
    ///
    /// For RocksDB the synchronous part is a RocksDB checkpoint (memtables flushed, SST files
    /// hard-linked: tens of milliseconds whatever the state's size) plus the timers. With
    /// [`incremental_checkpoints`](crate::RocksDbConfig::incremental_checkpoints) (the
    /// default) that checkpoint's files are the snapshot ([`PendingSnapshot::into_incremental`]);
    /// otherwise the completion reads it into the canonical format.
    ///
    /// For the heap the synchronous part copies every state's tables (the objects cloned,
    /// nothing serialized) and the timers; the completion encodes the copies.
    pub fn snapshot_pending(&self) -> Result<PendingSnapshot> {
        let states: Vec<StateMeta> = self.metas.values().cloned().collect();
        match &self.inner {
            BackendImpl::Heap(heap) => {
                let frozen = heap.freeze_states(&states)?;
                Ok(PendingSnapshot(Pending::Heap {
                    frozen,
                    head: self.snapshot_head(states)?,
                }))
            }
            #[cfg(feature = "rocksdb")]
            BackendImpl::RocksDb(rocksdb) => {
                let incremental = rocksdb.config().incremental_checkpoints
                    && crate::rocksdb::supports_incremental(&states);
                let scan = rocksdb.checkpoint_states(&states)?;
                let head = self.snapshot_head(states)?;
                if incremental {
                    let checkpoint = scan.into_incremental(head.assemble(Vec::new()))?;
                    return Ok(PendingSnapshot(Pending::Incremental(Box::new(checkpoint))));
                }
                Ok(PendingSnapshot(Pending::RocksDb { scan, head }))
            }
        }
    }

    /// Everything of a snapshot but the states' entries: their metadata and the timers.
    fn snapshot_head(&self, states: Vec<StateMeta>) -> Result<SnapshotHead> {
        let range = self.context.key_group_range();
        let mut timer_metas = Vec::with_capacity(self.timer_services.len());
        let mut timer_blocks = Vec::new();
        for ((name, timers), index) in self.timer_services.iter().zip(0u32..) {
            timer_metas.push(timers.meta.clone());
            // One walk over the timers fills the writers of all key groups.
            let mut writers: Vec<EntryWriter> = range.iter().map(|_| EntryWriter::new()).collect();
            timers.erased.snapshot_into(&mut writers).map_err(|e| {
                EddyError::state(name, format!("cannot snapshot the timers: {}", e.0))
            })?;
            for (kg, writer) in range.iter().zip(&mut writers) {
                if let Some(block) = writer.finish(index) {
                    timer_blocks.push((kg, block));
                }
            }
        }
        Ok(SnapshotHead {
            max_parallelism: self.context.max_parallelism(),
            range,
            states,
            timer_metas,
            timer_blocks,
        })
    }

    /// Stages `snapshots` (of any old subtasks: rescaling) in this fresh backend; call it
    /// before the operator's `open()` registers its states.
    ///
    /// Only the key groups of this backend's own range are kept. Every snapshot must have
    /// been taken with this backend's `max_parallelism`, the snapshots must agree on each
    /// state's kind and types, and no key group may come from two of them; otherwise this is
    /// an [`EddyError::Checkpoint`] and nothing is staged. When a state (or timer service) is
    /// then registered by name, its entries are loaded into it, migrated to the new value
    /// type if its schema evolved compatibly (see [`crate::schema`]); another kind, TTL
    /// on/off, key type or an incompatible value type is an [`EddyError::Schema`] naming
    /// `operator` (the restoring operator's uid), the state and the field. Call
    /// [`finish_restore`](Self::finish_restore) after `open()`.
    pub fn restore(&mut self, operator: &str, snapshots: Vec<KeyedStateSnapshot>) -> Result<()> {
        if !self.metas.is_empty() || !self.timer_services.is_empty() || self.staged.is_some() {
            return Err(EddyError::Internal(
                "keyed state can only be restored once, into a fresh backend, before open() \
                 registers states"
                    .into(),
            ));
        }
        let staged = Staged::new(
            operator,
            snapshots,
            self.context.key_group_range(),
            self.context.max_parallelism(),
        )?;
        self.staged = Some(staged);
        Ok(())
    }

    /// Ends a restore (after `open()`): drops what was restored but not registered and
    /// returns the names of those states and timer services (the runtime decides whether
    /// that is an error, as Flink's `allowNonRestoredState`). Empty without a restore.
    pub fn finish_restore(&mut self) -> Result<Vec<String>> {
        let Some(staged) = self.staged.take() else {
            return Ok(Vec::new());
        };
        Ok(staged
            .states
            .into_keys()
            .chain(staged.timers.into_keys())
            .collect())
    }

    /// What a snapshot records about the registered state `name`.
    pub fn state_meta(&self, name: &str) -> Option<&StateMeta> {
        self.metas.get(name)
    }
}

/// A keyed-state snapshot whose synchronous part is done (see
/// [`KeyedStateBackend::snapshot_pending`]).
pub struct PendingSnapshot(Pending);

enum Pending {
    Heap {
        frozen: crate::heap::FrozenStates,
        head: SnapshotHead,
    },
    #[cfg(feature = "rocksdb")]
    RocksDb {
        scan: crate::rocksdb::CheckpointScan,
        head: SnapshotHead,
    },
    #[cfg(feature = "rocksdb")]
    Incremental(Box<crate::rocksdb::IncrementalCheckpoint>),
}

impl PendingSnapshot {
    /// Finishes the snapshot as a canonical one (for RocksDB: reads its checkpoint); may run
    /// on any thread.
    pub fn complete(self) -> Result<KeyedStateSnapshot> {
        match self.0 {
            Pending::Heap { frozen, head } => Ok(head.assemble(frozen.write()?)),
            #[cfg(feature = "rocksdb")]
            Pending::RocksDb { scan, head } => Ok(head.assemble(scan.read()?)),
            #[cfg(feature = "rocksdb")]
            // Every file inline, read back at once: the canonical snapshot of those files.
            Pending::Incremental(checkpoint) => crate::rocksdb::incremental_to_full(
                &checkpoint.encode(&BTreeMap::new())?,
                "incremental snapshot",
                None,
                &mut |path| {
                    Err(EddyError::Internal(format!(
                        "an all-inline incremental snapshot refers to the shared file {path}"
                    )))
                },
            ),
        }
    }

    /// The files of an incremental RocksDB snapshot, to be uploaded (see
    /// [`crate::rocksdb::IncrementalCheckpoint`]); any other snapshot comes back as it was.
    #[cfg(feature = "rocksdb")]
    pub fn into_incremental(
        self,
    ) -> std::result::Result<crate::rocksdb::IncrementalCheckpoint, Box<PendingSnapshot>> {
        match self.0 {
            Pending::Incremental(checkpoint) => Ok(*checkpoint),
            other => Err(Box::new(PendingSnapshot(other))),
        }
    }
}

/// The parts of a snapshot that are taken synchronously whatever the backend.
struct SnapshotHead {
    max_parallelism: usize,
    range: KeyGroupRange,
    states: Vec<StateMeta>,
    timer_metas: Vec<TimerServiceMeta>,
    timer_blocks: Vec<(KeyGroup, EntryBlock)>,
}

impl SnapshotHead {
    /// The snapshot of these states with their entries `per_state` (in `states` order).
    fn assemble(self, per_state: Vec<Vec<(KeyGroup, EntryBlock)>>) -> KeyedStateSnapshot {
        let mut groups: BTreeMap<KeyGroup, KeyGroupSnapshot> = BTreeMap::new();
        for (kg, block) in per_state.into_iter().flatten() {
            groups
                .entry(kg)
                .or_insert_with(|| KeyGroupSnapshot::new(kg))
                .push_state(block);
        }
        for (kg, block) in self.timer_blocks {
            groups
                .entry(kg)
                .or_insert_with(|| KeyGroupSnapshot::new(kg))
                .push_timers(block);
        }
        KeyedStateSnapshot::new(
            self.max_parallelism,
            self.range,
            self.states,
            self.timer_metas,
            groups.into_values().collect(),
        )
    }
}

/// The blocks of a restored state with every value migrated from `old` (the snapshot's
/// value schema) to the registered type.
fn migrate_blocks(
    restored: &StateMeta,
    old: &TracedShape,
    blocks: &StagedBlocks,
    migrator: &Migrator,
) -> Result<StagedBlocks> {
    let migrate = |bytes: &[u8]| migrator.migrate(old, bytes);
    blocks
        .iter()
        .map(|(kg, block)| {
            let migrated = block
                .migrate_values(restored, &migrate)
                .map_err(|e| e.in_state(&restored.name, *kg, "cannot migrate the values of"))?;
            Ok((*kg, migrated))
        })
        .collect()
}

/// The offset of restored key group `kg` in `range` (the restore kept only those inside).
fn offset_in(range: KeyGroupRange, kg: KeyGroup) -> Result<usize> {
    range
        .offset_of(kg)
        .ok_or_else(|| EddyError::Internal(format!("restored key group {kg} is outside {range:?}")))
}

/// Namespaced state has no TTL: Flink's window state has none either, and the heap's TTL
/// tables are per key. Refused with an error naming the state rather than ignored.
fn reject_ttl(name: &str, ttl: Option<&crate::StateTtlConfig>) -> Result<()> {
    match ttl {
        Some(_) => Err(eddy_core::EddyError::state(
            name,
            "TTL is not supported on namespaced (window) state",
        )),
        None => Ok(()),
    }
}
