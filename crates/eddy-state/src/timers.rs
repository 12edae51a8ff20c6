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
/// tables, so [`poll_due`](Self::poll_due) prefetches the entries of the timers it is about
/// to take and the caller can prefetch what they will touch: with millions of timers, each
/// is a cache miss otherwise.
///
/// Deleting a timer removes only its dedup entry. Its place in the index goes stale and is
/// dropped when it reaches the front, or with all others once stale places outnumber live
/// timers. So a deletion is one hash-table removal instead of a search in the middle of a
/// B-tree, which session windows pay on every merge. A place is live while its group's
/// dedup entry carries the place's registration sequence: a timer deleted and registered
/// again fires once, in the order of its second registration.
#[derive(Debug)]
pub struct TimerQueue<K, N> {
    /// Every registered timer, and the stale places of deleted ones, with its key group
    /// offset, by (timestamp, registration sequence).
    order: BTreeMap<(u64, u64), (usize, Timer<K, N>)>,
    /// Per key group offset: (key, namespace, timestamp) -> registration sequence.
    groups: Vec<ProbeTable<(K, N, u64), u64>>,
    next_sequence: u64,
    /// Registered timers (the dedup entries); `order.len()` counts stale places too.
    live: usize,
}

/// Stale places the index keeps in any case; beyond this it drops them all once they
/// outnumber the live timers, so each compaction is paid for by as many deletions.
const STALE_SLACK: usize = 4096;

/// How far ahead of the timer it takes [`TimerQueue::poll_due`] prefetches dedup entries.
const POLL_PREFETCH: usize = 8;

impl<K: Key, N: Namespace> TimerQueue<K, N> {
    /// An empty queue for a subtask owning `key_groups` key groups.
    pub fn new(key_groups: usize) -> Self {
        TimerQueue {
            order: BTreeMap::new(),
            groups: (0..key_groups).map(|_| ProbeTable::new()).collect(),
            next_sequence: 0,
            live: 0,
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
        self.live += 1;
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
        if self.group_mut(offset)?.remove(&id).is_none() {
            return Ok(false);
        }
        self.live -= 1;
        let stale = self.order.len() - self.live;
        if stale > STALE_SLACK && stale > self.live {
            self.drop_stale();
        }
        Ok(true)
    }

    /// The earliest timestamp of any timer (dropping the stale places in front of it).
    pub fn peek_timestamp(&mut self) -> Option<u64> {
        loop {
            let (&(timestamp, sequence), (offset, timer)) = self.order.first_key_value()?;
            if self.is_live(*offset, timer, sequence) {
                return Some(timestamp);
            }
            self.order.pop_first();
        }
    }

    /// Removes and returns the earliest timer if it is due at `time` (timestamp <= time).
    pub fn poll(&mut self, time: u64) -> Option<(usize, Timer<K, N>)> {
        while let Some(((_, sequence), (offset, timer))) = self.pop_due(time) {
            if let Some(timer) = self.take_if_live(offset, timer, sequence) {
                return Some((offset, timer));
            }
        }
        None
    }

    /// Removes up to `max` timers due at `time` (timestamp <= time) and appends them, with
    /// their key group offsets, to `due` in firing order; returns how many.
    ///
    /// The same timers in the same order as `max` calls of [`poll`](Self::poll), unless a
    /// timer is registered between those calls: for callers whose firing registers no
    /// earlier timers (window operators), which take a batch at a time and prefetch the
    /// state of the timers ahead in it.
    pub fn poll_due(
        &mut self,
        time: u64,
        max: usize,
        due: &mut Vec<(usize, Timer<K, N>)>,
    ) -> usize {
        let start = due.len();
        let mut popped = Vec::new();
        while due.len() - start < max {
            // The index gives up its front without cache misses; the dedup entries are
            // random, so each is prefetched `POLL_PREFETCH` places before its removal.
            let wanted = max - (due.len() - start);
            popped.clear();
            popped.extend(std::iter::from_fn(|| self.pop_due(time)).take(wanted));
            if popped.is_empty() {
                break;
            }
            for (_, (offset, timer)) in popped.iter().take(POLL_PREFETCH) {
                self.prefetch_entry(*offset, &timer.key, &timer.namespace, timer.timestamp);
            }
            let mut places = popped.drain(..);
            while let Some(((_, sequence), (offset, timer))) = places.next() {
                if let Some((_, (ahead_offset, ahead))) = places.as_slice().get(POLL_PREFETCH - 1) {
                    self.prefetch_entry(
                        *ahead_offset,
                        &ahead.key,
                        &ahead.namespace,
                        ahead.timestamp,
                    );
                }
                if let Some(timer) = self.take_if_live(offset, timer, sequence) {
                    due.push((offset, timer));
                }
            }
        }
        due.len() - start
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
        self.live
    }

    /// Whether there is no timer.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// The timers of the key group at `offset`, in no particular order (for snapshots).
    pub fn timers_in_group(&self, offset: usize) -> Vec<Timer<K, N>> {
        let Some(group) = self.groups.get(offset) else {
            return Vec::new();
        };
        group
            .iter()
            .map(|((key, namespace, timestamp), _)| Timer {
                timestamp: *timestamp,
                key: key.clone(),
                namespace: namespace.clone(),
            })
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

    /// Takes the front place of the index if its timestamp is due at `time`, live or stale.
    #[allow(clippy::type_complexity)]
    fn pop_due(&mut self, time: u64) -> Option<((u64, u64), (usize, Timer<K, N>))> {
        let (&(timestamp, _), _) = self.order.first_key_value()?;
        if timestamp > time {
            return None;
        }
        self.order.pop_first()
    }

    /// Whether the place (`offset`, `timer`, `sequence`) is the timer's live registration.
    fn is_live(&self, offset: usize, timer: &Timer<K, N>, sequence: u64) -> bool {
        let id = (timer.key.clone(), timer.namespace.clone(), timer.timestamp);
        self.groups.get(offset).and_then(|group| group.get(&id)) == Some(&sequence)
    }

    /// Unregisters and returns the timer of a place taken from the index if the place is
    /// live; `None` for a stale place (the timer was deleted, perhaps registered again).
    fn take_if_live(
        &mut self,
        offset: usize,
        timer: Timer<K, N>,
        sequence: u64,
    ) -> Option<Timer<K, N>> {
        // The timer is owned here: its parts become the dedup key and come back out, so
        // nothing is cloned (a `String` key would allocate).
        let id = (timer.key, timer.namespace, timer.timestamp);
        let group = self.groups.get_mut(offset)?;
        if group.get(&id) != Some(&sequence) {
            return None;
        }
        group.remove(&id);
        self.live -= 1;
        let (key, namespace, timestamp) = id;
        Some(Timer {
            timestamp,
            key,
            namespace,
        })
    }

    /// Drops every stale place from the index.
    fn drop_stale(&mut self) {
        let groups = &self.groups;
        self.order
            .retain(|&(timestamp, sequence), (offset, timer)| {
                let id = (timer.key.clone(), timer.namespace.clone(), timestamp);
                groups.get(*offset).and_then(|group| group.get(&id)) == Some(&sequence)
            });
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

    fn poll_due(
        &mut self,
        time: u64,
        max: usize,
        due: &mut Vec<(usize, Timer<K, N>)>,
    ) -> Result<usize> {
        match self {
            Queue::Heap(queue) => Ok(queue.poll_due(time, max, due)),
            #[cfg(feature = "rocksdb")]
            Queue::RocksDb(queue) => {
                let start = due.len();
                while due.len() - start < max {
                    let Some(timer) = queue.poll(time)? else {
                        break;
                    };
                    due.push(timer);
                }
                Ok(due.len() - start)
            }
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

    /// Removes up to `max` event-time timers due at `watermark` and appends them, with the
    /// offsets of their key groups in the subtask's range, to `due` in firing order; returns
    /// how many.
    ///
    /// For operators that fire many timers at once and whose firing registers no timer
    /// earlier than the ones taken (window operators): they prefetch the state of the timers
    /// ahead in the batch, as they do for records. Any other caller polls one at a time
    /// ([`poll_event_time`](Self::poll_event_time)) so that a timer registered while firing
    /// takes its place among the due ones.
    pub fn poll_event_time_due(
        &self,
        watermark: u64,
        max: usize,
        due: &mut Vec<(usize, Timer<K, N>)>,
    ) -> Result<usize> {
        self.borrow_queue(TimeDomain::EventTime)?
            .poll_due(watermark, max, due)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn timer(key: u64, timestamp: u64) -> Timer<u64, ()> {
        Timer {
            timestamp,
            key,
            namespace: (),
        }
    }

    fn drain(queue: &mut TimerQueue<u64, ()>, time: u64) -> Vec<(u64, u64)> {
        std::iter::from_fn(|| queue.poll(time))
            .map(|(_, t)| (t.key, t.timestamp))
            .collect()
    }

    #[test]
    fn a_deleted_timer_registered_again_fires_once_in_its_second_place() -> Result<()> {
        let mut queue = TimerQueue::new(1);
        queue.add(0, timer(1, 10))?;
        queue.add(0, timer(2, 10))?;
        assert!(queue.remove(0, &1, &(), 10)?);
        assert!(!queue.remove(0, &1, &(), 10)?);
        queue.add(0, timer(1, 10))?;
        assert_eq!(queue.len(), 2);
        assert_eq!(drain(&mut queue, 10), vec![(2, 10), (1, 10)]);
        assert!(queue.is_empty());
        Ok(())
    }

    #[test]
    fn the_next_timestamp_skips_deleted_timers() -> Result<()> {
        let mut queue = TimerQueue::new(1);
        queue.add(0, timer(1, 5))?;
        queue.add(0, timer(2, 7))?;
        queue.remove(0, &1, &(), 5)?;
        assert_eq!(queue.peek_timestamp(), Some(7));
        queue.remove(0, &2, &(), 7)?;
        assert_eq!(queue.peek_timestamp(), None);
        assert_eq!(queue.poll(u64::MAX), None);
        Ok(())
    }

    #[test]
    fn many_deletions_compact_the_index_and_keep_the_live_timers_in_order() -> Result<()> {
        let mut queue = TimerQueue::new(2);
        let n = 3 * STALE_SLACK as u64;
        for key in 0..n {
            queue.add((key % 2) as usize, timer(key, 1000 - key % 7))?;
        }
        for key in (0..n).filter(|key| key % 10 != 0) {
            queue.remove((key % 2) as usize, &key, &(), 1000 - key % 7)?;
        }
        // Stale places were dropped, not merely skipped: at most the slack or as many as
        // there are live timers remain (10 % of 12,288 timers live, 11,059 deleted).
        let stale = queue.order.len() - queue.len();
        assert_eq!(queue.len(), 1229);
        assert!(
            stale <= STALE_SLACK.max(queue.len()),
            "{stale} stale places"
        );
        let mut expected: Vec<(u64, u64)> = (0..n)
            .filter(|key| key % 10 == 0)
            .map(|key| (key, 1000 - key % 7))
            .collect();
        expected.sort_by_key(|&(key, timestamp)| (timestamp, key));
        assert_eq!(drain(&mut queue, u64::MAX), expected);
        Ok(())
    }

    #[test]
    fn a_batch_of_due_timers_is_what_single_polls_give() -> Result<()> {
        let build = || -> Result<TimerQueue<u64, ()>> {
            let mut queue = TimerQueue::new(3);
            for key in 0..1000u64 {
                queue.add((key % 3) as usize, timer(key, key % 13))?;
            }
            for key in (0..1000u64).step_by(3) {
                queue.remove((key % 3) as usize, &key, &(), key % 13)?;
            }
            Ok(queue)
        };
        let mut single = build()?;
        let mut batched = build()?;
        let expected: Vec<(usize, Timer<u64, ()>)> =
            std::iter::from_fn(|| single.poll(9)).collect();
        let mut due = Vec::new();
        while batched.poll_due(9, 50, &mut due) > 0 {}
        assert_eq!(due, expected);
        assert_eq!(batched.len(), single.len());
        assert_eq!(batched.peek_timestamp(), Some(10));
        Ok(())
    }
}
