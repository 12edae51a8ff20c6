//! Windows on keyed state end to end: tumbling, sliding and session windows with reduce,
//! aggregate and process functions, on both backends and at several parallelisms, checked
//! against a plain model; allowed lateness and the late-data side output.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{events, Event, ScriptedSource, Step};
use eddy::prelude::*;
use eddy::StateBackendKind;

/// (key, timestamp, amount): amount = timestamp % 97, so sums check which events landed where.
type Sale = (u32, u64, u64);

fn sale(i: u64) -> Sale {
    // Timestamps grow with the index, so each source split is in order.
    ((i * 7919 % 13) as u32, 1_000 + i * 3, i % 97)
}

fn backends() -> [StateBackendKind; 2] {
    [StateBackendKind::Heap, StateBackendKind::rocksdb()]
}

fn env(parallelism: usize, backend: &StateBackendKind) -> StreamExecutionEnvironment {
    let env = StreamExecutionEnvironment::new(JobConfig {
        state_backend: backend.clone(),
        ..JobConfig::default()
    });
    env.set_parallelism(parallelism);
    env
}

fn sales_stream(env: &StreamExecutionEnvironment, n: u64) -> DataStream<Sale> {
    env.from_source(GeneratorSource::new(n, sale))
        .assign_timestamps_and_watermarks(
            WatermarkStrategy::for_monotonous_timestamps().with_timestamp_assigner(|s: &Sale| s.1),
        )
}

#[test]
fn tumbling_reduce_matches_the_model_at_parallelism_1_2_4_on_both_backends() {
    const N: u64 = 3_000;
    const SIZE: u64 = 100;
    let mut model: BTreeMap<(u32, u64), u64> = BTreeMap::new();
    for i in 0..N {
        let (key, ts, amount) = sale(i);
        *model.entry((key, ts - ts % SIZE)).or_default() += amount;
    }
    for backend in backends() {
        for parallelism in [1, 2, 4] {
            let env = env(parallelism, &backend);
            let sink = CollectSink::new();
            sales_stream(&env, N)
                .key_by(|s: &Sale| s.0)
                .window(WindowAssigner::tumbling_event_time(Duration::from_millis(SIZE)).unwrap())
                // Keeps the earliest timestamp, so the result names its window.
                .reduce(|a: &Sale, b: &Sale| (a.0, a.1.min(b.1), a.2 + b.2))
                .sink(sink.clone());
            env.execute("tumbling").unwrap();
            let got: BTreeMap<(u32, u64), u64> = sink
                .take()
                .into_iter()
                .map(|(key, ts, sum)| ((key, ts - ts % SIZE), sum))
                .collect();
            assert_eq!(got, model, "p = {parallelism}, {backend:?}");
        }
    }
}

/// Counts elements and sums amounts.
#[derive(Clone)]
struct CountAndSum;

impl AggregateFunction<Sale> for CountAndSum {
    type Acc = (u64, u64);
    type Out = (u64, u64);
    fn create_accumulator(&self) -> (u64, u64) {
        (0, 0)
    }
    fn add(&self, value: Sale, acc: &mut (u64, u64)) {
        acc.0 += 1;
        acc.1 += value.2;
    }
    fn get_result(&self, acc: &(u64, u64)) -> (u64, u64) {
        *acc
    }
    fn merge(&self, a: (u64, u64), b: (u64, u64)) -> (u64, u64) {
        (a.0 + b.0, a.1 + b.1)
    }
}

#[test]
fn sliding_windows_put_each_element_in_size_over_slide_windows() {
    const N: u64 = 2_000;
    let (size, slide) = (200, 50);
    let mut model: BTreeMap<(u32, u64), (u64, u64)> = BTreeMap::new();
    for i in 0..N {
        let (key, ts, amount) = sale(i);
        let last_start = ts - ts % slide;
        let mut start = last_start as i64;
        while start > ts as i64 - size as i64 {
            let entry = model.entry((key, start as u64)).or_default();
            entry.0 += 1;
            entry.1 += amount;
            start -= slide as i64;
        }
    }
    for backend in backends() {
        for parallelism in [1, 2] {
            let env = env(parallelism, &backend);
            let sink = CollectSink::new();
            sales_stream(&env, N)
                .key_by(|s: &Sale| s.0)
                .window(
                    WindowAssigner::sliding_event_time(
                        Duration::from_millis(size),
                        Duration::from_millis(slide),
                    )
                    .unwrap(),
                )
                .process(
                    |key: &u32,
                     window: &TimeWindow,
                     elements: Vec<Sale>,
                     out: &mut Collector<'_, (u32, u64, u64, u64)>| {
                        assert_eq!(window.end - window.start, 200);
                        let sum = elements.iter().map(|s| s.2).sum();
                        out.collect((*key, window.start, elements.len() as u64, sum));
                        Ok(())
                    },
                )
                .sink(sink.clone());
            env.execute("sliding").unwrap();
            let got: BTreeMap<(u32, u64), (u64, u64)> = sink
                .take()
                .into_iter()
                .map(|(key, start, count, sum)| ((key, start), (count, sum)))
                .collect();
            assert_eq!(got, model, "p = {parallelism}, {backend:?}");
        }
    }
}

#[test]
fn aggregate_windows_give_the_same_totals_as_the_input() {
    for backend in backends() {
        let env = env(2, &backend);
        let sink = CollectSink::new();
        sales_stream(&env, 5_000)
            .key_by(|s: &Sale| s.0)
            .window(WindowAssigner::tumbling_event_time(Duration::from_millis(250)).unwrap())
            .aggregate(CountAndSum)
            .sink(sink.clone());
        env.execute("aggregate").unwrap();
        let results = sink.take();
        let count: u64 = results.iter().map(|r| r.0).sum();
        let sum: u64 = results.iter().map(|r| r.1).sum();
        assert_eq!(count, 5_000);
        assert_eq!(
            sum,
            (0..5_000).map(|i| sale(i).2).sum::<u64>(),
            "{backend:?}"
        );
    }
}

/// (key, start, end, timestamps in the session).
type Session = (String, u64, u64, Vec<u64>);

fn sessions_of(
    script: Vec<Vec<Step>>,
    parallelism: usize,
    backend: &StateBackendKind,
) -> Vec<WindowOutput<Session, Event>> {
    let env = env(parallelism, backend);
    let sink = CollectSink::new();
    env.from_source(ScriptedSource::new(script, None))
        .assign_timestamps_and_watermarks(
            WatermarkStrategy::for_bounded_out_of_orderness(Duration::from_millis(100))
                .with_timestamp_assigner(|e: &Event| e.1),
        )
        .key_by(|e: &Event| e.0.clone())
        .window(WindowAssigner::event_time_session(Duration::from_millis(250)).unwrap())
        .side_output_late_data()
        .process(
            |key: &String,
             window: &TimeWindow,
             elements: Vec<Event>,
             out: &mut Collector<'_, Session>| {
                let mut times: Vec<u64> = elements.iter().map(|e| e.1).collect();
                times.sort_unstable();
                out.collect((key.clone(), window.start, window.end, times));
                Ok(())
            },
        )
        .sink(sink.clone());
    env.execute("sessions").unwrap();
    let mut out = sink.take();
    out.sort_by_key(|o| format!("{o:?}"));
    out
}

#[test]
fn session_windows_merge_out_of_order_events_with_their_state() {
    for backend in backends() {
        let script = vec![vec![
            // a: 100 and 400 are two sessions until 250 arrives out of order and bridges them.
            Step::Emit(events("a", [100, 400])),
            Step::Emit(events("a", [250])),
            Step::Emit(events("b", [1_000, 1_100])),
            // b's second session, far apart.
            Step::Emit(events("b", [2_000])),
        ]];
        let got = sessions_of(script, 1, &backend);
        let expected = vec![
            WindowOutput::Result(("a".to_string(), 100, 650, vec![100, 250, 400])),
            WindowOutput::Result(("b".to_string(), 1_000, 1_350, vec![1_000, 1_100])),
            WindowOutput::Result(("b".to_string(), 2_000, 2_250, vec![2_000])),
        ];
        let mut expected = expected;
        expected.sort_by_key(|o| format!("{o:?}"));
        assert_eq!(got, expected, "{backend:?}");
    }
}

#[test]
fn late_events_go_to_the_side_output() {
    for backend in backends() {
        let script = vec![vec![
            Step::Emit(events("a", [100, 200])),
            // Pushes the watermark to 4_899: a's session [100, 450) is fired and purged.
            Step::Emit(events("z", [5_000])),
            Step::StayOpen(Duration::from_millis(100)),
            Step::Emit(events("a", [300])),
        ]];
        let got = sessions_of(script, 1, &backend);
        assert!(
            got.contains(&WindowOutput::Late(("a".to_string(), 300))),
            "{got:?} ({backend:?})"
        );
        assert!(got.contains(&WindowOutput::Result((
            "a".to_string(),
            100,
            450,
            vec![100, 200]
        ))));
        assert_eq!(got.len(), 3, "{got:?}");
    }
}

#[test]
fn allowed_lateness_fires_a_window_again_with_the_late_element() {
    let script = vec![vec![
        Step::Emit(events("a", [10, 20])),
        Step::Emit(events("z", [1_000])),
        Step::StayOpen(Duration::from_millis(100)),
        // Late for [0, 100) (watermark 999), but within 5 s of allowed lateness.
        Step::Emit(events("a", [30])),
    ]];
    let env = env(1, &StateBackendKind::Heap);
    let sink = CollectSink::new();
    env.from_source(ScriptedSource::new(script, None))
        .assign_timestamps_and_watermarks(
            WatermarkStrategy::for_monotonous_timestamps().with_timestamp_assigner(|e: &Event| e.1),
        )
        .key_by(|e: &Event| e.0.clone())
        .window(WindowAssigner::tumbling_event_time(Duration::from_millis(100)).unwrap())
        .allowed_lateness(Duration::from_secs(5))
        .side_output_late_data()
        .reduce(|a: &Event, b: &Event| (a.0.clone(), a.1 + b.1))
        .sink(sink.clone());
    env.execute("lateness").unwrap();
    let got = sink.take();
    let a: Vec<_> = got
        .iter()
        .filter(|o| matches!(o, WindowOutput::Result((k, _)) if k == "a"))
        .collect();
    assert_eq!(
        a,
        vec![
            &WindowOutput::Result(("a".to_string(), 30)),
            &WindowOutput::Result(("a".to_string(), 60)),
        ],
        "fired at the watermark, then again with the late element"
    );
    assert!(!got.iter().any(|o| matches!(o, WindowOutput::Late(_))));
}

#[test]
fn processing_time_windows_fire_when_the_injected_clock_passes_their_end() {
    let clock = std::sync::Arc::new(eddy::ManualClock::new(500));
    let script = vec![vec![
        Step::Emit(events("a", [1, 2])),
        Step::Emit(events("b", [3])),
        Step::StayOpen(Duration::from_millis(100)),
        Step::SetClock(1_200),
        Step::StayOpen(Duration::from_millis(200)),
        // In window [1_000, 2_000), which is still open when the bounded input ends: its
        // processing-time timer is dropped, as in Flink.
        Step::Emit(events("a", [4])),
    ]];
    for backend in backends() {
        let env = StreamExecutionEnvironment::new(JobConfig {
            state_backend: backend.clone(),
            clock: eddy::ProcessingClock(clock.clone()),
            ..JobConfig::default()
        });
        clock.set(500);
        let sink = CollectSink::new();
        env.from_source(ScriptedSource::new(script.clone(), Some(clock.clone())))
            .key_by(|e: &Event| e.0.clone())
            .window(WindowAssigner::tumbling_processing_time(Duration::from_secs(1)).unwrap())
            .process(
                |key: &String,
                 window: &TimeWindow,
                 elements: Vec<Event>,
                 out: &mut Collector<'_, (String, u64, usize)>| {
                    out.collect((key.clone(), window.start, elements.len()));
                    Ok(())
                },
            )
            .sink(sink.clone());
        env.execute("processing-time-windows").unwrap();
        let mut got = sink.take();
        got.sort();
        assert_eq!(
            got,
            vec![("a".to_string(), 0, 2), ("b".to_string(), 0, 1)],
            "{backend:?}"
        );
    }
}

/// More windows fire at one watermark (the end of input) than a keyed operator's output
/// buffer keeps, so the operator pauses and sends its output in parts: every window's
/// result still arrives exactly once.
#[test]
fn a_firing_larger_than_the_output_buffer_emits_every_window_once() {
    const KEYS: u64 = 140_000;
    for backend in backends() {
        let env = env(1, &backend);
        let sink = CollectSink::new();
        // Two events per key, all in the window [0, 1 h).
        env.from_source(GeneratorSource::new(2 * KEYS, |i| {
            ((i % KEYS) as u32, i / 1_000, i % 97)
        }))
        .assign_timestamps_and_watermarks(
            WatermarkStrategy::for_monotonous_timestamps().with_timestamp_assigner(|s: &Sale| s.1),
        )
        .key_by(|s: &Sale| s.0)
        .window(WindowAssigner::tumbling_event_time(Duration::from_secs(3_600)).unwrap())
        .reduce(|a: &Sale, b: &Sale| (a.0, a.1.min(b.1), a.2 + b.2))
        .sink(sink.clone());
        env.execute("large firing").unwrap();
        let results = sink.take();
        assert_eq!(results.len() as u64, KEYS, "{backend:?}");
        let per_key: BTreeMap<u32, u64> = results.iter().map(|r| (r.0, r.2)).collect();
        assert_eq!(
            per_key.len() as u64,
            KEYS,
            "a window fired twice ({backend:?})"
        );
        for key in [0u64, 1, 65_535, 65_536, KEYS - 1] {
            let expected = key % 97 + (key + KEYS) % 97;
            assert_eq!(per_key[&(key as u32)], expected, "key {key}, {backend:?}");
        }
    }
}
