//! Qwen3: Yang et al., "Qwen3 Technical Report", arXiv 2505.09388. Reference: HF
//! `transformers.Qwen3ForCausalLM`.
//!
//! The LLaMA decoder ([`crate::decoder`]) with an RMSNorm on each head's queries
//! and keys (`self_attn.q_norm`, `self_attn.k_norm`, over `head_dim`, before the
//! rotation; QK-norm, arXiv 2010.04245), a head size decoupled from
//! `hidden_size / num_attention_heads`, and `attention_bias` on all four
//! projections. The sliding window is read as Qwen2's ([`crate::qwen2`]).

use replica_blocks::{Activation, NormKind};
use replica_check::{ConfigCheck, Footprint, Workload};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::positive;
use crate::decoder::{DecoderConfig, DecoderLm, DecoderSpec, RopeParameters, SlidingWindow};
use crate::llama::LlamaConfig;
use crate::qwen2::{self, attention_window, model_type};
use crate::{papers, Family, ModelConfig, Preset};

fn default_head_dim() -> usize {
    128
}

/// A HF Qwen3 `config.json` (`Qwen3Config`); fields it lacks take HF's defaults
/// (Qwen2's, and heads of 128).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Qwen3Config {
    /// Rows of the token embedding (and of the LM head).
    #[serde(default = "qwen2::default_vocab_size")]
    pub vocab_size: usize,
    /// The width of the residual stream.
    #[serde(default = "qwen2::default_hidden_size")]
    pub hidden_size: usize,
    /// The SwiGLU MLP's hidden width.
    #[serde(default = "qwen2::default_intermediate_size")]
    pub intermediate_size: usize,
    /// Decoder layers.
    #[serde(default = "qwen2::default_layers_and_heads")]
    pub num_hidden_layers: usize,
    /// Query heads per layer.
    #[serde(default = "qwen2::default_layers_and_heads")]
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); `null` is `num_attention_heads`.
    #[serde(default = "qwen2::default_kv_heads")]
    pub num_key_value_heads: Option<usize>,
    /// Features per head, independent of `hidden_size / num_attention_heads`.
    #[serde(default = "default_head_dim")]
    pub head_dim: usize,
    /// The MLP's gate activation (SiLU: SwiGLU).
    #[serde(default = "qwen2::silu")]
    pub hidden_act: Activation,
    /// The longest sequence the rotary tables cover.
    #[serde(default = "qwen2::default_max_positions")]
    pub max_position_embeddings: usize,
    /// The epsilon of every RMSNorm, the QK-norms' included.
    #[serde(default = "qwen2::default_eps")]
    pub rms_norm_eps: f64,
    /// The LM head reads the token embedding's weight.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// v4 configs: the RoPE base (default 10000).
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// v4 configs: RoPE scaling (HF's rope types, as LLaMA reads them).
    #[serde(default)]
    pub rope_scaling: Option<RopeParameters>,
    /// v5 configs: the RoPE type and its parameters, as LLaMA reads them.
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    /// Biases on the q/k/v/o projections.
    #[serde(default)]
    pub attention_bias: bool,
    /// Whether `sliding_window` applies at all.
    #[serde(default)]
    pub use_sliding_window: bool,
    /// The attention window of the sliding layers, in tokens.
    #[serde(default = "qwen2::default_sliding_window")]
    pub sliding_window: Option<usize>,
    /// Without `layer_types`, the layers from this index on slide (when the window applies).
    #[serde(default = "qwen2::default_max_window_layers")]
    pub max_window_layers: usize,
    /// Each layer's attention, `full_attention` or `sliding_attention`; absent, made
    /// from the window and `max_window_layers` as HF makes it.
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    /// Dropout on the attention probabilities, in training.
    #[serde(default)]
    pub attention_dropout: f64,
    /// The embedding's padding row (no gradient flows to it).
    #[serde(default)]
    pub pad_token_id: Option<usize>,
    /// `qwen3` when given.
    #[serde(default)]
    pub model_type: Option<String>,
}

impl ModelConfig for Qwen3Config {}

impl ConfigCheck for Qwen3Config {
    fn validate(&self) -> std::result::Result<(), String> {
        model_type(self.model_type.as_deref(), "qwen3", "Qwen3")?;
        positive(&[
            ("num_hidden_layers", self.num_hidden_layers),
            ("head_dim", self.head_dim),
        ])?;
        self.window()?;
        self.as_llama().validate()
    }

    fn footprint(&self, work: &Workload) -> Footprint {
        self.decoder_spec().footprint(work)
    }
}

impl Qwen3Config {
    /// The attention window of the sliding layers, if any layer slides (read as Qwen2's).
    pub fn window(&self) -> std::result::Result<Option<SlidingWindow>, String> {
        attention_window(
            self.num_hidden_layers,
            self.use_sliding_window,
            self.sliding_window,
            self.max_window_layers,
            self.layer_types.as_deref(),
        )
    }

    /// The LLaMA layout this config shares (the QK-norms are laid over it in
    /// [`decoder_spec`](Self::decoder_spec)).
    fn as_llama(&self) -> LlamaConfig {
        LlamaConfig {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: Some(self.num_key_value_heads.unwrap_or(self.num_attention_heads)),
            head_dim: Some(self.head_dim),
            hidden_act: self.hidden_act,
            max_position_embeddings: self.max_position_embeddings,
            rms_norm_eps: self.rms_norm_eps,
            rope_theta: self.rope_theta,
            rope_scaling: self.rope_scaling.clone(),
            rope_parameters: self.rope_parameters.clone(),
            attention_bias: self.attention_bias,
            mlp_bias: false,
            tie_word_embeddings: self.tie_word_embeddings,
            attention_dropout: self.attention_dropout,
            pad_token_id: self.pad_token_id,
            rope_interleaved: false,
            sliding_window: None,
            model_type: None,
        }
    }
}

impl DecoderConfig for Qwen3Config {
    const FAMILY: Family = Family {
        name: "Qwen3",
        reference: "transformers.Qwen3ForCausalLM",
        paper: papers::QWEN3,
        checkpoint_naming: "HF Qwen3: model.{embed_tokens,layers.N.{input_layernorm,self_attn.{q,k,v,o}_proj,\
                            self_attn.{q,k}_norm,post_attention_layernorm,mlp.{gate,up,down}_proj},norm}, lm_head",
        signature: r"(^|\.)layers\.\d+\.self_attn\.q_norm\.weight$",
        example_tensor: "model.layers.0.self_attn.q_norm.weight",
    };

    const PRESETS: &'static [Preset] = &[Preset {
        name: "qwen3-0.6b",
        paper: papers::QWEN3,
        checkpoint: "Qwen/Qwen3-0.6B (HF hub)",
        description: "Qwen3 0.6B: 28 layers, 1024 wide, 16 heads of 128 with 8 key/value heads, QK-norm, \
                      151936-token vocabulary, tied LM head",
        config: || {
            json!({
                "model_type": "qwen3", "vocab_size": 151936, "hidden_size": 1024, "intermediate_size": 3072,
                "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
                "hidden_act": "silu", "max_position_embeddings": 40960, "rms_norm_eps": 1e-6,
                "rope_theta": 1000000.0, "rope_scaling": null, "attention_bias": false, "attention_dropout": 0.0,
                "use_sliding_window": false, "sliding_window": null, "max_window_layers": 28,
                "tie_word_embeddings": true,
            })
        },
    }];

    /// The whole decoder, as `Qwen3ForCausalLM`.
    fn decoder_spec(&self) -> DecoderSpec {
        let mut spec = self.as_llama().decoder_spec();
        spec.family = "Qwen3";
        let attention = &mut spec.block.attention;
        attention.qk_norm = true;
        attention.qk_norm_seq_first = true;
        attention.norm = NormKind::RmsNorm;
        attention.norm_eps = self.rms_norm_eps;
        spec.sliding = self.window().unwrap_or_default();
        spec
    }
}

/// Qwen3 with its language-model head (`Qwen3ForCausalLM`).
pub type Qwen3 = DecoderLm<Qwen3Config>;
