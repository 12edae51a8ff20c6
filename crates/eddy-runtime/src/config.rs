//! The configuration of one job run.

use eddy_core::key_group::{default_max_parallelism, validate_parallelism};
use eddy_core::Result;

/// Which keyed-state backend a job's keyed operators use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StateBackendKind {
    /// Objects in per-key-group hash maps in memory ([`eddy_state::heap`]).
    #[default]
    Heap,
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
    /// Records a source subtask emits before it advances to the next epoch.
    pub epoch_records: usize,
    /// How many epochs sources may run ahead of the sinks (bounds in-flight records to about
    /// `parallelism * epoch_records * max_epochs_in_flight`).
    pub max_epochs_in_flight: u64,
}

impl Default for JobConfig {
    fn default() -> Self {
        JobConfig {
            parallelism: 1,
            max_parallelism: None,
            state_backend: StateBackendKind::Heap,
            epoch_records: 16 * 1024,
            max_epochs_in_flight: 4,
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
        if self.epoch_records == 0 {
            return Err(eddy_core::EddyError::Config(
                "epoch_records must be at least 1".into(),
            ));
        }
        if self.max_epochs_in_flight == 0 {
            return Err(eddy_core::EddyError::Config(
                "max_epochs_in_flight must be at least 1".into(),
            ));
        }
        Ok(())
    }
}
