//! [`CheckpointStorage`]: a blocking key-value view of a local directory or an object store.
//!
//! Backed by the `object_store` crate (Apache Arrow's), which speaks to the local file system,
//! Amazon S3 (and S3-compatible servers), Google Cloud Storage and Azure Blob Storage through
//! one trait. `object_store` is async; this type owns a small tokio runtime (one worker thread
//! plus tokio's blocking pool) and runs each call to completion on it, so the rest of Eddy
//! stays free of async: the runtime calls it from its background uploader thread and the CLI
//! from `main`.
//!
//! # Guarantees
//!
//! * **A put is atomic.** A reader sees the whole object or no object, never a prefix:
//!   - local: `object_store`'s `LocalFileSystem` writes to a staging file next to the target
//!     (`<name>#<n>`) and renames it over the target; this storage also enables its `fsync`
//!     option, so when `put` returns the file's contents *and* its directory entry are on disk
//!     (the file and the parent directory are fsynced before and after the rename). Staging
//!     files left by a crash are invisible to [`list`](CheckpointStorage::list) and removed with
//!     their directory by [`delete_prefix`](CheckpointStorage::delete_prefix).
//!   - S3, GCS, Azure: a single-request upload, which these services publish atomically; once
//!     the request has succeeded the object is durable and (on all three, today) visible to
//!     every later read and list. Objects above [`MULTIPART_THRESHOLD`] go up as a multipart
//!     upload, which the service publishes atomically when it completes (and the local store
//!     stages and renames the same way).
//! * **Puts that return are ordered.** What a successful `put` wrote is visible to any `get` or
//!   `list` that starts after it returned. The checkpoint layout relies on this to write
//!   `_metadata` last.
//! * Nothing here retries beyond what `object_store` does (a bounded exponential backoff on
//!   transient HTTP errors); a failure is returned, naming the object, and the caller decides.

use std::future::Future;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use eddy_core::{EddyError, Result};
use futures::{StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

/// Objects larger than this are uploaded in parts by default (S3 takes at most 5 GiB in one
/// request; parts also let a large upload proceed in parallel).
pub const MULTIPART_THRESHOLD: usize = 64 * 1024 * 1024;

/// The size of each part of a multipart upload (S3's minimum is 5 MiB, except the last part).
const MULTIPART_CHUNK: usize = 8 * 1024 * 1024;

/// Parts of one multipart upload in flight at a time.
const MULTIPART_CONCURRENCY: usize = 4;

/// One stored object: its path relative to the storage root, and its size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// `/`-separated path relative to the storage root, e.g. `chk-0000000001/_metadata`.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
}

/// A checkpoint root (a local directory or an object-store prefix) with a blocking API.
///
/// Paths given to its methods are `/`-separated and relative to the root. It is `Send + Sync`:
/// share it (e.g. in an `Arc`) between the threads that write and read checkpoints.
///
/// Its methods block the calling thread until the operation is done. They must not be called
/// from inside an async (tokio) context: they return an error instead of blocking one.
pub struct CheckpointStorage {
    store: Arc<dyn ObjectStore>,
    /// The root inside `store` (empty for a local directory: the store is rooted there).
    root: Path,
    /// The root as shown to people: an absolute local path or a URL without trailing `/`.
    location: String,
    /// For a local root: its directory, to remove crash leftovers in `delete_prefix`.
    local_root: Option<PathBuf>,
    /// Objects above this size are uploaded in parts.
    multipart_threshold: usize,
    /// Always `Some` until dropped (taken in `drop` to shut it down without blocking).
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for CheckpointStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointStorage")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl CheckpointStorage {
    /// Opens the checkpoint root at `location`.
    ///
    /// * a plain path, relative or absolute (`/var/eddy/ckpt`, `ckpt`), or `file:///var/eddy/ckpt`:
    ///   a local directory, created if missing;
    /// * `s3://bucket/prefix` (also `s3a://`): credentials, region and endpoint from the
    ///   environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
    ///   `AWS_REGION`, web identity, ECS or instance credentials...). `AWS_ENDPOINT_URL` points
    ///   it at an S3-compatible server and `AWS_ALLOW_HTTP=true` allows plain HTTP (a local
    ///   test server). Requests use path-style addressing unless
    ///   `AWS_VIRTUAL_HOSTED_STYLE_REQUEST=true`;
    /// * `gs://bucket/prefix`: credentials from `GOOGLE_SERVICE_ACCOUNT` (or the other
    ///   `GOOGLE_*` variables `object_store` reads) or the instance's metadata server;
    /// * `az://container/prefix` (also `abfs://`, `abfss://`, `azure://`): account and
    ///   credentials from the `AZURE_*` variables.
    ///
    /// Nothing is contacted yet for a remote store: a wrong bucket or credentials surface on
    /// the first operation, naming the object.
    pub fn open(location: &str) -> Result<Self> {
        Self::open_with(location, true)
    }

    /// Opens an existing checkpoint root: as [`open`](Self::open), but a local directory that
    /// does not exist is an error naming it instead of being created (for reading: `eddy
    /// checkpoints ls`, restoring). Remote roots are not checked until the first operation.
    pub fn open_existing(location: &str) -> Result<Self> {
        Self::open_with(location, false)
    }

    fn open_with(location: &str, create: bool) -> Result<Self> {
        let location = location.trim();
        if location.is_empty() {
            return Err(EddyError::Config(
                "the checkpoint location is empty: give a directory or a URL".into(),
            ));
        }
        let Some((scheme, _)) = location.split_once("://") else {
            return Self::open_local(FsPath::new(location), create);
        };
        let url = url::Url::parse(location)
            .map_err(|e| EddyError::checkpoint(location, format!("not a valid URL: {e}")))?;
        match scheme.to_ascii_lowercase().as_str() {
            "file" => {
                let path = url.to_file_path().map_err(|()| {
                    EddyError::checkpoint(location, "not a local file URL (file:///absolute/path)")
                })?;
                Self::open_local(&path, create)
            }
            "s3" | "s3a" => Self::open_s3(location, &url),
            "gs" => Self::open_gcs(location, &url),
            "az" | "abfs" | "abfss" | "azure" => Self::open_azure(location, &url),
            other => Err(EddyError::checkpoint(
                location,
                format!(
                    "unsupported URL scheme `{other}://`: use a local path, file://, s3://, \
                     gs:// or az://"
                ),
            )),
        }
    }

    fn open_local(path: &FsPath, create: bool) -> Result<Self> {
        if create {
            std::fs::create_dir_all(path).map_err(|e| EddyError::io(path, e))?;
        } else if !path.is_dir() {
            return Err(EddyError::checkpoint(
                path.display().to_string(),
                "no such directory",
            ));
        }
        let root = std::fs::canonicalize(path).map_err(|e| EddyError::io(path, e))?;
        let store = LocalFileSystem::new_with_prefix(&root)
            .map_err(|e| EddyError::checkpoint(root.display().to_string(), e.to_string()))?
            // Durable puts (see the module docs) and no empty directories left by deletes.
            .with_fsync(true)
            .with_automatic_cleanup(true);
        Ok(Self {
            store: Arc::new(store),
            root: Path::default(),
            location: root.display().to_string(),
            local_root: Some(root),
            multipart_threshold: MULTIPART_THRESHOLD,
            runtime: Some(runtime()?),
        })
    }

    /// The root inside the bucket, from the URL's path (`s3://bucket/a/b` -> `a/b`).
    #[cfg(feature = "cloud")]
    fn remote(location: &str, url: &url::Url, store: Arc<dyn ObjectStore>) -> Result<Self> {
        let root = Path::from_url_path(url.path())
            .map_err(|e| EddyError::checkpoint(location, format!("invalid path in URL: {e}")))?;
        Ok(Self {
            store,
            root,
            location: location.trim_end_matches('/').to_string(),
            local_root: None,
            multipart_threshold: MULTIPART_THRESHOLD,
            runtime: Some(runtime()?),
        })
    }

    #[cfg(feature = "aws")]
    fn open_s3(location: &str, url: &url::Url) -> Result<Self> {
        install_crypto_provider();
        let store = object_store::aws::AmazonS3Builder::from_env()
            .with_url(url.as_str())
            .build()
            .map_err(|e| EddyError::checkpoint(location, format!("cannot open S3: {e}")))?;
        Self::remote(location, url, Arc::new(store))
    }

    #[cfg(not(feature = "aws"))]
    fn open_s3(location: &str, _url: &url::Url) -> Result<Self> {
        Err(not_compiled(location, "s3://", "aws"))
    }

    #[cfg(feature = "gcp")]
    fn open_gcs(location: &str, url: &url::Url) -> Result<Self> {
        install_crypto_provider();
        let store = object_store::gcp::GoogleCloudStorageBuilder::from_env()
            .with_url(url.as_str())
            .build()
            .map_err(|e| EddyError::checkpoint(location, format!("cannot open GCS: {e}")))?;
        Self::remote(location, url, Arc::new(store))
    }

    #[cfg(not(feature = "gcp"))]
    fn open_gcs(location: &str, _url: &url::Url) -> Result<Self> {
        Err(not_compiled(location, "gs://", "gcp"))
    }

    #[cfg(feature = "azure")]
    fn open_azure(location: &str, url: &url::Url) -> Result<Self> {
        install_crypto_provider();
        let store = object_store::azure::MicrosoftAzureBuilder::from_env()
            .with_url(url.as_str())
            .build()
            .map_err(|e| EddyError::checkpoint(location, format!("cannot open Azure: {e}")))?;
        Self::remote(location, url, Arc::new(store))
    }

    #[cfg(not(feature = "azure"))]
    fn open_azure(location: &str, _url: &url::Url) -> Result<Self> {
        Err(not_compiled(location, "az://", "azure"))
    }

    /// The root as shown to people: an absolute local path or the URL (no trailing `/`).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Whether the root is a local directory (as opposed to an object store).
    pub fn is_local(&self) -> bool {
        self.local_root.is_some()
    }

    /// `path` (relative to the root) as shown to people: the root joined with it.
    pub fn describe(&self, path: &str) -> String {
        if path.is_empty() {
            self.location.clone()
        } else {
            format!("{}/{}", self.location, path.trim_start_matches('/'))
        }
    }

    /// Objects larger than `bytes` are uploaded in parts (default [`MULTIPART_THRESHOLD`]).
    /// Either way a put stays atomic: the parts of a multipart upload become visible together
    /// when it completes (S3, GCS, Azure), and the local store renames its staging file only
    /// then.
    pub fn with_multipart_threshold(mut self, bytes: usize) -> Self {
        self.multipart_threshold = bytes;
        self
    }

    /// Writes `bytes` to `path`, replacing any object there. Atomic and, on return, durable
    /// (see the module docs). Large objects go up as a multipart upload, at most
    /// 4 parts of 8 MiB in flight at a time; a failed one is aborted.
    pub fn put(&self, path: &str, bytes: Vec<u8>) -> Result<()> {
        self.put_reclaiming(path, bytes).map(drop)
    }

    /// [`put`](Self::put), returning the buffer once the store has let go of it (`None` when
    /// it still holds on, or after a multipart upload), for the caller to fill again: a
    /// buffer of many megabytes allocated afresh for every checkpoint costs the kernel's
    /// zeroing of its pages each time.
    pub fn put_reclaiming(&self, path: &str, bytes: Vec<u8>) -> Result<Option<Vec<u8>>> {
        let key = self.key(path);
        let store = Arc::clone(&self.store);
        let threshold = self.multipart_threshold;
        self.block_on("put", async move {
            if bytes.len() <= threshold {
                let bytes = Bytes::from(bytes);
                store
                    .put(&key, PutPayload::from(bytes.clone()))
                    .await
                    .map(drop)?;
                return Ok(bytes.try_into_mut().ok().map(Vec::from));
            }
            let upload = store.put_multipart(&key).await?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, MULTIPART_CHUNK);
            for chunk in bytes.chunks(MULTIPART_CHUNK) {
                // Bounds the requests in flight; the data is in memory already.
                if let Err(e) = writer.wait_for_capacity(MULTIPART_CONCURRENCY).await {
                    // The upload's own error is the one to report, not the abort's.
                    let _ = writer.abort().await;
                    return Err(e);
                }
                writer.write(chunk);
            }
            writer.finish().await.map(|_| None)
        })?
        .map_err(|e| self.error(path, "cannot write", e))
    }

    /// Reads the whole object at `path`. A missing object is an error naming it.
    pub fn get(&self, path: &str) -> Result<Vec<u8>> {
        self.get_opt(path)?
            .ok_or_else(|| EddyError::checkpoint(self.describe(path), "not found"))
    }

    /// Reads the whole object at `path`, or `None` if there is none.
    pub fn get_opt(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let key = self.key(path);
        let store = Arc::clone(&self.store);
        let result = self.block_on("get", async move {
            let got = store.get(&key).await?;
            got.bytes().await
        })?;
        match result {
            Ok(bytes) => Ok(Some(Vec::from(bytes))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(path, "cannot read", e)),
        }
    }

    /// The size of the object at `path`, or `None` if there is none.
    pub fn size(&self, path: &str) -> Result<Option<u64>> {
        let key = self.key(path);
        let store = Arc::clone(&self.store);
        match self.block_on("head", async move { store.head(&key).await })? {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(path, "cannot read", e)),
        }
    }

    /// Every object under `prefix` (a directory, recursively; `""` for the whole root),
    /// sorted by path. A prefix with nothing under it gives an empty list.
    pub fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let key = self.key(prefix);
        let store = Arc::clone(&self.store);
        let listed = self.block_on("list", async move {
            store.list(Some(&key)).try_collect::<Vec<_>>().await
        })?;
        let metas = match listed {
            Ok(metas) => metas,
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(self.error(prefix, "cannot list", e)),
        };
        let mut objects: Vec<ObjectInfo> = metas
            .into_iter()
            .filter_map(|meta| {
                Some(ObjectInfo {
                    path: self.relative(&meta.location)?,
                    size: meta.size,
                })
            })
            .collect();
        objects.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(objects)
    }

    /// The names of the directories directly under `prefix` (`""` for the root), sorted.
    /// On object stores a "directory" is a common prefix of object names.
    pub fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        let key = self.key(prefix);
        let store = Arc::clone(&self.store);
        let listed = self.block_on("list", async move {
            store.list_with_delimiter(Some(&key)).await
        })?;
        let result = match listed {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(self.error(prefix, "cannot list", e)),
        };
        let mut dirs: Vec<String> = result
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect();
        dirs.sort();
        Ok(dirs)
    }

    /// Deletes the object at `path`. Deleting what is not there is not an error.
    pub fn delete(&self, path: &str) -> Result<()> {
        let key = self.key(path);
        let store = Arc::clone(&self.store);
        match self.block_on("delete", async move { store.delete(&key).await })? {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(path, "cannot delete", e)),
        }
    }

    /// Deletes every object under `prefix` (a directory, recursively) and returns how many
    /// there were. Deleting what is not there is not an error.
    pub fn delete_prefix(&self, prefix: &str) -> Result<usize> {
        if prefix.trim_matches('/').is_empty() {
            // Never wipe the whole root by accident (an empty name somewhere upstream).
            return Err(EddyError::Internal(
                "checkpoint storage: refusing to delete the whole root".into(),
            ));
        }
        let key = self.key(prefix);
        let store = Arc::clone(&self.store);
        let deleted = self.block_on("delete", async move {
            let locations = store.list(Some(&key)).map_ok(|meta| meta.location).boxed();
            store.delete_stream(locations).try_collect::<Vec<_>>().await
        })?;
        let count = match deleted {
            Ok(paths) => paths.len(),
            Err(object_store::Error::NotFound { .. }) => 0,
            Err(e) => return Err(self.error(prefix, "cannot delete", e)),
        };
        if let Some(root) = &self.local_root {
            // Staging files of puts cut short by a crash (`name#1`) are not listed, so they
            // survived the deletes above; remove the directory with them.
            let dir = root.join(prefix.trim_matches('/'));
            if dir.is_dir() {
                match std::fs::remove_dir_all(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(EddyError::io(dir, e)),
                }
            }
        }
        Ok(count)
    }

    /// The object-store key of `path` under the root.
    fn key(&self, path: &str) -> Path {
        let path = path.trim_matches('/');
        if path.is_empty() {
            return self.root.clone();
        }
        let mut key = self.root.clone();
        for part in path.split('/').filter(|part| !part.is_empty()) {
            key = key.join(part);
        }
        key
    }

    /// `key` relative to the root, `/`-separated (None if it is not under the root).
    fn relative(&self, key: &Path) -> Option<String> {
        let parts: Vec<String> = key
            .prefix_match(&self.root)?
            .map(|part| part.as_ref().to_string())
            .collect();
        (!parts.is_empty()).then(|| parts.join("/"))
    }

    fn error(&self, path: &str, what: &str, error: object_store::Error) -> EddyError {
        let reason = match error {
            object_store::Error::NotFound { .. } => "not found".to_string(),
            other => format!("{what}: {other}"),
        };
        EddyError::checkpoint(self.describe(path), reason)
    }

    /// Runs `future` on the storage's runtime, blocking this thread.
    fn block_on<F: Future>(&self, what: &str, future: F) -> Result<F::Output> {
        // Blocking inside an async runtime would panic (tokio forbids nested `block_on`) or
        // stall its worker: refuse, naming the call.
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(EddyError::Internal(format!(
                "checkpoint storage: blocking `{what}` called from inside an async runtime; \
                 call it from a plain thread"
            )));
        }
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| EddyError::Internal("checkpoint storage used after drop".into()))?;
        Ok(runtime.block_on(future))
    }
}

impl Drop for CheckpointStorage {
    fn drop(&mut self) {
        // A plain drop of a runtime blocks until its tasks end, and panics inside another
        // runtime; nothing of ours outlives a call, so let it go in the background.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The runtime that drives `object_store`: one worker (HTTP connections' tasks) plus tokio's
/// blocking pool (the local store's file I/O). Calls run on the caller's thread.
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(4)
        .thread_name("eddy-checkpoint-io")
        .enable_all()
        .build()
        .map_err(|e| EddyError::io("<tokio runtime for checkpoint storage>", e))
}

/// reqwest is built without a bundled TLS crypto provider (`rustls-no-provider`), so the
/// process needs one before the first HTTPS connection: ring's. If the program already
/// installed one, that one stays.
#[cfg(feature = "cloud")]
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(any(not(feature = "aws"), not(feature = "gcp"), not(feature = "azure")))]
fn not_compiled(location: &str, scheme: &str, feature: &str) -> EddyError {
    EddyError::checkpoint(
        location,
        format!(
            "{scheme} support is not compiled into this build (enable the `{feature}` feature \
             of eddy-checkpoint)"
        ),
    )
}
