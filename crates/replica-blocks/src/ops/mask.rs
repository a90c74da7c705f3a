//! Attention masks as *additive* biases (the Transformer's masked attention,
//! arXiv 1706.03762 section 3.2.3): `0` where a query may attend to a key,
//! [`MASKED`] (`-inf`) where it may not. Masks broadcast against scores shaped
//! `[batch, heads, q_len, k_len]` and combine by addition ([`combine`]).
//!
//! [`ScoreBias`] is the one description of what attention adds to its scores (a
//! causal mask, a caller's mask, ALiBi biases) that every softmax path reads; the
//! causal mask and the ALiBi bias are built by `replica_kernels::reference`, the
//! one representation the kernels' own fallback uses too.
//!
//! # Conventions
//!
//! - **`-inf`, not `finfo.min`.** `-inf` is what `torch.nn.functional.scaled_dot_product_attention`
//!   turns a boolean mask into and what its `is_causal` uses. HF's eager
//!   attention fills with `torch.finfo(dtype).min` instead; such masks work here
//!   unchanged (they are finite, so they are simply added).
//! - **A fully masked row gives zeros.** When a query may attend to no key at all
//!   (a left-padded query under a causal mask, say), softmax over `-inf` alone is
//!   undefined. [`crate::ops::scaled_dot_product_attention`] then returns
//!   zeros for that query and passes it zero gradient, as torch's sdpa does on
//!   CPU (since 2.5). Under a `finfo.min` mask the same row is instead a uniform
//!   average over all keys, as HF's eager attention gives.
//! - **Causal masks are aligned bottom-right by default**: with a KV cache, query
//!   `i` sits at position `offset + i` and sees keys `0 ..= offset + i`. Torch's
//!   `is_causal` aligns top-left when `q_len != k_len` (`offset = 0`).
//! - **Boolean masks** (`u8`, as candle reads a torch `bool` tensor) use torch
//!   sdpa's meaning: nonzero = attend. HF's 0/1 `attention_mask` `[batch, k_len]`
//!   uses the same meaning; [`padding_mask`] turns it into a bias.

use candle_core::{DType, Device, Result, Tensor, D};
use replica_kernels::{reference, Causal, Mask};

/// The additive bias of a masked position.
pub const MASKED: f64 = f64::NEG_INFINITY;

/// Whether a mask tensor is boolean (integer dtype, nonzero = attend) rather than additive.
pub fn is_boolean(mask: &Tensor) -> bool {
    !mask.dtype().is_float()
}

/// A causal mask `[q_len, k_len]`: query `i` (at position `offset + i`) may attend to
/// keys `0 ..= offset + i`. With a KV cache, `offset` is the number of cached tokens
/// and `k_len = offset + q_len`; `offset = k_len - q_len` aligns bottom-right, `0`
/// aligns top-left as torch's `is_causal` does.
pub fn causal_mask(q_len: usize, k_len: usize, offset: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    if !dtype.is_float() {
        candle_core::bail!("causal_mask: an additive mask needs a float dtype, got {dtype:?}")
    }
    reference::causal_mask(q_len, k_len, Causal::Offset(offset as isize), dtype, device)
}

/// ALiBi biases `[1, heads, q_len, k_len]` (Press et al., arXiv 2108.12409):
/// `-m_h · (i + offset - j)` for query `i` and key `j`, with one slope `m_h` per
/// head and the queries placed by `at` as a causal mask places them. Computed in
/// f32, returned in `dtype`.
pub fn alibi_bias(
    slopes: &[f32],
    q_len: usize,
    k_len: usize,
    at: Causal,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    reference::alibi_bias(slopes, q_len, k_len, at, dtype, device)?.unsqueeze(0)
}

/// A key-padding mask `[batch, 1, 1, k_len]` for a ragged batch: sequence `b` has
/// `lengths[b]` real tokens followed by padding (right padding).
pub fn padding_mask_from_lengths(lengths: &[usize], k_len: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    if !dtype.is_float() {
        candle_core::bail!("padding_mask_from_lengths: an additive mask needs a float dtype, got {dtype:?}")
    }
    if let Some((b, &len)) = lengths.iter().enumerate().find(|(_, &len)| len > k_len) {
        candle_core::bail!("padding_mask_from_lengths: sequence {b} has length {len}, longer than k_len {k_len}")
    }
    let values: Vec<f32> = lengths
        .iter()
        .flat_map(|&len| (0..k_len).map(move |j| if j < len { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    Tensor::from_vec(values, (lengths.len(), 1, 1, k_len), device)?.to_dtype(dtype)
}

/// A key-padding mask `[batch, 1, 1, k_len]` from a 0/1 `attention_mask` `[batch, k_len]`
/// as HF tokenizers return it (any dtype; nonzero = a real token, left or right padding).
pub fn padding_mask(attention_mask: &Tensor, dtype: DType) -> Result<Tensor> {
    let (batch, k_len) = attention_mask.dims2().map_err(|_| {
        candle_core::Error::Msg(format!(
            "padding_mask: attention_mask must be [batch, k_len], got shape {:?}",
            attention_mask.dims()
        ))
    })?;
    let additive = to_additive(attention_mask, dtype)?;
    additive.reshape((batch, 1, 1, k_len))
}

/// A boolean mask (nonzero = attend) as an additive one; an additive mask is
/// converted to `dtype` unchanged.
pub fn to_additive(mask: &Tensor, dtype: DType) -> Result<Tensor> {
    if !dtype.is_float() {
        candle_core::bail!("to_additive: an additive mask needs a float dtype, got {dtype:?}")
    }
    if !is_boolean(mask) {
        return mask.to_dtype(dtype);
    }
    let keep = mask.ne(0u8)?;
    let zeros = Tensor::zeros(mask.shape(), dtype, mask.device())?;
    let masked = Tensor::full(MASKED, mask.shape(), mask.device())?.to_dtype(dtype)?;
    keep.where_cond(&zeros, &masked)
}

/// Adds masks that broadcast against each other (boolean ones are converted
/// first), e.g. a causal `[q, k]` and a padding `[b, 1, 1, k]` into `[b, 1, q, k]`.
/// `-inf + -inf` stays `-inf`; `None` when `masks` is empty.
pub fn combine(masks: &[&Tensor], dtype: DType) -> Result<Option<Tensor>> {
    let mut total: Option<Tensor> = None;
    for mask in masks {
        let mask = to_additive(mask, dtype)?;
        total = Some(match total {
            None => mask,
            Some(sum) => sum.broadcast_add(&mask)?,
        });
    }
    Ok(total)
}

/// ALiBi biases as part of a [`ScoreBias`].
#[derive(Clone, Copy, Debug)]
pub struct AlibiBias<'a> {
    /// One slope `m_h` per query head.
    pub slopes: &'a [f32],
    /// Where the queries sit among the keys.
    pub at: Causal,
}

/// Everything added to scores `[batch, heads, q_len, k_len]` before the softmax: a
/// causal mask, a caller's mask (additive, or boolean with nonzero = attend) and
/// ALiBi biases, read alike by the kernels and the composition.
#[derive(Clone, Copy, Debug, Default)]
pub struct ScoreBias<'a> {
    /// A causal mask, placed by where the queries sit among the keys; `None`: none.
    pub causal: Option<Causal>,
    /// With `causal`, a sliding window: each query sees itself and the `window - 1`
    /// keys before it.
    pub window: Option<usize>,
    /// The caller's mask, broadcasting against the scores: additive, or
    /// boolean with nonzero = attend.
    pub mask: Option<&'a Tensor>,
    /// ALiBi distance biases.
    pub alibi: Option<AlibiBias<'a>>,
}

impl ScoreBias<'_> {
    /// The biases for `scores` summed into one f32 tensor that broadcasts against
    /// them; `None` when there is nothing to add or only a causal mask, which the
    /// softmax applies without a tensor (see [`Self::softmax_mask`]).
    pub fn additive(&self, scores: &Tensor) -> Result<Option<Tensor>> {
        let device = scores.device();
        let mut biases = Vec::new();
        if let Some(alibi) = self.alibi {
            let (q_len, k_len) = (scores.dim(D::Minus2)?, scores.dim(D::Minus1)?);
            biases.push(alibi_bias(alibi.slopes, q_len, k_len, alibi.at, DType::F32, device)?);
        }
        if let Some(mask) = self.mask {
            biases.push(to_additive(mask, DType::F32)?);
        }
        // A window is a tensor the softmax adds; a causal mask alone it applies itself.
        if let Some(causal) = self.causal.filter(|_| !biases.is_empty() || self.window.is_some()) {
            let (q_len, k_len) = (scores.dim(D::Minus2)?, scores.dim(D::Minus1)?);
            biases.push(match self.window {
                Some(window) => reference::sliding_window_mask(q_len, k_len, causal, window, DType::F32, device)?,
                None => reference::causal_mask(q_len, k_len, causal, DType::F32, device)?,
            });
        }
        combine(&biases.iter().collect::<Vec<_>>(), DType::F32)
    }

    /// The mask a softmax (kernel or composition) takes, given [`Self::additive`]'s sum.
    pub fn softmax_mask<'t>(&self, additive: Option<&'t Tensor>) -> Mask<'t> {
        match (additive, self.causal) {
            (Some(total), _) => Mask::Additive(total),
            (None, Some(causal)) => Mask::Causal(causal),
            (None, None) => Mask::None,
        }
    }
}
