//! Checkpoints of a `connect(broadcast)` operator: its keyed state and its broadcast state are
//! part of every checkpoint, a failure inside the process restarts from the latest one, and a
//! restore at another parallelism gives every new subtask the whole broadcast state and its
//! own key groups' keyed state. The published output is exactly once in every case.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use eddy::checkpoint::{CheckpointConfig, RestartStrategy};
use eddy::prelude::*;
use eddy::StateBackendKind;
use serde::{Deserialize, Serialize};

mod exactly_once;
use exactly_once::{published, InjectedFailure};

const EVENTS: u64 = 20_000;
const KEYS: u64 = 50;
/// Keys `0..RULED_KEYS` get a rule; the others never do, so their events wait forever.
const RULED_KEYS: u64 = 40;

/// Event `i`: key, value, and the index (which names the event to fail on).
fn event(i: u64) -> (u64, u64, u64) {
    (i % KEYS, (i * 7919) % 1000, i)
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

/// An event above its key's threshold.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Alert {
    key: u64,
    value: u64,
    index: u64,
}

fn thresholds() -> MapStateDescriptor<u64, u64> {
    MapStateDescriptor::new("thresholds")
}

/// Alerts on events above their key's threshold; an event whose rule has not arrived waits in
/// the keyed list state "pending" until it does. Fails once at event `fail_at` while armed.
#[derive(Clone)]
struct ThresholdAlerts {
    failure: InjectedFailure,
}

impl KeyedBroadcastProcessFunction for ThresholdAlerts {
    type Key = u64;
    type In = (u64, u64, u64);
    type BroadcastIn = Rule;
    type Out = Alert;
    type State = ListState<(u64, u64)>;

    fn open(&mut self, ctx: &mut OpenContext<'_, u64>) -> Result<Self::State> {
        ctx.list_state(&ListStateDescriptor::new("pending"))
    }

    fn process_element(
        &mut self,
        pending: &mut Self::State,
        (key, value, index): (u64, u64, u64),
        ctx: &mut ReadOnlyBroadcastContext<'_, u64>,
        out: &mut Collector<'_, Alert>,
    ) -> Result<()> {
        if self.failure.fires(index) {
            return Err(EddyError::user("injected failure"));
        }
        match ctx.broadcast_state(&thresholds())?.get(&key)? {
            Some(threshold) if value > threshold => out.collect(Alert { key, value, index }),
            Some(_) => {}
            None => pending.add((value, index))?,
        }
        Ok(())
    }

    fn process_broadcast_element(
        &mut self,
        pending: &mut Self::State,
        rule: Rule,
        ctx: &mut BroadcastContext<'_, u64>,
        out: &mut Collector<'_, Alert>,
    ) -> Result<()> {
        ctx.broadcast_state(&thresholds())?
            .put(rule.key, rule.threshold)?;
        ctx.apply_to_keyed_state("pending", |key| {
            if *key != rule.key {
                return Ok(());
            }
            let waiting: Vec<(u64, u64)> = pending.get()?.collect();
            for (value, index) in waiting {
                if value > rule.threshold {
                    out.collect(Alert {
                        key: *key,
                        value,
                        index,
                    });
                }
            }
            pending.clear()
        })
    }
}

struct Job<'a> {
    dir: &'a Path,
    parallelism: usize,
    backend: StateBackendKind,
    restore: Option<String>,
    restart: RestartStrategy,
    fail_at: Option<u64>,
}

impl Job<'_> {
    fn run(&self) -> Result<JobResult> {
        let location = self.dir.join("ckpt").to_string_lossy().into_owned();
        let config = JobConfig {
            parallelism: self.parallelism,
            max_parallelism: Some(128),
            state_backend: self.backend.clone(),
            checkpoint: CheckpointConfig {
                interval: Some(Duration::from_millis(50)),
                location: Some(location.clone()),
                retained: 2,
                restore: self.restore.clone(),
                restart: self.restart.clone(),
                ..CheckpointConfig::default()
            },
            ..JobConfig::default()
        };
        let env = StreamExecutionEnvironment::new(config);
        let rules = env
            .from_source_named("rules", GeneratorSource::new(RULED_KEYS, rule))
            .set_parallelism(1)
            .uid("rules")
            .broadcast(thresholds());
        env.from_source_named(
            "events",
            GeneratorSource::new(EVENTS, event).with_rate(40_000),
        )
        .set_parallelism(1)
        .uid("events")
        .key_by(|e: &(u64, u64, u64)| e.0)
        .connect(rules)
        .process_named(
            "alerts",
            ThresholdAlerts {
                failure: InjectedFailure::new(self.fail_at, &location),
            },
        )
        .uid("alerts")
        .sink_named("out", FileSink::json_lines(self.dir.join("out")))
        .uid("out");
        env.execute("broadcast-checkpoints")
    }
}

fn expected() -> Vec<Alert> {
    let mut alerts: Vec<Alert> = (0..EVENTS)
        .map(event)
        .filter(|&(key, value, _)| key < RULED_KEYS && value > rule(key).threshold)
        .map(|(key, value, index)| Alert { key, value, index })
        .collect();
    alerts.sort();
    alerts
}

fn backends() -> [StateBackendKind; 2] {
    [StateBackendKind::Heap, StateBackendKind::rocksdb()]
}

#[test]
fn a_failed_broadcast_job_restarts_from_its_checkpoint_exactly_once() {
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let result = Job {
            dir: dir.path(),
            parallelism: 2,
            backend: backend.clone(),
            restore: None,
            restart: RestartStrategy::FixedDelay {
                attempts: 2,
                delay: Duration::from_millis(10),
            },
            fail_at: Some(EVENTS / 2),
        }
        .run()
        .unwrap();
        assert_eq!(result.restarts, 1, "{backend:?}");
        assert!(!result.checkpoints.is_empty(), "{backend:?}");
        let alerts = published::<Alert>(&dir.path().join("out"));
        assert!(
            alerts.len() > 1000,
            "{backend:?}: the test should alert often"
        );
        assert_eq!(alerts, expected(), "{backend:?}");
    }
}

#[test]
fn broadcast_and_keyed_state_restore_at_other_parallelisms() {
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let steps = [2, 3, 1];
        for (step, parallelism) in steps.into_iter().enumerate() {
            let last = step == steps.len() - 1;
            let result = Job {
                dir: dir.path(),
                parallelism,
                backend: backend.clone(),
                restore: (step > 0).then(|| "latest".to_string()),
                restart: RestartStrategy::None,
                fail_at: (!last).then_some((step as u64 + 1) * EVENTS / 3),
            }
            .run();
            assert_eq!(
                result.is_ok(),
                last,
                "{backend:?} step {step}: {:?}",
                result.err()
            );
        }
        assert_eq!(
            published::<Alert>(&dir.path().join("out")),
            expected(),
            "{backend:?}"
        );
    }
}
