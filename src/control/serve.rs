//! Serving the control API over HTTP/1 with the limits `axum::serve` leaves out: it sets no
//! timer, so hyper's header-read timeout never runs, and it accepts connections without
//! bound. A client could then hold connections open for ever, before any token is checked
//! (authorization needs the headers), until the process runs out of file descriptors, which
//! the iSCSI target in the same process shares.

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

/// What one control API listener allows.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A request's headers must arrive within this; it also closes a keep-alive connection
    /// left idle that long.
    pub header_timeout: Duration,
    /// Connections open at once; more are closed as soon as accepted.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_timeout: Duration::from_secs(10),
            max_connections: 64,
        }
    }
}

/// Serve `app` on `listener` until accepting fails for good.
pub async fn serve(listener: TcpListener, app: Router, limits: Limits) -> std::io::Result<()> {
    let open = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            // Out of descriptors or a connection reset before accept: keep serving the others.
            Err(e) if is_transient(&e) => {
                warn!("control API: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            warn!(%peer, max = limits.max_connections, "control API: too many connections; closing");
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                debug!(%peer, "control API connection: {e}");
            }
        });
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::ECONNABORTED)
    ) || e.kind() == std::io::ErrorKind::ConnectionAborted
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use std::io::{Read, Write};
    use std::time::Instant;

    async fn start(limits: Limits) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/ping", get(|| async { "pong" }));
        tokio::spawn(serve(listener, app, limits));
        addr
    }

    /// Read until the server closes; what it sent.
    fn until_closed(mut s: std::net::TcpStream) -> Vec<u8> {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answers_and_closes_silent_or_surplus_connections() {
        let addr = start(Limits {
            header_timeout: Duration::from_millis(300),
            max_connections: 2,
        })
        .await;
        tokio::task::spawn_blocking(move || {
            // A request is answered.
            let mut ok = std::net::TcpStream::connect(addr).unwrap();
            ok.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let reply = String::from_utf8(until_closed(ok)).unwrap();
            assert!(
                reply.starts_with("HTTP/1.1 200") && reply.ends_with("pong"),
                "{reply}"
            );
            // Its connection's slot is given back once its task has ended.
            std::thread::sleep(Duration::from_millis(100));
            // A client that sends half a header is cut off after the timeout.
            let t = Instant::now();
            let mut slow = std::net::TcpStream::connect(addr).unwrap();
            slow.write_all(b"GET /ping HTTP/1.1\r\nHo").unwrap();
            let second = std::net::TcpStream::connect(addr).unwrap();
            // Two are open: a third is closed at once, without an answer.
            std::thread::sleep(Duration::from_millis(50));
            let third = std::net::TcpStream::connect(addr).unwrap();
            assert!(until_closed(third).is_empty());
            assert!(
                t.elapsed() < Duration::from_millis(300),
                "closed before the timeout"
            );
            until_closed(slow);
            until_closed(second);
            let waited = t.elapsed();
            assert!(
                waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
                "{waited:?}"
            );
            // And the slots are free again.
            let mut again = std::net::TcpStream::connect(addr).unwrap();
            again
                .write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            assert!(String::from_utf8(until_closed(again))
                .unwrap()
                .ends_with("pong"));
        })
        .await
        .unwrap();
    }
}
