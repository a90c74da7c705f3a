//! The Transformer's position-wise feed-forward network: Vaswani et al.,
//! "Attention Is All You Need", arXiv 1706.03762 (registry:
//! [`crate::papers::ATTENTION_IS_ALL_YOU_NEED`]), as timm's `Mlp`.
//!
//! `fc1 -> act -> drop1 -> norm -> fc2 -> drop2`. The submodule names are
//! configurable ([`MlpNames`]), so timm (`fc1`, `act`, `fc2`), GPT-2 (`c_fc`,
//! `act`, `c_proj`, `dropout`) and other layouts load and trace under the
//! reference's own names. For gated variants (SwiGLU, GeGLU) see [`crate::glu`].

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use replica_check::config_check::{drop_rate, non_negative, positive};
use replica_check::{ConfigCheck, Footprint, Size, Workload};
use serde::{Deserialize, Serialize};

use crate::dropout::Dropout;
use crate::{Activation, ActivationLayer, Linear, LinearConfig, Norm, NormKind};

fn yes() -> bool {
    true
}

fn default_norm_eps() -> f64 {
    1e-5
}

/// The names of the MLP's submodules in the reference: the `state_dict` prefixes
/// of the projections and the paths its forward hooks record. `None` marks a
/// submodule the reference does not have: nothing is recorded for it, and a
/// missing dropout is not applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MlpNames {
    /// The first projection, `dim -> hidden`.
    pub fc1: String,
    /// The activation module (a pointwise function has no weights, but timm and
    /// HF hold it as a submodule, so its output is recorded).
    pub act: Option<String>,
    /// The dropout after the activation.
    pub drop1: Option<String>,
    /// The norm after the activation; timm always has one (an `nn.Identity` without
    /// a norm layer, built as an [`Identity`](crate::Identity)).
    pub norm: Option<String>,
    /// The second projection, `hidden -> out`.
    pub fc2: String,
    /// The dropout after the second projection.
    pub drop2: Option<String>,
}

impl MlpNames {
    /// timm `Mlp`: `fc1`, `act`, `drop1`, `norm`, `fc2`, `drop2`.
    pub fn timm() -> Self {
        Self {
            fc1: "fc1".into(),
            act: Some("act".into()),
            drop1: Some("drop1".into()),
            norm: Some("norm".into()),
            fc2: "fc2".into(),
            drop2: Some("drop2".into()),
        }
    }

    /// HF `GPT2MLP`: `c_fc`, `act`, `c_proj`, `dropout` (one dropout, after `c_proj`).
    /// GPT-2's `Conv1D` stores weights `[in, out]`: load them through a
    /// [`replica_check::WeightMap`] that transposes `c_fc` and `c_proj`.
    pub fn gpt2() -> Self {
        Self {
            fc1: "c_fc".into(),
            act: Some("act".into()),
            drop1: None,
            norm: None,
            fc2: "c_proj".into(),
            drop2: Some("dropout".into()),
        }
    }

    /// A bare `fc1 -> act -> fc2` with the activation applied functionally (no hook).
    pub fn plain(fc1: &str, fc2: &str) -> Self {
        Self {
            fc1: fc1.into(),
            act: None,
            drop1: None,
            norm: None,
            fc2: fc2.into(),
            drop2: None,
        }
    }
}

impl Default for MlpNames {
    fn default() -> Self {
        Self::timm()
    }
}

/// timm `Mlp(in_features, hidden_features, out_features, act_layer, norm_layer, bias, drop)`;
/// the aliases also read HF `config.json` fields (`hidden_size`, `intermediate_size`,
/// `hidden_act`; GPT-2's `n_embd`, `n_inner`, `activation_function`, `resid_pdrop`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MlpConfig {
    /// Input features (timm `in_features`, HF `hidden_size`, GPT-2 `n_embd`).
    #[serde(alias = "in_features", alias = "hidden_size", alias = "n_embd", alias = "embed_dim")]
    pub dim: usize,
    /// The hidden width; `None` is `4 * dim`, the Transformer's ratio (GPT-2's `n_inner: null`).
    #[serde(
        default,
        alias = "hidden_features",
        alias = "intermediate_size",
        alias = "n_inner",
        alias = "mlp_dim"
    )]
    pub hidden_dim: Option<usize>,
    /// The output width; `None` is `dim`.
    #[serde(default, alias = "out_features")]
    pub out_dim: Option<usize>,
    /// The pointwise activation (timm `act_layer`, HF `hidden_act`, GPT-2
    /// `activation_function`); default GELU (erf).
    #[serde(default, alias = "act_layer", alias = "hidden_act", alias = "activation_function")]
    pub activation: Activation,
    /// Biases on both projections.
    #[serde(default = "yes")]
    pub bias: bool,
    /// The probability of both dropouts.
    #[serde(
        default,
        alias = "drop",
        alias = "dropout",
        alias = "hidden_dropout_prob",
        alias = "resid_pdrop"
    )]
    pub dropout: f64,
    /// A norm over the hidden features after the activation (timm `norm_layer`).
    #[serde(default, alias = "norm_layer")]
    pub norm: Option<NormKind>,
    /// The epsilon of `norm`; default 1e-5.
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    /// The submodules' names; default [`MlpNames::timm`].
    #[serde(default)]
    pub names: MlpNames,
}

impl MlpConfig {
    /// `dim -> hidden_dim -> dim` with GELU (erf), biases, no dropout, timm names.
    pub fn new(dim: usize, hidden_dim: usize) -> Self {
        Self {
            dim,
            hidden_dim: Some(hidden_dim),
            out_dim: None,
            activation: Activation::default(),
            bias: true,
            dropout: 0.0,
            norm: None,
            norm_eps: default_norm_eps(),
            names: MlpNames::default(),
        }
    }

    /// Hidden features: `hidden_dim`, or `4 * dim` when unset.
    pub fn hidden_dim(&self) -> usize {
        // Saturating: a width that overflows is refused by `validate`, not a panic here.
        self.hidden_dim.unwrap_or(self.dim.saturating_mul(4))
    }

    /// Output features: `out_dim`, or `dim` when unset.
    pub fn out_dim(&self) -> usize {
        self.out_dim.unwrap_or(self.dim)
    }
}

impl ConfigCheck for MlpConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        positive("dim", self.dim)?;
        if self.hidden_dim.is_none() && self.dim > usize::MAX / 4 {
            return Err(format!(
                "`dim` {} is too large for the default hidden width 4 * dim",
                self.dim
            ));
        }
        positive("hidden_dim", self.hidden_dim())?;
        positive("out_dim", self.out_dim())?;
        drop_rate("dropout", self.dropout)?;
        non_negative("norm_eps", self.norm_eps)
    }

    fn footprint(&self, work: &Workload) -> Footprint {
        let dim = Size::field("dim", self.dim);
        let hidden = match self.hidden_dim {
            Some(hidden) => Size::field("hidden_dim", hidden),
            None => dim.clone() * 4,
        };
        let out = Size::field("out_dim", self.out_dim());
        let weights = dim * hidden.clone() + hidden.clone() * out.clone();
        let biases = if self.bias {
            hidden.clone() + out.clone()
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
            activations: work.bytes(work.rows() * (hidden * 4 + out)),
        }
    }
}

/// Two projections around a pointwise activation, over the last dimension.
#[derive(Clone, Debug)]
pub struct Mlp {
    fc1: Linear,
    act: ActivationLayer,
    drop1: Option<Dropout>,
    norm: Option<Norm>,
    fc2: Linear,
    drop2: Option<Dropout>,
    path: String,
}

impl Mlp {
    /// Loads the projections (and the norm) at `vb`'s path under `config.names`. Fails on a
    /// `dropout` outside `[0, 1]` where `names` has a dropout, or a norm without a name.
    pub fn new(config: &MlpConfig, vb: VarBuilder) -> Result<Self> {
        let path = vb.prefix();
        crate::admit(&format!("mlp `{path}`"), config)?;
        let names = &config.names;
        let hidden = config.hidden_dim();
        let linear = |i, o| LinearConfig {
            bias: config.bias,
            ..LinearConfig::new(i, o)
        };
        let dropout = |name: &Option<String>| {
            name.as_ref()
                .map(|name| Dropout::from_probability(config.dropout, vb.pp(name).prefix()))
                .transpose()
        };
        let norm = match (&config.norm, &names.norm) {
            (Some(kind), Some(name)) => Some(Norm::new(*kind, hidden, config.norm_eps, vb.pp(name))?),
            (Some(_), None) => candle_core::bail!("mlp `{path}`: a norm layer needs a name (`names.norm`)"),
            (None, name) => name.as_ref().map(|name| Norm::identity(vb.pp(name))),
        };
        let act = match &names.act {
            Some(name) => ActivationLayer::new(config.activation, vb.pp(name)),
            None => ActivationLayer::functional(config.activation),
        };
        Ok(Self {
            fc1: Linear::new(&linear(config.dim, hidden), vb.pp(&names.fc1))?,
            act,
            drop1: dropout(&names.drop1)?,
            norm,
            fc2: Linear::new(&linear(hidden, config.out_dim()), vb.pp(&names.fc2))?,
            drop2: dropout(&names.drop2)?,
            path,
        })
    }

    /// This MLP without a module of its own in traces: its layers sit on an owner's
    /// path (torch's `linear1`/`linear2` on `TransformerEncoderLayer`), which records
    /// the owner's output, not the MLP's.
    pub(crate) fn inline(mut self) -> Self {
        self.path.clear();
        self
    }

    /// The first projection.
    pub fn fc1(&self) -> &Linear {
        &self.fc1
    }

    /// The second projection.
    pub fn fc2(&self) -> &Linear {
        &self.fc2
    }

    /// The activation between the projections.
    pub fn activation(&self) -> Activation {
        self.act.activation()
    }

    /// `x` is `[..., dim]`; dropout is active only when `train`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let h = self.act.forward(&self.fc1.forward(x)?)?;
        let h = match &self.drop1 {
            Some(drop) => drop.forward_t(&h, train)?,
            None => h,
        };
        let h = match &self.norm {
            Some(norm) => norm.forward(&h)?,
            None => h,
        };
        let y = self.fc2.forward(&h)?;
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

impl candle_core::ModuleT for Mlp {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        Mlp::forward_t(self, x, train)
    }
}
