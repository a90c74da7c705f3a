//! Patch merging, the downsampling between Swin stages: Liu et al., "Swin
//! Transformer: Hierarchical Vision Transformer using Shifted Windows", arXiv
//! 2103.14030 (registry: [`crate::papers::SWIN`]), as timm's `PatchMerging`.
//!
//! Each 2x2 group of neighbouring tokens of a channels-last map `[B, H, W, C]` is
//! concatenated into one token of `4C` channels, normalised (`norm`, a LayerNorm)
//! and projected to `out_dim` (`reduction`, a linear layer without bias; default
//! `2C`) (§3.1). The concatenation order is timm's (and the paper code's):
//! `(row 0, col 0), (row 1, col 0), (row 0, col 1), (row 1, col 1)`. An odd height
//! or width is padded with a zero row or column at the end first.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use replica_check::config_check::{all_positive, at_most, non_negative};
use replica_check::{ConfigCheck, Footprint, Size, Workload};
use serde::{Deserialize, Serialize};

use crate::{Linear, LinearConfig, Norm, NormKind};

fn default_norm_eps() -> f64 {
    1e-5
}

/// timm `PatchMerging(dim, out_dim, norm_layer=nn.LayerNorm)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PatchMergingConfig {
    /// Channels of the input map.
    pub dim: usize,
    /// Channels of the output; `None`: `2·dim`, as timm.
    #[serde(default)]
    pub out_dim: Option<usize>,
    /// Not a timm argument: the LayerNorm's epsilon (`nn.LayerNorm`'s 1e-5).
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
}

impl PatchMergingConfig {
    /// `dim` channels in, `2·dim` out.
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            out_dim: None,
            norm_eps: default_norm_eps(),
        }
    }

    /// Channels of the output.
    pub fn out_dim(&self) -> usize {
        self.out_dim.unwrap_or(2 * self.dim)
    }
}

impl ConfigCheck for PatchMergingConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        all_positive(&[("dim", self.dim)])?;
        at_most("dim", self.dim, 1 << 24)?;
        if let Some(out_dim) = self.out_dim {
            all_positive(&[("out_dim", out_dim)])?;
            at_most("out_dim", out_dim, 1 << 24)?;
        }
        non_negative("norm_eps", self.norm_eps)
    }

    /// The norm and the reduction; per output token its `4·dim` gathered channels.
    fn footprint(&self, work: &Workload) -> Footprint {
        let wide = Size::field("dim", self.dim) * Size::count(4);
        let out = match self.out_dim {
            Some(out_dim) => Size::field("out_dim", out_dim),
            None => Size::field("dim", self.dim) * Size::count(2),
        };
        Footprint {
            params: work.bytes(wide.clone() * (out.clone() + Size::count(2))),
            activations: work.bytes(work.elements() * 3 + work.rows() * out),
        }
    }
}

/// timm's `PatchMerging`: `norm` over the `4·dim` gathered channels, then `reduction`.
#[derive(Clone, Debug)]
pub struct PatchMerging {
    norm: Norm,
    reduction: Linear,
    dim: usize,
    path: String,
}

impl PatchMerging {
    /// Loads `norm` (`weight`, `bias` `[4·dim]`) and `reduction.weight` `[out_dim, 4·dim]` at `vb`'s path.
    pub fn new(config: &PatchMergingConfig, vb: VarBuilder) -> Result<Self> {
        let path = vb.prefix();
        crate::admit(&format!("patch merging `{path}`"), config)?;
        let wide = 4 * config.dim;
        Ok(Self {
            norm: Norm::new(NormKind::LayerNorm, wide, config.norm_eps, vb.pp("norm"))?,
            reduction: Linear::new(&LinearConfig::new(wide, config.out_dim()).no_bias(), vb.pp("reduction"))?,
            dim: config.dim,
            path,
        })
    }

    /// The 2x2 neighbours of `[B, H, W, C]` as `[B, ⌈H/2⌉, ⌈W/2⌉, 4C]`, in timm's order.
    pub fn gather(x: &Tensor) -> Result<Tensor> {
        let (_, h, w, _) = x.dims4()?;
        let x = x.pad_with_zeros(1, 0, h % 2)?.pad_with_zeros(2, 0, w % 2)?;
        let (b, h, w, c) = x.dims4()?;
        x.reshape((b, h / 2, 2, w / 2, 2, c))?
            .permute((0, 1, 3, 4, 2, 5))?
            .contiguous()?
            .reshape((b, h / 2, w / 2, 4 * c))
    }

    /// `[B, H, W, dim]` to `[B, ⌈H/2⌉, ⌈W/2⌉, out_dim]`. Records `norm`, `reduction`
    /// and its own output.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let &[_, _, _, c] = x.dims() else {
            candle_core::bail!(
                "patch merging `{}`: expects a channels-last map [batch, height, width, {}], got shape {:?}",
                self.path,
                self.dim,
                x.dims()
            )
        };
        if c != self.dim {
            candle_core::bail!(
                "patch merging `{}`: the map has {c} channels, the layer expects {}",
                self.path,
                self.dim
            )
        }
        let y = self.reduction.forward(&self.norm.forward(&Self::gather(x)?)?)?;
        replica_check::tap(&self.path, &y);
        Ok(y)
    }
}
