//! Failing jobs: every failure ends the job (never a hang) and the error names the job, the
//! operator and the subtask that failed.
//!
//! Every job runs on its own thread under a watchdog, so a hang fails the test instead of
//! blocking the suite.

// Helpers outside `#[test]` functions unwrap too: a failed step fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use eddy::layers::core::key_group::{assign_to_key_group, subtask_for_key_group};
use eddy::layers::core::JobFailure;
use eddy::prelude::*;
use eddy::{SinkContext, SourceContext, SourceReader, SourceStatus};

/// How long a job may take before the test declares it hung.
const WATCHDOG: Duration = Duration::from_secs(30);

/// Runs `job` (which defines and executes a job) on its own thread and returns its result, or
/// fails the test if it does not return within [`WATCHDOG`].
fn run_with_watchdog<F>(job: F) -> Result<JobResult>
where
    F: FnOnce() -> Result<JobResult> + Send + 'static,
{
    let (done, result) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(job());
    });
    match result.recv_timeout(WATCHDOG) {
        Ok(result) => result,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("the job hung: execute() did not return within {WATCHDOG:?}")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            panic!("the job thread panicked instead of returning from execute()")
        }
    }
}

/// The failure of a job that should have failed.
fn job_failure(result: Result<JobResult>) -> Box<JobFailure> {
    match result {
        Err(EddyError::Job(failure)) => failure,
        other => panic!("expected a job failure, got {other:?}"),
    }
}

/// The subtask owning `key` with the default 128 key groups.
fn owner_of(key: u64, parallelism: usize) -> usize {
    subtask_for_key_group(128, parallelism, assign_to_key_group(&key, 128))
}

const CURSED: u64 = 7;

/// Forwards events, but returns a user error on the cursed key.
#[derive(Clone)]
struct Explode;

impl KeyedProcessFunction for Explode {
    type Key = u64;
    type In = u64;
    type Out = u64;
    type State = ValueState<u64>;

    fn open(&mut self, ctx: &mut OpenContext<'_, u64>) -> Result<Self::State> {
        ctx.value_state(&ValueStateDescriptor::new("seen"))
    }

    fn process_element(
        &mut self,
        seen: &mut Self::State,
        event: u64,
        ctx: &mut Context<'_, u64>,
        out: &mut Collector<'_, u64>,
    ) -> Result<()> {
        if *ctx.current_key() == CURSED {
            return Err(EddyError::user(format!("key {CURSED} is cursed")));
        }
        seen.update(event)?;
        out.collect(event);
        Ok(())
    }
}

#[test]
fn user_error_in_a_process_function_names_the_job_operator_and_subtask() {
    let failure = job_failure(run_with_watchdog(|| {
        let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(2));
        env.from_source(GeneratorSource::new(50_000, |i: u64| i))
            .key_by(|i: &u64| i % 100)
            .process_named("explode", Explode)
            .sink(CollectSink::new());
        env.execute("explode-job")
    }));
    assert_eq!(failure.job, "explode-job");
    assert_eq!(failure.operator, "explode");
    assert_eq!(failure.subtask, owner_of(CURSED, 2));
    assert!(
        matches!(failure.source, EddyError::User(_)),
        "{:?}",
        failure.source
    );
    let message = EddyError::Job(failure).to_string();
    for part in [
        "job \"explode-job\"".to_string(),
        "operator \"explode\"".to_string(),
        format!("(subtask {})", owner_of(CURSED, 2)),
        format!("key {CURSED} is cursed"),
    ] {
        assert!(message.contains(&part), "{message:?} lacks {part:?}");
    }
}

#[test]
fn a_failure_stops_an_unbounded_source() {
    // The source would run for ever: only the failure can end this job.
    let failure = job_failure(run_with_watchdog(|| {
        let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(2));
        env.from_source(GeneratorSource::new(u64::MAX, |i: u64| i))
            .key_by(|i: &u64| i % 100)
            .process_named("explode", Explode)
            .sink(CollectSink::new());
        env.execute("endless")
    }));
    assert_eq!(failure.operator, "explode");
}

/// Panics on the cursed key.
#[derive(Clone)]
struct Panicking;

impl KeyedProcessFunction for Panicking {
    type Key = u64;
    type In = u64;
    type Out = u64;
    type State = ();

    fn open(&mut self, _: &mut OpenContext<'_, u64>) -> Result<()> {
        Ok(())
    }

    fn process_element(
        &mut self,
        _: &mut (),
        event: u64,
        ctx: &mut Context<'_, u64>,
        out: &mut Collector<'_, u64>,
    ) -> Result<()> {
        if *ctx.current_key() == CURSED {
            panic!("deliberate panic on key {CURSED} (expected by the test)");
        }
        out.collect(event);
        Ok(())
    }
}

#[test]
fn panic_in_a_process_function_fails_the_job_instead_of_hanging() {
    let result = run_with_watchdog(|| {
        let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(2));
        env.from_source(GeneratorSource::new(50_000, |i: u64| i))
            .key_by(|i: &u64| i % 100)
            .process_named("panicky", Panicking)
            .sink(CollectSink::new());
        env.execute("panic-job")
    });
    let failure = job_failure(result);
    assert_eq!(failure.job, "panic-job");
    assert_eq!(failure.subtask, owner_of(CURSED, 2));
    let message = EddyError::Job(failure).to_string();
    assert!(message.contains("panicked"), "{message}");
}

/// `execute`'s documentation promises that an error *or a panic* of any operator is returned
/// "naming the operator and the subtask"; a panic is reported as operator `"<worker>"`, as an
/// internal error ("a bug in Eddy"), without the panic's message.
#[test]

fn panic_in_a_process_function_names_the_operator() {
    let failure = job_failure(run_with_watchdog(|| {
        let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(2));
        env.from_source(GeneratorSource::new(50_000, |i: u64| i))
            .key_by(|i: &u64| i % 100)
            .process_named("panicky", Panicking)
            .sink(CollectSink::new());
        env.execute("panic-job")
    }));
    assert_eq!(failure.operator, "panicky");
    assert_eq!(failure.subtask, owner_of(CURSED, 2));
    assert!(
        !matches!(failure.source, EddyError::Internal(_)),
        "a user panic is not a bug in Eddy: {}",
        failure.source
    );
}

#[test]
fn panic_in_a_chained_map_fails_the_job_instead_of_hanging() {
    let result = run_with_watchdog(|| {
        let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(2));
        env.from_source(GeneratorSource::new(50_000, |i: u64| i))
            .map(|i: u64| {
                assert!(
                    i != 30_000,
                    "deliberate panic in map (expected by the test)"
                );
                i
            })
            .sink(CollectSink::new());
        env.execute("panic-in-map")
    });
    let failure = job_failure(result);
    // Record 30,000 is in the second half: source subtask 1 reads it.
    assert_eq!(failure.subtask, 1);
}

/// A source whose readers emit `0, 1, 2, ...` and fail on their third poll.
struct FlakySource {
    polls: Arc<AtomicUsize>,
}

struct FlakyReader {
    next: u64,
    polls: usize,
    total_polls: Arc<AtomicUsize>,
}

impl Source for FlakySource {
    type Item = u64;
    type Reader = FlakyReader;

    fn create_reader(&self, _ctx: SourceContext) -> Result<FlakyReader> {
        Ok(FlakyReader {
            next: 0,
            polls: 0,
            total_polls: Arc::clone(&self.polls),
        })
    }
}

impl SourceReader for FlakyReader {
    type Item = u64;

    fn poll(&mut self, out: &mut Vec<u64>, max: usize) -> Result<SourceStatus> {
        self.polls += 1;
        self.total_polls.fetch_add(1, Ordering::SeqCst);
        if self.polls == 3 {
            return Err(EddyError::user("the disk is on fire"));
        }
        let end = self.next + max as u64;
        out.extend(self.next..end);
        self.next = end;
        Ok(SourceStatus::More)
    }
}

#[test]
fn source_error_on_the_third_poll_names_the_source() {
    let polls = Arc::new(AtomicUsize::new(0));
    let source_polls = Arc::clone(&polls);
    let failure = job_failure(run_with_watchdog(move || {
        let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(2));
        env.from_source_named(
            "flaky-source",
            FlakySource {
                polls: source_polls,
            },
        )
        .key_by(|i: &u64| i % 5) // never the cursed key
        .process(Explode)
        .sink(CollectSink::new());
        env.execute("flaky")
    }));
    assert_eq!(failure.job, "flaky");
    assert_eq!(failure.operator, "flaky-source");
    assert!(failure.subtask < 2);
    let message = EddyError::Job(failure).to_string();
    assert!(message.contains("operator \"flaky-source\""), "{message}");
    assert!(message.contains("the disk is on fire"), "{message}");
    // Each reader is polled at most three times: a failed reader is not polled again.
    assert!(polls.load(Ordering::SeqCst) <= 6);
}

/// A source whose `create_reader` fails.
struct UnreachableSource;

impl Source for UnreachableSource {
    type Item = u64;
    type Reader = FlakyReader;

    fn create_reader(&self, ctx: SourceContext) -> Result<FlakyReader> {
        Err(EddyError::user(format!(
            "cannot reach split {} of {}",
            ctx.subtask, ctx.parallelism
        )))
    }
}

#[test]
fn source_that_cannot_create_its_reader_names_the_source() {
    let failure = job_failure(run_with_watchdog(|| {
        let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(2));
        env.from_source_named("remote", UnreachableSource)
            .sink(CollectSink::new());
        env.execute("unreachable")
    }));
    assert_eq!(failure.operator, "remote");
    let message = EddyError::Job(failure).to_string();
    assert!(message.contains("cannot reach split"), "{message}");
}

/// A sink whose `write` fails on its 100th record, or whose `open` fails.
#[derive(Clone)]
struct FragileSink {
    fail_on_open: bool,
    written: usize,
}

impl Sink<u64> for FragileSink {
    fn open(&mut self, ctx: SinkContext) -> Result<()> {
        match self.fail_on_open {
            true => Err(EddyError::user(format!(
                "subtask {} cannot open",
                ctx.subtask
            ))),
            false => Ok(()),
        }
    }

    fn write(&mut self, _record: u64) -> Result<()> {
        self.written += 1;
        match self.written {
            100 => Err(EddyError::user("the sink is full")),
            _ => Ok(()),
        }
    }
}

#[test]
fn sink_write_error_names_the_sink() {
    let failure = job_failure(run_with_watchdog(|| {
        let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(2));
        env.from_source(GeneratorSource::new(50_000, |i: u64| i))
            .key_by(|i: &u64| i % 5) // never the cursed key
            .process(Explode)
            .sink_named(
                "fragile-sink",
                FragileSink {
                    fail_on_open: false,
                    written: 0,
                },
            );
        env.execute("fragile")
    }));
    assert_eq!(failure.job, "fragile");
    assert_eq!(failure.operator, "fragile-sink");
    let message = EddyError::Job(failure).to_string();
    assert!(message.contains("operator \"fragile-sink\""), "{message}");
    assert!(message.contains("the sink is full"), "{message}");
}

#[test]
fn sink_open_error_names_the_sink() {
    let failure = job_failure(run_with_watchdog(|| {
        let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(2));
        env.from_source(GeneratorSource::new(50_000, |i: u64| i))
            .sink_named(
                "fragile-sink",
                FragileSink {
                    fail_on_open: true,
                    written: 0,
                },
            )
            .set_parallelism(1);
        env.execute("fragile-open")
    }));
    assert_eq!(failure.operator, "fragile-sink");
    assert_eq!(failure.subtask, 0);
    assert!(failure.source.to_string().contains("subtask 0 cannot open"));
}

/// Fails in `open()` on subtask 1, or in `close()`.
#[derive(Clone)]
struct FailsInLifecycle {
    in_open: bool,
}

impl KeyedProcessFunction for FailsInLifecycle {
    type Key = u64;
    type In = u64;
    type Out = u64;
    type State = ();

    fn open(&mut self, ctx: &mut OpenContext<'_, u64>) -> Result<()> {
        if self.in_open && ctx.subtask_index() == 1 {
            return Err(EddyError::user("open failed on subtask 1"));
        }
        Ok(())
    }

    fn process_element(
        &mut self,
        _: &mut (),
        event: u64,
        _ctx: &mut Context<'_, u64>,
        out: &mut Collector<'_, u64>,
    ) -> Result<()> {
        out.collect(event);
        Ok(())
    }

    fn close(&mut self, _: &mut (), _out: &mut Collector<'_, u64>) -> Result<()> {
        match self.in_open {
            true => Ok(()),
            false => Err(EddyError::user("close failed")),
        }
    }
}

#[test]
fn open_error_in_a_process_function_names_the_operator_and_subtask() {
    let failure = job_failure(run_with_watchdog(|| {
        let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(2));
        env.from_source(GeneratorSource::new(50_000, |i: u64| i))
            .key_by(|i: &u64| i % 100)
            .process_named("opener", FailsInLifecycle { in_open: true })
            .sink(CollectSink::new());
        env.execute("open-fails")
    }));
    assert_eq!(failure.operator, "opener");
    assert_eq!(failure.subtask, 1);
    assert!(failure
        .source
        .to_string()
        .contains("open failed on subtask 1"));
}

#[test]
fn close_error_in_a_process_function_names_the_operator() {
    let failure = job_failure(run_with_watchdog(|| {
        let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(2));
        env.from_source(GeneratorSource::new(10_000, |i: u64| i))
            .key_by(|i: &u64| i % 100)
            .process_named("closer", FailsInLifecycle { in_open: false })
            .sink(CollectSink::new());
        env.execute("close-fails")
    }));
    assert_eq!(failure.operator, "closer");
    assert!(failure.subtask < 2);
    assert!(failure.source.to_string().contains("close failed"));
}

#[test]
fn the_environment_runs_a_good_job_after_a_failed_one() {
    let results = CollectSink::new();
    let job_results = results.clone();
    let outcome = run_with_watchdog(move || {
        let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(2));
        env.from_source(GeneratorSource::new(10_000, |i: u64| i))
            .key_by(|i: &u64| i % 100)
            .process_named("explode", Explode)
            .sink(CollectSink::new());
        let failure = job_failure(env.execute("first"));
        assert_eq!(
            (failure.job.as_str(), failure.operator.as_str()),
            ("first", "explode")
        );

        // The same function succeeds once the cursed key is filtered out.
        env.from_source(GeneratorSource::new(10_000, |i: u64| i))
            .filter(|i: &u64| i % 100 != CURSED)
            .key_by(|i: &u64| i % 100)
            .process_named("explode", Explode)
            .sink(job_results);
        env.execute("second")
    })
    .unwrap();
    assert_eq!(outcome.job_name, "second");
    assert_eq!(outcome.operator("explode").unwrap().records_in, 9_900);
    let mut values = results.take();
    values.sort_unstable();
    let expected: Vec<u64> = (0..10_000).filter(|i| i % 100 != CURSED).collect();
    assert_eq!(values, expected);
}

/// Registers the state "history" twice: as a value and as a list.
#[derive(Clone)]
struct DoubleRegistration;

impl KeyedProcessFunction for DoubleRegistration {
    type Key = u64;
    type In = u64;
    type Out = u64;
    type State = (ValueState<u64>, ListState<u64>);

    fn open(&mut self, ctx: &mut OpenContext<'_, u64>) -> Result<Self::State> {
        Ok((
            ctx.value_state(&ValueStateDescriptor::new("history"))?,
            ctx.list_state(&ListStateDescriptor::new("history"))?,
        ))
    }

    fn process_element(
        &mut self,
        _: &mut Self::State,
        event: u64,
        _ctx: &mut Context<'_, u64>,
        out: &mut Collector<'_, u64>,
    ) -> Result<()> {
        out.collect(event);
        Ok(())
    }
}

#[test]
fn one_state_name_registered_as_two_kinds_fails_the_job_naming_the_state() {
    let failure = job_failure(run_with_watchdog(|| {
        let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(2));
        env.from_source(GeneratorSource::new(1_000, |i: u64| i))
            .key_by(|i: &u64| i % 10)
            .process_named("registrar", DoubleRegistration)
            .sink(CollectSink::new());
        env.execute("double-registration")
    }));
    assert_eq!(failure.operator, "registrar");
    match &failure.source {
        EddyError::State { state, .. } => assert_eq!(state, "history"),
        other => panic!("expected a state error, got {other:?}"),
    }
}

/// Appends to a list while iterating it.
#[derive(Clone)]
struct AppendWhileIterating;

impl KeyedProcessFunction for AppendWhileIterating {
    type Key = u64;
    type In = u64;
    type Out = u64;
    type State = ListState<u64>;

    fn open(&mut self, ctx: &mut OpenContext<'_, u64>) -> Result<Self::State> {
        ctx.list_state(&ListStateDescriptor::new("seen"))
    }

    fn process_element(
        &mut self,
        seen: &mut Self::State,
        event: u64,
        _ctx: &mut Context<'_, u64>,
        out: &mut Collector<'_, u64>,
    ) -> Result<()> {
        seen.add(event)?;
        for old in seen.get()? {
            seen.add(old + 1)?;
        }
        out.collect(event);
        Ok(())
    }
}

#[test]
fn modifying_a_list_while_iterating_it_fails_the_job_with_a_state_error() {
    let failure = job_failure(run_with_watchdog(|| {
        let env = StreamExecutionEnvironment::new(JobConfig::with_parallelism(2));
        env.from_source(GeneratorSource::new(1_000, |i: u64| i))
            .key_by(|i: &u64| i % 10)
            .process_named("appender", AppendWhileIterating)
            .sink(CollectSink::new());
        env.execute("append-while-iterating")
    }));
    assert_eq!(failure.operator, "appender");
    match &failure.source {
        EddyError::State { state, reason } => {
            assert_eq!(state, "seen");
            assert!(reason.contains("iterator"), "{reason}");
        }
        other => panic!("expected a state error, got {other:?}"),
    }
}

thread_local! {
    /// Where `Smuggler` leaves its handle for `Thief` (both run on the same worker thread).
    static SMUGGLED: std::cell::RefCell<Option<ValueState<u64>>> =
        const { std::cell::RefCell::new(None) };
}

/// Registers a state and leaves its handle in a thread-local: the misuse under test.
#[derive(Clone)]
struct Smuggler;

impl KeyedProcessFunction for Smuggler {
    type Key = u64;
    type In = u64;
    type Out = u64;
    type State = ValueState<u64>;

    fn open(&mut self, ctx: &mut OpenContext<'_, u64>) -> Result<ValueState<u64>> {
        let state = ctx.value_state(&ValueStateDescriptor::new("smuggled"))?;
        let copy = ctx.value_state(&ValueStateDescriptor::new("smuggled"))?;
        SMUGGLED.with(|s| *s.borrow_mut() = Some(copy));
        Ok(state)
    }

    fn process_element(
        &mut self,
        state: &mut ValueState<u64>,
        event: u64,
        _ctx: &mut Context<'_, u64>,
        out: &mut Collector<'_, u64>,
    ) -> Result<()> {
        state.update(event)?;
        out.collect(event);
        Ok(())
    }
}

/// Uses the handle of another operator.
#[derive(Clone)]
struct Thief;

impl KeyedProcessFunction for Thief {
    type Key = u64;
    type In = u64;
    type Out = u64;
    type State = ();

    fn open(&mut self, _ctx: &mut OpenContext<'_, u64>) -> Result<()> {
        Ok(())
    }

    fn process_element(
        &mut self,
        _state: &mut (),
        event: u64,
        _ctx: &mut Context<'_, u64>,
        out: &mut Collector<'_, u64>,
    ) -> Result<()> {
        let stolen = SMUGGLED.with(|s| s.borrow().as_ref().map(|h| h.value()));
        if let Some(read) = stolen {
            read?;
        }
        out.collect(event);
        Ok(())
    }
}

#[test]
fn a_state_handle_used_in_another_operator_is_an_error_naming_state_and_owner() {
    let result = run_with_watchdog(|| {
        let env = StreamExecutionEnvironment::new(JobConfig::default());
        env.from_source(GeneratorSource::new(100, |i: u64| i))
            .key_by(|x: &u64| *x)
            .process_named("smuggler", Smuggler)
            .key_by(|x: &u64| *x)
            .process_named("thief", Thief)
            .sink(CountingSink::new());
        env.execute("smuggling")
    });
    let error = result.expect_err("the stolen handle must fail").to_string();
    assert!(error.contains("\"thief\""), "fails in the thief: {error}");
    assert!(error.contains("smuggled"), "names the state: {error}");
    assert!(
        error.contains("used outside its operator \"smuggler\""),
        "names the owner: {error}"
    );
}
