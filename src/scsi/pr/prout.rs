//! PERSISTENT RESERVE OUT service actions (SPC-4 §5.9.5-§5.9.11, §6.16) as pure functions on
//! [`PrState`]: they say which unit attentions and aborts follow, the caller delivers them.

use super::super::sense::{Sense, SenseKey};
use super::state::{PrState, PrType, Registrant, Registration, Reservation};
use super::Refusal;

pub(crate) const REGISTER: u8 = 0;
pub(crate) const RESERVE: u8 = 1;
pub(crate) const RELEASE: u8 = 2;
pub(crate) const CLEAR: u8 = 3;
pub(crate) const PREEMPT: u8 = 4;
pub(crate) const PREEMPT_AND_ABORT: u8 = 5;
pub(crate) const REGISTER_AND_IGNORE: u8 = 6;

/// The basic PERSISTENT RESERVE OUT parameter list is exactly 24 bytes (SPC-4 §6.16.3);
/// SPEC_I_PT and REGISTER AND MOVE, the only longer forms, are not supported.
pub(crate) const PARAM_LEN: u32 = 24;

pub(crate) const RESERVATIONS_PREEMPTED: Sense = Sense::new(SenseKey::UnitAttention, 0x2A, 0x03);
pub(crate) const RESERVATIONS_RELEASED: Sense = Sense::new(SenseKey::UnitAttention, 0x2A, 0x04);
pub(crate) const REGISTRATIONS_PREEMPTED: Sense = Sense::new(SenseKey::UnitAttention, 0x2A, 0x05);
const INVALID_RELEASE: Sense = Sense::new(SenseKey::IllegalRequest, 0x26, 0x04);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Params {
    pub key: u64,
    pub sa_key: u64,
    pub aptpl: bool,
}

impl Params {
    /// The parameter list of service action `action`.
    pub(crate) fn parse(data: &[u8], action: u8) -> Result<Params, Sense> {
        if data.len() != PARAM_LEN as usize {
            return Err(Sense::PARAMETER_LIST_LENGTH_ERROR);
        }
        let be64 = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&data[i..i + 8]);
            u64::from_be_bytes(b)
        };
        let flags = data[20];
        // SIP_C = 0 and ATP_C = 0 in REPORT CAPABILITIES: both bits are unsupported fields.
        // SPEC_I_PT is an error on every service action; ALL_TG_PT means something only to
        // the two REGISTER actions and is ignored by the others (SPC-4 §6.16.3).
        if flags & 0x08 != 0 {
            return Err(Sense::invalid_param_field(20, Some(3)));
        }
        if flags & 0x04 != 0 && matches!(action, REGISTER | REGISTER_AND_IGNORE) {
            return Err(Sense::invalid_param_field(20, Some(2)));
        }
        Ok(Params {
            key: be64(0),
            sa_key: be64(8),
            aptpl: flags & 0x01 != 0,
        })
    }
}

/// What the caller must do after a successful service action.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Effects {
    /// Unit attentions per initiator port (every nexus of that port gets it).
    pub notify: Vec<(Registrant, Sense)>,
    /// Ports whose tasks PREEMPT AND ABORT must abort.
    pub abort: Vec<Registrant>,
    /// The state changed (persist it when APTPL is in effect).
    pub changed: bool,
}

/// Runs one service action for `me`. `scope_type` is CDB byte 2.
pub(crate) fn apply(
    state: &mut PrState,
    me: &Registrant,
    action: u8,
    scope_type: u8,
    p: Params,
) -> Result<Effects, Refusal> {
    match action {
        REGISTER | REGISTER_AND_IGNORE => register(state, me, p, action == REGISTER_AND_IGNORE),
        RESERVE => reserve(state, me, scope_type, p),
        RELEASE => release(state, me, scope_type, p),
        CLEAR => clear(state, me, p),
        PREEMPT | PREEMPT_AND_ABORT => preempt(state, me, scope_type, p, action),
        _ => Err(Sense::invalid_cdb_field(1, Some(4)).into()),
    }
}

/// The caller's registration, if its RESERVATION KEY matches (otherwise a conflict).
fn registered(state: &PrState, me: &Registrant, key: u64) -> Result<usize, Refusal> {
    match state.registration(me) {
        Some(i) if state.registrations[i].key == key => Ok(i),
        _ => Err(Refusal::Conflict),
    }
}

fn lu_scope_type(scope_type: u8) -> Result<PrType, Refusal> {
    if scope_type >> 4 != 0 {
        return Err(Sense::invalid_cdb_field(2, Some(7)).into());
    }
    PrType::from_code(scope_type & 0x0F).ok_or_else(|| Sense::invalid_cdb_field(2, Some(3)).into())
}

/// Other registrants, for "every other registered I_T nexus" unit attentions.
fn others(state: &PrState, me: &Registrant, sense: Sense) -> Vec<(Registrant, Sense)> {
    state
        .registrations
        .iter()
        .filter(|r| &r.port != me)
        .map(|r| (r.port.clone(), sense))
        .collect()
}

fn register(
    state: &mut PrState,
    me: &Registrant,
    p: Params,
    ignore: bool,
) -> Result<Effects, Refusal> {
    let mut fx = Effects::default();
    match state.registration(me) {
        None => {
            if !ignore && p.key != 0 {
                return Err(Refusal::Conflict);
            }
            if p.sa_key == 0 {
                return Ok(fx);
            }
            state.registrations.push(Registration {
                port: me.clone(),
                key: p.sa_key,
            });
        }
        Some(i) => {
            if !ignore && state.registrations[i].key != p.key {
                return Err(Refusal::Conflict);
            }
            if p.sa_key == 0 {
                let kind = state.reservation.map(|r| r.kind);
                if state.unregister(i)
                    && matches!(
                        kind,
                        Some(PrType::WriteExclusiveRegistrantsOnly)
                            | Some(PrType::ExclusiveAccessRegistrantsOnly)
                    )
                {
                    // SPC-4 §5.9.11.2: the registrants-only reservation left with its holder.
                    fx.notify = others(state, me, RESERVATIONS_RELEASED);
                }
            } else {
                state.registrations[i].key = p.sa_key;
            }
        }
    }
    state.aptpl = p.aptpl;
    state.next_generation();
    fx.changed = true;
    Ok(fx)
}

fn reserve(
    state: &mut PrState,
    me: &Registrant,
    scope_type: u8,
    p: Params,
) -> Result<Effects, Refusal> {
    let i = registered(state, me, p.key)?;
    let kind = lu_scope_type(scope_type)?;
    match state.reservation {
        Some(r) if state.is_holder(me) && r.kind == kind => Ok(Effects::default()),
        Some(_) => Err(Refusal::Conflict),
        None => {
            state.reservation = Some(Reservation { kind, holder: i });
            Ok(Effects {
                changed: true,
                ..Effects::default()
            })
        }
    }
}

fn release(
    state: &mut PrState,
    me: &Registrant,
    scope_type: u8,
    p: Params,
) -> Result<Effects, Refusal> {
    registered(state, me, p.key)?;
    let Some(r) = state.reservation else {
        return Ok(Effects::default());
    };
    if !state.is_holder(me) {
        return Ok(Effects::default());
    }
    if scope_type >> 4 != 0 || PrType::from_code(scope_type & 0x0F) != Some(r.kind) {
        return Err(INVALID_RELEASE.into());
    }
    state.reservation = None;
    let notify = if r.kind.registrants_have_access() {
        others(state, me, RESERVATIONS_RELEASED)
    } else {
        Vec::new()
    };
    Ok(Effects {
        notify,
        abort: Vec::new(),
        changed: true,
    })
}

fn clear(state: &mut PrState, me: &Registrant, p: Params) -> Result<Effects, Refusal> {
    registered(state, me, p.key)?;
    let notify = others(state, me, RESERVATIONS_PREEMPTED);
    state.registrations.clear();
    state.reservation = None;
    state.next_generation();
    Ok(Effects {
        notify,
        abort: Vec::new(),
        changed: true,
    })
}

fn preempt(
    state: &mut PrState,
    me: &Registrant,
    scope_type: u8,
    p: Params,
    action: u8,
) -> Result<Effects, Refusal> {
    registered(state, me, p.key)?;
    let res = state.reservation;
    // Does this PREEMPT take over the reservation (SPC-4 §5.9.11.4)?
    let takes_reservation = match res {
        None => false,
        Some(r) if r.kind.all_registrants() => p.sa_key == 0,
        Some(r) => state.registrations.get(r.holder).map(|h| h.key) == Some(p.sa_key),
    };
    let new_kind = if takes_reservation {
        Some(lu_scope_type(scope_type)?)
    } else {
        if p.sa_key == 0 {
            return Err(Sense::invalid_param_field(8, None).into());
        }
        None
    };
    // Registrations to remove: those with the key (all but ours, when an all-registrants
    // reservation is preempted with key 0). Never our own: the preemptor stays registered.
    let all = res.is_some_and(|r| r.kind.all_registrants()) && p.sa_key == 0;
    let victims: Vec<Registrant> = state
        .registrations
        .iter()
        .filter(|r| &r.port != me && (all || r.key == p.sa_key))
        .map(|r| r.port.clone())
        .collect();
    if victims.is_empty() && !takes_reservation {
        return Err(Refusal::Conflict);
    }
    let holder_port = res
        .filter(|r| !r.kind.all_registrants())
        .and_then(|r| state.registrations.get(r.holder))
        .map(|h| h.port.clone());
    state.registrations.retain(|r| !victims.contains(&r.port));
    let mut notify: Vec<(Registrant, Sense)> = victims
        .iter()
        .map(|v| (v.clone(), REGISTRATIONS_PREEMPTED))
        .collect();
    if let (Some(kind), Some(old)) = (new_kind, res) {
        let holder = state.registration(me).unwrap_or(0);
        state.reservation = Some(Reservation { kind, holder });
        if old.kind != kind {
            notify.extend(others(state, me, RESERVATIONS_RELEASED));
        }
    } else if let (Some(mut r), Some(port)) = (state.reservation, holder_port) {
        // The reservation stays with its holder (never a victim here: a victim's key equal to
        // the holder's would have taken the reservation); its index may have moved.
        if let Some(i) = state.registration(&port) {
            r.holder = i;
            state.reservation = Some(r);
        }
    }
    state.next_generation();
    let abort = if action == PREEMPT_AND_ABORT {
        victims
    } else {
        Vec::new()
    };
    Ok(Effects {
        notify,
        abort,
        changed: true,
    })
}
