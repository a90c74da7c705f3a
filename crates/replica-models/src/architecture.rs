//! The one trait every model implements, as candle-transformers' `Model::new(cfg, vb)`
//! with timm's single builder behind it: a model says what its config is, who it
//! is ([`Family`]), how the reference checkpoint names its tensors
//! ([`weight_map`](Architecture::weight_map)) and how to build itself under a
//! `VarBuilder` ([`new`](Architecture::new)); loading a checkpoint strictly, with
//! its config from a file, a bundle or beside the checkpoint, is provided once for
//! all. Train or eval is candle's `ModuleT::forward_t(x, train)`: a model holds no
//! mode.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::VarBuilder;
use replica_blocks::attention::Attention;
use replica_blocks::{Paper, TransformerBlock};
use replica_check::WeightMap;

use crate::checkpoint;
use crate::config::ModelConfig;
use crate::registry::Preset;
use crate::{Error, Result};

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

/// A model: its config type, its [`Family`], its presets, the map from the
/// reference checkpoint's names to its module paths, and how to build it. The
/// loaders are provided; a model file implements this trait and `ModuleT`, and
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

    /// Refuses a config that [`ModelConfig::validate`] refuses, for [`new`](Self::new)
    /// to call first: a config built in code has not been read strictly.
    fn check(config: &Self::Config) -> candle_core::Result<()> {
        config
            .validate()
            .map_err(|m| candle_core::Error::Msg(format!("{} config: {m}", Self::FAMILY)))
    }

    /// Loads a reference checkpoint (a `.safetensors` file, or a reference bundle's
    /// `param/` tensors) strictly: another model's checkpoint, shapes that
    /// contradict `config`, and missing or unused tensors are errors.
    fn load(config: &Self::Config, checkpoint: impl AsRef<Path>, dtype: DType, device: &Device) -> Result<Self> {
        let checkpoint = checkpoint.as_ref();
        let tensors = checkpoint::read_checkpoint(checkpoint, device)?;
        Self::from_tensors(config, tensors, checkpoint, dtype, device)
    }

    /// Loads a checkpoint with its config: `config` when given, else the
    /// `config.json` beside the checkpoint, else the config a reference bundle
    /// carries in its metadata.
    fn from_checkpoint(
        checkpoint: impl AsRef<Path>,
        config: Option<&Path>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let checkpoint = checkpoint.as_ref();
        let beside = checkpoint.with_file_name("config.json");
        let config = match config {
            Some(path) => Self::Config::from_file(path)?,
            None if beside.is_file() => Self::Config::from_file(&beside)?,
            None => match checkpoint::embedded_config(checkpoint)? {
                Some(value) => Self::Config::from_value(&value, checkpoint)?,
                None => {
                    return Err(Error::config(
                        checkpoint,
                        format!(
                            "no {} config: give one, or put the checkpoint's config.json beside it ({} does not exist)",
                            Self::FAMILY,
                            beside.display()
                        ),
                    ))
                }
            },
        };
        Self::load(&config, checkpoint, dtype, device)
    }

    /// [`load`](Self::load) from tensors already read, by checkpoint name; `origin`
    /// names them in errors.
    fn from_tensors(
        config: &Self::Config,
        tensors: BTreeMap<String, Tensor>,
        origin: impl AsRef<Path>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let origin = origin.as_ref();
        config
            .validate()
            .map_err(|m| Error::config(origin, format!("{} config: {m}", Self::FAMILY)))?;
        checkpoint::check_family(&Self::FAMILY, tensors.keys().map(String::as_str), origin)?;
        let weights = Self::weight_map(config).apply(tensors, origin)?;
        let built = weights.build(dtype, device, |vb| Self::new(config, vb));
        checkpoint::explain_load(built, &Self::FAMILY, &config.summary(), origin)
    }
}

/// A block that keeps its train/eval mode as state (`set_training(&mut self)`).
pub(crate) trait Mode: Clone {
    fn training(&self) -> bool;
    fn set_training(&mut self, training: bool);
}

impl Mode for TransformerBlock {
    fn training(&self) -> bool {
        TransformerBlock::training(self)
    }
    fn set_training(&mut self, training: bool) {
        TransformerBlock::set_training(self, training)
    }
}

impl Mode for Attention {
    fn training(&self) -> bool {
        Attention::training(self)
    }
    fn set_training(&mut self, training: bool) {
        Attention::set_training(self, training)
    }
}

/// `block` in the mode `train` asks for. The models take `train` per call; the
/// blocks still hold it as state, so a call in the other mode runs on a copy
/// (its tensors are shared, not copied). Inference, the blocks' default, borrows.
pub(crate) fn in_mode<B: Mode>(block: &B, train: bool) -> Cow<'_, B> {
    if block.training() == train {
        return Cow::Borrowed(block);
    }
    let mut copy = block.clone();
    copy.set_training(train);
    Cow::Owned(copy)
}
