//! The Prometheus text exposition (format 0.0.4) of a QoS report: cumulative counters a
//! scraper can rate() itself, plus the target's own 1 s / 10 s windows and status as gauges.
//! Rendered from the report, so the standalone control service serves the same text.

use super::{PoolReport, QosReport, VolReport};
use crate::vvol::qos::stats::{QosStatus, Window};
use std::fmt::Write;

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let l: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        let _ = writeln!(self.0, "{name}{{{}}} {value}", l.join(","));
    }

    /// One family with a sample (or several) per volume.
    fn volumes(
        &mut self,
        r: &QosReport,
        (name, kind, help): (&str, &str, &str),
        f: impl Fn(&VolReport) -> Vec<(Vec<(&'static str, &'static str)>, f64)>,
    ) {
        self.family(name, kind, help);
        for v in &r.volumes {
            for (extra, value) in f(v) {
                let mut l = vec![("volume", v.name.as_str()), ("pool", v.pool.as_str())];
                l.extend(extra);
                self.sample(name, &l, value);
            }
        }
    }

    fn pools(&mut self, r: &QosReport, name: &str, help: &str, f: fn(&PoolReport) -> f64) {
        self.family(name, "gauge", help);
        for p in &r.pools {
            self.sample(name, &[("pool", &p.name)], f(p));
        }
    }
}

const STATUSES: [(QosStatus, &str); 3] = [
    (QosStatus::Ok, "Ok"),
    (QosStatus::CapLimited, "CapLimited"),
    (QosStatus::InsufficientThroughput, "InsufficientThroughput"),
];

fn by_window(
    v: &VolReport,
    f: fn(&Window) -> f64,
) -> Vec<(Vec<(&'static str, &'static str)>, f64)> {
    vec![
        (vec![("window", "1s")], f(&v.window_1s)),
        (vec![("window", "10s")], f(&v.window_10s)),
    ]
}

fn by_op(read: u64, write: u64) -> Vec<(Vec<(&'static str, &'static str)>, f64)> {
    vec![
        (vec![("op", "read")], read as f64),
        (vec![("op", "write")], write as f64),
    ]
}

/// Every volume and pool of `r`, as Prometheus text.
pub fn prometheus(r: &QosReport) -> String {
    let mut o = Out(String::new());
    o.volumes(
        r,
        ("vvold_qos_ios_total", "counter", "I/Os completed."),
        |v| by_op(v.reads, v.writes),
    );
    o.volumes(
        r,
        ("vvold_qos_bytes_total", "counter", "Bytes moved."),
        |v| by_op(v.bytes_read, v.bytes_written),
    );
    o.volumes(
        r,
        (
            "vvold_qos_units_total",
            "counter",
            "Normalized units (what the limits count).",
        ),
        |v| vec![(vec![], v.total_units as f64)],
    );
    o.volumes(
        r,
        (
            "vvold_qos_throttled_seconds_total",
            "counter",
            "Time I/Os were held by the cap or waited for a backend slot.",
        ),
        |v| vec![(vec![], v.throttled_seconds)],
    );
    o.volumes(
        r,
        (
            "vvold_qos_limit_iops",
            "gauge",
            "Limits in normalized IOPS (absent: none).",
        ),
        |v| {
            [("upper", v.limits.upper), ("lower", v.limits.lower)]
                .into_iter()
                .filter_map(|(k, l)| Some((vec![("kind", k)], l? as f64)))
                .collect()
        },
    );
    o.volumes(
        r,
        ("vvold_qos_iops", "gauge", "Raw IOPS over the window."),
        |v| by_window(v, |w| w.iops),
    );
    o.volumes(
        r,
        (
            "vvold_qos_units_per_second",
            "gauge",
            "Normalized IOPS over the window.",
        ),
        |v| by_window(v, |w| w.units_per_s),
    );
    o.volumes(
        r,
        (
            "vvold_qos_megabytes_per_second",
            "gauge",
            "MB/s (10^6 bytes) over the window.",
        ),
        |v| by_window(v, |w| w.mb_per_s),
    );
    o.volumes(
        r,
        (
            "vvold_qos_latency_microseconds",
            "gauge",
            "Latency percentiles over the last 10 s.",
        ),
        |v| {
            let l = v.window_10s.latency_us;
            vec![
                (vec![("quantile", "0.5")], l.p50),
                (vec![("quantile", "0.99")], l.p99),
                (vec![("quantile", "0.999")], l.p999),
            ]
        },
    );
    o.volumes(
        r,
        (
            "vvold_qos_status",
            "gauge",
            "1 for the volume's current flow status.",
        ),
        |v| {
            STATUSES
                .iter()
                .map(|(s, n)| (vec![("status", *n)], (v.status == *s) as u8 as f64))
                .collect()
        },
    );
    o.pools(
        r,
        "vvold_qos_pool_window",
        "I/Os the pool lets reach its backend at once.",
        |p| p.window as f64,
    );
    o.pools(
        r,
        "vvold_qos_pool_inflight",
        "I/Os at the backend now.",
        |p| p.inflight as f64,
    );
    o.pools(
        r,
        "vvold_qos_pool_queued",
        "I/Os waiting for a backend slot.",
        |p| p.queued as f64,
    );
    o.pools(
        r,
        "vvold_qos_pool_reservations_iops",
        "Sum of the lower limits in the pool.",
        |p| p.reservations as f64,
    );
    o.pools(
        r,
        "vvold_qos_pool_reservation_lag_seconds",
        "Reservation-clock lag (above 0: the reservations exceed what the pool delivers).",
        |p| p.reservation_lag_ms / 1e3,
    );
    o.family(
        "vvold_qos_pool_units_total",
        "counter",
        "Units dispatched, by arbiter phase.",
    );
    for p in &r.pools {
        for (phase, n) in [
            ("fast", p.fast_units),
            ("reservation", p.reservation_units),
            ("weight", p.weight_units),
        ] {
            o.sample(
                "vvold_qos_pool_units_total",
                &[("pool", &p.name), ("phase", phase)],
                n as f64,
            );
        }
    }
    o.0
}
