//! Tier 2: who gets the next backend slot when the pool's in-flight window is full. A dual-tag
//! (mClock) arbiter as `shared/reference/qos-design-study.md` §6.3 recommends:
//!
//! - Reservation phase: the volume whose reservation tag (R) is due on the reservation clock
//!   is served first, earliest tag first. R advances by cost/R per I/O, so a backlogged volume
//!   below its lower limit gets exactly that limit.
//! - Weight phase: otherwise the smallest proportional tag (P) goes; P advances by cost/weight,
//!   so spare capacity is shared by weight (start-time fair queuing).
//! - Debt clamp: a dispatch sets the previous R tag to min(head R, reservation clock), so
//!   weight-phase service repays a deficit but never lets R run ahead of the clock (which
//!   would make the volume lose its reservation later).
//! - Bounded-lag reservation clock: when the reservations add up to more than the backend
//!   does, the earliest R tag falls behind; the clock is then slowed (`r_shift` grows) so it
//!   is never more than `max_lag` behind. All R tags then advance together, which is what
//!   makes over-committed reservations share in proportion to their lower limits.
//! - Tags restart when a volume becomes backlogged, so idle time earns nothing.
//!
//! The in-flight window itself is kept by [`super::Gate`], without a lock: while nothing is
//! queued and the window has room an I/O goes straight through with no tag bookkeeping (tags
//! only matter under contention, and they restart on activation), and a completion hands its
//! slot to the next queued I/O rather than freeing it, so arrivals cannot overtake waiters.
//!
//! Pure and single-owner: the caller serialises access and supplies the clock.

use super::heap::IndexedHeap;
use std::collections::VecDeque;

/// Scale of proportional tags: one unit at weight 1 advances P by this much.
const P_SCALE: u64 = 1 << 20;

/// A volume registered with an arbiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VolKey(pub usize);

/// Which phase served a queued I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Reservation,
    Weight,
}

/// Units served per phase, for telemetry (the dmClock simulator reports the same split).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PhaseCounts {
    pub reservation: u64,
    pub weight: u64,
}

struct Vol<T> {
    live: bool,
    /// ns of reservation clock per unit (1e9 / lower); 0 = no reservation.
    r_per_unit: u64,
    p_per_unit: u64,
    prev_r: u64,
    prev_p: u64,
    head_r: u64,
    head_p: u64,
    /// Reservation clock when the volume last became backlogged.
    active_since: u64,
    queue: VecDeque<(T, u32)>,
    /// Real time spent backlogged, for `InsufficientThroughput`.
    backlog_ns: u64,
    backlog_since: Option<u64>,
}

impl<T> Vol<T> {
    fn new(lower: Option<u32>, weight: u32) -> Vol<T> {
        let mut v = Vol {
            live: true,
            r_per_unit: 0,
            p_per_unit: 0,
            prev_r: 0,
            prev_p: 0,
            head_r: 0,
            head_p: 0,
            active_since: 0,
            queue: VecDeque::new(),
            backlog_ns: 0,
            backlog_since: None,
        };
        v.set_policy(lower, weight);
        v
    }

    fn set_policy(&mut self, lower: Option<u32>, weight: u32) {
        self.r_per_unit = lower
            .filter(|r| *r > 0)
            .map_or(0, |r| 1_000_000_000 / r as u64);
        self.p_per_unit = P_SCALE / weight.max(1) as u64;
    }
}

/// One pool's arbiter; `T` is whatever the caller needs to release a queued I/O.
pub struct Arbiter<T> {
    vols: Vec<Vol<T>>,
    free: Vec<usize>,
    rheap: IndexedHeap,
    pheap: IndexedHeap,
    /// How far the reservation clock runs behind real time.
    r_shift: u64,
    /// Start tag of the last weight-phase dispatch: where newly backlogged volumes start.
    vtime: u64,
    max_lag: u64,
    queued: usize,
    counts: PhaseCounts,
}

impl<T> Arbiter<T> {
    /// An arbiter whose reservation tags may lag the clock by at most `max_lag_ns`.
    pub fn new(max_lag_ns: u64) -> Arbiter<T> {
        Arbiter {
            vols: Vec::new(),
            free: Vec::new(),
            rheap: IndexedHeap::default(),
            pheap: IndexedHeap::default(),
            r_shift: 0,
            vtime: 0,
            max_lag: max_lag_ns,
            queued: 0,
            counts: PhaseCounts::default(),
        }
    }

    pub fn register(&mut self, lower: Option<u32>, weight: u32) -> VolKey {
        let v = Vol::new(lower, weight);
        match self.free.pop() {
            Some(i) => {
                self.vols[i] = v;
                VolKey(i)
            }
            None => {
                self.vols.push(v);
                VolKey(self.vols.len() - 1)
            }
        }
    }

    /// Forget a volume; returns the I/Os it still had queued (the caller releases them
    /// without a slot).
    pub fn unregister(&mut self, key: VolKey) -> Vec<T> {
        let Some(v) = self.vols.get_mut(key.0).filter(|v| v.live) else {
            return Vec::new();
        };
        v.live = false;
        let items: Vec<T> = v.queue.drain(..).map(|(t, _)| t).collect();
        self.queued -= items.len();
        self.rheap.remove(key.0);
        self.pheap.remove(key.0);
        self.free.push(key.0);
        items
    }

    /// Change a volume's reservation and weight; queued I/Os keep their place.
    pub fn set_policy(&mut self, now: u64, key: VolKey, lower: Option<u32>, weight: u32) {
        let vr = self.clock(now);
        let Some(v) = self.vols.get_mut(key.0).filter(|v| v.live) else {
            return;
        };
        v.set_policy(lower, weight);
        if v.r_per_unit == 0 {
            self.rheap.remove(key.0);
        } else if !v.queue.is_empty() && !self.rheap.contains(key.0) {
            v.head_r = vr;
            v.active_since = vr;
            self.rheap.set(key.0, vr);
        }
    }

    pub fn queued(&self) -> usize {
        self.queued
    }

    /// How far behind real time the reservation clock runs: above zero only when the
    /// reservations add up to more than the backend delivers.
    pub fn reservation_lag_ns(&self) -> u64 {
        self.r_shift
    }

    pub fn counts(&self) -> PhaseCounts {
        self.counts
    }

    /// Total real time `key` has spent with I/Os queued, up to `now`.
    pub fn backlogged_ns(&self, key: VolKey, now: u64) -> u64 {
        self.vols.get(key.0).map_or(0, |v| {
            v.backlog_ns + v.backlog_since.map_or(0, |s| now.saturating_sub(s))
        })
    }

    fn clock(&self, now: u64) -> u64 {
        now.saturating_sub(self.r_shift)
    }

    /// Queue an I/O of `cost` units for `key` (the window is full or others wait: see
    /// [`super::Gate::offer`]). Gives the item back for an unknown volume.
    pub fn enqueue(&mut self, now: u64, key: VolKey, cost: u32, item: T) -> Result<(), T> {
        if !self.vols.get(key.0).is_some_and(|v| v.live) {
            return Err(item);
        }
        let v = &mut self.vols[key.0];
        v.queue.push_back((item, cost));
        self.queued += 1;
        if v.queue.len() == 1 {
            self.activate(now, key.0, cost);
        }
        Ok(())
    }

    fn activate(&mut self, now: u64, k: usize, cost: u32) {
        let vr = self.clock(now);
        let vtime = self.vtime;
        let v = &mut self.vols[k];
        v.active_since = vr;
        v.backlog_since = Some(now);
        if v.r_per_unit > 0 {
            v.head_r = (v.prev_r + cost as u64 * v.r_per_unit).max(vr);
            self.rheap.set(k, v.head_r);
        }
        v.head_p = v.prev_p.max(vtime);
        self.pheap.set(k, v.head_p);
    }

    /// The queued I/O that goes next (by the reservation and weight tags), if any.
    pub fn next(&mut self, now: u64) -> Option<T> {
        self.dequeue(now).map(|(t, _)| t)
    }

    /// Move the reservation clock: slow it when the earliest R tag lags by more than
    /// `max_lag` (over-commitment), let it catch up with real time when no R tag is due.
    fn adjust_clock(&mut self, now: u64) -> u64 {
        let vr = self.clock(now);
        if let Some((top, _)) = self.rheap.peek() {
            if top + self.max_lag < vr {
                self.r_shift += vr - self.max_lag - top;
            } else if top > vr && self.r_shift > 0 {
                self.r_shift -= self.r_shift.min(top - vr);
            }
        }
        self.clock(now)
    }

    fn dequeue(&mut self, now: u64) -> Option<(T, Phase)> {
        let vr = self.adjust_clock(now);
        let (k, phase) = match self.rheap.peek() {
            Some((tag, k)) if tag <= vr => (k, Phase::Reservation),
            _ => (self.pheap.peek()?.1, Phase::Weight),
        };
        let max_lag = self.max_lag;
        let v = &mut self.vols[k];
        let (item, cost) = v.queue.pop_front()?;
        self.queued -= 1;
        if v.r_per_unit > 0 {
            v.prev_r = v.head_r.min(vr);
        }
        v.prev_p = v.head_p + cost as u64 * v.p_per_unit;
        if phase == Phase::Weight {
            self.vtime = self.vtime.max(v.head_p);
        }
        match v.queue.front() {
            Some(&(_, next)) => {
                if v.r_per_unit > 0 {
                    let floor = v.active_since.max(vr.saturating_sub(max_lag));
                    v.head_r = (v.prev_r + next as u64 * v.r_per_unit).max(floor);
                    self.rheap.set(k, v.head_r);
                }
                v.head_p = v.prev_p;
                self.pheap.set(k, v.head_p);
            }
            None => {
                self.rheap.remove(k);
                self.pheap.remove(k);
                if let Some(s) = v.backlog_since.take() {
                    v.backlog_ns += now.saturating_sub(s);
                }
            }
        }
        match phase {
            Phase::Reservation => self.counts.reservation += cost as u64,
            _ => self.counts.weight += cost as u64,
        }
        Some((item, phase))
    }
}

#[cfg(test)]
mod tests;
