//! A fast per-shard random generator (xorshift64*) for balancing and sampling
//! decisions, never for secrets: each shard seeds its own `Cell<u64>`.

use std::cell::Cell;

/// Whether this call is in a sample of `share` (0.0 to 1.0) of calls, drawn
/// from the shard's generator (never when `share` is 0, always without a draw
/// when it is 1).
pub fn sampled(state: &Cell<u64>, share: f64) -> bool {
    share >= 1.0 || (share > 0.0 && ((next_random(state) % 1_000_000) as f64) < share * 1_000_000.0)
}

/// xorshift64*: a fast per-shard generator for balancing decisions (not for secrets).
pub fn next_random(state: &Cell<u64>) -> u64 {
    let mut x = state.get();
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    state.set(x);
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_take_their_share() {
        let rng = Cell::new(0x1234_5678_9abc_def1);
        let count = |share: f64| (0..100_000).filter(|_| sampled(&rng, share)).count();
        assert_eq!(count(0.0), 0);
        assert_eq!(count(1.0), 100_000);
        let quarter = count(0.25);
        assert!((24_000..26_000).contains(&quarter), "{quarter}");
    }
}
