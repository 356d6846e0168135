//! What the login layer needs to know about the configured targets: names, portals,
//! access lists and CHAP secrets.

use std::net::SocketAddr;

use super::params::TargetLimits;

/// A portal a target listens on, with its portal group tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Portal {
    pub addr: SocketAddr,
    pub tpgt: u16,
}

/// CHAP name and secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ChapCredentials {
    pub user: String,
    pub secret: String,
}

/// How control initiators authenticate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlLogin {
    pub initiators: Vec<String>,
    pub chap: ChapCredentials,
}

impl LoginPolicy {
    /// The control credentials `initiator` must log in with, if it is a control initiator
    /// and they are configured.
    pub fn control_chap(&self, initiator: &str) -> Option<&ChapCredentials> {
        self.control
            .as_ref()
            .filter(|c| {
                c.initiators
                    .iter()
                    .any(|i| i.eq_ignore_ascii_case(initiator))
            })
            .map(|c| &c.chap)
    }
}

impl std::fmt::Debug for ChapCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChapCredentials({}, <secret>)", self.user)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetEntry {
    pub name: String,
    pub alias: Option<String>,
    /// Empty: reachable on any portal with TPGT 1.
    pub portals: Vec<Portal>,
    /// Initiator names allowed to log in; empty = any.
    pub allowed_initiators: Vec<String>,
    /// CHAP the initiator must pass (None = no authentication).
    pub chap: Option<ChapCredentials>,
    /// Credentials the target answers with when the initiator asks for mutual CHAP.
    pub mutual_chap: Option<ChapCredentials>,
}

/// Default portal group tag when a target lists no portals.
pub const DEFAULT_TPGT: u16 = 1;

impl TargetEntry {
    /// iSCSI names compare case-insensitively (they are normalised to lower case).
    pub fn allows(&self, initiator: &str) -> bool {
        self.allowed_initiators.is_empty()
            || self
                .allowed_initiators
                .iter()
                .any(|a| a.eq_ignore_ascii_case(initiator))
    }

    /// The portal matching the local address a connection arrived on. A wildcard IP with the
    /// same port matches. None when the target is not served on this portal.
    pub fn portal_for(&self, local: SocketAddr) -> Option<Portal> {
        if self.portals.is_empty() {
            return Some(Portal {
                addr: local,
                tpgt: DEFAULT_TPGT,
            });
        }
        self.portals
            .iter()
            .find(|p| {
                p.addr == local || (p.addr.ip().is_unspecified() && p.addr.port() == local.port())
            })
            .cloned()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginPolicy {
    pub targets: Vec<TargetEntry>,
    /// CHAP required on discovery sessions (None = no authentication).
    pub discovery_chap: Option<ChapCredentials>,
    /// Mutual CHAP credentials for discovery sessions.
    pub discovery_mutual_chap: Option<ChapCredentials>,
    /// Initiators (lowercase) that log in as the control service, and the CHAP credentials
    /// they must prove on every target instead of the target's own (which every host knows).
    pub control: Option<ControlLogin>,
    pub limits: TargetLimits,
    /// Command window granted: MaxCmdSN = ExpCmdSN + cmd_window - 1.
    pub cmd_window: u32,
}

impl Default for LoginPolicy {
    fn default() -> Self {
        LoginPolicy {
            targets: Vec::new(),
            discovery_chap: None,
            discovery_mutual_chap: None,
            control: None,
            limits: TargetLimits::default(),
            cmd_window: 128,
        }
    }
}

impl LoginPolicy {
    pub fn target(&self, name: &str) -> Option<&TargetEntry> {
        self.targets
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(name))
    }
}
