//! Eddy's managed keyed state: a sharded key-value store living inside the operators.
//!
//! This crate owns:
//!
//! * **Descriptors** ([`ValueStateDescriptor`], [`ListStateDescriptor`],
//!   [`MapStateDescriptor`], [`ReducingStateDescriptor`], [`AggregatingStateDescriptor`]): a
//!   state's name, type and optional time-to-live ([`StateTtlConfig`], see [`ttl`]),
//!   registered once per subtask in the function's `open()`.
//! * **Handles** ([`ValueState`], [`ListState`], [`MapState`], [`ReducingState`],
//!   [`AggregatingState`]): what user code calls. Every
//!   access is scoped to the **current key**, which the runtime sets in the shared
//!   [`KeyContext`] before each call into user code. User code never passes the key.
//! * **Backends** ([`KeyedStateBackend`]): where the values live. The [heap
//!   backend](heap::HeapKeyedStateBackend) keeps objects in per-key-group hash maps and never
//!   serializes on access. State is organised *per key group* so that checkpoints can write,
//!   and rescaling can move, whole key groups.
//! * **Snapshots** ([`KeyedStateSnapshot`], see [`snapshot`]): a backend-independent copy of
//!   one subtask's keyed state and timers, per key group, taken by
//!   [`KeyedStateBackend::snapshot`] and restored (into either backend, and at another
//!   parallelism) by [`KeyedStateBackend::restore`] before the function's `open()`, which
//!   loads each state's entries when it registers the state again.
//! * **Schema evolution** (see [`schema`]): every snapshot records the schema of each
//!   state's types; a restored state whose value type changed compatibly (fields added with
//!   a default, removed, reordered; numbers widened) is migrated on restore, an incompatible
//!   change is refused with an error naming the operator, state and field.
//!
//! It depends only on `eddy-core`. It must not depend on the runtime (timely dataflow) or on
//! the user-facing API: the runtime drives it through [`KeyContext`] and [`KeyedStateBackend`].
//!
//! # Examples
//!
//! ```
//! use eddy_core::KeyGroupRange;
//! use eddy_state::{KeyedStateBackend, ValueStateDescriptor};
//!
//! // One backend per subtask; this subtask owns all 128 key groups.
//! let mut backend = KeyedStateBackend::<u64>::heap(KeyGroupRange::new(0, 127), 128);
//! let count = backend.value_state(&ValueStateDescriptor::<u64>::new("count")).unwrap();
//!
//! // The runtime sets the current key; the handle reads and writes that key's value.
//! backend.set_current_key(7).unwrap();
//! count.update(1).unwrap();
//! backend.set_current_key(8).unwrap();
//! assert_eq!(count.value().unwrap(), None);
//! backend.set_current_key(7).unwrap();
//! assert_eq!(count.value().unwrap(), Some(1));
//!
//! // A checkpoint: a snapshot of every state, restored into a fresh backend (which could
//! // be a RocksDB backend, or one of several subtasks after a rescale).
//! let bytes = backend.snapshot().unwrap().encode().unwrap();
//! let snapshot = eddy_state::KeyedStateSnapshot::decode(&bytes, "keyed-0.bin").unwrap();
//! let mut restored = KeyedStateBackend::<u64>::heap(KeyGroupRange::new(0, 127), 128);
//! restored.restore("counter", vec![snapshot]).unwrap();
//! // The operator's `open()` registers its states again; their entries come back.
//! let count = restored.value_state(&ValueStateDescriptor::<u64>::new("count")).unwrap();
//! assert!(restored.finish_restore().unwrap().is_empty()); // every restored state is used
//! restored.set_current_key(7).unwrap();
//! assert_eq!(count.value().unwrap(), Some(1));
//! ```

mod append;
mod backend;
mod descriptor;
mod handle;
pub mod heap;
mod key_context;
pub mod namespace;
pub mod operator_state;
pub mod prefetch;
pub mod probe_table;
#[cfg(feature = "rocksdb")]
pub mod rocksdb;
pub mod schema;
pub mod small_map;
pub mod snapshot;
mod timer_bucket;
pub mod timers;
pub mod ttl;

pub use backend::{KeyedStateBackend, PendingSnapshot};
pub use descriptor::{
    AggregateFunction, AggregatingStateDescriptor, ListStateDescriptor, MapStateDescriptor,
    ReduceFn, ReducingStateDescriptor, StateKind, ValueStateDescriptor,
};
pub use handle::{
    Added, AggregatingState, AggregatingStateAccess, ListState, ListStateAccess, MapState,
    MapStateAccess, ReducingState, ReducingStateAccess, StateIter, ValueState, ValueStateAccess,
};
pub use heap::PrefetchDepth;
pub use key_context::{ActiveOperator, KeyContext};
pub use namespace::{MergeNamespaces, Namespace, NamespaceCell, Namespaced};
pub use operator_state::{
    redistribute, BroadcastState, NamedOperatorState, OperatorListState, OperatorStateMode,
    OperatorStateSnapshot, OperatorStateStore, ReadOnlyBroadcastState,
};
#[cfg(feature = "rocksdb")]
pub use rocksdb::{RocksDbConfig, RocksDbKeyedStateBackend};
pub use snapshot::{
    EntryBlock, KeyGroupSnapshot, KeyedStateSnapshot, StateEntry, StateMeta, TimerEntry,
    TimerServiceMeta,
};
pub use timers::{TimeDomain, Timer, TimerQueue, TimerService};
pub use ttl::{
    ManualClock, StateTtlConfig, StateVisibility, SystemClock, TtlClock, TtlTimeDomain, TtlValue,
    UpdateType,
};
