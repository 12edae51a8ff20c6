//! [`Checkpoints`]: the checkpoint directory layout on a [`CheckpointStorage`].
//!
//! ```text
//! <root>/
//!   chk-0000000042/          checkpoint 42
//!     _metadata              written last: a checkpoint without it is not complete
//!     <operator uid>/
//!       keyed-<subtask>.bin  keyed state: full, or incremental (refers to shared files)
//!       operator-<subtask>.bin
//!   savepoint-<name>/        the same layout; never deleted by retention; never refers to
//!                            shared files (savepoints are self-contained)
//!   shared/
//!     <operator uid>/
//!       <file>               a shared file (one uploaded SST file of incremental RocksDB
//!                            checkpoints), uploaded once and referred to by every later
//!                            checkpoint that still needs it
//! ```
//!
//! # Guarantees
//!
//! * **A checkpoint is complete exactly when its `_metadata` exists.** [`Checkpoints::commit`]
//!   first checks that every file the metadata lists is stored with the listed size, then
//!   writes `_metadata` with one atomic put. A crash at any point before that leaves a
//!   directory without `_metadata`, which [`Checkpoints::list`] and [`Checkpoints::latest`]
//!   ignore (it is reported by [`Checkpoints::incomplete`]), so the previous complete
//!   checkpoint stays the latest.
//! * **Retention never leaves a half-deleted checkpoint that looks complete.**
//!   [`Checkpoints::retain`] deletes a checkpoint's `_metadata` before its other files.
//! * **A shared file is deleted only after the last complete checkpoint that refers to it has
//!   been deleted.** [`Checkpoints::retain`] reads the metadata of the checkpoints it deletes
//!   (before deleting them) and of every remaining complete checkpoint and savepoint, deletes
//!   the checkpoints, and only then deletes the shared files that a deleted checkpoint
//!   referred to and no remaining one does. It never deletes a shared file that no deleted
//!   checkpoint referred to: a checkpoint in flight may have just uploaded it. So files of
//!   abandoned attempts (and of a retention cut short by a crash) are left behind, as Flink
//!   does, and listed by [`Checkpoints::unreferenced_shared`] (`eddy checkpoints ls`).
//!   [`Checkpoints::commit`] refuses metadata referring to a shared file that is not stored
//!   with its listed size, and savepoint metadata referring to any shared file.
//! * Every file is framed and checksummed ([`crate::format`]); reading one checks the frame
//!   and its kind and refuses a damaged file with an error naming it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use eddy_core::{EddyError, Result};

use crate::format::{self, FileKind};
use crate::metadata::{CheckpointKind, CheckpointMetadata, PartInfo, SharedFile};
use crate::storage::CheckpointStorage;

/// The name of a checkpoint's metadata file, written last.
pub const METADATA_FILE: &str = "_metadata";

/// The directory of the checkpoint root that holds the shared files
/// (`shared/<operator uid>/<file>`); never a checkpoint directory.
pub const SHARED_DIR: &str = "shared";

const CHECKPOINT_PREFIX: &str = "chk-";
const SAVEPOINT_PREFIX: &str = "savepoint-";
/// Digits of a checkpoint directory's id: sorts by name up to id 9,999,999,999.
const ID_DIGITS: usize = 10;
/// Longest uid, file or savepoint name accepted as a path segment.
const MAX_SEGMENT_LEN: usize = 200;

/// Names one checkpoint or savepoint directory under a checkpoint root.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CheckpointRef {
    /// `chk-<id>` (id zero-padded to 10 digits).
    Checkpoint(u64),
    /// `savepoint-<name>`.
    Savepoint(String),
}

impl CheckpointRef {
    /// A savepoint reference, checking that `name` can be a directory name (ASCII letters,
    /// digits, `-`, `_`, `.`; at most 200 characters).
    pub fn savepoint(name: &str) -> Result<Self> {
        check_segment(name, "savepoint name")?;
        Ok(CheckpointRef::Savepoint(name.to_string()))
    }

    /// The directory name: `chk-0000000042` or `savepoint-<name>`.
    pub fn dir_name(&self) -> String {
        match self {
            CheckpointRef::Checkpoint(id) => format!("{CHECKPOINT_PREFIX}{id:0ID_DIGITS$}"),
            CheckpointRef::Savepoint(name) => format!("{SAVEPOINT_PREFIX}{name}"),
        }
    }

    /// The reference a directory name stands for, if it is one of ours. Only the canonical
    /// checkpoint name is recognised (`chk-` and 10 digits), so each id has one directory.
    pub fn parse_dir_name(name: &str) -> Option<Self> {
        if let Some(digits) = name.strip_prefix(CHECKPOINT_PREFIX) {
            let id: u64 = digits.parse().ok()?;
            let parsed = CheckpointRef::Checkpoint(id);
            return (digits.bytes().all(|b| b.is_ascii_digit()) && parsed.dir_name() == name)
                .then_some(parsed);
        }
        let savepoint = name.strip_prefix(SAVEPOINT_PREFIX)?;
        check_segment(savepoint, "savepoint name").ok()?;
        Some(CheckpointRef::Savepoint(savepoint.to_string()))
    }

    /// The checkpoint id, for a checkpoint.
    pub fn checkpoint_id(&self) -> Option<u64> {
        match self {
            CheckpointRef::Checkpoint(id) => Some(*id),
            CheckpointRef::Savepoint(_) => None,
        }
    }
}

impl std::fmt::Display for CheckpointRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.dir_name())
    }
}

/// A complete checkpoint or savepoint: where it is and what its metadata says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointInfo {
    /// Its directory under the root.
    pub reference: CheckpointRef,
    /// The directory as shown to people (path or URL).
    pub location: String,
    /// Its `_metadata`.
    pub metadata: CheckpointMetadata,
}

/// The checkpoints under one root: writes parts and metadata, lists, reads, retains.
///
/// Cheap to clone (the storage is shared) and `Send + Sync`. Every method blocks; call them
/// from plain threads, never from inside an async runtime (see [`CheckpointStorage`]).
#[derive(Clone, Debug)]
pub struct Checkpoints {
    storage: Arc<CheckpointStorage>,
    /// Buffers of written parts, for the next parts to be encoded into (see
    /// [`payload_buffer`](Checkpoints::payload_buffer)).
    buffers: Arc<BufferPool>,
}

/// Recycled part buffers, smallest first. Its `Debug` shows how many, not their bytes.
#[derive(Default)]
struct BufferPool(Mutex<Vec<Vec<u8>>>);

impl std::fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count = self.0.lock().map_or(0, |buffers| buffers.len());
        write!(f, "BufferPool({count} buffers)")
    }
}

/// Recycled part buffers kept at most: one per subtask writing parts at a time is what a job
/// reuses; more would only hold memory.
const MAX_RECYCLED_BUFFERS: usize = 16;

impl Checkpoints {
    /// Opens the checkpoint root at `location` (see [`CheckpointStorage::open`] for the
    /// accepted paths and URLs).
    pub fn open(location: &str) -> Result<Self> {
        Ok(Self::new(CheckpointStorage::open(location)?))
    }

    /// Opens an existing checkpoint root, never creating a local directory (see
    /// [`CheckpointStorage::open_existing`]).
    pub fn open_existing(location: &str) -> Result<Self> {
        Ok(Self::new(CheckpointStorage::open_existing(location)?))
    }

    /// The checkpoints under `storage`'s root.
    pub fn new(storage: CheckpointStorage) -> Self {
        Self {
            storage: Arc::new(storage),
            buffers: Arc::default(),
        }
    }

    /// An empty buffer to encode a part into before [`write_part_owned`](Self::write_part_owned):
    /// the buffer of a part written earlier when there is one (the largest), so that a
    /// checkpoint's multi-megabyte parts reuse memory the process already has mapped
    /// instead of having the kernel zero fresh pages for every checkpoint.
    pub fn payload_buffer(&self) -> Vec<u8> {
        let mut buffers = self
            .buffers
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut buffer = buffers.pop().unwrap_or_default();
        buffer.clear();
        buffer
    }

    /// Keeps `buffer` for [`payload_buffer`](Self::payload_buffer), largest last.
    fn recycle(&self, buffer: Vec<u8>) {
        let mut buffers = self
            .buffers
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let at = buffers.partition_point(|b| b.capacity() <= buffer.capacity());
        buffers.insert(at, buffer);
        if buffers.len() > MAX_RECYCLED_BUFFERS {
            buffers.remove(0);
        }
    }

    /// The storage underneath.
    pub fn storage(&self) -> &CheckpointStorage {
        &self.storage
    }

    /// The root as shown to people.
    pub fn location(&self) -> &str {
        self.storage.location()
    }

    /// The directory of `checkpoint` as shown to people.
    pub fn location_of(&self, checkpoint: &CheckpointRef) -> String {
        self.storage.describe(&checkpoint.dir_name())
    }

    /// Frames `payload` as a file of `kind` and stores it as
    /// `<checkpoint>/<operator_uid>/<file_name>`. Atomic and durable on return. Returns the
    /// entry to put into the subtask's [`crate::SubtaskMetadata::files`].
    ///
    /// `operator_uid` and `file_name` must be path segments: ASCII letters, digits, `-`, `_`,
    /// `.`, not starting with `.` or `_` (names starting with `_` belong to the layout, like
    /// `_metadata`), at most 200 characters.
    pub fn write_part(
        &self,
        checkpoint: &CheckpointRef,
        operator_uid: &str,
        file_name: &str,
        kind: FileKind,
        payload: &[u8],
    ) -> Result<PartInfo> {
        self.put_part(checkpoint, operator_uid, file_name, kind, |kind| {
            format::frame(kind, payload)
        })
        .map(|(info, _)| info)
    }

    /// [`write_part`](Self::write_part) for a payload the caller gives up: it is framed in
    /// its own buffer ([`format::frame_owned`]; leave [`format::FRAME_LEN`] bytes of spare
    /// capacity to spare a reallocation), so a large part is never copied whole, and the
    /// buffer is kept for [`payload_buffer`](Self::payload_buffer) once written.
    pub fn write_part_owned(
        &self,
        checkpoint: &CheckpointRef,
        operator_uid: &str,
        file_name: &str,
        kind: FileKind,
        payload: Vec<u8>,
    ) -> Result<PartInfo> {
        let (info, written) = self.put_part(checkpoint, operator_uid, file_name, kind, |kind| {
            format::frame_owned(kind, payload)
        })?;
        if let Some(buffer) = written {
            self.recycle(buffer);
        }
        Ok(info)
    }

    /// Checks the names, frames the part with `framed` and stores it; returns the part's
    /// entry and the written buffer if the store gave it back.
    fn put_part(
        &self,
        checkpoint: &CheckpointRef,
        operator_uid: &str,
        file_name: &str,
        kind: FileKind,
        framed: impl FnOnce(FileKind) -> Vec<u8>,
    ) -> Result<(PartInfo, Option<Vec<u8>>)> {
        if kind == FileKind::Metadata {
            return Err(EddyError::Internal(
                "write_part cannot write metadata: use Checkpoints::commit".into(),
            ));
        }
        check_segment(operator_uid, "operator uid")?;
        check_segment(file_name, "checkpoint file name")?;
        let path = format!("{operator_uid}/{file_name}");
        let framed = framed(kind);
        let size = framed.len() as u64;
        let written = self
            .storage
            .put_reclaiming(&format!("{}/{path}", checkpoint.dir_name()), framed)?;
        Ok((PartInfo { path, size, kind }, written))
    }

    /// The path of a shared file, relative to the checkpoint root: `shared/<operator_uid>/
    /// <file_name>`, for [`write_shared`](Self::write_shared).
    ///
    /// Both must be path segments, as for [`write_part`](Self::write_part). A shared file is
    /// immutable: `file_name` must stand for its contents under the operator (e.g. an SST
    /// file's name qualified by its RocksDB instance), since a later upload to the same path
    /// would replace what earlier checkpoints refer to.
    pub fn shared_path(operator_uid: &str, file_name: &str) -> Result<String> {
        check_segment(operator_uid, "operator uid")?;
        check_segment(file_name, "shared file name")?;
        Ok(format!("{SHARED_DIR}/{operator_uid}/{file_name}"))
    }

    /// Frames `payload` as a [`FileKind::SharedState`] file and stores it at `path` (relative
    /// to the checkpoint root, starting with `shared/`: see
    /// [`shared_path`](Self::shared_path)). Atomic and durable on return. Returns the entry to
    /// put into the [`crate::SubtaskMetadata::shared`] of every checkpoint that refers to it.
    ///
    /// Until a complete checkpoint refers to it, the file is unreferenced: retention leaves it
    /// alone (a checkpoint in flight may be about to refer to it) and
    /// [`unreferenced_shared`](Self::unreferenced_shared) lists it.
    pub fn write_shared(&self, path: &str, payload: &[u8]) -> Result<SharedFile> {
        let (shared, _) = self.put_shared(path, |kind| format::frame(kind, payload))?;
        Ok(shared)
    }

    /// [`write_shared`](Self::write_shared) of a payload in its own buffer: framed in place
    /// ([`format::frame_owned`]; leave [`format::FRAME_LEN`] bytes of spare capacity), and
    /// the buffer kept for [`payload_buffer`](Self::payload_buffer) once written, as
    /// [`write_part_owned`](Self::write_part_owned) does for parts.
    pub fn write_shared_owned(&self, path: &str, payload: Vec<u8>) -> Result<SharedFile> {
        let (shared, written) = self.put_shared(path, |kind| format::frame_owned(kind, payload))?;
        if let Some(buffer) = written {
            self.recycle(buffer);
        }
        Ok(shared)
    }

    /// Checks `path`, frames the shared file with `framed` and stores it; returns its entry
    /// and the written buffer if the store gave it back.
    fn put_shared(
        &self,
        path: &str,
        framed: impl FnOnce(FileKind) -> Vec<u8>,
    ) -> Result<(SharedFile, Option<Vec<u8>>)> {
        check_shared_path(path, &self.storage.describe(path))?;
        let framed = framed(FileKind::SharedState);
        let size = framed.len() as u64;
        let written = self.storage.put_reclaiming(path, framed)?;
        let shared = SharedFile {
            path: path.to_string(),
            size,
        };
        Ok((shared, written))
    }

    /// Reads the shared file at `path` (a [`SharedFile::path`], relative to the checkpoint
    /// root), checks its frame and kind, and returns its payload. A missing file is an error
    /// naming it: the checkpoint that refers to it cannot be restored.
    pub fn read_shared(&self, path: &str) -> Result<Vec<u8>> {
        let location = self.storage.describe(path);
        check_shared_path(path, &location)?;
        let Some(bytes) = self.storage.get_opt(path)? else {
            return Err(EddyError::checkpoint(
                location,
                "the checkpoint refers to this shared file, but it is missing",
            ));
        };
        payload_of(bytes, FileKind::SharedState, &location)
    }

    /// Completes a checkpoint: checks that every file `metadata` lists is stored with its
    /// listed size, and every shared file it refers to too (at its path under the root), then
    /// writes `_metadata` (atomically, last). Until this returns the checkpoint is incomplete;
    /// once it returns it is complete and durable.
    ///
    /// A savepoint's metadata must not refer to shared files: savepoints are self-contained
    /// (full snapshots), so deleting one never concerns another, nor retention them.
    ///
    /// The directory is `metadata.reference()`. Checkpoint ids must be fresh: committing over
    /// a complete checkpoint replaces its metadata (see [`Checkpoints::next_checkpoint_id`]).
    /// Not to be run concurrently with [`retain`](Self::retain) on the same root (the
    /// runtime's writer runs them one after the other).
    pub fn commit(&self, metadata: &CheckpointMetadata) -> Result<CheckpointInfo> {
        let reference = metadata.reference();
        let dir = reference.dir_name();
        let location = self.storage.describe(&format!("{dir}/{METADATA_FILE}"));
        if let CheckpointKind::Savepoint { name } = &metadata.kind {
            check_segment(name, "savepoint name")?;
        }
        if reference == CheckpointRef::Checkpoint(0) {
            return Err(EddyError::checkpoint(location, "checkpoint ids start at 1"));
        }
        metadata.validate(&location)?;
        if matches!(metadata.kind, CheckpointKind::Savepoint { .. }) {
            if let Some(shared) = metadata.shared_files().next() {
                return Err(EddyError::checkpoint(
                    location,
                    format!(
                        "savepoints are self-contained: a savepoint cannot refer to shared \
                         files, but its metadata lists {} (e.g. {:?}); take it from full \
                         snapshots",
                        metadata.shared_files().count(),
                        shared.path
                    ),
                ));
            }
        }

        let stored: HashMap<String, u64> = self
            .storage
            .list(&dir)?
            .into_iter()
            .filter_map(|object| {
                let relative = object.path.strip_prefix(&dir)?.strip_prefix('/')?;
                Some((relative.to_string(), object.size))
            })
            .collect();
        for file in metadata.files() {
            match stored.get(&file.path) {
                Some(&size) if size == file.size => {}
                Some(&size) => {
                    return Err(EddyError::checkpoint(
                        self.storage.describe(&format!("{dir}/{}", file.path)),
                        format!(
                            "cannot complete the checkpoint: the file has {size} bytes, the \
                             metadata lists {}",
                            file.size
                        ),
                    ))
                }
                None => {
                    return Err(EddyError::checkpoint(
                        self.storage.describe(&format!("{dir}/{}", file.path)),
                        "cannot complete the checkpoint: the metadata lists this file, but it \
                         was not written",
                    ))
                }
            }
        }
        self.check_shared_stored(metadata)?;
        self.storage
            .put(&format!("{dir}/{METADATA_FILE}"), metadata.encode()?)?;
        Ok(CheckpointInfo {
            location: self.storage.describe(&dir),
            reference,
            metadata: metadata.clone(),
        })
    }

    /// Every complete checkpoint (by id, oldest first), then every complete savepoint (oldest
    /// first). Directories without `_metadata` are left out: see [`Checkpoints::incomplete`].
    /// A `_metadata` that cannot be read is an error naming it.
    pub fn list(&self) -> Result<Vec<CheckpointInfo>> {
        let mut checkpoints = Vec::new();
        let mut savepoints = Vec::new();
        for reference in self.directories()? {
            let Some(metadata) = self.try_read_metadata(&reference)? else {
                continue;
            };
            let info = CheckpointInfo {
                location: self.location_of(&reference),
                reference,
                metadata,
            };
            match info.reference {
                CheckpointRef::Checkpoint(_) => checkpoints.push(info),
                CheckpointRef::Savepoint(_) => savepoints.push(info),
            }
        }
        checkpoints.sort_by(|a, b| a.reference.cmp(&b.reference));
        savepoints.sort_by_key(|info| (info.metadata.taken_at_unix_ms, info.reference.clone()));
        checkpoints.extend(savepoints);
        Ok(checkpoints)
    }

    /// Checkpoint and savepoint directories without `_metadata`: in flight, or left by a
    /// crash or a failed checkpoint. Sorted (checkpoints by id, then savepoints by name).
    pub fn incomplete(&self) -> Result<Vec<CheckpointRef>> {
        let mut incomplete = Vec::new();
        for reference in self.directories()? {
            if !self.is_complete(&reference)? {
                incomplete.push(reference);
            }
        }
        Ok(incomplete)
    }

    /// The newest complete checkpoint (highest id), if any. Savepoints are not considered:
    /// they are restored by name.
    pub fn latest(&self) -> Result<Option<CheckpointInfo>> {
        let mut ids = self.checkpoint_ids()?;
        ids.sort_unstable_by(|a, b| b.cmp(a));
        for id in ids {
            let reference = CheckpointRef::Checkpoint(id);
            if let Some(metadata) = self.try_read_metadata(&reference)? {
                return Ok(Some(CheckpointInfo {
                    location: self.location_of(&reference),
                    reference,
                    metadata,
                }));
            }
        }
        Ok(None)
    }

    /// The id for the next checkpoint: one more than any checkpoint directory's, complete or
    /// not (so a new checkpoint never writes into an old directory), and at least 1.
    pub fn next_checkpoint_id(&self) -> Result<u64> {
        Ok(self
            .checkpoint_ids()?
            .into_iter()
            .max()
            .map_or(1, |id| id.saturating_add(1)))
    }

    /// The metadata of `checkpoint`. A directory without `_metadata` is an error saying it is
    /// incomplete; a missing directory one saying it does not exist.
    pub fn read_metadata(&self, checkpoint: &CheckpointRef) -> Result<CheckpointMetadata> {
        if let Some(metadata) = self.try_read_metadata(checkpoint)? {
            return Ok(metadata);
        }
        let dir = checkpoint.dir_name();
        let reason = if self.storage.list(&dir)?.is_empty() {
            "no such checkpoint (nothing stored there)"
        } else {
            "incomplete checkpoint: it has no _metadata (it was never finished); restore from \
             another one"
        };
        Err(EddyError::checkpoint(self.storage.describe(&dir), reason))
    }

    /// Reads the file `path` (relative to the checkpoint directory, as in [`PartInfo::path`])
    /// of `checkpoint`, checks its frame and kind, and returns its payload.
    pub fn read_part(
        &self,
        checkpoint: &CheckpointRef,
        path: &str,
        kind: FileKind,
    ) -> Result<Vec<u8>> {
        let full = format!("{}/{path}", checkpoint.dir_name());
        let location = self.storage.describe(&full);
        check_relative_path(path, &location)?;
        payload_of(self.storage.get(&full)?, kind, &location)
    }

    /// Deletes all but the newest `retain` complete checkpoints, and every incomplete
    /// checkpoint older than the newest complete one (a failed or abandoned attempt). Newer
    /// incomplete checkpoints are kept: they may be in flight. Savepoints are never deleted.
    /// Returns what was deleted, oldest first.
    ///
    /// Then it garbage-collects shared files: it deletes each shared file that a deleted
    /// complete checkpoint referred to and no remaining complete checkpoint or savepoint refers
    /// to, after the checkpoints themselves. So a shared file is deleted only after the last
    /// complete checkpoint that refers to it has been deleted. Shared files that no deleted
    /// checkpoint referred to are never deleted (a checkpoint in flight may be uploading
    /// them): those of abandoned attempts are left behind, as Flink does, and listed by
    /// [`unreferenced_shared`](Self::unreferenced_shared).
    ///
    /// When the deleted checkpoints refer to shared files, the metadata of the remaining
    /// checkpoints and savepoints is read before anything is deleted: if one cannot be read,
    /// that is the error and nothing is deleted. A deleted
    /// checkpoint whose `_metadata` cannot be decoded is deleted all the same, leaving the
    /// shared files it referred to (unknown) behind. Not to be run concurrently with
    /// [`commit`](Self::commit) on the same root.
    pub fn retain(&self, retain: usize) -> Result<Vec<CheckpointRef>> {
        if retain == 0 {
            return Err(EddyError::Config(
                "checkpoint retention must keep at least 1 complete checkpoint".into(),
            ));
        }
        let mut complete = Vec::new();
        let mut incomplete = Vec::new();
        for id in self.checkpoint_ids()? {
            let reference = CheckpointRef::Checkpoint(id);
            if self.is_complete(&reference)? {
                complete.push(id);
            } else {
                incomplete.push(id);
            }
        }
        complete.sort_unstable();
        let Some(&newest) = complete.last() else {
            return Ok(Vec::new()); // nothing complete: every attempt may still be needed
        };
        let doomed_complete = &complete[..complete.len().saturating_sub(retain)];
        let mut doomed: Vec<u64> = doomed_complete.to_vec();
        doomed.extend(incomplete.into_iter().filter(|&id| id < newest));
        doomed.sort_unstable();

        // The shared files the doomed complete checkpoints refer to, read before they go.
        let mut doomed_shared = BTreeSet::new();
        for &id in doomed_complete {
            let path = format!(
                "{}/{METADATA_FILE}",
                CheckpointRef::Checkpoint(id).dir_name()
            );
            let Some(bytes) = self.storage.get_opt(&path)? else {
                continue;
            };
            // Undecodable: what it referred to is unknown, so nothing of it is deleted (its
            // shared files stay, listed by `unreferenced_shared`); it goes all the same.
            if let Ok(metadata) = CheckpointMetadata::decode(&bytes, &self.storage.describe(&path))
            {
                doomed_shared.extend(metadata.shared_files().map(|file| file.path.clone()));
            }
        }
        // Minus what the remaining ones refer to, read before anything is deleted: one that
        // cannot be read stops retention here, with nothing deleted.
        if !doomed_shared.is_empty() {
            for reference in self.directories()? {
                if reference
                    .checkpoint_id()
                    .is_some_and(|id| doomed.binary_search(&id).is_ok())
                {
                    continue;
                }
                if let Some(metadata) = self.try_read_metadata(&reference)? {
                    for file in metadata.shared_files() {
                        doomed_shared.remove(&file.path);
                    }
                }
            }
        }

        let mut deleted = Vec::with_capacity(doomed.len());
        for id in doomed {
            let reference = CheckpointRef::Checkpoint(id);
            self.delete(&reference)?;
            deleted.push(reference);
        }
        // Only now: until the checkpoints referring to them are gone, they are needed.
        for path in &doomed_shared {
            self.storage.delete(path)?;
        }
        Ok(deleted)
    }

    /// The shared files (paths relative to the root, sorted) that no complete checkpoint or
    /// savepoint refers to: uploaded by a checkpoint in flight, or left behind by an abandoned
    /// attempt or a retention cut short. Retention never deletes them; a shared file that is
    /// still unreferenced once no checkpoint is in flight can be deleted by hand. A `_metadata`
    /// that cannot be read is an error naming it.
    pub fn unreferenced_shared(&self) -> Result<Vec<String>> {
        let stored = self.storage.list(SHARED_DIR)?;
        if stored.is_empty() {
            return Ok(Vec::new());
        }
        let referenced: HashSet<String> = self
            .list()?
            .iter()
            .flat_map(|info| info.metadata.shared_files().map(|file| file.path.clone()))
            .collect();
        Ok(stored
            .into_iter()
            .map(|object| object.path)
            .filter(|path| !referenced.contains(path))
            .collect())
    }

    /// Deletes a checkpoint or savepoint directory: its `_metadata` first (so a crash midway
    /// leaves an incomplete checkpoint, never one that looks complete), then everything else.
    ///
    /// The shared files a checkpoint refers to are not deleted here (others may refer to them):
    /// [`retain`](Self::retain) collects them. Savepoints never refer to shared files
    /// ([`commit`](Self::commit) refuses such metadata), so deleting one never affects another
    /// checkpoint or savepoint.
    pub fn delete(&self, checkpoint: &CheckpointRef) -> Result<()> {
        let dir = checkpoint.dir_name();
        // The metadata goes first: a half-deleted checkpoint is then incomplete, never a
        // complete one with missing files.
        self.storage.delete(&format!("{dir}/{METADATA_FILE}"))?;
        self.storage.delete_prefix(&dir)?;
        Ok(())
    }

    /// Resolves a `--restore` argument against this root; see [`resolve`].
    pub fn resolve(&self, arg: &str) -> Result<RestorePoint> {
        resolve(arg, Some(self))
    }

    /// Checks that every shared file `metadata` refers to is stored, with its listed size.
    fn check_shared_stored(&self, metadata: &CheckpointMetadata) -> Result<()> {
        // One listing per directory (`shared/<uid>`), not one request per file.
        let dirs: BTreeSet<&str> = metadata
            .shared_files()
            .filter_map(|file| file.path.rsplit_once('/').map(|(dir, _)| dir))
            .collect();
        let mut stored = HashMap::new();
        for dir in dirs {
            for object in self.storage.list(dir)? {
                stored.insert(object.path, object.size);
            }
        }
        for file in metadata.shared_files() {
            match stored.get(&file.path) {
                Some(&size) if size == file.size => {}
                Some(&size) => {
                    return Err(EddyError::checkpoint(
                        self.storage.describe(&file.path),
                        format!(
                            "cannot complete the checkpoint: the shared file has {size} bytes, \
                             the metadata lists {}",
                            file.size
                        ),
                    ))
                }
                None => {
                    return Err(EddyError::checkpoint(
                        self.storage.describe(&file.path),
                        "cannot complete the checkpoint: the metadata refers to this shared \
                         file, but it is not stored",
                    ))
                }
            }
        }
        Ok(())
    }

    fn directories(&self) -> Result<Vec<CheckpointRef>> {
        let mut refs: Vec<CheckpointRef> = self
            .storage
            .list_dirs("")?
            .iter()
            .filter_map(|name| CheckpointRef::parse_dir_name(name))
            .collect();
        refs.sort();
        Ok(refs)
    }

    fn checkpoint_ids(&self) -> Result<Vec<u64>> {
        Ok(self
            .directories()?
            .iter()
            .filter_map(CheckpointRef::checkpoint_id)
            .collect())
    }

    fn is_complete(&self, checkpoint: &CheckpointRef) -> Result<bool> {
        let path = format!("{}/{METADATA_FILE}", checkpoint.dir_name());
        Ok(self.storage.size(&path)?.is_some())
    }

    fn try_read_metadata(&self, checkpoint: &CheckpointRef) -> Result<Option<CheckpointMetadata>> {
        let path = format!("{}/{METADATA_FILE}", checkpoint.dir_name());
        let Some(bytes) = self.storage.get_opt(&path)? else {
            return Ok(None);
        };
        CheckpointMetadata::decode(&bytes, &self.storage.describe(&path)).map(Some)
    }
}

/// A checkpoint or savepoint chosen to restore from, with its metadata read and checked.
#[derive(Clone, Debug)]
pub struct RestorePoint {
    /// The root it lives under.
    pub checkpoints: Checkpoints,
    /// Its directory under that root.
    pub reference: CheckpointRef,
    /// Its metadata.
    pub metadata: CheckpointMetadata,
}

impl RestorePoint {
    /// Its directory as shown to people.
    pub fn location(&self) -> String {
        self.checkpoints.location_of(&self.reference)
    }

    /// Reads one of its files (a [`PartInfo::path`] from the metadata) and returns the payload.
    pub fn read_part(&self, path: &str, kind: FileKind) -> Result<Vec<u8>> {
        self.checkpoints.read_part(&self.reference, path, kind)
    }

    /// Reads a shared file its incremental keyed state refers to (a [`SharedFile::path`] from
    /// the metadata, relative to the root) and returns the payload; see
    /// [`Checkpoints::read_shared`].
    pub fn read_shared(&self, path: &str) -> Result<Vec<u8>> {
        self.checkpoints.read_shared(path)
    }
}

/// Resolves a `--restore` argument to a complete checkpoint or savepoint.
///
/// * `latest`: the newest complete checkpoint under `root`;
/// * a checkpoint id (`42`): `chk-0000000042` under `root`;
/// * a directory name (`chk-0000000042`, `savepoint-before-upgrade`): under `root`;
/// * a path or URL of such a directory (`/ckpt/chk-0000000042`,
///   `s3://bucket/jobs/x/savepoint-v1`, optionally ending in `/_metadata`): its parent is
///   opened as the root.
///
/// A missing or incomplete checkpoint is an error naming it. `root` is the job's checkpoint
/// location, if it has one; the first three forms need it.
pub fn resolve(arg: &str, root: Option<&Checkpoints>) -> Result<RestorePoint> {
    let arg = arg.trim();
    let need_root = |what: &str| {
        root.cloned().ok_or_else(|| {
            EddyError::Config(format!(
                "cannot restore from {what}: no checkpoint directory is configured (give one, \
                 or the path or URL of a chk-<id> or savepoint-<name> directory)"
            ))
        })
    };
    let point = |checkpoints: Checkpoints, reference: CheckpointRef| {
        let metadata = checkpoints.read_metadata(&reference)?;
        Ok(RestorePoint {
            checkpoints,
            reference,
            metadata,
        })
    };

    if arg == "latest" {
        let checkpoints = need_root("`latest`")?;
        return match checkpoints.latest()? {
            Some(info) => Ok(RestorePoint {
                checkpoints,
                reference: info.reference,
                metadata: info.metadata,
            }),
            None => Err(EddyError::checkpoint(
                checkpoints.location(),
                "no complete checkpoint to restore from (`latest`)",
            )),
        };
    }
    if !arg.is_empty() && arg.bytes().all(|b| b.is_ascii_digit()) {
        let id: u64 = arg
            .parse()
            .map_err(|_| EddyError::Config(format!("checkpoint id {arg} is out of range")))?;
        return point(
            need_root(&format!("checkpoint {id}"))?,
            CheckpointRef::Checkpoint(id),
        );
    }

    let trimmed = arg.trim_end_matches('/');
    let trimmed = trimmed
        .strip_suffix(METADATA_FILE)
        .map_or(trimmed, |dir| dir.trim_end_matches('/'));
    let (parent, name) = match trimmed.rsplit_once('/') {
        Some((parent, name)) => (Some(parent), name),
        None => (None, trimmed),
    };
    let Some(reference) = CheckpointRef::parse_dir_name(name) else {
        return Err(EddyError::checkpoint(
            arg,
            "not a checkpoint to restore from: expected `latest`, a checkpoint id, or a \
             chk-<10-digit id> or savepoint-<name> directory",
        ));
    };
    let checkpoints = match parent {
        // `s3://bucket/chk-…`: the bucket itself is the root.
        // `file:///chk-…`: the root directory.
        Some(parent) if parent.ends_with("//") => {
            Checkpoints::open_existing(&format!("{parent}/"))?
        }
        Some("") => Checkpoints::open_existing("/")?,
        Some(parent) => Checkpoints::open_existing(parent)?,
        None => match root {
            Some(root) => root.clone(),
            // A bare directory name without a root: relative to the working directory.
            None => Checkpoints::open_existing(".")?,
        },
    };
    point(checkpoints, reference)
}

/// Checks that `name` can be one path segment of the layout.
fn check_segment(name: &str, what: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= MAX_SEGMENT_LEN
        && !name.starts_with('.')
        && !name.starts_with('_')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(EddyError::Config(format!(
            "invalid {what} {name:?}: it names a checkpoint directory or file, so it must be 1 to \
             {MAX_SEGMENT_LEN} ASCII letters, digits, '-', '_' or '.', not starting with '.' or '_'"
        )))
    }
}

/// The payload of the framed file `bytes` of `kind` (`location` names it in errors), kept in
/// place.
fn payload_of(mut bytes: Vec<u8>, kind: FileKind, location: &str) -> Result<Vec<u8>> {
    let payload_len = format::unframe(&bytes, kind, location)?.len();
    // Keep the payload in place: drop the trailer, then shift it over the header.
    bytes.truncate(format::HEADER_LEN + payload_len);
    bytes.drain(..format::HEADER_LEN);
    Ok(bytes)
}

/// Checks that a shared file's path (relative to the root) is inside `shared/`.
pub(crate) fn check_shared_path(path: &str, location: &str) -> Result<()> {
    let inside = path
        .strip_prefix(SHARED_DIR)
        .is_some_and(|rest| rest.starts_with('/'));
    if !inside {
        return Err(EddyError::checkpoint(
            location,
            format!(
                "invalid shared file path {path:?}: it must start with `{SHARED_DIR}/` (shared \
                 files live in `{SHARED_DIR}/<operator uid>/` of the checkpoint root)"
            ),
        ));
    }
    check_relative_path(path, location)
}

/// Checks that a path from metadata stays inside its checkpoint directory.
pub(crate) fn check_relative_path(path: &str, location: &str) -> Result<()> {
    let valid = !path.is_empty()
        && path.split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && !segment.contains('\\')
                && segment.len() <= MAX_SEGMENT_LEN
        });
    if valid {
        Ok(())
    } else {
        Err(EddyError::checkpoint(
            location,
            format!("invalid file path {path:?} in the metadata (must stay inside the checkpoint)"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_part_buffer_is_reused_and_the_file_is_intact() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| EddyError::io("tempdir", e))?;
        let checkpoints = Checkpoints::open(&dir.path().display().to_string())?;
        let chk = CheckpointRef::Checkpoint(1);
        let mut first = checkpoints.payload_buffer();
        assert_eq!(first.capacity(), 0, "nothing written yet");
        first.reserve(100_000 + format::FRAME_LEN);
        first.extend((0..100_000u32).map(|i| i as u8));
        let expected = first.clone();
        let address = first.as_ptr();
        let info =
            checkpoints.write_part_owned(&chk, "op", "a.bin", FileKind::KeyedState, first)?;
        assert_eq!(
            checkpoints.read_part(&chk, &info.path, FileKind::KeyedState)?,
            expected
        );

        // The next part goes into the same memory, and the first file is unaffected.
        let mut second = checkpoints.payload_buffer();
        assert!(second.is_empty());
        assert_eq!(second.as_ptr(), address, "the written buffer came back");
        second.extend_from_slice(b"second");
        let info2 =
            checkpoints.write_part_owned(&chk, "op", "b.bin", FileKind::KeyedState, second)?;
        assert_eq!(
            checkpoints.read_part(&chk, &info2.path, FileKind::KeyedState)?,
            b"second"
        );
        assert_eq!(
            checkpoints.read_part(&chk, &info.path, FileKind::KeyedState)?,
            expected
        );
        Ok(())
    }

    #[test]
    fn a_shared_file_written_from_its_own_buffer_reads_back_and_the_buffer_returns() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| EddyError::io("tempdir", e))?;
        let checkpoints = Checkpoints::open(&dir.path().display().to_string())?;
        let mut contents = Vec::with_capacity(70_000 + format::FRAME_LEN);
        contents.extend((0..70_000u32).map(|i| (i % 253) as u8));
        let expected = contents.clone();
        let address = contents.as_ptr();
        let path = Checkpoints::shared_path("op", "sst-000042.sst")?;
        let shared = checkpoints.write_shared_owned(&path, contents)?;
        assert_eq!(shared.size, (expected.len() + format::FRAME_LEN) as u64);
        assert_eq!(checkpoints.read_shared(&shared.path)?, expected);
        // The same bytes as the copying write, byte for byte.
        let copied = Checkpoints::shared_path("op", "sst-000043.sst")?;
        checkpoints.write_shared(&copied, &expected)?;
        assert_eq!(
            checkpoints.storage().get_opt(&copied)?,
            checkpoints.storage().get_opt(&path)?
        );
        let returned = checkpoints.payload_buffer();
        assert_eq!(returned.as_ptr(), address, "the written buffer came back");
        Ok(())
    }

    #[test]
    fn directory_names() {
        assert_eq!(CheckpointRef::Checkpoint(42).dir_name(), "chk-0000000042");
        assert_eq!(
            CheckpointRef::parse_dir_name("chk-0000000042"),
            Some(CheckpointRef::Checkpoint(42))
        );
        assert_eq!(CheckpointRef::parse_dir_name("chk-42"), None);
        assert_eq!(CheckpointRef::parse_dir_name("chk-+000000042"), None);
        assert_eq!(CheckpointRef::parse_dir_name("chk-"), None);
        assert_eq!(
            CheckpointRef::parse_dir_name("savepoint-v1.2"),
            Some(CheckpointRef::Savepoint("v1.2".into()))
        );
        assert_eq!(CheckpointRef::parse_dir_name("savepoint-"), None);
        assert_eq!(CheckpointRef::parse_dir_name("other"), None);
        // The shared files' directory is never taken for a checkpoint.
        assert_eq!(CheckpointRef::parse_dir_name(SHARED_DIR), None);
        // Ids past 10 digits still round-trip (the name just gets longer).
        let big = CheckpointRef::Checkpoint(u64::MAX);
        assert_eq!(CheckpointRef::parse_dir_name(&big.dir_name()), Some(big));
    }

    #[test]
    fn segments_are_checked() {
        assert!(check_segment("window-1_a.b", "uid").is_ok());
        for bad in [
            "",
            ".",
            "..",
            "_metadata",
            "a/b",
            "a b",
            "ä",
            &"x".repeat(201),
        ] {
            assert!(check_segment(bad, "uid").is_err(), "{bad:?}");
        }
        assert!(CheckpointRef::savepoint("../x").is_err());
    }

    #[test]
    fn shared_paths() {
        assert_eq!(
            Checkpoints::shared_path("count", "3-a1b2-000012.sst").unwrap(),
            "shared/count/3-a1b2-000012.sst"
        );
        for (uid, file) in [("a/b", "x.sst"), ("op", "../x"), ("_op", "x"), ("op", "")] {
            assert!(
                matches!(
                    Checkpoints::shared_path(uid, file),
                    Err(EddyError::Config(_))
                ),
                "{uid}/{file}"
            );
        }
        assert!(check_shared_path("shared/op/x.sst", "x").is_ok());
        for bad in [
            "sharedx/op/x",
            "op/x",
            "shared",
            "shared/",
            "shared/../x",
            "/shared/x",
        ] {
            assert!(check_shared_path(bad, "x").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn relative_paths_stay_inside() {
        assert!(check_relative_path("op/keyed-0.bin", "x").is_ok());
        for bad in ["", "/abs", "op/../../x", "op//x", "./x", "op\\x"] {
            assert!(check_relative_path(bad, "x").is_err(), "{bad:?}");
        }
    }
}
