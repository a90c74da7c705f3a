//! What running a case gave, and the wording every report format shares.

use std::path::PathBuf;

use replica_check::{format_multiple, printable, Comparison, Report, Rule, TraceReport};

use crate::output::{paint, sci, Table, BAD, GOOD};

/// What running one job gave.
pub struct Outcome {
    /// The row's label (the case's name).
    pub label: String,
    /// The registered component that ran.
    pub component: &'static str,
    /// The component's paper (arXiv id or URL).
    pub paper: Option<&'static str>,
    /// The reference bundle it ran on.
    pub reference: PathBuf,
    /// The comparison report, or why the case could not run (an error or a panic).
    pub result: Result<Report, String>,
    /// The per-module comparison, with `--trace`.
    pub trace: Option<TraceReport>,
    /// How many activations the reference holds (to explain an empty trace).
    pub reference_activations: usize,
    /// Config fields the component left unused (bookkeeping, or not its part of the config).
    pub unused_config: Vec<String>,
    /// Whether the text report lists them (the user gave the config, or ran one case).
    pub show_unused_config: bool,
    /// Wall-clock seconds the case took.
    pub seconds: f64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Pass,
    Fail,
    Error,
}

impl Outcome {
    /// A case whose inputs could not be read (its bundle, weights or config): it
    /// did not run, and says why.
    pub(crate) fn unread(job: &crate::job::Job, why: String) -> Self {
        Outcome {
            label: job.label.clone(),
            component: job.component.name,
            paper: job.component.paper,
            reference: job.reference.clone(),
            result: Err(why),
            trace: None,
            reference_activations: 0,
            unused_config: Vec::new(),
            show_unused_config: false,
            seconds: 0.0,
        }
    }

    pub(crate) fn verdict(&self) -> Verdict {
        match &self.result {
            Err(_) => Verdict::Error,
            // A reference tensor the component needs is not in the bundle: bad input, not a port bug.
            Ok(report) if report.missing().next().is_some() => Verdict::Error,
            Ok(report) if report.passed() && self.trace_passed(report) => Verdict::Pass,
            Ok(_) => Verdict::Fail,
        }
    }

    /// No traced module diverges, and the trace compared something, unless the
    /// case compared the reference's activations itself (a component that checks
    /// a submodule's output without tapping it): a run that looked at no
    /// activation of a reference that has them is not clean.
    pub(crate) fn trace_passed(&self, report: &Report) -> bool {
        let Some(trace) = &self.trace else {
            return true;
        };
        let checks_activations = report.rows.iter().any(|row| row.name.starts_with("act/"));
        trace.first_divergence.is_none() && (!trace.compared_nothing() || checks_activations)
    }

    /// Why the case could not be judged: its error, or the reference tensors it needs and the bundle lacks.
    pub(crate) fn input_error(&self) -> Option<String> {
        match &self.result {
            Err(err) => Some(err.clone()),
            Ok(report) => {
                let missing: Vec<&str> = report.missing().map(|row| row.name.as_str()).collect();
                let first = report.missing().next()?;
                Some(format!(
                    "the bundle lacks {} tensor{} the component compares: {} ({})",
                    missing.len(),
                    if missing.len() == 1 { "" } else { "s" },
                    missing.join(", "),
                    first.comparison.incompatible.as_deref().unwrap_or_default()
                ))
            }
        }
    }

    pub(crate) fn comparisons(&self) -> Vec<&Comparison> {
        match &self.result {
            Ok(report) => report.rows.iter().map(|r| &r.comparison).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// One of the report's aggregates, none when the case could not run.
    fn of_report(&self, aggregate: fn(&Report) -> Option<f64>) -> Option<f64> {
        self.result.as_ref().ok().and_then(aggregate)
    }

    pub(crate) fn worst_abs(&self) -> Option<f64> {
        self.of_report(Report::worst_abs)
    }

    pub(crate) fn worst_rel(&self) -> Option<f64> {
        self.of_report(Report::worst_rel)
    }

    pub(crate) fn worst_multiple(&self) -> Option<f64> {
        self.of_report(Report::worst_multiple)
    }

    pub(crate) fn min_cosine(&self) -> Option<f64> {
        self.of_report(Report::min_cosine)
    }

    pub(crate) fn failed_tensors(&self) -> usize {
        self.comparisons().iter().filter(|c| !c.passed()).count()
    }

    pub(crate) fn verdict_cell(&self) -> String {
        match self.verdict() {
            Verdict::Pass => "ok".into(),
            Verdict::Error => "ERROR".into(),
            Verdict::Fail if self.comparisons().is_empty() => "FAIL (nothing compared)".into(),
            Verdict::Fail if self.failed_tensors() == 0 => "FAIL (trace)".into(),
            Verdict::Fail => {
                let failed = self.failed_tensors();
                let noun = if failed == 1 { "tensor" } else { "tensors" };
                format!("FAIL ({failed} {noun})")
            }
        }
    }

    pub(crate) fn row(&self) -> Vec<String> {
        let tensors = match &self.result {
            Ok(report) => report.rows.len().to_string(),
            Err(_) => "-".into(),
        };
        vec![
            self.label.clone(),
            self.paper.unwrap_or("-").to_string(),
            tensors,
            sci(self.worst_abs()),
            sci(self.worst_rel()),
            self.min_cosine().map_or("-".into(), |v| format!("{v:.7}")),
            self.worst_multiple().map_or("-".into(), format_multiple),
            self.verdict_cell(),
        ]
    }
}

const HEADERS: [&str; 8] = [
    "component",
    "paper",
    "tensors",
    "max abs diff",
    "max rel diff",
    "min cosine",
    "max noise x",
    "verdict",
];

pub(crate) fn summary_table(outcomes: &[Outcome]) -> Table {
    let mut table = Table::new(&HEADERS);
    for outcome in outcomes {
        table.push(outcome.row());
    }
    table
}

pub(crate) fn tally(outcomes: &[Outcome]) -> String {
    let count = |v: Verdict| outcomes.iter().filter(|o| o.verdict() == v).count();
    let (passed, failed, errors) = (count(Verdict::Pass), count(Verdict::Fail), count(Verdict::Error));
    if passed == outcomes.len() {
        return match passed {
            1 => "The case passes.".to_string(),
            n => format!("All {n} cases pass."),
        };
    }
    let mut line = format!("{passed} of {} cases pass", outcomes.len());
    if failed > 0 {
        line.push_str(&format!(", {failed} fail"));
    }
    if errors > 0 {
        line.push_str(&format!(", {errors} could not run"));
    }
    line.push('.');
    line
}

/// One line saying what decides the verdicts.
pub(crate) fn rule_note(rule: Rule) -> String {
    match rule {
        Rule::Calibrated { limit } => format!(
            "Verdicts: a tensor fails when its error against the reference's float64 shadow is more than {limit} times \
             the reference's own (noise x); without a shadow, by assert_close."
        ),
        Rule::AssertClose => "Verdicts: assert_close (|actual - expected| <= atol + rtol * |expected|); \
                              noise x is reported only."
            .to_string(),
    }
}

/// The config fields a case did not use, which changed nothing it computed.
pub(crate) fn unused_config_note(outcome: &Outcome) -> String {
    format!(
        "Config fields unused by `{}` (bookkeeping, or not its part of the config): {}",
        outcome.label,
        outcome.unused_config.join(", ")
    )
}

pub(crate) fn empty_trace_note(outcome: &Outcome) -> String {
    let checked = match &outcome.result {
        Ok(report) => report
            .rows
            .iter()
            .filter(|row| row.name.starts_with("act/") && !row.never_recorded)
            .count(),
        Err(_) => 0,
    };
    let compared = if outcome.reference_activations == 0 {
        String::new()
    } else if checked > 0 {
        format!("; the case compares {checked} of them itself")
    } else {
        "; nothing was compared with them, so the case is not clean".to_string()
    };
    format!(
        "No module recorded an activation: `{}` taps none (the reference holds {} activations{compared}).",
        outcome.component, outcome.reference_activations
    )
}

/// The lines under a trace table: counts, what was never recorded, the first divergence.
pub(crate) fn trace_trailer(trace: &TraceReport) -> String {
    let mut out = format!(
        "{} modules recorded, {} compared with the reference.\n",
        trace.rows.len(),
        trace.compared()
    );
    if !trace.not_recorded.is_empty() {
        out.push_str(&format!(
            "The reference has activations the trace never recorded: {}\n",
            printable(&trace.not_recorded.join(", "))
        ));
    }
    match trace.first_failure() {
        Some(row) => {
            out.push_str(&paint(
                BAD,
                &format!("First divergent module: `{}`", printable(&row.path)),
            ));
            out.push('\n');
            if let Some(comparison) = &row.comparison {
                out.push_str(&format!("{}\n", comparison.to_string().trim_end()));
            }
        }
        None if trace.compared_nothing() => out.push_str(&paint(
            BAD,
            &format!(
                "Nothing was compared: the reference holds {} activations and none was recorded under its name.\n",
                trace.reference_activations
            ),
        )),
        None => out.push_str(&paint(GOOD, "No module diverges.\n")),
    }
    out
}
