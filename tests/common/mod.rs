//! Shared harness for the integration tests: starts the real `vvold` binary on a free loopback
//! port with its own data directory and configuration, and stops it by PID. Also the SCSI CDB
//! builders and assertion helpers the test files share.
//!
//! Every test file includes this module but uses only part of it.
#![allow(dead_code)]

use std::fs::File;
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use vvold::initiator::{InitiatorError, LoginOptions, RxPdu, ScsiResult, Session};
use vvold::scsi::Lun;

/// The target most tests use, and its LUNs.
pub const T_MAIN: &str = "iqn.2026-11.io.vvold.test:main";
/// A target that requires CHAP (and answers mutual CHAP).
pub const T_CHAP: &str = "iqn.2026-11.io.vvold.test:chap";
/// A target that only `ALLOWED_INITIATOR` may log in to.
pub const T_ACL: &str = "iqn.2026-11.io.vvold.test:acl";
pub const ALLOWED_INITIATOR: &str = "iqn.2026-11.io.vvold.test:allowed";
pub const INITIATOR: &str = "iqn.2026-11.io.vvold.test:initiator";

pub const CHAP_USER: &str = "esxi";
pub const CHAP_SECRET: &str = "initiator-secret";
pub const MUTUAL_USER: &str = "vvold";
pub const MUTUAL_SECRET: &str = "target-secret-1";

/// LUNs of `T_MAIN`.
pub const LUN_FILE: u16 = 0;
pub const LUN_RAM: u16 = 1;
pub const LUN_NULL: u16 = 2;
pub const LUN_FILE_4K: u16 = 3;
pub const LUN_RO: u16 = 4;
/// Every LUN of `T_MAIN`, in REPORT LUNS order.
pub const MAIN_LUNS: [u16; 5] = [LUN_FILE, LUN_RAM, LUN_NULL, LUN_FILE_4K, LUN_RO];
/// Size of every LUN of `T_MAIN` except the read-only one.
pub const LUN_BYTES: u64 = 64 << 20;
pub const RO_BYTES: u64 = 1 << 20;

/// Bound for one network exchange; generous for a loaded 2-core machine.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

fn config_text(iscsi_extra: &str) -> String {
    format!(
        r#"
listen = ["127.0.0.1:1"]

[iscsi]
{iscsi_extra}

[[target]]
name = "{T_MAIN}"
alias = "integration tests"

[[target.lun]]
id = {LUN_FILE}
backend = "file"
path = "lun0.img"
size = "{LUN_BYTES}"

[[target.lun]]
id = {LUN_RAM}
backend = "ram"
size = "{LUN_BYTES}"

[[target.lun]]
id = {LUN_NULL}
backend = "null"
size = "{LUN_BYTES}"

[[target.lun]]
id = {LUN_FILE_4K}
backend = "file"
path = "lun3-4k.img"
size = "{LUN_BYTES}"
block_size = 4096

[[target.lun]]
id = {LUN_RO}
backend = "ram"
size = "{RO_BYTES}"
read_only = true

[[target]]
name = "{T_CHAP}"
chap = {{ user = "{CHAP_USER}", secret = "{CHAP_SECRET}" }}
mutual_chap = {{ user = "{MUTUAL_USER}", secret = "{MUTUAL_SECRET}" }}

[[target.lun]]
id = 0
backend = "ram"
size = "1MiB"

[[target]]
name = "{T_ACL}"
allowed_initiators = ["{ALLOWED_INITIATOR}"]

[[target.lun]]
id = 0
backend = "ram"
size = "1MiB"
"#
    )
}

/// A free loopback port (bound, read back, released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Whether a daemon's log says it listens on `addr` ("listening on 127.0.0.1:3260", not
/// followed by another digit of a longer port).
fn announced_listening(log: &str, addr: &SocketAddr) -> bool {
    let needle = format!("listening on {addr}");
    log.match_indices(&needle).any(|(at, _)| {
        !log[at + needle.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    })
}

/// A running daemon. Dropping it stops it (SIGTERM, then SIGKILL if it does not exit).
pub struct Daemon {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// The second portal of a [`Daemon::start_two_portals`] daemon.
    pub addr2: Option<SocketAddr>,
    /// The embedded control API (VVol configurations only); a new port on every start.
    pub control: Option<SocketAddr>,
    dir: tempfile::TempDir,
    config: PathBuf,
    log: PathBuf,
    setup: Setup,
}

/// What configuration a daemon is started with; written anew on every start.
#[derive(Clone)]
enum Setup {
    /// The standard configuration with extra `[iscsi]` lines.
    Main(String),
    /// The VVol array: target `T_VVOL` with PEs, containers and the control API.
    Vvol(VvolOpts),
    /// Custom text for a daemon listening on two portals (`addr`, `addr2`).
    TwoPortals(fn(SocketAddr, SocketAddr) -> String),
}

impl Daemon {
    /// The standard configuration.
    pub fn start() -> Daemon {
        Daemon::start_with("")
    }

    /// The standard configuration with extra lines in its `[iscsi]` table.
    pub fn start_with(iscsi_extra: &str) -> Daemon {
        Daemon::start_setup(Setup::Main(iscsi_extra.to_string()))
    }

    /// The VVol array (see [`vvol_config_text`]).
    pub fn start_vvol(o: VvolOpts) -> Daemon {
        Daemon::start_setup(Setup::Vvol(o))
    }

    /// A daemon listening on two loopback portals, configured by `text(addr, addr2)`.
    pub fn start_two_portals(text: fn(SocketAddr, SocketAddr) -> String) -> Daemon {
        Daemon::start_setup(Setup::TwoPortals(text))
    }

    fn start_setup(setup: Setup) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("vvold.toml");
        let mut d = Daemon {
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            addr2: None,
            control: None,
            dir,
            config,
            log: PathBuf::new(),
            setup,
        };
        d.spawn();
        d
    }

    fn write_config(&mut self) {
        let text = match &self.setup {
            Setup::Main(extra) => config_text(extra),
            Setup::Vvol(o) => {
                let control = SocketAddr::from(([127, 0, 0, 1], free_port()));
                self.control = Some(control);
                vvol_config_text(o, control)
            }
            Setup::TwoPortals(text) => {
                let addr2 = SocketAddr::from(([127, 0, 0, 1], free_port()));
                self.addr2 = Some(addr2);
                text(self.addr, addr2)
            }
        };
        std::fs::write(&self.config, text).expect("write config");
    }

    /// The control API's base URL, `http://127.0.0.1:PORT`.
    pub fn api_url(&self) -> String {
        format!("http://{}", self.control.expect("a VVol daemon"))
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    fn spawn(&mut self) {
        // Another process may take the port between the probe and the daemon's bind; retry.
        for attempt in 0..5 {
            let port = free_port();
            self.addr = SocketAddr::from(([127, 0, 0, 1], port));
            self.write_config();
            self.log = self.dir.path().join(format!("vvold-{port}.log"));
            let out = File::create(&self.log).expect("log file");
            let err = out.try_clone().expect("log file");
            let mut command = Command::new(env!("CARGO_BIN_EXE_vvold"));
            if let Some(addr2) = self.addr2 {
                command.arg("--listen").arg(addr2.to_string());
            }
            let child = command
                .env("NO_COLOR", "1")
                .arg("--config")
                .arg(&self.config)
                .arg("--listen")
                .arg(self.addr.to_string())
                .arg("--data-dir")
                .arg(self.data_dir())
                .arg("--log-level")
                .arg("debug")
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .expect("spawn vvold");
            self.child = Some(child);
            match self.wait_ready() {
                Ok(()) => return,
                Err(status) => {
                    let log = self.log_text();
                    if attempt < 4 && log.contains("cannot listen") {
                        continue;
                    }
                    panic!("vvold exited before listening ({status}); log:\n{log}");
                }
            }
        }
    }

    /// Poll until the port accepts connections; Err if the daemon exits first.
    fn wait_ready(&mut self) -> Result<(), ExitStatus> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .expect("child")
                .try_wait()
                .expect("wait")
            {
                self.child = None;
                return Err(status);
            }
            // The log, not a connection, says the port is ours: a port from `free_port` can
            // be taken by another test's daemon, which would answer the probe meanwhile.
            let log = self.log_text();
            let up = |a: &SocketAddr| announced_listening(&log, a);
            if up(&self.addr)
                && self.addr2.as_ref().is_none_or(up)
                && self.control.as_ref().is_none_or(up)
            {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "vvold did not listen within {START_TIMEOUT:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the daemon has logged (stdout and stderr) so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn is_alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }

    /// Assert the daemon is still running, printing its log if not.
    pub fn assert_alive(&mut self) {
        assert!(self.is_alive(), "vvold died; log:\n{}", self.log_text());
    }

    fn signal_and_wait(&mut self, sig: i32) -> Option<ExitStatus> {
        signal_and_wait(self.child.take()?, sig)
    }

    /// SIGTERM and wait for the exit; the exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.signal_and_wait(libc::SIGTERM)
    }

    /// SIGKILL (a crash: nothing is flushed by the daemon) and wait.
    pub fn crash(&mut self) {
        self.signal_and_wait(libc::SIGKILL);
    }

    /// Start again on the same data directory and configuration (a new port).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Start again after `stop` or `crash`.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.spawn();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "---- vvold log ({}) ----\n{}",
                self.log.display(),
                self.log_text()
            );
        }
    }
}

/// Send `sig` to a child we spawned and wait (bounded) for it to exit; SIGKILL if it does not.
fn signal_and_wait(mut child: Child, sig: i32) -> Option<ExitStatus> {
    // SAFETY: kill(2) on the PID of a child we spawned and have not yet reaped.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return child.wait().ok();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Run `f` within `IO_TIMEOUT` or panic naming `what`.
pub async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    within_for(IO_TIMEOUT, what, f).await
}

pub async fn within_for<T>(d: Duration, what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(d, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {d:?}: {what}"),
    }
}

/// Login options for `target` (None: discovery) as `INITIATOR`.
pub fn opts(target: Option<&str>) -> LoginOptions {
    LoginOptions::new(INITIATOR, target)
}

pub async fn try_login(d: &Daemon, o: &LoginOptions) -> Result<Session, InitiatorError> {
    within("login", Session::login(d.addr, o)).await
}

pub async fn login_with(d: &Daemon, o: &LoginOptions) -> Session {
    try_login(d, o).await.expect("login")
}

/// A normal session on `T_MAIN`, each LUN's power-on UNIT ATTENTION consumed.
pub async fn login_main(d: &Daemon) -> Session {
    login_main_with(d, &opts(Some(T_MAIN))).await
}

/// The standard daemon and a "bystander" session opened before a test's bad input, with its
/// own ISID: a later login with the ISID of a session reinstates (ends) it.
pub async fn start_with_bystander(isid: [u8; 6]) -> (Daemon, Session) {
    let d = Daemon::start();
    let mut o = opts(Some(T_MAIN));
    o.isid = isid;
    let s = login_main_with(&d, &o).await;
    (d, s)
}

/// Log in with `o` (a `T_MAIN` login) and consume each LUN's power-on UNIT ATTENTION.
pub async fn login_main_with(d: &Daemon, o: &LoginOptions) -> Session {
    let mut s = login_with(d, o).await;
    for lun in MAIN_LUNS {
        clear_power_on_ua(&mut s, lun).await;
    }
    s
}

pub fn lun(n: u16) -> Lun {
    Lun::single(n)
}

/// Run a command within the timeout; protocol errors fail the test.
pub async fn cmd(
    s: &mut Session,
    l: u16,
    cdb: &[u8],
    data_out: Option<&[u8]>,
    expected_in: u32,
) -> ScsiResult {
    cmd_lun(s, lun(l), cdb, data_out, expected_in).await
}

pub async fn cmd_lun(
    s: &mut Session,
    l: Lun,
    cdb: &[u8],
    data_out: Option<&[u8]>,
    expected_in: u32,
) -> ScsiResult {
    within(
        &format!("command {:#04x} on {l:?}", cdb[0]),
        s.command(l, cdb, data_out, expected_in),
    )
    .await
    .unwrap_or_else(|e| panic!("command {:#04x} on {l:?}: {e}", cdb[0]))
}

pub const GOOD: u8 = 0x00;
pub const CHECK_CONDITION: u8 = 0x02;

pub fn assert_good(r: &ScsiResult) {
    assert_eq!(
        r.status,
        GOOD,
        "expected GOOD, got status {:#04x} sense {:?}",
        r.status,
        r.sense_code()
    );
}

pub fn assert_sense(r: &ScsiResult, key: u8, asc: u8, ascq: u8) {
    assert_eq!(r.status, CHECK_CONDITION, "expected CHECK CONDITION: {r:?}");
    assert_eq!(
        r.sense_code(),
        Some((key, asc, ascq)),
        "sense (key, asc, ascq)"
    );
}

/// The first command of a new session on a LUN sees POWER ON OCCURRED (6/29/00); consume it.
pub async fn clear_power_on_ua(s: &mut Session, l: u16) {
    clear_power_on_ua_at(s, lun(l)).await
}

/// `clear_power_on_ua` on any 8-byte LUN; afterwards the LU has nothing pending (GOOD).
pub async fn clear_power_on_ua_at(s: &mut Session, l: Lun) {
    let r = cmd_lun(s, l, &test_unit_ready(), None, 0).await;
    assert_sense(&r, 0x06, 0x29, 0x00);
    let r = cmd_lun(s, l, &test_unit_ready(), None, 0).await;
    assert_good(&r);
}

// ---- CDBs ----

pub fn test_unit_ready() -> [u8; 6] {
    [0; 6]
}

pub fn inquiry(evpd: Option<u8>, alloc: u16) -> [u8; 6] {
    let a = alloc.to_be_bytes();
    match evpd {
        Some(page) => [0x12, 0x01, page, a[0], a[1], 0],
        None => [0x12, 0, 0, a[0], a[1], 0],
    }
}

pub fn read10(lba: u32, blocks: u16) -> [u8; 10] {
    rw10(0x28, lba, blocks, false)
}

pub fn write10(lba: u32, blocks: u16) -> [u8; 10] {
    rw10(0x2A, lba, blocks, false)
}

pub fn write10_fua(lba: u32, blocks: u16) -> [u8; 10] {
    rw10(0x2A, lba, blocks, true)
}

fn rw10(op: u8, lba: u32, blocks: u16, fua: bool) -> [u8; 10] {
    let l = lba.to_be_bytes();
    let b = blocks.to_be_bytes();
    let flags = if fua { 0x08 } else { 0 };
    [op, flags, l[0], l[1], l[2], l[3], 0, b[0], b[1], 0]
}

pub fn read16(lba: u64, blocks: u32) -> [u8; 16] {
    rw16(0x88, lba, blocks)
}

pub fn write16(lba: u64, blocks: u32) -> [u8; 16] {
    rw16(0x8A, lba, blocks)
}

fn rw16(op: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

pub fn read_capacity16(alloc: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x9E;
    c[1] = 0x10;
    c[10..14].copy_from_slice(&alloc.to_be_bytes());
    c
}

pub fn report_luns(alloc: u32) -> [u8; 12] {
    let mut c = [0u8; 12];
    c[0] = 0xA0;
    c[6..10].copy_from_slice(&alloc.to_be_bytes());
    c
}

pub fn synchronize_cache10() -> [u8; 10] {
    [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]
}

// ---- data and wire helpers ----

/// Deterministic, position-dependent bytes (different for each seed).
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(0x9E37_79B9) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

/// Write `data` at `lba` (WRITE(16)) and check GOOD.
pub async fn write_blocks(s: &mut Session, l: u16, lba: u64, block: usize, data: &[u8]) {
    write_blocks_at(s, lun(l), lba, block, data).await
}

/// `write_blocks` on any 8-byte LUN (a two-level VVol LUN, say).
pub async fn write_blocks_at(s: &mut Session, l: Lun, lba: u64, block: usize, data: &[u8]) {
    let r = cmd_lun(
        s,
        l,
        &write16(lba, (data.len() / block) as u32),
        Some(data),
        0,
    )
    .await;
    assert_good(&r);
}

/// Read `blocks` at `lba` (READ(16)), check GOOD and return the data.
pub async fn read_blocks(s: &mut Session, l: u16, lba: u64, block: usize, blocks: u32) -> Vec<u8> {
    read_blocks_at(s, lun(l), lba, block, blocks).await
}

/// `read_blocks` on any 8-byte LUN.
pub async fn read_blocks_at(
    s: &mut Session,
    l: Lun,
    lba: u64,
    block: usize,
    blocks: u32,
) -> Vec<u8> {
    let len = block * blocks as usize;
    let r = cmd_lun(s, l, &read16(lba, blocks), None, len as u32).await;
    assert_good(&r);
    assert_eq!(r.data.len(), len, "read length");
    r.data
}

/// Receive PDUs until the target closes the connection; the PDUs seen before the close.
/// Panics if the connection is still open after `IO_TIMEOUT`.
pub async fn expect_closed(s: &mut Session) -> Vec<RxPdu> {
    let mut seen = Vec::new();
    within("the target to close the connection", async {
        while let Ok(p) = s.recv_pdu().await {
            seen.push(p);
        }
    })
    .await;
    seen
}

/// The next PDU, within the timeout.
pub async fn recv(s: &mut Session) -> RxPdu {
    within("a PDU", s.recv_pdu()).await.expect("receive a PDU")
}

/// Assert that nothing arrives for `d`.
pub async fn expect_silence(s: &mut Session, d: Duration) {
    if let Ok(r) = tokio::time::timeout(d, s.recv_pdu()).await {
        panic!("expected no PDU, got {r:?}");
    }
}

/// A plain TCP connection to the daemon (for bytes that are not a login at all).
pub async fn raw_connect(d: &Daemon) -> tokio::net::TcpStream {
    within("connect", tokio::net::TcpStream::connect(d.addr))
        .await
        .expect("connect")
}

/// Read from a raw stream until EOF; the bytes received. Panics if it stays open.
pub async fn read_until_eof(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut all = Vec::new();
    within("the target to close the connection", async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    all
}

/// Answer a target NOP-In ping (ITT 0xffffffff) with the NOP-Out it asks for.
pub async fn answer_ping(s: &mut Session, ping: &RxPdu) {
    use vvold::iscsi::pdu::{op, Bhs};
    assert_eq!(ping.bhs.opcode(), op::NOP_IN);
    let mut b = Bhs::new(op::NOP_OUT | 0x40);
    b.0[1] = 0x80;
    b.set_u32(16, 0xFFFF_FFFF);
    b.set_u32(20, ping.bhs.u32_at(20));
    b.set_u32(24, s.cmdsn);
    b.set_u32(28, s.expstatsn);
    within("answer a ping", s.send_pdu(b, &[]))
        .await
        .expect("send NOP-Out");
}

/// A SCSI Command BHS with the session's current CmdSN/ExpStatSN (CmdSN is not advanced).
pub fn scsi_command_bhs(
    s: &Session,
    l: u16,
    itt: u32,
    cdb: &[u8],
    write_len: u32,
    read_len: u32,
) -> vvold::iscsi::pdu::Bhs {
    use vvold::iscsi::pdu::{op, Bhs};
    let mut b = Bhs::new(op::SCSI_COMMAND);
    b.0[1] =
        0x80 | 0x01 | if write_len > 0 { 0x20 } else { 0 } | if read_len > 0 { 0x40 } else { 0 };
    b.set_lun(lun(l));
    b.set_u32(16, itt);
    b.set_u32(20, write_len.max(read_len));
    b.set_u32(24, s.cmdsn);
    b.set_u32(28, s.expstatsn);
    b.0[32..32 + cdb.len()].copy_from_slice(cdb);
    b
}

/// A session that keeps working: a write/read round trip on the RAM LUN and a NOP ping.
pub async fn assert_session_works(s: &mut Session, seed: u32) {
    let data = pattern(8192, seed);
    write_blocks(s, LUN_RAM, 1000 + seed as u64 * 16, 512, &data).await;
    assert_eq!(
        read_blocks(s, LUN_RAM, 1000 + seed as u64 * 16, 512, 16).await,
        data
    );
    assert_eq!(
        within("nop", s.nop(b"still here")).await.unwrap(),
        b"still here"
    );
}

/// Run a command to completion within `d` (killing it if it overruns); its output.
pub fn run_bounded(mut c: Command, d: Duration) -> std::process::Output {
    let child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("NO_COLOR", "1")
        .spawn()
        .expect("spawn");
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(d) {
        Ok(out) => out.expect("wait"),
        Err(_) => {
            // SAFETY: kill(2) on the PID of the child spawned above, still unreaped (its
            // waiter thread has not returned).
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            panic!("{c:?} did not finish within {d:?}");
        }
    }
}

/// Wait (bounded) until the daemon's log contains `needle`.
pub fn wait_for_log(d: &Daemon, needle: &str) {
    let deadline = Instant::now() + IO_TIMEOUT;
    while !d.log_text().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "log never contained {needle:?}:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---- the VVol array ----

/// The VVol array's target: LUN 0 (a file LU) and two Protocol Endpoints.
pub const T_VVOL: &str = "iqn.2026-11.io.vvold.test:vvol";
/// Two ESXi hosts, and the control initiator (the standalone control service's identity).
pub const HOST_A: &str = "iqn.2026-11.io.vvold.test:host-a";
pub const HOST_B: &str = "iqn.2026-11.io.vvold.test:host-b";
pub const CONTROL_IQN: &str = "iqn.2026-11.io.vvold.test:control";
pub const PE_1: u16 = 254;
pub const PE_2: u16 = 255;
/// Containers: sparse files under the data directory, and memory.
pub const C_FILE: &str = "files";
pub const C_RAM: &str = "mem";
pub const VVOL_LUN0_BYTES: u64 = 64 << 20;
/// A bearer token long enough for the config check (16+ characters).
pub const API_TOKEN: &str = "integration-test-token-0001";

/// Variants of the VVol array.
#[derive(Debug, Clone, Default)]
pub struct VvolOpts {
    /// `[control] token`.
    pub token: Option<String>,
    /// CHAP (user, secret) the target requires.
    pub chap: Option<(String, String)>,
    /// TOML appended to the configuration (more containers, a [qos] table).
    pub extra: String,
    /// `allowed_hosts` of the first PE (none: every host).
    pub pe1_hosts: Vec<&'static str>,
}

/// The VVol array's configuration, its control API on `control`.
pub fn vvol_config_text(o: &VvolOpts, control: SocketAddr) -> String {
    let chap = o
        .chap
        .as_ref()
        .map(|(u, p)| format!("chap = {{ user = \"{u}\", secret = \"{p}\" }}"))
        .unwrap_or_default();
    let token = o
        .token
        .as_ref()
        .map(|t| format!("token = \"{t}\""))
        .unwrap_or_default();
    let pe1_hosts = if o.pe1_hosts.is_empty() {
        String::new()
    } else {
        format!("allowed_hosts = {:?}", o.pe1_hosts)
    };
    format!(
        r#"
listen = ["127.0.0.1:1"]

[iscsi]
# Sessions in these tests sit idle while the test talks HTTP; no pings to answer.
nop_interval_secs = 0

[[target]]
name = "{T_VVOL}"
{chap}

[[target.lun]]
id = 0
backend = "file"
path = "lun0.img"
size = "{VVOL_LUN0_BYTES}"

[[target.pe]]
id = {PE_1}
{pe1_hosts}

[[target.pe]]
id = {PE_2}

[[container]]
name = "{C_FILE}"
backend = "file"
capacity = "8GiB"

[[container]]
name = "{C_RAM}"
backend = "ram"
capacity = "1GiB"

[control]
listen = "{control}"
initiators = ["{CONTROL_IQN}"]
{token}

{extra}
"#,
        extra = o.extra
    )
}

/// An HTTP answer: status and the JSON body (Null when empty).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: serde_json::Value,
}

impl Reply {
    /// Deserialize the body after checking the status.
    pub fn expect<T: serde::de::DeserializeOwned>(self, status: u16) -> T {
        assert_eq!(self.status, status, "HTTP status; body {}", self.body);
        serde_json::from_value(self.body.clone())
            .unwrap_or_else(|e| panic!("body {} does not parse: {e}", self.body))
    }

    /// Assert an error status whose body is `{"error": "<non-empty>"}`; the message.
    pub fn expect_error(self, status: u16) -> String {
        assert_eq!(self.status, status, "HTTP status; body {}", self.body);
        let msg = self.body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no JSON error in {}", self.body))
            .to_string();
        assert!(!msg.is_empty(), "empty error message");
        msg
    }
}

/// A client of a control API (the embedded one, or a standalone service).
#[derive(Debug, Clone)]
pub struct Api {
    pub base: String,
    pub token: Option<String>,
}

impl Api {
    pub fn new(base: String) -> Api {
        Api { base, token: None }
    }

    pub fn of(d: &Daemon) -> Api {
        Api::new(d.api_url())
    }

    pub fn with_token(mut self, t: &str) -> Api {
        self.token = Some(t.to_string());
        self
    }

    /// One request with a raw body (sent as application/json); any status is returned.
    pub fn raw(&self, method: &str, path: &str, body: Option<&str>) -> Reply {
        let agent = ureq::AgentBuilder::new().timeout(IO_TIMEOUT * 4).build();
        let mut req = agent.request(method, &format!("{}/api/v1{path}", self.base));
        if let Some(t) = &self.token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        let resp = match body {
            Some(b) => req.set("Content-Type", "application/json").send_string(b),
            None => req.call(),
        };
        let r = match resp {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = r.status();
        let text = r.into_string().expect("read the body");
        let body = if text.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{method} {path}: body {text:?} is not JSON: {e}"))
        };
        Reply { status, body }
    }

    pub fn get(&self, path: &str) -> Reply {
        self.raw("GET", path, None)
    }

    pub fn post(&self, path: &str, body: serde_json::Value) -> Reply {
        self.raw("POST", path, Some(&body.to_string()))
    }

    pub fn put(&self, path: &str, body: serde_json::Value) -> Reply {
        self.raw("PUT", path, Some(&body.to_string()))
    }

    pub fn delete(&self, path: &str) -> Reply {
        self.raw("DELETE", path, None)
    }

    pub fn pes(&self) -> Vec<vvold::control::model::PeInfo> {
        self.get("/pes").expect(200)
    }

    /// Create a VVol of `size` bytes in `container`.
    pub fn create_vvol(&self, container: &str, size: u64) -> vvold::control::model::VvolInfo {
        self.post(
            "/vvols",
            serde_json::json!({ "container": container, "size": size, "type": "data" }),
        )
        .expect(201)
    }

    pub fn vvol(&self, id: uuid::Uuid) -> vvold::control::model::VvolInfo {
        self.get(&format!("/vvols/{id}")).expect(200)
    }

    /// Bind (on `pe`, or where the array chooses); 200 and the binding.
    pub fn bind(
        &self,
        vvol: uuid::Uuid,
        host: &str,
        pe: Option<u16>,
    ) -> vvold::control::model::BindingInfo {
        self.try_bind(vvol, host, pe).expect(200)
    }

    pub fn try_bind(&self, vvol: uuid::Uuid, host: &str, pe: Option<u16>) -> Reply {
        self.post(
            "/bind",
            serde_json::json!({ "vvol": vvol, "host": host, "pe": pe }),
        )
    }

    /// Unbind; 200 and the bindings removed.
    pub fn unbind(&self, vvol: uuid::Uuid, host: &str) -> Vec<vvold::control::model::BindingInfo> {
        self.post("/unbind", serde_json::json!({ "vvol": vvol, "host": host }))
            .expect(200)
    }

    pub fn bindings(&self) -> Vec<vvold::control::model::BindingInfo> {
        self.get("/bindings").expect(200)
    }
}

/// Login options of a host on `T_VVOL`.
pub fn host_opts(host: &str) -> LoginOptions {
    LoginOptions::new(host, Some(T_VVOL))
}

/// Every first-level LU of `T_VVOL`: LUN 0 and the PEs.
pub const VVOL_TOP_LUNS: [u16; 3] = [0, PE_1, PE_2];

/// A session on `T_VVOL` as `host` (options `o`) with the power-on UNIT ATTENTION of LUN 0
/// and of both PEs consumed.
pub async fn login_host_with(d: &Daemon, o: &LoginOptions) -> Session {
    let mut s = login_with(d, o).await;
    for l in VVOL_TOP_LUNS {
        clear_power_on_ua(&mut s, l).await;
    }
    s
}

pub async fn login_host(d: &Daemon, host: &str) -> Session {
    login_host_with(d, &host_opts(host)).await
}

/// REPORT LUNS with SELECT REPORT `select`.
pub fn report_luns_select(select: u8, alloc: u32) -> [u8; 12] {
    let mut c = report_luns(alloc);
    c[2] = select;
    c
}

/// The LUN list of GOOD REPORT LUNS data (checking the LUN LIST LENGTH).
pub fn lun_list(r: &ScsiResult) -> Vec<[u8; 8]> {
    assert_good(r);
    let len = u32::from_be_bytes(r.data[..4].try_into().unwrap()) as usize;
    assert_eq!(r.data.len(), 8 + len, "REPORT LUNS length");
    r.data[8..]
        .chunks(8)
        .map(|c| c.try_into().unwrap())
        .collect()
}

/// REPORT LUNS (SELECT REPORT `select`) at `at`: the LUN list.
pub async fn report_luns_at(s: &mut Session, at: Lun, select: u8) -> Vec<[u8; 8]> {
    let r = cmd_lun(s, at, &report_luns_select(select, 4096), None, 4096).await;
    lun_list(&r)
}

/// The two-level LUN a binding is addressed by, checked against everything the API says
/// about it: `secondary_id` is `0xe2` + 10 hex digits, `lun` is PE ‖ that element.
pub fn binding_lun(b: &vvold::control::model::BindingInfo) -> Lun {
    use vvold::vvol::address::{secondary_lun, SecondaryId};
    assert!(
        b.secondary_id.starts_with("0xe2") && b.secondary_id.len() == 14,
        "secondary id {}",
        b.secondary_id
    );
    let id = SecondaryId::parse_vasa(&b.secondary_id)
        .unwrap_or_else(|| panic!("secondary id {} does not parse", b.secondary_id));
    let l = secondary_lun(b.pe_lun, id);
    let hex: String = l.to_bytes().iter().map(|x| format!("{x:02x}")).collect();
    assert_eq!(b.lun, hex, "the binding's LUN field");
    l
}

/// A block of 512 bytes whose content is `index` (as 4-byte big-endian words).
pub fn index_block(index: u32) -> Vec<u8> {
    index.to_be_bytes().repeat(128)
}

/// `vvold control`: the standalone control service, stopped by PID when dropped.
pub struct ControlService {
    child: Option<Child>,
    pub addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl ControlService {
    /// Start it in front of `d`, binding in-band as `initiator`; `chap` goes into the
    /// `--target` URL as `USER%SECRET@`.
    pub fn start(d: &Daemon, initiator: &str, chap: Option<(&str, &str)>) -> ControlService {
        let dir = tempfile::tempdir().expect("tempdir");
        let auth = chap.map(|(u, p)| format!("{u}%{p}@")).unwrap_or_default();
        let target = format!("iscsi://{auth}{}/{T_VVOL}", d.addr);
        for _ in 0..5 {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let log = dir.path().join(format!("control-{}.log", addr.port()));
            let out = File::create(&log).expect("log file");
            let err = out.try_clone().expect("log file");
            let mut child = Command::new(env!("CARGO_BIN_EXE_vvold"))
                .env("NO_COLOR", "1")
                .env_remove("VVOLD_TOKEN")
                .env_remove("VVOLD_ARRAY_TOKEN")
                .args(["--log-level", "debug", "control", "--target", &target])
                .args(["--array", &d.api_url(), "--listen", &addr.to_string()])
                .args(["--initiator-name", initiator])
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .expect("spawn vvold control");
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                if let Some(status) = child.try_wait().expect("try_wait") {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    if text.contains("cannot listen") {
                        break;
                    }
                    panic!("vvold control exited ({status}):\n{text}");
                }
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if announced_listening(&text, &addr) {
                    return ControlService {
                        child: Some(child),
                        addr,
                        log,
                        _dir: dir,
                    };
                }
                if Instant::now() > deadline {
                    signal_and_wait(child, libc::SIGKILL);
                    panic!("vvold control did not listen within {START_TIMEOUT:?}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("vvold control could not find a free port");
    }

    pub fn api(&self) -> Api {
        Api::new(format!("http://{}", self.addr))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ControlService {
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            signal_and_wait(c, libc::SIGTERM);
        }
        if std::thread::panicking() {
            eprintln!("---- vvold control log ----\n{}", self.log_text());
        }
    }
}

// ---- EXTENDED COPY builders (SPC-4 §6.4) ---------------------------------------------

/// The 16-byte NAA designator of VPD page 83h (the first designator, LU association).
pub async fn naa_at(s: &mut vvold::initiator::Session, l: Lun) -> [u8; 16] {
    let r = cmd_lun(s, l, &inquiry(Some(0x83), 255), None, 255).await;
    assert_good(&r);
    assert_eq!(&r.data[4..8], &[0x01, 0x03, 0x00, 16]);
    r.data[8..24].try_into().unwrap()
}

pub fn cscd(naa: &[u8; 16]) -> Vec<u8> {
    let mut d = vec![0u8; 32];
    d[0] = 0xE4;
    d[4..8].copy_from_slice(&[0x01, 0x03, 0x00, 16]);
    d[8..24].copy_from_slice(naa);
    d[30] = 0x02; // DISK BLOCK LENGTH 512
    d
}

pub fn b2b(src: u16, dst: u16, blocks: u16, src_lba: u64, dst_lba: u64) -> Vec<u8> {
    let mut d = vec![0u8; 28];
    d[0] = 0x02;
    d[3] = 0x18;
    d[4..6].copy_from_slice(&src.to_be_bytes());
    d[6..8].copy_from_slice(&dst.to_be_bytes());
    d[10..12].copy_from_slice(&blocks.to_be_bytes());
    d[12..20].copy_from_slice(&src_lba.to_be_bytes());
    d[20..28].copy_from_slice(&dst_lba.to_be_bytes());
    d
}

/// EXTENDED COPY CDB and parameter list for `list_id` (LIST ID USAGE 00b: keep the result).
pub fn xcopy(list_id: u8, cscds: &[Vec<u8>], segs: &[Vec<u8>]) -> ([u8; 16], Vec<u8>) {
    let (c, s) = (cscds.concat(), segs.concat());
    let mut h = vec![0u8; 16];
    h[0] = list_id;
    h[2..4].copy_from_slice(&(c.len() as u16).to_be_bytes());
    h[8..12].copy_from_slice(&(s.len() as u32).to_be_bytes());
    let data = [h, c, s].concat();
    let mut cdb = [0u8; 16];
    cdb[0] = 0x83;
    cdb[10..14].copy_from_slice(&(data.len() as u32).to_be_bytes());
    (cdb, data)
}
