//! Per-I_T-nexus unit attention queues (SAM-5 §5.14). The READ/WRITE fast path only loads
//! one atomic: the mutex is taken when some nexus might have something pending.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::sense::Sense;
use super::NexusId;

/// More than this many distinct conditions for one nexus means the initiator is not
/// listening: the oldest is dropped to make room, never a reset report, which outranks the
/// rest (the public record names no rule for a full queue; this is our choice).
const MAX_QUEUED: usize = 8;

#[derive(Debug, Default)]
pub(crate) struct UnitAttentions {
    /// True whenever any queue may be non-empty. Set before the queue grows becomes visible
    /// to the slow path, cleared only under the lock when every queue is empty.
    maybe_pending: AtomicBool,
    /// Known nexuses (keys) and their queues, oldest first.
    queues: Mutex<HashMap<NexusId, VecDeque<Sense>>>,
}

impl UnitAttentions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NexusId, VecDeque<Sense>>> {
        // A poisoned lock only means another thread panicked mid-update of a plain map; the
        // map is still structurally valid, so keep serving rather than wedge the LU.
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn add_nexus(&self, nexus: NexusId, initial: Sense) {
        let mut q = self.lock();
        let queue = q.entry(nexus).or_default();
        queue.clear();
        queue.push_back(initial);
        self.maybe_pending.store(true, Ordering::Release);
    }

    /// A nexus that starts reaching the LU with nothing to report: known from now on, so the
    /// conditions established for every nexus (resets, mode changes) reach it too.
    pub(crate) fn attach_nexus(&self, nexus: NexusId) {
        self.lock().entry(nexus).or_default();
    }

    pub(crate) fn remove_nexus(&self, nexus: NexusId) {
        let mut q = self.lock();
        q.remove(&nexus);
        self.refresh(&q);
    }

    pub(crate) fn establish(&self, nexus: Option<NexusId>, sense: Sense) {
        let mut q = self.lock();
        match nexus {
            Some(n) => push(q.entry(n).or_default(), sense),
            None => q.values_mut().for_each(|queue| push(queue, sense)),
        }
        self.refresh(&q);
    }

    /// Every known nexus except `except`.
    pub(crate) fn establish_others(&self, except: NexusId, sense: Sense) {
        let mut q = self.lock();
        q.iter_mut()
            .filter(|(n, _)| **n != except)
            .for_each(|(_, queue)| push(queue, sense));
        self.refresh(&q);
    }

    /// Reports and clears the oldest condition for `nexus`, if any.
    pub(crate) fn take(&self, nexus: NexusId) -> Option<Sense> {
        if !self.maybe_pending.load(Ordering::Acquire) {
            return None;
        }
        let mut q = self.lock();
        let sense = q.get_mut(&nexus).and_then(VecDeque::pop_front);
        self.refresh(&q);
        sense
    }

    /// Clears one specific condition without reporting it (REPORT LUNS clears REPORTED LUNS
    /// DATA HAS CHANGED for its nexus, SPC-4 §6.33).
    pub(crate) fn clear(&self, nexus: NexusId, asc: u8, ascq: u8) {
        if !self.maybe_pending.load(Ordering::Acquire) {
            return;
        }
        let mut q = self.lock();
        if let Some(queue) = q.get_mut(&nexus) {
            queue.retain(|s| !(s.asc == asc && s.ascq == ascq));
        }
        self.refresh(&q);
    }

    /// Puts back a condition `take` reported for a command whose answer never went out (it
    /// was aborted first): the initiator has not seen it, so it is pending again, as the
    /// oldest. Unless it no longer applies: a reset queued since supersedes it (as in `push`),
    /// it is queued again already, the queue is full (the oldest is what a full queue drops),
    /// or the nexus is gone.
    pub(crate) fn restore(&self, nexus: NexusId, sense: Sense) {
        let mut q = self.lock();
        let Some(queue) = q.get_mut(&nexus) else {
            return;
        };
        let superseded = queue.iter().any(is_reset);
        if superseded || holds(queue, &sense) || queue.len() >= MAX_QUEUED {
            return;
        }
        queue.push_front(sense);
        self.maybe_pending.store(true, Ordering::Release);
    }

    fn refresh(&self, q: &HashMap<NexusId, VecDeque<Sense>>) {
        let any = q.values().any(|queue| !queue.is_empty());
        self.maybe_pending.store(any, Ordering::Release);
    }
}

/// POWER ON, RESET, OR BUS DEVICE RESET OCCURRED (29h/xx).
fn is_reset(sense: &Sense) -> bool {
    sense.asc == 0x29
}

/// Whether the queue already holds the same condition (ASC and ASCQ).
fn holds(queue: &VecDeque<Sense>, sense: &Sense) -> bool {
    queue
        .iter()
        .any(|s| s.asc == sense.asc && s.ascq == sense.ascq)
}

fn push(queue: &mut VecDeque<Sense>, sense: Sense) {
    if is_reset(&sense) {
        // A reset supersedes everything it reset, including older reset reports: SAM-5 says
        // the initiator must assume all state was lost, so older conditions add nothing.
        queue.clear();
        queue.push_back(sense);
        return;
    }
    if holds(queue, &sense) {
        return;
    }
    if queue.len() >= MAX_QUEUED {
        // A reset report can only be first: its arrival clears the queue.
        let oldest = usize::from(queue.front().is_some_and(is_reset));
        queue.remove(oldest);
    }
    queue.push_back(sense);
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: NexusId = NexusId(1);
    const B: NexusId = NexusId(2);

    #[test]
    fn reported_once_per_nexus() {
        let ua = UnitAttentions::default();
        ua.add_nexus(A, Sense::POWER_ON_OCCURRED);
        ua.add_nexus(B, Sense::POWER_ON_OCCURRED);
        assert_eq!(ua.take(A), Some(Sense::POWER_ON_OCCURRED));
        assert_eq!(ua.take(A), None);
        assert!(ua.maybe_pending.load(Ordering::Relaxed));
        assert_eq!(ua.take(B), Some(Sense::POWER_ON_OCCURRED));
        assert!(!ua.maybe_pending.load(Ordering::Relaxed));
    }

    #[test]
    fn reset_supersedes_and_duplicates_coalesce() {
        let ua = UnitAttentions::default();
        ua.add_nexus(A, Sense::POWER_ON_OCCURRED);
        ua.establish(None, Sense::MODE_PARAMETERS_CHANGED);
        ua.establish(None, Sense::MODE_PARAMETERS_CHANGED);
        ua.establish(None, Sense::BUS_DEVICE_RESET);
        assert_eq!(ua.take(A), Some(Sense::BUS_DEVICE_RESET));
        assert_eq!(ua.take(A), None);
    }

    #[test]
    fn a_full_queue_drops_its_oldest_condition_but_keeps_a_reset() {
        let ua = UnitAttentions::default();
        ua.add_nexus(A, Sense::POWER_ON_OCCURRED);
        let distinct = |n: u8| Sense::new(crate::scsi::SenseKey::UnitAttention, 0x2A, n);
        for n in 1..=MAX_QUEUED as u8 {
            ua.establish(Some(A), distinct(n));
        }
        assert_eq!(ua.take(A), Some(Sense::POWER_ON_OCCURRED));
        // 2A/01 (the oldest after the reset) made room for the last; the newest all stayed.
        for n in 2..=MAX_QUEUED as u8 {
            assert_eq!(ua.take(A), Some(distinct(n)));
        }
        assert_eq!(ua.take(A), None);
    }

    #[test]
    fn an_attached_nexus_hears_what_every_nexus_hears() {
        let ua = UnitAttentions::default();
        ua.attach_nexus(A);
        assert_eq!(ua.take(A), None, "nothing to report on attaching");
        ua.establish(None, Sense::BUS_DEVICE_RESET);
        assert_eq!(ua.take(A), Some(Sense::BUS_DEVICE_RESET));
        ua.add_nexus(B, Sense::POWER_ON_OCCURRED);
        ua.attach_nexus(B);
        assert_eq!(ua.take(B), Some(Sense::POWER_ON_OCCURRED), "kept");
    }

    #[test]
    fn others_and_clear() {
        let ua = UnitAttentions::default();
        ua.add_nexus(A, Sense::POWER_ON_OCCURRED);
        ua.add_nexus(B, Sense::POWER_ON_OCCURRED);
        ua.take(A);
        ua.take(B);
        ua.establish_others(A, Sense::MODE_PARAMETERS_CHANGED);
        assert_eq!(ua.take(A), None);
        ua.establish(Some(B), Sense::REPORTED_LUNS_DATA_CHANGED);
        ua.clear(B, 0x3F, 0x0E);
        assert_eq!(ua.take(B), Some(Sense::MODE_PARAMETERS_CHANGED));
        ua.remove_nexus(B);
        ua.establish(None, Sense::CAPACITY_DATA_CHANGED);
        assert_eq!(ua.take(B), None);
    }

    #[test]
    fn an_unreported_condition_goes_back_first_unless_superseded() {
        let ua = UnitAttentions::default();
        ua.add_nexus(A, Sense::MODE_PARAMETERS_CHANGED);
        ua.establish(Some(A), Sense::CAPACITY_DATA_CHANGED);
        let taken = ua.take(A).unwrap();
        ua.restore(A, taken);
        assert_eq!(
            ua.take(A),
            Some(Sense::MODE_PARAMETERS_CHANGED),
            "oldest first"
        );
        assert_eq!(ua.take(A), Some(Sense::CAPACITY_DATA_CHANGED));
        // From an empty queue, which the fast path no longer looks at.
        ua.restore(A, taken);
        assert_eq!(ua.take(A), Some(Sense::MODE_PARAMETERS_CHANGED));
        assert_eq!(ua.take(A), None);
        // Established again meanwhile: reported once.
        ua.establish(Some(A), taken);
        ua.restore(A, taken);
        assert_eq!(ua.take(A), Some(taken));
        assert_eq!(ua.take(A), None);
        // A reset since supersedes it.
        ua.establish(None, Sense::BUS_DEVICE_RESET);
        ua.restore(A, taken);
        assert_eq!(ua.take(A), Some(Sense::BUS_DEVICE_RESET));
        assert_eq!(ua.take(A), None);
        // A nexus gone hears nothing more.
        ua.remove_nexus(A);
        ua.restore(A, taken);
        assert_eq!(ua.take(A), None);
    }
}
