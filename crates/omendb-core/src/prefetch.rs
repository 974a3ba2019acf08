//! Software prefetch: asks the CPU to start loading a cache line that a lookup will read soon, so
//! that the misses of several lookups, or of several lines of one window, overlap. The
//! instruction itself is `omendb_storage::prefetch::line`, shared with the segment reader.

pub(crate) use omendb_storage::prefetch::line;

/// Bytes per cache line on the CPUs we run on.
const LINE_BYTES: usize = 64;

/// Prefetches the cache lines of `keys[lo..hi]`, at most `max_lines` of them from the front. The
/// window is searched by bisection right after; fetching its lines at once turns the bisection's
/// dependent misses into overlapping ones.
#[inline(always)]
pub(crate) fn window(keys: &[u64], lo: usize, hi: usize, max_lines: usize) {
    let hi = hi.min(keys.len());
    if lo >= hi {
        return;
    }
    let first = keys.as_ptr().wrapping_add(lo) as usize & !(LINE_BYTES - 1);
    let last = keys.as_ptr().wrapping_add(hi - 1) as usize;
    let mut addr = first;
    let mut lines = 0;
    while addr <= last && lines < max_lines {
        line(addr as *const u8);
        addr += LINE_BYTES;
        lines += 1;
    }
}
