//! Which commands a reservation held by someone else lets through (SPC-2 §5.5.1 for
//! RESERVE/RELEASE, SPC-4 §5.9.1 table 63 and SBC-3 table 13 for persistent reservations).

use super::super::cdb::Cdb;
use super::super::opcodes::Command;
use super::state::{PrState, Registrant};

/// How a command relates to reservations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Never conflicts (INQUIRY, REPORT LUNS, REQUEST SENSE, the PR commands themselves...).
    Always,
    /// Conflicts only under the exclusive-access types.
    Read,
    /// Conflicts under every type for a nexus without access.
    Write,
}

/// Commands not named here (including ones added later) are treated as writes: refusing a
/// command to a non-holder is the safe mistake.
pub(crate) fn classify(command: Command, cdb: Cdb<'_>) -> Access {
    use Command::*;
    match command {
        Inquiry
        | RequestSense
        | ReportLuns
        | PersistentReserveIn
        | PersistentReserveOut
        | TestUnitReady
        | ReadCapacity10
        | ReadCapacity16
        // SPC-4 lets REPORT TARGET PORT GROUPS through every reservation: multipathing
        // (ESXi's ALUA plugin) polls it on every path, and a cluster's reservation must not
        // make the paths of the hosts outside it look failed.
        | ReportTargetPortGroups
        // START STOP UNIT never stops anything here (see disk.rs), so it cannot disturb the
        // holder.
        | StartStopUnit => Access::Always,
        // PREVENT=0 only undoes this nexus' own prevention (SBC-3 table 13: allowed).
        PreventAllowMediumRemoval if !cdb.bit(4, 0) => Access::Always,
        Read6 | Read10 | Read12 | Read16 | Verify10 | Verify12 | Verify16 | PreFetch10
        | PreFetch16 | ModeSense6 | ModeSense10
        // SBC: GET LBA STATUS reads the mapping, so it is a read (allowed under write
        // exclusive, not under exclusive access).
        | GetLbaStatus
        // REPORT SUPPORTED OPERATION CODES: LIO's reservation check, which follows SPC-4's
        // table column by column, allows it to non-holders under write exclusive only (SPC-4's
        // own text was not at hand). Registrants of the registrants-only and all-registrants
        // types have access anyway.
        | ReportSupportedOperationCodes => Access::Read,
        _ => Access::Write,
    }
}

/// SPC-2: while another nexus holds a RESERVE, only these complete normally. RELEASE from a
/// non-holder is GOOD without effect (handled by the RELEASE itself). REPORT SUPPORTED
/// OPERATION CODES came after SPC-2 and is not among them (LIO conflicts it too).
pub(crate) fn allowed_under_spc2(command: Command, cdb: Cdb<'_>) -> bool {
    use Command::*;
    match command {
        Inquiry | RequestSense | ReportLuns | Release6 | Release10 => true,
        PreventAllowMediumRemoval => !cdb.bit(4, 0),
        _ => false,
    }
}

/// Whether `port` may run a command of class `access` under the persistent reservation.
pub(crate) fn pr_allows(state: &PrState, port: &Registrant, access: Access) -> bool {
    let Some(res) = state.reservation else {
        return true;
    };
    if access == Access::Always || state.is_holder(port) {
        return true;
    }
    if res.kind.registrants_have_access() && state.registration(port).is_some() {
        return true;
    }
    access == Access::Read && !res.kind.exclusive_access()
}
