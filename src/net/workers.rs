//! Connections spread over cores, each served start to end by one thread.
//!
//! Every worker thread runs its own single-threaded tokio runtime; a new connection goes to
//! the next worker in turn, and everything it spawns (the reader, one task per command, the
//! writer) stays on that thread. Measured on the 2-core VM against a multi-threaded runtime
//! (README, "Performance"): a command no longer hops between threads on its way from socket
//! to backend to socket, which was most of the target's CPU per I/O (scheduler switches and
//! cross-thread wake-ups), so each I/O costs less and tasks never migrate mid-command.

use super::{connection, Shared};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;
use tracing::{debug, error, warn};

pub struct Workers {
    queues: Vec<mpsc::UnboundedSender<std::net::TcpStream>>,
    next: AtomicUsize,
}

impl Workers {
    /// Start `n` worker threads (at least one).
    pub fn start(
        n: usize,
        poll: std::time::Duration,
        shared: Arc<Shared>,
    ) -> std::io::Result<Workers> {
        let mut queues = Vec::new();
        for i in 0..n.max(1) {
            let (tx, mut rx) = mpsc::unbounded_channel::<std::net::TcpStream>();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("vvold-net-{i}"))
                .spawn(move || {
                    rt.block_on(async move {
                        spin::start(poll);
                        if let Err(e) = crate::backend::file::local::install() {
                            debug!("network thread {i}: no io_uring of its own ({e}); file I/O goes through the shared rings");
                        }
                        while let Some(s) = rx.recv().await {
                            match tokio::net::TcpStream::from_std(s) {
                                Ok(s) => {
                                    tokio::spawn(connection::serve(s, shared.clone()));
                                }
                                Err(e) => warn!("cannot adopt a connection: {e}"),
                            }
                        }
                    })
                })?;
            queues.push(tx);
        }
        Ok(Workers {
            queues,
            next: AtomicUsize::new(0),
        })
    }

    /// Hand an accepted connection to the next worker.
    pub fn dispatch(&self, stream: tokio::net::TcpStream) {
        let std = match stream.into_std() {
            Ok(s) => s,
            Err(e) => return warn!("cannot hand over a connection: {e}"),
        };
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.queues.len();
        if self.queues[i].send(std).is_err() {
            error!("network worker {i} has stopped");
        }
    }
}

/// Worker threads for `configured` (0: one per CPU).
pub fn count(configured: u32) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n as usize,
    }
}

/// Keep a network thread polling for a short while after traffic instead of sleeping at once.
///
/// Waking a sleeping vCPU costs tens of µs on the VMs this was measured on, more than the
/// target's whole work on a command; a request that arrives while the thread still polls costs
/// none of it. Measured with vvold-load on the null backend (README, "Performance"): QD 1
/// latency 72 µs → 25–29 µs, QD 16 160K → 185–224K IOPS, for about 1 µs more target CPU per
/// I/O at QD 16. Polling is a yield loop: the runtime checks its sockets without blocking
/// between rounds, and other tasks of the thread keep running.
pub mod spin {
    use std::cell::OnceCell;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    use tokio::sync::Notify;

    struct Spinner {
        /// Bumped on every received PDU; the poller notices the change on its own clock
        /// reads, so traffic costs no clock read per PDU.
        activity: AtomicU64,
        spinning: AtomicBool,
        wake: Notify,
    }

    thread_local! {
        static SPINNER: OnceCell<Arc<Spinner>> = const { OnceCell::new() };
    }

    /// Start this thread's poller: after traffic, the thread keeps polling its sockets for
    /// `window` before it sleeps (zero: never).
    pub fn start(window: Duration) {
        if window.is_zero() {
            return;
        }
        let s = Arc::new(Spinner {
            activity: AtomicU64::new(0),
            spinning: AtomicBool::new(false),
            wake: Notify::new(),
        });
        SPINNER.with(|c| {
            let _ = c.set(s.clone());
        });
        tokio::spawn(async move {
            loop {
                s.wake.notified().await;
                s.spinning.store(true, Ordering::Relaxed);
                let mut seen = s.activity.load(Ordering::Relaxed);
                let mut quiet_since = Instant::now();
                loop {
                    // A clock read per round was 6 % of the thread's time: one per 8 rounds.
                    for _ in 0..8 {
                        tokio::task::yield_now().await;
                    }
                    // Give the CPU to any other runnable thread (another poller, the other
                    // end of a loopback connection): with more pollers than CPUs, each would
                    // otherwise hold its CPU for a whole scheduler slice (7.8 ms p99 for 16
                    // sessions against 2 network threads and a polling client on 2 CPUs).
                    std::thread::yield_now();
                    let now = Instant::now();
                    let a = s.activity.load(Ordering::Relaxed);
                    if a != seen {
                        seen = a;
                        quiet_since = now;
                    } else if now - quiet_since > window {
                        break;
                    }
                }
                s.spinning.store(false, Ordering::Relaxed);
            }
        });
    }

    /// This thread just received traffic.
    pub fn activity() {
        SPINNER.with(|c| {
            if let Some(s) = c.get() {
                // Only this thread writes it: no read-modify-write needed.
                let n = s.activity.load(Ordering::Relaxed);
                s.activity.store(n.wrapping_add(1), Ordering::Relaxed);
                if !s.spinning.load(Ordering::Relaxed) {
                    s.wake.notify_one();
                }
            }
        });
    }
}
