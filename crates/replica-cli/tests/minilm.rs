//! The real all-MiniLM-L6-v2 from the command line: the `sentence_embeddings`
//! component on the reference embeddings bundle, with the model's own weights and
//! `config.json` (fetched into a cache outside the repository when missing, as the
//! suite's MiniLM tests do).

use std::process::Command;

use replica_suite::fixtures_dir;
use replica_suite::minilm::ensure_minilm;

#[test]
fn minilm_sentence_embeddings_are_checked_from_the_command_line() {
    let dir = ensure_minilm().unwrap_or_else(|err| panic!("all-MiniLM-L6-v2 is not available: {err}"));
    let reference = fixtures_dir().join("models/minilm_embeddings.safetensors");
    let out = Command::new(env!("CARGO_BIN_EXE_replica"))
        .args([
            "check",
            "--model",
            "sentence_embeddings",
            "--any-component",
            "--reference",
        ])
        .arg(&reference)
        .arg("--weights")
        .arg(dir.join("model.safetensors"))
        .arg("--config")
        .arg(dir.join("config.json"))
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
    assert!(text.contains("The case passes."), "{text}");
    // The embeddings of 8 sentences, one tensor, compared against the float64 shadow.
    assert!(text.contains("sentence_embeddings  1908.10084        1"), "{text}");
}
