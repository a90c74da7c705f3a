//! The basic blocks' parity cases against their PyTorch references, and proof that
//! the checks bite: planted bugs fail at the right module, and weights that do not
//! fit the block are reported, all together.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use replica_blocks::glu::{GluMlp, GluMlpConfig, GluMlpNames};
use replica_blocks::mlp::{Mlp, MlpConfig, MlpNames};
use replica_blocks::Activation;
use replica_check::{
    check_block, compare_trace, trace, Bundle, Error, Namespace, Parity, Tolerance, TraceReport, WeightMap,
};
use replica_suite::basics::cases;

mod common;

fn fixture(stem: &str) -> Bundle {
    common::fixture(&format!("blocks/{stem}"))
}

/// Builds a block from a fixture's weights, runs it traced, and compares the trace.
fn trace_of<M>(
    bundle: &Bundle,
    build: impl FnOnce(VarBuilder) -> candle_core::Result<M>,
    forward: impl FnOnce(&M, &Tensor) -> candle_core::Result<Tensor>,
) -> TraceReport {
    let run = Parity::new(bundle).unwrap();
    let weights = WeightMap::new().apply(run.params().clone(), bundle.origin()).unwrap();
    let block = weights.build(DType::F32, &Device::Cpu, build).unwrap();
    let x = run.input("0").unwrap();
    let (y, recorded) = trace::record(|| forward(&block, &x));
    y.unwrap();
    compare_trace(&recorded, bundle, Tolerance::for_dtype(DType::F32))
}

#[test]
fn every_basics_case_matches_its_torch_reference() {
    common::assert_all_pass(&cases());
}

#[test]
fn every_stored_gradient_and_activation_is_checked() {
    common::assert_stored_tensors_checked(&cases());
    for (bundle, report) in common::run(&cases()) {
        let outputs = bundle.names(Namespace::Output).count();
        assert_eq!(common::rows(&report, "output/"), outputs, "{}", report.title);
    }
}

#[test]
fn gradients_are_checked_for_every_f32_fixture() {
    for case in cases() {
        let bundle = fixture(case.fixture.strip_prefix("blocks/").unwrap());
        let float = bundle.metadata().dtype == "float32";
        assert_eq!(
            bundle.contains(Namespace::OutputGrad, "0"),
            float,
            "{}: f32 fixtures carry gradients, half-precision ones are forward only",
            case.name
        );
        let params = bundle.names(Namespace::Param).count();
        assert_eq!(
            bundle.names(Namespace::ParamGrad).count(),
            if float { params } else { 0 },
            "{}",
            case.name
        );
    }
}

#[test]
fn cases_are_unique_and_every_fixture_comes_from_the_script() {
    common::assert_names_unique();
    common::assert_written_by(&cases(), "fixtures_blocks_basics.py");
}

#[test]
fn fixtures_stay_small() {
    let total = common::fixture_bytes(&cases());
    // The float64 shadow (docs/bundle-format.md) makes up about half of each bundle.
    assert!(total < 700_000, "{total} bytes of fixtures");
}

#[test]
fn tanh_gelu_in_an_erf_mlp_diverges_first_at_act() {
    let bundle = fixture("mlp");
    let config = MlpConfig {
        activation: Activation::GeluTanh,
        ..bundle.config().unwrap()
    };
    let traced = trace_of(&bundle, |vb| Mlp::new(&config, vb), Mlp::forward);
    assert_eq!(traced.first_divergence.as_deref(), Some("act"), "{traced}");
    // fc1 ran before it and still matches.
    assert!(traced.rows[0].path == "fc1" && traced.rows[0].comparison.as_ref().unwrap().passed());
    let report = check_block(&bundle, WeightMap::new(), |vb| Mlp::new(&config, vb), Mlp::forward).unwrap();
    assert!(!report.passed());
    assert!(report.failures().any(|r| r.name == "output/0"));
}

#[test]
fn a_gate_taken_from_the_wrong_half_diverges_at_act() {
    // SwiGLUPacked gates with the *first* half of fc1; GluMlp's default is the second.
    let bundle = fixture("swiglu_packed");
    let config = GluMlpConfig {
        bias: true,
        names: GluMlpNames::timm_glu_mlp(true),
        ..GluMlpConfig::swiglu(16, 24)
    };
    let traced = trace_of(&bundle, |vb| GluMlp::new(&config, vb), GluMlp::forward);
    assert_eq!(traced.first_divergence.as_deref(), Some("act"), "{traced}");
}

#[test]
fn gpt2_conv1d_weights_must_be_transposed() {
    let bundle = fixture("mlp_gpt2");
    let config = MlpConfig {
        names: MlpNames::gpt2(),
        ..bundle.config().unwrap()
    };
    let err = check_block(&bundle, WeightMap::new(), |vb| Mlp::new(&config, vb), Mlp::forward).unwrap_err();
    let Error::Load(report) = &err else { panic!("{err}") };
    assert_eq!(report.mismatched.len(), 2, "{err}");
    assert!(err.to_string().contains("c_fc.weight"), "{err}");
}

#[test]
fn timm_names_on_a_gpt2_checkpoint_are_reported_together() {
    let bundle = fixture("mlp_gpt2");
    let config: MlpConfig = bundle.config().unwrap();
    let err = check_block(&bundle, WeightMap::new(), |vb| Mlp::new(&config, vb), Mlp::forward).unwrap_err();
    let message = err.to_string();
    for name in [
        "missing: `fc1.weight`",
        "missing: `fc2.bias`",
        "unused: `c_fc.weight`",
        "unused: `c_proj.bias`",
    ] {
        assert!(message.contains(name), "{message}");
    }
}

#[test]
fn a_misnamed_or_unrecorded_module_fails_the_trace() {
    let bundle = fixture("mlp_gpt2");
    let map = || WeightMap::new().transpose(r"^(c_fc|c_proj)\.weight$");
    let config = MlpConfig {
        names: MlpNames {
            act: Some("activation".into()),
            ..MlpNames::gpt2()
        },
        ..bundle.config().unwrap()
    };
    let report = check_block(&bundle, map(), |vb| Mlp::new(&config, vb), Mlp::forward).unwrap();
    let failed: Vec<&str> = report.failures().map(|r| r.name.as_str()).collect();
    // The numbers are right; the names are not.
    assert_eq!(failed, ["act/activation", "act/act"], "{report}");
    let never = report.rows.iter().find(|r| r.name == "act/act").unwrap();
    assert!(
        never.comparison.incompatible.as_ref().unwrap().contains("never"),
        "{report}"
    );

    let config = MlpConfig {
        names: MlpNames {
            act: None,
            ..MlpNames::gpt2()
        },
        ..bundle.config().unwrap()
    };
    let report = check_block(&bundle, map(), |vb| Mlp::new(&config, vb), Mlp::forward).unwrap();
    let failed: Vec<&str> = report.failures().map(|r| r.name.as_str()).collect();
    assert_eq!(failed, ["act/act"], "{report}");
}

#[test]
fn weights_of_the_wrong_shape_are_reported_not_panicked_on() {
    // The LLaMA fixture's weights under a config with the wrong hidden width.
    let bundle = fixture("llama_mlp");
    let config = GluMlpConfig::swiglu(16, 32);
    let err = check_block(
        &bundle,
        WeightMap::new(),
        |vb| GluMlp::new(&config, vb),
        GluMlp::forward,
    )
    .unwrap_err();
    let Error::Load(report) = &err else { panic!("{err}") };
    assert_eq!(report.mismatched.len(), 3, "{err}");
}
