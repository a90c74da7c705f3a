//! Pointwise activations, chosen by name as in a HF `config.json` (`hidden_act`).
//!
//! - GELU, exact (erf) and tanh approximation, and QuickGELU `x·σ(1.702x)`:
//!   Hendrycks & Gimpel, arXiv 1606.08415.
//! - SiLU / Swish `x·σ(x)`: Ramachandran et al., arXiv 1710.05941.
//! - ReLU²: So et al. (Primer), arXiv 2109.08668.

use candle_core::{Result, Tensor};

pub use crate::ops::Activation;

impl Activation {
    /// `act(x)`, through the op layer ([`crate::ops::activation`]).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        crate::ops::activation(*self, x)
    }
}

impl candle_core::Module for Activation {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Activation::forward(self, x)
    }
}
