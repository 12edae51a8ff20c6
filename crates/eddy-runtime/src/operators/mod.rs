//! The operators Eddy builds into timely dataflows, one file each.

mod keyed_broadcast;
mod keyed_checkpoint;
mod keyed_process;
pub(crate) mod keyed_shell;
mod sink;
mod source;
mod stateless;
mod watermarks;

pub use keyed_broadcast::{BroadcastStateSpec, KeyedBroadcastInputs, KeyedBroadcastNode};
pub(crate) use keyed_checkpoint::{
    finish_keyed_restore, keyed_state_part, restore_keyed_state, PendingParts,
};
pub use keyed_process::KeyedProcessNode;
pub(crate) use keyed_process::{key_group_route, keyed_backend};
pub use sink::SinkOperatorNode;
pub use source::SourceNode;
pub use stateless::{FilterNode, FlatMapNode, MapNode};
pub use watermarks::{TimestampsAndWatermarksNode, WatermarkStrategy};

use eddy_core::{EddyError, Result};

/// Checks an operator's own parallelism against the job's.
pub(crate) fn check_parallelism(operator: &str, own: Option<usize>, job: usize) -> Result<()> {
    match own {
        Some(p) if p == 0 || p > job => Err(EddyError::Config(format!(
            "operator \"{operator}\" has parallelism {p}, but it must be between 1 and the job's parallelism {job}"
        ))),
        _ => Ok(()),
    }
}
