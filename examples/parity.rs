//! Checks every built-in case (candle's own ops, the blocks, the models) against the
//! committed PyTorch fixtures and prints one line per case, then the details of any failure.
//!
//!     cargo run --example parity
//!
//! Exits with 1 when a case fails, 2 when a fixture cannot be read.

use std::process::ExitCode;

use replica::check::summary_table;

fn main() -> ExitCode {
    let mut reports = Vec::new();
    let fixtures = replica::suite::fixtures_dir();
    for case in replica::suite::builtin() {
        match case.run(&fixtures, &candle_core::Device::Cpu) {
            Ok(report) => reports.push(report),
            Err(err) => {
                eprintln!("error: {}: {err}", case.name);
                return ExitCode::from(2);
            }
        }
    }
    println!("the built-in cases against PyTorch ({} cases)\n", reports.len());
    print!("{}", summary_table(&reports));
    let failed: Vec<_> = reports.iter().filter(|r| !r.passed()).collect();
    for report in &failed {
        println!("\n{report}");
    }
    if failed.is_empty() {
        println!("\nAll {} cases match their references.", reports.len());
        ExitCode::SUCCESS
    } else {
        println!("\n{} of {} cases fail.", failed.len(), reports.len());
        ExitCode::FAILURE
    }
}
