//! The command window of a session (RFC 7143 §4.2.2.1): which CmdSNs are accepted, how
//! ExpCmdSN advances, and MaxCmdSN as back-pressure. MaxCmdSN stops advancing while commands
//! are in flight, so an initiator can never have more than `depth` non-immediate commands
//! queued here: that is what bounds the memory a peer can make us hold. It never goes back,
//! though: an initiator ignores a MaxCmdSN lower than one it has seen, and may send up to the
//! highest (RFC 7143 §4.2.2.1), so a command the target then ignored would be lost.

use super::pdu::SerialNumber;

#[derive(Debug, Clone)]
pub struct CmdWindow {
    expcmdsn: SerialNumber,
    depth: u32,
    in_flight: u32,
    /// CmdSNs received ahead of ExpCmdSN (a gap), bit i = ExpCmdSN + 1 + i.
    ahead: u128,
    /// The highest MaxCmdSN this window may have advertised.
    floor: SerialNumber,
}

/// What to do with an arriving command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Execute it.
    Accept,
    /// Outside the window: silently ignore it (RFC 7143 §4.2.2.1).
    Ignore,
    /// An immediate command beyond [`IMMEDIATE_ALLOWANCE`]: reject it ("too many immediate
    /// commands"); its CmdSN is not counted.
    TooManyImmediate,
}

/// Immediate commands the window does not count, held beyond its depth. Without a bound a
/// peer sending only immediate commands (each with its immediate data) could make us hold as
/// many as it likes.
pub const IMMEDIATE_ALLOWANCE: u32 = 8;

impl CmdWindow {
    /// `depth` is the queue depth offered to the initiator (at least 1, at most 128).
    pub fn new(expcmdsn: SerialNumber, depth: u32) -> CmdWindow {
        let depth = depth.clamp(1, 128);
        CmdWindow {
            expcmdsn,
            depth,
            in_flight: 0,
            ahead: 0,
            floor: SerialNumber(expcmdsn.0.wrapping_add(depth).wrapping_sub(1)),
        }
    }

    pub fn expcmdsn(&self) -> SerialNumber {
        self.expcmdsn
    }

    /// MaxCmdSN = ExpCmdSN + free slots − 1, or the highest value already advertised if that
    /// is more. With no free slot it equals ExpCmdSN − 1, which closes the window (RFC 7143
    /// §4.2.2.1 allows MaxCmdSN = ExpCmdSN − 1).
    pub fn maxcmdsn(&self) -> SerialNumber {
        let free = self.depth.saturating_sub(self.in_flight);
        let open = SerialNumber(self.expcmdsn.0.wrapping_add(free).wrapping_sub(1));
        if open.lt(self.floor) {
            self.floor
        } else {
            open
        }
    }

    /// Admit a command. Immediate commands are always accepted and do not advance ExpCmdSN.
    /// Either kind of command can take a slot without advancing ExpCmdSN (an immediate one, or
    /// one ahead of a gap), which would lower MaxCmdSN: what was open stays open.
    pub fn admit(&mut self, cmdsn: SerialNumber, immediate: bool) -> Admission {
        if immediate && self.in_flight >= self.depth + IMMEDIATE_ALLOWANCE {
            return Admission::TooManyImmediate;
        }
        self.enter(cmdsn, immediate)
    }

    fn enter(&mut self, cmdsn: SerialNumber, immediate: bool) -> Admission {
        self.floor = self.maxcmdsn();
        if immediate {
            self.in_flight += 1;
            return Admission::Accept;
        }
        let max = self.maxcmdsn();
        if cmdsn.lt(self.expcmdsn) || max.lt(cmdsn) || !self.receive(cmdsn) {
            return Admission::Ignore;
        }
        self.in_flight += 1;
        Admission::Accept
    }

    /// ABORT TASK for a command that never arrived, whose CmdSN is still awaited (RFC 7143
    /// §11.6.1 b): count the CmdSN as received, so ExpCmdSN does not wait for it forever, and
    /// execute nothing. False if `cmdsn` is not awaited (behind the window, beyond what the
    /// initiator may have sent, or already received).
    pub fn skip_missing(&mut self, cmdsn: SerialNumber) -> bool {
        let offset = cmdsn.0.wrapping_sub(self.expcmdsn.0);
        !cmdsn.lt(self.expcmdsn) && offset < self.depth && self.receive(cmdsn)
    }

    /// Mark `cmdsn`, at or ahead of ExpCmdSN within the window, as received; false for a
    /// duplicate.
    fn receive(&mut self, cmdsn: SerialNumber) -> bool {
        let offset = cmdsn.0.wrapping_sub(self.expcmdsn.0);
        if offset == 0 {
            self.expcmdsn = self.expcmdsn.next();
            // Pull in any commands that arrived ahead of this one.
            while self.ahead & 1 == 1 {
                self.ahead >>= 1;
                self.expcmdsn = self.expcmdsn.next();
            }
            self.ahead >>= 1;
        } else {
            let bit = 1u128 << (offset - 1);
            if self.ahead & bit != 0 {
                return false;
            }
            self.ahead |= bit;
        }
        true
    }

    /// Whether the initiator may send no command now: every slot is taken and no more was
    /// ever advertised (MaxCmdSN = ExpCmdSN − 1).
    pub fn is_shut(&self) -> bool {
        self.maxcmdsn().lt(self.expcmdsn)
    }

    /// A previously accepted command finished (response sent or aborted).
    pub fn complete(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// Commands that only take a CmdSN (NOP-Out with a reply, Text, Logout, TMF when not
    /// immediate) pass through the same ordering but hold no slot afterwards.
    pub fn admit_transient(&mut self, cmdsn: SerialNumber, immediate: bool) -> Admission {
        // Never "too many": they hold nothing.
        let a = self.enter(cmdsn, immediate);
        if a == Admission::Accept {
            self.complete();
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_commands_advance_expcmdsn() {
        let mut w = CmdWindow::new(SerialNumber(10), 4);
        assert_eq!(w.maxcmdsn(), SerialNumber(13));
        assert_eq!(w.admit(SerialNumber(10), false), Admission::Accept);
        assert_eq!(w.expcmdsn(), SerialNumber(11));
        // one in flight: window shrinks by one.
        assert_eq!(w.maxcmdsn(), SerialNumber(13));
        w.complete();
        assert_eq!(w.maxcmdsn(), SerialNumber(14));
    }

    #[test]
    fn immediate_commands_are_bounded_but_transient_ones_are_not() {
        let mut w = CmdWindow::new(SerialNumber(0), 4);
        for _ in 0..4 + IMMEDIATE_ALLOWANCE {
            assert_eq!(w.admit(SerialNumber(0), true), Admission::Accept);
        }
        assert_eq!(w.admit(SerialNumber(0), true), Admission::TooManyImmediate);
        // An immediate NOP-Out or task management request holds nothing: still accepted.
        assert_eq!(w.admit_transient(SerialNumber(0), true), Admission::Accept);
        w.complete();
        assert_eq!(w.admit(SerialNumber(0), true), Admission::Accept);
        assert_eq!(w.expcmdsn(), SerialNumber(0));
    }

    #[test]
    fn shut_once_every_slot_is_taken_and_nothing_more_was_offered() {
        let mut w = CmdWindow::new(SerialNumber(0), 2);
        assert!(!w.is_shut());
        assert_eq!(w.admit(SerialNumber(0), false), Admission::Accept);
        assert!(!w.is_shut(), "one slot left");
        assert_eq!(w.admit(SerialNumber(1), false), Admission::Accept);
        assert!(w.is_shut());
        w.complete();
        assert!(!w.is_shut());
        // An immediate command takes the slot, but MaxCmdSN 2 was already offered.
        assert_eq!(w.admit(SerialNumber(2), true), Admission::Accept);
        assert!(!w.is_shut());
    }

    #[test]
    fn maxcmdsn_never_goes_back() {
        // Depth 4 advertises MaxCmdSN 3. An immediate command then takes a slot without
        // advancing ExpCmdSN; the initiator may still send CmdSN 0..=3, and all must run.
        let mut w = CmdWindow::new(SerialNumber(0), 4);
        assert_eq!(w.maxcmdsn(), SerialNumber(3));
        assert_eq!(w.admit(SerialNumber(0), true), Admission::Accept);
        assert_eq!(w.maxcmdsn(), SerialNumber(3));
        for n in 0..4 {
            assert_eq!(
                w.admit(SerialNumber(n), false),
                Admission::Accept,
                "CmdSN {n}"
            );
        }
        // Five in flight; the window stays at 3 until enough complete.
        assert_eq!(w.maxcmdsn(), SerialNumber(3));
        assert_eq!(w.admit(SerialNumber(4), false), Admission::Ignore);
        w.complete();
        w.complete();
        assert_eq!(w.maxcmdsn(), SerialNumber(4));
        // Commands ahead of a gap do not lower it either.
        let mut w = CmdWindow::new(SerialNumber(0), 4);
        assert_eq!(w.admit(SerialNumber(2), false), Admission::Accept);
        assert_eq!(w.maxcmdsn(), SerialNumber(3));
        assert_eq!(w.admit(SerialNumber(3), false), Admission::Accept);
        assert_eq!(w.admit(SerialNumber(0), false), Admission::Accept);
        assert_eq!(w.admit(SerialNumber(1), false), Admission::Accept);
        assert_eq!(w.expcmdsn(), SerialNumber(4));
        assert_eq!(w.maxcmdsn(), SerialNumber(3), "closed: four in flight");
    }

    #[test]
    fn out_of_window_is_ignored() {
        let mut w = CmdWindow::new(SerialNumber(10), 4);
        assert_eq!(w.admit(SerialNumber(9), false), Admission::Ignore);
        assert_eq!(w.admit(SerialNumber(14), false), Admission::Ignore);
        assert_eq!(w.expcmdsn(), SerialNumber(10));
    }

    #[test]
    fn a_gap_is_filled_later() {
        let mut w = CmdWindow::new(SerialNumber(0), 8);
        assert_eq!(w.admit(SerialNumber(1), false), Admission::Accept);
        assert_eq!(w.admit(SerialNumber(2), false), Admission::Accept);
        assert_eq!(w.expcmdsn(), SerialNumber(0));
        assert_eq!(w.admit(SerialNumber(2), false), Admission::Ignore);
        assert_eq!(w.admit(SerialNumber(0), false), Admission::Accept);
        assert_eq!(w.expcmdsn(), SerialNumber(3));
    }

    #[test]
    fn full_window_closes() {
        let mut w = CmdWindow::new(SerialNumber(0), 2);
        w.admit(SerialNumber(0), false);
        w.admit(SerialNumber(1), false);
        assert_eq!(w.maxcmdsn(), SerialNumber(1)); // == ExpCmdSN - 1
        assert_eq!(w.admit(SerialNumber(2), false), Admission::Ignore);
    }

    #[test]
    fn wraps_around() {
        let mut w = CmdWindow::new(SerialNumber(u32::MAX), 4);
        assert_eq!(w.admit(SerialNumber(u32::MAX), false), Admission::Accept);
        assert_eq!(w.admit(SerialNumber(0), false), Admission::Accept);
        assert_eq!(w.expcmdsn(), SerialNumber(1));
    }

    #[test]
    fn an_aborted_missing_command_stops_holding_the_window() {
        let mut w = CmdWindow::new(SerialNumber(0), 4);
        // CmdSN 0 never arrives; 1 and 2 do.
        assert_eq!(w.admit(SerialNumber(1), false), Admission::Accept);
        assert_eq!(w.admit(SerialNumber(2), false), Admission::Accept);
        assert!(w.skip_missing(SerialNumber(0)));
        assert_eq!(w.expcmdsn(), SerialNumber(3));
        // Neither a received nor a passed CmdSN, nor one beyond the window, is skipped.
        assert!(!w.skip_missing(SerialNumber(2)));
        assert!(!w.skip_missing(SerialNumber(3 + 4)));
        assert!(w.skip_missing(SerialNumber(4)));
        assert!(!w.skip_missing(SerialNumber(4)));
        assert_eq!(w.expcmdsn(), SerialNumber(3));
        // A command sent later with a skipped CmdSN is a duplicate.
        assert_eq!(w.admit(SerialNumber(4), false), Admission::Ignore);
    }
}
