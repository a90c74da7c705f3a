//! The basic blocks' parity cases against their PyTorch references, and proof that
//! the checks bite: planted bugs fail at the right module, and weights that do not
//! fit the block are reported, all together.

use std::collections::BTreeSet;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use replica_blocks::glu::{GluMlp, GluMlpConfig, GluMlpNames};
use replica_blocks::mlp::{Mlp, MlpConfig, MlpNames};
use replica_blocks::Activation;
use replica_check::{
    check_block, compare_trace, summary_table, trace, Bundle, Error, Namespace, Parity, Tolerance, TraceReport,
    WeightMap,
};
use replica_suite::basics::cases;
use replica_suite::fixtures_dir;

fn fixture(stem: &str) -> Bundle {
    Bundle::load(fixtures_dir().join(format!("blocks/{stem}.safetensors")), &Device::Cpu).expect("fixture loads")
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
    let mut reports = Vec::new();
    for case in cases() {
        let report = case
            .run(&fixtures_dir(), &Device::Cpu)
            .unwrap_or_else(|err| panic!("{}: {err}", case.name));
        assert!(report.passed(), "{report}");
        assert!(!report.rows.is_empty(), "{}: nothing was compared", case.name);
        reports.push(report);
    }
    println!("{}", summary_table(&reports));
}

#[test]
fn every_stored_gradient_and_activation_is_checked() {
    for case in cases() {
        let report = case.run(&fixtures_dir(), &Device::Cpu).unwrap();
        let bundle = Bundle::load(case.fixture_path(&fixtures_dir()), &Device::Cpu).unwrap();
        let checked = |prefix: &str| report.rows.iter().filter(|r| r.name.starts_with(prefix)).count();
        let stored_grads = bundle.names(Namespace::ParamGrad).count() + bundle.names(Namespace::InputGrad).count();
        assert_eq!(
            checked("grad/"),
            stored_grads,
            "{}: every stored gradient is checked",
            case.name
        );
        assert_eq!(
            checked("act/"),
            bundle.activations().count(),
            "{}: every reference activation is checked",
            case.name
        );
        assert_eq!(
            checked("output/"),
            bundle.names(Namespace::Output).count(),
            "{}",
            case.name
        );
    }
}

#[test]
fn gradients_are_checked_for_every_f32_fixture() {
    for case in cases() {
        let bundle = Bundle::load(case.fixture_path(&fixtures_dir()), &Device::Cpu).unwrap();
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
    let script = std::fs::read_to_string(fixtures_dir().join("../../python/fixtures_blocks_basics.py")).unwrap();
    let mut names = BTreeSet::new();
    for case in replica_suite::builtin() {
        assert!(names.insert(case.name), "duplicate case name {}", case.name);
    }
    for case in cases() {
        assert!(
            case.fixture_path(&fixtures_dir()).is_file(),
            "{}: no fixture",
            case.name
        );
        let file = case.fixture.strip_prefix("blocks/").expect("under blocks/");
        assert!(
            script.contains(&format!("\"{file}.safetensors\"")),
            "{}: {file}.safetensors is not written by python/fixtures_blocks_basics.py",
            case.name
        );
        assert!(
            case.reference.len() > 3
                && case
                    .name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        );
    }
}

#[test]
fn fixtures_stay_small() {
    let total: u64 = cases()
        .iter()
        .map(|case| std::fs::metadata(case.fixture_path(&fixtures_dir())).unwrap().len())
        .sum();
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
