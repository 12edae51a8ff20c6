//! State time-to-live (TTL): Flink's `StateTtlConfig`, and the clocks TTL is measured with.
//!
//! A state whose descriptor has TTL enabled ([`ValueStateDescriptor::enable_ttl`] and the
//! same method on every descriptor) stores each value with the time it was last written (or
//! read, see [`UpdateType`]); once `ttl` has passed since then, the value has *expired*. The
//! semantics are Flink's (`StateTtlConfig`):
//!
//! * **Granularity.** Value, reducing and aggregating state expire per key; a list expires
//!   per element (each element keeps its own timestamp) and a map per entry.
//! * **Update type** ([`UpdateType`]): when the timestamp is refreshed: on create and write
//!   (the default), or also on read.
//! * **Visibility** ([`StateVisibility`]): whether an expired value that is still stored is
//!   returned. Either way a read that finds an expired value removes it from the state
//!   ("cleanup on read", always on, as in Flink).
//! * **Background cleanup** of values that are never read again: incremental cleanup
//!   ([`StateTtlConfig::cleanup_incrementally`]) checks a few more entries of the state's
//!   table on every access. Unlike Flink (which enables it by default since 1.10) it is
//!   opt-in: on a table far larger than the CPU caches every entry checked is a memory access,
//!   which a state that does not need it should not pay for.
//! * **Time.** Processing time, read from a [`TtlClock`]: [`SystemClock`] in production,
//!   [`ManualClock`] in tests (tests never sleep). Event-time TTL
//!   ([`StateTtlConfig::event_time`]) goes beyond Flink: it measures age against the
//!   operator's current watermark, which the runtime passes as the backend's event-time clock
//!   ([`KeyedStateBackend::set_event_time_clock`](crate::KeyedStateBackend::set_event_time_clock)).
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use eddy_core::KeyGroupRange;
//! use eddy_state::{
//!     KeyedStateBackend, ManualClock, StateTtlConfig, UpdateType, ValueStateDescriptor,
//! };
//!
//! let clock = ManualClock::new(0);
//! let mut backend = KeyedStateBackend::<u64>::heap(KeyGroupRange::new(0, 127), 128);
//! backend.set_ttl_clock(Arc::new(clock.clone()));
//! let ttl = StateTtlConfig::new(Duration::from_secs(60))
//!     .update_type(UpdateType::OnReadAndWrite);
//! let desc = ValueStateDescriptor::<u64>::new("last-seen").enable_ttl(ttl);
//! let last_seen = backend.value_state(&desc)?;
//!
//! backend.set_current_key(7)?;
//! last_seen.update(1)?;
//! clock.advance(Duration::from_secs(59));
//! assert_eq!(last_seen.value()?, Some(1)); // read: the 60 s start again
//! clock.advance(Duration::from_secs(59));
//! assert_eq!(last_seen.value()?, Some(1));
//! clock.advance(Duration::from_secs(60));
//! assert_eq!(last_seen.value()?, None); // expired, and removed
//! # Ok::<(), eddy_core::EddyError>(())
//! ```
//!
//! [`ValueStateDescriptor::enable_ttl`]: crate::ValueStateDescriptor::enable_ttl
//! [`EddyError::Config`]: eddy_core::EddyError::Config

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eddy_core::{EddyError, Result};

/// When the timestamp of a state value is refreshed (Flink's `StateTtlConfig.UpdateType`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum UpdateType {
    /// On creation and on every write (`update`, `add`, `put`); reads do not refresh it.
    #[default]
    OnCreateAndWrite,
    /// Also on every read that returns the value (`value`, `get`, iteration, `contains`).
    OnReadAndWrite,
}

/// Whether an expired value that is still stored is returned (Flink's
/// `StateTtlConfig.StateVisibility`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum StateVisibility {
    /// An expired value reads as absent.
    #[default]
    NeverReturnExpired,
    /// An expired value that no cleanup has removed yet is returned, once: the read that
    /// returns it also removes it (as Flink does).
    ReturnExpiredIfNotCleanedUp,
}

/// What time TTL is measured in (Flink's `StateTtlConfig.TtlTimeCharacteristic`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TtlTimeDomain {
    /// The backend's [`TtlClock`] (wall-clock milliseconds by default).
    #[default]
    ProcessingTime,
    /// The current watermark (beyond Flink). Not available yet: registering a state with
    /// event-time TTL returns [`EddyError::Config`] until watermarks exist.
    EventTime,
}

/// The time-to-live configuration of a state (Flink's `StateTtlConfig`).
///
/// Built like Flink's builder, then passed to a descriptor's `enable_ttl`:
///
/// ```
/// use std::time::Duration;
/// use eddy_state::{ListStateDescriptor, StateTtlConfig, StateVisibility, UpdateType};
///
/// let ttl = StateTtlConfig::new(Duration::from_secs(3600))
///     .update_type(UpdateType::OnReadAndWrite)
///     .state_visibility(StateVisibility::ReturnExpiredIfNotCleanedUp)
///     .cleanup_incrementally(10);
/// let events = ListStateDescriptor::<u64>::new("events").enable_ttl(ttl);
/// assert_eq!(events.ttl().map(|t| t.ttl()), Some(Duration::from_secs(3600)));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StateTtlConfig {
    ttl: Duration,
    update_type: UpdateType,
    visibility: StateVisibility,
    time_domain: TtlTimeDomain,
    incremental_cleanup: Option<usize>,
    cleanup_full_snapshot: bool,
    cleanup_in_rocksdb_compaction_filter: bool,
}

impl StateTtlConfig {
    /// Values expire `ttl` after their last refresh (Flink's `newBuilder(ttl)`). Defaults:
    /// [`UpdateType::OnCreateAndWrite`], [`StateVisibility::NeverReturnExpired`], processing
    /// time, cleanup on read only.
    ///
    /// TTL has millisecond resolution; a `ttl` under 1 ms is rejected when the state is
    /// registered.
    pub fn new(ttl: Duration) -> Self {
        StateTtlConfig {
            ttl,
            update_type: UpdateType::default(),
            visibility: StateVisibility::default(),
            time_domain: TtlTimeDomain::default(),
            incremental_cleanup: None,
            cleanup_full_snapshot: false,
            cleanup_in_rocksdb_compaction_filter: false,
        }
    }

    /// Sets when timestamps are refreshed (Flink's `setUpdateType`).
    pub fn update_type(mut self, update_type: UpdateType) -> Self {
        self.update_type = update_type;
        self
    }

    /// Sets whether expired values still stored are returned (Flink's `setStateVisibility`).
    pub fn state_visibility(mut self, visibility: StateVisibility) -> Self {
        self.visibility = visibility;
        self
    }

    /// Measures TTL against the watermark instead of the processing-time clock (beyond
    /// Flink, whose TTL is processing time only).
    ///
    /// A value's age is the watermark now minus the watermark when it was written: state of
    /// a key whose events stopped expires once event time has moved on by the TTL, however
    /// fast or slow the job replays it. In an operator without watermarks event time stays at
    /// 0 and nothing expires.
    pub fn event_time(mut self) -> Self {
        self.time_domain = TtlTimeDomain::EventTime;
        self
    }

    /// On every access to the state (read or write, any key), also checks about
    /// `entries_per_access` more keys of the state's table and removes what has expired
    /// (Flink's `cleanupIncrementally`). Without it, a value that is never read again stays
    /// stored.
    ///
    /// The heap backend walks its tables one key group at a time: it saves up
    /// `entries_per_access` checks per access and cleans a whole key group once the savings
    /// cover its size, so the cost per access is as configured on average, in bursts of one
    /// key group. `0` is rejected when the state is registered. The RocksDB backend ignores it
    /// (as Flink's does): its compaction filter does that work.
    pub fn cleanup_incrementally(mut self, entries_per_access: usize) -> Self {
        self.incremental_cleanup = Some(entries_per_access);
        self
    }

    /// Leaves expired values out of full snapshots (Flink's `cleanupFullSnapshot`):
    /// [`KeyedStateBackend::snapshot`](crate::KeyedStateBackend::snapshot) skips every value,
    /// list element and map entry that has expired at the time of the snapshot (by the
    /// state's clock), so a restored job does not carry them. Local state is not affected
    /// (as in Flink); without the flag, expired values are snapshotted with their
    /// timestamps and expire after a restore as they would have.
    pub fn cleanup_full_snapshot(mut self) -> Self {
        self.cleanup_full_snapshot = true;
        self
    }

    /// Drops expired values during RocksDB compactions (Flink's
    /// `cleanupInRocksdbCompactFilter`).
    ///
    /// The RocksDB backend installs its compaction filter on every TTL state whether or not
    /// this is set (Flink's default since 1.14); the flag is recorded for the savepoint
    /// format. The heap backend ignores it.
    pub fn cleanup_in_rocksdb_compaction_filter(mut self) -> Self {
        self.cleanup_in_rocksdb_compaction_filter = true;
        self
    }

    /// The time to live.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// When timestamps are refreshed (Flink's `getUpdateType`).
    pub fn get_update_type(&self) -> UpdateType {
        self.update_type
    }

    /// Whether expired values are returned (Flink's `getStateVisibility`).
    pub fn get_state_visibility(&self) -> StateVisibility {
        self.visibility
    }

    /// What time TTL is measured in (Flink's `getTtlTimeCharacteristic`).
    pub fn time_domain(&self) -> TtlTimeDomain {
        self.time_domain
    }

    /// Keys checked per access by incremental cleanup, if it is enabled.
    pub fn incremental_cleanup(&self) -> Option<usize> {
        self.incremental_cleanup
    }

    /// Whether full snapshots are to leave expired values out.
    pub fn is_cleanup_in_full_snapshot(&self) -> bool {
        self.cleanup_full_snapshot
    }

    /// Whether RocksDB compactions are to drop expired values.
    pub fn is_cleanup_in_rocksdb_compaction_filter(&self) -> bool {
        self.cleanup_in_rocksdb_compaction_filter
    }

    /// The TTL in whole milliseconds, after checking that the configuration can be used by a
    /// backend today; `state` names the state in the error.
    pub(crate) fn validate(&self, state: &str) -> Result<u64> {
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        if ttl_ms == 0 {
            return Err(EddyError::Config(format!(
                "state \"{state}\": the TTL must be at least 1 ms, got {:?}",
                self.ttl
            )));
        }
        if self.incremental_cleanup == Some(0) {
            return Err(EddyError::Config(format!(
                "state \"{state}\": incremental cleanup must check at least 1 entry per access"
            )));
        }
        Ok(ttl_ms)
    }
}

/// A value stored with the time of its last refresh: what a TTL state's table holds per key
/// (value, reducing and aggregating state), per list element, or per map entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TtlValue<T> {
    /// The user's value.
    pub value: T,
    /// When it was last written (or read, with [`UpdateType::OnReadAndWrite`]), in the
    /// clock's milliseconds.
    pub last_access_ms: u64,
}

impl<T> TtlValue<T> {
    /// `value`, refreshed at `now_ms`.
    #[inline]
    pub fn new(value: T, now_ms: u64) -> Self {
        TtlValue {
            value,
            last_access_ms: now_ms,
        }
    }

    /// Whether the value has expired at `now_ms` with a TTL of `ttl_ms` (Flink's rule: it
    /// expires at `last access + ttl`, that millisecond included).
    #[inline]
    pub fn is_expired(&self, ttl_ms: u64, now_ms: u64) -> bool {
        self.last_access_ms.saturating_add(ttl_ms) <= now_ms
    }
}

/// Where TTL states read the current time, in milliseconds.
///
/// Shared by every TTL state of a backend (see
/// [`KeyedStateBackend::set_ttl_clock`](crate::KeyedStateBackend::set_ttl_clock)). It is read
/// on every access to a TTL state, so it must be cheap.
pub trait TtlClock: Send + Sync {
    /// The current time in milliseconds. Any origin will do, as long as it is the same for
    /// every value of the state.
    fn now_ms(&self) -> u64;
}

/// The wall clock, in milliseconds since the Unix epoch: the default [`TtlClock`].
///
/// Asking the operating system for the time costs 40–50 ns on the benchmark VM, about half of
/// a whole W1 event, and a TTL state reads the clock on every access. So this clock reads a
/// process-wide copy of the wall clock that a background thread (`eddy-ttl-clock`) refreshes
/// every millisecond: a read is one atomic load, and is at most about a millisecond (plus any
/// scheduling delay of that thread) behind the OS clock. The thread starts with the first
/// `SystemClock` and stops within a millisecond after the last one is dropped; if it cannot
/// be started, every read asks the OS.
#[derive(Clone)]
pub struct SystemClock {
    source: WallClockSource,
}

#[derive(Clone)]
enum WallClockSource {
    /// The shared copy kept fresh by the ticker thread.
    Ticker(Arc<AtomicU64>),
    /// No ticker thread could be started: ask the OS on every read.
    Direct,
}

/// The ticker's copy of the wall clock, while any [`SystemClock`] holds it.
static TICKER: Mutex<Weak<AtomicU64>> = Mutex::new(Weak::new());

/// How often the ticker thread refreshes its copy of the wall clock.
const TICK: Duration = Duration::from_millis(1);

impl SystemClock {
    /// The wall clock, starting the shared ticker thread if none is running.
    pub fn new() -> Self {
        // A poisoned lock only means another thread panicked while holding it; the `Weak`
        // inside is still valid.
        let mut shared = TICKER.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(now) = shared.upgrade() {
            return SystemClock {
                source: WallClockSource::Ticker(now),
            };
        }
        let now = Arc::new(AtomicU64::new(wall_clock_ms()));
        let weak = Arc::downgrade(&now);
        let spawned = std::thread::Builder::new()
            .name("eddy-ttl-clock".into())
            .spawn(move || tick(&weak));
        match spawned {
            Ok(_) => {
                *shared = Arc::downgrade(&now);
                SystemClock {
                    source: WallClockSource::Ticker(now),
                }
            }
            Err(_) => SystemClock {
                source: WallClockSource::Direct,
            },
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl fmt::Debug for SystemClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SystemClock")
            .field("now_ms", &self.now_ms())
            .finish()
    }
}

impl TtlClock for SystemClock {
    #[inline]
    fn now_ms(&self) -> u64 {
        match &self.source {
            WallClockSource::Ticker(now) => now.load(Ordering::Relaxed),
            WallClockSource::Direct => wall_clock_ms(),
        }
    }
}

/// The ticker thread: refreshes `now` until no [`SystemClock`] holds it any more.
fn tick(now: &Weak<AtomicU64>) {
    loop {
        std::thread::sleep(TICK);
        match now.upgrade() {
            Some(now) => now.store(wall_clock_ms(), Ordering::Relaxed),
            None => return,
        }
    }
}

/// Milliseconds since the Unix epoch (0 for a clock set before it).
fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A clock that moves only when told to: for tests, which must never sleep.
///
/// Clones share the same time, so a test keeps one clone and gives another to the backend.
///
/// ```
/// use std::time::Duration;
/// use eddy_state::{ManualClock, TtlClock};
///
/// let clock = ManualClock::new(1_000);
/// let backend_side = clock.clone();
/// clock.advance(Duration::from_secs(2));
/// assert_eq!(backend_side.now_ms(), 3_000);
/// clock.set(10);
/// assert_eq!(backend_side.now_ms(), 10);
/// ```
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    now_ms: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock reading `now_ms` until moved.
    pub fn new(now_ms: u64) -> Self {
        ManualClock {
            now_ms: Arc::new(AtomicU64::new(now_ms)),
        }
    }

    /// Moves the clock forward by `by` (whole milliseconds; saturates at `u64::MAX`).
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        // `fetch_update` cannot fail here: the closure always returns `Some`.
        let _ = self
            .now_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| {
                Some(now.saturating_add(by))
            });
    }

    /// Sets the clock to `now_ms` (it may move backwards).
    pub fn set(&self, now_ms: u64) {
        self.now_ms.store(now_ms, Ordering::Relaxed);
    }
}

impl TtlClock for ManualClock {
    #[inline]
    fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_accepts_event_time_and_rejects_zero_ttl_and_zero_cleanup() {
        let ok = StateTtlConfig::new(Duration::from_millis(1));
        assert_eq!(ok.validate("s").ok(), Some(1));
        assert_eq!(ok.clone().event_time().validate("s").ok(), Some(1));
        assert!(StateTtlConfig::new(Duration::from_micros(999))
            .validate("s")
            .is_err());
        assert!(ok.clone().cleanup_incrementally(0).validate("s").is_err());
        assert_eq!(
            StateTtlConfig::new(Duration::MAX).validate("s").ok(),
            Some(u64::MAX)
        );
    }

    #[test]
    fn expiry_includes_the_last_millisecond_and_never_overflows() {
        let v = TtlValue::new((), 100);
        assert!(!v.is_expired(10, 109));
        assert!(v.is_expired(10, 110));
        assert!(!TtlValue::new((), u64::MAX - 1).is_expired(u64::MAX, u64::MAX - 1));
    }

    #[test]
    fn system_clock_is_close_to_the_wall_clock_and_clones_share_the_ticker() {
        let a = SystemClock::new();
        let b = SystemClock::default();
        let wall = wall_clock_ms();
        // The ticker lags by at most a tick plus scheduling delays; a generous bound keeps
        // this test robust on a loaded machine without sleeping.
        assert!(a.now_ms().abs_diff(wall) < 60_000);
        assert!(b.now_ms().abs_diff(wall) < 60_000);
        assert!(format!("{a:?}").starts_with("SystemClock"));
    }

    #[test]
    fn manual_clock_saturates() {
        let c = ManualClock::new(u64::MAX - 1);
        c.advance(Duration::from_secs(1));
        assert_eq!(c.now_ms(), u64::MAX);
        assert_eq!(ManualClock::default().now_ms(), 0);
    }
}
