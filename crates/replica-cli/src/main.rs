//! The `replica` binary: parses the command line and runs the library's commands.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use replica_cli::args::{Cli, ColorWhen, Command};
use replica_cli::{check, diff, guard, inspect, listing, print_error, print_error_lines, Status};

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

fn main() -> ExitCode {
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
