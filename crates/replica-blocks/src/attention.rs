//! Multi-head attention: Vaswani et al., "Attention Is All You Need", arXiv
//! 1706.03762, with the variants later models added:
//!
//! - grouped-query attention (Ainslie et al., arXiv 2305.13245) and multi-query
//!   attention (Shazeer, arXiv 1911.02150): fewer key/value heads than query
//!   heads (`kv_heads`), each shared by a group of query heads;
//! - QK-norm (Henry et al., arXiv 2010.04245): LayerNorm or RMSNorm on each
//!   head's queries and keys (timm's and HF Qwen3's `q_norm` / `k_norm`);
//! - logit soft-capping (Gemma 2, arXiv 2408.00118): `cap * tanh(scores / cap)`;
//! - rotary ([`crate::rope`], arXiv 2104.09864) or ALiBi ([`crate::alibi`],
//!   arXiv 2108.12409) positions, and a [`KvCache`] for incremental decoding.
//!
//! The attention itself, its numerics and where it runs the kernels, is the op
//! [`scaled_dot_product_attention`] ([`crate::ops`]); the settings are
//! [`AttentionConfig`], the checkpoint names [`AttentionNames`].

mod config;
mod names;

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

pub use self::config::{AttentionConfig, RopeParameters};
pub use self::names::AttentionNames;
// The functional attention lives in the op layer; these paths stay for callers.
pub use crate::ops::{
    repeat_kv, scaled_dot_product_attention, scaled_dot_product_attention_packed,
    scaled_dot_product_attention_with_weights, SdpaOptions,
};

use crate::alibi::{Alibi, AlibiConfig};
use crate::dropout::Dropout;
use crate::kv_cache::KvCache;
use crate::linear::{Linear, LinearConfig};
use crate::norm::Norm;
use crate::ops::{attend, weights_missing, Packed};
use crate::rope::Rope;

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
    qk_norm_seq_first: bool,
    scale_norm: Option<Norm>,
    rope: Option<Rope>,
    alibi: Option<Alibi>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    causal: bool,
    window: Option<usize>,
    scale: Option<f64>,
    softcap: Option<f64>,
    attention_dropout: f32,
    proj_drop: Dropout,
    path: String,
}

impl Attention {
    /// Loads the projections (and norms) at `vb`'s path under [`AttentionConfig::names`]. Fails on
    /// settings that do not fit together: `dim` not divisible into heads without a `head_dim`,
    /// `heads` not a multiple of `kv_heads`, a dropout outside `[0, 1)`, a non-positive `softcap`,
    /// rotary and ALiBi both, or a fused projection with another `context_dim`.
    pub fn new(config: &AttentionConfig, vb: VarBuilder) -> Result<Self> {
        let path = vb.prefix();
        let fail = |message: String| -> candle_core::Error {
            candle_core::Error::Msg(format!("attention `{path}`: {message}"))
        };
        crate::admit(&format!("attention `{path}`"), config)?;
        let heads = config.heads;
        // Admitted: the heads split the width (or head_dim is given) and share the key/value heads.
        let head_dim = config.head_dim().unwrap_or_default();
        let kv_heads = config.kv_heads();
        let context_dim = config.context_dim.unwrap_or(config.dim);
        let rope_config = config.rope_config().map_err(|e| fail(e.to_string()))?;
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
        let norm = |on: bool, dim: usize, name: &str| -> Result<Option<Norm>> {
            Ok(if on {
                Some(Norm::new(config.norm, dim, config.norm_eps, vb.pp(name))?)
            } else {
                names.identity_norms.then(|| Norm::identity(vb.pp(name)))
            })
        };
        let proj_drop_path = names
            .proj_drop
            .as_ref()
            .map_or(String::new(), |name| vb.pp(name).prefix());
        Ok(Self {
            projections,
            out,
            q_norm: norm(config.qk_norm, head_dim, &names.q_norm)?,
            k_norm: norm(config.qk_norm, head_dim, &names.k_norm)?,
            qk_norm_seq_first: config.qk_norm_seq_first,
            scale_norm: norm(config.scale_norm, q_dim, &names.norm)?,
            rope,
            alibi,
            heads,
            kv_heads,
            head_dim,
            causal: config.causal,
            window: config.window,
            scale: config.score_scale(),
            softcap: config.softcap,
            attention_dropout: config.attention_dropout,
            proj_drop: Dropout::from_probability(f64::from(config.proj_dropout), proj_drop_path)?,
            path,
        })
    }

    /// Query heads.
    pub fn heads(&self) -> usize {
        self.heads
    }

    /// Key/value heads (fewer than [`heads`](Self::heads) with grouped- or multi-query attention).
    pub fn kv_heads(&self) -> usize {
        self.kv_heads
    }

    /// Features per head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// The rotary embedding, when the config asks for one.
    pub fn rope(&self) -> Option<&Rope> {
        self.rope.as_ref()
    }

    /// The ALiBi slopes, when the config asks for them.
    pub fn alibi(&self) -> Option<&Alibi> {
        self.alibi.as_ref()
    }

    /// Self-attention over `x` `[batch, seq, dim]` → `[batch, seq, out_dim]`, in
    /// training (`train`: dropout on) or inference.
    ///
    /// `mask` (additive, or boolean with nonzero = attend) broadcasts against
    /// `[batch, heads, seq, k_len]`, where `k_len` counts cached tokens too; the
    /// causal mask, when configured, is added to it. With a `cache`, the new
    /// tokens sit at positions `cache.len() ..` (for RoPE, ALiBi and the causal
    /// mask), their keys and values are appended, and attention reads all of them.
    pub fn forward_t(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        train: bool,
    ) -> Result<Tensor> {
        Ok(self.run(x, None, mask, cache, false, train)?.0)
    }

    /// [`forward_t`](Self::forward_t) in inference.
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>, cache: Option<&mut KvCache>) -> Result<Tensor> {
        self.forward_t(x, mask, cache, false)
    }

    /// Cross-attention: queries from `x` `[batch, q_len, dim]`, keys and values from
    /// `context` `[batch, k_len, context_dim]`. Takes no positions or causal mask.
    pub fn forward_cross_t(&self, x: &Tensor, context: &Tensor, mask: Option<&Tensor>, train: bool) -> Result<Tensor> {
        Ok(self.run(x, Some(context), mask, None, false, train)?.0)
    }

    /// [`forward_cross_t`](Self::forward_cross_t) in inference.
    pub fn forward_cross(&self, x: &Tensor, context: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        self.forward_cross_t(x, context, mask, false)
    }

    /// [`forward_t`](Self::forward_t) (or, with a `context`, [`forward_cross_t`](Self::forward_cross_t)),
    /// also returning the attention probabilities `[batch, heads, q_len, k_len]`. As a
    /// module that returns a tuple, it records the pair as `path:0` and `path:1`.
    pub fn forward_with_weights_t(
        &self,
        x: &Tensor,
        context: Option<&Tensor>,
        mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        train: bool,
    ) -> Result<(Tensor, Tensor)> {
        let (out, weights) = self.run(x, context, mask, cache, true, train)?;
        Ok((out, weights.ok_or_else(weights_missing)?))
    }

    /// [`forward_with_weights_t`](Self::forward_with_weights_t) in inference.
    pub fn forward_with_weights(
        &self,
        x: &Tensor,
        context: Option<&Tensor>,
        mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<(Tensor, Tensor)> {
        self.forward_with_weights_t(x, context, mask, cache, false)
    }

    fn fail(&self, message: String) -> candle_core::Error {
        candle_core::Error::Msg(format!("attention `{}`: {message}", self.path))
    }

    /// `[batch, seq, heads, head_dim]` → `[batch, heads, seq, head_dim]`, through
    /// `norm` (the QK-norm) where there is one: before the heads move in front of
    /// the sequence (`qk_norm_seq_first`, HF) or after (timm). Each head's features
    /// are normalised alike either way; the layout is the one the reference records.
    fn heads_first(&self, t: Tensor, norm: Option<&Norm>) -> Result<Tensor> {
        match norm {
            Some(norm) if self.qk_norm_seq_first => norm.forward(&t)?.transpose(1, 2),
            Some(norm) => norm.forward(&t.transpose(1, 2)?),
            None => t.transpose(1, 2),
        }
    }

    /// The sliding window of a causal attention, if it has one.
    pub fn window(&self) -> Option<usize> {
        self.window
    }

    fn run(
        &self,
        x: &Tensor,
        context: Option<&Tensor>,
        mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        want_weights: bool,
        train: bool,
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
        let (heads, kv_heads, head_dim) = (self.heads, self.kv_heads, self.head_dim);
        let q_dim = heads * head_dim;
        // The projections as `[batch, seq, heads, head_dim]` views, and the fused one whole.
        let (q, k, v, fused) = match (&self.projections, context) {
            (Projections::Fused(_), Some(_)) => {
                return Err(self.fail(
                    "a fused qkv projection cannot do cross-attention (split it into q/k/v with a WeightMap)".into(),
                ))
            }
            (Projections::Fused(qkv), None) => {
                let qkv = qkv.forward(x)?;
                let parts = qkv.reshape((batch, q_len, heads + 2 * kv_heads, head_dim))?;
                (
                    parts.narrow(2, 0, heads)?,
                    parts.narrow(2, heads, kv_heads)?,
                    parts.narrow(2, heads + kv_heads, kv_heads)?,
                    Some(qkv),
                )
            }
            (Projections::Separate { q, k, v }, context) => {
                let source = context.unwrap_or(x);
                let split = |t: Tensor, n: usize| t.reshape((t.dim(0)?, t.dim(1)?, n, head_dim));
                (
                    split(q.forward(x)?, heads)?,
                    split(k.forward(source)?, kv_heads)?,
                    split(v.forward(source)?, kv_heads)?,
                    None,
                )
            }
        };
        // The fused kernel can take the projection itself when nothing comes between.
        let packed = fused
            .as_ref()
            .filter(|_| self.q_norm.is_none() && self.k_norm.is_none() && self.rope.is_none() && cache.is_none())
            .map(|qkv| Packed { qkv, heads, kv_heads });
        let q = self.heads_first(q, self.q_norm.as_ref())?;
        let k = self.heads_first(k, self.k_norm.as_ref())?;
        let v = self.heads_first(v, None)?;

        let offset = cache.as_ref().map_or(0, |c| c.len());
        let (q, k) = match &self.rope {
            Some(rope) => (rope.apply(&q, offset)?, rope.apply(&k, offset)?),
            None => (q, k),
        };
        let (k, v) = match cache {
            Some(cache) => {
                // A cache that rolls keeps only what a window that wide needs.
                if let Some(kept) = cache.window().filter(|&w| self.window.is_none_or(|mine| w < mine)) {
                    let mine = self
                        .window
                        .map_or("every earlier token".into(), |w| format!("a window of {w}"));
                    return Err(self.fail(format!(
                        "the kv cache keeps a window of {kept} tokens, but the attention sees {mine}"
                    )));
                }
                cache.append(&k, &v)?
            }
            None => (k, v),
        };
        let alibi = self.alibi.as_ref().map(|alibi| alibi.at(offset));
        let options = SdpaOptions {
            scale: self.scale,
            causal: self.causal,
            window: self.window,
            softcap: self.softcap,
            dropout_p: if train { self.attention_dropout } else { 0.0 },
        };
        let (y, weights) =
            attend(&q, &k, &v, mask, alibi, &options, want_weights, packed).map_err(|e| self.fail(e.to_string()))?;
        let y = y.merged()?;
        debug_assert_eq!(y.dims(), [batch, q_len, q_dim]);
        let y = match &self.scale_norm {
            Some(norm) => norm.forward(&y)?,
            None => y,
        };
        let y = self.proj_drop.forward_t(&self.out.forward(&y)?, train)?;
        match &weights {
            Some(w) if want_weights => replica_check::tap_tuple(&self.path, &[&y, w]),
            _ => replica_check::tap(&self.path, &y),
        }
        Ok((y, weights))
    }
}
