//! Bounded, deterministic generator sources.

use std::sync::Arc;
use std::time::Instant;

use eddy_core::{Data, Result};
use eddy_runtime::{Source, SourceContext, SourceReader, SourceStatus};
use eddy_state::{ListStateDescriptor, OperatorListState, OperatorStateStore};
use serde::{Deserialize, Serialize};

/// Produces record `index` of a generated stream; a pure function of `index`.
pub trait Generator: Send + Sync + 'static {
    /// The generated records.
    type Item: Data;

    /// Record number `index`.
    fn generate(&self, index: u64) -> Self::Item;
}

impl<T: Data, F: Fn(u64) -> T + Send + Sync + 'static> Generator for F {
    type Item = T;

    fn generate(&self, index: u64) -> T {
        self(index)
    }
}

/// A bounded source producing `generator.generate(i)` for `i` in `0..count`, split into
/// contiguous ranges, one per subtask (as Flink's `NumberSequenceSource`).
///
/// Its position is checkpointed: each split's remaining range is an element of the even-split
/// operator list state `generator-splits`, so a restore resumes exactly where the checkpoint
/// was taken, at any parallelism (the remaining ranges are dealt out to the new subtasks).
///
/// ```
/// use eddy_connectors::generator::GeneratorSource;
///
/// let source = GeneratorSource::new(10, |i: u64| i * 2);
/// assert_eq!(source.split(0, 3), 0..4);
/// assert_eq!(source.split(2, 3), 7..10);
/// ```
pub struct GeneratorSource<G> {
    count: u64,
    generator: Arc<G>,
    /// At most this many records per second per subtask (`None`: as fast as possible).
    rate: Option<u64>,
}

/// The name of the generator's position in its operator state.
const SPLITS_STATE: &str = "generator-splits";

impl<G: Generator> GeneratorSource<G> {
    /// `count` records made by `generator`.
    pub fn new(count: u64, generator: G) -> Self {
        GeneratorSource {
            count,
            generator: Arc::new(generator),
            rate: None,
        }
    }

    /// Limits each subtask to `per_second` records per second: a stand-in for a live source,
    /// so that a job runs long enough to be checkpointed and killed in tests and demos.
    pub fn with_rate(mut self, per_second: u64) -> Self {
        self.rate = Some(per_second.max(1));
        self
    }

    /// The range of indices subtask `subtask` of `parallelism` produces (without a restore).
    pub fn split(&self, subtask: usize, parallelism: usize) -> std::ops::Range<u64> {
        let parallelism = parallelism.max(1) as u64;
        let subtask = subtask as u64;
        let per_split = self.count / parallelism;
        let remainder = self.count % parallelism;
        let start = subtask * per_split + subtask.min(remainder);
        let len = per_split + u64::from(subtask < remainder);
        start..start + len
    }
}

impl<G: Generator> Source for GeneratorSource<G> {
    type Item = G::Item;
    type Reader = GeneratorReader<G>;

    fn create_reader(&self, ctx: SourceContext) -> Result<GeneratorReader<G>> {
        Ok(self.reader(vec![self.split(ctx.subtask, ctx.parallelism)], None))
    }

    fn create_reader_with_state(
        &self,
        ctx: SourceContext,
        state: &mut OperatorStateStore,
    ) -> Result<GeneratorReader<G>> {
        let positions = state.list_state(&ListStateDescriptor::<(u64, u64)>::new(SPLITS_STATE))?;
        // Finished splits stay in the state as empty ranges. An empty list in a restored
        // subtask means its splits went to others (restored at a parallelism above the
        // number of splits): it reads nothing.
        let restored: Vec<(u64, u64)> = positions.get()?.collect();
        let ranges = if restored.is_empty() && !state.is_restored() {
            vec![self.split(ctx.subtask, ctx.parallelism)]
        } else {
            restored
                .into_iter()
                .map(|(start, end)| start..end)
                .collect()
        };
        Ok(self.reader(ranges, Some(positions)))
    }
}

impl<G: Generator> GeneratorSource<G> {
    fn reader(
        &self,
        ranges: Vec<std::ops::Range<u64>>,
        positions: Option<OperatorListState<(u64, u64)>>,
    ) -> GeneratorReader<G> {
        GeneratorReader {
            generator: Arc::clone(&self.generator),
            current: 0,
            ranges,
            positions,
            rate: self.rate.map(|per_second| RateLimit {
                per_second,
                started: Instant::now(),
                emitted: 0,
            }),
        }
    }
}

/// A records-per-second budget, measured from the reader's start.
struct RateLimit {
    per_second: u64,
    started: Instant,
    emitted: u64,
}

impl RateLimit {
    /// How many records may go out now.
    fn allowance(&self) -> u64 {
        let due = self.started.elapsed().as_micros() * u128::from(self.per_second) / 1_000_000;
        (due as u64).saturating_sub(self.emitted)
    }
}

/// Reads one subtask's ranges of a [`GeneratorSource`].
pub struct GeneratorReader<G> {
    generator: Arc<G>,
    /// The remaining range of every split this subtask owns; finished ones are empty.
    ranges: Vec<std::ops::Range<u64>>,
    /// The split being read.
    current: usize,
    /// Where the ranges are checkpointed (absent when created without operator state).
    positions: Option<OperatorListState<(u64, u64)>>,
    rate: Option<RateLimit>,
}

impl<G: Generator> SourceReader for GeneratorReader<G> {
    type Item = G::Item;

    #[inline]
    fn poll(&mut self, out: &mut Vec<G::Item>, max: usize) -> Result<SourceStatus> {
        let mut max = max as u64;
        if let Some(rate) = &self.rate {
            max = max.min(rate.allowance());
        }
        while self.ranges.get(self.current).is_some_and(|r| r.is_empty()) {
            self.current += 1;
        }
        let Some(range) = self.ranges.get_mut(self.current) else {
            return Ok(SourceStatus::Finished);
        };
        let end = range.end.min(range.start + max);
        let generator = &*self.generator;
        out.extend((range.start..end).map(|i| generator.generate(i)));
        if let Some(rate) = &mut self.rate {
            rate.emitted += end - range.start;
        }
        range.start = end;
        let done = self.ranges[self.current..].iter().all(|r| r.is_empty());
        Ok(if done {
            SourceStatus::Finished
        } else {
            SourceStatus::More
        })
    }

    fn snapshot_state(&mut self) -> Result<()> {
        if let Some(positions) = &self.positions {
            positions.update(self.ranges.iter().map(|r| (r.start, r.end)).collect())?;
        }
        Ok(())
    }
}

/// A customer transaction: the event type of the Flink Cookbook's keyed-state recipes and of
/// the benchmark workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Transaction {
    /// The customer (the key of every keyed workload).
    pub customer_id: u64,
    /// The transaction's sequence number.
    pub transaction_id: u64,
    /// The amount in cents.
    pub amount: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp: u64,
}

/// The anchor's transaction stream: event `i` is a pure function of `(seed, k, i)`, built from
/// outputs `2i` and `2i + 1` of splitmix64 seeded with `seed` (all arithmetic wrapping u64).
///
/// ```
/// use eddy_connectors::{Transaction, TransactionGenerator, Generator};
/// let events = TransactionGenerator::new(1_000_000, 42);
/// assert_eq!(events.generate(0), Transaction {
///     customer_id: 275_413, transaction_id: 0, amount: 92_292, timestamp: 1_700_000_000_000,
/// });
/// ```
#[derive(Clone, Copy, Debug)]
pub struct TransactionGenerator {
    customers: u64,
    seed: u64,
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
/// The anchor's first timestamp (2023-11-14), in milliseconds.
const BASE_TIMESTAMP_MS: u64 = 1_700_000_000_000;

#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl TransactionGenerator {
    /// Transactions over `customers` distinct customers (K), from `seed`.
    pub fn new(customers: u64, seed: u64) -> Self {
        TransactionGenerator {
            customers: customers.max(1),
            seed,
        }
    }

    /// A source of the first `count` transactions (N).
    pub fn source(self, count: u64) -> GeneratorSource<Self> {
        GeneratorSource::new(count, self)
    }
}

impl Generator for TransactionGenerator {
    type Item = Transaction;

    #[inline]
    fn generate(&self, i: u64) -> Transaction {
        let base = self
            .seed
            .wrapping_add(i.wrapping_mul(2).wrapping_mul(GOLDEN));
        let r0 = mix(base.wrapping_add(GOLDEN));
        let r1 = mix(base.wrapping_add(GOLDEN.wrapping_mul(2)));
        Transaction {
            customer_id: r0 % self.customers,
            transaction_id: i,
            amount: 1 + r1 % 100_000,
            timestamp: BASE_TIMESTAMP_MS.wrapping_add(i),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tx(customer_id: u64, transaction_id: u64, amount: u64, timestamp: u64) -> Transaction {
        Transaction {
            customer_id,
            transaction_id,
            amount,
            timestamp,
        }
    }

    /// The check values of `shared/anchors/flink/README.md` (seed 42, K = 1,000,000).
    #[test]
    fn reproduces_the_anchor_check_values() {
        let g = TransactionGenerator::new(1_000_000, 42);
        assert_eq!(g.generate(0), tx(275_413, 0, 92_292, 1_700_000_000_000));
        assert_eq!(g.generate(1), tx(763_858, 1, 55_765, 1_700_000_000_001));
        assert_eq!(g.generate(2), tx(963_250, 2, 89_063, 1_700_000_000_002));
        assert_eq!(
            g.generate(19_999_999),
            tx(568_616, 19_999_999, 88_654, 1_700_019_999_999)
        );
    }

    #[test]
    fn splits_are_contiguous_and_cover_the_range() {
        let source = GeneratorSource::new(20_000_000, |i: u64| i);
        assert_eq!(source.split(0, 2), 0..10_000_000);
        assert_eq!(source.split(1, 2), 10_000_000..20_000_000);
        let odd = GeneratorSource::new(10, |i: u64| i);
        let splits: Vec<_> = (0..3).map(|s| odd.split(s, 3)).collect();
        assert_eq!(splits, vec![0..4, 4..7, 7..10]);
    }

    #[test]
    fn reader_emits_its_range_in_order_in_bounded_polls() -> Result<()> {
        let source = GeneratorSource::new(10, |i: u64| i * 10);
        let mut reader = source.create_reader(SourceContext {
            subtask: 1,
            parallelism: 2,
        })?;
        let mut out = Vec::new();
        assert_eq!(reader.poll(&mut out, 3)?, SourceStatus::More);
        assert_eq!(reader.poll(&mut out, 3)?, SourceStatus::Finished);
        assert_eq!(out, vec![50, 60, 70, 80, 90]);
        Ok(())
    }
}
