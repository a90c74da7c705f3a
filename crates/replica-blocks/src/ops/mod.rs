//! The op layer: each numerical op the blocks share exists here once, and only
//! here is the choice made between the fused CPU kernels of `replica-kernels` and
//! the plain composition of differentiable candle ops ([`crate::compute`]). Blocks
//! call ops; they do not look at the switch.
//!
//! | op | kernel | composition |
//! | --- | --- | --- |
//! | [`softmax`] (scale and [`ScoreBias`]) | `softmax_last_dim` | `reference::softmax_last_dim` |
//! | [`scaled_dot_product_attention`] | fused `attention`, else materialised scores and `softmax_last_dim` | `reference::softmax_unnormalised`, in PyTorch's order |
//! | [`scaled_dot_product_attention_packed`] | fused `attention_packed` on the whole projection, else as above | the split, then as above |
//! | [`layer_norm`], [`rms_norm`] | `layer_norm`, `rms_norm` | `reference::layer_norm`, `reference::rms_norm` |
//! | [`activation`], [`gated`] | `gelu_erf`, `gelu_tanh`, `silu`, `swiglu`, `geglu` | candle's own unary op |
//! | [`rope`] | `rope` | `reference::rope` |
//! | [`dropout`] | `dropout` (a counter-based mask) | candle's uniform draws, compared with `p` |
//! | [`linear`] | `linear` (the bias accumulated onto; few rows: the weight read in place) | `reference::linear` (candle's product and broadcast add) |
//! | [`mask::causal_mask`], [`mask::alibi_bias`] | - | `reference::causal_mask`, `reference::alibi_bias` |
//!
//! A composition that the kernels' fallback and tests need too is written once, in
//! `replica_kernels::reference` (the kernels cannot depend on the blocks), and
//! called from here. Whatever the switch says, an op runs the composition where
//! no kernel fits: f64 and devices other than the CPU.

mod activation;
mod dropout;
mod linear;
pub mod mask;
mod norm;
mod rope;
mod sdpa;
mod softmax;

use candle_core::{DType, Device, Tensor};

pub use activation::{activation, gated, Activation};
pub use dropout::dropout;
pub use linear::linear;
pub use mask::{AlibiBias, ScoreBias};
pub use norm::{layer_norm, rms_norm, RmsNormRounding};
pub use replica_kernels::Causal;
pub use rope::{rope, RopeStyle};
pub(crate) use sdpa::{attend, weights_missing, Packed};
pub use sdpa::{
    repeat_kv, scaled_dot_product_attention, scaled_dot_product_attention_packed,
    scaled_dot_product_attention_with_weights, SdpaOptions,
};
pub use softmax::softmax;

/// Whether an op should run its kernel on `x`: the kernels are in force and `x`
/// is an f32, f16 or bf16 tensor on the CPU (elsewhere the kernels would only run
/// their own composition, so the op keeps its own, which matches its reference).
fn kernels_for(x: &Tensor) -> bool {
    crate::compute::current() == crate::Compute::Kernels
        && matches!(x.device(), Device::Cpu)
        && matches!(x.dtype(), DType::F32 | DType::F16 | DType::BF16)
}
