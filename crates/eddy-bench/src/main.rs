//! `eddy-bench`: runs one workload (W0–W6), prints one summary line in the Flink anchor's shape.
//!
//! ```text
//! cargo run --release -p eddy-bench -- w1 heap --n 20000000 --k 1000000 --parallelism 2
//! ```
//!
//! With `--measure-restore` it measures restore time instead: the workload runs once and ends
//! in a savepoint, which is then restored at each `--restore-parallelism` into each
//! `--restore-backends`:
//!
//! ```text
//! eddy-bench w3 heap --n 20000000 --k 1000000 --parallelism 2 --measure-restore \
//!     --restore-parallelism 2,4 --restore-backends heap,rocksdb --restore-runs 3
//! ```

use clap::Parser;
use eddy::{JobFlags, StreamExecutionEnvironment};
use eddy_bench::{
    build_savepoint, median, peak_rss_mb, restore_once, run, RestoreArgs, RestoreRun, Workload,
    WorkloadArgs,
};

/// mimalloc, tuned for checkpoints: see `eddy_alloc`.
#[global_allocator]
static GLOBAL: eddy_alloc::Allocator = eddy_alloc::Allocator;

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
    restore: RestoreArgs,
    #[command(flatten)]
    job: JobFlags,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    eddy_alloc::configure(cli.args.checkpoint_interval(&cli.job));
    let mut flags = cli.job.clone();
    flags.state_backend = cli.backend;
    if cli.restore.measure_restore {
        return measure_restore(&cli, &flags);
    }
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
        let ms = sorted(
            report
                .checkpoints
                .iter()
                .map(|c| c.duration.as_secs_f64() * 1000.0),
        );
        let mb = sorted(report.checkpoints.iter().map(|c| c.size as f64 / 1e6));
        let full_mb = sorted(report.checkpoints.iter().map(|c| c.full_size as f64 / 1e6));
        // ckpt_mb: what each checkpoint stored; full_mb: everything it refers to (they
        // differ for incremental RocksDB checkpoints).
        println!(
            "checkpoints={} ckpt_ms_min={:.1} ckpt_ms_median={:.1} ckpt_ms_max={:.1} ckpt_mb_min={:.1} ckpt_mb_median={:.1} ckpt_mb_max={:.1} full_mb_median={:.1}",
            ms.len(),
            ms[0],
            ms[ms.len() / 2],
            ms[ms.len() - 1],
            mb[0],
            mb[mb.len() / 2],
            mb[mb.len() - 1],
            full_mb[full_mb.len() / 2],
        );
    }
    Ok(())
}

/// `values`, in ascending order.
fn sorted(values: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    values
}

/// `--measure-restore`: one run ending in a savepoint, then timed restores of it; prints one
/// line per restore and a table of medians.
fn measure_restore(cli: &Cli, flags: &JobFlags) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (report, savepoint) = build_savepoint(cli.workload, &cli.args, flags, dir.path())?;
    let backend = format!("{:?}", cli.backend).to_lowercase();
    println!(
        "savepoint workload={:?} backend={backend} parallelism={} N={} K={} job_s={:.3} entries={} keyed_mb={:.1} max_parallelism={}",
        report.workload,
        savepoint.parallelism,
        report.events,
        report.customers,
        report.job_time.as_secs_f64(),
        savepoint.entries,
        savepoint.keyed_bytes as f64 / 1e6,
        savepoint.max_parallelism,
    );
    let mut runs: Vec<RestoreRun> = Vec::new();
    // Round-robin over the configurations, so that a slow phase of the machine spreads over
    // all of them.
    for _ in 0..cli.restore.restore_runs {
        for &into in &cli.restore.restore_backends {
            for &parallelism in &cli.restore.restore_parallelism {
                let run = restore_once(
                    cli.workload,
                    &cli.args,
                    flags,
                    &savepoint,
                    parallelism,
                    into,
                )?;
                println!(
                    "restore workload={:?} from_parallelism={} parallelism={} backend={} restore_s={:.3} job_s={:.3}",
                    report.workload,
                    savepoint.parallelism,
                    run.parallelism,
                    format!("{into:?}").to_lowercase(),
                    run.restore_time.as_secs_f64(),
                    run.job_time.as_secs_f64(),
                );
                runs.push(run);
            }
        }
    }
    println!();
    println!("| restore | into | runs | median restore_s | min | max |");
    println!("| --- | --- | ---: | ---: | ---: | ---: |");
    for &into in &cli.restore.restore_backends {
        for &parallelism in &cli.restore.restore_parallelism {
            let times: Vec<_> = runs
                .iter()
                .filter(|r| r.backend == into && r.parallelism == parallelism)
                .map(|r| r.restore_time)
                .collect();
            let (Some(mid), Some(min), Some(max)) =
                (median(&times), times.iter().min(), times.iter().max())
            else {
                continue;
            };
            println!(
                "| p={} -> p={parallelism} | {} | {} | {:.3} | {:.3} | {:.3} |",
                savepoint.parallelism,
                format!("{into:?}").to_lowercase(),
                times.len(),
                mid.as_secs_f64(),
                min.as_secs_f64(),
                max.as_secs_f64(),
            );
        }
    }
    Ok(())
}
