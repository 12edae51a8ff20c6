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

    /// A bug in Eddy.
    #[error("internal error (a bug in Eddy, please report it): {0}")]
    Internal(String),
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
