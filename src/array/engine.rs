//! The VVol engine: the one place where VVols are created, resized and deleted and where
//! bindings change, whether a request arrives from the HTTP API or in-band on a Protocol
//! Endpoint. It keeps the binding table and the catalog store in step, opens the backends of
//! bound VVols, drains I/O before an unbind completes, and publishes an immutable routing
//! snapshot that the data path reads without locks.

use super::frozen::FrozenMap;
use super::inflight::{Inflight, InflightGuard};
use super::qos::{Qos, VolQos};
use super::warm::{self, WarmLines};
use super::{naa_designator, LogicalUnit, PRODUCT, REVISION, VENDOR};
use crate::backend::{AnyDevice, FileDevice, RamDevice, RatedDevice, RatedPool};
use crate::config::{Config, ContainerConfig};
use crate::scsi::disk::{DiskIdentity, DiskLu};
use crate::scsi::{Lun, Sense};
use crate::store::{BindingRecord, Store, StoreError};
use crate::vvol::address::{secondary_lun, SecondaryId};
use crate::vvol::binding::{BindError, Binding, BindingState, BindingTable};
use crate::vvol::catalog::{Container, ContainerBackend, IoLimits, Vvol, VvolType};
use arc_swap::ArcSwap;
use rustc_hash::FxHashMap;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tracing::{info, warn};
use uuid::Uuid;

/// A command's hold on a bound VVol: it counts the command in flight on the binding and
/// reaches the VVol's logical unit.
pub type BindingGuard = InflightGuard<Arc<LogicalUnit>>;

/// How long an unbind waits for the commands it aborted after its drain timeout, which are
/// only those already in the backend.
const ABORTED_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("VVol {0} is bound; unbind it first")]
    Bound(Uuid),
    #[error("host {host} may not use PE {pe}")]
    PeNotAllowed { host: String, pe: u16 },
    #[error("{0}")]
    Unsupported(String),
    #[error("cannot open the backend of VVol {vvol}: {reason}")]
    Backend { vvol: Uuid, reason: String },
    #[error("the array is shutting down")]
    ShuttingDown,
    /// Saved persistent reservations that cannot be restored: the LU is not served without
    /// them (a cluster would lose its fencing).
    #[error("{0}")]
    Reservations(String),
}

impl EngineError {
    /// The sense an in-band request ends with.
    pub fn sense(&self) -> Sense {
        match self {
            EngineError::Bind(b) => b.sense(),
            EngineError::Store(StoreError::NotFound { .. }) => Sense::invalid_param_field(0, None),
            EngineError::PeNotAllowed { .. } => Sense::invalid_param_field(20, None),
            EngineError::Bound(_)
            | EngineError::Store(_)
            | EngineError::Backend { .. }
            | EngineError::ShuttingDown
            | EngineError::Reservations(_)
            | EngineError::Unsupported(_) => Sense::INTERNAL_TARGET_FAILURE,
        }
    }
}

/// A Protocol Endpoint of the array.
pub struct Pe {
    pub target: String,
    pub lun: u16,
    pub naa: [u8; 16],
    /// Lowercased host names allowed to use it; empty = any.
    pub allowed_hosts: Vec<String>,
    pub lu: Arc<LogicalUnit>,
}

impl Pe {
    pub fn allows(&self, host: &str) -> bool {
        self.allowed_hosts.is_empty()
            || self
                .allowed_hosts
                .iter()
                .any(|h| h.eq_ignore_ascii_case(host))
    }

    pub fn naa_string(&self) -> String {
        naa_string(&self.naa)
    }
}

pub fn naa_string(naa: &[u8; 16]) -> String {
    let mut s = String::from("naa.");
    for b in naa {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// A binding as the data path sees it; held inline in the routing map, so a lookup reaches it
/// without one more pointer to chase. `repr(C)`: what `route` reads comes first, in the key's
/// cache line.
#[derive(Clone)]
#[repr(C)]
pub struct BoundLu {
    pub draining: bool,
    /// Shared by every snapshot entry of the same binding, so commands that started under an
    /// older snapshot are still counted when an unbind waits. It holds the bound LU, which
    /// stays open, the same, while any binding of its VVol exists.
    inflight: Arc<Inflight<Arc<LogicalUnit>>>,
    /// The LU's state to warm as soon as a command is routed here (`warm.rs`).
    warm: WarmLines,
    pub vvol: Uuid,
}

impl BoundLu {
    pub fn lu(&self) -> &Arc<LogicalUnit> {
        self.inflight.held()
    }
}

/// host → (PE, secondary) → binding: read lock-free on every command to a secondary LUN.
/// FxHash, not SipHash: the keys come from the binding engine, not from the wire, and this
/// lookup runs on every command to a VVol (SipHash of the host name and the key was most of
/// `route`'s 4 % of the target's time with I/O spread over 1,000 VVols).
type Routes = FxHashMap<String, FrozenMap<RouteKey, BoundLu>>;

/// (PE, secondary id): where a host addresses a bound VVol.
type RouteKey = (u16, SecondaryId);

/// What the transport does when bindings change; set once by the daemon.
pub trait EngineHooks: Send + Sync {
    /// `host`'s bindings on `pe` changed: raise the bind unit attention on its sessions.
    fn bindings_changed(&self, host: &str, pe: u16);
    /// `host` gained a binding of `lu`: its existing sessions start reaching that LU.
    fn lu_bound(&self, host: &str, lu: &Arc<LogicalUnit>);
    /// `host` lost its binding of `lu`, which stays open for other hosts: its sessions no
    /// longer reach it, so their per-nexus state there (unit attentions, an SPC-2
    /// reservation) must go now; a later logout no longer finds the LU among theirs.
    fn lu_unbound(&self, host: &str, lu: &Arc<LogicalUnit>);
    /// A bound VVol grew: tell its hosts the capacity changed.
    fn capacity_changed(&self, hosts: &[String], lu: &Arc<LogicalUnit>);
    /// Abort `host`'s commands on `lun` (an unbind whose drain timed out), and wait until none
    /// of them can still reach the backend.
    fn abort_commands(&self, host: &str, lun: Lun) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

pub struct Engine {
    store: Arc<Store>,
    array_id: String,
    pes: Vec<Arc<Pe>>,
    table: Mutex<BindingTable>,
    routes: ArcSwap<Routes>,
    /// Open logical units of VVols with at least one binding.
    open: Mutex<HashMap<Uuid, Arc<LogicalUnit>>>,
    /// Ram VVols keep their device for the life of the process.
    ram: Mutex<HashMap<Uuid, Arc<RamDevice>>>,
    /// Serialises binding changes (the control plane is not a hot path).
    ops: tokio::sync::Mutex<()>,
    /// The runtime binding changes run on: the one the engine was opened in (the daemon's
    /// main runtime), not a network worker's, whose other connections would wait out the
    /// catalog's fsync of an in-band bind. None outside a runtime (then: the caller's).
    home: Option<tokio::runtime::Handle>,
    hooks: OnceLock<Arc<dyn EngineHooks>>,
    control_initiators: Vec<String>,
    qos: Arc<Qos>,
    /// Settings of the configured containers (pool window, normalization, rated disk).
    container_cfg: HashMap<String, ContainerConfig>,
    default_unit_bytes: u32,
    /// How long an unbind waits for the binding's commands in flight before aborting them.
    drain_timeout: Duration,
    lun_window: u32,
    /// Each VVol's I/O control, kept across unbind and resize so its cap and telemetry are
    /// continuous; created when the VVol is first opened.
    vvol_qos: Mutex<HashMap<Uuid, Arc<VolQos>>>,
    /// Normal LUs under QoS, by (lowercased target, LUN).
    luns: Mutex<HashMap<(String, u16), Arc<LogicalUnit>>>,
}

/// Rated containers without settings (made through the store, not the config file).
const DEFAULT_RATED_IOPS: u32 = 10_000;
const DEFAULT_RATED_LATENCY_US: u64 = 1_000;

impl Engine {
    /// Open the catalog, create the configured containers, restore bindings exactly as they
    /// were (same PE, same secondary id) and open the backends of bound VVols.
    pub fn open(
        cfg: &Config,
        data_dir: &Path,
        array_id: &str,
        pes: Vec<Arc<Pe>>,
        qos: Arc<Qos>,
    ) -> Result<Engine, EngineError> {
        let store = Arc::new(Store::open(data_dir)?);
        for c in &cfg.containers {
            let configured = Container {
                name: c.name.clone(),
                backend: c.backend,
                capacity: c.capacity_bytes(),
                overcommit_ratio: c.overcommit_ratio,
                default_limits: c.default_limits(),
            };
            if let Some(old) = store.configure_container(&configured)? {
                info!(
                    container = %c.name,
                    "configuration changed: capacity {} -> {}, overcommit {} -> {}, default limits {:?} -> {:?}",
                    old.capacity,
                    configured.capacity,
                    old.overcommit_ratio,
                    configured.overcommit_ratio,
                    old.default_limits,
                    configured.default_limits
                );
            }
        }
        for p in store.problems() {
            warn!("catalog: {p}");
        }
        let pe_luns: Vec<u16> = pes.iter().map(|p| p.lun).collect();
        let records: Vec<Binding> = store
            .bindings()?
            .into_iter()
            .filter_map(|r| {
                let secondary = SecondaryId::new(r.secondary)?;
                let state = if r.draining {
                    BindingState::Draining
                } else {
                    BindingState::Active
                };
                Some(Binding {
                    vvol: r.vvol,
                    host: r.host,
                    pe: r.pe,
                    secondary,
                    state,
                })
            })
            .collect();
        let table =
            BindingTable::from_records(pe_luns, records, store.next_ids()?).map_err(|e| {
                EngineError::Store(StoreError::InvalidValue(format!(
                    "stored bindings do not match the configured PEs: {e}"
                )))
            })?;
        let engine = Engine {
            store,
            array_id: array_id.to_string(),
            pes,
            table: Mutex::new(table),
            routes: ArcSwap::from_pointee(Routes::default()),
            open: Mutex::new(HashMap::new()),
            ram: Mutex::new(HashMap::new()),
            ops: tokio::sync::Mutex::new(()),
            home: tokio::runtime::Handle::try_current().ok(),
            hooks: OnceLock::new(),
            control_initiators: cfg
                .control
                .initiators
                .iter()
                .map(|s| s.to_ascii_lowercase())
                .collect(),
            qos,
            container_cfg: cfg
                .containers
                .iter()
                .map(|c| (c.name.clone(), c.clone()))
                .collect(),
            default_unit_bytes: cfg.qos.unit_bytes,
            drain_timeout: Duration::from_secs(cfg.control.drain_timeout_secs),
            lun_window: cfg.qos.lun_window,
            vvol_qos: Mutex::new(HashMap::new()),
            luns: Mutex::new(HashMap::new()),
        };
        // An unbind interrupted by a crash had stopped new I/O already: finish it.
        let draining: Vec<Binding> = lock(&engine.table)
            .bindings(None)
            .into_iter()
            .filter(|b| b.state == BindingState::Draining)
            .collect();
        for b in draining {
            lock(&engine.table).finish_unbind(b.vvol, &b.host, b.pe)?;
            engine.store.remove_binding(b.vvol, &b.host, b.pe)?;
        }
        let bound: Vec<Uuid> = lock(&engine.table)
            .bindings(None)
            .iter()
            .map(|b| b.vvol)
            .collect();
        for vvol in bound {
            engine.open_lu(vvol)?;
        }
        engine.publish();
        let n = lock(&engine.table).bindings(None).len();
        info!(bindings = n, "VVol catalog ready");
        Ok(engine)
    }

    pub fn set_hooks(&self, hooks: Arc<dyn EngineHooks>) {
        let _ = self.hooks.set(hooks);
    }

    pub fn pes(&self) -> &[Arc<Pe>] {
        &self.pes
    }

    pub fn pe(&self, target: &str, lun: u16) -> Option<&Arc<Pe>> {
        self.pes
            .iter()
            .find(|p| p.lun == lun && p.target.eq_ignore_ascii_case(target))
    }

    pub fn is_control_initiator(&self, initiator: &str) -> bool {
        self.control_initiators
            .iter()
            .any(|c| c.eq_ignore_ascii_case(initiator))
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Gives `disk` its APTPL persistence in the catalog (and restores its saved state).
    pub fn attach_pr_persistence(&self, disk: &DiskLu) -> Result<(), EngineError> {
        super::pr_store::attach(&self.store, disk).map_err(EngineError::Reservations)
    }

    /// The data path's lookup of a secondary LUN for `host`, which must already be lowercase
    /// (sessions keep their initiator name lowercased, so no command allocates here).
    /// Draining bindings are refused. The guard counts the command as in flight.
    pub fn route(&self, host: &str, pe: u16, id: SecondaryId) -> Option<BindingGuard> {
        let routes = self.routes.load();
        let b = routes.get(host)?.get(&(pe, id))?;
        if b.draining {
            return None;
        }
        // The line the command writes (its count and the record's reference count), asked
        // for exclusive first so its miss overlaps the warm-up's.
        warm::prefetch_for_write(b.inflight.counter_address());
        b.warm.issue();
        b.inflight.enter()
    }

    /// Secondary LUNs bound for `host` at `pe` (REPORT LUNS at the PE).
    pub fn secondaries(&self, host: &str, pe: u16) -> Vec<crate::scsi::Lun> {
        let routes = self.routes.load();
        let mut v: Vec<_> = routes
            .get(&host.to_ascii_lowercase())
            .map(|m| {
                m.iter()
                    .filter(|(k, b)| k.0 == pe && !b.draining)
                    .map(|(k, _)| secondary_lun(pe, k.1))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// The logical unit bound for `host` (lowercase) at `pe` ‖ `id`, draining or not: task
    /// management must reach the commands an unbind is waiting for.
    pub fn bound_lu(&self, host: &str, pe: u16, id: SecondaryId) -> Option<Arc<LogicalUnit>> {
        let routes = self.routes.load();
        Some(routes.get(host)?.get(&(pe, id))?.lu().clone())
    }

    /// The VVol bound for `host` (lowercase) whose LU has NAA designator `naa`, counted in
    /// flight like a routed command: EXTENDED COPY names its source and destination so, and a
    /// copy into a VVol being unbound must hold up the unbind as a write does. None if no such
    /// binding is active.
    pub fn route_by_naa(&self, host: &str, naa: &[u8; 16]) -> Option<BindingGuard> {
        let routes = self.routes.load();
        let b = routes
            .get(host)?
            .values()
            .find(|b| !b.draining && &b.lu().disk.identity().naa == naa)?;
        b.inflight.enter()
    }

    /// Where `host` addresses `lu` (PE, secondary id), if the VVol is bound for it
    /// (draining or not).
    pub fn bound_at(&self, host: &str, lu: &Arc<LogicalUnit>) -> Option<(u16, SecondaryId)> {
        let routes = self.routes.load();
        let at = routes
            .get(&host.to_ascii_lowercase())?
            .iter()
            .find(|(_, b)| Arc::ptr_eq(b.lu(), lu))
            .map(|(&key, _)| key);
        at
    }

    /// Logical units of VVols bound on any of `pes` for any host (draining or not), each once:
    /// the VVols a target reaches through its PEs.
    pub fn lus_bound_on(&self, pes: &[u16]) -> Vec<Arc<LogicalUnit>> {
        let routes = self.routes.load();
        let mut lus: Vec<Arc<LogicalUnit>> = Vec::new();
        for b in routes
            .values()
            .flat_map(|m| m.iter())
            .filter(|((pe, _), _)| pes.contains(pe))
            .map(|(_, b)| b)
        {
            if !lus.iter().any(|l| Arc::ptr_eq(l, b.lu())) {
                lus.push(b.lu().clone());
            }
        }
        lus
    }

    /// Logical units of VVols bound for `host` (a new session registers with them).
    pub fn bound_lus(&self, host: &str) -> Vec<Arc<LogicalUnit>> {
        let routes = self.routes.load();
        routes
            .get(&host.to_ascii_lowercase())
            .map(|m| m.values().map(|b| b.lu().clone()).collect())
            .unwrap_or_default()
    }

    fn publish(&self) {
        let table = lock(&self.table);
        let open = lock(&self.open);
        let old = self.routes.load();
        let mut hosts: HashMap<String, Vec<(RouteKey, BoundLu)>> = HashMap::new();
        for b in table.bindings(None) {
            let Some(lu) = open.get(&b.vvol) else {
                continue;
            };
            let draining = b.state == BindingState::Draining;
            // Keep the in-flight counter of a binding that already existed, never one that was
            // closed for an unbind (an active binding must admit commands). The warm lines
            // are gathered afresh: the LU's QoS may have been attached since.
            let inflight = old
                .get(&b.host)
                .and_then(|m| m.get(&(b.pe, b.secondary)))
                .filter(|e| e.vvol == b.vvol && (draining || !e.inflight.is_draining()))
                .map(|e| e.inflight.clone())
                .unwrap_or_else(|| Arc::new(Inflight::new(lu.clone())));
            let entry = BoundLu {
                vvol: b.vvol,
                draining,
                warm: inflight.held().warm_lines(),
                inflight,
            };
            hosts
                .entry(b.host.clone())
                .or_default()
                .push(((b.pe, b.secondary), entry));
        }
        let routes: Routes = hosts
            .into_iter()
            .map(|(host, entries)| (host, FrozenMap::new(entries)))
            .collect();
        self.routes.store(Arc::new(routes));
    }

    fn open_lu(&self, vvol: Uuid) -> Result<Arc<LogicalUnit>, EngineError> {
        if let Some(lu) = lock(&self.open).get(&vvol) {
            return Ok(lu.clone());
        }
        let v = self.store.vvol(vvol)?;
        let lu = Arc::new(self.build_lu(&v)?);
        lock(&self.open).insert(vvol, lu.clone());
        Ok(lu)
    }

    fn build_lu(&self, v: &Vvol) -> Result<LogicalUnit, EngineError> {
        let container = self.store.container(&v.container)?;
        let device = match container.backend {
            ContainerBackend::File => {
                let path = self.store.vvol_path(&v.container, v.id);
                // Containers made through the store, not the config file, get the defaults.
                let options = self
                    .container_cfg
                    .get(&container.name)
                    .map(ContainerConfig::file_options)
                    .unwrap_or_default();
                AnyDevice::File(
                    FileDevice::open_with(&path, v.size, false, options).map_err(|e| {
                        EngineError::Backend {
                            vvol: v.id,
                            reason: e.to_string(),
                        }
                    })?,
                )
            }
            ContainerBackend::Ram | ContainerBackend::Rated => {
                let dev = lock(&self.ram)
                    .entry(v.id)
                    .or_insert_with(|| Arc::new(RamDevice::new(v.size)))
                    .clone();
                match self.pool(&container).rated.clone() {
                    Some(disk) => AnyDevice::Rated(RatedDevice::new(dev, disk)),
                    None => AnyDevice::Ram(dev),
                }
            }
        };
        let id = v.id.to_string();
        let identity = DiskIdentity {
            vendor: VENDOR.into(),
            product: PRODUCT.into(),
            revision: REVISION.into(),
            serial: id.replace('-', "")[..16].to_string(),
            naa: naa_designator(&self.array_id, &format!("vvol/{id}")),
            block_size: v.block_size,
            num_blocks: (v.size / v.block_size as u64).into(),
            read_only: false,
            // Same ALUA view as the PEs it is reached through (config makes them all agree).
            port_groups: self
                .pes
                .first()
                .map(|p| p.lu.disk.identity().port_groups.clone())
                .unwrap_or_default(),
            // A VVol is a subsidiary LU of the conglomerate its PE administers.
            conglomerate: true,
            administrative: false,
            thin: crate::backend::BlockDevice::thin(&device),
        };
        let disk = DiskLu::new(identity);
        self.attach_pr_persistence(&disk)?;
        let lu = LogicalUnit::new(0, crate::scsi::Lun::default(), disk, device);
        if let Some(q) = self.vvol_qos(v, &container) {
            let _ = lu.qos.set(q);
        }
        Ok(lu)
    }

    /// The QoS pool of a container, created on first use.
    fn pool(&self, c: &Container) -> Arc<super::qos::QosPool> {
        let cfg = self.container_cfg.get(&c.name);
        let unit_bytes = cfg
            .and_then(|c| c.unit_bytes)
            .unwrap_or(self.default_unit_bytes);
        let window = cfg.map_or(crate::config::DEFAULT_WINDOW, ContainerConfig::window);
        let rated = || {
            if c.backend != ContainerBackend::Rated {
                return None;
            }
            let iops = cfg.and_then(|c| c.rated_iops).unwrap_or(DEFAULT_RATED_IOPS);
            let latency = cfg
                .and_then(|c| c.rated_latency_us)
                .unwrap_or(DEFAULT_RATED_LATENCY_US);
            Some(Arc::new(RatedPool::new(
                iops,
                window,
                Duration::from_micros(latency),
                unit_bytes,
            )))
        };
        self.qos.pool(&c.name, window, unit_bytes, rated)
    }

    fn vvol_qos(&self, v: &Vvol, c: &Container) -> Option<Arc<VolQos>> {
        let mut map = lock(&self.vvol_qos);
        if let Some(q) = map.get(&v.id) {
            return Some(q.clone());
        }
        // Read under the map's lock, which `set_limits` holds across its update: limits
        // changed since `v` was loaded are not lost to a first bind running meanwhile.
        let limits = self.store.vvol(v.id).map_or(v.limits, |now| now.limits);
        let q = self
            .qos
            .volume(format!("vvol:{}", v.id), Some(v.id), &self.pool(c), limits)?;
        map.insert(v.id, q.clone());
        Some(q)
    }

    pub fn qos(&self) -> &Arc<Qos> {
        &self.qos
    }

    /// Put a normal LU under QoS with the limits stored through the API, or else `configured`.
    pub fn attach_lun_qos(
        &self,
        target: &str,
        lu: &Arc<LogicalUnit>,
        configured: IoLimits,
    ) -> Result<(), EngineError> {
        let limits = self.store.lun_limits(target, lu.id)?.unwrap_or(configured);
        let pool = self
            .qos
            .pool("luns", self.lun_window, self.default_unit_bytes, || None);
        if let Some(q) = self
            .qos
            .volume(format!("lun:{target}/{}", lu.id), None, &pool, limits)
        {
            let _ = lu.qos.set(q);
        }
        lock(&self.luns).insert((target.to_ascii_lowercase(), lu.id), lu.clone());
        Ok(())
    }

    /// Change a normal LU's limits live and keep them.
    pub fn set_lun_limits(
        &self,
        target: &str,
        lun: u16,
        limits: IoLimits,
    ) -> Result<IoLimits, EngineError> {
        let lu = lock(&self.luns)
            .get(&(target.to_ascii_lowercase(), lun))
            .cloned()
            .ok_or_else(|| {
                EngineError::Store(StoreError::NotFound {
                    what: "LUN",
                    id: format!("{target}/{lun}"),
                })
            })?;
        // The stored and the live limits change together, as for VVols (see `set_limits`):
        // two changes at once must not leave one stored and the other in force.
        let _live = lock(&self.vvol_qos);
        self.store.set_lun_limits(target, lun, limits)?;
        if let Some(q) = lu.qos.get() {
            q.set_limits(limits);
        }
        Ok(limits)
    }

    fn hosts_of(&self, vvol: Uuid) -> Vec<String> {
        let mut h: Vec<String> = lock(&self.table)
            .bindings(None)
            .into_iter()
            .filter(|b| b.vvol == vvol)
            .map(|b| b.host)
            .collect();
        h.dedup();
        h
    }

    // ---- catalog operations -------------------------------------------------------------

    pub fn containers(
        &self,
    ) -> Result<Vec<(Container, crate::store::ContainerUsage)>, EngineError> {
        let mut out = Vec::new();
        for c in self.store.containers()? {
            let u = self.store.usage(&c.name)?;
            out.push((c, u));
        }
        Ok(out)
    }

    pub fn vvols(&self, container: Option<&str>) -> Result<Vec<(Vvol, Vec<String>)>, EngineError> {
        Ok(self
            .store
            .vvols(container)?
            .into_iter()
            .map(|v| {
                let hosts = self.hosts_of(v.id);
                (v, hosts)
            })
            .collect())
    }

    pub fn vvol(&self, id: Uuid) -> Result<(Vvol, Vec<String>), EngineError> {
        let v = self.store.vvol(id)?;
        Ok((v, self.hosts_of(id)))
    }

    pub fn create_vvol(
        &self,
        container: &str,
        vvol_type: VvolType,
        size: u64,
        block_size: u32,
        limits: Option<IoLimits>,
        metadata: BTreeMap<String, String>,
    ) -> Result<Vvol, EngineError> {
        let v = self
            .store
            .create_vvol(container, vvol_type, size, block_size, limits, metadata)?;
        info!(vvol = %v.id, container, size, "VVol created");
        Ok(v)
    }

    pub async fn delete_vvol(&self, id: Uuid) -> Result<(), EngineError> {
        let _ops = self.ops.lock().await;
        if lock(&self.table).is_bound(id) {
            return Err(EngineError::Bound(id));
        }
        self.store.delete_vvol(id)?;
        lock(&self.ram).remove(&id);
        lock(&self.vvol_qos).remove(&id);
        info!(vvol = %id, "VVol deleted");
        Ok(())
    }

    pub async fn resize_vvol(&self, id: Uuid, size: u64) -> Result<Vvol, EngineError> {
        let _ops = self.ops.lock().await;
        let current = self.store.vvol(id)?;
        if self.store.container(&current.container)?.backend != ContainerBackend::File
            && size != current.size
        {
            // A RAM disk's chunk table is fixed at creation; growing it would mean copying the
            // whole volume. RAM containers are for labs: say so rather than pretend.
            return Err(EngineError::Unsupported(
                "RAM-backed VVols cannot be resized".into(),
            ));
        }
        if size == current.size {
            return Ok(current);
        }
        // The catalog refuses to shrink, and extends the image file.
        let v = self.store.resize_vvol(id, size)?;
        // A bound VVol grows in place: the same logical unit keeps its reservations, unit
        // attentions, mode pages and COMPARE AND WRITE lock, and commands already routed to it
        // see either capacity. The device grows first, so a command never finds a capacity its
        // device would refuse. (Its file is already extended; should this still fail, the LU
        // keeps its old capacity until the next start opens it at the catalog's size.)
        let open = lock(&self.open).get(&id).cloned();
        if let Some(lu) = open {
            if let Err(e) = lu.device.grow(size) {
                return Err(EngineError::Backend {
                    vvol: id,
                    reason: e.to_string(),
                });
            }
            lu.disk
                .identity()
                .num_blocks
                .grow_to(size / u64::from(v.block_size));
            if let Some(h) = self.hooks.get() {
                h.capacity_changed(&self.hosts_of(id), &lu);
            }
        }
        Ok(v)
    }

    pub fn set_metadata(
        &self,
        id: Uuid,
        kv: &BTreeMap<String, String>,
    ) -> Result<Vvol, EngineError> {
        Ok(self.store.set_metadata(id, kv)?)
    }

    /// Change a VVol's limits; a bound VVol's I/O sees them on its next command.
    pub fn set_limits(&self, id: Uuid, limits: IoLimits) -> Result<Vvol, EngineError> {
        // The live limits and the stored ones change together (see `vvol_qos`).
        let live = lock(&self.vvol_qos);
        let v = self.store.set_limits(id, limits)?;
        if let Some(q) = live.get(&id) {
            q.set_limits(v.limits);
        }
        drop(live);
        self.warn_overcommit(&v.container);
        Ok(v)
    }

    /// Admission control (design study §6.1): say so when a pool's reservations pass 90 % of
    /// what its backend is known to deliver. Not refused: the arbiter then shares the
    /// capacity in proportion to the reservations and reports InsufficientThroughput.
    fn warn_overcommit(&self, container: &str) {
        let Ok(c) = self.store.container(container) else {
            return;
        };
        let Some(capacity) = self.pool(&c).rated.as_ref().map(|r| r.capacity()) else {
            return;
        };
        let Ok(vvols) = self.store.vvols(Some(container)) else {
            return;
        };
        let sum: u64 = vvols
            .iter()
            .filter_map(|v| v.limits.lower)
            .map(u64::from)
            .sum();
        if sum as f64 > 0.9 * capacity as f64 {
            warn!(
                container,
                reservations = sum,
                capacity,
                "lower limits exceed 90% of the pool's capacity"
            );
        }
    }

    // ---- bindings ------------------------------------------------------------------------

    pub fn bindings(&self, host: Option<&str>) -> Vec<Binding> {
        lock(&self.table).bindings(host)
    }

    pub fn bindings_on_pe(&self, pe: u16) -> Vec<Binding> {
        lock(&self.table).bindings_on_pe(pe)
    }

    /// Bind `vvol` for `host` on `pe` (None: the least loaded PE the host may use).
    pub async fn bind(
        self: &Arc<Self>,
        vvol: Uuid,
        host: &str,
        pe: Option<u16>,
    ) -> Result<Binding, EngineError> {
        let host = host.to_string();
        self.to_completion(move |engine| async move { engine.bind_now(vvol, &host, pe).await })
            .await
    }

    async fn bind_now(
        &self,
        vvol: Uuid,
        host: &str,
        pe: Option<u16>,
    ) -> Result<Binding, EngineError> {
        let _ops = self.ops.lock().await;
        self.store.vvol(vvol)?;
        let pe = match pe {
            Some(p) => {
                let allowed = self
                    .pes
                    .iter()
                    .find(|x| x.lun == p)
                    .is_none_or(|x| x.allows(host));
                if !allowed {
                    return Err(EngineError::PeNotAllowed {
                        host: host.into(),
                        pe: p,
                    });
                }
                Some(p)
            }
            None if self.pes.iter().all(|p| p.allowed_hosts.is_empty()) => None,
            None => {
                // Some PEs are restricted: choose among those this host may use.
                let table = lock(&self.table);
                self.pes
                    .iter()
                    .filter(|p| p.allows(host))
                    .min_by_key(|p| (table.bindings_on_pe(p.lun).len(), p.lun))
                    .map(|p| p.lun)
                    .ok_or(EngineError::PeNotAllowed {
                        host: host.into(),
                        pe: 0,
                    })
                    .map(Some)?
            }
        };
        let outcome = lock(&self.table).bind(vvol, host, pe)?;
        let b = outcome.binding.clone();
        if !outcome.created {
            return Ok(b);
        }
        let persisted = self.open_lu(vvol).and_then(|lu| {
            // Counter first: a crash between the two writes can then never reuse the id.
            let next = lock(&self.table)
                .next_ids()
                .get(&b.pe)
                .copied()
                .unwrap_or(1);
            self.store.set_next_id(b.pe, next)?;
            self.store
                .save_binding(vvol, &b.host, b.pe, b.secondary.get(), false)?;
            Ok(lu)
        });
        match persisted {
            Ok(_) => {}
            Err(e) => {
                let _ = lock(&self.table).finish_unbind(vvol, &b.host, b.pe);
                return Err(e);
            }
        }
        self.publish();
        if let Some(h) = self.hooks.get() {
            if let Some(lu) = lock(&self.open).get(&vvol).cloned() {
                h.lu_bound(&b.host, &lu);
            }
            h.bindings_changed(&b.host, b.pe);
        }
        info!(vvol = %vvol, host = %b.host, pe = b.pe, secondary = %b.secondary, "bound");
        Ok(b)
    }

    /// Unbind: refuse new commands on the binding, wait for those in flight, then remove it.
    pub async fn unbind(
        self: &Arc<Self>,
        vvol: Uuid,
        host: &str,
    ) -> Result<Vec<Binding>, EngineError> {
        let host = host.to_string();
        self.to_completion(move |engine| async move {
            let draining = {
                let _ops = engine.ops.lock().await;
                let draining = lock(&engine.table).begin_unbind(vvol, &host, None)?;
                engine.close_for_unbind(&draining)?;
                draining
            };
            engine.unbind_drained(draining).await
        })
        .await
    }

    pub async fn unbind_all(self: &Arc<Self>, host: &str) -> Result<Vec<Binding>, EngineError> {
        let host = host.to_string();
        self.to_completion(move |engine| async move {
            let draining = {
                let _ops = engine.ops.lock().await;
                let draining = lock(&engine.table).begin_unbind_all(&host);
                engine.close_for_unbind(&draining)?;
                draining
            };
            engine.unbind_drained(draining).await
        })
        .await
    }

    /// Run `op` in a task of its own on the engine's home runtime, so that it completes even
    /// if its caller goes away (an unbind waits for I/O in flight, and an HTTP client that gave
    /// up meanwhile, or a control session that dropped, would otherwise leave its bindings
    /// draining, refusing I/O and bind, until the next start), and so that its catalog writes
    /// never block a network thread.
    async fn to_completion<F, Fut, T>(self: &Arc<Self>, op: F) -> Result<T, EngineError>
    where
        F: FnOnce(Arc<Engine>) -> Fut,
        Fut: std::future::Future<Output = Result<T, EngineError>> + Send + 'static,
        T: Send + 'static,
    {
        let task = op(self.clone());
        let handle = match &self.home {
            Some(home) => home.spawn(task),
            None => tokio::spawn(task),
        };
        match handle.await {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(EngineError::ShuttingDown),
        }
    }

    /// First step of an unbind, under the operations lock: record the bindings as draining
    /// and publish routes that refuse new commands on them.
    fn close_for_unbind(&self, draining: &[Binding]) -> Result<(), EngineError> {
        for b in draining {
            self.store
                .save_binding(b.vvol, &b.host, b.pe, b.secondary.get(), true)?;
        }
        self.publish();
        Ok(())
    }

    /// The rest of an unbind: wait for the commands in flight, without the operations lock
    /// (binds and unbinds elsewhere on the array need not wait out a slow drain; these
    /// bindings' draining state keeps a bind of them out meanwhile), then remove them under it.
    async fn unbind_drained(&self, draining: Vec<Binding>) -> Result<Vec<Binding>, EngineError> {
        self.drain(&draining).await;
        let _ops = self.ops.lock().await;
        self.finish_unbinds(draining)
    }

    fn finish_unbinds(&self, draining: Vec<Binding>) -> Result<Vec<Binding>, EngineError> {
        let mut done = Vec::new();
        let mut failed = None;
        for b in draining {
            match self.finish_unbind(&b) {
                Ok(Some(removed)) => done.push(removed),
                Ok(None) => {}
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        // Published whatever happened, so the routes never keep a binding the table dropped.
        self.publish();
        if let Some(h) = self.hooks.get() {
            let mut seen = Vec::new();
            for b in &done {
                if !seen.contains(&(&b.host, b.pe)) {
                    seen.push((&b.host, b.pe));
                    h.bindings_changed(&b.host, b.pe);
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(done),
        }
    }

    /// Remove one drained binding; None if a concurrent unbind of it got there first.
    /// Only the very binding this unbind closed: a host may have bound the VVol afresh
    /// meanwhile (after a concurrent unbind of the same binding finished), and that one is
    /// not ours to remove.
    fn finish_unbind(&self, b: &Binding) -> Result<Option<Binding>, EngineError> {
        let lu = lock(&self.open).get(&b.vvol).cloned();
        let removed = {
            let mut table = lock(&self.table);
            let still_ours = table
                .lookup(&b.host, b.pe, b.secondary)
                .is_some_and(|now| now.vvol == b.vvol && now.state == BindingState::Draining);
            if !still_ours {
                return Ok(None);
            }
            table.finish_unbind(b.vvol, &b.host, b.pe)?
        };
        self.store.remove_binding(b.vvol, &b.host, b.pe)?;
        if !lock(&self.table).is_bound(b.vvol) {
            lock(&self.open).remove(&b.vvol);
        } else if let (Some(h), Some(lu)) = (self.hooks.get(), lu) {
            h.lu_unbound(&b.host, &lu);
        }
        info!(vvol = %b.vvol, host = %b.host, pe = b.pe, "unbound");
        Ok(Some(removed))
    }

    /// Wait until no command is in flight on `bindings` (already refusing new ones), all at
    /// once under one deadline: an unbind-all for a host with many busy VVols waits for the
    /// slowest, not for the sum.
    async fn drain(&self, bindings: &[Binding]) {
        let routes = self.routes.load();
        let mut waits = tokio::task::JoinSet::new();
        for b in bindings {
            let Some(entry) = routes
                .get(&b.host)
                .and_then(|m| m.get(&(b.pe, b.secondary)))
            else {
                continue;
            };
            let inflight = entry.inflight.clone();
            let (vvol, host) = (b.vvol, b.host.clone());
            let (timeout, hooks) = (self.drain_timeout, self.hooks.get().cloned());
            let lun = secondary_lun(b.pe, b.secondary);
            waits.spawn(async move {
                if tokio::time::timeout(timeout, inflight.drain()).await.is_ok() {
                    return;
                }
                // Commands still queued (a VVol capped at a few IOPS can hold minutes of them)
                // must not write after the unbind has returned: abort them. Those already in
                // the backend finish; the rest never start.
                warn!(vvol = %vvol, host = %host, "unbind: commands still in flight after {} s; aborting them", timeout.as_secs());
                if let Some(h) = hooks {
                    if tokio::time::timeout(ABORTED_TIMEOUT, h.abort_commands(&host, lun))
                        .await
                        .is_err()
                    {
                        warn!(vvol = %vvol, host = %host, "unbind: aborted commands still in the backend");
                    }
                }
            });
        }
        while waits.join_next().await.is_some() {}
    }

    /// Flush the backends of every open VVol (orderly shutdown).
    pub async fn flush(&self) {
        let lus: Vec<Arc<LogicalUnit>> = lock(&self.open).values().cloned().collect();
        for lu in lus {
            if let Err(e) = crate::backend::BlockDevice::flush(&lu.device).await {
                warn!("flush at shutdown: {e}");
            }
        }
    }

    /// Convert for the store's persisted form (used by tests and tools).
    pub fn records(&self) -> Vec<BindingRecord> {
        lock(&self.table)
            .bindings(None)
            .into_iter()
            .map(|b| BindingRecord {
                vvol: b.vvol,
                host: b.host,
                pe: b.pe,
                secondary: b.secondary.get(),
                draining: b.state == BindingState::Draining,
            })
            .collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
