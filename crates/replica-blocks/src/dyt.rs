//! Dynamic Tanh (DyT): Zhu, Chen, He, LeCun & Liu, "Transformers without
//! Normalization", arXiv 2503.10622 (registry: [`crate::papers::DYT`]), as the
//! paper's official `DynamicTanh` module (facebookresearch/DynamicTanh,
//! `dynamic_tanh.py`).
//!
//! An element-wise stand-in for a normalisation layer:
//!
//! ```text
//! DyT(x) = weight · tanh(alpha · x) + bias
//! ```
//!
//! with one learned scalar `alpha` (initialised to `alpha_init_value`, 0.5 by
//! default) and per-channel `weight` (ones) and `bias` (zeros). No statistics are
//! computed: `alpha` squashes extreme activations the way a norm would. Channels
//! are the last dimension (`channels_last`) or, for feature maps
//! `[batch, channels, height, width]`, the second. Under f16/bf16 each step is
//! rounded to the input's dtype, as the reference's is; an f32 input is computed in
//! f64 and rounded once, which keeps the digits of `alpha`'s gradient (a sum over
//! every element, whose terms often cancel).

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;
use replica_check::config_check::{finite, positive};
use replica_check::{ConfigCheck, Footprint, Size, Workload};
use serde::{Deserialize, Serialize};

fn default_alpha_init_value() -> f64 {
    0.5
}

fn yes() -> bool {
    true
}

/// `DynamicTanh(normalized_shape, channels_last, alpha_init_value)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DynamicTanhConfig {
    /// Channels: the size of `weight` and `bias` (the reference's `normalized_shape`,
    /// a number or, as `convert_ln_to_dyt` passes a LayerNorm's, a one-element list).
    #[serde(
        alias = "normalized_shape",
        alias = "hidden_size",
        alias = "embed_dim",
        deserialize_with = "channels"
    )]
    pub dim: usize,
    /// Channels in the last dimension (`true`) or in the second, of a feature map
    /// `[batch, channels, height, width]`.
    #[serde(default = "yes")]
    pub channels_last: bool,
    /// The initial `alpha` (used when the weights do not supply it).
    #[serde(default = "default_alpha_init_value")]
    pub alpha_init_value: f64,
}

/// `normalized_shape`: `16` or `[16]`; a shape of more dimensions is refused.
fn channels<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<usize, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Shape {
        One(usize),
        List(Vec<usize>),
    }
    match Shape::deserialize(d)? {
        Shape::One(dim) => Ok(dim),
        Shape::List(dims) => match dims[..] {
            [dim] => Ok(dim),
            _ => Err(serde::de::Error::custom(format!(
                "normalized_shape {dims:?}: only one dimension (the channels) is implemented"
            ))),
        },
    }
}

impl DynamicTanhConfig {
    /// `dim` channels last, `alpha` starting at the paper's default 0.5.
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            channels_last: true,
            alpha_init_value: default_alpha_init_value(),
        }
    }
}

impl ConfigCheck for DynamicTanhConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        positive("dim", self.dim)?;
        finite("alpha_init_value", self.alpha_init_value)
    }

    fn footprint(&self, work: &Workload) -> Footprint {
        let dim = Size::field("dim", self.dim);
        Footprint {
            params: work.bytes(dim.clone() * 2 + Size::count(1)),
            activations: work.bytes(work.rows() * dim * 3),
        }
    }
}

/// `weight · tanh(alpha · x) + bias`, per channel.
#[derive(Clone, Debug)]
pub struct DynamicTanh {
    alpha: Tensor,
    weight: Tensor,
    bias: Tensor,
    channels_last: bool,
    path: String,
}

impl DynamicTanh {
    /// Reads `alpha` `[1]`, `weight` and `bias` `[dim]` at `vb`'s path (fresh:
    /// `alpha_init_value`, ones and zeros, as the reference).
    pub fn new(config: &DynamicTanhConfig, vb: VarBuilder) -> Result<Self> {
        crate::admit(&format!("dynamic_tanh `{}`", vb.prefix()), config)?;
        let alpha = vb.get_with_hints(1, "alpha", candle_nn::Init::Const(config.alpha_init_value))?;
        let weight = vb.get_with_hints(config.dim, "weight", candle_nn::Init::Const(1.0))?;
        let bias = vb.get_with_hints(config.dim, "bias", candle_nn::Init::Const(0.0))?;
        Ok(Self {
            alpha,
            weight,
            bias,
            channels_last: config.channels_last,
            path: vb.prefix(),
        })
    }

    /// The learned scalar `alpha`, `[1]`.
    pub fn alpha(&self) -> &Tensor {
        &self.alpha
    }

    /// DyT of `x`: `[..., dim]` channels last, else `[batch, dim, height, width]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dim = self.weight.dim(0)?;
        let channel_axis = if self.channels_last {
            x.rank().checked_sub(1)
        } else {
            // The reference's `weight[:, None, None]` fits feature maps only.
            (x.rank() == 4).then_some(1)
        };
        let Some(axis) = channel_axis.filter(|&axis| x.dim(axis).ok() == Some(dim)) else {
            candle_core::bail!(
                "dynamic_tanh `{}`: expects {dim} channels {}, got shape {:?}",
                self.path,
                if self.channels_last {
                    "in the last dimension"
                } else {
                    "in dimension 1 of a feature map [batch, channels, height, width]"
                },
                x.dims()
            )
        };
        // The reference's shapes: weight `[dim]` on the last axis, or `[dim, 1, 1]`
        // for channels first.
        let mut shape = vec![dim];
        shape.extend(std::iter::repeat_n(1, x.rank() - 1 - axis));
        let dtype = x.dtype();
        let weight = self.weight.reshape(shape.as_slice())?;
        let bias = self.bias.reshape(shape.as_slice())?;
        let y = if matches!(dtype, DType::F32 | DType::F64) {
            // In f64, rounded once: closer to the exact value than the reference's
            // f32 steps, and the backward pass's sums for the scalar `alpha` (whose
            // terms often cancel) keep their digits.
            let wide = |t: &Tensor| t.to_dtype(DType::F64);
            let squashed = wide(x)?.broadcast_mul(&wide(&self.alpha)?)?.tanh()?;
            squashed
                .broadcast_mul(&wide(&weight)?)?
                .broadcast_add(&wide(&bias)?)?
                .to_dtype(dtype)?
        } else {
            // f16/bf16: each step is one product (or sum) rounded to the input's
            // dtype, as the reference computes it (in f32, where the product of
            // two such values is exact, then rounded).
            let step = |a: &Tensor, b: &Tensor, add: bool| -> Result<Tensor> {
                let (a, b) = (a.to_dtype(DType::F32)?, b.to_dtype(DType::F32)?);
                let y = if add {
                    a.broadcast_add(&b)?
                } else {
                    a.broadcast_mul(&b)?
                };
                y.to_dtype(dtype)
            };
            let squashed = step(x, &self.alpha, false)?.tanh()?;
            step(&step(&squashed, &weight, false)?, &bias, true)?
        };
        replica_check::tap(&self.path, &y);
        Ok(y)
    }
}

impl candle_core::Module for DynamicTanh {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        DynamicTanh::forward(self, x)
    }
}
