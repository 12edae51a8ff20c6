//! The standard job flags every Eddy job program accepts, through one `clap` parser.

use clap::{Args, Parser, ValueEnum};
use eddy_core::{EddyError, Result};
use std::time::Duration;

use eddy_runtime::checkpoint::{CheckpointConfig, RestartStrategy};
use eddy_runtime::{ClusterConfig, JobConfig, StateBackendKind};

/// The flags of every Eddy job (`--parallelism`, `--max-parallelism`, `--state-backend`, ...).
///
/// A job program with no flags of its own calls
/// [`StreamExecutionEnvironment::from_args`](crate::StreamExecutionEnvironment::from_args); one
/// with its own flags flattens these into its parser:
///
/// ```
/// use clap::Parser;
///
/// #[derive(Parser)]
/// struct MyJob {
///     /// How many events to generate.
///     #[arg(long, default_value_t = 1000)]
///     events: u64,
///     #[command(flatten)]
///     job: eddy::JobFlags,
/// }
///
/// let args = MyJob::parse_from(["my-job", "--events", "5", "--parallelism", "2"]);
/// assert_eq!(args.events, 5);
/// assert_eq!(args.job.to_config().unwrap().parallelism, 2);
/// ```
#[derive(Args, Clone, Debug, PartialEq, Eq)]
pub struct JobFlags {
    /// Parallel subtasks (timely worker threads) of the job [default: number of CPUs].
    #[arg(long, short = 'p', default_value_t = default_parallelism(), hide_default_value = true, value_parser = clap::value_parser!(u64).range(1..=32768))]
    pub parallelism: u64,

    /// Number of key groups (fixed for the job's life; default: Flink's rule, at least 128).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=32768))]
    pub max_parallelism: Option<u64>,

    /// Keyed-state backend.
    #[arg(long, value_enum, default_value_t = BackendFlag::Heap)]
    pub state_backend: BackendFlag,

    /// Where the RocksDB backend keeps its working files: every keyed subtask gets its own
    /// directory under PATH, deleted when the job ends [default: the OS temp directory].
    #[arg(long, value_name = "PATH")]
    pub state_dir: Option<std::path::PathBuf>,

    /// RocksDB backend: the most entries of each state's write-back object cache per subtask
    /// (deserialized hot values in front of RocksDB; 0 turns it off).
    #[arg(long, value_name = "N", default_value_t = eddy_state::RocksDbConfig::default().object_cache_entries)]
    pub rocksdb_object_cache_entries: usize,

    /// RocksDB backend: keep timers on the heap instead of in RocksDB (Flink's
    /// `timer-service.factory: HEAP`): faster with many short-lived timers, memory unbounded.
    #[arg(long)]
    pub rocksdb_heap_timers: bool,

    /// RocksDB backend: the process's memory budget in MiB, shared by every subtask's
    /// instance: the block cache, memtables included (Flink's managed memory for RocksDB).
    #[arg(long, value_name = "MIB", default_value_t = default_rocksdb_memory_mb(), value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    pub rocksdb_memory_mb: u64,

    /// RocksDB backend: hash-indexed memtables with in-place updates for states. Point reads
    /// and writes of keys in the memtable get much faster (W1: 2-3x), but every checkpoint
    /// then sorts the memtables, which hold the whole hot state: for jobs that checkpoint
    /// rarely or not at all.
    #[arg(long)]
    pub rocksdb_hash_memtables: bool,

    /// RocksDB backend: write every checkpoint in full (the canonical format) instead of
    /// incrementally (only the SST files earlier checkpoints did not upload; the default).
    #[arg(long)]
    pub rocksdb_full_checkpoints: bool,

    /// Length of an epoch (a timely timestamp; checkpoints happen at epoch boundaries), in ms.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub epoch_interval_ms: u64,

    /// Where checkpoints go: a directory, file:///..., s3://bucket/prefix, gs://..., az://...
    #[arg(long, value_name = "PATH_OR_URL")]
    pub checkpoint_dir: Option<String>,

    /// Take a checkpoint every MS milliseconds (needs --checkpoint-dir) [default: off].
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub checkpoint_interval_ms: Option<u64>,

    /// How many completed checkpoints to keep.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub retained_checkpoints: u64,

    /// Restore before starting: `latest` (newest checkpoint in --checkpoint-dir), a checkpoint
    /// id, or the path/URL of a chk-<id> or savepoint-<name> directory.
    #[arg(long, value_name = "CHECKPOINT")]
    pub restore: Option<String>,

    /// Start even if the restored checkpoint has state of operators this job no longer has.
    #[arg(long)]
    pub allow_non_restored_state: bool,

    /// After a failure, restart from the latest checkpoint up to N times [default: 0].
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub restart_attempts: u32,

    /// Wait this long before each restart, in ms.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub restart_delay_ms: u64,

    /// When a bounded job ends, also write its final checkpoint as savepoint-NAME.
    #[arg(long, value_name = "NAME")]
    pub savepoint_on_finish: Option<String>,

    /// Run as one of N processes of a cluster job (timely's cluster mode); the job's
    /// parallelism is then N x --workers-per-process. Needs --addresses or --hostfile.
    #[arg(long, value_name = "N", conflicts_with = "parallelism", value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub processes: Option<u64>,

    /// Worker threads in each process of a cluster job [default: 1].
    #[arg(long, value_name = "W", conflicts_with = "parallelism", value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub workers_per_process: Option<u64>,

    /// This process's id in a cluster job, 0..N (process 0 completes checkpoints).
    #[arg(long, value_name = "ID", default_value_t = 0)]
    pub process_id: u64,

    /// host:port of every process of a cluster job, comma-separated, in process-id order.
    #[arg(
        long,
        value_name = "HOST:PORT,...",
        value_delimiter = ',',
        conflicts_with = "hostfile"
    )]
    pub addresses: Vec<String>,

    /// A file with one host:port per line, in process-id order (instead of --addresses;
    /// empty lines and lines starting with `#` are skipped).
    #[arg(long, value_name = "PATH")]
    pub hostfile: Option<std::path::PathBuf>,

    /// How long a cluster process waits for its peers to connect before failing, in ms.
    #[arg(long, value_name = "MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub connect_timeout_ms: u64,
}

/// The values of `--state-backend`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendFlag {
    /// Objects in memory, no serialization on access.
    Heap,
    /// Serialized bytes in an embedded RocksDB per keyed subtask: state larger than memory.
    #[value(name = "rocksdb")]
    RocksDb,
}

impl Default for JobFlags {
    fn default() -> Self {
        JobFlags {
            parallelism: default_parallelism(),
            max_parallelism: None,
            state_backend: BackendFlag::Heap,
            state_dir: None,
            rocksdb_object_cache_entries: eddy_state::RocksDbConfig::default().object_cache_entries,
            rocksdb_heap_timers: eddy_state::RocksDbConfig::default().heap_timers,
            rocksdb_full_checkpoints: !eddy_state::RocksDbConfig::default().incremental_checkpoints,
            rocksdb_memory_mb: default_rocksdb_memory_mb(),
            rocksdb_hash_memtables: eddy_state::RocksDbConfig::default().hash_memtables,
            epoch_interval_ms: 10,
            checkpoint_dir: None,
            checkpoint_interval_ms: None,
            retained_checkpoints: 1,
            restore: None,
            allow_non_restored_state: false,
            restart_attempts: 0,
            restart_delay_ms: 1000,
            savepoint_on_finish: None,
            processes: None,
            workers_per_process: None,
            process_id: 0,
            addresses: Vec::new(),
            hostfile: None,
            connect_timeout_ms: 60_000,
        }
    }
}

/// Flink's default for a local environment: one subtask per CPU.
fn default_parallelism() -> u64 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u64)
}

/// The RocksDB backend's default memory budget, in MiB.
fn default_rocksdb_memory_mb() -> u64 {
    (eddy_state::RocksDbConfig::default().memory_budget >> 20) as u64
}

impl JobFlags {
    /// How often the job checkpoints (`--checkpoint-interval-ms`), if it does.
    pub fn checkpoint_interval(&self) -> Option<Duration> {
        self.checkpoint_interval_ms.map(Duration::from_millis)
    }

    /// The job configuration these flags describe; every error names the flag.
    pub fn to_config(&self) -> Result<JobConfig> {
        let cluster = self.cluster_config()?;
        let config = JobConfig {
            parallelism: cluster
                .as_ref()
                .map_or(self.parallelism as usize, ClusterConfig::parallelism),
            cluster,
            max_parallelism: self.max_parallelism.map(|m| m as usize),
            state_backend: match self.state_backend {
                BackendFlag::Heap => StateBackendKind::Heap,
                BackendFlag::RocksDb => StateBackendKind::RocksDb {
                    working_dir: self.state_dir.clone(),
                    object_cache_entries: self.rocksdb_object_cache_entries,
                    heap_timers: self.rocksdb_heap_timers,
                    full_checkpoints: self.rocksdb_full_checkpoints,
                    memory_budget: (self.rocksdb_memory_mb as usize).saturating_mul(1 << 20),
                    hash_memtables: self.rocksdb_hash_memtables,
                },
            },
            epoch_interval: std::time::Duration::from_millis(self.epoch_interval_ms),
            checkpoint: CheckpointConfig {
                interval: self.checkpoint_interval_ms.map(Duration::from_millis),
                location: self.checkpoint_dir.clone(),
                retained: self.retained_checkpoints as usize,
                restore: self.restore.clone(),
                allow_non_restored_state: self.allow_non_restored_state,
                restart: match self.restart_attempts {
                    0 => RestartStrategy::None,
                    attempts => RestartStrategy::FixedDelay {
                        attempts,
                        delay: Duration::from_millis(self.restart_delay_ms),
                    },
                },
                savepoint_on_finish: self.savepoint_on_finish.clone(),
            },
            ..JobConfig::default()
        };
        config.validate()?;
        Ok(config)
    }

    /// The cluster flags as a [`ClusterConfig`]; `None` when the job runs in one process.
    fn cluster_config(&self) -> Result<Option<ClusterConfig>> {
        let addresses = match &self.hostfile {
            Some(path) => read_hostfile(path)?,
            None => self
                .addresses
                .iter()
                .map(|a| a.trim().to_string())
                .collect(),
        };
        let clustered = self.processes.is_some()
            || self.workers_per_process.is_some()
            || !addresses.is_empty()
            || self.process_id != 0;
        if !clustered {
            return Ok(None);
        }
        let Some(processes) = self.processes else {
            return Err(EddyError::Config(
                "--processes is required with --workers-per-process, --process-id, \
                 --addresses or --hostfile"
                    .into(),
            ));
        };
        let cluster = ClusterConfig {
            processes: processes as usize,
            process_id: usize::try_from(self.process_id).unwrap_or(usize::MAX),
            workers_per_process: self.workers_per_process.unwrap_or(1) as usize,
            addresses,
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
        };
        cluster.validate()?;
        Ok(Some(cluster))
    }
}

/// The addresses of a hosts file: one `host:port` per line, in process-id order.
fn read_hostfile(path: &std::path::Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| EddyError::io(path, e))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_string)
        .collect())
}

/// A command line of job flags only.
#[derive(Parser, Debug)]
#[command(about = "An Eddy job")]
pub(crate) struct JobCommandLine {
    #[command(flatten)]
    pub(crate) flags: JobFlags,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> std::result::Result<JobFlags, clap::Error> {
        JobCommandLine::try_parse_from(std::iter::once("job").chain(args.iter().copied()))
            .map(|c| c.flags)
    }

    #[test]
    fn defaults_and_flags() {
        assert_eq!(parse(&[]).ok(), Some(JobFlags::default()));
        let flags = parse(&["--parallelism", "4", "--max-parallelism", "256"]).ok();
        assert_eq!(flags.as_ref().map(|f| f.parallelism), Some(4));
        assert_eq!(flags.and_then(|f| f.max_parallelism), Some(256));
        let rocksdb = parse(&[
            "--state-backend",
            "rocksdb",
            "--state-dir",
            "/tmp/x",
            "--rocksdb-object-cache-entries",
            "1000",
            "--rocksdb-heap-timers",
            "--rocksdb-full-checkpoints",
            "--rocksdb-memory-mb",
            "512",
            "--rocksdb-hash-memtables",
        ])
        .ok();
        assert_eq!(
            rocksdb
                .and_then(|f| f.to_config().ok())
                .map(|c| c.state_backend),
            Some(StateBackendKind::RocksDb {
                working_dir: Some("/tmp/x".into()),
                object_cache_entries: 1000,
                heap_timers: true,
                full_checkpoints: true,
                memory_budget: 512 << 20,
                hash_memtables: true,
            })
        );
    }

    #[test]
    fn cluster_flags_make_a_cluster_config() {
        let flags = parse(&[
            "--processes",
            "3",
            "--workers-per-process",
            "2",
            "--process-id",
            "1",
            "--addresses",
            "a:1,b:2,c:3",
        ])
        .ok();
        let config = flags.and_then(|f| f.to_config().ok());
        assert_eq!(config.as_ref().map(|c| c.parallelism), Some(6));
        let cluster = config.and_then(|c| c.cluster);
        assert_eq!(cluster.as_ref().map(|c| c.process_id), Some(1));
        assert_eq!(
            cluster.map(|c| c.addresses),
            Some(vec!["a:1".to_string(), "b:2".into(), "c:3".into()])
        );
        // No cluster flags: one process, as before.
        assert!(parse(&[])
            .ok()
            .and_then(|f| f.to_config().ok())
            .is_some_and(|c| c.cluster.is_none()));
    }

    #[test]
    fn bad_cluster_flags_are_clear_errors() {
        let error = |args: &[&str]| -> String {
            match parse(args) {
                Err(e) => e.to_string(),
                Ok(flags) => flags
                    .to_config()
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_default(),
            }
        };
        let cases: &[(&[&str], &str)] = &[
            (
                &["--processes", "2", "--addresses", "a:1"],
                "lists 1 address(es) but --processes is 2",
            ),
            (
                &[
                    "--processes",
                    "2",
                    "--process-id",
                    "2",
                    "--addresses",
                    "a:1,b:1",
                ],
                "--process-id 2 is out of range",
            ),
            (
                &["--processes", "2", "--addresses", "a:1,nope"],
                "bad address \"nope\"",
            ),
            (
                &["--processes", "2", "--addresses", "a:1,a:1"],
                "both have the address a:1",
            ),
            (&["--addresses", "a:1,b:1"], "--processes is required"),
            (&["--processes", "2", "--parallelism", "4"], "--parallelism"),
            (
                &["--processes", "2", "--hostfile", "/nonexistent/hosts"],
                "/nonexistent/hosts",
            ),
            (
                &[
                    "--processes",
                    "2",
                    "--addresses",
                    "a:1,b:1",
                    "--restart-attempts",
                    "3",
                ],
                "restart together",
            ),
        ];
        for (args, expected) in cases {
            let message = error(args);
            assert!(message.contains(expected), "{args:?}: {message}");
        }
    }

    #[test]
    fn a_hostfile_lists_one_address_per_line() {
        let dir = tempfile::tempdir().ok();
        let path = dir.as_ref().map(|d| d.path().join("hosts"));
        let written = path
            .as_ref()
            .is_some_and(|p| std::fs::write(p, "# eddy\nh0:2101\n\nh1:2101\n").is_ok());
        assert!(written);
        let path = path
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let config = parse(&["--processes", "2", "--hostfile", &path])
            .ok()
            .and_then(|f| f.to_config().ok());
        assert_eq!(
            config.and_then(|c| c.cluster).map(|c| c.addresses),
            Some(vec!["h0:2101".to_string(), "h1:2101".into()])
        );
    }

    #[test]
    fn wrong_flags_are_clear_errors() {
        let err = parse(&["--parallelism", "0"]).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("--parallelism")));
        let err = parse(&["--state-backend", "cassandra"])
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("cassandra")));
        let too_many = JobFlags {
            parallelism: 200,
            max_parallelism: Some(128),
            ..JobFlags::default()
        };
        let err = too_many.to_config().err().map(|e| e.to_string());
        assert!(
            err.as_ref().is_some_and(|e| e.contains("parallelism")),
            "{err:?}"
        );
    }
}
