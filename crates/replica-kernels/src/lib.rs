//! Fast CPU kernels for transformer building blocks, as candle custom ops with a
//! backward, so they train.
//!
//! | function | computes |
//! | --- | --- |
//! | [`softmax_last_dim`] | `softmax(scale · x + mask)`, causal or additive mask |
//! | [`layer_norm`], [`rms_norm`] | LayerNorm (corrected two-pass variance), RMSNorm, with weight (and bias) gradients |
//! | [`gelu_erf`], [`gelu_tanh`], [`silu`] | activations |
//! | [`swiglu`], [`geglu`] | gated linear units `act(gate) · up` |
//! | [`rope`] | rotary embedding, half-split (HF LLaMA) or interleaved (GPT-J) |
//! | [`linear`] | `x Wᵀ`, a linear layer's product, with `W` in PyTorch's `[out, in]` layout |
//! | [`dropout`] | inverted dropout, its mask a function of a seed (recomputed by the backward) |
//! | [`attention`] | FlashAttention-style fused attention: causal, additive mask, GQA, ALiBi |
//!
//! Every function takes and returns candle tensors. On the CPU, f32 runs the
//! kernel (AVX-512F or AVX2+FMA, the widest the CPU has, detected at run time, else
//! a portable version; `REPLICA_SIMD` or [`simd::force_backend`] chooses another),
//! f16 and bf16 run it in f32 and round once; f64 and other devices run
//! the plain candle composition in [`reference`](mod@reference). Rows are split over rayon's
//! threads only when there are enough of them ([`MIN_PARALLEL_WORK`]).
//!
//! The fast `exp`, `erf`/normal CDF and `tanh` behind them are in [`simd`], with
//! their measured accuracy; docs/kernels.md has the method and the numbers.

#![warn(missing_docs)]

mod activation;
mod attention;
mod cpu;
mod dropout;
mod linear;
mod norm;
pub mod reference;
mod rope;
pub mod simd;
mod softmax;
mod tile_product;
mod transpose;

pub use activation::{geglu, gelu, gelu_erf, gelu_tanh, silu, swiglu, GeluApprox};
pub use attention::{attention, attention_packed, AttentionDropout, AttentionOptions};
pub use cpu::{set_huge_pages, MIN_PARALLEL_WORK};
pub use dropout::dropout;
pub use linear::{linear, TRANSPOSED_PRODUCT_MAX_ROWS};
pub use norm::{layer_norm, rms_norm};
pub use rope::{rope, RopeStyle};
pub use softmax::{softmax_last_dim, Causal, Mask};

/// Serialises the tests that switch the SIMD backend.
#[cfg(test)]
pub(crate) fn test_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
