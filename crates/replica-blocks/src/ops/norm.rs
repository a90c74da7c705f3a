//! Normalisation over the last dimension, in f32 whatever the input dtype (as
//! PyTorch computes it for f16/bf16).
//!
//! - LayerNorm: Ba, Kiros & Hinton, arXiv 1607.06450, as `torch.nn.LayerNorm`.
//! - RMSNorm: Zhang & Sennrich, arXiv 1910.07467, as HF `LlamaRMSNorm`.

use candle_core::{DType, Result, Tensor, D};
use replica_kernels::reference;

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

/// `x / sqrt(mean(x²) + eps) · weight` over the last dimension. f32 with an f32
/// weight is one pass; otherwise the normalisation runs in f32 and is rounded to
/// `x`'s dtype *before* the scale, as `LlamaRMSNorm` orders it.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let kernels = kernels_for(x);
    let norm = |x: &Tensor, w: &Tensor| {
        if kernels {
            replica_kernels::rms_norm(x, w, eps)
        } else {
            reference::rms_norm(x, w, eps)
        }
    };
    let dtype = x.dtype();
    if dtype == DType::F32 && weight.dtype() == DType::F32 {
        return norm(x, weight);
    }
    let unit = Tensor::ones(x.dim(D::Minus1)?, DType::F32, x.device())?;
    norm(&x.to_dtype(DType::F32)?, &unit)?
        .to_dtype(dtype)?
        .broadcast_mul(&weight.to_dtype(dtype)?)
}
