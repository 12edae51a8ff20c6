//! Map state on RocksDB: every entry is its own RocksDB key, `[kg][key][ns][user key]`.

use std::marker::PhantomData;
use std::rc::Rc;

use eddy_core::{Key, KeyGroup, Result, StateValue};
use rocksdb::WriteBatch;

use super::cache::{read_through, Cached, SharedCache};
use super::codec::{decode_exact, encode_into, set_ttl_timestamp, TTL_HEADER};
use super::core::{now_or_zero, RawIter, StateCore};
use super::ttl::TtlRules;
use crate::handle::{MapStateAccess, StateIter};
use crate::namespace::Namespace;

/// Entries decoded per step of a map iterator: errors in the first batch are returned by the
/// call that creates the iterator, and memory stays bounded for maps of any size.
const BATCH: usize = 1024;

/// A map per (key, namespace).
pub(crate) struct RocksMap<K, N, UK, UV> {
    pub(crate) core: StateCore<K, N>,
    pub(crate) ttl: Option<TtlRules>,
    /// The state's object cache, if it has one (never with TTL).
    pub(crate) cache: Option<Rc<SharedCache<UV>>>,
    pub(crate) _type: PhantomData<fn() -> (UK, UV)>,
}

/// Decodes one entry (user-key bytes, value bytes without TTL header) into an item.
type Project<R> = fn(&[u8], &[u8]) -> postcard::Result<R>;

impl<K: Key, N: Namespace, UK: Key, UV: StateValue> RocksMap<K, N, UK, UV> {
    /// Calls `f` with the key of `user_key`'s entry in the current key's map, its key group
    /// and the length of its `[kg][key][ns]` prefix.
    #[inline]
    fn with_entry<R>(
        &self,
        user_key: &UK,
        f: impl FnOnce(&[u8], KeyGroup, usize) -> Result<R>,
    ) -> Result<R> {
        self.core.with_key(None, |key, kg| {
            let prefix_len = key.len();
            encode_into(user_key, key).map_err(|e| self.core.corrupt(kg, "user key", e))?;
            f(key, kg, prefix_len)
        })
    }

    /// Writes the cached dirty entries under `prefix` to RocksDB, before RocksDB is read
    /// there.
    fn flush_cached(&self, prefix: &[u8]) -> Result<()> {
        match &self.cache {
            Some(cache) => cache.borrow_mut().flush_group(prefix),
            None => Ok(()),
        }
    }

    /// An iterator over the current key's entries, projected by `project`.
    fn iterate<R: 'static>(&self, project: Project<R>) -> Result<StateIter<'_, R>> {
        if let Some(rules) = &self.ttl {
            return self.collect_ttl(rules, project);
        }
        let (iter, kg, prefix_len) = self.core.with_key(None, |prefix, kg| {
            self.flush_cached(prefix)?;
            Ok((self.core.prefix_iter(kg, prefix)?, kg, prefix.len()))
        })?;
        let mut entries = EntryIter {
            core: &self.core,
            iter,
            kg,
            prefix_len,
            project,
            current: Vec::new().into_iter(),
        };
        entries.load()?;
        Ok(Box::new(entries))
    }

    /// Iteration of a TTL map, eager as on the heap: expired entries are removed (and
    /// returned only under `ReturnExpiredIfNotCleanedUp`), live ones refreshed under
    /// `OnReadAndWrite`, in one write batch.
    fn collect_ttl<R: 'static>(
        &self,
        rules: &TtlRules,
        project: Project<R>,
    ) -> Result<StateIter<'_, R>> {
        let now = rules.now();
        let items = self.core.with_key(None, |prefix, kg| {
            let mut iter = self.core.prefix_iter(kg, prefix)?;
            let (mut items, mut batch) = (Vec::new(), WriteBatch::default());
            let cf = self.core.cf()?;
            while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
                let ts = rules.header(&self.core.name, kg, value)?;
                let expired = rules.expired(ts, now);
                if !expired || rules.return_expired {
                    let item = project(&key[prefix.len()..], &value[TTL_HEADER..])
                        .map_err(|e| self.core.corrupt(kg, "map entry", e))?;
                    items.push(item);
                }
                if expired {
                    batch.delete_cf(&cf, key);
                } else if rules.update_on_read {
                    let mut refreshed = value.to_vec();
                    set_ttl_timestamp(&mut refreshed, now);
                    batch.put_cf(&cf, key, refreshed);
                }
                iter.next();
            }
            self.core.check_end(kg, &iter)?;
            if !batch.is_empty() {
                self.core
                    .db
                    .write(batch)
                    .map_err(|e| self.core.rocks(kg, e))?;
            }
            Ok(items)
        })?;
        Ok(Box::new(items.into_iter()))
    }
}

impl<K: Key, N: Namespace, UK: Key, UV: StateValue> MapStateAccess<UK, UV>
    for RocksMap<K, N, UK, UV>
{
    #[inline]
    fn get(&self, user_key: &UK) -> Result<Option<UV>> {
        self.with_entry(user_key, |key, kg, prefix_len| match &self.cache {
            Some(cache) => read_through(cache, &self.core, kg, key, prefix_len),
            None => self.core.read(self.ttl.as_ref(), kg, key),
        })
    }

    #[inline]
    fn put(&self, user_key: UK, value: UV) -> Result<()> {
        let now = now_or_zero(self.ttl.as_ref());
        self.with_entry(&user_key, |key, kg, prefix_len| match &self.cache {
            Some(cache) => {
                let (prefix, user_key) = key.split_at(prefix_len);
                cache
                    .borrow_mut()
                    .write(prefix, user_key, Cached::Present(value))
            }
            None => self.core.store(self.ttl.as_ref(), kg, key, &value, now),
        })
    }

    fn put_all(&self, entries: Vec<(UK, UV)>) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        if self.cache.is_some() {
            return entries
                .into_iter()
                .try_for_each(|(user_key, value)| self.put(user_key, value));
        }
        let now = now_or_zero(self.ttl.as_ref());
        let ttl = self.ttl.is_some();
        self.core.with_key(None, |prefix, kg| {
            let cf = self.core.cf()?;
            let mut batch = WriteBatch::default();
            let (mut key, mut value) = (prefix.clone(), Vec::new());
            for (user_key, user_value) in &entries {
                key.truncate(prefix.len());
                value.clear();
                if ttl {
                    value.extend_from_slice(&now.to_be_bytes());
                }
                encode_into(user_key, &mut key)
                    .and_then(|()| encode_into(user_value, &mut value))
                    .map_err(|e| self.core.corrupt(kg, "map entry", e))?;
                batch.put_cf(&cf, &key, &value);
            }
            self.core
                .db
                .write(batch)
                .map_err(|e| self.core.rocks(kg, e))
        })
    }

    fn remove(&self, user_key: &UK) -> Result<()> {
        self.with_entry(user_key, |key, kg, prefix_len| match &self.cache {
            Some(cache) => {
                let (prefix, user_key) = key.split_at(prefix_len);
                cache.borrow_mut().write(prefix, user_key, Cached::Absent)
            }
            None => self.core.delete(kg, key),
        })
    }

    /// Whether `get` would return a value (with its TTL cleanup and refresh).
    fn contains(&self, user_key: &UK) -> Result<bool> {
        if self.ttl.is_some() || self.cache.is_some() {
            return Ok(self.get(user_key)?.is_some());
        }
        self.with_entry(user_key, |key, kg, _| {
            let cf = self.core.cf()?;
            let found = self
                .core
                .db
                .rdb
                .get_pinned_cf_opt(&cf, key, &self.core.db.read)
                .map_err(|e| self.core.rocks(kg, e))?;
            Ok(found.is_some())
        })
    }

    fn entries(&self) -> Result<StateIter<'_, (UK, UV)>> {
        self.iterate(|k, v| Ok((decode_exact(k)?, decode_exact(v)?)))
    }

    fn keys(&self) -> Result<StateIter<'_, UK>> {
        self.iterate(|k, _| decode_exact(k))
    }

    fn values(&self) -> Result<StateIter<'_, UV>> {
        self.iterate(|_, v| decode_exact(v))
    }

    /// One seek; with TTL, reads until the first entry `entries` would return (no cleanup,
    /// no refresh, as on the heap).
    fn is_empty(&self) -> Result<bool> {
        let ttl = self.ttl.as_ref();
        let now = now_or_zero(ttl);
        self.core.with_key(None, |prefix, kg| {
            if let Some(cache) = &self.cache {
                let mut cache = cache.borrow_mut();
                if let Some(empty) = cache.known_empty(prefix) {
                    return Ok(empty);
                }
                cache.flush_group(prefix)?;
            }
            let mut iter = self.core.prefix_iter(kg, prefix)?;
            while let Some(value) = iter.value() {
                let Some(rules) = ttl else { return Ok(false) };
                let ts = rules.header(&self.core.name, kg, value)?;
                if rules.return_expired || !rules.expired(ts, now) {
                    return Ok(false);
                }
                iter.next();
            }
            self.core.check_end(kg, &iter)?;
            Ok(true)
        })
    }

    /// One range deletion: no read.
    fn clear(&self) -> Result<()> {
        self.core.with_key(None, |prefix, kg| {
            if let Some(cache) = &self.cache {
                cache.borrow_mut().drop_group(prefix);
            }
            self.core.delete_prefix(kg, prefix)
        })
    }
}

/// Iterates a map's entries from a RocksDB iterator, which reads a consistent view (the
/// map may be modified meanwhile, as on the heap), decoding `BATCH` entries at a time.
struct EntryIter<'a, K, N, R> {
    core: &'a StateCore<K, N>,
    iter: RawIter<'a>,
    kg: KeyGroup,
    prefix_len: usize,
    project: Project<R>,
    current: std::vec::IntoIter<R>,
}

impl<K: Key, N: Namespace, R> EntryIter<'_, K, N, R> {
    /// Decodes the next batch into `current`; `false` at the end of the map.
    fn load(&mut self) -> Result<bool> {
        let mut items = Vec::new();
        while let (Some(key), Some(value)) = (self.iter.key(), self.iter.value()) {
            let user_key = key.get(self.prefix_len..).unwrap_or_default();
            let item = (self.project)(user_key, value)
                .map_err(|e| self.core.corrupt(self.kg, "map entry", e))?;
            items.push(item);
            self.iter.next();
            if items.len() == BATCH {
                break;
            }
        }
        if items.is_empty() {
            self.core.check_end(self.kg, &self.iter)?;
            return Ok(false);
        }
        self.current = items.into_iter();
        Ok(true)
    }
}

impl<K: Key, N: Namespace, R> Iterator for EntryIter<'_, K, N, R> {
    type Item = R;

    fn next(&mut self) -> Option<R> {
        loop {
            if let Some(item) = self.current.next() {
                return Some(item);
            }
            match self.load() {
                Ok(true) => continue,
                Ok(false) => return None,
                Err(error) => {
                    // An iterator cannot return an error: the next access to the state does.
                    self.core.fail_later(error);
                    return None;
                }
            }
        }
    }
}
