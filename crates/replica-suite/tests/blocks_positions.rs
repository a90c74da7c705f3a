//! Position encodings (RoPE, sinusoidal, learned) against their reference fixtures,
//! and planted bugs the checks must catch on them.

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use replica_blocks::position_embedding::{LearnedPositionConfig, LearnedPositionEmbedding};
use replica_blocks::sinusoidal::{SinusoidalConfig, SinusoidalPositionEmbedding};
use replica_blocks::{Rope, RopeConfig, RopeStyle};
use replica_check::{assert_close, compare, Bundle, Case, Namespace, Parity, Tolerance};
use replica_suite::reference::attention_config;

const CPU: Device = Device::Cpu;

mod common;

fn fixture(stem: &str) -> Bundle {
    common::fixture(&format!("blocks/{stem}"))
}

fn position_cases() -> Vec<Case> {
    replica_suite::positions::cases()
        .into_iter()
        .filter(|c| c.name.starts_with("rope") || c.name.starts_with("sinusoidal") || c.name == "learned_position")
        .collect()
}

fn err_text<T: std::fmt::Debug>(result: candle_core::Result<T>) -> String {
    result.expect_err("expected an error").to_string()
}

#[test]
fn every_position_case_matches_its_reference() {
    let cases = position_cases();
    assert_eq!(cases.len(), 7);
    common::assert_all_pass(&cases);
    common::assert_stored_tensors_checked(&cases);
    for (_, report) in common::run(&cases) {
        assert!(
            common::rows(&report, "grad/") > 0,
            "{}: the fixture has gradients",
            report.title
        );
    }
}

fn rope_outputs(bundle: &Bundle, config: &RopeConfig, offset: usize) -> (Tensor, Tensor) {
    let rope = Rope::new(config, &CPU).unwrap();
    let (q, k) = (bundle.input("0").unwrap(), bundle.input("1").unwrap());
    (rope.apply(q, offset).unwrap(), rope.apply(k, offset).unwrap())
}

fn llama_rope(bundle: &Bundle) -> RopeConfig {
    attention_config(bundle).unwrap().rope_config().unwrap().unwrap()
}

/// Interleaved pairs where the reference (HF LLaMA) rotates half-split pairs: the
/// same numbers in a different pairing, caught on both outputs.
#[test]
fn rope_convention_swapped_is_caught() {
    let bundle = fixture("rope_half_split");
    let mut config = llama_rope(&bundle);
    let (q, _) = rope_outputs(&bundle, &config, 3);
    assert_close("half-split", &q, bundle.output("0").unwrap(), Tolerance::default());
    config.style = RopeStyle::Interleaved;
    let (q, k) = rope_outputs(&bundle, &config, 3);
    let cq = compare(&q, bundle.output("0").unwrap(), Tolerance::default());
    let ck = compare(&k, bundle.output("1").unwrap(), Tolerance::default());
    assert!(!cq.passed() && !ck.passed(), "{cq}\n{ck}");
    assert!(cq.mismatched > cq.elements / 4, "{cq}");

    // And the reverse: half-split on GPT-J's interleaved reference.
    let bundle = fixture("rope_interleaved_partial");
    let config = RopeConfig {
        rotary_features: Some(6),
        max_positions: 32,
        ..RopeConfig::new(10)
    };
    let (q, _) = rope_outputs(&bundle, &config, 4);
    assert!(!compare(&q, bundle.output("0").unwrap(), Tolerance::default()).passed());
}

#[test]
fn rope_offset_and_partial_rotation_mistakes_are_caught() {
    let bundle = fixture("rope_half_split");
    let config = llama_rope(&bundle);
    let (q, _) = rope_outputs(&bundle, &config, 0); // forgot the cache offset
    assert!(!compare(&q, bundle.output("0").unwrap(), Tolerance::default()).passed());

    let bundle = fixture("rope_half_split_partial");
    let mut config = llama_rope(&bundle);
    assert_eq!(config.rotary_dim(), 4);
    config.fraction = 1.0; // rotated every feature
    let (q, _) = rope_outputs(&bundle, &config, 2);
    assert!(!compare(&q, bundle.output("0").unwrap(), Tolerance::default()).passed());
}

#[test]
fn a_wrong_sinusoidal_layout_is_caught() {
    let bundle = fixture("sinusoidal_marian");
    let mut run = Parity::new(&bundle).unwrap();
    let x = run.input("0").unwrap();
    let config = SinusoidalConfig::new(10); // interleaved, Marian is concatenated
    let vb = VarBuilder::zeros(DType::F32, &CPU);
    let y = SinusoidalPositionEmbedding::new(&config, vb)
        .unwrap()
        .add_to(&x, 3)
        .unwrap();
    run.check_outputs(&[("0", &y)]);
    assert!(!run.finish().passed());
}

#[test]
fn a_sequence_longer_than_the_position_table_is_refused() {
    let bundle = fixture("learned_position");
    let tensors = bundle.namespace(Namespace::Param).into_iter().collect();
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &CPU);
    let wpe = LearnedPositionEmbedding::new(&LearnedPositionConfig::new(10, 8), vb.pp("wpe")).unwrap();
    let text = err_text(wpe.forward(11, 0));
    assert!(
        text.contains("learned position embedding `wpe`: positions 0..11 do not fit a table of 10 positions"),
        "{text}"
    );
    let text = err_text(wpe.forward(4, 8));
    assert!(
        text.contains("positions 8..12") && text.contains("after 8 cached tokens"),
        "{text}"
    );
    let text = err_text(wpe.add_to(&Tensor::zeros((2, 5), DType::F32, &CPU).unwrap(), 0));
    assert!(text.contains("[batch, seq, dim]"), "{text}");
    let text = err_text(wpe.add_to(&Tensor::zeros((2, 5, 6), DType::F32, &CPU).unwrap(), 0));
    assert!(text.contains("input has 6 features, the table 8"), "{text}");
    // A table of the wrong shape in the checkpoint is a load error, not a panic.
    let text = err_text(LearnedPositionEmbedding::new(
        &LearnedPositionConfig::new(12, 8),
        vb.pp("wpe"),
    ));
    assert!(text.contains("shape mismatch") || text.contains("wpe.weight"), "{text}");
}

/// The rotary tables in HF's layout are what LlamaRotaryEmbedding gave, also at
/// positions well past the fixture's (angles computed in f32 as HF does).
#[test]
fn rope_tables_match_hf_at_the_fixture_positions() {
    let bundle = fixture("rope_half_split");
    let rope = Rope::new(&llama_rope(&bundle), &CPU).unwrap();
    let (cos, sin) = rope.tables(6, 3).unwrap();
    let hf_cos = bundle.activation("rotary_emb:0").unwrap().squeeze(0).unwrap();
    let hf_sin = bundle.activation("rotary_emb:1").unwrap().squeeze(0).unwrap();
    assert_close(
        "cos",
        &Tensor::cat(&[&cos, &cos], D::Minus1).unwrap(),
        &hf_cos,
        Tolerance::default(),
    );
    assert_close(
        "sin",
        &Tensor::cat(&[&sin, &sin], D::Minus1).unwrap(),
        &hf_sin,
        Tolerance::default(),
    );
}
