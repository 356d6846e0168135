//! SPC-2 RESERVE and RELEASE (SPC-2 §7.21, §7.24): one I_T nexus reserves the whole logical
//! unit. Third-party and extent reservations are refused by the opcode table's usage masks
//! (INVALID FIELD IN CDB). Conflicts for other commands are decided in `pr/access.rs`.

use super::pr::Refusal;
use super::NexusId;

/// Where an I_T nexus stands among persistent reservations, while any registration exists:
/// then SPC-2 RESERVE and RELEASE follow SPC-4 §5.6.3 (CRH = 1, as REPORT CAPABILITIES says).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PrStanding {
    /// Its initiator port is registered.
    pub registered: bool,
    /// It holds the persistent reservation, or is a registrant under a registrants-only or
    /// all-registrants one.
    pub covered: bool,
}

/// Runs RESERVE (`reserve`) or RELEASE for `nexus`. `pr` is None when no persistent
/// reservation registration exists. Otherwise (CRH = 1) neither changes anything: RESERVE is
/// GOOD for a nexus the persistent reservation covers and a conflict for any other, RELEASE
/// GOOD for a registered one (a holder is registered) and a conflict for any other.
pub(crate) fn apply(
    holder: &mut Option<NexusId>,
    pr: Option<PrStanding>,
    nexus: NexusId,
    reserve: bool,
) -> Result<(), Refusal> {
    if let Some(st) = pr {
        let good = if reserve { st.covered } else { st.registered };
        return if good { Ok(()) } else { Err(Refusal::Conflict) };
    }
    match (reserve, *holder) {
        (true, Some(h)) if h != nexus => Err(Refusal::Conflict),
        (true, _) => {
            *holder = Some(nexus);
            Ok(())
        }
        // RELEASE by a non-holder is GOOD and changes nothing (SPC-2 §7.21.2).
        (false, Some(h)) if h != nexus => Ok(()),
        (false, _) => {
            *holder = None;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: NexusId = NexusId(1);
    const B: NexusId = NexusId(2);

    #[test]
    fn one_holder_and_release_by_others_is_harmless() {
        let mut h = None;
        assert_eq!(apply(&mut h, None, A, true), Ok(()));
        assert_eq!(apply(&mut h, None, A, true), Ok(()));
        assert_eq!(apply(&mut h, None, B, true), Err(Refusal::Conflict));
        assert_eq!(apply(&mut h, None, B, false), Ok(()));
        assert_eq!(h, Some(A));
        assert_eq!(apply(&mut h, None, A, false), Ok(()));
        assert_eq!(h, None);
        assert_eq!(apply(&mut h, None, B, true), Ok(()));
    }

    #[test]
    fn next_to_registrations_spc2_changes_nothing() {
        let mut h = None;
        let (covered, registered, stranger) = (
            PrStanding {
                registered: true,
                covered: true,
            },
            PrStanding {
                registered: true,
                covered: false,
            },
            PrStanding {
                registered: false,
                covered: false,
            },
        );
        assert_eq!(apply(&mut h, Some(covered), A, true), Ok(()));
        assert_eq!(
            apply(&mut h, Some(registered), A, true),
            Err(Refusal::Conflict)
        );
        assert_eq!(
            apply(&mut h, Some(stranger), A, true),
            Err(Refusal::Conflict)
        );
        assert_eq!(apply(&mut h, Some(covered), A, false), Ok(()));
        assert_eq!(apply(&mut h, Some(registered), A, false), Ok(()));
        assert_eq!(
            apply(&mut h, Some(stranger), B, false),
            Err(Refusal::Conflict)
        );
        assert_eq!(h, None);
    }
}
