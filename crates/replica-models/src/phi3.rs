//! Phi-3: Abdin et al., "Phi-3 Technical Report: A Highly Capable Language Model
//! Locally on Your Phone", arXiv 2404.14219. Reference: HF
//! `transformers.Phi3ForCausalLM`.
//!
//! The LLaMA decoder ([`crate::decoder`]) with Phi-3's choices as block options:
//!
//! - one fused query/key/value projection (`self_attn.qkv_proj`: the query heads,
//!   then the key heads, then the value heads) and one fused gate/up projection
//!   (`mlp.gate_up_proj`: the gate half first), loaded and trained as they are
//!   stored, so their gradients are the checkpoint's own;
//! - LongRoPE (arXiv 2402.13753) with `original_max_position_embeddings` read from
//!   the top level as HF reads it, and partial rotation (`partial_rotary_factor`);
//! - residual dropouts on the layer (`resid_attn_dropout`, `resid_mlp_dropout`);
//! - a sliding window on every layer when `sliding_window` is set.

use replica_blocks::attention::AttentionNames;
use replica_blocks::{Activation, BlockNames, FeedForwardConfig, GluMlpNames, GluProjections};
use replica_check::config_check::drop_rate;
use replica_check::{ConfigCheck, Footprint, Workload};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::positive;
use crate::decoder::{rope_parameters, DecoderConfig, DecoderLm, DecoderSpec, RopeParameters};
use crate::decoder::{SlidingLayers, SlidingWindow};
use crate::llama::LlamaConfig;
use crate::{papers, Family, ModelConfig, Preset};

fn default_vocab_size() -> usize {
    32_064
}
fn default_hidden_size() -> usize {
    3072
}
fn default_intermediate_size() -> usize {
    8192
}
fn default_layers_and_heads() -> usize {
    32
}
fn silu() -> Activation {
    Activation::Silu
}
fn default_max_positions() -> usize {
    4096
}
fn default_eps() -> f64 {
    1e-5
}
fn default_pad_token_id() -> Option<usize> {
    Some(32_000)
}

/// A HF Phi-3 `config.json` (`Phi3Config`); fields it lacks take HF's defaults
/// (those of Phi-3-mini).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Phi3Config {
    /// Rows of the token embedding (and of the LM head).
    #[serde(default = "default_vocab_size")]
    pub vocab_size: usize,
    /// The width of the residual stream.
    #[serde(default = "default_hidden_size")]
    pub hidden_size: usize,
    /// The SwiGLU MLP's hidden width (the fused projection is twice as wide).
    #[serde(default = "default_intermediate_size")]
    pub intermediate_size: usize,
    /// Decoder layers.
    #[serde(default = "default_layers_and_heads")]
    pub num_hidden_layers: usize,
    /// Query heads per layer (each `hidden_size / num_attention_heads` wide).
    #[serde(default = "default_layers_and_heads")]
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); `null` is `num_attention_heads`.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Dropout on each branch's output before its residual addition, in training.
    #[serde(default)]
    pub resid_pdrop: f64,
    /// Dropout on the attention probabilities, in training.
    #[serde(default)]
    pub attention_dropout: f64,
    /// The MLP's gate activation (SiLU: SwiGLU).
    #[serde(default = "silu")]
    pub hidden_act: Activation,
    /// The longest sequence the rotary tables cover.
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    /// The pretraining context, which LongRoPE (and the other scaled types) reads
    /// in place of `rope_parameters.original_max_position_embeddings`, as HF does.
    #[serde(default = "default_max_positions")]
    pub original_max_position_embeddings: usize,
    /// The RMSNorms' epsilon.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// The LM head reads the token embedding's weight.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// v4 configs: the RoPE base (default 10000).
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// v4 configs: RoPE scaling (`longrope`; v4's `su` and `yarn` are read as HF reads
    /// them for Phi-3: as `longrope`).
    #[serde(default)]
    pub rope_scaling: Option<RopeParameters>,
    /// v5 configs: the RoPE type (`default` or `longrope`) and its parameters.
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    /// The fraction of each head that rotates, when `rope_parameters` does not say (default 1).
    #[serde(default)]
    pub partial_rotary_factor: Option<f64>,
    /// The embedding's padding row (no gradient flows to it); HF's default is 32000.
    #[serde(default = "default_pad_token_id")]
    pub pad_token_id: Option<usize>,
    /// An attention window on every layer, in tokens; `null`: none.
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// `phi3` when given.
    #[serde(default)]
    pub model_type: Option<String>,
}

impl ModelConfig for Phi3Config {
    /// `embd_pdrop`: transformers v5's `Phi3Model` applies no embedding dropout.
    /// `attention_bias`: the hub's configs carry it, but `Phi3Attention`'s
    /// projections have no bias whatever it says (strict loading refuses bias tensors).
    const NOT_USED: &'static [&'static str] = &["embd_pdrop", "attention_bias"];
}

impl ConfigCheck for Phi3Config {
    fn validate(&self) -> std::result::Result<(), String> {
        if let Some(kind) = self.model_type.as_deref().filter(|k| *k != "phi3") {
            return Err(format!(
                "model_type is `{kind}`, not `phi3`: this is not a Phi-3 config"
            ));
        }
        positive(&[
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            (
                "original_max_position_embeddings",
                self.original_max_position_embeddings,
            ),
        ])?;
        drop_rate("resid_pdrop", self.resid_pdrop)?;
        if self.sliding_window == Some(0) {
            return Err("sliding_window must be positive, got 0".into());
        }
        let rope = self.rope()?;
        if !["default", "longrope"].contains(&rope.rope_type()) {
            return Err(format!(
                "rope_type `{}`: Phi-3 has `default` or `longrope` RoPE only",
                rope.rope_type()
            ));
        }
        self.as_llama().validate()?;
        self.decoder_spec().block.validate().map_err(|m| format!("layer: {m}"))
    }

    fn footprint(&self, work: &Workload) -> Footprint {
        self.decoder_spec().footprint(work)
    }
}

impl Phi3Config {
    /// The RoPE parameters as HF's `Phi3Config` standardises them: v4's `su` and
    /// `yarn` become `longrope`, a scaled type's `original_max_position_embeddings`
    /// is the top-level field, and `partial_rotary_factor` defaults to the
    /// top-level one (else 1).
    pub fn rope(&self) -> std::result::Result<RopeParameters, String> {
        let standardised = |params: &Option<RopeParameters>| {
            params.clone().map(|mut p| {
                if matches!(p.rope_type(), "su" | "yarn") {
                    p.rope_type = Some("longrope".into());
                    p.kind = None;
                }
                if matches!(p.rope_type(), "llama3" | "yarn" | "longrope") {
                    p.original_max_position_embeddings = Some(self.original_max_position_embeddings);
                }
                p
            })
        };
        let mut rope = rope_parameters(
            self.rope_theta,
            &standardised(&self.rope_scaling),
            &standardised(&self.rope_parameters),
            self.max_position_embeddings,
        )?;
        rope.partial_rotary_factor = rope.partial_rotary_factor.or(self.partial_rotary_factor).or(Some(1.0));
        Ok(rope)
    }

    /// The LLaMA layout this config shares, with unscaled RoPE of the same base; Phi-3's
    /// rotary embedding (partial, LongRoPE) and its other choices are laid over it in
    /// [`decoder_spec`](DecoderConfig::decoder_spec).
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
            rope_theta: self.rope().ok().and_then(|p| p.rope_theta),
            rope_scaling: None,
            rope_parameters: None,
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

impl DecoderConfig for Phi3Config {
    const FAMILY: Family = Family {
        name: "Phi-3",
        reference: "transformers.Phi3ForCausalLM",
        paper: papers::PHI3,
        checkpoint_naming: "HF Phi-3: model.{embed_tokens,layers.N.{input_layernorm,self_attn.{qkv_proj,o_proj},\
                            post_attention_layernorm,mlp.{gate_up_proj,down_proj}},norm}, lm_head",
        signature: r"(^|\.)layers\.\d+\.self_attn\.qkv_proj\.weight$",
        example_tensor: "model.layers.0.self_attn.qkv_proj.weight",
    };

    const PRESETS: &'static [Preset] = &[Preset {
        name: "phi3-mini-4k",
        paper: papers::PHI3,
        checkpoint: "microsoft/Phi-3-mini-4k-instruct (HF hub)",
        description: "Phi-3-mini 4k: 32 layers, 3072 wide, 32 heads, fused qkv and gate/up projections, \
                      a 2047-token sliding window, 32064-token vocabulary",
        config: || {
            json!({
                "model_type": "phi3", "vocab_size": 32064, "hidden_size": 3072, "intermediate_size": 8192,
                "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
                "hidden_act": "silu", "max_position_embeddings": 4096, "original_max_position_embeddings": 4096,
                "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "rope_scaling": null, "sliding_window": 2047,
                "pad_token_id": 32000, "tie_word_embeddings": false, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
                "attention_dropout": 0.0,
            })
        },
    }];

    /// The whole decoder, as `Phi3ForCausalLM`.
    fn decoder_spec(&self) -> DecoderSpec {
        let mut spec = self.as_llama().decoder_spec();
        spec.family = "Phi-3";
        let block = &mut spec.block;
        block.names = BlockNames::phi3();
        let attention = &mut block.attention;
        attention.fused_qkv = true;
        attention.names = Some(AttentionNames {
            qkv: "qkv_proj".into(),
            ..AttentionNames::hf()
        });
        attention.rope_parameters = self.rope().ok();
        attention.proj_dropout = self.resid_pdrop as f32;
        if let FeedForwardConfig::Glu(glu) = &mut block.feed_forward {
            glu.names = GluMlpNames {
                projections: GluProjections::Fused {
                    name: "gate_up_proj".into(),
                    gate_last: false,
                },
                act: Some("activation_fn".into()),
                ..GluMlpNames::llama()
            };
            glu.dropout = self.resid_pdrop;
        }
        spec.sliding = self.sliding_window.map(|window| SlidingWindow {
            window,
            layers: SlidingLayers::All,
        });
        spec
    }

    /// HF's `Phi3ForCausalLM.prepare_inputs_for_generation`: growing past
    /// `original_max_position_embeddings`, generation encodes the whole sequence again.
    fn cache_rebuilt_past(&self) -> Option<usize> {
        Some(self.original_max_position_embeddings)
    }
}

/// Phi-3 with its language-model head (`Phi3ForCausalLM`).
pub type Phi3 = DecoderLm<Phi3Config>;
