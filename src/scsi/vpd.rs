//! Vital product data pages (SPC-4 §7.8, SBC-3 §6.6). Everything is derived from the
//! [`DiskIdentity`] alone so that the same LU looks identical from every path and after every
//! restart: ESXi keys its device database on page 83h.

use super::alua::PortGroup;
use super::cdb::put_ascii;
use super::disk::DiskIdentity;

/// Largest single READ/WRITE/VERIFY we accept, in bytes. 8 MiB keeps one command's buffer
/// bounded and is above what ESXi issues (it splits at 4 MiB with default settings).
pub(crate) const MAX_TRANSFER_BYTES: u32 = 8 << 20;
/// What we tell initiators is efficient; 1 MiB matches the backend's natural I/O size.
pub(crate) const OPTIMAL_TRANSFER_BYTES: u32 = 1 << 20;

pub(crate) fn max_transfer_blocks(id: &DiskIdentity) -> u32 {
    MAX_TRANSFER_BYTES / id.block_size.max(1)
}

/// Supported pages, ascending as SPC-4 requires for page 00h.
const SUPPORTED: [u8; 8] = [0x00, 0x80, 0x83, 0x86, 0x8F, 0xB0, 0xB1, 0xB2];

/// The whole page `code` as seen through target port `port`, or None if we do not implement
/// it. Only page 83h depends on the port.
pub(crate) fn page(id: &DiskIdentity, port: PortGroup, code: u8) -> Option<Vec<u8>> {
    let body = match code {
        0x00 => SUPPORTED.to_vec(),
        0x80 => unit_serial_number(id),
        0x83 => device_identification(id, port),
        0x86 => extended_inquiry(id),
        0x8F => super::xcopy::third_party_copy_page(),
        0xB0 => block_limits(id),
        0xB1 => block_device_characteristics(),
        0xB2 => super::provisioning::provisioning_page(id),
        _ => return None,
    };
    let mut p = Vec::with_capacity(4 + body.len());
    p.push(0x00); // qualifier 000b, device type 00h
    p.push(code);
    p.extend_from_slice(&(body.len() as u16).to_be_bytes());
    p.extend_from_slice(&body);
    Some(p)
}

fn unit_serial_number(id: &DiskIdentity) -> Vec<u8> {
    // Serials are ASCII by definition; anything else is replaced rather than leaked raw.
    let mut s = vec![0u8; id.serial.len().min(251)];
    put_ascii(&mut s, &id.serial);
    s
}

fn device_identification(id: &DiskIdentity, port: PortGroup) -> Vec<u8> {
    let mut d = Vec::with_capacity(28);
    // NAA designator, LU association, binary code set. PIV=0 so no protocol identifier.
    d.extend_from_slice(&[0x01, 0x03, 0x00, 16]);
    d.extend_from_slice(&id.naa);
    // Relative target port designator: target-port association, PIV=1 with protocol iSCSI.
    d.extend_from_slice(&[0x51, 0x94, 0x00, 4, 0, 0]);
    d.extend_from_slice(&port.id.to_be_bytes());
    // Target port group designator (type 5): which ALUA group that port is in.
    d.extend_from_slice(&[0x51, 0x95, 0x00, 4, 0, 0]);
    // The group's only port is this one, so the ids are the same.
    d.extend_from_slice(&port.id.to_be_bytes());
    d
}

fn extended_inquiry(id: &DiskIdentity) -> Vec<u8> {
    let mut d = vec![0u8; 0x3C];
    d[1] = 0x01; // SIMPSUP: simple task attribute
    d[2] = 0x01; // V_SUP: there is a volatile cache (WCE=1), SYNCHRONIZE CACHE matters
    d[3] = 0x01; // LUICLR: unit attentions are cleared per I_T nexus
    if id.conglomerate {
        // Page byte 8 bits 7..5 LU_COLL_TYPE = 001b: member of a conglomerate (SPC-5).
        d[4] = 0x20;
    }
    d
}

fn block_limits(id: &DiskIdentity) -> Vec<u8> {
    let bs = id.block_size.max(1);
    let mut d = vec![0u8; 0x3C];
    // OPTIMAL TRANSFER LENGTH GRANULARITY: 4 KiB, the smallest unaligned-free unit.
    let granularity = (4096 / bs).max(1) as u16;
    d[2..4].copy_from_slice(&granularity.to_be_bytes());
    d[4..8].copy_from_slice(&max_transfer_blocks(id).to_be_bytes());
    d[8..12].copy_from_slice(&(OPTIMAL_TRANSFER_BYTES / bs).to_be_bytes());
    // MAXIMUM PREFETCH LENGTH: what PRE-FETCH reports CONDITION MET for.
    d[12..16].copy_from_slice(&max_transfer_blocks(id).to_be_bytes());
    // WSNZ, COMPARE AND WRITE, UNMAP and WRITE SAME limits: one place for all of them.
    super::provisioning::fill_block_limits(id, &mut d);
    d
}

fn block_device_characteristics() -> Vec<u8> {
    let mut d = vec![0u8; 0x3C];
    d[0..2].copy_from_slice(&1u16.to_be_bytes()); // MEDIUM ROTATION RATE: non-rotating
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::disk::tests::identity;

    const P: PortGroup = PortGroup {
        id: 1,
        state: crate::scsi::AluaState::ActiveOptimized,
    };

    #[test]
    fn supported_pages_are_sorted_and_all_readable() {
        let id = identity();
        let p = page(&id, P, 0).unwrap();
        assert_eq!(&p[..4], &[0, 0, 0, 8]);
        assert!(p[4..].windows(2).all(|w| w[0] < w[1]));
        for &code in &p[4..] {
            let q = page(&id, P, code).unwrap();
            assert_eq!(q[1], code);
            assert_eq!(usize::from(u16::from_be_bytes([q[2], q[3]])) + 4, q.len());
        }
        assert!(page(&id, P, 0x89).is_none());
    }

    #[test]
    fn serial_page() {
        let p = page(&identity(), P, 0x80).unwrap();
        assert_eq!(
            &p,
            &[0, 0x80, 0, 8, b'S', b'N', b'0', b'0', b'0', b'0', b'4', b'2']
        );
    }

    #[test]
    fn device_identification_is_naa_plus_relative_port() {
        let id = identity();
        let p = page(&id, P, 0x83).unwrap();
        assert_eq!(&p[..8], &[0, 0x83, 0, 36, 0x01, 0x03, 0, 16]);
        assert_eq!(&p[8..24], &id.naa);
        assert_eq!(&p[24..32], &[0x51, 0x94, 0, 4, 0, 0, 0x00, 0x01]);
        assert_eq!(&p[32..], &[0x51, 0x95, 0, 4, 0, 0, 0x00, 0x01]);
        assert_eq!(p, page(&identity(), P, 0x83).unwrap(), "must be stable");
        let other = PortGroup {
            id: 0x0102,
            state: crate::scsi::AluaState::ActiveNonOptimized,
        };
        let q = page(&id, other, 0x83).unwrap();
        assert_eq!(
            &q[..24],
            &p[..24],
            "the LU designator does not depend on the port"
        );
        assert_eq!(&q[24..32], &[0x51, 0x94, 0, 4, 0, 0, 0x01, 0x02]);
        assert_eq!(&q[32..], &[0x51, 0x95, 0, 4, 0, 0, 0x01, 0x02]);
    }

    #[test]
    fn block_limits_is_sbc3_sized_with_transfer_limits() {
        let p = page(&identity(), P, 0xB0).unwrap();
        assert_eq!(p.len(), 64);
        assert_eq!(p[3], 0x3C);
        assert_eq!(p[5], 255, "MAXIMUM COMPARE AND WRITE LENGTH");
        assert_eq!(&p[6..8], &[0, 8]);
        assert_eq!(u32::from_be_bytes(p[8..12].try_into().unwrap()), 16384);
        assert_eq!(u32::from_be_bytes(p[12..16].try_into().unwrap()), 2048);
        assert_eq!(&p[24..28], &[0, 0, 1, 0], "256 UNMAP descriptors");
    }

    #[test]
    fn characteristics_and_provisioning() {
        let id = identity();
        assert_eq!(&page(&id, P, 0xB1).unwrap()[4..6], &[0, 1]);
        assert_eq!(
            page(&id, P, 0xB2).unwrap(),
            vec![0, 0xB2, 0, 4, 0, 0xE4, 2, 0]
        );
        assert_eq!(&page(&id, P, 0x86).unwrap()[4..8], &[0, 1, 1, 1]);
    }

    #[test]
    fn lu_coll_type_follows_the_identity() {
        let mut id = identity();
        assert_eq!(page(&id, P, 0x86).unwrap()[8], 0x00);
        id.conglomerate = true;
        let p = page(&id, P, 0x86).unwrap();
        assert_eq!(p[8], 0x20);
        assert_eq!(p.len(), 64);
    }
}
