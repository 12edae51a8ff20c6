//! Sinks: where a job's records end up.

use eddy_core::Result;

/// Where one sink subtask writes.
#[derive(Clone, Copy, Debug)]
pub struct SinkContext {
    /// This subtask's index, `0..parallelism`.
    pub subtask: usize,
    /// The sink's parallelism.
    pub parallelism: usize,
    /// The job checkpoints: output must be staged per checkpoint and published only by
    /// [`Sink::commit`] (two-phase commit), so that a restore never shows it twice.
    pub exactly_once: bool,
}

impl SinkContext {
    /// Subtask `subtask` of `parallelism`, in a job without checkpoints.
    pub fn new(subtask: usize, parallelism: usize) -> Self {
        SinkContext {
            subtask,
            parallelism,
            exactly_once: false,
        }
    }
}

/// A destination of records. The job program builds one value; each subtask gets a clone.
pub trait Sink<T>: Clone + Send + Sync + 'static {
    /// Called once per subtask before any record.
    fn open(&mut self, _ctx: SinkContext) -> Result<()> {
        Ok(())
    }

    /// Writes one record.
    fn write(&mut self, record: T) -> Result<()>;

    /// Writes a batch of records, leaving `batch` empty. Override it when batching pays.
    fn write_batch(&mut self, batch: &mut Vec<T>) -> Result<()> {
        for record in batch.drain(..) {
            self.write(record)?;
        }
        Ok(())
    }

    /// Called once per subtask after the last record: flush and release resources.
    fn close(&mut self) -> Result<()> {
        Ok(())
    }

    /// Two-phase commit, phase one (with [`SinkContext::exactly_once`]): the barrier of a
    /// checkpoint has passed this subtask. Make durable what was written since the last call,
    /// without publishing it, and return how to publish it (e.g. the pending files' names).
    /// These *committables* travel in the checkpoint. The default stages nothing: the sink is
    /// then at-least-once (a restore replays what it wrote after the checkpoint).
    fn pre_commit(&mut self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// Phase two: publishes the committables of a completed checkpoint. Called on the
    /// checkpoint coordinator's thread, on a clone of the sink as the job program built it
    /// (never opened), and again after a restore of that checkpoint: it must be idempotent.
    fn commit(&self, _committables: &[String]) -> Result<()> {
        Ok(())
    }

    /// Called once before the job starts, after the committables of the restored checkpoint
    /// (`committed`, empty without a restore) were committed again: discards staged output
    /// no completed checkpoint covers (a crashed run's). Never runs concurrently with writes.
    fn recover(&self, _committed: &[String]) -> Result<()> {
        Ok(())
    }
}
