//! Dead letters: the lines a file source could not parse.

use eddy_core::Result;
use eddy_runtime::{Sink, SinkContext};
use serde::{Deserialize, Serialize};

/// A line a [`FileSource`](super::FileSource) could not parse, sent to its dead-letter sink.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Where the line is: `<file path>:<1-based line number>`.
    pub location: String,
    /// The line's text (for CSV, the record re-encoded as CSV).
    pub line: String,
    /// The parser's message.
    pub reason: String,
}

/// Any [`Sink<DeadLetter>`], behind a pointer so that [`FileSource`](super::FileSource) keeps
/// one type whatever the dead-letter sink is.
pub(super) trait DeadLetterSink: Send + Sync {
    /// A fresh clone for one reader.
    fn clone_box(&self) -> Box<dyn DeadLetterSink>;
    /// [`Sink::open`].
    fn open(&mut self, ctx: SinkContext) -> Result<()>;
    /// [`Sink::write`].
    fn write(&mut self, letter: DeadLetter) -> Result<()>;
    /// [`Sink::close`].
    fn close(&mut self) -> Result<()>;
}

impl<S: Sink<DeadLetter>> DeadLetterSink for S {
    fn clone_box(&self) -> Box<dyn DeadLetterSink> {
        Box::new(self.clone())
    }

    fn open(&mut self, ctx: SinkContext) -> Result<()> {
        Sink::open(self, ctx)
    }

    fn write(&mut self, letter: DeadLetter) -> Result<()> {
        Sink::write(self, letter)
    }

    fn close(&mut self) -> Result<()> {
        Sink::close(self)
    }
}
