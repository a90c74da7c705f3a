//! Dropout (Hinton et al., arXiv 1207.0580, as `torch.nn.Dropout`): each element
//! kept with probability `1 - p` and scaled by `1 / (1 - p)`, else multiplied by 0.
//!
//! The mask is a function of a seed and each element's index (SplitMix64's
//! finaliser over the index, a counter-based generator), not a stored tensor:
//! the backward recomputes it from the seed, and an element costs a few integer
//! operations, where candle's `rand` draws a ChaCha stream and four more passes
//! compare, convert, scale and multiply. Both routes (the f32 kernel on the CPU,
//! the composition for other dtypes and devices) drop the same elements for a seed.

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

use crate::cpu::{self, Route};
use crate::simd::Simd;
use crate::simd_dispatch;

/// The `threshold` below which the high 32 bits of an element's hash drop it:
/// `p · 2³²`, so an element is kept with probability `1 - p` (to within 2⁻³²).
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

/// See [`MaskDraw::apply`]. A plain loop that the compiler vectorises inside each
/// backend's target features (the hash's 64-bit products included), so it takes the
/// dispatch's `S` only for that.
#[inline(always)]
#[allow(clippy::extra_unused_type_parameters)]
fn apply<S: Simd>(x: &mut [f32], first: usize, seed: u64, threshold: u64, scale: f32) {
    for (i, x) in x.iter_mut().enumerate() {
        *x *= if keeps(seed, first + i, threshold) { scale } else { 0.0 };
    }
}

simd_dispatch!(fn apply_dispatch(x: &mut [f32], first: usize, seed: u64, threshold: u64, scale: f32) => apply);

/// Whether element `index` is kept under `seed` and `threshold`.
#[inline(always)]
fn keeps(seed: u64, index: usize, threshold: u64) -> bool {
    let mut z = seed.wrapping_add((index as u64).wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 32) >= threshold
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
