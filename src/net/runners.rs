//! The tasks that carry out a connection's commands.
//!
//! Spawning a task per command cost, per I/O, a 2 KiB allocation with 128-byte alignment
//! (tokio aligns task cells, and glibc serves aligned requests outside its fast caches,
//! consolidating fastbins on the way), the task's registration in the runtime's task list, and
//! the matching frees: together about 5 % of the target's CPU for 4 KiB reads in a profile.
//! Instead a connection keeps the runner tasks it has needed so far, and a command costs a queue
//! push plus, if a runner is idle, one wake-up. Runners are created on demand up to the number
//! of commands the initiator may have outstanding, so a command never waits for a runner while
//! others block on their backend.
//!
//! The runners also keep the `Task` records of finished commands for reuse, so with the
//! pooled data buffers a steady stream of reads and writes allocates nothing per command.

use super::exec::{self, ConnCtx, Job};
use super::session::{lock, Task};
use crate::scsi::{Lun, TaskAttribute};
use bytes::Bytes;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

/// A connection's command runners. Dropping it (the connection ended) lets the runners finish
/// whatever is still queued and exit.
pub struct Runners {
    state: Arc<Mutex<State>>,
    ctx: Arc<ConnCtx>,
    max: usize,
}

#[derive(Default)]
struct State {
    queue: VecDeque<(Job, Bytes)>,
    /// Runners waiting for work.
    idle: Vec<Waker>,
    /// Runner tasks alive.
    running: usize,
    /// Task records no one refers to any more, for reuse.
    spare: Vec<Arc<Task>>,
    closed: bool,
}

impl Runners {
    /// Runners for `ctx`'s commands, at most `max` of them (at least one).
    pub fn new(ctx: Arc<ConnCtx>, max: usize) -> Runners {
        Runners {
            state: Arc::default(),
            ctx,
            max: max.max(1),
        }
    }

    /// A fresh task record for a new command.
    pub fn task(&self, lun: Lun, attr: TaskAttribute) -> Arc<Task> {
        let spare = lock(&self.state).spare.pop();
        if let Some(mut task) = spare {
            if let Some(t) = Arc::get_mut(&mut task) {
                *t = Task::new(lun, attr);
                return task;
            }
        }
        Arc::new(Task::new(lun, attr))
    }

    /// Run a job whose Data-Out (if any) has fully arrived in `data`.
    pub fn submit(&self, job: Job, data: Bytes) {
        let mut s = lock(&self.state);
        s.queue.push_back((job, data));
        if let Some(waker) = s.idle.pop() {
            drop(s);
            waker.wake();
        } else if s.running < self.max {
            s.running += 1;
            drop(s);
            tokio::spawn(run(self.state.clone(), self.ctx.clone(), self.max));
        }
        // Otherwise every runner is busy and the first to finish takes the job.
    }
}

impl Drop for Runners {
    fn drop(&mut self) {
        let idle = {
            let mut s = lock(&self.state);
            s.closed = true;
            std::mem::take(&mut s.idle)
        };
        idle.into_iter().for_each(Waker::wake);
    }
}

async fn run(state: Arc<Mutex<State>>, ctx: Arc<ConnCtx>, keep: usize) {
    let _watch = Watch {
        state: state.clone(),
        ctx: ctx.clone(),
        keep,
    };
    let mut finished = None;
    while let Some((job, data)) = next(&state, finished.take(), keep).await {
        let task = job.task.clone();
        let unanswered = Unanswered {
            ctx: &ctx,
            cmd: job.cmd.clone(),
            task: &task,
        };
        exec::run(&ctx, job, data).await;
        // Answered: nothing for the guard to do (it owns no heap, so forgetting it is free,
        // and the common path pays no drop check).
        std::mem::forget(unanswered);
        finished = Some(task);
    }
}

/// A command whose run panicked: without this it would stay "running" in the session's task
/// table forever, so task management aimed at it would wait for it without end (and keep the
/// connection's writer, hence the connection, alive), and the initiator would get no answer.
/// It is marked finished and answered with INTERNAL TARGET FAILURE, unless its answer was
/// already under way, which is then only closed.
struct Unanswered<'a> {
    ctx: &'a Arc<ConnCtx>,
    cmd: exec::CommandInfo,
    task: &'a Arc<Task>,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        self.task.finish();
        if self.task.is_answering() {
            self.ctx.session.forget_task(self.cmd.itt, self.task);
            self.task.answered();
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (ctx, cmd, task) = (self.ctx.clone(), self.cmd.clone(), self.task.clone());
        rt.spawn(async move {
            let failed = crate::scsi::Response::check(crate::scsi::Sense::INTERNAL_TARGET_FAILURE);
            ctx.respond(&cmd, &task, failed, None).await;
        });
    }
}

/// Notices a runner dying of a panic in a command (tokio contains the panic to the task): it no
/// longer counts as running, and if jobs wait with no runner idle, a replacement takes over, so
/// a panic costs the one command (as a task per command did), not the connection's runners.
struct Watch {
    state: Arc<Mutex<State>>,
    ctx: Arc<ConnCtx>,
    keep: usize,
}

impl Drop for Watch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let mut s = lock(&self.state);
        s.running -= 1;
        if !s.queue.is_empty() && s.idle.is_empty() {
            s.running += 1;
            drop(s);
            tokio::spawn(run(self.state.clone(), self.ctx.clone(), self.keep));
        }
    }
}

/// The next queued job; `None` once the connection has ended and the queue is empty. The task
/// record of the job just finished is kept for reuse if nothing else holds it (task management
/// may still be looking at it) and fewer than `keep` are spare.
async fn next(
    state: &Mutex<State>,
    finished: Option<Arc<Task>>,
    keep: usize,
) -> Option<(Job, Bytes)> {
    let mut finished = finished;
    poll_fn(|cx| {
        let mut s = lock(state);
        if let Some(mut task) = finished.take() {
            if Arc::get_mut(&mut task).is_some() && s.spare.len() < keep {
                s.spare.push(task);
            }
        }
        if let Some(work) = s.queue.pop_front() {
            return Poll::Ready(Some(work));
        }
        if s.closed {
            s.running -= 1;
            return Poll::Ready(None);
        }
        s.idle.push(cx.waker().clone());
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_runners_are_reused_and_leave_when_closed() {
        // The queue discipline alone, without a connection: a waiting runner registers once,
        // a submit wakes it, and closing releases every waiter.
        let state = Arc::new(Mutex::new(State::default()));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            lock(&state).running = 1;
            let s2 = state.clone();
            let waiter = tokio::spawn(async move { next(&s2, None, 4).await.is_none() });
            tokio::task::yield_now().await;
            assert_eq!(lock(&state).idle.len(), 1);
            let idle = {
                let mut s = lock(&state);
                s.closed = true;
                std::mem::take(&mut s.idle)
            };
            idle.into_iter().for_each(Waker::wake);
            assert!(waiter.await.unwrap());
            assert_eq!(lock(&state).running, 0);
        });
    }

    #[tokio::test]
    async fn finished_task_records_are_kept_only_when_unshared() {
        let state = Mutex::new(State {
            closed: true,
            running: 3,
            ..State::default()
        });
        let free = Arc::new(Task::new(Lun::single(0), TaskAttribute::Simple));
        assert!(next(&state, Some(free), 4).await.is_none());
        let held = Arc::new(Task::new(Lun::single(0), TaskAttribute::Simple));
        let _elsewhere = held.clone();
        assert!(next(&state, Some(held), 4).await.is_none());
        let over = Arc::new(Task::new(Lun::single(0), TaskAttribute::Simple));
        assert!(next(&state, Some(over), 1).await.is_none());
        assert_eq!(
            lock(&state).spare.len(),
            1,
            "only the first: unshared and room left"
        );
    }
}
