//! The Vision Transformer: Dosovitskiy et al., "An Image is Worth 16x16 Words:
//! Transformers for Image Recognition at Scale", arXiv 2010.11929. Reference:
//! timm's `VisionTransformer` (`vit_*` models), with its keyword arguments.
//!
//! Patch embedding, a class token, learned position embeddings, pre-norm blocks
//! (LayerNorm eps 1e-6, multi-head attention with a fused `qkv`, a GELU MLP), a
//! final norm, pooling and a linear head. Module paths are timm's, including its
//! `nn.Identity` placeholders (`patch_drop`, `norm_pre`, `blocks.0.ls1`, `fc_norm`,
//! ...), built as [`Identity`] blocks, so a timm checkpoint loads as it is and
//! traces line up with timm's forward hooks (the `blocks` container is the one
//! name the [trace map](Architecture::trace_map) adds).
//!
//! The variants timm builds from the same class:
//!
//! - register tokens (`reg_tokens`; Darcet et al., "Vision Transformers Need
//!   Registers", arXiv 2309.16588): learned tokens after the class token, dropped
//!   by the pooling;
//! - `no_embed_class` (DeiT III, DINOv2): the position table covers the patches
//!   only and is added before the class and register tokens are put in front;
//! - no class token, with `avg`, `max` or `avgmax` pooling over the patch tokens
//!   (`fc_norm` then takes the final norm's place);
//! - LayerScale in every block (`init_values`; CaiT, arXiv 2103.17239) and
//!   QK-norm (`qk_norm`);
//! - Dynamic Tanh in every norm slot (`dynamic_tanh`, not a timm argument; Zhu et
//!   al., "Transformers without Normalization", arXiv 2503.10622), as the paper's
//!   code converts a built timm model.

use candle_core::{ModuleT, Tensor, D};
use candle_nn::VarBuilder;
use replica_blocks::attention::AttentionConfig;
use replica_blocks::dropout::Dropout;
use replica_blocks::{
    Activation, BlockNames, ClassToken, ClassTokenConfig, FeedForwardConfig, Identity, Linear, LinearConfig, MlpConfig,
    MlpNames, Norm, NormKind, PatchEmbed, PatchEmbedConfig, ResidualLayout, Size2, TransformerBlock,
    TransformerBlockConfig,
};
use replica_check::config_check::{finite, finite_positive, non_negative, probability};
use replica_check::{ConfigCheck, Footprint, Size, TraceMap, Workload};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::positive;
use crate::{Architecture, Family, ModelConfig, Preset};

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
fn default_pos_embed() -> String {
    "learn".into()
}

/// The keyword arguments of timm's `VisionTransformer(...)`, with its defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VitConfig {
    /// The input images' height and width.
    #[serde(default = "default_img_size")]
    pub img_size: Size2,
    /// The patches' height and width.
    #[serde(default = "default_patch_size")]
    pub patch_size: Size2,
    /// Channels of the input images.
    #[serde(default = "default_in_chans")]
    pub in_chans: usize,
    /// Classes of the head; 0: no head (`forward` returns the pooled features).
    #[serde(default = "default_num_classes")]
    pub num_classes: usize,
    /// The width of the token sequence.
    #[serde(default = "default_embed_dim")]
    pub embed_dim: usize,
    /// Transformer blocks.
    #[serde(default = "default_depth")]
    pub depth: usize,
    /// Attention heads per block.
    #[serde(default = "default_num_heads")]
    pub num_heads: usize,
    /// The MLP's hidden width over `embed_dim`.
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    /// A bias on the fused `qkv` projection.
    #[serde(default = "yes")]
    pub qkv_bias: bool,
    /// LayerNorm on the queries and keys of each head.
    #[serde(default)]
    pub qk_norm: bool,
    /// A norm on the attention output before its projection.
    #[serde(default)]
    pub scale_attn_norm: bool,
    /// A norm on the MLP's hidden features before its second projection.
    #[serde(default)]
    pub scale_mlp_norm: bool,
    /// Biases on the attention's output projection and on both MLP projections.
    #[serde(default = "yes")]
    pub proj_bias: bool,
    /// LayerScale's initial value (`None`, or 0 as timm reads it: off); arXiv 2103.17239.
    #[serde(default)]
    pub init_values: Option<f64>,
    /// A learned class token before the patches.
    #[serde(default = "yes")]
    pub class_token: bool,
    /// `learn`: a learned position table; `` or `none`: no position embedding.
    #[serde(default = "default_pos_embed")]
    pub pos_embed: String,
    /// Position embeddings for the patches only: added before the class and register
    /// tokens are put in front (DeiT III, big_vision), not after.
    #[serde(default)]
    pub no_embed_class: bool,
    /// Register tokens (Darcet et al., arXiv 2309.16588), after the class token.
    #[serde(default)]
    pub reg_tokens: usize,
    /// A norm before the blocks (CLIP-style); the patch projection then has no bias.
    #[serde(default)]
    pub pre_norm: bool,
    /// A norm after the blocks (`norm`, or `fc_norm` after pooling).
    #[serde(default = "yes")]
    pub final_norm: bool,
    /// A norm after pooling instead of before it; `None`: on for `avg`, `avgmax` and
    /// `max` pooling, as timm.
    #[serde(default)]
    pub fc_norm: Option<bool>,
    /// `token` (the class token's output), `avg`, `max` or `avgmax` (the mean of the
    /// two) over the tokens, or `` (no pooling: the head sees every token).
    #[serde(default = "default_global_pool")]
    pub global_pool: String,
    /// Pool over the class and register tokens too (`avg`, `max`, `avgmax`).
    #[serde(default)]
    pub pool_include_prefix: bool,
    /// Images of other sizes, positions interpolated; not implemented.
    #[serde(default)]
    pub dynamic_img_size: bool,
    /// Images padded to a multiple of the patch size; not implemented.
    #[serde(default)]
    pub dynamic_img_pad: bool,
    /// Dropout before the head.
    #[serde(default)]
    pub drop_rate: f64,
    /// Dropout after the position embedding.
    #[serde(default)]
    pub pos_drop_rate: f64,
    /// Dropping whole patch tokens in training (`PatchDropout`); only 0 is implemented.
    #[serde(default)]
    pub patch_drop_rate: f64,
    /// Dropout after the attention's and the MLP's projections.
    #[serde(default)]
    pub proj_drop_rate: f64,
    /// Dropout on the attention probabilities.
    #[serde(default)]
    pub attn_drop_rate: f64,
    /// Stochastic depth of the last block; block `i` of `depth` drops with
    /// `drop_path_rate * i / (depth - 1)`, as timm's `calculate_drop_path_rates`.
    #[serde(default)]
    pub drop_path_rate: f64,
    /// Not a timm argument: every LayerNorm replaced by Dynamic Tanh, as the DyT
    /// paper's `convert_ln_to_dyt` does to a built timm model (arXiv 2503.10622).
    #[serde(default)]
    pub dynamic_tanh: bool,
    /// Not a timm argument: the LayerNorm eps (timm builds its norms with 1e-6).
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    /// The MLP activation by timm's name; `null` or absent: timm's default `nn.GELU` (erf).
    #[serde(default, deserialize_with = "null_as_default")]
    pub act_layer: Activation,
    /// timm's norm layer by name: `null` (timm's LayerNorm) or `layernorm`; others are refused.
    #[serde(default)]
    pub norm_layer: Option<String>,
    /// A norm inside the patch embedding: only `null` (none) is implemented.
    #[serde(default)]
    pub embed_norm_layer: Option<String>,
}

/// A field whose `null` means its default, as timm's `None` arguments do.
fn null_as_default<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

impl ModelConfig for VitConfig {
    /// timm arguments that only choose how fresh weights are drawn, which a
    /// checkpoint replaces.
    const NOT_USED: &'static [&'static str] = &["weight_init", "fix_init"];
}

impl ConfigCheck for VitConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        finite_positive("mlp_ratio", self.mlp_ratio)?;
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
        if !self.embed_dim.is_multiple_of(self.num_heads) {
            return Err(format!(
                "embed_dim {} is not divisible by num_heads {}",
                self.embed_dim, self.num_heads
            ));
        }
        match self.global_pool.as_str() {
            "token" if !self.class_token => {
                return Err("global_pool `token` needs class_token: true".into());
            }
            "token" | "avg" | "avgmax" | "max" | "" => {}
            other => {
                return Err(format!(
                    "global_pool `{other}` is not implemented (use `token`, `avg`, `avgmax`, `max` or ``)"
                ))
            }
        }
        if let Some(norm) = self.norm_layer.as_deref().filter(|n| *n != "layernorm") {
            return Err(format!(
                "norm_layer `{norm}` is not implemented (use null or `layernorm`)"
            ));
        }
        if let Some(norm) = &self.embed_norm_layer {
            return Err(format!("embed_norm_layer `{norm}` is not implemented (expected null)"));
        }
        match self.pos_embed.as_str() {
            "learn" | "" | "none" => {}
            other => return Err(format!("pos_embed must be `learn`, `` or `none`, got `{other}`")),
        }
        for (name, on) in [
            ("dynamic_img_size", self.dynamic_img_size),
            ("dynamic_img_pad", self.dynamic_img_pad),
            ("patch_drop_rate above 0", self.patch_drop_rate != 0.0),
        ] {
            if on {
                return Err(format!("{name} is not implemented"));
            }
        }
        for (name, rate) in [
            ("drop_rate", self.drop_rate),
            ("pos_drop_rate", self.pos_drop_rate),
            ("proj_drop_rate", self.proj_drop_rate),
            ("attn_drop_rate", self.attn_drop_rate),
            ("drop_path_rate", self.drop_path_rate),
        ] {
            probability(name, rate)?;
        }
        let grid = self.grid();
        if self.table_rows().is_none() || grid.height.checked_mul(grid.width).is_none() {
            return Err(format!(
                "img_size {}x{} over patch_size {}x{} with {} register tokens makes more tokens than can be counted",
                img.height, img.width, patch.height, patch.width, self.reg_tokens
            ));
        }
        non_negative("norm_eps", self.norm_eps)?;
        if let Some(init_values) = self.init_values {
            finite("init_values", init_values)?;
        }
        self.patch_embed_config().validate()?;
        self.block_config(0).validate().map_err(|m| format!("block: {m}"))
    }

    /// The patch embedding, prefix tokens, position table, norms and head; per
    /// image its tokens; `depth` blocks.
    fn footprint(&self, work: &Workload) -> Footprint {
        let grid = self.grid();
        let tokens = Size::from_field("img_size", self.img_size.height.max(self.img_size.width), grid.height)
            * Size::count(grid.width as u64)
            + Size::count(u64::from(self.class_token))
            + Size::field("reg_tokens", self.reg_tokens);
        let hidden = Workload::tokens(
            work.batch.max(1),
            tokens.value().map_or(u64::MAX, |t| t.min(u128::from(u64::MAX)) as u64),
            self.embed_dim,
            work.element_bytes,
        );
        let dim = Size::field("embed_dim", self.embed_dim);
        let classes = Size::field("num_classes", self.num_classes);
        let own = Footprint {
            params: hidden.bytes(tokens * dim.clone() + dim.clone() * (classes.clone() + Size::count(8))),
            activations: hidden.bytes(hidden.rows() * dim * 4 + hidden.batch() * classes),
        };
        let blocks = self
            .block_config(0)
            .footprint(&hidden)
            .times(Size::field("depth", self.depth));
        own + self.patch_embed_config().footprint(work) + blocks
    }
}

impl Default for VitConfig {
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("every field has a default")
    }
}

impl VitConfig {
    /// Patches per column and per row.
    pub fn grid(&self) -> Size2 {
        Size2::new(
            self.img_size.height / self.patch_size.height,
            self.img_size.width / self.patch_size.width,
        )
    }

    /// timm's `patch_embed`: the image size is fixed; no bias under `pre_norm`.
    fn patch_embed_config(&self) -> PatchEmbedConfig {
        PatchEmbedConfig {
            img_size: Some(self.img_size),
            bias: !self.pre_norm,
            ..PatchEmbedConfig::new(self.patch_size, self.in_chans, self.embed_dim)
        }
    }

    /// The tokens in front of the patches: the class token, then the register tokens
    /// (timm's `num_prefix_tokens`).
    pub fn num_prefix_tokens(&self) -> usize {
        usize::from(self.class_token).saturating_add(self.reg_tokens)
    }

    /// The rows of `pos_embed`: the patches, plus the prefix tokens unless
    /// `no_embed_class` (`None` when they cannot be counted).
    fn table_rows(&self) -> Option<usize> {
        let grid = self.grid();
        let patches = grid.height.checked_mul(grid.width)?;
        let prefix = usize::from(self.class_token).checked_add(self.reg_tokens)?;
        patches.checked_add(if self.no_embed_class { 0 } else { prefix })
    }

    /// The rows of `pos_embed`: the patches, plus the class and register tokens
    /// unless `no_embed_class`.
    pub fn num_tokens(&self) -> usize {
        self.table_rows().unwrap_or(usize::MAX)
    }

    /// The MLP's hidden width, `embed_dim * mlp_ratio`.
    pub fn mlp_hidden(&self) -> usize {
        (self.embed_dim as f64 * self.mlp_ratio) as usize
    }

    fn use_fc_norm(&self) -> bool {
        self.fc_norm
            .unwrap_or(matches!(self.global_pool.as_str(), "avg" | "avgmax" | "max"))
    }

    /// The norm every norm slot holds: timm's LayerNorm, or DyT in its place.
    fn norm_kind(&self) -> NormKind {
        if self.dynamic_tanh {
            NormKind::DynamicTanh
        } else {
            NormKind::LayerNorm
        }
    }

    /// The model's norm at `vb` when `on`, else the `nn.Identity` timm keeps there.
    fn norm(&self, on: bool, vb: VarBuilder) -> candle_core::Result<Norm> {
        if !on {
            return Ok(Norm::identity(vb));
        }
        Norm::new(self.norm_kind(), self.embed_dim, self.norm_eps, vb)
    }

    /// Block `index`, as timm's `Block` (its stochastic depth rises linearly with the index).
    pub fn block_config(&self, index: usize) -> TransformerBlockConfig {
        let mut attention = AttentionConfig::timm(self.embed_dim, self.num_heads, self.qkv_bias, self.qk_norm);
        attention.norm_eps = self.norm_eps;
        attention.norm = self.norm_kind();
        attention.scale_norm = self.scale_attn_norm;
        attention.proj_bias = Some(self.proj_bias);
        attention.attention_dropout = self.attn_drop_rate as f32;
        attention.proj_dropout = self.proj_drop_rate as f32;
        let mlp = MlpConfig {
            activation: self.act_layer,
            bias: self.proj_bias,
            dropout: self.proj_drop_rate,
            norm: self.scale_mlp_norm.then_some(self.norm_kind()),
            norm_eps: self.norm_eps,
            names: MlpNames::timm(),
            ..MlpConfig::new(self.embed_dim, self.mlp_hidden())
        };
        let drop_path = match self.depth {
            0 | 1 => 0.0,
            depth => self.drop_path_rate * index as f64 / (depth - 1) as f64,
        };
        TransformerBlockConfig {
            dim: self.embed_dim,
            layout: ResidualLayout::PreNorm,
            norm: self.norm_kind(),
            norm_eps: self.norm_eps,
            attention,
            feed_forward: FeedForwardConfig::Mlp(mlp),
            // timm tests `if init_values`: 0 means no LayerScale.
            layer_scale: self.init_values.filter(|v| *v != 0.0),
            drop_path,
            names: BlockNames::timm(),
        }
    }
}

/// The classifier, or the `nn.Identity` timm keeps there without classes.
#[derive(Clone, Debug)]
enum Head {
    Linear(Linear),
    Identity(Identity),
}

/// timm's `VisionTransformer`.
#[derive(Clone, Debug)]
pub struct Vit {
    patch_embed: PatchEmbed,
    cls_token: Option<ClassToken>,
    reg_token: Option<Tensor>,
    pos_embed: Option<Tensor>,
    pos_drop: Dropout,
    patch_drop: Identity,
    norm_pre: Norm,
    blocks: Vec<TransformerBlock>,
    norm: Norm,
    fc_norm: Norm,
    head_drop: Dropout,
    head: Head,
    config: VitConfig,
    trace_map: TraceMap,
}

fn vit_config(embed_dim: usize, depth: usize, num_heads: usize) -> Value {
    json!({
        "img_size": 224, "patch_size": 16, "in_chans": 3, "num_classes": 1000, "embed_dim": embed_dim,
        "depth": depth, "num_heads": num_heads, "mlp_ratio": 4.0, "qkv_bias": true, "class_token": true,
        "global_pool": "token",
    })
}

impl Architecture for Vit {
    type Config = VitConfig;

    const FAMILY: Family = Family {
        name: "ViT",
        reference: "timm.models.vision_transformer.VisionTransformer",
        paper: replica_blocks::papers::VIT,
        checkpoint_naming: "timm vit_*: cls_token, pos_embed, patch_embed.proj, \
                            blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}, norm, head",
        signature: r"^blocks\.\d+\.attn\.qkv\.weight$",
        example_tensor: "blocks.0.attn.qkv.weight",
    };

    const PRESETS: &'static [Preset] = &[
        Preset {
            name: "vit_tiny_patch16_224",
            paper: replica_blocks::papers::VIT,
            checkpoint: "timm vit_tiny_patch16_224.augreg_in21k_ft_in1k",
            description: "ViT-Ti/16 at 224x224: 12 blocks, 192 wide, 3 heads, ImageNet-1k head",
            config: || vit_config(192, 12, 3),
        },
        Preset {
            name: "vit_small_patch16_224",
            paper: replica_blocks::papers::VIT,
            checkpoint: "timm vit_small_patch16_224.augreg_in21k_ft_in1k",
            description: "ViT-S/16 at 224x224: 12 blocks, 384 wide, 6 heads, ImageNet-1k head",
            config: || vit_config(384, 12, 6),
        },
        Preset {
            name: "vit_base_patch16_224",
            paper: replica_blocks::papers::VIT,
            checkpoint: "timm vit_base_patch16_224.augreg2_in21k_ft_in1k",
            description: "ViT-B/16 at 224x224: 12 blocks, 768 wide, 12 heads, ImageNet-1k head",
            config: || vit_config(768, 12, 12),
        },
        Preset {
            name: "vit_small_patch14_reg4_dinov2",
            paper: replica_blocks::papers::VIT_REGISTERS,
            checkpoint: "timm vit_small_patch14_reg4_dinov2.lvd142m",
            description: "DINOv2 ViT-S/14 with 4 register tokens at 518x518: LayerScale, patch-only \
                          positions, features only (no head)",
            config: || {
                json!({
                    "img_size": 518, "patch_size": 14, "num_classes": 0, "embed_dim": 384, "depth": 12,
                    "num_heads": 6, "init_values": 1e-5, "reg_tokens": 4, "no_embed_class": true,
                })
            },
        },
        Preset {
            name: "vit_medium_patch16_reg4_gap_256",
            paper: replica_blocks::papers::VIT_REGISTERS,
            checkpoint: "timm vit_medium_patch16_reg4_gap_256.sbb_in1k",
            description: "ViT-M/16 at 256x256: 4 register tokens, no class token, average pooling, \
                          LayerScale, ImageNet-1k head",
            config: || {
                json!({
                    "img_size": 256, "patch_size": 16, "embed_dim": 512, "depth": 12, "num_heads": 8,
                    "init_values": 1e-5, "class_token": false, "no_embed_class": true, "reg_tokens": 4,
                    "global_pool": "avg",
                })
            },
        },
        Preset {
            name: "deit3_small_patch16_224",
            paper: replica_blocks::papers::CAIT,
            checkpoint: "timm deit3_small_patch16_224.fb_in1k",
            description: "DeiT III ViT-S/16 at 224x224: LayerScale, patch-only positions, ImageNet-1k head",
            config: || {
                json!({
                    "img_size": 224, "patch_size": 16, "embed_dim": 384, "depth": 12, "num_heads": 6,
                    "no_embed_class": true, "init_values": 1e-6,
                })
            },
        },
    ];

    /// Builds the model under `vb` (the checkpoint's root). timm checkpoints need
    /// no renaming: the default weight map.
    fn new(config: &VitConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        Self::check(config)?;
        let patch_embed = PatchEmbed::new(&config.patch_embed_config(), vb.pp("patch_embed"))?;
        let cls_token = config
            .class_token
            .then(|| ClassToken::new(&ClassTokenConfig { dim: config.embed_dim }, vb.clone()))
            .transpose()?;
        // timm draws the register tokens with std 1e-6, the position table with std 0.02.
        let reg_token = (config.reg_tokens > 0)
            .then(|| {
                let init = candle_nn::Init::Randn { mean: 0.0, stdev: 1e-6 };
                vb.get_with_hints((1, config.reg_tokens, config.embed_dim), "reg_token", init)
            })
            .transpose()?;
        let pos_embed = (config.pos_embed == "learn")
            .then(|| {
                let init = candle_nn::Init::Randn { mean: 0.0, stdev: 0.02 };
                vb.get_with_hints((1, config.num_tokens(), config.embed_dim), "pos_embed", init)
            })
            .transpose()?;
        let blocks = (0..config.depth)
            .map(|i| TransformerBlock::new(&config.block_config(i), vb.pp("blocks").pp(i)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let fc_norm = config.use_fc_norm();
        let head = if config.num_classes > 0 {
            let linear = LinearConfig::new(config.embed_dim, config.num_classes);
            Head::Linear(Linear::new(&linear, vb.pp("head"))?)
        } else {
            Head::Identity(Identity::new(vb.pp("head")))
        };
        Ok(Self {
            patch_embed,
            cls_token,
            reg_token,
            pos_embed,
            pos_drop: Dropout::from_probability(config.pos_drop_rate, vb.pp("pos_drop").prefix())?,
            patch_drop: Identity::new(vb.pp("patch_drop")),
            norm_pre: config.norm(config.pre_norm, vb.pp("norm_pre"))?,
            blocks,
            norm: config.norm(config.final_norm && !fc_norm, vb.pp("norm"))?,
            fc_norm: config.norm(config.final_norm && fc_norm, vb.pp("fc_norm"))?,
            head_drop: Dropout::from_probability(config.drop_rate, vb.pp("head_drop").prefix())?,
            head,
            config: config.clone(),
            trace_map: Self::trace_map(config),
        })
    }

    /// timm's `blocks` is an `nn.Sequential`, whose output is its last block's.
    fn trace_map(config: &VitConfig) -> TraceMap {
        match config.depth.checked_sub(1) {
            Some(last) => TraceMap::new().alias(&format!(r"^blocks\.{last}$"), "blocks"),
            None => TraceMap::new().alias(r"^norm_pre$", "blocks"),
        }
    }
}

impl Vit {
    /// The configuration the model was built with.
    pub fn config(&self) -> &VitConfig {
        &self.config
    }

    /// The token sequence after the final norm, `[batch, tokens, embed_dim]`
    /// (timm's `forward_features`), for images `[batch, in_chans, height, width]`, in inference.
    pub fn forward_features(&self, images: &Tensor) -> candle_core::Result<Tensor> {
        self.features_t(images, false)
    }

    /// Pooling, `fc_norm` and the head: `[batch, tokens, embed_dim]` to logits
    /// `[batch, num_classes]` (the pooled features when there is no head), in inference.
    pub fn forward_head(&self, features: &Tensor) -> candle_core::Result<Tensor> {
        self.head_t(features, false)
    }

    /// Classification logits `[batch, num_classes]`, in inference (`forward_t(images, true)` trains).
    pub fn forward(&self, images: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_t(images, false)
    }

    /// The class probabilities (softmax over the logits), in inference.
    pub fn predict(&self, images: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::softmax(&self.forward(images)?, D::Minus1)
    }

    fn features_t(&self, images: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        replica_check::mapped(&self.trace_map, || self.run_features(images, train))
    }

    fn run_features(&self, images: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let x = self.patch_embed.forward(images).map_err(|e| {
            candle_core::Error::Msg(format!(
                "ViT ({}x{} images, {}x{} patches): {e}",
                self.config.img_size.height,
                self.config.img_size.width,
                self.config.patch_size.height,
                self.config.patch_size.width
            ))
        })?;
        let x = self.pos_embed(&x)?;
        // timm returns before its `pos_drop` when there is no position table.
        let x = match self.pos_embed {
            Some(_) => self.pos_drop.forward_t(&x, train)?,
            None => x,
        };
        let x = self.patch_drop.forward(&x)?;
        let mut x = self.norm_pre.forward(&x)?;
        for block in &self.blocks {
            x = block.forward_t(&x, None, None, train)?;
        }
        self.norm.forward(&x)
    }

    /// timm's `_pos_embed`: the class token, then the register tokens, in front of
    /// the patches, the position table added after (or, with `no_embed_class`, to
    /// the patches alone, before).
    fn pos_embed(&self, patches: &Tensor) -> candle_core::Result<Tensor> {
        let add_table = |x: Tensor| match &self.pos_embed {
            Some(table) => x.broadcast_add(&table.to_dtype(x.dtype())?),
            None => Ok(x),
        };
        let prefixed = |x: Tensor| -> candle_core::Result<Tensor> {
            let x = match &self.reg_token {
                Some(reg) => {
                    let reg = reg
                        .to_dtype(x.dtype())?
                        .broadcast_as((x.dim(0)?, reg.dim(1)?, reg.dim(2)?))?;
                    Tensor::cat(&[&reg, &x], 1)?
                }
                None => x,
            };
            match &self.cls_token {
                Some(cls) => cls.forward(&x),
                None => Ok(x),
            }
        };
        if self.config.no_embed_class {
            prefixed(add_table(patches.clone())?)
        } else {
            add_table(prefixed(patches.clone())?)
        }
    }

    /// timm's `global_pool_nlc`: the class token, or a reduction over the tokens
    /// (without the prefix tokens unless `pool_include_prefix`), or every token.
    fn pool(&self, features: &Tensor) -> candle_core::Result<Tensor> {
        let pool = self.config.global_pool.as_str();
        if pool.is_empty() {
            return Ok(features.clone());
        }
        if pool == "token" {
            return features.narrow(1, 0, 1)?.squeeze(1);
        }
        let prefix = if self.config.pool_include_prefix {
            0
        } else {
            self.config.num_prefix_tokens()
        };
        let tokens = features.dim(1)?.saturating_sub(prefix);
        let x = features.narrow(1, prefix, tokens)?;
        match pool {
            "max" => x.max(1),
            // As timm orders it: 0.5 * (max + mean).
            "avgmax" => (x.max(1)? + x.mean(1)?)? * 0.5,
            _ => x.mean(1),
        }
    }

    fn head_t(&self, features: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let pooled = self.pool(features)?;
        let pooled = self.head_drop.forward_t(&self.fc_norm.forward(&pooled)?, train)?;
        match &self.head {
            Head::Linear(head) => head.forward(&pooled),
            Head::Identity(identity) => identity.forward(&pooled),
        }
    }
}

impl ModuleT for Vit {
    /// Classification logits `[batch, num_classes]` for images `[batch, in_chans,
    /// height, width]`. `train` reaches every dropout, all at timm's default rate 0
    /// (`VitConfig` has no drop rates), so training computes what eval does.
    fn forward_t(&self, images: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.head_t(&self.features_t(images, train)?, train)
    }
}
