//! The fallback engine for file devices: a few threads doing plain positioned reads and writes.
//!
//! Used when io_uring is unavailable (old kernel, or a seccomp profile such as Docker's default
//! that forbids it). Slower per I/O than the ring, but every request still works the same way.

use super::request::Request;
use crate::backend::{BackendError, IoResult};
use crossbeam::channel::{self, Sender};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;

/// Enough threads that a slow flush does not stall every read behind it, few enough that an
/// idle device costs little.
const THREADS: usize = 4;

pub(crate) struct Threads {
    tx: Option<Sender<Request>>,
    workers: Vec<JoinHandle<()>>,
    #[cfg_attr(not(test), allow(dead_code))]
    alive: Weak<()>,
}

impl Threads {
    pub(crate) fn start(file: Arc<File>) -> std::io::Result<Threads> {
        let (tx, rx) = channel::unbounded::<Request>();
        let alive = Arc::new(());
        let mut threads = Threads {
            tx: Some(tx),
            workers: Vec::new(),
            alive: Arc::downgrade(&alive),
        };
        for i in 0..THREADS {
            let (rx, file, alive) = (rx.clone(), file.clone(), alive.clone());
            let worker = std::thread::Builder::new()
                .name(format!("vvold-fileio{i}"))
                .spawn(move || {
                    let _alive = alive;
                    // Ends when the device drops the sender and the queue is drained.
                    for request in rx.iter() {
                        serve(&file, request);
                    }
                })?;
            // On a spawn failure, dropping `threads` stops the workers already running.
            threads.workers.push(worker);
        }
        Ok(threads)
    }

    pub(crate) fn submit(&self, request: Request) -> IoResult<()> {
        match &self.tx {
            Some(tx) => tx.send(request).map_err(|_| BackendError::Closed),
            None => Err(BackendError::Closed),
        }
    }

    /// A token that dies when the thread(s) have exited (for tests of clean shutdown).
    #[cfg(test)]
    pub(crate) fn alive_token(&self) -> Weak<()> {
        self.alive.clone()
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        self.tx = None;
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

fn serve(file: &File, request: Request) {
    // A caller that gave up has dropped its receiver; nobody is left to tell, so send errors
    // are ignored throughout.
    match request {
        Request::Read {
            offset,
            mut buf,
            reply,
        } => {
            // read_exact_at retries short reads and EINTR; EOF inside the device means the file
            // was truncated behind our back, which surfaces as an I/O error.
            let result = file.read_exact_at(&mut buf, offset).map(|()| buf);
            let _ = reply.send(result.map_err(BackendError::from));
        }
        Request::Write {
            offset,
            data,
            fua,
            reply,
        } => {
            let mut result = file.write_all_at(&data, offset);
            if fua && result.is_ok() {
                result = file.sync_data();
            }
            let _ = reply.send(result.map_err(BackendError::from));
        }
        Request::Flush { reply } => {
            let _ = reply.send(file.sync_data().map_err(BackendError::from));
        }
    }
}
