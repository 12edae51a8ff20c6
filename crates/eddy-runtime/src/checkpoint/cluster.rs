//! Completing a checkpoint across the processes of a cluster job, through the checkpoint
//! storage every process shares.
//!
//! Each process's [`Coordinator`](super::Coordinator) knows only its own subtasks. For
//! checkpoint `c` (stored as `chk-<c>`):
//!
//! 1. every process writes its subtasks' parts into `chk-<c>/` as in one process;
//! 2. a process `p > 0` then writes the manifest `chk-<c>/_process-<p>` (its subtasks'
//!    metadata) and waits for `chk-<c>/_metadata` before it publishes its sinks' output;
//! 3. process 0 waits for every manifest, merges them with its own subtasks into the metadata
//!    and writes `_metadata` last: only then is `c` complete, and only then does any process
//!    commit its sinks (two-phase commit, as in one process).
//!
//! A checkpoint some process had to skip is marked `chk-<c>/_abandoned` (by process 0) or by
//! an abandoned manifest (by others). Every process also records the last checkpoint its
//! writer handled in `_cluster/progress-<p>`: a waiter gives up on `c` once the process it
//! waits for has moved past `c`, so no process can wait for a checkpoint that will never
//! come. The final checkpoint of a bounded job is numbered after the highest periodic one of
//! any process, which only process 0 learns: the others hand it their final parts in
//! `_cluster/final-<p>`, and it announces the id in `_cluster/final-done`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eddy_checkpoint::{CheckpointRef, Checkpoints, SubtaskMetadata};
use eddy_core::{EddyError, Result};
use serde::{Deserialize, Serialize};

use super::coordinator::{Part, Participant};

/// How long a process waits for another process's part of a checkpoint (Flink's default
/// checkpoint timeout); the job fails after that.
const CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(600);

/// The prefix of the cluster's coordination objects at the root of the checkpoint location.
const CLUSTER_DIR: &str = "_cluster";

/// One subtask of another process, as listed in its manifest.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ManifestEntry {
    pub(crate) uid: String,
    pub(crate) name: String,
    pub(crate) parallelism: usize,
    pub(crate) subtask: SubtaskMetadata,
}

/// A process's part of one periodic checkpoint: the metadata of the files it wrote.
#[derive(Debug, Serialize, Deserialize)]
struct ProcessManifest {
    process: usize,
    /// The process could not take this checkpoint; it can never complete.
    abandoned: bool,
    subtasks: Vec<ManifestEntry>,
}

/// A process's part of the final checkpoint: its parts themselves, since the final
/// checkpoint's id (and so its directory) is not known until process 0 has them all.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct FinalManifest {
    pub(crate) process: usize,
    /// What this process would have numbered the final checkpoint.
    pub(crate) local_final_id: u64,
    pub(crate) parts: Vec<(Participant, Vec<Part>)>,
}

/// This process's role in completing checkpoints.
#[derive(Clone, Debug)]
pub(crate) struct Role {
    pub(crate) process: usize,
    pub(crate) processes: usize,
    pub(crate) workers_per_process: usize,
    pub(crate) cancelled: Arc<AtomicBool>,
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    postcard::to_stdvec(value)
        .map_err(|e| EddyError::Internal(format!("cannot encode a cluster manifest: {e}")))
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8], location: String) -> Result<T> {
    postcard::from_bytes(bytes)
        .map_err(|e| EddyError::checkpoint(location, format!("cannot decode: {e}")))
}

impl Role {
    /// Clears the coordination objects a crashed run left. Only process 0 does it, before
    /// it connects to its peers: no process writes anything for this run before every process
    /// has connected, so nothing of this run is deleted.
    pub(crate) fn prepare(&self, storage: &Checkpoints) -> Result<()> {
        if self.process == 0 {
            storage
                .storage()
                .delete_prefix(&format!("{CLUSTER_DIR}/"))?;
        }
        Ok(())
    }

    /// Whether subtask `subtask` (a global worker index) runs in this process.
    pub(crate) fn is_local(&self, subtask: usize) -> bool {
        subtask / self.workers_per_process.max(1) == self.process
    }

    fn manifest_path(id: u64, process: usize) -> String {
        format!(
            "{}/_process-{process}",
            CheckpointRef::Checkpoint(id).dir_name()
        )
    }

    fn progress_path(process: usize) -> String {
        format!("{CLUSTER_DIR}/progress-{process}")
    }

    /// Records that this process's writer is done with checkpoint `id`.
    fn record_progress(&self, storage: &Checkpoints, id: u64) -> Result<()> {
        storage.storage().put(
            &Self::progress_path(self.process),
            id.to_string().into_bytes(),
        )
    }

    /// The last checkpoint `process`'s writer is done with, if any.
    fn progress_of(&self, storage: &Checkpoints, process: usize) -> Result<Option<u64>> {
        Ok(storage
            .storage()
            .get_opt(&Self::progress_path(process))?
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(|text| text.trim().parse().ok()))
    }

    /// Polls `poll` until it returns a value, the job is cancelled, or the checkpoint timeout
    /// passes; `what` names what is awaited in the error.
    fn wait<T>(
        &self,
        storage: &Checkpoints,
        what: &str,
        mut poll: impl FnMut() -> Result<Option<T>>,
    ) -> Result<T> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            if let Some(value) = poll()? {
                return Ok(value);
            }
            if self.cancelled.load(Ordering::Acquire) {
                return Err(EddyError::checkpoint(
                    storage.location(),
                    format!(
                        "the job stopped while process {} waited for {what}",
                        self.process
                    ),
                ));
            }
            if started.elapsed() > CHECKPOINT_TIMEOUT {
                return Err(EddyError::checkpoint(
                    storage.location(),
                    format!(
                        "process {} waited {CHECKPOINT_TIMEOUT:?} for {what}; giving up",
                        self.process
                    ),
                ));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Process `p > 0`: its part of checkpoint `id` is durable; tells process 0 which files.
    pub(crate) fn write_manifest(
        &self,
        storage: &Checkpoints,
        id: u64,
        subtasks: Vec<ManifestEntry>,
    ) -> Result<()> {
        let manifest = ProcessManifest {
            process: self.process,
            abandoned: false,
            subtasks,
        };
        storage
            .storage()
            .put(&Self::manifest_path(id, self.process), encode(&manifest)?)
    }

    /// This process cannot take checkpoint `id`: tells the others not to wait for it.
    pub(crate) fn abandon(&self, storage: &Checkpoints, id: u64) -> Result<()> {
        if self.process == 0 {
            storage.storage().put(
                &format!("{}/_abandoned", CheckpointRef::Checkpoint(id).dir_name()),
                Vec::new(),
            )?;
        } else {
            let manifest = ProcessManifest {
                process: self.process,
                abandoned: true,
                subtasks: Vec::new(),
            };
            storage
                .storage()
                .put(&Self::manifest_path(id, self.process), encode(&manifest)?)?;
        }
        self.record_progress(storage, id)
    }

    /// Process 0: waits for every other process's manifest of checkpoint `id`. `None` if
    /// some process abandoned it (or moved past it without a manifest).
    pub(crate) fn await_manifests(
        &self,
        storage: &Checkpoints,
        id: u64,
    ) -> Result<Option<Vec<ManifestEntry>>> {
        let mut entries = Vec::new();
        for process in 1..self.processes {
            let path = Self::manifest_path(id, process);
            let what = format!("process {process}'s part of checkpoint {id}");
            let manifest = self.wait(storage, &what, || {
                if let Some(bytes) = storage.storage().get_opt(&path)? {
                    return Ok(Some(Some(bytes)));
                }
                if self.progress_of(storage, process)?.is_some_and(|p| p > id) {
                    // Written before the progress: look once more.
                    return Ok(Some(storage.storage().get_opt(&path)?));
                }
                Ok(None)
            })?;
            let Some(bytes) = manifest else {
                return Ok(None);
            };
            let manifest: ProcessManifest = decode(&bytes, storage.storage().describe(&path))?;
            if manifest.abandoned {
                return Ok(None);
            }
            entries.extend(manifest.subtasks);
        }
        self.record_progress(storage, id)?;
        Ok(Some(entries))
    }

    /// Process `p > 0`: waits until process 0 has completed checkpoint `id` (`true`) or
    /// given it up (`false`). Records this process's progress either way.
    pub(crate) fn await_completion(&self, storage: &Checkpoints, id: u64) -> Result<bool> {
        let dir = CheckpointRef::Checkpoint(id).dir_name();
        let metadata = format!("{dir}/_metadata");
        let abandoned = format!("{dir}/_abandoned");
        let what = format!("process 0 to complete checkpoint {id}");
        let complete = self.wait(storage, &what, || {
            if storage.storage().size(&metadata)?.is_some() {
                return Ok(Some(true));
            }
            if storage.storage().size(&abandoned)?.is_some() {
                return Ok(Some(false));
            }
            if self.progress_of(storage, 0)?.is_some_and(|p| p > id) {
                return Ok(Some(storage.storage().size(&metadata)?.is_some()));
            }
            Ok(None)
        })?;
        self.record_progress(storage, id)?;
        Ok(complete)
    }

    fn final_path(process: usize) -> String {
        format!("{CLUSTER_DIR}/final-{process}")
    }

    fn final_done_path() -> String {
        format!("{CLUSTER_DIR}/final-done")
    }

    /// Process `p > 0`: hands its final parts to process 0.
    pub(crate) fn write_final_manifest(
        &self,
        storage: &Checkpoints,
        local_final_id: u64,
        parts: Vec<(Participant, Vec<Part>)>,
    ) -> Result<()> {
        let manifest = FinalManifest {
            process: self.process,
            local_final_id,
            parts,
        };
        storage
            .storage()
            .put(&Self::final_path(self.process), encode(&manifest)?)?;
        // No periodic checkpoint follows the final one.
        self.record_progress(storage, u64::MAX)
    }

    /// Process 0: every other process's final parts.
    pub(crate) fn await_final_manifests(
        &self,
        storage: &Checkpoints,
    ) -> Result<Vec<FinalManifest>> {
        // The others may wait for a periodic checkpoint this process will never complete.
        self.record_progress(storage, u64::MAX)?;
        let mut manifests = Vec::new();
        for process in 1..self.processes {
            let path = Self::final_path(process);
            let what = format!("process {process}'s part of the final checkpoint");
            let bytes = self.wait(storage, &what, || storage.storage().get_opt(&path))?;
            manifests.push(decode(&bytes, storage.storage().describe(&path))?);
        }
        Ok(manifests)
    }

    /// Process 0: the final checkpoint `id` is complete.
    pub(crate) fn announce_final(&self, storage: &Checkpoints, id: u64) -> Result<()> {
        storage
            .storage()
            .put(&Self::final_done_path(), id.to_string().into_bytes())
    }

    /// Process `p > 0`: waits for process 0 to complete the final checkpoint; its id.
    pub(crate) fn await_final(&self, storage: &Checkpoints) -> Result<u64> {
        let path = Self::final_done_path();
        self.wait(
            storage,
            "process 0 to complete the final checkpoint",
            || {
                Ok(storage
                    .storage()
                    .get_opt(&path)?
                    .and_then(|bytes| String::from_utf8(bytes).ok())
                    .and_then(|text| text.trim().parse().ok()))
            },
        )
    }
}
