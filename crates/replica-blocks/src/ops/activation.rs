//! Activations and gated linear units (papers: [`crate::activation::Activation`],
//! [`crate::glu`]).
//!
//! The composition is candle's own unary op (evaluated in f32 for f16/bf16 inputs,
//! as PyTorch does); `replica_kernels::reference` spells the same functions out as
//! formulas for the kernels' tests and benchmarks.

use candle_core::{DType, Result, Tensor};
use replica_kernels::GeluApprox;

use super::kernels_for;
use crate::activation::Activation;

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
