//! `replica check`: run components on reference bundles and report.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use replica_check::{
    compare_trace, trace, Bundle, Report, Rule, ToleranceOverrides, ToleranceSpec, TraceReport, WeightMap,
};
use serde_json::{json, Value};

use crate::args::CheckArgs;
use crate::error::{without_backtrace, CliError};
use crate::job::{ConfigSource, Job, Weights};
use crate::manifest;
use crate::outcome::{
    empty_trace_note, rule_note, summary_table, tally, trace_trailer, unused_config_note, Outcome, Verdict,
};
use crate::output::{self, json_number, paint, Format, BAD, DIM, GOOD, HEADER, WARN};
use crate::registry::Registry;
use crate::{guard, Status};
use replica_check::printable;

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
        (crate::registry::suite_name().to_string(), jobs)
    };

    // Every input is read and checked before anything runs. One case's unreadable
    // input stops a single check; in a suite the case fails alone and the report is written.
    let mut progress = Progress::new();
    progress.phase("loading", jobs.len());
    let mut bundles = Vec::with_capacity(jobs.len());
    for job in &jobs {
        progress.start(&job.label);
        let bundle = job.prepare(&device, &cli_tolerances, args.verdict_rule());
        progress.done();
        bundles.push(match bundle {
            Err(err) if jobs.len() == 1 => return Err(err),
            other => other,
        });
    }

    progress.phase("checking", jobs.len());
    let outcomes: Vec<Outcome> = jobs
        .iter()
        .zip(&bundles)
        .map(|(job, bundle)| {
            progress.start(&job.label);
            let mut outcome = match bundle {
                Ok(bundle) => execute(job, bundle, &device, args.trace),
                Err(err) => Outcome::unread(job, err.to_string()),
            };
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
    let dtype = bundle.dtype().unwrap_or(DType::F32);
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

fn render_text(title: &str, device: &str, rule: Rule, outcomes: &[Outcome]) -> String {
    let cases = if outcomes.len() == 1 { "case" } else { "cases" };
    let mut out = paint(
        HEADER,
        &format!(
            "replica check: {} ({} {cases} on {device})",
            printable(title),
            outcomes.len()
        ),
    );
    out.push('\n');
    out.push_str(&paint(DIM, &rule_note(rule)));
    out.push_str("\n\n");
    out.push_str(&output::text(&summary_table(outcomes)));
    for outcome in outcomes {
        match (&outcome.result, outcome.verdict()) {
            (Err(err), _) => {
                out.push_str(&format!(
                    "\n{} could not run on {}:\n{}\n",
                    paint(BAD, &printable(&outcome.label)),
                    printable(&outcome.reference.display().to_string()),
                    printable_lines(err)
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
        paint(HEADER, &printable(&outcome.label)),
        paint(
            DIM,
            &format!("({})", printable(&outcome.reference.display().to_string()))
        )
    );
    out.push_str(&output::text(&report.table()));
    let failed = report.failures().count();
    out.push_str(&format!(
        "{} of {} tensors match.\n",
        report.rows.len() - failed,
        report.rows.len()
    ));
    for row in report.failures() {
        out.push_str(&format!(
            "\n{}: {}\n",
            paint(BAD, &printable(&row.name)),
            row.comparison.to_string().trim_end()
        ));
    }
    out
}

fn trace_text(outcome: &Outcome, trace: &TraceReport) -> String {
    let mut out = format!(
        "{}\n",
        paint(HEADER, &format!("Trace of {}", printable(&outcome.label)))
    );
    if trace.rows.is_empty() {
        out.push_str(&paint(WARN, &empty_trace_note(outcome)));
        out.push('\n');
        return out;
    }
    out.push_str(&output::text(&trace.table()));
    out.push_str(&trace_trailer(trace));
    out
}

fn render_markdown(title: &str, device: &str, rule: Rule, outcomes: &[Outcome]) -> String {
    let mut out = format!(
        "### replica check: {} ({} cases on {device})\n\n{}\n\n",
        printable(title),
        outcomes.len(),
        rule_note(rule)
    );
    out.push_str(&summary_table(outcomes).markdown());
    out.push_str(&format!("\n**{}**\n", tally(outcomes)));
    for outcome in outcomes {
        match &outcome.result {
            Err(err) => out.push_str(&format!(
                "\n<details><summary>{}: could not run</summary>\n\n```text\n{}\n```\n\n</details>\n",
                printable(&outcome.label),
                printable_lines(err)
            )),
            Ok(report) if !report.passed() => {
                let plain = anstream::adapter::strip_str(&report_text(outcome, report)).to_string();
                out.push_str(&format!(
                    "\n<details><summary>{}: {} of {} tensors fail</summary>\n\n```text\n{}```\n\n</details>\n",
                    printable(&outcome.label),
                    report.failures().count(),
                    report.rows.len(),
                    plain
                ));
            }
            Ok(_) => {}
        }
        if let Some(trace) = &outcome.trace {
            out.push_str(&format!("\n#### Trace of {}\n\n", printable(&outcome.label)));
            if trace.rows.is_empty() {
                out.push_str(&format!("{}\n", empty_trace_note(outcome)));
            } else {
                out.push_str(&trace.table().markdown());
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

/// A multi-line message (an error and its list) with every line made printable.
fn printable_lines(text: &str) -> String {
    text.lines()
        .map(|line| printable(line).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}
