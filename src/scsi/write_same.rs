//! WRITE SAME(10) and WRITE SAME(16) (SBC-3 §5.41, §5.42): one block (or, with NDOB, an
//! implied block of zeros) repeated over a range, or with UNMAP a request to deallocate it.
//! The transport deallocates only when the LU is thin and the block is all zeros, so reads
//! return the block's content either way (LBPRZ = 1).

use super::cdb::Cdb;
use super::disk::DiskIdentity;
use super::provisioning::max_write_same_blocks;
use super::rw::check_range;
use super::sense::Sense;
use super::{Plan, Response};

pub(crate) fn plan(
    id: &DiskIdentity,
    cdb: Cdb<'_>,
    sixteen: bool,
    write_protect: Option<Sense>,
) -> Result<Plan, Sense> {
    let (lba, blocks, len_byte) = if sixteen {
        (cdb.be64(2), u64::from(cdb.be32(10)), 10)
    } else {
        (u64::from(cdb.be32(2)), u64::from(cdb.be16(7)), 7)
    };
    let unmap = cdb.bit(1, 3);
    let ndob = sixteen && cdb.bit(1, 0);
    if unmap && !id.thin {
        // A fully provisioned LU advertises LBPWS = LBPWS10 = 0 in VPD B2h.
        return Err(Sense::invalid_cdb_field(1, Some(3)));
    }
    // WSNZ = 0 (VPD B0h): zero blocks means "from LBA to the end of the medium", subject to
    // MAXIMUM WRITE SAME LENGTH like any explicit length (libiscsi WriteSame*.0blocks).
    check_range(id, lba, blocks)?;
    let blocks = if blocks == 0 {
        id.num_blocks.get() - lba
    } else {
        blocks
    };
    if blocks > max_write_same_blocks(id) {
        return Err(Sense::invalid_cdb_field(len_byte, None));
    }
    if let Some(sense) = write_protect {
        return Err(sense);
    }
    if blocks == 0 {
        return Ok(Plan::Respond(Response::good_empty()));
    }
    Ok(Plan::WriteSame {
        offset: lba.saturating_mul(u64::from(id.block_size)),
        len: blocks.saturating_mul(u64::from(id.block_size)),
        block_len: if ndob { 0 } else { id.block_size },
        unmap,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::disk::tests::identity;
    use crate::scsi::opcodes::decode;

    fn ws16(lba: u64, blocks: u32, byte1: u8) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0] = 0x93;
        c[1] = byte1;
        c[2..10].copy_from_slice(&lba.to_be_bytes());
        c[10..14].copy_from_slice(&blocks.to_be_bytes());
        c
    }

    fn run(id: &DiskIdentity, c: &[u8], wp: Option<Sense>) -> Result<Plan, Sense> {
        let (info, c) = decode(c)?;
        let sixteen = info.command == crate::scsi::opcodes::Command::WriteSame16;
        plan(id, c, sixteen, wp)
    }

    #[test]
    fn ten_and_sixteen() {
        let id = identity();
        let ws10 = [0x41, 0x08, 0, 0, 0, 4, 0, 0, 2, 0];
        assert_eq!(
            run(&id, &ws10, None).unwrap(),
            Plan::WriteSame {
                offset: 2048,
                len: 1024,
                block_len: 512,
                unmap: true
            }
        );
        assert_eq!(
            run(&id, &ws16(10, 1, 0x09), None).unwrap(),
            Plan::WriteSame {
                offset: 5120,
                len: 512,
                block_len: 0,
                unmap: true
            }
        );
    }

    #[test]
    fn zero_blocks_runs_to_the_end() {
        let id = identity();
        match run(&id, &ws16(2000, 0, 0), None).unwrap() {
            Plan::WriteSame { offset, len, .. } => {
                assert_eq!((offset, len), (2000 * 512, 48 * 512))
            }
            other => panic!("{other:?}"),
        }
        let big = DiskIdentity {
            num_blocks: (1 << 20).into(),
            ..identity()
        };
        let e = run(&big, &ws16(0, 0, 0), None).unwrap_err();
        assert_eq!((e.asc, e.field.unwrap().byte), (0x24, 10));
        assert!(run(&big, &ws16((1 << 20) - 32768, 0, 0), None).is_ok());
    }

    #[test]
    fn rejections() {
        let id = identity();
        assert_eq!(
            run(&id, &ws16(2048, 0, 0), None).unwrap_err(),
            Sense::LBA_OUT_OF_RANGE
        );
        assert_eq!(
            run(&id, &ws16(2040, 9, 0), None).unwrap_err(),
            Sense::LBA_OUT_OF_RANGE
        );
        // ANCHOR is outside the usage mask; the table's field pointer names byte 1 (its bit
        // heuristic merges ANCHOR with the unsupported WRPROTECT field above it).
        let e = run(&id, &ws16(0, 1, 0x10), None).unwrap_err();
        assert_eq!((e.asc, e.field.unwrap().byte), (0x24, 1), "ANCHOR");
        let e = run(&id, &[0x41, 0x01, 0, 0, 0, 0, 0, 0, 1, 0], None).unwrap_err();
        assert_eq!(
            e.field.unwrap().byte,
            1,
            "NDOB does not exist in WRITE SAME(10)"
        );
        let wp = Some(Sense::WRITE_PROTECTED);
        assert_eq!(
            run(&id, &ws16(0, 1, 0), wp).unwrap_err(),
            Sense::WRITE_PROTECTED
        );
        let thick = DiskIdentity {
            thin: false,
            ..identity()
        };
        let e = run(&thick, &ws16(0, 1, 0x08), None).unwrap_err();
        assert_eq!((e.asc, e.field.unwrap().bit), (0x24, Some(3)));
        assert!(run(&thick, &ws16(0, 1, 0), None).is_ok());
    }
}
