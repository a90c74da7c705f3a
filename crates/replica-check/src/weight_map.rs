//! Declarative weight maps: how a reference checkpoint's tensors become the
//! tensors a candle model asks its `VarBuilder` for, and strict loading that
//! reports every missing, unused and misshapen tensor at once, as PyTorch's
//! `load_state_dict(strict=True)` does.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use regex::Regex;

use crate::tensor_file::read_safetensors;
use crate::{printable, Error, Result};

#[derive(Clone, Debug)]
enum Rule {
    Ignore(Regex),
    Rename(Regex, String),
    Transpose(Regex),
    Split {
        pattern: Regex,
        dim: usize,
        parts: Vec<(String, Option<usize>)>,
    },
}

/// An ordered list of rules applied to every source tensor name, then an
/// optional dtype for floating-point tensors.
///
/// ```
/// use replica_check::WeightMap;
/// // HF GPT-2: drop the `transformer.` prefix, transpose Conv1D weights,
/// // split the fused QKV projection, ignore the causal-mask buffers.
/// let map = WeightMap::new()
///     .ignore(r"\.attn\.(masked_)?bias$")
///     .rename(r"^transformer\.", "")
///     .transpose(r"\.(c_attn|c_proj|c_fc)\.weight$")
///     .split(r"^(.*)\.c_attn\.(weight|bias)$", 0, &["$1.q.$2", "$1.k.$2", "$1.v.$2"]);
/// ```
///
/// Rules run in the order they were added; a later rule sees the names an
/// earlier one produced. Patterns are regular expressions; replacements may use
/// `$1`, `${name}` as in the `regex` crate.
#[derive(Clone, Debug, Default)]
pub struct WeightMap {
    rules: Vec<Rule>,
    dtype: Option<DType>,
    lenient: bool,
    invalid: Vec<String>,
}

impl WeightMap {
    /// A map that renames nothing.
    pub fn new() -> Self {
        Self::default()
    }

    fn with(mut self, pattern: &str, make: impl FnOnce(Regex) -> Rule) -> Self {
        match Regex::new(pattern) {
            Ok(regex) => self.rules.push(make(regex)),
            Err(err) => self.invalid.push(format!("invalid pattern `{pattern}`: {err}")),
        }
        self
    }

    /// Drops source tensors whose name matches (buffers the model does not need).
    pub fn ignore(self, pattern: &str) -> Self {
        self.with(pattern, Rule::Ignore)
    }

    /// Rewrites the first match of `pattern` in each name with `replacement`.
    pub fn rename(self, pattern: &str, replacement: &str) -> Self {
        let replacement = replacement.to_string();
        self.with(pattern, |regex| Rule::Rename(regex, replacement))
    }

    /// Swaps the two dimensions of matching 2-D tensors (HF GPT-2 `Conv1D` stores `[in, out]`).
    pub fn transpose(self, pattern: &str) -> Self {
        self.with(pattern, Rule::Transpose)
    }

    /// Splits a matching tensor into equal parts along `dim`, named by applying
    /// each replacement to the matched name (a fused QKV projection into Q, K, V).
    pub fn split(self, pattern: &str, dim: usize, parts: &[&str]) -> Self {
        let parts = parts.iter().map(|p| (p.to_string(), None)).collect();
        self.with(pattern, |pattern| Rule::Split { pattern, dim, parts })
    }

    /// Like [`split`](Self::split), with the size of each part (GQA: Q larger than K and V).
    pub fn split_sized(self, pattern: &str, dim: usize, parts: &[(&str, usize)]) -> Self {
        let parts = parts.iter().map(|(p, n)| (p.to_string(), Some(*n))).collect();
        self.with(pattern, |pattern| Rule::Split { pattern, dim, parts })
    }

    /// Converts floating-point tensors to `dtype` (integer buffers are left alone).
    pub fn dtype(mut self, dtype: DType) -> Self {
        self.dtype = Some(dtype);
        self
    }

    /// Accepts source tensors the model never asks for (strict loading refuses them).
    pub fn lenient(mut self) -> Self {
        self.lenient = true;
        self
    }

    /// Reads a safetensors checkpoint and applies the map.
    pub fn load(&self, path: impl AsRef<Path>, device: &Device) -> Result<MappedWeights> {
        let path = path.as_ref();
        self.apply(read_safetensors(path, device)?.tensors, path)
    }

    /// Applies the map to named tensors (a checkpoint, or a bundle's `param/` namespace);
    /// `origin` names the source in errors.
    pub fn apply(&self, source: BTreeMap<String, Tensor>, origin: &Path) -> Result<MappedWeights> {
        let fail = |message: String| Error::file(origin, message);
        if let Some(problem) = self.invalid.first() {
            return Err(fail(format!("weight map: {problem}")));
        }
        let mut tensors = BTreeMap::new();
        let mut source_of = BTreeMap::new();
        for (source_name, tensor) in source {
            let mut pending = vec![(source_name.clone(), tensor)];
            for rule in &self.rules {
                let mut next = Vec::with_capacity(pending.len());
                for (name, tensor) in pending {
                    apply_rule(rule, name, tensor, &mut next).map_err(|err| fail(format!("`{source_name}`: {err}")))?;
                }
                pending = next;
            }
            for (name, mut tensor) in pending {
                if let Some(dtype) = self.dtype.filter(|_| tensor.dtype().is_float()) {
                    tensor = tensor.to_dtype(dtype)?;
                }
                if let Some(earlier) = source_of.insert(name.clone(), source_name.clone()) {
                    return Err(fail(format!(
                        "weight map sends both `{earlier}` and `{source_name}` to `{name}`"
                    )));
                }
                tensors.insert(name, tensor);
            }
        }
        Ok(MappedWeights {
            origin: origin.to_path_buf(),
            tensors,
            source_of,
            strict: !self.lenient,
        })
    }
}

fn apply_rule(
    rule: &Rule,
    name: String,
    tensor: Tensor,
    out: &mut Vec<(String, Tensor)>,
) -> std::result::Result<(), String> {
    match rule {
        Rule::Ignore(pattern) => {
            if !pattern.is_match(&name) {
                out.push((name, tensor));
            }
        }
        Rule::Rename(pattern, replacement) => {
            let renamed = pattern.replace(&name, replacement.as_str()).into_owned();
            out.push((renamed, tensor));
        }
        Rule::Transpose(pattern) if pattern.is_match(&name) => {
            if tensor.rank() != 2 {
                return Err(format!("transpose needs a 2-D tensor, got shape {:?}", tensor.dims()));
            }
            out.push((
                name,
                tensor.t().and_then(|t| t.contiguous()).map_err(|e| e.to_string())?,
            ));
        }
        Rule::Split { pattern, dim, parts } if pattern.is_match(&name) => {
            let dims = tensor.dims();
            let Some(&total) = dims.get(*dim) else {
                return Err(format!("split along dim {dim}, but the tensor has shape {dims:?}"));
            };
            let sizes: Vec<usize> = match parts.iter().map(|(_, n)| *n).collect::<Option<Vec<_>>>() {
                // No parts at all would silently drop the tensor.
                _ if parts.is_empty() => return Err("split into no parts".into()),
                Some(sizes) => sizes,
                None if total % parts.len() == 0 => vec![total / parts.len(); parts.len()],
                None => {
                    return Err(format!(
                        "cannot split dim {dim} of size {total} into {} equal parts",
                        parts.len()
                    ))
                }
            };
            // Checked: sizes come from a suite file and may be anything; a wrapped sum could pass.
            if sizes.iter().try_fold(0usize, |sum, &n| sum.checked_add(n)) != Some(total) {
                return Err(format!(
                    "split sizes {sizes:?} do not add up to dim {dim} of size {total}"
                ));
            }
            let mut start = 0;
            for ((replacement, _), size) in parts.iter().zip(sizes) {
                let part = tensor.narrow(*dim, start, size).and_then(|t| t.contiguous());
                let part_name = pattern.replace(&name, replacement.as_str()).into_owned();
                out.push((part_name, part.map_err(|e| e.to_string())?));
                start += size;
            }
        }
        Rule::Transpose(_) | Rule::Split { .. } => out.push((name, tensor)),
    }
    Ok(())
}

/// Tensors after a weight map, ready to feed a model.
#[derive(Clone, Debug)]
pub struct MappedWeights {
    origin: PathBuf,
    tensors: BTreeMap<String, Tensor>,
    /// For each mapped name, the source key it came from (for error messages).
    source_of: BTreeMap<String, String>,
    strict: bool,
}

impl MappedWeights {
    /// The mapped tensors, by the model's names.
    pub fn tensors(&self) -> &BTreeMap<String, Tensor> {
        &self.tensors
    }

    /// Builds a model from these weights. `build` receives a `VarBuilder`;
    /// every tensor it asks for is checked. Missing tensors and shape mismatches
    /// are recorded (the builder gets zeros so it can go on and reveal the rest),
    /// and after it returns, every problem is reported together, with the source
    /// tensors nobody asked for when the map is strict.
    pub fn build<M>(
        &self,
        dtype: DType,
        device: &Device,
        build: impl FnOnce(VarBuilder) -> candle_core::Result<M>,
    ) -> Result<M> {
        let log = Arc::new(Mutex::new(Requests::default()));
        let backend = Recorder {
            tensors: self.tensors.clone(),
            log: log.clone(),
        };
        let vb = VarBuilder::from_backend(Box::new(backend), dtype, device.clone());
        let built = build(vb);
        let requests = std::mem::take(&mut *log.lock().expect("load log"));
        let report = self.report(requests);
        // A builder that stopped early (a config refused before it asked for every
        // tensor) leaves tensors unused: its own error says why, the list would not.
        let stopped_early = built.is_err() && report.missing.is_empty() && report.mismatched.is_empty();
        if !report.is_clean() && !stopped_early {
            return Err(Error::Load(Box::new(report)));
        }
        Ok(built?)
    }

    /// A plain `VarBuilder` over the mapped tensors, without the strict checks.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_tensors(self.tensors.clone().into_iter().collect(), dtype, device)
    }

    fn report(&self, requests: Requests) -> LoadReport {
        let unused = if self.strict {
            self.tensors
                .keys()
                .filter(|name| !requests.asked.contains(*name))
                .map(|name| (name.clone(), self.source_of[name].clone()))
                .collect()
        } else {
            Vec::new()
        };
        let mismatched = requests
            .mismatched
            .into_iter()
            .map(|(name, expected, actual)| ShapeMismatch {
                source: self.source_of.get(&name).cloned().unwrap_or_default(),
                name,
                expected,
                actual,
            })
            .collect();
        LoadReport {
            origin: self.origin.clone(),
            missing: requests.missing,
            unused,
            mismatched,
        }
    }
}

#[derive(Default)]
struct Requests {
    asked: BTreeSet<String>,
    missing: Vec<(String, Vec<usize>)>,
    mismatched: Vec<(String, Vec<usize>, Vec<usize>)>,
}

struct Recorder {
    tensors: BTreeMap<String, Tensor>,
    log: Arc<Mutex<Requests>>,
}

impl SimpleBackend for Recorder {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut log = self.log.lock().expect("load log");
        log.asked.insert(name.to_string());
        match self.tensors.get(name) {
            Some(tensor) if tensor.shape() == &shape => tensor.to_dtype(dtype)?.to_device(dev),
            found => {
                let wanted = shape.dims().to_vec();
                match found {
                    Some(tensor) => log.mismatched.push((name.to_string(), wanted, tensor.dims().to_vec())),
                    None => log.missing.push((name.to_string(), wanted)),
                }
                Tensor::zeros(shape, dtype, dev)
            }
        }
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let mut log = self.log.lock().expect("load log");
        log.asked.insert(name.to_string());
        match self.tensors.get(name) {
            Some(tensor) => tensor.to_dtype(dtype)?.to_device(dev),
            None => {
                log.missing.push((name.to_string(), Vec::new()));
                candle_core::bail!("missing tensor `{name}`")
            }
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// A tensor whose shape disagrees with what the model asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct ShapeMismatch {
    /// The name the model asked for.
    pub name: String,
    /// The source key it was mapped from.
    pub source: String,
    /// The shape the model expects.
    pub expected: Vec<usize>,
    /// The shape the weights have.
    pub actual: Vec<usize>,
}

/// Every problem found loading weights into a model.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadReport {
    /// The weights file.
    pub origin: PathBuf,
    /// Names the model asked for that the weights lack, with the shape it wanted
    /// (empty when it asked without a shape).
    pub missing: Vec<(String, Vec<usize>)>,
    /// Mapped names the model never asked for, with their source keys (strict maps only).
    pub unused: Vec<(String, String)>,
    /// Tensors whose shapes differ from the model's.
    pub mismatched: Vec<ShapeMismatch>,
}

impl LoadReport {
    /// Whether every tensor was found, used and of the right shape.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.unused.is_empty() && self.mismatched.is_empty()
    }

    /// How many problems there are in all.
    pub fn problem_count(&self) -> usize {
        self.missing.len() + self.unused.len() + self.mismatched.len()
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: the weights do not fit the model ({} problems)",
            printable(&self.origin.display().to_string()),
            self.problem_count()
        )?;
        for (name, shape) in &self.missing {
            write!(f, "\n  missing: `{}`", printable(name))?;
            if !shape.is_empty() {
                write!(f, " (the model expects shape {shape:?})")?;
            }
        }
        for m in &self.mismatched {
            write!(
                f,
                "\n  shape mismatch: `{}`: the model expects {:?}, the weights have {:?}",
                printable(&m.name),
                m.expected,
                m.actual
            )?;
            if m.source != m.name {
                write!(f, " (from `{}`)", printable(&m.source))?;
            }
        }
        for (name, source) in &self.unused {
            write!(f, "\n  unused: `{}` (the model never asks for it)", printable(name))?;
            if source != name {
                write!(f, " (from `{}`)", printable(source))?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for LoadReport {}
