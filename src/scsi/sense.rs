//! SCSI sense data (SPC-4 §4.5). Every error the SCSI layer reports carries one of these, so the
//! transport never has to invent a sense code.

/// Sense keys (SPC-4 table 27).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SenseKey {
    NoSense = 0x0,
    RecoveredError = 0x1,
    NotReady = 0x2,
    MediumError = 0x3,
    HardwareError = 0x4,
    IllegalRequest = 0x5,
    UnitAttention = 0x6,
    DataProtect = 0x7,
    BlankCheck = 0x8,
    CopyAborted = 0xA,
    AbortedCommand = 0xB,
    VolumeOverflow = 0xD,
    Miscompare = 0xE,
}

/// Sense-key-specific field pointer (SPC-4 §4.5.2.4.2): which byte (and optionally bit) of the
/// CDB or of the parameter list was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FieldPointer {
    /// true: the error is in the CDB (C/D = 1); false: in the parameter data.
    pub in_cdb: bool,
    pub byte: u16,
    pub bit: Option<u8>,
}

/// One sense condition: key, additional sense code and qualifier, optional INFORMATION field and
/// optional field pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sense {
    pub key: SenseKey,
    pub asc: u8,
    pub ascq: u8,
    pub information: Option<u64>,
    pub field: Option<FieldPointer>,
}

/// (sense key, ASC, ASCQ) of formatted sense data, fixed or descriptor format; None if the
/// bytes are cut before the ASCQ or are not sense data.
pub fn sense_code(sense: &[u8]) -> Option<(u8, u8, u8)> {
    match sense.first()? & 0x7F {
        0x70 | 0x71 if sense.len() >= 14 => Some((sense[2] & 0x0F, sense[12], sense[13])),
        0x72 | 0x73 if sense.len() >= 4 => Some((sense[1] & 0x0F, sense[2], sense[3])),
        _ => None,
    }
}

impl Sense {
    pub const fn new(key: SenseKey, asc: u8, ascq: u8) -> Sense {
        Sense {
            key,
            asc,
            ascq,
            information: None,
            field: None,
        }
    }

    pub const fn with_information(mut self, information: u64) -> Sense {
        self.information = Some(information);
        self
    }

    /// INVALID FIELD IN CDB (5h/24h/00h) pointing at `byte` (and `bit`) of the CDB.
    pub const fn invalid_cdb_field(byte: u16, bit: Option<u8>) -> Sense {
        Sense {
            key: SenseKey::IllegalRequest,
            asc: 0x24,
            ascq: 0x00,
            information: None,
            field: Some(FieldPointer {
                in_cdb: true,
                byte,
                bit,
            }),
        }
    }

    /// INVALID FIELD IN PARAMETER LIST (5h/26h/00h) pointing at `byte` of the parameter data.
    pub const fn invalid_param_field(byte: u16, bit: Option<u8>) -> Sense {
        Sense {
            key: SenseKey::IllegalRequest,
            asc: 0x26,
            ascq: 0x00,
            information: None,
            field: Some(FieldPointer {
                in_cdb: false,
                byte,
                bit,
            }),
        }
    }

    pub const INVALID_OPCODE: Sense = Sense::new(SenseKey::IllegalRequest, 0x20, 0x00);
    pub const LBA_OUT_OF_RANGE: Sense = Sense::new(SenseKey::IllegalRequest, 0x21, 0x00);
    pub const LUN_NOT_SUPPORTED: Sense = Sense::new(SenseKey::IllegalRequest, 0x25, 0x00);
    /// A command with the ACA task attribute while no ACA condition exists (SAM-5; what SCST
    /// answers too).
    pub const INVALID_MESSAGE_ERROR: Sense = Sense::new(SenseKey::IllegalRequest, 0x49, 0x00);
    pub const PARAMETER_LIST_LENGTH_ERROR: Sense = Sense::new(SenseKey::IllegalRequest, 0x1A, 0x00);
    pub const INVALID_FIELD_IN_INFORMATION_UNIT: Sense =
        Sense::new(SenseKey::IllegalRequest, 0x0E, 0x03);
    pub const SAVING_PARAMETERS_NOT_SUPPORTED: Sense =
        Sense::new(SenseKey::IllegalRequest, 0x39, 0x00);
    pub const MEDIUM_REMOVAL_PREVENTED: Sense = Sense::new(SenseKey::IllegalRequest, 0x53, 0x02);
    pub const WRITE_PROTECTED: Sense = Sense::new(SenseKey::DataProtect, 0x27, 0x00);
    /// SPACE ALLOCATION FAILED WRITE PROTECT (SBC-4 §4.7.3.7): a thin LU out of space. ESXi
    /// pauses only the VMs writing there until space is added, where a medium error would
    /// reach their guests as a failed write.
    pub const SPACE_ALLOCATION_FAILED: Sense = Sense::new(SenseKey::DataProtect, 0x27, 0x07);
    pub const UNRECOVERED_READ_ERROR: Sense = Sense::new(SenseKey::MediumError, 0x11, 0x00);
    pub const WRITE_ERROR: Sense = Sense::new(SenseKey::MediumError, 0x0C, 0x00);
    pub const MISCOMPARE_DURING_VERIFY: Sense = Sense::new(SenseKey::Miscompare, 0x1D, 0x00);
    pub const POWER_ON_OCCURRED: Sense = Sense::new(SenseKey::UnitAttention, 0x29, 0x00);
    pub const BUS_DEVICE_RESET: Sense = Sense::new(SenseKey::UnitAttention, 0x29, 0x03);
    pub const MODE_PARAMETERS_CHANGED: Sense = Sense::new(SenseKey::UnitAttention, 0x2A, 0x01);
    pub const REPORTED_LUNS_DATA_CHANGED: Sense = Sense::new(SenseKey::UnitAttention, 0x3F, 0x0E);
    pub const CAPACITY_DATA_CHANGED: Sense = Sense::new(SenseKey::UnitAttention, 0x2A, 0x09);
    pub const INTERNAL_TARGET_FAILURE: Sense = Sense::new(SenseKey::HardwareError, 0x44, 0x00);
    pub const LOGICAL_UNIT_NOT_READY_STOPPED: Sense = Sense::new(SenseKey::NotReady, 0x04, 0x02);
    /// 2h/04h/07h: a retryable "try again later" (e.g. a binding is being torn down).
    pub const NOT_READY_OPERATION_IN_PROGRESS: Sense = Sense::new(SenseKey::NotReady, 0x04, 0x07);
    /// 5h/20h/0Dh: a conglomerate-only request reached an LU that is not a Protocol Endpoint.
    pub const NOT_AN_ADMINISTRATIVE_LU: Sense = Sense::new(SenseKey::IllegalRequest, 0x20, 0x0D);
    /// 5h/55h/11h: no room for another subsidiary LU binding.
    pub const INSUFFICIENT_RESOURCES_TO_BIND: Sense =
        Sense::new(SenseKey::IllegalRequest, 0x55, 0x11);

    /// Fixed-format sense data (response code 70h), 18 bytes.
    pub fn to_fixed(&self) -> [u8; 18] {
        let mut b = [0u8; 18];
        b[0] = 0x70;
        b[2] = self.key as u8;
        if let Some(info) = self.information {
            b[0] |= 0x80; // VALID
            b[3..7].copy_from_slice(&(info as u32).to_be_bytes());
        }
        b[7] = 10; // additional sense length
        b[12] = self.asc;
        b[13] = self.ascq;
        if let Some(fp) = self.field {
            b[15] = 0x80 | if fp.in_cdb { 0x40 } else { 0 };
            if let Some(bit) = fp.bit {
                b[15] |= 0x08 | (bit & 0x7);
            }
            b[16..18].copy_from_slice(&fp.byte.to_be_bytes());
        }
        b
    }

    /// Descriptor-format sense data (response code 72h), used when the Control mode page has
    /// D_SENSE set. Carries an information descriptor and a sense-key-specific descriptor when
    /// present.
    pub fn to_descriptor(&self) -> Vec<u8> {
        let mut b = vec![0x72, self.key as u8, self.asc, self.ascq, 0, 0, 0, 0];
        if let Some(info) = self.information {
            b.extend_from_slice(&[0x00, 0x0A, 0x80, 0x00]);
            b.extend_from_slice(&info.to_be_bytes());
        }
        if let Some(fp) = self.field {
            let mut sks = 0x80 | if fp.in_cdb { 0x40 } else { 0 };
            if let Some(bit) = fp.bit {
                sks |= 0x08 | (bit & 0x7);
            }
            let [hi, lo] = fp.byte.to_be_bytes();
            b.extend_from_slice(&[0x02, 0x06, 0x00, 0x00, sks, hi, lo, 0x00]);
        }
        b[7] = (b.len() - 8) as u8;
        b
    }
}

impl std::fmt::Display for Sense {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} {:02X}h/{:02X}h", self.key, self.asc, self.ascq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_format_matches_reference_bytes() {
        // Reference bytes from shared/reference/vvol-pe-protocol.md §2.4.
        assert_eq!(
            Sense::LUN_NOT_SUPPORTED.to_fixed(),
            [0x70, 0, 5, 0, 0, 0, 0, 0x0A, 0, 0, 0, 0, 0x25, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            Sense::REPORTED_LUNS_DATA_CHANGED.to_fixed(),
            [0x70, 0, 6, 0, 0, 0, 0, 0x0A, 0, 0, 0, 0, 0x3F, 0x0E, 0, 0, 0, 0]
        );
    }

    #[test]
    fn field_pointer_is_encoded() {
        let s = Sense::invalid_cdb_field(2, Some(1)).to_fixed();
        assert_eq!(s[15], 0x80 | 0x40 | 0x08 | 1);
        assert_eq!(&s[16..18], &[0, 2]);
    }

    #[test]
    fn a_response_names_the_unit_attention_it_reports() {
        use crate::scsi::{Response, Status};
        let ua = Sense::MODE_PARAMETERS_CHANGED;
        assert_eq!(Response::check(ua).unit_attention(), Some(ua));
        let descriptor = Response {
            sense: ua.to_descriptor().into(),
            ..Response::check(ua)
        };
        assert_eq!(descriptor.unit_attention(), Some(ua));
        assert_eq!(
            Response::check(Sense::LUN_NOT_SUPPORTED).unit_attention(),
            None
        );
        // The sense of a GOOD answer (REQUEST SENSE's data is not its sense) and cut sense.
        let good = Response {
            status: Status::Good,
            ..Response::check(ua)
        };
        assert_eq!(good.unit_attention(), None);
        let request_sense = Response {
            reports_in_data: Some(ua),
            ..Response::good(ua.to_fixed()[..8].to_vec().into())
        };
        assert_eq!(request_sense.unit_attention(), Some(ua));
        let cut = Response {
            sense: bytes::Bytes::from_static(&[0x70, 0, 6]),
            ..Response::check(ua)
        };
        assert_eq!(cut.unit_attention(), None);
    }
}
