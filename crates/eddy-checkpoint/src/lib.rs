//! Where Eddy's checkpoints live, and in what shape (`docs/checkpoints.md`).
//!
//! This crate owns:
//!
//! * **Storage** ([`CheckpointStorage`]): a blocking put/get/list/delete view of a local
//!   directory, `s3://`, `gs://` or `az://`, through the `object_store` crate, with atomic puts
//!   (see its guarantees).
//! * **Framing** ([`format`](mod@format)): the magic, version, kind, length and crc32c around every file;
//!   a damaged, truncated, foreign or newer file is refused with an error naming it.
//! * **Layout and metadata** ([`Checkpoints`], [`CheckpointMetadata`]): `chk-<id>/` and
//!   `savepoint-<name>/` directories, `_metadata` written last (a checkpoint without it is
//!   not complete), listing, retention, and resolving a `--restore` argument ([`resolve`]).
//! * **Shared files** ([`Checkpoints::write_shared`], [`SharedFile`]): the SST files of
//!   incremental RocksDB checkpoints, uploaded once to `shared/<operator uid>/` of the root
//!   and referred to by every later checkpoint that still needs them; retention deletes each
//!   once no retained checkpoint refers to it.
//!
//! It does not know what the state inside a file means: `eddy-state` encodes keyed and
//! operator state into the payloads, and `eddy-runtime` decides when a checkpoint is taken and
//! complete. It depends only on `eddy-core`; it must not depend on the runtime, the state
//! backends or the API crates.
//!
//! # Examples
//!
//! ```
//! use eddy_checkpoint::{
//!     CheckpointKind, CheckpointMetadata, CheckpointRef, Checkpoints, FileKind, KeyGroupSpan,
//!     OperatorMetadata, SubtaskMetadata,
//! };
//! use eddy_core::KeyGroupRange;
//!
//! # let dir = tempfile::tempdir()?;
//! let checkpoints = Checkpoints::open(dir.path().to_str().unwrap())?;
//! let chk = CheckpointRef::Checkpoint(checkpoints.next_checkpoint_id()?);
//!
//! // Each subtask's part, written (by the runtime's uploader) as it becomes ready...
//! let part = checkpoints.write_part(&chk, "count", "keyed-0.bin", FileKind::KeyedState, b"..")?;
//!
//! // ...and the metadata last: now the checkpoint is complete.
//! let mut metadata = CheckpointMetadata::new("job", 1, CheckpointKind::Checkpoint, 99, 128);
//! metadata.operators.push(OperatorMetadata {
//!     uid: "count".into(),
//!     name: "count per key".into(),
//!     parallelism: 1,
//!     subtasks: vec![SubtaskMetadata {
//!         index: 0,
//!         key_groups: KeyGroupSpan::from_range(&KeyGroupRange::new(0, 127)),
//!         files: vec![part],
//!         states: vec![],
//!         shared: vec![],
//!     }],
//! });
//! checkpoints.commit(&metadata)?;
//!
//! let restore = checkpoints.resolve("latest")?;
//! let path = &restore.metadata.operators[0].subtasks[0].files[0].path;
//! assert_eq!(restore.read_part(path, FileKind::KeyedState)?, b"..");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod display;
pub mod format;
pub mod layout;
pub mod metadata;
pub mod storage;

pub use format::{
    frame, frame_owned, unframe, FileKind, FORMAT_VERSION, FRAME_LEN, OLDEST_READABLE_VERSION,
};
pub use layout::{
    resolve, CheckpointInfo, CheckpointRef, Checkpoints, RestorePoint, METADATA_FILE, SHARED_DIR,
};
pub use metadata::{
    CheckpointKind, CheckpointMetadata, KeyGroupSpan, OperatorMetadata, PartInfo, SharedFile,
    StateInfo, SubtaskMetadata,
};
pub use storage::{CheckpointStorage, ObjectInfo};
