//! replica: reimplement machine-learning papers on candle and prove the
//! reimplementation computes what the reference code computes.
//!
//! This facade re-exports the workspace crates:
//! - [`check`]: the parity harness (tolerances, comparisons, reference bundles,
//!   weight maps, activation traces);
//! - [`blocks`]: transformer building blocks, each citing its paper.
//!
//! [`candle_ops`] is the built-in suite so far: candle's own operations checked
//! against PyTorch fixtures, forward and backward.

pub use replica_blocks as blocks;
pub use replica_check as check;
pub use replica_models as models;

pub mod candle_ops;
pub mod suite;

/// Every block and model of replica with the paper it implements (`replica papers`).
pub fn papers() -> impl Iterator<Item = &'static replica_blocks::BlockPaper> {
    replica_blocks::PAPERS.iter().chain(replica_models::papers::PAPERS)
}
