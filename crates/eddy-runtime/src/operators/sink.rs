//! The sink operator: hands batches to a [`Sink`], at its own parallelism.

use std::marker::PhantomData;
use std::sync::Arc;

use eddy_core::{Data, EddyError, Result};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Probe;
use timely::dataflow::Scope;

use timely::dataflow::operators::generic::{InputHandleCore, OutputBuilderSession};
use timely::progress::frontier::MutableAntichain;

use crate::checkpoint::{
    encode_committables, BarrierTracker, Coordinator, Part, PartKind, Participant, FINAL_CHECKPOINT,
};
use crate::config::JobConfig;
use crate::failure::{catch_panic, FailureState};
use crate::graph::{SinkNode, StreamNode, WorkerContext};
use crate::metrics::OperatorMetrics;
use crate::operators::check_parallelism;
use crate::sink::{Sink, SinkContext};
use crate::time::Stamped;
use crate::Epoch;

/// A sink in the job graph.
pub struct SinkOperatorNode<T, S> {
    name: String,
    input: Box<dyn StreamNode<T>>,
    sink: S,
    parallelism: Option<usize>,
    metrics: Arc<OperatorMetrics>,
    _records: PhantomData<fn(T)>,
}

impl<T: Data, S: Sink<T>> SinkOperatorNode<T, S> {
    /// Writes every record of `input` to `sink`.
    pub fn new(
        name: impl Into<String>,
        input: Box<dyn StreamNode<T>>,
        sink: S,
        metrics: Arc<OperatorMetrics>,
    ) -> Self {
        SinkOperatorNode {
            name: name.into(),
            input,
            sink,
            parallelism: None,
            metrics,
            _records: PhantomData,
        }
    }
}

impl<T: Data, S: Sink<T>> SinkNode for SinkOperatorNode<T, S> {
    fn build<'s>(&self, scope: Scope<'s, Epoch>, worker: &WorkerContext) {
        // A sink has no use for watermarks; only the records go on.
        let input = self.input.build(scope, worker).records;
        let parallelism = self.parallelism.unwrap_or(worker.peers);
        let mut sink = (worker.index < parallelism).then(|| self.sink.clone());
        let checkpoints = worker.checkpoints.as_ref();
        // Every process needs the committer: in a cluster, each process publishes its own
        // subtasks' output (the first registration per process wins, the rest are ignored).
        if let Some(coordinator) = checkpoints {
            let committer = self.sink.clone();
            coordinator.register_committer(
                worker.uid_of(&self.name),
                Box::new(move |committables| committer.commit(committables)),
            );
        }
        let participant = sink
            .is_some()
            .then(|| worker.checkpoint_participant(&self.name, parallelism))
            .flatten();
        if let Some(s) = sink.as_mut() {
            let ctx = SinkContext {
                subtask: worker.index,
                parallelism,
                exactly_once: participant.is_some(),
            };
            if let Err(error) = catch_panic(|| s.open(ctx)) {
                worker.fail(&self.name, error);
                sink = None;
            }
        }
        let mut task = SinkTask {
            sink,
            _records: PhantomData,
            metrics: Arc::clone(&self.metrics),
            failures: worker.failures(),
            job: worker.job_name.clone(),
            name: self.name.clone(),
            subtask: worker.index,
            values: Vec::new(),
            staged: Vec::new(),
            barriers: BarrierTracker::new(worker.barriers),
            participant,
        };
        type Out<'a> = OutputBuilderSession<'a, Epoch, CapacityContainerBuilder<Vec<()>>>;
        let done = if self.input.parallelism(worker.peers) <= parallelism {
            input.unary_frontier(Pipeline, &self.name, move |_cap, _info| {
                move |(input, frontier), _output: &mut Out<'_>| task.activate(input, frontier)
            })
        } else {
            // Rebalance round-robin onto the sink's `parallelism` workers, as Flink does when
            // an operator's parallelism differs from its input's.
            let mut next = worker.index;
            let route = move |_: &Stamped<T>| {
                next = (next + 1) % parallelism;
                next as u64
            };
            input.unary_frontier(Exchange::new(route), &self.name, move |_cap, _info| {
                move |(input, frontier), _output: &mut Out<'_>| task.activate(input, frontier)
            })
        };
        done.probe_with(&worker.probe);
    }

    fn set_parallelism(&mut self, parallelism: usize) {
        self.parallelism = Some(parallelism);
    }

    fn validate(&self, config: &JobConfig) -> Result<()> {
        check_parallelism(&self.name, self.parallelism, config.parallelism)?;
        self.input.validate(config.parallelism)
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn recover(&self, committed: &[String], job: &str) -> Result<()> {
        let in_sink = |e: EddyError| {
            EddyError::Job(Box::new(eddy_core::JobFailure {
                job: job.to_string(),
                operator: self.name.clone(),
                subtask: 0,
                source: e,
            }))
        };
        if !committed.is_empty() {
            self.sink.commit(committed).map_err(in_sink)?;
        }
        self.sink.recover(committed).map_err(in_sink)
    }
}

/// The per-worker state of a sink operator.
struct SinkTask<T, S> {
    /// `None` on workers above the sink's parallelism, and after a failure or `close()`.
    sink: Option<S>,
    metrics: Arc<OperatorMetrics>,
    failures: Arc<FailureState>,
    job: String,
    name: String,
    subtask: usize,
    /// The values of a batch, without their timestamps, as the sink receives them.
    values: Vec<T>,
    /// Batches of epochs after the next checkpoint's barrier, held back until it passes.
    staged: Vec<(Epoch, Vec<Stamped<T>>)>,
    barriers: BarrierTracker,
    /// The coordinator and this subtask's registration, when the job checkpoints.
    participant: Option<(Arc<Coordinator>, Participant)>,
    _records: PhantomData<fn(T)>,
}

impl<T: Data, S: Sink<T>> SinkTask<T, S> {
    fn activate<P>(
        &mut self,
        input: &mut InputHandleCore<Epoch, Vec<Stamped<T>>, P>,
        frontier: &MutableAntichain<Epoch>,
    ) where
        P: timely::communication::Pull<timely::dataflow::channels::Message<Epoch, Vec<Stamped<T>>>>,
    {
        input.for_each(|cap, data| {
            let epoch = cap.least().copied().unwrap_or_default();
            self.staged.push((epoch, std::mem::take(data)));
        });
        if self.sink.is_none() {
            self.staged.clear();
            return;
        }
        // A stable sort: one sender's batches of an epoch keep their order.
        self.staged.sort_by_key(|(epoch, _)| *epoch);
        let frontier = frontier.frontier().first().copied();
        loop {
            let limit = frontier.and(self.barriers.hold_after());
            self.write_until(limit);
            let Some(hold) = limit else { break };
            if frontier.is_none_or(|f| f <= hold) {
                break;
            }
            let passed = self.barriers.passed(hold + 1);
            for id in passed {
                self.pre_commit(id);
            }
        }
        if frontier.is_none() {
            self.pre_commit(FINAL_CHECKPOINT);
            if let Some(mut sink) = self.sink.take() {
                if let Err(error) = catch_panic(|| sink.close()) {
                    self.fail(error);
                }
            }
        }
    }

    /// Writes the staged batches of epochs up to `limit` (all if `None`).
    fn write_until(&mut self, limit: Option<Epoch>) {
        let ready = self
            .staged
            .partition_point(|(epoch, _)| limit.is_none_or(|l| *epoch <= l));
        let batches: Vec<_> = self.staged.drain(..ready).collect();
        for (_, mut batch) in batches {
            let Some(sink) = self.sink.as_mut() else {
                return;
            };
            self.metrics.add_in(batch.len());
            let values = &mut self.values;
            values.clear();
            values.extend(batch.drain(..).map(|record| record.value));
            if let Err(error) = catch_panic(|| sink.write_batch(values)) {
                self.fail(error);
                return;
            }
        }
    }

    /// Phase one of the two-phase commit for checkpoint `id`: the sink stages what it wrote,
    /// and its committables go into the checkpoint.
    fn pre_commit(&mut self, id: u64) {
        let (Some(sink), Some((coordinator, participant))) =
            (self.sink.as_mut(), self.participant.as_ref())
        else {
            return;
        };
        let part = catch_panic(|| sink.pre_commit()).and_then(|committables| {
            Ok(Part {
                payload: encode_committables(&committables)?,
                kind: PartKind::Committables,
                key_groups: None,
                states: Vec::new(),
                shared: Vec::new(),
            })
        });
        match part {
            Ok(part) => coordinator.submit(participant, id, vec![part]),
            Err(error) => self.fail(error),
        }
    }

    fn fail(&mut self, error: EddyError) {
        self.failures
            .fail(&self.job, &self.name, self.subtask, error);
        self.sink = None;
    }
}
