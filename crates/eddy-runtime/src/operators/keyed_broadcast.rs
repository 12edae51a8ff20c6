//! The keyed broadcast operator: a keyed stream connected to a broadcast stream (Flink's
//! broadcast state pattern), one [`KeyedBroadcastProcessFunction`] instance per subtask.

use std::rc::Rc;
use std::sync::Arc;

use eddy_core::key_group::assign_to_key_group;
use eddy_core::{Data, EddyError, Key, KeyGroup, Result, StateValue};
use eddy_state::{KeyContext, KeyedStateBackend, MapStateDescriptor, OperatorStateStore};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::{Operator, OutputBuilderSession};

use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::Capability;
use timely::dataflow::Scope;

use crate::broadcast_function::{
    BroadcastContext, KeyedBroadcastProcessFunction, ReadOnlyBroadcastContext,
};
use crate::checkpoint::{BarrierTracker, Part, PartKind};
use crate::failure::catch_panic;
use crate::function::{Collector, OpenContext};
use crate::graph::{Built, StreamNode, WorkerContext};
use crate::metrics::OperatorMetrics;
use crate::operators::check_parallelism;
use crate::operators::keyed_checkpoint::{
    finish_keyed_restore, keyed_state_part, restore_keyed_state, PendingParts, SnapshotUploader,
};
use crate::operators::keyed_process::{key_group_route, keyed_backend};
use crate::operators::source::restore_operator_state;
use crate::operators::watermarks::combine_watermarks;
use crate::time::Stamped;
use crate::Epoch;

/// An output session of this operator.
type OutputSession<'a, 'b, O, CT> = timely::dataflow::operators::generic::Session<
    'a,
    'b,
    Epoch,
    CapacityContainerBuilder<Vec<Stamped<O>>>,
    CT,
>;

/// The operator's output during one activation.
type OutputHandle<'a, O> =
    OutputBuilderSession<'a, Epoch, CapacityContainerBuilder<Vec<Stamped<O>>>>;

/// Registers a broadcast state in a subtask's [`OperatorStateStore`].
type Register = dyn Fn(&mut OperatorStateStore) -> Result<()> + Send + Sync;

/// A broadcast state descriptor given to `DataStream::broadcast`, with its types erased so
/// that one stream can carry several: every subtask of the connected operator registers it
/// before `open()`.
#[derive(Clone)]
pub struct BroadcastStateSpec {
    name: String,
    register: Arc<Register>,
}

impl BroadcastStateSpec {
    /// The broadcast state described by `desc`.
    pub fn new<K: Key, V: StateValue>(desc: MapStateDescriptor<K, V>) -> Self {
        BroadcastStateSpec {
            name: desc.name().to_string(),
            register: Arc::new(move |store: &mut OperatorStateStore| {
                store.broadcast_state(&desc).map(|_| ())
            }),
        }
    }

    /// The state's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Registers the state in `store`.
    pub fn register(&self, store: &mut OperatorStateStore) -> Result<()> {
        (self.register)(store)
    }
}

/// `keyed.connect(broadcast).process(function)` in the job graph.
pub struct KeyedBroadcastNode<F: KeyedBroadcastProcessFunction, KS> {
    name: String,
    keyed: Box<dyn StreamNode<F::In>>,
    broadcast: Box<dyn StreamNode<F::BroadcastIn>>,
    broadcast_states: Vec<BroadcastStateSpec>,
    key_selector: KS,
    function: F,
    parallelism: Option<usize>,
    metrics: Arc<OperatorMetrics>,
}

/// The inputs of a [`KeyedBroadcastNode`].
pub struct KeyedBroadcastInputs<F: KeyedBroadcastProcessFunction, KS> {
    /// The keyed input, partitioned by `key_selector`.
    pub keyed: Box<dyn StreamNode<F::In>>,
    /// Its key selector.
    pub key_selector: KS,
    /// The broadcast input: every subtask receives all of it.
    pub broadcast: Box<dyn StreamNode<F::BroadcastIn>>,
    /// The broadcast states, registered on every subtask before `open()`.
    pub broadcast_states: Vec<BroadcastStateSpec>,
}

impl<F, KS> KeyedBroadcastNode<F, KS>
where
    F: KeyedBroadcastProcessFunction,
    KS: Fn(&F::In) -> F::Key + Clone + Send + Sync + 'static,
{
    /// Runs `function` on `inputs`, as an operator called `name`.
    pub fn new(
        name: impl Into<String>,
        inputs: KeyedBroadcastInputs<F, KS>,
        function: F,
        metrics: Arc<OperatorMetrics>,
    ) -> Self {
        KeyedBroadcastNode {
            name: name.into(),
            keyed: inputs.keyed,
            broadcast: inputs.broadcast,
            broadcast_states: inputs.broadcast_states,
            key_selector: inputs.key_selector,
            function,
            parallelism: None,
            metrics,
        }
    }
}

impl<F, KS> StreamNode<F::Out> for KeyedBroadcastNode<F, KS>
where
    F: KeyedBroadcastProcessFunction,
    KS: Fn(&F::In) -> F::Key + Clone + Send + Sync + 'static,
{
    fn build<'s>(&self, scope: Scope<'s, Epoch>, worker: &WorkerContext) -> Built<'s, F::Out> {
        let keyed = self.keyed.build(scope, worker);
        let broadcast = self.broadcast.build(scope, worker);
        let keyed_upstream = self.keyed.parallelism(worker.peers);
        let parallelism = self.parallelism(worker.peers);
        let watermarks = combine_watermarks(
            scope,
            &format!("{}-watermarks", self.name),
            [
                (keyed.watermarks, 0),
                (broadcast.watermarks, keyed_upstream),
            ],
            keyed_upstream + self.broadcast.parallelism(worker.peers),
            (worker.index < parallelism).then_some(worker.index),
        );
        let keyed = keyed.records;
        // Timely's broadcast: every record to every worker, in order per sending worker.
        let broadcast = broadcast.records.broadcast();
        let selector = self.key_selector.clone();
        let route = key_group_route(
            move |record: &Stamped<F::In>| selector(&record.value),
            worker.max_parallelism,
            parallelism,
        );
        let mut subtask = (worker.index < parallelism)
            .then(|| BroadcastSubtask::open(self, worker, parallelism))
            .and_then(|opened| opened.map_err(|error| worker.fail(&self.name, error)).ok());
        let mut uploader = subtask
            .is_some()
            .then(|| worker.checkpoint_participant(&self.name, parallelism))
            .flatten()
            .map(|participant| SnapshotUploader::new(participant, worker, &self.name));
        let mut barriers = BarrierTracker::new(worker.barriers);
        let failures = worker.failures();
        let (job, name, index) = (worker.job_name.clone(), self.name.clone(), worker.index);
        let fail = move |error: EddyError| failures.fail(&job, &name, index, error);
        let aborted = worker.failures();
        let mut staged = Staged::<F::In, F::BroadcastIn>::default();

        let records = keyed
            .binary_frontier::<_, CapacityContainerBuilder<Vec<Stamped<F::Out>>>, _, _, _, _>(
                broadcast,
                Exchange::new(route),
                Pipeline,
                &self.name,
                move |default_cap, _info| {
                    // Held at the inputs' joint frontier so `close()` can still emit.
                    let mut cap = Some(default_cap);
                    move |(keyed_input, keyed_frontier),
                          (broadcast_input, broadcast_frontier),
                          output| {
                        // `for_each`, not `for_each_stamp`: it keeps the arrival order of the
                        // messages, so every subtask applies the broadcast elements of one
                        // upstream subtask in the same order (and the keyed elements of one key
                        // in order).
                        broadcast_input.for_each(|stamp, batch| {
                            staged.broadcast.push((
                                stamp.least().copied().unwrap_or_default(),
                                std::mem::take(batch),
                            ));
                        });
                        keyed_input.for_each(|stamp, batch| {
                            staged.keyed.push((
                                stamp.least().copied().unwrap_or_default(),
                                std::mem::take(batch),
                            ));
                        });
                        // Epochs are totally ordered: the joint frontier is the earlier of the two.
                        let keyed_time = keyed_frontier.frontier().first().copied();
                        let broadcast_time = broadcast_frontier.frontier().first().copied();
                        let frontier = keyed_time.into_iter().chain(broadcast_time).min();
                        let Some(c) = cap.as_ref() else {
                            staged.clear();
                            return;
                        };
                        if aborted.is_aborted() {
                            subtask = None;
                        }
                        staged.sort();
                        // Flink's aligned checkpoint, as in the keyed process operator: nothing
                        // past the next barrier applies until both inputs have passed it.
                        loop {
                            let limit = frontier.and(barriers.hold_after());
                            staged.apply_until(&mut subtask, &fail, c, limit, output);
                            let Some(hold) = limit else { break };
                            if frontier.is_none_or(|f| f <= hold) {
                                break;
                            }
                            let passed = barriers.passed(hold + 1);
                            let (Some(uploader), Some(task)) =
                                (uploader.as_mut(), subtask.as_ref())
                            else {
                                continue;
                            };
                            match catch_panic(|| task.snapshot()) {
                                Ok(parts) => {
                                    uploader.submit(passed.collect(), parts);
                                }
                                Err(error) => {
                                    fail(error);
                                    subtask = None;
                                }
                            }
                        }
                        match frontier {
                            Some(time) => {
                                if let Some(c) = cap.as_mut() {
                                    if *c.time() < time {
                                        c.downgrade(&time);
                                    }
                                }
                            }
                            None => {
                                if let (Some(task), Some(c)) = (subtask.as_mut(), cap.as_ref()) {
                                    if let Err(error) = catch_panic(|| task.close()) {
                                        fail(error);
                                    }
                                    task.flush(&mut output.session(c));
                                    // A bounded job's final checkpoint: the state at the end.
                                    if let Some(uploader) = uploader.as_mut() {
                                        uploader.submit_final(catch_panic(|| task.snapshot()));
                                    }
                                }
                                subtask = None;
                                cap = None;
                            }
                        }
                    }
                },
            );
        Built {
            records,
            watermarks,
        }
    }

    fn parallelism(&self, job: usize) -> usize {
        self.parallelism.unwrap_or(job)
    }

    fn validate(&self, job: usize) -> Result<()> {
        check_parallelism(&self.name, self.parallelism, job)?;
        self.keyed.validate(job)?;
        self.broadcast.validate(job)
    }

    fn set_parallelism(&mut self, parallelism: usize) -> Result<()> {
        self.parallelism = Some(parallelism);
        Ok(())
    }

    fn operator_name(&self) -> Option<&str> {
        Some(&self.name)
    }
}

/// Input held back until its epoch may apply (checkpoint alignment), per input, each in
/// arrival order within an epoch.
struct Staged<In, B> {
    keyed: Vec<(Epoch, Vec<Stamped<In>>)>,
    broadcast: Vec<(Epoch, Vec<Stamped<B>>)>,
}

impl<In, B> Default for Staged<In, B> {
    fn default() -> Self {
        Staged {
            keyed: Vec::new(),
            broadcast: Vec::new(),
        }
    }
}

impl<In: Data, B: Data> Staged<In, B> {
    fn clear(&mut self) {
        self.keyed.clear();
        self.broadcast.clear();
    }

    /// Orders both inputs by epoch (stable: one sender's batches of an epoch keep their
    /// order).
    fn sort(&mut self) {
        self.keyed.sort_by_key(|(epoch, _)| *epoch);
        self.broadcast.sort_by_key(|(epoch, _)| *epoch);
    }

    /// Applies every held batch of an epoch up to `limit` (all if `None`) in epoch order,
    /// an epoch's broadcast elements before its keyed ones (a rule that arrives together with
    /// events already applies to them), emitting at each batch's epoch.
    fn apply_until<F, KS>(
        &mut self,
        subtask: &mut Option<BroadcastSubtask<F, KS>>,
        fail: &impl Fn(EddyError),
        cap: &Capability<Epoch>,
        limit: Option<Epoch>,
        output: &mut OutputHandle<'_, F::Out>,
    ) where
        F: KeyedBroadcastProcessFunction<In = In, BroadcastIn = B>,
        KS: Fn(&F::In) -> F::Key + Clone + Send + Sync + 'static,
    {
        let within = |epoch: Epoch| limit.is_none_or(|l| epoch <= l);
        let ready_broadcast = self.broadcast.partition_point(|(e, _)| within(*e));
        let ready_keyed = self.keyed.partition_point(|(e, _)| within(*e));
        let mut broadcast = self.broadcast.drain(..ready_broadcast).peekable();
        let mut keyed = self.keyed.drain(..ready_keyed).peekable();
        loop {
            let broadcast_first = match (broadcast.peek(), keyed.peek()) {
                (Some((b, _)), Some((k, _))) => b <= k,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            let Some(task) = subtask.as_mut() else {
                continue_draining(&mut broadcast, &mut keyed);
                break;
            };
            let (epoch, outcome) = if broadcast_first {
                match broadcast.next() {
                    Some((epoch, mut batch)) => (
                        epoch,
                        catch_panic(|| task.process_broadcast_batch(&mut batch)),
                    ),
                    None => break,
                }
            } else {
                match keyed.next() {
                    Some((epoch, mut batch)) => {
                        (epoch, catch_panic(|| task.process_keyed_batch(&mut batch)))
                    }
                    None => break,
                }
            };
            match outcome {
                Ok(()) => {
                    let at = cap.delayed(&epoch.max(*cap.time()));
                    task.flush(&mut output.session(&at));
                }
                Err(error) => {
                    fail(error);
                    *subtask = None;
                }
            }
        }
    }
}

/// Drops the rest of the held input of a subtask that has failed.
fn continue_draining<I: Iterator, J: Iterator>(a: &mut I, b: &mut J) {
    a.for_each(drop);
    b.for_each(drop);
}

/// One subtask of a keyed broadcast operator: the function instance, its keyed state, its
/// broadcast state and its keys.
struct BroadcastSubtask<F: KeyedBroadcastProcessFunction, KS> {
    function: F,
    state: F::State,
    backend: KeyedStateBackend<F::Key>,
    keys: Rc<KeyContext<F::Key>>,
    operator_state: OperatorStateStore,
    key_selector: KS,
    output: Vec<Stamped<F::Out>>,
    max_parallelism: usize,
    metrics: Arc<OperatorMetrics>,
    subtask: usize,
}

impl<F, KS> BroadcastSubtask<F, KS>
where
    F: KeyedBroadcastProcessFunction,
    KS: Fn(&F::In) -> F::Key + Clone + Send + Sync + 'static,
{
    /// Registers the broadcast states, clones the function into this subtask and calls its
    /// `open()` once.
    fn open(
        node: &KeyedBroadcastNode<F, KS>,
        worker: &WorkerContext,
        parallelism: usize,
    ) -> Result<Self> {
        let mut backend = keyed_backend(worker, parallelism)?;
        restore_keyed_state(worker, &node.name, parallelism, &mut backend)?;
        backend.set_ttl_clock(std::sync::Arc::clone(&worker.config.clock.0));
        // Restored before the states are registered (registration decodes them); broadcast
        // state gives every subtask the whole state at any parallelism.
        let mut operator_state = OperatorStateStore::new();
        restore_operator_state(worker, &node.name, parallelism, &mut operator_state)?;
        for spec in &node.broadcast_states {
            spec.register(&mut operator_state)?;
        }
        let mut function = catch_panic(|| Ok(node.function.clone()))?;
        let state = catch_panic(|| {
            function.open(&mut OpenContext {
                backend: &mut backend,
                operator: &node.name,
                subtask: worker.index,
                parallelism,
            })
        })?;
        finish_keyed_restore(worker, &node.name, &mut backend)?;
        backend.context().bind_to_operator(&node.name);
        Ok(BroadcastSubtask {
            function,
            state,
            keys: Rc::clone(backend.context()),
            backend,
            operator_state,
            key_selector: node.key_selector.clone(),
            output: Vec::new(),
            max_parallelism: worker.max_parallelism,
            metrics: Arc::clone(&node.metrics),
            subtask: worker.index,
        })
    }

    /// Hands every broadcast element to the function, with no current key.
    fn process_broadcast_batch(&mut self, batch: &mut Vec<Stamped<F::BroadcastIn>>) -> Result<()> {
        let _running = self.keys.enter();
        self.metrics.add_in(batch.len());
        for event in batch.drain(..) {
            let mut ctx = BroadcastContext {
                backend: &self.backend,
                subtask: self.subtask,
                operator_state: &self.operator_state,
            };
            let mut out = Collector {
                buffer: &mut self.output,
                timestamp: event.timestamp,
            };
            self.function.process_broadcast_element(
                &mut self.state,
                event.value,
                &mut ctx,
                &mut out,
            )?;
        }
        Ok(())
    }

    /// Sets each keyed element's key as the current key, then hands it to the function.
    fn process_keyed_batch(&mut self, batch: &mut Vec<Stamped<F::In>>) -> Result<()> {
        let _running = self.keys.enter();
        self.metrics.add_in(batch.len());
        for event in batch.drain(..) {
            let key = (self.key_selector)(&event.value);
            let key_group = assign_to_key_group(&key, self.max_parallelism);
            self.process_event(event, key, key_group)?;
        }
        Ok(())
    }

    fn process_event(
        &mut self,
        event: Stamped<F::In>,
        key: F::Key,
        key_group: KeyGroup,
    ) -> Result<()> {
        self.keys.set_current_key_in_group(key, key_group)?;
        let key = self
            .keys
            .current_key()
            .ok_or_else(|| EddyError::Internal("current key vanished".into()))?;
        let mut ctx = ReadOnlyBroadcastContext {
            key,
            key_group,
            subtask: self.subtask,
            operator_state: &self.operator_state,
        };
        let mut out = Collector {
            buffer: &mut self.output,
            timestamp: event.timestamp,
        };
        self.function
            .process_element(&mut self.state, event.value, &mut ctx, &mut out)
    }

    /// This subtask's part of a checkpoint: its keyed state and its broadcast state.
    fn snapshot(&self) -> Result<PendingParts> {
        let broadcast = self.operator_state.snapshot()?;
        let payload = postcard::to_stdvec(&broadcast)
            .map_err(|e| EddyError::Internal(format!("cannot encode the broadcast state: {e}")))?;
        Ok(keyed_state_part(&self.backend)?.with(Part {
            payload,
            kind: PartKind::Operator,
            key_groups: None,
            states: Vec::new(),
            shared: Vec::new(),
        }))
    }

    fn close(&mut self) -> Result<()> {
        let _running = self.keys.enter();
        let mut out = Collector::new(&mut self.output);
        self.function.close(&mut self.state, &mut out)
    }

    /// Sends what the function emitted under the capability of its input.
    fn flush<CT>(&mut self, session: &mut OutputSession<'_, '_, F::Out, CT>)
    where
        CT: timely::dataflow::operators::CapabilityTrait<Epoch>,
    {
        if !self.output.is_empty() {
            self.metrics.add_out(self.output.len());
            session.give_container(&mut self.output);
            self.output.clear();
        }
    }
}
