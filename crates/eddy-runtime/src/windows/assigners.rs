//! Window assigners: which windows an element with a given timestamp belongs to.
//!
//! The semantics are Flink's (`TumblingEventTimeWindows`, `SlidingEventTimeWindows`,
//! `EventTimeSessionWindows` and their processing-time twins): windows are half-open
//! `[start, end)` intervals of milliseconds, aligned to the epoch plus an optional offset.

use std::time::Duration;

use eddy_core::{EddyError, Result};
use serde::{Deserialize, Serialize};

/// A time window `[start, end)` in milliseconds; the namespace of window state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TimeWindow {
    /// The first millisecond in the window.
    pub start: u64,
    /// The first millisecond after the window.
    pub end: u64,
}

impl TimeWindow {
    /// The window `[start, end)`.
    pub fn new(start: u64, end: u64) -> Self {
        TimeWindow { start, end }
    }

    /// The last timestamp that belongs to the window (`end - 1`): when its event-time timer
    /// fires, as Flink's `maxTimestamp`.
    pub fn max_timestamp(&self) -> u64 {
        self.end.saturating_sub(1)
    }

    /// Whether the two windows overlap or touch end to start (then session windows merge).
    pub fn intersects(&self, other: &TimeWindow) -> bool {
        self.start <= other.end && other.start <= self.end
    }

    /// The smallest window containing both.
    pub fn cover(&self, other: &TimeWindow) -> TimeWindow {
        TimeWindow::new(self.start.min(other.start), self.end.max(other.end))
    }
}

/// The start of the window of size `size` (offset by `offset`) that contains `timestamp`
/// (Flink's `TimeWindow.getWindowStartWithOffset`), cut at 0 near the epoch.
pub fn window_start(timestamp: u64, offset: u64, size: u64) -> u64 {
    timestamp.saturating_sub(offset_in_window(timestamp, offset, size))
}

/// How far `timestamp` is into its window of size `size` (offset by `offset`).
fn offset_in_window(timestamp: u64, offset: u64, size: u64) -> u64 {
    (timestamp % size + size - offset % size) % size
}

/// Which clock a window assigner follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowTime {
    /// Element timestamps and the watermark.
    Event,
    /// The subtask's processing-time clock when the element arrives.
    Processing,
}

/// Assigns windows to elements: tumbling, sliding or session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowAssigner {
    /// Fixed-size, non-overlapping windows.
    Tumbling {
        /// Window length in ms.
        size: u64,
        /// Shift of the window boundaries from the epoch in ms.
        offset: u64,
        /// Event or processing time.
        time: WindowTime,
    },
    /// Fixed-size windows starting every `slide` ms; an element is in `size / slide` windows.
    Sliding {
        /// Window length in ms.
        size: u64,
        /// Distance between window starts in ms.
        slide: u64,
        /// Shift of the window boundaries from the epoch in ms.
        offset: u64,
        /// Event or processing time.
        time: WindowTime,
    },
    /// Per-key windows that close after `gap` ms without elements; overlapping ones merge.
    Session {
        /// The inactivity gap in ms.
        gap: u64,
        /// Event or processing time.
        time: WindowTime,
    },
}

fn millis(duration: Duration, what: &str) -> Result<u64> {
    let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return Err(EddyError::Config(format!(
            "window {what} must be at least 1 ms, got {duration:?}"
        )));
    }
    Ok(ms)
}

impl WindowAssigner {
    /// Tumbling event-time windows of `size` (Flink's `TumblingEventTimeWindows.of`).
    pub fn tumbling_event_time(size: Duration) -> Result<Self> {
        Self::tumbling(size, WindowTime::Event)
    }

    /// Tumbling processing-time windows of `size`.
    pub fn tumbling_processing_time(size: Duration) -> Result<Self> {
        Self::tumbling(size, WindowTime::Processing)
    }

    fn tumbling(size: Duration, time: WindowTime) -> Result<Self> {
        Ok(WindowAssigner::Tumbling {
            size: millis(size, "size")?,
            offset: 0,
            time,
        })
    }

    /// Sliding event-time windows of `size` every `slide` (`SlidingEventTimeWindows.of`).
    pub fn sliding_event_time(size: Duration, slide: Duration) -> Result<Self> {
        Self::sliding(size, slide, WindowTime::Event)
    }

    /// Sliding processing-time windows of `size` every `slide`.
    pub fn sliding_processing_time(size: Duration, slide: Duration) -> Result<Self> {
        Self::sliding(size, slide, WindowTime::Processing)
    }

    fn sliding(size: Duration, slide: Duration, time: WindowTime) -> Result<Self> {
        Ok(WindowAssigner::Sliding {
            size: millis(size, "size")?,
            slide: millis(slide, "slide")?,
            offset: 0,
            time,
        })
    }

    /// Event-time session windows with inactivity `gap` (`EventTimeSessionWindows.withGap`).
    pub fn event_time_session(gap: Duration) -> Result<Self> {
        Ok(WindowAssigner::Session {
            gap: millis(gap, "gap")?,
            time: WindowTime::Event,
        })
    }

    /// Processing-time session windows with inactivity `gap`.
    pub fn processing_time_session(gap: Duration) -> Result<Self> {
        Ok(WindowAssigner::Session {
            gap: millis(gap, "gap")?,
            time: WindowTime::Processing,
        })
    }

    /// Shifts tumbling or sliding window boundaries by `offset` (e.g. for time zones);
    /// an error for session windows, which have no boundaries.
    pub fn with_offset(self, offset: Duration) -> Result<Self> {
        let offset_ms = u64::try_from(offset.as_millis()).unwrap_or(u64::MAX);
        match self {
            WindowAssigner::Tumbling { size, time, .. } if offset_ms < size => {
                Ok(WindowAssigner::Tumbling {
                    size,
                    offset: offset_ms,
                    time,
                })
            }
            WindowAssigner::Sliding {
                size, slide, time, ..
            } if offset_ms < slide => Ok(WindowAssigner::Sliding {
                size,
                slide,
                offset: offset_ms,
                time,
            }),
            WindowAssigner::Session { .. } => Err(EddyError::Config(
                "session windows have no offset".to_string(),
            )),
            _ => Err(EddyError::Config(format!(
                "window offset {offset:?} must be smaller than the window slide/size"
            ))),
        }
    }

    /// The windows an element with `timestamp` belongs to.
    pub fn assign(&self, timestamp: u64) -> Vec<TimeWindow> {
        match *self {
            WindowAssigner::Tumbling { size, offset, .. } => {
                vec![tumbling_window(timestamp, offset, size)]
            }
            WindowAssigner::Sliding {
                size,
                slide,
                offset,
                ..
            } => {
                let last_start = window_start(timestamp, offset, slide);
                let mut windows = Vec::with_capacity(size.div_ceil(slide) as usize);
                let mut start = last_start;
                loop {
                    if start.saturating_add(size) <= timestamp {
                        break;
                    }
                    windows.push(TimeWindow::new(start, start.saturating_add(size)));
                    match start.checked_sub(slide) {
                        Some(previous) => start = previous,
                        None => break,
                    }
                }
                windows
            }
            WindowAssigner::Session { gap, .. } => {
                vec![TimeWindow::new(timestamp, timestamp.saturating_add(gap))]
            }
        }
    }

    /// The window of an element with `timestamp` when there is exactly one (tumbling and
    /// session windows), without allocating; `None` for sliding windows.
    pub fn single_window(&self, timestamp: u64) -> Option<TimeWindow> {
        match *self {
            WindowAssigner::Tumbling { size, offset, .. } => {
                Some(tumbling_window(timestamp, offset, size))
            }
            WindowAssigner::Session { gap, .. } => {
                Some(TimeWindow::new(timestamp, timestamp.saturating_add(gap)))
            }
            WindowAssigner::Sliding { .. } => None,
        }
    }

    /// Whether windows follow event time (else processing time).
    pub fn is_event_time(&self) -> bool {
        let time = match self {
            WindowAssigner::Tumbling { time, .. }
            | WindowAssigner::Sliding { time, .. }
            | WindowAssigner::Session { time, .. } => *time,
        };
        time == WindowTime::Event
    }

    /// Whether windows merge (session windows).
    pub fn is_merging(&self) -> bool {
        matches!(self, WindowAssigner::Session { .. })
    }
}

/// The tumbling window of `size` (offset by `offset`) that contains `timestamp`.
fn tumbling_window(timestamp: u64, offset: u64, size: u64) -> TimeWindow {
    let end = timestamp.saturating_add(size - offset_in_window(timestamp, offset, size));
    TimeWindow::new(end.saturating_sub(size), end)
}

/// Merges overlapping windows (Flink's `TimeWindow.mergeWindows`): returns, for each group
/// of windows that intersect transitively, the covering window and the members.
pub fn merge_windows(windows: &[TimeWindow]) -> Vec<(TimeWindow, Vec<TimeWindow>)> {
    let mut sorted = windows.to_vec();
    sorted.sort();
    let mut merged: Vec<(TimeWindow, Vec<TimeWindow>)> = Vec::new();
    for window in sorted {
        match merged.last_mut() {
            Some((cover, members)) if cover.intersects(&window) => {
                *cover = cover.cover(&window);
                members.push(window);
            }
            _ => merged.push((window, vec![window])),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_single_window_is_the_one_assign_gives() -> Result<()> {
        let assigners = [
            WindowAssigner::tumbling_event_time(ms(60_000))?,
            WindowAssigner::tumbling_event_time(ms(10))?.with_offset(ms(3))?,
            WindowAssigner::event_time_session(ms(10_000))?,
        ];
        for assigner in assigners {
            for timestamp in [0, 1, 2, 9, 10, 13, 59_999, 60_000, 1_700_000_000_123] {
                assert_eq!(
                    assigner
                        .single_window(timestamp)
                        .into_iter()
                        .collect::<Vec<_>>(),
                    assigner.assign(timestamp),
                    "{assigner:?} at {timestamp}"
                );
            }
        }
        let sliding = WindowAssigner::sliding_event_time(ms(20), ms(10))?;
        assert_eq!(sliding.single_window(15), None);
        Ok(())
    }

    #[test]
    fn tumbling_windows_are_aligned_and_half_open() -> Result<()> {
        let tumbling = WindowAssigner::tumbling_event_time(ms(10))?;
        assert_eq!(tumbling.assign(0), vec![TimeWindow::new(0, 10)]);
        assert_eq!(tumbling.assign(9), vec![TimeWindow::new(0, 10)]);
        assert_eq!(tumbling.assign(10), vec![TimeWindow::new(10, 20)]);
        let shifted = tumbling.with_offset(ms(3))?;
        assert_eq!(shifted.assign(12), vec![TimeWindow::new(3, 13)]);
        assert_eq!(shifted.assign(13), vec![TimeWindow::new(13, 23)]);
        // Before the first boundary after the epoch the window is cut at 0 (Flink's would
        // start at -7; timestamps here are unsigned).
        assert_eq!(shifted.assign(2), vec![TimeWindow::new(0, 3)]);
        assert_eq!(TimeWindow::new(0, 10).max_timestamp(), 9);
        Ok(())
    }

    #[test]
    fn sliding_windows_cover_an_element_size_over_slide_times() -> Result<()> {
        let sliding = WindowAssigner::sliding_event_time(ms(30), ms(10))?;
        let mut windows = sliding.assign(25);
        windows.sort();
        assert_eq!(
            windows,
            vec![
                TimeWindow::new(0, 30),
                TimeWindow::new(10, 40),
                TimeWindow::new(20, 50)
            ]
        );
        // Near the epoch there are fewer windows, none starting before 0.
        let mut early = sliding.assign(5);
        early.sort();
        assert_eq!(early, vec![TimeWindow::new(0, 30)]);
        Ok(())
    }

    #[test]
    fn sessions_merge_when_they_overlap_or_touch() -> Result<()> {
        let session = WindowAssigner::event_time_session(ms(10))?;
        assert!(session.is_merging() && session.is_event_time());
        let windows: Vec<TimeWindow> = [1u64, 5, 30, 15, 60]
            .iter()
            .flat_map(|t| session.assign(*t))
            .collect();
        let merged = merge_windows(&windows);
        let covers: Vec<TimeWindow> = merged.iter().map(|(cover, _)| *cover).collect();
        // [1,11) [5,15) [15,25) chain into [1,25); [30,40) alone; [60,70) alone.
        assert_eq!(
            covers,
            vec![
                TimeWindow::new(1, 25),
                TimeWindow::new(30, 40),
                TimeWindow::new(60, 70)
            ]
        );
        assert_eq!(merged[0].1.len(), 3);
        Ok(())
    }

    #[test]
    fn bad_sizes_and_offsets_are_configuration_errors() {
        assert!(WindowAssigner::tumbling_event_time(ms(0)).is_err());
        assert!(WindowAssigner::sliding_event_time(ms(10), ms(0)).is_err());
        let session = WindowAssigner::event_time_session(ms(5));
        assert!(session.and_then(|s| s.with_offset(ms(1))).is_err());
        let tumbling = WindowAssigner::tumbling_event_time(ms(10));
        assert!(tumbling.and_then(|t| t.with_offset(ms(10))).is_err());
    }
}
