//! Runs a job graph on timely dataflow workers and reports the outcome.

use std::sync::Arc;
use std::time::{Duration, Instant};

use eddy_core::{EddyError, Result};
use timely::dataflow::operators::probe::Handle as ProbeHandle;

use crate::config::JobConfig;
use crate::failure::{AbortOnPanic, FailureState};
use crate::graph::{JobGraph, WorkerContext};
use crate::metrics::OperatorSummary;
use crate::Epoch;

/// How long an idle worker parks before it checks whether a peer has failed.
const PARK_TIMEOUT: Duration = Duration::from_millis(5);

/// The outcome of a finished job.
#[derive(Clone, Debug)]
pub struct JobResult {
    /// The job's name.
    pub job_name: String,
    /// The job's parallelism (timely workers).
    pub parallelism: usize,
    /// The number of key groups.
    pub max_parallelism: usize,
    /// From the start of execution to the last record at the sinks.
    pub duration: Duration,
    /// Record counts per operator, in the order the operators were defined.
    pub operators: Vec<OperatorSummary>,
}

impl JobResult {
    /// The counters of the first operator called `name`.
    pub fn operator(&self, name: &str) -> Option<&OperatorSummary> {
        self.operators.iter().find(|o| o.name == name)
    }

    /// Records per second over the job's duration, for `records`.
    pub fn throughput(&self, records: u64) -> f64 {
        records as f64 / self.duration.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

/// Executes `graph` with `config` on `config.parallelism` timely worker threads and waits for
/// the job to finish (every source exhausted and every record at its sink).
///
/// The first error of any operator, or a panic on any worker, stops all workers; it is returned
/// as [`EddyError::Job`], naming the operator and the subtask.
pub fn execute(job_name: &str, graph: JobGraph, config: &JobConfig) -> Result<JobResult> {
    config.validate()?;
    for sink in graph.sinks() {
        sink.validate(config)?;
    }
    if graph.sinks().is_empty() {
        return Err(EddyError::Config(format!(
            "job \"{job_name}\" has no sink: add one with `sink(..)` or `for_each(..)`"
        )));
    }
    let graph = Arc::new(graph);
    let failures = Arc::new(FailureState::default());
    let max_parallelism = config.effective_max_parallelism();
    let start = Instant::now();

    let worker_graph = Arc::clone(&graph);
    let worker_failures = Arc::clone(&failures);
    let worker_config = config.clone();
    let job = job_name.to_string();
    let timely_config = timely::Config::process(config.parallelism);
    let guards = timely::execute(timely_config, move |worker| {
        let _abort_on_panic = AbortOnPanic {
            failures: Arc::clone(&worker_failures),
            job: job.clone(),
            worker: worker.index(),
        };
        let context = WorkerContext {
            index: worker.index(),
            peers: worker.peers(),
            max_parallelism,
            config: worker_config.clone(),
            job_name: job.clone(),
            job_start: start,
            probe: ProbeHandle::<Epoch>::new(),
            failures: Arc::clone(&worker_failures),
        };
        let dataflow = worker.next_dataflow_index();
        worker.dataflow::<Epoch, _, _>(|scope| {
            for sink in worker_graph.sinks() {
                sink.build(scope, &context);
            }
        });
        while !context.probe.done() {
            if worker_failures.is_aborted() {
                // Peers may never make progress again: stop scheduling this dataflow at once.
                worker.drop_dataflow(dataflow);
                break;
            }
            worker.step_or_park(Some(PARK_TIMEOUT));
        }
    })
    .map_err(|e| EddyError::Config(format!("cannot start timely workers: {e}")))?;

    let joined = guards.join();
    let duration = start.elapsed();
    if let Some(failure) = failures.take_first() {
        return Err(EddyError::Job(Box::new(failure)));
    }
    if let Some(Err(panic)) = joined.into_iter().find(Result::is_err) {
        return Err(EddyError::Internal(format!("a worker failed: {panic}")));
    }
    Ok(JobResult {
        job_name: job_name.to_string(),
        parallelism: config.parallelism,
        max_parallelism,
        duration,
        operators: graph.metrics().iter().map(|m| m.summary()).collect(),
    })
}
