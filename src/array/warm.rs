//! Warming a volume's state before a command touches it.
//!
//! With I/O spread over 1,000 VVols, a command finds its volume's structures out of the CPU
//! caches: the logical unit, the device, the QoS counters. Each is reached through a pointer
//! held by the one before, so their misses came one after another (perf put about 0.7 µs per
//! I/O there, over a 2.4 µs single-LUN I/O). A routing entry therefore keeps the addresses of
//! those lines, gathered when bindings are published, and the data path asks for all of them
//! at once as soon as it has found the entry: the misses overlap instead of queueing.
//!
//! The addresses are only hints. They belong to objects the routing entry keeps alive, and a
//! prefetch never faults nor changes what a load returns, so a stale one costs nothing but
//! the prefetch.

use crate::vvol::qos::stats::shard_index;

/// Lines of one volume's state worth loading before its command runs. Kept small: it lives in
/// the routing entry, which the lookup itself has to load.
#[derive(Clone, Copy, Default)]
pub struct WarmLines {
    /// First line of each span, and how many lines it has.
    starts: [usize; MAX_SPANS],
    lines: [u8; MAX_SPANS],
    len: u8,
    /// The QoS counters a command completes into: one set per network thread, so the one to
    /// load depends on which thread routes the command. First set and distance between sets;
    /// 0: none.
    stats: (usize, usize),
}

/// A logical unit, its device's header and four QoS fields; more is skipped.
const MAX_SPANS: usize = 6;
const LINE: usize = 64;
/// A span longer than this is cut: warming is for a few hot lines, not for bulk data.
const MAX_SPAN_LINES: usize = 16;

impl WarmLines {
    /// Every line `value` occupies (the first 16), if a span is left.
    pub fn add<T>(&mut self, value: &T) {
        let start = value as *const T as usize;
        let end = start + std::mem::size_of::<T>().max(1);
        let first = start & !(LINE - 1);
        let count = (end - first).div_ceil(LINE).min(MAX_SPAN_LINES);
        let i = self.len as usize;
        if i < MAX_SPANS {
            self.starts[i] = first;
            self.lines[i] = count as u8;
            self.len += 1;
        }
    }

    /// The per-thread QoS counter sets: where the first starts and the distance between them.
    pub fn set_stats(&mut self, first: usize, stride: usize) {
        self.stats = (first, stride);
    }

    /// Ask the CPU for every line; returns at once.
    #[inline]
    pub fn issue(&self) {
        for i in 0..self.len as usize {
            for n in 0..self.lines[i] as usize {
                prefetch(self.starts[i] + n * LINE);
            }
        }
        let (first, stride) = self.stats;
        if first != 0 {
            prefetch_for_write(first.wrapping_add(shard_index().wrapping_mul(stride)));
        }
    }

    #[cfg(test)]
    fn lines(&self) -> Vec<usize> {
        (0..self.len as usize)
            .flat_map(|i| (0..self.lines[i] as usize).map(move |n| self.starts[i] + n * LINE))
            .collect()
    }
}

/// A hint to load the cache line at `addr`; never faults, whatever the address.
pub fn prefetch(addr: usize) {
    #[cfg(target_arch = "x86_64")]
    hint::<{ std::arch::x86_64::_MM_HINT_T0 }>(addr);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}

/// Like [`prefetch`], for a line about to be written (counters, locks): asks for it exclusive
/// (PREFETCHW), so the write does not wait for a second round trip to upgrade a shared copy.
pub fn prefetch_for_write(addr: usize) {
    #[cfg(target_arch = "x86_64")]
    hint::<{ std::arch::x86_64::_MM_HINT_ET0 }>(addr);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn hint<const STRATEGY: i32>(addr: usize) {
    // SAFETY: a prefetch is architecturally a no-op for memory: it cannot fault, even on an
    // unmapped address, and it changes no register or memory the program can observe.
    unsafe { std::arch::x86_64::_mm_prefetch::<STRATEGY>(addr as *const i8) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covers_each_line_of_a_value_once() {
        #[repr(align(64))]
        struct Three(#[allow(dead_code)] [u8; 130]);
        let v = Three([0; 130]);
        let mut w = WarmLines::default();
        w.add(&v);
        let base = &v as *const Three as usize;
        // 130 bytes in a 192-byte, line-aligned value: three lines.
        assert_eq!(w.lines(), [base, base + 64, base + 128]);
        w.issue();
    }

    #[test]
    fn stops_at_capacity_and_tolerates_any_address() {
        let big = [0u8; 4096];
        let mut w = WarmLines::default();
        w.add(&big);
        assert_eq!(w.lines().len(), MAX_SPAN_LINES);
        for _ in 0..MAX_SPANS {
            w.add(&0u64);
        }
        assert_eq!(w.len as usize, MAX_SPANS);
        w.set_stats(usize::MAX - 64, 4096);
        // Dangling and unmapped addresses are fine for a prefetch.
        w.issue();
        prefetch(0);
        prefetch_for_write(0);
    }
}
