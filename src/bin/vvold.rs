//! `vvold`: the array daemon. With no arguments it serves the embedded lab array on
//! 127.0.0.1:3260 with its data under ./vvold-data.

use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tracing::{error, info, warn};
use vvold::array::Array;
use vvold::backend::BlockDevice;
use vvold::config::Config;
use vvold::control::embedded::Embedded;
use vvold::net::hooks::NetHooks;
use vvold::net::server::Server;
use vvold::net::{session::Sessions, Shared};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "vvold: an iSCSI target serving VMware Virtual Volumes"
)]
struct Args {
    /// TOML configuration (see target-config/lab.toml); the embedded lab array without it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Portal to listen on, ADDRESS:PORT (repeatable; replaces the configured portals).
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Vec<SocketAddr>,
    /// Directory for LUN images and the array identity [default: ./vvold-data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Log filter: error, warn, info, debug, trace, or a tracing directive such as
    /// "vvold=debug" (RUST_LOG is used when this is absent).
    #[arg(long, value_name = "LEVEL", global = true)]
    log_level: Option<String>,
    /// Address of the control API (replaces `control.listen` of the configuration).
    #[arg(long, value_name = "ADDR:PORT")]
    control_listen: Option<SocketAddr>,
    #[command(subcommand)]
    mode: Option<Mode>,
}

#[derive(clap::Subcommand, Debug)]
enum Mode {
    /// Run the control service standalone (a VASA provider on a management host): lifecycle
    /// requests go to the array's API, binds and unbinds go in-band over iSCSI to its PEs.
    Control(vvold::control::standalone::Args),
}

/// Exit status for a configuration that cannot be used.
const EXIT_CONFIG: u8 = 2;

/// glibc serves allocations above its mmap threshold (128 KiB at first) with a fresh mmap,
/// so every large I/O buffer was mapped, page-faulted in and unmapped again: 128 KiB reads
/// spent half their CPU in page faults (perf, README "Performance"). Above this threshold
/// buffers come from the heap and are reused; memory stays bounded by the buffers in flight.
#[cfg(target_env = "gnu")]
fn keep_large_buffers_on_the_heap() {
    const THRESHOLD: libc::c_int = 32 << 20;
    // SAFETY: mallopt only changes allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 2 * THRESHOLD);
    }
}

#[cfg(not(target_env = "gnu"))]
fn keep_large_buffers_on_the_heap() {}

fn main() -> ExitCode {
    keep_large_buffers_on_the_heap();
    let args = Args::parse();
    let filter = match &args.log_level {
        Some(l) => tracing_subscriber::EnvFilter::try_new(l),
        None => tracing_subscriber::EnvFilter::try_from_default_env()
            .or_else(|_| tracing_subscriber::EnvFilter::try_new("info")),
    };
    let filter = match filter {
        Ok(f) => f,
        Err(e) => {
            eprintln!("vvold: --log-level: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
    if let Some(Mode::Control(control)) = args.mode {
        return vvold::control::standalone::main(control);
    }

    let cfg = match &args.config {
        None => Config::lab_default(),
        Some(path) => match std::fs::read_to_string(path) {
            Err(e) => {
                eprintln!("vvold: cannot read {}: {e}", path.display());
                return ExitCode::from(EXIT_CONFIG);
            }
            Ok(text) => match Config::parse(&text) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("vvold: config error in {}: {e}", path.display());
                    return ExitCode::from(EXIT_CONFIG);
                }
            },
        },
    };
    let mut cfg = cfg;
    if !args.listen.is_empty() {
        // The command line's portals replace the configured ones; port groups must still
        // place each of them in exactly one group.
        cfg.listen = args.listen.iter().map(|a| a.to_string()).collect();
        if let Err(e) = cfg.validate() {
            eprintln!("vvold: config error with --listen: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    let listen = cfg.listen_addrs().expect("validated");
    if !cfg.control.initiators.is_empty()
        && cfg.control.chap.is_none()
        && listen.iter().any(|a| !a.ip().is_loopback())
    {
        warn!(
            "no control.chap: control initiators reaching the target from the network are \
             refused in-band binding (ACCESS DENIED); over loopback they may bind"
        );
    }
    let data_dir = args
        .data_dir
        .clone()
        .or_else(|| cfg.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from("vvold-data"));

    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vvold: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let array = match Array::open(&cfg, &data_dir) {
            Ok(a) => a,
            Err(e) => {
                error!("{e}");
                eprintln!("vvold: {e}");
                return ExitCode::FAILURE;
            }
        };
        let policy = Arc::new(vvold::net::policy::login_policy(&cfg, &listen));
        let engine = array.engine.clone();
        let shared = Arc::new(Shared {
            array,
            policy,
            sessions: Sessions::new(),
            iscsi: cfg.iscsi.clone(),
        });
        engine.set_hooks(Arc::new(NetHooks {
            shared: Arc::downgrade(&shared),
            bind_ua: cfg.control.bind_unit_attention,
        }));
        tokio::spawn(engine.qos().clone().run_telemetry());
        let server = match Server::bind(&listen, shared.clone()).await {
            Ok(s) => s,
            Err(e) => {
                error!("{e}");
                eprintln!("vvold: {e}");
                return ExitCode::FAILURE;
            }
        };
        let control_addr = args
            .control_listen
            .or_else(|| cfg.control.listen.as_deref().and_then(|l| l.parse().ok()));
        if let Some(addr) = control_addr {
            if cfg.control.token.is_none() && !addr.ip().is_loopback() {
                eprintln!(
                    "vvold: control API on {addr}: control.token is required beyond loopback"
                );
                return ExitCode::from(EXIT_CONFIG);
            }
            let ops = Arc::new(Embedded {
                engine: engine.clone(),
            });
            let app = vvold::control::api::router(ops, cfg.control.token.clone());
            let listener = match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("vvold: cannot listen on {addr} (control API): {e}");
                    return ExitCode::FAILURE;
                }
            };
            info!("control API listening on {addr}");
            tokio::spawn(async move {
                let limits = vvold::control::serve::Limits::default();
                if let Err(e) = vvold::control::serve::serve(listener, app, limits).await {
                    error!("control API stopped: {e}");
                }
            });
        }
        info!(data_dir = %data_dir.display(), "vvold {} ready", env!("CARGO_PKG_VERSION"));
        tokio::select! {
            _ = server.run() => {}
            _ = shutdown_signal() => info!("shutting down"),
        }
        // Page-cache data reaches the disk on its own, but an orderly stop should not leave
        // that to chance.
        for t in &shared.array.targets {
            for lu in t.luns.values() {
                let _ = lu.device.flush().await;
            }
        }
        engine.flush().await;
        ExitCode::SUCCESS
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
