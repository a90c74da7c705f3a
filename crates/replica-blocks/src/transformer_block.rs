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
//! arXiv 1603.09382) sit on each residual branch, as in timm's `Block`.
//!
//! # Traces
//!
//! The layer records its output under its own path, and its parts under the names
//! in [`BlockNames`], so a trace lines up with the reference's forward hooks:
//! - an attention module that returns a tuple (HF's `(output, weights)`, torch's
//!   `MultiheadAttention`) is recorded as `attn:0` (and `attn:1`, the probabilities,
//!   with [`AttentionOutput::TupleWithWeights`]) rather than `attn`;
//! - an MLP whose layers sit directly on the layer (torch's `linear1`/`linear2`) is
//!   named `""`: it loads from the layer's own path, and its output, which has no
//!   module of its own in the reference, is not recorded (it would collide with the
//!   layer's).

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use replica_check::trace;
use serde::{Deserialize, Serialize};

use crate::activation::Activation;
use crate::attention::{Attention, AttentionConfig};
use crate::drop_path::{DropPath, DropPathConfig};
use crate::dropout::Dropout;
use crate::glu::{GluMlp, GluMlpConfig};
use crate::kv_cache::KvCache;
use crate::layer_scale::{LayerScale, LayerScaleConfig};
use crate::mlp::{Mlp, MlpConfig, MlpNames};
use crate::norm::{Norm, NormKind};

/// Where the norms sit relative to the residual connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResidualLayout {
    #[default]
    PreNorm,
    PostNorm,
    /// Attention and MLP read the same normalised input and are summed; with
    /// `names.norm2` set, the MLP gets its own norm (GPT-NeoX), else it shares `norm1` (GPT-J).
    Parallel,
}

/// The feed-forward half of the layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeedForwardConfig {
    Mlp(MlpConfig),
    Glu(GluMlpConfig),
}

impl FeedForwardConfig {
    fn dims(&self) -> (usize, usize) {
        match self {
            FeedForwardConfig::Mlp(mlp) => (mlp.dim, mlp.out_dim()),
            FeedForwardConfig::Glu(glu) => (glu.dim, glu.out_dim()),
        }
    }
}

/// What the reference's attention module returns, which decides the names its
/// output is recorded under in traces.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttentionOutput {
    /// One tensor, recorded as `attn` (timm `Attention`).
    #[default]
    Tensor,
    /// A tuple whose second element is `None` (HF attention under sdpa, torch's
    /// `MultiheadAttention(need_weights=False)`): recorded as `attn:0`.
    Tuple,
    /// `(output, probabilities)` (HF eager attention): `attn:0` and `attn:1`. The
    /// probabilities are computed only while a trace is recorded.
    TupleWithWeights,
}

/// The names of the layer's parts in the reference checkpoint. `None` leaves a part
/// out of the traces where the reference has no module for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockNames {
    pub norm1: String,
    pub attn: String,
    pub norm2: Option<String>,
    /// `""`: the MLP's layers sit directly on the layer (torch's `linear1`, `linear2`).
    pub mlp: String,
    pub ls1: Option<String>,
    pub ls2: Option<String>,
    pub drop_path1: Option<String>,
    pub drop_path2: Option<String>,
    /// Where the attention's output dropout (`AttentionConfig::proj_dropout`) sits when the
    /// reference keeps it on the layer rather than inside the attention (torch's `dropout1`):
    /// it is then applied, and recorded, here instead of in the attention.
    #[serde(default)]
    pub dropout1: Option<String>,
    #[serde(default)]
    pub attn_output: AttentionOutput,
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
            attn_output: AttentionOutput::Tensor,
        }
    }

    /// HF GPT-2 `GPT2Block`: `ln_1`, `attn`, `ln_2`, `mlp`; the attention returns a tuple.
    pub fn gpt2() -> Self {
        Self::plain("ln_1", "attn", "ln_2", "mlp").returning(AttentionOutput::Tuple)
    }

    /// HF LLaMA `LlamaDecoderLayer`: `input_layernorm`, `self_attn`, `post_attention_layernorm`,
    /// `mlp`; the attention returns a tuple (with the probabilities under eager attention).
    pub fn llama() -> Self {
        Self::plain("input_layernorm", "self_attn", "post_attention_layernorm", "mlp").returning(AttentionOutput::Tuple)
    }

    /// HF `GPTJBlock`: one `ln_1` shared by `attn` and `mlp` (the parallel layout).
    pub fn gptj() -> Self {
        Self {
            norm2: None,
            ..Self::plain("ln_1", "attn", "", "mlp").returning(AttentionOutput::Tuple)
        }
    }

    /// `torch.nn.TransformerEncoderLayer`: `self_attn` (returning a tuple), `dropout1`,
    /// `norm1`, `norm2`, and the MLP's `linear1`/`dropout`/`linear2`/`dropout2` on the
    /// layer itself (MLP name `""`; see [`TransformerBlockConfig::torch_encoder`]).
    pub fn torch_encoder() -> Self {
        Self {
            dropout1: Some("dropout1".into()),
            ..Self::plain("norm1", "self_attn", "norm2", "").returning(AttentionOutput::Tuple)
        }
    }

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
            attn_output: AttentionOutput::Tensor,
        }
    }

    /// These names with the attention's output recorded as `attn_output` says.
    pub fn returning(mut self, attn_output: AttentionOutput) -> Self {
        self.attn_output = attn_output;
        self
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
    pub dim: usize,
    #[serde(default)]
    pub layout: ResidualLayout,
    #[serde(default)]
    pub norm: NormKind,
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    pub attention: AttentionConfig,
    pub feed_forward: FeedForwardConfig,
    /// LayerScale's initial value on both branches (timm `init_values`); `None` is off.
    #[serde(default)]
    pub layer_scale: Option<f64>,
    /// Stochastic-depth probability of both branches.
    #[serde(default)]
    pub drop_path: f64,
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

#[derive(Clone, Debug)]
enum FeedForward {
    Mlp(Mlp),
    Glu(GluMlp),
}

impl FeedForward {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            FeedForward::Mlp(mlp) => mlp.forward_t(x, train),
            FeedForward::Glu(glu) => glu.forward_t(x, train),
        }
    }
}

/// One residual branch's tail: optional LayerScale, a dropout the reference keeps on
/// the layer, then DropPath, each traced under its name when the reference has a
/// module there.
#[derive(Clone, Debug)]
struct BranchTail {
    layer_scale: Option<LayerScale>,
    ls_path: Option<String>,
    dropout: Option<Dropout>,
    drop_path: DropPath,
}

impl BranchTail {
    fn new(
        config: &TransformerBlockConfig,
        ls: &Option<String>,
        dropout: Option<(&str, f64)>,
        dp: &Option<String>,
        vb: &VarBuilder,
    ) -> Result<Self> {
        let layer_scale = match (config.layer_scale, ls) {
            (Some(init_values), Some(name)) => {
                let ls_config = LayerScaleConfig {
                    dim: config.dim,
                    init_values,
                };
                Some(LayerScale::new(&ls_config, vb.pp(name))?)
            }
            (Some(_), None) => candle_core::bail!(
                "transformer block `{}`: layer_scale is set but names.ls1/ls2 are not",
                vb.prefix()
            ),
            (None, _) => None,
        };
        let dropout = dropout
            .map(|(name, p)| Dropout::from_probability(p, join(&vb.prefix(), name)))
            .transpose()?;
        let dp_path = dp.as_ref().map_or(String::new(), |name| join(&vb.prefix(), name));
        Ok(Self {
            layer_scale,
            ls_path: ls.as_ref().map(|name| join(&vb.prefix(), name)),
            dropout,
            drop_path: DropPath::from_config(&DropPathConfig::new(config.drop_path), dp_path)?,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let x = match (&self.layer_scale, &self.ls_path) {
            (Some(ls), _) => ls.forward(x)?,
            (None, Some(path)) => {
                replica_check::tap(path, x);
                x.clone()
            }
            (None, None) => x.clone(),
        };
        let x = match &self.dropout {
            Some(dropout) => dropout.forward_t(&x, train)?,
            None => x,
        };
        self.drop_path.forward_t(&x, train)
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
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

/// Runs `run` and, when a trace is being recorded, records what it recorded again
/// in the enclosing trace, except the entry named `own`, which `replace` records
/// in its place (or nothing, when `replace` records nothing). The inner recording
/// is kept private (two plain recordings deep), so even an enclosing
/// [`replica_check::record_nested`] sees each entry once.
fn rerecord<T>(own: &str, run: impl FnOnce() -> Result<T>, replace: impl FnOnce(&T, &Tensor)) -> Result<T> {
    if !trace::is_active() {
        return run();
    }
    let ((value, inner), _) = trace::record(|| trace::record(run));
    let value = value?;
    let mut replace = Some(replace);
    for entry in &inner.entries {
        if entry.name == own {
            if let Some(replace) = replace.take() {
                replace(&value, &entry.tensor);
            }
        } else {
            replica_check::tap(&entry.name, &entry.tensor);
        }
    }
    Ok(value)
}

/// A transformer layer: attention and feed-forward with residual connections.
#[derive(Clone, Debug)]
pub struct TransformerBlock {
    layout: ResidualLayout,
    norm1: Norm,
    norm2: Option<Norm>,
    attention: Attention,
    attn_path: String,
    attn_output: AttentionOutput,
    feed_forward: FeedForward,
    /// Set when the MLP sits on the layer's own path: its output is not recorded.
    feed_forward_inline: bool,
    tail1: BranchTail,
    tail2: BranchTail,
    training: bool,
    path: String,
}

impl TransformerBlock {
    pub fn new(config: &TransformerBlockConfig, vb: VarBuilder) -> Result<Self> {
        let names = &config.names;
        let path = vb.prefix();
        let fail = |message: String| candle_core::Error::Msg(format!("transformer block `{path}`: {message}"));
        if config.attention.dim != config.dim {
            return Err(fail(format!(
                "attention dim {} differs from the block's dim {} (the attention reads the residual stream)",
                config.attention.dim, config.dim
            )));
        }
        if let Some(out_dim) = config.attention.out_dim.filter(|&d| d != config.dim) {
            return Err(fail(format!(
                "attention out_dim {out_dim} differs from the block's dim {} (its output is added to the residual)",
                config.dim
            )));
        }
        let (ff_in, ff_out) = config.feed_forward.dims();
        if ff_in != config.dim || ff_out != config.dim {
            return Err(fail(format!(
                "the feed-forward maps {ff_in} to {ff_out} features; the block's dim is {}",
                config.dim
            )));
        }
        for (what, name) in [("norm1", &names.norm1), ("attn", &names.attn)] {
            if name.is_empty() {
                return Err(fail(format!(
                    "names.{what} is empty (only the MLP may sit on the layer's own path)"
                )));
            }
        }
        let norm = |name: &str| Norm::new(config.norm, config.dim, config.norm_eps, vb.pp(name));
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
        let ff_vb = at(&vb, &names.mlp);
        let feed_forward = match &config.feed_forward {
            FeedForwardConfig::Mlp(mlp) => FeedForward::Mlp(Mlp::new(mlp, ff_vb)?),
            FeedForwardConfig::Glu(glu) => FeedForward::Glu(GluMlp::new(glu, ff_vb)?),
        };
        // A dropout the reference keeps on the layer leaves the attention and runs in tail1.
        let mut attention = config.attention.clone();
        let dropout1 = names.dropout1.as_deref().map(|name| {
            let p = std::mem::take(&mut attention.proj_dropout);
            (name, f64::from(p))
        });
        let attn_vb = vb.pp(&names.attn);
        Ok(Self {
            layout: config.layout,
            norm1: norm(&names.norm1)?,
            norm2,
            attn_path: attn_vb.prefix(),
            attention: Attention::new(&attention, attn_vb)?,
            attn_output: names.attn_output,
            feed_forward,
            feed_forward_inline: names.mlp.is_empty(),
            tail1: BranchTail::new(config, &names.ls1, dropout1, &names.drop_path1, &vb)?,
            tail2: BranchTail::new(config, &names.ls2, None, &names.drop_path2, &vb)?,
            training: false,
            path,
        })
    }

    /// Turns dropout and stochastic depth on (training) or off (inference, the default).
    pub fn set_training(&mut self, training: bool) {
        self.training = training;
        self.attention.set_training(training);
    }

    pub fn training(&self) -> bool {
        self.training
    }

    pub fn layout(&self) -> ResidualLayout {
        self.layout
    }

    pub fn attention(&self) -> &Attention {
        &self.attention
    }

    /// `x` `[batch, seq, dim]` → `[batch, seq, dim]`. `mask` and `cache` go to the
    /// attention (see [`Attention::forward`]).
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>, cache: Option<&mut KvCache>) -> Result<Tensor> {
        Ok(self.run(x, mask, cache, false)?.0)
    }

    /// [`forward`](Self::forward), also returning the attention probabilities
    /// `[batch, heads, seq, k_len]`.
    pub fn forward_with_weights(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<(Tensor, Tensor)> {
        let (y, weights) = self.run(x, mask, cache, true)?;
        Ok((y, weights.expect("asked for")))
    }

    /// The attention, recorded under the names the reference's module gives its output.
    fn attend(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        want_weights: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let traced_weights = self.attn_output == AttentionOutput::TupleWithWeights && trace::is_active();
        let run = || -> Result<(Tensor, Option<Tensor>)> {
            if want_weights || traced_weights {
                let (y, w) = self.attention.forward_with_weights(x, None, mask, cache)?;
                Ok((y, Some(w)))
            } else {
                Ok((self.attention.forward(x, mask, cache)?, None))
            }
        };
        match self.attn_output {
            AttentionOutput::Tensor => run(),
            AttentionOutput::Tuple | AttentionOutput::TupleWithWeights => {
                rerecord(&self.attn_path, run, |(y, weights), _| match weights {
                    Some(w) if self.attn_output == AttentionOutput::TupleWithWeights => {
                        replica_check::tap_tuple(&self.attn_path, &[y, w])
                    }
                    _ => replica_check::tap_tuple(&self.attn_path, &[y]),
                })
            }
        }
    }

    fn feed(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let run = || self.feed_forward.forward_t(x, train);
        if self.feed_forward_inline {
            rerecord(&self.path, run, |_, _| {})
        } else {
            run()
        }
    }

    fn run(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        want_weights: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let train = self.training;
        let (y, weights) = match self.layout {
            ResidualLayout::PreNorm => {
                let norm2 = self.norm2.as_ref().expect("checked in new");
                let (attended, weights) = self.attend(&self.norm1.forward(x)?, mask, cache, want_weights)?;
                let x = (x + self.tail1.forward_t(&attended, train)?)?;
                let fed = self.feed(&norm2.forward(&x)?, train)?;
                ((&x + self.tail2.forward_t(&fed, train)?)?, weights)
            }
            ResidualLayout::PostNorm => {
                let norm2 = self.norm2.as_ref().expect("checked in new");
                let (attended, weights) = self.attend(x, mask, cache, want_weights)?;
                let x = self.norm1.forward(&(x + self.tail1.forward_t(&attended, train)?)?)?;
                let fed = self.tail2.forward_t(&self.feed(&x, train)?, train)?;
                (norm2.forward(&(&x + fed)?)?, weights)
            }
            ResidualLayout::Parallel => {
                let normed = self.norm1.forward(x)?;
                let mlp_input = match &self.norm2 {
                    Some(norm2) => norm2.forward(x)?,
                    None => normed.clone(),
                };
                let (attended, weights) = self.attend(&normed, mask, cache, want_weights)?;
                let attended = self.tail1.forward_t(&attended, train)?;
                let fed = self.tail2.forward_t(&self.feed(&mlp_input, train)?, train)?;
                // GPT-J's order, `attn + mlp + residual` (GPT-NeoX's `mlp + attn + residual` is the same sum).
                (((attended + fed)? + x)?, weights)
            }
        };
        replica_check::tap(&self.path, &y);
        Ok((y, weights.filter(|_| want_weights)))
    }
}
