//! replica: reimplement machine-learning papers on candle and prove the
//! reimplementation computes what the reference code computes.
//!
//! This facade re-exports the workspace crates:
//! - [`check`]: the parity harness (tolerances, comparisons, reference bundles,
//!   weight maps, activation traces);
//! - [`blocks`]: transformer building blocks, each citing its paper;
//! - [`models`]: reference models built from the blocks, and the model registry;
//! - [`suite`]: the built-in parity cases, every component against its PyTorch fixture.
#![warn(missing_docs)]

pub use replica_blocks as blocks;
pub use replica_check as check;
pub use replica_models as models;
pub use replica_suite as suite;

/// Every block and model of replica with the paper it implements (`replica papers`).
pub fn papers() -> impl Iterator<Item = &'static replica_blocks::BlockPaper> {
    replica_blocks::PAPERS.iter().chain(replica_models::papers::PAPERS)
}
