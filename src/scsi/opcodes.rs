//! The one table of supported commands. Dispatch, CDB validation and REPORT SUPPORTED
//! OPERATION CODES all read it, so what the LU says it supports and what it accepts cannot
//! drift apart: a bit set in a CDB outside the entry's usage mask is rejected with INVALID
//! FIELD IN CDB, and the same mask is reported as CDB USAGE DATA.

use super::cdb::Cdb;
use super::sense::Sense;

/// Every command a disk LU implements, by what it does rather than its opcode value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    TestUnitReady,
    RequestSense,
    Read6,
    Write6,
    Inquiry,
    ModeSelect6,
    ModeSense6,
    StartStopUnit,
    PreventAllowMediumRemoval,
    ReadCapacity10,
    Read10,
    Write10,
    WriteAndVerify10,
    Verify10,
    PreFetch10,
    SynchronizeCache10,
    ModeSelect10,
    ModeSense10,
    Read16,
    Write16,
    WriteAndVerify16,
    Verify16,
    PreFetch16,
    SynchronizeCache16,
    ReadCapacity16,
    ReportLuns,
    ReportSupportedOperationCodes,
    Read12,
    Write12,
    WriteAndVerify12,
    Verify12,
    ExtendedCopy,
    ReceiveCopyResults,
    ReportTargetPortGroups,
    WriteSame10,
    Unmap,
    CompareAndWrite,
    WriteSame16,
    GetLbaStatus,
    Reserve6,
    Release6,
    Reserve10,
    Release10,
    PersistentReserveIn,
    PersistentReserveOut,
}

/// One supported (operation code, service action) pair.
#[derive(Debug)]
pub struct OpInfo {
    pub opcode: u8,
    /// Service action in CDB byte 1 bits 4..0, for opcodes that multiplex commands.
    pub service_action: Option<u8>,
    pub command: Command,
    /// CDB USAGE DATA (SPC-4 §6.35.3): byte 0 is the opcode, every other byte marks the bits
    /// the device server looks at. Its length is the CDB length.
    pub usage: &'static [u8],
    /// Recommended command timeout in seconds, for the RCTD timeouts descriptor.
    pub timeout_secs: u32,
}

impl OpInfo {
    pub fn cdb_len(&self) -> usize {
        self.usage.len()
    }
}

const fn op(opcode: u8, command: Command, usage: &'static [u8], timeout_secs: u32) -> OpInfo {
    OpInfo {
        opcode,
        service_action: None,
        command,
        usage,
        timeout_secs,
    }
}

const fn sa(
    opcode: u8,
    service_action: u8,
    command: Command,
    usage: &'static [u8],
    timeout_secs: u32,
) -> OpInfo {
    OpInfo {
        opcode,
        service_action: Some(service_action),
        command,
        usage,
        timeout_secs,
    }
}

// Usage masks. The CONTROL byte is always 00h: NACA (ACA) and LINK are not supported, so any
// bit there is an invalid field. DPO/FUA/FUA_NV are accepted because the mode header reports
// DPOFUA=1; RDPROTECT/WRPROTECT/VRPROTECT are left out because there is no protection
// information, which makes a non-zero value an invalid field.
const RW6: &[u8] = &[0, 0x1F, 0xFF, 0xFF, 0xFF, 0x00];
const RW10: &[u8] = &[0, 0x1A, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, 0xFF, 0xFF, 0x00];
const RW12: &[u8] = &[
    0, 0x1A, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, 0x00,
];
const RW16: &[u8] = &[
    0, 0x1A, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, 0x00,
];
// VERIFY and WRITE AND VERIFY: DPO and the two-bit BYTCHK field.
const VFY10: &[u8] = &[0, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, 0xFF, 0xFF, 0x00];
const VFY12: &[u8] = &[
    0, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, 0x00,
];
const VFY16: &[u8] = &[
    0, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, 0x00,
];
// PRE-FETCH: IMMED only.
const PF10: &[u8] = &[0, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, 0xFF, 0xFF, 0x00];
const PF16: &[u8] = &[
    0, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, 0x00,
];
// SYNCHRONIZE CACHE: SYNC_NV (obsolete, ignored) and IMMED.
const SC10: &[u8] = &[0, 0x06, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, 0xFF, 0xFF, 0x00];
const SC16: &[u8] = &[
    0, 0x06, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, 0x00,
];

const RCR: &[u8] = &[
    0, 0, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0,
];

// VAAI. WRITE SAME: UNMAP (and NDOB in the 16-byte CDB); ANCHOR is left out because
// anchored blocks are not supported (VPD B2h ANC_SUP = 0), so ANCHOR=1 is an invalid field.
const WS10: &[u8] = &[0, 0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, 0x00];
const WS16: &[u8] = &[
    0, 0x09, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0x00,
];
// UNMAP: no ANCHOR (see above); GROUP NUMBER and PARAMETER LIST LENGTH.
const UNMAP: &[u8] = &[0, 0x00, 0, 0, 0, 0, 0x1F, 0xFF, 0xFF, 0x00];
// COMPARE AND WRITE: DPO, FUA, FUA_NV; NUMBER OF LOGICAL BLOCKS is the single byte 13.
const CAW: &[u8] = &[
    0, 0x1A, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0x1F, 0x00,
];
// GET LBA STATUS: STARTING LBA and ALLOCATION LENGTH.
const GLS: &[u8] = &[
    0, 0x12, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x00,
];
// SPC-2 RESERVE/RELEASE: only whole-LU reservations by the sender, so 3RDPTY, the third-party
// device id, LONGID and the (obsolete) extent fields are all invalid fields.
const SPC2_RESERVE6: &[u8] = &[0, 0, 0, 0, 0, 0];
const SPC2_RESERVE10: &[u8] = &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
// PERSISTENT RESERVE IN: service action, ALLOCATION LENGTH.
const PRIN: &[u8] = &[0, 0x1F, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0];
// PERSISTENT RESERVE OUT: service action, SCOPE/TYPE, PARAMETER LIST LENGTH.
const PROUT: &[u8] = &[0, 0x1F, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0];

/// Sorted by (opcode, service action): REPORT SUPPORTED OPERATION CODES lists it in order.
pub static OPCODES: &[OpInfo] = TABLE;

const TABLE: &[OpInfo] = &[
    op(0x00, Command::TestUnitReady, &[0, 0, 0, 0, 0, 0], 5),
    op(0x03, Command::RequestSense, &[0, 0x01, 0, 0, 0xFF, 0], 5),
    op(0x08, Command::Read6, RW6, 30),
    op(0x0A, Command::Write6, RW6, 30),
    op(0x12, Command::Inquiry, &[0, 0x01, 0xFF, 0xFF, 0xFF, 0], 5),
    op(0x15, Command::ModeSelect6, &[0, 0x11, 0, 0, 0xFF, 0], 5),
    op(0x16, Command::Reserve6, SPC2_RESERVE6, 5),
    op(0x17, Command::Release6, SPC2_RESERVE6, 5),
    op(
        0x1A,
        Command::ModeSense6,
        &[0, 0x08, 0xFF, 0xFF, 0xFF, 0],
        5,
    ),
    op(
        0x1B,
        Command::StartStopUnit,
        &[0, 0x01, 0, 0x0F, 0xF7, 0],
        30,
    ),
    op(
        0x1E,
        Command::PreventAllowMediumRemoval,
        &[0, 0, 0, 0, 0x01, 0],
        5,
    ),
    op(
        0x25,
        Command::ReadCapacity10,
        &[0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0x01, 0],
        5,
    ),
    op(0x28, Command::Read10, RW10, 30),
    op(0x2A, Command::Write10, RW10, 30),
    op(0x2E, Command::WriteAndVerify10, VFY10, 30),
    op(0x2F, Command::Verify10, VFY10, 30),
    op(0x34, Command::PreFetch10, PF10, 30),
    op(0x35, Command::SynchronizeCache10, SC10, 60),
    op(0x41, Command::WriteSame10, WS10, 60),
    op(0x42, Command::Unmap, UNMAP, 60),
    op(
        0x55,
        Command::ModeSelect10,
        &[0, 0x11, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0],
        5,
    ),
    op(0x56, Command::Reserve10, SPC2_RESERVE10, 5),
    op(0x57, Command::Release10, SPC2_RESERVE10, 5),
    op(
        0x5A,
        Command::ModeSense10,
        &[0, 0x18, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0],
        5,
    ),
    sa(0x5E, 0, Command::PersistentReserveIn, PRIN, 5),
    sa(0x5E, 1, Command::PersistentReserveIn, PRIN, 5),
    sa(0x5E, 2, Command::PersistentReserveIn, PRIN, 5),
    sa(0x5E, 3, Command::PersistentReserveIn, PRIN, 5),
    sa(0x5F, 0, Command::PersistentReserveOut, PROUT, 5),
    sa(0x5F, 1, Command::PersistentReserveOut, PROUT, 5),
    sa(0x5F, 2, Command::PersistentReserveOut, PROUT, 5),
    sa(0x5F, 3, Command::PersistentReserveOut, PROUT, 5),
    sa(0x5F, 4, Command::PersistentReserveOut, PROUT, 5),
    sa(0x5F, 5, Command::PersistentReserveOut, PROUT, 5),
    sa(0x5F, 6, Command::PersistentReserveOut, PROUT, 5),
    // EXTENDED COPY (LID1): PARAMETER LIST LENGTH only. Copies run in the backend and may be
    // large (65535 blocks per segment, 64 segments), hence the long timeout.
    sa(
        0x83,
        0x00,
        Command::ExtendedCopy,
        &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0],
        120,
    ),
    // RECEIVE COPY RESULTS: LIST IDENTIFIER and ALLOCATION LENGTH.
    sa(0x84, 0x00, Command::ReceiveCopyResults, RCR, 5),
    sa(0x84, 0x03, Command::ReceiveCopyResults, RCR, 5),
    op(0x88, Command::Read16, RW16, 30),
    op(0x89, Command::CompareAndWrite, CAW, 30),
    op(0x8A, Command::Write16, RW16, 30),
    op(0x8E, Command::WriteAndVerify16, VFY16, 30),
    op(0x8F, Command::Verify16, VFY16, 30),
    op(0x90, Command::PreFetch16, PF16, 30),
    op(0x91, Command::SynchronizeCache16, SC16, 60),
    op(0x93, Command::WriteSame16, WS16, 60),
    sa(
        0x9E,
        0x10,
        Command::ReadCapacity16,
        &[
            0, 0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01,
            0,
        ],
        5,
    ),
    sa(0x9E, 0x12, Command::GetLbaStatus, GLS, 30),
    op(
        0xA0,
        Command::ReportLuns,
        &[0, 0, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0],
        5,
    ),
    // REPORT TARGET PORT GROUPS: PARAMETER DATA FORMAT and ALLOCATION LENGTH.
    sa(
        0xA3,
        0x0A,
        Command::ReportTargetPortGroups,
        &[0, 0xE0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0],
        5,
    ),
    sa(
        0xA3,
        0x0C,
        Command::ReportSupportedOperationCodes,
        &[
            0, 0x0C, 0x87, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0,
        ],
        5,
    ),
    op(0xA8, Command::Read12, RW12, 30),
    op(0xAA, Command::Write12, RW12, 30),
    op(0xAE, Command::WriteAndVerify12, VFY12, 30),
    op(0xAF, Command::Verify12, VFY12, 30),
];

/// Usage data for reporting: byte 0 of every mask above is a placeholder for the opcode, and
/// a command with service actions carries its own in the SERVICE ACTION field (byte 1, bits
/// 0-4, in every CDB here) rather than the mask of that field (SPC-4 §6.35.3).
pub fn usage_data(info: &OpInfo) -> Vec<u8> {
    let mut u = info.usage.to_vec();
    if let Some(first) = u.first_mut() {
        *first = info.opcode;
    }
    if let (Some(sa), Some(second)) = (info.service_action, u.get_mut(1)) {
        *second = (*second & 0xE0) | sa;
    }
    u
}

/// For each opcode, where its entries begin in [`OPCODES`] (sorted, so an opcode's entries
/// are contiguous), or [`NO_ENTRY`]: every command finds its entry in one step. Scanning the
/// table instead (twice per CDB) was 2 % of the target's CPU for 4 KiB reads.
static FIRST_ENTRY: [u8; 256] = first_entries(TABLE);
const NO_ENTRY: u8 = u8::MAX;

const fn first_entries(table: &[OpInfo]) -> [u8; 256] {
    assert!(table.len() < NO_ENTRY as usize);
    let mut first = [NO_ENTRY; 256];
    let mut i = table.len();
    while i > 0 {
        i -= 1;
        first[table[i].opcode as usize] = i as u8;
    }
    first
}

/// The entries of `opcode`, one per service action it multiplexes (none if unsupported).
fn entries(opcode: u8) -> &'static [OpInfo] {
    let first = FIRST_ENTRY[opcode as usize];
    if first == NO_ENTRY {
        return &[];
    }
    let rest = &OPCODES[first as usize..];
    let n = rest.iter().take_while(|o| o.opcode == opcode).count();
    &rest[..n]
}

/// Whether any supported command uses `opcode`, and whether it multiplexes service actions.
pub fn opcode_has_service_actions(opcode: u8) -> Option<bool> {
    entries(opcode).first().map(|o| o.service_action.is_some())
}

pub fn find(opcode: u8, service_action: Option<u8>) -> Option<&'static OpInfo> {
    entries(opcode)
        .iter()
        .find(|o| o.service_action == service_action)
}

/// Matches a CDB to its table entry and checks every bit against the usage mask. The returned
/// [`Cdb`] is cut to the command's length (iSCSI always carries 16 bytes, padded).
pub(crate) fn decode(cdb: &[u8]) -> Result<(&'static OpInfo, Cdb<'_>), Sense> {
    let Some(&opcode) = cdb.first() else {
        return Err(Sense::INVALID_OPCODE);
    };
    let ops = entries(opcode);
    let first = ops.first().ok_or(Sense::INVALID_OPCODE)?;
    let has_sa = first.service_action.is_some();
    let info = if has_sa {
        let action = cdb.get(1).ok_or(Sense::invalid_cdb_field(1, Some(4)))? & 0x1F;
        // SPC-4: an unsupported service action of a supported opcode is an invalid field, and
        // initiators (libiscsi among them) read a pointer to byte 1 as "not implemented".
        ops.iter()
            .find(|o| o.service_action == Some(action))
            .ok_or(Sense::invalid_cdb_field(1, Some(4)))?
    } else {
        first
    };
    let len = info.cdb_len();
    let Some(bytes) = cdb.get(..len) else {
        // A CDB shorter than its command: point at the first byte that is missing.
        return Err(Sense::invalid_cdb_field(cdb.len() as u16, None));
    };
    for (i, (&b, &mask)) in bytes.iter().zip(info.usage).enumerate().skip(1) {
        let allowed = if i == 1 && has_sa { mask | 0x1F } else { mask };
        let bad = b & !allowed;
        if bad != 0 {
            // The CONTROL byte is made of one-bit fields (NACA, LINK): no widening there.
            let bit = if i == len - 1 {
                7 - bad.leading_zeros() as u8
            } else if let Some(starts) = (i == 1).then(|| byte1_fields(opcode)).flatten() {
                field_start(bad, starts)
            } else {
                field_msb(bad, allowed)
            };
            return Err(Sense::invalid_cdb_field(i as u16, Some(bit)));
        }
    }
    Ok((info, Cdb::new(bytes)))
}

/// Where the fields of byte 1 begin (a mask of their most significant bits), for commands
/// whose unsupported one-bit fields sit next to each other, which `field_msb` would take for
/// one field: WRITE SAME's WRPROTECT (7:5), ANCHOR, UNMAP, PBDATA, LBDATA and NDOB (SBC-4
/// §5.48, §5.49); UNMAP's reserved bits 7:1 and ANCHOR.
fn byte1_fields(opcode: u8) -> Option<u8> {
    match opcode {
        0x41 | 0x93 => Some(0b1001_1111),
        0x42 => Some(0b1000_0001),
        _ => None,
    }
}

/// The most significant bit of the field holding `bad`'s highest bit, `starts` marking
/// where fields begin.
fn field_start(bad: u8, starts: u8) -> u8 {
    let bit = 7 - bad.leading_zeros() as u8;
    (bit..8).find(|b| starts & (1 << b) != 0).unwrap_or(7)
}

/// The bit pointer for a bad multi-bit field names its most significant bit (SPC-4
/// §4.5.2.4.2): walk up from the highest offending bit while the bits above are also outside
/// the mask, i.e. part of the same unsupported field.
fn field_msb(bad: u8, allowed: u8) -> u8 {
    let mut bit = 7 - bad.leading_zeros() as u8;
    while bit < 7 && allowed & (1 << (bit + 1)) == 0 {
        bit += 1;
    }
    bit
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::sense::SenseKey;

    #[test]
    fn table_is_sorted_and_unique() {
        for w in OPCODES.windows(2) {
            assert!((w[0].opcode, w[0].service_action) < (w[1].opcode, w[1].service_action));
        }
    }

    #[test]
    fn index_finds_each_entry_and_only_those() {
        for opcode in 0..=255u8 {
            let scanned: Vec<_> = OPCODES.iter().filter(|o| o.opcode == opcode).collect();
            let indexed: Vec<_> = entries(opcode).iter().collect();
            assert_eq!(indexed.len(), scanned.len(), "opcode {opcode:#04x}");
            for (a, b) in indexed.iter().zip(&scanned) {
                assert!(std::ptr::eq(*a, *b), "opcode {opcode:#04x}");
            }
        }
    }

    #[test]
    fn control_byte_is_never_usable() {
        for o in OPCODES {
            assert_eq!(*o.usage.last().unwrap(), 0, "{:?}", o.command);
            assert!(matches!(o.cdb_len(), 6 | 10 | 12 | 16));
        }
    }

    #[test]
    fn unknown_opcode_is_invalid_opcode() {
        assert_eq!(decode(&[0xFF; 16]).unwrap_err(), Sense::INVALID_OPCODE);
        assert_eq!(decode(&[]).unwrap_err(), Sense::INVALID_OPCODE);
    }

    #[test]
    fn unknown_service_action_points_at_byte_1() {
        let e = decode(&[0x9E, 0x13, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0]).unwrap_err();
        assert_eq!((e.key, e.asc), (SenseKey::IllegalRequest, 0x24));
        assert_eq!(e.field.unwrap().byte, 1);
    }

    #[test]
    fn naca_points_at_the_control_byte() {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x28;
        cdb[9] = 0x04;
        let e = decode(&cdb).unwrap_err();
        let f = e.field.unwrap();
        assert_eq!((f.byte, f.bit), (9, Some(2)));
    }

    #[test]
    fn protect_field_pointer_names_its_msb() {
        let e = decode(&[0x28, 0x20, 0, 0, 0, 0, 0, 0, 1, 0]).unwrap_err();
        let f = e.field.unwrap();
        assert_eq!((f.byte, f.bit), (1, Some(7)));
    }

    #[test]
    fn neighbouring_one_bit_fields_are_told_apart() {
        let pointer = |cdb: &[u8]| {
            let f = decode(cdb).unwrap_err().field.unwrap();
            (f.byte, f.bit)
        };
        let ws10 = |b1| [0x41, b1, 0, 0, 0, 0, 0, 0, 1, 0];
        assert_eq!(pointer(&ws10(0x10)), (1, Some(4)), "ANCHOR");
        assert_eq!(pointer(&ws10(0x04)), (1, Some(2)), "PBDATA");
        assert_eq!(pointer(&ws10(0x02)), (1, Some(1)), "LBDATA");
        assert_eq!(pointer(&ws10(0x01)), (1, Some(0)), "reserved");
        assert_eq!(pointer(&ws10(0x40)), (1, Some(7)), "WRPROTECT");
        let mut ws16 = [0u8; 16];
        ws16[0] = 0x93;
        ws16[1] = 0x12;
        assert_eq!(pointer(&ws16), (1, Some(4)), "ANCHOR above LBDATA");
        assert_eq!(
            pointer(&[0x42, 0x01, 0, 0, 0, 0, 0, 0, 24, 0]),
            (1, Some(0)),
            "UNMAP's ANCHOR"
        );
    }

    #[test]
    fn short_cdb_is_an_error_not_a_panic() {
        let e = decode(&[0x88, 0, 0]).unwrap_err();
        assert_eq!(e.asc, 0x24);
        assert_eq!(e.field.unwrap().byte, 3);
    }

    #[test]
    fn padding_after_the_command_is_ignored() {
        let mut cdb = [0xEEu8; 16];
        cdb[..6].copy_from_slice(&[0, 0, 0, 0, 0, 0]);
        let (info, c) = decode(&cdb).unwrap();
        assert_eq!(info.command, Command::TestUnitReady);
        assert_eq!(c.bytes().len(), 6);
    }
}
