//! State handles: what user code holds and calls. Each is scoped to the current key.
//!
//! A handle wraps a backend's implementation behind a small trait object, so user types name
//! `ValueState<T>` whatever backend the job runs on. The handles are deliberately not `Send`:
//! they belong to the subtask that created them in `open()`.

use eddy_core::Result;

/// An iterator over values read from state (cloned from the heap, decoded from bytes).
pub type StateIter<'a, T> = Box<dyn Iterator<Item = T> + 'a>;

/// What an `add` found: whether the current key (and namespace) held no value before it.
///
/// A window operator registers a window's timer when the window's first element arrives
/// and knows no timer is there yet ([`TimerService::register_new_timer`](crate::TimerService::register_new_timer)),
/// instead of registering (and deduplicating) a timer for every element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// The state held no value: this is the first.
    First,
    /// The state held a value already.
    More,
    /// The backend cannot tell without a read it otherwise spares (RocksDB's merge-based
    /// add never reads).
    Unknown,
}

/// A backend's implementation of [`ValueState`].
pub trait ValueStateAccess<T> {
    /// The current key's value.
    fn value(&self) -> Result<Option<T>>;
    /// Replaces the current key's value.
    fn update(&self, value: T) -> Result<()>;
    /// Removes the current key's value.
    fn clear(&self) -> Result<()>;
}

/// A backend's implementation of [`ListState`].
pub trait ListStateAccess<T> {
    /// Appends one element.
    fn add(&self, value: T) -> Result<()>;
    /// Appends one element and tells whether the list was empty (by default
    /// [`Added::Unknown`]).
    fn add_telling_first(&self, value: T) -> Result<Added> {
        self.add(value).map(|()| Added::Unknown)
    }
    /// Appends all elements.
    fn add_all(&self, values: Vec<T>) -> Result<()>;
    /// The current key's elements, in insertion order.
    fn get(&self) -> Result<StateIter<'_, T>>;
    /// Replaces the list (an empty `values` clears it).
    fn update(&self, values: Vec<T>) -> Result<()>;
    /// Removes the list.
    fn clear(&self) -> Result<()>;
}

/// A backend's implementation of [`MapState`].
pub trait MapStateAccess<UK, UV> {
    /// The value under `key`.
    fn get(&self, key: &UK) -> Result<Option<UV>>;
    /// Sets `key` to `value`.
    fn put(&self, key: UK, value: UV) -> Result<()>;
    /// Sets every entry.
    fn put_all(&self, entries: Vec<(UK, UV)>) -> Result<()>;
    /// Removes `key`.
    fn remove(&self, key: &UK) -> Result<()>;
    /// Whether `key` is present.
    fn contains(&self, key: &UK) -> Result<bool>;
    /// The entries.
    fn entries(&self) -> Result<StateIter<'_, (UK, UV)>>;
    /// The user keys.
    fn keys(&self) -> Result<StateIter<'_, UK>>;
    /// The values.
    fn values(&self) -> Result<StateIter<'_, UV>>;
    /// Whether the current key's map is empty.
    fn is_empty(&self) -> Result<bool>;
    /// Removes every entry of the current key's map.
    fn clear(&self) -> Result<()>;
}

/// One value of type `T` per key.
///
/// ```
/// # use eddy_core::KeyGroupRange;
/// # use eddy_state::{KeyedStateBackend, ValueStateDescriptor};
/// # let mut backend = KeyedStateBackend::<String>::heap(KeyGroupRange::new(0, 127), 128);
/// let latest = backend.value_state(&ValueStateDescriptor::<u64>::new("latest"))?;
/// backend.set_current_key("alice".to_string())?;
/// assert_eq!(latest.value()?, None);
/// latest.update(3)?;
/// assert_eq!(latest.value()?, Some(3));
/// latest.clear()?;
/// assert_eq!(latest.value()?, None);
/// # Ok::<(), eddy_core::EddyError>(())
/// ```
pub struct ValueState<T> {
    inner: Box<dyn ValueStateAccess<T>>,
}

impl<T> ValueState<T> {
    /// Wraps a backend's implementation (for backend authors).
    pub fn from_access(inner: Box<dyn ValueStateAccess<T>>) -> Self {
        ValueState { inner }
    }

    /// The current key's value, or `None` if it has none.
    #[inline]
    pub fn value(&self) -> Result<Option<T>> {
        self.inner.value()
    }

    /// Sets the current key's value.
    #[inline]
    pub fn update(&self, value: T) -> Result<()> {
        self.inner.update(value)
    }

    /// Removes the current key's value; [`value`](Self::value) then returns `None`.
    pub fn clear(&self) -> Result<()> {
        self.inner.clear()
    }
}

/// A list of `T` per key. Prefer it over `ValueState<Vec<T>>`: appending never reads the list.
///
/// ```
/// # use eddy_core::KeyGroupRange;
/// # use eddy_state::{KeyedStateBackend, ListStateDescriptor};
/// # let mut backend = KeyedStateBackend::<u64>::heap(KeyGroupRange::new(0, 127), 128);
/// let seen = backend.list_state(&ListStateDescriptor::<u32>::new("seen"))?;
/// backend.set_current_key(1)?;
/// seen.add(10)?;
/// seen.add_all(vec![20, 30])?;
/// assert_eq!(seen.get()?.collect::<Vec<_>>(), vec![10, 20, 30]);
/// seen.clear()?;
/// assert_eq!(seen.get()?.count(), 0); // an empty list reads as empty, never as an error
/// # Ok::<(), eddy_core::EddyError>(())
/// ```
pub struct ListState<T> {
    inner: Box<dyn ListStateAccess<T>>,
}

impl<T> ListState<T> {
    /// Wraps a backend's implementation (for backend authors).
    pub fn from_access(inner: Box<dyn ListStateAccess<T>>) -> Self {
        ListState { inner }
    }

    /// Appends `value` to the current key's list.
    #[inline]
    pub fn add(&self, value: T) -> Result<()> {
        self.inner.add(value)
    }

    /// Appends `value` and tells whether it is the list's first element ([`Added::Unknown`]
    /// where the backend cannot tell without a read, as RocksDB's).
    pub fn add_telling_first(&self, value: T) -> Result<Added> {
        self.inner.add_telling_first(value)
    }

    /// Appends all `values`.
    pub fn add_all(&self, values: Vec<T>) -> Result<()> {
        self.inner.add_all(values)
    }

    /// The current key's elements in insertion order (empty if it has none).
    ///
    /// The list cannot be modified while the iterator is alive; doing so returns an error.
    #[inline]
    pub fn get(&self) -> Result<StateIter<'_, T>> {
        self.inner.get()
    }

    /// Replaces the current key's list with `values`.
    pub fn update(&self, values: Vec<T>) -> Result<()> {
        self.inner.update(values)
    }

    /// Removes the current key's list.
    pub fn clear(&self) -> Result<()> {
        self.inner.clear()
    }
}

/// A map from `UK` to `UV` per key. Each entry is independent (one RocksDB key each, later).
///
/// ```
/// # use eddy_core::KeyGroupRange;
/// # use eddy_state::{KeyedStateBackend, MapStateDescriptor};
/// # let mut backend = KeyedStateBackend::<u64>::heap(KeyGroupRange::new(0, 127), 128);
/// let totals = backend.map_state(&MapStateDescriptor::<String, u64>::new("totals"))?;
/// backend.set_current_key(1)?;
/// totals.put("food".into(), 12)?;
/// assert_eq!(totals.get(&"food".into())?, Some(12));
/// assert!(totals.contains(&"food".into())?);
/// totals.remove(&"food".into())?;
/// assert!(totals.is_empty()?);
/// # Ok::<(), eddy_core::EddyError>(())
/// ```
pub struct MapState<UK, UV> {
    inner: Box<dyn MapStateAccess<UK, UV>>,
}

impl<UK, UV> MapState<UK, UV> {
    /// Wraps a backend's implementation (for backend authors).
    pub fn from_access(inner: Box<dyn MapStateAccess<UK, UV>>) -> Self {
        MapState { inner }
    }

    /// The value under `key` in the current key's map.
    #[inline]
    pub fn get(&self, key: &UK) -> Result<Option<UV>> {
        self.inner.get(key)
    }

    /// Sets `key` to `value` in the current key's map.
    #[inline]
    pub fn put(&self, key: UK, value: UV) -> Result<()> {
        self.inner.put(key, value)
    }

    /// Sets every entry of `entries`.
    pub fn put_all(&self, entries: Vec<(UK, UV)>) -> Result<()> {
        self.inner.put_all(entries)
    }

    /// Removes `key` from the current key's map.
    pub fn remove(&self, key: &UK) -> Result<()> {
        self.inner.remove(key)
    }

    /// Whether the current key's map contains `key`.
    pub fn contains(&self, key: &UK) -> Result<bool> {
        self.inner.contains(key)
    }

    /// The current key's entries (in no particular order).
    pub fn entries(&self) -> Result<StateIter<'_, (UK, UV)>> {
        self.inner.entries()
    }

    /// The current key's user keys.
    pub fn keys(&self) -> Result<StateIter<'_, UK>> {
        self.inner.keys()
    }

    /// The current key's values.
    pub fn values(&self) -> Result<StateIter<'_, UV>> {
        self.inner.values()
    }

    /// Whether the current key's map has no entry.
    pub fn is_empty(&self) -> Result<bool> {
        self.inner.is_empty()
    }

    /// Removes the current key's whole map.
    pub fn clear(&self) -> Result<()> {
        self.inner.clear()
    }
}

/// A backend's implementation of [`ReducingState`].
pub trait ReducingStateAccess<T> {
    /// The current key's reduced value.
    fn get(&self) -> Result<Option<T>>;
    /// Folds `value` into the current key's value.
    fn add(&self, value: T) -> Result<()>;
    /// Folds `value` in and tells whether the key had no value (by default
    /// [`Added::Unknown`]).
    fn add_telling_first(&self, value: T) -> Result<Added> {
        self.add(value).map(|()| Added::Unknown)
    }
    /// Removes the current key's value.
    fn clear(&self) -> Result<()>;
}

/// One value per key, folded with a reduce function on every [`add`](Self::add).
///
/// ```
/// # use eddy_core::KeyGroupRange;
/// # use eddy_state::{KeyedStateBackend, ReducingStateDescriptor};
/// # let mut backend = KeyedStateBackend::<u64>::heap(KeyGroupRange::new(0, 127), 128);
/// let max = backend.reducing_state(&ReducingStateDescriptor::new("max", |a: &u64, b: &u64| *a.max(b)))?;
/// backend.set_current_key(1)?;
/// assert_eq!(max.get()?, None);
/// for v in [3, 9, 4] {
///     max.add(v)?;
/// }
/// assert_eq!(max.get()?, Some(9));
/// # Ok::<(), eddy_core::EddyError>(())
/// ```
pub struct ReducingState<T> {
    inner: Box<dyn ReducingStateAccess<T>>,
}

impl<T> ReducingState<T> {
    /// Wraps a backend's implementation (for backend authors).
    pub fn from_access(inner: Box<dyn ReducingStateAccess<T>>) -> Self {
        ReducingState { inner }
    }

    /// The current key's reduced value, or `None` if nothing was added.
    pub fn get(&self) -> Result<Option<T>> {
        self.inner.get()
    }

    /// Folds `value` into the current key's value (stores it if there is none).
    pub fn add(&self, value: T) -> Result<()> {
        self.inner.add(value)
    }

    /// Like [`add`](Self::add), telling whether the key had no value before
    /// ([`Added::Unknown`] where the backend cannot tell without a read).
    pub fn add_telling_first(&self, value: T) -> Result<Added> {
        self.inner.add_telling_first(value)
    }

    /// Removes the current key's value.
    pub fn clear(&self) -> Result<()> {
        self.inner.clear()
    }
}

/// A backend's implementation of [`AggregatingState`].
pub trait AggregatingStateAccess<In, Out> {
    /// The result of the current key's accumulator.
    fn get(&self) -> Result<Option<Out>>;
    /// Adds `value` to the current key's accumulator.
    fn add(&self, value: In) -> Result<()>;
    /// Adds `value` and tells whether the key had no accumulator (by default
    /// [`Added::Unknown`]).
    fn add_telling_first(&self, value: In) -> Result<Added> {
        self.add(value).map(|()| Added::Unknown)
    }
    /// Removes the current key's accumulator.
    fn clear(&self) -> Result<()>;
}

/// One accumulator per key, updated by an
/// [`AggregateFunction`](crate::AggregateFunction) on every [`add`](Self::add).
pub struct AggregatingState<In, Out> {
    inner: Box<dyn AggregatingStateAccess<In, Out>>,
}

impl<In, Out> AggregatingState<In, Out> {
    /// Wraps a backend's implementation (for backend authors).
    pub fn from_access(inner: Box<dyn AggregatingStateAccess<In, Out>>) -> Self {
        AggregatingState { inner }
    }

    /// The aggregate of the values added for the current key, or `None` if none was added.
    pub fn get(&self) -> Result<Option<Out>> {
        self.inner.get()
    }

    /// Adds `value` to the current key's aggregate.
    pub fn add(&self, value: In) -> Result<()> {
        self.inner.add(value)
    }

    /// Like [`add`](Self::add), telling whether the key had no accumulator before
    /// ([`Added::Unknown`] where the backend cannot tell without a read).
    pub fn add_telling_first(&self, value: In) -> Result<Added> {
        self.inner.add_telling_first(value)
    }

    /// Removes the current key's aggregate.
    pub fn clear(&self) -> Result<()> {
        self.inner.clear()
    }
}
