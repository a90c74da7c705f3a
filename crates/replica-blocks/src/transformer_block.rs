//! A transformer layer assembled from the other blocks, with the residual
//! layout, norm, attention and feed-forward chosen by configuration rather
//! than by copying code (timm's injection, in Rust enums):
//!
//! - post-norm, `x = norm(x + f(x))`: Vaswani et al., arXiv 1706.03762 (BERT,
//!   `torch.nn.TransformerEncoderLayer`);
//! - pre-norm, `x = x + f(norm(x))`: Xiong et al., arXiv 2002.04745 (GPT-2, ViT, LLaMA);
//! - parallel, `x = x + attn(norm(x)) + mlp(norm(x))`: GPT-J, PaLM (arXiv 2204.02311).
//!
//! Optional LayerScale (CaiT, arXiv 2103.17239) and DropPath (stochastic depth,
//! arXiv 1603.09382) sit on each residual branch, as in timm's `Block`. A pre-norm
//! layer may also normalise each branch's output before its residual addition
//! (Gemma 2's "sandwich" norms, arXiv 2408.00118).
//!
//! # Traces
//!
//! The layer records its output under its own path, and each part records its own
//! under the name [`BlockNames`] gives it, as the reference's forward hooks do. What
//! the reference names otherwise (HF's attention returns a tuple, so its output is
//! `attn:0`) is a [`replica_check::TraceMap`] the caller applies. An MLP whose layers
//! sit directly on the layer (torch's `linear1`/`linear2`, BERT's `intermediate.dense`/
//! `output.dense`) is named `""`: it loads from the layer's own path and records no
//! output of its own, which the reference has no module for (and which would collide
//! with the layer's).

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use replica_check::config_check::{drop_rate, finite, non_negative, positive};
use replica_check::{ConfigCheck, Footprint, Size, Workload};
use serde::{Deserialize, Serialize};

use crate::activation::Activation;
use crate::attention::{Attention, AttentionConfig};
use crate::drop_path::{DropPath, DropPathConfig};
use crate::dropout::Dropout;
use crate::glu::{GluMlp, GluMlpConfig};
use crate::identity::Identity;
use crate::kv_cache::KvCache;
use crate::layer_scale::{LayerScale, LayerScaleConfig};
use crate::mlp::{Mlp, MlpConfig, MlpNames};
use crate::moe::{Moe, MoeConfig};
use crate::norm::{Norm, NormKind};

/// Where the norms sit relative to the residual connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResidualLayout {
    /// `x = x + f(norm(x))` for each branch (the default).
    #[default]
    PreNorm,
    /// `x = norm(x + f(x))` for each branch.
    PostNorm,
    /// Attention and MLP read the same normalised input and are summed; with
    /// `names.norm2` set, the MLP gets its own norm (GPT-NeoX), else it shares `norm1` (GPT-J).
    Parallel,
}

/// The feed-forward half of the layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeedForwardConfig {
    /// A plain MLP ([`Mlp`]).
    Mlp(MlpConfig),
    /// A gated MLP ([`GluMlp`]).
    Glu(GluMlpConfig),
    /// A sparse mixture of gated-MLP experts ([`Moe`]); its router logits come out
    /// of [`TransformerBlock::forward_routed_t`].
    Moe(MoeConfig),
}

impl FeedForwardConfig {
    fn dims(&self) -> (usize, usize) {
        match self {
            FeedForwardConfig::Mlp(mlp) => (mlp.dim, mlp.out_dim()),
            FeedForwardConfig::Glu(glu) => (glu.dim, glu.out_dim()),
            FeedForwardConfig::Moe(moe) => (moe.dim, moe.dim),
        }
    }

    /// The dropout probability of the feed-forward's dropouts.
    fn dropout(&self) -> f64 {
        match self {
            FeedForwardConfig::Mlp(mlp) => mlp.dropout,
            FeedForwardConfig::Glu(glu) => glu.dropout,
            // HF's experts have no dropout.
            FeedForwardConfig::Moe(_) => 0.0,
        }
    }
}

impl ConfigCheck for FeedForwardConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        match self {
            FeedForwardConfig::Mlp(mlp) => mlp.validate(),
            FeedForwardConfig::Glu(glu) => glu.validate(),
            FeedForwardConfig::Moe(moe) => moe.validate(),
        }
    }

    fn footprint(&self, work: &Workload) -> Footprint {
        match self {
            FeedForwardConfig::Mlp(mlp) => mlp.footprint(work),
            FeedForwardConfig::Glu(glu) => glu.footprint(work),
            FeedForwardConfig::Moe(moe) => moe.footprint(work),
        }
    }
}

/// The names of the layer's parts in the reference (checkpoint prefixes and module
/// paths). `None`: the reference has no module there. A LayerScale slot that is
/// named while LayerScale is off holds an [`Identity`], as timm's does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockNames {
    /// The first norm: before the attention (pre-norm, parallel) or after its
    /// residual addition (post-norm).
    pub norm1: String,
    /// The attention.
    pub attn: String,
    /// The second norm: before the feed-forward (pre-norm), after its residual addition
    /// (post-norm), or the MLP's own in the parallel layout; `None` only in the parallel layout.
    pub norm2: Option<String>,
    /// `""`: the MLP's layers sit directly on the layer (torch's `linear1`, `linear2`;
    /// BERT's `intermediate.dense`, `output.dense`).
    pub mlp: String,
    /// The LayerScale on the attention branch.
    pub ls1: Option<String>,
    /// The LayerScale on the feed-forward branch.
    pub ls2: Option<String>,
    /// The DropPath on the attention branch.
    pub drop_path1: Option<String>,
    /// The DropPath on the feed-forward branch.
    pub drop_path2: Option<String>,
    /// Where the attention's output dropout (`AttentionConfig::proj_dropout`) sits when the
    /// reference keeps it on the layer rather than inside the attention (torch's `dropout1`):
    /// it is then applied, and recorded, here instead of in the attention.
    #[serde(default)]
    pub dropout1: Option<String>,
    /// A dropout the reference keeps on the layer after the feed-forward (Phi-3's
    /// `resid_mlp_dropout`), with the feed-forward's `dropout` probability; recorded here.
    #[serde(default)]
    pub dropout2: Option<String>,
    /// A norm on the attention branch's output, before its residual addition
    /// (pre-norm layout only; Gemma 2's `post_attention_layernorm`).
    #[serde(default)]
    pub post_norm1: Option<String>,
    /// A norm on the feed-forward branch's output, before its residual addition
    /// (pre-norm layout only; Gemma 2's `post_feedforward_layernorm`).
    #[serde(default)]
    pub post_norm2: Option<String>,
}

impl BlockNames {
    /// timm `Block`: `norm1`, `attn`, `ls1`, `drop_path1`, `norm2`, `mlp`, `ls2`, `drop_path2`
    /// (the LayerScale and DropPath slots are `nn.Identity` when off, and still traced).
    pub fn timm() -> Self {
        Self {
            norm1: "norm1".into(),
            attn: "attn".into(),
            norm2: Some("norm2".into()),
            mlp: "mlp".into(),
            ls1: Some("ls1".into()),
            ls2: Some("ls2".into()),
            drop_path1: Some("drop_path1".into()),
            drop_path2: Some("drop_path2".into()),
            dropout1: None,
            dropout2: None,
            post_norm1: None,
            post_norm2: None,
        }
    }

    /// HF GPT-2 `GPT2Block`: `ln_1`, `attn`, `ln_2`, `mlp`.
    pub fn gpt2() -> Self {
        Self::plain("ln_1", "attn", "ln_2", "mlp")
    }

    /// HF LLaMA `LlamaDecoderLayer`: `input_layernorm`, `self_attn`, `post_attention_layernorm`, `mlp`.
    pub fn llama() -> Self {
        Self::plain("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")
    }

    /// HF `Gemma2DecoderLayer`: `input_layernorm`, `self_attn`, `post_attention_layernorm`
    /// (on the attention's output), `pre_feedforward_layernorm`, `mlp`,
    /// `post_feedforward_layernorm` (on the MLP's output).
    pub fn gemma2() -> Self {
        Self {
            post_norm1: Some("post_attention_layernorm".into()),
            post_norm2: Some("post_feedforward_layernorm".into()),
            ..Self::plain("input_layernorm", "self_attn", "pre_feedforward_layernorm", "mlp")
        }
    }

    /// HF `Phi3DecoderLayer`: LLaMA's names, with the residual dropouts on the layer
    /// (`resid_attn_dropout`, `resid_mlp_dropout`).
    pub fn phi3() -> Self {
        Self {
            dropout1: Some("resid_attn_dropout".into()),
            dropout2: Some("resid_mlp_dropout".into()),
            ..Self::llama()
        }
    }

    /// HF `GPTJBlock`: one `ln_1` shared by `attn` and `mlp` (the parallel layout).
    pub fn gptj() -> Self {
        Self {
            norm2: None,
            ..Self::plain("ln_1", "attn", "", "mlp")
        }
    }

    /// `torch.nn.TransformerEncoderLayer`: `self_attn`, `dropout1`, `norm1`, `norm2`, and
    /// the MLP's `linear1`/`dropout`/`linear2`/`dropout2` on the layer itself (MLP name
    /// `""`; see [`TransformerBlockConfig::torch_encoder`]).
    pub fn torch_encoder() -> Self {
        Self {
            dropout1: Some("dropout1".into()),
            ..Self::plain("norm1", "self_attn", "norm2", "")
        }
    }

    /// `norm1`, `attn`, `norm2`, `mlp` with no LayerScale, DropPath or dropout slots.
    pub fn plain(norm1: &str, attn: &str, norm2: &str, mlp: &str) -> Self {
        Self {
            norm1: norm1.into(),
            attn: attn.into(),
            norm2: Some(norm2.into()),
            mlp: mlp.into(),
            ls1: None,
            ls2: None,
            drop_path1: None,
            drop_path2: None,
            dropout1: None,
            dropout2: None,
            post_norm1: None,
            post_norm2: None,
        }
    }
}

impl Default for BlockNames {
    fn default() -> Self {
        Self::timm()
    }
}

fn default_norm_eps() -> f64 {
    1e-5
}

/// A transformer layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransformerBlockConfig {
    /// Model width: the residual stream's features, which the attention and the
    /// feed-forward read and return.
    pub dim: usize,
    /// Where the norms sit; default pre-norm.
    #[serde(default)]
    pub layout: ResidualLayout,
    /// The kind of `norm1` and `norm2`; default LayerNorm.
    #[serde(default)]
    pub norm: NormKind,
    /// The epsilon of `norm1` and `norm2`; default 1e-5.
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    /// The attention half; its `dim` (and `out_dim`) must be `dim`.
    pub attention: AttentionConfig,
    /// The feed-forward half; it must map `dim` features to `dim`.
    pub feed_forward: FeedForwardConfig,
    /// LayerScale's initial value on both branches (timm `init_values`); `None` is off.
    #[serde(default)]
    pub layer_scale: Option<f64>,
    /// Stochastic-depth probability of both branches.
    #[serde(default)]
    pub drop_path: f64,
    /// The parts' names; default [`BlockNames::timm`].
    #[serde(default)]
    pub names: BlockNames,
}

impl TransformerBlockConfig {
    /// timm `Block(dim, num_heads, mlp_ratio, qkv_bias, qk_norm, init_values)` with its
    /// defaults: pre-norm, timm's LayerNorm (eps 1e-6, also for QK-norm), GELU `Mlp` of
    /// `int(dim * mlp_ratio)` hidden features.
    pub fn timm(
        dim: usize,
        heads: usize,
        mlp_ratio: f64,
        qkv_bias: bool,
        qk_norm: bool,
        init_values: Option<f64>,
    ) -> Self {
        let eps = 1e-6;
        Self {
            dim,
            layout: ResidualLayout::PreNorm,
            norm: NormKind::LayerNorm,
            norm_eps: eps,
            attention: AttentionConfig {
                norm_eps: eps,
                ..AttentionConfig::timm(dim, heads, qkv_bias, qk_norm)
            },
            feed_forward: FeedForwardConfig::Mlp(MlpConfig::new(dim, (dim as f64 * mlp_ratio) as usize)),
            layer_scale: init_values,
            drop_path: 0.0,
            names: BlockNames::timm(),
        }
    }

    /// `torch.nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout,
    /// activation, layer_norm_eps, norm_first)`: post-norm (or pre-norm with
    /// `norm_first`), `MultiheadAttention` with biases (its fused `in_proj_weight` split
    /// into `q_proj`/`k_proj`/`v_proj` by a [`replica_check::WeightMap`]), an MLP on the
    /// layer itself, and torch's one `dropout` probability on the attention
    /// probabilities, after the attention (`dropout1`), inside the MLP (`dropout`) and
    /// after it (`dropout2`).
    pub fn torch_encoder(
        d_model: usize,
        nhead: usize,
        dim_feedforward: usize,
        dropout: f64,
        activation: Activation,
        layer_norm_eps: f64,
        norm_first: bool,
    ) -> Self {
        let mut attention = AttentionConfig::new(d_model, nhead);
        attention.qkv_bias = true;
        attention.proj_bias = Some(true);
        attention.attention_dropout = dropout as f32;
        attention.proj_dropout = dropout as f32;
        attention.names = Some(crate::attention::AttentionNames {
            out: "out_proj".into(),
            ..crate::attention::AttentionNames::hf()
        });
        let mlp = MlpConfig {
            activation,
            dropout,
            names: MlpNames {
                fc1: "linear1".into(),
                act: None,
                drop1: Some("dropout".into()),
                norm: None,
                fc2: "linear2".into(),
                drop2: Some("dropout2".into()),
            },
            ..MlpConfig::new(d_model, dim_feedforward)
        };
        Self {
            dim: d_model,
            layout: if norm_first {
                ResidualLayout::PreNorm
            } else {
                ResidualLayout::PostNorm
            },
            norm: NormKind::LayerNorm,
            norm_eps: layer_norm_eps,
            attention,
            feed_forward: FeedForwardConfig::Mlp(mlp),
            layer_scale: None,
            drop_path: 0.0,
            names: BlockNames::torch_encoder(),
        }
    }
}

impl ConfigCheck for TransformerBlockConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        positive("dim", self.dim)?;
        if self.attention.dim != self.dim {
            return Err(format!(
                "attention dim {} differs from the block's dim {} (the attention reads the residual stream)",
                self.attention.dim, self.dim
            ));
        }
        if let Some(out_dim) = self.attention.out_dim.filter(|&d| d != self.dim) {
            return Err(format!(
                "attention out_dim {out_dim} differs from the block's dim {} (its output is added to the residual)",
                self.dim
            ));
        }
        let (ff_in, ff_out) = self.feed_forward.dims();
        if ff_in != self.dim || ff_out != self.dim {
            return Err(format!(
                "the feed-forward maps {ff_in} to {ff_out} features; the block's dim is {}",
                self.dim
            ));
        }
        non_negative("norm_eps", self.norm_eps)?;
        let post_norms = self.names.post_norm1.is_some() || self.names.post_norm2.is_some();
        if post_norms && self.layout != ResidualLayout::PreNorm {
            return Err(format!(
                "names.post_norm1/post_norm2 normalise a branch before its residual addition, which only the \
                 pre-norm layout has (layout is {:?})",
                self.layout
            ));
        }
        if let Some(init_values) = self.layer_scale {
            finite("layer_scale", init_values)?;
        }
        drop_rate("drop_path", self.drop_path)?;
        self.attention.validate().map_err(|m| format!("attention: {m}"))?;
        self.feed_forward.validate().map_err(|m| format!("feed_forward: {m}"))
    }

    /// The attention and feed-forward, two norms and LayerScales; per row the
    /// residual stream a few times over.
    fn footprint(&self, work: &Workload) -> Footprint {
        let dim = Size::field("dim", self.dim);
        let own = Footprint {
            params: work.bytes(dim.clone() * 6),
            activations: work.bytes(work.rows() * dim * 8),
        };
        own + self.attention.footprint(work) + self.feed_forward.footprint(work)
    }
}

#[derive(Clone, Debug)]
enum FeedForward {
    Mlp(Mlp),
    Glu(GluMlp),
    Moe(Moe),
}

impl FeedForward {
    /// The output, and a mixture of experts' router logits `[tokens, num_experts]`.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<(Tensor, Option<Tensor>)> {
        match self {
            FeedForward::Mlp(mlp) => Ok((mlp.forward_t(x, train)?, None)),
            FeedForward::Glu(glu) => Ok((glu.forward_t(x, train)?, None)),
            FeedForward::Moe(moe) => moe.forward(x).map(|(y, logits)| (y, Some(logits))),
        }
    }

    fn inline(self) -> Self {
        match self {
            FeedForward::Mlp(mlp) => FeedForward::Mlp(mlp.inline()),
            FeedForward::Glu(glu) => FeedForward::Glu(glu.inline()),
            // Its router and experts are named below it; nothing to fold.
            FeedForward::Moe(moe) => FeedForward::Moe(moe),
        }
    }
}

/// A residual branch's scale: LayerScale, or the identity timm keeps in its slot when it is off.
#[derive(Clone, Debug)]
enum Scale {
    LayerScale(LayerScale),
    Identity(Identity),
}

/// One residual branch's tail: an optional norm (sandwich), LayerScale, a dropout the
/// reference keeps on the layer, then DropPath, each a module of its own where the
/// reference has one.
#[derive(Clone, Debug)]
struct BranchTail {
    norm: Option<Norm>,
    scale: Option<Scale>,
    dropout: Option<Dropout>,
    drop_path: DropPath,
}

impl BranchTail {
    fn new(
        config: &TransformerBlockConfig,
        norm: Option<Norm>,
        ls: &Option<String>,
        dropout: Option<(&str, f64)>,
        dp: &Option<String>,
        vb: &VarBuilder,
    ) -> Result<Self> {
        let scale = match (config.layer_scale, ls) {
            (Some(init_values), Some(name)) => {
                let ls_config = LayerScaleConfig {
                    dim: config.dim,
                    init_values,
                };
                Some(Scale::LayerScale(LayerScale::new(&ls_config, vb.pp(name))?))
            }
            (Some(_), None) => candle_core::bail!(
                "transformer block `{}`: layer_scale is set but names.ls1/ls2 are not",
                vb.prefix()
            ),
            (None, Some(name)) => Some(Scale::Identity(Identity::new(vb.pp(name)))),
            (None, None) => None,
        };
        let dropout = dropout
            .map(|(name, p)| Dropout::from_probability(p, vb.pp(name).prefix()))
            .transpose()?;
        let dp_path = dp.as_ref().map_or(String::new(), |name| vb.pp(name).prefix());
        Ok(Self {
            norm,
            scale,
            dropout,
            drop_path: DropPath::from_config(&DropPathConfig::new(config.drop_path), dp_path)?,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let normed = self.norm.as_ref().map(|norm| norm.forward(x)).transpose()?;
        let x = normed.as_ref().unwrap_or(x);
        let x = match &self.scale {
            Some(Scale::LayerScale(ls)) => ls.forward(x)?,
            Some(Scale::Identity(identity)) => identity.forward(x)?,
            None => x.clone(),
        };
        let x = match &self.dropout {
            Some(dropout) => dropout.forward_t(&x, train)?,
            None => x,
        };
        self.drop_path.forward_t(&x, train)
    }
}

/// `vb` at `name` below it; `""` is `vb` itself.
fn at<'a>(vb: &VarBuilder<'a>, name: &str) -> VarBuilder<'a> {
    if name.is_empty() {
        vb.clone()
    } else {
        vb.pp(name)
    }
}

/// A transformer layer: attention and feed-forward with residual connections.
#[derive(Clone, Debug)]
pub struct TransformerBlock {
    layout: ResidualLayout,
    norm1: Norm,
    norm2: Option<Norm>,
    attention: Attention,
    feed_forward: FeedForward,
    tail1: BranchTail,
    tail2: BranchTail,
    path: String,
}

impl TransformerBlock {
    /// Loads the norms, the attention, the feed-forward and the branch tails at `vb`'s path
    /// under `config.names`. Fails when a half does not read and return `dim` features,
    /// `norm1` or `attn` is unnamed, a pre- or post-norm layer lacks `norm2`, or LayerScale
    /// is on without `ls1`/`ls2`.
    pub fn new(config: &TransformerBlockConfig, vb: VarBuilder) -> Result<Self> {
        Self::with_norms(config, vb, |vb| Norm::new(config.norm, config.dim, config.norm_eps, vb))
    }

    /// [`new`](Self::new) with norms of the caller's making: `norm` builds each of
    /// the block's norms (`norm1`, `norm2`) from the `VarBuilder` at its path, e.g.
    /// `|vb| Ok(Norm::custom(MyNorm::new(dim, vb.clone())?, &vb))` for a norm the
    /// library does not have. `config.norm` and `config.norm_eps` are not used.
    pub fn with_norms(
        config: &TransformerBlockConfig,
        vb: VarBuilder,
        norm: impl Fn(VarBuilder) -> Result<Norm>,
    ) -> Result<Self> {
        let names = &config.names;
        let path = vb.prefix();
        let fail = |message: String| candle_core::Error::Msg(format!("transformer block `{path}`: {message}"));
        crate::admit(&format!("transformer block `{path}`"), config)?;
        for (what, name) in [("norm1", &names.norm1), ("attn", &names.attn)] {
            if name.is_empty() {
                return Err(fail(format!(
                    "names.{what} is empty (only the MLP may sit on the layer's own path)"
                )));
            }
        }
        let norm = |name: &str| norm(vb.pp(name));
        let norm2 = match (&names.norm2, config.layout) {
            (Some(name), _) => Some(norm(name)?),
            (None, ResidualLayout::Parallel) => None,
            (None, ResidualLayout::PostNorm) => {
                return Err(fail(
                    "the post-norm layout normalises after each of the two residual additions and needs a second \
                     norm, but names.norm2 is None"
                        .into(),
                ))
            }
            (None, ResidualLayout::PreNorm) => {
                return Err(fail(
                    "the pre-norm layout normalises the input of the feed-forward with a second norm, but \
                     names.norm2 is None (a shared norm is the parallel layout)"
                        .into(),
                ))
            }
        };
        let post_norm1 = names.post_norm1.as_deref().map(&norm).transpose()?;
        let post_norm2 = names.post_norm2.as_deref().map(&norm).transpose()?;
        let ff_vb = at(&vb, &names.mlp);
        let mut feed_forward = match &config.feed_forward {
            FeedForwardConfig::Mlp(mlp) => FeedForward::Mlp(Mlp::new(mlp, ff_vb)?),
            FeedForwardConfig::Glu(glu) => FeedForward::Glu(GluMlp::new(glu, ff_vb)?),
            FeedForwardConfig::Moe(moe) => FeedForward::Moe(Moe::new(moe, ff_vb)?),
        };
        if names.mlp.is_empty() {
            feed_forward = feed_forward.inline();
        }
        // A dropout the reference keeps on the layer leaves the attention and runs in tail1.
        let mut attention = config.attention.clone();
        let dropout2 = names
            .dropout2
            .as_deref()
            .map(|name| (name, config.feed_forward.dropout()));
        let dropout1 = names.dropout1.as_deref().map(|name| {
            let p = std::mem::take(&mut attention.proj_dropout);
            (name, f64::from(p))
        });
        Ok(Self {
            layout: config.layout,
            norm1: norm(&names.norm1)?,
            norm2,
            attention: Attention::new(&attention, vb.pp(&names.attn))?,
            feed_forward,
            tail1: BranchTail::new(config, post_norm1, &names.ls1, dropout1, &names.drop_path1, &vb)?,
            tail2: BranchTail::new(config, post_norm2, &names.ls2, dropout2, &names.drop_path2, &vb)?,
            path,
        })
    }

    /// Where the norms sit.
    pub fn layout(&self) -> ResidualLayout {
        self.layout
    }

    /// The attention half.
    pub fn attention(&self) -> &Attention {
        &self.attention
    }

    /// `x` `[batch, seq, dim]` → `[batch, seq, dim]`, in training (`train`: dropout
    /// and stochastic depth on) or inference. `mask` and `cache` go to the attention
    /// (see [`Attention::forward_t`]).
    pub fn forward_t(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        train: bool,
    ) -> Result<Tensor> {
        Ok(self.run(x, mask, cache, false, train)?.0)
    }

    /// [`forward_eager_t`](Self::forward_eager_t), also returning the router logits
    /// `[tokens, num_experts]` of a mixture-of-experts feed-forward (`None` for an MLP),
    /// which the auxiliary load-balancing loss reads.
    pub fn forward_routed_t(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        train: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (y, _, logits) = self.run(x, mask, cache, replica_check::trace::is_active(), train)?;
        Ok((y, logits))
    }

    /// [`forward_t`](Self::forward_t) in inference.
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>, cache: Option<&mut KvCache>) -> Result<Tensor> {
        self.forward_t(x, mask, cache, false)
    }

    /// [`forward_t`](Self::forward_t), also returning the attention probabilities
    /// `[batch, heads, seq, k_len]` (the attention records them as its output's
    /// element 1, see [`Attention::forward_with_weights_t`]).
    pub fn forward_with_weights_t(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        train: bool,
    ) -> Result<(Tensor, Tensor)> {
        let (y, weights, _) = self.run(x, mask, cache, true, train)?;
        Ok((y, weights.expect("asked for")))
    }

    /// [`forward_t`](Self::forward_t) as a HF layer with eager attention runs, for
    /// its trace: that attention returns `(output, probabilities)`, which HF's
    /// hooks record as `self_attn:0` and `self_attn:1`. While a trace is recorded
    /// the probabilities are computed and recorded too; otherwise they are not.
    pub fn forward_eager_t(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        train: bool,
    ) -> Result<Tensor> {
        if replica_check::trace::is_active() {
            Ok(self.forward_with_weights_t(x, mask, cache, train)?.0)
        } else {
            self.forward_t(x, mask, cache, train)
        }
    }

    /// [`forward_with_weights_t`](Self::forward_with_weights_t) in inference.
    pub fn forward_with_weights(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<(Tensor, Tensor)> {
        self.forward_with_weights_t(x, mask, cache, false)
    }

    fn attend(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        want_weights: bool,
        train: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        if want_weights {
            let (y, w) = self.attention.forward_with_weights_t(x, None, mask, cache, train)?;
            Ok((y, Some(w)))
        } else {
            Ok((self.attention.forward_t(x, mask, cache, train)?, None))
        }
    }

    fn run(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        want_weights: bool,
        train: bool,
    ) -> Result<(Tensor, Option<Tensor>, Option<Tensor>)> {
        let ff = &self.feed_forward;
        let (y, weights, logits) = match self.layout {
            ResidualLayout::PreNorm => {
                let norm2 = self.norm2.as_ref().expect("checked in new");
                let (attended, weights) = self.attend(&self.norm1.forward(x)?, mask, cache, want_weights, train)?;
                let x = (x + self.tail1.forward_t(&attended, train)?)?;
                let (fed, logits) = ff.forward_t(&norm2.forward(&x)?, train)?;
                ((&x + self.tail2.forward_t(&fed, train)?)?, weights, logits)
            }
            ResidualLayout::PostNorm => {
                let norm2 = self.norm2.as_ref().expect("checked in new");
                let (attended, weights) = self.attend(x, mask, cache, want_weights, train)?;
                let x = self.norm1.forward(&(x + self.tail1.forward_t(&attended, train)?)?)?;
                let (fed, logits) = ff.forward_t(&x, train)?;
                let fed = self.tail2.forward_t(&fed, train)?;
                (norm2.forward(&(&x + fed)?)?, weights, logits)
            }
            ResidualLayout::Parallel => {
                let normed = self.norm1.forward(x)?;
                let mlp_input = match &self.norm2 {
                    Some(norm2) => norm2.forward(x)?,
                    None => normed.clone(),
                };
                let (attended, weights) = self.attend(&normed, mask, cache, want_weights, train)?;
                let attended = self.tail1.forward_t(&attended, train)?;
                let (fed, logits) = ff.forward_t(&mlp_input, train)?;
                let fed = self.tail2.forward_t(&fed, train)?;
                // GPT-J's order, `attn + mlp + residual` (GPT-NeoX's `mlp + attn + residual` is the same sum).
                (((attended + fed)? + x)?, weights, logits)
            }
        };
        replica_check::tap(&self.path, &y);
        Ok((y, weights, logits))
    }
}
