//! TTL on RocksDB: the rules a TTL handle applies, the clock it shares with the compaction
//! filter, and the compaction filter itself.

use std::ffi::CStr;
use std::sync::{Arc, Mutex, PoisonError};

use eddy_core::{EddyError, Result};
use rocksdb::compaction_filter::{CompactionFilter, Decision};
use rocksdb::compaction_filter_factory::{CompactionFilterContext, CompactionFilterFactory};

use super::codec::{ttl_timestamp, Elements};
use crate::ttl::{StateTtlConfig, StateVisibility, TtlClock, UpdateType};

/// The backend's TTL clock, shared with every TTL handle and with the compaction filters
/// (which run on RocksDB's background threads), so that a clock set after a state was
/// registered reaches both.
pub(crate) type SharedClock = Arc<Mutex<Arc<dyn TtlClock>>>;

/// Reads the shared clock.
#[inline]
pub(crate) fn now_ms(clock: &SharedClock) -> u64 {
    // A poisoned lock only means a thread panicked while replacing the clock; the clock
    // inside is still a valid one.
    clock
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .now_ms()
}

/// What a TTL state's handle needs to apply Flink's TTL rules.
#[derive(Clone)]
pub(crate) struct TtlRules {
    pub(crate) ttl_ms: u64,
    /// [`UpdateType::OnReadAndWrite`].
    pub(crate) update_on_read: bool,
    /// [`StateVisibility::ReturnExpiredIfNotCleanedUp`].
    pub(crate) return_expired: bool,
    pub(crate) clock: SharedClock,
}

impl TtlRules {
    /// The rules of `config` (validated; errors name `state`).
    pub(crate) fn new(state: &str, config: &StateTtlConfig, clock: SharedClock) -> Result<Self> {
        Ok(TtlRules {
            ttl_ms: config.validate(state)?,
            update_on_read: config.get_update_type() == UpdateType::OnReadAndWrite,
            return_expired: config.get_state_visibility()
                == StateVisibility::ReturnExpiredIfNotCleanedUp,
            clock,
        })
    }

    /// The current time.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        now_ms(&self.clock)
    }

    /// Whether a value last accessed at `last_access_ms` has expired at `now` (Flink's rule,
    /// as [`TtlValue::is_expired`](crate::TtlValue::is_expired)).
    #[inline]
    pub(crate) fn expired(&self, last_access_ms: u64, now: u64) -> bool {
        last_access_ms.saturating_add(self.ttl_ms) <= now
    }

    /// The TTL header of a stored value, or an error naming the state.
    #[inline]
    pub(crate) fn header(&self, name: &str, kg: eddy_core::KeyGroup, value: &[u8]) -> Result<u64> {
        ttl_timestamp(value).ok_or_else(|| {
            EddyError::state(
                name,
                format!(
                    "key group {kg}: a stored value of {} bytes is too short for its TTL header",
                    value.len()
                ),
            )
        })
    }
}

/// How the compaction filter finds the timestamps in a column family's values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TtlLayout {
    /// One TTL header at the start of every value (value, reducing, aggregating, map state).
    Single,
    /// A list chunk: length-prefixed elements, each starting with its TTL header.
    List,
}

/// Creates one [`TtlFilter`] per compaction, reading the clock once per compaction.
pub(crate) struct TtlFilterFactory {
    pub(crate) ttl_ms: u64,
    pub(crate) layout: TtlLayout,
    pub(crate) clock: SharedClock,
}

impl CompactionFilterFactory for TtlFilterFactory {
    type Filter = TtlFilter;

    fn create(&mut self, _context: CompactionFilterContext) -> TtlFilter {
        TtlFilter {
            ttl_ms: self.ttl_ms,
            layout: self.layout,
            now: now_ms(&self.clock),
        }
    }

    fn name(&self) -> &CStr {
        c"eddy-ttl-filter-factory"
    }
}

/// Drops expired values during a compaction (Flink's `cleanupInRocksdbCompactFilter`).
pub(crate) struct TtlFilter {
    ttl_ms: u64,
    layout: TtlLayout,
    now: u64,
}

impl TtlFilter {
    fn expired(&self, timestamp: Option<u64>) -> bool {
        timestamp.is_some_and(|ts| ts.saturating_add(self.ttl_ms) <= self.now)
    }

    /// Whether `value` holds nothing live. A value that does not parse is kept: the read that
    /// meets it reports it, naming the state.
    fn all_expired(&self, value: &[u8]) -> bool {
        match self.layout {
            TtlLayout::Single => self.expired(ttl_timestamp(value)),
            TtlLayout::List => Elements::new(value).all(|element| match element {
                Ok(payload) => self.expired(ttl_timestamp(payload)),
                Err(()) => false,
            }),
        }
    }
}

impl CompactionFilter for TtlFilter {
    fn filter(&mut self, _level: u32, _key: &[u8], value: &[u8]) -> Decision {
        // A list chunk with some live elements is kept whole: trimming it would need
        // `Decision::Change`, which only takes `'static` bytes. Reads trim it.
        if self.all_expired(value) {
            Decision::Remove
        } else {
            Decision::Keep
        }
    }

    fn name(&self) -> &CStr {
        c"eddy-ttl-filter"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rocksdb::codec::{encode_into, push_element, set_ttl_timestamp, TTL_HEADER};

    fn ttl_element(buf: &mut Vec<u8>, ts: u64) {
        push_element(buf, |b| {
            let start = b.len();
            b.extend_from_slice(&[0; TTL_HEADER]);
            set_ttl_timestamp(&mut b[start..], ts);
            encode_into(&1u32, b)
        })
        .unwrap();
    }

    #[test]
    fn filter_drops_only_what_has_fully_expired() {
        let mut f = TtlFilter {
            ttl_ms: 10,
            layout: TtlLayout::Single,
            now: 100,
        };
        let mut v = vec![0u8; 9];
        set_ttl_timestamp(&mut v, 90);
        assert!(matches!(f.filter(0, b"k", &v), Decision::Remove));
        set_ttl_timestamp(&mut v, 91);
        assert!(matches!(f.filter(0, b"k", &v), Decision::Keep));
        assert!(matches!(f.filter(0, b"k", &[1, 2]), Decision::Keep));
        f.layout = TtlLayout::List;
        let mut list = Vec::new();
        ttl_element(&mut list, 0);
        ttl_element(&mut list, 95);
        assert!(matches!(f.filter(0, b"k", &list), Decision::Keep));
        let mut old = Vec::new();
        ttl_element(&mut old, 0);
        ttl_element(&mut old, 1);
        assert!(matches!(f.filter(0, b"k", &old), Decision::Remove));
    }
}
