//! Reading JSON lines: one JSON document per line.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use eddy_core::{EddyError, Result};
use serde::de::DeserializeOwned;

use super::Malformed;

/// The UTF-8 byte-order mark some editors put at the start of a file.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Reads one JSON-lines file line by line.
pub(super) struct JsonLinesReader {
    path: PathBuf,
    lines: BufReader<File>,
    line_number: u64,
    line: Vec<u8>,
    /// Bytes of the file consumed so far: where the next line starts.
    offset: u64,
}

impl JsonLinesReader {
    /// Opens `path`.
    pub(super) fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| EddyError::io(path, e))?;
        Ok(JsonLinesReader {
            path: path.to_path_buf(),
            lines: BufReader::new(file),
            line_number: 0,
            line: Vec::new(),
            offset: 0,
        })
    }

    /// Where the next line starts: its byte offset and the number of lines before it.
    pub(super) fn position(&self) -> (u64, u64) {
        (self.offset, self.line_number)
    }

    /// Continues at a `position` this reader's file reported before (a checkpoint's).
    pub(super) fn resume(&mut self, (offset, line_number): (u64, u64)) -> Result<()> {
        self.lines
            .seek(SeekFrom::Start(offset))
            .map_err(|e| EddyError::io(&self.path, e))?;
        self.offset = offset;
        self.line_number = line_number;
        Ok(())
    }

    /// The next record, or the next malformed line; `None` at the end of the file.
    pub(super) fn next<T: DeserializeOwned>(&mut self) -> Result<Option<Result<T, Malformed>>> {
        loop {
            if !self.read_line()? {
                return Ok(None);
            }
            let content = self.content();
            if content.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Ok(Some(serde_json::from_slice(content).map_err(|e| {
                Malformed {
                    line: self.line_number,
                    text: String::from_utf8_lossy(content).into_owned(),
                    reason: json_reason(&e),
                }
            })));
        }
    }

    /// Reads the next line into `self.line`; `false` at the end of the file.
    fn read_line(&mut self) -> Result<bool> {
        self.line.clear();
        let read = self.lines.read_until(b'\n', &mut self.line);
        let read = read.map_err(|e| EddyError::io(&self.path, e))?;
        self.offset += read as u64;
        self.line_number += 1;
        Ok(read > 0)
    }

    /// The current line without its terminator (`\n` or `\r\n`) and, on line 1, the BOM.
    fn content(&self) -> &[u8] {
        let line = self.line.strip_suffix(b"\n").unwrap_or(&self.line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match self.line_number {
            1 => line.strip_prefix(BOM).unwrap_or(line),
            _ => line,
        }
    }
}

/// serde_json's message without its "at line 1 column N" (every document is one line; the
/// location names the line).
fn json_reason(error: &serde_json::Error) -> String {
    let message = error.to_string();
    let position = format!(" at line {} column {}", error.line(), error.column());
    match message.strip_suffix(&position) {
        Some(reason) => format!("{reason} at column {}", error.column()),
        None => message,
    }
}
