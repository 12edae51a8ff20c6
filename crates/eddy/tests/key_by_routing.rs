//! `key_by` routing: every event of a key reaches the one subtask that owns the key's key
//! group, computed with Flink's formulas, for several key types and max parallelisms.

// Helpers outside `#[test]` functions unwrap too: a failed step fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::marker::PhantomData;

use eddy::layers::core::key_group::{assign_to_key_group, subtask_for_key_group};
use eddy::layers::core::{KeyGroup, KeyGroupRange};
use eddy::prelude::*;

/// Emits `(subtask, current key group, current key)` for every event `(key, index)`.
struct WhereAmI<K>(PhantomData<fn() -> K>);

impl<K> Clone for WhereAmI<K> {
    fn clone(&self) -> Self {
        WhereAmI(PhantomData)
    }
}

impl<K: Key> KeyedProcessFunction for WhereAmI<K> {
    type Key = K;
    type In = (K, u64);
    type Out = (usize, KeyGroup, K, u64);
    type State = ();

    fn open(&mut self, _ctx: &mut OpenContext<'_, K>) -> Result<()> {
        Ok(())
    }

    fn process_element(
        &mut self,
        _: &mut (),
        (key, index): (K, u64),
        ctx: &mut Context<'_, K>,
        out: &mut Collector<'_, (usize, KeyGroup, K, u64)>,
    ) -> Result<()> {
        assert_eq!(
            ctx.current_key(),
            &key,
            "the current key is the event's key"
        );
        out.collect((ctx.subtask_index(), ctx.current_key_group(), key, index));
        Ok(())
    }
}

const EVENTS: u64 = 20_000;

/// Runs `EVENTS` events `(key_of(i), i)` through `key_by(key).process(WhereAmI)` and checks
/// that each went to the subtask owning its key's key group.
fn check_routing<K: Key + Ord>(
    parallelism: usize,
    max_parallelism: Option<usize>,
    key_of: fn(u64) -> K,
) {
    let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(parallelism));
    if let Some(max) = max_parallelism {
        env.set_max_parallelism(max);
    }
    let results = CollectSink::new();
    env.from_source(GeneratorSource::new(EVENTS, move |i: u64| (key_of(i), i)))
        .key_by(|event: &(K, u64)| event.0.clone())
        .process(WhereAmI::<K>(PhantomData))
        .sink(results.clone());
    let outcome = env.execute("routing").unwrap();
    let max = max_parallelism.unwrap_or(128);
    assert_eq!(outcome.max_parallelism, max);

    let output = results.take();
    let mut indices: Vec<u64> = output.iter().map(|r| r.3).collect();
    indices.sort_unstable();
    assert_eq!(indices, (0..EVENTS).collect::<Vec<_>>(), "every event once");

    let mut subtasks_of_key: HashMap<K, BTreeSet<usize>> = HashMap::new();
    let mut keys_per_subtask = vec![BTreeSet::new(); parallelism];
    for (subtask, key_group, key, index) in output {
        assert_eq!(key, key_of(index));
        let expected_group = assign_to_key_group(&key, max);
        assert_eq!(key_group, expected_group, "key group of {key:?}");
        assert_eq!(
            subtask,
            subtask_for_key_group(max, parallelism, expected_group),
            "subtask of {key:?} (key group {key_group}, p {parallelism}, max {max})"
        );
        assert!(KeyGroupRange::for_subtask(max, parallelism, subtask).contains(key_group));
        subtasks_of_key
            .entry(key.clone())
            .or_default()
            .insert(subtask);
        keys_per_subtask[subtask].insert(key);
    }
    for (key, subtasks) in &subtasks_of_key {
        assert_eq!(subtasks.len(), 1, "{key:?} reached subtasks {subtasks:?}");
    }
    for (subtask, keys) in keys_per_subtask.iter().enumerate() {
        assert!(!keys.is_empty(), "subtask {subtask} got no key");
    }
}

fn u64_key(i: u64) -> u64 {
    (i % 500).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn string_key(i: u64) -> String {
    format!("user-{}", i % 300)
}

fn tuple_key(i: u64) -> (u64, String) {
    (i % 40, format!("region-{}", i % 7))
}

#[test]
fn u64_keys_reach_their_key_groups_subtask_at_parallelism_2_with_128_key_groups() {
    check_routing(2, None, u64_key);
}

#[test]
fn u64_keys_reach_their_key_groups_subtask_with_max_parallelism_64() {
    check_routing(2, Some(64), u64_key);
    check_routing(3, Some(64), u64_key);
}

#[test]
fn string_keys_reach_their_key_groups_subtask_at_parallelism_2_with_128_key_groups() {
    check_routing(2, None, string_key);
}

#[test]
fn string_keys_reach_their_key_groups_subtask_with_max_parallelism_64() {
    check_routing(2, Some(64), string_key);
    check_routing(3, Some(64), string_key);
}

#[test]
fn tuple_keys_reach_their_key_groups_subtask_at_parallelism_2_with_128_key_groups() {
    check_routing(2, None, tuple_key);
}

#[test]
fn tuple_keys_reach_their_key_groups_subtask_with_max_parallelism_64() {
    check_routing(2, Some(64), tuple_key);
    check_routing(3, Some(64), tuple_key);
}

#[test]
fn max_parallelism_equal_to_parallelism_gives_each_subtask_one_key_group() {
    check_routing(4, Some(4), string_key);
}

#[test]
fn max_parallelism_from_job_flags_decides_the_routing() {
    let flags = JobFlags {
        parallelism: 2,
        max_parallelism: Some(64),
        ..JobFlags::default()
    };
    let env = StreamExecutionEnvironment::from_flags(&flags).unwrap();
    let results = CollectSink::new();
    env.from_source(GeneratorSource::new(EVENTS, |i: u64| (string_key(i), i)))
        .key_by(|event: &(String, u64)| event.0.clone())
        .process(WhereAmI::<String>(PhantomData))
        .sink(results.clone());
    let outcome = env.execute("flags").unwrap();
    assert_eq!((outcome.parallelism, outcome.max_parallelism), (2, 64));
    for (subtask, key_group, key, _) in results.take() {
        assert_eq!(key_group, assign_to_key_group(&key, 64));
        assert_eq!(subtask, subtask_for_key_group(64, 2, key_group));
    }
}

#[test]
fn max_parallelism_below_the_parallelism_is_a_config_error() {
    let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(4));
    env.set_max_parallelism(2);
    env.from_source(GeneratorSource::new(10, |i: u64| (i, i)))
        .key_by(|event: &(u64, u64)| event.0)
        .process(WhereAmI::<u64>(PhantomData))
        .sink(CollectSink::new());
    match env.execute("too-few-key-groups") {
        Err(EddyError::Config(message)) => {
            assert!(message.contains("max_parallelism"), "{message}")
        }
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[test]
fn keys_reach_their_key_groups_subtask_with_a_max_parallelism_not_a_power_of_two() {
    check_routing(3, Some(100), u64_key);
    check_routing(3, Some(100), string_key);
    check_routing(3, Some(100), tuple_key);
}

/// Runs `keys` through `key_by` at `parallelism` with `max` key groups; returns
/// `(subtask, key group, key)` per event.
fn route_all(parallelism: usize, max: usize, keys: Vec<String>) -> Vec<(usize, KeyGroup, String)> {
    let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(parallelism));
    env.set_max_parallelism(max);
    let results = CollectSink::new();
    let count = keys.len() as u64;
    env.from_source(GeneratorSource::new(count, move |i: u64| {
        (keys[i as usize].clone(), i)
    }))
    .key_by(|event: &(String, u64)| event.0.clone())
    .process(WhereAmI::<String>(PhantomData))
    .sink(results.clone());
    env.execute("routing-property").unwrap();
    results
        .take()
        .into_iter()
        .map(|(subtask, key_group, key, _)| (subtask, key_group, key))
        .collect()
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(12))]

    #[test]
    fn any_string_keys_reach_the_subtask_owning_their_key_group(
        parallelism in 1usize..=4,
        extra_key_groups in 0usize..300,
        keys in proptest::collection::vec(".{0,12}", 1..200),
    ) {
        let max = parallelism + extra_key_groups;
        let routed = route_all(parallelism, max, keys.clone());
        proptest::prop_assert_eq!(routed.len(), keys.len());
        for (subtask, key_group, key) in routed {
            proptest::prop_assert_eq!(key_group, assign_to_key_group(&key, max));
            proptest::prop_assert_eq!(subtask, subtask_for_key_group(max, parallelism, key_group));
        }
    }
}
