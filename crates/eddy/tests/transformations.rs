//! Stateless transformations around keyed operators, sinks, per-operator parallelism and the
//! configuration errors of a badly defined job.

// Helpers outside `#[test]` functions unwrap too: a failed step fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use eddy::prelude::*;
use eddy::SinkContext;

/// The records the source-side chain of
/// [`map_filter_and_flat_map_before_key_by_and_after_process_match_a_plain_model`] produces.
fn chained_input_model(n: u64) -> Vec<(u64, u64)> {
    (0..n)
        .filter(|i| i % 3 != 0)
        .map(|i| (i % 10, i * 2))
        .flat_map(|(key, value)| [(key, value), (key, value + 1)])
        .collect()
}

/// Keeps a running sum per key and emits `(key, value, sum)`.
#[derive(Clone)]
struct RunningSum;

impl KeyedProcessFunction for RunningSum {
    type Key = u64;
    type In = (u64, u64);
    type Out = (u64, u64, u64);
    type State = ValueState<u64>;

    fn open(&mut self, ctx: &mut OpenContext<'_, u64>) -> Result<Self::State> {
        ctx.value_state(&ValueStateDescriptor::new("sum"))
    }

    fn process_element(
        &mut self,
        sum: &mut Self::State,
        (key, value): (u64, u64),
        _ctx: &mut Context<'_, u64>,
        out: &mut Collector<'_, (u64, u64, u64)>,
    ) -> Result<()> {
        let next = sum.value()?.unwrap_or(0) + value;
        sum.update(next)?;
        out.collect((key, value, next));
        Ok(())
    }
}

#[test]
fn map_filter_and_flat_map_before_key_by_and_after_process_match_a_plain_model() {
    const N: u64 = 20_000;
    const DROPPED_KEY: u64 = 3;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(2));
    let sink_seen = Arc::clone(&seen);
    env.from_source(GeneratorSource::new(N, |i: u64| i))
        .filter(|i: &u64| i % 3 != 0)
        .map(|i: u64| (i % 10, i * 2))
        .flat_map(|(key, value): (u64, u64)| [(key, value), (key, value + 1)])
        .key_by(|record: &(u64, u64)| record.0)
        .process(RunningSum)
        // After the keyed operator, only order-independent steps (records of one key may
        // arrive in any interleaving of the two source subtasks).
        .filter(|(key, _, _): &(u64, u64, u64)| *key != DROPPED_KEY)
        .flat_map(|(key, value, sum): (u64, u64, u64)| {
            vec![(key + 100, value, sum), (key + 200, value, sum)]
        })
        .map(|(key, value, sum): (u64, u64, u64)| match key >= 200 {
            true => (key, value * 2, sum),
            false => (key, value, sum),
        })
        .for_each(move |record: (u64, u64, u64)| sink_seen.lock().unwrap().push(record));
    let outcome = env.execute("transformations").unwrap();

    let input = chained_input_model(N);
    // Stateless steps are chained: they are not operators of their own.
    let names: Vec<&str> = outcome.operators.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, vec!["source", "process", "for-each"]);
    assert_eq!(outcome.operator("source").unwrap().records_out, N);
    let process = outcome.operator("process").unwrap();
    assert_eq!(process.records_in, input.len() as u64);
    assert_eq!(process.records_out, input.len() as u64);

    let mut expected = Vec::new();
    let mut expected_totals: BTreeMap<u64, u64> = BTreeMap::new();
    for &(key, value) in input.iter().filter(|(key, _)| *key != DROPPED_KEY) {
        expected.push((key + 100, value));
        expected.push((key + 200, value * 2));
        *expected_totals.entry(key + 100).or_insert(0) += value;
        *expected_totals.entry(key + 200).or_insert(0) += value;
    }
    expected.sort_unstable();

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(
        outcome.operator("for-each").unwrap().records_in,
        expected.len() as u64
    );
    let mut totals: BTreeMap<u64, u64> = BTreeMap::new();
    for &(key, _, sum) in &seen {
        let total = totals.entry(key).or_insert(0);
        *total = (*total).max(sum);
    }
    let mut records: Vec<(u64, u64)> = seen.into_iter().map(|(k, v, _)| (k, v)).collect();
    records.sort_unstable();
    assert_eq!(records, expected);
    // The largest running sum of a key is the sum of all its values: its final state.
    assert_eq!(totals, expected_totals);
}

#[test]
fn for_each_sees_every_record_exactly_once() {
    const N: u64 = 10_000;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink_seen = Arc::clone(&seen);
    let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(2));
    env.from_source(GeneratorSource::new(N, |i: u64| i))
        .for_each(move |i: u64| sink_seen.lock().unwrap().push(i));
    env.execute("for-each").unwrap();
    let mut seen = std::mem::take(&mut *seen.lock().unwrap());
    seen.sort_unstable();
    assert_eq!(seen, (0..N).collect::<Vec<_>>());
}

/// A sink recording which subtasks opened it and what each subtask received.
#[derive(Clone, Default)]
struct RecordingSink {
    opened: Arc<Mutex<Vec<SinkContext>>>,
    received: Arc<Mutex<Vec<(usize, u64)>>>,
    closed: Arc<Mutex<Vec<usize>>>,
    subtask: Option<usize>,
}

impl Sink<(u64, u64)> for RecordingSink {
    fn open(&mut self, ctx: SinkContext) -> Result<()> {
        self.subtask = Some(ctx.subtask);
        self.opened.lock().unwrap().push(ctx);
        Ok(())
    }

    fn write(&mut self, (_, value): (u64, u64)) -> Result<()> {
        let subtask = self
            .subtask
            .ok_or_else(|| EddyError::user("written before open"))?;
        self.received.lock().unwrap().push((subtask, value));
        Ok(())
    }

    fn close(&mut self) -> Result<()> {
        self.closed
            .lock()
            .unwrap()
            .push(self.subtask.unwrap_or(usize::MAX));
        Ok(())
    }
}

#[test]
fn sink_with_parallelism_1_opens_only_subtask_0_and_receives_every_record() {
    const N: u64 = 10_000;
    let sink = RecordingSink::default();
    let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(2));
    env.from_source(GeneratorSource::new(N, |i: u64| (i, i)))
        .key_by(|record: &(u64, u64)| record.0 % 97)
        .process(Forward)
        .sink(sink.clone())
        .set_parallelism(1);
    env.execute("one-sink").unwrap();

    let opened = sink.opened.lock().unwrap().clone();
    assert_eq!(opened.len(), 1);
    assert_eq!((opened[0].subtask, opened[0].parallelism), (0, 1));
    assert_eq!(*sink.closed.lock().unwrap(), vec![0]);
    let received = std::mem::take(&mut *sink.received.lock().unwrap());
    assert!(received.iter().all(|(subtask, _)| *subtask == 0));
    let mut values: Vec<u64> = received.into_iter().map(|(_, v)| v).collect();
    values.sort_unstable();
    assert_eq!(values, (0..N).collect::<Vec<_>>());
}

/// Forwards every event and records nothing.
#[derive(Clone)]
struct Forward;

impl KeyedProcessFunction for Forward {
    type Key = u64;
    type In = (u64, u64);
    type Out = (u64, u64);
    type State = ();

    fn open(&mut self, _: &mut OpenContext<'_, u64>) -> Result<()> {
        Ok(())
    }

    fn process_element(
        &mut self,
        _: &mut (),
        event: (u64, u64),
        _ctx: &mut Context<'_, u64>,
        out: &mut Collector<'_, (u64, u64)>,
    ) -> Result<()> {
        out.collect(event);
        Ok(())
    }
}

/// Forwards every event as `(subtask, value)`.
#[derive(Clone)]
struct TagSubtask;

impl KeyedProcessFunction for TagSubtask {
    type Key = u64;
    type In = u64;
    type Out = (usize, u64);
    type State = ();

    fn open(&mut self, _: &mut OpenContext<'_, u64>) -> Result<()> {
        Ok(())
    }

    fn process_element(
        &mut self,
        _: &mut (),
        event: u64,
        ctx: &mut Context<'_, u64>,
        out: &mut Collector<'_, (usize, u64)>,
    ) -> Result<()> {
        out.collect((ctx.subtask_index(), event));
        Ok(())
    }
}

#[test]
fn source_with_parallelism_1_in_a_parallel_job_delivers_every_record_once() {
    const N: u64 = 20_000;
    let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(2));
    let results = CollectSink::new();
    env.from_source(GeneratorSource::new(N, |i: u64| i))
        .set_parallelism(1)
        .key_by(|i: &u64| *i)
        .process(TagSubtask)
        .sink(results.clone());
    let outcome = env.execute("one-source").unwrap();
    assert_eq!(outcome.operator("source").unwrap().records_out, N);
    let output = results.take();
    // The single source subtask still feeds both keyed subtasks.
    assert!(output.iter().any(|(subtask, _)| *subtask == 0));
    assert!(output.iter().any(|(subtask, _)| *subtask == 1));
    let mut values: Vec<u64> = output.into_iter().map(|(_, v)| v).collect();
    values.sort_unstable();
    assert_eq!(values, (0..N).collect::<Vec<_>>());
}

#[test]
fn source_with_parallelism_1_feeding_a_sink_directly_delivers_every_record_once() {
    const N: u64 = 20_000;
    let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(2));
    let results = CollectSink::new();
    env.from_source(GeneratorSource::new(N, |i: u64| i))
        .set_parallelism(1)
        .map(|i: u64| i + 1)
        .sink(results.clone());
    env.execute("one-source-to-sink").unwrap();
    let mut values = results.take();
    values.sort_unstable();
    assert_eq!(values, (1..=N).collect::<Vec<_>>());
}

#[test]
fn keyed_operator_with_parallelism_1_in_a_parallel_job_runs_on_subtask_0_only() {
    const N: u64 = 20_000;
    let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(2));
    let results = CollectSink::new();
    env.from_source(GeneratorSource::new(N, |i: u64| i))
        .key_by(|i: &u64| *i % 1_000)
        .process(TagSubtask)
        .set_parallelism(1)
        .sink(results.clone());
    let outcome = env.execute("one-keyed").unwrap();
    assert_eq!(outcome.operator("process").unwrap().records_in, N);
    let output = results.take();
    assert!(output.iter().all(|(subtask, _)| *subtask == 0));
    let mut values: Vec<u64> = output.into_iter().map(|(_, v)| v).collect();
    values.sort_unstable();
    assert_eq!(values, (0..N).collect::<Vec<_>>());
}

fn config_error(result: Result<JobResult>) -> String {
    match result {
        Err(EddyError::Config(message)) => message,
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[test]
fn set_parallelism_on_a_map_is_a_config_error() {
    let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(2));
    env.from_source(GeneratorSource::new(10, |i: u64| i))
        .map(|i: u64| i * 2)
        .set_parallelism(1)
        .sink(CollectSink::new());
    let message = config_error(env.execute("map-parallelism"));
    assert!(message.contains("map"), "{message}");
}

#[test]
fn set_parallelism_on_a_filter_or_flat_map_is_a_config_error() {
    let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(2));
    env.from_source(GeneratorSource::new(10, |i: u64| i))
        .filter(|i: &u64| *i > 3)
        .set_parallelism(1)
        .sink(CollectSink::new());
    let message = config_error(env.execute("filter-parallelism"));
    assert!(message.contains("filter"), "{message}");

    env.from_source(GeneratorSource::new(10, |i: u64| i))
        .flat_map(|i: u64| [i, i])
        .set_parallelism(1)
        .sink(CollectSink::new());
    let message = config_error(env.execute("flat-map-parallelism"));
    assert!(message.contains("flat_map"), "{message}");
}

#[test]
fn source_parallelism_above_the_jobs_is_a_config_error_naming_the_source() {
    let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(2));
    env.from_source_named("numbers", GeneratorSource::new(10, |i: u64| i))
        .set_parallelism(5)
        .sink(CollectSink::new());
    let message = config_error(env.execute("too-parallel"));
    assert!(message.contains("\"numbers\""), "{message}");
    assert!(message.contains('5'), "{message}");
}

#[test]
fn keyed_operator_parallelism_above_the_jobs_is_a_config_error_naming_it() {
    let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(2));
    env.from_source(GeneratorSource::new(10, |i: u64| i))
        .key_by(|i: &u64| *i)
        .process_named("tagger", TagSubtask)
        .set_parallelism(5)
        .sink(CollectSink::new());
    let message = config_error(env.execute("too-parallel"));
    assert!(message.contains("\"tagger\""), "{message}");
}

#[test]
fn sink_parallelism_above_the_jobs_is_a_config_error_naming_the_sink() {
    let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(2));
    env.from_source(GeneratorSource::new(10, |i: u64| i))
        .sink_named("results", CollectSink::new())
        .set_parallelism(5);
    let message = config_error(env.execute("too-parallel"));
    assert!(message.contains("\"results\""), "{message}");
}

#[test]
fn zero_parallelism_of_an_operator_is_a_config_error() {
    let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(2));
    env.from_source_named("numbers", GeneratorSource::new(10, |i: u64| i))
        .set_parallelism(0)
        .sink(CollectSink::new());
    let message = config_error(env.execute("zero"));
    assert!(message.contains("\"numbers\""), "{message}");
}

#[test]
fn job_without_a_sink_is_a_config_error() {
    let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(2));
    let _unused = env
        .from_source(GeneratorSource::new(10, |i: u64| i))
        .map(|i: u64| i + 1);
    let message = config_error(env.execute("no-sink"));
    assert!(message.contains("no sink"), "{message}");
    assert!(message.contains("no-sink"), "{message}");
}

#[test]
fn environment_runs_the_next_job_after_a_config_error() {
    let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(2));
    env.from_source(GeneratorSource::new(10, |i: u64| i))
        .map(|i: u64| i)
        .set_parallelism(1)
        .sink(CollectSink::new());
    config_error(env.execute("bad"));

    let results = CollectSink::new();
    env.from_source(GeneratorSource::new(10, |i: u64| i))
        .sink(results.clone());
    let outcome = env.execute("good").unwrap();
    // The failed job's operators are gone: names start afresh.
    let names: Vec<&str> = outcome.operators.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, vec!["source", "sink"]);
    let mut values = results.take();
    values.sort_unstable();
    assert_eq!(values, (0..10).collect::<Vec<_>>());
}

#[test]
fn operators_with_the_same_name_are_made_unique() {
    let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(1));
    let first = CollectSink::new();
    let second = CollectSink::new();
    env.from_source(GeneratorSource::new(5, |i: u64| i))
        .key_by(|i: &u64| *i)
        .process_named("step", TagSubtask)
        .sink(first.clone());
    env.from_source(GeneratorSource::new(7, |i: u64| i))
        .key_by(|i: &u64| *i)
        .process_named("step", TagSubtask)
        .sink(second.clone());
    let outcome = env.execute("two-pipelines").unwrap();
    let names: Vec<&str> = outcome.operators.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(
        names,
        vec!["source", "step", "sink", "source-2", "step-2", "sink-2"]
    );
    assert_eq!(outcome.operator("step").unwrap().records_in, 5);
    assert_eq!(outcome.operator("step-2").unwrap().records_in, 7);
    assert_eq!((first.len(), second.len()), (5, 7));
}

#[test]
fn empty_and_tiny_sources_finish_and_deliver_every_record() {
    for (parallelism, n) in [(2, 0), (4, 1), (3, 2)] {
        let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(parallelism));
        let results = CollectSink::new();
        env.from_source(GeneratorSource::new(n, |i: u64| i))
            .key_by(|i: &u64| *i)
            .process(TagSubtask)
            .sink(results.clone());
        let outcome = env.execute("tiny").unwrap();
        assert_eq!(outcome.operator("process").unwrap().records_in, n);
        let mut values: Vec<u64> = results.take().into_iter().map(|(_, v)| v).collect();
        values.sort_unstable();
        assert_eq!(values, (0..n).collect::<Vec<_>>(), "p {parallelism}, n {n}");
    }
}

#[test]
fn source_1_keyed_2_and_sink_1_in_a_job_of_parallelism_3_deliver_every_record() {
    const N: u64 = 10_000;
    let sink = RecordingSink::default();
    let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(3));
    env.from_source(GeneratorSource::new(N, |i: u64| i))
        .set_parallelism(1)
        .key_by(|i: &u64| *i % 1_000)
        .process(TagSubtask)
        .set_parallelism(2)
        .map(|(subtask, value): (usize, u64)| (subtask as u64, value))
        .sink(sink.clone())
        .set_parallelism(1);
    env.execute("mixed").unwrap();
    let opened = sink.opened.lock().unwrap().clone();
    assert_eq!(opened.len(), 1);
    assert_eq!((opened[0].subtask, opened[0].parallelism), (0, 1));
    let mut values: Vec<u64> = std::mem::take(&mut *sink.received.lock().unwrap())
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    values.sort_unstable();
    assert_eq!(values, (0..N).collect::<Vec<_>>());
}
