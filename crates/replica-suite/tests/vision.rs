//! The vision cases against their references (timm's `VisionTransformer` variants,
//! Dynamic Tanh, timm's `ConvNeXtBlock` and `GlobalResponseNorm`), and proof that
//! the checks bite: planted mistakes a port could make are found at the module
//! that makes them.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use replica_blocks::convnext::{ConvNextBlock, ConvNextBlockConfig, Dilation};
use replica_blocks::dyt::{DynamicTanh, DynamicTanhConfig};
use replica_check::{compare_trace, trace, Bundle, Namespace, Parity, Tolerance, TraceReport, WeightMap};
use replica_models::{Architecture, ModelConfig, Vit, VitConfig};
use replica_suite::fixtures_dir;
use replica_suite::vision::cases;
use serde_json::{json, Value};

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

/// A ViT fixture's config with `field` set to `value`.
fn vit_config_with(bundle: &Bundle, field: &str, value: Value) -> VitConfig {
    let mut config = bundle.metadata().config.clone();
    config[field] = value;
    VitConfig::from_value(&config, bundle.origin()).unwrap()
}

/// The ViT of `config` on a fixture's weights (through `map`) and input, traced.
fn vit_traced(bundle: &Bundle, config: &VitConfig, map: WeightMap) -> TraceReport {
    let params = bundle.namespace(Namespace::Param);
    let weights = map.apply(params, bundle.origin()).unwrap();
    let model = weights
        .build(DType::F32, &Device::Cpu, |vb| Vit::new(config, vb))
        .unwrap();
    let images = bundle.input("0").unwrap().clone();
    let (y, recorded) = replica_models::divergence::record(|| model.forward(&images));
    y.unwrap();
    let report = replica_models::divergence::compare(&recorded, bundle, Tolerance::default());
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

/// The combination fixture really is the combination: no class token, two register
/// tokens, a position table for the 4 patches alone, LayerScale and QK-norm weights.
#[test]
fn the_register_fixture_holds_what_its_config_says() {
    let bundle = common::fixture("models/vit_reg_gap");
    let config: VitConfig = VitConfig::from_value(&bundle.metadata().config, bundle.origin()).unwrap();
    assert!(!config.class_token && config.no_embed_class && config.qk_norm);
    assert_eq!(
        (config.reg_tokens, config.num_prefix_tokens(), config.num_tokens()),
        (2, 2, 4)
    );
    let params = bundle.namespace(Namespace::Param);
    assert_eq!(params["reg_token"].dims(), [1, 2, 8]);
    assert_eq!(params["pos_embed"].dims(), [1, 4, 8]);
    assert!(!params.contains_key("cls_token"));
    for name in ["blocks.0.ls1.gamma", "blocks.1.attn.q_norm.weight", "fc_norm.weight"] {
        assert!(params.contains_key(name), "{name}");
    }
    assert!(
        !params.contains_key("norm.weight"),
        "avg pooling moves the final norm to fc_norm"
    );
}

/// timm's average pooling leaves out the prefix (class and register) tokens; pooling
/// them too is the slip. Everything up to the final token sequence matches; the
/// first module after the pooling, `fc_norm`, diverges.
#[test]
fn pooling_the_register_tokens_too_is_found_at_fc_norm() {
    let bundle = common::fixture("models/vit_reg_gap");
    let wrong = vit_config_with(&bundle, "pool_include_prefix", json!(true));
    let report = vit_traced(&bundle, &wrong, WeightMap::new());
    assert_first_divergence(&report, "fc_norm");
    let right = vit_config_with(&bundle, "pool_include_prefix", json!(false));
    assert!(vit_traced(&bundle, &right, WeightMap::new()).passed());
}

/// Average pooling where the reference takes `0.5 * (max + mean)`: found at `fc_norm`.
#[test]
fn average_pooling_for_avgmax_is_found_at_fc_norm() {
    let bundle = common::fixture("models/vit_cls_reg_avgmax");
    let wrong = vit_config_with(&bundle, "global_pool", json!("avg"));
    assert_first_divergence(&vit_traced(&bundle, &wrong, WeightMap::new()), "fc_norm");
    let wrong = vit_config_with(&bundle, "global_pool", json!("max"));
    assert_first_divergence(&vit_traced(&bundle, &wrong, WeightMap::new()), "fc_norm");
}

/// Reading a DINOv2-style checkpoint as if its position table covered the prefix
/// tokens is refused when the weights load, naming `pos_embed` and both shapes.
#[test]
fn a_position_table_without_the_prefix_rows_is_refused_by_name() {
    let bundle = common::fixture("models/vit_reg_gap");
    let wrong = vit_config_with(&bundle, "no_embed_class", json!(false));
    let weights = WeightMap::new()
        .apply(bundle.namespace(Namespace::Param), bundle.origin())
        .unwrap();
    let err = weights
        .build(DType::F32, &Device::Cpu, |vb| Vit::new(&wrong, vb))
        .unwrap_err()
        .to_string();
    assert!(err.contains("pos_embed"), "{err}");
    assert!(err.contains("[1, 6, 8]") && err.contains("[1, 4, 8]"), "{err}");
}

/// A checkpoint-naming slip in the DyT ViT: the first block's `norm1.weight` and
/// `norm1.bias` exchanged. The patch embedding and position table match; `blocks.0.norm1`
/// is the first to diverge.
#[test]
fn swapped_dyt_weight_and_bias_are_found_at_that_norm() {
    let bundle = common::fixture("models/vit_dyt");
    let config = VitConfig::from_value(&bundle.metadata().config, bundle.origin()).unwrap();
    assert!(config.dynamic_tanh);
    let map = WeightMap::new()
        .rename(r"^blocks\.0\.norm1\.weight$", "swap")
        .rename(r"^blocks\.0\.norm1\.bias$", "blocks.0.norm1.weight")
        .rename("^swap$", "blocks.0.norm1.bias");
    assert_first_divergence(&vit_traced(&bundle, &config, map), "blocks.0.norm1");
    // A DyT model read as a LayerNorm one leaves every `alpha` unread: refused.
    let layer_norm = vit_config_with(&bundle, "dynamic_tanh", json!(false));
    let weights = WeightMap::new()
        .apply(bundle.namespace(Namespace::Param), bundle.origin())
        .unwrap();
    let err = weights
        .build(DType::F32, &Device::Cpu, |vb| Vit::new(&layer_norm, vb))
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("alpha"), "{err}");
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
    // Channels first is the reference's `weight[:, None, None]`: feature maps only.
    config.channels_last = false;
    let dyt = weights
        .build(DType::F32, &Device::Cpu, |vb| DynamicTanh::new(&config, vb))
        .unwrap();
    let sequence = Tensor::zeros((2, 6, 5), DType::F32, &Device::Cpu).unwrap();
    let err = dyt.forward(&sequence).unwrap_err().to_string();
    assert!(err.contains("feature map") && err.contains("[2, 6, 5]"), "{err}");
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

/// The ViT refuses the pooling and options it does not implement, by name.
#[test]
fn vit_refuses_what_it_does_not_implement() {
    let bundle = common::fixture("models/vit_reg_gap");
    for (field, value, expected) in [
        ("global_pool", json!("map"), "global_pool `map`"),
        ("global_pool", json!("token"), "needs class_token"),
        ("pos_embed", json!("sincos"), "pos_embed"),
        ("patch_drop_rate", json!(0.1), "patch_drop_rate"),
        ("dynamic_img_pad", json!(true), "dynamic_img_pad"),
        ("drop_path_rate", json!(1.5), "drop_path_rate"),
        ("norm_layer", json!("rmsnorm"), "norm_layer `rmsnorm`"),
        ("embed_norm_layer", json!("layernorm"), "embed_norm_layer"),
    ] {
        let mut config = bundle.metadata().config.clone();
        config[field] = value;
        let err = VitConfig::from_value(&config, bundle.origin()).unwrap_err().to_string();
        assert!(err.contains(expected), "{field}: {err}");
    }
}

/// timm's drop rates act in training only: with every rate set, inference still
/// matches the reference, and a training pass drops something.
#[test]
fn vit_drop_rates_act_only_in_training() {
    let bundle = common::fixture("models/vit_reg_gap");
    let mut config = bundle.metadata().config.clone();
    for (field, rate) in [
        ("drop_rate", 0.3),
        ("pos_drop_rate", 0.1),
        ("proj_drop_rate", 0.2),
        ("attn_drop_rate", 0.1),
        ("drop_path_rate", 0.5),
    ] {
        config[field] = json!(rate);
    }
    let config = VitConfig::from_value(&config, bundle.origin()).unwrap();
    assert_eq!(config.block_config(0).drop_path, 0.0);
    assert_eq!(config.block_config(1).drop_path, 0.5);
    assert!(vit_traced(&bundle, &config, WeightMap::new()).passed());
    let weights = WeightMap::new()
        .apply(bundle.namespace(Namespace::Param), bundle.origin())
        .unwrap();
    let model = weights
        .build(DType::F32, &Device::Cpu, |vb| Vit::new(&config, vb))
        .unwrap();
    let images = bundle.input("0").unwrap();
    let eval = candle_core::ModuleT::forward_t(&model, images, false).unwrap();
    let trained = candle_core::ModuleT::forward_t(&model, images, true).unwrap();
    let diff = (eval - trained).unwrap().abs().unwrap().max_all().unwrap();
    assert!(diff.to_scalar::<f32>().unwrap() > 0.0);
}

/// timm's `None` arguments as JSON `null` read as timm's defaults, and DyT's
/// `normalized_shape` as `convert_ln_to_dyt` passes it (a LayerNorm's one-element tuple).
#[test]
fn timm_nulls_and_torch_shapes_read_as_the_reference_means_them() {
    let bundle = common::fixture("models/vit_reg_gap");
    let mut config = bundle.metadata().config.clone();
    config["act_layer"] = Value::Null;
    config["norm_layer"] = json!("layernorm");
    config["embed_norm_layer"] = Value::Null;
    config["fc_norm"] = Value::Null;
    let read = VitConfig::from_value(&config, bundle.origin()).unwrap();
    assert_eq!(read.act_layer, replica_blocks::Activation::Gelu);
    assert!(vit_traced(&bundle, &read, WeightMap::new()).passed());

    let dyt: DynamicTanhConfig =
        serde_json::from_value(json!({"normalized_shape": [16], "channels_last": true})).unwrap();
    assert_eq!((dyt.dim, dyt.alpha_init_value), (16, 0.5));
    let err = serde_json::from_value::<DynamicTanhConfig>(json!({"normalized_shape": [4, 16], "channels_last": true}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("normalized_shape [4, 16]"), "{err}");
}

/// ConvNeXt's drop path acts in training only, and a training step reaches every
/// parameter (the depthwise kernel, GRN, the projections).
#[test]
fn convnext_trains_and_drops_paths_only_in_training() {
    let bundle = common::fixture("blocks/convnext_v2_block");
    let mut config: ConvNextBlockConfig = bundle.config().unwrap();
    config.drop_path = 0.5;
    let run = Parity::new(&bundle).unwrap();
    let weights = WeightMap::new().apply(run.params().clone(), bundle.origin()).unwrap();
    let varmap = candle_nn::VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let block = ConvNextBlock::new(&config, vb).unwrap();
    for (name, var) in varmap.data().lock().unwrap().iter() {
        var.set(&weights.tensors()[name]).unwrap();
    }
    let x = run.input("0").unwrap();
    let expected = bundle.output("0").unwrap();
    let eval = block.forward_t(&x, false).unwrap();
    let diff = |a: &Tensor, b: &Tensor| {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    assert!(diff(&eval, expected) < 1e-5, "eval is the reference");
    // Two samples, each kept or dropped whole: some seed drops one of them.
    let dropped = (0..20).any(|_| diff(&block.forward_t(&x, true).unwrap(), &eval) > 0.0);
    assert!(dropped, "drop path never dropped in training");
    let loss = block.forward_t(&x, false).unwrap().sqr().unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    for (name, var) in varmap.data().lock().unwrap().iter() {
        let grad = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient"));
        assert!(diff(grad, &grad.zeros_like().unwrap()) > 0.0, "{name}");
    }
}

/// DyT in a norm slot of the transformer block: `NormKind::DynamicTanh` builds it
/// under the slot's name, with `alpha`, `weight` and `bias`.
#[test]
fn dyt_is_selectable_wherever_a_norm_is_injected() {
    use replica_blocks::{NormKind, TransformerBlock, TransformerBlockConfig};
    let mut config = TransformerBlockConfig::timm(8, 2, 2.0, true, true, None);
    config.norm = NormKind::DynamicTanh;
    config.attention.norm = NormKind::DynamicTanh;
    let varmap = candle_nn::VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let block = TransformerBlock::new(&config, vb).unwrap();
    let names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
    for name in ["norm1.alpha", "norm2.weight", "attn.q_norm.alpha", "attn.k_norm.bias"] {
        assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
    }
    let alpha = &varmap.data().lock().unwrap()["norm1.alpha"];
    assert_eq!(alpha.as_tensor().to_vec1::<f32>().unwrap(), [0.5]);
    let x = Tensor::randn(0f32, 1.0, (2, 3, 8), &Device::Cpu).unwrap();
    assert_eq!(block.forward(&x, None, None).unwrap().dims(), [2, 3, 8]);
}
