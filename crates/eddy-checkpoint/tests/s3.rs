//! The checkpoint layout on a real S3-compatible server (moto's server mode, started by
//! `scripts/start-s3`, which `scripts/test` runs before `cargo test`).
//!
//! Needs `EDDY_TEST_S3_URL` (e.g. `s3://eddy-test/eddy-test`) and the `AWS_*` variables that
//! `scripts/start-s3` prints. Without them the tests fail under CI (`CI` set) and are skipped,
//! saying so, elsewhere.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{
    checkpoint_error, complete_checkpoint, full_scenario, shared_retention_scenario,
    write_checkpoint,
};
use eddy_checkpoint::storage::MULTIPART_THRESHOLD;
use eddy_checkpoint::{
    resolve, CheckpointRef, CheckpointStorage, Checkpoints, FileKind, METADATA_FILE,
};

/// A fresh root under `EDDY_TEST_S3_URL` for one test, or `None` (skip) outside CI.
fn s3_root(test: &str, multipart_threshold: usize) -> Option<Checkpoints> {
    let Ok(base) = std::env::var("EDDY_TEST_S3_URL") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "EDDY_TEST_S3_URL is not set under CI: scripts/test starts the S3 server \
             (scripts/start-s3) and exports it; run the suite through scripts/test"
        );
        eprintln!(
            "SKIPPED {test}: EDDY_TEST_S3_URL is not set. Run `eval \"$(scripts/start-s3)\"` \
             first (or scripts/test) to test against a real S3-compatible server."
        );
        return None;
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let url = format!(
        "{}/{test}-{}-{nanos}",
        base.trim_end_matches('/'),
        std::process::id()
    );
    let storage = CheckpointStorage::open(&url)
        .unwrap()
        .with_multipart_threshold(multipart_threshold);
    Some(Checkpoints::new(storage))
}

#[test]
fn full_scenario_on_s3() {
    let Some(checkpoints) = s3_root("full", MULTIPART_THRESHOLD) else {
        return;
    };
    assert!(checkpoints.location().starts_with("s3://"));
    full_scenario(&checkpoints);
}

#[test]
fn crash_mid_checkpoint_on_s3() {
    let Some(checkpoints) = s3_root("crash", MULTIPART_THRESHOLD) else {
        return;
    };
    complete_checkpoint(&checkpoints, 1);
    write_checkpoint(&checkpoints, &CheckpointRef::Checkpoint(2));
    let reopened = Checkpoints::open(checkpoints.location()).unwrap();
    assert_eq!(
        reopened.latest().unwrap().unwrap().reference,
        CheckpointRef::Checkpoint(1)
    );
    assert_eq!(
        reopened.incomplete().unwrap(),
        vec![CheckpointRef::Checkpoint(2)]
    );
    complete_checkpoint(&reopened, 3);
    assert_eq!(
        reopened.retain(1).unwrap(),
        vec![CheckpointRef::Checkpoint(1), CheckpointRef::Checkpoint(2)]
    );
    assert!(reopened
        .storage()
        .list("chk-0000000002")
        .unwrap()
        .is_empty());
    assert!(reopened.incomplete().unwrap().is_empty());
}

#[test]
fn corrupt_and_foreign_objects_are_refused_on_s3() {
    let Some(checkpoints) = s3_root("corrupt", MULTIPART_THRESHOLD) else {
        return;
    };
    let metadata = complete_checkpoint(&checkpoints, 1);
    let meta_path = format!("chk-0000000001/{METADATA_FILE}");

    // A truncated metadata object (as a broken copy would leave it).
    let bytes = checkpoints.storage().get(&meta_path).unwrap();
    checkpoints
        .storage()
        .put(&meta_path, bytes[..bytes.len() / 2].to_vec())
        .unwrap();
    let (location, reason) = checkpoint_error(checkpoints.latest().unwrap_err());
    assert_eq!(location, checkpoints.storage().describe(&meta_path));
    assert!(location.starts_with("s3://"), "{location}");
    assert!(reason.starts_with("truncated"), "{reason}");
    checkpoints.storage().put(&meta_path, bytes).unwrap();

    // A foreign object in place of a part.
    let part = &metadata.operators[0].subtasks[0].files[0];
    checkpoints
        .storage()
        .put(
            &format!("chk-0000000001/{}", part.path),
            b"<html>oops</html>".to_vec(),
        )
        .unwrap();
    let restore = checkpoints.resolve("latest").unwrap();
    let (_, reason) = checkpoint_error(restore.read_part(&part.path, part.kind).unwrap_err());
    assert!(reason.contains("foreign file?"), "{reason}");
}

#[test]
fn restore_by_url_on_s3() {
    let Some(checkpoints) = s3_root("resolve", MULTIPART_THRESHOLD) else {
        return;
    };
    let metadata = complete_checkpoint(&checkpoints, 5);
    let url = format!("{}/chk-0000000005", checkpoints.location());
    let point = resolve(&url, None).unwrap();
    assert_eq!(point.metadata, metadata);
    assert_eq!(point.location(), url);
    let file = &metadata.operators[1].subtasks[0].files[0];
    assert_eq!(
        point.read_part(&file.path, FileKind::KeyedState).unwrap(),
        common::payload(5, "rules", 0, FileKind::KeyedState)
    );
    let missing = format!("{}/chk-0000000006", checkpoints.location());
    let (location, reason) = checkpoint_error(resolve(&missing, None).unwrap_err());
    assert_eq!(location, missing);
    assert!(reason.starts_with("no such checkpoint"), "{reason}");
}

#[test]
fn large_objects_go_up_in_parts_on_s3() {
    let Some(checkpoints) = s3_root("multipart", 1024 * 1024) else {
        return;
    };
    common::multipart_round_trip(&checkpoints);
}

#[test]
fn shared_files_and_their_retention_on_s3() {
    for retain in [1, 2] {
        let Some(checkpoints) = s3_root(&format!("shared-{retain}"), MULTIPART_THRESHOLD) else {
            return;
        };
        shared_retention_scenario(&checkpoints, retain);
        // A missing shared file is an error naming its URL.
        let path = "shared/count/a.sst";
        let (location, reason) = checkpoint_error(checkpoints.read_shared(path).unwrap_err());
        assert_eq!(location, checkpoints.storage().describe(path));
        assert!(location.starts_with("s3://"), "{location}");
        assert_eq!(
            reason,
            "the checkpoint refers to this shared file, but it is missing"
        );
        // One round trip through a fresh upload.
        let file = common::upload_shared(&checkpoints, "f");
        assert_eq!(
            checkpoints.read_shared(&file.path).unwrap(),
            common::shared_payload("f")
        );
    }
}
