//! The T5 and DiT cases against their fixtures (`python/fixtures_t5_dit.py`), the
//! bucket function against HF's on a table of relative positions, and planted bugs
//! that the traces localise.

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use common::fixture;
use replica_blocks::attention::Attention;
use replica_blocks::dit_block::{modulate, DitBlock, DitBlockConfig};
use replica_blocks::relative_position_bias::{
    relative_position_bucket, t5_attention_config, RelativePositionBias, RelativePositionBiasConfig,
};
use replica_check::{Bundle, Namespace, Parity, TraceReport, Unmatched};
use replica_models::config::bundle_config;
use replica_models::{Architecture, LoadCheckpoint, ModelConfig, T5Config, T5Encoder};
use replica_suite::fixtures_dir;
use replica_suite::t5_dit::{cases, t5_encoder_parity, T5AttentionDims};

#[test]
fn every_t5_and_dit_case_matches_its_reference() {
    common::assert_all_pass(&cases());
}

#[test]
fn every_stored_gradient_and_activation_is_checked() {
    common::assert_stored_tensors_checked(&cases());
}

#[test]
fn cases_are_unique_and_every_fixture_comes_from_the_script() {
    common::assert_names_unique();
    let script = std::fs::read_to_string(fixtures_dir().join("../../python/fixtures_t5_dit.py")).unwrap();
    for case in cases() {
        assert!(
            case.fixture_path(&fixtures_dir()).is_file(),
            "{}: no fixture",
            case.name
        );
        assert!(
            script.contains(&format!("\"{}.safetensors\"", case.fixture)) || {
                // Written in a loop: `f"blocks/{name}.safetensors"` with the name listed.
                let name = case.fixture.rsplit('/').next().unwrap();
                script.contains(&format!("\"{name}\""))
            },
            "{}: {} is not written by python/fixtures_t5_dit.py",
            case.name,
            case.fixture
        );
        assert!(case.paper.is_some(), "{}", case.name);
    }
}

#[test]
fn fixtures_stay_small() {
    let total = common::fixture_bytes(&cases());
    assert!(total < 800_000, "{total} bytes of fixtures");
}

/// HF's `_relative_position_bucket` on relative positions -200..200 for seven
/// (num_buckets, max_distance) settings, bidirectional and causal: every bucket equal.
#[test]
fn buckets_equal_the_reference_table() {
    let bundle = fixture("blocks/t5_buckets");
    let relative: Vec<i32> = bundle.input("relative_position").unwrap().to_vec1().unwrap();
    let mut tables = 0;
    for (name, table) in bundle.namespace(Namespace::Output) {
        let mut parts = name.split('_');
        let kind = parts.next().unwrap();
        let num_buckets: usize = parts.next().unwrap().parse().unwrap();
        let max_distance: usize = parts.next().unwrap().parse().unwrap();
        let expected: Vec<i32> = table.to_vec1().unwrap();
        for (r, e) in relative.iter().zip(&expected) {
            let got = relative_position_bucket(i64::from(*r), kind == "bidirectional", num_buckets, max_distance);
            assert_eq!(got as i32, *e, "{name}: relative position {r}");
        }
        tables += 1;
    }
    assert_eq!(tables, 14);
}

#[test]
fn causal_buckets_put_every_later_key_in_bucket_zero_and_encoder_buckets_split_by_side() {
    for r in 1..50 {
        assert_eq!(relative_position_bucket(r, false, 32, 128), 0);
        assert!(relative_position_bucket(r, true, 32, 128) >= 16);
        assert!(relative_position_bucket(-r, true, 32, 128) < 16);
    }
    assert_eq!(relative_position_bucket(0, true, 32, 128), 0);
    // Far offsets share the last bucket of their side.
    assert_eq!(relative_position_bucket(-1000, true, 32, 128), 15);
    assert_eq!(relative_position_bucket(1000, true, 32, 128), 31);
    assert_eq!(relative_position_bucket(-1000, false, 32, 128), 31);
}

#[test]
fn bad_bias_configs_are_refused_by_name() {
    let device = Device::Cpu;
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, DType::F32, &device);
    for (config, field) in [
        (
            RelativePositionBiasConfig {
                num_buckets: 0,
                ..RelativePositionBiasConfig::new(2)
            },
            "num_buckets",
        ),
        (
            RelativePositionBiasConfig {
                num_buckets: 3,
                ..RelativePositionBiasConfig::new(2)
            },
            "num_buckets",
        ),
        (
            RelativePositionBiasConfig {
                max_distance: 8,
                ..RelativePositionBiasConfig::new(2)
            },
            "max_distance",
        ),
        (RelativePositionBiasConfig::new(0), "heads"),
    ] {
        let err = RelativePositionBias::new(&config, vb.pp("bias"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(field), "{err}");
    }
}

/// The bias a decoder's first layer computes on a KV cache: the rows of the new
/// queries are the last rows of the full table.
#[test]
fn the_bias_with_an_offset_is_the_last_rows_of_the_full_bias() {
    let device = Device::Cpu;
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, DType::F32, &device);
    let config = RelativePositionBiasConfig {
        causal: true,
        ..RelativePositionBiasConfig::new(3)
    };
    let bias = RelativePositionBias::new(&config, vb).unwrap();
    let full = bias.forward(9, 9, 0).unwrap();
    let tail = bias.forward(2, 9, 7).unwrap();
    let diff = (full.narrow(2, 7, 2).unwrap() - tail)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
}

/// The attention case's block, traced, with `wrong` in place of the right bucket
/// settings or scale.
fn traced_attention(bundle: &Bundle, bias: RelativePositionBiasConfig, scale: Option<f64>) -> TraceReport {
    let (_, dims): (RelativePositionBiasConfig, T5AttentionDims) = bundle.config_parts(&[]).unwrap();
    let mut attention = t5_attention_config(dims.d_model, dims.num_heads, dims.d_kv, bias.causal, 0.0);
    attention.scale = scale;
    let mut run = Parity::new(bundle).unwrap();
    let x = run.input("0").unwrap();
    let weights = replica_check::WeightMap::new()
        .apply(run.params().clone(), bundle.origin())
        .unwrap();
    let (block, table) = weights
        .build(DType::F32, &Device::Cpu, |vb| {
            let table = RelativePositionBias::new(&bias, vb.pp("relative_attention_bias"))?;
            Ok((Attention::new(&attention, vb)?, table))
        })
        .unwrap();
    let (_, trace) = run
        .traced(Unmatched::NONE, || {
            let position_bias = table.forward(x.dim(1)?, x.dim(1)?, 0)?;
            Ok(vec![block.forward(&x, Some(&position_bias), None)?, position_bias])
        })
        .unwrap();
    trace
}

/// Planted bug: the encoder's bias built with the decoder's (causal) buckets. The
/// projections match; the lookup `relative_attention_bias` is the first to diverge.
#[test]
fn causal_buckets_in_an_encoder_diverge_first_at_the_bias_lookup() {
    let bundle = fixture("blocks/t5_attention_bias");
    let (right, _): (RelativePositionBiasConfig, T5AttentionDims) = bundle.config_parts(&[]).unwrap();
    assert!(!right.causal);
    let wrong = RelativePositionBiasConfig { causal: true, ..right };
    let trace = traced_attention(&bundle, wrong, Some(1.0));
    println!("{trace}");
    assert_eq!(
        trace.first_divergence.as_deref(),
        Some("relative_attention_bias"),
        "{trace}"
    );
}

/// Planted bug: the Transformer's `1 / sqrt(d_kv)` scale that T5 does not apply. The
/// projections and the bias match; the output projection `o` is the first to diverge.
#[test]
fn the_usual_score_scale_in_t5_attention_diverges_first_at_o() {
    let bundle = fixture("blocks/t5_attention_bias");
    let (right, _): (RelativePositionBiasConfig, T5AttentionDims) = bundle.config_parts(&[]).unwrap();
    let trace = traced_attention(&bundle, right, None);
    println!("{trace}");
    assert_eq!(trace.first_divergence.as_deref(), Some("o"), "{trace}");
}

/// Planted bug in the whole encoder: `relative_attention_max_distance` half the
/// reference's (3 for 6), so offsets of 3 land in the last bucket rather than an exact
/// one; the first module to diverge is the first layer's bias lookup.
#[test]
fn a_t5_encoder_with_half_the_max_distance_diverges_first_at_the_bias_lookup() {
    let bundle = fixture("models/t5_encoder");
    let right: T5Config = bundle_config(&bundle).unwrap();
    let mut wrong = serde_json::to_value(&right).unwrap();
    wrong["relative_attention_max_distance"] = (right.relative_attention_max_distance / 2).into();
    let bundle = bundle.with_config(wrong);
    let parity = t5_encoder_parity(&bundle).unwrap();
    println!("{}", parity.trace);
    assert!(!parity.report.passed());
    assert_eq!(
        parity.trace.first_divergence.as_deref(),
        Some("encoder.block.0.layer.0.SelfAttention.relative_attention_bias"),
        "{}",
        parity.trace
    );
}

#[test]
fn t5_configs_are_read_strictly_and_bad_values_refused_by_name() {
    let bundle = fixture("models/t5_encoder");
    let config: T5Config = bundle_config(&bundle).unwrap();
    assert_eq!(config.feed_forward_proj, "relu");
    let gated: T5Config = bundle_config(&fixture("models/t5_encoder_gated")).unwrap();
    assert_eq!(gated.feed_forward_proj, "gated-gelu");
    for (field, value, named) in [
        (
            "feed_forward_proj",
            serde_json::json!("gated-gelu-x"),
            "feed_forward_proj",
        ),
        ("feed_forward_proj", serde_json::json!("swishy"), "feed_forward_proj"),
        ("dense_act_fn", serde_json::json!("gelu"), "dense_act_fn"),
        ("is_decoder", serde_json::json!(true), "is_decoder"),
        (
            "relative_attention_max_distance",
            serde_json::json!(1),
            "relative_attention_max_distance",
        ),
        ("d_kv", serde_json::json!(0), "d_kv"),
        ("dropout_rate", serde_json::json!(1.5), "dropout_rate"),
    ] {
        let mut json = serde_json::to_value(&config).unwrap();
        json[field] = value;
        let err = T5Config::from_value(&json, "config.json").unwrap_err().to_string();
        assert!(err.contains(named), "{field}: {err}");
    }
}

#[test]
fn the_t5_presets_build_and_read_hf_names() {
    for name in ["t5-small", "t5-v1_1-small"] {
        let preset = T5Encoder::PRESETS.iter().find(|p| p.name == name).unwrap();
        let config = T5Config::from_value(&preset.config(), name).unwrap();
        assert!(config.feed_forward().is_ok(), "{name}");
    }
}

/// A block to train from scratch: adaLN-Zero starts every shift, scale and gate at
/// zero, so the block is the identity whatever its input, and it still trains (the
/// modulation layer gets a gradient).
#[test]
fn adaln_zero_starts_as_the_identity_and_trains() {
    let device = Device::Cpu;
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, DType::F32, &device);
    let config = DitBlockConfig {
        dim: 16,
        heads: 2,
        mlp_ratio: 4.0,
    };
    let block = DitBlock::new_adaln_zero(&config, vb).unwrap();
    let x = Tensor::randn(0f32, 1.0, (2, 5, 16), &device).unwrap();
    let c = Tensor::randn(0f32, 1.0, (2, 16), &device).unwrap();
    for vector in block.modulation(&c).unwrap() {
        assert_eq!(
            vector.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap(),
            0.0
        );
    }
    let y = block.forward(&x, &c).unwrap();
    let diff = (&y - &x)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(diff, 0.0);
    let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    let data = vars.data().lock().unwrap();
    let weight = data.get("adaLN_modulation.1.weight").unwrap();
    let grad = grads.get(weight).expect("the modulation layer gets a gradient");
    assert!(grad.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
    // The plain constructor does not zero it.
    let other = VarMap::new();
    let plain = DitBlock::new(&config, VarBuilder::from_varmap(&other, DType::F32, &device)).unwrap();
    let [shift, ..] = plain.modulation(&c).unwrap();
    assert!(shift.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
}

/// Planted bug: `modulate` as `x · scale + shift` (the "1 +" dropped). The modulation
/// layer and `norm1` match; the attention's first projection `attn.qkv` is the first
/// module to diverge.
#[test]
fn modulate_without_one_plus_scale_diverges_first_at_attn_qkv() {
    let bundle = fixture("blocks/dit_block");
    let config: DitBlockConfig = bundle.config().unwrap();
    let mut run = Parity::new(&bundle).unwrap();
    let (x, c) = (run.input("0").unwrap(), run.input("1").unwrap());
    let weights = replica_check::WeightMap::new()
        .apply(run.params().clone(), bundle.origin())
        .unwrap();
    let block = weights
        .build(DType::F32, &Device::Cpu, |vb| DitBlock::new(&config, vb))
        .unwrap();
    let (_, trace) = run
        .traced(Unmatched::NONE, || Ok(vec![forward_without_one_plus(&block, &x, &c)?]))
        .unwrap();
    println!("{trace}");
    assert_eq!(trace.first_divergence.as_deref(), Some("attn.qkv"), "{trace}");
}

/// `DiTBlock` with the bug planted: `modulate(x, shift, scale - 1)`, i.e. `x · scale + shift`.
fn forward_without_one_plus(block: &DitBlock, x: &Tensor, c: &Tensor) -> candle_core::Result<Tensor> {
    let [shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp] = block.modulation(c)?;
    let h = modulate(&block.norm1().forward(x)?, &shift_msa, &(scale_msa - 1.0)?)?;
    let h = block.attention().forward(&h, None, None)?;
    let x = (x + gate_msa.unsqueeze(1)?.broadcast_mul(&h)?)?;
    let h = modulate(&block.norm2().forward(&x)?, &shift_mlp, &(scale_mlp - 1.0)?)?;
    let h = block.mlp().forward(&h)?;
    &x + gate_mlp.unsqueeze(1)?.broadcast_mul(&h)?
}

/// Planted bug in the whole encoder: LayerNorm's usual epsilon (1e-5) in T5's
/// RMSNorms (1e-6): caught at the first norm, `encoder.block.0.layer.0.layer_norm`.
#[test]
fn a_t5_encoder_with_layer_norm_s_epsilon_diverges_first_at_the_first_norm() {
    let bundle = fixture("models/t5_encoder");
    let mut wrong = bundle.metadata().config.clone();
    wrong["layer_norm_epsilon"] = 1e-5.into();
    let parity = t5_encoder_parity(&bundle.with_config(wrong)).unwrap();
    println!("{}", parity.trace);
    assert!(!parity.report.passed());
    assert_eq!(
        parity.trace.first_divergence.as_deref(),
        Some("encoder.block.0.layer.0.layer_norm"),
        "{}",
        parity.trace
    );
}

/// Loading a real-format checkpoint: the bundle's parameters, with the encoder's
/// tied copy of `shared`, load strictly through the family's weight map.
#[test]
fn the_t5_checkpoint_loads_with_its_tied_copy_dropped() {
    let bundle = fixture("models/t5_encoder");
    let config: T5Config = bundle_config(&bundle).unwrap();
    let params = bundle.namespace(Namespace::Param);
    assert!(params.contains_key("encoder.embed_tokens.weight"));
    let model = T5Encoder::from_tensors(&config, params, bundle.origin(), DType::F32, &Device::Cpu).unwrap();
    let ids = bundle.input("0").unwrap();
    assert_eq!(model.forward(ids, None).unwrap().dims(), &[2, 9, 8]);
}

/// A bundle of one `T5Attention` may carry its whole model's `T5Config`: the fields
/// the attention does not read in inference are accepted, the others read.
#[test]
fn the_attention_case_reads_a_whole_t5_config() {
    let bundle = fixture("blocks/t5_attention_bias");
    let mut whole = fixture("models/t5_encoder").metadata().config.clone();
    for (field, value) in bundle.metadata().config.as_object().unwrap() {
        whole[field] = value.clone();
    }
    let case = cases().into_iter().find(|c| c.name == "t5_attention_bias").unwrap();
    let report = (case.run)(&bundle.with_config(whole)).unwrap();
    assert!(report.passed(), "{report}");
}
