//! RECEIVE COPY RESULTS (SPC-4 §6.18, LID1 service actions) and the per-nexus record of
//! EXTENDED COPY outcomes it reports. A list identifier belongs to the I_T nexus that sent it,
//! so results are keyed by (nexus, list id) and die with the nexus.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;

use super::cdb::{trim, Cdb};
use super::sense::Sense;
use super::xcopy;
use super::NexusId;

/// RECEIVE COPY RESULTS service actions we implement.
pub(crate) const COPY_STATUS: u8 = 0x00;
pub(crate) const OPERATING_PARAMETERS: u8 = 0x03;

/// How one EXTENDED COPY ended (or that it has not yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    InProgress,
    Good { bytes: u64, segments: u16 },
    Failed,
}

/// What we remember about one list: its outcome and how many segments it had.
#[derive(Debug, Clone, Copy)]
struct Entry {
    outcome: Outcome,
    segments: u16,
}

#[derive(Debug, Default)]
pub(crate) struct CopyResults {
    /// Bounded by 256 list ids per nexus; lists sent with LIST ID USAGE 11b have no entry.
    lists: Mutex<HashMap<(NexusId, u8), Entry>>,
}

impl CopyResults {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(NexusId, u8), Entry>> {
        // Every update is a single insert or remove: a poisoned map is still consistent.
        self.lists.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy is about to be handed to the transport. Refused while a copy with the same
    /// list identifier is still running for `nexus` (SPC-4: OPERATION IN PROGRESS); a
    /// finished one's results are replaced.
    pub(crate) fn start(
        &self,
        nexus: NexusId,
        list_id: Option<u8>,
        segments: usize,
    ) -> Result<(), Sense> {
        let Some(list_id) = list_id else {
            return Ok(());
        };
        let mut lists = self.lock();
        let key = (nexus, list_id);
        if lists
            .get(&key)
            .is_some_and(|e| e.outcome == Outcome::InProgress)
        {
            return Err(xcopy::OPERATION_IN_PROGRESS);
        }
        let entry = Entry {
            outcome: Outcome::InProgress,
            segments: u16::try_from(segments).unwrap_or(u16::MAX),
        };
        lists.insert(key, entry);
        Ok(())
    }

    /// The transport finished the copy: keep the outcome if the list asked us to.
    /// Segments are copied in order and the first failure ends the copy, so success means
    /// every segment was processed. Only a started list is updated: with its entry gone, the
    /// nexus left while the copy ran, and a new entry would outlive it with no one to ask.
    pub(crate) fn finished(&self, nexus: NexusId, list_id: Option<u8>, result: Result<u64, ()>) {
        let Some(list_id) = list_id else {
            return;
        };
        if let Some(entry) = self.lock().get_mut(&(nexus, list_id)) {
            entry.outcome = match result {
                Ok(bytes) => Outcome::Good {
                    bytes,
                    segments: entry.segments,
                },
                Err(()) => Outcome::Failed,
            };
        }
    }

    pub(crate) fn nexus_removed(&self, nexus: NexusId) {
        self.lock().retain(|&(n, _), _| n != nexus);
    }

    /// RECEIVE COPY RESULTS for `nexus`.
    pub(crate) fn receive(&self, nexus: NexusId, cdb: Cdb<'_>) -> Result<Bytes, Sense> {
        let alloc = cdb.be32(10) as usize;
        let data = match cdb.u8(1) & 0x1F {
            COPY_STATUS => {
                let outcome = self.lock().get(&(nexus, cdb.u8(2))).map(|e| e.outcome);
                // SPC-4: an unknown list identifier is an invalid field in the CDB.
                copy_status(outcome.ok_or(Sense::invalid_cdb_field(2, Some(7)))?)
            }
            OPERATING_PARAMETERS => operating_parameters(),
            _ => return Err(Sense::invalid_cdb_field(1, Some(4))),
        };
        Ok(trim(data, alloc))
    }
}

/// COPY STATUS parameter data (SPC-4 §6.18.3): 12 bytes.
fn copy_status(outcome: Outcome) -> Vec<u8> {
    let mut d = vec![0u8; 12];
    d[3] = 8; // AVAILABLE DATA
    let (status, segments, bytes) = match outcome {
        Outcome::InProgress => (0x00, 0, 0),
        Outcome::Good { bytes, segments } => (0x01, segments, bytes),
        Outcome::Failed => (0x02, 0, 0),
    };
    d[4] = status; // HDD=0: we never hold data
    d[5..7].copy_from_slice(&segments.to_be_bytes());
    // TRANSFER COUNT UNITS: bytes while they fit 32 bits, else mebibytes (02h).
    let (units, count) = match u32::try_from(bytes) {
        Ok(b) => (0x00, b),
        Err(_) => (0x02, u32::try_from(bytes >> 20).unwrap_or(u32::MAX)),
    };
    d[7] = units;
    d[8..12].copy_from_slice(&count.to_be_bytes());
    d
}

/// OPERATING PARAMETERS parameter data (SPC-4 §6.18.4).
fn operating_parameters() -> Vec<u8> {
    let list = xcopy::IMPLEMENTED_DESCRIPTORS;
    let mut d = vec![0u8; 44 + list.len()];
    let available = (d.len() - 4) as u32;
    d[0..4].copy_from_slice(&available.to_be_bytes());
    d[4] = 0x00; // SNLID=0: only LID1 list identifiers
    d[8..10].copy_from_slice(&xcopy::MAX_CSCD_DESCRIPTORS.to_be_bytes());
    d[10..12].copy_from_slice(&xcopy::MAX_SEGMENT_DESCRIPTORS.to_be_bytes());
    d[12..16].copy_from_slice(&xcopy::MAX_DESCRIPTOR_LIST_LENGTH.to_be_bytes());
    d[16..20].copy_from_slice(&xcopy::MAX_SEGMENT_BYTES.to_be_bytes());
    // MAXIMUM INLINE DATA LENGTH, HELD DATA LIMIT, MAXIMUM STREAM DEVICE TRANSFER SIZE: 0.
    // TOTAL CONCURRENT COPIES / MAXIMUM CONCURRENT COPIES: one per command slot is not
    // tracked, so report what a single nexus can rely on.
    d[34..36].copy_from_slice(&1u16.to_be_bytes());
    d[36] = 1;
    d[37] = 9; // DATA SEGMENT GRANULARITY: 2^9 = 512 bytes, the smallest block size
    d[43] = list.len() as u8;
    d[44..].copy_from_slice(&list);
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: NexusId = NexusId(1);
    const B: NexusId = NexusId(2);

    fn rcr(sa: u8, list_id: u8, alloc: u32) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0] = 0x84;
        c[1] = sa;
        c[2] = list_id;
        c[10..14].copy_from_slice(&alloc.to_be_bytes());
        c
    }

    #[test]
    fn copy_status_is_per_nexus_and_list() {
        let r = CopyResults::default();
        let e = r.receive(A, Cdb::new(&rcr(0, 1, 64))).unwrap_err();
        assert_eq!((e.asc, e.field.unwrap().byte), (0x24, 2));
        r.start(A, Some(1), 1).unwrap();
        let d = r.receive(A, Cdb::new(&rcr(0, 1, 64))).unwrap();
        assert_eq!(d.as_ref(), &[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0]);
        r.finished(A, Some(1), Ok(1 << 20));
        let d = r.receive(A, Cdb::new(&rcr(0, 1, 64))).unwrap();
        assert_eq!(d.as_ref(), &[0, 0, 0, 8, 1, 0, 1, 0, 0, 0x10, 0, 0]);
        assert!(r.receive(B, Cdb::new(&rcr(0, 1, 64))).is_err());
        r.start(A, Some(2), 1).unwrap();
        r.finished(A, Some(2), Err(()));
        assert_eq!(r.receive(A, Cdb::new(&rcr(0, 2, 64))).unwrap()[4], 0x02);
        r.nexus_removed(A);
        assert!(r.receive(A, Cdb::new(&rcr(0, 1, 64))).is_err());
    }

    #[test]
    fn a_copy_ending_after_its_nexus_left_records_nothing() {
        let r = CopyResults::default();
        r.start(A, Some(1), 1).unwrap();
        r.nexus_removed(A);
        r.finished(A, Some(1), Ok(512));
        assert!(r.lock().is_empty());
        assert!(r.receive(A, Cdb::new(&rcr(0, 1, 64))).is_err());
    }

    #[test]
    fn unheld_lists_are_not_recorded() {
        let r = CopyResults::default();
        r.start(A, None, 1).unwrap();
        r.finished(A, None, Ok(512));
        assert!(r.lock().is_empty());
    }

    #[test]
    fn a_list_identifier_in_use_is_refused_until_its_copy_ends() {
        let r = CopyResults::default();
        r.start(A, Some(4), 1).unwrap();
        assert_eq!(r.start(A, Some(4), 1), Err(xcopy::OPERATION_IN_PROGRESS));
        r.start(B, Some(4), 1).unwrap();
        r.start(A, Some(5), 1).unwrap();
        r.start(A, None, 1).unwrap();
        r.finished(A, Some(4), Ok(512));
        r.start(A, Some(4), 2).unwrap();
        assert_eq!(r.receive(A, Cdb::new(&rcr(0, 4, 64))).unwrap()[4], 0x00);
    }

    #[test]
    fn big_transfers_switch_units() {
        assert_eq!(
            &copy_status(Outcome::Good {
                bytes: 8 << 30,
                segments: 2
            })[5..12],
            &[0, 2, 0x02, 0, 0, 0x20, 0]
        );
    }

    #[test]
    fn operating_parameters_bytes() {
        let r = CopyResults::default();
        let d = r.receive(A, Cdb::new(&rcr(3, 0, 255))).unwrap();
        assert_eq!(d.len(), 46);
        assert_eq!(&d[..4], &[0, 0, 0, 42]);
        assert_eq!(&d[8..16], &[0, 8, 0, 64, 0, 0, 0x10, 0]);
        assert_eq!(&d[16..20], &0x0FFF_F000u32.to_be_bytes());
        assert_eq!(&d[43..], &[2, 0x02, 0xE4]);
        assert_eq!(r.receive(A, Cdb::new(&rcr(3, 0, 4))).unwrap().len(), 4);
        let e = r.receive(A, Cdb::new(&rcr(4, 0, 64))).unwrap_err();
        assert_eq!(e.field.unwrap().byte, 1);
    }
}
