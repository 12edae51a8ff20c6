//! One job across several processes on localhost (timely's cluster mode), with real
//! processes, real TCP connections, real SIGKILLs and one shared checkpoint directory:
//!
//! * `customer-totals` on 3 processes x 2 workers publishes exactly what it publishes in one
//!   process (and what a model of the job computes);
//! * `kill -9` of one process mid-run: `eddy cluster local` stops the others and restarts all
//!   from the latest completed checkpoint; the output is still exactly-once;
//! * a 3-process checkpoint restored on 2 processes (rescaled through key groups) finishes
//!   with the same output.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use eddy_checkpoint::Checkpoints;
use eddy_examples::customer_totals::{expected_output, CustomerTotalsArgs, Totals};

fn eddy() -> Command {
    Command::new(env!("CARGO_BIN_EXE_eddy"))
}

/// `customer-totals`' own flags and the checkpoint flags, as after `eddy run`.
fn job_args(args: &CustomerTotalsArgs, checkpoints: &Path) -> Vec<String> {
    let mut out: Vec<String> = vec![
        "customer-totals".into(),
        "--n".into(),
        args.events.to_string(),
        "--k".into(),
        args.customers.to_string(),
        "--seed".into(),
        args.seed.to_string(),
        "--output".into(),
        args.output.to_string_lossy().into_owned(),
        "--checkpoint-dir".into(),
        checkpoints.to_string_lossy().into_owned(),
        "--checkpoint-interval-ms".into(),
        "100".into(),
    ];
    if let Some(rate) = args.rate {
        out.extend(["--rate".into(), rate.to_string()]);
    }
    out
}

/// `eddy cluster local -n <processes> --workers-per-process <workers> <extra> -- run <job>`.
fn cluster_local(processes: usize, workers: usize, extra: &[&str], job: &[String]) -> Command {
    let mut command = eddy();
    command
        .args(["cluster", "local", "-n", &processes.to_string()])
        .args(["--workers-per-process", &workers.to_string()])
        .args(["--restart-delay-ms", "100"])
        .args(extra)
        .args(["--", "run"])
        .args(job);
    command
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

fn assert_success(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

fn args_in(work: &Path, name: &str, rate: Option<u64>) -> CustomerTotalsArgs {
    CustomerTotalsArgs {
        events: 30_000,
        customers: 400,
        seed: 7,
        rate,
        output: work.join(name),
    }
}

/// The latest completed checkpoint's id and its keyed operator's parallelism.
fn latest_checkpoint(dir: &Path) -> Option<(u64, u32)> {
    let checkpoints = Checkpoints::open_existing(dir.to_str()?).ok()?;
    let latest = checkpoints.latest().ok()??;
    let parallelism = latest.metadata.operator("customer-totals")?.parallelism;
    Some((latest.metadata.checkpoint_id, parallelism))
}

/// A running `eddy cluster local` whose stderr lines are collected by a thread.
struct Supervisor {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Supervisor {
    fn spawn(mut command: Command) -> Self {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start eddy cluster local");
        let stderr = child.stderr.take().expect("piped stderr");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Supervisor {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
    }

    /// The pid the supervisor reported for `process` in `attempt`.
    fn pid_of(&mut self, attempt: u32, process: usize, timeout: Duration) -> u32 {
        let prefix = format!("eddy cluster: attempt {attempt}: process {process} of ");
        let deadline = Instant::now() + timeout;
        loop {
            self.drain();
            let found = self.seen.iter().find_map(|line| {
                let rest = line.strip_prefix(&prefix)?;
                let pid = rest.split(" is pid ").nth(1)?.split(' ').next()?;
                pid.parse().ok()
            });
            if let Some(pid) = found {
                return pid;
            }
            assert!(
                Instant::now() < deadline,
                "no pid reported: {:?}",
                self.seen
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the supervisor to exit; its status and everything it wrote to stderr.
    fn wait(mut self, timeout: Duration) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the supervisor") {
                // The reader thread ends at EOF.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
                    self.seen.push(line);
                }
                return (status, self.seen.join("\n"));
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                self.drain();
                panic!(
                    "the supervisor did not finish in {timeout:?}: {:?}",
                    self.seen
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn kill_9(pid: u32) {
    let status = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -9 {pid}");
}

/// Waits until the checkpoint directory holds a completed checkpoint newer than `after`.
fn await_checkpoint(dir: &Path, after: u64, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some((id, _)) = latest_checkpoint(dir).filter(|(id, _)| *id > after) {
            return id;
        }
        assert!(Instant::now() < deadline, "no checkpoint after {after}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn three_processes_of_two_workers_publish_what_one_process_does() {
    let work = tempfile::tempdir().expect("temp dir");
    let one = args_in(work.path(), "out-1", None);
    let output = eddy()
        .arg("run")
        .args(job_args(&one, &work.path().join("chk-1")))
        .args(["--parallelism", "1"])
        .output()
        .expect("run in one process");
    assert_success(&output, "the one-process run");

    let three = args_in(work.path(), "out-3", None);
    let checkpoints = work.path().join("chk-3");
    let output = cluster_local(
        3,
        2,
        &["--max-restarts", "0"],
        &job_args(&three, &checkpoints),
    )
    .output()
    .expect("run on 3 processes");
    assert_success(&output, "the 3-process run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    // Every process reports the job at parallelism 6.
    assert_eq!(stdout.matches("at parallelism 6").count(), 3, "{stdout}");

    let expected = expected_output(&one);
    assert_eq!(published(&one.output), expected, "one process");
    let got = published(&three.output);
    assert_eq!(
        got.len(),
        expected.len(),
        "records published by 3 processes"
    );
    assert!(
        got == expected,
        "3 processes published other records than 1"
    );
    // The final checkpoint describes all 6 keyed subtasks, written by three processes.
    let (_, parallelism) = latest_checkpoint(&checkpoints).expect("a final checkpoint");
    assert_eq!(parallelism, 6);
    for process in 1..3 {
        assert!(
            checkpoints
                .join(format!("_cluster/final-{process}"))
                .exists(),
            "process {process} handed its final parts to process 0"
        );
    }
}

#[test]
fn two_processes_on_rocksdb_publish_the_model_output() {
    let work = tempfile::tempdir().expect("temp dir");
    let args = args_in(work.path(), "out", None);
    let mut job = job_args(&args, &work.path().join("chk"));
    job.extend([
        "--state-backend".into(),
        "rocksdb".into(),
        "--state-dir".into(),
    ]);
    job.push(work.path().join("state").to_string_lossy().into_owned());
    let output = cluster_local(2, 2, &["--max-restarts", "0"], &job)
        .output()
        .expect("run on 2 processes");
    assert_success(&output, "the 2-process RocksDB run");
    assert!(published(&args.output) == expected_output(&args));
}

#[test]
fn kill_9_of_one_process_restarts_all_from_the_latest_checkpoint_exactly_once() {
    let work = tempfile::tempdir().expect("temp dir");
    // One source subtask at 6,000 events/s: 5 s of work.
    let args = args_in(work.path(), "out", Some(6_000));
    let checkpoints = work.path().join("chk");
    let mut supervisor = Supervisor::spawn(cluster_local(
        3,
        2,
        &["--max-restarts", "2"],
        &job_args(&args, &checkpoints),
    ));
    let victim = supervisor.pid_of(1, 1, Duration::from_secs(30));
    // Kill once some checkpoints are complete, so the restart restores one.
    let first = await_checkpoint(&checkpoints, 0, Duration::from_secs(60));
    await_checkpoint(&checkpoints, first + 2, Duration::from_secs(60));
    kill_9(victim);
    let (status, stderr) = supervisor.wait(Duration::from_secs(180));
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("process 1 failed (signal: 9")
            && stderr.contains("restart 1 of 2 from checkpoint"),
        "{stderr}"
    );
    assert!(stderr.contains("attempt 2: process 2 of 3"), "{stderr}");

    let expected = expected_output(&args);
    let got = published(&args.output);
    assert_eq!(got.len(), expected.len(), "records published");
    assert!(
        got == expected,
        "published records differ from a run without failures"
    );
}

#[test]
fn a_three_process_checkpoint_restores_on_two_processes() {
    let work = tempfile::tempdir().expect("temp dir");
    let args = args_in(work.path(), "out", Some(6_000));
    let checkpoints = work.path().join("chk");
    let job = job_args(&args, &checkpoints);
    let mut supervisor = Supervisor::spawn(cluster_local(3, 2, &["--max-restarts", "0"], &job));
    let victim = supervisor.pid_of(1, 2, Duration::from_secs(30));
    let first = await_checkpoint(&checkpoints, 0, Duration::from_secs(60));
    await_checkpoint(&checkpoints, first + 2, Duration::from_secs(60));
    kill_9(victim);
    let (status, stderr) = supervisor.wait(Duration::from_secs(60));
    assert!(!status.success(), "no restarts were allowed: {stderr}");
    assert!(stderr.contains("restart(s) allowed"), "{stderr}");
    let (restored, parallelism) = latest_checkpoint(&checkpoints).expect("a checkpoint");
    assert_eq!(parallelism, 6, "taken by 3 processes x 2 workers");

    // Rescale: 2 processes x 2 workers take over the 6 subtasks' key groups.
    let mut job = job;
    job.extend(["--restore".into(), "latest".into()]);
    let output = cluster_local(2, 2, &["--max-restarts", "0"], &job)
        .output()
        .expect("run on 2 processes");
    assert_success(&output, "the 2-process restore");
    let (last, parallelism) = latest_checkpoint(&checkpoints).expect("a final checkpoint");
    assert!(last > restored);
    assert_eq!(parallelism, 4);

    let expected = expected_output(&args);
    let got = published(&args.output);
    assert_eq!(got.len(), expected.len(), "records published");
    assert!(
        got == expected,
        "published records differ from a run without failures"
    );
}

fn stderr_of(args: &[&str]) -> String {
    let output = eddy().args(args).output().expect("run eddy");
    assert!(!output.status.success(), "{args:?} succeeded");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn bad_cluster_flags_and_missing_peers_are_clear_errors() {
    let work = tempfile::tempdir().expect("temp dir");
    let out = work.path().join("out").to_string_lossy().into_owned();
    let run = |extra: &[&str]| -> String {
        let mut args = vec!["run", "customer-totals", "--n", "10", "--output", &out];
        args.extend_from_slice(extra);
        stderr_of(&args)
    };
    let stderr = run(&["--processes", "3", "--addresses", "127.0.0.1:1,127.0.0.1:2"]);
    assert!(
        stderr.contains("lists 2 address(es) but --processes is 3"),
        "{stderr}"
    );
    let stderr = run(&[
        "--processes",
        "2",
        "--process-id",
        "5",
        "--addresses",
        "h:1,h:2",
    ]);
    assert!(
        stderr.contains("--process-id 5 is out of range"),
        "{stderr}"
    );
    let stderr = run(&["--processes", "2", "--addresses", "h:1,h"]);
    assert!(
        stderr.contains("bad address \"h\" for process 1"),
        "{stderr}"
    );

    // Process 0 of 2 waits for process 1, which never starts.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let addresses = format!("127.0.0.1:{port},127.0.0.1:1");
    let started = Instant::now();
    let stderr = run(&[
        "--processes",
        "2",
        "--addresses",
        &addresses,
        "--connect-timeout-ms",
        "500",
    ]);
    assert!(
        stderr.contains("peer process 1 at 127.0.0.1:1 never connected"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));

    let stderr = stderr_of(&[
        "cluster",
        "local",
        "-n",
        "2",
        "--",
        "run",
        "customer-totals",
        "--output",
        &out,
        "--parallelism",
        "4",
    ]);
    assert!(
        stderr.contains("--parallelism is set by `eddy cluster local`"),
        "{stderr}"
    );
}
