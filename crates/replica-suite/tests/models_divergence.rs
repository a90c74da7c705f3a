//! First-divergence tracing finds real bugs: each test plants one mistake a port
//! could make, runs the model against the reference bundle with tracing on, and
//! asserts that the report names the module where the mistake is.

use candle_core::{DType, Device, Tensor};
use replica_check::{Bundle, Namespace, Tolerance, TraceReport, WeightMap};
use replica_models::divergence;
use replica_models::{
    Architecture, Bert, BertConfig, Gpt2, Gpt2Config, Llama, LlamaConfig, LoadCheckpoint, ModelConfig, Vit, VitConfig,
};
use replica_suite::fixtures_dir;

fn bundle(name: &str) -> Bundle {
    Bundle::load(fixtures_dir().join(format!("models/{name}.safetensors")), &Device::Cpu).unwrap()
}

fn params(bundle: &Bundle) -> std::collections::BTreeMap<String, Tensor> {
    bundle.namespace(Namespace::Param)
}

/// The trace comparison of `forward`, printed.
fn diverges<T>(bundle: &Bundle, forward: impl FnOnce() -> candle_core::Result<T>) -> TraceReport {
    let (output, trace) = divergence::record(forward);
    output.unwrap();
    let report = divergence::compare(&trace, bundle, Tolerance::default());
    println!("{report}");
    report
}

fn with(config: &serde_json::Value, field: &str, value: serde_json::Value) -> serde_json::Value {
    let mut config = config.clone();
    config[field] = value;
    config
}

/// Asserts that the first divergent module is `expected`, that every module
/// before it matches, and that the printed report names it.
fn assert_first_divergence(report: &TraceReport, expected: &str) {
    assert_eq!(report.first_divergence.as_deref(), Some(expected), "{report}");
    let position = report.rows.iter().position(|r| r.path == expected).unwrap();
    let before = &report.rows[..position];
    assert!(
        before.iter().any(|row| row.comparison.is_some()),
        "modules before the bug were compared"
    );
    for row in before {
        if let Some(comparison) = &row.comparison {
            assert!(comparison.passed(), "`{}` precedes the bug and must match", row.path);
        }
    }
    assert!(report
        .to_string()
        .contains(&format!("First divergent module: `{expected}`")));
}

fn bert_with(field: &str, value: serde_json::Value) -> TraceReport {
    let b = bundle("bert");
    let config = BertConfig::from_value(&with(&b.metadata().config, field, value), b.origin()).unwrap();
    let model = Bert::from_tensors(&config, params(&b), b.origin(), DType::F32, &Device::Cpu).unwrap();
    let (ids, types, mask) = (
        b.input("0").unwrap(),
        b.input("token_type_ids").unwrap(),
        b.input("attention_mask").unwrap(),
    );
    diverges(&b, || model.forward(ids, Some(types), Some(mask)))
}

fn vit_with(field: &str, value: serde_json::Value) -> TraceReport {
    let b = bundle("vit");
    let config = VitConfig::from_value(&with(&b.metadata().config, field, value), b.origin()).unwrap();
    let model = Vit::from_tensors(&config, params(&b), b.origin(), DType::F32, &Device::Cpu).unwrap();
    diverges(&b, || model.forward(b.input("0").unwrap()))
}

/// BERT and ViT use the exact (erf) GELU; HF's `gelu_new` is the tanh approximation.
#[test]
fn tanh_gelu_instead_of_erf_is_found_at_the_activation() {
    let report = bert_with("hidden_act", "gelu_new".into());
    assert_first_divergence(&report, "encoder.layer.0.intermediate.intermediate_act_fn");
    let report = vit_with("act_layer", "gelu_tanh".into());
    assert_first_divergence(&report, "blocks.0.mlp.act");
}

/// timm builds its ViT norms with eps 1e-6 and HF BERT with 1e-12; `torch.nn.LayerNorm`'s
/// default, 1e-5, is the slip.
#[test]
fn wrong_layer_norm_eps_is_found_at_the_first_norm() {
    let report = vit_with("norm_eps", 1e-5.into());
    assert_first_divergence(&report, "blocks.0.norm1");
    let report = bert_with("layer_norm_eps", 1e-5.into());
    assert_first_divergence(&report, "embeddings.LayerNorm");
}

/// HF LLaMA rotates feature `i` with `i + d/2`; pairing neighbours (Meta's layout)
/// on HF weights goes wrong inside the attention, after the q/k/v projections
/// (which still match) and before its output projection.
#[test]
fn swapped_rope_convention_is_found_in_the_first_attention() {
    let b = bundle("llama");
    let config =
        LlamaConfig::from_value(&with(&b.metadata().config, "rope_interleaved", true.into()), b.origin()).unwrap();
    let model = Llama::from_tensors(&config, params(&b), b.origin(), DType::F32, &Device::Cpu).unwrap();
    let report = diverges(&b, || model.forward(b.input("0").unwrap(), None));
    assert_first_divergence(&report, "model.layers.0.self_attn.o_proj");
    for projection in ["q_proj", "k_proj", "v_proj"] {
        let path = format!("model.layers.0.self_attn.{projection}");
        let row = report.rows.iter().find(|r| r.path == path).unwrap();
        assert!(
            row.comparison.as_ref().unwrap().passed(),
            "{path} comes before the rotation"
        );
    }
}

/// HF GPT-2's `Conv1D` stores weights `[in, out]`. A weight map that forgets to
/// transpose the square attention output projection still loads (the shape fits),
/// and the trace names that projection.
#[test]
fn untransposed_weight_is_found_at_its_layer() {
    let b = bundle("gpt2");
    let config = Gpt2Config::from_value(&b.metadata().config, b.origin()).unwrap();
    let forgetful = WeightMap::new()
        .ignore(r"(^|\.)attn\.(masked_)?bias$")
        .ignore(r"^lm_head\.weight$")
        .transpose(r"\.(c_attn|c_fc)\.weight$")
        .transpose(r"\.mlp\.c_proj\.weight$");
    let model = forgetful
        .apply(params(&b), b.origin())
        .unwrap()
        .build(DType::F32, &Device::Cpu, |vb| Gpt2::new(&config, vb))
        .unwrap();
    let report = diverges(&b, || model.forward(b.input("0").unwrap(), None));
    assert_first_divergence(&report, "transformer.h.0.attn.c_proj");
}

/// The same models without the mistakes do not diverge.
#[test]
fn the_correct_models_do_not_diverge() {
    assert!(bert_with("hidden_act", "gelu".into()).passed());
    assert!(vit_with("norm_eps", 1e-6.into()).passed());
}
