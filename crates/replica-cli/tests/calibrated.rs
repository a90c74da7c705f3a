//! The calibrated verdict from the command line, on references made with planted
//! bugs by `python/noise_calibration.py --write-fixtures tests/fixtures/planted`:
//! tiny GPT-2 and BERT at HF's initialisation captured with GELU erf while their
//! config says the tanh approximation (the port then computes tanh), and a GPT-2
//! whose captured and configured activations are two spellings of one formula.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn planted(stem: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/planted")
        .join(format!("{stem}.safetensors"))
}

fn replica(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_replica"))
        .args(args)
        .output()
        .expect("the replica binary runs")
}

fn check(model: &str, stem: &str, extra: &[&str]) -> (i32, Value) {
    let path = planted(stem);
    let mut args = vec![
        "check",
        "--model",
        model,
        "--reference",
        path.to_str().unwrap(),
        "--trace",
    ];
    args.extend_from_slice(&["--format", "json"]);
    args.extend_from_slice(extra);
    let out = replica(&args);
    let doc = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|err| panic!("not JSON ({err}): {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().expect("exited"), doc)
}

fn first_divergence(doc: &Value) -> Option<&str> {
    doc["cases"][0]["trace"]["first_divergence"].as_str()
}

#[test]
fn gelu_erf_ported_as_tanh_fails_and_names_the_mlp_activation() {
    let (code, doc) = check("gpt2_lm_head_model", "gpt2_gelu_erf_as_tanh", &[]);
    assert_eq!(code, 1, "{doc:#}");
    assert_eq!(first_divergence(&doc), Some("transformer.h.0.mlp.act"), "{doc:#}");
    assert!(doc["cases"][0]["max_noise_multiple"].as_f64().unwrap() > 10.0);

    // Every difference is under assert_close's tolerance: a fixed tolerance passes the bug.
    let (code, doc) = check(
        "gpt2_lm_head_model",
        "gpt2_gelu_erf_as_tanh",
        &["--rule", "assert-close"],
    );
    assert_eq!(code, 0, "{doc:#}");
    assert_eq!(first_divergence(&doc), None);
}

#[test]
fn the_text_trace_names_the_module_and_the_multiple() {
    let path = planted("gpt2_gelu_erf_as_tanh");
    let out = replica(&[
        "check",
        "--model",
        "gpt2_lm_head_model",
        "--reference",
        path.to_str().unwrap(),
        "--trace",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("First divergent module: `transformer.h.0.mlp.act`"),
        "{text}"
    );
    assert!(text.contains("decides; assert_close alone would say close"), "{text}");
    assert!(text.contains("FAIL (noise x"), "{text}");
}

#[test]
fn bert_gelu_erf_ported_as_tanh_fails_only_under_the_calibrated_rule() {
    let (code, doc) = check("bert_model", "bert_gelu_erf_as_tanh", &[]);
    assert_eq!(code, 1, "{doc:#}");
    assert_eq!(
        first_divergence(&doc),
        Some("encoder.layer.0.intermediate.intermediate_act_fn")
    );
    let (code, _) = check("bert_model", "bert_gelu_erf_as_tanh", &["--rule", "assert-close"]);
    assert_eq!(code, 0);
}

#[test]
fn an_equivalent_formulation_passes() {
    // HF gelu_pytorch_tanh and gelu_new compute one formula in a different op order.
    let (code, doc) = check("gpt2_lm_head_model", "gpt2_gelu_pytorch_tanh_as_new", &[]);
    assert_eq!(code, 0, "{doc:#}");
    assert!(doc["cases"][0]["max_noise_multiple"].as_f64().unwrap() < 10.0);
}

#[test]
fn the_noise_limit_is_a_flag_and_refuses_nonsense() {
    // With a limit above every multiple the bug passes: the limit is what decides.
    let (code, _) = check(
        "gpt2_lm_head_model",
        "gpt2_gelu_erf_as_tanh",
        &["--noise-limit", "1000"],
    );
    assert_eq!(code, 0);
    let out = replica(&["check", "--model", "linear", "--noise-limit", "0.5"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(">= 1"));
}
