//! Keyed state inside whole jobs: the function lifecycle, one state value per key, results
//! independent of the parallelism, and the W1–W3 recipes against plain-Rust models computed
//! from the same generated events.

// Helpers outside `#[test]` functions unwrap too: a failed step fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use eddy::connectors::Generator;
use eddy::prelude::*;

const CUSTOMERS: u64 = 1_000;
const SEED: u64 = 42;

/// The first `n` transactions of the anchor stream, computed without Eddy.
fn transactions(n: u64) -> Vec<Transaction> {
    let generator = TransactionGenerator::new(CUSTOMERS, SEED);
    (0..n).map(|i| generator.generate(i)).collect()
}

/// Events per customer, computed without Eddy.
fn events_per_customer(events: &[Transaction]) -> HashMap<u64, u64> {
    let mut counts = HashMap::new();
    for tx in events {
        *counts.entry(tx.customer_id).or_insert(0) += 1;
    }
    counts
}

fn transaction_source(n: u64) -> GeneratorSource<TransactionGenerator> {
    TransactionGenerator::new(CUSTOMERS, SEED).source(n)
}

// ---------------------------------------------------------------------------------------------
// 1. Lifecycle: open() once per subtask, one instance serving many keys, one value per key.
// ---------------------------------------------------------------------------------------------

/// What `open()` saw: (subtask index, parallelism, operator name).
type Opened = Arc<Mutex<Vec<(usize, usize, String)>>>;

/// Counts events per key in a `ValueState<u64>` and emits `(subtask, key, count)`.
#[derive(Clone)]
struct CountWithLifecycle {
    opens: Arc<AtomicUsize>,
    opened: Opened,
}

impl KeyedProcessFunction for CountWithLifecycle {
    type Key = u64;
    type In = Transaction;
    type Out = (usize, u64, u64);
    type State = ValueState<u64>;

    fn open(&mut self, ctx: &mut OpenContext<'_, u64>) -> Result<ValueState<u64>> {
        self.opens.fetch_add(1, Ordering::SeqCst);
        self.opened.lock().unwrap().push((
            ctx.subtask_index(),
            ctx.parallelism(),
            ctx.operator_name().to_string(),
        ));
        ctx.value_state(&ValueStateDescriptor::new("count"))
    }

    fn process_element(
        &mut self,
        count: &mut ValueState<u64>,
        _tx: Transaction,
        ctx: &mut Context<'_, u64>,
        out: &mut Collector<'_, (usize, u64, u64)>,
    ) -> Result<()> {
        let n = count.value()?.unwrap_or(0) + 1;
        count.update(n)?;
        out.collect((ctx.subtask_index(), *ctx.current_key(), n));
        Ok(())
    }
}

fn check_lifecycle_at(parallelism: usize) {
    const N: u64 = 50_000;
    let opens = Arc::new(AtomicUsize::new(0));
    let opened: Opened = Arc::default();
    let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(parallelism));
    let results = CollectSink::new();
    env.from_source(transaction_source(N))
        .key_by(|tx: &Transaction| tx.customer_id)
        .process_named(
            "count",
            CountWithLifecycle {
                opens: Arc::clone(&opens),
                opened: Arc::clone(&opened),
            },
        )
        .sink(results.clone());
    let outcome = env.execute("lifecycle").unwrap();

    // open() exactly once per subtask, each with its own index and the operator's name.
    assert_eq!(opens.load(Ordering::SeqCst), parallelism);
    let mut opened = opened.lock().unwrap().clone();
    opened.sort();
    let expected: Vec<_> = (0..parallelism)
        .map(|s| (s, parallelism, "count".to_string()))
        .collect();
    assert_eq!(opened, expected);

    let counter = outcome.operator("count").unwrap();
    assert_eq!((counter.records_in, counter.records_out), (N, N));

    let output = results.take();
    assert_eq!(output.len() as u64, N);

    // One instance serves many keys; every key is served by exactly one instance.
    let mut keys_of_subtask: BTreeMap<usize, BTreeSet<u64>> = BTreeMap::new();
    let mut subtasks_of_key: HashMap<u64, BTreeSet<usize>> = HashMap::new();
    let mut counts_of_key: HashMap<u64, Vec<u64>> = HashMap::new();
    for &(subtask, key, count) in &output {
        keys_of_subtask.entry(subtask).or_default().insert(key);
        subtasks_of_key.entry(key).or_default().insert(subtask);
        counts_of_key.entry(key).or_default().push(count);
    }
    assert_eq!(
        keys_of_subtask.keys().copied().collect::<Vec<_>>(),
        (0..parallelism).collect::<Vec<_>>(),
        "every subtask processes events"
    );
    let fair_share = CUSTOMERS as usize / parallelism;
    for (subtask, keys) in &keys_of_subtask {
        assert!(
            keys.len() > fair_share / 2,
            "subtask {subtask} saw only {} distinct keys (p = {parallelism})",
            keys.len()
        );
    }
    for (key, subtasks) in &subtasks_of_key {
        assert_eq!(subtasks.len(), 1, "key {key} was processed on {subtasks:?}");
    }

    // The ValueState holds one counter per key: the counts emitted for a key are exactly
    // 1..=n, where n is that key's number of events in the input.
    let expected = events_per_customer(&transactions(N));
    assert_eq!(counts_of_key.len(), expected.len());
    for (key, mut counts) in counts_of_key {
        counts.sort_unstable();
        let n = expected[&key];
        assert_eq!(counts, (1..=n).collect::<Vec<_>>(), "counts of key {key}");
    }
}

#[test]
fn open_is_called_once_per_subtask_and_each_key_has_its_own_counter_at_parallelism_2() {
    check_lifecycle_at(2);
}

#[test]
fn open_is_called_once_per_subtask_and_each_key_has_its_own_counter_at_parallelism_3() {
    check_lifecycle_at(3);
}

/// Counts its events in a plain field (per instance, not per key) and emits
/// `(subtask, events seen)` from `close()`.
#[derive(Clone)]
struct CountPerInstance {
    subtask: usize,
    seen: u64,
    closes: Arc<AtomicUsize>,
}

impl KeyedProcessFunction for CountPerInstance {
    type Key = u64;
    type In = Transaction;
    type Out = (usize, u64);
    type State = ();

    fn open(&mut self, ctx: &mut OpenContext<'_, u64>) -> Result<()> {
        self.subtask = ctx.subtask_index();
        Ok(())
    }

    fn process_element(
        &mut self,
        _: &mut (),
        _tx: Transaction,
        _ctx: &mut Context<'_, u64>,
        _out: &mut Collector<'_, (usize, u64)>,
    ) -> Result<()> {
        self.seen += 1;
        Ok(())
    }

    fn close(&mut self, _: &mut (), out: &mut Collector<'_, (usize, u64)>) -> Result<()> {
        self.closes.fetch_add(1, Ordering::SeqCst);
        out.collect((self.subtask, self.seen));
        Ok(())
    }
}

#[test]
fn close_is_called_once_per_subtask_and_its_output_reaches_the_sink() {
    const N: u64 = 30_000;
    let closes = Arc::new(AtomicUsize::new(0));
    let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(3));
    let results = CollectSink::new();
    env.from_source(transaction_source(N))
        .key_by(|tx: &Transaction| tx.customer_id)
        .process(CountPerInstance {
            subtask: usize::MAX,
            seen: 0,
            closes: Arc::clone(&closes),
        })
        .sink(results.clone());
    env.execute("close").unwrap();

    assert_eq!(closes.load(Ordering::SeqCst), 3);
    let mut per_instance = results.take();
    per_instance.sort_unstable();
    assert_eq!(
        per_instance.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert!(per_instance.iter().all(|(_, seen)| *seen > 0));
    assert_eq!(per_instance.iter().map(|(_, seen)| seen).sum::<u64>(), N);
}

// ---------------------------------------------------------------------------------------------
// 3. The same final state at parallelism 1, 2 and 4.
// ---------------------------------------------------------------------------------------------

/// Keeps `(count, sum of amounts)` per customer; emits `(customer, count, sum)`.
#[derive(Clone)]
struct ValueSums;

impl KeyedProcessFunction for ValueSums {
    type Key = u64;
    type In = Transaction;
    type Out = (u64, u64, u64);
    type State = ValueState<(u64, u64)>;

    fn open(&mut self, ctx: &mut OpenContext<'_, u64>) -> Result<Self::State> {
        ctx.value_state(&ValueStateDescriptor::new("count-and-sum"))
    }

    fn process_element(
        &mut self,
        state: &mut Self::State,
        tx: Transaction,
        _ctx: &mut Context<'_, u64>,
        out: &mut Collector<'_, (u64, u64, u64)>,
    ) -> Result<()> {
        let (count, sum) = state.value()?.unwrap_or((0, 0));
        let next = (count + 1, sum + tx.amount);
        state.update(next)?;
        out.collect((tx.customer_id, next.0, next.1));
        Ok(())
    }
}

/// Per customer, a map from `transaction_id % 8` to `(count, sum)`; emits
/// `(customer, events so far, entries sorted by bucket)`.
#[derive(Clone)]
struct MapBucketSums;

type Buckets = Vec<(u64, (u64, u64))>;

impl KeyedProcessFunction for MapBucketSums {
    type Key = u64;
    type In = Transaction;
    type Out = (u64, u64, Buckets);
    type State = MapState<u64, (u64, u64)>;

    fn open(&mut self, ctx: &mut OpenContext<'_, u64>) -> Result<Self::State> {
        ctx.map_state(&MapStateDescriptor::new("buckets"))
    }

    fn process_element(
        &mut self,
        buckets: &mut Self::State,
        tx: Transaction,
        _ctx: &mut Context<'_, u64>,
        out: &mut Collector<'_, (u64, u64, Buckets)>,
    ) -> Result<()> {
        let bucket = tx.transaction_id % 8;
        let (count, sum) = buckets.get(&bucket)?.unwrap_or((0, 0));
        buckets.put(bucket, (count + 1, sum + tx.amount))?;
        let mut entries: Buckets = buckets.entries()?.collect();
        entries.sort_unstable();
        let total = entries.iter().map(|(_, (c, _))| c).sum();
        out.collect((tx.customer_id, total, entries));
        Ok(())
    }
}

/// Runs `function` on `n` transactions at `parallelism` and returns everything it emitted.
fn run_keyed<F>(function: F, parallelism: usize, n: u64) -> Vec<F::Out>
where
    F: KeyedProcessFunction<Key = u64, In = Transaction>,
{
    let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(parallelism));
    let results = CollectSink::new();
    env.from_source(transaction_source(n))
        .key_by(|tx: &Transaction| tx.customer_id)
        .process(function)
        .sink(results.clone());
    let outcome = env.execute("keyed").unwrap();
    assert_eq!(outcome.parallelism, parallelism);
    assert_eq!(outcome.operator("process").unwrap().records_in, n);
    results.take()
}

#[test]
fn value_state_sums_per_key_are_the_same_at_parallelism_1_2_and_4() {
    const N: u64 = 40_000;
    // The final state per key: what was emitted with the largest count (the key's last event).
    let final_state = |output: Vec<(u64, u64, u64)>| {
        let mut last: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        for (key, count, sum) in output {
            let entry = last.entry(key).or_insert((0, 0));
            if count > entry.0 {
                *entry = (count, sum);
            }
        }
        last
    };
    let mut model: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for tx in transactions(N) {
        let entry = model.entry(tx.customer_id).or_insert((0, 0));
        *entry = (entry.0 + 1, entry.1 + tx.amount);
    }

    let at_1 = final_state(run_keyed(ValueSums, 1, N));
    let at_2 = final_state(run_keyed(ValueSums, 2, N));
    let at_4 = final_state(run_keyed(ValueSums, 4, N));
    assert_eq!(at_1, model);
    assert_eq!(at_2, at_1);
    assert_eq!(at_4, at_1);
}

#[test]
fn map_state_bucket_sums_per_key_are_the_same_at_parallelism_1_2_and_4() {
    const N: u64 = 30_000;
    let final_state = |output: Vec<(u64, u64, Buckets)>| {
        let mut last: BTreeMap<u64, (u64, Buckets)> = BTreeMap::new();
        for (key, total, entries) in output {
            match last.get(&key) {
                Some((seen, _)) if *seen >= total => {}
                _ => {
                    last.insert(key, (total, entries));
                }
            }
        }
        last.into_iter()
            .map(|(key, (_, entries))| (key, entries))
            .collect::<BTreeMap<_, _>>()
    };
    let mut model: BTreeMap<u64, BTreeMap<u64, (u64, u64)>> = BTreeMap::new();
    for tx in transactions(N) {
        let bucket = model
            .entry(tx.customer_id)
            .or_default()
            .entry(tx.transaction_id % 8)
            .or_insert((0, 0));
        *bucket = (bucket.0 + 1, bucket.1 + tx.amount);
    }
    let model: BTreeMap<u64, Buckets> = model
        .into_iter()
        .map(|(key, buckets)| (key, buckets.into_iter().collect()))
        .collect();

    let at_1 = final_state(run_keyed(MapBucketSums, 1, N));
    let at_2 = final_state(run_keyed(MapBucketSums, 2, N));
    let at_4 = final_state(run_keyed(MapBucketSums, 4, N));
    assert_eq!(at_1, model);
    assert_eq!(at_2, at_1);
    assert_eq!(at_4, at_1);
}

// ---------------------------------------------------------------------------------------------
// 4. The latest-transaction recipe (W1).
// ---------------------------------------------------------------------------------------------

/// The recipe of the crate documentation.
#[derive(Clone)]
struct LatestTransaction;

impl KeyedProcessFunction for LatestTransaction {
    type Key = u64;
    type In = Transaction;
    type Out = Transaction;
    type State = ValueState<Transaction>;

    fn open(&mut self, ctx: &mut OpenContext<'_, u64>) -> Result<Self::State> {
        ctx.value_state(&ValueStateDescriptor::new("latest"))
    }

    fn process_element(
        &mut self,
        latest: &mut Self::State,
        tx: Transaction,
        _ctx: &mut Context<'_, u64>,
        out: &mut Collector<'_, Transaction>,
    ) -> Result<()> {
        match latest.value()? {
            Some(current) if current.timestamp > tx.timestamp => {}
            _ => {
                latest.update(tx)?;
                out.collect(tx);
            }
        }
        Ok(())
    }
}

const LATEST_N: u64 = 100_000;

/// For every customer, its transaction with the largest timestamp, computed without Eddy.
fn latest_per_customer_model() -> HashMap<u64, Transaction> {
    let mut latest: HashMap<u64, Transaction> = HashMap::new();
    for tx in transactions(LATEST_N) {
        let entry = latest.entry(tx.customer_id).or_insert(tx);
        if tx.timestamp > entry.timestamp {
            *entry = tx;
        }
    }
    latest
}

/// The last transaction emitted per customer, checking that each customer's emitted
/// timestamps strictly grow.
fn last_emitted_per_customer(emitted: &[Transaction]) -> HashMap<u64, Transaction> {
    let mut last: HashMap<u64, Transaction> = HashMap::new();
    for tx in emitted {
        if let Some(previous) = last.get(&tx.customer_id) {
            assert!(
                tx.timestamp > previous.timestamp,
                "customer {} emitted {previous:?} then the older {tx:?}",
                tx.customer_id
            );
        }
        last.insert(tx.customer_id, *tx);
    }
    last
}

#[test]
fn latest_transaction_at_parallelism_1_emits_every_event() {
    let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(1));
    let results = CollectSink::new();
    env.from_source(transaction_source(LATEST_N))
        .key_by(|tx: &Transaction| tx.customer_id)
        .process(LatestTransaction)
        .sink(results.clone());
    let outcome = env.execute("latest-transaction").unwrap();
    let process = outcome.operator("process").unwrap();
    assert_eq!(
        (process.records_in, process.records_out),
        (LATEST_N, LATEST_N)
    );
    let emitted = results.take();
    // One source subtask: timestamps only grow, so every event is its customer's latest.
    assert_eq!(emitted, transactions(LATEST_N));
    assert_eq!(
        last_emitted_per_customer(&emitted),
        latest_per_customer_model()
    );
}

#[test]
fn latest_transaction_at_parallelism_2_ends_with_each_customers_latest() {
    let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(2));
    let results = CollectSink::new();
    env.from_source(transaction_source(LATEST_N))
        .key_by(|tx: &Transaction| tx.customer_id)
        .process(LatestTransaction)
        .sink(results.clone());
    let outcome = env.execute("latest-transaction").unwrap();
    assert_eq!(outcome.operator("process").unwrap().records_in, LATEST_N);
    let emitted = results.take();
    let model = latest_per_customer_model();
    // Two source subtasks interleave, so older events may arrive late and be dropped.
    assert!(emitted.len() as u64 <= LATEST_N, "{}", emitted.len());
    assert!(emitted.len() >= model.len());
    assert_eq!(
        outcome.operator("process").unwrap().records_out,
        emitted.len() as u64
    );
    assert_eq!(last_emitted_per_customer(&emitted), model);
}

#[test]
fn latest_transaction_with_one_source_subtask_feeding_two_keyed_subtasks_emits_every_event() {
    let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(2));
    let results = CollectSink::new();
    env.from_source(transaction_source(LATEST_N))
        .set_parallelism(1)
        .key_by(|tx: &Transaction| tx.customer_id)
        .process(LatestTransaction)
        .sink(results.clone());
    env.execute("latest-transaction").unwrap();
    let mut emitted = results.take();
    // Each customer's events still arrive in order through one channel.
    assert_eq!(emitted.len() as u64, LATEST_N);
    assert_eq!(
        last_emitted_per_customer(&emitted),
        latest_per_customer_model()
    );
    emitted.sort_by_key(|tx| tx.transaction_id);
    assert_eq!(emitted, transactions(LATEST_N));
}

// ---------------------------------------------------------------------------------------------
// 5. ListState (W2) and MapState (W3) against plain-Rust models.
// ---------------------------------------------------------------------------------------------

const EMIT_EVERY: u64 = 10;

/// W2: every transaction per customer in a list; every E-th event emits
/// `(customer, transaction_id, sum of the list's amounts)`.
#[derive(Clone)]
struct ListSum {
    emit_every: u64,
}

impl KeyedProcessFunction for ListSum {
    type Key = u64;
    type In = Transaction;
    type Out = (u64, u64, u64);
    type State = ListState<Transaction>;

    fn open(&mut self, ctx: &mut OpenContext<'_, u64>) -> Result<Self::State> {
        ctx.list_state(&ListStateDescriptor::new("transactions"))
    }

    fn process_element(
        &mut self,
        list: &mut Self::State,
        tx: Transaction,
        _ctx: &mut Context<'_, u64>,
        out: &mut Collector<'_, (u64, u64, u64)>,
    ) -> Result<()> {
        list.add(tx)?;
        if tx.transaction_id % self.emit_every == 0 {
            let sum = list.get()?.fold(0u64, |sum, t| sum.wrapping_add(t.amount));
            out.collect((tx.customer_id, tx.transaction_id, sum));
        }
        Ok(())
    }
}

/// W3: per customer, a map from `transaction_id % 100` to the sum of amounts; every E-th
/// event emits `(customer, transaction_id, the updated sum)`.
#[derive(Clone)]
struct MapSums {
    emit_every: u64,
}

impl KeyedProcessFunction for MapSums {
    type Key = u64;
    type In = Transaction;
    type Out = (u64, u64, u64);
    type State = MapState<u64, u64>;

    fn open(&mut self, ctx: &mut OpenContext<'_, u64>) -> Result<Self::State> {
        ctx.map_state(&MapStateDescriptor::new("sums"))
    }

    fn process_element(
        &mut self,
        sums: &mut Self::State,
        tx: Transaction,
        _ctx: &mut Context<'_, u64>,
        out: &mut Collector<'_, (u64, u64, u64)>,
    ) -> Result<()> {
        let bucket = tx.transaction_id % 100;
        let sum = sums.get(&bucket)?.unwrap_or(0) + tx.amount;
        sums.put(bucket, sum)?;
        if tx.transaction_id % self.emit_every == 0 {
            out.collect((tx.customer_id, tx.transaction_id, sum));
        }
        Ok(())
    }
}

/// W2's output, computed in plain Rust over events in generation order.
fn list_sum_model(events: &[Transaction]) -> Vec<(u64, u64, u64)> {
    let mut lists: HashMap<u64, Vec<Transaction>> = HashMap::new();
    let mut out = Vec::new();
    for tx in events {
        let list = lists.entry(tx.customer_id).or_default();
        list.push(*tx);
        if tx.transaction_id % EMIT_EVERY == 0 {
            let sum = list.iter().map(|t| t.amount).sum();
            out.push((tx.customer_id, tx.transaction_id, sum));
        }
    }
    out.sort_unstable();
    out
}

/// W3's output, computed in plain Rust over events in generation order.
fn map_sums_model(events: &[Transaction]) -> Vec<(u64, u64, u64)> {
    let mut maps: HashMap<u64, HashMap<u64, u64>> = HashMap::new();
    let mut out = Vec::new();
    for tx in events {
        let sum = maps
            .entry(tx.customer_id)
            .or_default()
            .entry(tx.transaction_id % 100)
            .or_insert(0);
        *sum += tx.amount;
        if tx.transaction_id % EMIT_EVERY == 0 {
            out.push((tx.customer_id, tx.transaction_id, *sum));
        }
    }
    out.sort_unstable();
    out
}

const WORKLOAD_N: u64 = 50_000;

fn sorted<T: Ord>(mut records: Vec<T>) -> Vec<T> {
    records.sort_unstable();
    records
}

#[test]
fn list_state_sums_at_parallelism_1_match_the_plain_model() {
    let emitted = run_keyed(
        ListSum {
            emit_every: EMIT_EVERY,
        },
        1,
        WORKLOAD_N,
    );
    assert_eq!(emitted.len() as u64, WORKLOAD_N / EMIT_EVERY);
    assert_eq!(sorted(emitted), list_sum_model(&transactions(WORKLOAD_N)));
}

#[test]
fn map_state_sums_at_parallelism_1_match_the_plain_model() {
    let emitted = run_keyed(
        MapSums {
            emit_every: EMIT_EVERY,
        },
        1,
        WORKLOAD_N,
    );
    assert_eq!(emitted.len() as u64, WORKLOAD_N / EMIT_EVERY);
    assert_eq!(sorted(emitted), map_sums_model(&transactions(WORKLOAD_N)));
}

/// Runs `function` with one source subtask feeding two keyed subtasks: each key's events keep
/// their generation order, so order-dependent results still match the model.
fn run_keyed_with_one_source<F>(function: F, n: u64) -> Vec<F::Out>
where
    F: KeyedProcessFunction<Key = u64, In = Transaction>,
{
    let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(2));
    let results = CollectSink::new();
    env.from_source(transaction_source(n))
        .set_parallelism(1)
        .key_by(|tx: &Transaction| tx.customer_id)
        .process(function)
        .sink(results.clone());
    env.execute("keyed-one-source").unwrap();
    results.take()
}

#[test]
fn list_and_map_state_with_two_keyed_subtasks_match_the_plain_models() {
    let events = transactions(WORKLOAD_N);
    let list = run_keyed_with_one_source(
        ListSum {
            emit_every: EMIT_EVERY,
        },
        WORKLOAD_N,
    );
    assert_eq!(sorted(list), list_sum_model(&events));
    let map = run_keyed_with_one_source(
        MapSums {
            emit_every: EMIT_EVERY,
        },
        WORKLOAD_N,
    );
    assert_eq!(sorted(map), map_sums_model(&events));
}

#[test]
fn tiny_epochs_with_one_epoch_in_flight_still_deliver_every_record() {
    const N: u64 = 5_000;
    let config = JobConfig {
        parallelism: 2,
        epoch_interval: std::time::Duration::from_micros(20),
        max_epochs_in_flight: 1,
        ..JobConfig::default()
    };
    let env = StreamExecutionEnvironment::new(config);
    let results = CollectSink::new();
    env.from_source(transaction_source(N))
        .key_by(|tx: &Transaction| tx.customer_id)
        .process(ValueSums)
        .sink(results.clone());
    env.execute("tiny-epochs").unwrap();
    let mut final_state: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let output = results.take();
    assert_eq!(output.len() as u64, N);
    for (key, count, sum) in output {
        let entry = final_state.entry(key).or_insert((0, 0));
        if count > entry.0 {
            *entry = (count, sum);
        }
    }
    let mut model: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for tx in transactions(N) {
        let entry = model.entry(tx.customer_id).or_insert((0, 0));
        *entry = (entry.0 + 1, entry.1 + tx.amount);
    }
    assert_eq!(final_state, model);
}

// ---------------------------------------------------------------------------------------------
// Clearing, removing and replacing state inside a job.
// ---------------------------------------------------------------------------------------------

/// Per customer: a counter cleared every third event, a list trimmed to the last three
/// amounts, and a map from `transaction_id % 4` to a count whose entry is removed when it
/// reaches 2. Emits what the state holds after each event.
#[derive(Clone)]
struct Churn;

/// `(customer, transaction_id, counter, recent amounts, map entries, map is empty)`.
type ChurnOut = (u64, u64, Option<u64>, Vec<u64>, Vec<(u64, u64)>, bool);

impl KeyedProcessFunction for Churn {
    type Key = u64;
    type In = Transaction;
    type Out = ChurnOut;
    type State = (ValueState<u64>, ListState<u64>, MapState<u64, u64>);

    fn open(&mut self, ctx: &mut OpenContext<'_, u64>) -> Result<Self::State> {
        Ok((
            ctx.value_state(&ValueStateDescriptor::new("counter"))?,
            ctx.list_state(&ListStateDescriptor::new("recent"))?,
            ctx.map_state(&MapStateDescriptor::new("buckets"))?,
        ))
    }

    fn process_element(
        &mut self,
        (counter, recent, buckets): &mut Self::State,
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
        let mut entries: Vec<(u64, u64)> = buckets.entries()?.collect();
        entries.sort_unstable();
        out.collect((
            tx.customer_id,
            tx.transaction_id,
            counter.value()?,
            recent.get()?.collect(),
            entries,
            buckets.is_empty()?,
        ));
        Ok(())
    }
}

fn churn_model(events: &[Transaction]) -> Vec<ChurnOut> {
    let mut counters: HashMap<u64, u64> = HashMap::new();
    let mut lists: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut maps: HashMap<u64, BTreeMap<u64, u64>> = HashMap::new();
    let mut out = Vec::new();
    for tx in events {
        let key = tx.customer_id;
        let n = counters.get(&key).copied().unwrap_or(0) + 1;
        match n {
            3 => counters.remove(&key),
            _ => counters.insert(key, n),
        };
        let list = lists.entry(key).or_default();
        list.push(tx.amount);
        if list.len() > 3 {
            list.remove(0);
        }
        let map = maps.entry(key).or_default();
        let bucket = tx.transaction_id % 4;
        match map.get(&bucket).copied().unwrap_or(0) + 1 {
            2 => map.remove(&bucket),
            c => map.insert(bucket, c),
        };
        out.push((
            key,
            tx.transaction_id,
            counters.get(&key).copied(),
            list.clone(),
            map.iter().map(|(k, v)| (*k, *v)).collect(),
            map.is_empty(),
        ));
    }
    out.sort_unstable();
    out
}

#[test]
fn cleared_removed_and_replaced_state_matches_a_model_at_parallelism_1() {
    const N: u64 = 20_000;
    let emitted = run_keyed(Churn, 1, N);
    assert_eq!(sorted(emitted), churn_model(&transactions(N)));
}

#[test]
fn cleared_removed_and_replaced_state_matches_a_model_with_two_keyed_subtasks() {
    const N: u64 = 20_000;
    let emitted = run_keyed_with_one_source(Churn, N);
    assert_eq!(sorted(emitted), churn_model(&transactions(N)));
}
