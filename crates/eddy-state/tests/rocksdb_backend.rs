//! RocksDB-specific tests: what the conformance suite cannot see from the outside (reads
//! counted by RocksDB statistics, key layout, chunking, the TTL compaction filter, errors on
//! corrupt bytes). The conformance suite itself runs on RocksDB from `conformance.rs`.
#![cfg(feature = "rocksdb")]
// Helpers outside `#[test]` functions unwrap too: a failed step fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use eddy_core::key_group::assign_to_key_group;
use eddy_core::{EddyError, KeyGroupRange};
use eddy_state::{
    KeyedStateBackend, ListStateDescriptor, ManualClock, MapStateDescriptor,
    ReducingStateDescriptor, RocksDbConfig, RocksDbKeyedStateBackend, StateTtlConfig,
    ValueStateDescriptor,
};
use rocksdb::statistics::Ticker;

fn backend(config: &RocksDbConfig) -> KeyedStateBackend<u64> {
    KeyedStateBackend::rocksdb(KeyGroupRange::new(0, 127), 128, config).expect("RocksDB opens")
}

fn rocks(b: &KeyedStateBackend<u64>) -> &RocksDbKeyedStateBackend<u64> {
    b.as_rocksdb().expect("a RocksDB backend")
}

/// Read options that scan a whole column family in key order, whatever its prefix extractor.
fn total_order() -> rocksdb::ReadOptions {
    let mut read = rocksdb::ReadOptions::default();
    read.set_total_order_seek(true);
    read
}

/// Every (key, value) stored in the column family of `state`.
fn raw_entries(b: &KeyedStateBackend<u64>, state: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let r = rocks(b);
    let cf_name = r.column_family_name(state).expect("registered");
    let cf = r.db().cf_handle(cf_name).expect("column family");
    r.db()
        .iterator_cf_opt(&cf, total_order(), rocksdb::IteratorMode::Start)
        .map(|item| {
            let (k, v) = item.expect("readable");
            (k.to_vec(), v.to_vec())
        })
        .collect()
}

/// The stored key of `key` in the default namespace: `[key group][postcard(key)]`.
fn stored_key(key: u64) -> Vec<u8> {
    let mut bytes = assign_to_key_group(&key, 128).to_be_bytes().to_vec();
    bytes.extend(postcard::to_stdvec(&key).expect("encodes"));
    bytes
}

#[test]
fn list_add_is_a_merge_that_never_reads() -> Result<(), EddyError> {
    let mut b = backend(&RocksDbConfig::default().with_statistics(true));
    let list = b.list_state(&ListStateDescriptor::<u64>::new("l"))?;
    for i in 0..20_000u64 {
        b.set_current_key(i % 100)?;
        list.add(i)?;
        if i % 1000 == 0 {
            list.add_all(vec![i, i + 1])?;
        }
    }
    let r = rocks(&b);
    // Force the merges through a flush too: still no read from user code.
    r.compact_state("l")?;
    assert_eq!(r.ticker(Ticker::NumberKeysRead), 0, "no point read");
    assert_eq!(r.ticker(Ticker::NumberDbSeek), 0, "no iterator");
    assert!(r.ticker(Ticker::NumberKeysWritten) >= 20_000);

    // The counters do count: a read of the list is one seek.
    b.set_current_key(7)?;
    let read: Vec<u64> = list.get()?.collect();
    assert_eq!(read.len(), 200);
    assert!(read.windows(2).all(|w| w[0] < w[1]), "insertion order");
    assert!(rocks(&b).ticker(Ticker::NumberDbSeek) >= 1);
    Ok(())
}

#[test]
fn map_prefix_iteration_returns_exactly_one_key_and_namespace() -> Result<(), EddyError> {
    let mut b = backend(&RocksDbConfig::default());
    let map = b.namespaced_map_state::<u64, u64, String>(&MapStateDescriptor::new("m"))?;
    // Keys and namespaces around varint boundaries, so that encodings share leading bytes.
    let keys = [0u64, 1, 2, 127, 128, 129, 255, 256, 16_383, 16_384];
    let namespaces = [0u64, 1, 127, 128];
    for &key in &keys {
        b.set_current_key(key)?;
        for &ns in &namespaces {
            map.set_current_namespace(ns);
            for entry in 0..3u64 {
                map.put(entry * 1000 + ns, format!("{key}/{ns}/{entry}"))?;
            }
        }
    }
    for &key in &keys {
        b.set_current_key(key)?;
        for &ns in &namespaces {
            map.set_current_namespace(ns);
            let mut entries: Vec<(u64, String)> = map.entries()?.collect();
            entries.sort();
            let expected: Vec<(u64, String)> = (0..3u64)
                .map(|e| (e * 1000 + ns, format!("{key}/{ns}/{e}")))
                .collect();
            assert_eq!(entries, expected, "key {key}, namespace {ns}");
            assert!(!map.is_empty()?);
        }
        map.set_current_namespace(2);
        assert!(map.is_empty()?, "an unused namespace between used ones");
    }
    // Clearing one (key, namespace) leaves its neighbours alone.
    b.set_current_key(128)?;
    map.set_current_namespace(1);
    map.clear()?;
    assert!(map.is_empty()?);
    map.set_current_namespace(0);
    assert_eq!(map.keys()?.count(), 3);
    map.set_current_namespace(127);
    assert_eq!(map.keys()?.count(), 3);
    b.set_current_key(1)?;
    map.set_current_namespace(1);
    assert_eq!(map.keys()?.count(), 3);
    assert_eq!(b.state_len("m"), Some(keys.len() * namespaces.len() - 1));
    let mut with_state = b.keys("m")?;
    with_state.sort_unstable();
    assert_eq!(with_state, keys.to_vec());
    Ok(())
}

#[test]
fn a_list_is_split_into_chunks_below_the_threshold() -> Result<(), EddyError> {
    const THRESHOLD: usize = 1024;
    let mut b = backend(&RocksDbConfig::default().with_list_chunk_bytes(THRESHOLD));
    let list = b.list_state(&ListStateDescriptor::<u64>::new("l"))?;
    let mut expected: Vec<u64> = Vec::new();
    for i in 0..5_000u64 {
        b.set_current_key(1)?;
        list.add(i)?;
        expected.push(i);
        // A neighbour fills chunks too.
        b.set_current_key(2)?;
        list.add(i)?;
    }
    b.set_current_key(1)?;
    list.add_all((10_000..20_000).collect())?;
    expected.extend(10_000..20_000);
    assert_eq!(list.get()?.collect::<Vec<_>>(), expected);

    let check_chunks = |b: &KeyedStateBackend<u64>| {
        let chunks = raw_entries(b, "l");
        assert!(chunks.len() > 20, "{} chunks", chunks.len());
        for (key, value) in &chunks {
            assert!(
                value.len() <= THRESHOLD,
                "chunk {key:?}: {} bytes",
                value.len()
            );
        }
    };
    check_chunks(&b);
    rocks(&b).compact_state("l")?;
    check_chunks(&b);

    // update() rewrites in chunks too; clear() removes every chunk of the key only.
    list.update((0..3_000).collect())?;
    assert_eq!(
        list.get()?.collect::<Vec<_>>(),
        (0..3_000).collect::<Vec<_>>()
    );
    check_chunks(&b);
    list.clear()?;
    assert_eq!(list.get()?.count(), 0);
    b.set_current_key(2)?;
    assert_eq!(list.get()?.count(), 5_000);

    // An element larger than the threshold gets a chunk of its own.
    let big = b.list_state(&ListStateDescriptor::<Vec<u8>>::new("big"))?;
    big.add(vec![1; 10])?;
    big.add(vec![2; 3 * THRESHOLD])?;
    big.add(vec![3; 10])?;
    let lens: Vec<usize> = big.get()?.map(|v| v.len()).collect();
    assert_eq!(lens, vec![10, 3 * THRESHOLD, 10]);
    assert_eq!(raw_entries(&b, "big").len(), 3);
    Ok(())
}

#[test]
fn ttl_compaction_filter_drops_expired_values() -> Result<(), EddyError> {
    let mut b = backend(&RocksDbConfig::default());
    let clock = ManualClock::new(1_000_000);
    b.set_ttl_clock(Arc::new(clock.clone()));
    let ttl = StateTtlConfig::new(Duration::from_secs(10)).cleanup_in_rocksdb_compaction_filter();
    let value = b.value_state(&ValueStateDescriptor::<u64>::new("v").enable_ttl(ttl.clone()))?;
    let map = b.map_state(&MapStateDescriptor::<u64, u64>::new("m").enable_ttl(ttl.clone()))?;
    let list = b.list_state(&ListStateDescriptor::<u64>::new("l").enable_ttl(ttl))?;
    let plain = b.value_state(&ValueStateDescriptor::<u64>::new("plain"))?;
    let write = |keys: std::ops::Range<u64>| -> Result<(), EddyError> {
        for key in keys {
            b.set_current_key(key)?;
            value.update(key)?;
            map.put(1, key)?;
            map.put(2, key)?;
            list.add(key)?;
            plain.update(key)?;
        }
        Ok(())
    };
    write(0..100)?;
    clock.advance(Duration::from_secs(6));
    write(100..150)?;
    clock.advance(Duration::from_secs(6));
    // Keys 0..100 have expired, 100..150 have not; nothing has been read.
    let r = rocks(&b);
    for state in ["v", "m", "l", "plain"] {
        r.compact_state(state)?;
    }
    // List chunks are merge results after the first compaction; the second filters them.
    r.compact_state("l")?;
    assert_eq!(b.state_len("v"), Some(50));
    assert_eq!(raw_entries(&b, "m").len(), 100, "two entries per live key");
    assert_eq!(b.state_len("l"), Some(50));
    assert_eq!(b.state_len("plain"), Some(150), "no TTL, no filter");
    b.set_current_key(120)?;
    assert_eq!(value.value()?, Some(120));
    assert_eq!(list.get()?.collect::<Vec<_>>(), vec![120]);
    Ok(())
}

#[test]
fn corrupt_bytes_give_an_error_naming_the_state_and_key_group() -> Result<(), EddyError> {
    let mut b = backend(&RocksDbConfig::default().with_list_chunk_bytes(64));
    let value = b.value_state(&ValueStateDescriptor::<u64>::new("v"))?;
    let map = b.map_state(&MapStateDescriptor::<u64, u64>::new("m"))?;
    let list = b.list_state(&ListStateDescriptor::<u64>::new("l"))?;
    let sum = b.reducing_state(&ReducingStateDescriptor::new("sum", |a: &u64, b: &u64| {
        a + b
    }))?;
    let key = 7u64;
    let kg = assign_to_key_group(&key, 128);
    b.set_current_key(key)?;
    value.update(1)?;
    map.put(1, 1)?;
    sum.add(1)?;
    for i in 0..100 {
        list.add(i)?;
    }
    let r = rocks(&b);
    let put_raw = |state: &str, stored: &[u8], bytes: &[u8]| {
        let cf = r
            .db()
            .cf_handle(r.column_family_name(state).expect("registered"))
            .expect("cf");
        r.db().put_cf(&cf, stored, bytes).expect("raw write");
    };
    let expect_error = |result: Result<(), EddyError>, state: &str| {
        let message = result.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains(&format!("state \"{state}\"")), "{message}");
        assert!(message.contains(&format!("key group {kg}")), "{message}");
    };
    // A string where a u64 is expected (a wrong-type read), and bytes that are no varint.
    put_raw(
        "v",
        &stored_key(key),
        &postcard::to_stdvec("hello").expect("encodes"),
    );
    expect_error(value.value().map(drop), "v");
    put_raw("sum", &stored_key(key), &[0xFF; 12]);
    expect_error(sum.add(1), "sum");
    let mut entry = stored_key(key);
    entry.extend(postcard::to_stdvec(&1u64).expect("encodes"));
    put_raw("m", &entry, &[0x80]);
    expect_error(map.get(&1).map(drop), "m");
    expect_error(map.entries().map(drop), "m");

    // A corrupt list chunk after the first one: the iteration stops there and the next
    // access to the state returns the error.
    let chunks = raw_entries(&b, "l");
    assert!(chunks.len() > 2);
    put_raw("l", &chunks[1].0, &[0x05, 0x01]);
    let read = list.get()?.count();
    assert!(
        read < 100,
        "stopped at the corrupt chunk after {read} elements"
    );
    expect_error(list.add(1), "l");
    list.add(1)?; // reported once
    put_raw("l", &chunks[0].0, &[0x05, 0x01]);
    expect_error(list.get().map(drop), "l");
    Ok(())
}

#[test]
fn namespaces_merge_on_rocksdb() -> Result<(), EddyError> {
    let mut b = backend(&RocksDbConfig::default().with_list_chunk_bytes(32));
    let list = b.namespaced_list_state::<(u64, u64), u32>(&ListStateDescriptor::new("w"))?;
    let sum = b.namespaced_reducing_state::<(u64, u64), u64>(&ReducingStateDescriptor::new(
        "sum",
        |a: &u64, b: &u64| a + b,
    ))?;
    b.set_current_key(1)?;
    for (ns, values) in [((0, 10), 0..20u32), ((5, 15), 20..40)] {
        list.set_current_namespace(ns);
        sum.set_current_namespace(ns);
        for v in values {
            list.add(v)?;
            sum.add(u64::from(v))?;
        }
    }
    list.merge_namespaces(&(0, 15), &[(0, 10), (5, 15)])?;
    sum.merge_namespaces(&(0, 15), &[(0, 10), (5, 15)])?;
    list.set_current_namespace((0, 15));
    sum.set_current_namespace((0, 15));
    assert_eq!(list.get()?.collect::<Vec<_>>(), (0..40).collect::<Vec<_>>());
    assert_eq!(sum.get()?, Some((0..40).sum()));
    list.set_current_namespace((0, 10));
    sum.set_current_namespace((0, 10));
    assert_eq!(list.get()?.count(), 0);
    assert_eq!(sum.get()?, None);
    // The target among the sources.
    list.merge_namespaces(&(0, 15), &[(0, 15), (7, 8)])?;
    list.set_current_namespace((0, 15));
    assert_eq!(list.get()?.count(), 40);
    Ok(())
}

#[test]
fn the_instance_directory_is_removed_on_drop() -> Result<(), EddyError> {
    let parent = tempfile::tempdir().map_err(|e| EddyError::io("tempdir", e))?;
    let mut b = backend(&RocksDbConfig::default().with_working_dir(parent.path()));
    let path = rocks(&b).path().to_path_buf();
    assert!(path.starts_with(parent.path()));
    let v = b.value_state(&ValueStateDescriptor::<u64>::new("v"))?;
    b.set_current_key(1)?;
    v.update(1)?;
    assert!(path.exists());
    drop(v);
    drop(b);
    assert!(!path.exists());
    Ok(())
}

/// Peak resident memory of this process so far, in bytes (Linux).
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Total size of the files under `dir`.
fn dir_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// A list of more than 2 GiB (Flink's RocksDB lists stop at 2^31 bytes) under one key, on
/// disk, written and read with bounded memory. Slow: run it with
/// `cargo test --release -p eddy-state --test rocksdb_backend -- --ignored`.
#[test]
#[ignore = "writes more than 2 GiB to disk"]
fn a_list_larger_than_2_gib_with_bounded_memory() -> Result<(), EddyError> {
    const ELEMENT: usize = 4096;
    const ELEMENTS: u64 = (2u64 << 30) / ELEMENT as u64 + 50_000;
    let mut b = backend(&RocksDbConfig::default());
    let list = b.list_state(&ListStateDescriptor::<Vec<u8>>::new("huge"))?;
    b.set_current_key(1)?;
    let before = peak_rss();
    // Incompressible elements (xorshift), so that the bytes really land on disk.
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut element = |i: u64| -> Vec<u8> {
        let mut bytes = Vec::with_capacity(ELEMENT);
        bytes.extend_from_slice(&i.to_le_bytes());
        while bytes.len() < ELEMENT {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            bytes.extend_from_slice(&seed.to_le_bytes());
        }
        bytes
    };
    for i in 0..ELEMENTS {
        list.add(element(i))?;
    }
    rocks(&b).compact_state("huge")?;
    let on_disk = dir_size(rocks(&b).path());
    assert!(on_disk > 2 << 30, "{on_disk} bytes on disk");
    let mut count = 0u64;
    for (i, e) in list.get()?.enumerate() {
        assert_eq!(e.get(..8), Some(&(i as u64).to_le_bytes()[..]));
        count += 1;
    }
    assert_eq!(count, ELEMENTS);
    let grown = peak_rss().saturating_sub(before);
    assert!(grown < 1 << 30, "peak RSS grew by {grown} bytes");
    Ok(())
}

/// One memory budget per process: a second instance with the same budget shares the first
/// one's block cache (memtables charged to it), one with another budget has its own.
#[test]
fn instances_with_one_budget_share_one_cache() -> Result<(), EddyError> {
    // A budget no other test uses, so that their instances do not share this cache.
    let config = RocksDbConfig::default().with_memory_budget(77 << 20);
    let mut first = backend(&config);
    let values = first.value_state(&ValueStateDescriptor::<String>::new("v"))?;
    for key in 0..20_000u64 {
        first.set_current_key(key)?;
        values.update(format!("a value long enough to fill the memtable {key}"))?;
    }
    let used = rocks(&first).block_cache_usage();
    assert!(
        used > 1 << 20,
        "the memtable is charged to the cache: {used}"
    );
    let second = backend(&config);
    assert!(
        rocks(&second).block_cache_usage() >= used,
        "a new instance with the same budget sees the shared cache"
    );
    let other = backend(&RocksDbConfig::default().with_memory_budget(78 << 20));
    assert!(
        rocks(&other).block_cache_usage() < used,
        "another budget has its own cache"
    );
    Ok(())
}

/// A backend whose states have an object cache of `entries` entries.
fn cached_backend(entries: usize) -> KeyedStateBackend<u64> {
    backend(
        &RocksDbConfig::default()
            .with_object_cache_entries(entries)
            .with_statistics(true),
    )
}

#[test]
fn cached_writes_reach_rocksdb_when_a_snapshot_is_taken() -> Result<(), EddyError> {
    let mut b = cached_backend(10_000);
    let value = b.value_state(&ValueStateDescriptor::<u64>::new("v"))?;
    let map = b.map_state(&MapStateDescriptor::<u32, String>::new("m"))?;
    for key in 0..100u64 {
        b.set_current_key(key)?;
        value.update(key * 10)?;
        map.put(1, format!("one of {key}"))?;
        map.put(2, format!("two of {key}"))?;
    }
    // Write-back: nothing has reached RocksDB yet, and reads see the cached objects.
    assert!(raw_entries(&b, "v").is_empty());
    assert!(raw_entries(&b, "m").is_empty());
    b.set_current_key(7)?;
    assert_eq!(value.value()?, Some(70));
    assert_eq!(map.get(&2)?, Some("two of 7".to_string()));

    let snapshot = b.snapshot()?;
    assert_eq!(raw_entries(&b, "v").len(), 100);
    assert_eq!(raw_entries(&b, "m").len(), 200);
    assert_eq!(raw_entries(&b, "v")[0].0, stored_key(raw_key_of_first(&b)));

    // The snapshot holds what the cache held: restored into the heap, every value is there.
    let mut heap = KeyedStateBackend::<u64>::heap(KeyGroupRange::new(0, 127), 128);
    heap.restore("op", vec![snapshot])?;
    let restored_value = heap.value_state(&ValueStateDescriptor::<u64>::new("v"))?;
    let restored_map = heap.map_state(&MapStateDescriptor::<u32, String>::new("m"))?;
    heap.finish_restore()?;
    for key in 0..100u64 {
        heap.set_current_key(key)?;
        assert_eq!(restored_value.value()?, Some(key * 10));
        assert_eq!(restored_map.get(&1)?, Some(format!("one of {key}")));
    }
    Ok(())
}

/// The key of the first stored entry of state "v" (its stored key decoded back).
fn raw_key_of_first(b: &KeyedStateBackend<u64>) -> u64 {
    let (key, _) = &raw_entries(b, "v")[0];
    postcard::from_bytes(&key[2..]).expect("a u64 key")
}

#[test]
fn a_hot_key_is_read_from_rocksdb_once() -> Result<(), EddyError> {
    let mut b = cached_backend(1_000);
    let value = b.value_state(&ValueStateDescriptor::<u64>::new("v"))?;
    let map = b.map_state(&MapStateDescriptor::<u32, u64>::new("m"))?;
    b.set_current_key(42)?;
    for i in 0..1_000u64 {
        // Absent at first: the absence is cached too.
        let current = value.value()?.unwrap_or(0);
        value.update(current + i)?;
        let entry = map.get(&3)?.unwrap_or(0);
        map.put(3, entry + 1)?;
    }
    assert_eq!(value.value()?, Some((0..1_000).sum()));
    assert_eq!(map.get(&3)?, Some(1_000));
    assert_eq!(
        rocks(&b).ticker(Ticker::NumberKeysRead),
        0,
        "nothing was ever written back: the absence is known without a read"
    );
    Ok(())
}

/// The cache knows which keys it never wrote back to RocksDB: their first access reads
/// nothing, and a map of such a key answers for the keys it lacks. Once a key's values were
/// written back and evicted, or came from a restore, RocksDB is asked again.
#[test]
fn keys_never_written_back_are_known_absent_without_rocksdb() -> Result<(), EddyError> {
    let mut b = cached_backend(64);
    let value = b.value_state(&ValueStateDescriptor::<u64>::new("v"))?;
    let map = b.map_state(&MapStateDescriptor::<u32, u64>::new("m"))?;
    b.set_current_key(1)?;
    assert_eq!(value.value()?, None);
    assert_eq!(map.get(&1)?, None);
    assert!(map.is_empty()?);
    value.update(5)?;
    map.put(1, 10)?;
    map.put(2, 20)?;
    assert_eq!(map.get(&3)?, None);
    assert!(!map.contains(&4)?);
    // Written back, and still cached: the map still knows its absent keys.
    rocks(&b).flush_object_caches()?;
    assert_eq!(map.get(&5)?, None);
    assert_eq!(point_reads(&b), 0, "no key was ever read from RocksDB");

    // Evicted by a stream of other keys (each new, so none is read either).
    for key in 100..1_100u64 {
        b.set_current_key(key)?;
        value.update(key)?;
        assert_eq!(map.get(&1)?, None);
    }
    assert_eq!(point_reads(&b), 0);
    // Key 1 was written back: its values come from RocksDB now, absent ones too.
    b.set_current_key(1)?;
    assert_eq!(value.value()?, Some(5));
    assert_eq!(map.get(&2)?, Some(20));
    assert_eq!(map.get(&3)?, None);
    assert_eq!(point_reads(&b), 3);

    // A restore writes past the cache: every key is read from RocksDB, restored or not.
    let snapshot = b.snapshot()?;
    let mut restored = cached_backend(64);
    restored.restore("op", vec![snapshot])?;
    let value = restored.value_state(&ValueStateDescriptor::<u64>::new("v"))?;
    let map = restored.map_state(&MapStateDescriptor::<u32, u64>::new("m"))?;
    restored.finish_restore()?;
    restored.set_current_key(1)?;
    assert_eq!(value.value()?, Some(5));
    assert_eq!(map.get(&1)?, Some(10));
    assert_eq!(map.get(&9)?, None);
    restored.set_current_key(500)?;
    assert_eq!(value.value()?, Some(500));
    restored.set_current_key(5_000)?;
    assert_eq!(value.value()?, None);
    assert_eq!(point_reads(&restored), 5);
    Ok(())
}

/// RocksDB point reads so far (statistics on).
fn point_reads(b: &KeyedStateBackend<u64>) -> u64 {
    rocks(b).ticker(Ticker::NumberKeysRead)
}

#[test]
fn eviction_writes_back_and_bounds_the_cache() -> Result<(), EddyError> {
    let mut b = cached_backend(64);
    let value = b.value_state(&ValueStateDescriptor::<u64>::new("v"))?;
    for key in 0..10_000u64 {
        b.set_current_key(key)?;
        value.update(key + 1)?;
        assert!(rocks(&b).object_cache_len("v") <= 64);
    }
    // Everything evicted is in RocksDB; the rest is still only cached.
    let stored = raw_entries(&b, "v").len();
    assert!((10_000 - 64..10_000).contains(&stored), "{stored} stored");
    for key in 0..10_000u64 {
        b.set_current_key(key)?;
        assert_eq!(value.value()?, Some(key + 1));
    }
    rocks(&b).flush_object_caches()?;
    assert_eq!(raw_entries(&b, "v").len(), 10_000);
    Ok(())
}

/// Eviction is CLOCK: a key used between every two insertions keeps its reference bit set
/// whenever the hand passes, so it is never evicted and never read back from RocksDB.
#[test]
fn a_hot_key_stays_cached_while_cold_keys_stream_through() -> Result<(), EddyError> {
    let mut b = cached_backend(64);
    let value = b.value_state(&ValueStateDescriptor::<u64>::new("v"))?;
    let hot = u64::MAX;
    b.set_current_key(hot)?;
    value.update(7)?;
    for key in 0..10_000u64 {
        b.set_current_key(key)?;
        value.update(key)?;
        b.set_current_key(hot)?;
        assert_eq!(value.value()?, Some(7));
    }
    assert_eq!(
        rocks(&b).ticker(Ticker::NumberKeysRead),
        0,
        "the hot key was evicted and read back"
    );
    assert!(rocks(&b).object_cache_len("v") <= 64);
    Ok(())
}

#[test]
fn map_clear_and_remove_through_the_cache() -> Result<(), EddyError> {
    let mut b = cached_backend(1_000);
    let map = b.map_state(&MapStateDescriptor::<u32, u32>::new("m"))?;
    b.set_current_key(1)?;
    map.put_all((0..10).map(|i| (i, i * i)).collect())?;
    rocks(&b).flush_object_caches()?;
    assert_eq!(raw_entries(&b, "m").len(), 10);
    // Cached removals and writes are seen by iteration, which writes them back first.
    map.remove(&0)?;
    map.put(10, 100)?;
    let mut keys: Vec<u32> = map.keys()?.collect();
    keys.sort_unstable();
    assert_eq!(keys, (1..=10).collect::<Vec<_>>());
    assert_eq!(raw_entries(&b, "m").len(), 10);
    // A clear drops the cached entries along with the stored ones.
    map.clear()?;
    assert!(map.is_empty()?);
    assert_eq!(map.get(&5)?, None);
    rocks(&b).flush_object_caches()?;
    assert!(raw_entries(&b, "m").is_empty());
    // A value written and removed before it ever reached RocksDB writes nothing at all.
    b.set_current_key(2)?;
    map.put(1, 1)?;
    map.remove(&1)?;
    rocks(&b).flush_object_caches()?;
    assert!(raw_entries(&b, "m").is_empty());
    Ok(())
}

#[test]
fn ttl_and_list_states_are_not_cached() -> Result<(), EddyError> {
    let mut b = cached_backend(1_000);
    let ttl = StateTtlConfig::new(Duration::from_secs(60));
    let value = b.value_state(&ValueStateDescriptor::<u64>::new("ttl").enable_ttl(ttl))?;
    let list = b.list_state(&ListStateDescriptor::<u64>::new("l"))?;
    b.set_current_key(1)?;
    value.update(1)?;
    list.add(1)?;
    assert_eq!(rocks(&b).object_cache_len("ttl"), 0);
    assert_eq!(rocks(&b).object_cache_len("l"), 0);
    assert_eq!(raw_entries(&b, "ttl").len(), 1);
    Ok(())
}

/// The entries of the column family `cf`, or `None` if it does not exist.
fn column_family_len(b: &KeyedStateBackend<u64>, cf: &str) -> Option<usize> {
    let db = rocks(b).db();
    let handle = db.cf_handle(cf)?;
    Some(
        db.iterator_cf_opt(&handle, total_order(), rocksdb::IteratorMode::Start)
            .count(),
    )
}

#[test]
fn timers_live_in_rocksdb_and_fire_in_order() -> Result<(), EddyError> {
    let mut b = backend(&RocksDbConfig::default());
    let timers = b.timer_service::<u64>("t")?;
    for key in 0..20_000u64 {
        b.set_current_key(key)?;
        // Two namespaces per key, timestamps spread so that keys interleave.
        timers.register_event_time_timer(1, (key * 7919) % 10_000)?;
        timers.register_event_time_timer(2, (key * 7919) % 10_000 + 5)?;
    }
    assert_eq!(column_family_len(&b, "timers:t:event:order"), Some(40_000));
    assert_eq!(column_family_len(&b, "timers:t:event:index"), Some(40_000));
    assert_eq!(column_family_len(&b, "timers:t:processing:order"), Some(0));

    let mut fired = 0;
    let mut last = 0;
    while let Some(timer) = timers.poll_event_time(5_000)? {
        assert!(timer.timestamp >= last && timer.timestamp <= 5_000);
        assert_eq!(
            (timer.key * 7919) % 10_000 + 5 * (timer.namespace - 1),
            timer.timestamp
        );
        last = timer.timestamp;
        fired += 1;
    }
    // A timer earlier than the ones already fired (below the queue's seek floor) still fires
    // at the next poll, first.
    b.set_current_key(3)?;
    timers.register_event_time_timer(9, 1)?;
    assert_eq!(timers.next_event_time()?, Some(1));
    let early = timers.poll_event_time(5_000)?;
    assert_eq!(early.map(|t| (t.key, t.namespace)), Some((3, 9)));
    while timers.poll_event_time(u64::MAX)?.is_some() {
        fired += 1;
    }
    assert_eq!(fired, 40_000);
    assert_eq!(column_family_len(&b, "timers:t:event:order"), Some(0));
    assert_eq!(column_family_len(&b, "timers:t:event:index"), Some(0));
    Ok(())
}

#[test]
fn heap_timers_leave_rocksdb_alone() -> Result<(), EddyError> {
    let mut b = backend(&RocksDbConfig::default().with_heap_timers(true));
    let timers = b.timer_service::<()>("t")?;
    b.set_current_key(1)?;
    timers.register_event_time_timer((), 10)?;
    assert_eq!(column_family_len(&b, "timers:t:event:order"), None);
    assert_eq!(timers.poll_event_time(10)?.map(|t| t.key), Some(1));
    Ok(())
}

#[test]
fn timers_deleted_or_added_after_the_queue_read_ahead_are_seen() -> Result<(), EddyError> {
    let mut b = backend(&RocksDbConfig::default());
    let timers = b.timer_service::<()>("t")?;
    for key in 0..1_000u64 {
        b.set_current_key(key)?;
        timers.register_event_time_timer((), 100 + key)?;
    }
    // The first poll reads ahead; then a buffered timer is deleted, one is added between two
    // buffered ones, one before them all, and one far behind them.
    assert_eq!(timers.poll_event_time(100)?.map(|t| t.key), Some(0));
    b.set_current_key(5)?;
    timers.delete_event_time_timer((), 105)?;
    b.set_current_key(5_000)?;
    timers.register_event_time_timer((), 107)?;
    timers.register_event_time_timer((), 50)?;
    timers.register_event_time_timer((), 1_000_000)?;
    let mut fired = Vec::new();
    while let Some(timer) = timers.poll_event_time(u64::MAX)? {
        fired.push((timer.timestamp, timer.key));
    }
    let mut expected: Vec<(u64, u64)> = (1..1_000u64)
        .filter(|k| *k != 5)
        .map(|k| (100 + k, k))
        .collect();
    expected.extend([(50, 5_000), (107, 5_000), (1_000_000, 5_000)]);
    // Equal timestamps fire in registration order: key 7's timer before key 5000's.
    expected.sort_by_key(|(timestamp, key)| (*timestamp, *key == 5_000));
    assert_eq!(fired, expected);
    Ok(())
}

/// The newest `OPTIONS-*` file RocksDB wrote for the instance of `b`: the options of every
/// column family, as RocksDB applied them.
fn options_file(b: &KeyedStateBackend<u64>) -> String {
    let mut files: Vec<_> = std::fs::read_dir(rocks(b).path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("OPTIONS-") && !name.ends_with(".dbtmp"))
        })
        .collect();
    files.sort_by_key(|path| {
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        name["OPTIONS-".len()..].parse::<u64>().unwrap_or(0)
    });
    std::fs::read_to_string(files.last().expect("an OPTIONS file")).unwrap()
}

/// Hash memtables with far fewer buckets than keys, so that buckets are shared:
/// every key still reads exactly its own value, map entries and list elements, from the
/// memtable and from flushed files alike, and whole-state scans see every key.
#[test]
fn hash_memtables_keep_keys_apart_in_crowded_buckets() -> Result<(), EddyError> {
    let config = RocksDbConfig {
        write_buffer_size: 64 * 1024, // 1024 buckets for 3000 keys
        hash_memtables: true,
        ..RocksDbConfig::default()
    };
    let mut b = backend(&config);
    let value = b.value_state(&ValueStateDescriptor::<u64>::new("v"))?;
    let map = b.map_state(&MapStateDescriptor::<u32, u64>::new("m"))?;
    let list = b.list_state(&ListStateDescriptor::<u64>::new("l"))?;
    let options = options_file(&b);
    assert!(options.contains("HashLinkListRepFactory"), "{options}");
    assert!(options.contains("eddy.key-namespace"), "{options}");
    const KEYS: u64 = 3000;
    for key in 0..KEYS {
        b.set_current_key(key)?;
        value.update(key * 7)?;
        map.put_all((0..3).map(|i| (i, key + u64::from(i))).collect())?;
        list.add(key)?;
        list.add(key + 1)?;
        if key == KEYS / 2 {
            for state in ["v", "m", "l"] {
                rocks(&b).compact_state(state)?;
            }
        }
    }
    // Rewrites of the same size go in place; larger ones add a version.
    for key in (0..KEYS).step_by(2) {
        b.set_current_key(key)?;
        value.update(key * 7 + 1)?;
        map.put(1, key + 1_000_000)?;
    }
    for key in 0..KEYS {
        b.set_current_key(key)?;
        let even = key % 2 == 0;
        assert_eq!(value.value()?, Some(key * 7 + u64::from(even)), "key {key}");
        let mut entries: Vec<(u32, u64)> = map.entries()?.collect();
        entries.sort_unstable();
        let second = if even { key + 1_000_000 } else { key + 1 };
        assert_eq!(
            entries,
            vec![(0, key), (1, second), (2, key + 2)],
            "key {key}"
        );
        assert_eq!(map.get(&1)?, Some(second), "key {key}");
        assert_eq!(map.get(&3)?, None, "key {key}");
        let elements: Vec<u64> = list.get()?.collect();
        assert_eq!(elements, vec![key, key + 1], "key {key}");
    }
    let r = rocks(&b);
    for state in ["v", "m", "l"] {
        assert_eq!(r.state_len(state), Some(KEYS as usize), "state {state}");
        assert_eq!(r.keys(state)?.len(), KEYS as usize, "state {state}");
    }
    Ok(())
}

/// With hash memtables off (the default), states get RocksDB's skip-list memtable and no
/// prefix extractor.
#[test]
fn hash_memtables_are_off_by_default() -> Result<(), EddyError> {
    let mut b = backend(&RocksDbConfig::default());
    let map = b.map_state(&MapStateDescriptor::<u32, u64>::new("m"))?;
    let options = options_file(&b);
    assert!(!options.contains("HashLinkListRepFactory"), "{options}");
    assert!(!options.contains("eddy.key-namespace"), "{options}");
    b.set_current_key(1)?;
    map.put(1, 2)?;
    assert_eq!(map.get(&1)?, Some(2));
    Ok(())
}
