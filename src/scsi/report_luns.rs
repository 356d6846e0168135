//! REPORT LUNS (SPC-4 §6.33) and the answers for a LUN with no logical unit behind it
//! (SPC-4 §6.6.2, SAM-5 §5.9.3).

use bytes::Bytes;

use super::cdb::trim;
use super::inquiry::standard_data;
use super::lun::Lun;
use super::opcodes::{self, Command};
use super::sense::Sense;
use super::Response;

/// Well-known LUNs use the extended addressing method with the well-known type (C1h).
fn is_well_known(lun: &Lun) -> bool {
    lun.to_bytes()[0] == 0xC1
}

/// REPORT LUNS parameter data for `luns` (the inventory visible to the asking nexus).
pub fn report_luns(cdb: &[u8], luns: &[Lun]) -> Response {
    match build(cdb, luns) {
        Ok(data) => Response::good(data),
        Err(sense) => Response::check(sense),
    }
}

fn build(cdb: &[u8], luns: &[Lun]) -> Result<Bytes, Sense> {
    let (select, alloc) = parse_cdb(cdb)?;
    let wanted: fn(&Lun) -> bool = match select {
        0x00 => |l| !is_well_known(l),
        0x01 => is_well_known,
        0x02 => |_| true,
        _ => return Err(Sense::invalid_cdb_field(2, Some(7))),
    };
    Ok(encode_list(luns.iter().copied().filter(wanted), alloc))
}

/// Validates a REPORT LUNS CDB (opcode, reserved fields, ALLOCATION LENGTH of at least 16)
/// and returns (SELECT REPORT, ALLOCATION LENGTH). SELECT REPORT is left to the caller: which
/// values are valid depends on the logical unit addressed.
pub fn parse_cdb(cdb: &[u8]) -> Result<(u8, usize), Sense> {
    let (info, cdb) = opcodes::decode(cdb)?;
    if info.command != Command::ReportLuns {
        return Err(Sense::INVALID_OPCODE);
    }
    let alloc = cdb.be32(6) as usize;
    if alloc < 16 {
        return Err(Sense::invalid_cdb_field(6, Some(7)));
    }
    Ok((cdb.u8(2), alloc))
}

/// REPORT LUNS parameter data for `luns`: LUN LIST LENGTH is 8 × the number of LUNs (never
/// reduced by truncation), then the list, all cut to `alloc` bytes.
pub fn encode_list(luns: impl IntoIterator<Item = Lun>, alloc: usize) -> Bytes {
    let mut d = vec![0u8; 8];
    for lun in luns {
        d.extend_from_slice(&lun.to_bytes());
    }
    let list_len = u32::try_from(d.len() - 8).unwrap_or(u32::MAX);
    d[0..4].copy_from_slice(&list_len.to_be_bytes());
    trim(d, alloc)
}

/// The answer for any command addressed to a LUN with no logical unit (the caller handles
/// REPORT LUNS, which every LUN must answer).
pub fn unsupported_lun_response(cdb: &[u8]) -> Response {
    let alloc_at = |i: usize| usize::from(cdb.get(i).copied().unwrap_or(0));
    match cdb.first() {
        Some(0x12) => {
            // PERIPHERAL QUALIFIER 011b, DEVICE TYPE 1Fh: "no logical unit here", which is
            // what makes initiators skip the LUN instead of failing the scan.
            let d = standard_data(0x7F, "", "", "");
            let alloc = (alloc_at(3) << 8) | alloc_at(4);
            Response::good(trim(d, alloc))
        }
        Some(0x03) => {
            let desc = cdb.get(1).is_some_and(|b| b & 1 != 0);
            let sense = Sense::LUN_NOT_SUPPORTED;
            let d = if desc {
                sense.to_descriptor()
            } else {
                sense.to_fixed().to_vec()
            };
            Response::good(trim(d, alloc_at(4)))
        }
        _ => Response::check(Sense::LUN_NOT_SUPPORTED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::Status;

    fn cdb(select: u8, alloc: u32) -> [u8; 12] {
        let a = alloc.to_be_bytes();
        [0xA0, 0, select, 0, 0, 0, a[0], a[1], a[2], a[3], 0, 0]
    }

    fn inventory() -> Vec<Lun> {
        vec![Lun::single(0), Lun::single(300), Lun::REPORT_LUNS_WLUN]
    }

    #[test]
    fn select_report_filters() {
        let r = report_luns(&cdb(0, 4096), &inventory());
        assert_eq!(r.status, Status::Good);
        assert_eq!(&r.data[..8], &[0, 0, 0, 16, 0, 0, 0, 0]);
        assert_eq!(&r.data[8..16], &Lun::single(0).to_bytes());
        assert_eq!(&r.data[16..24], &[0x41, 0x2C, 0, 0, 0, 0, 0, 0]);
        let r = report_luns(&cdb(1, 4096), &inventory());
        assert_eq!(&r.data[..4], &[0, 0, 0, 8]);
        assert_eq!(&r.data[8..10], &[0xC1, 0x01]);
        let r = report_luns(&cdb(2, 4096), &inventory());
        assert_eq!(&r.data[..4], &[0, 0, 0, 24]);
    }

    #[test]
    fn list_length_is_full_even_when_trimmed() {
        let r = report_luns(&cdb(2, 16), &inventory());
        assert_eq!(r.data.len(), 16);
        assert_eq!(&r.data[..4], &[0, 0, 0, 24]);
    }

    #[test]
    fn bad_select_and_short_allocation() {
        let r = report_luns(&cdb(3, 4096), &inventory());
        assert_eq!(r.status, Status::CheckCondition);
        assert_eq!((r.sense[12], r.sense[17]), (0x24, 2));
        let r = report_luns(&cdb(0, 15), &inventory());
        assert_eq!((r.sense[12], r.sense[17]), (0x24, 6));
    }

    #[test]
    fn missing_lun_answers() {
        let r = unsupported_lun_response(&[0x12, 0, 0, 0, 36, 0]);
        assert_eq!(r.status, Status::Good);
        assert_eq!(r.data.len(), 36);
        assert_eq!(r.data[0], 0x7F);
        let r = unsupported_lun_response(&[0x03, 0, 0, 0, 18, 0]);
        assert_eq!(r.status, Status::Good);
        assert_eq!((r.data[2], r.data[12], r.data[13]), (5, 0x25, 0));
        let r = unsupported_lun_response(&[0x03, 1, 0, 0, 252, 0]);
        assert_eq!(&r.data[..4], &[0x72, 5, 0x25, 0]);
        let r = unsupported_lun_response(&[0x00, 0, 0, 0, 0, 0]);
        assert_eq!(r.status, Status::CheckCondition);
        assert_eq!((r.sense[2], r.sense[12]), (5, 0x25));
        assert_eq!(unsupported_lun_response(&[]).status, Status::CheckCondition);
    }
}
