//! `eddy-alloc`: the memory allocator of Eddy's binaries (`eddy`, `eddy-bench`, the examples'
//! programs) and how it is tuned.
//!
//! Owns the choice of [mimalloc] and its options. It must not depend on any other Eddy crate,
//! and no Eddy library code uses it (`eddy-examples` lists it for its programs only): an
//! application embedding Eddy picks its own allocator. The binaries opt in by declaring
//! [`Allocator`] their global allocator and calling [`configure`] first thing in `main`.
//!
//! Why mimalloc: the heap state backend allocates per key (lists, small maps); glibc's
//! malloc made W2 about a quarter slower (BENCHMARKS.md).
//!
//! Why a longer purge delay for jobs that checkpoint: every checkpoint of the heap backend
//! allocates and frees buffers as large as the encoded state (tens of MB per subtask, every
//! few seconds). With mimalloc's default purge delay (1 s in the v3 allocator) the freed
//! pages go back to the kernel between two checkpoints, and the next checkpoint faults them
//! in again: the kernel zeroing fresh pages was most of a checkpoint's CPU cost
//! (BENCHMARKS.md, session 9). Holding freed memory for [`CHECKPOINTS_PER_PURGE_DELAY`]
//! intervals keeps those pages mapped from one checkpoint to the next.
//!
//! Why at least [`MIN_PURGE_DELAY_MS`] for every job, checkpoints or not: window operators
//! free whole timer buckets and window contents as windows fire and allocate new ones as
//! windows open, a steady churn of large blocks. With mimalloc's 1 s default part of the
//! freed pages went back to the kernel and were faulted in (zeroed) again: W5 at p = 2 took
//! 15,000-25,000 page faults against 5,000-12,000 with 3 s, and ran about 13 % faster
//! (medians of five runs each) for about 10 % more peak RSS (BENCHMARKS.md, session 13).
//!
//! ```no_run
//! #[global_allocator]
//! static GLOBAL: eddy_alloc::Allocator = eddy_alloc::Allocator;
//!
//! fn main() {
//!     // Checkpoints every 2 s (`None` without checkpoints).
//!     eddy_alloc::configure(Some(std::time::Duration::from_secs(2)));
//!     // ...
//! }
//! ```
//!
//! [mimalloc]: https://github.com/microsoft/mimalloc

use std::os::raw::c_long;
use std::time::Duration;

/// The global allocator of Eddy's binaries.
pub use mimalloc::MiMalloc as Allocator;

/// A checkpointing job keeps freed memory mapped for this many checkpoint intervals before
/// mimalloc returns it to the kernel (see the [crate documentation](crate) for why).
pub const CHECKPOINTS_PER_PURGE_DELAY: u32 = 5;

/// mimalloc's own purge delay (v3), in milliseconds.
pub const DEFAULT_PURGE_DELAY_MS: c_long = 1_000;

/// The shortest purge delay [`configure`] sets, in milliseconds (see the
/// [crate documentation](crate) for why it is longer than mimalloc's default).
pub const MIN_PURGE_DELAY_MS: c_long = 3_000;

/// The longest purge delay [`configure`] sets, in milliseconds.
pub const MAX_PURGE_DELAY_MS: c_long = 60_000;

/// mimalloc's `mi_option_purge_delay` (its position in `mi_option_e`, `mimalloc.h` of the v3
/// allocator that `libmimalloc-sys` builds; `libmimalloc-sys` has no constant for it). The
/// tests check it is the option whose documented default is 1000 ms.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Sets Eddy's allocator options for a job that checkpoints every `checkpoint_interval`
/// (`None`: no checkpoints), unless the environment already set them
/// (`MIMALLOC_PURGE_DELAY=...` still wins, for experiments). Call it first thing in `main`,
/// once the flags are parsed.
pub fn configure(checkpoint_interval: Option<Duration>) {
    let millis = checkpoint_interval.map_or(MIN_PURGE_DELAY_MS, purge_delay_for);
    set_default_purge_delay(millis);
}

/// The purge delay for checkpoints every `interval`, in milliseconds: five intervals, within
/// [`MIN_PURGE_DELAY_MS`] and [`MAX_PURGE_DELAY_MS`].
pub fn purge_delay_for(interval: Duration) -> c_long {
    let millis = interval
        .saturating_mul(CHECKPOINTS_PER_PURGE_DELAY)
        .as_millis();
    c_long::try_from(millis)
        .unwrap_or(MAX_PURGE_DELAY_MS)
        .clamp(MIN_PURGE_DELAY_MS, MAX_PURGE_DELAY_MS)
}

#[allow(unsafe_code)] // a foreign call; see the SAFETY argument
fn set_default_purge_delay(millis: c_long) {
    // SAFETY: `mi_option_set_default` takes no pointers: it bounds-checks the option index
    // and stores one aligned `long` in mimalloc's option table (mimalloc documents its option
    // setters as callable at any time; `configure` is meant for the start of `main`, before
    // jobs start their threads, so nothing reads the word while it changes). Option 15 is
    // `mi_option_purge_delay` in the bundled mimalloc (checked by the tests below).
    unsafe {
        libmimalloc_sys::mi_option_set_default(MI_OPTION_PURGE_DELAY, millis);
    }
}

/// The purge delay mimalloc uses now, in milliseconds.
#[allow(unsafe_code)] // a foreign call; see the SAFETY argument
pub fn purge_delay_ms() -> c_long {
    // SAFETY: `mi_option_get` takes no pointers: it bounds-checks the option index and reads
    // one `long` from mimalloc's option table (reading the environment first if the option
    // was never read).
    unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test, since the option is process-wide: the option at position 15 has the purge
    /// delay's documented default before `configure`, takes the floor without checkpoints,
    /// and five checkpoint intervals with them.
    #[test]
    fn configure_sets_the_purge_delay_for_checkpoints_unless_the_environment_did() {
        if let Ok(from_env) = std::env::var("MIMALLOC_PURGE_DELAY") {
            configure(Some(Duration::from_secs(2)));
            assert_eq!(purge_delay_ms().to_string(), from_env.trim());
            return;
        }
        assert_eq!(
            purge_delay_ms(),
            DEFAULT_PURGE_DELAY_MS,
            "mimalloc v3's default"
        );
        configure(None);
        assert_eq!(purge_delay_ms(), MIN_PURGE_DELAY_MS);
        configure(Some(Duration::from_secs(2)));
        assert_eq!(purge_delay_ms(), 10_000);
    }

    #[test]
    fn the_purge_delay_is_five_intervals_within_bounds() {
        assert_eq!(
            purge_delay_for(Duration::from_millis(200)),
            MIN_PURGE_DELAY_MS
        );
        assert_eq!(purge_delay_for(Duration::from_secs(3)), 15_000);
        assert_eq!(
            purge_delay_for(Duration::from_secs(3600)),
            MAX_PURGE_DELAY_MS
        );
        assert_eq!(purge_delay_for(Duration::MAX), MAX_PURGE_DELAY_MS);
    }
}
