//! Mode parameters (SPC-4 §7.5, SBC-3 §6.5): MODE SENSE(6/10) and MODE SELECT(6/10) over the
//! Caching, Control and Informational Exceptions Control pages.
//!
//! Changeable fields: Control D_SENSE (sense format) and SWP (software write protect). WCE is
//! reported as 1 and is not changeable: writes are cached by the host page cache until
//! SYNCHRONIZE CACHE or FUA, and the transport has no write-through mode to switch to, so
//! accepting WCE=0 would be a lie about durability. Nothing can be saved (PS=0, SP rejected).

use bytes::Bytes;

use super::cdb::{trim, Cdb};
use super::disk::DiskIdentity;
use super::sense::Sense;

pub(crate) const CACHING: u8 = 0x08;
pub(crate) const CONTROL: u8 = 0x0A;
pub(crate) const INFORMATIONAL_EXCEPTIONS: u8 = 0x1C;
const ALL_PAGES: u8 = 0x3F;
const ALL_SUBPAGES: u8 = 0xFF;

/// Device-specific parameter bits in the mode parameter header (SBC-3 §6.5.1).
const WP: u8 = 0x80;
const DPOFUA: u8 = 0x10;

const D_SENSE_BYTE: usize = 2;
const D_SENSE: u8 = 0x04;
const SWP_BYTE: usize = 4;
const SWP: u8 = 0x08;

const DEFAULT_CACHING: [u8; 20] = [
    CACHING, 0x12, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];
const CHANGEABLE_CACHING: [u8; 20] = [
    CACHING, 0x12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];
// TST 001b (a task set per I_T nexus: see `task_set.rs`), GLTSD=1 (no log pages to save),
// QUEUE ALGORITHM MODIFIER 1 (SIMPLE tasks are reordered freely: the backend does not order
// them), BUSY TIMEOUT PERIOD FFFFh (unlimited).
const DEFAULT_CONTROL: [u8; 12] = [CONTROL, 0x0A, 0x22, 0x10, 0, 0, 0, 0, 0xFF, 0xFF, 0, 0];
const CHANGEABLE_CONTROL: [u8; 12] = [CONTROL, 0x0A, D_SENSE, 0, SWP, 0, 0, 0, 0, 0, 0, 0];
// DEXCPT=1: no informational exception reporting (there is nothing to predict failures of).
const DEFAULT_IEC: [u8; 12] = [
    INFORMATIONAL_EXCEPTIONS,
    0x0A,
    0x08,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
];
const CHANGEABLE_IEC: [u8; 12] = [INFORMATIONAL_EXCEPTIONS, 0x0A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// The PAGE CONTROL field of MODE SENSE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PageControl {
    Current,
    Changeable,
    Default,
}

/// Current values of every supported page, stored as their wire bytes so that MODE SELECT
/// can be validated bytewise against the changeable masks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ModePages {
    caching: [u8; 20],
    control: [u8; 12],
    iec: [u8; 12],
}

impl Default for ModePages {
    fn default() -> ModePages {
        ModePages {
            caching: DEFAULT_CACHING,
            control: DEFAULT_CONTROL,
            iec: DEFAULT_IEC,
        }
    }
}

impl ModePages {
    pub(crate) fn d_sense(&self) -> bool {
        self.control[D_SENSE_BYTE] & D_SENSE != 0
    }

    pub(crate) fn swp(&self) -> bool {
        self.control[SWP_BYTE] & SWP != 0
    }

    fn page_mut(&mut self, code: u8) -> Option<&mut [u8]> {
        match code {
            CACHING => Some(&mut self.caching),
            CONTROL => Some(&mut self.control),
            INFORMATIONAL_EXCEPTIONS => Some(&mut self.iec),
            _ => None,
        }
    }

    fn page(&self, code: u8, pc: PageControl) -> Option<&[u8]> {
        Some(match (code, pc) {
            (CACHING, PageControl::Current) => &self.caching,
            (CACHING, PageControl::Changeable) => &CHANGEABLE_CACHING,
            (CACHING, PageControl::Default) => &DEFAULT_CACHING,
            (CONTROL, PageControl::Current) => &self.control,
            (CONTROL, PageControl::Changeable) => &CHANGEABLE_CONTROL,
            (CONTROL, PageControl::Default) => &DEFAULT_CONTROL,
            (INFORMATIONAL_EXCEPTIONS, PageControl::Current) => &self.iec,
            (INFORMATIONAL_EXCEPTIONS, PageControl::Changeable) => &CHANGEABLE_IEC,
            (INFORMATIONAL_EXCEPTIONS, PageControl::Default) => &DEFAULT_IEC,
            _ => return None,
        })
    }

    fn changeable(code: u8) -> Option<&'static [u8]> {
        match code {
            CACHING => Some(&CHANGEABLE_CACHING),
            CONTROL => Some(&CHANGEABLE_CONTROL),
            INFORMATIONAL_EXCEPTIONS => Some(&CHANGEABLE_IEC),
            _ => None,
        }
    }
}

const PAGE_ORDER: [u8; 3] = [CACHING, CONTROL, INFORMATIONAL_EXCEPTIONS];

/// MODE SENSE(6) when `ten` is false, MODE SENSE(10) otherwise.
pub(crate) fn mode_sense(
    id: &DiskIdentity,
    pages: &ModePages,
    write_protected: bool,
    cdb: Cdb<'_>,
    ten: bool,
) -> Result<Bytes, Sense> {
    let dbd = cdb.bit(1, 3);
    let llbaa = ten && cdb.bit(1, 4);
    let pc = match cdb.u8(2) >> 6 {
        0 => PageControl::Current,
        1 => PageControl::Changeable,
        2 => PageControl::Default,
        _ => return Err(Sense::SAVING_PARAMETERS_NOT_SUPPORTED),
    };
    let code = cdb.u8(2) & 0x3F;
    let subpage = cdb.u8(3);
    let alloc = if ten {
        usize::from(cdb.be16(7))
    } else {
        usize::from(cdb.u8(4))
    };

    // No page has subpages, so subpage 00h and "all subpages" select the same thing.
    if subpage != 0 && subpage != ALL_SUBPAGES {
        return Err(Sense::invalid_cdb_field(3, Some(7)));
    }
    let one = [code];
    let selected: &[u8] = if code == ALL_PAGES {
        &PAGE_ORDER
    } else if PAGE_ORDER.contains(&code) {
        &one
    } else {
        return Err(Sense::invalid_cdb_field(2, Some(5)));
    };

    let header_len = if ten { 8 } else { 4 };
    let mut d = vec![0u8; header_len];
    let device_specific = DPOFUA | if write_protected { WP } else { 0 };
    if !dbd {
        let changeable = pc == PageControl::Changeable;
        if llbaa {
            let mut bd = [0u8; 16];
            if !changeable {
                bd[0..8].copy_from_slice(&id.num_blocks.get().to_be_bytes());
                bd[12..16].copy_from_slice(&id.block_size.to_be_bytes());
            }
            d.extend_from_slice(&bd);
        } else {
            let mut bd = [0u8; 8];
            if !changeable {
                let n = u32::try_from(id.num_blocks.get()).unwrap_or(u32::MAX);
                bd[0..4].copy_from_slice(&n.to_be_bytes());
                bd[5..8].copy_from_slice(&id.block_size.to_be_bytes()[1..4]);
            }
            d.extend_from_slice(&bd);
        }
    }
    let bd_len = d.len() - header_len;
    for &c in selected {
        if let Some(p) = pages.page(c, pc) {
            d.extend_from_slice(p);
        }
    }
    if ten {
        let len = (d.len() - 2) as u16;
        d[0..2].copy_from_slice(&len.to_be_bytes());
        d[3] = device_specific;
        d[4] = u8::from(llbaa && bd_len > 0);
        d[6..8].copy_from_slice(&(bd_len as u16).to_be_bytes());
    } else {
        d[0] = (d.len() - 1) as u8;
        d[2] = device_specific;
        d[3] = bd_len as u8;
    }
    Ok(trim(d, alloc))
}

/// Checks a MODE SELECT CDB and returns the PARAMETER LIST LENGTH to collect.
pub(crate) fn mode_select_length(cdb: Cdb<'_>, ten: bool) -> Result<u32, Sense> {
    let len = if ten {
        u32::from(cdb.be16(7))
    } else {
        u32::from(cdb.u8(4))
    };
    if cdb.bit(1, 0) {
        // SP: there is no non-volatile place to save pages to.
        return Err(Sense::invalid_cdb_field(1, Some(0)));
    }
    if len > 0 && !cdb.bit(1, 4) {
        // PF=0 means vendor-specific (SCSI-1) page formats, which we do not have.
        return Err(Sense::invalid_cdb_field(1, Some(4)));
    }
    Ok(len)
}

/// Validates a MODE SELECT parameter list against the changeable masks and returns the pages
/// it would produce. Nothing is applied unless the whole list is valid.
pub(crate) fn mode_select(
    id: &DiskIdentity,
    current: &ModePages,
    data: &[u8],
    ten: bool,
) -> Result<ModePages, Sense> {
    let header_len = if ten { 8 } else { 4 };
    if data.len() < header_len {
        return Err(Sense::PARAMETER_LIST_LENGTH_ERROR);
    }
    let medium_type_at = if ten { 2 } else { 1 };
    if data[medium_type_at] != 0 {
        return Err(Sense::invalid_param_field(medium_type_at as u16, Some(7)));
    }
    // The device-specific parameter (WP, DPOFUA) is ignored by MODE SELECT per SBC-3.
    let (bd_len, bd_len_at, long_lba) = if ten {
        (
            usize::from(u16::from_be_bytes([data[6], data[7]])),
            6u16,
            data[4] & 1 != 0,
        )
    } else {
        (usize::from(data[3]), 3u16, false)
    };
    let expected_bd = if long_lba { 16 } else { 8 };
    if bd_len != 0 && bd_len != expected_bd {
        return Err(Sense::invalid_param_field(bd_len_at, None));
    }
    let Some(bd) = data.get(header_len..header_len + bd_len) else {
        return Err(Sense::PARAMETER_LIST_LENGTH_ERROR);
    };
    if !bd.is_empty() {
        check_block_descriptor(id, bd, long_lba, header_len)?;
    }

    let mut next = current.clone();
    let mut off = header_len + bd_len;
    while off < data.len() {
        let at = off as u16;
        let (Some(&b0), Some(&b1)) = (data.get(off), data.get(off + 1)) else {
            return Err(Sense::PARAMETER_LIST_LENGTH_ERROR);
        };
        if b0 & 0x40 != 0 {
            // SPF: no supported page has subpages.
            return Err(Sense::invalid_param_field(at, Some(6)));
        }
        let code = b0 & 0x3F;
        let (Some(page), Some(mask)) = (next.page_mut(code), ModePages::changeable(code)) else {
            return Err(Sense::invalid_param_field(at, Some(5)));
        };
        let total = 2 + usize::from(b1);
        if total != page.len() {
            return Err(Sense::invalid_param_field(at + 1, Some(7)));
        }
        let Some(new) = data.get(off..off + total) else {
            return Err(Sense::PARAMETER_LIST_LENGTH_ERROR);
        };
        // Byte 0 carries PS, which is reserved in MODE SELECT; tolerated because initiators
        // commonly echo back what MODE SENSE returned.
        for i in 2..total {
            let bad = (new[i] ^ page[i]) & !mask[i];
            if bad != 0 {
                let bit = 7 - bad.leading_zeros() as u8;
                return Err(Sense::invalid_param_field(at + i as u16, Some(bit)));
            }
            page[i] = (page[i] & !mask[i]) | (new[i] & mask[i]);
        }
        off += total;
    }
    Ok(next)
}

/// A block descriptor may only restate the geometry (or leave NUMBER OF BLOCKS zero); the
/// capacity and block size of a VVol are set by the array, never by an initiator.
fn check_block_descriptor(
    id: &DiskIdentity,
    bd: &[u8],
    long_lba: bool,
    base: usize,
) -> Result<(), Sense> {
    let (blocks, block_len, len_at) = if long_lba {
        let blocks = bd[0..8].iter().fold(0u64, |a, &b| (a << 8) | u64::from(b));
        let len = u32::from_be_bytes([bd[12], bd[13], bd[14], bd[15]]);
        (blocks, len, 12)
    } else {
        let blocks = u64::from(u32::from_be_bytes([bd[0], bd[1], bd[2], bd[3]]));
        (blocks, u32::from_be_bytes([0, bd[5], bd[6], bd[7]]), 5)
    };
    let reported = if long_lba {
        id.num_blocks.get()
    } else {
        id.num_blocks.get().min(u64::from(u32::MAX))
    };
    if blocks != 0 && blocks != reported {
        return Err(Sense::invalid_param_field(base as u16, Some(7)));
    }
    if block_len != id.block_size {
        return Err(Sense::invalid_param_field((base + len_at) as u16, Some(7)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::disk::tests::identity;
    use crate::scsi::sense::SenseKey;

    fn sense6(dbd: bool, pc: u8, page: u8, subpage: u8, alloc: u8) -> [u8; 6] {
        [
            0x1A,
            if dbd { 0x08 } else { 0 },
            (pc << 6) | page,
            subpage,
            alloc,
            0,
        ]
    }

    fn ms6(pages: &ModePages, cdb: [u8; 6]) -> Result<Bytes, Sense> {
        mode_sense(&identity(), pages, false, Cdb::new(&cdb), false)
    }

    #[test]
    fn all_pages_with_block_descriptor() {
        let d = ms6(&ModePages::default(), sense6(false, 0, 0x3F, 0, 255)).unwrap();
        assert_eq!(d.len(), 4 + 8 + 20 + 12 + 12);
        assert_eq!(&d[..4], &[55, 0, DPOFUA, 8]);
        // 2048 blocks of 512 bytes.
        assert_eq!(&d[4..12], &[0, 0, 0x08, 0, 0, 0, 0x02, 0]);
        assert_eq!(&d[12..15], &[0x08, 0x12, 0x04]);
        assert_eq!(&d[32..36], &[0x0A, 0x0A, 0x22, 0x10]);
        assert_eq!(&d[44..47], &[0x1C, 0x0A, 0x08]);
    }

    #[test]
    fn allocation_length_trims() {
        let d = ms6(&ModePages::default(), sense6(false, 0, 0x3F, 0, 4)).unwrap();
        assert_eq!(d.as_ref(), &[55, 0, DPOFUA, 8]);
    }

    #[test]
    fn changeable_control_page_shows_d_sense_and_swp() {
        let d = ms6(&ModePages::default(), sense6(true, 1, CONTROL, 0, 255)).unwrap();
        assert_eq!(
            d.as_ref(),
            &[15, 0, DPOFUA, 0, 0x0A, 0x0A, 0x04, 0, 0x08, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn saved_values_are_not_supported() {
        let e = ms6(&ModePages::default(), sense6(true, 3, CONTROL, 0, 255)).unwrap_err();
        assert_eq!((e.key, e.asc, e.ascq), (SenseKey::IllegalRequest, 0x39, 0));
    }

    #[test]
    fn unknown_page_and_subpage() {
        let e = ms6(&ModePages::default(), sense6(true, 0, 0x19, 0, 255)).unwrap_err();
        assert_eq!(e.field.unwrap().byte, 2);
        let e = ms6(&ModePages::default(), sense6(true, 0, CONTROL, 1, 255)).unwrap_err();
        assert_eq!(e.field.unwrap().byte, 3);
        assert!(ms6(&ModePages::default(), sense6(true, 0, 0x3F, 0xFF, 255)).is_ok());
    }

    #[test]
    fn mode_sense_10_long_lba() {
        let cdb = [0x5A, 0x10, 0x08, 0, 0, 0, 0, 0x01, 0x00, 0];
        let d = mode_sense(
            &identity(),
            &ModePages::default(),
            true,
            Cdb::new(&cdb),
            true,
        )
        .unwrap();
        assert_eq!(&d[..8], &[0, 6 + 16 + 20, 0, WP | DPOFUA, 1, 0, 0, 16]);
        assert_eq!(&d[8..16], &2048u64.to_be_bytes());
        assert_eq!(&d[20..24], &512u32.to_be_bytes());
    }

    fn select6_control(byte2: u8, byte4: u8) -> Vec<u8> {
        let mut d = vec![0, 0, 0, 0];
        let mut page = DEFAULT_CONTROL;
        page[2] = byte2;
        page[4] = byte4;
        d.extend_from_slice(&page);
        d
    }

    #[test]
    fn select_sets_swp_and_d_sense() {
        let id = identity();
        let p = mode_select(
            &id,
            &ModePages::default(),
            &select6_control(0x26, 0x08),
            false,
        )
        .unwrap();
        assert!(p.swp() && p.d_sense());
        let p = mode_select(&id, &p, &select6_control(0x22, 0), false).unwrap();
        assert_eq!(p, ModePages::default());
    }

    #[test]
    fn select_rejects_unchangeable_bits_with_pointer() {
        let e = mode_select(
            &identity(),
            &ModePages::default(),
            &select6_control(0x23, 0),
            false,
        )
        .unwrap_err();
        assert_eq!((e.key, e.asc), (SenseKey::IllegalRequest, 0x26));
        let f = e.field.unwrap();
        assert_eq!((f.in_cdb, f.byte, f.bit), (false, 6, Some(0)));
    }

    #[test]
    fn select_rejects_wce_off_and_truncation() {
        let mut d = vec![0, 0, 0, 0];
        let mut page = DEFAULT_CACHING;
        page[2] = 0;
        d.extend_from_slice(&page);
        let e = mode_select(&identity(), &ModePages::default(), &d, false).unwrap_err();
        assert_eq!(e.field.unwrap().byte, 6);
        let e = mode_select(&identity(), &ModePages::default(), &d[..10], false).unwrap_err();
        assert_eq!(e, Sense::PARAMETER_LIST_LENGTH_ERROR);
        let e = mode_select(&identity(), &ModePages::default(), &[0, 0], false).unwrap_err();
        assert_eq!(e, Sense::PARAMETER_LIST_LENGTH_ERROR);
    }

    #[test]
    fn select_block_descriptor_must_match_geometry() {
        let id = identity();
        let mut d = vec![0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x02, 0x00];
        assert!(mode_select(&id, &ModePages::default(), &d, false).is_ok());
        d[10] = 0x10;
        let e = mode_select(&id, &ModePages::default(), &d, false).unwrap_err();
        assert_eq!(e.field.unwrap().byte, 9);
    }

    #[test]
    fn select_cdb_checks() {
        assert_eq!(
            mode_select_length(Cdb::new(&[0x15, 0x10, 0, 0, 24, 0]), false),
            Ok(24)
        );
        let e = mode_select_length(Cdb::new(&[0x15, 0x11, 0, 0, 24, 0]), false).unwrap_err();
        assert_eq!(e.field.unwrap().bit, Some(0));
        let e = mode_select_length(Cdb::new(&[0x15, 0x00, 0, 0, 24, 0]), false).unwrap_err();
        assert_eq!(e.field.unwrap().bit, Some(4));
        assert_eq!(
            mode_select_length(Cdb::new(&[0x15, 0, 0, 0, 0, 0]), false),
            Ok(0)
        );
    }
}
