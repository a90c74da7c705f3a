//! `replica trace DUMP --reference BUNDLE`: a run's activations, dumped by any
//! program (`Trace::save`, or any file of `act/` tensors), against a reference
//! bundle's, module by module in execution order, naming the first divergence.

use std::collections::{HashMap, HashSet};

use candle_core::Device;
use replica_check::{compare_trace, glob_match, printable, Bundle, Tolerance, Trace, TraceEntry, TraceReport};
use serde_json::json;

use crate::args::TraceArgs;
use crate::diff::{compile_renames, renamed};
use crate::error::CliError;
use crate::outcome::trace_trailer;
use crate::output::{self, check_output, deliver, json_text, paint, Format, BAD, GOOD, HEADER};
use crate::Status;

/// Runs `replica trace`.
pub fn run(args: &TraceArgs, format: Format) -> Result<Status, CliError> {
    format.refuse_html("trace")?;
    check_output(&args.output)?;
    let renames = compile_renames(&args.rename)?;
    let bundle = Bundle::load(&args.reference, &Device::Cpu)?;
    let dump = Trace::load(&args.dump, &Device::Cpu)?;
    let ignored = |name: &str| args.ignore.iter().any(|glob| glob_match(glob, name));
    let mut entries: Vec<TraceEntry> = Vec::with_capacity(dump.len());
    let mut seen = HashSet::new();
    for entry in dump.entries {
        let name = renamed(&entry.name, &renames);
        if ignored(&name) {
            continue;
        }
        if !seen.insert(name.clone()) {
            return Err(
                CliError::file(&args.dump, format!("two activations are renamed to `{name}`")).context("--rename"),
            );
        }
        entries.push(TraceEntry { name, ..entry });
    }
    // The reference's execution order, then what only the dump has, in its order.
    let order: HashMap<&str, usize> = bundle
        .metadata()
        .activations
        .iter()
        .enumerate()
        .map(|(i, a)| (a.as_str(), i))
        .collect();
    entries.sort_by_key(|e| order.get(e.name.as_str()).copied().unwrap_or(usize::MAX));
    let trace = Trace::from_entries(entries);
    let mut report = compare_trace(&trace, &bundle, Tolerance::for_dtype(bundle.dtype()?));
    report.not_recorded.retain(|name| !ignored(name));
    // What the two sides do not share, after renames and ignores: dumped activations
    // the reference lacks (rows without a comparison), and the report's `not_recorded`.
    let dump_only: Vec<String> = report
        .rows
        .iter()
        .filter(|r| r.comparison.is_none())
        .map(|r| r.path.clone())
        .collect();
    let passed = report.passed() && dump_only.is_empty() && report.not_recorded.is_empty();
    let text = match format {
        Format::Json => json_text(&json!({
            "dump": args.dump.display().to_string(),
            "reference": args.reference.display().to_string(),
            "passed": passed,
            "first_divergence": report.first_divergence,
            "dump_only": dump_only,
            "reference_only": report.not_recorded,
            "trace": report,
        })),
        Format::Markdown => format!("### replica trace\n\n{}", report.table().markdown()),
        Format::Text | Format::Html => render(args, &report, &dump_only, passed),
    };
    deliver(&text, &args.output)?;
    Ok(if passed { Status::Passed } else { Status::Failed })
}

fn render(args: &TraceArgs, report: &TraceReport, dump_only: &[String], passed: bool) -> String {
    let path = |p: &std::path::Path| printable(&p.display().to_string()).into_owned();
    let mut out = paint(
        HEADER,
        &format!("replica trace: {} against {}", path(&args.dump), path(&args.reference)),
    );
    out.push_str("\n\n");
    out.push_str(&output::text(&report.table()));
    out.push('\n');
    out.push_str(&trace_trailer(report));
    if !dump_only.is_empty() {
        let names = printable(&dump_only.join(", ")).into_owned();
        out.push_str(&format!(
            "The dump has activations the reference lacks (rename them with --rename, or --ignore them): {names}\n"
        ));
    }
    if !report.not_recorded.is_empty() {
        out.push_str("(--ignore the reference's activations a run does not record.)\n");
    }
    out.push_str(&if passed {
        paint(GOOD, "The trace matches the reference.")
    } else {
        paint(BAD, "The trace does not match the reference.")
    });
    out.push('\n');
    out
}
