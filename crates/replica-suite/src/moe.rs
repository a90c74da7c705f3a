//! Mixture-of-experts blocks and models against HF transformers' own modules
//! (`python/fixtures_moe.py`): Mixtral's `MixtralSparseMoeBlock` in f32 (with the
//! gradients of the router, the experts' 3-D weights and the input) and bf16,
//! DeepSeek-V2's `DeepseekV2Moe` (group-limited routing, scaled weights, shared
//! experts) in f32 with gradients, and `MixtralForCausalLM` (logits, the
//! load-balancing loss, gradients; bf16; greedy generation).
//!
//! The bundles store the fields of the model config that the block reads. The
//! router's tuple is compared as HF returns it (`gate:0` logits, `gate:1` top-k
//! weights, `gate:2` top-k indices) except where HF asks torch for an unsorted
//! top-k ([`UNSORTED_TOP_K`]).

use replica_blocks::activation::Activation;
use replica_blocks::mla::{Mla, MlaConfig};
use replica_blocks::moe::{GroupLimit, Moe, MoeConfig};
use replica_blocks::papers::{DEEPSEEK_MOE, DEEPSEEK_V2, MIXTRAL};
use replica_blocks::RopeParameters;
use replica_check::config_check::{finite_positive, positive};
use replica_check::{
    trace, BlockCheck, Bundle, Case, ConfigCheck, Footprint, Namespace, Report, Result, TraceMap, Unmatched, Workload,
};
use serde::Deserialize;

use candle_core::{DType, Tensor};
use replica_models::papers::DEEPSEEK_V2 as DEEPSEEK_V2_MODEL;
use replica_models::papers::MIXTRAL as MIXTRAL_MODEL;
use replica_models::{DeepseekV2, Mixtral};

use crate::case;
use crate::models::{
    as_check, check_generation, check_model_and, decoded_through_the_cache, load, report_of, ModelIo, ModelParity,
    INPUT_IDS,
};

/// Every mixture-of-experts case.
#[rustfmt::skip] // a table: one case per line
pub fn cases() -> Vec<Case> {
    vec![
        case("moe_mixtral",      "transformers MixtralSparseMoeBlock",        Some(MIXTRAL),      "moe/moe_mixtral",      mixtral_moe),
        case("moe_mixtral_bf16", "transformers MixtralSparseMoeBlock (bf16)", Some(MIXTRAL),      "moe/moe_mixtral_bf16", mixtral_moe),
        case("moe_deepseek_v2",  "transformers DeepseekV2Moe",                Some(DEEPSEEK_MOE), "moe/moe_deepseek_v2",  deepseek_moe),
        case("mla",              "transformers DeepseekV2Attention (eager, in MlaCausal)",                 Some(DEEPSEEK_V2), "moe/mla",      mla),
        case("mla_bf16",         "transformers DeepseekV2Attention (eager, bf16, in MlaCausal)",           Some(DEEPSEEK_V2), "moe/mla_bf16", mla),
        case("mla_yarn",         "transformers DeepseekV2Attention (eager, q_proj, yarn, in MlaCausal)",   Some(DEEPSEEK_V2), "moe/mla_yarn", mla),
        case("deepseek_v2_causal_lm",   "transformers.DeepseekV2ForCausalLM",       Some(DEEPSEEK_V2_MODEL), "moe/deepseek_v2",   |b| report_of(b, deepseek_v2_parity(b))),
        case("deepseek_v2_causal_lm_bf16", "transformers.DeepseekV2ForCausalLM (bf16)", Some(DEEPSEEK_V2_MODEL), "moe/deepseek_v2_bf16", |b| report_of(b, deepseek_v2_parity(b))),
        case("deepseek_v2_greedy_generate", "transformers.DeepseekV2ForCausalLM.generate", Some(DEEPSEEK_V2_MODEL), "moe/deepseek_v2_generate", |b| as_check(b, check_generation(b, load::<DeepseekV2>))),
        case("mixtral_causal_lm",       "transformers.MixtralForCausalLM",          Some(MIXTRAL_MODEL), "moe/mixtral",          |b| report_of(b, mixtral_parity(b))),
        case("mixtral_causal_lm_bf16",  "transformers.MixtralForCausalLM (bf16)",   Some(MIXTRAL_MODEL), "moe/mixtral_bf16",     |b| report_of(b, mixtral_parity(b))),
        case("mixtral_greedy_generate", "transformers.MixtralForCausalLM.generate", Some(MIXTRAL_MODEL), "moe/mixtral_generate", |b| as_check(b, check_generation(b, load::<Mixtral>))),
    ]
}

/// DeepSeek-V2's router asks for `torch.topk(..., sorted=False)`, whose order torch
/// leaves unspecified (on the CPU it is neither sorted nor by index), so its
/// per-slot outputs cannot be compared slot by slot: the top-k weights and indices.
/// The logits, the experts' sum and the output do not depend on that order and are
/// compared.
pub const UNSORTED_TOP_K: [&str; 2] = ["gate:1", "gate:2"];

/// What HF's hooks record of the experts' activation (`experts.act_fn`, and
/// `experts.act_fn#N` when the eager experts call it once per expert), which the
/// port does not record: its rows are laid out by the experts kernel HF runs, not
/// by the model (see `replica_blocks::moe`). The experts' sum is compared.
pub fn expert_activations(bundle: &Bundle) -> Vec<&str> {
    bundle
        .metadata()
        .activations
        .iter()
        .map(String::as_str)
        .filter(|name| {
            let base = name.split('#').next().unwrap_or(name);
            base == "experts.act_fn" || base.ends_with(".experts.act_fn")
        })
        .collect()
}

fn silu() -> Activation {
    Activation::Silu
}

/// The fields of HF's `MixtralConfig` that `MixtralSparseMoeBlock` reads.
#[derive(Deserialize)]
pub struct HfMixtralMoe {
    hidden_size: usize,
    intermediate_size: usize,
    num_local_experts: usize,
    num_experts_per_tok: usize,
    #[serde(default = "silu")]
    hidden_act: Activation,
    /// Multiplicative noise on the input in training only; evaluation ignores it.
    #[serde(default)]
    router_jitter_noise: f64,
}

impl ConfigCheck for HfMixtralMoe {
    fn validate(&self) -> std::result::Result<(), String> {
        if !(0.0..=1.0).contains(&self.router_jitter_noise) {
            return Err(format!(
                "`router_jitter_noise` must lie in [0, 1], got {}",
                self.router_jitter_noise
            ));
        }
        self.moe().validate()
    }

    fn footprint(&self, work: &Workload) -> Footprint {
        self.moe().footprint(work)
    }
}

impl HfMixtralMoe {
    /// The block's config.
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
}

/// The fields of HF's `DeepseekV2Config` that `DeepseekV2Moe` reads.
#[derive(Deserialize)]
pub struct HfDeepseekMoe {
    hidden_size: usize,
    moe_intermediate_size: usize,
    n_routed_experts: usize,
    num_experts_per_tok: usize,
    n_shared_experts: usize,
    #[serde(default)]
    n_group: Option<usize>,
    #[serde(default)]
    topk_group: Option<usize>,
    topk_method: String,
    routed_scaling_factor: f64,
    /// Read and ignored, as HF 5's DeepSeek-V2 router ignores it.
    #[serde(default)]
    #[allow(dead_code)]
    norm_topk_prob: bool,
    #[serde(default = "silu")]
    hidden_act: Activation,
    #[serde(default)]
    mlp_bias: bool,
}

impl ConfigCheck for HfDeepseekMoe {
    fn validate(&self) -> std::result::Result<(), String> {
        positive("n_shared_experts", self.n_shared_experts)?;
        finite_positive("routed_scaling_factor", self.routed_scaling_factor)?;
        if self.mlp_bias {
            return Err("`mlp_bias` true is not implemented (the shared experts have no biases)".into());
        }
        self.moe()?.validate()
    }

    fn footprint(&self, work: &Workload) -> Footprint {
        self.moe().map(|moe| moe.footprint(work)).unwrap_or(Footprint::NONE)
    }
}

impl HfDeepseekMoe {
    /// The block's config; refuses an unknown `topk_method` and a group-limited one without its groups.
    pub fn moe(&self) -> std::result::Result<MoeConfig, String> {
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
                self.num_experts_per_tok,
                groups,
                self.routed_scaling_factor,
                Some(shared),
            )
        })
    }
}

fn mixtral_moe(bundle: &Bundle) -> Result<Report> {
    let config = bundle.config::<HfMixtralMoe>()?.moe();
    let kernel_laid_out = expert_activations(bundle);
    BlockCheck::new(bundle)
        .unmatched(Unmatched {
            port_only: &[],
            reference_only: &kernel_laid_out,
        })
        .run(|vb| Moe::new(&config, vb), |moe, x| Ok(vec![moe.forward(&x[0])?.0]))
}

fn deepseek_moe(bundle: &Bundle) -> Result<Report> {
    let hf = bundle.config::<HfDeepseekMoe>()?;
    let config = hf.moe().map_err(|m| bundle.config_error("topk_method", m))?;
    let unsorted = TraceMap::new().ignore(r"^gate:[12]$");
    let mut set_aside = expert_activations(bundle);
    set_aside.extend(UNSORTED_TOP_K);
    BlockCheck::new(bundle)
        .unmatched(Unmatched {
            port_only: &[],
            reference_only: &set_aside,
        })
        .run(
            |vb| Moe::new(&config, vb),
            |moe, x| Ok(vec![trace::mapped(&unsorted, || moe.forward(&x[0]))?.0]),
        )
}

/// HF `MixtralForCausalLM`: the logits (also decoded through the KV cache), with
/// `output_router_logits` also `aux_loss` (the load-balancing loss over every
/// layer's router logits), every activation (each router's tuple among them) and,
/// where the bundle has them, the gradient of every parameter.
pub fn mixtral_parity(bundle: &Bundle) -> replica_models::Result<ModelParity> {
    let aux = bundle.contains(Namespace::Output, "aux_loss");
    let kernel_laid_out = expert_activations(bundle);
    let io = ModelIo {
        inputs: &[INPUT_IDS],
        outputs: if aux { &["logits", "aux_loss"] } else { &["logits"] },
        ties: &[],
        unmatched: Unmatched {
            port_only: &[],
            reference_only: &kernel_laid_out,
        },
    };
    let forward = |model: &Mixtral, ids: &[Tensor]| {
        if aux {
            let (logits, aux_loss) = model.forward_with_aux_loss(&ids[0], false)?;
            Ok(vec![logits, aux_loss])
        } else {
            Ok(vec![model.forward(&ids[0], None)?])
        }
    };
    check_model_and(bundle, &io, load::<Mixtral>, forward, decoded_through_the_cache)
}

/// The fields of HF's `DeepseekV2Config` that `DeepseekV2Attention` reads.
#[derive(Deserialize)]
pub struct HfMla {
    hidden_size: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    q_lora_rank: Option<usize>,
    kv_lora_rank: usize,
    qk_nope_head_dim: usize,
    qk_rope_head_dim: usize,
    v_head_dim: usize,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    attention_dropout: f64,
    #[serde(default)]
    rope_parameters: Option<RopeParameters>,
    max_position_embeddings: usize,
}

impl ConfigCheck for HfMla {
    fn validate(&self) -> std::result::Result<(), String> {
        if let Some(kv) = self.num_key_value_heads.filter(|&kv| kv != self.num_attention_heads) {
            // HF expands the latent into every head and then repeats them by
            // heads / kv_heads: only equal counts run there.
            return Err(format!(
                "`num_key_value_heads` {kv} differs from `num_attention_heads` {} (MLA expands the latent into every head)",
                self.num_attention_heads
            ));
        }
        self.mla()?.validate()
    }

    fn footprint(&self, work: &Workload) -> Footprint {
        self.mla().map(|mla| mla.footprint(work)).unwrap_or(Footprint::NONE)
    }
}

impl HfMla {
    /// The block's config.
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
            &self.rope_parameters.clone().unwrap_or_default(),
            self.max_position_embeddings,
        )?;
        Ok(MlaConfig {
            attention_dropout: self.attention_dropout,
            ..config
        })
    }
}

/// `DeepseekV2Attention` in the fixture's causal wrapper: the attention under
/// `self_attn`, returning HF's `(output, probabilities)`.
fn mla(bundle: &Bundle) -> Result<Report> {
    let config = bundle
        .config::<HfMla>()?
        .mla()
        .map_err(|m| bundle.config_error("rope_parameters", m))?;
    BlockCheck::new(bundle).run(
        |vb| Mla::new(&config, vb.pp("self_attn")),
        |mla, x| Ok(vec![mla.forward_with_weights_t(&x[0], None, false)?.0]),
    )
}

/// The activations of a DeepSeek-V2 bundle that the case sets aside: those that
/// depend on the slot order of its unsorted top-k ([`UNSORTED_TOP_K`] in every MoE
/// layer) and the experts' activation ([`expert_activations`]).
pub fn unsorted_top_k_activations(bundle: &Bundle) -> Vec<&str> {
    bundle
        .metadata()
        .activations
        .iter()
        .map(String::as_str)
        .filter(|name| {
            UNSORTED_TOP_K
                .iter()
                .any(|suffix| name.ends_with(&format!(".mlp.{suffix}")))
        })
        .chain(expert_activations(bundle))
        .collect()
}

/// HF `DeepseekV2ForCausalLM`: logits (also decoded through the KV cache of
/// compressed latents), every activation but the unsorted top-k's per-slot ones
/// ([`UNSORTED_TOP_K`]) and the experts' activation ([`expert_activations`]) and,
/// where the bundle has them, every parameter's gradient.
pub fn deepseek_v2_parity(bundle: &Bundle) -> replica_models::Result<ModelParity> {
    let unsorted = unsorted_top_k_activations(bundle);
    let io = ModelIo {
        inputs: &[INPUT_IDS],
        outputs: &["logits"],
        ties: &[],
        unmatched: Unmatched {
            port_only: &[],
            reference_only: &unsorted,
        },
    };
    let map = TraceMap::new().ignore(r"\.mlp\.gate:[12]$");
    let forward = |model: &DeepseekV2, ids: &[Tensor]| Ok(vec![trace::mapped(&map, || model.forward(&ids[0], None))?]);
    let mut parity = check_model_and(bundle, &io, load::<DeepseekV2>, forward, decoded_through_the_cache)?;
    if bundle
        .dtype()
        .is_ok_and(|dtype| dtype != DType::F32 && dtype != DType::F64)
    {
        noise_decides_float32_router_logits(&mut parity.report);
    }
    Ok(parity)
}

/// In a half-precision run, DeepSeek-V2's router logits are float32 computed from
/// half-precision hidden states, so they carry those states' rounding: the reference
/// cannot agree with its float64 shadow to float32's half digits, which is when the
/// noise multiple stops deciding and float32's `assert_close` tolerance does. One
/// input rounding the other way then fails a logit near zero although the port is
/// no further from the shadow than the reference is. There the noise multiple
/// decides, as it does for the half-precision tensors around them.
fn noise_decides_float32_router_logits(report: &mut Report) {
    for row in &mut report.rows {
        if row.name.ends_with(".mlp.gate:0") && row.comparison.noise.is_some() {
            row.comparison.decided_by_noise = true;
        }
    }
}
