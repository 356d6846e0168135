//! UNMAP (SBC-3 §5.28): the CDB asks for the parameter list, whose block descriptors become
//! the byte ranges of a [`Plan::Unmap`].

use super::cdb::Cdb;
use super::disk::DiskIdentity;
use super::provisioning::{max_unmap_blocks, MAX_UNMAP_DESCRIPTORS};
use super::sense::Sense;
use super::{Plan, Response};

const HEADER: usize = 8;
const DESCRIPTOR: usize = 16;

/// Plans the CDB: fetch the parameter list, or finish now.
pub(crate) fn plan(
    id: &DiskIdentity,
    cdb: Cdb<'_>,
    write_protect: Option<Sense>,
) -> Result<Plan, Sense> {
    // A fully provisioned LU never gets here (`DiskIdentity::offers`).
    debug_assert!(id.thin, "UNMAP planned on a fully provisioned LU");
    if let Some(sense) = write_protect {
        return Err(sense);
    }
    match cdb.be16(7) {
        // SBC-3: zero is not an error; nothing is transferred or unmapped.
        0 => Ok(Plan::Respond(Response::good_empty())),
        // Shorter than the header: the list cannot even say how long it is.
        n if usize::from(n) < HEADER => Err(Sense::PARAMETER_LIST_LENGTH_ERROR),
        n => Ok(Plan::Parameters { len: u32::from(n) }),
    }
}

/// Parses the parameter list into byte ranges, validating every descriptor before anything
/// is unmapped (a bad descriptor must not leave the earlier ones done).
pub(crate) fn parse(id: &DiskIdentity, data: &[u8]) -> Result<Plan, Sense> {
    if data.len() < HEADER {
        return Err(Sense::PARAMETER_LIST_LENGTH_ERROR);
    }
    let descriptors_len = usize::from(u16::from_be_bytes([data[2], data[3]]));
    if HEADER + descriptors_len > data.len() {
        return Err(Sense::PARAMETER_LIST_LENGTH_ERROR);
    }
    // A trailing partial descriptor is ignored (SBC-3: the length "should be" a multiple of
    // 16).
    let count = descriptors_len / DESCRIPTOR;
    if count > MAX_UNMAP_DESCRIPTORS as usize {
        return Err(Sense::invalid_param_field(2, None));
    }
    let bs = u64::from(id.block_size);
    let mut total = 0u64;
    let mut ranges = Vec::with_capacity(count);
    for i in 0..count {
        let at = HEADER + i * DESCRIPTOR;
        let d = &data[at..at + DESCRIPTOR];
        let lba = u64::from_be_bytes(d[0..8].try_into().unwrap_or_default());
        let blocks = u64::from(u32::from_be_bytes(d[8..12].try_into().unwrap_or_default()));
        // An empty descriptor may sit right at the end of the medium (libiscsi
        // Unmap.ZeroBlocks); any block it would touch must exist.
        match lba.checked_add(blocks) {
            Some(end) if end <= id.num_blocks.get() => {}
            _ => return Err(Sense::LBA_OUT_OF_RANGE),
        }
        total += blocks;
        if total > u64::from(max_unmap_blocks(id)) {
            return Err(Sense::invalid_param_field((at + 8) as u16, None));
        }
        if blocks > 0 {
            ranges.push((lba * bs, blocks * bs));
        }
    }
    if ranges.is_empty() {
        return Ok(Plan::Respond(Response::good_empty()));
    }
    Ok(Plan::Unmap { ranges })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::disk::tests::identity;

    fn list(descs: &[(u64, u32)]) -> Vec<u8> {
        let mut d = vec![0u8; HEADER];
        let n = (descs.len() * DESCRIPTOR) as u16;
        d[0..2].copy_from_slice(&(n + 6).to_be_bytes());
        d[2..4].copy_from_slice(&n.to_be_bytes());
        for &(lba, blocks) in descs {
            d.extend_from_slice(&lba.to_be_bytes());
            d.extend_from_slice(&blocks.to_be_bytes());
            d.extend_from_slice(&[0; 4]);
        }
        d
    }

    #[test]
    fn cdb_lengths() {
        let id = identity();
        let c = |n: u16| [0x42, 0, 0, 0, 0, 0, 0, (n >> 8) as u8, n as u8, 0];
        assert_eq!(
            plan(&id, Cdb::new(&c(24)), None).unwrap(),
            Plan::Parameters { len: 24 }
        );
        assert!(matches!(
            plan(&id, Cdb::new(&c(0)), None).unwrap(),
            Plan::Respond(_)
        ));
        let e = plan(&id, Cdb::new(&c(7)), None).unwrap_err();
        assert_eq!((e.asc, e.ascq), (0x1A, 0));
        let wp = Some(Sense::WRITE_PROTECTED);
        assert_eq!(
            plan(&id, Cdb::new(&c(24)), wp).unwrap_err(),
            Sense::WRITE_PROTECTED
        );
    }

    #[test]
    fn descriptors_become_byte_ranges() {
        let id = identity();
        assert_eq!(
            parse(&id, &list(&[(1, 2), (100, 0), (2040, 8)])).unwrap(),
            Plan::Unmap {
                ranges: vec![(512, 1024), (2040 * 512, 4096)]
            }
        );
        assert!(matches!(
            parse(&id, &list(&[(2048, 0)])).unwrap(),
            Plan::Respond(_)
        ));
        assert!(matches!(parse(&id, &list(&[])).unwrap(), Plan::Respond(_)));
    }

    #[test]
    fn bad_lists() {
        let id = identity();
        assert_eq!(
            parse(&id, &list(&[(2040, 9)])).unwrap_err(),
            Sense::LBA_OUT_OF_RANGE
        );
        assert_eq!(
            parse(&id, &list(&[(u64::MAX, 2)])).unwrap_err(),
            Sense::LBA_OUT_OF_RANGE
        );
        let mut short = list(&[(0, 1)]);
        short.truncate(20);
        assert_eq!(parse(&id, &short).unwrap_err().asc, 0x1A);
        assert_eq!(parse(&id, &[0; 4]).unwrap_err().asc, 0x1A);
        let many: Vec<(u64, u32)> = (0..257).map(|i| (i, 1)).collect();
        let e = parse(&id, &list(&many)).unwrap_err();
        assert_eq!((e.asc, e.field.unwrap().byte), (0x26, 2));
        let big = DiskIdentity {
            num_blocks: (1 << 32).into(),
            ..identity()
        };
        let e = parse(&big, &list(&[(0, 1 << 20), (1 << 22, 1)])).unwrap_err();
        assert_eq!((e.asc, e.field.unwrap().byte), (0x26, 8 + 16 + 8));
    }
}
