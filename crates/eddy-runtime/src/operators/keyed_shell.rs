//! The timely operator every keyed operator runs in: `key_by` exchange, epoch order, event
//! time and processing time, failure handling. What the operator computes is a [`KeyedTask`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use eddy_core::{Data, EddyError, Key, Result};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::Capability;
use timely::dataflow::Scope;

use crate::checkpoint::{BarrierTracker, Part};
use crate::failure::catch_panic;
use crate::graph::{Built, StreamNode, WorkerContext};
use crate::metrics::OperatorMetrics;
use crate::operators::key_group_route;
use crate::operators::keyed_checkpoint::{PendingParts, SnapshotUploader};
use crate::time::{InputWatermarks, Stamped, WatermarkAdvance, WatermarkMessage, WatermarkStatus};
use crate::Epoch;

/// The per-subtask logic of a keyed operator, driven by [`build_keyed_operator`].
pub(crate) trait KeyedTask: 'static {
    /// The input records.
    type In: Data;
    /// The output records.
    type Out: Data;

    /// Processes a batch of records of one epoch (every record's key belongs to this subtask).
    fn process_batch(&mut self, batch: &mut Vec<Stamped<Self::In>>) -> Result<()>;

    /// The combined watermark of the inputs has advanced to `watermark`: fire the event-time
    /// timers it makes due. A task may pause once it has [`FLUSH_AT`] records of output
    /// (a watermark can make millions of timers due at once); the caller then sends the
    /// output and calls again with the same watermark until the firing is complete.
    fn advance_watermark(&mut self, watermark: u64) -> Result<Firing>;

    /// Fires the processing-time timers due at `now`; returns when the next one is due.
    fn advance_processing_time(&mut self, now: u64) -> Result<Option<u64>>;

    /// The inputs have ended (after the final watermark).
    fn close(&mut self) -> Result<()>;

    /// The records emitted since the last call; the operator sends and clears them.
    fn output(&mut self) -> &mut Vec<Stamped<Self::Out>>;

    /// The processing-time clock, in milliseconds.
    fn now(&self) -> u64;

    /// A consistent snapshot of the subtask's state, taken between two records: the part
    /// this subtask contributes to a checkpoint (possibly completed later, on another thread).
    fn snapshot(&mut self) -> Result<PendingParts>;
}

/// How a keyed operator reaches its task and reports failures.
pub(crate) struct KeyedOperatorSpec<'a, R> {
    pub name: &'a str,
    /// The `key_by` routing: record to target worker.
    pub route: R,
    /// How many subtasks send watermarks into this operator (its input's parallelism).
    pub upstream: usize,
    /// How often to look at the processing-time clock while a processing-time timer waits.
    pub timer_poll: Duration,
    /// The operator's counters (records out are counted here).
    pub metrics: Arc<OperatorMetrics>,
    /// The operator's parallelism.
    pub parallelism: usize,
}

/// Builds the keyed node called `name` on `input`, partitioned by `key_selector` onto
/// `parallelism` subtasks; this worker's subtask (if it runs one) is opened by `open`, whose
/// failure is reported as the operator's.
#[allow(clippy::too_many_arguments)] // the parts of a keyed node; a struct would only rename them
pub(crate) fn build_keyed_node<'s, K, T, KS>(
    scope: Scope<'s, Epoch>,
    worker: &WorkerContext,
    name: &str,
    input: &dyn StreamNode<T::In>,
    key_selector: &KS,
    parallelism: usize,
    metrics: &Arc<OperatorMetrics>,
    open: impl FnOnce() -> Result<T>,
) -> Built<'s, T::Out>
where
    K: Key,
    T: KeyedTask,
    KS: Fn(&T::In) -> K + Clone + 'static,
{
    let built = input.build(scope, worker);
    let selector = key_selector.clone();
    let route = key_group_route(
        move |record: &Stamped<T::In>| selector(&record.value),
        worker.max_parallelism,
        parallelism,
    );
    let task = (worker.index < parallelism)
        .then(open)
        .and_then(|opened| opened.map_err(|error| worker.fail(name, error)).ok());
    let spec = KeyedOperatorSpec {
        name,
        route,
        upstream: input.parallelism(worker.peers),
        timer_poll: worker.config.epoch_interval,
        metrics: Arc::clone(metrics),
        parallelism,
    };
    build_keyed_operator(scope, worker, built, spec, task)
}

/// Builds a keyed operator on `input` whose subtask on this worker runs `task` (`None` on a
/// worker above the operator's parallelism, or when `open()` failed).
///
/// Records are processed as they arrive, grouped by epoch in epoch order (a stable sort, so
/// the records of one sending subtask keep their order). Watermark messages wait until both
/// inputs have passed their epoch (see [`crate::time`]); then the task sees the new combined
/// watermark, and this operator forwards it downstream on the same epoch.
///
/// With checkpoints on, records (and watermarks) of epochs after the next checkpoint's last
/// epoch are held back until the input frontier has passed that epoch; then the task's
/// snapshot goes to the coordinator and the held records are applied: the snapshot holds
/// exactly the records of the checkpoint's epochs (see [`crate::checkpoint`]).
pub(crate) fn build_keyed_operator<'s, T, R>(
    scope: Scope<'s, Epoch>,
    worker: &WorkerContext,
    input: Built<'s, T::In>,
    spec: KeyedOperatorSpec<'_, R>,
    task: Option<T>,
) -> Built<'s, T::Out>
where
    T: KeyedTask,
    R: Fn(&Stamped<T::In>) -> u64 + 'static,
{
    let mut builder = OperatorBuilder::new(spec.name.to_string(), scope);
    let mut records_in = builder.new_input(input.records, Exchange::new(spec.route));
    let mut watermarks_in = builder.new_input(input.watermarks.broadcast(), Pipeline);
    let (records_out, records) = builder.new_output::<Vec<Stamped<T::Out>>>();
    let (watermarks_out, watermarks) = builder.new_output::<Vec<WatermarkMessage>>();
    let mut records_out = OutputBuilder::<_, CapacityContainerBuilder<_>>::from(records_out);
    let mut watermarks_out = OutputBuilder::<_, CapacityContainerBuilder<_>>::from(watermarks_out);
    let activator = scope.activator_for(builder.operator_info().address);

    let mut task = task;
    let failures = worker.failures();
    let (job, name, index) = (worker.job_name.clone(), spec.name.to_string(), worker.index);
    let fail = move |error: EddyError| failures.fail(&job, &name, index, error);
    let aborted = worker.failures();
    let mut input_watermarks = InputWatermarks::new(spec.upstream);
    let mut staged: Vec<(Epoch, Vec<Stamped<T::In>>)> = Vec::new();
    let timer_poll = spec.timer_poll;
    let metrics = spec.metrics;

    let mut uploader = task
        .is_some()
        .then(|| worker.checkpoint_participant(spec.name, spec.parallelism))
        .flatten()
        .map(|participant| SnapshotUploader::new(participant, worker, spec.name));
    let mut barriers = BarrierTracker::new(worker.barriers);
    let mut advances: VecDeque<WatermarkAdvance> = VecDeque::new();
    // The last snapshot and whether anything was applied since: a frontier that jumps over
    // several checkpoints at once reuses it instead of copying unchanged state again.
    let mut last_snapshot: Option<Vec<Part>> = None;

    builder.build(move |capabilities| {
        // Held at the inputs' joint frontier, one per output, so that timers and `close()`
        // can still emit; never ahead of the frontier.
        let mut held: Option<Vec<Capability<Epoch>>> = Some(capabilities);
        move |frontiers| {
            records_in.for_each(|cap, data| {
                let epoch = cap.least().copied().unwrap_or_default();
                staged.push((epoch, std::mem::take(data)));
            });
            watermarks_in.for_each(|cap, data| {
                let epoch = cap.least().copied().unwrap_or_default();
                for message in data.drain(..) {
                    input_watermarks.stage(epoch, message);
                }
            });
            // Epochs are totally ordered: the joint frontier is the earlier of the two.
            let frontier = frontiers
                .iter()
                .filter_map(|f| f.frontier().first().copied())
                .min();
            let Some(caps) = held.as_mut() else {
                staged.clear();
                return;
            };
            if aborted.is_aborted() {
                task = None;
            }
            // A stable sort: one sender's records of an epoch keep their order.
            staged.sort_by_key(|(epoch, _)| *epoch);
            advances.extend(input_watermarks.advance(frontier));
            let mut records_out = records_out.activate();
            let mut watermarks_out = watermarks_out.activate();
            let mut out = Outputs {
                records: &mut records_out,
                watermarks: &mut watermarks_out,
                metrics: &metrics,
                from: index,
            };
            loop {
                // Until the input ends, nothing past the next checkpoint's barrier applies.
                let limit = frontier.and(barriers.hold_after());
                let applied = apply_until(
                    &mut task,
                    &fail,
                    caps,
                    &mut staged,
                    &mut advances,
                    limit,
                    &mut out,
                );
                if applied {
                    last_snapshot = None;
                }
                let Some(hold) = limit else { break };
                if frontier.is_none_or(|f| f <= hold) {
                    break;
                }
                let passed = barriers.passed(hold + 1);
                // A task that has ended (failed, or the job is stopping) has nothing to give.
                if let (Some(uploader), true) = (uploader.as_mut(), task.is_some()) {
                    let parts = match last_snapshot.take() {
                        Some(parts) => Ok(PendingParts::Ready(parts)),
                        None => take_snapshot(&mut task),
                    };
                    match parts {
                        Ok(parts) => last_snapshot = uploader.submit(passed.collect(), parts),
                        Err(error) => {
                            fail(error);
                            task = None;
                        }
                    }
                }
            }
            let mut next_timer = None;
            run(&mut task, &fail, |t| {
                next_timer = t.advance_processing_time(t.now())?;
                Ok(())
            });
            out.send(&mut task, &caps[0]);
            match frontier {
                Some(time) => {
                    for cap in caps.iter_mut() {
                        if *cap.time() < time {
                            cap.downgrade(&time);
                        }
                    }
                    if next_timer.is_some() {
                        // Epochs move every `epoch_interval` while sources run, which wakes
                        // this operator too; this covers a stalled input.
                        activator.activate_after(timer_poll);
                    }
                }
                None => {
                    run(&mut task, &fail, |t| t.close());
                    out.send(&mut task, &caps[0]);
                    // A bounded job's final checkpoint: the state after the end of input.
                    if let (Some(uploader), true) = (uploader.as_mut(), task.is_some()) {
                        uploader.submit_final(take_snapshot(&mut task));
                    }
                    task = None;
                    held = None;
                }
            }
        }
    });
    Built {
        records,
        watermarks,
    }
}

type RecordsOut<'a, O> = timely::dataflow::operators::generic::OutputBuilderSession<
    'a,
    Epoch,
    CapacityContainerBuilder<Vec<Stamped<O>>>,
>;
type WatermarksOut<'a> = timely::dataflow::operators::generic::OutputBuilderSession<
    'a,
    Epoch,
    CapacityContainerBuilder<Vec<WatermarkMessage>>,
>;

/// The most records' room the output buffer keeps after a send (see `Outputs::send`).
const OUTPUT_RESERVE_MAX: usize = 1 << 16;

/// The output, in records, at which a task firing timers pauses for it to be sent (see
/// [`KeyedTask::advance_watermark`]): the buffer then never outgrows the room it keeps.
pub(crate) const FLUSH_AT: usize = OUTPUT_RESERVE_MAX;

/// How far [`KeyedTask::advance_watermark`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Firing {
    /// No timer is due at the watermark any more.
    Complete,
    /// Paused with output to send; timers may still be due.
    Paused,
}

/// The two outputs of a keyed operator during one activation.
struct Outputs<'o, 'a, O: 'static> {
    records: &'o mut RecordsOut<'a, O>,
    watermarks: &'o mut WatermarksOut<'a>,
    metrics: &'o OperatorMetrics,
    /// This subtask's index: the sender of its watermarks.
    from: usize,
}

impl<O: Data> Outputs<'_, '_, O> {
    /// Sends the task's pending output at `cap`'s epoch.
    fn send<T: KeyedTask<Out = O>>(&mut self, task: &mut Option<T>, cap: &Capability<Epoch>) {
        let Some(t) = task.as_mut() else { return };
        let output = t.output();
        if !output.is_empty() {
            let sent = output.len();
            self.metrics.add_out(sent);
            // Hand the whole buffer over instead of copying record by record.
            self.records.session(cap).give_container(output);
            output.clear();
            // The buffer comes back empty, usually without capacity: room for as many records
            // as were just sent spares regrowing it by doubling (a copy and, for the large
            // batches a watermark fires, fresh pages) on every send.
            output.reserve(sent.min(OUTPUT_RESERVE_MAX));
        }
    }
}

/// Applies the staged records and watermark advances of epochs up to `limit` (all of them
/// if `None`) in epoch order; returns whether anything was applied.
#[allow(clippy::too_many_arguments)] // the pieces of one activation, borrowed separately
fn apply_until<T: KeyedTask>(
    task: &mut Option<T>,
    fail: &impl Fn(EddyError),
    caps: &[Capability<Epoch>],
    staged: &mut Vec<(Epoch, Vec<Stamped<T::In>>)>,
    advances: &mut VecDeque<WatermarkAdvance>,
    limit: Option<Epoch>,
    out: &mut Outputs<'_, '_, T::Out>,
) -> bool {
    let within = |epoch: Epoch| limit.is_none_or(|l| epoch <= l);
    let ready = staged.partition_point(|(epoch, _)| within(*epoch));
    let mut applied = ready > 0;
    for (epoch, mut batch) in staged.drain(..ready) {
        // Watermarks of earlier epochs apply before this epoch's records.
        while let Some(advance) = pop_if(advances, |a| a.epoch < epoch) {
            apply_advance(task, fail, caps, &advance, out);
        }
        run(task, fail, |t| t.process_batch(&mut batch));
        let at = caps[0].delayed(&epoch.max(*caps[0].time()));
        out.send(task, &at);
    }
    while let Some(advance) = pop_if(advances, |a| within(a.epoch)) {
        apply_advance(task, fail, caps, &advance, out);
        applied = true;
    }
    applied
}

/// The first advance, if `condition` holds for it.
fn pop_if(
    advances: &mut VecDeque<WatermarkAdvance>,
    condition: impl Fn(&WatermarkAdvance) -> bool,
) -> Option<WatermarkAdvance> {
    if advances.front().is_some_and(condition) {
        advances.pop_front()
    } else {
        None
    }
}

/// The task's snapshot; a panic in it is an error like any other.
fn take_snapshot<T: KeyedTask>(task: &mut Option<T>) -> Result<PendingParts> {
    match task.as_mut() {
        Some(t) => catch_panic(|| t.snapshot()),
        None => Err(EddyError::Internal(
            "snapshot requested from a finished task".into(),
        )),
    }
}

/// Runs one step of the task; a failure (error or panic) is reported and ends the task.
fn run<T: KeyedTask>(
    task: &mut Option<T>,
    fail: &impl Fn(EddyError),
    step: impl FnOnce(&mut T) -> Result<()>,
) {
    if let Some(t) = task.as_mut() {
        if let Err(error) = catch_panic(|| step(t)) {
            fail(error);
            *task = None;
        }
    }
}

/// Hands the combined watermark to the task (firing its timers), sends what the timers
/// emitted, and forwards the watermark downstream, all at the advance's epoch.
fn apply_advance<T: KeyedTask>(
    task: &mut Option<T>,
    fail: &impl Fn(EddyError),
    caps: &[Capability<Epoch>],
    advance: &WatermarkAdvance,
    out: &mut Outputs<'_, '_, T::Out>,
) {
    if task.is_none() {
        return;
    }
    let epoch = advance.epoch.max(*caps[0].time());
    if let WatermarkStatus::At(watermark) = advance.status {
        let at = caps[0].delayed(&epoch);
        loop {
            // A failed task (`run` ends it) leaves `Complete`.
            let mut firing = Firing::Complete;
            run(task, fail, |t| {
                firing = t.advance_watermark(watermark)?;
                Ok(())
            });
            // Sent a part at a time, the output of a large firing is never held (and grown
            // by doubling) in one buffer.
            out.send(task, &at);
            if firing == Firing::Complete {
                break;
            }
        }
    }
    let message = WatermarkMessage {
        from: out.from,
        status: advance.status,
    };
    out.watermarks
        .session(&caps[1].delayed(&epoch))
        .give(message);
}
