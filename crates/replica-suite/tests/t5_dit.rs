//! The T5 cases against their fixtures (`python/fixtures_t5_dit.py`), the bucket
//! function against HF's on a table of relative positions, and planted bugs that the
//! traces localise.

mod common;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use common::fixture;
use replica_blocks::attention::Attention;
use replica_blocks::relative_position_bias::{
    relative_position_bucket, t5_attention_config, RelativePositionBias, RelativePositionBiasConfig,
};
use replica_check::{Bundle, Namespace, Parity, TraceReport, Unmatched};
use replica_suite::fixtures_dir;
use replica_suite::t5_dit::{cases, T5AttentionDims};

#[test]
fn every_t5_case_matches_its_reference() {
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
    assert!(total < 300_000, "{total} bytes of fixtures");
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
