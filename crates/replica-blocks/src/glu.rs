//! Gated feed-forward networks: Shazeer, "GLU Variants Improve Transformer",
//! arXiv 2002.05202 (registry: [`crate::papers::GLU_VARIANTS`]).
//!
//! `down(act(gate(x)) * up(x))`: SwiGLU with SiLU (LLaMA, timm `SwiGLU`), GeGLU
//! with GELU, ReGLU with ReLU. Two weight layouts are in use and checkpoints are
//! tied to one ([`GluProjections`]): separate `gate` and `up` projections (HF
//! LLaMA `gate_proj`/`up_proj`, timm `SwiGLU` `fc1_g`/`fc1_x`), or one fused
//! projection whose output halves are the two branches (timm `GluMlp` `fc1`).

use candle_core::{Result, Tensor, D};
use candle_nn::VarBuilder;
use replica_check::config_check::{drop_rate, non_negative, positive};
use replica_check::{ConfigCheck, Footprint, Size, Workload};
use serde::{Deserialize, Serialize};

use crate::dropout::Dropout;
use crate::{Activation, ActivationLayer, Linear, LinearConfig, Norm, NormKind};

fn silu() -> Activation {
    Activation::Silu
}

fn default_norm_eps() -> f64 {
    1e-5
}

/// How the gate and the gated value are projected from the input.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GluProjections {
    /// Two projections `[hidden, dim]`: `gate` goes through the activation, `up` does not.
    Split {
        /// The gate projection, whose output goes through the activation.
        gate: String,
        /// The value projection.
        up: String,
    },
    /// One projection `[2 * hidden, dim]` whose output is cut in two halves along
    /// the features; `gate_last`: the second half is the gate (timm `GluMlp`'s
    /// default), otherwise the first (timm `SwiGLUPacked`).
    Fused {
        /// The fused projection.
        name: String,
        /// Whether the gate is the second half of the output.
        gate_last: bool,
    },
}

/// The names of the gated MLP's submodules in the reference (`state_dict`
/// prefixes and forward-hook paths); `None`: the reference has no such
/// submodule, nothing is recorded, and a missing dropout is not applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GluMlpNames {
    /// The gate and value projections.
    pub projections: GluProjections,
    /// The activation module on the gate.
    pub act: Option<String>,
    /// The dropout after the gated product.
    pub drop1: Option<String>,
    /// The norm on the gated product (timm: an `nn.Identity` without a norm layer,
    /// built as an [`Identity`](crate::Identity)).
    pub norm: Option<String>,
    /// The output projection.
    pub down: String,
    /// The dropout after the output projection.
    pub drop2: Option<String>,
}

impl GluMlpNames {
    /// HF `LlamaMLP` (and Mistral, Qwen2, Gemma): `gate_proj`, `up_proj`, `act_fn`, `down_proj`.
    pub fn llama() -> Self {
        Self {
            projections: GluProjections::Split {
                gate: "gate_proj".into(),
                up: "up_proj".into(),
            },
            act: Some("act_fn".into()),
            drop1: None,
            norm: None,
            down: "down_proj".into(),
            drop2: None,
        }
    }

    /// timm `SwiGLU`: `fc1_g` (gate), `fc1_x` (value), `act`, `drop1`, `norm`, `fc2`, `drop2`.
    pub fn timm_swiglu() -> Self {
        Self {
            projections: GluProjections::Split {
                gate: "fc1_g".into(),
                up: "fc1_x".into(),
            },
            ..Self::timm_glu_mlp(true)
        }
    }

    /// timm `GluMlp`: a fused `fc1`, then `act`, `drop1`, `norm`, `fc2`, `drop2`.
    /// `gate_last` is `True` for `GluMlp`'s default and `False` for `SwiGLUPacked`.
    pub fn timm_glu_mlp(gate_last: bool) -> Self {
        Self {
            projections: GluProjections::Fused {
                name: "fc1".into(),
                gate_last,
            },
            act: Some("act".into()),
            drop1: Some("drop1".into()),
            norm: Some("norm".into()),
            down: "fc2".into(),
            drop2: Some("drop2".into()),
        }
    }
}

impl Default for GluMlpNames {
    fn default() -> Self {
        Self::llama()
    }
}

/// A gated MLP; the defaults and aliases read a HF LLaMA `config.json`
/// (`hidden_size`, `intermediate_size`, `hidden_act`, `mlp_bias`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GluMlpConfig {
    /// Input features (HF `hidden_size`, timm `in_features`).
    #[serde(alias = "hidden_size", alias = "in_features", alias = "n_embd")]
    pub dim: usize,
    /// The width of the gated product (each branch); timm `GluMlp`'s
    /// `hidden_features` is twice this (the fused projection's width).
    #[serde(alias = "intermediate_size")]
    pub hidden_dim: usize,
    /// The output width; `None` is `dim`.
    #[serde(default, alias = "out_features")]
    pub out_dim: Option<usize>,
    /// The gate's activation: SiLU for SwiGLU, GELU for GeGLU, ReLU for ReGLU.
    /// Not read from `hidden_activation`: Gemma configs carry it beside `hidden_act`
    /// (serde refuses two aliases of one field in one object) and the two can
    /// disagree, so set `activation` from it yourself for Gemma.
    #[serde(default = "silu", alias = "hidden_act", alias = "act_layer")]
    pub activation: Activation,
    /// Biases on every projection (LLaMA: `mlp_bias`, default off; timm: on).
    #[serde(default, alias = "mlp_bias")]
    pub bias: bool,
    /// The probability of both dropouts (applied only where `names` has them).
    #[serde(default, alias = "drop", alias = "dropout")]
    pub dropout: f64,
    /// A norm on the gated product (timm `norm_layer`).
    #[serde(default, alias = "norm_layer")]
    pub norm: Option<NormKind>,
    /// The epsilon of `norm`; default 1e-5.
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    /// The submodules' names; default [`GluMlpNames::llama`].
    #[serde(default)]
    pub names: GluMlpNames,
}

impl GluMlpConfig {
    /// `dim -> hidden_dim (gated) -> dim` with `activation`, no biases, LLaMA names.
    pub fn new(dim: usize, hidden_dim: usize, activation: Activation) -> Self {
        Self {
            dim,
            hidden_dim,
            out_dim: None,
            activation,
            bias: false,
            dropout: 0.0,
            norm: None,
            norm_eps: default_norm_eps(),
            names: GluMlpNames::default(),
        }
    }

    /// SwiGLU: the gate through SiLU.
    pub fn swiglu(dim: usize, hidden_dim: usize) -> Self {
        Self::new(dim, hidden_dim, Activation::Silu)
    }

    /// GeGLU: the gate through GELU (erf).
    pub fn geglu(dim: usize, hidden_dim: usize) -> Self {
        Self::new(dim, hidden_dim, Activation::Gelu)
    }

    /// ReGLU: the gate through ReLU.
    pub fn reglu(dim: usize, hidden_dim: usize) -> Self {
        Self::new(dim, hidden_dim, Activation::Relu)
    }

    /// Output features: `out_dim`, or `dim` when unset.
    pub fn out_dim(&self) -> usize {
        self.out_dim.unwrap_or(self.dim)
    }
}

impl ConfigCheck for GluMlpConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        positive("dim", self.dim)?;
        positive("hidden_dim", self.hidden_dim)?;
        if self.hidden_dim > usize::MAX / 2 {
            return Err(format!(
                "`hidden_dim` {} is too large: the gate and up widths overflow",
                self.hidden_dim
            ));
        }
        positive("out_dim", self.out_dim())?;
        drop_rate("dropout", self.dropout)?;
        non_negative("norm_eps", self.norm_eps)
    }

    /// Gate and up projections (fused or not, the same size), the down projection,
    /// and per row the two branches, their product and the output.
    fn footprint(&self, work: &Workload) -> Footprint {
        let dim = Size::field("dim", self.dim);
        let hidden = Size::field("hidden_dim", self.hidden_dim);
        let out = Size::field("out_dim", self.out_dim());
        let weights = dim * hidden.clone() * 2 + hidden.clone() * out.clone();
        let biases = if self.bias {
            hidden.clone() * 2 + out.clone()
        } else {
            Size::ZERO
        };
        let norm = if self.norm.is_some() {
            hidden.clone() * 2
        } else {
            Size::ZERO
        };
        Footprint {
            params: work.bytes(weights + biases + norm),
            activations: work.bytes(work.rows() * (hidden * 6 + out)),
        }
    }
}

#[derive(Clone, Debug)]
enum Projections {
    Split { gate: Linear, up: Linear },
    Fused { fc1: Linear, gate_last: bool },
}

/// `down(act(gate(x)) * up(x))` over the last dimension.
#[derive(Clone, Debug)]
pub struct GluMlp {
    projections: Projections,
    act: ActivationLayer,
    drop1: Option<Dropout>,
    norm: Option<Norm>,
    down: Linear,
    drop2: Option<Dropout>,
    path: String,
}

impl GluMlp {
    /// Loads the projections (and the norm) at `vb`'s path under `config.names`. Fails on a
    /// `dropout` outside `[0, 1]` where `names` has a dropout, or a norm without a name.
    pub fn new(config: &GluMlpConfig, vb: VarBuilder) -> Result<Self> {
        let path = vb.prefix();
        crate::admit(&format!("glu_mlp `{path}`"), config)?;
        let names = &config.names;
        let hidden = config.hidden_dim;
        let linear = |i, o| LinearConfig {
            bias: config.bias,
            ..LinearConfig::new(i, o)
        };
        let projections = match &names.projections {
            GluProjections::Split { gate, up } => Projections::Split {
                gate: Linear::new(&linear(config.dim, hidden), vb.pp(gate))?,
                up: Linear::new(&linear(config.dim, hidden), vb.pp(up))?,
            },
            GluProjections::Fused { name, gate_last } => Projections::Fused {
                fc1: Linear::new(&linear(config.dim, 2 * hidden), vb.pp(name))?,
                gate_last: *gate_last,
            },
        };
        let dropout = |name: &Option<String>| {
            name.as_ref()
                .map(|name| Dropout::from_probability(config.dropout, vb.pp(name).prefix()))
                .transpose()
        };
        let norm = match (&config.norm, &names.norm) {
            (Some(kind), Some(name)) => Some(Norm::new(*kind, hidden, config.norm_eps, vb.pp(name))?),
            (Some(_), None) => candle_core::bail!("glu_mlp `{path}`: a norm layer needs a name (`names.norm`)"),
            (None, name) => name.as_ref().map(|name| Norm::identity(vb.pp(name))),
        };
        let act = match &names.act {
            Some(name) => ActivationLayer::new(config.activation, vb.pp(name)),
            None => ActivationLayer::functional(config.activation),
        };
        Ok(Self {
            projections,
            act,
            drop1: dropout(&names.drop1)?,
            norm,
            down: Linear::new(&linear(hidden, config.out_dim()), vb.pp(&names.down))?,
            drop2: dropout(&names.drop2)?,
            path,
        })
    }

    /// This MLP without a module of its own in traces (see [`crate::Mlp`]'s).
    pub(crate) fn inline(mut self) -> Self {
        self.path.clear();
        self
    }

    /// The gate's activation.
    pub fn activation(&self) -> Activation {
        self.act.activation()
    }

    /// `act(gate) · up` for the fused projection: one kernel (SwiGLU, GeGLU) when the
    /// kernels are in force and no trace records the activation module on its own;
    /// otherwise the activation (itself a kernel where it has one) times `up`.
    fn gated(&self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        if self.act.is_traced() {
            self.act.forward(gate)?.mul(up)
        } else {
            crate::ops::gated(self.act.activation(), gate, up)
        }
    }

    /// `x` is `[..., dim]`; dropout is active only when `train`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let h = match &self.projections {
            Projections::Split { gate, up } => {
                let g = gate.forward(x)?;
                if self.act.is_traced() {
                    // LLaMA's order (as its hooks record it): gate, its activation, then up.
                    self.act.forward(&g)?.mul(&up.forward(x)?)?
                } else {
                    self.gated(&g, &up.forward(x)?)?
                }
            }
            Projections::Fused { fc1, gate_last } => {
                let both = fc1.forward(x)?;
                let half = both.dim(D::Minus1)? / 2;
                let first = both.narrow(D::Minus1, 0, half)?;
                let second = both.narrow(D::Minus1, half, half)?;
                if *gate_last {
                    self.gated(&second, &first)?
                } else {
                    self.gated(&first, &second)?
                }
            }
        };
        let h = match &self.drop1 {
            Some(drop) => drop.forward_t(&h, train)?,
            None => h,
        };
        let h = match &self.norm {
            Some(norm) => norm.forward(&h)?,
            None => h,
        };
        let y = self.down.forward(&h)?;
        let y = match &self.drop2 {
            Some(drop) => drop.forward_t(&y, train)?,
            None => y,
        };
        replica_check::tap(&self.path, &y);
        Ok(y)
    }

    /// The evaluation-mode forward pass (no dropout).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_t(x, false)
    }
}

impl candle_core::ModuleT for GluMlp {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        GluMlp::forward_t(self, x, train)
    }
}
