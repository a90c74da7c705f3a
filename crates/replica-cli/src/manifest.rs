//! Suite files: a TOML manifest listing cases to check (`docs/suite-format.md`).
//!
//! Every mistake in a suite file is reported with the file, the line and the
//! field: unknown fields (with the closest known one), unknown components (with
//! the closest registered name), tolerances that are negative or not numbers,
//! patterns that are not regular expressions, unknown dtypes.

use std::ops::Range;
use std::path::Path;

use indexmap::IndexMap;
use replica_check::{parse_dtype, ToleranceOverrides, ToleranceSpec, WeightMap};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

use crate::error::CliError;
use crate::job::{ConfigSource, Job, Weights};
use crate::registry::{closest, Registry};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SuiteToml {
    /// A title for the report.
    name: Option<String>,
    /// Tolerances laid over every case's.
    tolerance: Option<ToleranceToml>,
    #[serde(default)]
    case: Vec<Spanned<CaseToml>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseToml {
    /// The row's label (default: the component's name).
    name: Option<String>,
    /// A registered component (`replica models`).
    component: Spanned<String>,
    /// The reference bundle (default: the component's committed fixture).
    reference: Option<Spanned<String>>,
    /// Weights replacing the bundle's `param/` tensors.
    weights: Option<Spanned<String>>,
    /// How the weights' names and layouts become the bundle's.
    weight_map: Option<WeightMapToml>,
    /// A JSON file path, or an inline table, replacing the bundle's `config`.
    config: Option<Spanned<toml::Value>>,
    /// Run on a bundle whose `component` is not the one the component implements.
    #[serde(default)]
    any_component: bool,
    tolerance: Option<ToleranceToml>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ToleranceToml {
    #[serde(default, deserialize_with = "tolerance_number")]
    rtol: Option<f64>,
    #[serde(default, deserialize_with = "tolerance_number")]
    atol: Option<f64>,
    equal_nan: Option<bool>,
    /// By reference dtype: `f16 = { rtol = 1e-3 }`.
    #[serde(default)]
    dtype: IndexMap<Spanned<String>, SpecToml>,
    /// By bundle key pattern: `"grad/*" = { atol = 1e-4 }`.
    #[serde(default)]
    tensor: IndexMap<String, SpecToml>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecToml {
    #[serde(default, deserialize_with = "tolerance_number")]
    rtol: Option<f64>,
    #[serde(default, deserialize_with = "tolerance_number")]
    atol: Option<f64>,
    equal_nan: Option<bool>,
}

impl SpecToml {
    fn spec(&self) -> ToleranceSpec {
        ToleranceSpec {
            rtol: self.rtol,
            atol: self.atol,
            equal_nan: self.equal_nan,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightMapToml {
    /// Source names to drop.
    #[serde(default)]
    ignore: Vec<Spanned<String>>,
    /// `pattern = replacement`, applied in order.
    #[serde(default)]
    rename: IndexMap<Spanned<String>, String>,
    /// Names of 2-D tensors to transpose.
    #[serde(default)]
    transpose: Vec<Spanned<String>>,
    #[serde(default)]
    split: Vec<SplitToml>,
    /// Convert floating-point weights to this dtype.
    dtype: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SplitToml {
    pattern: Spanned<String>,
    #[serde(default)]
    dim: usize,
    into: Vec<String>,
    /// Sizes of the parts along `dim` (default: equal parts).
    sizes: Option<Spanned<Vec<usize>>>,
}

/// A tolerance value: a finite number >= 0 (an integer is fine).
fn tolerance_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<f64>, D::Error> {
    struct Number;
    impl Visitor<'_> for Number {
        type Value = f64;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a number >= 0")
        }

        fn visit_f64<E: de::Error>(self, value: f64) -> Result<f64, E> {
            if value.is_finite() && value >= 0.0 {
                Ok(value)
            } else {
                Err(E::custom(format!("must be a finite number >= 0, got {value}")))
            }
        }

        fn visit_i64<E: de::Error>(self, value: i64) -> Result<f64, E> {
            self.visit_f64(value as f64)
        }

        fn visit_u64<E: de::Error>(self, value: u64) -> Result<f64, E> {
            self.visit_f64(value as f64)
        }
    }
    deserializer.deserialize_any(Number).map(Some)
}

/// A suite file read and checked: its title and its cases, ready to prepare.
pub struct Suite {
    /// The suite's `name`, or the file's path when it has none.
    pub title: String,
    /// The cases, in file order.
    pub jobs: Vec<Job>,
}

/// Reads the suite file at `path`; paths in it are relative to its directory.
pub fn load(path: &Path, registry: &Registry) -> Result<Suite, CliError> {
    let bytes = replica_check::tensor_file::read_file(path)?;
    let source = String::from_utf8(bytes).map_err(|_| CliError::file(path, "is not UTF-8 text"))?;
    parse(&source, path, registry)
}

/// Checks the text of a suite file; `path` names it in errors and anchors its relative paths.
/// Reads no other file.
pub fn parse(source: &str, path: &Path, registry: &Registry) -> Result<Suite, CliError> {
    let file = SourceFile { path, source };
    let parsed: SuiteToml = toml::from_str(source).map_err(|err| file.toml_error(&err))?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let suite_tolerances = match &parsed.tolerance {
        Some(tolerance) => file.tolerances(tolerance)?,
        None => ToleranceOverrides::default(),
    };
    if parsed.case.is_empty() {
        return Err(CliError::file(path, "the suite has no cases: add a [[case]] table"));
    }
    let mut jobs = Vec::new();
    for spanned in &parsed.case {
        let case = spanned.get_ref();
        let line = file.line_of(spanned.span().start);
        let component = registry
            .get(case.component.get_ref())
            .map_err(|err| file.at(case.component.span(), err))?
            .clone();
        let reference = match &case.reference {
            Some(reference) => dir.join(reference.get_ref()),
            None => component.fixture.clone().ok_or_else(|| {
                file.at(
                    case.component.span(),
                    format!("`{}` has no committed fixture: give `reference`", component.name),
                )
            })?,
        };
        let weights = match &case.weights {
            Some(weights) => Some(Weights {
                path: dir.join(weights.get_ref()),
                map: match &case.weight_map {
                    Some(map) => file.weight_map(map)?,
                    None => WeightMap::new(),
                },
            }),
            None if case.weight_map.is_some() => {
                return Err(CliError::new(format!(
                    "{}:{line}: `weight_map` needs `weights` (the file it maps)",
                    path.display()
                )))
            }
            None => None,
        };
        let config = match &case.config {
            Some(config) => Some(file.config(config, &dir)?),
            None => None,
        };
        let tolerances = match &case.tolerance {
            Some(tolerance) => suite_tolerances.clone().then(&file.tolerances(tolerance)?),
            None => suite_tolerances.clone(),
        };
        jobs.push(Job {
            label: case.name.clone().unwrap_or_else(|| component.name.to_string()),
            component,
            reference,
            weights,
            config,
            tolerances,
            origin: format!("{}:{line}", path.display()),
            any_component: case.any_component,
        });
    }
    let title = parsed.name.unwrap_or_else(|| path.display().to_string());
    Ok(Suite { title, jobs })
}

/// The suite file's text, for turning byte offsets into lines.
struct SourceFile<'a> {
    path: &'a Path,
    source: &'a str,
}

impl SourceFile<'_> {
    /// The 1-based line of a byte offset.
    fn line_of(&self, offset: usize) -> usize {
        let offset = offset.min(self.source.len());
        self.source[..offset].matches('\n').count() + 1
    }

    /// The key a value at `offset` is assigned to: `rtol` in `x = { rtol = -1 }`,
    /// `ignore` in `ignore = ["a", "("]`, also across the lines of a multi-line array.
    fn key_before(&self, offset: usize) -> Option<String> {
        let offset = offset.min(self.source.len());
        let line_start = self.source[..offset].rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.source[offset..]
            .find('\n')
            .map_or(self.source.len(), |i| offset + i);
        if self.source[line_start..offset].trim().is_empty() && self.source[offset..line_end].contains('=') {
            return None; // the span is a key itself (`referense = ...`), not a value
        }
        let mut before = &self.source[..offset];
        let equals = loop {
            let line_start = before.rfind('\n').map_or(0, |i| i + 1);
            let line = &before[line_start..];
            if let Some(at) = line.rfind('=') {
                break line_start + at;
            }
            if line.trim_start().starts_with('[') && !line.trim_start().starts_with("[\"") || line_start == 0 {
                return None; // a table header, or the top of the file: no key
            }
            before = &before[..line_start - 1];
        };
        let key: String = self.source[..equals]
            .trim_end()
            .chars()
            .rev()
            .take_while(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '"' | '\'' | '*' | '/'))
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let key = key.trim_matches(|c| c == '"' || c == '\'').to_string();
        (!key.is_empty()).then_some(key)
    }

    /// `path:line: message`, naming the field assigned at `span` when the message does not.
    fn at(&self, span: Range<usize>, message: impl Into<String>) -> CliError {
        let message = message.into();
        let line = self.line_of(span.start);
        let field = match self.key_before(span.start) {
            Some(key) if !message.contains(&format!("`{key}`")) => format!("`{key}`: "),
            _ => String::new(),
        };
        CliError::new(format!("{}:{line}: {field}{message}", self.path.display()))
    }

    fn toml_error(&self, err: &toml::de::Error) -> CliError {
        let message = improve_message(err.message().trim());
        match err.span() {
            Some(span) => self.at(span, message),
            None => CliError::file(self.path, message),
        }
    }

    fn tolerances(&self, toml: &ToleranceToml) -> Result<ToleranceOverrides, CliError> {
        let mut overrides = ToleranceOverrides::default().all(ToleranceSpec {
            rtol: toml.rtol,
            atol: toml.atol,
            equal_nan: toml.equal_nan,
        });
        for (name, spec) in &toml.dtype {
            let dtype = parse_dtype(name.get_ref()).map_err(|err| self.at(name.span(), err))?;
            overrides = overrides.dtype(dtype, spec.spec());
        }
        for (pattern, spec) in &toml.tensor {
            overrides = overrides.tensor(pattern.clone(), spec.spec());
        }
        Ok(overrides)
    }

    fn weight_map(&self, toml: &WeightMapToml) -> Result<WeightMap, CliError> {
        let pattern = |p: &Spanned<String>| -> Result<String, CliError> {
            regex::Regex::new(p.get_ref())
                .map(|_| p.get_ref().clone())
                .map_err(|err| {
                    let why = crate::diff::regex_why(&err);
                    self.at(
                        p.span(),
                        format!("`{}` is not a regular expression: {why}", p.get_ref()),
                    )
                })
        };
        let mut map = WeightMap::new();
        for p in &toml.ignore {
            map = map.ignore(&pattern(p)?);
        }
        for (p, replacement) in &toml.rename {
            map = map.rename(&pattern(p)?, replacement);
        }
        for p in &toml.transpose {
            map = map.transpose(&pattern(p)?);
        }
        for split in &toml.split {
            let regex = pattern(&split.pattern)?;
            let into: Vec<&str> = split.into.iter().map(String::as_str).collect();
            map = match &split.sizes {
                None => map.split(&regex, split.dim, &into),
                Some(sizes) if sizes.get_ref().len() != into.len() => {
                    return Err(self.at(
                        sizes.span(),
                        format!(
                            "`sizes` has {} entries but `into` names {} parts",
                            sizes.get_ref().len(),
                            into.len()
                        ),
                    ))
                }
                Some(sizes) => {
                    let parts: Vec<(&str, usize)> = into.iter().copied().zip(sizes.get_ref().iter().copied()).collect();
                    map.split_sized(&regex, split.dim, &parts)
                }
            };
        }
        if let Some(dtype) = &toml.dtype {
            map = map.dtype(parse_dtype(dtype.get_ref()).map_err(|err| self.at(dtype.span(), err))?);
        }
        Ok(map)
    }

    fn config(&self, config: &Spanned<toml::Value>, dir: &Path) -> Result<ConfigSource, CliError> {
        match config.get_ref() {
            toml::Value::String(file) => Ok(ConfigSource::File(dir.join(file))),
            table @ toml::Value::Table(_) => {
                // JSON holds no NaN or infinity: serde_json would turn them into null,
                // which an optional field reads as "not set".
                if let Some((path, value)) = non_finite(table, String::new()) {
                    return Err(self.at(
                        config.span(),
                        format!("field `{path}` is {value}; a config holds finite numbers only"),
                    ));
                }
                serde_json::to_value(table)
                    .map(ConfigSource::Inline)
                    .map_err(|err| self.at(config.span(), format!("cannot convert to JSON: {err}")))
            }
            other => Err(self.at(
                config.span(),
                format!(
                    "must be the path of a JSON file or an inline table, got a {}",
                    other.type_str()
                ),
            )),
        }
    }
}

/// The first float in `value` that is NaN or infinite, with its dotted path below `path`.
fn non_finite(value: &toml::Value, path: String) -> Option<(String, f64)> {
    let below = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match value {
        toml::Value::Float(x) if !x.is_finite() => Some((path, *x)),
        toml::Value::Table(table) => table.iter().find_map(|(key, v)| non_finite(v, below(key))),
        toml::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| non_finite(v, below(&i.to_string()))),
        _ => None,
    }
}

/// serde's "unknown field `x`, expected one of `a`, `b`" with the closest known field.
fn improve_message(message: &str) -> String {
    let first_line = message.lines().next().unwrap_or(message).to_string();
    let Some(rest) = first_line.strip_prefix("unknown field `") else {
        return first_line;
    };
    let Some((field, expected)) = rest.split_once('`') else {
        return first_line;
    };
    let known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    match closest(field, known.iter().copied()) {
        Some(close) => format!("unknown field `{field}` (did you mean `{close}`?)"),
        None if !known.is_empty() => format!(
            "unknown field `{field}` (known fields: {})",
            known.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
        ),
        None => format!("unknown field `{field}`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Suite, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("suite.toml");
        std::fs::write(&path, text).unwrap();
        load(&path, &Registry::load()).map_err(|err| {
            let message = err.message;
            message
                .split_once("suite.toml")
                .map_or(message.clone(), |(_, rest)| rest.to_string())
        })
    }

    /// The error for a suite that must be refused, after the file name.
    fn refused(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("accepted: {text}"),
            Err(message) => message,
        }
    }

    #[test]
    fn a_minimal_suite_uses_the_fixture() {
        let suite = parse("[[case]]\ncomponent = \"layer_norm\"\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(suite.jobs.len(), 1);
        assert!(suite.jobs[0].reference.ends_with("layer_norm.safetensors"));
        assert_eq!(suite.jobs[0].label, "layer_norm");
    }

    #[test]
    fn typos_name_the_line_and_the_field() {
        let message = refused("[[case]]\ncomponent = \"layer_norm\"\nreferense = \"x\"\n");
        assert_eq!(message, ":3: unknown field `referense` (did you mean `reference`?)");
        let message = refused("[[case]]\ncomponent = \"layer_nrom\"\n");
        assert!(
            message.starts_with(":2: `component`: unknown component `layer_nrom` (did you mean `layer_norm`?"),
            "{message}"
        );
    }

    #[test]
    fn tolerances_must_be_non_negative_numbers() {
        let message = refused("[tolerance]\nrtol = -1\n[[case]]\ncomponent = \"linear\"\n");
        assert_eq!(message, ":2: `rtol`: must be a finite number >= 0, got -1");
        let message = refused("[[case]]\ncomponent = \"linear\"\ntolerance = { atol = \"abc\" }\n");
        assert!(
            message.starts_with(":3: `atol`: invalid type: string \"abc\", expected a number >= 0"),
            "{message}"
        );
        let message = refused("[[case]]\ncomponent = \"linear\"\n[case.tolerance.dtype]\nf17 = { rtol = 1 }\n");
        assert!(message.starts_with(":4: unknown dtype `f17`"), "{message}");
    }

    #[test]
    fn weight_map_patterns_are_checked() {
        let message = refused(
            "[[case]]\ncomponent = \"linear\"\nweights = \"w.safetensors\"\n[case.weight_map]\nignore = [\"(\"]\n",
        );
        assert!(
            message.starts_with(":5: `ignore`: `(` is not a regular expression"),
            "{message}"
        );
        let message = refused("[[case]]\ncomponent = \"linear\"\n[case.weight_map]\nignore = [\"x\"]\n");
        assert!(message.contains("`weight_map` needs `weights`"), "{message}");
    }

    #[test]
    fn an_empty_suite_is_an_error() {
        assert!(refused("name = \"x\"\n").contains("no cases"));
    }
}
