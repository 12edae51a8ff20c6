//! The Flink Cookbook's session-window recipe: user activity sessions from a click stream.
//!
//! ```text
//! clicks ─assign_timestamps_and_watermarks(bounded out-of-orderness)─▶ key_by(user)
//!        ─window(event-time sessions, gap)─▶ process(Session) ─▶ sink
//!                                            └─▶ late clicks (side output)
//! ```
//!
//! A session is a burst of one user's clicks with no pause longer than the gap. Clicks may
//! arrive out of order by up to `out_of_orderness`; one that arrives after its session was
//! emitted and purged (the watermark passed the session's end) is reported as late instead of
//! being dropped silently. When an out-of-order click bridges two sessions, they merge into
//! one, state and all.

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use eddy::prelude::*;
use serde::{Deserialize, Serialize};

/// One click of a user on a page at an event time (ms).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Click {
    /// Who clicked.
    pub user: String,
    /// What was clicked.
    pub page: String,
    /// When, in milliseconds of event time.
    pub timestamp: u64,
}

impl Click {
    /// A click of `user` on `page` at `timestamp`.
    pub fn new(user: &str, page: &str, timestamp: u64) -> Self {
        Click {
            user: user.to_string(),
            page: page.to_string(),
            timestamp,
        }
    }
}

/// One user session: its window and what happened in it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The user.
    pub user: String,
    /// The first click's time.
    pub start: u64,
    /// The last click's time plus the gap (the window's end).
    pub end: u64,
    /// How many clicks.
    pub clicks: usize,
    /// The pages in event-time order.
    pub pages: Vec<String>,
}

/// Sessionizes `clicks`: sessions of each user, and the clicks that came too late.
pub fn sessions(
    clicks: DataStream<Click>,
    gap: Duration,
    out_of_orderness: Duration,
) -> Result<DataStream<WindowOutput<Session, Click>>> {
    Ok(clicks
        .assign_timestamps_and_watermarks(
            WatermarkStrategy::for_bounded_out_of_orderness(out_of_orderness)
                .with_timestamp_assigner(|click: &Click| click.timestamp),
        )
        .key_by(|click: &Click| click.user.clone())
        .window(WindowAssigner::event_time_session(gap)?)
        .name("sessions")
        .side_output_late_data()
        .process(summarize))
}

/// The process window function: one [`Session`] per fired window.
#[allow(clippy::ptr_arg)] // `&K` with `K = String`: the shape every process window function has
fn summarize(
    user: &String,
    window: &TimeWindow,
    mut clicks: Vec<Click>,
    out: &mut Collector<'_, Session>,
) -> Result<()> {
    clicks.sort_by_key(|click| click.timestamp);
    out.collect(Session {
        user: user.clone(),
        start: window.start,
        end: window.end,
        clicks: clicks.len(),
        pages: clicks.into_iter().map(|click| click.page).collect(),
    });
    Ok(())
}

/// The command-line arguments of the session-window example.
#[derive(Args, Clone, Debug)]
pub struct SessionWindowsArgs {
    /// Number of clicks to generate.
    #[arg(long, default_value_t = 1_000_000)]
    pub clicks: u64,
    /// Number of distinct users.
    #[arg(long, default_value_t = 10_000)]
    pub users: u64,
    /// The session gap in seconds.
    #[arg(long, default_value_t = 10)]
    pub gap_secs: u64,
}

/// What a run of the example produced.
#[derive(Clone, Debug)]
pub struct SessionSummary {
    /// Clicks processed by the window operator.
    pub clicks: u64,
    /// Sessions emitted.
    pub sessions: u64,
    /// Late clicks.
    pub late: u64,
    /// Job wall time.
    pub duration: Duration,
}

/// Generated clicks: user `i % users` at `i` tenths of a millisecond, so each user clicks
/// every `users / 10` ms on average and some pauses exceed the gap.
pub fn generated_clicks(
    env: &StreamExecutionEnvironment,
    args: &SessionWindowsArgs,
) -> DataStream<Click> {
    let users = args.users.max(1);
    let pages: Arc<[String]> = ["home", "search", "item", "cart", "checkout"]
        .iter()
        .map(|p| p.to_string())
        .collect();
    env.from_source_named(
        "clicks",
        GeneratorSource::new(args.clicks, move |i: u64| {
            // A multiplicative hash spreads the users so that their pauses vary.
            let user = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % users;
            Click {
                user: format!("user-{user}"),
                page: pages[(i % pages.len() as u64) as usize].clone(),
                timestamp: 1_700_000_000_000 + i / 10,
            }
        }),
    )
}

/// Runs the example on generated clicks.
pub fn run(env: &StreamExecutionEnvironment, args: &SessionWindowsArgs) -> Result<SessionSummary> {
    let sessions_out = CountingSink::<Session>::new();
    let late_out = CountingSink::<Click>::new();
    let (sessions_sink, late_sink) = (sessions_out.clone(), late_out.clone());
    let gap = Duration::from_secs(args.gap_secs);
    sessions(generated_clicks(env, args), gap, Duration::from_secs(1))?.sink_named(
        "sessions-and-late",
        SplitSink {
            sessions: sessions_sink,
            late: late_sink,
        },
    );
    let result = env.execute("session-windows")?;
    Ok(SessionSummary {
        clicks: result.operator("sessions").map_or(0, |o| o.records_in),
        sessions: sessions_out.count(),
        late: late_out.count(),
        duration: result.duration,
    })
}

/// Counts sessions and late clicks apart.
#[derive(Clone)]
struct SplitSink {
    sessions: CountingSink<Session>,
    late: CountingSink<Click>,
}

impl Sink<WindowOutput<Session, Click>> for SplitSink {
    fn write(&mut self, record: WindowOutput<Session, Click>) -> Result<()> {
        match record {
            WindowOutput::Result(session) => self.sessions.write(session),
            WindowOutput::Late(click) => self.late.write(click),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eddy::{SourceContext, SourceReader, SourceStatus};
    use std::time::Instant;

    /// Plays phases of clicks with a pause between them, so that the watermark moves on
    /// between phases (it advances at epoch boundaries, every 10 ms).
    #[derive(Clone)]
    struct Phases(Vec<Vec<Click>>);

    struct PhaseReader {
        phases: std::vec::IntoIter<Vec<Click>>,
        next_at: Instant,
    }

    impl Source for Phases {
        type Item = Click;
        type Reader = PhaseReader;
        fn create_reader(&self, ctx: SourceContext) -> Result<PhaseReader> {
            let phases = if ctx.subtask == 0 {
                self.0.clone()
            } else {
                Vec::new()
            };
            Ok(PhaseReader {
                phases: phases.into_iter(),
                next_at: Instant::now(),
            })
        }
    }

    impl SourceReader for PhaseReader {
        type Item = Click;
        fn poll(&mut self, out: &mut Vec<Click>, _max: usize) -> Result<SourceStatus> {
            if Instant::now() < self.next_at {
                return Ok(SourceStatus::More);
            }
            match self.phases.next() {
                Some(phase) => {
                    out.extend(phase);
                    self.next_at = Instant::now() + Duration::from_millis(100);
                    Ok(SourceStatus::More)
                }
                None => Ok(SourceStatus::Finished),
            }
        }
    }

    fn session(user: &str, start: u64, end: u64, pages: &[&str]) -> WindowOutput<Session, Click> {
        WindowOutput::Result(Session {
            user: user.to_string(),
            start,
            end,
            clicks: pages.len(),
            pages: pages.iter().map(|p| p.to_string()).collect(),
        })
    }

    #[test]
    fn sessions_match_the_hand_computed_ones_with_out_of_order_and_late_clicks() -> Result<()> {
        // Gap 10 s, out-of-orderness 2 s.
        let phases = vec![
            // Watermark after this phase: 4_000 - 2_000 - 1 = 1_999.
            vec![
                Click::new("alice", "home", 1_000),
                Click::new("alice", "search", 4_000),
                Click::new("bob", "home", 2_000),
            ],
            // Watermark after this phase: 18_999.
            vec![
                // After a 16 s pause: a session of its own.
                Click::new("alice", "item", 20_000),
                // Out of order, not late: extends alice's first session to 19_000.
                Click::new("alice", "cart", 9_000),
                // Out of order and bridging: bob's 2_000 and 21_000 sessions merge.
                Click::new("bob", "search", 21_000),
                Click::new("bob", "item", 11_500),
            ],
            // Watermark 57_999: every session so far has fired and is purged.
            vec![Click::new("carol", "home", 60_000)],
            // Too late for alice's first session: reported, not counted.
            vec![Click::new("alice", "checkout", 5_000)],
        ];
        let env = StreamExecutionEnvironment::new(JobConfig::default());
        let sink = CollectSink::new();
        let clicks = env.from_source(Phases(phases));
        sessions(clicks, Duration::from_secs(10), Duration::from_secs(2))?.sink(sink.clone());
        env.execute("sessions-test")?;
        let mut got = sink.take();
        got.sort_by_key(|o| format!("{o:?}"));
        let mut expected = vec![
            // 1_000, 4_000 and the out-of-order 9_000: one session [1_000, 19_000).
            session("alice", 1_000, 19_000, &["home", "search", "cart"]),
            session("alice", 20_000, 30_000, &["item"]),
            // 2_000, 11_500 (bridges), 21_000: [2_000, 31_000).
            session("bob", 2_000, 31_000, &["home", "item", "search"]),
            session("carol", 60_000, 70_000, &["home"]),
            WindowOutput::Late(Click::new("alice", "checkout", 5_000)),
        ];
        expected.sort_by_key(|o| format!("{o:?}"));
        assert_eq!(got, expected);
        Ok(())
    }
}
