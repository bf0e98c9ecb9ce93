//! Settings for mimalloc, the allocator the `trailwatch` binary and the benchmarks run with.

/// `mi_option_purge_delay` in mimalloc's `mi_option_e` (its 16th option; the Rust bindings name
/// only some of them).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long memory freed to mimalloc is kept before it goes back to the OS.
const KEEP_FREED_MS: std::ffi::c_long = 10_000;

/// Keeps freed memory 10 s before returning it to the OS, rather than mimalloc's 1 s.
///
/// The pipeline frees and allocates file-sized buffers continuously. With the default, pages freed
/// went back to the OS and were faulted in again moments later, zero-filled by the kernel two MiB
/// at a time under transparent huge pages: about 5 % of a replay's CPU (`perf`: `clear_page_erms`
/// under `mi_page_fresh_alloc`), 2 % with this setting. Memory from a burst is still handed back
/// once it has been idle a while. Call at start-up.
pub fn keep_freed_memory() {
    // SAFETY: sets an integer option of the allocator linked into this process; mimalloc reads it
    // when it next purges and accepts any value.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, KEEP_FREED_MS) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_option_set_is_the_purge_delay() {
        // mimalloc's default purge delay is 1,000 ms, a default no other option has: were the
        // options renumbered in a later release, this would fail rather than set another one.
        // SAFETY: reads an integer option of the linked allocator.
        let get = || unsafe { libmimalloc_sys::mi_option_get(super::PURGE_DELAY) };
        assert_eq!(get(), 1_000, "is MIMALLOC_PURGE_DELAY set in the environment?");
        super::keep_freed_memory();
        assert_eq!(get(), 10_000);
    }
}
