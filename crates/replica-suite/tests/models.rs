//! Every model against its reference (HF transformers / timm, random weights at a
//! tiny configuration): outputs, every recorded activation, GPT-2's gradients, and
//! greedy generation with and without the KV cache.

use candle_core::Device;
use replica_check::{Bundle, Report};
use replica_suite::fixtures_dir;
use replica_suite::models::{self, ModelParity};

fn bundle(name: &str) -> Bundle {
    Bundle::load(fixtures_dir().join(format!("models/{name}.safetensors")), &Device::Cpu).unwrap()
}

fn assert_passes(report: &Report) {
    assert!(report.passed(), "{report}");
    assert!(!report.rows.is_empty());
}

/// The parity run passes, every recorded activation with a reference is compared,
/// and the trace's loose ends are exactly the expected ones.
fn check_model(parity: &ModelParity, unreferenced: &[&str], not_recorded: &[&str]) {
    println!("{}\n{}", parity.report, parity.trace);
    assert_passes(&parity.report);
    assert!(parity.trace.passed(), "{}", parity.trace);
    let loose: Vec<String> = replica_models::divergence::unreferenced(&parity.trace);
    assert_eq!(loose, unreferenced, "recorded modules without a reference activation");
    assert_eq!(
        parity.trace.not_recorded, not_recorded,
        "reference activations the model does not record"
    );
}

#[test]
fn gpt2_matches_hf() {
    let bundle = bundle("gpt2");
    let parity = models::gpt2_parity(&bundle).unwrap();
    check_model(&parity, &[], &[]);
    let grads = parity
        .report
        .rows
        .iter()
        .filter(|r| r.name.starts_with("grad/param/"))
        .count();
    let params = bundle.names(replica_check::Namespace::Param).count();
    assert_eq!(
        grads, params,
        "a gradient row for every parameter, the tied lm_head included"
    );
}

#[test]
fn llama_matches_hf() {
    let parity = models::llama_parity(&bundle("llama")).unwrap();
    check_model(&parity, &[], &[]);
}

#[test]
fn llama_with_yarn_rope_matches_hf() {
    let parity = models::llama_parity(&bundle("llama_yarn")).unwrap();
    check_model(&parity, &[], &[]);
}

/// The whole model tells a RoPE scaling bug apart: YaRN without its attention
/// factor on (cos, sin) (`attention_factor` 1 in the config) fails the case.
#[test]
fn llama_with_yarn_rope_without_its_mscale_fails() {
    let bundle = bundle("llama_yarn");
    let mut config = bundle.metadata().config.clone();
    config["rope_parameters"]["attention_factor"] = serde_json::json!(1.0);
    let parity = models::llama_parity(&bundle.with_config(config)).unwrap();
    assert!(!parity.report.passed(), "{}", parity.report);
}

#[test]
fn vit_matches_timm() {
    let parity = models::vit_parity(&bundle("vit")).unwrap();
    check_model(&parity, &[], &[]);
}

#[test]
fn bert_matches_hf() {
    let parity = models::bert_parity(&bundle("bert")).unwrap();
    // The context before the output projection stays inside the attention block.
    check_model(
        &parity,
        &[],
        &["encoder.layer.0.attention.self:0", "encoder.layer.1.attention.self:0"],
    );
}

#[test]
fn gpt2_generation_matches_hf_generate() {
    assert_passes(&models::gpt2_generate(&bundle("gpt2_generate")).unwrap());
}

#[test]
fn llama_generation_matches_hf_generate() {
    assert_passes(&models::llama_generate(&bundle("llama_generate")).unwrap());
}

#[test]
fn every_case_runs_from_the_registry() {
    for case in models::cases() {
        let report = case.run(&fixtures_dir(), &Device::Cpu).unwrap();
        assert_passes(&report);
    }
}
