//! Counting the commands running on one binding, so an unbind can wait for them to finish,
//! and closing the binding to new ones first. The record also holds what the commands use (the
//! bound logical unit), so a command's one reference is its count: with I/O spread over many
//! VVols from both CPUs, each shared line a command writes moves between the cores' caches,
//! and a separate reference on the logical unit was one more such line.
//!
//! The data path routes from a snapshot that may predate the unbind, so the snapshot's own
//! draining mark is not enough: a command could read the old snapshot, the unbind then find
//! nothing in flight and finish, and the command still run. Here a command counts itself in
//! and then checks the draining flag, while an unbind sets the flag and then reads the count;
//! with both in one total order (SeqCst), at least one of the two sees the other.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

/// The commands in flight on one binding, and what they hold while they run. `repr(C)`:
/// what every command touches (the count, beside the Arc's own counts, and what it holds)
/// comes first, so it usually shares one cache line.
#[repr(C)]
pub struct Inflight<T> {
    count: AtomicUsize,
    held: T,
    /// Set once someone waits: until then the last command out skips `idle`, whose notify
    /// takes a lock (with I/O spread over many VVols, nearly every command is the last out).
    waited: AtomicBool,
    /// Set by `drain`, never cleared (an unbinding binding never becomes active again).
    draining: AtomicBool,
    idle: Notify,
}

/// Held by the data path for the life of one command on a bound VVol; it reaches what the
/// binding holds.
pub struct InflightGuard<T>(Arc<Inflight<T>>);

impl<T> Inflight<T> {
    pub fn new(held: T) -> Inflight<T> {
        Inflight {
            count: AtomicUsize::new(0),
            idle: Notify::new(),
            waited: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            held,
        }
    }

    /// What every command of the binding holds.
    pub fn held(&self) -> &T {
        &self.held
    }

    /// Count a command in until the guard drops; None once the binding is draining.
    pub fn enter(self: &Arc<Self>) -> Option<InflightGuard<T>> {
        self.count.fetch_add(1, Ordering::SeqCst);
        let guard = InflightGuard(self.clone());
        if self.draining.load(Ordering::SeqCst) {
            return None; // the guard's drop counts it out again
        }
        Some(guard)
    }

    /// Whether `drain` has closed it.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Where the count lives (to warm before `enter`).
    pub fn counter_address(&self) -> usize {
        &self.count as *const AtomicUsize as usize
    }

    /// Refuse new commands, then wait until none is in flight.
    pub async fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.waited.store(true, Ordering::SeqCst);
        loop {
            // Registered before the count is read, so a notify in between is not lost.
            let idle = self.idle.notified();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }

    #[cfg(test)]
    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

impl<T> InflightGuard<T> {
    /// What the binding holds for its commands.
    pub fn held(&self) -> &T {
        &self.0.held
    }

    /// Whether the binding has begun unbinding since this command counted itself in: a
    /// long-running command (EXTENDED COPY) stops rather than write on into it.
    pub fn closing(&self) -> bool {
        self.0.is_draining()
    }
}

impl<T> Drop for InflightGuard<T> {
    fn drop(&mut self) {
        // SeqCst pairs with `drain`: either this load sees `waited`, or the waiter's later
        // load of the count sees this decrement.
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 && self.0.waited.load(Ordering::SeqCst)
        {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn drained_at_once_without_commands_and_closed_after() {
        let inflight = Arc::new(Inflight::new(()));
        drop(inflight.enter().expect("open"));
        tokio::time::timeout(Duration::from_secs(1), inflight.drain())
            .await
            .expect("nothing in flight");
        assert!(
            inflight.enter().is_none(),
            "a draining binding admits nothing"
        );
        assert_eq!(
            inflight.count(),
            0,
            "the refused command counted itself out"
        );
    }

    #[tokio::test]
    async fn drain_waits_for_the_last_guard() {
        let inflight = Arc::new(Inflight::new(()));
        let a = inflight.enter().unwrap();
        let b = inflight.enter().unwrap();
        assert_eq!(inflight.count(), 2);
        let waiter = tokio::spawn({
            let inflight = inflight.clone();
            async move { inflight.drain().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(a);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "one command is still running");
        drop(b);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("the last guard wakes the waiter")
            .unwrap();
        assert_eq!(inflight.count(), 0);
    }

    /// Where the draining side waits while other threads enter and leave.
    fn waiter_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    #[test]
    fn no_command_slips_in_after_drain_saw_none() {
        // Racing enter against drain: whatever enter returned Some for was counted before
        // drain finished, so drain must not have returned while it was held.
        let rt = waiter_runtime();
        for _ in 0..500 {
            let inflight = Arc::new(Inflight::new(()));
            let drained = Arc::new(AtomicBool::new(false));
            let entrant = std::thread::spawn({
                let (inflight, drained) = (inflight.clone(), drained.clone());
                move || {
                    if let Some(g) = inflight.enter() {
                        assert!(!drained.load(Ordering::SeqCst), "admitted after the drain");
                        drop(g);
                    }
                }
            });
            rt.block_on(inflight.drain());
            drained.store(true, Ordering::SeqCst);
            entrant.join().unwrap();
        }
    }

    #[test]
    fn guards_dropped_on_other_threads_wake_the_waiter() {
        let rt = waiter_runtime();
        for _ in 0..200 {
            let inflight = Arc::new(Inflight::new(()));
            let guards: Vec<_> = (0..4).map(|_| inflight.enter().unwrap()).collect();
            let droppers: Vec<_> = guards
                .into_iter()
                .map(|g| std::thread::spawn(move || drop(g)))
                .collect();
            rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(5), inflight.drain())
                    .await
                    .expect("no wake-up lost")
            });
            for d in droppers {
                d.join().unwrap();
            }
        }
    }
}
