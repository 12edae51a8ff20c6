//! Runs the session-window recipe on generated clicks and prints what it found.
//!
//! ```text
//! cargo run --release -p eddy-examples --bin session_windows -- --parallelism 2
//! ```

use clap::Parser;
use eddy::{JobFlags, StreamExecutionEnvironment};
use eddy_examples::session_windows::{run, SessionWindowsArgs};

/// mimalloc, tuned for checkpoints: see `eddy_alloc`.
#[global_allocator]
static GLOBAL: eddy_alloc::Allocator = eddy_alloc::Allocator;

/// User sessions from generated clicks.
#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    args: SessionWindowsArgs,
    #[command(flatten)]
    job: JobFlags,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    eddy_alloc::configure(cli.job.checkpoint_interval());
    let env = StreamExecutionEnvironment::from_flags(&cli.job)?;
    let summary = run(&env, &cli.args)?;
    println!(
        "session-windows: {} clicks, {} sessions, {} late clicks, {:.2} s ({:.0} clicks/s)",
        summary.clicks,
        summary.sessions,
        summary.late,
        summary.duration.as_secs_f64(),
        summary.clicks as f64 / summary.duration.as_secs_f64().max(f64::MIN_POSITIVE)
    );
    Ok(())
}
