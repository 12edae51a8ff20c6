//! Test scaffolding shared by the event-time and window tests: a source that plays a script
//! per subtask (events, clock moves, pauses in wall time).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eddy::{ManualClock, Source, SourceContext, SourceReader, SourceStatus};

/// An event: a key and an event time in milliseconds.
pub type Event = (String, u64);

/// One step of a scripted source subtask.
#[derive(Clone)]
pub enum Step {
    Emit(Vec<Event>),
    /// Moves the job's manual clock to this time.
    SetClock(u64),
    /// Keeps the subtask open (emitting nothing) for this long in wall time.
    StayOpen(Duration),
}

/// A source whose subtask `i` plays `scripts[i]`, then ends and raises `ended[i]`.
#[derive(Clone)]
pub struct ScriptedSource {
    scripts: Vec<Vec<Step>>,
    clock: Option<Arc<ManualClock>>,
    /// Raised by each subtask when it ends.
    pub ended: Arc<Vec<AtomicBool>>,
}

impl ScriptedSource {
    pub fn new(scripts: Vec<Vec<Step>>, clock: Option<Arc<ManualClock>>) -> Self {
        let ended = Arc::new(scripts.iter().map(|_| AtomicBool::new(false)).collect());
        ScriptedSource {
            scripts,
            clock,
            ended,
        }
    }
}

pub struct ScriptedReader {
    steps: std::vec::IntoIter<Step>,
    open_until: Option<Instant>,
    clock: Option<Arc<ManualClock>>,
    ended: Arc<Vec<AtomicBool>>,
    subtask: usize,
}

impl Source for ScriptedSource {
    type Item = Event;
    type Reader = ScriptedReader;

    fn create_reader(&self, ctx: SourceContext) -> eddy::Result<ScriptedReader> {
        Ok(ScriptedReader {
            steps: self
                .scripts
                .get(ctx.subtask)
                .cloned()
                .unwrap_or_default()
                .into_iter(),
            open_until: None,
            clock: self.clock.clone(),
            ended: Arc::clone(&self.ended),
            subtask: ctx.subtask,
        })
    }
}

impl SourceReader for ScriptedReader {
    type Item = Event;

    fn poll(&mut self, out: &mut Vec<Event>, _max: usize) -> eddy::Result<SourceStatus> {
        if let Some(until) = self.open_until {
            if Instant::now() < until {
                return Ok(SourceStatus::More);
            }
            self.open_until = None;
        }
        match self.steps.next() {
            Some(Step::Emit(events)) => out.extend(events),
            Some(Step::SetClock(ms)) => {
                if let Some(clock) = &self.clock {
                    clock.set(ms);
                }
            }
            Some(Step::StayOpen(duration)) => self.open_until = Some(Instant::now() + duration),
            None => {
                if let Some(flag) = self.ended.get(self.subtask) {
                    flag.store(true, Ordering::SeqCst);
                }
                return Ok(SourceStatus::Finished);
            }
        }
        Ok(SourceStatus::More)
    }
}

pub fn events(key: &str, times: impl IntoIterator<Item = u64>) -> Vec<Event> {
    times.into_iter().map(|t| (key.to_string(), t)).collect()
}
