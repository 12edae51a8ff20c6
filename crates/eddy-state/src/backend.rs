//! The backend-independent face of one subtask's keyed state.

use std::cell::Ref;
use std::rc::Rc;
use std::sync::Arc;

use eddy_core::{Key, KeyGroupRange, Result, StateValue};

use crate::descriptor::{
    AggregateFunction, AggregatingStateDescriptor, ListStateDescriptor, MapStateDescriptor,
    ReducingStateDescriptor, ValueStateDescriptor,
};
use crate::handle::{AggregatingState, ListState, MapState, ReducingState, ValueState};
use crate::heap::{HeapKeyedStateBackend, PrefetchDepth};
use crate::key_context::KeyContext;
use crate::ttl::TtlClock;

/// The keyed state of one operator subtask: the current key plus the backend holding values.
///
/// The runtime creates one per keyed operator subtask, sets the current key before every call
/// into user code, and hands it to the function's `open()` to create handles.
pub struct KeyedStateBackend<K> {
    context: Rc<KeyContext<K>>,
    inner: BackendImpl<K>,
}

enum BackendImpl<K> {
    Heap(HeapKeyedStateBackend<K>),
}

impl<K: Key> KeyedStateBackend<K> {
    /// A heap backend for a subtask owning `range` out of `max_parallelism` key groups.
    pub fn heap(range: KeyGroupRange, max_parallelism: usize) -> Self {
        let context = Rc::new(KeyContext::new(range, max_parallelism));
        let inner = BackendImpl::Heap(HeapKeyedStateBackend::new(Rc::clone(&context)));
        KeyedStateBackend { context, inner }
    }

    /// The shared current-key context.
    pub fn context(&self) -> &Rc<KeyContext<K>> {
        &self.context
    }

    /// Sets the current key (see [`KeyContext::set_current_key`]).
    #[inline]
    pub fn set_current_key(&self, key: K) -> Result<()> {
        self.context.set_current_key(key)
    }

    /// Starts loading `key`'s state into the CPU caches ahead of processing it (see
    /// [`HeapKeyedStateBackend::prefetch`]). Keys outside this subtask's range are ignored.
    #[inline]
    pub fn prefetch(&self, key: &K, depth: PrefetchDepth) {
        let kg = eddy_core::key_group::assign_to_key_group(key, self.context.max_parallelism());
        self.prefetch_in_group(key, kg, depth);
    }

    /// Like [`prefetch`](Self::prefetch), for a key whose key group `kg` is already known.
    #[inline]
    pub fn prefetch_in_group(&self, key: &K, kg: eddy_core::KeyGroup, depth: PrefetchDepth) {
        let Some(offset) = self.context.key_group_range().offset_of(kg) else {
            return;
        };
        match &self.inner {
            BackendImpl::Heap(heap) => heap.prefetch(offset, key, depth),
        }
    }

    /// Whether any state is registered (a stateless function needs no prefetching).
    pub fn has_state(&self) -> bool {
        match &self.inner {
            BackendImpl::Heap(heap) => heap.state_names().next().is_some(),
        }
    }

    /// Whether [`PrefetchDepth::Contents`] prefetches do anything for the registered states.
    pub fn has_contents(&self) -> bool {
        match &self.inner {
            BackendImpl::Heap(heap) => heap.has_contents(),
        }
    }

    /// The current key, if one is set.
    pub fn current_key(&self) -> Option<Ref<'_, K>> {
        self.context.current_key()
    }

    /// Makes `clock` the time source of every TTL state of this backend, including states
    /// already registered. The default is [`SystemClock`](crate::SystemClock); tests inject a
    /// [`ManualClock`](crate::ManualClock) so that they never sleep.
    pub fn set_ttl_clock(&mut self, clock: Arc<dyn TtlClock>) {
        match &mut self.inner {
            BackendImpl::Heap(heap) => heap.set_ttl_clock(clock),
        }
    }

    /// The number of keys holding a value in the state called `name` (expired values that no
    /// cleanup has removed yet included), or `None` if no such state is registered.
    pub fn state_len(&self, name: &str) -> Option<usize> {
        match &self.inner {
            BackendImpl::Heap(heap) => heap.state_len(name),
        }
    }

    /// The heap backend, if this is one (for inspection in tests and snapshots).
    pub fn as_heap(&self) -> Option<&HeapKeyedStateBackend<K>> {
        match &self.inner {
            BackendImpl::Heap(heap) => Some(heap),
        }
    }

    /// Creates a [`ValueState`] from its descriptor; the same name returns the same state.
    pub fn value_state<T: StateValue>(
        &mut self,
        desc: &ValueStateDescriptor<T>,
    ) -> Result<ValueState<T>> {
        match &mut self.inner {
            BackendImpl::Heap(heap) => heap.value_state(desc),
        }
    }

    /// Creates a [`ListState`] from its descriptor; the same name returns the same state.
    pub fn list_state<T: StateValue>(
        &mut self,
        desc: &ListStateDescriptor<T>,
    ) -> Result<ListState<T>> {
        match &mut self.inner {
            BackendImpl::Heap(heap) => heap.list_state(desc),
        }
    }

    /// Creates a [`MapState`] from its descriptor; the same name returns the same state.
    pub fn map_state<UK: Key, UV: StateValue>(
        &mut self,
        desc: &MapStateDescriptor<UK, UV>,
    ) -> Result<MapState<UK, UV>> {
        match &mut self.inner {
            BackendImpl::Heap(heap) => heap.map_state(desc),
        }
    }

    /// Creates a [`ReducingState`] from its descriptor; the same name returns the same state.
    pub fn reducing_state<T: StateValue>(
        &mut self,
        desc: &ReducingStateDescriptor<T>,
    ) -> Result<ReducingState<T>> {
        match &mut self.inner {
            BackendImpl::Heap(heap) => heap.reducing_state(desc),
        }
    }

    /// Creates an [`AggregatingState`] from its descriptor; the same name returns the same
    /// state.
    pub fn aggregating_state<In: 'static, F: AggregateFunction<In>>(
        &mut self,
        desc: &AggregatingStateDescriptor<In, F>,
    ) -> Result<AggregatingState<In, F::Out>> {
        match &mut self.inner {
            BackendImpl::Heap(heap) => heap.aggregating_state(desc),
        }
    }
}
