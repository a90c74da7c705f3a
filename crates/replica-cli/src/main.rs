//! The `replica` binary: the library's command line over the built-in components.

use std::process::ExitCode;

fn main() -> ExitCode {
    replica_cli::main_with(None)
}
