//! The JSON shapes of the control API, shared by the server, the standalone control service
//! (which forwards to an array) and `vvolctl`.

use crate::vvol::catalog::{ContainerBackend, IoLimits, VvolType};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerInfo {
    pub name: String,
    pub backend: ContainerBackend,
    pub capacity: u64,
    pub overcommit_ratio: f64,
    /// Sum of the VVols' logical sizes.
    pub provisioned: u64,
    /// Bytes really allocated (thin: grows as VVols are written).
    pub allocated: u64,
    /// capacity − allocated.
    pub free: u64,
    pub default_limits: IoLimits,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeInfo {
    pub target: String,
    pub lun: u16,
    /// VASA's `lunId`: "naa." + the VPD 83h NAA designator in hex.
    pub naa: String,
    pub allowed_hosts: Vec<String>,
    /// VVols bound through this PE (any host).
    pub bound_vvols: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VvolInfo {
    pub id: Uuid,
    pub container: String,
    #[serde(rename = "type")]
    pub vvol_type: VvolType,
    pub size: u64,
    pub block_size: u32,
    /// Seconds since the Unix epoch.
    pub created: u64,
    pub limits: IoLimits,
    pub metadata: BTreeMap<String, String>,
    /// Hosts this VVol is bound for.
    pub bound_hosts: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindingInfo {
    pub vvol: Uuid,
    pub host: String,
    pub target: String,
    pub pe_lun: u16,
    pub pe_naa: String,
    /// VASA `vvolSecondaryId`: "0x" + 12 hex digits (the 6-byte E2 element).
    pub secondary_id: String,
    /// The full 8-byte LUN the host addresses, in hex.
    pub lun: String,
    pub state: String,
}

impl BindingInfo {
    /// Describe a binding the way VASA hands it to ESXi.
    pub fn new(b: &crate::vvol::binding::Binding, target: &str, pe_naa: &str) -> BindingInfo {
        let lun = crate::vvol::address::secondary_lun(b.pe, b.secondary).to_bytes();
        BindingInfo {
            vvol: b.vvol,
            host: b.host.clone(),
            target: target.to_string(),
            pe_lun: b.pe,
            pe_naa: pe_naa.to_string(),
            secondary_id: b.secondary.to_vasa(),
            lun: lun.iter().map(|x| format!("{x:02x}")).collect(),
            state: match b.state {
                crate::vvol::binding::BindingState::Active => "active".into(),
                crate::vvol::binding::BindingState::Draining => "draining".into(),
            },
        }
    }
}

/// A size given as bytes or as a string with a unit ("10G", "512MiB").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Size {
    Bytes(u64),
    Text(String),
}

impl Size {
    pub fn bytes(&self) -> Result<u64, String> {
        match self {
            Size::Bytes(b) => Ok(*b),
            Size::Text(t) => crate::config::parse_size(t),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateVvol {
    pub container: String,
    pub size: Size,
    #[serde(rename = "type", default = "default_type")]
    pub vvol_type: VvolType,
    #[serde(default)]
    pub block_size: Option<u32>,
    /// Limits; absent: the container's defaults.
    #[serde(default)]
    pub limits: Option<IoLimits>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

fn default_type() -> VvolType {
    VvolType::Data
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resize {
    pub size: Size,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindRequest {
    pub vvol: Uuid,
    pub host: String,
    /// PE LUN; absent: the PE with the fewest bound VVols.
    #[serde(default)]
    pub pe: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnbindRequest {
    pub vvol: Uuid,
    pub host: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnbindAllRequest {
    pub host: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

pub use crate::array::qos::QosReport;

/// A normal LUN's limits after a change.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LunLimits {
    pub target: String,
    pub lun: u16,
    pub limits: IoLimits,
}
