//! The keyed broadcast process function (Flink's `KeyedBroadcastProcessFunction`) and the
//! contexts the runtime hands it.

use std::cell::Ref;

use eddy_core::{Data, Key, KeyGroup, Result, StateValue};
use eddy_state::{
    BroadcastState, KeyedStateBackend, MapStateDescriptor, OperatorStateStore,
    ReadOnlyBroadcastState,
};

use crate::function::{Collector, OpenContext};

/// A function over a keyed stream connected to a broadcast stream, with managed keyed state
/// and broadcast state: Flink's broadcast state pattern.
///
/// Every subtask sees **every** element of the broadcast stream (e.g. rules) and only the
/// elements of its keys of the keyed stream (e.g. events):
///
/// * [`process_broadcast_element`](Self::process_broadcast_element) is called for every
///   broadcast element on every subtask. It may read and write the broadcast state (a map,
///   see [`BroadcastContext::broadcast_state`]) and, through
///   [`BroadcastContext::apply_to_keyed_state`], the keyed state of every key of the subtask.
///   To keep the copies of the broadcast state equal on all subtasks, it must change them the
///   same way on every subtask, from the element alone.
/// * [`process_element`](Self::process_element) is called for every keyed element, with its
///   key as the current key; it sees the broadcast state read-only
///   ([`ReadOnlyBroadcastContext::broadcast_state`]).
///
/// There is no ordering between the two inputs: a keyed element may be processed before a
/// broadcast element that was emitted earlier (as in Flink).
///
/// The lifecycle is the one of [`KeyedProcessFunction`](crate::KeyedProcessFunction): one
/// value cloned into every subtask, [`open`](Self::open) once per subtask to create keyed
/// state handles, then the two `process` calls, then [`close`](Self::close) at the end of
/// bounded inputs. The broadcast states exist before `open`: they are the descriptors given to
/// `DataStream::broadcast`.
pub trait KeyedBroadcastProcessFunction: Clone + Send + Sync + 'static {
    /// The key type of the keyed input.
    type Key: Key;
    /// The keyed input's element type.
    type In: Data;
    /// The broadcast input's element type.
    type BroadcastIn: Data;
    /// The output record type.
    type Out: Data;
    /// The subtask's keyed state handles, created in [`open`](Self::open).
    type State: 'static;

    /// Called once per subtask before any element: registers keyed state from descriptors.
    fn open(&mut self, ctx: &mut OpenContext<'_, Self::Key>) -> Result<Self::State>;

    /// Called for every element of the keyed input; its key is the current key.
    fn process_element(
        &mut self,
        state: &mut Self::State,
        event: Self::In,
        ctx: &mut ReadOnlyBroadcastContext<'_, Self::Key>,
        out: &mut Collector<'_, Self::Out>,
    ) -> Result<()>;

    /// Called on every subtask for every element of the broadcast input; no key is current.
    fn process_broadcast_element(
        &mut self,
        state: &mut Self::State,
        event: Self::BroadcastIn,
        ctx: &mut BroadcastContext<'_, Self::Key>,
        out: &mut Collector<'_, Self::Out>,
    ) -> Result<()>;

    /// Called once per subtask after the last element of both (bounded) inputs.
    fn close(
        &mut self,
        _state: &mut Self::State,
        _out: &mut Collector<'_, Self::Out>,
    ) -> Result<()> {
        Ok(())
    }
}

/// What [`KeyedBroadcastProcessFunction::process_element`] receives besides the element: the
/// current key and read-only broadcast state (Flink's `ReadOnlyContext`).
pub struct ReadOnlyBroadcastContext<'a, K> {
    pub(crate) key: Ref<'a, K>,
    pub(crate) key_group: KeyGroup,
    pub(crate) subtask: usize,
    pub(crate) operator_state: &'a OperatorStateStore,
}

impl<K> ReadOnlyBroadcastContext<'_, K> {
    /// The key of the element being processed.
    pub fn current_key(&self) -> &K {
        &self.key
    }

    /// The key group of the current key.
    pub fn current_key_group(&self) -> KeyGroup {
        self.key_group
    }

    /// This subtask's index.
    pub fn subtask_index(&self) -> usize {
        self.subtask
    }

    /// The broadcast state described by `desc`, read-only. It must be one of the descriptors
    /// given to `DataStream::broadcast`, with the same types; otherwise this is an
    /// [`EddyError::State`](eddy_core::EddyError::State) naming it.
    pub fn broadcast_state<UK: Key, UV: StateValue>(
        &self,
        desc: &MapStateDescriptor<UK, UV>,
    ) -> Result<ReadOnlyBroadcastState<UK, UV>> {
        Ok(self
            .operator_state
            .registered_broadcast_state(desc)?
            .read_only())
    }
}

/// What [`KeyedBroadcastProcessFunction::process_broadcast_element`] receives besides the
/// element: read-write broadcast state and access to the keyed state of all keys (Flink's
/// `KeyedBroadcastProcessFunction.Context`).
pub struct BroadcastContext<'a, K> {
    pub(crate) backend: &'a KeyedStateBackend<K>,
    pub(crate) subtask: usize,
    pub(crate) operator_state: &'a OperatorStateStore,
}

impl<K: Key> BroadcastContext<'_, K> {
    /// This subtask's index.
    pub fn subtask_index(&self) -> usize {
        self.subtask
    }

    /// The broadcast state described by `desc`, read-write. It must be one of the
    /// descriptors given to `DataStream::broadcast`, with the same types; otherwise this is an
    /// [`EddyError::State`](eddy_core::EddyError::State) naming it.
    pub fn broadcast_state<UK: Key, UV: StateValue>(
        &self,
        desc: &MapStateDescriptor<UK, UV>,
    ) -> Result<BroadcastState<UK, UV>> {
        self.operator_state.registered_broadcast_state(desc)
    }

    /// Calls `f` once for every key of this subtask that has a value in the keyed state called
    /// `state_name`, with that key set as the current key, so that `f` can read and write that
    /// key's state through the handles created in `open` (Flink's `applyToKeyedState`). The
    /// first error `f` returns stops the iteration and is returned.
    pub fn apply_to_keyed_state(
        &mut self,
        state_name: &str,
        mut f: impl FnMut(&K) -> Result<()>,
    ) -> Result<()> {
        self.backend.apply_to_all_keys(state_name, &mut f)
    }

    /// The keys of this subtask that have a value in the keyed state called `state_name`.
    pub fn keys(&self, state_name: &str) -> Result<Vec<K>> {
        self.backend.keys(state_name)
    }
}
