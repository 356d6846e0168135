//! Medium-access commands (SBC-3 §5): READ, WRITE, VERIFY, WRITE AND VERIFY, SYNCHRONIZE
//! CACHE and PRE-FETCH turned into byte-range [`Plan`]s. This is the hot path: no allocation,
//! no locks; everything needed arrives as arguments.

use super::cdb::Cdb;
use super::disk::DiskIdentity;
use super::opcodes::Command;
use super::sense::Sense;
use super::vpd::max_transfer_blocks;
use super::{Plan, Response, Status};

/// Where a command's LBA and length live, by CDB size.
#[derive(Clone, Copy)]
enum Layout {
    Six,
    Ten,
    Twelve,
    Sixteen,
}

impl Layout {
    /// (LBA, length in blocks, byte of the length field for field pointers).
    fn decode(self, cdb: Cdb<'_>) -> (u64, u32, u16) {
        match self {
            Layout::Six => {
                let lba = (u64::from(cdb.u8(1) & 0x1F) << 16) | u64::from(cdb.be16(2));
                // READ(6)/WRITE(6): zero means 256 blocks (SBC-3 §5.8).
                let len = match cdb.u8(4) {
                    0 => 256,
                    n => u32::from(n),
                };
                (lba, len, 4)
            }
            Layout::Ten => (u64::from(cdb.be32(2)), u32::from(cdb.be16(7)), 7),
            Layout::Twelve => (u64::from(cdb.be32(2)), cdb.be32(6), 6),
            Layout::Sixteen => (cdb.be64(2), cdb.be32(10), 10),
        }
    }
}

/// LBA OUT OF RANGE unless [lba, lba+blocks) lies on the medium. An LBA past the last block
/// is out of range even with zero blocks (libiscsi's ZeroBlocks tests rely on it).
pub(crate) fn check_range(id: &DiskIdentity, lba: u64, blocks: u64) -> Result<(), Sense> {
    let capacity = id.num_blocks.get();
    match lba.checked_add(blocks) {
        Some(end) if lba < capacity && end <= capacity => Ok(()),
        _ => Err(Sense::LBA_OUT_OF_RANGE),
    }
}

fn check_transfer_length(id: &DiskIdentity, blocks: u32, at: u16) -> Result<(), Sense> {
    if blocks > max_transfer_blocks(id) {
        return Err(Sense::invalid_cdb_field(at, Some(7)));
    }
    Ok(())
}

/// BYTCHK (byte 1 bits 2..1) of VERIFY and WRITE AND VERIFY. 01b is the only comparing mode
/// we support: 11b compares one Data-Out block against every medium block, which a single
/// [`Plan::Compare`] cannot express, and 10b is reserved.
fn bytchk(cdb: Cdb<'_>) -> Result<bool, Sense> {
    match (cdb.u8(1) >> 1) & 0x3 {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(Sense::invalid_cdb_field(1, Some(2))),
    }
}

fn byte_range(id: &DiskIdentity, lba: u64, blocks: u32) -> (u64, u32) {
    // Both products are bounded: lba < num_blocks and blocks <= MAX TRANSFER LENGTH.
    (
        lba.saturating_mul(u64::from(id.block_size)),
        blocks.saturating_mul(id.block_size),
    )
}

fn good() -> Plan {
    Plan::Respond(Response::good_empty())
}

/// Plans a medium-access command. `write_protect` is the sense to fail writes with, if the
/// LU is write-protected (hardware: read-only identity; software: Control page SWP).
pub(crate) fn plan(
    id: &DiskIdentity,
    command: Command,
    cdb: Cdb<'_>,
    write_protect: Option<Sense>,
) -> Result<Plan, Sense> {
    use Command::*;
    let layout = match command {
        Read6 | Write6 => Layout::Six,
        Read10 | Write10 | WriteAndVerify10 | Verify10 | PreFetch10 | SynchronizeCache10 => {
            Layout::Ten
        }
        Read12 | Write12 | WriteAndVerify12 | Verify12 => Layout::Twelve,
        _ => Layout::Sixteen,
    };
    let (lba, blocks, len_at) = layout.decode(cdb);
    match command {
        Read6 | Read10 | Read12 | Read16 => {
            check_transfer_length(id, blocks, len_at)?;
            check_range(id, lba, u64::from(blocks))?;
            if blocks == 0 {
                return Ok(good());
            }
            let (offset, len) = byte_range(id, lba, blocks);
            Ok(Plan::Read { offset, len })
        }
        Write6 | Write10 | Write12 | Write16 | WriteAndVerify10 | WriteAndVerify12
        | WriteAndVerify16 => {
            let verify = matches!(
                command,
                WriteAndVerify10 | WriteAndVerify12 | WriteAndVerify16
            );
            if verify {
                bytchk(cdb)?;
            }
            check_transfer_length(id, blocks, len_at)?;
            check_range(id, lba, u64::from(blocks))?;
            if let Some(sense) = write_protect {
                return Err(sense);
            }
            if blocks == 0 {
                return Ok(good());
            }
            let (offset, len) = byte_range(id, lba, blocks);
            // WRITE AND VERIFY: the data must be on the medium before it can be verified, so
            // it is written through; reading back what we just wrote adds nothing.
            let fua = verify || cdb.bit(1, 3);
            Ok(Plan::Write { offset, len, fua })
        }
        Verify10 | Verify12 | Verify16 => {
            let compare = bytchk(cdb)?;
            if compare {
                check_transfer_length(id, blocks, len_at)?;
            }
            check_range(id, lba, u64::from(blocks))?;
            if !compare || blocks == 0 {
                // BYTCHK=0: a medium check; the backend has no media errors to find.
                return Ok(good());
            }
            let (offset, len) = byte_range(id, lba, blocks);
            Ok(Plan::Compare { offset, len })
        }
        SynchronizeCache10 | SynchronizeCache16 => {
            // NUMBER OF BLOCKS zero means "to the end of the medium".
            check_range(id, lba, u64::from(blocks))?;
            Ok(Plan::Flush)
        }
        PreFetch10 | PreFetch16 => {
            check_range(id, lba, u64::from(blocks))?;
            // SBC-3 §5.9: CONDITION MET when the range fits the cache (both IMMED values),
            // GOOD when it does not. Zero blocks means "to the end of the medium".
            let span = if blocks == 0 {
                id.num_blocks.get() - lba
            } else {
                u64::from(blocks)
            };
            let status = if span <= u64::from(max_transfer_blocks(id)) {
                Status::ConditionMet
            } else {
                Status::Good
            };
            Ok(Plan::Respond(Response {
                status,
                ..Response::good_empty()
            }))
        }
        _ => Err(Sense::INVALID_OPCODE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::disk::tests::identity;
    use crate::scsi::opcodes::decode;

    fn run(cdb: &[u8], wp: Option<Sense>) -> Result<Plan, Sense> {
        let (info, c) = decode(cdb)?;
        plan(&identity(), info.command, c, wp)
    }

    #[test]
    fn administrative_lu_is_an_ordinary_read_only_medium() {
        // A PE's identity: read-only, so writes fail WRITE PROTECTED; reads, VERIFY and
        // PRE-FETCH plan as on any LU (its null device answers zeros).
        let id = DiskIdentity {
            administrative: true,
            read_only: true,
            ..identity()
        };
        let wp = Some(Sense::WRITE_PROTECTED);
        let run = |cdb: &[u8]| {
            let (info, c) = decode(cdb).unwrap();
            plan(&id, info.command, c, wp)
        };
        assert_eq!(
            run(&cdb10(0x28, 0, 0, 1)),
            Ok(Plan::Read {
                offset: 0,
                len: 512
            })
        );
        assert_eq!(run(&cdb10(0x2A, 0, 0, 1)), Err(Sense::WRITE_PROTECTED));
        assert_eq!(run(&cdb16(0x8A, 0, 0, 1)), Err(Sense::WRITE_PROTECTED));
        assert_eq!(run(&cdb10(0x2F, 0, 0, 1)), Ok(good()));
        // Past its end, as on any LU.
        let end = id.num_blocks.get() as u32;
        assert_eq!(run(&cdb10(0x28, 0, end, 1)), Err(Sense::LBA_OUT_OF_RANGE));
    }

    fn cdb10(op: u8, b1: u8, lba: u32, len: u16) -> Vec<u8> {
        let mut c = vec![op, b1];
        c.extend_from_slice(&lba.to_be_bytes());
        c.push(0);
        c.extend_from_slice(&len.to_be_bytes());
        c.push(0);
        c
    }

    fn cdb16(op: u8, b1: u8, lba: u64, len: u32) -> Vec<u8> {
        let mut c = vec![op, b1];
        c.extend_from_slice(&lba.to_be_bytes());
        c.extend_from_slice(&len.to_be_bytes());
        c.extend_from_slice(&[0, 0]);
        c
    }

    #[test]
    fn read_plans_byte_ranges() {
        assert_eq!(
            run(&cdb10(0x28, 0x18, 2, 3), None),
            Ok(Plan::Read {
                offset: 1024,
                len: 1536
            })
        );
        assert_eq!(
            run(&cdb16(0x88, 0, 2047, 1), None),
            Ok(Plan::Read {
                offset: 2047 * 512,
                len: 512
            })
        );
        let mut c12 = vec![0xA8, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0];
        assert_eq!(
            run(&c12, None),
            Ok(Plan::Read {
                offset: 512,
                len: 512
            })
        );
        c12[1] = 0x60;
        assert_eq!(run(&c12, None).unwrap_err().field.unwrap().bit, Some(7));
    }

    #[test]
    fn read6_zero_means_256() {
        assert_eq!(
            run(&[0x08, 0, 0, 0, 0, 0], None),
            Ok(Plan::Read {
                offset: 0,
                len: 256 * 512
            })
        );
        assert_eq!(
            run(&[0x08, 0x1F, 0xFF, 0xFF, 1, 0], None),
            Err(Sense::LBA_OUT_OF_RANGE)
        );
    }

    #[test]
    fn zero_length_and_out_of_range() {
        assert_eq!(run(&cdb10(0x28, 0, 0, 0), None), Ok(good()));
        assert_eq!(
            run(&cdb10(0x28, 0, 2049, 0), None),
            Err(Sense::LBA_OUT_OF_RANGE)
        );
        assert_eq!(
            run(&cdb10(0x28, 0, 2047, 2), None),
            Err(Sense::LBA_OUT_OF_RANGE)
        );
        assert_eq!(
            run(&cdb16(0x88, 0, u64::MAX, 1), None),
            Err(Sense::LBA_OUT_OF_RANGE)
        );
        assert_eq!(
            run(&cdb10(0x2A, 0, 0xFFFF_FFFF, 0), None),
            Err(Sense::LBA_OUT_OF_RANGE)
        );
    }

    #[test]
    fn transfer_length_above_limit_is_invalid_field() {
        let e = run(&cdb16(0x88, 0, 0, 16385), None).unwrap_err();
        assert_eq!((e.asc, e.field.unwrap().byte), (0x24, 10));
    }

    #[test]
    fn writes_fua_and_protection() {
        assert_eq!(
            run(&cdb10(0x2A, 0x08, 1, 1), None),
            Ok(Plan::Write {
                offset: 512,
                len: 512,
                fua: true
            })
        );
        assert_eq!(
            run(&cdb10(0x2A, 0x12, 1, 1), None),
            Ok(Plan::Write {
                offset: 512,
                len: 512,
                fua: false
            })
        );
        assert_eq!(
            run(&cdb10(0x2A, 0, 1, 1), Some(Sense::WRITE_PROTECTED)),
            Err(Sense::WRITE_PROTECTED)
        );
        let e = run(&cdb10(0x2A, 0x20, 1, 1), None).unwrap_err();
        assert_eq!(
            (e.asc, e.field.unwrap().byte, e.field.unwrap().bit),
            (0x24, 1, Some(7))
        );
    }

    #[test]
    fn write_and_verify_is_write_through() {
        assert_eq!(
            run(&cdb10(0x2E, 0x12, 0, 1), None),
            Ok(Plan::Write {
                offset: 0,
                len: 512,
                fua: true
            })
        );
        assert_eq!(
            run(&cdb10(0x2E, 0x04, 0, 1), None)
                .unwrap_err()
                .field
                .unwrap()
                .byte,
            1
        );
        assert_eq!(
            run(&cdb10(0x2E, 0, 0, 1), Some(Sense::WRITE_PROTECTED)),
            Err(Sense::WRITE_PROTECTED)
        );
    }

    #[test]
    fn verify_bytchk() {
        assert_eq!(run(&cdb10(0x2F, 0, 0, 4), None), Ok(good()));
        assert_eq!(
            run(&cdb10(0x2F, 0x02, 0, 4), None),
            Ok(Plan::Compare {
                offset: 0,
                len: 2048
            })
        );
        assert_eq!(
            run(&cdb16(0x8F, 0x12, 5, 1), None),
            Ok(Plan::Compare {
                offset: 2560,
                len: 512
            })
        );
        let e = run(&cdb10(0x2F, 0x06, 0, 1), None).unwrap_err();
        assert_eq!(e.field.unwrap().bit, Some(2));
        let e = run(&cdb10(0x2F, 0x22, 0, 1), None).unwrap_err();
        assert_eq!(e.field.unwrap().bit, Some(7));
        assert_eq!(
            run(&cdb10(0x2F, 0x02, 2049, 0), None),
            Err(Sense::LBA_OUT_OF_RANGE)
        );
    }

    #[test]
    fn sync_cache_and_prefetch() {
        assert_eq!(run(&cdb10(0x35, 0x02, 0, 0), None), Ok(Plan::Flush));
        assert_eq!(
            run(&cdb16(0x91, 0, 2048, 1), None),
            Err(Sense::LBA_OUT_OF_RANGE)
        );
        let Ok(Plan::Respond(r)) = run(&cdb10(0x34, 0x02, 2047, 1), None) else {
            panic!()
        };
        assert_eq!(r.status, Status::ConditionMet);
        assert_eq!(
            run(&cdb16(0x90, 0, 0x8000_0000_0000_0000, 1), None),
            Err(Sense::LBA_OUT_OF_RANGE)
        );
        let mut id = identity();
        id.num_blocks = (1 << 20).into();
        let whole = cdb10(0x34, 0, 0, 0);
        let (info, c) = decode(&whole).unwrap();
        let Ok(Plan::Respond(r)) = plan(&id, info.command, c, None) else {
            panic!()
        };
        assert_eq!(r.status, Status::Good, "whole disk does not fit the cache");
    }
}
