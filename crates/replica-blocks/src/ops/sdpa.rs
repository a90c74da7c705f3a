//! Scaled dot-product attention, functional: Vaswani et al., "Attention Is All You
//! Need", arXiv 1706.03762, with grouped-query heads (Ainslie et al., arXiv
//! 2305.13245), logit soft-capping (Gemma 2, arXiv 2408.00118) and ALiBi biases
//! (Press et al., arXiv 2108.12409). The module around it is [`crate::attention`].
//!
//! # Numerics
//!
//! The scores, softmax statistics and the value product are computed in f32
//! whatever the input dtype, and the result is cast back. In the composition, for
//! f16/bf16 inputs the unnormalised probabilities `exp(s - max)` are rounded to
//! the input dtype before the value product and the f32 row sum divides at the
//! end: the order of operations of PyTorch's fused sdpa kernel on CPU (and of
//! flash attention), which this reproduces bit for bit on small inputs.
//!
//! # Kernels
//!
//! With [`crate::compute`] on kernels (the default) and f32, f16 or bf16 inputs on
//! the CPU, attention runs `replica_kernels::attention` (fused, FlashAttention-style:
//! causal, additive or boolean mask, ALiBi, GQA, dropout on the probabilities, its
//! mask the one `dropout` would draw over them). Half inputs too: PyTorch's CPU
//! sdpa rounds `exp(s - max)` to the input dtype before the value product and the
//! kernel stays in f32, so it is off an f16 reference by more than its 1e-3
//! tolerance, yet no further from the float64 shadow than the reference is
//! (docs/kernels.md, "Half precision"). Where the fused op does not fit
//! (soft-capping, the probabilities asked for, or a mask that needs a gradient) the scores are materialised and
//! `replica_kernels::softmax_last_dim` applies the scale and the mask in one pass.
//! Otherwise (f64, other devices, the composition chosen) everything is composed
//! of differentiable candle ops. Every path trains. Masks follow [`crate::mask`]:
//! additive `-inf` (or boolean, nonzero = attend); a query that may attend to no
//! key gets zeros, as with torch's sdpa.

use candle_core::{DType, Result, Tensor};
use replica_kernels::{reference, Causal};

use super::kernels_for;
use super::mask::{self, AlibiBias, ScoreBias};

/// Options of [`scaled_dot_product_attention`], as the keyword arguments of
/// `torch.nn.functional.scaled_dot_product_attention`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SdpaOptions {
    /// Multiplies `q kᵀ`; `None` is `1 / sqrt(head_dim)`.
    pub scale: Option<f64>,
    /// Hide future keys. Aligned bottom-right: query `i` sits at position
    /// `k_len - q_len + i`, as with a KV cache. (Torch's `is_causal` aligns
    /// top-left when `q_len != k_len`; pass [`mask::causal_mask`] with offset 0 for that.)
    pub causal: bool,
    /// With `causal`, a sliding window (Mistral, arXiv 2310.06825): query `i` sees
    /// itself and the `window - 1` keys before it, as HF's `sliding_window` masks
    /// (`kv_idx > q_idx - sliding_window`).
    pub window: Option<usize>,
    /// Soft-caps the scaled scores to `(-cap, cap)` with `cap * tanh(s / cap)`, before any mask.
    pub softcap: Option<f64>,
    /// Dropout probability on the attention probabilities; give 0 outside training.
    pub dropout_p: f32,
}

fn shape_error(what: &str, expected: &str, t: &Tensor) -> candle_core::Error {
    candle_core::Error::Msg(format!(
        "scaled_dot_product_attention: {what} must be {expected}, got shape {:?}",
        t.dims()
    ))
}

/// Repeats each of the `kv_heads` heads `n_rep` times along dim 1, `[b, kv_heads, s, d]`
/// to `[b, kv_heads * n_rep, s, d]`, as HF's `repeat_kv`: query head `h` reads
/// key/value head `h / n_rep`.
pub fn repeat_kv(x: &Tensor, n_rep: usize) -> Result<Tensor> {
    reference::repeat_kv(x, n_rep)
}

/// `softmax(q kᵀ · scale + mask) v` for `q` `[batch, heads, q_len, head_dim]`,
/// `k` `[batch, kv_heads, k_len, head_dim]`, `v` `[batch, kv_heads, k_len, v_dim]`;
/// returns `[batch, heads, q_len, v_dim]` in `q`'s dtype. `heads` must be a multiple
/// of `kv_heads` (grouped-query attention). `mask` broadcasts against
/// `[batch, heads, q_len, k_len]`: a float mask is added to the scores, an integer
/// (boolean) mask keeps the positions where it is nonzero.
pub fn scaled_dot_product_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    options: &SdpaOptions,
) -> Result<Tensor> {
    attend(q, k, v, mask, None, options, false, None)?.0.heads()
}

/// [`scaled_dot_product_attention`], also returning the attention probabilities
/// `[batch, heads, q_len, k_len]` (before dropout) in `q`'s dtype.
pub fn scaled_dot_product_attention_with_weights(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    options: &SdpaOptions,
) -> Result<(Tensor, Tensor)> {
    let (out, weights) = attend(q, k, v, mask, None, options, true, None)?;
    Ok((out.heads()?, weights.ok_or_else(weights_missing)?))
}

/// [`scaled_dot_product_attention`] for self-attention on a fused projection: `qkv`
/// is `[batch, seq, (heads + 2 kv_heads) · head_dim]`, each token's queries, keys and
/// values side by side, head by head (GPT-2's `c_attn`, timm's `qkv`); returns the
/// heads merged, `[batch, seq, heads · head_dim]`. Where the fused kernel runs it takes
/// the projection whole, so that in training the split into heads adds nothing to the
/// backward (`replica_kernels::attention_packed`); elsewhere this is the split, the
/// attention and the merge.
pub fn scaled_dot_product_attention_packed(
    qkv: &Tensor,
    heads: usize,
    kv_heads: usize,
    mask: Option<&Tensor>,
    options: &SdpaOptions,
) -> Result<Tensor> {
    let (b, s, width) = qkv
        .dims3()
        .map_err(|_| shape_error("qkv", "[batch, seq, (heads + 2 kv_heads) * head_dim]", qkv))?;
    let parts = heads + 2 * kv_heads;
    if heads == 0 || kv_heads == 0 || width == 0 || width % parts != 0 {
        candle_core::bail!(
            "scaled_dot_product_attention_packed: qkv's last dimension {width} is not (heads {heads} + 2 × kv_heads {kv_heads}) × a head size"
        )
    }
    let split = qkv.reshape((b, s, parts, width / parts))?;
    let view = |first: usize, n: usize| split.narrow(2, first, n)?.transpose(1, 2);
    let (q, k, v) = (
        view(0, heads)?,
        view(heads, kv_heads)?,
        view(heads + kv_heads, kv_heads)?,
    );
    let packed = Packed { qkv, heads, kv_heads };
    attend(&q, &k, &v, mask, None, options, false, Some(packed))?.0.merged()
}

pub(crate) fn weights_missing() -> candle_core::Error {
    candle_core::Error::Msg("attention: the probabilities were asked for but not computed".into())
}

/// The fused projection `[batch, seq, (heads + 2 kv_heads) · head_dim]` that
/// self-attention's `q`, `k` and `v` are views of, for [`attend`].
#[derive(Clone, Copy)]
pub(crate) struct Packed<'a> {
    pub qkv: &'a Tensor,
    pub heads: usize,
    pub kv_heads: usize,
}

/// What [`attend`] computed: the heads `[batch, heads, q_len, v_dim]`, or, where it
/// ran on a [`Packed`] projection, the heads merged, `[batch, q_len, heads · v_dim]`.
pub(crate) enum Attended {
    Heads(Tensor),
    Merged { y: Tensor, heads: usize },
}

impl Attended {
    /// `[batch, heads, q_len, v_dim]`.
    pub(crate) fn heads(self) -> Result<Tensor> {
        match self {
            Attended::Heads(y) => Ok(y),
            Attended::Merged { y, heads } => {
                let (b, s, width) = y.dims3()?;
                y.reshape((b, s, heads, width / heads))?.transpose(1, 2)
            }
        }
    }

    /// `[batch, q_len, heads · v_dim]`.
    pub(crate) fn merged(self) -> Result<Tensor> {
        match self {
            Attended::Merged { y, .. } => Ok(y),
            Attended::Heads(y) => {
                let (b, h, s, dv) = y.dims4()?;
                y.transpose(1, 2)?.reshape((b, s, h * dv))
            }
        }
    }
}

/// [`scaled_dot_product_attention`] with ALiBi biases, the probabilities when
/// `want_weights`. With `packed` (the projection `q`, `k`, `v` are views of) the
/// fused kernel runs on it, one op in the autograd graph instead of the split's.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    alibi: Option<AlibiBias<'_>>,
    options: &SdpaOptions,
    want_weights: bool,
    packed: Option<Packed<'_>>,
) -> Result<(Attended, Option<Tensor>)> {
    let rank4 = "[batch, heads, seq, head_dim]";
    let (b, heads, q_len, head_dim) = q.dims4().map_err(|_| shape_error("q", rank4, q))?;
    let (kb, kv_heads, k_len, k_dim) = k.dims4().map_err(|_| shape_error("k", rank4, k))?;
    let (vb, v_heads, v_len, _) = v.dims4().map_err(|_| shape_error("v", rank4, v))?;
    if kb != b || vb != b {
        candle_core::bail!("scaled_dot_product_attention: batch sizes differ: q {b}, k {kb}, v {vb}")
    }
    if k_dim != head_dim {
        candle_core::bail!("scaled_dot_product_attention: q has {head_dim} features per head, k has {k_dim}")
    }
    if v_heads != kv_heads || v_len != k_len {
        candle_core::bail!(
            "scaled_dot_product_attention: k {:?} and v {:?} disagree on heads or length",
            k.dims(),
            v.dims()
        )
    }
    if kv_heads == 0 || heads % kv_heads != 0 {
        candle_core::bail!(
            "scaled_dot_product_attention: {heads} query heads cannot share {kv_heads} key/value heads (heads must be a multiple of kv_heads)"
        )
    }
    let dtype = q.dtype();
    if !dtype.is_float() || k.dtype() != dtype || v.dtype() != dtype {
        candle_core::bail!(
            "scaled_dot_product_attention: q, k, v must share one float dtype, got {:?}, {:?}, {:?}",
            q.dtype(),
            k.dtype(),
            v.dtype()
        )
    }
    let scale = options.scale.unwrap_or(1.0 / (head_dim as f64).sqrt());
    if !scale.is_finite() {
        candle_core::bail!("scaled_dot_product_attention: scale must be finite, got {scale}")
    }
    if !(0.0..1.0).contains(&options.dropout_p) {
        candle_core::bail!(
            "scaled_dot_product_attention: dropout_p must be in [0, 1), got {}",
            options.dropout_p
        )
    }
    if let Some(cap) = options.softcap {
        if !(cap > 0.0 && cap.is_finite()) {
            candle_core::bail!("scaled_dot_product_attention: softcap must be positive, got {cap}")
        }
    }
    match options.window {
        Some(0) => candle_core::bail!("scaled_dot_product_attention: the sliding window must be at least 1, got 0"),
        Some(window) if !options.causal => {
            candle_core::bail!("scaled_dot_product_attention: a sliding window ({window}) needs causal attention")
        }
        _ => {}
    }
    if let Some(m) = mask {
        if m.broadcast_as((b, heads, q_len, k_len)).is_err() {
            candle_core::bail!(
                "scaled_dot_product_attention: mask of shape {:?} does not broadcast to the scores [{b}, {heads}, {q_len}, {k_len}]",
                m.dims()
            )
        }
    }
    let bias = ScoreBias {
        causal: options.causal.then_some(Causal::BottomRight),
        window: options.window,
        mask,
        alibi,
    };

    let kernels = kernels_for(q);
    // The fused op gives the mask no gradient: a mask that is being trained (a learned
    // bias) goes through the softmax, which gives it one. It places ALiBi's queries
    // as a KV cache does.
    let fused = kernels
        && options.softcap.is_none()
        && !want_weights
        && !mask.is_some_and(|m| m.track_op())
        && alibi.is_none_or(|a| a.at.offset(q_len, k_len) == Causal::BottomRight.offset(q_len, k_len));
    if fused {
        let additive = mask.map(|m| mask::to_additive(m, DType::F32)).transpose()?;
        let kernel_options = replica_kernels::AttentionOptions {
            scale: Some(scale),
            causal: bias.causal,
            window: bias.window,
            mask: additive.as_ref(),
            alibi_slopes: alibi.map(|a| a.slopes),
            // The mask `dropout(probabilities)` would draw, without the probabilities.
            dropout: (options.dropout_p > 0.0).then(|| replica_kernels::AttentionDropout {
                p: f64::from(options.dropout_p),
                seed: super::dropout::fresh_seed(),
            }),
        };
        let y = match packed {
            Some(Packed { qkv, heads, kv_heads }) => Attended::Merged {
                y: replica_kernels::attention_packed(qkv, heads, kv_heads, &kernel_options)?,
                heads,
            },
            None => Attended::Heads(replica_kernels::attention(q, k, v, &kernel_options)?),
        };
        return Ok((y, None));
    }

    // Materialised scores; soft-capping comes between the scale and the biases.
    let (mut scores, v32) = scores_f32(q, k, v)?;
    let mut scale = scale;
    if let Some(cap) = options.softcap {
        scores = (((scores * scale)? / cap)?.tanh()? * cap)?;
        scale = 1.0;
    }
    let additive = bias.additive(&scores)?;
    let mask = bias.softmax_mask(additive.as_ref());
    let dropout = |p: Tensor| {
        if options.dropout_p > 0.0 {
            super::dropout(&p, f64::from(options.dropout_p))
        } else {
            Ok(p)
        }
    };
    let (out, weights) = if kernels {
        // The softmax kernel fuses the scale and the mask.
        let probs = replica_kernels::softmax_last_dim(&scores, scale, mask)?;
        let out = dropout(probs.clone())?.matmul(&v32)?;
        (out, want_weights.then_some(probs))
    } else {
        // PyTorch's CPU order: the unnormalised probabilities (rounded to a half
        // input's dtype) times the values, divided by the row sum at the end.
        let (exp, sum) = reference::softmax_unnormalised(&scores, scale, mask)?;
        let for_values = if dtype == DType::F32 || dtype == DType::F64 {
            exp.clone()
        } else {
            exp.to_dtype(dtype)?.to_dtype(DType::F32)?
        };
        let out = dropout(for_values)?.matmul(&v32)?.broadcast_div(&sum)?;
        (out, want_weights.then(|| exp.broadcast_div(&sum)).transpose()?)
    };
    Ok((
        Attended::Heads(out.to_dtype(dtype)?),
        weights.map(|w| w.to_dtype(dtype)).transpose()?,
    ))
}

/// The unscaled scores `q kᵀ` in f32, with the key/value heads repeated for
/// grouped-query attention, and the values in f32 ready for the product.
fn scores_f32(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
    let n_rep = q.dim(1)? / k.dim(1)?;
    let q32 = q.to_dtype(DType::F32)?.contiguous()?;
    let k32 = repeat_kv(&k.to_dtype(DType::F32)?, n_rep)?;
    let v32 = repeat_kv(&v.to_dtype(DType::F32)?, n_rep)?.contiguous()?;
    Ok((q32.matmul(&k32.t()?.contiguous()?)?, v32))
}
