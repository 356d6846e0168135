//! Bookkeeping of one write command's data transfer (RFC 7143 §4.2.4, §11.7, §11.8):
//! immediate data, unsolicited Data-Out up to FirstBurstLength, and R2T-solicited bursts of at
//! most MaxBurstLength with at most MaxOutstandingR2T outstanding. It decides where every
//! Data-Out byte lands in the command's buffer and what R2Ts to send; it validates DataSN,
//! offsets and lengths. The transport does the reading.

use super::pdu::DataOut;
use crate::scsi::{Sense, SenseKey};

/// Negotiated limits that shape a write's data transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferLimits {
    pub first_burst: u32,
    pub max_burst: u32,
    pub max_outstanding_r2t: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
}

/// A protocol error in the data phase. Under ErrorRecoveryLevel 0 the command ends with
/// CHECK CONDITION (ABORTED COMMAND) rather than recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    #[error("immediate data not allowed or longer than FirstBurstLength")]
    ImmediateData,
    #[error("unsolicited Data-Out not allowed (InitialR2T=Yes or F bit set)")]
    Unsolicited,
    #[error("unexpected DataSN {got}, expected {expected}")]
    DataSn { got: u32, expected: u32 },
    #[error("unexpected buffer offset {got}, expected {expected}")]
    Offset { got: u32, expected: u32 },
    #[error("Data-Out longer than the burst")]
    Length,
    #[error("Data-Out for an unknown target transfer tag")]
    UnknownTtt,
    #[error("F bit set before the burst was complete")]
    ShortBurst,
}

impl TransferError {
    /// The sense a command ends with after this error: ABORTED COMMAND with the SAM data-phase
    /// code that names it.
    pub fn sense(&self) -> Sense {
        let ascq = match self {
            TransferError::Offset { .. } => 0x05, // DATA OFFSET ERROR
            TransferError::UnknownTtt => 0x01,    // INVALID TARGET PORT TRANSFER TAG RECEIVED
            TransferError::Length => 0x02,        // TOO MUCH WRITE DATA
            _ => 0x00,                            // DATA PHASE ERROR
        };
        Sense::new(SenseKey::AbortedCommand, 0x4B, ascq)
    }
}

/// Where the bytes of one Data-Out (or immediate data) go: `take` bytes into the command
/// buffer at `buffer_offset`, then `discard` bytes dropped (data beyond what the command uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub buffer_offset: usize,
    pub take: usize,
    pub discard: usize,
}

/// An R2T to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct R2tRequest {
    pub ttt: u32,
    pub r2tsn: u32,
    pub offset: u32,
    pub len: u32,
}

#[derive(Debug, Clone)]
struct Burst {
    ttt: u32,
    offset: u32,
    len: u32,
    received: u32,
    next_datasn: u32,
}

#[derive(Debug, Clone)]
pub struct WriteTransfer {
    /// Bytes the command will use (≤ expected length); the buffer is this long.
    need: u32,
    unsolicited_end: u32,
    unsolicited_received: u32,
    unsolicited_next_datasn: u32,
    unsolicited_done: bool,
    next_solicit: u32,
    next_r2tsn: u32,
    bursts: Vec<Burst>,
    limits: TransferLimits,
}

impl WriteTransfer {
    /// Start a transfer for a command with `expected_len` (EDTL) of which the command uses
    /// `need` bytes, carrying `immediate_len` bytes of immediate data and the command PDU's F
    /// bit (`final_bit`: no unsolicited Data-Out follows).
    pub fn new(
        expected_len: u32,
        need: u32,
        immediate_len: u32,
        final_bit: bool,
        limits: TransferLimits,
    ) -> Result<WriteTransfer, TransferError> {
        if immediate_len > 0
            && (!limits.immediate_data
                || immediate_len > limits.first_burst
                || immediate_len > expected_len)
        {
            return Err(TransferError::ImmediateData);
        }
        if !final_bit && limits.initial_r2t {
            return Err(TransferError::Unsolicited);
        }
        let unsolicited_end = if final_bit {
            immediate_len
        } else {
            expected_len.min(limits.first_burst).max(immediate_len)
        };
        Ok(WriteTransfer {
            need,
            unsolicited_end,
            unsolicited_received: immediate_len,
            unsolicited_next_datasn: 0,
            unsolicited_done: final_bit || immediate_len == unsolicited_end,
            next_solicit: unsolicited_end,
            next_r2tsn: 0,
            bursts: Vec::new(),
            limits,
        })
    }

    /// Where immediate data of `len` bytes goes.
    pub fn place_immediate(&self, len: u32) -> Placement {
        self.place(0, len)
    }

    fn place(&self, offset: u32, len: u32) -> Placement {
        let start = offset.min(self.need);
        let end = offset.saturating_add(len).min(self.need);
        let take = end - start;
        Placement {
            buffer_offset: start as usize,
            take: take as usize,
            discard: (len - take) as usize,
        }
    }

    /// Validate a Data-Out header carrying `len` bytes and say where its bytes go.
    pub fn on_data_out(&mut self, d: &DataOut, len: u32) -> Result<Placement, TransferError> {
        if d.ttt == 0xFFFF_FFFF {
            if self.unsolicited_done {
                return Err(TransferError::Unsolicited);
            }
            if d.datasn != self.unsolicited_next_datasn {
                return Err(TransferError::DataSn {
                    got: d.datasn,
                    expected: self.unsolicited_next_datasn,
                });
            }
            if d.buffer_offset != self.unsolicited_received {
                return Err(TransferError::Offset {
                    got: d.buffer_offset,
                    expected: self.unsolicited_received,
                });
            }
            let end = d
                .buffer_offset
                .checked_add(len)
                .ok_or(TransferError::Length)?;
            if end > self.unsolicited_end {
                return Err(TransferError::Length);
            }
            if d.final_bit && end != self.unsolicited_end {
                return Err(TransferError::ShortBurst);
            }
            self.unsolicited_received = end;
            self.unsolicited_next_datasn += 1;
            self.unsolicited_done = d.final_bit;
            return Ok(self.place(d.buffer_offset, len));
        }
        let idx = self
            .bursts
            .iter()
            .position(|b| b.ttt == d.ttt)
            .ok_or(TransferError::UnknownTtt)?;
        let b = &mut self.bursts[idx];
        if d.datasn != b.next_datasn {
            return Err(TransferError::DataSn {
                got: d.datasn,
                expected: b.next_datasn,
            });
        }
        let expected = b.offset + b.received;
        if d.buffer_offset != expected {
            return Err(TransferError::Offset {
                got: d.buffer_offset,
                expected,
            });
        }
        if b.received.checked_add(len).is_none_or(|r| r > b.len) {
            return Err(TransferError::Length);
        }
        b.received += len;
        b.next_datasn += 1;
        if d.final_bit {
            if b.received != b.len {
                return Err(TransferError::ShortBurst);
            }
            self.bursts.swap_remove(idx);
        }
        Ok(self.place(d.buffer_offset, len))
    }

    /// R2Ts that may be sent now; `alloc_ttt` hands out connection-unique transfer tags.
    pub fn next_r2ts(&mut self, mut alloc_ttt: impl FnMut() -> u32) -> Vec<R2tRequest> {
        let mut out = Vec::new();
        while self.next_solicit < self.need
            && (self.bursts.len() as u32) < self.limits.max_outstanding_r2t
        {
            let len = (self.need - self.next_solicit).min(self.limits.max_burst);
            let r = R2tRequest {
                ttt: alloc_ttt(),
                r2tsn: self.next_r2tsn,
                offset: self.next_solicit,
                len,
            };
            self.bursts.push(Burst {
                ttt: r.ttt,
                offset: r.offset,
                len,
                received: 0,
                next_datasn: 0,
            });
            self.next_solicit += len;
            self.next_r2tsn += 1;
            out.push(r);
        }
        out
    }

    /// All data the command needs has arrived and no Data-Out is still owed to us.
    pub fn is_complete(&self) -> bool {
        self.unsolicited_done && self.bursts.is_empty() && self.next_solicit >= self.need
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::pdu::{Itt, SerialNumber};
    use crate::scsi::Lun;

    const LIMITS: TransferLimits = TransferLimits {
        first_burst: 8192,
        max_burst: 16384,
        max_outstanding_r2t: 2,
        initial_r2t: false,
        immediate_data: true,
    };

    fn dout(ttt: u32, datasn: u32, offset: u32, final_bit: bool) -> DataOut {
        DataOut {
            final_bit,
            lun: Lun::single(0),
            itt: Itt(1),
            ttt,
            expstatsn: SerialNumber(0),
            datasn,
            buffer_offset: offset,
        }
    }

    #[test]
    fn immediate_only() {
        let t = WriteTransfer::new(4096, 4096, 4096, true, LIMITS).unwrap();
        assert!(t.is_complete());
        assert_eq!(
            t.place_immediate(4096),
            Placement {
                buffer_offset: 0,
                take: 4096,
                discard: 0
            }
        );
    }

    #[test]
    fn immediate_unsolicited_then_r2t() {
        let mut t = WriteTransfer::new(40960, 40960, 4096, false, LIMITS).unwrap();
        let mut tag = 100;
        let r2ts = t.next_r2ts(|| {
            tag += 1;
            tag
        });
        // 8192 unsolicited; 32768 solicited in two bursts of 16384.
        assert_eq!(r2ts.len(), 2);
        assert_eq!(
            (r2ts[0].offset, r2ts[0].len, r2ts[0].r2tsn),
            (8192, 16384, 0)
        );
        assert_eq!(
            (r2ts[1].offset, r2ts[1].len, r2ts[1].r2tsn),
            (24576, 16384, 1)
        );
        let p = t
            .on_data_out(&dout(0xFFFF_FFFF, 0, 4096, true), 4096)
            .unwrap();
        assert_eq!(p.buffer_offset, 4096);
        assert!(!t.is_complete());
        t.on_data_out(&dout(101, 0, 8192, false), 8192).unwrap();
        t.on_data_out(&dout(101, 1, 16384, true), 8192).unwrap();
        t.on_data_out(&dout(102, 0, 24576, true), 16384).unwrap();
        assert!(t.is_complete());
    }

    #[test]
    fn bad_datasn_and_offset_are_errors() {
        let mut t = WriteTransfer::new(8192, 8192, 0, true, LIMITS).unwrap();
        let r = t.next_r2ts(|| 7);
        assert_eq!(r.len(), 1);
        assert_eq!(
            t.on_data_out(&dout(7, 27, 0, false), 512),
            Err(TransferError::DataSn {
                got: 27,
                expected: 0
            })
        );
        assert_eq!(
            t.on_data_out(&dout(7, 0, 512, false), 512),
            Err(TransferError::Offset {
                got: 512,
                expected: 0
            })
        );
        assert_eq!(
            t.on_data_out(&dout(8, 0, 0, false), 512),
            Err(TransferError::UnknownTtt)
        );
    }

    #[test]
    fn underflow_discards_surplus_unsolicited_bytes() {
        // EDTL 8192 but the command uses 512 bytes.
        let mut t = WriteTransfer::new(8192, 512, 1024, false, LIMITS).unwrap();
        assert_eq!(
            t.place_immediate(1024),
            Placement {
                buffer_offset: 0,
                take: 512,
                discard: 512
            }
        );
        assert!(t.next_r2ts(|| 1).is_empty());
        let p = t
            .on_data_out(&dout(0xFFFF_FFFF, 0, 1024, true), 7168)
            .unwrap();
        assert_eq!(
            p,
            Placement {
                buffer_offset: 512,
                take: 0,
                discard: 7168
            }
        );
        assert!(t.is_complete());
    }

    #[test]
    fn immediate_data_refused_when_not_negotiated() {
        let l = TransferLimits {
            immediate_data: false,
            ..LIMITS
        };
        assert_eq!(
            WriteTransfer::new(512, 512, 512, true, l).unwrap_err(),
            TransferError::ImmediateData
        );
    }

    /// Records where placements put bytes; checks each stays inside the command's buffer.
    struct Coverage(Vec<u8>);

    impl Coverage {
        fn mark(&mut self, p: Placement, len: u32) {
            assert_eq!(p.take + p.discard, len as usize, "{p:?}");
            let end = p.buffer_offset + p.take;
            assert!(end <= self.0.len(), "{p:?} beyond {}", self.0.len());
            self.0[p.buffer_offset..end]
                .iter_mut()
                .for_each(|c| *c += 1);
        }
    }

    #[test]
    fn any_legal_transfer_fills_every_byte_once_and_completes_at_its_end() {
        use rand::Rng;
        let mut rng = crate::seeded::rng(0x7EA5);
        for _ in 0..5_000 {
            let first_burst = rng.gen_range(1..=64) * 512;
            let limits = TransferLimits {
                first_burst,
                max_burst: first_burst.max(rng.gen_range(1..=64) * 512),
                max_outstanding_r2t: rng.gen_range(1..=4),
                initial_r2t: rng.gen(),
                immediate_data: rng.gen(),
            };
            let edtl = rng.gen_range(0..=200_000u32);
            let need = rng.gen_range(0..=edtl);
            let imm = if limits.immediate_data {
                rng.gen_range(0..=edtl.min(first_burst))
            } else {
                0
            };
            let final_bit = limits.initial_r2t || rng.gen();
            let mut t = WriteTransfer::new(edtl, need, imm, final_bit, limits).unwrap();
            let mut seen = Coverage(vec![0; need as usize]);
            seen.mark(t.place_immediate(imm), imm);
            if !final_bit {
                // Unsolicited Data-Out up to FirstBurstLength, in random pieces.
                let end = edtl.min(first_burst).max(imm);
                let (mut at, mut datasn) = (imm, 0);
                while at < end {
                    let n = rng.gen_range(1..=end - at);
                    let d = dout(0xFFFF_FFFF, datasn, at, at + n == end);
                    seen.mark(t.on_data_out(&d, n).unwrap(), n);
                    (at, datasn) = (at + n, datasn + 1);
                }
            }
            // Answer the R2Ts in random order and pieces: (R2T, bytes sent, next DataSN).
            let mut next_ttt = 0;
            let mut open: Vec<(R2tRequest, u32, u32)> = Vec::new();
            loop {
                let fresh = t.next_r2ts(|| {
                    next_ttt += 1;
                    next_ttt
                });
                open.extend(fresh.into_iter().map(|r| (r, 0, 0)));
                assert!(open.len() as u32 <= limits.max_outstanding_r2t);
                if open.is_empty() {
                    break;
                }
                assert!(!t.is_complete());
                let i = rng.gen_range(0..open.len());
                let (r, sent, datasn) = &mut open[i];
                assert!(r.len <= limits.max_burst);
                let n = rng.gen_range(1..=r.len - *sent);
                let last = *sent + n == r.len;
                let d = dout(r.ttt, *datasn, r.offset + *sent, last);
                seen.mark(t.on_data_out(&d, n).unwrap(), n);
                (*sent, *datasn) = (*sent + n, *datasn + 1);
                if last {
                    open.swap_remove(i);
                }
            }
            assert!(t.is_complete());
            assert!(
                seen.0.iter().all(|&c| c == 1),
                "a byte missed or written twice"
            );
        }
    }

    #[test]
    fn hostile_data_out_never_lands_outside_the_buffer() {
        use rand::Rng;
        let mut rng = crate::seeded::rng(0xBAD0);
        for _ in 0..2_000 {
            let need = rng.gen_range(0..=65_536u32);
            let Ok(mut t) = WriteTransfer::new(need, need, 0, rng.gen(), LIMITS) else {
                continue;
            };
            let mut seen = Coverage(vec![0; need as usize]);
            let (mut ttts, mut next_ttt) = (vec![0xFFFF_FFFF, 0x7777], 0);
            for _ in 0..rng.gen_range(1..40) {
                let fresh = t.next_r2ts(|| {
                    next_ttt += 1;
                    next_ttt
                });
                ttts.extend(fresh.iter().map(|r| r.ttt));
                let d = dout(
                    ttts[rng.gen_range(0..ttts.len())],
                    rng.gen_range(0..4),
                    if rng.gen() {
                        rng.gen()
                    } else {
                        rng.gen_range(0..need + 1)
                    },
                    rng.gen(),
                );
                let n = if rng.gen() {
                    rng.gen()
                } else {
                    rng.gen_range(0..20_000)
                };
                if let Ok(p) = t.on_data_out(&d, n) {
                    seen.mark(p, n);
                }
            }
            assert!(seen.0.iter().all(|&c| c <= 1), "a byte written twice");
        }
    }
}
