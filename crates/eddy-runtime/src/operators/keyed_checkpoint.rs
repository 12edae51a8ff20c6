//! A keyed operator subtask's side of checkpoints: its keyed state as a checkpoint part, and
//! its keyed state back from a restored checkpoint.

use eddy_checkpoint::StateInfo;
use eddy_core::{EddyError, Key, KeyGroupRange, Result};
use eddy_state::snapshot::old_subtasks_for;
use eddy_state::{KeyedStateBackend, KeyedStateSnapshot};

use crate::checkpoint::{Part, PartKind};
use crate::graph::WorkerContext;

/// The subtask's keyed state (every state and timer service) as its part of a checkpoint.
pub(crate) fn keyed_state_part<K: Key>(backend: &KeyedStateBackend<K>) -> Result<Vec<Part>> {
    let snapshot = backend.snapshot()?;
    let states = snapshot
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
        .collect();
    Ok(vec![Part {
        payload: snapshot.encode()?,
        kind: PartKind::Keyed,
        key_groups: Some(snapshot.key_group_range()),
        states,
    }])
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
