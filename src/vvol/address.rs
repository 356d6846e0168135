//! Two-level LUN addressing for a logical unit conglomerate: a Protocol Endpoint (PE) in the
//! first level, a bound VVol's secondary id in the subsidiary element.
//!
//! | Bytes | Content | Encoding |
//! |---|---|---|
//! | 0..2 | administrative element: the PE (or an ordinary LU) | AM 00b, read as 14-bit "simple" (`0x3FFF & be16`), or AM 01b flat |
//! | 2..8 | subsidiary element: all zero = the first-level LU itself | `E2` + 40-bit id big-endian (long extended flat space) |
//!
//! Worked example (reference §1.7): PE 5, secondary 0x1234 → `00 05 E2 00 00 00 12 34`, VASA
//! string `"0xe20000001234"`. Only the `E2` form is a secondary we issue; every other
//! subsidiary element is [`LunAddress::Unsupported`] and is never resolved to the first level
//! (tgt and SPDK do that, and it executes VVol I/O on the PE).

use std::fmt;
use std::str::FromStr;

use crate::scsi::Lun;

/// Largest first-level LUN number: 14 bits in both AM 00b "simple" and AM 01b flat addressing.
pub const MAX_FIRST_LEVEL: u16 = 0x3FFF;

/// First byte of a long extended flat space element: AM 11b (extended), LENGTH 10b (6 bytes),
/// EXTENDED ADDRESS METHOD 2h (extended flat space).
const LONG_EXTENDED_FLAT: u8 = 0xE2;

/// The identity of a bound VVol under one PE: a non-zero 40-bit value. Zero is excluded
/// because an all-zero subsidiary element addresses the PE itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecondaryId(u64);

impl SecondaryId {
    /// Largest id: the element holds 40 bits.
    pub const MAX: u64 = (1 << 40) - 1;

    /// `None` for 0 and for values above [`SecondaryId::MAX`].
    pub const fn new(value: u64) -> Option<SecondaryId> {
        if value == 0 || value > Self::MAX {
            None
        } else {
            Some(SecondaryId(value))
        }
    }

    pub const fn get(self) -> u64 {
        self.0
    }

    /// The 6-byte subsidiary element `E2 xx xx xx xx xx`.
    pub const fn to_element(self) -> [u8; 6] {
        let b = self.0.to_be_bytes();
        [LONG_EXTENDED_FLAT, b[3], b[4], b[5], b[6], b[7]]
    }

    /// Decodes a subsidiary element; `None` unless it is the `E2` form with a non-zero id.
    pub fn from_element(element: [u8; 6]) -> Option<SecondaryId> {
        if element[0] != LONG_EXTENDED_FLAT {
            return None;
        }
        let mut b = [0u8; 8];
        b[3..].copy_from_slice(&element[1..]);
        SecondaryId::new(u64::from_be_bytes(b))
    }

    /// The VASA `vvolSecondaryId` form: `"0x"` + 12 lowercase hex digits of the element.
    pub fn to_vasa(self) -> String {
        self.to_string()
    }

    /// Parses the VASA form. Accepts `0x`/`0X` and hex digits of either case (a string that
    /// went through another tool may have been upper-cased), nothing else: exactly 12 digits
    /// that spell an `E2` element with a non-zero id.
    pub fn parse_vasa(s: &str) -> Option<SecondaryId> {
        let digits = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"))?;
        if digits.len() != 12 || !digits.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        let value = u64::from_str_radix(digits, 16).ok()?;
        let b = value.to_be_bytes();
        let mut element = [0u8; 6];
        element.copy_from_slice(&b[2..]);
        SecondaryId::from_element(element)
    }
}

impl fmt::Display for SecondaryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x")?;
        for b in self.to_element() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Error of [`SecondaryId::from_str`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a secondary id of the form 0xe2 + 10 hex digits, non-zero")]
pub struct ParseSecondaryIdError(pub String);

impl FromStr for SecondaryId {
    type Err = ParseSecondaryIdError;

    fn from_str(s: &str) -> Result<SecondaryId, ParseSecondaryIdError> {
        SecondaryId::parse_vasa(s).ok_or_else(|| ParseSecondaryIdError(s.to_string()))
    }
}

/// Serialized as the VASA string, the form operators and the HTTP API see.
impl serde::Serialize for SecondaryId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SecondaryId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SecondaryId, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What an 8-byte LUN addresses, decoded from all 8 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LunAddress {
    /// A first-level LU (PE or ordinary LU): bytes 2..8 are zero.
    Single(u16),
    /// A subsidiary LU: PE number and the `E2` secondary id.
    Secondary { pe: u16, id: SecondaryId },
    /// The REPORT LUNS well-known LUN (C101h).
    ReportLunsWlun,
    /// Anything else; answered as LOGICAL UNIT NOT SUPPORTED, never aliased to level 1.
    Unsupported,
}

impl LunAddress {
    pub fn decode(lun: Lun) -> LunAddress {
        if lun == Lun::REPORT_LUNS_WLUN {
            return LunAddress::ReportLunsWlun;
        }
        let b = lun.to_bytes();
        // AM 00b is read as a 14-bit "simple" element, as sg_luns does for conglomerates
        // (reference §1.6); a non-zero bus id therefore just means a number above 255.
        let first = match b[0] >> 6 {
            0b00 | 0b01 => (u16::from(b[0] & 0x3F) << 8) | u16::from(b[1]),
            _ => return LunAddress::Unsupported,
        };
        let sub = lun.subsidiary();
        if sub == [0; 6] {
            return LunAddress::Single(first);
        }
        match SecondaryId::from_element(sub) {
            Some(id) => LunAddress::Secondary { pe: first, id },
            None => LunAddress::Unsupported,
        }
    }
}

/// The first-level LUN of a PE: AM 00b, peripheral for 0..=255 and 14-bit "simple" above,
/// because ESXi 6.5 takes LUNs above 255 only with AM 00b and conglomerate decoders read AM
/// 00b as 14 bits (reference §2.3). Bits above 14 are dropped; PE numbers are validated to be
/// at most [`MAX_FIRST_LEVEL`] before they get here.
pub const fn pe_lun(pe: u16) -> Lun {
    let [hi, lo] = (pe & MAX_FIRST_LEVEL).to_be_bytes();
    Lun::from_bytes([hi, lo, 0, 0, 0, 0, 0, 0])
}

/// The LUN of secondary `id` under PE `pe`: `pe_lun(pe)` bytes 0..2 ‖ the `E2` element.
pub const fn secondary_lun(pe: u16, id: SecondaryId) -> Lun {
    let p = pe_lun(pe).to_bytes();
    let e = id.to_element();
    Lun::from_bytes([p[0], p[1], e[0], e[1], e[2], e[3], e[4], e[5]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(v: u64) -> SecondaryId {
        SecondaryId::new(v).unwrap()
    }

    #[test]
    fn secondary_id_range() {
        assert_eq!(SecondaryId::new(0), None);
        assert_eq!(SecondaryId::new(1).map(SecondaryId::get), Some(1));
        assert_eq!(
            SecondaryId::new(SecondaryId::MAX).unwrap().get(),
            0xFF_FFFF_FFFF
        );
        assert_eq!(SecondaryId::new(SecondaryId::MAX + 1), None);
        assert_eq!(SecondaryId::new(u64::MAX), None);
    }

    #[test]
    fn worked_example_pe5_id_1234() {
        let s = id(0x1234);
        assert_eq!(s.to_element(), [0xE2, 0, 0, 0, 0x12, 0x34]);
        assert_eq!(s.to_vasa(), "0xe20000001234");
        let lun = secondary_lun(5, s);
        assert_eq!(lun.to_bytes(), [0x00, 0x05, 0xE2, 0, 0, 0, 0x12, 0x34]);
        assert_eq!(
            LunAddress::decode(lun),
            LunAddress::Secondary { pe: 5, id: s }
        );
        assert_eq!(
            LunAddress::decode(Lun::from_bytes([0, 5, 0, 0, 0, 0, 0, 0])),
            LunAddress::Single(5)
        );
    }

    #[test]
    fn element_round_trip_and_rejections() {
        for v in [1, 0x1234, 0xA6, SecondaryId::MAX] {
            assert_eq!(SecondaryId::from_element(id(v).to_element()), Some(id(v)));
        }
        assert_eq!(SecondaryId::from_element([0xE2, 0, 0, 0, 0, 0]), None);
        // 2-byte simple element and extended flat (4-byte) forms are not ours.
        assert_eq!(SecondaryId::from_element([0x12, 0x34, 0, 0, 0, 0]), None);
        assert_eq!(SecondaryId::from_element([0xD2, 0, 0x12, 0x34, 0, 0]), None);
    }

    #[test]
    fn vasa_strings() {
        assert_eq!(SecondaryId::parse_vasa("0xe20000001234"), Some(id(0x1234)));
        assert_eq!(SecondaryId::parse_vasa("0XE20000001234"), Some(id(0x1234)));
        assert_eq!("0xe200000000a6".parse::<SecondaryId>(), Ok(id(0xA6)));
        assert_eq!(id(0xA6).to_string(), "0xe200000000a6");
        for bad in [
            "",
            "0x",
            "e20000001234",
            "0xe2000000123",
            "0xe200000012345",
            "0xe20000000000",
            "0xe10000001234",
            "0x+20000001234",
            "0xe2000000123g",
            "0x e2000001234",
            "0xé2000001234",
        ] {
            assert_eq!(SecondaryId::parse_vasa(bad), None, "{bad}");
            assert!(bad.parse::<SecondaryId>().is_err());
        }
    }

    #[test]
    fn serde_uses_the_vasa_string() {
        let j = serde_json::to_string(&id(0x1234)).unwrap();
        assert_eq!(j, "\"0xe20000001234\"");
        assert_eq!(serde_json::from_str::<SecondaryId>(&j).unwrap(), id(0x1234));
        assert!(serde_json::from_str::<SecondaryId>("\"0xe20000000000\"").is_err());
        assert!(serde_json::from_str::<SecondaryId>("4660").is_err());
    }

    #[test]
    fn decode_first_level_forms() {
        let d = |b: [u8; 8]| LunAddress::decode(Lun::from_bytes(b));
        assert_eq!(d([0; 8]), LunAddress::Single(0));
        assert_eq!(d([0x01, 0x2C, 0, 0, 0, 0, 0, 0]), LunAddress::Single(300));
        assert_eq!(d([0x41, 0x2C, 0, 0, 0, 0, 0, 0]), LunAddress::Single(300));
        assert_eq!(
            d([0x41, 0x2C, 0xE2, 0, 0, 0, 0, 1]),
            LunAddress::Secondary { pe: 300, id: id(1) }
        );
        // Observed on a real PE at LUN 254 (reference §1.6).
        assert_eq!(
            d([0x00, 0xFE, 0xE2, 0, 0, 0, 0, 1]),
            LunAddress::Secondary { pe: 254, id: id(1) }
        );
        assert_eq!(
            d([0xC1, 0x01, 0, 0, 0, 0, 0, 0]),
            LunAddress::ReportLunsWlun
        );
    }

    #[test]
    fn never_aliases_to_the_first_level() {
        let d = |b: [u8; 8]| LunAddress::decode(Lun::from_bytes(b));
        for b in [
            [0x00, 0x05, 0x12, 0x34, 0, 0, 0, 0], // 2-byte simple subsidiary
            [0x00, 0x05, 0xE2, 0, 0, 0, 0, 0],    // E2 with id 0
            [0x00, 0x05, 0, 0, 0, 0, 0, 1],       // stray low byte
            [0x00, 0x05, 0xD2, 0, 0x12, 0x34, 0, 0], // extended flat, 4 bytes
            [0x80, 0x05, 0, 0, 0, 0, 0, 0],       // logical unit addressing
            [0xC1, 0x01, 0, 0, 0, 0, 0, 1],       // W-LUN with lower levels
            [0xC1, 0x02, 0, 0, 0, 0, 0, 0],       // another W-LUN
            [0xE2, 0, 0, 0, 0x12, 0x34, 0, 0],    // E2 at the first level
            [0xFF; 8],
        ] {
            assert_eq!(d(b), LunAddress::Unsupported, "{b:02x?}");
        }
    }

    #[test]
    fn pe_lun_encodings() {
        assert_eq!(pe_lun(5).to_bytes(), [0, 5, 0, 0, 0, 0, 0, 0]);
        assert_eq!(pe_lun(300).to_bytes(), [0x01, 0x2C, 0, 0, 0, 0, 0, 0]);
        assert_eq!(pe_lun(16383).to_bytes(), [0x3F, 0xFF, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            secondary_lun(300, id(0x1234)).to_bytes(),
            [0x01, 0x2C, 0xE2, 0, 0, 0, 0x12, 0x34]
        );
        for pe in [0, 1, 255, 256, 300, 16383] {
            assert_eq!(LunAddress::decode(pe_lun(pe)), LunAddress::Single(pe));
            assert_eq!(
                LunAddress::decode(secondary_lun(pe, id(7))),
                LunAddress::Secondary { pe, id: id(7) }
            );
        }
    }

    #[test]
    fn no_lun_with_lower_levels_decodes_as_its_first_level() {
        // The rule tgt and SPDK break: whatever the lower six bytes hold, if any is non-zero
        // the LUN is a secondary or unsupported, never the PE or LU of its first level. And
        // what decodes re-encodes to a LUN that decodes the same.
        use rand::Rng;
        let mut rng = crate::seeded::rng(0x1E7E1);
        for _ in 0..200_000 {
            let mut b: [u8; 8] = rng.gen();
            match rng.gen_range(0..4) {
                0 => b[2] = 0xE2,
                1 => b[2..].fill(0),
                2 => b[3..].fill(0),
                _ => {}
            }
            let lun = Lun::from_bytes(b);
            match LunAddress::decode(lun) {
                LunAddress::Single(n) => {
                    assert_eq!(lun.subsidiary(), [0; 6], "{b:02x?}");
                    assert_eq!(LunAddress::decode(pe_lun(n)), LunAddress::Single(n));
                }
                LunAddress::Secondary { pe, id } => {
                    assert_ne!(lun.subsidiary(), [0; 6], "{b:02x?}");
                    assert_eq!(
                        LunAddress::decode(secondary_lun(pe, id)),
                        LunAddress::Secondary { pe, id }
                    );
                }
                LunAddress::ReportLunsWlun => assert_eq!(lun, Lun::REPORT_LUNS_WLUN),
                LunAddress::Unsupported => {}
            }
        }
    }
}
