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
//! Why [`PURGE_DELAY_MS`]: every checkpoint of the heap backend allocates and frees a copy
//! of the state and its encoding (tens of MB per subtask, every few seconds). With
//! mimalloc's default purge delay (1 s in the v3 allocator) the freed pages go back to the
//! kernel between two checkpoints, and the next checkpoint faults them in again: the kernel
//! zeroing fresh pages was most of a checkpoint's CPU cost (BENCHMARKS.md, session 9).
//! Holding freed memory for 10 s keeps those pages mapped from one checkpoint to the next;
//! the process's resident size stays near its peak meanwhile, which is the figure that
//! bounds a job's memory anyway.
//!
//! ```no_run
//! #[global_allocator]
//! static GLOBAL: eddy_alloc::Allocator = eddy_alloc::Allocator;
//!
//! fn main() {
//!     eddy_alloc::configure();
//!     // ...
//! }
//! ```
//!
//! [mimalloc]: https://github.com/microsoft/mimalloc

use std::os::raw::c_long;

/// The global allocator of Eddy's binaries.
pub use mimalloc::MiMalloc as Allocator;

/// How long freed memory stays mapped before mimalloc returns it to the kernel, in
/// milliseconds (see the [crate documentation](crate) for why).
pub const PURGE_DELAY_MS: c_long = 10_000;

/// mimalloc's `mi_option_purge_delay` (its position in `mi_option_e`, `mimalloc.h` of the v3
/// allocator that `libmimalloc-sys` builds; `libmimalloc-sys` has no constant for it). The
/// tests check it is the option whose documented default is 1000 ms.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Sets Eddy's allocator options, unless the environment already set them
/// (`MIMALLOC_PURGE_DELAY=...` still wins, for experiments). Call it first thing in `main`.
#[allow(unsafe_code)] // a foreign call; see the SAFETY argument
pub fn configure() {
    // SAFETY: `mi_option_set_default` takes no pointers: it bounds-checks the option index
    // and stores one aligned `long` in mimalloc's option table (mimalloc documents its option
    // setters as callable at any time; `configure` is meant for the start of `main`, before
    // other threads exist, so nothing reads the word while it changes). Option 15 is
    // `mi_option_purge_delay` in the bundled mimalloc (checked by the tests below).
    unsafe {
        libmimalloc_sys::mi_option_set_default(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
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
    /// delay's documented default before `configure`, and Eddy's value after it.
    #[test]
    fn configure_sets_the_purge_delay_unless_the_environment_did() {
        if let Ok(from_env) = std::env::var("MIMALLOC_PURGE_DELAY") {
            configure();
            assert_eq!(purge_delay_ms().to_string(), from_env.trim());
            return;
        }
        assert_eq!(purge_delay_ms(), 1_000, "mimalloc v3's default purge delay");
        configure();
        assert_eq!(purge_delay_ms(), PURGE_DELAY_MS);
    }
}
