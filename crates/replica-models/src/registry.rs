//! The model registry, as timm's: a table of [`Descriptor`]s, one line per
//! [`Architecture`], each carrying its model's named presets; [`list_models`]
//! with a glob filter, and [`create_model`] with config overrides (timm's
//! `create_model(name, **kwargs)`), or [`load_model`] with a checkpoint.
//!
//! ```
//! use candle_core::ModuleT;
//! use replica_models::registry::{create_model, list_models};
//! assert_eq!(list_models("vit_*_224"), ["vit_base_patch16_224", "vit_small_patch16_224", "vit_tiny_patch16_224"]);
//! let varmap = candle_nn::VarMap::new();
//! let vb = candle_nn::VarBuilder::from_varmap(&varmap, candle_core::DType::F32, &candle_core::Device::Cpu);
//! let model = create_model("gpt2", &serde_json::json!({"n_layer": 1, "n_embd": 64, "n_head": 4}), vb).unwrap();
//! assert_eq!(model.family().name, "GPT-2");
//! let ids = candle_core::Tensor::new(&[[1u32, 2, 3]], &candle_core::Device::Cpu).unwrap();
//! assert_eq!(model.forward_t(&ids, false).unwrap().dims(), [1, 3, 50257]);
//! ```
//!
//! A model outside this crate is registered the same way, in a table of its own:
//! `Registry(&[Descriptor::of::<MyModel>()]).create_model("my-model", ...)`.

use std::any::Any;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::VarBuilder;
use serde_json::Value;

use crate::checkpoint;
use crate::config::{merge_overrides, ModelConfig};
use crate::{Architecture, Error, Family, Preset, Result};

/// Every registered architecture, in the order `replica models` lists their presets.
/// A new model is one line here (by full path, so that the line is all it takes).
pub const MODELS: &[Descriptor] = &[
    Descriptor::of::<crate::gpt2::Gpt2>(),
    Descriptor::of::<crate::vit::Vit>(),
    Descriptor::of::<crate::swin::Swin>(),
    Descriptor::of::<crate::llama::Llama>(),
    Descriptor::of::<crate::gemma::Gemma>(),
    Descriptor::of::<crate::gemma2::Gemma2>(),
    Descriptor::of::<crate::phi3::Phi3>(),
    Descriptor::of::<crate::qwen2::Qwen2>(),
    Descriptor::of::<crate::qwen3::Qwen3>(),
    Descriptor::of::<crate::mixtral::Mixtral>(),
    Descriptor::of::<crate::deepseek_v2::DeepseekV2>(),
    Descriptor::of::<crate::bert::Bert>(),
    Descriptor::of::<crate::t5::T5Encoder>(),
];

/// One line of a registry: an [`Architecture`], with its family and presets, and
/// the builders [`create_model`] and [`load_model`] call for it.
#[derive(Clone, Copy, Debug)]
pub struct Descriptor {
    /// Who the model is.
    pub family: Family,
    /// Its named configurations.
    pub presets: &'static [Preset],
    read: fn(&Value, &Path) -> Result<()>,
    create: fn(&Value, &Path, VarBuilder) -> Result<Model>,
    load: LoadFn,
}

/// Builds a model from a JSON config (and its origin) and loads a checkpoint into
/// it, telling apart the checkpoints of the families given.
type LoadFn = fn(&Value, &Path, &Path, DType, &Device, &[Family]) -> Result<Model>;

impl Descriptor {
    /// The registry line of architecture `A`.
    pub const fn of<A: Architecture>() -> Self {
        Self {
            family: A::FAMILY,
            presets: A::PRESETS,
            read: read::<A>,
            create: create::<A>,
            load: load::<A>,
        }
    }

    /// Reads `config` (JSON) strictly as the model's config type; `origin` names it in errors.
    pub fn read(&self, config: &Value, origin: impl AsRef<Path>) -> Result<()> {
        (self.read)(config, origin.as_ref())
    }

    /// Builds the model with `config` (a JSON config, read strictly; `origin` names
    /// it in errors) under `vb`.
    pub fn create(&self, config: &Value, origin: impl AsRef<Path>, vb: VarBuilder) -> Result<Model> {
        (self.create)(config, origin.as_ref(), vb)
    }
}

fn read<A: Architecture>(config: &Value, origin: &Path) -> Result<()> {
    A::Config::from_value(config, origin).map(drop)
}

fn create<A: Architecture>(config: &Value, origin: &Path, vb: VarBuilder) -> Result<Model> {
    let config = A::Config::from_value(config, origin)?;
    Ok(A::new(&config, vb)?.into())
}

fn load<A: Architecture>(
    config: &Value,
    origin: &Path,
    checkpoint: &Path,
    dtype: DType,
    device: &Device,
    known: &[Family],
) -> Result<Model> {
    let config = A::Config::from_value(config, origin)?;
    let tensors = checkpoint::read_checkpoint(checkpoint, device)?;
    Ok(checkpoint::load_tensors::<A>(&config, tensors, checkpoint, dtype, device, known)?.into())
}

/// A table of descriptors and timm's calls over it; the free functions of this
/// module are these calls over [`MODELS`].
#[derive(Clone, Copy, Debug)]
pub struct Registry<'a>(pub &'a [Descriptor]);

impl<'a> Registry<'a> {
    /// Every preset with the descriptor it belongs to, in table order.
    pub fn presets(&self) -> impl Iterator<Item = (&'a Descriptor, &'static Preset)> {
        self.0.iter().flat_map(|d| d.presets.iter().map(move |p| (d, p)))
    }

    /// The preset names matching `filter` (a glob: `*` any run, `?` one character;
    /// empty: all), sorted, as timm's `list_models`.
    pub fn list_models(&self, filter: &str) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = self
            .presets()
            .map(|(_, p)| p.name)
            .filter(|name| filter.is_empty() || replica_check::glob_match(filter, name))
            .collect();
        names.sort_unstable();
        names
    }

    /// The preset called `name` and its descriptor; the error suggests the closest names.
    pub fn find(&self, name: &str) -> Result<(&'a Descriptor, &'static Preset)> {
        self.presets().find(|(_, p)| p.name == name).ok_or_else(|| {
            let lower = name.to_lowercase();
            let close: Vec<&str> = self
                .presets()
                .map(|(_, p)| p.name)
                .filter(|n| {
                    let n = n.to_lowercase();
                    n.contains(&lower)
                        || lower.contains(&n)
                        || n.split(['-', '_']).next() == lower.split(['-', '_']).next()
                })
                .collect();
            let hint = if close.is_empty() {
                format!("the registry has {}", self.list_models("").join(", "))
            } else {
                format!("did you mean {}?", close.join(", "))
            };
            Error::UnknownModel(format!("no model named `{name}`: {hint}"))
        })
    }

    /// The configuration of preset `name` with `overrides` (a JSON object of config
    /// fields, or null) laid over it, read strictly as the model reads it.
    pub fn model_config(&self, name: &str, overrides: &Value) -> Result<Value> {
        let (descriptor, preset) = self.find(name)?;
        let config = merge_overrides(&preset.config(), overrides, format!("overrides for `{name}`"))?;
        descriptor.read(&config, format!("config of `{name}`"))?;
        Ok(config)
    }

    /// Builds preset `name`, with `overrides` laid over its config, from `vb`: a
    /// `VarBuilder` over a `VarMap` initialises it for training, one over a
    /// checkpoint's tensors loads it (see [`load_model`](Self::load_model) for strict loading).
    pub fn create_model(&self, name: &str, overrides: &Value, vb: VarBuilder) -> Result<Model> {
        let (descriptor, _) = self.find(name)?;
        descriptor.create(&self.model_config(name, overrides)?, format!("config of `{name}`"), vb)
    }

    /// Builds preset `name` (with `overrides`) and loads `checkpoint` into it strictly,
    /// through the model's weight map: another model's checkpoint, shapes that
    /// contradict the config, and missing or unused tensors are errors; the
    /// checkpoint of another of the table's models is named as such.
    pub fn load_model(
        &self,
        name: &str,
        overrides: &Value,
        checkpoint: impl AsRef<Path>,
        dtype: DType,
        device: &Device,
    ) -> Result<Model> {
        let (descriptor, _) = self.find(name)?;
        let config = self.model_config(name, overrides)?;
        let known: Vec<Family> = self.0.iter().map(|d| d.family).collect();
        let origin = format!("config of `{name}`");
        (descriptor.load)(&config, origin.as_ref(), checkpoint.as_ref(), dtype, device, &known)
    }
}

/// Every registered preset, in table order.
pub fn presets() -> impl Iterator<Item = &'static Preset> {
    Registry(MODELS).presets().map(|(_, p)| p)
}

/// [`Registry::list_models`] over [`MODELS`].
pub fn list_models(filter: &str) -> Vec<&'static str> {
    Registry(MODELS).list_models(filter)
}

/// The registered preset called `name`; the error suggests the closest names.
pub fn preset(name: &str) -> Result<&'static Preset> {
    Registry(MODELS).find(name).map(|(_, p)| p)
}

/// [`Registry::model_config`] over [`MODELS`].
pub fn model_config(name: &str, overrides: &Value) -> Result<Value> {
    Registry(MODELS).model_config(name, overrides)
}

/// [`Registry::create_model`] over [`MODELS`].
pub fn create_model(name: &str, overrides: &Value, vb: VarBuilder) -> Result<Model> {
    Registry(MODELS).create_model(name, overrides, vb)
}

/// [`Registry::load_model`] over [`MODELS`].
pub fn load_model(
    name: &str,
    overrides: &Value,
    checkpoint: impl AsRef<Path>,
    dtype: DType,
    device: &Device,
) -> Result<Model> {
    Registry(MODELS).load_model(name, overrides, checkpoint, dtype, device)
}

/// A model of any architecture, as the registry builds it: run it with
/// `ModuleT::forward_t`, or take the concrete model with [`downcast_ref`](Self::downcast_ref).
#[derive(Clone, Debug)]
pub struct Model(Arc<dyn Erased>);

/// What a [`Model`] needs of its architecture, object-safe.
trait Erased: fmt::Debug + Send + Sync {
    fn family(&self) -> Family;
    fn as_any(&self) -> &dyn Any;
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor>;
}

impl<A: Architecture> Erased for A {
    fn family(&self) -> Family {
        A::FAMILY
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        ModuleT::forward_t(self, x, train)
    }
}

impl<A: Architecture> From<A> for Model {
    fn from(model: A) -> Self {
        Model(Arc::new(model))
    }
}

impl Model {
    /// Who the model is.
    pub fn family(&self) -> Family {
        self.0.family()
    }

    /// The model as architecture `A`, when it is one: `model.downcast_ref::<Gpt2>()`.
    pub fn downcast_ref<A: Architecture>(&self) -> Option<&A> {
        self.0.as_any().downcast_ref()
    }
}

impl ModuleT for Model {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.0.forward_t(x, train)
    }
}
