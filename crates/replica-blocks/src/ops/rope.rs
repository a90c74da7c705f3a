//! Rotary position embedding, the rotation itself: Su et al., RoFormer, arXiv
//! 2104.09864 (the tables are [`crate::rope::Rope`]'s).

use candle_core::{Result, Tensor};
use replica_kernels::reference;
use serde::{Deserialize, Serialize};

use super::kernels_for;

/// How features are paired for rotation ([`crate::rope`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RopeStyle {
    /// Feature `i` pairs with `i + d/2` (HF LLaMA's `rotate_half`, GPT-NeoX).
    #[default]
    HalfSplit,
    /// Feature `2i` pairs with `2i + 1` (the paper, GPT-J, timm).
    Interleaved,
}

/// Rotates the first `2 · cos.dim(1)` features of `x` `[batch, heads, seq, head_dim]`
/// by the angles whose cosines and sines are `cos`, `sin` `[seq, rotary_dim / 2]`
/// (already in `x`'s dtype); the other features pass through. Half inputs too run
/// the kernel: HF rotates f16/bf16 in the input dtype, rounding each product and
/// the sum, and the kernel rounds once, at least as close to the float64 shadow.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, style: RopeStyle) -> Result<Tensor> {
    let style = match style {
        RopeStyle::HalfSplit => replica_kernels::RopeStyle::HalfSplit,
        RopeStyle::Interleaved => replica_kernels::RopeStyle::Interleaved,
    };
    if kernels_for(x) {
        replica_kernels::rope(x, cos, sin, style)
    } else {
        reference::rope(x, cos, sin, style)
    }
}
