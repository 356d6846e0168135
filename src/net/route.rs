//! Where a command goes: all 8 bytes of its LUN are decoded; a single-level LUN names a normal
//! LU or a Protocol Endpoint, a PE ‖ secondary-id LUN the VVol bound for this host on that PE.
//! Nothing ever falls back to the first level. REPORT LUNS follows the conglomerate rules, and
//! the in-band binding commands on a PE become plans for the binding engine.

use super::session::Session;
use super::Shared;
use crate::array::engine::{BindingGuard, Pe};
use crate::array::LogicalUnit;
use crate::scsi::{self, Lun, Plan, Response, Sense, SenseKey};
use crate::vvol::address::{secondary_lun, LunAddress};
use crate::vvol::inband::{self, ServiceAction};
use crate::vvol::report::{self, Addressed, Inventory};
use std::sync::Arc;

const REPORT_LUNS: u8 = 0xA0;

/// ACCESS DENIED - NO ACCESS RIGHTS: the initiator is not a control initiator.
const ACCESS_DENIED: Sense = Sense::new(SenseKey::IllegalRequest, 0x20, 0x02);

/// How a command finishes once its data has arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// By the SCSI emulation of the logical unit.
    Scsi,
    /// By the binding engine: an in-band VVOL BINDING OUT on PE `pe`.
    Inband { pe: u16, service: ServiceAction },
    /// Not routed yet: a command without Data-Out that arrived dormant behind older tasks of
    /// its task set is routed once it may run, so its answer (MODE SENSE, PERSISTENT RESERVE
    /// IN, REPORT LUNS) reflects what those tasks did.
    Unrouted,
}

/// A routed command.
pub struct Routed {
    pub lu: Option<HeldLu>,
    pub plan: Plan,
    pub completion: Completion,
}

/// The logical unit a command holds while it runs.
pub enum HeldLu {
    /// A normal LU or a Protocol Endpoint.
    Shared(Arc<LogicalUnit>),
    /// A bound VVol, reached through its binding, which counts the command in flight so that
    /// an unbind waits for it.
    Bound(BindingGuard),
}

impl HeldLu {
    pub fn arc(&self) -> &Arc<LogicalUnit> {
        match self {
            HeldLu::Shared(lu) => lu,
            HeldLu::Bound(guard) => guard.held(),
        }
    }

    /// Whether the VVol has begun unbinding since the command took it: a long-running
    /// command (EXTENDED COPY) stops rather than write on into it.
    pub fn closing(&self) -> bool {
        matches!(self, HeldLu::Bound(guard) if guard.closing())
    }
}

impl std::ops::Deref for HeldLu {
    type Target = LogicalUnit;
    fn deref(&self) -> &LogicalUnit {
        self.arc()
    }
}

enum Dest {
    Normal(Arc<LogicalUnit>),
    Pe(Arc<Pe>),
    Vvol(BindingGuard),
    Missing,
}

/// Whether `session` may reach PE `p`: its allowed hosts do, and so do control sessions,
/// which bind VVols on every PE for every host (in-band binding and the standalone control
/// service would otherwise fail on a PE restricted to some hosts).
fn may_use(session: &Session, p: &Pe) -> bool {
    p.allows(&session.initiator) || session.control
}

fn visible_pe(shared: &Shared, session: &Session, lun: u16) -> Option<Arc<Pe>> {
    shared
        .array
        .engine
        .pe(&session.target.name, lun)
        .filter(|p| may_use(session, p))
        .cloned()
}

fn dest(shared: &Shared, session: &Session, lun: Lun) -> Dest {
    match LunAddress::decode(lun) {
        LunAddress::Single(n) => {
            if let Some(lu) = session.target.luns.get(&n) {
                return Dest::Normal(lu.clone());
            }
            visible_pe(shared, session, n).map_or(Dest::Missing, Dest::Pe)
        }
        LunAddress::Secondary { pe, id } => {
            if visible_pe(shared, session, pe).is_none() {
                return Dest::Missing;
            }
            shared
                .array
                .engine
                .route(&session.key.initiator, pe, id)
                .map_or(Dest::Missing, Dest::Vvol)
        }
        LunAddress::ReportLunsWlun | LunAddress::Unsupported => Dest::Missing,
    }
}

/// The logical unit a task management function on `lun` acts on (a bound VVol, a PE or a
/// normal LU), or None when the LUN addresses nothing for this host. A VVol being unbound
/// still counts: its commands in flight are what the unbind waits for, and a host may reset
/// them (SAM-5: a LOGICAL UNIT RESET to PE ‖ secondary acts on that subsidiary LU).
pub fn task_lu(shared: &Shared, session: &Session, lun: Lun) -> Option<Arc<LogicalUnit>> {
    if let LunAddress::Secondary { pe, id } = LunAddress::decode(lun) {
        visible_pe(shared, session, pe)?;
        return shared.array.engine.bound_lu(&session.key.initiator, pe, id);
    }
    match dest(shared, session, lun) {
        Dest::Normal(lu) => Some(lu),
        Dest::Vvol(guard) => Some(guard.held().clone()),
        Dest::Pe(pe) => Some(pe.lu.clone()),
        Dest::Missing => None,
    }
}

/// Every session that reaches `lu`, with the LUN it addresses it by. A reset or PREEMPT AND
/// ABORT acts on the logical unit, whatever target, PE or LUN each host reaches it through: a
/// VVol bound for two hosts on two PEs has a different LUN for each (SAM-5 §7.10: a LOGICAL
/// UNIT RESET aborts the tasks of every I_T nexus).
pub fn sessions_reaching(shared: &Shared, lu: &Arc<LogicalUnit>) -> Vec<(Arc<Session>, Lun)> {
    shared
        .sessions
        .all()
        .into_iter()
        .filter_map(|s| lun_of(shared, &s, lu).map(|lun| (s, lun)))
        .collect()
}

fn lun_of(shared: &Shared, session: &Session, lu: &Arc<LogicalUnit>) -> Option<Lun> {
    if let Some((&n, _)) = session.target.luns.iter().find(|(_, l)| Arc::ptr_eq(l, lu)) {
        return Some(Lun::single(n));
    }
    let engine = &shared.array.engine;
    if let Some(pe) = engine.pes().iter().find(|p| Arc::ptr_eq(&p.lu, lu)) {
        return visible_pe(shared, session, pe.lun).map(|_| Lun::single(pe.lun));
    }
    let (pe, id) = engine.bound_at(&session.key.initiator, lu)?;
    visible_pe(shared, session, pe).map(|_| secondary_lun(pe, id))
}

/// Route one command: decide the logical unit and the plan.
pub fn route(shared: &Shared, session: &Session, lun: Lun, cdb: &[u8]) -> Routed {
    let scsi = |lu: Option<HeldLu>, plan| Routed {
        lu,
        plan,
        completion: Completion::Scsi,
    };
    let d = dest(shared, session, lun);
    if cdb.first() == Some(&REPORT_LUNS) {
        return scsi(
            None,
            Plan::Respond(report_luns(shared, session, lun, &d, cdb)),
        );
    }
    match d {
        Dest::Normal(lu) => {
            let plan = lu.disk.plan(session.nexus, cdb);
            scsi(Some(HeldLu::Shared(lu)), plan)
        }
        Dest::Vvol(guard) => {
            let lu = guard.held();
            let plan = lu.disk.plan(session.nexus, cdb);
            if let Plan::Read { offset, .. } | Plan::Write { offset, .. } = plan {
                lu.warm_device(offset);
            }
            scsi(Some(HeldLu::Bound(guard)), plan)
        }
        Dest::Pe(pe) => match cdb.first() {
            Some(&inband::BINDING_OUT) | Some(&inband::BINDING_IN) => {
                inband_plan(shared, session, &pe, cdb)
            }
            _ => {
                let plan = pe.lu.disk.plan(session.nexus, cdb);
                scsi(Some(HeldLu::Shared(pe.lu.clone())), plan)
            }
        },
        Dest::Missing => scsi(
            None,
            Plan::Respond(scsi::report_luns::unsupported_lun_response(cdb)),
        ),
    }
}

fn report_luns(shared: &Shared, session: &Session, lun: Lun, d: &Dest, cdb: &[u8]) -> Response {
    let engine = &shared.array.engine;
    let pes: Vec<u16> = engine
        .pes()
        .iter()
        .filter(|p| p.target.eq_ignore_ascii_case(&session.target.name) && may_use(session, p))
        .map(|p| p.lun)
        .collect();
    let normal: Vec<u16> = session.target.luns.keys().copied().collect();
    let (addressed, secondaries) = match d {
        Dest::Pe(pe) => (
            Addressed::Pe(pe.lun),
            engine.secondaries(&session.initiator, pe.lun),
        ),
        Dest::Vvol(..) => (Addressed::Secondary, Vec::new()),
        Dest::Normal(lu) if lu.id != 0 => (Addressed::Normal(lu.id), Vec::new()),
        // LUN 0, the REPORT LUNS well-known LUN, or a LUN that does not exist: SPC answers
        // REPORT LUNS there too, so that an initiator can find its LUNs without a LUN 0.
        _ => (Addressed::Lun0OrWlun, Vec::new()),
    };
    let resp = report::report_luns(
        cdb,
        addressed,
        &Inventory {
            pes,
            normal,
            secondaries,
        },
    );
    if let (Dest::Pe(pe), scsi::Status::Good) = (d, resp.status) {
        // A REPORT LUNS that completes clears REPORTED LUNS DATA HAS CHANGED for this nexus
        // (SPC-4 §6.33); one refused (a reserved SELECT REPORT, a short allocation length)
        // reported nothing, so the condition stays.
        pe.lu.disk.report_luns_sent(session.nexus);
    }
    let _ = lun;
    resp
}

fn inband_plan(shared: &Shared, session: &Session, pe: &Arc<Pe>, cdb: &[u8]) -> Routed {
    let respond = |r: Response| Routed {
        lu: Some(HeldLu::Shared(pe.lu.clone())),
        plan: Plan::Respond(r),
        completion: Completion::Scsi,
    };
    if !session.control {
        return respond(pe.lu.disk.sense_response(ACCESS_DENIED));
    }
    if cdb[0] == inband::BINDING_IN {
        return match inband::decode_in(cdb) {
            Ok(alloc) => {
                let bindings = shared.array.engine.bindings_on_pe(pe.lun);
                respond(Response::good(inband::encode_report(&bindings, alloc)))
            }
            Err(s) => respond(pe.lu.disk.sense_response(s)),
        };
    }
    match inband::decode_out(cdb) {
        Ok(out) => Routed {
            lu: Some(HeldLu::Shared(pe.lu.clone())),
            plan: Plan::Parameters { len: out.param_len },
            completion: Completion::Inband {
                pe: pe.lun,
                service: out.service,
            },
        },
        Err(s) => respond(pe.lu.disk.sense_response(s)),
    }
}
