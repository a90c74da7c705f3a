//! DeepSeek-V2: DeepSeek-AI, "DeepSeek-V2: A Strong, Economical, and Efficient
//! Mixture-of-Experts Language Model", arXiv 2405.04434. Reference: HF
//! `transformers.DeepseekV2ForCausalLM` (transformers 5).
//!
//! Pre-norm decoder layers (RMSNorm) of multi-head latent attention
//! ([`replica_blocks::mla`]) and a feed-forward that is a dense SwiGLU MLP in the
//! first `first_k_dense_replace` layers and DeepSeekMoE ([`replica_blocks::moe`],
//! arXiv 2401.06066) after: `n_routed_experts` routed experts of
//! `moe_intermediate_size`, `num_experts_per_tok` per token (softmax in float32,
//! greedy or group-limited top-k, never renormalised, times
//! `routed_scaling_factor`), beside `n_shared_experts` shared ones. What HF 5 reads
//! and what it ignores is followed: `norm_topk_prob`, `moe_layer_freq`,
//! `scoring_func`, `seq_aux` and `aux_loss_alpha` of the original configs change
//! nothing there (every layer from `first_k_dense_replace` on is sparse), and
//! `DeepseekV2ForCausalLM` returns no auxiliary loss.

use candle_core::{Device, ModuleT, Tensor};
use candle_nn::VarBuilder;
use replica_blocks::kv_cache::KvCache;
use replica_blocks::mla::{Mla, MlaConfig};
use replica_blocks::moe::{GroupLimit, Moe, MoeConfig};
use replica_blocks::{
    Activation, Embedding, EmbeddingConfig, GluMlp, GluMlpConfig, Linear, LinearConfig, RmsNorm, RmsNormConfig,
};
use replica_check::config_check::{at_most, non_negative};
use replica_check::{ConfigCheck, Footprint, Size, Workload};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::{positive, probabilities};
use crate::decoder::{rope_parameters, RopeParameters};
use crate::generation::{decoder_positions, CausalLm};
use crate::{papers, Architecture, Family, ModelConfig, Preset};

fn silu() -> Activation {
    Activation::Silu
}
fn vocab() -> usize {
    102_400
}
fn hidden() -> usize {
    4096
}
fn intermediate() -> usize {
    11_008
}
fn layers() -> usize {
    32
}
fn heads() -> usize {
    32
}
fn max_positions() -> usize {
    2048
}
fn eps() -> f64 {
    1e-6
}
fn kv_lora_rank() -> usize {
    512
}
fn q_lora_rank() -> Option<usize> {
    Some(1536)
}
fn routed_experts() -> usize {
    64
}
fn shared_experts() -> usize {
    2
}
fn nope() -> usize {
    128
}
fn rope_dim() -> usize {
    64
}
fn v_dim() -> usize {
    128
}
fn one() -> f64 {
    1.0
}
fn greedy() -> String {
    "greedy".into()
}
fn moe_intermediate() -> usize {
    1407
}

/// HF's `DeepseekV2Config` (transformers 5 names); fields it lacks take HF's defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeepseekV2Config {
    /// Rows of the token embedding (and columns of the LM head).
    #[serde(default = "vocab")]
    pub vocab_size: usize,
    /// The width of the residual stream.
    #[serde(default = "hidden")]
    pub hidden_size: usize,
    /// The hidden width of the dense MLPs (the first `first_k_dense_replace` layers).
    #[serde(default = "intermediate")]
    pub intermediate_size: usize,
    /// The hidden width of each routed expert (and of each shared one).
    #[serde(default = "moe_intermediate")]
    pub moe_intermediate_size: usize,
    /// Decoder layers.
    #[serde(default = "layers")]
    pub num_hidden_layers: usize,
    /// Attention heads.
    #[serde(default = "heads")]
    pub num_attention_heads: usize,
    /// Must equal `num_attention_heads` (`null`: equal), as HF's attention requires.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// The activation of every MLP and expert (SiLU: SwiGLU).
    #[serde(default = "silu")]
    pub hidden_act: Activation,
    /// The longest sequence the rotary tables cover.
    #[serde(default = "max_positions")]
    pub max_position_embeddings: usize,
    /// The epsilon of the layer norms and the final norm (not of MLA's latent norms).
    #[serde(default = "eps")]
    pub rms_norm_eps: f64,
    /// The embedding's padding row.
    #[serde(default)]
    pub pad_token_id: Option<usize>,
    /// The LM head reads the token embedding's weight.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// v4 configs: the RoPE base (default 10000).
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// v4 configs: RoPE scaling (DeepSeek-V2's YaRN), read as transformers v5 reads it.
    #[serde(default)]
    pub rope_scaling: Option<RopeParameters>,
    /// v5 configs: the RoPE type, base and scaling parameters.
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    /// Biases on `q_a_proj`, `kv_a_proj_with_mqa` and `o_proj`.
    #[serde(default)]
    pub attention_bias: bool,
    /// Dropout on the attention probabilities, in training.
    #[serde(default)]
    pub attention_dropout: f64,
    /// Biases on the MLPs' projections; only `false` is implemented.
    #[serde(default)]
    pub mlp_bias: bool,
    /// HF derives it (`qk_rope_head_dim`); a config may carry it.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// How many first layers keep a dense MLP.
    #[serde(default)]
    pub first_k_dense_replace: usize,
    /// The rank of the key/value latent.
    #[serde(default = "kv_lora_rank")]
    pub kv_lora_rank: usize,
    /// The rank of the query compression; `null`: one `q_proj`.
    #[serde(default = "q_lora_rank")]
    pub q_lora_rank: Option<usize>,
    /// Expert groups, for `group_limited_greedy`.
    #[serde(default)]
    pub n_group: Option<usize>,
    /// Routed experts per MoE layer.
    #[serde(default = "routed_experts")]
    pub n_routed_experts: usize,
    /// Router logits as an output; HF 5's DeepSeek-V2 computes no loss from them.
    #[serde(default)]
    pub output_router_logits: bool,
    /// Shared experts per MoE layer (one gated MLP of this many times the expert width).
    #[serde(default = "shared_experts")]
    pub n_shared_experts: usize,
    /// Query/key features per head without positions.
    #[serde(default = "nope")]
    pub qk_nope_head_dim: usize,
    /// Query/key features per head that rotate.
    #[serde(default = "rope_dim")]
    pub qk_rope_head_dim: usize,
    /// The factor on the routing weights.
    #[serde(default = "one")]
    pub routed_scaling_factor: f64,
    /// Groups a token may route to, for `group_limited_greedy`.
    #[serde(default)]
    pub topk_group: Option<usize>,
    /// `greedy` or `group_limited_greedy`.
    #[serde(default = "greedy")]
    pub topk_method: String,
    /// Read and ignored, as HF 5's DeepSeek-V2 router ignores it (it never renormalises).
    #[serde(default)]
    pub norm_topk_prob: Option<bool>,
    /// Value features per head.
    #[serde(default = "v_dim")]
    pub v_head_dim: usize,
    /// Experts per token (HF's default `null` cannot run: required).
    #[serde(default)]
    pub num_experts_per_tok: Option<usize>,
    /// `deepseek_v2`, when given.
    #[serde(default)]
    pub model_type: Option<String>,
}

impl ModelConfig for DeepseekV2Config {
    /// Fields of the original DeepSeek-V2 configs that HF 5's model does not read.
    const NOT_USED: &'static [&'static str] = &[
        "moe_layer_freq",
        "scoring_func",
        "seq_aux",
        "aux_loss_alpha",
        "pretraining_tp",
        "qk_head_dim",
    ];
}

impl ConfigCheck for DeepseekV2Config {
    fn validate(&self) -> std::result::Result<(), String> {
        if let Some(kind) = self.model_type.as_deref().filter(|k| *k != "deepseek_v2") {
            return Err(format!(
                "model_type is `{kind}`, not `deepseek_v2`: this is not a DeepSeek-V2 config"
            ));
        }
        positive(&[
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("max_position_embeddings", self.max_position_embeddings),
        ])?;
        let top_k = self.top_k()?;
        if let Some(kv) = self.num_key_value_heads.filter(|&kv| kv != self.num_attention_heads) {
            return Err(format!(
                "`num_key_value_heads` {kv} differs from `num_attention_heads` {} (MLA expands the latent into every head)",
                self.num_attention_heads
            ));
        }
        if self.mlp_bias {
            return Err("`mlp_bias` true is not implemented".into());
        }
        non_negative("rms_norm_eps", self.rms_norm_eps)?;
        probabilities(&[("attention_dropout", self.attention_dropout)])?;
        at_most("vocab_size", self.vocab_size, 1 << 32)?;
        at_most("max_position_embeddings", self.max_position_embeddings, 1 << 32)?;
        if let Some(pad) = self.pad_token_id.filter(|&pad| pad >= self.vocab_size) {
            return Err(format!(
                "pad_token_id {pad} is not below vocab_size {}",
                self.vocab_size
            ));
        }
        if self.first_k_dense_replace < self.num_hidden_layers {
            self.moe_with(top_k)?.validate().map_err(|m| format!("mlp: {m}"))?;
        }
        GluMlpConfig::swiglu(self.hidden_size, self.intermediate_size).validate()?;
        self.mla()?.validate().map_err(|m| format!("self_attn: {m}"))
    }

    /// The embedding, an untied head and the final norm; per token the logits;
    /// every layer's attention, norms and feed-forward.
    fn footprint(&self, work: &Workload) -> Footprint {
        let hidden = work.as_tokens(self.hidden_size);
        let dim = Size::field("hidden_size", self.hidden_size);
        let vocab = Size::field("vocab_size", self.vocab_size);
        let heads = if self.tie_word_embeddings { 1 } else { 2 };
        let own = Footprint {
            params: hidden.bytes(vocab.clone() * dim.clone() * heads + dim.clone()),
            activations: hidden.bytes(hidden.rows() * (vocab * 2 + dim.clone() * 4)),
        };
        let attention = self.mla().map(|mla| mla.footprint(&hidden)).unwrap_or(Footprint::NONE);
        let dense = GluMlpConfig::swiglu(self.hidden_size, self.intermediate_size).footprint(&hidden);
        let moe = self
            .top_k()
            .and_then(|k| self.moe_with(k))
            .map(|moe| moe.footprint(&hidden))
            .unwrap_or(Footprint::NONE);
        let dense_layers = self.first_k_dense_replace.min(self.num_hidden_layers);
        let norms = Footprint {
            params: hidden.bytes(dim.clone() * 2),
            activations: hidden.bytes(hidden.rows() * dim * 4),
        };
        own + (attention.clone() + norms.clone() + dense).times(Size::field("first_k_dense_replace", dense_layers))
            + (attention + norms + moe).times(Size::field("num_hidden_layers", self.num_hidden_layers - dense_layers))
    }
}

impl DeepseekV2Config {
    fn top_k(&self) -> std::result::Result<usize, String> {
        self.num_experts_per_tok
            .ok_or_else(|| "`num_experts_per_tok` is required (HF's default null cannot route)".to_string())
    }

    /// The RoPE parameters as transformers v5 reads them (v4's `rope_scaling`, else
    /// `rope_parameters`, with the base filled in).
    pub fn rope(&self) -> std::result::Result<RopeParameters, String> {
        rope_parameters(
            self.rope_theta,
            &self.rope_scaling,
            &self.rope_parameters,
            self.max_position_embeddings,
        )
    }

    /// Each layer's `DeepseekV2Attention`.
    pub fn mla(&self) -> std::result::Result<MlaConfig, String> {
        let config = MlaConfig::deepseek_v2(
            self.hidden_size,
            self.num_attention_heads,
            self.q_lora_rank,
            self.kv_lora_rank,
            self.qk_nope_head_dim,
            self.qk_rope_head_dim,
            self.v_head_dim,
            self.attention_bias,
            &self.rope()?,
            self.max_position_embeddings,
        )?;
        Ok(MlaConfig {
            attention_dropout: self.attention_dropout,
            ..config
        })
    }

    fn moe_with(&self, top_k: usize) -> std::result::Result<MoeConfig, String> {
        let groups = match (self.topk_method.as_str(), self.n_group, self.topk_group) {
            ("greedy", _, _) => None,
            ("group_limited_greedy", Some(n_group), Some(topk_group)) => Some(GroupLimit { n_group, topk_group }),
            ("group_limited_greedy", _, _) => {
                return Err("`topk_method` \"group_limited_greedy\" needs `n_group` and `topk_group`".into())
            }
            (other, _, _) => {
                return Err(format!(
                    "`topk_method` {other:?} is not one of \"greedy\", \"group_limited_greedy\""
                ))
            }
        };
        positive(&[("n_shared_experts", self.n_shared_experts)])?;
        let shared = self
            .moe_intermediate_size
            .checked_mul(self.n_shared_experts)
            .ok_or("`moe_intermediate_size` times `n_shared_experts` is too large")?;
        Ok(MoeConfig {
            activation: self.hidden_act,
            ..MoeConfig::deepseek_v2(
                self.hidden_size,
                self.moe_intermediate_size,
                self.n_routed_experts,
                top_k,
                groups,
                self.routed_scaling_factor,
                Some(shared),
            )
        })
    }

    /// Each sparse layer's `DeepseekV2Moe`.
    pub fn moe(&self) -> std::result::Result<MoeConfig, String> {
        self.moe_with(self.top_k()?)
    }
}

/// A layer's feed-forward: HF's `DeepseekV2MLP` or `DeepseekV2Moe`.
#[derive(Clone, Debug)]
enum FeedForward {
    Dense(GluMlp),
    Sparse(Moe),
}

/// `DeepseekV2DecoderLayer`: pre-norm attention and feed-forward.
#[derive(Clone, Debug)]
struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Mla,
    post_attention_layernorm: RmsNorm,
    mlp: FeedForward,
    path: String,
}

impl DecoderLayer {
    fn forward_t(&self, x: &Tensor, cache: Option<&mut KvCache>, train: bool) -> candle_core::Result<Tensor> {
        let attended = self
            .self_attn
            .forward_t(&self.input_layernorm.forward(x)?, cache, train)?;
        let x = (x + attended)?;
        let normed = self.post_attention_layernorm.forward(&x)?;
        let fed = match &self.mlp {
            FeedForward::Dense(mlp) => mlp.forward_t(&normed, train)?,
            FeedForward::Sparse(moe) => moe.forward(&normed)?.0,
        };
        let y = (x + fed)?;
        replica_check::tap(&self.path, &y);
        Ok(y)
    }
}

/// DeepSeek-V2 with its language-model head (`DeepseekV2ForCausalLM`).
#[derive(Clone, Debug)]
pub struct DeepseekV2 {
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    config: DeepseekV2Config,
    device: Device,
}

impl Architecture for DeepseekV2 {
    type Config = DeepseekV2Config;

    const FAMILY: Family = Family {
        name: "DeepSeek-V2",
        reference: "transformers.DeepseekV2ForCausalLM",
        paper: papers::DEEPSEEK_V2,
        checkpoint_naming: "HF DeepSeek-V2 (transformers 5): model.{embed_tokens,layers.N.{input_layernorm,\
                            self_attn.{q_proj|q_a_proj,q_a_layernorm,q_b_proj},kv_a_proj_with_mqa,kv_a_layernorm,\
                            kv_b_proj,o_proj},post_attention_layernorm,mlp.{gate_proj,up_proj,down_proj | gate,\
                            experts.{gate_up_proj,down_proj},shared_experts.*}},norm}, lm_head",
        signature: r"(^|\.)layers\.\d+\.self_attn\.kv_a_proj_with_mqa\.weight$",
        example_tensor: "model.layers.0.self_attn.kv_a_proj_with_mqa.weight",
    };

    const PRESETS: &'static [Preset] = &[Preset {
        name: "deepseek-v2-lite",
        paper: papers::DEEPSEEK_V2,
        checkpoint: "deepseek-ai/DeepSeek-V2-Lite (HF hub)",
        description: "DeepSeek-V2-Lite: 27 layers, 2048 wide, 16 MLA heads (latent 512, no query compression), \
                      the first layer dense, then 64 routed experts (6 per token) and 2 shared, YaRN RoPE x40",
        config: || {
            json!({
                "model_type": "deepseek_v2", "vocab_size": 102400, "hidden_size": 2048,
                "intermediate_size": 10944, "moe_intermediate_size": 1408, "num_hidden_layers": 27,
                "num_attention_heads": 16, "num_key_value_heads": 16, "n_shared_experts": 2,
                "n_routed_experts": 64, "routed_scaling_factor": 1.0, "kv_lora_rank": 512, "q_lora_rank": null,
                "qk_rope_head_dim": 64, "v_head_dim": 128, "qk_nope_head_dim": 128, "topk_method": "greedy",
                "n_group": 1, "topk_group": 1, "num_experts_per_tok": 6, "moe_layer_freq": 1,
                "first_k_dense_replace": 1, "norm_topk_prob": false, "scoring_func": "softmax",
                "aux_loss_alpha": 0.001, "seq_aux": true, "hidden_act": "silu",
                "max_position_embeddings": 163840, "rms_norm_eps": 1e-6, "rope_theta": 10000,
                "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                                 "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707},
                "attention_bias": false, "attention_dropout": 0.0, "tie_word_embeddings": false,
                "bos_token_id": 100000, "eos_token_id": 100001,
            })
        },
    }];

    /// Builds the model under `vb` (`model.*`, `lm_head.weight`).
    fn new(config: &DeepseekV2Config, vb: VarBuilder) -> candle_core::Result<Self> {
        Self::check(config)?;
        let fail = |m: String| candle_core::Error::Msg(format!("DeepSeek-V2 config: {m}"));
        let mla = config.mla().map_err(fail)?;
        let m = vb.pp("model");
        let embed_tokens = Embedding::new(
            &EmbeddingConfig {
                padding_idx: config.pad_token_id,
                ..EmbeddingConfig::new(config.vocab_size, config.hidden_size)
            },
            m.pp("embed_tokens"),
        )?;
        let norm_config = RmsNormConfig {
            eps: config.rms_norm_eps,
            ..RmsNormConfig::new(config.hidden_size)
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let l = m.pp("layers").pp(i);
            let mlp = if i >= config.first_k_dense_replace {
                FeedForward::Sparse(Moe::new(&config.moe().map_err(fail)?, l.pp("mlp"))?)
            } else {
                let dense = GluMlpConfig::new(config.hidden_size, config.intermediate_size, config.hidden_act);
                FeedForward::Dense(GluMlp::new(&dense, l.pp("mlp"))?)
            };
            layers.push(DecoderLayer {
                input_layernorm: RmsNorm::new(&norm_config, l.pp("input_layernorm"))?,
                self_attn: Mla::new(&mla, l.pp("self_attn"))?,
                post_attention_layernorm: RmsNorm::new(&norm_config, l.pp("post_attention_layernorm"))?,
                mlp,
                path: l.prefix(),
            });
        }
        let norm = RmsNorm::new(&norm_config, m.pp("norm"))?;
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

    /// HF's checkpoints need no renaming; a tied head's `lm_head.weight` copy is dropped.
    fn weight_map(config: &DeepseekV2Config) -> replica_check::WeightMap {
        let map = replica_check::WeightMap::new();
        if config.tie_word_embeddings {
            map.ignore(r"^lm_head\.weight$")
        } else {
            map
        }
    }
}

impl DeepseekV2 {
    /// The configuration the model was built with.
    pub fn config(&self) -> &DeepseekV2Config {
        &self.config
    }

    /// Logits `[batch, seq, vocab_size]` of token ids `[batch, seq]`, continuing from
    /// what `cache` holds (one [`KvCache`] of compressed latents per layer).
    pub fn logits_t(
        &self,
        ids: &Tensor,
        mut cache: Option<&mut [KvCache]>,
        train: bool,
    ) -> candle_core::Result<Tensor> {
        let limit = self.config.max_position_embeddings;
        let table = format!("max_position_embeddings {limit} (the rotary tables end there)");
        decoder_positions("DeepSeek-V2", ids, &cache, self.layers.len(), limit, &table)?;
        let mut x = self.embed_tokens.forward(ids)?;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward_t(&x, cache.as_mut().map(|c| &mut c[i]), train)?;
        }
        let x = self.norm.forward(&x)?;
        replica_check::tap("model:last_hidden_state", &x);
        self.lm_head.forward(&x)
    }

    /// Logits in inference, continuing from `cache`.
    pub fn forward(&self, ids: &Tensor, cache: Option<&mut [KvCache]>) -> candle_core::Result<Tensor> {
        self.logits_t(ids, cache, false)
    }
}

impl ModuleT for DeepseekV2 {
    /// Logits `[batch, seq, vocab_size]`; `train` turns attention dropout on.
    fn forward_t(&self, ids: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.logits_t(ids, None, train)
    }
}

impl CausalLm for DeepseekV2 {
    fn forward_lm(&self, ids: &Tensor, cache: Option<&mut [KvCache]>) -> candle_core::Result<Tensor> {
        self.logits_t(ids, cache, false)
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
