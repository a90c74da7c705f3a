//! Position encodings (RoPE, sinusoidal, learned) against their reference fixtures,
//! and planted bugs the checks must catch on them.

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use replica_blocks::position_embedding::{LearnedPositionConfig, LearnedPositionEmbedding};
use replica_blocks::sinusoidal::{SinusoidalConfig, SinusoidalPositionEmbedding};
use replica_blocks::{Rope, RopeConfig, RopeStyle};
use replica_check::{assert_close, compare, Bundle, Case, Namespace, Parity, Tolerance};
use replica_suite::reference::attention_config;
use serde_json::json;

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
    assert_eq!(cases.len(), 15);
    common::assert_all_pass(&cases);
    common::assert_stored_tensors_checked(&cases);
    for (bundle, report) in common::run(&cases) {
        assert_eq!(
            bundle.metadata().dtype == "float32",
            common::rows(&report, "grad/") > 0,
            "{}: f32 fixtures carry gradients, half ones not",
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

// ------------------------------------------------------------- RoPE scaling

/// Runs case `name` on its fixture as it is (it passes), then with the fixture's
/// config changed by `plant`, so that the rope is built with the planted
/// bug: the same check (tables, outputs and gradients against the float64 shadow)
/// must fail.
fn planted_bug_is_caught(name: &str, what: &str, plant: impl Fn(&mut serde_json::Value)) {
    let case = replica_suite::positions::cases()
        .into_iter()
        .find(|c| c.name == name)
        .unwrap();
    let bundle = common::fixture(case.fixture);
    let report = (case.run)(&bundle).unwrap();
    assert!(report.passed(), "{name} as read:\n{report}");
    let mut config = bundle.metadata().config.clone();
    plant(&mut config);
    let report = (case.run)(&bundle.with_config(config)).unwrap();
    assert!(!report.passed(), "{name}: {what} passed:\n{report}");
    assert!(
        report
            .rows
            .iter()
            .any(|r| r.name.contains("rotary_emb") && !r.comparison.passed()),
        "{name}: {what}: the tables differ"
    );
}

#[test]
fn planted_rope_scaling_bugs_are_caught() {
    planted_bug_is_caught("rope_linear", "factor 2 for 4", |c| {
        c["rope_parameters"]["factor"] = json!(2.0)
    });
    for name in ["rope_yarn", "rope_yarn_bf16"] {
        planted_bug_is_caught(name, "yarn without its mscale", |c| {
            c["rope_parameters"]["attention_factor"] = json!(1.0)
        });
    }
    planted_bug_is_caught("rope_yarn", "yarn's correction range not truncated", |c| {
        c["rope_parameters"]["truncate"] = json!(false)
    });
    planted_bug_is_caught("rope_llama3", "llama3's smoothing band moved", |c| {
        c["rope_parameters"]["high_freq_factor"] = json!(2.0)
    });
    planted_bug_is_caught("rope_dynamic", "dynamic NTK's base grown for factor 1.5", |c| {
        c["rope_parameters"]["factor"] = json!(1.5)
    });
    planted_bug_is_caught("rope_dynamic", "dynamic NTK that never grows (plain RoPE)", |c| {
        c["rope_parameters"] = json!({"rope_type": "default", "rope_theta": 10000.0});
        c["max_position_embeddings"] = json!(128);
    });
    planted_bug_is_caught("rope_longrope", "longrope's short factors past the original", |c| {
        c["rope_parameters"]["long_factor"] = c["rope_parameters"]["short_factor"].clone()
    });
    planted_bug_is_caught("rope_longrope", "longrope without its attention factor", |c| {
        c["rope_parameters"]["attention_factor"] = json!(1.0)
    });
    planted_bug_is_caught(
        "rope_longrope_short",
        "longrope's long factors inside the original",
        |c| c["rope_parameters"]["short_factor"] = c["rope_parameters"]["long_factor"].clone(),
    );
}

/// The table of positions 90..96 of a fresh dynamic rope, of one that ran `before` first.
fn dynamic_cos(config: &RopeConfig, before: &[usize]) -> Tensor {
    let rope = Rope::new(config, &CPU).unwrap();
    for &len in before {
        rope.tables(len, 0).unwrap();
    }
    rope.hf_tables(6, 90, DType::F32).unwrap().0
}

/// HF's dynamic module keeps the frequencies of the longest sequence it has run
/// until one shorter than `max_position_embeddings` resets them: a fresh rope does
/// not give the grown fixture's tables, one that ran 120 positions does, and after
/// a short sequence the fresh fixture's again.
#[test]
fn dynamic_rope_keeps_hf_s_state() {
    let (grown, fresh) = (fixture("rope_dynamic_grown"), fixture("rope_dynamic"));
    let (grown, fresh) = (
        grown.activation("rotary_emb:0").unwrap(),
        fresh.activation("rotary_emb:0").unwrap(),
    );
    let config = llama_rope(&fixture("rope_dynamic"));
    let matches = |cos: &Tensor, reference: &Tensor| compare(cos, reference, Tolerance::default()).passed();
    assert!(matches(&dynamic_cos(&config, &[]), fresh));
    assert!(
        !matches(&dynamic_cos(&config, &[]), grown),
        "a stateless dynamic rope passed"
    );
    assert!(matches(&dynamic_cos(&config, &[120]), grown));
    assert!(
        matches(&dynamic_cos(&config, &[120, 100]), grown),
        "a shorter one past 64 keeps 120's"
    );
    assert!(
        matches(&dynamic_cos(&config, &[120, 10]), fresh),
        "one shorter than 64 resets"
    );
    // Past `factor * max_position_embeddings` the sequence is refused.
    let rope = Rope::new(&config, &CPU).unwrap();
    assert!(err_text(rope.tables(129, 0)).contains("exceed the table of 128 positions"));
}
