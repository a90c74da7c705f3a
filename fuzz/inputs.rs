//! The committed fuzz inputs, for the tests that replay them outside libFuzzer
//! (`crates/replica-check/tests/fuzz_regressions.rs`, `crates/replica-cli/tests/fuzz_regressions.rs`,
//! which include this file). Not part of the fuzz crate's targets.

use std::fs;
use std::path::{Path, PathBuf};

/// This folder, from a crate under `crates/`.
pub fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The files of `fuzz/<kind>/<target>/` with their bytes, sorted by name; from a
/// corpus only the committed `seed-` files (the rest is a local fuzzer's output).
pub fn inputs(kind: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = fs::read_dir(fuzz_dir().join(kind).join(target)) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| kind != "corpus" || p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("seed-")))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let bytes = fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, bytes)
        })
        .collect()
}
