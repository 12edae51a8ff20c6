//! [`FileSource`]: bounded JSON-lines and CSV file sources.

use std::fmt;
use std::fs;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use eddy_core::{Data, EddyError, Result};
use eddy_runtime::{Sink, SinkContext, Source, SourceContext, SourceReader, SourceStatus};
use eddy_state::{ListStateDescriptor, OperatorListState, OperatorStateStore};
use serde::{Deserialize, Serialize};

use super::csv_records::CsvRecordReader;
use super::dead_letter::{DeadLetter, DeadLetterSink};
use super::json_lines::JsonLinesReader;
use super::{FileFormat, Malformed};

/// A bounded source of `T` records read from files: one file, several, or directories.
///
/// A directory stands for the regular files directly in it (symbolic links followed, not
/// recursive), sorted by name. The files, in the order given with directories expanded in
/// place, are split between the source's subtasks: **file `i` goes to subtask
/// `i % parallelism`**, and each subtask reads its files one after the other, in order.
///
/// A malformed line fails the job with [`EddyError::Input`] naming `<file>:<line>`, unless a
/// dead-letter sink is set ([`with_dead_letter`](FileSource::with_dead_letter)). A missing
/// input is an [`EddyError::Io`] naming the path.
///
/// ```
/// use eddy_connectors::file::FileSource;
/// use eddy_runtime::{Source, SourceContext, SourceReader, SourceStatus};
/// use serde::Deserialize;
///
/// #[derive(Clone, Debug, PartialEq, serde::Serialize, Deserialize)]
/// struct Reading { sensor: String, value: f64 }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("readings.jsonl");
/// std::fs::write(&path, "{\"sensor\":\"a\",\"value\":1.5}\n\n{\"sensor\":\"b\",\"value\":2}\n")?;
///
/// let source = FileSource::<Reading>::json_lines(&path);
/// let mut reader = source.create_reader(SourceContext { subtask: 0, parallelism: 1 })?;
/// let mut out = Vec::new();
/// while reader.poll(&mut out, 100)? == SourceStatus::More {}
/// assert_eq!(out[1], Reading { sensor: "b".into(), value: 2.0 });
/// # Ok(())
/// # }
/// ```
pub struct FileSource<T> {
    paths: Vec<PathBuf>,
    format: FileFormat,
    dead_letter: Option<Box<dyn DeadLetterSink>>,
    _records: PhantomData<fn() -> T>,
}

impl<T: Data> FileSource<T> {
    /// Reads `paths` (files or directories) in `format`.
    pub fn new<P: Into<PathBuf>>(paths: impl IntoIterator<Item = P>, format: FileFormat) -> Self {
        FileSource {
            paths: paths.into_iter().map(Into::into).collect(),
            format,
            dead_letter: None,
            _records: PhantomData,
        }
    }

    /// Reads the JSON-lines file or directory `path`.
    pub fn json_lines(path: impl Into<PathBuf>) -> Self {
        Self::new([path], FileFormat::JsonLines)
    }

    /// Reads the CSV file or directory `path`, whose files start with a header line.
    pub fn csv(path: impl Into<PathBuf>) -> Self {
        Self::new([path], FileFormat::csv())
    }

    /// Sends malformed lines to `sink` and goes on reading, instead of failing the job.
    ///
    /// Each reader opens its own clone of `sink` (with the reader's subtask and parallelism)
    /// when it is created, and closes it when its files are exhausted.
    pub fn with_dead_letter<S: Sink<DeadLetter>>(mut self, sink: S) -> Self {
        self.dead_letter = Some(Box::new(sink));
        self
    }

    /// The format of the files.
    pub fn format(&self) -> FileFormat {
        self.format
    }

    /// Every input file, in order, with directories expanded.
    pub fn files(&self) -> Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        for path in &self.paths {
            let metadata = fs::metadata(path).map_err(|e| EddyError::io(path, e))?;
            match metadata.is_dir() {
                true => files.extend(files_in(path)?),
                false => files.push(path.clone()),
            }
        }
        Ok(files)
    }

    /// The files subtask `subtask` of `parallelism` reads: every file `i` with
    /// `i % parallelism == subtask`.
    pub fn split(&self, subtask: usize, parallelism: usize) -> Result<Vec<PathBuf>> {
        let parallelism = parallelism.max(1);
        let files = self.files()?.into_iter().enumerate();
        Ok(files
            .filter(|(i, _)| i % parallelism == subtask)
            .map(|(_, file)| file)
            .collect())
    }
}

/// The regular files directly in `dir`, sorted by name.
fn files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| EddyError::io(dir, e))? {
        let path = entry.map_err(|e| EddyError::io(dir, e))?.path();
        if fs::metadata(&path)
            .map_err(|e| EddyError::io(&path, e))?
            .is_file()
        {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

impl<T> Clone for FileSource<T> {
    fn clone(&self) -> Self {
        FileSource {
            paths: self.paths.clone(),
            format: self.format,
            dead_letter: self.dead_letter.as_ref().map(|sink| sink.clone_box()),
            _records: PhantomData,
        }
    }
}

impl<T> fmt::Debug for FileSource<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileSource")
            .field("paths", &self.paths)
            .field("format", &self.format)
            .field("dead_letter", &self.dead_letter.is_some())
            .finish()
    }
}

impl<T: Data> Source for FileSource<T> {
    type Item = T;
    type Reader = FileReader<T>;

    fn create_reader(&self, ctx: SourceContext) -> Result<FileReader<T>> {
        if self.paths.is_empty() {
            return Err(EddyError::Config("FileSource has no input path".into()));
        }
        let files = self.split(ctx.subtask, ctx.parallelism)?;
        let files = files.into_iter().map(|path| (path, None)).collect();
        self.reader(ctx, files, None)
    }

    fn create_reader_with_state(
        &self,
        ctx: SourceContext,
        state: &mut OperatorStateStore,
    ) -> Result<FileReader<T>> {
        let positions = state.list_state(&ListStateDescriptor::new(POSITIONS_STATE))?;
        let restored: Vec<FilePosition> = positions.get()?.collect();
        // A restored subtask with no positions has no files of its own (restored at a
        // parallelism above the number of files): it reads nothing.
        if restored.is_empty() && !state.is_restored() {
            let mut reader = self.create_reader(ctx)?;
            reader.positions = Some(positions);
            return Ok(reader);
        }
        // Finished files stay in the state (so "nothing restored" is never "all read"); the
        // others resume where the checkpoint left them.
        let files = restored
            .into_iter()
            .map(|p| (PathBuf::from(p.path), Some((p.offset, p.line, p.done))))
            .collect();
        self.reader(ctx, files, Some(positions))
    }
}

/// The name of the file source's positions in its operator state.
const POSITIONS_STATE: &str = "file-positions";

/// Where one file of a [`FileSource`] stands in a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct FilePosition {
    path: String,
    /// JSON lines: the byte offset of the next line; CSV: the byte offset after the last
    /// record read (informational: CSV resumes by skipping `line` records).
    offset: u64,
    /// JSON lines: lines before `offset`; CSV: records read.
    line: u64,
    done: bool,
}

/// A file to read and where to start: `None` from the beginning, or (offset, line, done).
type FileStart = (PathBuf, Option<(u64, u64, bool)>);

impl<T: Data> FileSource<T> {
    fn reader(
        &self,
        ctx: SourceContext,
        files: Vec<FileStart>,
        positions: Option<OperatorListState<FilePosition>>,
    ) -> Result<FileReader<T>> {
        let mut dead_letter = self.dead_letter.as_ref().map(|sink| sink.clone_box());
        if let Some(sink) = &mut dead_letter {
            sink.open(SinkContext::new(ctx.subtask, ctx.parallelism))?;
        }
        Ok(FileReader {
            files,
            next: 0,
            current: None,
            format: self.format,
            dead_letter,
            positions,
            _records: PhantomData,
        })
    }
}

/// One subtask's share of a [`FileSource`]: its files, read one after the other.
pub struct FileReader<T> {
    /// Every file of this subtask, with where to start it.
    files: Vec<FileStart>,
    /// The index in `files` of the next file to open.
    next: usize,
    current: Option<OpenFile>,
    format: FileFormat,
    dead_letter: Option<Box<dyn DeadLetterSink>>,
    /// Where the positions are checkpointed (absent without operator state).
    positions: Option<OperatorListState<FilePosition>>,
    _records: PhantomData<fn() -> T>,
}

/// The file being read.
struct OpenFile {
    /// The path as shown in locations.
    name: String,
    records: FormatReader,
}

enum FormatReader {
    JsonLines(JsonLinesReader),
    Csv(CsvRecordReader),
}

impl OpenFile {
    fn open(path: &Path, format: FileFormat) -> Result<Self> {
        let records = match format {
            FileFormat::JsonLines => FormatReader::JsonLines(JsonLinesReader::open(path)?),
            FileFormat::Csv { has_header } => {
                FormatReader::Csv(CsvRecordReader::open(path, has_header)?)
            }
        };
        Ok(OpenFile {
            name: path.display().to_string(),
            records,
        })
    }

    /// The next record or dead letter; `None` at the end of the file.
    fn next<T: Data>(&mut self) -> Result<Option<Result<T, DeadLetter>>> {
        let next = match &mut self.records {
            FormatReader::JsonLines(reader) => reader.next()?,
            FormatReader::Csv(reader) => reader.next()?,
        };
        Ok(next.map(|parsed| parsed.map_err(|bad| self.dead_letter(bad))))
    }

    fn position(&self) -> (u64, u64) {
        match &self.records {
            FormatReader::JsonLines(reader) => reader.position(),
            FormatReader::Csv(reader) => reader.position(),
        }
    }

    fn resume(&mut self, position: (u64, u64)) -> Result<()> {
        match &mut self.records {
            FormatReader::JsonLines(reader) => reader.resume(position),
            FormatReader::Csv(reader) => reader.resume(position),
        }
    }

    fn dead_letter(&self, bad: Malformed) -> DeadLetter {
        DeadLetter {
            location: format!("{}:{}", self.name, bad.line),
            line: bad.text,
            reason: bad.reason,
        }
    }
}

impl<T: Data> FileReader<T> {
    /// The file to read from, opening the next one if needed; `None` when all are read.
    fn current_file(&mut self) -> Result<Option<&mut OpenFile>> {
        while self.current.is_none() {
            let Some((path, start)) = self.files.get(self.next) else {
                return Ok(None);
            };
            self.next += 1;
            match *start {
                Some((_, _, true)) => continue,
                Some((offset, line, false)) => {
                    let mut file = OpenFile::open(path, self.format)?;
                    file.resume((offset, line))?;
                    self.current = Some(file);
                }
                None => self.current = Some(OpenFile::open(path, self.format)?),
            }
        }
        Ok(self.current.as_mut())
    }

    /// Where every file of this subtask stands now.
    fn positions(&self) -> Vec<FilePosition> {
        let open = self.next.checked_sub(1);
        self.files
            .iter()
            .enumerate()
            .map(|(i, (path, start))| {
                let path = path.to_string_lossy().into_owned();
                let (offset, line, done) = if Some(i) == open {
                    match &self.current {
                        Some(file) => {
                            let (offset, line) = file.position();
                            (offset, line, false)
                        }
                        None => (0, 0, true),
                    }
                } else if i < self.next {
                    (0, 0, true)
                } else {
                    start.unwrap_or((0, 0, false))
                };
                FilePosition {
                    path,
                    offset,
                    line,
                    done,
                }
            })
            .collect()
    }

    /// Sends `letter` to the dead-letter sink, or fails if there is none.
    fn reject(&mut self, letter: DeadLetter) -> Result<()> {
        match &mut self.dead_letter {
            Some(sink) => sink.write(letter),
            None => Err(EddyError::Input {
                location: letter.location,
                reason: letter.reason,
            }),
        }
    }

    /// Closes the dead-letter sink (once).
    fn finish(&mut self) -> Result<SourceStatus> {
        if let Some(mut sink) = self.dead_letter.take() {
            sink.close()?;
        }
        Ok(SourceStatus::Finished)
    }
}

impl<T: Data> SourceReader for FileReader<T> {
    type Item = T;

    /// Reads at most `max` lines (records and dead letters), so a poll stays short even
    /// through a run of malformed lines.
    fn poll(&mut self, out: &mut Vec<T>, max: usize) -> Result<SourceStatus> {
        let mut lines = 0;
        while lines < max {
            let Some(file) = self.current_file()? else {
                return self.finish();
            };
            match file.next()? {
                Some(Ok(record)) => out.push(record),
                Some(Err(letter)) => self.reject(letter)?,
                None => {
                    self.current = None;
                    continue;
                }
            }
            lines += 1;
        }
        Ok(SourceStatus::More)
    }

    fn snapshot_state(&mut self) -> Result<()> {
        if let Some(positions) = &self.positions {
            positions.update(self.positions())?;
        }
        Ok(())
    }
}
