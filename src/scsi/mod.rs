//! SCSI command emulation (SPC-4/SBC-3) over a [`crate::backend::BlockDevice`], pure and
//! synchronous: a CDB goes in, a [`Plan`] comes out. The transport executes the plan (moves
//! data, calls the backend) and hands results back to the functions here. No sockets, no
//! awaits, no backend calls in this module.

pub mod alua;
mod capacity;
mod caw;
pub(crate) mod cdb;
mod copy_results;
pub mod disk;
#[cfg(test)]
mod fuzz_tests;
mod inquiry;
mod lba_status;
pub mod lun;
mod mode;
pub mod opcodes;
pub mod pr;
mod provisioning;
pub mod report_luns;
mod reserve;
mod rsoc;
mod rw;
pub mod sense;
pub mod task_set;
mod unit_attention;
mod unmap;
mod vpd;
mod write_same;
pub mod xcopy;

pub use alua::{AluaState, PortGroup};
use bytes::Bytes;
pub use disk::{compare_result, DiskIdentity, DiskLu, ResetKind};
pub use lun::Lun;
pub use pr::{InitiatorPort, PrPersistence};
pub use report_luns::{report_luns, unsupported_lun_response};
pub use sense::{Sense, SenseKey};
pub use task_set::TaskAttribute;

/// SCSI status byte (SAM-5 table 33).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Status {
    Good = 0x00,
    CheckCondition = 0x02,
    ConditionMet = 0x04,
    Busy = 0x08,
    ReservationConflict = 0x18,
    TaskSetFull = 0x28,
    TaskAborted = 0x40,
}

/// Identity of an I_T nexus (one iSCSI session): unit attentions, PREVENT state and, later,
/// reservations are kept per nexus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NexusId(pub u64);

/// The final answer to a command: status, Data-In payload (already cut to the CDB's allocation
/// length; the transport cuts it further to the iSCSI expected length and reports residuals)
/// and, for CHECK CONDITION, the formatted sense data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: Status,
    pub data: Bytes,
    pub sense: Bytes,
    /// REQUEST SENSE: the unit attention its data reports, taken off the nexus's queue to
    /// build it. Kept whole here because the data, cut to the allocation length, may not show
    /// it, and an answer an abort drops must put it back.
    pub reports_in_data: Option<Sense>,
}

impl Response {
    pub fn good(data: Bytes) -> Response {
        Response {
            status: Status::Good,
            data,
            sense: Bytes::new(),
            reports_in_data: None,
        }
    }

    pub fn good_empty() -> Response {
        Response::good(Bytes::new())
    }

    /// RESERVATION CONFLICT: no sense data (SAM-5 §5.3.1).
    pub fn conflict() -> Response {
        Response {
            status: Status::ReservationConflict,
            data: Bytes::new(),
            sense: Bytes::new(),
            reports_in_data: None,
        }
    }

    /// CHECK CONDITION with fixed-format sense.
    pub fn check(sense: Sense) -> Response {
        Response {
            status: Status::CheckCondition,
            data: Bytes::new(),
            sense: Bytes::copy_from_slice(&sense.to_fixed()),
            reports_in_data: None,
        }
    }

    /// The unit attention this answer reports, if it is one: CHECK CONDITION with sense key
    /// UNIT ATTENTION, in either sense format, or REQUEST SENSE data reporting one.
    pub fn unit_attention(&self) -> Option<Sense> {
        if self.status != Status::CheckCondition {
            return self.reports_in_data;
        }
        let (key, asc, ascq) = sense::sense_code(&self.sense)?;
        (key == SenseKey::UnitAttention as u8)
            .then(|| Sense::new(SenseKey::UnitAttention, asc, ascq))
    }
}

/// What the transport must do to finish a command. Offsets and lengths are bytes, already
/// validated against the device's geometry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Answer now.
    Respond(Response),
    /// Read `len` bytes at `offset` from the backend and return them as Data-In, GOOD.
    Read { offset: u64, len: u32 },
    /// Receive `len` bytes of Data-Out, write them at `offset` (durably before GOOD if `fua`).
    Write { offset: u64, len: u32, fua: bool },
    /// Receive `len` bytes of Data-Out, read the same range from the backend and compare
    /// (VERIFY with BYTCHK=1): finish with [`compare_result`].
    Compare { offset: u64, len: u32 },
    /// Make all written data durable (SYNCHRONIZE CACHE), then GOOD.
    Flush,
    /// Receive `len` bytes of parameter data (MODE SELECT and friends), then finish with the
    /// logical unit's `apply_parameters` for the same CDB, which yields the plan to run next
    /// (never `Parameters` again).
    Parameters { len: u32 },
    /// COMPARE AND WRITE: receive `2 * len` bytes (the verify instance, then the write
    /// instance). Atomically against every other write to the LU: read `len` bytes at `offset`,
    /// compare with the verify instance ([`disk::compare_result`] gives MISCOMPARE with the
    /// offset of the first differing byte), and only if equal write the write instance.
    CompareAndWrite { offset: u64, len: u32, fua: bool },
    /// WRITE SAME: receive `block_len` bytes (0 with NDOB: a block of zeros) and repeat that
    /// block over `[offset, offset + len)`. With `unmap` and an all-zero block the backend may
    /// deallocate the range instead (reads return zeros either way).
    WriteSame {
        offset: u64,
        len: u64,
        block_len: u32,
        unmap: bool,
    },
    /// Deallocate byte ranges (UNMAP, once its parameter list was parsed).
    Unmap { ranges: Vec<(u64, u64)> },
    /// GET LBA STATUS: ask the backend for allocation from `offset` (at most `len` bytes),
    /// then finish with the LU's `lba_status_response`.
    LbaStatus {
        offset: u64,
        len: u64,
        alloc_len: u32,
    },
    /// EXTENDED COPY (LID1): copy each segment between logical units named by their NAA
    /// designators, in the backend, then record the result with the LU's `copy_finished`.
    Copy {
        /// None: LIST ID USAGE 11b, nothing recorded.
        list_id: Option<u8>,
        segments: Vec<CopySegment>,
    },
}

/// One block-to-block segment of an EXTENDED COPY, in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopySegment {
    pub source: [u8; 16],
    pub source_offset: u64,
    pub destination: [u8; 16],
    pub destination_offset: u64,
    pub len: u64,
    /// The block lengths the CSCDs claimed for source and destination, which the offsets
    /// and length were counted in: checked against the LUs once they are resolved.
    pub block_lens: (u64, u64),
}

impl Plan {
    /// Bytes of Data-Out the plan needs before it can run.
    pub fn data_out_len(&self) -> Option<u32> {
        match self {
            Plan::Write { len, .. } | Plan::Compare { len, .. } | Plan::Parameters { len } => {
                Some(*len)
            }
            Plan::CompareAndWrite { len, .. } => Some(len * 2),
            Plan::WriteSame { block_len, .. } => Some(*block_len),
            _ => None,
        }
    }
}
