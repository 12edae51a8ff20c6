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

use std::any::Any;
use std::cell::{Ref, RefCell, RefMut};
use std::collections::BTreeMap;
use std::rc::Rc;

use eddy_core::{EddyError, Key, KeyGroupRange, Result, StateValue};

use crate::descriptor::{
    AggregateFunction, AggregatingStateDescriptor, ListStateDescriptor, MapStateDescriptor,
    ReduceFn, ReducingStateDescriptor, StateKind, ValueStateDescriptor,
};
use crate::handle::{
    AggregatingState, AggregatingStateAccess, ListState, ListStateAccess, MapState, MapStateAccess,
    ReducingState, ReducingStateAccess, StateIter, ValueState, ValueStateAccess,
};
use crate::key_context::KeyContext;
use crate::prefetch::prefetch_read;
use crate::probe_table::ProbeTable;
use crate::small_map::SmallMap;

/// One hash table per key group of a subtask's range.
#[derive(Debug)]
pub struct ShardedTable<K, V> {
    shards: Vec<ProbeTable<K, V>>,
}

impl<K: Key, V> ShardedTable<K, V> {
    fn new(range: KeyGroupRange) -> Self {
        ShardedTable {
            shards: (0..range.len()).map(|_| ProbeTable::new()).collect(),
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

/// A registered state: its kind and its type-erased table.
struct Registered {
    kind: StateKind,
    table: Rc<dyn Any>,
}

/// Prefetches a key's entry of one table (see [`HeapKeyedStateBackend::prefetch`]).
trait Prefetch<K> {
    fn prefetch(&self, offset: usize, key: &K, depth: PrefetchDepth);
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

/// A table plus how to prefetch what one of its values points to.
struct Prefetcher<K, V> {
    table: Table<K, V>,
    /// `None` when a value holds no pointer worth following (value state).
    contents: Option<fn(&V)>,
}

impl<K: Key, V> Prefetch<K> for Prefetcher<K, V> {
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

/// The heap backend of one keyed operator subtask.
pub struct HeapKeyedStateBackend<K> {
    context: Rc<KeyContext<K>>,
    states: BTreeMap<String, Registered>,
    prefetchers: Vec<Rc<dyn Prefetch<K>>>,
    /// Whether any registered state prefetches at [`PrefetchDepth::Contents`].
    has_contents: bool,
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
        }
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
        let registered = self.states.get(name).filter(|r| r.kind == kind)?;
        let table = registered
            .table
            .downcast_ref::<RefCell<ShardedTable<K, V>>>()?;
        table.try_borrow().ok()
    }

    /// Returns the table registered under `name`, registering an empty one first if needed.
    fn table<V: 'static>(
        &mut self,
        name: &str,
        kind: StateKind,
        contents: Option<fn(&V)>,
    ) -> Result<Table<K, V>> {
        if !self.states.contains_key(name) {
            let table = Rc::new(RefCell::new(ShardedTable::<K, V>::new(
                self.context.key_group_range(),
            )));
            self.has_contents |= contents.is_some();
            self.prefetchers.push(Rc::new(Prefetcher {
                table: Rc::clone(&table),
                contents,
            }));
            self.states
                .insert(name.to_string(), Registered { kind, table });
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
        let table = self.table::<T>(desc.name(), StateKind::Value, None)?;
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
        // `add` writes after the last element.
        let table = self.table::<Vec<T>>(
            desc.name(),
            StateKind::List,
            Some(|list| prefetch_read(list.as_ptr().wrapping_add(list.len()))),
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
        let table =
            self.table::<SmallMap<UK, UV>>(desc.name(), StateKind::Map, Some(SmallMap::prefetch))?;
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
        let table = self.table::<T>(desc.name(), StateKind::Reducing, None)?;
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
        let table = self.table::<F::Acc>(desc.name(), StateKind::Aggregating, None)?;
        Ok(AggregatingState::from_access(Box::new(HeapAggregating {
            handle: HeapHandle::new(desc.name(), &self.context, table),
            function: desc.function(),
            _input: std::marker::PhantomData::<fn(In)>,
        })))
    }
}

/// A reducing state on the heap: a value table plus the reduce function.
struct HeapReducing<K, T> {
    handle: HeapHandle<K, T>,
    reduce: ReduceFn<T>,
}

impl<K: Key, T: StateValue> ReducingStateAccess<T> for HeapReducing<K, T> {
    fn get(&self) -> Result<Option<T>> {
        self.handle.read(|value| value.cloned())
    }

    fn add(&self, value: T) -> Result<()> {
        let reduce = &self.reduce;
        self.handle
            .write(|table, key, offset| match table.get_mut(offset, key) {
                Some(current) => *current = reduce(current, &value),
                None => table.put(offset, key, value),
            })
    }

    fn clear(&self) -> Result<()> {
        self.handle.write(|table, key, offset| {
            table.remove(offset, key);
        })
    }
}

/// An aggregating state on the heap: an accumulator table plus the aggregate function.
struct HeapAggregating<K, In, F: AggregateFunction<In>> {
    handle: HeapHandle<K, F::Acc>,
    function: std::sync::Arc<F>,
    _input: std::marker::PhantomData<fn(In)>,
}

impl<K: Key, In, F: AggregateFunction<In>> AggregatingStateAccess<In, F::Out>
    for HeapAggregating<K, In, F>
{
    fn get(&self) -> Result<Option<F::Out>> {
        let function = &self.function;
        self.handle
            .read(|acc| acc.map(|acc| function.get_result(acc)))
    }

    fn add(&self, value: In) -> Result<()> {
        let function = &self.function;
        self.handle.write(|table, key, offset| {
            let acc = table.get_or_insert_with(offset, key, || function.create_accumulator());
            function.add(value, acc);
        })
    }

    fn clear(&self) -> Result<()> {
        self.handle.write(|table, key, offset| {
            table.remove(offset, key);
        })
    }
}

/// A handle on one heap table, scoped to the current key of `context`.
struct HeapHandle<K, V> {
    name: Rc<str>,
    context: Rc<KeyContext<K>>,
    table: Table<K, V>,
}

impl<K: Key, V> HeapHandle<K, V> {
    fn new(name: &str, context: &Rc<KeyContext<K>>, table: Table<K, V>) -> Self {
        HeapHandle {
            name: name.into(),
            context: Rc::clone(context),
            table,
        }
    }

    /// Reads the current key's entry. A shared borrow can always be taken: mutable borrows
    /// never outlive a call of this module, and no user code runs while one is held.
    #[inline]
    fn read<R>(&self, f: impl FnOnce(Option<&V>) -> R) -> Result<R> {
        let table = self.borrow()?;
        self.context
            .with_key(&self.name, |key, offset| f(table.get(offset, key)))
    }

    #[inline]
    fn borrow(&self) -> Result<Ref<'_, ShardedTable<K, V>>> {
        self.table
            .try_borrow()
            .map_err(|_| EddyError::Internal(format!("state \"{}\" is being modified", self.name)))
    }

    #[inline]
    fn write<R>(&self, f: impl FnOnce(&mut ShardedTable<K, V>, &K, usize) -> R) -> Result<R> {
        let mut table: RefMut<'_, _> = self.table.try_borrow_mut().map_err(|_| {
            EddyError::state(
                &*self.name,
                "cannot modify the state while an iterator over it is alive",
            )
        })?;
        self.context
            .with_key(&self.name, |key, offset| f(&mut table, key, offset))
    }

    /// An iterator over the current key's entry, holding a shared borrow of the table.
    fn iter_entry<'a, T: 'a>(
        &'a self,
        project: impl FnOnce(&V) -> Vec<T>,
    ) -> Result<StateIter<'a, T>> {
        let items = self.read(|entry| entry.map(project).unwrap_or_default())?;
        Ok(Box::new(items.into_iter()))
    }
}

impl<K: Key, T: StateValue> ValueStateAccess<T> for HeapHandle<K, T> {
    #[inline]
    fn value(&self) -> Result<Option<T>> {
        self.read(|entry| entry.cloned())
    }

    #[inline]
    fn update(&self, value: T) -> Result<()> {
        self.write(|table, key, offset| table.put(offset, key, value))
    }

    fn clear(&self) -> Result<()> {
        self.write(|table, key, offset| {
            table.remove(offset, key);
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

impl<K: Key, T: StateValue> ListStateAccess<T> for HeapHandle<K, Vec<T>> {
    #[inline]
    fn add(&self, value: T) -> Result<()> {
        self.write(|table, key, offset| table.get_or_insert_with(offset, key, Vec::new).push(value))
    }

    fn add_all(&self, values: Vec<T>) -> Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        self.write(|table, key, offset| {
            table
                .get_or_insert_with(offset, key, Vec::new)
                .extend(values)
        })
    }

    fn get(&self) -> Result<StateIter<'_, T>> {
        let table = self.borrow()?;
        let list = self.context.with_key(&self.name, |key, offset| {
            Ref::filter_map(table, |t| t.get(offset, key)).ok()
        })?;
        Ok(Box::new(ListIter { list, position: 0 }))
    }

    fn update(&self, values: Vec<T>) -> Result<()> {
        self.write(|table, key, offset| {
            if values.is_empty() {
                table.remove(offset, key);
            } else {
                table.put(offset, key, values);
            }
        })
    }

    fn clear(&self) -> Result<()> {
        self.write(|table, key, offset| {
            table.remove(offset, key);
        })
    }
}

impl<K: Key, UK: Key, UV: StateValue> MapStateAccess<UK, UV> for HeapHandle<K, SmallMap<UK, UV>> {
    #[inline]
    fn get(&self, user_key: &UK) -> Result<Option<UV>> {
        self.read(|map| map.and_then(|m| m.get(user_key)).cloned())
    }

    #[inline]
    fn put(&self, user_key: UK, value: UV) -> Result<()> {
        self.write(|table, key, offset| {
            table
                .get_or_insert_with(offset, key, SmallMap::default)
                .insert(user_key, value);
        })
    }

    fn put_all(&self, entries: Vec<(UK, UV)>) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        self.write(|table, key, offset| {
            let map = table.get_or_insert_with(offset, key, SmallMap::default);
            for (user_key, value) in entries {
                map.insert(user_key, value);
            }
        })
    }

    fn remove(&self, user_key: &UK) -> Result<()> {
        self.write(|table, key, offset| {
            if let Some(map) = table.get_mut(offset, key) {
                map.remove(user_key);
                if map.is_empty() {
                    table.remove(offset, key);
                }
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
        self.write(|table, key, offset| {
            table.remove(offset, key);
        })
    }
}
