//! `vvold-load`: drive an iSCSI target with closed-loop load through real sessions and report
//! IOPS, throughput, latency percentiles, completions per second and the client's own CPU cost.

use clap::Parser;
use std::net::SocketAddr;
use std::process::ExitCode;
use vvold::loadgen::{self, LoadConfig, Rw, VolumeDefaults};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Closed-loop iSCSI load generator (pipelined READ(16)/WRITE(16) over real sessions)"
)]
struct Args {
    /// Target portal, ADDRESS:PORT.
    #[arg(long, default_value = "127.0.0.1:3260")]
    portal: SocketAddr,
    /// Target IQN.
    #[arg(long)]
    target: String,
    /// Initiator IQN to log in as.
    #[arg(long, default_value = "iqn.2026-11.io.vvold:load")]
    initiator: String,
    /// CHAP credentials, USER:SECRET.
    #[arg(long, value_name = "USER:SECRET")]
    chap: Option<String>,
    /// A volume to drive (repeatable, all run at once):
    /// LUN[,qd=N][,sessions=S][,rw=randread|randwrite|read|write][,bs=SIZE], where LUN is
    /// decimal (single level) or exactly 16 hex digits (all 8 bytes, e.g. 00FEE20000000001),
    /// or @FILE: a set of LUNs, one a line (# comments), each command of the volume's sessions
    /// going to one picked at random. Default: 0.
    #[arg(long, value_name = "SPEC")]
    volume: Vec<String>,
    /// Access pattern of volumes that do not name one.
    #[arg(long, default_value = "randread", value_parser = Rw::parse)]
    rw: Rw,
    /// I/O size of volumes that do not name one (512-byte multiple; 4k, 128k, 1m...).
    #[arg(long, default_value = "4k", value_parser = loadgen::parse_bs)]
    bs: u32,
    /// Commands in flight per session.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=4096))]
    qd: u64,
    /// Sessions (TCP connections) per volume.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=4096))]
    sessions: u64,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Worker threads (1: everything on the calling thread).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=256))]
    threads: u64,
    /// Keep polling the sockets this many µs after traffic before sleeping, as the target
    /// does (`iscsi.poll_us`), so waking this client does not limit what is measured (0: sleep
    /// at once). Single-threaded only.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    poll_us: u64,
    /// Negotiate CRC32C header digests.
    #[arg(long)]
    header_digest: bool,
    /// Negotiate CRC32C data digests.
    #[arg(long)]
    data_digest: bool,
    /// Also report this process's CPU time (utime + stime from /proc/PID/stat, all threads)
    /// over the measured period, and per I/O: point it at the target.
    #[arg(long, value_name = "PID")]
    target_pid: Option<u32>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let defaults = VolumeDefaults {
        qd: a.qd as usize,
        sessions: a.sessions as usize,
        rw: a.rw,
        bs: a.bs,
    };
    let specs = if a.volume.is_empty() {
        vec!["0".to_string()]
    } else {
        a.volume.clone()
    };
    let mut volumes = Vec::new();
    for s in &specs {
        match loadgen::parse_volume_spec(s, &defaults) {
            Ok(v) => volumes.push(v),
            Err(e) => {
                eprintln!("vvold-load: --volume: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let chap = match a.chap.as_deref().map(|c| c.split_once(':')) {
        None => None,
        Some(Some((u, s))) => Some((u.to_string(), s.to_string())),
        Some(None) => {
            eprintln!("vvold-load: --chap takes USER:SECRET");
            return ExitCode::from(2);
        }
    };
    let cfg = LoadConfig {
        portal: a.portal,
        target: a.target,
        initiator: a.initiator,
        chap,
        volumes,
        seconds: a.seconds,
        warmup: a.warmup,
        header_digest: a.header_digest,
        data_digest: a.data_digest,
        target_pid: a.target_pid,
    };
    if a.poll_us > 0 && a.threads > 1 {
        eprintln!("vvold-load: --poll-us needs --threads 1");
        return ExitCode::from(2);
    }
    let rt = if a.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(a.threads as usize)
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vvold-load: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let poll = std::time::Duration::from_micros(a.poll_us);
    match rt.block_on(async {
        vvold::net::workers::spin::start(poll);
        loadgen::run(&cfg).await
    }) {
        Ok(report) => {
            if a.json {
                match serde_json::to_string(&report) {
                    Ok(j) => println!("{j}"),
                    Err(e) => {
                        eprintln!("vvold-load: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", report.table());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vvold-load: {e}");
            ExitCode::FAILURE
        }
    }
}
