//! The arbiter in virtual time: a backend of fixed capacity with a jittered service time and
//! closed-loop volumes, as in the design study's simulation (§5). These are the CI gates for
//! the reservation scenarios (A4, A5, A6); the end-to-end runs are `scripts/qos-check.sh`.

use super::*;
use crate::vvol::qos::{Gate, Offer};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Mutex;

const S: u64 = 1_000_000_000;

#[derive(Clone, Copy)]
struct SimVol {
    qd: u32,
    lower: Option<u32>,
    weight: u32,
    cost: u32,
}

fn vol(qd: u32, lower: Option<u32>) -> SimVol {
    SimVol {
        qd,
        lower,
        weight: 1,
        cost: 1,
    }
}

struct Sim {
    /// The window in front of the arbiter, driven as the pools drive it.
    gate: Gate,
    arb: Mutex<Arbiter<usize>>,
    keys: Vec<VolKey>,
    vols: Vec<SimVol>,
    done: BinaryHeap<Reverse<(u64, usize)>>,
    rng: u64,
    window: u32,
    /// Capacity in units per second, possibly changing at a given time.
    capacity: Vec<(u64, u64)>,
    /// QoS off: no arbiter, the backend's own FIFO queue in front of its window.
    fifo: Option<(VecDeque<usize>, u32)>,
}

impl Sim {
    fn new(vols: &[SimVol], capacity: u64, window: u32, qos: bool) -> Sim {
        let mut arb = Arbiter::new(500_000_000);
        let keys = vols
            .iter()
            .map(|v| {
                if qos {
                    arb.register(v.lower, v.weight)
                } else {
                    arb.register(None, 1)
                }
            })
            .collect();
        Sim {
            gate: Gate::new(window),
            arb: Mutex::new(arb),
            keys,
            vols: vols.to_vec(),
            done: BinaryHeap::new(),
            rng: 0x2545_F491_4F6C_DD1D,
            window,
            capacity: vec![(0, capacity)],
            fifo: (!qos).then(|| (VecDeque::new(), 0)),
        }
    }

    /// Dispatch `v` now, or queue it; returns whether it went.
    fn admit(&mut self, now: u64, v: usize) -> Option<usize> {
        let cost = self.vols[v].cost;
        match &mut self.fifo {
            None => offer(&self.gate, &self.arb, now, self.keys[v], cost, v),
            Some((q, inflight)) if *inflight < self.window && q.is_empty() => {
                *inflight += 1;
                Some(v)
            }
            Some((q, _)) => {
                q.push_back(v);
                None
            }
        }
    }

    fn release(&mut self, now: u64) -> Option<usize> {
        match &mut self.fifo {
            None => finish(&self.gate, &self.arb, now),
            Some((q, inflight)) => {
                let next = q.pop_front();
                if next.is_none() {
                    *inflight -= 1;
                }
                next
            }
        }
    }

    fn service(&mut self, now: u64, cost: u32) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let jitter = 0.5 + (self.rng % 1000) as f64 / 1000.0;
        let c = self
            .capacity
            .iter()
            .rev()
            .find(|(t, _)| *t <= now)
            .map_or(1, |(_, c)| *c);
        (self.window as f64 * cost as f64 * S as f64 / c as f64 * jitter) as u64
    }

    fn issue(&mut self, now: u64, v: usize) {
        let cost = self.vols[v].cost;
        if let Some(v) = self.admit(now, v) {
            let t = now + self.service(now, cost);
            self.done.push(Reverse((t, v)));
        }
    }

    /// Units completed per volume in each 1 s window from `warmup` to `end`.
    fn run(&mut self, warmup: u64, end: u64) -> Vec<Vec<u64>> {
        let mut per_sec = vec![vec![0u64; ((end - warmup) / S) as usize]; self.vols.len()];
        for v in 0..self.vols.len() {
            for _ in 0..self.vols[v].qd {
                self.issue(0, v);
            }
        }
        while let Some(Reverse((t, v))) = self.done.pop() {
            if t >= end {
                break;
            }
            if t >= warmup {
                per_sec[v][((t - warmup) / S) as usize] += self.vols[v].cost as u64;
            }
            if let Some(next) = self.release(t) {
                let cost = self.vols[next].cost;
                let done = t + self.service(t, cost);
                self.done.push(Reverse((done, next)));
            }
            self.issue(t, v);
        }
        per_sec
    }
}

fn mean(w: &[u64]) -> f64 {
    w.iter().sum::<u64>() as f64 / w.len() as f64
}

#[test]
fn a4_reservation_holds_against_seven_noisy_neighbours() {
    // C = 20k units/s, R = 5000 (25 %), 7 unlimited neighbours at QD 64.
    let mut vols = vec![vol(32, Some(5000))];
    vols.extend(std::iter::repeat_n(vol(64, None), 7));
    let w = Sim::new(&vols, 20_000, 32, true).run(2 * S, 22 * S);
    for (i, n) in w[0].iter().enumerate() {
        assert!(*n as f64 >= 0.95 * 5000.0, "second {i}: {n} ({:?})", w[0]);
    }
    assert!(mean(&w[0]) >= 0.98 * 5000.0, "{:?}", w[0]);
    // Negative control: with QoS off (one FIFO) the same load gets a fraction of R.
    let w = Sim::new(&vols, 20_000, 32, false).run(2 * S, 12 * S);
    assert!(mean(&w[0]) < 0.5 * 5000.0, "{:?}", w[0]);
}

#[test]
fn a5_overcommitted_reservations_share_in_proportion() {
    // ΣR = 2C with R in 1:2:3:4.
    let vols: Vec<SimVol> = (1..=4).map(|k| vol(64, Some(k * 4000))).collect();
    let w = Sim::new(&vols, 20_000, 32, true).run(2 * S, 22 * S);
    let total: f64 = w.iter().map(|v| mean(v)).sum();
    assert!((total - 20_000.0).abs() < 0.02 * 20_000.0, "{total}");
    for (k, v) in w.iter().enumerate() {
        let want = 20_000.0 * (k + 1) as f64 / 10.0;
        let got = mean(v);
        assert!(
            (got - want).abs() <= 0.03 * want,
            "vol {k}: {got} vs {want}"
        );
    }
}

#[test]
fn spare_capacity_is_shared_by_weight() {
    let mut a = vol(64, None);
    a.weight = 3;
    let b = vol(64, None);
    let w = Sim::new(&[a, b], 20_000, 32, true).run(2 * S, 12 * S);
    let ratio = mean(&w[0]) / mean(&w[1]);
    assert!((ratio - 3.0).abs() < 0.1, "{ratio}");
}

#[test]
fn a6_reservations_recover_when_capacity_drops() {
    // C steps 40k -> 12k at 10 s; R = 6k + 4k plus two noisy neighbours.
    let vols = [
        vol(64, Some(6000)),
        vol(64, Some(4000)),
        vol(64, None),
        vol(64, None),
    ];
    let mut sim = Sim::new(&vols, 40_000, 32, true);
    sim.capacity.push((10 * S, 12_000));
    let w = sim.run(S, 21 * S);
    // From two seconds after the drop on, every second meets both reservations.
    for s in 11..20 {
        assert!(w[0][s] as f64 >= 0.98 * 6000.0, "second {s}: {:?}", w[0]);
        assert!(w[1][s] as f64 >= 0.98 * 4000.0, "second {s}: {:?}", w[1]);
    }
}

#[test]
fn large_ios_are_charged_by_cost() {
    // A 256 KiB sequential stream (8 units) and a 4 KiB one at equal weight get equal units.
    let mut big = vol(32, None);
    big.cost = 8;
    let w = Sim::new(&[big, vol(64, None)], 20_000, 32, true).run(2 * S, 12 * S);
    let ratio = mean(&w[0]) / mean(&w[1]);
    assert!((ratio - 1.0).abs() < 0.05, "{ratio}");
}

/// An I/O arriving at the pool, as `QosPool::acquire` offers it: the item back if it may go.
fn offer<T>(
    gate: &Gate,
    arb: &Mutex<Arbiter<T>>,
    now: u64,
    key: VolKey,
    cost: u32,
    item: T,
) -> Option<T>
where
    T: Clone,
{
    match gate.admit(arb, || now, key, cost, || item.clone()) {
        Offer::Go(()) | Offer::Unknown(()) => Some(item),
        Offer::Queued => None,
    }
}

/// An I/O finishing, as `QosPool::release` does: the queued I/O its slot passes to.
fn finish<T>(gate: &Gate, arb: &Mutex<Arbiter<T>>, now: u64) -> Option<T> {
    let mut next = None;
    gate.release(
        arb,
        || now,
        |item| {
            next = Some(item);
            true
        },
    );
    next
}

#[test]
fn fast_path_until_the_window_is_full() {
    let (g, a) = (Gate::new(2), Mutex::new(Arbiter::<u32>::new(S)));
    let k = a.lock().unwrap().register(Some(100), 1);
    assert_eq!(offer(&g, &a, 0, k, 1, 1), Some(1));
    assert_eq!(offer(&g, &a, 0, k, 1, 2), Some(2));
    assert_eq!(offer(&g, &a, 0, k, 1, 3), None);
    assert_eq!(a.lock().unwrap().queued(), 1);
    // The completion hands its slot straight to the queued I/O.
    assert_eq!(finish(&g, &a, 10), Some(3));
    assert_eq!(g.load(), (2, 0));
    assert_eq!(finish(&g, &a, 20), None);
    assert_eq!(finish(&g, &a, 30), None);
    assert_eq!(g.load(), (0, 0));
    assert_eq!(g.fast_units(), 2);
}

#[test]
fn unregister_releases_queued_ios_and_slots_pass_on() {
    let (g, a) = (Gate::new(1), Mutex::new(Arbiter::<u32>::new(S)));
    let k = a.lock().unwrap().register(None, 1);
    let j = a.lock().unwrap().register(Some(50), 2);
    assert_eq!(offer(&g, &a, 0, k, 1, 1), Some(1));
    assert_eq!(offer(&g, &a, 0, k, 1, 2), None);
    assert_eq!(offer(&g, &a, 0, j, 1, 3), None);
    let dropped = a.lock().unwrap().unregister(k);
    assert_eq!(dropped, vec![2]);
    g.unqueue(dropped.len() as u32);
    // The one in flight finishes: its slot goes to the other volume's queued I/O.
    assert_eq!(finish(&g, &a, 5), Some(3));
    assert_eq!(finish(&g, &a, 5), None);
    a.lock().unwrap().set_policy(6, j, None, 1);
    assert!(a.lock().unwrap().backlogged_ns(j, 6) >= 5);
    // An unknown volume is never held, even with the window full.
    assert_eq!(offer(&g, &a, 7, k, 1, 8), Some(8));
    assert_eq!(offer(&g, &a, 7, k, 1, 9), Some(9));
    assert_eq!(g.load(), (1, 0));
}
