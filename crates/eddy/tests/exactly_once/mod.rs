//! Test scaffolding shared by the checkpoint tests: what an exactly-once file sink published,
//! and a failure injected once a checkpoint has completed.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use eddy_checkpoint::Checkpoints;
use serde::de::DeserializeOwned;

/// Every record the JSON-lines file sink published in `dir`, sorted (duplicates kept, so that
/// a record published twice shows).
pub fn published<T: DeserializeOwned + Ord>(dir: &Path) -> Vec<T> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if entry.path().is_file() {
            for line in std::fs::read_to_string(entry.path()).unwrap().lines() {
                out.push(serde_json::from_str(line).unwrap());
            }
        }
    }
    out.sort();
    out
}

/// The id of the newest complete checkpoint in `location`.
pub fn newest_checkpoint(location: &str) -> Option<u64> {
    let latest = Checkpoints::open(location).ok()?.latest().ok()??;
    Some(latest.metadata.checkpoint_id)
}

/// An injected failure that fires once, at the first record at or past `fail_at` after a
/// checkpoint newer than the one the run started from has completed, so that the run after
/// the failure has one to restore. It never blocks: a blocked operator would hold back the
/// very checkpoint it waits for (its output frontier, and so the sinks' barrier, could not
/// move), and snapshots complete a little after their barrier (asynchronously for RocksDB).
#[derive(Clone)]
pub struct InjectedFailure {
    fail_at: u64,
    armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    location: String,
    since: Option<u64>,
    /// Records seen past `fail_at` (the checkpoint directory is looked at every 64th).
    past: u64,
}

impl InjectedFailure {
    /// A failure at record `fail_at` (`None`: never) of a job checkpointing to `location`.
    pub fn new(fail_at: Option<u64>, location: &str) -> Self {
        InjectedFailure {
            fail_at: fail_at.unwrap_or(u64::MAX),
            armed: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(fail_at.is_some())),
            location: location.to_string(),
            since: newest_checkpoint(location),
            past: 0,
        }
    }

    /// Whether the record numbered `index` is where the job fails.
    pub fn fires(&mut self, index: u64) -> bool {
        use std::sync::atomic::Ordering;
        if index < self.fail_at || !self.armed.load(Ordering::SeqCst) {
            return false;
        }
        self.past += 1;
        if self.past % 64 != 1 || newest_checkpoint(&self.location) <= self.since {
            return false;
        }
        self.armed.swap(false, Ordering::SeqCst)
    }
}
