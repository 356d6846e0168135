//! `vvold control`: the control service standalone, as a VASA provider on a management host.
//! It owns no data: lifecycle requests are forwarded to the array's own API, and every bind,
//! unbind and binding listing travels in-band, as vendor-specific SCSI commands sent to the
//! array's Protocol Endpoints over this service's own (CHAP-authenticated) iSCSI session.

use super::api::{self, Ops, OpsFuture};
use super::error::ApiError;
use super::model::*;
use crate::initiator::{LoginOptions, ScsiResult, Session};
use crate::vvol::address::pe_lun;
use crate::vvol::binding::Binding;
use crate::vvol::catalog::IoLimits;
use crate::vvol::inband::{self, InbandRequest, ReportError};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::timeout;
use tracing::{info, warn};
use uuid::Uuid;

/// How long an in-band login may take.
const INBAND_LOGIN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long an in-band command may take: an unbind waits up to a minute for the binding's
/// commands in flight (the engine's drain deadline), so a little more than that.
const INBAND_COMMAND_TIMEOUT: Duration = Duration::from_secs(75);

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The array's target: iscsi://[USER%SECRET@]HOST:PORT/IQN (CHAP credentials optional).
    #[arg(long)]
    pub target: String,
    /// The array's control API: http://HOST:PORT.
    #[arg(long)]
    pub array: String,
    /// Where this service's own API listens.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: SocketAddr,
    /// Initiator name of the in-band session (must be one of the array's control initiators).
    #[arg(long, default_value = "iqn.2026-11.io.vvold:control")]
    pub initiator_name: String,
    /// Bearer token of the array's API.
    #[arg(long, env = "VVOLD_ARRAY_TOKEN", hide_env_values = true)]
    pub array_token: Option<String>,
    /// Bearer token this service's API requires (mandatory beyond loopback).
    #[arg(long, env = "VVOLD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// A parsed `iscsi://[user%secret@]host:port/iqn` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetUrl {
    pub addr: SocketAddr,
    pub iqn: String,
    pub chap: Option<(String, String)>,
}

impl TargetUrl {
    pub fn parse(s: &str) -> Result<TargetUrl, String> {
        let rest = s
            .strip_prefix("iscsi://")
            .ok_or("the target URL must start with iscsi://")?;
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((a, r)) => (Some(a), r),
            None => (None, rest),
        };
        let (hostport, iqn) = rest
            .split_once('/')
            .ok_or("the target URL needs /IQN after HOST:PORT")?;
        let iqn = iqn.trim_end_matches('/');
        if !crate::config::valid_iscsi_name(iqn) {
            return Err(format!("'{iqn}' is not an iSCSI name"));
        }
        let addr = hostport
            .parse()
            .map_err(|_| format!("'{hostport}' is not HOST:PORT (an IP address)"))?;
        let chap = match auth {
            None => None,
            Some(a) => {
                let (u, p) = a.split_once('%').ok_or("credentials are USER%SECRET")?;
                Some((u.to_string(), p.to_string()))
            }
        };
        Ok(TargetUrl {
            addr,
            iqn: iqn.to_string(),
            chap,
        })
    }
}

pub struct Standalone {
    array: String,
    array_token: Option<String>,
    agent: ureq::Agent,
    target: TargetUrl,
    initiator_name: String,
    session: tokio::sync::Mutex<Option<Session>>,
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError::Unavailable(e.to_string())
}

/// What an in-band command's CHECK CONDITION means to an API client.
fn sense_error(r: &ScsiResult) -> ApiError {
    match r.sense_code() {
        Some((0x5, 0x20, 0x02)) => ApiError::Unavailable("the array refused in-band binding: this service's initiator is not a control initiator".into()),
        Some((0x5, 0x26, _)) => ApiError::NotFound("no such VVol or binding on the array".into()),
        Some((0x2, 0x04, 0x07)) => ApiError::Conflict("the binding is being unbound".into()),
        Some((0x5, 0x55, 0x11)) => ApiError::InsufficientStorage("no secondary ids left on the PE".into()),
        Some((0x5, 0x20, 0x0D)) => ApiError::NotFound("no such Protocol Endpoint".into()),
        Some((k, a, q)) => ApiError::Internal(format!("in-band command failed: sense {k:X}h/{a:02X}h/{q:02X}h")),
        None => ApiError::Internal(format!("in-band command failed with status {:#04x}", r.status)),
    }
}

impl Standalone {
    pub fn new(args: &Args) -> Result<Standalone, String> {
        Ok(Standalone {
            array: args.array.trim_end_matches('/').to_string(),
            array_token: args.array_token.clone(),
            // No pooled connections: the array closes idle ones after its header timeout, and
            // a POST sent on one it has just closed would fail instead of being retried.
            agent: ureq::AgentBuilder::new()
                .timeout(std::time::Duration::from_secs(120))
                .max_idle_connections(0)
                .build(),
            target: TargetUrl::parse(&args.target)?,
            initiator_name: args.initiator_name.clone(),
            session: tokio::sync::Mutex::new(None),
        })
    }

    /// Forward one API call to the array.
    async fn http<T: DeserializeOwned + Send + 'static>(
        &self,
        method: &'static str,
        path: String,
        body: Option<serde_json::Value>,
    ) -> Result<T, ApiError> {
        let mut req = self.agent.request(method, &format!("{}{path}", self.array));
        if let Some(t) = &self.array_token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        tokio::task::spawn_blocking(move || {
            let resp = match body {
                Some(b) => req.send_json(b),
                None => req.call(),
            };
            match resp {
                Ok(r) if r.status() == 204 => {
                    serde_json::from_str("null").map_err(|e| ApiError::Internal(e.to_string()))
                }
                Ok(r) => r.into_json().map_err(unavailable),
                Err(ureq::Error::Status(code, r)) => {
                    let msg = r
                        .into_json::<ErrorBody>()
                        .map(|e| e.error)
                        .unwrap_or_default();
                    Err(ApiError::from_status(code, msg))
                }
                Err(e) => Err(unavailable(format!("array API unreachable: {e}"))),
            }
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
    }

    /// Run one in-band command on PE `pe`, logging in (again) when needed. Both steps are
    /// bounded, so a target that stopped answering (power lost, network gone) cannot hold the
    /// session, and every binding call queued behind it, for ever.
    async fn scsi(
        &self,
        pe: u16,
        cdb: &[u8],
        data_out: Option<&[u8]>,
        expected_in: u32,
    ) -> Result<ScsiResult, ApiError> {
        let mut guard = self.session.lock().await;
        for attempt in 0..2 {
            if guard.is_none() {
                let mut opts = LoginOptions::new(&self.initiator_name, Some(&self.target.iqn));
                opts.chap = self.target.chap.clone();
                let s = timeout(
                    INBAND_LOGIN_TIMEOUT,
                    Session::login(self.target.addr, &opts),
                )
                .await
                .map_err(|_| {
                    unavailable(format!(
                        "in-band login to {}: no answer in {} s",
                        self.target.addr,
                        INBAND_LOGIN_TIMEOUT.as_secs()
                    ))
                })?
                .map_err(|e| unavailable(format!("in-band login to {}: {e}", self.target.addr)))?;
                info!(target = %self.target.iqn, "in-band session established");
                *guard = Some(s);
            }
            let s = guard.as_mut().expect("logged in");
            let answer = timeout(
                INBAND_COMMAND_TIMEOUT,
                s.command(pe_lun(pe), cdb, data_out, expected_in),
            )
            .await;
            let Ok(answer) = answer else {
                // Not retried: the command may have taken effect (an unbind retried would
                // then report "not bound"), so its caller must look before trying again.
                warn!("in-band command unanswered; dropping the session");
                *guard = None;
                return Err(unavailable(format!(
                    "the array did not answer an in-band command in {} s; its outcome is unknown",
                    INBAND_COMMAND_TIMEOUT.as_secs()
                )));
            };
            match answer {
                // A unit attention (power-on, bindings changed) is not an answer: retry once.
                Ok(r)
                    if r.status == 2
                        && r.sense_code().is_some_and(|c| c.0 == 0x6)
                        && attempt == 0 =>
                {
                    continue
                }
                Ok(r) => return Ok(r),
                Err(e) => {
                    warn!("in-band session lost: {e}");
                    *guard = None;
                    if attempt == 1 {
                        return Err(unavailable(e));
                    }
                }
            }
        }
        Err(ApiError::Unavailable(
            "in-band command could not be delivered".into(),
        ))
    }

    async fn send(&self, pe: u16, req: &InbandRequest) -> Result<(), ApiError> {
        let (cdb, params) = inband::encode_request(req);
        let r = self.scsi(pe, &cdb, Some(&params), 0).await?;
        if r.status != 0 {
            return Err(sense_error(&r));
        }
        Ok(())
    }

    async fn report(&self, pe: u16) -> Result<Vec<Binding>, ApiError> {
        let mut alloc = 4096u32;
        loop {
            let r = self
                .scsi(pe, &inband::report_cdb(alloc), None, alloc)
                .await?;
            if r.status != 0 {
                return Err(sense_error(&r));
            }
            match inband::decode_report(&r.data) {
                Ok(v) => return Ok(v),
                Err(ReportError::Truncated { needed }) if (needed as u32) > alloc => {
                    alloc = needed as u32
                }
                Err(e) => return Err(ApiError::Internal(format!("bad REPORT BINDINGS data: {e}"))),
            }
        }
    }

    async fn pe_list(&self) -> Result<Vec<PeInfo>, ApiError> {
        let pes: Vec<PeInfo> = self.http("GET", "/api/v1/pes".into(), None).await?;
        Ok(pes
            .into_iter()
            .filter(|p| p.target.eq_ignore_ascii_case(&self.target.iqn))
            .collect())
    }

    async fn all_bindings(&self, pes: &[PeInfo]) -> Result<Vec<BindingInfo>, ApiError> {
        let mut out = Vec::new();
        for p in pes {
            for b in self.report(p.lun).await? {
                out.push(info(p, &b));
            }
        }
        Ok(out)
    }
}

fn info(pe: &PeInfo, b: &Binding) -> BindingInfo {
    BindingInfo::new(b, &pe.target, &pe.naa)
}

fn json(v: impl serde::Serialize) -> Option<serde_json::Value> {
    serde_json::to_value(v).ok()
}

impl Ops for Standalone {
    fn containers(&self) -> OpsFuture<'_, Vec<ContainerInfo>> {
        Box::pin(self.http("GET", "/api/v1/containers".into(), None))
    }

    fn pes(&self) -> OpsFuture<'_, Vec<PeInfo>> {
        Box::pin(self.pe_list())
    }

    fn vvols(&self, container: Option<String>) -> OpsFuture<'_, Vec<VvolInfo>> {
        let path = match container {
            Some(c) => format!("/api/v1/vvols?container={c}"),
            None => "/api/v1/vvols".into(),
        };
        Box::pin(self.http("GET", path, None))
    }

    fn vvol(&self, id: Uuid) -> OpsFuture<'_, VvolInfo> {
        Box::pin(self.http("GET", format!("/api/v1/vvols/{id}"), None))
    }

    fn create_vvol(&self, req: CreateVvol) -> OpsFuture<'_, VvolInfo> {
        Box::pin(self.http("POST", "/api/v1/vvols".into(), json(req)))
    }

    fn delete_vvol(&self, id: Uuid) -> OpsFuture<'_, ()> {
        Box::pin(self.http("DELETE", format!("/api/v1/vvols/{id}"), None))
    }

    fn resize_vvol(&self, id: Uuid, size: u64) -> OpsFuture<'_, VvolInfo> {
        Box::pin(self.http(
            "POST",
            format!("/api/v1/vvols/{id}/resize"),
            json(Resize {
                size: Size::Bytes(size),
            }),
        ))
    }

    fn set_metadata(&self, id: Uuid, kv: BTreeMap<String, String>) -> OpsFuture<'_, VvolInfo> {
        Box::pin(self.http("PUT", format!("/api/v1/vvols/{id}/metadata"), json(kv)))
    }

    fn set_limits(&self, id: Uuid, limits: IoLimits) -> OpsFuture<'_, VvolInfo> {
        Box::pin(self.http("PUT", format!("/api/v1/vvols/{id}/limits"), json(limits)))
    }

    fn qos(&self) -> OpsFuture<'_, QosReport> {
        Box::pin(self.http("GET", "/api/v1/qos".into(), None))
    }

    fn set_lun_limits(
        &self,
        target: String,
        lun: u16,
        limits: IoLimits,
    ) -> OpsFuture<'_, LunLimits> {
        Box::pin(self.http(
            "PUT",
            format!("/api/v1/targets/{target}/luns/{lun}/limits"),
            json(limits),
        ))
    }

    fn bind(&self, req: BindRequest) -> OpsFuture<'_, BindingInfo> {
        Box::pin(async move {
            let pes = self.pe_list().await?;
            let (via, any_pe) = match req.pe {
                Some(p) => (
                    pes.iter()
                        .find(|x| x.lun == p)
                        .ok_or_else(|| ApiError::NotFound(format!("no PE {p}")))?,
                    false,
                ),
                None => (
                    pes.first()
                        .ok_or_else(|| ApiError::NotFound("the array has no PE".into()))?,
                    true,
                ),
            };
            let bind = InbandRequest::Bind {
                vvol: req.vvol,
                host: req.host.clone(),
                any_pe,
            };
            self.send(via.lun, &bind).await?;
            // The array chose the PE (ANY_PE): find the binding where it landed.
            let host = req.host.to_ascii_lowercase();
            self.all_bindings(&pes)
                .await?
                .into_iter()
                .find(|b| b.vvol == req.vvol && b.host == host)
                .ok_or_else(|| {
                    ApiError::Internal("bound, but REPORT BINDINGS does not show it".into())
                })
        })
    }

    fn unbind(&self, req: UnbindRequest) -> OpsFuture<'_, Vec<BindingInfo>> {
        Box::pin(async move {
            let pes = self.pe_list().await?;
            let host = req.host.to_ascii_lowercase();
            let mine: Vec<BindingInfo> = self
                .all_bindings(&pes)
                .await?
                .into_iter()
                .filter(|b| b.vvol == req.vvol && b.host == host)
                .collect();
            let Some(first) = mine.first() else {
                return Err(ApiError::NotFound(format!(
                    "VVol {} is not bound for {}",
                    req.vvol, req.host
                )));
            };
            self.send(
                first.pe_lun,
                &InbandRequest::Unbind {
                    vvol: req.vvol,
                    host: req.host.clone(),
                },
            )
            .await?;
            Ok(mine)
        })
    }

    fn unbind_all(&self, host: String) -> OpsFuture<'_, Vec<BindingInfo>> {
        Box::pin(async move {
            let pes = self.pe_list().await?;
            let lower = host.to_ascii_lowercase();
            let mine: Vec<BindingInfo> = self
                .all_bindings(&pes)
                .await?
                .into_iter()
                .filter(|b| b.host == lower)
                .collect();
            let via = pes
                .first()
                .ok_or_else(|| ApiError::NotFound("the array has no PE".into()))?;
            self.send(via.lun, &InbandRequest::UnbindAllForHost { host })
                .await?;
            Ok(mine)
        })
    }

    fn bindings(&self, host: Option<String>) -> OpsFuture<'_, Vec<BindingInfo>> {
        Box::pin(async move {
            let pes = self.pe_list().await?;
            let host = host.map(|h| h.to_ascii_lowercase());
            Ok(self
                .all_bindings(&pes)
                .await?
                .into_iter()
                .filter(|b| host.as_ref().is_none_or(|h| &b.host == h))
                .collect())
        })
    }
}

/// Entry point of `vvold control`.
pub fn main(args: Args) -> ExitCode {
    let svc = match Standalone::new(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vvold control: {e}");
            return ExitCode::from(2);
        }
    };
    if args.token.is_none() && !args.listen.ip().is_loopback() {
        eprintln!("vvold control: --token is required when --listen is not a loopback address");
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vvold control: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(args.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("vvold control: cannot listen on {}: {e}", args.listen);
                return ExitCode::FAILURE;
            }
        };
        info!("control API listening on {} (standalone, array {}, target {})", args.listen, args.array, args.target.split('@').next_back().unwrap_or(""));
        let app = api::router(Arc::new(svc), args.token.clone());
        let serve = super::serve::serve(listener, app, super::serve::Limits::default());
        tokio::select! {
            r = serve => if let Err(e) = r { eprintln!("vvold control: {e}"); return ExitCode::FAILURE; },
            _ = tokio::signal::ctrl_c() => {},
            _ = async { if let Ok(mut t) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) { t.recv().await; } } => {},
        }
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_urls() {
        let u =
            TargetUrl::parse("iscsi://ctl%secret12345678@127.0.0.1:3260/iqn.2026-11.io.vvold:lab")
                .unwrap();
        assert_eq!(u.chap, Some(("ctl".into(), "secret12345678".into())));
        assert_eq!(u.addr, "127.0.0.1:3260".parse().unwrap());
        assert_eq!(u.iqn, "iqn.2026-11.io.vvold:lab");
        assert!(TargetUrl::parse("http://x/iqn.2026-11.a:b").is_err());
        assert!(TargetUrl::parse("iscsi://127.0.0.1:3260").is_err());
        assert!(TargetUrl::parse("iscsi://127.0.0.1:3260/notaname").is_err());
    }
}
