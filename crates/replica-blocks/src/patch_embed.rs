//! Patch embedding of the Vision Transformer: Dosovitskiy et al., "An Image is
//! Worth 16x16 Words", arXiv 2010.11929 (registry: [`crate::papers::VIT`]), as
//! timm's `PatchEmbed`.
//!
//! The image is cut into non-overlapping `patch_size` tiles and each tile is
//! projected linearly to `embed_dim` features: a `Conv2d` (`proj`) whose kernel
//! and stride are the patch size. The `[B, D, H/p, W/p]` grid is then flattened
//! to a sequence `[B, N, D]` (row-major over the grid) and optionally normalised.

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;
use replica_check::config_check::{all_positive, non_negative};
use replica_check::{ConfigCheck, Footprint, Size, Workload};
use serde::{Deserialize, Deserializer, Serialize};

use crate::{Norm, NormKind};

fn yes() -> bool {
    true
}

fn default_in_chans() -> usize {
    3
}

fn default_norm_eps() -> f64 {
    1e-5
}

/// A 2-D size, `(height, width)`; deserialises from `16` or `[16, 16]` as timm's
/// `to_2tuple` and HF configs allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(into = "[usize; 2]")]
pub struct Size2 {
    /// Rows (pixels, or patches for a grid).
    pub height: usize,
    /// Columns.
    pub width: usize,
}

impl Size2 {
    /// `height` by `width`.
    pub const fn new(height: usize, width: usize) -> Self {
        Self { height, width }
    }

    /// A square `side` by `side`.
    pub const fn square(side: usize) -> Self {
        Self::new(side, side)
    }
}

impl From<usize> for Size2 {
    fn from(side: usize) -> Self {
        Self::square(side)
    }
}

impl From<(usize, usize)> for Size2 {
    fn from((height, width): (usize, usize)) -> Self {
        Self::new(height, width)
    }
}

impl From<Size2> for [usize; 2] {
    fn from(size: Size2) -> Self {
        [size.height, size.width]
    }
}

impl<'de> Deserialize<'de> for Size2 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Side(usize),
            Pair([usize; 2]),
        }
        match Repr::deserialize(deserializer) {
            Ok(Repr::Side(side)) => Ok(Size2::square(side)),
            Ok(Repr::Pair([height, width])) => Ok(Size2::new(height, width)),
            Err(_) => Err(serde::de::Error::custom(
                "expected a size: an integer or a pair [height, width]",
            )),
        }
    }
}

/// The names of `PatchEmbed`'s submodules in the reference (the `state_dict` and trace paths).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchEmbedNames {
    /// The patch projection (a `Conv2d`).
    pub proj: String,
    /// The module after flattening: timm has `norm` (an `nn.Identity` without a
    /// norm layer, built as an [`Identity`](crate::Identity)); `None` when the reference has none.
    pub norm: Option<String>,
}

impl PatchEmbedNames {
    /// timm `PatchEmbed`: `proj`, `norm`.
    pub fn timm() -> Self {
        Self {
            proj: "proj".into(),
            norm: Some("norm".into()),
        }
    }

    /// HF `ViTPatchEmbeddings`: `projection`, no norm.
    pub fn hf_vit() -> Self {
        Self {
            proj: "projection".into(),
            norm: None,
        }
    }
}

impl Default for PatchEmbedNames {
    fn default() -> Self {
        Self::timm()
    }
}

/// timm `PatchEmbed(img_size, patch_size, in_chans, embed_dim, norm_layer, flatten, bias, strict_img_size)`;
/// the aliases read a HF ViT `config.json` (`image_size`, `num_channels`, `hidden_size`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PatchEmbedConfig {
    /// The image size the model was built for; with `strict_img_size`, inputs must have it.
    #[serde(default, alias = "image_size")]
    pub img_size: Option<Size2>,
    /// The patch (kernel and stride) size; HF `patch_size`.
    pub patch_size: Size2,
    /// Input image channels (HF `num_channels`); default 3.
    #[serde(default = "default_in_chans", alias = "num_channels", alias = "in_channels")]
    pub in_chans: usize,
    /// Features per patch (HF `hidden_size`).
    #[serde(alias = "hidden_size", alias = "dim")]
    pub embed_dim: usize,
    /// A bias on the projection; default on, as timm.
    #[serde(default = "yes")]
    pub bias: bool,
    /// A norm over the flattened sequence (timm `norm_layer`); `None`: identity.
    #[serde(default, alias = "norm_layer")]
    pub norm: Option<NormKind>,
    /// The epsilon of `norm` (HF `layer_norm_eps`); default 1e-5.
    #[serde(default = "default_norm_eps", alias = "layer_norm_eps")]
    pub norm_eps: f64,
    /// Flatten the grid to `[B, N, D]`; otherwise return the `[B, D, H/p, W/p]` grid.
    #[serde(default = "yes")]
    pub flatten: bool,
    /// Without `flatten`, return the grid channels-last, `[B, H/p, W/p, D]` (timm's
    /// `output_fmt='NHWC'`, as Swin uses it); the norm then runs on that layout.
    #[serde(default)]
    pub channels_last: bool,
    /// Refuse inputs whose size is not `img_size` (timm's default when `img_size` is set).
    #[serde(default = "yes")]
    pub strict_img_size: bool,
    /// The submodules' names; default [`PatchEmbedNames::timm`].
    #[serde(default)]
    pub names: PatchEmbedNames,
}

impl PatchEmbedConfig {
    /// `patch_size` tiles of `in_chans` channels to `embed_dim` features, timm's defaults
    /// otherwise: a biased projection, no norm, flattened output, no fixed image size.
    pub fn new(patch_size: impl Into<Size2>, in_chans: usize, embed_dim: usize) -> Self {
        Self {
            img_size: None,
            patch_size: patch_size.into(),
            in_chans,
            embed_dim,
            bias: true,
            norm: None,
            norm_eps: default_norm_eps(),
            flatten: true,
            channels_last: false,
            strict_img_size: true,
            names: PatchEmbedNames::default(),
        }
    }

    /// The patch grid `(rows, columns)` for `img_size`, when it is set.
    pub fn grid_size(&self) -> Option<Size2> {
        self.img_size
            .map(|size| Size2::new(size.height / self.patch_size.height, size.width / self.patch_size.width))
    }

    /// The number of patches of an `img_size` image, when it is set.
    pub fn num_patches(&self) -> Option<usize> {
        self.grid_size().map(|grid| grid.height * grid.width)
    }
}

impl ConfigCheck for PatchEmbedConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        let Size2 { height, width } = self.patch_size;
        if height == 0 || width == 0 {
            return Err(format!("the patch size must be positive, got {height}x{width}"));
        }
        if let Some(Size2 { height, width }) = self.img_size {
            all_positive(&[("img_size height", height), ("img_size width", width)])?;
        }
        all_positive(&[("in_chans", self.in_chans), ("embed_dim", self.embed_dim)])?;
        non_negative("norm_eps", self.norm_eps)?;
        if self.norm.is_some() && !self.flatten && !self.channels_last {
            return Err("a norm layer needs the flattened [B, N, D] or the channels-last output".into());
        }
        Ok(())
    }

    /// The kernel, and per image its tiles (a copy of the input) and `embed_dim`
    /// features per patch.
    fn footprint(&self, work: &Workload) -> Footprint {
        let Size2 { height, width } = self.patch_size;
        let (embed, chans) = (
            Size::field("embed_dim", self.embed_dim),
            Size::field("in_chans", self.in_chans),
        );
        let kernel = chans * Size::field("patch_size height", height) * Size::field("patch_size width", width);
        // Patches in the largest input: its elements over a patch's (saturating: an upper bound).
        let per_patch = (self.in_chans as u64)
            .saturating_mul(height as u64)
            .saturating_mul(width as u64);
        let patches = Size::count(work.elements / per_patch.max(1) + 1);
        Footprint {
            params: work.bytes(embed.clone() * kernel + embed.clone() * 3),
            activations: work.bytes(work.elements() * 2 + patches * embed * 3),
        }
    }
}

/// Images `[B, C, H, W]` to patch embeddings `[B, N, D]` (or the grid `[B, D, H/p, W/p]`).
#[derive(Clone, Debug)]
pub struct PatchEmbed {
    /// `[embed_dim, in_chans, patch_h, patch_w]`, the `Conv2d` layout.
    weight: Tensor,
    bias: Option<Tensor>,
    patch_size: Size2,
    img_size: Option<Size2>,
    strict_img_size: bool,
    flatten: bool,
    channels_last: bool,
    norm: Option<Norm>,
    proj_path: String,
    path: String,
}

impl PatchEmbed {
    /// Loads `weight` `[embed_dim, in_chans, patch_h, patch_w]` and `bias` `[embed_dim]` under
    /// `names.proj` at `vb`'s path (fresh: torch's `Conv2d` init), and the norm. Fails on an empty
    /// patch size, a norm without a flattened output, or a norm without a name.
    pub fn new(config: &PatchEmbedConfig, vb: VarBuilder) -> Result<Self> {
        let path = vb.prefix();
        crate::admit(&format!("patch_embed `{path}`"), config)?;
        let Size2 { height, width } = config.patch_size;
        let proj = vb.pp(&config.names.proj);
        let fan_in = config.in_chans * height * width;
        let bound = 1.0 / (fan_in as f64).sqrt();
        let weight = proj.get_with_hints(
            (config.embed_dim, config.in_chans, height, width),
            "weight",
            candle_nn::init::DEFAULT_KAIMING_UNIFORM,
        )?;
        let bias = config
            .bias
            .then(|| {
                proj.get_with_hints(
                    config.embed_dim,
                    "bias",
                    candle_nn::Init::Uniform { lo: -bound, up: bound },
                )
            })
            .transpose()?;
        let norm = match (&config.norm, &config.names.norm) {
            (Some(kind), Some(name)) => Some(Norm::new(*kind, config.embed_dim, config.norm_eps, vb.pp(name))?),
            (Some(_), None) => {
                candle_core::bail!("patch_embed `{path}`: a norm layer needs a name (`names.norm`)")
            }
            (None, name) => name.as_ref().map(|name| Norm::identity(vb.pp(name))),
        };
        Ok(Self {
            weight,
            bias,
            patch_size: config.patch_size,
            img_size: config.img_size,
            strict_img_size: config.strict_img_size,
            flatten: config.flatten,
            channels_last: config.channels_last,
            norm,
            proj_path: proj.prefix(),
            path,
        })
    }

    /// The projection's kernel, `[embed_dim, in_chans, patch_h, patch_w]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    fn check_input(&self, x: &Tensor) -> Result<(usize, usize)> {
        let (_, chans, patch_h, patch_w) = self.weight.dims4()?;
        let &[_, c, h, w] = x.dims() else {
            candle_core::bail!(
                "patch_embed `{}`: expects images [batch, channels, height, width], got shape {:?}",
                self.path,
                x.dims()
            )
        };
        if c != chans {
            candle_core::bail!(
                "patch_embed `{}`: the input has {c} channels, the projection expects {chans}",
                self.path
            )
        }
        if let Some(size) = self.img_size.filter(|_| self.strict_img_size) {
            if (h, w) != (size.height, size.width) {
                candle_core::bail!(
                    "patch_embed `{}`: the input is {h}x{w}, the model is built for {}x{} (strict_img_size)",
                    self.path,
                    size.height,
                    size.width
                )
            }
        }
        if h % patch_h != 0 || w % patch_w != 0 {
            candle_core::bail!(
                "patch_embed `{}`: the image size {h}x{w} is not divisible by the patch size {patch_h}x{patch_w}",
                self.path
            )
        }
        Ok((h / patch_h, w / patch_w))
    }

    /// The projection as `Conv2d(kernel = stride = patch)`: `[B, C, H, W] -> [B, D, H/p, W/p]`.
    fn project(&self, x: &Tensor, grid_size: (usize, usize)) -> Result<Tensor> {
        match x.dtype() {
            // As PyTorch: accumulate half precision in f32, add the bias, round once
            // (candle's CPU kernels round the sum and then the bias, an ulp apart).
            DType::F16 | DType::BF16 if x.device().is_cpu() => {
                let weight = self.weight.to_dtype(DType::F32)?;
                let bias = self.bias.as_ref().map(|b| b.to_dtype(DType::F32)).transpose()?;
                project(
                    &x.to_dtype(DType::F32)?,
                    &weight,
                    bias.as_ref(),
                    self.patch_size,
                    grid_size,
                )?
                .to_dtype(x.dtype())
            }
            _ => project(x, &self.weight, self.bias.as_ref(), self.patch_size, grid_size),
        }
    }

    /// Images `[B, C, H, W]` to patch embeddings `[B, N, D]`, `N = (H/ph)·(W/pw)` in row-major
    /// grid order (or the grid `[B, D, H/ph, W/pw]` without `flatten`). Fails on another
    /// channel count, an image size the patches do not divide, or, with `strict_img_size`, a
    /// size other than `img_size`. Records the projection's grid under `names.proj` and the
    /// result under this block's path.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let grid_size = self.check_input(x)?;
        let grid = self.project(x, grid_size)?;
        replica_check::tap(&self.proj_path, &grid);
        let x = if self.flatten {
            grid.flatten_from(2)?.transpose(1, 2)?.contiguous()?
        } else if self.channels_last {
            grid.permute((0, 2, 3, 1))?.contiguous()?
        } else {
            grid
        };
        // A norm layer needs channels last (flattened or NHWC, checked in `new`); timm's identity takes either.
        let y = match &self.norm {
            Some(norm) => norm.forward(&x)?,
            None => x,
        };
        replica_check::tap(&self.path, &y);
        Ok(y)
    }
}

impl candle_core::Module for PatchEmbed {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        PatchEmbed::forward(self, x)
    }
}

/// `Conv2d(kernel = stride = patch)` of `x` `[B, C, H, W]` with `weight`
/// `[D, C, ph, pw]`: `[B, D, H/ph, W/pw]`.
fn project(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    patch: Size2,
    (rows, cols): (usize, usize),
) -> Result<Tensor> {
    let Size2 { height, width } = patch;
    let grid = if height == width {
        x.conv2d(weight, 0, height, 1, 1)?
    } else {
        // candle's conv2d has one stride for both axes: cut the tiles out and
        // multiply by the flattened kernel, which is the same sum.
        let (batch, chans, _, _) = x.dims4()?;
        let dim = weight.dim(0)?;
        let tiles = x
            .reshape((batch, chans, rows, height, cols, width))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((batch, rows * cols, chans * height * width))?;
        let kernel = weight.reshape((dim, chans * height * width))?;
        tiles
            .broadcast_matmul(&kernel.t()?)?
            .reshape((batch, rows, cols, dim))?
            .permute((0, 3, 1, 2))?
            .contiguous()?
    };
    match bias {
        Some(bias) => grid.broadcast_add(&bias.reshape((1, (), 1, 1))?),
        None => Ok(grid),
    }
}
