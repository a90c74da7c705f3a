//! The `replica` command line over the port's own case: `cargo run --bin gemma-check -- check`.

use std::process::ExitCode;

use replica_cli::registry::OwnCases;

fn main() -> ExitCode {
    replica_cli::main_with(Some(OwnCases {
        fixtures: concat!(env!("CARGO_MANIFEST_DIR"), "/reference").into(),
        cases: vec![gemma_port::case()],
        with_builtin: false,
    }))
}
