//! Normalisation layers.
//!
//! - LayerNorm: Ba, Kiros & Hinton, arXiv 1607.06450, as `torch.nn.LayerNorm`.
//! - RMSNorm: Zhang & Sennrich, arXiv 1910.07467, as HF `LlamaRMSNorm`.
//!
//! Both normalise in f32 whatever the input dtype, as PyTorch does for f16/bf16;
//! the computation is the op layer's ([`ops::layer_norm`], [`ops::rms_norm`]:
//! the fused kernels or the composition).

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use replica_check::config_check::{non_negative, positive};
use replica_check::{ConfigCheck, Footprint, Size, Workload};
use serde::{Deserialize, Serialize};

use crate::identity::Identity;
use crate::ops;

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
    #[serde(alias = "hidden_size", alias = "n_embd", alias = "normalized_shape")]
    pub dim: usize,
    #[serde(
        default = "default_layer_norm_eps",
        alias = "layer_norm_eps",
        alias = "layer_norm_epsilon"
    )]
    pub eps: f64,
    /// Learn a per-feature scale (`weight`).
    #[serde(default = "yes", alias = "elementwise_affine")]
    pub affine: bool,
    /// Learn a per-feature shift (`bias`); only with `affine`.
    #[serde(default = "yes")]
    pub bias: bool,
}

impl LayerNormConfig {
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

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = ops::layer_norm(x, self.weight.as_ref(), self.bias.as_ref(), self.eps)?;
        replica_check::tap(&self.path, &y);
        Ok(y)
    }
}

/// HF `LlamaRMSNorm(hidden_size, eps)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RmsNormConfig {
    #[serde(alias = "hidden_size")]
    pub dim: usize,
    #[serde(default = "default_rms_norm_eps", alias = "rms_norm_eps")]
    pub eps: f64,
}

impl RmsNormConfig {
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            eps: default_rms_norm_eps(),
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
    path: String,
}

impl RmsNorm {
    pub fn new(config: &RmsNormConfig, vb: VarBuilder) -> Result<Self> {
        crate::admit(&format!("rms_norm `{}`", vb.prefix()), config)?;
        let weight = vb.get_with_hints(config.dim, "weight", candle_nn::Init::Const(1.0))?;
        Ok(Self {
            weight,
            eps: config.eps,
            path: vb.prefix(),
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = ops::rms_norm(x, &self.weight, self.eps)?;
        replica_check::tap(&self.path, &y);
        Ok(y)
    }
}

/// Which normalisation a composite block uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormKind {
    #[default]
    LayerNorm,
    RmsNorm,
}

/// A LayerNorm or an RMSNorm, chosen by configuration, or the [`Identity`] a
/// reference keeps in a norm slot that is off (timm's `nn.Identity`).
#[derive(Clone, Debug)]
pub enum Norm {
    LayerNorm(LayerNorm),
    RmsNorm(RmsNorm),
    Identity(Identity),
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
            NormKind::RmsNorm => Norm::RmsNorm(RmsNorm::new(&RmsNormConfig { dim, eps }, vb)?),
        })
    }

    /// The placeholder of a norm slot that is off, named by `vb`.
    pub fn identity(vb: VarBuilder) -> Self {
        Norm::Identity(Identity::new(vb))
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Norm::LayerNorm(norm) => norm.forward(x),
            Norm::RmsNorm(norm) => norm.forward(x),
            Norm::Identity(identity) => identity.forward(x),
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
