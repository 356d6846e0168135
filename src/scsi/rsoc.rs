//! REPORT SUPPORTED OPERATION CODES (SPC-4 §6.35), generated from the opcode table.

use bytes::Bytes;

use super::cdb::{trim, Cdb};
use super::opcodes::{self, Command, OpInfo, OPCODES};
use super::sense::Sense;

/// SUPPORT field values of the one-command format.
const NOT_SUPPORTED: u8 = 0b001;
const SUPPORTED: u8 = 0b011;

fn timeouts_descriptor(info: &OpInfo) -> [u8; 12] {
    let mut t = [0u8; 12];
    t[0..2].copy_from_slice(&0x0Au16.to_be_bytes());
    // NOMINAL COMMAND PROCESSING TIMEOUT stays 0 (not specified): latency depends on the
    // backend. RECOMMENDED COMMAND TIMEOUT is what an initiator should wait before aborting.
    t[8..12].copy_from_slice(&info.timeout_secs.to_be_bytes());
    t
}

/// `offered` says which commands this LU has (a fully provisioned LU has no UNMAP).
pub(crate) fn report(cdb: Cdb<'_>, offered: impl Fn(Command) -> bool) -> Result<Bytes, Sense> {
    let find = |opcode, action| opcodes::find(opcode, action).filter(|i| offered(i.command));
    let rctd = cdb.bit(2, 7);
    let options = cdb.u8(2) & 0x07;
    let opcode = cdb.u8(3);
    let action = cdb.be16(4);
    let alloc = cdb.be32(6) as usize;
    let data = match options {
        0 => all_commands(rctd, &offered),
        1 => {
            // The opcode alone cannot name a command that has service actions.
            if opcodes::opcode_has_service_actions(opcode) == Some(true) {
                return Err(Sense::invalid_cdb_field(3, Some(7)));
            }
            one_command(find(opcode, None), rctd)
        }
        2 => match opcodes::opcode_has_service_actions(opcode) {
            Some(false) => return Err(Sense::invalid_cdb_field(3, Some(7))),
            _ => one_command(find_sa(find, opcode, action), rctd),
        },
        3 => match opcodes::opcode_has_service_actions(opcode) {
            Some(true) => one_command(find_sa(find, opcode, action), rctd),
            _ => one_command(find(opcode, None), rctd),
        },
        _ => return Err(Sense::invalid_cdb_field(2, Some(2))),
    };
    Ok(trim(data, alloc))
}

fn find_sa(
    find: impl Fn(u8, Option<u8>) -> Option<&'static OpInfo>,
    opcode: u8,
    action: u16,
) -> Option<&'static OpInfo> {
    u8::try_from(action)
        .ok()
        .and_then(|a| find(opcode, Some(a)))
}

fn all_commands(rctd: bool, offered: impl Fn(Command) -> bool) -> Vec<u8> {
    let per = if rctd { 20 } else { 8 };
    let mut d = vec![0u8; 4];
    d.reserve(OPCODES.len() * per);
    for info in OPCODES.iter().filter(|i| offered(i.command)) {
        d.push(info.opcode);
        d.push(0);
        d.extend_from_slice(&u16::from(info.service_action.unwrap_or(0)).to_be_bytes());
        d.push(0);
        d.push(if rctd { 0x02 } else { 0 } | u8::from(info.service_action.is_some()));
        d.extend_from_slice(&(info.cdb_len() as u16).to_be_bytes());
        if rctd {
            d.extend_from_slice(&timeouts_descriptor(info));
        }
    }
    let len = (d.len() - 4) as u32;
    d[0..4].copy_from_slice(&len.to_be_bytes());
    d
}

fn one_command(info: Option<&OpInfo>, rctd: bool) -> Vec<u8> {
    let Some(info) = info else {
        return vec![0, NOT_SUPPORTED, 0, 0];
    };
    let mut d = vec![0, if rctd { 0x80 } else { 0 } | SUPPORTED];
    d.extend_from_slice(&(info.cdb_len() as u16).to_be_bytes());
    d.extend_from_slice(&opcodes::usage_data(info));
    if rctd {
        d.extend_from_slice(&timeouts_descriptor(info));
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cdb(rctd: bool, options: u8, opcode: u8, sa: u16) -> [u8; 12] {
        let s = sa.to_be_bytes();
        [
            0xA3,
            0x0C,
            options | if rctd { 0x80 } else { 0 },
            opcode,
            s[0],
            s[1],
            0,
            0,
            0xFF,
            0xFF,
            0,
            0,
        ]
    }

    fn run(c: [u8; 12]) -> Result<Bytes, Sense> {
        report(Cdb::new(&c), |_| true)
    }

    #[test]
    fn a_command_the_lu_lacks_is_left_out() {
        let thick = |c| c != Command::Unmap;
        let all = report(Cdb::new(&cdb(false, 0, 0, 0)), thick).unwrap();
        assert_eq!(all.len(), 4 + 8 * (OPCODES.len() - 1));
        assert!(all[4..].chunks(8).all(|c| c[0] != 0x42));
        let one = report(Cdb::new(&cdb(false, 1, 0x42, 0)), thick).unwrap();
        assert_eq!(one[1] & 0x07, NOT_SUPPORTED);
        let one = report(Cdb::new(&cdb(false, 1, 0x42, 0)), |_| true).unwrap();
        assert_eq!(one[1] & 0x07, SUPPORTED);
    }

    #[test]
    fn all_commands_lists_the_table() {
        let d = run(cdb(false, 0, 0, 0)).unwrap();
        assert_eq!(
            u32::from_be_bytes(d[0..4].try_into().unwrap()) as usize,
            8 * OPCODES.len()
        );
        // READ(10): opcode, no SA, CDB length 10 (found by opcode: the table grows).
        let e = d[4..].chunks(8).find(|c| c[0] == 0x28).unwrap();
        assert_eq!(e, &[0x28, 0, 0, 0, 0, 0, 0, 10]);
        let rc16 = d[4..].chunks(8).find(|c| c[0] == 0x9E).unwrap();
        assert_eq!(rc16, &[0x9E, 0, 0, 0x10, 0, 0x01, 0, 16]);
        for c in d[4..].chunks(8) {
            assert!(c[5] & 1 == 1 || c[2..4] == [0, 0], "SA without SERVACTV");
        }
    }

    #[test]
    fn rctd_adds_timeout_descriptors() {
        let d = run(cdb(true, 0, 0, 0)).unwrap();
        assert_eq!(d.len(), 4 + 20 * OPCODES.len());
        for c in d[4..].chunks(20) {
            assert_eq!(c[5] & 0x02, 0x02);
            assert_eq!(&c[8..10], &[0, 0x0A]);
        }
    }

    #[test]
    fn one_command_read10_shows_dpo_fua() {
        let d = run(cdb(false, 1, 0x28, 0)).unwrap();
        assert_eq!(&d[..4], &[0, SUPPORTED, 0, 10]);
        assert_eq!(
            &d[4..],
            &[0x28, 0x1A, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, 0xFF, 0xFF, 0]
        );
        let d = run(cdb(true, 1, 0x2F, 0)).unwrap();
        assert_eq!(d[1], 0x80 | SUPPORTED);
        assert_eq!(d[5] & 0x10, 0x10);
        assert_eq!(d.len(), 4 + 10 + 12);
    }

    #[test]
    fn option_mismatches_are_invalid_fields() {
        assert_eq!(run(cdb(false, 1, 0x9E, 0x10)).unwrap_err().asc, 0x24);
        assert_eq!(run(cdb(false, 2, 0x28, 0)).unwrap_err().asc, 0x24);
        assert_eq!(
            run(cdb(false, 5, 0x28, 0)).unwrap_err().field.unwrap().byte,
            2
        );
        let d = run(cdb(false, 2, 0x9E, 0x10)).unwrap();
        assert_eq!(&d[..6], &[0, SUPPORTED, 0, 16, 0x9E, 0x10]);
        // Byte 1 of the usage data is the service action itself (SPC-4 §6.35.3).
        let d = run(cdb(false, 2, 0x5E, 0x01)).unwrap();
        assert_eq!(&d[4..6], &[0x5E, 0x01]);
        let d = run(cdb(false, 2, 0x84, 0x03)).unwrap();
        assert_eq!(&d[4..6], &[0x84, 0x03]);
        assert_eq!(
            run(cdb(false, 1, 0xC0, 0)).unwrap().as_ref(),
            &[0, NOT_SUPPORTED, 0, 0]
        );
        assert_eq!(run(cdb(false, 3, 0x28, 7)).unwrap()[1], SUPPORTED);
    }
}
