//! Qwen2: Yang et al., "Qwen2 Technical Report", arXiv 2407.10671. Reference: HF
//! `transformers.Qwen2ForCausalLM`.
//!
//! The LLaMA decoder ([`crate::decoder`]) with biases on the query, key and value
//! projections and none on the output projection, as `Qwen2Attention` builds them
//! whatever the config says. Sliding-window attention is HF's: `sliding_window`
//! counts only with `use_sliding_window`, and the layers from `max_window_layers`
//! on use it (or those `layer_types` marks `sliding_attention`).

use replica_blocks::Activation;
use replica_check::{ConfigCheck, Footprint, Workload};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::positive;
use crate::decoder::{DecoderConfig, DecoderLm, DecoderSpec, RopeParameters, SlidingLayers, SlidingWindow};
use crate::llama::LlamaConfig;
use crate::{papers, Family, ModelConfig, Preset};

pub(crate) fn default_vocab_size() -> usize {
    151_936
}
pub(crate) fn default_hidden_size() -> usize {
    4096
}
pub(crate) fn default_intermediate_size() -> usize {
    22_016
}
pub(crate) fn default_layers_and_heads() -> usize {
    32
}
pub(crate) fn default_kv_heads() -> Option<usize> {
    Some(32)
}
pub(crate) fn silu() -> Activation {
    Activation::Silu
}
pub(crate) fn default_max_positions() -> usize {
    32_768
}
pub(crate) fn default_eps() -> f64 {
    1e-6
}
pub(crate) fn default_sliding_window() -> Option<usize> {
    Some(4096)
}
pub(crate) fn default_max_window_layers() -> usize {
    28
}

/// A HF Qwen2 `config.json` (`Qwen2Config`); fields it lacks take HF's defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Qwen2Config {
    /// Rows of the token embedding (and of the LM head).
    #[serde(default = "default_vocab_size")]
    pub vocab_size: usize,
    /// The width of the residual stream.
    #[serde(default = "default_hidden_size")]
    pub hidden_size: usize,
    /// The SwiGLU MLP's hidden width.
    #[serde(default = "default_intermediate_size")]
    pub intermediate_size: usize,
    /// Decoder layers.
    #[serde(default = "default_layers_and_heads")]
    pub num_hidden_layers: usize,
    /// Query heads per layer; each has `hidden_size / num_attention_heads` features.
    #[serde(default = "default_layers_and_heads")]
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); `null` is `num_attention_heads`.
    #[serde(default = "default_kv_heads")]
    pub num_key_value_heads: Option<usize>,
    /// The MLP's gate activation (SiLU: SwiGLU).
    #[serde(default = "silu")]
    pub hidden_act: Activation,
    /// The longest sequence the rotary tables cover.
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    /// The RMSNorms' epsilon.
    #[serde(default = "default_eps")]
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
    /// Whether `sliding_window` applies at all.
    #[serde(default)]
    pub use_sliding_window: bool,
    /// The attention window of the sliding layers, in tokens.
    #[serde(default = "default_sliding_window")]
    pub sliding_window: Option<usize>,
    /// Without `layer_types`, the layers from this index on slide (when the window applies).
    #[serde(default = "default_max_window_layers")]
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
    /// `qwen2` when given.
    #[serde(default)]
    pub model_type: Option<String>,
}

impl ModelConfig for Qwen2Config {}

impl ConfigCheck for Qwen2Config {
    fn validate(&self) -> std::result::Result<(), String> {
        model_type(self.model_type.as_deref(), "qwen2", "Qwen2")?;
        positive(&[("num_hidden_layers", self.num_hidden_layers)])?;
        self.window()?;
        self.as_llama().validate()
    }

    fn footprint(&self, work: &Workload) -> Footprint {
        self.decoder_spec().footprint(work)
    }
}

impl Qwen2Config {
    /// The sliding layers and their window, if any layer slides, as HF reads
    /// `use_sliding_window`, `sliding_window`, `max_window_layers` and `layer_types`.
    pub fn window(&self) -> std::result::Result<Option<SlidingWindow>, String> {
        attention_window(
            self.num_hidden_layers,
            self.use_sliding_window,
            self.sliding_window,
            self.max_window_layers,
            self.layer_types.as_deref(),
        )
    }

    /// The LLaMA layout this config shares (the projections' biases are laid over it
    /// in [`decoder_spec`](Self::decoder_spec)).
    fn as_llama(&self) -> LlamaConfig {
        LlamaConfig {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: Some(self.num_key_value_heads.unwrap_or(self.num_attention_heads)),
            head_dim: None,
            hidden_act: self.hidden_act,
            max_position_embeddings: self.max_position_embeddings,
            rms_norm_eps: self.rms_norm_eps,
            rope_theta: self.rope_theta,
            rope_scaling: self.rope_scaling.clone(),
            rope_parameters: self.rope_parameters.clone(),
            attention_bias: false,
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

/// Refuses a `model_type` other than `expected`, naming the family.
pub(crate) fn model_type(given: Option<&str>, expected: &str, family: &str) -> std::result::Result<(), String> {
    match given.filter(|kind| *kind != expected) {
        Some(kind) => Err(format!(
            "model_type is `{kind}`, not `{expected}`: this is not a {family} config"
        )),
        None => Ok(()),
    }
}

/// The sliding-window attention of a Qwen config, as HF reads the fields:
/// `sliding_window` only with `use_sliding_window`, and the layers that slide those
/// `layer_types` marks `sliding_attention` (absent: those from `max_window_layers`
/// on, when a window applies). `None` when no layer slides. Refuses a window of 0,
/// a bad `layer_types` ([`SlidingWindow::from_layer_types`]) and a sliding layer
/// without a window.
pub(crate) fn attention_window(
    layers: usize,
    use_sliding_window: bool,
    sliding_window: Option<usize>,
    max_window_layers: usize,
    layer_types: Option<&[String]>,
) -> std::result::Result<Option<SlidingWindow>, String> {
    let window = sliding_window.filter(|_| use_sliding_window);
    if window == Some(0) {
        return Err("`sliding_window` must be positive, got 0".into());
    }
    match layer_types {
        Some(types) => SlidingWindow::from_layer_types(types, layers, window).map_err(|message| {
            if window.is_none() && sliding_window.is_some() {
                format!("{message} (sliding_window counts only with use_sliding_window, which is false)")
            } else {
                message
            }
        }),
        None => Ok(window
            .filter(|_| max_window_layers < layers)
            .map(|window| SlidingWindow {
                window,
                layers: SlidingLayers::From(max_window_layers),
            })),
    }
}

impl DecoderConfig for Qwen2Config {
    const FAMILY: Family = Family {
        name: "Qwen2",
        reference: "transformers.Qwen2ForCausalLM",
        paper: papers::QWEN2,
        checkpoint_naming: "HF Qwen2: model.{embed_tokens,layers.N.{input_layernorm,self_attn.{q,k,v}_proj (biased),\
                            self_attn.o_proj,post_attention_layernorm,mlp.{gate,up,down}_proj},norm}, lm_head \
                            (LLaMA's names)",
        // LLaMA's names: the layout is told apart by the config, not the tensors.
        signature: r"(^|\.)layers\.\d+\.self_attn\.q_proj\.weight$",
        example_tensor: "model.layers.0.self_attn.q_proj.weight",
    };

    const PRESETS: &'static [Preset] = &[Preset {
        name: "qwen2-0.5b",
        paper: papers::QWEN2,
        checkpoint: "Qwen/Qwen2-0.5B (HF hub)",
        description: "Qwen2 0.5B: 24 layers, 896 wide, 14 heads with 2 key/value heads, 151936-token vocabulary, \
                      tied LM head",
        config: || {
            json!({
                "model_type": "qwen2", "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
                "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
                "hidden_act": "silu", "max_position_embeddings": 131072, "rms_norm_eps": 1e-6,
                "rope_theta": 1000000.0, "use_sliding_window": false, "sliding_window": 131072,
                "max_window_layers": 24, "attention_dropout": 0.0, "tie_word_embeddings": true,
            })
        },
    }];

    /// The whole decoder, as `Qwen2ForCausalLM`.
    fn decoder_spec(&self) -> DecoderSpec {
        let mut spec = self.as_llama().decoder_spec();
        spec.family = "Qwen2";
        spec.block.attention.qkv_bias = true;
        spec.block.attention.proj_bias = Some(false);
        spec.sliding = self.window().unwrap_or_default();
        spec
    }
}

/// Qwen2 with its language-model head (`Qwen2ForCausalLM`).
pub type Qwen2 = DecoderLm<Qwen2Config>;
