//! The blocks' parity cases, run by the tests and by `replica check`. Each runs
//! a block on a fixture made from the real PyTorch module and checks outputs,
//! activations and gradients.

use std::path::PathBuf;

use replica_check::Case;

pub mod attention;
pub mod basics;
pub mod composite;

/// The directory of the committed reference bundles (the workspace's `tests/fixtures`).
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// Every block case.
pub fn cases() -> Vec<Case> {
    let mut cases = basics::cases();
    cases.extend(attention::cases());
    cases.extend(composite::cases());
    cases
}
