//! Sessions (I_T nexuses) and their tasks. The registry finds a session by (initiator, ISID,
//! target) for reinstatement and lets task management reach every session of a target.

use crate::array::Target;
use crate::iscsi::pdu::Itt;
use crate::iscsi::window::CmdWindow;
use crate::scsi::{Lun, NexusId, TaskAttribute};
use rustc_hash::FxHashMap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{watch, Notify};

/// Lock a mutex, recovering it if another task panicked while holding it: every structure
/// behind these locks stays consistent between statements.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

const PENDING: u8 = 0;
const RUNNING: u8 = 1;
const DONE: u8 = 2;

/// Abort states: not aborted; aborted by the initiator's own request or a reset (no answer,
/// SAM-5 with TAS=0); aborted by the array when an unbind's drain timed out (answered).
const NOT_ABORTED: u8 = 0;
const ABORTED_SILENTLY: u8 = 1;
const ABORTED_ANSWERING: u8 = 2;

/// One SCSI task. Task management aborts it; an aborted task never starts backend I/O and
/// never sends a response (unless the array, not the initiator, aborted it: see
/// [`Task::abort_answering`]). Once its backend I/O has started it is allowed to finish, and
/// task management waits for that before answering, so no write lands after an abort is
/// confirmed. Once it has begun to answer it is allowed to finish answering too, and task
/// management on the same connection waits for that as well, so its answer follows the
/// task's last PDU.
pub struct Task {
    pub lun: Lun,
    /// Its place in its task set: attribute, arrival order in the session, and whether it
    /// has entered the enabled state (see [`Session::enter_task`]).
    pub attr: TaskAttribute,
    seq: AtomicU64,
    enabled: AtomicBool,
    /// It was not enabled on arrival, so it is decided when it runs.
    dormant: AtomicBool,
    aborted: AtomicU8,
    state: AtomicU8,
    /// Its Data-In and status are being queued (`ConnCtx::respond`).
    answering: AtomicBool,
    done: Notify,
}

impl Task {
    pub fn new(lun: Lun, attr: TaskAttribute) -> Task {
        Task {
            lun,
            attr,
            seq: AtomicU64::new(0),
            enabled: AtomicBool::new(true),
            dormant: AtomicBool::new(false),
            aborted: AtomicU8::new(NOT_ABORTED),
            state: AtomicU8::new(PENDING),
            answering: false.into(),
            done: Notify::new(),
        }
    }

    /// Abort for task management or a reset: the task answers nothing. Overrides an earlier
    /// [`Task::abort_answering`], since task management promises no answer follows its own.
    pub fn abort(&self) {
        self.aborted.store(ABORTED_SILENTLY, Ordering::SeqCst);
        // A command waiting for QoS admission (`aborted`) stops waiting.
        self.done.notify_waiters();
    }

    /// Abort because the array took the LU away (an unbind's drain timed out): nobody asked
    /// the initiator's leave, so it gets an answer now instead of waiting out its command
    /// timeout and escalating to resets that would hit every VVol on the session. A task
    /// already aborted by task management stays silent.
    pub fn abort_answering(&self) {
        let _ = self.aborted.compare_exchange(
            NOT_ABORTED,
            ABORTED_ANSWERING,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        self.done.notify_waiters();
    }

    /// Whether it may run: dormant tasks wait for older tasks of their task set.
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::SeqCst)
    }

    /// Whether it had to wait for older tasks when it arrived.
    pub fn was_dormant(&self) -> bool {
        self.dormant.load(Ordering::Relaxed)
    }

    /// Wait until it may run, or is aborted.
    pub async fn enabled(&self) {
        self.wait_until(|t| t.is_enabled() || t.is_aborted()).await
    }

    fn enable(&self) {
        self.enabled.store(true, Ordering::SeqCst);
        self.done.notify_waiters();
    }

    /// Wait until the task is aborted.
    pub async fn aborted(&self) {
        self.wait_until(Task::is_aborted).await
    }

    pub fn is_aborted(&self) -> bool {
        self.aborted.load(Ordering::SeqCst) != NOT_ABORTED
    }

    /// Whether it must stay silent: aborted by task management or a reset.
    pub fn is_silenced(&self) -> bool {
        self.aborted.load(Ordering::SeqCst) == ABORTED_SILENTLY
    }

    /// Called before backend I/O: false if the task was aborted (then do nothing more).
    pub fn start(&self) -> bool {
        if self.is_aborted() {
            return false;
        }
        self.state.store(RUNNING, Ordering::SeqCst);
        if self.is_aborted() {
            // Lost the race with an abort: we have not issued anything yet.
            self.finish();
            return false;
        }
        true
    }

    pub fn finish(&self) {
        self.state.store(DONE, Ordering::SeqCst);
        self.done.notify_waiters();
    }

    /// The task is about to answer; read its abort flag after this.
    pub fn start_answer(&self) {
        self.answering.store(true, Ordering::SeqCst);
    }

    /// Whether its answer is being queued.
    pub fn is_answering(&self) -> bool {
        self.answering.load(Ordering::SeqCst)
    }

    /// Every PDU of its answer is queued. Only task management waits for that, and it flags
    /// the task aborted before it waits, while the task is still in the table (which the
    /// task leaves before this): so an unflagged task has no one to wake, and the common case
    /// skips the notify's lock.
    pub fn answered(&self) {
        self.answering.store(false, Ordering::SeqCst);
        if self.is_aborted() {
            self.done.notify_waiters();
        }
    }

    /// Wait until no backend I/O of this task is in progress.
    pub async fn quiesced(&self) {
        self.wait_until(|t| t.state.load(Ordering::SeqCst) != RUNNING)
            .await
    }

    /// Wait until no answer of this task is being queued. Only for a task of the caller's own
    /// connection, whose answer must not be overtaken: another connection's writer may be
    /// stuck on a peer that stopped reading, and its answer no business of this one.
    pub async fn answer_queued(&self) {
        self.wait_until(|t| !t.answering.load(Ordering::SeqCst))
            .await
    }

    async fn wait_until(&self, done: impl Fn(&Task) -> bool) {
        loop {
            // Created before the check, so a notify in between is not lost.
            let notified = self.done.notified();
            if done(self) {
                return;
            }
            notified.await;
        }
    }
}

/// Whether `task` may run beside the tasks of `tasks` that came before it on its LU.
fn may_enter(task: &Task, tasks: &FxHashMap<Itt, Arc<Task>>) -> bool {
    let seq = task.seq.load(Ordering::Relaxed);
    task.attr.may_enter(
        tasks
            .values()
            .filter(|t| t.lun == task.lun && t.seq.load(Ordering::Relaxed) < seq)
            .map(|t| t.attr),
    )
}

/// Whether a session may send in-band binding commands: its initiator is a listed control
/// initiator, and it proved it (it logged in with the control CHAP credentials, `control.chap`,
/// not a target's, which every host knows), or it came over loopback, where only this
/// machine can log in. A name alone is not enough: anyone on the network could claim it and
/// bind any VVol to itself.
pub fn may_control(listed: bool, authenticated: bool, loopback: bool) -> bool {
    listed && (authenticated || loopback)
}

/// What names a session (RFC 7143 §4.4.3): the initiator port (name and ISID) and the target
/// port (name and portal group). A login with the same key reinstates the session; the same
/// ISID through another portal group is another session, as a multipathing host may hold.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    pub initiator: String,
    pub isid: [u8; 6],
    pub target: String,
    pub tpgt: u16,
}

pub struct Session {
    pub tsih: u16,
    pub nexus: NexusId,
    pub key: SessionKey,
    pub initiator: String,
    pub target: Arc<Target>,
    /// Relative target port (= portal group tag) the session logged in through.
    pub target_port: u16,
    pub window: Arc<Mutex<CmdWindow>>,
    /// FxHash: looked up twice per command. ITTs come from the initiator, but colliding ones
    /// only slow that initiator's own session, whose task count the CmdSN window bounds.
    pub tasks: Mutex<FxHashMap<Itt, Arc<Task>>>,
    pub order: TaskOrder,
    /// A control initiator's session, allowed in-band binding commands (see [`may_control`]).
    pub control: bool,
    /// Set to true to make the session's connection close (reinstatement, cold reset).
    pub closing: watch::Sender<bool>,
    /// Set to true once the session's connection has finished.
    pub closed: watch::Sender<bool>,
}

/// Arrival order of the next task, and how many tasks in the table hold newer ones back
/// (ORDERED, HEAD OF QUEUE). Both change only under the session's `tasks` lock.
#[derive(Default)]
pub struct TaskOrder {
    next_seq: AtomicU64,
    holding: AtomicU32,
}

// Aborts flag tasks they find in the table. A finishing command marks itself answering before
// it reads its flag and leaves the table only once answered (`ConnCtx::respond`): a task is
// either aborted and answers nothing, or is waited for until its answer is queued, or has
// answered and is not found.
impl Session {
    /// Take `task` out of the table, unless its ITT already names a newer task (an initiator
    /// may reuse an ITT as soon as it has the status).
    pub fn forget_task(&self, itt: Itt, task: &Task) {
        let mut tasks = lock(&self.tasks);
        // One probe: this runs for every command.
        if let std::collections::hash_map::Entry::Occupied(e) = tasks.entry(itt) {
            if std::ptr::eq(Arc::as_ptr(e.get()), task) {
                let gone = e.remove();
                self.left(&gone, &tasks);
            }
        }
    }

    /// Take the task `itt` out of the table, whatever it is (a write dropped while it waited
    /// for its Data-Out).
    pub fn remove_task(&self, itt: Itt) {
        let mut tasks = lock(&self.tasks);
        if let Some(gone) = tasks.remove(&itt) {
            self.left(&gone, &tasks);
        }
    }

    /// Enter a new command's task in the table, after every task already there, and decide
    /// whether it may run now (SAM-5 §8.6, one task set per I_T nexus and LU); a dormant task
    /// waits in [`Task::enabled`] until the older tasks holding it leave the table. Returns
    /// the task its ITT named before, if one was still there.
    pub fn enter_task(&self, itt: Itt, task: Arc<Task>) -> Option<Arc<Task>> {
        let mut tasks = lock(&self.tasks);
        let seq = self.order.next_seq.fetch_add(1, Ordering::Relaxed);
        task.seq.store(seq, Ordering::Relaxed);
        // Without a task holding others back, a SIMPLE task needs no look at the table.
        let free =
            task.attr == TaskAttribute::Simple && self.order.holding.load(Ordering::Relaxed) == 0;
        if !free && !may_enter(&task, &tasks) {
            task.enabled.store(false, Ordering::SeqCst);
            task.dormant.store(true, Ordering::Relaxed);
        }
        if task.attr.holds_newer() {
            self.order.holding.fetch_add(1, Ordering::Relaxed);
        }
        let replaced = tasks.insert(itt, task);
        if let Some(old) = &replaced {
            if !old.is_enabled() {
                // Out of the table nothing would ever enable it, nor find it to abort it: its
                // runner and CmdSN slot would be held for good. The initiator gave up on it.
                old.abort();
            }
            self.left(old, &tasks);
        }
        replaced
    }

    /// `gone` left the table: if it held newer tasks back, enable those it no longer holds.
    fn left(&self, gone: &Task, tasks: &FxHashMap<Itt, Arc<Task>>) {
        if self.order.holding.load(Ordering::Relaxed) == 0 {
            // Nothing holds any task back, so no task is dormant.
            return;
        }
        if gone.attr.holds_newer() {
            self.order.holding.fetch_sub(1, Ordering::Relaxed);
        }
        for t in tasks.values() {
            if !t.is_enabled() && may_enter(t, tasks) {
                t.enable();
            }
        }
    }

    /// Abort the task `itt`, if it is still here, and return it.
    pub fn abort_task(&self, itt: Itt) -> Option<Arc<Task>> {
        lock(&self.tasks).get(&itt).inspect(|t| t.abort()).cloned()
    }

    /// Abort this session's tasks on `lun` (or all with None) and return them.
    pub fn abort_tasks_on(&self, lun: Option<Lun>) -> Vec<Arc<Task>> {
        self.abort_each(lun, Task::abort)
    }

    /// Abort the tasks on `lun` for the array's own reasons: each still answers
    /// ([`Task::abort_answering`]).
    pub fn abort_tasks_answering(&self, lun: Lun) -> Vec<Arc<Task>> {
        self.abort_each(Some(lun), Task::abort_answering)
    }

    fn abort_each(&self, lun: Option<Lun>, abort: fn(&Task)) -> Vec<Arc<Task>> {
        lock(&self.tasks)
            .values()
            .filter(|t| lun.is_none_or(|l| t.lun == l))
            .inspect(|t| abort(t))
            .cloned()
            .collect()
    }

    /// The initiator port (name + ISID) reservations are held by.
    pub fn initiator_port(&self) -> crate::scsi::InitiatorPort {
        crate::scsi::InitiatorPort::new(&self.initiator, self.key.isid)
    }

    pub fn close(&self) {
        let _ = self.closing.send(true);
    }

    pub async fn wait_closed(&self) {
        let mut rx = self.closed.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }
}

#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<SessionKey, Arc<Session>>>,
    next_tsih: AtomicU16,
    next_nexus: AtomicU64,
}

impl Sessions {
    pub fn new() -> Sessions {
        Sessions::default()
    }

    /// A TSIH for a new session (never 0, which means "new session" on the wire).
    pub fn alloc_tsih(&self) -> u16 {
        loop {
            let t = self
                .next_tsih
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_add(1);
            if t != 0 && !lock(&self.map).values().any(|s| s.tsih == t) {
                return t;
            }
        }
    }

    /// Whether a live session has this ISID and TSIH: a login naming it asks to add a
    /// connection to that session.
    pub fn is_live(&self, isid: [u8; 6], tsih: u16) -> bool {
        lock(&self.map)
            .values()
            .any(|s| s.tsih == tsih && s.key.isid == isid)
    }

    pub fn alloc_nexus(&self) -> NexusId {
        NexusId(self.next_nexus.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// Register a session; returns the session it reinstates (same initiator, ISID and
    /// target), which the caller must close.
    pub fn insert(&self, s: Arc<Session>) -> Option<Arc<Session>> {
        lock(&self.map).insert(s.key.clone(), s)
    }

    /// Remove `s` if it is still the registered session for its key.
    pub fn remove(&self, s: &Session) {
        let mut m = lock(&self.map);
        if m.get(&s.key).is_some_and(|cur| cur.nexus == s.nexus) {
            m.remove(&s.key);
        }
    }

    /// Every session logged in to `target`.
    pub fn of_target(&self, target: &str) -> Vec<Arc<Session>> {
        lock(&self.map)
            .values()
            .filter(|s| s.target.name == target)
            .cloned()
            .collect()
    }

    pub fn all(&self) -> Vec<Arc<Session>> {
        lock(&self.map).values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        lock(&self.map).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_control_initiator_proves_itself_or_is_local() {
        use super::may_control;
        assert!(
            may_control(true, true, false),
            "control CHAP over the network"
        );
        assert!(may_control(true, false, true), "over loopback");
        assert!(
            !may_control(true, false, false),
            "a name alone, from the network"
        );
        assert!(!may_control(false, true, true), "not listed");
    }

    use super::*;

    #[test]
    fn task_management_silences_an_abort_the_array_wanted_answered() {
        let t = Task::new(Lun::single(0), TaskAttribute::Simple);
        t.abort_answering();
        assert!(t.is_aborted() && !t.is_silenced());
        assert!(!t.start(), "no backend I/O after either abort");
        t.abort();
        assert!(t.is_silenced(), "ABORT TASK's answer promises no other");
        let u = Task::new(Lun::single(0), TaskAttribute::Simple);
        u.abort();
        u.abort_answering();
        assert!(u.is_silenced(), "an unbind does not revive an answer");
    }

    #[tokio::test]
    async fn abort_before_start_prevents_io() {
        let t = Task::new(Lun::single(0), TaskAttribute::Simple);
        t.abort();
        assert!(!t.start());
        t.quiesced().await;
    }

    #[tokio::test]
    async fn quiesced_waits_for_running_io() {
        let t = Arc::new(Task::new(Lun::single(0), TaskAttribute::Simple));
        assert!(t.start());
        let t2 = t.clone();
        let waiter = tokio::spawn(async move { t2.quiesced().await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        t.finish();
        waiter.await.unwrap();
    }

    #[tokio::test]
    async fn answer_queued_waits_for_the_answer_being_queued() {
        let t = Arc::new(Task::new(Lun::single(0), TaskAttribute::Simple));
        t.start_answer();
        t.abort(); // as task management does before it waits
        t.quiesced().await; // no backend I/O: that wait is over at once
        let t2 = t.clone();
        let waiter = tokio::spawn(async move { t2.answer_queued().await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "the answer is still going out");
        t.answered();
        waiter.await.unwrap();
    }

    pub(super) fn session() -> Session {
        Session {
            tsih: 1,
            nexus: NexusId(1),
            key: SessionKey {
                initiator: "iqn.i".into(),
                isid: [0; 6],
                target: "iqn.t".into(),
                tpgt: 1,
            },
            initiator: "iqn.i".into(),
            target: Arc::new(Target {
                name: "iqn.t".into(),
                alias: None,
                luns: Default::default(),
            }),
            target_port: 1,
            control: false,
            window: Arc::new(Mutex::new(CmdWindow::new(
                crate::iscsi::pdu::SerialNumber(0),
                4,
            ))),
            tasks: Mutex::new(FxHashMap::default()),
            order: TaskOrder::default(),
            closing: watch::channel(false).0,
            closed: watch::channel(false).0,
        }
    }

    #[tokio::test]
    async fn an_abort_during_an_answer_waits_for_it() {
        // A command answering (its Data-In being queued) is still in the table: ABORT TASK
        // finds it and waits, so the TMF answer cannot overtake the command's last PDU.
        let s = session();
        let itt = Itt(7);
        let task = Arc::new(Task::new(Lun::single(0), TaskAttribute::Simple));
        lock(&s.tasks).insert(itt, task.clone());
        task.start_answer();
        let victim = s.abort_task(itt).expect("still in the table");
        let waiter = tokio::spawn(async move {
            victim.quiesced().await;
            victim.answer_queued().await;
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "the answer is still going out");
        s.forget_task(itt, &task);
        task.answered();
        waiter.await.unwrap();
        assert!(s.abort_task(itt).is_none(), "answered: gone from the table");
    }

    #[test]
    fn forgetting_a_task_spares_a_newer_one_with_its_itt() {
        let s = session();
        let (old, new) = (
            Task::new(Lun::single(0), TaskAttribute::Simple),
            Arc::new(Task::new(Lun::single(0), TaskAttribute::Simple)),
        );
        lock(&s.tasks).insert(Itt(3), new.clone());
        s.forget_task(Itt(3), &old);
        assert!(lock(&s.tasks).contains_key(&Itt(3)));
        s.forget_task(Itt(3), &new);
        assert!(lock(&s.tasks).is_empty());
    }

    #[test]
    fn tsih_is_never_zero() {
        let s = Sessions::new();
        s.next_tsih.store(u16::MAX, Ordering::Relaxed);
        assert_ne!(s.alloc_tsih(), 0);
    }
}

#[cfg(test)]
mod order_tests {
    use super::*;
    use TaskAttribute::{HeadOfQueue, Ordered, Simple};

    fn enter(s: &Session, itt: u32, lun: u16, attr: TaskAttribute) -> Arc<Task> {
        let t = Arc::new(Task::new(Lun::single(lun), attr));
        assert!(s.enter_task(Itt(itt), t.clone()).is_none());
        t
    }

    fn leave(s: &Session, itt: u32, t: &Task) {
        s.forget_task(Itt(itt), t);
    }

    #[test]
    fn dormant_tasks_run_once_the_tasks_holding_them_leave() {
        let s = tests::session();
        let s1 = enter(&s, 1, 0, Simple);
        let s2 = enter(&s, 2, 0, Simple);
        let o3 = enter(&s, 3, 0, Ordered);
        let s4 = enter(&s, 4, 0, Simple);
        let h5 = enter(&s, 5, 0, HeadOfQueue);
        let other = enter(&s, 6, 1, Simple);
        assert!(s1.is_enabled() && s2.is_enabled() && h5.is_enabled() && other.is_enabled());
        assert!(!o3.is_enabled() && !s4.is_enabled());
        leave(&s, 1, &s1);
        assert!(!o3.is_enabled());
        leave(&s, 2, &s2);
        assert!(
            o3.is_enabled() && !s4.is_enabled(),
            "SIMPLE waits for the older ORDERED"
        );
        leave(&s, 3, &o3);
        assert!(s4.is_enabled(), "HEAD OF QUEUE newer than it holds nothing");
        let s7 = enter(&s, 7, 0, Simple);
        assert!(!s7.is_enabled(), "the HEAD OF QUEUE task is still there");
        leave(&s, 5, &h5);
        assert!(s7.is_enabled());
        assert_eq!(s.order.holding.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn removed_and_replaced_tasks_release_what_they_held() {
        let s = tests::session();
        let o1 = enter(&s, 1, 0, Ordered);
        let s2 = enter(&s, 2, 0, Simple);
        assert!(o1.is_enabled() && !s2.is_enabled());
        // A write dropped while it waited for Data-Out.
        s.remove_task(Itt(1));
        assert!(s2.is_enabled());
        let o3 = enter(&s, 3, 0, Ordered);
        assert!(!o3.is_enabled());
        // The initiator reuses ITT 2 (its answer was lost to it): the old task is gone.
        let again = Arc::new(Task::new(Lun::single(0), Simple));
        assert!(s.enter_task(Itt(2), again.clone()).is_some());
        assert!(o3.is_enabled() && !again.is_enabled());
        // Now a dormant task's ITT is reused: it is aborted, so its wait ends.
        let third = Arc::new(Task::new(Lun::single(0), Simple));
        assert!(s.enter_task(Itt(2), third.clone()).is_some());
        assert!(again.is_aborted() && !third.is_aborted() && !third.is_enabled());
        leave(&s, 3, &o3);
        assert!(third.is_enabled());
    }

    #[tokio::test]
    async fn an_abort_ends_a_dormant_tasks_wait() {
        let s = tests::session();
        let _o = enter(&s, 1, 0, Ordered);
        let waiting = enter(&s, 2, 0, Ordered);
        let w = waiting.clone();
        let waiter = tokio::spawn(async move { w.enabled().await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        s.abort_task(Itt(2));
        waiter.await.unwrap();
        assert!(!waiting.is_enabled() && waiting.is_aborted());
    }
}
