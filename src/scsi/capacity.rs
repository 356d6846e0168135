//! READ CAPACITY(10) and READ CAPACITY(16) (SBC-3 §5.15, §5.16).

use bytes::Bytes;

use super::cdb::{trim, Cdb};
use super::disk::DiskIdentity;
use super::sense::Sense;

fn last_lba(id: &DiskIdentity) -> u64 {
    id.num_blocks.get().saturating_sub(1)
}

/// The PMI bit and LOGICAL BLOCK ADDRESS field are obsolete in SBC-3; an LBA without PMI is
/// still an invalid field, and with PMI we answer with the plain capacity (no delay point).
fn check_pmi(cdb: Cdb<'_>, lba: u64, pmi_byte: usize) -> Result<(), Sense> {
    if !cdb.bit(pmi_byte, 0) && lba != 0 {
        return Err(Sense::invalid_cdb_field(2, Some(7)));
    }
    Ok(())
}

pub(crate) fn read_capacity_10(id: &DiskIdentity, cdb: Cdb<'_>) -> Result<Bytes, Sense> {
    check_pmi(cdb, u64::from(cdb.be32(2)), 8)?;
    // FFFFFFFFh tells the initiator to use READ CAPACITY(16).
    let lba = u32::try_from(last_lba(id)).unwrap_or(u32::MAX);
    let mut d = Vec::with_capacity(8);
    d.extend_from_slice(&lba.to_be_bytes());
    d.extend_from_slice(&id.block_size.to_be_bytes());
    Ok(Bytes::from(d))
}

pub(crate) fn read_capacity_16(id: &DiskIdentity, cdb: Cdb<'_>) -> Result<Bytes, Sense> {
    check_pmi(cdb, cdb.be64(2), 14)?;
    let alloc = cdb.be32(10) as usize;
    let mut d = vec![0u8; 32];
    d[0..8].copy_from_slice(&last_lba(id).to_be_bytes());
    d[8..12].copy_from_slice(&id.block_size.to_be_bytes());
    // [12] P_TYPE/PROT_EN 0: no protection information. [13] P_I_EXPONENT and LOGICAL BLOCKS
    // PER PHYSICAL BLOCK EXPONENT 0. [14..16] LBPME, LBPRZ, LOWEST ALIGNED LBA 0.
    d[14] = super::provisioning::read_capacity_byte_14(id);
    Ok(trim(d, alloc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::disk::tests::identity;

    #[test]
    fn rc10_bytes_and_large_disks() {
        let mut id = identity();
        let cdb = [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            read_capacity_10(&id, Cdb::new(&cdb)).unwrap().as_ref(),
            &[0, 0, 0x07, 0xFF, 0, 0, 2, 0]
        );
        id.num_blocks = (1 << 33).into();
        assert_eq!(
            &read_capacity_10(&id, Cdb::new(&cdb)).unwrap()[..4],
            &[0xFF; 4]
        );
    }

    #[test]
    fn rc10_lba_without_pmi_is_invalid() {
        let cdb = [0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0];
        let e = read_capacity_10(&identity(), Cdb::new(&cdb)).unwrap_err();
        assert_eq!((e.asc, e.field.unwrap().byte), (0x24, 2));
        let cdb = [0x25, 0, 0, 0, 0, 1, 0, 0, 1, 0];
        assert!(read_capacity_10(&identity(), Cdb::new(&cdb)).is_ok());
    }

    #[test]
    fn rc16_bytes_and_allocation_length() {
        let mut id = identity();
        id.num_blocks = (1 << 33).into();
        let mut cdb = [0u8; 16];
        cdb[0] = 0x9E;
        cdb[1] = 0x10;
        cdb[13] = 32;
        let d = read_capacity_16(&id, Cdb::new(&cdb)).unwrap();
        assert_eq!(&d[..12], &[0, 0, 0, 1, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 2, 0]);
        assert_eq!(&d[12..14], &[0; 2]);
        assert_eq!(d[14], 0xC0, "thin: LBPME and LBPRZ");
        assert_eq!(&d[15..], &[0; 17]);
        id.thin = false;
        assert_eq!(read_capacity_16(&id, Cdb::new(&cdb)).unwrap()[14], 0);
        cdb[13] = 0;
        assert_eq!(read_capacity_16(&id, Cdb::new(&cdb)).unwrap().len(), 0);
        cdb[13] = 15;
        assert_eq!(read_capacity_16(&id, Cdb::new(&cdb)).unwrap().len(), 15);
    }
}
