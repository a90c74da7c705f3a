//! Multi-head latent attention (MLA): DeepSeek-AI, "DeepSeek-V2: A Strong,
//! Economical, and Efficient Mixture-of-Experts Language Model", arXiv 2405.04434
//! (registry: [`crate::papers::DEEPSEEK_V2`]), section 2.1. Reference: HF
//! transformers 5 `DeepseekV2Attention`.
//!
//! Keys and values are compressed into one latent per token, which is what the
//! cache holds; a small decoupled key part carries the rotary positions and is
//! shared by every head:
//!
//! ```text
//! q        = q_b_proj(q_a_layernorm(q_a_proj(x)))      (or q_proj(x) without q_lora_rank)
//! [q_nope, q_pe] = split(q per head, [qk_nope_head_dim, qk_rope_head_dim])
//! [c, k_pe]      = split(kv_a_proj_with_mqa(x), [kv_lora_rank, qk_rope_head_dim])
//! c        = kv_a_layernorm(c)                           (the cached latent, with rope(k_pe))
//! [k_nope, v]    = split(kv_b_proj(c) per head, [qk_nope_head_dim, v_head_dim])
//! q = [q_nope, rope(q_pe)],  k = [k_nope, rope(k_pe)] (k_pe broadcast to every head)
//! y = o_proj(softmax(q kᵀ · scale + causal) v)
//! ```
//!
//! As HF computes it: the rotary part pairs neighbouring features (`2i` with
//! `2i + 1`, a complex product, in float32 whatever the dtype), its tables carry
//! YaRN's attention factor, and the softmax scale is `qk_head_dim^-1/2`, times
//! `mscale(factor, mscale_all_dim)²` under YaRN with `mscale_all_dim`
//! ([`deepseek_softmax_scale`]). The attention is HF's eager one: `q kᵀ` rounded
//! to the input dtype, then scaled, the softmax in float32. The two latent
//! RMSNorms use epsilon 1e-6 (`DeepseekV2RMSNorm`'s default; HF does not pass
//! `rms_norm_eps` to them).

use candle_core::{DType, Result, Tensor, D};
use candle_nn::VarBuilder;
use replica_check::config_check::{finite_positive, positive, probability};
use replica_check::{ConfigCheck, Footprint, Size, Workload};
use serde::{Deserialize, Serialize};

use crate::dropout::Dropout;
use crate::kv_cache::KvCache;
use crate::linear::{Linear, LinearConfig};
use crate::norm::{RmsNorm, RmsNormConfig};
use crate::ops::{self, Causal, ScoreBias};
use crate::rope::{Rope, RopeConfig, RopeStyle};
use crate::rope_scaling::RopeParameters;

fn latent_eps() -> f64 {
    1e-6
}

/// Multi-head latent attention (HF `DeepseekV2Config`'s attention fields).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MlaConfig {
    /// The width of the residual stream (HF `hidden_size`).
    pub dim: usize,
    /// Attention heads (HF `num_attention_heads`).
    pub heads: usize,
    /// The rank of the query compression; `None`: one `q_proj` (DeepSeek-V2-Lite).
    #[serde(default)]
    pub q_lora_rank: Option<usize>,
    /// The rank of the key/value latent (the cached width per token, with `qk_rope_head_dim`).
    pub kv_lora_rank: usize,
    /// Query/key features per head without positions.
    pub qk_nope_head_dim: usize,
    /// Query/key features per head that rotate (the key part shared by all heads).
    pub qk_rope_head_dim: usize,
    /// Value features per head.
    pub v_head_dim: usize,
    /// Biases on `q_a_proj`, `kv_a_proj_with_mqa` and `o_proj` (HF `attention_bias`).
    #[serde(default)]
    pub attention_bias: bool,
    /// The rotary tables: `qk_rope_head_dim` features, base, scaling, positions,
    /// style ([`RopeStyle::Interleaved`] for HF's complex product).
    pub rope: RopeConfig,
    /// The softmax scale; `None` is `(qk_nope_head_dim + qk_rope_head_dim)^-1/2`.
    #[serde(default)]
    pub softmax_scale: Option<f64>,
    /// The latent RMSNorms' epsilon (HF: their default 1e-6).
    #[serde(default = "latent_eps")]
    pub latent_norm_eps: f64,
    /// Dropout on the attention probabilities, in training.
    #[serde(default)]
    pub attention_dropout: f64,
}

impl MlaConfig {
    /// Query/key features per head.
    pub fn qk_head_dim(&self) -> usize {
        self.qk_nope_head_dim + self.qk_rope_head_dim
    }

    /// The scale on `q kᵀ`.
    pub fn scale(&self) -> f64 {
        self.softmax_scale
            .unwrap_or_else(|| (self.qk_head_dim() as f64).powf(-0.5))
    }
}

/// HF's softmax scale for DeepSeek's MLA (`yarn_apply_mscale`): `qk_head_dim^-1/2`,
/// times `mscale²` with `mscale = 0.1 · mscale_all_dim · ln(factor) + 1` when the
/// RoPE type is not `default`, `mscale_all_dim` is set and nonzero and `factor > 1`.
pub fn deepseek_softmax_scale(qk_head_dim: usize, rope: &RopeParameters) -> f64 {
    let scale = (qk_head_dim as f64).powf(-0.5);
    if rope.rope_type() == "default" {
        return scale;
    }
    match (rope.mscale_all_dim.filter(|&m| m != 0.0), rope.factor) {
        (Some(all_dim), Some(factor)) if factor > 1.0 => {
            let mscale = 0.1 * all_dim * factor.ln() + 1.0;
            scale * mscale * mscale
        }
        _ => scale,
    }
}

impl MlaConfig {
    /// HF `DeepseekV2Attention` of a config's fields: `rope` as transformers v5 merges
    /// `rope_parameters` (its base in `rope_theta`, else 10000), the tables over
    /// `max_position_embeddings`, the softmax scale of [`deepseek_softmax_scale`].
    /// Refuses a RoPE type or key that is not implemented, by name.
    #[allow(clippy::too_many_arguments)] // HF's own fields, one argument each
    pub fn deepseek_v2(
        hidden_size: usize,
        num_attention_heads: usize,
        q_lora_rank: Option<usize>,
        kv_lora_rank: usize,
        qk_nope_head_dim: usize,
        qk_rope_head_dim: usize,
        v_head_dim: usize,
        attention_bias: bool,
        rope: &RopeParameters,
        max_position_embeddings: usize,
    ) -> std::result::Result<Self, String> {
        let scaling = rope.scaling(max_position_embeddings)?;
        let qk_head_dim = qk_nope_head_dim
            .checked_add(qk_rope_head_dim)
            .ok_or("`qk_nope_head_dim` plus `qk_rope_head_dim` is too large")?;
        Ok(Self {
            dim: hidden_size,
            heads: num_attention_heads,
            q_lora_rank,
            kv_lora_rank,
            qk_nope_head_dim,
            qk_rope_head_dim,
            v_head_dim,
            attention_bias,
            rope: RopeConfig {
                theta: rope.rope_theta.unwrap_or(10_000.0),
                style: RopeStyle::Interleaved,
                max_positions: max_position_embeddings,
                scaling,
                ..RopeConfig::new(qk_rope_head_dim)
            },
            softmax_scale: Some(deepseek_softmax_scale(qk_head_dim, rope)),
            latent_norm_eps: latent_eps(),
            attention_dropout: 0.0,
        })
    }
}

impl ConfigCheck for MlaConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        positive("dim", self.dim)?;
        positive("heads", self.heads)?;
        positive("kv_lora_rank", self.kv_lora_rank)?;
        positive("qk_rope_head_dim", self.qk_rope_head_dim)?;
        positive("v_head_dim", self.v_head_dim)?;
        if let Some(rank) = self.q_lora_rank {
            positive("q_lora_rank", rank)?;
        }
        if !self.qk_rope_head_dim.is_multiple_of(2) {
            return Err(format!(
                "`qk_rope_head_dim` {} must be even (its features rotate in pairs)",
                self.qk_rope_head_dim
            ));
        }
        if self.rope.head_dim != self.qk_rope_head_dim || self.rope.rotary_dim() != self.qk_rope_head_dim {
            return Err(format!(
                "the rotary tables cover {} features, `qk_rope_head_dim` is {}",
                self.rope.rotary_dim(),
                self.qk_rope_head_dim
            ));
        }
        for (field, value) in [
            ("qk_nope_head_dim", self.qk_nope_head_dim),
            ("qk_rope_head_dim", self.qk_rope_head_dim),
            ("v_head_dim", self.v_head_dim),
            ("kv_lora_rank", self.kv_lora_rank),
        ] {
            if value > 1 << 24 {
                return Err(format!("`{field}` {value} is absurdly large"));
            }
        }
        self.rope.validate().map_err(|m| format!("rope: {m}"))?;
        finite_positive("softmax_scale", self.scale())?;
        finite_positive("latent_norm_eps", self.latent_norm_eps)?;
        probability("attention_dropout", self.attention_dropout)
    }

    /// The projections and norms; per row the queries, the latent, the expanded keys
    /// and values and the output; per head the scores of the sequence.
    fn footprint(&self, work: &Workload) -> Footprint {
        let dim = Size::field("dim", self.dim);
        let heads = Size::field("heads", self.heads);
        let qk = Size::field("qk_nope_head_dim", self.qk_nope_head_dim)
            + Size::field("qk_rope_head_dim", self.qk_rope_head_dim);
        let nope = Size::field("qk_nope_head_dim", self.qk_nope_head_dim);
        let v = Size::field("v_head_dim", self.v_head_dim);
        let kv_rank = Size::field("kv_lora_rank", self.kv_lora_rank);
        let rope = Size::field("qk_rope_head_dim", self.qk_rope_head_dim);
        let q_out = heads.clone() * qk.clone();
        let q_params = match self.q_lora_rank {
            Some(rank) => {
                let rank = Size::field("q_lora_rank", rank);
                dim.clone() * rank.clone() + rank.clone() + rank * q_out.clone()
            }
            None => dim.clone() * q_out.clone(),
        };
        let params = q_params
            + dim.clone() * (kv_rank.clone() + rope.clone())
            + kv_rank.clone()
            + kv_rank.clone() * heads.clone() * (nope + v.clone())
            + heads.clone() * v.clone() * dim.clone();
        let per_row = q_out * 2 + kv_rank + rope + heads.clone() * (qk + v * 2) + dim * 2;
        let own = Footprint {
            params: work.bytes(params),
            activations: work.bytes(work.rows() * per_row + work.batch() * heads * work.len() * work.len() * 2),
        };
        // The rotary tables.
        own + self.rope.footprint(work)
    }
}

#[derive(Clone, Debug)]
enum Queries {
    Direct(Linear),
    Compressed { a: Linear, norm: RmsNorm, b: Linear },
}

/// Multi-head latent attention, causal, with a cache of the compressed latent.
#[derive(Clone, Debug)]
pub struct Mla {
    config: MlaConfig,
    queries: Queries,
    kv_a: Linear,
    kv_norm: RmsNorm,
    kv_b: Linear,
    o_proj: Linear,
    rope: Rope,
    dropout: Dropout,
    path: String,
}

impl Mla {
    /// Reads `q_a_proj`, `q_a_layernorm`, `q_b_proj` (or `q_proj`),
    /// `kv_a_proj_with_mqa`, `kv_a_layernorm`, `kv_b_proj` and `o_proj` at `vb`'s path.
    pub fn new(config: &MlaConfig, vb: VarBuilder) -> Result<Self> {
        let path = vb.prefix();
        crate::admit(&format!("mla `{path}`"), config)?;
        let (d, h) = (config.dim, config.heads);
        let linear = |i, o, bias: bool, name: &str| {
            let cfg = LinearConfig {
                bias,
                ..LinearConfig::new(i, o)
            };
            Linear::new(&cfg, vb.pp(name))
        };
        let norm = |dim, name: &str| {
            let cfg = RmsNormConfig {
                eps: config.latent_norm_eps,
                ..RmsNormConfig::new(dim)
            };
            RmsNorm::new(&cfg, vb.pp(name))
        };
        let q_out = h * config.qk_head_dim();
        let queries = match config.q_lora_rank {
            Some(rank) => Queries::Compressed {
                a: linear(d, rank, config.attention_bias, "q_a_proj")?,
                norm: norm(rank, "q_a_layernorm")?,
                b: linear(rank, q_out, false, "q_b_proj")?,
            },
            None => Queries::Direct(linear(d, q_out, false, "q_proj")?),
        };
        let rope = Rope::new(&config.rope, vb.device())?;
        Ok(Self {
            queries,
            kv_a: linear(
                d,
                config.kv_lora_rank + config.qk_rope_head_dim,
                config.attention_bias,
                "kv_a_proj_with_mqa",
            )?,
            kv_norm: norm(config.kv_lora_rank, "kv_a_layernorm")?,
            kv_b: linear(
                config.kv_lora_rank,
                h * (config.qk_nope_head_dim + config.v_head_dim),
                false,
                "kv_b_proj",
            )?,
            o_proj: linear(h * config.v_head_dim, d, config.attention_bias, "o_proj")?,
            rope,
            dropout: Dropout::from_probability(config.attention_dropout, "")?,
            config: config.clone(),
            path,
        })
    }

    /// The config this attention was built from.
    pub fn config(&self) -> &MlaConfig {
        &self.config
    }

    /// The rotary tables (`qk_rope_head_dim` features, interleaved).
    pub fn rope(&self) -> &Rope {
        &self.rope
    }

    /// Rotates `x` `[batch, heads, seq, qk_rope_head_dim]` in float32 (HF's complex
    /// product on `x.float()`), rounded once to `x`'s dtype.
    fn rotate(&self, x: &Tensor, offset: usize) -> Result<Tensor> {
        self.rope.apply(&x.to_dtype(DType::F32)?, offset)?.to_dtype(x.dtype())
    }

    /// `x` `[batch, seq, dim]` -> `[batch, seq, dim]`, causal; `cache` holds the
    /// normalised latent and the rotated key part of earlier tokens (as
    /// `[batch, 1, len, kv_lora_rank]` and `[batch, 1, len, qk_rope_head_dim]`).
    pub fn forward_t(&self, x: &Tensor, cache: Option<&mut KvCache>, train: bool) -> Result<Tensor> {
        Ok(self.run(x, cache, replica_check::trace::is_active(), train)?.0)
    }

    /// [`forward_t`](Self::forward_t), also returning the attention probabilities
    /// `[batch, heads, seq, k_len]` (recorded as the module's tuple, `path:0`, `path:1`).
    pub fn forward_with_weights_t(
        &self,
        x: &Tensor,
        cache: Option<&mut KvCache>,
        train: bool,
    ) -> Result<(Tensor, Tensor)> {
        let (y, weights) = self.run(x, cache, true, train)?;
        Ok((
            y,
            weights.ok_or_else(|| candle_core::Error::Msg("mla: the probabilities were not computed".into()))?,
        ))
    }

    fn run(
        &self,
        x: &Tensor,
        cache: Option<&mut KvCache>,
        want_weights: bool,
        train: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let cfg = &self.config;
        let (b, s, d) = x.dims3().map_err(|_| {
            candle_core::Error::Msg(format!(
                "mla `{}`: input must be [batch, seq, dim], got {:?}",
                self.path,
                x.dims()
            ))
        })?;
        if d != cfg.dim {
            candle_core::bail!(
                "mla `{}`: input has {d} features, the layer expects {}",
                self.path,
                cfg.dim
            )
        }
        let (h, nope, rope_dim, v_dim) = (cfg.heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim);
        let dtype = x.dtype();
        let offset = cache.as_ref().map_or(0, |c| c.len());

        let q = match &self.queries {
            Queries::Direct(q_proj) => q_proj.forward(x)?,
            Queries::Compressed { a, norm, b } => b.forward(&norm.forward(&a.forward(x)?)?)?,
        };
        let q = q.reshape((b, s, h, cfg.qk_head_dim()))?.transpose(1, 2)?;
        let q_nope = q.narrow(D::Minus1, 0, nope)?;
        let q_pe = self.rotate(&q.narrow(D::Minus1, nope, rope_dim)?.contiguous()?, offset)?;

        let compressed = self.kv_a.forward(x)?;
        let latent = self
            .kv_norm
            .forward(&compressed.narrow(D::Minus1, 0, cfg.kv_lora_rank)?)?;
        let latent = latent.reshape((b, 1, s, cfg.kv_lora_rank))?;
        let k_pe = compressed
            .narrow(D::Minus1, cfg.kv_lora_rank, rope_dim)?
            .reshape((b, 1, s, rope_dim))?;
        let k_pe = self.rotate(&k_pe, offset)?;
        // The cache holds the compressed latent, not the per-head keys and values.
        let (latent, k_pe) = match cache {
            Some(cache) => cache.append(&latent, &k_pe)?,
            None => (latent, k_pe),
        };
        let k_len = latent.dim(2)?;

        let query = Tensor::cat(&[&q_nope, &q_pe], D::Minus1)?;
        let kv = self
            .kv_b
            .forward(&latent)?
            .reshape((b, k_len, h, nope + v_dim))?
            .transpose(1, 2)?;
        let k_nope = kv.narrow(D::Minus1, 0, nope)?;
        let value = kv.narrow(D::Minus1, nope, v_dim)?.contiguous()?;
        let key = Tensor::cat(&[&k_nope, &k_pe.broadcast_as((b, h, k_len, rope_dim))?], D::Minus1)?;

        // HF's eager attention: q kᵀ in the input dtype (accumulated in f32, rounded
        // once), times the scale, the softmax in f32, the value product rounded once.
        let wide = |t: &Tensor| t.to_dtype(DType::F32)?.contiguous();
        let scores = wide(&query)?.matmul(&wide(&key)?.t()?)?.to_dtype(dtype)?;
        let scores = (scores * self.config.scale())?;
        let bias = ScoreBias {
            causal: Some(Causal::BottomRight),
            ..ScoreBias::default()
        };
        let probs = ops::softmax(&scores.to_dtype(DType::F32)?, 1.0, &bias)?.to_dtype(dtype)?;
        let dropped = self.dropout.forward_t(&probs, train)?;
        let heads = wide(&dropped)?.matmul(&wide(&value)?)?.to_dtype(dtype)?;
        let y = heads.transpose(1, 2)?.reshape((b, s, h * v_dim))?;
        let y = self.o_proj.forward(&y)?;
        if want_weights {
            replica_check::tap_tuple(&self.path, &[&y, &probs]);
            Ok((y, Some(probs)))
        } else {
            replica_check::tap(&self.path, &y);
            Ok((y, None))
        }
    }
}
