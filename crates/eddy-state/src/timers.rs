//! Timers: per (key, namespace, timestamp), deduplicated, fired in timestamp order.
//!
//! A [`TimerService`] is what Flink calls an `InternalTimerService`: two queues of timers,
//! one per [`TimeDomain`], scoped to the current key of the subtask's [`KeyContext`]. The
//! runtime registers one per keyed operator; user code registers timers through it while
//! processing an element of some key, and the runtime polls due timers when the watermark
//! (event time) or the clock (processing time) advances, sets each timer's key as the
//! current key and calls `on_timer`.
//!
//! Guarantees:
//! * A timer is identified by (key, namespace, timestamp): registering it twice keeps one.
//! * Due timers come out in ascending timestamp order; timers with equal timestamps in the
//!   order of their registration. A timer registered while timers fire (from `on_timer`) and
//!   already due fires in the same advance, as in Flink.
//! * Timers are kept per key group (the dedup sets are indexed by the key group's offset in
//!   the subtask's range), so a snapshot or a rescale can take whole key groups.
//! * Where they live: on the heap for the heap backend; for the RocksDB backend in RocksDB by
//!   default (two column families per time domain, see `rocksdb::timers`), or on the heap if
//!   [`RocksDbConfig::heap_timers`](crate::rocksdb::RocksDbConfig::heap_timers) is set, as
//!   Flink's `state.backend.rocksdb.timer-service.factory`. Both behave the same; the
//!   conformance suite runs its timer tests on all three.
//!
//! ```
//! # use eddy_core::KeyGroupRange;
//! # use eddy_state::{KeyedStateBackend, TimeDomain};
//! let mut backend = KeyedStateBackend::<String>::heap(KeyGroupRange::new(0, 127), 128);
//! let timers = backend.timer_service::<()>("timers")?;
//! backend.set_current_key("alice".to_string())?;
//! timers.register_event_time_timer((), 20)?;
//! timers.register_event_time_timer((), 10)?;
//! timers.register_event_time_timer((), 10)?; // deduplicated
//! let mut due = Vec::new();
//! while let Some(timer) = timers.poll_event_time(15)? {
//!     due.push(timer.timestamp);
//! }
//! assert_eq!(due, vec![10]);
//! # Ok::<(), eddy_core::EddyError>(())
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use eddy_core::{EddyError, Key, Result};

use crate::key_context::KeyContext;
use crate::namespace::Namespace;
use crate::probe_table::ProbeTable;
use crate::snapshot::heap_codec::{decode_exact, encode_into, KeyCheck};
use crate::snapshot::{EntryBlock, EntryWriter, SnapshotError};

/// Which clock a timer follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum TimeDomain {
    /// The watermark: fires once the watermark reaches the timer's timestamp.
    EventTime,
    /// The wall clock of the subtask (injectable in tests).
    ProcessingTime,
}

/// One timer: fires for `key` and `namespace` at `timestamp` (milliseconds).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Timer<K, N> {
    /// When the timer fires.
    pub timestamp: u64,
    /// The key that is current when the timer fires.
    pub key: K,
    /// The namespace (a window for window operators, `()` otherwise).
    pub namespace: N,
}

/// The timers of one time domain in one subtask.
///
/// An ordered index over all timers finds the next due one in O(log n); per-key-group maps
/// deduplicate and give each key group's timers for snapshots. The maps are linear-probing
/// tables, so the operator can prefetch the entry of a timer before it fires
/// ([`prefetch_due`](Self::prefetch_due)): with millions of timers, each entry is a cache
/// miss otherwise.
#[derive(Debug)]
pub struct TimerQueue<K, N> {
    /// Every live timer with its key group offset, by (timestamp, registration sequence).
    order: BTreeMap<(u64, u64), (usize, Timer<K, N>)>,
    /// Per key group offset: (key, namespace, timestamp) -> registration sequence.
    groups: Vec<ProbeTable<(K, N, u64), u64>>,
    next_sequence: u64,
}

impl<K: Key, N: Namespace> TimerQueue<K, N> {
    /// An empty queue for a subtask owning `key_groups` key groups.
    pub fn new(key_groups: usize) -> Self {
        TimerQueue {
            order: BTreeMap::new(),
            groups: (0..key_groups).map(|_| ProbeTable::new()).collect(),
            next_sequence: 0,
        }
    }

    /// Adds `timer` in the key group at `offset`; returns `false` if it was already there.
    pub fn add(&mut self, offset: usize, timer: Timer<K, N>) -> Result<bool> {
        let sequence = self.next_sequence;
        let group = self.group_mut(offset)?;
        let id = (timer.key.clone(), timer.namespace.clone(), timer.timestamp);
        if group.contains_key(&id) {
            return Ok(false);
        }
        // The second probe finds the slot the first one just loaded.
        group.insert(id, sequence);
        self.next_sequence += 1;
        self.order
            .insert((timer.timestamp, sequence), (offset, timer));
        Ok(true)
    }

    /// Removes the timer (`key`, `namespace`, `timestamp`); returns whether it existed.
    pub fn remove(
        &mut self,
        offset: usize,
        key: &K,
        namespace: &N,
        timestamp: u64,
    ) -> Result<bool> {
        let id = (key.clone(), namespace.clone(), timestamp);
        let Some(sequence) = self.group_mut(offset)?.remove(&id) else {
            return Ok(false);
        };
        self.order.remove(&(timestamp, sequence));
        Ok(true)
    }

    /// The earliest timestamp of any timer.
    pub fn peek_timestamp(&self) -> Option<u64> {
        self.order
            .first_key_value()
            .map(|((timestamp, _), _)| *timestamp)
    }

    /// Removes and returns the earliest timer if it is due at `time` (timestamp <= time).
    pub fn poll(&mut self, time: u64) -> Option<(usize, Timer<K, N>)> {
        let (&(timestamp, _), _) = self.order.first_key_value()?;
        if timestamp > time {
            return None;
        }
        let (_, (offset, timer)) = self.order.pop_first()?;
        // The timer is owned here: its parts become the dedup key and come back out, so
        // nothing is cloned (a `String` key would allocate).
        let id = (timer.key, timer.namespace, timer.timestamp);
        if let Some(group) = self.groups.get_mut(offset) {
            group.remove(&id);
        }
        let (key, namespace, timestamp) = id;
        Some((
            offset,
            Timer {
                timestamp,
                key,
                namespace,
            },
        ))
    }

    /// Starts loading the dedup entry of the timer `ahead` places from the front, if it is
    /// due at `time`, and returns it with its key group offset, so that the caller can
    /// prefetch the state that timer will touch; changes nothing.
    pub fn prefetch_due(&self, time: u64, ahead: usize) -> Option<(usize, &Timer<K, N>)> {
        let (&(timestamp, _), (offset, timer)) = self.order.iter().nth(ahead)?;
        if timestamp > time {
            return None;
        }
        self.prefetch_entry(*offset, &timer.key, &timer.namespace, timestamp);
        Some((*offset, timer))
    }

    /// Starts loading the dedup entry a registration of (`key`, `namespace`, `timestamp`) in
    /// the key group at `offset` will probe; changes nothing.
    pub fn prefetch_entry(&self, offset: usize, key: &K, namespace: &N, timestamp: u64) {
        if let Some(group) = self.groups.get(offset) {
            // Hashes as the (K, N, u64) entry key does, without cloning the key.
            group.prefetch_hashed(&(key, namespace, &timestamp));
        }
    }

    /// The number of timers.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether there is no timer.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The timers of the key group at `offset`, in no particular order (for snapshots).
    pub fn timers_in_group(&self, offset: usize) -> Vec<Timer<K, N>> {
        let Some(group) = self.groups.get(offset) else {
            return Vec::new();
        };
        group
            .iter()
            .filter_map(|((_, _, timestamp), sequence)| self.order.get(&(*timestamp, *sequence)))
            .map(|(_, timer)| timer.clone())
            .collect()
    }

    /// Writes the timers of the key group at `offset` into a snapshot block, in the order of
    /// their registration (so timers with equal timestamps fire in the same order after a
    /// restore).
    fn snapshot_group(
        &self,
        offset: usize,
        domain: TimeDomain,
        w: &mut EntryWriter,
    ) -> std::result::Result<(), SnapshotError> {
        let Some(group) = self.groups.get(offset) else {
            return Ok(());
        };
        let mut timers: Vec<(&u64, &(K, N, u64))> =
            group.iter().map(|(id, seq)| (seq, id)).collect();
        timers.sort_unstable_by_key(|(sequence, _)| **sequence);
        let (mut key, mut ns) = (Vec::new(), Vec::new());
        for (_, (k, n, timestamp)) in timers {
            key.clear();
            ns.clear();
            encode_into(k, &mut key)?;
            encode_into(n, &mut ns)?;
            w.timer(domain, &key, &ns, *timestamp);
        }
        Ok(())
    }

    fn group_mut(&mut self, offset: usize) -> Result<&mut ProbeTable<(K, N, u64), u64>> {
        let groups = self.groups.len();
        self.groups.get_mut(offset).ok_or_else(|| {
            EddyError::Internal(format!(
                "key group offset {offset} outside the subtask's {groups} key groups"
            ))
        })
    }
}

/// Where the timers of one time domain live: on the heap ([`TimerQueue`]) or in the RocksDB
/// instance of the subtask (Flink's `ROCKSDB` timer-service factory).
pub(crate) enum Queue<K, N> {
    /// In memory.
    Heap(TimerQueue<K, N>),
    /// In two column families of the subtask's RocksDB instance.
    #[cfg(feature = "rocksdb")]
    RocksDb(crate::rocksdb::RocksTimerQueue<K, N>),
}

impl<K: Key, N: Namespace> Queue<K, N> {
    fn add(&mut self, offset: usize, timer: Timer<K, N>) -> Result<bool> {
        match self {
            Queue::Heap(queue) => queue.add(offset, timer),
            #[cfg(feature = "rocksdb")]
            Queue::RocksDb(queue) => queue.add(offset, &timer),
        }
    }

    fn remove(&mut self, offset: usize, key: &K, namespace: &N, timestamp: u64) -> Result<bool> {
        match self {
            Queue::Heap(queue) => queue.remove(offset, key, namespace, timestamp),
            #[cfg(feature = "rocksdb")]
            Queue::RocksDb(queue) => queue.remove(offset, key, namespace, timestamp),
        }
    }

    fn peek_timestamp(&mut self) -> Result<Option<u64>> {
        match self {
            Queue::Heap(queue) => Ok(queue.peek_timestamp()),
            #[cfg(feature = "rocksdb")]
            Queue::RocksDb(queue) => queue.peek_timestamp(),
        }
    }

    fn poll(&mut self, time: u64) -> Result<Option<Timer<K, N>>> {
        let polled = match self {
            Queue::Heap(queue) => queue.poll(time),
            #[cfg(feature = "rocksdb")]
            Queue::RocksDb(queue) => queue.poll(time)?,
        };
        Ok(polled.map(|(_, timer)| timer))
    }

    fn prefetch_due(&self, time: u64, ahead: usize) -> Option<(usize, &Timer<K, N>)> {
        match self {
            Queue::Heap(queue) => queue.prefetch_due(time, ahead),
            // RocksDB reads through its block cache; a software prefetch cannot reach it.
            #[cfg(feature = "rocksdb")]
            Queue::RocksDb(_) => None,
        }
    }

    fn prefetch_entry(&self, offset: usize, key: &K, namespace: &N, timestamp: u64) {
        match self {
            Queue::Heap(queue) => queue.prefetch_entry(offset, key, namespace, timestamp),
            #[cfg(feature = "rocksdb")]
            Queue::RocksDb(_) => {}
        }
    }

    fn len(&self) -> usize {
        match self {
            Queue::Heap(queue) => queue.len(),
            #[cfg(feature = "rocksdb")]
            Queue::RocksDb(queue) => queue.len(),
        }
    }

    fn timers_in_group(&self, offset: usize) -> Result<Vec<Timer<K, N>>> {
        match self {
            Queue::Heap(queue) => Ok(queue.timers_in_group(offset)),
            #[cfg(feature = "rocksdb")]
            Queue::RocksDb(queue) => queue.timers_in_group(offset),
        }
    }

    fn snapshot_group(
        &self,
        offset: usize,
        domain: TimeDomain,
        w: &mut EntryWriter,
    ) -> std::result::Result<(), SnapshotError> {
        match self {
            Queue::Heap(queue) => queue.snapshot_group(offset, domain, w),
            #[cfg(feature = "rocksdb")]
            Queue::RocksDb(queue) => queue.snapshot_group(offset, domain, w),
        }
    }
}

/// The event-time and processing-time timers of one keyed operator subtask, scoped to the
/// current key (Flink's `InternalTimerService`).
pub struct TimerService<K, N> {
    name: Rc<str>,
    context: Rc<KeyContext<K>>,
    event_time: RefCell<Queue<K, N>>,
    processing_time: RefCell<Queue<K, N>>,
}

impl<K: Key, N: Namespace> TimerService<K, N> {
    /// A timer service called `name` whose current key lives in `context`, with its timers
    /// on the heap.
    pub fn new(name: &str, context: Rc<KeyContext<K>>) -> Self {
        let key_groups = context.key_group_range().len();
        Self::with_queues(
            name,
            context,
            Queue::Heap(TimerQueue::new(key_groups)),
            Queue::Heap(TimerQueue::new(key_groups)),
        )
    }

    /// A timer service with these queues (the RocksDB backend's).
    pub(crate) fn with_queues(
        name: &str,
        context: Rc<KeyContext<K>>,
        event_time: Queue<K, N>,
        processing_time: Queue<K, N>,
    ) -> Self {
        TimerService {
            name: name.into(),
            context,
            event_time: RefCell::new(event_time),
            processing_time: RefCell::new(processing_time),
        }
    }

    /// The service's name (timers of different services are apart, as Flink's).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Registers an event-time timer for the current key; a duplicate is ignored.
    pub fn register_event_time_timer(&self, namespace: N, timestamp: u64) -> Result<()> {
        self.register(TimeDomain::EventTime, namespace, timestamp)
    }

    /// Registers a processing-time timer for the current key; a duplicate is ignored.
    pub fn register_processing_time_timer(&self, namespace: N, timestamp: u64) -> Result<()> {
        self.register(TimeDomain::ProcessingTime, namespace, timestamp)
    }

    /// Deletes the current key's event-time timer at `timestamp`, if there is one.
    pub fn delete_event_time_timer(&self, namespace: N, timestamp: u64) -> Result<()> {
        self.delete(TimeDomain::EventTime, namespace, timestamp)
    }

    /// Deletes the current key's processing-time timer at `timestamp`, if there is one.
    pub fn delete_processing_time_timer(&self, namespace: N, timestamp: u64) -> Result<()> {
        self.delete(TimeDomain::ProcessingTime, namespace, timestamp)
    }

    /// Removes and returns the earliest event-time timer due at `watermark`.
    pub fn poll_event_time(&self, watermark: u64) -> Result<Option<Timer<K, N>>> {
        self.borrow_queue(TimeDomain::EventTime)?.poll(watermark)
    }

    /// Removes and returns the earliest processing-time timer due at `now`.
    pub fn poll_processing_time(&self, now: u64) -> Result<Option<Timer<K, N>>> {
        self.borrow_queue(TimeDomain::ProcessingTime)?.poll(now)
    }

    /// Starts loading the bookkeeping of the event-time timer `ahead` places from the next
    /// one, if it is due at `watermark`, and hands its key group offset and key to
    /// `prefetch_state` so the caller can warm the state it will touch; changes nothing.
    /// An operator firing many timers calls this before each, as it prefetches the state
    /// of records ahead.
    pub fn prefetch_due_event_time(
        &self,
        watermark: u64,
        ahead: usize,
        prefetch_state: impl FnOnce(usize, &K),
    ) {
        let Ok(queue) = self.event_time.try_borrow() else {
            return;
        };
        if let Some((offset, timer)) = queue.prefetch_due(watermark, ahead) {
            prefetch_state(offset, &timer.key);
        }
    }

    /// Starts loading what registering the event-time timer (`key`, `namespace`,
    /// `timestamp`) in the key group at `offset` will touch; changes nothing. An operator
    /// that registers a timer per record calls this for records ahead, as it prefetches
    /// their state.
    pub fn prefetch_event_time_timer(&self, offset: usize, key: &K, namespace: &N, timestamp: u64) {
        if let Ok(queue) = self.event_time.try_borrow() {
            queue.prefetch_entry(offset, key, namespace, timestamp);
        }
    }

    /// When the next processing-time timer is due (the runtime sleeps until then).
    pub fn next_processing_time(&self) -> Result<Option<u64>> {
        self.borrow_queue(TimeDomain::ProcessingTime)?
            .peek_timestamp()
    }

    /// When the next event-time timer is due.
    pub fn next_event_time(&self) -> Result<Option<u64>> {
        self.borrow_queue(TimeDomain::EventTime)?.peek_timestamp()
    }

    /// The number of timers of `domain`.
    pub fn len(&self, domain: TimeDomain) -> usize {
        self.queue(domain)
            .try_borrow()
            .map_or(0, |queue| queue.len())
    }

    /// Whether no timer of either domain is registered.
    pub fn is_empty(&self) -> bool {
        self.len(TimeDomain::EventTime) == 0 && self.len(TimeDomain::ProcessingTime) == 0
    }

    /// The timers of `domain` in the key group at `offset` of the subtask's range.
    pub fn timers_in_group(&self, domain: TimeDomain, offset: usize) -> Result<Vec<Timer<K, N>>> {
        self.queue(domain)
            .try_borrow()
            .map_err(|_| EddyError::state(&*self.name, "timer queue is busy"))?
            .timers_in_group(offset)
    }

    /// Adds the restored timers of `block` to the key group at `offset`.
    fn restore_block(
        &self,
        offset: usize,
        block: &EntryBlock,
        check: &KeyCheck,
    ) -> std::result::Result<(), SnapshotError> {
        for timer in block.timers() {
            let timer = timer.map_err(|e| SnapshotError(e.to_string()))?;
            let key: K = check.key(timer.key)?;
            let namespace: N = decode_exact(timer.namespace, "timer namespace")?;
            let mut queue = self
                .queue(timer.domain)
                .try_borrow_mut()
                .map_err(|_| SnapshotError("the timer queue is busy".into()))?;
            queue
                .add(
                    offset,
                    Timer {
                        timestamp: timer.timestamp,
                        key,
                        namespace,
                    },
                )
                .map_err(|e| SnapshotError(e.to_string()))?;
        }
        Ok(())
    }

    fn queue(&self, domain: TimeDomain) -> &RefCell<Queue<K, N>> {
        match domain {
            TimeDomain::EventTime => &self.event_time,
            TimeDomain::ProcessingTime => &self.processing_time,
        }
    }

    fn register(&self, domain: TimeDomain, namespace: N, timestamp: u64) -> Result<()> {
        let mut queue = self.borrow_queue(domain)?;
        self.context.with_key(&self.name, |key, offset| {
            queue.add(
                offset,
                Timer {
                    timestamp,
                    key: key.clone(),
                    namespace,
                },
            )
        })??;
        Ok(())
    }

    fn delete(&self, domain: TimeDomain, namespace: N, timestamp: u64) -> Result<()> {
        let mut queue = self.borrow_queue(domain)?;
        self.context.with_key(&self.name, |key, offset| {
            queue.remove(offset, key, &namespace, timestamp)
        })??;
        Ok(())
    }

    fn borrow_queue(&self, domain: TimeDomain) -> Result<std::cell::RefMut<'_, Queue<K, N>>> {
        self.queue(domain)
            .try_borrow_mut()
            .map_err(|_| EddyError::state(&*self.name, "timer queue is busy"))
    }
}

/// What the backend does with a timer service whatever its namespace type: snapshots and
/// restores.
pub(crate) trait ErasedTimers {
    /// Writes the timers of both domains in the key group at `offset` into `w`.
    fn snapshot_group(
        &self,
        offset: usize,
        w: &mut EntryWriter,
    ) -> std::result::Result<(), SnapshotError>;
    /// Adds the restored timers of `block` to the key group at `offset`.
    fn restore_group(
        &self,
        offset: usize,
        block: &EntryBlock,
        check: &KeyCheck,
    ) -> std::result::Result<(), SnapshotError>;
}

impl<K: Key, N: Namespace> ErasedTimers for TimerService<K, N> {
    fn snapshot_group(
        &self,
        offset: usize,
        w: &mut EntryWriter,
    ) -> std::result::Result<(), SnapshotError> {
        for domain in [TimeDomain::EventTime, TimeDomain::ProcessingTime] {
            let queue = self
                .queue(domain)
                .try_borrow()
                .map_err(|_| SnapshotError("the timer queue is busy".into()))?;
            queue.snapshot_group(offset, domain, w)?;
        }
        Ok(())
    }

    fn restore_group(
        &self,
        offset: usize,
        block: &EntryBlock,
        check: &KeyCheck,
    ) -> std::result::Result<(), SnapshotError> {
        self.restore_block(offset, block, check)
    }
}
