//! Operator (non-keyed) state in sources: each reader registers list state in its subtask's
//! operator state store and keeps the handle; what it writes is what it reads back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use eddy::prelude::*;
use eddy::{OperatorListState, OperatorStateStore, SourceContext, SourceReader, SourceStatus};

/// (subtask, its position read back from state at the end), per finished reader.
type Ends = Arc<Mutex<Vec<(usize, Vec<u64>)>>>;

/// Counts to `count` per subtask, keeping its position in operator list state.
#[derive(Clone)]
struct PositionedSource {
    count: u64,
    ends: Ends,
}

struct PositionedReader {
    next: u64,
    count: u64,
    position: OperatorListState<u64>,
    subtask: usize,
    ends: Ends,
}

impl Source for PositionedSource {
    type Item = u64;
    type Reader = PositionedReader;

    fn create_reader(&self, _ctx: SourceContext) -> Result<PositionedReader> {
        Err(EddyError::Config(
            "this source needs its operator state".into(),
        ))
    }

    fn create_reader_with_state(
        &self,
        ctx: SourceContext,
        state: &mut OperatorStateStore,
    ) -> Result<PositionedReader> {
        let position = state.list_state(&ListStateDescriptor::new("position"))?;
        let next = position.get()?.next().unwrap_or(0);
        Ok(PositionedReader {
            next,
            count: self.count,
            position,
            subtask: ctx.subtask,
            ends: Arc::clone(&self.ends),
        })
    }
}

impl SourceReader for PositionedReader {
    type Item = u64;

    fn poll(&mut self, out: &mut Vec<u64>, max: usize) -> Result<SourceStatus> {
        let end = self.count.min(self.next + max as u64);
        out.extend(self.next..end);
        self.next = end;
        self.position.update(vec![self.next])?;
        if self.next < self.count {
            return Ok(SourceStatus::More);
        }
        let stored: Vec<u64> = self.position.get()?.collect();
        self.ends.lock().unwrap().push((self.subtask, stored));
        Ok(SourceStatus::Finished)
    }
}

#[test]
fn source_readers_keep_their_position_in_operator_state() {
    let ends = Arc::new(Mutex::new(Vec::new()));
    let sink = CountingSink::new();
    let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(2));
    env.from_source(PositionedSource {
        count: 3_000,
        ends: Arc::clone(&ends),
    })
    .sink(sink.clone());
    env.execute("operator-state").unwrap();

    let mut ends = ends.lock().unwrap().clone();
    ends.sort();
    assert_eq!(
        ends,
        vec![(0, vec![3_000]), (1, vec![3_000])],
        "each reader's position"
    );

    assert_eq!(sink.count(), 6_000);
}
