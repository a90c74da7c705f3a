//! Gradient checks: the bundle stores dL/dθ for the loss
//! `L = Σ_o Σ (output_o · upstream_o)`; rebuild that loss in candle, run
//! backward, and compare.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::bundle::{Bundle, Namespace};
use crate::{Error, Report, Result, Tolerance};

impl Bundle {
    /// The tensors of a namespace as trainable variables (parameters, or inputs
    /// whose gradients the bundle holds).
    pub fn vars(&self, ns: Namespace) -> Result<BTreeMap<String, Var>> {
        self.namespace(ns)
            .into_iter()
            .map(|(name, tensor)| Ok((name, Var::from_tensor(&tensor)?)))
            .collect()
    }

    /// The loss whose gradients the bundle stores: the sum over `outputs` of
    /// `(output * grad/output/<name>).sum()`. Every output with an upstream
    /// gradient in the bundle must be given.
    pub fn upstream_loss(&self, outputs: &[(&str, &Tensor)]) -> Result<Tensor> {
        let expected: Vec<&str> = self.names(Namespace::OutputGrad).collect();
        for name in &expected {
            if !outputs.iter().any(|(given, _)| given == name) {
                return Err(Error::file(
                    self.origin(),
                    format!("the loss needs output `{name}` (the bundle has `grad/output/{name}`)"),
                ));
            }
        }
        let mut loss: Option<Tensor> = None;
        for (name, output) in outputs {
            let upstream = self.output_grad(name)?.to_dtype(output.dtype())?;
            let term = (*output * upstream)?.sum_all()?;
            loss = Some(match loss {
                Some(total) => (total + term)?,
                None => term,
            });
        }
        loss.ok_or_else(|| Error::file(self.origin(), "no outputs given for the loss"))
    }
}

impl Report {
    /// Compares the gradients candle computed for `vars` with the bundle's
    /// `grad/param/` (for `Namespace::Param`) or `grad/input/` (for `Namespace::Input`).
    /// A variable that received no gradient is compared as all zeros, as torch stores it.
    /// Without a `tolerance`, each gradient gets its reference dtype's default.
    pub fn check_gradients(
        &mut self,
        bundle: &Bundle,
        grads: &GradStore,
        ns: Namespace,
        vars: &BTreeMap<String, Var>,
        tolerance: Option<Tolerance>,
    ) -> Result<()> {
        let grad_ns = match ns {
            Namespace::Param => Namespace::ParamGrad,
            Namespace::Input => Namespace::InputGrad,
            other => {
                return Err(Error::file(
                    bundle.origin(),
                    format!("gradients are stored for param/ and input/, not {other}"),
                ))
            }
        };
        for (name, var) in vars {
            if !bundle.contains(grad_ns, name) {
                continue;
            }
            let actual = match grads.get(var.as_tensor()) {
                Some(grad) => grad.clone(),
                None => var.as_tensor().zeros_like()?,
            };
            let tolerance = tolerance.unwrap_or_else(|| Tolerance::for_dtype(var.dtype()));
            self.check(bundle, grad_ns, name, &actual, tolerance);
        }
        Ok(())
    }
}
