//! One TCP connection: the login phase, then the full-feature loop that reads PDUs, admits
//! commands through the CmdSN window, gathers write data into the command's own buffer and
//! hands complete commands to tasks. Everything the connection sends goes through its writer.

use super::exec::{self, CommandInfo, ConnCtx, Job};
use super::frame::{FrameError, Header, PduReader};
use super::route;
use super::runners::Runners;
use super::session::{lock, Session, SessionKey, Task};
use super::writer::{self, Numbering, OutPdu, WriterConfig};
use super::Shared;
use crate::array::engine::Pe;
use crate::array::{LogicalUnit, Target};
use crate::config::AbortFinishedTask;
use crate::iscsi::login::{LoginMachine, LoginOutcome, LoginResult};
use crate::iscsi::params::SessionType;
use crate::iscsi::pdu::{
    self, op, Bhs, InitiatorPdu, Itt, RejectReason, ScsiCommand, Seq, TaskAttr, TaskMgmt,
    TmfFunction, TmfResponse,
};
use crate::iscsi::transfer::{TransferLimits, WriteTransfer};
use crate::iscsi::window::{Admission, CmdWindow, IMMEDIATE_ALLOWANCE};
use crate::scsi::disk::ResetKind;
use crate::scsi::{Plan, Sense, TaskAttribute};
use bytes::{Bytes, BytesMut};
use rustc_hash::FxHashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, info_span, warn, Instrument};

/// Login PDUs carry at most 8192 bytes of data (the default MaxRecvDataSegmentLength).
const LOGIN_MAX_DATA: usize = 8192;
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes of write buffers one session may have waiting for Data-Out.
const MAX_PENDING_WRITE_BYTES: usize = 64 << 20;

pub async fn serve(stream: TcpStream, shared: Arc<Shared>) {
    let peer = stream.peer_addr().ok();
    let local = match stream.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    let _ = stream.set_nodelay(true);
    let span = info_span!("conn", peer = %peer.map(|p| p.to_string()).unwrap_or_default());
    async move {
        match run(stream, local, shared).await {
            Ok(()) => debug!("connection closed"),
            Err(e) => info!("connection ended: {e}"),
        }
    }
    .instrument(span)
    .await
}

#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
    #[error("login failed with status {0:#06x}")]
    LoginFailed(u16),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
}

async fn run(stream: TcpStream, local: SocketAddr, shared: Arc<Shared>) -> Result<(), ConnError> {
    let (rd, mut wr) = stream.into_split();
    let mut reader = PduReader::new(rd, LOGIN_MAX_DATA);
    // A peer that never finishes logging in must not hold a connection forever.
    let login = tokio::time::timeout(LOGIN_TIMEOUT, login(&mut reader, &mut wr, local, &shared))
        .await
        .map_err(|_| ConnError::Protocol("login did not complete in time"))??;
    let params = &login.params;
    reader.header_digest = params.header_digest;
    reader.data_digest = params.data_digest;
    reader.max_data = params.max_recv_data_segment_length as usize;
    let window = Arc::new(Mutex::new(CmdWindow::new(
        login.expcmdsn,
        shared.iscsi.queue_depth,
    )));
    let (tx, rx) = mpsc::channel(256);
    let wcfg = WriterConfig {
        header_digest: params.header_digest,
        data_digest: params.data_digest,
        first_statsn: login.statsn,
    };
    let writer = tokio::spawn(writer::run(wr, rx, window.clone(), wcfg));
    let result = match params.session_type {
        SessionType::Discovery => {
            info!(initiator = %params.initiator_name, "discovery session");
            let mut conn = FullFeature::base(&shared, tx, window, &login, local);
            conn.run(&mut reader).await
        }
        SessionType::Normal => {
            normal_session(&shared, &mut reader, tx, window, &login, local).await
        }
    };
    // The writer ends once every sender is gone: all responses queued so far are flushed.
    let _ = writer.await;
    result
}

async fn login(
    reader: &mut PduReader<OwnedReadHalf>,
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    local: SocketAddr,
    shared: &Shared,
) -> Result<LoginResult, ConnError> {
    let mut machine = LoginMachine::new(shared.policy.clone(), local, shared.sessions.alloc_tsih());
    let mut first = true;
    loop {
        // RFC 7143 §6.1: anything but a Login Request before login completes ends the
        // connection. Vet the opcode before reading the AHS the header claims: garbage would
        // otherwise keep us waiting for bytes that never come.
        if reader.peek_bhs().await?.opcode() != op::LOGIN_REQUEST {
            return Err(ConnError::Protocol(
                "PDU other than Login Request during login",
            ));
        }
        let h = reader.read_header().await?;
        let (data, _) = reader.read_data_vec(h.bhs.data_segment_len()).await?;
        let Ok(InitiatorPdu::Login(req)) = InitiatorPdu::decode(&h.bhs, &h.ahs) else {
            return Err(ConnError::Protocol("undecodable Login Request"));
        };
        // RFC 7143 §11.13.5: a login naming a live session asks to add a connection to it,
        // and a session here has one connection (MaxConnections=1): "too many connections".
        // A TSIH naming no live session is the machine's to refuse ("session does not exist").
        let step = if first && req.tsih != 0 && shared.sessions.is_live(req.isid, req.tsih) {
            machine.fail(&req, 0x02, 0x06)
        } else {
            machine.on_request(&req, &data)
        };
        first = false;
        let mut frame = step.bhs.0.to_vec();
        frame.extend_from_slice(&step.data);
        frame.resize(frame.len() + pdu::pad_len(step.data.len()), 0);
        wr.write_all(&frame).await?;
        match step.outcome {
            LoginOutcome::Continue => {}
            LoginOutcome::Failed { class, detail } => {
                info!(class, detail, "login refused");
                return Err(ConnError::LoginFailed(u16::from_be_bytes([class, detail])));
            }
            LoginOutcome::Complete(result) => return Ok(*result),
        }
    }
}

async fn normal_session(
    shared: &Arc<Shared>,
    reader: &mut PduReader<OwnedReadHalf>,
    tx: mpsc::Sender<OutPdu>,
    window: Arc<Mutex<CmdWindow>>,
    login: &LoginResult,
    local: SocketAddr,
) -> Result<(), ConnError> {
    let target_name = login.target.clone().unwrap_or_default();
    let Some(target) = shared.array.target(&target_name).cloned() else {
        return Err(ConnError::Protocol("target vanished after login"));
    };
    let initiator = login.params.initiator_name.clone();
    // The SCSI target port is the portal group logged in through: relative target port id
    // = target portal group tag = ALUA port group id.
    let target_port = shared
        .policy
        .target(&target.name)
        .and_then(|t| t.portal_for(local))
        .map_or(crate::iscsi::policy::DEFAULT_TPGT, |p| p.tpgt);
    let session = Arc::new(Session {
        tsih: login.tsih,
        nexus: shared.sessions.alloc_nexus(),
        key: SessionKey {
            initiator: initiator.to_ascii_lowercase(),
            isid: login.isid,
            target: target.name.to_ascii_lowercase(),
            tpgt: target_port,
        },
        initiator: initiator.clone(),
        target: target.clone(),
        target_port,
        window: window.clone(),
        tasks: Mutex::new(FxHashMap::default()),
        order: Default::default(),
        control: super::session::may_control(
            shared.array.engine.is_control_initiator(&initiator),
            // Logged in, so it proved the control credentials if there are any.
            shared.policy.control_chap(&initiator).is_some(),
            // A dual-stack portal sees IPv4 loopback as ::ffff:127.0.0.1.
            local.ip().to_canonical().is_loopback(),
        ),
        closing: watch::channel(false).0,
        closed: watch::channel(false).0,
    });
    if let Some(old) = shared.sessions.insert(session.clone()) {
        info!(
            tsih = old.tsih,
            "session reinstatement: closing the previous session"
        );
        old.close();
        // Its tasks end with it (ErrorRecoveryLevel 0), even if its connection is slow to
        // notice the close: aborted now, none of them starts, and the new session proceeds
        // only once none can still write. Its reader may still be inside a PDU and add a task,
        // so sweep again once the old session has closed (it adds none after that), all
        // within the same bound.
        let sweep = |old: Arc<Session>| async move {
            for task in old.abort_tasks_on(None) {
                task.quiesced().await;
            }
        };
        let ended = async {
            sweep(old.clone()).await;
            old.wait_closed().await;
            sweep(old.clone()).await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), ended).await;
    }
    // Reservations are held by the initiator port (name + ISID), which outlives the nexus.
    let port = session.initiator_port();
    for lu in session_lus(shared, &session) {
        lu.disk
            .nexus_added(session.nexus, &port, session.target_port);
    }
    let span =
        info_span!("session", tsih = session.tsih, initiator = %initiator, target = %target.name);
    async {
        info!("logged in");
        let mut conn = FullFeature::normal(shared, tx, window, login, session.clone(), local);
        let r = conn.run(reader).await;
        conn.teardown();
        r
    }
    .instrument(span)
    .await
}

/// Tasks task management aborted, each marked with whether it belongs to the connection
/// that asked (whose answers the TMF answer must follow).
fn mark_own(tasks: Vec<Arc<Task>>, own: bool) -> Vec<(Arc<Task>, bool)> {
    tasks.into_iter().map(|t| (t, own)).collect()
}

/// Every logical unit a session can reach: the target's LUs and PEs, and the VVols bound for
/// its initiator.
fn session_lus(shared: &Shared, session: &Session) -> Vec<Arc<LogicalUnit>> {
    let engine = &shared.array.engine;
    let mut lus: Vec<Arc<LogicalUnit>> = session.target.luns.values().cloned().collect();
    lus.extend(
        engine
            .pes()
            .iter()
            .filter(|p| p.target.eq_ignore_ascii_case(&session.target.name))
            .map(|p| p.lu.clone()),
    );
    lus.extend(engine.bound_lus(&session.initiator));
    lus
}

/// The logical units of `target`, the SCSI target device a target reset resets: its normal
/// LUNs, its PEs, and every VVol bound at one of its PEs for any host. A host's VVols bound
/// only at other targets' PEs belong to those targets.
fn target_lus(shared: &Shared, target: &Target) -> Vec<Arc<LogicalUnit>> {
    let engine = &shared.array.engine;
    let mut lus: Vec<Arc<LogicalUnit>> = target.luns.values().cloned().collect();
    let pes: Vec<&Arc<Pe>> = engine
        .pes()
        .iter()
        .filter(|p| p.target.eq_ignore_ascii_case(&target.name))
        .collect();
    lus.extend(pes.iter().map(|p| p.lu.clone()));
    let numbers: Vec<u16> = pes.iter().map(|p| p.lun).collect();
    lus.extend(engine.lus_bound_on(&numbers));
    lus
}

/// Connection-unique target transfer tags; 0xffffffff is reserved (RFC 7143 §11.7.4).
fn alloc_ttt(next: &mut u32) -> u32 {
    let t = *next;
    *next = match next.wrapping_add(1) {
        0 | 0xFFFF_FFFF => 1,
        n => n,
    };
    t
}

/// A write command waiting for its Data-Out.
struct PendingWrite {
    /// Routed to a logical unit (a command without one has no Data-Out to wait for).
    job: Job,
    transfer: WriteTransfer,
    buf: BytesMut,
}

/// Resolves once the session is told to close (reinstatement, cold reset); never for a
/// discovery session, which has nothing to close it from outside.
async fn session_closing(closing: &mut Option<watch::Receiver<bool>>) {
    match closing.as_mut() {
        Some(rx) => {
            let _ = rx.wait_for(|c| *c).await;
        }
        None => std::future::pending().await,
    }
}

/// Resolves once the pinger finds a ping unanswered. The pinger drops its sender when it has
/// nothing to do (pings disabled): that is not a dead connection.
async fn ping_unanswered(dead: &mut watch::Receiver<bool>) {
    if dead.wait_for(|d| *d).await.is_err() {
        std::future::pending::<()>().await;
    }
}

struct FullFeature<'a> {
    shared: &'a Arc<Shared>,
    out: mpsc::Sender<OutPdu>,
    window: Arc<Mutex<CmdWindow>>,
    session: Option<Arc<Session>>,
    ctx: Option<Arc<ConnCtx>>,
    /// Run the commands; present with `ctx` (normal sessions).
    runners: Option<Runners>,
    limits: TransferLimits,
    max_xmit: usize,
    /// This connection's CID, which a Logout closing "the connection" must name.
    cid: u16,
    /// FxHash, as the session's tasks (bounded by the CmdSN window).
    pending: FxHashMap<Itt, PendingWrite>,
    next_ttt: u32,
    text: crate::iscsi::discovery::TextResponder,
    /// PDUs received: the pinger notices a change each second, so traffic costs no clock
    /// read per PDU (one per PDU was about 1 % of the target's CPU).
    received: Arc<AtomicU64>,
    ping_ttt: Arc<AtomicU32>,
}

enum Flow {
    Continue,
    Close,
}

impl<'a> FullFeature<'a> {
    fn base(
        shared: &'a Arc<Shared>,
        out: mpsc::Sender<OutPdu>,
        window: Arc<Mutex<CmdWindow>>,
        login: &LoginResult,
        local: SocketAddr,
    ) -> Self {
        let p = &login.params;
        FullFeature {
            shared,
            out,
            window,
            session: None,
            ctx: None,
            runners: None,
            limits: TransferLimits {
                first_burst: p.first_burst_length,
                max_burst: p.max_burst_length,
                max_outstanding_r2t: p.max_outstanding_r2t,
                initial_r2t: p.initial_r2t,
                immediate_data: p.immediate_data,
            },
            max_xmit: p.max_xmit_data_segment_length as usize,
            cid: login.cid,
            pending: FxHashMap::default(),
            next_ttt: 1,
            text: crate::iscsi::discovery::TextResponder::new(
                shared.policy.clone(),
                p.initiator_name.clone(),
                login.target.clone(),
                local,
                p.max_recv_data_segment_length,
                p.max_xmit_data_segment_length,
            ),
            received: Arc::new(AtomicU64::new(0)),
            ping_ttt: Arc::new(AtomicU32::new(0)),
        }
    }

    fn normal(
        shared: &'a Arc<Shared>,
        out: mpsc::Sender<OutPdu>,
        window: Arc<Mutex<CmdWindow>>,
        login: &LoginResult,
        session: Arc<Session>,
        local: SocketAddr,
    ) -> Self {
        let mut s = Self::base(shared, out.clone(), window, login, local);
        let ctx = Arc::new(ConnCtx {
            session: session.clone(),
            out,
            max_xmit: AtomicUsize::new(s.max_xmit),
            max_burst: login.params.max_burst_length as usize,
            engine: shared.array.engine.clone(),
            shared: shared.clone(),
        });
        // One runner per command the initiator may have outstanding, plus immediate ones.
        let most = shared.iscsi.queue_depth as usize + IMMEDIATE_ALLOWANCE as usize;
        s.runners = Some(Runners::new(ctx.clone(), most));
        s.ctx = Some(ctx);
        s.session = Some(session);
        s
    }

    /// Hand a command to the connection's runners.
    fn submit(&self, job: Job, data: Bytes) {
        match &self.runners {
            Some(r) => r.submit(job, data),
            // Only normal sessions get as far as commands with a data phase or a plan.
            None => debug!(itt = job.cmd.itt.0, "command on a session without runners"),
        }
    }

    fn seq(&self) -> Seq {
        Seq::default()
    }

    async fn send(&self, bhs: Bhs, data: Bytes, numbering: Numbering) {
        let _ = self.out.send(OutPdu::new(bhs, data, numbering)).await;
    }

    async fn reject(&self, reason: RejectReason, offending: &Bhs) {
        warn!(?reason, opcode = offending.opcode(), "rejecting PDU");
        let bhs = pdu::reject(reason, self.seq());
        self.send(bhs, Bytes::copy_from_slice(&offending.0), Numbering::Status)
            .await;
    }

    async fn run(&mut self, reader: &mut PduReader<OwnedReadHalf>) -> Result<(), ConnError> {
        // Discovery sessions have no session object and nothing closes them from outside.
        let mut closing = self.session.as_ref().map(|s| s.closing.subscribe());
        // The pinger closes this connection (session or discovery) when a ping goes unanswered.
        let (dead_tx, mut dead_rx) = watch::channel(false);
        let pinger = self.spawn_pinger(dead_tx);
        let r = loop {
            let h = tokio::select! {
                h = reader.read_header() => h,
                () = session_closing(&mut closing) => break Ok(()),
                () = ping_unanswered(&mut dead_rx) => {
                    break Err(ConnError::Protocol("NOP-In ping unanswered"));
                }
            };
            let h = match h {
                Ok(h) => h,
                Err(FrameError::Closed) => break Ok(()),
                Err(FrameError::TooLong { len, limit, bhs }) => {
                    // We cannot resynchronise on a segment we refuse to read: reject, close.
                    // The writer flushes the Reject before the connection goes.
                    warn!(len, limit, "data segment exceeds MaxRecvDataSegmentLength");
                    self.reject(RejectReason::ProtocolError, &bhs).await;
                    break Err(ConnError::Protocol(
                        "data segment exceeds MaxRecvDataSegmentLength",
                    ));
                }
                Err(e) => break Err(e.into()),
            };
            // Only this task writes it: no read-modify-write needed.
            let n = self.received.load(Ordering::Relaxed);
            self.received.store(n.wrapping_add(1), Ordering::Relaxed);
            super::workers::spin::activity();
            // A peer that stops in the middle of a PDU (its host lost power after a header)
            // leaves this waiting for the rest: pings and the session's closing must still
            // end the connection then, not TCP's retransmission timeout minutes later.
            // Biased: a PDU handled at once never polls (or registers) the other two.
            let flow = tokio::select! {
                biased;
                f = self.on_pdu(reader, h) => f,
                () = session_closing(&mut closing) => break Ok(()),
                () = ping_unanswered(&mut dead_rx) => {
                    break Err(ConnError::Protocol("NOP-In ping unanswered"));
                }
            };
            match flow {
                Ok(Flow::Continue) => {}
                Ok(Flow::Close) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        pinger.abort();
        r
    }

    /// Send NOP-In pings on an idle connection and close it when a ping goes unanswered.
    fn spawn_pinger(&self, dead: watch::Sender<bool>) -> tokio::task::JoinHandle<()> {
        let interval = self.shared.iscsi.nop_interval_secs;
        let timeout = self.shared.iscsi.nop_timeout_secs.max(1);
        let out = self.out.clone();
        let received = self.received.clone();
        let ping_ttt = self.ping_ttt.clone();
        tokio::spawn(async move {
            if interval == 0 {
                return;
            }
            let second = Duration::from_secs(1);
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + second, second);
            // Whole seconds counted in ticks, not read off a clock: ticks come a little late
            // by varying amounts, and comparing clock readings against the interval put a
            // ping one tick later at random (pings every 3 s with an interval of 1).
            let mut quiet_ticks = 0u64;
            let mut ticks_since_ping: Option<u64> = None;
            let mut ttt = 0x8000_0000u32;
            // Traffic is seen at the first tick after it, so a ping goes after `interval` to
            // `interval` + 1 s of real quiet.
            let mut seen = received.load(Ordering::Relaxed);
            loop {
                ticker.tick().await;
                let count = received.load(Ordering::Relaxed);
                if count != seen {
                    seen = count;
                    quiet_ticks = 0;
                } else {
                    quiet_ticks += 1;
                }
                if let Some(since) = ticks_since_ping.as_mut() {
                    *since += 1;
                    if ping_ttt.load(Ordering::Relaxed) == 0 {
                        ticks_since_ping = None;
                    } else if *since > timeout && quiet_ticks > timeout {
                        warn!("NOP-In ping unanswered: dropping the connection");
                        let _ = dead.send(true);
                        return;
                    }
                } else if quiet_ticks >= interval {
                    ttt = ttt.wrapping_add(1) | 0x8000_0000;
                    ping_ttt.store(ttt, Ordering::Relaxed);
                    ticks_since_ping = Some(0);
                    let bhs = pdu::nop_in(
                        crate::scsi::Lun::default(),
                        Itt::RESERVED,
                        ttt,
                        Seq::default(),
                        0,
                    );
                    if out
                        .send(OutPdu::new(bhs, Bytes::new(), Numbering::Current))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        })
    }

    async fn discard(
        &self,
        reader: &mut PduReader<OwnedReadHalf>,
        h: &Header,
    ) -> Result<bool, ConnError> {
        Ok(reader.read_data(&mut [], h.bhs.data_segment_len()).await?)
    }

    async fn on_pdu(
        &mut self,
        reader: &mut PduReader<OwnedReadHalf>,
        h: Header,
    ) -> Result<Flow, ConnError> {
        let pdu = match InitiatorPdu::decode(&h.bhs, &h.ahs) {
            Ok(p) => p,
            Err(e) => {
                self.discard(reader, &h).await?;
                self.reject(e.reason, &h.bhs).await;
                return Ok(Flow::Continue);
            }
        };
        let discovery = self.session.is_none();
        match pdu {
            InitiatorPdu::NopOut(n) => {
                let (data, ok) = reader.read_data_vec(h.bhs.data_segment_len()).await?;
                if !ok {
                    self.reject(RejectReason::DataDigestError, &h.bhs).await;
                    return Ok(Flow::Continue);
                }
                if n.itt == Itt::RESERVED {
                    // An answer to our ping.
                    if n.ttt == self.ping_ttt.load(Ordering::Relaxed) {
                        self.ping_ttt.store(0, Ordering::Relaxed);
                    }
                    return Ok(Flow::Continue);
                }
                if lock(&self.window).admit_transient(n.cmdsn, n.immediate) == Admission::Ignore {
                    return Ok(Flow::Continue);
                }
                // The echo is cut to what the initiator accepts in one PDU (RFC 7143, NOP-Out
                // Ping Data), which may be less than the ping it sent.
                let mut data = data;
                data.truncate(self.text.max_xmit_data_segment_length() as usize);
                let bhs = pdu::nop_in(n.lun, n.itt, 0xFFFF_FFFF, self.seq(), data.len());
                self.send(bhs, Bytes::from(data), Numbering::Status).await;
            }
            InitiatorPdu::Text(t) => {
                let (data, ok) = reader.read_data_vec(h.bhs.data_segment_len()).await?;
                if !ok {
                    self.reject(RejectReason::DataDigestError, &h.bhs).await;
                    return Ok(Flow::Continue);
                }
                if lock(&self.window).admit_transient(t.cmdsn, t.immediate) == Admission::Ignore {
                    return Ok(Flow::Continue);
                }
                match self.text.on_request(&t, &data, self.seq()) {
                    Ok(step) => {
                        // A MaxRecvDataSegmentLength declared in the request bounds the
                        // Data-In of commands from now on.
                        if let Some(ctx) = &self.ctx {
                            let n = self.text.max_xmit_data_segment_length() as usize;
                            ctx.max_xmit.store(n, Ordering::Relaxed);
                        }
                        self.send(step.bhs, Bytes::from(step.data), Numbering::Status)
                            .await
                    }
                    Err(e) => self.reject(e.reject_reason(), &h.bhs).await,
                }
            }
            InitiatorPdu::Logout(l) => {
                self.discard(reader, &h).await?;
                lock(&self.window).admit_transient(l.cmdsn, l.immediate);
                // 0: close session, 1: close connection (the same for us: one connection per
                // session); 2: remove for recovery, which ERL 0 does not support. Closing a
                // connection names it by CID: another CID is "CID not found" (response 1),
                // and this connection carries on (RFC 7143 §11.15.1).
                let response = match l.reason {
                    2 => 2,
                    1 if l.cid != self.cid => 1,
                    _ => 0,
                };
                let bhs = pdu::logout_response(l.itt, response, self.seq());
                self.send(bhs, Bytes::new(), Numbering::Status).await;
                info!(reason = l.reason, cid = l.cid, response, "logout");
                if response == 1 {
                    return Ok(Flow::Continue);
                }
                return Ok(Flow::Close);
            }
            InitiatorPdu::Snack(_) => {
                self.discard(reader, &h).await?;
                // SNACK needs ErrorRecoveryLevel >= 1; we negotiate 0.
                self.reject(RejectReason::ProtocolError, &h.bhs).await;
            }
            InitiatorPdu::Login(_) => {
                self.discard(reader, &h).await?;
                self.reject(RejectReason::ProtocolError, &h.bhs).await;
            }
            _ if discovery => {
                // Discovery sessions carry only Text, NOP and Logout (RFC 7143 §4.3).
                self.discard(reader, &h).await?;
                self.reject(RejectReason::ProtocolError, &h.bhs).await;
            }
            InitiatorPdu::ScsiCommand(c) => self.on_command(reader, &h, c).await?,
            InitiatorPdu::DataOut(d) => self.on_data_out(reader, &h, d).await?,
            InitiatorPdu::TaskMgmt(t) => {
                self.discard(reader, &h).await?;
                self.on_task_mgmt(t).await;
            }
        }
        Ok(Flow::Continue)
    }

    async fn on_command(
        &mut self,
        reader: &mut PduReader<OwnedReadHalf>,
        h: &Header,
        c: ScsiCommand,
    ) -> Result<(), ConnError> {
        let (Some(session), Some(ctx)) = (self.session.clone(), self.ctx.clone()) else {
            return Ok(());
        };
        // A write still waiting for its Data-Out cannot have been answered, so its ITT is
        // not free: a command reusing it is rejected before its CmdSN counts (RFC 7143
        // §11.17.1), rather than dropping the waiting write and its CmdSN window slot.
        if self.pending.contains_key(&c.itt) {
            warn!(itt = c.itt.0, "ITT of a write awaiting Data-Out reused");
            self.discard(reader, h).await?;
            self.reject(RejectReason::TaskInProgress, &h.bhs).await;
            return Ok(());
        }
        let admission = lock(&self.window).admit(c.cmdsn, c.immediate);
        match admission {
            Admission::Accept => {}
            Admission::Ignore => {
                debug!(cmdsn = c.cmdsn.0, "CmdSN outside the window: ignored");
                self.discard(reader, h).await?;
                return Ok(());
            }
            Admission::TooManyImmediate => {
                self.discard(reader, h).await?;
                self.reject(RejectReason::ImmediateCommandReject, &h.bhs)
                    .await;
                return Ok(());
            }
        }
        let cmd = CommandInfo {
            itt: c.itt,
            lun: c.lun,
            expected_len: c.expected_len,
            read: c.read,
            write_residual: None,
        };
        let attr = match c.attr {
            TaskAttr::Untagged | TaskAttr::Simple => TaskAttribute::Simple,
            TaskAttr::Ordered => TaskAttribute::Ordered,
            TaskAttr::HeadOfQueue => TaskAttribute::HeadOfQueue,
            TaskAttr::Aca => {
                // NormACA is 0, so no ACA condition ever exists for an ACA task to run in.
                self.discard(reader, h).await?;
                let resp = match route::task_lu(self.shared, &session, c.lun) {
                    Some(lu) => lu.disk.sense_response(Sense::INVALID_MESSAGE_ERROR),
                    None => crate::scsi::Response::check(Sense::LUN_NOT_SUPPORTED),
                };
                let task = Task::new(c.lun, TaskAttribute::Simple);
                ctx.respond(&cmd, &task, resp, None).await;
                return Ok(());
            }
        };
        let task = match &self.runners {
            Some(r) => r.task(c.lun, attr),
            None => Arc::new(Task::new(c.lun, attr)),
        };
        if session.enter_task(c.itt, task.clone()).is_some() {
            warn!(itt = c.itt.0, "ITT reused while its task is still active");
        }
        let cdb = c.cdb.as_slice();
        if !task.is_enabled() && !c.write {
            self.discard(reader, h).await?;
            let job = Job {
                cmd,
                task,
                lu: None,
                cdb: c.cdb.clone(),
                // Replaced when it is routed.
                plan: Plan::Respond(crate::scsi::Response::check(Sense::INTERNAL_TARGET_FAILURE)),
                completion: route::Completion::Unrouted,
            };
            self.submit(job, Bytes::new());
            return Ok(());
        }
        let routed = route::route(self.shared, &session, c.lun, cdb);
        let imm = h.bhs.data_segment_len() as u32;
        let mut job = Job {
            cmd,
            task,
            lu: routed.lu,
            cdb: c.cdb.clone(),
            plan: routed.plan,
            completion: routed.completion,
        };
        // COMPARE AND WRITE and WRITE SAME name their exact Data-Out size in the CDB: any
        // other announced size contradicts the CDB, and a partial compare or pattern would be
        // wrong, so refuse it whole (libiscsi *.InvalidDataOutSize).
        let fixed = exec::fixed_size_sense(&job.plan);
        if let (Some(sense), Some(lu), Some(need)) =
            (fixed, job.lu.as_ref(), job.plan.data_out_len())
        {
            if c.expected_len != need || (need > 0 && !c.write) {
                self.discard(reader, h).await?;
                let resp = lu.disk.sense_response(sense);
                ctx.respond(&job.cmd, &job.task, resp, None).await;
                return Ok(());
            }
        }
        // Zero bytes (COMPARE AND WRITE of 0 blocks, WRITE SAME with NDOB): no Data-Out phase.
        let data_len = job.plan.data_out_len().filter(|&n| n > 0);
        let (Some(lu), Some(len)) = (job.lu.as_ref(), data_len) else {
            // No data-out phase: drop any data the initiator sent along.
            self.discard(reader, h).await?;
            self.submit(job, Bytes::new());
            return Ok(());
        };
        let mut need = len;
        let mut residual = pdu::Residual::of(c.expected_len, need);
        if c.expected_len < need || !c.write {
            let block = lu.disk.identity().block_size;
            let whole_blocks = c.write && c.expected_len % block == 0;
            if let (true, Plan::Write { len, .. }) = (whole_blocks, &mut job.plan) {
                // The initiator offers fewer whole blocks than the CDB names: write just
                // those and report the overflow (FCP-4 §9.4.2 option a, what libiscsi expects).
                residual = pdu::Residual::Overflow(need - c.expected_len);
                *len = c.expected_len;
                need = c.expected_len;
            } else {
                // A partial block cannot be written: refuse without touching the medium
                // (option b).
                self.discard(reader, h).await?;
                let resp = lu
                    .disk
                    .sense_response(Sense::INVALID_FIELD_IN_INFORMATION_UNIT);
                let residual = pdu::Residual::Overflow(need - c.expected_len.min(need));
                ctx.respond(&job.cmd, &job.task, resp, Some(residual)).await;
                return Ok(());
            }
        }
        job.cmd.write_residual = Some(residual);
        let mut transfer =
            match WriteTransfer::new(c.expected_len, need, imm, c.final_bit, self.limits) {
                Ok(t) => t,
                Err(e) => {
                    warn!("{e}");
                    self.discard(reader, h).await?;
                    self.reject(RejectReason::ProtocolError, &h.bhs).await;
                    session.remove_task(c.itt);
                    lock(&self.window).complete();
                    return Ok(());
                }
            };
        // Write buffers waiting for their Data-Out are what a peer could pile up: bound them
        // per session and push back with TASK SET FULL beyond that.
        let waiting: usize = self.pending.values().map(|p| p.buf.len()).sum();
        if waiting + need as usize > MAX_PENDING_WRITE_BYTES {
            self.discard(reader, h).await?;
            let full = crate::scsi::Response {
                status: crate::scsi::Status::TaskSetFull,
                ..crate::scsi::Response::good_empty()
            };
            ctx.respond(&job.cmd, &job.task, full, None).await;
            return Ok(());
        }
        let mut buf = crate::backend::buffer::take(need as usize);
        let place = transfer.place_immediate(imm);
        let dst = &mut buf[place.buffer_offset..place.buffer_offset + place.take];
        if !reader.read_data(dst, place.discard).await? {
            self.reject(RejectReason::DataDigestError, &h.bhs).await;
            return Err(ConnError::Protocol("data digest error"));
        }
        if transfer.is_complete() {
            // All of it came as immediate data (the usual small write): nothing to solicit,
            // so it skips the table of writes waiting for Data-Out.
            self.submit(job, buf.freeze());
            return Ok(());
        }
        let r2ts = transfer.next_r2ts(|| alloc_ttt(&mut self.next_ttt));
        self.pending
            .insert(c.itt, PendingWrite { job, transfer, buf });
        self.send_r2ts(c.itt, c.lun, &r2ts).await;
        self.maybe_start(c.itt);
        Ok(())
    }

    async fn send_r2ts(
        &self,
        itt: Itt,
        lun: crate::scsi::Lun,
        r2ts: &[crate::iscsi::transfer::R2tRequest],
    ) {
        for r in r2ts {
            let bhs = pdu::r2t(lun, itt, r.ttt, self.seq(), r.r2tsn, r.offset, r.len);
            self.send(bhs, Bytes::new(), Numbering::Current).await;
        }
    }

    fn maybe_start(&mut self, itt: Itt) {
        if !self
            .pending
            .get(&itt)
            .is_some_and(|p| p.transfer.is_complete())
        {
            return;
        }
        let Some(p) = self.pending.remove(&itt) else {
            return;
        };
        self.submit(p.job, p.buf.freeze());
    }

    async fn on_data_out(
        &mut self,
        reader: &mut PduReader<OwnedReadHalf>,
        h: &Header,
        d: pdu::DataOut,
    ) -> Result<(), ConnError> {
        let Some(ctx) = self.ctx.clone() else {
            return Ok(());
        };
        let len = h.bhs.data_segment_len() as u32;
        let Some(p) = self.pending.get_mut(&d.itt) else {
            // Data for a task that already ended (error answered early, or aborted).
            self.discard(reader, h).await?;
            return Ok(());
        };
        let place = match p.transfer.on_data_out(&d, len) {
            Ok(place) => place,
            Err(e) => {
                warn!(itt = d.itt.0, "data-out error: {e}");
                self.discard(reader, h).await?;
                let p = self.pending.remove(&d.itt).expect("present");
                // ERL 0 cannot recover a sequence error: end the command.
                let resp = exec::sense_response(
                    p.job.lu.as_deref(),
                    Sense::new(crate::scsi::SenseKey::AbortedCommand, 0x0C, 0x0D),
                );
                ctx.respond(&p.job.cmd, &p.job.task, resp, None).await;
                return Ok(());
            }
        };
        let dst = &mut p.buf[place.buffer_offset..place.buffer_offset + place.take];
        if !reader.read_data(dst, place.discard).await? {
            self.reject(RejectReason::DataDigestError, &h.bhs).await;
            return Err(ConnError::Protocol("data digest error"));
        }
        let lun = p.job.cmd.lun;
        let next_ttt = &mut self.next_ttt;
        let r2ts = p.transfer.next_r2ts(|| alloc_ttt(next_ttt));
        self.send_r2ts(d.itt, lun, &r2ts).await;
        self.maybe_start(d.itt);
        Ok(())
    }

    async fn on_task_mgmt(&mut self, t: TaskMgmt) {
        let Some(session) = self.session.clone() else {
            return;
        };
        if lock(&self.window).admit_transient(t.cmdsn, t.immediate) == Admission::Ignore {
            return;
        }
        let target = session.target.clone();
        let lu = route::task_lu(self.shared, &session, t.lun);
        let mut victims = Vec::new();
        let mut close_after = false;
        let response = match t.function {
            TmfFunction::AbortTask => {
                let found = session.abort_task(t.referenced_itt);
                self.drop_pending(|itt, _| itt == t.referenced_itt);
                match found {
                    Some(task) => {
                        victims.push((task, true));
                        TmfResponse::FunctionComplete
                    }
                    None => self.abort_absent_task(&t),
                }
            }
            TmfFunction::AbortTaskSet
            | TmfFunction::ClearTaskSet
            | TmfFunction::LogicalUnitReset
                if lu.is_none() =>
            {
                TmfResponse::LunDoesNotExist
            }
            // With a task set per I_T nexus (TST 001b, `scsi::task_set`), clearing the task
            // set aborts this nexus's tasks on the LU, as ABORT TASK SET does (SAM-5 §7.4).
            TmfFunction::AbortTaskSet | TmfFunction::ClearTaskSet => {
                victims = mark_own(session.abort_tasks_on(Some(t.lun)), true);
                self.drop_pending(|_, lun| lun == t.lun);
                TmfResponse::FunctionComplete
            }
            TmfFunction::LogicalUnitReset => {
                // The LU's tasks from every nexus, each by the LUN its host reaches it by.
                let reaching = lu
                    .as_ref()
                    .map(|lu| route::sessions_reaching(self.shared, lu))
                    .unwrap_or_default();
                for (s, lun) in &reaching {
                    victims.extend(mark_own(
                        s.abort_tasks_on(Some(*lun)),
                        s.nexus == session.nexus,
                    ));
                }
                self.drop_pending(|_, lun| lun == t.lun);
                if let Some(lu) = &lu {
                    lu.disk.reset(ResetKind::LogicalUnit);
                }
                TmfResponse::FunctionComplete
            }
            TmfFunction::TargetWarmReset | TmfFunction::TargetColdReset => {
                // Every logical unit of the target is reset, for every host, as a LOGICAL UNIT
                // RESET would (SAM-5 §7.12): its VVols are those bound at its PEs for any host,
                // and their tasks from sessions reaching them through other targets' PEs go too.
                let lus = target_lus(self.shared, &target);
                for s in self.shared.sessions.of_target(&target.name) {
                    victims.extend(mark_own(s.abort_tasks_on(None), s.nexus == session.nexus));
                }
                for lu in &lus {
                    for (s, lun) in route::sessions_reaching(self.shared, lu) {
                        if s.target.name != target.name {
                            victims.extend(mark_own(s.abort_tasks_on(Some(lun)), false));
                        }
                    }
                }
                self.drop_pending(|_, _| true);
                let kind = if t.function == TmfFunction::TargetColdReset {
                    close_after = true;
                    ResetKind::TargetCold
                } else {
                    ResetKind::TargetWarm
                };
                for lu in lus {
                    lu.disk.reset(kind);
                }
                TmfResponse::FunctionComplete
            }
            TmfFunction::TaskReassign => TmfResponse::ReassignmentNotSupported,
            TmfFunction::ClearAca | TmfFunction::Unknown(_) => TmfResponse::NotSupported,
        };
        info!(function = ?t.function, lun = %t.lun, ?response, aborted = victims.len(), "task management");
        let out = self.out.clone();
        let sessions = close_after.then(|| self.shared.sessions.of_target(&target.name));
        // Answer only once no aborted task can still write, and once this connection's own
        // victims have queued any answer they had begun (so ours does not overtake it): in its
        // own task, so the reader keeps serving the connection meanwhile.
        tokio::spawn(async move {
            for (v, own) in victims {
                v.quiesced().await;
                if own {
                    v.answer_queued().await;
                }
            }
            let bhs = pdu::tmf_response(t.itt, response, Seq::default());
            let _ = out
                .send(OutPdu::new(bhs, Bytes::new(), Numbering::Status))
                .await;
            for s in sessions.into_iter().flatten() {
                s.close();
            }
        });
    }

    /// ABORT TASK for a task not here (RFC 7143 §11.6.1): one that never arrived but whose
    /// CmdSN the window still awaits is counted as received and answered FUNCTION COMPLETE
    /// (b); one that already finished gets the configured answer (c, see
    /// [`AbortFinishedTask`]).
    fn abort_absent_task(&self, t: &TaskMgmt) -> TmfResponse {
        if t.refcmdsn.lt(t.cmdsn) && lock(&self.window).skip_missing(t.refcmdsn) {
            return TmfResponse::FunctionComplete;
        }
        match self.shared.iscsi.abort_finished_task {
            AbortFinishedTask::FunctionComplete => TmfResponse::FunctionComplete,
            AbortFinishedTask::TaskDoesNotExist => TmfResponse::TaskDoesNotExist,
        }
    }

    /// Forget writes still waiting for data that match; their slots in the window are freed.
    ///
    /// The task management answer does not wait for the Data-Out still owed on their R2Ts,
    /// although RFC 7143's standard multi-task abort semantics (§4.2.3.3, which TaskReporting
    /// = RFC3720 selects) have the target wait for every affected target transfer tag before
    /// answering ABORT TASK SET, CLEAR TASK SET or a reset. The Linux initiator stops sending
    /// Data-Out for a task it aborts, and with its default `FastAbort = Yes` for every task a
    /// LOGICAL UNIT RESET or TARGET WARM RESET covers, so a target that waited would never
    /// answer it and the initiator would escalate to a session reset. Data-Out that does
    /// arrive later for a forgotten write is read and discarded (`on_data_out`).
    fn drop_pending(&mut self, matches: impl Fn(Itt, crate::scsi::Lun) -> bool) {
        let Some(session) = &self.session else { return };
        let gone: Vec<Itt> = self
            .pending
            .iter()
            .filter(|(i, p)| matches(**i, p.job.cmd.lun))
            .map(|(i, _)| *i)
            .collect();
        for itt in gone {
            if let Some(p) = self.pending.remove(&itt) {
                p.job.task.abort();
                session.remove_task(itt);
                lock(&self.window).complete();
            }
        }
    }

    /// The session is over: abort what is left and release the nexus.
    fn teardown(&mut self) {
        let Some(session) = &self.session else { return };
        self.pending.clear();
        session.abort_tasks_on(None);
        self.shared.sessions.remove(session);
        for lu in session_lus(self.shared, session) {
            lu.disk.nexus_removed(session.nexus);
        }
        let _ = session.closed.send(true);
        info!("session closed");
    }
}
