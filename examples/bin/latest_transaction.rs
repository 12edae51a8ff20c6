//! Runs the latest-transaction recipe on generated events and prints events/s.
//!
//! ```text
//! cargo run --release -p eddy-examples --bin latest_transaction -- --parallelism 2
//! ```

use clap::Parser;
use eddy::{JobFlags, StreamExecutionEnvironment};
use eddy_examples::latest_transaction::{run, LatestTransactionArgs};

/// mimalloc, tuned for checkpoints: see `eddy_alloc`.
#[global_allocator]
static GLOBAL: eddy_alloc::Allocator = eddy_alloc::Allocator;

/// The latest transaction per customer, on generated transactions.
#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    args: LatestTransactionArgs,
    #[command(flatten)]
    job: JobFlags,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    eddy_alloc::configure(cli.job.checkpoint_interval());
    let env = StreamExecutionEnvironment::from_flags(&cli.job)?;
    let summary = run(&env, &cli.args)?;
    println!(
        "latest-transaction: {} events, {} emitted, {:.2} s, {:.0} events/s at parallelism {}",
        summary.events,
        summary.emitted,
        summary.duration.as_secs_f64(),
        summary.events_per_second(),
        summary.parallelism
    );
    Ok(())
}
