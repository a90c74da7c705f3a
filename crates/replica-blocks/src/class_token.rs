//! The class token of the Vision Transformer: Dosovitskiy et al., "An Image is
//! Worth 16x16 Words", arXiv 2010.11929 (registry: [`crate::papers::VIT`]).
//!
//! A learned vector `cls_token`, `[1, 1, dim]`, prepended to every sequence of
//! patch embeddings; the encoder's output at that position represents the image.
//! As timm's `VisionTransformer._pos_embed` (`torch.cat([cls_token.expand(B, -1, -1), x], 1)`)
//! and HF `ViTEmbeddings`.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use replica_check::config_check::positive;
use replica_check::{ConfigCheck, Footprint, Size, Workload};
use serde::{Deserialize, Serialize};

/// The width of the class token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassTokenConfig {
    /// Features of the token (timm `embed_dim`, HF `hidden_size`).
    #[serde(alias = "embed_dim", alias = "hidden_size")]
    pub dim: usize,
}

impl ConfigCheck for ClassTokenConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        positive("dim", self.dim)
    }

    /// The token, and the sequence with one more row per sample.
    fn footprint(&self, work: &Workload) -> Footprint {
        let dim = Size::field("dim", self.dim);
        Footprint {
            params: work.bytes(dim.clone()),
            activations: work.bytes((work.rows() + work.batch()) * dim),
        }
    }
}

/// Prepends the learned class token: `[batch, n, dim] -> [batch, n + 1, dim]`.
///
/// The token is a parameter of its owner (timm's `VisionTransformer`, HF's
/// `ViTEmbeddings`), not a module of its own, so the reference has no forward hook
/// for it and this block records nothing in traces: build it with the owner's
/// `VarBuilder` and it reads `<owner>.cls_token`.
#[derive(Clone, Debug)]
pub struct ClassToken {
    token: Tensor,
    path: String,
}

impl ClassToken {
    /// Reads `cls_token`, `[1, 1, dim]`, from `vb`'s path (the owner's); a fresh token is drawn
    /// from N(0, 1e-6²), as timm initialises it.
    pub fn new(config: &ClassTokenConfig, vb: VarBuilder) -> Result<Self> {
        crate::admit(&format!("class_token `{}`", vb.prefix()), config)?;
        // timm initialises the token with std 1e-6.
        let init = candle_nn::Init::Randn { mean: 0.0, stdev: 1e-6 };
        let token = vb.get_with_hints((1, 1, config.dim), "cls_token", init)?;
        Ok(Self {
            token,
            path: vb.prefix(),
        })
    }

    /// The token, `[1, 1, dim]`.
    pub fn token(&self) -> &Tensor {
        &self.token
    }

    /// `x` `[batch, n, dim]` with the token prepended at position 0:
    /// `[batch, n + 1, dim]`, in `x`'s dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dim = self.token.dim(2)?;
        let (batch, _, width) = match x.dims() {
            &[b, n, d] => (b, n, d),
            dims => candle_core::bail!(
                "class_token `{}`: expects a sequence [batch, tokens, {dim}], got shape {dims:?}",
                self.path
            ),
        };
        if width != dim {
            candle_core::bail!(
                "class_token `{}`: the token has {dim} features, the sequence has {width}",
                self.path
            )
        }
        let token = self.token.to_dtype(x.dtype())?.broadcast_as((batch, 1, dim))?;
        Tensor::cat(&[&token, x], 1)
    }
}

impl candle_core::Module for ClassToken {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ClassToken::forward(self, x)
    }
}
