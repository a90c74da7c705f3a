//! Attention against its PyTorch / HF / timm fixtures: the parity cases, KV-cache
//! decoding and masks on the fixtures' inputs, and planted bugs the harness must catch.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use replica_blocks::attention::{repeat_kv, scaled_dot_product_attention, Attention, SdpaOptions};
use replica_blocks::kv_cache::KvCache;
use replica_blocks::mask;
use replica_blocks::RopeStyle;
use replica_check::{assert_close, compare, compare_trace, trace, Bundle, Case, Namespace, Tolerance};
use replica_suite::reference::attention_config;

const CPU: Device = Device::Cpu;

/// The cases of `python/fixtures_blocks_attention.py`: position encodings and attention.
fn cases() -> Vec<Case> {
    [replica_suite::positions::cases(), replica_suite::attention::cases()].concat()
}

mod common;

fn fixture(stem: &str) -> Bundle {
    common::fixture(&format!("blocks/{stem}"))
}

fn attention_cases() -> Vec<Case> {
    cases()
        .into_iter()
        .filter(|c| c.name.starts_with("attention") || c.name.starts_with("sdpa") || c.name == "alibi")
        .collect()
}

/// The bundle's parameters in a plain `VarBuilder` of `dtype`.
fn params_vb(bundle: &Bundle, dtype: DType) -> VarBuilder<'static> {
    let tensors: HashMap<String, Tensor> = bundle.namespace(Namespace::Param).into_iter().collect();
    VarBuilder::from_tensors(tensors, dtype, &CPU)
}

/// The LLaMA attention of a fixture, causal, under `self_attn`.
fn llama(bundle: &Bundle, dtype: DType) -> Attention {
    let mut config = attention_config(bundle).unwrap();
    config.causal = true;
    Attention::new(&config, params_vb(bundle, dtype).pp("self_attn")).unwrap()
}

fn err_text<T: std::fmt::Debug>(result: candle_core::Result<T>) -> String {
    result.expect_err("expected an error").to_string()
}

#[test]
fn every_attention_case_matches_its_reference() {
    let cases = attention_cases();
    assert!(cases.len() >= 16, "{} attention cases", cases.len());
    common::assert_all_pass(&cases);
}

#[test]
fn every_stored_gradient_and_activation_is_checked() {
    common::assert_stored_tensors_checked(&attention_cases());
    for (bundle, report) in common::run(&attention_cases()) {
        let float = bundle.metadata().dtype == "float32";
        assert_eq!(
            float,
            common::rows(&report, "grad/") > 0,
            "{}: f32 fixtures carry gradients, half ones not",
            report.title
        );
    }
}

#[test]
fn case_names_are_unique_and_cite_papers() {
    common::assert_names_unique();
    // The RoPE scaling cases (their reference names the rope_type) have their own script.
    let (scaling, rest): (Vec<Case>, Vec<Case>) = cases().into_iter().partition(|c| c.reference.contains("rope_type"));
    assert_eq!(scaling.len(), 8);
    common::assert_written_by(&scaling, "fixtures_blocks_rope_scaling.py");
    common::assert_written_by(&rest, "fixtures_blocks_attention.py");
    for case in cases() {
        assert!(case.paper.is_some(), "{} cites no paper", case.name);
    }
}

#[test]
fn the_fixtures_are_small() {
    let total = common::fixture_bytes(&cases());
    assert!(total < 1_000_000, "{total} bytes of fixtures");
}

/// Decoding one token at a time through a KV cache gives, row for row, what the
/// full causal pass gives, and what HF's LlamaAttention gave.
#[test]
fn kv_cache_decoding_equals_full_recomputation_for_gqa_with_rope() {
    for stem in ["attention_gqa", "attention_mqa"] {
        let bundle = fixture(stem);
        let attention = llama(&bundle, DType::F32);
        assert!(attention.kv_heads() < attention.heads());
        let x = bundle.input("0").unwrap();
        let full = attention.forward(x, None, None).unwrap();

        let mut cache = KvCache::new();
        let decoded = decode_token_by_token(&attention, x, &mut cache);
        assert_eq!(cache.len(), 6);
        // The cache holds the few key/value heads, after RoPE.
        assert_eq!(cache.keys().unwrap().dims(), &[2, attention.kv_heads(), 6, 4]);
        assert_close(stem, &decoded, &full, Tolerance::default());
        assert_close(stem, &decoded, bundle.output("0").unwrap(), Tolerance::default());
    }
}

#[test]
fn kv_cache_prefill_then_decode_equals_full_pass() {
    let bundle = fixture("attention_gqa");
    let attention = llama(&bundle, DType::F32);
    let x = bundle.input("0").unwrap();
    let mut cache = KvCache::with_max_len(6);
    let prefill = attention
        .forward(&x.narrow(1, 0, 4).unwrap(), None, Some(&mut cache))
        .unwrap();
    let rest = attention
        .forward(&x.narrow(1, 4, 2).unwrap(), None, Some(&mut cache))
        .unwrap();
    let decoded = Tensor::cat(&[prefill, rest], 1).unwrap();
    assert_close(
        "prefill + decode",
        &decoded,
        bundle.output("0").unwrap(),
        Tolerance::default(),
    );
    // Full: one more token does not fit.
    let text = err_text(attention.forward(&x.narrow(1, 0, 1).unwrap(), None, Some(&mut cache)));
    assert!(text.contains("capacity of 6"), "{text}");
    cache.reset();
    assert!(cache.is_empty());
}

#[test]
fn kv_cache_decoding_in_half_precision_matches_the_reference() {
    for (stem, dtype) in [("attention_gqa_f16", DType::F16), ("attention_gqa_bf16", DType::BF16)] {
        let bundle = fixture(stem);
        let attention = llama(&bundle, dtype);
        let x = bundle.input("0").unwrap();
        let mut cache = KvCache::new();
        let decoded = decode_token_by_token(&attention, x, &mut cache);
        let expected = bundle.output("0").unwrap();
        // The kernel rounds once where PyTorch rounds at each step: judged against the
        // float64 shadow (the calibrated rule), not a fixed half-precision tolerance.
        let shadow = bundle.shadow(Namespace::Output, "0");
        assert!(shadow.is_some(), "{stem} has no shadow");
        let c = replica_check::compare_with_shadow(
            &decoded,
            expected,
            shadow,
            Tolerance::for_dtype(dtype),
            replica_check::Rule::default(),
        );
        assert!(c.passed(), "{stem}: {c}");
    }
}

/// Gradients flow through cached keys and values: decoding token by token and
/// backpropagating gives the full pass's parameter gradients.
#[test]
fn gradients_through_the_kv_cache_equal_the_full_pass() {
    let bundle = fixture("attention_gqa");
    let mut config = attention_config(&bundle).unwrap();
    config.causal = true;
    let varmap = VarMap::new();
    let attention = Attention::new(&config, VarBuilder::from_varmap(&varmap, DType::F32, &CPU)).unwrap();
    let x = bundle.input("0").unwrap();
    let upstream = bundle.output_grad("0").unwrap();

    let full = attention.forward(x, None, None).unwrap();
    let full_grads = (full * upstream).unwrap().sum_all().unwrap().backward().unwrap();

    let mut cache = KvCache::new();
    let steps: Vec<Tensor> = (0..6)
        .map(|t| {
            attention
                .forward(&x.narrow(1, t, 1).unwrap(), None, Some(&mut cache))
                .unwrap()
        })
        .collect();
    let decoded = Tensor::cat(&steps, 1).unwrap();
    let decoded_grads = (decoded * upstream).unwrap().sum_all().unwrap().backward().unwrap();
    for var in varmap.all_vars() {
        let a = decoded_grads.get(var.as_tensor()).expect("gradient through the cache");
        let b = full_grads.get(var.as_tensor()).expect("gradient of the full pass");
        assert_close("parameter gradient", a, b, Tolerance::default());
    }
}

/// `causal: true` aligns bottom-right (q_len < k_len behaves like decoding after
/// a cache), unlike torch's top-left `is_causal`: on the top-left fixture the
/// option must *not* match, while an explicit offset-0 mask does (the case).
#[test]
fn causal_option_is_bottom_right_aligned() {
    let bundle = fixture("sdpa_causal_top_left");
    let (q, k, v) = (
        bundle.input("0").unwrap(),
        bundle.input("1").unwrap(),
        bundle.input("2").unwrap(),
    );
    let options = SdpaOptions {
        causal: true,
        ..SdpaOptions::default()
    };
    let bottom_right = scaled_dot_product_attention(q, k, v, None, &options).unwrap();
    assert!(!compare(&bottom_right, bundle.output("0").unwrap(), Tolerance::default()).passed());
    let explicit = mask::causal_mask(3, 6, 3, DType::F32, &CPU).unwrap();
    let same = scaled_dot_product_attention(q, k, v, Some(&explicit), &SdpaOptions::default()).unwrap();
    assert_close("bottom-right", &bottom_right, &same, Tolerance::EXACT);
}

/// Ragged batch: each sequence attends only to its own tokens, so running a
/// sequence alone, unpadded, gives the same rows as the padded batch.
#[test]
fn a_padded_ragged_batch_equals_each_sequence_alone() {
    let bundle = fixture("sdpa_padding");
    let (q, k, v) = (
        bundle.input("0").unwrap(),
        bundle.input("1").unwrap(),
        bundle.input("2").unwrap(),
    );
    let lengths = [6usize, 4, 1];
    let padding = mask::padding_mask_from_lengths(&lengths, 6, DType::F32, &CPU).unwrap();
    let batched = scaled_dot_product_attention(q, k, v, Some(&padding), &SdpaOptions::default()).unwrap();
    for (b, &len) in lengths.iter().enumerate() {
        let one = |t: &Tensor| t.narrow(0, b, 1).unwrap().narrow(2, 0, len).unwrap();
        let alone = scaled_dot_product_attention(
            &q.narrow(0, b, 1).unwrap(),
            &one(k),
            &one(v),
            None,
            &SdpaOptions::default(),
        )
        .unwrap();
        let row = batched.narrow(0, b, 1).unwrap();
        assert_close("ragged", &row, &alone, Tolerance::default());
    }
}

/// The classic RoPE porting bug: rotating interleaved pairs where the checkpoint
/// was trained with half-split pairs. The harness must fail it, at the first
/// module after the rotation (`o_proj`), not at the projections before it.
#[test]
fn rope_convention_swapped_is_caught() {
    let bundle = fixture("attention_gqa");
    let mut config = attention_config(&bundle).unwrap();
    config.causal = true;
    config.rope = Some(RopeStyle::Interleaved);
    let attention = Attention::new(&config, params_vb(&bundle, DType::F32).pp("self_attn")).unwrap();
    let x = bundle.input("0").unwrap();
    let (y, recorded) = trace::record(|| attention.forward(x, None, None).unwrap());
    let output = compare(&y, bundle.output("0").unwrap(), Tolerance::default());
    assert!(!output.passed(), "{output}");
    let report = compare_trace(&recorded, &bundle, Tolerance::default());
    assert_eq!(report.first_divergence.as_deref(), Some("self_attn.o_proj"), "{report}");
    assert!(report.rows[0].comparison.as_ref().unwrap().passed(), "{report}");
}

#[test]
fn missing_causal_mask_is_caught() {
    let bundle = fixture("attention_gqa");
    let config = attention_config(&bundle).unwrap(); // causal left off
    let attention = Attention::new(&config, params_vb(&bundle, DType::F32).pp("self_attn")).unwrap();
    let y = attention.forward(bundle.input("0").unwrap(), None, None).unwrap();
    assert!(!compare(&y, bundle.output("0").unwrap(), Tolerance::default()).passed());
}

#[test]
fn kv_heads_repeated_in_the_wrong_order_is_caught() {
    let bundle = fixture("sdpa_gqa");
    let (q, k, v) = (
        bundle.input("0").unwrap(),
        bundle.input("1").unwrap(),
        bundle.input("2").unwrap(),
    );
    // `repeat` tiles [h0, h1, h0, h1, ...]; GQA groups consecutive query heads: [h0, h0, h0, h1, ...].
    let tiled = |t: &Tensor| t.repeat((1, 3, 1, 1)).unwrap();
    let options = SdpaOptions {
        causal: true,
        ..SdpaOptions::default()
    };
    let y = scaled_dot_product_attention(q, &tiled(k), &tiled(v), None, &options).unwrap();
    assert!(!compare(&y, bundle.output("0").unwrap(), Tolerance::default()).passed());
    let grouped = |t: &Tensor| repeat_kv(t, 3).unwrap();
    let y = scaled_dot_product_attention(q, &grouped(k), &grouped(v), None, &options).unwrap();
    assert_close("repeat_kv", &y, bundle.output("0").unwrap(), Tolerance::default());
}

#[test]
fn softcap_left_out_is_caught() {
    let bundle = fixture("attention_softcap");
    let mut config = attention_config(&bundle).unwrap();
    config.causal = true;
    config.softcap = None;
    let attention = Attention::new(&config, params_vb(&bundle, DType::F32).pp("self_attn")).unwrap();
    let y = attention.forward(bundle.input("0").unwrap(), None, None).unwrap();
    assert!(!compare(&y, bundle.output("0").unwrap(), Tolerance::default()).passed());
}

#[test]
fn the_fixture_configs_are_hf_config_json() {
    for stem in ["attention_gqa", "attention_mqa", "attention_softcap"] {
        let bundle = fixture(stem);
        let config = attention_config(&bundle).unwrap();
        assert_eq!(config.dim, 16, "{stem}");
        assert!(config.rope_config().unwrap().is_some(), "{stem}");
    }
}

/// `x` fed one token at a time through `attention` with `cache`, the outputs concatenated.
fn decode_token_by_token(attention: &Attention, x: &Tensor, cache: &mut KvCache) -> Tensor {
    let steps: Vec<Tensor> = (0..x.dim(1).unwrap())
        .map(|t| {
            attention
                .forward(&x.narrow(1, t, 1).unwrap(), None, Some(&mut *cache))
                .unwrap()
        })
        .collect();
    Tensor::cat(&steps, 1).unwrap()
}
