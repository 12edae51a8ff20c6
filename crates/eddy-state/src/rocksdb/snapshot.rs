//! Snapshots of the RocksDB backend: column families to canonical entries, and back.
//!
//! The canonical value payloads are this backend's value bytes (see [`crate::snapshot`]), so
//! neither direction decodes a value: a snapshot splits each stored key into key group, key,
//! namespace and suffix and copies the value (concatenating a list's chunks, which are
//! already framed elements); a restore builds the stored keys and writes the values in
//! write batches.

use eddy_core::{EddyError, Key, KeyGroup, Result};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use rocksdb::checkpoint::Checkpoint;
use rocksdb::{ReadOptions, WriteBatch};

use super::codec::{ttl_timestamp, Elements};
use super::db::{decode_error, rocks_error, Rdb};
use super::list::append_chunks;
use super::ttl::now_ms;
use super::{Registered, RocksDbKeyedStateBackend};
use crate::descriptor::StateKind;
use crate::snapshot::heap_codec::{KeyCheck, TtlCut};
use crate::snapshot::{push_element, EntryBlock, EntryWriter, SnapshotError, StateMeta};
use crate::ttl::{StateTtlConfig, TtlTimeDomain};

/// Restored bytes per write batch: large enough to amortize a write, small enough that a
/// restore of any size needs little memory beyond the snapshot itself.
const BATCH_BYTES: usize = 8 << 20;

/// Collects the entries of one state into one block per key group.
struct Blocks {
    index: u32,
    kg: Option<KeyGroup>,
    writer: EntryWriter,
    done: Vec<(KeyGroup, EntryBlock)>,
}

impl Blocks {
    /// The writer of key group `kg` (keys come in key-group order).
    fn at(&mut self, kg: KeyGroup) -> &mut EntryWriter {
        if self.kg != Some(kg) {
            self.flush();
            self.kg = Some(kg);
        }
        &mut self.writer
    }

    fn flush(&mut self) {
        if let Some(kg) = self.kg {
            if let Some(block) = self.writer.finish(self.index) {
                self.done.push((kg, block));
            }
        }
    }
}

/// A list being collected: its `[kg][key][ns]` prefix, where the key ends, and the framed
/// elements of its chunks so far.
struct PendingList {
    prefix: Vec<u8>,
    key_end: usize,
    elements: Vec<u8>,
}

/// What reading one state's column family into canonical blocks needs, detached from the
/// backend (so that a background thread can read a RocksDB checkpoint of it).
pub(crate) struct StateScan {
    pub(crate) name: String,
    pub(crate) index: u32,
    pub(crate) cf_name: String,
    pub(crate) kind: StateKind,
    pub(crate) ttl: bool,
    /// Where `cleanup_full_snapshot` cuts expired values off, fixed when the snapshot is taken.
    pub(crate) cut: Option<TtlCut>,
    pub(crate) split: KeySplit,
}

/// How a stored key is split into key group, key, namespace and (map state) user key.
pub(crate) enum KeySplit {
    /// With the registered types' decoders (the live backend).
    Typed(fn(&[u8]) -> Option<(usize, usize)>),
    /// With the schemas a snapshot recorded, for files read without the Rust types (an
    /// incremental checkpoint turned into the canonical format on restore).
    Traced {
        key: crate::schema::TracedShape,
        namespace: crate::schema::TracedShape,
    },
}

impl KeySplit {
    /// Where `[key group][key]` and `[key group][key][namespace]` end in `stored`.
    fn split(&self, stored: &[u8]) -> Option<(usize, usize)> {
        match self {
            KeySplit::Typed(split) => split(stored),
            KeySplit::Traced { key, namespace } => {
                let key_end = 2 + crate::schema::encoded_len(key, stored.get(2..)?)?;
                let ns_len = crate::schema::encoded_len(namespace, stored.get(key_end..)?)?;
                Some((key_end, key_end + ns_len))
            }
        }
    }
}

/// A RocksDB checkpoint of the live instance (hard links to its SST files, taken at the
/// barrier: the synchronous part of an asynchronous snapshot), read into canonical blocks
/// later, on any thread. Its directory is deleted when it is dropped.
pub(crate) struct CheckpointScan {
    dir: CheckpointDir,
    scans: Vec<StateScan>,
}

impl CheckpointScan {
    /// Opens the checkpoint read-only and reads every state into canonical blocks.
    pub(crate) fn read(self) -> Result<Vec<Vec<(KeyGroup, EntryBlock)>>> {
        super::incremental::read_states(&self.dir.0, &self.scans)
    }

    /// The checkpoint as the files of an incremental snapshot whose timers and states'
    /// metadata are `head`.
    pub(crate) fn into_incremental(
        self,
        head: crate::snapshot::KeyedStateSnapshot,
    ) -> Result<super::incremental::IncrementalCheckpoint> {
        super::incremental::IncrementalCheckpoint::new(self.dir, &self.scans, head)
    }
}

/// The directory of a RocksDB checkpoint, next to the instance's own; deleted when dropped.
pub(crate) struct CheckpointDir(pub(crate) PathBuf);

/// Distinguishes the checkpoint directories of one process.
static CHECKPOINTS: AtomicU64 = AtomicU64::new(0);

impl Drop for CheckpointDir {
    fn drop(&mut self) {
        // Best effort, as for the instance directory: leftover hard links cost disk space,
        // never correctness.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl<K: Key> RocksDbKeyedStateBackend<K> {
    /// The entries of `states` (registered states, in snapshot order), per non-empty key
    /// group, all read from one RocksDB snapshot so that they are consistent.
    pub(crate) fn snapshot_states(
        &self,
        states: &[StateMeta],
    ) -> Result<Vec<Vec<(KeyGroup, EntryBlock)>>> {
        self.flush_object_caches()?;
        let scans = self.state_scans(states)?;
        let snapshot = self.db.rdb.snapshot();
        scans
            .iter()
            .map(|scan| {
                let mut read = ReadOptions::default();
                read.set_snapshot(&snapshot);
                scan_state(&self.db.rdb, scan, read)
            })
            .collect()
    }

    /// The synchronous part of an asynchronous snapshot of `states`: a RocksDB checkpoint
    /// (memtables flushed, SST files hard-linked into a new directory), consistent across
    /// all states, which [`CheckpointScan::read`] turns into canonical blocks later while the
    /// live instance goes on taking writes.
    pub(crate) fn checkpoint_states(&self, states: &[StateMeta]) -> Result<CheckpointScan> {
        // The object caches' dirty entries belong in the checkpoint.
        self.flush_object_caches()?;
        let scans = self.state_scans(states)?;
        let mut name = self.db.path().as_os_str().to_os_string();
        name.push(format!(
            "-checkpoint-{}",
            CHECKPOINTS.fetch_add(1, Ordering::Relaxed)
        ));
        let dir = CheckpointDir(PathBuf::from(name));
        let fail = |e: rocksdb::Error| {
            EddyError::Internal(format!(
                "cannot take a RocksDB checkpoint into {}: {e}",
                dir.0.display()
            ))
        };
        Checkpoint::new(&self.db.rdb)
            .and_then(|checkpoint| checkpoint.create_checkpoint(&dir.0))
            .map_err(fail)?;
        Ok(CheckpointScan { dir, scans })
    }

    /// How to read each of `states`, with TTL cuts taken now.
    pub(crate) fn state_scans(&self, states: &[StateMeta]) -> Result<Vec<StateScan>> {
        states
            .iter()
            .zip(0u32..)
            .map(|(meta, index)| {
                let registered = self.registered(&meta.name)?;
                Ok(StateScan {
                    name: meta.name.clone(),
                    index,
                    cf_name: registered.cf_name.clone(),
                    kind: registered.kind,
                    ttl: registered.ttl.is_some(),
                    cut: registered
                        .ttl
                        .as_ref()
                        .and_then(|c| self.cut(&meta.name, c)),
                    split: KeySplit::Typed(registered.split_key),
                })
            })
            .collect()
    }
}

/// Reads one state's column family of `rdb` (the live instance at a snapshot, or a RocksDB
/// checkpoint of it) into one canonical block per non-empty key group.
pub(crate) fn scan_state(
    rdb: &Rdb,
    scan: &StateScan,
    mut read: ReadOptions,
) -> Result<Vec<(KeyGroup, EntryBlock)>> {
    let name = scan.name.as_str();
    let cf = rdb.cf_handle(&scan.cf_name).ok_or_else(|| {
        EddyError::Internal(format!("state \"{name}\" has no RocksDB column family"))
    })?;
    // A snapshot reads everything once: the block cache stays the job's.
    read.fill_cache(false);
    // Across every prefix, whatever the column family's prefix extractor.
    read.set_total_order_seek(true);
    let mut iter = rdb.raw_iterator_cf_opt(&cf, read);
    iter.seek_to_first();
    let mut blocks = Blocks {
        index: scan.index,
        kg: None,
        writer: EntryWriter::new(),
        done: Vec::new(),
    };
    let (ttl, cut) = (scan.ttl, scan.cut);
    let mut pending: Option<PendingList> = None;
    while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
        let kg = key.get(..2).map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
        let (key_end, ns_end) = scan
            .split
            .split(key)
            .ok_or_else(|| decode_error(name, kg, "key", "not a key of this state's types"))?;
        let fail = |e: SnapshotError| e.in_state(name, kg, "cannot snapshot");
        match scan.kind {
            StateKind::List => {
                let prefix = &key[..ns_end];
                let same = pending.as_ref().is_some_and(|p| p.prefix == prefix);
                if !same {
                    if let Some(list) = pending.take() {
                        write_list(&mut blocks, list, ttl, cut).map_err(&fail)?;
                    }
                    pending = Some(PendingList {
                        prefix: prefix.to_vec(),
                        key_end,
                        elements: Vec::new(),
                    });
                }
                if let Some(list) = pending.as_mut() {
                    list.elements.extend_from_slice(value);
                }
            }
            kind => {
                let user_key = match kind {
                    StateKind::Map => Some(&key[ns_end..]),
                    _ if ns_end == key.len() => None,
                    _ => {
                        return Err(decode_error(name, kg, "key", "trailing bytes"));
                    }
                };
                if ttl {
                    let ts = ttl_timestamp(value).ok_or_else(|| {
                        decode_error(name, kg, "value", "too short for its TTL header")
                    })?;
                    if TtlCut::drops(cut, ts) {
                        iter.next();
                        continue;
                    }
                }
                blocks
                    .at(kg)
                    .entry(&key[2..key_end], &key[key_end..ns_end], user_key, |buf| {
                        buf.extend_from_slice(value);
                        Ok::<_, SnapshotError>(true)
                    })
                    .map_err(fail)?;
            }
        }
        iter.next();
    }
    iter.status().map_err(|e| rocks_error(name, 0, e))?;
    if let Some(list) = pending.take() {
        let kg = list
            .prefix
            .get(..2)
            .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
        write_list(&mut blocks, list, ttl, cut)
            .map_err(|e| e.in_state(name, kg, "cannot snapshot"))?;
    }
    blocks.flush();
    Ok(blocks.done)
}

impl<K: Key> RocksDbKeyedStateBackend<K> {
    /// Where a snapshot of a TTL state configured by `config` cuts expired values off, if it
    /// does (`cleanup_full_snapshot`): at the current time of the state's clock.
    fn cut(&self, name: &str, config: &StateTtlConfig) -> Option<TtlCut> {
        TtlCut::of(name, config, |domain| {
            let clock = match domain {
                TtlTimeDomain::EventTime => self.event_clock.as_ref(),
                TtlTimeDomain::ProcessingTime => self.ttl_clock.as_ref(),
            };
            clock.map(now_ms)
        })
    }

    /// Writes restored entries into the registered state `name` (`meta` is its snapshot
    /// metadata, checked against the registration already).
    pub(crate) fn restore_state(
        &self,
        name: &str,
        meta: &StateMeta,
        blocks: &[(KeyGroup, EntryBlock)],
    ) -> Result<()> {
        let registered = self.registered(name)?;
        if let Some(cache) = &registered.cache {
            cache.assume_all_written()?;
        }
        let cf = self.db.cf(&registered.cf_name)?;
        let mut batch = WriteBatch::default();
        let mut key = Vec::with_capacity(64);
        for (kg, block) in blocks {
            let kg = *kg;
            let fail = |e: SnapshotError| e.in_state(name, kg, "cannot restore");
            let check = KeyCheck {
                kg,
                max_parallelism: self.context.max_parallelism(),
            };
            for entry in block.entries(meta) {
                let entry = entry
                    .map_err(|e| SnapshotError(e.to_string()))
                    .map_err(fail)?;
                check.key::<K>(entry.key).map_err(fail)?;
                key.clear();
                key.extend_from_slice(&kg.to_be_bytes());
                key.extend_from_slice(entry.key);
                key.extend_from_slice(entry.namespace);
                // The namespace must be exactly one namespace of the state's type.
                if (registered.split_key)(&key) != Some((2 + entry.key.len(), key.len())) {
                    return Err(fail(SnapshotError(
                        "the namespace does not decode as the state's namespace type".into(),
                    )));
                }
                match registered.kind {
                    StateKind::List => {
                        check_list(registered, entry.value).map_err(fail)?;
                        let shared = registered.list.as_deref().ok_or_else(|| {
                            EddyError::Internal(format!(
                                "list state \"{name}\" has no chunk counter"
                            ))
                        })?;
                        append_chunks(shared, &key, entry.value, &mut batch, &cf).map_err(
                            |()| fail(SnapshotError("a list element's framing is broken".into())),
                        )?;
                    }
                    kind => {
                        if kind == StateKind::Map {
                            let user_key = entry.user_key.ok_or_else(|| {
                                fail(SnapshotError("a map entry has no user key".into()))
                            })?;
                            key.extend_from_slice(user_key);
                        }
                        check_payload(registered, entry.value).map_err(fail)?;
                        batch.put_cf(&cf, &key, entry.value);
                    }
                }
                if batch.size_in_bytes() >= BATCH_BYTES {
                    self.db
                        .write(std::mem::take(&mut batch))
                        .map_err(|e| rocks_error(name, kg, e))?;
                }
            }
        }
        self.db.write(batch).map_err(|e| rocks_error(name, 0, e))
    }
}

/// Checks that a restored value payload has its TTL header if the state has TTL (the value
/// itself is decoded, and checked, when it is read).
fn check_payload(
    registered: &Registered,
    payload: &[u8],
) -> std::result::Result<(), SnapshotError> {
    if registered.ttl.is_some() && ttl_timestamp(payload).is_none() {
        return Err(SnapshotError(format!(
            "a value of {} bytes is too short for its TTL header",
            payload.len()
        )));
    }
    Ok(())
}

/// Checks the framing (and TTL headers) of a restored list.
fn check_list(registered: &Registered, elements: &[u8]) -> std::result::Result<(), SnapshotError> {
    for element in Elements::new(elements) {
        let payload =
            element.map_err(|()| SnapshotError("a list element's framing is broken".into()))?;
        check_payload(registered, payload)?;
    }
    Ok(())
}

/// Writes one collected list, without the elements a TTL cut leaves out.
fn write_list(
    blocks: &mut Blocks,
    list: PendingList,
    ttl: bool,
    cut: Option<TtlCut>,
) -> std::result::Result<(), SnapshotError> {
    let kg = list
        .prefix
        .get(..2)
        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
    let (key, ns) = (&list.prefix[2..list.key_end], &list.prefix[list.key_end..]);
    blocks.at(kg).entry(key, ns, None, |buf| {
        if !ttl || cut.is_none() {
            buf.extend_from_slice(&list.elements);
            return Ok(!list.elements.is_empty());
        }
        let mut any = false;
        for element in Elements::new(&list.elements) {
            let payload =
                element.map_err(|()| SnapshotError("a list element's framing is broken".into()))?;
            let ts = ttl_timestamp(payload).ok_or_else(|| {
                SnapshotError("a list element is too short for its TTL header".into())
            })?;
            if !TtlCut::drops(cut, ts) {
                push_element(buf, |b| {
                    b.extend_from_slice(payload);
                    Ok::<_, SnapshotError>(())
                })?;
                any = true;
            }
        }
        Ok(any)
    })
}
