//! A fixed-bucket log-linear latency histogram: exact below 64 ns, then 32 sub-buckets per power
//! of two (a bucket is at most 1/32 ≈ 3% wide), up to 2^40 ns. Recording is a few instructions
//! and no allocation; histograms of several sessions merge by adding counts.

const SUB_BITS: u32 = 5;
const SUB: usize = 1 << SUB_BITS;
/// Values at or above 2^MAX_BITS ns (about 18 minutes) land in the last bucket.
const MAX_BITS: u32 = 40;
const BUCKETS: usize = (MAX_BITS - SUB_BITS) as usize * SUB + SUB;

#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64; BUCKETS]>,
    total: u64,
    sum_ns: u128,
    max_ns: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Histogram(n={}, mean={:.0}ns, max={}ns)",
            self.total,
            self.mean_ns(),
            self.max_ns
        )
    }
}

fn index(v: u64) -> usize {
    if v < 2 * SUB as u64 {
        return v as usize;
    }
    let e = 63 - v.leading_zeros();
    if e >= MAX_BITS {
        return BUCKETS - 1;
    }
    let shift = e - SUB_BITS;
    let mantissa = (v >> shift) as usize; // in [SUB, 2*SUB)
    (shift as usize + 1) * SUB + mantissa - SUB
}

/// The smallest value that lands in bucket `i`.
fn lower_bound(i: usize) -> u64 {
    if i < 2 * SUB {
        return i as u64;
    }
    let shift = (i / SUB - 1) as u32;
    let mantissa = (i % SUB + SUB) as u64;
    mantissa << shift
}

impl Histogram {
    pub fn new() -> Histogram {
        Histogram {
            counts: Box::new([0; BUCKETS]),
            total: 0,
            sum_ns: 0,
            max_ns: 0,
        }
    }

    #[inline]
    pub fn record(&mut self, ns: u64) {
        self.counts[index(ns)] += 1;
        self.total += 1;
        self.sum_ns += ns as u128;
        self.max_ns = self.max_ns.max(ns);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
        self.sum_ns += other.sum_ns;
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn mean_ns(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum_ns as f64 / self.total as f64
        }
    }

    pub fn max_ns(&self) -> u64 {
        self.max_ns
    }

    /// The value below which `q` (0..=1) of the samples lie: the middle of the bucket holding
    /// the sample of rank ceil(q·n), never above the largest sample seen. 0 when empty.
    pub fn quantile_ns(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let lo = lower_bound(i);
                let hi = if i + 1 < BUCKETS {
                    lower_bound(i + 1)
                } else {
                    lo
                };
                let mid = lo + (hi - lo) / 2;
                return mid.min(self.max_ns);
            }
        }
        self.max_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut values: Vec<u64> = (0..5000u64)
            .chain((1..64).map(|e| 1u64 << e))
            .chain((1..64).map(|e| (1u64 << e) - 1))
            .chain([u64::MAX])
            .collect();
        values.sort_unstable();
        let mut last = 0;
        for v in values {
            let i = index(v);
            assert!(i < BUCKETS);
            assert!(lower_bound(i) <= v || i == BUCKETS - 1, "v={v} i={i}");
            if i + 1 < BUCKETS {
                assert!(v < lower_bound(i + 1), "v={v} i={i}");
                // Relative width at most 1/32 above the exact range.
                let w = lower_bound(i + 1) - lower_bound(i);
                assert!(v < 64 || w * 32 <= lower_bound(i), "v={v} w={w}");
            }
            assert!(i >= last, "v={v}");
            last = i;
        }
    }

    #[test]
    fn percentiles_of_a_uniform_spread() {
        let mut h = Histogram::new();
        for v in 1..=10_000u64 {
            h.record(v * 1000); // 1 µs .. 10 ms
        }
        assert_eq!(h.count(), 10_000);
        let near = |got: u64, want: u64| {
            let err = (got as f64 - want as f64).abs() / want as f64;
            assert!(err < 0.035, "got {got}, want ~{want}");
        };
        near(h.quantile_ns(0.5), 5_000_000);
        near(h.quantile_ns(0.99), 9_900_000);
        near(h.quantile_ns(0.999), 9_990_000);
        near(h.mean_ns() as u64, 5_000_500);
        assert!(h.quantile_ns(1.0) <= 10_000_000);
    }

    #[test]
    fn small_values_are_exact_and_outliers_show_in_the_tail() {
        let mut h = Histogram::new();
        for _ in 0..998 {
            h.record(40);
        }
        h.record(1_000_000);
        h.record(2_000_000);
        assert_eq!(h.quantile_ns(0.5), 40);
        assert_eq!(h.quantile_ns(0.99), 40);
        let p999 = h.quantile_ns(0.999);
        assert!((970_000..=1_031_250).contains(&p999), "{p999}");
        assert_eq!(h.quantile_ns(1.0), 2_000_000);
        assert_eq!(h.max_ns(), 2_000_000);
    }

    #[test]
    fn merge_adds_and_empty_is_zero() {
        let mut a = Histogram::new();
        let mut b = Histogram::new();
        assert_eq!(a.quantile_ns(0.5), 0);
        a.record(100);
        b.record(300);
        b.record(300);
        a.merge(&b);
        assert_eq!(a.count(), 3);
        assert!((a.mean_ns() - 233.33).abs() < 0.1);
        assert!(a.quantile_ns(0.5) >= 290);
    }
}
