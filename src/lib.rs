//! replica: reimplement machine-learning papers on candle and prove the
//! reimplementation computes what the reference code computes.
//!
//! This facade is the one dependency a crate porting a model needs:
//! - [`check`]: the parity harness (verdicts against a reference's float64 shadow,
//!   reference bundles, weight and trace maps, traced parity runs, tied gradients);
//! - [`blocks`]: transformer building blocks, each citing its paper;
//! - [`models`]: reference models built from the blocks, and the model registry;
//! - [`suite`] (default feature `suite`): the built-in parity cases, every component
//!   against its PyTorch fixture, and the sentence embedder's tokenizer;
//! - [`candle_core`] and [`candle_nn`]: the candle versions replica is built on, so
//!   that a port's tensors and `VarBuilder`s are replica's own;
//! - [`prelude`]: the names a port uses in most files.
//!
//! ```toml
//! [dependencies]
//! replica = { path = "../replica", default-features = false }  # without the built-in suite
//! ```
#![warn(missing_docs)]

pub use candle_core;
pub use candle_nn;
pub use replica_blocks as blocks;
pub use replica_check as check;
pub use replica_models as models;
#[cfg(feature = "suite")]
pub use replica_suite as suite;

/// What most files of a port use: candle's tensor types, the harness's bundle and
/// parity run, and the model traits.
pub mod prelude {
    pub use candle_core::{DType, Device, Module, ModuleT, Tensor, D};
    pub use candle_nn::{VarBuilder, VarMap};
    pub use replica_check::{Bundle, Parity, Report, Tolerance, TraceMap, WeightMap};
    pub use replica_models::{Architecture, Family, LoadCheckpoint, ModelConfig, Preset};
}

/// Every block and model of replica with the paper it implements (`replica papers`).
pub fn papers() -> impl Iterator<Item = &'static replica_blocks::BlockPaper> {
    replica_blocks::PAPERS.iter().chain(replica_models::papers::PAPERS)
}
