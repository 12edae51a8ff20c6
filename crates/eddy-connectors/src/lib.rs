//! Eddy's connectors: where records come from and where they go.
//!
//! * [`generator`]: [`GeneratorSource`], a bounded source whose record `i` is a pure function
//!   of `i`, split into contiguous ranges per subtask like Flink's `NumberSequenceSource`; and
//!   [`TransactionGenerator`], the exact event stream of the Flink keyed-state anchor
//!   (`shared/anchors/flink/README.md`).
//! * [`file`]: JSON-lines and CSV file sources and sinks for `serde` types. A malformed line is
//!   an error naming the file and line, or goes to a dead-letter sink if one is configured.
//! * [`collect`]: [`CollectSink`] (keeps every record, for tests) and [`CountingSink`] (counts
//!   records and sums a checksum, for benchmarks).
//!
//! Connectors implement the runtime's [`Source`](eddy_runtime::Source) and
//! [`Sink`](eddy_runtime::Sink) traits. This crate must not depend on the user-facing `eddy`
//! crate or on a state backend.

pub mod collect;
pub mod file;
pub mod generator;

pub use collect::{CollectSink, CountingSink};
pub use generator::{Generator, GeneratorSource, Transaction, TransactionGenerator};
