//! `vvolctl`: the command line over vvold's control API. Human tables by default, `--json`
//! (anywhere on the command line) for scripts. The API address comes from `--url` or
//! `VVOLD_URL` (default http://127.0.0.1:8080), the bearer token from `--token` or
//! `VVOLD_TOKEN`.

use clap::{Parser, Subcommand};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;
use std::process::ExitCode;
use vvold::control::model::*;
use vvold::vvol::catalog::{IoLimits, VvolType};

#[derive(Parser, Debug)]
#[command(version, about = "Manage VVols on a vvold array")]
struct Cli {
    /// Control API URL.
    #[arg(
        long,
        global = true,
        env = "VVOLD_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    url: String,
    /// Bearer token of the control API.
    #[arg(long, global = true, env = "VVOLD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Storage containers.
    Container {
        #[command(subcommand)]
        cmd: ListOnly,
    },
    /// Protocol Endpoints.
    Pe {
        #[command(subcommand)]
        cmd: ListOnly,
    },
    /// Virtual volumes.
    Vvol {
        #[command(subcommand)]
        cmd: VvolCmd,
    },
    /// Bind a VVol for a host; prints the PE LUN, PE NAA and secondary id.
    Bind {
        id: String,
        #[arg(long)]
        host: String,
        /// PE LUN (default: the PE with the fewest bound VVols).
        #[arg(long)]
        pe: Option<u16>,
    },
    /// Unbind a VVol for a host (waits for its in-flight I/O).
    Unbind {
        id: String,
        #[arg(long)]
        host: String,
    },
    /// Unbind every VVol bound for a host.
    UnbindAll {
        #[arg(long)]
        host: String,
    },
    /// List bindings.
    Bindings {
        #[arg(long)]
        host: Option<String>,
    },
    /// Per-volume I/O control: limits and telemetry.
    Qos {
        #[command(subcommand)]
        cmd: QosCmd,
    },
    /// A live view of every volume's I/O (refreshed each interval; Ctrl-C stops).
    Top {
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1)]
        interval: u64,
        /// Stop after this many refreshes (default: run until interrupted).
        #[arg(long)]
        count: Option<u64>,
    },
}

#[derive(Subcommand, Debug)]
enum QosCmd {
    /// Change limits live: VOLUME is a VVol id or lun:TARGET/N. Limits not given keep their
    /// value; `none` removes one.
    Set {
        volume: String,
        #[arg(long, value_parser = parse_limit)]
        upper: Option<Limit>,
        #[arg(long, value_parser = parse_limit)]
        lower: Option<Limit>,
        #[arg(long, value_parser = parse_limit)]
        weight: Option<Limit>,
    },
    /// Telemetry of every volume (1 s and 10 s windows) and pool.
    Show,
}

#[derive(Debug, Clone, Copy)]
enum Limit {
    Set(u32),
    Clear,
}

fn parse_limit(s: &str) -> Result<Limit, String> {
    match s {
        "none" | "off" => Ok(Limit::Clear),
        _ => s
            .parse()
            .map(Limit::Set)
            .map_err(|_| format!("'{s}' is not a number or 'none'")),
    }
}

fn apply(current: Option<u32>, change: Option<Limit>) -> Option<u32> {
    match change {
        None => current,
        Some(Limit::Set(v)) => Some(v),
        Some(Limit::Clear) => None,
    }
}

#[derive(Subcommand, Debug)]
enum ListOnly {
    List,
}

#[derive(Subcommand, Debug)]
enum VvolCmd {
    /// Create a VVol; prints its id.
    Create {
        #[arg(long)]
        container: String,
        /// Size: 10G, 512MiB, bytes.
        #[arg(long)]
        size: String,
        #[arg(long = "type", default_value = "data", value_parser = parse_type)]
        vvol_type: VvolType,
        #[arg(long)]
        block_size: Option<u32>,
    },
    List {
        #[arg(long)]
        container: Option<String>,
    },
    Show {
        id: String,
    },
    /// Grow a VVol.
    Resize {
        id: String,
        #[arg(long)]
        size: String,
    },
    /// Delete a VVol (refused while it is bound).
    Delete {
        id: String,
    },
    /// Metadata.
    Meta {
        #[command(subcommand)]
        cmd: MetaCmd,
    },
    /// Change IOPS limits: those given replace the VVol's, the others keep their value
    /// (`qos set` can also remove one).
    Limits {
        id: String,
        #[arg(long)]
        upper: Option<u32>,
        #[arg(long)]
        lower: Option<u32>,
        #[arg(long)]
        weight: Option<u32>,
    },
}

#[derive(Subcommand, Debug)]
enum MetaCmd {
    /// Set KEY=VALUE pairs (an empty VALUE removes the key).
    Set {
        id: String,
        #[arg(required = true, value_parser = parse_kv)]
        pairs: Vec<(String, String)>,
    },
}

fn parse_type(s: &str) -> Result<VvolType, String> {
    VvolType::parse(s)
        .ok_or_else(|| format!("'{s}' is not one of config, data, swap, memory, other"))
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("'{s}' is not KEY=VALUE"))
}

struct Client {
    url: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, String> {
        let mut req = self
            .agent
            .request(method, &format!("{}{path}", self.url.trim_end_matches('/')));
        if let Some(t) = &self.token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        let resp = match body {
            Some(b) => req.send_json(serde_json::to_value(b).map_err(|e| e.to_string())?),
            None => req.call(),
        };
        match resp {
            Ok(r) if r.status() == 204 => serde_json::from_str("null").map_err(|e| e.to_string()),
            Ok(r) => r
                .into_json()
                .map_err(|e| format!("bad answer from {}: {e}", self.url)),
            Err(ureq::Error::Status(code, r)) => {
                let msg = r
                    .into_json::<ErrorBody>()
                    .map(|e| e.error)
                    .unwrap_or_default();
                Err(format!("{code}: {msg}"))
            }
            Err(e) => Err(format!("cannot reach {}: {e}", self.url)),
        }
    }
}

fn human_size(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

fn limit(v: Option<u32>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

fn print_vvols(v: &[VvolInfo]) {
    table(
        &[
            "ID",
            "CONTAINER",
            "TYPE",
            "SIZE",
            "UPPER",
            "LOWER",
            "BOUND-HOSTS",
        ],
        v.iter()
            .map(|v| {
                vec![
                    v.id.to_string(),
                    v.container.clone(),
                    v.vvol_type.as_str().into(),
                    human_size(v.size),
                    limit(v.limits.upper),
                    limit(v.limits.lower),
                    v.bound_hosts.join(","),
                ]
            })
            .collect(),
    );
}

fn print_bindings(b: &[BindingInfo]) {
    table(
        &["VVOL", "HOST", "PE-LUN", "PE-NAA", "SECONDARY-ID", "STATE"],
        b.iter()
            .map(|b| {
                vec![
                    b.vvol.to_string(),
                    b.host.clone(),
                    b.pe_lun.to_string(),
                    b.pe_naa.clone(),
                    b.secondary_id.clone(),
                    b.state.clone(),
                ]
            })
            .collect(),
    );
}

fn opt(v: Option<u32>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

fn print_qos(r: &QosReport) {
    let mut vols: Vec<_> = r.volumes.iter().collect();
    vols.sort_by(|a, b| b.window_1s.iops.total_cmp(&a.window_1s.iops));
    table(
        &[
            "VOLUME",
            "POOL",
            "UPPER",
            "LOWER",
            "WEIGHT",
            "STATUS",
            "IOPS 1s",
            "UNITS/s 1s",
            "IOPS 10s",
            "MB/s 10s",
            "P50 us",
            "P99 us",
            "THROTTLED ms/s",
        ],
        vols.iter()
            .map(|v| {
                let (s, l) = (&v.window_1s, &v.window_10s);
                vec![
                    v.name.clone(),
                    v.pool.clone(),
                    opt(v.limits.upper),
                    opt(v.limits.lower),
                    opt(v.limits.weight),
                    format!("{:?}", v.status),
                    format!("{:.0}", s.iops),
                    format!("{:.0}", s.units_per_s),
                    format!("{:.0}", l.iops),
                    format!("{:.1}", l.mb_per_s),
                    format!("{:.0}", l.latency_us.p50),
                    format!("{:.0}", l.latency_us.p99),
                    format!("{:.1}", s.throttled_ms_per_s),
                ]
            })
            .collect(),
    );
    println!();
    table(
        &[
            "POOL", "WINDOW", "INFLIGHT", "QUEUED", "RESERVED", "CAPACITY", "LAG ms",
        ],
        r.pools
            .iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    p.window.to_string(),
                    p.inflight.to_string(),
                    p.queued.to_string(),
                    p.reservations.to_string(),
                    opt(p.capacity),
                    format!("{:.1}", p.reservation_lag_ms),
                ]
            })
            .collect(),
    );
    if !r.enabled {
        println!("\nQoS is off ([qos] enabled = false): no limits are applied.");
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let c = Client {
        url: cli.url,
        token: cli.token,
        agent: ureq::AgentBuilder::new().build(),
    };
    let json = cli.json;
    macro_rules! emit {
        ($v:expr, $human:expr) => {{
            let v = $v;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?
                );
            } else {
                $human(&v);
            }
        }};
    }
    let none: Option<&()> = None;
    match cli.cmd {
        Cmd::Container {
            cmd: ListOnly::List,
        } => {
            let v: Vec<ContainerInfo> = c.call("GET", "/api/v1/containers", none)?;
            emit!(v, |v: &Vec<ContainerInfo>| table(
                &[
                    "NAME",
                    "BACKEND",
                    "CAPACITY",
                    "PROVISIONED",
                    "ALLOCATED",
                    "FREE",
                    "OVERCOMMIT"
                ],
                v.iter()
                    .map(|c| vec![
                        c.name.clone(),
                        format!("{:?}", c.backend).to_lowercase(),
                        human_size(c.capacity),
                        human_size(c.provisioned),
                        human_size(c.allocated),
                        human_size(c.free),
                        format!("{}", c.overcommit_ratio),
                    ])
                    .collect()
            ));
        }
        Cmd::Pe {
            cmd: ListOnly::List,
        } => {
            let v: Vec<PeInfo> = c.call("GET", "/api/v1/pes", none)?;
            emit!(v, |v: &Vec<PeInfo>| table(
                &["TARGET", "LUN", "NAA", "BOUND", "HOSTS"],
                v.iter()
                    .map(|p| vec![
                        p.target.clone(),
                        p.lun.to_string(),
                        p.naa.clone(),
                        p.bound_vvols.to_string(),
                        if p.allowed_hosts.is_empty() {
                            "any".into()
                        } else {
                            p.allowed_hosts.join(",")
                        },
                    ])
                    .collect()
            ));
        }
        Cmd::Vvol { cmd } => match cmd {
            VvolCmd::Create {
                container,
                size,
                vvol_type,
                block_size,
            } => {
                let req = CreateVvol {
                    container,
                    size: Size::Text(size),
                    vvol_type,
                    block_size,
                    limits: None,
                    metadata: BTreeMap::new(),
                };
                let v: VvolInfo = c.call("POST", "/api/v1/vvols", Some(&req))?;
                emit!(v, |v: &VvolInfo| println!("{}", v.id));
            }
            VvolCmd::List { container } => {
                let path = match container {
                    Some(n) => format!("/api/v1/vvols?container={n}"),
                    None => "/api/v1/vvols".into(),
                };
                let v: Vec<VvolInfo> = c.call("GET", &path, none)?;
                emit!(v, |v: &Vec<VvolInfo>| print_vvols(v));
            }
            VvolCmd::Show { id } => {
                let v: VvolInfo = c.call("GET", &format!("/api/v1/vvols/{id}"), none)?;
                emit!(v, |v: &VvolInfo| {
                    print_vvols(std::slice::from_ref(v));
                    for (k, val) in &v.metadata {
                        println!("  {k}={val}");
                    }
                });
            }
            VvolCmd::Resize { id, size } => {
                let v: VvolInfo = c.call(
                    "POST",
                    &format!("/api/v1/vvols/{id}/resize"),
                    Some(&Resize {
                        size: Size::Text(size),
                    }),
                )?;
                emit!(v, |v: &VvolInfo| print_vvols(std::slice::from_ref(v)));
            }
            VvolCmd::Delete { id } => {
                let _: () = c.call("DELETE", &format!("/api/v1/vvols/{id}"), none)?;
                if json {
                    println!("{{}}");
                }
            }
            VvolCmd::Meta {
                cmd: MetaCmd::Set { id, pairs },
            } => {
                let kv: BTreeMap<String, String> = pairs.into_iter().collect();
                let v: VvolInfo =
                    c.call("PUT", &format!("/api/v1/vvols/{id}/metadata"), Some(&kv))?;
                emit!(v, |v: &VvolInfo| for (k, val) in &v.metadata {
                    println!("{k}={val}");
                });
            }
            VvolCmd::Limits {
                id,
                upper,
                lower,
                weight,
            } => {
                // The API's PUT replaces all three; an option left out must not clear one.
                let cur: VvolInfo = c.call("GET", &format!("/api/v1/vvols/{id}"), none)?;
                let l = IoLimits {
                    upper: upper.or(cur.limits.upper),
                    lower: lower.or(cur.limits.lower),
                    weight: weight.or(cur.limits.weight),
                };
                let v: VvolInfo = c.call("PUT", &format!("/api/v1/vvols/{id}/limits"), Some(&l))?;
                emit!(v, |v: &VvolInfo| print_vvols(std::slice::from_ref(v)));
            }
        },
        Cmd::Bind { id, host, pe } => {
            let vvol =
                uuid::Uuid::parse_str(&id).map_err(|_| format!("'{id}' is not a VVol id"))?;
            let b: BindingInfo = c.call(
                "POST",
                "/api/v1/bind",
                Some(&BindRequest { vvol, host, pe }),
            )?;
            emit!(b, |b: &BindingInfo| println!(
                "pe_lun={} pe_naa={} secondary_id={}",
                b.pe_lun, b.pe_naa, b.secondary_id
            ));
        }
        Cmd::Unbind { id, host } => {
            let vvol =
                uuid::Uuid::parse_str(&id).map_err(|_| format!("'{id}' is not a VVol id"))?;
            let b: Vec<BindingInfo> = c.call(
                "POST",
                "/api/v1/unbind",
                Some(&UnbindRequest { vvol, host }),
            )?;
            emit!(b, |b: &Vec<BindingInfo>| print_bindings(b));
        }
        Cmd::UnbindAll { host } => {
            let b: Vec<BindingInfo> = c.call(
                "POST",
                "/api/v1/unbind-all",
                Some(&UnbindAllRequest { host }),
            )?;
            emit!(b, |b: &Vec<BindingInfo>| print_bindings(b));
        }
        Cmd::Bindings { host } => {
            let path = match host {
                Some(h) => format!("/api/v1/bindings?host={h}"),
                None => "/api/v1/bindings".into(),
            };
            let b: Vec<BindingInfo> = c.call("GET", &path, none)?;
            emit!(b, |b: &Vec<BindingInfo>| print_bindings(b));
        }
        Cmd::Qos { cmd: QosCmd::Show } => {
            let r: QosReport = c.call("GET", "/api/v1/qos", none)?;
            emit!(r, print_qos);
        }
        Cmd::Qos {
            cmd:
                QosCmd::Set {
                    volume,
                    upper,
                    lower,
                    weight,
                },
        } => {
            let change = |cur: IoLimits| IoLimits {
                upper: apply(cur.upper, upper),
                lower: apply(cur.lower, lower),
                weight: apply(cur.weight, weight),
            };
            if let Some(lun) = volume.strip_prefix("lun:") {
                let (target, n) = lun
                    .rsplit_once('/')
                    .and_then(|(t, n)| Some((t, n.parse::<u16>().ok()?)))
                    .ok_or_else(|| format!("'{volume}' is not lun:TARGET/N"))?;
                let r: QosReport = c.call("GET", "/api/v1/qos", none)?;
                let cur = r
                    .volumes
                    .iter()
                    .find(|v| v.name.eq_ignore_ascii_case(&volume))
                    .map(|v| v.limits)
                    .unwrap_or_default();
                let l: LunLimits = c.call(
                    "PUT",
                    &format!("/api/v1/targets/{target}/luns/{n}/limits"),
                    Some(&change(cur)),
                )?;
                emit!(l, |l: &LunLimits| println!(
                    "lun:{}/{} upper={} lower={} weight={}",
                    l.target,
                    l.lun,
                    opt(l.limits.upper),
                    opt(l.limits.lower),
                    opt(l.limits.weight)
                ));
            } else {
                let id = uuid::Uuid::parse_str(&volume)
                    .map_err(|_| format!("'{volume}' is not a VVol id or lun:TARGET/N"))?;
                let cur: VvolInfo = c.call("GET", &format!("/api/v1/vvols/{id}"), none)?;
                let v: VvolInfo = c.call(
                    "PUT",
                    &format!("/api/v1/vvols/{id}/limits"),
                    Some(&change(cur.limits)),
                )?;
                emit!(v, |v: &VvolInfo| print_vvols(std::slice::from_ref(v)));
            }
        }
        Cmd::Top { interval, count } => {
            let mut n = 0;
            loop {
                let r: QosReport = c.call("GET", "/api/v1/qos", none)?;
                if json {
                    println!("{}", serde_json::to_string(&r).map_err(|e| e.to_string())?);
                } else {
                    // Clear the screen and home the cursor, like top(1).
                    print!("\x1b[2J\x1b[H");
                    println!("vvold top  {}  (every {interval} s)\n", c.url);
                    print_qos(&r);
                }
                n += 1;
                if count.is_some_and(|c| n >= c) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_secs(interval.max(1)));
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vvolctl: {e}");
            ExitCode::FAILURE
        }
    }
}
