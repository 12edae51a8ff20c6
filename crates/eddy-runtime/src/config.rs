//! The configuration of one job run.

use std::time::Duration;

use eddy_core::key_group::{default_max_parallelism, validate_parallelism};
use eddy_core::{ClusterError, Result};

use crate::checkpoint::{CheckpointConfig, RestartStrategy};
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
        /// The most entries of each state's write-back object cache per subtask
        /// ([`eddy_state::RocksDbConfig::object_cache_entries`]); 0: no cache.
        object_cache_entries: usize,
        /// Keep timers on the heap instead of in RocksDB
        /// ([`eddy_state::RocksDbConfig::heap_timers`]).
        heap_timers: bool,
        /// Take full checkpoints instead of incremental ones
        /// ([`eddy_state::RocksDbConfig::incremental_checkpoints`]).
        full_checkpoints: bool,
        /// Bytes of the process's RocksDB memory budget: block cache and memtables of every
        /// instance ([`eddy_state::RocksDbConfig::memory_budget`]).
        memory_budget: usize,
        /// Hash-indexed memtables with in-place updates
        /// ([`eddy_state::RocksDbConfig::hash_memtables`]): faster point access, slower
        /// checkpoints.
        hash_memtables: bool,
    },
}

impl StateBackendKind {
    /// The RocksDB backend with its defaults: the OS temp directory, the default object
    /// cache and memory budget, timers in RocksDB and incremental checkpoints ([`eddy_state::RocksDbConfig`]).
    pub fn rocksdb() -> Self {
        StateBackendKind::RocksDb {
            working_dir: None,
            object_cache_entries: eddy_state::RocksDbConfig::default().object_cache_entries,
            heap_timers: eddy_state::RocksDbConfig::default().heap_timers,
            full_checkpoints: !eddy_state::RocksDbConfig::default().incremental_checkpoints,
            memory_budget: eddy_state::RocksDbConfig::default().memory_budget,
            hash_memtables: eddy_state::RocksDbConfig::default().hash_memtables,
        }
    }
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
    /// Run as one process of a multi-process job (timely's cluster mode); `None`: every
    /// worker in this process (the default).
    pub cluster: Option<ClusterConfig>,
}

/// This process's place in a job that runs as several processes (timely's `Config::Cluster`).
///
/// Every process runs the same job with the same flags except `process_id`. The job's
/// parallelism is `processes * workers_per_process`; the worker `w` of process `p` is subtask
/// `p * workers_per_process + w` (timely's global worker index), so key groups, checkpoint
/// parts and restores are laid out exactly as for one process of the same parallelism.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Number of processes.
    pub processes: usize,
    /// This process's id, `0..processes`. Process 0 completes checkpoints (writes `_metadata`).
    pub process_id: usize,
    /// Worker threads in each process.
    pub workers_per_process: usize,
    /// `host:port` of every process, in process-id order; this process listens on its own.
    pub addresses: Vec<String>,
    /// How long to wait for every peer to connect before failing with the missing peer named.
    pub connect_timeout: Duration,
}

impl ClusterConfig {
    /// The default time to wait for peers.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

    /// The job's parallelism: every worker of every process.
    pub fn parallelism(&self) -> usize {
        self.processes.saturating_mul(self.workers_per_process)
    }

    /// Checks the process id, the address list and the worker count.
    pub fn validate(&self) -> std::result::Result<(), ClusterError> {
        if self.processes == 0 {
            return Err(ClusterError::NoProcesses);
        }
        if self.workers_per_process == 0 {
            return Err(ClusterError::NoWorkers);
        }
        if self.process_id >= self.processes {
            return Err(ClusterError::ProcessIdOutOfRange {
                process_id: self.process_id,
                processes: self.processes,
            });
        }
        if self.addresses.len() != self.processes {
            return Err(ClusterError::AddressCount {
                addresses: self.addresses.len(),
                processes: self.processes,
            });
        }
        for (process_id, address) in self.addresses.iter().enumerate() {
            check_address(process_id, address)?;
            if let Some(first) = self.addresses[..process_id]
                .iter()
                .position(|a| a.trim() == address.trim())
            {
                return Err(ClusterError::DuplicateAddress {
                    address: address.clone(),
                    first,
                    second: process_id,
                });
            }
        }
        Ok(())
    }
}

/// Checks that `address` is `host:port` (the host is resolved only when connecting: in
/// Kubernetes a peer's DNS name may appear after this process starts).
fn check_address(process_id: usize, address: &str) -> std::result::Result<(), ClusterError> {
    let bad = |reason: &str| ClusterError::BadAddress {
        process_id,
        address: address.to_string(),
        reason: reason.to_string(),
    };
    let Some((host, port)) = address.trim().rsplit_once(':') else {
        return Err(bad("no port"));
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if host.chars().any(char::is_whitespace) {
        return Err(bad("whitespace in the host"));
    }
    match port.parse::<u16>() {
        Ok(0) => Err(bad("port 0 cannot be connected to")),
        Ok(_) => Ok(()),
        Err(_) => Err(bad("the port is not a number from 1 to 65535")),
    }
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
            cluster: None,
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
        if let Some(cluster) = &self.cluster {
            cluster.validate()?;
            if cluster.parallelism() != self.parallelism {
                return Err(ClusterError::ParallelismMismatch {
                    parallelism: self.parallelism,
                    processes: cluster.processes,
                    workers_per_process: cluster.workers_per_process,
                }
                .into());
            }
            if cluster.processes > 1 && checkpoint.restart != RestartStrategy::None {
                return Err(eddy_core::EddyError::Config(
                    "--restart-attempts restarts the workers of one process; the processes of \
                     a cluster fail and restart together, by their supervisor (`eddy cluster \
                     local --max-restarts`, systemd or Kubernetes)"
                        .into(),
                ));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(processes: usize, process_id: usize, addresses: &[&str]) -> ClusterConfig {
        ClusterConfig {
            processes,
            process_id,
            workers_per_process: 2,
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            connect_timeout: ClusterConfig::DEFAULT_CONNECT_TIMEOUT,
        }
    }

    #[test]
    fn cluster_configs_are_checked_with_named_errors() {
        let ok = cluster(2, 1, &["localhost:2101", "10.0.0.2:2101"]);
        assert!(ok.validate().is_ok());
        assert_eq!(ok.parallelism(), 4);
        let cases: &[(ClusterConfig, &str)] = &[
            (
                cluster(2, 2, &["a:1", "b:1"]),
                "--process-id 2 is out of range",
            ),
            (
                cluster(3, 0, &["a:1", "b:1"]),
                "lists 2 address(es) but --processes is 3",
            ),
            (
                cluster(2, 0, &["a:1", "b"]),
                "bad address \"b\" for process 1: no port",
            ),
            (cluster(2, 0, &["a:1", "b:x"]), "not a number"),
            (cluster(2, 0, &["a:1", ":7"]), "no host"),
            (
                cluster(2, 0, &["a:1", "a:1"]),
                "processes 0 and 1 both have the address a:1",
            ),
            (cluster(0, 0, &[]), "--processes must be at least 1"),
        ];
        for (config, expected) in cases {
            let message = config.validate().err().map(|e| e.to_string());
            assert!(
                message.as_deref().is_some_and(|m| m.contains(expected)),
                "{config:?}: {message:?}"
            );
        }
    }

    #[test]
    fn job_parallelism_must_match_the_cluster() {
        let config = JobConfig {
            parallelism: 3,
            cluster: Some(cluster(2, 0, &["a:1", "b:1"])),
            ..JobConfig::default()
        };
        let message = config.validate().err().map(|e| e.to_string());
        assert!(
            message
                .as_deref()
                .is_some_and(|m| m.contains("parallelism 3 is not --processes 2")),
            "{message:?}"
        );
    }
}
