//! Scaled dot-product and multi-head attention: Vaswani et al., "Attention Is All
//! You Need", arXiv 1706.03762, with the variants later models added:
//!
//! - grouped-query attention (Ainslie et al., arXiv 2305.13245) and multi-query
//!   attention (Shazeer, arXiv 1911.02150): fewer key/value heads than query
//!   heads (`kv_heads`), each shared by a group of query heads;
//! - QK-norm (Henry et al., arXiv 2010.04245): LayerNorm or RMSNorm on each
//!   head's queries and keys (timm's `q_norm` / `k_norm`);
//! - logit soft-capping (Gemma 2, arXiv 2408.00118): `cap * tanh(scores / cap)`;
//! - rotary ([`crate::rope`], arXiv 2104.09864) or ALiBi ([`crate::alibi`],
//!   arXiv 2108.12409) positions, and a [`KvCache`] for incremental decoding.
//!
//! # Numerics
//!
//! [`scaled_dot_product_attention`] computes scores, softmax statistics and the
//! value product in f32 whatever the input dtype, and casts the result back. For
//! f16/bf16 inputs the unnormalised probabilities `exp(s - max)` are rounded to
//! the input dtype before the value product and the f32 row sum divides at the
//! end: the order of operations of PyTorch's fused sdpa kernel on CPU (and of
//! flash attention), which this reproduces bit for bit on small inputs.
//!
//! # Kernels
//!
//! With [`crate::compute`] on kernels (the default) and f32 inputs on the CPU,
//! attention runs `replica_kernels::attention` (fused, FlashAttention-style:
//! causal, additive or boolean mask, ALiBi, GQA). f16/bf16 keep the composition,
//! whose rounding order is PyTorch's (above); the kernels would round once. Where
//! the fused op does not fit (soft-capping, dropout on the probabilities, the
//! probabilities asked for, or a mask that needs a gradient) the scores are
//! materialised and `replica_kernels::softmax_last_dim` applies the scale and the
//! mask in one pass. Otherwise (f64, other devices, the composition
//! chosen) everything is composed of differentiable candle ops. Every path trains.
//! Masks follow [`crate::mask`]: additive `-inf` (or boolean, nonzero = attend); a
//! query that may attend to no key gets zeros, as with torch's sdpa.

use candle_core::{DType, Result, Tensor, D};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::alibi::{Alibi, AlibiConfig};
use crate::kv_cache::KvCache;
use crate::linear::{Linear, LinearConfig};
use crate::mask;
use crate::norm::{Norm, NormKind};
use crate::rope::{Rope, RopeConfig, RopeStyle};

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
    if n_rep == 1 {
        return Ok(x.clone());
    }
    let (b, h, s, d) = x.dims4()?;
    x.unsqueeze(2)?
        .broadcast_as((b, h, n_rep, s, d))?
        .reshape((b, h * n_rep, s, d))
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
    Ok(attend(q, k, v, mask, None, options, false)?.0)
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
    let (out, weights) = attend(q, k, v, mask, None, options, true)?;
    Ok((out, weights.ok_or_else(weights_missing)?))
}

fn weights_missing() -> candle_core::Error {
    candle_core::Error::Msg("attention: the probabilities were asked for but not computed".into())
}

/// ALiBi biases for queries whose first one sits at position `offset`.
#[derive(Clone, Copy)]
struct AlibiAt<'a> {
    alibi: &'a Alibi,
    offset: usize,
}

fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    alibi: Option<AlibiAt<'_>>,
    options: &SdpaOptions,
    want_weights: bool,
) -> Result<(Tensor, Option<Tensor>)> {
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
    if let Some(m) = mask {
        if m.broadcast_as((b, heads, q_len, k_len)).is_err() {
            candle_core::bail!(
                "scaled_dot_product_attention: mask of shape {:?} does not broadcast to the scores [{b}, {heads}, {q_len}, {k_len}]",
                m.dims()
            )
        }
    }
    // Half inputs too: PyTorch's CPU sdpa rounds `exp(s - max)` to the input dtype
    // before the value product and the kernel stays in f32, so it is off an f16
    // reference by more than its 1e-3 tolerance, yet no further from the float64
    // shadow than the reference is (docs/kernels.md, "Half precision").
    if crate::compute::kernels_for(q) {
        return attend_kernels(q, k, v, mask, alibi, options, scale, want_weights);
    }

    // The composition: ALiBi as one more additive bias.
    let alibi = alibi
        .map(|a| a.alibi.bias(q_len, k_len, a.offset, DType::F32))
        .transpose()?;
    let combined = match (mask, alibi) {
        (Some(mask), Some(alibi)) => mask::combine(&[mask, &alibi], DType::F32)?,
        (Some(mask), None) => Some(mask.clone()),
        (None, alibi) => alibi,
    };
    let mask = combined.as_ref();
    let (scores, v32) = scores_f32(q, k, v)?;
    let mut scores = (scores * scale)?;
    if let Some(cap) = options.softcap {
        scores = ((scores / cap)?.tanh()? * cap)?;
    }

    let mut biases = Vec::new();
    if options.causal {
        let shift = k_len as i64 - q_len as i64;
        biases.push(mask::causal_mask_shifted(q_len, k_len, shift, DType::F32, q.device())?);
    }
    if let Some(m) = mask {
        // Its shape was checked above.
        biases.push(mask::to_additive(m, DType::F32)?);
    }
    let masked = !biases.is_empty();
    for bias in &biases {
        scores = scores.broadcast_add(bias)?;
    }

    // Softmax from differentiable ops. The row max is a constant shift (softmax does
    // not depend on it), so it is detached: no gradient flows through it.
    let mut max = scores.max_keepdim(D::Minus1)?.detach();
    let mut alive = None;
    if masked {
        // A row masked everywhere has max -inf; make it finite and zero its output.
        let dead = max.eq(f64::NEG_INFINITY)?;
        scores = dead
            .broadcast_as(scores.shape())?
            .where_cond(&scores.zeros_like()?, &scores)?;
        max = dead.where_cond(&max.zeros_like()?, &max)?;
        alive = Some((1.0 - dead.to_dtype(DType::F32)?)?);
    }
    let exp = scores.broadcast_sub(&max)?.exp()?;
    let sum = exp.sum_keepdim(D::Minus1)?;
    let mut for_values = if dtype == DType::F32 || dtype == DType::F64 {
        exp.clone()
    } else {
        exp.to_dtype(dtype)?.to_dtype(DType::F32)?
    };
    if options.dropout_p > 0.0 {
        for_values = candle_nn::ops::dropout(&for_values, options.dropout_p)?;
    }
    let mut out = for_values.matmul(&v32)?.broadcast_div(&sum)?;
    if let Some(alive) = &alive {
        out = out.broadcast_mul(alive)?;
    }
    let weights = if want_weights {
        let mut probs = exp.broadcast_div(&sum)?;
        if let Some(alive) = &alive {
            probs = probs.broadcast_mul(alive)?;
        }
        Some(probs.to_dtype(dtype)?)
    } else {
        None
    };
    Ok((out.to_dtype(dtype)?, weights))
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

/// [`attend`] on the kernels; the inputs are checked.
#[allow(clippy::too_many_arguments)]
fn attend_kernels(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    alibi: Option<AlibiAt<'_>>,
    options: &SdpaOptions,
    scale: f64,
    want_weights: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let (q_len, k_len) = (q.dim(2)?, k.dim(2)?);
    let causal = options.causal.then_some(replica_kernels::Causal::BottomRight);
    // The fused op gives the mask no gradient: a mask that is being trained (a learned
    // bias) goes through the softmax kernel, which gives it one.
    let mask_trained = mask.is_some_and(|m| m.track_op());
    let additive = mask.map(|m| mask::to_additive(m, DType::F32)).transpose()?;
    // The fused op places query `i` at position `i + k_len - q_len`, as a KV cache does.
    let alibi_fits = alibi.is_none_or(|a| a.offset + q_len == k_len);
    let fused = options.softcap.is_none() && options.dropout_p == 0.0 && !want_weights && !mask_trained && alibi_fits;
    if fused {
        let slopes = alibi.map(|a| a.alibi.slopes().to_vec1::<f32>()).transpose()?;
        let kernel_options = replica_kernels::AttentionOptions {
            scale: Some(scale),
            causal,
            mask: additive.as_ref(),
            alibi_slopes: slopes.as_deref(),
        };
        return Ok((replica_kernels::attention(q, k, v, &kernel_options)?, None));
    }

    // Materialised scores; the softmax kernel fuses the scale (unless soft-capping
    // must come between the two) and the mask.
    let dtype = q.dtype();
    let (mut scores, v32) = scores_f32(q, k, v)?;
    let mut softmax_scale = scale;
    if let Some(cap) = options.softcap {
        scores = (((scores * scale)? / cap)?.tanh()? * cap)?;
        softmax_scale = 1.0;
    }
    let mut biases = Vec::new();
    if let Some(a) = alibi {
        biases.push(a.alibi.bias(q_len, k_len, a.offset, DType::F32)?);
    }
    if let Some(m) = additive {
        biases.push(m);
    }
    // The kernel takes one mask: a causal one joins the biases as a tensor, and
    // needs none when it is alone.
    if options.causal && !biases.is_empty() {
        let shift = k_len as i64 - q_len as i64;
        biases.push(mask::causal_mask_shifted(q_len, k_len, shift, DType::F32, q.device())?);
    }
    let biases: Vec<&Tensor> = biases.iter().collect();
    let probs = match mask::combine(&biases, DType::F32)? {
        Some(total) => {
            replica_kernels::softmax_last_dim(&scores, softmax_scale, replica_kernels::Mask::Additive(&total))?
        }
        None => {
            let mask = causal.map_or(replica_kernels::Mask::None, replica_kernels::Mask::Causal);
            replica_kernels::softmax_last_dim(&scores, softmax_scale, mask)?
        }
    };
    let for_values = if options.dropout_p > 0.0 {
        candle_nn::ops::dropout(&probs, options.dropout_p)?
    } else {
        probs.clone()
    };
    let out = for_values.matmul(&v32)?.to_dtype(dtype)?;
    let weights = want_weights.then(|| probs.to_dtype(dtype)).transpose()?;
    Ok((out, weights))
}

/// The names of an attention module's parts in the reference checkpoint; a
/// `VarBuilder` reads `<path>.<name>.weight`, and traces record the same names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttentionNames {
    /// The fused query/key/value projection.
    pub qkv: String,
    pub q: String,
    pub k: String,
    pub v: String,
    /// The output projection.
    pub out: String,
    pub q_norm: String,
    pub k_norm: String,
    /// The norm on the attention output before the projection (timm's `scale_norm`).
    pub norm: String,
    /// The dropout after the output projection, recorded in traces when named.
    #[serde(default)]
    pub proj_drop: Option<String>,
    /// Record `q_norm`, `k_norm` and `norm` in traces even when they are off: timm
    /// keeps `nn.Identity` placeholders there, which its forward hooks record.
    #[serde(default)]
    pub trace_placeholders: bool,
}

impl AttentionNames {
    /// HF transformers: `q_proj`, `k_proj`, `v_proj`, `o_proj` (fused: Phi-3's `qkv_proj`),
    /// `q_norm`, `k_norm` (Qwen3, OLMo 2).
    pub fn hf() -> Self {
        Self {
            qkv: "qkv_proj".into(),
            q: "q_proj".into(),
            k: "k_proj".into(),
            v: "v_proj".into(),
            out: "o_proj".into(),
            q_norm: "q_norm".into(),
            k_norm: "k_norm".into(),
            norm: "norm".into(),
            proj_drop: None,
            trace_placeholders: false,
        }
    }

    /// timm `Attention`: `qkv`, `q_norm`, `k_norm`, `norm`, `proj`, `proj_drop`
    /// (unfused, as `AttentionRope`: `q_proj`, `k_proj`, `v_proj`).
    pub fn timm() -> Self {
        Self {
            qkv: "qkv".into(),
            q: "q_proj".into(),
            k: "k_proj".into(),
            v: "v_proj".into(),
            out: "proj".into(),
            q_norm: "q_norm".into(),
            k_norm: "k_norm".into(),
            norm: "norm".into(),
            proj_drop: Some("proj_drop".into()),
            trace_placeholders: true,
        }
    }
}

/// HF transformers v5 `rope_parameters`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RopeParameters {
    #[serde(default = "default_rope_type", alias = "type")]
    pub rope_type: String,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub partial_rotary_factor: Option<f64>,
}

fn default_rope_type() -> String {
    "default".into()
}

fn default_norm_eps() -> f64 {
    1e-5
}

fn default_max_positions() -> usize {
    4096
}

/// Multi-head attention settings. The aliases read a HF `config.json` (LLaMA,
/// Mistral, Qwen, Gemma 2, GPT-NeoX, ...) or timm's `Attention` arguments.
///
/// Rotary embeddings are on when `rope` is set or the config carries
/// `rope_theta` / `rope_parameters` (HF's rotary models), in the half-split layout
/// unless `rope` says `interleaved` (GPT-J, CodeGen, the paper).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttentionConfig {
    /// Model width: the input and output features.
    #[serde(alias = "hidden_size", alias = "n_embd", alias = "d_model", alias = "embed_dim")]
    pub dim: usize,
    #[serde(alias = "num_attention_heads", alias = "num_heads", alias = "n_head")]
    pub heads: usize,
    /// Key/value heads (GQA; 1 is MQA); `None` is `heads`.
    #[serde(default, alias = "num_key_value_heads", alias = "num_kv_heads")]
    pub kv_heads: Option<usize>,
    /// Features per head; `None` is `dim / heads`.
    #[serde(default, alias = "attn_head_dim")]
    pub head_dim: Option<usize>,
    /// Features of the context that cross-attention reads keys and values from
    /// (torch's `kdim`/`vdim`); `None` is `dim`.
    #[serde(default, alias = "kdim")]
    pub context_dim: Option<usize>,
    /// Output features (timm's `dim_out`); `None` is `dim`.
    #[serde(default, alias = "dim_out")]
    pub out_dim: Option<usize>,
    /// One projection (timm `qkv`) rather than three: its output features are the
    /// query heads, then the key heads, then the value heads, as timm's
    /// `reshape(B, N, 3, heads, head_dim)` reads them (and, with fewer key/value
    /// heads, as Phi-3's `qkv_proj` is laid out).
    #[serde(default)]
    pub fused_qkv: bool,
    /// Biases on the query/key/value projections (HF `attention_bias`, timm `qkv_bias`).
    #[serde(default, alias = "attention_bias")]
    pub qkv_bias: bool,
    /// A bias on the output projection; `None` follows `qkv_bias` (HF's
    /// `attention_bias` covers all four). timm's `proj_bias` is true by default.
    #[serde(default)]
    pub proj_bias: Option<bool>,
    /// Normalise each head's queries and keys (arXiv 2010.04245).
    #[serde(default, alias = "use_qk_norm")]
    pub qk_norm: bool,
    /// Normalise the attention output before the projection (timm's `scale_norm`).
    #[serde(default)]
    pub scale_norm: bool,
    /// The kind of the QK and scale norms.
    #[serde(default)]
    pub norm: NormKind,
    #[serde(default = "default_norm_eps", alias = "rms_norm_eps", alias = "layer_norm_eps")]
    pub norm_eps: f64,
    /// Self-attention hides future tokens (decoders).
    #[serde(default, alias = "is_causal")]
    pub causal: bool,
    /// Rotary embedding layout; see the type's doc for when rotary embeddings are on.
    #[serde(default)]
    pub rope: Option<RopeStyle>,
    #[serde(default, alias = "rotary_emb_base")]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    /// The fraction of each head that rotates (GPT-NeoX `rotary_pct`, Phi).
    #[serde(default, alias = "rotary_pct")]
    pub partial_rotary_factor: Option<f64>,
    /// How many features of each head rotate (GPT-J); overrides the fraction.
    #[serde(default)]
    pub rotary_dim: Option<usize>,
    /// The longest sequence (plus cache) the rotary tables cover.
    #[serde(default = "default_max_positions", alias = "max_position_embeddings")]
    pub max_positions: usize,
    /// ALiBi biases instead of position embeddings.
    #[serde(default)]
    pub alibi: bool,
    /// Logit soft-capping (Gemma 2's `attn_logit_softcapping`).
    #[serde(default, alias = "attn_logit_softcapping")]
    pub softcap: Option<f64>,
    /// The score scale; `None` is `query_pre_attn_scalar^-0.5` when that is given
    /// (Gemma 2), else `head_dim^-0.5`.
    #[serde(default)]
    pub scale: Option<f64>,
    #[serde(default)]
    pub query_pre_attn_scalar: Option<f64>,
    /// Dropout on the attention probabilities, in training.
    #[serde(default, alias = "attn_drop", alias = "attn_pdrop")]
    pub attention_dropout: f32,
    /// Dropout after the output projection, in training.
    #[serde(default, alias = "proj_drop", alias = "resid_pdrop")]
    pub proj_dropout: f32,
    /// Checkpoint names of the parts; `None` is [`AttentionNames::timm`] for a fused
    /// projection and [`AttentionNames::hf`] otherwise.
    #[serde(default)]
    pub names: Option<AttentionNames>,
}

impl AttentionConfig {
    pub fn new(dim: usize, heads: usize) -> Self {
        Self {
            dim,
            heads,
            kv_heads: None,
            head_dim: None,
            context_dim: None,
            out_dim: None,
            fused_qkv: false,
            qkv_bias: false,
            proj_bias: None,
            qk_norm: false,
            scale_norm: false,
            norm: NormKind::default(),
            norm_eps: default_norm_eps(),
            causal: false,
            rope: None,
            rope_theta: None,
            rope_parameters: None,
            partial_rotary_factor: None,
            rotary_dim: None,
            max_positions: default_max_positions(),
            alibi: false,
            softcap: None,
            scale: None,
            query_pre_attn_scalar: None,
            attention_dropout: 0.0,
            proj_dropout: 0.0,
            names: None,
        }
    }

    /// timm's `Attention(dim, num_heads, qkv_bias, qk_norm, norm_layer=LayerNorm)`.
    pub fn timm(dim: usize, heads: usize, qkv_bias: bool, qk_norm: bool) -> Self {
        Self {
            fused_qkv: true,
            qkv_bias,
            proj_bias: Some(true),
            qk_norm,
            names: Some(AttentionNames::timm()),
            ..Self::new(dim, heads)
        }
    }

    pub fn kv_heads(&self) -> usize {
        self.kv_heads.unwrap_or(self.heads)
    }

    /// Features per head (`None` when `dim` does not split evenly and none is given).
    pub fn head_dim(&self) -> Option<usize> {
        self.head_dim
            .or_else(|| (self.heads > 0 && self.dim % self.heads == 0).then(|| self.dim / self.heads))
    }

    pub fn names(&self) -> AttentionNames {
        self.names.clone().unwrap_or_else(|| {
            if self.fused_qkv {
                AttentionNames::timm()
            } else {
                AttentionNames::hf()
            }
        })
    }

    /// The rotary embedding this config asks for, if any.
    pub fn rope_config(&self) -> Result<Option<RopeConfig>> {
        let params = self.rope_parameters.as_ref();
        if let Some(p) = params {
            if p.rope_type != "default" {
                candle_core::bail!(
                    "attention: rope_type `{}` is not implemented (only the default RoPE is)",
                    p.rope_type
                )
            }
        }
        let on = self.rope.is_some() || self.rope_theta.is_some() || params.is_some() || self.rotary_dim.is_some();
        if !on {
            return Ok(None);
        }
        let Some(head_dim) = self.head_dim() else {
            return Ok(None);
        };
        let mut rope = RopeConfig::new(head_dim);
        rope.style = self.rope.unwrap_or_default();
        rope.max_positions = self.max_positions;
        if let Some(theta) = params.and_then(|p| p.rope_theta).or(self.rope_theta) {
            rope.theta = theta;
        }
        if let Some(fraction) = params
            .and_then(|p| p.partial_rotary_factor)
            .or(self.partial_rotary_factor)
        {
            rope.fraction = fraction;
        }
        rope.rotary_features = self.rotary_dim;
        Ok(Some(rope))
    }

    /// The scale of the scores.
    pub fn score_scale(&self) -> Option<f64> {
        self.scale.or(self.query_pre_attn_scalar.map(|s| 1.0 / s.sqrt()))
    }
}

#[derive(Clone, Debug)]
enum Projections {
    Fused(Linear),
    Separate { q: Linear, k: Linear, v: Linear },
}

/// Multi-head attention (self or cross), with grouped/multi-query heads,
/// QK-norm, RoPE or ALiBi, soft-capping, dropout and a KV cache.
#[derive(Clone, Debug)]
pub struct Attention {
    projections: Projections,
    out: Linear,
    q_norm: Option<Norm>,
    k_norm: Option<Norm>,
    scale_norm: Option<Norm>,
    rope: Option<Rope>,
    alibi: Option<Alibi>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    causal: bool,
    scale: Option<f64>,
    softcap: Option<f64>,
    attention_dropout: f32,
    proj_dropout: f32,
    training: bool,
    names: AttentionNames,
    path: String,
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

impl Attention {
    pub fn new(config: &AttentionConfig, vb: VarBuilder) -> Result<Self> {
        let path = vb.prefix();
        let fail = |message: String| -> candle_core::Error {
            candle_core::Error::Msg(format!("attention `{path}`: {message}"))
        };
        let heads = config.heads;
        if heads == 0 {
            return Err(fail("heads must be positive".into()));
        }
        let head_dim = match config.head_dim() {
            Some(0) => return Err(fail("head_dim must be positive".into())),
            Some(d) => d,
            None => {
                return Err(fail(format!(
                    "dim {} is not divisible by {heads} heads (set head_dim for heads of another size)",
                    config.dim
                )))
            }
        };
        let kv_heads = config.kv_heads();
        if kv_heads == 0 || heads % kv_heads != 0 {
            return Err(fail(format!(
                "{heads} query heads cannot share {kv_heads} key/value heads (heads must be a multiple of kv_heads)"
            )));
        }
        for (name, p) in [
            ("attention_dropout", config.attention_dropout),
            ("proj_dropout", config.proj_dropout),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(fail(format!("{name} must be in [0, 1), got {p}")));
            }
        }
        if let Some(cap) = config.softcap {
            if !(cap > 0.0 && cap.is_finite()) {
                return Err(fail(format!("softcap must be positive, got {cap}")));
            }
        }
        let context_dim = config.context_dim.unwrap_or(config.dim);
        if config.fused_qkv && context_dim != config.dim {
            return Err(fail(format!(
                "a fused qkv projection reads one input, but context_dim {context_dim} differs from dim {}",
                config.dim
            )));
        }
        let rope_config = config.rope_config().map_err(|e| fail(e.to_string()))?;
        if rope_config.is_some() && config.alibi {
            return Err(fail("choose rotary embeddings or ALiBi, not both".into()));
        }
        let rope = rope_config
            .map(|rc| Rope::new(&rc, vb.device()))
            .transpose()
            .map_err(|e| fail(e.to_string()))?;
        let alibi = config
            .alibi
            .then(|| Alibi::new(&AlibiConfig::new(heads), vb.device()))
            .transpose()?;

        let names = config.names();
        let (q_dim, kv_dim) = (heads * head_dim, kv_heads * head_dim);
        let projection = |input: usize, output: usize, bias: bool, name: &str| {
            let linear = LinearConfig {
                in_features: input,
                out_features: output,
                bias,
            };
            Linear::new(&linear, vb.pp(name))
        };
        let projections = if config.fused_qkv {
            Projections::Fused(projection(config.dim, q_dim + 2 * kv_dim, config.qkv_bias, &names.qkv)?)
        } else {
            Projections::Separate {
                q: projection(config.dim, q_dim, config.qkv_bias, &names.q)?,
                k: projection(context_dim, kv_dim, config.qkv_bias, &names.k)?,
                v: projection(context_dim, kv_dim, config.qkv_bias, &names.v)?,
            }
        };
        let out_dim = config.out_dim.unwrap_or(config.dim);
        let proj_bias = config.proj_bias.unwrap_or(config.qkv_bias);
        let out = projection(q_dim, out_dim, proj_bias, &names.out)?;
        let norm = |on: bool, dim: usize, name: &str| {
            on.then(|| Norm::new(config.norm, dim, config.norm_eps, vb.pp(name)))
                .transpose()
        };
        Ok(Self {
            projections,
            out,
            q_norm: norm(config.qk_norm, head_dim, &names.q_norm)?,
            k_norm: norm(config.qk_norm, head_dim, &names.k_norm)?,
            scale_norm: norm(config.scale_norm, q_dim, &names.norm)?,
            rope,
            alibi,
            heads,
            kv_heads,
            head_dim,
            causal: config.causal,
            scale: config.score_scale(),
            softcap: config.softcap,
            attention_dropout: config.attention_dropout,
            proj_dropout: config.proj_dropout,
            training: false,
            names,
            path,
        })
    }

    /// Turns dropout on (training) or off (inference, the default).
    pub fn set_training(&mut self, training: bool) {
        self.training = training;
    }

    pub fn training(&self) -> bool {
        self.training
    }

    pub fn heads(&self) -> usize {
        self.heads
    }

    pub fn kv_heads(&self) -> usize {
        self.kv_heads
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// The rotary embedding, when the config asks for one.
    pub fn rope(&self) -> Option<&Rope> {
        self.rope.as_ref()
    }

    pub fn alibi(&self) -> Option<&Alibi> {
        self.alibi.as_ref()
    }

    /// Self-attention over `x` `[batch, seq, dim]` → `[batch, seq, out_dim]`.
    ///
    /// `mask` (additive, or boolean with nonzero = attend) broadcasts against
    /// `[batch, heads, seq, k_len]`, where `k_len` counts cached tokens too; the
    /// causal mask, when configured, is added to it. With a `cache`, the new
    /// tokens sit at positions `cache.len() ..` (for RoPE, ALiBi and the causal
    /// mask), their keys and values are appended, and attention reads all of them.
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>, cache: Option<&mut KvCache>) -> Result<Tensor> {
        Ok(self.run(x, None, mask, cache, false)?.0)
    }

    /// Cross-attention: queries from `x` `[batch, q_len, dim]`, keys and values from
    /// `context` `[batch, k_len, context_dim]`. Takes no positions or causal mask.
    pub fn forward_cross(&self, x: &Tensor, context: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        Ok(self.run(x, Some(context), mask, None, false)?.0)
    }

    /// [`forward`](Self::forward) (or, with a `context`, [`forward_cross`](Self::forward_cross)),
    /// also returning the attention probabilities `[batch, heads, q_len, k_len]`.
    pub fn forward_with_weights(
        &self,
        x: &Tensor,
        context: Option<&Tensor>,
        mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<(Tensor, Tensor)> {
        let (out, weights) = self.run(x, context, mask, cache, true)?;
        Ok((out, weights.ok_or_else(weights_missing)?))
    }

    fn fail(&self, message: String) -> candle_core::Error {
        candle_core::Error::Msg(format!("attention `{}`: {message}", self.path))
    }

    fn tap_placeholder(&self, name: &str, t: &Tensor) {
        if self.names.trace_placeholders {
            replica_check::tap(&join(&self.path, name), t);
        }
    }

    /// `[batch, seq, heads * head_dim]` → `[batch, heads, seq, head_dim]`.
    fn split_heads(&self, t: &Tensor, heads: usize) -> Result<Tensor> {
        let (b, s, _) = t.dims3()?;
        t.reshape((b, s, heads, self.head_dim))?.transpose(1, 2)
    }

    fn run(
        &self,
        x: &Tensor,
        context: Option<&Tensor>,
        mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        want_weights: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (batch, q_len, _) = x
            .dims3()
            .map_err(|_| self.fail(format!("input must be [batch, seq, dim], got shape {:?}", x.dims())))?;
        if let Some(context) = context {
            let (cb, _, _) = context.dims3().map_err(|_| {
                self.fail(format!(
                    "context must be [batch, seq, context_dim], got shape {:?}",
                    context.dims()
                ))
            })?;
            if cb != batch {
                return Err(self.fail(format!("input batch {batch} and context batch {cb} differ")));
            }
            if self.causal || self.rope.is_some() || self.alibi.is_some() {
                return Err(self.fail(
                    "cross-attention takes no causal mask, rotary or ALiBi positions (queries and keys come from different sequences)"
                        .into(),
                ));
            }
        }
        let (q_dim, kv_dim) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
        let (q, k, v) = match (&self.projections, context) {
            (Projections::Fused(_), Some(_)) => {
                return Err(self.fail(
                    "a fused qkv projection cannot do cross-attention (split it into q/k/v with a WeightMap)".into(),
                ))
            }
            (Projections::Fused(qkv), None) => {
                let qkv = qkv.forward(x)?;
                (
                    qkv.narrow(D::Minus1, 0, q_dim)?,
                    qkv.narrow(D::Minus1, q_dim, kv_dim)?,
                    qkv.narrow(D::Minus1, q_dim + kv_dim, kv_dim)?,
                )
            }
            (Projections::Separate { q, k, v }, context) => {
                let source = context.unwrap_or(x);
                (q.forward(x)?, k.forward(source)?, v.forward(source)?)
            }
        };
        let q = self.split_heads(&q, self.heads)?;
        let k = self.split_heads(&k, self.kv_heads)?;
        let v = self.split_heads(&v, self.kv_heads)?;
        let q = match &self.q_norm {
            Some(norm) => norm.forward(&q)?,
            None => q,
        };
        let k = match &self.k_norm {
            Some(norm) => norm.forward(&k)?,
            None => k,
        };
        if self.q_norm.is_none() {
            self.tap_placeholder(&self.names.q_norm, &q);
            self.tap_placeholder(&self.names.k_norm, &k);
        }

        let offset = cache.as_ref().map_or(0, |c| c.len());
        let (q, k) = match &self.rope {
            Some(rope) => (rope.apply(&q, offset)?, rope.apply(&k, offset)?),
            None => (q, k),
        };
        let (k, v) = match cache {
            Some(cache) => cache.append(&k, &v)?,
            None => (k, v),
        };
        let alibi = self.alibi.as_ref().map(|alibi| AlibiAt { alibi, offset });
        let options = SdpaOptions {
            scale: self.scale,
            causal: self.causal,
            softcap: self.softcap,
            dropout_p: if self.training { self.attention_dropout } else { 0.0 },
        };
        let (y, weights) =
            attend(&q, &k, &v, mask, alibi, &options, want_weights).map_err(|e| self.fail(e.to_string()))?;

        let y = y.transpose(1, 2)?.reshape((batch, q_len, q_dim))?;
        let y = match &self.scale_norm {
            Some(norm) => norm.forward(&y)?,
            None => {
                self.tap_placeholder(&self.names.norm, &y);
                y
            }
        };
        let mut y = self.out.forward(&y)?;
        if self.training && self.proj_dropout > 0.0 {
            y = candle_nn::ops::dropout(&y, self.proj_dropout)?;
        }
        if let Some(name) = &self.names.proj_drop {
            replica_check::tap(&join(&self.path, name), &y);
        }
        replica_check::tap(&self.path, &y);
        Ok((y, weights))
    }
}
