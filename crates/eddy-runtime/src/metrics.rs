//! Per-operator record counters, summed over subtasks.
//!
//! Operators count locally and publish once per input batch, so counting costs one relaxed
//! atomic add per batch, not per record.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one operator, shared by all its subtasks.
#[derive(Debug, Default)]
pub struct OperatorMetrics {
    name: String,
    records_in: AtomicU64,
    records_out: AtomicU64,
}

impl OperatorMetrics {
    /// Counters for the operator called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        OperatorMetrics {
            name: name.into(),
            ..OperatorMetrics::default()
        }
    }

    /// The operator's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds `n` records received.
    #[inline]
    pub fn add_in(&self, n: usize) {
        self.records_in.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Adds `n` records emitted.
    #[inline]
    pub fn add_out(&self, n: usize) {
        self.records_out.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// A snapshot of the counters.
    pub fn summary(&self) -> OperatorSummary {
        OperatorSummary {
            name: self.name.clone(),
            records_in: self.records_in.load(Ordering::Relaxed),
            records_out: self.records_out.load(Ordering::Relaxed),
        }
    }
}

/// The counters of one operator at the end of a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorSummary {
    /// The operator's name.
    pub name: String,
    /// Records the operator received (for a source: records it read).
    pub records_in: u64,
    /// Records the operator emitted (for a sink: always 0).
    pub records_out: u64,
}
