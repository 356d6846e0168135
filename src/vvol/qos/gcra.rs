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
        CapLimiter {
            tat: AtomicU64::new(0),
            ns_per_unit: AtomicU64::new(ns_per_unit(cap)),
            burst_ns: DEFAULT_BURST_NS,
        }
    }

    /// Change the cap live at `now_ns`. The backlog admitted under the old cap (the TAT's lead
    /// over `now_ns`) is stretched or shrunk to the new one, so a raised cap is not held back
    /// by the queue the old one built (at 10 IOPS, a few hundred queued commands take tens of
    /// seconds). I/Os already holding a release time rescale theirs with
    /// [`CapLimiter::rescale`]. An admission racing the change may be paced at either rate:
    /// one I/O's worth of error.
    pub fn set_cap(&self, now_ns: u64, cap: Option<u32>) {
        let new = ns_per_unit(cap);
        let old = self.ns_per_unit.swap(new, Ordering::AcqRel);
        if old == new {
            return;
        }
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let next = rescaled(now_ns, tat, old, new);
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(seen) => tat = seen,
            }
        }
    }

    pub fn cap(&self) -> Option<u32> {
        match self.ns_per_unit.load(Ordering::Relaxed) {
            0 => None,
            per => Some((1_000_000_000 / per) as u32),
        }
    }

    /// A release time given under `paced` ns per unit, moved to the current cap at `now_ns`
    /// as [`CapLimiter::set_cap`] moved the TAT: (release, the pace it is now under).
    pub fn rescale(&self, now_ns: u64, release: u64, paced: u64) -> (u64, u64) {
        let per = self.ns_per_unit.load(Ordering::Acquire);
        (rescaled(now_ns, release, paced, per), per)
    }

    /// Admit an I/O of `units` at `now_ns`; returns when it may be released (`now_ns` when
    /// it may go at once). The caller holds the I/O until then.
    pub fn admit(&self, now_ns: u64, units: u32) -> u64 {
        self.admit_paced(now_ns, units).0
    }

    /// [`CapLimiter::admit`], also returning the ns per unit the release time was paced at
    /// (0: unlimited), for [`CapLimiter::rescale`] should the cap change while it waits.
    pub fn admit_paced(&self, now_ns: u64, units: u32) -> (u64, u64) {
        let per = self.ns_per_unit.load(Ordering::Acquire);
        if per == 0 {
            return (now_ns, 0);
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
                Ok(_) => return (release, per),
                Err(seen) => tat = seen,
            }
        }
    }
}

fn ns_per_unit(cap: Option<u32>) -> u64 {
    match cap {
        Some(c) if c > 0 => 1_000_000_000 / c as u64,
        _ => 0,
    }
}

/// `at` (a TAT or a release time) moved from pace `old` to pace `new` (ns per unit, 0:
/// unlimited): its lead over `now` scales by new/old. Times already reached stay; with no old
/// pace there is no backlog to scale, and with no new one everything may go now.
fn rescaled(now: u64, at: u64, old: u64, new: u64) -> u64 {
    if at <= now || old == new || old == 0 {
        return at;
    }
    if new == 0 {
        return now;
    }
    let lead = (at - now) as u128 * new as u128 / old as u128;
    now.saturating_add(lead.min(u64::MAX as u128) as u64)
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
        l.set_cap(3 * S, Some(5000));
        assert_eq!(l.cap(), Some(5000));
        let w = closed_loop(&l, 3 * S, 3, 1);
        assert!((4990..=5010).contains(&w[2]), "{w:?}");
        l.set_cap(6 * S, None);
        assert_eq!(l.admit(100 * S, 1), 100 * S);
    }

    #[test]
    fn a_raised_cap_shrinks_the_queued_backlog() {
        // 10 IOPS: 100 ms per unit. 50 I/Os at once queue about 5 s of backlog.
        let l = CapLimiter::new(Some(10));
        let t0 = 10 * S;
        let held: Vec<(u64, u64)> = (0..50).map(|_| l.admit_paced(t0, 1)).collect();
        let (last, paced) = held[49];
        assert!(last >= t0 + 4 * S, "{}", last - t0);
        // One second later the cap goes to 10,000: what is left of the backlog (about 4 s of
        // it) becomes about 4 ms.
        let t1 = t0 + S;
        l.set_cap(t1, Some(10_000));
        let (moved, now_paced) = l.rescale(t1, last, paced);
        assert_eq!(now_paced, 100_000);
        assert!(moved > t1 && moved - t1 <= 5 * MS, "{}", moved - t1);
        // A new I/O queues behind the shrunk backlog, not the old one.
        let next = l.admit(t1, 1);
        assert!(next - t1 <= 5 * MS, "{}", next - t1);
        // Releases already passed stay where they are.
        assert_eq!(l.rescale(t1, t0, paced).0, t0);
    }

    #[test]
    fn a_lowered_cap_stretches_it_and_unlimited_frees_it() {
        let l = CapLimiter::new(Some(1000));
        let (release, paced) = (0..20).map(|_| l.admit_paced(S, 1)).last().unwrap();
        assert_eq!(release, S + 14 * MS);
        l.set_cap(S, Some(100));
        let (stretched, paced_now) = l.rescale(S, release, paced);
        assert_eq!((stretched, paced_now), (S + 140 * MS, 10 * MS));
        // The next I/O follows the stretched backlog (TAT S + 200 ms) less one I/O of burst.
        assert_eq!(l.admit(S, 1), S + 190 * MS);
        l.set_cap(S + MS, None);
        assert_eq!(l.rescale(S + MS, stretched, paced_now), (S + MS, 0));
        assert_eq!(l.admit(S + MS, 1), S + MS);
        // The same cap again changes nothing.
        l.set_cap(2 * S, Some(100));
        l.set_cap(2 * S, Some(100));
        assert_eq!(l.rescale(2 * S, 3 * S, 10 * MS), (3 * S, 10 * MS));
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
