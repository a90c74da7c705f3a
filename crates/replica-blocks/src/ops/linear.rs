//! A linear layer's product `x Wᵀ` ([`crate::linear`]).

use candle_core::{Result, Tensor};

use super::kernels_for;

/// `x Wᵀ` for `x` `[..., in]` and `weight` `[out, in]`: `replica_kernels::linear`
/// (with few rows it lets gemm read the weight in place), else candle's product
/// as `candle_nn::Linear` computes it (`reference::linear`).
pub fn linear(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    if kernels_for(x) {
        replica_kernels::linear(x, weight)
    } else {
        replica_kernels::reference::linear(x, weight)
    }
}
