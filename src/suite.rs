//! Built-in parity cases: a committed PyTorch fixture and the candle code
//! checked against it.

use std::path::PathBuf;

use candle_core::Device;
use replica_check::{Bundle, Report, Result};

/// The directory of the committed reference bundles.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
}

/// One check: a fixture and the function that runs the Rust side on it.
#[derive(Clone, Copy)]
pub struct Case {
    pub name: &'static str,
    /// The reference, as named in the bundle's `component`.
    pub reference: &'static str,
    /// File stem under [`fixtures_dir`].
    pub fixture: &'static str,
    pub run: fn(&Bundle) -> Result<Report>,
}

impl Case {
    pub fn fixture_path(&self) -> PathBuf {
        fixtures_dir().join(format!("{}.safetensors", self.fixture))
    }

    /// Loads the fixture and runs the case; the report is titled with the case name.
    pub fn run(&self) -> Result<Report> {
        let bundle = Bundle::load(self.fixture_path(), &Device::Cpu)?;
        let mut report = (self.run)(&bundle)?;
        report.title = self.name.to_string();
        Ok(report)
    }
}
