//! Test scaffolding shared by the checkpoint tests: what an exactly-once file sink published,
//! and a failure injected once a checkpoint has completed.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;

use eddy::layers::state::KeyedStateSnapshot;
use eddy::prelude::*;
use eddy_checkpoint::{Checkpoints, FileKind};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The input of the counting jobs: `EVENTS` transactions over `CUSTOMERS` customers, seed 5.
pub const EVENTS: u64 = 40_000;
/// Customers (keys) of the counting jobs.
pub const CUSTOMERS: u64 = 300;

/// What the counting jobs emit per transaction: its customer's running count and sum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Out {
    pub customer: u64,
    pub count: u64,
    pub sum: u64,
}

/// Running count and sum per customer (a value state), and per customer a count per amount
/// bucket (a map state); fails once where `failure` says.
#[derive(Clone)]
pub struct Totals {
    pub failure: Option<InjectedFailure>,
}

impl KeyedProcessFunction for Totals {
    type Key = u64;
    type In = Transaction;
    type Out = Out;
    type State = (ValueState<Out>, MapState<u64, u64>);

    fn open(&mut self, ctx: &mut OpenContext<'_, u64>) -> Result<Self::State> {
        Ok((
            ctx.value_state(&ValueStateDescriptor::new("totals"))?,
            ctx.map_state(&MapStateDescriptor::new("per-bucket"))?,
        ))
    }

    fn process_element(
        &mut self,
        (totals, buckets): &mut Self::State,
        tx: Transaction,
        _ctx: &mut Context<'_, u64>,
        out: &mut Collector<'_, Out>,
    ) -> Result<()> {
        if let Some(failure) = self.failure.as_mut() {
            if failure.fires(tx.transaction_id) {
                return Err(EddyError::user("injected failure"));
            }
        }
        let bucket = tx.amount / 10_000;
        buckets.put(bucket, buckets.get(&bucket)?.unwrap_or(0) + 1)?;
        let mut t = totals.value()?.unwrap_or_default();
        t.customer = tx.customer_id;
        t.count += 1;
        t.sum += tx.amount;
        totals.update(t)?;
        out.collect(t);
        Ok(())
    }
}

/// What an uninterrupted counting job emits, sorted.
pub fn expected() -> Vec<Out> {
    let generator = TransactionGenerator::new(CUSTOMERS, 5);
    let mut totals: std::collections::HashMap<u64, Out> = std::collections::HashMap::new();
    let mut out = Vec::new();
    for i in 0..EVENTS {
        let tx = eddy::connectors::Generator::generate(&generator, i);
        let t = totals.entry(tx.customer_id).or_default();
        t.customer = tx.customer_id;
        t.count += 1;
        t.sum += tx.amount;
        out.push(*t);
    }
    out.sort_unstable();
    out
}

/// Every record the JSON-lines file sink published in `dir` (pending files excluded, none if
/// the directory does not exist yet), sorted, duplicates kept so that a record published
/// twice shows.
pub fn published<T: DeserializeOwned + Ord>(dir: &Path) -> Vec<T> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        if entry.path().is_file() {
            for line in std::fs::read_to_string(entry.path()).unwrap().lines() {
                out.push(serde_json::from_str(line).unwrap());
            }
        }
    }
    out.sort();
    out
}

/// Keyed state entries: state name, key, user key, value.
pub type Entries = BTreeSet<(String, Vec<u8>, Option<Vec<u8>>, Vec<u8>)>;

/// Every keyed state entry of operator `uid` in the checkpoint or savepoint `what` (as
/// `--restore` takes it) under `root`; incremental RocksDB parts are read back through their
/// shared files.
pub fn keyed_entries(root: &Checkpoints, what: &str, uid: &str) -> Entries {
    let point = root.resolve(what).unwrap();
    let operator = point.metadata.operator(uid).expect("keyed state");
    let mut entries = BTreeSet::new();
    for subtask in &operator.subtasks {
        for file in &subtask.files {
            let payload = point.read_part(&file.path, file.kind).unwrap();
            let snapshot = match file.kind {
                FileKind::IncrementalKeyedState => eddy_state::rocksdb::incremental_to_full(
                    &payload,
                    &file.path,
                    None,
                    &mut |path| point.read_shared(path),
                )
                .unwrap(),
                _ => KeyedStateSnapshot::decode(&payload, &file.path).unwrap(),
            };
            for meta in snapshot.states() {
                for (_, entry) in snapshot.entries_of(&meta.name).unwrap() {
                    entries.insert((
                        meta.name.clone(),
                        entry.key.to_vec(),
                        entry.user_key.map(<[u8]>::to_vec),
                        entry.value.to_vec(),
                    ));
                }
            }
        }
    }
    entries
}

/// The id of the newest complete checkpoint in `location`.
pub fn newest_checkpoint(location: &str) -> Option<u64> {
    let latest = Checkpoints::open(location).ok()?.latest().ok()??;
    Some(latest.metadata.checkpoint_id)
}

/// An injected failure that fires once, at the first record at or past `fail_at` after a
/// checkpoint newer than the one the run started from has completed, so that the run after
/// the failure has one to restore. It never blocks: a blocked operator would hold back the
/// very checkpoint it waits for (its output frontier, and so the sinks' barrier, could not
/// move), and snapshots complete a little after their barrier (asynchronously for RocksDB).
#[derive(Clone)]
pub struct InjectedFailure {
    fail_at: u64,
    armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    location: String,
    since: Option<u64>,
    /// Records seen past `fail_at` (the checkpoint directory is looked at every 64th).
    past: u64,
}

impl InjectedFailure {
    /// A failure at record `fail_at` (`None`: never) of a job checkpointing to `location`.
    pub fn new(fail_at: Option<u64>, location: &str) -> Self {
        InjectedFailure {
            fail_at: fail_at.unwrap_or(u64::MAX),
            armed: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(fail_at.is_some())),
            location: location.to_string(),
            since: newest_checkpoint(location),
            past: 0,
        }
    }

    /// Whether the record numbered `index` is where the job fails.
    pub fn fires(&mut self, index: u64) -> bool {
        use std::sync::atomic::Ordering;
        if index < self.fail_at || !self.armed.load(Ordering::SeqCst) {
            return false;
        }
        self.past += 1;
        if self.past % 64 != 1 || newest_checkpoint(&self.location) <= self.since {
            return false;
        }
        self.armed.swap(false, Ordering::SeqCst)
    }
}
