//! The components `replica` can check, by name.
//!
//! These are the built-in parity cases (`replica_suite::builtin()`): every
//! block, model and op with a committed fixture, so a case added to the suite
//! appears here with no change to the CLI; and a program's own cases, given to
//! [`crate::main_with`] as [`OwnCases`].

use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::Device;
use replica_check::{open_safetensors, Bundle, BundleOutline, Report};
use replica_suite::Case;

/// What runs a component on a bundle.
#[derive(Clone, Copy, Debug)]
pub enum Runner {
    /// A built-in parity case: reads config, weights, inputs and references from the bundle.
    Case(Case),
}

/// A component that can be checked against a reference bundle.
#[derive(Clone, Debug)]
pub struct Component {
    /// Unique snake_case name (`layer_norm`, `multihead_attention`).
    pub name: &'static str,
    /// What kind of component it is, for listings.
    pub kind: &'static str,
    /// The reference implementation its fixture came from.
    pub reference: &'static str,
    /// arXiv id or URL of its paper.
    pub paper: Option<&'static str>,
    /// Its committed reference bundle, when it has one.
    pub fixture: Option<PathBuf>,
    /// What runs it.
    pub runner: Runner,
}

/// A program's own parity cases, for the `replica` command line it runs with
/// [`crate::main_with`]: each case's `fixture` is a path under `fixtures`,
/// without `.safetensors`, as the built-in cases' are under `tests/fixtures`.
#[derive(Clone, Debug)]
pub struct OwnCases {
    /// The directory the cases' fixtures are under.
    pub fixtures: PathBuf,
    /// The cases, in the order `replica check` runs them.
    pub cases: Vec<Case>,
    /// Whether the built-in cases are registered too (after these).
    pub with_builtin: bool,
}

static OWN: OnceLock<OwnCases> = OnceLock::new();

/// Registers a program's own cases for every [`Registry::load`] of the process;
/// a name used twice, among them or with a built-in case, is refused.
pub fn register(own: OwnCases) -> Result<(), String> {
    let builtin = if own.with_builtin {
        replica_suite::builtin()
    } else {
        Vec::new()
    };
    for (i, case) in own.cases.iter().enumerate() {
        if own.cases[..i]
            .iter()
            .chain(&builtin)
            .any(|other| other.name == case.name)
        {
            return Err(format!("two registered cases are named `{}`", case.name));
        }
    }
    OWN.set(own)
        .map_err(|_| "the program's own cases are registered twice".to_string())
}

impl Component {
    fn from_case(case: Case, fixtures: &std::path::Path) -> Self {
        Self {
            name: case.name,
            kind: "case",
            reference: case.reference,
            paper: case.paper,
            fixture: Some(case.fixture_path(fixtures)),
            runner: Runner::Case(case),
        }
    }

    /// Runs the component on `bundle` (already on `device`); the report is titled `title`.
    pub fn run(&self, bundle: &Bundle, device: &Device, title: &str) -> replica_check::Result<Report> {
        let _ = device; // cases take their device from the bundle's tensors
        let mut report = match self.runner {
            Runner::Case(case) => (case.run)(bundle)?,
        };
        report.title = title.to_string();
        Ok(report)
    }

    /// The `component` its committed fixture records: what it implements, and so
    /// what a bundle it runs on must record (`None` without a fixture).
    pub fn implements(&self) -> replica_check::Result<Option<String>> {
        let Some(fixture) = &self.fixture else {
            return Ok(None);
        };
        Ok(Some(BundleOutline::of(&open_safetensors(fixture)?)?.metadata.component))
    }

    /// The paper's title from the paper registry, when the id is known there.
    pub fn paper_title(&self) -> Option<&'static str> {
        let id = self.paper?;
        replica::papers()
            .find(|entry| entry.paper.arxiv == id || id.contains(entry.paper.arxiv))
            .map(|entry| entry.paper.title)
    }
}

/// Every registered component, in the order `replica check` runs them.
pub struct Registry {
    components: Vec<Component>,
}

/// What `replica check` with no arguments runs, in its heading.
pub fn suite_name() -> &'static str {
    match OWN.get() {
        Some(_) => "registered cases",
        None => "built-in suite",
    }
}

impl Registry {
    /// The program's own cases ([`register`]), then every built-in parity case
    /// of `replica-suite` in its order (unless the own cases leave them out); of
    /// two with one name, the first.
    pub fn load() -> Self {
        let mut cases: Vec<(Case, PathBuf)> = Vec::new();
        let builtin = match OWN.get() {
            Some(own) => {
                cases.extend(own.cases.iter().map(|case| (*case, own.fixtures.clone())));
                own.with_builtin
            }
            None => true,
        };
        if builtin {
            let fixtures = replica_suite::fixtures_dir();
            cases.extend(
                replica_suite::builtin()
                    .into_iter()
                    .map(|case| (case, fixtures.clone())),
            );
        }
        let mut components: Vec<Component> = Vec::new();
        for (case, fixtures) in cases {
            // Names are unique by contract; should two collide, the first registered wins.
            if !components.iter().any(|c| c.name == case.name) {
                components.push(Component::from_case(case, &fixtures));
            }
        }
        Self { components }
    }

    /// Every registered component, in run order.
    pub fn all(&self) -> &[Component] {
        &self.components
    }

    /// The component called `name`, or an error suggesting the closest name.
    pub fn get(&self, name: &str) -> Result<&Component, String> {
        if let Some(found) = self.components.iter().find(|c| c.name == name) {
            return Ok(found);
        }
        let hint = match self.closest(name) {
            Some(close) => format!("did you mean `{close}`? `replica models` lists them all"),
            None => "`replica models` lists them all".to_string(),
        };
        Err(format!("unknown component `{name}` ({hint})"))
    }

    /// The registered name closest to `name`: a small edit distance, or else
    /// the only one that contains it.
    pub fn closest(&self, name: &str) -> Option<&'static str> {
        closest(name, self.components.iter().map(|c| c.name))
    }

    /// Components whose name, reference or paper contains `filter` (any case).
    pub fn filter<'a>(&'a self, filter: Option<&'a str>) -> impl Iterator<Item = &'a Component> + 'a {
        let needle = filter.map(str::to_lowercase);
        self.components.iter().filter(move |c| match &needle {
            None => true,
            Some(needle) => [Some(c.name), Some(c.reference), c.paper, c.paper_title()]
                .into_iter()
                .flatten()
                .any(|text| text.to_lowercase().contains(needle.as_str())),
        })
    }
}

/// The candidate closest to `typed`, if any is close enough to be a likely typo.
pub fn closest<'a>(typed: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let typed_lower = typed.to_lowercase();
    let candidates: Vec<&str> = candidates.into_iter().collect();
    let best = candidates
        .iter()
        .map(|&c| (strsim::damerau_levenshtein(&typed_lower, &c.to_lowercase()), c))
        .min_by_key(|(distance, _)| *distance);
    if let Some((distance, name)) = best {
        if distance <= (typed.chars().count() / 3).max(2) {
            return Some(name);
        }
    }
    let containing: Vec<&str> = candidates
        .iter()
        .copied()
        .filter(|c| typed_lower.len() >= 3 && c.to_lowercase().contains(&typed_lower))
        .collect();
    match containing.as_slice() {
        [only] => Some(only),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names() {
        let names = ["layer_norm", "linear", "multihead_attention", "softmax"];
        assert_eq!(closest("layer_nrom", names), Some("layer_norm"));
        assert_eq!(closest("LayerNorm", names), Some("layer_norm"));
        assert_eq!(closest("softmx", names), Some("softmax"));
        assert_eq!(closest("multihead", names), Some("multihead_attention"));
        assert_eq!(closest("resnet", names), None);
    }

    #[test]
    fn the_builtin_suite_is_registered() {
        let registry = Registry::load();
        let mentions_norm = |c: &Component| {
            [Some(c.name), Some(c.reference), c.paper_title()]
                .into_iter()
                .flatten()
                .any(|text| text.to_lowercase().contains("norm"))
        };
        assert!(registry.filter(Some("NORM")).all(mentions_norm));
        assert!(registry.filter(Some("NORM")).any(|c| c.name == "layer_norm"));
    }
}
