//! The affine map `y = x Wᵀ + b`, with PyTorch's `[out, in]` weight layout so
//! checkpoints load as they are (the Transformer's projections, arXiv 1706.03762).

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;
use replica_check::config_check::all_positive;
use replica_check::{ConfigCheck, Footprint, Size, Workload};
use serde::{Deserialize, Serialize};

fn yes() -> bool {
    true
}

/// `torch.nn.Linear(in_features, out_features, bias)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinearConfig {
    /// Input features (the last dimension of `x`).
    pub in_features: usize,
    /// Output features.
    pub out_features: usize,
    /// Whether the layer adds a bias `[out_features]`; default on, as torch.
    #[serde(default = "yes")]
    pub bias: bool,
}

impl LinearConfig {
    /// `in_features -> out_features` with a bias.
    pub fn new(in_features: usize, out_features: usize) -> Self {
        Self {
            in_features,
            out_features,
            bias: true,
        }
    }

    /// This config without a bias.
    pub fn no_bias(mut self) -> Self {
        self.bias = false;
        self
    }
}

impl ConfigCheck for LinearConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        all_positive(&[("in_features", self.in_features), ("out_features", self.out_features)])
    }

    fn footprint(&self, work: &Workload) -> Footprint {
        let (i, o) = (
            Size::field("in_features", self.in_features),
            Size::field("out_features", self.out_features),
        );
        Footprint {
            params: work.bytes(i.clone() * o.clone() + o.clone()),
            activations: work.bytes(work.rows() * (i + o)),
        }
    }
}

/// A linear layer over the last dimension of an input of any rank.
#[derive(Clone, Debug)]
pub struct Linear {
    inner: candle_nn::Linear,
    path: String,
}

impl Linear {
    /// Reads `weight` `[out_features, in_features]` (and `bias` `[out_features]`) at `vb`'s path.
    pub fn new(config: &LinearConfig, vb: VarBuilder) -> Result<Self> {
        crate::admit(&format!("linear `{}`", vb.prefix()), config)?;
        let (i, o) = (config.in_features, config.out_features);
        let inner = if config.bias {
            candle_nn::linear(i, o, vb.clone())?
        } else {
            candle_nn::linear_no_bias(i, o, vb.clone())?
        };
        Ok(Self {
            inner,
            path: vb.prefix(),
        })
    }

    /// A layer from existing tensors (`weight` is `[out, in]`), recorded in traces under `path`.
    pub fn from_weights(weight: Tensor, bias: Option<Tensor>, path: impl Into<String>) -> Self {
        Self {
            inner: candle_nn::Linear::new(weight, bias),
            path: path.into(),
        }
    }

    /// The weight, `[out, in]`.
    pub fn weight(&self) -> &Tensor {
        self.inner.weight()
    }

    /// The bias, `[out]`, when the layer has one.
    pub fn bias(&self) -> Option<&Tensor> {
        self.inner.bias()
    }

    /// `x Wᵀ + b` over the last dimension of `x` `[..., in]` -> `[..., out]`. On the CPU, f16 and
    /// bf16 inputs are multiplied in f32 and rounded once, as PyTorch accumulates them.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (in_features, dim) = (self.inner.weight().dim(1)?, x.dim(candle_core::D::Minus1)?);
        if dim != in_features {
            candle_core::bail!(
                "linear `{}`: input has {dim} features in its last dimension, the layer expects {in_features}",
                self.path
            )
        }
        let (weight, bias) = (self.inner.weight(), self.inner.bias());
        let y = match x.dtype() {
            // PyTorch multiplies half-precision matrices with f32 accumulation, adds
            // the bias and rounds once; candle's CPU gemm differs by an ulp often
            // enough to fail f16 parity, so do it PyTorch's way there.
            DType::F16 | DType::BF16 if x.device().is_cpu() => {
                let wide = |t: &Tensor| t.to_dtype(DType::F32);
                let bias = bias.map(wide).transpose()?;
                crate::ops::linear(&wide(x)?, &wide(weight)?, bias.as_ref())?.to_dtype(x.dtype())?
            }
            _ => crate::ops::linear(x, weight, bias)?,
        };
        replica_check::tap(&self.path, &y);
        Ok(y)
    }
}

impl candle_core::Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Linear::forward(self, x)
    }
}
