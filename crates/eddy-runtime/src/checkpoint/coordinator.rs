//! The job's checkpoint coordinator: collects every subtask's part of a checkpoint, writes the
//! parts on a background thread, and completes the checkpoint by writing its metadata last.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use eddy_checkpoint::{
    CheckpointKind, CheckpointMetadata, CheckpointRef, Checkpoints, FileKind, KeyGroupSpan,
    OperatorMetadata, SharedFile, StateInfo, SubtaskMetadata,
};
use eddy_core::{EddyError, KeyGroupRange, Result};
use serde::{Deserialize, Serialize};

use super::restore::canonical_keyed_state;
use super::{Barriers, FINAL_CHECKPOINT};

/// What a part holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PartKind {
    /// A keyed operator subtask's keyed state (`eddy_state::snapshot::KeyedStateSnapshot`).
    Keyed,
    /// A keyed operator subtask's keyed state as an incremental RocksDB checkpoint
    /// (`eddy_state::rocksdb::IncrementalCheckpoint`), referring to [`Part::shared`] files.
    IncrementalKeyed,
    /// A subtask's operator state (source positions, broadcast state).
    Operator,
    /// A sink subtask's committables: what to publish once the checkpoint is complete.
    Committables,
}

impl PartKind {
    fn file_name(self, subtask: usize) -> String {
        match self {
            PartKind::Keyed | PartKind::IncrementalKeyed => format!("keyed-{subtask}.bin"),
            PartKind::Operator => format!("operator-{subtask}.bin"),
            PartKind::Committables => format!("committables-{subtask}.bin"),
        }
    }

    fn file_kind(self) -> FileKind {
        match self {
            PartKind::Keyed => FileKind::KeyedState,
            PartKind::IncrementalKeyed => FileKind::IncrementalKeyedState,
            PartKind::Operator | PartKind::Committables => FileKind::OperatorState,
        }
    }
}

/// One subtask's contribution to one checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Part {
    /// The encoded payload (framed by the storage layer, in place: leave
    /// [`eddy_checkpoint::FRAME_LEN`] bytes of spare capacity behind a large one).
    pub payload: Vec<u8>,
    /// What it holds.
    pub kind: PartKind,
    /// For keyed parts, the key groups it covers.
    pub key_groups: Option<KeyGroupRange>,
    /// The states it holds, for the metadata (name, kind, type names).
    pub states: Vec<StateInfo>,
    /// The shared files it refers to (already stored; incremental keyed state only).
    pub shared: Vec<SharedFile>,
}

/// A registered contributor: one subtask of one stateful operator.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Participant {
    index: usize,
    uid: String,
    name: String,
    subtask: usize,
    parallelism: usize,
}

impl Participant {
    /// The operator's uid.
    pub fn uid(&self) -> &str {
        &self.uid
    }
}

/// Publishes a sink's committables once the checkpoint that holds them is complete.
pub type Committer = Box<dyn Fn(&[String]) -> Result<()> + Send + Sync>;

/// The stats of the checkpoints a run completed, filled in by the writer thread.
pub type SharedStats = Arc<Mutex<Vec<CheckpointStats>>>;

/// Timings and size of one completed checkpoint.
#[derive(Clone, Debug)]
pub struct CheckpointStats {
    /// The checkpoint's id.
    pub id: u64,
    /// From the first part submitted to the metadata written.
    pub duration: Duration,
    /// Bytes stored for it: its own files, plus the shared files (incremental RocksDB
    /// state) that the previous checkpoint of this run did not refer to (Flink's
    /// "checkpointed data size").
    pub size: u64,
    /// Bytes of everything it refers to: its own files and every shared file (Flink's "full
    /// checkpoint data size"); equal to `size` without incremental state.
    pub full_size: u64,
}

/// What a [`Coordinator`] needs to know of the job run.
#[derive(Clone, Debug)]
pub struct CoordinatorSettings {
    /// The job's name.
    pub job: String,
    /// Its timely workers.
    pub workers: usize,
    /// Its number of key groups.
    pub max_parallelism: usize,
    /// Completed checkpoints to keep.
    pub retained: usize,
    /// Which epochs end a checkpoint.
    pub barriers: Barriers,
    /// Checkpoint `c` of this run is stored as `id_base + c`.
    pub id_base: u64,
    /// Copy the final checkpoint of a bounded job to `savepoint-<name>`.
    pub savepoint_on_finish: Option<String>,
    /// The uids the job set with `uid(..)` (others get a warning).
    pub explicit_uids: BTreeSet<String>,
    /// Where a savepoint of an incremental checkpoint rebuilds RocksDB parts to convert them
    /// (`--state-dir`); the OS temp directory if `None`.
    pub scratch_dir: Option<std::path::PathBuf>,
    /// `(process_id, processes)` when this process is one of several of a cluster job; `None`
    /// for a job in one process. `workers` are then this process's workers only.
    pub cluster: Option<(usize, usize)>,
}

/// The job's checkpoint coordinator (one per job run, shared by all workers).
pub struct Coordinator {
    inner: Mutex<Inner>,
    /// Where checkpoints go (the writer has its own handle): subtasks store their shared
    /// files there themselves, off the writer thread.
    checkpoints: Checkpoints,
    work: Mutex<Option<mpsc::Sender<Work>>>,
    writer: Mutex<Option<JoinHandle<Result<()>>>>,
    barriers: Barriers,
    /// Checkpoint `c` of this run is stored as `id_base + c`, so that ids keep growing across
    /// restores into the same directory.
    id_base: u64,
    /// The uids the job set with `uid(..)`.
    explicit_uids: BTreeSet<String>,
    /// Set when the job run is over after a failure: the writer stops waiting for other
    /// processes' parts.
    cancelled: Arc<AtomicBool>,
}

/// Flink's warning: state of an operator without a uid is keyed by a derived id (here its
/// name), which changes when the job is edited, and a restore then cannot find it.
fn warn_about_derived_uids(participants: &[Participant], explicit: &BTreeSet<String>) {
    let derived: BTreeSet<&str> = participants
        .iter()
        .map(|p| p.uid.as_str())
        .filter(|uid| !explicit.contains(*uid))
        .collect();
    if !derived.is_empty() {
        eprintln!(
            "eddy: warning: stateful operators without a uid(..): {}; their checkpointed state \
             is kept under their names, which a renamed operator no longer matches",
            derived.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
}

struct Inner {
    participants: Vec<Participant>,
    workers_built: usize,
    workers: usize,
    /// Parts received per checkpoint, by participant index.
    pending: BTreeMap<u64, PendingCheckpoint>,
    /// The highest periodic checkpoint id any participant has submitted.
    highest_periodic: u64,
    committers: BTreeMap<String, Arc<Committer>>,
    /// Participants whose input has ended, with their final parts: those stand for them in
    /// every later checkpoint (a finished source split still belongs to the job's state).
    finished: BTreeMap<usize, Vec<Part>>,
}

struct PendingCheckpoint {
    started: Instant,
    received: BTreeMap<usize, Vec<Part>>,
}

enum Work {
    Write {
        id: u64,
        participant: Participant,
        parts: Vec<Part>,
        /// Part of the final checkpoint of a bounded job.
        is_final: bool,
    },
    /// Checkpoint `id` can never complete here (a participant skipped it).
    Abandon { id: u64 },
    Complete {
        id: u64,
        epoch: u64,
        started: Instant,
        committers: Vec<(String, Arc<Committer>)>,
    },
}

/// What the background writer knows of the job.
struct Writer {
    storage: Checkpoints,
    job: String,
    max_parallelism: usize,
    retained: usize,
    /// Written parts per checkpoint: participant, its metadata, its committables.
    written: BTreeMap<u64, Vec<WrittenPart>>,
    /// Copy the final checkpoint of a bounded job to `savepoint-<name>`.
    savepoint_on_finish: Option<String>,
    stats: SharedStats,
    /// Called once with the savepoint's location when a stop-with-savepoint completes.
    on_stop: Box<dyn Fn(String) + Send>,
    /// A stop-with-savepoint completed: every later part and checkpoint is dropped, so
    /// nothing after the savepoint is written or published.
    stopped: bool,
    /// This process's role when the job runs as several processes.
    cluster: Option<super::cluster::Role>,
    /// In a cluster, the parts of the final checkpoint, held until its id is agreed.
    held_final: Vec<(Participant, Vec<Part>)>,
    /// See [`CoordinatorSettings::scratch_dir`].
    scratch_dir: Option<std::path::PathBuf>,
    /// The shared files the last checkpoint this writer completed refers to (for
    /// [`CheckpointStats::size`]).
    last_shared: HashSet<String>,
}

struct WrittenPart {
    participant: Participant,
    subtask: SubtaskMetadata,
    committables: Vec<String>,
}

impl WrittenPart {
    fn manifest_entry(&self) -> super::cluster::ManifestEntry {
        super::cluster::ManifestEntry {
            uid: self.participant.uid.clone(),
            name: self.participant.name.clone(),
            parallelism: self.participant.parallelism,
            subtask: self.subtask.clone(),
        }
    }
}

impl Coordinator {
    /// A coordinator writing to `storage` for the job run `run` describes.
    /// A failure to write a checkpoint is reported to `on_error` at once (the runtime fails
    /// the job with it) and returned again by [`finish`](Self::finish). When a checkpoint
    /// completes a stop-with-savepoint ([`request_stop_with_savepoint`]), `on_stop` is called
    /// with the savepoint's location (the runtime stops the job) and later checkpoints are
    /// dropped.
    pub fn start(
        storage: Checkpoints,
        run: CoordinatorSettings,
        on_error: impl Fn(EddyError) + Send + 'static,
        on_stop: impl Fn(String) + Send + 'static,
    ) -> Result<(Arc<Self>, SharedStats)> {
        let CoordinatorSettings {
            job,
            workers,
            max_parallelism,
            retained,
            barriers,
            id_base,
            savepoint_on_finish,
            explicit_uids,
            cluster,
            scratch_dir,
        } = run;
        let job = job.as_str();
        let cancelled = Arc::new(AtomicBool::new(false));
        let cluster = cluster.map(|(process, processes)| super::cluster::Role {
            process,
            processes,
            workers_per_process: workers,
            cancelled: Arc::clone(&cancelled),
        });
        if let Some(role) = &cluster {
            role.prepare(&storage)?;
        }
        let (sender, receiver) = mpsc::channel::<Work>();
        let stats = Arc::new(Mutex::new(Vec::new()));
        let checkpoints = storage.clone();
        let mut writer = Writer {
            storage,
            job: job.to_string(),
            max_parallelism,
            retained: retained.max(1),
            written: BTreeMap::new(),
            savepoint_on_finish,
            stats: Arc::clone(&stats),
            on_stop: Box::new(on_stop),
            stopped: false,
            cluster,
            held_final: Vec::new(),
            scratch_dir,
            last_shared: HashSet::new(),
        };
        let handle = std::thread::Builder::new()
            .name("eddy-checkpoint-writer".into())
            .spawn(move || {
                for work in receiver {
                    if let Err(error) = writer.handle(work) {
                        // Fail the job now, not when it ends: a job that cannot checkpoint
                        // must not run on as if it could.
                        on_error(EddyError::checkpoint(
                            writer.storage.location(),
                            format!("the checkpoint could not be written: {error}"),
                        ));
                        return Err(error);
                    }
                }
                Ok(())
            })
            .map_err(|e| EddyError::io("checkpoint writer thread", e))?;
        let coordinator = Coordinator {
            checkpoints,
            inner: Mutex::new(Inner {
                participants: Vec::new(),
                workers_built: 0,
                workers,
                pending: BTreeMap::new(),
                highest_periodic: 0,
                committers: BTreeMap::new(),
                finished: BTreeMap::new(),
            }),
            work: Mutex::new(Some(sender)),
            writer: Mutex::new(Some(handle)),
            barriers,
            id_base,
            explicit_uids,
            cancelled,
        };
        Ok((Arc::new(coordinator), stats))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock means a worker panicked mid-update; the job is failing anyway.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The job run is over after a failure: stop waiting for other processes' parts (a
    /// checkpoint in progress then fails instead of completing).
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
    }

    /// The checkpoint root this coordinator writes to.
    pub fn checkpoints(&self) -> &Checkpoints {
        &self.checkpoints
    }

    /// The barriers every participant follows.
    pub fn barriers(&self) -> Barriers {
        self.barriers
    }

    /// Registers subtask `subtask` of the stateful operator `uid` (called while workers build
    /// their dataflow, before any part is submitted).
    pub fn register(
        &self,
        uid: &str,
        name: &str,
        subtask: usize,
        parallelism: usize,
    ) -> Participant {
        let mut inner = self.lock();
        let participant = Participant {
            index: inner.participants.len(),
            uid: uid.to_string(),
            name: name.to_string(),
            subtask,
            parallelism,
        };
        inner.participants.push(participant.clone());
        participant
    }

    /// Registers the committer of sink `uid` (once per sink; later calls are ignored).
    pub fn register_committer(&self, uid: &str, committer: Committer) {
        self.lock()
            .committers
            .entry(uid.to_string())
            .or_insert_with(|| Arc::new(committer));
    }

    /// A worker has built its dataflow: every participant it has is registered.
    pub fn worker_built(&self) {
        let mut inner = self.lock();
        inner.workers_built += 1;
        if inner.workers_built == inner.workers {
            warn_about_derived_uids(&inner.participants, &self.explicit_uids);
        }
        let ready: Vec<u64> = inner.pending.keys().copied().collect();
        for id in ready {
            self.complete_if_ready(&mut inner, id);
        }
    }

    /// Submits `participant`'s parts of checkpoint `id` (or of [`FINAL_CHECKPOINT`]).
    pub fn submit(&self, participant: &Participant, id: u64, parts: Vec<Part>) {
        let mut inner = self.lock();
        if id != FINAL_CHECKPOINT {
            inner.highest_periodic = inner.highest_periodic.max(id);
        }
        let pending = inner
            .pending
            .entry(id)
            .or_insert_with(|| PendingCheckpoint {
                started: Instant::now(),
                received: BTreeMap::new(),
            });
        pending.received.insert(participant.index, parts);
        self.complete_if_ready(&mut inner, id);
    }

    /// `participant`'s input has ended: `parts` is its part of every later checkpoint,
    /// including the final one.
    pub fn finish_participant(&self, participant: &Participant, parts: Vec<Part>) {
        let mut inner = self.lock();
        inner.finished.insert(participant.index, parts);
        let ids: Vec<u64> = inner.pending.keys().copied().collect();
        for id in ids {
            self.complete_if_ready(&mut inner, id);
        }
    }

    /// Hands checkpoint `id` to the writer once every participant has submitted its part.
    fn complete_if_ready(&self, inner: &mut Inner, id: u64) {
        let expected = inner.participants.len();
        if inner.workers_built < inner.workers {
            return;
        }
        let Some(pending) = inner.pending.get(&id) else {
            return;
        };
        let standing = inner
            .finished
            .keys()
            .filter(|index| !pending.received.contains_key(index))
            .count();
        if pending.received.len() + standing < expected {
            return;
        }
        let Some(mut pending) = inner.pending.remove(&id) else {
            return;
        };
        for (index, parts) in &inner.finished {
            pending
                .received
                .entry(*index)
                .or_insert_with(|| parts.clone());
        }
        // Older checkpoints some participant skipped can never complete now.
        let abandoned: Vec<u64> = inner.pending.range(..id).map(|(k, _)| *k).collect();
        let mut work = Vec::new();
        for old in abandoned {
            inner.pending.remove(&old);
            if old != FINAL_CHECKPOINT {
                work.push(Work::Abandon {
                    id: self.id_base + old,
                });
            }
        }
        let final_id = self.id_base
            + if id == FINAL_CHECKPOINT {
                inner.highest_periodic + 1
            } else {
                id
            };
        let epoch = if id == FINAL_CHECKPOINT {
            u64::MAX
        } else {
            self.barriers.last_epoch(id).unwrap_or_default()
        };
        let committers = inner
            .committers
            .iter()
            .map(|(uid, c)| (uid.clone(), Arc::clone(c)))
            .collect();
        for (index, parts) in pending.received {
            if let Some(participant) = inner.participants.get(index) {
                work.push(Work::Write {
                    id: final_id,
                    participant: participant.clone(),
                    parts,
                    is_final: id == FINAL_CHECKPOINT,
                });
            }
        }
        work.push(Work::Complete {
            id: final_id,
            epoch,
            started: pending.started,
            committers,
        });
        self.send(work);
    }

    fn send(&self, work: Vec<Work>) {
        let guard = self.work.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sender) = guard.as_ref() {
            for w in work {
                // A closed channel means the writer failed; `finish` reports its error.
                let _ = sender.send(w);
            }
        }
    }

    /// Waits until every checkpoint handed to the writer is complete, and stops the writer.
    /// Returns the writer's first error.
    pub fn finish(&self) -> Result<()> {
        drop(self.work.lock().unwrap_or_else(|p| p.into_inner()).take());
        let handle = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        match handle.map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(EddyError::Internal(
                "the checkpoint writer thread panicked".into(),
            )),
            None => Ok(()),
        }
    }
}

impl Writer {
    fn handle(&mut self, work: Work) -> Result<()> {
        if self.stopped {
            // Stopped with a savepoint: what the workers did after it is never published.
            return Ok(());
        }
        match work {
            Work::Write {
                id,
                participant,
                parts,
                is_final,
            } => {
                if is_final && self.cluster.is_some() {
                    // The final checkpoint's id depends on every process's last periodic
                    // checkpoint: process 0 writes these parts once it knows it.
                    self.held_final.push((participant, parts));
                    Ok(())
                } else {
                    self.write(id, participant, parts)
                }
            }
            Work::Abandon { id } => match &self.cluster {
                Some(role) => role.abandon(&self.storage, id),
                None => Ok(()),
            },
            Work::Complete {
                id,
                epoch,
                started,
                committers,
            } => self.complete(id, epoch, started, &committers),
        }
    }

    fn write(&mut self, id: u64, participant: Participant, parts: Vec<Part>) -> Result<()> {
        let reference = CheckpointRef::Checkpoint(id);
        let mut subtask = SubtaskMetadata {
            index: participant.subtask as u32,
            key_groups: None,
            files: Vec::new(),
            states: Vec::new(),
            shared: Vec::new(),
        };
        let mut committables = Vec::new();
        for part in parts {
            if part.kind == PartKind::Committables {
                committables = decode_committables(&part.payload, &participant.uid)?;
            }
            let info = self.storage.write_part_owned(
                &reference,
                &participant.uid,
                &part.kind.file_name(participant.subtask),
                part.kind.file_kind(),
                part.payload,
            )?;
            subtask.files.push(info);
            if let Some(range) = part.key_groups.as_ref() {
                subtask.key_groups = KeyGroupSpan::from_range(range);
            }
            subtask.states.extend(part.states);
            subtask.shared.extend(part.shared);
        }
        self.written.entry(id).or_default().push(WrittenPart {
            participant,
            subtask,
            committables,
        });
        Ok(())
    }

    fn complete(
        &mut self,
        id: u64,
        epoch: u64,
        started: Instant,
        committers: &[(String, Arc<Committer>)],
    ) -> Result<()> {
        let Some(role) = self.cluster.clone() else {
            let parts = self.written.remove(&id).unwrap_or_default();
            return self.publish(id, epoch, started, committers, parts, Vec::new());
        };
        if epoch == u64::MAX {
            return self.complete_final_in_cluster(&role, id, started, committers);
        }
        let parts = self.written.remove(&id).unwrap_or_default();
        if role.process == 0 {
            // Complete only once every other process's parts are durable too.
            match role.await_manifests(&self.storage, id)? {
                Some(remote) => self.publish(id, epoch, started, committers, parts, remote),
                None => role.abandon(&self.storage, id),
            }
        } else {
            let entries = parts.iter().map(WrittenPart::manifest_entry).collect();
            role.write_manifest(&self.storage, id, entries)?;
            if role.await_completion(&self.storage, id)? {
                Self::commit_local(committers, &parts)?;
                self.push_stats(id, started, (0, 0));
            }
            Ok(())
        }
    }

    /// The final checkpoint of a bounded job in a cluster: every process's last periodic
    /// checkpoint may differ (each saw the end of its inputs at its own point), so processes
    /// other than 0 hand their final parts to process 0 in a manifest, and process 0 numbers
    /// the final checkpoint after the highest of them and writes every part.
    fn complete_final_in_cluster(
        &mut self,
        role: &super::cluster::Role,
        id: u64,
        started: Instant,
        committers: &[(String, Arc<Committer>)],
    ) -> Result<()> {
        let held = std::mem::take(&mut self.held_final);
        if role.process != 0 {
            let committables = held
                .iter()
                .map(|(participant, parts)| {
                    let mut committables = Vec::new();
                    for part in parts.iter().filter(|p| p.kind == PartKind::Committables) {
                        committables.extend(decode_committables(&part.payload, &participant.uid)?);
                    }
                    Ok((participant.uid.clone(), committables))
                })
                .collect::<Result<Vec<_>>>()?;
            role.write_final_manifest(&self.storage, id, held)?;
            let final_id = role.await_final(&self.storage)?;
            Self::commit_committables(committers, committables)?;
            self.push_stats(final_id, started, (0, 0));
            return Ok(());
        }
        let remote = role.await_final_manifests(&self.storage)?;
        let final_id = remote.iter().map(|m| m.local_final_id).fold(id, u64::max);
        for (participant, parts) in held {
            self.write(final_id, participant, parts)?;
        }
        for manifest in remote {
            for (participant, parts) in manifest.parts {
                self.write(final_id, participant, parts)?;
            }
        }
        let parts = self.written.remove(&final_id).unwrap_or_default();
        // Other processes' committables are in `parts` too, but each process publishes its
        // own (they may be handles only that process can use).
        let (local, remote): (Vec<WrittenPart>, Vec<WrittenPart>) = parts
            .into_iter()
            .partition(|p| role.is_local(p.participant.subtask));
        let remote = remote.iter().map(WrittenPart::manifest_entry).collect();
        self.publish(final_id, u64::MAX, started, committers, local, remote)?;
        role.announce_final(&self.storage, final_id)
    }

    fn commit_local(committers: &[(String, Arc<Committer>)], parts: &[WrittenPart]) -> Result<()> {
        Self::commit_committables(
            committers,
            parts
                .iter()
                .map(|p| (p.participant.uid.clone(), p.committables.clone()))
                .collect(),
        )
    }

    fn commit_committables(
        committers: &[(String, Arc<Committer>)],
        committables: Vec<(String, Vec<String>)>,
    ) -> Result<()> {
        let mut by_uid: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (uid, list) in committables {
            by_uid.entry(uid).or_default().extend(list);
        }
        for (uid, committer) in committers {
            if let Some(list) = by_uid.get(uid).filter(|l| !l.is_empty()) {
                committer(list)?;
            }
        }
        Ok(())
    }

    fn push_stats(&self, id: u64, started: Instant, (size, full_size): (u64, u64)) {
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        stats.push(CheckpointStats {
            id,
            duration: started.elapsed(),
            size,
            full_size,
        });
    }

    /// `metadata`'s [`CheckpointStats::size`] and `full_size`, and remembers its shared
    /// files for the next one.
    fn sizes_of(&mut self, metadata: &CheckpointMetadata) -> (u64, u64) {
        let own = metadata.total_size();
        let mut stored = own;
        let mut shared = HashSet::new();
        for file in metadata.shared_files() {
            if shared.insert(file.path.clone()) && !self.last_shared.contains(&file.path) {
                stored += file.size;
            }
        }
        self.last_shared = shared;
        (stored, own + metadata.shared_size())
    }

    /// Writes the metadata of checkpoint `id` (this process's `parts` and other processes'
    /// `remote` subtasks), then publishes this process's committables, applies retention and
    /// writes requested savepoints.
    fn publish(
        &mut self,
        id: u64,
        epoch: u64,
        started: Instant,
        committers: &[(String, Arc<Committer>)],
        parts: Vec<WrittenPart>,
        remote: Vec<super::cluster::ManifestEntry>,
    ) -> Result<()> {
        let mut metadata = CheckpointMetadata::new(
            self.job.clone(),
            id,
            CheckpointKind::Checkpoint,
            epoch,
            self.max_parallelism as u32,
        );
        let mut committables: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for part in parts {
            let uid = part.participant.uid.clone();
            committables
                .entry(uid.clone())
                .or_default()
                .extend(part.committables);
            let position = metadata.operators.iter().position(|o| o.uid == uid);
            let operator = match position {
                Some(i) => &mut metadata.operators[i],
                None => {
                    metadata.operators.push(OperatorMetadata {
                        uid,
                        name: part.participant.name.clone(),
                        parallelism: part.participant.parallelism as u32,
                        subtasks: Vec::new(),
                    });
                    let last = metadata.operators.len() - 1;
                    &mut metadata.operators[last]
                }
            };
            operator.subtasks.push(part.subtask);
        }
        for entry in remote {
            let position = metadata.operators.iter().position(|o| o.uid == entry.uid);
            let operator = match position {
                Some(i) => &mut metadata.operators[i],
                None => {
                    metadata.operators.push(OperatorMetadata {
                        uid: entry.uid,
                        name: entry.name,
                        parallelism: entry.parallelism as u32,
                        subtasks: Vec::new(),
                    });
                    let last = metadata.operators.len() - 1;
                    &mut metadata.operators[last]
                }
            };
            operator.subtasks.push(entry.subtask);
        }
        for operator in &mut metadata.operators {
            operator.subtasks.sort_by_key(|s| s.index);
        }
        self.storage.commit(&metadata)?;
        let sizes = self.sizes_of(&metadata);
        // Published only now: a crash before this line leaves the output pending, and the
        // restore of this checkpoint publishes it (committers are idempotent).
        for (uid, committer) in committers {
            if let Some(list) = committables.get(uid) {
                committer(list)?;
            }
        }
        self.storage.retain(self.retained)?;
        let (mut names, stops) = self.requested_savepoints()?;
        if epoch == u64::MAX {
            names.extend(self.savepoint_on_finish.clone());
        }
        for name in names {
            self.write_savepoint(&metadata, &name)?;
        }
        let mut stop_at = None;
        for name in stops {
            stop_at = Some(self.write_savepoint(&metadata, &name)?);
        }
        self.push_stats(id, started, sizes);
        if let Some(location) = stop_at {
            self.stopped = true;
            eprintln!(
                "eddy: job \"{}\" stopped with savepoint {location}",
                self.job
            );
            (self.on_stop)(location);
        }
        Ok(())
    }
}

impl Writer {
    /// Savepoints asked for with [`request_savepoint`] and with
    /// [`request_stop_with_savepoint`] since the last checkpoint; their requests are consumed.
    fn requested_savepoints(&self) -> Result<(Vec<String>, Vec<String>)> {
        let storage = self.storage.storage();
        let (mut names, mut stops) = (Vec::new(), Vec::new());
        for object in storage.list("")? {
            let (list, name) = if let Some(name) = object.path.strip_prefix(SAVEPOINT_REQUEST) {
                (&mut names, name)
            } else if let Some(name) = object.path.strip_prefix(STOP_REQUEST) {
                (&mut stops, name)
            } else {
                continue;
            };
            if !name.contains('/') {
                list.push(name.to_string());
                storage.delete(&object.path)?;
            }
        }
        Ok((names, stops))
    }

    /// Copies the completed checkpoint `metadata` describes to `savepoint-<name>/`: the same
    /// canonical, backend-independent files, never deleted by retention. Returns the
    /// savepoint's location.
    fn write_savepoint(&self, metadata: &CheckpointMetadata, name: &str) -> Result<String> {
        let source = CheckpointRef::Checkpoint(metadata.checkpoint_id);
        let target = CheckpointRef::savepoint(name)?;
        let mut savepoint = metadata.clone();
        savepoint.kind = CheckpointKind::Savepoint {
            name: name.to_string(),
        };
        for operator in &mut savepoint.operators {
            for subtask in &mut operator.subtasks {
                for file in &mut subtask.files {
                    let mut payload = self.storage.read_part(&source, &file.path, file.kind)?;
                    let mut kind = file.kind;
                    // Savepoints are self-contained: incremental keyed state goes in full.
                    if kind == FileKind::IncrementalKeyedState {
                        let location = self.storage.location_of(&source);
                        payload = canonical_keyed_state(
                            &payload,
                            &format!("{location}/{}", file.path),
                            self.scratch_dir.as_deref(),
                            &mut |path| self.storage.read_shared(path),
                        )?;
                        kind = FileKind::KeyedState;
                    }
                    let (uid, file_name) = file.path.split_once('/').ok_or_else(|| {
                        EddyError::Internal(format!("part path without operator: {}", file.path))
                    })?;
                    *file = self
                        .storage
                        .write_part(&target, uid, file_name, kind, &payload)?;
                }
                subtask.shared.clear();
            }
        }
        self.storage.commit(&savepoint)?;
        let location = self.storage.location_of(&target);
        eprintln!("eddy: savepoint written to {location}");
        Ok(location)
    }
}

/// The name prefix of savepoint requests at the root of a checkpoint directory.
const SAVEPOINT_REQUEST: &str = "_savepoint-request-";

/// Asks the job checkpointing into `checkpoints` to write its next completed checkpoint as the
/// savepoint `name` as well (how `eddy savepoint` reaches a running job: through the
/// checkpoint storage both can see, local or object store).
pub fn request_savepoint(checkpoints: &Checkpoints, name: &str) -> Result<()> {
    // Validates the name as a directory name first.
    CheckpointRef::savepoint(name)?;
    checkpoints
        .storage()
        .put(&format!("{SAVEPOINT_REQUEST}{name}"), Vec::new())
}

/// The name prefix of stop-with-savepoint requests at the root of a checkpoint directory.
const STOP_REQUEST: &str = "_stop-with-savepoint-";

/// Asks the job checkpointing into `checkpoints` to write its next completed checkpoint as the
/// savepoint `name` and then to stop (Flink's `stop --savepointPath`): the job's
/// `execute` returns `Ok` with [`JobResult::stopped_with_savepoint`](crate::JobResult) set, and
/// nothing the job did after that checkpoint is written or published, so a restore from the
/// savepoint continues exactly where the stopped run ended.
pub fn request_stop_with_savepoint(checkpoints: &Checkpoints, name: &str) -> Result<()> {
    CheckpointRef::savepoint(name)?;
    checkpoints
        .storage()
        .put(&format!("{STOP_REQUEST}{name}"), Vec::new())
}

/// Encodes a sink's committables as a part payload.
pub fn encode_committables(committables: &[String]) -> Result<Vec<u8>> {
    postcard::to_stdvec(committables)
        .map_err(|e| EddyError::Internal(format!("cannot encode committables: {e}")))
}

/// Decodes a sink's committables part.
pub fn decode_committables(payload: &[u8], uid: &str) -> Result<Vec<String>> {
    postcard::from_bytes(payload).map_err(|e| {
        EddyError::checkpoint(
            format!("committables of sink \"{uid}\""),
            format!("cannot decode: {e}"),
        )
    })
}
