//! The stream execution environment: where a job is defined and run.

use std::cell::RefCell;
use std::rc::Rc;

use clap::Parser;
use eddy_core::{EddyError, Result};
use eddy_runtime::{JobConfig, JobGraph, JobResult, Source, SourceNode, StateBackendKind};

use crate::flags::{JobCommandLine, JobFlags};
use crate::stream::DataStream;

/// Defines a job (sources, transformations, sinks) and executes it.
///
/// Building a job only records it; [`execute`](Self::execute) runs it on
/// `parallelism` timely workers embedded in this process and returns when every bounded source
/// is exhausted and every record has reached its sink.
pub struct StreamExecutionEnvironment {
    pub(crate) inner: Rc<RefCell<EnvInner>>,
}

pub(crate) struct EnvInner {
    pub(crate) config: JobConfig,
    pub(crate) graph: JobGraph,
    /// Definition errors, reported by `execute` (builder methods stay chainable).
    pub(crate) errors: Vec<EddyError>,
    names: Vec<String>,
}

impl EnvInner {
    /// A unique operator name: `name`, or `name-2`, `name-3`, ... if it is taken.
    pub(crate) fn unique_name(&mut self, name: &str) -> String {
        let mut candidate = name.to_string();
        let mut n = 1;
        while self.names.contains(&candidate) {
            n += 1;
            candidate = format!("{name}-{n}");
        }
        self.names.push(candidate.clone());
        candidate
    }
}

impl StreamExecutionEnvironment {
    /// An environment running jobs with `config`.
    pub fn new(config: JobConfig) -> Self {
        StreamExecutionEnvironment {
            inner: Rc::new(RefCell::new(EnvInner {
                config,
                graph: JobGraph::new(),
                errors: Vec::new(),
                names: Vec::new(),
            })),
        }
    }

    /// An environment configured from the standard job flags of this process's command line
    /// (`--parallelism`, `--max-parallelism`, ...). Prints help or a usage error and exits on
    /// bad flags, like any `clap` program.
    pub fn from_args() -> Result<Self> {
        Self::from_flags(&JobCommandLine::parse().flags)
    }

    /// An environment configured from already-parsed job flags.
    pub fn from_flags(flags: &JobFlags) -> Result<Self> {
        Ok(Self::new(flags.to_config()?))
    }

    /// The job's configuration.
    pub fn config(&self) -> JobConfig {
        self.inner.borrow().config.clone()
    }

    /// Sets the default parallelism of the job's operators (its number of timely workers).
    pub fn set_parallelism(&self, parallelism: usize) -> &Self {
        self.inner.borrow_mut().config.parallelism = parallelism;
        self
    }

    /// Sets the number of key groups.
    pub fn set_max_parallelism(&self, max_parallelism: usize) -> &Self {
        self.inner.borrow_mut().config.max_parallelism = Some(max_parallelism);
        self
    }

    /// Sets the keyed-state backend of the job's keyed operators (`--state-backend`):
    ///
    /// ```
    /// use eddy::{JobConfig, StateBackendKind, StreamExecutionEnvironment};
    ///
    /// let env = StreamExecutionEnvironment::new(JobConfig::default());
    /// env.state_backend(StateBackendKind::rocksdb());
    /// assert_eq!(env.config().state_backend, StateBackendKind::rocksdb());
    /// ```
    pub fn state_backend(&self, backend: StateBackendKind) -> &Self {
        self.inner.borrow_mut().config.state_backend = backend;
        self
    }

    /// Checkpoints the job every `interval` into `location` (a directory, `file:///...`,
    /// `s3://bucket/prefix`, `gs://...`, `az://...`; Flink's `enableCheckpointing`):
    ///
    /// ```
    /// use std::time::Duration;
    /// use eddy::{JobConfig, StreamExecutionEnvironment};
    ///
    /// let env = StreamExecutionEnvironment::new(JobConfig::default());
    /// env.enable_checkpointing(Duration::from_secs(2), "/var/lib/eddy/checkpoints");
    /// assert_eq!(env.config().checkpoint.interval, Some(Duration::from_secs(2)));
    /// ```
    pub fn enable_checkpointing(&self, interval: std::time::Duration, location: &str) -> &Self {
        let mut inner = self.inner.borrow_mut();
        inner.config.checkpoint.interval = Some(interval);
        inner.config.checkpoint.location = Some(location.to_string());
        self
    }

    /// A stream reading from `source`, as an operator called "source".
    pub fn from_source<S: Source>(&self, source: S) -> DataStream<S::Item> {
        self.from_source_named("source", source)
    }

    /// A stream reading from `source`, as an operator called `name`.
    pub fn from_source_named<S: Source>(&self, name: &str, source: S) -> DataStream<S::Item> {
        let mut inner = self.inner.borrow_mut();
        let name = inner.unique_name(name);
        let metrics = inner.graph.register_operator(&name);
        let node = SourceNode::new(name, source, metrics);
        DataStream::new(Rc::clone(&self.inner), Box::new(node))
    }

    /// Runs the job defined so far and waits for it to finish.
    ///
    /// The environment is empty afterwards and can define the next job.
    pub fn execute(&self, job_name: &str) -> Result<JobResult> {
        let (graph, config, errors) = {
            let mut inner = self.inner.borrow_mut();
            inner.names.clear();
            (
                std::mem::take(&mut inner.graph),
                inner.config.clone(),
                std::mem::take(&mut inner.errors),
            )
        };
        if let Some(error) = errors.into_iter().next() {
            return Err(error);
        }
        eddy_runtime::execute(job_name, graph, &config)
    }
}
