//! Namespaces: the third coordinate of keyed state, after key group and key.
//!
//! Every keyed state value is addressed by *(key group, key, namespace)*, plus a user key for
//! map state. Plain keyed state lives in the *default namespace* `()` (Flink's
//! `VoidNamespace`), which costs nothing: the handles returned by
//! [`KeyedStateBackend::value_state`](crate::KeyedStateBackend::value_state) and friends never
//! look at a namespace. Window operators keep one value per (key, window): they register
//! states with a namespace type (the window type) through the `namespaced_*` methods, set the
//! current namespace before each access, and merge namespaces when session windows merge.
//!
//! ```
//! # use eddy_core::KeyGroupRange;
//! # use eddy_state::{KeyedStateBackend, ListStateDescriptor};
//! # let mut backend = KeyedStateBackend::<String>::heap(KeyGroupRange::new(0, 127), 128);
//! // One list per (key, window), the window here being a (start, end) pair.
//! let contents = backend
//!     .namespaced_list_state::<(u64, u64), u32>(&ListStateDescriptor::new("window-contents"))?;
//! backend.set_current_key("alice".to_string())?;
//! contents.set_current_namespace((0, 10));
//! contents.add(1)?;
//! contents.set_current_namespace((5, 15));
//! contents.add(2)?;
//! // Session windows merge: (0, 10) and (5, 15) become one window (0, 15).
//! contents.merge_namespaces(&(0, 15), &[(0, 10), (5, 15)])?;
//! contents.set_current_namespace((0, 15));
//! let mut merged: Vec<u32> = contents.get()?.collect();
//! merged.sort();
//! assert_eq!(merged, vec![1, 2]);
//! # Ok::<(), eddy_core::EddyError>(())
//! ```

use std::cell::RefCell;
use std::fmt::Debug;
use std::hash::Hash;
use std::ops::Deref;
use std::rc::Rc;

use eddy_core::{EddyError, Result, StateValue};

/// A type that can serve as a state namespace: a window, or `()` for plain keyed state.
///
/// Namespaces are compared and hashed in memory (heap backend) and serialized with `serde`
/// into the key bytes (RocksDB backend, checkpoints), so they need both.
pub trait Namespace: StateValue + Eq + Hash + Debug {}

impl<T: StateValue + Eq + Hash + Debug> Namespace for T {}

/// The current namespace of one namespaced state handle, shared between the handle the
/// operator holds and the backend's implementation behind it.
///
/// Single-threaded by construction, like the handles.
#[derive(Debug)]
pub struct NamespaceCell<N> {
    current: RefCell<Option<N>>,
}

impl<N> Default for NamespaceCell<N> {
    fn default() -> Self {
        NamespaceCell {
            current: RefCell::new(None),
        }
    }
}

impl<N: Namespace> NamespaceCell<N> {
    /// A cell with no namespace set yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes `namespace` the current one.
    #[inline]
    pub fn set(&self, namespace: N) {
        *self.current.borrow_mut() = Some(namespace);
    }

    /// Runs `f` with the current namespace, or fails (naming `state`) if none is set: a
    /// namespaced state accessed before `set_current_namespace` is a bug in the operator.
    #[inline]
    pub fn with<R>(&self, state: &str, f: impl FnOnce(&N) -> R) -> Result<R> {
        match &*self.current.borrow() {
            Some(namespace) => Ok(f(namespace)),
            None => Err(EddyError::state(
                state,
                "accessed before a namespace was set (call set_current_namespace first)",
            )),
        }
    }
}

/// A backend's implementation of [`Namespaced::merge_namespaces`] for one state.
pub trait MergeNamespaces<N> {
    /// For the current key, folds the values of `sources` into `target` (list: concatenated;
    /// reducing: reduced; aggregating: accumulators merged) and clears the sources. Sources
    /// without a value are skipped; `target` may be one of the sources.
    fn merge_namespaces(&self, target: &N, sources: &[N]) -> Result<()>;
}

/// A state handle of type `S` (for example [`ListState<T>`](crate::ListState)) whose
/// accesses are scoped to the current key *and* the current namespace of type `N`.
///
/// Dereferences to `S`, so every operation of `S` is available once a namespace is set.
pub struct Namespaced<S, N> {
    state: S,
    namespace: Rc<NamespaceCell<N>>,
    merger: Option<Box<dyn MergeNamespaces<N>>>,
    name: Rc<str>,
}

impl<S, N: Namespace> Namespaced<S, N> {
    /// Wraps a backend's handle `state`, whose implementation reads `namespace`. `merger` is
    /// `Some` for the state kinds that can merge (list, reducing, aggregating).
    pub fn new(
        name: &str,
        state: S,
        namespace: Rc<NamespaceCell<N>>,
        merger: Option<Box<dyn MergeNamespaces<N>>>,
    ) -> Self {
        Namespaced {
            state,
            namespace,
            merger,
            name: name.into(),
        }
    }

    /// Makes `namespace` the one every following access uses (Flink's
    /// `InternalKvState.setCurrentNamespace`).
    #[inline]
    pub fn set_current_namespace(&self, namespace: N) {
        self.namespace.set(namespace);
    }

    /// For the current key, folds the values under `sources` into `target` and clears the
    /// sources (Flink's `InternalMergingState.mergeNamespaces`, used when session windows
    /// merge). An error for value and map state, which cannot merge.
    pub fn merge_namespaces(&self, target: &N, sources: &[N]) -> Result<()> {
        match &self.merger {
            Some(merger) => merger.merge_namespaces(target, sources),
            None => Err(EddyError::state(
                &*self.name,
                "this kind of state cannot merge namespaces (only list, reducing and aggregating state can)",
            )),
        }
    }

    /// The handle itself.
    pub fn state(&self) -> &S {
        &self.state
    }
}

impl<S, N> Deref for Namespaced<S, N> {
    type Target = S;

    fn deref(&self) -> &S {
        &self.state
    }
}
