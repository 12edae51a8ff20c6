//! Runs a job graph on timely dataflow workers and reports the outcome.

use std::sync::Arc;
use std::time::{Duration, Instant};

use eddy_checkpoint::Checkpoints;
use eddy_core::{EddyError, Result};
use timely::dataflow::operators::probe::Handle as ProbeHandle;

use crate::checkpoint::{
    Barriers, CheckpointStats, Coordinator, CoordinatorSettings, RestartStrategy,
    RestoredCheckpoint,
};
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
    /// Record counts per operator, in the order the operators were defined (summed over
    /// restarts).
    pub operators: Vec<OperatorSummary>,
    /// The checkpoints completed by the last run, in order.
    pub checkpoints: Vec<CheckpointStats>,
    /// How often the job restarted after a failure.
    pub restarts: u32,
    /// The job was stopped with a savepoint (`request_stop_with_savepoint`) before its input
    /// ended: where that savepoint is. `None` for a job that ran to its end.
    pub stopped_with_savepoint: Option<String>,
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
/// The first error of any operator, or a panic on any worker, stops all workers. With a
/// restart strategy and checkpoints, the job then restarts from its latest completed
/// checkpoint; otherwise (or once the attempts are used up) the error is returned as
/// [`EddyError::Job`], naming the operator and the subtask.
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
    let start = Instant::now();
    let mut restore = config.checkpoint.restore.clone();
    let mut restarts = 0u32;
    loop {
        match run_attempt(job_name, &graph, config, restore.as_deref(), start) {
            Ok(mut result) => {
                result.restarts = restarts;
                return Ok(result);
            }
            Err(error) => {
                let RestartStrategy::FixedDelay { attempts, delay } = config.checkpoint.restart
                else {
                    return Err(error);
                };
                // The processes of a cluster fail together; their supervisor restarts them all
                // (`JobConfig::validate` refuses in-process restarts there).
                if config.cluster.as_ref().is_some_and(|c| c.processes > 1) {
                    return Err(error);
                }
                if restarts >= attempts || config.checkpoint.location.is_none() {
                    return Err(error);
                }
                restarts += 1;
                eprintln!(
                    "eddy: job \"{job_name}\" failed ({error}); restart {restarts} of {attempts} \
                     from the latest checkpoint in {delay:?}"
                );
                std::thread::sleep(delay);
                // Without a completed checkpoint yet, the restart begins from scratch.
                restore = latest_completed(config)?.map(|id| id.to_string());
            }
        }
    }
}

/// The id of the newest completed checkpoint under the job's checkpoint location.
fn latest_completed(config: &JobConfig) -> Result<Option<u64>> {
    let Some(location) = config.checkpoint.location.as_deref() else {
        return Ok(None);
    };
    let latest = Checkpoints::open(location)?.latest()?;
    Ok(latest.map(|info| info.metadata.checkpoint_id))
}

/// Reads the checkpoint or savepoint a restore argument refers to.
fn load_restore(config: &JobConfig, what: &str) -> Result<RestoredCheckpoint> {
    let root = match config.checkpoint.location.as_deref() {
        Some(location) => Some(Checkpoints::open(location)?),
        None => None,
    };
    RestoredCheckpoint::load(root.as_ref(), what, state_dir(config))
}

/// Where incremental RocksDB parts are rebuilt on disk to be read (by a restore or a
/// savepoint): next to the RocksDB instances (`--state-dir`) if configured, which is where
/// room for state is; the OS temp directory otherwise.
fn state_dir(config: &JobConfig) -> Option<&std::path::Path> {
    match &config.state_backend {
        crate::StateBackendKind::RocksDb { working_dir, .. } => working_dir.as_deref(),
        crate::StateBackendKind::Heap => None,
    }
}

/// One run of the job, restoring `restore` first if given.
fn run_attempt(
    job_name: &str,
    graph: &Arc<JobGraph>,
    config: &JobConfig,
    restore: Option<&str>,
    start: Instant,
) -> Result<JobResult> {
    let max_parallelism = config.effective_max_parallelism();
    let restored = match restore {
        Some(what) => {
            let restored = load_restore(config, what)?;
            restored.check_against(
                max_parallelism,
                &graph.operator_ids(),
                config.checkpoint.allow_non_restored_state,
                what,
            )?;
            Some(Arc::new(restored))
        }
        None => None,
    };
    for sink in graph.sinks() {
        // Publishes what the restored checkpoint had pre-committed (its commit may not have
        // happened before the crash) and discards output no checkpoint covers.
        let committables = restored.as_ref().and_then(|r| {
            let uid = graph
                .uids()
                .get(sink.name())
                .map_or(sink.name(), String::as_str);
            r.operators.get(uid).map(|o| o.committables.as_slice())
        });
        sink.recover(committables.unwrap_or_default(), job_name)?;
    }
    let failures = Arc::new(FailureState::default());
    let barriers = Barriers::new(&config.checkpoint, config.epoch_interval);
    let (checkpoints, stats) = match (&config.checkpoint.location, barriers.enabled()) {
        (Some(location), true) => {
            let checkpoints = Checkpoints::open(location)?;
            // Ids keep growing across runs into the same directory.
            let id_base = checkpoints.next_checkpoint_id()?.saturating_sub(1);
            let (coordinator, stats) = Coordinator::start(
                checkpoints,
                CoordinatorSettings {
                    job: job_name.to_string(),
                    workers: config
                        .cluster
                        .as_ref()
                        .map_or(config.parallelism, |c| c.workers_per_process),
                    cluster: config.cluster.as_ref().map(|c| (c.process_id, c.processes)),
                    max_parallelism,
                    retained: config.checkpoint.retained,
                    barriers,
                    id_base,
                    savepoint_on_finish: config.checkpoint.savepoint_on_finish.clone(),
                    explicit_uids: graph.uids().values().cloned().collect(),
                    scratch_dir: state_dir(config).map(std::path::Path::to_path_buf),
                },
                {
                    let failures = Arc::clone(&failures);
                    let job = job_name.to_string();
                    move |error| failures.fail(&job, "checkpoint coordinator", 0, error)
                },
                {
                    let failures = Arc::clone(&failures);
                    move |savepoint| failures.stop(savepoint)
                },
            )?;
            (Some(coordinator), Some(stats))
        }
        _ => (None, None),
    };
    // Set by the first worker to start: in a cluster that is after every peer has connected,
    // so the processes' epoch clocks start within milliseconds of each other, however long
    // the slowest process took to start.
    let attempt_start = Arc::new(std::sync::OnceLock::<Instant>::new());
    let workers_started = Arc::clone(&attempt_start);

    let worker_graph = Arc::clone(graph);
    let worker_failures = Arc::clone(&failures);
    let worker_config = config.clone();
    let worker_checkpoints = checkpoints.clone();
    let uids = Arc::new(graph.uids().clone());
    let job = job_name.to_string();
    let work = move |worker: &mut timely::worker::Worker| {
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
            job_start: *attempt_start.get_or_init(Instant::now),
            probe: ProbeHandle::<Epoch>::new(),
            failures: Arc::clone(&worker_failures),
            barriers,
            checkpoints: worker_checkpoints.clone(),
            restored: restored.clone(),
            uids: Arc::clone(&uids),
        };
        let dataflow = worker.next_dataflow_index();
        worker.dataflow::<Epoch, _, _>(|scope| {
            for sink in worker_graph.sinks() {
                sink.build(scope, &context);
            }
        });
        if let Some(coordinator) = &context.checkpoints {
            coordinator.worker_built();
        }
        while !context.probe.done() {
            if worker_failures.is_aborted() {
                // Peers may never make progress again: stop scheduling this dataflow at once.
                worker.drop_dataflow(dataflow);
                break;
            }
            worker.step_or_park(Some(PARK_TIMEOUT));
        }
    };
    let network_lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let guards = match &config.cluster {
        None => timely::execute(timely::Config::process(config.parallelism), work),
        Some(cluster) => {
            // Blocks until every peer has connected (or names the one that did not).
            let started = crate::cluster::start_networking(cluster, Arc::clone(&network_lost));
            let (allocators, network) = match started {
                Ok(started) => started,
                Err(error) => {
                    if let Some(coordinator) = &checkpoints {
                        coordinator.cancel();
                        let _ = coordinator.finish();
                    }
                    return Err(error.into());
                }
            };
            timely::execute::execute_from(
                allocators,
                network,
                timely::WorkerConfig::default(),
                work,
            )
        }
    }
    .map_err(|e| EddyError::Config(format!("cannot start timely workers: {e}")))?;

    // Also joins timely's network threads (in a cluster).
    let joined = guards.join();
    let failed = failures.is_aborted() || joined.iter().any(Result::is_err);
    if let (Some(cluster), true) = (&config.cluster, failed) {
        if network_lost.load(std::sync::atomic::Ordering::Acquire) {
            if let Some(coordinator) = &checkpoints {
                coordinator.cancel();
                // Its error is a consequence of the lost peer.
                let _ = coordinator.finish();
            }
            return Err(eddy_core::ClusterError::PeerLost {
                process_id: cluster.process_id,
            }
            .into());
        }
    }
    if let (Some(coordinator), true) = (&checkpoints, failed) {
        // A coordinator waiting for other processes' parts would wait for a job that is over.
        coordinator.cancel();
    }
    // A cluster process may wait a while for its peers: its job time starts once they are
    // all connected (it never restarts in-process, so nothing else is left out).
    let duration = match (&config.cluster, workers_started.get()) {
        (Some(_), Some(started)) => started.elapsed(),
        _ => start.elapsed(),
    };
    // The final checkpoint (and the sinks' last commit) is written before the job returns.
    let checkpoint_result = match &checkpoints {
        Some(coordinator) => coordinator.finish(),
        None => Ok(()),
    };
    if let Some(failure) = failures.take_first() {
        return Err(EddyError::Job(Box::new(failure)));
    }
    if let Some(Err(panic)) = joined.into_iter().find(Result::is_err) {
        return Err(EddyError::Internal(format!("a worker failed: {panic}")));
    }
    checkpoint_result?;
    Ok(JobResult {
        job_name: job_name.to_string(),
        parallelism: config.parallelism,
        max_parallelism,
        duration,
        operators: graph.metrics().iter().map(|m| m.summary()).collect(),
        checkpoints: stats
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .unwrap_or_default(),
        restarts: 0,
        stopped_with_savepoint: failures.stopped_with(),
    })
}
