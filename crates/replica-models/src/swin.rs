//! The Swin Transformer: Liu et al., "Swin Transformer: Hierarchical Vision
//! Transformer using Shifted Windows", arXiv 2103.14030. Reference: timm's
//! `SwinTransformer` (`swin_*` models).
//!
//! A patch embedding to a channels-last map `[B, H/p, W/p, C]` (normalised), then
//! stages (`layers.N`): each but the first starts with a patch merging
//! (`downsample`, halving the map and doubling the width; the first stage's is an
//! `nn.Identity`) and runs `depths[N]` Swin blocks, alternately with plain and
//! shifted windows (shift `window / 2`). A final norm, average pooling over the map
//! and a linear head (`head.fc`). Module paths are timm's, including the
//! `nn.Identity` placeholders of its `ClassifierHead`; the containers timm hooks
//! (`layers.N.blocks`, `layers.N`, `layers`) are the names the
//! [trace map](Architecture::trace_map) adds.

use candle_core::{DType, ModuleT, Tensor, D};
use candle_nn::VarBuilder;
use replica_blocks::dropout::Dropout;
use replica_blocks::patch_merging::{PatchMerging, PatchMergingConfig};
use replica_blocks::swin_block::{SwinBlock, SwinBlockConfig};
use replica_blocks::window_attention::MAX_WINDOW_SIDE;
use replica_blocks::{Identity, Linear, LinearConfig, Norm, NormKind, PatchEmbed, PatchEmbedConfig, Size2};
use replica_check::config_check::{at_most, drop_rate, finite_positive, non_negative};
use replica_check::{ConfigCheck, Footprint, Size, TraceMap, WeightMap, Workload};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
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
    Size2::square(4)
}
fn default_in_chans() -> usize {
    3
}
fn default_num_classes() -> usize {
    1000
}
fn default_global_pool() -> String {
    "avg".into()
}
fn default_embed_dim() -> usize {
    96
}
fn default_depths() -> Vec<usize> {
    vec![2, 2, 6, 2]
}
fn default_num_heads() -> Vec<usize> {
    vec![3, 6, 12, 24]
}
fn default_mlp_ratio() -> f64 {
    4.0
}
fn default_drop_path_rate() -> f64 {
    0.1
}
fn default_norm_eps() -> f64 {
    1e-5
}

/// The most stages accepted (the width doubles per stage).
const MAX_STAGES: usize = 16;

/// timm's `window_size`: one window for every stage (`7`, `[7, 7]`), or one per
/// stage (`[7, [6, 8], 7, 7]`); a list of two integers is one `(height, width)`
/// window, as timm's `resolve_stage_window_sizes` reads it.
#[derive(Clone, Debug, PartialEq)]
pub enum WindowSizes {
    /// The same window in every stage.
    All(Size2),
    /// One window per stage.
    PerStage(Vec<Size2>),
}

impl WindowSizes {
    /// The window of each of `stages` stages; fails when a per-stage list has another length.
    pub fn resolve(&self, stages: usize) -> std::result::Result<Vec<Size2>, String> {
        match self {
            Self::All(window) => Ok(vec![*window; stages]),
            Self::PerStage(windows) if windows.len() == stages => Ok(windows.clone()),
            Self::PerStage(windows) => Err(format!(
                "window_size has {} stage windows, depths has {stages} stages",
                windows.len()
            )),
        }
    }
}

impl Serialize for WindowSizes {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Self::All(window) => window.serialize(serializer),
            Self::PerStage(windows) => windows.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for WindowSizes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Side(usize),
            Sides(Vec<usize>),
            Windows(Vec<Size2>),
        }
        match Repr::deserialize(deserializer) {
            Ok(Repr::Side(side)) => Ok(Self::All(Size2::square(side))),
            Ok(Repr::Sides(sides)) if sides.len() == 2 => Ok(Self::All(Size2::new(sides[0], sides[1]))),
            Ok(Repr::Sides(sides)) => Ok(Self::PerStage(sides.into_iter().map(Size2::square).collect())),
            Ok(Repr::Windows(windows)) => Ok(Self::PerStage(windows)),
            Err(_) => Err(serde::de::Error::custom(
                "expected a window size: an integer, [height, width], or one of those per stage",
            )),
        }
    }
}

fn default_window_size() -> WindowSizes {
    WindowSizes::All(Size2::square(7))
}

/// The keyword arguments of timm's `SwinTransformer(...)`, with its defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SwinConfig {
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
    /// The head's pooling: `avg` (the mean over the map), the only one implemented.
    #[serde(default = "default_global_pool")]
    pub global_pool: String,
    /// The first stage's width; stage `i` is `embed_dim · 2^i` wide.
    #[serde(default = "default_embed_dim")]
    pub embed_dim: usize,
    /// Blocks per stage.
    #[serde(default = "default_depths")]
    pub depths: Vec<usize>,
    /// Attention heads per stage.
    #[serde(default = "default_num_heads")]
    pub num_heads: Vec<usize>,
    /// Channels per head; `None`: each stage's width over its heads.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// The attention window, for all stages or per stage.
    #[serde(default = "default_window_size")]
    pub window_size: WindowSizes,
    /// Keep the window and shift even where a stage's map is no larger than the window.
    #[serde(default)]
    pub always_partition: bool,
    /// Refuse images of another size than `img_size`.
    #[serde(default = "yes")]
    pub strict_img_size: bool,
    /// Accept any image size (timm: the same as `strict_img_size: false`).
    #[serde(default)]
    pub dynamic_img_size: bool,
    /// The MLP's hidden width over each stage's width.
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    /// A bias on the fused `qkv` projections.
    #[serde(default = "yes")]
    pub qkv_bias: bool,
    /// Dropout before the head, in training.
    #[serde(default)]
    pub drop_rate: f64,
    /// Dropout after the attention and MLP projections, in training.
    #[serde(default)]
    pub proj_drop_rate: f64,
    /// Dropout on the attention probabilities, in training.
    #[serde(default)]
    pub attn_drop_rate: f64,
    /// The last block's stochastic depth rate; block `k` of `n` gets `rate · k / (n - 1)`.
    #[serde(default = "default_drop_path_rate")]
    pub drop_path_rate: f64,
    /// timm's initialisation scheme; a loaded model does not depend on it.
    #[serde(default)]
    pub weight_init: String,
    /// Not a timm argument: the LayerNorms' epsilon (`nn.LayerNorm`'s 1e-5).
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
}

impl ModelConfig for SwinConfig {}

impl Default for SwinConfig {
    fn default() -> Self {
        serde_json::from_value(json!({})).expect("every field has a default")
    }
}

impl SwinConfig {
    /// Patches per column and per row.
    pub fn grid(&self) -> Size2 {
        Size2::new(
            self.img_size.height / self.patch_size.height.max(1),
            self.img_size.width / self.patch_size.width.max(1),
        )
    }

    /// Whether images of another size than `img_size` are accepted.
    fn dynamic(&self) -> bool {
        self.dynamic_img_size || !self.strict_img_size
    }

    /// Stage `i`'s width, `embed_dim · 2^i`.
    pub fn stage_dim(&self, stage: usize) -> usize {
        self.embed_dim << stage
    }

    /// The width of the final features, the last stage's.
    pub fn num_features(&self) -> usize {
        self.stage_dim(self.depths.len().saturating_sub(1))
    }

    /// Each stage's map size for `img_size`: the grid, then halved (rounding up) by each merging.
    pub fn stage_resolutions(&self) -> Vec<Size2> {
        let mut size = self.grid();
        (0..self.depths.len())
            .map(|stage| {
                if stage > 0 {
                    size = Size2::new(size.height.div_ceil(2), size.width.div_ceil(2));
                }
                size
            })
            .collect()
    }

    /// timm's `calculate_drop_path_rates(drop_path_rate, depths, stagewise=True)`:
    /// a linear ramp from 0 over all blocks, split by stage.
    pub fn drop_path_rates(&self) -> Vec<Vec<f64>> {
        let total: usize = self.depths.iter().sum();
        let rate = |k: usize| match total {
            0 | 1 => 0.0,
            _ => self.drop_path_rate * k as f64 / (total - 1) as f64,
        };
        let mut k = 0;
        self.depths
            .iter()
            .map(|&depth| {
                (0..depth)
                    .map(|_| {
                        k += 1;
                        rate(k - 1)
                    })
                    .collect()
            })
            .collect()
    }

    /// Block `block` of stage `stage`, as `SwinTransformerStage` builds it.
    pub fn block_config(&self, stage: usize, block: usize, window: Size2, drop_path: f64) -> SwinBlockConfig {
        let shift = if block.is_multiple_of(2) {
            Size2::square(0)
        } else {
            Size2::new(window.height / 2, window.width / 2)
        };
        SwinBlockConfig {
            head_dim: self.head_dim,
            window_size: window,
            shift_size: shift,
            always_partition: self.always_partition,
            dynamic_mask: self.dynamic(),
            mlp_ratio: self.mlp_ratio,
            qkv_bias: self.qkv_bias,
            proj_drop: self.proj_drop_rate,
            attn_drop: self.attn_drop_rate,
            drop_path,
            norm_eps: self.norm_eps,
            ..SwinBlockConfig::new(
                self.stage_dim(stage),
                self.stage_resolutions()[stage],
                self.num_heads[stage],
            )
        }
    }

    /// timm's `patch_embed`: a normalised channels-last map.
    fn patch_embed_config(&self) -> PatchEmbedConfig {
        PatchEmbedConfig {
            img_size: Some(self.img_size),
            norm: Some(NormKind::LayerNorm),
            norm_eps: self.norm_eps,
            flatten: false,
            channels_last: true,
            strict_img_size: !self.dynamic(),
            ..PatchEmbedConfig::new(self.patch_size, self.in_chans, self.embed_dim)
        }
    }
}

impl ConfigCheck for SwinConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        let stages = self.depths.len();
        if stages == 0 || stages > MAX_STAGES {
            return Err(format!("depths must list 1 to {MAX_STAGES} stages, got {stages}"));
        }
        if self.num_heads.len() != stages {
            return Err(format!(
                "num_heads has {} entries, depths has {stages} stages",
                self.num_heads.len()
            ));
        }
        for (stage, (&depth, &heads)) in self.depths.iter().zip(&self.num_heads).enumerate() {
            positive(&[("depths", depth), ("num_heads", heads)])?;
            at_most(&format!("depths[{stage}]"), depth, 1 << 10)?;
            at_most(&format!("num_heads[{stage}]"), heads, 1 << 16)?;
        }
        positive(&[
            ("img_size", self.img_size.height.min(self.img_size.width)),
            ("patch_size", self.patch_size.height.min(self.patch_size.width)),
            ("in_chans", self.in_chans),
            ("embed_dim", self.embed_dim),
        ])?;
        at_most("embed_dim", self.embed_dim, 1 << 20)?;
        at_most("in_chans", self.in_chans, 1 << 16)?;
        at_most("num_classes", self.num_classes, 1 << 24)?;
        at_most("img_size height", self.img_size.height, 1 << 16)?;
        at_most("img_size width", self.img_size.width, 1 << 16)?;
        if self.embed_dim.checked_mul(1 << (stages - 1)).is_none() {
            return Err(format!(
                "embed_dim {} doubled over {stages} stages overflows",
                self.embed_dim
            ));
        }
        at_most(
            "the last stage's width (embed_dim * 2^(stages - 1))",
            self.num_features(),
            1 << 24,
        )?;
        let (img, patch) = (self.img_size, self.patch_size);
        if img.height % patch.height != 0 || img.width % patch.width != 0 {
            return Err(format!(
                "img_size {}x{} is not divisible by patch_size {}x{}",
                img.height, img.width, patch.height, patch.width
            ));
        }
        if self.global_pool != "avg" {
            return Err(format!(
                "global_pool `{}` is not implemented (use `avg`)",
                self.global_pool
            ));
        }
        finite_positive("mlp_ratio", self.mlp_ratio)?;
        for (field, rate) in [
            ("drop_rate", self.drop_rate),
            ("proj_drop_rate", self.proj_drop_rate),
            ("attn_drop_rate", self.attn_drop_rate),
            ("drop_path_rate", self.drop_path_rate),
        ] {
            drop_rate(field, rate)?;
        }
        non_negative("norm_eps", self.norm_eps)?;
        let windows = self.window_size.resolve(stages)?;
        for window in &windows {
            positive(&[("window_size", window.height.min(window.width))])?;
            at_most("window_size", window.height.max(window.width), MAX_WINDOW_SIDE)?;
        }
        self.patch_embed_config().validate()?;
        for (stage, window) in windows.into_iter().enumerate() {
            for block in 0..self.depths[stage].min(2) {
                self.block_config(stage, block, window, 0.0)
                    .validate()
                    .map_err(|m| format!("layers.{stage}.blocks.{block}: {m}"))?;
            }
        }
        Ok(())
    }

    /// The patch embedding, each stage's blocks and merging on its map, the head.
    fn footprint(&self, work: &Workload) -> Footprint {
        let batch = work.batch.max(1);
        let windows = self.window_size.resolve(self.depths.len()).unwrap_or_default();
        let mut total = self.patch_embed_config().footprint(work);
        for (stage, size) in self.stage_resolutions().into_iter().enumerate() {
            let dim = self.stage_dim(stage);
            let tokens = (size.height as u64).saturating_mul(size.width as u64);
            let hidden = Workload::tokens(batch, tokens, dim, work.element_bytes);
            if let Some(&window) = windows.get(stage) {
                let blocks = self
                    .block_config(stage, 1, window, 0.0)
                    .footprint(&hidden)
                    .times(Size::field("depths", self.depths[stage]));
                total = total + blocks;
            }
            if stage > 0 {
                let merging = PatchMergingConfig::new(self.stage_dim(stage - 1));
                total = total + merging.footprint(&hidden);
            }
        }
        let features = Size::field("embed_dim", self.num_features());
        let classes = Size::field("num_classes", self.num_classes);
        total
            + Footprint {
                params: work.bytes(features.clone() * (classes.clone() + Size::count(3))),
                activations: work.bytes(Size::count(batch) * (features + classes)),
            }
    }
}

/// The head's classifier, or the `nn.Identity` timm keeps there without classes.
#[derive(Clone, Debug)]
enum Classifier {
    Linear(Linear),
    Identity(Identity),
}

/// A stage's downsampling: patch merging, or the first stage's `nn.Identity`.
#[derive(Clone, Debug)]
enum Downsample {
    Merge(PatchMerging),
    Identity(Identity),
}

/// timm's `SwinTransformerStage`: `downsample`, then `blocks`.
#[derive(Clone, Debug)]
struct Stage {
    downsample: Downsample,
    blocks: Vec<SwinBlock>,
}

impl Stage {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let mut x = match &self.downsample {
            Downsample::Merge(merge) => merge.forward(x)?,
            Downsample::Identity(identity) => identity.forward(x)?,
        };
        for block in &self.blocks {
            x = block.forward_t(&x, train)?;
        }
        Ok(x)
    }
}

/// timm's `ClassifierHead` on a channels-last map: `global_pool` (`pool`, the
/// mean over the map; `flatten`), `drop`, `fc`, `flatten`.
#[derive(Clone, Debug)]
struct Head {
    pool_flatten: Identity,
    drop: Dropout,
    fc: Classifier,
    flatten: Identity,
    pool_path: String,
    global_pool_path: String,
    path: String,
}

impl Head {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        // As PyTorch: the mean of half precision accumulated in f32, rounded once.
        let pooled = x.to_dtype(DType::F32)?.mean((1, 2))?.to_dtype(x.dtype())?;
        replica_check::tap(&self.pool_path, &pooled);
        let pooled = self.pool_flatten.forward(&pooled)?;
        replica_check::tap(&self.global_pool_path, &pooled);
        let pooled = self.drop.forward_t(&pooled, train)?;
        let y = match &self.fc {
            Classifier::Linear(fc) => fc.forward(&pooled)?,
            Classifier::Identity(identity) => identity.forward(&pooled)?,
        };
        let y = self.flatten.forward(&y)?;
        replica_check::tap(&self.path, &y);
        Ok(y)
    }
}

/// timm's `SwinTransformer`.
#[derive(Clone, Debug)]
pub struct Swin {
    patch_embed: PatchEmbed,
    layers: Vec<Stage>,
    norm: Norm,
    head: Head,
    config: SwinConfig,
    trace_map: TraceMap,
}

fn swin_config(embed_dim: usize, depths: [usize; 4], num_heads: [usize; 4]) -> Value {
    json!({
        "img_size": 224, "patch_size": 4, "in_chans": 3, "num_classes": 1000, "global_pool": "avg",
        "embed_dim": embed_dim, "depths": depths, "num_heads": num_heads, "window_size": 7,
        "mlp_ratio": 4.0, "qkv_bias": true,
    })
}

impl Architecture for Swin {
    type Config = SwinConfig;

    const FAMILY: Family = Family {
        name: "Swin",
        reference: "timm.models.swin_transformer.SwinTransformer",
        paper: replica_blocks::papers::SWIN,
        checkpoint_naming: "timm swin_*: patch_embed.{proj,norm}, layers.N.downsample.{norm,reduction}, \
                            layers.N.blocks.M.{norm1,attn.qkv,attn.relative_position_bias_table,attn.proj,\
                            norm2,mlp.fc1,mlp.fc2}, norm, head.fc",
        signature: r"^layers\.\d+\.blocks\.\d+\.attn\.relative_position_bias_table$",
        example_tensor: "layers.0.blocks.0.attn.relative_position_bias_table",
    };

    const PRESETS: &'static [Preset] = &[
        Preset {
            name: "swin_tiny_patch4_window7_224",
            paper: replica_blocks::papers::SWIN,
            checkpoint: "timm swin_tiny_patch4_window7_224.ms_in1k",
            description: "Swin-T at 224x224: depths (2, 2, 6, 2), width 96, heads (3, 6, 12, 24), ImageNet-1k head",
            config: || swin_config(96, [2, 2, 6, 2], [3, 6, 12, 24]),
        },
        Preset {
            name: "swin_small_patch4_window7_224",
            paper: replica_blocks::papers::SWIN,
            checkpoint: "timm swin_small_patch4_window7_224.ms_in22k_ft_in1k",
            description: "Swin-S at 224x224: depths (2, 2, 18, 2), width 96, heads (3, 6, 12, 24), ImageNet-1k head",
            config: || swin_config(96, [2, 2, 18, 2], [3, 6, 12, 24]),
        },
        Preset {
            name: "swin_base_patch4_window7_224",
            paper: replica_blocks::papers::SWIN,
            checkpoint: "timm swin_base_patch4_window7_224.ms_in22k_ft_in1k",
            description: "Swin-B at 224x224: depths (2, 2, 18, 2), width 128, heads (4, 8, 16, 32), ImageNet-1k head",
            config: || swin_config(128, [2, 2, 18, 2], [4, 8, 16, 32]),
        },
    ];

    /// Checkpoints in timm's layout (the `timm/` hub weights) load as they are; the
    /// buffers older ones also store (`relative_position_index`, `attn_mask`, which
    /// the model computes) are left out, as timm's `checkpoint_filter_fn` does.
    fn weight_map(_config: &SwinConfig) -> WeightMap {
        WeightMap::new()
            .ignore(r"\.relative_position_index$")
            .ignore(r"\.attn_mask$")
    }

    /// Builds the model under `vb` (the checkpoint's root), with timm's module paths.
    fn new(config: &SwinConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        Self::check(config)?;
        let patch_embed = PatchEmbed::new(&config.patch_embed_config(), vb.pp("patch_embed"))?;
        let windows = config
            .window_size
            .resolve(config.depths.len())
            .map_err(candle_core::Error::Msg)?;
        let rates = config.drop_path_rates();
        let mut layers = Vec::with_capacity(config.depths.len());
        for (stage, window) in windows.into_iter().enumerate() {
            let vb = vb.pp("layers").pp(stage);
            let downsample = if stage == 0 {
                Downsample::Identity(Identity::new(vb.pp("downsample")))
            } else {
                let merging = PatchMergingConfig {
                    out_dim: Some(config.stage_dim(stage)),
                    norm_eps: config.norm_eps,
                    ..PatchMergingConfig::new(config.stage_dim(stage - 1))
                };
                Downsample::Merge(PatchMerging::new(&merging, vb.pp("downsample"))?)
            };
            let blocks = (0..config.depths[stage])
                .map(|block| {
                    let block_config = config.block_config(stage, block, window, rates[stage][block]);
                    SwinBlock::new(&block_config, vb.pp("blocks").pp(block))
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            layers.push(Stage { downsample, blocks });
        }
        let features = config.num_features();
        let norm = Norm::new(NormKind::LayerNorm, features, config.norm_eps, vb.pp("norm"))?;
        let head_vb = vb.pp("head");
        let fc = if config.num_classes > 0 {
            Classifier::Linear(Linear::new(
                &LinearConfig::new(features, config.num_classes),
                head_vb.pp("fc"),
            )?)
        } else {
            Classifier::Identity(Identity::new(head_vb.pp("fc")))
        };
        let head = Head {
            pool_flatten: Identity::new(head_vb.pp("global_pool").pp("flatten")),
            drop: Dropout::from_probability(config.drop_rate, head_vb.pp("drop").prefix())?,
            fc,
            flatten: Identity::new(head_vb.pp("flatten")),
            pool_path: head_vb.pp("global_pool").pp("pool").prefix(),
            global_pool_path: head_vb.pp("global_pool").prefix(),
            path: head_vb.prefix(),
        };
        Ok(Self {
            patch_embed,
            layers,
            norm,
            head,
            config: config.clone(),
            trace_map: Self::trace_map(config),
        })
    }

    /// timm's `nn.Sequential` containers output their last module's output:
    /// `layers.N.blocks` and `layers.N` are stage `N`'s last block, `layers` the last stage.
    fn trace_map(config: &SwinConfig) -> TraceMap {
        let mut map = TraceMap::new();
        let stages = config.depths.len();
        for (stage, &depth) in config.depths.iter().enumerate() {
            let last = match depth.checked_sub(1) {
                Some(last) => format!(r"^layers\.{stage}\.blocks\.{last}$"),
                None => format!(r"^layers\.{stage}\.downsample$"),
            };
            map = map
                .alias(&last, &format!("layers.{stage}.blocks"))
                .alias(&format!(r"^layers\.{stage}\.blocks$"), &format!("layers.{stage}"));
            if stage + 1 == stages {
                map = map.alias(&format!(r"^layers\.{stage}$"), "layers");
            }
        }
        map
    }
}

impl Swin {
    /// The configuration the model was built with.
    pub fn config(&self) -> &SwinConfig {
        &self.config
    }

    /// The normalised last-stage map `[batch, height, width, num_features]` (timm's
    /// `forward_features`), for images `[batch, in_chans, height, width]`, in inference.
    pub fn forward_features(&self, images: &Tensor) -> candle_core::Result<Tensor> {
        self.features_t(images, false)
    }

    /// Pooling and the head: a map `[batch, height, width, num_features]` to logits
    /// `[batch, num_classes]` (the pooled features when there is no head), in inference.
    pub fn forward_head(&self, features: &Tensor) -> candle_core::Result<Tensor> {
        replica_check::mapped(&self.trace_map, || self.head.forward_t(features, false))
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
        let mut x = self.patch_embed.forward(images).map_err(|e| {
            candle_core::Error::Msg(format!(
                "Swin ({}x{} images, {}x{} patches): {e}",
                self.config.img_size.height,
                self.config.img_size.width,
                self.config.patch_size.height,
                self.config.patch_size.width
            ))
        })?;
        for stage in &self.layers {
            x = stage.forward_t(&x, train)?;
        }
        self.norm.forward(&x)
    }
}

impl ModuleT for Swin {
    /// Classification logits `[batch, num_classes]` for images `[batch, in_chans,
    /// height, width]`; `train` reaches every dropout and stochastic depth.
    fn forward_t(&self, images: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let features = self.features_t(images, train)?;
        replica_check::mapped(&self.trace_map, || self.head.forward_t(&features, train))
    }
}
