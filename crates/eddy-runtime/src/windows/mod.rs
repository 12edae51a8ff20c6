//! Windows on keyed state: assigners, session merging, and (with the timers and watermarks
//! of the runtime) the window operator.
//!
//! Window contents live in keyed state under the window as namespace
//! ([`eddy_state::namespace`]), so they are checkpointed and rescaled like any other state.

mod assigners;
mod merging;
mod operator;

pub use assigners::{merge_windows, window_start, TimeWindow, WindowAssigner, WindowTime};
pub use merging::{MergingWindowSet, WindowMerge};
pub use operator::{
    AggregateContents, Emit, LateOutput, ListContents, ProcessWindowFunction, ReduceContents,
    WindowContents, WindowContentsSpec, WindowNode, WindowOutput, WindowSpec,
};
