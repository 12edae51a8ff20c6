//! State TTL on the heap backend only: what cleanup physically removes from the heap tables,
//! and how TTL states are stored there. Everything observable through the backend-independent
//! API (every state type under every update type and visibility, per-element and per-entry
//! expiry, incremental cleanup, what is refused) is in the conformance suite
//! (`tests/conformance/ttl.rs`), which every backend runs. Time comes from a `ManualClock`: no
//! test sleeps.

use std::sync::Arc;
use std::time::Duration;

use eddy_core::{EddyError, KeyGroupRange};
use eddy_state::{
    AggregateFunction, AggregatingStateDescriptor, KeyedStateBackend, ListStateDescriptor,
    ManualClock, MapStateDescriptor, ReducingStateDescriptor, StateTtlConfig, StateVisibility,
    UpdateType, ValueStateDescriptor,
};

/// The TTL of every state below.
const TTL: Duration = Duration::from_secs(10);

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A heap backend owning all 128 key groups, with a manual clock at an arbitrary non-zero
/// time.
fn backend() -> (KeyedStateBackend<u64>, ManualClock) {
    let mut backend = KeyedStateBackend::heap(KeyGroupRange::new(0, 127), 128);
    let clock = ManualClock::new(1_700_000_000_000);
    backend.set_ttl_clock(Arc::new(clock.clone()));
    (backend, clock)
}

fn returns_expired(visibility: StateVisibility) -> bool {
    visibility == StateVisibility::ReturnExpiredIfNotCleanedUp
}

/// Sums the added values; the result is the sum.
struct Sum;

impl AggregateFunction<u64> for Sum {
    type Acc = u64;
    type Out = u64;
    fn create_accumulator(&self) -> u64 {
        0
    }
    fn add(&self, value: u64, acc: &mut u64) {
        *acc += value;
    }
    fn get_result(&self, acc: &u64) -> u64 {
        *acc
    }
    fn merge(&self, a: u64, b: u64) -> u64 {
        a + b
    }
}

/// Cleanup on read: under every update type and visibility, the read that finds a key's
/// value (list, map) expired removes the key from the state's table; other keys stay.
#[test]
fn cleanup_on_read_removes_expired_keys_from_the_heap_tables() -> Result<(), EddyError> {
    for update in [UpdateType::OnCreateAndWrite, UpdateType::OnReadAndWrite] {
        for visibility in [
            StateVisibility::NeverReturnExpired,
            StateVisibility::ReturnExpiredIfNotCleanedUp,
        ] {
            let case = format!("{update:?}, {visibility:?}");
            let ttl = StateTtlConfig::new(TTL)
                .update_type(update)
                .state_visibility(visibility);
            let (mut b, clock) = backend();
            let v =
                b.value_state(&ValueStateDescriptor::<u64>::new("v").enable_ttl(ttl.clone()))?;
            let r = b.reducing_state(
                &ReducingStateDescriptor::new("r", |a: &u64, b: &u64| a + b)
                    .enable_ttl(ttl.clone()),
            )?;
            let a = b.aggregating_state(
                &AggregatingStateDescriptor::new("a", Sum).enable_ttl(ttl.clone()),
            )?;
            let l = b.list_state(&ListStateDescriptor::<u64>::new("l").enable_ttl(ttl.clone()))?;
            let m = b.map_state(&MapStateDescriptor::<u64, u64>::new("m").enable_ttl(ttl))?;
            // Key 1 written at t = 0, key 2 at t = 6; at t = 10 only key 1 has expired.
            for (key, then) in [(1, secs(6)), (2, secs(4))] {
                b.set_current_key(key)?;
                v.update(5)?;
                r.add(5)?;
                a.add(5)?;
                l.add(5)?;
                m.put(0, 5)?;
                clock.advance(then);
            }
            let names = ["v", "r", "a", "l", "m"];
            for name in names {
                assert_eq!(
                    b.state_len(name),
                    Some(2),
                    "{case}: {name} before the reads"
                );
            }
            b.set_current_key(1)?;
            let expected = returns_expired(visibility).then_some(5);
            assert_eq!(v.value()?, expected, "{case}");
            assert_eq!(r.get()?, expected, "{case}");
            assert_eq!(a.get()?, expected, "{case}");
            let expected: Vec<u64> = expected.into_iter().collect();
            assert_eq!(l.get()?.collect::<Vec<_>>(), expected, "{case}");
            assert_eq!(m.values()?.collect::<Vec<_>>(), expected, "{case}");
            for name in names {
                assert_eq!(
                    b.state_len(name),
                    Some(1),
                    "{case}: {name}: the read removed key 1, and only key 1"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn incremental_cleanup_removes_expired_values_of_other_keys() -> Result<(), EddyError> {
    let (mut b, clock) = backend();
    let cleaned = b.value_state(
        &ValueStateDescriptor::<u64>::new("cleaned")
            .enable_ttl(StateTtlConfig::new(TTL).cleanup_incrementally(10)),
    )?;
    let on_read_only = b.value_state(
        &ValueStateDescriptor::<u64>::new("on-read-only").enable_ttl(StateTtlConfig::new(TTL)),
    )?;
    for key in 0..1_000u64 {
        b.set_current_key(key)?;
        cleaned.update(key)?;
        on_read_only.update(key)?;
    }
    assert_eq!(b.state_len("cleaned"), Some(1_000));
    clock.advance(TTL);

    // Only key 5000 is accessed from now on; every access checks about 10 more keys.
    b.set_current_key(5_000)?;
    for i in 0..200 {
        cleaned.update(i)?;
        on_read_only.update(i)?;
    }
    assert_eq!(b.state_len("cleaned"), Some(1), "only the live key is left");
    assert_eq!(
        b.state_len("on-read-only"),
        Some(1_001),
        "without incremental cleanup, values never read again stay"
    );
    Ok(())
}

#[test]
fn incremental_cleanup_keeps_live_values_and_trims_lists_and_maps() -> Result<(), EddyError> {
    let (mut b, clock) = backend();
    let ttl = StateTtlConfig::new(TTL).cleanup_incrementally(5);
    let l = b.list_state(&ListStateDescriptor::<u64>::new("l").enable_ttl(ttl.clone()))?;
    let m = b.map_state(&MapStateDescriptor::<u64, u64>::new("m").enable_ttl(ttl))?;
    for key in 0..100u64 {
        b.set_current_key(key)?;
        l.add(key)?;
        m.put(0, key)?;
    }
    clock.advance(secs(6));
    // Even keys get a fresh element and entry.
    for key in (0..100u64).step_by(2) {
        b.set_current_key(key)?;
        l.add(key + 1_000)?;
        m.put(1, key)?;
    }
    clock.advance(secs(6));
    // Accesses to one key clean the others.
    b.set_current_key(0)?;
    for _ in 0..200 {
        l.add(0)?;
        m.put(2, 0)?;
    }
    assert_eq!(
        b.state_len("l"),
        Some(50),
        "odd keys held only expired elements"
    );
    assert_eq!(
        b.state_len("m"),
        Some(50),
        "odd keys held only expired entries"
    );
    Ok(())
}

#[test]
fn ttl_states_have_their_own_heap_tables() -> Result<(), EddyError> {
    let (mut b, _clock) = backend();
    let plain = b.value_state(&ValueStateDescriptor::<u64>::new("plain"))?;
    let with_ttl = b.value_state(
        &ValueStateDescriptor::<u64>::new("ttl")
            .enable_ttl(StateTtlConfig::new(TTL).cleanup_incrementally(100)),
    )?;
    b.set_current_key(1)?;
    plain.update(1)?;
    with_ttl.update(1)?;
    let heap = b
        .as_heap()
        .ok_or_else(|| EddyError::Internal("heap".into()))?;
    assert_eq!(heap.value_table::<u64>("plain").map(|t| t.len()), Some(1));
    assert!(
        heap.value_table::<u64>("ttl").is_none(),
        "TTL tables hold TtlValues"
    );
    assert!(heap.state_ttl("plain").is_none());
    assert_eq!(heap.state_ttl("ttl").map(|t| t.ttl()), Some(TTL));
    Ok(())
}
