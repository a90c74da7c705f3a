//! Loading a registered model's reference checkpoint from the model itself:
//! `Gpt2::load(&config, "model.safetensors", DType::F32, &device)`. These are
//! [`checkpoint`]'s strict loaders with the built-in table's families to tell
//! another model's checkpoint apart; a registry of one's own passes its table
//! ([`Registry::load_model`](crate::Registry::load_model)).

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::registry::MODELS;
use crate::{checkpoint, Architecture, Family, Result};

/// The strict checkpoint loaders every [`Architecture`] has.
pub trait LoadCheckpoint: Architecture {
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
        let config = checkpoint::config_for::<Self>(checkpoint, config)?;
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
        checkpoint::load_tensors(config, tensors, origin.as_ref(), dtype, device, &builtin_families())
    }
}

impl<A: Architecture> LoadCheckpoint for A {}

/// The families of the built-in table.
fn builtin_families() -> Vec<Family> {
    MODELS.iter().map(|d| d.family).collect()
}
