//! A LLaMA-style decoder: Touvron et al., "LLaMA: Open and Efficient Foundation
//! Language Models", arXiv 2302.13971. Reference: HF `transformers.LlamaForCausalLM`.
//!
//! Pre-norm blocks with RMSNorm (arXiv 1910.07467), rotary position embeddings
//! (RoFormer, arXiv 2104.09864; `rope_theta`, and HF's RoPE scalings: `linear`,
//! `dynamic`, `yarn`, `llama3`, `longrope`, see `replica_blocks::rope_scaling`), a SwiGLU MLP
//! (arXiv 2002.05202), grouped-query attention (arXiv 2305.13245) and a KV cache.
//! Module paths are HF's (`model.layers.0.self_attn.q_proj`), so a HF checkpoint
//! loads without renaming.
//!
//! HF checkpoints rotate feature `i` with `i + head_dim/2` (`rotate_half`); Meta's
//! original checkpoints pair neighbouring features, and HF permutes their q/k
//! weights on conversion. `rope_interleaved: true` reads Meta's layout as it is.

use replica_blocks::attention::{AttentionConfig, AttentionNames};
use replica_blocks::{
    Activation, BlockNames, EmbeddingConfig, FeedForwardConfig, GluMlpConfig, NormKind, ResidualLayout, RmsNormConfig,
    RopeStyle, TransformerBlockConfig,
};
use replica_check::config_check::{at_most, finite_positive, non_negative};
use replica_check::{ConfigCheck, Footprint, Workload};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::{positive, probabilities};
pub use crate::decoder::RopeParameters;
use crate::decoder::{rope_parameters, DecoderConfig, DecoderLm, DecoderSpec, SlidingLayers, SlidingWindow};
use crate::{papers, Family, ModelConfig, Preset};

fn silu() -> Activation {
    Activation::Silu
}
fn default_eps() -> f64 {
    1e-6
}
fn default_max_positions() -> usize {
    2048
}

/// A HF LLaMA `config.json` (`LlamaConfig`); fields it lacks take HF's defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Rows of the token embedding (and columns of the LM head).
    pub vocab_size: usize,
    /// The width of the residual stream.
    pub hidden_size: usize,
    /// The SwiGLU MLP's hidden width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads per layer.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); `None` is `num_attention_heads`.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Features per head; `None` is `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// The MLP's gate activation (SiLU: SwiGLU).
    #[serde(default = "silu")]
    pub hidden_act: Activation,
    /// The longest sequence the rotary tables cover (with `dynamic` RoPE scaling,
    /// the length past which the frequencies grow).
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    /// The RMSNorms' epsilon.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// v4 configs: the RoPE base (default 10000).
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// v4 configs: RoPE scaling (`type`/`rope_type` and its parameters); when set it
    /// takes the place of `rope_parameters`, as transformers v5 reads it.
    #[serde(default)]
    pub rope_scaling: Option<RopeParameters>,
    /// v5 configs: the RoPE type (`default`, `linear`, `dynamic`, `yarn`, `llama3`,
    /// `longrope`), base and scaling parameters.
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    /// Biases on the q/k/v/o projections.
    #[serde(default)]
    pub attention_bias: bool,
    /// Biases on the MLP's projections.
    #[serde(default)]
    pub mlp_bias: bool,
    /// The LM head reads the token embedding's weight.
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
    /// Mistral's attention window (`sliding_window`, HF's default 4096 for a
    /// Mistral config that lacks it): absent, `null`, or a number of tokens. Every
    /// layer slides, as HF's `MistralModel` masks them.
    #[serde(default, deserialize_with = "present")]
    pub sliding_window: Option<Option<usize>>,
    /// `llama`, or `mistral` (the same decoder, with a sliding window), when given.
    #[serde(default)]
    pub model_type: Option<String>,
}

/// A field that is present (`Some`, its value possibly `null`) or absent (`None`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<Option<usize>>, D::Error> {
    Option::<usize>::deserialize(d).map(Some)
}

impl ModelConfig for LlamaConfig {
    /// `pretraining_tp`: transformers v5 ignores it, and v4's sliced projections
    /// only reorder the same sums.
    const NOT_USED: &'static [&'static str] = &["pretraining_tp"];
}

impl ConfigCheck for LlamaConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        if let Some(kind) = self.model_type.as_deref().filter(|k| !["llama", "mistral"].contains(k)) {
            return Err(format!(
                "model_type is `{kind}`, not `llama` or `mistral`: this is not a LLaMA config"
            ));
        }
        if !self.is_mistral() && self.sliding_window.is_some_and(|w| w.is_some()) {
            return Err(
                "sliding_window is set; LLaMA attends to every earlier token (model_type `mistral` has a window)"
                    .into(),
            );
        }
        if self.window() == Some(0) {
            return Err("`sliding_window` must be positive, got 0".into());
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
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not divisible by num_attention_heads {} (give head_dim)",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return Err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.kv_heads()
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(format!(
                "head_dim {} must be even for rotary embeddings",
                self.head_dim()
            ));
        }
        let rope = self.rope()?;
        if let Some(fraction) = rope
            .partial_rotary_factor
            .filter(|f| *f != 1.0 && rope.rope_type() != "default")
        {
            return Err(format!(
                "rope_parameters.partial_rotary_factor must be 1 for rope_type `{}` (HF's LLaMA rotates whole heads), got {fraction}",
                rope.rope_type()
            ));
        }
        non_negative("rms_norm_eps", self.rms_norm_eps)?;
        probabilities(&[("attention_dropout", self.attention_dropout)])?;
        finite_positive("rope_theta", self.theta())?;
        // Token ids are u32.
        at_most("vocab_size", self.vocab_size, 1 << 32)?;
        if let Some(pad) = self.pad_token_id.filter(|&pad| pad >= self.vocab_size) {
            return Err(format!(
                "pad_token_id {pad} is not below vocab_size {}",
                self.vocab_size
            ));
        }
        self.block_config().validate().map_err(|m| format!("layer: {m}"))
    }

    fn footprint(&self, work: &Workload) -> Footprint {
        self.decoder_spec().footprint(work)
    }
}

impl LlamaConfig {
    /// Key/value heads: `num_key_value_heads`, else one per query head.
    pub fn kv_heads(&self) -> usize {
        // HF's defaults: one per query head for LLaMA, 8 for Mistral.
        let default = if self.is_mistral() { 8 } else { self.num_attention_heads };
        self.num_key_value_heads.unwrap_or(default)
    }

    /// Whether this is a Mistral config (`model_type: mistral`).
    pub fn is_mistral(&self) -> bool {
        self.model_type.as_deref() == Some("mistral")
    }

    /// The attention window in tokens, if any (Mistral's `sliding_window`, 4096 when absent).
    pub fn window(&self) -> Option<usize> {
        match self.sliding_window {
            Some(window) => window,
            None if self.is_mistral() => Some(4096),
            None => None,
        }
    }

    /// Features per head: `head_dim`, else `hidden_size / num_attention_heads`.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// The RoPE parameters as transformers v5 reads them (v4's `rope_scaling`, else
    /// `rope_parameters`, with the base filled in); refuses what is not implemented.
    pub fn rope(&self) -> std::result::Result<RopeParameters, String> {
        rope_parameters(
            self.rope_theta,
            &self.rope_scaling,
            &self.rope_parameters,
            self.max_position_embeddings,
        )
    }

    /// The RoPE base: `rope_parameters.rope_theta`, else `rope_theta`, else 10000.
    pub fn theta(&self) -> f64 {
        self.rope().ok().and_then(|p| p.rope_theta).unwrap_or(10_000.0)
    }

    /// The longest sequence the model runs: `max_position_embeddings`, or with
    /// `dynamic` RoPE scaling, `factor` times it.
    pub fn max_positions(&self) -> usize {
        let scaling = self
            .rope()
            .ok()
            .and_then(|p| p.scaling(self.max_position_embeddings).ok().flatten());
        scaling.map_or(self.max_position_embeddings, |s| {
            s.max_positions(self.max_position_embeddings)
        })
    }

    /// One decoder layer, as `LlamaDecoderLayer`.
    pub fn block_config(&self) -> TransformerBlockConfig {
        // HF's default LLaMA rotary embedding ignores `partial_rotary_factor` (validate
        // refuses it for the scaled types).
        let rope = self.rope().ok().map(|p| RopeParameters {
            partial_rotary_factor: None,
            ..p
        });
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
            rope_parameters: rope,
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
            names: BlockNames::llama(),
        }
    }
}

impl DecoderConfig for LlamaConfig {
    const FAMILY: Family = Family {
        name: "LLaMA",
        reference: "transformers.LlamaForCausalLM",
        paper: papers::LLAMA,
        checkpoint_naming: "HF LLaMA: model.{embed_tokens,layers.N.{input_layernorm,self_attn.{q,k,v,o}_proj,\
                            post_attention_layernorm,mlp.{gate,up,down}_proj},norm}, lm_head",
        signature: r"(^|\.)layers\.\d+\.self_attn\.q_proj\.weight$",
        example_tensor: "model.layers.0.self_attn.q_proj.weight",
    };

    const PRESETS: &'static [Preset] = &[Preset {
        name: "llama-tiny",
        paper: papers::LLAMA,
        checkpoint: "none published: the shape of llama2.c's stories15M (HF LLaMA names)",
        description: "a 15M-parameter LLaMA: 6 layers, 288 wide, 6 heads, 32000-token vocabulary, 256 positions",
        config: || {
            json!({
                "model_type": "llama", "vocab_size": 32000, "hidden_size": 288, "intermediate_size": 768,
                "num_hidden_layers": 6, "num_attention_heads": 6, "num_key_value_heads": 6,
                "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
                "hidden_act": "silu", "tie_word_embeddings": false,
            })
        },
    }];

    /// The whole decoder, as `LlamaForCausalLM`.
    fn decoder_spec(&self) -> DecoderSpec {
        DecoderSpec {
            family: "LLaMA",
            embedding: EmbeddingConfig {
                padding_idx: self.pad_token_id,
                ..EmbeddingConfig::new(self.vocab_size, self.hidden_size)
            },
            block: self.block_config(),
            layers: self.num_hidden_layers,
            final_norm: RmsNormConfig {
                eps: self.rms_norm_eps,
                ..RmsNormConfig::new(self.hidden_size)
            },
            tie_word_embeddings: self.tie_word_embeddings,
            max_positions: self.max_positions(),
            sliding: self.window().map(|window| SlidingWindow {
                window,
                layers: SlidingLayers::All,
            }),
            final_logit_softcap: None,
        }
    }
}

/// A LLaMA-style decoder with its language-model head (`LlamaForCausalLM`).
pub type Llama = DecoderLm<LlamaConfig>;
