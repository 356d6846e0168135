//! Listening on the configured portals and handing each connection to its own task.

use super::{tcp, Shared};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tracing::{error, info};

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "iscsi.tcp_congestion_control: cannot use '{name}' on {addr}: {source} \
         (this kernel has: {available})"
    )]
    CongestionControl {
        addr: SocketAddr,
        name: String,
        source: std::io::Error,
        available: String,
    },
}

pub struct Server {
    listeners: Vec<TcpListener>,
    shared: Arc<Shared>,
}

impl Server {
    /// Bind every portal now, so a port in use (or a congestion control the kernel refuses)
    /// is reported before anything else starts.
    pub async fn bind(addrs: &[SocketAddr], shared: Arc<Shared>) -> Result<Server, BindError> {
        let mut listeners = Vec::new();
        for &addr in addrs {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| BindError::Listen { addr, source })?;
            let cc = shared.iscsi.tcp_congestion_control.as_deref();
            tcp::choose_congestion_control(&l, cc).map_err(|source| {
                BindError::CongestionControl {
                    addr,
                    name: cc.unwrap_or_default().into(),
                    source,
                    available: tcp::available_congestion_controls(),
                }
            })?;
            listeners.push(l);
        }
        Ok(Server { listeners, shared })
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Accept connections until the process ends.
    pub async fn run(self) {
        let workers = match super::workers::Workers::start(
            super::workers::count(self.shared.iscsi.worker_threads),
            std::time::Duration::from_micros(self.shared.iscsi.poll_us),
            self.shared.clone(),
        ) {
            Ok(w) => Arc::new(w),
            Err(e) => return error!("cannot start the network threads: {e}"),
        };
        let mut tasks = Vec::new();
        for l in self.listeners {
            let workers = workers.clone();
            if let Ok(a) = l.local_addr() {
                info!("listening on {a}");
            }
            tasks.push(tokio::spawn(async move {
                loop {
                    match l.accept().await {
                        Ok((stream, _)) => workers.dispatch(stream),
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning.
                            error!("accept failed: {e}");
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        }
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}
