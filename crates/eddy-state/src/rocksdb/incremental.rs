//! Incremental checkpoints of the RocksDB backend: the files of a RocksDB checkpoint, most of
//! them uploaded once and shared by every later checkpoint that still holds them (Flink's
//! incremental RocksDB checkpoints).
//!
//! # What is taken, and when
//!
//! The synchronous part is the same as for an asynchronous full snapshot: object caches
//! flushed, then a RocksDB checkpoint (memtables flushed, every live file hard-linked into a
//! new directory) plus the timers in the canonical format. Nothing of the state is read.
//! [`IncrementalCheckpoint`] then names the directory's files; the runtime uploads the SST
//! files it has not uploaded for an earlier checkpoint of the same instance (SST files are
//! immutable and their names are never reused within an instance, so a name stands for its
//! contents) and [`IncrementalCheckpoint::encode`] writes the part: the timers, the states'
//! metadata and column families, the small private files (`MANIFEST-*`, `CURRENT`,
//! `OPTIONS-*`) inline, and the shared paths of the SST files.
//!
//! # Reading one back
//!
//! [`incremental_to_full`] rebuilds the directory locally (private files from the part, SST
//! files from their shared paths, each checked against its recorded size), opens it
//! read-only and reads every state into the canonical format, splitting each stored key with
//! the key and namespace *schemas* the part recorded, since no Rust type is at hand there.
//! So a restore (any parallelism, either backend, with schema migration) and a savepoint
//! taken from an incremental checkpoint go through the one canonical path every full
//! snapshot takes; an incremental part is never restored half-read. States whose key or
//! namespace type could not be traced (an opaque schema) cannot be split that way: a
//! backend holding one takes full snapshots instead ([`supports_incremental`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use eddy_core::{EddyError, Result};
use rocksdb::{ColumnFamilyDescriptor, Options, ReadOptions};
use serde::{Deserialize, Serialize};

use super::db::Rdb;
use super::list::append_merge;
use super::snapshot::{scan_state, CheckpointDir, KeySplit, StateScan};
use crate::descriptor::StateKind;
use crate::snapshot::heap_codec::TtlCut;
use crate::snapshot::{KeyedStateSnapshot, StateMeta};

/// One file of a RocksDB checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NativeFile {
    /// Its name in the checkpoint directory (`000042.sst`, `MANIFEST-000005`, `CURRENT`).
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Whether it is an SST file: immutable, and named uniquely within its RocksDB instance,
    /// so one upload serves every later checkpoint of the instance that still holds it.
    pub shareable: bool,
}

/// How one state is read back from the files: its column family and the TTL cut its
/// snapshot applies (`cleanup_full_snapshot`), fixed when the checkpoint was taken.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct NativeState {
    column_family: String,
    /// `(ttl_ms, now)` of the state's [`TtlCut`].
    ttl_cut: Option<(u64, u64)>,
}

/// Where a file of the part is.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum FileSource {
    /// In the part itself (the small private files).
    Inline(Vec<u8>),
    /// A shared file, by its path under the checkpoint root.
    Shared(String),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredFile {
    name: String,
    size: u64,
    source: FileSource,
}

/// The payload of an incremental keyed-state part.
#[derive(Serialize, Deserialize)]
struct IncrementalPayload {
    /// The states' metadata and the timers (no state entries).
    head: KeyedStateSnapshot,
    /// One per state of `head`, in its order.
    states: Vec<NativeState>,
    files: Vec<StoredFile>,
}

/// The synchronous part of an incremental snapshot: a RocksDB checkpoint of the instance,
/// kept (as hard links) until this is dropped.
pub struct IncrementalCheckpoint {
    dir: CheckpointDir,
    head: KeyedStateSnapshot,
    states: Vec<NativeState>,
    files: Vec<NativeFile>,
}

impl IncrementalCheckpoint {
    /// Lists the files of the RocksDB checkpoint `scan` was taken with.
    pub(crate) fn new(
        dir: CheckpointDir,
        scans: &[StateScan],
        head: KeyedStateSnapshot,
    ) -> Result<Self> {
        let entries = std::fs::read_dir(&dir.0).map_err(|e| EddyError::io(&dir.0, e))?;
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| EddyError::io(&dir.0, e))?;
            let metadata = entry
                .metadata()
                .map_err(|e| EddyError::io(entry.path(), e))?;
            if !metadata.is_file() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            files.push(NativeFile {
                shareable: name.ends_with(".sst"),
                name,
                size: metadata.len(),
            });
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        let states = scans
            .iter()
            .map(|scan| NativeState {
                column_family: scan.cf_name.clone(),
                ttl_cut: scan.cut.map(|cut| (cut.ttl_ms, cut.now)),
            })
            .collect();
        Ok(IncrementalCheckpoint {
            dir,
            head,
            states,
            files,
        })
    }

    /// The states' metadata and the timers: a snapshot without state entries.
    pub fn head(&self) -> &KeyedStateSnapshot {
        &self.head
    }

    /// The checkpoint's files, by name.
    pub fn files(&self) -> &[NativeFile] {
        &self.files
    }

    /// The contents of the file `name` (one of [`files`](Self::files)).
    pub fn read_file(&self, name: &str) -> Result<Vec<u8>> {
        self.read_file_into(name, Vec::new(), 0)
    }

    /// [`read_file`](Self::read_file) into `buffer` (cleared first; a recycled buffer spares
    /// the allocation), with `spare` bytes of capacity left behind the contents (room for
    /// a file frame added in place).
    pub fn read_file_into(&self, name: &str, mut buffer: Vec<u8>, spare: usize) -> Result<Vec<u8>> {
        use std::io::Read;
        let path = self.path_of(name)?;
        let mut file = std::fs::File::open(&path).map_err(|e| EddyError::io(&path, e))?;
        let len = file.metadata().map_err(|e| EddyError::io(&path, e))?.len();
        buffer.clear();
        // `try_reserve_exact`: a size past what the process can allocate is an error naming
        // the file, not a capacity-overflow panic.
        let needed = usize::try_from(len)
            .ok()
            .and_then(|len| len.checked_add(spare));
        needed
            .and_then(|needed| buffer.try_reserve_exact(needed).ok())
            .ok_or_else(|| {
                let message = format!("{len} bytes do not fit in memory");
                EddyError::io(
                    &path,
                    std::io::Error::new(std::io::ErrorKind::OutOfMemory, message),
                )
            })?;
        file.read_to_end(&mut buffer)
            .map_err(|e| EddyError::io(&path, e))?;
        Ok(buffer)
    }

    /// The part's payload: every file of [`files`](Self::files) that `shared` maps to a
    /// shared path is referred to by that path, every other one is copied in.
    pub fn encode(&self, shared: &BTreeMap<String, String>) -> Result<Vec<u8>> {
        let files = self
            .files
            .iter()
            .map(|file| {
                let source = match shared.get(&file.name) {
                    Some(path) => FileSource::Shared(path.clone()),
                    None => FileSource::Inline(self.read_file(&file.name)?),
                };
                Ok(StoredFile {
                    name: file.name.clone(),
                    size: file.size,
                    source,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let payload = IncrementalPayload {
            head: self.head.clone(),
            states: self.states.clone(),
            files,
        };
        postcard::to_allocvec(&payload).map_err(|e| {
            EddyError::checkpoint(
                "incremental keyed state",
                format!("cannot encode the part: {e}"),
            )
        })
    }

    fn path_of(&self, name: &str) -> Result<PathBuf> {
        if self.files.iter().any(|file| file.name == name) {
            Ok(self.dir.0.join(name))
        } else {
            Err(EddyError::Internal(format!(
                "\"{name}\" is not a file of the RocksDB checkpoint {}",
                self.dir.0.display()
            )))
        }
    }
}

/// Whether every state of `states` can be read back from an incremental checkpoint: its key
/// and namespace schemas are traced (see the [module docs](self)).
pub(crate) fn supports_incremental(states: &[StateMeta]) -> bool {
    states
        .iter()
        .all(|meta| meta.key.shape.is_some() && meta.namespace.shape.is_some())
}

/// The shared paths an incremental part refers to, with the sizes of the files they hold
/// (for listing and checking; the sizes are the files' own, before any framing).
pub fn incremental_shared_paths(payload: &[u8], location: &str) -> Result<Vec<(String, u64)>> {
    Ok(decode(payload, location)?
        .files
        .into_iter()
        .filter_map(|file| match file.source {
            FileSource::Shared(path) => Some((path, file.size)),
            FileSource::Inline(_) => None,
        })
        .collect())
}

/// Reads an incremental part back as the canonical snapshot it stands for: rebuilds its
/// RocksDB checkpoint in a fresh directory under `temp_parent` (the OS temp directory if
/// `None`; removed before this returns), with `read_shared` fetching each shared file by its
/// path, and reads every state. `location` names the part in errors.
///
/// A file whose size differs from the recorded one, a file name that is not a plain name, a
/// state without a traced key or namespace schema, or a stored key that does not split with
/// the recorded schemas is an [`EddyError::Checkpoint`] naming the part; nothing is returned
/// half-read.
pub fn incremental_to_full(
    payload: &[u8],
    location: &str,
    temp_parent: Option<&Path>,
    read_shared: &mut dyn FnMut(&str) -> Result<Vec<u8>>,
) -> Result<KeyedStateSnapshot> {
    let payload = decode(payload, location)?;
    if payload.states.len() != payload.head.states().len() {
        return Err(EddyError::checkpoint(
            location,
            format!(
                "lists {} column families for {} states",
                payload.states.len(),
                payload.head.states().len()
            ),
        ));
    }
    let dir = restore_dir(temp_parent)?;
    for file in &payload.files {
        write_file(&dir.0, file, location, read_shared)?;
    }
    let scans = payload
        .head
        .states()
        .iter()
        .zip(&payload.states)
        .zip(0u32..)
        .map(|((meta, native), index)| traced_scan(meta, native, index, location))
        .collect::<Result<Vec<_>>>()?;
    let per_state = read_states(&dir.0, &scans).map_err(|e| {
        EddyError::checkpoint(location, format!("cannot read its RocksDB files: {e}"))
    })?;
    Ok(payload.head.with_state_blocks(per_state))
}

fn decode(payload: &[u8], location: &str) -> Result<IncrementalPayload> {
    crate::snapshot::decode_whole(payload, location, "an", "incremental keyed state part")
}

/// Distinguishes the restore directories of one process.
static RESTORES: AtomicU64 = AtomicU64::new(0);

fn restore_dir(parent: Option<&Path>) -> Result<CheckpointDir> {
    let parent = parent.map_or_else(std::env::temp_dir, Path::to_path_buf);
    std::fs::create_dir_all(&parent).map_err(|e| EddyError::io(&parent, e))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let path = parent.join(format!(
        "eddy-restore-{}-{}-{nanos}",
        std::process::id(),
        RESTORES.fetch_add(1, Ordering::Relaxed)
    ));
    // `create_dir`: an existing directory must not be shared.
    std::fs::create_dir(&path).map_err(|e| EddyError::io(&path, e))?;
    Ok(CheckpointDir(path))
}

/// Writes one file of the part into `dir`, checking its name and size.
fn write_file(
    dir: &Path,
    file: &StoredFile,
    location: &str,
    read_shared: &mut dyn FnMut(&str) -> Result<Vec<u8>>,
) -> Result<()> {
    let plain = !file.name.is_empty()
        && file.name != "."
        && file.name != ".."
        && file
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !plain {
        return Err(EddyError::checkpoint(
            location,
            format!(
                "names the file {:?}, which is not a plain file name",
                file.name
            ),
        ));
    }
    let bytes = match &file.source {
        FileSource::Inline(bytes) => std::borrow::Cow::Borrowed(bytes),
        FileSource::Shared(path) => std::borrow::Cow::Owned(read_shared(path)?),
    };
    if bytes.len() as u64 != file.size {
        let from = match &file.source {
            FileSource::Inline(_) => "inline".to_string(),
            FileSource::Shared(path) => format!("shared file {path}"),
        };
        return Err(EddyError::checkpoint(
            location,
            format!(
                "its file {} ({from}) has {} bytes, {} were recorded",
                file.name,
                bytes.len(),
                file.size
            ),
        ));
    }
    let path = dir.join(&file.name);
    std::fs::write(&path, bytes.as_slice()).map_err(|e| EddyError::io(&path, e))
}

/// How to read state `meta` (at `index`) from the rebuilt files, keys split by its schemas.
fn traced_scan(
    meta: &StateMeta,
    native: &NativeState,
    index: u32,
    location: &str,
) -> Result<StateScan> {
    let (Some(key), Some(namespace)) = (meta.key.shape.clone(), meta.namespace.shape.clone())
    else {
        return Err(EddyError::checkpoint(
            location,
            format!(
                "state \"{}\" has an opaque key or namespace schema, which an incremental \
                 checkpoint cannot be read back with",
                meta.name
            ),
        ));
    };
    Ok(StateScan {
        name: meta.name.clone(),
        index,
        cf_name: native.column_family.clone(),
        kind: meta.kind,
        ttl: meta.ttl,
        cut: native.ttl_cut.map(|(ttl_ms, now)| TtlCut { ttl_ms, now }),
        split: KeySplit::Traced { key, namespace },
    })
}

/// Opens the RocksDB checkpoint in `dir` read-only and reads every state of `scans`.
pub(crate) fn read_states(
    dir: &Path,
    scans: &[StateScan],
) -> Result<Vec<Vec<(eddy_core::KeyGroup, crate::snapshot::EntryBlock)>>> {
    if scans.is_empty() {
        return Ok(Vec::new());
    }
    let descriptors = scans.iter().map(|scan| {
        let mut options = Options::default();
        // Merge operands of lists may still be unmerged in the files.
        if scan.kind == StateKind::List {
            options.set_merge_operator_associative("eddy-list-append", append_merge);
        }
        ColumnFamilyDescriptor::new(scan.cf_name.clone(), options)
    });
    let rdb = Rdb::open_cf_descriptors_read_only(&Options::default(), dir, descriptors, false)
        .map_err(|e| {
            EddyError::Internal(format!(
                "cannot open the RocksDB checkpoint {}: {e}",
                dir.display()
            ))
        })?;
    let blocks = scans
        .iter()
        .map(|scan| scan_state(&rdb, scan, ReadOptions::default()))
        .collect();
    drop(rdb); // closed before its directory goes
    blocks
}
