//! Sinks: where a job's records end up.

use eddy_core::Result;

/// Where one sink subtask writes.
#[derive(Clone, Copy, Debug)]
pub struct SinkContext {
    /// This subtask's index, `0..parallelism`.
    pub subtask: usize,
    /// The sink's parallelism.
    pub parallelism: usize,
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
}
