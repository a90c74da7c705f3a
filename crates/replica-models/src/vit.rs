//! The Vision Transformer: Dosovitskiy et al., "An Image is Worth 16x16 Words:
//! Transformers for Image Recognition at Scale", arXiv 2010.11929. Reference:
//! timm's `VisionTransformer` (`vit_*` models).
//!
//! Patch embedding, a class token, learned position embeddings, pre-norm blocks
//! (LayerNorm eps 1e-6, multi-head attention with a fused `qkv`, a GELU MLP), a
//! final norm, token (or average) pooling and a linear head. Module paths are
//! timm's, including its `nn.Identity` placeholders (`pos_drop`, `norm_pre`,
//! `blocks.0.ls1`, `fc_norm`, ...), so a timm checkpoint loads as it is and traces
//! line up with timm's forward hooks.

use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use replica_blocks::attention::AttentionConfig;
use replica_blocks::dropout::Dropout;
use replica_blocks::{
    Activation, BlockNames, ClassToken, ClassTokenConfig, FeedForwardConfig, LayerNorm, LayerNormConfig, Linear,
    LinearConfig, MlpConfig, MlpNames, NormKind, PatchEmbed, PatchEmbedConfig, ResidualLayout, Size2, TransformerBlock,
    TransformerBlockConfig,
};
use replica_check::WeightMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::checkpoint::{self, Family};
use crate::config::{parse_config, positive};
use crate::{Error, Result};

fn yes() -> bool {
    true
}
fn default_img_size() -> Size2 {
    Size2::square(224)
}
fn default_patch_size() -> Size2 {
    Size2::square(16)
}
fn default_in_chans() -> usize {
    3
}
fn default_num_classes() -> usize {
    1000
}
fn default_embed_dim() -> usize {
    768
}
fn default_depth() -> usize {
    12
}
fn default_num_heads() -> usize {
    12
}
fn default_mlp_ratio() -> f64 {
    4.0
}
fn default_global_pool() -> String {
    "token".into()
}
fn default_norm_eps() -> f64 {
    1e-6
}

/// The keyword arguments of timm's `VisionTransformer(...)`, with its defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VitConfig {
    #[serde(default = "default_img_size")]
    pub img_size: Size2,
    #[serde(default = "default_patch_size")]
    pub patch_size: Size2,
    #[serde(default = "default_in_chans")]
    pub in_chans: usize,
    /// Classes of the head; 0: no head (`forward` returns the pooled features).
    #[serde(default = "default_num_classes")]
    pub num_classes: usize,
    #[serde(default = "default_embed_dim")]
    pub embed_dim: usize,
    #[serde(default = "default_depth")]
    pub depth: usize,
    #[serde(default = "default_num_heads")]
    pub num_heads: usize,
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    #[serde(default = "yes")]
    pub qkv_bias: bool,
    #[serde(default)]
    pub qk_norm: bool,
    /// LayerScale's initial value (`None`: off).
    #[serde(default)]
    pub init_values: Option<f64>,
    #[serde(default = "yes")]
    pub class_token: bool,
    /// `token` (the class token's output) or `avg` (mean over the patch tokens).
    #[serde(default = "default_global_pool")]
    pub global_pool: String,
    /// A norm after pooling instead of before it; `None`: on for `avg` pooling, as timm.
    #[serde(default)]
    pub fc_norm: Option<bool>,
    /// A norm before the blocks (CLIP-style).
    #[serde(default)]
    pub pre_norm: bool,
    #[serde(default)]
    pub no_embed_class: bool,
    #[serde(default)]
    pub reg_tokens: usize,
    #[serde(default)]
    pub dynamic_img_size: bool,
    /// Not a timm argument: the LayerNorm eps (timm builds its norms with 1e-6).
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    /// Not a timm argument: the MLP activation (timm's default `nn.GELU`, erf).
    #[serde(default)]
    pub act_layer: Activation,
}

impl crate::config::ModelConfig for VitConfig {
    const NOT_USED: &'static [&'static str] = &[];

    fn check(&self) -> std::result::Result<(), String> {
        self.validate()
    }
}

impl Default for VitConfig {
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("every field has a default")
    }
}

impl VitConfig {
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let config: Self = crate::config::read_config(path)?;
        config.validate().map_err(|m| Error::config(path, m))?;
        Ok(config)
    }

    pub fn from_value(value: &Value, origin: impl AsRef<Path>) -> Result<Self> {
        let config: Self = parse_config(value, &origin)?;
        config.validate().map_err(|m| Error::config(origin, m))?;
        Ok(config)
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        positive(&[
            ("img_size", self.img_size.height.min(self.img_size.width)),
            ("patch_size", self.patch_size.height.min(self.patch_size.width)),
            ("in_chans", self.in_chans),
            ("embed_dim", self.embed_dim),
            ("depth", self.depth),
            ("num_heads", self.num_heads),
            ("mlp hidden width (embed_dim * mlp_ratio)", self.mlp_hidden()),
        ])?;
        let (img, patch) = (self.img_size, self.patch_size);
        if img.height % patch.height != 0 || img.width % patch.width != 0 {
            return Err(format!(
                "img_size {}x{} is not divisible by patch_size {}x{}",
                img.height, img.width, patch.height, patch.width
            ));
        }
        if self.embed_dim % self.num_heads != 0 {
            return Err(format!(
                "embed_dim {} is not divisible by num_heads {}",
                self.embed_dim, self.num_heads
            ));
        }
        match self.global_pool.as_str() {
            "token" if !self.class_token => {
                return Err("global_pool `token` needs class_token: true".into());
            }
            "token" | "avg" => {}
            other => {
                return Err(format!(
                    "global_pool `{other}` is not implemented (use `token` or `avg`)"
                ))
            }
        }
        for (name, on) in [
            ("no_embed_class", self.no_embed_class),
            ("dynamic_img_size", self.dynamic_img_size),
            ("reg_tokens", self.reg_tokens > 0),
        ] {
            if on {
                return Err(format!("{name} is not implemented"));
            }
        }
        Ok(())
    }

    pub fn grid(&self) -> Size2 {
        Size2::new(
            self.img_size.height / self.patch_size.height,
            self.img_size.width / self.patch_size.width,
        )
    }

    /// Patches plus the class token: the rows of `pos_embed`.
    pub fn num_tokens(&self) -> usize {
        let grid = self.grid();
        grid.height * grid.width + usize::from(self.class_token)
    }

    pub fn mlp_hidden(&self) -> usize {
        (self.embed_dim as f64 * self.mlp_ratio) as usize
    }

    fn use_fc_norm(&self) -> bool {
        self.fc_norm.unwrap_or(self.global_pool == "avg")
    }

    fn norm(&self, vb: VarBuilder) -> candle_core::Result<LayerNorm> {
        LayerNorm::new(
            &LayerNormConfig {
                eps: self.norm_eps,
                ..LayerNormConfig::new(self.embed_dim)
            },
            vb,
        )
    }

    /// One block, as timm's `Block`.
    pub fn block_config(&self) -> TransformerBlockConfig {
        let mut attention = AttentionConfig::timm(self.embed_dim, self.num_heads, self.qkv_bias, self.qk_norm);
        attention.norm_eps = self.norm_eps;
        let mlp = MlpConfig {
            activation: self.act_layer,
            names: MlpNames::timm(),
            ..MlpConfig::new(self.embed_dim, self.mlp_hidden())
        };
        TransformerBlockConfig {
            dim: self.embed_dim,
            layout: ResidualLayout::PreNorm,
            norm: NormKind::LayerNorm,
            norm_eps: self.norm_eps,
            attention,
            feed_forward: FeedForwardConfig::Mlp(mlp),
            layer_scale: self.init_values,
            drop_path: 0.0,
            names: BlockNames::timm(),
        }
    }

    fn summary(&self) -> String {
        format!(
            "img_size {}x{}, patch_size {}x{}, embed_dim {}, depth {}, num_heads {}, num_classes {}",
            self.img_size.height,
            self.img_size.width,
            self.patch_size.height,
            self.patch_size.width,
            self.embed_dim,
            self.depth,
            self.num_heads,
            self.num_classes
        )
    }
}

/// timm's `VisionTransformer`.
#[derive(Clone, Debug)]
pub struct Vit {
    patch_embed: PatchEmbed,
    cls_token: Option<ClassToken>,
    pos_embed: Tensor,
    pos_drop: Dropout,
    norm_pre: Option<LayerNorm>,
    blocks: Vec<TransformerBlock>,
    norm: Option<LayerNorm>,
    fc_norm: Option<LayerNorm>,
    head_drop: Dropout,
    head: Option<Linear>,
    config: VitConfig,
}

impl Vit {
    /// Builds the model under `vb` (the checkpoint's root).
    pub fn new(config: &VitConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        config
            .validate()
            .map_err(|m| candle_core::Error::Msg(format!("ViT config: {m}")))?;
        let patch_embed = PatchEmbed::new(
            &PatchEmbedConfig {
                img_size: Some(config.img_size),
                ..PatchEmbedConfig::new(config.patch_size, config.in_chans, config.embed_dim)
            },
            vb.pp("patch_embed"),
        )?;
        let cls_token = config
            .class_token
            .then(|| ClassToken::new(&ClassTokenConfig { dim: config.embed_dim }, vb.clone()))
            .transpose()?;
        let init = candle_nn::Init::Randn { mean: 0.0, stdev: 0.02 };
        let pos_embed = vb.get_with_hints((1, config.num_tokens(), config.embed_dim), "pos_embed", init)?;
        let block = config.block_config();
        let blocks = (0..config.depth)
            .map(|i| TransformerBlock::new(&block, vb.pp("blocks").pp(i)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let fc_norm = config.use_fc_norm();
        let head = (config.num_classes > 0)
            .then(|| Linear::new(&LinearConfig::new(config.embed_dim, config.num_classes), vb.pp("head")))
            .transpose()?;
        Ok(Self {
            patch_embed,
            cls_token,
            pos_embed,
            pos_drop: Dropout::from_probability(0.0, vb.pp("pos_drop").prefix())?,
            norm_pre: config.pre_norm.then(|| config.norm(vb.pp("norm_pre"))).transpose()?,
            blocks,
            norm: (!fc_norm).then(|| config.norm(vb.pp("norm"))).transpose()?,
            fc_norm: fc_norm.then(|| config.norm(vb.pp("fc_norm"))).transpose()?,
            head_drop: Dropout::from_probability(0.0, vb.pp("head_drop").prefix())?,
            head,
            config: config.clone(),
        })
    }

    /// timm checkpoints need no renaming.
    pub fn weight_map() -> WeightMap {
        WeightMap::new()
    }

    /// Loads a timm `vit_*` checkpoint strictly (see [`crate::gpt2::Gpt2::load`]).
    pub fn load(config: &VitConfig, checkpoint: impl AsRef<Path>, dtype: DType, device: &Device) -> Result<Self> {
        let checkpoint = checkpoint.as_ref();
        let tensors = checkpoint::read_checkpoint(checkpoint, device)?;
        Self::from_tensors(config, tensors, checkpoint, dtype, device)
    }

    pub fn from_tensors(
        config: &VitConfig,
        tensors: std::collections::BTreeMap<String, Tensor>,
        origin: impl AsRef<Path>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        config
            .validate()
            .map_err(|m| Error::config(origin.as_ref(), format!("ViT config: {m}")))?;
        checkpoint::load_strict(
            Family::Vit,
            tensors,
            origin.as_ref(),
            &Self::weight_map(),
            dtype,
            device,
            &config.summary(),
            |vb| Self::new(config, vb),
        )
    }

    pub fn config(&self) -> &VitConfig {
        &self.config
    }

    /// The token sequence after the final norm, `[batch, tokens, embed_dim]`
    /// (timm's `forward_features`), for images `[batch, in_chans, height, width]`.
    pub fn forward_features(&self, images: &Tensor) -> candle_core::Result<Tensor> {
        let x = self.patch_embed.forward(images).map_err(|e| {
            candle_core::Error::Msg(format!(
                "ViT ({}x{} images, {}x{} patches): {e}",
                self.config.img_size.height,
                self.config.img_size.width,
                self.config.patch_size.height,
                self.config.patch_size.width
            ))
        })?;
        let x = match &self.cls_token {
            Some(cls) => cls.forward(&x)?,
            None => x,
        };
        let x = x.broadcast_add(&self.pos_embed.to_dtype(x.dtype())?)?;
        let x = self.pos_drop.forward_t(&x, false)?;
        replica_check::tap("patch_drop", &x);
        let mut x = match &self.norm_pre {
            Some(norm) => norm.forward(&x)?,
            None => {
                replica_check::tap("norm_pre", &x);
                x
            }
        };
        for block in &self.blocks {
            x = block.forward(&x, None, None)?;
        }
        replica_check::tap("blocks", &x);
        match &self.norm {
            Some(norm) => norm.forward(&x),
            None => {
                replica_check::tap("norm", &x);
                Ok(x)
            }
        }
    }

    /// Pooling, `fc_norm` and the head: `[batch, tokens, embed_dim]` to logits
    /// `[batch, num_classes]` (the pooled features when there is no head).
    pub fn forward_head(&self, features: &Tensor) -> candle_core::Result<Tensor> {
        let pooled = match self.config.global_pool.as_str() {
            "avg" => {
                let prefix = usize::from(self.config.class_token);
                let tokens = features.dim(1)? - prefix;
                features.narrow(1, prefix, tokens)?.mean(1)?
            }
            _ => features.narrow(1, 0, 1)?.squeeze(1)?,
        };
        let pooled = match &self.fc_norm {
            Some(norm) => norm.forward(&pooled)?,
            None => {
                replica_check::tap("fc_norm", &pooled);
                pooled
            }
        };
        let pooled = self.head_drop.forward_t(&pooled, false)?;
        match &self.head {
            Some(head) => head.forward(&pooled),
            None => {
                replica_check::tap("head", &pooled);
                Ok(pooled)
            }
        }
    }

    /// Classification logits `[batch, num_classes]`.
    pub fn forward(&self, images: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_head(&self.forward_features(images)?)
    }

    /// The class probabilities (softmax over the logits).
    pub fn predict(&self, images: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::softmax(&self.forward(images)?, D::Minus1)
    }
}
