//! Event time: record timestamps, watermarks, and how an operator combines the watermarks of
//! its inputs.
//!
//! # Watermarks are aligned with epochs
//!
//! Every stream in an Eddy dataflow is a pair of timely streams: the records (each with its
//! timestamp, [`Stamped`]) and a thin stream of [`WatermarkMessage`]s, both on the same
//! epochs. A watermark message sent at epoch `e` means "every record this subtask sends after
//! the records of epoch `e` has a timestamp above the watermark". An operator applies it only
//! once its record input has *passed* epoch `e` (timely's progress tracking says so), i.e.
//! after it has processed every record of epoch `e` and before any of a later epoch. That is
//! Flink's in-band watermark, with the order guaranteed by the dataflow's progress tracking
//! rather than by the order of messages in a channel, which timely does not promise across
//! batches. The cost is granularity: a watermark takes effect at the next epoch boundary
//! ([`JobConfig::epoch_interval`](crate::JobConfig::epoch_interval), 10 ms by default; Flink's
//! periodic watermark interval is 200 ms).
//!
//! An operator with several input channels (the subtasks of a `key_by` input, the two inputs
//! of a connected stream) takes the **minimum over its active inputs** ([`InputWatermarks`]),
//! never moves backwards, ignores idle inputs, and reports itself idle when every input is.
//! When all its inputs have ended, its watermark is [`MAX_WATERMARK`], which fires every
//! pending event-time timer, as Flink does at the end of a bounded input.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use eddy_state::{SystemClock, TtlClock};
use serde::{Deserialize, Serialize};

use crate::Epoch;

/// The watermark before any was received: nothing is known about event time yet.
pub const MIN_WATERMARK: u64 = 0;
/// The watermark of an input that has ended: every event-time timer is due.
pub const MAX_WATERMARK: u64 = u64::MAX;
/// The timestamp of a record that has none (no timestamp assigner upstream).
pub(crate) const NO_TIMESTAMP: u64 = u64::MAX;

/// A record with its event timestamp (milliseconds), as it travels between operators.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamped<T> {
    /// The record.
    pub value: T,
    /// Its event time, or `u64::MAX` if it has none.
    pub timestamp: u64,
}

impl<T> Stamped<T> {
    /// A record with no timestamp.
    #[inline]
    pub fn unstamped(value: T) -> Self {
        Stamped {
            value,
            timestamp: NO_TIMESTAMP,
        }
    }

    /// The record's timestamp, if it has one.
    #[inline]
    pub fn timestamp(&self) -> Option<u64> {
        (self.timestamp != NO_TIMESTAMP).then_some(self.timestamp)
    }
}

/// What one upstream subtask says about event time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WatermarkStatus {
    /// No record with a timestamp at or below this will follow.
    At(u64),
    /// The subtask has no data for now: it must not hold back the others.
    Idle,
}

/// A watermark (or idleness) sent by subtask `from` of the upstream operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatermarkMessage {
    /// The sending subtask (for an operator with two inputs, offset by the first input's
    /// parallelism on the second).
    pub from: usize,
    /// What it says.
    pub status: WatermarkStatus,
}

/// The watermarks of all input channels of one operator subtask, combined into its own.
///
/// Messages are staged under their epoch and applied in epoch order once the operator's
/// inputs have passed that epoch ([`advance`](Self::advance)).
#[derive(Debug)]
pub struct InputWatermarks {
    channels: Vec<Channel>,
    pending: BTreeMap<Epoch, Vec<WatermarkMessage>>,
    current: u64,
    idle: bool,
}

#[derive(Clone, Copy, Debug)]
struct Channel {
    watermark: u64,
    idle: bool,
}

/// A change of an operator's combined watermark, at the epoch whose end caused it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatermarkAdvance {
    /// The epoch after whose records the change takes effect.
    pub epoch: Epoch,
    /// The new combined status.
    pub status: WatermarkStatus,
}

impl InputWatermarks {
    /// The watermarks of `channels` input channels, all at [`MIN_WATERMARK`] and active.
    pub fn new(channels: usize) -> Self {
        InputWatermarks {
            channels: vec![
                Channel {
                    watermark: MIN_WATERMARK,
                    idle: false,
                };
                channels
            ],
            pending: BTreeMap::new(),
            current: MIN_WATERMARK,
            idle: false,
        }
    }

    /// The combined watermark so far.
    pub fn current(&self) -> u64 {
        self.current
    }

    /// Whether every input is idle.
    pub fn is_idle(&self) -> bool {
        self.idle
    }

    /// Keeps `message`, received at `epoch`, until the inputs have passed that epoch.
    pub fn stage(&mut self, epoch: Epoch, message: WatermarkMessage) {
        self.pending.entry(epoch).or_default().push(message);
    }

    /// Applies the staged messages of every epoch before `frontier` (the earliest epoch the
    /// inputs may still deliver; `None` when they have ended), in epoch order, and returns the
    /// changes of the combined status. When the inputs have ended the watermark becomes
    /// [`MAX_WATERMARK`].
    pub fn advance(&mut self, frontier: Option<Epoch>) -> Vec<WatermarkAdvance> {
        let mut changes = Vec::new();
        while let Some(entry) = self.pending.first_entry() {
            if frontier.is_some_and(|f| *entry.key() >= f) {
                break;
            }
            let epoch = *entry.key();
            for message in entry.remove() {
                self.apply(message);
            }
            if let Some(status) = self.recombine() {
                changes.push(WatermarkAdvance { epoch, status });
            }
        }
        if frontier.is_none() && self.current != MAX_WATERMARK {
            self.current = MAX_WATERMARK;
            self.idle = false;
            changes.push(WatermarkAdvance {
                epoch: changes.last().map_or(0, |c| c.epoch),
                status: WatermarkStatus::At(MAX_WATERMARK),
            });
        }
        changes
    }

    fn apply(&mut self, message: WatermarkMessage) {
        // A message from an unknown channel would be a wiring bug; ignoring it can only hold
        // the watermark back, never move it past data.
        let Some(channel) = self.channels.get_mut(message.from) else {
            return;
        };
        match message.status {
            WatermarkStatus::At(watermark) => {
                channel.idle = false;
                channel.watermark = channel.watermark.max(watermark);
            }
            WatermarkStatus::Idle => channel.idle = true,
        }
    }

    /// Recomputes the combined status; returns it if it changed.
    fn recombine(&mut self) -> Option<WatermarkStatus> {
        let active_min = self
            .channels
            .iter()
            .filter(|c| !c.idle)
            .map(|c| c.watermark)
            .min();
        match active_min {
            None if !self.channels.is_empty() => {
                if self.idle {
                    return None;
                }
                self.idle = true;
                Some(WatermarkStatus::Idle)
            }
            None => None,
            Some(min) => {
                let was_idle = std::mem::replace(&mut self.idle, false);
                // Never backwards: a channel that rejoins behind the others waits to catch up.
                if min > self.current {
                    self.current = min;
                    Some(WatermarkStatus::At(min))
                } else if was_idle {
                    Some(WatermarkStatus::At(self.current))
                } else {
                    None
                }
            }
        }
    }
}

/// An operator's current watermark as a clock: the time of its event-time TTL states.
#[derive(Clone, Debug, Default)]
pub(crate) struct WatermarkClock(Arc<AtomicU64>);

impl WatermarkClock {
    /// Moves the clock to `watermark`.
    pub(crate) fn set(&self, watermark: u64) {
        self.0.store(watermark, Ordering::Relaxed);
    }
}

impl TtlClock for WatermarkClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Where processing time comes from: the wall clock by default, a manual clock in tests.
///
/// Processing-time timers, state TTL and source idleness all read it, so a test that
/// advances a [`ManualClock`](eddy_state::ManualClock) controls all three without sleeping.
#[derive(Clone)]
pub struct ProcessingClock(pub Arc<dyn TtlClock>);

impl ProcessingClock {
    /// The current processing time in milliseconds.
    #[inline]
    pub fn now_ms(&self) -> u64 {
        self.0.now_ms()
    }
}

impl Default for ProcessingClock {
    fn default() -> Self {
        ProcessingClock(Arc::new(SystemClock::new()))
    }
}

impl fmt::Debug for ProcessingClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ProcessingClock")
            .field(&self.now_ms())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(from: usize, watermark: u64) -> WatermarkMessage {
        WatermarkMessage {
            from,
            status: WatermarkStatus::At(watermark),
        }
    }

    #[test]
    fn combined_watermark_is_the_minimum_over_three_inputs() {
        let mut w = InputWatermarks::new(3);
        w.stage(0, at(0, 10));
        w.stage(0, at(1, 5));
        assert!(
            w.advance(Some(1)).is_empty(),
            "input 2 still at the minimum"
        );
        w.stage(1, at(2, 7));
        assert_eq!(
            w.advance(Some(2)),
            vec![WatermarkAdvance {
                epoch: 1,
                status: WatermarkStatus::At(5)
            }]
        );
        w.stage(2, at(1, 20));
        w.stage(2, at(2, 30));
        w.advance(Some(3));
        assert_eq!(w.current(), 10);
    }

    #[test]
    fn messages_wait_until_the_inputs_pass_their_epoch() {
        let mut w = InputWatermarks::new(1);
        w.stage(4, at(0, 100));
        assert!(w.advance(Some(4)).is_empty());
        assert_eq!(w.current(), MIN_WATERMARK);
        assert_eq!(w.advance(Some(5)).len(), 1);
        assert_eq!(w.current(), 100);
    }

    #[test]
    fn watermarks_never_go_backwards() {
        let mut w = InputWatermarks::new(2);
        w.stage(0, at(0, 50));
        w.stage(0, at(1, 50));
        w.advance(Some(1));
        w.stage(1, at(0, 40));
        assert!(w.advance(Some(2)).is_empty());
        assert_eq!(w.current(), 50);
    }

    #[test]
    fn an_idle_input_does_not_hold_back_the_others_and_rejoins() {
        let mut w = InputWatermarks::new(2);
        w.stage(0, at(0, 100));
        w.stage(
            0,
            WatermarkMessage {
                from: 1,
                status: WatermarkStatus::Idle,
            },
        );
        w.advance(Some(1));
        assert_eq!(w.current(), 100, "the idle input is ignored");
        w.stage(1, at(1, 80));
        w.stage(1, at(0, 200));
        w.advance(Some(2));
        assert_eq!(
            w.current(),
            100,
            "rejoined behind: no step back, held at 100"
        );
        w.stage(2, at(1, 150));
        w.advance(Some(3));
        assert_eq!(w.current(), 150);
    }

    #[test]
    fn all_inputs_idle_makes_the_operator_idle() {
        let mut w = InputWatermarks::new(1);
        w.stage(
            0,
            WatermarkMessage {
                from: 0,
                status: WatermarkStatus::Idle,
            },
        );
        assert_eq!(w.advance(Some(1))[0].status, WatermarkStatus::Idle);
        assert!(w.is_idle());
    }

    #[test]
    fn ended_inputs_give_the_max_watermark() {
        let mut w = InputWatermarks::new(2);
        w.stage(0, at(0, 7));
        let changes = w.advance(None);
        assert_eq!(
            changes.last().map(|c| c.status),
            Some(WatermarkStatus::At(MAX_WATERMARK))
        );
        assert!(w.advance(None).is_empty(), "only once");
    }
}
