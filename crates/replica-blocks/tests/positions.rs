//! Position encodings (RoPE, sinusoidal, learned, ALiBi) on their own (the checks on
//! the reference fixtures are in `replica-suite`): their defining properties and bad input.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use replica_blocks::alibi::{alibi_slopes, Alibi, AlibiConfig};
use replica_blocks::position_embedding::{LearnedPositionConfig, LearnedPositionEmbedding};
use replica_blocks::sinusoidal::{SinusoidalConfig, SinusoidalLayout, SinusoidalPositionEmbedding};
use replica_blocks::{Rope, RopeConfig, RopeStyle};
use replica_check::{assert_close, trace, Tolerance};

const CPU: Device = Device::Cpu;

fn ramp(shape: &[usize], scale: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|i| ((i * 7919 % 97) as f32 / 48.5 - 1.0) * scale).collect();
    Tensor::from_vec(values, shape, &CPU).unwrap()
}

fn err_text<T: std::fmt::Debug>(result: candle_core::Result<T>) -> String {
    result.expect_err("expected an error").to_string()
}

// ------------------------------------------------------------------ fixtures

// --------------------------------------------------------------- planted bugs

// ---------------------------------------------------------------- properties

/// RoPE's point: the score of a rotated query and key depends only on their distance.
#[test]
fn rope_scores_depend_only_on_relative_position() {
    for style in [RopeStyle::HalfSplit, RopeStyle::Interleaved] {
        let config = RopeConfig {
            style,
            max_positions: 64,
            ..RopeConfig::new(8)
        };
        let rope = Rope::new(&config, &CPU).unwrap();
        let both = ramp(&[1, 1, 2, 8], 1.0);
        let (q, k) = (both.narrow(2, 0, 1).unwrap(), both.narrow(2, 1, 1).unwrap());
        let score = |m: usize, n: usize| -> f32 {
            let a = rope.apply(&q, m).unwrap();
            let b = rope.apply(&k, n).unwrap();
            (a * b).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap()
        };
        assert!((score(3, 1) - score(40, 38)).abs() < 1e-5, "{style:?}");
        assert!((score(0, 0) - score(17, 17)).abs() < 1e-5, "{style:?}");
        assert!(
            (score(3, 1) - score(1, 3)).abs() > 1e-3,
            "{style:?}: distance has a sign"
        );
    }
}

#[test]
fn rope_with_an_offset_continues_the_sequence() {
    let rope = Rope::new(&RopeConfig::new(6), &CPU).unwrap();
    let x = ramp(&[2, 3, 7, 6], 1.0);
    let whole = rope.apply(&x, 0).unwrap();
    let tail = rope.apply(&x.narrow(2, 4, 3).unwrap(), 4).unwrap();
    assert_close("offset", &tail, &whole.narrow(2, 4, 3).unwrap(), Tolerance::EXACT);
    // Half precision in, half precision out; position 0 is the identity.
    let half = rope.apply(&x.to_dtype(DType::BF16).unwrap(), 0).unwrap();
    assert_eq!(half.dtype(), DType::BF16);
    assert_close(
        "position 0",
        &whole.narrow(2, 0, 1).unwrap(),
        &x.narrow(2, 0, 1).unwrap(),
        Tolerance::EXACT,
    );
}

#[test]
fn sinusoidal_table_follows_the_paper_formula() {
    let vb = VarBuilder::zeros(DType::F32, &CPU);
    let pe = SinusoidalPositionEmbedding::new(&SinusoidalConfig::new(6), vb.clone()).unwrap();
    let rows = pe.table(3, 5).unwrap().to_vec2::<f32>().unwrap();
    for (r, pos) in (5..8).enumerate() {
        for i in 0..3 {
            let angle = pos as f64 / 10000f64.powf(2.0 * i as f64 / 6.0);
            assert_eq!(rows[r][2 * i], angle.sin() as f32);
            assert_eq!(rows[r][2 * i + 1], angle.cos() as f32);
        }
    }
    // The concatenated layout holds the same numbers, sines first; odd dims give sines the extra one.
    let config = SinusoidalConfig {
        layout: SinusoidalLayout::Concatenated,
        ..SinusoidalConfig::new(7)
    };
    let concatenated = SinusoidalPositionEmbedding::new(&config, vb.clone()).unwrap();
    let row = concatenated.table(1, 5).unwrap().to_vec2::<f32>().unwrap().remove(0);
    assert_eq!(row[0], 5f32.sin());
    assert_eq!(row[4], 5f32.cos());
    let (y, recorded) = trace::record(|| pe.forward(4, 0).unwrap());
    assert_eq!(y.dims(), &[1, 4, 6]);
    assert_eq!(recorded.len(), 0, "a root module is not recorded");
    let named = SinusoidalPositionEmbedding::new(&SinusoidalConfig::new(6), vb.pp("pos")).unwrap();
    let (_, recorded) = trace::record(|| named.forward(4, 0).unwrap());
    assert_eq!(recorded.names().collect::<Vec<_>>(), ["pos"]);
}

#[test]
fn learned_positions_slice_the_table_with_an_offset() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &CPU);
    let config = LearnedPositionConfig {
        row_offset: 2, // OPT
        ..LearnedPositionConfig::new(10, 4)
    };
    let wpe = LearnedPositionEmbedding::new(&config, vb.pp("embed_positions")).unwrap();
    assert_eq!(wpe.max_positions(), 8);
    let rows = wpe.forward(3, 1).unwrap();
    assert_close(
        "rows",
        &rows.squeeze(0).unwrap(),
        &wpe.weight().narrow(0, 3, 3).unwrap(),
        Tolerance::EXACT,
    );
    let x = Tensor::zeros((2, 3, 4), DType::F16, &CPU).unwrap();
    assert_eq!(wpe.add_to(&x, 0).unwrap().dtype(), DType::F16);
}

#[test]
fn alibi_slopes_follow_the_reference_get_slopes() {
    // Powers of two: 2^(-8/n), its powers.
    let eight = alibi_slopes(8);
    let expected: Vec<f64> = (1..=8).map(|i| 2f64.powi(-i)).collect();
    assert_eq!(eight, expected);
    // Not a power of two: the 4-head slopes, then every other 8-head slope.
    let six = alibi_slopes(6);
    let four = alibi_slopes(4);
    assert_eq!(&six[..4], &four[..]);
    assert_eq!(&six[4..], &[eight[0], eight[2]]);
    let twelve = alibi_slopes(12);
    assert_eq!(&twelve[..8], &eight[..]);
    let sixteen = alibi_slopes(16);
    assert_eq!(&twelve[8..], &[sixteen[0], sixteen[2], sixteen[4], sixteen[6]]);
    assert_eq!(alibi_slopes(1), vec![2f64.powi(-8)]);
}

#[test]
fn alibi_bias_is_minus_slope_times_distance() {
    let alibi = Alibi::new(&AlibiConfig::new(2), &CPU).unwrap();
    let bias = alibi.bias(2, 4, 2, DType::F32).unwrap();
    assert_eq!(bias.dims(), &[1, 2, 2, 4]);
    // Head 0 has slope 1/16: query at position 2 + 1 = 3, keys 0..4.
    let head0 = bias.get(0).unwrap().get(0).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(head0[1], vec![-3.0 / 16.0, -2.0 / 16.0, -1.0 / 16.0, 0.0]);
    assert_eq!(alibi.slopes().dims(), &[2]);
    // Half precision on request.
    assert_eq!(alibi.bias(1, 1, 0, DType::BF16).unwrap().dtype(), DType::BF16);
}

// ----------------------------------------------------------------- bad input

#[test]
fn rope_refuses_bad_settings_and_inputs() {
    let odd = RopeConfig {
        fraction: 0.5,
        ..RopeConfig::new(6)
    };
    let text = err_text(Rope::new(&odd, &CPU));
    assert!(
        text.contains("must be even and positive, got 3 (head_dim 6 x fraction 0.5)"),
        "{text}"
    );
    let text = err_text(Rope::new(
        &RopeConfig {
            rotary_features: Some(7),
            ..RopeConfig::new(8)
        },
        &CPU,
    ));
    assert!(text.contains("got 7 (rotary_dim 7)"), "{text}");
    let text = err_text(Rope::new(
        &RopeConfig {
            rotary_features: Some(10),
            ..RopeConfig::new(8)
        },
        &CPU,
    ));
    assert!(text.contains("do not fit heads of 8 features"), "{text}");
    assert!(Rope::new(
        &RopeConfig {
            fraction: 1.5,
            ..RopeConfig::new(8)
        },
        &CPU
    )
    .is_err());
    assert!(Rope::new(
        &RopeConfig {
            theta: f64::NAN,
            ..RopeConfig::new(8)
        },
        &CPU
    )
    .is_err());

    let rope = Rope::new(
        &RopeConfig {
            max_positions: 8,
            ..RopeConfig::new(8)
        },
        &CPU,
    )
    .unwrap();
    let text = err_text(rope.apply(&ramp(&[1, 6, 8], 1.0), 0));
    assert!(
        text.contains("[batch, heads, seq, head_dim], got shape [1, 6, 8]"),
        "{text}"
    );
    let text = err_text(rope.apply(&ramp(&[1, 1, 6, 8], 1.0), 3));
    assert!(
        text.contains("positions 3..9 exceed the table of 8 positions"),
        "{text}"
    );
    let text = err_text(rope.apply(&ramp(&[1, 1, 2, 4], 1.0), 0));
    assert!(text.contains("fewer than the 8 to rotate"), "{text}");
}

#[test]
fn bad_sinusoidal_and_alibi_settings_are_refused() {
    let vb = VarBuilder::zeros(DType::F32, &CPU);
    assert!(SinusoidalPositionEmbedding::new(&SinusoidalConfig::new(0), vb.clone()).is_err());
    let pe = SinusoidalPositionEmbedding::new(&SinusoidalConfig::new(4), vb).unwrap();
    let text = err_text(pe.add_to(&Tensor::zeros((1, 2, 5), DType::F32, &CPU).unwrap(), 0));
    assert!(text.contains("input has 5 features, the encoding 4"), "{text}");
    assert!(Alibi::new(&AlibiConfig::new(0), &CPU).is_err());
}

// ------------------------------------------------------------------- configs

#[test]
fn position_configs_deserialize_from_hf_json() {
    let rope: RopeConfig =
        serde_json::from_str(r#"{"head_dim": 128, "rope_theta": 500000.0, "max_position_embeddings": 8192}"#).unwrap();
    assert_eq!(
        (rope.theta, rope.max_positions, rope.rotary_dim()),
        (500000.0, 8192, 128)
    );
    let gptj: RopeConfig =
        serde_json::from_str(r#"{"head_dim": 256, "rotary_dim": 64, "style": "interleaved"}"#).unwrap();
    assert_eq!((gptj.rotary_dim(), gptj.style), (64, RopeStyle::Interleaved));
    let neox: RopeConfig = serde_json::from_str(r#"{"head_dim": 128, "rotary_pct": 0.25}"#).unwrap();
    assert_eq!(neox.rotary_dim(), 32);

    let gpt2: LearnedPositionConfig = serde_json::from_str(r#"{"n_positions": 1024, "n_embd": 768}"#).unwrap();
    assert_eq!(gpt2, LearnedPositionConfig::new(1024, 768));
    let bert: LearnedPositionConfig =
        serde_json::from_str(r#"{"max_position_embeddings": 512, "hidden_size": 384, "vocab_size": 30522}"#).unwrap();
    assert_eq!(bert, LearnedPositionConfig::new(512, 384));

    let marian: SinusoidalConfig = serde_json::from_str(r#"{"d_model": 512, "layout": "concatenated"}"#).unwrap();
    assert_eq!(
        (marian.dim, marian.base, marian.layout),
        (512, 10000.0, SinusoidalLayout::Concatenated)
    );

    let bloom: AlibiConfig = serde_json::from_str(r#"{"n_head": 16, "hidden_size": 1024}"#).unwrap();
    assert_eq!(bloom.heads, 16);
    let mpt: AlibiConfig = serde_json::from_str(r#"{"num_attention_heads": 12}"#).unwrap();
    assert_eq!(mpt.heads, 12);
}
