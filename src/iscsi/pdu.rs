//! Basic Header Segment codec (RFC 7143 §11). Initiator PDUs are decoded into typed structs
//! with direct big-endian field access over the fixed 48 bytes; target PDUs are built the same
//! way. Data segments never pass through here: the transport places them.

use crate::scsi::Lun;

pub const BHS_LEN: usize = 48;

/// Opcodes (RFC 7143 §11.1.1).
pub mod op {
    pub const NOP_OUT: u8 = 0x00;
    pub const SCSI_COMMAND: u8 = 0x01;
    pub const TASK_MGMT_REQUEST: u8 = 0x02;
    pub const LOGIN_REQUEST: u8 = 0x03;
    pub const TEXT_REQUEST: u8 = 0x04;
    pub const DATA_OUT: u8 = 0x05;
    pub const LOGOUT_REQUEST: u8 = 0x06;
    pub const SNACK_REQUEST: u8 = 0x10;

    pub const NOP_IN: u8 = 0x20;
    pub const SCSI_RESPONSE: u8 = 0x21;
    pub const TASK_MGMT_RESPONSE: u8 = 0x22;
    pub const LOGIN_RESPONSE: u8 = 0x23;
    pub const TEXT_RESPONSE: u8 = 0x24;
    pub const DATA_IN: u8 = 0x25;
    pub const LOGOUT_RESPONSE: u8 = 0x26;
    pub const R2T: u8 = 0x31;
    pub const ASYNC_MESSAGE: u8 = 0x32;
    pub const REJECT: u8 = 0x3F;
}

/// Reject reasons (RFC 7143 §11.17.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RejectReason {
    DataDigestError = 0x02,
    SnackReject = 0x03,
    ProtocolError = 0x04,
    CommandNotSupported = 0x05,
    ImmediateCommandReject = 0x06,
    TaskInProgress = 0x07,
    InvalidDataAck = 0x08,
    InvalidPduField = 0x09,
    OutOfResources = 0x0A,
    WaitingForLogout = 0x0C,
}

/// Initiator Task Tag: names a task for the life of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Itt(pub u32);

impl Itt {
    /// 0xffffffff is reserved (RFC 7143 §11.1.9), used e.g. by unsolicited NOP-In.
    pub const RESERVED: Itt = Itt(0xFFFF_FFFF);
}

/// A 32-bit serial number compared with RFC 1982 arithmetic (CmdSN, StatSN, DataSN...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SerialNumber(pub u32);

impl SerialNumber {
    pub fn next(self) -> SerialNumber {
        SerialNumber(self.0.wrapping_add(1))
    }
    /// self < other in serial arithmetic.
    pub fn lt(self, other: SerialNumber) -> bool {
        self.0 != other.0 && (other.0.wrapping_sub(self.0) as i32) > 0
    }
    pub fn le(self, other: SerialNumber) -> bool {
        self == other || self.lt(other)
    }
}

/// A raw BHS with field accessors shared by every opcode.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Bhs(pub [u8; BHS_LEN]);

impl std::fmt::Debug for Bhs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bhs(op={:#04x} itt={:#x})", self.opcode(), self.itt().0)
    }
}

impl Default for Bhs {
    fn default() -> Self {
        Bhs([0; BHS_LEN])
    }
}

impl Bhs {
    pub fn new(opcode: u8) -> Bhs {
        let mut b = [0u8; BHS_LEN];
        b[0] = opcode;
        Bhs(b)
    }
    pub fn opcode(&self) -> u8 {
        self.0[0] & 0x3F
    }
    pub fn immediate(&self) -> bool {
        self.0[0] & 0x40 != 0
    }
    pub fn final_bit(&self) -> bool {
        self.0[1] & 0x80 != 0
    }
    pub fn flags(&self) -> u8 {
        self.0[1]
    }
    pub fn total_ahs_len(&self) -> usize {
        self.0[4] as usize * 4
    }
    pub fn data_segment_len(&self) -> usize {
        u32::from_be_bytes([0, self.0[5], self.0[6], self.0[7]]) as usize
    }
    pub fn set_data_segment_len(&mut self, len: usize) {
        let b = (len as u32).to_be_bytes();
        self.0[5..8].copy_from_slice(&b[1..]);
    }
    pub fn lun(&self) -> Lun {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[8..16]);
        Lun::from_bytes(b)
    }
    pub fn set_lun(&mut self, lun: Lun) {
        self.0[8..16].copy_from_slice(&lun.to_bytes());
    }
    pub fn itt(&self) -> Itt {
        Itt(self.u32_at(16))
    }
    pub fn u32_at(&self, at: usize) -> u32 {
        u32::from_be_bytes([self.0[at], self.0[at + 1], self.0[at + 2], self.0[at + 3]])
    }
    pub fn set_u32(&mut self, at: usize, v: u32) {
        self.0[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }
    pub fn u16_at(&self, at: usize) -> u16 {
        u16::from_be_bytes([self.0[at], self.0[at + 1]])
    }
    pub fn set_u16(&mut self, at: usize, v: u16) {
        self.0[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }
    /// The 4 PDUs a target sends with StatSN/ExpCmdSN/MaxCmdSN share offsets 24/28/32.
    pub fn set_sequence(&mut self, statsn: u32, expcmdsn: u32, maxcmdsn: u32) {
        self.set_u32(24, statsn);
        self.set_u32(28, expcmdsn);
        self.set_u32(32, maxcmdsn);
    }
}

/// Padding that follows a data segment of `len` bytes.
pub fn pad_len(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// Task attributes of a SCSI command (RFC 7143 §11.3.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskAttr {
    Untagged,
    Simple,
    Ordered,
    HeadOfQueue,
    Aca,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiCommand {
    pub immediate: bool,
    pub final_bit: bool,
    pub read: bool,
    pub write: bool,
    pub attr: TaskAttr,
    pub lun: Lun,
    pub itt: Itt,
    pub expected_len: u32,
    pub cmdsn: SerialNumber,
    pub expstatsn: SerialNumber,
    /// The CDB: 16 bytes from the BHS, followed by any extended-CDB AHS bytes.
    pub cdb: CdbBytes,
}

/// A CDB: up to 16 bytes inline (every SBC/SPC command we serve), longer ones through AHS.
#[derive(Clone, PartialEq, Eq)]
pub struct CdbBytes {
    buf: [u8; 16],
    extended: Option<Vec<u8>>,
}

impl CdbBytes {
    pub fn from_bhs(bhs: &Bhs) -> CdbBytes {
        let mut buf = [0u8; 16];
        buf.copy_from_slice(&bhs.0[32..48]);
        CdbBytes {
            buf,
            extended: None,
        }
    }
    pub fn as_slice(&self) -> &[u8] {
        match &self.extended {
            Some(v) => v,
            None => &self.buf,
        }
    }
}

impl std::fmt::Debug for CdbBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.as_slice() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataOut {
    pub final_bit: bool,
    pub lun: Lun,
    pub itt: Itt,
    pub ttt: u32,
    pub expstatsn: SerialNumber,
    pub datasn: u32,
    pub buffer_offset: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NopOut {
    pub immediate: bool,
    pub lun: Lun,
    pub itt: Itt,
    pub ttt: u32,
    pub cmdsn: SerialNumber,
    pub expstatsn: SerialNumber,
}

/// Task management functions (RFC 7143 §11.5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmfFunction {
    AbortTask,
    AbortTaskSet,
    ClearAca,
    ClearTaskSet,
    LogicalUnitReset,
    TargetWarmReset,
    TargetColdReset,
    TaskReassign,
    Unknown(u8),
}

impl TmfFunction {
    fn from_code(c: u8) -> TmfFunction {
        match c {
            1 => TmfFunction::AbortTask,
            2 => TmfFunction::AbortTaskSet,
            3 => TmfFunction::ClearAca,
            4 => TmfFunction::ClearTaskSet,
            5 => TmfFunction::LogicalUnitReset,
            6 => TmfFunction::TargetWarmReset,
            7 => TmfFunction::TargetColdReset,
            8 => TmfFunction::TaskReassign,
            c => TmfFunction::Unknown(c),
        }
    }
}

/// Task management response codes (RFC 7143 §11.6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum TmfResponse {
    FunctionComplete = 0,
    TaskDoesNotExist = 1,
    LunDoesNotExist = 2,
    TaskStillAllegiant = 3,
    ReassignmentNotSupported = 4,
    NotSupported = 5,
    AuthorizationFailed = 6,
    Rejected = 255,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskMgmt {
    pub immediate: bool,
    pub function: TmfFunction,
    pub lun: Lun,
    pub itt: Itt,
    pub referenced_itt: Itt,
    pub cmdsn: SerialNumber,
    pub expstatsn: SerialNumber,
    pub refcmdsn: SerialNumber,
}

/// Login stages (RFC 7143 §11.12.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Security = 0,
    Operational = 1,
    FullFeature = 3,
}

impl Stage {
    pub fn from_code(c: u8) -> Option<Stage> {
        match c {
            0 => Some(Stage::Security),
            1 => Some(Stage::Operational),
            3 => Some(Stage::FullFeature),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginRequest {
    pub transit: bool,
    pub cont: bool,
    /// Raw CSG and NSG codes (validated by the login state machine).
    pub csg: u8,
    pub nsg: u8,
    pub version_max: u8,
    pub version_min: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: Itt,
    pub cid: u16,
    pub cmdsn: SerialNumber,
    pub expstatsn: SerialNumber,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextRequest {
    pub immediate: bool,
    pub final_bit: bool,
    pub cont: bool,
    pub itt: Itt,
    pub ttt: u32,
    pub cmdsn: SerialNumber,
    pub expstatsn: SerialNumber,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutRequest {
    pub immediate: bool,
    pub reason: u8,
    pub itt: Itt,
    pub cid: u16,
    pub cmdsn: SerialNumber,
    pub expstatsn: SerialNumber,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snack {
    pub kind: u8,
    pub itt: Itt,
}

/// Every PDU an initiator may send, decoded from its BHS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitiatorPdu {
    NopOut(NopOut),
    ScsiCommand(ScsiCommand),
    TaskMgmt(TaskMgmt),
    Login(LoginRequest),
    Text(TextRequest),
    DataOut(DataOut),
    Logout(LogoutRequest),
    Snack(Snack),
}

/// Why a BHS could not be decoded; the transport answers with a Reject carrying `reason`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed PDU: {what}")]
pub struct DecodeError {
    pub reason: RejectReason,
    pub what: &'static str,
}

fn sn(bhs: &Bhs, at: usize) -> SerialNumber {
    SerialNumber(bhs.u32_at(at))
}

impl InitiatorPdu {
    /// Decode a BHS. `ahs` is the additional header segment (already read; used for extended
    /// CDBs).
    pub fn decode(bhs: &Bhs, ahs: &[u8]) -> Result<InitiatorPdu, DecodeError> {
        let f = bhs.flags();
        Ok(match bhs.opcode() {
            op::NOP_OUT => InitiatorPdu::NopOut(NopOut {
                immediate: bhs.immediate(),
                lun: bhs.lun(),
                itt: bhs.itt(),
                ttt: bhs.u32_at(20),
                cmdsn: sn(bhs, 24),
                expstatsn: sn(bhs, 28),
            }),
            op::SCSI_COMMAND => {
                let attr = match f & 0x07 {
                    0 => TaskAttr::Untagged,
                    1 => TaskAttr::Simple,
                    2 => TaskAttr::Ordered,
                    3 => TaskAttr::HeadOfQueue,
                    4 => TaskAttr::Aca,
                    _ => {
                        return Err(DecodeError {
                            reason: RejectReason::InvalidPduField,
                            what: "task attribute",
                        })
                    }
                };
                let mut cdb = CdbBytes::from_bhs(bhs);
                if !ahs.is_empty() {
                    cdb.extended = Some(extended_cdb(&cdb.buf, ahs)?);
                }
                InitiatorPdu::ScsiCommand(ScsiCommand {
                    immediate: bhs.immediate(),
                    final_bit: f & 0x80 != 0,
                    read: f & 0x40 != 0,
                    write: f & 0x20 != 0,
                    attr,
                    lun: bhs.lun(),
                    itt: bhs.itt(),
                    expected_len: bhs.u32_at(20),
                    cmdsn: sn(bhs, 24),
                    expstatsn: sn(bhs, 28),
                    cdb,
                })
            }
            op::TASK_MGMT_REQUEST => InitiatorPdu::TaskMgmt(TaskMgmt {
                immediate: bhs.immediate(),
                function: TmfFunction::from_code(f & 0x7F),
                lun: bhs.lun(),
                itt: bhs.itt(),
                referenced_itt: Itt(bhs.u32_at(20)),
                cmdsn: sn(bhs, 24),
                expstatsn: sn(bhs, 28),
                refcmdsn: sn(bhs, 32),
            }),
            op::LOGIN_REQUEST => {
                let mut isid = [0u8; 6];
                isid.copy_from_slice(&bhs.0[8..14]);
                InitiatorPdu::Login(LoginRequest {
                    transit: f & 0x80 != 0,
                    cont: f & 0x40 != 0,
                    csg: (f >> 2) & 0x3,
                    nsg: f & 0x3,
                    version_max: bhs.0[2],
                    version_min: bhs.0[3],
                    isid,
                    tsih: bhs.u16_at(14),
                    itt: bhs.itt(),
                    cid: bhs.u16_at(20),
                    cmdsn: sn(bhs, 24),
                    expstatsn: sn(bhs, 28),
                })
            }
            op::TEXT_REQUEST => InitiatorPdu::Text(TextRequest {
                immediate: bhs.immediate(),
                final_bit: f & 0x80 != 0,
                cont: f & 0x40 != 0,
                itt: bhs.itt(),
                ttt: bhs.u32_at(20),
                cmdsn: sn(bhs, 24),
                expstatsn: sn(bhs, 28),
            }),
            op::DATA_OUT => InitiatorPdu::DataOut(DataOut {
                final_bit: f & 0x80 != 0,
                lun: bhs.lun(),
                itt: bhs.itt(),
                ttt: bhs.u32_at(20),
                expstatsn: sn(bhs, 28),
                datasn: bhs.u32_at(36),
                buffer_offset: bhs.u32_at(40),
            }),
            op::LOGOUT_REQUEST => InitiatorPdu::Logout(LogoutRequest {
                immediate: bhs.immediate(),
                reason: f & 0x7F,
                itt: bhs.itt(),
                cid: bhs.u16_at(20),
                cmdsn: sn(bhs, 24),
                expstatsn: sn(bhs, 28),
            }),
            op::SNACK_REQUEST => InitiatorPdu::Snack(Snack {
                kind: f & 0x0F,
                itt: bhs.itt(),
            }),
            _ => {
                return Err(DecodeError {
                    reason: RejectReason::CommandNotSupported,
                    what: "unknown opcode",
                })
            }
        })
    }
}

/// Extended CDB AHS (type 1): the CDB's bytes beyond 16 (RFC 7143 §11.3.5).
fn extended_cdb(first16: &[u8; 16], ahs: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let bad = DecodeError {
        reason: RejectReason::InvalidPduField,
        what: "AHS",
    };
    let mut rest = ahs;
    while rest.len() >= 4 {
        let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
        let kind = rest[2];
        let total = (3 + len).div_ceil(4) * 4;
        if total > rest.len() || len == 0 {
            return Err(bad);
        }
        if kind == 1 {
            let mut cdb = first16.to_vec();
            cdb.extend_from_slice(&rest[4..3 + len]);
            return Ok(cdb);
        }
        rest = &rest[total..];
    }
    Err(bad)
}

// ---- Target PDUs ------------------------------------------------------------------------

/// Residual over/underflow of a command (RFC 7143 §11.4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Residual {
    #[default]
    None,
    Overflow(u32),
    Underflow(u32),
}

impl Residual {
    /// Compare what the initiator expected with what the command would move.
    pub fn of(expected: u32, actual: u32) -> Residual {
        use std::cmp::Ordering::*;
        match actual.cmp(&expected) {
            Equal => Residual::None,
            Greater => Residual::Overflow(actual - expected),
            Less => Residual::Underflow(expected - actual),
        }
    }
    fn flags(self) -> u8 {
        match self {
            Residual::None => 0,
            Residual::Overflow(_) => 0x04,
            Residual::Underflow(_) => 0x02,
        }
    }
    fn count(self) -> u32 {
        match self {
            Residual::None => 0,
            Residual::Overflow(n) | Residual::Underflow(n) => n,
        }
    }
}

/// Sequence numbers every target PDU carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Seq {
    pub statsn: u32,
    pub expcmdsn: u32,
    pub maxcmdsn: u32,
}

/// The part every target response shares: opcode, flags, data segment length, ITT and the
/// StatSN/ExpCmdSN/MaxCmdSN triple at offsets 24/28/32.
fn target_pdu(opcode: u8, flags: u8, itt: Itt, seq: Seq, data_len: usize) -> Bhs {
    let mut b = Bhs::new(opcode);
    b.0[1] = flags;
    b.set_data_segment_len(data_len);
    b.set_u32(16, itt.0);
    b.set_sequence(seq.statsn, seq.expcmdsn, seq.maxcmdsn);
    b
}

/// SCSI Response header. `data_ins` is how many Data-In PDUs went before it for the command,
/// its ExpDataSN (RFC 7143 §11.4.8: 0 for writes and commands without data).
pub fn scsi_response(
    itt: Itt,
    status: u8,
    residual: Residual,
    seq: Seq,
    data_len: usize,
    data_ins: u32,
) -> Bhs {
    let mut b = target_pdu(
        op::SCSI_RESPONSE,
        0x80 | residual.flags(),
        itt,
        seq,
        data_len,
    );
    b.0[2] = 0; // response: command completed at target
    b.0[3] = status;
    b.set_u32(36, data_ins);
    b.set_u32(44, residual.count());
    b
}

/// Data-In header. With `status` Some, the PDU is final and carries the status (and StatSN).
#[allow(clippy::too_many_arguments)]
pub fn data_in(
    lun: Lun,
    itt: Itt,
    datasn: u32,
    offset: u32,
    len: usize,
    status: Option<(u8, Residual)>,
    final_bit: bool,
    seq: Seq,
) -> Bhs {
    let mut b = Bhs::new(op::DATA_IN);
    let mut flags = if final_bit { 0x80 } else { 0 };
    if let Some((st, residual)) = status {
        flags |= 0x80 | 0x01 | residual.flags();
        b.0[3] = st;
        b.set_u32(24, seq.statsn);
        b.set_u32(44, residual.count());
    }
    b.0[1] = flags;
    b.set_data_segment_len(len);
    b.set_lun(lun);
    b.set_u32(16, itt.0);
    b.set_u32(20, 0xFFFF_FFFF);
    b.set_u32(28, seq.expcmdsn);
    b.set_u32(32, seq.maxcmdsn);
    b.set_u32(36, datasn);
    b.set_u32(40, offset);
    b
}

#[allow(clippy::too_many_arguments)]
pub fn r2t(lun: Lun, itt: Itt, ttt: u32, seq: Seq, r2tsn: u32, offset: u32, len: u32) -> Bhs {
    let mut b = target_pdu(op::R2T, 0x80, itt, seq, 0);
    b.set_lun(lun);
    b.set_u32(20, ttt);
    b.set_u32(36, r2tsn);
    b.set_u32(40, offset);
    b.set_u32(44, len);
    b
}

pub fn nop_in(lun: Lun, itt: Itt, ttt: u32, seq: Seq, data_len: usize) -> Bhs {
    let mut b = target_pdu(op::NOP_IN, 0x80, itt, seq, data_len);
    b.set_lun(lun);
    b.set_u32(20, ttt);
    b
}

pub fn tmf_response(itt: Itt, response: TmfResponse, seq: Seq) -> Bhs {
    let mut b = target_pdu(op::TASK_MGMT_RESPONSE, 0x80, itt, seq, 0);
    b.0[2] = response as u8;
    b
}

/// Login response header; `status` is (class, detail) (RFC 7143 §11.13.5).
#[allow(clippy::too_many_arguments)]
pub fn login_response(
    req: &LoginRequest,
    transit: bool,
    cont: bool,
    csg: u8,
    nsg: u8,
    tsih: u16,
    status: (u8, u8),
    seq: Seq,
    data_len: usize,
) -> Bhs {
    let mut b = Bhs::new(op::LOGIN_RESPONSE);
    let mut f = (csg & 3) << 2;
    if transit {
        f |= 0x80 | (nsg & 3);
    }
    if cont {
        f |= 0x40;
    }
    b.0[1] = f;
    b.0[2] = 0x00; // version-max
    b.0[3] = 0x00; // version-active
    b.set_data_segment_len(data_len);
    b.0[8..14].copy_from_slice(&req.isid);
    b.set_u16(14, tsih);
    b.set_u32(16, req.itt.0);
    b.set_sequence(seq.statsn, seq.expcmdsn, seq.maxcmdsn);
    b.0[36] = status.0;
    b.0[37] = status.1;
    b
}

pub fn text_response(
    itt: Itt,
    final_bit: bool,
    cont: bool,
    ttt: u32,
    seq: Seq,
    data_len: usize,
) -> Bhs {
    let flags = if final_bit { 0x80 } else { 0 } | if cont { 0x40 } else { 0 };
    let mut b = target_pdu(op::TEXT_RESPONSE, flags, itt, seq, data_len);
    b.set_u32(20, ttt);
    b
}

pub fn logout_response(itt: Itt, response: u8, seq: Seq) -> Bhs {
    let mut b = target_pdu(op::LOGOUT_RESPONSE, 0x80, itt, seq, 0);
    b.0[2] = response;
    b
}

/// Reject: the data segment is the offending BHS.
pub fn reject(reason: RejectReason, seq: Seq) -> Bhs {
    let mut b = target_pdu(op::REJECT, 0x80, Itt::RESERVED, seq, BHS_LEN);
    b.0[2] = reason as u8;
    b
}

/// Asynchronous Message (RFC 7143 §11.9); `event` 1 = target requests logout, 0 = SCSI event.
pub fn async_message(lun: Lun, event: u8, param: [u16; 3], seq: Seq, data_len: usize) -> Bhs {
    let mut b = target_pdu(op::ASYNC_MESSAGE, 0x80, Itt::RESERVED, seq, data_len);
    b.set_lun(lun);
    b.0[36] = event;
    b.set_u16(38, param[0]);
    b.set_u16(40, param[1]);
    b.set_u16(42, param[2]);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scsi_response_counts_the_data_ins_before_it() {
        let seq = Seq {
            statsn: 7,
            expcmdsn: 8,
            maxcmdsn: 9,
        };
        let b = scsi_response(Itt(3), 2, Residual::of(4096, 1024), seq, 20, 2);
        assert_eq!(b.u32_at(36), 2, "ExpDataSN");
        assert_eq!((b.0[3], b.u32_at(44)), (2, 3072), "status, residual");
        assert_eq!(b.data_segment_len(), 20);
    }

    #[test]
    fn serial_number_arithmetic_wraps() {
        assert!(SerialNumber(0xFFFF_FFFF).lt(SerialNumber(0)));
        assert!(SerialNumber(5).lt(SerialNumber(6)));
        assert!(!SerialNumber(6).lt(SerialNumber(6)));
        assert!(SerialNumber(6).le(SerialNumber(6)));
    }

    #[test]
    fn decode_scsi_command_keeps_the_whole_lun() {
        let mut b = Bhs::new(op::SCSI_COMMAND);
        b.0[1] = 0x80 | 0x40 | 0x01;
        b.0[8..16].copy_from_slice(&[0, 5, 0xE2, 0, 0, 0, 0x12, 0x34]);
        b.set_u32(16, 7);
        b.set_u32(20, 4096);
        b.set_u32(24, 10);
        b.0[32] = 0x28;
        let InitiatorPdu::ScsiCommand(c) = InitiatorPdu::decode(&b, &[]).unwrap() else {
            panic!("not a command")
        };
        assert_eq!(c.lun.to_bytes(), [0, 5, 0xE2, 0, 0, 0, 0x12, 0x34]);
        assert!(c.read && !c.write && c.final_bit);
        assert_eq!(c.itt, Itt(7));
        assert_eq!(c.expected_len, 4096);
        assert_eq!(c.cmdsn, SerialNumber(10));
        assert_eq!(c.cdb.as_slice()[0], 0x28);
        assert_eq!(c.attr, TaskAttr::Simple);
    }

    #[test]
    fn unknown_opcode_is_rejected_as_not_supported() {
        let b = Bhs::new(0x1F);
        let e = InitiatorPdu::decode(&b, &[]).unwrap_err();
        assert_eq!(e.reason, RejectReason::CommandNotSupported);
    }

    #[test]
    fn extended_cdb_ahs_is_appended() {
        let mut b = Bhs::new(op::SCSI_COMMAND);
        b.0[1] = 0x81;
        b.0[32] = 0x7F;
        let ahs = [0x00, 0x05, 0x01, 0x00, 1, 2, 3, 4];
        let InitiatorPdu::ScsiCommand(c) = InitiatorPdu::decode(&b, &ahs).unwrap() else {
            panic!()
        };
        assert_eq!(c.cdb.as_slice().len(), 20);
        assert_eq!(&c.cdb.as_slice()[16..], &[1, 2, 3, 4]);
    }

    #[test]
    fn data_in_with_status_carries_residual() {
        let seq = Seq {
            statsn: 3,
            expcmdsn: 4,
            maxcmdsn: 5,
        };
        let b = data_in(
            Lun::single(0),
            Itt(1),
            0,
            0,
            512,
            Some((0, Residual::Overflow(512))),
            true,
            seq,
        );
        assert_eq!(b.flags(), 0x80 | 0x01 | 0x04);
        assert_eq!(b.u32_at(44), 512);
        assert_eq!(b.u32_at(24), 3);
        assert_eq!(b.data_segment_len(), 512);
    }

    #[test]
    fn residual_of() {
        assert_eq!(Residual::of(0, 512), Residual::Overflow(512));
        assert_eq!(Residual::of(10000, 512), Residual::Underflow(9488));
        assert_eq!(Residual::of(512, 512), Residual::None);
    }
}
