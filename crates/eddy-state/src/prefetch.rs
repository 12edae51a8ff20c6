//! Software prefetch: ask the CPU to start loading a cache line without waiting for it.
//!
//! This is the only `unsafe` in Eddy besides `eddy-alloc`'s two calls of allocator options.
//! It exists because a prefetch, unlike a load, retires at once: a loop can request the state of the next dozen records while it still works on the
//! current one, so the memory latency of a table far larger than the caches overlaps with
//! useful work. A plain load (the safe alternative) blocks retirement until its data arrives,
//! which caps the overlap at a few records.

/// Hints the CPU to load the cache line holding `ptr` into all cache levels.
///
/// Any pointer value is accepted, including null and dangling ones: a prefetch is a hint
/// that never faults and never reads memory in the language's sense.
#[inline(always)]
pub fn prefetch_read<T>(ptr: *const T) {
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    // SAFETY: `_mm_prefetch` is `unsafe` only because it is declared with
    // `#[target_feature(enable = "sse")]`; SSE is part of the x86_64 baseline, so every CPU
    // this code runs on has it. The instruction (PREFETCHT0) cannot fault, whatever the
    // address, and has no effect on program semantics.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(ptr.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = ptr;
}

/// Hints the CPU to load every cache line the `T` at `ptr` spans: a value that straddles a
/// line boundary (a 48-byte table slot does every other time) needs both lines, and a
/// prefetch of its first byte brings only the first.
///
/// Any pointer value is accepted, as for [`prefetch_read`].
#[inline(always)]
pub fn prefetch_value<T>(ptr: *const T) {
    /// The cache line size of x86_64 and most other targets; a smaller one only makes some
    /// prefetches redundant.
    const CACHE_LINE: usize = 64;
    let start = ptr.cast::<u8>();
    let size = std::mem::size_of::<T>();
    let mut offset = 0;
    while offset < size {
        prefetch_read(start.wrapping_add(offset));
        offset += CACHE_LINE;
    }
    // The last byte's line, when the value does not start on a line boundary.
    if size > 1 {
        prefetch_read(start.wrapping_add(size - 1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetch_accepts_valid_null_and_dangling_pointers() {
        let values = vec![1u64, 2, 3];
        prefetch_read(values.as_ptr());
        prefetch_read(values.as_ptr().wrapping_add(1_000_000));
        prefetch_read(std::ptr::null::<u64>());
        prefetch_read(std::ptr::NonNull::<u64>::dangling().as_ptr());
        prefetch_value(values.as_ptr().cast::<[u64; 20]>());
        prefetch_value(std::ptr::null::<(u64, [u8; 40])>());
        prefetch_value(std::ptr::NonNull::<()>::dangling().as_ptr());
        assert_eq!(values, vec![1, 2, 3]);
    }
}
