//! `gemma-check`, the `replica` command line over the port's own case.

use std::process::Command;

#[test]
fn replica_check_runs_the_ports_case() {
    let out = Command::new(env!("CARGO_BIN_EXE_gemma-check"))
        .args(["check", "--model", "gemma_port"])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("gemma_port  2403.08295       56"), "{text}");
    assert!(text.contains("The case passes."), "{text}");
}
