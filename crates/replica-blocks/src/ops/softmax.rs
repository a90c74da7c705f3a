//! Softmax with a scale and a mask, the normalisation of attention (Vaswani et
//! al., arXiv 1706.03762, eq. 1).

use candle_core::{Result, Tensor};
use replica_kernels::reference;

use super::{kernels_for, ScoreBias};

/// `softmax(scale · x + bias)` over the last dimension of scores `[.., q_len, k_len]`:
/// the softmax kernel (scale and mask fused in one pass) or the composition. A row
/// that may attend to no key gives zeros, not NaN.
pub fn softmax(x: &Tensor, scale: f64, bias: &ScoreBias<'_>) -> Result<Tensor> {
    let additive = bias.additive(x)?;
    let mask = bias.softmax_mask(additive.as_ref());
    if kernels_for(x) {
        replica_kernels::softmax_last_dim(x, scale, mask)
    } else {
        reference::softmax_last_dim(x, scale, mask)
    }
}
