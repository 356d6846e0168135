//! How a read's data is cut into Data-In PDUs (RFC 7143 §11.7): none longer than the
//! initiator's MaxRecvDataSegmentLength, and no sequence (the PDUs up to one with the F bit)
//! longer than MaxBurstLength, so a PDU never straddles a burst boundary.

/// One Data-In PDU's slice of the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub offset: usize,
    pub end: usize,
    /// The F bit: this PDU ends a sequence (a burst, or the data).
    pub ends_sequence: bool,
}

/// The pieces of `len` bytes, in order. Limits below 512 bytes, which negotiation never
/// yields, count as 512.
pub fn pieces(len: usize, max_segment: usize, max_burst: usize) -> impl Iterator<Item = Piece> {
    let max_segment = max_segment.max(512);
    let max_burst = max_burst.max(512);
    let mut offset = 0;
    std::iter::from_fn(move || {
        if offset >= len {
            return None;
        }
        let burst_end = (offset / max_burst + 1) * max_burst;
        let end = (offset + max_segment).min(burst_end).min(len);
        let piece = Piece {
            offset,
            end,
            ends_sequence: end == len || end == burst_end,
        };
        offset = end;
        Some(piece)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(len: usize, seg: usize, burst: usize) -> Vec<(usize, usize, bool)> {
        pieces(len, seg, burst)
            .map(|p| (p.offset, p.end, p.ends_sequence))
            .collect()
    }

    #[test]
    fn segments_that_divide_the_burst() {
        assert_eq!(
            layout(10_000, 4096, 8192),
            [(0, 4096, false), (4096, 8192, true), (8192, 10_000, true)]
        );
        assert_eq!(layout(4096, 8192, 65536), [(0, 4096, true)]);
        assert!(layout(0, 8192, 65536).is_empty());
    }

    #[test]
    fn a_segment_never_crosses_a_burst_boundary() {
        // Linux offers 256 KiB segments; a target limited to 64 KiB bursts must still end a
        // sequence every 64 KiB.
        let p = layout(300 * 1024, 256 * 1024, 64 * 1024);
        assert_eq!(p.len(), 5);
        for (offset, end, fin) in &p {
            assert!(end - offset <= 64 * 1024);
            assert!(*fin, "every PDU ends a 64 KiB burst or the data");
        }
        // A segment size that does not divide the burst is cut at the boundary.
        assert_eq!(
            layout(12_000, 5000, 8192),
            [(0, 5000, false), (5000, 8192, true), (8192, 12_000, true)]
        );
    }

    #[test]
    fn every_byte_once_and_no_sequence_too_long() {
        for (len, seg, burst) in [(1 << 20, 262_144, 262_144), (777_777, 8192, 65536)] {
            let p: Vec<_> = pieces(len, seg, burst).collect();
            assert_eq!(p.first().map(|p| p.offset), Some(0));
            assert_eq!(
                p.last().map(|p| (p.end, p.ends_sequence)),
                Some((len, true))
            );
            let mut run = 0;
            for w in p.windows(2) {
                assert_eq!(w[0].end, w[1].offset);
            }
            for piece in &p {
                assert!(piece.end - piece.offset <= seg);
                run += piece.end - piece.offset;
                assert!(run <= burst);
                if piece.ends_sequence {
                    run = 0;
                }
            }
        }
    }
}
