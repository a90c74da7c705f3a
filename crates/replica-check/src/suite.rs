//! Parity cases: a committed reference bundle and the Rust code checked against it.
//! The built-in ones are listed by the `replica-suite` crate; the `replica` command runs them.

use std::path::{Path, PathBuf};

use candle_core::Device;

use crate::{Bundle, Report, Result};

/// One check: a fixture and the function that runs the Rust side on it.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    /// A unique snake_case id, e.g. `rms_norm` or `attention_gqa`.
    pub name: &'static str,
    /// The reference implementation the fixture was made from.
    pub reference: &'static str,
    /// arXiv id (or URL) of the paper the component implements, when there is one.
    pub paper: Option<&'static str>,
    /// The fixture's path under the fixtures directory, without `.safetensors`.
    pub fixture: &'static str,
    /// Runs the Rust side on the fixture's bundle.
    pub run: fn(&Bundle) -> Result<Report>,
}

impl Case {
    /// The fixture's file under `fixtures`.
    pub fn fixture_path(&self, fixtures: &Path) -> PathBuf {
        fixtures.join(format!("{}.safetensors", self.fixture))
    }

    /// Loads the fixture from `fixtures` and runs the case; the report is titled with the case name.
    pub fn run(&self, fixtures: &Path, device: &Device) -> Result<Report> {
        let bundle = Bundle::load(self.fixture_path(fixtures), device)?;
        let mut report = (self.run)(&bundle)?;
        report.title = self.name.to_string();
        Ok(report)
    }
}
