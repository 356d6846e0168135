//! The VVol catalog's value types: storage containers, VVols, their metadata and I/O limits,
//! with the validation every entry point (HTTP API, in-band, config) shares.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// VVol types as VASA names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VvolType {
    Config,
    Data,
    Swap,
    Memory,
    Other,
}

impl VvolType {
    pub fn as_str(self) -> &'static str {
        match self {
            VvolType::Config => "config",
            VvolType::Data => "data",
            VvolType::Swap => "swap",
            VvolType::Memory => "memory",
            VvolType::Other => "other",
        }
    }

    pub fn parse(s: &str) -> Option<VvolType> {
        Some(match s.to_ascii_lowercase().as_str() {
            "config" => VvolType::Config,
            "data" => VvolType::Data,
            "swap" => VvolType::Swap,
            "memory" => VvolType::Memory,
            "other" => VvolType::Other,
            _ => return None,
        })
    }
}

/// Where a container keeps its VVols' data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerBackend {
    /// One sparse file per VVol under the container's directory.
    File,
    /// In memory (lost at exit; for labs and tests).
    Ram,
    /// In memory, behind an emulated disk of fixed capacity that all the container's VVols
    /// share (QoS labs: makes contention real on any machine).
    Rated,
}

/// Per-VVol IOPS limits in normalized I/Os per second (cost = ceil(len / 32 KiB)). A request
/// naming any other field is refused: a misspelt limit read as "absent" would silently remove
/// the limit it meant to set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct IoLimits {
    /// Cap; None = unlimited.
    pub upper: Option<u32>,
    /// Reservation; None = none.
    pub lower: Option<u32>,
    /// Share of spare capacity (default 1).
    pub weight: Option<u32>,
}

pub const IOPS_MIN: u32 = 10;
pub const IOPS_MAX: u32 = 1_000_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    #[error("{field}: {value} is outside {IOPS_MIN}..={IOPS_MAX} IOPS")]
    IopsRange { field: &'static str, value: u32 },
    #[error("lower limit {lower} must be below upper limit {upper}")]
    LowerNotBelowUpper { lower: u32, upper: u32 },
    #[error("weight must be 1..=10000")]
    Weight,
    #[error("size must be a positive multiple of the block size {block_size}")]
    Size { block_size: u32 },
    #[error("block size must be 512 or 4096")]
    BlockSize,
    #[error("metadata key '{0}' must be 1..=128 printable ASCII characters without '='")]
    MetadataKey(String),
    #[error("metadata value for '{0}' is longer than 4096 bytes")]
    MetadataValue(String),
    #[error(
        "container name '{0}' must be 1..=64 characters of [A-Za-z0-9._-], not start with a dot, \
         and not be 'luns' (the normal LUNs' QoS pool)"
    )]
    ContainerName(String),
}

impl IoLimits {
    pub fn validate(&self) -> Result<(), CatalogError> {
        for (field, v) in [("upper", self.upper), ("lower", self.lower)] {
            if let Some(v) = v {
                if !(IOPS_MIN..=IOPS_MAX).contains(&v) {
                    return Err(CatalogError::IopsRange { field, value: v });
                }
            }
        }
        if let (Some(lower), Some(upper)) = (self.lower, self.upper) {
            if lower >= upper {
                return Err(CatalogError::LowerNotBelowUpper { lower, upper });
            }
        }
        if let Some(w) = self.weight {
            if !(1..=10_000).contains(&w) {
                return Err(CatalogError::Weight);
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Container {
    pub name: String,
    pub backend: ContainerBackend,
    /// Thin capacity in bytes.
    pub capacity: u64,
    /// How far the sum of VVol sizes may exceed the capacity (1.0 = no overcommit).
    pub overcommit_ratio: f64,
    /// Limits given to new VVols.
    pub default_limits: IoLimits,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vvol {
    pub id: Uuid,
    pub container: String,
    pub vvol_type: VvolType,
    /// Logical size in bytes.
    pub size: u64,
    pub block_size: u32,
    /// Seconds since the Unix epoch.
    pub created: u64,
    pub limits: IoLimits,
    pub metadata: std::collections::BTreeMap<String, String>,
}

pub fn validate_size(size: u64, block_size: u32) -> Result<(), CatalogError> {
    if block_size != 512 && block_size != 4096 {
        return Err(CatalogError::BlockSize);
    }
    if size == 0 || size % block_size as u64 != 0 {
        return Err(CatalogError::Size { block_size });
    }
    Ok(())
}

pub fn validate_metadata(key: &str, value: &str) -> Result<(), CatalogError> {
    if key.is_empty()
        || key.len() > 128
        || key.contains('=')
        || !key.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
    {
        return Err(CatalogError::MetadataKey(key.into()));
    }
    if value.len() > 4096 {
        return Err(CatalogError::MetadataValue(key.into()));
    }
    Ok(())
}

/// A container's name is also its directory under `containers/`: letters, digits, `.`, `_`
/// and `-`, not starting with a dot (`.` and `..` would put its VVols' images outside it).
/// `luns` is the QoS pool of the normal LUNs, so no container may take it.
pub fn validate_container_name(name: &str) -> Result<(), CatalogError> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name != "luns"
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(CatalogError::ContainerName(name.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_validated() {
        let ok = IoLimits {
            upper: Some(1000),
            lower: Some(100),
            weight: None,
        };
        assert!(ok.validate().is_ok());
        let bad = IoLimits {
            upper: Some(100),
            lower: Some(100),
            weight: None,
        };
        assert_eq!(
            bad.validate(),
            Err(CatalogError::LowerNotBelowUpper {
                lower: 100,
                upper: 100
            })
        );
        let low = IoLimits {
            upper: Some(5),
            lower: None,
            weight: None,
        };
        assert!(matches!(
            low.validate(),
            Err(CatalogError::IopsRange {
                field: "upper",
                value: 5
            })
        ));
        let high = IoLimits {
            upper: None,
            lower: Some(2_000_000),
            weight: None,
        };
        assert!(high.validate().is_err());
    }

    #[test]
    fn sizes_and_names() {
        assert!(validate_size(10 << 30, 512).is_ok());
        assert!(validate_size(1000, 512).is_err());
        assert!(validate_size(4096, 1024).is_err());
        assert!(validate_container_name("lab").is_ok());
        assert!(validate_container_name("a/b").is_err());
        assert!(validate_metadata("VMW_VmID", "x").is_ok());
        assert!(validate_metadata("a=b", "x").is_err());
    }
}
