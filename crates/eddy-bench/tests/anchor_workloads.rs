//! The benchmark workloads produce the anchor's results, not only its speed.

use eddy::{JobConfig, StreamExecutionEnvironment};
use eddy_bench::{run, Workload, WorkloadArgs};

fn args(events: u64, customers: u64) -> WorkloadArgs {
    WorkloadArgs {
        events,
        customers,
        seed: 42,
        emit_every: 10,
        checkpoint_ms: 0,
        sink_rate: None,
    }
}

fn env(parallelism: usize) -> StreamExecutionEnvironment {
    StreamExecutionEnvironment::new(JobConfig::with_parallelism(parallelism))
}

/// Flink's anchor at parallelism 1 emits exactly N for W1: one source emits increasing
/// timestamps, so every event is the newest of its customer.
#[test]
fn w1_at_parallelism_1_emits_exactly_20_million_like_flink() {
    let report = run(Workload::W1, &args(20_000_000, 1_000_000), &env(1)).unwrap();
    assert_eq!(report.processed, 20_000_000);
    assert_eq!(report.emitted, 20_000_000);
    // Every transaction id reaches the sink once: sum of 0..N.
    assert_eq!(report.checksum, 19_999_999 * 20_000_000 / 2);
}

#[test]
fn w0_forwards_every_event_once_at_any_parallelism() {
    for parallelism in [1, 2, 3] {
        let report = run(Workload::W0, &args(100_000, 1_000), &env(parallelism)).unwrap();
        assert_eq!(report.emitted, 100_000);
        assert_eq!(report.checksum, 99_999 * 100_000 / 2);
    }
}

/// At parallelism 1 the emitted sums of W2 and W3 are deterministic: compare them with a plain
/// model over the same events. (At parallelism 2 the interleaving of the two source subtasks
/// changes which partial sums are emitted, but not how many.)
#[test]
fn w2_and_w3_match_a_plain_model_at_parallelism_1() {
    use eddy::connectors::{Generator, TransactionGenerator};
    use std::collections::HashMap;
    let (n, k) = (200_000u64, 5_000u64);
    let generator = TransactionGenerator::new(k, 42);
    let mut lists: HashMap<u64, u64> = HashMap::new();
    let mut maps: HashMap<(u64, u64), u64> = HashMap::new();
    let (mut w2_sum, mut w3_sum, mut emitted) = (0u64, 0u64, 0u64);
    for i in 0..n {
        let tx = generator.generate(i);
        let list_total = lists.entry(tx.customer_id).or_default();
        *list_total += tx.amount;
        let map_value = maps
            .entry((tx.customer_id, tx.transaction_id % 100))
            .or_default();
        *map_value += tx.amount;
        if tx.transaction_id % 10 == 0 {
            w2_sum = w2_sum.wrapping_add(*list_total);
            w3_sum = w3_sum.wrapping_add(*map_value);
            emitted += 1;
        }
    }
    let w2 = run(Workload::W2, &args(n, k), &env(1)).unwrap();
    assert_eq!((w2.emitted, w2.checksum), (emitted, w2_sum));
    let w3 = run(Workload::W3, &args(n, k), &env(1)).unwrap();
    assert_eq!((w3.emitted, w3.checksum), (emitted, w3_sum));
    let w3_p2 = run(Workload::W3, &args(n, k), &env(2)).unwrap();
    assert_eq!(w3_p2.emitted, emitted);
}

/// With checkpoints on, W1 still processes every event, and its last checkpoint (the final
/// one) was taken.
#[test]
fn w1_with_checkpoints_processes_everything() {
    let mut with_checkpoints = args(200_000, 10_000);
    with_checkpoints.checkpoint_ms = 20;
    let report = run(Workload::W1, &with_checkpoints, &env(2)).unwrap();
    assert_eq!(report.processed, 200_000);
    assert!(!report.checkpoints.is_empty());
}
