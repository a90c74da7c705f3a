//! Pointwise activations, chosen by name as in a HF `config.json` (`hidden_act`).
//!
//! - GELU, exact (erf) and tanh approximation, and QuickGELU `x·σ(1.702x)`:
//!   Hendrycks & Gimpel, arXiv 1606.08415.
//! - SiLU / Swish `x·σ(x)`: Ramachandran et al., arXiv 1710.05941.
//! - ReLU²: So et al. (Primer), arXiv 2109.08668.

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

/// An activation function; every variant is differentiable. GELU (both forms) and
/// SiLU run the fused kernels when [`crate::compute`] is on kernels ([`crate::ops::activation`]).
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
        crate::ops::activation(*self, x)
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
