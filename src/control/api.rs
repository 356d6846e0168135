//! The HTTP/JSON control API (VASA-provider role), served by `vvold` itself (embedded) and by
//! `vvold control` (standalone). Handlers only translate HTTP to [`Ops`] calls: the embedded
//! array and the standalone forwarder implement the same operations.

use super::error::ApiError;
use super::model::*;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use uuid::Uuid;

pub type OpsFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, ApiError>> + Send + 'a>>;

/// What the control API can do. Implemented by the embedded array and by the standalone
/// service that forwards lifecycle calls and binds in-band.
pub trait Ops: Send + Sync + 'static {
    fn containers(&self) -> OpsFuture<'_, Vec<ContainerInfo>>;
    fn pes(&self) -> OpsFuture<'_, Vec<PeInfo>>;
    fn vvols(&self, container: Option<String>) -> OpsFuture<'_, Vec<VvolInfo>>;
    fn vvol(&self, id: Uuid) -> OpsFuture<'_, VvolInfo>;
    fn create_vvol(&self, req: CreateVvol) -> OpsFuture<'_, VvolInfo>;
    fn delete_vvol(&self, id: Uuid) -> OpsFuture<'_, ()>;
    fn resize_vvol(&self, id: Uuid, size: u64) -> OpsFuture<'_, VvolInfo>;
    fn set_metadata(&self, id: Uuid, kv: BTreeMap<String, String>) -> OpsFuture<'_, VvolInfo>;
    fn set_limits(
        &self,
        id: Uuid,
        limits: crate::vvol::catalog::IoLimits,
    ) -> OpsFuture<'_, VvolInfo>;
    fn bind(&self, req: BindRequest) -> OpsFuture<'_, BindingInfo>;
    fn unbind(&self, req: UnbindRequest) -> OpsFuture<'_, Vec<BindingInfo>>;
    fn unbind_all(&self, host: String) -> OpsFuture<'_, Vec<BindingInfo>>;
    fn bindings(&self, host: Option<String>) -> OpsFuture<'_, Vec<BindingInfo>>;
    /// Per-volume and per-pool QoS telemetry.
    fn qos(&self) -> OpsFuture<'_, QosReport>;
    /// Change a normal LUN's limits live (kept across restarts).
    fn set_lun_limits(
        &self,
        target: String,
        lun: u16,
        limits: crate::vvol::catalog::IoLimits,
    ) -> OpsFuture<'_, LunLimits>;
}

#[derive(Clone)]
struct AppState {
    ops: Arc<dyn Ops>,
    token: Option<Arc<str>>,
}

/// The API router. With a token, every request must carry `Authorization: Bearer TOKEN`.
pub fn router(ops: Arc<dyn Ops>, token: Option<String>) -> Router {
    let state = AppState {
        ops,
        token: token.map(Into::into),
    };
    Router::new()
        .route("/api/v1/containers", get(containers))
        .route("/api/v1/pes", get(pes))
        .route("/api/v1/vvols", get(vvols).post(create_vvol))
        .route("/api/v1/vvols/:id", get(vvol).delete(delete_vvol))
        .route("/api/v1/vvols/:id/resize", post(resize_vvol))
        .route("/api/v1/vvols/:id/metadata", put(set_metadata))
        .route("/api/v1/vvols/:id/limits", put(set_limits))
        .route("/api/v1/bind", post(bind))
        .route("/api/v1/unbind", post(unbind))
        .route("/api/v1/unbind-all", post(unbind_all))
        .route("/api/v1/bindings", get(bindings))
        .route("/api/v1/qos", get(qos))
        .route(
            "/api/v1/targets/:target/luns/:lun/limits",
            put(set_lun_limits),
        )
        .route("/metrics", get(metrics))
        // After the routes: it applies to those already added. Without it axum answers 405
        // with an empty body, where every other refusal is `{"error": ...}`.
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            ApiError::MethodNotAllowed(format!("{method} is not allowed on this API path"))
        })
        .fallback(|| async { ApiError::NotFound("no such API path".into()) })
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

async fn authorize(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(token) = &st.token {
        let ok = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| crate::iscsi::chap::ct_eq(t.as_bytes(), token.as_bytes()));
        if !ok {
            return ApiError::Unauthorized.into_response();
        }
    }
    next.run(req).await
}

/// JSON bodies whose syntax or shape is wrong answer 400 with serde's message.
fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(v)| v)
        .map_err(|e| ApiError::BadRequest(e.body_text()))
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::BadRequest(format!("'{id}' is not a VVol id (UUID)")))
}

fn size(s: &Size) -> Result<u64, ApiError> {
    s.bytes().map_err(ApiError::Unprocessable)
}

#[derive(Deserialize)]
struct ContainerQuery {
    container: Option<String>,
}

#[derive(Deserialize)]
struct HostQuery {
    host: Option<String>,
}

async fn containers(State(st): State<AppState>) -> Result<Json<Vec<ContainerInfo>>, ApiError> {
    Ok(Json(st.ops.containers().await?))
}

async fn pes(State(st): State<AppState>) -> Result<Json<Vec<PeInfo>>, ApiError> {
    Ok(Json(st.ops.pes().await?))
}

async fn vvols(
    State(st): State<AppState>,
    Query(q): Query<ContainerQuery>,
) -> Result<Json<Vec<VvolInfo>>, ApiError> {
    Ok(Json(st.ops.vvols(q.container).await?))
}

async fn vvol(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<VvolInfo>, ApiError> {
    Ok(Json(st.ops.vvol(parse_id(&id)?).await?))
}

async fn create_vvol(
    State(st): State<AppState>,
    b: Result<Json<CreateVvol>, JsonRejection>,
) -> Result<(StatusCode, Json<VvolInfo>), ApiError> {
    let req = body(b)?;
    size(&req.size)?;
    Ok((StatusCode::CREATED, Json(st.ops.create_vvol(req).await?)))
}

async fn delete_vvol(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    st.ops.delete_vvol(parse_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn resize_vvol(
    State(st): State<AppState>,
    Path(id): Path<String>,
    b: Result<Json<Resize>, JsonRejection>,
) -> Result<Json<VvolInfo>, ApiError> {
    let id = parse_id(&id)?;
    let bytes = size(&body(b)?.size)?;
    Ok(Json(st.ops.resize_vvol(id, bytes).await?))
}

async fn set_metadata(
    State(st): State<AppState>,
    Path(id): Path<String>,
    b: Result<Json<BTreeMap<String, String>>, JsonRejection>,
) -> Result<Json<VvolInfo>, ApiError> {
    let id = parse_id(&id)?;
    Ok(Json(st.ops.set_metadata(id, body(b)?).await?))
}

async fn set_limits(
    State(st): State<AppState>,
    Path(id): Path<String>,
    b: Result<Json<crate::vvol::catalog::IoLimits>, JsonRejection>,
) -> Result<Json<VvolInfo>, ApiError> {
    let id = parse_id(&id)?;
    let limits = valid_limits(b)?;
    Ok(Json(st.ops.set_limits(id, limits).await?))
}

fn valid_limits(
    b: Result<Json<crate::vvol::catalog::IoLimits>, JsonRejection>,
) -> Result<crate::vvol::catalog::IoLimits, ApiError> {
    let limits = body(b)?;
    limits
        .validate()
        .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    Ok(limits)
}

async fn set_lun_limits(
    State(st): State<AppState>,
    Path((target, lun)): Path<(String, String)>,
    b: Result<Json<crate::vvol::catalog::IoLimits>, JsonRejection>,
) -> Result<Json<LunLimits>, ApiError> {
    let lun: u16 = lun
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("'{lun}' is not a LUN number")))?;
    let limits = valid_limits(b)?;
    Ok(Json(st.ops.set_lun_limits(target, lun, limits).await?))
}

async fn qos(State(st): State<AppState>) -> Result<Json<QosReport>, ApiError> {
    Ok(Json(st.ops.qos().await?))
}

/// Prometheus text exposition of the QoS telemetry.
async fn metrics(State(st): State<AppState>) -> Result<Response, ApiError> {
    let text = crate::array::qos::prometheus(&st.ops.qos().await?);
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

async fn bind(
    State(st): State<AppState>,
    b: Result<Json<BindRequest>, JsonRejection>,
) -> Result<Json<BindingInfo>, ApiError> {
    Ok(Json(st.ops.bind(body(b)?).await?))
}

async fn unbind(
    State(st): State<AppState>,
    b: Result<Json<UnbindRequest>, JsonRejection>,
) -> Result<Json<Vec<BindingInfo>>, ApiError> {
    Ok(Json(st.ops.unbind(body(b)?).await?))
}

async fn unbind_all(
    State(st): State<AppState>,
    b: Result<Json<UnbindAllRequest>, JsonRejection>,
) -> Result<Json<Vec<BindingInfo>>, ApiError> {
    Ok(Json(st.ops.unbind_all(body(b)?.host).await?))
}

async fn bindings(
    State(st): State<AppState>,
    Query(q): Query<HostQuery>,
) -> Result<Json<Vec<BindingInfo>>, ApiError> {
    Ok(Json(st.ops.bindings(q.host).await?))
}
