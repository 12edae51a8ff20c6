//! Snapshot and restore conformance: every state type (plain, namespaced, with TTL) and timers
//! survive a snapshot and a restore into a fresh backend, of the same kind or the other
//! (`from` and `to` factories); rescaling loses and duplicates nothing; what must be refused
//! is refused with a clear error; corrupt payloads are errors, never panics. Instantiated per
//! backend by `conformance_suite!` and across backends in `conformance.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use eddy_core::key_group::assign_to_key_group;
use eddy_core::{EddyError, KeyGroupRange};
use eddy_state::{
    AggregateFunction, AggregatingState, AggregatingStateDescriptor, KeyedStateBackend,
    KeyedStateSnapshot, ListState, ListStateDescriptor, ManualClock, MapState, MapStateDescriptor,
    Namespaced, ReducingState, ReducingStateDescriptor, StateTtlConfig, TimerService, ValueState,
    ValueStateDescriptor,
};
use proptest::prelude::*;

use super::Factory;

/// The window-like namespace of the namespaced states and timers below.
type Window = (u64, u64);

/// Sums `u64`s, counting them (an accumulator of another type than the input).
struct SumCount;

impl AggregateFunction<u64> for SumCount {
    type Acc = (u64, u32);
    type Out = u64;
    fn create_accumulator(&self) -> (u64, u32) {
        (0, 0)
    }
    fn add(&self, value: u64, acc: &mut (u64, u32)) {
        acc.0 += value;
        acc.1 += 1;
    }
    fn get_result(&self, acc: &(u64, u32)) -> u64 {
        acc.0 * 1000 + u64::from(acc.1)
    }
    fn merge(&self, a: (u64, u32), b: (u64, u32)) -> (u64, u32) {
        (a.0 + b.0, a.1 + b.1)
    }
}

const T0: u64 = 1_700_000_000_000;

fn ttl() -> StateTtlConfig {
    StateTtlConfig::new(Duration::from_secs(3600))
}

fn backend(factory: Factory, range: KeyGroupRange, max: usize) -> KeyedStateBackend<u64> {
    let mut b = factory(range, max);
    b.set_ttl_clock(Arc::new(ManualClock::new(T0)));
    b
}

fn full(factory: Factory) -> KeyedStateBackend<u64> {
    backend(factory, KeyGroupRange::new(0, 127), 128)
}

/// Every kind of state and both kinds of timer service, registered on one backend.
struct AllStates {
    value: ValueState<String>,
    list: ListState<u32>,
    map: MapState<String, u64>,
    reducing: ReducingState<u64>,
    aggregating: AggregatingState<u64, u64>,
    ns_value: Namespaced<ValueState<u64>, Window>,
    ns_list: Namespaced<ListState<String>, Window>,
    ns_map: Namespaced<MapState<u32, i64>, Window>,
    ns_reducing: Namespaced<ReducingState<u64>, Window>,
    ns_aggregating: Namespaced<AggregatingState<u64, u64>, Window>,
    ttl_value: ValueState<u64>,
    ttl_list: ListState<u64>,
    ttl_map: MapState<u64, String>,
    user_timers: std::rc::Rc<TimerService<u64, ()>>,
    window_timers: std::rc::Rc<TimerService<u64, Window>>,
}

const WINDOWS: [Window; 3] = [(0, 10), (10, 20), (5, 15)];

impl AllStates {
    fn register(b: &mut KeyedStateBackend<u64>) -> Result<AllStates, EddyError> {
        Ok(AllStates {
            value: b.value_state(&ValueStateDescriptor::new("value"))?,
            list: b.list_state(&ListStateDescriptor::new("list"))?,
            map: b.map_state(&MapStateDescriptor::new("map"))?,
            reducing: b.reducing_state(&ReducingStateDescriptor::new(
                "reducing",
                |a: &u64, b: &u64| a + b,
            ))?,
            aggregating: b
                .aggregating_state(&AggregatingStateDescriptor::new("aggregating", SumCount))?,
            ns_value: b.namespaced_value_state(&ValueStateDescriptor::new("ns-value"))?,
            ns_list: b.namespaced_list_state(&ListStateDescriptor::new("ns-list"))?,
            ns_map: b.namespaced_map_state(&MapStateDescriptor::new("ns-map"))?,
            ns_reducing: b.namespaced_reducing_state(&ReducingStateDescriptor::new(
                "ns-reducing",
                |a: &u64, b: &u64| a.max(b).to_owned(),
            ))?,
            ns_aggregating: b.namespaced_aggregating_state(&AggregatingStateDescriptor::new(
                "ns-aggregating",
                SumCount,
            ))?,
            ttl_value: b.value_state(&ValueStateDescriptor::new("ttl-value").enable_ttl(ttl()))?,
            ttl_list: b.list_state(&ListStateDescriptor::new("ttl-list").enable_ttl(ttl()))?,
            ttl_map: b.map_state(&MapStateDescriptor::new("ttl-map").enable_ttl(ttl()))?,
            user_timers: b.timer_service::<()>("_user_timers")?,
            window_timers: b.timer_service::<Window>("_window_timers")?,
        })
    }

    /// Writes contents that differ per key (some keys hold only some states).
    fn fill(
        &self,
        b: &KeyedStateBackend<u64>,
        keys: impl Iterator<Item = u64>,
    ) -> Result<(), EddyError> {
        for k in keys {
            b.set_current_key(k)?;
            if k % 2 == 0 {
                self.value.update(format!("v{k}"))?;
            }
            for i in 0..(k % 4) as u32 {
                self.list.add(i * 7 + k as u32)?;
            }
            for i in 0..(k % 3) {
                self.map.put(format!("u{i}"), k * 100 + i)?;
            }
            if k % 40 == 0 {
                // A map that outgrows the inline representation.
                for i in 0..40 {
                    self.map.put(format!("big{i}"), i)?;
                }
            }
            self.reducing.add(k)?;
            self.reducing.add(1)?;
            if k % 5 != 0 {
                self.aggregating.add(k)?;
                self.aggregating.add(3)?;
            }
            for (i, w) in WINDOWS.iter().enumerate() {
                if (k + i as u64) % 3 == 0 {
                    continue;
                }
                self.ns_value.set_current_namespace(*w);
                self.ns_value.update(k + w.0)?;
                self.ns_list.set_current_namespace(*w);
                self.ns_list.add(format!("{k}@{w:?}"))?;
                self.ns_list.add("second".into())?;
                self.ns_map.set_current_namespace(*w);
                self.ns_map.put(k as u32, -(k as i64))?;
                self.ns_reducing.set_current_namespace(*w);
                self.ns_reducing.add(k)?;
                self.ns_aggregating.set_current_namespace(*w);
                self.ns_aggregating.add(w.1)?;
                self.window_timers.register_event_time_timer(*w, w.1 - 1)?;
            }
            if k % 3 == 0 {
                self.ttl_value.update(k)?;
                self.ttl_list.add_all(vec![k, k + 1])?;
                self.ttl_map.put(k, format!("t{k}"))?;
            }
            self.user_timers
                .register_event_time_timer((), 1000 + k % 7)?;
            if k % 4 == 1 {
                self.user_timers
                    .register_processing_time_timer((), 50 + k)?;
            }
        }
        Ok(())
    }

    /// Everything the states hold for `keys`, as text, read through the handles.
    fn dump(
        &self,
        b: &KeyedStateBackend<u64>,
        keys: impl Iterator<Item = u64>,
    ) -> Result<Vec<String>, EddyError> {
        let mut out = Vec::new();
        for k in keys {
            b.set_current_key(k)?;
            let mut map: Vec<(String, u64)> = self.map.entries()?.collect();
            map.sort();
            let mut ttl_map: Vec<(u64, String)> = self.ttl_map.entries()?.collect();
            ttl_map.sort();
            out.push(format!(
                "{k}: value={:?} list={:?} map={map:?} reducing={:?} aggregating={:?} \
                 ttl-value={:?} ttl-list={:?} ttl-map={ttl_map:?}",
                self.value.value()?,
                self.list.get()?.collect::<Vec<_>>(),
                self.reducing.get()?,
                self.aggregating.get()?,
                self.ttl_value.value()?,
                self.ttl_list.get()?.collect::<Vec<_>>(),
            ));
            for w in WINDOWS {
                self.ns_value.set_current_namespace(w);
                self.ns_list.set_current_namespace(w);
                self.ns_map.set_current_namespace(w);
                self.ns_reducing.set_current_namespace(w);
                self.ns_aggregating.set_current_namespace(w);
                let mut ns_map: Vec<(u32, i64)> = self.ns_map.entries()?.collect();
                ns_map.sort();
                out.push(format!(
                    "{k}@{w:?}: value={:?} list={:?} map={ns_map:?} reducing={:?} aggregating={:?}",
                    self.ns_value.value()?,
                    self.ns_list.get()?.collect::<Vec<_>>(),
                    self.ns_reducing.get()?,
                    self.ns_aggregating.get()?,
                ));
            }
        }
        Ok(out)
    }

    /// Every timer, fired (which removes them), sorted.
    fn fire_all(&self) -> Result<Vec<String>, EddyError> {
        let mut out = Vec::new();
        while let Some(t) = self.user_timers.poll_event_time(u64::MAX)? {
            out.push(format!("user event {} {}", t.key, t.timestamp));
        }
        while let Some(t) = self.user_timers.poll_processing_time(u64::MAX)? {
            out.push(format!("user processing {} {}", t.key, t.timestamp));
        }
        while let Some(t) = self.window_timers.poll_event_time(u64::MAX)? {
            out.push(format!(
                "window {} {:?} {}",
                t.key, t.namespace, t.timestamp
            ));
        }
        out.sort();
        Ok(out)
    }
}

/// A snapshot's contents in a canonical order (entries and timers sorted per state and key
/// group), to compare snapshots of different backends or of a restored backend.
type Canonical = BTreeMap<(String, u16), Vec<String>>;

fn canonical(snapshot: &KeyedStateSnapshot) -> Result<Canonical, EddyError> {
    let mut out: Canonical = BTreeMap::new();
    for meta in snapshot.states() {
        for (kg, e) in snapshot.entries_of(&meta.name)? {
            out.entry((meta.name.clone(), kg))
                .or_default()
                .push(format!(
                    "{:?} {:?} {:?} {:?}",
                    e.key, e.namespace, e.user_key, e.value
                ));
        }
    }
    for meta in snapshot.timer_services() {
        for (kg, t) in snapshot.timers_of(&meta.name)? {
            out.entry((format!("timers {}", meta.name), kg))
                .or_default()
                .push(format!(
                    "{:?} {:?} {:?} {}",
                    t.domain, t.key, t.namespace, t.timestamp
                ));
        }
    }
    for entries in out.values_mut() {
        entries.sort();
    }
    Ok(out)
}

const KEYS: std::ops::Range<u64> = 0..300;

/// Snapshot (through encode/decode) and restore into a fresh backend of `to`: the restored
/// backend holds the same state, reads the same through every handle, and snapshots the same.
pub(super) fn every_state_type_round_trips(from: Factory, to: Factory) -> Result<(), EddyError> {
    let mut b = full(from);
    let states = AllStates::register(&mut b)?;
    states.fill(&b, KEYS)?;
    let snapshot = b.snapshot()?;
    assert_eq!(snapshot.states().len(), 13);
    assert_eq!(snapshot.timer_services().len(), 2);
    assert!(snapshot.entry_count() > 1000);
    let bytes = snapshot.encode()?;
    let decoded = KeyedStateSnapshot::decode(&bytes, "keyed-0.bin")?;
    assert_eq!(decoded, snapshot);

    let mut restored = full(to);
    restored.restore("op", vec![decoded])?;
    let again = AllStates::register(&mut restored)?;
    assert_eq!(restored.finish_restore()?, Vec::<String>::new());
    let second = restored.snapshot()?;
    assert_eq!(second.states(), snapshot.states());
    assert_eq!(second.timer_services(), snapshot.timer_services());
    assert_eq!(canonical(&second)?, canonical(&snapshot)?);

    assert_eq!(again.dump(&restored, KEYS)?, states.dump(&b, KEYS)?);
    let fired = states.fire_all()?;
    assert!(fired.len() > 300);
    assert_eq!(again.fire_all()?, fired);
    // The restored states keep working: writes after a restore land next to restored data.
    restored.set_current_key(3)?;
    again.list.add(99)?;
    assert_eq!(again.list.get()?.collect::<Vec<_>>(), vec![3, 10, 17, 99]);
    again.map.put("new".into(), 1)?;
    assert_eq!(again.map.get(&"u1".into())?, None);
    restored.set_current_key(4)?;
    assert_eq!(again.map.get(&"u0".into())?, Some(400));
    Ok(())
}

pub(super) fn snapshot_and_restore_round_trip(factory: Factory) -> Result<(), EddyError> {
    every_state_type_round_trips(factory, factory)
}

/// An empty backend snapshots to an empty snapshot, which restores into an empty backend.
pub(super) fn an_empty_backend_round_trips(factory: Factory) -> Result<(), EddyError> {
    let b = full(factory);
    let snapshot = b.snapshot()?;
    assert!(snapshot.key_groups().is_empty());
    let mut restored = full(factory);
    restored.restore(
        "op",
        vec![KeyedStateSnapshot::decode(&snapshot.encode()?, "x")?],
    )?;
    let v = restored.value_state(&ValueStateDescriptor::<u64>::new("v"))?;
    restored.set_current_key(1)?;
    assert_eq!(v.value()?, None);
    assert_eq!(restored.finish_restore()?, Vec::<String>::new());
    Ok(())
}

pub(super) fn max_parallelism_mismatch_is_refused(factory: Factory) -> Result<(), EddyError> {
    let mut b = full(factory);
    let v = b.value_state(&ValueStateDescriptor::<u64>::new("v"))?;
    b.set_current_key(1)?;
    v.update(1)?;
    let snapshot = b.snapshot()?;
    let mut other = backend(factory, KeyGroupRange::new(0, 63), 64);
    let err = other
        .restore("op", vec![snapshot])
        .err()
        .map(|e| e.to_string());
    let err = err.unwrap_or_default();
    assert!(
        err.contains("max parallelism 128") && err.contains("max parallelism 64"),
        "{err}"
    );
    Ok(())
}

pub(super) fn type_mismatch_names_the_state_and_both_types(
    factory: Factory,
) -> Result<(), EddyError> {
    let mut b = full(factory);
    let v = b.value_state(&ValueStateDescriptor::<u64>::new("count"))?;
    b.list_state(&ListStateDescriptor::<u64>::new("events"))?;
    b.value_state(&ValueStateDescriptor::<u64>::new("seen").enable_ttl(ttl()))?;
    b.set_current_key(1)?;
    v.update(5)?;
    let snapshot = b.snapshot()?;

    let mut restored = full(factory);
    restored.restore("op", vec![snapshot])?;
    let err = restored
        .value_state(&ValueStateDescriptor::<String>::new("count"))
        .err();
    let Some(EddyError::Schema(mismatch)) = err else {
        panic!("a type mismatch must be a schema error, got {err:?}");
    };
    assert_eq!(
        (mismatch.operator.as_str(), mismatch.state.as_str()),
        ("op", "count")
    );
    assert_eq!(
        mismatch.reason,
        "type changed from u64 to String; incompatible"
    );
    assert_eq!(
        mismatch.to_string(),
        "state \"count\" of operator \"op\": type changed from u64 to String; incompatible"
    );
    // Another kind, and TTL switched off, are refused too.
    let err = restored
        .value_state(&ValueStateDescriptor::<u64>::new("events"))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("\"events\"") && err.contains("List") && err.contains("Value"),
        "{err}"
    );
    let err = restored
        .value_state(&ValueStateDescriptor::<u64>::new("seen"))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("TTL was on, is now off"), "{err}");
    // A refused registration changed nothing: the right one still restores the value.
    let count = restored.value_state(&ValueStateDescriptor::<u64>::new("count"))?;
    restored.set_current_key(1)?;
    assert_eq!(count.value()?, Some(5));
    // The timer service type is checked as well.
    let mut b = full(factory);
    b.timer_service::<u64>("t")?;
    let mut restored = full(factory);
    restored.restore("op", vec![b.snapshot()?])?;
    let err = restored
        .timer_service::<()>("t")
        .err()
        .map(|e| e.to_string());
    assert!(err.is_some_and(|e| e.contains("\"t\"") && e.contains("u64")));
    Ok(())
}

pub(super) fn finish_restore_reports_unregistered_states(
    factory: Factory,
) -> Result<(), EddyError> {
    let mut b = full(factory);
    let a = b.value_state(&ValueStateDescriptor::<u64>::new("a"))?;
    b.map_state(&MapStateDescriptor::<u64, u64>::new("b"))?;
    b.timer_service::<()>("timers")?;
    b.set_current_key(1)?;
    a.update(1)?;
    let snapshot = b.snapshot()?;
    let mut restored = full(factory);
    restored.restore("op", vec![snapshot.clone()])?;
    restored.value_state(&ValueStateDescriptor::<u64>::new("a"))?;
    assert_eq!(
        restored.finish_restore()?,
        vec!["b".to_string(), "timers".to_string()]
    );
    assert_eq!(restored.finish_restore()?, Vec::<String>::new());
    // A second restore, or one after states were registered, is refused.
    assert!(restored.restore("op", vec![snapshot.clone()]).is_err());
    let mut twice = full(factory);
    twice.restore("op", vec![snapshot.clone()])?;
    assert!(twice.restore("op", vec![snapshot]).is_err());
    Ok(())
}

/// The key and user key bytes of a snapshot entry.
type KeyAndUserKey = (Vec<u8>, Option<Vec<u8>>);

/// `cleanup_full_snapshot` leaves the values expired at snapshot time out (per value, list
/// element and map entry); without it, expired values are in the snapshot with their
/// timestamps (and expire after the restore as they would have).
pub(super) fn cleanup_full_snapshot_leaves_expired_values_out(
    factory: Factory,
) -> Result<(), EddyError> {
    let clock = ManualClock::new(T0);
    let mut b = factory(KeyGroupRange::new(0, 127), 128);
    b.set_ttl_clock(Arc::new(clock.clone()));
    let ten = StateTtlConfig::new(Duration::from_secs(10));
    let cleaned = ten.clone().cleanup_full_snapshot();
    let v = b.value_state(&ValueStateDescriptor::<u64>::new("v").enable_ttl(cleaned.clone()))?;
    let l = b.list_state(&ListStateDescriptor::<u64>::new("l").enable_ttl(cleaned.clone()))?;
    let m = b.map_state(&MapStateDescriptor::<u64, u64>::new("m").enable_ttl(cleaned))?;
    let kept = b.value_state(&ValueStateDescriptor::<u64>::new("kept").enable_ttl(ten))?;
    b.set_current_key(1)?;
    v.update(1)?;
    l.add(1)?;
    m.put(1, 1)?;
    kept.update(1)?;
    clock.advance(Duration::from_secs(6));
    b.set_current_key(2)?;
    v.update(2)?;
    kept.update(2)?;
    l.add(2)?;
    m.put(2, 2)?;
    b.set_current_key(1)?;
    l.add(3)?;
    m.put(3, 3)?;
    // t = 11: everything written at t = 0 has expired, nothing written at t = 6.
    clock.advance(Duration::from_secs(5));
    let snapshot = b.snapshot()?;
    let keys = |name: &str| -> Result<Vec<KeyAndUserKey>, EddyError> {
        let mut keys: Vec<_> = snapshot
            .entries_of(name)?
            .into_iter()
            .map(|(_, e)| (e.key.to_vec(), e.user_key.map(<[u8]>::to_vec)))
            .collect();
        keys.sort();
        Ok(keys)
    };
    let pc = |k: u64| postcard::to_allocvec(&k).unwrap_or_default();
    assert_eq!(keys("v")?, vec![(pc(2), None)]);
    assert_eq!(keys("kept")?, vec![(pc(1), None), (pc(2), None)]);
    assert_eq!(keys("m")?, vec![(pc(1), Some(pc(3))), (pc(2), Some(pc(2)))]);
    // Key 1's list keeps only its element added at t = 6.
    let lists: BTreeMap<Vec<u8>, usize> = snapshot
        .entries_of("l")?
        .into_iter()
        .map(|(_, e)| (e.key.to_vec(), e.elements().count()))
        .collect();
    assert_eq!(lists, BTreeMap::from([(pc(1), 1), (pc(2), 1)]));

    let mut restored = factory(KeyGroupRange::new(0, 127), 128);
    restored.set_ttl_clock(Arc::new(clock.clone()));
    restored.restore("op", vec![snapshot])?;
    let ten = StateTtlConfig::new(Duration::from_secs(10));
    let cleaned = ten.clone().cleanup_full_snapshot();
    let v =
        restored.value_state(&ValueStateDescriptor::<u64>::new("v").enable_ttl(cleaned.clone()))?;
    let l =
        restored.list_state(&ListStateDescriptor::<u64>::new("l").enable_ttl(cleaned.clone()))?;
    let m = restored.map_state(&MapStateDescriptor::<u64, u64>::new("m").enable_ttl(cleaned))?;
    let kept = restored.value_state(&ValueStateDescriptor::<u64>::new("kept").enable_ttl(ten))?;
    restored.set_current_key(1)?;
    assert_eq!(l.get()?.collect::<Vec<_>>(), vec![3]);
    assert_eq!(m.entries()?.collect::<Vec<_>>(), vec![(3, 3)]);
    assert_eq!(v.value()?, None);
    // Copied with its timestamp, so it is expired after the restore too.
    assert_eq!(kept.value()?, None);
    restored.set_current_key(2)?;
    assert_eq!(v.value()?, Some(2));
    assert_eq!(kept.value()?, Some(2));
    clock.advance(Duration::from_secs(5));
    assert_eq!(kept.value()?, None);
    Ok(())
}

/// Truncated, corrupted or trailing bytes are errors (or, where a flipped byte still decodes,
/// a restore that fails or succeeds), never panics.
pub(super) fn corrupt_payloads_are_errors_not_panics(factory: Factory) -> Result<(), EddyError> {
    let mut b = full(factory);
    let v = b.value_state(&ValueStateDescriptor::<u64>::new("v").enable_ttl(ttl()))?;
    let l = b.namespaced_list_state::<Window, String>(&ListStateDescriptor::new("l"))?;
    let m = b.map_state(&MapStateDescriptor::<u32, u64>::new("m"))?;
    let t = b.timer_service::<Window>("t")?;
    for k in 0..4u64 {
        b.set_current_key(k)?;
        v.update(k)?;
        l.set_current_namespace((k, k + 1));
        l.add(format!("x{k}"))?;
        m.put(k as u32, k)?;
        t.register_event_time_timer((k, 1), k)?;
    }
    let bytes = b.snapshot()?.encode()?;
    for len in 0..bytes.len() {
        let err = KeyedStateSnapshot::decode(&bytes[..len], "chk-1/op/keyed-0.bin").err();
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.contains("chk-1/op/keyed-0.bin"),
            "truncated to {len}: {msg}"
        );
    }
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(KeyedStateSnapshot::decode(&trailing, "x").is_err());
    // Every single-byte corruption: decoding, restoring and registering must not panic.
    let step = (bytes.len() / 96).max(1);
    for position in (0..bytes.len()).step_by(step) {
        for flip in [0x01u8, 0x80, 0xFF] {
            let mut corrupt = bytes.clone();
            corrupt[position] ^= flip;
            let Ok(snapshot) = KeyedStateSnapshot::decode(&corrupt, "x") else {
                continue;
            };
            let mut restored = full(factory);
            if restored.restore("op", vec![snapshot]).is_err() {
                continue;
            }
            let _ = restored.value_state(&ValueStateDescriptor::<u64>::new("v").enable_ttl(ttl()));
            let _ =
                restored.namespaced_list_state::<Window, String>(&ListStateDescriptor::new("l"));
            let _ = restored.map_state(&MapStateDescriptor::<u32, u64>::new("m"));
            let _ = restored.timer_service::<Window>("t");
            let _ = restored.finish_restore();
            let _ = restored.snapshot();
        }
    }
    Ok(())
}

/// A generated job state: per key a value, a list, a map and namespaced values, and timers.
#[derive(Debug, Clone)]
pub(super) struct Contents {
    values: BTreeMap<u64, u32>,
    lists: BTreeMap<u64, Vec<u16>>,
    maps: BTreeMap<u64, BTreeMap<u8, u8>>,
    windows: BTreeMap<(u64, Window), u64>,
    timers: BTreeMap<(u64, u64), ()>,
}

pub(super) fn contents() -> impl Strategy<Value = Contents> {
    let key = 0u64..2000;
    (
        proptest::collection::btree_map(key.clone(), any::<u32>(), 0..60),
        proptest::collection::btree_map(
            key.clone(),
            proptest::collection::vec(any::<u16>(), 1..5),
            0..40,
        ),
        proptest::collection::btree_map(
            key.clone(),
            proptest::collection::btree_map(any::<u8>(), any::<u8>(), 1..4),
            0..40,
        ),
        proptest::collection::btree_map((key.clone(), (0u64..3, 3u64..5)), any::<u64>(), 0..40),
        proptest::collection::btree_map((key, 0u64..100), Just(()), 0..40),
    )
        .prop_map(|(values, lists, maps, windows, timers)| Contents {
            values,
            lists,
            maps,
            windows,
            timers,
        })
}

/// The handles of the generated contents.
struct Handles {
    value: ValueState<u32>,
    list: ListState<u16>,
    map: MapState<u8, u8>,
    window: Namespaced<ValueState<u64>, Window>,
    timers: std::rc::Rc<TimerService<u64, ()>>,
}

fn handles(b: &mut KeyedStateBackend<u64>) -> Result<Handles, EddyError> {
    Ok(Handles {
        value: b.value_state(&ValueStateDescriptor::new("value"))?,
        list: b.list_state(&ListStateDescriptor::new("list"))?,
        map: b.map_state(&MapStateDescriptor::new("map"))?,
        window: b.namespaced_value_state(&ValueStateDescriptor::new("window"))?,
        timers: b.timer_service::<()>("timers")?,
    })
}

/// Writes the contents' keys that belong to `b`'s range.
fn write(b: &mut KeyedStateBackend<u64>, c: &Contents, max: usize) -> Result<(), EddyError> {
    let h = handles(b)?;
    let range = b.context().key_group_range();
    let mine = |k: &u64| range.contains(assign_to_key_group(k, max));
    for (k, v) in c.values.iter().filter(|(k, _)| mine(k)) {
        b.set_current_key(*k)?;
        h.value.update(*v)?;
    }
    for (k, l) in c.lists.iter().filter(|(k, _)| mine(k)) {
        b.set_current_key(*k)?;
        h.list.add_all(l.clone())?;
    }
    for (k, m) in c.maps.iter().filter(|(k, _)| mine(k)) {
        b.set_current_key(*k)?;
        h.map.put_all(m.iter().map(|(a, b)| (*a, *b)).collect())?;
    }
    for ((k, w), v) in c.windows.iter().filter(|((k, _), _)| mine(k)) {
        b.set_current_key(*k)?;
        h.window.set_current_namespace(*w);
        h.window.update(*v)?;
    }
    for (k, ts) in c.timers.keys().filter(|(k, _)| mine(k)) {
        b.set_current_key(*k)?;
        h.timers.register_event_time_timer((), *ts)?;
    }
    Ok(())
}

/// Reads back everything `b` holds (firing its timers).
fn read(b: &mut KeyedStateBackend<u64>) -> Result<Contents, EddyError> {
    let h = handles(b)?;
    let mut c = Contents {
        values: BTreeMap::new(),
        lists: BTreeMap::new(),
        maps: BTreeMap::new(),
        windows: BTreeMap::new(),
        timers: BTreeMap::new(),
    };
    for k in b.keys("value")? {
        b.set_current_key(k)?;
        c.values.insert(k, h.value.value()?.unwrap_or_default());
    }
    for k in b.keys("list")? {
        b.set_current_key(k)?;
        c.lists.insert(k, h.list.get()?.collect());
    }
    for k in b.keys("map")? {
        b.set_current_key(k)?;
        c.maps.insert(k, h.map.entries()?.collect());
    }
    let mut window_keys = b.keys("window")?;
    window_keys.sort_unstable();
    window_keys.dedup();
    for k in window_keys {
        b.set_current_key(k)?;
        for start in 0..3 {
            for end in 3..5 {
                h.window.set_current_namespace((start, end));
                if let Some(v) = h.window.value()? {
                    c.windows.insert((k, (start, end)), v);
                }
            }
        }
    }
    while let Some(t) = h.timers.poll_event_time(u64::MAX)? {
        assert!(
            c.timers.insert((t.key, t.timestamp), ()).is_none(),
            "a timer fired twice"
        );
    }
    Ok(c)
}

/// Snapshots of 2 subtasks restored into `new_parallelism` subtasks: every key lands in
/// exactly one new subtask, with all of its state; nothing is lost or duplicated.
pub(super) fn rescaling_loses_and_duplicates_nothing(
    factory: Factory,
    c: &Contents,
) -> Result<(), EddyError> {
    const MAX: usize = 32;
    let mut snapshots = Vec::new();
    for index in 0..2 {
        let mut old = backend(factory, KeyGroupRange::for_subtask(MAX, 2, index), MAX);
        write(&mut old, c, MAX)?;
        snapshots.push(KeyedStateSnapshot::decode(
            &old.snapshot()?.encode()?,
            "old",
        )?);
    }
    for new_parallelism in [1, 3, 4] {
        let mut union = Contents {
            values: BTreeMap::new(),
            lists: BTreeMap::new(),
            maps: BTreeMap::new(),
            windows: BTreeMap::new(),
            timers: BTreeMap::new(),
        };
        let mut parts = 0;
        for index in 0..new_parallelism {
            let range = KeyGroupRange::for_subtask(MAX, new_parallelism, index);
            let mut new = backend(factory, range, MAX);
            new.restore("op", snapshots.clone())?;
            let part = read(&mut new)?;
            assert_eq!(new.finish_restore()?, Vec::<String>::new());
            let keys = part
                .values
                .keys()
                .chain(part.lists.keys())
                .chain(part.maps.keys())
                .chain(part.windows.keys().map(|(k, _)| k))
                .chain(part.timers.keys().map(|(k, _)| k));
            for k in keys {
                assert!(
                    range.contains(assign_to_key_group(k, MAX)),
                    "key {k} outside {range:?}"
                );
            }
            parts += part.values.len()
                + part.lists.len()
                + part.maps.len()
                + part.windows.len()
                + part.timers.len();
            union.values.extend(part.values);
            union.lists.extend(part.lists);
            union.maps.extend(part.maps);
            union.windows.extend(part.windows);
            union.timers.extend(part.timers);
        }
        // Equal unions and equal sizes: no key was restored into two subtasks.
        let total =
            c.values.len() + c.lists.len() + c.maps.len() + c.windows.len() + c.timers.len();
        assert_eq!(parts, total, "duplicates at parallelism {new_parallelism}");
        assert_eq!(
            union.values, c.values,
            "values at parallelism {new_parallelism}"
        );
        assert_eq!(
            union.lists, c.lists,
            "lists at parallelism {new_parallelism}"
        );
        assert_eq!(union.maps, c.maps, "maps at parallelism {new_parallelism}");
        assert_eq!(
            union.windows, c.windows,
            "windows at parallelism {new_parallelism}"
        );
        assert_eq!(
            union.timers, c.timers,
            "timers at parallelism {new_parallelism}"
        );
    }
    Ok(())
}

/// One old subtask's snapshot restored twice into the same new subtask: the overlap is
/// refused, naming the key group.
pub(super) fn overlapping_snapshots_are_refused(factory: Factory) -> Result<(), EddyError> {
    let mut b = full(factory);
    let v = b.value_state(&ValueStateDescriptor::<u64>::new("v"))?;
    b.set_current_key(1)?;
    v.update(1)?;
    let snapshot = b.snapshot()?;
    let mut restored = full(factory);
    let err = restored
        .restore("op", vec![snapshot.clone(), snapshot])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("key group") && err.contains("also in"),
        "{err}"
    );
    Ok(())
}

/// Large states restore in time linear in their size: a 100 000-entry map under one key and
/// 100 000 value keys. (Inserting a heap snapshot's entries in the order of the old hash
/// table's slots would cluster the new table and make this quadratic.)
pub(super) fn large_states_restore(factory: Factory) -> Result<(), EddyError> {
    let mut b = full(factory);
    let v = b.value_state(&ValueStateDescriptor::<u64>::new("v"))?;
    let m = b.map_state(&MapStateDescriptor::<u64, u64>::new("m"))?;
    for k in 0..100_000u64 {
        b.set_current_key(k)?;
        v.update(k + 1)?;
    }
    b.set_current_key(7)?;
    m.put_all((0..100_000u64).map(|u| (u, u * 2)).collect())?;
    let snapshot = b.snapshot()?;
    assert_eq!(snapshot.entry_count(), 200_000);
    let mut restored = full(factory);
    restored.restore("op", vec![snapshot])?;
    let v = restored.value_state(&ValueStateDescriptor::<u64>::new("v"))?;
    let m = restored.map_state(&MapStateDescriptor::<u64, u64>::new("m"))?;
    assert_eq!(restored.keys("v")?.len(), 100_000);
    restored.set_current_key(7)?;
    assert_eq!(m.entries()?.count(), 100_000);
    assert_eq!(m.get(&99_999)?, Some(199_998));
    assert_eq!(v.value()?, Some(8));
    restored.set_current_key(99_999)?;
    assert_eq!(v.value()?, Some(100_000));
    Ok(())
}

/// The value types of one state in two versions of a job (schema evolution).
mod v1 {
    use serde::{Deserialize, Serialize};

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct Tx {
        pub id: u64,
        pub amount: u32,
        pub note: String,
    }
}

mod v2 {
    use serde::{Deserialize, Serialize};

    /// `note` removed, `currency` added with a default, `amount` widened and moved first.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct Tx {
        pub amount: u64,
        pub id: u64,
        #[serde(default)]
        pub currency: String,
    }

    /// `amount` changed to a string: incompatible.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct TextAmount {
        pub id: u64,
        pub amount: String,
        pub note: String,
    }

    /// `currency` added without a default: incompatible.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct NoDefault {
        pub id: u64,
        pub amount: u32,
        pub note: String,
        pub currency: String,
    }
}

fn old_tx(id: u64) -> v1::Tx {
    v1::Tx {
        id,
        amount: 3_000_000_000 + id as u32,
        note: format!("note {id}"),
    }
}

fn new_tx(id: u64) -> v2::Tx {
    v2::Tx {
        amount: 3_000_000_000 + id,
        id,
        currency: String::new(),
    }
}

pub(super) fn schema_evolution_migrates_value_list_and_map_state(
    factory: Factory,
) -> Result<(), EddyError> {
    let mut b = full(factory);
    let latest = b.value_state(&ValueStateDescriptor::<v1::Tx>::new("latest").enable_ttl(ttl()))?;
    let history = b.list_state(&ListStateDescriptor::<v1::Tx>::new("history"))?;
    let by_id = b.map_state(&MapStateDescriptor::<u64, v1::Tx>::new("by-id"))?;
    for key in 0..50u64 {
        b.set_current_key(key)?;
        latest.update(old_tx(key))?;
        history.add(old_tx(key))?;
        history.add(old_tx(key + 1))?;
        by_id.put(key * 10, old_tx(key))?;
    }
    let snapshot = KeyedStateSnapshot::decode(&b.snapshot()?.encode()?, "savepoint")?;

    let mut restored = full(factory);
    restored.restore("op", vec![snapshot])?;
    // Incompatible registrations are refused with the field named, and touch nothing.
    let err = restored
        .value_state(&ValueStateDescriptor::<v2::TextAmount>::new("latest").enable_ttl(ttl()))
        .err()
        .map(|e| e.to_string());
    assert_eq!(
        err.as_deref(),
        Some(
            "state \"latest\" of operator \"op\": field \"amount\" changed from u32 to String; \
             incompatible"
        )
    );
    let err = restored
        .list_state(&ListStateDescriptor::<v2::NoDefault>::new("history"))
        .err()
        .map(|e| e.to_string());
    assert_eq!(
        err.as_deref(),
        Some(
            "state \"history\" of operator \"op\": field \"currency\" was added without a \
             default (give it #[serde(default)]); incompatible"
        )
    );
    // The compatible new version reads every old value, migrated.
    let latest =
        restored.value_state(&ValueStateDescriptor::<v2::Tx>::new("latest").enable_ttl(ttl()))?;
    let history = restored.list_state(&ListStateDescriptor::<v2::Tx>::new("history"))?;
    let by_id = restored.map_state(&MapStateDescriptor::<u64, v2::Tx>::new("by-id"))?;
    assert!(restored.finish_restore()?.is_empty());
    for key in 0..50u64 {
        restored.set_current_key(key)?;
        assert_eq!(latest.value()?, Some(new_tx(key)));
        assert_eq!(
            history.get()?.collect::<Vec<_>>(),
            vec![new_tx(key), new_tx(key + 1)]
        );
        assert_eq!(by_id.get(&(key * 10))?, Some(new_tx(key)));
    }
    // A snapshot of the migrated state records the new schema: it restores as v2 as is.
    let again = restored.snapshot()?;
    let meta = again.state("latest").map(|m| m.value.describe());
    assert_eq!(
        meta.as_deref(),
        Some("Tx { amount: u64, id: u64, currency: String }")
    );
    Ok(())
}

/// An asynchronous snapshot is the state at the moment its synchronous part ran: writes,
/// clears and new timers after it are not in it, and it equals a synchronous snapshot taken
/// at that moment (entries, timers and metadata), for every state type.
pub(super) fn a_pending_snapshot_is_the_state_when_it_was_taken(
    factory: Factory,
) -> Result<(), EddyError> {
    let mut b = full(factory);
    let states = AllStates::register(&mut b)?;
    states.fill(&b, KEYS)?;
    let expected = b.snapshot()?;
    let pending = b.snapshot_pending()?;
    // The backend goes on: overwrite, clear and add after the barrier.
    for k in KEYS {
        b.set_current_key(k)?;
        states.value.update("after".into())?;
        states.list.add(12345)?;
        states.map.clear()?;
        states.ttl_value.clear()?;
    }
    states.fill(&b, 10_000..10_050)?;
    // Completed on another thread, as the runtime does.
    let completed = std::thread::spawn(move || pending.complete())
        .join()
        .map_err(|_| EddyError::Internal("the completion thread panicked".into()))??;
    assert_eq!(completed.states(), expected.states());
    assert_eq!(completed.timer_services(), expected.timer_services());
    assert_eq!(canonical(&completed)?, canonical(&expected)?);
    assert!(completed.entry_count() > 1000);
    Ok(())
}
