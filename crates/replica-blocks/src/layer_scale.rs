//! LayerScale: Touvron et al., CaiT, "Going deeper with Image Transformers",
//! arXiv 2103.17239 (registry: [`crate::papers::CAIT`]), as timm's `LayerScale`.
//!
//! A learned per-channel scale `gamma` on a residual branch, initialised small
//! (`init_values`, e.g. 1e-5) so deep stacks start close to the identity.

use candle_core::{Result, Tensor, D};
use candle_nn::VarBuilder;
use replica_check::config_check::{finite, positive};
use replica_check::{ConfigCheck, Footprint, Size, Workload};
use serde::{Deserialize, Serialize};

fn default_init_values() -> f64 {
    1e-5
}

/// timm `LayerScale(dim, init_values)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerScaleConfig {
    /// Channels: the size of `gamma` (HF `hidden_size`, timm `embed_dim`).
    #[serde(alias = "hidden_size", alias = "embed_dim")]
    pub dim: usize,
    /// The initial value of every `gamma` entry (used when the weights do not supply it).
    #[serde(
        default = "default_init_values",
        alias = "layer_scale_init_value",
        alias = "layerscale_value",
        alias = "init_value"
    )]
    pub init_values: f64,
}

impl LayerScaleConfig {
    /// `dim` channels with timm's default `init_values` 1e-5.
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            init_values: default_init_values(),
        }
    }
}

impl ConfigCheck for LayerScaleConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        positive("dim", self.dim)?;
        finite("init_values", self.init_values)
    }

    fn footprint(&self, work: &Workload) -> Footprint {
        let dim = Size::field("dim", self.dim);
        Footprint {
            params: work.bytes(dim.clone()),
            activations: work.bytes(work.rows() * dim),
        }
    }
}

/// `x * gamma` over the last (channel) dimension.
#[derive(Clone, Debug)]
pub struct LayerScale {
    gamma: Tensor,
    path: String,
}

impl LayerScale {
    /// Reads `gamma` `[dim]` at `vb`'s path (fresh: every entry `init_values`).
    pub fn new(config: &LayerScaleConfig, vb: VarBuilder) -> Result<Self> {
        crate::admit(&format!("layer_scale `{}`", vb.prefix()), config)?;
        let init = candle_nn::Init::Const(config.init_values);
        let gamma = vb.get_with_hints(config.dim, "gamma", init)?;
        Ok(Self {
            gamma,
            path: vb.prefix(),
        })
    }

    /// The per-channel scale, `[dim]`.
    pub fn gamma(&self) -> &Tensor {
        &self.gamma
    }

    /// `x * gamma`, `x` `[..., dim]`, with `gamma` cast to `x`'s dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dim = self.gamma.dim(0)?;
        if x.rank() == 0 || x.dim(D::Minus1)? != dim {
            candle_core::bail!(
                "layer_scale `{}`: the input's last dimension must have {dim} channels, got shape {:?}",
                self.path,
                x.dims()
            )
        }
        let y = x.broadcast_mul(&self.gamma.to_dtype(x.dtype())?)?;
        replica_check::tap(&self.path, &y);
        Ok(y)
    }
}

impl candle_core::Module for LayerScale {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        LayerScale::forward(self, x)
    }
}
