//! Reading a model's `config.json` strictly, and laying overrides over a preset's.

use std::path::Path;

use indexmap::IndexMap;
use replica_check::config_check::admit_read;
use replica_check::{Bundle, ConfigCheck, Workload};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::{Error, Result};

/// A model's config type, read strictly (`replica_check::config`): a field it does
/// not read is refused unless it is HF bookkeeping or in [`ModelConfig::NOT_USED`],
/// and the config is admitted ([`replica_check::admit`]): a value it cannot honour is
/// refused by its [`ConfigCheck::validate`], and a size over the memory budget by its
/// [`ConfigCheck::footprint`]. Every way of reading a config (`from_file`,
/// `from_value`, [`bundle_config`]) is provided here, so each model only says what it
/// does not use, what it refuses and what it costs.
pub trait ModelConfig: Serialize + DeserializeOwned + Clone + std::fmt::Debug + ConfigCheck {
    /// Fields of the reference's `config.json` that this model has no use for
    /// (another model class's head, a legacy duplicate), beyond the bookkeeping.
    const NOT_USED: &'static [&'static str] = &[];

    /// Reads a `config.json`; a missing, mistyped, unread or refused field is an
    /// error that names the file and the field.
    fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|err| Error::config(path, format!("cannot read: {err}")))?;
        let value: Value =
            serde_json::from_str(&text).map_err(|err| Error::config(path, format!("not JSON: {err}")))?;
        Self::from_value(&value, path)
    }

    /// Reads a config held as JSON (a bundle's metadata, a preset) as strictly as
    /// [`from_file`](Self::from_file); `origin` names it in errors.
    fn from_value(value: &Value, origin: impl AsRef<Path>) -> Result<Self> {
        let origin = origin.as_ref();
        let config = replica_check::read_config::<Self>(value, Self::NOT_USED)
            .map_err(|message| Error::config(origin, message))?
            .config;
        admit_read(&config, &Workload::default(), value).map_err(|m| Error::config(origin, m))?;
        Ok(config)
    }

    /// The config's sizes (its whole-number fields, in declaration order), which a
    /// checkpoint's shapes can contradict: `vocab_size 96, n_positions 32, ...`.
    fn summary(&self) -> String {
        let whole = |v: &Value| v.is_u64() || v.as_array().is_some_and(|a| a.iter().all(Value::is_u64));
        // Through text into an IndexMap: a serde_json `Map` may sort its keys.
        let fields: IndexMap<String, Value> = serde_json::to_string(self)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default();
        fields
            .iter()
            .filter(|(_, v)| whole(v))
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A bundle's config as the model's config type, admitted on the bundle's inputs
/// ([`Bundle::config_parts`]); the fields left unused are recorded on the bundle
/// ([`Bundle::unused_config_fields`]).
pub fn bundle_config<T: ModelConfig>(bundle: &Bundle) -> Result<T> {
    let (config,) = bundle.config_parts::<(T,)>(T::NOT_USED)?;
    Ok(config)
}

/// `base` with the fields of `overrides` (a JSON object) put over it, as timm's
/// `create_model(name, **kwargs)` does; nested objects are merged field by field.
pub fn merge_overrides(base: &Value, overrides: &Value, origin: impl AsRef<Path>) -> Result<Value> {
    merge(base, overrides, origin.as_ref())
}

fn merge(base: &Value, overrides: &Value, origin: &Path) -> Result<Value> {
    match overrides {
        Value::Null => Ok(base.clone()),
        Value::Object(fields) => {
            let mut merged = base.clone();
            let Value::Object(target) = &mut merged else {
                return Err(Error::config(origin, "the base config is not a JSON object"));
            };
            for (key, value) in fields {
                let next = match (target.get(key), value) {
                    (Some(existing @ Value::Object(_)), Value::Object(_)) => merge(existing, value, origin)?,
                    _ => value.clone(),
                };
                target.insert(key.clone(), next);
            }
            Ok(merged)
        }
        other => Err(Error::config(
            origin,
            format!("overrides must be a JSON object of config fields, got {other}"),
        )),
    }
}

/// The first field of `fields` that is zero, as a message.
pub(crate) fn positive(fields: &[(&str, usize)]) -> std::result::Result<(), String> {
    match fields.iter().find(|(_, v)| *v == 0) {
        Some((name, _)) => Err(format!("`{name}` must be positive, got 0")),
        None => Ok(()),
    }
}

/// The first probability of `fields` outside `[0, 1)`, as a message.
pub(crate) fn probabilities(fields: &[(&str, f64)]) -> std::result::Result<(), String> {
    match fields.iter().find(|(_, p)| !(0.0..1.0).contains(p)) {
        Some((name, p)) => Err(format!("`{name}` must be in [0, 1), got {p}")),
        None => Ok(()),
    }
}
