//! Where the model cannot be fetched, `ensure_minilm` fails loudly, with the
//! fetch script's own error, rather than letting a test pass without the model.
//! (Its own test binary: it sets `REPLICA_MINILM_DIR` for the whole process.)

use replica_suite::minilm::{ensure_minilm, fetch_script, minilm_dir};

#[test]
fn an_unfetchable_model_is_a_loud_error() {
    // A directory nobody can create: the script fails before it downloads anything.
    std::env::set_var("REPLICA_MINILM_DIR", "/proc/replica-cannot-exist/all-MiniLM-L6-v2");
    assert_eq!(
        minilm_dir().to_str(),
        Some("/proc/replica-cannot-exist/all-MiniLM-L6-v2")
    );
    assert!(fetch_script().is_file(), "the committed fetch script exists");
    let err = ensure_minilm().unwrap_err().to_string();
    for part in [
        "all-MiniLM-L6-v2 is not in /proc/replica-cannot-exist/all-MiniLM-L6-v2",
        "missing config.json, model.safetensors, tokenizer.json",
        "fetch_minilm.py",
        "did not fetch it",
        "REPLICA_MINILM_DIR",
    ] {
        assert!(err.contains(part), "`{part}` not in:\n{err}");
    }
}
