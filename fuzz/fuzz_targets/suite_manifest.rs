//! Arbitrary text as a suite file (`replica check --suite`): accepted, or an
//! error naming the file, never a panic.

#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use replica_cli::manifest;
use replica_cli::registry::Registry;

fuzz_target!(|bytes: &[u8]| {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    let registry = REGISTRY.get_or_init(Registry::load);
    let Ok(text) = std::str::from_utf8(bytes) else {
        return; // `load` refuses non-UTF-8 before parsing
    };
    let path = Path::new("fuzz/suite.toml");
    match manifest::parse(text, path, registry) {
        Ok(suite) => assert!(!suite.jobs.is_empty(), "a suite without cases was accepted"),
        Err(err) => assert!(err.message.starts_with("fuzz/suite.toml"), "{}", err.message),
    }
});
