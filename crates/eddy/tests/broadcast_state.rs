//! The broadcast state pattern end to end: a rules stream broadcast to a keyed event stream.
//!
//! There is no ordering between the broadcast and the keyed input (as in Flink), so every job
//! here is built to give the same output whatever the interleaving: events wait in keyed
//! state until their rule exists, or the broadcast commands are only released once every
//! event has been processed.

// Helpers outside `#[test]` functions unwrap too: a failed step fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use eddy::layers::core::JobFailure;
use eddy::prelude::*;
use eddy::{SourceContext, SourceReader, SourceStatus};
use serde::{Deserialize, Serialize};

/// How long a job may take before the test declares it hung.
const WATCHDOG: Duration = Duration::from_secs(60);

/// Runs `job` on its own thread; fails the test if it does not return within [`WATCHDOG`].
fn run_with_watchdog<F>(job: F) -> Result<JobResult>
where
    F: FnOnce() -> Result<JobResult> + Send + 'static,
{
    let (done, result) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(job());
    });
    match result.recv_timeout(WATCHDOG) {
        Ok(result) => result,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("the job hung for {WATCHDOG:?}"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the job thread panicked"),
    }
}

/// The failure of a job that should have failed.
fn job_failure(result: Result<JobResult>) -> Box<JobFailure> {
    match result {
        Err(EddyError::Job(failure)) => failure,
        other => panic!("expected a job failure, got {other:?}"),
    }
}

const EVENTS: u64 = 5_000;
const KEYS: u64 = 50;
/// Keys `0..RULED_KEYS` get a rule; the others never do, so their events never alert.
const RULED_KEYS: u64 = 40;

/// Event `i`: a `(key, value)` pair.
fn event(i: u64) -> (u64, u64) {
    (i % KEYS, (i * 7919) % 1000)
}

/// The rule of `key`: alert on values above `threshold`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Rule {
    key: u64,
    threshold: u64,
}

fn rule(key: u64) -> Rule {
    Rule {
        key,
        threshold: key * 20,
    }
}

/// What the threshold job emits.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
enum Out {
    /// An event whose value is above its key's threshold.
    Alert { key: u64, value: u64 },
    /// Subtask `subtask` processed the rule of key `rule`.
    RuleSeen { subtask: usize, rule: u64 },
}

fn thresholds() -> MapStateDescriptor<u64, u64> {
    MapStateDescriptor::new("thresholds")
}

/// Alerts on events above their key's threshold. An event whose rule has not arrived yet
/// waits in the keyed list state "pending"; the rule's arrival releases them.
#[derive(Clone)]
struct ThresholdAlerts;

impl KeyedBroadcastProcessFunction for ThresholdAlerts {
    type Key = u64;
    type In = (u64, u64);
    type BroadcastIn = Rule;
    type Out = Out;
    type State = ListState<u64>;

    fn open(&mut self, ctx: &mut OpenContext<'_, u64>) -> Result<ListState<u64>> {
        ctx.list_state(&ListStateDescriptor::new("pending"))
    }

    fn process_element(
        &mut self,
        pending: &mut ListState<u64>,
        (key, value): (u64, u64),
        ctx: &mut ReadOnlyBroadcastContext<'_, u64>,
        out: &mut Collector<'_, Out>,
    ) -> Result<()> {
        assert_eq!(*ctx.current_key(), key);
        match ctx.broadcast_state(&thresholds())?.get(&key)? {
            Some(threshold) if value > threshold => out.collect(Out::Alert { key, value }),
            Some(_) => {}
            None => pending.add(value)?,
        }
        Ok(())
    }

    fn process_broadcast_element(
        &mut self,
        pending: &mut ListState<u64>,
        rule: Rule,
        ctx: &mut BroadcastContext<'_, u64>,
        out: &mut Collector<'_, Out>,
    ) -> Result<()> {
        ctx.broadcast_state(&thresholds())?
            .put(rule.key, rule.threshold)?;
        out.collect(Out::RuleSeen {
            subtask: ctx.subtask_index(),
            rule: rule.key,
        });
        ctx.apply_to_keyed_state("pending", |key| {
            if *key != rule.key {
                return Ok(());
            }
            let values: Vec<u64> = pending.get()?.collect();
            for value in values.into_iter().filter(|v| *v > rule.threshold) {
                out.collect(Out::Alert { key: *key, value });
            }
            pending.clear()
        })
    }
}

/// Runs the threshold job at `parallelism`; returns its alerts (sorted) and, per subtask, the
/// rules it saw.
fn run_thresholds(parallelism: usize) -> (Vec<Out>, BTreeMap<usize, BTreeSet<u64>>) {
    let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(parallelism));
    let results = CollectSink::new();
    // The rules come from every source subtask, so each operator subtask merges several
    // upstream broadcast channels.
    let rules = env
        .from_source_named("rules", GeneratorSource::new(RULED_KEYS, rule))
        .broadcast(thresholds());
    env.from_source_named("events", GeneratorSource::new(EVENTS, event))
        .key_by(|e: &(u64, u64)| e.0)
        .connect(rules)
        .process_named("alerts", ThresholdAlerts)
        .sink(results.clone());
    let outcome = env.execute("thresholds").unwrap();
    let records_in = outcome.operator("alerts").unwrap().records_in;
    assert_eq!(records_in, EVENTS + RULED_KEYS * parallelism as u64);

    let mut alerts = Vec::new();
    let mut seen: BTreeMap<usize, BTreeSet<u64>> = BTreeMap::new();
    for out in results.take() {
        match out {
            Out::RuleSeen { subtask, rule } => {
                assert!(
                    seen.entry(subtask).or_default().insert(rule),
                    "rule {rule} twice"
                );
            }
            alert => alerts.push(alert),
        }
    }
    alerts.sort();
    (alerts, seen)
}

fn expected_alerts() -> Vec<Out> {
    let mut alerts: Vec<Out> = (0..EVENTS)
        .map(event)
        .filter(|&(key, value)| key < RULED_KEYS && value > rule(key).threshold)
        .map(|(key, value)| Out::Alert { key, value })
        .collect();
    alerts.sort();
    alerts
}

#[test]
fn broadcast_rules_give_the_same_alerts_at_parallelism_1_2_and_3() {
    let expected = expected_alerts();
    assert!(expected.len() > 1000, "the test should alert often");
    for parallelism in 1..=3 {
        let (alerts, _) = run_thresholds(parallelism);
        assert_eq!(alerts.len(), expected.len(), "parallelism {parallelism}");
        assert_eq!(alerts, expected, "parallelism {parallelism}");
    }
}

#[test]
fn every_subtask_sees_every_rule() {
    let all: BTreeSet<u64> = (0..RULED_KEYS).collect();
    for parallelism in [2, 3] {
        let (_, seen) = run_thresholds(parallelism);
        assert_eq!(seen.len(), parallelism);
        for (subtask, rules) in seen {
            assert_eq!(rules, all, "subtask {subtask} at parallelism {parallelism}");
        }
    }
}

/// A command on the broadcast side of the counting job.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Command {
    /// Multiply every key's count by this factor.
    Scale(u64),
    /// Emit every key's count.
    Report,
}

/// A source emitting `commands` (from one subtask) only once `processed` has reached
/// `expected`: every event has been processed by then, so the commands see every key.
#[derive(Clone)]
struct AfterEvents {
    processed: Arc<AtomicU64>,
    expected: u64,
    commands: Vec<Command>,
}

struct AfterEventsReader {
    source: Option<AfterEvents>,
}

impl Source for AfterEvents {
    type Item = Command;
    type Reader = AfterEventsReader;

    fn create_reader(&self, ctx: SourceContext) -> Result<AfterEventsReader> {
        Ok(AfterEventsReader {
            source: (ctx.subtask == 0).then(|| self.clone()),
        })
    }
}

impl SourceReader for AfterEventsReader {
    type Item = Command;

    fn poll(&mut self, out: &mut Vec<Command>, _max: usize) -> Result<SourceStatus> {
        let Some(source) = &self.source else {
            return Ok(SourceStatus::Finished);
        };
        if source.processed.load(Ordering::SeqCst) < source.expected {
            return Ok(SourceStatus::More); // nothing yet: polled again shortly
        }
        out.extend(source.commands.iter().cloned());
        Ok(SourceStatus::Finished)
    }
}

/// Counts events per key; the broadcast commands rescale and report the counts of all keys
/// through `apply_to_keyed_state`.
#[derive(Clone)]
struct ScaledCounts {
    processed: Arc<AtomicU64>,
}

impl KeyedBroadcastProcessFunction for ScaledCounts {
    type Key = u64;
    type In = (u64, u64);
    type BroadcastIn = Command;
    type Out = (u64, u64);
    type State = ValueState<u64>;

    fn open(&mut self, ctx: &mut OpenContext<'_, u64>) -> Result<ValueState<u64>> {
        ctx.value_state(&ValueStateDescriptor::new("count"))
    }

    fn process_element(
        &mut self,
        count: &mut ValueState<u64>,
        _event: (u64, u64),
        _ctx: &mut ReadOnlyBroadcastContext<'_, u64>,
        _out: &mut Collector<'_, (u64, u64)>,
    ) -> Result<()> {
        count.update(count.value()?.unwrap_or(0) + 1)?;
        self.processed.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn process_broadcast_element(
        &mut self,
        count: &mut ValueState<u64>,
        command: Command,
        ctx: &mut BroadcastContext<'_, u64>,
        out: &mut Collector<'_, (u64, u64)>,
    ) -> Result<()> {
        ctx.apply_to_keyed_state("count", |key| {
            let current = count.value()?.unwrap_or(0);
            match command {
                Command::Scale(factor) => count.update(current * factor),
                Command::Report => {
                    out.collect((*key, current));
                    Ok(())
                }
            }
        })
    }
}

#[test]
fn apply_to_keyed_state_changes_the_state_of_every_key() {
    for parallelism in 1..=3 {
        let results = CollectSink::new();
        let sink = results.clone();
        run_with_watchdog(move || {
            let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(parallelism));
            let processed = Arc::new(AtomicU64::new(0));
            let commands = AfterEvents {
                processed: Arc::clone(&processed),
                expected: EVENTS,
                commands: vec![Command::Scale(10), Command::Report],
            };
            let commands = env
                .from_source_named("commands", commands)
                .broadcast(MapStateDescriptor::<u64, u64>::new("unused"));
            env.from_source_named("events", GeneratorSource::new(EVENTS, event))
                .key_by(|e: &(u64, u64)| e.0)
                .connect(commands)
                .process_named("counts", ScaledCounts { processed })
                .sink(sink);
            env.execute("scaled-counts")
        })
        .unwrap();

        let mut reported = results.take();
        reported.sort();
        let expected: Vec<(u64, u64)> = (0..KEYS).map(|key| (key, EVENTS / KEYS * 10)).collect();
        assert_eq!(reported, expected, "parallelism {parallelism}");
    }
}

/// Fails on a poisoned rule, or panics on a poisoned event.
#[derive(Clone)]
struct Poisoned {
    panic_on_event: bool,
}

impl KeyedBroadcastProcessFunction for Poisoned {
    type Key = u64;
    type In = (u64, u64);
    type BroadcastIn = Rule;
    type Out = u64;
    type State = ();

    fn open(&mut self, _ctx: &mut OpenContext<'_, u64>) -> Result<()> {
        Ok(())
    }

    fn process_element(
        &mut self,
        _state: &mut (),
        (key, _): (u64, u64),
        _ctx: &mut ReadOnlyBroadcastContext<'_, u64>,
        out: &mut Collector<'_, u64>,
    ) -> Result<()> {
        if self.panic_on_event && key == 7 {
            panic!("deliberate panic on key 7 (expected by the test)");
        }
        out.collect(key);
        Ok(())
    }

    fn process_broadcast_element(
        &mut self,
        _state: &mut (),
        rule: Rule,
        _ctx: &mut BroadcastContext<'_, u64>,
        _out: &mut Collector<'_, u64>,
    ) -> Result<()> {
        if !self.panic_on_event && rule.key == 3 {
            return Err(EddyError::user("rule 3 is poisoned"));
        }
        Ok(())
    }
}

fn run_poisoned(panic_on_event: bool) -> Box<JobFailure> {
    job_failure(run_with_watchdog(move || {
        let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(2));
        let rules = env
            .from_source_named("rules", GeneratorSource::new(RULED_KEYS, rule))
            .broadcast(thresholds());
        env.from_source_named("events", GeneratorSource::new(EVENTS, event))
            .key_by(|e: &(u64, u64)| e.0)
            .connect(rules)
            .process_named("rules-engine", Poisoned { panic_on_event })
            .sink(CollectSink::new());
        env.execute("poisoned")
    }))
}

#[test]
fn an_error_in_process_broadcast_element_fails_the_job_naming_the_operator() {
    let failure = run_poisoned(false);
    assert_eq!(failure.job, "poisoned");
    assert_eq!(failure.operator, "rules-engine");
    let message = EddyError::Job(failure).to_string();
    assert!(message.contains("rule 3 is poisoned"), "{message}");
}

#[test]
fn a_panic_in_process_element_fails_the_job_naming_the_operator() {
    let failure = run_poisoned(true);
    assert_eq!(failure.operator, "rules-engine");
    assert!(
        matches!(failure.source, EddyError::User(_)),
        "{}",
        failure.source
    );
    let message = EddyError::Job(failure).to_string();
    assert!(message.contains("deliberate panic on key 7"), "{message}");
}

/// Reads the broadcast state with the wrong value type.
#[derive(Clone)]
struct WrongType;

impl KeyedBroadcastProcessFunction for WrongType {
    type Key = u64;
    type In = (u64, u64);
    type BroadcastIn = Rule;
    type Out = u64;
    type State = ();

    fn open(&mut self, _ctx: &mut OpenContext<'_, u64>) -> Result<()> {
        Ok(())
    }

    fn process_element(
        &mut self,
        _state: &mut (),
        _event: (u64, u64),
        _ctx: &mut ReadOnlyBroadcastContext<'_, u64>,
        _out: &mut Collector<'_, u64>,
    ) -> Result<()> {
        Ok(())
    }

    fn process_broadcast_element(
        &mut self,
        _state: &mut (),
        rule: Rule,
        ctx: &mut BroadcastContext<'_, u64>,
        _out: &mut Collector<'_, u64>,
    ) -> Result<()> {
        // Registered as `<u64, u64>` by `broadcast(thresholds())`.
        let wrong = MapStateDescriptor::<u64, String>::new("thresholds");
        ctx.broadcast_state(&wrong)?.put(rule.key, "x".into())
    }
}

#[test]
fn a_broadcast_state_of_the_wrong_type_is_a_clear_error() {
    let failure = job_failure(run_with_watchdog(|| {
        let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(2));
        let rules = env
            .from_source_named("rules", GeneratorSource::new(RULED_KEYS, rule))
            .broadcast(thresholds());
        env.from_source_named("events", GeneratorSource::new(100, event))
            .key_by(|e: &(u64, u64)| e.0)
            .connect(rules)
            .process_named("wrong-type", WrongType)
            .sink(CollectSink::new());
        env.execute("wrong-type")
    }));
    assert_eq!(failure.operator, "wrong-type");
    match &failure.source {
        EddyError::State { state, reason } => {
            assert_eq!(state, "thresholds");
            assert!(reason.contains("already registered"), "{reason}");
            assert!(reason.contains("String"), "{reason}");
        }
        other => panic!("expected a state error, got {other}"),
    }
}

#[test]
fn two_broadcast_states_with_one_name_and_two_types_fail_at_open() {
    let failure = job_failure(run_with_watchdog(|| {
        let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(2));
        let rules = env
            .from_source_named("rules", GeneratorSource::new(RULED_KEYS, rule))
            .broadcast(thresholds())
            .with_state(MapStateDescriptor::<String, u64>::new("thresholds"));
        env.from_source_named("events", GeneratorSource::new(100, event))
            .key_by(|e: &(u64, u64)| e.0)
            .connect(rules)
            .process_named("clash", ThresholdAlerts)
            .sink(CollectSink::new());
        env.execute("clash")
    }));
    assert_eq!(failure.operator, "clash");
    assert!(
        matches!(&failure.source, EddyError::State { state, .. } if state == "thresholds"),
        "{}",
        failure.source
    );
}
