//! List state on RocksDB: appends are merges that never read, elements are length-prefixed,
//! and a list is spread over chunks so that no RocksDB value outgrows a threshold.

use std::cell::Cell;
use std::marker::PhantomData;
use std::rc::Rc;

use eddy_core::{EddyError, Key, KeyGroup, Result, StateValue};
use rocksdb::{AsColumnFamilyRef, MergeOperands, WriteBatch};

use super::codec::{
    encode_into, push_element, set_ttl_timestamp, Elements, CHUNK_SUFFIX, TTL_HEADER,
};
use super::core::{now_or_zero, RawIter, StateCore};
use super::ttl::TtlRules;
use crate::handle::{ListStateAccess, StateIter};
use crate::namespace::{MergeNamespaces, Namespace};

/// The merge operator of list column families: appends the operands' bytes. Elements are
/// length-prefixed, so concatenated chunks are a valid chunk; the operator never fails and
/// never needs to know the element type.
pub(crate) fn append_merge(
    _key: &[u8],
    existing: Option<&[u8]>,
    operands: &MergeOperands,
) -> Option<Vec<u8>> {
    let len = existing.map_or(0, <[u8]>::len) + operands.iter().map(<[u8]>::len).sum::<usize>();
    let mut merged = Vec::with_capacity(len);
    if let Some(existing) = existing {
        merged.extend_from_slice(existing);
    }
    for operand in operands {
        merged.extend_from_slice(operand);
    }
    Some(merged)
}

/// What every handle of one list state shares: where appends go, and the live iterators.
///
/// Chunks are numbered by *epoch*: the state counts the bytes appended to it, over all keys,
/// and starts a new epoch whenever the current one would exceed the chunk threshold. Every
/// append goes to the chunk `[prefix][epoch]`, so a chunk never holds more than the threshold
/// (unless one element alone does), `add` needs no read to find its chunk, and chunks sort
/// in insertion order. A small list lives in one or a few chunks.
#[derive(Debug)]
pub(crate) struct ListShared {
    threshold: usize,
    epoch: Cell<u64>,
    filled: Cell<usize>,
    iterators: Rc<Cell<usize>>,
}

impl ListShared {
    pub(crate) fn new(threshold: usize) -> Self {
        ListShared {
            threshold,
            epoch: Cell::new(0),
            filled: Cell::new(0),
            iterators: Rc::default(),
        }
    }

    /// The epoch (chunk) an element of `len` framed bytes is appended to.
    #[inline]
    fn place(&self, len: usize) -> u64 {
        let filled = self.filled.get();
        if filled > 0 && filled.saturating_add(len) > self.threshold {
            self.epoch.set(self.epoch.get() + 1);
            self.filled.set(len);
        } else {
            self.filled.set(filled + len);
        }
        self.epoch.get()
    }
}

/// Counts an iterator as alive while it exists (the list refuses writes meanwhile).
struct IterGuard(Rc<Cell<usize>>);

impl IterGuard {
    fn new(count: &Rc<Cell<usize>>) -> Self {
        count.set(count.get() + 1);
        IterGuard(Rc::clone(count))
    }
}

impl Drop for IterGuard {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// A list per (key, namespace): chunks `[kg][key][ns][epoch]` -> framed elements.
pub(crate) struct RocksList<K, N, T> {
    pub(crate) core: StateCore<K, N>,
    pub(crate) shared: Rc<ListShared>,
    pub(crate) ttl: Option<TtlRules>,
    pub(crate) _type: PhantomData<fn() -> T>,
}

impl<K: Key, N: Namespace, T: StateValue> RocksList<K, N, T> {
    fn check_writable(&self) -> Result<()> {
        if self.shared.iterators.get() > 0 {
            return Err(EddyError::state(
                &*self.core.name,
                "cannot modify the state while an iterator over it is alive",
            ));
        }
        Ok(())
    }

    /// Appends one framed element (with its TTL header stamped `now` for a TTL state).
    #[inline]
    fn encode_element(&self, buf: &mut Vec<u8>, value: &T, now: u64) -> postcard::Result<()> {
        let ttl = self.ttl.is_some();
        push_element(buf, |b| {
            if ttl {
                b.extend_from_slice(&now.to_be_bytes());
            }
            encode_into(value, b)
        })
        .map(drop)
    }

    /// Adds merges of the framed `elements` to `batch`, split into chunks by epoch.
    fn append_encoded(
        &self,
        prefix: &[u8],
        kg: KeyGroup,
        elements: &[u8],
        batch: &mut WriteBatch,
        cf: &impl AsColumnFamilyRef,
    ) -> Result<()> {
        append_chunks(&self.shared, prefix, elements, batch, cf)
            .map_err(|()| self.core.corrupt(kg, "list element", "broken framing"))
    }

    /// Encodes `values`, then writes them as one batch after `before` (a deletion of the
    /// old list, for `update`).
    fn write_all(
        &self,
        values: &[T],
        before: impl FnOnce(&mut WriteBatch, &[u8], KeyGroup) -> Result<()>,
    ) -> Result<()> {
        let now = now_or_zero(self.ttl.as_ref());
        self.core.with_key(None, |prefix, kg| {
            let encode = |buf: &mut Vec<u8>| {
                values
                    .iter()
                    .try_for_each(|value| self.encode_element(buf, value, now))
            };
            self.core.with_value(encode, kg, |elements| {
                let mut batch = WriteBatch::default();
                before(&mut batch, prefix, kg)?;
                let cf = self.core.cf()?;
                self.append_encoded(prefix, kg, elements, &mut batch, &cf)?;
                self.core
                    .db
                    .write(batch)
                    .map_err(|e| self.core.rocks(kg, e))
            })
        })
    }

    /// A range deletion of every chunk under `prefix`, added to `batch`.
    fn delete_chunks(&self, batch: &mut WriteBatch, prefix: &[u8], kg: KeyGroup) -> Result<()> {
        let end = self.core.successor(kg, prefix)?;
        let cf = self.core.cf()?;
        batch.delete_range_cf(&cf, prefix, end.as_slice());
        Ok(())
    }

    /// The framed elements of every chunk under `prefix`, concatenated.
    fn read_raw(&self, kg: KeyGroup, prefix: &[u8]) -> Result<Vec<u8>> {
        let mut iter = self.core.prefix_iter(kg, prefix)?;
        let mut raw = Vec::new();
        while let Some(chunk) = iter.value() {
            raw.extend_from_slice(chunk);
            iter.next();
        }
        self.core.check_end(kg, &iter)?;
        Ok(raw)
    }

    /// `get` for a TTL list: the whole list is read, expired elements are hidden (or
    /// returned once, under `ReturnExpiredIfNotCleanedUp`) and removed, live ones refreshed
    /// under `OnReadAndWrite`; the list is rewritten only if something changed, and not at
    /// all while another iterator over the state is alive (it then only hides).
    fn get_ttl(&self, rules: &TtlRules) -> Result<StateIter<'_, T>> {
        let guard = IterGuard::new(&self.shared.iterators);
        let now = rules.now();
        let items = self.core.with_key(None, |prefix, kg| {
            let raw = self.read_raw(kg, prefix)?;
            let (mut items, mut kept, mut changed) = (Vec::new(), Vec::new(), false);
            for element in Elements::new(&raw) {
                let payload = element
                    .map_err(|()| self.core.corrupt(kg, "list element", "broken framing"))?;
                let ts = rules.header(&self.core.name, kg, payload)?;
                let expired = rules.expired(ts, now);
                if !expired || rules.return_expired {
                    items.push(self.core.decode::<T>(kg, &payload[TTL_HEADER..])?);
                }
                changed |= expired || rules.update_on_read;
                if !expired {
                    push_element(&mut kept, |b| {
                        let start = b.len();
                        b.extend_from_slice(payload);
                        if rules.update_on_read {
                            set_ttl_timestamp(&mut b[start..], now);
                        }
                        Ok(())
                    })
                    .map_err(|e| self.core.corrupt(kg, "list element", e))?;
                }
            }
            // This iterator's own guard is one of the live iterators.
            if changed && self.shared.iterators.get() == 1 {
                let mut batch = WriteBatch::default();
                self.delete_chunks(&mut batch, prefix, kg)?;
                let cf = self.core.cf()?;
                self.append_encoded(prefix, kg, &kept, &mut batch, &cf)?;
                self.core
                    .db
                    .write(batch)
                    .map_err(|e| self.core.rocks(kg, e))?;
            }
            Ok(items)
        })?;
        Ok(Box::new(Guarded {
            items: items.into_iter(),
            _guard: guard,
        }))
    }
}

/// Adds merges of the framed `elements` to `batch` under `prefix`, split into chunks by the
/// epochs `shared` places them in; `Err` if the framing is broken.
pub(crate) fn append_chunks(
    shared: &ListShared,
    prefix: &[u8],
    elements: &[u8],
    batch: &mut WriteBatch,
    cf: &impl AsColumnFamilyRef,
) -> std::result::Result<(), ()> {
    let mut key = Vec::with_capacity(prefix.len() + CHUNK_SUFFIX);
    let mut walk = Elements::new(elements);
    let (mut start, mut epoch) = (0, None);
    loop {
        let before = walk.rest();
        let Some(element) = walk.next() else { break };
        element?;
        let offset = elements.len() - before;
        let placed = shared.place(before - walk.rest());
        if epoch.is_some_and(|e| e != placed) {
            chunk_key(&mut key, prefix, epoch);
            batch.merge_cf(cf, &key, &elements[start..offset]);
            start = offset;
        }
        epoch = Some(placed);
    }
    if start < elements.len() {
        chunk_key(&mut key, prefix, epoch);
        batch.merge_cf(cf, &key, &elements[start..]);
    }
    Ok(())
}

/// Sets `key` to the chunk key of `epoch` under `prefix`.
fn chunk_key(key: &mut Vec<u8>, prefix: &[u8], epoch: Option<u64>) {
    key.clear();
    key.extend_from_slice(prefix);
    key.extend_from_slice(&epoch.unwrap_or(0).to_be_bytes());
}

impl<K: Key, N: Namespace, T: StateValue> ListStateAccess<T> for RocksList<K, N, T> {
    /// One RocksDB merge of the framed element: no read.
    #[inline]
    fn add(&self, value: T) -> Result<()> {
        self.check_writable()?;
        let now = now_or_zero(self.ttl.as_ref());
        self.core.with_key(None, |key, kg| {
            let encode = |buf: &mut Vec<u8>| self.encode_element(buf, &value, now);
            self.core.with_value(encode, kg, |element| {
                let epoch = self.shared.place(element.len());
                key.extend_from_slice(&epoch.to_be_bytes());
                self.core.merge(kg, key, element)
            })
        })
    }

    fn add_all(&self, values: Vec<T>) -> Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        self.check_writable()?;
        self.write_all(&values, |_, _, _| Ok(()))
    }

    fn get(&self) -> Result<StateIter<'_, T>> {
        if let Some(rules) = &self.ttl {
            return self.get_ttl(rules);
        }
        let guard = IterGuard::new(&self.shared.iterators);
        let (iter, kg) = self.core.with_key(None, |prefix, kg| {
            Ok((self.core.prefix_iter(kg, prefix)?, kg))
        })?;
        let mut chunks = ChunkIter {
            core: &self.core,
            iter,
            kg,
            current: Vec::new().into_iter(),
            _guard: guard,
            _type: PhantomData,
        };
        // The first chunk (all of a list below the threshold) is decoded now, so that its
        // errors are returned here rather than hidden in the iterator.
        chunks.load()?;
        Ok(Box::new(chunks))
    }

    fn update(&self, values: Vec<T>) -> Result<()> {
        self.check_writable()?;
        self.write_all(&values, |batch, prefix, kg| {
            self.delete_chunks(batch, prefix, kg)
        })
    }

    fn clear(&self) -> Result<()> {
        self.check_writable()?;
        self.core
            .with_key(None, |prefix, kg| self.core.delete_prefix(kg, prefix))
    }
}

impl<K: Key, N: Namespace, T: StateValue> MergeNamespaces<N> for RocksList<K, N, T> {
    /// Moves the framed bytes of the sources' chunks, undecoded, behind the target's list,
    /// in one write batch.
    fn merge_namespaces(&self, target: &N, sources: &[N]) -> Result<()> {
        self.check_writable()?;
        let mut moved = Vec::new();
        let mut batch = WriteBatch::default();
        for source in sources {
            self.core.with_key(Some(source), |prefix, kg| {
                let raw = self.read_raw(kg, prefix)?;
                if !raw.is_empty() {
                    moved.extend_from_slice(&raw);
                    self.delete_chunks(&mut batch, prefix, kg)?;
                }
                Ok(())
            })?;
        }
        if moved.is_empty() {
            return Ok(());
        }
        self.core.with_key(Some(target), |prefix, kg| {
            let cf = self.core.cf()?;
            self.append_encoded(prefix, kg, &moved, &mut batch, &cf)?;
            self.core
                .db
                .write(batch)
                .map_err(|e| self.core.rocks(kg, e))
        })
    }
}

/// Iterates a list chunk by chunk, decoding each chunk when it is reached.
struct ChunkIter<'a, K, N, T> {
    core: &'a StateCore<K, N>,
    iter: RawIter<'a>,
    kg: KeyGroup,
    current: std::vec::IntoIter<T>,
    _guard: IterGuard,
    _type: PhantomData<fn() -> T>,
}

impl<K: Key, N: Namespace, T: StateValue> ChunkIter<'_, K, N, T> {
    /// Decodes the next chunk into `current`; `false` at the end of the list.
    fn load(&mut self) -> Result<bool> {
        let Some(chunk) = self.iter.value() else {
            self.core.check_end(self.kg, &self.iter)?;
            return Ok(false);
        };
        let mut items = Vec::new();
        for element in Elements::new(chunk) {
            let payload = element
                .map_err(|()| self.core.corrupt(self.kg, "list element", "broken framing"))?;
            items.push(self.core.decode::<T>(self.kg, payload)?);
        }
        self.iter.next();
        self.current = items.into_iter();
        Ok(true)
    }
}

impl<K: Key, N: Namespace, T: StateValue> Iterator for ChunkIter<'_, K, N, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
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

/// Items read eagerly, iterated while counting as a live iterator of the list.
struct Guarded<T> {
    items: std::vec::IntoIter<T>,
    _guard: IterGuard,
}

impl<T> Iterator for Guarded<T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        self.items.next()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.items.size_hint()
    }
}
