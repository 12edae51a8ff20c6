//! Eddy's runtime: executes a job graph on timely dataflow.
//!
//! This crate owns *how* a job runs, not what it computes:
//!
//! * **Parallel subtasks are timely workers.** A job with parallelism `p` runs `p` timely
//!   workers (threads in one process by default). Every worker builds the same dataflow from the
//!   shared [`JobGraph`]; an operator with a smaller parallelism simply gets no data on the
//!   workers above it.
//! * **`key_by` is timely's exchange pact**, routed by key group: a record goes to the worker
//!   `kg * p / max_parallelism` (see [`eddy_core::key_group`]), so all events of one key reach
//!   the same [`KeyedProcessFunction`] instance.
//! * **Timestamps are checkpoint epochs**, never event time. An epoch is a slice of
//!   [`JobConfig::epoch_interval`] of wall-clock time, the same on every worker, and sources
//!   never run more than [`JobConfig::max_epochs_in_flight`] epochs ahead of the sinks: timely
//!   has no flow control, so this is what bounds the memory held in channels.
//! * **Failure is all-or-nothing**, as in timely: the first error (or panic) of any operator
//!   stops every worker, and [`execute`] returns it with the operator and subtask named.
//! * **Several processes** ([`ClusterConfig`]): the same job runs as `N` processes of `W`
//!   workers each on timely's TCP allocator; worker `w` of process `p` is subtask `p * W + w`,
//!   records crossing processes are serialized with serde, and checkpoints are completed
//!   across processes through the shared checkpoint storage (process 0 writes `_metadata`).
//!   A process whose peer dies fails with [`eddy_core::ClusterError::PeerLost`]; its
//!   supervisor restarts all processes from the latest checkpoint.
//!
//! It depends on `eddy-core`, `eddy-state` and `timely`, never on the user-facing API or on
//! connectors: those are built on the [`Source`], [`Sink`] and [`KeyedProcessFunction`] traits
//! defined here.

mod broadcast_function;
pub mod checkpoint;
mod cluster;
mod config;
mod execute;
mod failure;
mod function;
mod graph;
mod metrics;
mod operators;
mod sink;
mod source;
pub mod time;
pub mod windows;

pub use broadcast_function::{
    BroadcastContext, KeyedBroadcastProcessFunction, ReadOnlyBroadcastContext,
};
pub use config::{ClusterConfig, JobConfig, StateBackendKind};
pub use execute::{execute, JobResult};
pub use function::{
    Collector, Context, KeyedProcessFunction, OnTimerContext, OpenContext, TimerService,
};
pub use graph::{Built, JobGraph, SinkNode, StreamNode, WorkerContext};
pub use metrics::{OperatorMetrics, OperatorSummary};
pub use operators::{
    BroadcastStateSpec, FilterNode, FlatMapNode, KeyedBroadcastInputs, KeyedBroadcastNode,
    KeyedProcessNode, MapNode, SinkOperatorNode, SourceNode, TimestampsAndWatermarksNode,
    WatermarkStrategy,
};
pub use sink::{Sink, SinkContext};
pub use source::{Source, SourceContext, SourceReader, SourceStatus};
pub use time::{ProcessingClock, Stamped, WatermarkStatus, MAX_WATERMARK, MIN_WATERMARK};

/// The timely timestamp of every Eddy dataflow: a checkpoint epoch.
pub type Epoch = u64;
