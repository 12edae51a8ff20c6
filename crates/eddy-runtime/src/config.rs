//! The configuration of one job run.

use std::time::Duration;

use eddy_core::key_group::{default_max_parallelism, validate_parallelism};
use eddy_core::Result;

use crate::checkpoint::CheckpointConfig;
use crate::time::ProcessingClock;

/// Which keyed-state backend a job's keyed operators use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum StateBackendKind {
    /// Objects in per-key-group hash maps in memory ([`eddy_state::heap`]).
    #[default]
    Heap,
    /// Serialized bytes in one embedded RocksDB instance per keyed subtask
    /// ([`eddy_state::rocksdb`]), with the defaults of [`eddy_state::RocksDbConfig`].
    RocksDb {
        /// The directory under which every subtask's instance gets a directory of its own,
        /// deleted when the job ends; `None`: the OS temp directory.
        working_dir: Option<std::path::PathBuf>,
    },
}

/// How a job runs: its parallelism, key groups and flow-control bounds.
#[derive(Clone, Debug)]
pub struct JobConfig {
    /// Number of parallel subtasks (timely workers) of the job; the default of every operator.
    pub parallelism: usize,
    /// Number of key groups; `None` picks Flink's default for `parallelism` (at least 128).
    pub max_parallelism: Option<usize>,
    /// The keyed-state backend.
    pub state_backend: StateBackendKind,
    /// The length of an epoch (a timely timestamp). Epochs are slices of wall-clock time since
    /// the job started, the same on every worker, so an idle source advances with the others
    /// and never holds them back. Checkpoints will be taken at epoch boundaries.
    pub epoch_interval: Duration,
    /// How many epochs sources may run ahead of the sinks: bounds the records in flight to
    /// what the sources read in `epoch_interval * max_epochs_in_flight`.
    pub max_epochs_in_flight: u64,
    /// Where processing time comes from (processing-time timers, state TTL, source
    /// idleness): the wall clock unless a test injects a manual clock.
    pub clock: ProcessingClock,
    /// Checkpoints, restore and restarts.
    pub checkpoint: CheckpointConfig,
}

impl Default for JobConfig {
    fn default() -> Self {
        JobConfig {
            parallelism: 1,
            max_parallelism: None,
            state_backend: StateBackendKind::Heap,
            epoch_interval: Duration::from_millis(10),
            max_epochs_in_flight: 4,
            clock: ProcessingClock::default(),
            checkpoint: CheckpointConfig::default(),
        }
    }
}

impl JobConfig {
    /// A configuration with `parallelism` subtasks and defaults elsewhere.
    pub fn with_parallelism(parallelism: usize) -> Self {
        JobConfig {
            parallelism,
            ..JobConfig::default()
        }
    }

    /// The effective number of key groups.
    pub fn effective_max_parallelism(&self) -> usize {
        self.max_parallelism
            .unwrap_or_else(|| default_max_parallelism(self.parallelism))
    }

    /// Checks the configuration; every error names the setting.
    pub fn validate(&self) -> Result<()> {
        validate_parallelism(self.parallelism, self.effective_max_parallelism())?;
        if self.epoch_interval.is_zero() {
            return Err(eddy_core::EddyError::Config(
                "epoch_interval must be positive".into(),
            ));
        }
        let checkpoint = &self.checkpoint;
        if checkpoint.interval.is_some() && checkpoint.location.is_none() {
            return Err(eddy_core::EddyError::Config(
                "checkpoints need a location: set the checkpoint directory or URL \
                 (--checkpoint-dir)"
                    .into(),
            ));
        }
        if checkpoint.interval.is_some_and(|i| i.is_zero()) {
            return Err(eddy_core::EddyError::Config(
                "the checkpoint interval must be positive".into(),
            ));
        }
        if checkpoint.restore.is_some() && checkpoint.location.is_none() {
            let restore = checkpoint.restore.as_deref().unwrap_or_default();
            if restore == "latest" || restore.parse::<u64>().is_ok() {
                return Err(eddy_core::EddyError::Config(format!(
                    "--restore {restore} needs the checkpoint directory (--checkpoint-dir) to \
                     look in"
                )));
            }
        }
        if self.max_epochs_in_flight == 0 {
            return Err(eddy_core::EddyError::Config(
                "max_epochs_in_flight must be at least 1".into(),
            ));
        }
        Ok(())
    }
}
