//! The built-in suite: every component of replica against its committed
//! PyTorch fixture.

use std::path::PathBuf;

pub use replica_check::suite::Case;

/// The directory of the committed reference bundles.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures")
}

/// Every built-in case, in the order `replica check` runs them.
pub fn builtin() -> Vec<Case> {
    let mut cases = crate::candle_ops::cases();
    cases.extend(replica_blocks::cases::cases());
    cases.extend(replica_models::cases());
    cases
}
