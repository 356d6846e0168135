//! Reservations of one logical unit: SPC-2 RESERVE/RELEASE (see `reserve.rs`) and SPC-3/4
//! persistent reservations, which live side by side under one lock because each refuses the
//! other (SPC-4 §5.6.3, CRH = 1).
//!
//! Registrations belong to an initiator port reaching the LU through one target port (a
//! [`Registrant`]), which outlives the session, so the LU keeps a map from I_T nexus to
//! registrant, filled at login (`DiskLu::nexus_added`). An I_T nexus loss drops the nexus from
//! the map and releases its SPC-2 reservation, but keeps its registrations (SPC-4 §5.9.4).
//!
//! Not implemented, and reported so: REGISTER AND MOVE (no table row: INVALID FIELD IN CDB at
//! the service action), SPEC_I_PT and ALL_TG_PT (SIP_C = ATP_C = 0: INVALID FIELD IN PARAMETER
//! LIST). Scopes other than LU_SCOPE are invalid fields in the CDB.

mod access;
mod prin;
pub(crate) mod prout;
pub mod state;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use bytes::Bytes;

use super::cdb::{trim, Cdb};
use super::opcodes::Command;
use super::sense::Sense;
use super::unit_attention::UnitAttentions;
use super::NexusId;
use state::PrState;
pub use state::{InitiatorPort, Registrant};

/// Where a logical unit keeps its persistent reservation state while APTPL is set. The
/// implementation (the array layer, on the catalog database) may block; PERSISTENT RESERVE
/// OUT is rare enough for that.
pub trait PrPersistence: Send + Sync + std::fmt::Debug {
    /// The saved state, if any; an error if it could not be read.
    fn load(&self) -> Result<Option<Vec<u8>>, String>;
    /// Replaces the saved state; false if it could not be made durable.
    fn save(&self, state: &[u8]) -> bool;
    /// Forgets the saved state (APTPL cleared).
    fn clear(&self) -> bool;
}

/// Why a reservation-related command did not complete with GOOD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// RESERVATION CONFLICT status (18h), no sense data.
    Conflict,
    /// CHECK CONDITION with this sense.
    Sense(Sense),
}

impl From<Sense> for Refusal {
    fn from(s: Sense) -> Refusal {
        Refusal::Sense(s)
    }
}

#[derive(Debug, Default)]
struct Inner {
    ports: HashMap<NexusId, Registrant>,
    /// The SPC-2 RESERVE holder.
    spc2: Option<NexusId>,
    pr: PrState,
}

#[derive(Debug, Default)]
pub(crate) struct Reservations {
    /// True while any reservation (SPC-2 or persistent) exists: the READ/WRITE fast path
    /// checks only this.
    active: AtomicBool,
    inner: Mutex<Inner>,
    persistence: OnceLock<Arc<dyn PrPersistence>>,
    /// Nexuses whose tasks a PREEMPT AND ABORT asked to abort, for the transport to collect.
    aborts: Mutex<Vec<NexusId>>,
}

impl Reservations {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update below leaves `Inner` consistent between statements that can panic
        // (none can), so a poisoned lock is still a valid state.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn refresh(&self, inner: &Inner) {
        let any = inner.spc2.is_some() || inner.pr.reservation.is_some();
        self.active.store(any, Ordering::Release);
    }

    /// The port of `nexus`; a nexus the LU never heard about (a VVol bound after login) gets
    /// a port of its own so that it can still register, just not across reconnects.
    fn port_of(inner: &Inner, nexus: NexusId) -> Registrant {
        inner
            .ports
            .get(&nexus)
            .cloned()
            .unwrap_or_else(|| Registrant {
                initiator: InitiatorPort::new(&format!("nexus-{}", nexus.0), [0; 6]),
                target_port: 0,
            })
    }

    pub(crate) fn nexus_added(&self, nexus: NexusId, port: &InitiatorPort, target_port: u16) {
        let mut inner = self.lock();
        let registrant = Registrant {
            initiator: port.clone(),
            target_port,
        };
        inner.ports.insert(nexus, registrant);
        claim_legacy(&mut inner);
    }

    /// I_T nexus loss releases an SPC-2 reservation (SPC-2 §5.5.1), never registrations.
    pub(crate) fn nexus_removed(&self, nexus: NexusId) {
        let mut inner = self.lock();
        inner.ports.remove(&nexus);
        if inner.spc2 == Some(nexus) {
            inner.spc2 = None;
        }
        self.refresh(&inner);
    }

    /// Any reset releases the SPC-2 reservation. Persistent reservations survive LU and
    /// target resets (SPC-4 §5.9.4); we treat TARGET COLD RESET like a hard reset, not a
    /// power loss, since the daemon and its state keep running.
    pub(crate) fn reset(&self) {
        let mut inner = self.lock();
        inner.spc2 = None;
        self.refresh(&inner);
    }

    /// Whether the reservations refuse `nexus` reading (or, with `write`, writing) the
    /// medium: what a copy manager acting for `nexus` must respect on its copy targets.
    pub(crate) fn refuses_media(&self, nexus: NexusId, write: bool) -> bool {
        if !self.active.load(Ordering::Acquire) {
            return false;
        }
        let inner = self.lock();
        if let Some(holder) = inner.spc2 {
            return holder != nexus;
        }
        let access = if write {
            access::Access::Write
        } else {
            access::Access::Read
        };
        !access::pr_allows(&inner.pr, &Self::port_of(&inner, nexus), access)
    }

    /// Whether `command` from `nexus` must end in RESERVATION CONFLICT.
    pub(crate) fn conflicts(&self, nexus: NexusId, command: Command, cdb: Cdb<'_>) -> bool {
        if !self.active.load(Ordering::Acquire) {
            return false;
        }
        let inner = self.lock();
        if let Some(holder) = inner.spc2 {
            return holder != nexus && !access::allowed_under_spc2(command, cdb);
        }
        let port = Self::port_of(&inner, nexus);
        !access::pr_allows(&inner.pr, &port, access::classify(command, cdb))
    }

    /// SPC-2 RESERVE(6)/(10) and RELEASE(6)/(10), with SPC-4 §5.6.3 next to registrations.
    pub(crate) fn reserve_release(&self, nexus: NexusId, reserve: bool) -> Result<(), Refusal> {
        let mut inner = self.lock();
        let standing = (!inner.pr.registrations.is_empty()).then(|| {
            let port = Self::port_of(&inner, nexus);
            let registered = inner.pr.registration(&port).is_some();
            let shared = inner
                .pr
                .reservation
                .is_some_and(|r| r.kind.registrants_have_access());
            super::reserve::PrStanding {
                registered,
                covered: inner.pr.is_holder(&port) || (registered && shared),
            }
        });
        let r = super::reserve::apply(&mut inner.spc2, standing, nexus, reserve);
        self.refresh(&inner);
        r
    }

    /// PERSISTENT RESERVE IN.
    pub(crate) fn prin(&self, cdb: Cdb<'_>) -> Result<Bytes, Refusal> {
        let inner = self.lock();
        let action = cdb.u8(1) & 0x1F;
        let data = prin::build(&inner.pr, action).ok_or(Sense::invalid_cdb_field(1, Some(4)))?;
        Ok(trim(data, usize::from(cdb.be16(7))))
    }

    /// PERSISTENT RESERVE OUT, once its parameter list arrived.
    pub(crate) fn prout(
        &self,
        nexus: NexusId,
        cdb: Cdb<'_>,
        data: &[u8],
        unit_attentions: &UnitAttentions,
    ) -> Result<(), Refusal> {
        let params = prout::Params::parse(data, cdb.u8(1) & 0x1F)?;
        let mut inner = self.lock();
        let me = Self::port_of(&inner, nexus);
        let was_aptpl = inner.pr.aptpl;
        let mut next = inner.pr.clone();
        let fx = prout::apply(&mut next, &me, cdb.u8(1) & 0x1F, cdb.u8(2), params)?;
        inner.pr = next;
        self.refresh(&inner);
        for (port, sense) in &fx.notify {
            for n in nexuses_of(&inner, port) {
                unit_attentions.establish(Some(n), *sense);
            }
        }
        if !fx.abort.is_empty() {
            let mut aborts = self.aborts.lock().unwrap_or_else(|p| p.into_inner());
            for port in &fx.abort {
                aborts.extend(nexuses_of(&inner, port));
            }
        }
        if fx.changed && (was_aptpl || inner.pr.aptpl) && !self.persist(&inner.pr) {
            // The change stands (other nexuses may already have seen it), but the initiator
            // must learn that it would not survive a restart.
            return Err(Sense::INTERNAL_TARGET_FAILURE.into());
        }
        Ok(())
    }

    fn persist(&self, pr: &PrState) -> bool {
        let Some(p) = self.persistence.get() else {
            // No store (tests, a standalone LU): PTPL cannot be honoured, but nothing failed.
            return true;
        };
        if pr.aptpl {
            p.save(&pr.encode())
        } else {
            p.clear()
        }
    }

    /// Attaches the store and restores what it holds (the daemon starting). Only the first
    /// call counts. Saved reservations that cannot be read back are an error, not "none":
    /// running without them would silently drop a cluster's fencing.
    pub(crate) fn set_persistence(&self, p: Arc<dyn PrPersistence>) -> Result<(), String> {
        let saved =
            match p.load()? {
                Some(bytes) => Some(PrState::decode(&bytes).ok_or_else(|| {
                    "the saved persistent reservations are not readable".to_string()
                })?),
                None => None,
            };
        if self.persistence.set(p).is_err() {
            return Ok(());
        }
        if let Some(pr) = saved {
            let mut inner = self.lock();
            inner.pr = pr;
            claim_legacy(&mut inner);
            self.refresh(&inner);
        }
        Ok(())
    }

    /// Nexuses whose tasks a PREEMPT AND ABORT preempted since the last call.
    pub(crate) fn take_aborts(&self) -> Vec<NexusId> {
        std::mem::take(&mut *self.aborts.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Give registrations restored without their target port (saved before registrants had one)
/// to a known nexus of the same initiator port: before per-port registrations one ISID held
/// one session at a time, so the first such nexus is the one that registered.
fn claim_legacy(inner: &mut Inner) {
    let Inner { ports, pr, .. } = inner;
    for r in pr
        .registrations
        .iter_mut()
        .filter(|r| r.port.target_port == Registrant::UNKNOWN_PORT)
    {
        if let Some(known) = ports.values().find(|k| k.initiator == r.port.initiator) {
            r.port.target_port = known.target_port;
        }
    }
}

fn nexuses_of(inner: &Inner, port: &Registrant) -> Vec<NexusId> {
    inner
        .ports
        .iter()
        .filter(|(_, p)| *p == port)
        .map(|(n, _)| *n)
        .collect()
}
