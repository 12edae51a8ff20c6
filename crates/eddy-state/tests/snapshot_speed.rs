//! How long a snapshot and a restore of one million value-state keys take, per backend.
//!
//! Ignored by default (it measures, it does not check); run in release:
//! `cargo test --release --workspace --locked --test snapshot_speed -- --ignored --nocapture`
//!
//! On the 2-core development VM (release, `u64` keys and values, 128 key groups): heap
//! snapshot ~100 ms, encode ~10 ms (9.3 MB), decode ~9 ms, restore ~170 ms; RocksDB snapshot
//! ~650 ms (iterating the memtable dominates), restore ~720 ms (a million memtable inserts).

use std::time::Instant;

use eddy_core::{EddyError, KeyGroupRange};
use eddy_state::{KeyedStateBackend, KeyedStateSnapshot, ValueStateDescriptor};

const KEYS: u64 = 1_000_000;

fn measure(name: &str, factory: &dyn Fn() -> KeyedStateBackend<u64>) -> Result<(), EddyError> {
    let mut b = factory();
    let v = b.value_state(&ValueStateDescriptor::<u64>::new("v"))?;
    let start = Instant::now();
    for k in 0..KEYS {
        b.set_current_key(k)?;
        v.update(k * 3)?;
    }
    let fill = start.elapsed();

    let start = Instant::now();
    let snapshot = b.snapshot()?;
    let snapshot_time = start.elapsed();
    let start = Instant::now();
    let bytes = snapshot.encode()?;
    let encode_time = start.elapsed();
    let start = Instant::now();
    let decoded = KeyedStateSnapshot::decode(&bytes, "speed")?;
    let decode_time = start.elapsed();
    drop(snapshot);

    let mut restored = factory();
    let start = Instant::now();
    restored.restore("op", vec![decoded])?;
    let v2 = restored.value_state(&ValueStateDescriptor::<u64>::new("v"))?;
    let restore_time = start.elapsed();
    restored.set_current_key(KEYS - 1)?;
    assert_eq!(v2.value()?, Some((KEYS - 1) * 3));
    println!(
        "{name}: {KEYS} value-state keys: fill {fill:?}, snapshot {snapshot_time:?}, \
         encode {encode_time:?} ({} bytes), decode {decode_time:?}, restore (stage + \
         register) {restore_time:?}",
        bytes.len()
    );
    Ok(())
}

#[test]
#[ignore = "a measurement; run in release with --ignored --nocapture"]
fn snapshot_of_one_million_keys() -> Result<(), EddyError> {
    let range = KeyGroupRange::new(0, 127);
    measure("heap", &|| KeyedStateBackend::heap(range, 128))?;
    #[cfg(feature = "rocksdb")]
    measure("rocksdb", &|| {
        KeyedStateBackend::rocksdb(range, 128, &eddy_state::RocksDbConfig::default())
            .unwrap_or_else(|e| panic!("RocksDB does not open: {e}"))
    })?;
    Ok(())
}
