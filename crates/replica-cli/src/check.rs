//! `replica check`: run components on reference bundles and report.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use replica_check::bundle::METADATA_KEY;
use replica_check::{
    compare_trace, format_multiple, open_safetensors, read_safetensors, trace, Bundle, Comparison, Report, Rule,
    ToleranceOverrides, ToleranceSpec, TraceReport, WeightMap,
};
use serde_json::{json, Value};

use crate::args::CheckArgs;
use crate::error::{without_backtrace, CliError};
use crate::manifest::{self, parse_dtype};
use crate::output::{self, json_number, paint, sci, Cell, Format, Table, BAD, DIM, GOOD, HEADER, WARN};
use crate::registry::{Component, Registry};
use crate::{guard, Status};

/// A weights file and the map from its names to the bundle's.
pub struct Weights {
    pub path: PathBuf,
    pub map: WeightMap,
}

/// Where a case's `config` comes from.
pub enum ConfigSource {
    File(PathBuf),
    Inline(Value),
}

/// One case to run: a component on a bundle, maybe with other weights, config and tolerances.
pub struct Job {
    /// The row's label.
    pub label: String,
    pub component: Component,
    pub reference: PathBuf,
    pub weights: Option<Weights>,
    pub config: Option<ConfigSource>,
    pub tolerances: ToleranceOverrides,
    /// Where the case was declared (`suite.toml:12`), for errors; empty on the command line.
    pub origin: String,
    /// Run on a bundle whose `component` is not the one the component implements.
    pub any_component: bool,
}

impl Job {
    fn from_component(component: &Component) -> Result<Self, CliError> {
        let reference = component.fixture.clone().ok_or_else(|| {
            CliError::new(format!(
                "`{}` has no committed fixture: give --reference",
                component.name
            ))
        })?;
        Ok(Job {
            label: component.name.to_string(),
            component: component.clone(),
            reference,
            weights: None,
            config: None,
            tolerances: ToleranceOverrides::default(),
            origin: String::new(),
            any_component: false,
        })
    }

    /// Loads the bundle and applies the job's config, weights and tolerances (`extra` last).
    fn prepare(&self, device: &Device, extra: &ToleranceOverrides, rule: Rule) -> Result<Bundle, CliError> {
        self.try_prepare(device, extra)
            .map(|b| b.with_rule(rule))
            .map_err(|err| {
                if self.origin.is_empty() {
                    err
                } else {
                    err.context(format!("{} (case `{}`)", self.origin, self.label))
                }
            })
    }

    fn try_prepare(&self, device: &Device, extra: &ToleranceOverrides) -> Result<Bundle, CliError> {
        let mut bundle = Bundle::load(&self.reference, device)?;
        self.check_component(&bundle)?;
        match &self.config {
            Some(ConfigSource::File(path)) => bundle = bundle.with_config_file(read_json(path)?, path),
            // Config errors then name the suite file and line.
            Some(ConfigSource::Inline(value)) => bundle = bundle.with_config_file(value.clone(), &self.origin),
            None => {}
        }
        if let Some(weights) = &self.weights {
            let params = load_weights(weights, device)?;
            bundle = bundle
                .with_params(params, &weights.path)
                .map_err(|err| self.misfit(err))?;
        }
        Ok(bundle.with_tolerances(self.tolerances.clone().then(extra)))
    }

    /// Refuses a bundle made from another component than this one implements (a ReLU
    /// case on a GELU bundle would read the GELU config and pass), unless told otherwise.
    fn check_component(&self, bundle: &Bundle) -> Result<(), CliError> {
        if self.any_component || self.component.fixture.as_ref() == Some(&self.reference) {
            return Ok(());
        }
        let Some(expected) = self.component.implements()? else {
            return Ok(());
        };
        let actual = &bundle.metadata().component;
        if *actual == expected {
            return Ok(());
        }
        let flag = if self.origin.is_empty() {
            "--any-component"
        } else {
            "`any_component = true` on the case"
        };
        Err(CliError::file(
            &self.reference,
            format!(
                "the bundle's component is `{actual}`, but `{}` implements `{expected}` (its fixture's); \
                 {flag} runs it anyway",
                self.component.name
            ),
        ))
    }

    /// Weights that do not fit: a headline naming the files, then the first problems.
    fn misfit(&self, err: replica_check::Error) -> CliError {
        let headline = match &err {
            replica_check::Error::Load(report) => Some(format!(
                "{}: the weights do not fit `{}` ({} problems against the parameters of {})",
                report.origin.display(),
                self.component.name,
                report.problem_count(),
                self.reference.display()
            )),
            _ => None,
        };
        let mut cli = CliError::from(err);
        if let Some(headline) = headline {
            cli.message = headline;
        }
        if self.weights.as_ref().is_some_and(|w| is_bundle(&w.path)) {
            cli.details.push(
                "hint: this weights file is a reference bundle; its weights are its `param/` tensors. A suite's \
                 weight_map takes them: ignore = [\"^(input|output|act|grad|shadow)/\"], rename = { \"^param/\" = \"\" }"
                    .to_string(),
            );
        }
        cli
    }
}

fn read_json(path: &Path) -> Result<Value, CliError> {
    let bytes = replica_check::tensor_file::read_file(path)?;
    serde_json::from_slice(&bytes).map_err(|err| {
        CliError::file(
            path,
            format!("not valid JSON at line {} column {}: {err}", err.line(), err.column()),
        )
    })
}

/// A weights file's tensors after its weight map.
fn load_weights(weights: &Weights, device: &Device) -> Result<BTreeMap<String, Tensor>, CliError> {
    let file = read_safetensors(&weights.path, device)?;
    Ok(weights.map.apply(file.tensors, &weights.path)?.tensors().clone())
}

/// Whether a weights file is itself a reference bundle (its weights are under `param/`).
fn is_bundle(path: &Path) -> bool {
    open_safetensors(path).is_ok_and(|file| file.metadata().contains_key(METADATA_KEY))
}

/// What running one job gave.
pub struct Outcome {
    pub label: String,
    pub component: &'static str,
    pub paper: Option<&'static str>,
    pub reference: PathBuf,
    pub result: Result<Report, String>,
    pub trace: Option<TraceReport>,
    /// How many activations the reference holds (to explain an empty trace).
    pub reference_activations: usize,
    /// Config fields the component left unused (bookkeeping, or not its part of the config).
    pub unused_config: Vec<String>,
    /// Whether the text report lists them (the user gave the config, or ran one case).
    pub show_unused_config: bool,
    pub seconds: f64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Pass,
    Fail,
    Error,
}

impl Outcome {
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
    fn trace_passed(&self, report: &Report) -> bool {
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

    fn comparisons(&self) -> Vec<&Comparison> {
        match &self.result {
            Ok(report) => report.rows.iter().map(|r| &r.comparison).collect(),
            Err(_) => Vec::new(),
        }
    }

    fn worst_abs(&self) -> Option<f64> {
        self.comparisons()
            .iter()
            .filter_map(|c| c.max_abs_diff.as_ref())
            .map(|e| e.value)
            .reduce(f64::max)
    }

    fn worst_rel(&self) -> Option<f64> {
        self.comparisons()
            .iter()
            .filter_map(|c| c.max_rel_diff.as_ref())
            .map(|e| e.value)
            .reduce(f64::max)
    }

    fn worst_multiple(&self) -> Option<f64> {
        self.comparisons().iter().filter_map(|c| c.multiple()).reduce(f64::max)
    }

    fn min_cosine(&self) -> Option<f64> {
        self.comparisons().iter().filter_map(|c| c.cosine).reduce(f64::min)
    }

    fn failed_tensors(&self) -> usize {
        self.comparisons().iter().filter(|c| !c.passed()).count()
    }

    fn verdict_cell(&self) -> Cell {
        match self.verdict() {
            Verdict::Pass => Cell::styled("ok", GOOD),
            Verdict::Error => Cell::styled("ERROR", BAD),
            Verdict::Fail if self.comparisons().is_empty() => Cell::styled("FAIL (nothing compared)", BAD),
            Verdict::Fail if self.failed_tensors() == 0 => Cell::styled("FAIL (trace)", BAD),
            Verdict::Fail => {
                let failed = self.failed_tensors();
                let noun = if failed == 1 { "tensor" } else { "tensors" };
                Cell::styled(format!("FAIL ({failed} {noun})"), BAD)
            }
        }
    }

    fn row(&self) -> Vec<Cell> {
        let tensors = match &self.result {
            Ok(report) => report.rows.len().to_string(),
            Err(_) => "-".into(),
        };
        vec![
            Cell::plain(self.label.clone()),
            Cell::plain(self.paper.unwrap_or("-")),
            Cell::plain(tensors),
            Cell::plain(sci(self.worst_abs())),
            Cell::plain(sci(self.worst_rel())),
            Cell::plain(self.min_cosine().map_or("-".into(), |v| format!("{v:.7}"))),
            Cell::plain(self.worst_multiple().map_or("-".into(), format_multiple)),
            self.verdict_cell(),
        ]
    }
}

/// Runs `replica check`.
pub fn run(args: &CheckArgs, format: Format) -> Result<Status, CliError> {
    output::check_output(&args.output)?;
    let device = args.device.open()?;
    let registry = Registry::load();
    // As a pattern matching every key, the command line's tolerances come after
    // every layer of a suite file's, and win.
    let cli_tolerances = ToleranceOverrides::default().tensor(
        "*",
        ToleranceSpec {
            rtol: args.rtol,
            atol: args.atol,
            equal_nan: None,
        },
    );
    let (title, jobs) = if let Some(path) = &args.suite {
        let suite = manifest::load(path, &registry)?;
        (suite.title, suite.jobs)
    } else if let Some(name) = &args.model {
        let component = registry
            .get(name)
            .map_err(|err| CliError::new(format!("--model: {err}")))?;
        let mut job = Job::from_component(component)?;
        if let Some(reference) = &args.reference {
            job.reference = reference.clone();
        }
        job.weights = args.weights.as_ref().map(|path| Weights {
            path: path.clone(),
            map: WeightMap::new(),
        });
        job.config = args.config.clone().map(ConfigSource::File);
        job.any_component = args.any_component;
        (format!("{name} against {}", job.reference.display()), vec![job])
    } else {
        let jobs = registry
            .all()
            .iter()
            .map(Job::from_component)
            .collect::<Result<Vec<_>, _>>()?;
        ("built-in suite".to_string(), jobs)
    };

    // Every input is read and checked before anything runs.
    let mut progress = Progress::new();
    progress.phase("loading", jobs.len());
    let bundles = jobs
        .iter()
        .map(|job| {
            progress.start(&job.label);
            let bundle = job.prepare(&device, &cli_tolerances, args.verdict_rule());
            progress.done();
            bundle
        })
        .collect::<Result<Vec<_>, _>>()?;

    progress.phase("checking", jobs.len());
    let outcomes: Vec<Outcome> = jobs
        .iter()
        .zip(&bundles)
        .map(|(job, bundle)| {
            progress.start(&job.label);
            let mut outcome = execute(job, bundle, &device, args.trace);
            outcome.show_unused_config = job.config.is_some() || jobs.len() == 1;
            progress.done();
            outcome
        })
        .collect();
    progress.finish();

    let device_name = args.device.to_string();
    let rule = args.verdict_rule();
    let text = match format {
        Format::Json => output::json_text(&to_json(&title, &device_name, rule, &outcomes)),
        Format::Text => render_text(&title, &device_name, rule, &outcomes),
        Format::Markdown => render_markdown(&title, &device_name, rule, &outcomes),
        Format::Html => crate::html::render(&title, &device_name, rule, &outcomes),
    };
    output::deliver(&text, &args.output)?;

    let errors: Vec<&Outcome> = outcomes.iter().filter(|o| o.verdict() == Verdict::Error).collect();
    for outcome in &errors {
        let message = outcome.input_error().unwrap_or_default();
        let first = message.lines().next().unwrap_or_default();
        crate::print_error(&format!(
            "case `{}` could not run on {}: {first}",
            outcome.label,
            outcome.reference.display()
        ));
    }
    Ok(if !errors.is_empty() {
        Status::InputError
    } else if outcomes.iter().all(|o| o.verdict() == Verdict::Pass) {
        Status::Passed
    } else {
        Status::Failed
    })
}

fn execute(job: &Job, bundle: &Bundle, device: &Device, traced: bool) -> Outcome {
    let started = Instant::now();
    let run = || guard::catch(|| job.component.run(bundle, device, &job.label));
    let (result, recorded) = if traced {
        let (result, recorded) = trace::record_nested(run);
        (result, Some(recorded))
    } else {
        (run(), None)
    };
    let result = match result {
        Ok(Ok(report)) => Ok(report),
        Ok(Err(err)) => Err(without_backtrace(&err.to_string())),
        Err(panic) => Err(format!("the component panicked: {panic}")),
    };
    let dtype = parse_dtype(&bundle.metadata().dtype).unwrap_or(DType::F32);
    let trace = recorded.map(|recorded| compare_trace(&recorded, bundle, replica_check::Tolerance::for_dtype(dtype)));
    Outcome {
        label: job.label.clone(),
        component: job.component.name,
        paper: job.component.paper,
        reference: job.reference.clone(),
        result,
        trace,
        reference_activations: bundle.metadata().activations.len(),
        unused_config: bundle.unused_config_fields(),
        show_unused_config: false,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// A progress bar on stderr, shown only on a terminal and only once the suite
/// has taken more than a moment.
struct Progress {
    bar: ProgressBar,
    started: Instant,
    total: usize,
    shown: bool,
}

impl Progress {
    const PATIENCE: Duration = Duration::from_millis(300);

    fn new() -> Self {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden());
        let style = ProgressStyle::with_template("{spinner} {prefix:8} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
            .map(|style| style.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        Self {
            bar,
            started: Instant::now(),
            total: 0,
            shown: false,
        }
    }

    /// Starts a phase (`loading`, `checking`) of `total` steps.
    fn phase(&mut self, name: &'static str, total: usize) {
        self.total = total;
        self.bar.set_prefix(name);
        self.bar.set_length(total as u64);
        self.bar.set_position(0);
    }

    fn start(&mut self, label: &str) {
        if !self.shown && self.total > 1 && self.started.elapsed() > Self::PATIENCE && std::io::stderr().is_terminal() {
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
            self.bar.enable_steady_tick(Duration::from_millis(120));
            self.shown = true;
        }
        self.bar.set_message(label.to_string());
    }

    fn done(&self) {
        self.bar.inc(1);
    }

    fn finish(self) {
        self.bar.finish_and_clear();
    }
}

impl Drop for Progress {
    // An input error ends the command early: leave no bar behind on the terminal.
    fn drop(&mut self) {
        if !self.bar.is_finished() {
            self.bar.finish_and_clear();
        }
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

fn render_text(title: &str, device: &str, rule: Rule, outcomes: &[Outcome]) -> String {
    let cases = if outcomes.len() == 1 { "case" } else { "cases" };
    let mut out = paint(
        HEADER,
        &format!("replica check: {title} ({} {cases} on {device})", outcomes.len()),
    );
    out.push('\n');
    out.push_str(&paint(DIM, &rule_note(rule)));
    out.push_str("\n\n");
    out.push_str(&summary_table(outcomes).text());
    for outcome in outcomes {
        match (&outcome.result, outcome.verdict()) {
            (Err(err), _) => {
                out.push_str(&format!(
                    "\n{} could not run on {}:\n{err}\n",
                    paint(BAD, &outcome.label),
                    outcome.reference.display()
                ));
            }
            (Ok(report), Verdict::Fail) if !report.passed() => {
                out.push('\n');
                out.push_str(&report_text(outcome, report));
            }
            _ => {}
        }
        if let Some(trace) = &outcome.trace {
            out.push('\n');
            out.push_str(&trace_text(outcome, trace));
        }
    }
    for outcome in outcomes
        .iter()
        .filter(|o| o.show_unused_config && !o.unused_config.is_empty())
    {
        out.push('\n');
        out.push_str(&paint(DIM, &unused_config_note(outcome)));
        out.push('\n');
    }
    let all_pass = outcomes.iter().all(|o| o.verdict() == Verdict::Pass);
    out.push('\n');
    out.push_str(&paint(if all_pass { GOOD } else { BAD }, &tally(outcomes)));
    out.push('\n');
    out
}

/// A failed case: every tensor, then what is wrong with each failure.
fn report_text(outcome: &Outcome, report: &Report) -> String {
    let mut out = format!(
        "{} {}\n",
        paint(HEADER, &outcome.label),
        paint(DIM, &format!("({})", outcome.reference.display()))
    );
    out.push_str(&Table::from_check(&report.table()).text());
    let failed = report.failures().count();
    out.push_str(&format!(
        "{} of {} tensors match.\n",
        report.rows.len() - failed,
        report.rows.len()
    ));
    for row in report.failures() {
        out.push_str(&format!(
            "\n{}: {}\n",
            paint(BAD, &row.name),
            row.comparison.to_string().trim_end()
        ));
    }
    out
}

/// The config fields a case did not use, which changed nothing it computed.
fn unused_config_note(outcome: &Outcome) -> String {
    format!(
        "Config fields unused by `{}` (bookkeeping, or not its part of the config): {}",
        outcome.label,
        outcome.unused_config.join(", ")
    )
}

fn trace_text(outcome: &Outcome, trace: &TraceReport) -> String {
    let mut out = format!("{}\n", paint(HEADER, &format!("Trace of {}", outcome.label)));
    if trace.rows.is_empty() {
        out.push_str(&paint(WARN, &empty_trace_note(outcome)));
        out.push('\n');
        return out;
    }
    out.push_str(&Table::from_check(&trace.table()).text());
    out.push_str(&trace_trailer(trace));
    out
}

pub(crate) fn empty_trace_note(outcome: &Outcome) -> String {
    let checked = match &outcome.result {
        Ok(report) => report.rows.iter().filter(|row| row.name.starts_with("act/")).count(),
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
            trace.not_recorded.join(", ")
        ));
    }
    match trace.first_failure() {
        Some(row) => {
            out.push_str(&paint(BAD, &format!("First divergent module: `{}`", row.path)));
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

fn render_markdown(title: &str, device: &str, rule: Rule, outcomes: &[Outcome]) -> String {
    let mut out = format!(
        "### replica check: {title} ({} cases on {device})\n\n{}\n\n",
        outcomes.len(),
        rule_note(rule)
    );
    out.push_str(&summary_table(outcomes).markdown());
    out.push_str(&format!("\n**{}**\n", tally(outcomes)));
    for outcome in outcomes {
        match &outcome.result {
            Err(err) => out.push_str(&format!(
                "\n<details><summary>{}: could not run</summary>\n\n```text\n{err}\n```\n\n</details>\n",
                outcome.label
            )),
            Ok(report) if !report.passed() => {
                let plain = anstream::adapter::strip_str(&report_text(outcome, report)).to_string();
                out.push_str(&format!(
                    "\n<details><summary>{}: {} of {} tensors fail</summary>\n\n```text\n{}```\n\n</details>\n",
                    outcome.label,
                    report.failures().count(),
                    report.rows.len(),
                    plain
                ));
            }
            Ok(_) => {}
        }
        if let Some(trace) = &outcome.trace {
            out.push_str(&format!("\n#### Trace of {}\n\n", outcome.label));
            if trace.rows.is_empty() {
                out.push_str(&format!("{}\n", empty_trace_note(outcome)));
            } else {
                out.push_str(&Table::from_check(&trace.table()).markdown());
                let trailer = anstream::adapter::strip_str(&trace_trailer(trace)).to_string();
                out.push_str(&format!("\n```text\n{trailer}```\n"));
            }
        }
    }
    out
}

fn to_json(title: &str, device: &str, rule: Rule, outcomes: &[Outcome]) -> Value {
    let count = |v: Verdict| outcomes.iter().filter(|o| o.verdict() == v).count();
    let cases: Vec<Value> = outcomes
        .iter()
        .map(|o| {
            let verdict = match o.verdict() {
                Verdict::Pass => "ok",
                Verdict::Fail => "fail",
                Verdict::Error => "error",
            };
            json!({
                "name": o.label,
                "component": o.component,
                "paper": o.paper,
                "reference": o.reference.display().to_string(),
                "verdict": verdict,
                "passed": o.verdict() == Verdict::Pass,
                "tensors": o.result.as_ref().map(|r| r.rows.len()).ok(),
                "failed_tensors": o.failed_tensors(),
                "max_abs_diff": json_number(o.worst_abs()),
                "max_rel_diff": json_number(o.worst_rel()),
                "min_cosine": json_number(o.min_cosine()),
                "max_noise_multiple": json_number(o.worst_multiple()),
                "seconds": o.seconds,
                "error": o.result.as_ref().err(),
                "unused_config": o.unused_config,
                "report": o.result.as_ref().ok(),
                "trace": o.trace,
            })
        })
        .collect();
    json!({
        "suite": title,
        "device": device,
        "rule": rule,
        "passed": count(Verdict::Pass) == outcomes.len(),
        "counts": {
            "cases": outcomes.len(),
            "passed": count(Verdict::Pass),
            "failed": count(Verdict::Fail),
            "errors": count(Verdict::Error),
        },
        "cases": cases,
    })
}
