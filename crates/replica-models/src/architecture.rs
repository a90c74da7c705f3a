//! The one trait every model implements, as candle-transformers' `Model::new(cfg, vb)`
//! with timm's single builder behind it: a model says what its config is, who it
//! is ([`Family`]), how the reference checkpoint names its tensors
//! ([`weight_map`](Architecture::weight_map)) and how to build itself under a
//! `VarBuilder` ([`new`](Architecture::new)); loading a checkpoint strictly, with
//! its config from a file, a bundle or beside the checkpoint, is provided once for
//! all by [`LoadCheckpoint`](crate::LoadCheckpoint). How the reference's traces name what the model records is its
//! [`trace_map`](Architecture::trace_map), beside the weight map. Train or eval is
//! candle's `ModuleT::forward_t(x, train)`: a model holds no mode, nor do its blocks.

use std::fmt;

use candle_core::ModuleT;
use candle_nn::VarBuilder;
use replica_blocks::Paper;
use replica_check::{TraceMap, WeightMap};
use serde_json::Value;

use crate::config::ModelConfig;

/// Who a model is: what it is called, the reference it follows and how that
/// reference names its checkpoint's tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Family {
    /// The model's name in messages (`GPT-2`).
    pub name: &'static str,
    /// The reference implementation whose names and numerics the model follows.
    pub reference: &'static str,
    /// The paper the architecture comes from.
    pub paper: Paper,
    /// How the reference checkpoint names its tensors, for people.
    pub checkpoint_naming: &'static str,
    /// A regular expression matching a tensor name only this family's checkpoints
    /// have: it tells another model's checkpoint apart.
    pub signature: &'static str,
    /// A tensor name this family's checkpoints have (it matches `signature`), for messages.
    pub example_tensor: &'static str,
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// A named configuration of a model: its paper and where its reference weights are published.
#[derive(Clone, Copy, Debug)]
pub struct Preset {
    /// The name [`create_model`](crate::create_model) takes (timm's model name, or the HF hub's).
    pub name: &'static str,
    /// The paper the preset follows (the family's, or a more specific one).
    pub paper: Paper,
    /// Where the reference weights are published, by the reference library's name.
    pub checkpoint: &'static str,
    /// What the preset is, in a line.
    pub description: &'static str,
    /// The configuration, as the reference's `config.json` (or timm kwargs).
    pub config: fn() -> Value,
}

impl Preset {
    /// The preset's configuration, as the reference's `config.json` (or timm kwargs).
    pub fn config(&self) -> Value {
        (self.config)()
    }
}

/// A model: its config type, its [`Family`], its presets, the map from the
/// reference checkpoint's names to its module paths, and how to build it. The
/// loaders are [`LoadCheckpoint`](crate::LoadCheckpoint)'s; a model file implements this trait and `ModuleT`, and
/// the registry gets one line, `Descriptor::of::<Model>()`.
pub trait Architecture: ModuleT + Clone + fmt::Debug + Send + Sync + 'static {
    /// The reference's `config.json` (or constructor arguments), read strictly.
    type Config: ModelConfig;

    /// Who the model is.
    const FAMILY: Family;

    /// Named configurations that `create_model` and `load_model` build (timm's
    /// registered model names).
    const PRESETS: &'static [Preset] = &[];

    /// Builds the model under `vb`, the checkpoint's root: a `VarBuilder` over a
    /// checkpoint's tensors loads it, one over a `VarMap` initialises it to train.
    /// Module paths are the reference's, so traces and checkpoints line up.
    fn new(config: &Self::Config, vb: VarBuilder) -> candle_core::Result<Self>;

    /// The map from the reference checkpoint's tensor names to the module paths
    /// (renames, transposes, dropped buffers); by default they are the same.
    fn weight_map(config: &Self::Config) -> WeightMap {
        let _ = config;
        WeightMap::new()
    }

    /// How the reference's traces name what the model records, where that is not
    /// its module paths (a tuple output, a container the model has no module for);
    /// by default nothing differs. A model that overrides it keeps the map and
    /// records its forward pass through it ([`replica_check::mapped`]), so its traces
    /// hold the reference's names whoever records them.
    fn trace_map(config: &Self::Config) -> TraceMap {
        let _ = config;
        TraceMap::new()
    }

    /// Refuses a config that [`replica_check::admit`] refuses (a value the model cannot
    /// honour, a size over the memory budget), for [`new`](Self::new) to call first: a
    /// config built in code has not been read strictly.
    fn check(config: &Self::Config) -> candle_core::Result<()> {
        replica_check::admit(config, &replica_check::Workload::default())
            .map_err(|m| candle_core::Error::Msg(format!("{} config: {m}", Self::FAMILY)))
    }
}
