//! Checkpoints in dataflow form: epochs are the barriers, the frontier is the alignment.
//!
//! With `checkpoint_interval = k * epoch_interval`, checkpoint `c` (ids start at 1) covers every
//! record of epochs `0..=c * k - 1` ([`Barriers`]). Every operator can compute that alone, so
//! no barrier message is ever sent:
//!
//! * a source snapshots its position for `c` when its capability moves past the last epoch of
//!   `c`, before it reads anything for a later epoch;
//! * a keyed operator processes the records of epochs up to the last epoch of its next
//!   checkpoint as they arrive, holds back later ones, and snapshots once its input frontier
//!   has passed that epoch (Flink's aligned barrier);
//! * a sink pre-commits what it wrote for `c` at the same point, and the [`Coordinator`]
//!   publishes it once `c` is complete (two-phase commit).
//!
//! Each subtask hands its part to the job's [`Coordinator`], which writes it on a background
//! thread; a checkpoint is complete once every part is durable and the metadata is written
//! last. See `docs/checkpoints.md` for the formats.

mod cluster;
mod coordinator;
mod restore;

use std::time::Duration;

pub use coordinator::{
    decode_committables, encode_committables, request_savepoint, request_stop_with_savepoint,
    CheckpointStats, Committer, Coordinator, CoordinatorSettings, Part, PartKind, Participant,
};
pub use restore::{OperatorRestore, RestoredCheckpoint};

use crate::Epoch;

/// The id of the final checkpoint a bounded job takes when all its inputs have ended; the
/// coordinator numbers it after the last periodic checkpoint.
pub const FINAL_CHECKPOINT: u64 = u64::MAX;

/// How a job restarts after a failure inside the process (Flink's restart strategies).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestartStrategy {
    /// A failure fails the job (the default without checkpoints).
    None,
    /// Restart from the latest completed checkpoint up to `attempts` times, waiting `delay`
    /// before each restart (Flink's `fixed-delay`).
    FixedDelay {
        /// Restarts allowed before the job fails for good.
        attempts: u32,
        /// Wait before each restart.
        delay: Duration,
    },
}

/// Checkpointing and recovery settings of a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointConfig {
    /// How often to checkpoint; `None` disables checkpoints. Rounded up to whole epochs.
    pub interval: Option<Duration>,
    /// Where checkpoints go: a local path, `file:///...`, or an object store URL
    /// (`s3://bucket/prefix`, `gs://...`, `az://...`). Required when `interval` is set.
    pub location: Option<String>,
    /// How many completed checkpoints to keep (the newest ones).
    pub retained: usize,
    /// Restore from this checkpoint or savepoint before starting: `latest` (the newest
    /// completed checkpoint under `location`), a checkpoint id, or a checkpoint or savepoint
    /// directory.
    pub restore: Option<String>,
    /// Start even if the restored checkpoint holds state of operators the job no longer has
    /// (Flink's `--allowNonRestoredState`); by default that is an error listing them.
    pub allow_non_restored_state: bool,
    /// What to do when the job fails.
    pub restart: RestartStrategy,
    /// Also write the final checkpoint of a bounded job as the savepoint `savepoint-<name>`.
    pub savepoint_on_finish: Option<String>,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            interval: None,
            location: None,
            retained: 1,
            restore: None,
            allow_non_restored_state: false,
            restart: RestartStrategy::None,
            savepoint_on_finish: None,
        }
    }
}

/// Which epochs end a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Barriers {
    /// Epochs per checkpoint (`k`); `None` when the job does not checkpoint.
    epochs_per_checkpoint: Option<u64>,
}

impl Barriers {
    /// The barriers of a job with `config` and epochs of `epoch_interval`.
    pub fn new(config: &CheckpointConfig, epoch_interval: Duration) -> Self {
        let epochs_per_checkpoint = config.interval.map(|interval| {
            let epoch = epoch_interval.as_nanos().max(1);
            interval.as_nanos().div_ceil(epoch).max(1) as u64
        });
        Barriers {
            epochs_per_checkpoint,
        }
    }

    /// No checkpoints.
    pub fn disabled() -> Self {
        Barriers {
            epochs_per_checkpoint: None,
        }
    }

    /// Whether the job checkpoints at all.
    pub fn enabled(&self) -> bool {
        self.epochs_per_checkpoint.is_some()
    }

    /// The last epoch checkpoint `id` covers.
    pub fn last_epoch(&self, id: u64) -> Option<Epoch> {
        self.epochs_per_checkpoint
            .map(|k| id.saturating_mul(k).saturating_sub(1))
    }

    /// The first checkpoint that covers `epoch` (the one whose barrier follows it).
    pub fn checkpoint_covering(&self, epoch: Epoch) -> Option<u64> {
        self.epochs_per_checkpoint.map(|k| epoch / k + 1)
    }
}

/// Per-subtask bookkeeping of which checkpoint comes next.
#[derive(Clone, Copy, Debug)]
pub struct BarrierTracker {
    barriers: Barriers,
    /// The next checkpoint this subtask has not taken yet.
    next: u64,
}

impl BarrierTracker {
    /// A tracker starting at the first checkpoint.
    pub fn new(barriers: Barriers) -> Self {
        BarrierTracker { barriers, next: 1 }
    }

    /// The last epoch that may be applied before the next snapshot; `None`: no limit.
    pub fn hold_after(&self) -> Option<Epoch> {
        self.barriers.last_epoch(self.next)
    }

    /// The checkpoints a frontier at `frontier` (every epoch before it complete) has passed
    /// since the last call, oldest first; the tracker moves past them.
    pub fn passed(&mut self, frontier: Epoch) -> std::ops::Range<u64> {
        let first = self.next;
        while self
            .barriers
            .last_epoch(self.next)
            .is_some_and(|last| last < frontier)
        {
            self.next += 1;
        }
        first..self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn barriers(interval_ms: u64, epoch_ms: u64) -> Barriers {
        let config = CheckpointConfig {
            interval: Some(Duration::from_millis(interval_ms)),
            ..CheckpointConfig::default()
        };
        Barriers::new(&config, Duration::from_millis(epoch_ms))
    }

    #[test]
    fn checkpoint_c_covers_epochs_up_to_c_times_k_minus_one() {
        let b = barriers(200, 10);
        assert_eq!(b.last_epoch(1), Some(19));
        assert_eq!(b.last_epoch(3), Some(59));
        assert_eq!(b.checkpoint_covering(0), Some(1));
        assert_eq!(b.checkpoint_covering(19), Some(1));
        assert_eq!(b.checkpoint_covering(20), Some(2));
        // An interval that is not a multiple of the epoch rounds up.
        assert_eq!(barriers(25, 10).last_epoch(1), Some(2));
        assert!(!Barriers::disabled().enabled());
        assert_eq!(Barriers::disabled().last_epoch(1), None);
    }

    #[test]
    fn tracker_reports_each_passed_checkpoint_once() {
        let mut t = BarrierTracker::new(barriers(20, 10));
        assert_eq!(t.hold_after(), Some(1));
        assert_eq!(t.passed(1), 1..1);
        assert_eq!(t.passed(2), 1..2);
        assert_eq!(t.passed(2), 2..2);
        // A frontier that jumps passes several at once.
        assert_eq!(t.passed(9), 2..5);
        assert_eq!(t.hold_after(), Some(9));
        let mut none = BarrierTracker::new(Barriers::disabled());
        assert_eq!(none.passed(1000), 1..1);
        assert_eq!(none.hold_after(), None);
    }
}
