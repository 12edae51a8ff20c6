//! Reading a completed checkpoint or savepoint back for a restore.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use eddy_checkpoint::{CheckpointMetadata, Checkpoints, FileKind};
use eddy_core::{EddyError, Result};

use super::coordinator::decode_committables;

/// An incremental keyed-state part (`location` names it in errors) as the canonical keyed
/// state snapshot it stands for, its shared files fetched with `read_shared` and rebuilt
/// under `scratch` (the OS temp directory if `None`): what a restore and a savepoint use, so
/// both go the one path every full snapshot takes.
pub(crate) fn canonical_keyed_state(
    payload: &[u8],
    location: &str,
    scratch: Option<&Path>,
    read_shared: &mut dyn FnMut(&str) -> Result<Vec<u8>>,
) -> Result<Vec<u8>> {
    eddy_state::rocksdb::incremental_to_full(payload, location, scratch, read_shared)?.encode()
}

/// The state of one operator in a restored checkpoint.
#[derive(Debug, Default)]
pub struct OperatorRestore {
    /// The operator's parallelism when the checkpoint was taken.
    pub parallelism: usize,
    /// Keyed state parts by old subtask index, payloads unframed.
    pub keyed: BTreeMap<usize, Vec<u8>>,
    /// Operator state parts by old subtask index, payloads unframed.
    pub operator: BTreeMap<usize, Vec<u8>>,
    /// A sink's committables from every old subtask.
    pub committables: Vec<String>,
}

/// A checkpoint read back for a restore: its metadata and every operator's parts.
#[derive(Debug)]
pub struct RestoredCheckpoint {
    /// The checkpoint's metadata.
    pub metadata: CheckpointMetadata,
    /// Parts by operator uid.
    pub operators: BTreeMap<String, OperatorRestore>,
}

impl RestoredCheckpoint {
    /// Resolves `what` (`latest`, an id, or the path or URL of a checkpoint or savepoint
    /// directory) against the job's checkpoint root, if it has one, and reads the whole
    /// checkpoint. Every file is checked (magic, version, checksum) before anything is
    /// restored. Incremental RocksDB parts are converted to canonical ones through a
    /// temporary directory under `scratch` (the OS temp directory if `None`).
    pub fn load(root: Option<&Checkpoints>, what: &str, scratch: Option<&Path>) -> Result<Self> {
        let point = eddy_checkpoint::resolve(what, root)?;
        let metadata = point.metadata.clone();
        let mut operators = BTreeMap::new();
        for op in &metadata.operators {
            let mut restore = OperatorRestore {
                parallelism: op.parallelism as usize,
                ..OperatorRestore::default()
            };
            for subtask in &op.subtasks {
                for file in &subtask.files {
                    let payload = point.read_part(&file.path, file.kind)?;
                    match file.kind {
                        FileKind::KeyedState => {
                            restore.keyed.insert(subtask.index as usize, payload);
                        }
                        FileKind::IncrementalKeyedState => {
                            let location = format!("{}/{}", point.location(), file.path);
                            let payload =
                                canonical_keyed_state(&payload, &location, scratch, &mut |path| {
                                    point.read_shared(path)
                                })?;
                            restore.keyed.insert(subtask.index as usize, payload);
                        }
                        _ if file.path.contains("committables-") => restore
                            .committables
                            .extend(decode_committables(&payload, &op.uid)?),
                        _ => {
                            restore.operator.insert(subtask.index as usize, payload);
                        }
                    }
                }
            }
            operators.insert(op.uid.clone(), restore);
        }
        Ok(RestoredCheckpoint {
            metadata,
            operators,
        })
    }

    /// Checks the restored checkpoint against the job: the same number of key groups, and
    /// (unless `allow_non_restored`) no state of an operator the job no longer has.
    pub fn check_against(
        &self,
        max_parallelism: usize,
        job_uids: &BTreeSet<String>,
        allow_non_restored: bool,
        location: &str,
    ) -> Result<()> {
        let recorded = self.metadata.max_parallelism as usize;
        if recorded != max_parallelism {
            return Err(EddyError::checkpoint(
                location,
                format!(
                    "it was taken with max parallelism {recorded} and the job now has \
                     {max_parallelism}; the number of key groups can never change (set \
                     --max-parallelism {recorded})"
                ),
            ));
        }
        let unmatched: Vec<&str> = self
            .operators
            .keys()
            .filter(|uid| !job_uids.contains(*uid))
            .map(String::as_str)
            .collect();
        if !unmatched.is_empty() && !allow_non_restored {
            return Err(EddyError::checkpoint(
                location,
                format!(
                    "it holds state of operators this job does not have: {}; give those \
                     operators their old uid(\"..\"), or pass --allow-non-restored-state to \
                     drop that state",
                    unmatched.join(", ")
                ),
            ));
        }
        Ok(())
    }
}
