//! `eddy-bench`: runs one workload (W0–W6), prints one summary line in the Flink anchor's shape.
//!
//! ```text
//! cargo run --release -p eddy-bench -- w1 heap --n 20000000 --k 1000000 --parallelism 2
//! ```

use clap::Parser;
use eddy::{JobFlags, StreamExecutionEnvironment};
use eddy_bench::{peak_rss_mb, run, Workload, WorkloadArgs};

/// mimalloc: the heap backend allocates per key (lists, small maps); glibc's malloc made W2
/// about a quarter slower in our measurements (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Runs one keyed-state workload of the Flink anchor on Eddy and prints one summary line.
#[derive(Parser, Debug)]
#[command(name = "eddy-bench")]
struct Cli {
    /// The workload.
    #[arg(value_enum)]
    workload: Workload,
    /// The state backend (the same values as --state-backend).
    #[arg(value_enum)]
    backend: eddy::BackendFlag,
    #[command(flatten)]
    args: WorkloadArgs,
    #[command(flatten)]
    job: JobFlags,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut flags = cli.job.clone();
    flags.state_backend = cli.backend;
    let env = StreamExecutionEnvironment::from_flags(&flags)?;
    let report = run(cli.workload, &cli.args, &env)?;
    let backend = format!("{:?}", cli.backend).to_lowercase();
    println!(
        "workload={:?} backend={backend} parallelism={} N={} K={} job_s={:.3} eps_job={:.0} emitted={} processed={} checksum={} peak_rss_mb={}",
        report.workload,
        report.parallelism,
        report.events,
        report.customers,
        report.job_time.as_secs_f64(),
        report.events_per_second(),
        report.emitted,
        report.processed,
        report.checksum,
        peak_rss_mb().map_or_else(|| "?".to_string(), |mb| mb.to_string()),
    );
    if !report.checkpoints.is_empty() {
        let mut ms: Vec<f64> = report
            .checkpoints
            .iter()
            .map(|c| c.duration.as_secs_f64() * 1000.0)
            .collect();
        ms.sort_by(f64::total_cmp);
        let mut mb: Vec<f64> = report
            .checkpoints
            .iter()
            .map(|c| c.size as f64 / 1e6)
            .collect();
        mb.sort_by(f64::total_cmp);
        println!(
            "checkpoints={} ckpt_ms_min={:.1} ckpt_ms_median={:.1} ckpt_ms_max={:.1} ckpt_mb_min={:.1} ckpt_mb_median={:.1} ckpt_mb_max={:.1}",
            ms.len(),
            ms[0],
            ms[ms.len() / 2],
            ms[ms.len() - 1],
            mb[0],
            mb[mb.len() / 2],
            mb[mb.len() - 1],
        );
    }
    Ok(())
}
