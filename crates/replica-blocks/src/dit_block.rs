//! The DiT block with adaLN-Zero conditioning: Peebles & Xie, "Scalable Diffusion
//! Models with Transformers", arXiv 2212.09748 (section 3.2). Reference: `DiTBlock`
//! in facebookresearch/DiT `models.py`, built on timm's `Attention` and `Mlp`.
//!
//! A conditioning vector `c` (the timestep and class embeddings) regresses, through
//! `SiLU` and one linear layer, six vectors per sample: a shift, a scale and a gate
//! for the attention branch and for the MLP branch. Each branch normalises its input
//! with a LayerNorm without parameters (eps 1e-6), modulates it,
//! `modulate(x, shift, scale) = x · (1 + scale) + shift`, and its output is scaled
//! by the gate before the residual sum:
//!
//! ```text
//! x = x + gate_msa · attn(modulate(norm1(x), shift_msa, scale_msa))
//! x = x + gate_mlp · mlp(modulate(norm2(x), shift_mlp, scale_mlp))
//! ```
//!
//! "Zero": the paper initialises the modulation layer to zeros, so every gate starts
//! at 0 and the block starts as the identity ([`DitBlock::new_adaln_zero`]).

use candle_core::{Result, Tensor, D};
use candle_nn::VarBuilder;
use replica_check::config_check::{all_positive, at_most, divisible, finite_positive};
use replica_check::{ConfigCheck, Footprint, Size, Workload};
use serde::{Deserialize, Serialize};

use crate::activation::{Activation, ActivationLayer};
use crate::attention::{Attention, AttentionConfig};
use crate::linear::{Linear, LinearConfig};
use crate::mlp::{Mlp, MlpConfig, MlpNames};
use crate::norm::{LayerNorm, LayerNormConfig};

fn default_mlp_ratio() -> f64 {
    4.0
}

/// The LayerNorms' epsilon in `DiTBlock`.
const NORM_EPS: f64 = 1e-6;

/// `DiTBlock(hidden_size, num_heads, mlp_ratio)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DitBlockConfig {
    /// Token width (`hidden_size`).
    #[serde(alias = "hidden_size")]
    pub dim: usize,
    /// Attention heads (`num_heads`).
    #[serde(alias = "num_heads")]
    pub heads: usize,
    /// The MLP's hidden width over `dim`, truncated as `int(dim * mlp_ratio)`; default 4.
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
}

impl DitBlockConfig {
    /// The MLP's hidden width, `int(dim * mlp_ratio)` as the reference takes it.
    pub fn mlp_hidden(&self) -> usize {
        (self.dim as f64 * self.mlp_ratio) as usize
    }

    /// timm's `Attention(dim, num_heads, qkv_bias=True)`.
    pub fn attention_config(&self) -> AttentionConfig {
        AttentionConfig::timm(self.dim, self.heads, true, false)
    }

    /// timm's `Mlp(dim, int(dim * mlp_ratio), act_layer=GELU(approximate="tanh"))`.
    pub fn mlp_config(&self) -> MlpConfig {
        MlpConfig {
            activation: Activation::GeluTanh,
            names: MlpNames::timm(),
            ..MlpConfig::new(self.dim, self.mlp_hidden())
        }
    }

    fn norm_config(&self) -> LayerNormConfig {
        LayerNormConfig {
            eps: NORM_EPS,
            affine: false,
            bias: false,
            ..LayerNormConfig::new(self.dim)
        }
    }
}

impl ConfigCheck for DitBlockConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        all_positive(&[("dim", self.dim), ("heads", self.heads)])?;
        divisible("dim", self.dim, "heads", self.heads)?;
        finite_positive("mlp_ratio", self.mlp_ratio)?;
        // Far beyond any model, and below where `6 * dim` or the MLP width overflow.
        at_most("dim", self.dim, 1 << 24)?;
        if self.mlp_ratio > 1024.0 {
            return Err(format!("mlp_ratio must be at most 1024, got {}", self.mlp_ratio));
        }
        if self.mlp_hidden() == 0 {
            return Err(format!(
                "mlp_ratio {} leaves the MLP of a {}-wide block no hidden features",
                self.mlp_ratio, self.dim
            ));
        }
        Ok(())
    }

    /// The modulation layer `dim -> 6 dim` and its six vectors per sample, the
    /// attention and the MLP, and per token the norms' and modulations' outputs.
    fn footprint(&self, work: &Workload) -> Footprint {
        let dim = Size::field("dim", self.dim);
        let modulation = Footprint {
            params: work.bytes(dim.clone() * dim.clone() * 6 + dim.clone() * 6),
            activations: work.bytes(work.batch() * dim.clone() * 12 + work.rows() * dim * 6),
        };
        modulation + self.attention_config().footprint(work) + self.mlp_config().footprint(work)
    }
}

/// `modulate(x, shift, scale) = x · (1 + scale) + shift`, with `shift` and `scale`
/// `[batch, dim]` applied to every token of `x` `[batch, tokens, dim]`.
pub fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    let scale = (scale.unsqueeze(1)? + 1.0)?;
    x.broadcast_mul(&scale)?.broadcast_add(&shift.unsqueeze(1)?)
}

/// DiT's transformer block with adaLN-Zero conditioning (module paths as the
/// reference's: `adaLN_modulation.{0,1}`, `norm1`, `attn`, `norm2`, `mlp`).
#[derive(Clone, Debug)]
pub struct DitBlock {
    modulation_act: ActivationLayer,
    modulation: Linear,
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    mlp: Mlp,
    dim: usize,
    modulation_path: String,
    path: String,
}

impl DitBlock {
    /// Reads the block's weights at `vb`'s path (fresh: torch's default inits, the
    /// modulation layer included; [`new_adaln_zero`](Self::new_adaln_zero) starts it at zero).
    pub fn new(config: &DitBlockConfig, vb: VarBuilder) -> Result<Self> {
        crate::admit(&format!("dit_block `{}`", vb.prefix()), config)?;
        let modulation = LinearConfig::new(config.dim, 6 * config.dim);
        let modulation = Linear::new(&modulation, vb.pp("adaLN_modulation").pp("1"))?;
        Self::with_modulation(config, modulation, vb)
    }

    /// A block to train from scratch as the paper does: the modulation layer's weight
    /// and bias start at zero (DiT's `initialize_weights`), so every shift, scale and
    /// gate is 0 and the block starts as the identity. Loading a checkpoint through
    /// `vb` reads the stored values, as [`new`](Self::new) does.
    pub fn new_adaln_zero(config: &DitBlockConfig, vb: VarBuilder) -> Result<Self> {
        crate::admit(&format!("dit_block `{}`", vb.prefix()), config)?;
        let at = vb.pp("adaLN_modulation").pp("1");
        let zero = candle_nn::Init::Const(0.0);
        let weight = at.get_with_hints((6 * config.dim, config.dim), "weight", zero)?;
        let bias = at.get_with_hints(6 * config.dim, "bias", zero)?;
        let modulation = Linear::from_weights(weight, Some(bias), at.prefix());
        Self::with_modulation(config, modulation, vb)
    }

    fn with_modulation(config: &DitBlockConfig, modulation: Linear, vb: VarBuilder) -> Result<Self> {
        let norm = config.norm_config();
        Ok(Self {
            modulation_act: ActivationLayer::new(Activation::Silu, vb.pp("adaLN_modulation").pp("0")),
            modulation,
            norm1: LayerNorm::new(&norm, vb.pp("norm1"))?,
            attn: Attention::new(&config.attention_config(), vb.pp("attn"))?,
            norm2: LayerNorm::new(&norm, vb.pp("norm2"))?,
            mlp: Mlp::new(&config.mlp_config(), vb.pp("mlp"))?,
            dim: config.dim,
            modulation_path: vb.pp("adaLN_modulation").prefix(),
            path: vb.prefix(),
        })
    }

    /// The attention branch's parameter-free LayerNorm (`norm1`).
    pub fn norm1(&self) -> &LayerNorm {
        &self.norm1
    }

    /// The attention (timm `Attention`, `attn`).
    pub fn attention(&self) -> &Attention {
        &self.attn
    }

    /// The MLP branch's parameter-free LayerNorm (`norm2`).
    pub fn norm2(&self) -> &LayerNorm {
        &self.norm2
    }

    /// The MLP (timm `Mlp`, tanh GELU, `mlp`).
    pub fn mlp(&self) -> &Mlp {
        &self.mlp
    }

    /// The six modulation vectors `[batch, dim]` of conditioning `c` `[batch, dim]`, in
    /// the reference's order: shift, scale and gate of the attention branch, then of the MLP.
    pub fn modulation(&self, c: &Tensor) -> Result<[Tensor; 6]> {
        let (_, width) = c.dims2().map_err(|_| {
            candle_core::Error::Msg(format!(
                "dit_block `{}`: the conditioning must be [batch, dim], got shape {:?}",
                self.path,
                c.dims()
            ))
        })?;
        if width != self.dim {
            candle_core::bail!(
                "dit_block `{}`: the conditioning has {width} features, the block {}",
                self.path,
                self.dim
            )
        }
        let all = self.modulation.forward(&self.modulation_act.forward(c)?)?;
        replica_check::tap(&self.modulation_path, &all);
        let chunk = |i: usize| all.narrow(D::Minus1, i * self.dim, self.dim);
        Ok([chunk(0)?, chunk(1)?, chunk(2)?, chunk(3)?, chunk(4)?, chunk(5)?])
    }

    /// Tokens `x` `[batch, tokens, dim]` conditioned on `c` `[batch, dim]`; dropout
    /// (none in DiT) only when `train`.
    pub fn forward_t(&self, x: &Tensor, c: &Tensor, train: bool) -> Result<Tensor> {
        let [shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp] = self.modulation(c)?;
        let h = modulate(&self.norm1.forward(x)?, &shift_msa, &scale_msa)?;
        let h = self.attn.forward_t(&h, None, None, train)?;
        let x = (x + gate_msa.unsqueeze(1)?.broadcast_mul(&h)?)?;
        let h = modulate(&self.norm2.forward(&x)?, &shift_mlp, &scale_mlp)?;
        let h = self.mlp.forward_t(&h, train)?;
        let x = (&x + gate_mlp.unsqueeze(1)?.broadcast_mul(&h)?)?;
        replica_check::tap(&self.path, &x);
        Ok(x)
    }

    /// [`forward_t`](Self::forward_t) in inference.
    pub fn forward(&self, x: &Tensor, c: &Tensor) -> Result<Tensor> {
        self.forward_t(x, c, false)
    }
}
