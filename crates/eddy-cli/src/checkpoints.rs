//! `eddy checkpoints ls | show`: what a checkpoint directory holds, as tables.

use clap::Subcommand;
use eddy_checkpoint::{display, resolve, CheckpointRef, Checkpoints, RestorePoint, METADATA_FILE};

/// The `eddy checkpoints` subcommands.
#[derive(Subcommand, Debug)]
pub enum CheckpointsCommand {
    /// Lists the complete checkpoints and savepoints under a checkpoint directory (a path,
    /// file://, s3://, gs:// or az:// URL), then any incomplete ones.
    Ls {
        /// The checkpoint directory (the job's checkpoint root).
        location: String,
    },
    /// Shows one checkpoint: per operator and subtask, its key groups, files and sizes.
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
        let rows: Vec<Vec<String>> = listed
            .iter()
            .map(|info| {
                let m = &info.metadata;
                let uids: Vec<&str> = m.operators.iter().map(|op| op.uid.as_str()).collect();
                vec![
                    info.reference.dir_name(),
                    m.checkpoint_id.to_string(),
                    m.kind.to_string(),
                    m.epoch.to_string(),
                    display::unix_ms(m.taken_at_unix_ms),
                    display::size(m.total_size()),
                    format!("{} ({})", m.operators.len(), uids.join(", ")),
                ]
            })
            .collect();
        out.push_str(&display::table(
            &[
                "DIRECTORY",
                "ID",
                "KIND",
                "EPOCH",
                "TAKEN",
                "SIZE",
                "OPERATORS",
            ],
            &rows,
            &[1, 3, 5],
        ));
    }
    if !incomplete.is_empty() {
        let names: Vec<String> = incomplete.iter().map(CheckpointRef::dir_name).collect();
        out.push_str(&format!(
            "incomplete (no {METADATA_FILE}: in flight, or abandoned by a crash): {}\n",
            names.join(", ")
        ));
    }
    Ok(out)
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
    out.push_str(&format!(
        "  max parallelism {}, {} operators, {} in {} files, format version {}\n",
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
    }
    out
}
