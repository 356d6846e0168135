//! GET LBA STATUS (SBC-3 §5.16): the CDB becomes a [`Plan::LbaStatus`]; the backend's
//! allocation extents become LBA status descriptors.

use bytes::Bytes;

use super::cdb::{trim, Cdb};
use super::disk::DiskIdentity;
use super::rw::check_range;
use super::sense::Sense;
use super::{Plan, Response};
use crate::backend::Extent;

/// How much of the medium one command asks the backend about: enough for every descriptor
/// an initiator reads in practice, bounded so a huge LU costs one command little.
const SPAN_BYTES: u64 = 1 << 30;

/// PROVISIONING STATUS values (SBC-3 table 70).
const MAPPED: u8 = 0;
const DEALLOCATED: u8 = 1;

pub(crate) fn plan(id: &DiskIdentity, cdb: Cdb<'_>) -> Result<Plan, Sense> {
    let lba = cdb.be64(2);
    let alloc_len = cdb.be32(10);
    check_range(id, lba, 1)?;
    if alloc_len == 0 {
        return Ok(Plan::Respond(Response::good_empty()));
    }
    let bs = u64::from(id.block_size);
    let (offset, len) = (lba * bs, ((id.num_blocks.get() - lba) * bs).min(SPAN_BYTES));
    // A fully provisioned LU maps every block (SBC-4 §4.7.2), whatever holes its image file
    // has where the file system cannot punch them (LBPME=0, LBPRZ=0 say so too).
    if !id.thin {
        let all = [Extent { len, mapped: true }];
        return Ok(Plan::Respond(Response::good(response(
            id.block_size,
            offset,
            &all,
            alloc_len,
        ))));
    }
    Ok(Plan::LbaStatus {
        offset,
        len,
        alloc_len,
    })
}

/// The parameter data for `extents` starting at byte `offset`: header (PARAMETER DATA LENGTH
/// counts the bytes after itself), then one 16-byte descriptor per run of equal state, cut to
/// the allocation length. A block is deallocated only if all of it is: a file system with
/// smaller blocks than the LU's can hold data in part of one, and since LBPRZ=1 says a
/// deallocated block reads as zeros, a host may skip it when copying. So mapped extents are
/// widened to whole blocks and deallocated ones narrowed.
pub(crate) fn response(block_size: u32, offset: u64, extents: &[Extent], alloc_len: u32) -> Bytes {
    let bs = u64::from(block_size.max(1));
    // Byte runs of one state first, so that two holes meeting inside a block still free it.
    let mut spans: Vec<(u64, u64, bool)> = Vec::new();
    let mut pos = offset;
    for e in extents.iter().filter(|e| e.len > 0) {
        match spans.last_mut() {
            Some(last) if last.2 == e.mapped => last.1 += e.len,
            _ => spans.push((pos, pos + e.len, e.mapped)),
        }
        pos += e.len;
    }
    let mut runs: Vec<(u64, u64, u8)> = Vec::new();
    for (from, to, mapped) in spans {
        let (start, end, state) = if mapped {
            (from / bs, to.div_ceil(bs), MAPPED)
        } else {
            (from.div_ceil(bs), to / bs, DEALLOCATED)
        };
        // A widened mapped run may overlap a hole narrowed to nothing: it stays mapped.
        let start = runs.last().map_or(start, |l| start.max(l.1));
        match runs.last_mut() {
            _ if end <= start => {}
            Some(last) if last.2 == state => last.1 = end,
            _ => runs.push((start, end, state)),
        }
    }
    let mut data = vec![0u8; 8];
    for (mut start, end, state) in runs {
        // NUMBER OF LOGICAL BLOCKS is 32 bits: a longer run takes several descriptors.
        while start < end {
            let n = (end - start).min(u64::from(u32::MAX));
            data.extend_from_slice(&start.to_be_bytes());
            data.extend_from_slice(&(n as u32).to_be_bytes());
            data.extend_from_slice(&[state, 0, 0, 0]);
            start += n;
        }
    }
    let param_len = (data.len() - 4) as u32;
    data[0..4].copy_from_slice(&param_len.to_be_bytes());
    trim(data, alloc_len as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::disk::tests::identity;

    fn ext(len: u64, mapped: bool) -> Extent {
        Extent { len, mapped }
    }

    /// One LBA status descriptor as SBC-4 lays it out: starting LBA, number of blocks,
    /// provisioning status (0 mapped, 1 deallocated).
    fn descriptor(lba: u64, blocks: u32, status: u8) -> [u8; 16] {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&lba.to_be_bytes());
        d[8..12].copy_from_slice(&blocks.to_be_bytes());
        d[12] = status;
        d
    }

    #[test]
    fn plan_checks_the_lba() {
        let id = identity();
        let mut c = [0u8; 16];
        c[0] = 0x9E;
        c[1] = 0x12;
        c[9] = 10;
        c[13] = 24;
        assert_eq!(
            plan(&id, Cdb::new(&c)).unwrap(),
            Plan::LbaStatus {
                offset: 5120,
                len: 2038 * 512,
                alloc_len: 24
            }
        );
        c[8] = 8; // LBA 2058
        assert_eq!(
            plan(&id, Cdb::new(&c)).unwrap_err(),
            Sense::LBA_OUT_OF_RANGE
        );
    }

    #[test]
    fn a_fully_provisioned_lu_is_all_mapped() {
        let mut id = identity();
        id.thin = false;
        let mut c = [0u8; 16];
        c[0] = 0x9E;
        c[1] = 0x12;
        c[9] = 10;
        c[13] = 24;
        let Plan::Respond(r) = plan(&id, Cdb::new(&c)).unwrap() else {
            panic!("answered without asking the backend");
        };
        let want: &[u8] = &[
            0, 0, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10, 0, 0, 0x07, 0xF6,
        ];
        assert_eq!(&r.data[..20], want);
        assert_eq!(r.data[20], MAPPED);
    }

    #[test]
    fn descriptors_merge_and_round() {
        let d = response(
            512,
            1024,
            &[
                ext(4096, true),
                ext(1024, true),
                ext(4096 + 256, false),
                ext(512, true),
            ],
            255,
        );
        assert_eq!(&d[..8], &[0, 0, 0, 0x34, 0, 0, 0, 0]);
        assert_eq!(&d[8..24], &descriptor(2, 10, 0));
        assert_eq!(&d[24..40], &descriptor(12, 8, 1));
        assert_eq!(&d[40..56], &descriptor(20, 2, 0));
        assert_eq!(d.len(), 56);
        assert_eq!(
            response(512, 0, &[ext(512, false)], 8).as_ref(),
            &[0, 0, 0, 20, 0, 0, 0, 0]
        );
    }

    #[test]
    fn a_block_holding_any_data_is_mapped() {
        // 4 KiB blocks over a file system of 1 KiB blocks: 1 KiB of data, then holes.
        let d = response(4096, 0, &[ext(1024, true), ext(3072 + 8192, false)], 255);
        assert_eq!(&d[..4], &[0, 0, 0, 36]);
        assert_eq!(&d[8..24], &descriptor(0, 1, 0));
        assert_eq!(&d[24..40], &descriptor(1, 2, 1));
        // Data in the middle of block 1 only: block 1 is mapped, blocks 0 and 2 are not.
        let d = response(
            4096,
            0,
            &[ext(5120, false), ext(1024, true), ext(6144, false)],
            255,
        );
        assert_eq!(&d[..4], &[0, 0, 0, 52]);
        assert_eq!(&d[8..24], &descriptor(0, 1, 1));
        assert_eq!(&d[24..40], &descriptor(1, 1, 0));
        assert_eq!(&d[40..56], &descriptor(2, 1, 1));
        // Two holes meeting inside a block free it; a hole smaller than a block frees nothing.
        let d = response(4096, 0, &[ext(2048, false), ext(2048, false)], 255);
        assert_eq!(&d[8..24], &descriptor(0, 1, 1));
        let d = response(
            4096,
            0,
            &[ext(4096, true), ext(1024, false), ext(3072, true)],
            255,
        );
        assert_eq!(&d[..4], &[0, 0, 0, 20]);
        assert_eq!(&d[8..24], &descriptor(0, 2, 0));
    }

    #[test]
    fn long_runs_split() {
        let d = response(512, 0, &[ext((1u64 << 32) * 512, false)], 1000);
        assert_eq!(&d[..4], &[0, 0, 0, 36]);
        assert_eq!(&d[16..20], &[0xFF; 4]);
        assert_eq!(&d[24..32], &0xFFFF_FFFFu64.to_be_bytes());
        assert_eq!(&d[32..36], &[0, 0, 0, 1]);
    }
}
