//! Event time and timers end to end: timestamps and watermarks from a `WatermarkStrategy`,
//! event-time and processing-time timers with `on_timer` scoped to the timer's key, the
//! minimum watermark over several inputs, and idle inputs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eddy::prelude::*;
use eddy::{ManualClock, ProcessingClock, StateBackendKind};
use eddy::{TimeDomain, MAX_WATERMARK};

mod common;

use common::{events, Event, ScriptedSource, Step};

/// What `on_timer` saw.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Fired {
    key: String,
    time: u64,
    /// The key stored in the timer key's state when it was registered.
    state_key: Option<String>,
    timestamp: Option<u64>,
    event_time: bool,
    watermark: u64,
    now: u64,
}

/// Registers an event-time timer at the end of each event's 100 ms slot (so several events of
/// a key share one timer) and, if `processing_delay` is set, a processing-time timer at
/// `now + delay`; stores the key in the key's state. `on_timer` emits what it saw.
#[derive(Clone)]
struct TimerProbe {
    processing_delay: Option<u64>,
}

impl KeyedProcessFunction for TimerProbe {
    type Key = String;
    type In = Event;
    type Out = Fired;
    type State = ValueState<String>;

    fn open(&mut self, ctx: &mut OpenContext<'_, String>) -> eddy::Result<ValueState<String>> {
        ctx.value_state(&ValueStateDescriptor::new("key"))
    }

    fn process_element(
        &mut self,
        key: &mut ValueState<String>,
        event: Event,
        ctx: &mut Context<'_, String>,
        _out: &mut Collector<'_, Fired>,
    ) -> eddy::Result<()> {
        key.update(ctx.current_key().clone())?;
        assert_eq!(ctx.timestamp(), Some(event.1), "the assigner's timestamp");
        let slot_end = event.1 - event.1 % 100 + 99;
        ctx.timer_service().register_event_time_timer(slot_end)?;
        if let Some(delay) = self.processing_delay {
            let at = ctx.timer_service().current_processing_time() + delay;
            ctx.timer_service().register_processing_time_timer(at)?;
            ctx.timer_service().register_processing_time_timer(at)?;
        }
        Ok(())
    }

    fn on_timer(
        &mut self,
        key: &mut ValueState<String>,
        time: u64,
        ctx: &mut OnTimerContext<'_, String>,
        out: &mut Collector<'_, Fired>,
    ) -> eddy::Result<()> {
        out.collect(Fired {
            key: ctx.current_key().clone(),
            time,
            state_key: key.value()?,
            timestamp: ctx.timestamp(),
            event_time: ctx.time_domain() == Some(TimeDomain::EventTime),
            watermark: ctx.timer_service().current_watermark(),
            now: ctx.timer_service().current_processing_time(),
        });
        Ok(())
    }
}

fn monotonous() -> WatermarkStrategy<Event> {
    WatermarkStrategy::for_monotonous_timestamps().with_timestamp_assigner(|e: &Event| e.1)
}

fn run_probe(
    source: ScriptedSource,
    strategy: WatermarkStrategy<Event>,
    parallelism: usize,
    config: JobConfig,
    probe: TimerProbe,
) -> Vec<Fired> {
    let env = StreamExecutionEnvironment::new(config);
    env.set_parallelism(parallelism);
    let sink = CollectSink::new();
    env.from_source(source)
        .assign_timestamps_and_watermarks(strategy)
        .key_by(|e: &Event| e.0.clone())
        .process(probe)
        .sink(sink.clone());
    env.execute("event-time").expect("job runs");
    sink.take()
}

#[test]
fn event_time_timers_fire_once_per_key_and_time_in_order_with_the_key_scoped() {
    for backend in [StateBackendKind::Heap, StateBackendKind::rocksdb()] {
        let script = vec![vec![
            Step::Emit(events("a", [5, 20, 99])),
            Step::Emit(events("b", [120, 150])),
            Step::Emit(events("a", [160, 199])),
            Step::Emit(events("c", [230])),
        ]];
        let config = JobConfig {
            state_backend: backend.clone(),
            ..JobConfig::default()
        };
        let fired = run_probe(
            ScriptedSource::new(script, None),
            monotonous(),
            1,
            config,
            TimerProbe {
                processing_delay: None,
            },
        );
        let times: Vec<u64> = fired.iter().map(|f| f.time).collect();
        assert!(
            times.windows(2).all(|w| w[0] <= w[1]),
            "fired in time order: {times:?}"
        );
        let mut seen: Vec<(String, u64)> = fired.iter().map(|f| (f.key.clone(), f.time)).collect();
        seen.sort_by_key(|(key, time)| (*time, key.clone()));
        assert_eq!(
            seen,
            vec![
                ("a".to_string(), 99),
                ("a".to_string(), 199),
                ("b".to_string(), 199),
                ("c".to_string(), 299),
            ],
            "deduplicated per (key, time) ({backend:?})"
        );
        for f in &fired {
            assert_eq!(
                f.state_key.as_deref(),
                Some(f.key.as_str()),
                "state scoped to the timer's key"
            );
            assert_eq!(f.timestamp, Some(f.time));
            assert!(f.event_time);
            assert!(
                f.watermark >= f.time,
                "fired only once the watermark reached it: {f:?}"
            );
        }
    }
}

#[test]
fn timers_fire_with_the_same_result_at_parallelism_1_2_and_4() {
    let keys = ["k0", "k1", "k2", "k3", "k4", "k5", "k6"];
    let mut results = Vec::new();
    for parallelism in [1, 2, 4] {
        // Every subtask gets the same script; timestamps grow per subtask.
        let script: Vec<Step> = (0..20u64)
            .map(|i| Step::Emit(events(keys[(i % 7) as usize], [i * 37])))
            .collect();
        let fired = run_probe(
            ScriptedSource::new(vec![script; parallelism], None),
            monotonous(),
            parallelism,
            JobConfig::default(),
            TimerProbe {
                processing_delay: None,
            },
        );
        let mut by_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for f in fired {
            by_key.entry(f.key).or_default().push(f.time);
        }
        for times in by_key.values_mut() {
            let sorted = {
                let mut t = times.clone();
                t.sort_unstable();
                t
            };
            assert_eq!(*times, sorted, "a key's timers fire in time order");
        }
        results.push(by_key);
    }
    assert_eq!(results[0], results[1]);
    assert_eq!(results[0], results[2]);
}

#[test]
fn processing_time_timers_follow_the_injected_clock() {
    let clock = Arc::new(ManualClock::new(1_000));
    let script = vec![vec![
        Step::Emit(events("a", [1])),
        Step::Emit(events("b", [2])),
        // Lets the keyed operator register its timers before the clock moves.
        Step::StayOpen(Duration::from_millis(100)),
        Step::SetClock(1_400),
        Step::StayOpen(Duration::from_millis(100)),
        Step::SetClock(1_600),
        Step::StayOpen(Duration::from_millis(300)),
    ]];
    let config = JobConfig {
        clock: ProcessingClock(clock.clone()),
        ..JobConfig::default()
    };
    let fired = run_probe(
        ScriptedSource::new(script, Some(clock)),
        monotonous(),
        1,
        config,
        TimerProbe {
            processing_delay: Some(500),
        },
    );
    let mut processing: Vec<(String, u64)> = fired
        .iter()
        .filter(|f| !f.event_time)
        .map(|f| (f.key.clone(), f.time))
        .collect();
    processing.sort();
    assert_eq!(
        processing,
        vec![("a".to_string(), 1_500), ("b".to_string(), 1_500)],
        "once per key although registered twice"
    );
    for f in fired.iter().filter(|f| !f.event_time) {
        assert!(
            f.now >= 1_500,
            "fired only once the clock reached it: {f:?}"
        );
        assert_eq!(f.state_key.as_deref(), Some(f.key.as_str()));
    }
}

/// A subtask that emits `count` events of `key`, `step` ms of event time apart from `start`,
/// one every 20 ms of wall time.
fn trickle(key: &str, start: u64, step: u64, count: u64) -> Vec<Step> {
    (0..count)
        .flat_map(|i| {
            [
                Step::Emit(events(key, [start + i * step])),
                Step::StayOpen(Duration::from_millis(20)),
            ]
        })
        .collect()
}

/// Subtasks 0 and 1 trickle events far ahead in event time for about a second; subtask 2
/// sends one early event and stays open for 400 ms. Returns what fired and whether subtask 2
/// had ended when the timer of subtask 1's first slot (5099) fired.
fn three_inputs(strategy: WatermarkStrategy<Event>) -> (Vec<Fired>, bool) {
    let script = vec![
        trickle("fast", 10_000, 100, 50),
        trickle("middle", 5_000, 10, 50),
        vec![
            Step::Emit(events("slow", [150])),
            Step::StayOpen(Duration::from_millis(400)),
        ],
    ];
    let source = ScriptedSource::new(script, None);
    let ended = Arc::clone(&source.ended);
    let slow_ended_at_fire = Arc::new(Mutex::new(None));
    let seen = Arc::clone(&slow_ended_at_fire);
    let env = StreamExecutionEnvironment::new(JobConfig::default());
    env.set_parallelism(3);
    let sink = CollectSink::new();
    env.from_source(source)
        .assign_timestamps_and_watermarks(strategy)
        .key_by(|e: &Event| e.0.clone())
        .process(TimerProbe {
            processing_delay: None,
        })
        .set_parallelism(1)
        .map(move |f: Fired| {
            if f.key == "middle" && f.time == 5_099 {
                let mut seen = seen.lock().expect("lock");
                seen.get_or_insert(ended[2].load(Ordering::SeqCst));
            }
            f
        })
        .sink(sink.clone());
    env.execute("three-inputs").expect("job runs");
    let ended_at_fire = slow_ended_at_fire.lock().expect("lock").unwrap_or(true);
    (sink.take(), ended_at_fire)
}

#[test]
fn the_watermark_is_the_minimum_over_three_inputs() {
    let (fired, slow_had_ended) = three_inputs(monotonous());
    assert!(
        slow_had_ended,
        "the slow input holds the watermark at 149 until it ends"
    );
    let slow = fired.iter().find(|f| f.key == "slow").expect("slow fired");
    assert_eq!(slow.time, 199);
    for f in &fired {
        assert!(f.watermark >= f.time);
    }
    let keys: std::collections::BTreeSet<_> = fired.iter().map(|f| f.key.as_str()).collect();
    assert_eq!(keys.len(), 3);
}

#[test]
fn an_idle_input_does_not_stall_the_others() {
    let (fired, slow_had_ended) =
        three_inputs(monotonous().with_idleness(Duration::from_millis(50)));
    assert!(
        !slow_had_ended,
        "with idleness the middle input's timers fire while the slow input is still open"
    );
    let middle = fired
        .iter()
        .find(|f| f.key == "middle" && f.time == 5_099)
        .expect("fired");
    assert!(
        middle.watermark < MAX_WATERMARK,
        "fired by a real watermark, not the end"
    );
    assert_eq!(fired.iter().filter(|f| f.key == "slow").count(), 1);
}

#[test]
fn records_without_a_timestamp_assigner_are_an_error_naming_the_fix() {
    let env = StreamExecutionEnvironment::new(JobConfig::default());
    let sink = CollectSink::new();
    env.from_source(ScriptedSource::new(
        vec![vec![Step::Emit(events("a", [1]))]],
        None,
    ))
    .assign_timestamps_and_watermarks(WatermarkStrategy::for_monotonous_timestamps())
    .key_by(|e: &Event| e.0.clone())
    .process(TimerProbe {
        processing_delay: None,
    })
    .sink(sink.clone());
    let error = env
        .execute("no-assigner")
        .expect_err("must fail")
        .to_string();
    assert!(error.contains("with_timestamp_assigner"), "{error}");
}

/// Emits, per event, what the key's event-time TTL state held before the event.
#[derive(Clone)]
struct RememberLast;

impl KeyedProcessFunction for RememberLast {
    type Key = String;
    type In = Event;
    type Out = (String, u64, Option<u64>);
    type State = ValueState<u64>;

    fn open(&mut self, ctx: &mut OpenContext<'_, String>) -> eddy::Result<ValueState<u64>> {
        let ttl = StateTtlConfig::new(Duration::from_millis(100)).event_time();
        ctx.value_state(&ValueStateDescriptor::new("last").enable_ttl(ttl))
    }

    fn process_element(
        &mut self,
        last: &mut ValueState<u64>,
        event: Event,
        ctx: &mut Context<'_, String>,
        out: &mut Collector<'_, (String, u64, Option<u64>)>,
    ) -> eddy::Result<()> {
        out.collect((ctx.current_key().clone(), event.1, last.value()?));
        last.update(event.1)
    }
}

#[test]
fn event_time_ttl_expires_state_as_the_watermark_passes() {
    for backend in [StateBackendKind::Heap, StateBackendKind::rocksdb()] {
        let script = vec![vec![
            Step::Emit(events("a", [10])),
            Step::Emit(events("b", [50])),
            Step::StayOpen(Duration::from_millis(50)),
            // Watermark 49: a's value (written at watermark 0) is still live.
            Step::Emit(events("a", [60])),
            Step::Emit(events("z", [1_000])),
            Step::StayOpen(Duration::from_millis(50)),
            // Watermark 999: a's value (written at watermark 49) has expired.
            Step::Emit(events("a", [1_010])),
        ]];
        let env = StreamExecutionEnvironment::new(JobConfig {
            state_backend: backend.clone(),
            ..JobConfig::default()
        });
        let sink = CollectSink::new();
        env.from_source(ScriptedSource::new(script, None))
            .assign_timestamps_and_watermarks(monotonous())
            .key_by(|e: &Event| e.0.clone())
            .process(RememberLast)
            .sink(sink.clone());
        env.execute("event-time-ttl").unwrap();
        let a: Vec<_> = sink.take().into_iter().filter(|r| r.0 == "a").collect();
        assert_eq!(
            a,
            vec![
                ("a".to_string(), 10, None),
                ("a".to_string(), 60, Some(10)),
                ("a".to_string(), 1_010, None),
            ],
            "{backend:?}"
        );
    }
}
