//! Persistent reservation state (SPC-4 §5.9): registrations, the reservation, PRgeneration and
//! APTPL, plus the byte encoding used to keep it across restarts when APTPL is set.
//!
//! Registrations belong to initiator ports (iSCSI: name + ISID), not to I_T nexuses: a session
//! that reconnects with the same ISID is the same port and keeps its registration.

/// An iSCSI initiator port: the initiator name and the session's ISID.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InitiatorPort {
    /// iSCSI initiator name, compared case-insensitively (RFC 3722), stored lower case.
    pub name: String,
    pub isid: [u8; 6],
}

impl InitiatorPort {
    pub fn new(name: &str, isid: [u8; 6]) -> InitiatorPort {
        InitiatorPort {
            name: name.to_ascii_lowercase(),
            isid,
        }
    }

    /// The SCSI initiator port name (RFC 7143 §4.2.7.1): `<name>,i,0x<ISID>`.
    pub fn port_name(&self) -> String {
        let mut s = format!("{},i,0x", self.name);
        for b in self.isid {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// iSCSI TransportID, format 01b (SPC-4 §7.6.4.6): the port name, NUL terminated, padded
    /// to a multiple of four bytes.
    pub fn transport_id(&self) -> Vec<u8> {
        let mut name = self.port_name().into_bytes();
        name.push(0);
        while name.len() % 4 != 0 || name.len() < 20 {
            name.push(0);
        }
        let mut id = vec![0x45, 0];
        id.extend_from_slice(&(name.len().min(u16::MAX as usize) as u16).to_be_bytes());
        id.extend_from_slice(&name);
        id
    }
}

/// Who a registration belongs to: an I_T nexus, named by its two ends so that it outlives the
/// session (SPC-4 §5.9.7: without ALL_TG_PT, registering through one target port registers
/// that I_T nexus only). One initiator port reaching the LU through two portal groups is two
/// registrants, as a multipathing host registering on each path expects.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Registrant {
    pub initiator: InitiatorPort,
    /// Relative target port identifier (the iSCSI target portal group tag).
    pub target_port: u16,
}

impl Registrant {
    /// A registration restored from a state saved before registrants had a target port
    /// (relative target port identifiers start at 1).
    pub const UNKNOWN_PORT: u16 = 0;
}

/// Persistent reservation types (SPC-4 table 211).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrType {
    WriteExclusive = 1,
    ExclusiveAccess = 3,
    WriteExclusiveRegistrantsOnly = 5,
    ExclusiveAccessRegistrantsOnly = 6,
    WriteExclusiveAllRegistrants = 7,
    ExclusiveAccessAllRegistrants = 8,
}

impl PrType {
    pub fn from_code(code: u8) -> Option<PrType> {
        use PrType::*;
        Some(match code {
            1 => WriteExclusive,
            3 => ExclusiveAccess,
            5 => WriteExclusiveRegistrantsOnly,
            6 => ExclusiveAccessRegistrantsOnly,
            7 => WriteExclusiveAllRegistrants,
            8 => ExclusiveAccessAllRegistrants,
            _ => return None,
        })
    }

    /// Reads are restricted too (the "exclusive access" family).
    pub fn exclusive_access(self) -> bool {
        matches!(
            self,
            PrType::ExclusiveAccess
                | PrType::ExclusiveAccessRegistrantsOnly
                | PrType::ExclusiveAccessAllRegistrants
        )
    }

    /// Every registrant may access the LU, not only the holder.
    pub fn registrants_have_access(self) -> bool {
        !matches!(self, PrType::WriteExclusive | PrType::ExclusiveAccess)
    }

    /// All-registrants types: every registrant is a reservation holder (SPC-4 §5.9.10).
    pub fn all_registrants(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusiveAllRegistrants | PrType::ExclusiveAccessAllRegistrants
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub port: Registrant,
    pub key: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    pub kind: PrType,
    /// Index into the registrations of the holder; meaningless for all-registrants types.
    pub holder: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrState {
    pub generation: u32,
    pub aptpl: bool,
    pub registrations: Vec<Registration>,
    pub reservation: Option<Reservation>,
}

impl PrState {
    pub fn registration(&self, port: &Registrant) -> Option<usize> {
        self.registrations.iter().position(|r| &r.port == port)
    }

    /// Whether `port` holds the reservation (any registrant, for all-registrants types).
    pub fn is_holder(&self, port: &Registrant) -> bool {
        let Some(res) = self.reservation else {
            return false;
        };
        match self.registration(port) {
            Some(i) => res.kind.all_registrants() || i == res.holder,
            None => false,
        }
    }

    /// Removes registration `i`, keeping the holder index right. Returns whether the
    /// reservation went with it (its holder left, or the last all-registrants registrant).
    pub fn unregister(&mut self, i: usize) -> bool {
        if i >= self.registrations.len() {
            return false;
        }
        self.registrations.remove(i);
        let Some(mut res) = self.reservation else {
            return false;
        };
        let released = if res.kind.all_registrants() {
            self.registrations.is_empty()
        } else if res.holder == i {
            true
        } else {
            if res.holder > i {
                res.holder -= 1;
            }
            false
        };
        self.reservation = if released { None } else { Some(res) };
        released
    }

    pub fn next_generation(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }

    /// Compact encoding for APTPL: version, generation, reservation, registrations (each with
    /// its relative target port since version 2).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![2u8];
        out.extend_from_slice(&self.generation.to_be_bytes());
        match self.reservation {
            Some(r) => {
                out.push(r.kind as u8);
                out.extend_from_slice(&(r.holder as u32).to_be_bytes());
            }
            None => out.extend_from_slice(&[0; 5]),
        }
        out.extend_from_slice(&(self.registrations.len() as u32).to_be_bytes());
        for r in &self.registrations {
            out.extend_from_slice(&r.key.to_be_bytes());
            out.extend_from_slice(&r.port.target_port.to_be_bytes());
            out.extend_from_slice(&r.port.initiator.isid);
            let name = r.port.initiator.name.as_bytes();
            out.extend_from_slice(&(name.len().min(u16::MAX as usize) as u16).to_be_bytes());
            out.extend_from_slice(&name[..name.len().min(u16::MAX as usize)]);
        }
        out
    }

    /// Decodes [`PrState::encode`]; None for anything malformed (never panics).
    pub fn decode(bytes: &[u8]) -> Option<PrState> {
        let mut r = Reader(bytes);
        let version = r.take(1)?[0];
        if version != 1 && version != 2 {
            return None;
        }
        let generation = u32::from_be_bytes(r.take(4)?.try_into().ok()?);
        let kind = r.take(1)?[0];
        let holder = u32::from_be_bytes(r.take(4)?.try_into().ok()?) as usize;
        let count = u32::from_be_bytes(r.take(4)?.try_into().ok()?);
        let mut registrations = Vec::new();
        for _ in 0..count {
            let key = u64::from_be_bytes(r.take(8)?.try_into().ok()?);
            // Version 1 predates per-target-port registrations: the port is not known, and the
            // first I_T nexus of that initiator port to log in claims the registration (see
            // `Reservations::nexus_added`). Until then only such a nexus could match it.
            let target_port = match version {
                1 => Registrant::UNKNOWN_PORT,
                _ => u16::from_be_bytes(r.take(2)?.try_into().ok()?),
            };
            let isid: [u8; 6] = r.take(6)?.try_into().ok()?;
            let len = u16::from_be_bytes(r.take(2)?.try_into().ok()?) as usize;
            let name = String::from_utf8(r.take(len)?.to_vec()).ok()?;
            registrations.push(Registration {
                port: Registrant {
                    initiator: InitiatorPort::new(&name, isid),
                    target_port,
                },
                key,
            });
        }
        let reservation = match kind {
            0 => None,
            code => {
                let kind = PrType::from_code(code)?;
                if holder >= registrations.len() {
                    return None;
                }
                Some(Reservation { kind, holder })
            }
        };
        Some(PrState {
            generation,
            aptpl: true,
            registrations,
            reservation,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
}
