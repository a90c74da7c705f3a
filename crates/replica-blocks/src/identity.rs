//! `torch.nn.Identity`: the placeholder module timm puts where an optional layer
//! is off (`norm_layer=None`, no LayerScale, `num_classes=0`). It computes
//! nothing, but the reference's forward hooks record it, so a port of that module
//! tree records it too. Build one only where the reference has such a module.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

/// Returns its input, and records it in traces under its path.
#[derive(Clone, Debug)]
pub struct Identity {
    path: String,
}

impl Identity {
    /// The module at `vb`'s path (it has no weights; `vb` only names it).
    pub fn new(vb: VarBuilder) -> Self {
        Self { path: vb.prefix() }
    }

    /// Returns `x` unchanged, recording it in traces under this module's path.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        replica_check::tap(&self.path, x);
        Ok(x.clone())
    }
}

impl candle_core::Module for Identity {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Identity::forward(self, x)
    }
}
