//! Activations and gated linear units (papers: [`crate::activation::Activation`],
//! [`crate::glu`]).
//!
//! The composition is candle's own unary op (evaluated in f32 for f16/bf16 inputs,
//! as PyTorch does); `replica_kernels::reference` spells the same functions out as
//! formulas for the kernels' tests and benchmarks.

use candle_core::{DType, Result, Tensor};
use replica_kernels::GeluApprox;
use serde::{Deserialize, Serialize};

use super::kernels_for;

/// An activation function, chosen by name as in a HF `config.json` ([`crate::activation`]);
/// every variant is differentiable. GELU (both forms) and SiLU run the fused kernels
/// when [`crate::compute`] is on kernels ([`activation`]).
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
    /// `max(x, 0)`; HF `"relu"`.
    Relu,
    /// `relu(x)²`; HF `"relu2"`.
    #[serde(alias = "relu2")]
    ReluSquared,
}

impl Activation {
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

/// `act(x)`: the fused kernel for GELU (both forms) and SiLU, else the
/// composition. The kernels compute half precision in f32 and round once, as the
/// composition does.
pub fn activation(act: Activation, x: &Tensor) -> Result<Tensor> {
    if kernels_for(x) {
        match act {
            Activation::Gelu => return replica_kernels::gelu_erf(x),
            Activation::GeluTanh => return replica_kernels::gelu_tanh(x),
            Activation::Silu => return replica_kernels::silu(x),
            // One or two cheap candle ops already.
            Activation::QuickGelu | Activation::Relu | Activation::ReluSquared => {}
        }
    }
    match (act, x.dtype()) {
        // PyTorch evaluates these in f32 for half-precision inputs and rounds once;
        // candle's f16 kernels round intermediate steps (an ulp off for SiLU).
        // QuickGELU is three separate ops in PyTorch too, so it stays in the input dtype.
        (Activation::QuickGelu, _) | (_, DType::F32 | DType::F64) => composed(act, x),
        _ => composed(act, &x.to_dtype(DType::F32)?)?.to_dtype(x.dtype()),
    }
}

fn composed(act: Activation, x: &Tensor) -> Result<Tensor> {
    match act {
        Activation::Gelu => x.gelu_erf(),
        Activation::GeluTanh => x.gelu(),
        Activation::QuickGelu => x * candle_nn::ops::sigmoid(&(x * 1.702)?)?,
        Activation::Silu => x.silu(),
        Activation::Relu => x.relu(),
        Activation::ReluSquared => x.relu()?.sqr(),
    }
}

/// `act(gate) · up`: one fused kernel (SwiGLU, GeGLU) where the activation
/// has one and the kernels are in force for these inputs, else [`activation`] and
/// the product. Half inputs too: the reference rounds `act(gate)` before the
/// product and the fused kernel rounds once, which is at least as close to the
/// float64 shadow (docs/kernels.md, "Half precision").
pub fn gated(act: Activation, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let fits = kernels_for(gate) && gate.dtype() == up.dtype() && gate.dims() == up.dims();
    match act {
        Activation::Silu if fits => replica_kernels::swiglu(gate, up),
        Activation::Gelu if fits => replica_kernels::geglu(gate, up, GeluApprox::Erf),
        Activation::GeluTanh if fits => replica_kernels::geglu(gate, up, GeluApprox::Tanh),
        _ => activation(act, gate)? * up,
    }
}
