//! Mixtral: Jiang et al., "Mixtral of Experts", arXiv 2401.04088. Reference: HF
//! `transformers.MixtralForCausalLM` (transformers 5).
//!
//! The Mistral decoder (RMSNorm, RoPE, grouped-query attention, a sliding window)
//! whose feed-forward is a sparse mixture of SwiGLU experts
//! ([`replica_blocks::moe`]): a router `mlp.gate` picks `num_experts_per_tok` of
//! `num_local_experts` experts per token (softmax in float32, top-k, renormalised),
//! whose weights are HF 5's fused `mlp.experts.gate_up_proj` `[experts, 2 ·
//! intermediate, hidden]` and `mlp.experts.down_proj` `[experts, hidden,
//! intermediate]`. With `output_router_logits`, [`Mixtral::forward_with_aux_loss`]
//! also gives the Switch Transformer's load-balancing loss over every layer's router
//! logits (`load_balancing_loss_func`, no attention mask), which HF returns as
//! `aux_loss` (and adds, times `router_aux_loss_coef`, to a language-modelling loss).

use candle_core::Tensor;
use replica_blocks::moe::{load_balancing_loss, MoeConfig};
use replica_blocks::{Activation, FeedForwardConfig, TransformerBlockConfig};
use replica_check::config_check::{finite, non_negative};
use replica_check::{ConfigCheck, Footprint, Workload};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::positive;
use crate::decoder::{DecoderConfig, DecoderLm, DecoderSpec, RopeParameters};
use crate::llama::LlamaConfig;
use crate::{papers, Family, ModelConfig, Preset};

fn silu() -> Activation {
    Activation::Silu
}
fn vocab() -> usize {
    32000
}
fn hidden() -> usize {
    4096
}
fn intermediate() -> usize {
    14336
}
fn layers() -> usize {
    32
}
fn heads() -> usize {
    32
}
fn kv_heads() -> Option<usize> {
    Some(8)
}
fn max_positions() -> usize {
    4096 * 32
}
fn eps() -> f64 {
    1e-5
}
fn top_k() -> usize {
    2
}
fn experts() -> usize {
    8
}
fn aux_loss_coef() -> f64 {
    0.001
}

/// HF's `MixtralConfig` (transformers 5 names); fields it lacks take HF's defaults
/// (those of Mixtral-8x7B).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MixtralConfig {
    /// Rows of the token embedding (and columns of the LM head).
    #[serde(default = "vocab")]
    pub vocab_size: usize,
    /// The width of the residual stream.
    #[serde(default = "hidden")]
    pub hidden_size: usize,
    /// The hidden width of each expert.
    #[serde(default = "intermediate")]
    pub intermediate_size: usize,
    /// Decoder layers.
    #[serde(default = "layers")]
    pub num_hidden_layers: usize,
    /// Query heads per layer.
    #[serde(default = "heads")]
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); `null` is `num_attention_heads`.
    #[serde(default = "kv_heads")]
    pub num_key_value_heads: Option<usize>,
    /// Features per head; `None` is `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// The experts' gate activation (SiLU: SwiGLU experts).
    #[serde(default = "silu")]
    pub hidden_act: Activation,
    /// The longest sequence the rotary tables cover.
    #[serde(default = "max_positions")]
    pub max_position_embeddings: usize,
    /// The RMSNorms' epsilon.
    #[serde(default = "eps")]
    pub rms_norm_eps: f64,
    /// v4 configs: the RoPE base (Mixtral's default 1e6).
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// v4 configs: RoPE scaling, read as transformers v5 reads it.
    #[serde(default)]
    pub rope_scaling: Option<RopeParameters>,
    /// v5 configs: the RoPE type, base and scaling parameters.
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    /// The LM head reads the token embedding's weight.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// The attention window of every layer (`null`: none, HF's default): each query
    /// sees itself and the `sliding_window - 1` tokens before it.
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// Dropout on the attention probabilities, in training.
    #[serde(default)]
    pub attention_dropout: f64,
    /// Experts per token.
    #[serde(default = "top_k")]
    pub num_experts_per_tok: usize,
    /// Routed experts per layer.
    #[serde(default = "experts")]
    pub num_local_experts: usize,
    /// Return the router logits and the auxiliary loss (HF's default: no).
    #[serde(default)]
    pub output_router_logits: bool,
    /// The auxiliary loss's weight in the training loss.
    #[serde(default = "aux_loss_coef")]
    pub router_aux_loss_coef: f64,
    /// Multiplicative noise on the router's input in training; 0 is off (HF's default),
    /// and the only value implemented.
    #[serde(default)]
    pub router_jitter_noise: f64,
    /// The embedding's padding row (no gradient flows to it).
    #[serde(default)]
    pub pad_token_id: Option<usize>,
    /// `mixtral`, when given.
    #[serde(default)]
    pub model_type: Option<String>,
}

impl ModelConfig for MixtralConfig {}

impl ConfigCheck for MixtralConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        if let Some(kind) = self.model_type.as_deref().filter(|k| *k != "mixtral") {
            return Err(format!(
                "model_type is `{kind}`, not `mixtral`: this is not a Mixtral config"
            ));
        }
        positive(&[
            ("num_local_experts", self.num_local_experts),
            ("num_experts_per_tok", self.num_experts_per_tok),
        ])?;
        if self.num_experts_per_tok > self.num_local_experts {
            return Err(format!(
                "num_experts_per_tok {} exceeds num_local_experts {}",
                self.num_experts_per_tok, self.num_local_experts
            ));
        }
        if self.sliding_window == Some(0) {
            return Err("`sliding_window` must be positive, got 0".into());
        }
        finite("router_aux_loss_coef", self.router_aux_loss_coef)?;
        non_negative("router_jitter_noise", self.router_jitter_noise)?;
        if self.router_jitter_noise != 0.0 {
            return Err(format!(
                "router_jitter_noise {} is not implemented (only 0, HF's default)",
                self.router_jitter_noise
            ));
        }
        self.as_llama().validate()?;
        self.moe().validate().map_err(|m| format!("mlp: {m}"))
    }

    fn footprint(&self, work: &Workload) -> Footprint {
        self.decoder_spec().footprint(work)
    }
}

impl MixtralConfig {
    /// The Mistral layout this config shares (the experts replace its MLP in
    /// [`decoder_spec`](DecoderConfig::decoder_spec)).
    fn as_llama(&self) -> LlamaConfig {
        LlamaConfig {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: Some(self.num_key_value_heads.unwrap_or(self.num_attention_heads)),
            head_dim: self.head_dim,
            hidden_act: self.hidden_act,
            max_position_embeddings: self.max_position_embeddings,
            rms_norm_eps: self.rms_norm_eps,
            // MixtralConfig's `default_theta`, where neither field gives a base.
            rope_theta: Some(self.rope_theta.unwrap_or(1_000_000.0)),
            rope_scaling: self.rope_scaling.clone(),
            rope_parameters: self.rope_parameters.clone(),
            attention_bias: false,
            mlp_bias: false,
            tie_word_embeddings: self.tie_word_embeddings,
            attention_dropout: self.attention_dropout,
            pad_token_id: self.pad_token_id,
            rope_interleaved: false,
            sliding_window: Some(self.sliding_window),
            model_type: Some("mistral".into()),
        }
    }

    /// Each layer's `MixtralSparseMoeBlock`.
    pub fn moe(&self) -> MoeConfig {
        MoeConfig {
            activation: self.hidden_act,
            ..MoeConfig::mixtral(
                self.hidden_size,
                self.intermediate_size,
                self.num_local_experts,
                self.num_experts_per_tok,
            )
        }
    }

    /// One decoder layer, as `MixtralDecoderLayer`.
    pub fn block_config(&self) -> TransformerBlockConfig {
        TransformerBlockConfig {
            feed_forward: FeedForwardConfig::Moe(self.moe()),
            ..self.as_llama().block_config()
        }
    }
}

impl DecoderConfig for MixtralConfig {
    const FAMILY: Family = Family {
        name: "Mixtral",
        reference: "transformers.MixtralForCausalLM",
        paper: papers::MIXTRAL,
        checkpoint_naming: "HF Mixtral (transformers 5): model.{embed_tokens,layers.N.{input_layernorm,\
                            self_attn.{q,k,v,o}_proj,post_attention_layernorm,mlp.gate,\
                            mlp.experts.{gate_up_proj,down_proj}},norm}, lm_head",
        signature: r"(^|\.)layers\.\d+\.mlp\.experts\.gate_up_proj$",
        example_tensor: "model.layers.0.mlp.experts.gate_up_proj",
    };

    const PRESETS: &'static [Preset] = &[Preset {
        name: "mixtral-8x7b",
        paper: papers::MIXTRAL,
        checkpoint: "mistralai/Mixtral-8x7B-v0.1 (HF hub)",
        description: "Mixtral 8x7B: 32 layers, 4096 wide, 32 heads with 8 key/value heads, 8 SwiGLU experts of \
                      14336 per layer, top-2 routing, 32000-token vocabulary",
        config: || {
            json!({
                "model_type": "mixtral", "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336,
                "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                "hidden_act": "silu", "max_position_embeddings": 32768, "rms_norm_eps": 1e-5,
                "rope_theta": 1000000.0, "sliding_window": null, "num_local_experts": 8,
                "num_experts_per_tok": 2, "output_router_logits": false, "router_aux_loss_coef": 0.02,
                "tie_word_embeddings": false,
            })
        },
    }];

    /// The whole decoder, as `MixtralForCausalLM`.
    fn decoder_spec(&self) -> DecoderSpec {
        let mut spec = self.as_llama().decoder_spec();
        spec.family = "Mixtral";
        spec.block = self.block_config();
        spec
    }
}

/// Mixtral with its language-model head (`MixtralForCausalLM`).
pub type Mixtral = DecoderLm<MixtralConfig>;

impl Mixtral {
    /// Logits `[batch, seq, vocab_size]` and HF's `aux_loss`, the load-balancing
    /// loss over every layer's router logits (a scalar, differentiable through the
    /// router probabilities), in training or inference.
    pub fn forward_with_aux_loss(&self, ids: &Tensor, train: bool) -> candle_core::Result<(Tensor, Tensor)> {
        let (logits, router_logits) = self.forward_routed_t(ids, None, train)?;
        let config = self.config();
        let aux = load_balancing_loss(&router_logits, config.num_local_experts, config.num_experts_per_tok)?;
        Ok((logits, aux))
    }
}
