//! First-divergence tracing finds real bugs: each test plants one mistake a port
//! could make, runs the model against the reference bundle with tracing on, and
//! asserts that the report names the module where the mistake is.

use candle_core::{DType, Device, Tensor};
use replica_check::{Bundle, Namespace, Tolerance, TraceReport, WeightMap};
use replica_models::decoder::{CausalDecoder, DecoderConfig, DecoderSpec};
use replica_models::divergence;
use replica_models::{
    Architecture, Bert, BertConfig, Gemma2, Gpt2, Gpt2Config, Llama, LlamaConfig, LoadCheckpoint, ModelConfig, Phi3,
    Qwen2, Qwen3, Vit, VitConfig,
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

/// The spec and weight map of a decoder fixture's model.
fn spec_and_map<M: Architecture>(b: &Bundle) -> (DecoderSpec, WeightMap)
where
    M::Config: DecoderConfig,
{
    let config = M::Config::from_value(&b.metadata().config, b.origin()).unwrap();
    (config.decoder_spec(), M::weight_map(&config))
}

/// A decoder fixture's model (Qwen2, Qwen3, Gemma 2, Mistral) with `planted` applied
/// to its spec, its weights loaded through the model's own weight map (`strict` or
/// leniently).
fn decoder(b: &Bundle, strict: bool, planted: impl FnOnce(&mut DecoderSpec)) -> replica_check::Result<CausalDecoder> {
    let component = &b.metadata().component;
    let (mut spec, map) = if component.contains("Qwen3") {
        spec_and_map::<Qwen3>(b)
    } else if component.contains("Qwen2") {
        spec_and_map::<Qwen2>(b)
    } else if component.contains("Gemma2") {
        spec_and_map::<Gemma2>(b)
    } else if component.contains("Phi3") {
        spec_and_map::<Phi3>(b)
    } else {
        spec_and_map::<Llama>(b)
    };
    planted(&mut spec);
    let map = if strict { map } else { map.lenient() };
    map.apply(params(b), b.origin())?
        .build(DType::F32, &Device::Cpu, |vb| CausalDecoder::new(&spec, vb))
}

/// The trace comparison of a decoder fixture's model with `planted` applied.
fn decoder_with(name: &str, planted: impl FnOnce(&mut DecoderSpec)) -> TraceReport {
    let b = bundle(name);
    let model = decoder(&b, false, planted).unwrap();
    diverges(&b, || model.logits_t(b.input("0").unwrap(), None, false))
}

/// Qwen3 normalises each head's queries and keys; a port that skips the QK-norm
/// records no `q_norm` (the report lists the reference's as never recorded) and
/// diverges at the first module after it, the first attention's output projection,
/// its q/k/v projections still matching. Loaded strictly, the norms' weights are
/// left over.
#[test]
fn skipped_qk_norm_is_found_at_the_first_attention() {
    let report = decoder_with("qwen3", |spec| spec.block.attention.qk_norm = false);
    assert_first_divergence(&report, "model.layers.0.self_attn.o_proj");
    for norm in ["q_norm", "k_norm"] {
        let path = format!("model.layers.0.self_attn.{norm}");
        assert!(report.not_recorded.contains(&path), "{path}: {report}");
    }
    let err = decoder(&bundle("qwen3"), true, |spec| spec.block.attention.qk_norm = false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unused: `model.layers.0.self_attn.q_norm.weight`"),
        "{err}"
    );
    assert!(
        err.contains("unused: `model.layers.1.self_attn.k_norm.weight`"),
        "{err}"
    );
}

/// The QK-norms' epsilon is `rms_norm_eps` (1e-6); the attention block's own default,
/// 1e-5, is the slip, found at the first query norm.
#[test]
fn qk_norm_with_the_wrong_eps_is_found_at_q_norm() {
    let report = decoder_with("qwen3", |spec| spec.block.attention.norm_eps = 1e-5);
    assert_first_divergence(&report, "model.layers.0.self_attn.q_norm");
}

/// HF Qwen3 normalises `[batch, seq, heads, head_dim]` and records that layout;
/// timm's layout (heads before the sequence) gives the same values transposed, and
/// the trace names the query norm.
#[test]
fn qk_norm_in_the_other_layout_is_found_at_q_norm() {
    let report = decoder_with("qwen3", |spec| spec.block.attention.qk_norm_seq_first = false);
    assert_first_divergence(&report, "model.layers.0.self_attn.q_norm");
}

/// Qwen2's o_proj has no bias while q/k/v have one: a port that biases all four (or
/// none) fails strict loading, naming the tensor.
#[test]
fn qwen2_projection_biases_are_checked_by_strict_loading() {
    let b = bundle("qwen2");
    let err = decoder(&b, true, |spec| spec.block.attention.proj_bias = Some(true))
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing: `model.layers.0.self_attn.o_proj.bias`"), "{err}");
    let err = decoder(&b, true, |spec| spec.block.attention.qkv_bias = false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unused: `model.layers.0.self_attn.q_proj.bias`"), "{err}");
    // The LLaMA port reads the config's `attention_bias` (false) and refuses Qwen2's weights too.
    let llama = LlamaConfig::from_value(
        &serde_json::json!({
            "vocab_size": 96, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
            "tie_word_embeddings": true,
        }),
        "llama",
    )
    .unwrap();
    let err = Llama::from_tensors(&llama, params(&b), b.origin(), DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unused: `model.layers.0.self_attn.k_proj.bias`"), "{err}");
}

#[test]
fn the_correct_qwen_decoders_do_not_diverge() {
    assert!(decoder_with("qwen2", |_| {}).passed());
    assert!(decoder_with("qwen3", |_| {}).passed());
    assert!(decoder(&bundle("qwen2"), true, |_| {}).is_ok());
    assert!(decoder(&bundle("qwen3"), true, |_| {}).is_ok());
}

/// A sliding window left out (every query sees every earlier token) is found in the
/// first sliding layer's attention: Mistral's layers all slide, Gemma 2's layer 0
/// does (window 4, 9 tokens), and Qwen2's only from layer 1 on, so its layer 0 matches.
#[test]
fn a_missing_sliding_window_is_found_at_the_first_sliding_attention() {
    // `mistral_sdpa` is captured with HF's default attention, which records no probabilities.
    for name in ["mistral", "gemma2", "mistral_sdpa"] {
        let report = decoder_with(name, |spec| spec.sliding = None);
        assert_first_divergence(&report, "model.layers.0.self_attn.o_proj");
    }
    let report = decoder_with("qwen2", |spec| spec.sliding = None);
    assert_first_divergence(&report, "model.layers.1.self_attn.o_proj");
    // A window one token too wide is found too.
    let report = decoder_with("mistral", |spec| spec.sliding.as_mut().unwrap().window += 1);
    assert_first_divergence(&report, "model.layers.0.self_attn.o_proj");
}

/// Gemma 2's own choices, each left out, are found where they act: the attention's
/// soft-capping and `query_pre_attn_scalar` in the first attention, the sandwich
/// norm after it at the next module recorded (the reference's norm is never recorded
/// by the port), and the final-logit soft-capping after `lm_head`, in the logits.
#[test]
fn gemma2_options_left_out_are_found_where_they_act() {
    let report = decoder_with("gemma2", |spec| spec.block.attention.softcap = None);
    assert_first_divergence(&report, "model.layers.0.self_attn.o_proj");
    let report = decoder_with("gemma2", |spec| spec.block.attention.query_pre_attn_scalar = None);
    assert_first_divergence(&report, "model.layers.0.self_attn.o_proj");
    let report = decoder_with("gemma2", |spec| spec.block.names.post_norm1 = None);
    assert_first_divergence(&report, "model.layers.0.pre_feedforward_layernorm");

    let b = bundle("gemma2");
    let logits = |planted: fn(&mut DecoderSpec)| {
        let model = decoder(&b, true, planted).unwrap();
        let logits = model.logits_t(b.input("0").unwrap(), None, false).unwrap();
        let reference = b.output("logits").unwrap();
        (logits - reference)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    assert!(logits(|_| {}) < 1e-4);
    assert!(logits(|spec| spec.final_logit_softcap = None) > 0.1);
}

/// Phi-3's fused projections read as stored: the gate and value halves of
/// `gate_up_proj` swapped is found at the MLP's activation (the projection itself
/// matches); LongRoPE's short factors used past the original context are found in
/// the rotary tables; the window left out in the first attention.
#[test]
fn phi3_options_left_out_are_found_where_they_act() {
    use replica_blocks::{FeedForwardConfig, GluProjections};
    let report = decoder_with("phi3", |spec| {
        let FeedForwardConfig::Glu(glu) = &mut spec.block.feed_forward else {
            unreachable!("Phi-3's MLP is gated")
        };
        glu.names.projections = GluProjections::Fused {
            name: "gate_up_proj".into(),
            gate_last: true,
        };
    });
    assert_first_divergence(&report, "model.layers.0.mlp.activation_fn");
    let report = decoder_with("phi3", |spec| {
        let rope = spec.block.attention.rope_parameters.as_mut().unwrap();
        rope.long_factor = rope.short_factor.clone();
    });
    assert_first_divergence(&report, "model.rotary_emb:0");
    let report = decoder_with("phi3", |spec| spec.sliding = None);
    assert_first_divergence(&report, "model.layers.0.self_attn.o_proj");
}

#[test]
fn the_correct_windowed_decoders_do_not_diverge() {
    for name in ["mistral", "gemma2", "phi3"] {
        assert!(decoder_with(name, |_| {}).passed(), "{name}");
        assert!(decoder(&bundle(name), true, |_| {}).is_ok(), "{name}");
    }
}
