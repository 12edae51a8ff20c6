//! File sources and sinks (JSON lines, CSV) for `serde` types.
//!
//! * [`FileSource`]: a bounded source reading one file, several files or a directory. Files
//!   are split between the source's subtasks: file `i` (in listing order) goes to subtask
//!   `i % parallelism`.
//! * [`FileSink`]: writes one file per sink subtask into a directory (`part-<subtask>.jsonl`
//!   or `part-<subtask>.csv`), or a single file at parallelism 1.
//! * [`DeadLetter`]: a line a [`FileSource`] could not parse. Without a dead-letter sink, the
//!   first malformed line fails the job with [`EddyError::Input`](eddy_core::EddyError::Input)
//!   naming `<file>:<line>`; with one ([`FileSource::with_dead_letter`]), malformed lines go
//!   there and reading continues.

mod csv_records;
mod dead_letter;
mod json_lines;
mod sink;
mod source;

pub use dead_letter::DeadLetter;
pub use sink::FileSink;
pub use source::{FileReader, FileSource};

/// How records are laid out in a file.
///
/// ```
/// use eddy_connectors::file::FileFormat;
/// assert_eq!(FileFormat::csv(), FileFormat::Csv { has_header: true });
/// assert_eq!(FileFormat::JsonLines.extension(), "jsonl");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileFormat {
    /// One JSON document per line; blank lines are skipped.
    JsonLines,
    /// Comma-separated values, deserialized with the `csv` crate.
    Csv {
        /// Whether the first line names the columns. With a header, fields are matched to the
        /// record's fields by name; without one, by position.
        has_header: bool,
    },
}

impl FileFormat {
    /// CSV with a header line.
    pub fn csv() -> Self {
        FileFormat::Csv { has_header: true }
    }

    /// The file extension a [`FileSink`] gives its files: `jsonl` or `csv`.
    pub fn extension(self) -> &'static str {
        match self {
            FileFormat::JsonLines => "jsonl",
            FileFormat::Csv { .. } => "csv",
        }
    }
}

/// A line a format reader could not parse, before it is tied to its file.
struct Malformed {
    /// The 1-based line number (for CSV, the record's first line).
    line: u64,
    /// The line's text.
    text: String,
    /// The parser's message.
    reason: String,
}
