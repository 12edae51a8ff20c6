//! Rescaling through explicit savepoints (issue 8): a job runs at p = 2 and is stopped with a
//! savepoint, continues from it at p = 4 and is stopped with another, then at p = 3, and runs
//! to its end at p = 1. Its published output and its final keyed state (the final
//! checkpoint's canonical snapshot) equal those of an uninterrupted run at p = 1: on the heap,
//! on RocksDB, and with a heap savepoint restored into RocksDB at another parallelism.
//!
//! Each stop goes through the real mechanism a user has (`eddy savepoint --stop`): a
//! stop-with-savepoint request object in the checkpoint directory, consumed by the job's
//! checkpoint coordinator at its next completed checkpoint.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use eddy::checkpoint::{request_stop_with_savepoint, CheckpointConfig};
use eddy::prelude::*;
use eddy::StateBackendKind;
use eddy_checkpoint::{Checkpoints, FileKind};

mod exactly_once;
use exactly_once::{keyed_entries, published, Entries, Out, Totals, CUSTOMERS, EVENTS};

/// Events per second: a run over the whole input takes 4 s, so each stage is stopped well
/// (at least 1.6 s of input) before its input ends.
const RATE: u64 = 10_000;

fn rocksdb() -> StateBackendKind {
    StateBackendKind::rocksdb()
}

/// Runs the job at `parallelism` on `backend` with checkpoints under `<dir>/ckpt` and output
/// in `<dir>/out`, restoring `restore` first if given. The source runs at parallelism 1.
fn run(
    dir: &Path,
    parallelism: usize,
    backend: StateBackendKind,
    restore: Option<String>,
) -> Result<JobResult> {
    run_job(dir, parallelism, 1, backend, restore)
}

/// [`run`] with the source at `source_parallelism` (one generator split per subtask).
fn run_job(
    dir: &Path,
    parallelism: usize,
    source_parallelism: usize,
    backend: StateBackendKind,
    restore: Option<String>,
) -> Result<JobResult> {
    let config = JobConfig {
        parallelism,
        max_parallelism: Some(128),
        state_backend: backend,
        checkpoint: CheckpointConfig {
            interval: Some(Duration::from_millis(50)),
            location: Some(dir.join("ckpt").to_string_lossy().into_owned()),
            retained: 2,
            restore,
            ..CheckpointConfig::default()
        },
        ..JobConfig::default()
    };
    let env = StreamExecutionEnvironment::new(config);
    env.from_source_named(
        "transactions",
        TransactionGenerator::new(CUSTOMERS, 5)
            .source(EVENTS)
            .with_rate(RATE),
    )
    .set_parallelism(source_parallelism)
    .uid("transactions")
    .key_by(|tx: &Transaction| tx.customer_id)
    .process_named("totals", Totals { failure: None })
    .uid("totals")
    .sink_named("out", FileSink::json_lines(dir.join("out")))
    .uid("out");
    env.execute("savepoint-chain")
}

/// Every keyed-state entry of the operator "totals" in the checkpoint or savepoint `what`
/// under `root`: (state, key, user key, value) as canonical bytes, whatever the backend and
/// parallelism that wrote them.
fn keyed_state(root: &Path, what: &str) -> Entries {
    let checkpoints = Checkpoints::open(&root.to_string_lossy()).unwrap();
    keyed_entries(&checkpoints, what, "totals")
}

/// The number of records published under `dir` (one per line).
fn published_count(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| bytecount(&std::fs::read(e.path()).unwrap_or_default()))
        .sum()
}

fn bytecount(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'\n').count()
}

/// Waits until at least `records` records are published under `out` (the job is past that
/// point of its input), failing after a minute.
fn wait_for_published(out: &Path, records: usize) {
    let started = Instant::now();
    while published_count(out) < records {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "fewer than {records} records published after a minute"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The uninterrupted run at p = 1 on the heap: its published records and final keyed state.
fn reference() -> (Vec<Out>, Entries) {
    let dir = tempfile::tempdir().unwrap();
    let result = run(dir.path(), 1, StateBackendKind::Heap, None).unwrap();
    assert_eq!(result.stopped_with_savepoint, None);
    let out = published::<Out>(&dir.path().join("out"));
    assert_eq!(out.len() as u64, EVENTS);
    (out, keyed_state(&dir.path().join("ckpt"), "latest"))
}

/// p = 2 -> savepoint -> 4 -> savepoint -> 3 -> savepoint -> 1, on `backends` in turn.
fn savepoint_chain(backends: [StateBackendKind; 4]) {
    let (expected_out, expected_state) = reference();
    assert!(!expected_state.is_empty());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let ckpt = dir.path().join("ckpt");
    let steps = [2, 4, 3, 1];
    let mut restore: Option<String> = None;
    let mut savepoint_epochs = Vec::new();
    for (step, (parallelism, backend)) in steps.into_iter().zip(backends).enumerate() {
        let last = step == steps.len() - 1;
        let job_dir: PathBuf = dir.path().to_path_buf();
        let job_restore = restore.clone();
        let job_backend = backend.clone();
        let running =
            std::thread::spawn(move || run(&job_dir, parallelism, job_backend, job_restore));
        if !last {
            // Stop once the job is past the next fifth of its input.
            wait_for_published(&out, (step + 1) * EVENTS as usize / 5);
            let name = format!("step-{step}-p{parallelism}");
            request_stop_with_savepoint(
                &Checkpoints::open(&ckpt.to_string_lossy()).unwrap(),
                &name,
            )
            .unwrap();
            let result = running.join().unwrap().unwrap();
            let location = result
                .stopped_with_savepoint
                .unwrap_or_else(|| panic!("step {step} ({backend:?}) was not stopped"));
            assert!(
                location.ends_with(&format!("savepoint-{name}")),
                "{location}"
            );
            // Nothing after the savepoint was published: the output is exactly what the
            // savepoint's checkpoint covers, a prefix of the reference's per customer.
            let point = Checkpoints::open(&ckpt.to_string_lossy())
                .unwrap()
                .resolve(&location)
                .unwrap();
            savepoint_epochs.push(point.metadata.epoch);
            // Self-contained even when the checkpoint was incremental (RocksDB).
            for subtask in point.metadata.operators.iter().flat_map(|o| &o.subtasks) {
                assert!(subtask.shared.is_empty(), "step {step}: shared files");
                assert!(subtask
                    .files
                    .iter()
                    .all(|file| file.kind != FileKind::IncrementalKeyedState));
            }
            let now = published::<Out>(&out);
            assert!(
                now.len() < EVENTS as usize,
                "step {step}: stopped at the end"
            );
            assert!(
                now.iter().all(|r| expected_out.binary_search(r).is_ok()),
                "step {step}: a record the uninterrupted run does not publish"
            );
            restore = Some(location);
        } else {
            let result = running.join().unwrap().unwrap();
            assert_eq!(result.stopped_with_savepoint, None);
            assert_eq!(result.parallelism, 1);
        }
    }
    // Each savepoint was taken mid-run (not by a job that had already ended).
    assert!(
        savepoint_epochs.iter().all(|&e| e != u64::MAX),
        "{savepoint_epochs:?}"
    );
    assert_eq!(published::<Out>(&out), expected_out);
    assert_eq!(keyed_state(&ckpt, "latest"), expected_state);
}

#[test]
fn savepoint_chain_on_the_heap() {
    savepoint_chain([
        StateBackendKind::Heap,
        StateBackendKind::Heap,
        StateBackendKind::Heap,
        StateBackendKind::Heap,
    ]);
}

#[test]
fn savepoint_chain_on_rocksdb() {
    savepoint_chain([rocksdb(), rocksdb(), rocksdb(), rocksdb()]);
}

#[test]
fn savepoint_chain_heap_savepoint_into_rocksdb_at_another_parallelism() {
    // p = 2 heap -> p = 4 RocksDB -> p = 3 heap -> p = 1 RocksDB.
    savepoint_chain([
        StateBackendKind::Heap,
        rocksdb(),
        StateBackendKind::Heap,
        rocksdb(),
    ]);
}

#[test]
fn stop_with_savepoint_publishes_nothing_after_the_savepoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let ckpt = dir.path().join("ckpt");
    let job_dir = dir.path().to_path_buf();
    let running = std::thread::spawn(move || run(&job_dir, 2, StateBackendKind::Heap, None));
    wait_for_published(&out, EVENTS as usize / 5);
    request_stop_with_savepoint(&Checkpoints::open(&ckpt.to_string_lossy()).unwrap(), "stop")
        .unwrap();
    let result = running.join().unwrap().unwrap();
    let location = result.stopped_with_savepoint.expect("stopped");
    let checkpoints = Checkpoints::open(&ckpt.to_string_lossy()).unwrap();
    let savepoint = checkpoints.resolve(&location).unwrap();
    // The savepoint is the newest completed checkpoint: none completed after it.
    let latest = checkpoints.latest().unwrap().expect("a checkpoint");
    assert_eq!(
        latest.metadata.checkpoint_id,
        savepoint.metadata.checkpoint_id
    );
    // The published records are exactly one per event the savepoint's source had read.
    let source = savepoint.metadata.operator("transactions").unwrap();
    let payload = savepoint
        .read_part(&source.subtasks[0].files[0].path, FileKind::OperatorState)
        .unwrap();
    let state: eddy::layers::state::OperatorStateSnapshot = postcard_decode(&payload);
    let splits = state.state("generator-splits").expect("positions");
    let next = split_next(&splits.elements[0]);
    assert!(next > 0 && next < EVENTS, "savepoint at {next}");
    assert_eq!(published::<Out>(&out).len() as u64, next);
}

fn postcard_decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> T {
    postcard::from_bytes(bytes).unwrap()
}

fn split_next(element: &[u8]) -> u64 {
    let (next, end): (u64, u64) = postcard::from_bytes(element).unwrap();
    assert_eq!(end, EVENTS);
    next
}

/// A source of two generator splits restored at parallelism 4: two of its subtasks get no
/// split and must read nothing (not start their own split from the beginning).
#[test]
fn sources_restored_at_more_subtasks_than_splits_read_nothing_twice() {
    let (expected_out, expected_state) = reference();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let ckpt = dir.path().join("ckpt");
    let job_dir = dir.path().to_path_buf();
    let running = std::thread::spawn(move || run_job(&job_dir, 2, 2, StateBackendKind::Heap, None));
    wait_for_published(&out, EVENTS as usize / 5);
    request_stop_with_savepoint(&Checkpoints::open(&ckpt.to_string_lossy()).unwrap(), "two")
        .unwrap();
    let location = running
        .join()
        .unwrap()
        .unwrap()
        .stopped_with_savepoint
        .expect("stopped");
    let result = run_job(dir.path(), 4, 4, rocksdb(), Some(location)).unwrap();
    let read = result.operator("transactions").unwrap().records_out;
    assert!(read < EVENTS, "read {read} records after the savepoint");
    // Two splits read in parallel interleave each customer's events in another order than
    // the reference's single split, so the running totals differ; what may not differ: one
    // record per event, each customer's counts exactly 1..=n, and the final state.
    let records = published::<Out>(&out);
    assert_eq!(
        records.len() as u64,
        EVENTS,
        "an event was read twice or never"
    );
    let counts: Vec<(u64, u64)> = records.iter().map(|r| (r.customer, r.count)).collect();
    let expected_counts: Vec<(u64, u64)> =
        expected_out.iter().map(|r| (r.customer, r.count)).collect();
    assert!(counts == expected_counts, "counts per customer differ");
    assert!(
        keyed_state(&ckpt, "latest") == expected_state,
        "final keyed state differs from the uninterrupted run's"
    );
}
