//! The ConvNeXt block: Liu et al., "A ConvNet for the 2020s", arXiv 2201.03545
//! (registry: [`crate::papers::CONVNEXT`]); with Global Response Normalization in
//! its MLP it is the ConvNeXt V2 block (arXiv 2301.00808, [`crate::grn`]). As
//! timm's `ConvNeXtBlock` (`timm/models/convnext.py`), on either of its paths.
//!
//! On a feature map `[batch, channels, height, width]`:
//!
//! ```text
//! y = conv_dw(x)                      depthwise k×k convolution (7×7), "same" padding
//! y = permute to [batch, height, width, channels]
//! y = mlp(norm(y))                    LayerNorm over channels (eps 1e-6), Linear → GELU → Linear
//!                                     (V2: GRN between GELU and the second Linear)
//! y = permute back; y = y · gamma     LayerScale (`ls_init_value`, 1e-6 in V1; off in V2)
//! out = drop_path(y) + shortcut(x)
//! ```
//!
//! With `conv_mlp` (timm's other path) nothing is permuted: the norm is timm's
//! `LayerNorm2d` and the MLP's projections are 1×1 convolutions (GRN then reduces
//! over dimensions 2 and 3). Convolutions run in a wider dtype with their bias and
//! are rounded once, as PyTorch's accumulate.
//!
//! Submodule names are timm's: `conv_dw`, `norm`, `mlp` (`fc1`, `act`, `drop1`,
//! `norm` or `grn`, `fc2`, `drop2`), the parameter `gamma`, and the `nn.Identity`
//! placeholders `shortcut` and `drop_path` (a [`DropPath`] when its rate is set).

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use replica_check::config_check::{finite, finite_positive, positive, probability};
use replica_check::{ConfigCheck, Footprint, Size, Workload};
use serde::{Deserialize, Serialize};

use crate::activation::{Activation, ActivationLayer};
use crate::drop_path::{DropPath, DropPathConfig};
use crate::dropout::Dropout;
use crate::grn::{
    wide, GlobalResponseNorm, GlobalResponseNormConfig, GlobalResponseNormMlp, GlobalResponseNormMlpConfig,
};
use crate::identity::Identity;
use crate::mlp::{Mlp, MlpConfig, MlpNames};
use crate::norm::{LayerNorm, LayerNormConfig};

fn default_kernel_size() -> usize {
    7
}
fn one() -> usize {
    1
}
fn default_dilation() -> Dilation {
    Dilation::Same(1)
}
fn default_mlp_ratio() -> f64 {
    4.0
}
fn yes() -> bool {
    true
}
fn default_ls_init_value() -> Option<f64> {
    Some(1e-6)
}

/// timm's `dilation`: one number, or `(input, output)` dilation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dilation {
    /// The same dilation for the convolution and after it.
    Same(usize),
    /// `(dilation of the convolution, output dilation)`.
    Pair([usize; 2]),
}

impl Dilation {
    /// `(input, output)` dilation.
    pub fn pair(self) -> (usize, usize) {
        match self {
            Dilation::Same(d) => (d, d),
            Dilation::Pair([a, b]) => (a, b),
        }
    }
}

/// timm `ConvNeXtBlock(in_chs, out_chs, kernel_size, stride, dilation, mlp_ratio,
/// conv_mlp, conv_bias, use_grn, ls_init_value, act_layer, norm_layer, drop_path)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConvNextBlockConfig {
    /// Channels in.
    #[serde(alias = "dim")]
    pub in_chs: usize,
    /// Channels out; only `None` or `in_chs` is implemented (timm downsamples the
    /// shortcut otherwise).
    #[serde(default)]
    pub out_chs: Option<usize>,
    /// The depthwise convolution's kernel size; default 7. Odd sizes only (an even
    /// one changes the map's size, and the residual sum fails in timm too).
    #[serde(default = "default_kernel_size")]
    pub kernel_size: usize,
    /// The convolution's stride; only 1 is implemented.
    #[serde(default = "one")]
    pub stride: usize,
    /// The convolution's dilation; equal input and output dilation only.
    #[serde(default = "default_dilation")]
    pub dilation: Dilation,
    /// The MLP's hidden channels over `in_chs`; default 4.
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    /// The channels-first path: timm's `LayerNorm2d` and an MLP of 1×1
    /// convolutions (`fc1.weight` `[hidden, in_chs, 1, 1]`), on `[batch, channels,
    /// height, width]` throughout, instead of permuting to channels last.
    #[serde(default)]
    pub conv_mlp: bool,
    /// Biases on the convolution and the MLP's projections.
    #[serde(default = "yes")]
    pub conv_bias: bool,
    /// Global Response Normalization in the MLP (ConvNeXt V2).
    #[serde(default)]
    pub use_grn: bool,
    /// LayerScale's initial value; `None`: no `gamma` (ConvNeXt V2). Default 1e-6.
    #[serde(default = "default_ls_init_value")]
    pub ls_init_value: Option<f64>,
    /// The MLP's activation; default GELU (erf).
    #[serde(default)]
    pub act_layer: Activation,
    /// timm's norm layer override; only `None` (timm's LayerNorm, eps 1e-6) is implemented.
    #[serde(default)]
    pub norm_layer: Option<String>,
    /// Stochastic depth of the residual branch.
    #[serde(default)]
    pub drop_path: f64,
}

impl ConvNextBlockConfig {
    /// `dim` channels with timm's defaults: 7×7, MLP ratio 4, GELU, LayerScale 1e-6.
    pub fn new(dim: usize) -> Self {
        Self {
            in_chs: dim,
            out_chs: None,
            kernel_size: default_kernel_size(),
            stride: 1,
            dilation: default_dilation(),
            mlp_ratio: default_mlp_ratio(),
            conv_mlp: false,
            conv_bias: true,
            use_grn: false,
            ls_init_value: default_ls_init_value(),
            act_layer: Activation::Gelu,
            norm_layer: None,
            drop_path: 0.0,
        }
    }

    /// ConvNeXt V2's block: GRN in the MLP, no LayerScale.
    pub fn v2(dim: usize) -> Self {
        Self {
            use_grn: true,
            ls_init_value: None,
            ..Self::new(dim)
        }
    }

    /// The MLP's hidden channels, `int(mlp_ratio * in_chs)`.
    pub fn hidden(&self) -> usize {
        (self.mlp_ratio * self.in_chs as f64) as usize
    }

    /// timm's `get_padding`: `((stride - 1) + dilation * (kernel_size - 1)) / 2`.
    fn padding(&self) -> usize {
        let (dilation, _) = self.dilation.pair();
        (self.stride - 1 + dilation * (self.kernel_size - 1)) / 2
    }
}

impl ConfigCheck for ConvNextBlockConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        positive("in_chs", self.in_chs)?;
        positive("kernel_size", self.kernel_size)?;
        positive("stride", self.stride)?;
        finite_positive("mlp_ratio", self.mlp_ratio)?;
        positive("mlp hidden channels (in_chs * mlp_ratio)", self.hidden())?;
        probability("drop_path", self.drop_path)?;
        if let Some(value) = self.ls_init_value {
            finite("ls_init_value", value)?;
        }
        if let Some(out) = self.out_chs.filter(|&out| out != self.in_chs) {
            return Err(format!(
                "out_chs {out} differs from in_chs {}: the downsampling shortcut is not implemented",
                self.in_chs
            ));
        }
        if self.stride != 1 {
            return Err(format!("stride {} is not implemented (expected 1)", self.stride));
        }
        if self.kernel_size.is_multiple_of(2) {
            return Err(format!("kernel_size must be odd, got {}", self.kernel_size));
        }
        let (input, output) = self.dilation.pair();
        positive("dilation", input.min(output))?;
        if input != output {
            return Err(format!(
                "dilation ({input}, {output}) is not implemented (the shortcut would downsample)"
            ));
        }
        // The padding, in checked arithmetic: a huge kernel or dilation is refused, not overflowed.
        if input
            .checked_mul(self.kernel_size)
            .is_none_or(|span| span > u32::MAX as usize)
        {
            return Err(format!(
                "kernel_size {} with dilation {input} is too large",
                self.kernel_size
            ));
        }
        if let Some(norm) = &self.norm_layer {
            return Err(format!("norm_layer `{norm}` is not implemented (expected null)"));
        }
        Ok(())
    }

    fn footprint(&self, work: &Workload) -> Footprint {
        let dim = Size::field("in_chs", self.in_chs);
        let kernel = Size::field("kernel_size", self.kernel_size);
        let hidden = Size::field("in_chs * mlp_ratio", self.hidden());
        Footprint {
            params: work.bytes(dim.clone() * (kernel.clone() * kernel + hidden.clone() * 2 + Size::count(8))),
            activations: work.bytes(work.rows() * (dim * 8 + hidden * 6)),
        }
    }
}

/// A 2-d convolution (`weight` `[out, in / groups, k, k]`, `bias`), computed in a
/// wider dtype with its bias and rounded once, as PyTorch's convolution accumulates.
#[derive(Clone, Debug)]
struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    padding: usize,
    dilation: usize,
    groups: usize,
    path: String,
}

impl Conv2d {
    /// Reads `weight` `[out, in / groups, k, k]` (and `bias` `[out]`) at `vb`, with
    /// torch's init: uniform in ±1/sqrt(fan_in).
    fn new(
        (out, inputs, k): (usize, usize, usize),
        groups: usize,
        bias: bool,
        (padding, dilation): (usize, usize),
        vb: VarBuilder,
    ) -> Result<Self> {
        let per_group = inputs / groups;
        let bound = 1.0 / ((per_group * k * k) as f64).sqrt();
        let init = candle_nn::Init::Uniform { lo: -bound, up: bound };
        Ok(Self {
            weight: vb.get_with_hints((out, per_group, k, k), "weight", init)?,
            bias: bias.then(|| vb.get_with_hints(out, "bias", init)).transpose()?,
            padding,
            dilation,
            groups,
            path: vb.prefix(),
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let wide = wide(dtype);
        let out = self.weight.dim(0)?;
        let y = x.to_dtype(wide)?.conv2d(
            &self.weight.to_dtype(wide)?,
            self.padding,
            1,
            self.dilation,
            self.groups,
        )?;
        let y = match &self.bias {
            Some(bias) => y.broadcast_add(&bias.to_dtype(wide)?.reshape((1, out, 1, 1))?)?,
            None => y,
        };
        let y = y.to_dtype(dtype)?;
        replica_check::tap(&self.path, &y);
        Ok(y)
    }
}

/// What a conv MLP does to its hidden features after `drop1`: timm's `Mlp` keeps an
/// `nn.Identity` there (`norm`), `GlobalResponseNormMlp` its GRN (`grn`).
#[derive(Clone, Debug)]
enum HiddenNorm {
    Identity(Identity),
    Grn(GlobalResponseNorm),
}

/// timm's `Mlp(use_conv=True)` and `GlobalResponseNormMlp(use_conv=True)`: 1×1
/// convolutions on `[batch, channels, height, width]`, the hidden features going
/// through the activation, `drop1`, then `norm` (an `nn.Identity`) or channels-first GRN.
#[derive(Clone, Debug)]
struct ConvMlp {
    fc1: Conv2d,
    act: ActivationLayer,
    drop1: Dropout,
    norm: HiddenNorm,
    fc2: Conv2d,
    drop2: Dropout,
    path: String,
}

impl ConvMlp {
    fn new(config: &ConvNextBlockConfig, vb: VarBuilder) -> Result<Self> {
        let (dim, hidden) = (config.in_chs, config.hidden());
        let pointwise = |out, inputs, vb| Conv2d::new((out, inputs, 1), 1, config.conv_bias, (0, 1), vb);
        let norm = if config.use_grn {
            let grn = GlobalResponseNormConfig {
                channels_last: false,
                ..GlobalResponseNormConfig::new(hidden)
            };
            HiddenNorm::Grn(GlobalResponseNorm::new(&grn, vb.pp("grn"))?)
        } else {
            HiddenNorm::Identity(Identity::new(vb.pp("norm")))
        };
        Ok(Self {
            fc1: pointwise(hidden, dim, vb.pp("fc1"))?,
            act: ActivationLayer::new(config.act_layer, vb.pp("act")),
            drop1: Dropout::from_probability(0.0, vb.pp("drop1").prefix())?,
            norm,
            fc2: pointwise(dim, hidden, vb.pp("fc2"))?,
            drop2: Dropout::from_probability(0.0, vb.pp("drop2").prefix())?,
            path: vb.prefix(),
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let h = self.act.forward(&self.fc1.forward(x)?)?;
        let h = self.drop1.forward_t(&h, train)?;
        let h = match &self.norm {
            HiddenNorm::Grn(grn) => grn.forward(&h)?,
            HiddenNorm::Identity(identity) => identity.forward(&h)?,
        };
        let y = self.drop2.forward_t(&self.fc2.forward(&h)?, train)?;
        replica_check::tap(&self.path, &y);
        Ok(y)
    }
}

/// The MLP: timm's `Mlp` or, in V2, `GlobalResponseNormMlp`, channels last; or
/// either of them on 1×1 convolutions (`conv_mlp`).
#[derive(Clone, Debug)]
enum ConvNextMlp {
    Plain(Mlp),
    Grn(GlobalResponseNormMlp),
    Conv(ConvMlp),
}

/// timm's `ConvNeXtBlock` on `[batch, channels, height, width]` feature maps.
#[derive(Clone, Debug)]
pub struct ConvNextBlock {
    conv_dw: Conv2d,
    norm: LayerNorm,
    norm_path: String,
    mlp: ConvNextMlp,
    gamma: Option<Tensor>,
    drop_path: DropPath,
    shortcut: Identity,
    path: String,
}

impl ConvNextBlock {
    /// Loads `conv_dw` (`weight` `[in_chs, 1, k, k]`, `bias`), `norm`, `mlp` and
    /// `gamma` at `vb`'s path.
    pub fn new(config: &ConvNextBlockConfig, vb: VarBuilder) -> Result<Self> {
        let path = vb.prefix();
        crate::admit(&format!("convnext_block `{path}`"), config)?;
        let (dim, k) = (config.in_chs, config.kernel_size);
        let spacing = (config.padding(), config.dilation.pair().0);
        let conv_dw = Conv2d::new((dim, dim, k), dim, config.conv_bias, spacing, vb.pp("conv_dw"))?;
        let norm = LayerNorm::new(
            &LayerNormConfig {
                eps: 1e-6,
                ..LayerNormConfig::new(dim)
            },
            vb.pp("norm"),
        )?;
        let mlp = if config.conv_mlp {
            ConvNextMlp::Conv(ConvMlp::new(config, vb.pp("mlp"))?)
        } else if config.use_grn {
            let grn = GlobalResponseNormMlpConfig {
                dim,
                hidden_dim: config.hidden(),
                activation: config.act_layer,
                bias: config.conv_bias,
                dropout: 0.0,
            };
            ConvNextMlp::Grn(GlobalResponseNormMlp::new(&grn, vb.pp("mlp"))?)
        } else {
            let mlp = MlpConfig {
                activation: config.act_layer,
                bias: config.conv_bias,
                names: MlpNames::timm(),
                ..MlpConfig::new(dim, config.hidden())
            };
            ConvNextMlp::Plain(Mlp::new(&mlp, vb.pp("mlp"))?)
        };
        let gamma = config
            .ls_init_value
            .map(|value| vb.get_with_hints(dim, "gamma", candle_nn::Init::Const(value)))
            .transpose()?;
        Ok(Self {
            conv_dw,
            norm,
            norm_path: vb.pp("norm").prefix(),
            mlp,
            gamma,
            drop_path: DropPath::new(&DropPathConfig::new(config.drop_path), vb.pp("drop_path"))?,
            shortcut: Identity::new(vb.pp("shortcut")),
            path,
        })
    }

    /// The norm and `mlp` on `y` permuted to channels last, and the result permuted back.
    fn channels_last(&self, y: &Tensor, mlp: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
        let h = self.norm.forward(&y.permute((0, 2, 3, 1))?)?;
        mlp(&h)?.permute((0, 3, 1, 2))
    }

    /// timm's `LayerNorm2d`: the channels-last LayerNorm between two permutes,
    /// recorded channels first.
    fn norm_2d(&self, x: &Tensor) -> Result<Tensor> {
        let y = replica_check::trace::untraced(|| self.norm.forward(&x.permute((0, 2, 3, 1))?))?;
        let y = y.permute((0, 3, 1, 2))?;
        replica_check::tap(&self.norm_path, &y);
        Ok(y)
    }

    /// The block on `x` `[batch, in_chs, height, width]`; dropout and drop path only when `train`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let channels = self.conv_dw.weight.dim(0)?;
        if x.rank() != 4 || x.dim(1)? != channels {
            candle_core::bail!(
                "convnext_block `{}`: expects [batch, {channels}, height, width], got shape {:?}",
                self.path,
                x.dims()
            )
        }
        let y = self.conv_dw.forward(x)?;
        let y = match &self.mlp {
            ConvNextMlp::Conv(mlp) => mlp.forward_t(&self.norm_2d(&y)?, train)?,
            ConvNextMlp::Plain(mlp) => self.channels_last(&y, |h| mlp.forward_t(h, train))?,
            ConvNextMlp::Grn(mlp) => self.channels_last(&y, |h| mlp.forward_t(h, train))?,
        };
        let y = match &self.gamma {
            Some(gamma) => y.broadcast_mul(&gamma.to_dtype(y.dtype())?.reshape((1, channels, 1, 1))?)?,
            None => y,
        };
        let y = self.drop_path.forward_t(&y, train)?;
        let y = (y + self.shortcut.forward(x)?)?;
        replica_check::tap(&self.path, &y);
        Ok(y)
    }

    /// The evaluation-mode forward pass.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_t(x, false)
    }
}

impl candle_core::ModuleT for ConvNextBlock {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        ConvNextBlock::forward_t(self, x, train)
    }
}
