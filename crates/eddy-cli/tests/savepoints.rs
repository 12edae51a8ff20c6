//! `eddy savepoint` against a running job, and a heap savepoint restored into RocksDB: the
//! restored run publishes exactly the records of the transactions after the savepoint's
//! source position.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use eddy_checkpoint::{Checkpoints, FileKind};
use eddy_examples::customer_totals::{CustomerTotalsArgs, Totals};
use eddy_state::OperatorStateSnapshot;

fn eddy() -> Command {
    Command::new(env!("CARGO_BIN_EXE_eddy"))
}

fn job(args: &CustomerTotalsArgs, work: &Path, backend: &str, parallelism: u32) -> Command {
    let mut command = eddy();
    command
        .args(["run", "customer-totals"])
        .args(["--parallelism", &parallelism.to_string()])
        .args([
            "--n",
            &args.events.to_string(),
            "--k",
            &args.customers.to_string(),
        ])
        .args(["--rate", &args.rate.unwrap_or(1).to_string()])
        .arg("--output")
        .arg(&args.output)
        .args(["--state-backend", backend])
        .arg("--checkpoint-dir")
        .arg(work.join("checkpoints"))
        .args(["--checkpoint-interval-ms", "100"]);
    command
}

fn published(dir: &Path) -> Vec<Totals> {
    let mut records = Vec::new();
    for entry in fs::read_dir(dir).expect("output").flatten() {
        if entry.path().is_file() {
            for line in fs::read_to_string(entry.path()).expect("read").lines() {
                records.push(serde_json::from_str::<Totals>(line).expect("json"));
            }
        }
    }
    records.sort_unstable();
    records
}

#[test]
fn savepoint_of_a_running_heap_job_restores_into_rocksdb() {
    let work = tempfile::tempdir().expect("temp dir");
    let mut args = CustomerTotalsArgs {
        events: 40_000,
        customers: 200,
        seed: 42,
        rate: Some(5_000),
        output: work.path().join("out-1"),
    };
    let mut running = job(&args, work.path(), "heap", 2)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the job");
    std::thread::sleep(Duration::from_millis(1500));
    let requested = eddy()
        .arg("savepoint")
        .arg(work.path().join("checkpoints"))
        .arg("mid-run")
        .args(["--timeout-s", "30"])
        .output()
        .expect("eddy savepoint");
    running.kill().expect("stop the first run");
    running.wait().expect("reap");
    assert!(
        requested.status.success(),
        "{}",
        String::from_utf8_lossy(&requested.stderr)
    );

    // Where the savepoint's source was: the next transaction to read.
    let checkpoints =
        Checkpoints::open(&work.path().join("checkpoints").to_string_lossy()).expect("open");
    let point = checkpoints
        .resolve("savepoint-mid-run")
        .expect("the savepoint");
    let source = point
        .metadata
        .operator("transactions")
        .expect("source state");
    let file = &source.subtasks[0].files[0];
    let payload = point
        .read_part(&file.path, FileKind::OperatorState)
        .expect("read");
    let state: OperatorStateSnapshot = postcard::from_bytes(&payload).expect("decode");
    let splits = state.state("generator-splits").expect("positions");
    let (next, end): (u64, u64) = postcard::from_bytes(&splits.elements[0]).expect("range");
    assert_eq!(end, args.events);
    assert!(next > 0 && next < args.events, "savepoint at {next}");

    // Restore the heap savepoint into RocksDB, at another parallelism, into a fresh output.
    args.output = work.path().join("out-2");
    let status = job(&args, work.path(), "rocksdb", 3)
        .arg("--restore")
        .arg(work.path().join("checkpoints").join("savepoint-mid-run"))
        .stdout(Stdio::null())
        .status()
        .expect("restored run");
    assert!(status.success());

    let all = eddy_examples::customer_totals::expected_output(&args);
    let mut before = CustomerTotalsArgs {
        events: next,
        ..args.clone()
    };
    before.output = args.output.clone();
    let prefix = eddy_examples::customer_totals::expected_output(&before);
    // Everything minus what the transactions before the savepoint emitted.
    let mut expected = all;
    for record in prefix {
        let at = expected.binary_search(&record).expect("prefix record");
        expected.remove(at);
    }
    assert_eq!(published(&args.output), expected);
}

/// Where the savepoint `name`'s source was: the next transaction to read.
fn savepoint_position(work: &Path, name: &str) -> u64 {
    let checkpoints = Checkpoints::open(&work.join("checkpoints").to_string_lossy()).expect("open");
    let point = checkpoints
        .resolve(&format!("savepoint-{name}"))
        .expect("the savepoint");
    let source = point
        .metadata
        .operator("transactions")
        .expect("source state");
    let file = &source.subtasks[0].files[0];
    let payload = point
        .read_part(&file.path, FileKind::OperatorState)
        .expect("read");
    let state: OperatorStateSnapshot = postcard::from_bytes(&payload).expect("decode");
    let splits = state.state("generator-splits").expect("positions");
    let (next, _end): (u64, u64) = postcard::from_bytes(&splits.elements[0]).expect("range");
    next
}

#[test]
fn savepoint_stop_ends_the_job_and_a_restore_at_another_parallelism_finishes_it() {
    let work = tempfile::tempdir().expect("temp dir");
    let args = CustomerTotalsArgs {
        events: 40_000,
        customers: 200,
        seed: 42,
        rate: Some(5_000),
        output: work.path().join("out"),
    };
    let mut running = job(&args, work.path(), "heap", 2)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the job");
    // Once the job has published output, it is running and checkpointing.
    let started = std::time::Instant::now();
    while !args.output.exists() || published(&args.output).is_empty() {
        assert!(started.elapsed() < Duration::from_secs(60), "no output");
        std::thread::sleep(Duration::from_millis(50));
    }
    let requested = eddy()
        .arg("savepoint")
        .arg(work.path().join("checkpoints"))
        .arg("stopped")
        .arg("--stop")
        .args(["--timeout-s", "30"])
        .output()
        .expect("eddy savepoint --stop");
    assert!(
        requested.status.success(),
        "{}",
        String::from_utf8_lossy(&requested.stderr)
    );
    // The job stops by itself, successfully, having published exactly what the savepoint
    // covers.
    let waited = std::time::Instant::now();
    let status = loop {
        if let Some(status) = running.try_wait().expect("wait") {
            break status;
        }
        if waited.elapsed() > Duration::from_secs(30) {
            running.kill().expect("kill");
            panic!("the job did not stop after its savepoint");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    let next = savepoint_position(work.path(), "stopped");
    assert!(next > 0 && next < args.events, "savepoint at {next}");
    let prefix = CustomerTotalsArgs {
        events: next,
        ..args.clone()
    };
    assert_eq!(
        published(&args.output),
        eddy_examples::customer_totals::expected_output(&prefix)
    );

    // Continue from the savepoint on RocksDB at p = 3, into the same output directory.
    let status = job(&args, work.path(), "rocksdb", 3)
        .arg("--restore")
        .arg(work.path().join("checkpoints").join("savepoint-stopped"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("restored run");
    assert!(status.success());
    assert_eq!(
        published(&args.output),
        eddy_examples::customer_totals::expected_output(&args)
    );
}
