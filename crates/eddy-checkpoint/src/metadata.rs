//! [`CheckpointMetadata`]: what a checkpoint's `_metadata` file says about it.
//!
//! Encoded with postcard and framed as [`FileKind::Metadata`]. Postcard is not
//! self-describing: any change to these types is a new [`FORMAT_VERSION`] (the frame refuses
//! files of a newer version before decoding them). Version 3 added shared files (incremental
//! checkpoints) to the metadata: [`SubtaskMetadata::shared`].

use std::collections::HashSet;

use eddy_core::{EddyError, KeyGroupRange, Result};
use serde::{Deserialize, Serialize};

use crate::format::{self, FileKind, FORMAT_VERSION};
use crate::layout::CheckpointRef;

/// Whether a checkpoint was taken by the runtime on its interval or on request, by name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CheckpointKind {
    /// A periodic checkpoint, `chk-<id>/`, subject to retention.
    Checkpoint,
    /// A savepoint, `savepoint-<name>/`, never deleted by retention.
    Savepoint {
        /// Its name (the directory is `savepoint-<name>`).
        name: String,
    },
}

impl std::fmt::Display for CheckpointKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CheckpointKind::Checkpoint => f.write_str("checkpoint"),
            CheckpointKind::Savepoint { .. } => f.write_str("savepoint"),
        }
    }
}

/// The description of one complete checkpoint or savepoint: its `_metadata` file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointMetadata {
    /// The checkpoint format version it was written in ([`FORMAT_VERSION`] when new).
    pub format_version: u16,
    /// The job's name (`execute(name)`).
    pub job_name: String,
    /// The checkpoint id `c` (from 1). A savepoint records the id of the checkpoint it was
    /// taken with.
    pub checkpoint_id: u64,
    /// Checkpoint or savepoint.
    pub kind: CheckpointKind,
    /// The last epoch it covers, `e_c`: every record of epochs `0..=epoch` is in it.
    pub epoch: u64,
    /// Wall-clock time it was taken, in milliseconds since the Unix epoch (UTC).
    pub taken_at_unix_ms: u64,
    /// The job's `max_parallelism` (number of key groups) when it was taken.
    pub max_parallelism: u32,
    /// Every operator with state, in the job graph's order.
    pub operators: Vec<OperatorMetadata>,
}

/// One stateful operator of a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorMetadata {
    /// The operator's stable uid (its directory name in the checkpoint).
    pub uid: String,
    /// Its human-readable name.
    pub name: String,
    /// Its parallelism when the checkpoint was taken.
    pub parallelism: u32,
    /// One entry per subtask, by subtask index.
    pub subtasks: Vec<SubtaskMetadata>,
}

/// One subtask of an operator in a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubtaskMetadata {
    /// The subtask index, `0..parallelism`.
    pub index: u32,
    /// The key groups it owned, inclusive; `None` for a subtask without keyed state.
    pub key_groups: Option<KeyGroupSpan>,
    /// Its files, relative to the checkpoint directory.
    pub files: Vec<PartInfo>,
    /// The states it holds (keyed and operator state).
    pub states: Vec<StateInfo>,
    /// The shared files its incremental keyed state refers to; empty for full snapshots.
    pub shared: Vec<SharedFile>,
}

/// A shared file (one uploaded SST file of an incremental RocksDB checkpoint), as written by
/// [`crate::Checkpoints::write_shared`]. It lives outside every checkpoint directory and is
/// referred to by each checkpoint that still needs it; retention deletes it once no retained
/// checkpoint does ([`crate::Checkpoints::retain`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SharedFile {
    /// Path relative to the checkpoint ROOT (not to a checkpoint directory), always starting
    /// with `shared/`: `shared/<operator uid>/<file>` ([`crate::Checkpoints::shared_path`]).
    pub path: String,
    /// Size of the framed file in bytes.
    pub size: u64,
}

/// A contiguous, inclusive range of key groups (`start..=end`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyGroupSpan {
    /// The first key group.
    pub start: u16,
    /// The last key group (inclusive).
    pub end: u16,
}

impl KeyGroupSpan {
    /// The span of `range`, or `None` for an empty range (or one beyond `u16`, which
    /// `eddy-core` never builds: key groups are `u16`).
    pub fn from_range(range: &KeyGroupRange) -> Option<Self> {
        if range.is_empty() {
            return None;
        }
        Some(Self {
            start: u16::try_from(range.start()).ok()?,
            end: u16::try_from(range.end()).ok()?,
        })
    }

    /// As an `eddy-core` range (empty if `start > end`, which decoded metadata never has:
    /// [`CheckpointMetadata::validate`] refuses it).
    pub fn to_range(self) -> KeyGroupRange {
        if self.start > self.end {
            return KeyGroupRange::empty();
        }
        KeyGroupRange::new(self.start.into(), self.end.into())
    }

    /// Number of key groups (0 for an inverted span, which valid metadata never holds).
    pub fn len(self) -> usize {
        if self.start > self.end {
            return 0;
        }
        usize::from(self.end) - usize::from(self.start) + 1
    }

    /// Whether it holds no key group (only an inverted span, `start > end`).
    pub fn is_empty(self) -> bool {
        self.start > self.end
    }
}

impl std::fmt::Display for KeyGroupSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}..={}", self.start, self.end)
    }
}

/// One file of a checkpoint, as written by [`crate::Checkpoints::write_part`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PartInfo {
    /// Path relative to the checkpoint directory, e.g. `window-1/keyed-0.bin`.
    pub path: String,
    /// Size of the framed file in bytes.
    pub size: u64,
    /// What it holds.
    pub kind: FileKind,
}

/// A state held by a subtask, described for people and for compatibility checks on restore.
/// The strings are opaque to this crate: `eddy-state` chooses them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateInfo {
    /// The state's name (its descriptor's).
    pub name: String,
    /// Its kind, e.g. `value`, `list`, `map`, `reducing`, `aggregating`, `union-list`.
    pub kind: String,
    /// The Rust type names it was written with (key, namespace, user key, value...).
    pub type_names: Vec<String>,
}

impl CheckpointMetadata {
    /// Metadata for checkpoint `checkpoint_id` of `job_name`, taken now, with no operators yet.
    pub fn new(
        job_name: impl Into<String>,
        checkpoint_id: u64,
        kind: CheckpointKind,
        epoch: u64,
        max_parallelism: u32,
    ) -> Self {
        Self {
            format_version: FORMAT_VERSION,
            job_name: job_name.into(),
            checkpoint_id,
            kind,
            epoch,
            taken_at_unix_ms: now_unix_ms(),
            max_parallelism,
            operators: Vec::new(),
        }
    }

    /// The directory this metadata belongs in.
    pub fn reference(&self) -> CheckpointRef {
        match &self.kind {
            CheckpointKind::Checkpoint => CheckpointRef::Checkpoint(self.checkpoint_id),
            CheckpointKind::Savepoint { name } => CheckpointRef::Savepoint(name.clone()),
        }
    }

    /// The total size of its own state files in bytes: the files in its directory (`_metadata`
    /// not included), not the shared files it refers to ([`shared_size`](Self::shared_size)).
    pub fn total_size(&self) -> u64 {
        self.files().map(|file| file.size).sum()
    }

    /// The total size in bytes of the shared files it refers to, each counted once (other
    /// checkpoints may refer to them too).
    pub fn shared_size(&self) -> u64 {
        let mut seen = HashSet::new();
        self.shared_files()
            .filter(|file| seen.insert(file.path.as_str()))
            .map(|file| file.size)
            .sum()
    }

    /// Every shared file its subtasks refer to, subtask by subtask (a path several subtasks
    /// refer to comes once per subtask). Empty for a checkpoint of full snapshots, and always
    /// for a savepoint (savepoints are self-contained).
    pub fn shared_files(&self) -> impl Iterator<Item = &SharedFile> {
        self.operators
            .iter()
            .flat_map(|op| op.subtasks.iter())
            .flat_map(|subtask| subtask.shared.iter())
    }

    /// Every state file it lists.
    pub fn files(&self) -> impl Iterator<Item = &PartInfo> {
        self.operators
            .iter()
            .flat_map(|op| op.subtasks.iter())
            .flat_map(|subtask| subtask.files.iter())
    }

    /// The operator with `uid`.
    pub fn operator(&self, uid: &str) -> Option<&OperatorMetadata> {
        self.operators.iter().find(|op| op.uid == uid)
    }

    /// The framed `_metadata` file.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let payload = postcard::to_stdvec(self)
            .map_err(|e| EddyError::Internal(format!("cannot encode checkpoint metadata: {e}")))?;
        Ok(format::frame(FileKind::Metadata, &payload))
    }

    /// Decodes a `_metadata` file; `location` names it in errors.
    pub fn decode(bytes: &[u8], location: &str) -> Result<Self> {
        let payload = format::unframe(bytes, FileKind::Metadata, location)?;
        let metadata: Self = postcard::from_bytes(payload).map_err(|e| {
            EddyError::checkpoint(location, format!("cannot decode the metadata: {e}"))
        })?;
        if metadata.format_version > FORMAT_VERSION {
            return Err(EddyError::checkpoint(
                location,
                format!(
                    "metadata of format version {}, but this Eddy reads versions up to \
                     {FORMAT_VERSION}",
                    metadata.format_version
                ),
            ));
        }
        metadata.validate(location)?;
        Ok(metadata)
    }

    /// Checks what the types cannot: subtask indices below the parallelism, key-group spans
    /// ordered and below `max_parallelism`, file paths inside the checkpoint directory, shared
    /// file paths inside `shared/` of the root. Run on [`decode`](Self::decode) and before a
    /// commit, so a restore never meets such nonsense.
    pub fn validate(&self, location: &str) -> Result<()> {
        let invalid = |reason: String| Err(EddyError::checkpoint(location, reason));
        for op in &self.operators {
            if op.subtasks.len() > op.parallelism as usize {
                return invalid(format!(
                    "operator {:?} lists {} subtasks but has parallelism {}",
                    op.uid,
                    op.subtasks.len(),
                    op.parallelism
                ));
            }
            for subtask in &op.subtasks {
                if subtask.index >= op.parallelism {
                    return invalid(format!(
                        "operator {:?}: subtask {} is not below its parallelism {}",
                        op.uid, subtask.index, op.parallelism
                    ));
                }
                if let Some(span) = subtask.key_groups {
                    if span.start > span.end || u32::from(span.end) >= self.max_parallelism {
                        return invalid(format!(
                            "operator {:?}, subtask {}: key groups {span} do not fit \
                             max_parallelism {}",
                            op.uid, subtask.index, self.max_parallelism
                        ));
                    }
                }
                for file in &subtask.files {
                    crate::layout::check_relative_path(&file.path, location)?;
                    if file.kind == FileKind::Metadata {
                        return invalid(format!(
                            "operator {:?}: file {:?} is listed as metadata",
                            op.uid, file.path
                        ));
                    }
                }
                for shared in &subtask.shared {
                    crate::layout::check_shared_path(&shared.path, location)?;
                }
            }
        }
        Ok(())
    }
}

/// Milliseconds since the Unix epoch now (0 if the clock is before 1970).
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_through_its_file() {
        let mut meta = CheckpointMetadata::new("job", 3, CheckpointKind::Checkpoint, 29, 128);
        meta.operators.push(OperatorMetadata {
            uid: "count".into(),
            name: "Count per key".into(),
            parallelism: 1,
            subtasks: vec![SubtaskMetadata {
                index: 0,
                key_groups: KeyGroupSpan::from_range(&KeyGroupRange::new(0, 127)),
                files: vec![PartInfo {
                    path: "count/keyed-0.bin".into(),
                    size: 42,
                    kind: FileKind::KeyedState,
                }],
                states: vec![StateInfo {
                    name: "count".into(),
                    kind: "value".into(),
                    type_names: vec!["u64".into(), "()".into(), "u64".into()],
                }],
                shared: vec![],
            }],
        });
        let bytes = meta.encode().unwrap();
        assert_eq!(CheckpointMetadata::decode(&bytes, "x").unwrap(), meta);
        assert_eq!(meta.total_size(), 42);
        assert_eq!(meta.shared_size(), 0);
        assert_eq!(meta.shared_files().count(), 0);
        assert_eq!(meta.reference(), CheckpointRef::Checkpoint(3));
    }

    #[test]
    fn shared_files_round_trip_and_count_once() {
        let shared = |path: &str, size| SharedFile {
            path: path.into(),
            size,
        };
        let mut meta = CheckpointMetadata::new("job", 4, CheckpointKind::Checkpoint, 39, 128);
        meta.operators.push(OperatorMetadata {
            uid: "count".into(),
            name: "count".into(),
            parallelism: 2,
            subtasks: (0..2)
                .map(|index| SubtaskMetadata {
                    index,
                    key_groups: None,
                    files: vec![PartInfo {
                        path: format!("count/keyed-{index}.bin"),
                        size: 10,
                        kind: FileKind::IncrementalKeyedState,
                    }],
                    states: vec![],
                    shared: vec![
                        shared(&format!("shared/count/{index}-000007.sst"), 100),
                        // The same file from both subtasks: counted once.
                        shared("shared/count/common.sst", 1000),
                    ],
                })
                .collect(),
        });
        let decoded = CheckpointMetadata::decode(&meta.encode().unwrap(), "x").unwrap();
        assert_eq!(decoded, meta);
        assert_eq!(decoded.total_size(), 20);
        assert_eq!(decoded.shared_size(), 1200);
        assert_eq!(decoded.shared_files().count(), 4);
    }

    #[test]
    fn a_state_file_is_not_metadata() {
        let bytes = format::frame(FileKind::KeyedState, b"");
        let err = CheckpointMetadata::decode(&bytes, "chk-1/_metadata").unwrap_err();
        assert!(err.to_string().contains("was expected"), "{err}");
    }

    #[test]
    fn garbage_payload_is_refused_not_panicking() {
        let bytes = format::frame(FileKind::Metadata, &[0xFF; 7]);
        let err = CheckpointMetadata::decode(&bytes, "chk-1/_metadata").unwrap_err();
        assert!(
            err.to_string().contains("cannot decode the metadata"),
            "{err}"
        );
    }

    proptest::proptest! {
        #[test]
        fn any_framed_payload_decodes_or_is_refused_without_panic(
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
        ) {
            let bytes = format::frame(FileKind::Metadata, &payload);
            if let Ok(metadata) = CheckpointMetadata::decode(&bytes, "m") {
                // Whatever decoded is consistent enough to use.
                for op in &metadata.operators {
                    for subtask in &op.subtasks {
                        if let Some(span) = subtask.key_groups {
                            proptest::prop_assert_eq!(span.to_range().len(), span.len());
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn checkpoints_are_shared_between_threads() {
        fn send_sync<T: Send + Sync + 'static>() {}
        send_sync::<crate::Checkpoints>();
        send_sync::<crate::CheckpointStorage>();
        send_sync::<crate::RestorePoint>();
    }

    #[test]
    fn inconsistent_metadata_is_refused() {
        let mut meta = CheckpointMetadata::new("job", 1, CheckpointKind::Checkpoint, 9, 128);
        meta.operators.push(OperatorMetadata {
            uid: "op".into(),
            name: "op".into(),
            parallelism: 1,
            subtasks: vec![SubtaskMetadata {
                index: 0,
                key_groups: Some(KeyGroupSpan { start: 5, end: 4 }),
                files: vec![],
                states: vec![],
                shared: vec![],
            }],
        });
        let err = CheckpointMetadata::decode(&meta.encode().unwrap(), "m").unwrap_err();
        assert!(err.to_string().contains("do not fit"), "{err}");
        meta.operators[0].subtasks[0].key_groups = Some(KeyGroupSpan { start: 0, end: 128 });
        assert!(CheckpointMetadata::decode(&meta.encode().unwrap(), "m").is_err());
        meta.operators[0].subtasks[0].key_groups = None;
        meta.operators[0].subtasks[0].index = 1;
        let err = CheckpointMetadata::decode(&meta.encode().unwrap(), "m").unwrap_err();
        assert!(
            err.to_string().contains("not below its parallelism"),
            "{err}"
        );
        meta.operators[0].subtasks[0].index = 0;
        meta.operators[0].subtasks[0].files.push(PartInfo {
            path: "../../etc/passwd".into(),
            size: 1,
            kind: FileKind::KeyedState,
        });
        let err = CheckpointMetadata::decode(&meta.encode().unwrap(), "m").unwrap_err();
        assert!(err.to_string().contains("must stay inside"), "{err}");
        meta.operators[0].subtasks[0].files.clear();

        // Shared paths: under `shared/` of the root, and nowhere else.
        for (path, expected) in [
            ("count/000007.sst", "must start with `shared/`"),
            ("chk-0000000001/op/keyed-0.bin", "must start with `shared/`"),
            ("shared", "must start with `shared/`"),
            ("shared/", "must stay inside"),
            ("shared/../chk-0000000001/_metadata", "must stay inside"),
            ("shared/op//x.sst", "must stay inside"),
        ] {
            meta.operators[0].subtasks[0].shared = vec![SharedFile {
                path: path.into(),
                size: 1,
            }];
            let err = CheckpointMetadata::decode(&meta.encode().unwrap(), "m").unwrap_err();
            assert!(err.to_string().contains(expected), "{path}: {err}");
        }
        meta.operators[0].subtasks[0].shared[0].path = "shared/op/000007.sst".into();
        assert!(CheckpointMetadata::decode(&meta.encode().unwrap(), "m").is_ok());
    }

    #[test]
    fn key_group_span_matches_core_ranges() {
        let range = KeyGroupRange::for_subtask(128, 2, 1);
        let span = KeyGroupSpan::from_range(&range).unwrap();
        assert_eq!((span.start, span.end, span.len()), (64, 127, 64));
        assert_eq!(span.to_range(), range);
        assert_eq!(KeyGroupSpan::from_range(&KeyGroupRange::empty()), None);
        assert!(KeyGroupSpan { start: 3, end: 2 }.to_range().is_empty());
    }
}
