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
