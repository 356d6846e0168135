//! A small iSCSI initiator: one session, one command at a time. It is what the integration
//! tests drive the daemon with, what the standalone control service will bind through, and it
//! can do what stock initiators cannot: address every byte of a two-level LUN, and send
//! deliberately malformed PDUs.

use crate::iscsi::chap::{self, ChapAlgorithm};
use crate::iscsi::digest;
use crate::iscsi::pdu::{op, pad_len, Bhs, BHS_LEN};
use crate::iscsi::text::{self, KeyValue};
use crate::scsi::Lun;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum InitiatorError {
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("login failed: status {class:#04x}/{detail:#04x}")]
    LoginFailed { class: u8, detail: u8 },
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("target rejected the PDU (reason {0:#04x})")]
    Rejected(u8),
    #[error("the target failed mutual CHAP authentication")]
    MutualAuthFailed,
}

pub type Result<T> = std::result::Result<T, InitiatorError>;

fn proto(s: impl Into<String>) -> InitiatorError {
    InitiatorError::Protocol(s.into())
}

/// How to log in.
#[derive(Debug, Clone)]
pub struct LoginOptions {
    pub initiator_name: String,
    /// None: a discovery session.
    pub target_name: Option<String>,
    pub isid: [u8; 6],
    /// 0 for a new session; a live session's TSIH asks to add a connection to it.
    pub tsih: u16,
    /// (user, secret) for CHAP.
    pub chap: Option<(String, String)>,
    /// The CHAP_A list offered, most preferred first ("7,5": SHA-256, then MD5).
    pub chap_algorithms: String,
    /// (user, secret) the target must answer with: mutual CHAP. Needs `chap`.
    pub mutual_chap: Option<(String, String)>,
    pub header_digest: bool,
    pub data_digest: bool,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub max_recv_data_segment_length: u32,
}

impl LoginOptions {
    pub fn new(initiator_name: &str, target_name: Option<&str>) -> LoginOptions {
        LoginOptions {
            initiator_name: initiator_name.into(),
            target_name: target_name.map(Into::into),
            isid: [0x80, 0x12, 0x34, 0x56, 0x00, 0x01],
            tsih: 0,
            chap: None,
            chap_algorithms: "7,5".into(),
            mutual_chap: None,
            header_digest: false,
            data_digest: false,
            immediate_data: true,
            initial_r2t: false,
            max_recv_data_segment_length: 262_144,
        }
    }
}

/// The result of a SCSI command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiResult {
    pub status: u8,
    pub data: Vec<u8>,
    pub sense: Vec<u8>,
    /// Residual count and its kind: 0x02 underflow, 0x04 overflow (flags as on the wire).
    pub residual_flags: u8,
    pub residual: u32,
}

impl ScsiResult {
    /// (sense key, ASC, ASCQ) of the sense, in either format.
    pub fn sense_code(&self) -> Option<(u8, u8, u8)> {
        crate::scsi::sense::sense_code(&self.sense)
    }
}

/// What a normal session negotiated and where its sequence numbers stand, handed over with
/// the socket by [`Session::into_parts`] to code that runs its own (pipelined) engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionParams {
    /// The next CmdSN to send.
    pub cmdsn: u32,
    pub expstatsn: u32,
    pub maxcmdsn: u32,
    /// Largest data segment the target accepts in one PDU (its MaxRecvDataSegmentLength).
    pub target_max_recv: usize,
    pub first_burst: usize,
    pub max_burst: usize,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub header_digest: bool,
    pub data_digest: bool,
}

/// A received PDU.
#[derive(Debug, Clone)]
pub struct RxPdu {
    pub bhs: Bhs,
    pub data: Vec<u8>,
}

pub struct Session {
    stream: TcpStream,
    itt: u32,
    pub cmdsn: u32,
    pub expstatsn: u32,
    pub maxcmdsn: u32,
    header_digest: bool,
    data_digest: bool,
    /// What the target accepts per PDU (its declared MaxRecvDataSegmentLength).
    target_max_recv: usize,
    first_burst: usize,
    max_burst: usize,
    immediate_data: bool,
    initial_r2t: bool,
    pub negotiated: Vec<KeyValue>,
    /// TargetPortalGroupTag the target declared during login (normal sessions).
    pub target_portal_group_tag: Option<u16>,
    /// The session's TSIH, from the login's final response.
    pub tsih: u16,
}

impl Session {
    /// Connect and log in.
    pub async fn login(addr: SocketAddr, opts: &LoginOptions) -> Result<Session> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut s = Session {
            stream,
            itt: 1,
            cmdsn: 1,
            expstatsn: 0,
            maxcmdsn: 1,
            header_digest: false,
            data_digest: false,
            target_max_recv: 8192,
            first_burst: 65536,
            max_burst: 262_144,
            immediate_data: false,
            initial_r2t: true,
            negotiated: Vec::new(),
            target_portal_group_tag: None,
            tsih: 0,
        };
        s.do_login(opts).await?;
        Ok(s)
    }

    /// Give up the session's socket and what was negotiated, for an engine that keeps many
    /// commands in flight. Nothing may be outstanding (this initiator never leaves any).
    pub fn into_parts(self) -> (TcpStream, SessionParams) {
        let params = SessionParams {
            cmdsn: self.cmdsn,
            expstatsn: self.expstatsn,
            maxcmdsn: self.maxcmdsn,
            target_max_recv: self.target_max_recv,
            first_burst: self.first_burst,
            max_burst: self.max_burst,
            immediate_data: self.immediate_data,
            initial_r2t: self.initial_r2t,
            header_digest: self.header_digest,
            data_digest: self.data_digest,
        };
        (self.stream, params)
    }

    fn next_itt(&mut self) -> u32 {
        self.itt = self.itt.wrapping_add(1);
        if self.itt == 0xFFFF_FFFF {
            self.itt = 1;
        }
        self.itt
    }

    async fn login_exchange(
        &mut self,
        opts: &LoginOptions,
        csg: u8,
        nsg: u8,
        transit: bool,
        keys: &[KeyValue],
    ) -> Result<(Bhs, Vec<KeyValue>)> {
        let mut b = Bhs::new(op::LOGIN_REQUEST | 0x40);
        b.0[1] = (csg << 2) | if transit { 0x80 | nsg } else { 0 };
        b.0[8..14].copy_from_slice(&opts.isid);
        b.0[14..16].copy_from_slice(&opts.tsih.to_be_bytes());
        b.set_u32(16, self.itt);
        b.set_u32(24, self.cmdsn);
        b.set_u32(28, self.expstatsn);
        let data = text::encode(keys);
        self.send_raw_pdu(b, &data, false, false).await?;
        let rx = self.recv_pdu_with(false, false).await?;
        if rx.bhs.opcode() != op::LOGIN_RESPONSE {
            return Err(proto(format!(
                "expected a login response, got {:#x}",
                rx.bhs.opcode()
            )));
        }
        let (class, detail) = (rx.bhs.0[36], rx.bhs.0[37]);
        if class != 0 {
            return Err(InitiatorError::LoginFailed { class, detail });
        }
        self.expstatsn = rx.bhs.u32_at(24).wrapping_add(1);
        self.maxcmdsn = rx.bhs.u32_at(32);
        let kv = text::parse(&rx.data).map_err(|e| proto(e.to_string()))?;
        if let Some(tag) = get(&kv, "TargetPortalGroupTag").and_then(|v| v.parse().ok()) {
            self.target_portal_group_tag = Some(tag);
        }
        Ok((rx.bhs, kv))
    }

    async fn do_login(&mut self, opts: &LoginOptions) -> Result<()> {
        let mut first = vec![KeyValue::new("InitiatorName", &opts.initiator_name)];
        match &opts.target_name {
            Some(t) => {
                first.push(KeyValue::new("SessionType", "Normal"));
                first.push(KeyValue::new("TargetName", t));
            }
            None => first.push(KeyValue::new("SessionType", "Discovery")),
        }
        if let Some((user, secret)) = &opts.chap {
            first.push(KeyValue::new("AuthMethod", "CHAP,None"));
            let (_, kv) = self.login_exchange(opts, 0, 0, false, &first).await?;
            if get(&kv, "AuthMethod") != Some("CHAP") {
                return Err(proto("target did not choose CHAP"));
            }
            let (_, kv) = self
                .login_exchange(
                    opts,
                    0,
                    0,
                    false,
                    &[KeyValue::new("CHAP_A", &opts.chap_algorithms)],
                )
                .await?;
            let alg = get(&kv, "CHAP_A")
                .and_then(|a| a.parse().ok())
                .and_then(ChapAlgorithm::from_code)
                .ok_or_else(|| proto("no CHAP_A"))?;
            let id: u8 = get(&kv, "CHAP_I")
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| proto("no CHAP_I"))?;
            let challenge = chap::decode_binary(get(&kv, "CHAP_C").unwrap_or(""))
                .map_err(|e| proto(e.to_string()))?;
            let response = chap::chap_response(alg, id, secret.as_bytes(), &challenge);
            let mut keys = vec![
                KeyValue::new("CHAP_N", user),
                KeyValue::new("CHAP_R", chap::encode_hex(&response)),
            ];
            // Mutual CHAP: our own identifier and challenge for the target to answer.
            let mut our_challenge = vec![0u8; alg.challenge_len()];
            let our_id: u8 = rand::random();
            if opts.mutual_chap.is_some() {
                rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut our_challenge);
                keys.push(KeyValue::new("CHAP_I", our_id.to_string()));
                keys.push(KeyValue::new("CHAP_C", chap::encode_hex(&our_challenge)));
            }
            let (_, kv) = self.login_exchange(opts, 0, 1, true, &keys).await?;
            if let Some((muser, msecret)) = &opts.mutual_chap {
                let name = get(&kv, "CHAP_N").ok_or_else(|| proto("target sent no CHAP_N"))?;
                let r = chap::decode_binary(get(&kv, "CHAP_R").unwrap_or(""))
                    .map_err(|e| proto(format!("target CHAP_R: {e}")))?;
                let want = chap::chap_response(alg, our_id, msecret.as_bytes(), &our_challenge);
                if name != muser || !chap::ct_eq(&r, &want) {
                    return Err(InitiatorError::MutualAuthFailed);
                }
            }
        } else {
            first.push(KeyValue::new("AuthMethod", "None"));
            let (bhs, _) = self.login_exchange(opts, 0, 1, true, &first).await?;
            if bhs.0[1] & 0x80 == 0 {
                return Err(proto("target did not leave the security stage"));
            }
        }
        let yes_no = |b: bool| if b { "Yes" } else { "No" };
        let digest = |b: bool| if b { "CRC32C" } else { "None" };
        let mut ops = vec![
            KeyValue::new("HeaderDigest", digest(opts.header_digest)),
            KeyValue::new("DataDigest", digest(opts.data_digest)),
            KeyValue::new(
                "MaxRecvDataSegmentLength",
                opts.max_recv_data_segment_length.to_string(),
            ),
        ];
        if opts.target_name.is_some() {
            ops.extend([
                KeyValue::new("InitialR2T", yes_no(opts.initial_r2t)),
                KeyValue::new("ImmediateData", yes_no(opts.immediate_data)),
                KeyValue::new("MaxBurstLength", "1048576"),
                KeyValue::new("FirstBurstLength", "262144"),
                KeyValue::new("MaxOutstandingR2T", "1"),
                KeyValue::new("ErrorRecoveryLevel", "0"),
            ]);
        }
        let (mut bhs, mut kv) = self.login_exchange(opts, 1, 3, true, &ops).await?;
        // A target may answer every key and still stay in the stage (T=0) until we have seen
        // its answers (tgt does); ask again, with nothing left to negotiate.
        let mut rounds = 0;
        while bhs.0[1] & 0x80 == 0 && rounds < 4 {
            let (b, more) = self.login_exchange(opts, 1, 3, true, &[]).await?;
            bhs = b;
            kv.extend(more);
            rounds += 1;
        }
        if bhs.0[1] & 0x83 != 0x83 {
            return Err(proto("target did not enter full feature phase"));
        }
        let num = |k: &str, d: usize| get(&kv, k).and_then(|v| v.parse().ok()).unwrap_or(d);
        self.target_max_recv = num("MaxRecvDataSegmentLength", 8192);
        self.first_burst = num("FirstBurstLength", 65536);
        self.max_burst = num("MaxBurstLength", 262_144);
        self.immediate_data = get(&kv, "ImmediateData").map_or(opts.immediate_data, |v| v == "Yes");
        self.initial_r2t = get(&kv, "InitialR2T").map_or(opts.initial_r2t, |v| v == "Yes");
        self.header_digest = get(&kv, "HeaderDigest") == Some("CRC32C");
        self.data_digest = get(&kv, "DataDigest") == Some("CRC32C");
        self.tsih = u16::from_be_bytes([bhs.0[14], bhs.0[15]]);
        self.negotiated = kv;
        Ok(())
    }

    /// Send a PDU with this session's digests.
    pub async fn send_pdu(&mut self, bhs: Bhs, data: &[u8]) -> Result<()> {
        self.send_raw_pdu(bhs, data, self.header_digest, self.data_digest)
            .await
    }

    async fn send_raw_pdu(&mut self, mut bhs: Bhs, data: &[u8], hd: bool, dd: bool) -> Result<()> {
        bhs.set_data_segment_len(data.len());
        let mut v = Vec::with_capacity(BHS_LEN + 8 + data.len() + 3);
        v.extend_from_slice(&bhs.0);
        if hd {
            v.extend_from_slice(&digest::crc32c(&bhs.0).to_le_bytes());
        }
        v.extend_from_slice(data);
        v.resize(v.len() + pad_len(data.len()), 0);
        if dd && !data.is_empty() {
            v.extend_from_slice(&digest::data_digest([data]).to_le_bytes());
        }
        self.stream.write_all(&v).await?;
        Ok(())
    }

    /// Write raw bytes (malformed-input tests).
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    pub async fn recv_pdu(&mut self) -> Result<RxPdu> {
        self.recv_pdu_with(self.header_digest, self.data_digest)
            .await
    }

    async fn recv_pdu_with(&mut self, hd: bool, dd: bool) -> Result<RxPdu> {
        let mut bhs = Bhs::default();
        self.stream.read_exact(&mut bhs.0).await?;
        let mut skip = bhs.total_ahs_len() + if hd { 4 } else { 0 };
        let mut scratch = vec![0u8; skip];
        self.stream.read_exact(&mut scratch).await?;
        let len = bhs.data_segment_len();
        let mut data = vec![0u8; len];
        self.stream.read_exact(&mut data).await?;
        skip = pad_len(len) + if dd && len > 0 { 4 } else { 0 };
        let mut scratch = vec![0u8; skip];
        self.stream.read_exact(&mut scratch).await?;
        if bhs.opcode() != op::LOGIN_RESPONSE {
            self.maxcmdsn = bhs.u32_at(32);
        }
        Ok(RxPdu { bhs, data })
    }

    /// Wait for the PDU answering `itt`, answering target NOP-In pings meanwhile.
    async fn recv_for(&mut self, itt: u32) -> Result<RxPdu> {
        loop {
            let rx = self.recv_pdu().await?;
            match rx.bhs.opcode() {
                op::NOP_IN if rx.bhs.itt().0 == 0xFFFF_FFFF => {
                    let mut b = Bhs::new(op::NOP_OUT | 0x40);
                    b.0[1] = 0x80;
                    b.set_u32(16, 0xFFFF_FFFF);
                    b.set_u32(20, rx.bhs.u32_at(20));
                    b.set_u32(24, self.cmdsn);
                    b.set_u32(28, self.expstatsn);
                    self.send_pdu(b, &[]).await?;
                }
                op::REJECT => return Err(InitiatorError::Rejected(rx.bhs.0[2])),
                op::ASYNC_MESSAGE => {}
                _ if rx.bhs.itt().0 == itt => return Ok(rx),
                other => {
                    return Err(proto(format!(
                        "unexpected PDU {other:#x} while waiting for ITT {itt}"
                    )))
                }
            }
        }
    }

    fn note_status(&mut self, bhs: &Bhs) {
        self.expstatsn = bhs.u32_at(24).wrapping_add(1);
    }

    /// Run one SCSI command on `lun` (all 8 bytes are sent as given).
    pub async fn command(
        &mut self,
        lun: Lun,
        cdb: &[u8],
        data_out: Option<&[u8]>,
        expected_in: u32,
    ) -> Result<ScsiResult> {
        let itt = self.next_itt();
        let out = data_out.unwrap_or(&[]);
        let mut b = Bhs::new(op::SCSI_COMMAND);
        let immediate = if self.immediate_data {
            out.len().min(self.first_burst).min(self.target_max_recv)
        } else {
            0
        };
        // Unsolicited Data-Out is not used: everything beyond immediate data goes by R2T.
        b.0[1] = 0x80
            | 0x01
            | if data_out.is_some() { 0x20 } else { 0 }
            | if expected_in > 0 { 0x40 } else { 0 };
        b.set_lun(lun);
        b.set_u32(16, itt);
        b.set_u32(
            20,
            if data_out.is_some() {
                out.len() as u32
            } else {
                expected_in
            },
        );
        b.set_u32(24, self.cmdsn);
        b.set_u32(28, self.expstatsn);
        if cdb.len() > 16 {
            return Err(proto("CDBs longer than 16 bytes are not supported"));
        }
        b.0[32..32 + cdb.len()].copy_from_slice(cdb);
        self.cmdsn = self.cmdsn.wrapping_add(1);
        self.send_pdu(b, &out[..immediate]).await?;
        let mut data = Vec::new();
        loop {
            let rx = self.recv_for(itt).await?;
            match rx.bhs.opcode() {
                op::R2T => {
                    let ttt = rx.bhs.u32_at(20);
                    let offset = rx.bhs.u32_at(40) as usize;
                    let len = rx.bhs.u32_at(44) as usize;
                    if offset + len > out.len() {
                        return Err(proto("R2T beyond the data"));
                    }
                    let mut sent = 0;
                    let mut datasn = 0;
                    while sent < len {
                        let n = (len - sent).min(self.target_max_recv);
                        let mut d = Bhs::new(op::DATA_OUT);
                        if sent + n == len {
                            d.0[1] = 0x80;
                        }
                        d.set_lun(lun);
                        d.set_u32(16, itt);
                        d.set_u32(20, ttt);
                        d.set_u32(28, self.expstatsn);
                        d.set_u32(36, datasn);
                        d.set_u32(40, (offset + sent) as u32);
                        self.send_pdu(d, &out[offset + sent..offset + sent + n])
                            .await?;
                        sent += n;
                        datasn += 1;
                    }
                }
                op::DATA_IN => {
                    let offset = rx.bhs.u32_at(40) as usize;
                    if data.len() < offset + rx.data.len() {
                        data.resize(offset + rx.data.len(), 0);
                    }
                    data[offset..offset + rx.data.len()].copy_from_slice(&rx.data);
                    if rx.bhs.flags() & 0x01 != 0 {
                        self.note_status(&rx.bhs);
                        return Ok(ScsiResult {
                            status: rx.bhs.0[3],
                            data,
                            sense: Vec::new(),
                            residual_flags: rx.bhs.flags() & 0x06,
                            residual: rx.bhs.u32_at(44),
                        });
                    }
                }
                op::SCSI_RESPONSE => {
                    self.note_status(&rx.bhs);
                    let sense = if rx.data.len() >= 2 {
                        let n = u16::from_be_bytes([rx.data[0], rx.data[1]]) as usize;
                        rx.data[2..(2 + n).min(rx.data.len())].to_vec()
                    } else {
                        Vec::new()
                    };
                    return Ok(ScsiResult {
                        status: rx.bhs.0[3],
                        data,
                        sense,
                        residual_flags: rx.bhs.flags() & 0x06,
                        residual: rx.bhs.u32_at(44),
                    });
                }
                other => return Err(proto(format!("unexpected PDU {other:#x}"))),
            }
        }
    }

    /// Task management request; returns the response code.
    pub async fn task_mgmt(&mut self, function: u8, lun: Lun, referenced_itt: u32) -> Result<u8> {
        let refcmdsn = self.cmdsn;
        self.task_mgmt_ref(function, lun, referenced_itt, refcmdsn)
            .await
    }

    /// Like [`Session::task_mgmt`], naming the referenced command's CmdSN (ABORT TASK's
    /// RefCmdSN), which `task_mgmt` sets to the next CmdSN.
    pub async fn task_mgmt_ref(
        &mut self,
        function: u8,
        lun: Lun,
        referenced_itt: u32,
        refcmdsn: u32,
    ) -> Result<u8> {
        let itt = self.next_itt();
        let mut b = Bhs::new(op::TASK_MGMT_REQUEST | 0x40);
        b.0[1] = 0x80 | function;
        b.set_lun(lun);
        b.set_u32(16, itt);
        b.set_u32(20, referenced_itt);
        b.set_u32(24, self.cmdsn);
        b.set_u32(28, self.expstatsn);
        b.set_u32(32, refcmdsn);
        self.send_pdu(b, &[]).await?;
        let rx = self.recv_for(itt).await?;
        self.note_status(&rx.bhs);
        Ok(rx.bhs.0[2])
    }

    /// The header of a NOP-Out ping that asks for an answer: immediate, ITT `itt`, at this
    /// session's sequence numbers.
    pub fn ping_bhs(&self, itt: u32) -> Bhs {
        let mut b = Bhs::new(op::NOP_OUT | 0x40);
        b.0[1] = 0x80;
        b.set_u32(16, itt);
        b.set_u32(20, 0xFFFF_FFFF);
        b.set_u32(24, self.cmdsn);
        b.set_u32(28, self.expstatsn);
        b
    }

    /// NOP-Out ping with data; returns the echoed data.
    pub async fn nop(&mut self, data: &[u8]) -> Result<Vec<u8>> {
        let itt = self.next_itt();
        let b = self.ping_bhs(itt);
        self.send_pdu(b, data).await?;
        let rx = self.recv_for(itt).await?;
        self.note_status(&rx.bhs);
        Ok(rx.data)
    }

    /// SendTargets text request; returns the key/value pairs of the whole answer.
    pub async fn send_targets(&mut self, query: &str) -> Result<Vec<KeyValue>> {
        let itt = self.next_itt();
        let mut ttt = 0xFFFF_FFFF;
        let mut payload = text::encode(&[KeyValue::new("SendTargets", query)]);
        let mut all = Vec::new();
        loop {
            let mut b = Bhs::new(op::TEXT_REQUEST | 0x40);
            b.0[1] = 0x80;
            b.set_u32(16, itt);
            b.set_u32(20, ttt);
            b.set_u32(24, self.cmdsn);
            b.set_u32(28, self.expstatsn);
            self.send_pdu(b, &payload).await?;
            let rx = self.recv_for(itt).await?;
            self.note_status(&rx.bhs);
            all.extend_from_slice(&rx.data);
            if rx.bhs.flags() & 0x40 == 0 {
                break;
            }
            ttt = rx.bhs.u32_at(20);
            payload.clear();
        }
        parse_send_targets(&all)
    }

    /// Log out (close the session) and wait for the answer.
    pub async fn logout(mut self) -> Result<u8> {
        let itt = self.next_itt();
        let mut b = Bhs::new(op::LOGOUT_REQUEST | 0x40);
        b.0[1] = 0x80;
        b.set_u32(16, itt);
        b.set_u32(24, self.cmdsn);
        b.set_u32(28, self.expstatsn);
        self.send_pdu(b, &[]).await?;
        let rx = self.recv_for(itt).await?;
        Ok(rx.bhs.0[2])
    }
}

/// A SendTargets answer repeats TargetName and TargetAddress (RFC 7143 Appendix C), which
/// the negotiation parser rightly refuses: split it leniently instead.
fn parse_send_targets(data: &[u8]) -> Result<Vec<KeyValue>> {
    data.split(|&b| b == 0)
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let kv = std::str::from_utf8(kv).map_err(|_| proto("SendTargets: not UTF-8"))?;
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| proto(format!("SendTargets: '{kv}' is not key=value")))?;
            Ok(KeyValue::new(k, v))
        })
        .collect()
}

fn get<'a>(kv: &'a [KeyValue], key: &str) -> Option<&'a str> {
    kv.iter().find(|k| k.key == key).map(|k| k.value.as_str())
}
