//! All-or-nothing failure across the workers of one job.
//!
//! Timely has no partial failure: a worker that stops (error or panic) leaves its peers
//! waiting on its frontier forever. So the first failure sets a shared flag, every worker
//! checks it between steps and drops its dataflow, and the job returns the first error.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use eddy_core::{EddyError, JobFailure, Result};

/// Runs user code `f`, turning a panic into an error carrying the panic's message, so the job
/// fails naming the operator instead of losing a worker thread.
///
/// Unwind safety is asserted because a panicking job is aborted as a whole: the state the
/// panic may have left half-updated is discarded with it, never read again.
pub(crate) fn catch_panic<R>(f: impl FnOnce() -> Result<R>) -> Result<R> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic with a non-string payload".to_string());
        Err(EddyError::user(format!("panicked: {message}")))
    })
}

/// The shared failure state of one job run.
#[derive(Debug, Default)]
pub struct FailureState {
    aborted: AtomicBool,
    failures: Mutex<Vec<JobFailure>>,
    /// Where the savepoint of a stop-with-savepoint was written, once the job was stopped.
    stopped: Mutex<Option<String>>,
}

impl FailureState {
    /// Whether any worker has failed, or the job was stopped with a savepoint: either way
    /// every worker drops its dataflow.
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

    /// Stops the job without a failure: its savepoint is complete at `savepoint`, and every
    /// worker drops its dataflow as on a failure (nothing after the savepoint is published).
    pub fn stop(&self, savepoint: String) {
        let mut stopped = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        stopped.get_or_insert(savepoint);
        self.aborted.store(true, Ordering::Release);
    }

    /// The savepoint the job was stopped with, if it was.
    pub fn stopped_with(&self) -> Option<String> {
        self.stopped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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
                EddyError::user(
                    "a worker thread panicked outside Eddy's operators' user-code guards \
                     (in a chained map, filter or flat_map, or in Eddy itself); see its message above",
                ),
            );
        }
    }
}
