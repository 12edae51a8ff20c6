//! The keyed process operator: `key_by` exchange plus one function instance per subtask.

use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use eddy_core::key_group::{assign_to_key_group, subtask_for_key_group};
use eddy_core::{EddyError, Key, KeyGroup, KeyGroupRange, Result};
use eddy_state::{KeyContext, KeyedStateBackend, PrefetchDepth, TimeDomain, Timer};
use timely::dataflow::Scope;

use crate::config::StateBackendKind;
use crate::failure::catch_panic;
use crate::function::{Collector, Context, KeyedProcessFunction, OpenContext, TimerService};
use crate::graph::{Built, StreamNode, WorkerContext};
use crate::metrics::OperatorMetrics;
use crate::operators::keyed_shell::{build_keyed_node, Firing, KeyedTask, FLUSH_AT};
use crate::operators::{
    check_parallelism, finish_keyed_restore, keyed_state_part, restore_keyed_state, PendingParts,
};
use crate::time::{Stamped, WatermarkClock, MIN_WATERMARK, NO_TIMESTAMP};
use crate::Epoch;

/// The name of the timer service behind [`Context::timer_service`] in the state backend.
const USER_TIMERS: &str = "_user_timers";

/// How many events ahead the state slot of an event is prefetched.
const SLOT_DISTANCE: usize = 8;
/// How many events ahead the contents behind a slot (list tail, map entries) are prefetched.
const CONTENTS_DISTANCE: usize = 4;

/// `key_by(selector).process(function)` in the job graph.
pub struct KeyedProcessNode<F: KeyedProcessFunction, KS> {
    name: String,
    input: Box<dyn StreamNode<F::In>>,
    key_selector: KS,
    function: F,
    parallelism: Option<usize>,
    metrics: Arc<OperatorMetrics>,
}

impl<F, KS> KeyedProcessNode<F, KS>
where
    F: KeyedProcessFunction,
    KS: Fn(&F::In) -> F::Key + Clone + Send + Sync + 'static,
{
    /// Partitions `input` by `key_selector` and runs `function` on every partition.
    pub fn new(
        name: impl Into<String>,
        input: Box<dyn StreamNode<F::In>>,
        key_selector: KS,
        function: F,
        metrics: Arc<OperatorMetrics>,
    ) -> Self {
        KeyedProcessNode {
            name: name.into(),
            input,
            key_selector,
            function,
            parallelism: None,
            metrics,
        }
    }
}

impl<F, KS> StreamNode<F::Out> for KeyedProcessNode<F, KS>
where
    F: KeyedProcessFunction,
    KS: Fn(&F::In) -> F::Key + Clone + Send + Sync + 'static,
{
    fn build<'s>(&self, scope: Scope<'s, Epoch>, worker: &WorkerContext) -> Built<'s, F::Out> {
        let parallelism = self.parallelism(worker.peers);
        build_keyed_node(
            scope,
            worker,
            &self.name,
            &*self.input,
            &self.key_selector,
            parallelism,
            &self.metrics,
            || KeyedSubtask::open(self, worker, parallelism),
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

/// One subtask of a keyed process operator: the function instance, its state and its keys.
struct KeyedSubtask<F: KeyedProcessFunction, KS> {
    function: F,
    state: F::State,
    backend: KeyedStateBackend<F::Key>,
    keys: Rc<KeyContext<F::Key>>,
    timers: TimerService<F::Key>,
    /// The watermark as the clock of event-time TTL states.
    event_clock: WatermarkClock,
    key_selector: KS,
    output: Vec<Stamped<F::Out>>,
    /// Key groups of the events in the prefetch window (see `process_batch`).
    key_groups: VecDeque<KeyGroup>,
    max_parallelism: usize,
    metrics: Arc<OperatorMetrics>,
    subtask: usize,
}

impl<F, KS> KeyedSubtask<F, KS>
where
    F: KeyedProcessFunction,
    KS: Fn(&F::In) -> F::Key + Clone + Send + Sync + 'static,
{
    /// Clones the function into this subtask and calls its `open()` once.
    fn open(
        node: &KeyedProcessNode<F, KS>,
        worker: &WorkerContext,
        parallelism: usize,
    ) -> Result<Self> {
        let mut backend = keyed_backend(worker, parallelism)?;
        restore_keyed_state(worker, &node.name, parallelism, &mut backend)?;
        let mut function = catch_panic(|| Ok(node.function.clone()))?;
        let state = catch_panic(|| {
            function.open(&mut OpenContext {
                backend: &mut backend,
                operator: &node.name,
                subtask: worker.index,
                parallelism,
            })
        })?;
        let clock = worker.config.clock.clone();
        backend.set_ttl_clock(Arc::clone(&clock.0));
        let event_clock = WatermarkClock::default();
        backend.set_event_time_clock(Arc::new(event_clock.clone()));
        let timers = TimerService {
            queues: backend.timer_service::<()>(USER_TIMERS)?,
            watermark: Cell::new(MIN_WATERMARK),
            clock,
        };
        finish_keyed_restore(worker, &node.name, &mut backend)?;
        backend.context().bind_to_operator(&node.name);
        Ok(KeyedSubtask {
            function,
            state,
            timers,
            event_clock,
            keys: Rc::clone(backend.context()),
            backend,
            key_selector: node.key_selector.clone(),
            output: Vec::new(),
            key_groups: VecDeque::with_capacity(SLOT_DISTANCE + 1),
            max_parallelism: worker.max_parallelism,
            metrics: Arc::clone(&node.metrics),
            subtask: worker.index,
        })
    }

    /// Sets each event's key as the current key, then hands the event to the function.
    ///
    /// While it processes event `i`, it prefetches the state of event `i + SLOT_DISTANCE`
    /// (its table slot) and of event `i + CONTENTS_DISTANCE` (what that slot points to, by
    /// then in cache): the memory latency of state far larger than the CPU caches then
    /// overlaps with processing instead of stalling it.
    #[inline]
    fn process_records(&mut self, batch: &mut Vec<Stamped<F::In>>) -> Result<()> {
        self.metrics.add_in(batch.len());
        let mut events = std::mem::take(batch).into_iter();
        if !self.backend.has_state() {
            for event in events {
                let key = (self.key_selector)(&event.value);
                let kg = assign_to_key_group(&key, self.max_parallelism);
                self.process_event(event, key, kg)?;
            }
            return Ok(());
        }
        let contents = self.backend.has_contents();
        // Key groups of the events from the current one up to `SLOT_DISTANCE` ahead, computed
        // once when their slot is prefetched and reused when they are processed.
        self.key_groups.clear();
        for event in events.as_slice().iter().take(SLOT_DISTANCE) {
            self.prefetch_slot(event);
        }
        for (i, kg) in self.key_groups.iter().take(CONTENTS_DISTANCE).enumerate() {
            if contents {
                let key = (self.key_selector)(&events.as_slice()[i].value);
                self.backend
                    .prefetch_in_group(&key, *kg, PrefetchDepth::Contents);
            }
        }
        while let Some(event) = events.next() {
            let ahead = events.as_slice();
            if let Some(far) = ahead.get(SLOT_DISTANCE - 1) {
                self.prefetch_slot(far);
            }
            let kg = self
                .key_groups
                .pop_front()
                .ok_or_else(|| EddyError::Internal("prefetch window out of step".into()))?;
            if contents {
                if let (Some(near), Some(near_kg)) = (
                    ahead.get(CONTENTS_DISTANCE - 1),
                    self.key_groups.get(CONTENTS_DISTANCE - 1),
                ) {
                    let key = (self.key_selector)(&near.value);
                    self.backend
                        .prefetch_in_group(&key, *near_kg, PrefetchDepth::Contents);
                }
            }
            let key = (self.key_selector)(&event.value);
            self.process_event(event, key, kg)?;
        }
        Ok(())
    }

    /// Prefetches the state slot of `event` and remembers its key group.
    #[inline]
    fn prefetch_slot(&mut self, event: &Stamped<F::In>) {
        let key = (self.key_selector)(&event.value);
        let kg = assign_to_key_group(&key, self.max_parallelism);
        self.backend
            .prefetch_in_group(&key, kg, PrefetchDepth::Slot);
        self.key_groups.push_back(kg);
    }

    #[inline]
    fn process_event(&mut self, event: Stamped<F::In>, key: F::Key, kg: KeyGroup) -> Result<()> {
        let call = Call {
            timestamp: event.timestamp,
            time_domain: None,
            output_timestamp: event.timestamp,
        };
        self.with_key(key, kg, call, |function, state, ctx, out| {
            function.process_element(state, event.value, ctx, out)
        })
    }

    /// Calls `on_timer` for `timer`, with its key as the current key.
    fn fire(&mut self, timer: Timer<F::Key, ()>, domain: TimeDomain) -> Result<()> {
        let kg = assign_to_key_group(&timer.key, self.max_parallelism);
        let call = Call {
            timestamp: timer.timestamp,
            time_domain: Some(domain),
            // Flink stamps what an event-time timer emits with its time, and erases the
            // timestamp of what a processing-time timer emits.
            output_timestamp: match domain {
                TimeDomain::EventTime => timer.timestamp,
                TimeDomain::ProcessingTime => NO_TIMESTAMP,
            },
        };
        self.with_key(timer.key, kg, call, |function, state, ctx, out| {
            function.on_timer(state, call.timestamp, ctx, out)
        })
    }

    /// Makes `key` current and runs `f` on the function with the context `call` describes.
    #[inline]
    fn with_key(
        &mut self,
        key: F::Key,
        kg: KeyGroup,
        call: Call,
        f: impl FnOnce(
            &mut F,
            &mut F::State,
            &mut Context<'_, F::Key>,
            &mut Collector<'_, F::Out>,
        ) -> Result<()>,
    ) -> Result<()> {
        self.keys.set_current_key_in_group(key, kg)?;
        let key = self
            .keys
            .current_key()
            .ok_or_else(|| EddyError::Internal("current key vanished".into()))?;
        let mut ctx = Context {
            key,
            key_group: kg,
            subtask: self.subtask,
            timestamp: call.timestamp,
            time_domain: call.time_domain,
            timers: &self.timers,
        };
        let mut out = Collector {
            buffer: &mut self.output,
            timestamp: call.output_timestamp,
        };
        f(&mut self.function, &mut self.state, &mut ctx, &mut out)
    }
}

/// What a call into the function sees of time.
#[derive(Clone, Copy)]
struct Call {
    /// `ctx.timestamp()`: the event's or the timer's.
    timestamp: u64,
    /// `ctx.time_domain()`: set in `on_timer`.
    time_domain: Option<TimeDomain>,
    /// The timestamp of what the call emits.
    output_timestamp: u64,
}

impl<F, KS> KeyedTask for KeyedSubtask<F, KS>
where
    F: KeyedProcessFunction,
    KS: Fn(&F::In) -> F::Key + Clone + Send + Sync + 'static,
{
    type In = F::In;
    type Out = F::Out;

    fn process_batch(&mut self, batch: &mut Vec<Stamped<F::In>>) -> Result<()> {
        let _running = self.keys.enter();
        self.process_records(batch)
    }

    fn advance_watermark(&mut self, watermark: u64) -> Result<Firing> {
        let _running = self.keys.enter();
        self.timers.watermark.set(watermark);
        self.event_clock.set(watermark);
        // Timers registered while firing are due too if their time has passed, as in Flink.
        while let Some(timer) = self.timers.queues.poll_event_time(watermark)? {
            self.fire(timer, TimeDomain::EventTime)?;
            if self.output.len() >= FLUSH_AT {
                return Ok(Firing::Paused);
            }
        }
        Ok(Firing::Complete)
    }

    fn advance_processing_time(&mut self, now: u64) -> Result<Option<u64>> {
        let _running = self.keys.enter();
        while let Some(timer) = self.timers.queues.poll_processing_time(now)? {
            self.fire(timer, TimeDomain::ProcessingTime)?;
        }
        self.timers.queues.next_processing_time()
    }

    fn close(&mut self) -> Result<()> {
        let _running = self.keys.enter();
        let mut out = Collector {
            buffer: &mut self.output,
            timestamp: NO_TIMESTAMP,
        };
        self.function.close(&mut self.state, &mut out)
    }

    fn output(&mut self) -> &mut Vec<Stamped<F::Out>> {
        &mut self.output
    }

    fn now(&self) -> u64 {
        self.timers.clock.now_ms()
    }

    fn snapshot(&mut self) -> Result<PendingParts> {
        keyed_state_part(&self.backend)
    }
}

/// The `key_by` routing of a keyed operator with `parallelism` subtasks: every record goes to
/// the subtask owning its key's key group. Timely routes to `h % peers`, and the subtask index
/// is `< peers`, so this picks exactly that worker.
pub(crate) fn key_group_route<T, K: Key>(
    selector: impl Fn(&T) -> K + 'static,
    max_parallelism: usize,
    parallelism: usize,
) -> impl Fn(&T) -> u64 + 'static {
    move |event: &T| {
        let key_group = assign_to_key_group(&selector(event), max_parallelism);
        subtask_for_key_group(max_parallelism, parallelism, key_group) as u64
    }
}

/// The keyed state backend of this worker's subtask of a keyed operator with `parallelism`
/// subtasks, of the kind the job is configured with.
pub(crate) fn keyed_backend<K: Key>(
    worker: &WorkerContext,
    parallelism: usize,
) -> Result<KeyedStateBackend<K>> {
    let range = KeyGroupRange::for_subtask(worker.max_parallelism, parallelism, worker.index);
    Ok(match &worker.config.state_backend {
        StateBackendKind::Heap => KeyedStateBackend::heap(range, worker.max_parallelism),
        StateBackendKind::RocksDb {
            working_dir,
            object_cache_entries,
            heap_timers,
            full_checkpoints,
            memory_budget,
            hash_memtables,
        } => {
            let config = eddy_state::RocksDbConfig {
                working_dir: working_dir.clone(),
                memory_budget: *memory_budget,
                object_cache_entries: *object_cache_entries,
                heap_timers: *heap_timers,
                incremental_checkpoints: !*full_checkpoints,
                hash_memtables: *hash_memtables,
                ..eddy_state::RocksDbConfig::default()
            };
            KeyedStateBackend::rocksdb(range, worker.max_parallelism, &config)?
        }
    })
}
