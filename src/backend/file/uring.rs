//! The io_uring engine for file devices: one ring and one thread per device.
//!
//! Async callers push [`Request`]s onto a channel; the ring thread turns them into SQEs whose
//! buffers point straight into the requests' `BytesMut`/`Bytes` (no copy), keeps each request
//! in a slot until its CQE arrives, and answers through the request's oneshot. Each SQE names
//! the `O_DIRECT` or the buffered descriptor, whichever the alignment of what it moves allows
//! (see [`super::direct`]); a remainder after a short transfer is judged afresh.
//!
//! Waking the thread: it always sleeps in `io_uring_enter` (never spins), with a read of an
//! eventfd (the [`Doorbell`]) among the operations it waits on. That one wait therefore ends on
//! either an I/O completion or a new request, so requests arriving while I/O is in flight are
//! picked up at once instead of after the slowest outstanding I/O. Callers only write the
//! eventfd when the thread has announced it may be asleep, so a busy ring costs submitters no
//! syscall beyond the channel push.

use super::direct::Files;
use super::request::Request;
use crate::backend::{BackendError, IoResult};
use bytes::{Bytes, BytesMut};
use crossbeam::channel::{self, Receiver, Sender, TryRecvError};
use io_uring::{opcode, squeue, types, IoUring, Probe};
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use tokio::sync::oneshot;

const RING_ENTRIES: u32 = 256;
/// Data operations in flight at once: one SQ slot stays free for the doorbell read, and the
/// completion queue (twice the SQ) can never overflow.
const MAX_IN_FLIGHT: usize = RING_ENTRIES as usize - 1;
/// Largest transfer per SQE (the length field is 32 bits). Longer requests go out in pieces,
/// through the same path that resubmits short transfers.
const MAX_PIECE: usize = 1 << 30;
/// `user_data` of the doorbell read; data operations use their slot index.
const DOORBELL: u64 = u64::MAX;

/// Lets submitters rouse the ring thread out of `io_uring_enter`.
struct Doorbell {
    fd: OwnedFd,
    /// Set by the ring thread before it may sleep. Whoever swaps it back to false must ring;
    /// swaps on both sides make the handover race-free (the thread re-checks the channel after
    /// setting it, and a submitter that saw it clear had already queued before the re-check).
    sleeping: AtomicBool,
}

impl Doorbell {
    fn new() -> io::Result<Doorbell> {
        // Deliberately blocking: io_uring fails reads of O_NONBLOCK files with EAGAIN instead of
        // waiting for them to become readable.
        // SAFETY: plain syscall; the returned fd is checked and then owned.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Doorbell {
            fd,
            sleeping: AtomicBool::new(false),
        })
    }

    fn ring(&self) {
        let one: u64 = 1;
        // Cannot fail or block unless the counter nears 2^64, which a few rings never reach.
        // SAFETY: writes 8 bytes from a live u64 to an fd we own.
        unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    fn ring_if_sleeping(&self) {
        if self.sleeping.swap(false, Ordering::SeqCst) {
            self.ring();
        }
    }
}

/// Handle to a device's ring thread. Dropping it finishes in-flight I/O and joins the thread.
pub(crate) struct Ring {
    tx: Option<Sender<Request>>,
    bell: Arc<Doorbell>,
    thread: Option<JoinHandle<()>>,
    #[cfg_attr(not(test), allow(dead_code))]
    alive: Weak<()>,
}

impl Ring {
    /// Sets up a ring for `file`, or fails (so the caller can fall back) when the kernel has no
    /// usable io_uring: too old, or forbidden by seccomp.
    pub(crate) fn start(files: Arc<Files>) -> io::Result<Ring> {
        let ring = IoUring::new(RING_ENTRIES)?;
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        for code in [opcode::Read::CODE, opcode::Write::CODE, opcode::Fsync::CODE] {
            if !probe.is_supported(code) {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("io_uring lacks opcode {code}"),
                ));
            }
        }
        let bell = Arc::new(Doorbell::new()?);
        let (tx, rx) = channel::unbounded();
        let alive = Arc::new(());
        let weak = Arc::downgrade(&alive);
        let engine = Engine::new(ring, files, bell.clone(), rx);
        let thread = std::thread::Builder::new()
            .name("vvold-uring".into())
            .spawn(move || {
                let _alive = alive;
                engine.run();
            })?;
        Ok(Ring {
            tx: Some(tx),
            bell,
            thread: Some(thread),
            alive: weak,
        })
    }

    pub(crate) fn submit(&self, request: Request) -> IoResult<()> {
        let tx = self.tx.as_ref().ok_or(BackendError::Closed)?;
        tx.send(request).map_err(|_| BackendError::Closed)?;
        self.bell.ring_if_sleeping();
        Ok(())
    }

    /// A token that dies when the thread(s) have exited (for tests of clean shutdown).
    #[cfg(test)]
    pub(crate) fn alive_token(&self) -> Weak<()> {
        self.alive.clone()
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // A disconnected channel is the thread's cue to finish what it holds and exit; the
        // unconditional ring makes sure it notices even if it is asleep right now.
        self.tx = None;
        self.bell.ring();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A request being worked on, with how much of it is done and whether its piece in flight
/// went to the direct descriptor.
pub(super) enum Op {
    Read {
        offset: u64,
        buf: BytesMut,
        done: usize,
        direct: bool,
        reply: oneshot::Sender<IoResult<BytesMut>>,
    },
    Write {
        offset: u64,
        data: Bytes,
        done: usize,
        direct: bool,
        fua: bool,
        reply: oneshot::Sender<IoResult<()>>,
    },
    Flush {
        reply: oneshot::Sender<IoResult<()>>,
    },
}

impl From<Request> for Op {
    fn from(request: Request) -> Op {
        match request {
            Request::Read { offset, buf, reply } => Op::Read {
                offset,
                buf,
                done: 0,
                direct: false,
                reply,
            },
            Request::Write {
                offset,
                data,
                fua,
                reply,
            } => Op::Write {
                offset,
                data,
                done: 0,
                direct: false,
                fua,
                reply,
            },
            Request::Flush { reply } => Op::Flush { reply },
        }
    }
}

impl Op {
    /// The SQE for the op's remaining part, on the descriptor its alignment picks. The pointer
    /// stays valid while the op sits in its slot: moving a `BytesMut`/`Bytes` does not move the
    /// bytes it points to.
    pub(super) fn sqe(&mut self, files: &Files) -> squeue::Entry {
        match self {
            Op::Read {
                offset,
                buf,
                done,
                direct,
                ..
            } => {
                let len = (buf.len() - *done).min(MAX_PIECE);
                // SAFETY: done < buf.len(), so the pointer is within the buffer.
                let ptr = unsafe { buf.as_mut_ptr().add(*done) };
                let at = *offset + *done as u64;
                let (file, dio) = files.pick(ptr, at, len);
                *direct = dio;
                opcode::Read::new(types::Fd(file.as_raw_fd()), ptr, len as u32)
                    .offset(at)
                    .build()
            }
            Op::Write {
                offset,
                data,
                done,
                direct,
                fua,
                ..
            } => {
                let len = (data.len() - *done).min(MAX_PIECE);
                // SAFETY: done < data.len(), so the pointer is within the buffer.
                let ptr = unsafe { data.as_ptr().add(*done) };
                let at = *offset + *done as u64;
                let (file, dio) = files.pick(ptr, at, len);
                *direct = dio;
                // RWF_DSYNC makes this very write durable before it completes, direct or not:
                // FUA without a second round trip for an fdatasync.
                let flags = if *fua { libc::RWF_DSYNC } else { 0 };
                opcode::Write::new(types::Fd(file.as_raw_fd()), ptr, len as u32)
                    .offset(at)
                    .rw_flags(flags)
                    .build()
            }
            // One inode behind both descriptors: this also covers what went direct.
            Op::Flush { .. } => opcode::Fsync::new(types::Fd(files.buffered.as_raw_fd()))
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
        }
    }

    /// Accounts for a CQE result. Gives the op back if part of it still has to be (re)issued.
    pub(super) fn complete(self, res: i32, files: &Files) -> Option<Op> {
        if res < 0 {
            if res == -libc::EINTR || res == -libc::EAGAIN {
                return Some(self);
            }
            if res == -libc::EINVAL && self.went_direct() {
                // Redone buffered: after this, nothing on this device goes direct.
                files.direct_refused();
                return Some(self);
            }
            self.fail(io::Error::from_raw_os_error(-res));
            return None;
        }
        let n = res as usize;
        match self {
            Op::Read {
                offset,
                buf,
                done,
                direct,
                reply,
            } => {
                if n == 0 {
                    // EOF inside the device: the file was truncated behind our back.
                    let eof =
                        io::Error::new(io::ErrorKind::UnexpectedEof, "backing file too short");
                    let _ = reply.send(Err(eof.into()));
                    return None;
                }
                let done = done + n;
                if done < buf.len() {
                    return Some(Op::Read {
                        offset,
                        buf,
                        done,
                        direct,
                        reply,
                    });
                }
                let _ = reply.send(Ok(buf));
            }
            Op::Write {
                offset,
                data,
                done,
                direct,
                fua,
                reply,
            } => {
                if n == 0 {
                    let _ = reply.send(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
                    return None;
                }
                let done = done + n;
                if done < data.len() {
                    return Some(Op::Write {
                        offset,
                        data,
                        done,
                        direct,
                        fua,
                        reply,
                    });
                }
                let _ = reply.send(Ok(()));
            }
            Op::Flush { reply } => {
                let _ = reply.send(Ok(()));
            }
        }
        None
    }

    /// Whether the piece last issued went to the direct descriptor.
    fn went_direct(&self) -> bool {
        matches!(
            self,
            Op::Read { direct: true, .. } | Op::Write { direct: true, .. }
        )
    }

    /// Answers with `err`. A caller that stopped waiting has nobody left to tell.
    fn fail(self, err: io::Error) {
        let err = BackendError::Io(err);
        match self {
            Op::Read { reply, .. } => {
                let _ = reply.send(Err(err));
            }
            Op::Write { reply, .. } | Op::Flush { reply } => {
                let _ = reply.send(Err(err));
            }
        }
    }
}

/// The ring thread's state.
struct Engine {
    ring: IoUring,
    /// Kept open for as long as any SQE may name one of its descriptors.
    files: Arc<Files>,
    bell: Arc<Doorbell>,
    rx: Receiver<Request>,
    /// Ops owned by the kernel, indexed by `user_data`; `free` lists empty slots.
    slots: Vec<Option<Op>>,
    free: Vec<usize>,
    in_flight: usize,
    /// Ops waiting for room in the ring (new ones, and remainders of short transfers).
    queued: VecDeque<Op>,
    /// Where the kernel puts the eventfd counter; boxed so its address never changes.
    bell_buf: Box<u64>,
    bell_armed: bool,
    /// The device is gone: accept nothing new, finish what is held, then exit.
    closing: bool,
    reaped: Vec<(u64, i32)>,
}

impl Engine {
    fn new(ring: IoUring, files: Arc<Files>, bell: Arc<Doorbell>, rx: Receiver<Request>) -> Engine {
        Engine {
            ring,
            files,
            bell,
            rx,
            slots: Vec::new(),
            free: Vec::new(),
            in_flight: 0,
            queued: VecDeque::new(),
            bell_buf: Box::new(0),
            bell_armed: false,
            closing: false,
            reaped: Vec::new(),
        }
    }

    fn run(mut self) {
        loop {
            self.intake();
            self.issue();
            if !self.closing && !self.bell_armed {
                let read = opcode::Read::new(
                    types::Fd(self.bell.fd.as_raw_fd()),
                    (&mut *self.bell_buf as *mut u64).cast(),
                    8,
                );
                self.push(read.build().user_data(DOORBELL));
                self.bell_armed = true;
            }
            if self.closing && self.in_flight == 0 && self.queued.is_empty() {
                if !self.bell_armed {
                    break;
                }
                // The doorbell read still targets bell_buf; complete it before anything is
                // freed, rather than trusting ring teardown to cancel it in time.
                self.bell.ring();
            }

            self.bell.sleeping.swap(true, Ordering::SeqCst);
            if !self.closing && !self.rx.is_empty() {
                // Raced with a submitter: take its request instead of sleeping.
                self.bell.sleeping.store(false, Ordering::Relaxed);
                continue;
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                // Interrupted, or the CQ is backed up: either way, reaping is the way forward.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => {}
                Err(e) => {
                    // Nothing sensible to do but retry; the kernel still owns our buffers, so
                    // the thread must not leave. Back off to avoid a hot loop.
                    tracing::error!("io_uring_enter failed: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
            self.bell.sleeping.store(false, Ordering::Relaxed);
            self.reap();
        }
    }

    /// Moves requests from the channel into the queue.
    fn intake(&mut self) {
        while !self.closing {
            match self.rx.try_recv() {
                Ok(request) => self.queued.push_back(Op::from(request)),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => self.closing = true,
            }
        }
    }

    /// Hands queued ops to the kernel while there is room.
    fn issue(&mut self) {
        while self.in_flight < MAX_IN_FLIGHT {
            let Some(mut op) = self.queued.pop_front() else {
                break;
            };
            let slot = match self.free.pop() {
                Some(slot) => slot,
                None => {
                    self.slots.push(None);
                    self.slots.len() - 1
                }
            };
            let sqe = op.sqe(&self.files).user_data(slot as u64);
            self.slots[slot] = Some(op);
            self.in_flight += 1;
            self.push(sqe);
        }
    }

    fn push(&mut self, sqe: squeue::Entry) {
        // In-flight accounting keeps the SQ from filling, but submitting first is the safe
        // answer should it ever be full.
        loop {
            // SAFETY: every buffer named by an SQE is owned by a slot or by bell_buf until its
            // CQE has been reaped.
            if unsafe { self.ring.submission().push(&sqe) }.is_ok() {
                return;
            }
            if let Err(e) = self.ring.submit() {
                tracing::error!("io_uring submit failed: {e}");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }

    fn reap(&mut self) {
        // Collected first because completing an op needs `self` while the CQ borrows the ring.
        let mut reaped = std::mem::take(&mut self.reaped);
        reaped.clear();
        reaped.extend(
            self.ring
                .completion()
                .map(|cqe| (cqe.user_data(), cqe.result())),
        );
        for &(token, res) in &reaped {
            if token == DOORBELL {
                self.bell_armed = false;
                continue;
            }
            let Some(op) = self.slots.get_mut(token as usize).and_then(Option::take) else {
                tracing::error!("io_uring completion for unknown slot {token}");
                continue;
            };
            self.free.push(token as usize);
            self.in_flight -= 1;
            if let Some(rest) = op.complete(res, &self.files) {
                self.queued.push_front(rest);
            }
        }
        self.reaped = reaped;
    }
}
