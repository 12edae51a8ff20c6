//! Checkpoints through the public API: the final checkpoint of a bounded job, restart after a
//! failure inside the process, restore at another parallelism, and refusal of corrupt,
//! foreign or mismatched checkpoints.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use eddy::checkpoint::{CheckpointConfig, RestartStrategy};
use eddy::prelude::*;
use eddy::StateBackendKind;
use eddy_checkpoint::{Checkpoints, FileKind};

mod exactly_once;
use exactly_once::{
    expected, keyed_entries, published, InjectedFailure, Out, Totals, CUSTOMERS, EVENTS,
};

struct Job<'a> {
    dir: &'a Path,
    /// Where checkpoints go; `None`: `<dir>/ckpt`.
    location: Option<String>,
    parallelism: usize,
    backend: StateBackendKind,
    restore: Option<String>,
    restart: RestartStrategy,
    fail_at: Option<u64>,
    /// Drop the keyed operator (to test state of operators the job no longer has).
    without_totals: bool,
    allow_non_restored_state: bool,
    max_parallelism: Option<usize>,
}

impl<'a> Job<'a> {
    fn new(dir: &'a Path) -> Self {
        Job {
            dir,
            location: None,
            parallelism: 2,
            backend: StateBackendKind::Heap,
            restore: None,
            restart: RestartStrategy::None,
            fail_at: None,
            without_totals: false,
            allow_non_restored_state: false,
            max_parallelism: None,
        }
    }

    fn run(&self) -> Result<JobResult> {
        let location = self
            .location
            .clone()
            .unwrap_or_else(|| self.dir.join("ckpt").to_string_lossy().into_owned());
        let config = JobConfig {
            parallelism: self.parallelism,
            max_parallelism: self.max_parallelism,
            state_backend: self.backend.clone(),
            checkpoint: CheckpointConfig {
                interval: Some(Duration::from_millis(50)),
                location: Some(location.clone()),
                retained: 2,
                restore: self.restore.clone(),
                allow_non_restored_state: self.allow_non_restored_state,
                restart: self.restart.clone(),
                savepoint_on_finish: None,
            },
            ..JobConfig::default()
        };
        let env = StreamExecutionEnvironment::new(config);
        let source = env
            .from_source_named(
                "transactions",
                TransactionGenerator::new(CUSTOMERS, 5)
                    .source(EVENTS)
                    .with_rate(40_000),
            )
            .set_parallelism(1)
            .uid("transactions");
        let keyed = source.key_by(|tx: &Transaction| tx.customer_id);
        if self.without_totals {
            keyed
                .process_named("other", Totals { failure: None })
                .uid("other")
                .sink_named("out", FileSink::json_lines(self.dir.join("out")))
                .uid("out");
        } else {
            keyed
                .process_named(
                    "totals",
                    Totals {
                        failure: Some(InjectedFailure::new(self.fail_at, &location)),
                    },
                )
                .uid("totals")
                .sink_named("out", FileSink::json_lines(self.dir.join("out")))
                .uid("out");
        }
        env.execute("checkpoint-test")
    }
}

#[test]
fn bounded_job_ends_with_a_final_checkpoint_and_exactly_once_output() {
    let dir = tempfile::tempdir().unwrap();
    let result = Job::new(dir.path()).run().unwrap();
    assert!(!result.checkpoints.is_empty());
    assert_eq!(published::<Out>(&dir.path().join("out")), expected());
    let latest = Checkpoints::open(&dir.path().join("ckpt").to_string_lossy())
        .unwrap()
        .latest()
        .unwrap()
        .expect("a completed checkpoint");
    let uids: Vec<&str> = latest
        .metadata
        .operators
        .iter()
        .map(|o| o.uid.as_str())
        .collect();
    for uid in ["transactions", "totals", "out"] {
        assert!(uids.contains(&uid), "{uid} missing from {uids:?}");
    }
    // Retention keeps the newest two.
    let all = Checkpoints::open(&dir.path().join("ckpt").to_string_lossy())
        .unwrap()
        .list()
        .unwrap();
    assert!(all.len() <= 2, "{} checkpoints retained", all.len());
}

#[test]
fn restart_strategy_recovers_from_a_failure_exactly_once() {
    for backend in [StateBackendKind::Heap, StateBackendKind::rocksdb()] {
        let dir = tempfile::tempdir().unwrap();
        let result = Job {
            backend: backend.clone(),
            fail_at: Some(EVENTS / 2),
            restart: RestartStrategy::FixedDelay {
                attempts: 2,
                delay: Duration::from_millis(10),
            },
            ..Job::new(dir.path())
        }
        .run()
        .unwrap();
        assert_eq!(result.restarts, 1, "{backend:?}");
        assert_eq!(
            published::<Out>(&dir.path().join("out")),
            expected(),
            "{backend:?}"
        );
    }
}

/// Rescaling through restores: p = 2 -> 4 -> 3 -> 1, each run failing at the next quarter
/// of the input, switching backends on the way; the published records equal an
/// uninterrupted run's.
fn rescale_chain(backends: [StateBackendKind; 4]) {
    let dir = tempfile::tempdir().unwrap();
    let steps = [2, 4, 3, 1];
    for (step, (parallelism, backend)) in steps.into_iter().zip(backends).enumerate() {
        let last = step == steps.len() - 1;
        let result = Job {
            parallelism,
            backend,
            restore: (step > 0).then(|| "latest".to_string()),
            fail_at: (!last).then_some((step as u64 + 1) * EVENTS / 4),
            max_parallelism: Some(128),
            ..Job::new(dir.path())
        }
        .run();
        eprintln!(
            "step {step} (p = {parallelism}): {:?}; stored: {:?}",
            result.as_ref().map(|r| r.checkpoints.len()),
            listing(&dir.path().join("ckpt"))
        );
        assert_eq!(
            result.is_ok(),
            last,
            "step {step}: {:?}; stored: {:?}",
            result.as_ref().err(),
            listing(&dir.path().join("ckpt"))
        );
    }
    assert_eq!(published::<Out>(&dir.path().join("out")), expected());
}

/// The files under `dir`, for failure messages.
fn listing(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).into_iter().flatten().flatten() {
            if entry.path().is_dir() {
                pending.push(entry.path());
            } else {
                files.push(
                    entry
                        .path()
                        .strip_prefix(dir)
                        .unwrap()
                        .display()
                        .to_string(),
                );
            }
        }
    }
    files.sort();
    files
}

#[test]
fn restore_at_other_parallelisms_and_across_backends() {
    let rocksdb = || StateBackendKind::rocksdb();
    rescale_chain([
        StateBackendKind::Heap,
        rocksdb(),
        StateBackendKind::Heap,
        rocksdb(),
    ]);
}

#[test]
fn rescale_chain_on_rocksdb() {
    let rocksdb = || StateBackendKind::rocksdb();
    rescale_chain([rocksdb(), rocksdb(), rocksdb(), rocksdb()]);
}

#[test]
fn rescale_chain_on_the_heap() {
    rescale_chain([
        StateBackendKind::Heap,
        StateBackendKind::Heap,
        StateBackendKind::Heap,
        StateBackendKind::Heap,
    ]);
}

#[test]
fn restore_refuses_other_max_parallelism_and_unknown_operators() {
    let dir = tempfile::tempdir().unwrap();
    Job::new(dir.path()).run().unwrap();
    let err = Job {
        restore: Some("latest".into()),
        max_parallelism: Some(256),
        ..Job::new(dir.path())
    }
    .run()
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("max parallelism 128") && err.contains("256"),
        "{err}"
    );

    let err = Job {
        restore: Some("latest".into()),
        without_totals: true,
        ..Job::new(dir.path())
    }
    .run()
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("totals") && err.contains("--allow-non-restored-state"),
        "{err}"
    );
    Job {
        restore: Some("latest".into()),
        without_totals: true,
        allow_non_restored_state: true,
        ..Job::new(dir.path())
    }
    .run()
    .unwrap();
}

#[test]
fn corrupt_truncated_and_foreign_checkpoints_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    Job::new(dir.path()).run().unwrap();
    let root = dir.path().join("ckpt");
    let latest = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("_metadata").exists())
        .max()
        .unwrap();
    let part = latest.join("totals").join("keyed-0.bin");
    let original = std::fs::read(&part).unwrap();
    let restore = |dir: &Path| {
        Job {
            restore: Some(latest.to_string_lossy().into_owned()),
            ..Job::new(dir)
        }
        .run()
        .unwrap_err()
        .to_string()
    };

    let mut flipped = original.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x40;
    std::fs::write(&part, &flipped).unwrap();
    let err = restore(dir.path());
    assert!(
        err.contains("keyed-0.bin") && err.contains("checksum"),
        "{err}"
    );

    std::fs::write(&part, &original[..original.len() / 3]).unwrap();
    let err = restore(dir.path());
    assert!(err.contains("keyed-0.bin"), "{err}");

    std::fs::write(&part, b"PK\x03\x04 not a checkpoint at all").unwrap();
    let err = restore(dir.path());
    assert!(
        err.contains("keyed-0.bin") && err.contains("foreign"),
        "{err}"
    );
}

#[test]
fn checkpoints_on_a_real_s3_server_recover_a_failed_job() {
    let Ok(base) = std::env::var("EDDY_TEST_S3_URL") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "EDDY_TEST_S3_URL is not set under CI: run the suite through scripts/test, which \
             starts the S3 server"
        );
        eprintln!("SKIPPED: EDDY_TEST_S3_URL is not set (eval \"$(scripts/start-s3)\" first)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let location = format!(
        "{}/job-test-{}",
        base.trim_end_matches('/'),
        std::process::id()
    );
    // Fails half-way; the restart restores from the checkpoint on S3.
    let result = Job {
        location: Some(location.clone()),
        fail_at: Some(EVENTS / 2),
        restart: RestartStrategy::FixedDelay {
            attempts: 1,
            delay: Duration::from_millis(10),
        },
        backend: StateBackendKind::rocksdb(),
        ..Job::new(dir.path())
    }
    .run()
    .unwrap();
    assert_eq!(result.restarts, 1);
    assert_eq!(published::<Out>(&dir.path().join("out")), expected());
    let latest = Checkpoints::open(&location).unwrap().latest().unwrap();
    assert!(latest.is_some_and(|l| l.location.starts_with("s3://")));
}

#[test]
fn file_source_resumes_at_its_checkpointed_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    let generator = TransactionGenerator::new(CUSTOMERS, 5);
    // Two files, read one after the other by the single source subtask.
    for (file, range) in [("a.jsonl", 0..EVENTS / 2), ("b.jsonl", EVENTS / 2..EVENTS)] {
        let lines: Vec<String> = range
            .map(|i| serde_json::to_string(&eddy::connectors::Generator::generate(&generator, i)))
            .collect::<std::result::Result<_, _>>()
            .unwrap();
        std::fs::write(input.join(file), lines.join("\n") + "\n").unwrap();
    }
    let ckpt = dir.path().join("ckpt").to_string_lossy().into_owned();
    let config = JobConfig {
        parallelism: 2,
        checkpoint: CheckpointConfig {
            interval: Some(Duration::from_millis(50)),
            location: Some(ckpt.clone()),
            restart: RestartStrategy::FixedDelay {
                attempts: 1,
                delay: Duration::from_millis(10),
            },
            ..CheckpointConfig::default()
        },
        ..JobConfig::default()
    };
    let env = StreamExecutionEnvironment::new(config);
    env.from_source_named("files", FileSource::<Transaction>::json_lines(&input))
        .set_parallelism(1)
        // Slow enough (about 0.8 s in all) for several checkpoints before the failure.
        .map(|tx: Transaction| {
            if tx.transaction_id % 50 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            tx
        })
        .key_by(|tx: &Transaction| tx.customer_id)
        .process_named(
            "totals",
            Totals {
                failure: Some(InjectedFailure::new(Some(3 * EVENTS / 4), &ckpt)),
            },
        )
        .sink_named("out", FileSink::json_lines(dir.path().join("out")));
    let result = env.execute("file-source-checkpoints").unwrap();
    assert_eq!(result.restarts, 1);
    assert_eq!(published::<Out>(&dir.path().join("out")), expected());
    // Read again from scratch, the source would have read about 1.75 N records in all; from a
    // checkpoint taken past the first file's middle, well under 1.5 N.
    let read = result.operator("files").unwrap().records_out;
    assert!(read < 3 * EVENTS / 2, "read {read} records for {EVENTS}");
}

#[test]
fn a_checkpoint_that_cannot_be_written_fails_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ckpt");
    let job_dir = dir.path().to_path_buf();
    let running = std::thread::spawn(move || Job::new(&job_dir).run().map(|_| ()));
    // Once the job runs, the checkpoint directory turns into a file: every write fails.
    std::thread::sleep(Duration::from_millis(300));
    // The coordinator may be writing into it meanwhile: retry until the swap holds.
    let swapped = (0..100).any(|_| {
        let _ = std::fs::remove_dir_all(&root);
        std::fs::write(&root, b"not a directory").is_ok() && root.is_file()
    });
    assert!(swapped, "could not replace {} by a file", root.display());
    let err = running.join().unwrap().unwrap_err().to_string();
    assert!(
        err.contains("checkpoint coordinator") && err.contains("could not be written"),
        "{err}"
    );
}

/// The RocksDB backend with full (non-incremental) checkpoints.
fn rocksdb_full_checkpoints() -> StateBackendKind {
    let mut kind = StateBackendKind::rocksdb();
    if let StateBackendKind::RocksDb {
        full_checkpoints, ..
    } = &mut kind
    {
        *full_checkpoints = true;
    }
    kind
}

#[test]
fn rocksdb_checkpoints_are_incremental_and_their_shared_files_are_collected() {
    let dir = tempfile::tempdir().unwrap();
    let result = Job {
        backend: StateBackendKind::rocksdb(),
        ..Job::new(dir.path())
    }
    .run()
    .unwrap();
    assert!(result.checkpoints.len() > 2, "{:?}", result.checkpoints);
    assert_eq!(published::<Out>(&dir.path().join("out")), expected());
    let root = Checkpoints::open(&dir.path().join("ckpt").to_string_lossy()).unwrap();
    let retained = root.list().unwrap();
    assert!(retained.len() <= 2);
    for info in &retained {
        let totals = info.metadata.operator("totals").expect("keyed state");
        for subtask in &totals.subtasks {
            let kinds: Vec<FileKind> = subtask.files.iter().map(|f| f.kind).collect();
            assert_eq!(kinds, vec![FileKind::IncrementalKeyedState]);
            assert!(!subtask.shared.is_empty(), "no shared files");
            for file in &subtask.shared {
                assert!(file.path.starts_with("shared/totals/"), "{}", file.path);
                assert!(dir.path().join("ckpt").join(&file.path).is_file());
            }
        }
    }
    // Retention deleted the older checkpoints' files that no retained checkpoint refers to.
    assert_eq!(root.unreferenced_shared().unwrap(), Vec::<String>::new());

    // Restored at another parallelism into the heap backend (the source has nothing left
    // to read): the new run's final checkpoint holds exactly the state the incremental one
    // stands for.
    let latest = root.latest().unwrap().expect("a completed checkpoint");
    let restored = tempfile::tempdir().unwrap();
    Job {
        backend: StateBackendKind::Heap,
        parallelism: 3,
        restore: Some(latest.location.clone()),
        ..Job::new(restored.path())
    }
    .run()
    .unwrap();
    let again = Checkpoints::open(&restored.path().join("ckpt").to_string_lossy()).unwrap();
    let heap_state = keyed_entries(&again, "latest", "totals");
    assert!(heap_state.len() > 100, "{} entries", heap_state.len());
    assert_eq!(keyed_entries(&root, "latest", "totals"), heap_state);
}

#[test]
fn full_rocksdb_checkpoints_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    Job {
        backend: rocksdb_full_checkpoints(),
        ..Job::new(dir.path())
    }
    .run()
    .unwrap();
    let root = Checkpoints::open(&dir.path().join("ckpt").to_string_lossy()).unwrap();
    let latest = root.latest().unwrap().expect("a completed checkpoint");
    let totals = latest.metadata.operator("totals").expect("keyed state");
    for subtask in &totals.subtasks {
        assert_eq!(subtask.files[0].kind, FileKind::KeyedState);
        assert!(subtask.shared.is_empty());
    }
    assert!(!dir.path().join("ckpt").join("shared").exists());
}
