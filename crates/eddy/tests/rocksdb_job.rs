//! A job on the RocksDB state backend, selected through the public API and the standard job
//! flags (`--state-backend rocksdb --state-dir PATH`), gives the same output as on the heap.

// Helpers outside `#[test]` functions unwrap too: a failed step fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use clap::Parser;
use eddy::prelude::*;
use eddy::{JobFlags, StateBackendKind};

const CUSTOMERS: u64 = 500;
const EVENTS: u64 = 5_000;

/// Per customer: a counter cleared every third event, a list trimmed to the last three
/// amounts, a map from `transaction_id % 4` to a count whose entry is removed when it
/// reaches 2, and a running maximum. Emits what the state holds after each event.
#[derive(Clone)]
struct Churn;

/// `(customer, transaction_id, counter, recent amounts, map entries, map is empty, max)`.
type ChurnOut = (
    u64,
    u64,
    Option<u64>,
    Vec<u64>,
    Vec<(u64, u64)>,
    bool,
    Option<u64>,
);

impl KeyedProcessFunction for Churn {
    type Key = u64;
    type In = Transaction;
    type Out = ChurnOut;
    type State = (
        ValueState<u64>,
        ListState<u64>,
        MapState<u64, u64>,
        ReducingState<u64>,
    );

    fn open(&mut self, ctx: &mut OpenContext<'_, u64>) -> Result<Self::State> {
        Ok((
            ctx.value_state(&ValueStateDescriptor::new("counter"))?,
            ctx.list_state(&ListStateDescriptor::new("recent"))?,
            ctx.map_state(&MapStateDescriptor::new("buckets"))?,
            ctx.reducing_state(&ReducingStateDescriptor::new("max", |a: &u64, b: &u64| {
                *a.max(b)
            }))?,
        ))
    }

    fn process_element(
        &mut self,
        (counter, recent, buckets, max): &mut Self::State,
        tx: Transaction,
        _ctx: &mut Context<'_, u64>,
        out: &mut Collector<'_, ChurnOut>,
    ) -> Result<()> {
        let n = counter.value()?.unwrap_or(0) + 1;
        match n {
            3 => counter.clear()?,
            _ => counter.update(n)?,
        }
        recent.add(tx.amount)?;
        let list: Vec<u64> = recent.get()?.collect();
        if list.len() > 3 {
            recent.update(list[list.len() - 3..].to_vec())?;
        }
        let bucket = tx.transaction_id % 4;
        match buckets.get(&bucket)?.unwrap_or(0) + 1 {
            2 => buckets.remove(&bucket)?,
            c => buckets.put(bucket, c)?,
        }
        max.add(tx.amount)?;
        let mut entries: Vec<(u64, u64)> = buckets.entries()?.collect();
        entries.sort_unstable();
        out.collect((
            tx.customer_id,
            tx.transaction_id,
            counter.value()?,
            recent.get()?.collect(),
            entries,
            buckets.is_empty()?,
            max.get()?,
        ));
        Ok(())
    }
}

/// The job flags of a command line.
#[derive(Parser)]
struct Command {
    #[command(flatten)]
    job: JobFlags,
}

/// Runs `Churn` on the environment (one source subtask) and returns its sorted output.
fn run(env: &StreamExecutionEnvironment) -> Vec<ChurnOut> {
    let results = CollectSink::new();
    // One source subtask: each key's events then arrive in generation order, which the
    // output depends on, whatever the keyed parallelism.
    env.from_source(TransactionGenerator::new(CUSTOMERS, 7).source(EVENTS))
        .set_parallelism(1)
        .key_by(|tx: &Transaction| tx.customer_id)
        .process(Churn)
        .sink(results.clone());
    env.execute("churn").unwrap();
    let mut output = results.take();
    output.sort();
    output
}

#[test]
fn rocksdb_from_the_command_line_gives_the_same_output_as_heap() {
    // `eddy` has no `tempfile` dev-dependency: a directory of this test's own.
    let dir = std::env::temp_dir().join(format!("eddy-rocksdb-job-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dir_arg = dir.to_str().unwrap();
    let heap = Command::parse_from(["job", "--parallelism", "2"]).job;
    let rocksdb = Command::parse_from([
        "job",
        "--parallelism",
        "2",
        "--state-backend",
        "rocksdb",
        "--state-dir",
        dir_arg,
    ])
    .job;
    let rocksdb_env = StreamExecutionEnvironment::from_flags(&rocksdb).unwrap();
    assert_eq!(
        rocksdb_env.config().state_backend,
        StateBackendKind::RocksDb {
            working_dir: Some(dir.clone()),
            object_cache_entries: eddy_state::RocksDbConfig::default().object_cache_entries,
            heap_timers: false,
            full_checkpoints: false,
            memory_budget: eddy_state::RocksDbConfig::default().memory_budget,
            hash_memtables: false,
        }
    );
    let expected = run(&StreamExecutionEnvironment::from_flags(&heap).unwrap());
    assert_eq!(expected.len() as u64, EVENTS);
    assert_eq!(run(&rocksdb_env), expected);
    // The subtasks' instance directories are gone with the job.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    std::fs::remove_dir(&dir).unwrap();
}

#[test]
fn rocksdb_set_on_the_environment_gives_the_same_output_as_heap() {
    let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(3));
    let expected = run(&env);
    env.state_backend(StateBackendKind::rocksdb());
    assert_eq!(run(&env), expected);
}
