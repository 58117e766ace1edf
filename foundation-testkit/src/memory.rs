//! Memory probes: live and peak heap bytes, peak resident set size.
//!
//! Heap figures come from [`PeakAlloc`], a counting wrapper around the system allocator.
//! They are only meaningful in a binary that installs it as its global allocator (the
//! assumption tests and the report do):
//!
//! ```
//! use foundation_testkit::memory::{self, PeakAlloc};
//!
//! #[global_allocator]
//! static ALLOC: PeakAlloc = PeakAlloc;
//!
//! let before = memory::heap_now();
//! let v = vec![0u8; 1 << 20];
//! assert!(memory::heap_now() >= before + (1 << 20) || !memory::installed());
//! drop(v);
//! ```
//!
//! The resident set size figures read `/proc/self/status` (Linux); elsewhere they are
//! `None`.

pub use peak_alloc::PeakAlloc;

/// Bytes currently allocated on the heap (0 when [`PeakAlloc`] is not installed).
pub fn heap_now() -> usize {
    PeakAlloc.current_usage()
}

/// Most bytes allocated at once since the last [`reset_heap_peak`].
pub fn heap_peak() -> usize {
    PeakAlloc.peak_usage()
}

/// Starts a new peak measurement at the current heap size.
pub fn reset_heap_peak() {
    PeakAlloc.reset_peak_usage();
}

/// Whether [`PeakAlloc`] is this binary's global allocator: its counters move only when
/// it is (checked while holding an allocation, so the answer does not depend on what
/// other threads free meanwhile).
pub fn installed() -> bool {
    let v = std::hint::black_box(vec![1u8; 64 * 1024]);
    let seen = heap_now() > 0 || heap_peak() > 0;
    drop(v);
    seen
}

/// Measures the heap growth caused by `f`: (peak above the starting size while it ran,
/// live bytes it left behind). Allocations made by other threads meanwhile count too.
pub fn heap_growth<R>(f: impl FnOnce() -> R) -> (usize, isize, R) {
    let start = heap_now();
    reset_heap_peak();
    let r = f();
    let peak = heap_peak().saturating_sub(start);
    let left = heap_now() as isize - start as isize;
    (peak, left, r)
}

fn status_kib(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    text.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Resident set size now, KiB.
pub fn rss_kib() -> Option<u64> {
    status_kib("VmRSS:")
}

/// Peak resident set size since the process started or the last [`reset_rss_peak`], KiB.
pub fn rss_peak_kib() -> Option<u64> {
    status_kib("VmHWM:")
}

/// Resets the peak resident set size to the current one (Linux `clear_refs` 5); returns
/// whether it worked.
pub fn reset_rss_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}
