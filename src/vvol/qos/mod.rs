//! Per-VVol I/O control (issue 5). Tier 1 is the IOPS cap: a lock-free GCRA per volume,
//! shared by every session and path of that volume (see `shared/reference/qos-design-study.md`
//! §6). Costs are normalized: one unit per started 32 KiB, as ESXi's own per-disk limits count.

pub mod arbiter;
pub mod gate;
pub mod gcra;
mod heap;
pub mod stats;

pub use arbiter::{Arbiter, Phase, PhaseCounts, VolKey};
pub use gate::{Gate, Leave, Offer};
pub use gcra::CapLimiter;

/// Default normalization unit: 32 KiB.
pub const DEFAULT_UNIT_BYTES: u32 = 32 * 1024;

/// Normalized cost of one I/O of `len` bytes: ceil(len / unit), at least 1. Defined with the
/// backends, whose emulated disk (`rated`) counts its capacity in the same units.
pub use crate::backend::io_units as cost;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_are_normalized_to_32k() {
        assert_eq!(cost(0, DEFAULT_UNIT_BYTES), 1);
        assert_eq!(cost(4096, DEFAULT_UNIT_BYTES), 1);
        assert_eq!(cost(32 * 1024, DEFAULT_UNIT_BYTES), 1);
        assert_eq!(cost(32 * 1024 + 1, DEFAULT_UNIT_BYTES), 2);
        assert_eq!(cost(256 * 1024, DEFAULT_UNIT_BYTES), 8);
        assert_eq!(cost(256 * 1024, 0), 1, "unit 0 counts I/Os");
    }
}
