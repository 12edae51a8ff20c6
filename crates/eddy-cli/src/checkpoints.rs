//! `eddy checkpoints ls | show`: what a checkpoint directory holds, as tables.

use std::collections::HashSet;

use clap::Subcommand;
use eddy_checkpoint::{
    display, resolve, CheckpointMetadata, CheckpointRef, Checkpoints, RestorePoint, METADATA_FILE,
    SHARED_DIR,
};

/// The `eddy checkpoints` subcommands.
#[derive(Subcommand, Debug)]
pub enum CheckpointsCommand {
    /// Lists the complete checkpoints and savepoints under a checkpoint directory (a path,
    /// file://, s3://, gs:// or az:// URL), then any incomplete ones and any shared files
    /// (incremental checkpoints) that no complete checkpoint refers to.
    Ls {
        /// The checkpoint directory (the job's checkpoint root).
        location: String,
    },
    /// Shows one checkpoint: per operator and subtask, its key groups, files and sizes, and
    /// the shared files of incremental subtasks.
    Show {
        /// A checkpoint or savepoint directory (`.../chk-0000000042`, `.../savepoint-v1`), or
        /// a checkpoint root (then the checkpoint is the latest, or the one named next).
        location: String,
        /// With a root: `latest` (default), a checkpoint id, or a directory name under it.
        checkpoint: Option<String>,
    },
}

/// Runs an `eddy checkpoints` subcommand.
pub fn run(command: CheckpointsCommand) -> anyhow::Result<()> {
    match command {
        CheckpointsCommand::Ls { location } => {
            print!("{}", ls(&Checkpoints::open_existing(&location)?)?);
        }
        CheckpointsCommand::Show {
            location,
            checkpoint,
        } => {
            let point = match checkpoint {
                Some(checkpoint) => Checkpoints::open_existing(&location)?.resolve(&checkpoint)?,
                None if names_a_checkpoint(&location) => resolve(&location, None)?,
                None => Checkpoints::open_existing(&location)?.resolve("latest")?,
            };
            print!("{}", show(&point));
        }
    }
    Ok(())
}

/// Whether `location` ends in a checkpoint or savepoint directory (or its `_metadata`).
fn names_a_checkpoint(location: &str) -> bool {
    let trimmed = location.trim().trim_end_matches('/');
    let trimmed = trimmed
        .strip_suffix(METADATA_FILE)
        .map_or(trimmed, |dir| dir.trim_end_matches('/'));
    let name = trimmed.rsplit('/').next().unwrap_or(trimmed);
    CheckpointRef::parse_dir_name(name).is_some()
}

/// The `ls` listing.
fn ls(checkpoints: &Checkpoints) -> anyhow::Result<String> {
    let listed = checkpoints.list()?;
    let incomplete = checkpoints.incomplete()?;
    let mut out = format!("{}\n", checkpoints.location());
    if listed.is_empty() {
        out.push_str("no complete checkpoints\n");
    } else {
        // The SHARED column (incremental checkpoints) only when some checkpoint has one.
        let any_shared = listed
            .iter()
            .any(|info| info.metadata.shared_files().next().is_some());
        let rows: Vec<Vec<String>> = listed
            .iter()
            .map(|info| {
                let m = &info.metadata;
                let uids: Vec<&str> = m.operators.iter().map(|op| op.uid.as_str()).collect();
                let mut row = vec![
                    info.reference.dir_name(),
                    m.checkpoint_id.to_string(),
                    m.kind.to_string(),
                    m.epoch.to_string(),
                    display::unix_ms(m.taken_at_unix_ms),
                    display::size(m.total_size()),
                ];
                if any_shared {
                    row.push(shared_summary(m));
                }
                row.push(format!("{} ({})", m.operators.len(), uids.join(", ")));
                row
            })
            .collect();
        let mut header = vec!["DIRECTORY", "ID", "KIND", "EPOCH", "TAKEN", "SIZE"];
        if any_shared {
            header.push("SHARED");
        }
        header.push("OPERATORS");
        out.push_str(&display::table(&header, &rows, &[1, 3, 5]));
    }
    if !incomplete.is_empty() {
        let names: Vec<String> = incomplete.iter().map(CheckpointRef::dir_name).collect();
        out.push_str(&format!(
            "incomplete (no {METADATA_FILE}: in flight, or abandoned by a crash): {}\n",
            names.join(", ")
        ));
    }
    let stored_shared = checkpoints.storage().list(SHARED_DIR)?;
    if !stored_shared.is_empty() {
        let unreferenced: HashSet<String> =
            checkpoints.unreferenced_shared()?.into_iter().collect();
        if !unreferenced.is_empty() {
            let size: u64 = stored_shared
                .iter()
                .filter(|object| unreferenced.contains(&object.path))
                .map(|object| object.size)
                .sum();
            out.push_str(&format!(
                "unreferenced shared files (no complete checkpoint refers to them: uploaded by \
                 one in flight, or left by an abandoned one): {}, {}\n",
                unreferenced.len(),
                display::size(size)
            ));
        }
    }
    Ok(out)
}

/// `12.0 MiB in 4 files`: the shared files a checkpoint refers to (each counted once), or `-`.
fn shared_summary(metadata: &CheckpointMetadata) -> String {
    match shared_count(metadata) {
        0 => "-".to_string(),
        count => format!(
            "{} in {count} {}",
            display::size(metadata.shared_size()),
            files(count)
        ),
    }
}

/// The number of distinct shared files `metadata` refers to.
fn shared_count(metadata: &CheckpointMetadata) -> usize {
    metadata
        .shared_files()
        .map(|file| file.path.as_str())
        .collect::<HashSet<_>>()
        .len()
}

/// `file` or `files`.
fn files(count: usize) -> &'static str {
    if count == 1 {
        "file"
    } else {
        "files"
    }
}

/// The `show` report.
fn show(point: &RestorePoint) -> String {
    let m = &point.metadata;
    let mut out = String::new();
    out.push_str(&format!("{}\n", point.location()));
    out.push_str(&format!(
        "  job {:?}, {} {}, epochs 0..={}, taken {}\n",
        m.job_name,
        m.kind,
        m.checkpoint_id,
        m.epoch,
        display::unix_ms(m.taken_at_unix_ms)
    ));
    let shared = match shared_count(m) {
        0 => String::new(),
        count => format!(
            ", refers to {} in {count} shared {}",
            display::size(m.shared_size()),
            files(count)
        ),
    };
    out.push_str(&format!(
        "  max parallelism {}, {} operators, {} in {} files{shared}, format version {}\n",
        m.max_parallelism,
        m.operators.len(),
        display::size(m.total_size()),
        m.files().count(),
        m.format_version
    ));
    for op in &m.operators {
        out.push_str(&format!(
            "\noperator {} ({:?}), parallelism {}\n",
            op.uid, op.name, op.parallelism
        ));
        let mut rows = Vec::new();
        for subtask in &op.subtasks {
            let key_groups = subtask
                .key_groups
                .map_or_else(|| "-".to_string(), |span| span.to_string());
            if subtask.files.is_empty() {
                rows.push(vec![
                    subtask.index.to_string(),
                    key_groups.clone(),
                    "-".into(),
                    "-".into(),
                    "0 B".into(),
                ]);
            }
            for file in &subtask.files {
                rows.push(vec![
                    subtask.index.to_string(),
                    key_groups.clone(),
                    file.path.clone(),
                    file.kind.to_string(),
                    display::size(file.size),
                ]);
            }
        }
        for line in display::table(
            &["SUBTASK", "KEY GROUPS", "FILE", "KIND", "SIZE"],
            &rows,
            &[0, 4],
        )
        .lines()
        {
            out.push_str(&format!("  {line}\n"));
        }
        // States are the same on every subtask of an operator in the usual case: list them
        // once, with the subtasks that hold them when they differ.
        let mut states: Vec<(String, Vec<u32>)> = Vec::new();
        for subtask in &op.subtasks {
            for state in &subtask.states {
                let line = format!(
                    "{} ({}: {})",
                    state.name,
                    state.kind,
                    state.type_names.join(", ")
                );
                match states.iter_mut().find(|(l, _)| *l == line) {
                    Some((_, subtasks)) => subtasks.push(subtask.index),
                    None => states.push((line, vec![subtask.index])),
                }
            }
        }
        for (line, subtasks) in states {
            if subtasks.len() == op.subtasks.len() {
                out.push_str(&format!("  state {line}\n"));
            } else {
                let list: Vec<String> = subtasks.iter().map(u32::to_string).collect();
                out.push_str(&format!("  state {line} on subtasks {}\n", list.join(", ")));
            }
        }
        // Incremental subtasks: the shared files their keyed state refers to.
        for subtask in &op.subtasks {
            if subtask.shared.is_empty() {
                continue;
            }
            let total: u64 = subtask.shared.iter().map(|file| file.size).sum();
            let count = subtask.shared.len();
            out.push_str(&format!(
                "  subtask {}: incremental, refers to {count} shared {} ({}):\n",
                subtask.index,
                files(count),
                display::size(total)
            ));
            let rows: Vec<Vec<String>> = subtask
                .shared
                .iter()
                .map(|file| vec![file.path.clone(), display::size(file.size)])
                .collect();
            for line in display::table(&["SHARED FILE", "SIZE"], &rows, &[1]).lines() {
                out.push_str(&format!("    {line}\n"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use eddy_checkpoint::{
        CheckpointKind, FileKind, OperatorMetadata, PartInfo, SharedFile, SubtaskMetadata,
    };

    /// Commits checkpoint `id` of operator `score` (2 subtasks): subtask 0 incremental,
    /// referring to `shared` (full if empty), subtask 1 full.
    fn commit(checkpoints: &Checkpoints, id: u64, shared: Vec<SharedFile>) {
        let reference = CheckpointRef::Checkpoint(id);
        let part = |index: u32, kind: FileKind| -> PartInfo {
            checkpoints
                .write_part(
                    &reference,
                    "score",
                    &format!("keyed-{index}.bin"),
                    kind,
                    b"x",
                )
                .unwrap()
        };
        let kind0 = if shared.is_empty() {
            FileKind::KeyedState
        } else {
            FileKind::IncrementalKeyedState
        };
        let mut metadata = CheckpointMetadata::new("fraud", id, CheckpointKind::Checkpoint, 9, 128);
        metadata.operators.push(OperatorMetadata {
            uid: "score".into(),
            name: "Score transactions".into(),
            parallelism: 2,
            subtasks: vec![
                SubtaskMetadata {
                    index: 0,
                    key_groups: None,
                    files: vec![part(0, kind0)],
                    states: vec![],
                    shared,
                },
                SubtaskMetadata {
                    index: 1,
                    key_groups: None,
                    files: vec![part(1, FileKind::KeyedState)],
                    states: vec![],
                    shared: vec![],
                },
            ],
        });
        checkpoints.commit(&metadata).unwrap();
    }

    #[test]
    fn incremental_checkpoints_in_ls_and_show() {
        let dir = tempfile::tempdir().unwrap();
        let checkpoints = Checkpoints::open(dir.path().to_str().unwrap()).unwrap();
        let upload = |name: &str, len: usize| {
            let path = Checkpoints::shared_path("score", name).unwrap();
            checkpoints.write_shared(&path, &vec![1; len]).unwrap()
        };
        // Framed sizes: 2023 B (2.0 KiB) and 3023 B (3.0 KiB), 4.9 KiB together.
        let a = upload("0-000007.sst", 2000);
        let b = upload("0-000009.sst", 3000);
        commit(&checkpoints, 1, Vec::new());
        commit(&checkpoints, 2, vec![a, b]);
        // Uploaded by checkpoint 3, in flight.
        upload("0-000011.sst", 1000);

        let out = ls(&checkpoints).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[1].contains("  SIZE  SHARED  "), "{out}");
        assert!(lines[2].starts_with("chk-0000000001"), "{out}");
        assert!(lines[2].contains(" 48 B  -  "), "{out}");
        assert!(lines[3].contains("4.9 KiB in 2 files"), "{out}");
        assert!(lines[3].ends_with("1 (score)"), "{out}");
        assert_eq!(
            lines[4],
            "unreferenced shared files (no complete checkpoint refers to them: uploaded by one \
             in flight, or left by an abandoned one): 1, 1023 B"
        );

        let point = checkpoints.resolve("2").unwrap();
        let out = show(&point);
        assert!(
            out.contains("1 operators, 48 B in 2 files, refers to 4.9 KiB in 2 shared files,"),
            "{out}"
        );
        assert!(
            out.contains("  0  -           score/keyed-0.bin  incremental keyed state"),
            "{out}"
        );
        assert!(
            out.contains(
                "  subtask 0: incremental, refers to 2 shared files (4.9 KiB):\n\
                 \x20   SHARED FILE                   SIZE\n\
                 \x20   shared/score/0-000007.sst  2.0 KiB\n\
                 \x20   shared/score/0-000009.sst  3.0 KiB\n"
            ),
            "{out}"
        );
        assert!(!out.contains("subtask 1: incremental"), "{out}");

        // A full checkpoint says nothing of shared files.
        let out = show(&checkpoints.resolve("1").unwrap());
        assert!(!out.contains("shared"), "{out}");
    }
}
