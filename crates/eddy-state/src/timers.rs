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
use crate::snapshot::heap_codec::{decode_exact, encode_into, KeyCheck};
use crate::snapshot::{EntryBlock, EntryWriter, SnapshotError};
use crate::timer_bucket::TimerBucket;

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
/// Timers are grouped by timestamp into [`TimerBucket`]s, in a B-tree by timestamp: the next
/// due timer is the front of the first bucket. Timers cluster on few timestamps (windows
/// ending at the same minute), so a registration probes a small, hot bucket rather than one
/// table of every timer, firing reads a bucket's log front to back, and a timer costs no
/// per-timer tree node (see the bucket's docs for the memory figures). Timers at distinct
/// timestamps cost one small bucket each, about what a tree place plus a dedup entry did.
///
/// Each timer carries its key group offset, so snapshots and rescaling can take whole key
/// groups; finding one key group's timers walks all of them
/// ([`timers_in_group`](Self::timers_in_group)), so snapshots write every group in one walk.
#[derive(Debug)]
pub struct TimerQueue<K, N> {
    /// Timestamp -> its live timers (a bucket is dropped when its last timer goes).
    buckets: BTreeMap<u64, TimerBucket<K, N>>,
    /// Key groups of the subtask (offsets are below this).
    key_groups: usize,
    /// Live timers in all buckets.
    live: usize,
}

impl<K: Key, N: Namespace> TimerQueue<K, N> {
    /// An empty queue for a subtask owning `key_groups` key groups.
    pub fn new(key_groups: usize) -> Self {
        TimerQueue {
            buckets: BTreeMap::new(),
            key_groups,
            live: 0,
        }
    }

    /// Adds `timer` in the key group at `offset`; returns `false` if it was already there.
    pub fn add(&mut self, offset: usize, timer: Timer<K, N>) -> Result<bool> {
        let offset = self.checked_offset(offset)?;
        let added = self
            .buckets
            .entry(timer.timestamp)
            .or_insert_with(TimerBucket::new)
            .add(offset, timer.key, timer.namespace);
        self.live += usize::from(added);
        Ok(added)
    }

    /// Adds `timer`, which the caller knows is not in the queue, in the key group at
    /// `offset`, without looking for it (see [`TimerService::register_new_timer`]).
    pub fn add_new(&mut self, offset: usize, timer: Timer<K, N>) -> Result<()> {
        let offset = self.checked_offset(offset)?;
        self.buckets
            .entry(timer.timestamp)
            .or_insert_with(TimerBucket::new)
            .add_new(offset, timer.key, timer.namespace);
        self.live += 1;
        Ok(())
    }

    /// Removes the timer (`key`, `namespace`, `timestamp`); returns whether it existed.
    pub fn remove(
        &mut self,
        offset: usize,
        key: &K,
        namespace: &N,
        timestamp: u64,
    ) -> Result<bool> {
        self.checked_offset(offset)?;
        let Some(bucket) = self.buckets.get_mut(&timestamp) else {
            return Ok(false);
        };
        if !bucket.remove(key, namespace) {
            return Ok(false);
        }
        if bucket.is_empty() {
            self.buckets.remove(&timestamp);
        }
        self.live -= 1;
        Ok(true)
    }

    /// The earliest timestamp of any timer.
    pub fn peek_timestamp(&self) -> Option<u64> {
        // Empty buckets are dropped at once, so the first bucket has a timer.
        self.buckets
            .first_key_value()
            .map(|(timestamp, _)| *timestamp)
    }

    /// Removes and returns the earliest timer if it is due at `time` (timestamp <= time).
    pub fn poll(&mut self, time: u64) -> Option<(usize, Timer<K, N>)> {
        let mut polled = None;
        self.drain_due(time, 1, |offset, timer| polled = Some((offset, timer)));
        polled
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
        self.drain_due(time, max, |offset, timer| due.push((offset, timer)))
    }

    /// Removes up to `max` timers due at `time`, earliest first, handing each to `sink`;
    /// returns how many. Drains a bucket in one go so firing many timers looks up the
    /// B-tree once per timestamp, not once per timer.
    fn drain_due(
        &mut self,
        time: u64,
        max: usize,
        mut sink: impl FnMut(usize, Timer<K, N>),
    ) -> usize {
        let mut taken = 0;
        while taken < max {
            let Some(mut first) = self.buckets.first_entry() else {
                break;
            };
            let timestamp = *first.key();
            if timestamp > time {
                break;
            }
            let bucket = first.get_mut();
            let mut exhausted = false;
            while taken < max {
                let Some((offset, key, namespace)) = bucket.pop_front() else {
                    exhausted = true;
                    break;
                };
                taken += 1;
                let timer = Timer {
                    timestamp,
                    key,
                    namespace,
                };
                sink(offset as usize, timer);
            }
            // Empty buckets are dropped at once, so the first one always has a timer. (A
            // bucket whose log ran out is dropped too, whatever its count says, so that a
            // miscount can never make this loop spin.)
            if bucket.is_empty() || exhausted {
                first.remove();
            }
        }
        self.live -= taken;
        taken
    }

    /// Starts loading the index slot a registration of (`key`, `namespace`, `timestamp`)
    /// will probe; changes nothing.
    pub fn prefetch_entry(&self, key: &K, namespace: &N, timestamp: u64) {
        if let Some(bucket) = self.buckets.get(&timestamp) {
            bucket.prefetch(key, namespace);
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

    /// The timers of the key group at `offset`, in firing order. Walks every timer.
    pub fn timers_in_group(&self, offset: usize) -> Vec<Timer<K, N>> {
        self.iter()
            .filter(|(timer_offset, _)| *timer_offset == offset)
            .map(|(_, timer)| timer)
            .collect()
    }

    /// Every timer with its key group offset, in firing order (cloned).
    fn iter(&self) -> impl Iterator<Item = (usize, Timer<K, N>)> + '_ {
        self.buckets.iter().flat_map(|(timestamp, bucket)| {
            bucket.iter().map(|(offset, key, namespace)| {
                let timer = Timer {
                    timestamp: *timestamp,
                    key: key.clone(),
                    namespace: namespace.clone(),
                };
                (offset as usize, timer)
            })
        })
    }

    /// Writes every timer into the snapshot writer of its key group (`writers[offset]`), in
    /// firing order, so timers with equal timestamps fire in the same order after a restore.
    fn snapshot_into(
        &self,
        domain: TimeDomain,
        writers: &mut [EntryWriter],
    ) -> std::result::Result<(), SnapshotError> {
        let (mut key, mut ns) = (Vec::new(), Vec::new());
        for (timestamp, bucket) in &self.buckets {
            for (offset, k, n) in bucket.iter() {
                let writer = writers.get_mut(offset as usize).ok_or_else(|| {
                    SnapshotError(format!(
                        "timer in key group offset {offset}, outside the subtask's range"
                    ))
                })?;
                key.clear();
                ns.clear();
                encode_into(k, &mut key)?;
                encode_into(n, &mut ns)?;
                writer.timer(domain, &key, &ns, *timestamp);
            }
        }
        Ok(())
    }

    fn checked_offset(&self, offset: usize) -> Result<u32> {
        u32::try_from(offset)
            .ok()
            .filter(|_| offset < self.key_groups)
            .ok_or_else(|| {
                EddyError::Internal(format!(
                    "key group offset {offset} outside the subtask's {} key groups",
                    self.key_groups
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

    /// A timer known to be new: added without looking for it first.
    fn add_new(&mut self, offset: usize, timer: Timer<K, N>) -> Result<()> {
        match self {
            Queue::Heap(queue) => queue.add_new(offset, timer),
            #[cfg(feature = "rocksdb")]
            Queue::RocksDb(queue) => queue.add_new(offset, &timer),
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

    fn prefetch_entry(&self, key: &K, namespace: &N, timestamp: u64) {
        match self {
            Queue::Heap(queue) => queue.prefetch_entry(key, namespace, timestamp),
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

    /// Writes every timer into `writers[offset of its key group]`.
    fn snapshot_into(
        &self,
        domain: TimeDomain,
        writers: &mut [EntryWriter],
    ) -> std::result::Result<(), SnapshotError> {
        match self {
            Queue::Heap(queue) => queue.snapshot_into(domain, writers),
            #[cfg(feature = "rocksdb")]
            Queue::RocksDb(queue) => {
                for (offset, writer) in writers.iter_mut().enumerate() {
                    queue.snapshot_group(offset, domain, writer)?;
                }
                Ok(())
            }
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

    /// Registers a timer of the current key in `domain` that the caller knows is not
    /// registered: for operators whose own state tells, such as a window operator
    /// registering the timer of a window's first element. It skips the duplicate check (on
    /// the heap, a hash probe and the index memory of the timer's timestamp).
    ///
    /// The caller must be right: a timer registered twice this way fires twice. When in
    /// doubt, use [`register_event_time_timer`](Self::register_event_time_timer) or
    /// [`register_processing_time_timer`](Self::register_processing_time_timer).
    pub fn register_new_timer(
        &self,
        domain: TimeDomain,
        namespace: N,
        timestamp: u64,
    ) -> Result<()> {
        self.with_current_timer(domain, namespace, timestamp, Queue::add_new)
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
    /// `timestamp`) will touch; changes nothing. An operator
    /// that registers a timer per record calls this for records ahead, as it prefetches
    /// their state.
    pub fn prefetch_event_time_timer(&self, key: &K, namespace: &N, timestamp: u64) {
        if let Ok(queue) = self.event_time.try_borrow() {
            queue.prefetch_entry(key, namespace, timestamp);
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
        self.with_current_timer(domain, namespace, timestamp, |queue, offset, timer| {
            queue.add(offset, timer).map(|_| ())
        })
    }

    /// Runs `apply` on `domain`'s queue with the current key's timer at `timestamp` under
    /// `namespace` and its key group offset.
    fn with_current_timer(
        &self,
        domain: TimeDomain,
        namespace: N,
        timestamp: u64,
        apply: impl FnOnce(&mut Queue<K, N>, usize, Timer<K, N>) -> Result<()>,
    ) -> Result<()> {
        let mut queue = self.borrow_queue(domain)?;
        self.context.with_key(&self.name, |key, offset| {
            let timer = Timer {
                timestamp,
                key: key.clone(),
                namespace,
            };
            apply(&mut queue, offset, timer)
        })?
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
    /// Writes the timers of both domains into the writers of their key groups
    /// (`writers[offset]`, one per key group of the subtask).
    fn snapshot_into(&self, writers: &mut [EntryWriter]) -> std::result::Result<(), SnapshotError>;
    /// Adds the restored timers of `block` to the key group at `offset`.
    fn restore_group(
        &self,
        offset: usize,
        block: &EntryBlock,
        check: &KeyCheck,
    ) -> std::result::Result<(), SnapshotError>;
}

impl<K: Key, N: Namespace> ErasedTimers for TimerService<K, N> {
    fn snapshot_into(&self, writers: &mut [EntryWriter]) -> std::result::Result<(), SnapshotError> {
        for domain in [TimeDomain::EventTime, TimeDomain::ProcessingTime] {
            let queue = self
                .queue(domain)
                .try_borrow()
                .map_err(|_| SnapshotError("the timer queue is busy".into()))?;
            queue.snapshot_into(domain, writers)?;
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
    fn many_deletions_compact_the_buckets_and_keep_the_live_timers_in_order() -> Result<()> {
        let mut queue = TimerQueue::new(2);
        let n = 12_288u64;
        for key in 0..n {
            queue.add((key % 2) as usize, timer(key, 1000 - key % 7))?;
        }
        for key in (0..n).filter(|key| key % 10 != 0) {
            queue.remove((key % 2) as usize, &key, &(), 1000 - key % 7)?;
        }
        // Deleted timers were dropped, not merely marked: each bucket keeps at most its
        // slack or as many as it has live timers (10 % of 12,288 timers live).
        let logged: usize = queue.buckets.values().map(TimerBucket::log_len).sum();
        assert_eq!(queue.len(), 1229);
        assert!(
            logged <= 2 * queue.len() + 17 * queue.buckets.len(),
            "{logged} logged timers"
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
