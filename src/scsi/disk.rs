//! A disk logical unit: identity, per-LU state (mode pages, PREVENT, unit attentions) and the
//! command dispatcher the transport calls.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use super::cdb::{trim, Cdb};
use super::mode::{self, ModePages};
use super::opcodes::{self, Command};
use super::pr::{InitiatorPort, PrPersistence};
use super::sense::{Sense, SenseKey};
use super::{capacity, inquiry, report_luns, rsoc, rw, NexusId, Plan, Response};
use super::{caw, lba_status, unmap, write_same};

/// Everything that makes one disk distinguishable from another; all INQUIRY, VPD and
/// capacity data is derived from it alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskIdentity {
    /// T10 vendor identification, 8 ASCII characters (space padded on output).
    pub vendor: String,
    /// Product identification, 16 ASCII characters; the same for every disk.
    pub product: String,
    /// Product revision level, 4 ASCII characters.
    pub revision: String,
    /// Unit serial number (VPD page 80h).
    pub serial: String,
    /// NAA-6 (IEEE registered extended) designator for VPD page 83h, LU association.
    pub naa: [u8; 16],
    /// Logical block size in bytes: 512 or 4096.
    pub block_size: u32,
    pub num_blocks: BlockCount,
    /// Hardware write protection: every write fails with WRITE PROTECTED.
    pub read_only: bool,
    /// The target's port groups (implicit ALUA), in configuration order. Each group has
    /// exactly one target port, whose relative target port id is the group id (= the iSCSI
    /// target portal group tag). Empty is read as the default group 1, active/optimized.
    pub port_groups: Vec<super::alua::PortGroup>,
    /// Member of a logical unit conglomerate (a Protocol Endpoint, or a VVol behind one):
    /// standard INQUIRY LU_CONG = 1 and VPD 86h LU_COLL_TYPE = 001b.
    pub conglomerate: bool,
    /// Administrative LU (a Protocol Endpoint). It has no data of its own, and its identity
    /// makes it a small read-only medium that reads as zeros (the array gives it a null
    /// device): an initiator that scans it, as Linux does, finds an empty disk. Answering its
    /// reads with LBA OUT OF RANGE inside the capacity READ CAPACITY reports, as vvold first
    /// did, made the Linux kernel log "critical target error" and buffer I/O errors on every
    /// scan. Nothing else changes with it but XCOPY, which refuses it as source or target.
    pub administrative: bool,
    /// Thin provisioned: the backend really deallocates (UNMAP, WRITE SAME with UNMAP).
    /// READ CAPACITY(16) LBPME/LBPRZ, VPD B0h unmap limits and VPD B2h all derive from this
    /// one bit (see `provisioning`).
    pub thin: bool,
}

/// A disk's capacity in logical blocks. It only grows, in place (a VVol extended while bound),
/// so that everything else the logical unit holds (reservations, unit attentions, mode pages,
/// the COMPARE AND WRITE lock) stays as it is. A command that reads it twice may see a larger
/// value the second time, never a smaller one.
#[derive(Default)]
pub struct BlockCount(AtomicU64);

impl BlockCount {
    pub fn get(&self) -> u64 {
        // Acquire: pairs with `grow_to`, so a command that sees the new capacity also sees
        // the device grown before it.
        self.0.load(Ordering::Acquire)
    }

    /// Raise the capacity to `blocks` (never lowers it).
    pub fn grow_to(&self, blocks: u64) {
        self.0.fetch_max(blocks, Ordering::Release);
    }
}

impl From<u64> for BlockCount {
    fn from(blocks: u64) -> BlockCount {
        BlockCount(AtomicU64::new(blocks))
    }
}

impl Clone for BlockCount {
    fn clone(&self) -> BlockCount {
        self.get().into()
    }
}

impl PartialEq for BlockCount {
    fn eq(&self, other: &BlockCount) -> bool {
        self.get() == other.get()
    }
}

impl Eq for BlockCount {}

impl std::fmt::Debug for BlockCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

impl DiskIdentity {
    /// Whether this LU has `command` at all. A fully provisioned LU (LBPU = 0) has no UNMAP
    /// (SBC-4: LBPU = 0 means UNMAP is not supported): it answers INVALID COMMAND OPERATION
    /// CODE and REPORT SUPPORTED OPERATION CODES leaves it out, as LIO does.
    pub fn offers(&self, command: Command) -> bool {
        self.thin || command != Command::Unmap
    }

    /// The port groups, never empty.
    pub fn groups(&self) -> Vec<super::alua::PortGroup> {
        if self.port_groups.is_empty() {
            vec![Default::default()]
        } else {
            self.port_groups.clone()
        }
    }

    /// The group (= target port) with relative target port id `port`; the first group when
    /// the port is unknown or not given.
    pub fn port(&self, port: Option<u16>) -> super::alua::PortGroup {
        let first = self.port_groups.first().copied().unwrap_or_default();
        port.and_then(|p| self.port_groups.iter().find(|g| g.id == p).copied())
            .unwrap_or(first)
    }
}

/// Which reset the transport's task management function performed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetKind {
    /// LOGICAL UNIT RESET.
    LogicalUnit,
    /// TARGET WARM RESET (a SAM-5 hard reset).
    TargetWarm,
    /// TARGET COLD RESET (a SAM-5 power on).
    TargetCold,
}

/// ASC 27h ASCQ 02h: writes refused because the Control page SWP bit is set.
const SOFTWARE_WRITE_PROTECTED: Sense = Sense::new(SenseKey::DataProtect, 0x27, 0x02);
const NO_SENSE: Sense = Sense::new(SenseKey::NoSense, 0, 0);
/// Hard reset: SAM-5 leaves the exact code open; 29h/02h is the conventional one.
const HARD_RESET_OCCURRED: Sense = Sense::new(SenseKey::UnitAttention, 0x29, 0x02);
const POWER_ON_ONLY: Sense = Sense::new(SenseKey::UnitAttention, 0x29, 0x01);

#[derive(Debug, Default)]
struct LuState {
    mode: ModePages,
    /// Nexuses with PREVENT ALLOW MEDIUM REMOVAL in effect (SBC-3 §5.12: per I_T nexus, and
    /// removal is prevented while any nexus prevents it).
    prevent: HashSet<NexusId>,
    /// Relative target port id each I_T nexus came in through (set at login).
    target_ports: HashMap<NexusId, u16>,
}

/// A disk logical unit. Shared by all sessions; all mutation goes through interior locks.
#[derive(Debug)]
pub struct DiskLu {
    identity: DiskIdentity,
    state: Mutex<LuState>,
    unit_attentions: super::unit_attention::UnitAttentions,
    copy_results: super::copy_results::CopyResults,
    /// SPC-2 and persistent reservations (`pr/`, `reserve.rs`).
    reservations: super::pr::Reservations,
    /// Mirrors of mode page bits the hot path needs without taking the state lock.
    swp: AtomicBool,
    d_sense: AtomicBool,
}

impl DiskLu {
    pub fn new(identity: DiskIdentity) -> DiskLu {
        DiskLu {
            identity,
            state: Mutex::new(LuState::default()),
            unit_attentions: Default::default(),
            copy_results: Default::default(),
            reservations: Default::default(),
            swp: AtomicBool::new(false),
            d_sense: AtomicBool::new(false),
        }
    }

    pub fn identity(&self) -> &DiskIdentity {
        &self.identity
    }

    fn state(&self) -> MutexGuard<'_, LuState> {
        // Poisoning would only follow a panic elsewhere; the state stays consistent because
        // every update is a single assignment, so keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_mode(&self, state: &mut LuState, pages: ModePages) {
        self.swp.store(pages.swp(), Ordering::Release);
        self.d_sense.store(pages.d_sense(), Ordering::Release);
        state.mode = pages;
    }

    fn write_protect(&self) -> Option<Sense> {
        if self.identity.read_only {
            Some(Sense::WRITE_PROTECTED)
        } else if self.swp.load(Ordering::Acquire) {
            Some(SOFTWARE_WRITE_PROTECTED)
        } else {
            None
        }
    }

    /// CHECK CONDITION carrying `sense` in the format the Control page D_SENSE bit selects.
    pub fn sense_response(&self, sense: Sense) -> Response {
        let bytes = if self.d_sense.load(Ordering::Acquire) {
            Bytes::from(sense.to_descriptor())
        } else {
            Bytes::copy_from_slice(&sense.to_fixed())
        };
        Response {
            status: super::Status::CheckCondition,
            data: Bytes::new(),
            sense: bytes,
            reports_in_data: None,
        }
    }

    fn respond(&self, result: Result<Bytes, Sense>) -> Plan {
        Plan::Respond(match result {
            Ok(data) => Response::good(data),
            Err(sense) => self.sense_response(sense),
        })
    }

    /// Decides what to do with one command from `nexus`.
    pub fn plan(&self, nexus: NexusId, cdb: &[u8]) -> Plan {
        // SAM-5 §5.14: a pending unit attention pre-empts every command except INQUIRY,
        // REPORT LUNS and REQUEST SENSE, before the CDB is even looked at.
        let opcode = cdb.first().copied().unwrap_or(0);
        if !matches!(opcode, 0x12 | 0xA0 | 0x03) {
            if let Some(ua) = self.unit_attentions.take(nexus) {
                return Plan::Respond(self.sense_response(ua));
            }
        }
        let (info, cdb) = match opcodes::decode(cdb) {
            Ok(decoded) => decoded,
            Err(sense) => return Plan::Respond(self.sense_response(sense)),
        };
        if !self.identity.offers(info.command) {
            return Plan::Respond(self.sense_response(Sense::INVALID_OPCODE));
        }
        if self.reservations.conflicts(nexus, info.command, cdb) {
            return Plan::Respond(Response::conflict());
        }
        match self.dispatch(nexus, info.command, cdb) {
            Ok(plan) => plan,
            Err(sense) => Plan::Respond(self.sense_response(sense)),
        }
    }

    fn dispatch(&self, nexus: NexusId, command: Command, cdb: Cdb<'_>) -> Result<Plan, Sense> {
        use Command::*;
        let id = &self.identity;
        Ok(match command {
            TestUnitReady => Plan::Respond(Response::good_empty()),
            RequestSense => Plan::Respond(self.request_sense(nexus, cdb)),
            Inquiry => self.respond(inquiry::inquiry(id, self.target_port(nexus), cdb)),
            ReadCapacity10 => self.respond(capacity::read_capacity_10(id, cdb)),
            ReadCapacity16 => self.respond(capacity::read_capacity_16(id, cdb)),
            ReportSupportedOperationCodes => self.respond(rsoc::report(cdb, |c| id.offers(c))),
            ModeSense6 | ModeSense10 => {
                let wp = self.write_protect().is_some();
                let state = self.state();
                self.respond(mode::mode_sense(
                    id,
                    &state.mode,
                    wp,
                    cdb,
                    command == ModeSense10,
                ))
            }
            ModeSelect6 | ModeSelect10 => {
                match mode::mode_select_length(cdb, command == ModeSelect10)? {
                    0 => Plan::Respond(Response::good_empty()),
                    len => Plan::Parameters { len },
                }
            }
            StartStopUnit => self.start_stop_unit(cdb)?,
            PreventAllowMediumRemoval => {
                let mut state = self.state();
                if cdb.bit(4, 0) {
                    state.prevent.insert(nexus);
                } else {
                    state.prevent.remove(&nexus);
                }
                Plan::Respond(Response::good_empty())
            }
            // The transport owns the LUN inventory and answers REPORT LUNS before asking the
            // LU; an LU asked directly can only vouch for a valid CDB and an empty inventory.
            ReportLuns => Plan::Respond(report_luns::report_luns(cdb.bytes(), &[])),
            ExtendedCopy => match cdb.be32(10) {
                0 => Plan::Respond(Response::good_empty()),
                // Refused before any Data-Out is buffered: a real list is a few KiB at most.
                len if len > super::xcopy::MAX_PARAMETER_LIST_LENGTH => {
                    return Err(Sense::PARAMETER_LIST_LENGTH_ERROR)
                }
                len => Plan::Parameters { len },
            },
            ReceiveCopyResults => self.respond(self.copy_results.receive(nexus, cdb)),
            ReportTargetPortGroups => self.respond(super::alua::report_target_port_groups(id, cdb)),
            CompareAndWrite => caw::plan(id, cdb, self.write_protect())?,
            WriteSame10 | WriteSame16 => {
                write_same::plan(id, cdb, command == WriteSame16, self.write_protect())?
            }
            Unmap => unmap::plan(id, cdb, self.write_protect())?,
            GetLbaStatus => lba_status::plan(id, cdb)?,
            Reserve6 | Reserve10 | Release6 | Release10 => {
                let reserve = matches!(command, Reserve6 | Reserve10);
                self.refusal(
                    self.reservations
                        .reserve_release(nexus, reserve)
                        .map(|()| Bytes::new()),
                )
            }
            PersistentReserveIn => self.refusal(self.reservations.prin(cdb)),
            PersistentReserveOut => match cdb.be32(5) {
                super::pr::prout::PARAM_LEN => Plan::Parameters {
                    len: super::pr::prout::PARAM_LEN,
                },
                _ => return Err(Sense::PARAMETER_LIST_LENGTH_ERROR),
            },
            _ => rw::plan(id, command, cdb, self.write_protect())?,
        })
    }

    fn refusal(&self, result: Result<Bytes, super::pr::Refusal>) -> Plan {
        match result {
            Ok(data) => Plan::Respond(Response::good(data)),
            Err(super::pr::Refusal::Conflict) => Plan::Respond(Response::conflict()),
            Err(super::pr::Refusal::Sense(sense)) => Plan::Respond(self.sense_response(sense)),
        }
    }

    fn request_sense(&self, nexus: NexusId, cdb: Cdb<'_>) -> Response {
        let pending = self.unit_attentions.take(nexus);
        let sense = pending.unwrap_or(NO_SENSE);
        let d = if cdb.bit(1, 0) {
            sense.to_descriptor()
        } else {
            sense.to_fixed().to_vec()
        };
        Response {
            reports_in_data: pending,
            ..Response::good(trim(d, usize::from(cdb.u8(4))))
        }
    }

    /// SBC-3 §5.25. The medium is not removable and the LU is shared by every host, so START
    /// and STOP are accepted without stopping anything (stopping would fail every other
    /// initiator's I/O); power conditions are accepted since there are none to enter.
    fn start_stop_unit(&self, cdb: Cdb<'_>) -> Result<Plan, Sense> {
        let power_condition = cdb.u8(4) >> 4;
        if !matches!(power_condition, 0x0 | 0x1 | 0x2 | 0x3 | 0x7 | 0xA | 0xB) {
            return Err(Sense::invalid_cdb_field(4, Some(7)));
        }
        let loej = cdb.bit(4, 1);
        let start = cdb.bit(4, 0);
        if power_condition == 0 && loej && !start {
            if !self.state().prevent.is_empty() {
                return Err(Sense::MEDIUM_REMOVAL_PREVENTED);
            }
            // Eject of a non-removable medium cannot be performed.
            return Err(Sense::invalid_cdb_field(4, Some(1)));
        }
        Ok(Plan::Respond(Response::good_empty()))
    }

    /// Finishes a [`Plan::Parameters`] command (MODE SELECT) once its data has arrived.
    pub fn apply_parameters(&self, nexus: NexusId, cdb: &[u8], data: &[u8]) -> Plan {
        if cdb.first() == Some(&0x83) {
            return self.extended_copy(nexus, cdb, data);
        }
        if let Ok((info, c)) = opcodes::decode(cdb) {
            if info.command == Command::Unmap {
                return unmap::parse(&self.identity, data)
                    .unwrap_or_else(|sense| Plan::Respond(self.sense_response(sense)));
            }
            if info.command == Command::PersistentReserveOut {
                let r = self
                    .reservations
                    .prout(nexus, c, data, &self.unit_attentions);
                return self.refusal(r.map(|()| Bytes::new()));
            }
        }
        Plan::Respond(self.mode_select(nexus, cdb, data))
    }

    /// EXTENDED COPY once its parameter list has arrived: a copy plan for the transport.
    fn extended_copy(&self, nexus: NexusId, cdb: &[u8], data: &[u8]) -> Plan {
        if let Err(sense) = opcodes::decode(cdb) {
            return Plan::Respond(self.sense_response(sense));
        }
        let started = super::xcopy::parse(data).and_then(|req| {
            self.copy_results
                .start(nexus, req.list_id, req.segments.len())?;
            Ok(Plan::Copy {
                list_id: req.list_id,
                segments: req.segments,
            })
        });
        started.unwrap_or_else(|sense| Plan::Respond(self.sense_response(sense)))
    }

    #[cfg(test)]
    fn apply_parameters_response(&self, nexus: NexusId, cdb: &[u8], data: &[u8]) -> Response {
        match self.apply_parameters(nexus, cdb, data) {
            Plan::Respond(r) => r,
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    /// GET LBA STATUS parameter data for `extents` starting at byte `offset`, cut to the
    /// CDB's allocation length (SBC-3 §5.16).
    pub fn lba_status_response(
        &self,
        offset: u64,
        extents: &[crate::backend::Extent],
        alloc_len: u32,
    ) -> Response {
        Response::good(lba_status::response(
            self.identity.block_size,
            offset,
            extents,
            alloc_len,
        ))
    }

    /// The outcome of an EXTENDED COPY, for RECEIVE COPY RESULTS.
    /// Whether EXTENDED COPY, acting for `nexus`, may read this LU's medium (or write it,
    /// with `write`): the reservations and the software write protect that would refuse the
    /// host's own command refuse its copy too. A refusal ends the copy with COPY ABORTED:
    /// WRITE PROTECTED as for a read-only LU, or COPY TARGET DEVICE NOT REACHABLE for a
    /// reservation (there is no sense code for one; the host then copies by reading and
    /// writing itself, and meets the RESERVATION CONFLICT there).
    pub fn copy_access(&self, nexus: NexusId, write: bool) -> Result<(), Sense> {
        if write && self.write_protect().is_some() {
            return Err(Sense::new(super::SenseKey::CopyAborted, 0x27, 0x00));
        }
        if self.reservations.refuses_media(nexus, write) {
            return Err(super::xcopy::COPY_TARGET_NOT_REACHABLE);
        }
        Ok(())
    }

    pub fn copy_finished(
        &self,
        nexus: NexusId,
        list_id: Option<u8>,
        result: Result<u64, Sense>,
    ) -> Response {
        let record = result.as_ref().map(|&bytes| bytes).map_err(|_| ());
        self.copy_results.finished(nexus, list_id, record);
        match result {
            Ok(_) => Response::good_empty(),
            Err(sense) => self.sense_response(sense),
        }
    }

    fn mode_select(&self, nexus: NexusId, cdb: &[u8], data: &[u8]) -> Response {
        let (info, _) = match opcodes::decode(cdb) {
            Ok(decoded) => decoded,
            Err(sense) => return self.sense_response(sense),
        };
        let ten = match info.command {
            Command::ModeSelect6 => false,
            Command::ModeSelect10 => true,
            _ => return self.sense_response(Sense::INVALID_OPCODE),
        };
        let mut state = self.state();
        match mode::mode_select(&self.identity, &state.mode, data, ten) {
            Ok(pages) => {
                if pages != state.mode {
                    self.set_mode(&mut state, pages);
                    drop(state);
                    // SPC-4 §7.5.2: other nexuses learn that shared parameters changed.
                    self.unit_attentions
                        .establish_others(nexus, Sense::MODE_PARAMETERS_CHANGED);
                }
                Response::good_empty()
            }
            Err(sense) => {
                drop(state);
                self.sense_response(sense)
            }
        }
    }

    /// A new I_T nexus (login) from initiator port `port` through the target port with
    /// relative target port id `target_port` (the iSCSI target portal group tag of the portal
    /// the session logged in on): it must first hear that it missed everything before now.
    /// Persistent reservations are registered to the pair (the I_T nexus as it outlives the
    /// session); the target port also decides which port group VPD page 83h reports.
    pub fn nexus_added(&self, nexus: NexusId, port: &InitiatorPort, target_port: u16) {
        self.unit_attentions
            .add_nexus(nexus, Sense::POWER_ON_OCCURRED);
        self.nexus_attached(nexus, port, target_port);
    }

    /// An existing I_T nexus starts reaching this LU (a VVol bound for its host after login):
    /// it learns the nexus's initiator and target ports, but no power-on condition applies,
    /// since nothing was reset (the bind itself is announced on the PE).
    pub fn nexus_attached(&self, nexus: NexusId, port: &InitiatorPort, target_port: u16) {
        self.unit_attentions.attach_nexus(nexus);
        self.state().target_ports.insert(nexus, target_port);
        self.reservations.nexus_added(nexus, port, target_port);
    }

    /// The target port (and so port group) `nexus` reaches this LU through; a nexus never
    /// registered with [`DiskLu::nexus_added`] gets the first group.
    fn target_port(&self, nexus: NexusId) -> super::alua::PortGroup {
        let port = self.state().target_ports.get(&nexus).copied();
        self.identity.port(port)
    }

    /// I_T nexus loss or logout: its unit attentions, PREVENT state and SPC-2 reservation die
    /// with it; its port's persistent registrations do not.
    pub fn nexus_removed(&self, nexus: NexusId) {
        self.unit_attentions.remove_nexus(nexus);
        {
            let mut state = self.state();
            state.prevent.remove(&nexus);
            state.target_ports.remove(&nexus);
        }
        self.copy_results.nexus_removed(nexus);
        self.reservations.nexus_removed(nexus);
    }

    /// Attaches the APTPL store and restores a persistent reservation saved in it.
    pub fn set_pr_persistence(&self, store: Arc<dyn PrPersistence>) -> Result<(), String> {
        self.reservations.set_persistence(store)
    }

    /// I_T nexuses a PREEMPT AND ABORT preempted since the last call: the transport must
    /// abort their tasks on this LU (SPC-4 §5.9.11.5). Their unit attentions are already
    /// established.
    pub fn take_preempted_nexuses(&self) -> Vec<NexusId> {
        self.reservations.take_aborts()
    }

    /// Applies a reset's side effects: PREVENT state cleared, mode pages back to defaults
    /// (we have no saved values), and a reset unit attention for every nexus.
    pub fn reset(&self, kind: ResetKind) {
        let ua = match kind {
            ResetKind::LogicalUnit => Sense::BUS_DEVICE_RESET,
            ResetKind::TargetWarm => HARD_RESET_OCCURRED,
            ResetKind::TargetCold => POWER_ON_ONLY,
        };
        {
            let mut state = self.state();
            state.prevent.clear();
            self.set_mode(&mut state, ModePages::default());
        }
        self.reservations.reset();
        self.unit_attentions.establish(None, ua);
    }

    /// Queues a unit attention for one nexus, or for every known nexus when `nexus` is None.
    pub fn establish_unit_attention(&self, nexus: Option<NexusId>, sense: Sense) {
        self.unit_attentions.establish(nexus, sense);
    }

    /// A unit attention [`DiskLu::plan`] reported to `nexus` went out with no answer (the
    /// command was aborted first). SAM-5 §5.14 clears a condition once it is reported, and
    /// this one was not, so it stays pending for the next command.
    pub fn unit_attention_unreported(&self, nexus: NexusId, sense: Sense) {
        self.unit_attentions.restore(nexus, sense);
    }

    /// REPORT LUNS was answered for `nexus` (by the transport): SPC-4 §6.33 says that clears
    /// its REPORTED LUNS DATA HAS CHANGED unit attention.
    pub fn report_luns_sent(&self, nexus: NexusId) {
        let s = Sense::REPORTED_LUNS_DATA_CHANGED;
        self.unit_attentions.clear(nexus, s.asc, s.ascq);
    }
}

/// Finishes a [`Plan::Compare`] (VERIFY with BYTCHK=1): GOOD, or MISCOMPARE DURING VERIFY
/// OPERATION with INFORMATION set to the byte offset of the first difference.
pub fn compare_result(sense_source: &DiskLu, expected: &[u8], actual: &[u8]) -> Response {
    let first_diff = expected
        .iter()
        .zip(actual)
        .position(|(a, b)| a != b)
        .or_else(|| (expected.len() != actual.len()).then(|| expected.len().min(actual.len())));
    match first_diff {
        None => Response::good_empty(),
        Some(offset) => sense_source
            .sense_response(Sense::MISCOMPARE_DURING_VERIFY.with_information(offset as u64)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::scsi::Status;

    /// A target with two port groups: 1 active/optimized, 2 active/non-optimized.
    pub(crate) fn two_group_identity() -> DiskIdentity {
        use crate::scsi::{AluaState, PortGroup};
        let mut id = identity();
        id.port_groups = vec![
            PortGroup {
                id: 1,
                state: AluaState::ActiveOptimized,
            },
            PortGroup {
                id: 2,
                state: AluaState::ActiveNonOptimized,
            },
        ];
        id
    }

    pub(crate) fn identity() -> DiskIdentity {
        DiskIdentity {
            vendor: "VVOLD".into(),
            product: "VVOLD DISK".into(),
            revision: "0001".into(),
            serial: "SN000042".into(),
            naa: [
                0x60, 0x01, 0x40, 0x50, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
            ],
            block_size: 512,
            num_blocks: 2048.into(),
            read_only: false,
            port_groups: vec![Default::default()],
            conglomerate: false,
            administrative: false,
            thin: true,
        }
    }

    const A: NexusId = NexusId(1);
    const B: NexusId = NexusId(2);

    pub(crate) fn port(n: NexusId) -> InitiatorPort {
        InitiatorPort::new("iqn.2026-11.test:host", [0x40, 0, 0, 0, 0, n.0 as u8])
    }

    fn respond(p: Plan) -> Response {
        match p {
            Plan::Respond(r) => r,
            other => panic!("expected a response, got {other:?}"),
        }
    }

    fn sense_of(r: &Response) -> (u8, u8, u8) {
        assert_eq!(r.status, Status::CheckCondition);
        if r.sense[0] & 0x7F == 0x72 {
            (r.sense[1], r.sense[2], r.sense[3])
        } else {
            (r.sense[2], r.sense[12], r.sense[13])
        }
    }

    const TUR: [u8; 6] = [0; 6];
    const READ10: [u8; 10] = [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    const WRITE10: [u8; 10] = [0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0];

    #[test]
    fn is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<DiskLu>();
    }

    #[test]
    fn unit_attention_after_login_except_inquiry() {
        let lu = DiskLu::new(identity());
        lu.nexus_added(A, &port(A), 1);
        let r = respond(lu.plan(A, &[0x12, 0, 0, 0, 36, 0]));
        assert_eq!(r.status, Status::Good);
        assert_eq!(sense_of(&respond(lu.plan(A, &TUR))), (6, 0x29, 0));
        assert_eq!(respond(lu.plan(A, &TUR)).status, Status::Good);
        assert_eq!(
            lu.plan(A, &READ10),
            Plan::Read {
                offset: 0,
                len: 512
            }
        );
    }

    #[test]
    fn unit_attention_pre_empts_invalid_opcode() {
        let lu = DiskLu::new(identity());
        lu.nexus_added(A, &port(A), 1);
        assert_eq!(sense_of(&respond(lu.plan(A, &[0xC0; 16]))), (6, 0x29, 0));
        assert_eq!(sense_of(&respond(lu.plan(A, &[0xC0; 16]))), (5, 0x20, 0));
    }

    #[test]
    fn a_fully_provisioned_lu_has_no_unmap() {
        const UNMAP: [u8; 10] = [0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0];
        const RSOC_ALL: [u8; 12] = [0xA3, 0x0C, 0, 0, 0, 0, 0, 0, 0x40, 0, 0, 0];
        let lists_unmap = |lu: &DiskLu| {
            let all = respond(lu.plan(A, &RSOC_ALL)).data;
            all[4..].chunks(8).any(|c| c[0] == 0x42)
        };
        let thick = DiskLu::new(DiskIdentity {
            thin: false,
            ..identity()
        });
        assert_eq!(sense_of(&respond(thick.plan(A, &UNMAP))), (5, 0x20, 0));
        assert!(!lists_unmap(&thick));
        let thin = DiskLu::new(identity());
        assert_eq!(thin.plan(A, &UNMAP), Plan::Parameters { len: 24 });
        assert!(lists_unmap(&thin));
    }

    #[test]
    fn request_sense_returns_and_clears_ua() {
        let lu = DiskLu::new(identity());
        lu.nexus_added(A, &port(A), 1);
        let r = respond(lu.plan(A, &[0x03, 0, 0, 0, 18, 0]));
        assert_eq!(r.status, Status::Good);
        assert_eq!((r.data[0], r.data[2], r.data[12]), (0x70, 6, 0x29));
        let r = respond(lu.plan(A, &[0x03, 1, 0, 0, 252, 0]));
        assert_eq!(r.data.as_ref(), &[0x72, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(r.unit_attention(), None, "no condition was pending");
    }

    #[test]
    fn request_sense_names_the_unit_attention_its_cut_data_reports() {
        let lu = DiskLu::new(identity());
        lu.nexus_added(A, &port(A), 1);
        // Eight bytes of fixed sense stop before the ASC: the answer still names the
        // condition, for an abort that drops it to put back.
        let r = respond(lu.plan(A, &[0x03, 0, 0, 0, 8, 0]));
        assert_eq!((r.status, r.data.len()), (Status::Good, 8));
        let ua = r.unit_attention().expect("the power-on condition");
        assert_eq!((ua.key as u8, ua.asc), (6, 0x29));
        lu.unit_attention_unreported(A, ua);
        let again = respond(lu.plan(A, &[0x03, 0, 0, 0, 18, 0]));
        assert_eq!((again.data[2], again.data[12]), (6, 0x29));
    }

    #[test]
    fn resets_clear_prevent_and_report_per_kind() {
        let lu = DiskLu::new(identity());
        lu.nexus_added(A, &port(A), 1);
        lu.nexus_added(B, &port(B), 1);
        respond(lu.plan(A, &[0x03, 0, 0, 0, 18, 0]));
        respond(lu.plan(B, &[0x03, 0, 0, 0, 18, 0]));
        respond(lu.plan(A, &[0x1E, 0, 0, 0, 1, 0]));
        let eject = [0x1B, 0, 0, 0, 0x02, 0];
        assert_eq!(sense_of(&respond(lu.plan(B, &eject))), (5, 0x53, 0x02));
        lu.reset(ResetKind::LogicalUnit);
        assert_eq!(sense_of(&respond(lu.plan(A, &TUR))), (6, 0x29, 0x03));
        assert_eq!(sense_of(&respond(lu.plan(B, &TUR))), (6, 0x29, 0x03));
        assert_eq!(sense_of(&respond(lu.plan(B, &eject))), (5, 0x24, 0));
        lu.reset(ResetKind::TargetWarm);
        assert_eq!(sense_of(&respond(lu.plan(A, &TUR))), (6, 0x29, 0x02));
        lu.reset(ResetKind::TargetCold);
        assert_eq!(sense_of(&respond(lu.plan(A, &TUR))), (6, 0x29, 0x01));
    }

    #[test]
    fn nexus_loss_releases_prevent() {
        let lu = DiskLu::new(identity());
        respond(lu.plan(A, &[0x1E, 0, 0, 0, 1, 0]));
        let eject = [0x1B, 0, 0, 0, 0x02, 0];
        assert_eq!(sense_of(&respond(lu.plan(A, &eject))), (5, 0x53, 0x02));
        lu.nexus_removed(A);
        assert_eq!(sense_of(&respond(lu.plan(B, &eject))), (5, 0x24, 0));
    }

    #[test]
    fn start_stop_unit_variants() {
        let lu = DiskLu::new(identity());
        for b4 in [0x00, 0x01, 0x03, 0x11, 0x71, 0xA0] {
            assert_eq!(
                respond(lu.plan(A, &[0x1B, 0, 0, 0, b4, 0])).status,
                Status::Good
            );
        }
        let r = respond(lu.plan(A, &[0x1B, 0, 0, 0, 0x40, 0]));
        assert_eq!(sense_of(&r), (5, 0x24, 0));
        assert_eq!(&r.sense[15..18], &[0x80 | 0x40 | 0x08 | 7, 0, 4]);
    }

    #[test]
    fn mode_select_swp_protects_writes_and_notifies_others() {
        let lu = DiskLu::new(identity());
        lu.nexus_added(A, &port(A), 1);
        lu.nexus_added(B, &port(B), 1);
        respond(lu.plan(A, &TUR));
        respond(lu.plan(B, &TUR));
        let select = [0x15, 0x10, 0, 0, 16, 0];
        assert_eq!(lu.plan(A, &select), Plan::Parameters { len: 16 });
        let data = [
            0, 0, 0, 0, 0x0A, 0x0A, 0x22, 0x10, 0x08, 0, 0, 0, 0xFF, 0xFF, 0, 0,
        ];
        assert_eq!(
            lu.apply_parameters_response(A, &select, &data).status,
            Status::Good
        );
        assert_eq!(
            lu.plan(A, &READ10),
            Plan::Read {
                offset: 0,
                len: 512
            }
        );
        assert_eq!(sense_of(&respond(lu.plan(A, &WRITE10))), (7, 0x27, 0x02));
        assert_eq!(sense_of(&respond(lu.plan(B, &TUR))), (6, 0x2A, 0x01));
        let ms = respond(lu.plan(A, &[0x1A, 0x08, 0x0A, 0, 255, 0]));
        assert_eq!(ms.data[2], 0x90, "WP and DPOFUA");
        let mut clear = data;
        clear[8] = 0;
        assert_eq!(
            lu.apply_parameters_response(A, &select, &clear).status,
            Status::Good
        );
        assert!(matches!(lu.plan(A, &WRITE10), Plan::Write { .. }));
    }

    #[test]
    fn d_sense_switches_sense_format() {
        let lu = DiskLu::new(identity());
        let select = [0x15, 0x10, 0, 0, 16, 0];
        let data = [
            0, 0, 0, 0, 0x0A, 0x0A, 0x26, 0x10, 0, 0, 0, 0, 0xFF, 0xFF, 0, 0,
        ];
        assert_eq!(
            lu.apply_parameters_response(A, &select, &data).status,
            Status::Good
        );
        let mut read16 = [0u8; 16];
        read16[0] = 0x88;
        read16[2..10].copy_from_slice(&[0xFF; 8]);
        read16[13] = 1;
        let r = respond(lu.plan(A, &read16));
        assert_eq!(r.sense[0], 0x72);
        assert_eq!(sense_of(&r), (5, 0x21, 0));
        let bad = [
            0, 0, 0, 0, 0x0A, 0x0A, 0x27, 0x10, 0, 0, 0, 0, 0xFF, 0xFF, 0, 0,
        ];
        let r = lu.apply_parameters_response(A, &select, &bad);
        assert_eq!(sense_of(&r), (5, 0x26, 0));
    }

    #[test]
    fn read_only_identity() {
        let lu = DiskLu::new(DiskIdentity {
            read_only: true,
            ..identity()
        });
        assert_eq!(sense_of(&respond(lu.plan(A, &WRITE10))), (7, 0x27, 0));
        let wv = [0x2E, 0x02, 0, 0, 0, 0, 0, 0, 1, 0];
        assert_eq!(sense_of(&respond(lu.plan(A, &wv))), (7, 0x27, 0));
        let ms = respond(lu.plan(A, &[0x1A, 0, 0x3F, 0, 255, 0]));
        assert_eq!(ms.data[2] & 0x80, 0x80);
    }

    #[test]
    fn protocol_endpoint_identity() {
        let lu = DiskLu::new(DiskIdentity {
            conglomerate: true,
            administrative: true,
            read_only: true,
            num_blocks: 1.into(),
            ..identity()
        });
        let inq = respond(lu.plan(A, &[0x12, 0, 0, 0, 96, 0]));
        assert_eq!(&inq.data[..2], &[0x00, 0x40]);
        let vpd = respond(lu.plan(A, &[0x12, 1, 0x86, 0, 64, 0]));
        assert_eq!(vpd.data[8] >> 5, 0b001);
        let rc = respond(lu.plan(A, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
        assert_eq!(rc.data.as_ref(), &[0, 0, 0, 0, 0, 0, 2, 0]);
        // A read-only medium of its reported size (the array gives it a null device).
        assert!(matches!(lu.plan(A, &READ10), Plan::Read { .. }));
        assert_eq!(sense_of(&respond(lu.plan(A, &WRITE10))), (7, 0x27, 0));
        let sync = [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(lu.plan(A, &sync), Plan::Flush);
        assert_eq!(respond(lu.plan(A, &TUR)).status, Status::Good);
    }

    #[test]
    fn miscompare_reports_first_difference() {
        let lu = DiskLu::new(identity());
        assert_eq!(
            compare_result(&lu, &[1, 2, 3], &[1, 2, 3]).status,
            Status::Good
        );
        let r = compare_result(&lu, &[1, 2, 3, 4], &[1, 2, 9, 4]);
        assert_eq!(sense_of(&r), (0x0E, 0x1D, 0));
        assert_eq!(r.sense[0], 0xF0);
        assert_eq!(&r.sense[3..7], &[0, 0, 0, 2]);
        let r = compare_result(&lu, &[1, 2], &[1]);
        assert_eq!(&r.sense[3..7], &[0, 0, 0, 1]);
    }

    #[test]
    fn unsupported_and_malformed_commands_never_panic() {
        let lu = DiskLu::new(identity());
        assert_eq!(sense_of(&respond(lu.plan(A, &[]))), (5, 0x20, 0));
        assert_eq!(sense_of(&respond(lu.plan(A, &[0xC1; 10]))), (5, 0x20, 0));
        for len in 0..16 {
            for op in 0..=255u8 {
                let mut cdb = vec![0xFFu8; len];
                if let Some(b) = cdb.first_mut() {
                    *b = op;
                }
                let _ = lu.plan(A, &cdb);
                let _ = lu.apply_parameters_response(A, &cdb, &cdb);
            }
        }
    }

    #[test]
    fn extended_copy_plans_and_records_per_nexus() {
        use crate::scsi::xcopy::tests::{b2b, cscd, list};
        let lu = DiskLu::new(identity());
        let mut xcopy = [0u8; 16];
        xcopy[0] = 0x83;
        assert_eq!(respond(lu.plan(A, &xcopy)).status, Status::Good);
        xcopy[10..14].copy_from_slice(&(1u32 << 20).to_be_bytes());
        assert_eq!(sense_of(&respond(lu.plan(A, &xcopy))), (5, 0x1A, 0));
        let data = list(5, 0, &[cscd(&identity().naa, 512)], &[b2b(0, 0, 4, 0, 8)]);
        xcopy[10..14].copy_from_slice(&(data.len() as u32).to_be_bytes());
        assert_eq!(lu.plan(A, &xcopy), Plan::Parameters { len: 76 });
        let Plan::Copy { list_id, segments } = lu.apply_parameters(A, &xcopy, &data) else {
            panic!("expected a copy plan");
        };
        assert_eq!((list_id, segments[0].destination_offset), (Some(5), 4096));
        // The same list identifier again while that copy runs.
        assert_eq!(
            sense_of(&respond(lu.apply_parameters(A, &xcopy, &data))),
            (5, 0x00, 0x16)
        );
        let status = |n| {
            let mut c = [0u8; 16];
            c[0] = 0x84;
            c[2] = 5;
            c[13] = 64;
            respond(lu.plan(n, &c))
        };
        assert_eq!(status(A).data[4], 0x00, "in progress");
        assert_eq!(lu.copy_finished(A, Some(5), Ok(2048)).status, Status::Good);
        assert_eq!(&status(A).data[4..12], &[1, 0, 1, 0, 0, 0, 8, 0]);
        assert_eq!(sense_of(&status(B)), (5, 0x24, 0));
        let r = lu.copy_finished(
            A,
            Some(5),
            Err(crate::scsi::xcopy::COPY_TARGET_NOT_REACHABLE),
        );
        assert_eq!(sense_of(&r), (0x0A, 0x0D, 0x02));
        assert_eq!(status(A).data[4], 0x02);
    }

    #[test]
    fn alua_is_reported_in_inquiry_and_rtpg() {
        let lu = DiskLu::new(identity());
        let inq = respond(lu.plan(A, &[0x12, 0, 0, 0, 96, 0]));
        assert_eq!(inq.data[5], 0x18, "TPGS=01b, 3PC");
        let rtpg = [0xA3, 0x0A, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0];
        let r = respond(lu.plan(A, &rtpg));
        assert_eq!(&r.data[..8], &[0, 0, 0, 12, 0, 3, 0, 1]);
        let set = [0xA4, 0x0A, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0];
        assert_eq!(sense_of(&respond(lu.plan(A, &set))), (5, 0x20, 0));
    }

    #[test]
    fn vpd_83h_names_the_nexus_target_port() {
        let id = two_group_identity();
        let lu = DiskLu::new(id);
        lu.nexus_added(A, &port(A), 2);
        lu.nexus_added(B, &port(B), 1);
        let vpd83 = [0x12, 1, 0x83, 0, 255, 0];
        let ports = |n: NexusId| {
            let d = respond(lu.plan(n, &vpd83)).data;
            (d[30..32].to_vec(), d[38..40].to_vec())
        };
        // The login unit attention comes first; INQUIRY is exempt from it anyway.
        assert_eq!(ports(A), (vec![0, 2], vec![0, 2]));
        assert_eq!(ports(B), (vec![0, 1], vec![0, 1]));
        assert_eq!(
            ports(NexusId(9)),
            (vec![0, 1], vec![0, 1]),
            "unknown: first group"
        );
        lu.nexus_removed(A);
        assert_eq!(ports(A), (vec![0, 1], vec![0, 1]));
        // Every nexus sees both groups in REPORT TARGET PORT GROUPS.
        let rtpg = [0xA3, 0x0A, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0];
        for n in [B, NexusId(9)] {
            let mut r = respond(lu.plan(n, &rtpg));
            if r.status != Status::Good {
                r = respond(lu.plan(n, &rtpg)); // after the power-on unit attention
            }
            assert_eq!(&r.data[..4], &[0, 0, 0, 24]);
            assert_eq!((r.data[4], r.data[7]), (0x00, 1));
            assert_eq!((r.data[16], r.data[19]), (0x01, 2));
        }
    }

    #[test]
    fn attached_nexus_has_its_port_but_no_power_on_ua() {
        let lu = DiskLu::new(identity());
        lu.nexus_attached(A, &port(A), 1);
        let tur = respond(lu.plan(A, &[0, 0, 0, 0, 0, 0]));
        assert_eq!(tur.status, Status::Good, "no unit attention after a bind");
        lu.nexus_added(B, &port(B), 1);
        assert_eq!(
            sense_of(&respond(lu.plan(B, &[0, 0, 0, 0, 0, 0]))),
            (6, 0x29, 0)
        );
    }

    #[test]
    fn vaai_commands_dispatch() {
        let lu = DiskLu::new(identity());
        let mut caw = [0u8; 16];
        caw[0] = 0x89;
        caw[13] = 1;
        assert_eq!(
            lu.plan(A, &caw),
            Plan::CompareAndWrite {
                offset: 0,
                len: 512,
                fua: false
            }
        );
        let unmap = [0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0];
        assert_eq!(lu.plan(A, &unmap), Plan::Parameters { len: 24 });
        let mut list = vec![0, 22, 0, 16, 0, 0, 0, 0];
        list.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 2, 0, 0, 0, 0]);
        assert_eq!(
            lu.apply_parameters(A, &unmap, &list),
            Plan::Unmap {
                ranges: vec![(2048, 1024)]
            }
        );
        list[15] = 0x08; // with byte 11 below: LBA 2^32 + 8, past the end
        list[8] = 0;
        list[11] = 1;
        let r = lu.apply_parameters_response(A, &unmap, &list);
        assert_eq!(sense_of(&r), (5, 0x21, 0));
        let mut gls = [0u8; 16];
        gls[0] = 0x9E;
        gls[1] = 0x12;
        gls[13] = 24;
        assert!(matches!(lu.plan(A, &gls), Plan::LbaStatus { .. }));
        let r = lu.lba_status_response(
            512,
            &[crate::backend::Extent {
                len: 1024,
                mapped: false,
            }],
            24,
        );
        assert_eq!(
            r.data.as_ref(),
            &[0, 0, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2, 1, 0, 0, 0]
        );
    }

    #[test]
    fn report_luns_on_the_lu_validates() {
        let lu = DiskLu::new(identity());
        let r = respond(lu.plan(A, &[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0]));
        assert_eq!(sense_of(&r), (5, 0x24, 0));
    }
}
