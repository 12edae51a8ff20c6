//! Sources: where a job's records come from.

use eddy_core::{Data, Result};
use eddy_state::OperatorStateStore;

/// Where one source subtask reads.
#[derive(Clone, Copy, Debug)]
pub struct SourceContext {
    /// This subtask's index, `0..parallelism`.
    pub subtask: usize,
    /// The source's parallelism.
    pub parallelism: usize,
}

/// A (possibly bounded) source of records, split between its parallel subtasks.
///
/// The source value is built once by the job program and shared by all subtasks; each subtask
/// creates its own [`SourceReader`] for its share of the input (like Flink's splits).
pub trait Source: Send + Sync + 'static {
    /// The records it produces.
    type Item: Data;
    /// The per-subtask reader.
    type Reader: SourceReader<Item = Self::Item>;

    /// Creates the reader of subtask `ctx.subtask`.
    fn create_reader(&self, ctx: SourceContext) -> Result<Self::Reader>;

    /// Creates the reader of subtask `ctx.subtask` with the subtask's operator state store,
    /// where a reader that needs operator state (e.g. its position) registers list or union
    /// list states and keeps the handles. The store belongs to the source operator's subtask;
    /// checkpoints will snapshot and restore it. By default: [`create_reader`](Self::create_reader).
    fn create_reader_with_state(
        &self,
        ctx: SourceContext,
        _state: &mut OperatorStateStore,
    ) -> Result<Self::Reader> {
        self.create_reader(ctx)
    }
}

/// What a [`SourceReader::poll`] call left behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceStatus {
    /// More records may follow.
    More,
    /// The reader's input is exhausted; it will not be polled again.
    Finished,
}

/// Reads one subtask's share of a source.
pub trait SourceReader: 'static {
    /// The records it produces.
    type Item;

    /// Appends at most `max` records to `out`.
    fn poll(&mut self, out: &mut Vec<Self::Item>, max: usize) -> Result<SourceStatus>;

    /// A checkpoint's barrier has come: write the reader's position (everything before the
    /// next record it would return) into the operator state it registered in
    /// [`Source::create_reader_with_state`]. Called between two polls, and once more after
    /// the reader finished. A reader that keeps no position (the default) is replayed from
    /// its start after a restore.
    fn snapshot_state(&mut self) -> Result<()> {
        Ok(())
    }
}
