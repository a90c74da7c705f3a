//! `replica diff A B`: two safetensors files, key by key.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use candle_core::Device;
use regex::Regex;
use replica_check::printable;
use replica_check::{compare_stored, open_safetensors, Comparison, SafetensorsFile, TensorInfo, Tolerance};
use serde_json::{json, Value};

use crate::args::DiffArgs;
use crate::error::CliError;
use crate::output::{
    self, check_output, deliver, json_number, json_text, paint, sci, Format, Table, BAD, GOOD, HEADER,
};
use crate::Status;

/// How one key fares.
enum Row {
    OnlyInA(TensorInfo),
    OnlyInB(TensorInfo),
    Shared(Box<Comparison>),
}

impl Row {
    fn passed(&self) -> bool {
        matches!(self, Row::Shared(c) if c.passed())
    }

    fn status(&self) -> String {
        match self {
            Row::OnlyInA(_) => "only in A".into(),
            Row::OnlyInB(_) => "only in B".into(),
            Row::Shared(c) if c.passed() => "ok".into(),
            Row::Shared(c) if c.actual_shape != c.expected_shape => "FAIL (shape mismatch)".into(),
            Row::Shared(c) if c.actual_dtype != c.expected_dtype => "FAIL (dtype mismatch)".into(),
            Row::Shared(c) if c.incompatible.is_some() => "FAIL (incompatible)".into(),
            Row::Shared(c) => format!("FAIL ({}/{})", c.mismatched, c.elements),
        }
    }

    fn cells(&self, key: &str) -> Vec<String> {
        let describe = |t: &TensorInfo| (format!("{:?}", t.shape), t.dtype_name());
        let status = self.status();
        let (shape, dtype, abs, rel, cosine) = match self {
            Row::OnlyInA(t) | Row::OnlyInB(t) => {
                let (shape, dtype) = describe(t);
                (shape, dtype, "-".into(), "-".into(), "-".into())
            }
            Row::Shared(c) => {
                let shape = if c.actual_shape == c.expected_shape {
                    format!("{:?}", c.expected_shape)
                } else {
                    format!("A {:?}, B {:?}", c.expected_shape, c.actual_shape)
                };
                let dtype = if c.actual_dtype == c.expected_dtype {
                    c.expected_dtype.clone()
                } else {
                    format!("A {}, B {}", c.expected_dtype, c.actual_dtype)
                };
                let numbers = c.max_abs_diff.is_some();
                (
                    shape,
                    dtype,
                    if numbers { sci(Some(c.worst_abs())) } else { "-".into() },
                    if numbers { sci(Some(c.worst_rel())) } else { "-".into() },
                    c.cosine.map_or("-".into(), |v| format!("{v:.7}")),
                )
            }
        };
        vec![key.to_string(), shape, dtype, abs, rel, cosine, status]
    }
}

/// A mapped file and its keys after renaming: new key -> key in the file.
struct Side {
    file: SafetensorsFile,
    keys: BTreeMap<String, String>,
}

impl Side {
    fn open(path: &Path, renames: &[(Regex, String)]) -> Result<Self, CliError> {
        let file = open_safetensors(path)?;
        let mut keys = BTreeMap::new();
        for info in file.tensors() {
            let key = renamed(&info.name, renames);
            if let Some(earlier) = keys.insert(key.clone(), info.name.clone()) {
                return Err(CliError::file(
                    path,
                    format!("weight map sends both `{earlier}` and `{}` to `{key}`", info.name),
                )
                .context("--rename"));
            }
        }
        Ok(Self { file, keys })
    }

    fn info(&self, key: &str) -> Option<&TensorInfo> {
        self.keys.get(key).and_then(|name| self.file.info(name))
    }

    fn metadata(&self) -> BTreeMap<String, String> {
        self.file.metadata().clone().into_iter().collect()
    }
}

/// Runs `replica diff`. Both files are mapped and compared one key at a time,
/// so memory holds a pair of tensors, not the files.
pub fn run(args: &DiffArgs, format: Format) -> Result<Status, CliError> {
    format.refuse_html("diff")?;
    check_output(&args.output)?;
    let renames = compile_renames(&args.rename)?;
    let a = Side::open(&args.a, &renames)?;
    let b = Side::open(&args.b, &renames)?;
    let keys: BTreeSet<&String> = a.keys.keys().chain(b.keys.keys()).collect();
    let mut rows: Vec<(String, Row)> = Vec::with_capacity(keys.len());
    for key in keys {
        let row = match (a.keys.get(key), b.keys.get(key)) {
            (Some(name_a), Some(name_b)) => {
                let expected = a.file.load(name_a, &Device::Cpu)?;
                let actual = b.file.load(name_b, &Device::Cpu)?;
                // By the dtypes as stored: candle reads a u16 file as u32, a bool one as u8.
                let (a_dtype, b_dtype) = (
                    a.info(key).expect("key of A").dtype,
                    b.info(key).expect("key of B").dtype,
                );
                let base = Tolerance::for_dtype(expected.dtype());
                let tolerance = Tolerance {
                    rtol: args.rtol.unwrap_or(base.rtol),
                    atol: args.atol.unwrap_or(base.atol),
                    equal_nan: args.equal_nan,
                };
                Row::Shared(Box::new(compare_stored(
                    &actual, b_dtype, &expected, a_dtype, tolerance,
                )))
            }
            (Some(_), None) => Row::OnlyInA(a.info(key).expect("key of A").clone()),
            (None, Some(_)) => Row::OnlyInB(b.info(key).expect("key of B").clone()),
            (None, None) => unreachable!("every key comes from A or B"),
        };
        rows.push((key.clone(), row));
    }
    let (a_meta, b_meta) = (a.metadata(), b.metadata());
    let metadata_differs: Vec<String> = a_meta
        .keys()
        .chain(b_meta.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|key| a_meta.get(*key) != b_meta.get(*key))
        .cloned()
        .collect();
    let passed = rows.iter().all(|(_, row)| row.passed());

    let text = match format {
        Format::Json => json_text(&to_json(args, &rows, &metadata_differs, passed)),
        Format::Text | Format::Markdown | Format::Html => render(args, &rows, &metadata_differs, format),
    };
    deliver(&text, &args.output)?;
    Ok(if passed { Status::Passed } else { Status::Failed })
}

/// `--rename` rules as regular expressions and their replacements, in order.
pub(crate) fn compile_renames(rules: &[(String, String)]) -> Result<Vec<(Regex, String)>, CliError> {
    let mut renames = Vec::with_capacity(rules.len());
    for (pattern, replacement) in rules {
        let regex = Regex::new(pattern).map_err(|err| {
            CliError::new(format!(
                "--rename: `{pattern}` is not a regular expression: {}",
                regex_why(&err)
            ))
        })?;
        renames.push((regex, replacement.clone()));
    }
    Ok(renames)
}

/// Why a pattern is not a regular expression, in one line (the regex crate's last).
pub(crate) fn regex_why(err: &regex::Error) -> String {
    let text = err.to_string();
    let last = text.lines().last().unwrap_or("invalid").trim();
    last.trim_start_matches("error: ").to_string()
}

/// `name` after every rename rule, in order; each rewrites its first match, as a
/// weight map's `rename` does.
pub(crate) fn renamed(name: &str, renames: &[(Regex, String)]) -> String {
    renames.iter().fold(name.to_string(), |name, (regex, replacement)| {
        regex.replace(&name, replacement.as_str()).into_owned()
    })
}

fn count(rows: &[(String, Row)], which: impl Fn(&Row) -> bool) -> usize {
    rows.iter().filter(|(_, row)| which(row)).count()
}

fn summary(rows: &[(String, Row)]) -> String {
    let shared = count(rows, |r| matches!(r, Row::Shared(_)));
    let matching = count(rows, Row::passed);
    let only_a = count(rows, |r| matches!(r, Row::OnlyInA(_)));
    let only_b = count(rows, |r| matches!(r, Row::OnlyInB(_)));
    format!(
        "{shared} shared keys: {matching} match, {} differ; {only_a} only in A, {only_b} only in B.",
        shared - matching
    )
}

fn render(args: &DiffArgs, rows: &[(String, Row)], metadata_differs: &[String], format: Format) -> String {
    let mut table = Table::new(&[
        "key",
        "shape",
        "dtype",
        "max abs diff",
        "max rel diff",
        "cosine",
        "verdict",
    ]);
    for (key, row) in rows {
        table.push(row.cells(key));
    }
    let passed = rows.iter().all(|(_, row)| row.passed());
    let path = |p: &std::path::Path| printable(&p.display().to_string()).into_owned();
    let heading = format!("A: {}\nB: {}", path(&args.a), path(&args.b));
    let metadata = if metadata_differs.is_empty() {
        "Metadata: identical.".to_string()
    } else {
        format!(
            "Metadata differs in: {}",
            metadata_differs
                .iter()
                .map(|k| format!("`{}`", printable(k)))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let mut out = String::new();
    if format == Format::Markdown {
        out.push_str(&format!(
            "### replica diff\n\n- A: `{}`\n- B: `{}`\n\n",
            path(&args.a),
            path(&args.b)
        ));
        out.push_str(&table.markdown());
        out.push_str(&format!("\n**{}**\n\n{metadata}\n", summary(rows)));
    } else {
        out.push_str(&paint(HEADER, &heading));
        out.push_str("\n\n");
        out.push_str(&output::text(&table));
        for (key, row) in rows {
            if let Row::Shared(c) = row {
                if !c.passed() {
                    out.push_str(&format!(
                        "\n{}: {}\n",
                        paint(BAD, &printable(key)),
                        c.to_string().trim_end()
                    ));
                }
            }
        }
        out.push('\n');
        out.push_str(&paint(if passed { GOOD } else { BAD }, &summary(rows)));
        out.push('\n');
        out.push_str(&metadata);
        out.push('\n');
    }
    out
}

fn to_json(args: &DiffArgs, rows: &[(String, Row)], metadata_differs: &[String], passed: bool) -> Value {
    let only = |want_a: bool| -> Vec<&String> {
        rows.iter()
            .filter(|(_, row)| {
                if want_a {
                    matches!(row, Row::OnlyInA(_))
                } else {
                    matches!(row, Row::OnlyInB(_))
                }
            })
            .map(|(key, _)| key)
            .collect()
    };
    let shared: Vec<Value> = rows
        .iter()
        .filter_map(|(key, row)| match row {
            Row::Shared(c) => Some(json!({
                "key": key,
                "verdict": row.status(),
                "passed": c.passed(),
                "max_abs_diff": json_number(c.max_abs_diff.as_ref().map(|e| e.value)),
                "max_rel_diff": json_number(c.max_rel_diff.as_ref().map(|e| e.value)),
                "comparison": c,
            })),
            _ => None,
        })
        .collect();
    json!({
        "a": args.a.display().to_string(),
        "b": args.b.display().to_string(),
        "passed": passed,
        "only_in_a": only(true),
        "only_in_b": only(false),
        "shared": shared,
        "metadata_differs": metadata_differs,
    })
}
