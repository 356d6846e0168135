//! The array as configured: targets, their logical units, and the backends behind them. Built
//! once at start-up from the [`Config`]; the transport resolves LUNs against it.

pub mod engine;
mod frozen;
mod inflight;
mod pr_store;
pub mod qos;
pub mod warm;

use crate::backend::{AnyDevice, BlockDevice, FileDevice, NullDevice, RamDevice};
use crate::config::{BackendKind, Config, LunConfig, TargetConfig};
use crate::scsi::disk::{DiskIdentity, DiskLu};
use crate::scsi::Lun;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// Not an IEEE-registered company id: vvold is a lab array. NAA-6 keeps ESXi's `naa.` names.
const NAA_COMPANY_ID: u32 = 0x5A_56_4C;
pub const VENDOR: &str = "VVOLD";
pub const PRODUCT: &str = "VVOLD DISK";
pub const REVISION: &str = "0001";

#[derive(Debug, thiserror::Error)]
pub enum ArrayError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("VVol catalog: {0}")]
    Engine(#[from] engine::EngineError),
    #[error("target {target} LUN {lun}: {source}")]
    Backend {
        target: String,
        lun: u16,
        source: crate::backend::BackendError,
    },
}

/// A logical unit: SCSI emulation state plus the block device behind it.
pub struct LogicalUnit {
    pub id: u16,
    pub lun: Lun,
    pub disk: DiskLu,
    pub device: AnyDevice,
    /// Writes hold it shared, COMPARE AND WRITE exclusively: that is what makes ATS atomic
    /// against every other write to the LU.
    pub write_lock: tokio::sync::RwLock<()>,
    /// Its I/O control, once the array has put it under QoS (never for Protocol Endpoints,
    /// nor when QoS is off).
    pub qos: OnceLock<Arc<qos::VolQos>>,
}

impl LogicalUnit {
    pub fn new(id: u16, lun: Lun, disk: DiskLu, device: AnyDevice) -> LogicalUnit {
        if let AnyDevice::File(f) = &device {
            f.fit_direct_io_to(disk.identity().block_size);
        }
        LogicalUnit {
            id,
            lun,
            disk,
            device,
            write_lock: tokio::sync::RwLock::new(()),
            qos: OnceLock::new(),
        }
    }

    /// The lines a command on this LU is about to touch: the LU itself, a RAM disk's header
    /// and the QoS limiter and counters (see `warm.rs`). Gathered once per routing snapshot.
    pub fn warm_lines(&self) -> warm::WarmLines {
        let mut w = warm::WarmLines::default();
        w.add(self);
        if let AnyDevice::Ram(d) = &self.device {
            w.add(&**d);
        }
        if let Some(q) = self.qos.get() {
            q.add_warm_lines(&mut w);
        }
        w
    }

    /// Start loading the device's bookkeeping for an I/O at `offset` (a RAM disk's chunk
    /// entry), so it has arrived by the time the I/O runs.
    pub fn warm_device(&self, offset: u64) {
        if let AnyDevice::Ram(d) = &self.device {
            if let Some(addr) = d.chunk_address(offset) {
                // Its lock is taken (written) by the I/O.
                warm::prefetch_for_write(addr);
            }
        }
    }
}

pub struct Target {
    pub name: String,
    pub alias: Option<String>,
    pub luns: BTreeMap<u16, Arc<LogicalUnit>>,
}

impl Target {
    /// Resolve all 8 bytes of a LUN. Only single-level LUNs address normal LUs: a LUN with
    /// lower levels never falls back to its first level.
    pub fn resolve(&self, lun: Lun) -> Option<&Arc<LogicalUnit>> {
        self.luns.get(&lun.as_single()?)
    }

    /// The LUN inventory for REPORT LUNS.
    pub fn inventory(&self) -> Vec<Lun> {
        self.luns.values().map(|l| l.lun).collect()
    }
}

pub struct Array {
    pub targets: Vec<Arc<Target>>,
    /// VVols, Protocol Endpoints and bindings.
    pub engine: Arc<engine::Engine>,
}

impl Array {
    /// Open every backend (creating sparse image files on first start) under `data_dir`.
    pub fn open(cfg: &Config, data_dir: &Path) -> Result<Array, ArrayError> {
        std::fs::create_dir_all(data_dir).map_err(|source| ArrayError::DataDir {
            path: data_dir.into(),
            source,
        })?;
        let array_id = array_id(data_dir)?;
        let targets: Vec<Arc<Target>> = cfg
            .targets
            .iter()
            .map(|t| open_target(t, data_dir, &array_id).map(Arc::new))
            .collect::<Result<_, _>>()?;
        let pes = cfg
            .targets
            .iter()
            .flat_map(|t| {
                t.pes
                    .iter()
                    .map(|p| Arc::new(protocol_endpoint(&array_id, t, p)))
            })
            .collect::<Vec<_>>();
        let qos = Arc::new(qos::Qos::new(qos::QosSettings {
            enabled: cfg.qos.enabled,
            max_lag: std::time::Duration::from_millis(cfg.qos.max_lag_ms),
        }));
        let engine = engine::Engine::open(cfg, data_dir, &array_id, pes, qos)?;
        for (t, target) in cfg.targets.iter().zip(targets.iter()) {
            let target: &Arc<Target> = target;
            for l in &t.luns {
                if let Some(lu) = target.luns.get(&l.id) {
                    engine.attach_lun_qos(&t.name, lu, l.limits())?;
                }
            }
        }
        // Every LU keeps APTPL reservations in the catalog; the VVols get theirs when opened.
        let all_targets: &Vec<Arc<Target>> = &targets;
        for lu in all_targets.iter().flat_map(|t| t.luns.values()) {
            engine.attach_pr_persistence(&lu.disk)?;
        }
        for pe in engine.pes() {
            engine.attach_pr_persistence(&pe.lu.disk)?;
        }
        Ok(Array {
            targets,
            engine: Arc::new(engine),
        })
    }

    pub fn target(&self, name: &str) -> Option<&Arc<Target>> {
        self.targets
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(name))
    }
}

fn open_target(t: &TargetConfig, data_dir: &Path, array_id: &str) -> Result<Target, ArrayError> {
    let mut luns = BTreeMap::new();
    for l in &t.luns {
        let device = open_device(l, data_dir).map_err(|source| ArrayError::Backend {
            target: t.name.clone(),
            lun: l.id,
            source,
        })?;
        let mut identity = identity(array_id, &t.name, l, device.size(), device.thin());
        identity.port_groups = t.port_groups();
        luns.insert(
            l.id,
            Arc::new(LogicalUnit::new(
                l.id,
                Lun::single(l.id),
                DiskLu::new(identity),
                device,
            )),
        );
    }
    Ok(Target {
        name: t.name.clone(),
        alias: t.alias.clone(),
        luns,
    })
}

/// Protocol Endpoints are tiny: 1 MiB, read-only, reading as zeros (its null device).
const PE_SIZE: u64 = 1 << 20;

fn protocol_endpoint(array_id: &str, t: &TargetConfig, p: &crate::config::PeConfig) -> engine::Pe {
    let naa = naa_designator(array_id, &format!("{}/pe/{}", t.name, p.id));
    let identity = DiskIdentity {
        vendor: VENDOR.into(),
        product: PRODUCT.into(),
        revision: REVISION.into(),
        serial: format!("{}pe{:04x}", &array_id[..8], p.id),
        naa,
        block_size: 512,
        num_blocks: (PE_SIZE / 512).into(),
        read_only: true,
        port_groups: t.port_groups(),
        conglomerate: true,
        administrative: true,
        // A PE has no medium to provision.
        thin: false,
    };
    engine::Pe {
        target: t.name.clone(),
        lun: p.id,
        naa,
        allowed_hosts: p
            .allowed_hosts
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        lu: Arc::new(LogicalUnit::new(
            p.id,
            crate::vvol::address::pe_lun(p.id),
            DiskLu::new(identity),
            AnyDevice::Null(NullDevice::new(PE_SIZE)),
        )),
    }
}

fn open_device(l: &LunConfig, data_dir: &Path) -> Result<AnyDevice, crate::backend::BackendError> {
    let size = l.size_bytes();
    Ok(match l.backend {
        BackendKind::Ram => AnyDevice::Ram(Arc::new(RamDevice::new(size))),
        BackendKind::Null => AnyDevice::Null(NullDevice::new(size)),
        BackendKind::File => {
            let path = l.path.as_deref().unwrap_or(Path::new("lun.img"));
            let path = if path.is_absolute() {
                path.to_path_buf()
            } else {
                data_dir.join(path)
            };
            AnyDevice::File(FileDevice::open_with(&path, size, true, l.file_options())?)
        }
    })
}

/// The array's identity: 16 random hex digits created once in the data directory. Device
/// identifiers derive from it, so they are stable across restarts and differ between arrays.
fn array_id(data_dir: &Path) -> Result<String, ArrayError> {
    let path = data_dir.join("array-id");
    let io = |source| ArrayError::DataDir {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(s) if s.trim().len() == 16 => return Ok(s.trim().to_string()),
        Ok(_) | Err(_) if path.exists() && std::fs::metadata(&path).map_err(io)?.len() > 0 => {
            return Err(io(std::io::Error::other(
                "malformed array-id (want 16 hex digits)",
            )))
        }
        _ => {}
    }
    let id = format!("{:016x}", rand::random::<u64>());
    let tmp = data_dir.join("array-id.tmp");
    std::fs::write(&tmp, &id).map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    Ok(id)
}

/// NAA-6 designator: NAA 6 | company id (24 bits) | 36 bits of the array id | 64 bits of a
/// hash of (array, name). `name` identifies the LU within the array.
pub fn naa_designator(array_id: &str, name: &str) -> [u8; 16] {
    let h = Sha256::digest(format!("{array_id}/{name}").as_bytes());
    let array = u64::from_str_radix(array_id, 16).unwrap_or(0) & 0xF_FFFF_FFFF;
    let ext = u64::from_be_bytes(h[..8].try_into().expect("8 bytes"));
    let v: u128 =
        (6u128 << 124) | ((NAA_COMPANY_ID as u128) << 100) | ((array as u128) << 64) | ext as u128;
    v.to_be_bytes()
}

fn identity(array_id: &str, target: &str, l: &LunConfig, size: u64, thin: bool) -> DiskIdentity {
    let serial = l
        .serial
        .clone()
        .unwrap_or_else(|| format!("{}{:04x}", &array_id[..8], l.id));
    DiskIdentity {
        vendor: VENDOR.into(),
        product: PRODUCT.into(),
        revision: REVISION.into(),
        serial,
        naa: naa_designator(array_id, &format!("{target}/lun/{}", l.id)),
        block_size: l.block_size,
        num_blocks: (size / l.block_size as u64).into(),
        read_only: l.read_only,
        port_groups: Vec::new(),
        // Ordinary LUs; Protocol Endpoints are built by the vvol layer.
        conglomerate: false,
        administrative: false,
        thin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn naa_is_stable_and_distinct() {
        let a = naa_designator("0123456789abcdef", "t/lun/0");
        assert_eq!(a, naa_designator("0123456789abcdef", "t/lun/0"));
        assert_ne!(a, naa_designator("0123456789abcdef", "t/lun/1"));
        assert_eq!(a[0] >> 4, 6);
    }

    /// `direct_io` reaches the file devices of LUNs and of containers' VVols.
    #[tokio::test]
    async fn file_devices_take_direct_io_from_the_config() {
        use crate::backend::file::DEFAULT_DIRECT_IO;
        // Next to the test binary, on the build's disk: O_DIRECT needs a file system that
        // does it.
        let exe = std::env::current_exe().unwrap();
        let d = tempfile::tempdir_in(exe.parent().and_then(Path::parent).unwrap()).unwrap();
        let cfg = Config::parse(
            r#"
[[target]]
name = "iqn.2026-11.io.vvold:t"
[[target.lun]]
id = 0
backend = "file"
path = "a.img"
size = "1MiB"
direct_io = true
[[target.lun]]
id = 1
backend = "file"
path = "b.img"
size = "1MiB"
[[target.pe]]
id = 254
[[container]]
name = "direct"
backend = "file"
capacity = "1GiB"
direct_io = true
[[container]]
name = "plain"
backend = "file"
capacity = "1GiB"
"#,
        )
        .unwrap();
        let array = Array::open(&cfg, d.path()).unwrap();
        let direct = |dev: &AnyDevice| match dev {
            AnyDevice::File(f) => f.direct_align().is_some(),
            _ => panic!("not a file device"),
        };
        let luns = &array.targets[0].luns;
        assert!(direct(&luns[&0].device));
        assert_eq!(direct(&luns[&1].device), DEFAULT_DIRECT_IO);
        let host = "iqn.1998-01.com.vmware:esx-1";
        for (container, want) in [("direct", true), ("plain", DEFAULT_DIRECT_IO)] {
            let v = array
                .engine
                .create_vvol(
                    container,
                    crate::vvol::catalog::VvolType::Data,
                    1 << 20,
                    512,
                    None,
                    Default::default(),
                )
                .unwrap();
            let b = array.engine.bind(v.id, host, Some(254)).await.unwrap();
            let guard = array.engine.route(host, b.pe, b.secondary).unwrap();
            assert_eq!(direct(&guard.held().device), want, "{container}");
        }
    }

    #[test]
    fn array_id_persists() {
        let d = tempfile::tempdir().unwrap();
        let a = array_id(d.path()).unwrap();
        assert_eq!(a, array_id(d.path()).unwrap());
        assert_eq!(a.len(), 16);
    }
}
