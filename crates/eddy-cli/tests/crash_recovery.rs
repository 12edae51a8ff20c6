//! Exactly-once after `kill -9`: the `customer-totals` job (checkpoints every 200 ms, an
//! exactly-once file sink) is killed at random points, restarted with `--restore latest`, and
//! its published output must equal, record for record, that of a run that never failed.
//!
//! Real processes, real SIGKILLs, real checkpoint files: nothing is mocked.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use eddy_examples::customer_totals::{expected_output, CustomerTotalsArgs, Totals};

/// Kills per backend; two backends make the suite's 20.
const KILLS: usize = 10;

fn eddy() -> Command {
    Command::new(env!("CARGO_BIN_EXE_eddy"))
}

/// A small deterministic generator of kill delays (no `rand` needed for this).
struct Delays(u64);

impl Delays {
    fn next(&mut self, min_ms: u64, max_ms: u64) -> Duration {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        Duration::from_millis(min_ms + (self.0 >> 33) % (max_ms - min_ms))
    }
}

fn has_completed_checkpoint(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.path().join("_metadata").exists())
    })
}

fn spawn(args: &CustomerTotalsArgs, backend: &str, work: &Path, restore: bool) -> Child {
    let mut command = eddy();
    command
        .args(["run", "customer-totals", "--parallelism", "2"])
        .args([
            "--n",
            &args.events.to_string(),
            "--k",
            &args.customers.to_string(),
        ])
        .args(["--seed", &args.seed.to_string()])
        .args(["--rate", &args.rate.unwrap_or(1).to_string()])
        .arg("--output")
        .arg(&args.output)
        .args(["--state-backend", backend])
        .arg("--state-dir")
        .arg(work.join("state"))
        .arg("--checkpoint-dir")
        .arg(work.join("checkpoints"))
        .args(["--checkpoint-interval-ms", "200"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if restore {
        command.args(["--restore", "latest"]);
    }
    command.spawn().expect("start the eddy binary")
}

/// Every record published into `dir` (pending files are not published).
fn published(dir: &Path) -> Vec<Totals> {
    let mut records = Vec::new();
    for entry in fs::read_dir(dir).expect("output directory").flatten() {
        let path = entry.path();
        if !path.is_file() {
            continue;
        }
        let text = fs::read_to_string(&path).expect("read an output file");
        for line in text.lines() {
            records.push(serde_json::from_str::<Totals>(line).expect("a JSON line of Totals"));
        }
    }
    records.sort_unstable();
    records
}

fn crash_and_recover(backend: &str, seed: u64) {
    let work = tempfile::tempdir().expect("temp dir");
    let args = CustomerTotalsArgs {
        events: 60_000,
        customers: 500,
        seed,
        // One source subtask at 8,000 events/s: about 7.5 s of work, killed 10 times.
        rate: Some(8_000),
        output: work.path().join("out"),
    };
    let mut delays = Delays(seed);
    let mut kills = 0;
    let mut attempts = 0;
    let started = Instant::now();
    while kills < KILLS {
        attempts += 1;
        assert!(attempts < 60, "too many attempts without finishing");
        let restore = has_completed_checkpoint(&work.path().join("checkpoints"));
        let mut child = spawn(&args, backend, work.path(), restore);
        let deadline = Instant::now() + delays.next(250, 1100);
        let mut exited = None;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().expect("poll the child") {
                exited = Some(status);
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        match exited {
            Some(status) => {
                let output = child.wait_with_output().expect("child output");
                assert!(
                    status.success(),
                    "run {attempts} failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
                // The job finished before the next kill: start over with more kills to go
                // is not needed; the output check below still applies.
                break;
            }
            None => {
                child.kill().expect("SIGKILL the job");
                child.wait().expect("reap the job");
                kills += 1;
            }
        }
    }
    // Run to the end from the latest checkpoint.
    let restore = has_completed_checkpoint(&work.path().join("checkpoints"));
    let output = spawn(&args, backend, work.path(), restore)
        .wait_with_output()
        .expect("final run");
    assert!(
        output.status.success(),
        "the final run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        kills >= KILLS,
        "the job finished after only {kills} kills; slow it down ({:?})",
        started.elapsed()
    );
    let expected = expected_output(&args);
    let got = published(&args.output);
    assert_eq!(got.len(), expected.len(), "records published ({backend})");
    assert!(
        got == expected,
        "published records differ from a run without failures ({backend})"
    );
    assert!(
        !args.output.join(".pending").exists()
            || fs::read_dir(args.output.join(".pending")).is_ok_and(|mut d| d.next().is_none()),
        "pending files left after the job finished"
    );
}

#[test]
fn heap_backend_is_exactly_once_across_kill_9() {
    crash_and_recover("heap", 11);
}

#[test]
fn rocksdb_backend_is_exactly_once_across_kill_9() {
    crash_and_recover("rocksdb", 23);
}

#[test]
fn restore_latest_without_a_checkpoint_is_a_clear_error() {
    let work = tempfile::tempdir().expect("temp dir");
    let output = eddy()
        .args([
            "run",
            "customer-totals",
            "--n",
            "10",
            "--k",
            "2",
            "--output",
        ])
        .arg(work.path().join("out"))
        .arg("--checkpoint-dir")
        .arg(work.path().join("none"))
        .args(["--restore", "latest"])
        .output()
        .expect("run eddy");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("checkpoint"), "{stderr}");
}
