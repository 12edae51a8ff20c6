//! Value, reducing and aggregating state on RocksDB: one value per (key, namespace).

use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::Arc;

use eddy_core::{Key, KeyGroup, Result, StateValue};

use super::cache::{read_through, Cached, SharedCache};
use super::core::{now_or_zero, StateCore};
use super::ttl::TtlRules;
use crate::descriptor::{AggregateFunction, ReduceFn};
use crate::handle::{Added, AggregatingStateAccess, ReducingStateAccess, ValueStateAccess};
use crate::namespace::{MergeNamespaces, Namespace};

/// One stored value per (key, namespace): `[kg][key][ns]` -> `[TTL header]postcard(T)`.
pub(crate) struct RocksValue<K, N, T> {
    pub(crate) core: StateCore<K, N>,
    pub(crate) ttl: Option<TtlRules>,
    /// The state's object cache, if it has one (never with TTL).
    pub(crate) cache: Option<Rc<SharedCache<T>>>,
    pub(crate) _type: PhantomData<fn() -> T>,
}

impl<K: Key, N: Namespace, T: StateValue> RocksValue<K, N, T> {
    /// The value in `namespace` (the current one if `None`), with the TTL rules.
    fn read(&self, namespace: Option<&N>) -> Result<Option<T>> {
        self.core
            .with_key(namespace, |key, kg| self.read_at(kg, key))
    }

    /// The value under the stored key `key`: through the cache if there is one.
    #[inline]
    fn read_at(&self, kg: KeyGroup, key: &[u8]) -> Result<Option<T>> {
        match &self.cache {
            Some(cache) => read_through(cache, &self.core, kg, key, key.len()),
            None => self.core.read(self.ttl.as_ref(), kg, key),
        }
    }

    /// Stores `value` (or, for `None`, removes the value) under the stored key `key`: into
    /// the cache if there is one (written back later), else into RocksDB.
    #[inline]
    fn write_at(&self, kg: KeyGroup, key: &[u8], value: Option<T>, now: u64) -> Result<()> {
        match (&self.cache, value) {
            (Some(cache), Some(value)) => {
                cache.borrow_mut().write(key, &[], Cached::Present(value))
            }
            (Some(cache), None) => cache.borrow_mut().write(key, &[], Cached::Absent),
            (None, Some(value)) => self.core.store(self.ttl.as_ref(), kg, key, &value, now),
            (None, None) => self.core.delete(kg, key),
        }
    }

    fn write(&self, value: T) -> Result<()> {
        let now = now_or_zero(self.ttl.as_ref());
        self.core
            .with_key(None, |key, kg| self.write_at(kg, key, Some(value), now))
    }

    fn remove(&self, namespace: Option<&N>) -> Result<()> {
        self.core
            .with_key(namespace, |key, kg| self.write_at(kg, key, None, 0))
    }

    /// Replaces the value with `update(current)`, where `current` is the stored value if it
    /// may still be used: as Flink's TTL reduce and aggregate, an expired value is folded into
    /// only while expired values are returned; otherwise a fresh one starts.
    fn modify(&self, update: impl FnOnce(Option<T>) -> T) -> Result<()> {
        let ttl = self.ttl.as_ref();
        let now = now_or_zero(ttl);
        let return_expired = ttl.is_some_and(|t| t.return_expired);
        self.core.with_key(None, |key, kg| {
            let current = match &self.cache {
                Some(cache) => read_through(cache, &self.core, kg, key, key.len())?,
                None => self
                    .core
                    .load::<T>(ttl, kg, key, now)?
                    .filter(|(_, expired)| !expired || return_expired)
                    .map(|(value, _)| value),
            };
            self.write_at(kg, key, Some(update(current)), now)
        })
    }

    /// Folds the values of `sources` into `target` with `combine(merged, next)` and deletes
    /// the sources, in the order of Flink's `AbstractMergingState.mergeNamespaces`: sources
    /// first (deleted as they are read), then the target's own value.
    fn merge_into(&self, target: &N, sources: &[N], combine: impl Fn(T, T) -> T) -> Result<()> {
        // A TTL state's merged value is written as a fresh write (Flink: merging counts as
        // an update), stamped now.
        let now = now_or_zero(self.ttl.as_ref());
        let mut merged: Option<T> = None;
        for source in sources {
            let value = self.core.with_key(Some(source), |key, kg| {
                let value = self.read_at(kg, key)?;
                if value.is_some() {
                    self.write_at(kg, key, None, 0)?;
                }
                Ok(value)
            })?;
            if let Some(value) = value {
                merged = Some(match merged {
                    Some(acc) => combine(acc, value),
                    None => value,
                });
            }
        }
        let Some(merged) = merged else {
            return Ok(());
        };
        self.core.with_key(Some(target), |key, kg| {
            let result = match self.read_at(kg, key)? {
                Some(existing) => combine(merged, existing),
                None => merged,
            };
            self.write_at(kg, key, Some(result), now)
        })
    }
}

impl<K: Key, N: Namespace, T: StateValue> ValueStateAccess<T> for RocksValue<K, N, T> {
    #[inline]
    fn value(&self) -> Result<Option<T>> {
        self.read(None)
    }

    #[inline]
    fn update(&self, value: T) -> Result<()> {
        self.write(value)
    }

    fn clear(&self) -> Result<()> {
        self.remove(None)
    }
}

/// A reducing state: a value plus the reduce function.
pub(crate) struct RocksReducing<K, N, T> {
    pub(crate) value: RocksValue<K, N, T>,
    pub(crate) reduce: ReduceFn<T>,
}

impl<K: Key, N: Namespace, T: StateValue> ReducingStateAccess<T> for RocksReducing<K, N, T> {
    fn get(&self) -> Result<Option<T>> {
        self.value.read(None)
    }

    fn add(&self, value: T) -> Result<()> {
        self.add_telling_first(value).map(|_| ())
    }

    /// An add reads the value anyway (a reduce needs it), so it can tell.
    fn add_telling_first(&self, value: T) -> Result<Added> {
        let reduce = &self.reduce;
        let mut added = Added::More;
        self.value.modify(|current| match current {
            Some(current) => reduce(&current, &value),
            None => {
                added = Added::First;
                value
            }
        })?;
        Ok(added)
    }

    fn clear(&self) -> Result<()> {
        self.value.remove(None)
    }
}

impl<K: Key, N: Namespace, T: StateValue> MergeNamespaces<N> for RocksReducing<K, N, T> {
    fn merge_namespaces(&self, target: &N, sources: &[N]) -> Result<()> {
        let reduce = &self.reduce;
        self.value
            .merge_into(target, sources, |a, b| reduce(&a, &b))
    }
}

/// An aggregating state: the accumulator as the stored value, plus the aggregate function.
pub(crate) struct RocksAggregating<K, N, In, F: AggregateFunction<In>> {
    pub(crate) value: RocksValue<K, N, F::Acc>,
    pub(crate) function: Arc<F>,
    pub(crate) _input: PhantomData<fn(In)>,
}

impl<K: Key, N: Namespace, In, F: AggregateFunction<In>> AggregatingStateAccess<In, F::Out>
    for RocksAggregating<K, N, In, F>
{
    fn get(&self) -> Result<Option<F::Out>> {
        let function = &self.function;
        Ok(self.value.read(None)?.map(|acc| function.get_result(&acc)))
    }

    fn add(&self, value: In) -> Result<()> {
        self.add_telling_first(value).map(|_| ())
    }

    /// An add reads the accumulator anyway, so it can tell.
    fn add_telling_first(&self, value: In) -> Result<Added> {
        let function = &self.function;
        let mut added = Added::More;
        self.value.modify(|current| {
            let mut acc = current.unwrap_or_else(|| {
                added = Added::First;
                function.create_accumulator()
            });
            function.add(value, &mut acc);
            acc
        })?;
        Ok(added)
    }

    fn clear(&self) -> Result<()> {
        self.value.remove(None)
    }
}

impl<K: Key, N: Namespace, In, F: AggregateFunction<In>> MergeNamespaces<N>
    for RocksAggregating<K, N, In, F>
{
    fn merge_namespaces(&self, target: &N, sources: &[N]) -> Result<()> {
        let function = &self.function;
        self.value
            .merge_into(target, sources, |a, b| function.merge(a, b))
    }
}
