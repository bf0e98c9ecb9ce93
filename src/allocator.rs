//! Settings for mimalloc, the allocator the `trailwatch` binary and the benchmarks run with.

/// `mi_option_purge_delay` in mimalloc's `mi_option_e` (its 16th option; the Rust bindings name
/// only some of them).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// `mi_option_allow_thp` in mimalloc's `mi_option_e` (its 44th option): whether the memory it
/// maps may be backed by transparent huge pages.
const ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

/// How long memory freed to mimalloc is kept before it goes back to the OS.
const KEEP_FREED_MS: std::ffi::c_long = 10_000;

/// Tunes the allocator for the pipeline: [`keep_freed_memory`] and [`small_pages_only`]. Call at
/// start-up, before the first thread is spawned.
pub fn configure() {
    keep_freed_memory();
    small_pages_only();
}

/// Keeps freed memory 10 s before returning it to the OS, rather than mimalloc's 1 s.
///
/// The pipeline frees and allocates file-sized buffers continuously. With the default, pages freed
/// went back to the OS and were faulted in again moments later, zero-filled by the kernel two MiB
/// at a time under transparent huge pages: about 5 % of a replay's CPU (`perf`: `clear_page_erms`
/// under `mi_page_fresh_alloc`), 2 % with this setting. Memory from a burst is still handed back
/// once it has been idle a while.
pub fn keep_freed_memory() {
    // SAFETY: sets an integer option of the allocator linked into this process; mimalloc reads it
    // when it next purges and accepts any value.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, KEEP_FREED_MS) }
}

/// Backs the heap with ordinary 4 KiB pages: no transparent huge pages.
///
/// By default mimalloc asks the kernel for transparent huge pages over its arenas, so that the
/// first touch of any byte of a 2 MiB range has the kernel zero-fill all of it. The pipeline's
/// heap is many small objects (events, baselines, anomalies) spread over its arenas: a replay of
/// the 200,000-record storm trail faulted in about 70 huge pages, its peak resident memory was
/// 167 MiB against 113 MiB with small pages, and the kernel's `clear_page_erms` under
/// `mi_page_fresh_alloc` took 18 % of its `perf` samples, 27 % in the quiet trail's (0.2 % with small pages), on a
/// virtual machine where a fresh huge page costs far more to clear than the same bytes in small
/// pages. User time did not grow with the smaller pages (more TLB misses were to be feared).
///
/// mimalloc maps its first arena, asking for huge pages over it, before `main` runs: the option
/// alone covers only later mappings (a storm replay still faulted in 76 huge pages with it), so
/// the process-wide switch that the option sets when given at mimalloc's own start-up
/// (`PR_SET_THP_DISABLE`, consulted at each fault) is set here too.
pub fn small_pages_only() {
    // SAFETY: sets an integer option of the allocator linked into this process, read when it
    // next maps memory; 0 is one of its documented values.
    unsafe { libmimalloc_sys::mi_option_set(ALLOW_THP, 0) }
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0)` only sets a flag on this process's
        // memory map, consulted at later page faults; it touches no memory of ours. A kernel
        // without it returns an error, which leaves huge pages as they were.
        let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_options_set_are_the_purge_delay_and_huge_pages() {
        // mimalloc's default purge delay is 1,000 ms, a default no other option has: were the
        // options renumbered in a later release, this would fail rather than set another one.
        // SAFETY: reads integer options of the linked allocator.
        let get = |option| unsafe { libmimalloc_sys::mi_option_get(option) };
        assert_eq!(
            get(super::PURGE_DELAY),
            1_000,
            "is MIMALLOC_PURGE_DELAY set in the environment?"
        );
        // `allow_thp` defaults to 1, as many options do; the option before it (the most pages
        // reclaimed across threads) defaults to 32, which pins the numbering.
        assert_eq!(get(super::ALLOW_THP - 1), 32);
        assert_eq!(
            get(super::ALLOW_THP),
            1,
            "is MIMALLOC_ALLOW_THP set in the environment?"
        );
        super::configure();
        assert_eq!(get(super::PURGE_DELAY), 10_000);
        assert_eq!(get(super::ALLOW_THP), 0);
    }
}
