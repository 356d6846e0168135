//! SPC-2 RESERVE and RELEASE (SPC-2 §7.21, §7.24): one I_T nexus reserves the whole logical
//! unit. Third-party and extent reservations are refused by the opcode table's usage masks
//! (INVALID FIELD IN CDB). Conflicts for other commands are decided in `pr/access.rs`.

use super::pr::Refusal;
use super::NexusId;

/// Runs RESERVE (`reserve`) or RELEASE for `nexus`. `registered` is None when no persistent
/// reservation registration exists, else whether this nexus' port is registered: with CRH = 1
/// (SPC-4 §5.6.3) RESERVE then conflicts, and RELEASE is GOOD without effect for a registered
/// port and a conflict for anyone else.
pub(crate) fn apply(
    holder: &mut Option<NexusId>,
    registered: Option<bool>,
    nexus: NexusId,
    reserve: bool,
) -> Result<(), Refusal> {
    if let Some(registered) = registered {
        return if !reserve && registered {
            Ok(())
        } else {
            Err(Refusal::Conflict)
        };
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
    fn registrations_refuse_spc2() {
        let mut h = None;
        assert_eq!(apply(&mut h, Some(true), A, true), Err(Refusal::Conflict));
        assert_eq!(apply(&mut h, Some(true), A, false), Ok(()));
        assert_eq!(apply(&mut h, Some(false), B, false), Err(Refusal::Conflict));
        assert_eq!(h, None);
    }
}
