//! Pointwise activations, chosen by name as in a HF `config.json` (`hidden_act`).
//!
//! - GELU, exact (erf) and tanh approximation, and QuickGELU `x·σ(1.702x)`:
//!   Hendrycks & Gimpel, arXiv 1606.08415.
//! - SiLU / Swish `x·σ(x)`: Ramachandran et al., arXiv 1710.05941.
//! - ReLU²: So et al. (Primer), arXiv 2109.08668.

use candle_core::{DType, Result, Tensor};
use serde::{Deserialize, Serialize};

/// An activation function; every variant is differentiable in candle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// GELU with the exact erf, `torch.nn.GELU()`; HF `"gelu"`.
    #[default]
    #[serde(alias = "gelu_erf")]
    Gelu,
    /// GELU with the tanh approximation; HF `"gelu_new"`, `"gelu_pytorch_tanh"`.
    #[serde(alias = "gelu_new", alias = "gelu_pytorch_tanh")]
    GeluTanh,
    /// `x·σ(1.702x)`, as in CLIP; HF `"quick_gelu"`.
    QuickGelu,
    /// `x·σ(x)`; HF `"silu"`, `"swish"`.
    #[serde(alias = "swish")]
    Silu,
    Relu,
    /// `relu(x)²`; HF `"relu2"`.
    #[serde(alias = "relu2")]
    ReluSquared,
}

impl Activation {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match (self, x.dtype()) {
            // PyTorch evaluates these in f32 for half-precision inputs and rounds once;
            // candle's f16 kernels round intermediate steps (an ulp off for SiLU).
            // QuickGELU is three separate ops in PyTorch too, so it stays composed.
            (Activation::QuickGelu, _) | (_, DType::F32 | DType::F64) => self.eval(x),
            _ => self.eval(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype()),
        }
    }

    fn eval(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Activation::Gelu => x.gelu_erf(),
            Activation::GeluTanh => x.gelu(),
            Activation::QuickGelu => x * candle_nn::ops::sigmoid(&(x * 1.702)?)?,
            Activation::Silu => x.silu(),
            Activation::Relu => x.relu(),
            Activation::ReluSquared => x.relu()?.sqr(),
        }
    }

    /// The name this activation has in the paper registry.
    pub fn registry_name(&self) -> &'static str {
        match self {
            Activation::Gelu => "Activation::Gelu",
            Activation::GeluTanh => "Activation::GeluTanh",
            Activation::QuickGelu => "Activation::QuickGelu",
            Activation::Silu => "Activation::Silu",
            Activation::Relu => "Activation::Relu",
            Activation::ReluSquared => "Activation::ReluSquared",
        }
    }
}

impl candle_core::Module for Activation {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Activation::forward(self, x)
    }
}
