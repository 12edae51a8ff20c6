//! `eddy`: runs Eddy's built-in jobs with the standard job flags, and inspects checkpoints.
//!
//! ```text
//! eddy run latest-transaction --parallelism 2
//! eddy run w1 --n 20000000 --k 1000000 --parallelism 2
//! eddy run w4 --n 20000000 --k 1000000 --parallelism 2
//! eddy jobs
//! eddy cluster local -n 3 --workers-per-process 2 -- run customer-totals --output out \
//!     --checkpoint-dir /tmp/chk --checkpoint-interval-ms 200
//! eddy run w1 --processes 2 --process-id 0 --addresses host0:2101,host1:2101
//! eddy checkpoints ls /var/eddy/checkpoints
//! eddy checkpoints show s3://bucket/jobs/fraud/chk-0000000042
//! eddy checkpoints show /var/eddy/checkpoints savepoint-before-upgrade
//! ```
//!
//! Every job accepts the same job flags (`--parallelism`, `--max-parallelism`,
//! `--state-backend`, ...) as any program built on Eddy, through [`eddy::JobFlags`].

mod checkpoints;
mod cluster;

use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use eddy::checkpoint::{request_savepoint, request_stop_with_savepoint};
use eddy::{JobFlags, StreamExecutionEnvironment};
use eddy_bench::{peak_rss_mb, Workload, WorkloadArgs};
use eddy_checkpoint::Checkpoints;
use eddy_examples::customer_totals::{self, CustomerTotalsArgs};
use eddy_examples::latest_transaction::{self, LatestTransactionArgs};

/// mimalloc, tuned for checkpoints: see `eddy_alloc`.
#[global_allocator]
static GLOBAL: eddy_alloc::Allocator = eddy_alloc::Allocator;

/// Eddy: stream processing with Flink-grade managed keyed state.
#[derive(Parser, Debug)]
#[command(name = "eddy", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs a built-in job to completion, embedded in this process.
    Run {
        /// Boxed: the job flags make this variant much larger than the others.
        #[command(subcommand)]
        job: Box<Job>,
    },
    /// Lists the built-in jobs.
    Jobs,
    /// Runs a built-in job as several processes (timely's cluster mode).
    Cluster {
        #[command(subcommand)]
        command: cluster::ClusterCommand,
    },
    /// Inspects the checkpoints and savepoints of a checkpoint directory.
    Checkpoints {
        #[command(subcommand)]
        command: checkpoints::CheckpointsCommand,
    },
    /// Asks the running job that checkpoints into CHECKPOINT_DIR for a savepoint: its next
    /// completed checkpoint is also written as savepoint-NAME (kept until deleted by hand).
    Savepoint {
        /// The job's --checkpoint-dir (path or URL).
        checkpoint_dir: String,
        /// The savepoint's name (letters, digits, `-`, `_`, `.`).
        name: String,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout_s: u64,
        /// Stop the job once the savepoint is complete (Flink's `stop --savepointPath`):
        /// nothing after the savepoint is published, and the job exits successfully.
        #[arg(long)]
        stop: bool,
    },
}

#[derive(Subcommand, Debug)]
enum Job {
    /// The Flink Cookbook's latest transaction per customer (ValueState).
    LatestTransaction(LatestTransactionJob),
    /// Benchmark W0: stateless keyed forwarding.
    W0(WorkloadJob),
    /// Benchmark W1: ValueState, one read and one write per event.
    W1(WorkloadJob),
    /// Benchmark W2: ListState append, periodic full read.
    W2(WorkloadJob),
    /// Benchmark W3: MapState get and put per event.
    W3(WorkloadJob),
    /// Benchmark W4: W1 with a state TTL of one hour (the cost of TTL).
    W4(WorkloadJob),
    /// Running totals per customer into an exactly-once file sink (the crash-test job).
    CustomerTotals(CustomerTotalsJob),
}

impl Job {
    /// How often the job checkpoints, if it does.
    fn checkpoint_interval(&self) -> Option<Duration> {
        match self {
            Job::LatestTransaction(job) => job.job.checkpoint_interval(),
            Job::CustomerTotals(job) => job.job.checkpoint_interval(),
            Job::W0(job) | Job::W1(job) | Job::W2(job) | Job::W3(job) | Job::W4(job) => {
                job.args.checkpoint_interval(&job.job)
            }
        }
    }
}

#[derive(Args, Debug)]
struct CustomerTotalsJob {
    #[command(flatten)]
    args: CustomerTotalsArgs,
    #[command(flatten)]
    job: JobFlags,
}

#[derive(Args, Debug)]
struct LatestTransactionJob {
    #[command(flatten)]
    args: LatestTransactionArgs,
    #[command(flatten)]
    job: JobFlags,
}

#[derive(Args, Debug)]
struct WorkloadJob {
    #[command(flatten)]
    args: WorkloadArgs,
    #[command(flatten)]
    job: JobFlags,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Jobs => {
            println!("latest-transaction  the Cookbook's latest transaction per customer");
            println!(
                "w0 | w1 | w2 | w3 | w4   the keyed-state benchmark workloads (see BENCHMARKS.md)"
            );
            println!("customer-totals     running totals per customer, exactly-once file output");
            Ok(())
        }
        Command::Run { job } => {
            eddy_alloc::configure(job.checkpoint_interval());
            cluster::exit_with_supervisor();
            run(*job)
        }
        Command::Checkpoints { command } => checkpoints::run(command),
        Command::Cluster { command } => cluster::run(command),
        Command::Savepoint {
            checkpoint_dir,
            name,
            timeout_s,
            stop,
        } => savepoint(&checkpoint_dir, &name, stop, Duration::from_secs(timeout_s)),
    }
}

/// Requests a savepoint (and with `stop`, a stop after it) from the job checkpointing into
/// `dir` and waits for it.
fn savepoint(dir: &str, name: &str, stop: bool, timeout: Duration) -> anyhow::Result<()> {
    let checkpoints = Checkpoints::open_existing(dir)?;
    if stop {
        request_stop_with_savepoint(&checkpoints, name)?;
    } else {
        request_savepoint(&checkpoints, name)?;
    }
    let started = Instant::now();
    let wanted = format!("savepoint-{name}");
    loop {
        if let Ok(point) = checkpoints.resolve(&wanted) {
            println!(
                "savepoint {} written from checkpoint {}",
                point.location(),
                point.metadata.checkpoint_id
            );
            return Ok(());
        }
        if started.elapsed() > timeout {
            anyhow::bail!(
                "no savepoint after {timeout:?}: is a job checkpointing into {dir}? (the request \
                 stays until a job completes a checkpoint there)"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn run(job: Job) -> anyhow::Result<()> {
    let (workload, job) = match job {
        Job::LatestTransaction(job) => return run_latest_transaction(&job),
        Job::CustomerTotals(job) => return run_customer_totals(&job),
        Job::W0(job) => (Workload::W0, job),
        Job::W1(job) => (Workload::W1, job),
        Job::W2(job) => (Workload::W2, job),
        Job::W3(job) => (Workload::W3, job),
        Job::W4(job) => (Workload::W4, job),
    };
    let env = StreamExecutionEnvironment::from_flags(&job.job)?;
    let report = eddy_bench::run(workload, &job.args, &env)?;
    println!(
        "{:?}: {} events in {:.2} s = {:.0} events/s at parallelism {}; emitted {}, checksum {}, peak RSS {} MB",
        report.workload,
        report.events,
        report.job_time.as_secs_f64(),
        report.events_per_second(),
        report.parallelism,
        report.emitted,
        report.checksum,
        peak_rss_mb().map_or_else(|| "?".into(), |mb| mb.to_string()),
    );
    if let Some((process, processes)) = report.cluster {
        println!(
            "  (process {process} of {processes}: processed {} of the {} events here; emitted and \
             checksum are this process's share)",
            report.processed, report.events
        );
    }
    Ok(())
}

fn run_latest_transaction(job: &LatestTransactionJob) -> anyhow::Result<()> {
    let env = StreamExecutionEnvironment::from_flags(&job.job)?;
    let summary = latest_transaction::run(&env, &job.args)?;
    println!(
        "latest-transaction: {} transactions from {} customers in {:.2} s = {:.0} events/s at parallelism {}; {} new latest transactions emitted",
        summary.events,
        job.args.customers,
        summary.duration.as_secs_f64(),
        summary.events_per_second(),
        summary.parallelism,
        summary.emitted,
    );
    Ok(())
}

fn run_customer_totals(job: &CustomerTotalsJob) -> anyhow::Result<()> {
    let env = StreamExecutionEnvironment::from_flags(&job.job)?;
    let result = customer_totals::run(&env, &job.args)?;
    let durations: Vec<f64> = result
        .checkpoints
        .iter()
        .map(|c| c.duration.as_secs_f64() * 1000.0)
        .collect();
    println!(
        "customer-totals: {} transactions in {:.2} s at parallelism {}; {} checkpoints{}; {} restarts",
        result
            .operator("customer-totals")
            .map_or(0, |o| o.records_in),
        result.duration.as_secs_f64(),
        result.parallelism,
        result.checkpoints.len(),
        median(&durations).map_or_else(String::new, |m| format!(" (median {m:.1} ms)")),
        result.restarts,
    );
    Ok(())
}

/// The median of `values`, if any.
fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied()
}
