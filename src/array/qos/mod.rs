//! Per-volume I/O control wired into the array (issue 5, design study §6).
//!
//! Every volume (a normal LU or a VVol) that the configuration puts under QoS gets one
//! [`VolQos`], shared by all its sessions and paths: its cap (tier 1, a lock-free GCRA) and
//! its place in its pool's arbiter (tier 2). A pool is the capacity volumes compete for: one
//! per storage container (its VVols share the container's backend) and one, `luns`, for the
//! normal LUs. An I/O first waits out its cap on the tokio timer (a 1 ms wheel), then takes
//! one of the pool's window slots, straight away while the pool is not contended, otherwise
//! in the arbiter's order. The arbiter sits behind a mutex, not a dedicated task: it is held
//! for one submit or one completion (tens of ns), and a hand-off to another core would cost
//! more than that on a 2-core box.

use crate::backend::RatedPool;
use crate::scsi::Plan;
use crate::vvol::catalog::IoLimits;
use crate::vvol::qos::stats::{self, History, IoRecord, QosStatus, VolStats, Window};
use crate::vvol::qos::{self as core, Arbiter, CapLimiter, Gate, Offer, PhaseCounts, VolKey};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Monotonic ns since the process's QoS epoch: the clock tiers 1 and 2 share.
pub fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// Array-wide QoS settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QosSettings {
    /// Off: no caps, no arbiter, no per-volume telemetry (the negative control).
    pub enabled: bool,
    /// How far reservation tags may lag before the reservation clock slows.
    pub max_lag: Duration,
}

type Waiter = oneshot::Sender<()>;

/// A scheduling pool: the capacity its volumes share.
pub struct QosPool {
    pub name: String,
    /// Cost normalization: one unit per started `unit_bytes` (0: one per I/O).
    pub unit_bytes: u32,
    /// The window, passed without the arbiter's lock while nothing waits.
    gate: Gate,
    arbiter: Mutex<Arbiter<Waiter>>,
    /// The emulated disk, for a pool of the `rated` backend (its capacity is known).
    pub rated: Option<Arc<RatedPool>>,
}

/// A backend slot held for the duration of one I/O.
/// Borrows its pool: a clone of the pool's `Arc` per I/O bounced its reference count between
/// the network threads twice per I/O.
pub struct Slot<'a>(Option<&'a QosPool>);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Some(pool) = self.0.take() {
            pool.release();
        }
    }
}

impl QosPool {
    /// A slot for an I/O, and whether it had to wait for one.
    async fn acquire(&self, key: VolKey, units: u32) -> (Slot<'_>, bool) {
        // Uncontended, the usual case: no lock, and no waiter to allocate.
        let mut rx = None;
        let waiter = || {
            let (tx, r) = oneshot::channel();
            rx = Some(r);
            tx
        };
        match self.gate.admit(&self.arbiter, now_ns, key, units, waiter) {
            Offer::Go(()) => return (Slot(Some(self)), false),
            Offer::Unknown(()) => return (Slot(None), false),
            Offer::Queued => {}
        }
        // Queued means the gate made the waiter; should it not have, go without a slot.
        debug_assert!(rx.is_some(), "a queued I/O has a waiter");
        let Some(rx) = rx else {
            return (Slot(None), false);
        };
        match rx.await {
            Ok(()) => (Slot(Some(self)), true),
            // The volume left the arbiter while this I/O waited: it goes without a slot.
            Err(_) => (Slot(None), true),
        }
    }

    /// Give a finished I/O's slot back, or to the next queued one; a waiter that went away
    /// passes it on.
    fn release(&self) {
        self.gate
            .release(&self.arbiter, now_ns, |next| next.send(()).is_ok());
    }
}

/// What one I/O costs under QoS: bytes moved, whether it writes, and normalized units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    pub bytes: u64,
    pub write: bool,
    pub units: u32,
}

/// Offloads (WRITE SAME, UNMAP, EXTENDED COPY) are charged one unit per MiB of range: they
/// are what ESXi uses to zero and clone disks, and charging them as 32 KiB I/Os would stall a
/// capped VVol for minutes on one command (design study §8 suggests the same rate for UNMAP).
const OFFLOAD_UNIT: u64 = 1 << 20;

pub fn offload_units(len: u64) -> u32 {
    len.div_ceil(OFFLOAD_UNIT).clamp(1, u32::MAX as u64) as u32
}

/// The charge of a plan that touches the medium; None for plans that do not.
pub fn charge(plan: &Plan, unit_bytes: u32) -> Option<Charge> {
    let io = |len: u32, write| Charge {
        bytes: len as u64,
        write,
        units: core::cost(len, unit_bytes),
    };
    Some(match plan {
        Plan::Read { len, .. } | Plan::Compare { len, .. } => io(*len, false),
        Plan::Write { len, .. } | Plan::CompareAndWrite { len, .. } => io(*len, true),
        Plan::Flush | Plan::LbaStatus { .. } => io(0, false),
        Plan::WriteSame { len, .. } => Charge {
            bytes: *len,
            write: true,
            units: offload_units(*len),
        },
        Plan::Unmap { ranges } => {
            let len = ranges.iter().map(|r| r.1).sum();
            Charge {
                bytes: 0,
                write: true,
                units: offload_units(len),
            }
        }
        Plan::Copy { segments, .. } => {
            let len = segments.iter().map(|s| s.len).sum();
            Charge {
                bytes: len,
                write: true,
                units: offload_units(len),
            }
        }
        Plan::Respond(_) | Plan::Parameters { .. } => return None,
    })
}

/// One volume's QoS state.
pub struct VolQos {
    /// `vvol:<uuid>` or `lun:<target>/<id>`.
    pub name: String,
    pub vvol: Option<uuid::Uuid>,
    pub pool: Arc<QosPool>,
    key: VolKey,
    cap: CapLimiter,
    /// Wakes the I/Os held by the cap when it changes, to rescale their release times.
    cap_changed: tokio::sync::Notify,
    limits: Mutex<IoLimits>,
    stats: VolStats,
    history: Mutex<History>,
}

impl Drop for VolQos {
    fn drop(&mut self) {
        // Queued I/Os (none can remain once the LU is gone, but be safe) go without a slot.
        let mut arb = lock(&self.pool.arbiter);
        let dropped = arb.unregister(self.key);
        self.pool.gate.unqueue(dropped.len() as u32);
    }
}

/// An I/O admitted by QoS: holds its backend slot until [`Admission::finish`].
pub struct Admission<'a> {
    started: u64,
    throttled_ns: u64,
    capped: bool,
    charge: Charge,
    _slot: Slot<'a>,
}

impl VolQos {
    pub fn limits(&self) -> IoLimits {
        *lock(&self.limits)
    }

    /// Change the limits live: the next I/O sees them, and I/Os the old cap holds are
    /// rescheduled at the new one.
    pub fn set_limits(&self, limits: IoLimits) {
        *lock(&self.limits) = limits;
        self.cap.set_cap(now_ns(), limits.upper);
        self.cap_changed.notify_waiters();
        lock(&self.pool.arbiter).set_policy(
            now_ns(),
            self.key,
            limits.lower,
            limits.weight.unwrap_or(1),
        );
    }

    /// Wait until the cap and the pool let an I/O of `charge` go.
    pub async fn admit(&self, charge: Charge) -> Admission<'_> {
        let started = now_ns();
        // Routing warmed the counters' line; the histogram line is known only from it.
        super::warm::prefetch_for_write(self.stats.likely_latency_line());
        let capped = self.wait_cap(started, charge.units).await;
        let (slot, waited) = self.pool.acquire(self.key, charge.units).await;
        Admission {
            started,
            // An I/O that went straight through was not held: no third clock read.
            throttled_ns: if capped || waited {
                now_ns() - started
            } else {
                0
            },
            capped,
            charge,
            _slot: slot,
        }
    }

    /// Wait out the cap for `units`, without a slot of the pool: what an EXTENDED COPY sent
    /// to another LU costs this volume as its source or destination (the copy holds the slot
    /// of the LU it was sent to, and waiting for a second pool's slot while holding one could
    /// deadlock two copies going opposite ways). Not counted in the volume's telemetry.
    pub async fn pace(&self, units: u32) {
        self.wait_cap(now_ns(), units).await;
    }

    /// Admit `units` arriving at `now` to the cap and wait until it lets them go, following
    /// cap changes meanwhile; whether the cap held them at all.
    async fn wait_cap(&self, now: u64, units: u32) -> bool {
        let (release, paced) = self.cap.admit_paced(now, units);
        if release <= now {
            return false;
        }
        self.hold(release, paced).await;
        true
    }

    /// Wait until `release` (paced at `paced` ns per unit), following cap changes meanwhile.
    async fn hold(&self, mut release: u64, mut paced: u64) {
        loop {
            let changed = self.cap_changed.notified();
            tokio::pin!(changed);
            // Registered before looking, so a change after the look wakes this wait; one
            // before it is what the look sees.
            changed.as_mut().enable();
            (release, paced) = self.cap.rescale(now_ns(), release, paced);
            tokio::select! {
                () = tokio::time::sleep_until((epoch() + Duration::from_nanos(release)).into()) => return,
                () = &mut changed => {}
            }
        }
    }

    /// What every I/O reads (the pool, its key, the limiter, where its counters are) and the
    /// counters it completes into.
    pub fn add_warm_lines(&self, w: &mut super::warm::WarmLines) {
        w.add(&self.pool);
        w.add(&self.key);
        w.add(&self.cap);
        w.add(&self.stats);
        let (first, stride) = self.stats.shard_layout();
        w.set_stats(first, stride);
    }

    /// Record the I/O and free its slot.
    pub fn finish(&self, a: Admission<'_>) {
        self.stats.record(&IoRecord {
            bytes: a.charge.bytes,
            write: a.charge.write,
            units: a.charge.units,
            latency_ns: now_ns() - a.started,
            throttled_ns: a.throttled_ns,
            capped: a.capped,
        });
    }

    fn tick(&self, now: u64) {
        let backlog = lock(&self.pool.arbiter).backlogged_ns(self.key, now);
        let lower = self.limits().lower;
        lock(&self.history).tick(self.stats.counters(), backlog, lower);
    }

    pub fn report(&self) -> VolReport {
        let h = lock(&self.history);
        let c = self.stats.counters();
        VolReport {
            name: self.name.clone(),
            vvol: self.vvol,
            pool: self.pool.name.clone(),
            limits: self.limits(),
            status: h.status(),
            window_1s: h.window(stats::SHORT),
            window_10s: h.window(stats::LONG),
            reads: c.reads,
            writes: c.writes,
            total_units: c.units,
            bytes_read: c.bytes_read,
            bytes_written: c.bytes_written,
            capped: c.capped,
            throttled_seconds: c.throttled_ns as f64 / 1e9,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VolReport {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vvol: Option<uuid::Uuid>,
    pub pool: String,
    pub limits: IoLimits,
    pub status: QosStatus,
    pub window_1s: Window,
    pub window_10s: Window,
    pub reads: u64,
    pub writes: u64,
    pub total_units: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// I/Os the cap delayed.
    pub capped: u64,
    pub throttled_seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolReport {
    pub name: String,
    pub unit_bytes: u32,
    pub window: u32,
    pub inflight: u32,
    pub queued: usize,
    /// Sum of the lower limits of its volumes.
    pub reservations: u64,
    /// Units per second the pool's backend delivers, where known (rated backend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u32>,
    /// Reservation-clock lag: above zero when the reservations exceed what the pool does.
    pub reservation_lag_ms: f64,
    /// Units dispatched per phase since start.
    pub fast_units: u64,
    pub reservation_units: u64,
    pub weight_units: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QosReport {
    pub enabled: bool,
    pub pools: Vec<PoolReport>,
    pub volumes: Vec<VolReport>,
}

/// The array's QoS: its pools and volumes, and the once-a-second telemetry.
pub struct Qos {
    settings: QosSettings,
    pools: Mutex<BTreeMap<String, Arc<QosPool>>>,
    volumes: Mutex<Vec<Weak<VolQos>>>,
}

impl Qos {
    pub fn new(settings: QosSettings) -> Qos {
        Qos {
            settings,
            pools: Mutex::new(BTreeMap::new()),
            volumes: Mutex::new(Vec::new()),
        }
    }

    /// Create the pool `name` (the first call decides its settings; `rated` builds its
    /// emulated disk, if any) or return it.
    pub fn pool(
        &self,
        name: &str,
        window: u32,
        unit_bytes: u32,
        rated: impl FnOnce() -> Option<Arc<RatedPool>>,
    ) -> Arc<QosPool> {
        lock(&self.pools)
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(QosPool {
                    name: name.to_string(),
                    unit_bytes,
                    gate: Gate::new(window),
                    arbiter: Mutex::new(Arbiter::new(self.settings.max_lag.as_nanos() as u64)),
                    rated: rated(),
                })
            })
            .clone()
    }

    /// A volume under QoS in `pool`, or None when QoS is off.
    pub fn volume(
        &self,
        name: String,
        vvol: Option<uuid::Uuid>,
        pool: &Arc<QosPool>,
        limits: IoLimits,
    ) -> Option<Arc<VolQos>> {
        if !self.settings.enabled {
            return None;
        }
        let key = lock(&pool.arbiter).register(limits.lower, limits.weight.unwrap_or(1));
        let v = Arc::new(VolQos {
            name,
            vvol,
            pool: pool.clone(),
            key,
            cap: CapLimiter::new(limits.upper),
            cap_changed: tokio::sync::Notify::new(),
            limits: Mutex::new(limits),
            stats: VolStats::default(),
            history: Mutex::new(History::default()),
        });
        lock(&self.volumes).push(Arc::downgrade(&v));
        Some(v)
    }

    fn live_volumes(&self) -> Vec<Arc<VolQos>> {
        let mut vols = lock(&self.volumes);
        vols.retain(|w| w.strong_count() > 0);
        vols.iter().filter_map(Weak::upgrade).collect()
    }

    /// Close one telemetry second (called once a second).
    pub fn tick(&self) {
        let now = now_ns();
        for v in self.live_volumes() {
            v.tick(now);
        }
    }

    /// Close a telemetry second every second, for as long as the process runs.
    pub async fn run_telemetry(self: Arc<Self>) {
        let mut t = tokio::time::interval(Duration::from_secs(1));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            t.tick().await;
            self.tick();
        }
    }

    pub fn report(&self) -> QosReport {
        let volumes: Vec<VolReport> = self.live_volumes().iter().map(|v| v.report()).collect();
        let pools = lock(&self.pools)
            .values()
            .map(|p| {
                let arb = lock(&p.arbiter);
                let PhaseCounts {
                    reservation,
                    weight,
                    ..
                } = arb.counts();
                let (inflight, queued) = p.gate.load();
                PoolReport {
                    name: p.name.clone(),
                    unit_bytes: p.unit_bytes,
                    window: p.gate.window(),
                    inflight,
                    queued: queued as usize,
                    reservations: volumes
                        .iter()
                        .filter(|v| v.pool == p.name)
                        .filter_map(|v| v.limits.lower)
                        .map(u64::from)
                        .sum(),
                    capacity: p.rated.as_ref().map(|r| r.capacity()),
                    reservation_lag_ms: arb.reservation_lag_ns() as f64 / 1e6,
                    fast_units: p.gate.fast_units(),
                    reservation_units: reservation,
                    weight_units: weight,
                }
            })
            .collect();
        QosReport {
            enabled: self.settings.enabled,
            pools,
            volumes,
        }
    }
}

mod metrics;
pub use metrics::prometheus;
#[cfg(test)]
mod tests;
