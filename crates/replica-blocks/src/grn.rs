//! Global Response Normalization (GRN): Woo et al., "ConvNeXt V2: Co-designing
//! and Scaling ConvNets with Masked Autoencoders", arXiv 2301.00808 (registry:
//! [`crate::papers::CONVNEXT_V2`]), as timm's `GlobalResponseNorm` and
//! `GlobalResponseNormMlp` (`timm/layers/grn.py`, `timm/layers/mlp.py`).
//!
//! Over a feature map, per sample and channel: the L2 norm over the spatial
//! positions (global aggregation), divided by its mean over the channels
//! (normalisation), scales the input (calibration); a learned per-channel
//! `weight` and `bias`, both starting at zero, and a residual make the layer start
//! as the identity:
//!
//! ```text
//! Gx = ‖x‖₂ over (height, width)          Nx = Gx / (mean over channels of Gx + eps)
//! GRN(x) = x + (bias + weight · (x · Nx))
//! ```
//!
//! Each step is rounded to the input's dtype where timm's is (`bias + weight · t`
//! is one fused `addcmul`, rounded once); the reductions are computed in a wider
//! dtype.

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;
use replica_check::config_check::{non_negative, positive, probability};
use replica_check::{ConfigCheck, Footprint, Size, Workload};
use serde::{Deserialize, Serialize};

use crate::activation::{Activation, ActivationLayer};
use crate::dropout::Dropout;
use crate::linear::{Linear, LinearConfig};

fn default_eps() -> f64 {
    1e-6
}

fn yes() -> bool {
    true
}

/// The dtype a step of `dtype` is computed in before it is rounded back: wide
/// enough that a product of two values is exact and sums lose less.
pub(crate) fn wide(dtype: DType) -> DType {
    match dtype {
        DType::F32 | DType::F64 => DType::F64,
        _ => DType::F32,
    }
}

/// timm `GlobalResponseNorm(dim, eps, channels_last)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GlobalResponseNormConfig {
    /// Channels: the size of `weight` and `bias`.
    #[serde(alias = "num_channels")]
    pub dim: usize,
    /// Added to the channel mean of the norms; default 1e-6, as timm.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Feature maps `[batch, height, width, channels]` (`true`, the default) or
    /// `[batch, channels, height, width]`.
    #[serde(default = "yes")]
    pub channels_last: bool,
}

impl GlobalResponseNormConfig {
    /// `dim` channels last, timm's eps 1e-6.
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            eps: default_eps(),
            channels_last: true,
        }
    }
}

impl ConfigCheck for GlobalResponseNormConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        positive("dim", self.dim)?;
        non_negative("eps", self.eps)
    }

    fn footprint(&self, work: &Workload) -> Footprint {
        let dim = Size::field("dim", self.dim);
        Footprint {
            params: work.bytes(dim.clone() * 2),
            activations: work.bytes(work.rows() * dim * 4),
        }
    }
}

/// Global Response Normalization over a 4-d feature map.
#[derive(Clone, Debug)]
pub struct GlobalResponseNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
    channels_last: bool,
    path: String,
}

impl GlobalResponseNorm {
    /// Reads `weight` and `bias` `[dim]` at `vb`'s path (fresh: zeros, as timm, so
    /// the layer starts as the identity).
    pub fn new(config: &GlobalResponseNormConfig, vb: VarBuilder) -> Result<Self> {
        crate::admit(&format!("global_response_norm `{}`", vb.prefix()), config)?;
        let weight = vb.get_with_hints(config.dim, "weight", candle_nn::Init::Const(0.0))?;
        let bias = vb.get_with_hints(config.dim, "bias", candle_nn::Init::Const(0.0))?;
        Ok(Self {
            weight,
            bias,
            eps: config.eps,
            channels_last: config.channels_last,
            path: vb.prefix(),
        })
    }

    /// GRN of `x`, `[batch, height, width, dim]` channels last, else `[batch, dim, height, width]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dim = self.weight.dim(0)?;
        let (spatial, channel, shape) = if self.channels_last {
            ([1, 2], 3, [1, 1, 1, dim])
        } else {
            ([2, 3], 1, [1, dim, 1, 1])
        };
        if x.rank() != 4 || x.dim(channel)? != dim {
            candle_core::bail!(
                "global_response_norm `{}`: expects a feature map with {dim} channels in dimension {channel} \
                 of 4, got shape {:?}",
                self.path,
                x.dims()
            )
        }
        let dtype = x.dtype();
        let wide = wide(dtype);
        let xw = x.to_dtype(wide)?;
        // `x.norm(p=2, dim=spatial)`, rounded to x's dtype.
        let norms = xw
            .sqr()?
            .sum_keepdim(spatial[0])?
            .sum_keepdim(spatial[1])?
            .sqrt()?
            .to_dtype(dtype)?;
        // `norms.mean(channel) + eps`, each rounded; then the quotient, rounded.
        let mean = norms.to_dtype(wide)?.mean_keepdim(channel)?.to_dtype(dtype)?;
        let denominator = (mean.to_dtype(wide)? + self.eps)?.to_dtype(dtype)?;
        let scale = norms
            .to_dtype(wide)?
            .broadcast_div(&denominator.to_dtype(wide)?)?
            .to_dtype(dtype)?;
        let scaled = xw.broadcast_mul(&scale.to_dtype(wide)?)?.to_dtype(dtype)?;
        // `addcmul(bias, weight, scaled)`: one rounding.
        let weight = self.weight.to_dtype(wide)?.reshape(&shape)?;
        let bias = self.bias.to_dtype(wide)?.reshape(&shape)?;
        let response = scaled
            .to_dtype(wide)?
            .broadcast_mul(&weight)?
            .broadcast_add(&bias)?
            .to_dtype(dtype)?;
        let y = (xw + response.to_dtype(wide)?)?.to_dtype(dtype)?;
        replica_check::tap(&self.path, &y);
        Ok(y)
    }
}

impl candle_core::Module for GlobalResponseNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        GlobalResponseNorm::forward(self, x)
    }
}

/// timm `GlobalResponseNormMlp(in_features, hidden_features, act_layer, bias, drop)`
/// on channels-last feature maps: `fc1`, `act`, `drop1`, `grn`, `fc2`, `drop2`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GlobalResponseNormMlpConfig {
    /// Input and output channels.
    #[serde(alias = "in_features")]
    pub dim: usize,
    /// The hidden channels, where GRN runs.
    #[serde(alias = "hidden_features")]
    pub hidden_dim: usize,
    /// The activation after `fc1`; default GELU (erf).
    #[serde(default, alias = "act_layer")]
    pub activation: Activation,
    /// Biases on `fc1` and `fc2`.
    #[serde(default = "yes")]
    pub bias: bool,
    /// The dropout probability of `drop1` and `drop2`.
    #[serde(default, alias = "drop")]
    pub dropout: f64,
}

impl ConfigCheck for GlobalResponseNormMlpConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        positive("dim", self.dim)?;
        positive("hidden_dim", self.hidden_dim)?;
        probability("dropout", self.dropout)
    }

    fn footprint(&self, work: &Workload) -> Footprint {
        let (dim, hidden) = (Size::field("dim", self.dim), Size::field("hidden_dim", self.hidden_dim));
        Footprint {
            params: work.bytes(dim.clone() * hidden.clone() * 2 + hidden.clone() * 3 + dim),
            activations: work.bytes(work.rows() * hidden * 6),
        }
    }
}

/// An MLP with GRN on its hidden features (ConvNeXt V2's).
#[derive(Clone, Debug)]
pub struct GlobalResponseNormMlp {
    fc1: Linear,
    act: ActivationLayer,
    drop1: Dropout,
    grn: GlobalResponseNorm,
    fc2: Linear,
    drop2: Dropout,
    path: String,
}

impl GlobalResponseNormMlp {
    /// Loads `fc1`, `grn` and `fc2` at `vb`'s path, under timm's names.
    pub fn new(config: &GlobalResponseNormMlpConfig, vb: VarBuilder) -> Result<Self> {
        let path = vb.prefix();
        crate::admit(&format!("grn_mlp `{path}`"), config)?;
        let linear = |i, o| LinearConfig {
            bias: config.bias,
            ..LinearConfig::new(i, o)
        };
        Ok(Self {
            fc1: Linear::new(&linear(config.dim, config.hidden_dim), vb.pp("fc1"))?,
            act: ActivationLayer::new(config.activation, vb.pp("act")),
            drop1: Dropout::from_probability(config.dropout, vb.pp("drop1").prefix())?,
            grn: GlobalResponseNorm::new(&GlobalResponseNormConfig::new(config.hidden_dim), vb.pp("grn"))?,
            fc2: Linear::new(&linear(config.hidden_dim, config.dim), vb.pp("fc2"))?,
            drop2: Dropout::from_probability(config.dropout, vb.pp("drop2").prefix())?,
            path,
        })
    }

    /// `x` is `[batch, height, width, dim]`; dropout is active only when `train`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let h = self.act.forward(&self.fc1.forward(x)?)?;
        let h = self.grn.forward(&self.drop1.forward_t(&h, train)?)?;
        let y = self.drop2.forward_t(&self.fc2.forward(&h)?, train)?;
        replica_check::tap(&self.path, &y);
        Ok(y)
    }
}
