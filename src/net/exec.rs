//! Executing a SCSI plan against a logical unit's backend and answering the initiator:
//! Data-In PDUs that point at the backend's buffer, status collapsed into the last one when it
//! is GOOD, exact residuals, and no response at all for an aborted task.

use super::session::{lock, Session, Task};
use super::writer::{Numbering, OutPdu, OutSender};
use crate::array::LogicalUnit;
use crate::backend::BlockDevice;
use crate::iscsi::pdu::{self, Itt, Residual, Seq};
use crate::scsi::{self, Lun, Plan, Response, Sense, Status};
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use tracing::debug;

/// What a connection's command tasks share.
pub struct ConnCtx {
    pub session: Arc<Session>,
    pub out: OutSender,
    /// Largest Data-In segment the initiator accepts (its MaxRecvDataSegmentLength).
    pub max_xmit: usize,
    /// Data-In sequences end (F bit) every MaxBurstLength bytes.
    pub max_burst: usize,
}

/// The iSCSI facts of one command the answer depends on.
#[derive(Debug, Clone)]
pub struct CommandInfo {
    pub itt: Itt,
    pub lun: Lun,
    pub expected_len: u32,
    pub read: bool,
    /// For commands with a data-out phase: the residual decided when the transfer was sized.
    pub write_residual: Option<Residual>,
}

impl ConnCtx {
    /// Send the final answer to a command: Data-In (if any) and status. Drops it silently if
    /// the task was aborted. Frees the command's slot in the CmdSN window first, so the
    /// response already advertises the larger MaxCmdSN.
    pub async fn respond(
        &self,
        cmd: &CommandInfo,
        task: &Task,
        resp: Response,
        residual: Option<Residual>,
    ) {
        lock(&self.session.tasks).remove(&cmd.itt);
        lock(&self.session.window).complete();
        if task.is_aborted() {
            debug!(itt = cmd.itt.0, "aborted task: no response");
            return;
        }
        let data_len = if cmd.read {
            resp.data.len().min(cmd.expected_len as usize)
        } else {
            0
        };
        let residual = residual.unwrap_or_else(|| {
            let moved = if cmd.read || !resp.data.is_empty() {
                resp.data.len() as u32
            } else {
                0
            };
            Residual::of(cmd.expected_len, moved)
        });
        if data_len > 0 {
            self.send_data_in(cmd, resp.data.slice(..data_len), &resp, residual)
                .await;
        } else {
            self.send_scsi_response(cmd, &resp, residual).await;
        }
    }

    async fn send_data_in(
        &self,
        cmd: &CommandInfo,
        data: Bytes,
        resp: &Response,
        residual: Residual,
    ) {
        let collapse = resp.status == Status::Good;
        let chunk = self.max_xmit.max(512);
        let mut offset = 0usize;
        let mut datasn = 0u32;
        while offset < data.len() {
            let end = (offset + chunk).min(data.len());
            let last = end == data.len();
            let burst_end = (offset / self.max_burst + 1) * self.max_burst <= end;
            let status = (last && collapse).then_some((resp.status as u8, residual));
            let bhs = pdu::data_in(
                cmd.lun,
                cmd.itt,
                datasn,
                offset as u32,
                end - offset,
                status,
                last || burst_end,
                Seq::default(),
            );
            let numbering = if status.is_some() {
                Numbering::Status
            } else {
                Numbering::NoStatSn
            };
            if self
                .out
                .send(OutPdu::new(bhs, data.slice(offset..end), numbering))
                .await
                .is_err()
            {
                return;
            }
            offset = end;
            datasn += 1;
        }
        if !collapse {
            self.send_scsi_response(cmd, resp, residual).await;
        }
    }

    async fn send_scsi_response(&self, cmd: &CommandInfo, resp: &Response, residual: Residual) {
        let sense = if resp.sense.is_empty() {
            Bytes::new()
        } else {
            // SCSI Response data segment: 2-byte SenseLength, then the sense data.
            let mut b = BytesMut::with_capacity(2 + resp.sense.len());
            b.extend_from_slice(&(resp.sense.len() as u16).to_be_bytes());
            b.extend_from_slice(&resp.sense);
            b.freeze()
        };
        let bhs = pdu::scsi_response(
            cmd.itt,
            resp.status as u8,
            residual,
            Seq::default(),
            sense.len(),
        );
        let _ = self
            .out
            .send(OutPdu::new(bhs, sense, Numbering::Status))
            .await;
    }
}

/// Run a plan whose Data-Out (if any) has fully arrived in `data`.
pub async fn run(
    ctx: Arc<ConnCtx>,
    cmd: CommandInfo,
    task: Arc<Task>,
    lu: Option<Arc<LogicalUnit>>,
    cdb: Vec<u8>,
    plan: Plan,
    data: Bytes,
) {
    let nexus = ctx.session.nexus;
    let mut residual = None;
    let lu = match (plan, lu) {
        (Plan::Respond(r), _) => return ctx.respond(&cmd, &task, r, None).await,
        (plan, Some(lu)) => (plan, lu),
        // Only plans of an existing LU touch media.
        (_, None) => {
            return ctx
                .respond(&cmd, &task, Response::check(Sense::LUN_NOT_SUPPORTED), None)
                .await
        }
    };
    let (plan, lu) = lu;
    let resp = match plan {
        Plan::Respond(r) => r,
        Plan::Read { offset, len } => {
            if !task.start() {
                return ctx.respond(&cmd, &task, Response::good_empty(), None).await;
            }
            let r = lu.device.read(offset, BytesMut::zeroed(len as usize)).await;
            task.finish();
            match r {
                Ok(buf) => Response::good(buf.freeze()),
                Err(e) => lu.disk.sense_response(e.sense(false)),
            }
        }
        Plan::Write { offset, fua, .. } => {
            residual = cmd.write_residual;
            if !task.start() {
                return ctx.respond(&cmd, &task, Response::good_empty(), None).await;
            }
            let r = lu.device.write(offset, data, fua).await;
            task.finish();
            match r {
                Ok(()) => Response::good_empty(),
                Err(e) => lu.disk.sense_response(e.sense(true)),
            }
        }
        Plan::Compare { offset, len } => {
            residual = cmd.write_residual;
            if !task.start() {
                return ctx.respond(&cmd, &task, Response::good_empty(), None).await;
            }
            let r = lu.device.read(offset, BytesMut::zeroed(len as usize)).await;
            task.finish();
            match r {
                Ok(actual) => scsi::disk::compare_result(&lu.disk, &data, &actual),
                Err(e) => lu.disk.sense_response(e.sense(false)),
            }
        }
        Plan::Flush => {
            if !task.start() {
                return ctx.respond(&cmd, &task, Response::good_empty(), None).await;
            }
            let r = lu.device.flush().await;
            task.finish();
            match r {
                Ok(()) => Response::good_empty(),
                Err(e) => lu.disk.sense_response(e.sense(true)),
            }
        }
        Plan::Parameters { .. } => {
            residual = cmd.write_residual;
            lu.disk.apply_parameters(nexus, &cdb, &data)
        }
    };
    ctx.respond(&cmd, &task, resp, residual).await;
}
