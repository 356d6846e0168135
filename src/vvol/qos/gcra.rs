//! The IOPS cap as a generic cell rate algorithm (virtual-scheduling token bucket) in one
//! atomic word: each admission moves the volume's theoretical arrival time (TAT) forward by
//! its cost; an I/O may go when the TAT minus the burst tolerance is not in the future. No lock,
//! one CAS per I/O, and idle time earns no credit beyond the burst tolerance, because the TAT
//! is never allowed to fall behind `now` by more than that.

use std::sync::atomic::{AtomicU64, Ordering};

/// Burst tolerance: a few milliseconds' worth of I/Os may go back to back.
pub const DEFAULT_BURST_NS: u64 = 5_000_000;

/// One volume's cap, shared by all its sessions and paths.
#[derive(Debug)]
pub struct CapLimiter {
    /// Theoretical arrival time, ns on the caller's monotonic clock.
    tat: AtomicU64,
    /// Nanoseconds one normalized unit occupies (1e9 / cap); 0 = unlimited.
    ns_per_unit: AtomicU64,
    burst_ns: u64,
}

impl CapLimiter {
    /// A limiter for `cap` normalized IOPS (None: unlimited).
    pub fn new(cap: Option<u32>) -> CapLimiter {
        let l = CapLimiter {
            tat: AtomicU64::new(0),
            ns_per_unit: AtomicU64::new(0),
            burst_ns: DEFAULT_BURST_NS,
        };
        l.set_cap(cap);
        l
    }

    /// Change the cap live; I/Os already admitted keep their release times.
    pub fn set_cap(&self, cap: Option<u32>) {
        let per = match cap {
            Some(c) if c > 0 => 1_000_000_000 / c as u64,
            _ => 0,
        };
        self.ns_per_unit.store(per, Ordering::Relaxed);
    }

    pub fn cap(&self) -> Option<u32> {
        match self.ns_per_unit.load(Ordering::Relaxed) {
            0 => None,
            per => Some((1_000_000_000 / per) as u32),
        }
    }

    /// Admit an I/O of `units` at `now_ns`; returns when it may be released (`now_ns` when
    /// it may go at once). The caller holds the I/O until then.
    pub fn admit(&self, now_ns: u64, units: u32) -> u64 {
        let per = self.ns_per_unit.load(Ordering::Relaxed);
        if per == 0 {
            return now_ns;
        }
        // At least one I/O of burst, so a cap below 1/burst still lets single I/Os through.
        let tolerance = self.burst_ns.max(per);
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let base = tat.max(now_ns);
            let next = base + per * units as u64;
            let release = now_ns.max(base.saturating_sub(tolerance));
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return release,
                Err(seen) => tat = seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000_000_000;

    #[test]
    fn unlimited_never_waits() {
        let l = CapLimiter::new(None);
        for i in 0..1000 {
            assert_eq!(l.admit(i, 1), i);
        }
        assert_eq!(l.cap(), None);
    }

    #[test]
    fn a_burst_then_one_io_per_interval() {
        // 1000 IOPS: 1 ms per unit, 5 ms of burst.
        let l = CapLimiter::new(Some(1000));
        let t0 = 10 * S;
        let releases: Vec<u64> = (0..20).map(|_| l.admit(t0, 1)).collect();
        // The first six go at once (TAT up to t0 + 5 ms is within tolerance), then 1 ms apart.
        assert!(releases[..6].iter().all(|r| *r == t0), "{releases:?}");
        for (k, r) in releases.iter().enumerate().skip(6) {
            assert_eq!(*r, t0 + (k as u64 - 5) * MS, "I/O {k}");
        }
    }

    /// A closed-loop client that always has work: count what is released per 1 s window.
    fn closed_loop(l: &CapLimiter, start: u64, seconds: u64, units: u32) -> Vec<u64> {
        let mut windows = vec![0u64; seconds as usize];
        let mut now = start;
        let end = start + seconds * S;
        while now < end {
            let r = l.admit(now, units);
            if r >= end {
                break;
            }
            windows[((r - start) / S) as usize] += units as u64;
            now = r;
        }
        windows
    }

    #[test]
    fn cap_holds_in_every_second() {
        let l = CapLimiter::new(Some(1000));
        let w = closed_loop(&l, S, 10, 1);
        // First second: cap plus the burst; then exactly the cap.
        assert!(w[0] <= 1000 + 6, "{w:?}");
        for (i, n) in w.iter().enumerate().skip(1) {
            assert!((999..=1001).contains(n), "second {i}: {n}");
        }
    }

    #[test]
    fn idle_time_earns_no_credit() {
        let l = CapLimiter::new(Some(1000));
        closed_loop(&l, S, 2, 1);
        // 30 s idle, then a full second of demand: at most the cap plus the burst.
        let w = closed_loop(&l, 33 * S, 1, 1);
        assert!(w[0] <= 1000 + 6 && w[0] as f64 <= 1.01 * 1000.0, "{w:?}");
    }

    #[test]
    fn large_ios_cost_more() {
        let l = CapLimiter::new(Some(1000));
        let w = closed_loop(&l, S, 3, 8);
        assert!((992..=1008).contains(&w[2]), "{w:?}");
    }

    #[test]
    fn live_change_takes_effect() {
        let l = CapLimiter::new(Some(1000));
        closed_loop(&l, S, 2, 1);
        l.set_cap(Some(5000));
        assert_eq!(l.cap(), Some(5000));
        let w = closed_loop(&l, 3 * S, 3, 1);
        assert!((4990..=5010).contains(&w[2]), "{w:?}");
        l.set_cap(None);
        assert_eq!(l.admit(100 * S, 1), 100 * S);
    }

    #[test]
    fn shared_by_two_threads_the_total_holds() {
        let l = std::sync::Arc::new(CapLimiter::new(Some(1000)));
        let start = S;
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let l = l.clone();
                std::thread::spawn(move || {
                    // Each path asks for 1000 I/Os at the same instant.
                    (0..1000)
                        .map(|_| l.admit(start, 1))
                        .filter(|r| *r < start + S)
                        .count()
                })
            })
            .collect();
        let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        // Two paths together still get one cap (plus the burst), not two.
        assert!((1000..=1006).contains(&total), "{total}");
    }
}
