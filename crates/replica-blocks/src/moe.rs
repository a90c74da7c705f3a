//! A sparse mixture of experts: a router picks `top_k` of `num_experts` gated
//! MLPs per token and sums their outputs weighted by the router's probabilities.
//! Jiang et al., "Mixtral of Experts", arXiv 2401.04088 (registry:
//! [`crate::papers::MIXTRAL`]); shared experts from Dai et al., "DeepSeekMoE",
//! arXiv 2401.06066 ([`crate::papers::DEEPSEEK_MOE`]); the auxiliary
//! load-balancing loss from Fedus et al., "Switch Transformers", arXiv 2101.03961
//! ([`crate::papers::SWITCH_TRANSFORMER`]).
//!
//! ```text
//! logits = x Wᵣᵀ                         (the router, `gate`)
//! p      = softmax(logits)               (float32)
//! S      = top-k(p)                      (the chosen experts; not differentiable)
//! w_e    = p_e / Σ_{j∈S} p_j · scale     (renormalised or not; the weights are differentiable)
//! y      = Σ_{e∈S} w_e · E_e(x) + shared(x),   E_e(x) = down_e(act(gate_e x) · up_e x)
//! ```
//!
//! As HF transformers 5 lays it out: the router is `gate` (weight `[num_experts,
//! dim]`), the experts are two 3-D parameters `experts.gate_up_proj` `[num_experts,
//! 2 · expert_dim, dim]` (gate rows first) and `experts.down_proj` `[num_experts,
//! dim, expert_dim]`, the shared experts one gated MLP `shared_experts`. Each
//! expert's output is multiplied by its float32 weight and the products are
//! summed in float32 and rounded once to the input's dtype (HF's default
//! `grouped_mm` experts). The router records the tuple HF's router returns:
//! `gate:0` the logits, `gate:1` the top-k weights, `gate:2` the top-k indices;
//! `experts` records the experts' sum. HF's `experts.act_fn` is not recorded: the
//! rows its hook sees depend on the experts kernel HF runs (one call per expert
//! when eager, the (token, slot) pairs in token order for `batched_mm`, sorted by
//! expert for `grouped_mm`), not on the model.

use candle_core::{DType, Device, Result, Tensor, D};
use candle_nn::VarBuilder;
use replica_check::config_check::{finite_positive, positive};
use replica_check::{ConfigCheck, Footprint, Size, Workload};
use serde::{Deserialize, Serialize};

use crate::ops::{self, ScoreBias};
use crate::{Activation, GluMlp, GluMlpConfig, Linear};

fn silu() -> Activation {
    Activation::Silu
}

fn yes() -> bool {
    true
}

fn one() -> f64 {
    1.0
}

/// The order of the router's softmax and its top-k selection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Routing {
    /// Softmax over every expert, then the `top_k` largest probabilities (HF Mixtral,
    /// DeepSeek-V2, Qwen2-MoE); renormalised over the chosen ones when `norm_topk_prob`.
    #[default]
    SoftmaxThenTopK,
    /// The `top_k` largest logits, then a softmax over those alone (the Mixtral
    /// paper's eq. 2, Mistral's reference code).
    TopKThenSoftmax,
}

/// In which dtype the router computes its logits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouterDtype {
    /// The input's dtype (HF Mixtral: `F.linear(x, W)`; the softmax runs in float32).
    #[default]
    Input,
    /// Float32 input and weight (HF DeepSeek-V2: `F.linear(x.float(), W.float())`).
    Float32,
}

/// Group-limited routing (DeepSeek-V2's `group_limited_greedy`): the experts form
/// `n_group` equal groups, only the `topk_group` groups with the largest best
/// probability are eligible, and the top-k is taken among their experts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupLimit {
    /// The number of expert groups (HF `n_group`).
    pub n_group: usize,
    /// How many groups a token may route to (HF `topk_group`).
    pub topk_group: usize,
}

/// A sparse mixture-of-experts layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MoeConfig {
    /// Input and output features (HF `hidden_size`).
    #[serde(alias = "hidden_size")]
    pub dim: usize,
    /// The hidden width of one expert (HF Mixtral `intermediate_size`, DeepSeek `moe_intermediate_size`).
    pub expert_dim: usize,
    /// The number of routed experts (HF `num_local_experts`, `n_routed_experts`).
    pub num_experts: usize,
    /// Experts per token (HF `num_experts_per_tok`).
    #[serde(alias = "num_experts_per_tok")]
    pub top_k: usize,
    /// Softmax then top-k (HF's) or top-k then softmax.
    #[serde(default)]
    pub routing: Routing,
    /// Renormalise the chosen probabilities to sum to one (Mixtral: yes; DeepSeek-V2: no).
    /// Only for [`Routing::SoftmaxThenTopK`]; the other order sums to one already.
    #[serde(default = "yes")]
    pub norm_topk_prob: bool,
    /// A factor on the routing weights (DeepSeek `routed_scaling_factor`; default 1).
    #[serde(default = "one")]
    pub routed_scaling_factor: f64,
    /// The dtype of the router's logits.
    #[serde(default)]
    pub router_dtype: RouterDtype,
    /// Group-limited routing; `None`: greedy over all experts.
    #[serde(default)]
    pub groups: Option<GroupLimit>,
    /// The hidden width of the shared experts, one gated MLP every token goes
    /// through (DeepSeek: `moe_intermediate_size · n_shared_experts`); `None`: none.
    #[serde(default)]
    pub shared_expert_dim: Option<usize>,
    /// The experts' gate activation (HF `hidden_act`; default SiLU).
    #[serde(default = "silu", alias = "hidden_act")]
    pub activation: Activation,
}

impl MoeConfig {
    /// HF Mixtral's routing: softmax, top-k, renormalised, logits in the input's dtype.
    pub fn mixtral(dim: usize, expert_dim: usize, num_experts: usize, top_k: usize) -> Self {
        Self {
            dim,
            expert_dim,
            num_experts,
            top_k,
            routing: Routing::SoftmaxThenTopK,
            norm_topk_prob: true,
            routed_scaling_factor: 1.0,
            router_dtype: RouterDtype::Input,
            groups: None,
            shared_expert_dim: None,
            activation: Activation::Silu,
        }
    }
}

impl MoeConfig {
    /// HF DeepSeek-V2's routing: logits in float32, softmax, top-k (group-limited
    /// when `groups`), never renormalised (HF 5 ignores `norm_topk_prob` here),
    /// times `routed_scaling_factor`; `shared_expert_dim` shared experts.
    pub fn deepseek_v2(
        dim: usize,
        expert_dim: usize,
        num_experts: usize,
        top_k: usize,
        groups: Option<GroupLimit>,
        routed_scaling_factor: f64,
        shared_expert_dim: Option<usize>,
    ) -> Self {
        Self {
            routing: Routing::SoftmaxThenTopK,
            norm_topk_prob: false,
            routed_scaling_factor,
            router_dtype: RouterDtype::Float32,
            groups,
            shared_expert_dim,
            ..Self::mixtral(dim, expert_dim, num_experts, top_k)
        }
    }
}

impl ConfigCheck for MoeConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        positive("dim", self.dim)?;
        positive("expert_dim", self.expert_dim)?;
        positive("num_experts", self.num_experts)?;
        positive("top_k", self.top_k)?;
        if self.expert_dim > usize::MAX / 2 {
            return Err(format!("`expert_dim` {} is too large", self.expert_dim));
        }
        if self.top_k > self.num_experts {
            return Err(format!(
                "`top_k` {} exceeds `num_experts` {}: a token cannot pick more experts than there are",
                self.top_k, self.num_experts
            ));
        }
        finite_positive("routed_scaling_factor", self.routed_scaling_factor)?;
        if let Some(shared) = self.shared_expert_dim {
            positive("shared_expert_dim", shared)?;
            if shared > usize::MAX / 2 {
                return Err(format!("`shared_expert_dim` {shared} is too large"));
            }
        }
        if let Some(GroupLimit { n_group, topk_group }) = self.groups {
            positive("n_group", n_group)?;
            positive("topk_group", topk_group)?;
            replica_check::config_check::divisible("num_experts", self.num_experts, "n_group", n_group)?;
            if topk_group > n_group {
                return Err(format!("`topk_group` {topk_group} exceeds `n_group` {n_group}"));
            }
            let eligible = topk_group * (self.num_experts / n_group);
            if self.top_k > eligible {
                return Err(format!(
                    "`top_k` {} exceeds the {eligible} experts of `topk_group` {topk_group} groups",
                    self.top_k
                ));
            }
        }
        Ok(())
    }

    /// The router, every expert's three matrices and the shared experts; per row
    /// the logits, and for each of the `top_k` experts its gate, up, product and output.
    fn footprint(&self, work: &Workload) -> Footprint {
        let dim = Size::field("dim", self.dim);
        let hidden = Size::field("expert_dim", self.expert_dim);
        let experts = Size::field("num_experts", self.num_experts);
        let top_k = Size::field("top_k", self.top_k);
        let shared = match self.shared_expert_dim {
            Some(width) => dim.clone() * Size::field("shared_expert_dim", width) * 3,
            None => Size::ZERO,
        };
        let params = experts.clone() * dim.clone() * (hidden.clone() * 3 + Size::count(1)) + shared;
        let per_row = experts + top_k * (hidden * 4 + dim.clone()) + dim * 2;
        Footprint {
            params: work.bytes(params),
            activations: work.bytes(work.rows() * per_row),
        }
    }
}

/// What the router chose for each token.
#[derive(Clone, Debug)]
pub struct Routed {
    /// The router's logits `[tokens, num_experts]` in the dtype HF computes them in.
    pub logits: Tensor,
    /// The top-k weights `[tokens, top_k]`, float32, differentiable.
    pub weights: Tensor,
    /// The chosen experts, `indices[token][slot]`, in the router's order.
    pub indices: Vec<Vec<usize>>,
}

/// A sparse mixture of gated-MLP experts, with optional shared experts.
#[derive(Clone, Debug)]
pub struct Moe {
    config: MoeConfig,
    router: Tensor,
    gate_up: Tensor,
    down: Tensor,
    shared: Option<GluMlp>,
    path: String,
}

impl Moe {
    /// Reads `gate.weight`, `experts.gate_up_proj`, `experts.down_proj` (and
    /// `shared_experts.*`) at `vb`'s path.
    pub fn new(config: &MoeConfig, vb: VarBuilder) -> Result<Self> {
        let path = vb.prefix();
        crate::admit(&format!("moe `{path}`"), config)?;
        let (e, d, h) = (config.num_experts, config.dim, config.expert_dim);
        let init = candle_nn::Init::Randn { mean: 0.0, stdev: 0.02 };
        // DeepSeek keeps its router in float32 whatever the model's dtype (HF's
        // `_keep_in_fp32_modules_strict`); Mixtral's follows the model.
        let router = match config.router_dtype {
            RouterDtype::Input => vb.pp("gate").get_with_hints((e, d), "weight", init)?,
            RouterDtype::Float32 => vb.pp("gate").get_with_hints_dtype((e, d), "weight", init, DType::F32)?,
        };
        let experts = vb.pp("experts");
        let gate_up = experts.get_with_hints((e, 2 * h, d), "gate_up_proj", init)?;
        let down = experts.get_with_hints((e, d, h), "down_proj", init)?;
        let shared = config
            .shared_expert_dim
            .map(|width| GluMlp::new(&GluMlpConfig::new(d, width, config.activation), vb.pp("shared_experts")))
            .transpose()?;
        Ok(Self {
            config: config.clone(),
            router,
            gate_up,
            down,
            shared,
            path,
        })
    }

    /// The config this layer was built from.
    pub fn config(&self) -> &MoeConfig {
        &self.config
    }

    fn child(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    /// Routes `x` `[tokens, dim]`: logits, top-k weights and indices (recorded as `gate:0..2`).
    pub fn route(&self, x: &Tensor) -> Result<Routed> {
        let cfg = &self.config;
        let logits = match cfg.router_dtype {
            RouterDtype::Input => Linear::from_weights(self.router.clone(), None, "").forward(x)?,
            RouterDtype::Float32 => {
                let w = self.router.to_dtype(DType::F32)?;
                Linear::from_weights(w, None, "").forward(&x.to_dtype(DType::F32)?)?
            }
        };
        let wide = logits.to_dtype(DType::F32)?;
        // The scores the selection ranks: probabilities, or the logits themselves.
        let scores = match cfg.routing {
            Routing::SoftmaxThenTopK => softmax(&wide)?,
            Routing::TopKThenSoftmax => wide,
        };
        let rows = scores.detach().to_vec2::<f32>()?;
        let indices: Vec<Vec<usize>> = rows.iter().map(|row| self.select(row)).collect();
        let flat: Vec<u32> = indices.iter().flatten().map(|&i| i as u32).collect();
        let index = Tensor::from_vec(flat, (rows.len(), cfg.top_k), x.device())?;
        let picked = scores.gather(&index, 1)?;
        let weights = match cfg.routing {
            Routing::SoftmaxThenTopK if cfg.norm_topk_prob => picked.broadcast_div(&picked.sum_keepdim(1)?)?,
            Routing::SoftmaxThenTopK => picked,
            Routing::TopKThenSoftmax => softmax(&picked)?,
        };
        let weights = (weights * cfg.routed_scaling_factor)?;
        if replica_check::trace::is_active() {
            let as_i64 = index.to_dtype(DType::I64)?;
            replica_check::tap_tuple(&self.child("gate"), &[&logits, &weights, &as_i64]);
        }
        Ok(Routed {
            logits,
            weights,
            indices,
        })
    }

    /// The chosen experts of one token, best first (ties: the lower index).
    fn select(&self, scores: &[f32]) -> Vec<usize> {
        let cfg = &self.config;
        let masked: Vec<f32> = match cfg.groups {
            Some(GroupLimit { n_group, topk_group }) => {
                let size = cfg.num_experts / n_group;
                let best: Vec<f32> = scores
                    .chunks(size)
                    .map(|group| group.iter().copied().fold(f32::NEG_INFINITY, f32::max))
                    .collect();
                let groups = top_k(&best, topk_group);
                // HF zeroes the probabilities of the groups left out, then takes the top-k.
                scores
                    .iter()
                    .enumerate()
                    .map(|(i, &s)| if groups.contains(&(i / size)) { s } else { 0.0 })
                    .collect()
            }
            None => scores.to_vec(),
        };
        top_k(&masked, cfg.top_k)
    }

    /// `x` `[..., dim]` -> (output `[..., dim]`, router logits `[tokens, num_experts]`).
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let cfg = &self.config;
        let dims = x.dims().to_vec();
        let d = x.dim(D::Minus1)?;
        if d != cfg.dim {
            candle_core::bail!(
                "moe `{}`: input has {d} features, the layer expects {}",
                self.path,
                cfg.dim
            )
        }
        let flat = x.reshape(((), d))?;
        let routed = self.route(&flat)?;
        let experts = self.experts(&flat, &routed)?;
        replica_check::tap(&self.child("experts"), &experts);
        let mut y = experts.reshape(dims)?;
        if let Some(shared) = &self.shared {
            y = (y + shared.forward(x)?)?;
        }
        replica_check::tap(&self.path, &y);
        Ok((y, routed.logits))
    }

    /// Σ over each token's chosen experts of weight · expert(x), in float32, rounded once.
    fn experts(&self, x: &Tensor, routed: &Routed) -> Result<Tensor> {
        let cfg = &self.config;
        let (n, k, h) = (x.dim(0)?, cfg.top_k, cfg.expert_dim);
        let device = x.device();
        let weights = routed.weights.reshape(n * k)?;
        let mut sum = Tensor::zeros((n, cfg.dim), DType::F32, device)?;
        for expert in 0..cfg.num_experts {
            let pairs: Vec<(usize, usize)> = routed
                .indices
                .iter()
                .enumerate()
                .flat_map(|(token, chosen)| {
                    chosen
                        .iter()
                        .enumerate()
                        .filter(move |(_, &e)| e == expert)
                        .map(move |(slot, _)| (token, slot))
                })
                .collect();
            if pairs.is_empty() {
                continue;
            }
            let tokens = index_tensor(pairs.iter().map(|&(t, _)| t), device)?;
            let slots = index_tensor(pairs.iter().map(|&(t, s)| t * k + s), device)?;
            let input = x.index_select(&tokens, 0)?;
            let gate_up = Linear::from_weights(self.gate_up.get(expert)?, None, "").forward(&input)?;
            let act = ops::activation(cfg.activation, &gate_up.narrow(1, 0, h)?)?;
            let hidden = (&act * gate_up.narrow(1, h, h)?)?;
            let out = Linear::from_weights(self.down.get(expert)?, None, "").forward(&hidden)?;
            let weight = weights.index_select(&slots, 0)?.unsqueeze(1)?;
            let weighted = out.to_dtype(DType::F32)?.broadcast_mul(&weight)?;
            sum = sum.index_add(&tokens, &weighted, 0)?;
        }
        sum.to_dtype(x.dtype())
    }
}

fn index_tensor(values: impl Iterator<Item = usize>, device: &Device) -> Result<Tensor> {
    let values: Vec<u32> = values.map(|v| v as u32).collect();
    let len = values.len();
    Tensor::from_vec(values, len, device)
}

/// Softmax over the last dimension (float32 in, float32 out), differentiable.
fn softmax(x: &Tensor) -> Result<Tensor> {
    ops::softmax(x, 1.0, &ScoreBias::default())
}

/// The indices of the `k` largest values, largest first; ties (and NaN) keep the lower index first.
fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| {
        values[b]
            .partial_cmp(&values[a])
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(&b))
    });
    order.truncate(k);
    order
}

/// HF's `load_balancing_loss_func` (Switch Transformer eqs. 4-6) over every layer's
/// router logits `[tokens, num_experts]`, with no attention mask: for each layer
/// the softmax of the logits (in their own dtype) and its top-k; then
/// `num_experts · Σ_e f_e · P_e`, where `f_e` is the share of top-k assignments
/// to expert `e` and `P_e` its mean probability, both over all layers' rows.
/// Differentiable through `P` (the counts are not).
pub fn load_balancing_loss(router_logits: &[Tensor], num_experts: usize, top_k_experts: usize) -> Result<Tensor> {
    let Some(first) = router_logits.first() else {
        candle_core::bail!("load_balancing_loss: no router logits")
    };
    let device = first.device();
    let mut counts = vec![0f32; num_experts];
    let mut prob_sum = Tensor::zeros(num_experts, DType::F32, device)?;
    let mut rows = 0usize;
    for logits in router_logits {
        let (n, e) = logits.dims2()?;
        if e != num_experts {
            candle_core::bail!("load_balancing_loss: logits have {e} experts, expected {num_experts}")
        }
        let probs = softmax(&logits.to_dtype(DType::F32)?)?.to_dtype(logits.dtype())?;
        for row in probs.detach().to_dtype(DType::F32)?.to_vec2::<f32>()? {
            for expert in top_k(&row, top_k_experts) {
                counts[expert] += 1.0;
            }
        }
        prob_sum = (prob_sum + probs.to_dtype(DType::F32)?.sum(0)?)?;
        rows += n;
    }
    // A true division, as torch's (candle's `tensor / f64` multiplies by the reciprocal).
    let rows = Tensor::new(rows as f32, device)?;
    let tokens_per_expert = Tensor::from_vec(counts, num_experts, device)?.broadcast_div(&rows)?;
    let prob_per_expert = prob_sum.broadcast_div(&rows)?;
    (tokens_per_expert * prob_per_expert)?.sum_all()? * num_experts as f64
}
