//! A parity run: feed a component the bundle's weights and inputs, then check
//! its outputs and gradients against the reference in one report.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor, Var};

use crate::bundle::{Bundle, Namespace};
use crate::{Report, Result, Tolerance};

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
/// run.check_outputs(&[("0", &y)]);
/// run.check_backward(&[("0", &y)])?;
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

    /// An input, tracked for gradients when it is floating point.
    pub fn input(&self, name: &str) -> Result<Tensor> {
        self.bundle.input(name)?;
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

    /// Backpropagates the bundle's loss through `outputs` and compares the
    /// gradients of every parameter and input with the reference's.
    pub fn check_backward(&mut self, outputs: &[(&str, &Tensor)]) -> Result<()> {
        let grads = self.bundle.upstream_loss(outputs)?.backward()?;
        let groups = [
            (Namespace::Param, Namespace::ParamGrad, &self.param_vars),
            (Namespace::Input, Namespace::InputGrad, &self.input_vars),
        ];
        for (ns, grad_ns, vars) in groups {
            // One variable at a time, each with the tolerance resolved for its own key.
            for (name, var) in vars {
                let tolerance = self.tolerance_for(grad_ns, name, var.dtype());
                let one = BTreeMap::from([(name.clone(), var.clone())]);
                self.report
                    .check_gradients(self.bundle, &grads, ns, &one, Some(tolerance))?;
            }
        }
        Ok(())
    }

    /// Adds rows compared elsewhere (a trace, a second implementation of the same output).
    pub fn report_mut(&mut self) -> &mut Report {
        &mut self.report
    }

    /// The report of every check made.
    pub fn finish(self) -> Report {
        self.report
    }
}
