//! REPORT LUNS for a logical unit conglomerate (reference §1.4, §2.2, §2.3): what a host sees
//! depends on the LU it asks and on SELECT REPORT.
//!
//! | Addressed LU | 00h / 02h | 01h | 10h | 11h | 12h |
//! |---|---|---|---|---|---|
//! | LUN 0 (normal or absent) / W-LUN C101h | PEs + normal LUs | W-LUN | PEs | PEs + normal LUs | 5h/20h/0Dh |
//! | PE | this host's secondaries at this PE | W-LUN | as at LUN 0 if the PE is LUN 0, else 5h/24h/00h byte 2 | same | the PE + this host's secondaries |
//! | normal LU | PEs + normal LUs | W-LUN | as at LUN 0 if it is LUN 0, else 5h/24h/00h byte 2 | same | 5h/20h/0Dh |
//! | secondary (VVol) | PEs + normal LUs | W-LUN | 5h/24h/00h byte 2 | same | 5h/20h/0Dh |
//!
//! Other SELECT REPORT values (reserved and vendor-specific F8h..FFh) → 5h/24h/00h byte 2;
//! ALLOCATION LENGTH below 16 → 5h/24h/00h byte 6.
//!
//! Decisions:
//! * Secondaries are never listed outside their PE: an OS scanning LUN 0 must not probe VVols
//!   (what a real array does, [SG-#58]), and 02h answers like 00h for the same reason.
//! * 01h (well-known LUs only) lists the REPORT LUNS W-LUN, the one well-known LU we answer.
//! * 02h at a non-PE with an empty inventory lists the W-LUN: SPC-5 wants a default
//!   inventory there. At a PE the list is exactly what is bound, possibly empty.
//! * PEs are encoded with [`pe_lun`] (AM 00b, 14-bit above 255); normal LUs with
//!   [`Lun::single`], as everywhere else in the target.

use crate::scsi::report_luns::{encode_list, parse_cdb};
use crate::scsi::{Lun, Response, Sense};

use super::address::pe_lun;

/// The LU a REPORT LUNS was addressed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressed {
    /// LUN 0 when it is a normal LU or has no LU behind it, or the REPORT LUNS W-LUN.
    Lun0OrWlun,
    /// A Protocol Endpoint (which may be LUN 0).
    Pe(u16),
    /// An ordinary (non-conglomerate) LU.
    Normal(u16),
    /// A bound VVol (PE ‖ secondary id).
    Secondary,
}

/// What the asking host can see. Lists are reported in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    /// PE numbers.
    pub pes: Vec<u16>,
    /// Ordinary LU numbers.
    pub normal: Vec<u16>,
    /// Full two-level LUNs of this host's Active bindings at the addressed PE (empty unless
    /// [`Addressed::Pe`]).
    pub secondaries: Vec<Lun>,
}

const SELECT_ALL_ADDRESSING: u8 = 0x00;
const SELECT_WELL_KNOWN: u8 = 0x01;
const SELECT_ALL: u8 = 0x02;
const SELECT_ADMINISTRATIVE: u8 = 0x10;
const SELECT_ADMINISTRATIVE_AND_NON_CONGLOMERATE: u8 = 0x11;
const SELECT_SUBSIDIARY: u8 = 0x12;

/// Answers REPORT LUNS `cdb` sent to `addressed`. The caller clears REPORTED LUNS DATA HAS
/// CHANGED for the nexus when the answer is GOOD.
pub fn report_luns(cdb: &[u8], addressed: Addressed, inv: &Inventory) -> Response {
    let answer = parse_cdb(cdb).and_then(|(select, alloc)| {
        select_luns(select, addressed, inv).map(|luns| encode_list(luns, alloc))
    });
    match answer {
        Ok(data) => Response::good(data),
        Err(sense) => Response::check(sense),
    }
}

/// The LUNs SELECT REPORT `select` asks for at `addressed` (the table above).
fn select_luns(select: u8, addressed: Addressed, inv: &Inventory) -> Result<Vec<Lun>, Sense> {
    let pes = || inv.pes.iter().map(|p| pe_lun(*p));
    let top = || pes().chain(inv.normal.iter().map(|n| Lun::single(*n)));
    // 10h and 11h "shall" be sent to LUN 0 or the W-LUN; a PE or normal LU that is LUN 0
    // qualifies.
    let at_lun0 = matches!(
        addressed,
        Addressed::Lun0OrWlun | Addressed::Pe(0) | Addressed::Normal(0)
    );
    let invalid_select = Sense::invalid_cdb_field(2, Some(7));
    Ok(match (select, addressed) {
        (SELECT_ALL_ADDRESSING | SELECT_ALL, Addressed::Pe(_)) => inv.secondaries.clone(),
        (SELECT_ALL_ADDRESSING, _) => top().collect(),
        (SELECT_ALL, _) => {
            let all: Vec<Lun> = top().collect();
            if all.is_empty() {
                vec![Lun::REPORT_LUNS_WLUN]
            } else {
                all
            }
        }
        (SELECT_WELL_KNOWN, _) => vec![Lun::REPORT_LUNS_WLUN],
        (SELECT_ADMINISTRATIVE, _) if at_lun0 => pes().collect(),
        (SELECT_ADMINISTRATIVE_AND_NON_CONGLOMERATE, _) if at_lun0 => top().collect(),
        (SELECT_ADMINISTRATIVE | SELECT_ADMINISTRATIVE_AND_NON_CONGLOMERATE, _) => {
            return Err(invalid_select)
        }
        (SELECT_SUBSIDIARY, Addressed::Pe(p)) => std::iter::once(pe_lun(p))
            .chain(inv.secondaries.iter().copied())
            .collect(),
        (SELECT_SUBSIDIARY, _) => return Err(Sense::NOT_AN_ADMINISTRATIVE_LU),
        _ => return Err(invalid_select),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::Status;
    use crate::vvol::address::{secondary_lun, SecondaryId};

    fn cdb(select: u8, alloc: u32) -> [u8; 12] {
        let a = alloc.to_be_bytes();
        [0xA0, 0, select, 0, 0, 0, a[0], a[1], a[2], a[3], 0, 0]
    }

    fn sec(n: u64) -> Lun {
        secondary_lun(5, SecondaryId::new(n).unwrap())
    }

    fn inv() -> Inventory {
        Inventory {
            pes: vec![5, 300],
            normal: vec![0, 1],
            secondaries: vec![sec(0x1234), sec(0x1235)],
        }
    }

    fn luns(r: &Response) -> Vec<[u8; 8]> {
        assert_eq!(r.status, Status::Good, "{r:?}");
        r.data[8..]
            .chunks(8)
            .map(|c| c.try_into().unwrap())
            .collect()
    }

    fn sense(r: &Response) -> (u8, u8, u8, u16) {
        assert_eq!(r.status, Status::CheckCondition);
        let s = &r.sense;
        (s[2], s[12], s[13], u16::from_be_bytes([s[16], s[17]]))
    }

    const PE5: [u8; 8] = [0, 5, 0, 0, 0, 0, 0, 0];
    const PE300: [u8; 8] = [0x01, 0x2C, 0, 0, 0, 0, 0, 0];
    const L0: [u8; 8] = [0; 8];
    const L1: [u8; 8] = [0, 1, 0, 0, 0, 0, 0, 0];
    const WLUN: [u8; 8] = [0xC1, 0x01, 0, 0, 0, 0, 0, 0];

    #[test]
    fn at_lun0_pes_and_normal_never_secondaries() {
        for select in [0x00, 0x02] {
            for at in [
                Addressed::Lun0OrWlun,
                Addressed::Normal(1),
                Addressed::Secondary,
            ] {
                let r = report_luns(&cdb(select, 4096), at, &inv());
                assert_eq!(luns(&r), vec![PE5, PE300, L0, L1], "{select:#x} {at:?}");
                assert_eq!(&r.data[..8], &[0, 0, 0, 32, 0, 0, 0, 0]);
            }
        }
        let r = report_luns(&cdb(0x10, 4096), Addressed::Lun0OrWlun, &inv());
        assert_eq!(luns(&r), vec![PE5, PE300]);
        let r = report_luns(&cdb(0x11, 4096), Addressed::Lun0OrWlun, &inv());
        assert_eq!(luns(&r), vec![PE5, PE300, L0, L1]);
        let r = report_luns(&cdb(0x11, 4096), Addressed::Normal(0), &inv());
        assert_eq!(luns(&r), vec![PE5, PE300, L0, L1]);
    }

    #[test]
    fn at_a_pe_this_hosts_secondaries() {
        // Reference §1.7: the observed answer at PE 5 with 0x1234 and 0x1235 bound.
        let r = report_luns(&cdb(0x00, 4096), Addressed::Pe(5), &inv());
        assert_eq!(
            r.data.as_ref(),
            &[
                0, 0, 0, 0x10, 0, 0, 0, 0, //
                0, 5, 0xE2, 0, 0, 0, 0x12, 0x34, //
                0, 5, 0xE2, 0, 0, 0, 0x12, 0x35,
            ]
        );
        let r = report_luns(&cdb(0x02, 4096), Addressed::Pe(5), &inv());
        assert_eq!(luns(&r).len(), 2);
        let r = report_luns(&cdb(0x12, 4096), Addressed::Pe(5), &inv());
        assert_eq!(
            luns(&r),
            vec![PE5, sec(0x1234).to_bytes(), sec(0x1235).to_bytes()]
        );
        // Nothing bound: exactly nothing (12h still lists the PE itself).
        let empty = Inventory {
            secondaries: vec![],
            ..inv()
        };
        let r = report_luns(&cdb(0x00, 4096), Addressed::Pe(5), &empty);
        assert_eq!(r.data.as_ref(), &[0; 8]);
        let r = report_luns(&cdb(0x12, 4096), Addressed::Pe(5), &empty);
        assert_eq!(luns(&r), vec![PE5]);
    }

    #[test]
    fn pe_at_lun0_answers_admin_selects() {
        let i = Inventory {
            pes: vec![0],
            normal: vec![],
            secondaries: vec![],
        };
        let r = report_luns(&cdb(0x10, 4096), Addressed::Pe(0), &i);
        assert_eq!(luns(&r), vec![L0]);
    }

    #[test]
    fn admin_selects_elsewhere_are_invalid_field_byte_2() {
        for select in [0x10, 0x11] {
            for at in [Addressed::Pe(5), Addressed::Normal(1), Addressed::Secondary] {
                let r = report_luns(&cdb(select, 4096), at, &inv());
                assert_eq!(sense(&r), (5, 0x24, 0, 2), "{select:#x} {at:?}");
                assert_eq!(r.sense[15], 0x80 | 0x40 | 0x08 | 7);
            }
        }
    }

    #[test]
    fn subsidiary_select_off_a_pe_is_not_an_administrative_lu() {
        for at in [
            Addressed::Lun0OrWlun,
            Addressed::Normal(0),
            Addressed::Secondary,
        ] {
            let r = report_luns(&cdb(0x12, 4096), at, &inv());
            assert_eq!(sense(&r), (5, 0x20, 0x0D, 0));
        }
    }

    #[test]
    fn well_known_and_default_inventory() {
        for at in [Addressed::Lun0OrWlun, Addressed::Pe(5)] {
            let r = report_luns(&cdb(0x01, 4096), at, &inv());
            assert_eq!(luns(&r), vec![WLUN]);
        }
        let none = Inventory::default();
        let r = report_luns(&cdb(0x02, 4096), Addressed::Lun0OrWlun, &none);
        assert_eq!(luns(&r), vec![WLUN]);
        let r = report_luns(&cdb(0x00, 4096), Addressed::Lun0OrWlun, &none);
        assert_eq!(r.data.as_ref(), &[0; 8]);
    }

    #[test]
    fn reserved_selects_and_short_allocation() {
        for select in [0x03, 0x0F, 0x13, 0x80, 0xF8, 0xFF] {
            let r = report_luns(&cdb(select, 4096), Addressed::Lun0OrWlun, &inv());
            assert_eq!(sense(&r), (5, 0x24, 0, 2), "{select:#x}");
        }
        for alloc in [0, 8, 15] {
            let r = report_luns(&cdb(0, alloc), Addressed::Pe(5), &inv());
            assert_eq!(sense(&r), (5, 0x24, 0, 6));
        }
    }

    #[test]
    fn truncation_keeps_full_list_length() {
        let r = report_luns(&cdb(0x00, 16), Addressed::Pe(5), &inv());
        assert_eq!(r.data.len(), 16);
        assert_eq!(&r.data[..4], &[0, 0, 0, 16]);
        let r = report_luns(&cdb(0x00, 20), Addressed::Lun0OrWlun, &inv());
        assert_eq!(r.data.len(), 20);
        assert_eq!(&r.data[..4], &[0, 0, 0, 32]);
    }

    #[test]
    fn malformed_cdbs_never_panic() {
        for len in 0..14 {
            let mut c = vec![0xFFu8; len];
            if let Some(b) = c.first_mut() {
                *b = 0xA0;
            }
            for at in [
                Addressed::Lun0OrWlun,
                Addressed::Pe(5),
                Addressed::Secondary,
            ] {
                assert_eq!(
                    report_luns(&c, at, &inv()).status,
                    Status::CheckCondition,
                    "{c:02x?}"
                );
            }
        }
        let r = report_luns(&[0x12, 0, 0, 0, 0, 0], Addressed::Pe(5), &inv());
        assert_eq!(sense(&r).1, 0x20);
    }
}
