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

use crate::vvol::qos::stats::{shard_index, SHARDS};

/// Lines of one volume's state worth loading before its command runs.
#[derive(Clone, Copy, Default)]
pub struct WarmLines {
    lines: [usize; MAX_LINES],
    len: u8,
    /// The QoS counters a command completes into: one set per network thread, so the one to
    /// load depends on which thread routes the command.
    stats: Option<[usize; SHARDS]>,
}

/// Enough for a logical unit (12 lines), its device and its QoS limiter; more is skipped.
const MAX_LINES: usize = 20;
const LINE: usize = 64;

impl WarmLines {
    /// Every line `value` occupies (up to the capacity left).
    pub fn add<T>(&mut self, value: &T) {
        let start = value as *const T as usize;
        let end = start + std::mem::size_of::<T>().max(1);
        let mut line = start & !(LINE - 1);
        while line < end && (self.len as usize) < MAX_LINES {
            self.lines[self.len as usize] = line;
            self.len += 1;
            line += LINE;
        }
    }

    /// The per-thread QoS counter sets, by shard.
    pub fn set_stats(&mut self, shards: [usize; SHARDS]) {
        self.stats = Some(shards);
    }

    /// Ask the CPU for every line; returns at once.
    pub fn issue(&self) {
        for &line in &self.lines[..self.len as usize] {
            prefetch(line);
        }
        if let Some(shards) = &self.stats {
            prefetch(shards[shard_index()]);
        }
    }

    #[cfg(test)]
    fn lines(&self) -> &[usize] {
        &self.lines[..self.len as usize]
    }
}

/// A hint to load the cache line at `addr`; never faults, whatever the address.
pub fn prefetch(addr: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 is architecturally a no-op for memory: it cannot fault, even on an
    // unmapped address, and it changes no register or memory the program can observe.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(addr as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
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
        assert_eq!(w.lines(), &[base, base + 64, base + 128]);
        w.issue();
    }

    #[test]
    fn stops_at_capacity_and_tolerates_any_address() {
        let big = [0u8; 4096];
        let mut w = WarmLines::default();
        w.add(&big);
        assert_eq!(w.lines().len(), MAX_LINES);
        w.set_stats([0, 1, usize::MAX, 64]);
        // Dangling and unmapped addresses are fine for a prefetch.
        w.issue();
        prefetch(0);
    }
}
