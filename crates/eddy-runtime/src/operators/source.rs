//! The source operator: polls a reader, advances epochs, and paces itself against the sinks.

use std::sync::Arc;
use std::time::Duration;

use eddy_core::{EddyError, Result};
use eddy_state::{redistribute, OperatorStateSnapshot, OperatorStateStore};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::Scope;

use crate::checkpoint::{BarrierTracker, Coordinator, Part, PartKind, Participant};
use crate::failure::catch_panic;
use crate::graph::{Built, StreamNode, WorkerContext};
use crate::metrics::OperatorMetrics;
use crate::operators::check_parallelism;
use crate::source::{Source, SourceContext, SourceReader, SourceStatus};
use crate::time::{Stamped, WatermarkMessage, WatermarkStatus, MAX_WATERMARK};
use crate::Epoch;

/// Records requested from a reader per poll: large enough to amortize the call and the
/// channel's per-message cost, small enough to stay in cache.
const POLL_BATCH: usize = 1024;

/// Polls per activation before yielding to the worker's other operators.
const POLLS_PER_ACTIVATION: usize = 8;

/// How long a paced source waits before checking the sinks' progress again.
const PACING_RETRY: Duration = Duration::from_micros(50);

/// How long a source whose reader has nothing right now waits before polling it again.
const IDLE_RETRY: Duration = Duration::from_millis(1);

/// A source in the job graph.
pub struct SourceNode<S> {
    name: String,
    source: S,
    parallelism: Option<usize>,
    metrics: Arc<OperatorMetrics>,
}

impl<S: Source> SourceNode<S> {
    /// A source called `name` reading from `source`, counting into `metrics`.
    pub fn new(name: impl Into<String>, source: S, metrics: Arc<OperatorMetrics>) -> Self {
        SourceNode {
            name: name.into(),
            source,
            parallelism: None,
            metrics,
        }
    }
}

impl<S: Source> StreamNode<S::Item> for SourceNode<S> {
    fn build<'s>(&self, scope: Scope<'s, Epoch>, worker: &WorkerContext) -> Built<'s, S::Item> {
        let parallelism = self.parallelism(worker.peers);
        let mut operator_state = OperatorStateStore::new();
        if worker.index < parallelism {
            if let Err(error) =
                restore_operator_state(worker, &self.name, parallelism, &mut operator_state)
            {
                worker.fail(&self.name, error);
            }
        }
        let participant = (worker.index < parallelism)
            .then(|| worker.checkpoint_participant(&self.name, parallelism))
            .flatten();
        let reader = if worker.index < parallelism {
            let ctx = SourceContext {
                subtask: worker.index,
                parallelism,
            };
            match catch_panic(|| {
                self.source
                    .create_reader_with_state(ctx, &mut operator_state)
            }) {
                Ok(reader) => Some(reader),
                Err(error) => {
                    worker.fail(&self.name, error);
                    None
                }
            }
        } else {
            None
        };
        let mut task = SourceTask {
            reader,
            buffer: Vec::with_capacity(POLL_BATCH),
            stamped: Vec::with_capacity(POLL_BATCH),
            job_start: worker.job_start,
            epoch_interval_nanos: worker.config.epoch_interval.as_nanos().max(1),
            max_epochs_in_flight: worker.config.max_epochs_in_flight,
            probe: worker.probe.clone(),
            failures: worker.failures(),
            metrics: Arc::clone(&self.metrics),
            name: self.name.clone(),
            job: worker.job_name.clone(),
            subtask: worker.index,
            finished: false,
            operator_state,
            barriers: BarrierTracker::new(worker.barriers),
            participant,
        };
        let mut builder = OperatorBuilder::new(self.name.clone(), scope);
        let (records_out, records) = builder.new_output::<Vec<Stamped<S::Item>>>();
        let (watermarks_out, watermarks) = builder.new_output::<Vec<WatermarkMessage>>();
        let mut records_out = OutputBuilder::<_, CapacityContainerBuilder<_>>::from(records_out);
        let mut watermarks_out =
            OutputBuilder::<_, CapacityContainerBuilder<_>>::from(watermarks_out);
        let activator = scope.activator_for(builder.operator_info().address);
        let index = worker.index;
        builder.build(move |capabilities| {
            let mut held = task.reader.is_some().then_some(capabilities);
            move |_frontiers| {
                let Some(caps) = held.as_mut() else {
                    return;
                };
                let (records_cap, rest) = caps.split_at_mut(1);
                let step = task.step(&mut records_cap[0], &mut records_out.activate());
                let epoch = *records_cap[0].time();
                if *rest[0].time() < epoch {
                    rest[0].downgrade(&epoch);
                }
                match step {
                    Step::Continue => activator.activate(),
                    Step::Paced => activator.activate_after(PACING_RETRY),
                    Step::Idle => activator.activate_after(IDLE_RETRY),
                    Step::Done => {
                        if task.finished {
                            // Flink's end of a split: the maximum watermark, so this subtask
                            // no longer holds back event time downstream.
                            watermarks_out
                                .activate()
                                .session(&rest[0])
                                .give(WatermarkMessage {
                                    from: index,
                                    status: WatermarkStatus::At(MAX_WATERMARK),
                                });
                        }
                        // Dropping the capabilities tells every downstream operator this
                        // input is done.
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

    fn parallelism(&self, job: usize) -> usize {
        self.parallelism.unwrap_or(job)
    }

    fn validate(&self, job: usize) -> Result<()> {
        check_parallelism(&self.name, self.parallelism, job)
    }

    fn set_parallelism(&mut self, parallelism: usize) -> Result<()> {
        self.parallelism = Some(parallelism);
        Ok(())
    }

    fn operator_name(&self) -> Option<&str> {
        Some(&self.name)
    }
}

enum Step {
    /// Run again as soon as possible.
    Continue,
    /// The sinks are too far behind: wait for them.
    Paced,
    /// The reader had nothing: poll again a little later.
    Idle,
    /// The input is exhausted (or the job failed): release the capability.
    Done,
}

/// The per-worker state of a source operator.
struct SourceTask<R: SourceReader> {
    reader: Option<R>,
    buffer: Vec<R::Item>,
    /// The records of `buffer`, without timestamps, as they are sent.
    stamped: Vec<Stamped<R::Item>>,
    job_start: std::time::Instant,
    epoch_interval_nanos: u128,
    max_epochs_in_flight: u64,
    probe: timely::dataflow::operators::probe::Handle<Epoch>,
    failures: Arc<crate::failure::FailureState>,
    metrics: Arc<OperatorMetrics>,
    name: String,
    job: String,
    subtask: usize,
    /// The reader reported the end of its input (not a failure or an abort).
    finished: bool,
    /// The subtask's operator state, which the reader's handles point into.
    operator_state: OperatorStateStore,
    barriers: BarrierTracker,
    /// The coordinator and this subtask's registration, when the job checkpoints.
    participant: Option<(Arc<Coordinator>, Participant)>,
}

type Output<'a, T> = timely::dataflow::operators::generic::OutputBuilderSession<
    'a,
    Epoch,
    CapacityContainerBuilder<Vec<Stamped<T>>>,
>;

impl<R: SourceReader> SourceTask<R>
where
    R::Item: 'static,
{
    /// The epoch of the current time slice.
    fn time_slice(&self) -> Epoch {
        (self.job_start.elapsed().as_nanos() / self.epoch_interval_nanos) as Epoch
    }

    /// Moves the capability forward with time, but never more than `max_epochs_in_flight`
    /// epochs past the sinks' frontier. Returns `false` when the source must wait: it is at
    /// that limit and time has moved beyond it, i.e. the sinks lag behind.
    ///
    /// Timely has no flow control: without this, a fast source would fill the channels with
    /// its whole input. Epochs in flight are at most `max_epochs_in_flight + 1`, each holding
    /// at most one `epoch_interval` of reading (or, while the sinks lag, one activation).
    fn advance_epoch(&mut self, cap: &mut timely::dataflow::operators::Capability<Epoch>) -> bool {
        let held = *cap.time();
        let frontier = self
            .probe
            .with_frontier(|f| f.first().copied())
            .unwrap_or(held);
        let limit = frontier.saturating_add(self.max_epochs_in_flight);
        let now = self.time_slice();
        let target = now.min(limit);
        if target > held {
            // Everything read so far went out at epochs before `target`: the position now
            // is the position at every barrier the capability passes.
            self.checkpoint_passed(target);
            cap.downgrade(&target);
            true
        } else {
            now <= limit
        }
    }

    /// Submits this subtask's position for every checkpoint whose last epoch is before
    /// `epoch`.
    fn checkpoint_passed(&mut self, epoch: Epoch) {
        let passed = self.barriers.passed(epoch);
        if passed.is_empty() {
            return;
        }
        let Some((coordinator, participant)) = self.participant.clone() else {
            return;
        };
        match self.snapshot() {
            Ok(parts) => {
                for id in passed {
                    coordinator.submit(&participant, id, parts.clone());
                }
            }
            Err(error) => self
                .failures
                .fail(&self.job, &self.name, self.subtask, error),
        }
    }

    /// The reader's position, as this subtask's part of a checkpoint.
    fn snapshot(&mut self) -> Result<Vec<Part>> {
        if let Some(reader) = self.reader.as_mut() {
            catch_panic(|| reader.snapshot_state())?;
        }
        let snapshot = self.operator_state.snapshot()?;
        let payload = postcard::to_stdvec(&snapshot).map_err(|e| {
            EddyError::Internal(format!("cannot encode the source's operator state: {e}"))
        })?;
        Ok(vec![Part {
            payload,
            kind: PartKind::Operator,
            key_groups: None,
            states: Vec::new(),
            shared: Vec::new(),
        }])
    }

    /// The reader has ended: its final position stands for every later checkpoint.
    fn finish_checkpoints(&mut self) {
        let Some((coordinator, participant)) = self.participant.clone() else {
            return;
        };
        match self.snapshot() {
            Ok(parts) => coordinator.finish_participant(&participant, parts),
            Err(error) => self
                .failures
                .fail(&self.job, &self.name, self.subtask, error),
        }
    }

    fn step(
        &mut self,
        cap: &mut timely::dataflow::operators::Capability<Epoch>,
        output: &mut Output<'_, R::Item>,
    ) -> Step {
        if self.failures.is_aborted() {
            return Step::Done;
        }
        if !self.advance_epoch(cap) {
            return Step::Paced;
        }
        let Some(reader) = self.reader.as_mut() else {
            return Step::Done;
        };
        for _ in 0..POLLS_PER_ACTIVATION {
            let buffer = &mut self.buffer;
            let status = match catch_panic(|| reader.poll(buffer, POLL_BATCH)) {
                Ok(status) => status,
                Err(error) => {
                    self.failures
                        .fail(&self.job, &self.name, self.subtask, error);
                    return Step::Done;
                }
            };
            let read = self.buffer.len();
            if read > 0 {
                self.metrics.add_in(read);
                self.metrics.add_out(read);
                self.stamped
                    .extend(self.buffer.drain(..).map(Stamped::unstamped));
                output.session(&*cap).give_container(&mut self.stamped);
                // The channel may hand back a recycled container: start from empty.
                self.stamped.clear();
                if self.stamped.capacity() < POLL_BATCH {
                    self.stamped = Vec::with_capacity(POLL_BATCH);
                }
            }
            if status == SourceStatus::Finished {
                if let Some(reader) = self.reader.as_mut() {
                    if let Err(error) = catch_panic(|| reader.snapshot_state()) {
                        self.failures
                            .fail(&self.job, &self.name, self.subtask, error);
                        return Step::Done;
                    }
                }
                self.reader = None;
                self.finished = true;
                self.finish_checkpoints();
                return Step::Done;
            }
            if read == 0 {
                return Step::Idle;
            }
        }
        Step::Continue
    }
}

/// Loads the operator state of subtask `worker.index` of the operator called `name` from the
/// restored checkpoint, redistributed by each state's mode if the parallelism changed.
pub(crate) fn restore_operator_state(
    worker: &WorkerContext,
    name: &str,
    parallelism: usize,
    store: &mut OperatorStateStore,
) -> Result<()> {
    let Some(restored) = worker.restored_state(name) else {
        return Ok(());
    };
    let decode = |bytes: &Vec<u8>| {
        postcard::from_bytes::<OperatorStateSnapshot>(bytes).map_err(|e| {
            EddyError::checkpoint(
                format!("operator state of \"{}\"", worker.uid_of(name)),
                format!("cannot decode: {e}"),
            )
        })
    };
    let old: Vec<OperatorStateSnapshot> = restored
        .operator
        .values()
        .map(decode)
        .collect::<Result<_>>()?;
    // Every subtask of an operator with state in the checkpoint is restored, even with no
    // elements of its own (more subtasks than split elements), so it knows it was.
    let mine = if old.is_empty() {
        None
    } else if restored.parallelism == parallelism && old.len() == parallelism {
        old.into_iter().nth(worker.index)
    } else {
        redistribute(old, parallelism).into_iter().nth(worker.index)
    };
    store.restore(mine.unwrap_or_default())
}
