//! Gemma: Gemma Team, "Gemma: Open Models Based on Gemini Research and
//! Technology", arXiv 2403.08295. Reference: HF `transformers.GemmaForCausalLM`.
//!
//! The LLaMA decoder ([`crate::decoder`]) with Gemma's choices as data: RMSNorms
//! that scale by `1 + weight` in f32 and round after the scale
//! ([`RmsNormConfig::gemma`]), token embeddings multiplied by `sqrt(hidden_size)`
//! rounded to the weights' dtype, a GeGLU MLP with the tanh GELU, a head size
//! decoupled from `hidden_size / num_attention_heads`, the padding row's gradient
//! cut (`pad_token_id`), and the LM head tied to the embedding.

use replica_blocks::{Activation, EmbeddingConfig, NormKind, RmsNormConfig};
use replica_check::{ConfigCheck, Footprint, Workload};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::positive;
use crate::decoder::{DecoderConfig, DecoderLm, DecoderSpec, RopeParameters};
use crate::llama::LlamaConfig;
use crate::{papers, Family, ModelConfig, Preset};

fn default_vocab_size() -> usize {
    256_000
}
fn default_hidden_size() -> usize {
    3072
}
fn default_intermediate_size() -> usize {
    24_576
}
fn default_num_hidden_layers() -> usize {
    28
}
fn default_heads() -> usize {
    16
}
fn default_head_dim() -> usize {
    256
}
fn default_hidden_act() -> String {
    "gelu_pytorch_tanh".into()
}
fn default_max_positions() -> usize {
    8192
}
fn default_eps() -> f64 {
    1e-6
}
fn default_pad_token_id() -> Option<usize> {
    Some(0)
}
fn yes() -> bool {
    true
}

/// A HF Gemma `config.json` (`GemmaConfig`); fields it lacks take HF's defaults
/// (those of Gemma 7B).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GemmaConfig {
    /// Rows of the token embedding (and of the tied LM head).
    #[serde(default = "default_vocab_size")]
    pub vocab_size: usize,
    /// The width of the residual stream.
    #[serde(default = "default_hidden_size")]
    pub hidden_size: usize,
    /// The GeGLU MLP's hidden width.
    #[serde(default = "default_intermediate_size")]
    pub intermediate_size: usize,
    /// Decoder layers.
    #[serde(default = "default_num_hidden_layers")]
    pub num_hidden_layers: usize,
    /// Query heads per layer.
    #[serde(default = "default_heads")]
    pub num_attention_heads: usize,
    /// Key/value heads (grouped- or multi-query attention).
    #[serde(default = "default_heads")]
    pub num_key_value_heads: usize,
    /// Features per head, independent of `hidden_size / num_attention_heads`.
    #[serde(default = "default_head_dim")]
    pub head_dim: usize,
    /// The MLP's gate activation; HF reads the legacy `"gelu"` as the tanh GELU too.
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    /// The longest sequence the rotary tables cover.
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    /// The RMSNorms' epsilon.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// The embedding's padding row (no gradient flows to it); HF's default is 0.
    #[serde(default = "default_pad_token_id")]
    pub pad_token_id: Option<usize>,
    /// The LM head reads the token embedding's weight (HF's default).
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
    /// v4 configs: the RoPE base (default 10000).
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// v4 configs: RoPE scaling, read as LLaMA reads it.
    #[serde(default)]
    pub rope_scaling: Option<RopeParameters>,
    /// v5 configs: the RoPE type, base and scaling parameters, read as LLaMA reads them.
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    /// Biases on the q/k/v/o projections.
    #[serde(default)]
    pub attention_bias: bool,
    /// Dropout on the attention probabilities, in training.
    #[serde(default)]
    pub attention_dropout: f64,
    /// Attend to every token instead of causally; only `false`/`null` is implemented.
    #[serde(default)]
    pub use_bidirectional_attention: Option<bool>,
    /// `gemma` when given.
    #[serde(default)]
    pub model_type: Option<String>,
}

impl ModelConfig for GemmaConfig {
    /// `hidden_activation`: older Gemma configs carry it beside `hidden_act`;
    /// transformers v5 reads only `hidden_act`.
    const NOT_USED: &'static [&'static str] = &["hidden_activation"];
}

impl ConfigCheck for GemmaConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        if let Some(kind) = self.model_type.as_deref().filter(|k| *k != "gemma") {
            return Err(format!(
                "model_type is `{kind}`, not `gemma`: this is not a Gemma config"
            ));
        }
        positive(&[
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ])?;
        self.activation()?;
        if self.use_bidirectional_attention == Some(true) {
            return Err("use_bidirectional_attention is true; only causal attention is implemented".into());
        }
        self.as_llama().validate()
    }

    fn footprint(&self, work: &Workload) -> Footprint {
        self.decoder_spec().footprint(work)
    }
}

impl GemmaConfig {
    /// The MLP's activation: `hidden_act`, with HF's reading of `"gelu"` as the tanh GELU.
    pub fn activation(&self) -> std::result::Result<Activation, String> {
        match self.hidden_act.as_str() {
            "gelu" | "gelu_pytorch_tanh" | "gelu_new" => Ok(Activation::GeluTanh),
            other => serde_json::from_value(json!(other)).map_err(|_| format!("hidden_act `{other}` is not known")),
        }
    }

    /// The LLaMA layout this config shares (attention, rotary tables, MLP widths);
    /// Gemma's own choices are laid over it in [`decoder_spec`](Self::decoder_spec).
    fn as_llama(&self) -> LlamaConfig {
        LlamaConfig {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: Some(self.num_key_value_heads),
            head_dim: Some(self.head_dim),
            hidden_act: self.activation().unwrap_or(Activation::GeluTanh),
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

impl DecoderConfig for GemmaConfig {
    const FAMILY: Family = Family {
        name: "Gemma",
        reference: "transformers.GemmaForCausalLM",
        paper: papers::GEMMA,
        checkpoint_naming: "HF Gemma: model.{embed_tokens,layers.N.{input_layernorm,self_attn.{q,k,v,o}_proj,\
                            post_attention_layernorm,mlp.{gate,up,down}_proj},norm} (LLaMA's names; the LM head is tied)",
        // LLaMA's names: the layout is told apart by the config, not the tensors.
        signature: r"(^|\.)layers\.\d+\.self_attn\.q_proj\.weight$",
        example_tensor: "model.layers.0.self_attn.q_proj.weight",
    };

    const PRESETS: &'static [Preset] = &[Preset {
        name: "gemma-2b",
        paper: papers::GEMMA,
        checkpoint: "google/gemma-2b (HF hub)",
        description: "Gemma 2B: 18 layers, 2048 wide, 8 heads of 256 with one key/value head, 256000-token vocabulary",
        config: || {
            json!({
                "model_type": "gemma", "vocab_size": 256000, "hidden_size": 2048, "intermediate_size": 16384,
                "num_hidden_layers": 18, "num_attention_heads": 8, "num_key_value_heads": 1, "head_dim": 256,
                "hidden_act": "gelu_pytorch_tanh", "max_position_embeddings": 8192, "rms_norm_eps": 1e-6,
                "rope_theta": 10000.0, "pad_token_id": 0, "tie_word_embeddings": true,
            })
        },
    }];

    /// The whole decoder, as `GemmaForCausalLM`.
    fn decoder_spec(&self) -> DecoderSpec {
        let llama = self.as_llama();
        let mut block = llama.block_config();
        block.norm = NormKind::GemmaRmsNorm;
        DecoderSpec {
            family: "Gemma",
            embedding: EmbeddingConfig {
                padding_idx: self.pad_token_id,
                scale: Some((self.hidden_size as f64).sqrt()),
                ..EmbeddingConfig::new(self.vocab_size, self.hidden_size)
            },
            block,
            final_norm: RmsNormConfig::gemma(self.hidden_size, self.rms_norm_eps),
            ..llama.decoder_spec()
        }
    }
}

/// Gemma with its language-model head (`GemmaForCausalLM`).
pub type Gemma = DecoderLm<GemmaConfig>;
