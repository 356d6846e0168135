//! The fallback engine for file devices: a few threads doing plain positioned reads and writes.
//!
//! Used when io_uring is unavailable (old kernel, or a seccomp profile such as Docker's default
//! that forbids it). Slower per I/O than the ring, but every request still works the same way,
//! direct I/O for aligned transfers included.

use super::direct::Files;
use super::request::Request;
use crate::backend::{BackendError, IoResult};
use crossbeam::channel::{self, Sender};
use std::fs::File;
use std::io;
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
    pub(crate) fn start(files: Arc<Files>) -> std::io::Result<Threads> {
        let (tx, rx) = channel::unbounded::<Request>();
        let alive = Arc::new(());
        let mut threads = Threads {
            tx: Some(tx),
            workers: Vec::new(),
            alive: Arc::downgrade(&alive),
        };
        for i in 0..THREADS {
            let (rx, files, alive) = (rx.clone(), files.clone(), alive.clone());
            let worker = std::thread::Builder::new()
                .name(format!("vvold-fileio{i}"))
                .spawn(move || {
                    let _alive = alive;
                    // Ends when the device drops the sender and the queue is drained.
                    for request in rx.iter() {
                        serve(&files, request);
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

fn serve(files: &Files, request: Request) {
    // A caller that gave up has dropped its receiver; nobody is left to tell, so send errors
    // are ignored throughout.
    match request {
        Request::Read {
            offset,
            mut buf,
            reply,
        } => {
            let (base, len) = (buf.as_ptr(), buf.len());
            // EOF inside the device means the file was truncated behind our back, which
            // surfaces as an I/O error.
            let eof = (io::ErrorKind::UnexpectedEof, "backing file too short");
            let result = transfer(files, base, offset, len, eof, |file, done| {
                file.read_at(&mut buf[done..], offset + done as u64)
            })
            .map(|()| buf);
            let _ = reply.send(result.map_err(BackendError::from));
        }
        Request::Write {
            offset,
            data,
            fua,
            reply,
        } => {
            let zero = (io::ErrorKind::WriteZero, "backing file took no bytes");
            let mut result = transfer(
                files,
                data.as_ptr(),
                offset,
                data.len(),
                zero,
                |file, done| file.write_at(&data[done..], offset + done as u64),
            );
            // One inode behind both descriptors: this covers a direct write as well.
            if fua && result.is_ok() {
                result = files.buffered.sync_data();
            }
            let _ = reply.send(result.map_err(BackendError::from));
        }
        Request::Flush { reply } => {
            let _ = reply.send(files.buffered.sync_data().map_err(BackendError::from));
        }
    }
}

/// Moves `len` bytes between memory at `base` and the file at `offset`, one pread/pwrite
/// (`io(file, done)`, for the part from `done` on) at a time until all are through. Each call
/// goes to the descriptor the remainder's alignment picks, so a short direct transfer whose
/// rest is unaligned finishes buffered. A call that moves nothing fails with `zero`.
pub(super) fn transfer(
    files: &Files,
    base: *const u8,
    offset: u64,
    len: usize,
    zero: (io::ErrorKind, &'static str),
    mut io: impl FnMut(&File, usize) -> io::Result<usize>,
) -> io::Result<()> {
    let mut done = 0;
    while done < len {
        let (file, direct) = files.pick(base.wrapping_add(done), offset + done as u64, len - done);
        match io(file, done) {
            Ok(0) => return Err(io::Error::new(zero.0, zero.1)),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => files.direct_refused(),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
