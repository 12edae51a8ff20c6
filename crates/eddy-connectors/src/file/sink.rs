//! [`FileSink`]: JSON-lines and CSV file sinks.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use eddy_core::{EddyError, Result};
use eddy_runtime::{Sink, SinkContext};
use serde::Serialize;

use super::FileFormat;

/// Writes `T` records as JSON lines or CSV.
///
/// * Into a directory ([`new`](FileSink::new), [`json_lines`](FileSink::json_lines),
///   [`csv`](FileSink::csv)): each sink subtask writes its own file `part-<subtask>.jsonl` or
///   `part-<subtask>.csv`, replacing any file of that name. The directory is created if missing.
/// * Into one file ([`to_file`](FileSink::to_file)): only at parallelism 1; `open` fails with
///   [`EddyError::Config`] otherwise.
///
/// Output is buffered and flushed by [`close`](Sink::close). A CSV sink configured with a
/// header writes it once per file, before the first record (an empty file has none).
///
/// **Exactly-once** (in a job that checkpoints, writing into a directory): each subtask writes
/// into `<dir>/.pending/part-<subtask>-<run>-<n>.<ext>`; at a checkpoint's barrier it flushes
/// and fsyncs that file and starts the next (phase one, [`Sink::pre_commit`]); once the
/// checkpoint is complete the file is renamed to `<dir>/part-<subtask>-<run>-<n>.<ext>`
/// (phase two, [`Sink::commit`], idempotent). Before a job starts, pending files no completed
/// checkpoint covers are deleted ([`Sink::recover`]), so the published files hold every
/// record exactly once across crashes and restores.
///
/// Clones are unopened: the job program builds one sink, and each subtask opens its clone.
///
/// ```
/// use eddy_connectors::file::FileSink;
/// use eddy_runtime::{Sink, SinkContext};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let mut sink = FileSink::json_lines(dir.path().join("out"));
/// sink.open(SinkContext::new(1, 2))?;
/// sink.write((1, "one".to_string()))?;
/// sink.close()?;
/// assert_eq!(std::fs::read_to_string(sink.part_path(1))?, "[1,\"one\"]\n");
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct FileSink<T> {
    target: Target,
    format: FileFormat,
    part: Option<Part>,
    /// Set when the job checkpoints: output goes to pending files, published on commit.
    staging: Option<Staging>,
    _records: PhantomData<fn(T)>,
}

/// The pending files of one exactly-once sink subtask.
#[derive(Debug)]
struct Staging {
    dir: PathBuf,
    subtask: usize,
    /// Tells this run's files from an earlier (crashed) run's.
    run: u128,
    /// The number of the next pending file.
    next: u64,
}

/// The directory of pending (not yet committed) files under a sink's directory.
const PENDING_DIR: &str = ".pending";

/// Where a [`FileSink`] writes.
#[derive(Clone, Debug)]
enum Target {
    /// One `part-<subtask>` file per subtask in this directory.
    Directory(PathBuf),
    /// This one file.
    File(PathBuf),
}

/// The open file of one sink subtask.
#[derive(Debug)]
struct Part {
    path: PathBuf,
    writer: PartWriter,
}

#[derive(Debug)]
enum PartWriter {
    JsonLines(BufWriter<File>),
    /// The `csv` writer buffers by itself (boxed: it is ten times larger than a `BufWriter`).
    Csv(Box<csv::Writer<File>>),
}

impl<T> FileSink<T> {
    /// Writes `format` files into the directory `dir`, one per subtask.
    pub fn new(dir: impl Into<PathBuf>, format: FileFormat) -> Self {
        Self::with_target(Target::Directory(dir.into()), format)
    }

    /// Writes JSON-lines files into the directory `dir`, one per subtask.
    pub fn json_lines(dir: impl Into<PathBuf>) -> Self {
        Self::new(dir, FileFormat::JsonLines)
    }

    /// Writes CSV files with a header line into the directory `dir`, one per subtask.
    pub fn csv(dir: impl Into<PathBuf>) -> Self {
        Self::new(dir, FileFormat::csv())
    }

    /// Writes the single file `path`; the sink's parallelism must be 1.
    pub fn to_file(path: impl Into<PathBuf>, format: FileFormat) -> Self {
        Self::with_target(Target::File(path.into()), format)
    }

    fn with_target(target: Target, format: FileFormat) -> Self {
        FileSink {
            target,
            format,
            part: None,
            staging: None,
            _records: PhantomData,
        }
    }

    /// The file subtask `subtask` writes.
    pub fn part_path(&self, subtask: usize) -> PathBuf {
        match &self.target {
            Target::Directory(dir) => {
                dir.join(format!("part-{subtask}.{}", self.format.extension()))
            }
            Target::File(path) => path.clone(),
        }
    }

    fn create_part(&self, ctx: SinkContext) -> Result<Part> {
        if let Target::File(path) = &self.target {
            if ctx.parallelism > 1 {
                return Err(EddyError::Config(format!(
                    "FileSink::to_file({}) writes one file and needs parallelism 1, not {}; \
                     write to a directory (FileSink::new) to write in parallel",
                    path.display(),
                    ctx.parallelism
                )));
            }
        }
        let path = self.part_path(ctx.subtask);
        self.open_part(path)
    }

    /// Creates the file `path` and its writer.
    fn open_part(&self, path: PathBuf) -> Result<Part> {
        create_parent(&path)?;
        let file = File::create(&path).map_err(|e| EddyError::io(&path, e))?;
        let writer = match self.format {
            FileFormat::JsonLines => PartWriter::JsonLines(BufWriter::new(file)),
            FileFormat::Csv { has_header } => PartWriter::Csv(Box::new(
                csv::WriterBuilder::new()
                    .has_headers(has_header)
                    .from_writer(file),
            )),
        };
        Ok(Part { path, writer })
    }
}

/// Creates the directory `path` goes into, if missing.
fn create_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => {
            fs::create_dir_all(dir).map_err(|e| EddyError::io(dir, e))
        }
        _ => Ok(()),
    }
}

impl Part {
    fn write<T: Serialize>(&mut self, record: &T) -> Result<()> {
        match &mut self.writer {
            PartWriter::JsonLines(out) => {
                serde_json::to_writer(&mut *out, record).map_err(|e| json_error(&self.path, e))?;
                out.write_all(b"\n")
                    .map_err(|e| EddyError::io(&self.path, e))
            }
            PartWriter::Csv(out) => out.serialize(record).map_err(|e| csv_error(&self.path, e)),
        }
    }

    fn flush(&mut self) -> Result<()> {
        let flushed = match &mut self.writer {
            PartWriter::JsonLines(out) => out.flush(),
            PartWriter::Csv(out) => out.flush(),
        };
        flushed.map_err(|e| EddyError::io(&self.path, e))
    }

    /// Makes the flushed contents durable.
    fn sync(&mut self) -> Result<()> {
        let synced = match &mut self.writer {
            PartWriter::JsonLines(out) => out.get_ref().sync_all(),
            PartWriter::Csv(out) => out.get_ref().sync_all(),
        };
        synced.map_err(|e| EddyError::io(&self.path, e))
    }
}

/// A JSON serialization error: an I/O error on `path`, or the record's `Serialize` failing.
fn json_error(path: &Path, error: serde_json::Error) -> EddyError {
    match error.is_io() {
        true => EddyError::io(path, error.into()),
        false => cannot_write(path, &error),
    }
}

/// A CSV serialization error: an I/O error on `path`, or a record CSV cannot represent.
fn csv_error(path: &Path, error: csv::Error) -> EddyError {
    if !error.is_io_error() {
        return cannot_write(path, &error);
    }
    match error.into_kind() {
        csv::ErrorKind::Io(source) => EddyError::io(path, source),
        kind => EddyError::user(format!("cannot write to {}: {kind:?}", path.display())),
    }
}

/// A record that could not be serialized: the fault of its type's `Serialize`.
fn cannot_write(path: &Path, error: &dyn std::error::Error) -> EddyError {
    EddyError::user(format!(
        "cannot write a record to {}: {error}",
        path.display()
    ))
}

impl<T> Clone for FileSink<T> {
    /// An unopened sink with the same target and format.
    fn clone(&self) -> Self {
        Self::with_target(self.target.clone(), self.format)
    }
}

impl<T> FileSink<T> {
    /// The pending directory of an exactly-once sink writing into `dir`.
    fn pending_dir(dir: &Path) -> PathBuf {
        dir.join(PENDING_DIR)
    }

    /// Opens the next pending file of an exactly-once subtask.
    fn next_pending_part(&mut self) -> Result<()> {
        let Some(staging) = self.staging.as_mut() else {
            return Ok(());
        };
        let name = format!(
            "part-{}-{:x}-{}.{}",
            staging.subtask,
            staging.run,
            staging.next,
            self.format.extension()
        );
        staging.next += 1;
        let path = Self::pending_dir(&staging.dir).join(name);
        self.part = Some(self.open_part(path)?);
        Ok(())
    }

    fn directory(&self) -> Option<&Path> {
        match &self.target {
            Target::Directory(dir) => Some(dir),
            Target::File(_) => None,
        }
    }
}

impl<T: Serialize + 'static> Sink<T> for FileSink<T> {
    fn open(&mut self, ctx: SinkContext) -> Result<()> {
        if !ctx.exactly_once {
            self.part = Some(self.create_part(ctx)?);
            return Ok(());
        }
        let Some(dir) = self.directory() else {
            return Err(EddyError::Config(
                "FileSink::to_file cannot publish per checkpoint (exactly-once); write into a \
                 directory with FileSink::new in a job that checkpoints"
                    .into(),
            ));
        };
        let run = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        self.staging = Some(Staging {
            dir: dir.to_path_buf(),
            subtask: ctx.subtask,
            run,
            next: 0,
        });
        Ok(())
    }

    fn write(&mut self, record: T) -> Result<()> {
        if self.part.is_none() && self.staging.is_some() {
            self.next_pending_part()?;
        }
        match &mut self.part {
            Some(part) => part.write(&record),
            None => Err(EddyError::Config(
                "FileSink written before it was opened; call Sink::open first".into(),
            )),
        }
    }

    fn close(&mut self) -> Result<()> {
        match self.part.take() {
            Some(mut part) => part.flush(),
            None => Ok(()),
        }
    }

    fn pre_commit(&mut self) -> Result<Vec<String>> {
        if self.staging.is_none() {
            return Ok(Vec::new());
        }
        let Some(mut part) = self.part.take() else {
            // Nothing written since the last checkpoint: nothing to publish.
            return Ok(Vec::new());
        };
        part.flush()?;
        part.sync()?;
        // The full path: a restore into a job writing elsewhere still publishes the
        // checkpoint's output where it was written.
        let path = std::path::absolute(&part.path).map_err(|e| EddyError::io(&part.path, e))?;
        Ok(vec![path.to_string_lossy().into_owned()])
    }

    fn commit(&self, committables: &[String]) -> Result<()> {
        let mut dirs = std::collections::BTreeSet::new();
        for committable in committables {
            let from = PathBuf::from(committable);
            let (Some(name), Some(dir)) = (from.file_name(), from.parent().and_then(Path::parent))
            else {
                return Err(EddyError::Internal(format!(
                    "not a pending file of a FileSink: {committable}"
                )));
            };
            let to = dir.join(name);
            match fs::rename(&from, &to) {
                Ok(()) => {}
                // Committed before (a restore commits its checkpoint's files again).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && to.exists() => {}
                Err(e) => {
                    return Err(EddyError::io(
                        &from,
                        std::io::Error::new(
                            e.kind(),
                            format!(
                                "cannot publish a checkpoint's output (neither the pending file \
                                 nor {} exists: was the output deleted?): {e}",
                                to.display()
                            ),
                        ),
                    ))
                }
            }
            dirs.insert(dir.to_path_buf());
        }
        for dir in dirs {
            sync_dir(&dir)?;
        }
        Ok(())
    }

    fn recover(&self, _committed: &[String]) -> Result<()> {
        let Some(dir) = self.directory() else {
            return Ok(());
        };
        let pending = Self::pending_dir(dir);
        match fs::remove_dir_all(&pending) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(EddyError::io(&pending, e)),
        }
    }
}

/// Makes the renames in `dir` durable.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| EddyError::io(dir, e))
}
