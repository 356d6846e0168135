//! PERSISTENT RESERVE IN parameter data (SPC-4 §6.15).

use super::state::PrState;

pub(crate) const READ_KEYS: u8 = 0;
pub(crate) const READ_RESERVATION: u8 = 1;
pub(crate) const REPORT_CAPABILITIES: u8 = 2;
pub(crate) const READ_FULL_STATUS: u8 = 3;

/// Builds the whole answer for `action` (the caller cuts it to the allocation length); None
/// for a service action we do not implement.
pub(crate) fn build(state: &PrState, action: u8) -> Option<Vec<u8>> {
    Some(match action {
        READ_KEYS => {
            let mut body = Vec::new();
            for r in &state.registrations {
                body.extend_from_slice(&r.key.to_be_bytes());
            }
            with_header(state, body)
        }
        READ_RESERVATION => {
            let mut body = Vec::new();
            if let Some(r) = state.reservation {
                // All-registrants reservations report key 0 (SPC-4 §6.15.3.2).
                let key = if r.kind.all_registrants() {
                    0
                } else {
                    state.registrations.get(r.holder).map_or(0, |h| h.key)
                };
                body.extend_from_slice(&key.to_be_bytes());
                body.extend_from_slice(&[0; 5]);
                body.push(r.kind as u8);
                body.extend_from_slice(&[0; 2]);
            }
            with_header(state, body)
        }
        REPORT_CAPABILITIES => capabilities(state.aptpl).to_vec(),
        READ_FULL_STATUS => {
            let mut body = Vec::new();
            for r in &state.registrations {
                let mut d = [0u8; 24];
                d[0..8].copy_from_slice(&r.key.to_be_bytes());
                if state.is_holder(&r.port) {
                    if let Some(res) = state.reservation {
                        d[12] = 0x01;
                        d[13] = res.kind as u8;
                    }
                }
                d[18..20].copy_from_slice(&r.port.target_port.to_be_bytes());
                let tid = r.port.initiator.transport_id();
                d[20..24].copy_from_slice(&(tid.len() as u32).to_be_bytes());
                body.extend_from_slice(&d);
                body.extend_from_slice(&tid);
            }
            with_header(state, body)
        }
        _ => return None,
    })
}

fn with_header(state: &PrState, body: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend_from_slice(&state.generation.to_be_bytes());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// REPORT CAPABILITIES: CRH = 1 (RESERVE/RELEASE follow SPC-4 §5.6.3 next to registrations),
/// SIP_C = ATP_C = 0 (one target port per target; SPEC_I_PT unsupported), PTPL_C = 1,
/// TMV = 1 with every type of SPC-4 table 211, ALLOW COMMANDS = 0 (no detail given).
fn capabilities(aptpl: bool) -> [u8; 8] {
    let mut c = [0u8; 8];
    c[1] = 8;
    c[2] = 0x10 | 0x01;
    c[3] = 0x80 | u8::from(aptpl);
    // WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX; then EX_AC_AR.
    c[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02;
    c[5] = 0x01;
    c
}
