//! Daemon configuration: a TOML file, or the embedded lab default when none is given. Every
//! error names the key (as a dotted path) and the reason, so `vvold` can exit with status 2 and
//! a message a user can act on.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The lab array `vvold` serves with no arguments (also documented in target-config/lab.toml).
pub const LAB_DEFAULT: &str = r#"
listen = ["127.0.0.1:3260"]

[[target]]
name = "iqn.2026-11.io.vvold:lab"
alias = "vvold lab array"

[[target.lun]]
id = 0
backend = "file"
path = "lab-lun0.img"
size = "4GiB"

[[target.pe]]
id = 254

[[target.pe]]
id = 255

[[container]]
name = "lab"
backend = "file"
capacity = "100GiB"

[control]
listen = "127.0.0.1:8080"
initiators = ["iqn.2026-11.io.vvold:control"]
"#;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{key}: {reason}")]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
}

fn err(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Portals (address:port) to listen on.
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    /// Where file-backed LUNs and the array's identity live.
    pub data_dir: Option<PathBuf>,
    #[serde(default)]
    pub iscsi: IscsiConfig,
    #[serde(default, rename = "target")]
    pub targets: Vec<TargetConfig>,
    /// Storage containers VVols are created in.
    #[serde(default, rename = "container")]
    pub containers: Vec<ContainerConfig>,
    /// The control service (VASA-provider role).
    #[serde(default)]
    pub control: ControlConfig,
    /// Per-volume I/O control (caps, reservations, weights).
    #[serde(default)]
    pub qos: QosConfig,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct QosConfig {
    /// Off: no caps, no reservations, no per-volume telemetry.
    pub enabled: bool,
    /// Cost normalization: one unit per started `unit_bytes` of an I/O (0: one per I/O).
    /// Containers may override it.
    pub unit_bytes: u32,
    /// How far reservation tags may lag before the reservation clock slows (ms).
    pub max_lag_ms: u64,
    /// I/Os the normal LUNs' pool lets reach the backends at once.
    pub lun_window: u32,
}

impl Default for QosConfig {
    fn default() -> Self {
        QosConfig {
            enabled: true,
            unit_bytes: crate::vvol::qos::DEFAULT_UNIT_BYTES,
            max_lag_ms: 500,
            lun_window: DEFAULT_WINDOW,
        }
    }
}

/// Default in-flight window of a QoS pool: deep enough to keep a file backend busy, shallow
/// enough that the arbiter, not the device queue, decides the order (design study S7: 32
/// keeps a reservation, 128 loses half of it).
pub const DEFAULT_WINDOW: u32 = 64;

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// HTTP API address; None: no API.
    pub listen: Option<String>,
    /// Bearer token the API requires. Required unless the API listens on loopback only.
    pub token: Option<String>,
    /// Initiators allowed to send in-band binding commands to Protocol Endpoints.
    pub initiators: Vec<String>,
    /// CHAP credentials the control initiators must log in with, on every target (none: they
    /// may bind in-band over loopback only).
    pub chap: Option<ChapConfig>,
    /// REPORTED LUNS DATA HAS CHANGED (3Fh/0Eh, the default) or SUBSIDIARY BINDING CHANGED
    /// (3Fh/1Ah) as the unit attention a bind or unbind raises.
    pub bind_unit_attention: BindUnitAttention,
    /// Seconds an unbind waits for the binding's commands in flight; then it aborts those
    /// that have not reached the backend and waits only for the ones that have.
    pub drain_timeout_secs: u64,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            listen: None,
            token: None,
            initiators: Vec::new(),
            chap: None,
            bind_unit_attention: BindUnitAttention::ReportedLunsChanged,
            drain_timeout_secs: 60,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum BindUnitAttention {
    ReportedLunsChanged,
    SubsidiaryBindingChanged,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ContainerConfig {
    pub name: String,
    /// "file" (sparse files under data_dir/containers/NAME) or "ram".
    pub backend: crate::vvol::catalog::ContainerBackend,
    /// Thin capacity: "100GiB".
    pub capacity: String,
    /// How far the sum of VVol sizes may exceed the capacity.
    #[serde(default = "default_overcommit")]
    pub overcommit_ratio: f64,
    /// IOPS limits given to new VVols.
    #[serde(default)]
    pub default_upper_iops: Option<u32>,
    #[serde(default)]
    pub default_lower_iops: Option<u32>,
    #[serde(default)]
    pub default_weight: Option<u32>,
    /// I/Os the container's pool lets reach its backend at once.
    #[serde(default)]
    pub window: Option<u32>,
    /// Cost normalization for this container (default: qos.unit_bytes).
    #[serde(default)]
    pub unit_bytes: Option<u32>,
    /// Rated backend: the emulated disk's capacity in normalized IOPS ...
    #[serde(default)]
    pub rated_iops: Option<u32>,
    /// ... and its service latency on an idle disk, in µs (jittered ±50 %).
    #[serde(default)]
    pub rated_latency_us: Option<u64>,
    /// File backend: aligned I/O through O_DIRECT (default: the backend's own).
    #[serde(default)]
    pub direct_io: Option<bool>,
}

fn default_overcommit() -> f64 {
    2.0
}

/// A Protocol Endpoint: an administrative LU through which bound VVols are reached.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PeConfig {
    pub id: u16,
    /// Host initiator names that may use this PE (empty: any host).
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
}

fn default_listen() -> Vec<String> {
    vec!["127.0.0.1:3260".into()]
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct IscsiConfig {
    pub max_recv_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub max_outstanding_r2t: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    /// Commands an initiator may have queued per session (the CmdSN window).
    pub queue_depth: u32,
    /// Seconds of silence on a connection before the target sends a NOP-In ping (0 = never).
    pub nop_interval_secs: u64,
    /// Seconds to wait for the NOP-Out answer before dropping the connection.
    pub nop_timeout_secs: u64,
    /// CHAP credentials required for discovery sessions (none: discovery is open).
    pub discovery_chap: Option<ChapConfig>,
    /// The target's own credentials, for initiators that authenticate the target on discovery
    /// sessions too (mutual CHAP; needs `discovery_chap`).
    pub discovery_mutual_chap: Option<ChapConfig>,
    /// Threads serving connections, each with its own connections (0: one per CPU).
    pub worker_threads: u32,
    /// µs a network thread keeps polling after traffic before it sleeps (0: sleep at once).
    pub poll_us: u64,
    /// The answer to ABORT TASK for a task that has already finished.
    pub abort_finished_task: AbortFinishedTask,
    /// TCP congestion control of the portals' connections ("": the system's default; unset:
    /// [`DEFAULT_TCP_CONGESTION_CONTROL`] where the kernel allows it).
    pub tcp_congestion_control: Option<String>,
}

/// Loss-based, in every kernel, and choosable without privileges; BBR, the other common
/// system default, keeps too little in flight on a LAN (see `net::tcp`).
pub const DEFAULT_TCP_CONGESTION_CONTROL: &str = "cubic";

/// How ABORT TASK answers when the referenced task has already finished (its CmdSN is behind
/// the window, RFC 7143 §11.6.1 c). The abort and the command's response crossed on the wire.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum AbortFinishedTask {
    /// FUNCTION COMPLETE, as SCST does: ESXi resets the LU or drops the connection when its
    /// aborts are refused (see shared/reference/iscsi-targets-survey.md), and the initiator
    /// gets the command's response either way.
    FunctionComplete,
    /// TASK DOES NOT EXIST, as RFC 7143 §11.6.1 c says.
    TaskDoesNotExist,
}

impl Default for IscsiConfig {
    fn default() -> Self {
        IscsiConfig {
            max_recv_data_segment_length: 262_144,
            max_burst_length: 1_048_576,
            first_burst_length: 262_144,
            max_outstanding_r2t: 8,
            immediate_data: true,
            initial_r2t: false,
            queue_depth: 128,
            nop_interval_secs: 30,
            nop_timeout_secs: 15,
            discovery_chap: None,
            discovery_mutual_chap: None,
            worker_threads: 0,
            poll_us: 100,
            abort_finished_task: AbortFinishedTask::FunctionComplete,
            tcp_congestion_control: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ChapConfig {
    pub user: String,
    pub secret: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub name: String,
    pub alias: Option<String>,
    /// Initiator IQNs allowed to log in (empty: any initiator).
    #[serde(default)]
    pub allowed_initiators: Vec<String>,
    /// CHAP the initiator must pass.
    pub chap: Option<ChapConfig>,
    /// Credentials the target answers with when the initiator asks for mutual CHAP.
    pub mutual_chap: Option<ChapConfig>,
    #[serde(default, rename = "lun")]
    pub luns: Vec<LunConfig>,
    #[serde(default, rename = "pe")]
    pub pes: Vec<PeConfig>,
    /// ALUA target port groups (implicit ALUA), one per iSCSI target portal group: a group's
    /// id is the target portal group tag of its portals and the relative target port id of
    /// its one SCSI target port. Every `listen` portal belongs to exactly one group; absent,
    /// the target is group 1, active/optimized, on every portal.
    #[serde(default)]
    pub port_groups: Vec<PortGroupConfig>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PortGroupConfig {
    pub id: u16,
    #[serde(default)]
    pub state: AluaStateConfig,
    /// Portals (ADDRESS:PORT, each one of `listen`) in the group; empty means all of them
    /// (so only a target's single group may leave it empty).
    #[serde(default)]
    pub portals: Vec<String>,
}

/// Only the two active states: ESXi handles standby paths badly, and a non-active state on
/// every group would leave the LU with no usable path.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum AluaStateConfig {
    #[default]
    ActiveOptimized,
    ActiveNonOptimized,
}

impl TargetConfig {
    /// The ALUA port groups this target's LUs report, in configuration order (never empty).
    pub fn port_groups(&self) -> Vec<crate::scsi::PortGroup> {
        if self.port_groups.is_empty() {
            return vec![crate::scsi::PortGroup::default()];
        }
        self.port_groups
            .iter()
            .map(|g| crate::scsi::PortGroup {
                id: g.id,
                state: match g.state {
                    AluaStateConfig::ActiveOptimized => crate::scsi::AluaState::ActiveOptimized,
                    AluaStateConfig::ActiveNonOptimized => {
                        crate::scsi::AluaState::ActiveNonOptimized
                    }
                },
            })
            .collect()
    }

    /// The port group (= iSCSI target portal group tag) of `listen` portal `addr`. Call on a
    /// validated configuration; a portal in no group gets the first group.
    pub fn group_of(&self, addr: SocketAddr) -> u16 {
        self.port_groups
            .iter()
            .find(|g| {
                g.portals.is_empty()
                    || g.portals
                        .iter()
                        .any(|p| p.parse::<SocketAddr>().is_ok_and(|a| a == addr))
            })
            .or(self.port_groups.first())
            .map_or(1, |g| g.id)
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    File,
    Ram,
    Null,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LunConfig {
    pub id: u16,
    pub backend: BackendKind,
    /// File backend: the image path (relative paths are under the data directory).
    pub path: Option<PathBuf>,
    /// Size with an optional unit: "4GiB", "512MiB", "1T", "1048576".
    pub size: String,
    #[serde(default = "default_block_size")]
    pub block_size: u32,
    #[serde(default)]
    pub read_only: bool,
    /// Unit serial number (VPD 80h); derived from the array identity when absent.
    pub serial: Option<String>,
    /// IOPS cap, reservation and weight (normalized I/Os; see [qos]).
    #[serde(default)]
    pub upper_iops: Option<u32>,
    #[serde(default)]
    pub lower_iops: Option<u32>,
    #[serde(default)]
    pub weight: Option<u32>,
    /// File backend: aligned I/O through O_DIRECT (default: the backend's own).
    #[serde(default)]
    pub direct_io: Option<bool>,
}

fn default_block_size() -> u32 {
    512
}

impl Config {
    /// Parse and validate a TOML document.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let key = e
                .span()
                .map(|s| key_at(text, s.start))
                .unwrap_or_else(|| "config".into());
            err(key, e.message().to_string())
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn lab_default() -> Config {
        Config::parse(LAB_DEFAULT).expect("embedded default is valid")
    }

    pub fn listen_addrs(&self) -> Result<Vec<SocketAddr>, ConfigError> {
        self.listen
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.parse()
                    .map_err(|_| err(format!("listen[{i}]"), format!("'{s}' is not ADDRESS:PORT")))
            })
            .collect()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.is_empty() {
            return Err(err("listen", "at least one portal is needed"));
        }
        self.listen_addrs()?;
        let i = &self.iscsi;
        range(
            "iscsi.max_recv_data_segment_length",
            i.max_recv_data_segment_length,
            512,
            16_777_215,
        )?;
        range(
            "iscsi.max_burst_length",
            i.max_burst_length,
            512,
            16_777_215,
        )?;
        range(
            "iscsi.first_burst_length",
            i.first_burst_length,
            512,
            16_777_215,
        )?;
        if i.first_burst_length > i.max_burst_length {
            return Err(err(
                "iscsi.first_burst_length",
                "must not exceed max_burst_length",
            ));
        }
        range(
            "iscsi.max_outstanding_r2t",
            i.max_outstanding_r2t,
            1,
            65_535,
        )?;
        range("iscsi.queue_depth", i.queue_depth, 1, 128)?;
        if i.poll_us > 10_000 {
            return Err(err("iscsi.poll_us", "must be 0..=10000"));
        }
        let cc = i.tcp_congestion_control.as_deref().unwrap_or_default();
        // The kernel's TCP_CA_NAME_MAX is 16 with the terminating NUL.
        if cc.len() > 15
            || !cc
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(err(
                "iscsi.tcp_congestion_control",
                "must be an algorithm's name, such as cubic (at most 15 letters, digits, - or _), or \"\" for the system's default",
            ));
        }
        if self.targets.is_empty() {
            return Err(err("target", "at least one target is needed"));
        }
        let mut names = std::collections::HashSet::new();
        for (t, target) in self.targets.iter().enumerate() {
            let key = format!("target[{t}]");
            if !valid_iscsi_name(&target.name) {
                return Err(err(
                    format!("{key}.name"),
                    format!("'{}' is not an iSCSI name (iqn.YYYY-MM.reversed.domain[:id] or eui.<16 hex>)", target.name),
                ));
            }
            if !names.insert(target.name.to_ascii_lowercase()) {
                return Err(err(
                    format!("{key}.name"),
                    format!("duplicate target '{}'", target.name),
                ));
            }
            for (n, ini) in target.allowed_initiators.iter().enumerate() {
                if !valid_iscsi_name(ini) {
                    return Err(err(
                        format!("{key}.allowed_initiators[{n}]"),
                        format!("'{ini}' is not an iSCSI name"),
                    ));
                }
            }
            if target.mutual_chap.is_some() && target.chap.is_none() {
                return Err(err(
                    format!("{key}.mutual_chap"),
                    "needs chap to be set as well",
                ));
            }
            for (which, c) in [("chap", &target.chap), ("mutual_chap", &target.mutual_chap)] {
                if let Some(c) = c {
                    chap_ok(&format!("{key}.{which}"), c)?;
                }
            }
            if let (Some(c), Some(m)) = (&target.chap, &target.mutual_chap) {
                // RFC 7143 §12.1.3: a secret that authenticates initiators must not also
                // authenticate the target.
                if c.secret == m.secret {
                    return Err(err(
                        format!("{key}.mutual_chap.secret"),
                        "must differ from chap.secret",
                    ));
                }
            }
            self.validate_port_groups(&key, target)?;
            let mut ids = std::collections::HashSet::new();
            for (l, lun) in target.luns.iter().enumerate() {
                let key = format!("{key}.lun[{l}]");
                if lun.id > 16383 {
                    return Err(err(format!("{key}.id"), "must be 0..16383"));
                }
                if !ids.insert(lun.id) {
                    return Err(err(
                        format!("{key}.id"),
                        format!("duplicate LUN {}", lun.id),
                    ));
                }
                if lun.block_size != 512 && lun.block_size != 4096 {
                    return Err(err(format!("{key}.block_size"), "must be 512 or 4096"));
                }
                let size = parse_size(&lun.size).map_err(|r| err(format!("{key}.size"), r))?;
                if size == 0 || size % lun.block_size as u64 != 0 {
                    return Err(err(
                        format!("{key}.size"),
                        format!(
                            "must be a non-zero multiple of the block size ({})",
                            lun.block_size
                        ),
                    ));
                }
                lun.limits()
                    .validate()
                    .map_err(|e| err(format!("{key}.upper_iops"), e.to_string()))?;
                match (lun.backend, &lun.path) {
                    (BackendKind::File, None) => {
                        return Err(err(format!("{key}.path"), "the file backend needs a path"))
                    }
                    (BackendKind::Ram | BackendKind::Null, Some(_)) => {
                        return Err(err(
                            format!("{key}.path"),
                            "only the file backend takes a path",
                        ))
                    }
                    _ => {}
                }
                if lun.backend != BackendKind::File && lun.direct_io.is_some() {
                    return Err(err(
                        format!("{key}.direct_io"),
                        "only the file backend takes direct_io",
                    ));
                }
            }
        }
        if let Some(m) = &i.discovery_mutual_chap {
            chap_ok("iscsi.discovery_mutual_chap", m)?;
            match &i.discovery_chap {
                None => {
                    return Err(err(
                        "iscsi.discovery_mutual_chap",
                        "needs discovery_chap to be set as well",
                    ))
                }
                Some(c) if c.secret == m.secret => {
                    return Err(err(
                        "iscsi.discovery_mutual_chap.secret",
                        "must differ from discovery_chap.secret",
                    ))
                }
                Some(_) => {}
            }
        }
        if let Some(c) = &i.discovery_chap {
            chap_ok("iscsi.discovery_chap", c)?;
        }
        // A VVol LU is shared by every PE it is bound through, so it can report only one set
        // of port groups: every target with PEs must agree on it.
        let mut pe_groups = self.targets.iter().filter(|t| !t.pes.is_empty());
        if let Some(first) = pe_groups.next() {
            if let Some(t) = pe_groups.find(|t| t.port_groups() != first.port_groups()) {
                return Err(err(
                    format!("target '{}'.port_groups", t.name),
                    "targets with Protocol Endpoints must have the same port groups (ids and \
                     states)",
                ));
            }
        }
        self.validate_vvol_parts()
    }

    fn validate_port_groups(&self, key: &str, target: &TargetConfig) -> Result<(), ConfigError> {
        if target.port_groups.is_empty() {
            return Ok(());
        }
        let listen = self.listen_addrs()?;
        // Which group holds each listen portal: each must be in exactly one.
        let mut owner: Vec<Option<u16>> = vec![None; listen.len()];
        let mut ids = std::collections::HashSet::new();
        for (g, group) in target.port_groups.iter().enumerate() {
            let key = format!("{key}.port_groups[{g}]");
            if group.id == 0 {
                return Err(err(format!("{key}.id"), "must be 1..65535"));
            }
            if !ids.insert(group.id) {
                return Err(err(
                    format!("{key}.id"),
                    format!("duplicate port group {}", group.id),
                ));
            }
            let mut members = Vec::new();
            for (p, portal) in group.portals.iter().enumerate() {
                match portal
                    .parse::<SocketAddr>()
                    .ok()
                    .and_then(|a| listen.iter().position(|&l| l == a))
                {
                    Some(i) => members.push((i, format!("{key}.portals[{p}]"))),
                    None => {
                        return Err(err(
                            format!("{key}.portals[{p}]"),
                            format!("'{portal}' is not one of the listen portals"),
                        ))
                    }
                }
            }
            if group.portals.is_empty() {
                // Empty means every portal; with other groups that overlaps.
                members = (0..listen.len())
                    .map(|i| (i, format!("{key}.portals")))
                    .collect();
            }
            for (i, key) in members {
                if let Some(other) = owner[i] {
                    return Err(err(
                        key,
                        format!(
                            "portal {} is already in port group {other}: a portal belongs to \
                             exactly one group",
                            listen[i]
                        ),
                    ));
                }
                owner[i] = Some(group.id);
            }
        }
        if let Some(i) = owner.iter().position(Option::is_none) {
            return Err(err(
                format!("{key}.port_groups"),
                format!("listen portal {} is in no port group", listen[i]),
            ));
        }
        Ok(())
    }

    fn validate_vvol_parts(&self) -> Result<(), ConfigError> {
        let mut pe_count = 0;
        // PE numbers identify PEs array-wide (bindings name the PE by its LUN number).
        let mut pe_ids = std::collections::HashSet::new();
        for (t, target) in self.targets.iter().enumerate() {
            for (p, pe) in target.pes.iter().enumerate() {
                let key = format!("target[{t}].pe[{p}]");
                // LUN 0 answers REPORT LUNS with the target's inventory (the PEs and normal
                // LUs, never a host's secondaries), which a PE at LUN 0 would contradict.
                if pe.id == 0 || pe.id > 16383 {
                    return Err(err(
                        format!("{key}.id"),
                        "must be 1..16383 (LUN 0 reports the target's LUNs, not a PE's)",
                    ));
                }
                if target.luns.iter().any(|l| l.id == pe.id) || !pe_ids.insert(pe.id) {
                    return Err(err(
                        format!("{key}.id"),
                        format!("LUN {} is already used", pe.id),
                    ));
                }
                for (h, host) in pe.allowed_hosts.iter().enumerate() {
                    if !valid_iscsi_name(host) {
                        return Err(err(
                            format!("{key}.allowed_hosts[{h}]"),
                            format!("'{host}' is not an iSCSI name"),
                        ));
                    }
                }
                pe_count += 1;
            }
        }
        // Like the NEC M-series: at most eight PEs per array.
        if pe_count > 8 {
            return Err(err(
                "target.pe",
                format!("{pe_count} PEs configured; at most 8 per array"),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (c, cont) in self.containers.iter().enumerate() {
            let key = format!("container[{c}]");
            crate::vvol::catalog::validate_container_name(&cont.name)
                .map_err(|e| err(format!("{key}.name"), e.to_string()))?;
            if !names.insert(cont.name.clone()) {
                return Err(err(
                    format!("{key}.name"),
                    format!("duplicate container '{}'", cont.name),
                ));
            }
            let cap = parse_size(&cont.capacity).map_err(|r| err(format!("{key}.capacity"), r))?;
            if cap == 0 {
                return Err(err(format!("{key}.capacity"), "must be positive"));
            }
            if !(cont.overcommit_ratio >= 1.0 && cont.overcommit_ratio <= 100.0) {
                return Err(err(
                    format!("{key}.overcommit_ratio"),
                    "must be 1.0..=100.0",
                ));
            }
            cont.default_limits()
                .validate()
                .map_err(|e| err(format!("{key}.default_*_iops"), e.to_string()))?;
            if let Some(w) = cont.window {
                range(&format!("{key}.window"), w, 1, 4096)?;
            }
            let rated = cont.backend == crate::vvol::catalog::ContainerBackend::Rated;
            if let Some(c) = cont.rated_iops {
                range(&format!("{key}.rated_iops"), c, 10, 10_000_000)?;
            }
            if let Some(l) = cont.rated_latency_us {
                range(
                    &format!("{key}.rated_latency_us"),
                    l.min(u32::MAX as u64) as u32,
                    1,
                    10_000_000,
                )?;
            }
            if !rated && (cont.rated_iops.is_some() || cont.rated_latency_us.is_some()) {
                return Err(err(
                    format!("{key}.rated_iops"),
                    "only the rated backend takes rated_iops and rated_latency_us",
                ));
            }
            if cont.backend != crate::vvol::catalog::ContainerBackend::File
                && cont.direct_io.is_some()
            {
                return Err(err(
                    format!("{key}.direct_io"),
                    "only the file backend takes direct_io",
                ));
            }
        }
        range("qos.lun_window", self.qos.lun_window, 1, 4096)?;
        if self.qos.max_lag_ms == 0 || self.qos.max_lag_ms > 60_000 {
            return Err(err("qos.max_lag_ms", "must be 1..=60000"));
        }
        let ctl = &self.control;
        if let Some(l) = &ctl.listen {
            let addr: SocketAddr = l
                .parse()
                .map_err(|_| err("control.listen", format!("'{l}' is not ADDRESS:PORT")))?;
            if ctl.token.is_none() && !addr.ip().is_loopback() {
                return Err(err(
                    "control.token",
                    "required when the control API listens beyond loopback",
                ));
            }
        }
        if ctl.token.as_deref().is_some_and(|t| t.len() < 16) {
            return Err(err("control.token", "must be at least 16 characters"));
        }
        // Above a minute, the standalone service's in-band command timeout (75 s: the drain,
        // then up to 10 s for aborted commands) would give up on unbinds that succeed.
        if !(1..=60).contains(&ctl.drain_timeout_secs) {
            return Err(err("control.drain_timeout_secs", "must be 1..=60"));
        }
        if let Some(c) = &ctl.chap {
            chap_ok("control.chap", c)?;
            let shared = self.targets.iter().flat_map(|t| [&t.chap, &t.mutual_chap]);
            if shared.flatten().any(|t| t.secret == c.secret) {
                return Err(err(
                    "control.chap.secret",
                    "must differ from every target's CHAP secrets (hosts know those)",
                ));
            }
        }
        for (n, ini) in ctl.initiators.iter().enumerate() {
            if !valid_iscsi_name(ini) {
                return Err(err(
                    format!("control.initiators[{n}]"),
                    format!("'{ini}' is not an iSCSI name"),
                ));
            }
        }
        Ok(())
    }
}

impl ContainerConfig {
    pub fn capacity_bytes(&self) -> u64 {
        parse_size(&self.capacity).unwrap_or(0)
    }

    /// The container pool's in-flight window.
    pub fn window(&self) -> u32 {
        self.window.unwrap_or(match self.backend {
            // The emulated disk's own depth; the design study's default.
            crate::vvol::catalog::ContainerBackend::Rated => 32,
            _ => DEFAULT_WINDOW,
        })
    }

    pub fn default_limits(&self) -> crate::vvol::catalog::IoLimits {
        crate::vvol::catalog::IoLimits {
            upper: self.default_upper_iops,
            lower: self.default_lower_iops,
            weight: self.default_weight,
        }
    }

    /// How the container's file VVols do their I/O.
    pub fn file_options(&self) -> crate::backend::file::FileOptions {
        file_options(self.direct_io)
    }
}

fn file_options(direct_io: Option<bool>) -> crate::backend::file::FileOptions {
    let mut options = crate::backend::file::FileOptions::default();
    if let Some(direct) = direct_io {
        options.direct_io = direct;
    }
    options
}

impl LunConfig {
    pub fn limits(&self) -> crate::vvol::catalog::IoLimits {
        crate::vvol::catalog::IoLimits {
            upper: self.upper_iops,
            lower: self.lower_iops,
            weight: self.weight,
        }
    }

    /// Size in bytes (validated by `Config::validate`).
    pub fn size_bytes(&self) -> u64 {
        parse_size(&self.size).unwrap_or(0)
    }

    /// How a file LUN does its I/O.
    pub fn file_options(&self) -> crate::backend::file::FileOptions {
        file_options(self.direct_io)
    }
}

fn chap_ok(key: &str, c: &ChapConfig) -> Result<(), ConfigError> {
    if c.user.is_empty() {
        return Err(err(format!("{key}.user"), "must not be empty"));
    }
    // RFC 7143 §12.1.3 asks for secrets of at least 96 bits; initiators such as open-iscsi
    // refuse shorter ones, so refusing them here saves a confusing login failure later.
    if c.secret.len() < 12 || c.secret.len() > 255 {
        return Err(err(format!("{key}.secret"), "must be 12 to 255 characters"));
    }
    Ok(())
}

fn range(key: &str, v: u32, lo: u32, hi: u32) -> Result<(), ConfigError> {
    if v < lo || v > hi {
        return Err(err(key, format!("{v} is outside {lo}..={hi}")));
    }
    Ok(())
}

/// "iqn." names with a date and a naming authority, "eui." with 16 hex digits, "naa." with 16
/// or 32 hex digits (RFC 7143 §4.2.7).
pub fn valid_iscsi_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    if n.len() > 223 || n.chars().any(|c| c.is_whitespace()) {
        return false;
    }
    let hex = |s: &str| s.chars().all(|c| c.is_ascii_hexdigit());
    if let Some(rest) = n.strip_prefix("iqn.") {
        let b = rest.as_bytes();
        b.len() > 8
            && b[..4].iter().all(u8::is_ascii_digit)
            && b[4] == b'-'
            && b[5..7].iter().all(u8::is_ascii_digit)
            && b[7] == b'.'
    } else if let Some(rest) = n.strip_prefix("eui.") {
        rest.len() == 16 && hex(rest)
    } else if let Some(rest) = n.strip_prefix("naa.") {
        (rest.len() == 16 || rest.len() == 32) && hex(rest)
    } else {
        false
    }
}

/// Parse "4GiB", "4G", "512MiB", "100M", "1T", "4096", "2KiB" into bytes (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (e.g. 4GiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        "g" | "gib" | "gb" => 1 << 30,
        "t" | "tib" | "tb" => 1 << 40,
        other => return Err(format!("unknown unit '{other}' (use KiB, MiB, GiB or TiB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("'{s}' is too large"))
}

/// The dotted key path at a byte offset of a TOML document, for error messages.
fn key_at(text: &str, offset: usize) -> String {
    let upto = &text[..offset.min(text.len())];
    let line = upto.lines().count().max(1);
    let table = upto.lines().rev().find_map(|l| {
        let l = l.trim();
        l.starts_with('[')
            .then(|| l.trim_matches(|c| c == '[' || c == ']').to_string())
    });
    let here = text[upto.rfind('\n').map_or(0, |i| i + 1)..]
        .split(['=', '\n'])
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    match (table, here.is_empty() || here.starts_with('[')) {
        (Some(t), false) => format!("{t}.{here} (line {line})"),
        (Some(t), true) => format!("{t} (line {line})"),
        (None, false) => format!("{here} (line {line})"),
        (None, true) => format!("line {line}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_default_is_valid() {
        let c = Config::lab_default();
        assert_eq!(c.targets[0].name, "iqn.2026-11.io.vvold:lab");
        assert_eq!(c.targets[0].luns[0].size_bytes(), 4 << 30);
    }

    #[test]
    fn shipped_lab_toml_is_valid() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/target-config/lab.toml"
        ))
        .unwrap();
        Config::parse(&text).unwrap();
    }

    #[test]
    fn qos_keys_are_checked_and_named() {
        let rated_on_file = LAB_DEFAULT.replace(
            "capacity = \"100GiB\"",
            "capacity = \"100GiB\"\nrated_iops = 1000",
        );
        let e = Config::parse(&rated_on_file).unwrap_err();
        assert_eq!(e.key, "container[0].rated_iops");
        let window =
            LAB_DEFAULT.replace("capacity = \"100GiB\"", "capacity = \"100GiB\"\nwindow = 0");
        assert_eq!(
            Config::parse(&window).unwrap_err().key,
            "container[0].window"
        );
        let lun = LAB_DEFAULT.replace("size = \"4GiB\"", "size = \"4GiB\"\nupper_iops = 5");
        let e = Config::parse(&lun).unwrap_err();
        assert_eq!(e.key, "target[0].lun[0].upper_iops");
        assert!(e.reason.contains("10..=1000000"), "{e}");
        let off = format!("{LAB_DEFAULT}\n[qos]\nenabled = false\nlun_window = 8\n");
        let c = Config::parse(&off).unwrap();
        assert!(!c.qos.enabled);
        assert_eq!(c.qos.lun_window, 8);
        let rated = LAB_DEFAULT.replace(
            "backend = \"file\"\ncapacity",
            "backend = \"rated\"\ncapacity",
        );
        let c = Config::parse(&rated).unwrap();
        assert_eq!(c.containers[0].window(), 32);
    }

    #[test]
    fn mutual_chap_needs_a_secret_of_its_own() {
        let chap = |mutual: &str| {
            LAB_DEFAULT.replace(
                "alias = \"vvold lab array\"\n",
                &format!(
                    "alias = \"vvold lab array\"\nchap = {{ user = \"esxi\", secret = \"initiator-secret\" }}\nmutual_chap = {{ user = \"vvold\", secret = \"{mutual}\" }}\n"
                ),
            )
        };
        Config::parse(&chap("target-secret-1")).unwrap();
        let e = Config::parse(&chap("initiator-secret")).unwrap_err();
        assert_eq!(e.key, "target[0].mutual_chap.secret");
    }

    #[test]
    fn the_control_secret_is_not_a_hosts_secret() {
        let with = |secret: &str| {
            LAB_DEFAULT
                .replace(
                    "alias = \"vvold lab array\"\n",
                    "alias = \"vvold lab array\"\nchap = { user = \"esxi\", secret = \"initiator-secret\" }\n",
                )
                .replace(
                    "[control]\n",
                    &format!("[control]\nchap = {{ user = \"ctl\", secret = \"{secret}\" }}\n"),
                )
        };
        Config::parse(&with("control-secret-9")).unwrap();
        let e = Config::parse(&with("initiator-secret")).unwrap_err();
        assert_eq!(e.key, "control.chap.secret");
    }

    #[test]
    fn a_pe_cannot_be_lun_0() {
        let t = LAB_DEFAULT.replace("id = 0\nbackend = \"file\"", "id = 1\nbackend = \"file\"");
        let t = t.replace("[[target.pe]]\nid = 254", "[[target.pe]]\nid = 0");
        let e = Config::parse(&t).unwrap_err();
        assert_eq!(e.key, "target[0].pe[0].id");
    }

    #[test]
    fn bad_block_size_names_the_key() {
        let t = LAB_DEFAULT.replace("size = \"4GiB\"", "size = \"4GiB\"\nblock_size = 1024");
        let e = Config::parse(&t).unwrap_err();
        assert_eq!(e.key, "target[0].lun[0].block_size");
        assert!(e.reason.contains("512 or 4096"));
    }

    #[test]
    fn abort_answer_for_finished_tasks_is_one_of_two() {
        assert_eq!(
            Config::lab_default().iscsi.abort_finished_task,
            AbortFinishedTask::FunctionComplete
        );
        let rfc = lab_with_iscsi("abort_finished_task = \"task-does-not-exist\"");
        let c = Config::parse(&rfc).unwrap();
        assert_eq!(
            c.iscsi.abort_finished_task,
            AbortFinishedTask::TaskDoesNotExist
        );
        let bad = rfc.replace("task-does-not-exist", "ignore");
        let e = Config::parse(&bad).unwrap_err();
        assert!(e.key.contains("iscsi"), "{e}");
        assert!(e.reason.contains("function-complete"), "{e}");
    }

    /// The lab default with one line in an `[iscsi]` table.
    fn lab_with_iscsi(line: &str) -> String {
        format!("{LAB_DEFAULT}\n[iscsi]\n{line}\n")
    }

    #[test]
    fn congestion_control_is_a_name_or_empty() {
        assert_eq!(Config::lab_default().iscsi.tcp_congestion_control, None);
        for ok in ["", "reno", "bbr", "dctcp", "h_tcp-2"] {
            let c = Config::parse(&lab_with_iscsi(&format!(
                "tcp_congestion_control = \"{ok}\""
            )))
            .unwrap();
            assert_eq!(c.iscsi.tcp_congestion_control.as_deref(), Some(ok));
        }
        for bad in ["cu bic", "cubic\\u0000", "sixteen-chars-xx", "../cubic"] {
            let t = lab_with_iscsi(&format!("tcp_congestion_control = \"{bad}\""));
            let e = Config::parse(&t).unwrap_err();
            assert_eq!(e.key, "iscsi.tcp_congestion_control", "{bad}");
        }
    }

    #[test]
    fn unknown_key_names_the_key() {
        let t = LAB_DEFAULT.replace("alias =", "colour = \"red\"\nalias =");
        let e = Config::parse(&t).unwrap_err();
        assert!(e.key.contains("target"), "{e}");
        assert!(e.reason.contains("colour"), "{e}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("4 parsecs").is_err());
    }

    #[test]
    fn iscsi_names() {
        assert!(valid_iscsi_name("iqn.2026-11.io.vvold:lab"));
        assert!(valid_iscsi_name("eui.0123456789ABCDEF"));
        assert!(!valid_iscsi_name("lab"));
        assert!(!valid_iscsi_name("iqn.26-11.x"));
    }

    #[test]
    fn pe_may_not_reuse_a_lun() {
        let t = LAB_DEFAULT.replace("id = 254", "id = 0");
        assert_eq!(Config::parse(&t).unwrap_err().key, "target[0].pe[0].id");
    }

    #[test]
    fn control_token_required_beyond_loopback() {
        let t = LAB_DEFAULT.replace("listen = \"127.0.0.1:8080\"", "listen = \"0.0.0.0:8080\"");
        assert_eq!(Config::parse(&t).unwrap_err().key, "control.token");
    }

    #[test]
    fn container_limits_validated() {
        let t = LAB_DEFAULT.replace(
            "capacity = \"100GiB\"",
            "capacity = \"100GiB\"\ndefault_upper_iops = 5",
        );
        assert!(Config::parse(&t)
            .unwrap_err()
            .key
            .starts_with("container[0]"));
    }

    #[test]
    fn direct_io_is_per_file_lun_and_container() {
        use crate::backend::file::DEFAULT_DIRECT_IO;
        let cfg = Config::lab_default();
        assert_eq!(
            cfg.targets[0].luns[0].file_options().direct_io,
            DEFAULT_DIRECT_IO
        );
        assert_eq!(
            cfg.containers[0].file_options().direct_io,
            DEFAULT_DIRECT_IO
        );
        let flip = format!("direct_io = {}\n", !DEFAULT_DIRECT_IO);
        let t = LAB_DEFAULT
            .replace("size = \"4GiB\"\n", &format!("size = \"4GiB\"\n{flip}"))
            .replace(
                "capacity = \"100GiB\"\n",
                &format!("capacity = \"100GiB\"\n{flip}"),
            );
        let cfg = Config::parse(&t).unwrap();
        assert_eq!(
            cfg.targets[0].luns[0].file_options().direct_io,
            !DEFAULT_DIRECT_IO
        );
        assert_eq!(
            cfg.containers[0].file_options().direct_io,
            !DEFAULT_DIRECT_IO
        );
        // Only file storage has a page cache to bypass.
        let ram = t.replace(
            "backend = \"file\"\npath = \"lab-lun0.img\"\n",
            "backend = \"ram\"\n",
        );
        assert_eq!(
            Config::parse(&ram).unwrap_err().key,
            "target[0].lun[0].direct_io"
        );
        let ram = t.replace(
            "backend = \"file\"\ncapacity",
            "backend = \"ram\"\ncapacity",
        );
        assert_eq!(
            Config::parse(&ram).unwrap_err().key,
            "container[0].direct_io"
        );
    }

    #[test]
    fn file_backend_needs_path() {
        let t = LAB_DEFAULT.replace("path = \"lab-lun0.img\"\n", "");
        assert_eq!(Config::parse(&t).unwrap_err().key, "target[0].lun[0].path");
    }

    #[test]
    fn port_groups_default_parse_and_validate() {
        let cfg = Config::lab_default();
        assert_eq!(
            cfg.targets[0].port_groups(),
            vec![crate::scsi::PortGroup::default()]
        );
        assert_eq!(
            cfg.targets[0].group_of("127.0.0.1:3260".parse().unwrap()),
            1
        );
        let with = |groups: &str| {
            LAB_DEFAULT.replace(
                "alias = \"vvold lab array\"",
                &format!("alias = \"vvold lab array\"\nport_groups = {groups}"),
            )
        };
        let cfg = Config::parse(&with(
            r#"[{ id = 7, state = "active-non-optimized", portals = ["127.0.0.1:3260"] }]"#,
        ))
        .unwrap();
        let g = cfg.targets[0].port_groups();
        assert_eq!(
            (g.len(), g[0].id, g[0].state),
            (1, 7, crate::scsi::AluaState::ActiveNonOptimized)
        );
        assert_eq!(
            cfg.targets[0].group_of("127.0.0.1:3260".parse().unwrap()),
            7
        );
        for (groups, key) in [
            ("[{ id = 0 }]", "target[0].port_groups[0].id"),
            (
                "[{ id = 1 }, { id = 2 }]",
                "target[0].port_groups[1].portals",
            ),
            (
                r#"[{ id = 1, portals = ["10.0.0.1:3260"] }]"#,
                "target[0].port_groups[0].portals[0]",
            ),
        ] {
            assert_eq!(
                Config::parse(&with(groups)).unwrap_err().key,
                key,
                "{groups}"
            );
        }
        assert!(Config::parse(&with(r#"[{ id = 1, state = "standby" }]"#)).is_err());
    }

    #[test]
    fn several_port_groups_partition_the_portals() {
        let two = |groups: &str| {
            LAB_DEFAULT
                .replace(
                    "listen = [\"127.0.0.1:3260\"]",
                    "listen = [\"127.0.0.1:3260\", \"127.0.0.2:3260\"]",
                )
                .replace(
                    "alias = \"vvold lab array\"",
                    &format!("alias = \"vvold lab array\"\nport_groups = {groups}"),
                )
        };
        let cfg = Config::parse(&two(r#"[{ id = 1, portals = ["127.0.0.1:3260"] },
                { id = 2, state = "active-non-optimized", portals = ["127.0.0.2:3260"] }]"#))
        .unwrap();
        let t = &cfg.targets[0];
        assert_eq!(
            t.port_groups(),
            vec![
                crate::scsi::PortGroup {
                    id: 1,
                    state: crate::scsi::AluaState::ActiveOptimized
                },
                crate::scsi::PortGroup {
                    id: 2,
                    state: crate::scsi::AluaState::ActiveNonOptimized
                },
            ]
        );
        assert_eq!(t.group_of("127.0.0.1:3260".parse().unwrap()), 1);
        assert_eq!(t.group_of("127.0.0.2:3260".parse().unwrap()), 2);
        for (groups, key) in [
            // 127.0.0.2 in no group
            (
                r#"[{ id = 1, portals = ["127.0.0.1:3260"] }]"#,
                "target[0].port_groups",
            ),
            // 127.0.0.1 in two groups
            (
                r#"[{ id = 1, portals = ["127.0.0.1:3260"] },
                    { id = 2, portals = ["127.0.0.2:3260", "127.0.0.1:3260"] }]"#,
                "target[0].port_groups[1].portals[1]",
            ),
            // an empty list means every portal, which overlaps the other group
            (
                r#"[{ id = 1, portals = ["127.0.0.1:3260"] }, { id = 2 }]"#,
                "target[0].port_groups[1].portals",
            ),
            (
                r#"[{ id = 3, portals = ["127.0.0.1:3260"] },
                    { id = 3, portals = ["127.0.0.2:3260"] }]"#,
                "target[0].port_groups[1].id",
            ),
        ] {
            assert_eq!(
                Config::parse(&two(groups)).unwrap_err().key,
                key,
                "{groups}"
            );
        }
    }
}
