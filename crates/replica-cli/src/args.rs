//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use replica_check::{MemoryBudget, ReadLimits};

use crate::device::DeviceSpec;
use crate::output::{Format, OutputArgs};

const ABOUT: &str = "Check candle reimplementations of ML components against reference tensors dumped from PyTorch";

const LONG_ABOUT: &str = "\
Check candle reimplementations of ML components against reference tensors dumped from PyTorch.

A reference bundle (docs/bundle-format.md) is one safetensors file with a module's weights, \
inputs, outputs, per-module activations and gradients. `replica check` runs a registered \
component on a bundle and compares every tensor with the `torch.testing.assert_close` rule: \
|actual - expected| <= atol + rtol * |expected|.

Exit codes: 0 when every check passes, 1 when a check fails, 2 on a usage or input error.";

/// The parsed command line: global options and a subcommand.
#[derive(Debug, Parser)]
#[command(name = "replica", version, about = ABOUT, long_about = LONG_ABOUT, propagate_version = true)]
pub struct Cli {
    /// Output format: aligned text, JSON for scripts, markdown for a pull request, or (`check`
    /// only) one self-contained HTML page with a plot of every --trace.
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// When to colour text output (auto: only on a terminal and without NO_COLOR).
    #[arg(long, global = true, value_enum, default_value_t = ColorWhen::Auto, value_name = "WHEN")]
    pub color: ColorWhen,

    /// Refuse a safetensors tensor larger than this (bytes; K, M, G, T suffixes are powers of 1024),
    /// before reading it [env: REPLICA_MAX_TENSOR_BYTES; default 16G].
    #[arg(long, global = true, value_name = "SIZE", value_parser = byte_size)]
    pub max_tensor_bytes: Option<u64>,

    /// Refuse a safetensors file whose tensors add up to more than this, before reading them
    /// [env: REPLICA_MAX_TOTAL_BYTES; default 1T].
    #[arg(long, global = true, value_name = "SIZE", value_parser = byte_size)]
    pub max_total_bytes: Option<u64>,

    /// Refuse a safetensors file whose header lists more tensors than this, before indexing
    /// them [env: REPLICA_MAX_TENSORS; default 100000].
    #[arg(long, global = true, value_name = "COUNT", value_parser = count)]
    pub max_tensors: Option<u64>,

    /// Refuse a component whose config asks for more memory than this (its parameters and
    /// activations, estimated from the config before anything is built) [env:
    /// REPLICA_MAX_MEMORY; default half the machine's (or container's) memory].
    #[arg(long, global = true, value_name = "SIZE", value_parser = byte_size)]
    pub max_memory: Option<u64>,

    /// The subcommand to run.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The read limits: these flags, else the environment variables, else the defaults.
    pub fn read_limits(&self) -> Result<ReadLimits, String> {
        let default = ReadLimits::DEFAULT;
        Ok(ReadLimits {
            max_tensor_bytes: setting(
                self.max_tensor_bytes,
                "REPLICA_MAX_TENSOR_BYTES",
                byte_size,
                default.max_tensor_bytes,
            )?,
            max_total_bytes: setting(
                self.max_total_bytes,
                "REPLICA_MAX_TOTAL_BYTES",
                byte_size,
                default.max_total_bytes,
            )?,
            max_tensors: setting(self.max_tensors, "REPLICA_MAX_TENSORS", count, default.max_tensors)?,
            ..default
        })
    }

    /// The memory budget: `--max-memory`, else `REPLICA_MAX_MEMORY`, else half the machine's memory.
    pub fn memory_budget(&self) -> Result<MemoryBudget, String> {
        let bytes = setting(
            self.max_memory,
            "REPLICA_MAX_MEMORY",
            byte_size,
            MemoryBudget::of_machine().bytes,
        )?;
        Ok(MemoryBudget { bytes })
    }
}

/// A setting: its flag, else its environment variable (read with `parse`; a value
/// that is not UTF-8 or does not parse is an error naming the variable), else `default`.
fn setting(flag: Option<u64>, var: &str, parse: fn(&str) -> Result<u64, String>, default: u64) -> Result<u64, String> {
    match (flag, std::env::var(var)) {
        (Some(value), _) => Ok(value),
        (None, Ok(text)) => parse(&text).map_err(|err| format!("{var}: {err}")),
        (None, Err(std::env::VarError::NotPresent)) => Ok(default),
        (None, Err(std::env::VarError::NotUnicode(value))) => Err(format!(
            "{var}: {} is not UTF-8 text",
            replica_check::printable(&value.to_string_lossy())
        )),
    }
}

/// `--color`: when text output is coloured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ColorWhen {
    /// Colour only on a terminal, and not when NO_COLOR is set.
    Auto,
    /// Colour, even when the output is not a terminal.
    Always,
    /// Never colour.
    Never,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check components against reference bundles: the built-in suite, a suite file, or one component.
    #[command(long_about = CHECK_ABOUT)]
    Check(CheckArgs),
    /// Compare two safetensors files key by key.
    #[command(long_about = DIFF_ABOUT)]
    Diff(DiffArgs),
    /// Compare a run's dumped activations with a reference bundle's, module by module.
    #[command(long_about = TRACE_ABOUT)]
    Trace(TraceArgs),
    /// Show a safetensors file's metadata and per-tensor statistics.
    Inspect(InspectArgs),
    /// List the registered components (blocks, ops, and later models) that `check` can run.
    Models(ModelsArgs),
    /// List every block with the paper it implements.
    Papers(PapersArgs),
}

const CHECK_ABOUT: &str = "\
Check components against reference bundles, forward, backward and traces.

  replica check                  every registered component against its committed fixture
  replica check SUITE.toml       the cases of a suite file (docs/suite-format.md)
  replica check --model NAME     one component, on its fixture or on --reference BUNDLE

Prints one row per case: tensors checked, worst absolute and relative difference, lowest \
cosine similarity and the verdict, then the details of every failure. Exit code 0 when all \
pass, 1 when a check fails, 2 on a usage or input error (including a case that cannot run \
on its bundle).";

const DIFF_ABOUT: &str = "\
Compare two safetensors files key by key: keys only in A, keys only in B, shape and dtype \
mismatches, and one comparison row for each shared key. A is the reference: an element of B \
passes when |b - a| <= atol + rtol * |a|, with the defaults of A's dtype unless --rtol/--atol \
are given. Exit code 0 when the files match, 1 when they differ.";

const TRACE_ABOUT: &str = "\
Compare a run's activations with a reference bundle's, module by module in the reference's \
execution order, and name the first module that diverges. The dump is a safetensors file of \
`act/<module path>` tensors: written by `replica_check::Trace::save` from a traced run, or by \
any program. A dumped name the reference lacks, and a reference activation the dump lacks, \
fail the comparison unless --rename maps it or --ignore sets it aside. Exit code 0 when the \
trace matches, 1 when it does not, 2 on bad input.";

/// `replica check`: which cases to run, on what, and how to judge them.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// A suite file (TOML) listing the cases to run; see docs/suite-format.md.
    #[arg(
        value_name = "SUITE.toml",
        conflicts_with_all = ["model", "reference", "weights", "config", "any_component"]
    )]
    pub suite: Option<PathBuf>,

    /// Run one registered component (see `replica models`).
    #[arg(long, value_name = "NAME", alias = "component")]
    pub model: Option<String>,

    /// The reference bundle to check against (default: the component's committed fixture).
    #[arg(long, value_name = "BUNDLE", requires = "model")]
    pub reference: Option<PathBuf>,

    /// A safetensors file of weights that replace the bundle's `param/` tensors; its keys and
    /// shapes must be theirs (a suite file's `weight_map` can rename, transpose and split).
    #[arg(long, value_name = "FILE", requires = "model")]
    pub weights: Option<PathBuf>,

    /// A JSON file that replaces the bundle's `config` (a reference `config.json`). Every field
    /// must be one the component reads or HF bookkeeping; any other is refused.
    #[arg(long, value_name = "FILE", requires = "model")]
    pub config: Option<PathBuf>,

    /// Run the component on a --reference bundle whose `component` differs from the one the
    /// component implements (its fixture's), which is otherwise refused.
    #[arg(long, requires = "reference")]
    pub any_component: bool,

    /// Record every module's output, print the per-module table and name the first divergent module.
    #[arg(long)]
    pub trace: bool,

    /// Relative tolerance for every tensor, over the component's own (it decides where a
    /// tensor has no float64 shadow, or everywhere with --rule assert-close).
    #[arg(long, value_name = "RTOL", value_parser = tolerance_value, allow_hyphen_values = true)]
    pub rtol: Option<f64>,

    /// Absolute tolerance for every tensor, over the component's own (as --rtol).
    #[arg(long, value_name = "ATOL", value_parser = tolerance_value, allow_hyphen_values = true)]
    pub atol: Option<f64>,

    /// What decides each tensor: `calibrated` (the noise multiple against the bundle's
    /// float64 shadow where it has one, assert_close elsewhere) or `assert-close` (always).
    #[arg(long, value_name = "RULE", value_enum, default_value = "calibrated")]
    pub rule: RuleArg,

    /// The noise multiple above which a tensor fails under the calibrated rule.
    #[arg(long, value_name = "K", value_parser = noise_limit_value, default_value_t = replica_check::NOISE_LIMIT)]
    pub noise_limit: f64,

    /// Where to run: cpu, or cuda:N with a replica built with `--features cuda`.
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    pub device: DeviceSpec,

    /// Where the report goes.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `--rule`: which rule decides a tensor's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RuleArg {
    /// The noise multiple against the bundle's float64 shadow where it has
    /// one, assert_close elsewhere.
    Calibrated,
    /// The assert_close rule for every tensor.
    AssertClose,
}

impl CheckArgs {
    /// The verdict rule the flags ask for.
    pub fn verdict_rule(&self) -> replica_check::Rule {
        match self.rule {
            RuleArg::Calibrated => replica_check::Rule::Calibrated {
                limit: self.noise_limit,
            },
            RuleArg::AssertClose => replica_check::Rule::AssertClose,
        }
    }
}

/// A noise limit: a finite number of at least 1 (a port cannot be asked to beat the reference).
fn noise_limit_value(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if value.is_finite() && value >= 1.0 => Ok(value),
        Ok(value) => Err(format!("must be a finite number >= 1, got {value}")),
        Err(_) => Err(format!("not a number: `{text}`")),
    }
}

/// `replica diff A B`: two safetensors files and how to compare them.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The reference file.
    #[arg(value_name = "A.safetensors")]
    pub a: PathBuf,

    /// The file compared with it.
    #[arg(value_name = "B.safetensors")]
    pub b: PathBuf,

    /// Relative tolerance (default: by A's dtype, as torch.testing.assert_close).
    #[arg(long, value_name = "RTOL", value_parser = tolerance_value, allow_hyphen_values = true)]
    pub rtol: Option<f64>,

    /// Absolute tolerance (default: by A's dtype).
    #[arg(long, value_name = "ATOL", value_parser = tolerance_value, allow_hyphen_values = true)]
    pub atol: Option<f64>,

    /// Treat NaN as equal to NaN.
    #[arg(long)]
    pub equal_nan: bool,

    /// Rewrite key names in both files before matching them: a regular expression and its
    /// replacement (`$1` for groups), e.g. `--rename '^transformer\.='`. Repeatable; applied in order.
    #[arg(long, value_name = "PATTERN=REPLACEMENT", value_parser = rename_rule)]
    pub rename: Vec<(String, String)>,

    /// Where the report goes.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `replica trace DUMP --reference BUNDLE`.
#[derive(Debug, Args)]
pub struct TraceArgs {
    /// The run's activations: a safetensors file of `act/<module path>` tensors.
    #[arg(value_name = "DUMP.safetensors")]
    pub dump: PathBuf,

    /// The reference bundle whose activations the dump is compared with.
    #[arg(long, value_name = "BUNDLE")]
    pub reference: PathBuf,

    /// Rewrite the dump's module paths into the reference's: a regular expression and its
    /// replacement (`$1` for groups), e.g. `--rename '^encoder\.=model.'`. Repeatable; applied in order.
    #[arg(long, value_name = "PATTERN=REPLACEMENT", value_parser = rename_rule)]
    pub rename: Vec<(String, String)>,

    /// Leave out the activations (by the reference's name, after renames) matching this glob
    /// (`*` any run, `?` one character), on both sides. Repeatable.
    #[arg(long, value_name = "GLOB")]
    pub ignore: Vec<String>,

    /// Where the report goes.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `replica inspect FILE`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A safetensors file (a reference bundle or any checkpoint).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// `replica models [FILTER]`.
#[derive(Debug, Args)]
pub struct ModelsArgs {
    /// Only components whose name, reference or paper contains this text.
    #[arg(value_name = "FILTER")]
    pub filter: Option<String>,
}

/// `replica papers [FILTER]`.
#[derive(Debug, Args)]
pub struct PapersArgs {
    /// Only entries whose block, title or arXiv id contains this text.
    #[arg(value_name = "FILTER")]
    pub filter: Option<String>,
}

/// A tolerance: a finite number >= 0.
pub fn tolerance_value(text: &str) -> Result<f64, String> {
    let value: f64 = text.trim().parse().map_err(|_| format!("`{text}` is not a number"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("must be a finite number >= 0, got {text}"));
    }
    Ok(value)
}

/// A byte count: digits with an optional K, M, G or T suffix (powers of 1024; a trailing B or iB is allowed).
pub fn byte_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let upper = trimmed.to_ascii_uppercase();
    let upper = upper
        .strip_suffix("IB")
        .or_else(|| upper.strip_suffix('B'))
        .unwrap_or(&upper);
    let (digits, shift) = match upper.chars().last() {
        Some('K') => (&upper[..upper.len() - 1], 10),
        Some('M') => (&upper[..upper.len() - 1], 20),
        Some('G') => (&upper[..upper.len() - 1], 30),
        Some('T') => (&upper[..upper.len() - 1], 40),
        _ => (upper, 0),
    };
    let value: u64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a size in bytes (e.g. 4096, 512M, 2G)"))?;
    value
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// A count: digits, at least 1.
pub fn count(text: &str) -> Result<u64, String> {
    match text.trim().parse::<u64>() {
        Ok(0) => Err("must be at least 1, got 0".to_string()),
        Ok(value) => Ok(value),
        Err(_) => Err(format!("`{text}` is not a whole number")),
    }
}

/// `PATTERN=REPLACEMENT`, split at the first `=`.
fn rename_rule(text: &str) -> Result<(String, String), String> {
    let (pattern, replacement) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not PATTERN=REPLACEMENT"))?;
    if pattern.is_empty() {
        return Err(format!("`{text}` has an empty PATTERN"));
    }
    Ok((pattern.to_string(), replacement.to_string()))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn tolerances_must_be_non_negative_numbers() {
        assert_eq!(tolerance_value("1e-5"), Ok(1e-5));
        assert!(tolerance_value("-1").unwrap_err().contains(">= 0"));
        assert!(tolerance_value("abc").unwrap_err().contains("not a number"));
        assert!(tolerance_value("inf").is_err());
    }

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(byte_size("4096"), Ok(4096));
        assert_eq!(byte_size("512M"), Ok(512 << 20));
        assert_eq!(byte_size("2GiB"), Ok(2 << 30));
        assert_eq!(byte_size("1k"), Ok(1024));
        assert!(byte_size("lots").unwrap_err().contains("not a size"));
        assert!(byte_size("99999999999T").unwrap_err().contains("too large"));
    }

    #[test]
    fn counts_are_whole_numbers_from_one() {
        assert_eq!(count("100000"), Ok(100_000));
        assert!(count("0").unwrap_err().contains("at least 1"));
        assert!(count("1K").unwrap_err().contains("not a whole number"));
    }

    #[test]
    fn flags_set_the_budget_and_the_tensor_count() {
        let cli = Cli::try_parse_from(["replica", "--max-memory", "2G", "--max-tensors", "7", "papers"]).unwrap();
        assert_eq!(cli.memory_budget(), Ok(MemoryBudget { bytes: 2 << 30 }));
        assert_eq!(cli.read_limits().unwrap().max_tensors, 7);
    }

    #[test]
    fn rename_rules_split_at_the_first_equals() {
        assert_eq!(rename_rule("^a\\.=b."), Ok(("^a\\.".into(), "b.".into())));
        assert_eq!(rename_rule("x="), Ok(("x".into(), "".into())));
        assert!(rename_rule("nothing").is_err());
    }
}
