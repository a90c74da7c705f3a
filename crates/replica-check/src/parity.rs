//! A parity run: feed a component the bundle's weights and inputs, then check
//! its outputs, activations and gradients against the reference in one report.
//!
//! The activation rule, the same for every run: each activation the component
//! records ([`Parity::traced`]) is compared with the reference's of the same name,
//! a recorded activation the reference lacks fails (a wrong module path), and a
//! reference activation that no row checked fails at [`Parity::finish`] (a module
//! the port never recorded). Where one side cannot have what the other records,
//! the run names it in [`Unmatched`], and the name must really be unmatched.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use candle_core::{DType, Tensor, Var};

use crate::bundle::{Bundle, Namespace};
use crate::report::unmatched;
use crate::trace::{self, Trace};
use crate::{compare_trace, Error, Report, Result, Tolerance, TraceReport};

/// Activations that only one side can record, each listed with its reason where it
/// is declared (as a comment). [`Parity::traced`] refuses a name that is not in
/// fact unmatched, so a list cannot go stale.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unmatched<'a> {
    /// Recorded by the port, never by the reference: the reference's hook cannot
    /// fire there (torch computes those projections inside one functional call).
    pub port_only: &'a [&'a str],
    /// Recorded by the reference, never by the port: the port computes it inside a
    /// block that records no such tensor.
    pub reference_only: &'a [&'a str],
}

impl Unmatched<'_> {
    /// Every activation is matched.
    pub const NONE: Unmatched<'static> = Unmatched {
        port_only: &[],
        reference_only: &[],
    };
}

/// The reference weights and inputs of a bundle, held as trainable variables
/// so that a forward pass on them can be differentiated.
///
/// ```no_run
/// use candle_core::{Device, Module};
/// use replica_check::{Bundle, Parity};
/// # fn main() -> replica_check::Result<()> {
/// let bundle = Bundle::load("tests/fixtures/linear.safetensors", &Device::Cpu)?;
/// let mut run = Parity::new(&bundle)?;
/// let (w, b, x) = (run.param("weight")?, run.param("bias")?, run.input("0")?);
/// let y = candle_nn::Linear::new(w, Some(b)).forward(&x)?;
/// run.check_outputs_and_gradients(&[("0", &y)])?;
/// println!("{}", run.finish());
/// # Ok(()) }
/// ```
pub struct Parity<'a> {
    bundle: &'a Bundle,
    params: BTreeMap<String, Tensor>,
    inputs: BTreeMap<String, Tensor>,
    param_vars: BTreeMap<String, Var>,
    input_vars: BTreeMap<String, Var>,
    tolerance: Option<Tolerance>,
    /// Tied parameter -> the parameter whose variable it shares.
    ties: BTreeMap<String, String>,
    /// Reference activations set aside as [`Unmatched::reference_only`].
    reference_only: BTreeSet<String>,
    /// The inputs the port has read: a bundle input no one reads fails at [`Parity::finish`].
    read_inputs: RefCell<BTreeSet<String>>,
    report: Report,
}

fn split_trainable(tensors: BTreeMap<String, Tensor>) -> Result<(BTreeMap<String, Tensor>, BTreeMap<String, Var>)> {
    let mut vars = BTreeMap::new();
    let mut plain = BTreeMap::new();
    for (name, tensor) in tensors {
        if tensor.dtype().is_float() {
            let var = Var::from_tensor(&tensor)?;
            plain.insert(name.clone(), var.as_tensor().clone());
            vars.insert(name, var);
        } else {
            plain.insert(name, tensor);
        }
    }
    Ok((plain, vars))
}

impl<'a> Parity<'a> {
    /// The bundle's parameters and inputs as variables, and an empty report titled with its component.
    pub fn new(bundle: &'a Bundle) -> Result<Self> {
        let (params, param_vars) = split_trainable(bundle.namespace(Namespace::Param))?;
        let (inputs, input_vars) = split_trainable(bundle.namespace(Namespace::Input))?;
        Ok(Self {
            bundle,
            params,
            inputs,
            param_vars,
            input_vars,
            tolerance: None,
            ties: BTreeMap::new(),
            reference_only: BTreeSet::new(),
            read_inputs: RefCell::new(BTreeSet::new()),
            report: Report::new(bundle.metadata().component.clone()),
        })
    }

    /// Use `tolerance` for every check instead of the defaults of each reference tensor's dtype.
    pub fn with_tolerance(mut self, tolerance: Tolerance) -> Self {
        self.tolerance = Some(tolerance);
        self
    }

    /// The tolerance for the bundle tensor `ns`/`name` whose reference has `dtype`:
    /// this run's own (or the dtype's default), with the bundle's
    /// [`tolerances`](Bundle::tolerances) laid over it.
    fn tolerance_for(&self, ns: Namespace, name: &str, dtype: DType) -> Tolerance {
        let base = self.tolerance.unwrap_or_else(|| Tolerance::for_dtype(dtype));
        self.bundle.tolerances().resolve(&format!("{ns}{name}"), dtype, base)
    }

    /// The bundle this run checks against.
    pub fn bundle(&self) -> &Bundle {
        self.bundle
    }

    /// A parameter, tracked for gradients.
    pub fn param(&self, name: &str) -> Result<Tensor> {
        self.bundle.param(name)?;
        Ok(self.params[name].clone())
    }

    /// All parameters by `state_dict` name, tracked for gradients (to build a `VarBuilder`).
    pub fn params(&self) -> &BTreeMap<String, Tensor> {
        &self.params
    }

    /// An input, tracked for gradients when it is floating point. Every input the
    /// bundle gives must be read: the reference ran on it.
    pub fn input(&self, name: &str) -> Result<Tensor> {
        self.bundle.input(name)?;
        self.read_inputs.borrow_mut().insert(name.to_string());
        Ok(self.inputs[name].clone())
    }

    /// Compares tensors with the bundle's `output/` entries of the same names.
    pub fn check_outputs(&mut self, outputs: &[(&str, &Tensor)]) {
        self.check(Namespace::Output, outputs);
    }

    /// Like [`check_outputs`](Self::check_outputs) for a second implementation of
    /// the same outputs; its rows are labelled `output/<name> [variant]`.
    pub fn check_outputs_of(&mut self, variant: &str, outputs: &[(&str, &Tensor)]) {
        for (name, actual) in outputs {
            let dtype = self.bundle.output(name).map_or(actual.dtype(), |t| t.dtype());
            let label = format!("{}{name} [{variant}]", Namespace::Output);
            let tolerance = self.tolerance_for(Namespace::Output, name, dtype);
            self.report
                .check_as(label, self.bundle, Namespace::Output, name, actual, tolerance);
        }
    }

    /// Compares tensors with the bundle's `act/` entries of the same names.
    pub fn check_activations(&mut self, activations: &[(&str, &Tensor)]) {
        self.check(Namespace::Activation, activations);
    }

    fn check(&mut self, ns: Namespace, tensors: &[(&str, &Tensor)]) {
        for (name, actual) in tensors {
            let dtype = self.bundle.get(ns, name).map_or(actual.dtype(), |t| t.dtype());
            let tolerance = self.tolerance_for(ns, name, dtype);
            self.report.check(self.bundle, ns, name, actual, tolerance);
        }
    }

    /// Declares that the parameter `tied` is the variable of `shared` (a tied LM head
    /// and token embedding): `grad/param/<tied>` is compared with the gradient that
    /// reached `shared`, as torch stores the sum of both uses under each name.
    pub fn tie(&mut self, tied: &str, shared: &str) -> Result<()> {
        self.bundle.param(tied)?;
        self.bundle.param(shared)?;
        self.ties.insert(tied.to_string(), shared.to_string());
        Ok(())
    }

    /// Backpropagates the bundle's loss through `outputs` and compares every
    /// gradient the bundle stores, of parameters and inputs. A variable that
    /// received no gradient is compared as all zeros, as torch stores it; a stored
    /// gradient of a tensor that is not a trainable variable here is a failed row.
    pub fn check_backward(&mut self, outputs: &[(&str, &Tensor)]) -> Result<()> {
        let grads = self.bundle.upstream_loss(outputs)?.backward()?;
        for (grad_ns, vars) in [
            (Namespace::ParamGrad, &self.param_vars),
            (Namespace::InputGrad, &self.input_vars),
        ] {
            for (name, expected) in self.bundle.namespace(grad_ns) {
                let tolerance = self.tolerance_for(grad_ns, &name, expected.dtype());
                let source = match grad_ns {
                    Namespace::ParamGrad => self.ties.get(&name).unwrap_or(&name),
                    _ => &name,
                };
                let Some(var) = vars.get(source) else {
                    let why = format!("the bundle stores this gradient; `{source}` is not a trainable tensor here");
                    self.report
                        .push(format!("{grad_ns}{name}"), unmatched(&expected, &why, tolerance));
                    continue;
                };
                let actual = match grads.get(var.as_tensor()) {
                    Some(grad) => grad.clone(),
                    None => var.as_tensor().zeros_like()?,
                };
                self.report.check(self.bundle, grad_ns, &name, &actual, tolerance);
            }
        }
        Ok(())
    }

    /// Compares `outputs` and, when the bundle stores gradients, every gradient
    /// ([`check_backward`](Self::check_backward)): a bundle's gradients are never
    /// left unchecked.
    pub fn check_outputs_and_gradients(&mut self, outputs: &[(&str, &Tensor)]) -> Result<()> {
        self.check_outputs(outputs);
        let has_gradients = [Namespace::OutputGrad, Namespace::ParamGrad, Namespace::InputGrad]
            .into_iter()
            .any(|ns| self.bundle.names(ns).next().is_some());
        if has_gradients {
            self.check_backward(outputs)?;
        }
        Ok(())
    }

    /// Runs `forward` with tracing on and adds a row for every activation it
    /// recorded (the activation rule in the module docs): compared with the
    /// reference's of the same name (names as recorded: a [`TraceMap`](crate::TraceMap)
    /// gives the reference's where they differ), or failed when the reference has
    /// none. A bundle that records no activation at all (a reference's outputs
    /// alone) has nothing to trace against: `forward` then runs untraced. Attention
    /// probabilities the reference did not record are not compared: HF's attention
    /// modules return `(output, probabilities)` with eager attention but
    /// `(output, None)` with sdpa, their default, whose hooks then record element 0
    /// alone; so a port's element 1 of a module named for attention (`self_attn:1`,
    /// BERT's `attention:1`) is left out when the reference holds no such element.
    /// Returns the forward pass's result and the module-by-module comparison of the trace.
    pub fn traced<T>(
        &mut self,
        unmatched: Unmatched,
        forward: impl FnOnce() -> candle_core::Result<T>,
    ) -> Result<(T, TraceReport)> {
        if self.bundle.metadata().activations.is_empty() {
            let output = trace::untraced(forward)?;
            return Ok((
                output,
                compare_trace(&trace::Trace::default(), self.bundle, Tolerance::default()),
            ));
        }
        let probabilities = unrecorded_probabilities(self.bundle);
        let (output, recorded) = trace::record(|| trace::mapped(&probabilities, forward));
        let output = output?;
        self.set_aside(&recorded, unmatched)?;
        let base = match self.tolerance {
            Some(tolerance) => tolerance,
            None => Tolerance::for_dtype(self.bundle.dtype()?),
        };
        let traced = compare_trace(&recorded, self.bundle, base);
        for (row, entry) in traced.rows.iter().zip(&recorded.entries) {
            if unmatched.port_only.contains(&row.path.as_str()) {
                continue;
            }
            match &row.comparison {
                Some(comparison) => self
                    .report
                    .push(format!("{}{}", Namespace::Activation, row.path), comparison.clone()),
                // The reference has no such activation: a failed row that says so.
                None => self
                    .report
                    .check(self.bundle, Namespace::Activation, &row.path, &entry.tensor, base),
            }
        }
        Ok((output, traced))
    }

    /// Checks that every name in `unmatched` is unmatched in fact, and sets the
    /// reference-only ones aside for [`finish`](Self::finish).
    fn set_aside(&mut self, recorded: &Trace, unmatched: Unmatched) -> Result<()> {
        let stale = |name: &str, why: &str| {
            Err(Error::file(
                self.bundle.origin(),
                format!("activation `{name}` is listed as {why}"),
            ))
        };
        for name in unmatched.port_only {
            if recorded.get(name).is_none() || self.bundle.contains(Namespace::Activation, name) {
                return stale(
                    name,
                    "recorded by the port alone, but the port did not record it or the reference has it",
                );
            }
        }
        for name in unmatched.reference_only {
            if recorded.get(name).is_some() || !self.bundle.contains(Namespace::Activation, name) {
                return stale(
                    name,
                    "recorded by the reference alone, but the port recorded it or the reference lacks it",
                );
            }
        }
        self.reference_only
            .extend(unmatched.reference_only.iter().map(|name| name.to_string()));
        Ok(())
    }

    /// Adds rows compared elsewhere (a trace, a second implementation of the same output).
    pub fn report_mut(&mut self) -> &mut Report {
        &mut self.report
    }

    /// The report, with a failed row for every reference activation that no row
    /// checked and that is not set aside as [`Unmatched::reference_only`], and for
    /// every input of the bundle the port never read (the reference's result
    /// depends on it; a port that ignores it is not checked against that result).
    pub fn finish(mut self) -> Report {
        let read = self.read_inputs.take();
        for (name, given) in self.bundle.namespace(Namespace::Input) {
            if !read.contains(&name) {
                let tolerance = self.tolerance_for(Namespace::Input, &name, given.dtype());
                let why = "the reference ran on this input; the port never read it";
                self.report
                    .push(format!("{}{name}", Namespace::Input), unmatched(&given, why, tolerance));
            }
        }
        let checked: BTreeSet<&str> = self.report.rows.iter().map(|row| row.name.as_str()).collect();
        let prefix = Namespace::Activation.prefix();
        let never: Vec<(String, Tensor)> = self
            .bundle
            .activations()
            .filter(|(name, _)| {
                !self.reference_only.contains(*name) && !checked.contains(format!("{prefix}{name}").as_str())
            })
            .map(|(name, tensor)| (name.to_string(), tensor.clone()))
            .collect();
        for (name, expected) in never {
            let tolerance = self.tolerance_for(Namespace::Activation, &name, expected.dtype());
            let why = "the reference records this activation; the port never recorded it";
            self.report
                .push(format!("{prefix}{name}"), unmatched(&expected, why, tolerance));
            if let Some(row) = self.report.rows.last_mut() {
                row.never_recorded = true;
            }
        }
        self.report
    }
}

/// Attention probabilities (element 1 of a module named for attention): the port's
/// are left out of the trace when the reference recorded none (see [`Parity::traced`]).
fn unrecorded_probabilities(bundle: &Bundle) -> crate::TraceMap {
    const PROBABILITIES: &str = r"(?i)att[^:.]*(\.self)?:1$";
    let pattern = regex::Regex::new(PROBABILITIES).expect("a valid pattern");
    if bundle.metadata().activations.iter().any(|name| pattern.is_match(name)) {
        crate::TraceMap::new()
    } else {
        crate::TraceMap::new().ignore(PROBABILITIES)
    }
}
