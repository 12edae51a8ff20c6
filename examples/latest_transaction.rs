//! The Flink Cookbook's "latest transaction per customer" recipe.
//!
//! ```text
//! transactions ──key_by(customer_id)──▶ LatestTransactionFunction ──▶ sink
//!                                        ValueState<Transaction> "latest"
//! ```
//!
//! For every customer the function keeps the most recent transaction in a `ValueState` and
//! emits an incoming transaction when it is newer than the one stored. One function instance
//! per parallel subtask serves all the customers routed to it; the runtime sets the current
//! customer before each call, so `latest.value()` reads *that customer's* transaction.

use std::time::Duration;

use clap::Args;
use eddy::prelude::*;

/// Keeps the latest transaction of each customer and emits each new latest one.
#[derive(Clone, Debug, Default)]
pub struct LatestTransactionFunction;

impl KeyedProcessFunction for LatestTransactionFunction {
    type Key = u64;
    type In = Transaction;
    type Out = Transaction;
    type State = ValueState<Transaction>;

    /// Called once per subtask: registers the state from its descriptor.
    fn open(&mut self, ctx: &mut OpenContext<'_, u64>) -> Result<Self::State> {
        ctx.value_state(&ValueStateDescriptor::new("latest"))
    }

    /// Called for every transaction, with its customer as the current key.
    fn process_element(
        &mut self,
        latest: &mut Self::State,
        incoming: Transaction,
        _ctx: &mut Context<'_, u64>,
        out: &mut Collector<'_, Transaction>,
    ) -> Result<()> {
        let is_newer = latest
            .value()?
            .is_none_or(|current| incoming.timestamp > current.timestamp);
        if is_newer {
            latest.update(incoming)?;
            out.collect(incoming);
        }
        Ok(())
    }
}

/// The job's own parameters (besides the standard job flags).
#[derive(Args, Clone, Debug)]
pub struct LatestTransactionArgs {
    /// Number of generated transactions.
    #[arg(long = "n", default_value_t = 10_000_000)]
    pub events: u64,
    /// Number of distinct customers.
    #[arg(long = "k", default_value_t = 1_000_000)]
    pub customers: u64,
    /// Generator seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// What a run of the job did.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Transactions processed.
    pub events: u64,
    /// New latest transactions emitted.
    pub emitted: u64,
    /// Wall time from job start to the last record at the sink.
    pub duration: Duration,
    /// The job's parallelism.
    pub parallelism: usize,
}

impl Summary {
    /// Events per second.
    pub fn events_per_second(&self) -> f64 {
        self.events as f64 / self.duration.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

/// Builds and runs the job in `env` on generated transactions.
pub fn run(env: &StreamExecutionEnvironment, args: &LatestTransactionArgs) -> Result<Summary> {
    let emitted = CountingSink::<Transaction>::new();
    env.from_source_named(
        "transactions",
        TransactionGenerator::new(args.customers, args.seed).source(args.events),
    )
    .key_by(|tx: &Transaction| tx.customer_id)
    .process_named("latest-transaction", LatestTransactionFunction)
    .sink_named("emitted", emitted.clone());
    let result = env.execute("latest-transaction")?;
    Ok(Summary {
        events: result
            .operator("latest-transaction")
            .map_or(0, |o| o.records_in),
        emitted: emitted.count(),
        duration: result.duration,
        parallelism: result.parallelism,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn emits_every_new_latest_transaction_per_customer() -> Result<()> {
        let args = LatestTransactionArgs {
            events: 20_000,
            customers: 500,
            seed: 7,
        };
        // Parallelism 1: one source subtask emits in timestamp order, so every event is new.
        let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(1));
        let summary = run(&env, &args)?;
        assert_eq!((summary.events, summary.emitted), (20_000, 20_000));

        // Parallelism 2: two sources interleave; the last emitted transaction per customer is
        // still that customer's newest, and nothing newer was ever dropped.
        let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(2));
        let out = CollectSink::new();
        env.from_source(TransactionGenerator::new(args.customers, args.seed).source(args.events))
            .key_by(|tx: &Transaction| tx.customer_id)
            .process(LatestTransactionFunction)
            .sink(out.clone())
            .set_parallelism(1);
        env.execute("latest-transaction")?;
        let mut last_emitted: HashMap<u64, Transaction> = HashMap::new();
        for tx in out.take() {
            let entry = last_emitted.entry(tx.customer_id).or_insert(tx);
            assert!(
                tx.timestamp >= entry.timestamp,
                "emitted an older transaction"
            );
            *entry = tx;
        }
        let generator = TransactionGenerator::new(args.customers, args.seed);
        let mut newest: HashMap<u64, Transaction> = HashMap::new();
        for i in 0..args.events {
            let tx = eddy::connectors::Generator::generate(&generator, i);
            newest.insert(tx.customer_id, tx);
        }
        assert_eq!(last_emitted, newest);
        Ok(())
    }
}
