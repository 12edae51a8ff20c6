//! All-or-nothing failure across the workers of one job.
//!
//! Timely has no partial failure: a worker that stops (error or panic) leaves its peers
//! waiting on its frontier forever. So the first failure sets a shared flag, every worker
//! checks it between steps and drops its dataflow, and the job returns the first error.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use eddy_core::{EddyError, JobFailure};

/// The shared failure state of one job run.
#[derive(Debug, Default)]
pub struct FailureState {
    aborted: AtomicBool,
    failures: Mutex<Vec<JobFailure>>,
}

impl FailureState {
    /// Whether any worker has failed.
    #[inline]
    pub fn is_aborted(&self) -> bool {
        self.aborted.load(Ordering::Acquire)
    }

    /// Records a failure of `operator` on `subtask` and aborts the job.
    pub fn fail(&self, job: &str, operator: &str, subtask: usize, source: EddyError) {
        let failure = JobFailure {
            job: job.to_string(),
            operator: operator.to_string(),
            subtask,
            source,
        };
        // A poisoned lock only means another worker panicked while pushing; keep its data.
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.push(failure);
        self.aborted.store(true, Ordering::Release);
    }

    /// The first recorded failure, if any.
    pub fn take_first(&self) -> Option<JobFailure> {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if failures.is_empty() {
            None
        } else {
            Some(failures.remove(0))
        }
    }
}

/// Aborts the job if the worker thread unwinds (a panic in user code or in Eddy).
pub struct AbortOnPanic {
    pub(crate) failures: Arc<FailureState>,
    pub(crate) job: String,
    pub(crate) worker: usize,
}

impl Drop for AbortOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.failures.fail(
                &self.job,
                "<worker>",
                self.worker,
                EddyError::Internal("a worker thread panicked (see its message above)".into()),
            );
        }
    }
}
