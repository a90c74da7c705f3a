//! The plain candle compositions the kernels replace: differentiable candle ops
//! only, in any dtype and on any device. The public functions fall back to these
//! off the CPU and for f64; the tests and benchmarks use them as the reference, and
//! the op layer of `replica-blocks` runs them when the composition is chosen, so
//! each is written once.
//!
//! They follow the kernels' conventions where PyTorch leaves a choice: a softmax
//! row whose every score is -inf gives zeros (as `scaled_dot_product_attention`).

use candle_core::{bail, DType, Device, Result, Tensor, D};

use crate::{AttentionOptions, Causal, GeluApprox, Mask, RopeStyle};

/// `i + offset - j` for query `i` and key `j`, row by row: how far key `j` lies
/// behind query `i` when `at` places query `i` at key position `i + offset`.
/// The causal mask and ALiBi both read their values from it.
fn distances(q: usize, k: usize, at: Causal) -> impl Iterator<Item = isize> {
    let offset = at.offset(q, k);
    (0..q as isize).flat_map(move |i| (0..k as isize).map(move |j| i + offset - j))
}

/// A `[q, k]` additive mask: 0 where query `i` sees key `j`, -inf elsewhere.
pub fn causal_mask(q: usize, k: usize, causal: Causal, dtype: DType, device: &Device) -> Result<Tensor> {
    let data: Vec<f32> = distances(q, k, causal)
        .map(|d| if d >= 0 { 0.0 } else { f32::NEG_INFINITY })
        .collect();
    Tensor::from_vec(data, (q, k), device)?.to_dtype(dtype)
}

/// A `[q, k]` additive causal mask with a sliding window: 0 where query `i` sees
/// key `j` (`0 <= i + offset - j < window`), -inf elsewhere.
pub fn sliding_window_mask(
    q: usize,
    k: usize,
    causal: Causal,
    window: usize,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let data: Vec<f32> = distances(q, k, causal)
        .map(|d| {
            if (0..window as isize).contains(&d) {
                0.0
            } else {
                f32::NEG_INFINITY
            }
        })
        .collect();
    Tensor::from_vec(data, (q, k), device)?.to_dtype(dtype)
}

/// The ALiBi bias `[h, q, k]` (Press et al., arXiv 2108.12409): `-slope_h · (i + offset - j)`
/// for query `i` and key `j`, the queries placed by `at` as a causal mask places them
/// (the fused kernel's placement is [`Causal::BottomRight`]). Computed in f32.
pub fn alibi_bias(slopes: &[f32], q: usize, k: usize, at: Causal, dtype: DType, device: &Device) -> Result<Tensor> {
    let distances: Vec<f32> = distances(q, k, at).map(|d| d as f32).collect();
    let data: Vec<f32> = slopes
        .iter()
        .flat_map(|&m| distances.iter().map(move |&d| -m * d))
        .collect();
    Tensor::from_vec(data, (slopes.len(), q, k), device)?.to_dtype(dtype)
}

/// `exp(z - max)` over the last dimension of scores `z` that may be -inf, and its
/// row sum; a fully hidden row gives zeros and a sum of 1, so zeros rather than NaN.
fn exp_and_sum(z: &Tensor) -> Result<(Tensor, Tensor)> {
    // The row maximum is a constant shift softmax does not depend on: detached, no
    // gradient. A maximum of -inf becomes 0 (exp then gives 0 everywhere); a sum of 0 becomes 1.
    let max = z.max_keepdim(D::Minus1)?.detach();
    let finite = max.ne(f64::NEG_INFINITY)?;
    let max = finite.where_cond(&max, &max.zeros_like()?)?;
    let e = z.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    let sum = sum.eq(0.0)?.where_cond(&sum.ones_like()?, &sum)?;
    Ok((e, sum))
}

/// The softmax of `scale · x + mask` over the last dimension before its division:
/// `exp(z - max)` and the row sum it is divided by. For a caller that divides
/// later, as PyTorch's CPU attention divides after the value product.
pub fn softmax_unnormalised(x: &Tensor, scale: f64, mask: Mask<'_>) -> Result<(Tensor, Tensor)> {
    let z = x.affine(scale, 0.0)?;
    let z = match mask {
        Mask::None => z,
        Mask::Causal(causal) => {
            let (q, k) = (x.dim(D::Minus2)?, x.dim(D::Minus1)?);
            z.broadcast_add(&causal_mask(q, k, causal, x.dtype(), x.device())?)?
        }
        Mask::Additive(m) => z.broadcast_add(&m.to_dtype(x.dtype())?)?,
    };
    exp_and_sum(&z)
}

/// `softmax(scale · x + mask)` over the last dimension.
pub fn softmax_last_dim(x: &Tensor, scale: f64, mask: Mask<'_>) -> Result<Tensor> {
    let (e, sum) = softmax_unnormalised(x, scale, mask)?;
    e.broadcast_div(&sum)
}

/// LayerNorm over the last dimension: `(x - mean) / sqrt(var + eps) · w + b`,
/// with the biased variance of the centred values.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let variance = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let y = centred
        .broadcast_div(&(variance + eps)?.sqrt()?)?
        .broadcast_mul(weight)?;
    match bias {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

/// RMSNorm over the last dimension: `x / sqrt(mean(x²) + eps) · w`.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    x.broadcast_div(&(ms + eps)?.sqrt()?)?.broadcast_mul(weight)
}

/// `x Wᵀ + b` for `x` `[..., in]`, `weight` `[out, in]` and `bias` `[out]`, as
/// `candle_nn::Linear` computes it: a contiguous input's rows as one matrix, else
/// a product batched over its leading dimensions; then the bias broadcast-added.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let w = weight.t()?;
    let dims = x.dims();
    let y = match dims {
        [lead @ .., k] if lead.len() >= 2 && x.is_contiguous() => {
            let mut out = lead.to_vec();
            out.push(weight.dim(0)?);
            x.reshape((lead.iter().product::<usize>(), *k))?
                .matmul(&w)?
                .reshape(out)?
        }
        [b1, b2, _, _] => x.matmul(&w.broadcast_left((*b1, *b2))?)?,
        [b, _, _] => x.matmul(&w.broadcast_left(*b)?)?,
        // One vector, as torch's F.linear takes it.
        [_] => x.unsqueeze(0)?.matmul(&w)?.squeeze(0)?,
        _ => x.matmul(&w)?,
    };
    match bias {
        Some(bias) => y.broadcast_add(bias),
        None => Ok(y),
    }
}

/// Dropout as the product with the scaled mask of [`crate::dropout`] (the same
/// elements dropped for the same seed), the scale `1 / (1 - p)` rounded to `x`'s
/// dtype as torch rounds it; the mask is drawn on the CPU and moved to `x`'s device.
pub fn dropout(x: &Tensor, p: f64, seed: u64) -> Result<Tensor> {
    let mask = crate::dropout::scaled_mask(x.elem_count(), p, seed);
    let mask = Tensor::from_vec(mask, x.shape(), &Device::Cpu)?;
    x * mask.to_dtype(x.dtype())?.to_device(x.device())?
}

/// `x · Φ(x)` with `Φ(x) = (1 + erf(x/√2)) / 2`.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    let cdf = ((x / std::f64::consts::SQRT_2)?.erf()? + 1.0)? * 0.5;
    x * cdf?
}

/// `x · (1 + tanh(√(2/π) (x + 0.044715 x³))) / 2`.
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    let inner = ((x + (x.powf(3.0)? * 0.044715)?)? * (2.0 / std::f64::consts::PI).sqrt())?;
    x * ((inner.tanh()? + 1.0)? * 0.5)?
}

/// `x · σ(x)` with `σ(x) = 1 / (1 + e^-x)`.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    x / (x.neg()?.exp()? + 1.0)?
}

/// `silu(gate) · up`.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    silu(gate)? * up
}

/// `gelu(gate) · up`.
pub fn geglu(gate: &Tensor, up: &Tensor, approx: GeluApprox) -> Result<Tensor> {
    let g = match approx {
        GeluApprox::Erf => gelu_erf(gate)?,
        GeluApprox::Tanh => gelu_tanh(gate)?,
    };
    g * up
}

/// Rotary embedding of `x` `[b, h, t, d]` by the angles whose cosines and sines
/// are `cos`, `sin` `[t, r/2]`; the first `r` features rotate, the rest pass.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, style: RopeStyle) -> Result<Tensor> {
    let (b, h, t, d) = x.dims4()?;
    let (_, half) = cos.dims2()?;
    let r = 2 * half;
    let (cos, sin) = (cos.to_dtype(x.dtype())?, sin.to_dtype(x.dtype())?);
    let xr = x.narrow(D::Minus1, 0, r)?;
    let rotated = match style {
        RopeStyle::HalfSplit => {
            let (a, bb) = (xr.narrow(D::Minus1, 0, half)?, xr.narrow(D::Minus1, half, half)?);
            let ya = (a.broadcast_mul(&cos)? - bb.broadcast_mul(&sin)?)?;
            let yb = (bb.broadcast_mul(&cos)? + a.broadcast_mul(&sin)?)?;
            Tensor::cat(&[&ya, &yb], D::Minus1)?
        }
        RopeStyle::Interleaved => {
            let pairs = xr.reshape((b, h, t, half, 2))?;
            let (a, bb) = (pairs.narrow(4, 0, 1)?.squeeze(4)?, pairs.narrow(4, 1, 1)?.squeeze(4)?);
            let ya = (a.broadcast_mul(&cos)? - bb.broadcast_mul(&sin)?)?;
            let yb = (bb.broadcast_mul(&cos)? + a.broadcast_mul(&sin)?)?;
            Tensor::stack(&[&ya, &yb], 4)?.reshape((b, h, t, r))?
        }
    };
    if r == d {
        Ok(rotated)
    } else {
        Tensor::cat(&[&rotated, &x.narrow(D::Minus1, r, d - r)?], D::Minus1)
    }
}

/// Repeats each of the `kv_heads` heads `n_rep` times along dim 1, `[b, kv_heads, s, d]`
/// to `[b, kv_heads * n_rep, s, d]`, as HF's `repeat_kv`: query head `h` reads
/// key/value head `h / n_rep` (grouped-query attention).
pub fn repeat_kv(x: &Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x.clone());
    }
    let (b, h, s, d) = x.dims4()?;
    x.unsqueeze(2)?
        .broadcast_as((b, h, n_rep, s, d))?
        .reshape((b, h * n_rep, s, d))
}

/// Scaled dot-product attention by materialising the scores: `q` `[b, h, sq, d]`,
/// `k` `[b, hk, sk, d]`, `v` `[b, hk, sk, dv]` with `h` a multiple of `hk` (GQA).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, options: &AttentionOptions<'_>) -> Result<Tensor> {
    let (_, h, sq, d) = q.dims4()?;
    let (_, hk, sk, _) = k.dims4()?;
    if hk == 0 || h % hk != 0 {
        bail!("attention: {h} query heads are not a multiple of {hk} key/value heads")
    }
    let (k, v) = (repeat_kv(k, h / hk)?, repeat_kv(v, h / hk)?);
    let scale = options.scale.unwrap_or(1.0 / (d as f64).sqrt());
    let mut scores = (q.contiguous()?.matmul(&k.t()?.contiguous()?)? * scale)?;
    if let Some(slopes) = options.alibi_slopes {
        let bias = alibi_bias(slopes, sq, sk, Causal::BottomRight, q.dtype(), q.device())?;
        scores = scores.broadcast_add(&bias.unsqueeze(0)?)?;
    }
    if let Some(mask) = options.mask {
        scores = scores.broadcast_add(&mask.to_dtype(q.dtype())?)?;
    }
    match (options.causal, options.window) {
        (Some(causal), Some(window)) => {
            let mask = sliding_window_mask(sq, sk, causal, window, q.dtype(), q.device())?;
            scores = scores.broadcast_add(&mask)?;
        }
        (Some(causal), None) => {
            scores = scores.broadcast_add(&causal_mask(sq, sk, causal, q.dtype(), q.device())?)?;
        }
        _ => {}
    }
    let (e, sum) = exp_and_sum(&scores)?;
    let probs = e.broadcast_div(&sum)?;
    let probs = match options.dropout {
        Some(crate::attention::AttentionDropout { p, seed }) => dropout(&probs, p, seed)?,
        None => probs,
    };
    probs.matmul(&v.contiguous()?)
}
