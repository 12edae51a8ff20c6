//! Running totals per customer with exactly-once output: the job the crash tests kill.
//!
//! ```text
//! transactions ──key_by(customer_id)──▶ CustomerTotalsFunction ──▶ FileSink (exactly-once)
//!   (generator,                          ValueState<Totals> "totals"
//!    position checkpointed)              MapState<u64, u64> "by-bucket"
//! ```
//!
//! For every transaction the function adds it to its customer's totals (a `ValueState`, as
//! W1) and to a per-amount-bucket count (a `MapState`, as W3), and emits the customer's new
//! totals. The multiset of emitted records does not depend on how the source subtasks
//! interleave: each customer's `count` runs 1, 2, ..., n exactly once. So a run that was
//! killed and restored any number of times must publish exactly the records of a run that
//! never failed, which is what `crates/eddy-cli/tests/crash_recovery.rs` checks.

use std::path::PathBuf;

use clap::Args;
use eddy::prelude::*;
use serde::{Deserialize, Serialize};

/// One customer's totals, as stored and as emitted.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct Totals {
    /// The customer.
    pub customer_id: u64,
    /// Transactions so far.
    pub count: u64,
    /// Sum of their amounts.
    pub amount: u64,
    /// Transactions so far in this transaction's amount bucket (amount / 10,000).
    pub in_bucket: u64,
}

/// Keeps each customer's totals and per-bucket counts; emits the new totals per event.
#[derive(Clone, Debug, Default)]
pub struct CustomerTotalsFunction;

impl KeyedProcessFunction for CustomerTotalsFunction {
    type Key = u64;
    type In = Transaction;
    type Out = Totals;
    type State = (ValueState<Totals>, MapState<u64, u64>);

    fn open(&mut self, ctx: &mut OpenContext<'_, u64>) -> Result<Self::State> {
        Ok((
            ctx.value_state(&ValueStateDescriptor::new("totals"))?,
            ctx.map_state(&MapStateDescriptor::new("by-bucket"))?,
        ))
    }

    fn process_element(
        &mut self,
        (totals, buckets): &mut Self::State,
        tx: Transaction,
        _ctx: &mut Context<'_, u64>,
        out: &mut Collector<'_, Totals>,
    ) -> Result<()> {
        let bucket = tx.amount / 10_000;
        let in_bucket = buckets.get(&bucket)?.unwrap_or(0) + 1;
        buckets.put(bucket, in_bucket)?;
        let mut current = totals.value()?.unwrap_or_default();
        current.customer_id = tx.customer_id;
        current.count += 1;
        current.amount += tx.amount;
        current.in_bucket = in_bucket;
        totals.update(current)?;
        out.collect(current);
        Ok(())
    }
}

/// The job's own parameters (besides the standard job flags).
#[derive(Args, Clone, Debug)]
pub struct CustomerTotalsArgs {
    /// Number of generated transactions.
    #[arg(long = "n", default_value_t = 1_000_000)]
    pub events: u64,
    /// Number of distinct customers.
    #[arg(long = "k", default_value_t = 10_000)]
    pub customers: u64,
    /// Generator seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// At most this many transactions per second per source subtask [default: unlimited].
    #[arg(long)]
    pub rate: Option<u64>,
    /// The directory the exactly-once JSON-lines output goes to.
    #[arg(long)]
    pub output: PathBuf,
}

/// Builds and runs the job in `env`.
pub fn run(env: &StreamExecutionEnvironment, args: &CustomerTotalsArgs) -> Result<JobResult> {
    let mut source = TransactionGenerator::new(args.customers, args.seed).source(args.events);
    if let Some(rate) = args.rate {
        source = source.with_rate(rate);
    }
    // One source subtask: each customer's transactions then reach its keyed subtask in the
    // generator's order, so running totals do not depend on thread timing.
    env.from_source_named("transactions", source)
        .set_parallelism(1)
        .uid("transactions")
        .key_by(|tx: &Transaction| tx.customer_id)
        .process_named("customer-totals", CustomerTotalsFunction)
        .uid("customer-totals")
        .sink_named("totals-out", FileSink::json_lines(&args.output))
        .uid("totals-out");
    env.execute("customer-totals")
}

/// The expected output of a run without failures: every customer's totals after each of its
/// transactions, sorted.
pub fn expected_output(args: &CustomerTotalsArgs) -> Vec<Totals> {
    use std::collections::HashMap;
    let generator = TransactionGenerator::new(args.customers, args.seed);
    let mut totals: HashMap<u64, Totals> = HashMap::new();
    let mut buckets: HashMap<(u64, u64), u64> = HashMap::new();
    let mut out = Vec::with_capacity(args.events as usize);
    for i in 0..args.events {
        let tx = eddy::connectors::Generator::generate(&generator, i);
        let in_bucket = buckets
            .entry((tx.customer_id, tx.amount / 10_000))
            .or_default();
        *in_bucket += 1;
        let t = totals.entry(tx.customer_id).or_default();
        t.customer_id = tx.customer_id;
        t.count += 1;
        t.amount += tx.amount;
        t.in_bucket = *in_bucket;
        out.push(*t);
    }
    out.sort_unstable();
    out
}
