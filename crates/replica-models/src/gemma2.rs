//! Gemma 2: Gemma Team, "Gemma 2: Improving Open Language Models at a Practical
//! Size", arXiv 2408.00118. Reference: HF `transformers.Gemma2ForCausalLM`.
//!
//! Gemma's decoder ([`crate::gemma`]: `1 + w` RMSNorms, scaled embeddings, GeGLU,
//! tied head) with what Gemma 2 adds, each a block option:
//!
//! - sandwich norms: every branch's output is normalised again before its residual
//!   addition (`post_attention_layernorm`, `post_feedforward_layernorm`;
//!   [`BlockNames::gemma2`]);
//! - local and global layers alternating: the sliding layers' queries see the last
//!   `sliding_window` tokens ([`SlidingWindow`], HF's `layer_types`);
//! - attention logits soft-capped at `attn_logit_softcapping`, the final logits at
//!   `final_logit_softcapping` (`cap * tanh(x / cap)`);
//! - the scores scaled by `query_pre_attn_scalar^-0.5` instead of `head_dim^-0.5`.

use replica_blocks::{Activation, BlockNames};
use replica_check::{ConfigCheck, Footprint, Workload};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::positive;
use crate::decoder::{DecoderConfig, DecoderLm, DecoderSpec, RopeParameters, SlidingLayers, SlidingWindow};
use crate::gemma::GemmaConfig;
use crate::{papers, Family, ModelConfig, Preset};

fn default_vocab_size() -> usize {
    256_000
}
fn default_hidden_size() -> usize {
    2304
}
fn default_intermediate_size() -> usize {
    9216
}
fn default_num_hidden_layers() -> usize {
    26
}
fn default_heads() -> usize {
    8
}
fn default_kv_heads() -> usize {
    4
}
fn default_head_dim() -> usize {
    256
}
fn default_hidden_activation() -> String {
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
fn default_query_pre_attn_scalar() -> f64 {
    256.0
}
fn default_sliding_window() -> Option<usize> {
    Some(4096)
}
fn default_final_logit_softcapping() -> Option<f64> {
    Some(30.0)
}
fn default_attn_logit_softcapping() -> Option<f64> {
    Some(50.0)
}

/// A HF Gemma 2 `config.json` (`Gemma2Config`); fields it lacks take HF's
/// defaults (those of Gemma 2 2B).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gemma2Config {
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
    /// Key/value heads (grouped-query attention).
    #[serde(default = "default_kv_heads")]
    pub num_key_value_heads: usize,
    /// Features per head, independent of `hidden_size / num_attention_heads`.
    #[serde(default = "default_head_dim")]
    pub head_dim: usize,
    /// The MLP's gate activation (Gemma 2 reads `hidden_activation`, not `hidden_act`).
    #[serde(default = "default_hidden_activation")]
    pub hidden_activation: String,
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
    /// The scores are scaled by its `^-0.5`.
    #[serde(default = "default_query_pre_attn_scalar")]
    pub query_pre_attn_scalar: f64,
    /// The window of the sliding (local) layers, in tokens.
    #[serde(default = "default_sliding_window")]
    pub sliding_window: Option<usize>,
    /// Each layer's attention, `full_attention` or `sliding_attention`; absent,
    /// HF's alternation: layers 0, 2, 4, ... slide.
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    /// The final logits are soft-capped at this value; `null`: not capped.
    #[serde(default = "default_final_logit_softcapping")]
    pub final_logit_softcapping: Option<f64>,
    /// The attention scores are soft-capped at this value; `null`: not capped.
    #[serde(default = "default_attn_logit_softcapping")]
    pub attn_logit_softcapping: Option<f64>,
    /// Attend to every token instead of causally; only `false`/`null` is implemented.
    #[serde(default)]
    pub use_bidirectional_attention: Option<bool>,
    /// `gemma2` when given.
    #[serde(default)]
    pub model_type: Option<String>,
}

impl ModelConfig for Gemma2Config {
    /// `hidden_act`: the hub's Gemma 2 configs carry it beside `hidden_activation`,
    /// which is the one `Gemma2MLP` reads. `cache_implementation`: which cache class
    /// `generate` builds (`hybrid`), not what it holds; the rolling caches here hold
    /// what it does.
    const NOT_USED: &'static [&'static str] = &["hidden_act", "cache_implementation"];
}

impl ConfigCheck for Gemma2Config {
    fn validate(&self) -> std::result::Result<(), String> {
        if let Some(kind) = self.model_type.as_deref().filter(|k| *k != "gemma2") {
            return Err(format!(
                "model_type is `{kind}`, not `gemma2`: this is not a Gemma 2 config"
            ));
        }
        positive(&[("num_hidden_layers", self.num_hidden_layers)])?;
        if !(self.query_pre_attn_scalar.is_finite() && self.query_pre_attn_scalar > 0.0) {
            return Err(format!(
                "query_pre_attn_scalar must be a positive number, got {}",
                self.query_pre_attn_scalar
            ));
        }
        for (name, cap) in [
            ("final_logit_softcapping", self.final_logit_softcapping),
            ("attn_logit_softcapping", self.attn_logit_softcapping),
        ] {
            if let Some(cap) = cap.filter(|c| !(c.is_finite() && *c > 0.0)) {
                return Err(format!("{name} must be a positive number or null, got {cap}"));
            }
        }
        self.sliding()?;
        self.as_gemma().validate()
    }

    fn footprint(&self, work: &Workload) -> Footprint {
        self.decoder_spec().footprint(work)
    }
}

impl Gemma2Config {
    /// The sliding (local) layers and their window: those `layer_types` marks
    /// `sliding_attention`, or without it HF's alternation (every even layer).
    pub fn sliding(&self) -> std::result::Result<Option<SlidingWindow>, String> {
        match (&self.layer_types, self.sliding_window) {
            (Some(types), window) => SlidingWindow::from_layer_types(types, self.num_hidden_layers, window),
            (None, Some(0)) => Err("sliding_window must be positive, got 0".into()),
            (None, Some(window)) => Ok(Some(SlidingWindow {
                window,
                layers: SlidingLayers::AllButEvery(2),
            })),
            (None, None) => Err("sliding_window is null, but without layer_types every even layer slides".into()),
        }
    }

    /// The Gemma layout this config shares; Gemma 2's additions are laid over it
    /// in [`decoder_spec`](DecoderConfig::decoder_spec).
    fn as_gemma(&self) -> GemmaConfig {
        GemmaConfig {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: self.num_key_value_heads,
            head_dim: self.head_dim,
            hidden_act: self.hidden_activation.clone(),
            max_position_embeddings: self.max_position_embeddings,
            rms_norm_eps: self.rms_norm_eps,
            pad_token_id: self.pad_token_id,
            tie_word_embeddings: self.tie_word_embeddings,
            rope_theta: self.rope_theta,
            rope_scaling: self.rope_scaling.clone(),
            rope_parameters: self.rope_parameters.clone(),
            attention_bias: self.attention_bias,
            attention_dropout: self.attention_dropout,
            use_bidirectional_attention: self.use_bidirectional_attention,
            model_type: None,
        }
    }

    /// The MLP's activation, read as Gemma reads `hidden_act`.
    pub fn activation(&self) -> std::result::Result<Activation, String> {
        self.as_gemma()
            .activation()
            .map_err(|m| m.replacen("hidden_act", "hidden_activation", 1))
    }
}

impl DecoderConfig for Gemma2Config {
    const FAMILY: Family = Family {
        name: "Gemma 2",
        reference: "transformers.Gemma2ForCausalLM",
        paper: papers::GEMMA_2,
        checkpoint_naming: "HF Gemma 2: model.{embed_tokens,layers.N.{input_layernorm,self_attn.{q,k,v,o}_proj,\
                            post_attention_layernorm,pre_feedforward_layernorm,mlp.{gate,up,down}_proj,\
                            post_feedforward_layernorm},norm} (the LM head is tied)",
        signature: r"(^|\.)layers\.\d+\.pre_feedforward_layernorm\.weight$",
        example_tensor: "model.layers.0.pre_feedforward_layernorm.weight",
    };

    const PRESETS: &'static [Preset] = &[Preset {
        name: "gemma2-2b",
        paper: papers::GEMMA_2,
        checkpoint: "google/gemma-2-2b (HF hub)",
        description: "Gemma 2 2B: 26 layers alternating local (window 4096) and global attention, 2304 wide, \
                      8 heads of 256 with 4 key/value heads, soft-capped logits, 256000-token vocabulary",
        config: || {
            json!({
                "model_type": "gemma2", "vocab_size": 256000, "hidden_size": 2304, "intermediate_size": 9216,
                "num_hidden_layers": 26, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
                "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 8192, "rms_norm_eps": 1e-6,
                "rope_theta": 10000.0, "pad_token_id": 0, "tie_word_embeddings": true,
                "query_pre_attn_scalar": 256, "sliding_window": 4096, "final_logit_softcapping": 30.0,
                "attn_logit_softcapping": 50.0,
            })
        },
    }];

    /// The whole decoder, as `Gemma2ForCausalLM`.
    fn decoder_spec(&self) -> DecoderSpec {
        let mut spec = self.as_gemma().decoder_spec();
        spec.family = "Gemma 2";
        spec.block.names = BlockNames::gemma2();
        let attention = &mut spec.block.attention;
        attention.query_pre_attn_scalar = Some(self.query_pre_attn_scalar);
        attention.softcap = self.attn_logit_softcapping;
        spec.sliding = self.sliding().unwrap_or_default();
        spec.final_logit_softcap = self.final_logit_softcapping;
        spec
    }
}

/// Gemma 2 with its language-model head (`Gemma2ForCausalLM`).
pub type Gemma2 = DecoderLm<Gemma2Config>;
