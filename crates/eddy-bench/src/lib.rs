//! The benchmark workloads W0–W3 of the Flink keyed-state anchor, on Eddy, and W4 (W1 with
//! state TTL).
//!
//! Each workload is the anchor's (`shared/anchors/flink/README.md`), on the same event stream
//! ([`TransactionGenerator`]) with the same per-event state operations and emit rules:
//!
//! | id | state | per event |
//! | --- | --- | --- |
//! | W0 | none | forward the event (source + `key_by` shuffle + keyed dispatch + sink) |
//! | W1 | `ValueState<Transaction>` | `value()`; if none or `in.timestamp >= cur.timestamp`, `update(in)` and emit `in`, else `update(cur)` |
//! | W2 | `ListState<Transaction>` | `add(in)`; when `transaction_id % E == 0`, iterate the list and emit the sum of amounts |
//! | W3 | `MapState<u64, u64>` | `mk = transaction_id % 100`; `put(mk, get(mk) + amount)`; when `transaction_id % E == 0`, emit it |
//! | W4 | `ValueState<Transaction>` with TTL 1 h (`OnCreateAndWrite`) | as W1: measures what TTL costs |
//! | W5 | tumbling 1-minute event-time windows (aggregating state per window) | add `amount` to the customer's window; emit `(sum, count)` per window |
//! | W6 | event-time session windows, gap 10 s (merging windows) | as W5 per session; timestamps `base + i / 100` ms so sessions form |
//! | W2-value | `ValueState<Vec<Transaction>>` | as W2, but the list is read whole (`value()`), appended to and written back (`update`) on every event |
//! | W3-value | `ValueState<HashMap<u64, u64>>` | as W3, but the map is read whole, changed and written back on every event |
//!
//! W2-value and W3-value emit exactly W2's and W3's records: they measure what the guide's
//! advice ("prefer `ListState`/`MapState` over collections in a `ValueState`") saves.
//!
//! W5 and W6 stamp events with their `timestamp` field (W6 first rewrites it) under
//! `for_monotonous_timestamps` (each source split is in timestamp order). W6's timestamps put
//! 100 events in each millisecond, so with K = 1M customers a customer's events are on
//! average K / 100 ms = 10 s apart: about the gap, so sessions of several events form and
//! close. The same rule is in the Flink job under `bench/flink`.
//!
//! The sink counts records and sums a checksum (W0/W1: transaction ids; W2: sums; W3: map
//! values), so a run's *results* can be compared, not only its speed.
//!
//! This crate is used by the `eddy-bench` binary and by the `eddy` CLI; it must not be used
//! by the engine crates.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use eddy::layers::state::KeyedStateSnapshot;
use eddy::prelude::*;
use eddy::{BackendFlag, JobFlags};

/// The benchmark workloads.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Stateless baseline.
    W0,
    /// `ValueState`: the latest transaction per customer.
    W1,
    /// `ListState`: all transactions per customer, summed every E-th event.
    W2,
    /// `MapState`: sums per customer and `transaction_id % 100`.
    W3,
    /// W1 with a state TTL of one hour (`OnCreateAndWrite`): the cost of TTL.
    W4,
    /// Tumbling 1-minute event-time windows summing `amount` per customer.
    W5,
    /// Event-time session windows (gap 10 s) summing `amount` per customer session.
    W6,
    /// W2 with the list in a `ValueState<Vec<Transaction>>`: read whole, appended to and
    /// written back on every event (the pattern the guide advises against).
    #[value(name = "w2-value")]
    W2Value,
    /// W3 with the map in a `ValueState<HashMap<u64, u64>>`: read whole, changed and written
    /// back on every event.
    #[value(name = "w3-value")]
    W3Value,
}

/// The workload parameters (the anchor's flags).
#[derive(Args, Clone, Debug)]
pub struct WorkloadArgs {
    /// Number of events (N).
    #[arg(long = "n", default_value_t = 20_000_000)]
    pub events: u64,
    /// Number of distinct customers (K).
    #[arg(long = "k", default_value_t = 1_000_000)]
    pub customers: u64,
    /// Generator seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// W2/W3 read or emit on events with `transaction_id % E == 0`.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub emit_every: u64,
    /// Checkpoint interval in ms; 0 = off. Checkpoints go to --checkpoint-dir or, without
    /// one, to a temporary directory deleted after the run.
    #[arg(long, default_value_t = 0)]
    pub checkpoint_ms: u64,
    /// W1 only: throttle the sink to this many records per second per subtask (checkpoints
    /// under backpressure).
    #[arg(long)]
    pub sink_rate: Option<u64>,
}

impl WorkloadArgs {
    /// How often a run with these arguments and `flags` checkpoints (`--checkpoint-ms`, else
    /// `--checkpoint-interval-ms`), if it does.
    pub fn checkpoint_interval(&self, flags: &JobFlags) -> Option<Duration> {
        (self.checkpoint_ms > 0)
            .then(|| Duration::from_millis(self.checkpoint_ms))
            .or_else(|| flags.checkpoint_interval())
    }
}

/// What one run measured.
#[derive(Clone, Debug)]
pub struct Report {
    /// The workload.
    pub workload: Workload,
    /// The job's parallelism.
    pub parallelism: usize,
    /// N.
    pub events: u64,
    /// K.
    pub customers: u64,
    /// From job start to the last record at the sink.
    pub job_time: Duration,
    /// Records that reached the sink.
    pub emitted: u64,
    /// Events seen by the keyed function.
    pub processed: u64,
    /// Wrapping sum of the sink records' checksums.
    pub checksum: u64,
    /// The checkpoints taken (with `--checkpoint-ms`).
    pub checkpoints: Vec<eddy::checkpoint::CheckpointStats>,
    /// `(process id, processes)` when this is one process of a cluster job: `processed`,
    /// `emitted` and `checksum` are then this process's share.
    pub cluster: Option<(usize, usize)>,
}

impl Report {
    /// N / job time.
    pub fn events_per_second(&self) -> f64 {
        self.events as f64 / self.job_time.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

/// Runs `workload` with `args` in `env` and checks that every event was processed.
pub fn run(
    workload: Workload,
    args: &WorkloadArgs,
    env: &StreamExecutionEnvironment,
) -> Result<Report> {
    run_probed(workload, args, env, None, args.events)
}

/// [`run`], with the keyed function's `open()` reported to `probe`, checking that `expected`
/// events were processed.
fn run_probed(
    workload: Workload,
    args: &WorkloadArgs,
    env: &StreamExecutionEnvironment,
    probe: Option<OpenProbe>,
    expected: u64,
) -> Result<Report> {
    // The anchor's `--checkpoint-ms`: into --checkpoint-dir, or a fresh temporary directory.
    let interval = Duration::from_millis(args.checkpoint_ms);
    let _scratch = match (args.checkpoint_ms, env.config().checkpoint.location) {
        (0, _) => None,
        (_, Some(location)) => {
            env.enable_checkpointing(interval, &location);
            None
        }
        (_, None) => {
            let dir = tempfile::tempdir().map_err(|e| EddyError::io("temp dir", e))?;
            env.enable_checkpointing(interval, &dir.path().to_string_lossy());
            Some(dir)
        }
    };
    let source = TransactionGenerator::new(args.customers, args.seed).source(args.events);
    let mut stream = env.from_source_named("transactions", source);
    if workload == Workload::W6 {
        stream = stream.map(|mut tx: Transaction| {
            tx.timestamp = W6_BASE_MS + tx.transaction_id / 100;
            tx
        });
    }
    if matches!(workload, Workload::W5 | Workload::W6) {
        stream = stream.assign_timestamps_and_watermarks(
            WatermarkStrategy::for_monotonous_timestamps()
                .with_timestamp_assigner(|tx: &Transaction| tx.timestamp),
        );
    }
    let keyed = stream.key_by(|tx: &Transaction| tx.customer_id);
    let e = args.emit_every;
    let (sink_count, sink_checksum): (Counter, Counter) = match workload {
        Workload::W0 => {
            let sink = CountingSink::with_checksum(|tx: &Transaction| tx.transaction_id);
            keyed
                .process_named("process", Probed::new(Forward, &probe))
                .sink(sink.clone());
            counters(sink)
        }
        Workload::W1 => {
            let sink = CountingSink::with_checksum(|tx: &Transaction| tx.transaction_id);
            let stream = keyed.process_named("process", Probed::new(LatestTransaction, &probe));
            match args.sink_rate {
                Some(rate) => stream.sink(Throttled::new(sink.clone(), rate)),
                None => stream.sink(sink.clone()),
            };
            counters(sink)
        }
        Workload::W4 => {
            let sink = CountingSink::with_checksum(|tx: &Transaction| tx.transaction_id);
            keyed
                .process_named(
                    "process",
                    Probed::new(
                        LatestTransactionWithTtl {
                            ttl: Duration::from_secs(3600),
                        },
                        &probe,
                    ),
                )
                .sink(sink.clone());
            counters(sink)
        }
        Workload::W2 => {
            let sink = CountingSink::with_checksum(|sum: &u64| *sum);
            keyed
                .process_named("process", Probed::new(ListSum { emit_every: e }, &probe))
                .sink(sink.clone());
            counters(sink)
        }
        Workload::W3 => {
            let sink = CountingSink::with_checksum(|value: &u64| *value);
            keyed
                .process_named("process", Probed::new(MapSums { emit_every: e }, &probe))
                .sink(sink.clone());
            counters(sink)
        }
        Workload::W2Value => {
            let sink = CountingSink::with_checksum(|sum: &u64| *sum);
            keyed
                .process_named(
                    "process",
                    Probed::new(ListInValueSum { emit_every: e }, &probe),
                )
                .sink(sink.clone());
            counters(sink)
        }
        Workload::W3Value => {
            let sink = CountingSink::with_checksum(|value: &u64| *value);
            keyed
                .process_named(
                    "process",
                    Probed::new(MapInValueSums { emit_every: e }, &probe),
                )
                .sink(sink.clone());
            counters(sink)
        }
        Workload::W5 | Workload::W6 => {
            if probe.is_some() {
                return Err(EddyError::Config(format!(
                    "the restore measurement covers W0-W4 and W2-value/W3-value, not {workload:?}"
                )));
            }
            window_workload(workload, keyed)?
        }
    };
    let result = env.execute(&format!("bench-{workload:?}"))?;
    let processed = result.operator("process").map_or(0, |o| o.records_in);
    let cluster = env
        .config()
        .cluster
        .map(|c| (c.process_id, c.processes))
        .filter(|(_, processes)| *processes > 1);
    // A process of a cluster job sees only its own subtasks' counters: its share of N.
    let complete = match cluster {
        None => processed == expected,
        Some(_) => processed <= expected,
    };
    if !complete {
        return Err(EddyError::Internal(format!(
            "processed {processed} events, expected {expected}"
        )));
    }
    Ok(Report {
        workload,
        parallelism: result.parallelism,
        events: args.events,
        customers: args.customers,
        job_time: result.duration,
        emitted: sink_count(),
        processed,
        checksum: sink_checksum(),
        checkpoints: result.checkpoints,
        cluster,
    })
}

/// W6's first timestamp (the anchor's base).
const W6_BASE_MS: u64 = 1_700_000_000_000;

/// W5 and W6: windows summing amounts per customer; the sink counts windows and sums sums.
fn window_workload<KS>(
    workload: Workload,
    keyed: KeyedStream<Transaction, KS>,
) -> Result<(Counter, Counter)>
where
    KS: Fn(&Transaction) -> u64 + Clone + Send + Sync + 'static,
{
    let assigner = if workload == Workload::W5 {
        WindowAssigner::tumbling_event_time(Duration::from_secs(60))?
    } else {
        WindowAssigner::event_time_session(Duration::from_secs(10))?
    };
    let sink = CountingSink::with_checksum(|(sum, _count): &(u64, u64)| *sum);
    keyed
        .window(assigner)
        .name("process")
        .aggregate(SumAndCount)
        .sink(sink.clone());
    Ok(counters(sink))
}

/// Sums amounts and counts transactions (W5, W6).
#[derive(Clone)]
struct SumAndCount;

impl AggregateFunction<Transaction> for SumAndCount {
    type Acc = (u64, u64);
    type Out = (u64, u64);

    fn create_accumulator(&self) -> (u64, u64) {
        (0, 0)
    }

    fn add(&self, tx: Transaction, acc: &mut (u64, u64)) {
        acc.0 += tx.amount;
        acc.1 += 1;
    }

    fn get_result(&self, acc: &(u64, u64)) -> (u64, u64) {
        *acc
    }

    fn merge(&self, a: (u64, u64), b: (u64, u64)) -> (u64, u64) {
        (a.0 + b.0, a.1 + b.1)
    }
}

type Counter = Box<dyn Fn() -> u64>;

/// A sink that lets at most `per_second` records per subtask through to `inner`: a slow
/// downstream system, to measure checkpoints under backpressure.
#[derive(Clone)]
pub struct Throttled<S> {
    inner: S,
    per_second: u64,
    started: Option<std::time::Instant>,
    written: u64,
}

impl<S> Throttled<S> {
    /// Throttles `inner` to `per_second` records per second per subtask.
    pub fn new(inner: S, per_second: u64) -> Self {
        Throttled {
            inner,
            per_second: per_second.max(1),
            started: None,
            written: 0,
        }
    }
}

impl<T, S: Sink<T>> Sink<T> for Throttled<S> {
    fn open(&mut self, ctx: eddy::SinkContext) -> Result<()> {
        self.started = Some(std::time::Instant::now());
        self.inner.open(ctx)
    }

    fn write(&mut self, record: T) -> Result<()> {
        self.write_batch(&mut vec![record])
    }

    fn write_batch(&mut self, batch: &mut Vec<T>) -> Result<()> {
        self.written += batch.len() as u64;
        let due = Duration::from_secs_f64(self.written as f64 / self.per_second as f64);
        if let Some(started) = self.started {
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        self.inner.write_batch(batch)
    }

    fn close(&mut self) -> Result<()> {
        self.inner.close()
    }
}

fn counters<T: 'static>(sink: CountingSink<T>) -> (Counter, Counter) {
    let other = sink.clone();
    (
        Box::new(move || sink.count()),
        Box::new(move || other.checksum()),
    )
}

/// W0: forwards every event.
#[derive(Clone)]
pub struct Forward;

impl KeyedProcessFunction for Forward {
    type Key = u64;
    type In = Transaction;
    type Out = Transaction;
    type State = ();

    fn open(&mut self, _: &mut OpenContext<'_, u64>) -> Result<()> {
        Ok(())
    }

    #[inline]
    fn process_element(
        &mut self,
        _: &mut (),
        tx: Transaction,
        _: &mut Context<'_, u64>,
        out: &mut Collector<'_, Transaction>,
    ) -> Result<()> {
        out.collect(tx);
        Ok(())
    }
}

/// W1: the latest transaction per customer, with exactly one read and one write per event.
#[derive(Clone)]
pub struct LatestTransaction;

impl KeyedProcessFunction for LatestTransaction {
    type Key = u64;
    type In = Transaction;
    type Out = Transaction;
    type State = ValueState<Transaction>;

    fn open(&mut self, ctx: &mut OpenContext<'_, u64>) -> Result<Self::State> {
        ctx.value_state(&ValueStateDescriptor::new("latest"))
    }

    #[inline]
    fn process_element(
        &mut self,
        latest: &mut Self::State,
        tx: Transaction,
        _: &mut Context<'_, u64>,
        out: &mut Collector<'_, Transaction>,
    ) -> Result<()> {
        keep_latest(latest, tx, out)
    }
}

/// W1's per-event work, shared with W4 so that the two differ only in the state's TTL.
#[inline]
fn keep_latest(
    latest: &ValueState<Transaction>,
    tx: Transaction,
    out: &mut Collector<'_, Transaction>,
) -> Result<()> {
    match latest.value()? {
        Some(current) if tx.timestamp < current.timestamp => latest.update(current),
        _ => {
            latest.update(tx)?;
            out.collect(tx);
            Ok(())
        }
    }
}

/// W4: W1 on a `ValueState` whose descriptor enables TTL (`OnCreateAndWrite`, processing
/// time, cleanup on read).
#[derive(Clone)]
pub struct LatestTransactionWithTtl {
    /// The state's time-to-live.
    pub ttl: Duration,
}

impl KeyedProcessFunction for LatestTransactionWithTtl {
    type Key = u64;
    type In = Transaction;
    type Out = Transaction;
    type State = ValueState<Transaction>;

    fn open(&mut self, ctx: &mut OpenContext<'_, u64>) -> Result<Self::State> {
        ctx.value_state(
            &ValueStateDescriptor::new("latest").enable_ttl(StateTtlConfig::new(self.ttl)),
        )
    }

    #[inline]
    fn process_element(
        &mut self,
        latest: &mut Self::State,
        tx: Transaction,
        _: &mut Context<'_, u64>,
        out: &mut Collector<'_, Transaction>,
    ) -> Result<()> {
        keep_latest(latest, tx, out)
    }
}

/// W2: every transaction per customer in a list; every E-th event emits the sum of amounts.
#[derive(Clone)]
pub struct ListSum {
    /// E.
    pub emit_every: u64,
}

impl KeyedProcessFunction for ListSum {
    type Key = u64;
    type In = Transaction;
    type Out = u64;
    type State = ListState<Transaction>;

    fn open(&mut self, ctx: &mut OpenContext<'_, u64>) -> Result<Self::State> {
        ctx.list_state(&ListStateDescriptor::new("transactions"))
    }

    #[inline]
    fn process_element(
        &mut self,
        list: &mut Self::State,
        tx: Transaction,
        _: &mut Context<'_, u64>,
        out: &mut Collector<'_, u64>,
    ) -> Result<()> {
        list.add(tx)?;
        if tx.transaction_id % self.emit_every == 0 {
            let sum = list.get()?.fold(0u64, |sum, t| sum.wrapping_add(t.amount));
            out.collect(sum);
        }
        Ok(())
    }
}

/// W3: per customer, a map from `transaction_id % 100` to the sum of amounts.
#[derive(Clone)]
pub struct MapSums {
    /// E.
    pub emit_every: u64,
}

impl KeyedProcessFunction for MapSums {
    type Key = u64;
    type In = Transaction;
    type Out = u64;
    type State = MapState<u64, u64>;

    fn open(&mut self, ctx: &mut OpenContext<'_, u64>) -> Result<Self::State> {
        ctx.map_state(&MapStateDescriptor::new("sums"))
    }

    #[inline]
    fn process_element(
        &mut self,
        sums: &mut Self::State,
        tx: Transaction,
        _: &mut Context<'_, u64>,
        out: &mut Collector<'_, u64>,
    ) -> Result<()> {
        let bucket = tx.transaction_id % 100;
        let sum = sums.get(&bucket)?.unwrap_or(0) + tx.amount;
        sums.put(bucket, sum)?;
        if tx.transaction_id % self.emit_every == 0 {
            out.collect(sum);
        }
        Ok(())
    }
}

/// W2-value: W2 with the list in a `ValueState<Vec<Transaction>>`, read whole and written
/// back on every event.
#[derive(Clone)]
pub struct ListInValueSum {
    /// E.
    pub emit_every: u64,
}

impl KeyedProcessFunction for ListInValueSum {
    type Key = u64;
    type In = Transaction;
    type Out = u64;
    type State = ValueState<Vec<Transaction>>;

    fn open(&mut self, ctx: &mut OpenContext<'_, u64>) -> Result<Self::State> {
        ctx.value_state(&ValueStateDescriptor::new("transactions"))
    }

    #[inline]
    fn process_element(
        &mut self,
        list: &mut Self::State,
        tx: Transaction,
        _: &mut Context<'_, u64>,
        out: &mut Collector<'_, u64>,
    ) -> Result<()> {
        let mut all = list.value()?.unwrap_or_default();
        all.push(tx);
        if tx.transaction_id % self.emit_every == 0 {
            let sum = all.iter().fold(0u64, |sum, t| sum.wrapping_add(t.amount));
            out.collect(sum);
        }
        list.update(all)
    }
}

/// W3-value: W3 with the map in a `ValueState<HashMap<u64, u64>>`, read whole and written
/// back on every event.
#[derive(Clone)]
pub struct MapInValueSums {
    /// E.
    pub emit_every: u64,
}

impl KeyedProcessFunction for MapInValueSums {
    type Key = u64;
    type In = Transaction;
    type Out = u64;
    type State = ValueState<HashMap<u64, u64>>;

    fn open(&mut self, ctx: &mut OpenContext<'_, u64>) -> Result<Self::State> {
        ctx.value_state(&ValueStateDescriptor::new("sums"))
    }

    #[inline]
    fn process_element(
        &mut self,
        sums: &mut Self::State,
        tx: Transaction,
        _: &mut Context<'_, u64>,
        out: &mut Collector<'_, u64>,
    ) -> Result<()> {
        let mut map = sums.value()?.unwrap_or_default();
        let bucket = tx.transaction_id % 100;
        let sum = map.get(&bucket).copied().unwrap_or(0) + tx.amount;
        map.insert(bucket, sum);
        if tx.transaction_id % self.emit_every == 0 {
            out.collect(sum);
        }
        sums.update(map)
    }
}

/// Records when each keyed subtask's `open()` returned: with a restore, its state is loaded
/// by then (the backend loads each restored state when `open()` registers it).
#[derive(Clone, Default)]
pub struct OpenProbe {
    opened: Arc<Mutex<Vec<Instant>>>,
}

impl OpenProbe {
    /// When the subtasks' `open()` calls returned, in the order they did.
    pub fn opened(&self) -> Vec<Instant> {
        self.opened
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A keyed function that reports its `open()` to an [`OpenProbe`] (if any) and otherwise
/// is `F`.
#[derive(Clone)]
pub struct Probed<F> {
    inner: F,
    probe: Option<OpenProbe>,
}

impl<F> Probed<F> {
    /// `inner`, reporting to `probe`.
    pub fn new(inner: F, probe: &Option<OpenProbe>) -> Self {
        Probed {
            inner,
            probe: probe.clone(),
        }
    }
}

impl<F: KeyedProcessFunction> KeyedProcessFunction for Probed<F> {
    type Key = F::Key;
    type In = F::In;
    type Out = F::Out;
    type State = F::State;

    fn open(&mut self, ctx: &mut OpenContext<'_, F::Key>) -> Result<F::State> {
        let state = self.inner.open(ctx)?;
        if let Some(probe) = &self.probe {
            probe
                .opened
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Instant::now());
        }
        Ok(state)
    }

    #[inline]
    fn process_element(
        &mut self,
        state: &mut F::State,
        input: F::In,
        ctx: &mut Context<'_, F::Key>,
        out: &mut Collector<'_, F::Out>,
    ) -> Result<()> {
        self.inner.process_element(state, input, ctx, out)
    }

    fn on_timer(
        &mut self,
        state: &mut F::State,
        timestamp: u64,
        ctx: &mut OnTimerContext<'_, F::Key>,
        out: &mut Collector<'_, F::Out>,
    ) -> Result<()> {
        self.inner.on_timer(state, timestamp, ctx, out)
    }

    fn close(&mut self, state: &mut F::State, out: &mut Collector<'_, F::Out>) -> Result<()> {
        self.inner.close(state, out)
    }
}

/// The restore-time measurement's settings (`--measure-restore`).
#[derive(Args, Clone, Debug)]
pub struct RestoreArgs {
    /// Measure restore time instead of throughput: run the workload once (at --parallelism,
    /// on the given backend) ending in a savepoint, then restore that savepoint at each
    /// --restore-parallelism into each --restore-backends, --restore-runs times each.
    #[arg(long)]
    pub measure_restore: bool,
    /// The parallelisms to restore at.
    #[arg(long, value_delimiter = ',', default_values_t = [2usize, 4])]
    pub restore_parallelism: Vec<usize>,
    /// The backends to restore into (the savepoint format is the same for both).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [BackendFlag::Heap, BackendFlag::RocksDb])]
    pub restore_backends: Vec<BackendFlag>,
    /// Restores per (parallelism, backend).
    #[arg(long, default_value_t = 3)]
    pub restore_runs: usize,
}

/// The savepoint a restore measurement restores.
#[derive(Clone, Debug)]
pub struct BenchSavepoint {
    /// Its directory (path).
    pub location: String,
    /// The parallelism it was taken at.
    pub parallelism: usize,
    /// Its number of key groups.
    pub max_parallelism: usize,
    /// Keyed-state entries of the keyed operator (values, list elements' lists, map entries).
    pub entries: u64,
    /// Bytes of its keyed-state files.
    pub keyed_bytes: u64,
}

/// One restore of a [`BenchSavepoint`].
#[derive(Clone, Debug)]
pub struct RestoreRun {
    /// The parallelism restored at.
    pub parallelism: usize,
    /// The backend restored into.
    pub backend: BackendFlag,
    /// From `execute()` until the last keyed subtask's `open()` returned, i.e. until every
    /// subtask's state was loaded: reading and checking every savepoint file, starting the
    /// workers, decoding and filtering each subtask's key groups, loading them into the
    /// backend.
    pub restore_time: Duration,
    /// The whole restored job (it has no input left), including teardown.
    pub job_time: Duration,
}

/// Runs `workload` with `args` under `flags` (its parallelism and backend) once, ending in a
/// savepoint under `dir`, and describes that savepoint.
pub fn build_savepoint(
    workload: Workload,
    args: &WorkloadArgs,
    flags: &JobFlags,
    dir: &std::path::Path,
) -> Result<(Report, BenchSavepoint)> {
    let mut flags = flags.clone();
    flags.checkpoint_dir = Some(dir.to_string_lossy().into_owned());
    // Only the final checkpoint of the bounded job: one savepoint of the whole state.
    flags.checkpoint_interval_ms = Some(3_600_000);
    flags.savepoint_on_finish = Some("restore-bench".to_string());
    flags.restore = None;
    let env = StreamExecutionEnvironment::from_flags(&flags)?;
    let args = WorkloadArgs {
        checkpoint_ms: 0,
        ..args.clone()
    };
    let report = run(workload, &args, &env)?;
    let checkpoints = eddy_checkpoint::Checkpoints::open(&dir.to_string_lossy())?;
    let point = checkpoints.resolve("savepoint-restore-bench")?;
    let operator = point
        .metadata
        .operator("process")
        .ok_or_else(|| EddyError::Internal("the savepoint holds no state of \"process\"".into()))?;
    let (mut entries, mut keyed_bytes) = (0, 0);
    for subtask in &operator.subtasks {
        for file in &subtask.files {
            if file.kind == eddy_checkpoint::FileKind::KeyedState {
                let payload = point.read_part(&file.path, file.kind)?;
                keyed_bytes += file.size;
                entries += KeyedStateSnapshot::decode(&payload, &file.path)?.entry_count();
            }
        }
    }
    let savepoint = BenchSavepoint {
        location: point.location(),
        parallelism: report.parallelism,
        max_parallelism: point.metadata.max_parallelism as usize,
        entries,
        keyed_bytes,
    };
    Ok((report, savepoint))
}

/// Restores `savepoint` (of `workload` with `args`) at `parallelism` into `backend` and
/// measures how long until every keyed subtask has its state; the restored job has no
/// input left and processes nothing (checked).
pub fn restore_once(
    workload: Workload,
    args: &WorkloadArgs,
    flags: &JobFlags,
    savepoint: &BenchSavepoint,
    parallelism: usize,
    backend: BackendFlag,
) -> Result<RestoreRun> {
    let mut flags = flags.clone();
    flags.parallelism = parallelism as u64;
    flags.max_parallelism = Some(savepoint.max_parallelism as u64);
    flags.state_backend = backend;
    flags.checkpoint_dir = None;
    flags.checkpoint_interval_ms = None;
    flags.savepoint_on_finish = None;
    flags.restore = Some(savepoint.location.clone());
    let env = StreamExecutionEnvironment::from_flags(&flags)?;
    let args = WorkloadArgs {
        checkpoint_ms: 0,
        sink_rate: None,
        ..args.clone()
    };
    let probe = OpenProbe::default();
    let started = Instant::now();
    let report = run_probed(workload, &args, &env, Some(probe.clone()), 0)?;
    let opened = probe.opened();
    let last = match (opened.len() == parallelism, opened.iter().max()) {
        (true, Some(last)) => *last,
        _ => {
            return Err(EddyError::Internal(format!(
                "{} of {parallelism} keyed subtasks opened",
                opened.len()
            )))
        }
    };
    Ok(RestoreRun {
        parallelism,
        backend,
        restore_time: last.duration_since(started),
        job_time: report.job_time,
    })
}

/// The median of `values` (the lower middle one for an even count); `None` if empty.
pub fn median(values: &[Duration]) -> Option<Duration> {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len().saturating_sub(1) / 2).copied()
}

/// The peak resident set size of this process in MiB (`VmHWM`), if the OS reports it.
pub fn peak_rss_mb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use eddy::StateBackendKind;

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

    #[test]
    fn w5_and_w6_windows_account_for_every_amount() -> Result<()> {
        let env = || StreamExecutionEnvironment::new(JobConfig::with_parallelism(2));
        let args = args(30_000, 500);
        let total: u64 = (0..30_000)
            .map(|i| {
                eddy::connectors::Generator::generate(&TransactionGenerator::new(500, 42), i).amount
            })
            .sum();
        for workload in [Workload::W5, Workload::W6] {
            let report = run(workload, &args, &env())?;
            assert_eq!(report.processed, 30_000);
            assert_eq!(
                report.checksum, total,
                "{workload:?}: every amount in one window"
            );
            assert!(
                report.emitted >= 500,
                "{workload:?}: {} windows",
                report.emitted
            );
        }
        Ok(())
    }

    #[test]
    fn collections_in_value_state_give_list_and_map_state_results() -> Result<()> {
        for backend in [StateBackendKind::Heap, StateBackendKind::rocksdb()] {
            // Parallelism 1: one source split, so each customer's events arrive in the same
            // order in both runs (the emitted sums depend on it).
            let env = || {
                let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(1));
                env.state_backend(backend.clone());
                env
            };
            for (state, in_value) in [
                (Workload::W2, Workload::W2Value),
                (Workload::W3, Workload::W3Value),
            ] {
                let expected = run(state, &args(20_000, 500), &env())?;
                let got = run(in_value, &args(20_000, 500), &env())?;
                assert_eq!(got.processed, 20_000);
                assert!(expected.emitted > 0);
                assert_eq!(
                    (got.emitted, got.checksum),
                    (expected.emitted, expected.checksum),
                    "{in_value:?} on {backend:?}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn a_restore_loads_every_subtask_and_processes_nothing() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| EddyError::io("temp dir", e))?;
        let flags = JobFlags {
            parallelism: 2,
            ..JobFlags::default()
        };
        let (report, savepoint) =
            build_savepoint(Workload::W3, &args(20_000, 500), &flags, dir.path())?;
        assert_eq!(report.processed, 20_000);
        assert_eq!(savepoint.parallelism, 2);
        // 500 customers, each with at most 100 buckets and at least one.
        assert!(
            (500..=50_000).contains(&savepoint.entries),
            "{}",
            savepoint.entries
        );
        for backend in [BackendFlag::Heap, BackendFlag::RocksDb] {
            for parallelism in [2, 4] {
                let run = restore_once(
                    Workload::W3,
                    &args(20_000, 500),
                    &flags,
                    &savepoint,
                    parallelism,
                    backend,
                )?;
                assert_eq!(run.parallelism, parallelism);
                assert!(run.restore_time > Duration::ZERO);
            }
        }
        Ok(())
    }

    #[test]
    fn w4_gives_w1_results_when_nothing_expires() -> Result<()> {
        let env = || StreamExecutionEnvironment::new(JobConfig::with_parallelism(1));
        let w1 = run(Workload::W1, &args(50_000, 1_000), &env())?;
        let w4 = run(Workload::W4, &args(50_000, 1_000), &env())?;
        assert_eq!(w4.processed, 50_000);
        assert_eq!((w4.emitted, w4.checksum), (w1.emitted, w1.checksum));
        Ok(())
    }
}
