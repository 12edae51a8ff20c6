//! The canonical keyed-state snapshot: one keyed subtask's state as backend-independent bytes.
//!
//! [`KeyedStateBackend::snapshot`](crate::KeyedStateBackend::snapshot) copies every registered
//! state and every timer service of a subtask into a [`KeyedStateSnapshot`];
//! [`KeyedStateBackend::restore`](crate::KeyedStateBackend::restore) stages one or more
//! snapshots in a fresh backend, and each state is materialized when the operator registers
//! it again in `open()`. A heap snapshot restores into RocksDB and back, and because state is
//! organised by key group, restoring several old subtasks' snapshots into one new subtask (or
//! one into several) is rescaling: each backend keeps the key groups of its own range.
//!
//! # What a snapshot holds (the contract of `docs/checkpoints.md`)
//!
//! * The `max_parallelism` and the key-group range it was taken with.
//! * Per state a [`StateMeta`]: name, [`StateKind`], the [schemas](crate::schema) of key,
//!   namespace, user key (map state) and value (the accumulator for aggregating state, the
//!   element for list state), and whether TTL is on. A restored state is registered again
//!   with the same kind, TTL on/off, key, namespace and user key; its value type may evolve
//!   (see [`crate::schema`]).
//! * Per timer service a [`TimerServiceMeta`]: name, key and namespace schemas.
//! * Per **non-empty** key group ([`KeyGroupSnapshot`]), per state that has entries there, one
//!   [`EntryBlock`]: the state's entries in that key group, and per timer service one block
//!   of its timers.
//!
//! # Entry encoding
//!
//! A block is one byte arena (a million keys cost a few arenas, not millions of
//! allocations). Every length below is an unsigned LEB128 varint, every "field" is
//! `[length][bytes]`:
//!
//! * a state entry is `[field key][field namespace]([field user key])[field value]`, the user
//!   key only for map state. Key, namespace and user key are `postcard` bytes (the default
//!   namespace `()` is zero bytes).
//! * a value **payload** is `postcard(value)`, behind an 8-byte big-endian last-access
//!   timestamp for a state with TTL; for list state the value field holds the list's
//!   elements, each `[length][payload]`. These are exactly the RocksDB backend's value bytes
//!   (`crate::rocksdb`), so RocksDB snapshots and restores copy bytes without decoding them.
//! * a timer is `[domain: 0 event time, 1 processing time][field key][field namespace]
//!   [timestamp varint]`, ordered by registration within a block.
//!
//! TTL states whose [`StateTtlConfig`](crate::StateTtlConfig) has
//! [`cleanup_full_snapshot`](crate::StateTtlConfig::cleanup_full_snapshot) leave the values
//! that have expired at snapshot time out (Flink's `cleanupFullSnapshot`); other TTL states
//! keep them, with their timestamps.
//!
//! [`encode`](KeyedStateSnapshot::encode) / [`decode`](KeyedStateSnapshot::decode) give the
//! `postcard` payload of a checkpoint file (the framing with magic, version and checksum is
//! `eddy-checkpoint`'s). Decoding never panics on bad bytes; content that decodes but is
//! inconsistent is refused by `restore` with an error naming the state or key group.

pub(crate) mod heap_codec;

use std::collections::BTreeMap;
use std::fmt;

use eddy_core::{EddyError, KeyGroup, KeyGroupRange, Result};
use serde::de::{DeserializeOwned, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::descriptor::StateKind;
use crate::schema::{compat, Compatibility, Migrator, TracedShape, TypeSchema};
use crate::timers::TimeDomain;

/// Length of the TTL timestamp in front of every value payload of a TTL state.
pub(crate) const TTL_HEADER: usize = 8;

/// The most bytes a LEB128 length of a field written by [`EntryWriter`] takes (lengths are
/// below 2^35).
const MAX_FIELD_VARINT: usize = 5;

/// The keyed state of one operator subtask at one checkpoint, independent of the backend.
///
/// See the [module documentation](self) for what it holds and how entries are encoded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyedStateSnapshot {
    max_parallelism: usize,
    /// The first key group of the range the snapshot was taken with.
    range_start: usize,
    /// One past the last key group of that range.
    range_end: usize,
    states: Vec<StateMeta>,
    timer_services: Vec<TimerServiceMeta>,
    /// Ascending by key group; only key groups holding a state entry or a timer.
    key_groups: Vec<KeyGroupSnapshot>,
}

impl KeyedStateSnapshot {
    /// Assembles a snapshot (used by the backends).
    pub(crate) fn new(
        max_parallelism: usize,
        range: KeyGroupRange,
        states: Vec<StateMeta>,
        timer_services: Vec<TimerServiceMeta>,
        key_groups: Vec<KeyGroupSnapshot>,
    ) -> Self {
        KeyedStateSnapshot {
            max_parallelism,
            range_start: range.start(),
            range_end: range.start() + range.len(),
            states,
            timer_services,
            key_groups,
        }
    }

    /// This snapshot with the state entries `per_state` added to its key groups (an
    /// incremental snapshot's head, which holds the timers only, once its RocksDB files
    /// have been read).
    pub(crate) fn with_state_blocks(mut self, per_state: Vec<Vec<(KeyGroup, EntryBlock)>>) -> Self {
        let mut groups: BTreeMap<KeyGroup, KeyGroupSnapshot> = self
            .key_groups
            .drain(..)
            .map(|group| (group.key_group, group))
            .collect();
        for (kg, block) in per_state.into_iter().flatten() {
            groups
                .entry(kg)
                .or_insert_with(|| KeyGroupSnapshot::new(kg))
                .push_state(block);
        }
        self.key_groups = groups.into_values().collect();
        self
    }

    /// The number of key groups of the job the snapshot was taken in.
    pub fn max_parallelism(&self) -> usize {
        self.max_parallelism
    }

    /// The key-group range of the subtask the snapshot was taken from.
    pub fn key_group_range(&self) -> KeyGroupRange {
        if self.range_end <= self.range_start {
            KeyGroupRange::empty()
        } else {
            KeyGroupRange::new(self.range_start, self.range_end - 1)
        }
    }

    /// The states, sorted by name; an [`EntryBlock::index`] of a state block points here.
    pub fn states(&self) -> &[StateMeta] {
        &self.states
    }

    /// The timer services, sorted by name; an [`EntryBlock::index`] of a timer block points
    /// here.
    pub fn timer_services(&self) -> &[TimerServiceMeta] {
        &self.timer_services
    }

    /// The non-empty key groups, ascending.
    pub fn key_groups(&self) -> &[KeyGroupSnapshot] {
        &self.key_groups
    }

    /// The state called `name`, if the snapshot has it.
    pub fn state(&self, name: &str) -> Option<&StateMeta> {
        self.states.iter().find(|meta| meta.name == name)
    }

    /// The number of state entries (a map counts one per user key, a list one per key and
    /// namespace) over all states and key groups.
    pub fn entry_count(&self) -> u64 {
        self.key_groups
            .iter()
            .flat_map(|kg| &kg.states)
            .map(|block| block.len)
            .sum()
    }

    /// The number of timers over all services and key groups.
    pub fn timer_count(&self) -> u64 {
        self.key_groups
            .iter()
            .flat_map(|kg| &kg.timers)
            .map(|block| block.len)
            .sum()
    }

    /// The entries of the state called `name` in every key group, in key-group order (for
    /// inspection and tests); an error if a block is corrupt.
    pub fn entries_of(&self, name: &str) -> Result<Vec<(KeyGroup, StateEntry<'_>)>> {
        let Some(index) = self.states.iter().position(|meta| meta.name == name) else {
            return Ok(Vec::new());
        };
        let meta = &self.states[index];
        let mut out = Vec::new();
        for group in &self.key_groups {
            for block in group.states.iter().filter(|b| b.index as usize == index) {
                for entry in block.entries(meta) {
                    out.push((group.key_group, entry?));
                }
            }
        }
        Ok(out)
    }

    /// The timers of the service called `name` in every key group, in key-group order.
    pub fn timers_of(&self, name: &str) -> Result<Vec<(KeyGroup, TimerEntry<'_>)>> {
        let Some(index) = self
            .timer_services
            .iter()
            .position(|meta| meta.name == name)
        else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for group in &self.key_groups {
            for block in group.timers.iter().filter(|b| b.index as usize == index) {
                for timer in block.timers() {
                    out.push((group.key_group, timer?));
                }
            }
        }
        Ok(out)
    }

    /// The snapshot as `postcard` bytes: the payload of a keyed-state checkpoint file.
    pub fn encode(&self) -> Result<Vec<u8>> {
        self.encode_into(Vec::new(), 0)
    }

    /// [`encode`](Self::encode) into `buffer` (cleared first; a recycled buffer spares the
    /// allocation), with `spare` bytes of capacity left behind the bytes (room for the file
    /// frame the storage layer adds in place).
    pub fn encode_into(&self, mut buffer: Vec<u8>, spare: usize) -> Result<Vec<u8>> {
        let fail = |e: postcard::Error| {
            EddyError::checkpoint(
                "keyed state snapshot",
                format!("cannot encode the snapshot: {e}"),
            )
        };
        // Sized first (a walk over the blocks, not their bytes): one allocation at most,
        // instead of a doubling buffer that copies the whole state again at every step.
        let size = postcard::serialize_with_flavor(self, postcard::ser_flavors::Size::default())
            .map_err(fail)?;
        buffer.clear();
        let needed = size.saturating_add(spare);
        if buffer.capacity() < needed {
            // A recycled buffer a little too small for a grown state: room for some growth
            // too, so that the next snapshots fit again instead of reallocating each time.
            buffer.reserve_exact(needed.saturating_add(needed / 16));
        }
        crate::append::append(self, &mut buffer).map_err(fail)?;
        Ok(buffer)
    }

    /// Decodes what [`encode`](Self::encode) wrote; `location` (the file) names the
    /// snapshot in the error. Bad bytes, truncation and trailing bytes are errors, never
    /// panics.
    pub fn decode(bytes: &[u8], location: &str) -> Result<Self> {
        decode_whole(bytes, location, "a", "keyed state snapshot")
    }
}

/// Decodes `bytes` as exactly one postcard-encoded `T`, `a what` (`"a"`/`"an"` and what it
/// is) for the errors, `location` naming the file: bad bytes, truncation and trailing bytes
/// are [`EddyError::Checkpoint`]s, never panics.
pub(crate) fn decode_whole<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    location: &str,
    a: &str,
    what: &str,
) -> Result<T> {
    let (decoded, rest) = postcard::take_from_bytes::<T>(bytes).map_err(|e| {
        EddyError::checkpoint(
            location,
            format!("not {a} {what} (corrupt or truncated): {e}"),
        )
    })?;
    if !rest.is_empty() {
        return Err(EddyError::checkpoint(
            location,
            format!("{} unexpected bytes after the {what}", rest.len()),
        ));
    }
    Ok(decoded)
}

/// What a snapshot records about one keyed state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateMeta {
    /// The state's name (its descriptor's name).
    pub name: String,
    /// Value, list, map, reducing or aggregating.
    pub kind: StateKind,
    /// The schema of the key.
    pub key: TypeSchema,
    /// The schema of the namespace (`()` for plain keyed state).
    pub namespace: TypeSchema,
    /// The schema of the user key, for map state.
    pub user_key: Option<TypeSchema>,
    /// The schema of the stored value: `T` for value, reducing and list state (the element),
    /// the user value for map state, the accumulator for aggregating state.
    pub value: TypeSchema,
    /// Whether TTL is on: every value payload then starts with its 8-byte timestamp.
    pub ttl: bool,
}

/// How a restored state's entries are loaded into the state registered again.
pub(crate) enum RestorePlan {
    /// The bytes are read as they are.
    AsIs,
    /// Every value is re-encoded from the old schema to the new type first.
    Migrate(TracedShape),
}

impl StateMeta {
    /// The metadata of a state of key `K`, namespace `N` and stored value `V`; `user_key` is
    /// the user key's schema for map state.
    pub(crate) fn of<K: DeserializeOwned, N: DeserializeOwned, V: DeserializeOwned>(
        name: &str,
        kind: StateKind,
        user_key: Option<TypeSchema>,
        ttl: bool,
    ) -> Self {
        StateMeta {
            name: name.to_string(),
            kind,
            key: TypeSchema::of::<K>(),
            namespace: TypeSchema::of::<N>(),
            user_key,
            value: TypeSchema::of::<V>(),
            ttl,
        }
    }

    /// Checks `requested` (the registration of the new code) against this restored state
    /// (see [`crate::schema`]): how to load the entries, or why they cannot be (the reason
    /// names the field). `migrator` turns old values into the requested value type.
    pub(crate) fn plan_restore_as(
        &self,
        requested: &StateMeta,
        migrator: &Migrator,
    ) -> std::result::Result<RestorePlan, String> {
        if self.kind != requested.kind {
            return Err(format!(
                "was {:?} state, is now registered as {:?} state; incompatible",
                self.kind, requested.kind
            ));
        }
        if self.ttl != requested.ttl {
            return Err(format!(
                "TTL was {}, is now {} (turning TTL on or off changes how values are \
                 stored); incompatible",
                on_off(self.ttl),
                on_off(requested.ttl)
            ));
        }
        compat::check_identical(&self.key, &requested.key).map_err(|why| {
            format!("key type {why}; incompatible (the key type of a state may never change)")
        })?;
        compat::check_identical(&self.namespace, &requested.namespace)
            .map_err(|why| format!("namespace type {why}; incompatible"))?;
        match (&self.user_key, &requested.user_key) {
            (Some(old), Some(new)) => compat::check_identical(old, new).map_err(|why| {
                format!("map key type {why}; incompatible (map keys may never change)")
            })?,
            (None, None) => {}
            _ => return Err("changed whether it has user keys; incompatible".into()),
        }
        match compat::check(&self.value, &requested.value) {
            Compatibility::AsIs => Ok(RestorePlan::AsIs),
            Compatibility::Incompatible(why) => Err(format!("{why}; incompatible")),
            Compatibility::AfterMigration => {
                // `check` only migrates traced schemas.
                let old = self.value.shape.clone().ok_or_else(|| {
                    "cannot migrate a value whose old type was not traced".to_string()
                })?;
                migrator
                    .probe(&old)
                    .map_err(|why| format!("{why}; incompatible"))?;
                Ok(RestorePlan::Migrate(old))
            }
        }
    }

    /// How `eddy checkpoints show` and errors describe the state's types.
    pub fn describe(&self) -> String {
        let user_key = self
            .user_key
            .as_ref()
            .map(|t| format!(", user key `{t}`"))
            .unwrap_or_default();
        format!(
            "{:?} state of key `{}`, namespace `{}`{user_key}, value `{}`, TTL {}",
            self.kind,
            self.key,
            self.namespace,
            self.value,
            on_off(self.ttl)
        )
    }
}

fn on_off(flag: bool) -> &'static str {
    if flag {
        "on"
    } else {
        "off"
    }
}

/// What a snapshot records about one timer service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerServiceMeta {
    /// The service's name.
    pub name: String,
    /// The schema of the key.
    pub key: TypeSchema,
    /// The schema of the namespace.
    pub namespace: TypeSchema,
}

impl TimerServiceMeta {
    /// The metadata of a timer service of key `K` and namespace `N`.
    pub(crate) fn of<K: DeserializeOwned, N: DeserializeOwned>(name: &str) -> Self {
        TimerServiceMeta {
            name: name.to_string(),
            key: TypeSchema::of::<K>(),
            namespace: TypeSchema::of::<N>(),
        }
    }

    /// Checks that `requested` (a registration) matches this restored service: timers are
    /// keys and namespaces only, and those may never change.
    pub(crate) fn check_restorable_as(
        &self,
        requested: &TimerServiceMeta,
    ) -> std::result::Result<(), String> {
        compat::check_identical(&self.key, &requested.key)
            .map_err(|why| format!("timer key type {why}; incompatible"))?;
        compat::check_identical(&self.namespace, &requested.namespace)
            .map_err(|why| format!("timer namespace type {why}; incompatible"))
    }
}

/// The entries of one key group in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyGroupSnapshot {
    key_group: KeyGroup,
    /// One block per state with entries here, ascending by state index.
    states: Vec<EntryBlock>,
    /// One block per timer service with timers here, ascending by service index.
    timers: Vec<EntryBlock>,
}

impl KeyGroupSnapshot {
    /// An empty key group (used by the backends).
    pub(crate) fn new(key_group: KeyGroup) -> Self {
        KeyGroupSnapshot {
            key_group,
            states: Vec::new(),
            timers: Vec::new(),
        }
    }

    /// Adds a state block (used by the backends).
    pub(crate) fn push_state(&mut self, block: EntryBlock) {
        self.states.push(block);
    }

    /// Adds a timer block (used by the backends).
    pub(crate) fn push_timers(&mut self, block: EntryBlock) {
        self.timers.push(block);
    }

    /// The key group.
    pub fn key_group(&self) -> KeyGroup {
        self.key_group
    }

    /// The state blocks; each names its state by index into [`KeyedStateSnapshot::states`].
    pub fn states(&self) -> &[EntryBlock] {
        &self.states
    }

    /// The timer blocks; each names its service by index into
    /// [`KeyedStateSnapshot::timer_services`].
    pub fn timers(&self) -> &[EntryBlock] {
        &self.timers
    }
}

/// The entries of one state (or the timers of one service) in one key group: one byte arena.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryBlock {
    index: u32,
    len: u64,
    data: Bytes,
}

impl EntryBlock {
    /// The index of the state (or timer service) in the snapshot's list.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The number of entries (or timers).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the block holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The size of the arena in bytes.
    pub fn byte_len(&self) -> usize {
        self.data.0.len()
    }

    /// The entries of a state block, decoded lazily; `meta` is the block's state.
    pub fn entries<'a>(&'a self, meta: &StateMeta) -> StateEntries<'a> {
        StateEntries {
            rest: &self.data.0,
            user_key: meta.kind == StateKind::Map,
            failed: false,
        }
    }

    /// The timers of a timer block, decoded lazily.
    pub fn timers(&self) -> TimerEntries<'_> {
        TimerEntries {
            rest: &self.data.0,
            failed: false,
        }
    }

    /// This state block with every value payload re-encoded by `migrate` (schema
    /// evolution); keys, namespaces, user keys, TTL timestamps and list framing are kept.
    pub(crate) fn migrate_values(
        &self,
        meta: &StateMeta,
        migrate: &ValueMigration<'_>,
    ) -> std::result::Result<EntryBlock, SnapshotError> {
        let payload = |buf: &mut Vec<u8>, old: &[u8]| {
            let body = if meta.ttl {
                let header = old
                    .get(..TTL_HEADER)
                    .ok_or_else(|| SnapshotError("a TTL value lacks its timestamp".into()))?;
                buf.extend_from_slice(header);
                &old[TTL_HEADER..]
            } else {
                old
            };
            buf.extend_from_slice(&migrate(body).map_err(SnapshotError)?);
            Ok::<(), SnapshotError>(())
        };
        let mut writer = EntryWriter::new();
        for entry in self.entries(meta) {
            let entry = entry.map_err(|e| SnapshotError(e.to_string()))?;
            writer.entry(entry.key, entry.namespace, entry.user_key, |buf| {
                if meta.kind == StateKind::List {
                    for element in entry.elements() {
                        let element = element.map_err(|e| SnapshotError(e.to_string()))?;
                        push_element(buf, |b| payload(b, element))?;
                    }
                } else {
                    payload(buf, entry.value)?;
                }
                Ok::<bool, SnapshotError>(true)
            })?;
        }
        Ok(writer.finish(self.index).unwrap_or(EntryBlock {
            index: self.index,
            len: 0,
            data: Bytes::default(),
        }))
    }
}

/// Re-encodes one old value payload (without its TTL header) as the new type.
pub(crate) type ValueMigration<'a> = dyn Fn(&[u8]) -> std::result::Result<Vec<u8>, String> + 'a;

/// Bytes that `postcard` writes as one length-prefixed run (not one element per byte).
#[derive(Clone, Default, PartialEq, Eq)]
struct Bytes(Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.0.len())
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        deserializer.deserialize_byte_buf(BytesVisitor)
    }
}

struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Bytes;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> std::result::Result<Bytes, E> {
        Ok(Bytes(v.to_vec()))
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> std::result::Result<Bytes, E> {
        Ok(Bytes(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Bytes, A::Error> {
        // Formats without a byte-string type; the size hint is not trusted for the capacity.
        let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
        while let Some(byte) = seq.next_element::<u8>()? {
            bytes.push(byte);
        }
        Ok(Bytes(bytes))
    }
}

/// Why an entry could not be written into, or read from, a snapshot; the caller adds the
/// state and key group.
#[derive(Debug)]
pub(crate) struct SnapshotError(pub(crate) String);

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<postcard::Error> for SnapshotError {
    fn from(e: postcard::Error) -> Self {
        SnapshotError(format!("postcard: {e}"))
    }
}

impl SnapshotError {
    /// The error as a state error of `state` in key group `kg`.
    pub(crate) fn in_state(self, state: &str, kg: KeyGroup, doing: &str) -> EddyError {
        EddyError::state(state, format!("{doing} key group {kg}: {}", self.0))
    }
}

/// Appends `value` as an unsigned LEB128 varint.
pub(crate) fn write_varint(buf: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7F) as u8;
        value >>= 7;
        if value == 0 {
            buf.push(byte);
            return;
        }
        buf.push(byte | 0x80);
    }
}

/// Reads an unsigned LEB128 varint from the front of `bytes`, advancing it.
pub(crate) fn read_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value: u64 = 0;
    for (i, &byte) in bytes.iter().take(10).enumerate() {
        let part = u64::from(byte & 0x7F);
        if i == 9 && part > 1 {
            return None;
        }
        value |= part << (7 * i);
        if byte & 0x80 == 0 {
            *bytes = &bytes[i + 1..];
            return Some(value);
        }
    }
    None
}

/// Reads one `[length][bytes]` field from the front of `bytes`, advancing it.
fn read_field<'a>(bytes: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = usize::try_from(read_varint(bytes)?).ok()?;
    let field = bytes.get(..len)?;
    *bytes = &bytes[len..];
    Some(field)
}

/// Appends `[length][bytes]`.
fn write_field(buf: &mut Vec<u8>, bytes: &[u8]) {
    write_varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

/// Appends one `[length][payload]` field whose payload `payload` writes into `buf`.
///
/// The payload is written behind one byte of room for its length: a payload under 128 bytes
/// (most values) is then never moved; a longer one moves up once its length is known (one
/// copy, instead of encoding twice).
pub(crate) fn write_field_with<E: From<SnapshotError>>(
    buf: &mut Vec<u8>,
    payload: impl FnOnce(&mut Vec<u8>) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let start = buf.len();
    buf.push(0);
    payload(buf)?;
    let end = buf.len();
    let len = end - start - 1;
    if len < 0x80 {
        // One varint byte, already in place.
        buf[start] = len as u8;
        return Ok(());
    }
    if len >= 1 << (7 * MAX_FIELD_VARINT) {
        return Err(SnapshotError(format!("a value of {len} bytes is too large")).into());
    }
    let mut header = [0u8; MAX_FIELD_VARINT];
    let n = varint_into(&mut header, len as u64);
    buf.resize(end + n - 1, 0);
    buf.copy_within(start + 1..end, start + n);
    buf[start..start + n].copy_from_slice(&header[..n]);
    Ok(())
}

/// Writes `value` as an unsigned LEB128 varint at the front of `out`; returns its length.
/// `out` must hold the varint (`MAX_FIELD_VARINT` bytes for values below 2^35).
fn varint_into(out: &mut [u8; MAX_FIELD_VARINT], mut value: u64) -> usize {
    let mut n = 0;
    while value >= 0x80 && n + 1 < MAX_FIELD_VARINT {
        out[n] = (value & 0x7F) as u8 | 0x80;
        value >>= 7;
        n += 1;
    }
    out[n] = value as u8;
    n + 1
}

/// Builds the arena of one [`EntryBlock`].
#[derive(Default)]
pub(crate) struct EntryWriter {
    data: Vec<u8>,
    len: u64,
}

impl EntryWriter {
    /// An empty writer.
    pub(crate) fn new() -> Self {
        EntryWriter::default()
    }

    /// Appends one state entry; `value` writes the value field and returns `false` to drop
    /// the entry (nothing of it survives a TTL cut).
    pub(crate) fn entry<E: From<SnapshotError>>(
        &mut self,
        key: &[u8],
        namespace: &[u8],
        user_key: Option<&[u8]>,
        value: impl FnOnce(&mut Vec<u8>) -> std::result::Result<bool, E>,
    ) -> std::result::Result<(), E> {
        let start = self.data.len();
        write_field(&mut self.data, key);
        write_field(&mut self.data, namespace);
        if let Some(user_key) = user_key {
            write_field(&mut self.data, user_key);
        }
        let mut keep = true;
        write_field_with(&mut self.data, |buf| {
            keep = value(buf)?;
            Ok::<(), E>(())
        })?;
        if keep {
            self.len += 1;
        } else {
            self.data.truncate(start);
        }
        Ok(())
    }

    /// Appends one timer.
    pub(crate) fn timer(&mut self, domain: TimeDomain, key: &[u8], namespace: &[u8], ts: u64) {
        self.data.push(match domain {
            TimeDomain::EventTime => 0,
            TimeDomain::ProcessingTime => 1,
        });
        write_field(&mut self.data, key);
        write_field(&mut self.data, namespace);
        write_varint(&mut self.data, ts);
        self.len += 1;
    }

    /// The block written so far (`None` if empty); the writer starts afresh.
    pub(crate) fn finish(&mut self, index: u32) -> Option<EntryBlock> {
        if self.len == 0 {
            self.data.clear();
            return None;
        }
        // Key groups of one state are about the same size: starting the next block at this
        // one's size (plus an eighth) spares it the reallocations of growing from nothing.
        let next = self.data.len() + self.data.len() / 8;
        let data = std::mem::replace(&mut self.data, Vec::with_capacity(next));
        let len = std::mem::take(&mut self.len);
        Some(EntryBlock {
            index,
            len,
            data: Bytes(data),
        })
    }
}

/// Appends one list element `[length][payload]` whose payload `payload` writes.
pub(crate) fn push_element<E: From<SnapshotError>>(
    buf: &mut Vec<u8>,
    payload: impl FnOnce(&mut Vec<u8>) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    write_field_with(buf, payload)
}

/// Splits a TTL state's value payload into its timestamp and its `postcard` bytes.
pub fn split_ttl(payload: &[u8]) -> Option<(u64, &[u8])> {
    let header: [u8; TTL_HEADER] = payload.get(..TTL_HEADER)?.try_into().ok()?;
    Some((u64::from_be_bytes(header), &payload[TTL_HEADER..]))
}

/// One state entry in a snapshot, as bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateEntry<'a> {
    /// `postcard(key)`.
    pub key: &'a [u8],
    /// `postcard(namespace)` (empty for the default namespace `()`).
    pub namespace: &'a [u8],
    /// `postcard(user key)`, for map state.
    pub user_key: Option<&'a [u8]>,
    /// The value payload, or for list state the framed elements (see [`Self::elements`]).
    pub value: &'a [u8],
}

impl<'a> StateEntry<'a> {
    /// The element payloads of a list state's entry.
    pub fn elements(&self) -> ListElements<'a> {
        ListElements {
            rest: self.value,
            failed: false,
        }
    }
}

/// The element payloads of a list entry; yields an error once if the framing is broken.
pub struct ListElements<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> Iterator for ListElements<'a> {
    type Item = Result<&'a [u8]>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() || self.failed {
            return None;
        }
        match read_field(&mut self.rest) {
            Some(element) => Some(Ok(element)),
            None => {
                self.failed = true;
                Some(Err(corrupt_block("a list element's framing is broken")))
            }
        }
    }
}

/// The error of a block whose bytes do not parse.
fn corrupt_block(what: &str) -> EddyError {
    EddyError::checkpoint(
        "keyed state snapshot",
        format!("a block of entries is corrupt: {what}"),
    )
}

/// The entries of a state block; yields an error once if the block is corrupt.
pub struct StateEntries<'a> {
    rest: &'a [u8],
    user_key: bool,
    failed: bool,
}

impl<'a> Iterator for StateEntries<'a> {
    type Item = Result<StateEntry<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() || self.failed {
            return None;
        }
        let mut rest = self.rest;
        let parsed = (|| {
            let key = read_field(&mut rest)?;
            let namespace = read_field(&mut rest)?;
            let user_key = match self.user_key {
                true => Some(read_field(&mut rest)?),
                false => None,
            };
            let value = read_field(&mut rest)?;
            Some(StateEntry {
                key,
                namespace,
                user_key,
                value,
            })
        })();
        match parsed {
            Some(entry) => {
                self.rest = rest;
                Some(Ok(entry))
            }
            None => {
                self.failed = true;
                Some(Err(corrupt_block("a state entry is truncated")))
            }
        }
    }
}

/// One timer in a snapshot, as bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerEntry<'a> {
    /// Which clock the timer follows.
    pub domain: TimeDomain,
    /// `postcard(key)`.
    pub key: &'a [u8],
    /// `postcard(namespace)`.
    pub namespace: &'a [u8],
    /// When the timer fires.
    pub timestamp: u64,
}

/// The timers of a timer block; yields an error once if the block is corrupt.
pub struct TimerEntries<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> Iterator for TimerEntries<'a> {
    type Item = Result<TimerEntry<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() || self.failed {
            return None;
        }
        let mut rest = self.rest;
        let parsed = (|| {
            let (&domain, tail) = rest.split_first()?;
            rest = tail;
            let domain = match domain {
                0 => TimeDomain::EventTime,
                1 => TimeDomain::ProcessingTime,
                _ => return None,
            };
            let key = read_field(&mut rest)?;
            let namespace = read_field(&mut rest)?;
            let timestamp = read_varint(&mut rest)?;
            Some(TimerEntry {
                domain,
                key,
                namespace,
                timestamp,
            })
        })();
        match parsed {
            Some(timer) => {
                self.rest = rest;
                Some(Ok(timer))
            }
            None => {
                self.failed = true;
                Some(Err(corrupt_block("a timer is truncated or unknown")))
            }
        }
    }
}

/// The old subtasks (of `old_parallelism`) whose snapshots hold key groups of `range`: the
/// snapshots a new subtask owning `range` restores after a rescale. Empty for an empty range
/// or an old parallelism of 0.
///
/// ```
/// use eddy_core::KeyGroupRange;
/// use eddy_state::snapshot::old_subtasks_for;
///
/// // 2 -> 3 subtasks, 128 key groups: new subtask 1 owns 43..=85, held by old 0 and 1.
/// let range = KeyGroupRange::for_subtask(128, 3, 1);
/// assert_eq!(old_subtasks_for(128, 2, range), 0..2);
/// ```
pub fn old_subtasks_for(
    max_parallelism: usize,
    old_parallelism: usize,
    range: KeyGroupRange,
) -> std::ops::Range<usize> {
    if range.is_empty() || old_parallelism == 0 || max_parallelism == 0 {
        return 0..0;
    }
    // Old subtasks own contiguous, ascending ranges: the owners of the first and the last
    // key group bound the ones in between.
    let owner = |kg: usize| kg * old_parallelism / max_parallelism;
    owner(range.start())..owner(range.end()) + 1
}

/// The blocks of one state (or timer service) staged by a restore, with their key groups.
pub(crate) type StagedBlocks = Vec<(KeyGroup, EntryBlock)>;

/// Snapshots staged by [`KeyedStateBackend::restore`](crate::KeyedStateBackend::restore):
/// the entries of the restoring subtask's key groups, by state, until the states are
/// registered.
#[derive(Default)]
pub(crate) struct Staged {
    /// The operator restoring (its uid), for errors.
    pub(crate) operator: String,
    pub(crate) states: BTreeMap<String, (StateMeta, StagedBlocks)>,
    pub(crate) timers: BTreeMap<String, (TimerServiceMeta, StagedBlocks)>,
}

impl Staged {
    /// Stages the key groups of `snapshots` inside `range`, checking that they were taken
    /// with `max_parallelism`, agree on their states' metadata, and overlap nowhere.
    pub(crate) fn new(
        operator: &str,
        snapshots: Vec<KeyedStateSnapshot>,
        range: KeyGroupRange,
        max_parallelism: usize,
    ) -> Result<Staged> {
        let mut staged = Staged {
            operator: operator.to_string(),
            ..Staged::default()
        };
        let mut seen: BTreeMap<KeyGroup, usize> = BTreeMap::new();
        for (number, snapshot) in snapshots.into_iter().enumerate() {
            let taken = snapshot.key_group_range();
            let location = format!(
                "keyed state snapshot #{number} (key groups {}..={})",
                taken.start(),
                taken.end()
            );
            if snapshot.max_parallelism != max_parallelism {
                return Err(EddyError::checkpoint(
                    location,
                    format!(
                        "taken with max parallelism {}, but this job has max parallelism {} \
                         (the number of key groups cannot change across a restore)",
                        snapshot.max_parallelism, max_parallelism
                    ),
                ));
            }
            for meta in &snapshot.states {
                stage_meta(&mut staged.states, meta.name.clone(), meta, &location)?;
            }
            for meta in &snapshot.timer_services {
                stage_meta(&mut staged.timers, meta.name.clone(), meta, &location)?;
            }
            for group in snapshot.key_groups {
                let kg = group.key_group;
                if !taken.contains(kg) || usize::from(kg) >= max_parallelism {
                    return Err(EddyError::checkpoint(
                        location,
                        format!("holds key group {kg}, outside its own range"),
                    ));
                }
                if !range.contains(kg) {
                    continue;
                }
                if let Some(other) = seen.insert(kg, number) {
                    return Err(EddyError::checkpoint(
                        location,
                        format!("key group {kg} is also in keyed state snapshot #{other}"),
                    ));
                }
                for block in group.states {
                    let meta = snapshot.states.get(block.index as usize).ok_or_else(|| {
                        EddyError::checkpoint(
                            &location,
                            format!(
                                "key group {kg} names state #{}, which it lacks",
                                block.index
                            ),
                        )
                    })?;
                    if let Some((_, blocks)) = staged.states.get_mut(&meta.name) {
                        blocks.push((kg, block));
                    }
                }
                for block in group.timers {
                    let meta = snapshot
                        .timer_services
                        .get(block.index as usize)
                        .ok_or_else(|| {
                            EddyError::checkpoint(
                                &location,
                                format!(
                                    "key group {kg} names timer service #{}, which it lacks",
                                    block.index
                                ),
                            )
                        })?;
                    if let Some((_, blocks)) = staged.timers.get_mut(&meta.name) {
                        blocks.push((kg, block));
                    }
                }
            }
        }
        Ok(staged)
    }
}

/// Records `meta` under `name`, refusing a different one recorded by an earlier snapshot.
fn stage_meta<M: Clone + PartialEq + fmt::Debug>(
    staged: &mut BTreeMap<String, (M, StagedBlocks)>,
    name: String,
    meta: &M,
    location: &str,
) -> Result<()> {
    match staged.get(&name) {
        Some((existing, _)) if existing != meta => Err(EddyError::checkpoint(
            location,
            format!(
                "state \"{name}\" is {meta:?} here but {existing:?} in an earlier snapshot of \
                 the same restore"
            ),
        )),
        Some(_) => Ok(()),
        None => {
            staged.insert(name, (meta.clone(), Vec::new()));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_subtasks_for_covers_exactly_the_overlapping_ranges() {
        for max in [1usize, 7, 128, 1000] {
            for old in 1..=max.min(9) {
                for new in 1..=max.min(9) {
                    for index in 0..new {
                        let range = KeyGroupRange::for_subtask(max, new, index);
                        let expected: Vec<usize> = (0..old)
                            .filter(|&o| {
                                let r = KeyGroupRange::for_subtask(max, old, o);
                                range.iter().any(|kg| r.contains(kg))
                            })
                            .collect();
                        let got: Vec<usize> = old_subtasks_for(max, old, range).collect();
                        assert_eq!(got, expected, "max {max}, {old} -> {new}, subtask {index}");
                    }
                }
            }
        }
        assert!(old_subtasks_for(128, 2, KeyGroupRange::empty()).is_empty());
    }

    #[test]
    fn a_field_written_in_place_is_the_same_as_one_written_from_its_bytes() {
        // Lengths around each varint width, where the in-place write moves the payload.
        for len in [0usize, 1, 126, 127, 128, 129, 300, 16_383, 16_384, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut expected = vec![7u8];
            write_field(&mut expected, &payload);
            let mut written = vec![7u8];
            write_field_with(&mut written, |buf| {
                buf.extend_from_slice(&payload);
                Ok::<(), SnapshotError>(())
            })
            .unwrap();
            assert_eq!(written, expected, "length {len}");
            let mut rest = &written[1..];
            assert_eq!(read_field(&mut rest), Some(&payload[..]), "length {len}");
            assert!(rest.is_empty());
        }
    }

    #[test]
    fn varints_round_trip_and_reject_overlong_input() {
        for value in [0u64, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut buf = Vec::new();
            write_varint(&mut buf, value);
            let mut bytes = buf.as_slice();
            assert_eq!(read_varint(&mut bytes), Some(value));
            assert!(bytes.is_empty());
        }
        assert_eq!(read_varint(&mut [0x80u8; 11].as_slice()), None);
        assert_eq!(read_varint(&mut [0xFFu8; 9].as_slice()), None);
        let mut too_big = vec![0xFFu8; 9];
        too_big.push(0x02);
        assert_eq!(read_varint(&mut too_big.as_slice()), None);
    }

    #[test]
    fn entries_round_trip_and_a_dropped_entry_leaves_nothing() {
        let mut w = EntryWriter::new();
        w.entry(b"k1", b"", Some(b"u"), |buf| {
            buf.extend_from_slice(&[7; 200]);
            Ok::<_, SnapshotError>(true)
        })
        .ok();
        w.entry(b"k2", b"n", Some(b"v"), |buf| {
            buf.push(1);
            Ok::<_, SnapshotError>(false)
        })
        .ok();
        let block = w.finish(3);
        let Some(block) = block else {
            panic!("one entry was written");
        };
        assert_eq!((block.index(), block.len()), (3, 1));
        let meta = StateMeta::of::<u64, (), u64>(
            "m",
            StateKind::Map,
            Some(TypeSchema::of::<u64>()),
            false,
        );
        let entries: Vec<_> = block
            .entries(&meta)
            .collect::<Result<_>>()
            .unwrap_or_default();
        assert_eq!(
            entries,
            vec![StateEntry {
                key: b"k1",
                namespace: b"",
                user_key: Some(b"u"),
                value: &[7; 200],
            }]
        );
        assert!(w.finish(0).is_none());
    }

    proptest::proptest! {
        /// Arbitrary bytes decode to an error or to a snapshot whose blocks parse or fail,
        /// never to a panic.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            if let Ok(snapshot) = KeyedStateSnapshot::decode(&bytes, "garbage") {
                for meta in snapshot.states() {
                    let _ = snapshot.entries_of(&meta.name);
                }
                for meta in snapshot.timer_services() {
                    let _ = snapshot.timers_of(&meta.name);
                }
                let _ = Staged::new("op", vec![snapshot], KeyGroupRange::new(0, 127), 128);
            }
        }
    }

    #[test]
    fn truncated_blocks_are_errors() {
        let mut w = EntryWriter::new();
        w.entry(b"key", b"", None, |buf| {
            buf.extend_from_slice(b"value");
            Ok::<_, SnapshotError>(true)
        })
        .ok();
        w.timer(TimeDomain::ProcessingTime, b"key", b"", 1 << 40);
        let Some(block) = w.finish(0) else {
            panic!("written");
        };
        let meta = StateMeta::of::<u64, (), u64>("v", StateKind::Value, None, false);
        for cut in 1..block.data.0.len() {
            let truncated = EntryBlock {
                index: 0,
                len: 1,
                data: Bytes(block.data.0[..cut].to_vec()),
            };
            // A prefix either parses into fewer entries or ends in exactly one error.
            let errors = truncated.entries(&meta).filter(Result::is_err).count();
            assert!(errors <= 1);
            let errors = truncated.timers().filter(Result::is_err).count();
            assert!(errors <= 1);
        }
    }
}
