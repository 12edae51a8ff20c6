//! Test scaffolding shared by the checkpoint tests: what an exactly-once file sink published,
//! and waiting for a completed checkpoint before an injected failure.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

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

/// Waits up to 20 s for a complete checkpoint newer than `since` in `location`.
///
/// A test that injects a failure calls it first, so that the run after the failure has a
/// checkpoint to restore: snapshots complete a little after their barrier (asynchronously
/// for RocksDB), and on a loaded machine the first may not be done by the failure point.
pub fn wait_for_checkpoint_after(location: &str, since: Option<u64>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if newest_checkpoint(location) > since {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
