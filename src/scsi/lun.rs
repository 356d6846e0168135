//! The 8-byte SAM logical unit number as it travels in the iSCSI BHS. It is kept whole: the
//! first level addresses a LUN or Protocol Endpoint, the rest a subsidiary LU (see the vvol
//! layer). Never truncate a LUN to its first level (tgt and SPDK do; it aliases VVols onto PEs).

/// An 8-byte SAM LUN, exactly as received.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Lun([u8; 8]);

impl Lun {
    pub const fn from_bytes(bytes: [u8; 8]) -> Lun {
        Lun(bytes)
    }

    pub const fn to_bytes(self) -> [u8; 8] {
        self.0
    }

    /// A single-level LUN: peripheral device addressing up to 255 (what ESXi <= 6.5 accepts),
    /// 14-bit simple/flat addressing above, as SAM-4 §4.7.5 recommends.
    pub const fn single(n: u16) -> Lun {
        let n = n & 0x3FFF;
        if n <= 255 {
            Lun([0, n as u8, 0, 0, 0, 0, 0, 0])
        } else {
            Lun([0x40 | (n >> 8) as u8, n as u8, 0, 0, 0, 0, 0, 0])
        }
    }

    /// The first-level number if this LUN has exactly one level in peripheral (bus 0) or flat
    /// addressing, i.e. bytes 2..8 are zero.
    pub fn as_single(self) -> Option<u16> {
        if self.0[2..] != [0; 6] {
            return None;
        }
        self.first_level()
    }

    /// The first-level number (peripheral bus 0 or flat space), ignoring the lower levels.
    pub fn first_level(self) -> Option<u16> {
        match self.0[0] >> 6 {
            0b00 => Some(((self.0[0] as u16 & 0x3F) << 8) | self.0[1] as u16),
            0b01 => Some(((self.0[0] as u16 & 0x3F) << 8) | self.0[1] as u16),
            _ => None,
        }
    }

    /// Bytes 2..8: the subsidiary element (zero for a single-level LUN).
    pub fn subsidiary(self) -> [u8; 6] {
        let mut s = [0u8; 6];
        s.copy_from_slice(&self.0[2..]);
        s
    }

    /// The REPORT LUNS well-known LUN (C101h).
    pub const REPORT_LUNS_WLUN: Lun = Lun([0xC1, 0x01, 0, 0, 0, 0, 0, 0]);
}

impl std::fmt::Debug for Lun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lun(")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

impl std::fmt::Display for Lun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.as_single() {
            Some(n) => write!(f, "{n}"),
            None => write!(f, "{self:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_level_encodings() {
        assert_eq!(Lun::single(5).to_bytes(), [0, 5, 0, 0, 0, 0, 0, 0]);
        assert_eq!(Lun::single(300).to_bytes(), [0x41, 0x2C, 0, 0, 0, 0, 0, 0]);
        assert_eq!(Lun::single(300).as_single(), Some(300));
    }

    #[test]
    fn two_level_lun_is_not_single() {
        let l = Lun::from_bytes([0, 5, 0xE2, 0, 0, 0, 0x12, 0x34]);
        assert_eq!(l.as_single(), None);
        assert_eq!(l.first_level(), Some(5));
        assert_eq!(l.subsidiary(), [0xE2, 0, 0, 0, 0x12, 0x34]);
    }
}
