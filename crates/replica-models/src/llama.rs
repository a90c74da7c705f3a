//! A LLaMA-style decoder: Touvron et al., "LLaMA: Open and Efficient Foundation
//! Language Models", arXiv 2302.13971. Reference: HF `transformers.LlamaForCausalLM`.
//!
//! Pre-norm blocks with RMSNorm (arXiv 1910.07467), rotary position embeddings
//! (RoFormer, arXiv 2104.09864; `rope_theta`, no scaling), a SwiGLU MLP
//! (arXiv 2002.05202), grouped-query attention (arXiv 2305.13245) and a KV cache.
//! Module paths are HF's (`model.layers.0.self_attn.q_proj`), so a HF checkpoint
//! loads without renaming.
//!
//! HF checkpoints rotate feature `i` with `i + head_dim/2` (`rotate_half`); Meta's
//! original checkpoints pair neighbouring features, and HF permutes their q/k
//! weights on conversion. `rope_interleaved: true` reads Meta's layout as it is.

use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use replica_blocks::attention::{AttentionConfig, AttentionNames};
use replica_blocks::kv_cache::KvCache;
use replica_blocks::{
    Activation, AttentionOutput, BlockNames, Embedding, EmbeddingConfig, FeedForwardConfig, GluMlpConfig, Linear,
    LinearConfig, NormKind, ResidualLayout, RmsNorm, RmsNormConfig, RopeStyle, TransformerBlock,
    TransformerBlockConfig,
};
use replica_check::WeightMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::checkpoint::{self, Family};
use crate::config::{parse_config, positive};
use crate::generation::CausalLm;
use crate::gpt2::check_cache;
use crate::{Error, Result};

fn silu() -> Activation {
    Activation::Silu
}
fn default_eps() -> f64 {
    1e-6
}
fn default_max_positions() -> usize {
    2048
}

/// HF transformers v5 `rope_parameters` (v4 configs carry `rope_theta` and `rope_scaling` instead).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RopeParameters {
    #[serde(default)]
    pub rope_type: Option<String>,
    #[serde(default)]
    pub rope_theta: Option<f64>,
}

/// A HF LLaMA `config.json` (`LlamaConfig`); fields it lacks take HF's defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); `None` is `num_attention_heads`.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Features per head; `None` is `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "silu")]
    pub hidden_act: Activation,
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// v4 configs: the RoPE base (default 10000).
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// v4 configs: RoPE scaling; only `null` is implemented.
    #[serde(default)]
    pub rope_scaling: Option<Value>,
    /// v5 configs: the RoPE type (only `default`) and base.
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Dropout on the attention probabilities, in training.
    #[serde(default)]
    pub attention_dropout: f64,
    /// The embedding's padding row (no gradient flows to it).
    #[serde(default)]
    pub pad_token_id: Option<usize>,
    /// Not a HF field: pair neighbouring features in RoPE (Meta's checkpoints)
    /// instead of HF's halves.
    #[serde(default)]
    pub rope_interleaved: bool,
    #[serde(default)]
    pub model_type: Option<String>,
}

impl crate::config::ModelConfig for LlamaConfig {
    /// `pretraining_tp`: transformers v5 ignores it, and v4's sliced projections
    /// only reorder the same sums.
    const NOT_USED: &'static [&'static str] = &["pretraining_tp"];

    fn check(&self) -> std::result::Result<(), String> {
        self.validate()
    }
}

impl LlamaConfig {
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let config: Self = crate::config::read_config(path)?;
        config.validate().map_err(|m| Error::config(path, m))?;
        Ok(config)
    }

    pub fn from_value(value: &Value, origin: impl AsRef<Path>) -> Result<Self> {
        let config: Self = parse_config(value, &origin)?;
        config.validate().map_err(|m| Error::config(origin, m))?;
        Ok(config)
    }

    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// The RoPE base: `rope_parameters.rope_theta`, else `rope_theta`, else 10000.
    pub fn theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|p| p.rope_theta)
            .or(self.rope_theta)
            .unwrap_or(10_000.0)
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        if let Some(kind) = self.model_type.as_deref().filter(|k| *k != "llama") {
            return Err(format!(
                "model_type is `{kind}`, not `llama`: this is not a LLaMA config"
            ));
        }
        positive(&[
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.kv_heads()),
            ("max_position_embeddings", self.max_position_embeddings),
        ])?;
        if self.head_dim.is_none() && self.hidden_size % self.num_attention_heads != 0 {
            return Err(format!(
                "hidden_size {} is not divisible by num_attention_heads {} (give head_dim)",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.num_attention_heads % self.kv_heads() != 0 {
            return Err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.kv_heads()
            ));
        }
        if self.head_dim() % 2 != 0 {
            return Err(format!(
                "head_dim {} must be even for rotary embeddings",
                self.head_dim()
            ));
        }
        if self.rope_scaling.as_ref().is_some_and(|s| !s.is_null()) {
            return Err("rope_scaling is set; only unscaled RoPE is implemented".into());
        }
        if let Some(kind) = self
            .rope_parameters
            .as_ref()
            .and_then(|p| p.rope_type.as_deref())
            .filter(|t| *t != "default")
        {
            return Err(format!(
                "rope_type `{kind}` is not implemented (only `default`, unscaled RoPE)"
            ));
        }
        Ok(())
    }

    /// One decoder layer, as `LlamaDecoderLayer`.
    pub fn block_config(&self) -> TransformerBlockConfig {
        let attention = AttentionConfig {
            kv_heads: Some(self.kv_heads()),
            head_dim: Some(self.head_dim()),
            qkv_bias: self.attention_bias,
            proj_bias: Some(self.attention_bias),
            causal: true,
            rope: Some(if self.rope_interleaved {
                RopeStyle::Interleaved
            } else {
                RopeStyle::HalfSplit
            }),
            rope_theta: Some(self.theta()),
            attention_dropout: self.attention_dropout as f32,
            max_positions: self.max_position_embeddings,
            names: Some(AttentionNames::hf()),
            ..AttentionConfig::new(self.hidden_size, self.num_attention_heads)
        };
        let mlp = GluMlpConfig {
            bias: self.mlp_bias,
            ..GluMlpConfig::new(self.hidden_size, self.intermediate_size, self.hidden_act)
        };
        TransformerBlockConfig {
            dim: self.hidden_size,
            layout: ResidualLayout::PreNorm,
            norm: NormKind::RmsNorm,
            norm_eps: self.rms_norm_eps,
            attention,
            feed_forward: FeedForwardConfig::Glu(mlp),
            layer_scale: None,
            drop_path: 0.0,
            names: BlockNames::llama().returning(AttentionOutput::TupleWithWeights),
        }
    }

    fn summary(&self) -> String {
        format!(
            "vocab_size {}, hidden_size {}, intermediate_size {}, num_hidden_layers {}, num_attention_heads {}, num_key_value_heads {}",
            self.vocab_size,
            self.hidden_size,
            self.intermediate_size,
            self.num_hidden_layers,
            self.num_attention_heads,
            self.kv_heads()
        )
    }
}

/// A LLaMA-style decoder with its language-model head (`LlamaForCausalLM`).
#[derive(Clone, Debug)]
pub struct Llama {
    embed_tokens: Embedding,
    layers: Vec<TransformerBlock>,
    norm: RmsNorm,
    lm_head: Linear,
    config: LlamaConfig,
    device: Device,
}

impl Llama {
    /// Builds the model under `vb` (the checkpoint's root: `model.*`, `lm_head.weight`).
    pub fn new(config: &LlamaConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        config
            .validate()
            .map_err(|m| candle_core::Error::Msg(format!("LLaMA config: {m}")))?;
        let m = vb.pp("model");
        let embed_tokens = Embedding::new(
            &EmbeddingConfig {
                padding_idx: config.pad_token_id,
                ..EmbeddingConfig::new(config.vocab_size, config.hidden_size)
            },
            m.pp("embed_tokens"),
        )?;
        let block = config.block_config();
        let layers = (0..config.num_hidden_layers)
            .map(|i| TransformerBlock::new(&block, m.pp("layers").pp(i)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let norm = RmsNorm::new(
            &RmsNormConfig {
                dim: config.hidden_size,
                eps: config.rms_norm_eps,
            },
            m.pp("norm"),
        )?;
        let lm_head = if config.tie_word_embeddings {
            Linear::from_weights(embed_tokens.weight().clone(), None, vb.pp("lm_head").prefix())
        } else {
            Linear::new(
                &LinearConfig::new(config.hidden_size, config.vocab_size).no_bias(),
                vb.pp("lm_head"),
            )?
        };
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            config: config.clone(),
            device: vb.device().clone(),
        })
    }

    /// HF LLaMA checkpoints need no renaming; a tied head's `lm_head.weight` copy
    /// and the old `rotary_emb.inv_freq` buffers are dropped.
    pub fn weight_map(config: &LlamaConfig) -> WeightMap {
        let map = WeightMap::new().ignore(r"\.rotary_emb\.inv_freq$");
        if config.tie_word_embeddings {
            map.ignore(r"^lm_head\.weight$")
        } else {
            map
        }
    }

    /// Loads a HF LLaMA checkpoint strictly (see [`crate::gpt2::Gpt2::load`]).
    pub fn load(config: &LlamaConfig, checkpoint: impl AsRef<Path>, dtype: DType, device: &Device) -> Result<Self> {
        let checkpoint = checkpoint.as_ref();
        let tensors = checkpoint::read_checkpoint(checkpoint, device)?;
        Self::from_tensors(config, tensors, checkpoint, dtype, device)
    }

    pub fn from_tensors(
        config: &LlamaConfig,
        tensors: std::collections::BTreeMap<String, Tensor>,
        origin: impl AsRef<Path>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        config
            .validate()
            .map_err(|m| Error::config(origin.as_ref(), format!("LLaMA config: {m}")))?;
        checkpoint::load_strict(
            Family::Llama,
            tensors,
            origin.as_ref(),
            &Self::weight_map(config),
            dtype,
            device,
            &config.summary(),
            |vb| Self::new(config, vb),
        )
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The final hidden states `[batch, seq, hidden_size]` (after `model.norm`).
    pub fn forward_hidden(&self, ids: &Tensor, mut cache: Option<&mut [KvCache]>) -> candle_core::Result<Tensor> {
        let (_, seq) = ids.dims2().map_err(|_| {
            candle_core::Error::Msg(format!(
                "LLaMA: token ids must be [batch, seq], got shape {:?}",
                ids.dims()
            ))
        })?;
        let offset = check_cache(&cache, self.layers.len())?;
        if offset + seq > self.config.max_position_embeddings {
            candle_core::bail!(
                "LLaMA: a sequence of {} tokens{} is longer than max_position_embeddings {} (the rotary tables end there)",
                offset + seq,
                if offset > 0 {
                    format!(" ({offset} cached + {seq} new)")
                } else {
                    String::new()
                },
                self.config.max_position_embeddings
            )
        }
        let mut x = self.embed_tokens.forward(ids)?;
        if replica_check::trace::is_active() {
            self.trace_rotary_tables(seq, offset, x.dtype())?;
        }
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x, None, cache.as_mut().map(|c| &mut c[i]))?;
        }
        let x = self.norm.forward(&x)?;
        replica_check::tap("model:last_hidden_state", &x);
        Ok(x)
    }

    /// Records the rotary tables as HF's `model.rotary_emb` returns them:
    /// `(cos, sin)`, each `[1, seq, head_dim]` with the frequencies repeated twice.
    fn trace_rotary_tables(&self, seq: usize, offset: usize, dtype: DType) -> candle_core::Result<()> {
        let Some(rope) = self.layers.first().and_then(|l| l.attention().rope()) else {
            return Ok(());
        };
        let (cos, sin) = rope.tables(seq, offset)?;
        let twice = |t: &Tensor| Tensor::cat(&[t, t], D::Minus1)?.unsqueeze(0)?.to_dtype(dtype);
        replica_check::tap_tuple("model.rotary_emb", &[&twice(&cos)?, &twice(&sin)?]);
        Ok(())
    }

    /// Logits `[batch, seq, vocab_size]`.
    pub fn forward(&self, ids: &Tensor, cache: Option<&mut [KvCache]>) -> candle_core::Result<Tensor> {
        let hidden = self.forward_hidden(ids, cache)?;
        self.lm_head.forward(&hidden)
    }
}

impl CausalLm for Llama {
    fn forward_lm(&self, ids: &Tensor, cache: Option<&mut [KvCache]>) -> candle_core::Result<Tensor> {
        self.forward(ids, cache)
    }

    fn num_layers(&self) -> usize {
        self.layers.len()
    }

    fn max_positions(&self) -> usize {
        self.config.max_position_embeddings
    }

    fn device(&self) -> &Device {
        &self.device
    }
}
