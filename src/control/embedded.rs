//! The control API served by the daemon itself: every operation goes straight to the array's
//! VVol engine, the same engine the in-band commands reach.

use super::api::{Ops, OpsFuture};
use super::error::ApiError;
use super::model::*;
use crate::array::engine::{naa_string, Engine, EngineError};
use crate::store::StoreError;
use crate::vvol::binding::{BindError, Binding};
use crate::vvol::catalog::{IoLimits, Vvol};
use std::collections::BTreeMap;
use std::sync::Arc;
use uuid::Uuid;

pub struct Embedded {
    pub engine: Arc<Engine>,
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        let msg = e.to_string();
        match e {
            EngineError::Store(StoreError::Invalid(_))
            | EngineError::Store(StoreError::InvalidValue(_)) => ApiError::Unprocessable(msg),
            EngineError::Store(s) => ApiError::from_status(s.http_status(), msg),
            EngineError::Bind(BindError::UnknownPe(_))
            | EngineError::Bind(BindError::UnknownVvol(_))
            | EngineError::Bind(BindError::NotBound { .. }) => ApiError::NotFound(msg),
            EngineError::Bind(BindError::Busy { .. }) | EngineError::Bound(_) => {
                ApiError::Conflict(msg)
            }
            EngineError::Bind(BindError::NoResources(_)) => ApiError::InsufficientStorage(msg),
            EngineError::Bind(BindError::InvalidHost(_)) | EngineError::Unsupported(_) => {
                ApiError::Unprocessable(msg)
            }
            EngineError::PeNotAllowed { .. } => ApiError::Conflict(msg),
            EngineError::Backend { .. } => ApiError::Internal(msg),
            EngineError::ShuttingDown => ApiError::Unavailable(msg),
            EngineError::Reservations(_) => ApiError::Internal(msg),
        }
    }
}

fn vvol_info((v, hosts): (Vvol, Vec<String>)) -> VvolInfo {
    VvolInfo {
        id: v.id,
        container: v.container,
        vvol_type: v.vvol_type,
        size: v.size,
        block_size: v.block_size,
        created: v.created,
        limits: v.limits,
        metadata: v.metadata,
        bound_hosts: hosts,
    }
}

/// Describe a binding with its PE's target and NAA.
pub fn binding_info(engine: &Engine, b: &Binding) -> BindingInfo {
    let pe = engine.pes().iter().find(|p| p.lun == b.pe);
    let target = pe.map(|p| p.target.as_str()).unwrap_or_default();
    let naa = pe.map(|p| naa_string(&p.naa)).unwrap_or_default();
    BindingInfo::new(b, target, &naa)
}

/// Run blocking catalog work (SQLite, fsync) off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
}

impl Ops for Embedded {
    fn containers(&self) -> OpsFuture<'_, Vec<ContainerInfo>> {
        let engine = self.engine.clone();
        Box::pin(blocking(move || {
            Ok(engine
                .containers()?
                .into_iter()
                .map(|(c, u)| ContainerInfo {
                    name: c.name,
                    backend: c.backend,
                    capacity: c.capacity,
                    overcommit_ratio: c.overcommit_ratio,
                    provisioned: u.provisioned,
                    allocated: u.allocated,
                    free: u.capacity.saturating_sub(u.allocated),
                    default_limits: c.default_limits,
                })
                .collect())
        }))
    }

    fn pes(&self) -> OpsFuture<'_, Vec<PeInfo>> {
        Box::pin(async move {
            Ok(self
                .engine
                .pes()
                .iter()
                .map(|p| PeInfo {
                    target: p.target.clone(),
                    lun: p.lun,
                    naa: p.naa_string(),
                    allowed_hosts: p.allowed_hosts.clone(),
                    bound_vvols: self.engine.bindings_on_pe(p.lun).len(),
                })
                .collect())
        })
    }

    fn vvols(&self, container: Option<String>) -> OpsFuture<'_, Vec<VvolInfo>> {
        let engine = self.engine.clone();
        Box::pin(blocking(move || {
            Ok(engine
                .vvols(container.as_deref())?
                .into_iter()
                .map(vvol_info)
                .collect())
        }))
    }

    fn vvol(&self, id: Uuid) -> OpsFuture<'_, VvolInfo> {
        let engine = self.engine.clone();
        Box::pin(blocking(move || Ok(vvol_info(engine.vvol(id)?))))
    }

    fn create_vvol(&self, req: CreateVvol) -> OpsFuture<'_, VvolInfo> {
        let engine = self.engine.clone();
        Box::pin(blocking(move || {
            let size = req.size.bytes().map_err(ApiError::Unprocessable)?;
            let v = engine.create_vvol(
                &req.container,
                req.vvol_type,
                size,
                req.block_size.unwrap_or(512),
                req.limits,
                req.metadata,
            )?;
            Ok(vvol_info((v, Vec::new())))
        }))
    }

    fn delete_vvol(&self, id: Uuid) -> OpsFuture<'_, ()> {
        Box::pin(async move { Ok(self.engine.delete_vvol(id).await?) })
    }

    fn resize_vvol(&self, id: Uuid, size: u64) -> OpsFuture<'_, VvolInfo> {
        Box::pin(async move {
            self.engine.resize_vvol(id, size).await?;
            self.vvol(id).await
        })
    }

    fn set_metadata(&self, id: Uuid, kv: BTreeMap<String, String>) -> OpsFuture<'_, VvolInfo> {
        let engine = self.engine.clone();
        Box::pin(blocking(move || {
            engine.set_metadata(id, &kv)?;
            Ok(vvol_info(engine.vvol(id)?))
        }))
    }

    fn set_limits(&self, id: Uuid, limits: IoLimits) -> OpsFuture<'_, VvolInfo> {
        let engine = self.engine.clone();
        Box::pin(blocking(move || {
            engine.set_limits(id, limits)?;
            Ok(vvol_info(engine.vvol(id)?))
        }))
    }

    fn qos(&self) -> OpsFuture<'_, QosReport> {
        let report = self.engine.qos().report();
        Box::pin(async move { Ok(report) })
    }

    fn set_lun_limits(
        &self,
        target: String,
        lun: u16,
        limits: IoLimits,
    ) -> OpsFuture<'_, LunLimits> {
        let engine = self.engine.clone();
        Box::pin(blocking(move || {
            let limits = engine.set_lun_limits(&target, lun, limits)?;
            Ok(LunLimits {
                target,
                lun,
                limits,
            })
        }))
    }

    fn bind(&self, req: BindRequest) -> OpsFuture<'_, BindingInfo> {
        Box::pin(async move {
            let b = self.engine.bind(req.vvol, &req.host, req.pe).await?;
            Ok(binding_info(&self.engine, &b))
        })
    }

    fn unbind(&self, req: UnbindRequest) -> OpsFuture<'_, Vec<BindingInfo>> {
        Box::pin(async move {
            let v = self.engine.unbind(req.vvol, &req.host).await?;
            Ok(v.iter().map(|b| binding_info(&self.engine, b)).collect())
        })
    }

    fn unbind_all(&self, host: String) -> OpsFuture<'_, Vec<BindingInfo>> {
        Box::pin(async move {
            let v = self.engine.unbind_all(&host).await?;
            Ok(v.iter().map(|b| binding_info(&self.engine, b)).collect())
        })
    }

    fn bindings(&self, host: Option<String>) -> OpsFuture<'_, Vec<BindingInfo>> {
        Box::pin(async move {
            Ok(self
                .engine
                .bindings(host.as_deref())
                .iter()
                .map(|b| binding_info(&self.engine, b))
                .collect())
        })
    }
}
