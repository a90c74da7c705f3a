//! The memory estimates that the budget check trusts (`ConfigCheck::footprint`) are
//! upper bounds within a small factor of what the models really allocate:
//!
//! - parameters: every preset (shrunk to a few layers and a small vocabulary), and
//!   differential attention, built on a `VarMap`, whose variables are counted;
//! - activations: a GPT-2 forward and backward pass in a child process (this test
//!   binary run again), whose peak resident memory above what it held after
//!   building the model is compared with the estimate.

use std::process::Command;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use replica_blocks::{DiffAttention, DiffAttentionConfig};
use replica_check::budget::ACTIVATION_PASSES;
use replica_check::{ConfigCheck, Workload};
use replica_models::registry::model_config;
use replica_models::{Architecture, Bert, Gpt2, Llama, ModelConfig, Vit};
use serde_json::{json, Value};

/// Bytes of the variables `build` creates on a fresh `VarMap`, in f32.
fn built_bytes(build: impl FnOnce(VarBuilder) -> candle_core::Result<()>) -> u128 {
    let varmap = VarMap::new();
    build(VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).unwrap();
    varmap.all_vars().iter().map(|v| v.elem_count() as u128 * 4).sum()
}

/// The estimate is at least what is built and at most twice that (plus 1 MiB of
/// tables and buffers that are not variables).
#[track_caller]
fn assert_bounds(what: &str, estimate: u128, actual: u128) {
    assert!(actual > 0, "{what}: nothing built");
    assert!(
        estimate >= actual,
        "{what}: estimate {estimate} below the {actual} bytes built"
    );
    assert!(
        estimate <= 2 * actual + (1 << 20),
        "{what}: estimate {estimate} more than twice the {actual} bytes built"
    );
}

fn preset<A: Architecture>(name: &str, overrides: Value) {
    let config = A::Config::from_value(&model_config(name, &overrides).unwrap(), name).unwrap();
    let estimate = config.footprint(&Workload::default()).params.value().unwrap();
    let actual = built_bytes(|vb| A::new(&config, vb).map(drop));
    assert_bounds(name, estimate, actual);
}

#[test]
fn parameter_estimates_bound_what_every_preset_builds() {
    let small = json!({"vocab_size": 2048});
    preset::<Gpt2>("gpt2", json!({"vocab_size": 2048, "n_layer": 2}));
    preset::<Gpt2>(
        "gpt2-medium",
        json!({"vocab_size": 2048, "n_layer": 1, "tie_word_embeddings": false}),
    );
    preset::<Vit>("vit_tiny_patch16_224", json!({"depth": 2}));
    preset::<Vit>(
        "vit_small_patch16_224",
        json!({"depth": 1, "init_values": 0.1, "qk_norm": true}),
    );
    preset::<Vit>("vit_base_patch16_224", json!({"depth": 1, "num_classes": 0}));
    preset::<Llama>("llama-tiny", small.clone());
    preset::<Bert>("bert-base-uncased", json!({"vocab_size": 2048, "num_hidden_layers": 1}));
    preset::<Bert>("all-MiniLM-L6-v2", small);
}

#[test]
fn parameter_estimates_bound_differential_attention() {
    for config in [
        DiffAttentionConfig::new(256, 4, 1),
        DiffAttentionConfig {
            kv_heads: Some(2),
            ..DiffAttentionConfig::new(256, 4, 3)
        },
    ] {
        let estimate = config.footprint(&Workload::default()).params.value().unwrap();
        let actual = built_bytes(|vb| DiffAttention::new(&config, vb).map(drop));
        assert_bounds("diff_attention", estimate, actual);
    }
}

/// Set in the child: run the measured pass and print the numbers.
const CHILD_ENV: &str = "REPLICA_FOOTPRINT_CHILD";

fn gpt2_config() -> replica_models::Gpt2Config {
    replica_models::Gpt2Config::new(8192, 512, 256, 4, 4)
}

/// `VmRSS` and `VmHWM` of this process, in bytes.
fn resident() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[test]
fn child_runs_a_forward_and_backward_pass() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let config = gpt2_config();
    let varmap = VarMap::new();
    let model = Gpt2::new(&config, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).unwrap();
    let ids: Vec<u32> = (0..2 * 512).map(|i| (i * 7919 % 8192) as u32).collect();
    let ids = Tensor::from_vec(ids, (2, 512), &Device::Cpu).unwrap();
    let (built, _) = resident();
    let logits = model.forward(&ids, None).unwrap();
    let grads = logits.sqr().unwrap().mean_all().unwrap().backward().unwrap();
    let (_, peak) = resident();
    drop(grads);
    println!("FOOTPRINT built={built} peak={peak}");
}

#[test]
fn the_activation_estimate_bounds_a_forward_and_backward_pass() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_runs_a_forward_and_backward_pass",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENV, "1")
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let line = text
        .lines()
        .find(|l| l.contains("FOOTPRINT"))
        .expect("the child's numbers");
    let number = |key: &str| -> u128 {
        let value = line.split_whitespace().find_map(|w| w.strip_prefix(key)).unwrap();
        value.parse().unwrap()
    };
    let used = number("peak=").saturating_sub(number("built="));
    // The workload of a bundle holding these ids.
    let work = Workload::of_shapes([&[2usize, 512][..]], 4);
    let estimate = gpt2_config().footprint(&work).activations.value().unwrap() * ACTIVATION_PASSES;
    println!("activations: {used} bytes used, {estimate} estimated");
    assert!(used > 0, "{line}");
    assert!(
        estimate >= used,
        "the estimate {estimate} is below the {used} bytes the pass used"
    );
    assert!(
        estimate <= 8 * used,
        "the estimate {estimate} is more than 8 times the {used} bytes used"
    );
}
