//! When a task may run, given the older tasks of its task set (SAM-5 §8.6). The control mode
//! page reports TST 001b: each I_T nexus has a task set of its own per logical unit, so one
//! host's ORDERED command never holds up another host's I/O on a VVol both have bound, and
//! the ordering state lives with the session, not on a line every session writes.

/// A command's task attribute, as far as ordering goes. UNTAGGED counts as SIMPLE; ACA is
/// refused before a task is made (no ACA is ever established: NormACA is 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TaskAttribute {
    #[default]
    Simple,
    Ordered,
    HeadOfQueue,
}

impl TaskAttribute {
    /// Whether newer tasks of the task set have to wait for this one: SIMPLE waits for older
    /// ORDERED and HEAD OF QUEUE tasks, ORDERED for every older task.
    pub fn holds_newer(self) -> bool {
        self != TaskAttribute::Simple
    }

    /// Whether a task with this attribute may enter the enabled state while the older tasks
    /// `older` (their attributes) have not completed. HEAD OF QUEUE is enabled at once.
    pub fn may_enter(self, mut older: impl Iterator<Item = TaskAttribute>) -> bool {
        match self {
            TaskAttribute::HeadOfQueue => true,
            TaskAttribute::Ordered => older.next().is_none(),
            TaskAttribute::Simple => older.all(|o| !o.holds_newer()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TaskAttribute::{self, *};

    fn enters(t: TaskAttribute, older: &[TaskAttribute]) -> bool {
        t.may_enter(older.iter().copied())
    }

    #[test]
    fn simple_waits_only_for_older_ordered_and_head_of_queue_tasks() {
        assert!(enters(Simple, &[]));
        assert!(enters(Simple, &[Simple, Simple]));
        assert!(!enters(Simple, &[Simple, Ordered]));
        assert!(!enters(Simple, &[HeadOfQueue]));
    }

    #[test]
    fn ordered_waits_for_every_older_task() {
        assert!(enters(Ordered, &[]));
        assert!(!enters(Ordered, &[Simple]));
        assert!(!enters(Ordered, &[HeadOfQueue]));
        assert!(!enters(Ordered, &[Ordered]));
    }

    #[test]
    fn head_of_queue_never_waits() {
        assert!(enters(HeadOfQueue, &[Ordered, Simple, HeadOfQueue]));
        assert!(HeadOfQueue.holds_newer() && Ordered.holds_newer() && !Simple.holds_newer());
    }
}
