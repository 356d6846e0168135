//! A ring of the calling thread's own, for threads that serve connections.
//!
//! Through a shared ring (`uring.rs`), every file I/O crosses threads twice: the network thread
//! hands the request to the ring thread (waking it when it sleeps), and the ring thread hands
//! the answer back (waking the network thread when it sleeps). On a small VM each wake-up costs
//! more CPU than the I/O itself. A network thread that installs a ring here submits its file
//! I/O with its own `io_uring_enter` instead: a buffered read the page cache can serve completes
//! during that call, and its answer is ready before the call returns. What the kernel finishes
//! later (I/O that goes to the disk, and buffered writes, which the kernel hands to its own
//! workers) makes the ring readable; the thread's runtime watches it, and a task of the thread
//! reaps.
//! Devices do not change: a request made on a thread with a ring goes to that ring, any other
//! (the control service's copies, tests) to the shared rings.
//!
//! Buffers and descriptors are owned by the ring's slots exactly as on a shared ring, so a
//! caller that stops waiting never frees memory the kernel may still write. The ring is torn
//! down with the thread, after every I/O it holds has completed.

use super::direct::Files;
use super::request::Request;
use super::uring::{new_ring, Jobs};
use io_uring::IoUring;
use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// SQ size of a thread's ring: one thread's commands, not the whole process's.
const ENTRIES: u32 = 256;
/// A token no slot has (slots count from 0 and stay below `ENTRIES`).
const NO_TOKEN: u64 = u64::MAX;

struct LocalRing {
    ring: IoUring,
    jobs: Jobs,
}

thread_local! {
    static LOCAL: RefCell<Option<LocalRing>> = const { RefCell::new(None) };
}

#[cfg(test)]
thread_local! {
    static SUBMITTED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Requests this thread has submitted on its own ring (for tests).
#[cfg(test)]
pub(super) fn submitted_here() -> u64 {
    SUBMITTED.with(|c| c.get())
}

/// Gives the calling thread a ring for the file I/O it submits, and a task on its runtime that
/// reaps what completes later. Must run inside the thread's (current-thread) tokio runtime.
/// Fails, leaving the thread on the shared rings, when the kernel has no usable io_uring.
pub fn install() -> io::Result<()> {
    let ring = new_ring(ENTRIES)?;
    // The runtime watches the ring itself (readable while its CQ holds entries), through a
    // descriptor of its own: whatever order the ring and the runtime go in, the watched file
    // stays open until the watch ends. Not an eventfd: one registered for asynchronous
    // completions only is signalled from the kernel's workers and not for O_DIRECT completions
    // (the file tests hung on it), and one signalled for every CQE costs a read per I/O.
    // SAFETY: plain syscall; the returned fd is checked and then owned.
    let fd = unsafe { libc::fcntl(ring.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let watched = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: the AsyncFd owns `watched`, which stays open and the same until it is dropped.
    let watched = unsafe { AsyncFd::register_with_interest(watched, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    let max_in_flight = ring.params().sq_entries() as usize;
    // A ring installed before (by an earlier runtime on this thread) is drained and replaced.
    let old = LOCAL.with(|l| {
        l.borrow_mut().replace(LocalRing {
            ring,
            jobs: Jobs::new(max_in_flight),
        })
    });
    drop(old);
    tokio::spawn(reap_later(watched));
    Ok(())
}

/// Submits `request` on this thread's ring, or gives it back when the thread has none.
pub(super) fn try_submit(files: &Arc<Files>, request: Request) -> Result<(), Request> {
    // Never re-entered (completing a job only wakes tasks), but a busy ring must not panic.
    LOCAL.with(|l| {
        match l
            .try_borrow_mut()
            .ok()
            .as_deref_mut()
            .and_then(Option::as_mut)
        {
            Some(local) => {
                local.jobs.enqueue(files.clone(), request);
                local.progress();
                #[cfg(test)]
                SUBMITTED.with(|c| c.set(c.get() + 1));
                Ok(())
            }
            None => Err(request),
        }
    })
}

impl LocalRing {
    /// Issues what waits, submits it and completes whatever is done; again while completions
    /// free room for waiting jobs or leave remainders of short transfers.
    fn progress(&mut self) {
        loop {
            self.jobs.issue(&mut self.ring);
            if !self.ring.submission().is_empty() {
                if let Err(e) = self.ring.submit() {
                    // EBUSY/EAGAIN: the kernel is short of room or memory; the SQEs stay
                    // queued and go with the next submit (the next request or reap).
                    tracing::debug!("io_uring submit deferred: {e}");
                }
            }
            self.jobs.reap(&mut self.ring, NO_TOKEN);
            if !self.jobs.has_issuable() {
                return;
            }
        }
    }
}

impl Drop for LocalRing {
    fn drop(&mut self) {
        // The kernel may still write into buffers the slots own: wait for every CQE first.
        while self.jobs.in_flight() > 0 {
            if let Err(e) = self.ring.submit_and_wait(1) {
                if !matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) {
                    tracing::error!("io_uring_enter failed while closing a thread's ring: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
            self.jobs.reap(&mut self.ring, NO_TOKEN);
        }
    }
}

/// Reaps the completions the kernel posts after the submit that carried them.
async fn reap_later(ring: AsyncFd<OwnedFd>) {
    loop {
        let mut ready = match ring.readable().await {
            Ok(ready) => ready,
            Err(e) => {
                tracing::error!("watching a network thread's io_uring failed: {e}");
                return;
            }
        };
        // Cleared before the CQ is reaped: a completion posted after that wakes this loop
        // once more.
        ready.clear_ready();
        LOCAL.with(|l| {
            if let Some(local) = l.borrow_mut().as_mut() {
                local.progress();
            }
        });
    }
}
