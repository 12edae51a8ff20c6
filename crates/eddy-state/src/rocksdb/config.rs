//! [`RocksDbConfig`]: where a RocksDB backend keeps its files and how much memory it may use.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock, PoisonError};

use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, Cache, DBCompressionType, MemtableFactory, Options,
    SliceTransform, WriteBufferManager,
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
/// | [`memory_budget`](Self::memory_budget) | 512 MiB per process |
/// | [`write_buffer_ratio`](Self::write_buffer_ratio) | 0.5 |
/// | [`write_buffer_size`](Self::write_buffer_size) | 64 MiB per state, at most a quarter of the memtables' share |
/// | [`hash_memtables`](Self::hash_memtables) | off |
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
    /// The memtable size of each state's column family, capped at a quarter of the memtables'
    /// share of the budget ([`effective_write_buffer_size`](Self::effective_write_buffer_size)):
    /// a memtable larger than the write-buffer manager allows would be flushed long before
    /// it filled, over and over.
    pub write_buffer_size: usize,
    /// Memtables per column family (one active, the others being flushed).
    pub max_write_buffer_number: i32,
    /// Hash-indexed memtables with in-place updates for the states' column families (see
    /// [`MemtableLayout`]): a point read or write of a key the memtable holds costs a hash
    /// probe instead of a skip-list search, and rewriting a value of the same size reuses its
    /// memtable entry, so the memtable holds each key once instead of once per write. Timers
    /// always use the skip list (they are scanned in time order).
    ///
    /// **Off by default, because of checkpoints.** Without checkpoints, W1 without the object
    /// cache ran 2-3x faster with it, W2 and W3 25-30 % (BENCHMARKS.md, session 17). But a
    /// checkpoint flushes the memtables, RocksDB sorts a hash memtable to flush it, and with
    /// in-place updates the memtable holds the whole hot state: W1 with checkpoints every 2 s
    /// took twice as long, each checkpoint 1-3 s. Turn it on for jobs that checkpoint rarely
    /// or not at all.
    pub hash_memtables: bool,
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
            memory_budget: 512 * MIB,
            write_buffer_ratio: 0.5,
            write_buffer_size: 64 * MIB,
            max_write_buffer_number: 2,
            hash_memtables: false,
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

    /// Uses hash memtables with in-place updates for states (`true`) or RocksDB's default
    /// skip-list memtables (`false`, the default).
    pub fn with_hash_memtables(mut self, on: bool) -> Self {
        self.hash_memtables = on;
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

    /// The memtable size each state's column family gets: [`write_buffer_size`](Self::write_buffer_size),
    /// capped at a quarter of the memtables' share of the budget (64 KiB at least).
    ///
    /// ```
    /// use eddy_state::rocksdb::RocksDbConfig;
    ///
    /// let config = RocksDbConfig::default().with_memory_budget(128 << 20);
    /// assert_eq!(config.effective_write_buffer_size(), 16 << 20);
    /// ```
    pub fn effective_write_buffer_size(&self) -> usize {
        self.write_buffer_size
            .min(self.write_buffer_share() / 4)
            .max(64 * 1024)
    }

    /// The bytes of the budget memtables may use: what the write-buffer manager allows.
    fn write_buffer_share(&self) -> usize {
        // `as` is exact enough here: a share of a byte count, rounded down.
        (self.memory_budget as f64 * self.write_buffer_ratio) as usize
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
                let write_buffers = WriteBufferManager::new_write_buffer_manager_with_cache(
                    self.write_buffer_share(),
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
        // Hash memtables cannot take concurrent inserts. Nothing is lost: one subtask's
        // thread is the only writer of its instance.
        opts.set_allow_concurrent_memtable_write(false);
        opts.set_enable_write_thread_adaptive_yield(false);
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
        opts.set_write_buffer_size(self.effective_write_buffer_size());
        opts.set_max_write_buffer_number(self.max_write_buffer_number);
        // A bloom filter over the memtable's whole keys: a point lookup of a key the memtable
        // does not hold skips the skip-list search (measured on W1 below).
        opts.set_memtable_prefix_bloom_ratio(0.1);
        opts.set_memtable_whole_key_filtering(true);
        opts.set_compression_type(DBCompressionType::Lz4);
        opts
    }
}

/// How the memtable of a state's column family is indexed, chosen from the state's kind.
///
/// RocksDB's default memtable is one skip list: every point read or write of a memtable of
/// a few hundred thousand keys is a search of ~20 dependent cache misses, which dominated
/// the profile of a point-access workload (W1: half of all cycles). A hash memtable finds
/// a key's bucket from a *prefix* of it instead, which needs a prefix extractor on the
/// column family; the prefix is chosen so that every read the state makes stays within one
/// bucket:
///
/// - [`WholeKey`](Self::WholeKey) (value, reducing, aggregating state): the prefix is the
///   whole stored key `[kg][key][ns]`, and a bucket is a short linked list. These states
///   only read single keys.
/// - [`KeyNamespace`](Self::KeyNamespace) (map and list state): the prefix is `[kg][key][ns]`,
///   the stored key without a map's user key or a list's chunk number, so a bucket is one
///   map or list (RocksDB turns a bucket of more than 256 entries into a skip list), and a
///   prefix iteration over it (`entries()`, a list's `get()`) seeks within that bucket.
///
/// Scans across prefixes (snapshots, [`keys`](super::RocksDbKeyedStateBackend::keys)) must
/// set `total_order_seek`; RocksDB then sorts the memtable once for the scan. A flush sorts
/// it too, which is the price of the hash: the flush thread took 37-43 % of all CPU in W2's
/// and W3's profiles, and a checkpoint (which flushes) sorts the whole hot state.
///
/// Either layout also turns on in-place updates: a `put` whose value is no larger than the
/// one in the memtable overwrites it, so a hot key does not fill the memtable with versions.
/// RocksDB's price is that an iterator may see a value rewritten in place after it was
/// created. A subtask never writes while a snapshot scan runs (the scan is synchronous, or
/// reads a flushed checkpoint). A map iterated while its own entries are rewritten may see
/// the new values in its later batches, as Flink's RocksDB map iterator (which re-reads the
/// live map every 128 entries) does.
#[derive(Clone, Copy, Debug)]
pub(crate) enum MemtableLayout {
    /// One bucket per stored key; the extractor is the identity.
    WholeKey,
    /// One bucket per `[kg][key][ns]`, computed by the given extractor.
    KeyNamespace(fn(&[u8]) -> &[u8]),
}

impl RocksDbConfig {
    /// Sets up `opts` (a state's column family options) for `layout`, if hash memtables are
    /// on.
    pub(crate) fn apply_memtable_layout(&self, opts: &mut Options, layout: MemtableLayout) {
        if !self.hash_memtables {
            return;
        }
        match layout {
            MemtableLayout::WholeKey => {
                opts.set_prefix_extractor(SliceTransform::create_noop());
                // One bucket per 256 bytes of memtable: chains of a few small entries, and
                // the bucket array (in the memtable's arena) 1/32 of it.
                opts.set_memtable_factory(MemtableFactory::HashLinkList {
                    bucket_count: (self.effective_write_buffer_size() / 256).max(1024),
                });
            }
            MemtableLayout::KeyNamespace(prefix) => {
                opts.set_prefix_extractor(SliceTransform::create(
                    "eddy.key-namespace",
                    prefix,
                    None,
                ));
                // Linked-list buckets beat a skip list per bucket here too (W2 +25 %, W3
                // +5-25 %, measured), one per 128 bytes: a bucket holds about one map or
                // list, whose entries in one memtable are few.
                opts.set_memtable_factory(MemtableFactory::HashLinkList {
                    bucket_count: (self.effective_write_buffer_size() / 128).max(1024),
                });
            }
        }
        opts.set_inplace_update_support(true);
    }
}
