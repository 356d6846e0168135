//! Standard INQUIRY data (SPC-4 §6.6.2) and the INQUIRY command's CDB checks; VPD pages live in
//! `vpd.rs`.

use bytes::Bytes;

use super::alua::PortGroup;
use super::cdb::{put_ascii, trim, Cdb};
use super::disk::DiskIdentity;
use super::sense::Sense;
use super::vpd;

/// Version descriptors (SPC-4 table 144) we claim: SAM-5, iSCSI, SPC-4 and SBC-3, each
/// "no version claimed" since we track the standards, not one revision. libiscsi only
/// counts SBC-3 support (and then expects the 3Ch-byte Block Limits page) with 04C0h.
const VERSION_DESCRIPTORS: [u16; 4] = [0x00A0, 0x0960, 0x0460, 0x04C0];

/// Bytes of standard data we build: through the version descriptors plus reserved tail.
const STANDARD_LEN: usize = 96;

/// PERIPHERAL DEVICE TYPE 00h: direct-access block device.
const PDT_DISK: u8 = 0x00;

/// Byte 1 bit 6: the LU is a member of a logical unit conglomerate (SPC-5); the bit ESXi is
/// believed to read to recognize a Protocol Endpoint.
const LU_CONG: u8 = 0x40;

/// Byte 5 bits 5..4 TPGS = 01b: implicit ALUA only (REPORT TARGET PORT GROUPS, no SET).
const TPGS_IMPLICIT: u8 = 0x10;
/// Byte 5 bit 3 3PC: EXTENDED COPY is supported.
const THIRD_PARTY_COPY: u8 = 0x08;

/// Standard INQUIRY data. `peripheral` is byte 0 (qualifier and device type), which is all
/// that differs for a LUN with no logical unit behind it.
pub(crate) fn standard_data(
    peripheral: u8,
    vendor: &str,
    product: &str,
    revision: &str,
) -> Vec<u8> {
    let mut d = vec![0u8; STANDARD_LEN];
    d[0] = peripheral;
    d[1] = 0x00; // RMB=0: the medium is not removable
    d[2] = 0x06; // VERSION: SPC-4
    d[3] = 0x10 | 0x02; // HISUP, RESPONSE DATA FORMAT 2
    d[4] = (STANDARD_LEN - 5) as u8;
    d[5] = 0x00; // TPGS 00b (no ALUA yet), no PROTECT, no 3PC
    d[6] = 0x00;
    d[7] = 0x02; // CMDQUE: the transport queues commands
    put_ascii(&mut d[8..16], vendor);
    put_ascii(&mut d[16..32], product);
    put_ascii(&mut d[32..36], revision);
    for (i, v) in VERSION_DESCRIPTORS.iter().enumerate() {
        d[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
    }
    d
}

/// INQUIRY for an existing disk LU: standard data or a VPD page, cut to ALLOCATION LENGTH.
/// `port` is the target port (and group) the command came in through.
pub(crate) fn inquiry(id: &DiskIdentity, port: PortGroup, cdb: Cdb<'_>) -> Result<Bytes, Sense> {
    let evpd = cdb.bit(1, 0);
    let page = cdb.u8(2);
    let alloc = usize::from(cdb.be16(3));
    let data = if evpd {
        vpd::page(id, port, page).ok_or(Sense::invalid_cdb_field(2, Some(7)))?
    } else if page != 0 {
        return Err(Sense::invalid_cdb_field(2, Some(7)));
    } else {
        let mut d = standard_data(PDT_DISK, &id.vendor, &id.product, &id.revision);
        if id.conglomerate {
            d[1] |= LU_CONG;
        }
        d[5] |= TPGS_IMPLICIT | THIRD_PARTY_COPY;
        d
    };
    Ok(trim(data, alloc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::disk::tests::identity;

    fn cdb(evpd: bool, page: u8, alloc: u16) -> [u8; 6] {
        let a = alloc.to_be_bytes();
        [0x12, evpd as u8, page, a[0], a[1], 0]
    }

    #[test]
    fn standard_page_bytes() {
        let id = identity();
        let d = inquiry(&id, Default::default(), Cdb::new(&cdb(false, 0, 260))).unwrap();
        assert_eq!(d.len(), 96);
        assert_eq!(&d[..8], &[0x00, 0x00, 0x06, 0x12, 91, 0x18, 0x00, 0x02]);
        assert_eq!(&d[8..16], b"VVOLD   ");
        assert_eq!(&d[16..32], b"VVOLD DISK      ");
        assert_eq!(&d[32..36], b"0001");
        assert_eq!(
            &d[58..66],
            &[0x00, 0xA0, 0x09, 0x60, 0x04, 0x60, 0x04, 0xC0]
        );
    }

    #[test]
    fn lu_cong_follows_the_identity() {
        let mut id = identity();
        assert_eq!(
            inquiry(&id, Default::default(), Cdb::new(&cdb(false, 0, 96))).unwrap()[1],
            0x00
        );
        id.conglomerate = true;
        assert_eq!(
            inquiry(&id, Default::default(), Cdb::new(&cdb(false, 0, 96))).unwrap()[1],
            0x40
        );
    }

    #[test]
    fn allocation_length_trims_and_511_equals_512() {
        let id = identity();
        assert_eq!(
            inquiry(&id, Default::default(), Cdb::new(&cdb(false, 0, 5)))
                .unwrap()
                .len(),
            5
        );
        assert_eq!(
            inquiry(&id, Default::default(), Cdb::new(&cdb(false, 0, 0)))
                .unwrap()
                .len(),
            0
        );
        assert_eq!(
            inquiry(&id, Default::default(), Cdb::new(&cdb(false, 0, 511))).unwrap(),
            inquiry(&id, Default::default(), Cdb::new(&cdb(false, 0, 512))).unwrap()
        );
    }

    #[test]
    fn page_code_without_evpd_is_invalid_field_byte_2() {
        let e = inquiry(
            &identity(),
            Default::default(),
            Cdb::new(&cdb(false, 0x80, 255)),
        )
        .unwrap_err();
        assert_eq!((e.asc, e.field.unwrap().byte), (0x24, 2));
    }

    #[test]
    fn unknown_vpd_page_is_invalid_field_byte_2() {
        let e = inquiry(
            &identity(),
            Default::default(),
            Cdb::new(&cdb(true, 0xC7, 255)),
        )
        .unwrap_err();
        assert_eq!((e.asc, e.field.unwrap().byte), (0x24, 2));
    }
}
