//! The target side of the login phase of one connection (RFC 7143 §6.3, §11.12-11.13):
//! stages and transitions, Continue handling both ways, identity checks, authentication and
//! operational negotiation, status codes. Pure: one Login Request in, one Login Response out.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use super::chap::ChapExchange;
use super::negotiate::Negotiator;
use super::params::{NegotiatedParams, SessionType, DEFAULT_MAX_RECV_DSL};
use super::pdu::{login_response, Bhs, LoginRequest, Seq, SerialNumber, Stage};
use super::policy::{ChapCredentials, LoginPolicy, TargetEntry};
use super::text::{self, KeyValue, TextAccumulator};

/// Login status (class, detail) codes (RFC 7143 §11.13.5).
pub mod status {
    pub const SUCCESS: (u8, u8) = (0x00, 0x00);
    pub const INITIATOR_ERROR: (u8, u8) = (0x02, 0x00);
    pub const AUTH_FAILURE: (u8, u8) = (0x02, 0x01);
    pub const AUTHORIZATION_FAILURE: (u8, u8) = (0x02, 0x02);
    pub const NOT_FOUND: (u8, u8) = (0x02, 0x03);
    pub const UNSUPPORTED_VERSION: (u8, u8) = (0x02, 0x05);
    pub const TOO_MANY_CONNECTIONS: (u8, u8) = (0x02, 0x06);
    pub const MISSING_PARAMETER: (u8, u8) = (0x02, 0x07);
    pub const SESSION_TYPE_UNSUPPORTED: (u8, u8) = (0x02, 0x09);
    pub const SESSION_DOES_NOT_EXIST: (u8, u8) = (0x02, 0x0A);
    pub const INVALID_DURING_LOGIN: (u8, u8) = (0x02, 0x0B);
    pub const TARGET_ERROR: (u8, u8) = (0x03, 0x00);
}

/// What a completed login hands to the session layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginResult {
    pub params: NegotiatedParams,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub cid: u16,
    /// The target logged into (None on discovery sessions).
    pub target: Option<String>,
    /// The CmdSN the session expects next (the login's CmdSN: login is immediate).
    pub expcmdsn: SerialNumber,
    /// The StatSN to put on the next response on this connection.
    pub statsn: SerialNumber,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginOutcome {
    /// Send the response and wait for the next Login Request.
    Continue,
    /// Send the response, then close the connection.
    Failed { class: u8, detail: u8 },
    /// Send the response; the connection is in full feature phase.
    Complete(Box<LoginResult>),
}

/// One Login Response to send and what it means.
#[derive(Debug, Clone)]
pub struct LoginStep {
    pub bhs: Bhs,
    pub data: Vec<u8>,
    pub outcome: LoginOutcome,
}

#[derive(Debug, Clone)]
enum Auth {
    NotStarted,
    Chap(Box<ChapExchange>),
    Done,
}

/// Who is logging in to what, fixed by the first request.
#[derive(Debug, Clone)]
struct SessionInfo {
    session_type: SessionType,
    initiator_name: String,
    initiator_alias: Option<String>,
    target: Option<TargetEntry>,
    tpgt: Option<u16>,
}

impl SessionInfo {
    fn creds(&self, policy: &LoginPolicy) -> (Option<ChapCredentials>, Option<ChapCredentials>) {
        match &self.target {
            // A control initiator proves credentials of its own: the target's are every
            // host's, and the control session may bind any VVol to any host.
            Some(t) => match policy.control_chap(&self.initiator_name) {
                Some(c) => (Some(c.clone()), t.mutual_chap.clone()),
                None => (t.chap.clone(), t.mutual_chap.clone()),
            },
            None => (
                policy.discovery_chap.clone(),
                policy.discovery_mutual_chap.clone(),
            ),
        }
    }
}

/// A response too long for one PDU: the remaining chunks and the flags of the last one.
#[derive(Debug)]
struct Outgoing {
    chunks: VecDeque<Vec<u8>>,
    transit: Option<Stage>,
}

/// Keys only meaningful during the security stage.
fn is_security_key(k: &str) -> bool {
    k == "AuthMethod" || k.starts_with("CHAP_")
}

/// Keys that name the login's parties; declared by the initiator in its first request.
fn is_identity_key(k: &str) -> bool {
    matches!(
        k,
        "InitiatorName" | "InitiatorAlias" | "TargetName" | "SessionType"
    )
}

type Status = (u8, u8);

pub struct LoginMachine {
    policy: Arc<LoginPolicy>,
    local_portal: SocketAddr,
    new_tsih: u16,
    ident: Option<([u8; 6], u16, u16)>,
    stage: Option<Stage>,
    finished: bool,
    statsn: SerialNumber,
    inbuf: TextAccumulator,
    out: Option<Outgoing>,
    neg: Negotiator,
    session: Option<SessionInfo>,
    auth: Auth,
    sent_first: bool,
    op_declared: bool,
    offers_outstanding: bool,
}

impl LoginMachine {
    pub fn new(policy: Arc<LoginPolicy>, local_portal: SocketAddr, new_tsih: u16) -> LoginMachine {
        let neg = Negotiator::new(policy.limits.clone());
        LoginMachine {
            policy,
            local_portal,
            new_tsih,
            ident: None,
            stage: None,
            finished: false,
            statsn: SerialNumber(0),
            inbuf: TextAccumulator::new(),
            out: None,
            neg,
            session: None,
            auth: Auth::NotStarted,
            sent_first: false,
            op_declared: false,
            offers_outstanding: false,
        }
    }

    /// Whether the login ended (failed or completed); further requests are refused.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Handle one Login Request with its (unpadded) data segment.
    pub fn on_request(&mut self, req: &LoginRequest, data: &[u8]) -> LoginStep {
        if self.ident.is_none() {
            self.statsn = req.expstatsn;
        }
        match self.handle(req, data) {
            Ok(step) => step,
            Err((st, reply)) => self.fail_with(req, st, &reply),
        }
    }

    /// Refuse the login with `class`/`detail` (e.g. 0x0206 when the caller finds the TSIH
    /// names a live session: we support one connection per session). Ends the login.
    pub fn fail(&mut self, req: &LoginRequest, class: u8, detail: u8) -> LoginStep {
        if self.ident.is_none() {
            self.statsn = req.expstatsn;
        }
        self.fail_with(req, (class, detail), &[])
    }

    fn fail_with(&mut self, req: &LoginRequest, st: Status, reply: &[KeyValue]) -> LoginStep {
        self.finished = true;
        self.out = None;
        let data = text::encode(reply);
        let csg = self.stage.map_or(req.csg & 3, |s| s as u8);
        let seq = self.next_seq(req);
        let bhs = login_response(req, false, false, csg, 0, 0, st, seq, data.len());
        LoginStep {
            bhs,
            data,
            outcome: LoginOutcome::Failed {
                class: st.0,
                detail: st.1,
            },
        }
    }

    fn next_seq(&mut self, req: &LoginRequest) -> Seq {
        let statsn = self.statsn;
        self.statsn = statsn.next();
        let window = self.policy.cmd_window.max(1);
        Seq {
            statsn: statsn.0,
            expcmdsn: req.cmdsn.0,
            maxcmdsn: req.cmdsn.0.wrapping_add(window - 1),
        }
    }

    fn handle(
        &mut self,
        req: &LoginRequest,
        data: &[u8],
    ) -> Result<LoginStep, (Status, Vec<KeyValue>)> {
        let bad = |st: Status| Err((st, Vec::new()));
        if self.finished {
            return bad(status::INVALID_DURING_LOGIN);
        }
        if req.version_min > 0 {
            return bad(status::UNSUPPORTED_VERSION);
        }
        match self.ident {
            None if req.tsih != 0 => return bad(status::SESSION_DOES_NOT_EXIST),
            None => self.ident = Some((req.isid, req.tsih, req.cid)),
            Some(id) if id != (req.isid, req.tsih, req.cid) => {
                return bad(status::INVALID_DURING_LOGIN)
            }
            Some(_) => {}
        }
        let csg = match Stage::from_code(req.csg) {
            Some(s) if s != Stage::FullFeature => s,
            _ => return bad(status::INVALID_DURING_LOGIN),
        };
        match self.stage {
            None => self.stage = Some(csg),
            Some(s) if s != csg => return bad(status::INVALID_DURING_LOGIN),
            Some(_) => {}
        }
        let nsg = if req.transit {
            match Stage::from_code(req.nsg) {
                Some(n) if n > csg && !req.cont => Some(n),
                _ => return bad(status::INVALID_DURING_LOGIN),
            }
        } else {
            None
        };
        if self.out.is_some() {
            if !data.is_empty() || req.cont {
                return bad(status::INVALID_DURING_LOGIN);
            }
            return Ok(self.send_next(req, csg));
        }
        let segment = match self.inbuf.push(data, req.cont) {
            Ok(Some(s)) => s,
            Ok(None) => return Ok(self.send(req, csg, Vec::new(), None)),
            Err(_) => return bad(status::INITIATOR_ERROR),
        };
        let pairs = text::parse(&segment).map_err(|_| (status::INITIATOR_ERROR, Vec::new()))?;
        if self.session.is_none() {
            let s = self.establish(&pairs).map_err(|st| (st, Vec::new()))?;
            self.neg.set_session_type(s.session_type);
            self.session = Some(s);
        }
        let (security, rest): (Vec<KeyValue>, Vec<KeyValue>) =
            pairs.into_iter().partition(|kv| is_security_key(&kv.key));
        let operational: Vec<KeyValue> = rest
            .into_iter()
            .filter(|kv| !is_identity_key(&kv.key))
            .collect();

        let mut reply = self.first_declarations();
        let mut transit = None;
        match csg {
            Stage::Security => {
                reply.extend(self.security(&security)?);
                reply.extend(self.neg.negotiate(&operational));
                if let Some(n) = nsg {
                    if self.may_leave_security()? {
                        transit = Some(self.after_security(n));
                    }
                }
            }
            _ => {
                if !security.is_empty() {
                    return bad(status::INVALID_DURING_LOGIN);
                }
                if matches!(self.auth, Auth::NotStarted) && self.auth_required() {
                    return bad(status::AUTH_FAILURE);
                }
                reply.extend(self.neg.negotiate(&operational));
                if self.offers_outstanding {
                    // The initiator had its round to answer our offers.
                    self.neg.drop_offers();
                    self.offers_outstanding = false;
                }
                if !self.op_declared {
                    self.op_declared = true;
                    reply.extend(self.neg.declarations());
                    let offers = self.neg.offers();
                    self.offers_outstanding = !offers.is_empty();
                    reply.extend(offers);
                }
                if !self.neg.offers_pending() {
                    transit = nsg;
                }
                if transit == Some(Stage::FullFeature) && !self.neg.within_limits() {
                    return bad(status::INITIATOR_ERROR);
                }
            }
        }
        Ok(self.send(req, csg, text::encode(&reply), transit))
    }

    /// Identify the parties from the first complete request.
    fn establish(&self, pairs: &[KeyValue]) -> Result<SessionInfo, Status> {
        let get = |k: &str| {
            pairs
                .iter()
                .find(|kv| kv.key == k)
                .map(|kv| kv.value.clone())
        };
        let initiator_name = get("InitiatorName")
            .filter(|n| !n.is_empty())
            .ok_or(status::MISSING_PARAMETER)?;
        let session_type = match get("SessionType") {
            None => SessionType::Normal,
            Some(v) => SessionType::parse(&v).ok_or(status::SESSION_TYPE_UNSUPPORTED)?,
        };
        let mut info = SessionInfo {
            session_type,
            initiator_name,
            initiator_alias: get("InitiatorAlias"),
            target: None,
            tpgt: None,
        };
        if session_type == SessionType::Normal {
            let name = get("TargetName").ok_or(status::MISSING_PARAMETER)?;
            let target = self.policy.target(&name).ok_or(status::NOT_FOUND)?;
            let portal = target
                .portal_for(self.local_portal)
                .ok_or(status::NOT_FOUND)?;
            if !target.allows(&info.initiator_name) {
                return Err(status::AUTHORIZATION_FAILURE);
            }
            info.tpgt = Some(portal.tpgt);
            info.target = Some(target.clone());
        }
        Ok(info)
    }

    /// TargetPortalGroupTag (and TargetAlias) in the first response of a normal session.
    fn first_declarations(&mut self) -> Vec<KeyValue> {
        if self.sent_first {
            return Vec::new();
        }
        self.sent_first = true;
        let mut out = Vec::new();
        if let Some(s) = &self.session {
            if let Some(tpgt) = s.tpgt {
                out.push(KeyValue::new("TargetPortalGroupTag", tpgt.to_string()));
            }
            if let Some(alias) = s.target.as_ref().and_then(|t| t.alias.clone()) {
                out.push(KeyValue::new("TargetAlias", alias));
            }
        }
        out
    }

    fn auth_required(&self) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| s.creds(&self.policy).0.is_some())
    }

    /// AuthMethod and CHAP_* keys of one security-stage request.
    fn security(&mut self, keys: &[KeyValue]) -> Result<Vec<KeyValue>, (Status, Vec<KeyValue>)> {
        let mut reply = Vec::new();
        let (creds, mutual) = match &self.session {
            Some(s) => s.creds(&self.policy),
            None => (None, None),
        };
        let chap_keys: Vec<KeyValue> = keys
            .iter()
            .filter(|kv| kv.key != "AuthMethod")
            .cloned()
            .collect();
        if let Some(am) = keys.iter().find(|kv| kv.key == "AuthMethod") {
            if !matches!(self.auth, Auth::NotStarted) {
                return Err((status::INVALID_DURING_LOGIN, Vec::new()));
            }
            let offered: Vec<&str> = am.value.split(',').collect();
            match creds {
                Some(c) if offered.contains(&"CHAP") => {
                    reply.push(KeyValue::new("AuthMethod", "CHAP"));
                    self.auth = Auth::Chap(Box::new(ChapExchange::new(c, mutual)));
                }
                None if offered.contains(&"None") => {
                    reply.push(KeyValue::new("AuthMethod", "None"));
                    self.auth = Auth::Done;
                }
                _ => {
                    reply.push(KeyValue::new("AuthMethod", "Reject"));
                    return Err((status::AUTH_FAILURE, reply));
                }
            }
        }
        if !chap_keys.is_empty() {
            let Auth::Chap(x) = &mut self.auth else {
                return Err((status::INVALID_DURING_LOGIN, Vec::new()));
            };
            match x.step(&chap_keys, &mut rand::thread_rng()) {
                Ok(r) => reply.extend(r),
                Err(e) => {
                    reply.extend(e.reply);
                    return Err((status::AUTH_FAILURE, reply));
                }
            }
            if x.is_done() {
                self.auth = Auth::Done;
            }
        }
        Ok(reply)
    }

    /// Whether the initiator's request to leave the security stage can be granted now.
    fn may_leave_security(&mut self) -> Result<bool, (Status, Vec<KeyValue>)> {
        match self.auth {
            Auth::Done => Ok(true),
            Auth::Chap(_) => Ok(false),
            Auth::NotStarted if self.auth_required() => Err((status::AUTH_FAILURE, Vec::new())),
            Auth::NotStarted => {
                self.auth = Auth::Done;
                Ok(true)
            }
        }
    }

    /// The stage a normal session goes to from security when the initiator asks for `next`.
    /// It passes through the operational stage even when the initiator asks to skip it:
    /// only there can we declare our MaxRecvDataSegmentLength and offer the keys our
    /// configuration needs (ImmediateData=No, smaller bursts), which would otherwise keep
    /// RFC defaults that may exceed it. The NSG of our answer names the stage we move to;
    /// FreeBSD's initiator, for one, follows a target that picks the operational stage. A
    /// discovery session has nothing to negotiate that matters and may skip it.
    fn after_security(&self, next: Stage) -> Stage {
        let normal = self.neg.session_type() == SessionType::Normal;
        if next == Stage::FullFeature && normal {
            Stage::Operational
        } else {
            next
        }
    }

    /// Send `data` (split into chunks of the login-phase 8192 limit) with the final flags.
    fn send(
        &mut self,
        req: &LoginRequest,
        csg: Stage,
        data: Vec<u8>,
        transit: Option<Stage>,
    ) -> LoginStep {
        self.out = Some(Outgoing {
            chunks: text::chunks(&data, DEFAULT_MAX_RECV_DSL as usize).into(),
            transit,
        });
        self.send_next(req, csg)
    }

    fn send_next(&mut self, req: &LoginRequest, csg: Stage) -> LoginStep {
        let Some(mut out) = self.out.take() else {
            return self.fail_with(req, status::TARGET_ERROR, &[]);
        };
        let chunk = out.chunks.pop_front().unwrap_or_default();
        let more = !out.chunks.is_empty();
        let transit = if more { None } else { out.transit };
        if more {
            self.out = Some(out);
        }
        let complete = transit == Some(Stage::FullFeature);
        let tsih = if complete { self.new_tsih } else { 0 };
        let seq = self.next_seq(req);
        let nsg = transit.map_or(0, |s| s as u8);
        let bhs = login_response(
            req,
            transit.is_some(),
            more,
            csg as u8,
            nsg,
            tsih,
            status::SUCCESS,
            seq,
            chunk.len(),
        );
        let outcome = match transit {
            Some(Stage::FullFeature) => {
                self.finished = true;
                LoginOutcome::Complete(Box::new(self.result(req)))
            }
            Some(next) => {
                self.stage = Some(next);
                LoginOutcome::Continue
            }
            None => LoginOutcome::Continue,
        };
        LoginStep {
            bhs,
            data: chunk,
            outcome,
        }
    }

    fn result(&self, req: &LoginRequest) -> LoginResult {
        let mut params = self.neg.finish();
        let target = self
            .session
            .as_ref()
            .and_then(|s| s.target.as_ref().map(|t| t.name.clone()));
        if let Some(s) = &self.session {
            params.initiator_name = s.initiator_name.clone();
            params.initiator_alias = s.initiator_alias.clone();
            params.target_name = target.clone();
        }
        LoginResult {
            params,
            isid: req.isid,
            tsih: self.new_tsih,
            cid: req.cid,
            target,
            expcmdsn: req.cmdsn,
            statsn: self.statsn,
        }
    }
}

#[cfg(test)]
#[path = "login_tests.rs"]
mod tests;
