//! The random source of randomized tests: a fixed seed per test, so CI repeats itself and a
//! failure can be replayed; `VVOLD_FUZZ_SEED=N` mixes N in, to explore other cases.

use rand::rngs::StdRng;
use rand::SeedableRng;

/// The generator for a test whose own seed is `default`.
pub(crate) fn rng(default: u64) -> StdRng {
    let extra = std::env::var("VVOLD_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0);
    StdRng::seed_from_u64(default ^ extra)
}
