//! Differential attention: Ye et al., "Differential Transformer", arXiv 2410.05258
//! (registry: [`crate::papers::DIFF_TRANSFORMER`]), as the paper's reference module
//! `MultiheadDiffAttn` (github.com/microsoft/unilm, `Diff-Transformer/multihead_diffattn.py`).
//!
//! Each head splits its query and key in two halves, computes two softmax maps
//! and subtracts the second, scaled by a learned λ, from the first, so that
//! attention paid to irrelevant context (common to both maps) cancels:
//!
//! ```text
//! [Q1; Q2] = X W_Q,  [K1; K2] = X W_K,  V = X W_V
//! DiffAttn(X) = (softmax(Q1 K1ᵀ / √d) − λ · softmax(Q2 K2ᵀ / √d)) V        (eq. 1)
//! λ = exp(λ_q1 · λ_k1) − exp(λ_q2 · λ_k2) + λ_init                          (eq. 2)
//! λ_init = 0.8 − 0.6 · exp(−0.3 · (l − 1)),  l = depth + 1                   (§2.1)
//! head_i' = (1 − λ_init) · RMSNorm(head_i)                                   (eq. 3)
//! MultiHead(X) = Concat(head_1', …, head_h') W_O                             (eq. 3)
//! ```
//!
//! Shapes follow the reference: `heads` is the number of *differential* heads
//! (half a standard Transformer's at the same width), each with `d = dim / heads / 2`
//! features per half; queries and keys are viewed as `2 · heads` heads of `d`
//! features (heads `2i` and `2i + 1` are the two halves of head `i`) and values
//! as `heads` heads of `2d`. Grouped-query heads (`kv_heads`) are shared with
//! the reference's `repeat_kv`, exactly as it does (see [`DiffAttention::forward`]).
//! Rotary embeddings, when on, rotate each half-head in the interleaved layout
//! (flash-attn's `apply_rotary_emb(..., interleaved=True)`), as the reference does.
//!
//! Traces record `q_proj`, `k_proj`, `v_proj`, `subln` (per-head RMSNorm, before
//! the `1 − λ_init` scale) and `out_proj`, the submodules the reference has.

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;
use replica_check::config_check::{non_negative, positive};
use replica_check::{ConfigCheck, Footprint, Size, Workload};
use serde::{Deserialize, Serialize};

use crate::linear::{Linear, LinearConfig};
use crate::norm::{RmsNorm, RmsNormConfig};
use crate::ops::{self, repeat_kv, Causal, ScoreBias};
use crate::rope::{Rope, RopeConfig, RopeStyle};

fn yes() -> bool {
    true
}

fn default_rope_theta() -> Option<f64> {
    Some(10_000.0)
}

fn default_max_positions() -> usize {
    4096
}

fn default_subln_eps() -> f64 {
    1e-5
}

/// The reference's λ_init for the layer at 0-based index `depth` (the paper's `l − 1`):
/// `0.8 − 0.6 · exp(−0.3 · depth)`. It grows from 0.2 at the first layer towards 0.8.
pub fn lambda_init(depth: usize) -> f64 {
    0.8 - 0.6 * (-0.3 * depth as f64).exp()
}

/// `MultiheadDiffAttn(embed_dim, depth, num_heads, num_kv_heads)`; the aliases read
/// the reference's argument names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiffAttentionConfig {
    /// Model width: input and output features.
    #[serde(alias = "embed_dim", alias = "hidden_size")]
    pub dim: usize,
    /// Differential heads: half the heads of a standard Transformer of the same width.
    #[serde(alias = "num_heads")]
    pub heads: usize,
    /// Key/value heads (grouped-query attention); `None` is `heads`.
    #[serde(default, alias = "num_kv_heads")]
    pub kv_heads: Option<usize>,
    /// The layer's 0-based index (the reference's `depth`; the paper's `l − 1`), which sets λ_init.
    pub depth: usize,
    /// Hide future tokens (the reference's default mask).
    #[serde(default = "yes", alias = "is_causal")]
    pub causal: bool,
    /// Rotary embeddings (interleaved, on each half-head) with this base; `None` turns them off.
    #[serde(default = "default_rope_theta")]
    pub rope_theta: Option<f64>,
    /// The longest sequence the rotary tables cover.
    #[serde(default = "default_max_positions", alias = "max_position_embeddings")]
    pub max_positions: usize,
    /// The epsilon of the per-head RMSNorm `subln` (the reference's 1e-5).
    #[serde(default = "default_subln_eps")]
    pub subln_eps: f64,
}

impl DiffAttentionConfig {
    /// Causal, rotary (theta 10000), multi-head, for the layer at 0-based index `depth`.
    pub fn new(dim: usize, heads: usize, depth: usize) -> Self {
        Self {
            dim,
            heads,
            kv_heads: None,
            depth,
            causal: true,
            rope_theta: default_rope_theta(),
            max_positions: default_max_positions(),
            subln_eps: default_subln_eps(),
        }
    }

    /// Key/value heads: `kv_heads`, or `heads` when unset.
    pub fn kv_heads(&self) -> usize {
        self.kv_heads.unwrap_or(self.heads)
    }

    /// Features of each half-head, `dim / heads / 2`.
    pub fn head_dim(&self) -> usize {
        self.heads
            .checked_mul(2)
            .and_then(|h| self.dim.checked_div(h))
            .unwrap_or(0)
    }
}

impl DiffAttentionConfig {
    /// The rotary embedding on each half-head, when `rope_theta` turns it on.
    fn rope_config(&self) -> Option<RopeConfig> {
        self.rope_theta.map(|theta| RopeConfig {
            theta,
            style: RopeStyle::Interleaved,
            max_positions: self.max_positions,
            ..RopeConfig::new(self.head_dim())
        })
    }
}

impl ConfigCheck for DiffAttentionConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        let (dim, heads, kv_heads) = (self.dim, self.heads, self.kv_heads());
        positive("dim", dim)?;
        if heads == 0 || heads > usize::MAX / 2 || dim % (2 * heads) != 0 {
            return Err(format!(
                "dim {dim} must split into {heads} differential heads of two equal halves (dim % (2 * heads) == 0)"
            ));
        }
        if kv_heads == 0 || heads % kv_heads != 0 {
            return Err(format!(
                "{heads} heads cannot share {kv_heads} key/value heads (heads must be a multiple of kv_heads)"
            ));
        }
        non_negative("subln_eps", self.subln_eps)?;
        match self.rope_config() {
            Some(rope) => rope.validate().map_err(|message| format!("rope: {message}")),
            None => Ok(()),
        }
    }

    /// The four projections, λ vectors and `subln`, the rotary tables; per row the
    /// projections and output, and per head two scores for every key.
    fn footprint(&self, work: &Workload) -> Footprint {
        let dim = Size::field("dim", self.dim);
        let heads = Size::field("heads", self.heads);
        let head_dim = Size::from_field("dim", self.dim, self.head_dim());
        let kv = self.kv_heads.map_or(heads.clone(), |kv| Size::field("kv_heads", kv)) * head_dim.clone() * 2;
        let own = Footprint {
            params: work.bytes(dim.clone() * dim.clone() * 2 + dim.clone() * kv.clone() * 2 + head_dim * 6),
            activations: work.bytes(work.rows() * (dim * 6 + kv * 4) + work.rows() * heads * work.len() * 6),
        };
        own + self.rope_config().map_or(Footprint::NONE, |rope| rope.footprint(work))
    }
}

/// Multi-head differential attention (self-attention).
#[derive(Clone, Debug)]
pub struct DiffAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    lambda_q1: Tensor,
    lambda_k1: Tensor,
    lambda_q2: Tensor,
    lambda_k2: Tensor,
    subln: RmsNorm,
    rope: Option<Rope>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    lambda_init: f64,
    causal: bool,
    path: String,
}

impl DiffAttention {
    /// Loads `q_proj`, `k_proj`, `v_proj`, `out_proj` (no biases), the four λ vectors `[head_dim]`
    /// and `subln` from `vb`'s path; fresh λ vectors are drawn from N(0, 0.1²), as the reference
    /// initialises them. Fails when `dim` does not split into `2 * heads` equal halves or `heads`
    /// is not a multiple of `kv_heads`.
    pub fn new(config: &DiffAttentionConfig, vb: VarBuilder) -> Result<Self> {
        let path = vb.prefix();
        let fail = |message: String| candle_core::Error::Msg(format!("diff_attention `{path}`: {message}"));
        crate::admit(&format!("diff_attention `{path}`"), config)?;
        let (dim, heads, kv_heads) = (config.dim, config.heads, config.kv_heads());
        let head_dim = config.head_dim();
        let rope = config
            .rope_config()
            .map(|rope| Rope::new(&rope, vb.device()).map_err(|e| fail(e.to_string())))
            .transpose()?;
        let linear = |input: usize, output: usize, name: &str| {
            Linear::new(
                &LinearConfig {
                    bias: false,
                    ..LinearConfig::new(input, output)
                },
                vb.pp(name),
            )
        };
        // The reference's init: N(0, 0.1²) for each λ vector.
        let lambda = |name: &str| {
            let init = candle_nn::Init::Randn { mean: 0.0, stdev: 0.1 };
            vb.get_with_hints(head_dim, name, init)
        };
        let (q_dim, kv_dim) = (2 * heads * head_dim, 2 * kv_heads * head_dim);
        Ok(Self {
            q_proj: linear(dim, q_dim, "q_proj")?,
            k_proj: linear(dim, kv_dim, "k_proj")?,
            v_proj: linear(dim, kv_dim, "v_proj")?,
            out_proj: linear(q_dim, dim, "out_proj")?,
            lambda_q1: lambda("lambda_q1")?,
            lambda_k1: lambda("lambda_k1")?,
            lambda_q2: lambda("lambda_q2")?,
            lambda_k2: lambda("lambda_k2")?,
            subln: RmsNorm::new(
                &RmsNormConfig {
                    eps: config.subln_eps,
                    ..RmsNormConfig::new(2 * head_dim)
                },
                vb.pp("subln"),
            )?,
            rope,
            heads,
            kv_heads,
            head_dim,
            lambda_init: lambda_init(config.depth),
            causal: config.causal,
            path,
        })
    }

    /// Differential heads.
    pub fn heads(&self) -> usize {
        self.heads
    }

    /// Key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.kv_heads
    }

    /// Features of each half-head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// This layer's λ_init (eq. 2, §2.1).
    pub fn lambda_init(&self) -> f64 {
        self.lambda_init
    }

    /// λ = exp(λ_q1 · λ_k1) − exp(λ_q2 · λ_k2) + λ_init (eq. 2), a scalar in f32,
    /// differentiable with respect to the four λ vectors.
    pub fn lambda(&self) -> Result<Tensor> {
        let dot = |a: &Tensor, b: &Tensor| -> Result<Tensor> {
            (a.to_dtype(DType::F32)? * b.to_dtype(DType::F32)?)?.sum_all()?.exp()
        };
        let one = dot(&self.lambda_q1, &self.lambda_k1)?;
        let two = dot(&self.lambda_q2, &self.lambda_k2)?;
        (one - two)? + self.lambda_init
    }

    fn fail(&self, message: String) -> candle_core::Error {
        candle_core::Error::Msg(format!("diff_attention `{}`: {message}", self.path))
    }

    /// `x` `[batch, seq, dim]` → `[batch, seq, dim]`.
    ///
    /// `mask` (additive, or boolean with nonzero = attend) broadcasts against the
    /// scores `[batch, 2 · heads, seq, seq]` and is added to the causal mask when
    /// `causal` is on. (The reference builds its causal mask only when it is given
    /// no mask; set `causal: false` to use a mask of your own alone.)
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        Ok(self.run(x, mask, false)?.0)
    }

    /// [`forward`](Self::forward), also returning the differential attention map
    /// `softmax(Q1 K1ᵀ/√d) − λ softmax(Q2 K2ᵀ/√d)`, `[batch, heads, seq, seq]`. As a
    /// module that returns a tuple, it records the pair as `path:0` and `path:1`.
    pub fn forward_with_weights(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        let (y, weights) = self.run(x, mask, true)?;
        Ok((y, weights.expect("asked for")))
    }

    fn run(&self, x: &Tensor, mask: Option<&Tensor>, want_weights: bool) -> Result<(Tensor, Option<Tensor>)> {
        let (b, t, _) = x
            .dims3()
            .map_err(|_| self.fail(format!("input must be [batch, seq, dim], got shape {:?}", x.dims())))?;
        let (h, kv, d) = (self.heads, self.kv_heads, self.head_dim);
        let dtype = x.dtype();

        // Queries and keys as 2h (resp. 2kv) heads of d features, values as h (kv) heads of 2d.
        let q = self.q_proj.forward(x)?.reshape((b, t, 2 * h, d))?.transpose(1, 2)?;
        let k = self.k_proj.forward(x)?.reshape((b, t, 2 * kv, d))?.transpose(1, 2)?;
        let v = self.v_proj.forward(x)?.reshape((b, t, kv, 2 * d))?.transpose(1, 2)?;
        let (q, k) = match &self.rope {
            Some(rope) => (rope.apply(&q, 0)?, rope.apply(&k, 0)?),
            None => (q, k),
        };
        // The reference's `repeat_kv` on the 2kv key half-heads: query half-head j reads
        // key half-head j / n_rep. With n_rep > 1 both halves of a differential head can
        // read the same key half-head; that is what the reference computes, so it is kept.
        let n_rep = h / kv;
        let k = repeat_kv(&k, n_rep)?.contiguous()?;
        let v = repeat_kv(&v, n_rep)?.contiguous()?;

        // Scores as the reference orders them: q scaled first, the product in the input
        // dtype (computed here in f32 and rounded once), softmax in f32 (eq. 1).
        let scale = (d as f64).powf(-0.5);
        let q = (q * scale)?.contiguous()?;
        let scores = q
            .to_dtype(DType::F32)?
            .matmul(&k.to_dtype(DType::F32)?.t()?.contiguous()?)?
            .to_dtype(dtype)?
            .to_dtype(DType::F32)?;
        if let Some(m) = mask {
            if m.broadcast_as(scores.shape()).is_err() {
                return Err(self.fail(format!(
                    "mask of shape {:?} does not broadcast to the scores {:?}",
                    m.dims(),
                    scores.dims()
                )));
            }
        }
        // The two maps are combined before the value product, so the fused attention
        // op does not fit: the softmax op, with scale 1 (q is scaled above, as the
        // reference orders it).
        let bias = ScoreBias {
            causal: self.causal.then_some(Causal::TopLeft),
            mask,
            ..ScoreBias::default()
        };
        let probs = ops::softmax(&scores, 1.0, &bias)
            .map_err(|e| self.fail(e.to_string()))?
            .to_dtype(dtype)?;

        // softmax(Q1 K1ᵀ) − λ softmax(Q2 K2ᵀ): half-heads 2i and 2i + 1 are the two maps of head i.
        let probs = probs.reshape((b, h, 2, t, t))?;
        let first = probs.narrow(2, 0, 1)?.squeeze(2)?;
        let second = probs.narrow(2, 1, 1)?.squeeze(2)?;
        let lambda = self.lambda()?.to_dtype(dtype)?.reshape((1, 1, 1, 1))?;
        let weights = (first - second.broadcast_mul(&lambda)?)?;

        let heads = weights.contiguous()?.matmul(&v)?;
        // Per-head RMSNorm, then the fixed (1 − λ_init) scale that keeps the gradient
        // flow of the Transformer it replaces (eq. 3).
        let heads = (self.subln.forward(&heads)? * (1.0 - self.lambda_init))?;
        let y = heads.transpose(1, 2)?.reshape((b, t, 2 * h * d))?;
        let y = self.out_proj.forward(&y)?;
        if want_weights {
            replica_check::tap_tuple(&self.path, &[&y, &weights]);
            Ok((y, Some(weights)))
        } else {
            replica_check::tap(&self.path, &y);
            Ok((y, None))
        }
    }
}

impl candle_core::ModuleT for DiffAttention {
    /// [`DiffAttention::forward`] without a mask (causal when configured). The
    /// reference has no dropout, so `train` changes nothing.
    fn forward_t(&self, x: &Tensor, _train: bool) -> Result<Tensor> {
        self.forward(x, None)
    }
}
