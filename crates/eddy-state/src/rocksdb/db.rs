//! The RocksDB instance of one backend, shared by its state handles.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use eddy_core::{EddyError, KeyGroup, Result};
use rocksdb::{
    BoundColumnFamily, DBWithThreadMode, MultiThreaded, Options, ReadOptions, WriteBatch,
    WriteOptions,
};

use super::config::RocksDbConfig;

/// The RocksDB handle type: multi-threaded column-family mode, because it creates column
/// families through a shared reference (states are registered while handles exist).
pub(crate) type Rdb = DBWithThreadMode<MultiThreaded>;

/// A RocksDB instance with the options every access uses.
///
/// Field order matters: fields drop in declaration order, so the database is closed before
/// the options it was opened with go, and the instance directory is removed last.
pub(crate) struct Db {
    pub(crate) rdb: Rdb,
    /// WAL off: durability comes from checkpoints, as in Flink.
    pub(crate) write: WriteOptions,
    /// The read options of point lookups, created once instead of per call.
    pub(crate) read: ReadOptions,
    /// The database options (they own the statistics object).
    pub(crate) options: Options,
    /// Column-family options must outlive the database (they own the compaction filter
    /// factories and merge operators), and the `rocksdb` crate does not keep them.
    pub(crate) cf_options: RefCell<Vec<Options>>,
    _dir: InstanceDir,
}

impl Db {
    /// Opens a fresh instance in a new directory under the configured working directory.
    pub(crate) fn open(config: &RocksDbConfig, options: Options) -> Result<Db> {
        let dir = InstanceDir::create(config.working_dir.as_deref())?;
        let rdb = Rdb::open(&options, dir.path()).map_err(|e| {
            EddyError::Config(format!(
                "cannot open RocksDB in {}: {e}",
                dir.path().display()
            ))
        })?;
        let mut write = WriteOptions::default();
        write.disable_wal(true);
        Ok(Db {
            rdb,
            write,
            read: ReadOptions::default(),
            options,
            cf_options: RefCell::new(Vec::new()),
            _dir: dir,
        })
    }

    /// The column family of the state `name`.
    #[inline]
    pub(crate) fn cf(&self, name: &str) -> Result<Arc<BoundColumnFamily<'_>>> {
        self.rdb.cf_handle(name).ok_or_else(|| {
            EddyError::Internal(format!("state \"{name}\" has no RocksDB column family"))
        })
    }

    /// Creates the column family of a new state.
    pub(crate) fn create_cf(&self, name: &str, options: Options) -> Result<()> {
        self.rdb
            .create_cf(name, &options)
            .map_err(|e| EddyError::state(name, format!("cannot create its column family: {e}")))?;
        self.cf_options.borrow_mut().push(options);
        Ok(())
    }

    /// Whether the column family `cf_name` (of state `state`) holds no key: one seek.
    pub(crate) fn cf_is_empty(&self, state: &str, cf_name: &str) -> Result<bool> {
        let cf = self.cf(cf_name)?;
        let mut iter = self.rdb.raw_iterator_cf_opt(&cf, total_order());
        iter.seek_to_first();
        if iter.valid() {
            return Ok(false);
        }
        iter.status()
            .map_err(|e| EddyError::state(state, format!("RocksDB failed: {e}")))?;
        Ok(true)
    }

    /// Applies `batch` (WAL off).
    pub(crate) fn write(&self, batch: WriteBatch) -> std::result::Result<(), rocksdb::Error> {
        self.rdb.write_opt(batch, &self.write)
    }

    /// The instance directory.
    pub(crate) fn path(&self) -> &Path {
        self._dir.path()
    }
}

/// Read options for a scan across prefixes (whole column families, in key order). A state's
/// column family may have a prefix extractor (see `MemtableLayout`), and without
/// `total_order_seek` RocksDB would then confine an iterator to the prefix of its seek key.
pub(crate) fn total_order() -> ReadOptions {
    let mut read = ReadOptions::default();
    read.set_total_order_seek(true);
    read
}

/// The error of a failed RocksDB call on state `name` in key group `kg`.
pub(crate) fn rocks_error(name: &str, kg: KeyGroup, e: rocksdb::Error) -> EddyError {
    EddyError::state(name, format!("RocksDB failed in key group {kg}: {e}"))
}

/// The error of stored bytes that do not decode as the state's type.
pub(crate) fn decode_error(
    name: &str,
    kg: KeyGroup,
    what: &str,
    e: impl std::fmt::Display,
) -> EddyError {
    EddyError::state(
        name,
        format!(
            "key group {kg}: the stored {what} cannot be decoded (corrupt bytes, or written as \
             another type): {e}"
        ),
    )
}

/// A directory of its own for one RocksDB instance, deleted when dropped.
struct InstanceDir {
    path: PathBuf,
}

/// Distinguishes the instance directories of one process.
static INSTANCES: AtomicU64 = AtomicU64::new(0);

impl InstanceDir {
    fn create(parent: Option<&Path>) -> Result<InstanceDir> {
        let parent = parent.map_or_else(std::env::temp_dir, Path::to_path_buf);
        std::fs::create_dir_all(&parent).map_err(|e| EddyError::io(&parent, e))?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "eddy-rocksdb-{}-{}-{nanos}",
            std::process::id(),
            INSTANCES.fetch_add(1, Ordering::Relaxed)
        );
        let path = parent.join(name);
        // `create_dir`, not `create_dir_all`: an existing directory must not be shared.
        std::fs::create_dir(&path).map_err(|e| EddyError::io(&path, e))?;
        Ok(InstanceDir { path })
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for InstanceDir {
    fn drop(&mut self) {
        // Best effort: a directory that cannot be removed leaves files behind, which is no
        // reason to fail (or panic in) the drop of a finished job.
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
