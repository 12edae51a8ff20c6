//! Schema evolution through a real savepoint: version 1 of a job keeps a struct per customer
//! in a `ValueState` and ends with a savepoint; version 2 restores it with an evolved struct
//! (a field added, a field removed, fields reordered), reads every customer's migrated value,
//! and must see exactly what version 1 stored. An incompatible field type and a changed key
//! type are refused with an error naming the operator, the state and the change. On both
//! backends, and from a heap savepoint into RocksDB.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::marker::PhantomData;
use std::path::Path;
use std::time::Duration;

use eddy::checkpoint::CheckpointConfig;
use eddy::connectors::Generator;
use eddy::prelude::*;
use eddy::StateBackendKind;
use serde::de::DeserializeOwned;
use serde::Serialize;

const CUSTOMERS: u64 = 200;
const SEED: u64 = 11;
/// Version 1 reads `V1_EVENTS` transactions, version 2 `V2_EVENTS` others.
const V1_EVENTS: u64 = 6_000;
const V2_EVENTS: u64 = 6_000;

/// The state of version 1: what it knows about a customer.
mod v1 {
    use serde::{Deserialize, Serialize};

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct Customer {
        pub id: u64,
        pub count: u32,
        pub last_amount: u64,
        pub note: String,
    }
}

/// The evolved versions of the state a version 2 may register.
mod v2 {
    use serde::{Deserialize, Serialize};

    /// A field added, with a default.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct Added {
        pub id: u64,
        pub count: u32,
        pub last_amount: u64,
        pub note: String,
        #[serde(default)]
        pub vip: bool,
    }

    /// A field removed (`note`), and `count` widened to u64.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct Removed {
        pub id: u64,
        pub count: u64,
        pub last_amount: u64,
    }

    /// The same fields in another order.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct Reordered {
        pub note: String,
        pub last_amount: u64,
        pub id: u64,
        pub count: u32,
    }

    /// `last_amount` changed from u64 to String: incompatible.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    pub struct TextAmount {
        pub id: u64,
        pub count: u32,
        pub last_amount: String,
        pub note: String,
    }
}

/// Version 1: counts each customer's transactions and keeps the last amount.
#[derive(Clone)]
struct TrackV1;

impl KeyedProcessFunction for TrackV1 {
    type Key = u64;
    type In = Transaction;
    type Out = u64;
    type State = ValueState<v1::Customer>;

    fn open(&mut self, ctx: &mut OpenContext<'_, u64>) -> Result<Self::State> {
        ctx.value_state(&ValueStateDescriptor::new("customer"))
    }

    fn process_element(
        &mut self,
        state: &mut Self::State,
        tx: Transaction,
        _ctx: &mut Context<'_, u64>,
        _out: &mut Collector<'_, u64>,
    ) -> Result<()> {
        let mut customer = state.value()?.unwrap_or(v1::Customer {
            id: tx.customer_id,
            count: 0,
            last_amount: 0,
            note: format!("customer {}", tx.customer_id),
        });
        customer.count += 1;
        customer.last_amount = tx.amount;
        state.update(customer)
    }
}

/// What version 1 leaves per customer, computed directly from the event stream.
fn expected_v1() -> BTreeMap<u64, v1::Customer> {
    let generator = TransactionGenerator::new(CUSTOMERS, SEED);
    let mut customers: BTreeMap<u64, v1::Customer> = BTreeMap::new();
    for i in 0..V1_EVENTS {
        let tx = generator.generate(i);
        let customer = customers.entry(tx.customer_id).or_insert(v1::Customer {
            id: tx.customer_id,
            count: 0,
            last_amount: 0,
            note: format!("customer {}", tx.customer_id),
        });
        customer.count += 1;
        customer.last_amount = tx.amount;
    }
    customers
}

/// Version 2: emits the restored value of each customer the first time it sees them, then
/// never touches the state (what it emits is exactly what the restore produced).
struct ReadV2<S>(PhantomData<fn() -> S>);

impl<S> Clone for ReadV2<S> {
    fn clone(&self) -> Self {
        ReadV2(PhantomData)
    }
}

impl<S> KeyedProcessFunction for ReadV2<S>
where
    S: Clone + Send + Sync + Serialize + DeserializeOwned + Debug + 'static,
{
    type Key = u64;
    type In = Transaction;
    type Out = (u64, S);
    type State = (ValueState<S>, ValueState<bool>);

    fn open(&mut self, ctx: &mut OpenContext<'_, u64>) -> Result<Self::State> {
        Ok((
            ctx.value_state(&ValueStateDescriptor::new("customer"))?,
            ctx.value_state(&ValueStateDescriptor::new("reported"))?,
        ))
    }

    fn process_element(
        &mut self,
        (customer, reported): &mut Self::State,
        tx: Transaction,
        _ctx: &mut Context<'_, u64>,
        out: &mut Collector<'_, (u64, S)>,
    ) -> Result<()> {
        if reported.value()?.is_none() {
            reported.update(true)?;
            if let Some(value) = customer.value()? {
                out.collect((tx.customer_id, value));
            }
        }
        Ok(())
    }
}

/// A customer keyed by its id as a string: a changed key type.
#[derive(Clone)]
struct StringKeyed;

impl KeyedProcessFunction for StringKeyed {
    type Key = String;
    type In = Transaction;
    type Out = u64;
    type State = ValueState<v1::Customer>;

    fn open(&mut self, ctx: &mut OpenContext<'_, String>) -> Result<Self::State> {
        ctx.value_state(&ValueStateDescriptor::new("customer"))
    }

    fn process_element(
        &mut self,
        _state: &mut Self::State,
        _tx: Transaction,
        _ctx: &mut Context<'_, String>,
        _out: &mut Collector<'_, u64>,
    ) -> Result<()> {
        Ok(())
    }
}

fn config(dir: &Path, backend: StateBackendKind, restore: Option<String>) -> JobConfig {
    JobConfig {
        parallelism: 2,
        state_backend: backend,
        checkpoint: CheckpointConfig {
            interval: Some(Duration::from_millis(200)),
            location: Some(dir.join("ckpt").to_string_lossy().into_owned()),
            restore,
            savepoint_on_finish: Some("v1".into()),
            allow_non_restored_state: false,
            ..CheckpointConfig::default()
        },
        ..JobConfig::default()
    }
}

/// Version 2 restores `savepoint-v1` and takes no savepoint.
fn v2_config(dir: &Path, backend: StateBackendKind) -> JobConfig {
    let mut config = config(dir, backend, Some("savepoint-v1".into()));
    config.checkpoint.savepoint_on_finish = None;
    config.checkpoint.allow_non_restored_state = true;
    config
}

/// Version 2's input: a new source (version 1's has finished, and its finished position is
/// in the savepoint, dropped with `allow_non_restored_state`).
fn source(env: &StreamExecutionEnvironment) -> DataStream<Transaction> {
    env.from_source_named(
        "more-transactions",
        TransactionGenerator::new(CUSTOMERS, SEED + 1).source(V2_EVENTS),
    )
    .set_parallelism(1)
    .uid("more-transactions")
}

/// Runs version 1 on the first `V1_EVENTS` transactions; ends with the savepoint
/// `savepoint-v1`.
fn run_v1(dir: &Path, backend: StateBackendKind) {
    let env = StreamExecutionEnvironment::new(config(dir, backend, None));
    env.from_source_named(
        "transactions",
        TransactionGenerator::new(CUSTOMERS, SEED).source(V1_EVENTS),
    )
    .set_parallelism(1)
    .uid("transactions")
    .key_by(|tx: &Transaction| tx.customer_id)
    .process_named("track", TrackV1)
    .uid("track")
    .sink(CountingSink::new())
    .uid("count");
    env.execute("schema-v1").unwrap();
}

/// Restores `savepoint-v1` with the state registered as `S`; every restored value, by
/// customer, or the job's error.
fn run_v2<S>(dir: &Path, backend: StateBackendKind) -> Result<BTreeMap<u64, S>>
where
    S: Clone + Send + Sync + Serialize + DeserializeOwned + Debug + 'static,
{
    let env = StreamExecutionEnvironment::new(v2_config(dir, backend));
    let sink = CollectSink::new();
    source(&env)
        .key_by(|tx: &Transaction| tx.customer_id)
        .process_named("track", ReadV2::<S>(PhantomData))
        .uid("track")
        .sink(sink.clone())
        .uid("collect");
    env.execute("schema-v2")?;
    Ok(sink.take().into_iter().collect())
}

fn backends() -> [(StateBackendKind, StateBackendKind); 3] {
    let rocksdb = || StateBackendKind::rocksdb();
    [
        (StateBackendKind::Heap, StateBackendKind::Heap),
        (rocksdb(), rocksdb()),
        (StateBackendKind::Heap, rocksdb()),
    ]
}

/// Every customer version 1 saw, converted by `convert`.
fn expected<S>(convert: impl Fn(&v1::Customer) -> S) -> BTreeMap<u64, S> {
    expected_v1()
        .iter()
        .map(|(id, c)| (*id, convert(c)))
        .collect()
}

#[test]
fn compatible_changes_migrate_every_value_through_a_savepoint() {
    for (before, after) in backends() {
        let dir = tempfile::tempdir().unwrap();
        run_v1(dir.path(), before.clone());
        let label = format!("{before:?} -> {after:?}");

        let added = run_v2::<v2::Added>(dir.path(), after.clone()).unwrap();
        assert_eq!(
            added,
            expected(|c| v2::Added {
                id: c.id,
                count: c.count,
                last_amount: c.last_amount,
                note: c.note.clone(),
                vip: false,
            }),
            "{label}: field added"
        );
        assert_eq!(added.len() as u64, CUSTOMERS, "{label}");

        let removed = run_v2::<v2::Removed>(dir.path(), after.clone()).unwrap();
        assert_eq!(
            removed,
            expected(|c| v2::Removed {
                id: c.id,
                count: u64::from(c.count),
                last_amount: c.last_amount,
            }),
            "{label}: field removed"
        );

        let reordered = run_v2::<v2::Reordered>(dir.path(), after.clone()).unwrap();
        assert_eq!(
            reordered,
            expected(|c| v2::Reordered {
                note: c.note.clone(),
                last_amount: c.last_amount,
                id: c.id,
                count: c.count,
            }),
            "{label}: fields reordered"
        );
    }
}

#[test]
fn incompatible_changes_are_refused_naming_operator_state_and_field() {
    for (before, after) in backends() {
        let dir = tempfile::tempdir().unwrap();
        run_v1(dir.path(), before.clone());
        let label = format!("{before:?} -> {after:?}");

        let err = run_v2::<v2::TextAmount>(dir.path(), after.clone())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "state \"customer\" of operator \"track\": field \"last_amount\" changed from \
                 u64 to String; incompatible"
            ),
            "{label}: {err}"
        );

        let env = StreamExecutionEnvironment::new(v2_config(dir.path(), after.clone()));
        source(&env)
            .key_by(|tx: &Transaction| tx.customer_id.to_string())
            .process_named("track", StringKeyed)
            .uid("track")
            .sink(CountingSink::new())
            .uid("count");
        let err = env.execute("schema-v2-string-key").unwrap_err().to_string();
        assert!(
            err.contains(
                "state \"customer\" of operator \"track\": key type changed from u64 to String; \
                 incompatible (the key type of a state may never change)"
            ),
            "{label}: {err}"
        );

        // The refused restores left the savepoint as it was: the compatible version still
        // restores every value from it.
        let added = run_v2::<v2::Added>(dir.path(), after).unwrap();
        assert_eq!(added.len() as u64, CUSTOMERS, "{label}");
    }
}
