//! The binding table: which host reaches which VVol through which PE, under which secondary
//! id. Pure state; the control plane persists it (see [`BindingTable::to_records`]) and
//! publishes [`BindingSnapshot`]s for the data path.
//!
//! Rules:
//! * A host holds at most one binding per VVol. Binding again returns it (`created: false`),
//!   whatever PE was asked for, so a retried VASA call never creates a second path.
//! * A VVol bound on a PE has ONE secondary id there, shared by every host bound to it through
//!   that PE (vMotion's source and destination see the same LUN).
//! * Ids come from a per-PE counter starting at 1 that never goes back: an id freed when the
//!   last host unbinds is never handed out again, so a host that missed an unbind can never
//!   reach another VVol through a stale LUN.
//! * Unbind is two-phase (reference decision 7): [`BindingTable::begin_unbind`] marks the
//!   binding Draining (the data path refuses new commands, in-flight ones finish), then
//!   [`BindingTable::finish_unbind`] removes it.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::address::{SecondaryId, MAX_FIRST_LEVEL};
use crate::scsi::Sense;

/// Bound VVols one host may hold on one PE: 2^14 - 1, what Pure documents per host per PE
/// (reference §6 Q2); it also keeps a REPORT LUNS answer at a PE below 128 KiB.
pub const MAX_BOUND_PER_HOST_PE: usize = 16383;

/// Longest host initiator name: iSCSI names are at most 223 bytes (RFC 7143 §4.2.7.1).
pub const MAX_HOST_NAME: usize = 223;

/// Whether `name` looks like an iSCSI initiator name: 1..=223 printable ASCII characters
/// without spaces, starting with `iqn.`, `eui.` or `naa.` (any case).
pub fn valid_host_name(name: &str) -> bool {
    let prefix = name.get(..4).map(str::to_ascii_lowercase);
    (5..=MAX_HOST_NAME).contains(&name.len())
        && name.bytes().all(|c| c.is_ascii_graphic())
        && matches!(prefix.as_deref(), Some("iqn." | "eui." | "naa."))
}

/// Host names compare case-insensitively (iSCSI names are case-folded, RFC 3722) and are
/// stored lowercased.
fn normalize(host: &str) -> Cow<'_, str> {
    if host.bytes().any(|c| c.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BindingState {
    /// Commands are accepted.
    Active,
    /// Unbind has begun: new commands are refused, in-flight ones may finish.
    Draining,
}

/// One host's binding of one VVol. `host` is lowercased.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Binding {
    pub vvol: Uuid,
    pub host: String,
    pub pe: u16,
    pub secondary: SecondaryId,
    pub state: BindingState,
}

impl Binding {
    /// Sort key of every list this module returns: host, then PE, then secondary id.
    fn order(&self) -> (&str, u16, SecondaryId, Uuid) {
        (&self.host, self.pe, self.secondary, self.vvol)
    }
}

fn sorted(mut v: Vec<Binding>) -> Vec<Binding> {
    v.sort_by(|a, b| a.order().cmp(&b.order()));
    v
}

/// The result of [`BindingTable::bind`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindOutcome {
    pub binding: Binding,
    /// false when the host already held this binding (idempotent repeat).
    pub created: bool,
}

/// Why a bind or unbind was refused. [`BindError::sense`] is what the in-band path answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindError {
    /// The PE is not one of ours. Sense 5h/20h/0Dh NOT AN ADMINISTRATIVE LOGICAL UNIT: the
    /// in-band command reached an LU that is not a PE.
    #[error("LUN {0} is not a protocol endpoint")]
    UnknownPe(u16),
    /// The VVol is not in the catalog (reported by callers that consult it; the table does
    /// not know VVols). Sense 5h/26h/00h INVALID FIELD IN PARAMETER LIST, pointer byte 0 (the
    /// VVOL UUID field of the in-band parameter list).
    #[error("no VVol {0}")]
    UnknownVvol(Uuid),
    /// Nothing to unbind. Sense 5h/26h/00h, pointer byte 0 (VVOL UUID): the parameter names a
    /// binding that does not exist.
    #[error("VVol {vvol} is not bound to {host}")]
    NotBound { vvol: Uuid, host: String },
    /// The host's binding of this VVol is draining; bind again after the unbind finishes.
    /// Sense 2h/04h/07h LOGICAL UNIT NOT READY, OPERATION IN PROGRESS: a retryable
    /// condition, which is what it is.
    #[error("VVol {vvol} is being unbound from {host}")]
    Busy { vvol: Uuid, host: String },
    /// The PE's 40-bit id space is used up, or the host already holds
    /// [`MAX_BOUND_PER_HOST_PE`] bindings on it. Sense 5h/55h/11h INSUFFICIENT RESOURCES TO
    /// BIND, the code T10 assigned for exactly this.
    #[error("no secondary id left on PE {0}")]
    NoResources(u16),
    /// Not an iSCSI initiator name. Sense 5h/26h/00h, pointer byte 20 (HOST NAME).
    #[error("'{0}' is not an iSCSI initiator name")]
    InvalidHost(String),
}

/// Byte of the in-band parameter list holding the HOST NAME (see `inband.rs`).
const HOST_NAME_OFFSET: u16 = 20;

impl BindError {
    pub fn sense(&self) -> Sense {
        match self {
            BindError::UnknownPe(_) => Sense::NOT_AN_ADMINISTRATIVE_LU,
            BindError::UnknownVvol(_) | BindError::NotBound { .. } => {
                Sense::invalid_param_field(0, None)
            }
            BindError::Busy { .. } => Sense::NOT_READY_OPERATION_IN_PROGRESS,
            BindError::NoResources(_) => Sense::INSUFFICIENT_RESOURCES_TO_BIND,
            BindError::InvalidHost(_) => Sense::invalid_param_field(HOST_NAME_OFFSET, None),
        }
    }
}

/// Why persisted records could not be restored. Restoring must give back exactly the same
/// ids or refuse: a guess would route a host's I/O to another VVol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    #[error("binding of VVol {vvol} for {host} is on LUN {pe}, which is not a PE any more")]
    UnknownPe { vvol: Uuid, host: String, pe: u16 },
    #[error("'{0}' in a binding record is not an iSCSI initiator name")]
    InvalidHost(String),
    #[error("VVol {vvol} is bound twice for {host}")]
    Duplicate { vvol: Uuid, host: String },
    #[error("PE {pe} secondary id {id} is recorded for two VVols or a VVol has two ids there")]
    IdConflict { pe: u16, id: SecondaryId },
}

/// Immutable lookup map for the data path, cheap to query; publish it with arc-swap after
/// every change of the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BindingSnapshot {
    by_host: HashMap<String, HostBindings>,
}

/// One host's bindings, keyed by (PE, secondary id) so a PE's ids are one ordered range.
type HostBindings = BTreeMap<(u16, SecondaryId), (Uuid, BindingState)>;

impl BindingSnapshot {
    /// The VVol and state behind `(host, pe, secondary)`. Draining bindings are returned so
    /// the caller can refuse them with the right sense.
    pub fn lookup(&self, host: &str, pe: u16, id: SecondaryId) -> Option<(Uuid, BindingState)> {
        self.by_host
            .get(normalize(host).as_ref())?
            .get(&(pe, id))
            .copied()
    }

    /// Active secondary ids of `host` on `pe`, ascending (the REPORT LUNS inventory).
    pub fn bound_on_pe(&self, host: &str, pe: u16) -> Vec<SecondaryId> {
        let Some(m) = self.by_host.get(normalize(host).as_ref()) else {
            return Vec::new();
        };
        m.range((pe, FIRST_ID)..=(pe, LAST_ID))
            .filter(|(_, (_, s))| *s == BindingState::Active)
            .map(|((_, id), _)| *id)
            .collect()
    }
}

const FIRST_ID: SecondaryId = match SecondaryId::new(1) {
    Some(id) => id,
    None => unreachable!(),
};
const LAST_ID: SecondaryId = match SecondaryId::new(SecondaryId::MAX) {
    Some(id) => id,
    None => unreachable!(),
};

/// All bindings of all hosts, with the per-PE id counters.
#[derive(Debug, Clone, Default)]
pub struct BindingTable {
    pes: BTreeSet<u16>,
    /// Next id to hand out per PE; only ever grows.
    next: BTreeMap<u16, u64>,
    /// The one secondary id of a VVol on a PE, while any host is bound to it there.
    ids: BTreeMap<(u16, Uuid), SecondaryId>,
    /// Reverse of `ids`.
    vvol_at: HashMap<(u16, SecondaryId), Uuid>,
    /// Keyed by (lowercased host, VVol): one binding per host and VVol.
    bindings: BTreeMap<(String, Uuid), Binding>,
    /// Bindings per (host, PE), Draining included, for [`MAX_BOUND_PER_HOST_PE`].
    per_host_pe: HashMap<(String, u16), usize>,
}

impl BindingTable {
    /// A table serving `pes`. PE numbers above 16383 cannot be addressed (14-bit first level)
    /// and are ignored; configuration validation rejects them before this.
    pub fn new(pes: Vec<u16>) -> BindingTable {
        let pes: BTreeSet<u16> = pes.into_iter().filter(|p| *p <= MAX_FIRST_LEVEL).collect();
        let next = pes.iter().map(|p| (*p, 1)).collect();
        BindingTable {
            pes,
            next,
            ..Default::default()
        }
    }

    pub fn pes(&self) -> Vec<u16> {
        self.pes.iter().copied().collect()
    }

    /// Binds `vvol` for `host`. `pe` None lets the table choose: a PE where the VVol already
    /// has an id (so hosts share it), else the PE with the fewest bound VVols, ties to the
    /// lowest LUN. Errors: [`BindError::InvalidHost`], [`BindError::UnknownPe`] (also when
    /// `pe` is None and the table has no PE at all, reported as PE 0), [`BindError::Busy`],
    /// [`BindError::NoResources`].
    pub fn bind(
        &mut self,
        vvol: Uuid,
        host: &str,
        pe: Option<u16>,
    ) -> Result<BindOutcome, BindError> {
        if !valid_host_name(host) {
            return Err(BindError::InvalidHost(host.to_string()));
        }
        let host = host.to_ascii_lowercase();
        if let Some(p) = pe {
            if !self.pes.contains(&p) {
                return Err(BindError::UnknownPe(p));
            }
        }
        if let Some(existing) = self.bindings.get(&(host.clone(), vvol)) {
            return match existing.state {
                BindingState::Active => Ok(BindOutcome {
                    binding: existing.clone(),
                    created: false,
                }),
                BindingState::Draining => Err(BindError::Busy { vvol, host }),
            };
        }
        let pe = match pe {
            Some(p) => p,
            None => self.choose_pe(vvol).ok_or(BindError::UnknownPe(0))?,
        };
        let on_pe = self.per_host_pe.get(&(host.clone(), pe)).copied();
        if on_pe.unwrap_or(0) >= MAX_BOUND_PER_HOST_PE {
            return Err(BindError::NoResources(pe));
        }
        let secondary = match self.ids.get(&(pe, vvol)) {
            Some(id) => *id,
            None => self.allocate(pe, vvol)?,
        };
        let binding = Binding {
            vvol,
            host: host.clone(),
            pe,
            secondary,
            state: BindingState::Active,
        };
        self.insert(binding.clone());
        Ok(BindOutcome {
            binding,
            created: true,
        })
    }

    /// Adds a binding whose id is already recorded in `ids`/`vvol_at`.
    fn insert(&mut self, b: Binding) {
        *self.per_host_pe.entry((b.host.clone(), b.pe)).or_default() += 1;
        self.bindings.insert((b.host.clone(), b.vvol), b);
    }

    fn choose_pe(&self, vvol: Uuid) -> Option<u16> {
        if let Some(((pe, _), _)) = self.ids.iter().find(|((_, v), _)| *v == vvol) {
            return Some(*pe);
        }
        let mut load: BTreeMap<u16, usize> = self.pes.iter().map(|p| (*p, 0)).collect();
        for (pe, _) in self.ids.keys() {
            if let Some(n) = load.get_mut(pe) {
                *n += 1;
            }
        }
        // min_by_key returns the first minimum, and the map iterates by ascending LUN.
        load.into_iter().min_by_key(|(_, n)| *n).map(|(p, _)| p)
    }

    fn allocate(&mut self, pe: u16, vvol: Uuid) -> Result<SecondaryId, BindError> {
        let next = self.next.entry(pe).or_insert(1);
        let id = SecondaryId::new(*next).ok_or(BindError::NoResources(pe))?;
        *next += 1;
        self.ids.insert((pe, vvol), id);
        self.vvol_at.insert((pe, id), vvol);
        Ok(id)
    }

    /// Marks `host`'s binding of `vvol` Draining (on `pe`, if given) and returns it. Already
    /// draining bindings are returned again, so a retried unbind is harmless.
    pub fn begin_unbind(
        &mut self,
        vvol: Uuid,
        host: &str,
        pe: Option<u16>,
    ) -> Result<Vec<Binding>, BindError> {
        let host = normalize(host).into_owned();
        match self.bindings.get_mut(&(host.clone(), vvol)) {
            Some(b) if pe.is_none_or(|p| p == b.pe) => {
                b.state = BindingState::Draining;
                Ok(vec![b.clone()])
            }
            _ => Err(BindError::NotBound { vvol, host }),
        }
    }

    /// Removes `host`'s binding of `vvol` on `pe` (normally after [`Self::begin_unbind`] and
    /// the drain; an Active binding is removed too). The VVol's id on the PE is released
    /// when no host uses it any more; it is never handed out again.
    pub fn finish_unbind(&mut self, vvol: Uuid, host: &str, pe: u16) -> Result<Binding, BindError> {
        let key = (normalize(host).into_owned(), vvol);
        if self.bindings.get(&key).is_none_or(|b| b.pe != pe) {
            return Err(BindError::NotBound { vvol, host: key.0 });
        }
        let Some(removed) = self.bindings.remove(&key) else {
            return Err(BindError::NotBound { vvol, host: key.0 });
        };
        let count_key = (key.0, pe);
        if let Some(n) = self.per_host_pe.get_mut(&count_key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_host_pe.remove(&count_key);
            }
        }
        let still_used = self.bindings.values().any(|b| b.vvol == vvol && b.pe == pe);
        if !still_used {
            if let Some(id) = self.ids.remove(&(pe, vvol)) {
                self.vvol_at.remove(&(pe, id));
            }
        }
        Ok(removed)
    }

    /// Marks every binding of `host` Draining and returns them, sorted.
    pub fn begin_unbind_all(&mut self, host: &str) -> Vec<Binding> {
        let host = normalize(host);
        let mut out = Vec::new();
        for b in self.bindings.values_mut().filter(|b| b.host == host) {
            b.state = BindingState::Draining;
            out.push(b.clone());
        }
        sorted(out)
    }

    /// The binding behind `(host, pe, secondary)`, Draining ones included so the data path
    /// can refuse them.
    pub fn lookup(&self, host: &str, pe: u16, secondary: SecondaryId) -> Option<&Binding> {
        let vvol = self.vvol_at.get(&(pe, secondary))?;
        self.bindings
            .get(&(normalize(host).into_owned(), *vvol))
            .filter(|b| b.pe == pe)
    }

    /// All bindings, or those of one host, sorted by host, PE, secondary id.
    pub fn bindings(&self, host: Option<&str>) -> Vec<Binding> {
        let host = host.map(normalize);
        sorted(
            self.bindings
                .values()
                .filter(|b| host.as_deref().is_none_or(|h| b.host == h))
                .cloned()
                .collect(),
        )
    }

    /// All hosts' bindings through `pe`, sorted (REPORT BINDINGS).
    pub fn bindings_on_pe(&self, pe: u16) -> Vec<Binding> {
        sorted(
            self.bindings
                .values()
                .filter(|b| b.pe == pe)
                .cloned()
                .collect(),
        )
    }

    /// Active secondary ids of `host` on `pe`, ascending (the REPORT LUNS inventory).
    pub fn bound_on_pe(&self, host: &str, pe: u16) -> Vec<SecondaryId> {
        let host = normalize(host);
        let mut ids: Vec<SecondaryId> = self
            .bindings
            .values()
            .filter(|b| b.host == host && b.pe == pe && b.state == BindingState::Active)
            .map(|b| b.secondary)
            .collect();
        ids.sort();
        ids
    }

    /// Whether any host holds (or is draining) a binding of `vvol`: such a VVol must not be
    /// deleted.
    pub fn is_bound(&self, vvol: Uuid) -> bool {
        self.bindings.values().any(|b| b.vvol == vvol)
    }

    /// Next id to be handed out, per PE: persist it with the records, or a restart could
    /// reuse the id of a VVol that was unbound just before.
    pub fn next_ids(&self) -> BTreeMap<u16, u64> {
        self.next.clone()
    }

    /// Every binding, sorted, for persistence.
    pub fn to_records(&self) -> Vec<Binding> {
        self.bindings(None)
    }

    /// Rebuilds the table exactly as it was. Counters are `next_ids`, raised above any id in
    /// the records. Draining records are restored as Draining: nothing is in flight after a
    /// restart, so the caller should finish them.
    pub fn from_records(
        pes: Vec<u16>,
        records: Vec<Binding>,
        next_ids: BTreeMap<u16, u64>,
    ) -> Result<BindingTable, RestoreError> {
        let mut t = BindingTable::new(pes);
        for (pe, n) in next_ids {
            if let Some(next) = t.next.get_mut(&pe) {
                *next = (*next).max(n);
            }
        }
        for mut r in records {
            if !valid_host_name(&r.host) {
                return Err(RestoreError::InvalidHost(r.host));
            }
            r.host = r.host.to_ascii_lowercase();
            if !t.pes.contains(&r.pe) {
                return Err(RestoreError::UnknownPe {
                    vvol: r.vvol,
                    host: r.host,
                    pe: r.pe,
                });
            }
            let conflict = RestoreError::IdConflict {
                pe: r.pe,
                id: r.secondary,
            };
            match (
                t.ids.get(&(r.pe, r.vvol)),
                t.vvol_at.get(&(r.pe, r.secondary)),
            ) {
                (None, None) => {
                    t.ids.insert((r.pe, r.vvol), r.secondary);
                    t.vvol_at.insert((r.pe, r.secondary), r.vvol);
                }
                (Some(id), Some(v)) if *id == r.secondary && *v == r.vvol => {}
                _ => return Err(conflict),
            }
            if let Some(next) = t.next.get_mut(&r.pe) {
                *next = (*next).max(r.secondary.get() + 1);
            }
            let key = (r.host.clone(), r.vvol);
            if t.bindings.contains_key(&key) {
                return Err(RestoreError::Duplicate {
                    vvol: r.vvol,
                    host: r.host,
                });
            }
            t.insert(r);
        }
        Ok(t)
    }

    /// The data path's view of the table.
    pub fn snapshot(&self) -> BindingSnapshot {
        let mut s = BindingSnapshot::default();
        for b in self.bindings.values() {
            s.by_host
                .entry(b.host.clone())
                .or_default()
                .insert((b.pe, b.secondary), (b.vvol, b.state));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H1: &str = "iqn.1998-01.com.vmware:esx1";
    const H2: &str = "iqn.1998-01.com.vmware:esx2";

    fn v(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn id(n: u64) -> SecondaryId {
        SecondaryId::new(n).unwrap()
    }

    #[test]
    fn host_names() {
        assert!(valid_host_name(H1));
        assert!(valid_host_name("EUI.0123456789ABCDEF"));
        assert!(valid_host_name("naa.52004567BA64678D"));
        for bad in ["", "iqn.", "iqn.a b", "iscsi.x", "iqn.\u{e9}", "iqn.a\0"] {
            assert!(!valid_host_name(bad), "{bad:?}");
        }
        assert!(valid_host_name(&format!("iqn.{}", "a".repeat(219))));
        assert!(!valid_host_name(&format!("iqn.{}", "a".repeat(220))));
    }

    #[test]
    fn ids_start_at_one_per_pe_and_are_shared_between_hosts() {
        let mut t = BindingTable::new(vec![5, 6]);
        let a = t.bind(v(1), H1, Some(5)).unwrap();
        assert!(a.created);
        assert_eq!((a.binding.pe, a.binding.secondary), (5, id(1)));
        assert_eq!(t.bind(v(2), H1, Some(5)).unwrap().binding.secondary, id(2));
        assert_eq!(t.bind(v(3), H1, Some(6)).unwrap().binding.secondary, id(1));
        // vMotion: the second host gets the same id on the same PE.
        let b = t.bind(v(1), H2, Some(5)).unwrap();
        assert!(b.created);
        assert_eq!(b.binding.secondary, id(1));
        assert_eq!(b.binding.host, H2);
    }

    #[test]
    fn bind_is_idempotent_and_case_insensitive() {
        let mut t = BindingTable::new(vec![5, 6]);
        let a = t.bind(v(1), H1, Some(5)).unwrap();
        let again = t.bind(v(1), &H1.to_uppercase(), Some(6)).unwrap();
        assert!(!again.created);
        assert_eq!(again.binding, a.binding);
        assert_eq!(t.bindings(None).len(), 1);
        assert_eq!(t.bindings(Some(&H1.to_uppercase())).len(), 1);
    }

    #[test]
    fn errors() {
        let mut t = BindingTable::new(vec![5]);
        assert_eq!(t.bind(v(1), H1, Some(7)), Err(BindError::UnknownPe(7)));
        assert!(matches!(
            t.bind(v(1), "host1", None),
            Err(BindError::InvalidHost(_))
        ));
        assert!(matches!(
            t.begin_unbind(v(1), H1, None),
            Err(BindError::NotBound { .. })
        ));
        t.bind(v(1), H1, None).unwrap();
        assert!(matches!(
            t.begin_unbind(v(1), H1, Some(6)),
            Err(BindError::NotBound { .. })
        ));
        t.begin_unbind(v(1), H1, None).unwrap();
        assert!(matches!(
            t.bind(v(1), H1, None),
            Err(BindError::Busy { .. })
        ));
        assert!(matches!(
            t.finish_unbind(v(1), H1, 6),
            Err(BindError::NotBound { .. })
        ));
        assert_eq!(
            BindingTable::new(vec![]).bind(v(1), H1, None),
            Err(BindError::UnknownPe(0))
        );
    }

    #[test]
    fn error_senses() {
        let host = H1.to_string();
        let cases = [
            (BindError::UnknownPe(3), (5, 0x20, 0x0D), None),
            (BindError::UnknownVvol(v(1)), (5, 0x26, 0), Some(0)),
            (
                BindError::NotBound {
                    vvol: v(1),
                    host: host.clone(),
                },
                (5, 0x26, 0),
                Some(0),
            ),
            (BindError::Busy { vvol: v(1), host }, (2, 0x04, 0x07), None),
            (BindError::NoResources(5), (5, 0x55, 0x11), None),
            (BindError::InvalidHost("x".into()), (5, 0x26, 0), Some(20)),
        ];
        for (e, (key, asc, ascq), byte) in cases {
            let s = e.sense();
            assert_eq!((s.key as u8, s.asc, s.ascq), (key, asc, ascq), "{e}");
            assert_eq!(s.field.map(|f| f.byte), byte, "{e}");
            assert!(s.field.is_none_or(|f| !f.in_cdb));
        }
    }

    #[test]
    fn unbind_drains_then_frees_and_never_reuses() {
        let mut t = BindingTable::new(vec![5]);
        t.bind(v(1), H1, None).unwrap();
        t.bind(v(1), H2, None).unwrap();
        let d = t.begin_unbind(v(1), H1, Some(5)).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].state, BindingState::Draining);
        // Draining: still visible to the data path, gone from REPORT LUNS.
        assert_eq!(
            t.lookup(H1, 5, id(1)).map(|b| b.state),
            Some(BindingState::Draining)
        );
        assert!(t.bound_on_pe(H1, 5).is_empty());
        assert_eq!(t.bound_on_pe(H2, 5), vec![id(1)]);
        t.finish_unbind(v(1), H1, 5).unwrap();
        assert!(t.lookup(H1, 5, id(1)).is_none());
        assert!(t.is_bound(v(1)), "H2 still holds it");
        // The id stays with v(1) while H2 uses it: a rebind by H1 gets it back.
        assert_eq!(t.bind(v(1), H1, None).unwrap().binding.secondary, id(1));
        for h in [H1, H2] {
            t.begin_unbind(v(1), h, None).unwrap();
            t.finish_unbind(v(1), h, 5).unwrap();
        }
        assert!(!t.is_bound(v(1)));
        // Released id 1 is never handed out again, not even to the same VVol.
        assert_eq!(t.bind(v(1), H1, None).unwrap().binding.secondary, id(2));
        assert_eq!(t.bind(v(2), H1, None).unwrap().binding.secondary, id(3));
        assert_eq!(t.next_ids(), BTreeMap::from([(5, 4)]));
    }

    #[test]
    fn pe_choice_by_load_then_lowest_lun() {
        let mut t = BindingTable::new(vec![9, 3, 7]);
        let pe = |t: &mut BindingTable, n| t.bind(v(n), H1, None).unwrap().binding.pe;
        assert_eq!(pe(&mut t, 1), 3);
        assert_eq!(pe(&mut t, 2), 7);
        assert_eq!(pe(&mut t, 3), 9);
        assert_eq!(pe(&mut t, 4), 3);
        // A VVol bound elsewhere is placed where it already has an id.
        t.bind(v(10), H2, Some(9)).unwrap();
        assert_eq!(t.bind(v(10), H1, None).unwrap().binding.pe, 9);
    }

    #[test]
    fn unbind_all_and_listing() {
        let mut t = BindingTable::new(vec![5, 6]);
        t.bind(v(2), H1, Some(6)).unwrap();
        t.bind(v(1), H1, Some(5)).unwrap();
        t.bind(v(1), H2, Some(5)).unwrap();
        let all = t.begin_unbind_all(&H1.to_uppercase());
        assert_eq!(
            all.iter().map(|b| (b.pe, b.vvol)).collect::<Vec<_>>(),
            vec![(5, v(1)), (6, v(2))]
        );
        assert!(all.iter().all(|b| b.state == BindingState::Draining));
        assert_eq!(t.bindings(Some(H2))[0].state, BindingState::Active);
        assert_eq!(t.bindings_on_pe(5).len(), 2);
        assert_eq!(t.bindings(None)[0].host, H1);
        assert!(t.begin_unbind_all("iqn.nobody").is_empty());
    }

    #[test]
    fn lookup_is_per_host_and_pe() {
        let mut t = BindingTable::new(vec![5, 6]);
        t.bind(v(1), H1, Some(5)).unwrap();
        assert_eq!(t.lookup(H1, 5, id(1)).map(|b| b.vvol), Some(v(1)));
        assert!(t.lookup(H2, 5, id(1)).is_none(), "not bound for H2");
        assert!(t.lookup(H1, 6, id(1)).is_none(), "other PE");
        assert!(t.lookup(H1, 5, id(2)).is_none());
        let s = t.snapshot();
        assert_eq!(
            s.lookup(&H1.to_uppercase(), 5, id(1)),
            Some((v(1), BindingState::Active))
        );
        assert_eq!(s.lookup(H2, 5, id(1)), None);
        assert_eq!(s.bound_on_pe(H1, 5), vec![id(1)]);
        assert!(s.bound_on_pe(H1, 6).is_empty());
        t.begin_unbind(v(1), H1, None).unwrap();
        let s = t.snapshot();
        assert_eq!(s.lookup(H1, 5, id(1)), Some((v(1), BindingState::Draining)));
        assert!(s.bound_on_pe(H1, 5).is_empty());
    }

    #[test]
    fn records_restore_the_same_ids() {
        let mut t = BindingTable::new(vec![5, 6]);
        for n in 1..=4 {
            t.bind(v(n), H1, None).unwrap();
        }
        t.bind(v(1), H2, None).unwrap();
        t.begin_unbind(v(4), H1, None).unwrap();
        t.finish_unbind(v(4), H1, 6).unwrap();
        t.begin_unbind(v(3), H1, None).unwrap();
        let mut r = BindingTable::from_records(vec![5, 6], t.to_records(), t.next_ids()).unwrap();
        assert_eq!(r.to_records(), t.to_records());
        assert_eq!(r.next_ids(), t.next_ids());
        assert_eq!(r.snapshot(), t.snapshot());
        // Both hand out the same next id (v(4)'s old id 2 on PE 6 is not reused).
        assert_eq!(
            r.bind(v(9), H2, Some(6)).unwrap(),
            t.bind(v(9), H2, Some(6)).unwrap()
        );
        assert_eq!(r.bind(v(9), H2, Some(6)).unwrap().binding.secondary, id(3));
    }

    #[test]
    fn restore_without_counters_still_never_reuses_recorded_ids() {
        let mut t = BindingTable::new(vec![5]);
        t.bind(v(1), H1, None).unwrap();
        t.bind(v(2), H1, None).unwrap();
        let mut r = BindingTable::from_records(vec![5], t.to_records(), BTreeMap::new()).unwrap();
        assert_eq!(r.bind(v(3), H1, None).unwrap().binding.secondary, id(3));
    }

    #[test]
    fn restore_rejects_inconsistent_records() {
        let b = |vvol, host: &str, pe, n| Binding {
            vvol: v(vvol),
            host: host.into(),
            pe,
            secondary: id(n),
            state: BindingState::Active,
        };
        let restore = |recs| BindingTable::from_records(vec![5], recs, BTreeMap::new());
        assert!(matches!(
            restore(vec![b(1, H1, 6, 1)]),
            Err(RestoreError::UnknownPe { pe: 6, .. })
        ));
        assert!(matches!(
            restore(vec![b(1, "bad", 5, 1)]),
            Err(RestoreError::InvalidHost(_))
        ));
        assert!(matches!(
            restore(vec![b(1, H1, 5, 1), b(1, &H1.to_uppercase(), 5, 1)]),
            Err(RestoreError::Duplicate { .. })
        ));
        assert!(matches!(
            restore(vec![b(1, H1, 5, 1), b(2, H2, 5, 1)]),
            Err(RestoreError::IdConflict { .. })
        ));
        assert!(matches!(
            restore(vec![b(1, H1, 5, 1), b(1, H2, 5, 2)]),
            Err(RestoreError::IdConflict { .. })
        ));
        assert!(restore(vec![b(1, H1, 5, 1), b(1, H2, 5, 1)]).is_ok());
    }

    #[test]
    fn exhausted_id_space_is_no_resources() {
        let mut next = BTreeMap::new();
        next.insert(5, SecondaryId::MAX);
        let mut t = BindingTable::from_records(vec![5], vec![], next).unwrap();
        assert_eq!(
            t.bind(v(1), H1, None).unwrap().binding.secondary.get(),
            SecondaryId::MAX
        );
        assert_eq!(t.bind(v(2), H1, None), Err(BindError::NoResources(5)));
    }

    #[test]
    fn per_host_limit_is_no_resources() {
        let mut t = BindingTable::new(vec![5]);
        for n in 0..MAX_BOUND_PER_HOST_PE as u128 {
            t.bind(v(n), H1, Some(5)).unwrap();
        }
        assert_eq!(
            t.bind(v(99_999), H1, Some(5)),
            Err(BindError::NoResources(5))
        );
        assert!(t.bind(v(99_999), H2, Some(5)).is_ok());
    }

    #[test]
    fn pes_above_14_bits_are_ignored() {
        let mut t = BindingTable::new(vec![16383, 16384]);
        assert_eq!(t.pes(), vec![16383]);
        assert_eq!(
            t.bind(v(1), H1, Some(16384)),
            Err(BindError::UnknownPe(16384))
        );
    }

    /// Random binds, unbinds, unbind-alls and restarts (records written and read back) on
    /// three PEs, four hosts and eight VVols. After each step every view agrees, no host sees
    /// another's bindings, and a (PE, id) pair never names a second VVol, so a LUN a host
    /// kept from before an unbind can never reach a different VVol.
    #[test]
    fn random_operations_keep_ids_unique_and_hosts_apart() {
        use rand::Rng;
        let mut rng = crate::seeded::rng(0xB1ED);
        let pes = vec![5, 6, 300];
        let hosts = [
            "iqn.1998-01.com.vmware:a",
            "iqn.1998-01.com.vmware:B",
            H1,
            H2,
        ];
        let mut t = BindingTable::new(pes.clone());
        let mut ever: HashMap<(u16, SecondaryId), Uuid> = HashMap::new();
        for step in 0..8_000 {
            let vvol = v(rng.gen_range(1..=8));
            let host = hosts[rng.gen_range(0..hosts.len())];
            let pe = [None, Some(5), Some(6), Some(300), Some(7)][rng.gen_range(0..5)];
            match rng.gen_range(0..10) {
                0..=4 => match t.bind(vvol, host, pe) {
                    Ok(o) => {
                        let b = o.binding;
                        assert_eq!((b.vvol, b.state), (vvol, BindingState::Active));
                        assert!(pe.is_none_or(|p| p == b.pe) || !o.created);
                    }
                    Err(BindError::UnknownPe(p)) => assert_eq!(pe, Some(p)),
                    Err(BindError::Busy { .. }) => {}
                    Err(e) => panic!("step {step}: {e}"),
                },
                5 | 6 => {
                    let _ = t.begin_unbind(vvol, host, pe);
                }
                7 => {
                    if let Some(b) = t.bindings(Some(host)).into_iter().find(|b| b.vvol == vvol) {
                        t.finish_unbind(vvol, host, b.pe).unwrap();
                        assert!(t.lookup(host, b.pe, b.secondary).is_none());
                    }
                }
                8 => {
                    for b in t.begin_unbind_all(host) {
                        assert_eq!(b.state, BindingState::Draining);
                    }
                }
                _ => {
                    let records = t.to_records();
                    t = BindingTable::from_records(pes.clone(), records.clone(), t.next_ids())
                        .unwrap();
                    assert_eq!(t.to_records(), records);
                }
            }
            let all = t.bindings(None);
            let snapshot = t.snapshot();
            let mut shared: HashMap<(u16, Uuid), SecondaryId> = HashMap::new();
            for b in &all {
                // Hosts bound to one VVol through one PE share its id there.
                let id = *shared.entry((b.pe, b.vvol)).or_insert(b.secondary);
                assert_eq!(id, b.secondary, "step {step}");
                let first = *ever.entry((b.pe, b.secondary)).or_insert(b.vvol);
                assert_eq!(
                    first, b.vvol,
                    "step {step}: id {:?} reused on PE {}",
                    b.secondary, b.pe
                );
                assert_eq!(t.lookup(&b.host.to_uppercase(), b.pe, b.secondary), Some(b));
                assert_eq!(
                    snapshot.lookup(&b.host, b.pe, b.secondary),
                    Some((b.vvol, b.state))
                );
                assert!(t.is_bound(b.vvol));
                for other in hosts.iter().map(|h| h.to_ascii_lowercase()) {
                    if all.iter().all(|o| o.host != other || o.vvol != b.vvol) {
                        assert!(t.lookup(&other, b.pe, b.secondary).is_none());
                        assert!(snapshot.lookup(&other, b.pe, b.secondary).is_none());
                    }
                }
            }
            for h in hosts {
                for &p in &pes {
                    let mut active: Vec<SecondaryId> = all
                        .iter()
                        .filter(|b| {
                            b.host == h.to_ascii_lowercase()
                                && b.pe == p
                                && b.state == BindingState::Active
                        })
                        .map(|b| b.secondary)
                        .collect();
                    active.sort();
                    assert_eq!(t.bound_on_pe(h, p), active);
                    assert_eq!(snapshot.bound_on_pe(h, p), active);
                }
            }
        }
    }
}
