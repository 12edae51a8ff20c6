//! Eddy's foundation: the vocabulary every other crate shares.
//!
//! This crate owns three things and nothing else:
//!
//! * **Keys** ([`Key`]): the types a stream can be keyed by, each with a *stable* hash
//!   ([`Key::stable_hash`]) that is identical on every machine, every run and every Eddy
//!   version, because the assignment of keys to key groups is persisted in checkpoints.
//!   The hash is Java's `hashCode` for the corresponding Java type, so a key lands in the same
//!   key group as it would in Apache Flink.
//! * **Key groups** ([`key_group`]): Flink's unit of state sharding and rescaling.
//!   `key group = murmur(stable_hash(key)) % max_parallelism`; subtask `i` of `p` owns the
//!   contiguous range [`KeyGroupRange::for_subtask`].
//! * **Errors** ([`EddyError`]): the one error type of the workspace, grouped by cause.
//!
//! It must not depend on any other Eddy crate, on timely dataflow, or on a state backend.
//!
//! # Examples
//!
//! ```
//! use eddy_core::{Key, KeyGroupRange, key_group::assign_to_key_group};
//!
//! // Customer 42 is in the same key group on every machine and in every run.
//! let kg = assign_to_key_group(&42u64, 128);
//! assert_eq!(kg, assign_to_key_group(&42u64, 128));
//! // With parallelism 2 and 128 key groups, subtask 0 owns key groups 0..=63.
//! let range = KeyGroupRange::for_subtask(128, 2, 0);
//! assert_eq!((range.start(), range.end()), (0, 63));
//! ```

pub mod error;
pub mod key;
pub mod key_group;

pub use error::{ClusterError, EddyError, JobFailure, Result, SchemaMismatch};
pub use key::{java_string_hash, Data, Key, StateValue};
pub use key_group::{KeyGroup, KeyGroupRange, MAX_MAX_PARALLELISM};
