//! A keyed operator subtask's side of checkpoints: its keyed state as a checkpoint part, and
//! its keyed state back from a restored checkpoint.

use eddy_checkpoint::{Checkpoints, SharedFile, StateInfo};
use eddy_core::{EddyError, Key, KeyGroupRange, Result};
use eddy_state::rocksdb::IncrementalCheckpoint;
use eddy_state::snapshot::old_subtasks_for;
use eddy_state::{KeyedStateBackend, KeyedStateSnapshot};

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::checkpoint::{Coordinator, Part, PartKind, Participant, FINAL_CHECKPOINT};
use crate::failure::{catch_panic, FailureState};
use crate::graph::WorkerContext;

/// A subtask's part of a checkpoint, possibly still to be completed off the worker thread.
pub(crate) enum PendingParts {
    /// Complete: the snapshot was taken in full on the worker thread.
    Ready(Vec<Part>),
    /// The synchronous part is done (the state as of the barrier is fixed); the rest may run
    /// on another thread, storing the subtask's shared files through its [`SharedUploads`].
    Later(CompleteParts),
}

/// The rest of a snapshot, run on the uploader's thread.
pub(crate) type CompleteParts = Box<dyn FnOnce(&mut SharedUploads) -> Result<Vec<Part>> + Send>;

impl PendingParts {
    /// These parts and `extra`.
    pub(crate) fn with(self, extra: Part) -> PendingParts {
        match self {
            PendingParts::Ready(mut parts) => {
                parts.push(extra);
                PendingParts::Ready(parts)
            }
            PendingParts::Later(complete) => PendingParts::Later(Box::new(move |uploads| {
                let mut parts = complete(uploads)?;
                parts.push(extra);
                Ok(parts)
            })),
        }
    }

    /// Completes the parts here, on this thread.
    pub(crate) fn complete(self, uploads: &mut SharedUploads) -> Result<Vec<Part>> {
        match self {
            PendingParts::Ready(parts) => Ok(parts),
            PendingParts::Later(complete) => complete(uploads),
        }
    }
}

/// The shared files one keyed operator subtask has stored during this run: the SST files of
/// its incremental RocksDB checkpoints, each stored once and referred to by every later
/// checkpoint whose RocksDB checkpoint still holds it.
///
/// The names are unique to this run (the subtask, the start time and a random number): a
/// restored instance numbers its SST files anew, and two runs must never write the same
/// shared path, since an older checkpoint may still refer to it.
pub(crate) struct SharedUploads {
    checkpoints: Checkpoints,
    /// The directory under `shared/` (the operator uid, made a valid path segment).
    dir: String,
    /// Prefix of every file name this subtask stores in this run.
    prefix: String,
    /// SST file name in the instance -> where it is stored.
    stored: BTreeMap<String, SharedFile>,
}

impl SharedUploads {
    /// The uploads of subtask `subtask` of the operator `uid`, to `checkpoints`.
    pub(crate) fn new(checkpoints: Checkpoints, uid: &str, subtask: usize) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos());
        // The std hasher's random keys: enough to tell two runs starting in the same
        // nanosecond apart, without another dependency.
        let random = RandomState::new().hash_one(subtask) & 0xffff_ffff;
        SharedUploads {
            checkpoints,
            dir: path_segment(uid),
            prefix: format!("{subtask}-{nanos:x}-{random:08x}"),
            stored: BTreeMap::new(),
        }
    }

    /// Stores the SST files of `checkpoint` not stored yet, forgets the ones it no longer
    /// holds (RocksDB never brings a deleted SST file back), and returns the part.
    fn part_of(&mut self, checkpoint: &IncrementalCheckpoint) -> Result<Part> {
        let live: BTreeSet<&str> = checkpoint
            .files()
            .iter()
            .filter(|file| file.shareable)
            .map(|file| file.name.as_str())
            .collect();
        self.stored.retain(|name, _| live.contains(name.as_str()));
        for name in live {
            if self.stored.contains_key(name) {
                continue;
            }
            let file_name = format!("{}-{name}", self.prefix);
            let path = Checkpoints::shared_path(&self.dir, &file_name)?;
            // Read into a recycled buffer and framed in place: an SST file is copied once
            // (from the page cache), not three times into fresh memory.
            let contents = checkpoint.read_file_into(
                name,
                self.checkpoints.payload_buffer(),
                eddy_checkpoint::FRAME_LEN,
            )?;
            let stored = self.checkpoints.write_shared_owned(&path, contents)?;
            self.stored.insert(name.to_string(), stored);
        }
        let paths = self
            .stored
            .iter()
            .map(|(name, file)| (name.clone(), file.path.clone()))
            .collect();
        let head = checkpoint.head();
        Ok(Part {
            payload: checkpoint.encode(&paths)?,
            kind: PartKind::IncrementalKeyed,
            key_groups: Some(head.key_group_range()),
            states: state_infos(head),
            shared: self.stored.values().cloned().collect(),
        })
    }
}

/// `uid` as a path segment of the checkpoint layout: characters other than ASCII letters,
/// digits, `-`, `_` and `.` become `-`, and it is cut to 64 bytes. Two uids may map to the
/// same segment; the file names in it are unique anyway (see [`SharedUploads`]).
fn path_segment(uid: &str) -> String {
    let mut segment: String = uid
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if segment.is_empty() || segment.starts_with(['.', '_']) {
        segment.insert(0, 'o');
    }
    segment
}

/// The subtask's keyed state (every state and timer service) as its part of a checkpoint,
/// taken asynchronously (the rest runs on the uploader's thread), see
/// [`KeyedStateBackend::snapshot_pending`].
pub(crate) fn keyed_state_part<K: Key>(backend: &KeyedStateBackend<K>) -> Result<PendingParts> {
    let pending = backend.snapshot_pending()?;
    let pending = match pending.into_incremental() {
        Ok(checkpoint) => {
            return Ok(PendingParts::Later(Box::new(move |uploads| {
                Ok(vec![uploads.part_of(&checkpoint)?])
            })))
        }
        Err(pending) => *pending,
    };
    Ok(PendingParts::Later(Box::new(move |uploads| {
        parts_of(pending.complete()?, uploads.checkpoints.payload_buffer())
    })))
}

/// A finished keyed-state snapshot as the one part of a checkpoint it is, encoded into
/// `buffer` (see [`Checkpoints::payload_buffer`]).
fn parts_of(snapshot: KeyedStateSnapshot, buffer: Vec<u8>) -> Result<Vec<Part>> {
    Ok(vec![Part {
        payload: snapshot.encode_into(buffer, eddy_checkpoint::FRAME_LEN)?,
        kind: PartKind::Keyed,
        key_groups: Some(snapshot.key_group_range()),
        states: state_infos(&snapshot),
        shared: Vec::new(),
    }])
}

/// The metadata's description of the states of `snapshot`.
fn state_infos(snapshot: &KeyedStateSnapshot) -> Vec<StateInfo> {
    snapshot
        .states()
        .iter()
        .map(|meta| StateInfo {
            name: meta.name.clone(),
            kind: format!("{:?}", meta.kind).to_lowercase(),
            // The schemas as text (struct fields spelled out): what `eddy checkpoints show`
            // prints; the schemas themselves are in the keyed state part.
            type_names: [
                Some(meta.key.describe()),
                Some(meta.namespace.describe()),
                meta.user_key.as_ref().map(|s| s.describe()),
                Some(meta.value.describe()),
            ]
            .into_iter()
            .flatten()
            .collect(),
        })
        .collect()
}

/// Hands the restored keyed state of the operator called `name` to `backend`, before
/// `open()`: the parts of the old subtasks whose key groups overlap this subtask's range (the
/// backend keeps only its own key groups of them).
pub(crate) fn restore_keyed_state<K: Key>(
    worker: &WorkerContext,
    name: &str,
    parallelism: usize,
    backend: &mut KeyedStateBackend<K>,
) -> Result<()> {
    let Some(restored) = worker.restored_state(name) else {
        return Ok(());
    };
    let uid = worker.uid_of(name);
    let range = KeyGroupRange::for_subtask(worker.max_parallelism, parallelism, worker.index);
    let old = old_subtasks_for(worker.max_parallelism, restored.parallelism, range);
    let snapshots = restored
        .keyed
        .range(old)
        .map(|(i, bytes)| {
            KeyedStateSnapshot::decode(bytes, &format!("keyed state of \"{uid}\" (subtask {i})"))
        })
        .collect::<Result<Vec<_>>>()?;
    backend.restore(uid, snapshots)
}

/// After `open()`: restored states the function did not register again are lost with this
/// run, which is an error unless the job allows non-restored state.
pub(crate) fn finish_keyed_restore<K: Key>(
    worker: &WorkerContext,
    name: &str,
    backend: &mut KeyedStateBackend<K>,
) -> Result<()> {
    let unregistered = backend.finish_restore()?;
    if unregistered.is_empty() || worker.config.checkpoint.allow_non_restored_state {
        return Ok(());
    }
    Err(EddyError::checkpoint(
        format!("operator \"{}\"", worker.uid_of(name)),
        format!(
            "the restored checkpoint holds keyed state this operator no longer registers: {}; \
             register it in open(), or pass --allow-non-restored-state to drop it",
            unregistered.join(", ")
        ),
    ))
}

/// Completes a subtask's pending checkpoint parts on a background thread, one snapshot at a
/// time, and hands them to the coordinator; a failure there fails the job like a failure of
/// the operator itself.
pub(crate) struct SnapshotUploader {
    coordinator: Arc<Coordinator>,
    participant: Participant,
    failures: Arc<FailureState>,
    job: String,
    name: String,
    subtask: usize,
    /// Used by one snapshot at a time (the next one waits for the previous one).
    uploads: Arc<Mutex<SharedUploads>>,
    /// The subtask's snapshot thread, started by its first pending snapshot.
    thread: Option<SnapshotThread>,
    /// Whether the thread has a snapshot that has not reported back yet.
    running: bool,
}

/// One thread per subtask for all its snapshots, not one per snapshot: the allocator keeps
/// per-thread memory, so a new thread per checkpoint got fresh pages for every snapshot's
/// buffers (which the kernel zeroes first), where one thread reuses the previous one's.
struct SnapshotThread {
    jobs: mpsc::Sender<SnapshotJob>,
    /// One message per finished job.
    done: mpsc::Receiver<()>,
    handle: JoinHandle<()>,
}

/// A snapshot to complete and submit (it reports its own failures).
type SnapshotJob = Box<dyn FnOnce() + Send>;

impl SnapshotThread {
    fn start(name: String) -> std::io::Result<Self> {
        let (jobs, incoming) = mpsc::channel::<SnapshotJob>();
        let (finished, done) = mpsc::channel();
        let handle = std::thread::Builder::new().name(name).spawn(move || {
            for job in incoming {
                job();
                if finished.send(()).is_err() {
                    break;
                }
            }
        })?;
        Ok(SnapshotThread { jobs, done, handle })
    }
}

impl SnapshotUploader {
    /// The uploader of `participant`'s parts (operator `name`, subtask `subtask` of `job`).
    pub(crate) fn new(
        (coordinator, participant): (Arc<Coordinator>, Participant),
        worker: &WorkerContext,
        name: &str,
    ) -> Self {
        let uploads = SharedUploads::new(
            coordinator.checkpoints().clone(),
            worker.uid_of(name),
            worker.index,
        );
        SnapshotUploader {
            coordinator,
            participant,
            uploads: Arc::new(Mutex::new(uploads)),
            failures: worker.failures(),
            job: worker.job_name.clone(),
            name: name.to_string(),
            subtask: worker.index,
            thread: None,
            running: false,
        }
    }

    /// Submits `parts` for every checkpoint in `ids` (a frontier may pass several at once).
    /// Complete parts go now and come back, so an unchanged state can reuse them; pending
    /// ones are completed on a background thread after the previous one has finished (which
    /// bounds the disk space of RocksDB checkpoints in flight to one).
    pub(crate) fn submit(&mut self, ids: Vec<u64>, parts: PendingParts) -> Option<Vec<Part>> {
        match parts {
            PendingParts::Ready(parts) => {
                for id in ids {
                    self.coordinator
                        .submit(&self.participant, id, parts.clone());
                }
                Some(parts)
            }
            PendingParts::Later(complete) => {
                self.wait();
                let (coordinator, participant) =
                    (Arc::clone(&self.coordinator), self.participant.clone());
                let failures = Arc::clone(&self.failures);
                let (job, name, subtask) = (self.job.clone(), self.name.clone(), self.subtask);
                let uploads = Arc::clone(&self.uploads);
                let complete = move || {
                    let mut uploads = uploads.lock().unwrap_or_else(PoisonError::into_inner);
                    complete(&mut uploads)
                };
                let upload = move || match catch_panic(complete) {
                    Ok(parts) => {
                        // Usually one checkpoint: its parts move, uncopied (they hold the
                        // whole encoded state).
                        if let Some((last, earlier)) = ids.split_last() {
                            for &id in earlier {
                                coordinator.submit(&participant, id, parts.clone());
                            }
                            coordinator.submit(&participant, *last, parts);
                        }
                    }
                    Err(error) => failures.fail(&job, &name, subtask, error),
                };
                self.run_in_background(Box::new(upload));
                None
            }
        }
    }

    /// Hands `job` to the snapshot thread, starting it first if needed.
    fn run_in_background(&mut self, job: SnapshotJob) {
        if self.thread.is_none() {
            let name = format!("eddy-snapshot-{}-{}", self.name, self.subtask);
            match SnapshotThread::start(name) {
                Ok(thread) => self.thread = Some(thread),
                Err(error) => {
                    let error = format!("cannot start a snapshot thread: {error}");
                    let (job, name) = (&self.job, &self.name);
                    return self
                        .failures
                        .fail(job, name, self.subtask, EddyError::Internal(error));
                }
            }
        }
        if let Some(thread) = &self.thread {
            self.running = thread.jobs.send(job).is_ok();
            if !self.running {
                let error = EddyError::Internal("the snapshot thread has stopped".into());
                self.failures
                    .fail(&self.job, &self.name, self.subtask, error);
            }
        }
    }

    /// Submits the final checkpoint's parts, completed on this thread after any snapshot
    /// still running.
    pub(crate) fn submit_final(&mut self, parts: Result<PendingParts>) {
        self.wait();
        let mut uploads = self.uploads.lock().unwrap_or_else(PoisonError::into_inner);
        match parts.and_then(|parts| parts.complete(&mut uploads)) {
            Ok(parts) => self
                .coordinator
                .submit(&self.participant, FINAL_CHECKPOINT, parts),
            Err(error) => self
                .failures
                .fail(&self.job, &self.name, self.subtask, error),
        }
    }

    /// Waits for the snapshot running in the background, if any.
    pub(crate) fn wait(&mut self) {
        if std::mem::take(&mut self.running) {
            if let Some(thread) = &self.thread {
                // An error means the thread is gone, its job with it (a panic in a job was
                // caught and reported already): nothing left to wait for.
                let _ = thread.done.recv();
            }
        }
    }
}

impl Drop for SnapshotUploader {
    fn drop(&mut self) {
        self.wait();
        if let Some(SnapshotThread { jobs, handle, .. }) = self.thread.take() {
            // Closing the channel ends the thread's loop.
            drop(jobs);
            let _ = handle.join();
        }
    }
}
