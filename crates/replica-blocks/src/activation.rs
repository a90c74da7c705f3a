//! Pointwise activations, chosen by name as in a HF `config.json` (`hidden_act`).
//!
//! - GELU, exact (erf) and tanh approximation, and QuickGELU `x·σ(1.702x)`:
//!   Hendrycks & Gimpel, arXiv 1606.08415.
//! - SiLU / Swish `x·σ(x)`: Ramachandran et al., arXiv 1710.05941.
//! - ReLU²: So et al. (Primer), arXiv 2109.08668.

use candle_core::{DType, Result, Tensor};
use serde::{Deserialize, Serialize};

/// An activation function; every variant is differentiable. GELU (both forms) and
/// SiLU run the `replica_kernels` ops when [`crate::compute`] is on kernels.
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
        if let Some(kernel) = self.kernel().filter(|_| crate::compute::kernels_for(x)) {
            // The kernels compute half precision in f32 and round once, as below.
            return kernel(x);
        }
        match (self, x.dtype()) {
            // PyTorch evaluates these in f32 for half-precision inputs and rounds once;
            // candle's f16 kernels round intermediate steps (an ulp off for SiLU).
            // QuickGELU is three separate ops in PyTorch too, so it stays composed.
            (Activation::QuickGelu, _) | (_, DType::F32 | DType::F64) => self.eval(x),
            _ => self.eval(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype()),
        }
    }

    /// The fused kernel of this activation; QuickGELU, ReLU and ReLU² have none
    /// (they are one or two cheap candle ops already).
    fn kernel(&self) -> Option<fn(&Tensor) -> Result<Tensor>> {
        match self {
            Activation::Gelu => Some(replica_kernels::gelu_erf),
            Activation::GeluTanh => Some(replica_kernels::gelu_tanh),
            Activation::Silu => Some(replica_kernels::silu),
            Activation::QuickGelu | Activation::Relu | Activation::ReluSquared => None,
        }
    }

    /// `act(gate) · up` fused in one kernel, when this activation has a gated
    /// kernel (SwiGLU, GeGLU) and the kernels are in force for these inputs.
    pub(crate) fn gated_kernel(&self, gate: &Tensor, up: &Tensor) -> Option<Result<Tensor>> {
        // Half inputs too: the reference rounds `act(gate)` before the product and the
        // fused kernel rounds once, which is at least as close to the float64 shadow
        // (docs/kernels.md, "Half precision").
        if !crate::compute::kernels_for(gate) || gate.dtype() != up.dtype() {
            return None;
        }
        if gate.dims() != up.dims() {
            return None;
        }
        match self {
            Activation::Silu => Some(replica_kernels::swiglu(gate, up)),
            Activation::Gelu => Some(replica_kernels::geglu(gate, up, replica_kernels::GeluApprox::Erf)),
            Activation::GeluTanh => Some(replica_kernels::geglu(gate, up, replica_kernels::GeluApprox::Tanh)),
            _ => None,
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
