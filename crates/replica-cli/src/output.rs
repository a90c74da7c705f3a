//! What the commands print: aligned tables (coloured on a terminal), markdown
//! tables, and JSON. Everything goes through `anstream`, which drops the colour
//! codes when stdout is not a terminal or `NO_COLOR` is set.

use std::io::Write;
use std::path::{Path, PathBuf};

use anstyle::{AnsiColor, Style};
use clap::{Args, ValueEnum};
pub use replica_check::table::{looks_numeric, Table};
use replica_check::tensor_file::write_atomically;
use serde_json::Value;

use crate::error::CliError;

/// Where a report goes instead of stdout.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Write the report to FILE instead of stdout (written whole or not at all: a temporary file
    /// beside it is renamed into place). An existing FILE is kept unless --force is given.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Replace an existing --output file.
    #[arg(long, requires = "output")]
    pub force: bool,
}

/// How a command prints its result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns for a terminal (coloured when stdout is one).
    #[default]
    Text,
    /// One JSON document, for scripts.
    Json,
    /// Markdown tables, to paste into a pull request.
    Markdown,
    /// One self-contained HTML page with plots of every trace (`check` only).
    Html,
}

impl Format {
    /// Refuses `--format html` for a command that has no HTML report.
    pub fn refuse_html(self, command: &str) -> Result<(), CliError> {
        if self == Format::Html {
            return Err(CliError::new(format!(
                "--format html is only for `replica check`; `replica {command}` takes text, json or markdown"
            )));
        }
        Ok(())
    }
}

/// Headers and case labels: bold.
pub const HEADER: Style = Style::new().bold();
/// Passing verdicts and tallies: green.
pub const GOOD: Style = Style::new().fg_color(Some(anstyle::Color::Ansi(AnsiColor::Green)));
/// Failing verdicts, errors and the names of what failed: bold red.
pub const BAD: Style = Style::new().bold().fg_color(Some(anstyle::Color::Ansi(AnsiColor::Red)));
/// What deserves a look (a key in one file only, NaN and inf counts, warnings): yellow.
pub const WARN: Style = Style::new().fg_color(Some(anstyle::Color::Ansi(AnsiColor::Yellow)));
/// Side notes (the verdict rule, unused config fields, a bundle's path): dimmed.
pub const DIM: Style = Style::new().dimmed();

/// `text` wrapped in `style`'s escape codes.
pub fn paint(style: Style, text: &str) -> String {
    format!("{style}{text}{style:#}")
}

/// A table as aligned text on a terminal: bold headers, verdicts green or red,
/// what deserves a look (a key in one file only, NaN and inf counts) yellow.
pub fn text(table: &Table) -> String {
    table.text_with(|row, column, padded| {
        let style = match row {
            None if padded.starts_with('-') => Style::new(),
            None => HEADER,
            Some(r) => cell_style(&table.headers[column], &table.rows[r][column]),
        };
        paint(style, padded)
    })
}

/// As text or markdown (JSON output is built by each command from its own data).
pub fn render(table: &Table, format: Format) -> String {
    match format {
        Format::Markdown => table.markdown(),
        _ => text(table),
    }
}

/// How a cell is coloured, from its column and its text.
pub fn cell_style(header: &str, text: &str) -> Style {
    match header {
        "nan" | "inf" if text != "0" && text != "-" => WARN,
        _ if text.starts_with("only in") => WARN,
        _ => verdict_style(text),
    }
}

/// Green for a pass, red for a failure, plain otherwise.
pub fn verdict_style(text: &str) -> Style {
    if text == "ok" || text.starts_with("ok ") {
        GOOD
    } else if text.starts_with("FAIL") || text.starts_with("ERROR") || text.contains("first divergence") {
        BAD
    } else {
        Style::new()
    }
}

/// A number for a table: `-` when absent.
pub fn sci(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{v:.2e}"))
}

/// A number that JSON can carry: non-finite values as the strings `"NaN"`,
/// `"inf"`, `"-inf"` (the harness's convention), absent ones as null.
pub fn json_number(value: Option<f64>) -> Value {
    match value {
        None => Value::Null,
        Some(v) if v.is_nan() => Value::from("NaN"),
        Some(v) if v == f64::INFINITY => Value::from("inf"),
        Some(v) if v == f64::NEG_INFINITY => Value::from("-inf"),
        Some(v) => Value::from(v),
    }
}

/// Writes a command's output to stdout. A closed pipe (`replica papers | head`)
/// is not an error.
pub fn emit(text: &str) {
    let mut stdout = anstream::stdout();
    let written = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush());
    if let Err(err) = written {
        if err.kind() != std::io::ErrorKind::BrokenPipe {
            let _ = writeln!(anstream::stderr(), "error: cannot write to stdout: {err}");
        }
    }
}

/// Prints a report to stdout, or writes it to `--output` (without colour) with
/// the harness's safe writer: whole or not at all, never over an existing file
/// unless `--force`.
pub fn deliver(text: &str, output: &OutputArgs) -> Result<(), CliError> {
    match &output.output {
        None => {
            emit(text);
            Ok(())
        }
        Some(path) => {
            let plain = anstream::adapter::strip_str(text).to_string();
            write_atomically(path, plain.as_bytes(), output.force)
                .map_err(|err| CliError::from(err).context("--output"))
        }
    }
}

/// Checks before a long run that `--output` can be written: not an existing
/// file (unless `--force`), not a directory, in a directory that takes new files.
pub fn check_output(output: &OutputArgs) -> Result<(), CliError> {
    let Some(path) = &output.output else {
        return Ok(());
    };
    let fail = |message: String| CliError::file(path, message).context("--output");
    if path.as_os_str().to_string_lossy().ends_with('/') {
        return Err(fail("ends with `/`, expected a file name".into()));
    }
    // What is there now: nothing, or a regular file that --force may replace. A
    // symlink (even to a regular file), a device or a FIFO is never replaced.
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(fail("is a symbolic link; give the file it points to".into()))
        }
        Ok(meta) if meta.is_dir() => return Err(fail("is a directory, expected a file".into())),
        Ok(meta) if !meta.is_file() => return Err(fail("is not a regular file; it is never replaced".into())),
        Ok(_) if !output.force => return Err(fail("already exists (pass --force to replace it)".into())),
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(fail(format!("cannot look at it: {err}"))),
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(fail(format!("directory {} does not exist", dir.display())));
    }
    // Probe with the name the writer's temporary file will have (the longest name it
    // makes): a read-only directory or a name too long is refused now, not after the run.
    let probe =
        replica_check::tensor_file::temporary_path(path, u64::MAX).ok_or_else(|| fail("is not a file path".into()))?;
    match std::fs::OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(err) => Err(fail(format!("cannot create a file in {}: {err}", dir.display()))),
    }
}

/// Pretty JSON with a final newline.
pub fn json_text(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_else(|_| "null".into());
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_table_aligns_and_colours_verdicts() {
        let mut table = Table::new(&["name", "value", "verdict"]);
        table.push(vec!["a".into(), "1.5".into(), "ok".into()]);
        table.push(vec!["long name".into(), "10".into(), "FAIL (1/2)".into()]);
        let text = text(&table);
        let plain: String = anstream::adapter::strip_str(&text).to_string();
        assert_eq!(
            plain,
            "name       value  verdict\n---------  -----  ----------\na            1.5  ok\nlong name     10  FAIL (1/2)\n"
        );
        assert!(text.contains(&paint(GOOD, "ok")));
    }

    #[test]
    fn markdown_escapes_pipes() {
        let mut table = Table::new(&["a", "b"]);
        table.push(vec!["x|y".into(), "1".into()]);
        assert_eq!(table.markdown(), "| a | b |\n| --- | --- |\n| x\\|y | 1 |\n");
    }

    #[test]
    fn json_numbers_keep_infinities() {
        assert_eq!(json_number(Some(f64::INFINITY)), Value::from("inf"));
        assert_eq!(json_number(Some(1.5)), Value::from(1.5));
        assert_eq!(json_number(None), Value::Null);
    }
}
