//! A block checked in one call: built from the bundle's weights through the strict
//! loader, run traced on the bundle's inputs, and judged on its outputs, its
//! activations (the rule in [`crate::parity`]) and every gradient the bundle stores.
//!
//! ```no_run
//! use candle_core::Device;
//! use replica_check::{check_block, Bundle, WeightMap};
//! # fn main() -> replica_check::Result<()> {
//! let bundle = Bundle::load("tests/fixtures/linear.safetensors", &Device::Cpu)?;
//! let report = check_block(
//!     &bundle,
//!     WeightMap::new(),
//!     |vb| candle_nn::linear(4, 3, vb),
//!     |linear, x| candle_core::Module::forward(linear, x),
//! )?;
//! println!("{report}");
//! # Ok(()) }
//! ```

use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;

use crate::{Bundle, Error, Parity, Report, Result, Unmatched, WeightMap};

/// A block check with any input and output names; [`check_block`] is the common
/// one (`input/0` in, `output/0` out).
pub struct BlockCheck<'a> {
    bundle: &'a Bundle,
    weight_map: WeightMap,
    inputs: &'a [&'a str],
    outputs: &'a [&'a str],
    unmatched: Unmatched<'a>,
}

impl<'a> BlockCheck<'a> {
    /// `input/0` in, `output/0` out, the bundle's parameters under their own names,
    /// every activation matched.
    pub fn new(bundle: &'a Bundle) -> Self {
        Self {
            bundle,
            weight_map: WeightMap::new(),
            inputs: &["0"],
            outputs: &["0"],
            unmatched: Unmatched::NONE,
        }
    }

    /// How the bundle's parameters become the block's (renames, transposes, splits).
    pub fn weight_map(mut self, map: WeightMap) -> Self {
        self.weight_map = map;
        self
    }

    /// The bundle inputs the forward pass takes, in order.
    pub fn inputs(mut self, names: &'a [&'a str]) -> Self {
        self.inputs = names;
        self
    }

    /// The bundle outputs the forward pass returns, in order.
    pub fn outputs(mut self, names: &'a [&'a str]) -> Self {
        self.outputs = names;
        self
    }

    /// Activations only one side can record ([`Unmatched`]).
    pub fn unmatched(mut self, unmatched: Unmatched<'a>) -> Self {
        self.unmatched = unmatched;
        self
    }

    /// Builds the block with `build` in the bundle's dtype (a weight the block
    /// does not ask for, one it misses or one of the wrong shape fails, all listed
    /// together), runs `forward` traced on the inputs and checks everything.
    pub fn run<M>(
        self,
        build: impl FnOnce(VarBuilder) -> candle_core::Result<M>,
        forward: impl FnOnce(&M, &[Tensor]) -> candle_core::Result<Vec<Tensor>>,
    ) -> Result<Report> {
        let mut run = Parity::new(self.bundle)?;
        let inputs = self
            .inputs
            .iter()
            .map(|name| run.input(name))
            .collect::<Result<Vec<_>>>()?;
        let device = inputs.first().map_or(Device::Cpu, |x| x.device().clone());
        let weights = self.weight_map.apply(run.params().clone(), self.bundle.origin())?;
        let block = weights.build(self.bundle.dtype()?, &device, build)?;
        let (outputs, _) = run.traced(self.unmatched, || forward(&block, &inputs))?;
        if outputs.len() != self.outputs.len() {
            return Err(Error::file(
                self.bundle.origin(),
                format!(
                    "the forward pass returned {} tensors for the {} outputs {:?}",
                    outputs.len(),
                    self.outputs.len(),
                    self.outputs
                ),
            ));
        }
        let named: Vec<(&str, &Tensor)> = self.outputs.iter().copied().zip(&outputs).collect();
        run.check_outputs_and_gradients(&named)?;
        Ok(run.finish())
    }
}

/// Checks a block with one input and one output (`input/0`, `output/0`): see
/// [`BlockCheck::run`].
pub fn check_block<M>(
    bundle: &Bundle,
    map: WeightMap,
    build: impl FnOnce(VarBuilder) -> candle_core::Result<M>,
    forward: impl FnOnce(&M, &Tensor) -> candle_core::Result<Tensor>,
) -> Result<Report> {
    BlockCheck::new(bundle)
        .weight_map(map)
        .run(build, |block, inputs| Ok(vec![forward(block, &inputs[0])?]))
}
