//! EXTENDED COPY (LID1) parameter list parsing (SPC-4 §6.4). Only what VMware's Clone primitive
//! sends is implemented: identification CSCD descriptors (E4h) naming disks by a 16-byte NAA
//! designator, and block → block segment descriptors (02h). The copy itself runs in the
//! transport ([`super::Plan::Copy`]); this module turns the list into byte ranges.

use super::disk::DiskIdentity;
use super::sense::{Sense, SenseKey};
use super::CopySegment;

/// Limits we advertise in RECEIVE COPY RESULTS OPERATING PARAMETERS and enforce here. ESXi sends
/// two CSCDs and one segment per command; the headroom costs nothing since each segment is
/// validated and copied in turn.
pub(crate) const MAX_CSCD_DESCRIPTORS: u16 = 8;
pub(crate) const MAX_SEGMENT_DESCRIPTORS: u16 = 64;
/// Bytes of CSCD plus segment descriptors; also bounds the parameter list we accept.
pub(crate) const MAX_DESCRIPTOR_LIST_LENGTH: u32 = 4096;
/// Largest parameter list we receive: the descriptor lists plus the header, with room for
/// initiators that pad; anything larger is refused before its data is read.
pub(crate) const MAX_PARAMETER_LIST_LENGTH: u32 = 64 << 10;
/// NUMBER OF BLOCKS is 16 bits, so a segment never exceeds 65535 blocks; this is the byte limit
/// for the largest (4 KiB) block size.
pub(crate) const MAX_SEGMENT_BYTES: u32 = 0xFFFF * 4096;
/// Descriptor type codes we implement, ascending (OPERATING PARAMETERS lists them).
pub(crate) const IMPLEMENTED_DESCRIPTORS: [u8; 2] = [SEGMENT_BLOCK_TO_BLOCK, CSCD_IDENTIFICATION];

const HEADER_LEN: usize = 16;
const CSCD_LEN: usize = 32;
const CSCD_IDENTIFICATION: u8 = 0xE4;
const SEGMENT_BLOCK_TO_BLOCK: u8 = 0x02;
/// Descriptor length (bytes after the first four) of a block → block segment descriptor.
const B2B_DESCRIPTOR_LENGTH: usize = 0x18;

const TOO_MANY_CSCDS: Sense = Sense::new(SenseKey::IllegalRequest, 0x26, 0x06);
const UNSUPPORTED_CSCD_TYPE: Sense = Sense::new(SenseKey::IllegalRequest, 0x26, 0x07);
const TOO_MANY_SEGMENTS: Sense = Sense::new(SenseKey::IllegalRequest, 0x26, 0x08);
const UNSUPPORTED_SEGMENT_TYPE: Sense = Sense::new(SenseKey::IllegalRequest, 0x26, 0x09);
/// COPY ABORTED, COPY TARGET DEVICE NOT REACHABLE. Also used for segments outside a device:
/// it is what LIO (the target ESXi's XCOPY path is most exercised against) reports for any
/// failed copy, and libiscsi accepts only it, 08h/04h or 00h/00h there.
/// INVALID FIELD IN PARAMETER LIST, without a pointer: the CSCD's DISK BLOCK LENGTH is not
/// its LU's (the plan no longer knows where in the list that CSCD was).
const BLOCK_LENGTH_NOT_THE_LUS: Sense = Sense::new(SenseKey::IllegalRequest, 0x26, 0x00);
/// 5h/00h/16h: a copy with the same LIST IDENTIFIER is still running for this nexus (SPC-4).
pub(crate) const OPERATION_IN_PROGRESS: Sense = Sense::new(SenseKey::IllegalRequest, 0x00, 0x16);
/// COPY ABORTED with no further detail: the copy's task was aborted.
pub const COPY_ABORTED: Sense = Sense::new(SenseKey::CopyAborted, 0x00, 0x00);
pub(crate) const COPY_TARGET_NOT_REACHABLE: Sense = Sense::new(SenseKey::CopyAborted, 0x0D, 0x02);

/// A parsed EXTENDED COPY parameter list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CopyRequest {
    /// The LIST IDENTIFIER, None when LIST ID USAGE is 11b: then the field means nothing, no
    /// copy manager holds it and RECEIVE COPY RESULTS cannot ask about the list.
    pub list_id: Option<u8>,
    pub segments: Vec<CopySegment>,
}

/// One CSCD: which LU (by NAA) and the block length the segments are counted in.
#[derive(Debug, Clone, Copy)]
struct Cscd {
    naa: [u8; 16],
    block_len: u64,
}

fn be(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0, |v, &b| (v << 8) | u64::from(b))
}

/// Parses a whole parameter list (never empty: an empty list is answered GOOD before this).
pub(crate) fn parse(data: &[u8]) -> Result<CopyRequest, Sense> {
    let header = data
        .get(..HEADER_LEN)
        .ok_or(Sense::PARAMETER_LIST_LENGTH_ERROR)?;
    let cscd_len = be(&header[2..4]) as usize;
    let seg_len = be(&header[8..12]) as usize;
    if be(&header[12..16]) != 0 {
        // We advertise MAXIMUM INLINE DATA LENGTH 0.
        return Err(Sense::invalid_param_field(12, Some(7)));
    }
    // Checked before the counts: SPC-4 names the descriptor list length as the first limit,
    // and libiscsi expects PARAMETER LIST LENGTH ERROR for a list over it.
    if (cscd_len + seg_len) as u64 > u64::from(MAX_DESCRIPTOR_LIST_LENGTH)
        || data.len() < HEADER_LEN + cscd_len + seg_len
    {
        return Err(Sense::PARAMETER_LIST_LENGTH_ERROR);
    }
    if cscd_len / CSCD_LEN > usize::from(MAX_CSCD_DESCRIPTORS) {
        return Err(TOO_MANY_CSCDS);
    }
    let cscds = parse_cscds(&data[HEADER_LEN..HEADER_LEN + cscd_len])?;
    let seg_start = HEADER_LEN + cscd_len;
    let segments = parse_segments(&data[seg_start..seg_start + seg_len], seg_start, &cscds)?;
    Ok(CopyRequest {
        list_id: ((header[1] >> 3) & 0b11 != 0b11).then_some(header[0]),
        segments,
    })
}

fn parse_cscds(list: &[u8]) -> Result<Vec<Cscd>, Sense> {
    let mut out = Vec::new();
    for (i, d) in list.chunks(CSCD_LEN).enumerate() {
        let at = (HEADER_LEN + i * CSCD_LEN) as u16;
        if d[0] != CSCD_IDENTIFICATION {
            return Err(UNSUPPORTED_CSCD_TYPE);
        }
        if d.len() < CSCD_LEN {
            return Err(Sense::PARAMETER_LIST_LENGTH_ERROR);
        }
        // Byte 1: LU ID TYPE is ignored (SPC-4), NUL is obsolete; only disks are copy targets.
        if d[1] & 0x1F != 0 {
            return Err(UNSUPPORTED_CSCD_TYPE);
        }
        // Designation descriptor at byte 4: binary NAA (type 3), LU association, 16 bytes —
        // the form our VPD 83h reports. Anything else names no LU we could reach.
        let (code_set, assoc_type, len) = (d[4] & 0x0F, d[5] & 0x3F, d[7]);
        if code_set != 1 || assoc_type != 0x03 || len != 16 {
            return Err(COPY_TARGET_NOT_REACHABLE);
        }
        let mut naa = [0u8; 16];
        naa.copy_from_slice(&d[8..24]);
        let block_len = be(&d[29..32]);
        if block_len == 0 {
            return Err(Sense::invalid_param_field(at + 29, None));
        }
        out.push(Cscd { naa, block_len });
    }
    Ok(out)
}

fn parse_segments(list: &[u8], base: usize, cscds: &[Cscd]) -> Result<Vec<CopySegment>, Sense> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < list.len() {
        let d = &list[pos..];
        if d[0] != SEGMENT_BLOCK_TO_BLOCK {
            return Err(UNSUPPORTED_SEGMENT_TYPE);
        }
        if out.len() == usize::from(MAX_SEGMENT_DESCRIPTORS) {
            return Err(TOO_MANY_SEGMENTS);
        }
        let d = d
            .get(..4 + B2B_DESCRIPTOR_LENGTH)
            .ok_or(Sense::PARAMETER_LIST_LENGTH_ERROR)?;
        if be(&d[2..4]) as usize != B2B_DESCRIPTOR_LENGTH {
            return Err(Sense::invalid_param_field((base + pos + 2) as u16, None));
        }
        let cscd = |i: u64| cscds.get(i as usize).ok_or(COPY_TARGET_NOT_REACHABLE);
        let (src, dst) = (cscd(be(&d[4..6]))?, cscd(be(&d[6..8]))?);
        let blocks = be(&d[10..12]);
        // DC=1: NUMBER OF BLOCKS counts destination blocks, else source blocks.
        let unit = if d[1] & 0x02 != 0 {
            dst.block_len
        } else {
            src.block_len
        };
        let bytes = |lba: u64, bs: u64| lba.checked_mul(bs).ok_or(COPY_TARGET_NOT_REACHABLE);
        let len = blocks * unit;
        // The limit Operating Parameters advertises (MAXIMUM SEGMENT LENGTH).
        if len > u64::from(MAX_SEGMENT_BYTES) {
            return Err(Sense::invalid_param_field((base + pos + 10) as u16, None));
        }
        out.push(CopySegment {
            source: src.naa,
            source_offset: bytes(be(&d[12..20]), src.block_len)?,
            destination: dst.naa,
            destination_offset: bytes(be(&d[20..28]), dst.block_len)?,
            len,
            block_lens: (src.block_len, dst.block_len),
        });
        pos += d.len();
    }
    Ok(out)
}

/// Checks one segment against the LUs its designators resolved to, before anything is
/// copied: the block lengths its CSCDs claimed, whole blocks on both sides, inside both
/// devices, and a writable, non-administrative destination.
pub fn check_segment(
    seg: &CopySegment,
    src: &DiskIdentity,
    dst: &DiskIdentity,
) -> Result<(), Sense> {
    // A CSCD whose DISK BLOCK LENGTH is not its LU's would place the copy at other LBAs than
    // the host meant (a multiple of the real size passes every alignment check). Answered as
    // an error in the parameter list, found only once the LUs are known: our choice, as what
    // we could check of SPC-4 names no code for it (LIO and FreeBSD copy with the LU's real
    // block size instead).
    let (src_bs, dst_bs) = seg.block_lens;
    if src_bs != u64::from(src.block_size) || dst_bs != u64::from(dst.block_size) {
        return Err(BLOCK_LENGTH_NOT_THE_LUS);
    }
    let fits = |id: &DiskIdentity, offset: u64| {
        let bs = u64::from(id.block_size.max(1));
        !id.administrative
            && offset % bs == 0
            && seg.len % bs == 0
            && offset
                .checked_add(seg.len)
                .is_some_and(|end| end <= id.num_blocks.get().saturating_mul(bs))
    };
    if !fits(src, seg.source_offset) || !fits(dst, seg.destination_offset) {
        return Err(COPY_TARGET_NOT_REACHABLE);
    }
    if dst.read_only {
        return Err(Sense::new(SenseKey::CopyAborted, 0x27, 0x00));
    }
    Ok(())
}

/// Body of the Third-party Copy VPD page (8Fh, SPC-4 §7.8.17): the five descriptors a LID1
/// copy manager must report (its commands, parameter-list limits, descriptor types, CSCD IDs
/// and general limits), each padded to a multiple of four bytes as the page requires.
pub(crate) fn third_party_copy_page() -> Vec<u8> {
    let mut d = Vec::new();
    // Supported Commands (0001h): EXTENDED COPY 00h; RECEIVE COPY RESULTS 00h and 03h.
    let commands = [0x83, 1, 0x00, 0x84, 2, 0x00, 0x03];
    push_descriptor(
        &mut d,
        0x0001,
        &[&[commands.len() as u8][..], &commands].concat(),
    );
    // Parameter Data (0004h): the limits of a parameter list, as Operating Parameters.
    let mut p = vec![0u8; 28];
    p[4..6].copy_from_slice(&MAX_CSCD_DESCRIPTORS.to_be_bytes());
    p[6..8].copy_from_slice(&MAX_SEGMENT_DESCRIPTORS.to_be_bytes());
    p[8..12].copy_from_slice(&MAX_DESCRIPTOR_LIST_LENGTH.to_be_bytes());
    // MAXIMUM INLINE DATA LENGTH (12..16): 0.
    push_descriptor(&mut d, 0x0004, &p);
    // Supported Descriptors (0008h).
    let list = IMPLEMENTED_DESCRIPTORS;
    push_descriptor(&mut d, 0x0008, &[&[list.len() as u8][..], &list].concat());
    // Supported CSCD Descriptor IDs (000Ch): an empty list (IDs above 07FFh name no one).
    push_descriptor(&mut d, 0x000C, &[0, 0]);
    // General Copy Operations (8001h): one concurrent copy per list identifier we track.
    let mut g = vec![0u8; 32];
    g[0..4].copy_from_slice(&1u32.to_be_bytes()); // TOTAL CONCURRENT COPIES
    g[4..8].copy_from_slice(&1u32.to_be_bytes()); // MAXIMUM IDENTIFIED CONCURRENT COPIES
    g[8..12].copy_from_slice(&MAX_SEGMENT_BYTES.to_be_bytes());
    g[12] = 9; // DATA SEGMENT GRANULARITY: 512 bytes
    push_descriptor(&mut d, 0x8001, &g);
    d
}

fn push_descriptor(page: &mut Vec<u8>, kind: u16, body: &[u8]) {
    let padded = body.len().div_ceil(4) * 4;
    page.extend_from_slice(&kind.to_be_bytes());
    page.extend_from_slice(&(padded as u16).to_be_bytes());
    page.extend_from_slice(body);
    page.resize(page.len() + padded - body.len(), 0);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::scsi::disk::tests::identity;

    pub(crate) fn cscd(naa: &[u8; 16], block_len: u32) -> Vec<u8> {
        let mut d = vec![0u8; 32];
        d[0] = 0xE4;
        d[4..8].copy_from_slice(&[0x01, 0x03, 0x00, 16]);
        d[8..24].copy_from_slice(naa);
        d[29..32].copy_from_slice(&block_len.to_be_bytes()[1..]);
        d
    }

    pub(crate) fn b2b(src: u16, dst: u16, blocks: u16, src_lba: u64, dst_lba: u64) -> Vec<u8> {
        let mut d = vec![0u8; 28];
        d[0] = 0x02;
        d[3] = 0x18;
        d[4..6].copy_from_slice(&src.to_be_bytes());
        d[6..8].copy_from_slice(&dst.to_be_bytes());
        d[10..12].copy_from_slice(&blocks.to_be_bytes());
        d[12..20].copy_from_slice(&src_lba.to_be_bytes());
        d[20..28].copy_from_slice(&dst_lba.to_be_bytes());
        d
    }

    pub(crate) fn list(list_id: u8, usage: u8, cscds: &[Vec<u8>], segs: &[Vec<u8>]) -> Vec<u8> {
        let (c, s) = (cscds.concat(), segs.concat());
        let mut h = vec![0u8; 16];
        h[0] = list_id;
        h[1] = usage << 3;
        h[2..4].copy_from_slice(&(c.len() as u16).to_be_bytes());
        h[8..12].copy_from_slice(&(s.len() as u32).to_be_bytes());
        [h, c, s].concat()
    }

    fn asc(e: Sense) -> (SenseKey, u8, u8) {
        (e.key, e.asc, e.ascq)
    }

    const N1: [u8; 16] = [0x61; 16];
    const N2: [u8; 16] = [0x62; 16];

    #[test]
    fn block_to_block_becomes_byte_ranges() {
        let data = list(
            7,
            0,
            &[cscd(&N1, 512), cscd(&N2, 4096)],
            &[b2b(0, 1, 8, 10, 3)],
        );
        let r = parse(&data).unwrap();
        assert_eq!(r.list_id, Some(7));
        assert_eq!(
            r.segments,
            vec![CopySegment {
                source: N1,
                source_offset: 5120,
                destination: N2,
                destination_offset: 12288,
                len: 4096,
                block_lens: (512, 4096),
            }]
        );
        // DC=1 counts destination blocks.
        let mut seg = b2b(0, 1, 2, 0, 0);
        seg[1] = 0x02;
        let r = parse(&list(1, 3, &[cscd(&N1, 512), cscd(&N2, 4096)], &[seg])).unwrap();
        assert_eq!((r.list_id, r.segments[0].len), (None, 8192));
    }

    #[test]
    fn truncated_and_oversized_lists_are_length_errors() {
        let data = list(1, 0, &[cscd(&N1, 512)], &[b2b(0, 0, 1, 0, 1)]);
        for cut in [5, 16 + 31, data.len() - 1] {
            assert_eq!(parse(&data[..cut]), Err(Sense::PARAMETER_LIST_LENGTH_ERROR));
        }
        let cscds = vec![cscd(&N1, 512); 9];
        let segs = vec![b2b(0, 0, 1, 0, 1); 140];
        assert_eq!(
            parse(&list(1, 0, &cscds, &segs)),
            Err(Sense::PARAMETER_LIST_LENGTH_ERROR)
        );
    }

    #[test]
    fn descriptor_limits_and_types() {
        let one = [b2b(0, 0, 1, 0, 1)];
        let e = parse(&list(1, 0, &vec![cscd(&N1, 512); 9], &one)).unwrap_err();
        assert_eq!(asc(e), (SenseKey::IllegalRequest, 0x26, 0x06));
        let segs = vec![b2b(0, 0, 1, 0, 1); 65];
        let e = parse(&list(1, 0, &[cscd(&N1, 512)], &segs)).unwrap_err();
        assert_eq!(asc(e), (SenseKey::IllegalRequest, 0x26, 0x08));
        let mut fc = cscd(&N1, 512);
        fc[0] = 0xE0;
        let e = parse(&list(1, 0, &[fc], &one)).unwrap_err();
        assert_eq!(asc(e), (SenseKey::IllegalRequest, 0x26, 0x07));
        let mut s2s = b2b(0, 0, 1, 0, 1);
        s2s[0] = 0x03;
        let e = parse(&list(1, 0, &[cscd(&N1, 512)], &[s2s])).unwrap_err();
        assert_eq!(asc(e), (SenseKey::IllegalRequest, 0x26, 0x09));
    }

    #[test]
    fn a_segment_longer_than_advertised_is_refused() {
        // 65535 blocks of a claimed 16 MiB: far past MAXIMUM SEGMENT LENGTH.
        let e = parse(&list(
            1,
            0,
            &[cscd(&N1, 1 << 24)],
            &[b2b(0, 0, 0xFFFF, 0, 1)],
        ))
        .unwrap_err();
        assert_eq!(asc(e), (SenseKey::IllegalRequest, 0x26, 0x00));
        assert!(parse(&list(1, 0, &[cscd(&N1, 4096)], &[b2b(0, 0, 0xFFFF, 0, 1)])).is_ok());
    }

    #[test]
    fn reserved_lu_id_type_is_ignored_but_bad_index_aborts() {
        let mut c = cscd(&N1, 512);
        c[1] = 0xC0;
        assert!(parse(&list(1, 0, &[c], &[b2b(0, 0, 1, 0, 1)])).is_ok());
        let e = parse(&list(1, 0, &[cscd(&N1, 512)], &[b2b(0, 1, 1, 0, 1)])).unwrap_err();
        assert_eq!(asc(e), (SenseKey::CopyAborted, 0x0D, 0x02));
    }

    #[test]
    fn segment_checks_against_the_devices() {
        let id = identity(); // 2048 blocks of 512
        let seg = |src: u64, dst: u64, len: u64| CopySegment {
            source: id.naa,
            source_offset: src,
            destination: id.naa,
            destination_offset: dst,
            len,
            block_lens: (512, 512),
        };
        assert!(check_segment(&seg(0, 1024 * 512, 1024 * 512), &id, &id).is_ok());
        // A CSCD claiming 4096-byte blocks of a 512-byte LU: its LBAs would land 8x too far.
        let lied = CopySegment {
            block_lens: (512, 4096),
            ..seg(0, 100 * 4096, 8 * 4096)
        };
        let e = check_segment(&lied, &id, &id).unwrap_err();
        assert_eq!(asc(e), (SenseKey::IllegalRequest, 0x26, 0x00));
        let beyond = seg(0, 2047 * 512, 1024 * 512);
        assert_eq!(
            check_segment(&beyond, &id, &id),
            Err(COPY_TARGET_NOT_REACHABLE)
        );
        assert!(check_segment(&seg(1, 512, 512), &id, &id).is_err());
        let ro = DiskIdentity {
            read_only: true,
            ..identity()
        };
        let e = check_segment(&seg(0, 512, 512), &id, &ro).unwrap_err();
        assert_eq!(asc(e), (SenseKey::CopyAborted, 0x27, 0));
    }

    #[test]
    fn third_party_copy_vpd_bytes() {
        let p = third_party_copy_page();
        assert_eq!(&p[..12], &[0, 1, 0, 8, 7, 0x83, 1, 0, 0x84, 2, 0, 3]);
        // Parameter Data: type, length 28, then the limits at descriptor bytes 8..20.
        assert_eq!(&p[12..16], &[0, 4, 0, 28]);
        assert_eq!(&p[20..32], &[0, 8, 0, 64, 0, 0, 0x10, 0, 0, 0, 0, 0]);
        assert_eq!(&p[44..52], &[0, 8, 0, 4, 2, 0x02, 0xE4, 0]);
        assert_eq!(&p[52..60], &[0, 0x0C, 0, 4, 0, 0, 0, 0]);
        assert_eq!(&p[60..64], &[0x80, 0x01, 0, 32]);
        assert_eq!(&p[64..68], &1u32.to_be_bytes());
        assert_eq!(p[76], 9);
        assert_eq!(p.len(), 96);
        // Every descriptor's length covers it exactly, so a reader walks them all.
        let mut at = 0;
        let mut kinds = Vec::new();
        while at < p.len() {
            kinds.push(u16::from_be_bytes([p[at], p[at + 1]]));
            at += 4 + usize::from(u16::from_be_bytes([p[at + 2], p[at + 3]]));
        }
        assert_eq!((at, kinds), (p.len(), vec![1, 4, 8, 0x0C, 0x8001]));
    }
}
