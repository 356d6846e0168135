//! The pipelined engine of one session: keeps up to QD commands in flight on one connection,
//! within the target's CmdSN window, and refills the queue as completions arrive (closed loop).
//!
//! One task owns the socket and drives both directions from readiness (`ready` + `try_read` /
//! `try_write_vectored`), so a slow reader never blocks a writer and no channel or second task
//! wakes per I/O: each wake-up reads what arrived, completes every command in it, queues the
//! replacements and sends them in one gathered write. Buffers are allocated once per session:
//! the receive buffer, the queue of outgoing headers and one data pattern every write sends
//! from. Data-In payloads are skipped in the receive buffer, never copied out. A session with a
//! set of LUNs sends each command to one picked at random (the same PRNG as the offsets).

use super::hist::Histogram;
use super::Rw;
use crate::initiator::SessionParams;
use crate::iscsi::digest;
use crate::iscsi::pdu::{op, pad_len, BHS_LEN};
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::time::{Duration, Instant};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Gathered pieces per `writev` (three per PDU: header, data, padding and digest).
const MAX_IOV: usize = 96;
const RBUF_LEN: usize = 256 * 1024;
const LOGOUT_ITT: u32 = 0x7FFF_FFFF;
const RESERVED_TAG: u32 = 0xFFFF_FFFF;
const STATUS_GOOD: u8 = 0x00;
const STATUS_CHECK_CONDITION: u8 = 0x02;

/// One LUN a session sends commands to.
pub(super) struct LunPlan {
    pub lun: [u8; 8],
    /// Number of block-aligned positions of `bs` bytes in the LUN (at least 1).
    pub positions: u64,
    /// Logical blocks per I/O.
    pub blocks_per_io: u32,
}

/// What one session does and when.
pub(super) struct Plan {
    /// The LUNs, at least one; each command goes to one picked at random.
    pub luns: Vec<LunPlan>,
    pub rw: Rw,
    pub bs: u32,
    /// Index of this session among its volume's sessions, and how many there are.
    pub session: usize,
    pub sessions: usize,
    pub qd: usize,
    pub seed: u64,
    pub measure_from: Instant,
    pub measure_to: Instant,
    /// Give up on outstanding commands (and count them as errors) at this instant.
    pub drain_deadline: Instant,
    pub seconds: usize,
}

/// What one session measured.
#[derive(Debug, Default)]
pub struct SessionStats {
    pub ios: u64,
    pub bytes: u64,
    pub errors: u64,
    pub unit_attentions: u64,
    pub hist: Histogram,
    pub per_second: Vec<u64>,
    /// Good completions in the measured period per LUN of the plan.
    pub lun_ios: Vec<u64>,
    pub first_error: Option<String>,
}

impl SessionStats {
    fn error(&mut self, what: impl FnOnce() -> String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(what());
        }
    }
}

#[derive(Clone, Copy, Default)]
struct Task {
    busy: bool,
    issued: Option<Instant>,
    /// Index of its LUN in the plan.
    lun: u32,
    /// Data-In bytes received so far, in order (ERL 0: a target sends them in order).
    received: u32,
    /// A Data-In arrived out of order or past the transfer: the command fails.
    misplaced: bool,
}

/// One outgoing PDU: header (and header digest) inline, data taken from the pattern (or, for
/// a ping answer, from `echo`), then padding and data digest.
struct OutPdu {
    head: [u8; BHS_LEN + 4],
    head_len: u8,
    data_off: u32,
    data_len: u32,
    tail: [u8; 8],
    tail_len: u8,
    echo: Option<Box<[u8]>>,
}

impl OutPdu {
    fn wire_len(&self) -> usize {
        self.head_len as usize + self.data_len as usize + self.tail_len as usize
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in 0..n (multiply-shift, no division).
    fn below(&mut self, n: u64) -> u64 {
        ((self.next() as u128 * n as u128) >> 64) as u64
    }
}

fn serial_le(a: u32, b: u32) -> bool {
    a == b || (b.wrapping_sub(a) as i32) > 0
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(super) struct Engine {
    stream: TcpStream,
    p: SessionParams,
    plan: Plan,
    rng: Rng,
    /// Next position of sequential access, per LUN.
    seq_next: Vec<u64>,
    tasks: Vec<Task>,
    free: Vec<u32>,
    outstanding: usize,
    out: VecDeque<OutPdu>,
    /// Bytes of `out.front()` already written.
    out_head: usize,
    rbuf: Vec<u8>,
    rpos: usize,
    rend: usize,
    /// Bytes of a Data-In payload (with padding and digest) still to pass over.
    skip: usize,
    pattern: Vec<u8>,
    stats: SessionStats,
    stopping: bool,
    logout_sent: bool,
    done: bool,
}

impl Engine {
    pub fn new(stream: TcpStream, p: SessionParams, plan: Plan) -> Engine {
        let mut rng = Rng(plan.seed | 1);
        let mut pattern = vec![0u8; plan.bs as usize];
        for chunk in pattern.chunks_mut(8) {
            let v = rng.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        let qd = plan.qd.max(1);
        let sessions = plan.sessions.max(1) as u64;
        let seq_next = plan
            .luns
            .iter()
            .map(|l| l.positions * plan.session as u64 / sessions)
            .collect();
        Engine {
            stream,
            p,
            rng,
            seq_next,
            tasks: vec![Task::default(); qd],
            free: (0..qd as u32).rev().collect(),
            outstanding: 0,
            out: VecDeque::with_capacity(2 * qd + 4),
            out_head: 0,
            rbuf: vec![0; RBUF_LEN],
            rpos: 0,
            rend: 0,
            skip: 0,
            pattern,
            stats: SessionStats {
                per_second: vec![0; plan.seconds],
                lun_ios: vec![0; plan.luns.len()],
                ..SessionStats::default()
            },
            plan,
            stopping: false,
            logout_sent: false,
            done: false,
        }
    }

    pub async fn run(mut self) -> SessionStats {
        let deadline = tokio::time::sleep_until(self.plan.drain_deadline.into());
        tokio::pin!(deadline);
        let mut now = Instant::now();
        loop {
            self.fill(now);
            if self.done {
                break;
            }
            if let Err(e) = self.flush() {
                self.lost(e);
                break;
            }
            let interest = if self.out.is_empty() {
                Interest::READABLE
            } else {
                Interest::READABLE | Interest::WRITABLE
            };
            tokio::select! {
                biased;
                r = self.stream.ready(interest) => match r {
                    Ok(ready) if ready.is_readable() || ready.is_read_closed() => {
                        if let Err(e) = self.read_some() {
                            self.lost(e);
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        self.lost(e);
                        break;
                    }
                },
                _ = &mut deadline => {
                    if self.outstanding > 0 {
                        let n = self.outstanding;
                        self.stats.error(|| format!("{n} commands unanswered at the deadline"));
                        self.stats.errors += n as u64 - 1;
                    }
                    break;
                }
            }
            now = Instant::now();
        }
        self.stats
    }

    /// The connection failed: everything in flight is an error.
    fn lost(&mut self, e: io::Error) {
        if self.logout_sent && self.outstanding == 0 {
            return; // the target closed after (or instead of) answering the logout
        }
        let n = self.outstanding.max(1);
        self.stats
            .error(|| format!("connection lost with {n} commands in flight: {e}"));
        self.stats.errors += n as u64 - 1;
    }

    /// Queue new commands up to the queue depth and the target's CmdSN window; after the
    /// measured period, drain and log out.
    fn fill(&mut self, now: Instant) {
        if !self.stopping && now >= self.plan.measure_to {
            self.stopping = true;
        }
        if self.stopping {
            if self.outstanding == 0 && !self.logout_sent {
                self.queue_logout();
            }
            return;
        }
        while self.outstanding < self.tasks.len() && serial_le(self.p.cmdsn, self.p.maxcmdsn) {
            let Some(slot) = self.free.pop() else { break };
            self.issue(slot, now);
        }
    }

    /// The LUN (index in the plan) and LBA of the next command.
    fn next_target(&mut self) -> (usize, u64) {
        let li = match self.plan.luns.len() {
            1 => 0,
            n => self.rng.below(n as u64) as usize,
        };
        let l = &self.plan.luns[li];
        let pos = match self.plan.rw {
            Rw::RandRead | Rw::RandWrite => self.rng.below(l.positions),
            Rw::Read | Rw::Write => {
                let next = &mut self.seq_next[li];
                let p = *next;
                *next += 1;
                if *next >= l.positions {
                    *next = 0;
                }
                p
            }
        };
        (li, pos * l.blocks_per_io as u64)
    }

    fn issue(&mut self, slot: u32, now: Instant) {
        let write = matches!(self.plan.rw, Rw::RandWrite | Rw::Write);
        let (li, lba) = self.next_target();
        let bs = self.plan.bs;
        let blocks = self.plan.luns[li].blocks_per_io;
        let mut h = [0u8; BHS_LEN];
        h[0] = op::SCSI_COMMAND;
        h[1] = 0x80 | if write { 0x20 } else { 0x40 } | 0x01; // F, W or R, SIMPLE
        h[8..16].copy_from_slice(&self.plan.luns[li].lun);
        h[16..20].copy_from_slice(&slot.to_be_bytes());
        h[20..24].copy_from_slice(&bs.to_be_bytes());
        h[24..28].copy_from_slice(&self.p.cmdsn.to_be_bytes());
        h[28..32].copy_from_slice(&self.p.expstatsn.to_be_bytes());
        h[32] = if write { 0x8A } else { 0x88 }; // WRITE(16) / READ(16)
        h[34..42].copy_from_slice(&lba.to_be_bytes());
        h[42..46].copy_from_slice(&blocks.to_be_bytes());
        let immediate = if write && self.p.immediate_data {
            (bs as usize)
                .min(self.p.first_burst)
                .min(self.p.target_max_recv)
        } else {
            0
        };
        self.push(h, 0, immediate);
        self.p.cmdsn = self.p.cmdsn.wrapping_add(1);
        self.tasks[slot as usize] = Task {
            busy: true,
            issued: Some(now),
            lun: li as u32,
            received: 0,
            misplaced: false,
        };
        self.outstanding += 1;
    }

    /// Queue a PDU whose data is `pattern[off..off + len]`.
    fn push(&mut self, mut h: [u8; BHS_LEN], off: usize, len: usize) {
        let b = (len as u32).to_be_bytes();
        h[5..8].copy_from_slice(&b[1..]);
        let mut pdu = OutPdu {
            head: [0; BHS_LEN + 4],
            head_len: BHS_LEN as u8,
            data_off: off as u32,
            data_len: len as u32,
            tail: [0; 8],
            tail_len: pad_len(len) as u8,
            echo: None,
        };
        pdu.head[..BHS_LEN].copy_from_slice(&h);
        if self.p.header_digest {
            let crc = digest::crc32c(&h).to_le_bytes();
            pdu.head[BHS_LEN..].copy_from_slice(&crc);
            pdu.head_len += 4;
        }
        if self.p.data_digest && len > 0 {
            let crc = digest::data_digest([&self.pattern[off..off + len]]).to_le_bytes();
            let t = pdu.tail_len as usize;
            pdu.tail[t..t + 4].copy_from_slice(&crc);
            pdu.tail_len += 4;
        }
        self.out.push_back(pdu);
    }

    fn queue_logout(&mut self) {
        let mut h = [0u8; BHS_LEN];
        h[0] = op::LOGOUT_REQUEST | 0x40;
        h[1] = 0x80; // close the session
        h[16..20].copy_from_slice(&LOGOUT_ITT.to_be_bytes());
        h[24..28].copy_from_slice(&self.p.cmdsn.to_be_bytes());
        h[28..32].copy_from_slice(&self.p.expstatsn.to_be_bytes());
        self.push(h, 0, 0);
        self.logout_sent = true;
    }

    /// Write as much of the queue as the socket takes, gathered.
    fn flush(&mut self) -> io::Result<()> {
        while !self.out.is_empty() {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let mut n = 0;
            let mut skip = self.out_head;
            'pdus: for pdu in &self.out {
                let data: &[u8] = match &pdu.echo {
                    Some(e) => e,
                    None => {
                        let off = pdu.data_off as usize;
                        &self.pattern[off..off + pdu.data_len as usize]
                    }
                };
                for part in [
                    &pdu.head[..pdu.head_len as usize],
                    data,
                    &pdu.tail[..pdu.tail_len as usize],
                ] {
                    if skip >= part.len() {
                        skip -= part.len();
                        continue;
                    }
                    iov[n] = IoSlice::new(&part[skip..]);
                    skip = 0;
                    n += 1;
                    if n == MAX_IOV {
                        break 'pdus;
                    }
                }
            }
            match self.stream.try_write_vectored(&iov[..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(mut w) => {
                    w += self.out_head;
                    while let Some(front) = self.out.front() {
                        let len = front.wire_len();
                        if w < len {
                            break;
                        }
                        w -= len;
                        self.out.pop_front();
                    }
                    self.out_head = w;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Read what arrived and handle every complete PDU in it.
    fn read_some(&mut self) -> io::Result<()> {
        if self.rpos == self.rend {
            self.rpos = 0;
            self.rend = 0;
        } else if self.rbuf.len() - self.rend < 4096 && self.rpos > 0 {
            self.rbuf.copy_within(self.rpos..self.rend, 0);
            self.rend -= self.rpos;
            self.rpos = 0;
        }
        match self.stream.try_read(&mut self.rbuf[self.rend..]) {
            Ok(0) => Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                // Keeps the thread polling (with --poll-us) while answers keep coming.
                crate::net::workers::spin::activity();
                self.rend += n;
                self.parse(Instant::now());
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn parse(&mut self, now: Instant) {
        let hd = if self.p.header_digest { 4 } else { 0 };
        let dd = if self.p.data_digest { 4 } else { 0 };
        let rbuf = std::mem::take(&mut self.rbuf);
        loop {
            if self.skip > 0 {
                let n = self.skip.min(self.rend - self.rpos);
                self.rpos += n;
                self.skip -= n;
                if self.skip > 0 {
                    break;
                }
            }
            let avail = self.rend - self.rpos;
            if avail < BHS_LEN {
                break;
            }
            let b = &rbuf[self.rpos..self.rpos + BHS_LEN];
            let head_len = BHS_LEN + b[4] as usize * 4 + hd;
            let dlen = be32(b, 4) as usize & 0x00FF_FFFF;
            let dtotal = dlen + pad_len(dlen) + if dlen > 0 { dd } else { 0 };
            if b[0] & 0x3F == op::DATA_IN {
                if avail < head_len {
                    break;
                }
                let mut h = [0u8; BHS_LEN];
                h.copy_from_slice(b);
                self.rpos += head_len;
                self.skip = dtotal;
                self.on_pdu(&h, &[], now);
                continue;
            }
            if avail < head_len + dtotal {
                if head_len + dtotal > rbuf.len() {
                    self.rbuf = rbuf;
                    self.grow(head_len + dtotal);
                    return;
                }
                break;
            }
            let mut h = [0u8; BHS_LEN];
            h.copy_from_slice(b);
            let data = &rbuf[self.rpos + head_len..self.rpos + head_len + dlen];
            self.on_pdu(&h, data, now);
            self.rpos += head_len + dtotal;
        }
        self.rbuf = rbuf;
    }

    /// Make room for a PDU larger than the receive buffer (a big NOP-In or text answer).
    fn grow(&mut self, need: usize) {
        self.rbuf.copy_within(self.rpos..self.rend, 0);
        self.rend -= self.rpos;
        self.rpos = 0;
        self.rbuf.resize(need.next_power_of_two(), 0);
    }

    fn on_pdu(&mut self, h: &[u8; BHS_LEN], data: &[u8], now: Instant) {
        let opcode = h[0] & 0x3F;
        let itt = be32(h, 16);
        // Every PDU a target sends in full feature phase carries MaxCmdSN at 32 (a Data-In
        // too, with or without status); the window only opens.
        let maxcmdsn = be32(h, 32);
        if (maxcmdsn.wrapping_sub(self.p.maxcmdsn) as i32) > 0 {
            self.p.maxcmdsn = maxcmdsn;
        }
        match opcode {
            op::DATA_IN => {
                self.on_data_in(itt, h);
                // The status collapsed into the last Data-In (S bit).
                if h[1] & 0x01 != 0 {
                    self.note_statsn(h);
                    self.complete(itt, h, &[], now);
                }
            }
            op::SCSI_RESPONSE => {
                self.note_statsn(h);
                if h[2] != 0 {
                    self.stats
                        .error(|| format!("iSCSI response {:#04x} for ITT {itt}", h[2]));
                    self.release(itt);
                } else {
                    let sense = if data.len() >= 2 {
                        let n = u16::from_be_bytes([data[0], data[1]]) as usize;
                        &data[2..(2 + n).min(data.len())]
                    } else {
                        &[]
                    };
                    self.complete(itt, h, sense, now);
                }
            }
            op::R2T => self.on_r2t(h),
            op::NOP_IN if itt == RESERVED_TAG && be32(h, 20) != RESERVED_TAG => {
                self.answer_ping(h, data);
            }
            op::LOGOUT_RESPONSE if itt == LOGOUT_ITT => self.done = true,
            op::REJECT => {
                self.note_statsn(h);
                let reason = h[2];
                let bad = if data.len() >= BHS_LEN {
                    be32(data, 16)
                } else {
                    RESERVED_TAG
                };
                self.stats
                    .error(|| format!("target rejected a PDU (reason {reason:#04x})"));
                self.release(bad);
            }
            // AsyncEvent 1: the target asks us to log out.
            op::ASYNC_MESSAGE if h[36] == 1 => self.stopping = true,
            _ => {}
        }
    }

    /// Count a Data-In's bytes into its task, checking that it lands where the previous one
    /// ended and within the transfer.
    fn on_data_in(&mut self, itt: u32, h: &[u8; BHS_LEN]) {
        let len = be32(h, 4) & 0x00FF_FFFF;
        let offset = be32(h, 40);
        let bs = self.plan.bs;
        let Some(t) = self.tasks.get_mut(itt as usize).filter(|t| t.busy) else {
            return;
        };
        if offset != t.received || t.received.saturating_add(len) > bs {
            t.misplaced = true;
        }
        t.received = t.received.saturating_add(len);
    }

    fn note_statsn(&mut self, h: &[u8; BHS_LEN]) {
        let next = be32(h, 24).wrapping_add(1);
        if (next.wrapping_sub(self.p.expstatsn) as i32) > 0 {
            self.p.expstatsn = next;
        }
    }

    /// Free a busy task slot; what it was.
    fn release(&mut self, itt: u32) -> Option<Task> {
        let t = self.tasks.get_mut(itt as usize)?;
        if !t.busy {
            return None;
        }
        t.busy = false;
        let task = *t;
        self.outstanding -= 1;
        self.free.push(itt);
        Some(task)
    }

    /// A command's status arrived (`h`: the SCSI Response, or the Data-In carrying it).
    fn complete(&mut self, itt: u32, h: &[u8; BHS_LEN], sense: &[u8], now: Instant) {
        let Some(Task {
            issued: Some(issued),
            lun,
            received,
            misplaced,
            ..
        }) = self.release(itt)
        else {
            self.stats
                .error(|| format!("status for unknown ITT {itt:#x}"));
            return;
        };
        let status = h[3];
        // GOOD counts only with every byte moved: a read got all its Data-In, in order, and
        // no residual (U or O bit) is reported either way.
        let write = matches!(self.plan.rw, Rw::RandWrite | Rw::Write);
        let expected = if write { 0 } else { self.plan.bs };
        let residual = h[1] & 0x06 != 0;
        if status == STATUS_GOOD && (misplaced || received != expected || residual) {
            let count = be32(h, 44);
            self.stats.error(|| {
                format!(
                    "GOOD with {received} of {expected} Data-In bytes (out of order: {misplaced}, \
                     residual flags {:#04x}, count {count})",
                    h[1] & 0x06
                )
            });
            return;
        }
        match status {
            STATUS_GOOD => {
                if now >= self.plan.measure_from && now < self.plan.measure_to {
                    let s = &mut self.stats;
                    s.ios += 1;
                    s.lun_ios[lun as usize] += 1;
                    s.bytes += self.plan.bs as u64;
                    s.hist
                        .record(now.saturating_duration_since(issued).as_nanos() as u64);
                    let sec = now
                        .saturating_duration_since(self.plan.measure_from)
                        .as_secs() as usize;
                    if let Some(c) = s.per_second.get_mut(sec) {
                        *c += 1;
                    }
                }
            }
            STATUS_CHECK_CONDITION if sense_key(sense) == Some(0x06) => {
                // UNIT ATTENTION: reported once per nexus; the closed loop issues another I/O.
                self.stats.unit_attentions += 1;
            }
            _ => {
                let key = sense_key(sense);
                self.stats.error(|| {
                    format!("status {status:#04x} (sense key {key:?}, sense {sense:02x?})")
                });
            }
        }
    }

    /// Send the part of a write the target asked for, in PDUs it accepts.
    fn on_r2t(&mut self, h: &[u8; BHS_LEN]) {
        let itt = be32(h, 16);
        let ttt = be32(h, 20);
        let offset = be32(h, 40) as usize;
        let len = be32(h, 44) as usize;
        let lun = match self.tasks.get(itt as usize) {
            Some(t) if t.busy && offset + len <= self.pattern.len() => {
                self.plan.luns[t.lun as usize].lun
            }
            _ => {
                self.stats
                    .error(|| format!("R2T for ITT {itt:#x} at {offset}+{len} does not fit"));
                return;
            }
        };
        let max = self.p.target_max_recv.max(512);
        let mut sent = 0;
        let mut datasn = 0u32;
        while sent < len {
            let n = (len - sent).min(max);
            let mut d = [0u8; BHS_LEN];
            d[0] = op::DATA_OUT;
            if sent + n == len {
                d[1] = 0x80;
            }
            d[8..16].copy_from_slice(&lun);
            d[16..20].copy_from_slice(&itt.to_be_bytes());
            d[20..24].copy_from_slice(&ttt.to_be_bytes());
            d[28..32].copy_from_slice(&self.p.expstatsn.to_be_bytes());
            d[36..40].copy_from_slice(&datasn.to_be_bytes());
            d[40..44].copy_from_slice(&((offset + sent) as u32).to_be_bytes());
            self.push(d, offset + sent, n);
            sent += n;
            datasn += 1;
        }
    }

    /// Answer a target NOP-In ping: NOP-Out, ITT reserved, its TTT and data echoed.
    fn answer_ping(&mut self, h: &[u8; BHS_LEN], data: &[u8]) {
        let mut o = [0u8; BHS_LEN];
        o[0] = op::NOP_OUT | 0x40;
        o[1] = 0x80;
        o[8..16].copy_from_slice(&h[8..16]);
        o[16..20].copy_from_slice(&RESERVED_TAG.to_be_bytes());
        o[20..24].copy_from_slice(&h[20..24]);
        o[24..28].copy_from_slice(&self.p.cmdsn.to_be_bytes());
        o[28..32].copy_from_slice(&self.p.expstatsn.to_be_bytes());
        self.push(o, 0, 0);
        if !data.is_empty() {
            let pdu = self.out.back_mut().expect("just pushed");
            let len = data.len();
            pdu.head[5..8].copy_from_slice(&(len as u32).to_be_bytes()[1..]);
            if self.p.header_digest {
                let crc = digest::crc32c(&pdu.head[..BHS_LEN]).to_le_bytes();
                pdu.head[BHS_LEN..].copy_from_slice(&crc);
            }
            pdu.data_len = len as u32;
            pdu.tail = [0; 8];
            pdu.tail_len = pad_len(len) as u8;
            if self.p.data_digest {
                let crc = digest::data_digest([data]).to_le_bytes();
                let t = pdu.tail_len as usize;
                pdu.tail[t..t + 4].copy_from_slice(&crc);
                pdu.tail_len += 4;
            }
            pdu.echo = Some(data.into());
        }
    }
}

/// Sense key of fixed or descriptor format sense data.
fn sense_key(sense: &[u8]) -> Option<u8> {
    match sense.first()? & 0x7F {
        0x70 | 0x71 if sense.len() >= 3 => Some(sense[2] & 0x0F),
        0x72 | 0x73 if sense.len() >= 2 => Some(sense[1] & 0x0F),
        _ => None,
    }
}

/// How long after the measured period a session waits for its last commands.
pub(super) const DRAIN: Duration = Duration::from_secs(15);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_below_stays_in_range_and_spreads() {
        let mut r = Rng(0x1234_5678_9abc_def1);
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            let v = r.below(10);
            assert!(v < 10);
            seen[v as usize] += 1;
        }
        assert!(seen.iter().all(|&c| c > 800), "{seen:?}");
    }

    #[test]
    fn serial_window() {
        assert!(serial_le(5, 5));
        assert!(serial_le(5, 6));
        assert!(!serial_le(6, 5));
        assert!(serial_le(0xFFFF_FFFF, 1));
    }

    /// A Data-In (`status`: with the S bit and GOOD) or, with `len` None, a SCSI Response.
    fn answer(itt: u32, offset: u32, len: Option<u32>, status: bool, flags: u8) -> [u8; BHS_LEN] {
        let mut h = [0u8; BHS_LEN];
        match len {
            Some(len) => {
                h[0] = op::DATA_IN;
                h[1] = 0x80 | flags | u8::from(status);
                h[5..8].copy_from_slice(&len.to_be_bytes()[1..]);
                h[40..44].copy_from_slice(&offset.to_be_bytes());
            }
            None => {
                h[0] = op::SCSI_RESPONSE;
                h[1] = 0x80 | flags;
            }
        }
        h[16..20].copy_from_slice(&itt.to_be_bytes());
        h
    }

    #[tokio::test]
    async fn good_counts_only_with_all_its_data_in_order() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let now = Instant::now();
        let plan = Plan {
            luns: vec![LunPlan {
                lun: [0; 8],
                positions: 16,
                blocks_per_io: 8,
            }],
            rw: Rw::RandRead,
            bs: 4096,
            session: 0,
            sessions: 1,
            qd: 6,
            seed: 1,
            measure_from: now,
            measure_to: now + Duration::from_secs(60),
            drain_deadline: now + Duration::from_secs(60),
            seconds: 60,
        };
        let params = SessionParams {
            cmdsn: 1,
            expstatsn: 1,
            maxcmdsn: 64,
            target_max_recv: 8192,
            first_burst: 65536,
            max_burst: 262_144,
            immediate_data: true,
            initial_r2t: false,
            header_digest: false,
            data_digest: false,
        };
        let mut e = Engine::new(stream, params, plan);
        for slot in 0..6 {
            e.issue(slot, now);
        }
        let later = now + Duration::from_millis(1);
        // All 4 KiB with the status: counted.
        e.on_pdu(&answer(0, 0, Some(4096), true, 0), &[], later);
        // All of it in two PDUs, then a SCSI Response: counted.
        e.on_pdu(&answer(1, 0, Some(2048), false, 0), &[], later);
        e.on_pdu(&answer(1, 2048, Some(2048), false, 0), &[], later);
        e.on_pdu(&answer(1, 0, None, false, 0), &[], later);
        assert_eq!((e.stats.ios, e.stats.errors, e.stats.bytes), (2, 0, 8192));
        // Half the data, GOOD, no residual flag: an error, not an I/O.
        e.on_pdu(&answer(2, 0, Some(2048), true, 0), &[], later);
        // Underflow reported (U bit) with all the bytes claimed: an error.
        e.on_pdu(&answer(3, 0, Some(4096), true, 0x02), &[], later);
        // The same half twice: out of order.
        e.on_pdu(&answer(4, 0, Some(2048), false, 0), &[], later);
        e.on_pdu(&answer(4, 0, Some(2048), true, 0), &[], later);
        // More than asked for.
        e.on_pdu(&answer(5, 0, Some(8192), true, 0), &[], later);
        assert_eq!((e.stats.ios, e.stats.errors, e.stats.bytes), (2, 4, 8192));
        assert!(e
            .stats
            .first_error
            .as_deref()
            .unwrap()
            .contains("2048 of 4096"));
        assert_eq!(e.outstanding, 0);
    }

    #[test]
    fn sense_keys() {
        assert_eq!(sense_key(&[0x70, 0, 0x06, 0, 0, 0, 0, 10]), Some(6));
        assert_eq!(sense_key(&[0x72, 0x05, 0x24, 0]), Some(5));
        assert_eq!(sense_key(&[]), None);
    }
}
