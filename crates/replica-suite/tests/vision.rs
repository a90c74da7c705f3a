//! The vision cases against their references (Dynamic Tanh, timm's `ConvNeXtBlock`
//! and `GlobalResponseNorm`), and proof that
//! the checks bite: planted mistakes a port could make are found at the module
//! that makes them.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use replica_blocks::convnext::{ConvNextBlock, ConvNextBlockConfig, Dilation};
use replica_blocks::dyt::{DynamicTanh, DynamicTanhConfig};
use replica_check::{compare_trace, trace, Bundle, Namespace, Parity, Tolerance, TraceReport, WeightMap};
use replica_suite::fixtures_dir;
use replica_suite::vision::cases;
use serde_json::json;

mod common;

/// The cases whose fixtures are block bundles (`blocks/`), and the ViT ones (`models/`).
fn block_cases() -> Vec<replica_check::Case> {
    cases()
        .into_iter()
        .filter(|c| c.fixture.starts_with("blocks/"))
        .collect()
}

/// Builds `build` from a fixture's weights through `map` (strictly) and runs
/// `forward` on its input, traced: the trace compared with the reference.
fn traced<M>(
    bundle: &Bundle,
    map: WeightMap,
    build: impl FnOnce(VarBuilder) -> candle_core::Result<M>,
    forward: impl FnOnce(&M, &Tensor) -> candle_core::Result<Tensor>,
) -> TraceReport {
    let run = Parity::new(bundle).unwrap();
    let weights = map.apply(run.params().clone(), bundle.origin()).unwrap();
    let block = weights.build(DType::F32, &Device::Cpu, build).unwrap();
    let x = run.input("0").unwrap();
    let (y, recorded) = trace::record(|| forward(&block, &x));
    y.unwrap();
    let report = compare_trace(&recorded, bundle, Tolerance::for_dtype(DType::F32));
    println!("{report}");
    report
}

/// The first divergent module is `expected`, and every module compared before it matches.
fn assert_first_divergence(report: &TraceReport, expected: &str) {
    assert_eq!(report.first_divergence.as_deref(), Some(expected), "{report}");
    let position = report.rows.iter().position(|r| r.path == expected).unwrap();
    let before = &report.rows[..position];
    assert!(before.iter().any(|row| row.comparison.is_some()), "{report}");
    for row in before {
        if let Some(comparison) = &row.comparison {
            assert!(comparison.passed(), "`{}` precedes the bug and must match", row.path);
        }
    }
}

#[test]
fn every_vision_case_matches_its_reference() {
    common::assert_all_pass(&cases());
}

#[test]
fn every_stored_gradient_and_activation_is_checked() {
    common::assert_stored_tensors_checked(&cases());
    for (bundle, report) in common::run(&cases()) {
        let float = bundle.metadata().dtype == "float32";
        assert_eq!(
            bundle.names(Namespace::ParamGrad).count(),
            if float {
                bundle.names(Namespace::Param).count()
            } else {
                0
            },
            "{}: f32 fixtures carry every parameter's gradient, bf16 ones none",
            report.title
        );
    }
}

#[test]
fn cases_are_unique_and_every_fixture_comes_from_a_script() {
    common::assert_names_unique();
    common::assert_written_by(&block_cases(), "fixtures_blocks_vision.py");
    let models = std::fs::read_to_string(fixtures_dir().join("../../python/fixtures_models.py")).unwrap();
    for case in cases() {
        assert!(case.paper.is_some(), "{}", case.name);
        if let Some(file) = case.fixture.strip_prefix("models/") {
            let stem = file.strip_suffix("_bf16").unwrap_or(file);
            assert!(
                models.contains(&format!("\"{stem}\"")),
                "{file} is not written by fixtures_models.py"
            );
            assert!(case.fixture_path(&fixtures_dir()).is_file(), "{}", case.name);
        }
    }
}

#[test]
fn fixtures_stay_small() {
    for case in cases() {
        let bytes = std::fs::metadata(case.fixture_path(&fixtures_dir())).unwrap().len();
        let limit = if case.fixture.starts_with("blocks/") {
            64_000
        } else {
            140_000
        };
        assert!(bytes < limit, "{}: {bytes} bytes", case.name);
    }
}

/// DyT on a feature map read as channels last: refused by shape, not broadcast wrongly.
#[test]
fn dyt_refuses_a_layout_it_was_not_built_for() {
    let bundle = common::fixture("blocks/dyt_channels_first");
    let mut config: DynamicTanhConfig = bundle.config().unwrap();
    assert!(!config.channels_last);
    config.channels_last = true;
    let run = Parity::new(&bundle).unwrap();
    let weights = WeightMap::new().apply(run.params().clone(), bundle.origin()).unwrap();
    let dyt = weights
        .build(DType::F32, &Device::Cpu, |vb| DynamicTanh::new(&config, vb))
        .unwrap();
    let err = dyt.forward(&run.input("0").unwrap()).unwrap_err().to_string();
    assert!(
        err.contains("expects 6 channels in the last dimension") && err.contains("[2, 6, 3, 4]"),
        "{err}"
    );
}

/// A ConvNeXt port with a dilated depthwise kernel (a wrong `dilation`) keeps the
/// map's size but reads other pixels: found at `conv_dw`, the first module.
#[test]
fn a_dilated_depthwise_kernel_is_found_at_conv_dw() {
    let bundle = common::fixture("blocks/convnext_block");
    let right: ConvNextBlockConfig = bundle.config().unwrap();
    let wrong = ConvNextBlockConfig {
        dilation: Dilation::Same(2),
        ..right.clone()
    };
    let report = traced(
        &bundle,
        WeightMap::new(),
        |vb| ConvNextBlock::new(&wrong, vb),
        ConvNextBlock::forward,
    );
    assert_eq!(report.first_divergence.as_deref(), Some("conv_dw"), "{report}");
    let report = traced(
        &bundle,
        WeightMap::new(),
        |vb| ConvNextBlock::new(&right, vb),
        ConvNextBlock::forward,
    );
    assert!(report.passed(), "{report}");
}

/// ConvNeXt V2's GRN with its `weight` and `bias` exchanged (both start at zero in
/// timm, so only trained values tell them apart): the convolution, the norm, `fc1`
/// and the activation match; `mlp.grn` is the first to diverge.
#[test]
fn swapped_grn_weight_and_bias_are_found_at_mlp_grn() {
    let bundle = common::fixture("blocks/convnext_v2_block");
    let config: ConvNextBlockConfig = bundle.config().unwrap();
    assert!(config.use_grn && config.ls_init_value.is_none());
    let map = WeightMap::new()
        .rename(r"^mlp\.grn\.weight$", "swap")
        .rename(r"^mlp\.grn\.bias$", "mlp.grn.weight")
        .rename("^swap$", "mlp.grn.bias");
    let report = traced(
        &bundle,
        map,
        |vb| ConvNextBlock::new(&config, vb),
        ConvNextBlock::forward,
    );
    assert_first_divergence(&report, "mlp.grn");
    for path in ["conv_dw", "norm", "mlp.fc1", "mlp.act"] {
        let row = report.rows.iter().find(|r| r.path == path).unwrap();
        assert!(row.comparison.as_ref().unwrap().passed(), "{path}");
    }
}

/// The V1 block without its LayerScale `gamma` (a V2 reading of a V1 checkpoint)
/// leaves `gamma` unread: refused by name.
#[test]
fn a_v1_checkpoint_read_without_layer_scale_is_refused() {
    let bundle = common::fixture("blocks/convnext_block");
    let mut config: ConvNextBlockConfig = bundle.config().unwrap();
    config.ls_init_value = None;
    let run = Parity::new(&bundle).unwrap();
    let weights = WeightMap::new().apply(run.params().clone(), bundle.origin()).unwrap();
    let err = weights
        .build(DType::F32, &Device::Cpu, |vb| ConvNextBlock::new(&config, vb))
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("gamma"), "{err}");
}

/// What the ConvNeXt block refuses, each by the field's name.
#[test]
fn convnext_refuses_what_it_does_not_implement() {
    for (field, value, expected) in [
        ("conv_mlp", json!(true), "conv_mlp"),
        ("stride", json!(2), "stride 2"),
        ("out_chs", json!(16), "out_chs 16"),
        ("kernel_size", json!(4), "kernel_size must be odd"),
        ("kernel_size", json!(0), "kernel_size"),
        ("dilation", json!([1, 2]), "dilation (1, 2)"),
        ("norm_layer", json!("layernorm2d"), "norm_layer"),
        ("mlp_ratio", json!(-1.0), "mlp_ratio"),
    ] {
        let mut config = serde_json::to_value(ConvNextBlockConfig::new(8)).unwrap();
        config[field] = value;
        let config: ConvNextBlockConfig = serde_json::from_value(config).unwrap();
        let err = ConvNextBlock::new(&config, VarBuilder::zeros(DType::F32, &Device::Cpu))
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected) && !err.contains('\n'), "{field}: {err}");
    }
}
