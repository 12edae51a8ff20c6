//! The current key: set by the runtime, read by every state handle.

use std::cell::{Cell, Ref, RefCell};
use std::rc::Rc;

use eddy_core::{key_group::assign_to_key_group, EddyError, Key, KeyGroup, KeyGroupRange, Result};

/// The key the runtime is processing right now in one subtask, and its key group.
///
/// Shared (by `Rc`) between the runtime and every state handle of one keyed operator
/// subtask; single-threaded by construction, because a subtask is one timely worker.
#[derive(Debug)]
pub struct KeyContext<K> {
    key: RefCell<Option<K>>,
    /// Offset of the current key's key group inside `range`: the index of its table shard.
    offset: Cell<usize>,
    key_group: Cell<KeyGroup>,
    range: KeyGroupRange,
    max_parallelism: usize,
    /// Whether the handles of this context may be used right now (see [`Self::enter`]).
    guard: Cell<Guard>,
    /// The operator the handles belong to, for the error when they are used elsewhere.
    owner: RefCell<Rc<str>>,
}

/// When state handles may be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Guard {
    /// Always (a backend used directly, outside a job).
    Unguarded,
    /// The owning operator is running.
    Active,
    /// Another operator (or none) is running on this thread.
    Inactive,
}

/// While alive, the handles of one operator's context may be used ([`KeyContext::enter`]).
#[must_use = "the handles are usable only while the guard lives"]
pub struct ActiveOperator<K> {
    context: Rc<KeyContext<K>>,
}

impl<K> Drop for ActiveOperator<K> {
    fn drop(&mut self) {
        self.context.guard.set(Guard::Inactive);
    }
}

impl<K: Key> KeyContext<K> {
    /// A context for a subtask that owns `range` out of `max_parallelism` key groups.
    pub fn new(range: KeyGroupRange, max_parallelism: usize) -> Self {
        KeyContext {
            key: RefCell::new(None),
            offset: Cell::new(0),
            key_group: Cell::new(0),
            range,
            max_parallelism,
            guard: Cell::new(Guard::Unguarded),
            owner: RefCell::new(Rc::from("")),
        }
    }

    /// Binds the context to the keyed operator `operator`: from now on its state handles
    /// work only while that operator runs ([`enter`](Self::enter)). A handle smuggled into
    /// another operator on the same thread (handles are not `Send`) then fails with an error
    /// naming the state and its operator, instead of reading the other operator's key.
    pub fn bind_to_operator(&self, operator: &str) {
        if let Ok(mut owner) = self.owner.try_borrow_mut() {
            *owner = Rc::from(operator);
        }
        self.guard.set(Guard::Inactive);
    }

    /// Marks the bound operator as running until the returned guard is dropped.
    pub fn enter(self: &Rc<Self>) -> ActiveOperator<K> {
        if self.guard.get() != Guard::Unguarded {
            self.guard.set(Guard::Active);
        }
        ActiveOperator {
            context: Rc::clone(self),
        }
    }

    /// Makes `key` the current key. Its key group must belong to this subtask: a key routed
    /// to the wrong subtask would silently split one key's state in two, so it is an error.
    #[inline]
    pub fn set_current_key(&self, key: K) -> Result<()> {
        let kg = assign_to_key_group(&key, self.max_parallelism);
        self.set_current_key_in_group(key, kg)
    }

    /// Makes `key`, whose key group the caller has already computed as `kg`, the current key.
    ///
    /// `kg` must be `assign_to_key_group(&key, max_parallelism)`: the runtime computes it once
    /// per record and reuses it (checked in debug builds).
    #[inline]
    pub fn set_current_key_in_group(&self, key: K, kg: KeyGroup) -> Result<()> {
        debug_assert_eq!(kg, assign_to_key_group(&key, self.max_parallelism));
        let offset = self.range.offset_of(kg).ok_or_else(|| {
            EddyError::Internal(format!(
                "key {key:?} is in key group {kg}, outside this subtask's range {:?}",
                self.range
            ))
        })?;
        // The runtime lends the current key to user code for the duration of a call; a
        // change of key during that call (e.g. `apply_to_all_keys` inside
        // `process_element`) would pull it from under the user's feet.
        let mut current = self.key.try_borrow_mut().map_err(|_| {
            EddyError::Internal(format!(
                "cannot make {key:?} the current key while the current key is borrowed \
                 (keyed-state iteration is not allowed inside process_element)"
            ))
        })?;
        *current = Some(key);
        self.offset.set(offset);
        self.key_group.set(kg);
        Ok(())
    }

    /// Unsets the current key (as before the first record), so that state access fails
    /// until a key is set again.
    pub fn clear_current_key(&self) -> Result<()> {
        let mut current = self.key.try_borrow_mut().map_err(|_| {
            EddyError::Internal("cannot unset the current key while it is borrowed".into())
        })?;
        *current = None;
        Ok(())
    }

    /// The current key, or `None` before the first record.
    pub fn current_key(&self) -> Option<Ref<'_, K>> {
        Ref::filter_map(self.key.borrow(), Option::as_ref).ok()
    }

    /// The current key's key group.
    pub fn current_key_group(&self) -> KeyGroup {
        self.key_group.get()
    }

    /// The key groups this subtask owns.
    pub fn key_group_range(&self) -> KeyGroupRange {
        self.range
    }

    /// The job's number of key groups.
    pub fn max_parallelism(&self) -> usize {
        self.max_parallelism
    }

    /// Runs `f` with the current key and its key-group offset, or fails if no key is set.
    #[inline]
    pub(crate) fn with_key<R>(&self, state: &str, f: impl FnOnce(&K, usize) -> R) -> Result<R> {
        if self.guard.get() == Guard::Inactive {
            return Err(self.foreign_use(state));
        }
        match &*self.key.borrow() {
            Some(key) => Ok(f(key, self.offset.get())),
            None => Err(EddyError::state(
                state,
                "accessed outside a keyed context (no current key is set)",
            )),
        }
    }

    #[cold]
    fn foreign_use(&self, state: &str) -> EddyError {
        let owner = self
            .owner
            .try_borrow()
            .map(|o| o.to_string())
            .unwrap_or_default();
        EddyError::state(
            state,
            format!(
                "used outside its operator \"{owner}\": a state handle belongs to the keyed operator whose open() created it"
            ),
        )
    }
}
