//! Sinks for tests and benchmarks: collect every record, or count them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use eddy_core::Result;
use eddy_runtime::Sink;

/// Keeps every record it receives, from all subtasks, for inspection after the job.
///
/// Clones share one buffer, so keep a clone before handing the sink to the job.
///
/// ```
/// use eddy_connectors::CollectSink;
/// use eddy_runtime::Sink;
/// let sink = CollectSink::new();
/// let mut subtask = sink.clone();
/// subtask.write(3).unwrap();
/// assert_eq!(sink.take(), vec![3]);
/// ```
#[derive(Debug)]
pub struct CollectSink<T> {
    records: Arc<Mutex<Vec<T>>>,
}

impl<T> Clone for CollectSink<T> {
    fn clone(&self) -> Self {
        CollectSink {
            records: Arc::clone(&self.records),
        }
    }
}

impl<T> Default for CollectSink<T> {
    fn default() -> Self {
        CollectSink {
            records: Arc::new(Mutex::new(Vec::new())),
        }
    }
}

impl<T> CollectSink<T> {
    /// An empty collect sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// Removes and returns every record collected so far (in arrival order per subtask).
    pub fn take(&self) -> Vec<T> {
        std::mem::take(&mut *self.lock())
    }

    /// The number of records collected so far.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing has been collected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<T>> {
        // A poisoned lock means a subtask panicked mid-push; the records are still valid.
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<T: Send + 'static> Sink<T> for CollectSink<T> {
    fn write(&mut self, record: T) -> Result<()> {
        self.lock().push(record);
        Ok(())
    }

    fn write_batch(&mut self, batch: &mut Vec<T>) -> Result<()> {
        self.lock().append(batch);
        Ok(())
    }
}

/// Counts the records it receives and sums a checksum over them (wrapping `u64`).
///
/// The checksum lets a benchmark verify *what* reached the sink, not only how much: at
/// parallelism 1 it is deterministic.
pub struct CountingSink<T> {
    totals: Arc<Totals>,
    checksum: fn(&T) -> u64,
}

#[derive(Debug, Default)]
struct Totals {
    count: AtomicU64,
    checksum: AtomicU64,
}

impl<T> Clone for CountingSink<T> {
    fn clone(&self) -> Self {
        CountingSink {
            totals: Arc::clone(&self.totals),
            checksum: self.checksum,
        }
    }
}

impl<T> CountingSink<T> {
    /// Counts records; the checksum stays 0.
    pub fn new() -> Self {
        Self::with_checksum(|_| 0)
    }

    /// Counts records and sums `checksum(record)` over them.
    pub fn with_checksum(checksum: fn(&T) -> u64) -> Self {
        CountingSink {
            totals: Arc::new(Totals::default()),
            checksum,
        }
    }

    /// Records received so far, over all subtasks.
    pub fn count(&self) -> u64 {
        self.totals.count.load(Ordering::Relaxed)
    }

    /// The wrapping sum of the checksums of the records received so far.
    pub fn checksum(&self) -> u64 {
        self.totals.checksum.load(Ordering::Relaxed)
    }
}

impl<T> Default for CountingSink<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Send + 'static> Sink<T> for CountingSink<T> {
    fn write(&mut self, record: T) -> Result<()> {
        self.totals.count.fetch_add(1, Ordering::Relaxed);
        self.totals
            .checksum
            .fetch_add((self.checksum)(&record), Ordering::Relaxed);
        Ok(())
    }

    fn write_batch(&mut self, batch: &mut Vec<T>) -> Result<()> {
        let sum = batch
            .iter()
            .fold(0u64, |acc, r| acc.wrapping_add((self.checksum)(r)));
        self.totals
            .count
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.totals.checksum.fetch_add(sum, Ordering::Relaxed);
        batch.clear();
        Ok(())
    }
}
