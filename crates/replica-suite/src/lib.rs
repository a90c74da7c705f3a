//! The built-in parity cases: every registered component of replica (candle's own
//! ops, the blocks, the models) against the fixture made from its reference
//! implementation, in the order `replica check` runs them.
//!
//! A case reads its config from the bundle strictly ([`Bundle::config`]), builds
//! the component from the bundle's weights, and checks it with the public harness
//! of `replica-check` alone ([`check_block`], [`BlockCheck`], [`Parity`]), so a
//! port in another crate can check itself the same way. Every case follows one
//! activation rule (`replica_check::parity`): a reference activation the port never
//! records fails, and so does a recorded one the reference lacks.
//!
//! This crate, not the libraries, knows the repository's layout: [`fixtures_dir`]
//! and the MiniLM fetch script ([`minilm`]).
//!
//! [`Bundle::config`]: replica_check::Bundle::config
//! [`check_block`]: replica_check::check_block
//! [`BlockCheck`]: replica_check::BlockCheck
//! [`Parity`]: replica_check::Parity
#![warn(missing_docs)]

use std::path::PathBuf;

use replica_blocks::Paper;
use replica_check::{Bundle, Report, Result};

pub use replica_check::Case;

pub mod attention;
pub mod basics;
pub mod candle_ops;
pub mod composite;
pub mod minilm;
pub mod models;
pub mod moe;
pub mod positions;
pub mod reference;
pub mod swin;
pub mod t5_dit;
pub mod vision;

/// The directory of the committed reference bundles (the repository's `tests/fixtures`).
pub fn fixtures_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    dir.canonicalize().unwrap_or(dir)
}

/// Every built-in case, in the order `replica check` runs them.
pub fn builtin() -> Vec<Case> {
    [
        candle_ops::cases(),
        basics::cases(),
        positions::cases(),
        attention::cases(),
        composite::cases(),
        models::cases(),
        swin::cases(),
        t5_dit::cases(),
        vision::cases(),
        moe::cases(),
    ]
    .concat()
}

/// One row of a case table: a unique snake_case name, the reference implementation,
/// the paper from the paper registry (`None` for a plain op), the fixture's path
/// under [`fixtures_dir`] without `.safetensors`, and the function that runs it.
pub const fn case(
    name: &'static str,
    reference: &'static str,
    paper: Option<Paper>,
    fixture: &'static str,
    run: fn(&Bundle) -> Result<Report>,
) -> Case {
    Case {
        name,
        reference,
        paper: match paper {
            Some(paper) => Some(paper.arxiv),
            None => None,
        },
        fixture,
        run,
    }
}
