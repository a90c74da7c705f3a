//! Reading reference checkpoints into models: which model a checkpoint belongs
//! to, and strict loading through a model's `WeightMap` with errors that say
//! what is wrong (another model's checkpoint, a config that contradicts the
//! weights, a missing or unused tensor). The families a checkpoint is told apart
//! from are the caller's (a registry's table): this module knows no model.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use regex::Regex;
use replica_check::bundle::METADATA_KEY;
use replica_check::{read_safetensors, Bundle, Namespace};

use crate::{Architecture, Error, Family, ModelConfig, Result};

/// The family of `known` a checkpoint's tensor names belong to, and the name that says so.
pub fn detect_family<'a>(names: impl IntoIterator<Item = &'a str>, known: &[Family]) -> Option<(Family, &'a str)> {
    let families: Vec<(Family, Regex)> = known.iter().map(|f| (*f, signature(f))).collect();
    names.into_iter().find_map(|name| {
        families
            .iter()
            .find(|(_, signature)| signature.is_match(name))
            .map(|(family, _)| (*family, name))
    })
}

/// The family's signature, compiled.
fn signature(family: &Family) -> Regex {
    Regex::new(family.signature)
        .unwrap_or_else(|err| panic!("the {family} signature `{}` is not a regex: {err}", family.signature))
}

/// The tensors of a checkpoint file: a plain safetensors checkpoint (HF
/// `model.safetensors`, a timm `.safetensors`), or a reference bundle, whose
/// `param/` tensors are taken.
pub fn read_checkpoint(path: impl AsRef<Path>, device: &Device) -> Result<BTreeMap<String, Tensor>> {
    let path = path.as_ref();
    let file = read_safetensors(path, device)?;
    if file.metadata.contains_key(METADATA_KEY) {
        let bundle = Bundle::from_tensor_file(file, path)?;
        return Ok(bundle.namespace(Namespace::Param));
    }
    Ok(file.tensors)
}

/// The `config` a bundle or checkpoint carries in its metadata, when it has one
/// (a bundle's metadata `config`).
pub fn embedded_config(path: impl AsRef<Path>) -> Result<Option<serde_json::Value>> {
    let path = path.as_ref();
    let file = read_safetensors(path, &Device::Cpu)?;
    if !file.metadata.contains_key(METADATA_KEY) {
        return Ok(None);
    }
    let bundle = Bundle::from_tensor_file(file, path)?;
    Ok(Some(bundle.metadata().config.clone()))
}

/// The result of building a model from a checkpoint's mapped tensors, with a
/// failed strict load said in the model's terms: a config that contradicts the
/// checkpoint's shapes, or a checkpoint that does not fit (missing or unused
/// tensors). `config` (the config's sizes) and `origin` name them.
fn explain_load<M>(built: replica_check::Result<M>, family: &Family, config: &str, origin: &Path) -> Result<M> {
    match built {
        Err(replica_check::Error::Load(report)) if !report.mismatched.is_empty() => Err(Error::checkpoint(
            origin,
            format!(
                "the {family} config ({config}) contradicts the checkpoint's tensor shapes ({} problems):\n{}",
                report.problem_count(),
                problems(&report)
            ),
        )),
        Err(replica_check::Error::Load(report)) => Err(Error::checkpoint(
            origin,
            format!(
                "the checkpoint does not fit the {family} model ({config}) ({} problems):\n{}",
                report.problem_count(),
                problems(&report)
            ),
        )),
        other => Ok(other?),
    }
}

/// The report's problem lines, without its heading (the caller's message has one).
fn problems(report: &replica_check::LoadReport) -> String {
    report.to_string().lines().skip(1).collect::<Vec<_>>().join("\n")
}

/// Refuses a checkpoint that belongs to another family (one of `known`), or to none.
fn check_family<'a>(
    family: &Family,
    names: impl IntoIterator<Item = &'a str> + Clone,
    origin: &Path,
    known: &[Family],
) -> Result<()> {
    let own = signature(family);
    if names.clone().into_iter().any(|name| own.is_match(name)) {
        return Ok(());
    }
    match detect_family(names.clone(), known) {
        Some((found, name)) => Err(Error::checkpoint(
            origin,
            format!(
                "this is a {found} checkpoint (it has `{name}`), not a {family} one: load it with the {found} model \
                 ({}), or pass the {family} checkpoint",
                found.reference
            ),
        )),
        None => {
            let held: Vec<&str> = names.into_iter().take(5).collect();
            let held = if held.is_empty() {
                "it holds no tensors".to_string()
            } else {
                format!(
                    "it holds e.g. {}",
                    held.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
                )
            };
            Err(Error::checkpoint(
                origin,
                format!(
                    "this does not look like a {family} checkpoint: no tensor is named like `{}` ({held})",
                    family.example_tensor
                ),
            ))
        }
    }
}

/// Model `A` with `config`, from a checkpoint's tensors by checkpoint name, loaded
/// strictly: a checkpoint of another of the `known` families, shapes that
/// contradict `config`, and missing or unused tensors are errors. `origin` names
/// the tensors in errors.
pub fn load_tensors<A: Architecture>(
    config: &A::Config,
    tensors: BTreeMap<String, Tensor>,
    origin: &Path,
    dtype: DType,
    device: &Device,
    known: &[Family],
) -> Result<A> {
    replica_check::admit(config, &replica_check::Workload::default())
        .map_err(|m| Error::config(origin, format!("{} config: {m}", A::FAMILY)))?;
    check_family(&A::FAMILY, tensors.keys().map(String::as_str), origin, known)?;
    let weights = A::weight_map(config).apply(tensors, origin)?;
    let built = weights.build(dtype, device, |vb| A::new(config, vb));
    explain_load(built, &A::FAMILY, &config.summary(), origin)
}

/// The config of model `A` for `checkpoint`: `config` when given, else the
/// `config.json` beside the checkpoint, else the config a reference bundle
/// carries in its metadata.
pub fn config_for<A: Architecture>(checkpoint: &Path, config: Option<&Path>) -> Result<A::Config> {
    let beside = checkpoint.with_file_name("config.json");
    match config {
        Some(path) => A::Config::from_file(path),
        None if beside.is_file() => A::Config::from_file(&beside),
        None => match embedded_config(checkpoint)? {
            Some(value) => A::Config::from_value(&value, checkpoint),
            None => Err(Error::config(
                checkpoint,
                format!(
                    "no {} config: give one, or put the checkpoint's config.json beside it ({} does not exist)",
                    A::FAMILY,
                    beside.display()
                ),
            )),
        },
    }
}
