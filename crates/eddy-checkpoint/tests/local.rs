//! The checkpoint layout on a local directory: the full scenario, crash leftovers, corrupt
//! files, every form of `--restore`, the ways to name a root, and shared files (incremental
//! checkpoints) with their garbage collection.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{
    checkpoint_error, commit_incremental, complete_checkpoint, full_scenario, shared_exists,
    shared_payload, shared_retention_scenario, upload_shared, write_checkpoint, write_incremental,
};
use eddy_checkpoint::{
    frame, resolve, CheckpointMetadata, CheckpointRef, CheckpointStorage, Checkpoints, FileKind,
    SharedFile, METADATA_FILE,
};
use eddy_core::EddyError;

fn root() -> (tempfile::TempDir, Checkpoints) {
    let dir = tempfile::tempdir().unwrap();
    let checkpoints = Checkpoints::open(dir.path().to_str().unwrap()).unwrap();
    (dir, checkpoints)
}

#[test]
fn full_scenario_on_a_local_directory() {
    let (dir, checkpoints) = root();
    full_scenario(&checkpoints);
    // Retention removed the directories themselves, not only their files.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "chk-0000000004",
            "chk-0000000005",
            "chk-0000000006",
            "savepoint-before-upgrade"
        ]
    );
}

#[test]
fn the_layout_on_disk_is_the_documented_one() {
    let (dir, checkpoints) = root();
    complete_checkpoint(&checkpoints, 42);
    let chk = dir.path().join("chk-0000000042");
    for file in [
        METADATA_FILE,
        "count/keyed-0.bin",
        "count/keyed-1.bin",
        "rules/keyed-0.bin",
        "rules/operator-0.bin",
    ] {
        let bytes = std::fs::read(chk.join(file)).unwrap();
        assert_eq!(&bytes[..8], b"EDDYCKPT", "{file}");
    }
    // Nothing else: no staging files left behind by the atomic puts.
    let count = walk(&chk).len();
    assert_eq!(count, 5);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn a_crash_mid_checkpoint_leaves_the_previous_one_latest() {
    let (dir, checkpoints) = root();
    complete_checkpoint(&checkpoints, 1);
    // Checkpoint 2: parts written, the process dies before `_metadata`; one part was even cut
    // off mid-write (the local store's staging file, as a crash during a put leaves it).
    write_checkpoint(&checkpoints, &CheckpointRef::Checkpoint(2));
    let chk2 = dir.path().join("chk-0000000002");
    std::fs::write(chk2.join("count/keyed-7.bin#1"), b"EDDYCK").unwrap();

    // A new process opens the same root.
    let reopened = Checkpoints::open(dir.path().to_str().unwrap()).unwrap();
    let latest = reopened.latest().unwrap().unwrap();
    assert_eq!(latest.reference, CheckpointRef::Checkpoint(1));
    common::check_parts(&reopened, &latest.reference, &latest.metadata);
    assert_eq!(
        reopened.incomplete().unwrap(),
        vec![CheckpointRef::Checkpoint(2)]
    );
    // The staging file is invisible.
    assert!(reopened
        .storage()
        .list("chk-0000000002")
        .unwrap()
        .iter()
        .all(|o| !o.path.contains('#')));
    assert_eq!(reopened.next_checkpoint_id().unwrap(), 3);

    // Checkpoint 3 completes; retention removes the torn one, staging file and all.
    complete_checkpoint(&reopened, 3);
    assert_eq!(
        reopened.retain(1).unwrap(),
        vec![CheckpointRef::Checkpoint(1), CheckpointRef::Checkpoint(2)]
    );
    assert!(!chk2.exists());
    assert!(!dir.path().join("chk-0000000001").exists());
}

#[test]
fn nothing_complete_means_nothing_deleted() {
    let (_dir, checkpoints) = root();
    write_checkpoint(&checkpoints, &CheckpointRef::Checkpoint(1));
    assert!(checkpoints.latest().unwrap().is_none());
    assert!(checkpoints.retain(1).unwrap().is_empty());
    assert_eq!(
        checkpoints.incomplete().unwrap(),
        vec![CheckpointRef::Checkpoint(1)]
    );
    let err = checkpoints.resolve("latest").unwrap_err();
    assert!(err.to_string().contains("no complete checkpoint"), "{err}");
    assert!(matches!(checkpoints.retain(0), Err(EddyError::Config(_))));
}

#[test]
fn damaged_metadata_is_refused_naming_the_file() {
    let (dir, checkpoints) = root();
    complete_checkpoint(&checkpoints, 1);
    let path = dir.path().join("chk-0000000001").join(METADATA_FILE);
    let bytes = std::fs::read(&path).unwrap();

    let cases: Vec<(Vec<u8>, &str)> = vec![
        (bytes[..bytes.len() - 3].to_vec(), "truncated"),
        (Vec::new(), "truncated: 0 bytes"),
        (
            b"{\"not\": \"ours\"}".to_vec(),
            "not an Eddy checkpoint file (foreign file?)",
        ),
        (
            {
                let mut newer = bytes.clone();
                newer[8] = 4;
                newer
            },
            "format version 4",
        ),
        (
            {
                let mut older = bytes.clone();
                older[8] = 1;
                older
            },
            "format version 1, which this Eddy no longer reads",
        ),
        (
            {
                // Version 2 metadata has no shared files: another shape, not decodable.
                let mut older = bytes.clone();
                older[8] = 2;
                older
            },
            "format version 2, which this Eddy no longer reads",
        ),
        (
            {
                let mut flipped = bytes.clone();
                flipped[30] ^= 0x80;
                flipped
            },
            "checksum mismatch",
        ),
    ];
    for (content, expected) in cases {
        std::fs::write(&path, &content).unwrap();
        for err in [
            checkpoints.latest().unwrap_err(),
            checkpoints.list().unwrap_err(),
            checkpoints.resolve("1").unwrap_err(),
        ] {
            let (location, reason) = checkpoint_error(err);
            assert_eq!(location, path.display().to_string());
            assert!(
                reason.contains(expected),
                "{reason} should contain {expected}"
            );
        }
    }
}

#[test]
fn restore_arguments() {
    let (dir, checkpoints) = root();
    let first = complete_checkpoint(&checkpoints, 1);
    let second = complete_checkpoint(&checkpoints, 2);
    let savepoint = CheckpointRef::savepoint("v1").unwrap();
    let sp = write_checkpoint(&checkpoints, &savepoint);
    checkpoints.commit(&sp).unwrap();
    let root_path = dir.path().canonicalize().unwrap();
    let chk1 = root_path.join("chk-0000000001");

    let cases: Vec<(String, CheckpointMetadata)> = vec![
        ("latest".into(), second.clone()),
        ("1".into(), first.clone()),
        ("chk-0000000001".into(), first.clone()),
        ("savepoint-v1".into(), sp.clone()),
        (chk1.display().to_string(), first.clone()),
        (format!("{}/", chk1.display()), first.clone()),
        (
            chk1.join(METADATA_FILE).display().to_string(),
            first.clone(),
        ),
        (format!("file://{}", chk1.display()), first.clone()),
        (
            root_path.join("savepoint-v1").display().to_string(),
            sp.clone(),
        ),
    ];
    for (arg, expected) in &cases {
        let point = checkpoints.resolve(arg).unwrap();
        assert_eq!(&point.metadata, expected, "{arg}");
        let file = &point.metadata.operators[1].subtasks[0].files[1];
        assert_eq!(
            point.read_part(&file.path, file.kind).unwrap(),
            common::payload(expected.checkpoint_id, "rules", 0, FileKind::OperatorState),
            "{arg}"
        );
    }
    // Paths and URLs need no configured root.
    assert_eq!(
        resolve(&chk1.display().to_string(), None).unwrap().metadata,
        first
    );
    assert!(matches!(resolve("latest", None), Err(EddyError::Config(_))));
    assert!(matches!(resolve("2", None), Err(EddyError::Config(_))));

    // Wrong arguments name what they were given.
    let (location, reason) = checkpoint_error(checkpoints.resolve("yesterday").unwrap_err());
    assert_eq!(location, "yesterday");
    assert!(reason.contains("expected `latest`"), "{reason}");
    let missing = root_path.join("chk-0000000009");
    let (location, reason) =
        checkpoint_error(resolve(&missing.display().to_string(), None).unwrap_err());
    assert_eq!(location, missing.display().to_string());
    assert!(reason.starts_with("no such checkpoint"), "{reason}");
    let (_, reason) = checkpoint_error(checkpoints.resolve("savepoint-v2").unwrap_err());
    assert!(reason.starts_with("no such checkpoint"), "{reason}");
    // Restoring from a path under a directory that does not exist creates nothing.
    let ghost = root_path.join("ghost");
    let (location, reason) = checkpoint_error(
        resolve(&ghost.join("chk-0000000001").display().to_string(), None).unwrap_err(),
    );
    assert_eq!(
        (location, reason.as_str()),
        (ghost.display().to_string(), "no such directory")
    );
    assert!(!ghost.exists());
    assert!(Checkpoints::open_existing(ghost.to_str().unwrap()).is_err());
    assert!(!ghost.exists());
}

#[test]
fn roots_by_path_url_and_relative_path() {
    let dir = tempfile::tempdir().unwrap();
    // Created if missing, however deep.
    let nested = dir.path().join("a/b/c");
    let by_path = Checkpoints::open(nested.to_str().unwrap()).unwrap();
    complete_checkpoint(&by_path, 1);
    assert!(nested.join("chk-0000000001").join(METADATA_FILE).is_file());
    assert_eq!(
        by_path.location(),
        nested.canonicalize().unwrap().display().to_string()
    );

    let by_url = Checkpoints::open(&format!("file://{}", nested.display())).unwrap();
    assert_eq!(by_url.latest().unwrap().unwrap().metadata.checkpoint_id, 1);

    // A relative path is relative to the working directory, and reported absolute.
    // (Tests run in the crate's directory: this lands in the workspace's git-ignored target/.)
    let relative_path = format!(
        "../../target/tmp/eddy-checkpoint-relative-{}",
        std::process::id()
    );
    let relative = CheckpointStorage::open(&relative_path).unwrap();
    assert!(std::path::Path::new(relative.location()).is_absolute());
    assert!(relative.is_local());
    let _ = std::fs::remove_dir_all(relative.location());
}

#[test]
fn unknown_schemes_and_bad_names_are_clear_errors() {
    let (location, reason) =
        checkpoint_error(CheckpointStorage::open("ftp://host/ckpt").unwrap_err());
    assert_eq!(location, "ftp://host/ckpt");
    assert!(
        reason.contains("unsupported URL scheme `ftp://`"),
        "{reason}"
    );
    assert!(matches!(
        CheckpointStorage::open("  "),
        Err(EddyError::Config(_))
    ));

    let (_dir, checkpoints) = root();
    let chk = CheckpointRef::Checkpoint(1);
    for (uid, file) in [
        ("a/b", "keyed-0.bin"),
        ("op", "../x"),
        ("_x", "f"),
        ("op", ""),
    ] {
        let err = checkpoints
            .write_part(&chk, uid, file, FileKind::KeyedState, b"")
            .unwrap_err();
        assert!(matches!(err, EddyError::Config(_)), "{uid}/{file}: {err}");
    }
    assert!(checkpoints
        .write_part(&chk, "op", "m", FileKind::Metadata, b"")
        .is_err());
    assert!(CheckpointRef::savepoint("a b").is_err());
}

#[test]
fn storage_basics() {
    let (_dir, checkpoints) = root();
    let storage = checkpoints.storage();
    storage.put("x/y/z.bin", vec![1, 2, 3]).unwrap();
    storage.put("x/w.bin", vec![4]).unwrap();
    assert_eq!(storage.get("x/y/z.bin").unwrap(), vec![1, 2, 3]);
    assert_eq!(storage.get_opt("nope").unwrap(), None);
    assert_eq!(storage.size("x/w.bin").unwrap(), Some(1));
    let listed: Vec<(String, u64)> = storage
        .list("x")
        .unwrap()
        .into_iter()
        .map(|o| (o.path, o.size))
        .collect();
    assert_eq!(listed, vec![("x/w.bin".into(), 1), ("x/y/z.bin".into(), 3)]);
    assert_eq!(storage.list_dirs("").unwrap(), vec!["x".to_string()]);
    assert!(storage.list("missing").unwrap().is_empty());
    let (location, reason) = checkpoint_error(storage.get("nope").unwrap_err());
    assert!(location.ends_with("/nope"), "{location}");
    assert_eq!(reason, "not found");
    assert_eq!(storage.delete_prefix("x").unwrap(), 2);
    assert!(storage.list("").unwrap().is_empty());
    assert!(storage.delete_prefix("").is_err());
}

#[test]
fn parts_are_written_concurrently_from_plain_threads() {
    let (_dir, checkpoints) = root();
    let chk = CheckpointRef::Checkpoint(1);
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let checkpoints = checkpoints.clone();
            let chk = chk.clone();
            std::thread::spawn(move || {
                for j in 0..10 {
                    checkpoints
                        .write_part(
                            &chk,
                            "op",
                            &format!("keyed-{i}-{j}.bin"),
                            FileKind::KeyedState,
                            &[i; 100],
                        )
                        .unwrap();
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    assert_eq!(
        checkpoints.storage().list("chk-0000000001").unwrap().len(),
        40
    );
}

#[test]
fn blocking_calls_inside_an_async_runtime_are_refused() {
    let (_dir, checkpoints) = root();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let result = runtime.block_on(async { checkpoints.list() });
    match result {
        Err(EddyError::Internal(reason)) => assert!(reason.contains("async runtime"), "{reason}"),
        other => panic!("expected an internal error, got {other:?}"),
    }
    // Dropping the storage inside a runtime must not panic either.
    runtime.block_on(async move { drop(checkpoints) });
}

#[test]
fn remote_roots_open_without_contacting_anything() {
    // Opening only configures the client; the first request would reach the network.
    let s3 = CheckpointStorage::open("s3://some-bucket/jobs/fraud/").unwrap();
    assert_eq!(s3.location(), "s3://some-bucket/jobs/fraud");
    assert!(!s3.is_local());
    assert_eq!(
        s3.describe("chk-0000000001/_metadata"),
        "s3://some-bucket/jobs/fraud/chk-0000000001/_metadata"
    );
    // A URL the store cannot use is an error naming it, never a panic.
    for url in ["s3://", "az://", "gs://"] {
        if let Err(err) = CheckpointStorage::open(url) {
            let (location, _) = checkpoint_error(err);
            assert_eq!(location, url);
        }
    }
}

#[test]
fn large_objects_go_up_in_parts_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let storage = CheckpointStorage::open(dir.path().to_str().unwrap())
        .unwrap()
        .with_multipart_threshold(1024 * 1024);
    let checkpoints = Checkpoints::new(storage);
    common::multipart_round_trip(&checkpoints);
    // No staging files left behind.
    let names: Vec<String> = std::fs::read_dir(dir.path().join("chk-0000000001/op"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["keyed-0.bin"]);
}

#[test]
fn shared_files_round_trip_and_damage_is_refused_naming_the_file() {
    let (dir, checkpoints) = root();
    let file = upload_shared(&checkpoints, "a");
    let on_disk = dir.path().join("shared/count/a.sst");
    let bytes = std::fs::read(&on_disk).unwrap();
    assert_eq!(&bytes[..8], b"EDDYCKPT");
    assert_eq!(bytes[10], 5, "kind byte of a shared state file");
    assert_eq!(file.size, bytes.len() as u64);
    assert_eq!(
        checkpoints.read_shared(&file.path).unwrap(),
        shared_payload("a")
    );
    // The shared directory is not a checkpoint, complete or not.
    assert!(checkpoints.list().unwrap().is_empty());
    assert!(checkpoints.incomplete().unwrap().is_empty());
    assert_eq!(checkpoints.next_checkpoint_id().unwrap(), 1);
    let location = checkpoints.storage().describe(&file.path);

    // Corrupt.
    let mut flipped = bytes.clone();
    flipped[25] ^= 0x04;
    std::fs::write(&on_disk, &flipped).unwrap();
    let (at, reason) = checkpoint_error(checkpoints.read_shared(&file.path).unwrap_err());
    assert_eq!(at, location);
    assert!(reason.starts_with("checksum mismatch"), "{reason}");
    // Truncated.
    std::fs::write(&on_disk, &bytes[..bytes.len() - 2]).unwrap();
    let (at, reason) = checkpoint_error(checkpoints.read_shared(&file.path).unwrap_err());
    assert_eq!(at, location);
    assert!(reason.starts_with("truncated"), "{reason}");
    // The wrong kind: a keyed-state part where a shared file belongs.
    std::fs::write(&on_disk, frame(FileKind::KeyedState, b"x")).unwrap();
    let (at, reason) = checkpoint_error(checkpoints.read_shared(&file.path).unwrap_err());
    assert_eq!(at, location);
    assert_eq!(
        reason,
        "holds keyed state, but shared state file was expected"
    );
    // Missing.
    std::fs::remove_file(&on_disk).unwrap();
    let (at, reason) = checkpoint_error(checkpoints.read_shared(&file.path).unwrap_err());
    assert_eq!(at, location);
    assert_eq!(
        reason,
        "the checkpoint refers to this shared file, but it is missing"
    );

    // Paths outside `shared/` are refused, writing and reading.
    for bad in [
        "count/a.sst",
        "chk-0000000001/count/keyed-0.bin",
        "shared/../chk-0000000001/_metadata",
        "shared/",
        "sharedx/a.sst",
    ] {
        let (_, reason) = checkpoint_error(checkpoints.write_shared(bad, b"x").unwrap_err());
        assert!(reason.contains("invalid"), "{bad}: {reason}");
        let (_, reason) = checkpoint_error(checkpoints.read_shared(bad).unwrap_err());
        assert!(reason.contains("invalid"), "{bad}: {reason}");
    }
    assert!(!dir.path().join("chk-0000000001").exists());
    assert!(matches!(
        Checkpoints::shared_path("count", "../a.sst"),
        Err(EddyError::Config(_))
    ));
}

#[test]
fn incremental_checkpoints_restore_their_shared_files() {
    let (_dir, checkpoints) = root();
    let [a, b] = ["a", "b"].map(|name| upload_shared(&checkpoints, name));
    let metadata = commit_incremental(&checkpoints, 1, &[a.clone(), b.clone()]);
    let point = checkpoints.resolve("latest").unwrap();
    assert_eq!(point.metadata, metadata);
    assert_eq!(point.metadata.shared_size(), a.size + b.size);
    let part = &point.metadata.operators[0].subtasks[0].files[0];
    assert_eq!(part.kind, FileKind::IncrementalKeyedState);
    assert_eq!(
        point.read_part(&part.path, part.kind).unwrap(),
        common::payload(1, "count", 0, FileKind::IncrementalKeyedState)
    );
    for (file, name) in [(&a, "a"), (&b, "b")] {
        assert_eq!(point.read_shared(&file.path).unwrap(), shared_payload(name));
    }
    // Shared files are the root's, not the checkpoint directory's.
    assert_eq!(
        checkpoints.storage().list("chk-0000000001").unwrap().len(),
        2
    );
}

#[test]
fn commit_refuses_a_missing_or_resized_shared_file() {
    let (_dir, checkpoints) = root();
    let a = upload_shared(&checkpoints, "a");
    let reference = CheckpointRef::Checkpoint(1);

    let ghost = SharedFile {
        path: "shared/count/ghost.sst".into(),
        size: 30,
    };
    let metadata = write_incremental(&checkpoints, &reference, &[a.clone(), ghost]);
    let (location, reason) = checkpoint_error(checkpoints.commit(&metadata).unwrap_err());
    assert_eq!(
        location,
        checkpoints.storage().describe("shared/count/ghost.sst")
    );
    assert_eq!(
        reason,
        "cannot complete the checkpoint: the metadata refers to this shared file, but it is \
         not stored"
    );

    let resized = SharedFile {
        size: a.size + 1,
        ..a.clone()
    };
    let metadata = write_incremental(&checkpoints, &reference, &[resized]);
    let (location, reason) = checkpoint_error(checkpoints.commit(&metadata).unwrap_err());
    assert_eq!(location, checkpoints.storage().describe(&a.path));
    assert_eq!(
        reason,
        format!(
            "cannot complete the checkpoint: the shared file has {} bytes, the metadata lists {}",
            a.size,
            a.size + 1
        )
    );
    // A shared file of another directory under `shared/` is looked up there.
    let other = checkpoints
        .write_shared(
            &Checkpoints::shared_path("window", "7.sst").unwrap(),
            b"sst",
        )
        .unwrap();
    // Paths outside `shared/` are refused before anything is looked up.
    let outside = SharedFile {
        path: "chk-0000000001/count/keyed-0.bin".into(),
        size: 1,
    };
    let metadata = write_incremental(&checkpoints, &reference, &[outside]);
    let (_, reason) = checkpoint_error(checkpoints.commit(&metadata).unwrap_err());
    assert!(reason.contains("must start with `shared/`"), "{reason}");

    assert_eq!(checkpoints.incomplete().unwrap(), vec![reference.clone()]);
    let metadata = write_incremental(&checkpoints, &reference, &[a, other]);
    checkpoints.commit(&metadata).unwrap();
    assert!(checkpoints.incomplete().unwrap().is_empty());
}

#[test]
fn savepoints_are_self_contained() {
    let (_dir, checkpoints) = root();
    let a = upload_shared(&checkpoints, "a");
    let savepoint = CheckpointRef::savepoint("v1").unwrap();
    let metadata = write_incremental(&checkpoints, &savepoint, &[a]);
    let (location, reason) = checkpoint_error(checkpoints.commit(&metadata).unwrap_err());
    assert!(location.ends_with("savepoint-v1/_metadata"), "{location}");
    assert!(
        reason.starts_with("savepoints are self-contained"),
        "{reason}"
    );
    assert!(checkpoints.list().unwrap().is_empty());
    // Without shared files, it commits.
    let full = write_incremental(&checkpoints, &savepoint, &[]);
    checkpoints.commit(&full).unwrap();
}

#[test]
fn retention_deletes_the_shared_files_only_deleted_checkpoints_referred_to() {
    for retain in [1, 2] {
        let (_dir, checkpoints) = root();
        shared_retention_scenario(&checkpoints, retain);
    }
}

#[test]
fn retention_leaves_the_uploads_of_abandoned_attempts() {
    let (dir, checkpoints) = root();
    let a = upload_shared(&checkpoints, "a");
    commit_incremental(&checkpoints, 1, std::slice::from_ref(&a));
    // Checkpoint 2 uploads `b` and is abandoned; checkpoint 3 completes without it.
    let b = upload_shared(&checkpoints, "b");
    write_incremental(
        &checkpoints,
        &CheckpointRef::Checkpoint(2),
        &[a.clone(), b.clone()],
    );
    let c = upload_shared(&checkpoints, "c");
    commit_incremental(&checkpoints, 3, &[a.clone(), c.clone()]);
    // A savepoint (full) stays throughout and refers to nothing shared.
    let savepoint = CheckpointRef::savepoint("sp").unwrap();
    checkpoints
        .commit(&write_checkpoint(&checkpoints, &savepoint))
        .unwrap();

    assert_eq!(
        checkpoints.retain(1).unwrap(),
        vec![CheckpointRef::Checkpoint(1), CheckpointRef::Checkpoint(2)]
    );
    // `a` is still referred to by 3; `b` was only ever referred to by the abandoned attempt.
    assert!(shared_exists(&checkpoints, "a"));
    assert!(shared_exists(&checkpoints, "b"));
    assert!(shared_exists(&checkpoints, "c"));
    assert_eq!(checkpoints.unreferenced_shared().unwrap(), vec![b.path]);
    assert!(!dir.path().join("chk-0000000002").exists());
}

#[test]
fn unreadable_metadata_and_retention() {
    let (dir, checkpoints) = root();
    let [a, b, c] = ["a", "b", "c"].map(|name| upload_shared(&checkpoints, name));
    commit_incremental(&checkpoints, 1, std::slice::from_ref(&a));
    commit_incremental(&checkpoints, 2, std::slice::from_ref(&b));
    commit_incremental(&checkpoints, 3, std::slice::from_ref(&c));
    let savepoint = CheckpointRef::savepoint("sp").unwrap();
    checkpoints
        .commit(&write_checkpoint(&checkpoints, &savepoint))
        .unwrap();

    // A remaining savepoint whose metadata cannot be read: retention stops, deleting nothing.
    let sp_metadata = dir.path().join("savepoint-sp").join(METADATA_FILE);
    let good = std::fs::read(&sp_metadata).unwrap();
    std::fs::write(&sp_metadata, &good[..good.len() / 2]).unwrap();
    let (location, reason) = checkpoint_error(checkpoints.retain(2).unwrap_err());
    assert_eq!(location, sp_metadata.display().to_string());
    assert!(reason.starts_with("truncated"), "{reason}");
    assert!(dir
        .path()
        .join("chk-0000000001")
        .join(METADATA_FILE)
        .is_file());
    assert!(shared_exists(&checkpoints, "a"));
    std::fs::write(&sp_metadata, &good).unwrap();

    // A doomed checkpoint whose metadata cannot be decoded goes, but what it referred to is
    // unknown, so its shared files stay (listed as unreferenced).
    let chk1_metadata = dir.path().join("chk-0000000001").join(METADATA_FILE);
    std::fs::write(&chk1_metadata, b"garbage").unwrap();
    assert_eq!(
        checkpoints.retain(2).unwrap(),
        vec![CheckpointRef::Checkpoint(1)]
    );
    assert!(shared_exists(&checkpoints, "a"));
    assert_eq!(checkpoints.unreferenced_shared().unwrap(), vec![a.path]);

    // A readable one: its shared files go with it.
    assert_eq!(
        checkpoints.retain(1).unwrap(),
        vec![CheckpointRef::Checkpoint(2)]
    );
    assert!(!shared_exists(&checkpoints, "b"));
    assert!(shared_exists(&checkpoints, "c"));
}
