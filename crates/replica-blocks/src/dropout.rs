//! Dropout: Hinton et al., "Improving neural networks by preventing co-adaptation
//! of feature detectors", arXiv 1207.0580 (registry: [`crate::papers::DROPOUT`]),
//! as `torch.nn.Dropout`.
//!
//! Inverted dropout: in training each element is zeroed with probability `p` and
//! the survivors are scaled by `1 / (1 - p)`, so that evaluation is the identity
//! (bit for bit: the input is returned as it is).

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;
use replica_check::config_check::drop_rate;
use replica_check::{ConfigCheck, Footprint, Workload};
use serde::{Deserialize, Serialize};

/// `torch.nn.Dropout(p)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DropoutConfig {
    /// The probability of zeroing an element, in `[0, 1]`.
    #[serde(
        default,
        alias = "drop",
        alias = "dropout",
        alias = "hidden_dropout_prob",
        alias = "resid_pdrop"
    )]
    pub p: f64,
}

impl DropoutConfig {
    /// Dropout with probability `p`.
    pub fn new(p: f64) -> Self {
        Self { p }
    }
}

impl ConfigCheck for DropoutConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        drop_rate("p", self.p)
    }

    /// The output and its random mask.
    fn footprint(&self, work: &Workload) -> Footprint {
        Footprint::activations(work.bytes(work.elements() * 3))
    }
}

/// Checks a drop probability; `what` names the block in the message.
pub(crate) fn check_probability(what: &str, path: &str, p: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&p) {
        candle_core::bail!("{what} `{path}`: the drop probability must be in [0, 1], got {p}")
    }
    Ok(())
}

/// A keep mask of `shape`: 1 with probability `1 - p`, else 0, in `dtype`.
pub(crate) fn keep_mask(shape: &[usize], p: f64, dtype: DType, device: &candle_core::Device) -> Result<Tensor> {
    Tensor::rand(0f32, 1f32, shape, device)?.ge(p as f32)?.to_dtype(dtype)
}

/// Elementwise dropout; a parameter-free block recorded in traces under its path
/// (timm's `drop1` / `drop2`, GPT-2's `dropout`).
#[derive(Clone, Debug)]
pub struct Dropout {
    p: f64,
    path: String,
}

impl Dropout {
    /// The block at `vb`'s path (dropout has no weights; `vb` only names it).
    pub fn new(config: &DropoutConfig, vb: VarBuilder) -> Result<Self> {
        Self::from_probability(config.p, vb.prefix())
    }

    /// Dropout with probability `p`, recorded in traces under `path` (`""`: not recorded).
    pub fn from_probability(p: f64, path: impl Into<String>) -> Result<Self> {
        let path = path.into();
        check_probability("dropout", &path, p)?;
        Ok(Self { p, path })
    }

    /// The probability of zeroing an element in training.
    pub fn probability(&self) -> f64 {
        self.p
    }

    /// In training (`train`), drops elements at random; otherwise returns `x` unchanged.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = if !train || self.p == 0.0 {
            x.clone()
        } else if self.p == 1.0 {
            // As torch: `x * 0`, so NaN and infinities stay visible.
            x.affine(0.0, 0.0)?
        } else {
            crate::ops::dropout(x, self.p)?
        };
        replica_check::tap(&self.path, &y);
        Ok(y)
    }
}

impl candle_core::ModuleT for Dropout {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        Dropout::forward_t(self, x, train)
    }
}
