//! The keyed process function and the contexts the runtime hands it.

use std::cell::{Cell, Ref};
use std::rc::Rc;

use eddy_core::{Data, Key, KeyGroup, Result, StateValue};
use eddy_state::{
    AggregateFunction, AggregatingState, AggregatingStateDescriptor, KeyedStateBackend, ListState,
    ListStateDescriptor, MapState, MapStateDescriptor, ReducingState, ReducingStateDescriptor,
    TimeDomain, TimerService as TimerQueues, ValueState, ValueStateDescriptor,
};

use crate::time::{ProcessingClock, Stamped, NO_TIMESTAMP};

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

    /// Called when a timer of the current key fires: an event-time timer once the watermark
    /// has reached its time, a processing-time timer once the clock has. The timer's key is
    /// the current key (state access is scoped to it), [`Context::time_domain`] says which
    /// kind fired, and what is collected gets the timer's time as its timestamp (event time)
    /// or none (processing time), as in Flink.
    fn on_timer(
        &mut self,
        _state: &mut Self::State,
        _timestamp: u64,
        _ctx: &mut OnTimerContext<'_, Self::Key>,
        _out: &mut Collector<'_, Self::Out>,
    ) -> Result<()> {
        Ok(())
    }

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

/// What `process_element()` and `on_timer()` receive besides the event: the current key,
/// the event's (or timer's) timestamp, the timer service and the subtask.
pub struct Context<'a, K> {
    pub(crate) key: Ref<'a, K>,
    pub(crate) key_group: KeyGroup,
    pub(crate) subtask: usize,
    pub(crate) timestamp: u64,
    pub(crate) time_domain: Option<TimeDomain>,
    pub(crate) timers: &'a TimerService<K>,
}

/// What `on_timer()` receives: the [`Context`] of the timer's key, with
/// [`time_domain`](Context::time_domain) set (Flink's `OnTimerContext`).
pub type OnTimerContext<'a, K> = Context<'a, K>;

impl<K: Key> Context<'_, K> {
    /// The key of the event being processed (the `key_by` selector's result), or of the timer
    /// that fired.
    pub fn current_key(&self) -> &K {
        &self.key
    }

    /// The event's timestamp (from `assign_timestamps_and_watermarks`), or the firing timer's
    /// time; `None` for an event without a timestamp and for processing-time timers.
    pub fn timestamp(&self) -> Option<u64> {
        (self.timestamp != NO_TIMESTAMP).then_some(self.timestamp)
    }

    /// In `on_timer`: which kind of timer fired. `None` in `process_element`.
    pub fn time_domain(&self) -> Option<TimeDomain> {
        self.time_domain
    }

    /// Registers and deletes timers of the current key; reads the watermark and the clock.
    pub fn timer_service(&self) -> &TimerService<K> {
        self.timers
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
///
/// Every record gets the timestamp of the event being processed (or of the event-time timer
/// that fired), as Flink's `TimestampedCollector` does.
pub struct Collector<'a, O> {
    pub(crate) buffer: &'a mut Vec<Stamped<O>>,
    pub(crate) timestamp: u64,
}

impl<'a, O> Collector<'a, O> {
    /// A collector appending records without timestamps to `buffer` (for tests of functions
    /// outside a job).
    pub fn new(buffer: &'a mut Vec<Stamped<O>>) -> Self {
        Collector {
            buffer,
            timestamp: NO_TIMESTAMP,
        }
    }

    /// Emits one record downstream.
    #[inline]
    pub fn collect(&mut self, record: O) {
        self.buffer.push(Stamped {
            value: record,
            timestamp: self.timestamp,
        });
    }
}

/// The timers of one keyed subtask, and its view of time (Flink's `TimerService`).
///
/// Timers are kept per key group in the subtask's state backend, deduplicated per
/// (key, time): registering the same time twice for one key fires once.
pub struct TimerService<K> {
    pub(crate) queues: Rc<TimerQueues<K, ()>>,
    pub(crate) watermark: Cell<u64>,
    pub(crate) clock: ProcessingClock,
}

impl<K: Key> TimerService<K> {
    /// Calls `on_timer` for the current key once the watermark reaches `time`.
    pub fn register_event_time_timer(&self, time: u64) -> Result<()> {
        self.queues.register_event_time_timer((), time)
    }

    /// Calls `on_timer` for the current key once the processing-time clock reaches `time`.
    pub fn register_processing_time_timer(&self, time: u64) -> Result<()> {
        self.queues.register_processing_time_timer((), time)
    }

    /// Deletes the current key's event-time timer at `time`, if there is one.
    pub fn delete_event_time_timer(&self, time: u64) -> Result<()> {
        self.queues.delete_event_time_timer((), time)
    }

    /// Deletes the current key's processing-time timer at `time`, if there is one.
    pub fn delete_processing_time_timer(&self, time: u64) -> Result<()> {
        self.queues.delete_processing_time_timer((), time)
    }

    /// The operator's current event-time watermark ([`MIN_WATERMARK`](crate::MIN_WATERMARK)
    /// before the first).
    pub fn current_watermark(&self) -> u64 {
        self.watermark.get()
    }

    /// The current processing time, in milliseconds, from the job's clock.
    pub fn current_processing_time(&self) -> u64 {
        self.clock.now_ms()
    }
}
