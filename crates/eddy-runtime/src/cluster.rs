//! Connecting the processes of a cluster job, with a deadline.
//!
//! Timely's own `Config::Cluster` connects with `initialize_networking`, whose connect loop
//! retries a missing peer forever (printing a line a second) and panics on a stray
//! connection. Eddy opens the sockets itself, speaking the same handshake (the connecting
//! process sends its index as a big-endian `u64`; lower ids accept, higher ids connect), fails
//! with [`ClusterError::PeerTimeout`] naming the missing peer, and then hands the connected
//! sockets to timely's `initialize_networking_from_sockets`.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eddy_core::ClusterError;
use timely::communication::allocator::zero_copy::initialize::initialize_networking_from_sockets;
use timely::communication::allocator::ProcessBuilder;
use timely::communication::{AllocatorBuilder, Hooks};

use crate::config::ClusterConfig;

/// How long a refused connect waits before it retries (peers start in any order).
const RETRY: Duration = Duration::from_millis(50);

/// Connects to every peer of `cluster` and builds this process's timely allocators: one per
/// local worker, plus the guard that keeps timely's network threads alive.
pub(crate) fn start_networking(
    cluster: &ClusterConfig,
    lost: Arc<AtomicBool>,
) -> Result<(Vec<AllocatorBuilder>, Box<dyn std::any::Any + Send>), ClusterError> {
    let sockets = connect(cluster)?;
    let threads = cluster.workers_per_process;
    let hooks = Hooks::default();
    // Typed (not serialized) channels between the workers of one process: only records that
    // cross a process boundary are serialized.
    let process_allocators =
        ProcessBuilder::new_typed_vector(threads, hooks.refill.clone(), hooks.spill.clone());
    let (builders, guard) = initialize_networking_from_sockets(
        process_allocators,
        sockets,
        cluster.process_id,
        threads,
        hooks,
    )
    .map_err(|e| ClusterError::Network {
        process_id: cluster.process_id,
        reason: e.to_string(),
    })?;
    let builders = builders.into_iter().map(AllocatorBuilder::Tcp).collect();
    let guard = NetworkGuard {
        guard: Some(Box::new(guard)),
        lost,
    };
    Ok((builders, Box::new(guard)))
}

/// Keeps timely's network threads alive; when dropped, joins them. Timely's own guard panics
/// if a network thread panicked (a peer's connection broke); this one records that instead,
/// so that the job ends with [`ClusterError::PeerLost`] rather than a panic in `main`.
struct NetworkGuard {
    guard: Option<Box<dyn std::any::Any + Send>>,
    lost: Arc<AtomicBool>,
}

impl Drop for NetworkGuard {
    fn drop(&mut self) {
        let guard = self.guard.take();
        if catch_unwind(AssertUnwindSafe(move || drop(guard))).is_err() {
            self.lost.store(true, Ordering::Release);
        }
    }
}

/// One socket per peer, in process order, `None` at this process's own position.
pub(crate) fn connect(cluster: &ClusterConfig) -> Result<Vec<Option<TcpStream>>, ClusterError> {
    cluster.validate()?;
    let me = cluster.process_id;
    let deadline = Instant::now() + cluster.connect_timeout;
    // Listen first, so that higher peers can connect (into the backlog) while this process is
    // still connecting to lower ones.
    let own = cluster.addresses[me].trim();
    let listener = if me + 1 < cluster.processes {
        let listener = bind(me, own, deadline)?;
        listener
            .set_nonblocking(true)
            .map_err(|source| ClusterError::Bind {
                process_id: me,
                address: own.to_string(),
                source,
            })?;
        Some(listener)
    } else {
        None
    };
    let mut sockets: Vec<Option<TcpStream>> = (0..cluster.processes).map(|_| None).collect();
    for (peer, slot) in sockets.iter_mut().enumerate().take(me) {
        *slot = Some(connect_to(cluster, peer, deadline)?);
    }
    if let Some(listener) = listener {
        accept_from_higher(cluster, &listener, &mut sockets, deadline)?;
    }
    Ok(sockets)
}

/// Listens on this process's own address, retrying until `deadline`: in Kubernetes a pod's
/// own DNS name may resolve only a moment after it starts, and a restarted process's port may
/// still be held by its predecessor for a moment.
fn bind(me: usize, address: &str, deadline: Instant) -> Result<TcpListener, ClusterError> {
    loop {
        match TcpListener::bind(address) {
            Ok(listener) => return Ok(listener),
            Err(source) if Instant::now() >= deadline => {
                return Err(ClusterError::Bind {
                    process_id: me,
                    address: address.to_string(),
                    source,
                })
            }
            Err(_) => std::thread::sleep(RETRY),
        }
    }
}

/// Connects to the lower `peer`, retrying until `deadline`, and introduces this process.
fn connect_to(
    cluster: &ClusterConfig,
    peer: usize,
    deadline: Instant,
) -> Result<TcpStream, ClusterError> {
    let me = cluster.process_id;
    let address = cluster.addresses[peer].trim();
    let mut last_error = String::from("no attempt yet");
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ClusterError::PeerTimeout {
                process_id: me,
                peer,
                address: address.to_string(),
                timeout: cluster.connect_timeout,
                detail: format!("last error: {last_error}"),
            });
        }
        // Resolved on every attempt: a peer's DNS name may appear only once it is scheduled.
        match address.to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(socket_address)) => {
                match TcpStream::connect_timeout(&socket_address, remaining.min(RETRY * 20)) {
                    Ok(mut stream) => {
                        let hello = stream
                            .set_nodelay(true)
                            .and_then(|()| stream.write_all(&(me as u64).to_be_bytes()));
                        match hello {
                            Ok(()) => return Ok(stream),
                            Err(e) => last_error = e.to_string(),
                        }
                    }
                    Err(e) => last_error = e.to_string(),
                }
            }
            Ok(None) => last_error = "the host name resolves to no address".into(),
            Err(e) => last_error = e.to_string(),
        }
        std::thread::sleep(RETRY.min(deadline.saturating_duration_since(Instant::now())));
    }
}

/// Accepts every higher peer, each introducing itself with its index, until `deadline`.
fn accept_from_higher(
    cluster: &ClusterConfig,
    listener: &TcpListener,
    sockets: &mut [Option<TcpStream>],
    deadline: Instant,
) -> Result<(), ClusterError> {
    let me = cluster.process_id;
    while let Some(missing) = (me + 1..cluster.processes).find(|p| sockets[*p].is_none()) {
        if Instant::now() >= deadline {
            return Err(ClusterError::PeerTimeout {
                process_id: me,
                peer: missing,
                address: cluster.addresses[missing].trim().to_string(),
                timeout: cluster.connect_timeout,
                detail: format!(
                    "this process listened on {} and the peer never connected",
                    cluster.addresses[me].trim()
                ),
            });
        }
        let (mut stream, remote) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(source) => {
                return Err(ClusterError::Bind {
                    process_id: me,
                    address: cluster.addresses[me].trim().to_string(),
                    source,
                })
            }
        };
        let handshake = |reason: String| ClusterError::Handshake {
            process_id: me,
            remote: remote.to_string(),
            reason,
        };
        let mut id = [0u8; 8];
        let read_limit = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100));
        stream
            .set_nonblocking(false)
            .and_then(|()| stream.set_read_timeout(Some(read_limit)))
            .and_then(|()| stream.read_exact(&mut id))
            // Timely's network threads read with blocking calls and no timeout.
            .and_then(|()| stream.set_read_timeout(None))
            .and_then(|()| stream.set_nodelay(true))
            .map_err(|e| handshake(format!("cannot read the peer's process id: {e}")))?;
        let peer = u64::from_be_bytes(id);
        let Some(peer) = usize::try_from(peer)
            .ok()
            .filter(|p| *p > me && *p < cluster.processes)
        else {
            return Err(handshake(format!(
                "it says it is process {peer}, but process {me} only accepts processes {}..{} \
                 (is another job using this address?)",
                me + 1,
                cluster.processes
            )));
        };
        if sockets[peer].is_some() {
            return Err(handshake(format!(
                "process {peer} connected twice: are two processes running with --process-id \
                 {peer}?"
            )));
        }
        sockets[peer] = Some(stream);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(0)
    }

    fn config(process_id: usize, addresses: &[String], timeout_ms: u64) -> ClusterConfig {
        ClusterConfig {
            processes: addresses.len(),
            process_id,
            workers_per_process: 1,
            addresses: addresses.to_vec(),
            connect_timeout: Duration::from_millis(timeout_ms),
        }
    }

    #[test]
    fn three_processes_connect_in_any_order() {
        let addresses: Vec<String> = (0..3)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let handles: Vec<_> = [2usize, 0, 1]
            .into_iter()
            .map(|id| {
                let config = config(id, &addresses, 10_000);
                std::thread::spawn(move || {
                    connect(&config).map(|s| s.iter().map(Option::is_some).collect::<Vec<_>>())
                })
            })
            .collect();
        let mut results: Vec<_> = handles.into_iter().map(|h| h.join().ok()).collect();
        results.rotate_left(1); // back into process order 0, 1, 2
        assert_eq!(
            results
                .into_iter()
                .map(|r| r.and_then(|r| r.ok()))
                .collect::<Vec<_>>(),
            vec![
                Some(vec![false, true, true]),
                Some(vec![true, false, true]),
                Some(vec![true, true, false]),
            ]
        );
    }

    #[test]
    fn an_address_this_process_cannot_listen_on_is_named() {
        // 192.0.2.0/24 is TEST-NET-1: never an address of this machine.
        let addresses = vec!["192.0.2.1:2101".to_string(), "127.0.0.1:9".to_string()];
        let error = connect(&config(0, &addresses, 200))
            .err()
            .map(|e| e.to_string());
        assert!(
            error
                .as_deref()
                .is_some_and(|e| e.contains("process 0 cannot listen on 192.0.2.1:2101")),
            "{error:?}"
        );
    }

    #[test]
    fn two_processes_with_the_same_id_are_refused() {
        let addresses: Vec<String> = (0..3)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let process_0 = config(0, &addresses, 5_000);
        let waiting = std::thread::spawn(move || connect(&process_0).err().map(|e| e.to_string()));
        // Two processes both say they are process 1 (timely's handshake: a big-endian u64).
        let mut impostors = Vec::new();
        for _ in 0..2 {
            let deadline = Instant::now() + Duration::from_secs(5);
            let stream = loop {
                match TcpStream::connect(addresses[0].as_str()) {
                    Ok(stream) => break stream,
                    Err(e) if Instant::now() > deadline => panic!("cannot connect: {e}"),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            };
            let mut stream = stream;
            assert!(stream.write_all(&1u64.to_be_bytes()).is_ok());
            impostors.push(stream);
        }
        let error = waiting.join().ok().flatten();
        assert!(
            error
                .as_deref()
                .is_some_and(|e| e.contains("process 1 connected twice")),
            "{error:?}"
        );
    }

    #[test]
    fn a_peer_that_never_connects_is_named() {
        let addresses: Vec<String> = (0..2)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        // Process 0 waits for process 1, which never starts.
        let error = connect(&config(0, &addresses, 300))
            .err()
            .map(|e| e.to_string());
        assert!(
            error
                .as_deref()
                .is_some_and(|e| e.contains("peer process 1")
                    && e.contains(&addresses[1])
                    && e.contains("never connected")),
            "{error:?}"
        );
        // Process 1 cannot reach process 0, which never starts.
        let error = connect(&config(1, &addresses, 300))
            .err()
            .map(|e| e.to_string());
        assert!(
            error
                .as_deref()
                .is_some_and(|e| e.contains("peer process 0") && e.contains(&addresses[0])),
            "{error:?}"
        );
    }
}
