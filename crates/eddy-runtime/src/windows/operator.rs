//! The window operator (Flink's `WindowOperator` with its default triggers): window contents
//! in keyed state under the window's namespace, a timer per window, allowed lateness, late
//! elements to a side output, and session windows merged with their state.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use eddy_core::key_group::assign_to_key_group;
use eddy_core::{Data, EddyError, Key, KeyGroup, Result, StateValue};
use eddy_state::{
    Added, AggregateFunction, AggregatingState, AggregatingStateDescriptor, KeyContext,
    KeyedStateBackend, ListState, ListStateDescriptor, Namespaced, PrefetchDepth, ReducingState,
    ReducingStateDescriptor, TimeDomain, Timer, TimerService, ValueState, ValueStateDescriptor,
};
use serde::{Deserialize, Serialize};
use timely::dataflow::Scope;

use crate::function::Collector;
use crate::graph::{Built, StreamNode, WorkerContext};
use crate::metrics::OperatorMetrics;
use crate::operators::keyed_shell::{build_keyed_node, Firing, KeyedTask, FLUSH_AT};
use crate::operators::{
    check_parallelism, finish_keyed_restore, keyed_backend, keyed_state_part, restore_keyed_state,
    PendingParts,
};
use crate::time::{ProcessingClock, Stamped, MIN_WATERMARK};
use crate::windows::{MergingWindowSet, TimeWindow, WindowAssigner, WindowMerge};
use crate::Epoch;

/// The name of the window contents state in the backend.
const CONTENTS: &str = "_window_contents";
/// The name of the session windows' bookkeeping state.
const MERGING_WINDOWS: &str = "_merging_windows";
/// How many elements (or due timers) ahead the state slot of an element is prefetched.
const SLOT_DISTANCE: usize = 8;
/// How many elements ahead what the slot points to (the key's windows) is prefetched: by
/// then the slot prefetched `SLOT_DISTANCE` ahead has landed.
const CONTENTS_DISTANCE: usize = 4;
/// How many due timers the operator takes from the timer service at a time.
const FIRE_BATCH: usize = 256;
/// The name of the window timers' service.
const WINDOW_TIMERS: &str = "_window_timers";

/// What a window emits when it fires, or a late element (see `side_output_late_data`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WindowOutput<O, T> {
    /// A window's result.
    Result(O),
    /// An element that arrived after its windows were purged (their end plus the allowed
    /// lateness is at or below the watermark): Flink's late-data side output.
    Late(T),
}

/// Computes a window's output from all its elements (Flink's `ProcessWindowFunction`).
pub trait ProcessWindowFunction<K, In, Out>: Clone + Send + Sync + 'static {
    /// Called once per firing with the window's key, the window and its elements in arrival
    /// order.
    fn process(
        &mut self,
        key: &K,
        window: &TimeWindow,
        elements: Vec<In>,
        out: &mut Collector<'_, Out>,
    ) -> Result<()>;
}

impl<K, In, Out, F> ProcessWindowFunction<K, In, Out> for F
where
    F: FnMut(&K, &TimeWindow, Vec<In>, &mut Collector<'_, Out>) -> Result<()>
        + Clone
        + Send
        + Sync
        + 'static,
{
    fn process(
        &mut self,
        key: &K,
        window: &TimeWindow,
        elements: Vec<In>,
        out: &mut Collector<'_, Out>,
    ) -> Result<()> {
        self(key, window, elements, out)
    }
}

/// The contents of the windows of one subtask, under the current key and window.
pub trait WindowContents<In>: 'static {
    /// What a window's contents give when it fires.
    type Result;
    /// Makes `window` the namespace of the following calls.
    fn set_window(&self, window: TimeWindow);
    /// Adds an element to the current window; tells whether it is the window's first.
    fn add(&self, value: In) -> Result<Added>;
    /// The current window's result, if it has any element.
    fn get(&self) -> Result<Option<Self::Result>>;
    /// Drops the current window's contents.
    fn clear(&self) -> Result<()>;
    /// Merges the contents of `sources` into `target` (session windows).
    fn merge(&self, target: &TimeWindow, sources: &[TimeWindow]) -> Result<()>;
}

/// Creates the [`WindowContents`] of each subtask from its backend.
pub trait WindowContentsSpec<K: Key, In>: Clone + Send + Sync + 'static {
    /// The subtask's contents.
    type Contents: WindowContents<In>;
    /// Registers the contents state in `backend`.
    fn open(&self, backend: &mut KeyedStateBackend<K>) -> Result<Self::Contents>;
}

macro_rules! namespaced_contents {
    ($result:ty, |$s:ident| $get:expr) => {
        fn set_window(&self, window: TimeWindow) {
            self.set_current_namespace(window);
        }
        fn get(&self) -> Result<Option<$result>> {
            let $s = self;
            $get
        }
        fn clear(&self) -> Result<()> {
            self.state().clear()
        }
        fn merge(&self, target: &TimeWindow, sources: &[TimeWindow]) -> Result<()> {
            self.merge_namespaces(target, sources)
        }
    };
}

impl<T: StateValue> WindowContents<T> for Namespaced<ReducingState<T>, TimeWindow> {
    type Result = T;
    fn add(&self, value: T) -> Result<Added> {
        self.state().add_telling_first(value)
    }
    namespaced_contents!(T, |s| s.state().get());
}

impl<In: 'static, O: 'static> WindowContents<In>
    for Namespaced<AggregatingState<In, O>, TimeWindow>
{
    type Result = O;
    fn add(&self, value: In) -> Result<Added> {
        self.state().add_telling_first(value)
    }
    namespaced_contents!(O, |s| s.state().get());
}

impl<T: StateValue> WindowContents<T> for Namespaced<ListState<T>, TimeWindow> {
    type Result = Vec<T>;
    fn add(&self, value: T) -> Result<Added> {
        self.state().add_telling_first(value)
    }
    namespaced_contents!(Vec<T>, |s| {
        let elements: Vec<T> = s.state().get()?.collect();
        Ok((!elements.is_empty()).then_some(elements))
    });
}

/// Window contents folded by a reduce function as elements arrive.
pub struct ReduceContents<T> {
    reduce: eddy_state::ReduceFn<T>,
}

impl<T> Clone for ReduceContents<T> {
    fn clone(&self) -> Self {
        ReduceContents {
            reduce: Arc::clone(&self.reduce),
        }
    }
}

impl<T> ReduceContents<T> {
    /// Contents reduced by `reduce`.
    pub fn new(reduce: impl Fn(&T, &T) -> T + Send + Sync + 'static) -> Self {
        ReduceContents {
            reduce: Arc::new(reduce),
        }
    }
}

impl<K: Key, T: StateValue> WindowContentsSpec<K, T> for ReduceContents<T> {
    type Contents = Namespaced<ReducingState<T>, TimeWindow>;
    fn open(&self, backend: &mut KeyedStateBackend<K>) -> Result<Self::Contents> {
        let reduce = Arc::clone(&self.reduce);
        backend.namespaced_reducing_state(&ReducingStateDescriptor::new(CONTENTS, move |a, b| {
            reduce(a, b)
        }))
    }
}

/// Window contents kept as an accumulator of an [`AggregateFunction`].
#[derive(Clone)]
pub struct AggregateContents<F>(pub F);

impl<K: Key, In: 'static, F: AggregateFunction<In> + Clone> WindowContentsSpec<K, In>
    for AggregateContents<F>
{
    type Contents = Namespaced<AggregatingState<In, F::Out>, TimeWindow>;
    fn open(&self, backend: &mut KeyedStateBackend<K>) -> Result<Self::Contents> {
        backend.namespaced_aggregating_state(&AggregatingStateDescriptor::new(
            CONTENTS,
            self.0.clone(),
        ))
    }
}

/// Window contents kept as the list of their elements (for a [`ProcessWindowFunction`]).
pub struct ListContents<T>(std::marker::PhantomData<fn(T)>);

impl<T> Clone for ListContents<T> {
    fn clone(&self) -> Self {
        ListContents(std::marker::PhantomData)
    }
}

impl<T> Default for ListContents<T> {
    fn default() -> Self {
        ListContents(std::marker::PhantomData)
    }
}

impl<K: Key, T: StateValue> WindowContentsSpec<K, T> for ListContents<T> {
    type Contents = Namespaced<ListState<T>, TimeWindow>;
    fn open(&self, backend: &mut KeyedStateBackend<K>) -> Result<Self::Contents> {
        backend.namespaced_list_state(&ListStateDescriptor::new(CONTENTS))
    }
}

/// Turns a fired window's result into output records.
pub type Emit<K, R, Out> =
    Arc<dyn Fn(&K, &TimeWindow, R, &mut Collector<'_, Out>) -> Result<()> + Send + Sync>;

/// Turns a late element into an output record (`None`: late elements are dropped).
pub type LateOutput<In, Out> = Option<Arc<dyn Fn(In) -> Out + Send + Sync>>;

/// What a window operator computes, apart from its input.
pub struct WindowSpec<K, In, C, Out, KS>
where
    K: Key,
    C: WindowContentsSpec<K, In>,
{
    /// The key selector.
    pub key_selector: KS,
    /// Which windows an element belongs to.
    pub assigner: WindowAssigner,
    /// How long after a window's end (in event time) late elements still update it.
    pub allowed_lateness: u64,
    /// How the window contents are kept.
    pub contents: C,
    /// How a fired window's result becomes output.
    pub emit: Emit<K, <C::Contents as WindowContents<In>>::Result, Out>,
    /// Where late elements go.
    pub late: LateOutput<In, Out>,
}

/// `key_by(..).window(..).reduce/aggregate/process(..)` in the job graph.
pub struct WindowNode<K, In, C, Out, KS>
where
    K: Key,
    C: WindowContentsSpec<K, In>,
{
    name: String,
    input: Box<dyn StreamNode<In>>,
    spec: WindowSpec<K, In, C, Out, KS>,
    parallelism: Option<usize>,
    metrics: Arc<OperatorMetrics>,
}

impl<K, In, C, Out, KS> WindowNode<K, In, C, Out, KS>
where
    K: Key,
    In: Data,
    Out: Data,
    C: WindowContentsSpec<K, In>,
    KS: Fn(&In) -> K + Clone + Send + Sync + 'static,
{
    /// Windows `input` by `spec`, as an operator called `name`.
    pub fn new(
        name: impl Into<String>,
        input: Box<dyn StreamNode<In>>,
        spec: WindowSpec<K, In, C, Out, KS>,
        metrics: Arc<OperatorMetrics>,
    ) -> Self {
        WindowNode {
            name: name.into(),
            input,
            spec,
            parallelism: None,
            metrics,
        }
    }
}

impl<K, In, C, Out, KS> StreamNode<Out> for WindowNode<K, In, C, Out, KS>
where
    K: Key,
    In: Data,
    Out: Data,
    C: WindowContentsSpec<K, In>,
    KS: Fn(&In) -> K + Clone + Send + Sync + 'static,
{
    fn build<'s>(&self, scope: Scope<'s, Epoch>, worker: &WorkerContext) -> Built<'s, Out> {
        let parallelism = self.parallelism(worker.peers);
        build_keyed_node(
            scope,
            worker,
            &self.name,
            &*self.input,
            &self.spec.key_selector,
            parallelism,
            &self.metrics,
            || WindowTask::open(self, worker, parallelism),
        )
    }

    fn parallelism(&self, job: usize) -> usize {
        self.parallelism.unwrap_or(job)
    }

    fn validate(&self, job: usize) -> Result<()> {
        check_parallelism(&self.name, self.parallelism, job)?;
        self.input.validate(job)
    }

    fn set_parallelism(&mut self, parallelism: usize) -> Result<()> {
        self.parallelism = Some(parallelism);
        Ok(())
    }

    fn operator_name(&self) -> Option<&str> {
        Some(&self.name)
    }
}

/// A record with its key and the key's group, computed once per record.
struct KeyedRecord<K, In> {
    key: K,
    key_group: KeyGroup,
    record: Stamped<In>,
}

/// One subtask of a window operator.
struct WindowTask<K: Key, In, C: WindowContents<In>, Out, KS> {
    contents: C,
    timers: Rc<TimerService<K, TimeWindow>>,
    /// Session windows only: the live windows of the current key and their state windows.
    merging: Option<ValueState<Vec<(TimeWindow, TimeWindow)>>>,
    keys: Rc<KeyContext<K>>,
    /// Owns the state behind the handles above; also prefetches.
    backend: KeyedStateBackend<K>,
    key_selector: KS,
    assigner: WindowAssigner,
    allowed_lateness: u64,
    emit: Emit<K, C::Result, Out>,
    late: LateOutput<In, Out>,
    watermark: Cell<u64>,
    clock: ProcessingClock,
    output: Vec<Stamped<Out>>,
    /// The batch of due timers being fired (kept for its allocation).
    due: Vec<(usize, Timer<K, TimeWindow>)>,
    /// The batch of records being processed, each with its key (kept for its allocation).
    keyed: Vec<KeyedRecord<K, In>>,
    max_parallelism: usize,
    metrics: Arc<OperatorMetrics>,
}

impl<K, In, C, Out, KS> WindowTask<K, In, C, Out, KS>
where
    K: Key,
    In: Data,
    Out: Data,
    C: WindowContents<In>,
    KS: Fn(&In) -> K + Clone + Send + Sync + 'static,
{
    fn open<CS: WindowContentsSpec<K, In, Contents = C>>(
        node: &WindowNode<K, In, CS, Out, KS>,
        worker: &WorkerContext,
        parallelism: usize,
    ) -> Result<Self> {
        let mut backend = keyed_backend::<K>(worker, parallelism)?;
        restore_keyed_state(worker, &node.name, parallelism, &mut backend)?;
        let clock = worker.config.clock.clone();
        backend.set_ttl_clock(Arc::clone(&clock.0));
        let contents = node.spec.contents.open(&mut backend)?;
        let timers = backend.timer_service::<TimeWindow>(WINDOW_TIMERS)?;
        let merging = if node.spec.assigner.is_merging() {
            Some(backend.value_state(&ValueStateDescriptor::new(MERGING_WINDOWS))?)
        } else {
            None
        };
        finish_keyed_restore(worker, &node.name, &mut backend)?;
        backend.context().bind_to_operator(&node.name);
        Ok(WindowTask {
            contents,
            timers,
            merging,
            keys: Rc::clone(backend.context()),
            backend,
            key_selector: node.spec.key_selector.clone(),
            assigner: node.spec.assigner,
            allowed_lateness: node.spec.allowed_lateness,
            emit: Arc::clone(&node.spec.emit),
            late: node.spec.late.clone(),
            watermark: Cell::new(MIN_WATERMARK),
            clock,
            output: Vec::new(),
            due: Vec::new(),
            keyed: Vec::new(),
            max_parallelism: worker.max_parallelism,
            metrics: Arc::clone(&node.metrics),
        })
    }

    /// Starts loading the state slot of `record`'s key and, for event-time tumbling windows
    /// (one window, never merged), the timer entry its window's registration will probe.
    fn prefetch(&self, keyed: &KeyedRecord<K, In>) {
        let KeyedRecord {
            key,
            key_group,
            record,
        } = keyed;
        self.backend
            .prefetch_in_group(key, *key_group, PrefetchDepth::Slot);
        if !self.event_time() || self.assigner.is_merging() {
            return;
        }
        let window = record
            .timestamp()
            .and_then(|timestamp| self.assigner.single_window(timestamp));
        if let Some(window) = window {
            self.timers
                .prefetch_event_time_timer(key, &window, window.max_timestamp());
        }
    }

    /// Starts loading the key's windows, whose slot [`prefetch`](Self::prefetch) loaded.
    fn prefetch_contents(&self, keyed: &KeyedRecord<K, In>) {
        self.backend
            .prefetch_in_group(&keyed.key, keyed.key_group, PrefetchDepth::Contents);
    }

    /// Starts loading the state slot of the key a due timer will fire for.
    fn prefetch_timer_slot(&self, (offset, timer): &(usize, Timer<K, TimeWindow>)) {
        self.backend
            .prefetch_at_offset(*offset, &timer.key, PrefetchDepth::Slot);
    }

    /// Starts loading the windows of the key a due timer will fire for.
    fn prefetch_timer_contents(&self, (offset, timer): &(usize, Timer<K, TimeWindow>)) {
        self.backend
            .prefetch_at_offset(*offset, &timer.key, PrefetchDepth::Contents);
    }

    fn event_time(&self) -> bool {
        self.assigner.is_event_time()
    }

    /// When a window's state is dropped: its end plus the allowed lateness (event time), or
    /// its end (processing time), as Flink's `cleanupTime`.
    fn cleanup_time(&self, window: &TimeWindow) -> u64 {
        if self.event_time() {
            window.max_timestamp().saturating_add(self.allowed_lateness)
        } else {
            window.max_timestamp()
        }
    }

    fn is_window_late(&self, window: &TimeWindow) -> bool {
        self.event_time() && self.cleanup_time(window) <= self.watermark.get()
    }

    /// Registers the current key's timer for `window` at `time` (Flink's trigger registers
    /// it for every element and the timer service drops the duplicates), given what adding
    /// the element to the window's contents found (`added`).
    ///
    /// For a window that does not merge, a timer at its end or cleanup time is pending
    /// exactly while the window has contents: both are registered with its first element,
    /// and the contents go only when the cleanup timer fires, the last of them (watermarks
    /// and the clock never go back, so neither timer fires early). So the first element's
    /// timers are new, registered without the duplicate check, and a later element's are
    /// already there. A merging window moves contents and deletes timers, so its caller
    /// passes [`Added::Unknown`]: a checked registration, as Flink's.
    fn register_timer(&self, window: TimeWindow, time: u64, added: Added) -> Result<()> {
        let domain = if self.event_time() {
            TimeDomain::EventTime
        } else {
            TimeDomain::ProcessingTime
        };
        match added {
            Added::First => self.timers.register_new_timer(domain, window, time),
            Added::More => Ok(()),
            Added::Unknown if self.event_time() => {
                self.timers.register_event_time_timer(window, time)
            }
            Added::Unknown => self.timers.register_processing_time_timer(window, time),
        }
    }

    /// Flink's `processElement`: assign windows, merge sessions, add, trigger.
    fn process_element(&mut self, keyed: KeyedRecord<K, In>) -> Result<()> {
        let KeyedRecord {
            key,
            key_group,
            record,
        } = keyed;
        self.keys.set_current_key_in_group(key, key_group)?;
        let timestamp = if self.event_time() {
            record.timestamp().ok_or_else(|| {
                EddyError::Config(
                    "an event-time window got a record without a timestamp: call `assign_timestamps_and_watermarks` before `window`".into(),
                )
            })?
        } else {
            self.clock.now_ms()
        };
        let mut skipped = true;
        // One window (tumbling, session) is assigned without allocating.
        let single = self.assigner.single_window(timestamp);
        let windows = match single {
            Some(_) => Vec::new(),
            None => self.assigner.assign(timestamp),
        };
        let count = if single.is_some() { 1 } else { windows.len() };
        let last = count.saturating_sub(1);
        let windows = single.into_iter().chain(windows);
        // Moved into the last window, cloned into the others (sliding windows).
        let mut value = Some(record.value);
        let mut set = self.load_merging_set()?;
        // Merging windows move contents between windows and delete timers: their first
        // element says nothing about the timers of the window it lands in.
        let merging = set.is_some();
        for (i, window) in windows.into_iter().enumerate() {
            let (window, state_window) = match set.as_mut() {
                Some(set) => {
                    let actual = set.add_window(window, |merge| self.on_merge(merge))?;
                    if self.is_window_late(&actual) {
                        set.retire_window(&actual);
                        continue;
                    }
                    let state_window = set.state_window(&actual).ok_or_else(|| {
                        EddyError::Internal("merged window has no state window".into())
                    })?;
                    (actual, state_window)
                }
                None => {
                    if self.is_window_late(&window) {
                        continue;
                    }
                    (window, window)
                }
            };
            skipped = false;
            self.contents.set_window(state_window);
            let element = if i == last {
                value.take()
            } else {
                value.clone()
            };
            let added = match element {
                Some(element) => self.contents.add(element)?,
                None => Added::Unknown,
            };
            let added = if merging { Added::Unknown } else { added };
            if self.event_time() && window.max_timestamp() <= self.watermark.get() {
                // A late element within the allowed lateness: fire again at once.
                self.fire(&window)?;
            } else {
                self.register_timer(window, window.max_timestamp(), added)?;
            }
            let cleanup = self.cleanup_time(&window);
            if cleanup != window.max_timestamp() && cleanup != u64::MAX {
                self.register_timer(window, cleanup, added)?;
            }
        }
        if let Some(set) = set {
            self.store_merging_set(set)?;
        }
        if skipped && self.event_time() {
            let late = timestamp.saturating_add(self.allowed_lateness) <= self.watermark.get();
            if let (true, Some(late_output), Some(value)) = (late, &self.late, value) {
                self.output.push(Stamped {
                    value: late_output(value),
                    timestamp,
                });
            }
        }
        Ok(())
    }

    /// Carries out a session merge: the merged window gets its timers, and the members'
    /// contents merge into the surviving state window.
    ///
    /// Unlike Flink, the members' timers are not deleted: when one fires, its window is no
    /// longer in the key's merging set and [`on_timer`](Self::on_timer) ignores it. A member
    /// window cannot come back (a new window intersecting it merges into the result, and
    /// once the result is purged the member is late too), so a stale timer never fires a
    /// window. Deleting would look up each member's timer at a random place in the timer
    /// queue on every merge, while a stale timer costs a lookup of the key's merging set
    /// that firing prefetches with the timers ahead.
    fn on_merge(&self, merge: &WindowMerge) -> Result<()> {
        if !self.event_time() || merge.result.max_timestamp() > self.watermark.get() {
            self.register_timer(merge.result, merge.result.max_timestamp(), Added::Unknown)?;
        }
        let cleanup = self.cleanup_time(&merge.result);
        if cleanup != merge.result.max_timestamp() && cleanup != u64::MAX {
            self.register_timer(merge.result, cleanup, Added::Unknown)?;
        }
        self.contents
            .merge(&merge.state_window, &merge.merged_state_windows)
    }

    fn load_merging_set(&self) -> Result<Option<MergingWindowSet>> {
        match &self.merging {
            Some(state) => Ok(Some(MergingWindowSet::from_pairs(
                state.value()?.unwrap_or_default(),
            ))),
            None => Ok(None),
        }
    }

    fn store_merging_set(&self, set: MergingWindowSet) -> Result<()> {
        match &self.merging {
            Some(state) if set.is_empty() => state.clear(),
            Some(state) => state.update(set.into_pairs()),
            None => Ok(()),
        }
    }

    /// Emits the current contents of `window` (already the contents' namespace).
    fn fire(&mut self, window: &TimeWindow) -> Result<()> {
        let Some(result) = self.contents.get()? else {
            return Ok(());
        };
        let key = self
            .keys
            .current_key()
            .ok_or_else(|| EddyError::Internal("current key vanished".into()))?;
        let mut out = Collector {
            buffer: &mut self.output,
            timestamp: window.max_timestamp(),
        };
        (self.emit)(&key, window, result, &mut out)
    }

    /// Flink's `onEventTime` / `onProcessingTime` with the default triggers: fire at the
    /// window's end, purge at its cleanup time.
    ///
    /// `offset` is the timer's key group offset in the subtask's range, if the timer service
    /// gave it (it spares hashing the key again).
    fn on_timer(&mut self, timer: Timer<K, TimeWindow>, offset: Option<usize>) -> Result<()> {
        let window = timer.namespace;
        let range = self.keys.key_group_range();
        let kg = match offset.and_then(|offset| range.key_group_at(offset)) {
            Some(kg) => kg,
            None => assign_to_key_group(&timer.key, self.max_parallelism),
        };
        self.keys.set_current_key_in_group(timer.key, kg)?;
        let set = self.load_merging_set()?;
        let state_window = match set.as_ref() {
            Some(set) => match set.state_window(&window) {
                Some(state_window) => state_window,
                // The window merged into another since the timer was set.
                None => return Ok(()),
            },
            None => window,
        };
        self.contents.set_window(state_window);
        if timer.timestamp == window.max_timestamp() {
            self.fire(&window)?;
        }
        if timer.timestamp == self.cleanup_time(&window) {
            self.contents.clear()?;
            if let Some(mut set) = set {
                set.retire_window(&window);
                self.store_merging_set(set)?;
            }
        }
        Ok(())
    }
}

impl<K, In, C, Out, KS> KeyedTask for WindowTask<K, In, C, Out, KS>
where
    K: Key,
    In: Data,
    Out: Data,
    C: WindowContents<In>,
    KS: Fn(&In) -> K + Clone + Send + Sync + 'static,
{
    type In = In;
    type Out = Out;

    fn process_batch(&mut self, batch: &mut Vec<Stamped<In>>) -> Result<()> {
        let _running = self.keys.enter();
        self.metrics.add_in(batch.len());
        // Each record's key is selected and hashed once, here, for the two prefetches and
        // the processing that follow.
        let mut keyed = std::mem::take(&mut self.keyed);
        keyed.extend(batch.drain(..).map(|record| {
            let key = (self.key_selector)(&record.value);
            let key_group = assign_to_key_group(&key, self.max_parallelism);
            KeyedRecord {
                key,
                key_group,
                record,
            }
        }));
        // As the keyed process operator does: the state of elements ahead is fetched while
        // this one is processed, overlapping the memory latency.
        let processed = drain_prefetching(
            self,
            &mut keyed,
            Self::prefetch,
            Self::prefetch_contents,
            |task, keyed| task.process_element(keyed),
        );
        self.keyed = keyed;
        processed
    }

    fn advance_watermark(&mut self, watermark: u64) -> Result<Firing> {
        let _running = self.keys.enter();
        self.watermark.set(watermark);
        // A watermark can make millions of windows due at once. They are taken a batch at a
        // time (firing a window registers no timer) so that, as for records, the state of
        // the timers ahead loads while this one fires.
        let mut due = std::mem::take(&mut self.due);
        let fired = loop {
            due.clear();
            match self
                .timers
                .poll_event_time_due(watermark, FIRE_BATCH, &mut due)
            {
                Ok(0) => break Ok(Firing::Complete),
                Ok(_) => {}
                Err(e) => break Err(e),
            }
            if let Err(e) = drain_prefetching(
                self,
                &mut due,
                Self::prefetch_timer_slot,
                Self::prefetch_timer_contents,
                |task, (offset, timer)| task.on_timer(timer, Some(offset)),
            ) {
                break Err(e);
            }
            // Room for the next batch's results (one each, for aggregating windows) in
            // what the output buffer keeps.
            if self.output.len() + FIRE_BATCH > FLUSH_AT {
                break Ok(Firing::Paused);
            }
        };
        self.due = due;
        fired
    }

    fn advance_processing_time(&mut self, now: u64) -> Result<Option<u64>> {
        let _running = self.keys.enter();
        while let Some(timer) = self.timers.poll_processing_time(now)? {
            self.on_timer(timer, None)?;
        }
        self.timers.next_processing_time()
    }

    fn close(&mut self) -> Result<()> {
        Ok(())
    }

    fn output(&mut self) -> &mut Vec<Stamped<Out>> {
        &mut self.output
    }

    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    fn snapshot(&mut self) -> Result<PendingParts> {
        keyed_state_part(&self.backend)
    }
}

/// Calls `process` on each item of `items` in order (leaving `items` empty), after `slot` ran
/// for it `SLOT_DISTANCE` items before and `contents` `CONTENTS_DISTANCE` items before: two
/// dependent cache misses per item overlap with the work on the items in between.
fn drain_prefetching<S, T>(
    task: &mut S,
    items: &mut Vec<T>,
    slot: impl Fn(&S, &T),
    contents: impl Fn(&S, &T),
    mut process: impl FnMut(&mut S, T) -> Result<()>,
) -> Result<()> {
    for item in items.iter().take(SLOT_DISTANCE) {
        slot(task, item);
    }
    for item in items.iter().take(CONTENTS_DISTANCE) {
        contents(task, item);
    }
    let mut drained = items.drain(..);
    while let Some(item) = drained.next() {
        let ahead = drained.as_slice();
        if let Some(far) = ahead.get(SLOT_DISTANCE - 1) {
            slot(task, far);
        }
        if let Some(near) = ahead.get(CONTENTS_DISTANCE - 1) {
            contents(task, near);
        }
        process(task, item)?;
    }
    Ok(())
}
