//! A linear layer, `x Wᵀ + b` ([`crate::linear`]).

use candle_core::{Result, Tensor};

use super::kernels_for;

/// `x Wᵀ + b` for `x` `[..., in]`, `weight` `[out, in]` and `bias` `[out]`:
/// `replica_kernels::linear` (the bias accumulated onto, as PyTorch's `addmm`;
/// with few rows gemm reads the weight in place), else candle's product and
/// broadcast add as `candle_nn::Linear` computes them (`reference::linear`).
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    if kernels_for(x) {
        replica_kernels::linear(x, weight, bias)
    } else {
        replica_kernels::reference::linear(x, weight, bias)
    }
}
