//! `replica models` and `replica papers`: what replica knows.

use serde_json::{json, Value};

use crate::args::{ModelsArgs, PapersArgs};
use crate::error::CliError;
use crate::output::{self, emit, json_text, paint, Format, Table, HEADER};
use crate::registry::Registry;
use crate::Status;

/// Runs `replica models [FILTER]`: the registered components.
pub fn models(args: &ModelsArgs, format: Format) -> Result<Status, CliError> {
    format.refuse_html("models")?;
    let registry = Registry::load();
    let components: Vec<_> = registry.filter(args.filter.as_deref()).collect();
    let presets = model_presets(args.filter.as_deref());
    let text = match format {
        Format::Json => json_text(&Value::Array(
            presets
                .iter()
                .map(|p| {
                    json!({
                        "name": p.name,
                        "kind": "preset",
                        "reference": p.checkpoint,
                        "paper": p.paper.arxiv,
                        "paper_title": p.paper.title,
                        "fixture": null,
                    })
                })
                .chain(components.iter().map(|c| {
                    json!({
                        "name": c.name,
                        "kind": c.kind,
                        "reference": c.reference,
                        "paper": c.paper,
                        "paper_title": c.paper_title(),
                        "fixture": c.fixture.as_ref().map(|p| p.display().to_string()),
                    })
                }))
                .collect(),
        )),
        _ => {
            let mut table = Table::new(&["component", "kind", "reference", "paper", "fixture"]);
            for p in &presets {
                table.push(vec![
                    p.name.to_string(),
                    "preset".to_string(),
                    p.checkpoint.to_string(),
                    format!("{} ({})", p.paper.arxiv, p.paper.title),
                    "-".to_string(),
                ]);
            }
            for c in &components {
                let paper = match (c.paper, c.paper_title()) {
                    (Some(id), Some(title)) => format!("{id} ({title})"),
                    (Some(id), None) => id.to_string(),
                    (None, _) => "-".to_string(),
                };
                let fixture = c
                    .fixture
                    .as_ref()
                    .and_then(|p| p.file_name())
                    .map_or("-".to_string(), |f| f.to_string_lossy().into_owned());
                table.push(vec![
                    c.name.to_string(),
                    c.kind.to_string(),
                    c.reference.to_string(),
                    paper,
                    fixture,
                ]);
            }
            let mut out = String::new();
            if format == Format::Text {
                out.push_str(&paint(
                    HEADER,
                    &format!(
                        "{} model presets; {}",
                        presets.len(),
                        heading(components.len(), registry.all().len(), args.filter.as_deref())
                    ),
                ));
                out.push_str("\n\n");
            }
            if components.is_empty() && presets.is_empty() {
                let filter = args.filter.as_deref().unwrap_or_default();
                out.push_str(&format!("No component matches `{filter}`."));
                if let Some(close) = registry.closest(filter) {
                    out.push_str(&format!(" Did you mean `{close}`?"));
                }
                out.push('\n');
            } else {
                out.push_str(&output::render(&table, format));
            }
            // One component named exactly: what it reads and writes.
            if let Some(component) = registry.all().iter().find(|c| Some(c.name) == args.filter.as_deref()) {
                out.push_str(&io_text(component)?);
            }
            out
        }
    };
    emit(&text);
    Ok(Status::Passed)
}

/// The tensors a component reads and writes, as its fixture names them: the
/// inputs (`input/<name>`) fed to it, the outputs it is judged on, and how many
/// activations and gradients the fixture holds.
fn io_text(component: &crate::registry::Component) -> Result<String, CliError> {
    let Some(fixture) = &component.fixture else {
        return Ok(String::new());
    };
    let file = replica_check::open_safetensors(fixture)?;
    let outline = replica_check::BundleOutline::of(&file)?;
    let described = |ns: replica_check::Namespace, names: &[String]| -> String {
        names
            .iter()
            .map(|name| match file.info(&format!("{ns}{name}")) {
                Some(info) => format!("  {ns}{name}  {:?} {}\n", info.shape, info.dtype_name()),
                None => format!("  {ns}{name}\n"),
            })
            .collect()
    };
    let count = |ns| outline.names.get(&ns).map_or(0, Vec::len);
    use replica_check::Namespace::{Activation, Input, InputGrad, Output, ParamGrad};
    Ok(format!(
        "\n`{}` reads (from its fixture, {}):\n{}and is judged on:\n{}with {} activations, {} parameter gradients and {} input gradients.\n",
        component.name,
        fixture.display(),
        described(Input, &outline.metadata.inputs),
        described(Output, &outline.metadata.outputs),
        count(Activation),
        count(ParamGrad),
        count(InputGrad),
    ))
}

/// The model registry's presets (`replica_models::registry::presets`) whose name, checkpoint
/// or paper contains `filter`: what `create_model` builds, listed beside the checkable components.
fn model_presets(filter: Option<&str>) -> Vec<&'static replica::models::Preset> {
    let needle = filter.map(str::to_lowercase);
    replica::models::registry::presets()
        .filter(|p| {
            needle.as_ref().is_none_or(|n| {
                [p.name, p.checkpoint, p.paper.arxiv, p.paper.title]
                    .iter()
                    .any(|text| text.to_lowercase().contains(n.as_str()))
            })
        })
        .collect()
}

fn heading(shown: usize, total: usize, filter: Option<&str>) -> String {
    match filter {
        Some(filter) => format!("{shown} of {total} registered components match `{filter}`"),
        None => format!("{total} registered components"),
    }
}

/// Runs `replica papers [FILTER]`: every block and model and the paper it implements.
pub fn papers(args: &PapersArgs, format: Format) -> Result<Status, CliError> {
    format.refuse_html("papers")?;
    let needle = args.filter.as_deref().map(str::to_lowercase);
    let entries: Vec<_> = replica::papers()
        .filter(|e| {
            needle.as_ref().is_none_or(|n| {
                [e.block, e.paper.title, e.paper.arxiv]
                    .iter()
                    .any(|text| text.to_lowercase().contains(n.as_str()))
            })
        })
        .collect();
    let text = match format {
        Format::Json => json_text(&Value::Array(
            entries
                .iter()
                .map(|e| {
                    json!({
                        "block": e.block,
                        "title": e.paper.title,
                        "arxiv": e.paper.arxiv,
                        "year": e.paper.year,
                        "url": e.paper.url(),
                    })
                })
                .collect(),
        )),
        _ => {
            let mut table = Table::new(&["block", "paper", "arXiv", "year", "url"]);
            for e in &entries {
                table.push(vec![
                    e.block.to_string(),
                    e.paper.title.to_string(),
                    e.paper.arxiv.to_string(),
                    (e.paper.year.to_string()).to_string(),
                    (e.paper.url()).to_string(),
                ]);
            }
            output::render(&table, format)
        }
    };
    emit(&text);
    Ok(Status::Passed)
}
