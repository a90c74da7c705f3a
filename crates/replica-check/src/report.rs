//! Reports: many named comparisons in one table, and module-by-module trace
//! comparisons that name the first module to diverge.

use std::fmt;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::bundle::{Bundle, Namespace};
use crate::table::Table;
use crate::trace::Trace;
use crate::{compare, compare_with_shadow, format_multiple, Comparison, Tolerance};

/// A comparison with the name of what was compared.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReportRow {
    /// What was compared, e.g. `output/0` or `act/h.0.attn`.
    pub name: String,
    /// The comparison.
    pub comparison: Comparison,
    /// The bundle has no reference tensor of this name: the row compared nothing.
    #[serde(default)]
    pub missing_reference: bool,
    /// The reference records this activation and the component never did: the row
    /// compared nothing ([`Parity::finish`](crate::Parity::finish)).
    #[serde(default)]
    pub never_recorded: bool,
}

/// Named comparisons, shown as one table followed by the details of each failure.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// What the report is about (a case, a component).
    pub title: String,
    /// One row per compared tensor.
    pub rows: Vec<ReportRow>,
}

impl Report {
    /// An empty report titled `title`.
    pub fn new(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            rows: Vec::new(),
        }
    }

    /// Adds a comparison made elsewhere.
    pub fn push(&mut self, name: impl Into<String>, comparison: Comparison) {
        self.rows.push(ReportRow {
            name: name.into(),
            comparison,
            missing_reference: false,
            never_recorded: false,
        });
    }

    /// Compares `actual` with the bundle tensor `ns`/`name`; a missing reference
    /// tensor becomes a failed row rather than an error.
    pub fn check(&mut self, bundle: &Bundle, ns: Namespace, name: &str, actual: &Tensor, tolerance: Tolerance) {
        self.check_as(format!("{ns}{name}"), bundle, ns, name, actual, tolerance);
    }

    /// [`check`](Self::check) with the row labelled `label`.
    pub fn check_as(
        &mut self,
        label: String,
        bundle: &Bundle,
        ns: Namespace,
        name: &str,
        actual: &Tensor,
        tolerance: Tolerance,
    ) {
        match bundle.get(ns, name) {
            Ok(expected) => {
                let shadow = bundle.shadow(ns, name);
                self.push(
                    label,
                    compare_with_shadow(actual, expected, shadow, tolerance, bundle.rule()),
                )
            }
            Err(err) => {
                self.push(label, unmatched(actual, &err.to_string(), tolerance));
                if let Some(row) = self.rows.last_mut() {
                    row.missing_reference = true;
                }
            }
        }
    }

    /// Every row passes, and there is at least one: a check that compared nothing is not clean.
    pub fn passed(&self) -> bool {
        !self.rows.is_empty() && self.rows.iter().all(|r| r.comparison.passed())
    }

    /// Rows whose reference tensor the bundle lacks (a misnamed or missing tensor).
    pub fn missing(&self) -> impl Iterator<Item = &ReportRow> {
        self.rows.iter().filter(|r| r.missing_reference)
    }

    /// The greatest noise multiple over the rows that have one.
    pub fn worst_multiple(&self) -> Option<f64> {
        self.rows
            .iter()
            .filter_map(|r| r.comparison.multiple())
            .reduce(f64::max)
    }

    /// The greatest absolute difference over the rows that compared finite values.
    pub fn worst_abs(&self) -> Option<f64> {
        let values = self.rows.iter().filter_map(|r| r.comparison.max_abs_diff.as_ref());
        values.map(|e| e.value).reduce(f64::max)
    }

    /// The greatest relative difference over the rows that compared finite values.
    pub fn worst_rel(&self) -> Option<f64> {
        let values = self.rows.iter().filter_map(|r| r.comparison.max_rel_diff.as_ref());
        values.map(|e| e.value).reduce(f64::max)
    }

    /// The lowest cosine similarity over the rows.
    pub fn min_cosine(&self) -> Option<f64> {
        self.rows.iter().filter_map(|r| r.comparison.cosine).reduce(f64::min)
    }

    /// The rows that fail.
    pub fn failures(&self) -> impl Iterator<Item = &ReportRow> {
        self.rows.iter().filter(|r| !r.comparison.passed())
    }

    /// One row per tensor: shape, differences, cosine, noise multiple, verdict.
    pub fn table(&self) -> Table {
        let mut table = Table::new(&[&["tensor"][..], &COMPARISON_HEADERS].concat());
        for row in &self.rows {
            table.push(comparison_cells(&row.name, &row.comparison));
        }
        table
    }
}

/// A failed comparison of `tensor` with nothing: one side has it and the other does not, for the reason `why`.
pub(crate) fn unmatched(tensor: &Tensor, why: &str, tolerance: Tolerance) -> Comparison {
    let mut comparison = compare(tensor, tensor, tolerance);
    comparison.incompatible = Some(why.to_string());
    comparison.max_abs_diff = None;
    comparison.max_rel_diff = None;
    comparison.cosine = None;
    comparison
}

/// The columns of [`comparison_cells`], after the name.
const COMPARISON_HEADERS: [&str; 6] = ["shape", "max abs diff", "max rel diff", "cosine", "noise x", "verdict"];

/// The verdict cell of one comparison: `ok`, or what kind of failure.
pub fn verdict_cell(c: &Comparison) -> String {
    if c.passed() {
        "ok".to_string()
    } else if let Some(reason) = &c.incompatible {
        let kind = if reason.starts_with("shapes differ") {
            "shape"
        } else if reason.starts_with("dtypes differ") {
            "dtype"
        } else if reason.contains("bundle has no") {
            "missing"
        } else if reason.contains("never recorded") {
            "not recorded"
        } else {
            "incompatible"
        };
        format!("FAIL ({kind})")
    } else if c.decided_by_noise {
        format!("FAIL (noise x{})", c.multiple().map_or("?".into(), format_multiple))
    } else {
        format!("FAIL ({}/{})", c.mismatched, c.elements)
    }
}

/// A difference cell: `-` when nothing finite was compared (a shape mismatch, a missing tensor).
fn difference_cell(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{v:.2e}"))
}

fn comparison_cells(name: &str, c: &Comparison) -> Vec<String> {
    vec![
        name.to_string(),
        format!("{:?}", c.expected_shape),
        difference_cell(c.max_abs_diff.as_ref().map(|e| e.value)),
        difference_cell(c.max_rel_diff.as_ref().map(|e| e.value)),
        c.cosine.map_or("-".into(), |v| format!("{v:.7}")),
        c.multiple().map_or("-".into(), format_multiple),
        verdict_cell(c),
    ]
}

/// One line per report: tensors checked, the worst differences, the lowest cosine, the verdict.
pub fn summary_table(reports: &[Report]) -> Table {
    let mut table = Table::new(&[
        "case",
        "tensors",
        "max abs diff",
        "max rel diff",
        "min cosine",
        "max noise x",
        "verdict",
    ]);
    for report in reports {
        let failed = report.failures().count();
        table.push(vec![
            report.title.clone(),
            report.rows.len().to_string(),
            difference_cell(report.worst_abs()),
            difference_cell(report.worst_rel()),
            report.min_cosine().map_or("-".into(), |v| format!("{v:.7}")),
            report.worst_multiple().map_or("-".into(), format_multiple),
            if report.rows.is_empty() {
                "FAIL (nothing compared)".into()
            } else if failed == 0 {
                "ok".into()
            } else {
                format!("FAIL ({failed} tensors)")
            },
        ]);
    }
    table
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.title.is_empty() {
            writeln!(f, "{}", self.title)?;
        }
        write!(f, "{}", self.table())?;
        let failed = self.failures().count();
        if self.rows.is_empty() {
            writeln!(f, "Nothing was compared: the check is not clean.")?;
        }
        writeln!(f, "{} of {} tensors match.", self.rows.len() - failed, self.rows.len())?;
        for row in self.failures() {
            writeln!(f, "\n{}: {}", row.name, row.comparison)?;
        }
        Ok(())
    }
}

/// One module of a trace comparison.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceRow {
    /// The activation name (module path).
    pub path: String,
    /// The shape the port recorded.
    pub shape: Vec<usize>,
    /// `None` when the reference has no activation of that name.
    pub comparison: Option<Comparison>,
}

/// A recorded trace compared with a bundle's activations, module by module.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceReport {
    /// One row per recorded activation, in the order the Rust forward pass ran.
    pub rows: Vec<TraceRow>,
    /// The first module, in execution order, whose activation fails.
    pub first_divergence: Option<String>,
    /// Activations the reference has and the trace never recorded.
    pub not_recorded: Vec<String>,
    /// How many activations the reference holds.
    #[serde(default)]
    pub reference_activations: usize,
}

/// Compares every recorded activation with the bundle's activation of the same
/// name, in execution order, and names the first that fails. The bundle's
/// [`tolerances`](Bundle::tolerances) are laid over `tolerance` for each `act/` key.
pub fn compare_trace(trace: &Trace, bundle: &Bundle, tolerance: Tolerance) -> TraceReport {
    let rows: Vec<TraceRow> = trace
        .entries
        .iter()
        .map(|entry| TraceRow {
            path: entry.name.clone(),
            shape: entry.tensor.dims().to_vec(),
            comparison: bundle.get(Namespace::Activation, &entry.name).ok().map(|expected| {
                let key = format!("{}{}", Namespace::Activation, entry.name);
                let tolerance = bundle.tolerances().resolve(&key, expected.dtype(), tolerance);
                let shadow = bundle.shadow(Namespace::Activation, &entry.name);
                compare_with_shadow(&entry.tensor, expected, shadow, tolerance, bundle.rule())
            }),
        })
        .collect();
    let first_divergence = rows
        .iter()
        .find(|row| row.comparison.as_ref().is_some_and(|c| !c.passed()))
        .map(|row| row.path.clone());
    let recorded: std::collections::HashSet<&str> = trace.names().collect();
    let not_recorded = bundle
        .activations()
        .map(|(name, _)| name)
        .filter(|name| !recorded.contains(name))
        .map(str::to_string)
        .collect();
    TraceReport {
        rows,
        first_divergence,
        not_recorded,
        reference_activations: bundle.metadata().activations.len(),
    }
}

impl TraceReport {
    /// No module diverges, and something was compared whenever the reference had
    /// activations to compare with: a trace that matched nothing is not clean.
    pub fn passed(&self) -> bool {
        self.first_divergence.is_none() && !self.compared_nothing()
    }

    /// The reference holds activations and not one was compared.
    pub fn compared_nothing(&self) -> bool {
        self.reference_activations > 0 && self.compared() == 0
    }

    /// How many recorded activations had a reference to compare with.
    pub fn compared(&self) -> usize {
        self.rows.iter().filter(|r| r.comparison.is_some()).count()
    }

    /// The row of the first divergent module.
    pub fn first_failure(&self) -> Option<&TraceRow> {
        let path = self.first_divergence.as_ref()?;
        self.rows.iter().find(|r| &r.path == path)
    }

    /// One row per recorded module, in execution order.
    pub fn table(&self) -> Table {
        let mut table = Table::new(&[&["#", "module"][..], &COMPARISON_HEADERS].concat());
        for (i, row) in self.rows.iter().enumerate() {
            let mut cells = match &row.comparison {
                Some(c) => comparison_cells(&row.path, c),
                None => vec![
                    row.path.clone(),
                    format!("{:?}", row.shape),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "no reference".into(),
                ],
            };
            if self.first_divergence.as_deref() == Some(row.path.as_str()) {
                cells[6].push_str("  <- first divergence");
            }
            cells.insert(0, (i + 1).to_string());
            table.push(cells);
        }
        table
    }
}

impl fmt::Display for TraceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.table())?;
        writeln!(
            f,
            "{} modules recorded, {} compared with the reference.",
            self.rows.len(),
            self.compared()
        )?;
        if !self.not_recorded.is_empty() {
            writeln!(
                f,
                "The reference has activations the trace never recorded: {}",
                self.not_recorded.join(", ")
            )?;
        }
        match self.first_failure() {
            Some(row) => {
                let comparison = row.comparison.as_ref().expect("a failed row has a comparison");
                write!(f, "First divergent module: `{}`\n{}", row.path, comparison)
            }
            None if self.compared_nothing() => write!(
                f,
                "Nothing was compared: the reference holds {} activations and the trace matched none of them.",
                self.reference_activations
            ),
            None => write!(f, "No module diverges."),
        }
    }
}
