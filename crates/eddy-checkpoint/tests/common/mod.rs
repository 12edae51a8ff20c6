//! The scenario both suites run: against a local directory (`local.rs`) and a real
//! S3-compatible server (`s3.rs`).

#![allow(dead_code)]
// each suite uses its own subset
// Test helpers outside #[test] functions: clippy.toml's allow-unwrap-in-tests does not cover them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use eddy_checkpoint::{
    CheckpointKind, CheckpointMetadata, CheckpointRef, Checkpoints, FileKind, KeyGroupSpan,
    OperatorMetadata, SharedFile, StateInfo, SubtaskMetadata,
};
use eddy_core::{EddyError, KeyGroupRange};

pub const MAX_PARALLELISM: u32 = 128;

/// The payload of `uid`'s subtask `index` in checkpoint `id`: distinct for every file.
pub fn payload(id: u64, uid: &str, index: u32, kind: FileKind) -> Vec<u8> {
    format!("{kind} of {uid}[{index}] in checkpoint {id}")
        .repeat(1 + index as usize)
        .into_bytes()
}

/// Writes the parts of checkpoint `reference` for a job of two operators: `count` (keyed, 2
/// subtasks) and `rules` (keyed-broadcast: keyed and operator state, 1 subtask). Returns the
/// metadata, not yet committed.
pub fn write_checkpoint(
    checkpoints: &Checkpoints,
    reference: &CheckpointRef,
) -> CheckpointMetadata {
    let id = match reference {
        CheckpointRef::Checkpoint(id) => *id,
        CheckpointRef::Savepoint(_) => 1000,
    };
    let kind = match reference {
        CheckpointRef::Checkpoint(_) => CheckpointKind::Checkpoint,
        CheckpointRef::Savepoint(name) => CheckpointKind::Savepoint { name: name.clone() },
    };
    let mut metadata = CheckpointMetadata::new("test-job", id, kind, id * 10 - 1, MAX_PARALLELISM);
    for (uid, parallelism, with_operator_state) in [("count", 2u32, false), ("rules", 1, true)] {
        let mut subtasks = Vec::new();
        for index in 0..parallelism {
            let range = KeyGroupRange::for_subtask(
                MAX_PARALLELISM as usize,
                parallelism as usize,
                index as usize,
            );
            let mut files = vec![checkpoints
                .write_part(
                    reference,
                    uid,
                    &format!("keyed-{index}.bin"),
                    FileKind::KeyedState,
                    &payload(id, uid, index, FileKind::KeyedState),
                )
                .unwrap()];
            if with_operator_state {
                files.push(
                    checkpoints
                        .write_part(
                            reference,
                            uid,
                            &format!("operator-{index}.bin"),
                            FileKind::OperatorState,
                            &payload(id, uid, index, FileKind::OperatorState),
                        )
                        .unwrap(),
                );
            }
            subtasks.push(SubtaskMetadata {
                index,
                key_groups: KeyGroupSpan::from_range(&range),
                files,
                states: vec![StateInfo {
                    name: "count".into(),
                    kind: "value".into(),
                    type_names: vec!["u64".into(), "()".into(), "u64".into()],
                }],
                shared: vec![],
            });
        }
        metadata.operators.push(OperatorMetadata {
            uid: uid.into(),
            name: format!("{uid} operator"),
            parallelism,
            subtasks,
        });
    }
    metadata
}

/// Writes and commits checkpoint `id`.
pub fn complete_checkpoint(checkpoints: &Checkpoints, id: u64) -> CheckpointMetadata {
    let reference = CheckpointRef::Checkpoint(id);
    let metadata = write_checkpoint(checkpoints, &reference);
    checkpoints.commit(&metadata).unwrap();
    metadata
}

/// Reads back every file `metadata` lists and checks its payload.
pub fn check_parts(
    checkpoints: &Checkpoints,
    reference: &CheckpointRef,
    metadata: &CheckpointMetadata,
) {
    for op in &metadata.operators {
        for subtask in &op.subtasks {
            for file in &subtask.files {
                let read = checkpoints
                    .read_part(reference, &file.path, file.kind)
                    .unwrap();
                assert_eq!(
                    read,
                    payload(metadata.checkpoint_id, &op.uid, subtask.index, file.kind),
                    "{}",
                    file.path
                );
            }
        }
    }
}

/// The error's reason and location, for a checkpoint error.
pub fn checkpoint_error(err: EddyError) -> (String, String) {
    match err {
        EddyError::Checkpoint { location, reason } => (location, reason),
        other => panic!("expected a checkpoint error, got {other}"),
    }
}

/// The whole life of a checkpoint root: write, commit, list, read back, a crash mid-checkpoint,
/// corruption, retention with a savepoint. Runs on any storage.
pub fn full_scenario(checkpoints: &Checkpoints) {
    assert!(checkpoints.list().unwrap().is_empty());
    assert!(checkpoints.latest().unwrap().is_none());
    assert_eq!(checkpoints.next_checkpoint_id().unwrap(), 1);

    // Checkpoints 1 and 2 complete.
    let first = complete_checkpoint(checkpoints, 1);
    let second = complete_checkpoint(checkpoints, 2);
    let listed = checkpoints.list().unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].metadata, first);
    assert_eq!(listed[1].metadata, second);
    assert_eq!(
        listed[1].location,
        format!("{}/chk-0000000002", checkpoints.location())
    );
    let latest = checkpoints.latest().unwrap().unwrap();
    assert_eq!(latest.reference, CheckpointRef::Checkpoint(2));
    assert_eq!(latest.metadata.epoch, 19);
    check_parts(checkpoints, &latest.reference, &latest.metadata);
    assert_eq!(
        checkpoints
            .read_metadata(&CheckpointRef::Checkpoint(1))
            .unwrap(),
        first
    );

    // A crash in checkpoint 3: its parts are written, its metadata never is.
    let torn = write_checkpoint(checkpoints, &CheckpointRef::Checkpoint(3));
    assert_eq!(
        checkpoints.latest().unwrap().unwrap().reference,
        CheckpointRef::Checkpoint(2)
    );
    assert_eq!(checkpoints.list().unwrap().len(), 2);
    assert_eq!(
        checkpoints.incomplete().unwrap(),
        vec![CheckpointRef::Checkpoint(3)]
    );
    assert_eq!(checkpoints.next_checkpoint_id().unwrap(), 4);
    let (location, reason) = checkpoint_error(checkpoints.resolve("3").unwrap_err());
    assert!(location.ends_with("chk-0000000003"), "{location}");
    assert!(reason.starts_with("incomplete checkpoint"), "{reason}");
    assert_eq!(
        checkpoints.resolve("latest").unwrap().reference,
        CheckpointRef::Checkpoint(2)
    );

    // A missing checkpoint.
    let (location, reason) = checkpoint_error(checkpoints.resolve("77").unwrap_err());
    assert!(location.ends_with("chk-0000000077"), "{location}");
    assert!(reason.starts_with("no such checkpoint"), "{reason}");

    // A commit whose metadata names a file never written is refused.
    let mut bogus = torn.clone();
    bogus.operators[0].subtasks[0].files[0].path = "count/keyed-9.bin".into();
    let (location, reason) = checkpoint_error(checkpoints.commit(&bogus).unwrap_err());
    assert!(
        location.ends_with("chk-0000000003/count/keyed-9.bin"),
        "{location}"
    );
    assert!(reason.contains("was not written"), "{reason}");
    let mut wrong_size = torn.clone();
    wrong_size.operators[0].subtasks[0].files[0].size += 1;
    let (_, reason) = checkpoint_error(checkpoints.commit(&wrong_size).unwrap_err());
    assert!(reason.contains("bytes, the metadata lists"), "{reason}");
    assert_eq!(
        checkpoints.incomplete().unwrap(),
        vec![CheckpointRef::Checkpoint(3)]
    );

    // A corrupt part is refused, naming it.
    let chk2 = CheckpointRef::Checkpoint(2);
    let part = &second.operators[0].subtasks[1].files[0];
    let path = format!("chk-0000000002/{}", part.path);
    let mut bytes = checkpoints.storage().get(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    checkpoints.storage().put(&path, bytes).unwrap();
    let (location, reason) = checkpoint_error(
        checkpoints
            .read_part(&chk2, &part.path, part.kind)
            .unwrap_err(),
    );
    assert_eq!(location, checkpoints.storage().describe(&path));
    assert!(reason.starts_with("checksum mismatch"), "{reason}");
    // ... and so is the right file read as the wrong kind.
    let (_, reason) = checkpoint_error(
        checkpoints
            .read_part(
                &CheckpointRef::Checkpoint(1),
                &part.path,
                FileKind::OperatorState,
            )
            .unwrap_err(),
    );
    assert_eq!(reason, "holds keyed state, but operator state was expected");

    // A savepoint, then checkpoints 4 and 5.
    let savepoint = CheckpointRef::savepoint("before-upgrade").unwrap();
    let sp = write_checkpoint(checkpoints, &savepoint);
    checkpoints.commit(&sp).unwrap();
    complete_checkpoint(checkpoints, 4);
    complete_checkpoint(checkpoints, 5);
    // Checkpoint 6 is in flight.
    write_checkpoint(checkpoints, &CheckpointRef::Checkpoint(6));

    let kinds: Vec<(CheckpointRef, CheckpointKind)> = checkpoints
        .list()
        .unwrap()
        .into_iter()
        .map(|info| (info.reference, info.metadata.kind))
        .collect();
    assert_eq!(kinds.len(), 5);
    assert_eq!(kinds[4].0, savepoint);
    assert_eq!(
        kinds[4].1,
        CheckpointKind::Savepoint {
            name: "before-upgrade".into()
        }
    );

    // Keep 2: 1 and 2 go, and 3 (incomplete, older than the newest complete one); 6 (in
    // flight) and the savepoint stay.
    let deleted = checkpoints.retain(2).unwrap();
    assert_eq!(
        deleted,
        vec![
            CheckpointRef::Checkpoint(1),
            CheckpointRef::Checkpoint(2),
            CheckpointRef::Checkpoint(3)
        ]
    );
    let remaining: Vec<CheckpointRef> = checkpoints
        .list()
        .unwrap()
        .into_iter()
        .map(|info| info.reference)
        .collect();
    assert_eq!(
        remaining,
        vec![
            CheckpointRef::Checkpoint(4),
            CheckpointRef::Checkpoint(5),
            savepoint.clone()
        ]
    );
    assert_eq!(
        checkpoints.incomplete().unwrap(),
        vec![CheckpointRef::Checkpoint(6)]
    );
    assert!(checkpoints
        .storage()
        .list("chk-0000000001")
        .unwrap()
        .is_empty());
    assert!(checkpoints
        .storage()
        .list("chk-0000000003")
        .unwrap()
        .is_empty());
    assert_eq!(checkpoints.next_checkpoint_id().unwrap(), 7);

    // The savepoint restores by name.
    let restore = checkpoints.resolve("savepoint-before-upgrade").unwrap();
    assert_eq!(restore.metadata, sp);
    check_parts(checkpoints, &savepoint, &sp);

    // Retention is idempotent.
    assert!(checkpoints.retain(2).unwrap().is_empty());
}

/// A 20 MiB object through a multipart upload (with a threshold of 1 MiB: three parts of at
/// most 8 MiB), then read back whole; the same through `write_part` and `read_part`.
pub fn multipart_round_trip(checkpoints: &Checkpoints) {
    let big: Vec<u8> = (0..20 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    checkpoints
        .storage()
        .put("big/object.bin", big.clone())
        .unwrap();
    assert_eq!(
        checkpoints.storage().size("big/object.bin").unwrap(),
        Some(big.len() as u64)
    );
    assert_eq!(checkpoints.storage().get("big/object.bin").unwrap(), big);
    let chk = CheckpointRef::Checkpoint(1);
    let part = checkpoints
        .write_part(&chk, "op", "keyed-0.bin", FileKind::KeyedState, &big)
        .unwrap();
    assert_eq!(part.size, big.len() as u64 + 23);
    assert_eq!(
        checkpoints
            .read_part(&chk, &part.path, FileKind::KeyedState)
            .unwrap(),
        big
    );
}

/// The payload of the shared file `name`: distinct for every name.
pub fn shared_payload(name: &str) -> Vec<u8> {
    format!("SST file {name}").repeat(3).into_bytes()
}

/// Uploads the shared file `name` of operator `count` (`shared/count/<name>.sst`).
pub fn upload_shared(checkpoints: &Checkpoints, name: &str) -> SharedFile {
    let path = Checkpoints::shared_path("count", &format!("{name}.sst")).unwrap();
    let file = checkpoints
        .write_shared(&path, &shared_payload(name))
        .unwrap();
    assert_eq!(file.path, format!("shared/count/{name}.sst"));
    file
}

/// The metadata of checkpoint `reference` of a job with one operator `count` (1 subtask) whose
/// incremental keyed state refers to `shared`; its part is written, the metadata is not
/// committed.
pub fn write_incremental(
    checkpoints: &Checkpoints,
    reference: &CheckpointRef,
    shared: &[SharedFile],
) -> CheckpointMetadata {
    let (id, kind) = match reference {
        CheckpointRef::Checkpoint(id) => (*id, CheckpointKind::Checkpoint),
        CheckpointRef::Savepoint(name) => (1000, CheckpointKind::Savepoint { name: name.clone() }),
    };
    let part = checkpoints
        .write_part(
            reference,
            "count",
            "keyed-0.bin",
            FileKind::IncrementalKeyedState,
            &payload(id, "count", 0, FileKind::IncrementalKeyedState),
        )
        .unwrap();
    let mut metadata = CheckpointMetadata::new("test-job", id, kind, id * 10 - 1, MAX_PARALLELISM);
    metadata.operators.push(OperatorMetadata {
        uid: "count".into(),
        name: "count operator".into(),
        parallelism: 1,
        subtasks: vec![SubtaskMetadata {
            index: 0,
            key_groups: KeyGroupSpan::from_range(&KeyGroupRange::new(
                0,
                MAX_PARALLELISM as usize - 1,
            )),
            files: vec![part],
            states: vec![],
            shared: shared.to_vec(),
        }],
    });
    metadata
}

/// Writes and commits incremental checkpoint `id` referring to `shared`.
pub fn commit_incremental(
    checkpoints: &Checkpoints,
    id: u64,
    shared: &[SharedFile],
) -> CheckpointMetadata {
    let metadata = write_incremental(checkpoints, &CheckpointRef::Checkpoint(id), shared);
    checkpoints.commit(&metadata).unwrap();
    metadata
}

/// Whether the shared file `name` (of [`upload_shared`]) is stored.
pub fn shared_exists(checkpoints: &Checkpoints, name: &str) -> bool {
    let path = format!("shared/count/{name}.sst");
    checkpoints.storage().size(&path).unwrap().is_some()
}

/// Retention's garbage collection of shared files: checkpoint 1 refers to {a, b}, 2 to
/// {b, c}, 3 to {c, d}; `e` is uploaded by checkpoint 4, in flight. With `retain` = 1,
/// checkpoints 1 and 2 go and so do `a` and `b`; with 2, only 1 and `a`. The in-flight upload
/// `e` stays either way, and every remaining checkpoint still restores.
pub fn shared_retention_scenario(checkpoints: &Checkpoints, retain: usize) {
    let [a, b, c, d] = ["a", "b", "c", "d"].map(|name| upload_shared(checkpoints, name));
    commit_incremental(checkpoints, 1, &[a.clone(), b.clone()]);
    commit_incremental(checkpoints, 2, &[b.clone(), c.clone()]);
    let third = commit_incremental(checkpoints, 3, &[c.clone(), d.clone()]);
    assert_eq!(third.shared_size(), c.size + d.size);
    assert_eq!(third.shared_files().count(), 2);
    // Checkpoint 4 is in flight: it uploaded `e`, its metadata is not written yet.
    let e = upload_shared(checkpoints, "e");
    write_incremental(
        checkpoints,
        &CheckpointRef::Checkpoint(4),
        &[d.clone(), e.clone()],
    );
    assert_eq!(
        checkpoints.unreferenced_shared().unwrap(),
        vec![e.path.clone()]
    );

    let deleted = checkpoints.retain(retain).unwrap();
    let (expected_deleted, expected_gone): (Vec<u64>, &[&str]) = match retain {
        1 => (vec![1, 2], &["a", "b"]),
        2 => (vec![1], &["a"]),
        other => panic!("no expectations for retain({other})"),
    };
    assert_eq!(
        deleted,
        expected_deleted
            .iter()
            .map(|&id| CheckpointRef::Checkpoint(id))
            .collect::<Vec<_>>()
    );
    for name in ["a", "b", "c", "d", "e"] {
        assert_eq!(
            shared_exists(checkpoints, name),
            !expected_gone.contains(&name),
            "shared file {name} after retain({retain})"
        );
    }
    // The in-flight upload is still unreferenced, and still there.
    assert_eq!(
        checkpoints.unreferenced_shared().unwrap(),
        vec![e.path.clone()]
    );
    assert_eq!(
        checkpoints.incomplete().unwrap(),
        vec![CheckpointRef::Checkpoint(4)]
    );
    // Every remaining checkpoint still has all its shared files.
    for info in checkpoints.list().unwrap() {
        let point = checkpoints.resolve(&info.reference.dir_name()).unwrap();
        for file in info.metadata.shared_files() {
            let name = file
                .path
                .trim_start_matches("shared/count/")
                .trim_end_matches(".sst");
            assert_eq!(
                point.read_shared(&file.path).unwrap(),
                shared_payload(name),
                "{}",
                file.path
            );
        }
    }

    // Checkpoint 4 completes: keeping only it, everything but `d` and `e` goes.
    checkpoints
        .commit(&write_incremental(
            checkpoints,
            &CheckpointRef::Checkpoint(4),
            &[d.clone(), e.clone()],
        ))
        .unwrap();
    assert!(checkpoints.unreferenced_shared().unwrap().is_empty());
    checkpoints.retain(1).unwrap();
    for name in ["a", "b", "c", "d", "e"] {
        assert_eq!(
            shared_exists(checkpoints, name),
            ["d", "e"].contains(&name),
            "shared file {name} after keeping checkpoint 4 only"
        );
    }
    assert_eq!(
        checkpoints
            .list()
            .unwrap()
            .into_iter()
            .map(|info| info.reference)
            .collect::<Vec<_>>(),
        vec![CheckpointRef::Checkpoint(4)]
    );
    assert!(checkpoints.unreferenced_shared().unwrap().is_empty());
}
