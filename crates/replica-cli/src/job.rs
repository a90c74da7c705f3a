//! A case to run: a component, its reference bundle, and the user's weights,
//! config and tolerances laid over it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use replica_check::bundle::METADATA_KEY;
use replica_check::{open_safetensors, read_safetensors, Bundle, Rule, ToleranceOverrides, WeightMap};
use serde_json::Value;

use crate::error::CliError;
use crate::registry::Component;

/// A weights file and the map from its names to the bundle's.
pub struct Weights {
    /// The safetensors file.
    pub path: PathBuf,
    /// How its names become the bundle's `param/` keys.
    pub map: WeightMap,
}

/// Where a case's `config` comes from.
pub enum ConfigSource {
    /// A JSON file: `--config`, or a suite case's `config` given as a path.
    File(PathBuf),
    /// A suite case's `config` given as an inline table, converted to JSON.
    Inline(Value),
}

/// One case to run: a component on a bundle, maybe with other weights, config and tolerances.
pub struct Job {
    /// The row's label.
    pub label: String,
    /// The component to run.
    pub component: Component,
    /// The reference bundle.
    pub reference: PathBuf,
    /// Weights that replace the bundle's `param/` tensors.
    pub weights: Option<Weights>,
    /// A config that replaces the bundle's.
    pub config: Option<ConfigSource>,
    /// The suite's and the case's tolerances, laid over the component's own.
    pub tolerances: ToleranceOverrides,
    /// Where the case was declared (`suite.toml:12`), for errors; empty on the command line.
    pub origin: String,
    /// Run on a bundle whose `component` is not the one the component implements.
    pub any_component: bool,
}

impl Job {
    pub(crate) fn from_component(component: &Component) -> Result<Self, CliError> {
        let reference = component.fixture.clone().ok_or_else(|| {
            CliError::new(format!(
                "`{}` has no committed fixture: give --reference",
                component.name
            ))
        })?;
        Ok(Job {
            label: component.name.to_string(),
            component: component.clone(),
            reference,
            weights: None,
            config: None,
            tolerances: ToleranceOverrides::default(),
            origin: String::new(),
            any_component: false,
        })
    }

    /// Loads the bundle and applies the job's config, weights and tolerances (`extra` last).
    pub(crate) fn prepare(&self, device: &Device, extra: &ToleranceOverrides, rule: Rule) -> Result<Bundle, CliError> {
        self.try_prepare(device, extra)
            .map(|b| b.with_rule(rule))
            .map_err(|err| {
                if self.origin.is_empty() {
                    err
                } else {
                    err.context(format!("{} (case `{}`)", self.origin, self.label))
                }
            })
    }

    fn try_prepare(&self, device: &Device, extra: &ToleranceOverrides) -> Result<Bundle, CliError> {
        let mut bundle = Bundle::load(&self.reference, device)?;
        self.check_component(&bundle)?;
        match &self.config {
            Some(ConfigSource::File(path)) => bundle = bundle.with_config_file(read_json(path)?, path),
            // Config errors then name the suite file and line.
            Some(ConfigSource::Inline(value)) => bundle = bundle.with_config_file(value.clone(), &self.origin),
            None => {}
        }
        if let Some(weights) = &self.weights {
            let params = load_weights(weights, device)?;
            bundle = bundle
                .with_params(params, &weights.path)
                .map_err(|err| self.misfit(err))?;
        }
        Ok(bundle.with_tolerances(self.tolerances.clone().then(extra)))
    }

    /// Refuses a bundle made from another component than this one implements (a ReLU
    /// case on a GELU bundle would read the GELU config and pass), unless told otherwise.
    fn check_component(&self, bundle: &Bundle) -> Result<(), CliError> {
        if self.any_component || self.component.fixture.as_ref() == Some(&self.reference) {
            return Ok(());
        }
        let Some(expected) = self.component.implements()? else {
            return Ok(());
        };
        let actual = &bundle.metadata().component;
        if *actual == expected {
            return Ok(());
        }
        let flag = if self.origin.is_empty() {
            "--any-component"
        } else {
            "`any_component = true` on the case"
        };
        Err(CliError::file(
            &self.reference,
            format!(
                "the bundle's component is `{actual}`, but `{}` implements `{expected}` (its fixture's); \
                 {flag} runs it anyway",
                self.component.name
            ),
        ))
    }

    /// Weights that do not fit: a headline naming the files, then the first problems.
    fn misfit(&self, err: replica_check::Error) -> CliError {
        let headline = match &err {
            replica_check::Error::Load(report) => Some(format!(
                "{}: the weights do not fit `{}` ({} problems against the parameters of {})",
                report.origin.display(),
                self.component.name,
                report.problem_count(),
                self.reference.display()
            )),
            _ => None,
        };
        let mut cli = CliError::from(err);
        if let Some(headline) = headline {
            cli.message = headline;
        }
        if self.weights.as_ref().is_some_and(|w| is_bundle(&w.path)) {
            cli.details.push(
                "hint: this weights file is a reference bundle; its weights are its `param/` tensors. A suite's \
                 weight_map takes them: ignore = [\"^(input|output|act|grad|shadow)/\"], rename = { \"^param/\" = \"\" }"
                    .to_string(),
            );
        }
        cli
    }
}

fn read_json(path: &Path) -> Result<Value, CliError> {
    let bytes = replica_check::tensor_file::read_file(path)?;
    serde_json::from_slice(&bytes).map_err(|err| {
        CliError::file(
            path,
            format!("not valid JSON at line {} column {}: {err}", err.line(), err.column()),
        )
    })
}

/// A weights file's tensors after its weight map.
fn load_weights(weights: &Weights, device: &Device) -> Result<BTreeMap<String, Tensor>, CliError> {
    let file = read_safetensors(&weights.path, device)?;
    Ok(weights.map.apply(file.tensors, &weights.path)?.tensors().clone())
}

/// Whether a weights file is itself a reference bundle (its weights are under `param/`).
fn is_bundle(path: &Path) -> bool {
    open_safetensors(path).is_ok_and(|file| file.metadata().contains_key(METADATA_KEY))
}
