//! Incremental RocksDB snapshots: the files of a RocksDB checkpoint, SST files stored once
//! and shared by later snapshots, read back into exactly the canonical snapshot a full one
//! gives; and the errors when a shared file is missing or not the one recorded.
#![cfg(feature = "rocksdb")]
// Helpers outside `#[test]` functions unwrap too: a failed step fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use eddy_core::{EddyError, KeyGroupRange};
use eddy_state::rocksdb::{incremental_shared_paths, incremental_to_full, IncrementalCheckpoint};
use eddy_state::{
    KeyedStateBackend, KeyedStateSnapshot, ListState, ListStateDescriptor, ManualClock, MapState,
    MapStateDescriptor, Namespaced, ReducingState, ReducingStateDescriptor, RocksDbConfig,
    StateTtlConfig, ValueState, ValueStateDescriptor,
};
use std::sync::Arc;

/// A shared-file store standing in for the checkpoint root: path -> contents.
type Store = BTreeMap<String, Vec<u8>>;

/// Every state of `b` with at least one entry in `range` of keys: a plain value, a list, a
/// map, a value with TTL and a namespaced (window-like) reducing state.
struct States {
    value: ValueState<String>,
    list: ListState<u32>,
    map: MapState<u32, String>,
    ttl: ValueState<u64>,
    windows: Namespaced<ReducingState<u64>, (u64, u64)>,
}

impl States {
    fn register(b: &mut KeyedStateBackend<u64>) -> Result<Self, EddyError> {
        let ttl = StateTtlConfig::new(std::time::Duration::from_secs(3600));
        Ok(States {
            value: b.value_state(&ValueStateDescriptor::new("value"))?,
            list: b.list_state(&ListStateDescriptor::new("list"))?,
            map: b.map_state(&MapStateDescriptor::new("map"))?,
            ttl: b.value_state(&ValueStateDescriptor::new("ttl").enable_ttl(ttl))?,
            windows: b.namespaced_reducing_state(&ReducingStateDescriptor::new(
                "windows",
                |a: &u64, b: &u64| a + b,
            ))?,
        })
    }

    fn fill(
        &self,
        b: &KeyedStateBackend<u64>,
        keys: std::ops::Range<u64>,
    ) -> Result<(), EddyError> {
        for key in keys {
            b.set_current_key(key)?;
            self.value.update(format!("value of {key}"))?;
            self.list.add(key as u32)?;
            self.list.add(7)?;
            self.map.put(key as u32, format!("entry {key}"))?;
            self.map.put(1_000_000, "shared user key".to_string())?;
            self.ttl.update(key * 3)?;
            for window in [(0, 10), (10, 20)] {
                self.windows.set_current_namespace(window);
                self.windows.add(key + window.0)?;
            }
        }
        Ok(())
    }
}

fn backend() -> KeyedStateBackend<u64> {
    let mut b =
        KeyedStateBackend::rocksdb(KeyGroupRange::new(0, 127), 128, &RocksDbConfig::default())
            .expect("RocksDB opens");
    // A fixed clock: the TTL cut of a snapshot is the same in the full and the incremental one.
    b.set_ttl_clock(Arc::new(ManualClock::new(1_000)));
    b
}

/// Takes an incremental snapshot of `b`.
fn incremental(b: &KeyedStateBackend<u64>) -> IncrementalCheckpoint {
    match b.snapshot_pending().unwrap().into_incremental() {
        Ok(checkpoint) => checkpoint,
        Err(_) => panic!("the RocksDB backend took a full snapshot"),
    }
}

/// Stores the SST files of `checkpoint` not in `uploaded` yet (as the runtime does), and
/// returns the part and the names of the files stored now.
fn upload(
    checkpoint: &IncrementalCheckpoint,
    uploaded: &mut BTreeMap<String, String>,
    store: &mut Store,
) -> (Vec<u8>, Vec<String>) {
    let mut new = Vec::new();
    for file in checkpoint.files().iter().filter(|file| file.shareable) {
        if uploaded.contains_key(&file.name) {
            continue;
        }
        let path = format!("shared/op/{}", file.name);
        store.insert(path.clone(), checkpoint.read_file(&file.name).unwrap());
        uploaded.insert(file.name.clone(), path);
        new.push(file.name.clone());
    }
    (checkpoint.encode(uploaded).unwrap(), new)
}

fn read_back(payload: &[u8], store: &Store) -> Result<KeyedStateSnapshot, EddyError> {
    incremental_to_full(payload, "test part", None, &mut |path| {
        store
            .get(path)
            .cloned()
            .ok_or_else(|| EddyError::Internal(format!("{path} is not stored")))
    })
}

/// A snapshot's contents, comparable whatever the order of its blocks.
type Contents = BTreeSet<(String, Vec<u8>, Vec<u8>, Option<Vec<u8>>, Vec<u8>)>;

fn contents(snapshot: &KeyedStateSnapshot) -> Contents {
    let mut all = BTreeSet::new();
    for meta in snapshot.states() {
        for (_, entry) in snapshot.entries_of(&meta.name).unwrap() {
            all.insert((
                meta.name.clone(),
                entry.key.to_vec(),
                entry.namespace.to_vec(),
                entry.user_key.map(<[u8]>::to_vec),
                entry.value.to_vec(),
            ));
        }
    }
    all
}

fn assert_same(read: &KeyedStateSnapshot, expected: &KeyedStateSnapshot) {
    assert_eq!(read.states(), expected.states());
    assert_eq!(read.timer_services(), expected.timer_services());
    assert_eq!(read.key_group_range(), expected.key_group_range());
    assert_eq!(contents(read), contents(expected));
    assert_eq!(read.entry_count(), expected.entry_count());
}

#[test]
fn an_incremental_snapshot_reads_back_as_the_full_one_and_shares_unchanged_files(
) -> Result<(), EddyError> {
    let mut b = backend();
    let states = States::register(&mut b)?;
    states.fill(&b, 0..400)?;
    let first = incremental(&b);
    assert!(first.head().entry_count() == 0, "the head holds no entries");
    let (mut uploaded, mut store) = (BTreeMap::new(), Store::new());
    let (first_part, first_new) = upload(&first, &mut uploaded, &mut store);
    assert!(
        !first_new.is_empty(),
        "the first snapshot stores its SST files"
    );

    // More state, and changes to the old: a second snapshot stores only the new files.
    // (No full snapshot in between: releasing the RocksDB snapshot it reads from lets
    // RocksDB rewrite the bottommost files, which would make every file new.)
    states.fill(&b, 300..700)?;
    let second = incremental(&b);
    let (second_part, second_new) = upload(&second, &mut uploaded, &mut store);
    let reused: Vec<&String> = first_new
        .iter()
        .filter(|name| second.files().iter().any(|file| &&file.name == name))
        .collect();
    assert!(
        !reused.is_empty(),
        "no SST file of the first snapshot is shared: {:?} then {:?}",
        first.files(),
        second.files()
    );
    assert!(reused.iter().all(|name| !second_new.contains(name)));
    assert!(!second_new.is_empty(), "the new state is in a new SST file");
    let shared_paths = incremental_shared_paths(&second_part, "second")?;
    assert_eq!(
        shared_paths.len(),
        second.files().iter().filter(|f| f.shareable).count()
    );
    let expected_second = b.snapshot()?;
    // The first as the heap backend (same canonical bytes) holds the same writes.
    let mut heap = KeyedStateBackend::<u64>::heap(KeyGroupRange::new(0, 127), 128);
    heap.set_ttl_clock(Arc::new(ManualClock::new(1_000)));
    States::register(&mut heap)?.fill(&heap, 0..400)?;
    let expected_first = heap.snapshot()?;

    // Both read back as the full snapshots of the same state, also once the instance's own
    // checkpoint directories are gone.
    drop((first, second));
    assert_same(&read_back(&first_part, &store)?, &expected_first);
    assert_same(&read_back(&second_part, &store)?, &expected_second);
    Ok(())
}

#[test]
fn an_incremental_snapshot_restores_into_the_heap_backend() -> Result<(), EddyError> {
    let mut b = backend();
    let states = States::register(&mut b)?;
    states.fill(&b, 0..200)?;
    let (mut uploaded, mut store) = (BTreeMap::new(), Store::new());
    let (part, _) = upload(&incremental(&b), &mut uploaded, &mut store);
    let snapshot = KeyedStateSnapshot::decode(&read_back(&part, &store)?.encode()?, "canonical")?;

    let mut heap = KeyedStateBackend::<u64>::heap(KeyGroupRange::new(0, 127), 128);
    heap.set_ttl_clock(Arc::new(ManualClock::new(1_000)));
    heap.restore("op", vec![snapshot])?;
    let restored = States::register(&mut heap)?;
    assert!(heap.finish_restore()?.is_empty());
    for key in 0..200u64 {
        heap.set_current_key(key)?;
        assert_eq!(restored.value.value()?, Some(format!("value of {key}")));
        assert_eq!(
            restored.list.get()?.collect::<Vec<_>>(),
            vec![key as u32, 7]
        );
        assert_eq!(
            restored.map.get(&(key as u32))?,
            Some(format!("entry {key}"))
        );
        assert_eq!(restored.ttl.value()?, Some(key * 3));
        restored.windows.set_current_namespace((10, 20));
        assert_eq!(restored.windows.get()?, Some(key + 10));
    }
    Ok(())
}

#[test]
fn a_missing_or_different_shared_file_is_an_error_naming_it() -> Result<(), EddyError> {
    let mut b = backend();
    let states = States::register(&mut b)?;
    states.fill(&b, 0..100)?;
    let (mut uploaded, mut store) = (BTreeMap::new(), Store::new());
    let (part, new) = upload(&incremental(&b), &mut uploaded, &mut store);
    let path = uploaded[&new[0]].clone();

    let mut truncated = store.clone();
    truncated.get_mut(&path).unwrap().pop();
    let err = read_back(&part, &truncated).unwrap_err().to_string();
    assert!(err.contains("test part"), "{err}");
    assert!(err.contains(&new[0]), "{err}");

    let mut missing = store.clone();
    missing.remove(&path);
    let err = read_back(&part, &missing).unwrap_err().to_string();
    assert!(err.contains(&path), "{err}");

    let err = read_back(&part[..part.len() / 2], &store)
        .unwrap_err()
        .to_string();
    assert!(err.contains("test part"), "{err}");
    Ok(())
}

#[test]
fn a_part_is_rebuilt_under_the_given_directory_and_removed_after() -> Result<(), EddyError> {
    let mut b = backend();
    let states = States::register(&mut b)?;
    states.fill(&b, 0..50)?;
    let (mut uploaded, mut store) = (BTreeMap::new(), Store::new());
    let (part, _) = upload(&incremental(&b), &mut uploaded, &mut store);
    let scratch = tempfile::tempdir().unwrap();
    let mut seen = Vec::new();
    let read = incremental_to_full(&part, "test part", Some(scratch.path()), &mut |path| {
        // While the files are fetched, the rebuilt directory is under `scratch`.
        seen.extend(
            std::fs::read_dir(scratch.path())
                .unwrap()
                .flatten()
                .map(|e| e.path()),
        );
        Ok(store[path].clone())
    })?;
    assert!(read.entry_count() > 0);
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|dir| dir
        .file_name()
        .is_some_and(|name| name.to_string_lossy().starts_with("eddy-restore-"))));
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
    Ok(())
}

#[test]
fn a_file_read_into_a_used_buffer_is_the_file_with_room_to_spare() -> Result<(), EddyError> {
    let mut b = backend();
    let states = States::register(&mut b)?;
    states.fill(&b, 0..200)?;
    let checkpoint = incremental(&b);
    let mut buffer = vec![0xAB; 3];
    for file in checkpoint.files() {
        let expected = checkpoint.read_file(&file.name)?;
        assert_eq!(expected.len() as u64, file.size, "{}", file.name);
        // A recycled buffer: what it held before must not leak into the file's contents.
        buffer = checkpoint.read_file_into(&file.name, buffer, 64)?;
        assert_eq!(buffer, expected, "{}", file.name);
        assert!(buffer.capacity() - buffer.len() >= 64, "{}", file.name);
    }
    Ok(())
}
