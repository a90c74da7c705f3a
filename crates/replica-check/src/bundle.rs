//! Reference bundles: one safetensors file with a module's weights, inputs,
//! outputs, per-module activations and gradients. The format is specified in
//! `docs/bundle-format.md`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::tensor_file::{open_safetensors, write_safetensors, SafetensorsFile, TensorFile};
use crate::weight_map::{LoadReport, ShapeMismatch};
use crate::{Error, Result, Rule, ToleranceOverrides};

/// The bundle format version this crate reads and writes.
pub const FORMAT_VERSION: u64 = 1;
/// The `__metadata__` entry that holds the bundle's JSON metadata.
pub const METADATA_KEY: &str = "replica";

/// Where a tensor lives in a bundle; every key starts with one of these prefixes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Namespace {
    /// `param/`: the `state_dict`, parameters and buffers.
    Param,
    /// `input/`: what the module was called with.
    Input,
    /// `output/`: what it returned.
    Output,
    /// `act/`: the output of each submodule, by module path.
    Activation,
    /// `grad/output/`: the seeded upstream gradient of each output.
    OutputGrad,
    /// `grad/param/`: the gradient of the loss with respect to each parameter.
    ParamGrad,
    /// `grad/input/`: the gradient of the loss with respect to each input.
    InputGrad,
}

/// The prefix of a float64 shadow tensor: `shadow/act/h.0.mlp` is the float64
/// shadow of `act/h.0.mlp`, what the reference computes without rounding.
pub const SHADOW_PREFIX: &str = "shadow/";

impl Namespace {
    /// The namespaces a float64 shadow may accompany: what the reference computed.
    pub const SHADOWED: [Namespace; 4] = [
        Namespace::Output,
        Namespace::Activation,
        Namespace::ParamGrad,
        Namespace::InputGrad,
    ];

    /// Every namespace, in the order keys are matched.
    pub const ALL: [Namespace; 7] = [
        Namespace::Param,
        Namespace::Input,
        Namespace::Output,
        Namespace::Activation,
        Namespace::OutputGrad,
        Namespace::ParamGrad,
        Namespace::InputGrad,
    ];

    /// The key prefix, e.g. `grad/param/`.
    pub fn prefix(self) -> &'static str {
        match self {
            Namespace::Param => "param/",
            Namespace::Input => "input/",
            Namespace::Output => "output/",
            Namespace::Activation => "act/",
            Namespace::OutputGrad => "grad/output/",
            Namespace::ParamGrad => "grad/param/",
            Namespace::InputGrad => "grad/input/",
        }
    }

    /// Splits a bundle key into its namespace and name.
    pub fn split(key: &str) -> Option<(Namespace, &str)> {
        Self::ALL
            .iter()
            .find_map(|&ns| key.strip_prefix(ns.prefix()).map(|name| (ns, name)))
            .filter(|(_, name)| !name.is_empty())
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.prefix())
    }
}

/// The library that computed the reference tensors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Producer {
    /// The library, e.g. `torch`.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Further libraries and versions, e.g. `"transformers": "4.46.0"`.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

/// The JSON metadata of a bundle (see `docs/bundle-format.md`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BundleMetadata {
    /// The format version, [`FORMAT_VERSION`].
    pub format_version: u64,
    /// What was captured: the reference class or a free label.
    pub component: String,
    /// The configuration the component was built with (e.g. a HF `config.json`).
    pub config: Value,
    /// The library that computed the tensors.
    pub producer: Producer,
    /// The dtype the component ran in (`float32`, `float16`, `bfloat16`, `float64`).
    pub dtype: String,
    /// The seed of the weights, inputs and upstream gradients.
    pub seed: Option<u64>,
    /// Activation names in the order the forward pass produced them.
    #[serde(default)]
    pub activations: Vec<String>,
    #[serde(default)]
    /// Input names in call order.
    pub inputs: Vec<String>,
    #[serde(default)]
    /// Output names in return order.
    pub outputs: Vec<String>,
    /// Whether the bundle holds a float64 shadow of the reference, or why not
    /// (absent in bundles written before shadows existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowInfo>,
    /// Fields a producer added beyond the format's own.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

/// The metadata's `shadow`: `{"dtype": "float64"}` when the bundle holds `shadow/`
/// tensors, `{"skipped": "<why>"}` when the producer could not (or was told not to) run one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// `float64` when the bundle holds shadow tensors.
    pub dtype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Why the bundle holds no shadow.
    pub skipped: Option<String>,
}

impl ShadowInfo {
    /// A float64 shadow is present.
    pub fn float64() -> Self {
        Self {
            dtype: Some("float64".into()),
            skipped: None,
        }
    }

    /// No shadow, and why.
    pub fn skipped(why: impl Into<String>) -> Self {
        Self {
            dtype: None,
            skipped: Some(why.into()),
        }
    }

    /// Whether the bundle holds a float64 shadow.
    pub fn is_present(&self) -> bool {
        self.dtype.as_deref() == Some("float64")
    }

    fn validate(&self) -> std::result::Result<(), String> {
        match (&self.dtype, &self.skipped) {
            (Some(dtype), None) if dtype == "float64" => Ok(()),
            (None, Some(_)) => Ok(()),
            _ => Err(format!(
                "metadata `shadow` must be {{\"dtype\": \"float64\"}} or {{\"skipped\": \"<why>\"}}, got {}",
                serde_json::to_string(self).unwrap_or_default()
            )),
        }
    }
}

impl BundleMetadata {
    /// Metadata for a component produced by `producer` (`name`, `version`).
    pub fn new(component: impl Into<String>, producer: (&str, &str), dtype: impl Into<String>) -> Self {
        Self {
            format_version: FORMAT_VERSION,
            component: component.into(),
            config: Value::Object(Default::default()),
            producer: Producer {
                name: producer.0.into(),
                version: producer.1.into(),
                extra: Default::default(),
            },
            dtype: dtype.into(),
            seed: None,
            activations: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            shadow: None,
            extra: Default::default(),
        }
    }

    fn from_json(text: &str) -> std::result::Result<Self, String> {
        let value: Value =
            serde_json::from_str(text).map_err(|err| format!("metadata `{METADATA_KEY}` is not JSON: {err}"))?;
        let Value::Object(mut fields) = value else {
            return Err(format!("metadata `{METADATA_KEY}` is not a JSON object"));
        };
        // A config stored as the text of a JSON object (`json.dumps(config)`) is that object.
        if let Some(Value::String(text)) = fields.get("config") {
            match serde_json::from_str::<Value>(text) {
                Ok(config @ Value::Object(_)) => {
                    fields.insert("config".into(), config);
                }
                _ => {
                    return Err(format!(
                        "metadata `{METADATA_KEY}`: field `config` is a string that is not the text of a JSON object"
                    ))
                }
            }
        }
        // Check the version first: a future version may have other fields entirely.
        match fields.get("format_version").and_then(Value::as_u64) {
            Some(FORMAT_VERSION) => {}
            Some(other) => {
                return Err(format!(
                    "unknown bundle format_version {other} (this build reads version {FORMAT_VERSION})"
                ))
            }
            None => return Err("metadata has no integer `format_version`".into()),
        }
        // serde would read an absent seed as null; the format requires the field.
        if !fields.contains_key("seed") {
            return Err(format!(
                "metadata `{METADATA_KEY}`: missing field `seed` (null when there was none)"
            ));
        }
        let value = Value::Object(fields);
        Self::deserialize(&value).map_err(|err| {
            // serde_json does not say which field it choked on; name it.
            let field = value
                .as_object()
                .and_then(misfit_field)
                .map_or(String::new(), |name| format!("field `{name}`: "));
            format!("metadata `{METADATA_KEY}`: {field}{err}")
        })
    }

    fn to_json(&self) -> String {
        serde_json::to_string(self).expect("metadata serialises")
    }
}

/// The first metadata field present with a value of the wrong type.
fn misfit_field(fields: &serde_json::Map<String, Value>) -> Option<&'static str> {
    fn fits<T: serde::de::DeserializeOwned>(value: Option<&Value>) -> bool {
        value.is_none_or(|value| T::deserialize(value).is_ok())
    }
    let field = |name| fields.get(name);
    [
        ("component", fits::<String>(field("component"))),
        ("producer", fits::<Producer>(field("producer"))),
        ("dtype", fits::<String>(field("dtype"))),
        ("seed", fits::<Option<u64>>(field("seed"))),
        ("activations", fits::<Vec<String>>(field("activations"))),
        ("inputs", fits::<Vec<String>>(field("inputs"))),
        ("outputs", fits::<Vec<String>>(field("outputs"))),
        ("shadow", fits::<ShadowInfo>(field("shadow"))),
    ]
    .into_iter()
    .find(|(_, fits)| !fits)
    .map(|(name, _)| name)
}

/// A reference bundle: metadata plus tensors by namespace.
#[derive(Clone, Debug)]
pub struct Bundle {
    origin: PathBuf,
    metadata: BundleMetadata,
    tensors: BTreeMap<Namespace, BTreeMap<String, Tensor>>,
    /// The float64 shadow of reference tensors, by the namespace and name of the tensor shadowed.
    shadows: BTreeMap<Namespace, BTreeMap<String, Tensor>>,
    /// Tolerances a user laid over the component's own for this run (not stored in the file).
    tolerances: ToleranceOverrides,
    /// The rule that decides each tensor's verdict for this run (not stored in the file).
    rule: Rule,
    /// What reads of the config recorded (`config.rs`).
    pub(crate) config_state: crate::config::ConfigState,
}

impl Bundle {
    /// An empty bundle with `metadata`, to fill with [`insert`](Self::insert) and save.
    pub fn new(metadata: BundleMetadata) -> Self {
        Self {
            origin: PathBuf::from("<memory>"),
            metadata,
            tensors: BTreeMap::new(),
            shadows: BTreeMap::new(),
            tolerances: ToleranceOverrides::default(),
            rule: Rule::default(),
            config_state: Default::default(),
        }
    }

    /// Reads and validates a bundle file (memory-mapped, under
    /// [`ReadLimits::current`](crate::tensor_file::ReadLimits::current)).
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let path = path.as_ref();
        let file = open_safetensors(path)?;
        // Refuse a file that is not a bundle before reading its tensors.
        BundleOutline::of(&file)?;
        Self::from_tensor_file(file.load_all(device)?, path)
    }

    /// Validates already-read safetensors contents as a bundle; `origin` names it in errors.
    pub fn from_tensor_file(file: TensorFile, origin: &Path) -> Result<Self> {
        let fail = |message: String| Error::file(origin, message);
        let metadata = bundle_metadata(&file.metadata).map_err(fail)?;
        let mut bundle = Self {
            origin: origin.to_path_buf(),
            metadata,
            tensors: BTreeMap::new(),
            shadows: BTreeMap::new(),
            tolerances: ToleranceOverrides::default(),
            rule: Rule::default(),
            config_state: Default::default(),
        };
        for (key, tensor) in file.tensors {
            let (ns, shadow, name) = split_key(&key).map_err(fail)?;
            let map = if shadow {
                &mut bundle.shadows
            } else {
                &mut bundle.tensors
            };
            map.entry(ns).or_default().insert(name.to_string(), tensor);
        }
        bundle.validate().map_err(fail)?;
        Ok(bundle)
    }

    /// Checks that the name lists in the metadata agree with the tensors, and that
    /// every shadow is a float64 tensor of its reference's shape.
    fn validate(&self) -> std::result::Result<(), String> {
        validate_names(
            &self.metadata,
            |ns| self.names(ns).collect(),
            |ns| self.shadow_names(ns),
        )?;
        for (ns, shadows) in &self.shadows {
            for (name, shadow) in shadows {
                let reference = &self.tensors[ns][name];
                if shadow.dtype() != candle_core::DType::F64 || shadow.dims() != reference.dims() {
                    return Err(format!(
                        "tensor `{SHADOW_PREFIX}{ns}{name}` must be f64 of shape {:?} like `{ns}{name}`, got {:?} {:?}",
                        reference.dims(),
                        shadow.dtype(),
                        shadow.dims()
                    ));
                }
            }
        }
        Ok(())
    }

    fn shadow_names(&self, ns: Namespace) -> Vec<&str> {
        self.shadows
            .get(&ns)
            .map_or(Vec::new(), |m| m.keys().map(String::as_str).collect())
    }

    /// Writes the bundle; an existing file is replaced only when `overwrite` is set.
    pub fn save(&self, path: impl AsRef<Path>, overwrite: bool) -> Result<()> {
        let path = path.as_ref();
        self.validate().map_err(|message| Error::file(path, message))?;
        let shadows = self.shadows.iter().flat_map(|(ns, map)| {
            map.iter()
                .map(move |(name, t)| (format!("{SHADOW_PREFIX}{ns}{name}"), t))
        });
        let keys: Vec<(String, &Tensor)> = self
            .tensors
            .iter()
            .flat_map(|(ns, map)| map.iter().map(move |(name, t)| (format!("{ns}{name}"), t)))
            .chain(shadows)
            .collect();
        let metadata = HashMap::from([(METADATA_KEY.to_string(), self.metadata.to_json())]);
        write_safetensors(path, keys.iter().map(|(k, t)| (k.as_str(), *t)), metadata, overwrite)
    }

    /// Adds a tensor. Activations, inputs and outputs are appended to the
    /// metadata's ordered lists, so insertion order is execution order.
    pub fn insert(&mut self, ns: Namespace, name: impl Into<String>, tensor: Tensor) {
        let name = name.into();
        let list = match ns {
            Namespace::Activation => Some(&mut self.metadata.activations),
            Namespace::Input => Some(&mut self.metadata.inputs),
            Namespace::Output => Some(&mut self.metadata.outputs),
            _ => None,
        };
        if let Some(list) = list {
            if !list.contains(&name) {
                list.push(name.clone());
            }
        }
        self.tensors.entry(ns).or_default().insert(name, tensor);
    }

    /// Adds the float64 shadow of the reference tensor `ns`/`name` (insert that first)
    /// and marks the metadata as holding a shadow.
    pub fn insert_shadow(&mut self, ns: Namespace, name: impl Into<String>, tensor: Tensor) {
        self.metadata.shadow = Some(ShadowInfo::float64());
        self.shadows.entry(ns).or_default().insert(name.into(), tensor);
    }

    /// The float64 shadow of the reference tensor `ns`/`name`, when the bundle holds one.
    pub fn shadow(&self, ns: Namespace, name: &str) -> Option<&Tensor> {
        self.shadows.get(&ns).and_then(|m| m.get(name))
    }

    /// Whether the bundle holds any float64 shadow tensor.
    pub fn has_shadow(&self) -> bool {
        self.shadows.values().any(|m| !m.is_empty())
    }

    /// The bundle's metadata.
    pub fn metadata(&self) -> &BundleMetadata {
        &self.metadata
    }

    /// The file this bundle was read from (`<memory>` for one built in code).
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// Whether the bundle holds `ns`/`name`.
    pub fn contains(&self, ns: Namespace, name: &str) -> bool {
        self.tensors.get(&ns).is_some_and(|m| m.contains_key(name))
    }

    /// The names in a namespace, sorted.
    pub fn names(&self, ns: Namespace) -> impl Iterator<Item = &str> {
        self.tensors
            .get(&ns)
            .into_iter()
            .flat_map(|m| m.keys().map(String::as_str))
    }

    /// All tensors of a namespace, by name.
    pub fn namespace(&self, ns: Namespace) -> BTreeMap<String, Tensor> {
        self.tensors.get(&ns).cloned().unwrap_or_default()
    }

    /// One tensor; the error names the bundle, the key, and what the namespace does hold.
    pub fn get(&self, ns: Namespace, name: &str) -> Result<&Tensor> {
        self.tensors.get(&ns).and_then(|m| m.get(name)).ok_or_else(|| {
            let held: Vec<&str> = self.names(ns).take(8).collect();
            let held = if held.is_empty() {
                "it holds none".to_string()
            } else {
                format!("it holds {}", held.join(", "))
            };
            Error::file(&self.origin, format!("bundle has no `{ns}{name}` ({held})"))
        })
    }

    /// The `param/` tensor `name`.
    pub fn param(&self, name: &str) -> Result<&Tensor> {
        self.get(Namespace::Param, name)
    }

    /// The `input/` tensor `name`.
    pub fn input(&self, name: &str) -> Result<&Tensor> {
        self.get(Namespace::Input, name)
    }

    /// The `output/` tensor `name`.
    pub fn output(&self, name: &str) -> Result<&Tensor> {
        self.get(Namespace::Output, name)
    }

    /// The `act/` tensor at module path `path`.
    pub fn activation(&self, path: &str) -> Result<&Tensor> {
        self.get(Namespace::Activation, path)
    }

    /// The `grad/param/` tensor `name`.
    pub fn param_grad(&self, name: &str) -> Result<&Tensor> {
        self.get(Namespace::ParamGrad, name)
    }

    /// The `grad/input/` tensor `name`.
    pub fn input_grad(&self, name: &str) -> Result<&Tensor> {
        self.get(Namespace::InputGrad, name)
    }

    /// The `grad/output/` tensor `name` (the seeded upstream gradient).
    pub fn output_grad(&self, name: &str) -> Result<&Tensor> {
        self.get(Namespace::OutputGrad, name)
    }

    /// This bundle with its `param/` tensors replaced by `params`: a user's
    /// checkpoint, already mapped to the bundle's names (see [`WeightMap`](crate::WeightMap)),
    /// so a component runs on those weights against the bundle's reference tensors.
    ///
    /// The replacement must fit: every parameter of the bundle present, no name
    /// the bundle lacks, the same shapes. Otherwise every problem is reported at
    /// once as [`Error::Load`], naming `origin` (the weights file). Floating-point
    /// tensors are converted to the dtype of the parameter they replace, and all
    /// are moved to the bundle's device. A bundle stored without parameters
    /// accepts any set.
    pub fn with_params(&self, params: BTreeMap<String, Tensor>, origin: impl AsRef<Path>) -> Result<Bundle> {
        let existing = self.namespace(Namespace::Param);
        let mut report = LoadReport {
            origin: origin.as_ref().to_path_buf(),
            missing: Vec::new(),
            unused: Vec::new(),
            mismatched: Vec::new(),
        };
        if !existing.is_empty() {
            for (name, expected) in &existing {
                match params.get(name) {
                    None => report.missing.push((name.clone(), expected.dims().to_vec())),
                    Some(given) if given.dims() != expected.dims() => report.mismatched.push(ShapeMismatch {
                        name: name.clone(),
                        source: name.clone(),
                        expected: expected.dims().to_vec(),
                        actual: given.dims().to_vec(),
                    }),
                    Some(_) => {}
                }
            }
            report.unused = params
                .keys()
                .filter(|name| !existing.contains_key(*name))
                .map(|name| (name.clone(), name.clone()))
                .collect();
        }
        if !report.is_clean() {
            return Err(Error::Load(Box::new(report)));
        }
        let mut replaced = BTreeMap::new();
        for (name, mut tensor) in params {
            if let Some(expected) = existing.get(&name) {
                if tensor.dtype().is_float() && expected.dtype().is_float() {
                    tensor = tensor.to_dtype(expected.dtype())?;
                }
                tensor = tensor.to_device(expected.device())?;
            }
            replaced.insert(name, tensor);
        }
        let mut bundle = self.clone();
        bundle.tensors.insert(Namespace::Param, replaced);
        Ok(bundle)
    }

    /// This bundle with `config` as its metadata's `config` (a user's `config.json`
    /// for the same component).
    pub fn with_config(mut self, config: Value) -> Self {
        self.metadata.config = config;
        self
    }

    /// This bundle with tolerances laid over the ones its component chooses;
    /// [`Parity`](crate::Parity) and [`compare_trace`](crate::report::compare_trace)
    /// resolve them per tensor key. They live only in memory: `save` does not write them.
    pub fn with_tolerances(mut self, tolerances: ToleranceOverrides) -> Self {
        self.tolerances = tolerances;
        self
    }

    /// The tolerances laid over the component's own (empty unless set).
    pub fn tolerances(&self) -> &ToleranceOverrides {
        &self.tolerances
    }

    /// This bundle with `rule` deciding each tensor's verdict (by default the noise
    /// multiple against the shadow where there is one, see [`Rule`]). In memory only.
    pub fn with_rule(mut self, rule: Rule) -> Self {
        self.rule = rule;
        self
    }

    /// The rule that decides each tensor's verdict in this run.
    pub fn rule(&self) -> Rule {
        self.rule
    }

    /// Activations in execution order.
    pub fn activations(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.metadata.activations.iter().filter_map(|name| {
            let tensor = self.tensors.get(&Namespace::Activation)?.get(name)?;
            Some((name.as_str(), tensor))
        })
    }
}

/// Checks that the name lists in the metadata agree with the tensor names,
/// given as the sorted names of each namespace (and of each namespace's shadows).
fn validate_names<'a>(
    metadata: &BundleMetadata,
    names_of: impl Fn(Namespace) -> Vec<&'a str>,
    shadows_of: impl Fn(Namespace) -> Vec<&'a str>,
) -> std::result::Result<(), String> {
    if let Some(info) = &metadata.shadow {
        info.validate()?;
    }
    let has_shadow = metadata.shadow.as_ref().is_some_and(ShadowInfo::is_present);
    for ns in Namespace::ALL {
        let shadows = shadows_of(ns);
        let Some(first) = shadows.first() else {
            continue;
        };
        if !Namespace::SHADOWED.contains(&ns) {
            return Err(format!(
                "tensor `{SHADOW_PREFIX}{ns}{first}`: only outputs, activations and gradients of params and inputs have a shadow"
            ));
        }
        if !has_shadow {
            return Err(format!(
                "tensor `{SHADOW_PREFIX}{ns}{first}` needs metadata shadow = {{\"dtype\": \"float64\"}}"
            ));
        }
        let owners: HashSet<&str> = names_of(ns).into_iter().collect();
        if let Some(name) = shadows.iter().find(|name| !owners.contains(*name)) {
            return Err(format!("tensor `{SHADOW_PREFIX}{ns}{name}` shadows no `{ns}{name}`"));
        }
    }
    let lists = [
        (Namespace::Activation, "activations", &metadata.activations, true),
        (Namespace::Input, "inputs", &metadata.inputs, false),
        (Namespace::Output, "outputs", &metadata.outputs, false),
    ];
    for (ns, field, listed, required) in lists {
        if listed.is_empty() && !required {
            continue;
        }
        let present: HashSet<&str> = names_of(ns).into_iter().collect();
        let mut seen = HashMap::new();
        for name in listed {
            if seen.insert(name.as_str(), ()).is_some() {
                return Err(format!("metadata `{field}` lists `{name}` twice"));
            }
            if !present.contains(name.as_str()) {
                return Err(format!(
                    "metadata `{field}` lists `{name}` but the bundle has no `{ns}{name}`"
                ));
            }
        }
        if let Some(name) = names_of(ns).into_iter().find(|name| !seen.contains_key(name)) {
            return Err(format!("tensor `{ns}{name}` is not listed in metadata `{field}`"));
        }
    }
    // A gradient belongs to a tensor of the bundle.
    let owners = [
        (Namespace::ParamGrad, Namespace::Param),
        (Namespace::InputGrad, Namespace::Input),
        (Namespace::OutputGrad, Namespace::Output),
    ];
    for (grad_ns, owner_ns) in owners {
        let owners: HashSet<&str> = names_of(owner_ns).into_iter().collect();
        if let Some(name) = names_of(grad_ns).into_iter().find(|name| !owners.contains(name)) {
            return Err(format!(
                "tensor `{grad_ns}{name}` has no `{owner_ns}{name}` to belong to"
            ));
        }
    }
    Ok(())
}

/// A bundle's metadata and tensor names, checked as [`Bundle::load`] checks
/// them, without reading a tensor: what `replica inspect` shows of a large file.
#[derive(Clone, Debug)]
pub struct BundleOutline {
    /// The bundle's metadata.
    pub metadata: BundleMetadata,
    /// The tensor names of each namespace.
    pub names: BTreeMap<Namespace, Vec<String>>,
    /// The names of the shadowed tensors, by namespace.
    pub shadows: BTreeMap<Namespace, Vec<String>>,
}

impl BundleOutline {
    /// The outline of a mapped file; the error is the one `Bundle::load` would give.
    pub fn of(file: &SafetensorsFile) -> Result<Self> {
        let origin = file.path();
        let fail = |message: String| Error::file(origin, message);
        let metadata = bundle_metadata(file.metadata()).map_err(fail)?;
        let mut names: BTreeMap<Namespace, Vec<String>> = BTreeMap::new();
        let mut shadows: BTreeMap<Namespace, Vec<String>> = BTreeMap::new();
        for info in file.tensors() {
            let (ns, shadow, name) = split_key(&info.name).map_err(fail)?;
            let map = if shadow { &mut shadows } else { &mut names };
            map.entry(ns).or_default().push(name.to_string());
        }
        fn listed(map: &BTreeMap<Namespace, Vec<String>>, ns: Namespace) -> Vec<&str> {
            let mut list: Vec<&str> = map
                .get(&ns)
                .map_or(Vec::new(), |v| v.iter().map(String::as_str).collect());
            list.sort_unstable();
            list
        }
        validate_names(&metadata, |ns| listed(&names, ns), |ns| listed(&shadows, ns)).map_err(fail)?;
        Ok(Self {
            metadata,
            names,
            shadows,
        })
    }
}

/// The bundle metadata in a safetensors file's `__metadata__`.
fn bundle_metadata(metadata: &HashMap<String, String>) -> std::result::Result<BundleMetadata, String> {
    let text = metadata
        .get(METADATA_KEY)
        .ok_or_else(|| format!("not a reference bundle: no `{METADATA_KEY}` entry in the safetensors metadata"))?;
    BundleMetadata::from_json(text)
}

/// A key's namespace, whether it is a shadow (`shadow/...`), and its name; or why it has none.
fn split_key(key: &str) -> std::result::Result<(Namespace, bool, &str), String> {
    let (shadow, rest) = match key.strip_prefix(SHADOW_PREFIX) {
        Some(rest) => (true, rest),
        None => (false, key),
    };
    Namespace::split(rest)
        .map(|(ns, name)| (ns, shadow, name))
        .ok_or_else(|| {
            format!(
                "key `{key}` is outside the bundle namespaces ({}, and {SHADOW_PREFIX} before one of them)",
                Namespace::ALL.map(Namespace::prefix).join(", ")
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle() -> Bundle {
        let mut bundle = Bundle::new(BundleMetadata::new("test", ("torch", "0"), "float32"));
        let device = Device::Cpu;
        bundle.insert(
            Namespace::Param,
            "w",
            Tensor::zeros((2, 3), candle_core::DType::F32, &device).unwrap(),
        );
        bundle.insert(
            Namespace::Param,
            "b",
            Tensor::zeros(3, candle_core::DType::F32, &device).unwrap(),
        );
        bundle
    }

    #[test]
    fn with_params_replaces_and_converts() {
        let device = Device::Cpu;
        let params = BTreeMap::from([
            (
                "w".to_string(),
                Tensor::ones((2, 3), candle_core::DType::F64, &device).unwrap(),
            ),
            (
                "b".to_string(),
                Tensor::ones(3, candle_core::DType::F32, &device).unwrap(),
            ),
        ]);
        let replaced = bundle().with_params(params, "weights.safetensors").unwrap();
        let w = replaced.param("w").unwrap();
        assert_eq!(w.dtype(), candle_core::DType::F32);
        assert_eq!(w.sum_all().unwrap().to_scalar::<f32>().unwrap(), 6.0);
    }

    #[test]
    fn with_params_reports_every_problem() {
        let device = Device::Cpu;
        let params = BTreeMap::from([
            (
                "w".to_string(),
                Tensor::ones((3, 2), candle_core::DType::F32, &device).unwrap(),
            ),
            (
                "extra".to_string(),
                Tensor::ones(1, candle_core::DType::F32, &device).unwrap(),
            ),
        ]);
        let err = bundle().with_params(params, "weights.safetensors").unwrap_err();
        let Error::Load(report) = &err else {
            panic!("expected a load report, got {err}")
        };
        assert_eq!(report.missing, vec![("b".to_string(), vec![3])]);
        assert_eq!(report.unused, vec![("extra".to_string(), "extra".to_string())]);
        assert_eq!(report.mismatched.len(), 1);
        assert_eq!(
            (
                report.mismatched[0].expected.clone(),
                report.mismatched[0].actual.clone()
            ),
            (vec![2, 3], vec![3, 2])
        );
        let text = err.to_string();
        assert!(
            text.starts_with("weights.safetensors: the weights do not fit the model (3 problems)"),
            "{text}"
        );
    }
}
