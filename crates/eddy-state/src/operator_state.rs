//! Operator (non-keyed) state: Flink's `OperatorStateStore`, list state and broadcast state.
//!
//! Keyed state is scoped to the current key; operator state is scoped to one **operator
//! subtask** and has no current key. Each subtask owns one [`OperatorStateStore`], whose
//! states differ in how a rescale hands them to the new subtasks (their
//! [`OperatorStateMode`], Flink's `OperatorStateHandle.Mode`):
//!
//! * [`list_state`](OperatorStateStore::list_state) (**even split**, Flink's
//!   `getListState`): the elements of all old subtasks are concatenated and split into
//!   contiguous, near-equal parts, one per new subtask;
//! * [`union_list_state`](OperatorStateStore::union_list_state) (**union**, Flink's
//!   `getUnionListState`): every new subtask gets every element;
//! * [`broadcast_state`](OperatorStateStore::broadcast_state) (**broadcast**, Flink's
//!   `getBroadcastState`): a map that is the same on every subtask, because every subtask
//!   applies the same broadcast elements to it; every new subtask gets one copy.
//!
//! [`OperatorStateStore::snapshot`] turns a store into a plain [`OperatorStateSnapshot`], in
//! which every element is encoded on its own with `postcard` (a broadcast map entry is the
//! pair `(key, value)`). Elements are bytes, not typed values, so that [`redistribute`] can
//! move them without knowing their types and a snapshot can be written as is. A restored
//! store decodes a state's elements when the function registers it again with its descriptor,
//! as Flink restores operator state lazily by name.
//!
//! ```
//! use eddy_state::{ListStateDescriptor, OperatorStateStore, redistribute};
//!
//! let mut store = OperatorStateStore::new();
//! let offsets = store.list_state(&ListStateDescriptor::<u64>::new("offsets"))?;
//! offsets.add_all(vec![10, 20, 30])?;
//!
//! // Rescale 1 -> 2: the even-split elements are divided between the new subtasks.
//! let parts = redistribute(vec![store.snapshot()?], 2);
//! let mut second = OperatorStateStore::new();
//! second.restore(parts[1].clone())?;
//! let offsets = second.list_state(&ListStateDescriptor::<u64>::new("offsets"))?;
//! assert_eq!(offsets.get()?.collect::<Vec<_>>(), vec![30]);
//! # Ok::<(), eddy_core::EddyError>(())
//! ```

use std::any::Any;
use std::cell::{Ref, RefCell, RefMut};
use std::collections::BTreeMap;
use std::rc::Rc;

use eddy_core::{EddyError, Key, Result, StateValue};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::descriptor::{ListStateDescriptor, MapStateDescriptor};
use crate::handle::StateIter;

/// How an operator state is handed to the new subtasks when the parallelism changes
/// (Flink's `OperatorStateHandle.Mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OperatorStateMode {
    /// Even split (`SPLIT_DISTRIBUTE`): all elements concatenated, split into contiguous parts.
    SplitDistribute,
    /// Union (`UNION`): every new subtask gets every element.
    Union,
    /// Broadcast (`BROADCAST`): every new subtask gets one (identical) copy.
    Broadcast,
}

impl OperatorStateMode {
    /// How error messages name a state of this mode.
    fn describe(self) -> &'static str {
        match self {
            OperatorStateMode::SplitDistribute => "even-split list state",
            OperatorStateMode::Union => "union list state",
            OperatorStateMode::Broadcast => "broadcast state",
        }
    }
}

/// One operator state in a snapshot: its name, mode and elements.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedOperatorState {
    /// The state's name (its descriptor's name).
    pub name: String,
    /// How the state is redistributed on a rescale.
    pub mode: OperatorStateMode,
    /// The elements, each encoded on its own with `postcard`: a list element, or a broadcast
    /// map entry as the pair `(key, value)`.
    pub elements: Vec<Vec<u8>>,
}

/// The operator state of one subtask, as plain data: what a checkpoint stores.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorStateSnapshot {
    /// The states, sorted by name.
    pub states: Vec<NamedOperatorState>,
}

impl OperatorStateSnapshot {
    /// The state called `name`, if the snapshot has it.
    pub fn state(&self, name: &str) -> Option<&NamedOperatorState> {
        self.states.iter().find(|s| s.name == name)
    }

    /// The snapshot as `postcard` bytes: the payload of an operator-state checkpoint file
    /// (the framing with magic, version and checksum is `eddy-checkpoint`'s).
    pub fn encode(&self) -> Result<Vec<u8>> {
        postcard::to_allocvec(self).map_err(|e| {
            EddyError::checkpoint(
                "operator state snapshot",
                format!("cannot encode the snapshot: {e}"),
            )
        })
    }

    /// Decodes what [`encode`](Self::encode) wrote; `location` (the file) names the
    /// snapshot in the error. Bad bytes, truncation and trailing bytes are errors, never
    /// panics.
    pub fn decode(bytes: &[u8], location: &str) -> Result<Self> {
        crate::snapshot::decode_whole(bytes, location, "an", "operator state snapshot")
    }
}

/// Encodes a registered state's elements for a snapshot, whatever their type.
trait EncodeElements {
    fn encode(&self, name: &str) -> Result<Vec<Vec<u8>>>;
}

/// A registered state: its mode, its element type (for errors) and its storage.
struct Registered {
    /// The name, shared with every handle (so creating a handle does not allocate).
    name: Rc<str>,
    mode: OperatorStateMode,
    type_name: &'static str,
    /// The storage, to hand out typed handles (downcast by the requested type).
    cell: Rc<dyn Any>,
    /// The same storage, to snapshot it without knowing its type.
    encoder: Rc<dyn EncodeElements>,
}

/// The operator (non-keyed) state of one operator subtask: Flink's `OperatorStateStore`.
///
/// States are registered by descriptor; registering a name again returns the same state,
/// and registering it with another type or mode is an [`EddyError::State`] naming it.
/// Handles are not `Send`: they belong to the subtask that created them.
#[derive(Default)]
pub struct OperatorStateStore {
    /// Sorted by name, so snapshots list states in a stable order.
    states: BTreeMap<String, Registered>,
    /// Restored states not registered again yet; kept as bytes until their type is known.
    restored: BTreeMap<String, NamedOperatorState>,
    /// Whether [`restore`](Self::restore) was called (Flink's `isRestored()`).
    is_restored: bool,
}

impl OperatorStateStore {
    /// An empty store.
    pub fn new() -> Self {
        OperatorStateStore::default()
    }

    /// Whether this subtask's state was restored from a checkpoint (Flink's
    /// `isRestored()`): true even when the restore gave it no elements (an even-split list
    /// spread over more subtasks than it has elements), so a source can tell "nothing left
    /// for me" from "a fresh start".
    pub fn is_restored(&self) -> bool {
        self.is_restored
    }

    /// Creates (or re-opens) the even-split list state described by `desc` (Flink's
    /// `getListState`).
    pub fn list_state<T: StateValue>(
        &mut self,
        desc: &ListStateDescriptor<T>,
    ) -> Result<OperatorListState<T>> {
        self.list_state_in_mode(desc, OperatorStateMode::SplitDistribute)
    }

    /// Creates (or re-opens) the union list state described by `desc` (Flink's
    /// `getUnionListState`).
    pub fn union_list_state<T: StateValue>(
        &mut self,
        desc: &ListStateDescriptor<T>,
    ) -> Result<OperatorListState<T>> {
        self.list_state_in_mode(desc, OperatorStateMode::Union)
    }

    /// Creates (or re-opens) the broadcast state described by `desc` (Flink's
    /// `getBroadcastState`).
    pub fn broadcast_state<K: Key, V: StateValue>(
        &mut self,
        desc: &MapStateDescriptor<K, V>,
    ) -> Result<BroadcastState<K, V>> {
        refuse_ttl(desc.name(), desc.ttl().is_some())?;
        let (name, cell) = self.register(
            desc.name(),
            OperatorStateMode::Broadcast,
            std::any::type_name::<(K, V)>(),
            BroadcastCell::<K, V>::decode,
        )?;
        Ok(BroadcastState { name, cell })
    }

    /// The broadcast state described by `desc`, which must be registered already: the
    /// operator's side of Flink's `ctx.getBroadcastState(descriptor)`, where only the
    /// descriptors given to `broadcast(..)` exist.
    pub fn registered_broadcast_state<K: Key, V: StateValue>(
        &self,
        desc: &MapStateDescriptor<K, V>,
    ) -> Result<BroadcastState<K, V>> {
        let registered = self.states.get(desc.name()).ok_or_else(|| {
            EddyError::state(
                desc.name(),
                "no such broadcast state: pass its descriptor to `broadcast(..)` (check the name)",
            )
        })?;
        let (name, cell) = typed::<BroadcastCell<K, V>>(
            registered,
            OperatorStateMode::Broadcast,
            std::any::type_name::<(K, V)>(),
        )?;
        Ok(BroadcastState { name, cell })
    }

    /// Whether no state is registered or restored.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty() && self.restored.is_empty()
    }

    /// The names of the registered states, sorted.
    pub fn state_names(&self) -> impl Iterator<Item = &str> + '_ {
        self.states.keys().map(String::as_str)
    }

    /// Encodes every state, registered or restored and not registered again, into a snapshot.
    pub fn snapshot(&self) -> Result<OperatorStateSnapshot> {
        let mut states = BTreeMap::new();
        for (name, registered) in &self.states {
            let elements = registered.encoder.encode(name)?;
            let state = NamedOperatorState {
                name: name.clone(),
                mode: registered.mode,
                elements,
            };
            states.insert(name.clone(), state);
        }
        for (name, state) in &self.restored {
            states.insert(name.clone(), state.clone());
        }
        Ok(OperatorStateSnapshot {
            states: states.into_values().collect(),
        })
    }

    /// Loads `snapshot` into this store, which must be fresh (nothing registered or restored).
    ///
    /// A state's elements are decoded when the function registers it again, with its type.
    pub fn restore(&mut self, snapshot: OperatorStateSnapshot) -> Result<()> {
        if !self.is_empty() {
            return Err(EddyError::Internal(
                "operator state can only be restored into a fresh store".into(),
            ));
        }
        self.is_restored = true;
        for state in snapshot.states {
            if self.restored.contains_key(&state.name) {
                return Err(EddyError::state(
                    &state.name,
                    "appears twice in the restored snapshot",
                ));
            }
            self.restored.insert(state.name.clone(), state);
        }
        Ok(())
    }

    fn list_state_in_mode<T: StateValue>(
        &mut self,
        desc: &ListStateDescriptor<T>,
        mode: OperatorStateMode,
    ) -> Result<OperatorListState<T>> {
        refuse_ttl(desc.name(), desc.ttl().is_some())?;
        let (name, cell) = self.register(
            desc.name(),
            mode,
            std::any::type_name::<T>(),
            ListCell::<T>::decode,
        )?;
        Ok(OperatorListState { name, cell })
    }

    /// Returns the storage registered under `name`, registering it first if needed (from the
    /// restored elements, if any, decoded by `decode`).
    fn register<S: EncodeElements + 'static>(
        &mut self,
        name: &str,
        mode: OperatorStateMode,
        type_name: &'static str,
        decode: fn(&str, &[Vec<u8>]) -> Result<S>,
    ) -> Result<(Rc<str>, Rc<S>)> {
        if let Some(registered) = self.states.get(name) {
            return typed::<S>(registered, mode, type_name);
        }
        let cell = match self.restored.get(name) {
            Some(restored) if restored.mode != mode => {
                return Err(mode_mismatch(name, restored.mode, mode));
            }
            Some(restored) => decode(name, &restored.elements)?,
            None => decode(name, &[])?,
        };
        self.restored.remove(name);
        let cell = Rc::new(cell);
        let shared_name: Rc<str> = Rc::from(name);
        self.states.insert(
            name.to_string(),
            Registered {
                name: Rc::clone(&shared_name),
                mode,
                type_name,
                cell: Rc::clone(&cell) as Rc<dyn Any>,
                encoder: Rc::clone(&cell) as Rc<dyn EncodeElements>,
            },
        );
        Ok((shared_name, cell))
    }
}

/// The name and storage of a registered state as `S`, or an error naming the state if its
/// mode or type differ from the ones requested.
fn typed<S: 'static>(
    registered: &Registered,
    mode: OperatorStateMode,
    type_name: &'static str,
) -> Result<(Rc<str>, Rc<S>)> {
    let name = &*registered.name;
    if registered.mode != mode {
        return Err(mode_mismatch(name, registered.mode, mode));
    }
    let cell = Rc::clone(&registered.cell).downcast::<S>().map_err(|_| {
        EddyError::state(
            name,
            format!(
                "already registered as {} of {}, requested as {} of {type_name}",
                registered.mode.describe(),
                registered.type_name,
                mode.describe()
            ),
        )
    })?;
    Ok((Rc::clone(&registered.name), cell))
}

fn mode_mismatch(
    name: &str,
    registered: OperatorStateMode,
    requested: OperatorStateMode,
) -> EddyError {
    EddyError::state(
        name,
        format!(
            "already registered as {}, requested as {}",
            registered.describe(),
            requested.describe()
        ),
    )
}

/// Operator state has no time-to-live in Flink either: it is not scoped to keys that expire.
fn refuse_ttl(name: &str, has_ttl: bool) -> Result<()> {
    if has_ttl {
        return Err(EddyError::state(
            name,
            "operator and broadcast state have no time-to-live; TTL applies to keyed state only",
        ));
    }
    Ok(())
}

/// Encodes one element with `postcard`.
fn encode_one<T: Serialize + ?Sized>(name: &str, value: &T) -> Result<Vec<u8>> {
    postcard::to_allocvec(value)
        .map_err(|e| EddyError::state(name, format!("cannot encode an element: {e}")))
}

/// Decodes one element, which must fill `bytes` exactly (a cheap check against a wrong type).
fn decode_one<T: serde::de::DeserializeOwned>(name: &str, bytes: &[u8]) -> Result<T> {
    let not_a = |reason: String| {
        EddyError::state(
            name,
            format!(
                "cannot decode a restored element as {}: {reason}",
                std::any::type_name::<T>()
            ),
        )
    };
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(not_a(format!("{} bytes left over", rest.len()))),
        Err(e) => Err(not_a(e.to_string())),
    }
}

/// Borrows a state's storage for reading; fails (instead of panicking) on a reentrant write.
fn read<'a, T>(name: &str, cell: &'a RefCell<T>) -> Result<Ref<'a, T>> {
    cell.try_borrow()
        .map_err(|_| EddyError::state(name, "read while it is being written"))
}

/// Borrows a state's storage for writing; fails (instead of panicking) on a reentrant access.
fn write<'a, T>(name: &str, cell: &'a RefCell<T>) -> Result<RefMut<'a, T>> {
    cell.try_borrow_mut()
        .map_err(|_| EddyError::state(name, "written while it is being read"))
}

/// The storage of an operator list state.
struct ListCell<T>(RefCell<Vec<T>>);

impl<T: StateValue> ListCell<T> {
    fn decode(name: &str, elements: &[Vec<u8>]) -> Result<Self> {
        let values = elements
            .iter()
            .map(|bytes| decode_one::<T>(name, bytes))
            .collect::<Result<Vec<T>>>()?;
        Ok(ListCell(RefCell::new(values)))
    }
}

impl<T: StateValue> EncodeElements for ListCell<T> {
    fn encode(&self, name: &str) -> Result<Vec<Vec<u8>>> {
        read(name, &self.0)?
            .iter()
            .map(|value| encode_one(name, value))
            .collect()
    }
}

/// The storage of a broadcast state.
struct BroadcastCell<K, V>(RefCell<FxHashMap<K, V>>);

impl<K: Key, V: StateValue> BroadcastCell<K, V> {
    fn decode(name: &str, elements: &[Vec<u8>]) -> Result<Self> {
        let entries = elements
            .iter()
            .map(|bytes| decode_one::<(K, V)>(name, bytes))
            .collect::<Result<FxHashMap<K, V>>>()?;
        Ok(BroadcastCell(RefCell::new(entries)))
    }
}

impl<K: Key, V: StateValue> EncodeElements for BroadcastCell<K, V> {
    fn encode(&self, name: &str) -> Result<Vec<Vec<u8>>> {
        read(name, &self.0)?
            .iter()
            .map(|entry| encode_one(name, &entry))
            .collect()
    }
}

/// A list of `T` per operator subtask (even-split or union list state). Not keyed: every
/// call reads and writes this subtask's one list.
pub struct OperatorListState<T> {
    name: Rc<str>,
    cell: Rc<ListCell<T>>,
}

impl<T: StateValue> OperatorListState<T> {
    /// Appends one element.
    pub fn add(&self, value: T) -> Result<()> {
        write(&self.name, &self.cell.0)?.push(value);
        Ok(())
    }

    /// Appends all elements.
    pub fn add_all(&self, values: Vec<T>) -> Result<()> {
        write(&self.name, &self.cell.0)?.extend(values);
        Ok(())
    }

    /// The elements, in insertion order (a copy: the state may be changed while iterating).
    pub fn get(&self) -> Result<StateIter<'_, T>> {
        let values = read(&self.name, &self.cell.0)?.clone();
        Ok(Box::new(values.into_iter()))
    }

    /// Replaces the list (an empty `values` clears it).
    pub fn update(&self, values: Vec<T>) -> Result<()> {
        *write(&self.name, &self.cell.0)? = values;
        Ok(())
    }

    /// Removes every element.
    pub fn clear(&self) -> Result<()> {
        write(&self.name, &self.cell.0)?.clear();
        Ok(())
    }
}

/// A map from `K` to `V` that is the same on every subtask of an operator: Flink's
/// `BroadcastState`, read and written where broadcast elements are processed.
///
/// Entries come in no particular order.
pub struct BroadcastState<K, V> {
    name: Rc<str>,
    cell: Rc<BroadcastCell<K, V>>,
}

impl<K: Key, V: StateValue> BroadcastState<K, V> {
    /// The value under `key`.
    pub fn get(&self, key: &K) -> Result<Option<V>> {
        Ok(read(&self.name, &self.cell.0)?.get(key).cloned())
    }

    /// Sets `key` to `value`.
    pub fn put(&self, key: K, value: V) -> Result<()> {
        write(&self.name, &self.cell.0)?.insert(key, value);
        Ok(())
    }

    /// Sets every entry.
    pub fn put_all(&self, entries: Vec<(K, V)>) -> Result<()> {
        write(&self.name, &self.cell.0)?.extend(entries);
        Ok(())
    }

    /// Removes `key`.
    pub fn remove(&self, key: &K) -> Result<()> {
        write(&self.name, &self.cell.0)?.remove(key);
        Ok(())
    }

    /// Whether `key` is present.
    pub fn contains(&self, key: &K) -> Result<bool> {
        Ok(read(&self.name, &self.cell.0)?.contains_key(key))
    }

    /// The entries (a copy: the state may be changed while iterating).
    pub fn entries(&self) -> Result<StateIter<'_, (K, V)>> {
        entries(&self.name, &self.cell)
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(read(&self.name, &self.cell.0)?.is_empty())
    }

    /// The number of entries.
    pub fn len(&self) -> Result<usize> {
        Ok(read(&self.name, &self.cell.0)?.len())
    }

    /// Removes every entry.
    pub fn clear(&self) -> Result<()> {
        write(&self.name, &self.cell.0)?.clear();
        Ok(())
    }

    /// A read-only view of the same state (what the keyed side of the operator gets).
    pub fn read_only(&self) -> ReadOnlyBroadcastState<K, V> {
        ReadOnlyBroadcastState {
            name: Rc::clone(&self.name),
            cell: Rc::clone(&self.cell),
        }
    }
}

/// A read-only view of a [`BroadcastState`]: Flink's `ReadOnlyBroadcastState`, what the keyed
/// side of a broadcast operator gets, so that only broadcast elements (seen by every subtask)
/// change the state and its copies stay equal.
pub struct ReadOnlyBroadcastState<K, V> {
    name: Rc<str>,
    cell: Rc<BroadcastCell<K, V>>,
}

impl<K: Key, V: StateValue> ReadOnlyBroadcastState<K, V> {
    /// The value under `key`.
    pub fn get(&self, key: &K) -> Result<Option<V>> {
        Ok(read(&self.name, &self.cell.0)?.get(key).cloned())
    }

    /// Whether `key` is present.
    pub fn contains(&self, key: &K) -> Result<bool> {
        Ok(read(&self.name, &self.cell.0)?.contains_key(key))
    }

    /// The entries (a copy).
    pub fn entries(&self) -> Result<StateIter<'_, (K, V)>> {
        entries(&self.name, &self.cell)
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(read(&self.name, &self.cell.0)?.is_empty())
    }

    /// The number of entries.
    pub fn len(&self) -> Result<usize> {
        Ok(read(&self.name, &self.cell.0)?.len())
    }
}

fn entries<'a, K: Key, V: StateValue>(
    name: &str,
    cell: &BroadcastCell<K, V>,
) -> Result<StateIter<'a, (K, V)>> {
    let entries: Vec<(K, V)> = read(name, &cell.0)?
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok(Box::new(entries.into_iter()))
}

/// The elements of one state of one subtask, each encoded on its own.
type Encoded = Vec<Vec<u8>>;

/// Redistributes the operator state of `old` subtasks (index = old subtask) onto
/// `new_parallelism` subtasks, by Flink's rules for each state's mode:
///
/// * even split: the elements of all old subtasks, concatenated in subtask order, are split
///   into `new_parallelism` contiguous parts whose sizes differ by at most one (the first
///   parts get the extra elements, as Flink's `RoundRobinOperatorStateRepartitioner`);
/// * union: every new subtask gets all elements of all old subtasks;
/// * broadcast: every new subtask gets the copy of the first old subtask that has the state
///   (subtask 0; all copies are equal).
///
/// Every new subtask's snapshot names every state, possibly with no elements, so that a
/// restored function finds its state registered. A state that (wrongly) has different modes
/// on different old subtasks is redistributed by the mode of the first one.
pub fn redistribute(
    old: Vec<OperatorStateSnapshot>,
    new_parallelism: usize,
) -> Vec<OperatorStateSnapshot> {
    let mut new = vec![OperatorStateSnapshot::default(); new_parallelism];
    if new_parallelism == 0 {
        return new;
    }
    // Name -> (mode, elements of each old subtask, in subtask order).
    let mut by_name: BTreeMap<String, (OperatorStateMode, Vec<Encoded>)> = BTreeMap::new();
    for snapshot in old {
        for state in snapshot.states {
            by_name
                .entry(state.name)
                .or_insert_with(|| (state.mode, Vec::new()))
                .1
                .push(state.elements);
        }
    }
    for (name, (mode, per_old_subtask)) in by_name {
        let parts = match mode {
            OperatorStateMode::SplitDistribute => {
                split_evenly(per_old_subtask.concat(), new_parallelism)
            }
            OperatorStateMode::Union => vec![per_old_subtask.concat(); new_parallelism],
            OperatorStateMode::Broadcast => {
                let first = per_old_subtask.into_iter().next().unwrap_or_default();
                vec![first; new_parallelism]
            }
        };
        for (snapshot, elements) in new.iter_mut().zip(parts) {
            snapshot.states.push(NamedOperatorState {
                name: name.clone(),
                mode,
                elements,
            });
        }
    }
    new
}

/// Splits `elements` into `parts` contiguous runs whose lengths differ by at most one.
fn split_evenly(elements: Vec<Vec<u8>>, parts: usize) -> Vec<Vec<Vec<u8>>> {
    let (base, extra) = (elements.len() / parts, elements.len() % parts);
    let mut rest = elements.into_iter();
    (0..parts)
        .map(|i| rest.by_ref().take(base + usize::from(i < extra)).collect())
        .collect()
}
