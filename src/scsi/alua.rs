//! Implicit ALUA (SPC-4 §5.16): the target port groups an LU is reached through, their access
//! states, and REPORT TARGET PORT GROUPS. A target has one or more target port groups, one
//! per iSCSI target portal group: the portals of a group share its iSCSI target portal group
//! tag, which is also the group id and the relative target port id of the group's single SCSI
//! target port. States are configuration, never changed by the initiator (SET TARGET PORT
//! GROUPS is not implemented: TPGS = 01b, implicit only).

use bytes::Bytes;

use super::cdb::{trim, Cdb};
use super::disk::DiskIdentity;
use super::sense::Sense;

/// Asymmetric access states we offer. Standby and unavailable are left out on purpose: ESXi
/// handles standby paths badly, and with one port group per target they would make the LU
/// unusable rather than steer I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AluaState {
    #[default]
    ActiveOptimized,
    ActiveNonOptimized,
}

impl AluaState {
    /// ASYMMETRIC ACCESS STATE code (SPC-4 table 166).
    pub fn code(self) -> u8 {
        match self {
            AluaState::ActiveOptimized => 0x0,
            AluaState::ActiveNonOptimized => 0x1,
        }
    }
}

/// One target port group. Its only target port has relative target port id = `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortGroup {
    pub id: u16,
    pub state: AluaState,
}

impl Default for PortGroup {
    fn default() -> PortGroup {
        PortGroup {
            id: 1,
            state: AluaState::ActiveOptimized,
        }
    }
}

/// Supported-state bits of a descriptor: AO_SUP and AN_SUP, the only states we ever report.
const SUPPORTED_STATES: u8 = 0x03;

/// REPORT TARGET PORT GROUPS (MAINTENANCE IN, service action 0Ah).
pub(crate) fn report_target_port_groups(id: &DiskIdentity, cdb: Cdb<'_>) -> Result<Bytes, Sense> {
    let extended = match cdb.u8(1) >> 5 {
        0b000 => false,
        0b001 => true,
        _ => return Err(Sense::invalid_cdb_field(1, Some(7))),
    };
    let alloc = cdb.be32(6) as usize;
    let mut d = vec![0u8; if extended { 8 } else { 4 }];
    if extended {
        d[4] = 0x10; // FORMAT TYPE 001b
        d[5] = 0; // IMPLICIT TRANSITION TIME: states never change under the initiator
    }
    for g in id.groups() {
        d.push(g.state.code()); // PREF=0
        d.push(SUPPORTED_STATES);
        d.extend_from_slice(&g.id.to_be_bytes());
        d.extend_from_slice(&[0, 0x00, 0, 1]); // reserved, STATUS CODE, vendor, TARGET PORT COUNT
        d.extend_from_slice(&[0, 0]);
        // The group's one target port: relative target port id = group id.
        d.extend_from_slice(&g.id.to_be_bytes());
    }
    let len = (d.len() - 4) as u32;
    d[..4].copy_from_slice(&len.to_be_bytes());
    Ok(trim(d, alloc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::disk::tests::identity;

    fn cdb(format: u8, alloc: u32) -> [u8; 12] {
        let mut c = [0u8; 12];
        c[0] = 0xA3;
        c[1] = (format << 5) | 0x0A;
        c[6..10].copy_from_slice(&alloc.to_be_bytes());
        c
    }

    #[test]
    fn length_only_format() {
        let d = report_target_port_groups(&identity(), Cdb::new(&cdb(0, 255))).unwrap();
        assert_eq!(
            d.as_ref(),
            &[0, 0, 0, 12, 0x00, 0x03, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1]
        );
    }

    #[test]
    fn extended_format_and_configured_state() {
        let mut id = identity();
        id.port_groups = vec![PortGroup {
            id: 7,
            state: AluaState::ActiveNonOptimized,
        }];
        let d = report_target_port_groups(&id, Cdb::new(&cdb(1, 255))).unwrap();
        assert_eq!(
            d.as_ref(),
            &[0, 0, 0, 16, 0x10, 0, 0, 0, 0x01, 0x03, 0, 7, 0, 0, 0, 1, 0, 0, 0, 7]
        );
        let d = report_target_port_groups(&id, Cdb::new(&cdb(1, 6))).unwrap();
        assert_eq!(d.len(), 6);
        let e = report_target_port_groups(&id, Cdb::new(&cdb(2, 255))).unwrap_err();
        assert_eq!((e.field.unwrap().byte, e.field.unwrap().bit), (1, Some(7)));
    }

    #[test]
    fn two_groups_each_with_its_own_port() {
        let id = crate::scsi::disk::tests::two_group_identity();
        let d = report_target_port_groups(&id, Cdb::new(&cdb(0, 255))).unwrap();
        assert_eq!(
            d.as_ref(),
            &[
                0, 0, 0, 24, // RETURN DATA LENGTH
                0x00, 0x03, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, // group 1 AO, port 1
                0x01, 0x03, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2, // group 2 AN, port 2
            ]
        );
        let d = report_target_port_groups(&id, Cdb::new(&cdb(1, 255))).unwrap();
        assert_eq!(&d[..8], &[0, 0, 0, 28, 0x10, 0, 0, 0]);
        assert_eq!(
            &d[8..],
            &[0x00, 0x03, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0x01, 0x03, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2,]
        );
        assert_eq!(id.port(Some(2)), id.port_groups[1]);
        assert_eq!(
            id.port(Some(9)),
            id.port_groups[0],
            "unknown port: first group"
        );
        assert_eq!(id.port(None), id.port_groups[0]);
    }
}
