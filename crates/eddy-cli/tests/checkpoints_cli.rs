//! `eddy checkpoints ls | show` on a checkpoint directory written through `eddy-checkpoint`.

// Helpers outside `#[test]` functions unwrap too: a failed step fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use eddy_checkpoint::{
    CheckpointKind, CheckpointMetadata, CheckpointRef, Checkpoints, FileKind, KeyGroupSpan,
    OperatorMetadata, StateInfo, SubtaskMetadata,
};
use eddy_core::KeyGroupRange;

fn write(checkpoints: &Checkpoints, reference: &CheckpointRef, id: u64, kind: CheckpointKind) {
    let mut metadata = CheckpointMetadata::new("fraud", id, kind, id * 100 - 1, 128);
    let mut subtasks = Vec::new();
    for index in 0..2u32 {
        let part = checkpoints
            .write_part(
                reference,
                "score",
                &format!("keyed-{index}.bin"),
                FileKind::KeyedState,
                &vec![7; 1000 * (index as usize + 1)],
            )
            .unwrap();
        subtasks.push(SubtaskMetadata {
            index,
            key_groups: KeyGroupSpan::from_range(&KeyGroupRange::for_subtask(
                128,
                2,
                index as usize,
            )),
            files: vec![part],
            states: vec![StateInfo {
                name: "risk".into(),
                kind: "value".into(),
                type_names: vec!["u64".into(), "f64".into()],
            }],
            shared: Vec::new(),
        });
    }
    metadata.operators.push(OperatorMetadata {
        uid: "score".into(),
        name: "Score transactions".into(),
        parallelism: 2,
        subtasks,
    });
    checkpoints.commit(&metadata).unwrap();
}

fn eddy(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_eddy"))
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[test]
fn ls_and_show() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let root_str = root.to_str().unwrap();
    let checkpoints = Checkpoints::open(root_str).unwrap();
    write(
        &checkpoints,
        &CheckpointRef::Checkpoint(1),
        1,
        CheckpointKind::Checkpoint,
    );
    write(
        &checkpoints,
        &CheckpointRef::Checkpoint(2),
        2,
        CheckpointKind::Checkpoint,
    );
    let savepoint = CheckpointRef::savepoint("v1").unwrap();
    write(
        &checkpoints,
        &savepoint,
        2,
        CheckpointKind::Savepoint { name: "v1".into() },
    );
    // An incomplete one: a part, no metadata.
    checkpoints
        .write_part(
            &CheckpointRef::Checkpoint(3),
            "score",
            "keyed-0.bin",
            FileKind::KeyedState,
            b"x",
        )
        .unwrap();

    let (ok, out, err) = eddy(&["checkpoints", "ls", root_str]);
    println!("{out}");
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], root_str);
    assert!(lines[1].starts_with("DIRECTORY"), "{out}");
    assert!(
        lines[2].starts_with("chk-0000000001  ") && lines[2].contains("checkpoint"),
        "{out}"
    );
    assert!(
        lines[3].contains(" 199 ") && lines[3].contains("3.0 KiB"),
        "{out}"
    );
    assert!(
        lines[4].starts_with("savepoint-v1") && lines[4].contains("savepoint"),
        "{out}"
    );
    assert!(lines[4].ends_with("1 (score)"), "{out}");
    assert!(
        lines[5].starts_with("incomplete") && lines[5].ends_with("chk-0000000003"),
        "{out}"
    );

    for args in [
        vec!["checkpoints", "show", root_str],
        vec!["checkpoints", "show", root_str, "latest"],
        vec!["checkpoints", "show", root_str, "2"],
    ] {
        let (ok, out, err) = eddy(&args);
        assert!(ok, "{err}");
        assert!(
            out.starts_with(&format!("{root_str}/chk-0000000002\n")),
            "{out}"
        );
    }
    let chk1 = format!("{root_str}/chk-0000000001");
    let (ok, out, err) = eddy(&["checkpoints", "show", &chk1]);
    println!("{out}");
    assert!(ok, "{err}");
    assert!(
        out.contains("job \"fraud\", checkpoint 1, epochs 0..=99"),
        "{out}"
    );
    assert!(
        out.contains("operator score (\"Score transactions\"), parallelism 2"),
        "{out}"
    );
    assert!(
        out.contains("      0  0..=63      score/keyed-0.bin  keyed state"),
        "{out}"
    );
    assert!(
        out.contains("      1  64..=127    score/keyed-1.bin  keyed state"),
        "{out}"
    );
    assert!(out.contains("state risk (value: u64, f64)"), "{out}");

    let (ok, out, err) = eddy(&["checkpoints", "show", &format!("{root_str}/savepoint-v1")]);
    assert!(ok, "{err}");
    assert!(out.contains("savepoint 2"), "{out}");

    // An incomplete or missing checkpoint fails, naming it.
    let (ok, _, err) = eddy(&["checkpoints", "show", root_str, "3"]);
    assert!(!ok);
    assert!(
        err.contains("chk-0000000003") && err.contains("incomplete checkpoint"),
        "{err}"
    );
    let missing = format!("{root_str}/missing");
    let (ok, _, err) = eddy(&["checkpoints", "ls", &missing]);
    assert!(!ok);
    assert!(
        err.contains(&missing) && err.contains("no such directory"),
        "{err}"
    );
    assert!(!std::path::Path::new(&missing).exists());
    let (ok, _, err) = eddy(&["checkpoints", "ls", "ftp://nowhere/x"]);
    assert!(!ok);
    assert!(
        err.contains("ftp://nowhere/x") && err.contains("unsupported URL scheme"),
        "{err}"
    );
}
