//! The backend conformance suite: every backend must pass these tests unchanged.
//!
//! Each test is a function of a backend factory; [`conformance_suite!`] instantiates all of
//! them for one backend. The heap backend is instantiated at the bottom; the RocksDB backend
//! adds one line when it lands. Heap-only inspections live in `heap_only`.

use eddy_core::key_group::{assign_to_key_group, subtask_for_key_group};
use eddy_core::{EddyError, KeyGroupRange};
use eddy_state::{
    AggregateFunction, AggregatingStateDescriptor, KeyedStateBackend, ListStateDescriptor,
    MapStateDescriptor, ReducingStateDescriptor, ValueStateDescriptor,
};
use proptest::prelude::*;
use std::collections::BTreeMap;

/// Creates a backend for a subtask owning `range` out of `max_parallelism` key groups.
type Factory = fn(KeyGroupRange, usize) -> KeyedStateBackend<u64>;

/// Every conformance test, for the backend made by `$factory`.
macro_rules! conformance_suite {
    ($backend:ident, $factory:expr) => {
        mod $backend {
            use super::*;
            const FACTORY: Factory = $factory;
            conformance_suite!(@tests FACTORY;
                value_state_holds_one_value_per_key_not_per_instance,
                access_without_current_key_is_an_error_not_a_panic,
                key_outside_the_subtask_range_is_rejected,
                registering_a_name_twice_shares_the_state_and_checks_the_kind,
                list_state_operations,
                list_cannot_change_while_iterated_but_a_map_iteration_is_a_snapshot,
                map_state_operations,
                reducing_state_folds_per_key,
                aggregating_state_keeps_an_accumulator_per_key,
                one_million_keys_fit_and_read_back,
                a_64_mib_list_and_a_million_entry_map,
            );
            proptest! {
                #[test]
                fn backend_matches_a_model(ops in proptest::collection::vec(op(), 1..300)) {
                    backend_matches_a_model_impl(FACTORY, ops)?;
                }
            }
        }
    };
    (@tests $factory:ident; $($test:ident),* $(,)?) => {
        $(
            #[test]
            fn $test() -> Result<(), EddyError> {
                super::$test($factory)
            }
        )*
    };
}

conformance_suite!(heap, KeyedStateBackend::heap);

fn full_range(factory: Factory) -> KeyedStateBackend<u64> {
    factory(KeyGroupRange::new(0, 127), 128)
}

fn value_state_holds_one_value_per_key_not_per_instance(factory: Factory) -> Result<(), EddyError> {
    let mut b = full_range(factory);
    let v = b.value_state(&ValueStateDescriptor::<String>::new("v"))?;
    for key in 0..100u64 {
        b.set_current_key(key)?;
        v.update(format!("value of {key}"))?;
    }
    for key in (0..100u64).rev() {
        b.set_current_key(key)?;
        assert_eq!(v.value()?, Some(format!("value of {key}")));
    }
    b.set_current_key(100)?;
    assert_eq!(v.value()?, None);
    let heap = b
        .as_heap()
        .ok_or_else(|| EddyError::Internal("heap".into()))?;
    assert_eq!(heap.value_table::<String>("v").map(|t| t.len()), Some(100));
    Ok(())
}

fn access_without_current_key_is_an_error_not_a_panic(factory: Factory) -> Result<(), EddyError> {
    let mut b = full_range(factory);
    let v = b.value_state(&ValueStateDescriptor::<u64>::new("v"))?;
    let err = v.value().err().map(|e| e.to_string());
    assert_eq!(
        err.as_deref(),
        Some("state \"v\": accessed outside a keyed context (no current key is set)")
    );
    Ok(())
}

fn key_outside_the_subtask_range_is_rejected(factory: Factory) -> Result<(), EddyError> {
    let b = factory(KeyGroupRange::for_subtask(128, 2, 0), 128);
    let foreign = (0u64..)
        .find(|k| subtask_for_key_group(128, 2, assign_to_key_group(k, 128)) == 1)
        .unwrap_or(0);
    assert!(b.set_current_key(foreign).is_err());
    let own = (0u64..)
        .find(|k| subtask_for_key_group(128, 2, assign_to_key_group(k, 128)) == 0)
        .unwrap_or(0);
    b.set_current_key(own)
}

fn registering_a_name_twice_shares_the_state_and_checks_the_kind(
    factory: Factory,
) -> Result<(), EddyError> {
    let mut b = full_range(factory);
    let a = b.value_state(&ValueStateDescriptor::<u64>::new("s"))?;
    let again = b.value_state(&ValueStateDescriptor::<u64>::new("s"))?;
    b.set_current_key(1)?;
    a.update(5)?;
    assert_eq!(again.value()?, Some(5));
    assert!(b.list_state(&ListStateDescriptor::<u64>::new("s")).is_err());
    assert!(b
        .value_state(&ValueStateDescriptor::<String>::new("s"))
        .is_err());
    Ok(())
}

fn list_state_operations(factory: Factory) -> Result<(), EddyError> {
    let mut b = full_range(factory);
    let l = b.list_state(&ListStateDescriptor::<u32>::new("l"))?;
    b.set_current_key(1)?;
    assert_eq!(l.get()?.count(), 0);
    l.add(1)?;
    l.add_all(vec![2, 3])?;
    l.add_all(vec![])?;
    b.set_current_key(2)?;
    l.add(9)?;
    b.set_current_key(1)?;
    assert_eq!(l.get()?.collect::<Vec<_>>(), vec![1, 2, 3]);
    l.update(vec![7, 8])?;
    assert_eq!(l.get()?.collect::<Vec<_>>(), vec![7, 8]);
    {
        let mut iter = l.get()?;
        assert_eq!(iter.next(), Some(7));
        // Modifying while iterating is refused, not undefined.
        assert!(l.add(10).is_err());
    }
    l.update(vec![])?;
    assert_eq!(l.get()?.count(), 0);
    b.set_current_key(2)?;
    assert_eq!(l.get()?.collect::<Vec<_>>(), vec![9]);
    l.clear()?;
    assert_eq!(l.get()?.count(), 0);
    Ok(())
}

fn map_state_operations(factory: Factory) -> Result<(), EddyError> {
    let mut b = full_range(factory);
    let m = b.map_state(&MapStateDescriptor::<String, u64>::new("m"))?;
    b.set_current_key(1)?;
    assert!(m.is_empty()?);
    m.put("a".into(), 1)?;
    m.put_all(vec![("b".into(), 2), ("c".into(), 3)])?;
    m.put("a".into(), 10)?;
    assert_eq!(m.get(&"a".into())?, Some(10));
    assert!(m.contains(&"b".into())?);
    assert!(!m.contains(&"z".into())?);
    let mut entries: Vec<_> = m.entries()?.collect();
    entries.sort();
    assert_eq!(
        entries,
        vec![("a".into(), 10), ("b".into(), 2), ("c".into(), 3)]
    );
    let mut keys: Vec<_> = m.keys()?.collect();
    keys.sort();
    assert_eq!(keys, vec!["a".to_string(), "b".into(), "c".into()]);
    let mut values: Vec<_> = m.values()?.collect();
    values.sort();
    assert_eq!(values, vec![2, 3, 10]);
    b.set_current_key(2)?;
    assert!(m.is_empty()?);
    assert_eq!(m.get(&"a".into())?, None);
    b.set_current_key(1)?;
    m.remove(&"a".into())?;
    assert_eq!(m.get(&"a".into())?, None);
    m.clear()?;
    assert!(m.is_empty()?);
    assert_eq!(m.entries()?.count(), 0);
    Ok(())
}

fn reducing_state_folds_per_key(factory: Factory) -> Result<(), EddyError> {
    let mut b = full_range(factory);
    let sum = b.reducing_state(&ReducingStateDescriptor::new("sum", |a: &u64, b: &u64| {
        a + b
    }))?;
    for (key, value) in [(1u64, 10u64), (2, 5), (1, 7), (2, 1), (1, 3)] {
        b.set_current_key(key)?;
        sum.add(value)?;
    }
    b.set_current_key(1)?;
    assert_eq!(sum.get()?, Some(20));
    sum.clear()?;
    assert_eq!(sum.get()?, None);
    sum.add(4)?;
    assert_eq!(sum.get()?, Some(4));
    b.set_current_key(2)?;
    assert_eq!(sum.get()?, Some(6));
    b.set_current_key(3)?;
    assert_eq!(sum.get()?, None);
    // The same name as another kind of state is refused.
    assert!(b
        .value_state(&ValueStateDescriptor::<u64>::new("sum"))
        .is_err());
    Ok(())
}

/// Average of the added values: accumulator (sum, count), result sum / count.
struct Average;

impl AggregateFunction<u32> for Average {
    type Acc = (u64, u64);
    type Out = f64;

    fn create_accumulator(&self) -> (u64, u64) {
        (0, 0)
    }

    fn add(&self, value: u32, acc: &mut (u64, u64)) {
        acc.0 += u64::from(value);
        acc.1 += 1;
    }

    fn get_result(&self, acc: &(u64, u64)) -> f64 {
        acc.0 as f64 / acc.1.max(1) as f64
    }

    fn merge(&self, a: (u64, u64), b: (u64, u64)) -> (u64, u64) {
        (a.0 + b.0, a.1 + b.1)
    }
}

fn aggregating_state_keeps_an_accumulator_per_key(factory: Factory) -> Result<(), EddyError> {
    let mut b = full_range(factory);
    let avg = b.aggregating_state(&AggregatingStateDescriptor::new("avg", Average))?;
    for (key, value) in [(1u64, 2u32), (1, 4), (2, 10), (1, 9)] {
        b.set_current_key(key)?;
        avg.add(value)?;
    }
    b.set_current_key(1)?;
    assert_eq!(avg.get()?, Some(5.0));
    b.set_current_key(2)?;
    assert_eq!(avg.get()?, Some(10.0));
    avg.clear()?;
    assert_eq!(avg.get()?, None);
    b.set_current_key(9)?;
    assert_eq!(avg.get()?, None);
    assert_eq!(Average.merge((1, 1), (2, 3)), (3, 4));
    Ok(())
}

fn one_million_keys_fit_and_read_back(factory: Factory) -> Result<(), EddyError> {
    let mut b = full_range(factory);
    let v = b.value_state(&ValueStateDescriptor::<u64>::new("v"))?;
    for key in 0..1_000_000u64 {
        b.set_current_key(key)?;
        v.update(key * 2)?;
    }
    for key in (0..1_000_000u64).step_by(997) {
        b.set_current_key(key)?;
        assert_eq!(v.value()?, Some(key * 2));
    }
    Ok(())
}

#[derive(Debug, Clone)]
enum Op {
    Update(u8, u16),
    ClearValue(u8),
    Add(u8, u16),
    ClearList(u8),
    Put(u8, u8, u16),
    Remove(u8, u8),
    Reduce(u8, u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (any::<u8>(), any::<u16>()).prop_map(|(k, v)| Op::Update(k, v)),
        any::<u8>().prop_map(Op::ClearValue),
        (any::<u8>(), any::<u16>()).prop_map(|(k, v)| Op::Add(k, v)),
        any::<u8>().prop_map(Op::ClearList),
        (any::<u8>(), any::<u8>(), any::<u16>()).prop_map(|(k, u, v)| Op::Put(k, u, v)),
        (any::<u8>(), any::<u8>()).prop_map(|(k, u)| Op::Remove(k, u)),
        (any::<u8>(), any::<u16>()).prop_map(|(k, v)| Op::Reduce(k, v)),
    ]
}

/// The plain model: one value, list, map and running maximum per key, in `BTreeMap`s.
#[derive(Default)]
struct Model {
    values: BTreeMap<u8, u16>,
    lists: BTreeMap<u8, Vec<u16>>,
    maps: BTreeMap<u8, BTreeMap<u8, u16>>,
    maxima: BTreeMap<u8, u16>,
}

/// A backend behaves exactly like the plain model over any sequence of operations.
fn backend_matches_a_model_impl(factory: Factory, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let state_error = |e: EddyError| TestCaseError::fail(e.to_string());
    let mut b = full_range(factory);
    let value = b
        .value_state(&ValueStateDescriptor::<u16>::new("v"))
        .map_err(state_error)?;
    let list = b
        .list_state(&ListStateDescriptor::<u16>::new("l"))
        .map_err(state_error)?;
    let map = b
        .map_state(&MapStateDescriptor::<u8, u16>::new("m"))
        .map_err(state_error)?;
    let max = b
        .reducing_state(&ReducingStateDescriptor::new("max", |a: &u16, b: &u16| {
            *a.max(b)
        }))
        .map_err(state_error)?;
    let mut model = Model::default();
    for op in ops {
        let key = match &op {
            Op::Update(k, _) | Op::ClearValue(k) | Op::Add(k, _) | Op::ClearList(k) => *k,
            Op::Put(k, _, _) | Op::Remove(k, _) | Op::Reduce(k, _) => *k,
        };
        b.set_current_key(key.into()).map_err(state_error)?;
        let applied = match op {
            Op::Update(k, v) => value.update(v).map(|()| {
                model.values.insert(k, v);
            }),
            Op::ClearValue(k) => value.clear().map(|()| {
                model.values.remove(&k);
            }),
            Op::Add(k, v) => list
                .add(v)
                .map(|()| model.lists.entry(k).or_default().push(v)),
            Op::ClearList(k) => list.clear().map(|()| {
                model.lists.remove(&k);
            }),
            Op::Put(k, u, v) => map.put(u, v).map(|()| {
                model.maps.entry(k).or_default().insert(u, v);
            }),
            Op::Remove(k, u) => map.remove(&u).map(|()| {
                if let Some(m) = model.maps.get_mut(&k) {
                    m.remove(&u);
                }
            }),
            Op::Reduce(k, v) => max.add(v).map(|()| {
                let m = model.maxima.entry(k).or_insert(v);
                *m = (*m).max(v);
            }),
        };
        applied.map_err(state_error)?;
    }
    for k in 0..=255u8 {
        b.set_current_key(k.into()).map_err(state_error)?;
        prop_assert_eq!(
            value.value().map_err(state_error)?,
            model.values.get(&k).copied()
        );
        let got_list: Vec<u16> = list.get().map_err(state_error)?.collect();
        prop_assert_eq!(got_list, model.lists.get(&k).cloned().unwrap_or_default());
        let got_map: BTreeMap<u8, u16> = map.entries().map_err(state_error)?.collect();
        prop_assert_eq!(got_map, model.maps.get(&k).cloned().unwrap_or_default());
        prop_assert_eq!(
            max.get().map_err(state_error)?,
            model.maxima.get(&k).copied()
        );
    }
    Ok(())
}

/// A list cannot be modified while one of its iterators is alive (Flink's heap list would
/// throw a `ConcurrentModificationException`); a map's iterators are snapshots, so a map can
/// be modified while iterating it, as Flink's `MapState.iterator()` allows removal.
fn list_cannot_change_while_iterated_but_a_map_iteration_is_a_snapshot(
    factory: Factory,
) -> Result<(), EddyError> {
    let mut b = full_range(factory);
    let list = b.list_state(&ListStateDescriptor::<u32>::new("l"))?;
    let map = b.map_state(&MapStateDescriptor::<u32, u32>::new("m"))?;
    b.set_current_key(1)?;
    list.add_all(vec![1, 2, 3])?;
    {
        let mut iter = list.get()?;
        assert_eq!(iter.next(), Some(1));
        let err = list.add(4).err().map(|e| e.to_string());
        assert!(
            err.is_some_and(|e| e.contains("\"l\"")),
            "the error names the state"
        );
    }
    list.add(4)?;
    assert_eq!(list.get()?.count(), 4);
    map.put_all((0..10).map(|i| (i, i)).collect())?;
    for key in map.keys()? {
        if key % 2 == 0 {
            map.remove(&key)?;
        }
    }
    let mut left: Vec<u32> = map.keys()?.collect();
    left.sort_unstable();
    assert_eq!(left, vec![1, 3, 5, 7, 9]);
    Ok(())
}

/// Large values: a 64 MiB list under one key and a map of one million entries under another.
fn a_64_mib_list_and_a_million_entry_map(factory: Factory) -> Result<(), EddyError> {
    let mut b = full_range(factory);
    let list = b.list_state(&ListStateDescriptor::<u64>::new("big-list"))?;
    let map = b.map_state(&MapStateDescriptor::<u64, u64>::new("big-map"))?;
    const ELEMENTS: u64 = 8 * 1024 * 1024; // 8 Mi u64 = 64 MiB
    b.set_current_key(1)?;
    for chunk in 0..8u64 {
        let start = chunk * ELEMENTS / 8;
        list.add_all((start..start + ELEMENTS / 8).collect())?;
    }
    let (count, sum) = list.get()?.fold((0u64, 0u64), |(c, s), v| (c + 1, s + v));
    assert_eq!((count, sum), (ELEMENTS, ELEMENTS * (ELEMENTS - 1) / 2));
    b.set_current_key(2)?;
    assert_eq!(list.get()?.count(), 0);
    for i in 0..1_000_000u64 {
        map.put(i, i * 3)?;
    }
    assert_eq!(map.get(&999_999)?, Some(2_999_997));
    assert_eq!(map.entries()?.count(), 1_000_000);
    map.clear()?;
    assert!(map.is_empty()?);
    Ok(())
}
