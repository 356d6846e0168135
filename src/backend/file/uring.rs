//! The io_uring engine for file devices: a few rings, each with its own thread, shared by all
//! file devices of the process.
//!
//! Async callers push [`Request`]s, each paired with its device's open [`Files`], onto the
//! channel of the ring their device was assigned to; the ring thread turns them into SQEs whose
//! buffers point straight into the requests' `BytesMut`/`Bytes` (no copy), keeps each request
//! in a slot until its CQE arrives, and answers through the request's oneshot. Each SQE names
//! the `O_DIRECT` or the buffered descriptor of its own device, whichever the alignment of what
//! it moves allows (see [`super::direct`]); a remainder after a short transfer is judged afresh.
//!
//! Sharing: there are at most [`ring_limit`] rings, started lazily, and devices are dealt to
//! them round-robin as they open, so the first few devices each get a ring of their own (as
//! when every device had one) and a thousand devices cost a handful of threads, not a thousand.
//! A ring and its thread live for the rest of the process once started. A device only holds a
//! handle to its ring: dropping it waits for nothing. Its requests still queued or in flight
//! carry their own reference to the device's files and own their buffers, so they complete
//! normally, and the files close when the last of them has.
//!
//! Waking the thread: it always sleeps in `io_uring_enter` (never spins), with a read of an
//! eventfd (the [`Doorbell`]) among the operations it waits on. That one wait therefore ends on
//! either an I/O completion or a new request, so requests arriving while I/O is in flight are
//! picked up at once instead of after the slowest outstanding I/O. Callers only write the
//! eventfd when the thread has announced it may be asleep, so a busy ring costs submitters no
//! syscall beyond the channel push, however many devices and tasks submit to it.

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
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::oneshot;

/// SQ size. With a ring per device this was 256; a shared ring serves many devices, so it has
/// room for several devices' worth of queue depth (1,024 SQEs and 2,048 CQEs are under 100 KiB
/// per ring).
const RING_ENTRIES: u32 = 1024;
/// SQ size to retry with if the kernel refuses [`RING_ENTRIES`] for lack of locked memory:
/// before Linux 5.12 rings count against RLIMIT_MEMLOCK, often 64 KiB, and this size fits.
const SMALL_RING_ENTRIES: u32 = 256;
/// Largest transfer per SQE (the length field is 32 bits). Longer requests go out in pieces,
/// through the same path that resubmits short transfers.
const MAX_PIECE: usize = 1 << 30;
/// `user_data` of the doorbell read; data operations use their slot index.
const DOORBELL: u64 = u64::MAX;
/// Most rings a process runs, however many CPUs it has (see [`ring_limit`]).
const MAX_RINGS: usize = 8;
/// Name of a shared ring's thread, followed by its index.
pub(crate) const THREAD_PREFIX: &str = "vvold-ring";

/// How many rings the process shares among its file devices: one per CPU the process may run
/// on, at most [`MAX_RINGS`]. A ring thread mostly sleeps in `io_uring_enter`; what CPU it
/// uses goes to building SQEs, reaping CQEs and, for buffered I/O the page cache can serve,
/// the copy the kernel does inline on that thread. One ring per CPU lets that work spread over
/// every CPU when many devices are busy; more rings than CPUs would only add threads competing
/// with the network threads (also one per CPU) for no more parallelism. The cap keeps a big
/// machine from holding dozens of idle rings (each pins its SQ/CQ memory) for a few LUNs.
pub(crate) fn ring_limit() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_RINGS)
}

/// Lets submitters rouse the ring thread out of `io_uring_enter`.
struct Doorbell {
    fd: OwnedFd,
    /// Set by the ring thread before it may sleep. Whoever swaps it back to false must ring;
    /// swaps on both sides make the handover race-free with any number of submitters (the
    /// thread re-checks the channel after setting it, and a submitter that saw it clear had
    /// already queued before the re-check; of several that queued while it was set, exactly
    /// the first to swap rings).
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

/// A request and the files of the device it is for. The `Arc` keeps both descriptors open
/// until the ring is done with the request, even if the device has been dropped meanwhile.
struct Job {
    files: Arc<Files>,
    op: Op,
}

/// The submitting side of one ring thread.
struct Engine {
    /// None only while dropping: a disconnected channel tells the thread to finish and exit.
    tx: Option<Sender<Job>>,
    bell: Arc<Doorbell>,
    /// Which of the shared rings this is; None for a private one (tests).
    #[cfg_attr(not(test), allow(dead_code))]
    index: Option<usize>,
    #[cfg_attr(not(test), allow(dead_code))]
    alive: Weak<()>,
}

impl Engine {
    /// Sets up a ring and starts its thread, or fails (so the caller can fall back) when the
    /// kernel has no usable io_uring: too old, or forbidden by seccomp.
    fn start(index: Option<usize>) -> io::Result<Engine> {
        let ring = new_ring(RING_ENTRIES)?;
        let bell = Arc::new(Doorbell::new()?);
        let (tx, rx) = channel::unbounded();
        let alive = Arc::new(());
        let weak = Arc::downgrade(&alive);
        let worker = Worker::new(ring, bell.clone(), rx);
        let name = match index {
            Some(i) => format!("{THREAD_PREFIX}{i}"),
            None => "vvold-ringx".to_string(),
        };
        // Detached: nobody joins a ring thread. A shared one runs until the process exits; a
        // private one exits by itself once its last handle is gone and its I/O is done.
        std::thread::Builder::new().name(name).spawn(move || {
            let _alive = alive;
            worker.run();
        })?;
        Ok(Engine {
            tx: Some(tx),
            bell,
            index,
            alive: weak,
        })
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Only private rings get here (the shared ones are never dropped). The unconditional
        // ring makes sure the thread notices the disconnect even if it is asleep right now; it
        // finishes what it holds and exits, and nothing waits for that.
        self.tx = None;
        self.bell.ring();
    }
}

/// The shared rings, started as devices need them.
struct Pool {
    rings: Vec<Option<Arc<Engine>>>,
    /// Round-robin position: the ring the next device gets.
    next: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    rings: Vec::new(),
    next: 0,
});

/// A device's handle to the ring serving it. Dropping it waits for nothing (see module docs).
pub(crate) struct Ring {
    engine: Arc<Engine>,
    files: Arc<Files>,
}

impl Ring {
    /// Assigns a device with `files` to one of the shared rings, starting that ring if it is
    /// not running yet. Fails (so the caller can fall back) when the kernel has no usable
    /// io_uring.
    pub(crate) fn start(files: Arc<Files>) -> io::Result<Ring> {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        if pool.rings.is_empty() {
            pool.rings.resize_with(ring_limit(), || None);
        }
        let index = pool.next % pool.rings.len();
        let engine = match &pool.rings[index] {
            Some(engine) => engine.clone(),
            None => {
                let engine = Arc::new(Engine::start(Some(index))?);
                pool.rings[index] = Some(engine.clone());
                engine
            }
        };
        pool.next = index + 1;
        Ok(Ring { engine, files })
    }

    /// A ring of the device's own, outside the pool: its thread exits once the handle is
    /// dropped and its I/O is done (for tests of that shutdown path).
    #[cfg(test)]
    pub(crate) fn start_private(files: Arc<Files>) -> io::Result<Ring> {
        Ok(Ring {
            engine: Arc::new(Engine::start(None)?),
            files,
        })
    }

    pub(crate) fn submit(&self, request: Request) -> IoResult<()> {
        // A network thread's own ring first: no hand-over to another thread and back.
        let Err(request) = super::local::try_submit(&self.files, request) else {
            return Ok(());
        };
        let tx = self.engine.tx.as_ref().ok_or(BackendError::Closed)?;
        let job = Job {
            files: self.files.clone(),
            op: Op::from(request),
        };
        tx.send(job).map_err(|_| BackendError::Closed)?;
        self.engine.bell.ring_if_sleeping();
        Ok(())
    }

    /// Which shared ring serves the device (None: a private one).
    #[cfg(test)]
    pub(crate) fn index(&self) -> Option<usize> {
        self.engine.index
    }

    /// A token that dies when the ring's thread has exited.
    #[cfg(test)]
    pub(crate) fn alive_token(&self) -> Weak<()> {
        self.engine.alive.clone()
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

/// The jobs one ring has taken: those the kernel owns, by slot, and those waiting for room.
/// Shared by the ring threads and the network threads' own rings (`local.rs`).
pub(super) struct Jobs {
    /// Data operations in flight at once; jobs beyond it wait in `queued` in arrival order,
    /// whichever device they are for. Kept below the SQ size so the completion queue (twice
    /// the SQ) can never overflow.
    max_in_flight: usize,
    /// Jobs owned by the kernel, indexed by `user_data`; `free` lists empty slots. Each keeps
    /// its device's files open for as long as its SQE may name one of their descriptors.
    slots: Vec<Option<Job>>,
    free: Vec<usize>,
    in_flight: usize,
    /// Jobs waiting for room in the ring (new ones, and remainders of short transfers).
    queued: VecDeque<Job>,
    /// The last reap's CQEs, kept so reaping allocates nothing once warm.
    reaped: Vec<(u64, i32)>,
}

impl Jobs {
    pub(super) fn new(max_in_flight: usize) -> Jobs {
        Jobs {
            max_in_flight,
            slots: Vec::new(),
            free: Vec::new(),
            in_flight: 0,
            queued: VecDeque::new(),
            reaped: Vec::new(),
        }
    }

    pub(super) fn enqueue(&mut self, files: Arc<Files>, request: Request) {
        self.queued.push_back(Job {
            files,
            op: Op::from(request),
        });
    }

    /// Nothing in flight and nothing waiting.
    pub(super) fn is_idle(&self) -> bool {
        self.in_flight == 0 && self.queued.is_empty()
    }

    pub(super) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Whether a queued job would be issued now: one waits and there is room.
    pub(super) fn has_issuable(&self) -> bool {
        !self.queued.is_empty() && self.in_flight < self.max_in_flight
    }

    /// Hands queued jobs to the kernel while there is room (pushed, not yet submitted).
    pub(super) fn issue(&mut self, ring: &mut IoUring) {
        while self.in_flight < self.max_in_flight {
            let Some(mut job) = self.queued.pop_front() else {
                break;
            };
            let slot = match self.free.pop() {
                Some(slot) => slot,
                None => {
                    self.slots.push(None);
                    self.slots.len() - 1
                }
            };
            let sqe = job.op.sqe(&job.files).user_data(slot as u64);
            self.slots[slot] = Some(job);
            self.in_flight += 1;
            push(ring, sqe);
        }
    }

    /// Completes every job whose CQE has arrived (a remainder goes back to the front of the
    /// queue). Returns whether the CQE of `other`, a token that is not a slot, was among them.
    pub(super) fn reap(&mut self, ring: &mut IoUring, other: u64) -> bool {
        // Collected first because completing an op needs `self` while the CQ borrows the ring.
        let mut reaped = std::mem::take(&mut self.reaped);
        reaped.clear();
        reaped.extend(ring.completion().map(|cqe| (cqe.user_data(), cqe.result())));
        let mut saw_other = false;
        for &(token, res) in &reaped {
            if token == other {
                saw_other = true;
                continue;
            }
            let Some(job) = self.slots.get_mut(token as usize).and_then(Option::take) else {
                tracing::error!("io_uring completion for unknown slot {token}");
                continue;
            };
            self.free.push(token as usize);
            self.in_flight -= 1;
            let Job { files, op } = job;
            if let Some(rest) = op.complete(res, &files) {
                self.queued.push_front(Job { files, op: rest });
            }
        }
        self.reaped = reaped;
        saw_other
    }
}

/// Puts `sqe` on the submission queue, submitting first should it be full.
fn push(ring: &mut IoUring, sqe: squeue::Entry) {
    // In-flight accounting keeps the SQ from filling, but submitting first is the safe answer
    // should it ever be full.
    loop {
        // SAFETY: every buffer and descriptor named by an SQE is owned by a job's slot (the
        // descriptors through the job's files) or, for a ring thread's doorbell read, by the
        // thread, until its CQE has been reaped.
        if unsafe { ring.submission().push(&sqe) }.is_ok() {
            return;
        }
        if let Err(e) = ring.submit() {
            tracing::error!("io_uring submit failed: {e}");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

/// Sets up a ring of `entries` SQEs (fewer if locked memory is short) and checks that the
/// kernel has the operations file devices use; an error lets the caller fall back.
pub(super) fn new_ring(entries: u32) -> io::Result<IoUring> {
    let ring = match IoUring::new(entries) {
        Err(e) if e.raw_os_error() == Some(libc::ENOMEM) => {
            IoUring::new(SMALL_RING_ENTRIES.min(entries))?
        }
        ring => ring?,
    };
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
    Ok(ring)
}

/// The ring thread's state.
struct Worker {
    ring: IoUring,
    bell: Arc<Doorbell>,
    rx: Receiver<Job>,
    /// One SQ slot stays free for the doorbell read.
    jobs: Jobs,
    /// Where the kernel puts the eventfd counter; boxed so its address never changes.
    bell_buf: Box<u64>,
    bell_armed: bool,
    /// Every handle is gone: accept nothing new, finish what is held, then exit.
    closing: bool,
}

impl Worker {
    fn new(ring: IoUring, bell: Arc<Doorbell>, rx: Receiver<Job>) -> Worker {
        let max_in_flight = ring.params().sq_entries() as usize - 1;
        Worker {
            jobs: Jobs::new(max_in_flight),
            ring,
            bell,
            rx,
            bell_buf: Box::new(0),
            bell_armed: false,
            closing: false,
        }
    }

    fn run(mut self) {
        loop {
            self.intake();
            self.jobs.issue(&mut self.ring);
            if !self.closing && !self.bell_armed {
                let read = opcode::Read::new(
                    types::Fd(self.bell.fd.as_raw_fd()),
                    (&mut *self.bell_buf as *mut u64).cast(),
                    8,
                );
                push(&mut self.ring, read.build().user_data(DOORBELL));
                self.bell_armed = true;
            }
            if self.closing && self.jobs.is_idle() {
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
            if self.jobs.reap(&mut self.ring, DOORBELL) {
                self.bell_armed = false;
            }
        }
    }

    /// Moves requests from the channel into the queue.
    fn intake(&mut self) {
        while !self.closing {
            match self.rx.try_recv() {
                Ok(job) => self.jobs.queued.push_back(job),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => self.closing = true,
            }
        }
    }
}
