//! The keyed process function and the contexts the runtime hands it.

use std::cell::Ref;

use eddy_core::{Data, Key, KeyGroup, Result, StateValue};
use eddy_state::{
    AggregateFunction, AggregatingState, AggregatingStateDescriptor, KeyedStateBackend, ListState,
    ListStateDescriptor, MapState, MapStateDescriptor, ReducingState, ReducingStateDescriptor,
    ValueState, ValueStateDescriptor,
};

/// A function applied to every event of a keyed stream, with managed keyed state.
///
/// The lifecycle is Flink's (see the keyed-state guide):
///
/// 1. The job program builds **one value** of the function. It is cloned into every parallel
///    subtask (Rust's stand-in for Flink's serialize-and-ship), so it must be `Clone + Send`.
/// 2. [`open`](Self::open) is called **once per subtask**. It creates the state handles from
///    descriptors and returns them as [`State`](Self::State). Handles belong to their subtask
///    (they are not `Send`), which is why they live in `State` and not in `self`.
/// 3. [`process_element`](Self::process_element) is called for **every event of every key**
///    routed to the subtask. The runtime sets the current key first; every state access
///    through the handles reads and writes *that key's* state. One instance therefore serves
///    many keys, and a `ValueState` holds one value per key, not one per instance.
///
/// ```
/// use eddy_runtime::{Collector, Context, KeyedProcessFunction, OpenContext};
/// use eddy_state::{ValueState, ValueStateDescriptor};
///
/// /// Counts events per key and emits `(key, count)`.
/// #[derive(Clone)]
/// struct CountPerKey;
///
/// impl KeyedProcessFunction for CountPerKey {
///     type Key = String;
///     type In = String;
///     type Out = (String, u64);
///     type State = ValueState<u64>;
///
///     fn open(&mut self, ctx: &mut OpenContext<'_, String>) -> eddy_core::Result<ValueState<u64>> {
///         ctx.value_state(&ValueStateDescriptor::new("count"))
///     }
///
///     fn process_element(
///         &mut self,
///         count: &mut ValueState<u64>,
///         _word: String,
///         ctx: &mut Context<'_, String>,
///         out: &mut Collector<'_, (String, u64)>,
///     ) -> eddy_core::Result<()> {
///         let n = count.value()?.unwrap_or(0) + 1;
///         count.update(n)?;
///         out.collect((ctx.current_key().clone(), n));
///         Ok(())
///     }
/// }
/// ```
pub trait KeyedProcessFunction: Clone + Send + Sync + 'static {
    /// The key type (what the `key_by` selector returns).
    type Key: Key;
    /// The input event type.
    type In: Data;
    /// The output record type.
    type Out: Data;
    /// The subtask's state handles, created in [`open`](Self::open).
    type State: 'static;

    /// Called once per subtask before any event: registers state from descriptors.
    fn open(&mut self, ctx: &mut OpenContext<'_, Self::Key>) -> Result<Self::State>;

    /// Called for every event; the current key is already set.
    fn process_element(
        &mut self,
        state: &mut Self::State,
        event: Self::In,
        ctx: &mut Context<'_, Self::Key>,
        out: &mut Collector<'_, Self::Out>,
    ) -> Result<()>;

    /// Called once per subtask after the last event of a bounded input.
    fn close(
        &mut self,
        _state: &mut Self::State,
        _out: &mut Collector<'_, Self::Out>,
    ) -> Result<()> {
        Ok(())
    }
}

/// What `open()` receives: the subtask's identity and its keyed state backend.
pub struct OpenContext<'a, K> {
    pub(crate) backend: &'a mut KeyedStateBackend<K>,
    pub(crate) operator: &'a str,
    pub(crate) subtask: usize,
    pub(crate) parallelism: usize,
}

impl<K: Key> OpenContext<'_, K> {
    /// Creates (or re-opens, after a restore) the [`ValueState`] described by `desc`.
    pub fn value_state<T: StateValue>(
        &mut self,
        desc: &ValueStateDescriptor<T>,
    ) -> Result<ValueState<T>> {
        self.backend.value_state(desc)
    }

    /// Creates (or re-opens) the [`ListState`] described by `desc`.
    pub fn list_state<T: StateValue>(
        &mut self,
        desc: &ListStateDescriptor<T>,
    ) -> Result<ListState<T>> {
        self.backend.list_state(desc)
    }

    /// Creates (or re-opens) the [`MapState`] described by `desc`.
    pub fn map_state<UK: Key, UV: StateValue>(
        &mut self,
        desc: &MapStateDescriptor<UK, UV>,
    ) -> Result<MapState<UK, UV>> {
        self.backend.map_state(desc)
    }

    /// Creates (or re-opens) the [`ReducingState`] described by `desc`.
    pub fn reducing_state<T: StateValue>(
        &mut self,
        desc: &ReducingStateDescriptor<T>,
    ) -> Result<ReducingState<T>> {
        self.backend.reducing_state(desc)
    }

    /// Creates (or re-opens) the [`AggregatingState`] described by `desc`.
    pub fn aggregating_state<In: 'static, F: AggregateFunction<In>>(
        &mut self,
        desc: &AggregatingStateDescriptor<In, F>,
    ) -> Result<AggregatingState<In, F::Out>> {
        self.backend.aggregating_state(desc)
    }

    /// The operator's name.
    pub fn operator_name(&self) -> &str {
        self.operator
    }

    /// This subtask's index, `0..parallelism`.
    pub fn subtask_index(&self) -> usize {
        self.subtask
    }

    /// The operator's parallelism.
    pub fn parallelism(&self) -> usize {
        self.parallelism
    }
}

/// What `process_element()` receives besides the event: the current key and the subtask.
pub struct Context<'a, K> {
    pub(crate) key: Ref<'a, K>,
    pub(crate) key_group: KeyGroup,
    pub(crate) subtask: usize,
}

impl<K> Context<'_, K> {
    /// The key of the event being processed (the `key_by` selector's result).
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
}

/// Where a function emits its output records.
pub struct Collector<'a, O> {
    pub(crate) buffer: &'a mut Vec<O>,
}

impl<'a, O> Collector<'a, O> {
    /// A collector appending to `buffer` (for tests of functions outside a job).
    pub fn new(buffer: &'a mut Vec<O>) -> Self {
        Collector { buffer }
    }

    /// Emits one record downstream.
    #[inline]
    pub fn collect(&mut self, record: O) {
        self.buffer.push(record);
    }
}
