//! Normalisation over the last dimension, in f32 whatever the input dtype (as
//! PyTorch computes it for f16/bf16).
//!
//! - LayerNorm: Ba, Kiros & Hinton, arXiv 1607.06450, as `torch.nn.LayerNorm`.
//! - RMSNorm: Zhang & Sennrich, arXiv 1910.07467, as HF `LlamaRMSNorm`, or
//!   HF `GemmaRMSNorm` (arXiv 2403.08295), which rounds after the scale.

use candle_core::{DType, Result, Tensor, D};
use replica_kernels::reference;
use serde::{Deserialize, Serialize};

use super::kernels_for;

/// `(x - mean) / sqrt(var + eps) · weight + bias` over the last dimension, with
/// the two-pass variance (no cancellation from `E[x²] - E[x]²`); computed in f32
/// (the parameters cast to it) and rounded once to `x`'s dtype. No `weight` is a
/// unit scale.
pub fn layer_norm(x: &Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    let f32 = |t: &Tensor| t.to_dtype(DType::F32);
    let weight = match weight {
        Some(w) => f32(w)?,
        // Untracked: there is nothing to learn.
        None => Tensor::ones(x.dim(D::Minus1)?, DType::F32, x.device())?,
    };
    let bias = bias.map(f32).transpose()?;
    let x32 = f32(x)?;
    let y = if kernels_for(x) {
        replica_kernels::layer_norm(&x32, &weight, bias.as_ref(), eps)?
    } else {
        reference::layer_norm(&x32, &weight, bias.as_ref(), eps)?
    };
    y.to_dtype(x.dtype())
}

/// Where an RMSNorm of an f16/bf16 input rounds to the input's dtype.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RmsNormRounding {
    /// Normalise in f32, round, then scale in the input's dtype, as HF
    /// `LlamaRMSNorm` (`weight * hidden_states.to(input_dtype)`).
    #[default]
    BeforeScale,
    /// Normalise and scale in f32, then round once, as HF `GemmaRMSNorm`
    /// (`(output * (1.0 + weight.float())).type_as(x)`).
    AfterScale,
}

/// `x / sqrt(mean(x²) + eps) · scale` over the last dimension. f32 with an f32
/// scale is one pass; otherwise the normalisation runs in f32 and `rounding` says
/// where the result is rounded to `x`'s dtype.
pub fn rms_norm(x: &Tensor, scale: &Tensor, eps: f64, rounding: RmsNormRounding) -> Result<Tensor> {
    let kernels = kernels_for(x);
    let norm = |x: &Tensor, w: &Tensor| {
        if kernels {
            replica_kernels::rms_norm(x, w, eps)
        } else {
            reference::rms_norm(x, w, eps)
        }
    };
    let dtype = x.dtype();
    if dtype == DType::F32 && scale.dtype() == DType::F32 {
        return norm(x, scale);
    }
    let x32 = x.to_dtype(DType::F32)?;
    match rounding {
        RmsNormRounding::AfterScale => norm(&x32, &scale.to_dtype(DType::F32)?)?.to_dtype(dtype),
        RmsNormRounding::BeforeScale => {
            let unit = Tensor::ones(x.dim(D::Minus1)?, DType::F32, x.device())?;
            norm(&x32, &unit)?
                .to_dtype(dtype)?
                .broadcast_mul(&scale.to_dtype(dtype)?)
        }
    }
}
