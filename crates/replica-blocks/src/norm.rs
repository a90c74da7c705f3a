//! Normalisation layers.
//!
//! - LayerNorm: Ba, Kiros & Hinton, arXiv 1607.06450, as `torch.nn.LayerNorm`.
//! - RMSNorm: Zhang & Sennrich, arXiv 1910.07467, as HF `LlamaRMSNorm`; with a
//!   weight offset and the rounding after the scale it is HF `GemmaRMSNorm`
//!   (Gemma, arXiv 2403.08295: the scale is `1 + weight`, the weight starts at 0).
//!
//! Both normalise in f32 whatever the input dtype, as PyTorch does for f16/bf16;
//! the computation is the op layer's ([`ops::layer_norm`], [`ops::rms_norm`]:
//! the fused kernels or the composition).

use std::sync::Arc;

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use replica_check::config_check::{non_negative, positive};
use replica_check::{ConfigCheck, Footprint, Size, Workload};
use serde::{Deserialize, Serialize};

use crate::dyt::{DynamicTanh, DynamicTanhConfig};
use crate::identity::Identity;
use crate::ops;
pub use crate::ops::RmsNormRounding;

fn default_layer_norm_eps() -> f64 {
    1e-5
}

fn default_rms_norm_eps() -> f64 {
    1e-6
}

fn yes() -> bool {
    true
}

/// `torch.nn.LayerNorm(dim, eps, elementwise_affine, bias)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerNormConfig {
    /// Features normalised: the last dimension (HF `hidden_size`, GPT-2 `n_embd`,
    /// torch `normalized_shape`).
    #[serde(alias = "hidden_size", alias = "n_embd", alias = "normalized_shape")]
    pub dim: usize,
    #[serde(
        default = "default_layer_norm_eps",
        alias = "layer_norm_eps",
        alias = "layer_norm_epsilon"
    )]
    /// Added to the variance (HF `layer_norm_eps`, GPT-2
    /// `layer_norm_epsilon`); default 1e-5, as torch.
    pub eps: f64,
    /// Learn a per-feature scale (`weight`).
    #[serde(default = "yes", alias = "elementwise_affine")]
    pub affine: bool,
    /// Learn a per-feature shift (`bias`); only with `affine`.
    #[serde(default = "yes")]
    pub bias: bool,
}

impl LayerNormConfig {
    /// `dim` features with torch's defaults: eps 1e-5, a learned scale and shift.
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            eps: default_layer_norm_eps(),
            affine: true,
            bias: true,
        }
    }
}

/// A norm over `dim` features: its weight and bias, and a few copies of its input.
fn norm_footprint(dim: usize, work: &Workload) -> Footprint {
    let dim = Size::field("dim", dim);
    Footprint {
        params: work.bytes(dim.clone() * 2),
        activations: work.bytes(work.rows() * dim * 3),
    }
}

impl ConfigCheck for LayerNormConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        positive("dim", self.dim)?;
        non_negative("eps", self.eps)
    }

    fn footprint(&self, work: &Workload) -> Footprint {
        norm_footprint(self.dim, work)
    }
}

/// Layer normalisation over the last dimension.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    eps: f64,
    path: String,
}

impl LayerNorm {
    /// Reads `weight` and `bias` `[dim]` at `vb`'s path, where the config has
    /// them (fresh: ones and zeros).
    pub fn new(config: &LayerNormConfig, vb: VarBuilder) -> Result<Self> {
        crate::admit(&format!("layer_norm `{}`", vb.prefix()), config)?;
        let weight = config
            .affine
            .then(|| vb.get_with_hints(config.dim, "weight", candle_nn::Init::Const(1.0)))
            .transpose()?;
        let bias = (config.affine && config.bias)
            .then(|| vb.get_with_hints(config.dim, "bias", candle_nn::Init::Const(0.0)))
            .transpose()?;
        Ok(Self {
            weight,
            bias,
            eps: config.eps,
            path: vb.prefix(),
        })
    }

    /// `(x - mean) / sqrt(var + eps) · weight + bias` over the last dimension of `x` `[..., dim]`,
    /// computed in f32 and rounded once to `x`'s dtype ([`ops::layer_norm`]).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = ops::layer_norm(x, self.weight.as_ref(), self.bias.as_ref(), self.eps)?;
        replica_check::tap(&self.path, &y);
        Ok(y)
    }
}

/// HF `LlamaRMSNorm(hidden_size, eps)`, or with `offset: 1` and
/// `rounding: after_scale` HF `GemmaRMSNorm(hidden_size, eps)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RmsNormConfig {
    /// Features normalised: the last dimension (HF `hidden_size`).
    #[serde(alias = "hidden_size")]
    pub dim: usize,
    /// Added to the mean square (HF `rms_norm_eps`); default 1e-6, as `LlamaRMSNorm`.
    #[serde(default = "default_rms_norm_eps", alias = "rms_norm_eps")]
    pub eps: f64,
    /// Added to the weight to make the scale (`offset + weight`): 0 for LLaMA,
    /// 1 for Gemma, whose weight starts at 0. The checkpoint holds the weight.
    #[serde(default)]
    pub offset: f64,
    /// Where an f16/bf16 input is rounded: before the scale (LLaMA) or after (Gemma).
    #[serde(default)]
    pub rounding: RmsNormRounding,
}

impl RmsNormConfig {
    /// LLaMA's RMSNorm over `dim` features: `LlamaRMSNorm`'s default eps 1e-6, scale `weight`.
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            eps: default_rms_norm_eps(),
            offset: 0.0,
            rounding: RmsNormRounding::BeforeScale,
        }
    }

    /// Gemma's RMSNorm over `dim` features: scale `1 + weight` in f32, rounded after it.
    pub fn gemma(dim: usize, eps: f64) -> Self {
        Self {
            dim,
            eps,
            offset: 1.0,
            rounding: RmsNormRounding::AfterScale,
        }
    }
}

impl ConfigCheck for RmsNormConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        positive("dim", self.dim)?;
        non_negative("eps", self.eps)
    }

    fn footprint(&self, work: &Workload) -> Footprint {
        norm_footprint(self.dim, work)
    }
}

/// Root-mean-square normalisation over the last dimension: no centring, no bias.
#[derive(Clone, Debug)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
    offset: f64,
    rounding: RmsNormRounding,
    path: String,
}

impl RmsNorm {
    /// Reads `weight` `[dim]` at `vb`'s path (fresh: `1 - offset`, so the scale starts at 1).
    pub fn new(config: &RmsNormConfig, vb: VarBuilder) -> Result<Self> {
        crate::admit(&format!("rms_norm `{}`", vb.prefix()), config)?;
        // Initialised so that the scale starts at 1.
        let init = candle_nn::Init::Const(1.0 - config.offset);
        let weight = vb.get_with_hints(config.dim, "weight", init)?;
        Ok(Self {
            weight,
            eps: config.eps,
            offset: config.offset,
            rounding: config.rounding,
            path: vb.prefix(),
        })
    }

    /// `x / sqrt(mean(x²) + eps) · (offset + weight)` over the last dimension of `x`
    /// `[..., dim]`, normalised in f32 and rounded to `x`'s dtype where the config's
    /// `rounding` says ([`ops::rms_norm`]).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // As the reference: the offset is added to the weight in f32 (in f16/bf16
        // `1 + w` would round).
        let scale = if self.offset == 0.0 {
            self.weight.clone()
        } else {
            (self.weight.to_dtype(candle_core::DType::F32)? + self.offset)?
        };
        let y = ops::rms_norm(x, &scale, self.eps, self.rounding)?;
        replica_check::tap(&self.path, &y);
        Ok(y)
    }
}

/// Which normalisation a composite block uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormKind {
    /// [`LayerNorm`] (the default).
    #[default]
    LayerNorm,
    /// [`RmsNorm`].
    RmsNorm,
    /// Gemma's RMSNorm ([`RmsNormConfig::gemma`]).
    GemmaRmsNorm,
    /// Dynamic Tanh in the norm's place ([`DynamicTanh`], channels last, `alpha`
    /// from 0.5; it has no epsilon).
    DynamicTanh,
}

/// A LayerNorm, an RMSNorm or DyT, chosen by configuration, the [`Identity`] a
/// reference keeps in a norm slot that is off (timm's `nn.Identity`), or a norm of
/// the caller's own ([`Norm::custom`]).
#[derive(Clone, Debug)]
pub enum Norm {
    /// A LayerNorm.
    LayerNorm(LayerNorm),
    /// An RMSNorm.
    RmsNorm(RmsNorm),
    /// Dynamic Tanh.
    DynamicTanh(DynamicTanh),
    /// No norm: the input, recorded under the slot's name.
    Identity(Identity),
    /// A norm the library does not have, written by the caller.
    Custom(CustomNorm),
}

/// A caller's norm in a norm slot: any candle `Module`, its output recorded under
/// the slot's path as the library's norms record theirs.
#[derive(Clone)]
pub struct CustomNorm {
    module: Arc<dyn candle_core::Module + Send + Sync>,
    path: String,
}

impl std::fmt::Debug for CustomNorm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CustomNorm({})", self.path)
    }
}

impl Norm {
    /// A norm of `kind` over `dim` features with `eps`, weights under `vb`.
    pub fn new(kind: NormKind, dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(match kind {
            NormKind::LayerNorm => Norm::LayerNorm(LayerNorm::new(
                &LayerNormConfig {
                    eps,
                    ..LayerNormConfig::new(dim)
                },
                vb,
            )?),
            NormKind::RmsNorm => Norm::RmsNorm(RmsNorm::new(
                &RmsNormConfig {
                    eps,
                    ..RmsNormConfig::new(dim)
                },
                vb,
            )?),
            NormKind::GemmaRmsNorm => Norm::RmsNorm(RmsNorm::new(&RmsNormConfig::gemma(dim, eps), vb)?),
            NormKind::DynamicTanh => Norm::DynamicTanh(DynamicTanh::new(&DynamicTanhConfig::new(dim), vb)?),
        })
    }

    /// The placeholder of a norm slot that is off, named by `vb`.
    pub fn identity(vb: VarBuilder) -> Self {
        Norm::Identity(Identity::new(vb))
    }

    /// The caller's `module` in the norm slot at `vb`'s path (build it from `vb`,
    /// so that its weights load from the slot).
    pub fn custom(module: impl candle_core::Module + Send + Sync + 'static, vb: &VarBuilder) -> Self {
        Norm::Custom(CustomNorm {
            module: Arc::new(module),
            path: vb.prefix(),
        })
    }

    /// The chosen norm over the last dimension of `x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Norm::LayerNorm(norm) => norm.forward(x),
            Norm::RmsNorm(norm) => norm.forward(x),
            Norm::DynamicTanh(norm) => norm.forward(x),
            Norm::Identity(identity) => identity.forward(x),
            Norm::Custom(norm) => {
                let y = norm.module.forward(x)?;
                replica_check::tap(&norm.path, &y);
                Ok(y)
            }
        }
    }
}

impl candle_core::Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        LayerNorm::forward(self, x)
    }
}

impl candle_core::Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        RmsNorm::forward(self, x)
    }
}

impl candle_core::Module for Norm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Norm::forward(self, x)
    }
}
