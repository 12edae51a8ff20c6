//! `eddy cluster local`: runs one job as N `eddy run` processes on this machine and supervises
//! them, the local stand-in for what systemd or Kubernetes does on several machines.
//!
//! Timely has no partial failure: when one process dies the others fail on the lost
//! connection. So the supervisor treats the processes as one unit: if any exits with a
//! failure it kills the rest and starts all of them again from the latest completed
//! checkpoint (`--restore latest`), with fresh ports, up to `--max-restarts` times.

use std::net::TcpListener;
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use eddy_checkpoint::Checkpoints;

/// `eddy cluster ...`
#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Runs a built-in job as N processes on localhost and restarts them all from the latest
    /// checkpoint if any fails. Example:
    /// `eddy cluster local -n 3 --workers-per-process 2 -- run customer-totals --output out
    /// --checkpoint-dir chk --checkpoint-interval-ms 200`
    Local(LocalArgs),
}

/// The arguments of `eddy cluster local`.
#[derive(Args, Debug)]
pub struct LocalArgs {
    /// Number of processes.
    #[arg(short = 'n', long = "processes", value_parser = clap::value_parser!(u64).range(1..=64))]
    processes: u64,
    /// Worker threads per process.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=256))]
    workers_per_process: u64,
    /// Restarts of all processes after a failure before giving up.
    #[arg(long, default_value_t = 3)]
    max_restarts: u32,
    /// Wait this long before a restart, in ms.
    #[arg(long, default_value_t = 500)]
    restart_delay_ms: u64,
    /// The job and its flags, as after `eddy run` (a leading `run` is optional), e.g.
    /// `-- customer-totals --output out --checkpoint-dir chk --checkpoint-interval-ms 200`.
    #[arg(last = true, required = true, value_name = "RUN_ARGS")]
    run_args: Vec<String>,
}

/// Runs `command`.
pub fn run(command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Local(args) => local(&args),
    }
}

/// Flags the supervisor sets itself; given in the run arguments they would contradict it.
const OWN_FLAGS: &[&str] = &[
    "--processes",
    "--process-id",
    "--workers-per-process",
    "--addresses",
    "--hostfile",
    "--parallelism",
    "-p",
    "--restart-attempts",
];

fn local(args: &LocalArgs) -> anyhow::Result<()> {
    let mut run_args = args.run_args.clone();
    if run_args.first().is_some_and(|a| a == "run") {
        run_args.remove(0);
    }
    if let Some(flag) = run_args.iter().find(|a| {
        OWN_FLAGS
            .iter()
            .any(|own| *a == own || a.starts_with(&format!("{own}=")))
    }) {
        bail!(
            "{flag} is set by `eddy cluster local` (use -n and --workers-per-process); remove it \
             from the run arguments"
        );
    }
    let checkpoint_dir = flag_value(&run_args, "--checkpoint-dir");
    let processes = args.processes as usize;
    let exe = std::env::current_exe().context("cannot find the eddy executable")?;
    let mut restarts = 0;
    let mut restore: Option<String> = None;
    loop {
        let attempt = restarts + 1;
        let addresses = free_addresses(processes)?;
        let mut children = Vec::with_capacity(processes);
        for process in 0..processes {
            let mut command = Command::new(&exe);
            command.env(SUPERVISOR_PID, std::process::id().to_string());
            command
                .arg("run")
                .args(with_restore(&run_args, restore.as_deref()));
            command
                .args(["--processes", &processes.to_string()])
                .args([
                    "--workers-per-process",
                    &args.workers_per_process.to_string(),
                ])
                .args(["--process-id", &process.to_string()])
                .args(["--addresses", &addresses.join(",")]);
            let child = match command.spawn() {
                Ok(child) => child,
                Err(e) => {
                    kill_all(&mut children);
                    return Err(e).context("cannot start an eddy process");
                }
            };
            eprintln!(
                "eddy cluster: attempt {attempt}: process {process} of {processes} is pid {} \
                 at {}",
                child.id(),
                addresses[process]
            );
            children.push(Some(child));
        }
        match supervise(&mut children)? {
            None => {
                eprintln!("eddy cluster: all {processes} processes finished");
                return Ok(());
            }
            Some((process, status)) => {
                kill_all(&mut children);
                if restarts >= args.max_restarts {
                    bail!(
                        "process {process} failed ({status}) and the {} restart(s) allowed \
                         (--max-restarts) are used up",
                        args.max_restarts
                    );
                }
                restarts += 1;
                restore = latest_checkpoint(checkpoint_dir.as_deref())?;
                eprintln!(
                    "eddy cluster: process {process} failed ({status}); stopped the others; \
                     restart {restarts} of {} {} in {} ms",
                    args.max_restarts,
                    restore.as_deref().map_or_else(
                        || "from the beginning (no completed checkpoint)".to_string(),
                        |c| format!("from checkpoint {c}")
                    ),
                    args.restart_delay_ms
                );
                std::thread::sleep(Duration::from_millis(args.restart_delay_ms));
            }
        }
    }
}

/// The environment variable through which `eddy cluster local` tells its processes its pid.
const SUPERVISOR_PID: &str = "EDDY_SUPERVISOR_PID";

/// In a process started by `eddy cluster local`: exits as soon as the supervisor is gone (its
/// parent changes), so that killing the supervisor never leaves its processes running on.
/// Polling the parent pid needs no `unsafe` (unlike `PR_SET_PDEATHSIG`).
pub fn exit_with_supervisor() {
    let Some(supervisor) = std::env::var(SUPERVISOR_PID)
        .ok()
        .and_then(|pid| pid.parse::<u32>().ok())
    else {
        return;
    };
    let spawned = std::thread::Builder::new()
        .name("eddy-supervisor-watch".into())
        .spawn(move || loop {
            if std::os::unix::process::parent_id() != supervisor {
                eprintln!("eddy: the supervisor (pid {supervisor}) is gone; exiting");
                std::process::exit(1);
            }
            std::thread::sleep(Duration::from_millis(100));
        });
    if let Err(e) = spawned {
        eprintln!("eddy: warning: cannot watch the supervisor: {e}");
    }
}

/// Waits until every process has exited successfully (`None`) or one has failed (its index
/// and exit status).
fn supervise(children: &mut [Option<Child>]) -> anyhow::Result<Option<(usize, ExitStatus)>> {
    loop {
        let mut running = 0;
        for (process, slot) in children.iter_mut().enumerate() {
            let Some(child) = slot.as_mut() else { continue };
            match child.try_wait().context("cannot poll an eddy process")? {
                Some(status) if status.success() => *slot = None,
                Some(status) => {
                    *slot = None;
                    return Ok(Some((process, status)));
                }
                None => running += 1,
            }
        }
        if running == 0 {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGKILLs every process still running and reaps it: survivors of a failed cluster must not
/// write anything more to the checkpoint location before the restart.
fn kill_all(children: &mut [Option<Child>]) {
    for child in children.iter_mut().filter_map(Option::take) {
        let mut child = child;
        // Already exited: nothing to kill; the wait below reaps it either way.
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// `count` addresses on 127.0.0.1 with ports that were free a moment ago.
fn free_addresses(count: usize) -> anyhow::Result<Vec<String>> {
    // Held together so that the OS hands out distinct ports, then released for the children.
    let listeners = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("cannot find free ports on 127.0.0.1")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.to_string()))
        .collect()
}

/// The value of `--flag VALUE` or `--flag=VALUE` in `args`.
fn flag_value(args: &[String], flag: &str) -> Option<String> {
    let prefix = format!("{flag}=");
    args.iter().enumerate().find_map(|(i, a)| {
        if a == flag {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix(&prefix).map(str::to_string)
        }
    })
}

/// `args` with `--restore` set to `restore` (replacing any given), or unchanged for `None`.
fn with_restore(args: &[String], restore: Option<&str>) -> Vec<String> {
    let Some(restore) = restore else {
        return args.to_vec();
    };
    let mut out = Vec::with_capacity(args.len() + 2);
    let mut skip_value = false;
    for a in args {
        if skip_value {
            skip_value = false;
            continue;
        }
        if a == "--restore" {
            skip_value = true;
            continue;
        }
        if a.starts_with("--restore=") {
            continue;
        }
        out.push(a.clone());
    }
    out.extend(["--restore".to_string(), restore.to_string()]);
    out
}

/// The id of the latest completed checkpoint in `dir`, if any.
fn latest_checkpoint(dir: Option<&str>) -> anyhow::Result<Option<String>> {
    let Some(dir) = dir else { return Ok(None) };
    let Ok(checkpoints) = Checkpoints::open_existing(dir) else {
        return Ok(None);
    };
    let latest = checkpoints
        .latest()
        .with_context(|| format!("cannot read the checkpoints in {dir}"))?;
    Ok(latest.map(|info| info.metadata.checkpoint_id.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn restore_replaces_any_given_restore() {
        let args = strings(&["w1", "--restore", "3", "--checkpoint-dir=/c", "--restore=x"]);
        assert_eq!(
            with_restore(&args, Some("7")),
            strings(&["w1", "--checkpoint-dir=/c", "--restore", "7"])
        );
        assert_eq!(with_restore(&args, None), args);
        assert_eq!(flag_value(&args, "--checkpoint-dir").as_deref(), Some("/c"));
        assert_eq!(
            flag_value(&strings(&["--checkpoint-dir", "d"]), "--checkpoint-dir").as_deref(),
            Some("d")
        );
    }

    #[test]
    fn free_addresses_are_distinct() {
        let addresses = free_addresses(4).ok().unwrap_or_default();
        assert_eq!(addresses.len(), 4);
        let unique: std::collections::BTreeSet<_> = addresses.iter().collect();
        assert_eq!(unique.len(), 4);
    }
}
