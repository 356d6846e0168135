//! The lock-free front of a pool's arbiter: its in-flight window and the number of queued
//! I/Os in one atomic word.
//!
//! While nothing waits and the window has room, an I/O enters and leaves with one
//! compare-and-swap each, without the arbiter's lock. The arbiter (and its lock) is needed only
//! once the window is full: queueing, and handing a finishing I/O's slot to the next queued
//! one. Two network threads taking and releasing the lock for every I/O of a shared pool had
//! cost about 4 % of the null backend's IOPS (qos-check A9).
//!
//! The queued count changes only under the arbiter's lock, so it always equals what the
//! arbiter holds; the in-flight count changes on both paths, always by compare-and-swap against
//! the queued count seen in the same word, so an I/O never enters past a waiter and a slot is
//! never dropped while one waits.

use super::{Arbiter, VolKey};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// In-flight I/Os in the low half, queued ones in the high half.
pub struct Gate {
    word: AtomicU64,
    window: u32,
    /// Units admitted without queueing (telemetry).
    fast_units: AtomicU64,
}

/// What a finishing I/O (holding the arbiter's lock) does with its slot.
#[derive(Debug, PartialEq, Eq)]
pub enum Leave {
    /// Nothing waits: the slot is free again.
    Freed,
    /// A queued I/O takes the slot over: the caller must hand it the next one from the
    /// arbiter.
    HandOver,
}

/// What became of an I/O offered with the arbiter's lock held.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer<T> {
    /// It took a slot: it may go.
    Go(T),
    /// It waits in the arbiter for a finishing I/O to pass its slot on.
    Queued,
    /// Its volume is not registered: it goes without a slot (never held hostage to a
    /// bookkeeping slip).
    Unknown(T),
}

const LOW: u64 = 0xFFFF_FFFF;

fn split(w: u64) -> (u32, u32) {
    ((w & LOW) as u32, (w >> 32) as u32)
}

fn join(inflight: u32, queued: u32) -> u64 {
    (queued as u64) << 32 | inflight as u64
}

impl Gate {
    /// A gate letting `window` I/Os (at least one) in at once.
    pub fn new(window: u32) -> Gate {
        Gate {
            word: AtomicU64::new(0),
            window: window.max(1),
            fast_units: AtomicU64::new(0),
        }
    }

    pub fn window(&self) -> u32 {
        self.window
    }

    /// (in flight, queued) at this instant.
    pub fn load(&self) -> (u32, u32) {
        split(self.word.load(Ordering::Acquire))
    }

    pub fn fast_units(&self) -> u64 {
        self.fast_units.load(Ordering::Relaxed)
    }

    /// Change the word by `f` (None: leave it and return None) with compare-and-swap.
    fn update(&self, f: impl Fn(u32, u32) -> Option<(u32, u32)>) -> Option<(u32, u32)> {
        let mut cur = self.word.load(Ordering::Acquire);
        loop {
            let (i, q) = split(cur);
            let (ni, nq) = f(i, q)?;
            match self.word.compare_exchange_weak(
                cur,
                join(ni, nq),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some((i, q)),
                Err(seen) => cur = seen,
            }
        }
    }

    /// Take a slot for an I/O of `units` if nothing waits and the window has room.
    pub fn try_enter(&self, units: u32) -> bool {
        let entered = self
            .update(|i, q| (q == 0 && i < self.window).then_some((i + 1, q)))
            .is_some();
        if entered {
            self.fast_units.fetch_add(units as u64, Ordering::Relaxed);
        }
        entered
    }

    /// With the arbiter's lock held: take a slot as [`Gate::try_enter`] would, or else count
    /// the I/O as queued (true: it entered; false: the caller queues it in the arbiter).
    pub fn enter_or_queue(&self, units: u32) -> bool {
        let before = self.update(|i, q| {
            Some(if q == 0 && i < self.window {
                (i + 1, q)
            } else {
                (i, q + 1)
            })
        });
        let entered = before.is_some_and(|(i, q)| q == 0 && i < self.window);
        if entered {
            self.fast_units.fetch_add(units as u64, Ordering::Relaxed);
        }
        entered
    }

    /// An I/O arriving at the pool: a slot at once while nothing waits and the window has room
    /// (no lock, and `waiter` is never called); otherwise, under `arb`'s lock, a slot or a
    /// place in its queue for what `waiter` makes. `now` is read only on that slow path.
    pub fn admit<T>(
        &self,
        arb: &Mutex<Arbiter<T>>,
        now: impl FnOnce() -> u64,
        key: VolKey,
        units: u32,
        waiter: impl FnOnce() -> T,
    ) -> Offer<()> {
        if self.try_enter(units) {
            return Offer::Go(());
        }
        match self.offer(&mut lock(arb), now(), key, units, waiter()) {
            Offer::Go(_) => Offer::Go(()),
            Offer::Queued => Offer::Queued,
            Offer::Unknown(_) => Offer::Unknown(()),
        }
    }

    /// An I/O finishing: its slot is freed (no lock while nothing waits), or handed to the next
    /// queued I/O that `deliver` takes (false: that waiter went away; the slot passes on).
    pub fn release<T>(
        &self,
        arb: &Mutex<Arbiter<T>>,
        now: impl FnOnce() -> u64,
        mut deliver: impl FnMut(T) -> bool,
    ) {
        if self.try_leave() {
            return;
        }
        let mut arb = lock(arb);
        let now = now();
        while let Some(next) = self.pass_on(&mut arb, now) {
            if deliver(next) {
                return;
            }
        }
    }

    /// With `arb`'s lock held, once [`Gate::try_enter`] has failed: take a slot for `item`, or
    /// queue it in `arb`.
    pub fn offer<T>(
        &self,
        arb: &mut Arbiter<T>,
        now: u64,
        key: VolKey,
        units: u32,
        item: T,
    ) -> Offer<T> {
        if self.enter_or_queue(units) {
            return Offer::Go(item);
        }
        match arb.enqueue(now, key, units, item) {
            Ok(()) => Offer::Queued,
            Err(item) => {
                self.unqueue(1);
                Offer::Unknown(item)
            }
        }
    }

    /// With `arb`'s lock held, once [`Gate::try_leave`] has failed: the queued I/O a finishing
    /// one's slot passes to, or None once the slot is free. (A waiter that went away is the
    /// caller's to skip: call again.)
    pub fn pass_on<T>(&self, arb: &mut Arbiter<T>, now: u64) -> Option<T> {
        while self.leave_locked() == Leave::HandOver {
            match arb.next(now) {
                Some(next) => return Some(next),
                // Counted a waiter the arbiter does not hold: cannot happen while both change
                // under the one lock; should it, the next round frees the slot.
                None => debug_assert!(false, "gate and arbiter disagree"),
            }
        }
        None
    }

    /// With the arbiter's lock held: `n` queued I/Os left the queue without a slot (their
    /// volume was unregistered, or the arbiter did not take them).
    pub fn unqueue(&self, n: u32) {
        self.update(|i, q| Some((i, q.saturating_sub(n))));
    }

    /// Free a finishing I/O's slot if nothing waits (false: the caller takes the arbiter's
    /// lock and calls [`Gate::leave_locked`]).
    pub fn try_leave(&self) -> bool {
        self.update(|i, q| (q == 0).then_some((i.saturating_sub(1), q)))
            .is_some()
    }

    /// With the arbiter's lock held: free the slot, or hand it over to a queued I/O (then one
    /// fewer is queued, and the caller passes the slot on).
    pub fn leave_locked(&self) -> Leave {
        let before = self.update(|i, q| {
            Some(if q == 0 {
                (i.saturating_sub(1), q)
            } else {
                (i, q - 1)
            })
        });
        match before {
            Some((_, q)) if q > 0 => Leave::HandOver,
            _ => Leave::Freed,
        }
    }
}

/// The arbiter's lock. A panic while it was held leaves the queue as consistent as each
/// single step left it, so keep serving.
fn lock<T>(arb: &Mutex<Arbiter<T>>) -> MutexGuard<'_, Arbiter<T>> {
    arb.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    #[test]
    fn fast_path_until_full_then_queue_and_hand_over() {
        let g = Gate::new(2);
        assert!(g.try_enter(1) && g.try_enter(3));
        assert!(!g.try_enter(1), "window full");
        assert!(!g.enter_or_queue(1), "queued instead");
        assert_eq!(g.load(), (2, 1));
        assert!(!g.try_enter(1), "nobody passes a waiter");
        assert!(!g.try_leave(), "a waiter needs the slot");
        assert_eq!(g.leave_locked(), Leave::HandOver);
        assert_eq!(g.load(), (2, 0));
        assert!(g.try_leave() && g.try_leave());
        assert_eq!(g.load(), (0, 0));
        assert_eq!(g.fast_units(), 4);
        assert_eq!(g.leave_locked(), Leave::Freed, "nothing queued");
        assert!(g.enter_or_queue(2));
        g.unqueue(5);
        assert_eq!(g.load(), (1, 0));
    }

    /// Many threads entering and leaving through both paths, with a queue under a lock as
    /// the pool keeps it: the window is never exceeded and every queued I/O gets a slot.
    #[test]
    fn concurrent_use_keeps_the_window_and_loses_no_waiter() {
        const WINDOW: u32 = 3;
        let g = Arc::new(Gate::new(WINDOW));
        let queue = Arc::new(Mutex::new(VecDeque::<Arc<Mutex<bool>>>::new()));
        let inside = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (g, queue, inside) = (g.clone(), queue.clone(), inside.clone());
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        // Enter.
                        let mine = Arc::new(Mutex::new(false));
                        let entered = g.try_enter(1) || {
                            let mut q = queue.lock().unwrap();
                            let e = g.enter_or_queue(1);
                            if !e {
                                q.push_back(mine.clone());
                            }
                            e
                        };
                        if !entered {
                            // Wait for a finishing I/O to hand its slot over.
                            while !*mine.lock().unwrap() {
                                std::thread::yield_now();
                            }
                        }
                        let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        assert!(n <= WINDOW as u64, "{n} inside a window of {WINDOW}");
                        inside.fetch_sub(1, Ordering::SeqCst);
                        // Leave.
                        if !g.try_leave() {
                            let mut q = queue.lock().unwrap();
                            if g.leave_locked() == Leave::HandOver {
                                let next = q.pop_front().expect("queued count matches");
                                *next.lock().unwrap() = true;
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(g.load(), (0, 0));
        assert!(queue.lock().unwrap().is_empty());
    }
}
