//! An idle source subtask must not hold the others back: epochs are time slices shared by all
//! workers, so a reader with nothing to give still advances its epoch.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use eddy::prelude::*;
use eddy::{SourceContext, SourceReader, SourceStatus};

/// Subtask 0 emits `count` records; subtask 1 has nothing until subtask 0 is done.
struct OneBusyOneIdle {
    count: u64,
    busy_done: Arc<AtomicBool>,
    idle_polls: Arc<AtomicU64>,
}

struct Reader {
    subtask: usize,
    next: u64,
    count: u64,
    busy_done: Arc<AtomicBool>,
    idle_polls: Arc<AtomicU64>,
}

impl Source for OneBusyOneIdle {
    type Item = u64;
    type Reader = Reader;

    fn create_reader(&self, ctx: SourceContext) -> Result<Reader> {
        Ok(Reader {
            subtask: ctx.subtask,
            next: 0,
            count: self.count,
            busy_done: Arc::clone(&self.busy_done),
            idle_polls: Arc::clone(&self.idle_polls),
        })
    }
}

impl SourceReader for Reader {
    type Item = u64;

    fn poll(&mut self, out: &mut Vec<u64>, max: usize) -> Result<SourceStatus> {
        if self.subtask == 1 {
            if self.busy_done.load(Ordering::Acquire) {
                return Ok(SourceStatus::Finished);
            }
            self.idle_polls.fetch_add(1, Ordering::Relaxed);
            return Ok(SourceStatus::More);
        }
        let end = self.count.min(self.next + max as u64);
        out.extend(self.next..end);
        self.next = end;
        if self.next == self.count {
            self.busy_done.store(true, Ordering::Release);
            return Ok(SourceStatus::Finished);
        }
        Ok(SourceStatus::More)
    }
}

#[derive(Clone)]
struct Count;

impl KeyedProcessFunction for Count {
    type Key = u64;
    type In = u64;
    type Out = u64;
    type State = ValueState<u64>;

    fn open(&mut self, ctx: &mut OpenContext<'_, u64>) -> Result<Self::State> {
        ctx.value_state(&ValueStateDescriptor::new("count"))
    }

    fn process_element(
        &mut self,
        count: &mut Self::State,
        _: u64,
        _: &mut Context<'_, u64>,
        out: &mut Collector<'_, u64>,
    ) -> Result<()> {
        let n = count.value()?.unwrap_or(0) + 1;
        count.update(n)?;
        out.collect(n);
        Ok(())
    }
}

#[test]
fn an_idle_source_subtask_does_not_stall_the_busy_one() {
    const N: u64 = 200_000;
    let idle_polls = Arc::new(AtomicU64::new(0));
    let source = OneBusyOneIdle {
        count: N,
        busy_done: Arc::new(AtomicBool::new(false)),
        idle_polls: Arc::clone(&idle_polls),
    };
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let config = JobConfig {
            parallelism: 2,
            // Short epochs and one epoch in flight: with count-based epochs the idle reader
            // would never advance, and the busy one would wait for it forever.
            epoch_interval: Duration::from_millis(1),
            max_epochs_in_flight: 1,
            ..JobConfig::default()
        };
        let env = StreamExecutionEnvironment::new(config);
        let sink = CountingSink::<u64>::new();
        env.from_source(source)
            .key_by(|i: &u64| i % 1000)
            .process(Count)
            .sink(sink.clone());
        let result = env.execute("idle-source");
        done.send((result.map(|_| ()), sink.count())).unwrap();
    });
    let (result, count) = finished
        .recv_timeout(Duration::from_secs(60))
        .expect("the job stalled behind its idle source subtask");
    result.unwrap();
    assert_eq!(count, N);
    // The idle reader was polled, but with a back-off rather than in a busy loop.
    let polls = idle_polls.load(Ordering::Relaxed);
    assert!(polls > 0);
}
