//! Pointwise activations, chosen by name as in a HF `config.json` (`hidden_act`).
//!
//! - GELU, exact (erf) and tanh approximation, and QuickGELU `x·σ(1.702x)`:
//!   Hendrycks & Gimpel, arXiv 1606.08415.
//! - SiLU / Swish `x·σ(x)`: Ramachandran et al., arXiv 1710.05941.
//! - ReLU²: So et al. (Primer), arXiv 2109.08668.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

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

/// An activation as a module of its own, as timm and HF hold it (`act`, `act_fn`):
/// it records its output in traces under its path.
#[derive(Clone, Debug)]
pub struct ActivationLayer {
    activation: Activation,
    path: String,
}

impl ActivationLayer {
    /// `activation` as the module at `vb`'s path (it has no weights; `vb` only names it).
    pub fn new(activation: Activation, vb: VarBuilder) -> Self {
        Self {
            activation,
            path: vb.prefix(),
        }
    }

    /// `activation` applied as a function: no module of the reference, nothing recorded.
    pub fn functional(activation: Activation) -> Self {
        Self {
            activation,
            path: String::new(),
        }
    }

    /// The activation this layer applies.
    pub fn activation(&self) -> Activation {
        self.activation
    }

    /// Whether a trace is being recorded that wants this module's output.
    pub fn is_traced(&self) -> bool {
        !self.path.is_empty() && replica_check::trace::is_active()
    }

    /// `act(x)`, recorded in traces under this layer's path (a functional layer records nothing).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.activation.forward(x)?;
        replica_check::tap(&self.path, &y);
        Ok(y)
    }
}

impl candle_core::Module for ActivationLayer {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ActivationLayer::forward(self, x)
    }
}
