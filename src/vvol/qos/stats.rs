//! Per-volume I/O telemetry: counters the data path bumps with relaxed atomics, and the
//! once-a-second bookkeeping that turns them into 1 s and 10 s windows (IOPS raw and
//! normalized, MB/s, latency percentiles, throttled time) and a status, as the design study
//! §6.5 describes (after the Windows Storage QoS flow status).

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

/// Latency buckets: four per power of two (≤ 19 % wide), from 0 ns to about 18 minutes.
pub const BUCKETS: usize = 160;

fn bucket(ns: u64) -> usize {
    let e = 63 - (ns | 1).leading_zeros() as usize;
    if e < 2 {
        return ns as usize;
    }
    ((e - 1) * 4 + ((ns >> (e - 2)) & 3) as usize).min(BUCKETS - 1)
}

/// Midpoint of a bucket, in ns.
fn bucket_mid(i: usize) -> u64 {
    if i < 4 {
        return i as u64;
    }
    let e = i / 4 + 1;
    let m = (i % 4) as u64;
    let lo = (4 + m) << (e - 2);
    let hi = (5 + m) << (e - 2);
    (lo + hi) / 2
}

/// One finished I/O, as the data path reports it.
#[derive(Debug, Clone, Copy)]
pub struct IoRecord {
    pub bytes: u64,
    pub write: bool,
    pub units: u32,
    /// From the command's start to the end of its backend work.
    pub latency_ns: u64,
    /// Of which held back by QoS (cap delay and waiting for a backend slot).
    pub throttled_ns: u64,
    /// Whether the cap delayed it.
    pub capped: bool,
}

/// One thread's share of a volume's counters. `repr(C)`: what every I/O touches comes first,
/// in one cache line (`shard_layout` points there), ahead of the rarely bumped counters and
/// the histogram.
#[derive(Debug)]
#[repr(C)]
struct Shard {
    reads: AtomicU64,
    writes: AtomicU64,
    units: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    latency_sum_ns: AtomicU64,
    /// The histogram bucket of this shard's last I/O: the next one most likely lands in the
    /// same line, which `likely_latency_line` lets an I/O warm while it runs.
    last_bucket: AtomicU64,
    capped: AtomicU64,
    throttled_ns: AtomicU64,
    /// Counts that wrap at 2^32: only their change over one second is ever read (by wrapping
    /// subtraction), and no bucket takes 2^32 I/Os in a second. Half the size of 64-bit
    /// counts, which is what matters with a thousand volumes (see `MAX_SHARDS`).
    latency: [AtomicU32; BUCKETS],
}

impl Default for Shard {
    fn default() -> Self {
        Shard {
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            units: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            capped: AtomicU64::new(0),
            throttled_ns: AtomicU64::new(0),
            latency_sum_ns: AtomicU64::new(0),
            last_bucket: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }
}

/// Shards per volume: one per CPU, as many as the network threads by default, at most
/// `MAX_SHARDS`. Threads map onto them by their own index, so the network threads of a small
/// machine never share one (a shared set of counters bounced its cache lines between the
/// cores on every I/O; measured as part of QoS's cost in qos-check's A9). Sized to the machine
/// rather than fixed at four: with 64-bit buckets that made 5.5 KiB per volume, half of it
/// never touched on two CPUs, for every one of a thousand VVols (README, "Scale").
const MAX_SHARDS: usize = 16;

fn shard_count() -> usize {
    static COUNT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *COUNT
        .get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_SHARDS)))
}

pub(crate) fn shard_index() -> usize {
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Relaxed) % shard_count();
    }
    INDEX.with(|i| *i)
}

/// Cumulative counters of a volume, shared by every session, summed on reading.
#[derive(Debug)]
pub struct VolStats {
    shards: Box<[crossbeam::utils::CachePadded<Shard>]>,
}

impl Default for VolStats {
    fn default() -> Self {
        VolStats {
            shards: (0..shard_count()).map(|_| Default::default()).collect(),
        }
    }
}

/// A copy of the counters at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counters {
    pub reads: u64,
    pub writes: u64,
    pub units: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub capped: u64,
    pub throttled_ns: u64,
    pub latency_sum_ns: u64,
    /// Per bucket, modulo 2^32: compare two copies by wrapping subtraction.
    pub latency: Vec<u32>,
}

impl VolStats {
    /// Where the first shard's counters start and the distance to the next (for warming
    /// this thread's before an I/O completes): the line of `reads` … `last_bucket`.
    pub fn shard_layout(&self) -> (usize, usize) {
        (
            &*self.shards[0] as *const Shard as usize,
            std::mem::size_of::<crossbeam::utils::CachePadded<Shard>>(),
        )
    }

    pub fn record(&self, io: &IoRecord) {
        let s = &self.shards[shard_index()];
        if io.write {
            s.writes.fetch_add(1, Relaxed);
            s.bytes_written.fetch_add(io.bytes, Relaxed);
        } else {
            s.reads.fetch_add(1, Relaxed);
            s.bytes_read.fetch_add(io.bytes, Relaxed);
        }
        s.units.fetch_add(io.units as u64, Relaxed);
        if io.capped {
            s.capped.fetch_add(1, Relaxed);
        }
        if io.throttled_ns > 0 {
            s.throttled_ns.fetch_add(io.throttled_ns, Relaxed);
        }
        s.latency_sum_ns.fetch_add(io.latency_ns, Relaxed);
        let b = bucket(io.latency_ns);
        s.latency[b].fetch_add(1, Relaxed);
        s.last_bucket.store(b as u64, Relaxed);
    }

    /// The histogram line this thread's next I/O most likely records into (where its last one
    /// did), to warm while the I/O runs.
    pub fn likely_latency_line(&self) -> usize {
        let s = &self.shards[shard_index()];
        let b = (s.last_bucket.load(Relaxed) as usize).min(BUCKETS - 1);
        &s.latency[b] as *const AtomicU32 as usize
    }

    pub fn counters(&self) -> Counters {
        let sum = |f: fn(&Shard) -> &AtomicU64| -> u64 {
            self.shards.iter().map(|s| f(s).load(Relaxed)).sum()
        };
        Counters {
            reads: sum(|s| &s.reads),
            writes: sum(|s| &s.writes),
            units: sum(|s| &s.units),
            bytes_read: sum(|s| &s.bytes_read),
            bytes_written: sum(|s| &s.bytes_written),
            capped: sum(|s| &s.capped),
            throttled_ns: sum(|s| &s.throttled_ns),
            latency_sum_ns: sum(|s| &s.latency_sum_ns),
            latency: (0..BUCKETS)
                .map(|b| {
                    self.shards
                        .iter()
                        .fold(0u32, |n, s| n.wrapping_add(s.latency[b].load(Relaxed)))
                })
                .collect(),
        }
    }
}

/// What one second added.
#[derive(Debug, Clone, Default)]
struct Second {
    reads: u64,
    writes: u64,
    units: u64,
    bytes: u64,
    capped: u64,
    throttled_ns: u64,
    latency_sum_ns: u64,
    /// The buckets that got I/O and how many: a second keeps ten of these per volume, and
    /// most of a thousand volumes' seconds have few or no I/Os to hold 160 zeros for.
    latency: Vec<(u8, u32)>,
}

const _: () = assert!(BUCKETS <= 256, "a bucket index fits a u8");

/// The flow status of a volume (design study §6.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum QosStatus {
    Ok,
    /// The cap delayed I/O in the last second.
    CapLimited,
    /// Backlogged for 3 seconds in a row while served below 98 % of the lower limit.
    InsufficientThroughput,
}

/// Latency percentiles in µs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub mean: f64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
}

/// One window's figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub seconds: u32,
    /// Raw I/Os per second.
    pub iops: f64,
    /// Normalized units per second (what the limits count).
    pub units_per_s: f64,
    pub read_iops: f64,
    pub write_iops: f64,
    /// Megabytes (10^6) per second.
    pub mb_per_s: f64,
    pub latency_us: Latency,
    /// Milliseconds per second that I/Os spent held by QoS, summed over I/Os.
    pub throttled_ms_per_s: f64,
    /// I/Os the cap delayed, per second.
    pub capped_per_s: f64,
}

/// Seconds a window spans.
pub const SHORT: usize = 1;
pub const LONG: usize = 10;

/// The last ten seconds of one volume and its status.
#[derive(Debug, Default)]
pub struct History {
    last: Option<Counters>,
    last_backlog_ns: u64,
    seconds: VecDeque<Second>,
    short_seconds: u32,
    good_seconds: u32,
    insufficient: bool,
    capped: bool,
}

impl History {
    /// Close one second: `now` are the counters at its end, `backlog_ns` the cumulative time
    /// the volume had I/Os queued, `lower` its reservation.
    pub fn tick(&mut self, now: Counters, backlog_ns: u64, lower: Option<u32>) {
        let Some(prev) = self.last.replace(now.clone()) else {
            self.last_backlog_ns = backlog_ns;
            return;
        };
        let s = Second {
            reads: now.reads - prev.reads,
            writes: now.writes - prev.writes,
            units: now.units - prev.units,
            bytes: (now.bytes_read + now.bytes_written) - (prev.bytes_read + prev.bytes_written),
            capped: now.capped - prev.capped,
            throttled_ns: now.throttled_ns - prev.throttled_ns,
            latency_sum_ns: now.latency_sum_ns - prev.latency_sum_ns,
            latency: now
                .latency
                .iter()
                .zip(&prev.latency)
                .enumerate()
                .map(|(i, (a, b))| (i as u8, a.wrapping_sub(*b)))
                .filter(|&(_, n)| n > 0)
                .collect(),
        };
        let backlogged = backlog_ns.saturating_sub(self.last_backlog_ns) >= 500_000_000;
        self.last_backlog_ns = backlog_ns;
        let short = lower.is_some_and(|r| backlogged && (s.units as f64) < 0.98 * r as f64);
        if short {
            self.short_seconds += 1;
            self.good_seconds = 0;
        } else {
            self.short_seconds = 0;
            self.good_seconds += 1;
        }
        if self.short_seconds >= 3 {
            self.insufficient = true;
        } else if self.good_seconds >= 2 {
            self.insufficient = false;
        }
        self.capped = s.capped > 0;
        self.seconds.push_back(s);
        while self.seconds.len() > LONG {
            self.seconds.pop_front();
        }
    }

    pub fn status(&self) -> QosStatus {
        if self.insufficient {
            QosStatus::InsufficientThroughput
        } else if self.capped {
            QosStatus::CapLimited
        } else {
            QosStatus::Ok
        }
    }

    /// Figures over the last `seconds` closed seconds (fewer if the volume is younger).
    pub fn window(&self, seconds: usize) -> Window {
        let n = self.seconds.len().min(seconds);
        let mut w = Window {
            seconds: n as u32,
            ..Window::default()
        };
        if n == 0 {
            return w;
        }
        let recent = self.seconds.iter().skip(self.seconds.len() - n);
        let mut hist = vec![0u64; BUCKETS];
        let (mut ios, mut lat_sum) = (0u64, 0u64);
        for s in recent {
            w.read_iops += s.reads as f64;
            w.write_iops += s.writes as f64;
            w.units_per_s += s.units as f64;
            w.mb_per_s += s.bytes as f64 / 1e6;
            w.throttled_ms_per_s += s.throttled_ns as f64 / 1e6;
            w.capped_per_s += s.capped as f64;
            ios += s.reads + s.writes;
            lat_sum += s.latency_sum_ns;
            for &(b, n) in &s.latency {
                hist[b as usize] += n as u64;
            }
        }
        let d = n as f64;
        for v in [
            &mut w.read_iops,
            &mut w.write_iops,
            &mut w.units_per_s,
            &mut w.mb_per_s,
            &mut w.throttled_ms_per_s,
            &mut w.capped_per_s,
        ] {
            *v /= d;
        }
        w.iops = w.read_iops + w.write_iops;
        if ios > 0 {
            w.latency_us = Latency {
                mean: lat_sum as f64 / ios as f64 / 1e3,
                p50: percentile(&hist, ios, 0.50),
                p99: percentile(&hist, ios, 0.99),
                p999: percentile(&hist, ios, 0.999),
            };
        }
        w
    }
}

fn percentile(hist: &[u64], total: u64, q: f64) -> f64 {
    let rank = ((total as f64 * q).ceil() as u64).max(1);
    let mut seen = 0;
    for (i, n) in hist.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return bucket_mid(i) as f64 / 1e3;
        }
    }
    0.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(latency_us: u64, units: u32) -> IoRecord {
        IoRecord {
            bytes: 4096,
            write: false,
            units,
            latency_ns: latency_us * 1000,
            throttled_ns: 0,
            capped: false,
        }
    }

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for ns in (0..5_000_000u64).step_by(997) {
            let b = bucket(ns);
            assert!(b >= last);
            last = b;
            let mid = bucket_mid(b) as f64;
            if ns > 100 {
                assert!((mid - ns as f64).abs() / ns as f64 <= 0.2, "{ns} -> {mid}");
            }
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn counters_from_several_threads_add_up() {
        let stats = std::sync::Arc::new(VolStats::default());
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let stats = stats.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        stats.record(&io(100, 2));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let c = stats.counters();
        assert_eq!(
            (c.reads, c.units, c.bytes_read),
            (6000, 12_000, 6000 * 4096)
        );
        assert_eq!(c.latency.iter().map(|&n| n as u64).sum::<u64>(), 6000);
    }

    #[test]
    fn windows_and_percentiles() {
        let stats = VolStats::default();
        let mut h = History::default();
        h.tick(stats.counters(), 0, None);
        for s in 0..12 {
            for i in 0..1000u64 {
                // 1 % of I/Os take 10 ms, the rest 100 µs.
                stats.record(&io(if i % 100 == 0 { 10_000 } else { 100 }, 2));
            }
            h.tick(stats.counters(), 0, None);
            assert_eq!(h.window(LONG).seconds as usize, (s + 1).min(LONG));
        }
        let w = h.window(LONG);
        assert_eq!(w.iops, 1000.0);
        assert_eq!(w.units_per_s, 2000.0);
        assert!((w.mb_per_s - 4.096).abs() < 1e-9);
        assert!((w.latency_us.p50 - 100.0).abs() < 20.0, "{w:?}");
        assert!((w.latency_us.p999 - 10_000.0).abs() < 2000.0, "{w:?}");
        assert!((w.latency_us.mean - 199.0).abs() < 1.0, "{w:?}");
        assert_eq!(h.status(), QosStatus::Ok);
    }

    #[test]
    fn a_bucket_count_that_wraps_still_gives_the_second_its_ios() {
        let stats = VolStats::default();
        let b = bucket(100_000);
        // Every shard's count just below the wrap, as after 2^32 I/Os of one latency.
        for shard in stats.shards.iter() {
            shard.latency[b].store(u32::MAX - 3, Relaxed);
        }
        let mut h = History::default();
        h.tick(stats.counters(), 0, None);
        for _ in 0..100 {
            stats.record(&io(100, 1));
        }
        h.tick(stats.counters(), 0, None);
        let w = h.window(SHORT);
        assert_eq!(w.iops, 100.0);
        assert!((w.latency_us.p50 - 100.0).abs() < 20.0, "{w:?}");
        assert!((w.latency_us.p999 - 100.0).abs() < 20.0, "{w:?}");
    }

    #[test]
    fn an_idle_second_keeps_no_buckets() {
        let stats = VolStats::default();
        let mut h = History::default();
        h.tick(stats.counters(), 0, None);
        stats.record(&io(100, 1));
        stats.record(&io(10_000, 1));
        h.tick(stats.counters(), 0, None);
        h.tick(stats.counters(), 0, None);
        let kept: Vec<usize> = h.seconds.iter().map(|s| s.latency.len()).collect();
        assert_eq!(kept, [2, 0]);
        assert_eq!(h.window(LONG).iops, 1.0);
    }

    #[test]
    fn insufficient_throughput_needs_three_backlogged_short_seconds() {
        let stats = VolStats::default();
        let mut h = History::default();
        let mut backlog = 0;
        h.tick(stats.counters(), backlog, Some(1000));
        for s in 0..3 {
            assert_eq!(h.status(), QosStatus::Ok, "second {s}");
            for _ in 0..500 {
                stats.record(&io(100, 1));
            }
            backlog += 900_000_000;
            h.tick(stats.counters(), backlog, Some(1000));
        }
        assert_eq!(h.status(), QosStatus::InsufficientThroughput);
        // Not backlogged: the client asks for less than its reservation; that is not a
        // shortfall of the array. Two such seconds clear the status.
        for _ in 0..2 {
            h.tick(stats.counters(), backlog, Some(1000));
        }
        assert_eq!(h.status(), QosStatus::Ok);
    }

    #[test]
    fn cap_limited_while_the_cap_delays() {
        let stats = VolStats::default();
        let mut h = History::default();
        h.tick(stats.counters(), 0, None);
        let mut r = io(100, 1);
        r.capped = true;
        r.throttled_ns = 2_000_000;
        stats.record(&r);
        h.tick(stats.counters(), 0, None);
        assert_eq!(h.status(), QosStatus::CapLimited);
        assert_eq!(h.window(SHORT).throttled_ms_per_s, 2.0);
        h.tick(stats.counters(), 0, None);
        assert_eq!(h.status(), QosStatus::Ok);
    }
}
