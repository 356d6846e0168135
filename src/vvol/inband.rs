//! In-band binding: vvold's own vendor-specific commands (reference decision 6), sent to a PE
//! by the authorized control initiator. The T10 draft BIND family is not used: its layouts are
//! not public. All multi-byte fields are big-endian.
//!
//! ## VVOL BINDING OUT (C0h, Data-Out), 16-byte CDB
//! | Byte | Bits | Field |
//! |---|---|---|
//! | 0 | 7..0 | OPERATION CODE (C0h) |
//! | 1 | 7..5 | reserved |
//! | 1 | 4..0 | SERVICE ACTION: 00h BIND, 01h UNBIND, 02h UNBIND ALL FOR HOST |
//! | 2..5 | | reserved |
//! | 6..9 | | PARAMETER LIST LENGTH (1..=4096) |
//! | 10..14 | | reserved |
//! | 15 | 7..6 | vendor specific (ignored) |
//! | 15 | 5..0 | CONTROL: NACA (bit 2) and the rest must be zero |
//!
//! CDB errors (5h = ILLEGAL REQUEST): unknown service action → 24h/00h INVALID FIELD IN CDB,
//! byte 1 bit 4; a reserved bit set → 24h/00h at that byte (bit 7 for reserved bytes and for
//! byte 1, the highest offending bit for CONTROL); PARAMETER LIST LENGTH 0 → 1Ah/00h
//! PARAMETER LIST LENGTH ERROR (a binding command without parameters is a broken initiator,
//! not a no-op); above 4096 → 24h/00h byte 6 bit 7; a CDB shorter than 16 bytes → 24h/00h
//! pointing at the first missing byte.
//!
//! ## Parameter list of BIND and UNBIND
//! | Byte | Field |
//! |---|---|
//! | 0..15 | VVOL UUID, RFC 4122 byte order; nil is invalid |
//! | 16 | FLAGS: bit 0 ANY_PE (BIND only: the array picks the PE by load instead of the addressed PE); other bits reserved |
//! | 17 | reserved |
//! | 18..19 | HOST NAME LENGTH N (1..=223) |
//! | 20..20+N | HOST NAME: the host's iSCSI initiator name, ASCII, no NUL, `iqn.`/`eui.`/`naa.` |
//!
//! UNBIND has no flags: a host holds at most one binding per VVol, so it names the binding
//! whatever PE it is on.
//!
//! ## Parameter list of UNBIND ALL FOR HOST
//! | Byte | Field |
//! |---|---|
//! | 0..17 | reserved |
//! | 18..19 | HOST NAME LENGTH N (1..=223) |
//! | 20..20+N | HOST NAME |
//!
//! Parameter errors: fewer than 20 bytes, or a length other than exactly 20 + N → 1Ah/00h
//! PARAMETER LIST LENGTH ERROR; a bad field → 26h/00h INVALID FIELD IN PARAMETER LIST
//! pointing at it (UUID byte 0, FLAGS byte 16 bit 7 for reserved bits, byte 17 bit 7, N byte
//! 18 bit 7, the first offending HOST NAME byte, or byte 20 when the prefix is wrong).
//!
//! ## VVOL BINDING IN (C1h, Data-In), 16-byte CDB
//! | Byte | Field |
//! |---|---|
//! | 0 | OPERATION CODE (C1h) |
//! | 1 | bits 7..5 reserved; bits 4..0 SERVICE ACTION: 00h REPORT BINDINGS |
//! | 2..5 | reserved |
//! | 6..9 | ALLOCATION LENGTH |
//! | 10..14 | reserved |
//! | 15 | CONTROL (as above) |
//!
//! ## REPORT BINDINGS data: the addressed PE's bindings, all hosts
//! | Byte | Field |
//! |---|---|
//! | 0..3 | BINDING DATA LENGTH: bytes after this 8-byte header, not reduced by truncation |
//! | 4..7 | reserved |
//! | 8.. | binding descriptors |
//!
//! Binding descriptor:
//! | Byte | Field |
//! |---|---|
//! | 0..1 | DESCRIPTOR LENGTH: bytes after this field (28 + the padded HOST NAME) |
//! | 2..7 | SECONDARY ID: the 6-byte `E2` element |
//! | 8..9 | PE LUN: first-level number |
//! | 10..25 | VVOL UUID |
//! | 26 | STATE: 0 active, 1 draining |
//! | 27 | reserved |
//! | 28..29 | HOST NAME LENGTH N |
//! | 30.. | HOST NAME, N bytes, then zeros up to a multiple of 4 bytes for the field |

use bytes::Bytes;
use uuid::Uuid;

use super::address::SecondaryId;
use super::binding::{valid_host_name, Binding, BindingState, MAX_HOST_NAME};
use crate::scsi::Sense;

pub const BINDING_OUT: u8 = 0xC0;
pub const BINDING_IN: u8 = 0xC1;
/// Length of both CDBs.
pub const CDB_LEN: usize = 16;
/// Largest PARAMETER LIST LENGTH accepted: one request is at most 20 + 223 bytes.
pub const MAX_PARAM_LEN: u32 = 4096;
/// REPORT BINDINGS service action.
pub const REPORT_BINDINGS: u8 = 0x00;

const HEADER_LEN: usize = 20;
const REPORT_HEADER_LEN: usize = 8;
/// Descriptor bytes after DESCRIPTOR LENGTH, before the HOST NAME.
const DESCRIPTOR_FIXED: usize = 28;

/// Service actions of VVOL BINDING OUT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ServiceAction {
    Bind = 0x00,
    Unbind = 0x01,
    UnbindAllForHost = 0x02,
}

/// A decoded VVOL BINDING OUT CDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutCommand {
    pub service: ServiceAction,
    /// Bytes of Data-Out to receive, 1..=4096.
    pub param_len: u32,
}

/// A decoded parameter list. `host` is as sent; the binding table compares it
/// case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InbandRequest {
    Bind {
        vvol: Uuid,
        host: String,
        any_pe: bool,
    },
    Unbind {
        vvol: Uuid,
        host: String,
    },
    UnbindAllForHost {
        host: String,
    },
}

impl InbandRequest {
    pub fn service(&self) -> ServiceAction {
        match self {
            InbandRequest::Bind { .. } => ServiceAction::Bind,
            InbandRequest::Unbind { .. } => ServiceAction::Unbind,
            InbandRequest::UnbindAllForHost { .. } => ServiceAction::UnbindAllForHost,
        }
    }

    pub fn host(&self) -> &str {
        match self {
            InbandRequest::Bind { host, .. }
            | InbandRequest::Unbind { host, .. }
            | InbandRequest::UnbindAllForHost { host } => host,
        }
    }
}

/// The most significant bit of the field `bad` falls in: bits outside `allowed` next to each
/// other form one reserved field (SPC-4 §4.5.2.4.2 points at a field's top bit).
fn field_msb(bad: u8, allowed: u8) -> u8 {
    let mut bit = 7 - bad.leading_zeros() as u8;
    while bit < 7 && allowed & (1 << (bit + 1)) == 0 {
        bit += 1;
    }
    bit
}

/// Checks the parts of both CDBs that are the same: length, reserved bits, CONTROL. Returns
/// the service action field.
fn check_cdb(cdb: &[u8], opcode: u8) -> Result<(u8, u32), Sense> {
    if cdb.first() != Some(&opcode) {
        return Err(Sense::INVALID_OPCODE);
    }
    let Some(cdb) = cdb.get(..CDB_LEN) else {
        return Err(Sense::invalid_cdb_field(cdb.len() as u16, None));
    };
    // (byte, bits that may be set) for every byte but the opcode and the length field.
    let allowed: [(usize, u8); 11] = [
        (1, 0x1F),
        (2, 0),
        (3, 0),
        (4, 0),
        (5, 0),
        (10, 0),
        (11, 0),
        (12, 0),
        (13, 0),
        (14, 0),
        (15, 0xC0),
    ];
    for (i, ok) in allowed {
        let bad = cdb[i] & !ok;
        if bad != 0 {
            // CONTROL is made of one-bit fields: point at the offending bit itself.
            let bit = if i == 15 {
                7 - bad.leading_zeros() as u8
            } else {
                field_msb(bad, ok)
            };
            return Err(Sense::invalid_cdb_field(i as u16, Some(bit)));
        }
    }
    let len = u32::from_be_bytes([cdb[6], cdb[7], cdb[8], cdb[9]]);
    Ok((cdb[1] & 0x1F, len))
}

/// Decodes a VVOL BINDING OUT CDB.
pub fn decode_out(cdb: &[u8]) -> Result<OutCommand, Sense> {
    let (sa, param_len) = check_cdb(cdb, BINDING_OUT)?;
    let service = match sa {
        0x00 => ServiceAction::Bind,
        0x01 => ServiceAction::Unbind,
        0x02 => ServiceAction::UnbindAllForHost,
        _ => return Err(Sense::invalid_cdb_field(1, Some(4))),
    };
    if param_len == 0 {
        return Err(Sense::PARAMETER_LIST_LENGTH_ERROR);
    }
    if param_len > MAX_PARAM_LEN {
        return Err(Sense::invalid_cdb_field(6, Some(7)));
    }
    Ok(OutCommand { service, param_len })
}

/// Decodes a VVOL BINDING IN CDB; returns the ALLOCATION LENGTH.
pub fn decode_in(cdb: &[u8]) -> Result<u32, Sense> {
    let (sa, alloc) = check_cdb(cdb, BINDING_IN)?;
    if sa != REPORT_BINDINGS {
        return Err(Sense::invalid_cdb_field(1, Some(4)));
    }
    Ok(alloc)
}

fn reserved_param(data: &[u8], byte: usize, allowed: u8) -> Result<(), Sense> {
    let bad = data[byte] & !allowed;
    if bad != 0 {
        return Err(Sense::invalid_param_field(
            byte as u16,
            Some(field_msb(bad, allowed)),
        ));
    }
    Ok(())
}

/// HOST NAME LENGTH and HOST NAME of a list already known to hold at least 20 bytes.
fn parse_host(data: &[u8]) -> Result<String, Sense> {
    let n = usize::from(u16::from_be_bytes([data[18], data[19]]));
    if n == 0 || n > MAX_HOST_NAME {
        return Err(Sense::invalid_param_field(18, Some(7)));
    }
    if data.len() != HEADER_LEN + n {
        return Err(Sense::PARAMETER_LIST_LENGTH_ERROR);
    }
    let raw = &data[HEADER_LEN..];
    if let Some(i) = raw.iter().position(|c| !c.is_ascii_graphic()) {
        return Err(Sense::invalid_param_field((HEADER_LEN + i) as u16, None));
    }
    // All bytes are ASCII graphic, so this is valid UTF-8 and only the prefix can be wrong.
    let host = String::from_utf8_lossy(raw).into_owned();
    if !valid_host_name(&host) {
        return Err(Sense::invalid_param_field(HEADER_LEN as u16, None));
    }
    Ok(host)
}

/// Decodes the Data-Out of a VVOL BINDING OUT with service action `service`.
pub fn parse_params(service: ServiceAction, data: &[u8]) -> Result<InbandRequest, Sense> {
    if data.len() < HEADER_LEN {
        return Err(Sense::PARAMETER_LIST_LENGTH_ERROR);
    }
    if service == ServiceAction::UnbindAllForHost {
        for byte in 0..18 {
            reserved_param(data, byte, 0)?;
        }
        let host = parse_host(data)?;
        return Ok(InbandRequest::UnbindAllForHost { host });
    }
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&data[..16]);
    let vvol = Uuid::from_bytes(uuid);
    if vvol.is_nil() {
        return Err(Sense::invalid_param_field(0, None));
    }
    let flags_allowed = if service == ServiceAction::Bind {
        0x01
    } else {
        0x00
    };
    reserved_param(data, 16, flags_allowed)?;
    reserved_param(data, 17, 0)?;
    let host = parse_host(data)?;
    Ok(match service {
        ServiceAction::Bind => InbandRequest::Bind {
            vvol,
            host,
            any_pe: data[16] & 0x01 != 0,
        },
        _ => InbandRequest::Unbind { vvol, host },
    })
}

/// The HOST NAME bytes that go on the wire: at most 223 (longer names are never stored).
fn host_bytes(host: &str) -> &[u8] {
    let b = host.as_bytes();
    &b[..b.len().min(MAX_HOST_NAME)]
}

/// REPORT BINDINGS data for `bindings` (the addressed PE's, all hosts), cut to `alloc_len`.
pub fn encode_report(bindings: &[Binding], alloc_len: u32) -> Bytes {
    let mut d = vec![0u8; REPORT_HEADER_LEN];
    for b in bindings {
        let host = host_bytes(&b.host);
        let padded = host.len().div_ceil(4) * 4;
        // At most 28 + 224: always fits the 16-bit field.
        let desc_len = (DESCRIPTOR_FIXED + padded) as u16;
        d.extend_from_slice(&desc_len.to_be_bytes());
        d.extend_from_slice(&b.secondary.to_element());
        d.extend_from_slice(&b.pe.to_be_bytes());
        d.extend_from_slice(b.vvol.as_bytes());
        d.push(match b.state {
            BindingState::Active => 0,
            BindingState::Draining => 1,
        });
        d.push(0);
        d.extend_from_slice(&(host.len() as u16).to_be_bytes());
        d.extend_from_slice(host);
        d.resize(d.len() + padded - host.len(), 0);
    }
    let data_len = u32::try_from(d.len() - REPORT_HEADER_LEN).unwrap_or(u32::MAX);
    d[..4].copy_from_slice(&data_len.to_be_bytes());
    d.truncate(usize::try_from(alloc_len).unwrap_or(usize::MAX));
    Bytes::from(d)
}

fn cdb(opcode: u8, service: u8, len: u32) -> [u8; CDB_LEN] {
    let mut c = [0u8; CDB_LEN];
    c[0] = opcode;
    c[1] = service;
    c[6..10].copy_from_slice(&len.to_be_bytes());
    c
}

/// A VVOL BINDING OUT CDB (initiator side).
pub fn out_cdb(service: ServiceAction, param_len: u32) -> [u8; CDB_LEN] {
    cdb(BINDING_OUT, service as u8, param_len)
}

/// A VVOL BINDING OUT / BIND CDB.
pub fn bind_cdb(param_len: u32) -> [u8; CDB_LEN] {
    out_cdb(ServiceAction::Bind, param_len)
}

/// A VVOL BINDING IN / REPORT BINDINGS CDB.
pub fn report_cdb(alloc_len: u32) -> [u8; CDB_LEN] {
    cdb(BINDING_IN, REPORT_BINDINGS, alloc_len)
}

/// The parameter list for `req` (initiator side). Host names are sent as given, cut to 223
/// bytes; the target validates them.
pub fn encode_params(req: &InbandRequest) -> Vec<u8> {
    let host = host_bytes(req.host());
    let mut d = vec![0u8; HEADER_LEN];
    match req {
        InbandRequest::Bind { vvol, any_pe, .. } => {
            d[..16].copy_from_slice(vvol.as_bytes());
            d[16] = u8::from(*any_pe);
        }
        InbandRequest::Unbind { vvol, .. } => d[..16].copy_from_slice(vvol.as_bytes()),
        InbandRequest::UnbindAllForHost { .. } => {}
    }
    d[18..20].copy_from_slice(&(host.len() as u16).to_be_bytes());
    d.extend_from_slice(host);
    d
}

/// CDB and Data-Out for `req`.
pub fn encode_request(req: &InbandRequest) -> ([u8; CDB_LEN], Vec<u8>) {
    let params = encode_params(req);
    (out_cdb(req.service(), params.len() as u32), params)
}

/// One descriptor of REPORT BINDINGS as the initiator reads it: a [`Binding`] whose host is
/// exactly as reported.
pub type ReportedBinding = Binding;

/// Why REPORT BINDINGS data could not be read (initiator side).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// The allocation length was too small: send again with at least `needed`.
    #[error("REPORT BINDINGS data is truncated; {needed} bytes are needed")]
    Truncated { needed: u64 },
    #[error("binding descriptor at byte {offset} is malformed: {what}")]
    Descriptor { offset: usize, what: &'static str },
}

/// Decodes REPORT BINDINGS data.
pub fn decode_report(data: &[u8]) -> Result<Vec<ReportedBinding>, ReportError> {
    let Some(header) = data.get(..REPORT_HEADER_LEN) else {
        return Err(ReportError::Truncated {
            needed: REPORT_HEADER_LEN as u64,
        });
    };
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    let needed = REPORT_HEADER_LEN as u64 + u64::from(len);
    let Some(mut rest) = usize::try_from(needed)
        .ok()
        .and_then(|n| data.get(REPORT_HEADER_LEN..n))
    else {
        return Err(ReportError::Truncated { needed });
    };
    let mut offset = REPORT_HEADER_LEN;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let bad = |what| ReportError::Descriptor { offset, what };
        let [hi, lo, ..] = *rest else {
            return Err(bad("shorter than its length field"));
        };
        let desc_len = usize::from(u16::from_be_bytes([hi, lo]));
        if desc_len < DESCRIPTOR_FIXED {
            return Err(bad("DESCRIPTOR LENGTH below 28"));
        }
        let Some(desc) = rest.get(2..2 + desc_len) else {
            return Err(bad("DESCRIPTOR LENGTH runs past the data"));
        };
        // `desc` starts at descriptor byte 2.
        let mut element = [0u8; 6];
        element.copy_from_slice(&desc[0..6]);
        let secondary = SecondaryId::from_element(element).ok_or(bad("SECONDARY ID"))?;
        let pe = u16::from_be_bytes([desc[6], desc[7]]);
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&desc[8..24]);
        let state = match desc[24] {
            0 => BindingState::Active,
            1 => BindingState::Draining,
            _ => return Err(bad("STATE")),
        };
        let n = usize::from(u16::from_be_bytes([desc[26], desc[27]]));
        let host = desc
            .get(DESCRIPTOR_FIXED..DESCRIPTOR_FIXED + n)
            .filter(|h| h.iter().all(u8::is_ascii_graphic))
            .ok_or(bad("HOST NAME"))?;
        out.push(Binding {
            vvol: Uuid::from_bytes(uuid),
            host: String::from_utf8_lossy(host).into_owned(),
            pe,
            secondary,
            state,
        });
        offset += 2 + desc_len;
        rest = &rest[2 + desc_len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
