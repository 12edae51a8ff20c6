//! [`RocksDbConfig`]: where a RocksDB backend keeps its files and how much memory it may use.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock, PoisonError};

use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, Cache, DBCompressionType, Options, WriteBufferManager,
};

const MIB: usize = 1024 * 1024;

/// The memory every RocksDB instance of a process with one budget shares.
#[derive(Clone)]
pub(crate) struct SharedMemory {
    /// The block cache, which the memtables are charged to as well.
    pub(crate) cache: Cache,
    /// Flushes memtables once they use their share of the budget.
    pub(crate) write_buffers: WriteBufferManager,
}

/// The configuration of an embedded RocksDB keyed state backend (one RocksDB instance per
/// keyed operator subtask).
///
/// Memory follows Flink's managed memory for RocksDB, with **one budget per process**: every
/// instance of the process (each keyed operator subtask on each worker) shares one block
/// cache that also accounts for the memtables (through one write-buffer manager charging the
/// cache), the memtables taking up to half of it. So the memory RocksDB uses does not grow
/// with the parallelism or the number of keyed operators; instances with another budget
/// share their own.
///
/// | setting | default |
/// | --- | --- |
/// | [`working_dir`](Self::working_dir) | the OS temp directory |
/// | [`memory_budget`](Self::memory_budget) | 128 MiB per process |
/// | [`write_buffer_ratio`](Self::write_buffer_ratio) | 0.5 |
/// | [`write_buffer_size`](Self::write_buffer_size) | 16 MiB per state |
/// | [`max_write_buffer_number`](Self::max_write_buffer_number) | 2 |
/// | [`bloom_bits_per_key`](Self::bloom_bits_per_key) | 10 |
/// | [`list_chunk_bytes`](Self::list_chunk_bytes) | 64 MiB |
/// | [`statistics`](Self::statistics) | off |
/// | [`object_cache_entries`](Self::object_cache_entries) | 0 (off) |
/// | [`heap_timers`](Self::heap_timers) | off (timers in RocksDB) |
///
/// ```
/// use eddy_state::rocksdb::RocksDbConfig;
///
/// let config = RocksDbConfig::default()
///     .with_working_dir(std::env::temp_dir())
///     .with_memory_budget(256 << 20);
/// assert_eq!(config.memory_budget, 256 << 20);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct RocksDbConfig {
    /// The directory under which every backend creates its own, uniquely named, instance
    /// directory. The instance directory is deleted when the backend is dropped (local state
    /// is a working copy; durability comes from checkpoints, as in Flink). `None`: the OS
    /// temp directory.
    pub working_dir: Option<PathBuf>,
    /// Bytes of memory for the block cache, memtables included, shared by every RocksDB
    /// instance of the process with this budget (Flink's managed memory).
    pub memory_budget: usize,
    /// The share of [`memory_budget`](Self::memory_budget) memtables may use before RocksDB
    /// flushes them (Flink's `state.backend.rocksdb.memory.write-buffer-ratio`).
    pub write_buffer_ratio: f64,
    /// The memtable size of each state's column family.
    pub write_buffer_size: usize,
    /// Memtables per column family (one active, the others being flushed).
    pub max_write_buffer_number: i32,
    /// Bloom filter bits per key (point lookups skip files without the key); 0 disables them.
    pub bloom_bits_per_key: f64,
    /// The most bytes of one list chunk: a list state's elements are spread over chunks (one
    /// RocksDB value each) so that no value exceeds this, whatever the list's length. A single
    /// element larger than this gets a chunk of its own.
    pub list_chunk_bytes: usize,
    /// Collects RocksDB statistics (tickers such as `rocksdb.number.keys.read`), read through
    /// [`RocksDbKeyedStateBackend::ticker`](super::RocksDbKeyedStateBackend::ticker). Costs a
    /// little on every access: for tests and diagnosis.
    pub statistics: bool,
    /// The most entries of the write-back object cache of each cached state of each subtask:
    /// deserialized values of hot keys kept in front of RocksDB, written back when evicted and
    /// before every snapshot (value, reducing, aggregating and map state without TTL; see
    /// the `cache` module docs). An entry costs about its key's bytes, the value object and
    /// ~100 bytes of bookkeeping. 0 turns the cache off.
    pub object_cache_entries: usize,
    /// Keep timers on the heap instead of in RocksDB (Flink's
    /// `state.backend.rocksdb.timer-service.factory: HEAP`). Faster when timers are many and
    /// short-lived, but their memory is then unbounded; the default keeps them in two column
    /// families per time domain, as Flink's default `ROCKSDB` factory.
    pub heap_timers: bool,
    /// Take checkpoints incrementally (Flink's `execution.checkpointing.incremental`): each
    /// checkpoint uploads only the SST files the previous ones of this instance did not, and
    /// refers to the others. On by default; savepoints are always full, canonical snapshots.
    /// A state whose key or namespace type has an opaque schema makes its backend take full
    /// checkpoints (see the `incremental` module).
    pub incremental_checkpoints: bool,
}

impl Default for RocksDbConfig {
    fn default() -> Self {
        RocksDbConfig {
            working_dir: None,
            memory_budget: 128 * MIB,
            write_buffer_ratio: 0.5,
            write_buffer_size: 16 * MIB,
            max_write_buffer_number: 2,
            bloom_bits_per_key: 10.0,
            list_chunk_bytes: 64 * MIB,
            statistics: false,
            object_cache_entries: 0,
            heap_timers: false,
            incremental_checkpoints: true,
        }
    }
}

impl RocksDbConfig {
    /// Sets the directory instance directories are created in.
    pub fn with_working_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.working_dir = Some(dir.into());
        self
    }

    /// Sets the memory budget (block cache with memtables) in bytes.
    pub fn with_memory_budget(mut self, bytes: usize) -> Self {
        self.memory_budget = bytes;
        self
    }

    /// Sets the most bytes of one list chunk.
    pub fn with_list_chunk_bytes(mut self, bytes: usize) -> Self {
        self.list_chunk_bytes = bytes;
        self
    }

    /// Turns RocksDB statistics on or off.
    pub fn with_statistics(mut self, on: bool) -> Self {
        self.statistics = on;
        self
    }

    /// Sets the most entries of each state's object cache (0: off).
    pub fn with_object_cache_entries(mut self, entries: usize) -> Self {
        self.object_cache_entries = entries;
        self
    }

    /// Keeps timers on the heap (`true`) or in RocksDB (`false`, the default).
    pub fn with_heap_timers(mut self, heap_timers: bool) -> Self {
        self.heap_timers = heap_timers;
        self
    }

    /// Takes checkpoints incrementally (`true`, the default) or as full snapshots.
    pub fn with_incremental_checkpoints(mut self, incremental: bool) -> Self {
        self.incremental_checkpoints = incremental;
        self
    }

    /// Checks the settings; every error names the setting.
    pub(crate) fn validate(&self) -> eddy_core::Result<()> {
        let fail = |what: &str| Err(eddy_core::EddyError::Config(format!("RocksDB: {what}")));
        if self.memory_budget < MIB {
            return fail("memory_budget must be at least 1 MiB");
        }
        if !(self.write_buffer_ratio > 0.0 && self.write_buffer_ratio < 1.0) {
            return fail("write_buffer_ratio must be between 0 and 1 (exclusive)");
        }
        if self.write_buffer_size < 64 * 1024 {
            return fail("write_buffer_size must be at least 64 KiB");
        }
        if self.max_write_buffer_number < 2 {
            return fail("max_write_buffer_number must be at least 2");
        }
        if self.list_chunk_bytes == 0 {
            return fail("list_chunk_bytes must be positive");
        }
        Ok(())
    }

    /// The block cache and write-buffer manager of this process's budget: created by the
    /// first instance with this budget and shared by every later one, so that the memory of
    /// all RocksDB instances of a process (every keyed operator subtask on every worker) is
    /// bounded by one budget, whatever the parallelism.
    pub(crate) fn shared_memory(&self) -> SharedMemory {
        static SHARED: OnceLock<Mutex<HashMap<(usize, u64), SharedMemory>>> = OnceLock::new();
        let key = (self.memory_budget, self.write_buffer_ratio.to_bits());
        let mut shared = SHARED
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        shared
            .entry(key)
            .or_insert_with(|| {
                let cache = Cache::new_lru_cache(self.memory_budget);
                // `as` is exact enough here: a share of a byte count, rounded down.
                let write_buffers = (self.memory_budget as f64 * self.write_buffer_ratio) as usize;
                let write_buffers = WriteBufferManager::new_write_buffer_manager_with_cache(
                    write_buffers,
                    false,
                    cache.clone(),
                );
                SharedMemory {
                    cache,
                    write_buffers,
                }
            })
            .clone()
    }

    /// The database-wide options: memtables charged to the shared cache up to their share.
    pub(crate) fn db_options(&self, memory: &SharedMemory) -> Options {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_write_buffer_manager(&memory.write_buffers);
        // RocksDB's info log would otherwise grow for the life of the job in the instance
        // directory; one small file is enough for diagnosis.
        opts.set_keep_log_file_num(1);
        opts.set_max_log_file_size(MIB);
        if self.statistics {
            opts.enable_statistics();
        }
        opts
    }

    /// The options of one state's column family (merge operator and compaction filter are
    /// added by the caller).
    pub(crate) fn cf_options(&self, cache: &Cache) -> Options {
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(cache);
        if self.bloom_bits_per_key > 0.0 {
            table.set_bloom_filter(self.bloom_bits_per_key, false);
        }
        // Index and filter blocks count against the budget, as in Flink's bounded memory;
        // level 0's stay pinned because every lookup needs them.
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        // Partitioned (Flink's `partitioned-index-filters`): a lookup loads one small filter
        // and index partition, not the whole filter of a large file. Without it, once the
        // state outgrows the cache every `get` re-read and re-checksummed a filter block of
        // megabytes (measured: W5 on 5M windows ran at a few thousand events/s).
        table.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
        table.set_partition_filters(true);
        table.set_metadata_block_size(4096);
        table.set_pin_top_level_index_and_filter(true);
        table.set_cache_index_and_filter_blocks_with_high_priority(true);
        table.set_format_version(5);
        let mut opts = Options::default();
        opts.set_block_based_table_factory(&table);
        opts.set_write_buffer_size(self.write_buffer_size);
        opts.set_max_write_buffer_number(self.max_write_buffer_number);
        // A bloom filter over the memtable's whole keys: a point lookup of a key the memtable
        // does not hold skips the skip-list search (measured on W1 below).
        opts.set_memtable_prefix_bloom_ratio(0.1);
        opts.set_memtable_whole_key_filtering(true);
        opts.set_compression_type(DBCompressionType::Lz4);
        opts
    }
}
