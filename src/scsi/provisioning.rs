//! Logical block provisioning and the VAAI limits, derived in one place from
//! [`DiskIdentity::thin`] and the block size: READ CAPACITY(16) LBPME/LBPRZ, the VAAI fields of
//! VPD B0h (Block Limits) and all of VPD B2h (Logical Block Provisioning). The command
//! handlers (`caw`, `write_same`, `unmap`) enforce exactly these limits, so what the LU
//! advertises and what it accepts cannot drift apart.

use super::disk::DiskIdentity;

/// MAXIMUM COMPARE AND WRITE LENGTH. ESXi's ATS uses one block; 255 (the field's maximum)
/// costs nothing extra because the compare and the write hold the LU's write lock only for
/// one read and one write of at most 255 blocks (about 1 MiB at 4 KiB blocks).
pub(crate) const MAX_CAW_BLOCKS: u8 = 255;

/// MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT: 256 descriptors is a 4 KiB parameter list, more than
/// ESXi or Linux send in one command.
pub(crate) const MAX_UNMAP_DESCRIPTORS: u32 = 256;

/// MAXIMUM UNMAP LBA COUNT in bytes: a hole punch or chunk release is cheap, so this only
/// bounds how long one command may hold the LU. 512 MiB is 2^20 blocks of 512 bytes, the
/// largest explicit limit libiscsi's Inquiry.BlockLimits accepts as sane.
const MAX_UNMAP_BYTES: u64 = 512 << 20;

/// MAXIMUM WRITE SAME LENGTH in bytes. A WRITE SAME that is not an unmap really writes every
/// block, so one command is bounded to 16 MiB (a fraction of a second of backend writes;
/// ESXi's zeroing sends far smaller commands). It also keeps the limit below 65536 blocks at
/// 512 bytes: above that, libiscsi's WriteSame16.Unmap writes its 65536-block pattern with a
/// single WRITE(16) larger than our MAXIMUM TRANSFER LENGTH.
const MAX_WRITE_SAME_BYTES: u64 = 16 << 20;

/// OPTIMAL UNMAP GRANULARITY in bytes: the file system block of the file backend (smaller
/// punches only zero) and a divisor of 1 MiB, which VMFS6 automatic unmap requires
/// (reference §9 item 12). The RAM backend frees whole 1 MiB chunks and zeroes the rest.
const UNMAP_GRANULARITY_BYTES: u32 = 4096;

fn bs(id: &DiskIdentity) -> u64 {
    u64::from(id.block_size.max(1))
}

pub(crate) fn max_unmap_blocks(id: &DiskIdentity) -> u32 {
    u32::try_from(MAX_UNMAP_BYTES / bs(id)).unwrap_or(u32::MAX)
}

pub(crate) fn max_write_same_blocks(id: &DiskIdentity) -> u64 {
    MAX_WRITE_SAME_BYTES / bs(id)
}

pub(crate) fn unmap_granularity_blocks(id: &DiskIdentity) -> u32 {
    (UNMAP_GRANULARITY_BYTES / id.block_size.max(1)).max(1)
}

/// READ CAPACITY(16) byte 14: LBPME (bit 7) and LBPRZ (bit 6). LBPRZ holds because every
/// backend reads deallocated blocks as zeros (punched holes, released RAM chunks, null).
pub(crate) fn read_capacity_byte_14(id: &DiskIdentity) -> u8 {
    if id.thin {
        0xC0
    } else {
        0
    }
}

/// Fills the VAAI fields of a Block Limits body (`d` is the page without its 4-byte header,
/// so page byte N is `d[N - 4]`).
pub(crate) fn fill_block_limits(id: &DiskIdentity, d: &mut [u8]) {
    if d.len() < 0x3C {
        return;
    }
    // Page byte 4 WSNZ = 0: a WRITE SAME of 0 blocks means "to the end of the medium"
    // (bounded by MAXIMUM WRITE SAME LENGTH like any other).
    d[0] = 0;
    d[1] = MAX_CAW_BLOCKS;
    if id.thin {
        d[16..20].copy_from_slice(&max_unmap_blocks(id).to_be_bytes());
        d[20..24].copy_from_slice(&MAX_UNMAP_DESCRIPTORS.to_be_bytes());
        d[24..28].copy_from_slice(&unmap_granularity_blocks(id).to_be_bytes());
        // UGAVALID = 1, UNMAP GRANULARITY ALIGNMENT = 0: granules start at LBA 0.
        d[28..32].copy_from_slice(&0x8000_0000u32.to_be_bytes());
    }
    d[32..40].copy_from_slice(&max_write_same_blocks(id).to_be_bytes());
}

/// VPD B2h body (SBC-3 §6.6.4): LBPU, LBPWS, LBPWS10, LBPRZ and PROVISIONING TYPE 010b when
/// thin; all zero (fully provisioned) otherwise. No anchoring (ANC_SUP = 0), no threshold.
pub(crate) fn provisioning_page(id: &DiskIdentity) -> Vec<u8> {
    if id.thin {
        vec![0, 0x80 | 0x40 | 0x20 | 0x04, 0x02, 0]
    } else {
        vec![0u8; 4]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::disk::tests::identity;

    #[test]
    fn granularity_fits_vmfs6() {
        for bs in [512u32, 4096] {
            let id = DiskIdentity {
                block_size: bs,
                ..identity()
            };
            let g = u64::from(unmap_granularity_blocks(&id)) * u64::from(bs);
            assert!(g <= 1 << 20 && (1 << 20) % g == 0, "{bs}");
        }
    }

    #[test]
    fn thin_and_thick_pages() {
        let mut id = identity();
        assert_eq!(provisioning_page(&id), vec![0, 0xE4, 0x02, 0]);
        assert_eq!(read_capacity_byte_14(&id), 0xC0);
        let mut d = vec![0u8; 0x3C];
        fill_block_limits(&id, &mut d);
        assert_eq!(d[1], 255);
        assert_eq!(&d[16..20], &(1u32 << 20).to_be_bytes());
        assert_eq!(&d[20..24], &[0, 0, 1, 0]);
        assert_eq!(&d[24..28], &[0, 0, 0, 8]);
        assert_eq!(&d[28..32], &[0x80, 0, 0, 0]);
        assert_eq!(&d[32..40], &32768u64.to_be_bytes());
        id.thin = false;
        assert_eq!(provisioning_page(&id), vec![0; 4]);
        assert_eq!(read_capacity_byte_14(&id), 0);
        let mut d = vec![0u8; 0x3C];
        fill_block_limits(&id, &mut d);
        assert_eq!(&d[16..32], &[0; 16]);
        assert_eq!(
            d[1], 255,
            "COMPARE AND WRITE does not need thin provisioning"
        );
    }
}
