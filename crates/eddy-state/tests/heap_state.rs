//! Heap backend behaviour: per-key scoping, every operation of every state type.

use eddy_core::key_group::{assign_to_key_group, subtask_for_key_group};
use eddy_core::{EddyError, KeyGroupRange};
use eddy_state::{
    AggregateFunction, AggregatingStateDescriptor, KeyedStateBackend, ListStateDescriptor,
    MapStateDescriptor, ReducingStateDescriptor, ValueStateDescriptor,
};
use proptest::prelude::*;
use std::collections::{BTreeMap, HashMap};

fn backend() -> KeyedStateBackend<u64> {
    KeyedStateBackend::heap(KeyGroupRange::new(0, 127), 128)
}

#[test]
fn value_state_holds_one_value_per_key_not_per_instance() -> Result<(), EddyError> {
    let mut b = backend();
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

#[test]
fn access_without_current_key_is_an_error_not_a_panic() -> Result<(), EddyError> {
    let mut b = backend();
    let v = b.value_state(&ValueStateDescriptor::<u64>::new("v"))?;
    let err = v.value().err().map(|e| e.to_string());
    assert_eq!(
        err.as_deref(),
        Some("state \"v\": accessed outside a keyed context (no current key is set)")
    );
    Ok(())
}

#[test]
fn key_outside_the_subtask_range_is_rejected() {
    let b = KeyedStateBackend::<u64>::heap(KeyGroupRange::for_subtask(128, 2, 0), 128);
    let foreign = (0u64..)
        .find(|k| subtask_for_key_group(128, 2, assign_to_key_group(k, 128)) == 1)
        .unwrap_or(0);
    assert!(b.set_current_key(foreign).is_err());
}

#[test]
fn registering_a_name_twice_shares_the_state_and_checks_the_kind() -> Result<(), EddyError> {
    let mut b = backend();
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

#[test]
fn list_state_operations() -> Result<(), EddyError> {
    let mut b = backend();
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

#[test]
fn map_state_operations() -> Result<(), EddyError> {
    let mut b = backend();
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

#[test]
fn reducing_state_folds_per_key() -> Result<(), EddyError> {
    let mut b = backend();
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

#[test]
fn aggregating_state_keeps_an_accumulator_per_key() -> Result<(), EddyError> {
    let mut b = backend();
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

#[test]
fn one_million_keys_fit_and_read_back() -> Result<(), EddyError> {
    let mut b = backend();
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
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (any::<u8>(), any::<u16>()).prop_map(|(k, v)| Op::Update(k, v)),
        any::<u8>().prop_map(Op::ClearValue),
        (any::<u8>(), any::<u16>()).prop_map(|(k, v)| Op::Add(k, v)),
        any::<u8>().prop_map(Op::ClearList),
        (any::<u8>(), any::<u8>(), any::<u16>()).prop_map(|(k, u, v)| Op::Put(k, u, v)),
        (any::<u8>(), any::<u8>()).prop_map(|(k, u)| Op::Remove(k, u)),
    ]
}

proptest! {
    /// The heap backend behaves exactly like a plain model of "one value/list/map per key".
    #[test]
    fn heap_backend_matches_a_model(ops in proptest::collection::vec(op(), 1..300)) {
        let mut b = backend();
        let value = b.value_state(&ValueStateDescriptor::<u16>::new("v")).unwrap();
        let list = b.list_state(&ListStateDescriptor::<u16>::new("l")).unwrap();
        let map = b.map_state(&MapStateDescriptor::<u8, u16>::new("m")).unwrap();
        let mut values: HashMap<u8, u16> = HashMap::new();
        let mut lists: HashMap<u8, Vec<u16>> = HashMap::new();
        let mut maps: HashMap<u8, BTreeMap<u8, u16>> = HashMap::new();
        for op in ops {
            match op {
                Op::Update(k, v) => { b.set_current_key(k.into()).unwrap(); value.update(v).unwrap(); values.insert(k, v); }
                Op::ClearValue(k) => { b.set_current_key(k.into()).unwrap(); value.clear().unwrap(); values.remove(&k); }
                Op::Add(k, v) => { b.set_current_key(k.into()).unwrap(); list.add(v).unwrap(); lists.entry(k).or_default().push(v); }
                Op::ClearList(k) => { b.set_current_key(k.into()).unwrap(); list.clear().unwrap(); lists.remove(&k); }
                Op::Put(k, u, v) => { b.set_current_key(k.into()).unwrap(); map.put(u, v).unwrap(); maps.entry(k).or_default().insert(u, v); }
                Op::Remove(k, u) => { b.set_current_key(k.into()).unwrap(); map.remove(&u).unwrap(); if let Some(m) = maps.get_mut(&k) { m.remove(&u); } }
            }
        }
        for k in 0..=255u8 {
            b.set_current_key(k.into()).unwrap();
            prop_assert_eq!(value.value().unwrap(), values.get(&k).copied());
            prop_assert_eq!(list.get().unwrap().collect::<Vec<_>>(), lists.get(&k).cloned().unwrap_or_default());
            let got: BTreeMap<u8, u16> = map.entries().unwrap().collect();
            prop_assert_eq!(got, maps.get(&k).cloned().unwrap_or_default());
        }
    }
}
