//! The job graph: typed nodes that every worker turns into its part of the timely dataflow.
//!
//! The job program builds the graph once (on the "client", in Flink's terms). At execution,
//! every timely worker walks it from the sinks up and builds the same dataflow, cloning the
//! user's functions into its operators: one instance per parallel subtask.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use eddy_core::Result;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::{Scope, StreamVec};

use crate::checkpoint::{Barriers, Coordinator, OperatorRestore, Participant, RestoredCheckpoint};
use crate::config::JobConfig;
use crate::failure::FailureState;
use crate::metrics::OperatorMetrics;
use crate::time::{Stamped, WatermarkMessage};
use crate::Epoch;

/// A stream as one worker built it: its records and, on the same epochs, its watermarks
/// (see [`crate::time`]).
pub struct Built<'s, T> {
    /// The records, each with its event timestamp.
    pub records: StreamVec<'s, Epoch, Stamped<T>>,
    /// The watermarks the producing subtask sends downstream.
    pub watermarks: StreamVec<'s, Epoch, WatermarkMessage>,
}

/// What a node needs to know about the worker it is built on.
pub struct WorkerContext {
    /// The worker's index: the subtask index of every operator on it.
    pub index: usize,
    /// The number of workers: the job's parallelism.
    pub peers: usize,
    /// The number of key groups.
    pub max_parallelism: usize,
    /// The job's configuration.
    pub config: JobConfig,
    pub(crate) job_name: String,
    /// When the job started: epoch `e` covers `[start + e * interval, start + (e + 1) * interval)`.
    pub(crate) job_start: std::time::Instant,
    /// Frontier of the sinks' inputs on this worker; sources pace themselves against it.
    pub(crate) probe: ProbeHandle<Epoch>,
    pub(crate) failures: Arc<FailureState>,
    /// Which epochs end a checkpoint (disabled without checkpoints).
    pub(crate) barriers: Barriers,
    /// The job's checkpoint coordinator, when the job checkpoints.
    pub(crate) checkpoints: Option<Arc<Coordinator>>,
    /// The checkpoint the job restores from, if any.
    pub(crate) restored: Option<Arc<RestoredCheckpoint>>,
    /// Operator uids by operator name.
    pub(crate) uids: Arc<BTreeMap<String, String>>,
}

impl WorkerContext {
    /// The stable id of the operator called `name` in checkpoints: the uid the job gave it,
    /// or its (unique) name.
    pub fn uid_of<'a>(&'a self, name: &'a str) -> &'a str {
        self.uids.get(name).map_or(name, String::as_str)
    }

    /// Registers this worker's subtask of the stateful operator called `name` with the job's
    /// checkpoint coordinator; `None` when the job does not checkpoint.
    pub(crate) fn checkpoint_participant(
        &self,
        name: &str,
        parallelism: usize,
    ) -> Option<(Arc<Coordinator>, Participant)> {
        let coordinator = self.checkpoints.as_ref()?;
        let participant = coordinator.register(self.uid_of(name), name, self.index, parallelism);
        Some((Arc::clone(coordinator), participant))
    }

    /// The restored state of the operator called `name`, if the job restores a checkpoint
    /// that holds some.
    pub(crate) fn restored_state(&self, name: &str) -> Option<&OperatorRestore> {
        let uid = self.uid_of(name);
        self.restored.as_ref()?.operators.get(uid)
    }

    /// Records a failure of `operator` on this worker and aborts the job.
    pub fn fail(&self, operator: &str, error: eddy_core::EddyError) {
        self.failures
            .fail(&self.job_name, operator, self.index, error);
    }

    pub(crate) fn failures(&self) -> Arc<FailureState> {
        Arc::clone(&self.failures)
    }
}

/// A node of the job graph that produces a stream of `T`.
pub trait StreamNode<T>: Send + Sync {
    /// Builds this node (and, recursively, its inputs) into `scope` on one worker.
    fn build<'s>(&self, scope: Scope<'s, Epoch>, worker: &WorkerContext) -> Built<'s, T>;

    /// On how many workers (`0..n`) this stream carries records, given the job's parallelism.
    fn parallelism(&self, job_parallelism: usize) -> usize;

    /// Sets the parallelism of the operator that produces this stream, if it has its own.
    fn set_parallelism(&mut self, parallelism: usize) -> Result<()>;

    /// Checks this node and its inputs against the job's parallelism.
    fn validate(&self, job_parallelism: usize) -> Result<()>;

    /// The name of the operator that produces this stream, if it is one that can hold state
    /// (a source or a keyed operator; `None` for chained stateless operators).
    fn operator_name(&self) -> Option<&str> {
        None
    }
}

/// A terminal node: a sink and, recursively, everything upstream of it.
pub trait SinkNode: Send + Sync {
    /// Builds the sink and its inputs into `scope` on one worker.
    fn build<'s>(&self, scope: Scope<'s, Epoch>, worker: &WorkerContext);

    /// Sets the sink's parallelism.
    fn set_parallelism(&mut self, parallelism: usize);

    /// Checks the node's settings against the job's (e.g. parallelism bounds).
    fn validate(&self, config: &JobConfig) -> Result<()>;

    /// The sink operator's name.
    fn name(&self) -> &str;

    /// Before the job starts: commits the restored checkpoint's committables of this sink
    /// again (`committed`; empty without a restore) and discards uncommitted output.
    fn recover(&self, committed: &[String], job: &str) -> Result<()>;
}

/// A whole job: its sinks (each reaching back to its sources) and its operators' counters.
#[derive(Default)]
pub struct JobGraph {
    sinks: Vec<Box<dyn SinkNode>>,
    metrics: Vec<Arc<OperatorMetrics>>,
    /// Uids set with `uid(..)`, by operator name.
    uids: BTreeMap<String, String>,
}

impl JobGraph {
    /// An empty graph.
    pub fn new() -> Self {
        JobGraph::default()
    }

    /// Adds a sink; returns its index for [`sink_mut`](Self::sink_mut).
    pub fn add_sink(&mut self, sink: Box<dyn SinkNode>) -> usize {
        self.sinks.push(sink);
        self.sinks.len() - 1
    }

    /// The sink added as `index`.
    pub fn sink_mut(&mut self, index: usize) -> Option<&mut (dyn SinkNode + 'static)> {
        self.sinks.get_mut(index).map(|s| &mut **s)
    }

    /// Registers the counters of a new operator called `name`.
    pub fn register_operator(&mut self, name: &str) -> Arc<OperatorMetrics> {
        let metrics = Arc::new(OperatorMetrics::new(name));
        self.metrics.push(Arc::clone(&metrics));
        metrics
    }

    /// Gives the operator called `name` the stable id `uid` in checkpoints (Flink's
    /// `uid(..)`); without one, an operator's id is its name.
    pub fn set_uid(&mut self, name: &str, uid: &str) -> Result<()> {
        if let Some((other, _)) = self.uids.iter().find(|(n, u)| *u == uid && *n != name) {
            return Err(eddy_core::EddyError::Config(format!(
                "uid \"{uid}\" is given to two operators, \"{other}\" and \"{name}\"; uids \
                 must be unique"
            )));
        }
        self.uids.insert(name.to_string(), uid.to_string());
        Ok(())
    }

    /// Operator uids set with [`set_uid`](Self::set_uid), by name.
    pub(crate) fn uids(&self) -> &BTreeMap<String, String> {
        &self.uids
    }

    /// The ids of every operator in checkpoints: its uid, or its name.
    pub(crate) fn operator_ids(&self) -> BTreeSet<String> {
        self.metrics
            .iter()
            .map(|m| m.name().to_string())
            .map(|name| self.uids.get(&name).cloned().unwrap_or(name))
            .collect()
    }

    pub(crate) fn sinks(&self) -> &[Box<dyn SinkNode>] {
        &self.sinks
    }

    pub(crate) fn metrics(&self) -> &[Arc<OperatorMetrics>] {
        &self.metrics
    }
}
