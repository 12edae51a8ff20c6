//! Reading CSV with the `csv` crate, with exact line numbers.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use csv::{ByteRecord, ErrorKind};
use eddy_core::{EddyError, Result};
use serde::de::DeserializeOwned;

use super::Malformed;

/// Reads one CSV file record by record.
///
/// The `csv` crate's own line numbers drift on blank lines and `\r\n` endings, so the reader
/// counts newlines itself (see [`LineCounter`]).
pub(super) struct CsvRecordReader {
    path: PathBuf,
    records: csv::Reader<LineCounter<File>>,
    headers: Option<ByteRecord>,
    record: ByteRecord,
    /// Records (good or malformed) read so far.
    read: u64,
}

impl CsvRecordReader {
    /// Opens `path`, reading its header line if `has_header`.
    pub(super) fn open(path: &Path, has_header: bool) -> Result<Self> {
        let file = File::open(path).map_err(|e| EddyError::io(path, e))?;
        let mut records = csv::ReaderBuilder::new()
            .has_headers(has_header)
            .from_reader(LineCounter::new(file));
        let headers = match has_header {
            true => Some(
                records
                    .byte_headers()
                    .map_err(|e| io_error(path, e))?
                    .clone(),
            ),
            false => None,
        };
        Ok(CsvRecordReader {
            path: path.to_path_buf(),
            records,
            headers,
            record: ByteRecord::new(),
            read: 0,
        })
    }

    /// Where the next record starts: the byte offset after the last record read and the
    /// number of records read.
    pub(super) fn position(&self) -> (u64, u64) {
        (self.records.position().byte(), self.read)
    }

    /// Continues after the first `records` records of a `position` reported before. CSV
    /// quoting makes a raw seek unsafe to resume from without the header state, so the
    /// records are read again and skipped.
    pub(super) fn resume(&mut self, (_offset, records): (u64, u64)) -> Result<()> {
        for _ in 0..records {
            match self.records.read_byte_record(&mut self.record) {
                Ok(true) => self.read += 1,
                Ok(false) => break,
                Err(e) if e.is_io_error() => return Err(io_error(&self.path, e)),
                Err(_) => self.read += 1,
            }
        }
        Ok(())
    }

    /// The next record, or the next malformed record; `None` at the end of the file.
    pub(super) fn next<T: DeserializeOwned>(&mut self) -> Result<Option<Result<T, Malformed>>> {
        let read = self.records.read_byte_record(&mut self.record);
        if matches!(read, Ok(true)) || matches!(&read, Err(e) if !e.is_io_error()) {
            self.read += 1;
        }
        let line = self.record_line();
        match read {
            Ok(false) => Ok(None),
            Ok(true) => Ok(Some(
                self.record
                    .deserialize(self.headers.as_ref())
                    .map_err(|e| self.malformed(line, &e)),
            )),
            Err(e) if e.is_io_error() => Err(io_error(&self.path, e)),
            Err(e) => Ok(Some(Err(self.malformed(line, &e)))),
        }
    }

    /// The line the record just read starts on: the line of its last byte, less the newlines
    /// inside its (quoted) fields.
    fn record_line(&mut self) -> u64 {
        let end = self.records.position().byte();
        let last_line = self.records.get_mut().line_of(end.saturating_sub(1));
        let inner_newlines = self.record.as_slice().iter().filter(|&&b| b == b'\n');
        last_line.saturating_sub(inner_newlines.count() as u64)
    }

    fn malformed(&self, line: u64, error: &csv::Error) -> Malformed {
        Malformed {
            line,
            text: record_text(&self.record),
            reason: csv_reason(error),
        }
    }
}

/// The `csv` crate's message for a bad record, without its own (inexact) position.
fn csv_reason(error: &csv::Error) -> String {
    match error.kind() {
        ErrorKind::Deserialize { err, .. } => err.to_string(),
        ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("found {len} fields, expected {expected_len}"),
        _ => error.to_string(),
    }
}

/// A record re-encoded as one CSV line (best effort: it is only shown to people).
fn record_text(record: &ByteRecord) -> String {
    let mut writer = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    // Writing to a `Vec` cannot fail; if it somehow did, the text would only be shorter.
    let _ = writer.write_byte_record(record);
    let bytes = writer.into_inner().unwrap_or_default();
    let line = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
    String::from_utf8_lossy(line).into_owned()
}

/// An I/O error of the `csv` crate as [`EddyError::Io`] on `path`.
fn io_error(path: &Path, error: csv::Error) -> EddyError {
    let source = match error.into_kind() {
        ErrorKind::Io(source) => source,
        other => io::Error::other(format!("{other:?}")),
    };
    EddyError::io(path, source)
}

/// Passes bytes through, remembering where the newlines are, so that a byte offset can be
/// turned into a line number after the `csv` reader has buffered ahead.
struct LineCounter<R> {
    inner: R,
    /// Bytes passed through so far.
    offset: u64,
    /// Offsets of the newlines not yet passed by a [`line_of`](LineCounter::line_of) query.
    newlines: VecDeque<u64>,
    /// Newlines before those in `newlines`.
    lines_passed: u64,
}

impl<R> LineCounter<R> {
    fn new(inner: R) -> Self {
        LineCounter {
            inner,
            offset: 0,
            newlines: VecDeque::new(),
            lines_passed: 0,
        }
    }

    /// The 1-based line of the byte at `offset`. Offsets must not decrease between calls.
    fn line_of(&mut self, offset: u64) -> u64 {
        while self
            .newlines
            .front()
            .is_some_and(|&newline| newline < offset)
        {
            self.newlines.pop_front();
            self.lines_passed += 1;
        }
        self.lines_passed + 1
    }
}

impl<R: Read> Read for LineCounter<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        let start = self.offset;
        let newlines = buf[..read].iter().enumerate().filter(|(_, &b)| b == b'\n');
        self.newlines
            .extend(newlines.map(|(i, _)| start + i as u64));
        self.offset += read as u64;
        Ok(read)
    }
}
