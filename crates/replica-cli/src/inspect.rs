//! `replica inspect FILE`: what a safetensors file holds.

use std::path::Path;

use candle_core::Device;
use replica_check::bundle::METADATA_KEY;
use replica_check::{open_safetensors, BundleOutline, Namespace, Stats};
use serde_json::{json, Value};

use crate::args::InspectArgs;
use crate::error::CliError;
use crate::output::{self, emit, json_number, json_text, paint, Format, Table, HEADER, WARN};
use crate::Status;

/// A number for a table: plain decimals in a readable range, scientific outside it.
fn number(value: Option<f64>) -> String {
    match value {
        None => "-".into(),
        Some(0.0) => "0".into(),
        Some(v) if (1e-3..1e6).contains(&v.abs()) => {
            let text = format!("{v:.6}");
            text.trim_end_matches('0').trim_end_matches('.').to_string()
        }
        Some(v) => format!("{v:.4e}"),
    }
}

/// One tensor's row: what `inspect` keeps after dropping the tensor itself.
pub struct Row {
    /// The tensor's key in the file.
    pub name: String,
    /// As stored (`bool`, `u16`), not as candle holds it (`u8`, `u32`).
    pub dtype: String,
    /// The shape.
    pub dims: Vec<usize>,
    /// Min, max, mean, std and non-finite counts; `None` for a dtype whose values
    /// cannot be read as numbers.
    pub stats: Option<Stats>,
}

/// Runs `replica inspect`. The file is mapped and its tensors read one at a
/// time, each dropped once its statistics are taken: memory holds about one
/// tensor, however large the file.
pub fn run(args: &InspectArgs, format: Format) -> Result<Status, CliError> {
    format.refuse_html("inspect")?;
    let path = args.file.as_path();
    let file = open_safetensors(path)?;
    let size = file.len();
    let bundle = file
        .metadata()
        .contains_key(METADATA_KEY)
        .then(|| BundleOutline::of(&file));
    let mut tensors = Vec::with_capacity(file.tensors().len());
    for info in file.tensors() {
        let tensor = file.load(&info.name, &Device::Cpu)?;
        tensors.push(Row {
            name: info.name.clone(),
            dtype: info.dtype_name(),
            dims: tensor.dims().to_vec(),
            stats: Stats::of(&tensor),
        });
    }
    let mut metadata: Vec<(&String, &String)> = file.metadata().iter().collect();
    metadata.sort();

    let text = match format {
        Format::Json => json_text(&to_json(path, size, &metadata, bundle.as_ref(), &tensors)),
        Format::Text | Format::Markdown | Format::Html => {
            render(path, size, &metadata, bundle.as_ref(), &tensors, format)
        }
    };
    emit(&text);
    Ok(Status::Passed)
}

fn bundle_summary(bundle: &BundleOutline) -> String {
    let m = &bundle.metadata;
    let counts: Vec<String> = Namespace::ALL
        .iter()
        .map(|&ns| (ns, bundle.names.get(&ns).map_or(0, Vec::len)))
        .filter(|(_, n)| *n > 0)
        .map(|(ns, n)| format!("{n} {ns}"))
        .collect();
    format!(
        "Reference bundle: {} by {} {}, dtype {}, seed {}; {}",
        m.component,
        m.producer.name,
        m.producer.version,
        m.dtype,
        m.seed.map_or("none".into(), |s| s.to_string()),
        counts.join(", ")
    )
}

fn table(tensors: &[Row]) -> Table {
    let mut table = Table::new(&[
        "tensor", "dtype", "shape", "elements", "min", "max", "mean", "std", "nan", "inf",
    ]);
    for Row {
        name,
        dtype,
        dims,
        stats,
    } in tensors
    {
        let (min, max, mean, std, nan, inf) = match stats {
            Some(s) => (
                number(s.min),
                number(s.max),
                number(s.mean),
                number(s.std),
                s.nan,
                s.pos_inf + s.neg_inf,
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into(), 0, 0),
        };
        table.push(vec![
            name.clone(),
            dtype.clone(),
            format!("{dims:?}"),
            dims.iter().product::<usize>().to_string(),
            min,
            max,
            mean,
            std,
            nan.to_string(),
            inf.to_string(),
        ]);
    }
    table
}

fn render(
    path: &Path,
    size: u64,
    metadata: &[(&String, &String)],
    bundle: Option<&Result<BundleOutline, replica_check::Error>>,
    tensors: &[Row],
    format: Format,
) -> String {
    let markdown = format == Format::Markdown;
    let mut out = String::new();
    let heading = format!("{} ({} tensors, {size} bytes)", path.display(), tensors.len());
    if markdown {
        out.push_str(&format!(
            "### `{}`\n\n{} tensors, {size} bytes\n\n",
            path.display(),
            tensors.len()
        ));
    } else {
        out.push_str(&paint(HEADER, &heading));
        out.push('\n');
    }
    match bundle {
        Some(Ok(bundle)) => out.push_str(&format!("{}\n", bundle_summary(bundle))),
        Some(Err(err)) => out.push_str(&paint(WARN, &format!("Not a valid reference bundle: {err}\n"))),
        None => {}
    }
    if metadata.is_empty() {
        out.push_str("Metadata: none\n");
    } else {
        out.push_str("Metadata:\n");
        for (key, value) in metadata {
            // JSON values (a bundle's `replica` entry) are shown indented.
            let shown = serde_json::from_str::<Value>(value)
                .ok()
                .filter(|v| v.is_object() || v.is_array())
                .and_then(|v| serde_json::to_string_pretty(&v).ok())
                .unwrap_or_else(|| value.to_string());
            if markdown {
                out.push_str(&format!("\n`{key}`:\n\n```json\n{shown}\n```\n"));
            } else {
                let indented = shown.replace('\n', "\n    ");
                out.push_str(&format!("  {key}: {indented}\n"));
            }
        }
    }
    out.push('\n');
    out.push_str(&output::render(&table(tensors), format));
    out
}

fn to_json(
    path: &Path,
    size: u64,
    metadata: &[(&String, &String)],
    bundle: Option<&Result<BundleOutline, replica_check::Error>>,
    tensors: &[Row],
) -> Value {
    let metadata: serde_json::Map<String, Value> = metadata
        .iter()
        .map(|(k, v)| ((*k).clone(), Value::from(v.as_str())))
        .collect();
    let bundle = match bundle {
        Some(Ok(bundle)) => json!({ "valid": true, "metadata": bundle.metadata }),
        Some(Err(err)) => json!({ "valid": false, "error": err.to_string() }),
        None => Value::Null,
    };
    let tensors: Vec<Value> = tensors
        .iter()
        .map(
            |Row {
                 name,
                 dtype,
                 dims,
                 stats,
             }| {
                let stat = |f: fn(&Stats) -> Option<f64>| json_number(stats.as_ref().and_then(f));
                json!({
                    "name": name,
                    "dtype": dtype,
                    "shape": dims,
                    "elements": dims.iter().product::<usize>(),
                    "min": stat(|s| s.min),
                    "max": stat(|s| s.max),
                    "mean": stat(|s| s.mean),
                    "std": stat(|s| s.std),
                    "nan": stats.as_ref().map_or(0, |s| s.nan),
                    "pos_inf": stats.as_ref().map_or(0, |s| s.pos_inf),
                    "neg_inf": stats.as_ref().map_or(0, |s| s.neg_inf),
                })
            },
        )
        .collect();
    json!({
        "file": path.display().to_string(),
        "bytes": size,
        "metadata": metadata,
        "bundle": bundle,
        "tensors": tensors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(number(Some(2.5)), "2.5");
        assert_eq!(number(Some(-1.0)), "-1");
        assert_eq!(number(Some(0.0)), "0");
        assert_eq!(number(Some(1.5e-7)), "1.5000e-7");
        assert_eq!(number(None), "-");
    }
}
