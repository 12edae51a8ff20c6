//! Operator (non-keyed) state: registration, snapshot/restore and Flink's redistribution rules.

// Helpers outside `#[test]` functions unwrap too: a failed step fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use eddy_core::EddyError;
use eddy_state::{
    redistribute, ListStateDescriptor, MapStateDescriptor, OperatorStateMode,
    OperatorStateSnapshot, OperatorStateStore, StateTtlConfig,
};
use proptest::prelude::*;

const SPLIT: &str = "offsets";
const UNION: &str = "watermarks";
const RULES: &str = "rules";

fn split_desc() -> ListStateDescriptor<u64> {
    ListStateDescriptor::new(SPLIT)
}

fn union_desc() -> ListStateDescriptor<u64> {
    ListStateDescriptor::new(UNION)
}

fn rules_desc() -> MapStateDescriptor<String, u32> {
    MapStateDescriptor::new(RULES)
}

/// `parallelism` old subtasks: subtask `s` holds `counts[s]` even-split elements, the union
/// elements `s * 1000 + i` for `i < 2`, and the same two rules.
fn old_subtasks(counts: &[usize]) -> Vec<OperatorStateSnapshot> {
    let mut next = 0u64;
    counts
        .iter()
        .enumerate()
        .map(|(subtask, &count)| {
            let mut store = OperatorStateStore::new();
            let split = store.list_state(&split_desc()).unwrap();
            for _ in 0..count {
                split.add(next).unwrap();
                next += 1;
            }
            let union = store.union_list_state(&union_desc()).unwrap();
            union
                .add_all(vec![subtask as u64 * 1000, subtask as u64 * 1000 + 1])
                .unwrap();
            let rules = store.broadcast_state(&rules_desc()).unwrap();
            rules.put("max".into(), 10).unwrap();
            rules.put("min".into(), 1).unwrap();
            store.snapshot().unwrap()
        })
        .collect()
}

/// The state of each new subtask, read back through a restored store.
struct Restored {
    split: Vec<u64>,
    union: Vec<u64>,
    rules: Vec<(String, u32)>,
}

fn restore_all(snapshots: Vec<OperatorStateSnapshot>) -> Vec<Restored> {
    snapshots
        .into_iter()
        .map(|snapshot| {
            let mut store = OperatorStateStore::new();
            store.restore(snapshot).unwrap();
            let split = store.list_state(&split_desc()).unwrap();
            let union = store.union_list_state(&union_desc()).unwrap();
            let rules = store.broadcast_state(&rules_desc()).unwrap();
            let mut rules: Vec<_> = rules.entries().unwrap().collect();
            rules.sort();
            Restored {
                split: split.get().unwrap().collect(),
                union: union.get().unwrap().collect(),
                rules,
            }
        })
        .collect()
}

/// Checks Flink's three rules for `counts` old subtasks rescaled to `new_parallelism`.
fn check_rescale(counts: &[usize], new_parallelism: usize) {
    let old = old_subtasks(counts);
    let new = restore_all(redistribute(old, new_parallelism));
    assert_eq!(new.len(), new_parallelism);

    // Even split: contiguous parts, sizes differing by at most one, in old-subtask order;
    // together exactly the old elements (nothing lost, nothing duplicated).
    let total: usize = counts.iter().sum();
    let concatenated: Vec<u64> = new.iter().flat_map(|s| s.split.clone()).collect();
    assert_eq!(concatenated, (0..total as u64).collect::<Vec<_>>());
    let sizes: Vec<usize> = new.iter().map(|s| s.split.len()).collect();
    let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
    assert!(max - min <= 1, "uneven split {sizes:?}");

    // Union: every new subtask has every element of every old subtask.
    let all_union: Vec<u64> = (0..counts.len() as u64)
        .flat_map(|s| [s * 1000, s * 1000 + 1])
        .collect();
    // Broadcast: every new subtask has the (one) copy.
    let rules = vec![("max".to_string(), 10), ("min".to_string(), 1)];
    for subtask in &new {
        assert_eq!(subtask.union, all_union);
        assert_eq!(subtask.rules, rules);
    }
}

#[test]
fn rescale_3_to_2() {
    check_rescale(&[4, 0, 3], 2);
}

#[test]
fn rescale_2_to_5() {
    check_rescale(&[3, 4], 5);
}

#[test]
fn rescale_1_to_4() {
    check_rescale(&[10], 4);
}

#[test]
fn even_split_gives_the_first_subtasks_the_extra_elements() {
    let parts = redistribute(old_subtasks(&[7]), 3);
    let sizes: Vec<usize> = parts
        .iter()
        .map(|p| p.state(SPLIT).unwrap().elements.len())
        .collect();
    assert_eq!(sizes, vec![3, 2, 2]);
}

#[test]
fn every_new_subtask_names_every_state() {
    // Fewer elements than subtasks: the last subtasks get the state with no elements.
    for part in redistribute(old_subtasks(&[1]), 3) {
        let names: Vec<_> = part.states.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, vec![SPLIT, RULES, UNION]);
        assert_eq!(
            part.state(RULES).unwrap().mode,
            OperatorStateMode::Broadcast
        );
    }
}

#[test]
fn redistribute_to_zero_subtasks_is_empty() {
    assert!(redistribute(old_subtasks(&[2]), 0).is_empty());
}

#[test]
fn snapshot_restore_round_trip() {
    let mut store = OperatorStateStore::new();
    let split = store.list_state(&split_desc()).unwrap();
    split.add_all(vec![5, 6, 7]).unwrap();
    split.update(vec![1, 2]).unwrap();
    split.add(3).unwrap();
    let rules = store.broadcast_state(&rules_desc()).unwrap();
    rules.put("a".into(), 1).unwrap();
    rules.put("b".into(), 2).unwrap();
    rules.remove(&"a".to_string()).unwrap();
    let snapshot = store.snapshot().unwrap();

    // The snapshot is plain serializable data.
    let bytes = postcard::to_allocvec(&snapshot).unwrap();
    let decoded: OperatorStateSnapshot = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(decoded, snapshot);

    let mut restored = OperatorStateStore::new();
    restored.restore(decoded).unwrap();
    // Not registered again yet: still part of the next snapshot.
    assert_eq!(restored.snapshot().unwrap(), snapshot);
    let split = restored.list_state(&split_desc()).unwrap();
    assert_eq!(split.get().unwrap().collect::<Vec<_>>(), vec![1, 2, 3]);
    let rules = restored.broadcast_state(&rules_desc()).unwrap();
    assert_eq!(rules.get(&"b".to_string()).unwrap(), Some(2));
    assert!(!rules.contains(&"a".to_string()).unwrap());
    assert_eq!(rules.len().unwrap(), 1);
    assert_eq!(restored.snapshot().unwrap(), snapshot);
}

#[test]
fn encode_decode_round_trip_and_refuse_bad_bytes() {
    let snapshot = old_subtasks(&[5]).remove(0);
    let bytes = snapshot.encode().unwrap();
    assert_eq!(
        OperatorStateSnapshot::decode(&bytes, "operator-0.bin").unwrap(),
        snapshot
    );
    for len in 0..bytes.len() {
        let err = OperatorStateSnapshot::decode(&bytes[..len], "operator-0.bin").unwrap_err();
        assert!(err.to_string().contains("operator-0.bin"), "{err}");
    }
    let mut trailing = bytes.clone();
    trailing.push(7);
    assert!(OperatorStateSnapshot::decode(&trailing, "x").is_err());
    // Flipped bytes decode to something or to an error, never a panic.
    for position in 0..bytes.len() {
        let mut corrupt = bytes.clone();
        corrupt[position] ^= 0xA5;
        let _ = OperatorStateSnapshot::decode(&corrupt, "x");
    }
}

#[test]
fn restore_needs_a_fresh_store() {
    let mut store = OperatorStateStore::new();
    store.list_state(&split_desc()).unwrap();
    assert!(store.restore(OperatorStateSnapshot::default()).is_err());
}

#[test]
fn handles_share_one_state_per_name() {
    let mut store = OperatorStateStore::new();
    let a = store.list_state(&split_desc()).unwrap();
    let b = store.list_state(&split_desc()).unwrap();
    a.add(1).unwrap();
    assert_eq!(b.get().unwrap().collect::<Vec<_>>(), vec![1]);
    b.clear().unwrap();
    assert_eq!(a.get().unwrap().count(), 0);

    let rules = store.broadcast_state(&rules_desc()).unwrap();
    let view = rules.read_only();
    assert!(view.is_empty().unwrap());
    rules.put("x".into(), 3).unwrap();
    assert_eq!(view.get(&"x".to_string()).unwrap(), Some(3));
    assert_eq!(view.entries().unwrap().count(), 1);
    rules.clear().unwrap();
    assert!(rules.is_empty().unwrap());
}

fn assert_state_error(result: Result<impl Sized, EddyError>, name: &str, needle: &str) {
    match result {
        Err(EddyError::State { state, reason }) => {
            assert_eq!(state, name);
            assert!(
                reason.contains(needle),
                "reason {reason:?} lacks {needle:?}"
            );
        }
        Err(other) => panic!("expected a state error, got {other}"),
        Ok(_) => panic!("expected a state error, got Ok"),
    }
}

#[test]
fn wrong_type_registration_is_an_error_naming_the_state() {
    let mut store = OperatorStateStore::new();
    store.list_state(&split_desc()).unwrap();
    let wrong = ListStateDescriptor::<String>::new(SPLIT);
    assert_state_error(store.list_state(&wrong), SPLIT, "String");

    store.broadcast_state(&rules_desc()).unwrap();
    let wrong = MapStateDescriptor::<String, String>::new(RULES);
    assert_state_error(store.broadcast_state(&wrong), RULES, "already registered");
    assert_state_error(
        store.registered_broadcast_state(&wrong),
        RULES,
        "already registered",
    );
}

#[test]
fn wrong_mode_registration_is_an_error_naming_the_state() {
    let mut store = OperatorStateStore::new();
    store.list_state(&split_desc()).unwrap();
    assert_state_error(
        store.union_list_state(&split_desc()),
        SPLIT,
        "union list state",
    );
    let as_map = MapStateDescriptor::<u64, u64>::new(SPLIT);
    assert_state_error(store.broadcast_state(&as_map), SPLIT, "broadcast state");
}

#[test]
fn restored_state_checks_mode_and_type() {
    let snapshot = old_subtasks(&[2]).remove(0);
    let mut store = OperatorStateStore::new();
    store.restore(snapshot.clone()).unwrap();
    assert_state_error(store.union_list_state(&split_desc()), SPLIT, "even-split");
    let mut store = OperatorStateStore::new();
    store.restore(snapshot).unwrap();
    // `u64` elements are not `String`s.
    let wrong = ListStateDescriptor::<String>::new(UNION);
    assert_state_error(store.union_list_state(&wrong), UNION, "cannot decode");
}

#[test]
fn unregistered_broadcast_state_is_an_error() {
    let store = OperatorStateStore::new();
    assert_state_error(
        store.registered_broadcast_state(&rules_desc()),
        RULES,
        "broadcast(..)",
    );
}

#[test]
fn ttl_is_refused() {
    let mut store = OperatorStateStore::new();
    let ttl = StateTtlConfig::new(std::time::Duration::from_secs(1));
    let desc = split_desc().enable_ttl(ttl);
    assert_state_error(store.list_state(&desc), SPLIT, "time-to-live");
}

proptest! {
    /// Even split never loses or duplicates an element and keeps their order; union and
    /// broadcast give every new subtask the full, respectively the one, copy.
    #[test]
    fn redistribution_preserves_elements(
        counts in prop::collection::vec(0usize..40, 1..8),
        new_parallelism in 1usize..10,
    ) {
        let old = old_subtasks(&counts);
        let total: usize = counts.iter().sum();
        let new = redistribute(old.clone(), new_parallelism);
        prop_assert_eq!(new.len(), new_parallelism);
        let split: Vec<Vec<u8>> = new
            .iter()
            .flat_map(|s| s.state(SPLIT).unwrap().elements.clone())
            .collect();
        let expected: Vec<Vec<u8>> = old
            .iter()
            .flat_map(|s| s.state(SPLIT).unwrap().elements.clone())
            .collect();
        prop_assert_eq!(split.len(), total);
        prop_assert_eq!(split, expected);
        let sizes: Vec<usize> =
            new.iter().map(|s| s.state(SPLIT).unwrap().elements.len()).collect();
        prop_assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
        for subtask in &new {
            prop_assert_eq!(subtask.state(UNION).unwrap().elements.len(), 2 * counts.len());
            prop_assert_eq!(
                &subtask.state(RULES).unwrap().elements,
                &old[0].state(RULES).unwrap().elements
            );
        }
    }
}
