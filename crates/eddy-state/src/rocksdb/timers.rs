//! Timers in RocksDB: one queue per time domain of a timer service, in two column families.
//!
//! This is Flink's `ROCKSDB` timer-service factory (its default for the RocksDB backend): the
//! timers of a subtask live on disk with its state, so their number is bounded by disk, not
//! memory, and they are part of every RocksDB checkpoint.
//!
//! # Layout
//!
//! ```text
//! order  CF:  [timestamp: 8 BE][sequence: 8 BE]        -> [kg: 2 BE][key][namespace]
//! index  CF:  [kg: 2 BE][key][namespace][timestamp: 8 BE] -> [sequence: 8 BE]
//! ```
//!
//! The order column family sorts timers by timestamp, then by registration sequence, so the
//! next due timer is the first key and timers with equal timestamps fire in the order they
//! were registered (the heap queue's guarantee). The index column family deduplicates a
//! (key, namespace, timestamp) with one point lookup, finds a timer to delete, and keeps each
//! key group's timers contiguous for snapshots. Key and namespace are postcard bytes, as in
//! the state column families and the canonical snapshot.
//!
//! # What it guarantees, and what it costs
//!
//! * Registering is a point lookup and, for a new timer, one write batch of two puts;
//!   deleting is a lookup and two deletes; polling a due timer is one seek and two deletes.
//! * Polled timers leave tombstones at the front of the order column family, which a naive
//!   seek from the start would step over again and again. The queue keeps a *floor*, a key
//!   below which no live timer exists (raised past each polled timer, lowered when an earlier
//!   timer is registered), and seeks from there.
//! * The queue reads ahead: one seek loads the next [`READ_AHEAD`] timers in order into
//!   memory, so firing a run of due timers costs one seek per run, not one per timer, and
//!   checking whether a timer is due (at every watermark) reads nothing. The read-ahead is
//!   always a prefix of the order column family: a timer registered before its end is
//!   inserted into it, a deleted timer is removed from it, and it is capped at twice its
//!   size, so memory stays bounded however many timers there are.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::rc::Rc;

use eddy_core::{EddyError, Key, KeyGroup, Result};
use rocksdb::{ReadOptions, WriteBatch};

use super::codec::{encode_into, start_key};
use super::db::{decode_error, rocks_error, Db};
use super::split_key;
use crate::namespace::Namespace;
use crate::snapshot::{EntryWriter, SnapshotError};
use crate::timers::{TimeDomain, Timer};

/// Length of an order key: timestamp and sequence, both `u64` big-endian.
const ORDER_KEY: usize = 16;
/// Length of the timestamp suffix of an index key.
const TIMESTAMP: usize = 8;
/// Timers read ahead per seek.
const READ_AHEAD: usize = 256;

/// The timers of one time domain of one timer service, in RocksDB (see the [module
/// docs](self)).
pub(crate) struct RocksTimerQueue<K, N> {
    db: Rc<Db>,
    /// The timer service's name, for errors.
    service: Rc<str>,
    order_cf: String,
    index_cf: String,
    /// The first key group of the subtask's range (offsets count from it).
    first_kg: usize,
    next_sequence: u64,
    len: usize,
    /// No live order key is below this one.
    floor: [u8; ORDER_KEY],
    /// The earliest live timers, in order: (order key, order value); see the module docs.
    ahead: VecDeque<([u8; ORDER_KEY], Vec<u8>)>,
    index_key: Vec<u8>,
    _types: PhantomData<fn() -> (K, N)>,
}

impl<K: Key, N: Namespace> RocksTimerQueue<K, N> {
    /// The queue of `domain` of the timer service `service`, creating its column families
    /// with `options()`; `first_kg` is the subtask's first key group.
    pub(crate) fn create(
        db: &Rc<Db>,
        service: &str,
        domain: TimeDomain,
        first_kg: usize,
        options: impl Fn() -> rocksdb::Options,
    ) -> Result<Self> {
        let domain_name = match domain {
            TimeDomain::EventTime => "event",
            TimeDomain::ProcessingTime => "processing",
        };
        let order_cf = format!("timers:{service}:{domain_name}:order");
        let index_cf = format!("timers:{service}:{domain_name}:index");
        // The state column families' options, memtable bloom filter included: most
        // registrations look up a timer that does not exist yet.
        db.create_cf(&order_cf, options())?;
        db.create_cf(&index_cf, options())?;
        Ok(RocksTimerQueue {
            db: Rc::clone(db),
            service: service.into(),
            order_cf,
            index_cf,
            first_kg,
            next_sequence: 0,
            len: 0,
            floor: [0; ORDER_KEY],
            ahead: VecDeque::new(),
            index_key: Vec::new(),
            _types: PhantomData,
        })
    }

    /// Adds `timer` in the key group at `offset`; `false` if it was there already.
    pub(crate) fn add(&mut self, offset: usize, timer: &Timer<K, N>) -> Result<bool> {
        let kg = self.key_group(offset)?;
        self.build_index_key(kg, &timer.key, &timer.namespace, timer.timestamp)?;
        if self.sequence_of(kg)?.is_some() {
            return Ok(false);
        }
        self.insert_built(kg, timer.timestamp)?;
        Ok(true)
    }

    /// Adds `timer`, which the caller knows is not registered, to the key group at `offset`
    /// without the read that [`add`](Self::add) makes to find it (see
    /// `TimerService::register_new_timer`).
    pub(crate) fn add_new(&mut self, offset: usize, timer: &Timer<K, N>) -> Result<()> {
        let kg = self.key_group(offset)?;
        self.build_index_key(kg, &timer.key, &timer.namespace, timer.timestamp)?;
        self.insert_built(kg, timer.timestamp)
    }

    /// Writes the timer whose index key was just built, at `timestamp`, to both column
    /// families.
    fn insert_built(&mut self, kg: KeyGroup, timestamp: u64) -> Result<()> {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        let order_key = order_key(timestamp, sequence);
        let mut batch = WriteBatch::default();
        batch.put_cf(&self.db.cf(&self.order_cf)?, order_key, self.target());
        batch.put_cf(
            &self.db.cf(&self.index_cf)?,
            &self.index_key,
            sequence.to_be_bytes(),
        );
        self.write(kg, batch)?;
        self.len += 1;
        if order_key < self.floor {
            self.floor = order_key;
        }
        // Keep the read-ahead a prefix of the live timers.
        if self.ahead.back().is_some_and(|(last, _)| order_key < *last) {
            let at = self.ahead.partition_point(|(key, _)| *key < order_key);
            self.ahead.insert(at, (order_key, self.target().to_vec()));
            self.ahead.truncate(2 * READ_AHEAD);
        }
        Ok(())
    }

    /// Removes the timer (`key`, `namespace`, `timestamp`) of the key group at `offset`;
    /// whether it existed.
    pub(crate) fn remove(
        &mut self,
        offset: usize,
        key: &K,
        namespace: &N,
        timestamp: u64,
    ) -> Result<bool> {
        let kg = self.key_group(offset)?;
        self.build_index_key(kg, key, namespace, timestamp)?;
        let Some(sequence) = self.sequence_of(kg)? else {
            return Ok(false);
        };
        let mut batch = WriteBatch::default();
        let order_key = order_key(timestamp, sequence);
        batch.delete_cf(&self.db.cf(&self.order_cf)?, order_key);
        batch.delete_cf(&self.db.cf(&self.index_cf)?, &self.index_key);
        self.write(kg, batch)?;
        self.len -= 1;
        if let Some(at) = self.ahead.iter().position(|(key, _)| *key == order_key) {
            self.ahead.remove(at);
        }
        Ok(true)
    }

    /// The earliest timestamp of any timer.
    pub(crate) fn peek_timestamp(&mut self) -> Result<Option<u64>> {
        if self.len == 0 {
            return Ok(None);
        }
        if self.ahead.is_empty() {
            self.read_ahead()?;
        }
        self.ahead
            .front()
            .map(|(key, _)| timestamp_of(key))
            .transpose()
    }

    /// Removes and returns the earliest timer if it is due at `time`, with its key group's
    /// offset.
    pub(crate) fn poll(&mut self, time: u64) -> Result<Option<(usize, Timer<K, N>)>> {
        match self.peek_timestamp()? {
            Some(head) if head <= time => {}
            _ => return Ok(None),
        }
        let Some((order, target)) = self.ahead.pop_front() else {
            return Ok(None);
        };
        let timestamp = timestamp_of(&order)?;
        let (kg, key, namespace) = self.decode_target(&target)?;
        self.index_key.clear();
        self.index_key.extend_from_slice(&target);
        self.index_key.extend_from_slice(&timestamp.to_be_bytes());
        let mut batch = WriteBatch::default();
        batch.delete_cf(&self.db.cf(&self.order_cf)?, order);
        batch.delete_cf(&self.db.cf(&self.index_cf)?, &self.index_key);
        self.write(kg, batch)?;
        self.len -= 1;
        // Everything below the polled key is gone: the next seek starts after it.
        self.floor = successor(order);
        let offset = usize::from(kg) - self.first_kg;
        Ok(Some((
            offset,
            Timer {
                timestamp,
                key,
                namespace,
            },
        )))
    }

    /// The number of timers.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The timers of the key group at `offset`, in the order of their registration.
    pub(crate) fn timers_in_group(&self, offset: usize) -> Result<Vec<Timer<K, N>>> {
        let kg = self.key_group(offset)?;
        self.group_entries(kg)?
            .into_iter()
            .map(|entry| {
                let timestamp = timestamp_of(entry.timestamp())?;
                let key = postcard::from_bytes(entry.key_bytes())
                    .map_err(|e| decode_error(&self.service, kg, "timer key", e))?;
                let namespace = postcard::from_bytes(entry.namespace_bytes())
                    .map_err(|e| decode_error(&self.service, kg, "timer namespace", e))?;
                Ok(Timer {
                    timestamp,
                    key,
                    namespace,
                })
            })
            .collect()
    }

    /// Writes the timers of the key group at `offset` into a snapshot block, in the order of
    /// their registration (the key and namespace bytes are copied, not decoded).
    pub(crate) fn snapshot_group(
        &self,
        offset: usize,
        domain: TimeDomain,
        w: &mut EntryWriter,
    ) -> std::result::Result<(), SnapshotError> {
        let kg = self
            .key_group(offset)
            .map_err(|e| SnapshotError(e.to_string()))?;
        let entries = self
            .group_entries(kg)
            .map_err(|e| SnapshotError(e.to_string()))?;
        for entry in entries {
            let timestamp =
                timestamp_of(entry.timestamp()).map_err(|e| SnapshotError(e.to_string()))?;
            w.timer(
                domain,
                entry.key_bytes(),
                entry.namespace_bytes(),
                timestamp,
            );
        }
        Ok(())
    }

    /// The index entries of key group `kg`, in the order of registration.
    fn group_entries(&self, kg: KeyGroup) -> Result<Vec<IndexEntry>> {
        let cf = self.db.cf(&self.index_cf)?;
        let mut read = ReadOptions::default();
        let start = kg.to_be_bytes();
        read.set_iterate_lower_bound(start.to_vec());
        if let Some(end) = kg.checked_add(1) {
            read.set_iterate_upper_bound(end.to_be_bytes().to_vec());
        }
        let mut iter = self.db.rdb.raw_iterator_cf_opt(&cf, read);
        iter.seek_to_first();
        let mut entries = Vec::new();
        while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
            let corrupt = |what: &str| decode_error(&self.service, kg, what, "wrong length");
            let body = key
                .get(..key.len().saturating_sub(TIMESTAMP))
                .ok_or_else(|| corrupt("timer index key"))?;
            let (key_end, ns_end) =
                split_key::<K, N>(body).ok_or_else(|| corrupt("timer key and namespace"))?;
            if ns_end != body.len() {
                return Err(corrupt("timer index key"));
            }
            let sequence = <[u8; 8]>::try_from(value)
                .map(u64::from_be_bytes)
                .map_err(|_| corrupt("timer sequence"))?;
            entries.push(IndexEntry {
                sequence,
                key: key.to_vec(),
                key_end,
                ns_end,
            });
            iter.next();
        }
        iter.status()
            .map_err(|e| rocks_error(&self.service, kg, e))?;
        entries.sort_unstable_by_key(|entry| entry.sequence);
        Ok(entries)
    }

    /// Reads the next [`READ_AHEAD`] timers of the order column family, from the floor.
    fn read_ahead(&mut self) -> Result<()> {
        let cf = self.db.cf(&self.order_cf)?;
        let mut read = ReadOptions::default();
        read.set_iterate_lower_bound(self.floor.to_vec());
        let mut iter = self.db.rdb.raw_iterator_cf_opt(&cf, read);
        iter.seek_to_first();
        while self.ahead.len() < READ_AHEAD {
            let (Some(key), Some(value)) = (iter.key(), iter.value()) else {
                break;
            };
            let key = <[u8; ORDER_KEY]>::try_from(key)
                .map_err(|_| decode_error(&self.service, 0, "timer order key", "wrong length"))?;
            self.ahead.push_back((key, value.to_vec()));
            iter.next();
        }
        iter.status()
            .map_err(|e| rocks_error(&self.service, 0, e))?;
        if self.ahead.is_empty() {
            return Err(EddyError::Internal(format!(
                "timer service \"{}\": {} timers counted, none stored",
                self.service, self.len
            )));
        }
        Ok(())
    }

    /// Decodes an order value: key group, key and namespace.
    fn decode_target(&self, target: &[u8]) -> Result<(KeyGroup, K, N)> {
        let kg = target
            .get(..2)
            .map_or(0, |b| KeyGroup::from_be_bytes([b[0], b[1]]));
        let corrupt = |e: &dyn std::fmt::Display| decode_error(&self.service, kg, "timer", e);
        let rest = target.get(2..).ok_or_else(|| corrupt(&"too short"))?;
        let (key, rest) = postcard::take_from_bytes::<K>(rest).map_err(|e| corrupt(&e))?;
        let namespace = postcard::from_bytes::<N>(rest).map_err(|e| corrupt(&e))?;
        if self.first_kg > usize::from(kg) {
            return Err(corrupt(&"key group outside the subtask's range"));
        }
        Ok((kg, key, namespace))
    }

    /// The sequence of the timer whose index key is in `index_key`, if it exists.
    fn sequence_of(&self, kg: KeyGroup) -> Result<Option<u64>> {
        let cf = self.db.cf(&self.index_cf)?;
        let found = self
            .db
            .rdb
            .get_pinned_cf_opt(&cf, &self.index_key, &self.db.read)
            .map_err(|e| rocks_error(&self.service, kg, e))?;
        found
            .map(|bytes| {
                <[u8; 8]>::try_from(&*bytes)
                    .map(u64::from_be_bytes)
                    .map_err(|_| decode_error(&self.service, kg, "timer sequence", "wrong length"))
            })
            .transpose()
    }

    /// Builds the index key of (`key`, `namespace`, `timestamp`) in key group `kg`.
    fn build_index_key(&mut self, kg: KeyGroup, key: &K, namespace: &N, ts: u64) -> Result<()> {
        start_key(&mut self.index_key, kg);
        encode_into(key, &mut self.index_key)
            .and_then(|()| encode_into(namespace, &mut self.index_key))
            .map_err(|e| {
                EddyError::state(
                    &*self.service,
                    format!("key group {kg}: cannot encode a timer's key or namespace: {e}"),
                )
            })?;
        self.index_key.extend_from_slice(&ts.to_be_bytes());
        Ok(())
    }

    /// The index key without its timestamp: the order value.
    fn target(&self) -> &[u8] {
        &self.index_key[..self.index_key.len() - TIMESTAMP]
    }

    fn key_group(&self, offset: usize) -> Result<KeyGroup> {
        KeyGroup::try_from(self.first_kg + offset).map_err(|_| {
            EddyError::Internal(format!("timer key group offset {offset} out of range"))
        })
    }

    fn write(&self, kg: KeyGroup, batch: WriteBatch) -> Result<()> {
        self.db
            .write(batch)
            .map_err(|e| rocks_error(&self.service, kg, e))
    }
}

/// One entry of the index column family, with where its key and namespace end.
struct IndexEntry {
    sequence: u64,
    key: Vec<u8>,
    key_end: usize,
    ns_end: usize,
}

impl IndexEntry {
    fn key_bytes(&self) -> &[u8] {
        &self.key[2..self.key_end]
    }

    fn namespace_bytes(&self) -> &[u8] {
        &self.key[self.key_end..self.ns_end]
    }

    fn timestamp(&self) -> &[u8] {
        &self.key[self.ns_end..]
    }
}

fn order_key(timestamp: u64, sequence: u64) -> [u8; ORDER_KEY] {
    let mut key = [0; ORDER_KEY];
    key[..8].copy_from_slice(&timestamp.to_be_bytes());
    key[8..].copy_from_slice(&sequence.to_be_bytes());
    key
}

/// The smallest order key after `key`.
fn successor(key: [u8; ORDER_KEY]) -> [u8; ORDER_KEY] {
    u128::from_be_bytes(key)
        .checked_add(1)
        .map_or(key, u128::to_be_bytes)
}

/// The timestamp at the front of an order key (or the end of an index key's slice).
fn timestamp_of(bytes: &[u8]) -> Result<u64> {
    bytes
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| EddyError::Internal("a stored timer key is too short".into()))
}
