//! The Swin Transformer block: Liu et al., "Swin Transformer: Hierarchical Vision
//! Transformer using Shifted Windows", arXiv 2103.14030 (registry:
//! [`crate::papers::SWIN`]), as timm's `SwinTransformerBlock`.
//!
//! A pre-norm block on a channels-last map `[B, H, W, C]` (eq. 3):
//!
//! ```text
//! x = x + DropPath((S)W-MSA(LN(x)))        norm1, attn, drop_path1
//! x = x + DropPath(MLP(LN(x)))             norm2, mlp, drop_path2 (on [B, H·W, C])
//! ```
//!
//! (S)W-MSA, in timm's order: a cyclic shift of the map by `-shift` (when there is
//! one), zero padding at the end of each axis up to whole windows, attention within
//! each window (with the shifted-window mask, built on the padded map, when
//! shifted), the windows put back, the padding cut off, the shift undone.
//!
//! As timm, unless `always_partition` is set, a map no larger than the window
//! along an axis gets a window of the map's size there and no shift (timm's
//! `_calc_window_shift`, from `input_resolution`).

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use replica_check::config_check::{all_positive, at_most, drop_rate, finite_positive, non_negative};
use replica_check::{ConfigCheck, Footprint, Size, Workload};
use serde::{Deserialize, Serialize};

use crate::window::{shifted_window_mask, window_partition, window_reverse};
use crate::window_attention::{WindowAttention, WindowAttentionConfig, MAX_WINDOW_SIDE};
use crate::{DropPath, DropPathConfig, Mlp, MlpConfig, MlpNames, Norm, NormKind, Size2};

fn yes() -> bool {
    true
}
fn default_heads() -> usize {
    4
}
fn default_window() -> Size2 {
    Size2::square(7)
}
fn no_shift() -> Size2 {
    Size2::square(0)
}
fn default_mlp_ratio() -> f64 {
    4.0
}
fn default_norm_eps() -> f64 {
    1e-5
}

/// timm `SwinTransformerBlock(dim, input_resolution, num_heads, head_dim, window_size,
/// shift_size, always_partition, dynamic_mask, mlp_ratio, qkv_bias, proj_drop,
/// attn_drop, drop_path)`, with timm's defaults (`act_layer` GELU, `norm_layer` LayerNorm).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SwinBlockConfig {
    /// Channels.
    pub dim: usize,
    /// The map size the block is built for: it sets the window and shift actually used.
    pub input_resolution: Size2,
    /// Attention heads (timm's default 4).
    #[serde(default = "default_heads")]
    pub num_heads: usize,
    /// Channels per head; `None`: `dim / num_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// The window asked for (timm's default 7).
    #[serde(default = "default_window")]
    pub window_size: Size2,
    /// The cyclic shift asked for (0: W-MSA, else SW-MSA; timm's stages use `window / 2`).
    #[serde(default = "no_shift")]
    pub shift_size: Size2,
    /// Keep the window and shift even where the map is no larger than the window.
    #[serde(default)]
    pub always_partition: bool,
    /// timm builds the mask on each call instead of once; the same mask, so no
    /// difference here (the mask is always built from the padded map).
    #[serde(default)]
    pub dynamic_mask: bool,
    /// The MLP's hidden width over `dim`.
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    /// A bias on the fused `qkv` projection.
    #[serde(default = "yes")]
    pub qkv_bias: bool,
    /// Dropout after the attention and MLP projections, in training.
    #[serde(default)]
    pub proj_drop: f64,
    /// Dropout on the attention probabilities, in training.
    #[serde(default)]
    pub attn_drop: f64,
    /// Stochastic depth on both residual branches, in training.
    #[serde(default)]
    pub drop_path: f64,
    /// Not a timm argument: the LayerNorms' epsilon (`nn.LayerNorm`'s 1e-5).
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
}

impl SwinBlockConfig {
    /// A block of `dim` channels and `num_heads` heads on a `resolution` map, timm's
    /// defaults otherwise (window 7, no shift, MLP ratio 4).
    pub fn new(dim: usize, resolution: impl Into<Size2>, num_heads: usize) -> Self {
        Self {
            dim,
            input_resolution: resolution.into(),
            num_heads,
            head_dim: None,
            window_size: default_window(),
            shift_size: no_shift(),
            always_partition: false,
            dynamic_mask: false,
            mlp_ratio: default_mlp_ratio(),
            qkv_bias: true,
            proj_drop: 0.0,
            attn_drop: 0.0,
            drop_path: 0.0,
            norm_eps: default_norm_eps(),
        }
    }

    /// The window and shift actually used (timm's `_calc_window_shift`): per axis, a
    /// map no larger than the window gets the map's size and no shift, unless
    /// `always_partition`.
    pub fn window_and_shift(&self) -> (Size2, Size2) {
        if self.always_partition {
            return (self.window_size, self.shift_size);
        }
        let axis = |r: usize, w: usize, s: usize| if r <= w { (r, 0) } else { (w, s) };
        let (wh, sh) = axis(
            self.input_resolution.height,
            self.window_size.height,
            self.shift_size.height,
        );
        let (ww, sw) = axis(
            self.input_resolution.width,
            self.window_size.width,
            self.shift_size.width,
        );
        (Size2::new(wh, ww), Size2::new(sh, sw))
    }

    /// The MLP's hidden width, `int(dim · mlp_ratio)`.
    pub fn mlp_hidden(&self) -> usize {
        (self.dim as f64 * self.mlp_ratio) as usize
    }

    /// The attention's config, on the window actually used.
    pub fn attention_config(&self) -> WindowAttentionConfig {
        WindowAttentionConfig {
            head_dim: self.head_dim,
            qkv_bias: self.qkv_bias,
            attn_drop: self.attn_drop,
            proj_drop: self.proj_drop,
            ..WindowAttentionConfig::new(self.dim, self.num_heads, self.window_and_shift().0)
        }
    }

    /// The MLP's config: timm's `Mlp` (GELU, `fc1`, `act`, `drop1`, `norm`, `fc2`, `drop2`).
    pub fn mlp_config(&self) -> MlpConfig {
        MlpConfig {
            dropout: self.proj_drop,
            names: MlpNames::timm(),
            ..MlpConfig::new(self.dim, self.mlp_hidden())
        }
    }
}

impl ConfigCheck for SwinBlockConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        all_positive(&[
            ("dim", self.dim),
            ("input_resolution height", self.input_resolution.height),
            ("input_resolution width", self.input_resolution.width),
            ("window_size height", self.window_size.height),
            ("window_size width", self.window_size.width),
        ])?;
        at_most("input_resolution height", self.input_resolution.height, 1 << 16)?;
        at_most("input_resolution width", self.input_resolution.width, 1 << 16)?;
        at_most("window_size height", self.window_size.height, MAX_WINDOW_SIDE)?;
        at_most("window_size width", self.window_size.width, MAX_WINDOW_SIDE)?;
        let (window, shift) = self.window_and_shift();
        let too_far = |shift: usize, window: usize| shift > 0 && shift >= window;
        if too_far(shift.height, window.height) || too_far(shift.width, window.width) {
            return Err(format!(
                "shift_size {}x{} must be smaller than the window {}x{} in use",
                shift.height, shift.width, window.height, window.width
            ));
        }
        finite_positive("mlp_ratio", self.mlp_ratio)?;
        at_most("mlp hidden width (dim * mlp_ratio)", self.mlp_hidden(), 1 << 26)?;
        all_positive(&[("mlp hidden width (dim * mlp_ratio)", self.mlp_hidden())])?;
        drop_rate("proj_drop", self.proj_drop)?;
        drop_rate("drop_path", self.drop_path)?;
        non_negative("norm_eps", self.norm_eps)?;
        self.attention_config().validate()?;
        self.mlp_config().validate()
    }

    /// Two norms, the attention (on the padded map) and the MLP.
    fn footprint(&self, work: &Workload) -> Footprint {
        let dim = Size::field("dim", self.dim);
        let norms = Footprint {
            params: work.bytes(dim.clone() * Size::count(4)),
            activations: work.bytes(work.rows() * dim * Size::count(8)),
        };
        // Padding adds less than a window per row and column: four times the tokens bounds it.
        let batch = work.batch.max(1);
        let len = (work.rows / batch).max(1);
        let tokens = Workload::tokens(batch, len, self.dim, work.element_bytes);
        let padded = Workload::tokens(batch, len.saturating_mul(4), self.dim, work.element_bytes);
        norms + self.attention_config().footprint(&padded) + self.mlp_config().footprint(&tokens)
    }
}

/// timm's `SwinTransformerBlock`.
#[derive(Clone, Debug)]
pub struct SwinBlock {
    norm1: Norm,
    attn: WindowAttention,
    drop_path1: DropPath,
    norm2: Norm,
    mlp: Mlp,
    drop_path2: DropPath,
    window: Size2,
    shift: Size2,
    dim: usize,
    path: String,
}

impl SwinBlock {
    /// Loads `norm1`, `attn`, `norm2` and `mlp` at `vb`'s path.
    pub fn new(config: &SwinBlockConfig, vb: VarBuilder) -> Result<Self> {
        let path = vb.prefix();
        crate::admit(&format!("swin block `{path}`"), config)?;
        let (window, shift) = config.window_and_shift();
        let drop_path = DropPathConfig::new(config.drop_path);
        Ok(Self {
            norm1: Norm::new(NormKind::LayerNorm, config.dim, config.norm_eps, vb.pp("norm1"))?,
            attn: WindowAttention::new(&config.attention_config(), vb.pp("attn"))?,
            drop_path1: DropPath::from_config(&drop_path, vb.pp("drop_path1").prefix())?,
            norm2: Norm::new(NormKind::LayerNorm, config.dim, config.norm_eps, vb.pp("norm2"))?,
            mlp: Mlp::new(&config.mlp_config(), vb.pp("mlp"))?,
            drop_path2: DropPath::from_config(&drop_path, vb.pp("drop_path2").prefix())?,
            window,
            shift,
            dim: config.dim,
            path,
        })
    }

    /// The window and the shift in use.
    pub fn window_and_shift(&self) -> (Size2, Size2) {
        (self.window, self.shift)
    }

    /// (S)W-MSA on a normalised map `[B, H, W, C]`: shift, pad, attend per window, undo.
    fn shifted_window_attention(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (_, h, w, c) = x.dims4()?;
        let (window, shift) = (self.window, self.shift);
        let shifted = shift.height > 0 || shift.width > 0;
        let x = if shifted {
            x.roll(-(shift.height as i32), 1)?.roll(-(shift.width as i32), 2)?
        } else {
            x.clone()
        };
        let pad_h = (window.height - h % window.height) % window.height;
        let pad_w = (window.width - w % window.width) % window.width;
        let x = x.pad_with_zeros(1, 0, pad_h)?.pad_with_zeros(2, 0, pad_w)?;
        let (hp, wp) = (h + pad_h, w + pad_w);
        let mask = shifted
            .then(|| shifted_window_mask(hp, wp, window, shift, x.dtype(), x.device()))
            .transpose()?;
        let windows = self
            .attn
            .forward_t(&window_partition(&x, window)?, mask.as_ref(), train)?;
        let x = window_reverse(&windows.reshape(((), window.height * window.width, c))?, window, hp, wp)?;
        let x = x.narrow(1, 0, h)?.narrow(2, 0, w)?;
        if shifted {
            x.roll(shift.height as i32, 1)?.roll(shift.width as i32, 2)
        } else {
            Ok(x)
        }
    }

    /// A map `[B, H, W, dim]` to `[B, H, W, dim]`; dropout and stochastic depth only
    /// when `train`. Records `norm1`, `attn.*`, `drop_path1`, `norm2`, `mlp.*`,
    /// `drop_path2` and its own output.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let &[b, h, w, c] = x.dims() else {
            candle_core::bail!(
                "swin block `{}`: expects a channels-last map [batch, height, width, {}], got shape {:?}",
                self.path,
                self.dim,
                x.dims()
            )
        };
        if c != self.dim {
            candle_core::bail!(
                "swin block `{}`: the map has {c} channels, the block expects {}",
                self.path,
                self.dim
            )
        }
        let attended = self.shifted_window_attention(&self.norm1.forward(x)?, train)?;
        let x = (x + self.drop_path1.forward_t(&attended, train)?)?.reshape((b, h * w, c))?;
        let y = self.mlp.forward_t(&self.norm2.forward(&x)?, train)?;
        let x = (&x + self.drop_path2.forward_t(&y, train)?)?.reshape((b, h, w, c))?;
        replica_check::tap(&self.path, &x);
        Ok(x)
    }

    /// The evaluation-mode forward pass.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_t(x, false)
    }
}
