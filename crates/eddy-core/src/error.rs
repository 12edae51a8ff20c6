//! The workspace's error type, grouped by cause (as DataFusion's `DataFusionError`).

use std::path::PathBuf;

/// Result alias used throughout Eddy.
pub type Result<T, E = EddyError> = std::result::Result<T, E>;

/// Every error Eddy reports, grouped by *who* has to act on it.
///
/// * [`Config`](EddyError::Config): the job's configuration or flags are wrong; fix the call.
/// * [`Input`](EddyError::Input): a source met data it cannot read (a malformed line); the
///   error names the place.
/// * [`State`](EddyError::State): a state access failed (wrong use, or a backend failure).
/// * [`User`](EddyError::User): a user function returned an error.
/// * [`Io`](EddyError::Io): the operating system refused a file operation.
/// * [`Checkpoint`](EddyError::Checkpoint): a checkpoint or savepoint cannot be written, read
///   or restored (corrupt, truncated, foreign, newer format, incompatible); names the file.
/// * [`Job`](EddyError::Job): a job failed; wraps the first error with the operator and subtask.
/// * [`Cluster`](EddyError::Cluster): the processes of a multi-process job are misconfigured
///   or cannot connect; names the process, the peer and the address.
/// * [`Internal`](EddyError::Internal): a bug in Eddy; please report it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EddyError {
    /// The configuration or the flags of a job are invalid.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// A source could not parse its input.
    #[error("malformed input in {location}: {reason}")]
    Input {
        /// Where the bad record is, e.g. `events.jsonl:17`.
        location: String,
        /// Why it could not be read.
        reason: String,
    },

    /// A keyed-state operation failed.
    #[error("state \"{state}\": {reason}")]
    State {
        /// The name of the state (its descriptor's name).
        state: String,
        /// What went wrong.
        reason: String,
    },

    /// An error returned by user code (a process function, a map, a sink).
    #[error("user function failed: {0}")]
    User(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),

    /// A file operation failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// A checkpoint or savepoint cannot be written, read or restored.
    #[error("checkpoint {location}: {reason}")]
    Checkpoint {
        /// The checkpoint file, directory or URL concerned.
        location: String,
        /// What is wrong with it, e.g. `checksum mismatch (file is corrupt)`.
        reason: String,
    },

    /// A restored state's schema cannot become the new code's type (schema evolution).
    #[error("{0}")]
    Schema(Box<SchemaMismatch>),

    /// A job failed in one of its operators.
    #[error("{0}")]
    Job(Box<JobFailure>),

    /// The processes of a cluster job are misconfigured or cannot reach each other.
    #[error("cluster: {0}")]
    Cluster(Box<ClusterError>),

    /// A bug in Eddy.
    #[error("internal error (a bug in Eddy, please report it): {0}")]
    Internal(String),
}

impl From<ClusterError> for EddyError {
    fn from(error: ClusterError) -> Self {
        // Boxed: keeps every `Result<T, EddyError>` small.
        EddyError::Cluster(Box::new(error))
    }
}

impl EddyError {
    /// Wraps any error returned by user code.
    pub fn user(error: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        EddyError::User(error.into())
    }

    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        EddyError::Io {
            path: path.into(),
            source,
        }
    }

    /// A checkpoint error about `location` (a file, directory or URL).
    pub fn checkpoint(location: impl Into<String>, reason: impl Into<String>) -> Self {
        EddyError::Checkpoint {
            location: location.into(),
            reason: reason.into(),
        }
    }

    /// A schema error for the state `state` of the operator `operator`.
    pub fn schema(
        operator: impl Into<String>,
        state: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        EddyError::Schema(Box::new(SchemaMismatch {
            operator: operator.into(),
            state: state.into(),
            reason: reason.into(),
        }))
    }

    /// A state error for the state named `state`.
    pub fn state(state: impl Into<String>, reason: impl Into<String>) -> Self {
        EddyError::State {
            state: state.into(),
            reason: reason.into(),
        }
    }
}

/// A restored state whose recorded schema the new code's type cannot read (see
/// [`EddyError::Schema`]).
#[derive(Debug, thiserror::Error)]
#[error("state \"{state}\" of operator \"{operator}\": {reason}")]
pub struct SchemaMismatch {
    /// The operator's uid.
    pub operator: String,
    /// The state's name.
    pub state: String,
    /// What changed and why it is incompatible, naming the field, e.g. `field "amount"
    /// changed from u64 to String; incompatible`.
    pub reason: String,
}

/// Where and why a job failed: the first error of any operator, with its place.
#[derive(Debug, thiserror::Error)]
#[error("job \"{job}\" failed in operator \"{operator}\" (subtask {subtask}): {source}")]
pub struct JobFailure {
    /// The job's name.
    pub job: String,
    /// The operator that failed.
    pub operator: String,
    /// The parallel subtask (timely worker) that failed.
    pub subtask: usize,
    /// The cause.
    #[source]
    pub source: EddyError,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_error_names_operator_subtask_and_cause() {
        let err = EddyError::Job(Box::new(JobFailure {
            job: "latest".into(),
            operator: "latest-transaction".into(),
            subtask: 1,
            source: EddyError::state("latest", "boom"),
        }));
        assert_eq!(
            err.to_string(),
            "job \"latest\" failed in operator \"latest-transaction\" (subtask 1): state \"latest\": boom"
        );
    }

    #[test]
    fn error_stays_small() {
        // Errors travel through every `?` on the hot path; keep them two words at most plus tag.
        assert!(std::mem::size_of::<EddyError>() <= 56);
    }
}

/// Why the processes of a multi-process (cluster) job cannot run together.
///
/// Every variant names what to fix: the flag, the process id, the peer or the address.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// A cluster needs at least one process.
    #[error("--processes must be at least 1")]
    NoProcesses,

    /// Each process needs at least one worker thread.
    #[error("--workers-per-process must be at least 1")]
    NoWorkers,

    /// The process id is not one of `0..processes`.
    #[error("--process-id {process_id} is out of range: with --processes {processes} it must be 0..={}", processes.saturating_sub(1))]
    ProcessIdOutOfRange {
        /// The id given.
        process_id: usize,
        /// The number of processes.
        processes: usize,
    },

    /// The address list does not have one address per process.
    #[error("--addresses lists {addresses} address(es) but --processes is {processes}: give exactly one host:port per process, in process-id order")]
    AddressCount {
        /// Addresses given.
        addresses: usize,
        /// Processes configured.
        processes: usize,
    },

    /// An address is not `host:port`.
    #[error("bad address \"{address}\" for process {process_id}: {reason} (expected host:port, e.g. 10.0.0.7:2101)")]
    BadAddress {
        /// The process the address belongs to.
        process_id: usize,
        /// The address as given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },

    /// Two processes were given the same address.
    #[error("processes {first} and {second} both have the address {address}: every process needs its own host:port")]
    DuplicateAddress {
        /// The address.
        address: String,
        /// The first process with it.
        first: usize,
        /// The second process with it.
        second: usize,
    },

    /// The job's parallelism is not processes x workers per process.
    #[error("parallelism {parallelism} is not --processes {processes} x --workers-per-process {workers_per_process}")]
    ParallelismMismatch {
        /// The job's parallelism.
        parallelism: usize,
        /// Processes.
        processes: usize,
        /// Worker threads per process.
        workers_per_process: usize,
    },

    /// This process cannot listen on its own address.
    #[error("process {process_id} cannot listen on {address}: {source} (is it this machine's address? is another process, perhaps one with the same --process-id, using it?)")]
    Bind {
        /// This process.
        process_id: usize,
        /// Its address.
        address: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// A peer did not connect (or could not be connected to) in time.
    #[error("process {process_id} gave up after {timeout:?}: peer process {peer} at {address} never connected ({detail})")]
    PeerTimeout {
        /// This process.
        process_id: usize,
        /// The peer that is missing.
        peer: usize,
        /// The peer's address.
        address: String,
        /// The connect timeout.
        timeout: std::time::Duration,
        /// The last error seen, or what was awaited.
        detail: String,
    },

    /// A connection did not speak timely's handshake (a stray client, or another job).
    #[error("process {process_id}: bad handshake from {remote}: {reason}")]
    Handshake {
        /// This process.
        process_id: usize,
        /// The remote socket address.
        remote: String,
        /// What was wrong.
        reason: String,
    },

    /// The connection to a peer broke while the job ran: the peer died or the network failed.
    #[error("process {process_id} lost its connection to a peer process (it exited, was killed, or the network failed); the processes of a cluster job fail together: restart all of them from the latest checkpoint (`eddy cluster local` does)")]
    PeerLost {
        /// This process.
        process_id: usize,
    },

    /// Timely could not set up its communication threads.
    #[error("process {process_id}: cannot start timely's networking: {reason}")]
    Network {
        /// This process.
        process_id: usize,
        /// Timely's error.
        reason: String,
    },
}
