//! Stochastic depth: Huang et al., "Deep Networks with Stochastic Depth",
//! arXiv 1603.09382 (registry: [`crate::papers::STOCHASTIC_DEPTH`]), as timm's
//! `DropPath` / `drop_path`.
//!
//! Applied to a residual branch: in training, the branch of each *sample* is
//! dropped with probability `drop_prob` (one draw per sample, not per element),
//! and the kept ones are scaled by `1 / keep_prob` when `scale_by_keep`. In
//! evaluation it is the identity, bit for bit.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use replica_check::config_check::drop_rate;
use replica_check::{ConfigCheck, Footprint, Workload};
use serde::{Deserialize, Serialize};

use crate::dropout::{check_probability, keep_mask};

fn yes() -> bool {
    true
}

/// timm `DropPath(drop_prob, scale_by_keep)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DropPathConfig {
    /// The probability of dropping a sample's branch, in `[0, 1]`. (A model's
    /// `drop_path_rate` is the rate of its *last* block, with lower rates before it,
    /// so it is not an alias here.)
    #[serde(default, alias = "drop_path", alias = "p")]
    pub drop_prob: f64,
    /// Scale kept branches by `1 / (1 - drop_prob)` so the expectation is unchanged.
    #[serde(default = "yes")]
    pub scale_by_keep: bool,
}

impl DropPathConfig {
    /// Drops a sample's branch with probability `drop_prob`, scaling the
    /// kept ones (timm's default).
    pub fn new(drop_prob: f64) -> Self {
        Self {
            drop_prob,
            scale_by_keep: true,
        }
    }
}

impl ConfigCheck for DropPathConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        drop_rate("drop_prob", self.drop_prob)
    }

    /// The output, and a mask per sample.
    fn footprint(&self, work: &Workload) -> Footprint {
        Footprint::activations(work.bytes(work.elements() + work.batch()))
    }
}

/// Per-sample branch dropping; a parameter-free block recorded in traces under its path.
#[derive(Clone, Debug)]
pub struct DropPath {
    drop_prob: f64,
    scale_by_keep: bool,
    path: String,
}

impl DropPath {
    /// The block at `vb`'s path (it has no weights; `vb` only names it).
    pub fn new(config: &DropPathConfig, vb: VarBuilder) -> Result<Self> {
        Self::from_config(config, vb.prefix())
    }

    /// The block recorded in traces under `path` (`""`: not recorded).
    pub fn from_config(config: &DropPathConfig, path: impl Into<String>) -> Result<Self> {
        let path = path.into();
        check_probability("drop_path", &path, config.drop_prob)?;
        Ok(Self {
            drop_prob: config.drop_prob,
            scale_by_keep: config.scale_by_keep,
            path,
        })
    }

    /// The probability of dropping a sample's branch in training.
    pub fn drop_prob(&self) -> f64 {
        self.drop_prob
    }

    /// `x` is `[batch, ...]`. In training each sample is kept or zeroed whole;
    /// otherwise `x` is returned unchanged.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = if !train || self.drop_prob == 0.0 {
            x.clone()
        } else {
            if x.rank() == 0 {
                candle_core::bail!(
                    "drop_path `{}`: the input needs a batch dimension, got a scalar",
                    self.path
                )
            }
            let keep_prob = 1.0 - self.drop_prob;
            // One draw per sample, broadcast over the sample's other dimensions.
            let mut shape = vec![1; x.rank()];
            shape[0] = x.dim(0)?;
            let mut mask = keep_mask(&shape, self.drop_prob, x.dtype(), x.device())?;
            if keep_prob > 0.0 && self.scale_by_keep {
                mask = mask.affine(1.0 / keep_prob, 0.0)?;
            }
            x.broadcast_mul(&mask)?
        };
        replica_check::tap(&self.path, &y);
        Ok(y)
    }
}

impl candle_core::ModuleT for DropPath {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        DropPath::forward_t(self, x, train)
    }
}
