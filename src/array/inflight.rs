//! Counting the commands running on one binding, so an unbind can wait for them to finish.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

/// The commands in flight on one binding.
#[derive(Default)]
pub struct Inflight {
    count: AtomicUsize,
    idle: Notify,
    /// Set once someone waits: until then the last command out skips `idle`, whose notify
    /// takes a lock (with I/O spread over many VVols, nearly every command is the last out).
    waited: AtomicBool,
}

/// Held by the data path for the life of one command on a bound VVol.
pub struct InflightGuard(Arc<Inflight>);

impl Inflight {
    /// Count a command in until the guard drops.
    pub fn enter(self: &Arc<Self>) -> InflightGuard {
        self.count.fetch_add(1, Ordering::SeqCst);
        InflightGuard(self.clone())
    }

    /// Wait until no command is in flight. New commands may still enter meanwhile; the
    /// caller stops routing them first (a draining binding routes nothing).
    pub async fn idle(&self) {
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

impl Drop for InflightGuard {
    fn drop(&mut self) {
        // SeqCst pairs with `idle`: either this load sees `waited`, or the waiter's later load
        // of the count sees this decrement.
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
    async fn idle_at_once_without_commands() {
        let inflight = Arc::new(Inflight::default());
        drop(inflight.enter());
        tokio::time::timeout(Duration::from_secs(1), inflight.idle())
            .await
            .expect("nothing in flight");
    }

    #[tokio::test]
    async fn idle_waits_for_the_last_guard() {
        let inflight = Arc::new(Inflight::default());
        let a = inflight.enter();
        let b = inflight.enter();
        assert_eq!(inflight.count(), 2);
        let waiter = tokio::spawn({
            let inflight = inflight.clone();
            async move { inflight.idle().await }
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

    #[test]
    fn guards_dropped_on_other_threads_wake_the_waiter() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        for _ in 0..200 {
            let inflight = Arc::new(Inflight::default());
            let guards: Vec<_> = (0..4).map(|_| inflight.enter()).collect();
            let droppers: Vec<_> = guards
                .into_iter()
                .map(|g| std::thread::spawn(move || drop(g)))
                .collect();
            rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(5), inflight.idle())
                    .await
                    .expect("no wake-up lost")
            });
            for d in droppers {
                d.join().unwrap();
            }
        }
    }
}
