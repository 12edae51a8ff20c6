//! What every RocksDB state handle shares: key encoding into a reused buffer, the column
//! family, point reads and writes with the TTL rules, and prefix iteration.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use eddy_core::{EddyError, Key, KeyGroup, Result};
use rocksdb::{BoundColumnFamily, DBRawIteratorWithThreadMode, ReadOptions};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::codec::{
    decode_exact, encode_into, prefix_successor, set_ttl_timestamp, start_key, TTL_HEADER,
};
use super::db::{decode_error, rocks_error, Db, Rdb};
use super::ttl::TtlRules;
use crate::key_context::KeyContext;
use crate::namespace::{Namespace, NamespaceCell};

/// A raw RocksDB iterator over the instance of a backend.
pub(crate) type RawIter<'a> = DBRawIteratorWithThreadMode<'a, Rdb>;

/// A failure found where it could not be returned (inside an iterator), reported by the next
/// access to the state.
pub(crate) type FailureSlot = Rc<RefCell<Option<EddyError>>>;

/// The part of every handle that knows the current key, namespace and column family.
pub(crate) struct StateCore<K, N> {
    pub(crate) name: Rc<str>,
    cf_name: Rc<str>,
    context: Rc<KeyContext<K>>,
    pub(crate) db: Rc<Db>,
    namespace: Rc<NamespaceCell<N>>,
    /// Reused for every key built; taken out while in use, so a re-entrant use (none is
    /// expected) would allocate instead of failing.
    key_buf: Cell<Vec<u8>>,
    /// Reused for every value encoded, likewise.
    value_buf: Cell<Vec<u8>>,
    failure: FailureSlot,
}

impl<K: Key, N: Namespace> StateCore<K, N> {
    pub(crate) fn new(
        name: &str,
        cf_name: &str,
        context: &Rc<KeyContext<K>>,
        db: &Rc<Db>,
        namespace: Rc<NamespaceCell<N>>,
        failure: FailureSlot,
    ) -> Self {
        StateCore {
            name: name.into(),
            cf_name: cf_name.into(),
            context: Rc::clone(context),
            db: Rc::clone(db),
            namespace,
            key_buf: Cell::new(Vec::with_capacity(64)),
            value_buf: Cell::new(Vec::with_capacity(64)),
            failure,
        }
    }

    /// Builds `[key group][key][namespace]` for the current key and `namespace` (the current
    /// one if `None`) and calls `f` with it and the key group; `f` may append to it.
    #[inline]
    pub(crate) fn with_key<R>(
        &self,
        namespace: Option<&N>,
        f: impl FnOnce(&mut Vec<u8>, KeyGroup) -> Result<R>,
    ) -> Result<R> {
        if let Some(failure) = self.failure.borrow_mut().take() {
            return Err(failure);
        }
        let mut buf = self.key_buf.take();
        let result = self
            .encode_prefix(&mut buf, namespace)
            .and_then(|kg| f(&mut buf, kg));
        self.key_buf.set(buf);
        result
    }

    fn encode_prefix(&self, buf: &mut Vec<u8>, namespace: Option<&N>) -> Result<KeyGroup> {
        let kg = self.context.current_key_group();
        self.context
            .with_key(&self.name, |key, _| {
                start_key(buf, kg);
                encode_into(key, buf)
            })?
            .map_err(|e| self.encode_error(kg, "key", e))?;
        match namespace {
            Some(ns) => encode_into(ns, buf),
            None => self.namespace.with(&self.name, |ns| encode_into(ns, buf))?,
        }
        .map_err(|e| self.encode_error(kg, "namespace", e))?;
        Ok(kg)
    }

    /// Encodes a value with `write` into the reused value buffer and calls `f` with it.
    #[inline]
    pub(crate) fn with_value<R>(
        &self,
        write: impl FnOnce(&mut Vec<u8>) -> postcard::Result<()>,
        kg: KeyGroup,
        f: impl FnOnce(&[u8]) -> Result<R>,
    ) -> Result<R> {
        let mut buf = self.value_buf.take();
        buf.clear();
        let result = match write(&mut buf) {
            Ok(()) => f(&buf),
            Err(e) => Err(self.encode_error(kg, "value", e)),
        };
        self.value_buf.set(buf);
        result
    }

    /// Records a failure found inside an iterator; the next access returns it.
    pub(crate) fn fail_later(&self, error: EddyError) {
        *self.failure.borrow_mut() = Some(error);
    }

    #[inline]
    pub(crate) fn cf(&self) -> Result<Arc<BoundColumnFamily<'_>>> {
        self.db.cf(&self.cf_name)
    }

    pub(crate) fn rocks(&self, kg: KeyGroup, e: rocksdb::Error) -> EddyError {
        rocks_error(&self.name, kg, e)
    }

    pub(crate) fn corrupt(&self, kg: KeyGroup, what: &str, e: impl std::fmt::Display) -> EddyError {
        decode_error(&self.name, kg, what, e)
    }

    fn encode_error(&self, kg: KeyGroup, what: &str, e: postcard::Error) -> EddyError {
        EddyError::state(
            &*self.name,
            format!("key group {kg}: cannot encode the {what}: {e}"),
        )
    }

    /// Decodes a stored value (postcard, exactly one `T`).
    #[inline]
    pub(crate) fn decode<T: DeserializeOwned>(&self, kg: KeyGroup, bytes: &[u8]) -> Result<T> {
        decode_exact(bytes).map_err(|e| self.corrupt(kg, "value", e))
    }

    #[inline]
    pub(crate) fn put(&self, kg: KeyGroup, key: &[u8], value: &[u8]) -> Result<()> {
        let cf = self.cf()?;
        self.db
            .rdb
            .put_cf_opt(&cf, key, value, &self.db.write)
            .map_err(|e| self.rocks(kg, e))
    }

    #[inline]
    pub(crate) fn merge(&self, kg: KeyGroup, key: &[u8], value: &[u8]) -> Result<()> {
        let cf = self.cf()?;
        self.db
            .rdb
            .merge_cf_opt(&cf, key, value, &self.db.write)
            .map_err(|e| self.rocks(kg, e))
    }

    #[inline]
    pub(crate) fn delete(&self, kg: KeyGroup, key: &[u8]) -> Result<()> {
        let cf = self.cf()?;
        self.db
            .rdb
            .delete_cf_opt(&cf, key, &self.db.write)
            .map_err(|e| self.rocks(kg, e))
    }

    /// Deletes every key starting with `prefix` with one range tombstone: no read.
    pub(crate) fn delete_prefix(&self, kg: KeyGroup, prefix: &[u8]) -> Result<()> {
        let cf = self.cf()?;
        let end = self.successor(kg, prefix)?;
        self.db
            .rdb
            .delete_range_cf_opt(&cf, prefix, &end, &self.db.write)
            .map_err(|e| self.rocks(kg, e))
    }

    /// The upper bound of the keys starting with `prefix`.
    pub(crate) fn successor(&self, kg: KeyGroup, prefix: &[u8]) -> Result<Vec<u8>> {
        // A prefix starts with a key group below 32768, so its first byte is below 0xFF.
        prefix_successor(prefix).ok_or_else(|| {
            EddyError::Internal(format!(
                "state \"{}\", key group {kg}: a key prefix of only 0xFF bytes",
                self.name
            ))
        })
    }

    /// A raw iterator over exactly the keys starting with `prefix`, positioned on the first.
    pub(crate) fn prefix_iter(&self, kg: KeyGroup, prefix: &[u8]) -> Result<RawIter<'_>> {
        let cf = self.cf()?;
        let mut read = ReadOptions::default();
        read.set_iterate_lower_bound(prefix.to_vec());
        read.set_iterate_upper_bound(self.successor(kg, prefix)?);
        let mut iter = self.db.rdb.raw_iterator_cf_opt(&cf, read);
        iter.seek(prefix);
        Ok(iter)
    }

    /// The error that stopped `iter`, if it stopped on one rather than at its end.
    pub(crate) fn check_end(&self, kg: KeyGroup, iter: &RawIter<'_>) -> Result<()> {
        iter.status().map_err(|e| self.rocks(kg, e))
    }

    /// Reads and decodes the value under `key`: `(value, expired)`, with no TTL side effect.
    /// `expired` is always `false` without TTL.
    pub(crate) fn load<T: DeserializeOwned>(
        &self,
        ttl: Option<&TtlRules>,
        kg: KeyGroup,
        key: &[u8],
        now: u64,
    ) -> Result<Option<(T, bool)>> {
        let cf = self.cf()?;
        let stored = self
            .db
            .rdb
            .get_pinned_cf_opt(&cf, key, &self.db.read)
            .map_err(|e| self.rocks(kg, e))?;
        let Some(bytes) = stored else {
            return Ok(None);
        };
        match ttl {
            None => Ok(Some((self.decode(kg, &bytes)?, false))),
            Some(rules) => {
                let ts = rules.header(&self.name, kg, &bytes)?;
                let value = self.decode(kg, &bytes[TTL_HEADER..])?;
                Ok(Some((value, rules.expired(ts, now))))
            }
        }
    }

    /// Reads the value under `key` with Flink's TTL rules: an expired value is deleted
    /// (cleanup on read) and returned only under `ReturnExpiredIfNotCleanedUp`; a live one is
    /// refreshed under `OnReadAndWrite` (by rewriting its 8-byte header, not re-encoding it).
    #[inline]
    pub(crate) fn read<T: DeserializeOwned>(
        &self,
        ttl: Option<&TtlRules>,
        kg: KeyGroup,
        key: &[u8],
    ) -> Result<Option<T>> {
        let Some(rules) = ttl else {
            return Ok(self.load(None, kg, key, 0)?.map(|(value, _)| value));
        };
        let now = rules.now();
        let cf = self.cf()?;
        let stored = self
            .db
            .rdb
            .get_pinned_cf_opt(&cf, key, &self.db.read)
            .map_err(|e| self.rocks(kg, e))?;
        let Some(bytes) = stored else {
            return Ok(None);
        };
        let ts = rules.header(&self.name, kg, &bytes)?;
        if !rules.expired(ts, now) {
            let value = self.decode(kg, &bytes[TTL_HEADER..])?;
            if rules.update_on_read {
                self.with_value(
                    |buf| {
                        buf.extend_from_slice(&bytes);
                        set_ttl_timestamp(buf, now);
                        Ok(())
                    },
                    kg,
                    |refreshed| self.put(kg, key, refreshed),
                )?;
            }
            return Ok(Some(value));
        }
        let value = match rules.return_expired {
            true => Some(self.decode(kg, &bytes[TTL_HEADER..])?),
            false => None,
        };
        drop(bytes);
        self.delete(kg, key)?;
        Ok(value)
    }

    /// Stores `value` under `key`, behind a TTL header stamped `now` for a TTL state.
    #[inline]
    pub(crate) fn store<T: Serialize>(
        &self,
        ttl: Option<&TtlRules>,
        kg: KeyGroup,
        key: &[u8],
        value: &T,
        now: u64,
    ) -> Result<()> {
        self.with_value(
            |buf| {
                if ttl.is_some() {
                    buf.extend_from_slice(&now.to_be_bytes());
                }
                encode_into(value, buf)
            },
            kg,
            |bytes| self.put(kg, key, bytes),
        )
    }
}

/// The current time of `ttl`, or 0 without TTL (never looked at then).
#[inline]
pub(crate) fn now_or_zero(ttl: Option<&TtlRules>) -> u64 {
    ttl.map_or(0, TtlRules::now)
}
