//! COMPARE AND WRITE (SBC-3 §5.2), the ATS primitive ESXi uses for every VMFS lock and
//! heartbeat. Planning only: the transport runs [`Plan::CompareAndWrite`] atomically against
//! every other write to the LU and answers a mismatch through `disk::compare_result`, whose
//! INFORMATION is the offset of the first differing byte from the start of the Data-Out
//! buffer (the verify instance comes first, so that is also the offset within the compared
//! blocks).

use super::cdb::Cdb;
use super::disk::DiskIdentity;
use super::provisioning::MAX_CAW_BLOCKS;
use super::rw::check_range;
use super::sense::Sense;
use super::Plan;

/// NUMBER OF LOGICAL BLOCKS, the only length field.
pub(crate) const NLB_BYTE: u16 = 13;

// The limit check below is always false while MAX_CAW_BLOCKS is 255, which clippy points
// out; it stays so that lowering the advertised limit is enforced without touching this file.
#[allow(clippy::absurd_extreme_comparisons)]
pub(crate) fn plan(
    id: &DiskIdentity,
    cdb: Cdb<'_>,
    write_protect: Option<Sense>,
) -> Result<Plan, Sense> {
    let lba = cdb.be64(2);
    let blocks = cdb.u8(13);
    if blocks > MAX_CAW_BLOCKS {
        return Err(Sense::invalid_cdb_field(NLB_BYTE, None));
    }
    check_range(id, lba, u64::from(blocks))?;
    if let Some(sense) = write_protect {
        return Err(sense);
    }
    // Zero blocks is not an error and transfers nothing (SBC-3 §5.2); the plan still goes out
    // with len 0 so the transport can refuse an initiator that sends Data-Out anyway.
    Ok(Plan::CompareAndWrite {
        offset: lba.saturating_mul(u64::from(id.block_size)),
        len: u32::from(blocks) * id.block_size,
        fua: cdb.bit(1, 3),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::disk::tests::identity;
    use crate::scsi::opcodes::decode;

    fn cdb(lba: u64, blocks: u8, byte1: u8) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0] = 0x89;
        c[1] = byte1;
        c[2..10].copy_from_slice(&lba.to_be_bytes());
        c[13] = blocks;
        c
    }

    fn run(c: &[u8], wp: Option<Sense>) -> Result<Plan, Sense> {
        let (_, c) = decode(c)?;
        plan(&identity(), c, wp)
    }

    #[test]
    fn one_block_with_fua() {
        assert_eq!(
            run(&cdb(5, 1, 0x08), None).unwrap(),
            Plan::CompareAndWrite {
                offset: 2560,
                len: 512,
                fua: true
            }
        );
        assert_eq!(
            run(&cdb(0, 1, 0x08), None).unwrap().data_out_len(),
            Some(1024)
        );
    }

    #[test]
    fn range_protect_and_bad_bits() {
        assert_eq!(
            run(&cdb(2047, 2, 0), None).unwrap_err(),
            Sense::LBA_OUT_OF_RANGE
        );
        assert_eq!(
            run(&cdb(2047, 1, 0), None).unwrap().data_out_len(),
            Some(1024)
        );
        let wp = Some(Sense::WRITE_PROTECTED);
        assert_eq!(run(&cdb(0, 1, 0), wp).unwrap_err(), Sense::WRITE_PROTECTED);
        let e = run(&cdb(0, 1, 0x20), None).unwrap_err();
        let f = e.field.unwrap();
        assert_eq!((e.asc, f.byte, f.bit), (0x24, 1, Some(7)), "WRPROTECT");
        let mut c = cdb(0, 1, 0);
        c[11] = 1;
        assert_eq!(run(&c, None).unwrap_err().field.unwrap().byte, 11);
    }

    #[test]
    fn zero_blocks_moves_nothing() {
        assert_eq!(run(&cdb(0, 0, 0), None).unwrap().data_out_len(), Some(0));
    }
}
