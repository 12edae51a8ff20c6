//! The heap backend's tables as snapshot entries, and back.
//!
//! A heap table stores, per key, either the value of the default namespace directly (plain
//! state) or a small map from namespace to value (namespaced state); the value is a `T`, a
//! list, a map of user keys, or the same wrapped in [`TtlValue`]s. Which conversion a table
//! needs is fixed when its state is registered, as a [`TableCodec`] of plain functions: the
//! stored types alone cannot tell a namespaced value state (`SmallMap<N, T>`) from a map
//! state (`SmallMap<UK, UV>`).

use std::marker::PhantomData;

use eddy_core::key_group::assign_to_key_group;
use eddy_core::{Key, KeyGroup, StateValue};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{push_element, split_ttl, EntryWriter, SnapshotError, StateEntry, TTL_HEADER};
use crate::namespace::Namespace;
use crate::probe_table::ProbeTable;
use crate::small_map::SmallMap;
use crate::ttl::TtlValue;

/// Leaves out the values that have expired at `now` (a TTL state with
/// `cleanup_full_snapshot`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct TtlCut {
    pub(crate) ttl_ms: u64,
    pub(crate) now: u64,
}

impl TtlCut {
    /// Where a snapshot of the TTL state `name` configured by `config` cuts expired values
    /// off, if it does (`cleanup_full_snapshot`): at `now_in(domain)`, the current time of the
    /// state's clock (`None`: no clock yet, event time still at 0, nothing has expired).
    pub(crate) fn of(
        name: &str,
        config: &crate::StateTtlConfig,
        now_in: impl FnOnce(crate::ttl::TtlTimeDomain) -> Option<u64>,
    ) -> Option<TtlCut> {
        if !config.is_cleanup_in_full_snapshot() {
            return None;
        }
        let now = now_in(config.time_domain())?;
        let ttl_ms = config.validate(name).ok()?;
        Some(TtlCut { ttl_ms, now })
    }

    /// Whether a value last accessed at `ts` is left out (Flink's expiry rule).
    #[inline]
    pub(crate) fn drops(cut: Option<TtlCut>, ts: u64) -> bool {
        cut.is_some_and(|cut| ts.saturating_add(cut.ttl_ms) <= cut.now)
    }
}

/// What a restored entry's key must satisfy: it belongs to the key group it was filed under.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KeyCheck {
    pub(crate) kg: KeyGroup,
    pub(crate) max_parallelism: usize,
}

impl KeyCheck {
    /// Decodes a key and checks its key group.
    pub(crate) fn key<K: Key>(&self, bytes: &[u8]) -> Result<K, SnapshotError> {
        let key: K = decode_exact(bytes, "key")?;
        let actual = assign_to_key_group(&key, self.max_parallelism);
        if actual != self.kg {
            return Err(SnapshotError(format!(
                "the key {key:?} belongs to key group {actual}, not {}",
                self.kg
            )));
        }
        Ok(key)
    }
}

/// Appends `value`'s postcard encoding to `buf`.
pub(crate) fn encode_into<T: Serialize + ?Sized>(
    value: &T,
    buf: &mut Vec<u8>,
) -> Result<(), SnapshotError> {
    Ok(crate::append::append(value, buf)?)
}

/// Decodes exactly one `T` (trailing bytes mean another type, or corruption).
pub(crate) fn decode_exact<T: DeserializeOwned>(
    bytes: &[u8],
    what: &str,
) -> Result<T, SnapshotError> {
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(SnapshotError(format!(
            "the {what} has {} bytes too many for `{}`",
            rest.len(),
            std::any::type_name::<T>()
        ))),
        Err(e) => Err(SnapshotError(format!(
            "the {what} does not decode as `{}`: {e}",
            std::any::type_name::<T>()
        ))),
    }
}

/// The TTL payload's parts, or an error.
fn ttl_parts(payload: &[u8]) -> Result<(u64, &[u8]), SnapshotError> {
    split_ttl(payload).ok_or_else(|| {
        SnapshotError(format!(
            "a value of {} bytes is too short for its {TTL_HEADER}-byte TTL timestamp",
            payload.len()
        ))
    })
}

/// Writes the entries of one key group of a table.
pub(crate) type WriteShard<K, V> =
    fn(&ProbeTable<K, V>, &mut EntryWriter, Option<TtlCut>) -> Result<(), SnapshotError>;

/// Writes the entries of one key group copied out of its table (a frozen snapshot's copy).
pub(crate) type WriteEntries<K, V> =
    fn(&[(K, V)], &mut EntryWriter, Option<TtlCut>) -> Result<(), SnapshotError>;

/// Folds one restored entry into one key group of a table.
pub(crate) type ReadEntry<K, V> =
    fn(&mut ProbeTable<K, V>, &StateEntry<'_>, &KeyCheck) -> Result<(), SnapshotError>;

/// How a heap table of stored values `V` converts to and from snapshot entries.
pub(crate) struct TableCodec<K, V> {
    pub(crate) write: WriteShard<K, V>,
    pub(crate) write_copied: WriteEntries<K, V>,
    pub(crate) read: ReadEntry<K, V>,
}

impl<K, V> Clone for TableCodec<K, V> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K, V> Copy for TableCodec<K, V> {}

/// One (key, namespace)'s stored value, as entries.
pub(crate) trait Inner: 'static {
    /// What the table stores per (key, namespace).
    type Stored: Clone + Send + Sync + 'static;

    /// Writes the entries of one stored value; `key` and `ns` are already encoded.
    fn write(
        w: &mut EntryWriter,
        key: &[u8],
        ns: &[u8],
        stored: &Self::Stored,
        cut: Option<TtlCut>,
    ) -> Result<(), SnapshotError>;

    /// Folds one entry into `slot` (the value already stored for its key and namespace);
    /// returns the new value to store when there is none.
    fn read(
        slot: Option<&mut Self::Stored>,
        entry: &StateEntry<'_>,
    ) -> Result<Option<Self::Stored>, SnapshotError>;
}

/// A single `T` (value, reducing and aggregating state).
pub(crate) struct Single<T>(PhantomData<fn() -> T>);
/// A single `T` with TTL.
pub(crate) struct TtlSingle<T>(PhantomData<fn() -> T>);
/// A list of `T`.
pub(crate) struct List<T>(PhantomData<fn() -> T>);
/// A list of `T` with TTL per element.
pub(crate) struct TtlList<T>(PhantomData<fn() -> T>);
/// A map from `UK` to `UV`.
pub(crate) struct Map<UK, UV>(PhantomData<fn() -> (UK, UV)>);
/// A map from `UK` to `UV` with TTL per entry.
pub(crate) struct TtlMap<UK, UV>(PhantomData<fn() -> (UK, UV)>);

/// Stores `value` into `slot`, or returns it to be stored.
fn replace<V>(slot: Option<&mut V>, value: V) -> Option<V> {
    match slot {
        Some(slot) => {
            *slot = value;
            None
        }
        None => Some(value),
    }
}

impl<T: StateValue> Inner for Single<T> {
    type Stored = T;

    fn write(
        w: &mut EntryWriter,
        key: &[u8],
        ns: &[u8],
        stored: &T,
        _: Option<TtlCut>,
    ) -> Result<(), SnapshotError> {
        w.entry(key, ns, None, |buf| encode_into(stored, buf).map(|()| true))
    }

    fn read(slot: Option<&mut T>, entry: &StateEntry<'_>) -> Result<Option<T>, SnapshotError> {
        Ok(replace(slot, decode_exact(entry.value, "value")?))
    }
}

/// Writes a TTL payload: the timestamp, then the value.
fn ttl_payload<T: Serialize>(buf: &mut Vec<u8>, value: &TtlValue<T>) -> Result<(), SnapshotError> {
    buf.extend_from_slice(&value.last_access_ms.to_be_bytes());
    encode_into(&value.value, buf)
}

/// Reads a TTL payload.
fn read_ttl_payload<T: DeserializeOwned>(
    payload: &[u8],
    what: &str,
) -> Result<TtlValue<T>, SnapshotError> {
    let (ts, bytes) = ttl_parts(payload)?;
    Ok(TtlValue::new(decode_exact(bytes, what)?, ts))
}

impl<T: StateValue> Inner for TtlSingle<T> {
    type Stored = TtlValue<T>;

    fn write(
        w: &mut EntryWriter,
        key: &[u8],
        ns: &[u8],
        stored: &TtlValue<T>,
        cut: Option<TtlCut>,
    ) -> Result<(), SnapshotError> {
        if TtlCut::drops(cut, stored.last_access_ms) {
            return Ok(());
        }
        w.entry(key, ns, None, |buf| ttl_payload(buf, stored).map(|()| true))
    }

    fn read(
        slot: Option<&mut TtlValue<T>>,
        entry: &StateEntry<'_>,
    ) -> Result<Option<TtlValue<T>>, SnapshotError> {
        Ok(replace(slot, read_ttl_payload(entry.value, "value")?))
    }
}

/// The element payloads of a list entry.
fn elements<'a>(entry: &StateEntry<'a>) -> impl Iterator<Item = Result<&'a [u8], SnapshotError>> {
    entry
        .elements()
        .map(|element| element.map_err(|e| SnapshotError(e.to_string())))
}

/// Appends `items` to the list in `slot`, or returns them as a new list (`None` if empty).
fn extend<V>(slot: Option<&mut Vec<V>>, items: Vec<V>) -> Option<Vec<V>> {
    match slot {
        Some(list) => {
            list.extend(items);
            None
        }
        None => (!items.is_empty()).then_some(items),
    }
}

impl<T: StateValue> Inner for List<T> {
    type Stored = Vec<T>;

    fn write(
        w: &mut EntryWriter,
        key: &[u8],
        ns: &[u8],
        stored: &Vec<T>,
        _: Option<TtlCut>,
    ) -> Result<(), SnapshotError> {
        if stored.is_empty() {
            return Ok(());
        }
        w.entry(key, ns, None, |buf| {
            for element in stored {
                push_element(buf, |b| encode_into(element, b))?;
            }
            Ok(true)
        })
    }

    fn read(
        slot: Option<&mut Vec<T>>,
        entry: &StateEntry<'_>,
    ) -> Result<Option<Vec<T>>, SnapshotError> {
        let items = elements(entry)
            .map(|payload| decode_exact(payload?, "list element"))
            .collect::<Result<Vec<T>, _>>()?;
        Ok(extend(slot, items))
    }
}

impl<T: StateValue> Inner for TtlList<T> {
    type Stored = Vec<TtlValue<T>>;

    fn write(
        w: &mut EntryWriter,
        key: &[u8],
        ns: &[u8],
        stored: &Vec<TtlValue<T>>,
        cut: Option<TtlCut>,
    ) -> Result<(), SnapshotError> {
        w.entry(key, ns, None, |buf| {
            let mut any = false;
            for element in stored {
                if !TtlCut::drops(cut, element.last_access_ms) {
                    push_element(buf, |b| ttl_payload(b, element))?;
                    any = true;
                }
            }
            Ok(any)
        })
    }

    fn read(
        slot: Option<&mut Vec<TtlValue<T>>>,
        entry: &StateEntry<'_>,
    ) -> Result<Option<Vec<TtlValue<T>>>, SnapshotError> {
        let items = elements(entry)
            .map(|payload| read_ttl_payload(payload?, "list element"))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(extend(slot, items))
    }
}

/// Inserts one map entry into the map in `slot`, or returns a new map holding it.
fn insert<UK: Key, V>(
    slot: Option<&mut SmallMap<UK, V>>,
    user_key: UK,
    value: V,
) -> Option<SmallMap<UK, V>> {
    match slot {
        Some(map) => {
            map.insert(user_key, value);
            None
        }
        None => {
            let mut map = SmallMap::default();
            map.insert(user_key, value);
            Some(map)
        }
    }
}

/// The user key of a map entry.
fn user_key<UK: Key>(entry: &StateEntry<'_>) -> Result<UK, SnapshotError> {
    let bytes = entry
        .user_key
        .ok_or_else(|| SnapshotError("a map entry has no user key".into()))?;
    decode_exact(bytes, "user key")
}

impl<UK: Key, UV: StateValue> Inner for Map<UK, UV> {
    type Stored = SmallMap<UK, UV>;

    fn write(
        w: &mut EntryWriter,
        key: &[u8],
        ns: &[u8],
        stored: &SmallMap<UK, UV>,
        _: Option<TtlCut>,
    ) -> Result<(), SnapshotError> {
        let mut uk = Vec::new();
        for (user_key, value) in stored.iter() {
            uk.clear();
            encode_into(user_key, &mut uk)?;
            w.entry(key, ns, Some(&uk), |buf| {
                encode_into(value, buf).map(|()| true)
            })?;
        }
        Ok(())
    }

    fn read(
        slot: Option<&mut SmallMap<UK, UV>>,
        entry: &StateEntry<'_>,
    ) -> Result<Option<SmallMap<UK, UV>>, SnapshotError> {
        let value = decode_exact(entry.value, "map value")?;
        Ok(insert(slot, user_key(entry)?, value))
    }
}

impl<UK: Key, UV: StateValue> Inner for TtlMap<UK, UV> {
    type Stored = SmallMap<UK, TtlValue<UV>>;

    fn write(
        w: &mut EntryWriter,
        key: &[u8],
        ns: &[u8],
        stored: &SmallMap<UK, TtlValue<UV>>,
        cut: Option<TtlCut>,
    ) -> Result<(), SnapshotError> {
        let mut uk = Vec::new();
        for (user_key, value) in stored.iter() {
            if TtlCut::drops(cut, value.last_access_ms) {
                continue;
            }
            uk.clear();
            encode_into(user_key, &mut uk)?;
            w.entry(key, ns, Some(&uk), |buf| {
                ttl_payload(buf, value).map(|()| true)
            })?;
        }
        Ok(())
    }

    fn read(
        slot: Option<&mut SmallMap<UK, TtlValue<UV>>>,
        entry: &StateEntry<'_>,
    ) -> Result<Option<SmallMap<UK, TtlValue<UV>>>, SnapshotError> {
        let value = read_ttl_payload(entry.value, "map value")?;
        Ok(insert(slot, user_key(entry)?, value))
    }
}

/// The codec of a plain (default-namespace) table of `I`.
pub(crate) fn plain<K: Key, I: Inner>() -> TableCodec<K, I::Stored> {
    TableCodec {
        write: |shard, w, cut| write_plain::<K, I>(shard.iter(), w, cut),
        write_copied: |entries, w, cut| {
            write_plain::<K, I>(entries.iter().map(|(k, v)| (k, v)), w, cut)
        },
        read: read_plain::<K, I>,
    }
}

/// The codec of a namespaced table of `I`: per key, a small map from namespace to value.
pub(crate) fn namespaced<K: Key, N: Namespace, I: Inner>() -> TableCodec<K, SmallMap<N, I::Stored>>
{
    TableCodec {
        write: |shard, w, cut| write_namespaced::<K, N, I>(shard.iter(), w, cut),
        write_copied: |entries, w, cut| {
            write_namespaced::<K, N, I>(entries.iter().map(|(k, v)| (k, v)), w, cut)
        },
        read: read_namespaced::<K, N, I>,
    }
}

fn write_plain<'a, K: Key, I: Inner>(
    entries: impl Iterator<Item = (&'a K, &'a I::Stored)>,
    w: &mut EntryWriter,
    cut: Option<TtlCut>,
) -> Result<(), SnapshotError> {
    let mut key_bytes = Vec::new();
    for (key, stored) in entries {
        key_bytes.clear();
        encode_into(key, &mut key_bytes)?;
        // The default namespace `()` encodes to no bytes.
        I::write(w, &key_bytes, &[], stored, cut)?;
    }
    Ok(())
}

fn read_plain<K: Key, I: Inner>(
    shard: &mut ProbeTable<K, I::Stored>,
    entry: &StateEntry<'_>,
    check: &KeyCheck,
) -> Result<(), SnapshotError> {
    let key: K = check.key(entry.key)?;
    if !entry.namespace.is_empty() {
        return Err(SnapshotError(
            "an entry of a state without namespace has namespace bytes".into(),
        ));
    }
    match shard.get_mut(&key) {
        Some(slot) => {
            I::read(Some(slot), entry)?;
        }
        None => {
            if let Some(value) = I::read(None, entry)? {
                shard.insert(key, value);
            }
        }
    }
    Ok(())
}

fn write_namespaced<'a, K: Key, N: Namespace, I: Inner>(
    entries: impl Iterator<Item = (&'a K, &'a SmallMap<N, I::Stored>)>,
    w: &mut EntryWriter,
    cut: Option<TtlCut>,
) -> Result<(), SnapshotError> {
    let (mut key_bytes, mut ns_bytes) = (Vec::new(), Vec::new());
    for (key, namespaces) in entries {
        key_bytes.clear();
        encode_into(key, &mut key_bytes)?;
        for (ns, stored) in namespaces.iter() {
            ns_bytes.clear();
            encode_into(ns, &mut ns_bytes)?;
            I::write(w, &key_bytes, &ns_bytes, stored, cut)?;
        }
    }
    Ok(())
}

fn read_namespaced<K: Key, N: Namespace, I: Inner>(
    shard: &mut ProbeTable<K, SmallMap<N, I::Stored>>,
    entry: &StateEntry<'_>,
    check: &KeyCheck,
) -> Result<(), SnapshotError> {
    let key: K = check.key(entry.key)?;
    let ns: N = decode_exact(entry.namespace, "namespace")?;
    let namespaces = shard.get_or_insert_with(&key, || key.clone(), SmallMap::default);
    match namespaces.get_mut(&ns) {
        Some(slot) => {
            I::read(Some(slot), entry)?;
        }
        None => {
            if let Some(value) = I::read(None, entry)? {
                namespaces.insert(ns, value);
            }
        }
    }
    // A key's entry exists only while it holds something (the heap's invariant).
    if namespaces.is_empty() {
        shard.remove(&key);
    }
    Ok(())
}
