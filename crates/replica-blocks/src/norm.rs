//! Normalisation layers.
//!
//! - LayerNorm: Ba, Kiros & Hinton, arXiv 1607.06450, as `torch.nn.LayerNorm`.
//! - RMSNorm: Zhang & Sennrich, arXiv 1910.07467, as HF `LlamaRMSNorm`.
//!
//! Both normalise in f32 whatever the input dtype, as PyTorch does for f16/bf16.
//! With [`crate::compute`] on kernels (the default) they run the fused
//! `replica_kernels` LayerNorm / RMSNorm ops (with a backward); otherwise, and for
//! f64, a composition of differentiable candle ops.

use candle_core::{DType, Result, Tensor, D};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

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
        let y = if crate::compute::kernels_for(x) {
            self.forward_kernel(x)?
        } else {
            self.forward_composed(x)?
        };
        replica_check::tap(&self.path, &y);
        Ok(y)
    }

    /// The fused kernel in f32 (the weights cast to it), rounded once to the input dtype.
    fn forward_kernel(&self, x: &Tensor) -> Result<Tensor> {
        let f32 = |t: &Tensor| t.to_dtype(DType::F32);
        let weight = match &self.weight {
            Some(w) => f32(w)?,
            // No affine parameters: a unit scale, untracked (nothing to learn).
            None => Tensor::ones(x.dim(D::Minus1)?, DType::F32, x.device())?,
        };
        let bias = self.bias.as_ref().map(f32).transpose()?;
        replica_kernels::layer_norm(&f32(x)?, &weight, bias.as_ref(), self.eps)?.to_dtype(x.dtype())
    }

    fn forward_composed(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let x = x.to_dtype(DType::F32)?;
        let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        // Two-pass variance: no cancellation from E[x²] - E[x]².
        let variance = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let mut y = centred.broadcast_div(&(variance + self.eps)?.sqrt()?)?;
        if let Some(weight) = &self.weight {
            y = y.broadcast_mul(&weight.to_dtype(DType::F32)?)?;
        }
        if let Some(bias) = &self.bias {
            y = y.broadcast_add(&bias.to_dtype(DType::F32)?)?;
        }
        y.to_dtype(dtype)
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

/// Root-mean-square normalisation over the last dimension: no centring, no bias.
#[derive(Clone, Debug)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
    path: String,
}

impl RmsNorm {
    pub fn new(config: &RmsNormConfig, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(config.dim, "weight", candle_nn::Init::Const(1.0))?;
        Ok(Self {
            weight,
            eps: config.eps,
            path: vb.prefix(),
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let y = if crate::compute::kernels_for(x) && dtype == DType::F32 && self.weight.dtype() == DType::F32 {
            // f32 throughout: normalisation and scale fused in one kernel.
            replica_kernels::rms_norm(x, &self.weight, self.eps)?
        } else {
            let normed = if crate::compute::kernels_for(x) {
                // Half precision: the kernel normalises in f32 (unit scale), and the scale
                // is applied after rounding, in the input dtype, as LlamaRMSNorm orders it.
                let unit = Tensor::ones(x.dim(D::Minus1)?, DType::F32, x.device())?;
                replica_kernels::rms_norm(&x.to_dtype(DType::F32)?, &unit, self.eps)?
            } else {
                let x32 = x.to_dtype(DType::F32)?;
                let mean_square = x32.sqr()?.mean_keepdim(D::Minus1)?;
                x32.broadcast_div(&(mean_square + self.eps)?.sqrt()?)?
            };
            // As LlamaRMSNorm: back to the input dtype *before* the scale.
            normed.to_dtype(dtype)?.broadcast_mul(&self.weight.to_dtype(dtype)?)?
        };
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

/// A LayerNorm or an RMSNorm, chosen by configuration.
#[derive(Clone, Debug)]
pub enum Norm {
    LayerNorm(LayerNorm),
    RmsNorm(RmsNorm),
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

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Norm::LayerNorm(norm) => norm.forward(x),
            Norm::RmsNorm(norm) => norm.forward(x),
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
