//! Reading a model's `config.json`, and laying overrides over a preset's.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{Error, Result};

/// Reads a `config.json` as a model's config type; a missing or mistyped field is
/// an error that names the file and the field.
pub fn read_config<T: DeserializeOwned>(path: impl AsRef<Path>) -> Result<T> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|err| Error::config(path, format!("cannot read: {err}")))?;
    let value: Value = serde_json::from_str(&text).map_err(|err| Error::config(path, format!("not JSON: {err}")))?;
    parse_config(&value, path)
}

/// Reads a JSON value (a `config.json`'s contents) as a model's config type;
/// `origin` names it in errors.
pub fn parse_config<T: DeserializeOwned>(value: &Value, origin: impl AsRef<Path>) -> Result<T> {
    T::deserialize(value).map_err(|err| Error::config(origin, format!("config: {err}")))
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
