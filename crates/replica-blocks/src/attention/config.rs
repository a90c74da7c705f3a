//! [`AttentionConfig`]: multi-head attention settings, read from a HF
//! `config.json` or timm's `Attention` arguments, with the rotary embedding (and
//! HF v5 `rope_parameters`) they ask for.

use candle_core::Result;
use replica_check::config_check::{finite, finite_positive, non_negative, positive};
use replica_check::{ConfigCheck, Footprint, Size, Workload};
use serde::{Deserialize, Serialize};

use super::AttentionNames;
use crate::alibi::AlibiConfig;
use crate::norm::NormKind;
use crate::rope::{RopeConfig, RopeStyle};
pub use crate::rope_scaling::RopeParameters;

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
    /// Query heads; HF `num_attention_heads`, timm `num_heads`.
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
    /// Run the QK-norm on `[batch, seq, heads, head_dim]`, before the heads move in
    /// front of the sequence, as HF Qwen3 does (and records), rather than on timm's
    /// `[batch, heads, seq, head_dim]`. The values are the same.
    #[serde(default)]
    pub qk_norm_seq_first: bool,
    /// Normalise the attention output before the projection (timm's `scale_norm`).
    #[serde(default)]
    pub scale_norm: bool,
    /// The kind of the QK and scale norms.
    #[serde(default)]
    pub norm: NormKind,
    /// The epsilon of the QK and scale norms (HF `rms_norm_eps`, `layer_norm_eps`); default 1e-5.
    #[serde(default = "default_norm_eps", alias = "rms_norm_eps", alias = "layer_norm_eps")]
    pub norm_eps: f64,
    /// Self-attention hides future tokens (decoders).
    #[serde(default, alias = "is_causal")]
    pub causal: bool,
    /// With `causal`: a sliding window (Mistral, arXiv 2310.06825), so each query
    /// sees itself and the `window - 1` tokens before it, as HF's `sliding_window`
    /// masks on the layers it applies to (which a model decides from its config:
    /// `layer_types`, Qwen2's `use_sliding_window`). `None`: every earlier token.
    #[serde(default)]
    pub window: Option<usize>,
    /// Rotary embedding layout; see the type's doc for when rotary embeddings are on.
    #[serde(default)]
    pub rope: Option<RopeStyle>,
    /// The RoPE base (HF v4 `rope_theta`, GPT-NeoX `rotary_emb_base`); setting it turns rotary
    /// embeddings on. `None` is 10000.
    #[serde(default, alias = "rotary_emb_base")]
    pub rope_theta: Option<f64>,
    /// HF v5 `rope_parameters`, which take precedence over `rope_theta` and
    /// `partial_rotary_factor`; setting it turns rotary embeddings on. A `rope_type`
    /// other than `default` scales the rotary embedding ([`crate::rope_scaling`]).
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
    /// Gemma 2's `query_pre_attn_scalar`: the scores are scaled by its `^-0.5`
    /// when `scale` is not given.
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
    /// `dim` features in `heads` heads, every other setting at its default: separate unbiased
    /// projections with HF names, no positions, no norms, not causal, no dropout.
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
            qk_norm_seq_first: false,
            scale_norm: false,
            norm: NormKind::default(),
            norm_eps: default_norm_eps(),
            causal: false,
            window: None,
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

    /// Key/value heads: `kv_heads`, or `heads` when unset.
    pub fn kv_heads(&self) -> usize {
        self.kv_heads.unwrap_or(self.heads)
    }

    /// Features per head (`None` when `dim` does not split evenly and none is given).
    pub fn head_dim(&self) -> Option<usize> {
        self.head_dim
            .or_else(|| (self.heads > 0 && self.dim.is_multiple_of(self.heads)).then(|| self.dim / self.heads))
    }

    /// The checkpoint names: `names`, or the preset that fits the projection
    /// ([`AttentionNames::timm`] when fused, else [`AttentionNames::hf`]).
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
        let scaling = match params {
            Some(p) => p
                .scaling(self.max_positions)
                .map_err(|message| candle_core::Error::Msg(format!("attention: {message}")))?,
            None => None,
        };
        let on = self.rope.is_some() || self.rope_theta.is_some() || params.is_some() || self.rotary_dim.is_some();
        if !on {
            return Ok(None);
        }
        let Some(head_dim) = self.head_dim() else {
            return Ok(None);
        };
        let mut rope = RopeConfig::new(head_dim);
        rope.style = self.rope.unwrap_or_default();
        rope.max_positions = scaling
            .as_ref()
            .map_or(self.max_positions, |s| s.max_positions(self.max_positions));
        rope.scaling = scaling;
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

impl ConfigCheck for AttentionConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        positive("dim", self.dim)?;
        let heads = self.heads;
        if heads == 0 {
            return Err("heads must be positive".into());
        }
        match self.head_dim() {
            Some(0) => return Err("head_dim must be positive".into()),
            Some(_) => {}
            None => {
                return Err(format!(
                    "dim {} is not divisible by {heads} heads (set head_dim for heads of another size)",
                    self.dim
                ))
            }
        }
        let kv_heads = self.kv_heads();
        if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(format!(
                "{heads} query heads cannot share {kv_heads} key/value heads (heads must be a multiple of kv_heads)"
            ));
        }
        for (name, p) in [
            ("attention_dropout", self.attention_dropout),
            ("proj_dropout", self.proj_dropout),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(format!("{name} must be in [0, 1), got {p}"));
            }
        }
        if let Some(cap) = self.softcap {
            if !(cap > 0.0 && cap.is_finite()) {
                return Err(format!("softcap must be positive, got {cap}"));
            }
        }
        if let Some(window) = self.window {
            positive("window", window)?;
            if !self.causal {
                return Err(format!(
                    "a sliding window ({window}) needs causal attention (causal is false)"
                ));
            }
        }
        if let Some(context_dim) = self.context_dim {
            positive("context_dim", context_dim)?;
        }
        if let Some(out_dim) = self.out_dim {
            positive("out_dim", out_dim)?;
        }
        non_negative("norm_eps", self.norm_eps)?;
        if let Some(scale) = self.scale {
            finite("scale", scale)?;
        }
        if let Some(scalar) = self.query_pre_attn_scalar {
            finite_positive("query_pre_attn_scalar", scalar)?;
        }
        let context_dim = self.context_dim.unwrap_or(self.dim);
        if self.fused_qkv && context_dim != self.dim {
            return Err(format!(
                "a fused qkv projection reads one input, but context_dim {context_dim} differs from dim {}",
                self.dim
            ));
        }
        let rope = self.rope_config().map_err(|e| e.to_string())?;
        if rope.is_some() && self.alibi {
            return Err("choose rotary embeddings or ALiBi, not both".into());
        }
        match rope {
            Some(rope) => rope.validate().map_err(|message| format!("rope: {message}")),
            None => Ok(()),
        }
    }

    /// The projections (fused or not), biases and norms, the rotary tables or ALiBi
    /// slopes; per row its projections, the keys and values repeated to every
    /// head, the output, and per head a score for every key (scores, probabilities
    /// and their dropout).
    fn footprint(&self, work: &Workload) -> Footprint {
        let dim = Size::field("dim", self.dim);
        let heads = Size::field("heads", self.heads);
        let kv_heads = self.kv_heads.map_or(heads.clone(), |kv| Size::field("kv_heads", kv));
        let head_dim = match self.head_dim {
            Some(head_dim) => Size::field("head_dim", head_dim),
            None => Size::from_field("dim", self.dim, self.head_dim().unwrap_or(0)),
        };
        let context = self.context_dim.map_or(dim.clone(), |c| Size::field("context_dim", c));
        let out = self.out_dim.map_or(dim.clone(), |o| Size::field("out_dim", o));
        let q = heads.clone() * head_dim.clone();
        let kv = kv_heads * head_dim.clone();
        let projections = if self.fused_qkv {
            dim * (q.clone() + kv.clone() * 2)
        } else {
            dim * q.clone() + context * kv.clone() * 2
        };
        let biases = q.clone() + kv.clone() * 2 + out.clone();
        let norms = head_dim * 4 + q.clone() * 2;
        let own = Footprint {
            params: work.bytes(projections + q.clone() * out.clone() + biases + norms),
            activations: work.bytes(work.rows() * (q * 4 + kv * 4 + out) + work.rows() * heads * work.len() * 3),
        };
        let rope = match self.rope_config() {
            Ok(Some(rope)) => rope.footprint(work),
            _ => Footprint::NONE,
        };
        let alibi = if self.alibi {
            AlibiConfig::new(self.heads).footprint(work)
        } else {
            Footprint::NONE
        };
        own + rope + alibi
    }
}
