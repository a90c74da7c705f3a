//! A two-layer perceptron, `fc2(dropout(gelu(fc1(x))))`: the smallest model.

use candle_core::{ModuleT, Tensor};
use candle_nn::VarBuilder;
use replica_blocks::dropout::Dropout;
use replica_blocks::{papers, Activation, Linear, LinearConfig};
use replica_check::config_check::all_positive;
use replica_check::{ConfigCheck, Footprint, Size, Workload};
use serde::{Deserialize, Serialize};

use crate::{Architecture, Family, ModelConfig, Preset};

/// The reference's constructor arguments.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PerceptronConfig {
    /// Features of the input.
    pub in_features: usize,
    /// Features between the two layers.
    pub hidden_features: usize,
    /// Features of the output.
    pub out_features: usize,
    /// Dropout on the hidden features, in training.
    #[serde(default)]
    pub dropout: f64,
}

impl ModelConfig for PerceptronConfig {}

impl ConfigCheck for PerceptronConfig {
    fn validate(&self) -> Result<(), String> {
        all_positive(&[
            ("in_features", self.in_features),
            ("hidden_features", self.hidden_features),
            ("out_features", self.out_features),
        ])?;
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("`dropout` must be in [0, 1), got {}", self.dropout));
        }
        Ok(())
    }

    /// The two layers' weights and biases; per input row its hidden and output features.
    fn footprint(&self, work: &Workload) -> Footprint {
        let hidden = Size::field("hidden_features", self.hidden_features);
        let out = Size::field("out_features", self.out_features);
        let weights = Size::field("in_features", self.in_features) * hidden.clone() + hidden.clone() * out.clone();
        Footprint {
            params: work.bytes(weights + hidden.clone() + out.clone()),
            activations: work.bytes(work.rows() * (hidden * 3 + out)),
        }
    }
}

/// The model; its module paths are the reference's (`fc1`, `drop`, `fc2`).
#[derive(Clone, Debug)]
pub struct Perceptron {
    fc1: Linear,
    drop: Dropout,
    fc2: Linear,
}

impl Architecture for Perceptron {
    type Config = PerceptronConfig;

    const FAMILY: Family = Family {
        name: "Perceptron",
        reference: "a PyTorch module: fc1 (nn.Linear), nn.GELU, drop (nn.Dropout), fc2 (nn.Linear)",
        paper: papers::GELU,
        checkpoint_naming: "fc1.{weight,bias}, fc2.{weight,bias}",
        signature: r"^fc1\.weight$",
        example_tensor: "fc1.weight",
    };

    const PRESETS: &'static [Preset] = &[Preset {
        name: "perceptron-tiny",
        paper: papers::GELU,
        checkpoint: "none published",
        description: "4 features in, 16 hidden, 2 out, dropout 0.5",
        config: || serde_json::json!({"in_features": 4, "hidden_features": 16, "out_features": 2, "dropout": 0.5}),
    }];

    fn new(config: &PerceptronConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        Self::check(config)?;
        let linear = |i, o, name| Linear::new(&LinearConfig::new(i, o), vb.pp(name));
        Ok(Self {
            fc1: linear(config.in_features, config.hidden_features, "fc1")?,
            drop: Dropout::from_probability(config.dropout, vb.pp("drop").prefix())?,
            fc2: linear(config.hidden_features, config.out_features, "fc2")?,
        })
    }
}

impl ModuleT for Perceptron {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let hidden = Activation::Gelu.forward(&self.fc1.forward(x)?)?;
        self.fc2.forward(&self.drop.forward_t(&hidden, train)?)
    }
}
