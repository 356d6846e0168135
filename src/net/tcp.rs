//! TCP options of the portals' listening sockets, which accepted connections inherit.

use crate::config::DEFAULT_TCP_CONGESTION_CONTROL;
use std::os::fd::AsRawFd;
use tracing::warn;

/// Kernel limit on a congestion control name, terminating NUL included (TCP_CA_NAME_MAX).
pub const CA_NAME_MAX: usize = 16;

/// Choose the congestion control of `socket` (for a listener: of every connection it accepts,
/// which Linux copies from the listener, so nothing is done per connection).
///
/// Why a storage target chooses at all: BBR, the system default on some hosts (this one's VM
/// among them), sizes its window at twice its bandwidth × min-RTT estimate, and a LAN's or
/// loopback's min-RTT of microseconds makes that about one large transfer. Data-In for 128 KiB
/// reads at QD 8 then waits on ACKs (README, "Performance").
pub fn set_congestion_control(socket: &impl AsRawFd, name: &str) -> std::io::Result<()> {
    if name.is_empty() || name.len() >= CA_NAME_MAX || name.contains('\0') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a congestion control name",
        ));
    }
    // SAFETY: the pointer and length describe `name`'s bytes, which outlive the call; the
    // kernel copies them.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Apply `iscsi.tcp_congestion_control` to a listener: `""` keeps the system's choice, a name
/// must be accepted, and unset tries [`DEFAULT_TCP_CONGESTION_CONTROL`], keeping the system's
/// choice with a warning where the kernel refuses it (a default must not stop the daemon).
pub fn choose_congestion_control(
    listener: &impl AsRawFd,
    configured: Option<&str>,
) -> std::io::Result<()> {
    match configured {
        Some("") => Ok(()),
        Some(name) => set_congestion_control(listener, name),
        None => {
            let name = DEFAULT_TCP_CONGESTION_CONTROL;
            if let Err(e) = set_congestion_control(listener, name) {
                warn!("keeping the system's TCP congestion control, {name} is refused: {e}");
            }
            Ok(())
        }
    }
}

/// The congestion control `socket` uses.
pub fn congestion_control(socket: &impl AsRawFd) -> std::io::Result<String> {
    let mut buf = [0u8; CA_NAME_MAX];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `buf` and stores the length it wrote.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let name = &buf[..(len as usize).min(buf.len())];
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Ok(String::from_utf8_lossy(&name[..end]).into_owned())
}

/// The algorithms this kernel has loaded, for error messages.
pub fn available_congestion_controls() -> String {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_congestion_control")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    /// reno is built into every kernel and can be chosen without privileges.
    #[test]
    fn accepted_connections_inherit_the_listeners_choice() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        set_congestion_control(&l, "reno").unwrap();
        assert_eq!(congestion_control(&l).unwrap(), "reno");
        let _c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (accepted, _) = l.accept().unwrap();
        assert_eq!(congestion_control(&accepted).unwrap(), "reno");
    }

    #[test]
    fn unset_means_cubic_and_empty_means_the_systems() {
        let system = congestion_control(&TcpListener::bind("127.0.0.1:0").unwrap()).unwrap();
        // A kernel without cubic keeps its own (with a warning); every kernel seen here has it.
        let default = if available_congestion_controls()
            .split_whitespace()
            .any(|a| a == DEFAULT_TCP_CONGESTION_CONTROL)
        {
            DEFAULT_TCP_CONGESTION_CONTROL
        } else {
            system.as_str()
        };
        for (configured, expected) in [(None, default), (Some(""), system.as_str())] {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            choose_congestion_control(&l, configured).unwrap();
            let _c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (accepted, _) = l.accept().unwrap();
            assert_eq!(congestion_control(&accepted).unwrap(), expected);
        }
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(choose_congestion_control(&l, Some("no-such-algorithm")).is_err());
    }

    #[test]
    fn unknown_and_malformed_names_are_refused() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let before = congestion_control(&l).unwrap();
        assert!(set_congestion_control(&l, "no-such-algorithm").is_err());
        for bad in ["", "a\0b", "sixteen-chars-xx"] {
            let e = set_congestion_control(&l, bad).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{bad:?}");
        }
        assert_eq!(congestion_control(&l).unwrap(), before);
    }
}
