//! Dropout ([`crate::dropout`], and attention's dropout on its probabilities).

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{Result, Tensor};

use super::kernels_for;

/// `x` with each element kept with probability `1 - p` and scaled by
/// `1 / (1 - p)`, else multiplied by zero: `replica_kernels::dropout` (a
/// counter-based mask from a fresh seed, recomputed by the backward), or the
/// composition of candle's uniform draws, a comparison and a product.
pub fn dropout(x: &Tensor, p: f64) -> Result<Tensor> {
    if kernels_for(x) {
        return replica_kernels::dropout(x, p, fresh_seed());
    }
    let mask = crate::dropout::keep_mask(x.dims(), p, x.dtype(), x.device())?;
    x.mul(&mask.affine(1.0 / (1.0 - p), 0.0)?)
}

/// A seed no other call in this process has had: a call counter hashed with
/// std's randomly keyed hasher (a new random key per process).
pub(crate) fn fresh_seed() -> u64 {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(CALLS.fetch_add(1, Ordering::Relaxed));
    hasher.finish()
}
