//! `replica`: check candle reimplementations of ML components against reference
//! tensors dumped from PyTorch; diff and inspect safetensors files; list the
//! registered components and the papers they implement.
//!
//! This library holds the commands; `src/main.rs` only parses the command line.
//! Fuzz targets and tests call the parsers and renderers directly.
//!
//! Exit codes: 0 when every check passes, 1 when a check fails, 2 on a usage
//! or input error (a one-line cause on stderr).
#![warn(missing_docs)]

pub mod args;
pub mod check;
pub mod device;
pub mod diff;
pub mod error;
pub mod guard;
pub mod html;
pub mod inspect;
pub mod job;
pub mod listing;
pub mod manifest;
pub mod outcome;
pub mod output;
pub mod registry;
pub mod trace;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, ColorWhen, Command};

/// How a command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Every check passed: exit code 0.
    Passed,
    /// A check failed: exit code 1.
    Failed,
    /// A usage or input error: exit code 2.
    InputError,
}

impl Status {
    /// The process exit code of this status.
    pub fn code(self) -> ExitCode {
        match self {
            Status::Passed => ExitCode::SUCCESS,
            Status::Failed => ExitCode::from(1),
            Status::InputError => ExitCode::from(2),
        }
    }
}

/// `error: message` on stderr, `error:` in red on a terminal.
pub fn print_error(message: &str) {
    print_error_lines(message, &[]);
}

/// `error: <message>` on one line, then each detail indented on its own: control
/// characters from file contents are escaped, so no key can forge another line.
pub fn print_error_lines(message: &str, details: &[String]) {
    let mut out = format!(
        "{}: {}\n",
        output::paint(output::BAD, "error"),
        replica_check::printable(message)
    );
    for line in details {
        out.push_str(&format!("  {}\n", replica_check::printable(line)));
    }
    let _ = write!(anstream::stderr(), "{out}");
}

/// The `replica` command line over the built-in components and `own` (a program's
/// own parity cases, see [`registry::OwnCases`]): parses the arguments, runs the
/// command and returns its exit code. `replica`'s own `main` is `main_with(None)`;
/// a crate with cases of its own gets every command (`check`, `models`, `trace`,
/// ...) over them with a `main` that calls this with its cases.
pub fn main_with(own: Option<registry::OwnCases>) -> ExitCode {
    if let Some(own) = own {
        if let Err(message) = registry::register(own) {
            print_error(&message);
            return Status::InputError.code();
        }
    }
    guard::install();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(&err),
    };
    match (cli.read_limits(), cli.memory_budget()) {
        (Ok(limits), Ok(budget)) => {
            replica_check::ReadLimits::set_current(limits);
            replica_check::MemoryBudget::set_current(budget);
        }
        (Err(err), _) | (_, Err(err)) => {
            print_error(&err);
            return Status::InputError.code();
        }
    }
    // A misspelt REPLICA_COMPUTE would otherwise only warn and run the kernels.
    if let Err(message) = replica_blocks::Compute::from_env() {
        print_error(&message);
        return Status::InputError.code();
    }
    match cli.color {
        ColorWhen::Auto => {}
        ColorWhen::Always => anstream::ColorChoice::Always.write_global(),
        ColorWhen::Never => anstream::ColorChoice::Never.write_global(),
    }
    let result = match &cli.command {
        Command::Check(args) => check::run(args, cli.format),
        Command::Diff(args) => diff::run(args, cli.format),
        Command::Trace(args) => trace::run(args, cli.format),
        Command::Inspect(args) => inspect::run(args, cli.format),
        Command::Models(args) => listing::models(args, cli.format),
        Command::Papers(args) => listing::papers(args, cli.format),
    };
    match result {
        Ok(status) => status.code(),
        Err(err) => {
            print_error_lines(&err.message, &err.details);
            Status::InputError.code()
        }
    }
}

/// clap's error with its cause on one line (`error: ... --model <NAME>`), then its usage hint.
fn usage_error(err: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = err.print();
            return Status::InputError.code();
        }
        _ => {}
    }
    let text = err.render().to_string();
    let (cause, rest) = text.split_once("\n\n").unwrap_or((text.as_str(), ""));
    let cause: Vec<&str> = cause.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let cause = cause.join(" ");
    print_error(cause.strip_prefix("error: ").unwrap_or(&cause));
    if !rest.trim().is_empty() {
        let _ = write!(anstream::stderr(), "\n{}\n", rest.trim_end());
    }
    Status::InputError.code()
}
