//! Eddy: stream processing in Rust with Flink-grade managed keyed state.
//!
//! This is the crate users depend on. It owns the **DataStream API**
//! ([`StreamExecutionEnvironment`], [`DataStream`], [`KeyedStream`]) and the **standard job
//! flags** ([`JobFlags`]), and re-exports what a job program needs from the layers below:
//!
//! | crate | owns |
//! | --- | --- |
//! | `eddy-core` | keys and their stable hash, key groups, errors |
//! | `eddy-state` | state descriptors, handles scoped to the current key, backends |
//! | `eddy-runtime` | execution on timely dataflow, the function/source/sink traits |
//! | `eddy-connectors` | generator, file, collect and counting connectors |
//! | `eddy` (this crate) | the DataStream API and job flags |
//!
//! Dependencies point one way: `eddy` -> `eddy-connectors` -> `eddy-runtime` -> `eddy-state`
//! -> `eddy-core`. This crate must not be depended on by any of them.
//!
//! # Example: the latest transaction per customer
//!
//! ```
//! use eddy::prelude::*;
//!
//! #[derive(Clone)]
//! struct LatestTransaction;
//!
//! impl KeyedProcessFunction for LatestTransaction {
//!     type Key = u64;
//!     type In = Transaction;
//!     type Out = Transaction;
//!     type State = ValueState<Transaction>;
//!
//!     fn open(&mut self, ctx: &mut OpenContext<'_, u64>) -> Result<Self::State> {
//!         ctx.value_state(&ValueStateDescriptor::new("latest"))
//!     }
//!
//!     fn process_element(
//!         &mut self,
//!         latest: &mut Self::State,
//!         tx: Transaction,
//!         _ctx: &mut Context<'_, u64>,
//!         out: &mut Collector<'_, Transaction>,
//!     ) -> Result<()> {
//!         match latest.value()? {
//!             Some(current) if current.timestamp > tx.timestamp => {}
//!             _ => {
//!                 latest.update(tx)?;
//!                 out.collect(tx);
//!             }
//!         }
//!         Ok(())
//!     }
//! }
//!
//! let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(1));
//! let results = CollectSink::new();
//! env.from_source(TransactionGenerator::new(100, 42).source(1_000))
//!     .key_by(|tx: &Transaction| tx.customer_id)
//!     .process(LatestTransaction)
//!     .sink(results.clone());
//! let outcome = env.execute("latest-transaction")?;
//! // One source subtask emits timestamps in increasing order, so every transaction is the
//! // latest of its customer when it arrives.
//! assert_eq!(results.len(), 1_000);
//! assert_eq!(outcome.operator("process").map(|o| o.records_in), Some(1_000));
//! # Ok::<(), eddy::EddyError>(())
//! ```

/// The README's examples are compiled and run as doctests.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

mod broadcast;
mod environment;
mod flags;
mod stream;
mod window;

pub use broadcast::{BroadcastConnectedStream, BroadcastStream};
/// Checkpoint, restore and restart settings ([`JobConfig::checkpoint`]).
pub use eddy_runtime::checkpoint;
pub use eddy_runtime::windows::{ProcessWindowFunction, TimeWindow, WindowAssigner, WindowOutput};
pub use environment::StreamExecutionEnvironment;
pub use flags::{BackendFlag, JobFlags};
pub use stream::{DataStream, DataStreamSink, KeyedStream};
pub use window::{LateDataWindowedStream, WindowedStream};

pub use eddy_core::{ClusterError, EddyError, Key, Result};
pub use eddy_runtime::{BroadcastContext, KeyedBroadcastProcessFunction, ReadOnlyBroadcastContext};
pub use eddy_runtime::{
    ClusterConfig, Collector, Context, JobConfig, JobResult, KeyedProcessFunction, OnTimerContext,
    OpenContext, OperatorSummary, ProcessingClock, Sink, SinkContext, Source, SourceContext,
    SourceReader, SourceStatus, StateBackendKind, TimerService, WatermarkStrategy, MAX_WATERMARK,
    MIN_WATERMARK,
};
pub use eddy_state::TimeDomain;
pub use eddy_state::{
    AggregateFunction, AggregatingState, AggregatingStateDescriptor, ListState,
    ListStateDescriptor, ManualClock, MapState, MapStateDescriptor, ReducingState,
    ReducingStateDescriptor, StateTtlConfig, StateVisibility, SystemClock, TtlClock, TtlTimeDomain,
    UpdateType, ValueState, ValueStateDescriptor,
};
pub use eddy_state::{
    BroadcastState, OperatorListState, OperatorStateStore, ReadOnlyBroadcastState,
};

/// The layers below, for what the prelude does not cover.
pub mod layers {
    pub use eddy_connectors as connectors;
    pub use eddy_core as core;
    pub use eddy_runtime as runtime;
    pub use eddy_state as state;
}

/// Connectors (sources and sinks).
pub use eddy_connectors as connectors;

/// Everything a job program usually needs, in one `use`.
pub mod prelude {
    pub use crate::connectors::file::{FileSink, FileSource};
    pub use crate::connectors::{
        CollectSink, CountingSink, GeneratorSource, Transaction, TransactionGenerator,
    };
    pub use crate::{
        AggregateFunction, AggregatingState, AggregatingStateDescriptor, Collector, Context,
        DataStream, EddyError, JobConfig, JobFlags, JobResult, Key, KeyedProcessFunction,
        KeyedStream, ListState, ListStateDescriptor, MapState, MapStateDescriptor, OpenContext,
        ReducingState, ReducingStateDescriptor, Result, Sink, Source, StateTtlConfig,
        StateVisibility, StreamExecutionEnvironment, UpdateType, ValueState, ValueStateDescriptor,
    };
    pub use crate::{
        BroadcastConnectedStream, BroadcastContext, BroadcastState, BroadcastStream,
        KeyedBroadcastProcessFunction, ReadOnlyBroadcastContext, ReadOnlyBroadcastState,
    };
    pub use crate::{
        OnTimerContext, ProcessWindowFunction, TimeDomain, TimeWindow, WatermarkStrategy,
        WindowAssigner, WindowOutput,
    };
}
