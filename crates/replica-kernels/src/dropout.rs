//! Dropout (Hinton et al., arXiv 1207.0580, as `torch.nn.Dropout`): each element
//! kept with probability `1 - p` and scaled by `1 / (1 - p)`, else multiplied by 0.
//!
//! The mask is a function of a seed and each element's index (a counter-based
//! generator), not a stored tensor: the backward recomputes it from the seed, and
//! an element costs a few 32-bit integer operations, where candle's `rand` draws a
//! ChaCha stream and four more passes compare, convert, scale and multiply. Both
//! routes (the f32 kernel on the CPU, the composition for other dtypes and
//! devices) drop the same elements for a seed.
//!
//! The hash is 32-bit so that it vectorises natively (16 lanes on AVX-512, 8 on
//! AVX2): a 64-bit one (SplitMix64 per element) needed 64-bit products, which
//! AVX2 and AVX-512F emulate with three 32-bit ones each, and took 6% of a
//! `mingpt_char` training step.

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

use crate::cpu::{self, Route};
use crate::simd::Simd;
use crate::simd_dispatch;

/// The `threshold` below which an element's 32-bit hash drops it: `p · 2³²`, so
/// an element is kept with probability `1 - p` (to within 2⁻³²).
fn threshold(p: f64) -> u64 {
    (p * 4_294_967_296.0).round() as u64
}

/// A dropout mask: drop probability `p` drawn by `seed`, the kept elements scaled
/// by `1 / (1 - p)` rounded to f32 (as torch scales).
#[derive(Clone, Copy, Debug)]
pub(crate) struct MaskDraw {
    seed: u64,
    threshold: u64,
    scale: f32,
}

impl MaskDraw {
    pub(crate) fn new(p: f64, seed: u64) -> Self {
        Self {
            seed,
            threshold: threshold(p),
            scale: (1.0 / (1.0 - p)) as f32,
        }
    }

    /// `x[c] ·= ` the scaled mask of element `first + c` (`x · 0` where dropped, as
    /// torch multiplies: NaN and infinities stay visible).
    pub(crate) fn apply(&self, x: &mut [f32], first: usize) {
        apply_dispatch(x, first, self.seed, self.threshold, self.scale)
    }
}

/// See [`MaskDraw::apply`]. Plain loops that the compiler vectorises inside each
/// backend's target features, so it takes the dispatch's `S` only for that: one
/// per run of indices that share their high 32 bits (and so the hash's keys).
#[inline(always)]
#[allow(clippy::extra_unused_type_parameters)]
fn apply<S: Simd>(x: &mut [f32], first: usize, seed: u64, threshold: u64, scale: f32) {
    // p = 1 (the threshold 2³²): nothing is kept, and no 32-bit hash reaches it.
    let (threshold, scale) = match u32::try_from(threshold) {
        Ok(t) => (t, scale),
        Err(_) => (u32::MAX, 0.0),
    };
    let mut done = 0;
    while done < x.len() {
        let index = (first + done) as u64;
        let run = ((1u64 << 32) - (index & 0xffff_ffff)).min((x.len() - done) as u64) as usize;
        let keys = hash_keys(seed, index >> 32);
        let low = index as u32;
        for (i, x) in x[done..done + run].iter_mut().enumerate() {
            let h = hash(low.wrapping_add(i as u32), keys);
            *x *= if h >= threshold { scale } else { 0.0 };
        }
        done += run;
    }
}

simd_dispatch!(fn apply_dispatch(x: &mut [f32], first: usize, seed: u64, threshold: u64, scale: f32) => apply);

/// Whether element `index` is kept under `seed` and `threshold` (what [`apply`]
/// decides for it).
fn keeps(seed: u64, index: usize, threshold: u64) -> bool {
    let index = index as u64;
    u64::from(hash(index as u32, hash_keys(seed, index >> 32))) >= threshold
}

/// The two 32-bit keys of [`hash`] for the indices whose high 32 bits are
/// `high`: SplitMix64 (Steele et al., 2014) of the seed and `high`.
fn hash_keys(seed: u64, high: u64) -> (u32, u32) {
    let mut z = seed.wrapping_add(high.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z as u32, (z >> 32) as u32)
}

/// A keyed 32-bit hash of an index's low 32 bits: the two multiply-xorshift rounds
/// of Wellons' `lowbias32`, the second key mixed in between them (a key applied
/// only before the rounds would make every seed's mask a relabelling of one
/// other's). A bijection of `low` for fixed keys.
#[inline(always)]
fn hash(low: u32, (k1, k2): (u32, u32)) -> u32 {
    let mut x = low ^ k1;
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= (x >> 15) ^ k2;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

/// Dropout of `x` with drop probability `p` (in `[0, 1]`) and the mask drawn by
/// `seed`: the kept elements times `1 / (1 - p)` (rounded to f32, as torch
/// scales), the others times zero. The same `x` shape, `p` and `seed` give the same
/// mask; the gradient is the upstream gradient under the same mask and scale.
pub fn dropout(x: &Tensor, p: f64, seed: u64) -> Result<Tensor> {
    if !(0.0..=1.0).contains(&p) {
        bail!("dropout: the drop probability must be in [0, 1], got {p}")
    }
    let op = DropoutOp { p, seed };
    match cpu::route("dropout", x)? {
        Route::Kernel => x.contiguous()?.apply_op1(op),
        // torch scales half-precision tensors in their own precision: so does the composition.
        Route::KernelViaF32 | Route::Composition => crate::reference::dropout(x, p, seed),
    }
}

/// The scaled mask (`1 / (1 - p)` where kept, 0 where dropped) for `len`
/// elements: what [`dropout`] multiplies by, for the composition.
pub(crate) fn scaled_mask(len: usize, p: f64, seed: u64) -> Vec<f64> {
    let (t, scale) = (threshold(p), 1.0 / (1.0 - p));
    (0..len).map(|i| if keeps(seed, i, t) { scale } else { 0.0 }).collect()
}

struct DropoutOp {
    p: f64,
    seed: u64,
}

impl CustomOp1 for DropoutOp {
    fn name(&self) -> &'static str {
        "replica-dropout"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu::f32_slice(self.name(), storage, layout)?;
        let mask = MaskDraw::new(self.p, self.seed);
        let mut y = cpu::output_buffer(x.len());
        cpu::for_row_chunks(&mut y, 1, 8, |first, out| {
            // In pieces that stay in L1 between the copy and the mask.
            for (n, piece) in out.chunks_mut(4096).enumerate() {
                let at = first + 4096 * n;
                piece.copy_from_slice(&x[at..at + piece.len()]);
                mask.apply(piece, at);
            }
        });
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        // dy/dx is the scaled mask: the same dropout of the upstream gradient.
        Ok(Some(dropout(g, self.p, self.seed)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectorised runs agree with the per-element decision, across a change of
    /// the index's high 32 bits (new keys) and at every threshold's edge.
    #[test]
    fn runs_decide_as_each_element_does() {
        let first = (1usize << 32) - 37;
        for p in [0.0, 0.1, 0.5, 1.0] {
            let mask = MaskDraw::new(p, 99);
            let mut x = vec![1f32; 100];
            mask.apply(&mut x, first);
            for (i, x) in x.iter().enumerate() {
                let kept = keeps(99, first + i, mask.threshold);
                assert_eq!(*x != 0.0, kept, "p = {p}, element {}", first + i);
            }
        }
    }

    /// Neighbouring elements, and one element under two seeds, are dropped
    /// independently: each pair is kept together about a quarter of the time at
    /// p = 0.5 (100,000 pairs: a standard deviation of 0.0014).
    #[test]
    fn masks_are_independent_across_neighbours_and_seeds() {
        let (n, t) = (100_000, threshold(0.5));
        let both =
            |f: &dyn Fn(usize) -> (bool, bool)| (0..n).filter(|&i| f(i) == (true, true)).count() as f64 / n as f64;
        let neighbours = both(&|i| (keeps(7, 2 * i, t), keeps(7, 2 * i + 1, t)));
        let seeds = both(&|i| (keeps(7, i, t), keeps(8, i, t)));
        let high_words = both(&|i| (keeps(7, i, t), keeps(7, i + (1 << 32), t)));
        for (what, f) in [("neighbours", neighbours), ("seeds", seeds), ("high words", high_words)] {
            assert!((f - 0.25).abs() < 0.01, "{what}: kept together {f}");
        }
    }
}
