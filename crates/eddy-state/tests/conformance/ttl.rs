//! State TTL conformance: every state type under every update type and visibility, per-element
//! and per-entry expiry, incremental cleanup and what is refused, through the
//! backend-independent API only. Instantiated for every backend by `conformance_suite!` (see
//! `conformance.rs`); heap-only inspections (what cleanup physically removed from the tables)
//! live in `tests/ttl.rs`. Time comes from a `ManualClock`: no test sleeps.

use std::sync::Arc;
use std::time::Duration;

use eddy_core::{EddyError, KeyGroupRange};
use eddy_state::{
    AggregateFunction, AggregatingStateDescriptor, KeyedStateBackend, ListStateDescriptor,
    ManualClock, MapStateDescriptor, ReducingStateDescriptor, StateTtlConfig, StateVisibility,
    TtlTimeDomain, UpdateType, ValueStateDescriptor,
};

use super::Factory;

/// The TTL of every state below.
const TTL: Duration = Duration::from_secs(10);

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A backend owning all 128 key groups, with a manual clock at an arbitrary non-zero time.
fn backend(factory: Factory) -> (KeyedStateBackend<u64>, ManualClock) {
    let mut backend = factory(KeyGroupRange::new(0, 127), 128);
    let clock = ManualClock::new(1_700_000_000_000);
    backend.set_ttl_clock(Arc::new(clock.clone()));
    (backend, clock)
}

fn config(update: UpdateType, visibility: StateVisibility) -> StateTtlConfig {
    StateTtlConfig::new(TTL)
        .update_type(update)
        .state_visibility(visibility)
}

fn returns_expired(visibility: StateVisibility) -> bool {
    visibility == StateVisibility::ReturnExpiredIfNotCleanedUp
}

/// The life of one value per key, written at t = 0 and read at t = 6 and t = 12 (TTL 10 s).
///
/// `write` stores 5, `read` returns what the state holds for the current key.
fn single_value_scenario(
    b: &KeyedStateBackend<u64>,
    clock: &ManualClock,
    name: &str,
    update: UpdateType,
    visibility: StateVisibility,
    write: &dyn Fn() -> Result<(), EddyError>,
    read: &dyn Fn() -> Result<Option<u64>, EddyError>,
) -> Result<(), EddyError> {
    let case = format!("{name}, {update:?}, {visibility:?}");
    b.set_current_key(1)?;
    write()?;
    b.set_current_key(2)?;
    assert_eq!(read()?, None, "{case}: another key");
    b.set_current_key(1)?;

    clock.advance(secs(6));
    assert_eq!(read()?, Some(5), "{case}: read before expiry");

    // t = 12: 12 s after the write, 6 s after the read.
    clock.advance(secs(6));
    match update {
        UpdateType::OnCreateAndWrite => {
            let expected = returns_expired(visibility).then_some(5);
            assert_eq!(read()?, expected, "{case}: first read after expiry");
            // Either way the read removed it (cleanup on read).
            assert_eq!(read()?, None, "{case}: second read after expiry");
        }
        UpdateType::OnReadAndWrite => {
            assert_eq!(read()?, Some(5), "{case}: the read at t = 6 refreshed it");
            clock.advance(TTL - Duration::from_millis(1));
            assert_eq!(read()?, Some(5), "{case}: every read refreshes it");
            clock.advance(TTL);
            let expected = returns_expired(visibility).then_some(5);
            assert_eq!(read()?, expected, "{case}: first read after expiry");
            assert_eq!(read()?, None, "{case}: second read after expiry");
        }
    }

    // A write always refreshes: two writes 9 s apart keep the value 18 s.
    write()?;
    clock.advance(secs(9));
    write()?;
    clock.advance(secs(9));
    assert!(read()?.is_some(), "{case}: the second write refreshed it");
    clock.advance(secs(1));
    if update == UpdateType::OnCreateAndWrite {
        let expected = returns_expired(visibility);
        assert_eq!(
            read()?.is_some(),
            expected,
            "{case}: expired 10 s after the last write"
        );
    }
    Ok(())
}

fn value_state_case(
    factory: Factory,
    update: UpdateType,
    visibility: StateVisibility,
) -> Result<(), EddyError> {
    let (mut b, clock) = backend(factory);
    let v = b.value_state(
        &ValueStateDescriptor::<u64>::new("v").enable_ttl(config(update, visibility)),
    )?;
    single_value_scenario(
        &b,
        &clock,
        "v",
        update,
        visibility,
        &|| v.update(5),
        &|| v.value(),
    )?;
    v.clear()?;
    assert_eq!(v.value()?, None);
    Ok(())
}

fn reducing_state_case(
    factory: Factory,
    update: UpdateType,
    visibility: StateVisibility,
) -> Result<(), EddyError> {
    let (mut b, clock) = backend(factory);
    let sum = b.reducing_state(
        &ReducingStateDescriptor::new("r", |a: &u64, b: &u64| a + b)
            .enable_ttl(config(update, visibility)),
    )?;
    // `clear` first: each write of the scenario must store 5, not add to what is there.
    single_value_scenario(
        &b,
        &clock,
        "r",
        update,
        visibility,
        &|| {
            sum.clear()?;
            sum.add(5)
        },
        &|| sum.get(),
    )?;

    // Adding to an expired value: Flink reduces into it only while it is still returned.
    b.set_current_key(3)?;
    sum.add(5)?;
    clock.advance(TTL);
    sum.add(7)?;
    let expected = if returns_expired(visibility) { 12 } else { 7 };
    assert_eq!(sum.get()?, Some(expected), "{update:?}, {visibility:?}");
    Ok(())
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

fn aggregating_state_case(
    factory: Factory,
    update: UpdateType,
    visibility: StateVisibility,
) -> Result<(), EddyError> {
    let (mut b, clock) = backend(factory);
    let sum = b.aggregating_state(
        &AggregatingStateDescriptor::new("a", Sum).enable_ttl(config(update, visibility)),
    )?;
    single_value_scenario(
        &b,
        &clock,
        "a",
        update,
        visibility,
        &|| {
            sum.clear()?;
            sum.add(5)
        },
        &|| sum.get(),
    )?;

    // Adding to an expired accumulator: a fresh one starts unless expired ones are returned.
    b.set_current_key(3)?;
    sum.add(5)?;
    clock.advance(TTL);
    sum.add(7)?;
    let expected = if returns_expired(visibility) { 12 } else { 7 };
    assert_eq!(sum.get()?, Some(expected), "{update:?}, {visibility:?}");
    Ok(())
}

/// Elements added at t = 0 and t = 4, read at t = 8, t = 12 and t = 40 (TTL 10 s).
fn list_state_case(
    factory: Factory,
    update: UpdateType,
    visibility: StateVisibility,
) -> Result<(), EddyError> {
    let case = format!("{update:?}, {visibility:?}");
    let (mut b, clock) = backend(factory);
    let l =
        b.list_state(&ListStateDescriptor::<u64>::new("l").enable_ttl(config(update, visibility)))?;
    b.set_current_key(1)?;
    l.add(1)?;
    clock.advance(secs(4));
    l.add(2)?;
    clock.advance(secs(4));
    assert_eq!(l.get()?.collect::<Vec<_>>(), vec![1, 2], "{case}: t = 8");

    clock.advance(secs(4));
    match update {
        UpdateType::OnCreateAndWrite => {
            // Element 1 (t = 0) has expired, element 2 (t = 4) has not: per-element TTL.
            let expected = if returns_expired(visibility) {
                vec![1, 2]
            } else {
                vec![2]
            };
            assert_eq!(l.get()?.collect::<Vec<_>>(), expected, "{case}: t = 12");
            assert_eq!(
                l.get()?.collect::<Vec<_>>(),
                vec![2],
                "{case}: cleaned on read"
            );
        }
        UpdateType::OnReadAndWrite => {
            // The read at t = 8 refreshed both.
            assert_eq!(l.get()?.collect::<Vec<_>>(), vec![1, 2], "{case}: t = 12");
        }
    }

    clock.advance(secs(28));
    let first = l.get()?.collect::<Vec<_>>();
    if returns_expired(visibility) {
        assert!(!first.is_empty(), "{case}: expired elements returned once");
    } else {
        assert!(first.is_empty(), "{case}: everything expired");
    }
    assert_eq!(l.get()?.count(), 0, "{case}: cleaned on read");

    // `update` and `add_all` stamp every element with the time of the write.
    l.update(vec![7, 8])?;
    clock.advance(secs(5));
    l.add_all(vec![9])?;
    clock.advance(secs(5));
    let expected = if returns_expired(visibility) {
        vec![7, 8, 9]
    } else {
        vec![9]
    };
    assert_eq!(
        l.get()?.collect::<Vec<_>>(),
        expected,
        "{case}: update/add_all"
    );
    l.clear()?;
    assert_eq!(l.get()?.count(), 0);
    Ok(())
}

/// Entries put at t = 0 ("a") and t = 4 ("b"), read at t = 8, t = 12 and t = 40 (TTL 10 s).
fn map_state_case(
    factory: Factory,
    update: UpdateType,
    visibility: StateVisibility,
) -> Result<(), EddyError> {
    let case = format!("{update:?}, {visibility:?}");
    let (mut b, clock) = backend(factory);
    let m = b.map_state(
        &MapStateDescriptor::<String, u64>::new("m").enable_ttl(config(update, visibility)),
    )?;
    let (a, bee) = ("a".to_string(), "b".to_string());
    b.set_current_key(1)?;
    m.put(a.clone(), 1)?;
    clock.advance(secs(4));
    m.put(bee.clone(), 2)?;
    clock.advance(secs(4));
    // Under OnReadAndWrite these reads refresh both entries at t = 8.
    assert_eq!(m.get(&a)?, Some(1), "{case}");
    assert!(m.contains(&bee)?, "{case}");

    clock.advance(secs(4));
    let sorted = |mut v: Vec<(String, u64)>| {
        v.sort();
        v
    };
    match update {
        UpdateType::OnCreateAndWrite => {
            // "a" (t = 0) has expired, "b" (t = 4) has not: per-entry TTL.
            let expected = if returns_expired(visibility) {
                vec![(a.clone(), 1), (bee.clone(), 2)]
            } else {
                vec![(bee.clone(), 2)]
            };
            assert_eq!(sorted(m.entries()?.collect()), expected, "{case}: t = 12");
            assert_eq!(m.get(&a)?, None, "{case}: cleaned on read");
            assert_eq!(m.keys()?.collect::<Vec<_>>(), vec![bee.clone()], "{case}");
        }
        UpdateType::OnReadAndWrite => {
            assert_eq!(
                sorted(m.entries()?.collect()),
                vec![(a.clone(), 1), (bee.clone(), 2)],
                "{case}: the reads at t = 8 refreshed both"
            );
        }
    }

    // A single entry read after expiry.
    clock.advance(secs(28));
    let expected = returns_expired(visibility).then_some(2);
    assert_eq!(m.get(&bee)?, expected, "{case}: first read after expiry");
    assert_eq!(m.get(&bee)?, None, "{case}: cleaned on read");
    assert!(!m.contains(&bee)?, "{case}");

    // Iteration after expiry.
    m.put(a.clone(), 3)?;
    clock.advance(TTL);
    assert_eq!(
        m.is_empty()?,
        !returns_expired(visibility),
        "{case}: is_empty"
    );
    let expected = if returns_expired(visibility) {
        vec![3]
    } else {
        vec![]
    };
    assert_eq!(m.values()?.collect::<Vec<_>>(), expected, "{case}: values");
    assert!(m.is_empty()?, "{case}: cleaned on iteration");

    // put_all stamps every entry; remove and clear work as without TTL.
    m.put_all(vec![(a.clone(), 4), (bee.clone(), 5)])?;
    m.remove(&a)?;
    assert_eq!(m.values()?.collect::<Vec<_>>(), vec![5], "{case}");
    m.clear()?;
    assert!(m.is_empty()?);
    Ok(())
}

/// One conformance test per update type and visibility for a state type's scenario.
macro_rules! every_ttl_mode {
    ($case:ident: $create_write:ident, $create_read:ident, $return_write:ident, $return_read:ident) => {
        pub(super) fn $create_write(factory: Factory) -> Result<(), EddyError> {
            $case(
                factory,
                UpdateType::OnCreateAndWrite,
                StateVisibility::NeverReturnExpired,
            )
        }

        pub(super) fn $create_read(factory: Factory) -> Result<(), EddyError> {
            $case(
                factory,
                UpdateType::OnReadAndWrite,
                StateVisibility::NeverReturnExpired,
            )
        }

        pub(super) fn $return_write(factory: Factory) -> Result<(), EddyError> {
            $case(
                factory,
                UpdateType::OnCreateAndWrite,
                StateVisibility::ReturnExpiredIfNotCleanedUp,
            )
        }

        pub(super) fn $return_read(factory: Factory) -> Result<(), EddyError> {
            $case(
                factory,
                UpdateType::OnReadAndWrite,
                StateVisibility::ReturnExpiredIfNotCleanedUp,
            )
        }
    };
}

every_ttl_mode!(value_state_case:
    value_on_create_and_write_never_return_expired,
    value_on_read_and_write_never_return_expired,
    value_on_create_and_write_return_expired_if_not_cleaned_up,
    value_on_read_and_write_return_expired_if_not_cleaned_up);
every_ttl_mode!(reducing_state_case:
    reducing_on_create_and_write_never_return_expired,
    reducing_on_read_and_write_never_return_expired,
    reducing_on_create_and_write_return_expired_if_not_cleaned_up,
    reducing_on_read_and_write_return_expired_if_not_cleaned_up);
every_ttl_mode!(aggregating_state_case:
    aggregating_on_create_and_write_never_return_expired,
    aggregating_on_read_and_write_never_return_expired,
    aggregating_on_create_and_write_return_expired_if_not_cleaned_up,
    aggregating_on_read_and_write_return_expired_if_not_cleaned_up);
every_ttl_mode!(list_state_case:
    list_on_create_and_write_never_return_expired,
    list_on_read_and_write_never_return_expired,
    list_on_create_and_write_return_expired_if_not_cleaned_up,
    list_on_read_and_write_return_expired_if_not_cleaned_up);
every_ttl_mode!(map_state_case:
    map_on_create_and_write_never_return_expired,
    map_on_read_and_write_never_return_expired,
    map_on_create_and_write_return_expired_if_not_cleaned_up,
    map_on_read_and_write_return_expired_if_not_cleaned_up);

pub(super) fn list_elements_expire_one_by_one(factory: Factory) -> Result<(), EddyError> {
    let (mut b, clock) = backend(factory);
    let l =
        b.list_state(&ListStateDescriptor::<u64>::new("l").enable_ttl(StateTtlConfig::new(TTL)))?;
    b.set_current_key(1)?;
    for element in 0..5 {
        l.add(element)?;
        clock.advance(secs(3));
    }
    // Added at t = 0, 3, 6, 9, 12; now t = 15: the first two have expired.
    assert_eq!(l.get()?.collect::<Vec<_>>(), vec![2, 3, 4]);
    clock.advance(secs(3));
    assert_eq!(l.get()?.collect::<Vec<_>>(), vec![3, 4]);
    clock.advance(secs(6));
    assert_eq!(l.get()?.count(), 0);
    Ok(())
}

pub(super) fn map_entries_expire_one_by_one_and_a_put_refreshes_only_its_entry(
    factory: Factory,
) -> Result<(), EddyError> {
    let (mut b, clock) = backend(factory);
    let m = b.map_state(
        &MapStateDescriptor::<u64, u64>::new("m").enable_ttl(StateTtlConfig::new(TTL)),
    )?;
    b.set_current_key(1)?;
    m.put(1, 10)?;
    m.put(2, 20)?;
    clock.advance(secs(6));
    m.put(2, 21)?;
    m.put(3, 30)?;
    clock.advance(secs(6));
    let mut keys: Vec<_> = m.keys()?.collect();
    keys.sort_unstable();
    assert_eq!(keys, vec![2, 3]);
    assert_eq!(m.get(&2)?, Some(21));
    assert_eq!(m.get(&1)?, None);
    Ok(())
}

pub(super) fn a_large_map_expires_per_entry_too(factory: Factory) -> Result<(), EddyError> {
    // Past 32 entries the heap backend hashes a key's map; TTL must work the same.
    let (mut b, clock) = backend(factory);
    let m = b.map_state(
        &MapStateDescriptor::<u64, u64>::new("m")
            .enable_ttl(StateTtlConfig::new(TTL).update_type(UpdateType::OnReadAndWrite)),
    )?;
    b.set_current_key(1)?;
    for k in 0..100 {
        m.put(k, k)?;
    }
    clock.advance(secs(6));
    for k in 50..100 {
        m.put(k, k + 1)?;
    }
    assert_eq!(m.get(&0)?, Some(0)); // refreshes entry 0 only
    clock.advance(secs(6));
    let mut values: Vec<_> = m.values()?.collect(); // refreshes what it returns
    values.sort_unstable();
    let expected: Vec<u64> = std::iter::once(0).chain(51..101).collect();
    assert_eq!(values, expected);
    clock.advance(secs(9));
    assert_eq!(
        m.values()?.count(),
        51,
        "the iteration refreshed every entry it returned"
    );
    Ok(())
}

/// What incremental cleanup may never change: live values of every key stay, expired ones
/// are not returned. (A backend may ignore the setting, as Flink's RocksDB backend does;
/// what the heap backend physically removes is checked in `tests/ttl.rs`.)
pub(super) fn incremental_cleanup_keeps_live_values_and_hides_expired_ones(
    factory: Factory,
) -> Result<(), EddyError> {
    let (mut b, clock) = backend(factory);
    let ttl = StateTtlConfig::new(TTL).cleanup_incrementally(5);
    let v = b.value_state(&ValueStateDescriptor::<u64>::new("v").enable_ttl(ttl.clone()))?;
    let l = b.list_state(&ListStateDescriptor::<u64>::new("l").enable_ttl(ttl.clone()))?;
    let m = b.map_state(&MapStateDescriptor::<u64, u64>::new("m").enable_ttl(ttl))?;
    for key in 0..100u64 {
        b.set_current_key(key)?;
        v.update(key)?;
        l.add(key)?;
        m.put(0, key)?;
    }
    clock.advance(secs(6));
    // Even keys get a fresh value, element and entry.
    for key in (0..100u64).step_by(2) {
        b.set_current_key(key)?;
        v.update(key + 1_000)?;
        l.add(key + 1_000)?;
        m.put(1, key)?;
    }
    clock.advance(secs(6));
    // Many accesses to one key, each of which may clean up others.
    b.set_current_key(0)?;
    for i in 0..200 {
        v.update(i)?;
        l.add(i)?;
        m.put(2, i)?;
    }
    assert_eq!(v.value()?, Some(199));
    assert_eq!(
        l.get()?.collect::<Vec<_>>(),
        std::iter::once(1_000).chain(0..200).collect::<Vec<_>>(),
        "key 0: its first element expired, the others are live"
    );
    let mut entries: Vec<_> = m.entries()?.collect();
    entries.sort_unstable();
    assert_eq!(entries, vec![(1, 0), (2, 199)]);
    for key in 1..100u64 {
        b.set_current_key(key)?;
        if key % 2 == 0 {
            assert_eq!(v.value()?, Some(key + 1_000), "key {key}");
            assert_eq!(l.get()?.collect::<Vec<_>>(), vec![key + 1_000], "key {key}");
            assert_eq!(
                m.entries()?.collect::<Vec<_>>(),
                vec![(1, key)],
                "key {key}"
            );
        } else {
            assert_eq!(v.value()?, None, "key {key}");
            assert_eq!(l.get()?.count(), 0, "key {key}");
            assert!(m.is_empty()?, "key {key}");
        }
    }
    Ok(())
}

pub(super) fn a_second_list_iterator_and_cleanup_work_while_an_iterator_is_alive(
    factory: Factory,
) -> Result<(), EddyError> {
    let (mut b, clock) = backend(factory);
    let l = b.list_state(
        &ListStateDescriptor::<u64>::new("l")
            .enable_ttl(StateTtlConfig::new(TTL).cleanup_incrementally(1)),
    )?;
    b.set_current_key(1)?;
    l.add(1)?;
    clock.advance(secs(6));
    l.add(2)?;
    let mut first = l.get()?;
    clock.advance(secs(6));
    // Element 1 has expired. The second `get` cannot remove it while `first` borrows the
    // list, but still hides it.
    assert_eq!(l.get()?.collect::<Vec<_>>(), vec![2]);
    // `first` was created before the expiry, and iterates what was live then.
    assert_eq!(first.next(), Some(1));
    assert!(
        l.add(3).is_err(),
        "modifying while iterating is refused, as without TTL"
    );
    drop(first);
    l.add(3)?;
    assert_eq!(l.get()?.collect::<Vec<_>>(), vec![2, 3]);
    Ok(())
}

pub(super) fn event_time_ttl_follows_the_event_clock_not_the_processing_clock(
    factory: Factory,
) -> Result<(), EddyError> {
    let (mut b, processing) = backend(factory);
    let ttl = StateTtlConfig::new(TTL).event_time();
    assert_eq!(ttl.time_domain(), TtlTimeDomain::EventTime);
    let v = b.value_state(&ValueStateDescriptor::<u64>::new("v").enable_ttl(ttl.clone()))?;
    let l = b.list_state(&ListStateDescriptor::<u64>::new("l").enable_ttl(ttl))?;
    // Set after registration, as the runtime does once the operator has opened.
    let watermark = ManualClock::new(1_000);
    b.set_event_time_clock(Arc::new(watermark.clone()));
    b.set_current_key(1)?;
    v.update(5)?;
    l.add(1)?;
    processing.advance(secs(3_600));
    assert_eq!(
        v.value()?,
        Some(5),
        "processing time does not age event-time TTL"
    );
    watermark.advance(secs(6));
    l.add(2)?;
    watermark.advance(secs(5));
    assert_eq!(
        v.value()?,
        None,
        "expired once the watermark is the TTL past the write"
    );
    assert_eq!(
        l.get()?.collect::<Vec<_>>(),
        vec![2],
        "per element, in event time"
    );
    Ok(())
}

pub(super) fn invalid_ttl_configurations_are_refused(factory: Factory) -> Result<(), EddyError> {
    let (mut b, _clock) = backend(factory);
    let too_short = StateTtlConfig::new(Duration::from_micros(10));
    assert!(matches!(
        b.list_state(&ListStateDescriptor::<u64>::new("l").enable_ttl(too_short)),
        Err(EddyError::Config(_))
    ));
    let no_entries = StateTtlConfig::new(TTL).cleanup_incrementally(0);
    assert!(matches!(
        b.map_state(&MapStateDescriptor::<u64, u64>::new("m").enable_ttl(no_entries)),
        Err(EddyError::Config(_))
    ));
    Ok(())
}

pub(super) fn a_state_without_ttl_is_unaffected(factory: Factory) -> Result<(), EddyError> {
    let (mut b, clock) = backend(factory);
    let plain = b.value_state(&ValueStateDescriptor::<u64>::new("plain"))?;
    let with_ttl = b.value_state(
        &ValueStateDescriptor::<u64>::new("ttl")
            .enable_ttl(StateTtlConfig::new(TTL).cleanup_incrementally(100)),
    )?;
    b.set_current_key(1)?;
    plain.update(1)?;
    with_ttl.update(1)?;
    clock.advance(secs(365 * 24 * 3600));
    assert_eq!(with_ttl.value()?, None);
    assert_eq!(plain.value()?, Some(1));
    Ok(())
}

pub(super) fn registering_a_name_again_needs_the_same_ttl(
    factory: Factory,
) -> Result<(), EddyError> {
    let (mut b, _clock) = backend(factory);
    let desc = ValueStateDescriptor::<u64>::new("v").enable_ttl(StateTtlConfig::new(TTL));
    let first = b.value_state(&desc)?;
    let again = b.value_state(&desc.clone())?;
    b.set_current_key(1)?;
    first.update(3)?;
    assert_eq!(again.value()?, Some(3));
    let other_ttl = ValueStateDescriptor::<u64>::new("v").enable_ttl(StateTtlConfig::new(secs(1)));
    let err = b.value_state(&other_ttl).err().map(|e| e.to_string());
    assert!(
        err.as_deref()
            .is_some_and(|e| e.contains("already registered with TTL")),
        "{err:?}"
    );
    assert!(b
        .value_state(&ValueStateDescriptor::<u64>::new("v"))
        .is_err());
    Ok(())
}

pub(super) fn a_clock_set_after_registration_reaches_existing_states(
    factory: Factory,
) -> Result<(), EddyError> {
    let mut b = factory(KeyGroupRange::new(0, 127), 128);
    // Registered under the default system clock...
    let v =
        b.value_state(&ValueStateDescriptor::<u64>::new("v").enable_ttl(StateTtlConfig::new(TTL)))?;
    // ...then moved to a manual one at time 0: the value is stamped with that clock.
    let clock = ManualClock::new(0);
    b.set_ttl_clock(Arc::new(clock.clone()));
    b.set_current_key(1)?;
    v.update(1)?;
    clock.advance(TTL - Duration::from_millis(1));
    assert_eq!(v.value()?, Some(1));
    clock.advance(Duration::from_millis(1));
    assert_eq!(v.value()?, None);
    Ok(())
}

pub(super) fn the_system_clock_is_the_default_and_keeps_fresh_values(
    factory: Factory,
) -> Result<(), EddyError> {
    let mut b = factory(KeyGroupRange::new(0, 127), 128);
    let v = b.value_state(
        &ValueStateDescriptor::<u64>::new("v").enable_ttl(StateTtlConfig::new(secs(3600))),
    )?;
    b.set_current_key(1)?;
    v.update(1)?;
    assert_eq!(v.value()?, Some(1));
    Ok(())
}

/// Descriptors and their TTL configuration involve no backend: tested once, not per backend.
#[test]
fn descriptors_carry_their_ttl() {
    let ttl = StateTtlConfig::new(TTL)
        .cleanup_full_snapshot()
        .cleanup_in_rocksdb_compaction_filter()
        .cleanup_incrementally(3);
    assert!(ttl.is_cleanup_in_full_snapshot());
    assert!(ttl.is_cleanup_in_rocksdb_compaction_filter());
    assert_eq!(ttl.incremental_cleanup(), Some(3));
    assert_eq!(ttl.get_update_type(), UpdateType::OnCreateAndWrite);
    assert_eq!(
        ttl.get_state_visibility(),
        StateVisibility::NeverReturnExpired
    );
    assert_eq!(ttl.time_domain(), TtlTimeDomain::ProcessingTime);

    let value = ValueStateDescriptor::<u64>::new("v").enable_ttl(ttl.clone());
    assert_eq!(value.clone().ttl(), Some(&ttl));
    assert!(format!("{value:?}").contains("ttl: Some"));
    assert!(ValueStateDescriptor::<u64>::new("v").ttl().is_none());
    let reducing =
        ReducingStateDescriptor::new("r", |a: &u64, b: &u64| a + b).enable_ttl(ttl.clone());
    assert_eq!(reducing.clone().ttl(), Some(&ttl));
    let aggregating = AggregatingStateDescriptor::new("a", Sum).enable_ttl(ttl.clone());
    assert_eq!(aggregating.clone().ttl(), Some(&ttl));
    let list = ListStateDescriptor::<u64>::new("l").enable_ttl(ttl.clone());
    assert_eq!(list.ttl(), Some(&ttl));
    let map = MapStateDescriptor::<u64, u64>::new("m").enable_ttl(ttl.clone());
    assert_eq!(map.ttl(), Some(&ttl));
}
