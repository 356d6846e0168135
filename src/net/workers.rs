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
use tracing::{error, warn};

pub struct Workers {
    queues: Vec<mpsc::UnboundedSender<std::net::TcpStream>>,
    next: AtomicUsize,
}

impl Workers {
    /// Start `n` worker threads (at least one).
    pub fn start(n: usize, shared: Arc<Shared>) -> std::io::Result<Workers> {
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
