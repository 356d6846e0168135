//! Executing a SCSI plan against a logical unit's backend and answering the initiator:
//! Data-In PDUs that point at the backend's buffer, status collapsed into the last one when it
//! is GOOD, exact residuals, and no response at all for an aborted task.

use super::route::{Completion, HeldLu};
use super::session::{lock, Session, Task};
use super::writer::{Numbering, OutPdu, OutSender};
use crate::array::engine::Engine;
use crate::array::{qos, LogicalUnit};
use crate::backend::{buffer, BlockDevice};
use crate::iscsi::data_in;
use crate::iscsi::pdu::{self, CdbBytes, Itt, Residual, Seq};
use crate::scsi::{self, Lun, Plan, Response, Sense, Status};
use crate::vvol::inband::{self, InbandRequest};
use bytes::{Bytes, BytesMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tracing::debug;

/// What a connection's command tasks share.
pub struct ConnCtx {
    pub session: Arc<Session>,
    pub out: OutSender,
    /// Largest Data-In segment the initiator accepts (its MaxRecvDataSegmentLength), which
    /// it may declare anew in a full-feature Text request (RFC 7143 §13.12).
    pub max_xmit: AtomicUsize,
    /// Data-In sequences end (F bit) every MaxBurstLength bytes.
    pub max_burst: usize,
    pub engine: Arc<Engine>,
    /// Every session, for commands that reach other nexuses' tasks (PREEMPT AND ABORT).
    pub shared: Arc<super::Shared>,
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
    /// Carry out an in-band binding request from this session's (control) initiator.
    async fn inband(&self, pe: u16, req: InbandRequest) -> Result<(), Sense> {
        let r = match req {
            InbandRequest::Bind { vvol, host, any_pe } => self
                .engine
                .bind(vvol, &host, if any_pe { None } else { Some(pe) })
                .await
                .map(drop),
            InbandRequest::Unbind { vvol, host } => self.engine.unbind(vvol, &host).await.map(drop),
            InbandRequest::UnbindAllForHost { host } => {
                self.engine.unbind_all(&host).await.map(drop)
            }
        };
        r.map_err(|e| {
            tracing::info!("in-band request refused: {e}");
            e.sense()
        })
    }

    /// Send the final answer to a command: Data-In (if any) and status. Drops it silently if
    /// task management or a reset aborted the task. Frees the command's slot in the CmdSN
    /// window first, so the response already advertises the larger MaxCmdSN.
    pub async fn respond(
        &self,
        cmd: &CommandInfo,
        task: &Task,
        resp: Response,
        residual: Option<Residual>,
    ) {
        self.answer_unless_aborted(cmd, task, resp, residual).await;
    }

    /// [`ConnCtx::respond`], telling whether the answer went out (false: dropped).
    async fn answer_unless_aborted(
        &self,
        cmd: &CommandInfo,
        task: &Task,
        resp: Response,
        residual: Option<Residual>,
    ) -> bool {
        // Mark the task answering, then read its abort flag (both SeqCst): task management on
        // this connection that flags it after that finds it answering and waits
        // (`Task::answer_queued`). The task stays in the table until its last PDU is queued, so
        // an ABORT TASK or LUN RESET arriving meanwhile finds it, and the TMF answer cannot
        // overtake this one's Data-In or status. An aborted task answers nothing, unless the
        // array aborted it (`Task::abort_answering`).
        task.start_answer();
        let silenced = task.is_silenced();
        let was_shut = {
            let mut window = lock(&self.session.window);
            let shut = window.is_shut();
            window.complete();
            shut
        };
        if silenced {
            debug!(itt = cmd.itt.0, "aborted task: no response");
            if was_shut {
                self.announce_window().await;
            }
        } else {
            self.answer(cmd, resp, residual).await;
        }
        self.session.forget_task(cmd.itt, task);
        task.answered();
        !silenced
    }

    /// Answer a command its plan answered. Planning reports (and so clears) a pending unit
    /// attention; if an abort drops the answer, the condition is put back for the next
    /// command, since the initiator never saw it.
    async fn respond_planned(
        &self,
        cmd: &CommandInfo,
        task: &Task,
        lu: Option<&LogicalUnit>,
        resp: Response,
    ) {
        let ua = resp.unit_attention();
        if !self.answer_unless_aborted(cmd, task, resp, None).await {
            put_back(lu, self.session.nexus, ua);
        }
    }

    /// Tell the initiator the window has opened, by a NOP-In that asks no reply (ITT and TTT
    /// 0xffffffff, RFC 7143 §11.19.1). Only after a silent abort freed a slot of a shut
    /// window: no answer would carry the new MaxCmdSN then, and an initiator with its window
    /// full of aborted commands (another nexus reset the LU) would wait for its own ping.
    async fn announce_window(&self) {
        let bhs = pdu::nop_in(
            Lun::default(),
            Itt::RESERVED,
            0xFFFF_FFFF,
            Seq::default(),
            0,
        );
        let _ = self
            .out
            .send(OutPdu::new(bhs, Bytes::new(), Numbering::Current))
            .await;
    }

    /// Queue the Data-In (if any) and status of a command that was not aborted.
    async fn answer(&self, cmd: &CommandInfo, mut resp: Response, residual: Option<Residual>) {
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
            // The backend's whole buffer travels with the last Data-In PDU back to its pool.
            let owner = std::mem::take(&mut resp.data);
            self.send_data_in(cmd, owner, data_len, &resp, residual)
                .await;
        } else {
            self.send_scsi_response(cmd, &resp, residual, 0).await;
        }
    }

    /// Send the first `len` bytes of `owner` as Data-In (the status too when it is GOOD).
    async fn send_data_in(
        &self,
        cmd: &CommandInfo,
        mut owner: Bytes,
        len: usize,
        resp: &Response,
        residual: Residual,
    ) {
        let collapse = resp.status == Status::Good;
        let mut sent = 0;
        for (datasn, piece) in (0u32..).zip(data_in::pieces(
            len,
            self.max_xmit.load(Ordering::Relaxed),
            self.max_burst,
        )) {
            let (offset, end) = (piece.offset, piece.end);
            let last = end == len;
            let status = (last && collapse).then_some((resp.status as u8, residual));
            let bhs = pdu::data_in(
                cmd.lun,
                cmd.itt,
                datasn,
                offset as u32,
                end - offset,
                status,
                piece.ends_sequence,
                Seq::default(),
            );
            let numbering = if status.is_some() {
                Numbering::Status
            } else {
                Numbering::NoStatSn
            };
            let mut pdu = OutPdu::new(bhs, owner.slice(offset..end), numbering);
            if last {
                // Every earlier slice is queued ahead of this one: once it is sent, the
                // backend's buffer can go back to its pool.
                pdu = pdu.returning(std::mem::take(&mut owner));
            }
            if self.out.send(pdu).await.is_err() {
                return;
            }
            sent = datasn + 1;
        }
        if !collapse {
            self.send_scsi_response(cmd, resp, residual, sent).await;
        }
    }

    async fn send_scsi_response(
        &self,
        cmd: &CommandInfo,
        resp: &Response,
        residual: Residual,
        data_ins: u32,
    ) {
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
            data_ins,
        );
        let _ = self
            .out
            .send(OutPdu::new(bhs, sense, Numbering::Status))
            .await;
    }
}

/// PREEMPT AND ABORT (SPC-4 §5.9.11.5): the preempted nexuses' tasks on the LU are aborted
/// (as by ABORT TASK SET, no responses) and the PERSISTENT RESERVE OUT completes only once
/// none of them can still touch the medium. Each preempted host may reach the LU by its own
/// LUN (a VVol bound for it on another PE), and its tasks there are aborted too: a fence
/// that let them write after the PERSISTENT RESERVE OUT completed would be no fence.
async fn abort_preempted(ctx: &ConnCtx, preempted: &[crate::scsi::NexusId], lu: &Arc<LogicalUnit>) {
    if preempted.is_empty() {
        return;
    }
    let victims: Vec<_> = super::route::sessions_reaching(&ctx.shared, lu)
        .into_iter()
        .filter(|(s, _)| preempted.contains(&s.nexus))
        .flat_map(|(s, lun)| s.abort_tasks_on(Some(lun)))
        .collect();
    for v in victims {
        v.quiesced().await;
    }
}

/// A command ready to run once its Data-Out (if any) has arrived.
pub struct Job {
    pub cmd: CommandInfo,
    pub task: Arc<Task>,
    /// Its logical unit; a bound VVol's is held through the binding, so an unbind does not
    /// finish while this command runs.
    pub lu: Option<HeldLu>,
    pub cdb: CdbBytes,
    pub plan: Plan,
    pub completion: Completion,
}

/// An answer with `sense`, in the format of the command's logical unit if it has one.
pub fn sense_response(lu: Option<&LogicalUnit>, sense: Sense) -> Response {
    match lu {
        Some(lu) => lu.disk.sense_response(sense),
        None => Response::check(sense),
    }
}

/// Run a job whose Data-Out (if any) has fully arrived in `data`.
pub async fn run(ctx: &ConnCtx, job: Job, data: Bytes) {
    let Job {
        cmd,
        task,
        mut lu,
        cdb,
        mut plan,
        mut completion,
    } = job;
    let nexus = ctx.session.nexus;
    // Dormant on arrival behind older tasks of its task set (an ORDERED or HEAD OF QUEUE
    // command): it is decided only once it may run, as if it had arrived then.
    let dormant = task.was_dormant();
    if !task.is_enabled() {
        // An abort ends the wait too.
        task.enabled().await;
    }
    if dormant {
        if task.is_aborted() {
            // Not routed again: routing could report (and so clear) a unit attention no one
            // would see. A write's routing on arrival may have done so already; put it back.
            if let Plan::Respond(r) = &plan {
                put_back(lu.as_deref(), nexus, r.unit_attention());
            }
            return ctx.respond(&cmd, &task, never_ran(), None).await;
        }
        match completion {
            Completion::Unrouted => {
                let r = super::route::route(&ctx.shared, &ctx.session, cmd.lun, cdb.as_slice());
                if let Some((sense, residual)) = without_data_out(&r.plan, cmd.expected_len) {
                    let resp = sense_response(r.lu.as_deref(), sense);
                    return ctx.respond(&cmd, &task, resp, residual).await;
                }
                (lu, plan, completion) = (r.lu, r.plan, r.completion);
            }
            // Routed on arrival only to size its Data-Out, now received: route it again, so
            // unit attentions, reservations and write protection are those of now.
            _ if plan.data_out_len().is_some_and(|n| n > 0) => {
                let mut r = super::route::route(&ctx.shared, &ctx.session, cmd.lun, cdb.as_slice());
                if let (Plan::Write { len, .. }, Plan::Write { len: sized, .. }) =
                    (&mut r.plan, &plan)
                {
                    // Cut to the whole blocks the initiator offered, as on arrival.
                    *len = *sized;
                }
                let same_data = r.plan.data_out_len() == plan.data_out_len();
                if same_data || matches!(r.plan, Plan::Respond(_)) {
                    (lu, plan, completion) = (r.lu, r.plan, r.completion);
                }
            }
            _ => {}
        }
    }
    let lu = match (plan, lu) {
        (Plan::Respond(r), lu) => {
            return ctx.respond_planned(&cmd, &task, lu.as_deref(), r).await;
        }
        (plan, Some(lu)) => (plan, lu),
        // Only plans of an existing LU touch media.
        (_, None) => {
            let r = Response::check(Sense::LUN_NOT_SUPPORTED);
            return ctx.respond(&cmd, &task, r, None).await;
        }
    };
    let (plan, lu) = lu;
    // A command aborted while it waited for a runner must not take effect: binding, a
    // reservation or a mode change count like backend I/O (`Task::start`).
    if let Completion::Inband { pe, service } = completion {
        if !task.start() {
            return ctx.respond(&cmd, &task, never_ran(), None).await;
        }
        let resp = match inband::parse_params(service, &data) {
            Ok(req) => match ctx.inband(pe, req).await {
                Ok(()) => Response::good_empty(),
                Err(sense) => lu.disk.sense_response(sense),
            },
            Err(sense) => lu.disk.sense_response(sense),
        };
        task.finish();
        return ctx.respond(&cmd, &task, resp, cmd.write_residual).await;
    }
    let mut plan = plan;
    let mut data = data;
    if let Plan::Parameters { .. } = plan {
        // The parameter list decides what happens next (MODE SELECT answers, UNMAP and
        // EXTENDED COPY go on to the backend).
        if !task.start() {
            return ctx.respond(&cmd, &task, never_ran(), None).await;
        }
        plan = lu.disk.apply_parameters(nexus, cdb.as_slice(), &data);
        // Finished before waiting for preempted tasks, which may include this nexus' own.
        task.finish();
        data = Bytes::new();
        abort_preempted(ctx, &lu.disk.take_preempted_nexuses(), lu.arc()).await;
    }
    // A Respond here came from a parameter list (PERSISTENT RESERVE OUT, MODE SELECT): its
    // Data-Out arrived, so it has the write's residual, not "nothing moved".
    let residual = match plan {
        Plan::Read { .. } | Plan::Flush | Plan::LbaStatus { .. } => None,
        _ => cmd.write_residual,
    };
    let resp = match plan {
        Plan::Respond(r) => r,
        Plan::Parameters { .. } => lu.disk.sense_response(Sense::INTERNAL_TARGET_FAILURE),
        media => {
            // QoS first: the cap, then a slot of the pool's backend window. A capped VVol can
            // hold a command there for minutes; an abort ends the wait at once, so the command
            // gives back its CmdSN slot and runner rather than sleep out its turn.
            let admission = match lu.qos.get() {
                Some(q) => match qos::charge(&media, q.pool.unit_bytes) {
                    // Biased: an admission that is ready at once (the usual case) never polls,
                    // so never registers, the abort wait.
                    Some(c) => tokio::select! {
                        biased;
                        a = q.admit(c) => Some((q, a)),
                        _ = task.aborted() => {
                            let r = stopped(&lu, nexus, &media);
                            return ctx.respond(&cmd, &task, r, None).await;
                        }
                    },
                    None => None,
                },
                None => None,
            };
            // An aborted task never reaches the backend; one that started is let finish.
            if !task.start() {
                let r = stopped(&lu, nexus, &media);
                return ctx.respond(&cmd, &task, r, None).await;
            }
            let r = ctx.media(&lu, nexus, media, data, &task).await;
            task.finish();
            if let Some((q, a)) = admission {
                q.finish(a);
            }
            r
        }
    };
    ctx.respond(&cmd, &task, resp, residual).await;
    // Only now may an unbind waiting for this command finish.
    drop(lu);
}

/// The refusal of a command sent without Data-Out (the W bit clear) whose plan needs some, or
/// names an exact size the announced length contradicts; as on arrival.
fn without_data_out(plan: &Plan, expected_len: u32) -> Option<(Sense, Option<Residual>)> {
    let need = plan.data_out_len()?;
    match fixed_size_sense(plan) {
        Some(sense) if need > 0 || expected_len != need => Some((sense, None)),
        None if need > 0 => Some((
            Sense::INVALID_FIELD_IN_INFORMATION_UNIT,
            Some(Residual::Overflow(need - expected_len.min(need))),
        )),
        _ => None,
    }
}

/// COMPARE AND WRITE and WRITE SAME name their exact Data-Out size in the CDB: the sense for
/// an announced size that contradicts it (libiscsi *.InvalidDataOutSize).
pub fn fixed_size_sense(plan: &Plan) -> Option<Sense> {
    match plan {
        Plan::CompareAndWrite { .. } => Some(Sense::invalid_cdb_field(13, None)),
        Plan::WriteSame { .. } => Some(Sense::INVALID_FIELD_IN_INFORMATION_UNIT),
        _ => None,
    }
}

/// A unit attention planning took for an answer that never went out: pending again.
fn put_back(lu: Option<&LogicalUnit>, nexus: scsi::NexusId, ua: Option<scsi::Sense>) {
    if let (Some(lu), Some(ua)) = (lu, ua) {
        lu.disk.unit_attention_unreported(nexus, ua);
    }
}

/// The answer of a task aborted before it took any effect. Only a task the array aborted
/// sends it (an unbind whose drain timed out; task management's aborts stay silent): the LU
/// is gone for this host, as a new command to that LUN would find.
fn never_ran() -> Response {
    Response::check(Sense::LUN_NOT_SUPPORTED)
}

/// The answer of a media plan an abort stopped before it ran. A copy's list identifier is
/// released, or it would stay "in progress" and refuse every later copy naming it.
fn stopped(lu: &LogicalUnit, nexus: scsi::NexusId, media: &Plan) -> Response {
    if let Plan::Copy { list_id, .. } = media {
        lu.disk
            .copy_finished(nexus, *list_id, Err(scsi::xcopy::COPY_ABORTED));
    }
    never_ran()
}

/// Bytes copied per backend request by WRITE SAME and EXTENDED COPY.
const CHUNK: u64 = 1 << 20;

impl ConnCtx {
    /// Run a plan that touches the medium.
    async fn media(
        &self,
        lu: &LogicalUnit,
        nexus: crate::scsi::NexusId,
        plan: Plan,
        data: Bytes,
        task: &Task,
    ) -> Response {
        let read_err = |e: crate::backend::BackendError| lu.disk.sense_response(e.sense(false));
        let write_err = |e: crate::backend::BackendError| lu.disk.sense_response(e.sense(true));
        match plan {
            Plan::Read { offset, len } => {
                match lu.device.read(offset, buffer::take(len as usize)).await {
                    Ok(buf) => Response::good(buf.freeze()),
                    Err(e) => read_err(e),
                }
            }
            Plan::Write { offset, fua, .. } => {
                let _w = lu.write_lock.read().await;
                match write_pooled(&lu.device, offset, data, fua).await {
                    Ok(()) => Response::good_empty(),
                    Err(e) => write_err(e),
                }
            }
            Plan::Compare { offset, len } => {
                match lu.device.read(offset, buffer::take(len as usize)).await {
                    Ok(actual) => {
                        let r = scsi::disk::compare_result(&lu.disk, &data, &actual);
                        buffer::recycle_mut(actual);
                        r
                    }
                    Err(e) => read_err(e),
                }
            }
            Plan::Flush => match lu.device.flush().await {
                Ok(()) => Response::good_empty(),
                Err(e) => write_err(e),
            },
            // Zero blocks: nothing to compare or write (SBC-3 §5.2).
            Plan::CompareAndWrite { len: 0, .. } => Response::good_empty(),
            Plan::CompareAndWrite { offset, len, fua } => {
                // Exclusive: no other write to this LU runs between the compare and the write.
                let _w = lu.write_lock.write().await;
                let (verify, write) = data.split_at(len as usize);
                let actual = match lu.device.read(offset, buffer::take(len as usize)).await {
                    Ok(a) => a,
                    Err(e) => return read_err(e),
                };
                let cmp = scsi::disk::compare_result(&lu.disk, verify, &actual);
                if cmp.status != Status::Good {
                    return cmp;
                }
                // A pooled (aligned) copy, so a direct_io file takes it direct like any write.
                let mut copy = buffer::take(write.len());
                copy.copy_from_slice(write);
                match write_pooled(&lu.device, offset, copy.freeze(), fua).await {
                    Ok(()) => Response::good_empty(),
                    Err(e) => write_err(e),
                }
            }
            Plan::WriteSame {
                offset,
                len,
                block_len,
                unmap,
            } => {
                let _w = lu.write_lock.read().await;
                let block = if data.is_empty() {
                    Bytes::from(vec![0u8; block_len.max(1) as usize])
                } else {
                    data
                };
                let r = if unmap && lu.device.thin() && block.iter().all(|b| *b == 0) {
                    lu.device.discard(offset, len).await
                } else {
                    write_repeated(&lu.device, offset, len, &block).await
                };
                match r {
                    Ok(()) => Response::good_empty(),
                    Err(e) => write_err(e),
                }
            }
            Plan::Unmap { ranges } => {
                let _w = lu.write_lock.read().await;
                for (offset, len) in ranges {
                    if let Err(e) = lu.device.discard(offset, len).await {
                        return write_err(e);
                    }
                }
                Response::good_empty()
            }
            Plan::LbaStatus {
                offset,
                len,
                alloc_len,
            } => match lu.device.allocation(offset, len).await {
                Ok(extents) => lu.disk.lba_status_response(offset, &extents, alloc_len),
                Err(e) => read_err(e),
            },
            Plan::Copy { list_id, segments } => {
                let r = self.copy(lu, &segments, task).await;
                lu.disk.copy_finished(nexus, list_id, r)
            }
            Plan::Respond(r) => r,
            Plan::Parameters { .. } => lu.disk.sense_response(Sense::INTERNAL_TARGET_FAILURE),
        }
    }

    /// The logical unit with NAA designator `naa` that this session may copy to or from: the
    /// target's LUs, and the VVols bound for its host, which the copy holds in flight (an
    /// unbind waits for it, and a VVol being unbound is not reachable).
    fn lu_by_naa(&self, naa: &[u8; 16]) -> Option<HeldLu> {
        let s = &self.session;
        if let Some(lu) = s
            .target
            .luns
            .values()
            .find(|lu| &lu.disk.identity().naa == naa)
        {
            return Some(HeldLu::Shared(lu.clone()));
        }
        self.engine
            .route_by_naa(&s.key.initiator, naa)
            .map(HeldLu::Bound)
    }

    /// EXTENDED COPY: block-to-block segments copied by the backends, never through the
    /// network path. Returns the bytes copied, or the sense that ends the copy.
    async fn copy(
        &self,
        lu: &LogicalUnit,
        segments: &[scsi::CopySegment],
        task: &Task,
    ) -> Result<u64, Sense> {
        // Every segment is resolved and checked before any is copied, so a bad one later in
        // the list does not leave the earlier ones half done.
        let mut resolved = Vec::with_capacity(segments.len());
        for seg in segments {
            let (Some(src), Some(dst)) = (
                self.lu_by_naa(&seg.source),
                self.lu_by_naa(&seg.destination),
            ) else {
                // COPY TARGET DEVICE NOT REACHABLE
                return Err(Sense::new(crate::scsi::SenseKey::CopyAborted, 0x0D, 0x02));
            };
            scsi::xcopy::check_segment(seg, src.disk.identity(), dst.disk.identity())?;
            src.disk.copy_access(self.session.nexus, false)?;
            dst.disk.copy_access(self.session.nexus, true)?;
            resolved.push((seg, src, dst));
        }
        // A VVol the copy reads or writes (in any segment) is being unbound: its drain must
        // not wait for the rest of a long copy, nor may the copy outlast it.
        let unbinding = || {
            resolved
                .iter()
                .flat_map(|(_, src, dst)| [src, dst])
                .any(HeldLu::closing)
        };
        let mut copied = 0;
        for (seg, src, dst) in &resolved {
            let _w = dst.write_lock.read().await;
            // Within one LU with the destination overlapping the source from above, copy from
            // the end so no chunk is overwritten before it has been read.
            let backwards = seg.source == seg.destination
                && seg.destination_offset > seg.source_offset
                && seg.destination_offset < seg.source_offset + seg.len;
            let mut done = 0;
            while done < seg.len {
                let n = (seg.len - done).min(CHUNK);
                let at = if backwards { seg.len - done - n } else { done };
                if unbinding() {
                    return Err(scsi::xcopy::COPY_TARGET_NOT_REACHABLE);
                }
                pace_copy_targets(lu, [src.arc(), dst.arc()], n, task).await?;
                let buf = src
                    .device
                    .read(seg.source_offset + at, buffer::take(n as usize))
                    .await
                    .map_err(|_| Sense::new(crate::scsi::SenseKey::CopyAborted, 0x11, 0x00))?;
                write_pooled(
                    &dst.device,
                    seg.destination_offset + at,
                    buf.freeze(),
                    false,
                )
                .await
                .map_err(|_| Sense::new(crate::scsi::SenseKey::CopyAborted, 0x0C, 0x00))?;
                done += n;
                // A copy may run to gigabytes: let the thread's other connections run between
                // chunks (a RAM disk never waits, so nothing else would yield), and stop once
                // task management has aborted it, rather than hold a reset up until the end.
                tokio::task::yield_now().await;
                if task.is_aborted() {
                    return Err(scsi::xcopy::COPY_ABORTED);
                }
            }
            copied += seg.len;
        }
        Ok(copied)
    }
}

/// Hold a copy's next `bytes` until the caps of its source and destination allow them. The
/// LU the EXTENDED COPY was sent to paid for the whole copy at admission; the others pay per
/// chunk, or a capped VVol could be read or written at any rate through a copy sent to an
/// uncapped LU. An abort ends the wait.
async fn pace_copy_targets(
    sent_to: &LogicalUnit,
    [src, dst]: [&Arc<LogicalUnit>; 2],
    bytes: u64,
    task: &Task,
) -> Result<(), Sense> {
    let same = Arc::ptr_eq(src, dst);
    for t in std::iter::once(src).chain((!same).then_some(dst)) {
        let Some(q) = t.qos.get().filter(|_| !std::ptr::eq(&**t, sent_to)) else {
            continue;
        };
        tokio::select! {
            biased;
            () = q.pace(qos::offload_units(bytes)) => {}
            _ = task.aborted() => {
                return Err(scsi::xcopy::COPY_ABORTED);
            }
        }
    }
    Ok(())
}

/// Write a pooled buffer and give it back to its pool afterwards: the backend gets a second
/// handle, so the buffer is the caller's alone again once the write is done.
async fn write_pooled(
    dev: &crate::backend::AnyDevice,
    offset: u64,
    data: Bytes,
    fua: bool,
) -> crate::backend::IoResult<()> {
    let r = dev.write(offset, data.clone(), fua).await;
    buffer::recycle(data);
    r
}

/// Fill `[offset, offset+len)` with copies of `block`, a chunk at a time.
async fn write_repeated(
    dev: &crate::backend::AnyDevice,
    offset: u64,
    len: u64,
    block: &[u8],
) -> crate::backend::IoResult<()> {
    let per_chunk = (CHUNK / block.len() as u64).max(1) * block.len() as u64;
    // In a pooled (aligned) buffer, so a direct_io file takes these writes direct too.
    let mut pattern = buffer::take(per_chunk as usize);
    for piece in pattern.chunks_mut(block.len()) {
        piece.copy_from_slice(&block[..piece.len()]);
    }
    let pattern = pattern.freeze();
    let mut done = 0;
    while done < len {
        let n = (len - done).min(per_chunk);
        dev.write(offset + done, pattern.slice(..n as usize), false)
            .await?;
        done += n;
        // Up to gigabytes too: let the thread's other connections run between chunks.
        tokio::task::yield_now().await;
    }
    buffer::recycle(pattern);
    Ok(())
}
