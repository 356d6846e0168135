//! `vvold-load`: a closed-loop load generator that drives a target through real iSCSI sessions.
//!
//! Each volume (a LUN, single-level or a full 8-byte two-level VVol LUN, or a set of LUNs named
//! by `@FILE`) gets its own sessions, one TCP connection each with a distinct ISID. A session
//! logs in with the one-command-at-a-time [`crate::initiator::Session`], clears the power-on unit
//! attention and reads the capacity of each of its LUNs, then hands its socket to the pipelined
//! [`engine`], which keeps up to QD READ(16)/WRITE(16) in flight, each to a LUN of the set
//! picked at random. Completions after the warm-up and before the end count; latencies go to a log
//! histogram, completions per second to `per_second` (for QoS cap checks), and the client's own
//! CPU time over the measured period is reported so its cost per I/O is known.

mod engine;
pub mod hist;

pub use engine::SessionStats;
use hist::Histogram;

use crate::initiator::{LoginOptions, Session};
use crate::scsi::Lun;
use serde::Serialize;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The access pattern of a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rw {
    RandRead,
    RandWrite,
    Read,
    Write,
}

impl Rw {
    pub fn parse(s: &str) -> Result<Rw, String> {
        match s {
            "randread" => Ok(Rw::RandRead),
            "randwrite" => Ok(Rw::RandWrite),
            "read" => Ok(Rw::Read),
            "write" => Ok(Rw::Write),
            _ => Err(format!(
                "unknown rw '{s}' (randread, randwrite, read, write)"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Rw::RandRead => "randread",
            Rw::RandWrite => "randwrite",
            Rw::Read => "read",
            Rw::Write => "write",
        }
    }
}

/// One volume to drive: one LUN, or a set of LUNs that each command picks one of at random.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    /// The LUNs (one, or the set an `@FILE` spec names), never empty, no duplicates.
    pub luns: Vec<Lun>,
    /// The LUN as given (decimal, or 16 hex digits), or `@FILE`.
    pub lun_text: String,
    /// Commands in flight per session.
    pub qd: usize,
    pub sessions: usize,
    pub rw: Rw,
    /// Bytes per I/O.
    pub bs: u32,
}

/// What a volume SPEC does not say.
#[derive(Debug, Clone, Copy)]
pub struct VolumeDefaults {
    pub qd: usize,
    pub sessions: usize,
    pub rw: Rw,
    pub bs: u32,
}

/// A LUN: decimal single-level (`0`..`16383`) or exactly 16 hex digits for all 8 bytes.
pub fn parse_lun(s: &str) -> Result<Lun, String> {
    if s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        let v = u64::from_str_radix(s, 16).map_err(|e| format!("LUN '{s}': {e}"))?;
        return Ok(Lun::from_bytes(v.to_be_bytes()));
    }
    match s.parse::<u16>() {
        Ok(n) if n <= 0x3FFF => Ok(Lun::single(n)),
        _ => Err(format!(
            "LUN '{s}': a decimal number up to 16383, or exactly 16 hex digits"
        )),
    }
}

/// A set of LUNs, one per line as [`parse_lun`] takes them; blank lines and `#` comments are
/// skipped. `origin` names the source in errors. Empty sets and duplicates are refused (a
/// duplicate would get twice the share of I/O and make the count of LUNs that got I/O lie).
pub fn parse_lun_list(text: &str, origin: &str) -> Result<Vec<Lun>, String> {
    let mut luns = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.split('#').next().unwrap_or("").trim();
        if l.is_empty() {
            continue;
        }
        let lun = parse_lun(l).map_err(|e| format!("{origin} line {}: {e}", i + 1))?;
        if !seen.insert(lun) {
            return Err(format!("{origin} line {}: LUN '{l}' listed twice", i + 1));
        }
        luns.push(lun);
    }
    if luns.is_empty() {
        return Err(format!("{origin}: no LUN in it"));
    }
    Ok(luns)
}

/// The LUN's 8 bytes as 16 hex digits (how members of a set are named in errors).
pub fn lun_hex(lun: Lun) -> String {
    format!("{:016X}", u64::from_be_bytes(lun.to_bytes()))
}

/// A byte count: `4096`, `4k`, `128K`, `1m`, `4KiB`, `1MiB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("size '{s}': no number"))?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("size '{s}': unknown unit '{unit}'")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size '{s}' is too large"))
}

/// `LUN[,qd=N][,sessions=S][,rw=..][,bs=..]`, where LUN may be `@FILE`: the set of LUNs the
/// file lists (see [`parse_lun_list`]), every command of the volume's sessions going to one of
/// them picked at random.
pub fn parse_volume_spec(spec: &str, d: &VolumeDefaults) -> Result<VolumeSpec, String> {
    let mut parts = spec.split(',');
    let lun_text = parts.next().unwrap_or("").trim().to_string();
    let luns = match lun_text.strip_prefix('@') {
        Some("") => return Err(format!("volume '{spec}': '@' needs a file name")),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("volume '{spec}': LUN list {path}: {e}"))?;
            parse_lun_list(&text, path)?
        }
        None => vec![parse_lun(&lun_text)?],
    };
    let mut v = VolumeSpec {
        luns,
        lun_text,
        qd: d.qd,
        sessions: d.sessions,
        rw: d.rw,
        bs: d.bs,
    };
    for part in parts {
        let (k, val) = part
            .split_once('=')
            .ok_or_else(|| format!("volume '{spec}': '{part}' is not key=value"))?;
        let count = |what: &str| -> Result<usize, String> {
            match val.trim().parse::<usize>() {
                Ok(n) if (1..=4096).contains(&n) => Ok(n),
                _ => Err(format!("volume '{spec}': {what} must be 1..4096")),
            }
        };
        match k.trim() {
            "qd" => v.qd = count("qd")?,
            "sessions" => v.sessions = count("sessions")?,
            "rw" => v.rw = Rw::parse(val.trim())?,
            "bs" => v.bs = parse_bs(val)?,
            other => return Err(format!("volume '{spec}': unknown key '{other}'")),
        }
    }
    Ok(v)
}

/// An I/O size: a multiple of 512 bytes, at most 16 MiB.
pub fn parse_bs(s: &str) -> Result<u32, String> {
    let n = parse_size(s)?;
    if n == 0 || n % 512 != 0 || n > 16 << 20 {
        return Err(format!(
            "bs '{s}': must be a multiple of 512 bytes, at most 16 MiB"
        ));
    }
    Ok(n as u32)
}

/// The whole run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub portal: SocketAddr,
    pub target: String,
    pub initiator: String,
    pub chap: Option<(String, String)>,
    pub volumes: Vec<VolumeSpec>,
    pub seconds: f64,
    pub warmup: f64,
    pub header_digest: bool,
    pub data_digest: bool,
    /// A process (the target) whose CPU time over the measured period is reported too.
    pub target_pid: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub mean: f64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// Results of a volume, or of all together.
#[derive(Debug, Clone, Serialize)]
pub struct Metrics {
    pub ios: u64,
    pub bytes: u64,
    pub iops: f64,
    /// 10^6 bytes per second.
    pub mbps: f64,
    pub lat_us: Latency,
    /// Completions in each 1 s interval of the measured period.
    pub per_second: Vec<u64>,
    pub errors: u64,
    pub unit_attentions: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct VolumeReport {
    pub lun: String,
    pub rw: &'static str,
    pub bs: u32,
    pub qd: usize,
    pub sessions: usize,
    /// Capacity of the LUN (of a set: the sum over its LUNs).
    pub capacity_bytes: u64,
    /// Logical block size of the LUN (of a set: the largest).
    pub block_size: u32,
    /// How many LUNs the volume names (1 unless `@FILE`).
    pub luns: usize,
    /// How many of them completed at least one I/O in the measured period, and the fewest and
    /// most I/Os one of them completed there.
    pub luns_with_io: usize,
    pub lun_ios_min: u64,
    pub lun_ios_max: u64,
    #[serde(flatten)]
    pub metrics: Metrics,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub volumes: Vec<VolumeReport>,
    pub total: Metrics,
    /// CPU time (user + system) this process used over the measured period.
    pub client_cpu_s: f64,
    pub client_cpu_us_per_io: f64,
    /// CPU time of `--target-pid` over the measured period (all its threads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_cpu_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_cpu_us_per_io: Option<f64>,
    /// Length of the measured period.
    pub seconds: f64,
    pub warmup: f64,
}

/// What a session learned at login: the size of each of its volume's LUNs.
struct Ready {
    stream: tokio::net::TcpStream,
    params: crate::initiator::SessionParams,
    /// (blocks, block size) of each LUN, in the volume's order.
    geometry: Vec<(u64, u32)>,
}

async fn prepare(cfg: &LoadConfig, v: &VolumeSpec, isid: [u8; 6]) -> Result<Ready, String> {
    let mut o = LoginOptions::new(&cfg.initiator, Some(&cfg.target));
    o.isid = isid;
    o.chap = cfg.chap.clone();
    o.header_digest = cfg.header_digest;
    o.data_digest = cfg.data_digest;
    let mut s = Session::login(cfg.portal, &o)
        .await
        .map_err(|e| format!("login to {} at {}: {e}", cfg.target, cfg.portal))?;
    let mut geometry = Vec::with_capacity(v.luns.len());
    for &lun in &v.luns {
        let name = if v.luns.len() == 1 {
            v.lun_text.clone()
        } else {
            format!("{} ({})", lun_hex(lun), v.lun_text)
        };
        geometry.push(lun_geometry(&mut s, lun, &name, v.bs).await?);
    }
    let (stream, params) = s.into_parts();
    Ok(Ready {
        stream,
        params,
        geometry,
    })
}

/// Clear a LUN's unit attentions and read its capacity: (blocks, block size).
async fn lun_geometry(
    s: &mut Session,
    lun: Lun,
    name: &str,
    bs: u32,
) -> Result<(u64, u32), String> {
    let what = |e| format!("LUN {name}: {e}");
    // TEST UNIT READY until GOOD: the first command of a session reports the power-on UA
    // (and a VVol may report others); anything else is an error.
    let mut ready = false;
    for _ in 0..8 {
        let r = s.command(lun, &[0; 6], None, 0).await.map_err(what)?;
        match (r.status, r.sense_code()) {
            (0, _) => {
                ready = true;
                break;
            }
            (2, Some((6, _, _))) => continue,
            (st, sense) => {
                return Err(format!(
                    "LUN {name}: TEST UNIT READY answered status {st:#04x} sense {sense:02x?}"
                ))
            }
        }
    }
    if !ready {
        return Err(format!("LUN {name}: unit attentions do not stop"));
    }
    let mut cdb = [0u8; 16];
    cdb[0] = 0x9E;
    cdb[1] = 0x10;
    cdb[13] = 32;
    let r = s.command(lun, &cdb, None, 32).await.map_err(what)?;
    if r.status != 0 || r.data.len() < 12 {
        return Err(format!(
            "LUN {name}: READ CAPACITY(16) failed: status {:#04x} sense {:02x?}",
            r.status,
            r.sense_code()
        ));
    }
    let last = u64::from_be_bytes(r.data[0..8].try_into().expect("8 bytes"));
    let block_size = u32::from_be_bytes(r.data[8..12].try_into().expect("4 bytes"));
    if block_size == 0 || bs % block_size != 0 {
        return Err(format!(
            "LUN {name}: bs {bs} is not a multiple of the block size {block_size}"
        ));
    }
    if (last + 1) * (block_size as u64) < bs as u64 {
        return Err(format!("LUN {name}: smaller than one I/O of {bs} bytes"));
    }
    Ok((last + 1, block_size))
}

/// CPU seconds (user + system) this process has used: the utime + stime of /proc/self/stat,
/// read through getrusage for microsecond resolution instead of clock ticks.
pub fn process_cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we pass; RUSAGE_SELF is always valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe {
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU seconds (utime + stime, all threads) of process `pid` from /proc/PID/stat.
pub fn pid_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces: state is
    // field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let tck = if tck > 0 { tck as f64 } else { 100.0 };
    Some((utime + stime) as f64 / tck)
}

fn metrics(
    ios: u64,
    bytes: u64,
    errors: u64,
    uas: u64,
    h: &Histogram,
    per_second: Vec<u64>,
    secs: f64,
) -> Metrics {
    let us = |ns: f64| (ns / 100.0).round() / 10.0;
    Metrics {
        ios,
        bytes,
        iops: (ios as f64 / secs * 10.0).round() / 10.0,
        mbps: (bytes as f64 / secs / 1e6 * 100.0).round() / 100.0,
        lat_us: Latency {
            mean: us(h.mean_ns()),
            p50: us(h.quantile_ns(0.50) as f64),
            p99: us(h.quantile_ns(0.99) as f64),
            p999: us(h.quantile_ns(0.999) as f64),
            max: us(h.max_ns() as f64),
        },
        per_second,
        errors,
        unit_attentions: uas,
    }
}

/// Log every session in, run the load, and gather the results.
pub async fn run(cfg: &LoadConfig) -> Result<Report, String> {
    if cfg.volumes.is_empty() {
        return Err("no volume to drive".into());
    }
    if cfg.seconds.is_nan() || cfg.seconds <= 0.0 || cfg.warmup.is_nan() || cfg.warmup < 0.0 {
        return Err("--seconds must be > 0 and --warmup >= 0".into());
    }
    // Log in every session first (concurrently), so the load starts at once everywhere.
    let pid = std::process::id() as u16;
    let mut logins = Vec::new();
    let mut n = 0u16;
    for (vi, v) in cfg.volumes.iter().enumerate() {
        for si in 0..v.sessions {
            // Random-qualifier ISID: process id and a running session number, so several
            // sessions (and several runs at once) never reinstate each other.
            let p = pid.to_be_bytes();
            let c = n.to_be_bytes();
            let isid = [0x80, p[0], p[1], 0x4C, c[0], c[1]];
            n = n.wrapping_add(1);
            let cfg = cfg.clone();
            let v = v.clone();
            logins.push((
                vi,
                si,
                tokio::spawn(async move { prepare(&cfg, &v, isid).await }),
            ));
        }
    }
    let mut ready = Vec::new();
    let mut failure = None;
    for (vi, si, h) in logins {
        match h.await {
            Ok(Ok(r)) => ready.push((vi, si, r)),
            Ok(Err(e)) => failure = failure.or(Some(e)),
            Err(e) => failure = failure.or(Some(format!("login task: {e}"))),
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let mut capacity = vec![(0u64, 0u32); cfg.volumes.len()];
    for (vi, _, r) in &ready {
        let bytes = r.geometry.iter().map(|&(b, bsz)| b * bsz as u64).sum();
        let largest = r.geometry.iter().map(|g| g.1).max().unwrap_or(0);
        capacity[*vi] = (bytes, largest);
    }

    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(cfg.warmup);
    let measure_to = measure_from + Duration::from_secs_f64(cfg.seconds);
    let slots = cfg.seconds.ceil() as usize;
    let seed0 = start.elapsed().as_nanos() as u64 ^ ((pid as u64) << 32) ^ 0x9E37_79B9_7F4A_7C15;
    let mut handles = Vec::new();
    for (i, (vi, si, r)) in ready.into_iter().enumerate() {
        let v = &cfg.volumes[vi];
        // `prepare` checked that every LUN holds at least one I/O and that bs is a multiple of
        // its block size.
        let luns = v
            .luns
            .iter()
            .zip(&r.geometry)
            .map(|(lun, &(blocks, block_size))| engine::LunPlan {
                lun: lun.to_bytes(),
                positions: blocks * block_size as u64 / v.bs as u64,
                blocks_per_io: v.bs / block_size,
            })
            .collect();
        let plan = engine::Plan {
            luns,
            rw: v.rw,
            bs: v.bs,
            session: si,
            sessions: v.sessions,
            qd: v.qd,
            seed: seed0.wrapping_add((i as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03)),
            measure_from,
            measure_to,
            drain_deadline: measure_to + engine::DRAIN,
            seconds: slots,
        };
        let e = engine::Engine::new(r.stream, r.params, plan);
        handles.push((vi, tokio::spawn(e.run())));
    }

    tokio::time::sleep_until(measure_from.into()).await;
    let cpu0 = process_cpu_seconds();
    let target0 = cfg.target_pid.and_then(pid_cpu_seconds);
    tokio::time::sleep_until(measure_to.into()).await;
    let cpu1 = process_cpu_seconds();
    let target1 = cfg.target_pid.and_then(pid_cpu_seconds);
    let secs = measure_to.duration_since(measure_from).as_secs_f64();

    let mut per_volume: Vec<SessionStats> = cfg
        .volumes
        .iter()
        .map(|v| SessionStats {
            per_second: vec![0; slots],
            lun_ios: vec![0; v.luns.len()],
            ..SessionStats::default()
        })
        .collect();
    for (vi, h) in handles {
        let s = match h.await {
            Ok(s) => s,
            Err(e) => return Err(format!("session task: {e}")),
        };
        let acc = &mut per_volume[vi];
        acc.ios += s.ios;
        acc.bytes += s.bytes;
        acc.errors += s.errors;
        acc.unit_attentions += s.unit_attentions;
        acc.hist.merge(&s.hist);
        for (a, b) in acc.per_second.iter_mut().zip(&s.per_second) {
            *a += b;
        }
        for (a, b) in acc.lun_ios.iter_mut().zip(&s.lun_ios) {
            *a += b;
        }
        if acc.first_error.is_none() {
            acc.first_error = s.first_error;
        }
    }

    let mut total = SessionStats {
        per_second: vec![0; slots],
        ..SessionStats::default()
    };
    let mut volumes = Vec::new();
    for (v, s) in cfg.volumes.iter().zip(per_volume) {
        total.ios += s.ios;
        total.bytes += s.bytes;
        total.errors += s.errors;
        total.unit_attentions += s.unit_attentions;
        total.hist.merge(&s.hist);
        for (a, b) in total.per_second.iter_mut().zip(&s.per_second) {
            *a += b;
        }
        let (capacity_bytes, block_size) = capacity[volumes.len()];
        volumes.push(VolumeReport {
            lun: v.lun_text.clone(),
            rw: v.rw.name(),
            bs: v.bs,
            qd: v.qd,
            sessions: v.sessions,
            capacity_bytes,
            block_size,
            luns: s.lun_ios.len(),
            luns_with_io: s.lun_ios.iter().filter(|&&n| n > 0).count(),
            lun_ios_min: s.lun_ios.iter().copied().min().unwrap_or(0),
            lun_ios_max: s.lun_ios.iter().copied().max().unwrap_or(0),
            metrics: metrics(
                s.ios,
                s.bytes,
                s.errors,
                s.unit_attentions,
                &s.hist,
                s.per_second,
                secs,
            ),
            first_error: s.first_error,
        });
    }
    let cpu = cpu1 - cpu0;
    let target_cpu = match (target0, target1) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let per_io = |cpu: f64| {
        if total.ios > 0 {
            (cpu * 1e6 / total.ios as f64 * 100.0).round() / 100.0
        } else {
            0.0
        }
    };
    Ok(Report {
        volumes,
        client_cpu_s: (cpu * 1000.0).round() / 1000.0,
        client_cpu_us_per_io: per_io(cpu),
        target_cpu_s: target_cpu.map(|c| (c * 1000.0).round() / 1000.0),
        target_cpu_us_per_io: target_cpu.map(per_io),
        total: metrics(
            total.ios,
            total.bytes,
            total.errors,
            total.unit_attentions,
            &total.hist,
            total.per_second,
            secs,
        ),
        seconds: secs,
        warmup: cfg.warmup,
    })
}

impl Report {
    /// A readable table.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "{:<18} {:<9} {:>7} {:>4} {:>4} {:>11} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6}",
            "volume",
            "rw",
            "bs",
            "qd",
            "sess",
            "IOPS",
            "MB/s",
            "mean µs",
            "p50 µs",
            "p99 µs",
            "p99.9 µs",
            "errors"
        );
        let row = |o: &mut String,
                   name: &str,
                   rw: &str,
                   bs: String,
                   qd: String,
                   sess: String,
                   m: &Metrics| {
            let _ = writeln!(
                o,
                "{:<18} {:<9} {:>7} {:>4} {:>4} {:>11.1} {:>9.2} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>6}",
                name, rw, bs, qd, sess, m.iops, m.mbps, m.lat_us.mean, m.lat_us.p50, m.lat_us.p99,
                m.lat_us.p999, m.errors
            );
        };
        for v in &self.volumes {
            row(
                &mut o,
                &v.lun,
                v.rw,
                v.bs.to_string(),
                v.qd.to_string(),
                v.sessions.to_string(),
                &v.metrics,
            );
            if v.luns > 1 {
                let _ = writeln!(
                    o,
                    "  {} LUNs, {} got I/O ({}..{} I/Os each)",
                    v.luns, v.luns_with_io, v.lun_ios_min, v.lun_ios_max
                );
            }
            if let Some(e) = &v.first_error {
                let _ = writeln!(o, "  first error: {e}");
            }
        }
        if self.volumes.len() > 1 {
            row(
                &mut o,
                "total",
                "",
                String::new(),
                String::new(),
                String::new(),
                &self.total,
            );
        }
        let _ = writeln!(
            o,
            "measured {:.1} s after {:.1} s warm-up; client CPU {:.3} s ({:.2} µs per I/O)",
            self.seconds, self.warmup, self.client_cpu_s, self.client_cpu_us_per_io
        );
        if let (Some(s), Some(per_io)) = (self.target_cpu_s, self.target_cpu_us_per_io) {
            let _ = writeln!(o, "target CPU {s:.3} s ({per_io:.2} µs per I/O)");
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: VolumeDefaults = VolumeDefaults {
        qd: 16,
        sessions: 1,
        rw: Rw::RandRead,
        bs: 4096,
    };

    #[test]
    fn spec_defaults_and_overrides() {
        let v = parse_volume_spec("0", &D).unwrap();
        assert_eq!(v.luns, [Lun::single(0)]);
        assert_eq!((v.qd, v.sessions, v.rw, v.bs), (16, 1, Rw::RandRead, 4096));
        let v = parse_volume_spec("3,qd=8,sessions=2,rw=write,bs=128k", &D).unwrap();
        assert_eq!(v.luns, [Lun::single(3)]);
        assert_eq!(v.lun_text, "3");
        assert_eq!((v.qd, v.sessions, v.rw, v.bs), (8, 2, Rw::Write, 131_072));
        let v = parse_volume_spec("300,bs=4KiB", &D).unwrap();
        assert_eq!(v.luns[0].to_bytes(), [0x41, 0x2C, 0, 0, 0, 0, 0, 0]);
        assert_eq!(v.bs, 4096);
    }

    #[test]
    fn spec_two_level_lun_is_taken_whole() {
        let v = parse_volume_spec("00FEE20000000001,rw=randwrite", &D).unwrap();
        assert_eq!(
            v.luns[0].to_bytes(),
            [0x00, 0xFE, 0xE2, 0x00, 0x00, 0x00, 0x00, 0x01]
        );
        assert_eq!(v.rw, Rw::RandWrite);
        let v = parse_volume_spec("00fee2000000abcd", &D).unwrap();
        assert_eq!(v.luns[0].to_bytes()[6..], [0xAB, 0xCD]);
    }

    #[test]
    fn spec_errors() {
        for bad in [
            "",
            "x",
            "16384",
            "00FEE2000000001",   // 15 hex digits
            "00FEE200000000011", // 17
            "0,qd=0",
            "0,qd=abc",
            "0,sessions=5000",
            "0,rw=mixed",
            "0,bs=1000",
            "0,bs=0",
            "0,bs=32m",
            "0,depth=4",
            "0,qd",
            "@",
            "@,qd=4",
            "@/nonexistent/vvold-load-luns",
        ] {
            assert!(parse_volume_spec(bad, &D).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn lun_list_lines_comments_and_both_notations() {
        let text = "# host esx-1\n00FEE20000000001\n\n  00ffe2000000000a  # on PE 255\n1\n300\n";
        let luns = parse_lun_list(text, "f").unwrap();
        assert_eq!(luns.len(), 4);
        assert_eq!(
            luns[0].to_bytes(),
            [0x00, 0xFE, 0xE2, 0x00, 0x00, 0x00, 0x00, 0x01]
        );
        assert_eq!(lun_hex(luns[1]), "00FFE2000000000A");
        assert_eq!(luns[2], Lun::single(1));
        assert_eq!(luns[3], Lun::single(300));
    }

    #[test]
    fn lun_list_errors_name_the_line() {
        let e = parse_lun_list("1\n2\nbogus\n", "luns.txt").unwrap_err();
        assert!(e.starts_with("luns.txt line 3:"), "{e}");
        let e = parse_lun_list("00FEE20000000001\n00fee20000000001\n", "f").unwrap_err();
        assert!(e.contains("line 2") && e.contains("twice"), "{e}");
        assert!(parse_lun_list("\n# nothing\n", "f").is_err());
        assert!(parse_lun_list("", "f").is_err());
    }

    #[test]
    fn spec_from_a_lun_file() {
        let path = std::env::temp_dir().join(format!("vvold-load-luns-{}", std::process::id()));
        std::fs::write(&path, "00FEE20000000001\n00FFE20000000002\n").unwrap();
        let spec = format!("@{},qd=8,sessions=4", path.display());
        let v = parse_volume_spec(&spec, &D);
        let bad = parse_volume_spec(&format!("@{},qd=0", path.display()), &D);
        std::fs::remove_file(&path).unwrap();
        let v = v.unwrap();
        assert_eq!(v.lun_text, format!("@{}", path.display()));
        assert_eq!(v.luns.len(), 2);
        assert_eq!(lun_hex(v.luns[1]), "00FFE20000000002");
        assert_eq!((v.qd, v.sessions, v.rw, v.bs), (8, 4, Rw::RandRead, 4096));
        assert!(bad.is_err());
    }

    #[test]
    fn own_cpu_time_from_proc() {
        let t = pid_cpu_seconds(std::process::id()).expect("/proc/self/stat");
        assert!(t >= 0.0);
        assert!(pid_cpu_seconds(u32::MAX).is_none());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("4k").unwrap(), 4096);
        assert_eq!(parse_size("128K").unwrap(), 131_072);
        assert_eq!(parse_size("1m").unwrap(), 1 << 20);
        assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
        assert!(parse_size("k").is_err());
        assert!(parse_size("4q").is_err());
    }
}
