//! Replays the fuzz inputs of the command's file readers (`fuzz/`): the
//! committed seeds and every input that once made a target fail
//! (`fuzz/regressions/<target>/`), through the same entry points as the
//! targets. Each must end in a clean `Ok` or an error naming the file.

use std::fs;
use std::path::Path;

use replica_cli::args::InspectArgs;
use replica_cli::output::Format;
use replica_cli::registry::Registry;
use replica_cli::{inspect, manifest};

#[path = "../../../fuzz/inputs.rs"]
mod fuzz_inputs;
use fuzz_inputs::inputs;

/// What the suite_manifest target does with one input.
fn suite(bytes: &[u8], registry: &Registry) -> Option<Result<usize, String>> {
    let text = std::str::from_utf8(bytes).ok()?;
    let path = Path::new("fuzz/suite.toml");
    let parsed = manifest::parse(text, path, registry).map(|s| s.jobs.len());
    if let Err(err) = &parsed {
        assert!(err.message.starts_with("fuzz/suite.toml"), "{}", err.message);
    }
    Some(parsed.map_err(|e| e.message))
}

/// What the inspect target does with one input: a format byte, then the file.
fn inspect_bytes(input: &[u8], dir: &Path) -> Option<Result<(), String>> {
    let (&selector, bytes) = input.split_first()?;
    let format = [Format::Text, Format::Json, Format::Markdown][selector as usize % 3];
    let file = dir.join("input.safetensors");
    fs::write(&file, bytes).expect("write the input");
    let result = inspect::run(&InspectArgs { file: file.clone() }, format);
    if let Err(err) = &result {
        assert!(err.message.contains(&*file.to_string_lossy()), "{}", err.message);
    }
    Some(result.map(|_| ()).map_err(|e| e.message))
}

#[test]
fn committed_suite_seeds_are_accepted() {
    let registry = Registry::load();
    let seeds = inputs("corpus", "suite_manifest");
    assert!(seeds.len() >= 2, "expected the committed seeds");
    for (path, bytes) in seeds {
        let jobs = suite(&bytes, &registry)
            .expect("UTF-8")
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(jobs > 0, "{}", path.display());
    }
}

#[test]
fn suite_inputs_that_once_failed_are_handled() {
    let registry = Registry::load();
    for (_, bytes) in inputs("regressions", "suite_manifest") {
        let _ = suite(&bytes, &registry);
    }
}

#[test]
fn inspect_inputs_are_handled() {
    let dir = tempfile::tempdir().unwrap();
    let seeds = inputs("corpus", "inspect");
    assert!(seeds.len() >= 3, "expected the committed seeds");
    for (path, input) in &seeds {
        let shown = inspect_bytes(input, dir.path()).expect("a non-empty seed");
        shown.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    for (_, input) in inputs("regressions", "inspect") {
        let _ = inspect_bytes(&input, dir.path());
    }
}
